//! Ready-made setups: the device from its config string, the synthetic
//! environment with its trainer and evaluator, policies from checkpoints.

use candle_core::Device;
use mappo_config::{Config, Device as DeviceSpec, Rng};
use mappo_env::{Env, ObservationSpec, PipelineEnv, SyntheticEnv};
use mappo_nn::ActorCritic;

use crate::{EpisodeEvaluator, GreedyEvaluator, TrainError, Trainer};

/// Resolves a configured device (`cpu`, `auto`, `cuda` or `cuda:N`; parsed by
/// [`mappo_config::Device`]'s `FromStr`) to a device, with a sentence saying
/// which was chosen and why.
///
/// `auto` picks `cuda:0` when this binary was built with the `cuda` feature and
/// a GPU answers, else the CPU; candle's `Device::cuda_if_available` returns an
/// error in the second case instead of falling back, so it is not used. An
/// explicit `cuda`/`cuda:N` never falls back: it is an error when no GPU answers.
pub fn select_device(spec: DeviceSpec) -> Result<(Device, String), TrainError> {
    resolve_device(spec, candle_core::utils::cuda_is_available(), |n| {
        // candle appends a backtrace to driver errors when RUST_BACKTRACE is set: keep the
        // message, which is what the user needs (e.g. CUDA_ERROR_NO_DEVICE).
        Device::new_cuda(n).map_err(|e| e.to_string().lines().next().unwrap_or_default().trim().to_string())
    })
}

/// The decision behind [`select_device`], with the build's CUDA support and the
/// GPU opener passed in so that every branch can be tested on any machine.
pub(crate) fn resolve_device(
    spec: DeviceSpec,
    built_with_cuda: bool,
    open_cuda: impl Fn(usize) -> Result<Device, String>,
) -> Result<(Device, String), TrainError> {
    let explicit = |n: usize| {
        if !built_with_cuda {
            return Err(TrainError::Device {
                spec: spec.to_string(),
                reason: "this binary was built without the `cuda` feature (build it with \
                         `cargo xtask build-cuda`, or use `auto` or `cpu`)"
                    .into(),
            });
        }
        open_cuda(n).map_err(|reason| TrainError::Device { spec: spec.to_string(), reason })
    };
    match spec {
        DeviceSpec::Cpu => Ok((Device::Cpu, "cpu: as configured".into())),
        DeviceSpec::Auto => {
            if !built_with_cuda {
                return Ok((Device::Cpu, "cpu: this binary was built without the `cuda` feature".into()));
            }
            match open_cuda(0) {
                Ok(d) => Ok((d, "cuda:0: built with `cuda` and a GPU answered".into())),
                Err(e) => Ok((Device::Cpu, format!("cpu: built with `cuda` but no GPU answered ({e})"))),
            }
        }
        DeviceSpec::Cuda(n) => Ok((explicit(n)?, format!("cuda:{n}: as configured"))),
    }
}

/// The synthetic router: trainer (env of `batch_size` prompts and a fresh
/// policy) and a greedy evaluator over `eval_prompts` fixed prompts.
#[derive(Debug)]
pub struct SyntheticSetup {
    /// The trainer at update 0.
    pub trainer: Trainer<SyntheticEnv, ActorCritic>,
    /// Fixed evaluation prompts (same agents as the training env).
    pub evaluator: GreedyEvaluator,
}

impl SyntheticSetup {
    /// Builds everything from the config, on the configured device.
    pub fn new(cfg: &Config) -> Result<Self, TrainError> {
        let (device, _) = select_device(cfg.train.device)?;
        Self::on(cfg, &device)
    }

    /// Builds everything on `device`.
    pub fn on(cfg: &Config, device: &Device) -> Result<Self, TrainError> {
        let env = SyntheticEnv::new(&cfg.env, cfg.train.batch_size, cfg.train.seed, device);
        let policy = new_policy(cfg, &env, device)?;
        let mut eval_env = SyntheticEnv::new(&cfg.env, cfg.train.eval_prompts, cfg.train.seed, device);
        let evaluator =
            GreedyEvaluator::new(&mut eval_env, &mut Rng::derived(cfg.train.seed, "periodic-eval"))?;
        Ok(Self { trainer: Trainer::from_config(cfg.clone(), env, policy)?, evaluator })
    }
}

pub(crate) fn new_policy<E: Env>(cfg: &Config, env: &E, device: &Device) -> Result<ActorCritic, TrainError> {
    let layout = ObservationSpec::for_input_width(&cfg.env, env.spec().obs_dim)?;
    let mut rng = Rng::derived(cfg.train.seed, "init");
    crate::policy::build_network(cfg, &layout, &mut rng, device)
}

