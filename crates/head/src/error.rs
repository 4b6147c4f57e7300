use thiserror::Error;

/// Why a loss head could not be built or evaluated. Every message names the offending
/// parameter or input, so the CLI can print it as a one-line error.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum HeadError {
    #[error("unknown loss `{name}` (registered: {known})")]
    UnknownLoss { name: String, known: String },
    #[error("loss `{loss}` has no parameter `{param}` (its parameters: {known})")]
    UnknownParam {
        loss: String,
        param: String,
        known: String,
    },
    #[error("loss `{loss}`: parameter `{param}` = {value} is invalid: must be {allowed}")]
    InvalidParam {
        loss: String,
        param: String,
        value: String,
        allowed: String,
    },
    #[error("label {label} at position {index} is out of range: must be in [0, {num_classes})")]
    LabelOutOfRange {
        index: usize,
        label: i64,
        num_classes: usize,
    },
    #[error("shape mismatch: {0}")]
    Shape(String),
}
