//! The command line: every subcommand's arguments (clap derive).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Exit status of a training run stopped by SIGINT (Ctrl-C) after writing its checkpoint.
pub const EXIT_INTERRUPTED: i32 = 130;
/// Exit status of a training run stopped by SIGTERM after writing its checkpoint.
pub const EXIT_TERMINATED: i32 = 143;

#[derive(Parser)]
#[command(
    name = "mappo",
    version,
    about = "Learn with PPO which of N specialist agents should answer a prompt, then route prompts",
    long_about = "mappo trains a small actor-critic over prompt embeddings with PPO (a learned prompt \
router), evaluates it and routes prompts from a checkpoint.\n\nQuick start:\n  mappo train            \
# synthetic environment, default config\n  mappo eval --checkpoint <path printed by train> --json",
    after_help = "Exit status: 0 done, 1 error (the message starts with `error:`), 130 / 143 a training run \
stopped by Ctrl-C / SIGTERM after writing its checkpoint (continue it with `mappo train --resume RUN_DIR`)."
)]
pub struct Cli {
    /// Log filter: a level (error, warn, info, debug, trace, off) or TARGET=LEVEL pairs separated
    /// by commas (e.g. info,mappo_train=debug). RUST_LOG, when set, wins.
    #[arg(long, global = true, default_value = "info")]
    pub log: String,
    /// Only warnings and errors on stderr, no progress bars.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Train a router with PPO. The last line of stdout is the final checkpoint's path.
    Train(TrainArgs),
    /// Evaluate a checkpoint greedily (argmax): fresh synthetic prompts, or a corpus for text checkpoints.
    Eval(EvalArgs),
    /// Draw the training curves of runs from their metrics.jsonl into an SVG or PNG (several runs
    /// overlaid).
    Plot(PlotArgs),
    /// Route texts with a text-env, conversation or cascade checkpoint, or prompt vectors through a
    /// pipeline checkpoint's stages: the chosen (most probable) agent and every agent's probability.
    Route(RouteArgs),
    /// Find the cost weight λ at which a cost-aware router meets a budget on a calibration corpus.
    Calibrate(CalibrateArgs),
    /// Embed texts with all-MiniLM-L6-v2 (JSON lines in, the same lines with "embedding" added out).
    Embed(EmbedArgs),
    /// Print the resolved config (every key; defaults unless --config/--set change them) as TOML.
    Config(ConfigArgs),
    /// Serve routing over HTTP: every decision logged with its propensity, rewards joined later.
    Serve(ServeArgs),
    /// The decision log of `mappo serve`: export it as JSON lines, or print its statistics.
    Log {
        #[command(subcommand)]
        cmd: LogCmd,
    },
    /// Off-policy evaluation: a checkpoint's mean reward on logged traffic (IPS, SNIPS, DR with 95% intervals).
    Ope(OpeArgs),
    /// Learn from logged feedback: off-policy PPO on the newest published policy, from the decision
    /// log (--db) or an exported log (--log-file).
    Learn(LearnArgs),
    /// Play users against a running `mappo serve`: route corpus texts, send each chosen agent's
    /// reward back; prints a JSON summary.
    Simulate(SimulateArgs),
    /// Policy versions in the decision log's database: publish a checkpoint, list the versions.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
}

/// The database URL's default: the embedded SQLite file `mappo serve` uses.
pub const DEFAULT_DB: &str = "sqlite:runs/serve/mappo.db";