/// The pipeline env: trainer (env of `batch_size` prompts, K steps each) and an episode
/// evaluator over `eval_prompts` fixed noise-free prompts.
#[derive(Debug)]
pub struct PipelineSetup {
    /// The trainer at update 0.
    pub trainer: Trainer<PipelineEnv, ActorCritic>,
    /// Fixed evaluation episodes (same options and tables as the training env).
    pub evaluator: EpisodeEvaluator<PipelineEnv>,
}

impl PipelineSetup {
    /// Builds everything on `device`.
    pub fn on(cfg: &Config, device: &Device) -> Result<Self, TrainError> {
        let env = PipelineEnv::new(&cfg.env, cfg.train.batch_size, cfg.train.seed, device)?;
        let policy = new_policy(cfg, &env, device)?;
        let eval_env =
            PipelineEnv::new(&cfg.env, cfg.train.eval_prompts, cfg.train.seed, device)?.noise_free();
        Ok(Self {
            trainer: Trainer::from_config(cfg.clone(), env, policy)?,
            evaluator: EpisodeEvaluator::new(eval_env, cfg.train.seed),
        })
    }
}

#[cfg(test)]
mod device_tests {
    use std::cell::RefCell;

    use super::*;

    fn no_gpu(_: usize) -> Result<Device, String> {
        Err("CUDA_ERROR_NO_DEVICE".into())
    }

    #[test]
    fn auto_without_the_feature_is_the_cpu_and_says_why() {
        let opened = RefCell::new(Vec::new());
        let (d, why) = resolve_device(DeviceSpec::Auto, false, |n| {
            opened.borrow_mut().push(n);
            Ok(Device::Cpu)
        })
        .expect("auto never fails");
        assert!(d.is_cpu());
        assert!(why.contains("without the `cuda` feature"), "{why}");
        assert!(opened.borrow().is_empty(), "must not try a GPU in a CPU-only build");
    }

    #[test]
    fn auto_with_the_feature_but_no_gpu_falls_back_and_quotes_the_error() {
        let (d, why) = resolve_device(DeviceSpec::Auto, true, no_gpu).expect("auto never fails");
        assert!(d.is_cpu());
        assert!(why.starts_with("cpu:") && why.contains("CUDA_ERROR_NO_DEVICE"), "{why}");
    }

    #[test]
    fn auto_with_a_gpu_takes_gpu_zero() {
        let opened = RefCell::new(Vec::new());
        let (_, why) = resolve_device(DeviceSpec::Auto, true, |n| {
            opened.borrow_mut().push(n);
            Ok(Device::Cpu) // stands in for the GPU handle
        })
        .expect("gpu answered");
        assert_eq!(*opened.borrow(), vec![0]);
        assert!(why.starts_with("cuda:0"), "{why}");
    }

    #[test]
    fn explicit_cuda_never_falls_back() {
        for (spec, d) in [("cuda", DeviceSpec::Cuda(0)), ("cuda:1", DeviceSpec::Cuda(1))] {
            let err = resolve_device(d, true, no_gpu).expect_err("no GPU must be an error").to_string();
            assert!(err.contains(spec) && err.contains("CUDA_ERROR_NO_DEVICE"), "{err}");
            let err = resolve_device(d, false, no_gpu).expect_err("CPU-only build").to_string();
            assert!(err.contains("without the `cuda` feature"), "{err}");
        }
    }

    #[test]
    fn cuda_n_opens_that_ordinal() {
        let opened = RefCell::new(Vec::new());
        let (_, why) = resolve_device(DeviceSpec::Cuda(3), true, |n| {
            opened.borrow_mut().push(n);
            Ok(Device::Cpu)
        })
        .expect("gpu 3 answered");
        assert_eq!(*opened.borrow(), vec![3]);
        assert!(why.starts_with("cuda:3"), "{why}");
        // Bad specs ("gpu", "cuda:x", ...) no longer get here: `mappo_config::Device`
        // refuses them when parsed (tested there).
    }

    /// The real entry point in this build: without the feature `auto` is the
    /// CPU; with it, `auto` still succeeds whether or not a GPU is present.
    #[test]
    fn select_device_auto_always_succeeds() {
        let (d, why) = select_device(DeviceSpec::Auto).expect("auto never fails");
        if cfg!(feature = "cuda") {
            assert!(d.is_cuda() == why.starts_with("cuda:0"), "{why}");
        } else {
            assert!(d.is_cpu() && why.contains("without the `cuda` feature"), "{why}");
        }
        assert!(select_device(DeviceSpec::Cpu).expect("cpu").0.is_cpu());
    }
}
