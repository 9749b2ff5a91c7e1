//! The `[learn]` section: the learner from logged feedback (`mappo learn`).

use serde::{Deserialize, Serialize};

use crate::{ConfigError, GateEstimator, MissingReward};

/// How `mappo learn` turns the decision log into PPO updates. The batch of one
/// update is `train.batch_size` events; epochs, minibatches, clipping and
/// learning rates come from `[ppo]`. They stay constant unless
/// `lr_decay_events` is set (a learner has no last update to anneal towards;
/// this gives it a horizon in logged steps, with a floor so that it keeps
/// adapting afterwards).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LearnConfig {
    /// Seconds a decision waits for its reward. The learner only consumes
    /// decisions older than this; a reward that arrives later is ignored.
    /// Default 5.
    pub reward_wait_s: f64,
    /// The reward of a decision whose reward did not arrive in time, with
    /// `missing_reward = "default"`. Default 0.
    pub default_reward: f64,
    /// `default` (learn from it with `default_reward`) or `skip` (consume it
    /// without learning). Default `default`.
    pub missing_reward: MissingReward,
    /// Fewest learnable (sampled, rewarded or defaulted) events an update
    /// needs; fewer wait for the next round. Default 64.
    pub min_events: usize,
    /// Seconds between rounds of `mappo learn --follow`. Default 2.
    pub interval_s: f64,
    /// A candidate policy is published only when the lower end of its 95% interval is at least
    /// the current version's estimate minus this. Default 0.01.
    pub gate_margin: f64,
    /// The estimate the promotion gate compares: `dr` (doubly robust) or `snips`. Default `dr`.
    pub gate_estimator: GateEstimator,
    /// Most updates in one round of `mappo learn`: a round ends with one commit (the learner's
    /// state, and with `--publish` one gated publication), and a stop signal is heard between
    /// rounds. Default 100.
    pub round_updates: usize,
    /// Policies of episodes (conversations): seconds after its first step that an episode that
    /// has not ended is learned anyway, cut after its last logged step (the value after it
    /// bootstrapped from the critic). Until then the learner waits for it (and for everything
    /// logged after it). Default 600.
    pub episode_timeout_s: f64,
    /// Decay both learning rates linearly over the first this many learned events (logged
    /// steps) of the learner, from `ppo.lr_actor`/`ppo.lr_critic` down to `lr_floor` times them,
    /// then hold them there. 0 keeps them constant. Default 0.
    pub lr_decay_events: u64,
    /// The fraction of the learning rates kept after `lr_decay_events` (a learner that keeps
    /// running keeps adapting to new traffic). Default 0.1.
    pub lr_floor: f64,
}

impl Default for LearnConfig {
    fn default() -> Self {
        Self {
            reward_wait_s: 5.0,
            default_reward: 0.0,
            missing_reward: MissingReward::Default,
            min_events: 64,
            interval_s: 2.0,
            gate_margin: 0.01,
            gate_estimator: GateEstimator::Dr,
            round_updates: 100,
            episode_timeout_s: 600.0,
            lr_decay_events: 0,
            lr_floor: 0.1,
        }
    }
}

impl LearnConfig {
    /// The factor on `ppo.lr_actor`/`ppo.lr_critic` for an update after `learned` events:
    /// 1 − (1 − `lr_floor`) · learned / `lr_decay_events`, never below `lr_floor`; 1 when
    /// `lr_decay_events` is 0.
    pub fn lr_scale(&self, learned: u64) -> f64 {
        if self.lr_decay_events == 0 {
            return 1.0;
        }
        let done = (learned as f64 / self.lr_decay_events as f64).min(1.0);
        1.0 - (1.0 - self.lr_floor) * done
    }

