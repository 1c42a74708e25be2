//! The run file, `<data dir>/colo.json`: where a running colo serves, for the commands that
//! call it. Written whole (through a temporary file and a rename) once everything listens, and
//! removed when the process drains.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The run file's name in the data dir.
pub const RUN_FILE: &str = "colo.json";

/// What a running colo (`colo up` or a daemon) writes for other commands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Base URL of the API (control's, or `colo up`'s); empty for an edge daemon.
    pub api: String,
    /// The first edge (the only one without a fleet file); empty for control and agents.
    pub edge: String,
    /// Every edge, by region code.
    #[serde(default)]
    pub edges: BTreeMap<String, String>,
    /// The model store's URL.
    pub store: String,
    pub pid: u32,
    /// CA to trust when `api` is HTTPS.
    #[serde(default)]
    pub tls_ca: Option<String>,
}

// === impl RunInfo ===

impl RunInfo {
    /// The run file in `data_dir`, when a colo is running there (and wrote a readable one).
    pub fn read(data_dir: &Path) -> Option<Self> {
        let bytes = std::fs::read(data_dir.join(RUN_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes the run file into `data_dir`, replacing any old one whole; returns its path.
    pub(crate) fn write(&self, data_dir: &Path) -> std::io::Result<PathBuf> {
        let path = data_dir.join(RUN_FILE);
        let tmp = data_dir.join(format!("{RUN_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }
}

/// Removes the run file at `path`: the process no longer serves. A file already gone is fine.
pub(crate) fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_run_file_reads_back_and_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(RunInfo::read(dir.path()), None);
        let mut info = RunInfo {
            api: "http://127.0.0.1:7000".into(),
            store: "/tmp/store".into(),
            pid: 42,
            ..RunInfo::default()
        };
        let path = info.write(dir.path()).unwrap();
        assert_eq!(RunInfo::read(dir.path()).as_ref(), Some(&info));
        info.edges.insert("ord".into(), "http://127.0.0.1:8080".into());
        info.write(dir.path()).unwrap();
        assert_eq!(RunInfo::read(dir.path()), Some(info));
        assert!(!dir.path().join(format!("{RUN_FILE}.tmp")).exists());
        remove(&path);
        assert_eq!(RunInfo::read(dir.path()), None);
    }
}
