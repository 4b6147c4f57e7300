//! What the binary's tests share: running `lossbench`, reading its output, and tiny
//! experiments on generated data (ResNet-18 at 1/16 width).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lossbench_experiment::{EpochRecord, RunDir, read_metrics};

/// Run the binary with `args` and wait for it. Cluster variables of the environment the tests
/// run in are removed, so `--index auto` sees only what a test sets.
pub fn lossbench(args: &[&str]) -> Output {
    lossbench_with_env(args, &[])
}

/// [`lossbench`] with extra environment variables.
pub fn lossbench_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lossbench"));
    cmd.args(args)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run lossbench")
}

/// The binary, not started yet (for tests that signal or race it).
pub fn command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lossbench"));
    cmd.env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX");
    cmd
}

/// Standard output and standard error together.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A path as a `&str` argument.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The metrics of a run without the wall-clock columns.
pub fn metrics(root: &Path, loss: &str, seed: u64) -> Vec<EpochRecord> {
    read_metrics(&RunDir::new(root, loss, seed))
        .expect("metrics")
        .into_iter()
        .map(|mut r| {
            r.epoch_seconds = 0.0;
            r.images_per_second = 0.0;
            r
        })
        .collect()
}

/// A tiny experiment on a synthetic set that lossbench generates in `<dir>/data`.
#[derive(Debug, Clone)]
pub struct Tiny {
    pub name: &'static str,
    pub seeds: &'static [u64],
    /// classes, training and test images per class, generator seed.
    pub synthetic: (usize, usize, usize, u64),
    /// More lines of `[data]` (e.g. `validation = 8`).
    pub data: &'static str,
    /// More lines of `[model]`.
    pub model: &'static str,
    pub epochs: u32,
    pub batch_size: usize,
    pub lr: f64,
    /// The `schedule = { … }` value.
    pub schedule: &'static str,
    /// More lines of `[training]`.
    pub training: String,
    /// Tables between `[training]` and the losses (e.g. `[sweep]`).
    pub tables: &'static str,
    /// `(name, more lines of its [[losses]] entry)`.
    pub losses: &'static [(&'static str, &'static str)],
}

impl Default for Tiny {
    fn default() -> Self {
        Self {
            name: "e",
            seeds: &[0],
            synthetic: (4, 8, 2, 1),
            data: "",
            model: "",
            epochs: 1,
            batch_size: 16,
            lr: 0.1,
            schedule: "{ kind = \"constant\" }",
            training: String::new(),
            tables: "",
            losses: &[("softmax", "")],
        }
    }
}

impl Tiny {
    /// The experiment file's text, its data in `data_dir`.
    pub fn text(&self, data_dir: &Path) -> String {
        let (classes, train, test, seed) = self.synthetic;
        let mut text = format!(
            r#"name = "{name}"
seeds = {seeds:?}

[data]
set = "cifar100"
dir = "{data_dir}"
synthetic = {{ classes = {classes}, train_per_class = {train}, test_per_class = {test}, seed = {seed} }}
{data}
[model]
arch = "resnet18"
width = 0.0625
{model}
[training]
epochs = {epochs}
batch_size = {batch_size}
lr = {lr:?}
schedule = {schedule}
{training}
{tables}
"#,
            name = self.name,
            seeds = self.seeds,
            data_dir = data_dir.display(),
            data = self.data,
            model = self.model,
            epochs = self.epochs,
            batch_size = self.batch_size,
            lr = self.lr,
            schedule = self.schedule,
            training = self.training,
            tables = self.tables,
        );
        for (loss, extra) in self.losses {
            text.push_str(&format!("[[losses]]\nname = \"{loss}\"\n{extra}\n"));
        }
        text
    }

    /// Write `<dir>/<file>` with the data in `<dir>/data`; its path.
    pub fn write(&self, dir: &Path, file: &str) -> PathBuf {
        let path = dir.join(file);
        std::fs::write(&path, self.text(&dir.join("data"))).expect("write the experiment");
        path
    }
}

/// Whether an error message says one clause twice (`a: b: b`), as a chain of errors does when
/// a message repeats its source.
pub fn repeated_clause(message: &str) -> Option<String> {
    let clauses: Vec<&str> = message
        .split([':', ';', '(', ')'])
        .map(str::trim)
        .filter(|c| c.len() > 12)
        .collect();
    clauses
        .iter()
        .enumerate()
        .find(|(i, c)| clauses[..*i].contains(c))
        .map(|(_, c)| (*c).to_string())
}

/// The point a sweep must choose where a larger value is better: the one with the largest
/// value, the first of equals.
pub fn best_point(points: &[lossbench_experiment::PointResult]) -> &lossbench_experiment::Point {
    let mut best: Option<(&lossbench_experiment::PointResult, f64)> = None;
    for p in points {
        if let Some(v) = p.value
            && best.is_none_or(|(_, b)| v > b)
        {
            best = Some((p, v));
        }
    }
    &best.expect("a finite point").0.point
}
