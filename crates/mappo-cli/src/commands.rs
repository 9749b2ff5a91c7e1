//! `mappo eval | route | embed | config`.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use candle_core::Device;
use mappo_config::Config;
use mappo_eval::evaluate_synthetic;
use mappo_train::{Checkpoint, select_device};

use crate::args::{CalibrateArgs, ConfigArgs, EmbedArgs, EvalArgs, RouteArgs};
use crate::outln;
use crate::progress::{EmbedProgress, Mode};

/// A checkpoint file, or the newest checkpoint of a run directory that loads.
pub(crate) fn checkpoint_file(path: &std::path::Path) -> Result<PathBuf> {
    if path.is_dir() {
        let ckpt = Checkpoint::latest(path, &Device::Cpu)?;
        let file = ckpt.path.context("checkpoint without a path")?;
        tracing::info!("using {}", file.display());
        Ok(file)
    } else {
        Ok(path.to_path_buf())
    }
}

pub fn eval(a: EvalArgs, mode: Mode) -> Result<()> {
    let (device, _) = select_device(a.device.parse().context("--device")?)?;
    let ckpt_path = checkpoint_file(&a.checkpoint)?;
    let ckpt = Checkpoint::load(&ckpt_path, &device)?;
    if ckpt.env_kind == mappo_config::EnvKind::Cascade.as_str() {
        let env = &ckpt.config.env;
        let corpus = match &a.corpus {
            Some(c) => c.clone(),
            None if !env.eval_corpus.is_empty() => PathBuf::from(&env.eval_corpus),
            None => bail!("--corpus is needed: this cascade run has no env.eval_corpus"),
        };
        let mut bar = EmbedProgress::new(mode);
        let mut r =
            mappo_eval::evaluate_cascade(&ckpt, &corpus, &device, &mut |w, d, t| bar.update(w, d, t))?;
        if let Some(one) = &a.one_step {
            r.compare_one_step(&checkpoint_file(one)?, &corpus, &device, &mut |w, d, t| bar.update(w, d, t))?;
        }
        bar.finish();
        if a.json {
            outln!("{}", serde_json::to_string(&r)?);
            return Ok(());
        }
        outln!("{:<18} {}", "prompts", r.n);
        print_routing(&r.routing)?;
        if let Some(one) = &r.one_step {
            let f = |x: Option<f64>| x.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
            outln!("{:<18} {}", "one-step APGR", f(one.summary.apgr));
            outln!("{:<18} {}", "one-step CPT(50%)", f(one.summary.cpt50));
            outln!("{:<18} {}", "one-step CPT(80%)", f(one.summary.cpt80));
        }
        return Ok(());
    }
    if a.one_step.is_some() {
        bail!("--one-step is for cascade checkpoints (this one was trained on `{}`)", ckpt.env_kind);
    }
    if ckpt.env_kind == mappo_config::EnvKind::Conversation.as_str() {
        // Conversations assembled from --corpus (else the run's eval corpus, else its corpus).
        let env = &ckpt.config.env;
        let corpus = match &a.corpus {
            Some(c) => c.clone(),
            None if !env.eval_corpus.is_empty() => PathBuf::from(&env.eval_corpus),
            None => PathBuf::from(&env.corpus),
        };
        if a.episodes == Some(0) {
            bail!("--episodes must be at least 1");
        }
        let mut bar = EmbedProgress::new(mode);
        let r = mappo_eval::evaluate_conversation(
            &ckpt,
            &corpus,
            a.episodes.unwrap_or(10_000),
            a.seed.unwrap_or(2024),
            &device,
            &mut |w, d, t| bar.update(w, d, t),
        )?;
        bar.finish();
        if a.json {
            outln!("{}", serde_json::to_string(&r)?);
        } else {
            outln!("{:<22} {}", "conversations from", corpus.display());
            print_episodes(&r)?;
        }
        return Ok(());
    }
    if let Some(corpus) = &a.corpus {
        if a.episodes.is_some() || a.seed.is_some() {
            // A usage error (exit status 2, as clap's own): these flags mean nothing here.
            use clap::CommandFactory;
            crate::args::Cli::command()
                .error(
                    clap::error::ErrorKind::ArgumentConflict,
                    "--episodes and --seed cannot be used with --corpus for a text-env checkpoint: it is \
                     evaluated on every row of --corpus (they are for synthetic, pipeline and conversation \
                     checkpoints)",
                )
                .exit();
        }
        if let Some(w) = a.cost_weight
            && !w.is_finite()
        {
            bail!("--cost-weight must be a finite number, got {w}");
        }
        if !(a.ridge_alpha.is_finite() && a.ridge_alpha >= 0.0) {
            bail!(
                "--ridge-alpha must be a number >= 0 (0: chosen by cross-validation), got {}",
                a.ridge_alpha
            );
        }
        let opts = mappo_eval::CorpusEvalOptions {
            cost_weight: a.cost_weight,
            baseline_train: a.baseline_train.clone(),
            ridge_alpha: a.ridge_alpha,
        };
        let mut bar = EmbedProgress::new(mode);
        let r = mappo_eval::evaluate_corpus_with(&ckpt_path, corpus, &device, &opts, &mut |w, d, t| {
            bar.update(w, d, t)
        })?;
        bar.finish();
        if let Some(plot) = &a.plot {
            let routing = r.routing.as_ref().with_context(|| {
                format!("--plot needs an outcome corpus (every row with \"outcomes\"): {}", corpus.display())
            })?;
            crate::plot::draw(routing, plot)?;
            tracing::info!("plot written to {}", plot.display());
        }
        if a.json {
            outln!("{}", serde_json::to_string(&r)?);
            return Ok(());
        }
        if let Some(rt) = &r.routing {
            let f = |x: Option<f64>| x.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
            print_routing(rt)?;
            if let Some(b) = &rt.baseline {
                outln!("{:<18} {}", "ridge APGR", f(b.summary.apgr));
                outln!("{:<18} {}", "ridge CPT(50%)", f(b.summary.cpt50));
                outln!("{:<18} {}", "ridge CPT(80%)", f(b.summary.cpt80));
            }
            if let Some(p) = &rt.at {
                let shares: Vec<String> = p.share.iter().map(|(k, v)| format!("{k}={v:.3}")).collect();
                outln!(
                    "{:<18} quality {:.4}, cost {:.4}, {}",
                    format!("at λ={}", p.cost_weight),
                    p.quality,
                    p.cost,
                    shares.join(" ")
                );
            }
            outln!("");
        }
        outln!("{:<18} {}", "prompts", r.n);
        outln!("{:<18} {}", "labelled", r.labelled);
        let acc = r.accuracy.map(|a| format!("{a:.4}")).unwrap_or_else(|| "- (no labels)".into());
        outln!("{:<18} {acc}", "accuracy");
        outln!("{:<18} {:.4}", "mean reward", r.mean_reward);
        outln!("{:<18} {:.4}", "oracle reward", r.oracle_reward);
        outln!("{:<18} {:.4}", "random reward", r.random_reward);
        outln!("{:<18} {:.4}", "normalized reward", r.normalized_reward);
        outln!("{:<18} {:.4}", "oracle agreement", r.oracle_agreement);
        let width = r.agents.iter().map(String::len).max().unwrap_or(5).max(5);
        outln!("");
        outln!("{:<width$} {:>9} {:>9} {:>8} {:>9}", "agent", "precision", "recall", "support", "routed");
        let f = |x: Option<f64>| x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into());
        for s in &r.per_agent {
            outln!(
                "{:<width$} {:>9} {:>9} {:>8} {:>9}",
                s.agent,
                f(s.precision),
                f(s.recall),
                s.support,
                s.predicted
            );
        }
        outln!("");
        outln!("confusion matrix (rows: label, columns: routed to; column k = agent k above)");
        let cell = r.confusion.iter().flatten().map(|c| c.to_string().len()).max().unwrap_or(1).max(3);
        let head: Vec<String> = (0..r.agents.len()).map(|k| format!("{k:>cell$}")).collect();
        outln!("{:<width$} {}", "", head.join(" "));
        for (name, row) in r.agents.iter().zip(&r.confusion) {
            let cells: Vec<String> = row.iter().map(|c| format!("{c:>cell$}")).collect();
            outln!("{name:<width$} {}", cells.join(" "));
        }
        return Ok(());
    }
    if a.episodes == Some(0) {
        bail!("--episodes must be at least 1");
    }
    if ckpt.env_kind == mappo_config::EnvKind::Pipeline.as_str() {
        let r = mappo_eval::evaluate_pipeline(
            &ckpt,
            a.episodes.unwrap_or(10_000),
            a.seed.unwrap_or(2024),
            &device,
        )?;
        if a.json {
            outln!("{}", serde_json::to_string(&r)?);
        } else {
            print_episodes(&r)?;
        }
        return Ok(());
    }
    let r = evaluate_synthetic(&ckpt, a.episodes.unwrap_or(10_000), a.seed.unwrap_or(2024), &device)?;
    if a.json {
        outln!("{}", serde_json::to_string(&r)?);
    } else {
        outln!("prompts            {}", r.n);
        outln!("mean reward        {:.4}", r.mean_reward);
        outln!("oracle reward      {:.4}", r.oracle_reward);
        outln!("random reward      {:.4}", r.random_reward);
        outln!("normalized reward  {:.4}", r.normalized_reward);
        outln!("oracle agreement   {:.4}", r.oracle_agreement);
    }
    Ok(())
}

