//! A contextual bandit over a CSV file (features..., then one reward per arm),
//! trained with mappo-train's PPO. Usage: `csv-bandit [FILE.csv] [RUN_DIR]`.
//!
//! The file starts with a header naming its columns: the features, then the arms'
//! rewards (the columns whose names start with `reward`). Every other line is one
//! context: a finite number per column. A bad file stops the program before training,
//! with an error naming the file and the line, and a non-zero exit status.
use std::error::Error;
use std::fmt;
use std::process::ExitCode;

use mappo_train::candle_core::{Device, Tensor};
use mappo_train::config::{ModelConfig, PpoConfig, Rng};
use mappo_train::env::{Env, EnvError, EnvSpec, KnownRewards, Step};
use mappo_train::nn::ActorCritic;
use mappo_train::{GreedyEvaluator, RunOptions, TrainSettings, Trainer};

struct CsvBandit { features: Vec<Vec<f32>>, rewards: Vec<Vec<f32>>, batch: usize, rows: Vec<usize> }

impl Env for CsvBandit {
    fn kind(&self) -> &str { "csv-bandit" }
    fn spec(&self) -> EnvSpec {
        EnvSpec { obs_dim: self.features[0].len(), num_actions: self.rewards[0].len(), num_envs: self.batch }
    }
    fn device(&self) -> &Device { &Device::Cpu }
    fn reset(&mut self, rng: &mut Rng) -> Result<Tensor, EnvError> {
        self.rows = (0..self.batch).map(|_| rng.below(self.features.len() as u64) as usize).collect();
        let obs: Vec<f32> = self.rows.iter().flat_map(|&r| self.features[r].clone()).collect();
        Ok(Tensor::from_vec(obs, (self.batch, self.spec().obs_dim), &Device::Cpu)?)
    }
    fn step(&mut self, actions: &[u32], _rng: &mut Rng) -> Result<Step, EnvError> {
        let reward = self.rows.iter().zip(actions).map(|(&r, &a)| self.rewards[r].get(a as usize).copied());
        Ok(Step::all_done(reward.collect::<Option<_>>().ok_or_else(|| EnvError::Other("bad action".into()))?))
    }
}

impl KnownRewards for CsvBandit {
    fn expected_rewards(&self) -> Vec<f32> { self.rows.iter().flat_map(|&r| self.rewards[r].clone()).collect() }
}

/// What is wrong with a CSV file, and where: `at` is the file, or the file and line.
#[derive(Debug)]
struct CsvError { at: String, problem: String }

impl fmt::Display for CsvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { write!(f, "{}: {}", self.at, self.problem) }
}

impl Error for CsvError {}

/// Numbers per CSV row, one `Vec` a row.
type Rows = Vec<Vec<f32>>;

/// Reads `file`: a header, then at least one row of finite numbers, one per column.
/// Returns each row's features and each row's rewards (one per arm).
fn read_csv(file: &str) -> Result<(Rows, Rows), CsvError> {
    let err = |line: Option<usize>, problem: String| {
        CsvError { at: line.map_or_else(|| file.to_string(), |n| format!("{file}, line {n}")), problem }
    };
    let text = std::fs::read_to_string(file).map_err(|e| err(None, format!("cannot read it: {e}")))?;
    // Line numbers count from 1, as editors show them; blank lines are skipped.
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l)).filter(|(_, l)| !l.trim().is_empty());
    let (n, header) = lines.next().ok_or_else(|| {
        err(None, "the file is empty; expected a header (features, then reward_* columns) and rows".into())
    })?;
    let columns: Vec<&str> = header.split(',').map(str::trim).collect();
    let arms = columns.iter().rev().take_while(|c| c.starts_with("reward")).count();
    let num_features = columns.len() - arms;
    if num_features == 0 || arms < 2 || columns[..num_features].iter().any(|c| c.starts_with("reward")) {
        return Err(err(
            Some(n),
            format!(
                "header {header:?}: expected at least one feature column, then two or more reward columns \
                 (named reward_*)"
            ),
        ));
    }
    let (mut features, mut rewards) = (Vec::new(), Vec::new());
    for (n, line) in lines {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != columns.len() {
            let (got, want) = (fields.len(), columns.len());
            return Err(err(Some(n), format!("{got} fields, expected {want} ({})", columns.join(", "))));
        }
        let mut row = Vec::with_capacity(fields.len());
        for (field, column) in fields.iter().zip(&columns) {
            let not_a_number = |_| err(Some(n), format!("{column}: {field:?} is not a number"));
            let value: f32 = field.parse().map_err(not_a_number)?;
            if !value.is_finite() {
                return Err(err(Some(n), format!("{column}: {field:?} is not a finite number")));
            }
            row.push(value);
        }
        rewards.push(row.split_off(num_features));
        features.push(row);
    }
    if features.is_empty() {
        return Err(err(None, "no rows after the header".into()));
    }
    Ok((features, rewards))
}

fn run() -> Result<(), Box<dyn Error>> {
    let file = std::env::args().nth(1).unwrap_or_else(|| "data.csv".into());
    let (features, rewards) = read_csv(&file)?;
    let env = CsvBandit { features: features.clone(), rewards: rewards.clone(), batch: 64, rows: vec![] };
    let mut eval_env = CsvBandit { features, rewards, batch: 512, rows: vec![] };
    let evaluator = GreedyEvaluator::new(&mut eval_env, &mut Rng::new(7))?;
    let settings = TrainSettings { total_updates: 300, ..TrainSettings::default() };
    let EnvSpec { obs_dim, num_actions, .. } = env.spec();
    let mut rng = Rng::new(settings.seed);
    let policy = ActorCritic::new(obs_dim, num_actions, &ModelConfig::default(), &mut rng, &Device::Cpu)?;
    let mut trainer = Trainer::new(PpoConfig { lr_actor: 3e-3, ..PpoConfig::default() }, settings, env, policy)?;
    let run_dir = std::env::args().nth(2).unwrap_or_else(|| "runs/csv-bandit".into());
    let summary = trainer.run(RunOptions::new(run_dir).evaluator(&evaluator).force(true))?;
    let report = summary.last_eval.ok_or("no evaluation ran")?;
    println!("oracle_agreement {:.4}", report.oracle_agreement);
    println!("checkpoint {}", summary.final_checkpoint.display());
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("csv-bandit: {e}");
            let mut cause = e.source();
            while let Some(c) = cause {
                eprintln!("  caused by: {c}");
                cause = c.source();
            }
            ExitCode::FAILURE
        }
    }
}
