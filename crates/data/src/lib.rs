//! The data of a run: readers of the official CIFAR-10/100 binary files, a verified download,
//! a synthetic data set (CIFAR format or an image folder), image folders and CSV lists of
//! your own (decoded once, cached), loading a source into training / validation / test
//! splits under the closed or open protocol, the standard augmentation and a deterministic
//! batcher.
//!
//! Every random choice is a pure function of `(seed, epoch, image index)` (see
//! `lossbench-rng`), so every loss, run and thread count sees the same batches.

mod augment;
mod batcher;
mod cifar;
mod decode;
mod error;
pub mod fetch;
pub mod listing;
pub mod own;
mod source;
mod split;
pub mod synth;

pub use augment::{
    AugmentSpec, CIFAR_SIDE, ChannelStats, Normalizer, augment_image, crop_pad, image_len,
    normalize_image, rotate_image,
};
pub use batcher::{Batch, Batcher, epoch_order};
pub use cifar::{DataSet, Kind, Split, Summary, load, verify};
pub use error::DataError;
pub use source::{DataSource, Origin, Protocol, Splits};
pub use split::split_validation;

/// Lower-case hex of a digest (cache keys, data fingerprints).
fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
