//! Where results live: `results/<experiment>/<loss>/seed-<n>/`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The experiment file as the runs saw it, copied into the experiment's results folder so
/// the report can be rebuilt from `results/<experiment>` alone.
pub const EXPERIMENT_COPY: &str = "experiment.toml";

/// `results_root/<experiment>`.
#[must_use]
pub fn experiment_dir(results_root: &Path, experiment: &str) -> PathBuf {
    results_root.join(experiment)
}

/// The folder of one (loss, seed) run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    pub path: PathBuf,
    pub loss: String,
    pub seed: u64,
}

impl RunDir {
    /// `experiment_dir/<loss>/seed-<seed>`.
    #[must_use]
    pub fn new(experiment_dir: &Path, loss: &str, seed: u64) -> Self {
        Self {
            path: experiment_dir.join(loss).join(format!("seed-{seed}")),
            loss: loss.to_string(),
            seed,
        }
    }

    #[must_use]
    pub fn metrics_parquet(&self) -> PathBuf {
        self.path.join("metrics.parquet")
    }

    #[must_use]
    pub fn metrics_csv(&self) -> PathBuf {
        self.path.join("metrics.csv")
    }

    #[must_use]
    pub fn manifest(&self) -> PathBuf {
        self.path.join("run.json")
    }

    #[must_use]
    pub fn checkpoints(&self) -> PathBuf {
        self.path.join("checkpoints")
    }

    #[must_use]
    pub fn lock(&self) -> PathBuf {
        self.path.join("run.lock")
    }
}

/// Every run folder (`<loss>/seed-<n>/`) under an experiment folder, sorted by loss and seed.
pub fn discover_runs(experiment_dir: &Path) -> Result<Vec<RunDir>> {
    let mut runs = Vec::new();
    let entries = std::fs::read_dir(experiment_dir)
        .with_context(|| format!("cannot read {}", experiment_dir.display()))?;
    for loss_entry in entries {
        let loss_entry = loss_entry?;
        if !loss_entry.file_type()?.is_dir() {
            continue;
        }
        let loss = loss_entry.file_name().to_string_lossy().into_owned();
        for seed_entry in std::fs::read_dir(loss_entry.path())? {
            let seed_entry = seed_entry?;
            let name = seed_entry.file_name().to_string_lossy().into_owned();
            // A run folder without a readable run.json is still listed: readers report it
            // instead of silently skipping it.
            if let Some(seed) = name
                .strip_prefix("seed-")
                .and_then(|s| s.parse::<u64>().ok())
                && seed_entry.file_type()?.is_dir()
            {
                runs.push(RunDir::new(experiment_dir, &loss, seed));
            }
        }
    }
    runs.sort_by(|a, b| (&a.loss, a.seed).cmp(&(&b.loss, b.seed)));
    Ok(runs)
}
