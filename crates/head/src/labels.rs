use burn::prelude::*;

use crate::HeadError;

/// Class labels of a batch, checked against the number of classes once, on the host, so a
/// loss never indexes out of range on the device (where it would be silent or a crash).
#[derive(Debug, Clone)]
pub struct Labels {
    host: Vec<i64>,
    num_classes: usize,
    /// `[batch, 1]` indices, ready for `gather`/`scatter` along the class dimension.
    column: Tensor<2, Int>,
}

impl Labels {
    /// Validate `labels` against `num_classes` and upload them to `device`.
    pub fn new(labels: &[i64], num_classes: usize, device: &Device) -> Result<Self, HeadError> {
        if let Some((index, &label)) = labels
            .iter()
            .enumerate()
            .find(|(_, l)| **l < 0 || **l >= num_classes as i64)
        {
            return Err(HeadError::LabelOutOfRange {
                index,
                label,
                num_classes,
            });
        }
        let column =
            Tensor::<1, Int>::from_data(TensorData::new(labels.to_vec(), [labels.len()]), device)
                .reshape([labels.len(), 1]);
        Ok(Self {
            host: labels.to_vec(),
            num_classes,
            column,
        })
    }

    /// Number of labels in the batch.
    #[must_use]
    pub fn len(&self) -> usize {
        self.host.len()
    }

    /// Whether the batch is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.host.is_empty()
    }

    /// Number of classes the labels were checked against.
    #[must_use]
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The labels on the host.
    #[must_use]
    pub fn host(&self) -> &[i64] {
        &self.host
    }

    /// `[batch, 1]` label indices on the device.
    #[must_use]
    pub fn column(&self) -> Tensor<2, Int> {
        self.column.clone()
    }
}
