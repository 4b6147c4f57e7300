//! One row per epoch: [`EpochRecord`] ⇄ polars `DataFrame` ⇄ `metrics.parquet` / `metrics.csv`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{RunDir, atomic_write_all};

/// Metrics of one epoch of one run. Accuracies are fractions in `[0, 1]`; angles in degrees.
/// `None` columns are null in the files: no validation split, or a file written by an
/// older lossbench.
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
    /// The loss (with margin) on the validation split held out of the training images.
    pub val_loss: Option<f64>,
    pub val_top1: Option<f64>,
    /// Retrieval on the validation split (the open protocol's model selection).
    pub val_recall_at_1: Option<f64>,
    pub val_map_at_r: Option<f64>,
    /// The loss (with margin) on the test split; `None` under the open protocol (the test
    /// classes are not the head's), as are top-1, top-5 and the angles.
    pub test_loss: Option<f64>,
    pub test_top1: Option<f64>,
    pub test_top5: Option<f64>,
    /// Retrieval on the test split with the L2-normalised features (leave-one-out, cosine):
    /// Recall@K is the share of queries with an image of their class among the K nearest.
    pub test_recall_at_1: Option<f64>,
    pub test_recall_at_2: Option<f64>,
    pub test_recall_at_4: Option<f64>,
    pub test_recall_at_8: Option<f64>,
    /// Mean average precision at R (Musgrave et al. 2020), R = other images of the class.
    pub test_map_at_r: Option<f64>,
    /// Mean angle between a test feature and its class weight.
    pub target_angle_deg: Option<f64>,
    /// Mean angle between a test feature and the nearest other class weight.
    pub nearest_other_angle_deg: Option<f64>,
    /// Wall time of training and evaluation.
    pub epoch_seconds: f64,
    /// Training images per second.
    pub images_per_second: f64,
    /// The backend that trained this epoch (a run resumed elsewhere says so per epoch).
    pub backend: String,
}

/// Build the polars frame of some records (one row each, columns in [`EpochRecord`] order).
pub fn records_to_frame(records: &[EpochRecord]) -> Result<DataFrame> {
    let col_f = |name: &str, f: fn(&EpochRecord) -> f64| {
        Column::new(name.into(), records.iter().map(f).collect::<Vec<f64>>())
    };
    let col_o = |name: &str, f: fn(&EpochRecord) -> Option<f64>| {
        Column::new(
            name.into(),
            records.iter().map(f).collect::<Vec<Option<f64>>>(),
        )
    };
    let col_s = |name: &str, f: fn(&EpochRecord) -> &str| {
        Column::new(name.into(), records.iter().map(f).collect::<Vec<&str>>())
    };
    // Columns added with the open protocol are written only when a row has a value, so
    // the files of closed-set runs keep their columns.
    let col_new = |name: &str, f: fn(&EpochRecord) -> Option<f64>| {
        records
            .iter()
            .any(|r| f(r).is_some())
            .then(|| col_o(name, f))
    };
    let mut columns = vec![
        col_s("experiment", |r| &r.experiment),
        col_s("loss", |r| &r.loss),
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
        col_o("val_loss", |r| r.val_loss),
        col_o("val_top1", |r| r.val_top1),
        col_o("test_loss", |r| r.test_loss),
        col_o("test_top1", |r| r.test_top1),
        col_o("test_top5", |r| r.test_top5),
        col_o("test_recall_at_1", |r| r.test_recall_at_1),
        col_o("test_map_at_r", |r| r.test_map_at_r),
        col_o("target_angle_deg", |r| r.target_angle_deg),
        col_o("nearest_other_angle_deg", |r| r.nearest_other_angle_deg),
        col_f("epoch_seconds", |r| r.epoch_seconds),
        col_f("images_per_second", |r| r.images_per_second),
        col_s("backend", |r| &r.backend),
    ];
    columns.extend(
        [
            col_new("val_recall_at_1", |r| r.val_recall_at_1),
            col_new("val_map_at_r", |r| r.val_map_at_r),
            col_new("test_recall_at_2", |r| r.test_recall_at_2),
            col_new("test_recall_at_4", |r| r.test_recall_at_4),
            col_new("test_recall_at_8", |r| r.test_recall_at_8),
        ]
        .into_iter()
        .flatten(),
    );
    Ok(DataFrame::new(records.len(), columns)?)
}

