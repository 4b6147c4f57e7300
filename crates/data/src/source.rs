//! A data set as a run uses it: where it is, how it is made (synthetic) or fetched (official
//! CIFAR), and the splits it becomes — training, an optional validation split held out of it,
//! test — with the training split's normalisation statistics and a fingerprint of the content.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use sha2::{Digest, Sha256};

use crate::synth::{self, SynthConfig, SynthManifest};
use crate::{ChannelStats, DataError, DataSet, Kind, Split, fetch, load, split_validation};

/// Where a data set is and how to get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSource {
    pub kind: Kind,
    /// The folder holding the binary files (e.g. `data/cifar-100-binary`).
    pub dir: PathBuf,
    /// lossbench's synthetic set: generated into `dir` when missing or different.
    pub synthetic: Option<SynthConfig>,
    /// Training images held out as the validation split (stratified by class); 0 = none.
    pub validation: usize,
}

/// Training, validation and test splits with the normalisation statistics of the training
/// split, and a fingerprint of the data's content (part of every run's identity).
#[derive(Debug)]
pub struct Splits {
    pub train: DataSet,
    /// Held out of the training images when the experiment asks for it.
    pub validation: Option<DataSet>,
    pub test: DataSet,
    pub stats: ChannelStats,
    /// SHA-256 of every image and label of the official training and test files.
    pub fingerprint: String,
}

impl DataSource {
    /// Read the data, generating the synthetic set first if it is one, and downloading the
    /// official set first if `fetch` and it cannot be read. `log` hears what is done.
    pub fn load(&self, fetch: bool, log: &dyn Fn(&str)) -> Result<Splits> {
        if let Some(wanted) = self.synthetic {
            self.generate_if_missing(wanted, log)?;
        }
        let load_both = || -> Result<(DataSet, DataSet), DataError> {
            Ok((
                load(&self.dir, self.kind, Split::Train)?,
                load(&self.dir, self.kind, Split::Test)?,
            ))
        };
        let (train, test) = match load_both() {
            // Read once when the data is there; fetch (official sets only) and read again when not.
            Err(_) if fetch && self.synthetic.is_none() => {
                log(&format!(
                    "{} holds no usable {} data: fetching it",
                    self.dir.display(),
                    self.kind.name()
                ));
                fetch_into(&self.dir, self.kind)?;
                load_both()?
            }
            loaded => loaded?,
        };
        let fingerprint = sha256_hex(&[&train.images, &train.labels, &test.images, &test.labels]);
        let (train, validation) = match self.validation {
            0 => (train, None),
            n => {
                let (train, validation) = split_validation(&train, n)?;
                (train, Some(validation))
            }
        };
        let stats = ChannelStats::of(&train);
        Ok(Splits {
            train,
            validation,
            test,
            stats,
            fingerprint,
        })
    }

    /// Write the synthetic set unless the folder already holds exactly this one.
    fn generate_if_missing(&self, wanted: SynthConfig, log: &dyn Fn(&str)) -> Result<()> {
        let present = SynthManifest::read(&self.dir)?;
        let same = |m: &SynthManifest| {
            (m.classes, m.train_per_class, m.test_per_class, m.seed)
                == (
                    wanted.classes,
                    wanted.train_per_class,
                    wanted.test_per_class,
                    wanted.seed,
                )
        };
        if !present.as_ref().is_some_and(same) {
            log(&format!(
                "generating the synthetic data set in {}",
                self.dir.display()
            ));
            synth::write(&self.dir, wanted)?;
        }
        Ok(())
    }
}

/// Download the official data set into the parent of `dir`, which must be the folder the
/// archive extracts to.
fn fetch_into(dir: &Path, kind: Kind) -> Result<()> {
    if dir.file_name().and_then(|n| n.to_str()) != Some(kind.folder()) {
        bail!(
            "cannot fetch into {}: the official archive extracts to a folder named {}; point data.dir there",
            dir.display(),
            kind.folder()
        );
    }
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fetch::fetch(parent, kind, &fetch::Source::official(kind), true)?;
    Ok(())
}

/// Lower-case hex SHA-256 of the concatenated parts (as `lossbench_experiment::sha256_hex`,
/// so fingerprints written before this function moved here stay valid).
fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_hashes_the_parts_in_order() {
        // SHA-256("abc"), FIPS 180-2's first example.
        assert_eq!(
            sha256_hex(&[b"a", b"bc"]),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_synthetic_source_is_generated_once_and_split() {
        let dir = tempfile::tempdir().expect("tmp");
        let source = DataSource {
            kind: Kind::Cifar100,
            dir: dir.path().join("synth"),
            synthetic: Some(SynthConfig {
                classes: 3,
                train_per_class: 4,
                test_per_class: 2,
                seed: 5,
            }),
            validation: 3,
        };
        let lines = std::cell::RefCell::new(Vec::new());
        let log = |l: &str| lines.borrow_mut().push(l.to_string());
        let first = source.load(false, &log).expect("load");
        assert_eq!(
            (first.train.len(), first.test.len()),
            (9, 6),
            "12 training images less 3 held out"
        );
        assert_eq!(first.validation.as_ref().map(DataSet::len), Some(3));
        let second = source.load(false, &log).expect("load again");
        assert_eq!(first.fingerprint, second.fingerprint);
        assert_eq!(
            lines.borrow().len(),
            1,
            "generated once: {:?}",
            lines.borrow()
        );
    }

    #[test]
    fn fetching_needs_the_archive_s_own_folder_name() {
        let err = fetch_into(Path::new("data/mine"), Kind::Cifar100)
            .expect_err("wrong folder")
            .to_string();
        assert!(err.contains("a folder named cifar-100-binary"), "{err}");
    }
}
