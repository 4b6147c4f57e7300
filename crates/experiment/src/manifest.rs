//! `run.json`: what a run was, where it ran and how it ended.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{RunIdentity, atomic_write};

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Completed,
    Diverged,
    Failed,
    /// Stopped by SIGTERM / SIGUSR1 (pre-emption) after a step; `--resume` continues it.
    Interrupted,
}

/// The content of `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunManifest {
    pub experiment: String,
    pub loss: String,
    pub seed: u64,
    /// Loss parameters after defaults were filled in.
    pub params: BTreeMap<String, f64>,
    pub epochs: u32,
    pub epochs_completed: u32,
    pub status: RunStatus,
    /// Optimiser step (0-based) whose loss was not finite.
    #[serde(default)]
    pub diverged_at_step: Option<u64>,
    #[serde(default)]
    pub error: Option<String>,
    pub backend: String,
    pub device: String,
    /// The CPU model of the host (absent in runs of an older lossbench).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// On a CPU backend, the x86-64 level its kernels ran at (`x86-64-v3`, `x86-64-v4`):
    /// another level sums in another order (absent on GPUs and in older runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_kernels: Option<String>,
    pub versions: BTreeMap<String, String>,
    #[serde(default)]
    pub git_commit: Option<String>,
    pub synthetic_data: bool,
    pub started_at: String,
    pub updated_at: String,
    #[serde(default)]
    pub finished_at: Option<String>,
    /// The resolved experiment.
    pub config: serde_json::Value,
    /// Everything that determines the run's numbers, and its hash (absent in runs of an
    /// older lossbench, which are then never resumed).
    #[serde(default)]
    pub identity: Option<RunIdentity>,
    /// The classes the run saw and the images it left out (absent in runs of an older
    /// lossbench).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataSummary>,
}

/// What a run's data was, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSummary {
    /// Side of the square images.
    pub image_size: usize,
    /// `closed` or `open`.
    pub protocol: String,
    /// Name of each training label, in label order (the head's classes).
    pub train_classes: Vec<String>,
    /// Name of each test label (the open protocol's unseen classes; else the training ones).
    pub test_classes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validation_classes: Vec<String>,
    pub train_images: usize,
    pub test_images: usize,
    #[serde(default)]
    pub validation_images: usize,
    /// Images left out with `skip_unreadable`, each with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_images: Vec<String>,
}

impl RunManifest {
    /// Read `run.json`.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a valid run manifest", path.display()))
    }

    /// Write `run.json` atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        atomic_write(path, &serde_json::to_vec_pretty(self)?)
    }
}

/// The current time, RFC 3339 in UTC.
#[must_use]
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