/// Read records back from a frame written by [`records_to_frame`] (or by an older lossbench,
/// without the optional columns).
pub fn frame_to_records(frame: &DataFrame) -> Result<Vec<EpochRecord>> {
    let optional = |name: &str| -> Result<Vec<Option<f64>>> {
        match frame.column(name) {
            Err(_) => Ok(vec![None; frame.height()]),
            Ok(c) => Ok(c.cast(&DataType::Float64)?.f64()?.iter().collect()),
        }
    };
    let f = |name: &str| -> Result<Vec<f64>> {
        let values = frame
            .column(name)
            .map_err(|_| anyhow::anyhow!("no column `{name}`"))?
            .cast(&DataType::Float64)?;
        let values: Vec<Option<f64>> = values.f64()?.iter().collect();
        values
            .into_iter()
            .map(|v| v.with_context(|| format!("null in column `{name}`")))
            .collect()
    };
    let u = |name: &str| -> Result<Vec<u64>> {
        let c = frame
            .column(name)
            .map_err(|_| anyhow::anyhow!("no column `{name}`"))?
            .cast(&DataType::UInt64)?;
        let values: Vec<Option<u64>> = c.u64()?.iter().collect();
        values
            .into_iter()
            .map(|v| v.with_context(|| format!("null in column `{name}`")))
            .collect()
    };
    let s = |name: &str, required: bool| -> Result<Vec<String>> {
        let column = match frame.column(name) {
            Ok(c) => c.cast(&DataType::String)?,
            Err(_) if !required => return Ok(vec![String::new(); frame.height()]),
            Err(_) => bail!("no column `{name}`"),
        };
        let values: Vec<Option<&str>> = column.str()?.iter().collect();
        values
            .into_iter()
            .map(|v| match v {
                Some(v) => Ok(v.to_string()),
                None if !required => Ok(String::new()),
                None => bail!("null in column `{name}`"),
            })
            .collect()
    };
    let (experiment, loss, seed, epoch, iteration) = (
        s("experiment", true)?,
        s("loss", true)?,
        u("seed")?,
        u("epoch")?,
        u("iteration")?,
    );
    let (lr, train_loss, train_top1, test_loss) = (
        f("lr")?,
        f("train_loss")?,
        f("train_top1")?,
        optional("test_loss")?,
    );
    let (test_top1, test_top5, target, nearest) = (
        optional("test_top1")?,
        optional("test_top5")?,
        optional("target_angle_deg")?,
        optional("nearest_other_angle_deg")?,
    );
    let (val_recall, val_map) = (optional("val_recall_at_1")?, optional("val_map_at_r")?);
    let (recall2, recall4, recall8) = (
        optional("test_recall_at_2")?,
        optional("test_recall_at_4")?,
        optional("test_recall_at_8")?,
    );
    let (secs, ips) = (f("epoch_seconds")?, f("images_per_second")?);
    let (val_loss, val_top1) = (optional("val_loss")?, optional("val_top1")?);
    let (recall, map_r) = (optional("test_recall_at_1")?, optional("test_map_at_r")?);
    let backend = s("backend", false)?;
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
            val_loss: val_loss[i],
            val_top1: val_top1[i],
            val_recall_at_1: val_recall[i],
            val_map_at_r: val_map[i],
            test_loss: test_loss[i],
            test_top1: test_top1[i],
            test_top5: test_top5[i],
            test_recall_at_1: recall[i],
            test_recall_at_2: recall2[i],
            test_recall_at_4: recall4[i],
            test_recall_at_8: recall8[i],
            test_map_at_r: map_r[i],
            target_angle_deg: target[i],
            nearest_other_angle_deg: nearest[i],
            epoch_seconds: secs[i],
            images_per_second: ips[i],
            backend: backend[i].clone(),
        })
        .collect())
}

