//! The shared runner: the same backbone, initial weights, data order, augmentation,
//! optimiser and schedule for every loss; one row of metrics per epoch; checkpoints after
//! every epoch; resumable, lock-protected, divergence-aware runs.

pub mod backend;
pub mod checkpoint;
pub mod export;
pub mod grid;
pub mod lock;
pub mod plan;
pub mod progress;
pub mod retrieval;
pub mod schedule;
pub mod sgd;
pub mod sweep;
pub mod train;
pub mod verify;

pub use backend::{
    BACKEND_NAMES, Backend, BackendChoice, Precision, Unavailable, configure_gpu_runtime,
    list_devices, probe_wgpu,
};
pub use grid::{
    GridKind, GridRun, PlanRow, PlanStatus, Selection, experiment_grid, grid, grid_hash, plan_rows,
    plan_table, sweep_grid,
};
pub use lock::RunLock;
pub use plan::{RunOptions, RunReport, format_duration, load_data, run_experiment};
pub use progress::Progress;
pub use verify::{Verification, verify_results};
