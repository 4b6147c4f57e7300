//! One row per epoch: [`EpochRecord`] ⇄ polars `DataFrame` ⇄ `metrics.parquet` / `metrics.csv`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{RunDir, atomic_write_with};

/// Metrics of one epoch of one run. Accuracies are fractions in `[0, 1]`; angles in degrees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub experiment: String,
    pub loss: String,
    pub seed: u64,
    /// 1-based.
    pub epoch: u32,
    /// Optimiser steps done by the end of the epoch.
    pub iteration: u64,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    /// Mean training loss (with margin) over the epoch's batches.
    pub train_loss: f64,
    /// Training accuracy of the un-margined logits, on augmented images.
    pub train_top1: f64,
    /// The loss (with margin) on the test split.
    pub test_loss: f64,
    pub test_top1: f64,
    pub test_top5: f64,
    /// Mean angle between a test feature and its class weight.
    pub target_angle_deg: f64,
    /// Mean angle between a test feature and the nearest other class weight.
    pub nearest_other_angle_deg: f64,
    /// Wall time of training and evaluation.
    pub epoch_seconds: f64,
    /// Training images per second.
    pub images_per_second: f64,
}

/// Build the polars frame of some records (one row each, columns in [`EpochRecord`] order).
pub fn records_to_frame(records: &[EpochRecord]) -> Result<DataFrame> {
    let col_f = |name: &str, f: fn(&EpochRecord) -> f64| {
        Column::new(name.into(), records.iter().map(f).collect::<Vec<f64>>())
    };
    let frame = DataFrame::new(
        records.len(),
        vec![
            Column::new(
                "experiment".into(),
                records
                    .iter()
                    .map(|r| r.experiment.as_str())
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "loss".into(),
                records.iter().map(|r| r.loss.as_str()).collect::<Vec<_>>(),
            ),
            Column::new(
                "seed".into(),
                records.iter().map(|r| r.seed).collect::<Vec<u64>>(),
            ),
            Column::new(
                "epoch".into(),
                records.iter().map(|r| r.epoch).collect::<Vec<u32>>(),
            ),
            Column::new(
                "iteration".into(),
                records.iter().map(|r| r.iteration).collect::<Vec<u64>>(),
            ),
            col_f("lr", |r| r.lr),
            col_f("train_loss", |r| r.train_loss),
            col_f("train_top1", |r| r.train_top1),
            col_f("test_loss", |r| r.test_loss),
            col_f("test_top1", |r| r.test_top1),
            col_f("test_top5", |r| r.test_top5),
            col_f("target_angle_deg", |r| r.target_angle_deg),
            col_f("nearest_other_angle_deg", |r| r.nearest_other_angle_deg),
            col_f("epoch_seconds", |r| r.epoch_seconds),
            col_f("images_per_second", |r| r.images_per_second),
        ],
    )?;
    Ok(frame)
}

/// Read records back from a frame written by [`records_to_frame`].
pub fn frame_to_records(frame: &DataFrame) -> Result<Vec<EpochRecord>> {
    let f = |name: &str| -> Result<Vec<f64>> {
        let c = frame.column(name)?.cast(&DataType::Float64)?;
        let values: Vec<Option<f64>> = c.f64()?.iter().collect();
        values
            .into_iter()
            .map(|v| v.with_context(|| format!("null in column `{name}`")))
            .collect()
    };
    let u = |name: &str| -> Result<Vec<u64>> {
        let c = frame.column(name)?.cast(&DataType::UInt64)?;
        let values: Vec<Option<u64>> = c.u64()?.iter().collect();
        values
            .into_iter()
            .map(|v| v.with_context(|| format!("null in column `{name}`")))
            .collect()
    };
    let s = |name: &str| -> Result<Vec<String>> {
        let values: Vec<Option<&str>> = frame.column(name)?.str()?.iter().collect();
        values
            .into_iter()
            .map(|v| {
                v.map(str::to_string)
                    .with_context(|| format!("null in column `{name}`"))
            })
            .collect()
    };
    let (experiment, loss, seed, epoch, iteration) = (
        s("experiment")?,
        s("loss")?,
        u("seed")?,
        u("epoch")?,
        u("iteration")?,
    );
    let (lr, train_loss, train_top1, test_loss) = (
        f("lr")?,
        f("train_loss")?,
        f("train_top1")?,
        f("test_loss")?,
    );
    let (test_top1, test_top5, target, nearest) = (
        f("test_top1")?,
        f("test_top5")?,
        f("target_angle_deg")?,
        f("nearest_other_angle_deg")?,
    );
    let (secs, ips) = (f("epoch_seconds")?, f("images_per_second")?);
    Ok((0..frame.height())
        .map(|i| EpochRecord {
            experiment: experiment[i].clone(),
            loss: loss[i].clone(),
            seed: seed[i],
            epoch: epoch[i] as u32,
            iteration: iteration[i],
            lr: lr[i],
            train_loss: train_loss[i],
            train_top1: train_top1[i],
            test_loss: test_loss[i],
            test_top1: test_top1[i],
            test_top5: test_top5[i],
            target_angle_deg: target[i],
            nearest_other_angle_deg: nearest[i],
            epoch_seconds: secs[i],
            images_per_second: ips[i],
        })
        .collect())
}

