//! The host cache: where hydrated models live on a host's disk, one directory per revision.

use colo_model::Manifest;
use std::path::{Path, PathBuf};

/// Name of the marker written into a model directory once every file is present and verified.
const COMPLETE_MARKER: &str = ".colo-manifest.json";

#[derive(Clone, Debug)]
pub struct HostCache {
    root: PathBuf,
}

impl HostCache {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory that holds (or will hold) one revision of a model.
    pub fn model_dir(&self, name: &str, revision: &str) -> PathBuf {
        self.root.join("models").join(name).join(revision)
    }

    /// The model directory if every file of `manifest` is present and verified.
    pub fn complete_dir(&self, manifest: &Manifest) -> Option<PathBuf> {
        let dir = self.model_dir(&manifest.name, &manifest.revision);
        dir.join(COMPLETE_MARKER).is_file().then_some(dir)
    }

    pub(crate) fn marker_path(&self, manifest: &Manifest) -> PathBuf {
        self.model_dir(&manifest.name, &manifest.revision).join(COMPLETE_MARKER)
    }
}
