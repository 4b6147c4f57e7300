//! A tiny experiment on generated data, for the grid's integration tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use lossbench_experiment::{EpochRecord, RunDir, read_metrics};

/// Write `tiny.toml` (synthetic data inside `dir`) and return its path.
pub fn tiny_experiment(
    dir: &Path,
    losses: &[&str],
    seeds: &[u64],
    epochs: u32,
    lr: f64,
) -> PathBuf {
    let mut text = format!(
        r#"name = "tiny"
seeds = {seeds:?}

[data]
set = "cifar100"
dir = "{data}"
synthetic = {{ classes = 4, train_per_class = 12, test_per_class = 4, seed = 1 }}

[model]
arch = "resnet18"
width = 0.0625

[training]
epochs = {epochs}
batch_size = 16
eval_batch_size = 8
lr = {lr:?}
warmup_epochs = 1
schedule = {{ kind = "multistep", milestones = [2], gamma = 0.5 }}
"#,
        data = dir.join("data").display()
    );
    for loss in losses {
        let params = match *loss {
            "normface" => "params = { s = 8.0 }\n",
            "arcface" | "cosface" => "params = { s = 8.0, m = 0.2 }\n",
            _ => "",
        };
        text.push_str(&format!("\n[[losses]]\nname = \"{loss}\"\n{params}"));
    }
    let path = dir.join("tiny.toml");
    std::fs::write(&path, text).expect("write experiment");
    path
}

/// Metrics of a run without the wall-clock columns.
pub fn metrics(results: &Path, loss: &str, seed: u64) -> Vec<EpochRecord> {
    let run = RunDir::new(&results.join("tiny"), loss, seed);
    read_metrics(&run)
        .expect("metrics")
        .into_iter()
        .map(|mut r| {
            r.epoch_seconds = 0.0;
            r.images_per_second = 0.0;
            r
        })
        .collect()
}