/// Write `metrics.parquet` and `metrics.csv` (the same rows): both replaced, or neither.
pub fn write_metrics(run: &RunDir, records: &[EpochRecord]) -> Result<()> {
    let mut frame = records_to_frame(records)?;
    let mut parquet = Vec::new();
    ParquetWriter::new(&mut parquet).finish(&mut frame)?;
    let mut csv = Vec::new();
    CsvWriter::new(&mut csv).finish(&mut frame)?;
    atomic_write_all(&[
        (run.metrics_parquet().as_path(), &parquet),
        (run.metrics_csv().as_path(), &csv),
    ])
}

/// Read `metrics.parquet` of a run; no file means no finished epoch yet.
pub fn read_metrics(run: &RunDir) -> Result<Vec<EpochRecord>> {
    read_metrics_file(&run.metrics_parquet(), Format::Parquet)
}

/// Read `metrics.csv` of a run (the same rows as the Parquet file).
pub fn read_metrics_csv(run: &RunDir) -> Result<Vec<EpochRecord>> {
    read_metrics_file(&run.metrics_csv(), Format::Csv)
}

/// Which of the two metrics files a reader got its rows from, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsRead {
    pub records: Vec<EpochRecord>,
    /// Set when one file was unusable or the two disagree: what the reader should be told.
    pub note: Option<String>,
}

/// Both metrics files of a run: the Parquet rows when it is readable, else the CSV's, with
/// a note when one file is damaged or they disagree. An error only when neither is usable.
pub fn read_metrics_resilient(run: &RunDir) -> Result<MetricsRead> {
    let parquet = read_metrics(run);
    let csv = read_metrics_csv(run);
    match (parquet, csv) {
        (Ok(p), Ok(c)) if same_rows(&p, &c) => Ok(MetricsRead {
            records: p,
            note: None,
        }),
        (Ok(p), Ok(c)) => Ok(MetricsRead {
            note: Some(format!(
                "metrics.parquet ({} rows) and metrics.csv ({} rows) differ; used metrics.parquet",
                p.len(),
                c.len()
            )),
            records: p,
        }),
        (Ok(p), Err(e)) => Ok(MetricsRead {
            records: p,
            note: Some(format!("used metrics.parquet: {e:#}")),
        }),
        (Err(e), Ok(c)) => Ok(MetricsRead {
            records: c,
            note: Some(format!("used metrics.csv: {e:#}")),
        }),
        (Err(p), Err(c)) => bail!("no readable metrics: {p:#}; {c:#}"),
    }
}

/// Equal rows, NaN equal to NaN.
#[must_use]
pub fn same_rows(a: &[EpochRecord], b: &[EpochRecord]) -> bool {
    let key = |r: &EpochRecord| {
        let mut r = r.clone();
        for v in [&mut r.lr, &mut r.train_loss, &mut r.train_top1] {
            if v.is_nan() {
                *v = f64::INFINITY;
            }
        }
        for v in [
            &mut r.val_loss,
            &mut r.val_top1,
            &mut r.val_recall_at_1,
            &mut r.val_map_at_r,
            &mut r.test_loss,
            &mut r.test_top1,
            &mut r.test_top5,
            &mut r.test_recall_at_1,
            &mut r.test_recall_at_2,
            &mut r.test_recall_at_4,
            &mut r.test_recall_at_8,
            &mut r.test_map_at_r,
            &mut r.target_angle_deg,
            &mut r.nearest_other_angle_deg,
        ] {
            if v.is_some_and(f64::is_nan) {
                *v = Some(f64::INFINITY);
            }
        }
        r
    };
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| key(x) == key(y))
}

#[derive(Debug, Clone, Copy)]
enum Format {
    Parquet,
    Csv,
}

