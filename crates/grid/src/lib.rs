//! Many runs: an experiment's grid of (loss, seed) runs in one fixed order, the selection a
//! command or a cluster task acts on, plans, per-loss sweeps, Slurm and Kubernetes exports,
//! the lock that keeps one process per run, results verification, and the orchestration
//! that trains the selected runs one after another with `lossbench-train`.

pub mod export;
pub mod grid;
pub mod lock;
pub mod orchestrate;
pub mod sweep;
pub mod verify;

pub use grid::{
    GridKind, GridRun, PlanRow, PlanStatus, Selection, experiment_grid, grid_hash, plan_rows,
    plan_table, sweep_grid,
};
pub use lock::{Busy, RunLock};
pub use orchestrate::{
    BadInput, EXIT_BAD_INPUT, EXIT_INTERRUPTED, Planned, RunOptions, RunReport, data_source,
    format_duration, load_data, refuse, run_experiment, select,
};
pub use verify::{Verification, verify_results};
