//! Readers for the binary versions of CIFAR-10 and CIFAR-100.
//!
//! CIFAR-100 (`train.bin`, `test.bin`): records of 1 coarse-label byte, 1 fine-label byte and
//! 3072 pixel bytes, channel-planar R, G, B, row-major 32×32. CIFAR-10
//! (`data_batch_1..5.bin`, `test_batch.bin`): 1 label byte and 3072 pixel bytes.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::synth::SynthManifest;
use crate::{CIFAR_SIDE, DataError, image_len};

/// Bytes of one CIFAR image.
const IMAGE_BYTES: usize = image_len(CIFAR_SIDE);

/// Which CIFAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    #[serde(rename = "cifar10")]
    Cifar10,
    #[serde(rename = "cifar100")]
    Cifar100,
}

/// Train or test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Train => "train",
            Self::Test => "test",
        })
    }
}

impl Kind {
    /// Name in experiment files and on the command line.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Cifar10 => "cifar10",
            Self::Cifar100 => "cifar100",
        }
    }

    /// Folder the official archive extracts to.
    #[must_use]
    pub fn folder(self) -> &'static str {
        match self {
            Self::Cifar10 => "cifar-10-batches-bin",
            Self::Cifar100 => "cifar-100-binary",
        }
    }

    /// Number of (fine) classes of the real data set.
    #[must_use]
    pub fn classes(self) -> usize {
        match self {
            Self::Cifar10 => 10,
            Self::Cifar100 => 100,
        }
    }

    fn label_bytes(self) -> usize {
        match self {
            Self::Cifar10 => 1,
            Self::Cifar100 => 2,
        }
    }

    /// Bytes per record.
    #[must_use]
    pub fn record_bytes(self) -> usize {
        self.label_bytes() + IMAGE_BYTES
    }

    /// Files of a split with the records each holds in the real data set.
    #[must_use]
    pub fn files(self, split: Split) -> Vec<(&'static str, usize)> {
        match (self, split) {
            (Self::Cifar100, Split::Train) => vec![("train.bin", 50_000)],
            (Self::Cifar100, Split::Test) => vec![("test.bin", 10_000)],
            (Self::Cifar10, Split::Train) => vec![
                ("data_batch_1.bin", 10_000),
                ("data_batch_2.bin", 10_000),
                ("data_batch_3.bin", 10_000),
                ("data_batch_4.bin", 10_000),
                ("data_batch_5.bin", 10_000),
            ],
            (Self::Cifar10, Split::Test) => vec![("test_batch.bin", 10_000)],
        }
    }
}

/// One split in memory: `len` square RGB images of `side`×`side` pixels and their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSet {
    pub split: Split,
    /// Side of every image (32 for CIFAR).
    pub side: usize,
    pub num_classes: usize,
    /// Channel-planar pixels, image after image.
    pub images: Vec<u8>,
    /// Class of each image (CIFAR-100: the fine label), `< num_classes`.
    pub labels: Vec<u16>,
    /// Whether this is lossbench's synthetic stand-in.
    pub synthetic: bool,
}

impl DataSet {
    /// Number of images.
    #[must_use]
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels of image `i`.
    #[must_use]
    pub fn image(&self, i: usize) -> &[u8] {
        let len = image_len(self.side);
        &self.images[i * len..(i + 1) * len]
    }

    /// Images per class.
    #[must_use]
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &l in &self.labels {
            counts[usize::from(l)] += 1;
        }
        counts
    }
}