/// The text form of a routing report's headline: the agents alone, the oracle, APGR and CPT.
fn print_routing(rt: &mappo_eval::RoutingReport) -> Result<()> {
    let f = |x: Option<f64>| x.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
    outln!("{:<18} {} (weak) / {} (strong)", "agents", rt.weak, rt.strong);
    for s in &rt.agents {
        outln!("{:<18} quality {:.4}, cost {}", s.agent, s.quality, s.cost);
    }
    outln!("{:<18} {:.4}", "oracle quality", rt.oracle_quality);
    outln!("{:<18} {}", "APGR", f(rt.summary.apgr));
    outln!("{:<18} {}", "CPT(50%)", f(rt.summary.cpt50));
    outln!("{:<18} {}", "CPT(80%)", f(rt.summary.cpt80));
    Ok(())
}

/// The text form of an episode evaluation.
fn print_episodes(r: &mappo_train::EpisodeReport) -> Result<()> {
    outln!("{:<22} {}", "episodes", r.episodes);
    outln!("{:<22} {:.2}", "steps per episode", r.mean_steps);
    outln!("{:<22} {:.4}", "mean return", r.mean_return);
    outln!("{:<22} {:.4}", "optimal return", r.optimal_return);
    outln!("{:<22} {:.4}", "random return", r.random_return);
    if let Some(m) = r.myopic_return {
        outln!("{:<22} {m:.4}", "myopic return");
    }
    outln!("{:<22} {:.4}", "normalized return", r.normalized_return);
    if let Some(s) = r.optimal_share {
        outln!("{:<22} {s:.4}", "optimal share");
    }
    if let Some(s) = r.stagewise_not_optimal {
        outln!("{:<22} {s:.4}", "stagewise not optimal");
    }
    Ok(())
}

