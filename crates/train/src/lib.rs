//! One (loss, seed) run: the backend and device it trains on, the network (backbone, neck,
//! loss head), SGD and the learning-rate schedule, the training loop with evaluation and
//! retrieval metrics, checkpoints after every epoch and at a pre-emption, and its `run.json`.
//!
//! Every loss gets the same backbone, initial weights, data order, augmentation, optimiser and
//! schedule. Many runs (the grid, sweeps, schedulers, locks) live in `lossbench-grid`, which
//! depends on this crate, never the reverse.

pub mod backend;
pub mod checkpoint;
pub mod cpu;
mod evaluate;
pub mod net;
pub mod progress;
pub mod retrieval;
pub mod run;
pub mod schedule;
pub mod sgd;
pub mod train;

pub use backend::{
    BACKEND_NAMES, Backend, BackendChoice, DeviceKind, Precision, Unavailable,
    configure_gpu_runtime, list_devices, probe_wgpu,
};
pub use net::{Net, backbone_config};
pub use progress::Progress;
pub use run::{BURN_VERSION, Outcome, identity, mark_failed, run_one};
pub use train::{Ending, RunSpec, Start, start, train};