fn read_metrics_file(path: &Path, format: Format) -> Result<Vec<EpochRecord>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let frame = match format {
        Format::Parquet => ParquetReader::new(file).finish().map_err(|e| {
            anyhow::anyhow!("{} is not a readable Parquet file: {e}", path.display())
        })?,
        Format::Csv => {
            drop(file);
            CsvReadOptions::default()
                .with_has_header(true)
                .with_infer_schema_length(None)
                .try_into_reader_with_file_path(Some(path.to_path_buf()))
                .and_then(|r| r.finish())
                .map_err(|e| {
                    anyhow::anyhow!("{} is not a readable CSV file: {e}", path.display())
                })?
        }
    };
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
            val_loss: (epoch > 1).then_some(2.25),
            val_top1: (epoch > 1).then_some(0.1 + 1.0 / 3.0),
            val_recall_at_1: None,
            val_map_at_r: None,
            test_loss: Some(2.0),
            test_top1: Some(top1),
            test_top5: Some(0.9),
            test_recall_at_1: Some(0.7),
            test_recall_at_2: None,
            test_recall_at_4: None,
            test_recall_at_8: None,
            test_map_at_r: Some(0.123_456_789_012_345_67),
            target_angle_deg: Some(60.0),
            nearest_other_angle_deg: Some(80.0),
            epoch_seconds: 1.5,
            images_per_second: 100.0,
            backend: "flex".into(),
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
        assert_eq!(read_metrics_csv(&run).expect("read csv"), records);
        let csv = std::fs::read_to_string(run.metrics_csv()).expect("csv");
        let mut lines = csv.lines();
        assert_eq!(
            lines.next(),
            Some(
                "experiment,loss,seed,epoch,iteration,lr,train_loss,train_top1,val_loss,val_top1,test_loss,test_top1,test_top5,test_recall_at_1,test_map_at_r,target_angle_deg,nearest_other_angle_deg,epoch_seconds,images_per_second,backend"
            )
        );
        assert_eq!(lines.count(), 2);
    }

    #[test]
    fn a_damaged_file_falls_back_to_the_other_and_says_so() {
        let dir = tempfile::tempdir().expect("tmp");
        let run = RunDir::new(dir.path(), "arcface", 3);
        std::fs::create_dir_all(&run.path).expect("mkdir");
        let records = vec![record(1, 0.25), record(2, 0.5)];
        write_metrics(&run, &records).expect("write");
        assert_eq!(read_metrics_resilient(&run).expect("both").note, None);

        let parquet = std::fs::read(run.metrics_parquet()).expect("read");
        std::fs::write(run.metrics_parquet(), &parquet[..parquet.len() / 2]).expect("cut");
        let read = read_metrics_resilient(&run).expect("csv intact");
        assert_eq!(read.records, records);
        assert!(
            read.note
                .as_deref()
                .is_some_and(|n| n.contains("used metrics.csv"))
        );

        write_metrics(&run, &records).expect("rewrite");
        std::fs::write(run.metrics_csv(), "experiment,loss\nx").expect("damage csv");
        let read = read_metrics_resilient(&run).expect("parquet intact");
        assert_eq!(read.records, records);
        assert!(
            read.note
                .as_deref()
                .is_some_and(|n| n.contains("used metrics.parquet"))
        );

        std::fs::write(run.metrics_parquet(), b"PAR1 garbage").expect("damage both");
        let err = format!(
            "{:#}",
            read_metrics_resilient(&run).expect_err("both damaged")
        );
        assert!(err.contains("no readable metrics"), "{err}");
    }

    #[test]
    fn files_of_an_older_lossbench_read_with_empty_new_columns() {
        let dir = tempfile::tempdir().expect("tmp");
        let run = RunDir::new(dir.path(), "arcface", 3);
        std::fs::create_dir_all(&run.path).expect("mkdir");
        std::fs::write(
            run.metrics_csv(),
            "experiment,loss,seed,epoch,iteration,lr,train_loss,train_top1,test_loss,test_top1,test_top5,target_angle_deg,nearest_other_angle_deg,epoch_seconds,images_per_second\n\
             e,arcface,3,1,10,0.1,2.5,0.4,2.0,0.25,0.9,60.0,80.0,1.5,100.0\n",
        )
        .expect("write");
        let rows = read_metrics_csv(&run).expect("old csv");
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].val_top1, rows[0].test_map_at_r), (None, None));
        assert_eq!(rows[0].backend, "");
        assert_eq!(rows[0].test_top1, Some(0.25));
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
