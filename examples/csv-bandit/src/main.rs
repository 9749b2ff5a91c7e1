//! A contextual bandit over a CSV file (features..., then one reward per arm),
//! trained with mappo-train's PPO. Usage: `csv-bandit [FILE.csv] [RUN_DIR]`.
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = std::env::args().nth(1).unwrap_or_else(|| "data.csv".into());
    let (mut features, mut rewards) = (Vec::new(), Vec::new());
    for line in std::fs::read_to_string(&file)?.lines().skip(1) {
        let v: Vec<f32> = line.split(',').map(str::parse).collect::<Result<_, _>>()?;
        features.push(v[..2].to_vec()); // two features, then three arms' rewards
        rewards.push(v[2..].to_vec());
    }
    let env = CsvBandit { features: features.clone(), rewards: rewards.clone(), batch: 64, rows: vec![] };
    let mut eval_env = CsvBandit { features, rewards, batch: 512, rows: vec![] };
    let evaluator = GreedyEvaluator::new(&mut eval_env, &mut Rng::new(7))?;
    let settings = TrainSettings { total_updates: 300, ..TrainSettings::default() };
    let policy = ActorCritic::new(2, 3, &ModelConfig::default(), &mut Rng::new(settings.seed), &Device::Cpu)?;
    let mut trainer = Trainer::new(PpoConfig { lr_actor: 3e-3, ..PpoConfig::default() }, settings, env, policy)?;
    let run_dir = std::env::args().nth(2).unwrap_or_else(|| "runs/csv-bandit".into());
    let summary = trainer.run(RunOptions::new(run_dir).evaluator(&evaluator).force(true))?;
    let report = summary.last_eval.ok_or("no evaluation ran")?;
    println!("oracle_agreement {:.4}", report.oracle_agreement);
    println!("checkpoint {}", summary.final_checkpoint.display());
    Ok(())
}
