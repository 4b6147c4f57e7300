//! One run from start to end: skip it if it has ended, start or resume it, train it, and keep
//! its `run.json` (identity, status, times) up to date.

use std::collections::BTreeMap;

use anyhow::Result;
use lossbench_data::Splits;
use lossbench_experiment::{
    DataSummary, Experiment, RunDir, RunIdentity, RunManifest, RunStatus, now_rfc3339, read_metrics,
};
use lossbench_head::ResolvedParams;

use crate::progress::Progress;
use crate::train::{Ending, RunSpec, start, train};

/// The burn version every crate is built against (checked against `Cargo.toml` in tests).
pub const BURN_VERSION: &str = "0.22.1";

/// How a run ended, for the summary table: its status and a few words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: RunStatus,
    pub detail: String,
}

impl Outcome {
    fn new(status: RunStatus, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
        }
    }
}

/// The identity of a run: what makes two runs the same run (see the README's Guarantees).
#[must_use]
pub fn identity(
    experiment: &Experiment,
    loss: &str,
    params: &ResolvedParams,
    seed: u64,
    epochs: u32,
    data: &Splits,
) -> RunIdentity {
    let params: BTreeMap<String, f64> = params.iter().map(|(k, v)| (k.to_string(), v)).collect();
    RunIdentity::new(experiment, loss, &params, seed, epochs, &data.fingerprint)
}

/// Train the run of `spec` to its end: a run that completed or diverged earlier is skipped,
/// one with a checkpoint continues from it when `resume`. The caller holds the run's lock
/// and has checked that the files on disk belong to this run (identity, backend).
pub fn run_one(
    spec: &RunSpec<'_>,
    data: &Splits,
    resume: bool,
    progress: &mut Progress,
) -> Result<Outcome> {
    let previous = RunManifest::read(&spec.run_dir.manifest()).ok();
    if let Some(ended) = previous
        .as_ref()
        .and_then(|m| already_ended(spec, m, progress))
    {
        return Ok(ended);
    }
    let begin = start(spec, data, resume, progress)?;
    let mut manifest = manifest(spec, data, begin.epoch, previous.as_ref())?;
    manifest.write(&spec.run_dir.manifest())?;
    let ending = train(spec, data, begin, progress, |record| {
        manifest.epochs_completed = record.epoch;
        manifest.updated_at = now_rfc3339();
        manifest.write(&spec.run_dir.manifest())
    })?;
    manifest.updated_at = now_rfc3339();
    manifest.finished_at = Some(now_rfc3339());
    let outcome = match ending {
        Ending::Completed => {
            manifest.status = RunStatus::Completed;
            Outcome::new(RunStatus::Completed, format!("{} epochs", spec.epochs))
        }
        Ending::Diverged { step } => {
            manifest.status = RunStatus::Diverged;
            manifest.diverged_at_step = Some(step);
            Outcome::new(RunStatus::Diverged, format!("diverged at step {step}"))
        }
        Ending::Interrupted { step } => {
            manifest.status = RunStatus::Interrupted;
            manifest.finished_at = None;
            Outcome::new(
                RunStatus::Interrupted,
                format!("interrupted after step {step}; --resume continues it"),
            )
        }
    };
    manifest.write(&spec.run_dir.manifest())?;
    Ok(outcome)
}

/// A run that completed all its epochs or diverged is not trained again.
fn already_ended(
    spec: &RunSpec<'_>,
    previous: &RunManifest,
    progress: &Progress,
) -> Option<Outcome> {
    let done = read_metrics(spec.run_dir)
        .map(|r| r.len() as u32)
        .unwrap_or(0);
    match previous.status {
        RunStatus::Completed if done >= spec.epochs => {
            progress.line(&format!(
                "{} already completed ({done} epochs), skipped",
                spec.label
            ));
            Some(Outcome::new(RunStatus::Completed, "already completed"))
        }
        RunStatus::Diverged => {
            progress.line(&format!(
                "{} diverged earlier (step {:?}), skipped",
                spec.label, previous.diverged_at_step
            ));
            Some(Outcome::new(
                RunStatus::Diverged,
                format!(
                    "diverged at step {}",
                    previous.diverged_at_step.unwrap_or(0)
                ),
            ))
        }
        _ => None,
    }
}

/// The `run.json` of a run starting (or resuming) after `epochs_done` epochs.
fn manifest(
    spec: &RunSpec<'_>,
    data: &Splits,
    epochs_done: u32,
    previous: Option<&RunManifest>,
) -> Result<RunManifest> {
    Ok(RunManifest {
        experiment: spec.experiment.name.clone(),
        loss: spec.loss.to_string(),
        seed: spec.seed,
        params: spec
            .params
            .iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        epochs: spec.epochs,
        epochs_completed: epochs_done,
        status: RunStatus::Running,
        diverged_at_step: None,
        error: None,
        backend: spec.backend.name.to_string(),
        device: spec.backend.device_name.clone(),
        cpu: Some(crate::cpu::model()),
        cpu_kernels: spec.backend.cpu_kernels().map(str::to_string),
        versions: BTreeMap::from([
            (
                "lossbench".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            ),
            ("burn".to_string(), BURN_VERSION.to_string()),
        ]),
        git_commit: git_commit(),
        synthetic_data: data.train.synthetic,
        started_at: previous
            .filter(|_| epochs_done > 0)
            .map_or_else(now_rfc3339, |m| m.started_at.clone()),
        updated_at: now_rfc3339(),
        finished_at: None,
        config: serde_json::to_value(spec.experiment)?,
        identity: Some(identity(
            spec.experiment,
            spec.loss,
            spec.params,
            spec.seed,
            spec.epochs,
            data,
        )),
        data: Some(DataSummary {
            image_size: data.side(),
            protocol: if data.protocol.is_open() {
                "open"
            } else {
                "closed"
            }
            .into(),
            train_classes: data.train_classes.clone(),
            test_classes: data.test_classes.clone(),
            validation_classes: data.validation_classes.clone(),
            train_images: data.train.len(),
            test_images: data.test.len(),
            validation_images: data.validation.as_ref().map_or(0, |v| v.len()),
            skipped_images: data.skipped.clone(),
        }),
    })
}

/// Mark a run `failed` with the reason in its `run.json` (if it has one).
pub fn mark_failed(run_dir: &RunDir, message: &str) {
    if let Ok(mut m) = RunManifest::read(&run_dir.manifest()) {
        m.status = RunStatus::Failed;
        m.error = Some(message.to_string());
        m.updated_at = now_rfc3339();
        m.finished_at = Some(now_rfc3339());
        let _ = m.write(&run_dir.manifest());
    }
}

/// The commit lossbench runs from, `-dirty` if tracked files changed; `None` outside git.
fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    let commit = String::from_utf8(out.stdout).ok()?.trim().to_string();
    if !out.status.success() || commit.is_empty() {
        return None;
    }
    let dirty = std::process::Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_burn_version_is_the_one_built_against() {
        let manifest = include_str!("../../../Cargo.toml");
        let pinned = manifest
            .lines()
            .find(|l| l.starts_with("burn = "))
            .expect("burn in [workspace.dependencies]");
        assert!(
            pinned.contains(&format!("version = \"={BURN_VERSION}\"")),
            "{pinned}"
        );
    }
}