    /// Checks every value's range; the error names the key (`learn.…`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, value: &dyn std::fmt::Display, allowed: &str| ConfigError::Invalid {
            key: format!("learn.{key}"),
            message: format!("{value} is not allowed: {allowed}"),
        };
        if !(self.reward_wait_s.is_finite() && self.reward_wait_s >= 0.0) {
            return Err(bad("reward_wait_s", &self.reward_wait_s, "must be a finite number >= 0"));
        }
        if !self.default_reward.is_finite() {
            return Err(bad("default_reward", &self.default_reward, "must be a finite number"));
        }
        if !(1..=1 << 24).contains(&self.min_events) {
            return Err(bad("min_events", &self.min_events, "must be an integer in [1, 16777216]"));
        }
        if !(self.interval_s.is_finite() && self.interval_s > 0.0 && self.interval_s <= 86_400.0) {
            return Err(bad("interval_s", &self.interval_s, "must be a number in (0, 86400]"));
        }
        if !(self.gate_margin.is_finite() && (0.0..=1e6).contains(&self.gate_margin)) {
            return Err(bad("gate_margin", &self.gate_margin, "must be a finite number >= 0"));
        }
        if !(self.episode_timeout_s.is_finite() && self.episode_timeout_s >= 0.0) {
            return Err(bad("episode_timeout_s", &self.episode_timeout_s, "must be a finite number >= 0"));
        }
        if !(self.lr_floor.is_finite() && (0.0..=1.0).contains(&self.lr_floor)) {
            return Err(bad("lr_floor", &self.lr_floor, "must be a number in [0, 1]"));
        }
        if self.lr_decay_events > 1 << 53 {
            return Err(bad("lr_decay_events", &self.lr_decay_events, "must be an integer in [0, 2^53]"));
        }
        if !(1..=1_000_000).contains(&self.round_updates) {
            return Err(bad("round_updates", &self.round_updates, "must be an integer in [1, 1000000]"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_keys_validate() {
        LearnConfig::default().validate().expect("defaults validate");
        let e = LearnConfig { gate_margin: -0.1, ..Default::default() }.validate().expect_err("negative");
        assert!(e.to_string().contains("learn.gate_margin"), "{e}");
    }

    /// The learning-rate scale of the learner after `learned` events.
    #[test]
    fn lr_decays_linearly_to_the_floor_and_stays() {
        let c = LearnConfig { lr_decay_events: 1000, lr_floor: 0.1, ..Default::default() };
        assert_eq!(c.lr_scale(0), 1.0);
        assert!((c.lr_scale(500) - 0.55).abs() < 1e-12);
        assert!((c.lr_scale(1000) - 0.1).abs() < 1e-12);
        assert!((c.lr_scale(50_000) - 0.1).abs() < 1e-12);
        assert_eq!(LearnConfig::default().lr_scale(1 << 40), 1.0, "off by default: constant");
        let e = LearnConfig { lr_floor: 1.5, ..Default::default() }.validate().expect_err("floor");
        assert!(e.to_string().contains("learn.lr_floor"), "{e}");
    }

    #[test]
    fn defaults_validate() {
        LearnConfig::default().validate().expect("defaults validate");
    }

    #[test]
    fn bad_values_name_their_key() {
        type Edit = Box<dyn FnOnce(&mut LearnConfig)>;
        let cases: [(&str, Edit); 5] = [
            ("learn.reward_wait_s", Box::new(|c| c.reward_wait_s = -1.0)),
            ("learn.default_reward", Box::new(|c| c.default_reward = f64::NAN)),
            ("learn.min_events", Box::new(|c| c.min_events = 0)),
            ("learn.interval_s", Box::new(|c| c.interval_s = 0.0)),
            ("learn.interval_s", Box::new(|c| c.interval_s = f64::INFINITY)),
        ];
        for (key, f) in cases {
            let mut c = LearnConfig::default();
            f(&mut c);
            let e = c.validate().expect_err(key).to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn set_works_and_unknown_keys_are_refused() {
        let c = crate::Config::load(None, &["learn.missing_reward=skip".into(), "learn.min_events=5".into()])
            .expect("--set learn.*");
        assert_eq!(c.learn.missing_reward, MissingReward::Skip);
        assert_eq!(c.learn.min_events, 5);
        let e = crate::Config::load(None, &["learn.min_event=5".into()]).expect_err("typo").to_string();
        assert!(e.contains("learn.min_event") && e.contains("min_events"), "{e}");
        let e =
            crate::Config::load(None, &["learn.missing_reward=drop".into()]).expect_err("bad").to_string();
        assert!(e.contains("`default`, `skip`"), "{e}");
    }
}
