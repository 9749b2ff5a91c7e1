//! The OPE acceptance check on full-information data: on the labelled CLINC150 validation split
//! every agent's reward is known (1 when the agent is the prompt's label, else 0), so the true
//! value of any policy is known. Over 20 seeds, a log is drawn from a logging policy A, the
//! value of a target policy B is estimated from it (IPS, SNIPS, DR), and compared with B's true
//! value. Passes when the mean |DR − truth| ≤ 0.02 and DR's 95% interval covers the truth in
//! at least 18 of 20 seeds.
//!
//! ```text
//! cargo xtask fetch-model
//! cargo xtask fetch-data clinc150 --from ../shared/data/clinc150
//! cargo run --release -p mappo-learn --example ope_check -- configs/clinc150.toml [A.safetensors B.safetensors]
//! ```
//!
//! Without checkpoints, A and B are fixed stochastic policies: the softmax of the cosine
//! similarity between a prompt's embedding and each agent's centroid (the mean embedding of the
//! validation prompts labelled with it), with temperature 10 for A (floored at 0.05, a weak
//! explorer) and 40 for B (floored at 0.01, as `mappo serve` floors by default). With two
//! checkpoints, A is the first (floored at 0.05) and B the second (as it would be served).

use std::path::Path;
use std::process::ExitCode;

use candle_core::Device;
use mappo_config::{Config, Rng};
use mappo_learn::LoggedEvent;
use mappo_learn::ope::{Candidate, OpeOptions, evaluate};
use mappo_log::DecisionKind;
use mappo_train::Checkpoint;

type Error = Box<dyn std::error::Error>;

fn centroid_policy(name: &str, centroids: Vec<Vec<f32>>, temperature: f32, min_prob: f64) -> Candidate {
    let k = centroids.len();
    Candidate::from_fn(name, k, move |x| {
        let s: Vec<f32> = centroids
            .iter()
            .map(|c| c.iter().zip(x).map(|(a, b)| a * b).sum::<f32>() * temperature)
            .collect();
        let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = s.iter().map(|v| (v - m).exp()).collect();
        let t: f32 = e.iter().sum();
        e.iter().map(|v| v / t).collect()
    })
    .with_min_prob(min_prob)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool, Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg_path = args.first().map_or("configs/clinc150.toml", String::as_str);
    let cfg = Config::load(Some(Path::new(cfg_path)), &[])?;
    let device = Device::Cpu;
    let embedder = mappo_env::text::load_embedder(&cfg.env, &device)?;
    let data = mappo_env::text::embed_corpus(
        &cfg.env,
        &embedder,
        Path::new(&cfg.env.eval_corpus),
        &mut |_, _, _| {},
    )?;
    let (n, dim, k) = (data.prompts.len(), data.dim, cfg.env.agents.len());
    let labels: Vec<usize> = data
        .prompts
        .iter()
        .map(|p| p.label.ok_or("every validation prompt needs a label"))
        .collect::<Result<_, _>>()?;
    let (a, b) = if args.len() >= 3 {
        let ca = Checkpoint::load(Path::new(&args[1]), &device)?;
        let cb = Checkpoint::load(Path::new(&args[2]), &device)?;
        (
            Candidate::from_checkpoint(&ca, &device)?.with_min_prob(0.05),
            Candidate::from_checkpoint(&cb, &device)?,
        )
    } else {
        let mut cent = vec![vec![0f32; dim]; k];
        for (i, &l) in labels.iter().enumerate() {
            for (c, x) in cent[l].iter_mut().zip(&data.embeddings[i * dim..(i + 1) * dim]) {
                *c += x;
            }
        }
        for c in &mut cent {
            let norm = c.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            c.iter_mut().for_each(|v| *v /= norm);
        }
        (
            centroid_policy("A (centroids, T=10)", cent.clone(), 10.0, 0.05),
            centroid_policy("B (centroids, T=40)", cent, 40.0, 0.01),
        )
    };
    let pa = a.action_probabilities(&data.embeddings, n, dim)?;
    let pb = b.action_probabilities(&data.embeddings, n, dim)?;
    let value = |p: &[f64]| (0..n).map(|i| p[i * k + labels[i]]).sum::<f64>() / n as f64;
    let truth = value(&pb);
    println!(
        "{n} prompts, {k} agents; A = {} (true value {:.4}), B = {} (true value {truth:.4})",
        a.name,
        value(&pa),
        b.name
    );
    println!(
        "{:>4} {:>8} {:>8} {:>8} {:>8} {:>19} {:>7}",
        "seed", "logged", "IPS", "SNIPS", "DR", "DR 95% interval", "ESS"
    );
    let (mut err, mut covered, mut err_ips, mut err_snips) = (0.0, 0, 0.0, 0.0);
    let seeds = 20u64;
    for seed in 0..seeds {
        let mut rng = Rng::derived(seed, "ope-check");
        let events: Vec<LoggedEvent> = (0..n)
            .map(|i| {
                let row: Vec<f32> = pa[i * k..(i + 1) * k].iter().map(|&p| p as f32).collect();
                let act = rng.categorical(&row);
                LoggedEvent {
                    decision_id: None,
                    policy_version: None,
                    action: act,
                    agent: None,
                    propensity: Some(f64::from(row[act])),
                    probabilities: row,
                    reward: Some(if act == labels[i] { 1.0 } else { 0.0 }),
                    kind: DecisionKind::Sampled,
                    embedding: Some(data.embeddings[i * dim..(i + 1) * dim].to_vec()),
                    text: None,
                    cost_weight: None,
                }
            })
            .collect();
        let r = evaluate(&events, &b, &OpeOptions::default())?;
        err += (r.dr.value - truth).abs();
        err_ips += (r.ips.value - truth).abs();
        err_snips += (r.snips.value - truth).abs();
        let hit = r.dr.ci[0] <= truth && truth <= r.dr.ci[1];
        covered += usize::from(hit);
        println!(
            "{seed:>4} {:>8.4} {:>8.4} {:>8.4} {:>8.4} {:>19} {:>7.1}{}",
            r.logging_value,
            r.ips.value,
            r.snips.value,
            r.dr.value,
            format!("[{:.4}, {:.4}]", r.dr.ci[0], r.dr.ci[1]),
            r.ess,
            if hit { "" } else { "  (misses)" }
        );
    }
    let s = seeds as f64;
    let mean_err = err / s;
    println!(
        "mean |estimate - truth|: DR {mean_err:.4}, IPS {:.4}, SNIPS {:.4}; DR interval covers the truth in {covered} of {seeds}",
        err_ips / s,
        err_snips / s
    );
    let pass = mean_err <= 0.02 && covered >= 18;
    println!("{}", if pass { "PASS (mean |DR - truth| <= 0.02, coverage >= 18/20)" } else { "FAIL" });
    Ok(pass)
}