pub fn route(a: RouteArgs) -> Result<()> {
    if !a.cost_weight.is_finite() {
        bail!("--cost-weight must be a finite number, got {}", a.cost_weight);
    }
    let (device, _) = select_device(a.device.parse().context("--device")?)?;
    let file = checkpoint_file(&a.checkpoint)?;
    let ckpt = Checkpoint::load(&file, &device)?;
    if ckpt.env_kind == mappo_config::EnvKind::Pipeline.as_str() {
        return route_pipeline(&a, &ckpt, &device);
    }
    if a.samples.is_some() {
        bail!(
            "--samples draws prompt vectors from a pipeline env: this checkpoint was trained on `{}`; give \
             it texts to route instead (arguments, or one per line on stdin)",
            ckpt.env_kind
        );
    }
    drop(ckpt);
    let router = mappo_eval::Router::load(&file, &device)?;
    if a.cost_weight != 0.0 && !router.cost_aware() {
        tracing::warn!("--cost-weight is ignored: this router has no costs (no agent has a `cost`)");
    }
    let w = a.cost_weight;
    let print = |r: &mappo_eval::Routed| -> Result<()> {
        let options = router.options_of(r);
        if a.json {
            let mut v = serde_json::to_value(r)?;
            let by_agent: serde_json::Map<String, serde_json::Value> =
                options.iter().zip(&r.probabilities).map(|(n, p)| (n.clone(), (*p).into())).collect();
            v["by_agent"] = by_agent.into();
            outln!("{v}");
        } else {
            let probs: Vec<String> =
                options.iter().zip(&r.probabilities).map(|(n, p)| format!("{n}={p:.3}")).collect();
            let stage = r.stage.as_ref().map(|s| format!("{s}\t")).unwrap_or_default();
            outln!("{stage}{}\t{}\t{}\t{}", r.agent_index, r.agent, probs.join(" "), r.text);
        }
        Ok(())
    };
    if a.response.is_some() && !router.is_cascade() {
        bail!("--response is for cascade checkpoints: this router decides once per text");
    }
    if router.is_cascade() {
        if a.response.is_some() && a.texts.len() != 1 {
            bail!("--response is the first agent's answer to one text: give exactly one text with it");
        }
        let route_one = |text: &str| -> Result<()> {
            for r in router.route_cascade(text, a.response.as_deref(), w)? {
                print(&r)?;
            }
            std::io::stdout().flush()?;
            Ok(())
        };
        if let Some(i) = a.texts.iter().position(|t| t.trim().is_empty()) {
            bail!("text {} is empty: there is nothing to route", i + 1);
        }
        for t in &a.texts {
            route_one(t)?;
        }
        if a.texts.is_empty() {
            for (n, line) in std::io::stdin().lock().lines().enumerate() {
                let line = line.with_context(|| format!("reading stdin, line {}", n + 1))?;
                if line.trim().is_empty() {
                    tracing::warn!("stdin line {} is empty: not routed", n + 1);
                    continue;
                }
                route_one(&line)?;
            }
        }
        return Ok(());
    }
    if router.is_conversation() {
        // The texts are the turns of one conversation; on stdin, an empty line starts a new one.
        let route_turns = |turns: &[String]| -> Result<()> {
            let refs: Vec<&str> = turns.iter().map(String::as_str).collect();
            for r in router.route_conversation(&refs)? {
                print(&r)?;
            }
            std::io::stdout().flush()?;
            Ok(())
        };
        if !a.texts.is_empty() {
            if let Some(i) = a.texts.iter().position(|t| t.trim().is_empty()) {
                bail!("turn {} is empty: there is nothing to route", i + 1);
            }
            return route_turns(&a.texts);
        }
        let mut turns = Vec::new();
        for (n, line) in std::io::stdin().lock().lines().enumerate() {
            let line = line.with_context(|| format!("reading stdin, line {}", n + 1))?;
            if line.trim().is_empty() {
                route_turns(&std::mem::take(&mut turns))?;
            } else {
                turns.push(line);
            }
        }
        return route_turns(&turns);
    }
    if !a.texts.is_empty() {
        if let Some(i) = a.texts.iter().position(|t| t.trim().is_empty()) {
            bail!("text {} is empty: there is nothing to route", i + 1);
        }
        let refs: Vec<&str> = a.texts.iter().map(String::as_str).collect();
        for r in router.route_at(&refs, w)? {
            print(&r)?;
        }
        return Ok(());
    }
    // A filter: route each line as it arrives.
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.with_context(|| format!("reading stdin, line {}", n + 1))?;
        if line.trim().is_empty() {
            tracing::warn!("stdin line {} is empty: not routed", n + 1);
            continue;
        }
        for r in router.route_at(&[line.as_str()], w)? {
            print(&r)?;
        }
        std::io::stdout().flush()?;
    }
    Ok(())
}

