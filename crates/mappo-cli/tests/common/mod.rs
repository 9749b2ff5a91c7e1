//! Helpers shared by the CLI tests: run the binary, read its output.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `mappo` with `args` and waits for it.
pub fn mappo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mappo")).args(args).output().expect("run mappo")
}

/// Its stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Its stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The last line of stdout as a path (`train` prints the final checkpoint there).
pub fn last_line(o: &Output) -> PathBuf {
    PathBuf::from(stdout(o).lines().last().expect("stdout has a line").trim())
}

/// `mappo train --out DIR --set ...` (stderr gets the info log: it is not a terminal).
pub fn train(dir: &Path, sets: &[&str]) -> Output {
    let mut args = vec!["train", "--out", dir.to_str().expect("utf-8 path")];
    for s in sets {
        args.push("--set");
        args.push(s);
    }
    mappo(&args)
}
