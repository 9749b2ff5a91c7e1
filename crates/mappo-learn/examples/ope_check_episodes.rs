//! The episode OPE acceptance check on full-information conversations: the CLINC150 validation
//! split assembled into conversations by the conversation env, where every return is known.
//! Over 20 seeds, a log of conversations is drawn from a logging policy A (sampled, floored at
//! FLOOR_A, default 0.05, as a service exploring would), the return of a target policy B (floored at its
//! `serve.min_prob`, as served) is estimated from it with PDIS and WPDIS, and compared with B's
//! true return (Monte Carlo over 20,000 conversations in the same env). Passes when the mean
//! |WPDIS − truth| is at most 5% of the range between the optimal and the random return, and
//! WPDIS's 95% interval covers the truth in at least 18 of 20 seeds.
//!
//! ```text
//! cargo run --release -p mappo-learn --example ope_check_episodes -- A B data/clinc150/val.jsonl [EPISODES [FLOOR_A]]
//! ```
//!
//! A and B are conversation checkpoints (e.g. two seeds of `configs/conversation-clinc150.toml`).

use std::path::Path;
use std::process::ExitCode;

use candle_core::{Device, Tensor};
use mappo_config::Rng;
use mappo_env::Env;
use mappo_learn::episode_ope::{LoggedEpisode, evaluate};
use mappo_learn::ope::Candidate;
use mappo_train::{Checkpoint, RoutingPolicy};

type Error = Box<dyn std::error::Error>;

/// Plays `episodes` conversations (whole batches of the env's rows) with `policy` floored at
/// `floor`, sampling with `rng`: each conversation's steps, propensities and rewards.
fn play(
    env: &mut mappo_env::ConversationEnv,
    policy: &RoutingPolicy,
    floor: f64,
    episodes: usize,
    rng: &mut Rng,
) -> Result<Vec<LoggedEpisode>, Error> {
    let rows = env.spec().num_envs;
    let mut out = Vec::with_capacity(episodes);
    while out.len() < episodes {
        let mut batch: Vec<LoggedEpisode> = (0..rows)
            .map(|_| LoggedEpisode {
                contexts: Vec::new(),
                actions: Vec::new(),
                propensities: Vec::new(),
                rewards: Vec::new(),
            })
            .collect();
        let mut obs: Option<Tensor> = Some(env.reset(rng)?);
        while let Some(o) = obs.take() {
            let probs = policy.floored(&o, floor)?;
            let ctx = o.to_vec2::<f32>()?;
            let actions: Vec<u32> = probs.iter().map(|p| rng.categorical(p) as u32).collect();
            let step = env.step(&actions, rng)?;
            for (i, ep) in batch.iter_mut().enumerate() {
                let a = actions[i] as usize;
                ep.contexts.extend_from_slice(&ctx[i]);
                ep.actions.push(a);
                ep.propensities.push(f64::from(probs[i][a]));
                ep.rewards.push(f64::from(step.reward[i]));
            }
            if step.done.iter().all(|&d| d) {
                break;
            }
            obs = step.next_obs;
        }
        out.extend(batch);
    }
    out.truncate(episodes);
    Ok(out)
}

fn run() -> Result<bool, Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(a), Some(b), Some(corpus)) = (args.first(), args.get(1), args.get(2)) else {
        return Err("usage: ope_check_episodes A B CORPUS.jsonl [EPISODES]".into());
    };
    let episodes: usize = args.get(3).map_or(Ok(2000), |s| s.parse())?;
    let floor_a: f64 = args.get(4).map_or(Ok(0.05), |s| s.parse())?;
    let dev = Device::Cpu;
    let (ca, cb) = (Checkpoint::open(Path::new(a), &dev)?, Checkpoint::open(Path::new(b), &dev)?);
    let cfg = ca.config.clone();
    let reference =
        mappo_eval::evaluate_conversation(&ca, Path::new(corpus), 2000, 7, &dev, &mut |_, _, _| {})?;
    let range = reference.optimal_return - reference.random_return;
    let embedder = mappo_env::text::load_embedder(&cfg.env, &dev)?;
    let data = mappo_env::text::embed_corpus(&cfg.env, &embedder, Path::new(corpus), &mut |_, _, _| {})?;
    let mut env = mappo_train::conversation_env(&cfg, data, 250, &dev)?;
    let (logging, target) =
        (RoutingPolicy::from_checkpoint(&ca, &dev)?, RoutingPolicy::from_checkpoint(&cb, &dev)?);
    let floor_b = target.min_prob();
    let candidate = Candidate::from_checkpoint(&cb, &dev)?;
    let truth_eps = play(&mut env, &target, floor_b, 20_000, &mut Rng::new(12345))?;
    let truth = truth_eps.iter().map(|e| e.rewards.iter().sum::<f64>()).sum::<f64>() / truth_eps.len() as f64;
    println!(
        "optimal {:.3}, random {:.3} (range {range:.3}); B's true return {truth:.3} (floored at {floor_b}); A floored at {floor_a}; {episodes} conversations per log",
        reference.optimal_return, reference.random_return
    );
    println!("seed  logging   PDIS [95%]              WPDIS [95%]             ESS");
    let (mut err_p, mut err_w, mut cov_p, mut cov_w) = (0.0, 0.0, 0, 0);
    for seed in 0..20u64 {
        let log = play(&mut env, &logging, floor_a, episodes, &mut Rng::derived(seed, "ope-check-log"))?;
        let r = evaluate(&log, &candidate, 1.0, seed)?;
        err_p += (r.pdis.value - truth).abs() / 20.0;
        err_w += (r.wpdis.value - truth).abs() / 20.0;
        cov_p += usize::from(r.pdis.ci[0] <= truth && truth <= r.pdis.ci[1]);
        cov_w += usize::from(r.wpdis.ci[0] <= truth && truth <= r.wpdis.ci[1]);
        println!(
            "{seed:>4}  {:>7.3}   {:>6.3} [{:.3}, {:.3}]   {:>6.3} [{:.3}, {:.3}]   {:>6.1}",
            r.logging_value,
            r.pdis.value,
            r.pdis.ci[0],
            r.pdis.ci[1],
            r.wpdis.value,
            r.wpdis.ci[0],
            r.wpdis.ci[1],
            r.ess
        );
    }
    println!(
        "mean |PDIS − truth| {err_p:.4} ({:.4} of the range), covered {cov_p}/20; mean |WPDIS − truth| {err_w:.4} ({:.4} of the range), covered {cov_w}/20",
        err_p / range,
        err_w / range
    );
    Ok(err_w / range <= 0.05 && cov_w >= 18)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            println!("FAILED: the WPDIS acceptance (≤ 5% of the range, ≥ 18/20 covered) is not met");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