/// Read one binary file, checking record size and label ranges.
fn read_file(
    path: &Path,
    kind: Kind,
    num_classes: usize,
    out: &mut DataSet,
) -> Result<usize, DataError> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::Missing {
            path: path.to_path_buf(),
            hint: format!(
                "run `lossbench data fetch {}` or `lossbench data synth`",
                kind.name()
            ),
        },
        _ => DataError::Io {
            path: path.to_path_buf(),
            cause: e,
        },
    })?;
    let record = kind.record_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(record) {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            size: bytes.len() as u64,
            record,
            last_offset: (bytes.len() / record * record) as u64,
        });
    }
    let n = bytes.len() / record;
    out.images.reserve(n * IMAGE_BYTES);
    out.labels.reserve(n);
    for (index, rec) in bytes.chunks_exact(record).enumerate() {
        let offset = (index * record) as u64;
        let bad = |what, label, limit| DataError::BadLabel {
            path: path.to_path_buf(),
            index,
            offset,
            what,
            label,
            limit,
        };
        let fine = match kind {
            Kind::Cifar10 => rec[0],
            Kind::Cifar100 => {
                if rec[0] >= 20 {
                    return Err(bad("coarse", rec[0], 20));
                }
                rec[1]
            }
        };
        if usize::from(fine) >= num_classes {
            return Err(bad(
                if kind == Kind::Cifar10 {
                    "class"
                } else {
                    "fine"
                },
                fine,
                num_classes,
            ));
        }
        out.labels.push(u16::from(fine));
        out.images.extend_from_slice(&rec[kind.label_bytes()..]);
    }
    Ok(n)
}

/// Load a split from `dir` (the folder holding the `.bin` files). A synthetic set is
/// recognised by its manifest and checked against it; a real one against the official counts.
pub fn load(dir: &Path, kind: Kind, split: Split) -> Result<DataSet, DataError> {
    let manifest = SynthManifest::read(dir)?;
    let (num_classes, synthetic) = match &manifest {
        Some(m) => (m.classes, true),
        None => (kind.classes(), false),
    };
    if let Some(m) = &manifest
        && m.kind != kind
    {
        return Err(DataError::Invalid(format!(
            "{}: synthetic data set is in {} format, not {}",
            dir.display(),
            m.kind.name(),
            kind.name()
        )));
    }
    let mut set = DataSet {
        split,
        side: CIFAR_SIDE,
        num_classes,
        images: Vec::new(),
        labels: Vec::new(),
        synthetic,
    };
    for (file, expected) in kind.files(split) {
        let path: PathBuf = dir.join(file);
        let found = read_file(&path, kind, num_classes, &mut set)?;
        let expected = match &manifest {
            Some(m) => m.per_class(split) * m.classes,
            None => expected,
        };
        if found != expected {
            return Err(DataError::Count {
                path,
                found,
                expected,
                hint: if manifest.is_some() {
                    " (per the synthetic manifest)"
                } else {
                    " (the official count)"
                },
            });
        }
    }
    Ok(set)
}

/// What `lossbench data verify` prints.
#[derive(Debug, Clone)]
pub struct Summary {
    pub kind: Kind,
    pub synthetic: bool,
    pub splits: Vec<(Split, usize, Vec<usize>)>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} ({})",
            self.kind.name(),
            if self.synthetic {
                "synthetic"
            } else {
                "official"
            }
        )?;
        for (split, n, counts) in &self.splits {
            let min = counts.iter().min().copied().unwrap_or(0);
            let max = counts.iter().max().copied().unwrap_or(0);
            let balance = if min == max {
                "balanced".to_string()
            } else {
                "UNBALANCED".to_string()
            };
            writeln!(
                f,
                "  {split:<5} {n:>6} images, {} classes, {min}..{max} per class ({balance})",
                counts.len()
            )?;
        }
        Ok(())
    }
}

