//! `results/<exp>/sweep.json`: what each loss's sweep measured and which point it chose
//! (written by `lossbench sweep`, read by `run` and the report).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{Experiment, atomic_write, experiment_dir};

/// The record of the choice, inside `results/<exp>`.
pub const SWEEP_FILE: &str = "sweep.json";

/// One point of a loss's sweep: a value per swept key, keys sorted.
pub type Point = BTreeMap<String, f64>;

/// One point's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointResult {
    pub point: Point,
    /// Mean over the sweep seeds of the metric at the last epoch; `None` if a seed diverged.
    pub value: Option<f64>,
    pub diverged: usize,
    pub seeds: usize,
}

/// One loss's sweep and its choice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossSweep {
    pub loss: String,
    pub points: Vec<PointResult>,
    /// The best point (the first of equals, in grid order); the loss's own parameters when
    /// it has no sweep.
    pub chosen: Point,
    /// The point of the loss's parameters as the file gives them (its defaults), if it is
    /// one of the grid's.
    pub default: Option<Point>,
}

/// `results/<exp>/sweep.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepRecord {
    pub metric: String,
    pub epochs: u32,
    pub seeds: Vec<u64>,
    /// Fingerprint of the sweep settings: a changed sweep needs a new choice.
    pub fingerprint: String,
    pub losses: Vec<LossSweep>,
}

impl SweepRecord {
    /// The chosen point of `loss`.
    #[must_use]
    pub fn chosen(&self, loss: &str) -> Option<&Point> {
        self.losses
            .iter()
            .find(|l| l.loss == loss)
            .map(|l| &l.chosen)
    }

    /// Read `results/<exp>/sweep.json`, if there is one.
    pub fn read(results: &Path, experiment: &Experiment) -> Result<Option<Self>> {
        Self::read_in(&experiment_dir(results, &experiment.name))
    }

    /// Read `sweep.json` of the results folder `dir`, if there is one.
    pub fn read_in(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(SWEEP_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!("{} is not a sweep record", path.display())
        })?))
    }

    /// Write it atomically.
    pub fn write(&self, results: &Path, experiment: &Experiment) -> Result<PathBuf> {
        let dir = experiment_dir(results, &experiment.name);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(SWEEP_FILE);
        atomic_write(&path, &serde_json::to_vec_pretty(self)?)?;
        Ok(path)
    }

    /// How many points each loss had, if not the same for every swept loss: the report says
    /// so (an unequal tuning budget favours the loss with more points).
    #[must_use]
    pub fn unequal_budget(&self) -> Option<String> {
        let swept: Vec<(&str, usize)> = self
            .losses
            .iter()
            .filter(|l| l.points.len() > 1)
            .map(|l| (l.loss.as_str(), l.points.len()))
            .collect();
        let first = swept.first()?.1;
        swept.iter().any(|&(_, n)| n != first).then(|| {
            swept
                .iter()
                .map(|(l, n)| format!("{l} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
    }
}
