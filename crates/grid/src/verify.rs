//! `lossbench verify-results DIR`: check every run's files without training anything —
//! `run.json` readable and consistent with the metrics, both metrics files readable and equal,
//! every checkpoint's header, size and CRC sound.

use std::fmt;
use std::path::Path;

use anyhow::Result;
use lossbench_experiment::{
    EXPERIMENT_COPY, Experiment, RunDir, RunManifest, RunStatus, discover_runs, read_metrics,
    read_metrics_csv, same_rows,
};

use lossbench_train::checkpoint;

/// What was checked and what is wrong.
#[derive(Debug, Default)]
pub struct Verification {
    pub runs: usize,
    pub checkpoints: usize,
    /// `(where, what)` of every problem.
    pub problems: Vec<(String, String)>,
}

impl Verification {
    #[must_use]
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (place, problem) in &self.problems {
            writeln!(f, "{place}: {problem}")?;
        }
        write!(
            f,
            "{} runs and {} checkpoints checked: {}",
            self.runs,
            self.checkpoints,
            if self.ok() {
                "no problems".to_string()
            } else {
                format!("{} problems", self.problems.len())
            }
        )
    }
}

fn check_run(run: &RunDir, v: &mut Verification) {
    let place = format!("{}/seed-{}", run.loss, run.seed);
    let mut problem = |what: String| v.problems.push((place.clone(), what));
    let manifest = RunManifest::read(&run.manifest());
    if let Err(e) = &manifest {
        problem(format!("run.json: {e:#}"));
    }
    let parquet = read_metrics(run);
    let csv = read_metrics_csv(run);
    if let Err(e) = &parquet {
        problem(format!("{e:#}"));
    }
    if let Err(e) = &csv {
        problem(format!("{e:#}"));
    }
    if let (Ok(p), Ok(c)) = (&parquet, &csv)
        && !same_rows(p, c)
    {
        problem(format!(
            "metrics.parquet ({} rows) and metrics.csv ({} rows) differ",
            p.len(),
            c.len()
        ));
    }
    let records = parquet.as_ref().or(csv.as_ref()).ok();
    if let (Ok(m), Some(records)) = (&manifest, records) {
        let rows = records.len() as u32;
        if m.identity.is_none() {
            problem(
                "run.json records no run identity (an older lossbench): it cannot be resumed"
                    .into(),
            );
        }
        if let Some(r) = records
            .iter()
            .find(|r| r.loss != m.loss || r.seed != m.seed || r.experiment != m.experiment)
        {
            problem(format!(
                "epoch {} belongs to {} seed {} of `{}`, run.json to {} seed {} of `{}`",
                r.epoch, r.loss, r.seed, r.experiment, m.loss, m.seed, m.experiment
            ));
        }
        // Metrics are written before run.json, so a crash may leave them one epoch ahead.
        if !(m.epochs_completed..=m.epochs_completed + 1).contains(&rows) {
            problem(format!(
                "run.json says {} epochs completed, the metrics hold {rows}",
                m.epochs_completed
            ));
        }
        if m.status == RunStatus::Completed && rows != m.epochs {
            problem(format!(
                "run.json says completed after {} epochs, the metrics hold {rows}",
                m.epochs
            ));
        }
    }
    match checkpoint::files(&run.checkpoints()) {
        Err(e) => v.problems.push((place.clone(), format!("{e:#}"))),
        Ok(files) => {
            for (epoch, path) in files {
                v.checkpoints += 1;
                let name = path.file_name().map_or_else(
                    || path.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                );
                match checkpoint::verify(&path) {
                    Err(e) => v
                        .problems
                        .push((place.clone(), format!("checkpoint {name}: {e:#}"))),
                    Ok(inside) if inside != epoch => v.problems.push((
                        place.clone(),
                        format!("checkpoint {name} holds epoch {inside}"),
                    )),
                    Ok(_) => {}
                }
            }
        }
    }
}

/// Check every run under `experiment_dir` (a `results/<experiment>` folder).
pub fn verify_results(experiment_dir: &Path) -> Result<Verification> {
    let runs = discover_runs(experiment_dir)?;
    let mut v = Verification {
        runs: runs.len(),
        ..Verification::default()
    };
    let copy = experiment_dir.join(EXPERIMENT_COPY);
    if let Err(e) = Experiment::load(&copy) {
        v.problems
            .push((EXPERIMENT_COPY.to_string(), e.to_string()));
    }
    for run in &runs {
        check_run(run, &mut v);
    }
    Ok(v)
}