/// Read both splits and summarise them; any defect is an error.
pub fn verify(dir: &Path, kind: Kind) -> Result<Summary, DataError> {
    let mut splits = Vec::new();
    let mut synthetic = false;
    for split in [Split::Train, Split::Test] {
        let set = load(dir, kind, split)?;
        synthetic = set.synthetic;
        splits.push((split, set.len(), set.class_counts()));
    }
    Ok(Summary {
        kind,
        synthetic,
        splits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_records(dir: &Path, file: &str, records: &[(u8, u8)]) {
        let mut bytes = Vec::new();
        for &(coarse, fine) in records {
            bytes.push(coarse);
            bytes.push(fine);
            bytes.extend((0..IMAGE_BYTES).map(|i| (i % 251) as u8 ^ fine));
        }
        std::fs::write(dir.join(file), bytes).expect("write");
    }

    fn write_manifest(dir: &Path, classes: usize, train: usize, test: usize) {
        SynthManifest {
            kind: Kind::Cifar100,
            classes,
            train_per_class: train,
            test_per_class: test,
            seed: 0,
            format: 1,
        }
        .write(dir)
        .expect("manifest");
    }

    #[test]
    fn reads_hand_built_cifar100_records() {
        let dir = tempfile::tempdir().expect("tmp");
        write_records(dir.path(), "train.bin", &[(3, 0), (19, 1)]);
        write_records(dir.path(), "test.bin", &[(0, 1), (1, 0)]);
        write_manifest(dir.path(), 2, 1, 1);
        let set = load(dir.path(), Kind::Cifar100, Split::Train).expect("valid");
        assert_eq!(set.labels, vec![0, 1]);
        assert_eq!(set.image(1)[0], 1); // (0 % 251) ^ 1
        assert_eq!(set.image(1)[300], (300 % 251) as u8 ^ 1);
        assert!(set.synthetic);
    }

    #[test]
    fn truncated_file_names_file_and_offset() {
        let dir = tempfile::tempdir().expect("tmp");
        write_records(dir.path(), "train.bin", &[(0, 0), (0, 1)]);
        let path = dir.path().join("train.bin");
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() - 10]).expect("truncate");
        let err = load(dir.path(), Kind::Cifar100, Split::Train)
            .expect_err("truncated accepted")
            .to_string();
        assert!(
            err.contains("train.bin") && err.contains("not a whole number of 3074-byte records"),
            "{err}"
        );
        assert!(err.contains("offset 3074"), "{err}");
    }

    #[test]
    fn bad_labels_name_record_and_offset() {
        let dir = tempfile::tempdir().expect("tmp");
        write_records(dir.path(), "train.bin", &[(0, 0), (0, 100)]);
        let err = load(dir.path(), Kind::Cifar100, Split::Train)
            .expect_err("bad label accepted")
            .to_string();
        assert!(
            err.contains("record 1 at offset 3074 has fine label 100, expected < 100"),
            "{err}"
        );
        write_records(dir.path(), "train.bin", &[(20, 0)]);
        let err = load(dir.path(), Kind::Cifar100, Split::Train)
            .expect_err("bad coarse accepted")
            .to_string();
        assert!(err.contains("coarse label 20"), "{err}");
    }

    #[test]
    fn real_sets_must_have_official_counts() {
        let dir = tempfile::tempdir().expect("tmp");
        write_records(dir.path(), "train.bin", &[(0, 0), (0, 1)]);
        let err = load(dir.path(), Kind::Cifar100, Split::Train)
            .expect_err("2 images accepted")
            .to_string();
        assert!(
            err.contains("2 records, expected 50000 (the official count)"),
            "{err}"
        );
    }

    #[test]
    fn missing_file_says_how_to_get_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let err = load(dir.path(), Kind::Cifar10, Split::Test)
            .expect_err("missing accepted")
            .to_string();
        assert!(
            err.contains("test_batch.bin: missing") && err.contains("lossbench data fetch cifar10"),
            "{err}"
        );
    }

    #[test]
    fn cifar10_records_have_one_label_byte() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut bytes = vec![9u8];
        bytes.extend(std::iter::repeat_n(7u8, IMAGE_BYTES));
        std::fs::write(dir.path().join("test_batch.bin"), &bytes).expect("write");
        let mut set = DataSet {
            split: Split::Test,
            side: CIFAR_SIDE,
            num_classes: 10,
            images: vec![],
            labels: vec![],
            synthetic: false,
        };
        assert_eq!(
            read_file(
                &dir.path().join("test_batch.bin"),
                Kind::Cifar10,
                10,
                &mut set
            )
            .expect("valid"),
            1
        );
        assert_eq!(set.labels, vec![9]);
        bytes[0] = 10;
        std::fs::write(dir.path().join("test_batch.bin"), &bytes).expect("write");
        let err = read_file(
            &dir.path().join("test_batch.bin"),
            Kind::Cifar10,
            10,
            &mut set,
        )
        .expect_err("label 10")
        .to_string();
        assert!(err.contains("class label 10, expected < 10"), "{err}");
    }
}