/// `mappo route` on a pipeline checkpoint: prompt vectors (drawn with --samples, or JSON arrays
/// on stdin) through every stage, each prompt with its expected and optimal team reward.
fn route_pipeline(a: &RouteArgs, ckpt: &Checkpoint, device: &Device) -> Result<()> {
    let router = mappo_eval::PipelineRouter::from_checkpoint(ckpt, device)?;
    let dim = router.embed_dim();
    let vectors = format!(
        "give --samples N (and --seed S) to route N prompts drawn from its env, or JSON arrays of {dim} \
         numbers (env.embed_dim) on stdin, one prompt per line"
    );
    if !a.texts.is_empty() {
        bail!("a pipeline checkpoint routes prompt vectors, not texts: {vectors}");
    }
    if a.response.is_some() {
        bail!("--response is for cascade checkpoints: a pipeline's stages see no answers");
    }
    if a.cost_weight != 0.0 {
        tracing::warn!(
            "--cost-weight is ignored: a pipeline's λ is its run's env.cost_weight ({}), not an input",
            ckpt.config.env.cost_weight
        );
    }
    let stage_agents = router.policy().stage_agents();
    let print = |r: &mappo_eval::PipelineRoute| -> Result<()> {
        let options = |k: usize| stage_agents.get(k).map_or(&[][..], Vec::as_slice);
        if a.json {
            let mut v = serde_json::to_value(r)?;
            for (k, (stage, c)) in v["stages"].as_array_mut().into_iter().flatten().zip(&r.stages).enumerate()
            {
                let by_agent: serde_json::Map<String, serde_json::Value> =
                    options(k).iter().zip(&c.probabilities).map(|(n, p)| (n.clone(), (*p).into())).collect();
                stage["by_agent"] = by_agent.into();
            }
            outln!("{v}");
        } else {
            for (k, c) in r.stages.iter().enumerate() {
                let probs: Vec<String> =
                    options(k).iter().zip(&c.probabilities).map(|(n, p)| format!("{n}={p:.3}")).collect();
                outln!("{}\t{}\t{}\t{}\t{}", r.prompt, c.stage, c.agent_index, c.agent, probs.join(" "));
            }
            outln!(
                "{}\texpected_reward={:.4}\toptimal_reward={:.4}\toptimal_agents={}",
                r.prompt,
                r.expected_reward,
                r.optimal_reward,
                r.optimal_agents.join(",")
            );
        }
        Ok(())
    };
    if let Some(n) = a.samples {
        if n == 0 {
            bail!("--samples must be at least 1");
        }
        for r in router.route_samples(n, a.seed.unwrap_or(2024))? {
            print(&r)?;
        }
        return Ok(());
    }
    // A filter: one prompt vector per stdin line, routed as it arrives.
    {
        use std::io::IsTerminal;
        if std::io::stdin().is_terminal() {
            tracing::info!("reading prompt vectors from stdin; or {vectors}");
        }
    }
    let mut routed = 0;
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.with_context(|| format!("reading stdin, line {}", n + 1))?;
        if line.trim().is_empty() {
            tracing::warn!("stdin line {} is empty: not routed", n + 1);
            continue;
        }
        let x: Vec<f32> = serde_json::from_str(&line).with_context(|| {
            format!(
                "stdin line {}: not a JSON array of numbers (a pipeline routes prompt vectors: {vectors})",
                n + 1
            )
        })?;
        if x.len() != dim {
            bail!(
                "stdin line {}: {} numbers, but this pipeline's prompts have {dim} (env.embed_dim)",
                n + 1,
                x.len()
            );
        }
        for r in router.route_prompts(&x, routed).with_context(|| format!("stdin line {}", n + 1))? {
            print(&r)?;
        }
        routed += 1;
        std::io::stdout().flush()?;
    }
    Ok(())
}