/// Write `metrics.parquet` and `metrics.csv` (the same rows), each atomically.
pub fn write_metrics(run: &RunDir, records: &[EpochRecord]) -> Result<()> {
    let mut frame = records_to_frame(records)?;
    atomic_write_with(&run.metrics_parquet(), |file| {
        ParquetWriter::new(file).finish(&mut frame)?;
        Ok(())
    })?;
    atomic_write_with(&run.metrics_csv(), |file| {
        CsvWriter::new(file).finish(&mut frame)?;
        Ok(())
    })
}

/// Read `metrics.parquet` of a run; no file means no finished epoch yet.
pub fn read_metrics(run: &RunDir) -> Result<Vec<EpochRecord>> {
    read_metrics_file(&run.metrics_parquet())
}

fn read_metrics_file(path: &Path) -> Result<Vec<EpochRecord>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let frame = ParquetReader::new(file)
        .finish()
        .map_err(|e| anyhow::anyhow!("{} is not a readable Parquet file: {e}", path.display()))?;
    let records = frame_to_records(&frame)
        .with_context(|| format!("{}: unexpected columns", path.display()))?;
    if records.windows(2).any(|w| w[1].epoch != w[0].epoch + 1) {
        bail!("{}: epochs are not consecutive", path.display());
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn record(epoch: u32, top1: f64) -> EpochRecord {
        EpochRecord {
            experiment: "e".into(),
            loss: "arcface".into(),
            seed: 3,
            epoch,
            iteration: u64::from(epoch) * 10,
            lr: 0.1,
            train_loss: 2.5,
            train_top1: 0.4,
            test_loss: 2.0,
            test_top1: top1,
            test_top5: 0.9,
            target_angle_deg: 60.0,
            nearest_other_angle_deg: 80.0,
            epoch_seconds: 1.5,
            images_per_second: 100.0,
        }
    }

    #[test]
    fn parquet_and_csv_hold_the_same_rows() {
        let dir = tempfile::tempdir().expect("tmp");
        let run = RunDir::new(dir.path(), "arcface", 3);
        std::fs::create_dir_all(&run.path).expect("mkdir");
        let records = vec![record(1, 0.25), record(2, 0.5)];
        write_metrics(&run, &records).expect("write");
        assert_eq!(read_metrics(&run).expect("read"), records);
        let csv = std::fs::read_to_string(run.metrics_csv()).expect("csv");
        let mut lines = csv.lines();
        assert_eq!(
            lines.next(),
            Some(
                "experiment,loss,seed,epoch,iteration,lr,train_loss,train_top1,test_loss,test_top1,test_top5,target_angle_deg,nearest_other_angle_deg,epoch_seconds,images_per_second"
            )
        );
        assert_eq!(lines.count(), 2);
    }

    #[test]
    fn missing_file_is_no_epochs_and_corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tmp");
        let run = RunDir::new(dir.path(), "x", 0);
        assert!(read_metrics(&run).expect("missing is fine").is_empty());
        std::fs::create_dir_all(&run.path).expect("mkdir");
        std::fs::write(run.metrics_parquet(), b"PAR1 garbage").expect("write");
        let err = format!("{:#}", read_metrics(&run).expect_err("garbage accepted"));
        assert!(err.contains("not a readable Parquet file"), "{err}");
    }
}
