//! What every data set's conversion shares: the resolved [`Options`] and [`write_if_changed`].

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

/// One conversion's options, resolved from the command line by [`super::run`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Local directory holding the source files (`--from`), the fallback to the public source.
    pub from: Option<PathBuf>,
    /// Output directory (`--out`, else `data/<DATASET>` in the workspace).
    pub out: PathBuf,
    /// Base URL of the public files (`--url`); `None` lets the data set pick its own default.
    pub url: Option<String>,
    /// How long to wait for a connection to the public source (at least one second).
    pub timeout: Duration,
}

/// Write `content` to `path` via a temporary file in the same directory and a rename, unless
/// the file already holds exactly that content. Returns what happened, for the log.
pub fn write_if_changed(path: &Path, content: &str) -> Result<&'static str> {
    if fs::read(path).is_ok_and(|old| old == content.as_bytes()) {
        return Ok("unchanged");
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(content.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.persist(path).with_context(|| format!("renaming into {}", path.display()))?;
    Ok("written")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_atomically_and_skips_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("train.jsonl");
        assert_eq!(write_if_changed(&p, "a\n").unwrap(), "written");
        assert_eq!(write_if_changed(&p, "a\n").unwrap(), "unchanged");
        assert_eq!(write_if_changed(&p, "b\n").unwrap(), "written");
        assert_eq!(fs::read_to_string(&p).unwrap(), "b\n");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary left");
    }
}
