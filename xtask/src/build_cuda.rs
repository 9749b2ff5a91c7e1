//! `cargo xtask build-cuda`: builds the CUDA binary on a machine without a GPU, reproducibly.
//!
//! 1. The CUDA 13.0 toolchain comes from pinned PyPI wheels (nvcc, cicc, ptxas, the headers and
//!    the link-time libraries), installed with `pip install --no-deps --target` into
//!    `target/cuda-toolkit/13.0` unless `--toolkit` names one. 13.0 is the newest toolkit the
//!    GPU machines' driver (580) runs; a newer one gives CUDA_ERROR_UNSUPPORTED_PTX_VERSION.
//! 2. Link-time stand-ins: the unversioned `lib*.so` names the linker looks for, and a stub
//!    `libcuda.so` (soname `libcuda.so.1`) generated from the toolkit's own `cuda.h`, because
//!    the driver library comes with the GPU driver, not with the toolkit wheels. At run time the
//!    real driver and libraries are found instead (the stub is never loaded).
//! 3. `cargo build --release --features cuda` with `CUDA_COMPUTE_CAP` (default 90: H100/H200),
//!    `CUDA_HOME` and `PATH` pointing at the toolkit, into `target/cuda/` so that the CPU build's
//!    artefacts are left alone. `--tests` also builds the GPU test binaries and `embed_bench`.
//! 4. Everything that must travel to the GPU machine is copied, stripped, into
//!    `target/cuda/dist/`, with `run-gpu.sh`, which finds the CUDA 13 libraries of the Python
//!    environment there (`nvidia/cu13/lib`, as PyTorch installs them) and runs a command with
//!    them on `LD_LIBRARY_PATH`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The CUDA 13.0 toolchain, pinned to exact versions so that a build is repeatable.
const WHEELS: &[&str] = &[
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-cccl==13.0.85",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-nvrtc==13.0.88",
    "nvidia-cublas==13.0.2.14",
    "nvidia-curand==10.4.0.35",
];
/// The toolkit's release, as `nvcc --version` prints it.
const RELEASE: &str = "release 13.0";
/// Link-time names → the versioned files the wheels ship.
const LINK_NAMES: &[(&str, &str)] = &[
    ("libcudart.so", "libcudart.so.13"),
    ("libcublas.so", "libcublas.so.13"),
    ("libcublasLt.so", "libcublasLt.so.13"),
    ("libcurand.so", "libcurand.so.10"),
    ("libnvrtc.so", "libnvrtc.so.13"),
];

#[derive(clap::Args)]
pub struct Args {
    /// Compute capability to compile the kernels for (90 = H100/H200, 80 = A100, 89 = L4/4090).
    #[arg(long, default_value_t = 90)]
    compute_cap: u32,
    /// Where the CUDA toolkit wheels are (or will be) installed [default: target/cuda-toolkit/13.0].
    #[arg(long, value_name = "DIR")]
    toolkit: Option<PathBuf>,
    /// Also build the GPU tests (tests/cuda.rs, the embedding parity test) and the
    /// `embed_bench` example into the dist folder.
    #[arg(long)]
    tests: bool,
}

