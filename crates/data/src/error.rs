use std::path::PathBuf;

use thiserror::Error;

/// A data set that cannot be used, with the file and, for content errors, the byte offset.
#[derive(Debug, Error)]
pub enum DataError {
    /// The I/O error is part of the message, not a `source`: a chain printed with `{:#}`
    /// would say it twice.
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: missing; {hint}")]
    Missing { path: PathBuf, hint: String },
    #[error(
        "{path}: size {size} bytes is not a whole number of {record}-byte records (truncated or not a CIFAR binary file; the last record starts at offset {last_offset})"
    )]
    Truncated {
        path: PathBuf,
        size: u64,
        record: usize,
        last_offset: u64,
    },
    #[error(
        "{path}: record {index} at offset {offset} has {what} label {label}, expected < {limit}"
    )]
    BadLabel {
        path: PathBuf,
        index: usize,
        offset: u64,
        what: &'static str,
        label: u8,
        limit: usize,
    },
    #[error("{path}: {found} records, expected {expected}{hint}")]
    Count {
        path: PathBuf,
        found: usize,
        expected: usize,
        hint: &'static str,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("download of {url} failed: {reason}. {hint}")]
    Download {
        url: String,
        reason: String,
        hint: String,
    },
    #[error("{path}: MD5 {found} does not match the published {expected}. {hint}")]
    Checksum {
        path: PathBuf,
        found: String,
        expected: String,
        hint: String,
    },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |cause| Self::Io { path, cause }
    }
}