#[derive(Subcommand)]
pub enum LogCmd {
    /// Write every decision as one JSON line: decision_id, time (RFC 3339), policy_version,
    /// action, agent, probabilities, propensity, reward (null when none), text (when logged), kind,
    /// replica, cost_weight (cost-aware policies), shadow (shadow mode).
    Export {
        /// Database: sqlite:PATH or postgres://USER:PASSWORD@HOST:PORT/DB.
        #[arg(long, default_value = DEFAULT_DB)]
        db: String,
        /// Output file (default: stdout).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Also write each decision's logged embedding ("embedding": 384 floats).
        #[arg(long)]
        embeddings: bool,
    },
    /// Counts, reward join rate, mean reward per agent.
    Stats {
        /// Database: sqlite:PATH or postgres://...
        #[arg(long, default_value = DEFAULT_DB)]
        db: String,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Publish a checkpoint as a new policy version (the same file twice gives the same version).
    Publish {
        /// Database: sqlite:PATH or postgres://...
        #[arg(long, default_value = DEFAULT_DB)]
        db: String,
        /// Checkpoint file, or a run directory (its newest checkpoint that loads).
        #[arg(long, value_name = "CHECKPOINT|RUN_DIR")]
        checkpoint: PathBuf,
        /// A note stored with the version.
        #[arg(long)]
        note: Option<String>,
        /// Publish only through the promotion gate, as `mappo learn --publish` does: off-policy
        /// evaluation (`learn.gate_estimator`) on the newest 2,000 rewarded decisions must put the
        /// candidate's lower confidence bound at or above the current version's estimate minus
        /// `learn.gate_margin`. The decision is recorded (`mappo policy list`); a refusal exits 1.
        #[arg(long)]
        gate: bool,
        /// TOML config for the gate's `[learn]` keys (with --gate).
        #[arg(long, short, requires = "gate")]
        config: Option<PathBuf>,
        /// Override a config key, e.g. `--set learn.gate_margin=0.05` (with --gate; repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE", requires = "gate")]
        set: Vec<String>,
    },
    /// Write a published version's checkpoint to a file (e.g. to `mappo eval` or `mappo route`
    /// the version being served).
    Export {
        /// Database: sqlite:PATH or postgres://...
        #[arg(long, default_value = DEFAULT_DB)]
        db: String,
        /// The version (default: the newest).
        #[arg(long)]
        version: Option<i64>,
        /// The checkpoint file to write (refused if it exists, unless --force).
        #[arg(long, value_name = "FILE.safetensors")]
        out: PathBuf,
        /// Replace --out if it exists.
        #[arg(long)]
        force: bool,
    },
    /// List the published versions, newest last, and the promotion gate's decisions.
    List {
        /// Database: sqlite:PATH or postgres://...
        #[arg(long, default_value = DEFAULT_DB)]
        db: String,
        /// One JSON array of versions instead of a table; each version has "gate" (the gate
        /// decision that published it, or null) and "refused" (candidates refused against it).
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// TOML config file (keys not in it keep their defaults; see `mappo config`). Relative paths in
    /// it are relative to the file.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Override one key, e.g. --set train.total_updates=500 --set ppo.lr_actor=1e-3 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Run directory (default: runs/<config name>-seed<seed>-<unix time>). A directory that already
    /// holds a run is refused: use --resume to continue it or --force to replace it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace the run already in --out (its checkpoints, metrics and summary are deleted).
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// Continue a run: a run directory (its newest checkpoint that loads) or a checkpoint file.
    /// The config comes from the checkpoint.
    #[arg(long, value_name = "RUN_DIR|CHECKPOINT")]
    pub resume: Option<PathBuf>,
    /// Device: auto, cpu, cuda or cuda:N (overrides train.device).
    #[arg(long)]
    pub device: Option<String>,
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// Checkpoint file written by `mappo train`, or a run directory (its newest checkpoint that loads).
    #[arg(long, value_name = "CHECKPOINT|RUN_DIR")]
    pub checkpoint: PathBuf,
    /// Number of fresh prompts (synthetic checkpoints), pipeline episodes or conversations
    /// (default 10000; not for text-env checkpoints, which are evaluated on every --corpus row).
    #[arg(long)]
    pub episodes: Option<usize>,
    /// Seed of the fresh prompts, pipeline episodes or conversations (default 2024; the agents,
    /// stages and tables come from the run).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Device: auto (CUDA when built with `cuda` and a GPU answers, else the CPU), cpu,
    /// cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Corpus (JSON lines) for a text-env checkpoint, or the labelled corpus a conversation
    /// checkpoint's conversations are assembled from (default: its run's eval corpus). Text env:
    /// mean reward under the checkpoint's reward
    /// model and, for labelled prompts, accuracy, per-agent precision/recall and the confusion matrix.
    /// On an outcome corpus (every row with "outcomes") also the quality–cost curve over a sweep
    /// of the cost weight λ, APGR, CPT(50%), CPT(80%), the oracle and each agent alone.
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Cost weight λ of the greedy figures (cost-aware routers; default 0), also reported as
    /// `routing.at` on an outcome corpus.
    #[arg(long, requires = "corpus", value_name = "W")]
    pub cost_weight: Option<f64>,
    /// Also fit a full-information ridge-regression router on this outcome corpus (every
    /// agent's outcome of every row, same embeddings) and report its curve side by side
    /// (`routing.baseline`).
    #[arg(long, requires = "corpus", value_name = "TRAIN.jsonl")]
    pub baseline_train: Option<PathBuf>,
    /// L2 penalty of the ridge baseline; 0 (the default) chooses it from 0.1, 1, 10, 100, 1000
    /// by 5-fold cross-validation on the --baseline-train corpus (the held-out folds' APGR).
    #[arg(long, default_value_t = 0.0, value_name = "ALPHA")]
    pub ridge_alpha: f64,
    /// Draw the quality–cost curve (with each agent alone, random routing, the oracle and the
    /// baseline when fit) into FILE.png or FILE.svg (outcome corpora).
    #[arg(long, requires = "corpus", value_name = "FILE.png|FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Cascade checkpoints: also evaluate this one-step router (a text-env checkpoint or run
    /// directory with the same agents) on the same corpus and report it side by side (`one_step`
    /// in the JSON: its curve, APGR and CPT).
    #[arg(long, value_name = "CHECKPOINT|RUN_DIR")]
    pub one_step: Option<PathBuf>,
}

#[derive(clap::Args)]
#[command(after_help = plot_help())]
pub struct PlotArgs {
    /// Run directories written by `mappo train` (each with its metrics.jsonl). Several are
    /// overlaid, one colour each, the legend naming each directory.
    #[arg(required = true, value_name = "RUN_DIR")]
    pub runs: Vec<PathBuf>,
    /// Image to write: FILE.svg or FILE.png (repeatable: one image each). Default
    /// RUN_DIR/curves.svg for one run; required for several. Each path is printed on stdout.
    #[arg(long, short, value_name = "FILE.svg|FILE.png")]
    pub output: Vec<PathBuf>,
    /// Horizontal axis: the update count, or the training seconds (evaluation excluded; the
    /// calls of a resumed run added up).
    #[arg(long, value_enum, default_value_t = XAxis::Update)]
    pub x: XAxis,
    /// Print what was drawn as one JSON object instead of the paths: {"outputs", "x", "width",
    /// "height", "plotted" (series names, panel order), "left_out" (the other series), "runs":
    /// [{"dir", "colour", "update_lines", "eval_lines", "truncated_line", "series": [{"name",
    /// "points", "first", "last"}]}]}, each point as {"update", "seconds", "value"}.
    #[arg(long)]
    pub json: bool,
}

/// `mappo plot --help`'s list of series, from the one list of them (`mappo_train::metrics`).
fn plot_help() -> String {
    use mappo_train::metrics::{LineKind, SERIES};
    let width = SERIES.iter().map(|s| s.name.len()).max().unwrap_or(0);
    let mut h = String::from("One panel per series of the runs' metrics.jsonl, in this order:\n");
    for s in SERIES {
        h += &format!("  {:width$}  {}\n", s.name, s.title);
    }
    let every = |k: LineKind| match k {
        LineKind::Update => "train.log_interval",
        LineKind::Eval => "train.eval_interval",
    };
    h += &format!(
        "\nThe first ones are logged every {} updates, the eval.* ones (the periodic greedy evaluation) \
         every {}. A series no run logged is left out, and so is mean_return where it repeats \
         mean_reward (one-step envs); stderr says what was drawn. A cut-short last line (a run that \
         crashed mid-write) is left out with a warning.",
        every(LineKind::Update),
        every(LineKind::Eval)
    );
    h
}

/// The horizontal axis of `mappo plot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum XAxis {
    /// The update count.
    Update,
    /// Training seconds.
    Seconds,
}

#[derive(clap::Args)]
pub struct CalibrateArgs {
    /// Checkpoint of a cost-aware text router (agents with a `cost`), or its run directory.
    #[arg(long, value_name = "CHECKPOINT|RUN_DIR")]
    pub checkpoint: PathBuf,
    /// Calibration prompts (JSON lines with "text"; outcomes not needed).
    #[arg(long)]
    pub corpus: PathBuf,
    /// Budget: mean cost per request at most C (the agents' `cost` units).
    #[arg(long, value_name = "C", conflicts_with = "max_share", required_unless_present = "max_share")]
    pub max_cost: Option<f64>,
    /// Budget: at most this share (0–1) of the prompts to AGENT, e.g. gpt-4-1106=0.2.
    #[arg(long, value_name = "AGENT=S")]
    pub max_share: Option<String>,
    /// One JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

#[derive(clap::Args)]
#[command(after_help = "A pipeline checkpoint routes prompt vectors, not texts: every prompt passes \
the stages in order, each stage greedy and seeing the earlier stages' choices. Each prompt prints one \
tab-separated line per stage (prompt, stage, option index, option, every option's probability), then \
`prompt expected_reward=R optimal_reward=R* optimal_agents=a,b,c`: the noise-free team reward of the \
chosen options and of the best joint action (by enumeration), which the env knows.\n\n  \
mappo route --checkpoint runs/pipeline --samples 5 --seed 1 --json\n  \
mappo route --checkpoint runs/pipeline < vectors.jsonl   # per line a JSON array of env.embed_dim numbers")]
pub struct RouteArgs {
    /// Checkpoint of a text-env, conversation, cascade or pipeline run, or its run directory
    /// (newest checkpoint that loads). A conversation checkpoint routes the texts as the turns of
    /// one conversation, each turn seeing the agent chosen at the one before (on stdin, an empty
    /// line starts a new conversation). A cascade checkpoint prints each prompt's first agent and,
    /// with --response, whether to accept that agent's answer or escalate. A pipeline checkpoint
    /// routes prompt vectors through every stage: --samples N drawn from its env, or JSON arrays
    /// of env.embed_dim numbers on stdin, one prompt per line (each L2-normalised, as the env's).
    #[arg(long, value_name = "CHECKPOINT|RUN_DIR")]
    pub checkpoint: PathBuf,
    /// One JSON object per decision: {"text", "agent_index", "agent", "probabilities" (in option
    /// order), "by_agent" {name: probability}, "turn" for a conversation, "stage" for a cascade}
    /// instead of a tab-separated line. A pipeline: one object per prompt, {"prompt" (0-based
    /// index), "stages": [{"stage", "agent", "agent_index", "probabilities", "by_agent"}, ...] in
    /// stage order, "expected_reward", "optimal_reward", "optimal_agents"}.
    #[arg(long)]
    pub json: bool,
    /// Pipeline checkpoints: route N prompts drawn from the env of the checkpoint's run, as
    /// `mappo eval` draws its fresh prompts (`mappo eval --episodes N --seed S` scores the same
    /// prompts).
    #[arg(long, value_name = "N", conflicts_with = "texts")]
    pub samples: Option<usize>,
    /// Seed of the --samples prompts (default 2024, as `mappo eval`'s; the options and tables come
    /// from the run).
    #[arg(long, value_name = "S", requires = "samples")]
    pub seed: Option<u64>,
    /// Device: auto (CUDA when built with `cuda` and a GPU answers, else the CPU), cpu,
    /// cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Cost weight λ for a cost-aware router (agents with a `cost`): higher = cheaper agents
    /// (see `mappo calibrate`). Default 0 (quality only).
    #[arg(long, default_value_t = 0.0, value_name = "W")]
    pub cost_weight: f64,
    /// Cascade checkpoints: the first agent's answer to the (one) text; the second decision
    /// (`escalation`: accept or escalate) is printed after the first.
    #[arg(long, value_name = "ANSWER")]
    pub response: Option<String>,
    /// Texts to route; without any, stdin is routed line by line (a filter: each line's answer is
    /// printed as soon as it is read). Empty texts are refused. The model is English-only. A
    /// pipeline checkpoint takes no texts (see --samples).
    pub texts: Vec<String>,
}

#[derive(clap::Args)]
pub struct EmbedArgs {
    /// JSON lines with a "text" field (default: stdin).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Where to write the input lines with an "embedding" (384 floats) added; every other field
    /// passes through (default: stdout).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Directory of all-MiniLM-L6-v2 (default: $MAPPO_MODEL_DIR or the user cache).
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// Device: auto (CUDA when built with `cuda` and a GPU answers, else the CPU), cpu,
    /// cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Decision log: sqlite:PATH (embedded) or postgres://USER:PASSWORD@HOST:PORT/DB (many replicas).
    #[arg(long, default_value = DEFAULT_DB)]
    pub db: String,
    /// Publish this checkpoint (file or run directory) as a policy version, unless it already is,
    /// and serve that version (even if a newer one exists). Without it, the newest published
    /// version is served. Either way, versions published later are switched to within seconds.
    #[arg(long, value_name = "CHECKPOINT|RUN_DIR", conflicts_with = "config")]
    pub checkpoint: Option<PathBuf>,
    /// Config whose [serve] section applies; when nothing is published yet, a freshly initialised
    /// policy for it (seeded by train.seed) is published, so a team can start untrained.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Listen address (overrides serve.addr; default 127.0.0.1:8080).
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: Option<String>,
    /// Override one key, e.g. --set serve.min_prob=0.05 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Allow listening beyond loopback without API keys (serve.api_keys_file).
    #[arg(long)]
    pub insecure: bool,
}

#[derive(clap::Args)]
pub struct ConfigArgs {
    /// TOML config file to resolve.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Override one key (repeatable), as for `mappo train`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

#[derive(clap::Args)]
pub struct OpeArgs {
    /// The candidate: a text-env checkpoint, or a run directory (its newest checkpoint that loads).
    #[arg(long, value_name = "CHECKPOINT|RUN_DIR")]
    pub checkpoint: PathBuf,
    /// Decision log to evaluate on: sqlite:PATH or postgres://...
    #[arg(long, conflicts_with = "log_file", required_unless_present = "log_file")]
    pub db: Option<String>,
    /// Exported log to evaluate on (`mappo log export`, JSON lines); rows need "embedding" (export
    /// with --embeddings) or "text" (embedded with the checkpoint's embedder). (Not `--log`: that
    /// is the global log filter.)
    #[arg(long, value_name = "FILE.jsonl")]
    pub log_file: Option<PathBuf>,
    /// Evaluate the candidate acting with its argmax instead of its (floored) probabilities.
    #[arg(long)]
    pub greedy: bool,
    /// The candidate's exploration floor (default: the checkpoint config's serve.min_prob, i.e.
    /// the candidate as `mappo serve` would serve it; 0 = the raw softmax of `mappo route --json`).
    #[arg(long, value_name = "P")]
    pub min_prob: Option<f64>,
    /// Cross-fitting folds of DR's reward model.
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// One JSON object {"n", "ess", "logging_value", "ips": {"value", "ci": [low, high], "se"},
    /// "snips", "dr", "warnings"} instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

#[derive(clap::Args)]
pub struct LearnArgs {
    /// Decision log: sqlite:PATH or postgres://... (default sqlite:runs/serve/mappo.db). The learner
    /// starts from the newest published version and keeps its state (watermark, optimizer, RNG) in
    /// this database.
    #[arg(long, conflicts_with = "log_file")]
    pub db: Option<String>,
    /// Train from an exported or foreign log instead (JSON lines as `mappo log export` writes
    /// them; rows with a `text` and no `embedding` are embedded with the checkpoint's embedder),
    /// one pass in file order, without a database; needs --checkpoint and --out.
    #[arg(long, value_name = "FILE.jsonl", conflicts_with_all = ["follow", "publish"])]
    pub log_file: Option<PathBuf>,
    /// With --log-file: the policy to start from (checkpoint file or run directory).
    #[arg(long, value_name = "CHECKPOINT|RUN_DIR", requires = "log_file")]
    pub checkpoint: Option<PathBuf>,
    /// With --log-file: where the checkpoint is written (DIR/checkpoints/update-N.safetensors).
    #[arg(long, requires = "log_file")]
    pub out: Option<PathBuf>,
    /// TOML config: its [ppo], [learn], train.batch_size (events per update) and train.seed apply;
    /// the model and agents come from the published policy.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Override one key, e.g. --set learn.reward_wait_s=10 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Keep learning: a round every learn.interval_s until Ctrl-C or SIGTERM (exit 0; every
    /// update is committed).
    #[arg(long)]
    pub follow: bool,
    /// Publish the policy after each round as a new version (in the same transaction as the
    /// learner's state).
    #[arg(long)]
    pub publish: bool,
    /// The learner's name (its row in the database): one learner per name.
    #[arg(long, default_value = mappo_learn::learner::DEFAULT_LEARNER)]
    pub name: String,
    /// Print a JSON summary at the end.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct SimulateArgs {
    /// The service, e.g. http://127.0.0.1:8080. With --env conversation it may be repeated (one
    /// per replica): each conversation's turns then go to the replicas in turn.
    #[arg(long, required = true)]
    pub url: Vec<String>,
    /// JSON lines with "text" and "label" (an agent name): the user's reward is 1 when the routed
    /// agent is the label, else 0 (for conversations, plus the continuity bonus when a turn keeps
    /// the previous turn's agent).
    #[arg(long)]
    pub corpus: PathBuf,
    /// `text` (one request per prompt) or `conversation` (multi-turn users: each turn the next
    /// step of its conversation, topics following the config's chain; needs --config and
    /// --episodes).
    #[arg(long, default_value = "text", value_parser = ["text", "conversation"])]
    pub env: String,
    /// Requests to send (texts drawn from the corpus in seeded random order, repeating passes;
    /// --env text).
    #[arg(long, required_if_eq("env", "text"))]
    pub requests: Option<usize>,
    /// Conversations to play (--env conversation).
    #[arg(long, required_if_eq("env", "conversation"))]
    pub episodes: Option<usize>,
    /// The config whose [env] gives the conversations' turns, p_stay, continuity_bonus and
    /// reward_at (--env conversation; e.g. the served config).
    #[arg(long, short, required_if_eq("env", "conversation"))]
    pub config: Option<PathBuf>,
    /// Requests (or conversations) in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Wait this long after a decision before sending its reward (--env text).
    #[arg(long, default_value_t = 0)]
    pub feedback_delay_ms: u64,
    /// Probability that a decision's reward is never sent (--env text).
    #[arg(long, default_value_t = 0.0)]
    pub missing_feedback: f64,
    /// Seed of the text order and the missing feedback (and of the conversations' topics).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// File whose first line is an API key (sent as a bearer token).
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
}