pub fn run(a: Args) -> Result<()> {
    let root = crate::workspace_root();
    let target = root.join("target/cuda");
    let toolkit_site = a.toolkit.clone().unwrap_or_else(|| root.join("target/cuda-toolkit/13.0"));
    let cuda_home = ensure_toolkit(&toolkit_site)?;
    let stubs = link_stubs(&cuda_home)?;

    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![cuda_home.join("bin")];
    paths.extend(std::env::split_paths(&path));
    let path = std::env::join_paths(paths).context("PATH")?;
    let cargo = |args: &[&str]| -> Result<Vec<PathBuf>> {
        eprintln!("build-cuda: cargo {} (CUDA_COMPUTE_CAP={})", args.join(" "), a.compute_cap);
        let out = Command::new(env!("CARGO"))
            .args(args)
            .args(["--release", "--message-format", "json-render-diagnostics", "--target-dir"])
            .arg(&target)
            .current_dir(&root)
            .env("CUDA_HOME", &cuda_home)
            .env("PATH", &path)
            .env("CUDA_COMPUTE_CAP", a.compute_cap.to_string())
            .env("LIBRARY_PATH", &stubs)
            // candle-kernels compiles its .cu files on half the cores unless told otherwise.
            .env("CUDAFORGE_THREADS", std::thread::available_parallelism().map_or(1, |n| n.get()).to_string())
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("running cargo")?;
        if !out.status.success() {
            bail!("cargo {} failed ({})", args.join(" "), out.status);
        }
        Ok(executables(&String::from_utf8_lossy(&out.stdout)))
    };

    let built = if a.tests {
        // One package set and feature set for both steps, so that cargo resolves the same
        // features and builds candle (and its kernels) once.
        let pkgs = ["-p", "mappo-cli", "-p", "mappo-embed", "-p", "mappo-tests"];
        let features = ["--features", "mappo-cli/cuda,mappo-embed/cuda,mappo-tests/cuda"];
        let mut built = cargo(
            &[&["build"][..], &pkgs, &features, &["--bin", "mappo", "--example", "embed_bench"]].concat(),
        )?;
        built.extend(cargo(
            &[&["test", "--no-run"][..], &pkgs, &features, &["--test", "embed_parity", "--test", "cuda"]]
                .concat(),
        )?);
        built
    } else {
        cargo(&["build", "-p", "mappo-cli", "--features", "cuda", "--bin", "mappo"])?
    };

    let dist = target.join("dist");
    fs::create_dir_all(&dist).with_context(|| format!("creating {}", dist.display()))?;
    for exe in &built {
        let name = dist_name(exe);
        let dst = dist.join(&name);
        let status = Command::new("strip")
            .arg("--strip-debug")
            .arg(exe)
            .arg("-o")
            .arg(&dst)
            .status()
            .context("running strip")?;
        if !status.success() {
            fs::copy(exe, &dst).with_context(|| format!("copying {}", exe.display()))?;
        }
        let size = fs::metadata(&dst).map(|m| m.len()).unwrap_or(0);
        eprintln!("build-cuda: {} ({:.1} MiB)", dst.display(), size as f64 / (1 << 20) as f64);
    }
    let script = dist.join("run-gpu.sh");
    fs::write(&script, RUN_GPU_SH).with_context(|| format!("writing {}", script.display()))?;
    set_executable(&script)?;
    eprintln!(
        "build-cuda: done. On the GPU machine: target/cuda/dist/run-gpu.sh target/cuda/dist/mappo train \
         --device cuda (it puts the CUDA 13 libraries of that machine's PyTorch on LD_LIBRARY_PATH)"
    );
    println!("{}", dist.display());
    Ok(())
}

