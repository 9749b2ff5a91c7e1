//! The typed values of string-valued keys: [`EnvKind`], [`RewardModel`], [`MissingReward`],
//! [`GateEstimator`] and [`Device`]. Each parses from (and prints and serialises as) exactly the
//! strings the config files have always used, so saved configs and
//! checkpoints read the same either way.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A string that is not one of a key's allowed values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown value `{value}`; expected one of {expected}")]
pub struct ParseValueError {
    /// The value as given.
    pub value: String,
    /// The allowed values, quoted and comma-separated (e.g. "`label`, `cosine`").
    pub expected: &'static str,
}

/// Serde through `Display`/`FromStr`, so that file, `--set` and CLI flags
/// share one parser and one error message.
macro_rules! serde_via_str {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A key whose value is one of a few strings: the enum (its first variant the default),
/// `as_str`, `Display`, `FromStr` (the error lists the allowed strings) and serde through them.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $(#[$vmeta0:meta])* $v0:ident = $s0:literal,
            $( $(#[$vmeta:meta])* $v:ident = $s:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            $(#[$vmeta0])*
            #[default]
            $v0,
            $( $(#[$vmeta])* $v, )*
        }

        impl $name {
            /// The string the config files use.
            pub fn as_str(self) -> &'static str {
                match self {
                    Self::$v0 => $s0,
                    $( Self::$v => $s, )*
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ParseValueError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $s0 => Ok(Self::$v0),
                    $( $s => Ok(Self::$v), )*
                    _ => Err(ParseValueError {
                        value: s.into(),
                        expected: concat!("`", $s0, "`" $(, ", `", $s, "`")*),
                    }),
                }
            }
        }

        serde_via_str!($name);
    };
}

string_enum! {
    /// Which environment a run trains on (`env.kind`).
    pub enum EnvKind {
        /// `synthetic` (default): the seed's cosine-similarity env.
        Synthetic = "synthetic",
        /// `text`: a corpus of prompts embedded with all-MiniLM-L6-v2.
        Text = "text",
        /// `pipeline`: the synthetic env grown to K stages (`[[env.stages]]`), one team reward.
        Pipeline = "pipeline",
        /// `conversation`: multi-turn conversations assembled from a labelled corpus.
        Conversation = "conversation",
        /// `cascade`: a cheaper agent answers first; a second step sees its answer and accepts
        /// it or escalates (an outcome corpus with `responses`).
        Cascade = "cascade",
    }
}

impl EnvKind {
    /// Whether an episode of this env has more than one decision (a multi-step env).
    pub fn episodic(self) -> bool {
        matches!(self, Self::Pipeline | Self::Conversation | Self::Cascade)
    }

    /// Whether its prompts are texts embedded with all-MiniLM-L6-v2 (`text`, `conversation`).
    pub fn uses_text(self) -> bool {
        matches!(self, Self::Text | Self::Conversation | Self::Cascade)
    }
}

string_enum! {
    /// When an episode's reward is paid (`env.reward_at`).
    pub enum RewardAt {
        /// `turn` (default): each step's reward at that step.
        Turn = "turn",
        /// `end`: nothing until the last step, then the episode's whole reward.
        End = "end",
    }
}

string_enum! {
    /// The value function of the actor-critic (`model.critic`).
    pub enum CriticKind {
        /// `shared` (default): a value head on the actor's encoder (one-step routers).
        Shared = "shared",
        /// `centralized`: its own network over the whole state (MAPPO).
        Centralized = "centralized",
        /// `local`: its own network over the prompt and the stage id only (IPPO).
        Local = "local",
    }
}

string_enum! {
    /// How the text env rewards a routing decision (`env.reward`).
    pub enum RewardModel {
        /// `label` (default): 1 if the chosen agent is the prompt's label, else 0.
        Label = "label",
        /// `cosine`: cosine between the prompt's and the agent description's embeddings.
        Cosine = "cosine",
        /// `outcome`: the chosen agent's known reward from the corpus row's `outcomes`
        /// (`{"agent": reward, ...}`, every agent's, as benchmark tables give them).
        Outcome = "outcome",
    }
}

string_enum! {
    /// What the learner does with a decision whose reward has not arrived within
    /// `learn.reward_wait_s` (`learn.missing_reward`).
    pub enum MissingReward {
        /// `default` (default): learn from it with `learn.default_reward`.
        Default = "default",
        /// `skip`: consume it without learning from it.
        Skip = "skip",
    }
}

string_enum! {
    /// The estimate the promotion gate compares (`learn.gate_estimator`).
    pub enum GateEstimator {
        /// `dr` (default): doubly robust.
        Dr = "dr",
        /// `snips`: self-normalised inverse propensity scoring.
        Snips = "snips",
    }
}

/// Where tensors live (`train.device`, the CLI's `--device`).
///
/// Written `auto`, `cpu`, `cuda` or `cuda:N`; `cuda` is `cuda:0` and prints
/// as `cuda` (so `cuda:0` is saved back as `cuda`). Surrounding whitespace is
/// ignored; anything else (`CPU`, `gpu`, `cuda:`, `cuda:-1`) is refused.
/// Turning a `Device` into a real device (and what `auto` picks) is
/// `mappo_train::select_device`'s job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// CUDA when the binary was built with the `cuda` feature and a GPU answers, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The CUDA GPU of this ordinal; never falls back to the CPU.
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(0) => f.write_str("cuda"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for Device {
    type Err = ParseValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseValueError { value: s.into(), expected: "`auto`, `cpu`, `cuda`, `cuda:N`" };
        match s.trim() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            t => {
                let n = t.strip_prefix("cuda:").ok_or_else(bad)?;
                // `usize::from_str` accepts a leading `+`; a device ordinal is digits only.
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                n.parse().map(Self::Cuda).map_err(|_| bad())
            }
        }
    }
}