pub fn calibrate(a: CalibrateArgs, mode: Mode) -> Result<()> {
    let budget = match (&a.max_cost, &a.max_share) {
        (Some(c), None) if c.is_finite() && *c >= 0.0 => mappo_eval::Budget::MaxCost(*c),
        (Some(c), None) => bail!("--max-cost must be a finite number >= 0, got {c}"),
        (None, Some(s)) => {
            let (agent, share) =
                s.split_once('=').context("--max-share must be AGENT=S, e.g. gpt-4-1106=0.2")?;
            let share: f64 =
                share.trim().parse().with_context(|| format!("--max-share: `{share}` is not a number"))?;
            if !(0.0..=1.0).contains(&share) {
                bail!("--max-share: the share must be in [0, 1], got {share}");
            }
            mappo_eval::Budget::MaxShare(agent.trim().to_string(), share)
        }
        _ => bail!("give one budget: --max-cost C or --max-share AGENT=S"),
    };
    let (device, _) = select_device(a.device.parse().context("--device")?)?;
    let ckpt_path = checkpoint_file(&a.checkpoint)?;
    let mut bar = EmbedProgress::new(mode);
    let c =
        mappo_eval::calibrate(&ckpt_path, &a.corpus, &budget, &device, &mut |w, d, t| bar.update(w, d, t))?;
    bar.finish();
    if !c.monotone {
        tracing::warn!(
            "the budgeted quantity is not monotone in λ on this corpus (largest rise {:.4}): the λ found meets \
             the budget but may not be the least that does",
            c.max_increase
        );
    }
    if a.json {
        outln!("{}", serde_json::to_string(&c)?);
        return Ok(());
    }
    let shares: Vec<String> = c.point.share.iter().map(|(k, v)| format!("{k}={v:.4}")).collect();
    outln!("cost_weight {}", c.cost_weight);
    outln!("mean cost   {:.6}", c.point.cost);
    outln!("shares      {}", shares.join(" "));
    outln!("monotone    {}", c.monotone);
    Ok(())
}