/// The toolkit's `nvidia/cu13` folder, installing the wheels first when nvcc is missing.
fn ensure_toolkit(site: &Path) -> Result<PathBuf> {
    let home = site.join("nvidia/cu13");
    let nvcc = home.join("bin/nvcc");
    let version = |nvcc: &Path| {
        Command::new(nvcc)
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let complete = |home: &Path| {
        ["include/cuda.h", "include/crt/host_config.h", "nvvm/bin/cicc", "lib/libcublas.so.13"]
            .iter()
            .all(|f| home.join(f).exists())
    };
    if nvcc.exists() && version(&nvcc).contains(RELEASE) && complete(&home) {
        eprintln!("build-cuda: CUDA toolkit in {} ({RELEASE})", home.display());
        return Ok(home);
    }
    let python = crate::fetch_model::find_python()?;
    eprintln!("build-cuda: installing the CUDA 13.0 toolkit wheels into {} (about 1.2 GB)", site.display());
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps"])
        .args(["--only-binary", ":all:", "--upgrade", "--target"])
        .arg(site)
        .args(WHEELS)
        .status()
        .with_context(|| format!("running {python} -m pip install"))?;
    if !status.success() {
        bail!("`{python} -m pip install {}` failed ({status})", WHEELS.join(" "));
    }
    let v = version(&nvcc);
    if !v.contains(RELEASE) || !complete(&home) {
        bail!("{} is not a complete CUDA 13.0 toolkit after installing the wheels ({v:?})", home.display());
    }
    Ok(home)
}

/// `lib/stubs` with the unversioned library names and a stub `libcuda.so`.
fn link_stubs(home: &Path) -> Result<PathBuf> {
    let stubs = home.join("lib/stubs");
    fs::create_dir_all(&stubs).with_context(|| format!("creating {}", stubs.display()))?;
    for (name, file) in LINK_NAMES {
        let link = stubs.join(name);
        let _ = fs::remove_file(&link);
        symlink(&Path::new("..").join(file), &link)?;
    }
    let libcuda = stubs.join("libcuda.so");
    if libcuda.exists() {
        return Ok(stubs);
    }
    // Every driver entry point `cuda.h` declares, under its exported name (the header's macros
    // map e.g. cuMemAlloc to cuMemAlloc_v2, which is what cudarc's bindings link against).
    let header = home.join("include/cuda.h");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-E", "-P", "-I"])
        .arg(home.join("include"))
        .arg(&header)
        .output()
        .with_context(|| format!("running {cc} -E on {}", header.display()))?;
    if !out.status.success() {
        bail!("{cc} -E {} failed: {}", header.display(), String::from_utf8_lossy(&out.stderr));
    }
    let symbols = driver_symbols(&String::from_utf8_lossy(&out.stdout));
    if symbols.len() < 100 {
        bail!("found only {} driver functions in {}", symbols.len(), header.display());
    }
    let mut c =
        String::from("/* Link-time stand-in for the driver's libcuda.so.1 (generated from cuda.h). */\n");
    for s in &symbols {
        c.push_str(&format!("int {s}(void) {{ return 999; /* CUDA_ERROR_UNKNOWN */ }}\n"));
    }
    let src = stubs.join("libcuda_stub.c");
    fs::write(&src, c).with_context(|| format!("writing {}", src.display()))?;
    let status = Command::new(&cc)
        .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
        .arg(&libcuda)
        .arg(&src)
        .status()
        .with_context(|| format!("running {cc}"))?;
    if !status.success() {
        bail!("compiling the libcuda stub failed ({status})");
    }
    eprintln!("build-cuda: stub {} ({} driver functions)", libcuda.display(), symbols.len());
    Ok(stubs)
}

/// Names of the functions returning `CUresult` in preprocessed `cuda.h`, sorted and unique.
fn driver_symbols(preprocessed: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = preprocessed;
    while let Some(i) = rest.find("CUresult ") {
        rest = &rest[i + "CUresult ".len()..];
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        let after = rest[name.len()..].trim_start();
        if name.starts_with("cu") && after.starts_with('(') {
            out.push(name);
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Executables cargo reported building (`--message-format json`).
fn executables(json_lines: &str) -> Vec<PathBuf> {
    json_lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact")
        .filter_map(|v| v["executable"].as_str().map(PathBuf::from))
        .collect()
}

/// `embed_parity-<hash>` → `embed_parity` (test binaries carry a hash).
fn dist_name(exe: &Path) -> String {
    let name = exe.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match name.rsplit_once('-') {
        Some((base, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
            format!("test-{base}")
        }
        _ => name,
    }
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, link).with_context(|| format!("linking {}", link.display()))
}

#[cfg(not(unix))]
fn symlink(_: &Path, _: &Path) -> Result<()> {
    bail!("build-cuda needs a Linux machine")
}

#[cfg(unix)]
fn set_executable(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", p.display()))
}

#[cfg(not(unix))]
fn set_executable(_: &Path) -> Result<()> {
    Ok(())
}

const RUN_GPU_SH: &str = r#"#!/usr/bin/env bash
# Runs a CUDA build of mappo (or one of its GPU tests) with the CUDA 13 libraries of this
# machine's Python environment on LD_LIBRARY_PATH (PyTorch installs them under nvidia/cu13/lib).
# Usage: run-gpu.sh COMMAND [ARGS...]     (PYTHON=/path/to/python to choose the environment)
set -euo pipefail
py="${PYTHON:-python3}"
libs="$("$py" - <<'EOF' 2>/dev/null || true
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()] + sys.path
found = []
for r in roots:
    for d in glob.glob(os.path.join(r, "nvidia", "cu13", "lib")) + glob.glob(os.path.join(r, "nvidia", "*", "lib")):
        if os.path.isdir(d) and d not in found:
            found.append(d)
print(":".join(found))
EOF
)"
if [ -z "$libs" ]; then
  echo "run-gpu.sh: no nvidia/cu13/lib found in $py's environment; set LD_LIBRARY_PATH to the CUDA 13 libraries yourself" >&2
fi
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The libraries the binaries link (besides the driver's libcuda.so.1): say which is missing.
IFS=: read -ra dirs <<< "$LD_LIBRARY_PATH"
for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10; do
  found=""
  for d in "${dirs[@]}"; do [ -n "$d" ] && [ -e "$d/$lib" ] && { found="$d"; break; }; done
  [ -n "$found" ] || echo "run-gpu.sh: $lib not found on LD_LIBRARY_PATH (it comes with the CUDA 13 pip packages nvidia-cuda-runtime, nvidia-cublas, nvidia-curand)" >&2
done
exec "$@"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_driver_symbols_under_their_exported_names() {
        let pp = "typedef int CUresult;\nCUresult cuInit(unsigned int Flags);\n\
                  extern CUresult cuMemAlloc_v2 (void **p, unsigned long n);\n\
                  CUresult CUDAAPI_not_a_function;\nstatic CUresult x = 0;\nCUresult cuInit(unsigned int);\n";
        assert_eq!(driver_symbols(pp), vec!["cuInit".to_string(), "cuMemAlloc_v2".to_string()]);
    }

    #[test]
    fn test_binaries_lose_their_hash() {
        assert_eq!(dist_name(Path::new("/t/deps/embed_parity-0123456789abcdef")), "test-embed_parity");
        assert_eq!(dist_name(Path::new("/t/release/mappo")), "mappo");
        assert_eq!(dist_name(Path::new("/t/release/examples/embed_bench")), "embed_bench");
    }
}