serde_via_str!(Device);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_parses_and_prints_the_config_strings() {
        for (s, d, back) in [
            ("auto", Device::Auto, "auto"),
            ("cpu", Device::Cpu, "cpu"),
            ("cuda", Device::Cuda(0), "cuda"),
            ("cuda:0", Device::Cuda(0), "cuda"),
            ("cuda:3", Device::Cuda(3), "cuda:3"),
            (" cpu ", Device::Cpu, "cpu"),
        ] {
            assert_eq!(s.parse::<Device>(), Ok(d), "{s}");
            assert_eq!(d.to_string(), back);
        }
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:+1", "cuda:x", "CPU", "", "cuda:99999999999999999999999"]
        {
            let e = bad.parse::<Device>().expect_err(bad).to_string();
            assert!(e.contains("`auto`, `cpu`, `cuda`, `cuda:N`"), "{bad}: {e}");
        }
    }

    #[test]
    fn enums_parse_only_their_strings() {
        assert_eq!("text".parse::<EnvKind>(), Ok(EnvKind::Text));
        assert_eq!(EnvKind::Synthetic.to_string(), "synthetic");
        assert_eq!("cosine".parse::<RewardModel>(), Ok(RewardModel::Cosine));
        assert_eq!(RewardModel::Label.to_string(), "label");
        let e = "cosin".parse::<RewardModel>().expect_err("typo").to_string();
        assert!(e.contains("`cosin`") && e.ends_with("expected one of `label`, `cosine`, `outcome`"), "{e}");
        assert!("Text".parse::<EnvKind>().is_err());
        assert_eq!("snips".parse::<GateEstimator>(), Ok(GateEstimator::Snips));
        assert_eq!(GateEstimator::default(), GateEstimator::Dr);
        let e = "ips".parse::<GateEstimator>().expect_err("not a gate estimator").to_string();
        assert!(e.ends_with("expected one of `dr`, `snips`"), "{e}");
        assert_eq!(
            (MissingReward::default(), "skip".parse()),
            (MissingReward::Default, Ok(MissingReward::Skip))
        );
        assert_eq!((EnvKind::default(), RewardModel::default()), (EnvKind::Synthetic, RewardModel::Label));
    }
}