pub fn embed(a: EmbedArgs, mode: Mode) -> Result<()> {
    let (device, _) = select_device(a.device.parse().context("--device")?)?;
    let dir = a.model_dir.clone().unwrap_or_else(mappo_env::embed::default_model_dir);
    let embedder = mappo_env::embed::Embedder::load(&dir, &device)?;
    let reader: Box<dyn BufRead> = match &a.input {
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let origin = a.input.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "stdin".into());
    let mut rows = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("{origin}, line {}: cannot read", n + 1))?;
        let line = line.strip_prefix('\u{feff}').unwrap_or(&line);
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{origin}, line {}: not valid JSON", n + 1))?;
        match v.get("text") {
            Some(serde_json::Value::String(_)) if v.is_object() => rows.push(v),
            _ => bail!("{origin}, line {}: expected an object with a string \"text\"", n + 1),
        }
    }
    let mut bar = EmbedProgress::new(mode);
    let texts: Vec<&str> = rows.iter().filter_map(|v| v["text"].as_str()).collect();
    let embeddings = embedder.embed_with_progress(&texts, |d, t| bar.update("embedding", d, t))?;
    bar.finish();
    let mut out: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    for (mut v, e) in rows.into_iter().zip(embeddings) {
        v["embedding"] = serde_json::json!(e);
        writeln!(out, "{v}")?;
    }
    out.flush()?;
    Ok(())
}

pub fn config(a: ConfigArgs) -> Result<()> {
    let cfg = Config::load(a.config.as_deref(), &a.set)?;
    write!(std::io::stdout(), "{}", cfg.to_toml_string())?;
    Ok(())
}
