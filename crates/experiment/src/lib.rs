//! Experiment files and everything lossbench writes under `results/`: the config schema and
//! its validation, the results layout, per-epoch records (polars, Parquet + CSV), run
//! manifests (`run.json`) and atomic file writes. Shared by training (which writes) and the
//! report (which reads), without tensors.

mod atomic;
mod config;
mod identity;
mod layout;
mod manifest;
mod records;
mod sweep_record;

pub use atomic::{atomic_write, atomic_write_all, atomic_write_with};
pub use config::{
    ARCHS, Augment, Claim, ConfigError, DataConfig, DataSetName, Embedding, Experiment,
    HEAD_LR_SCALE, HeadInit, Headline, LossEntry, ModelConfig, OpenSettings, PRECISIONS, Protocol,
    ReportConfig, SWEEP_METRICS, Schedule, SweepConfig, SynthSettings, TrainingConfig,
};
pub use identity::{
    CopyOutcome, Difference, RunIdentity, claim_experiment_copy, describe, differences, flatten,
    sha256_hex, shared_settings,
};
pub use layout::{EXPERIMENT_COPY, RunDir, discover_runs, experiment_dir};
pub use manifest::{DataSummary, RunManifest, RunStatus, now_rfc3339};
pub use records::{
    EpochRecord, MetricsRead, frame_to_records, read_metrics, read_metrics_csv,
    read_metrics_resilient, records_to_frame, same_rows, write_metrics,
};
pub use sweep_record::{LossSweep, Point, PointResult, SWEEP_FILE, SweepRecord};
