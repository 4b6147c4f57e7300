//! The data of a run: readers of the official CIFAR-10/100 binary files, a verified download,
//! a synthetic data set in the same format, loading a source into training / validation / test
//! splits, the standard augmentation and a deterministic batcher.
//!
//! Every random choice is a pure function of `(seed, epoch, image index)` (see
//! `lossbench-rng`), so every loss, run and thread count sees the same batches.

mod augment;
mod batcher;
mod cifar;
mod error;
pub mod fetch;
mod source;
mod split;
pub mod synth;

pub use augment::{
    AugmentSpec, ChannelStats, IMAGE_BYTES, IMAGE_SIDE, Normalizer, PAD, augment_image,
    normalize_image, rotate_image,
};
pub use batcher::{Batch, Batcher, epoch_order};
pub use cifar::{DataSet, Kind, Split, Summary, load, verify};
pub use error::DataError;
pub use source::{DataSource, Splits};
pub use split::split_validation;
