//! A data set as a run uses it: where it is, how it is made (synthetic) or fetched (official
//! CIFAR), and the splits it becomes — training, an optional validation split held out of it,
//! test — with the training split's normalisation statistics and a fingerprint of the content.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use lossbench_rng::{Purpose, Stream};

use crate::own::{DecodeOptions, decode_listing};
use crate::synth::{self, SynthConfig, SynthManifest};
use crate::{
    ChannelStats, DataError, DataSet, Kind, Split, fetch, image_len, listing, load,
    split_validation,
};

/// Where a data set is and how to get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// CIFAR binary files in `dir` (e.g. `data/cifar-100-binary`); lossbench's synthetic set
    /// is generated into `dir` when missing or different.
    Cifar {
        kind: Kind,
        dir: PathBuf,
        synthetic: Option<SynthConfig>,
    },
    /// An image folder: `dir/train/<class>/…`, `dir/test/<class>/…`, optionally `dir/val/…`.
    Folder { dir: PathBuf },
    /// A CSV of `path,label,split` rows.
    Csv { file: PathBuf },
}

/// Whether the test classes are the training classes (`closed`: top-1 exists) or disjoint
/// from them (`open`: retrieval only, the protocol of CUB-200, Cars196, SOP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Closed,
    /// `train_classes`: split one set's classes by sorted name, the first K to training and
    /// the others to test; `None`: the listing's train and test classes, which must differ.
    Open { train_classes: Option<usize> },
}

impl Protocol {
    #[must_use]
    pub fn is_open(self) -> bool {
        matches!(self, Self::Open { .. })
    }
}

/// A data set and how a run splits it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSource {
    pub origin: Origin,
    /// Side of the images of a set of your own (`[data] image_size`); CIFAR is 32.
    pub image_size: usize,
    /// Leave unreadable images of your own out (listed in run.json) instead of refusing.
    pub skip_unreadable: bool,
    /// Where decoded images of your own are packed.
    pub cache_dir: PathBuf,
    /// Closed protocol: training images held out as the validation split (stratified by
    /// class); 0 = none.
    pub validation: usize,
    /// Open protocol: whole training classes held out as the validation split; 0 = none.
    pub validation_classes: usize,
    pub protocol: Protocol,
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
    /// CIFAR: SHA-256 of every image and label of the official training and test files; a
    /// set of your own: of its decoded pixels, labels and class names.
    pub fingerprint: String,
    /// Name of each training label (the head's classes).
    pub train_classes: Vec<String>,
    /// Name of each test label: the training classes under the closed protocol.
    pub test_classes: Vec<String>,
    /// Name of each validation label (open protocol: classes of their own).
    pub validation_classes: Vec<String>,
    pub protocol: Protocol,
    /// Images left out with `skip_unreadable`, each with why.
    pub skipped: Vec<String>,
}

impl Splits {
    /// Side of the images.
    #[must_use]
    pub fn side(&self) -> usize {
        self.train.side
    }
}

/// Labelled images of one split before the protocol is applied: labels index `names`.
#[derive(Debug, Default)]
struct Part {
    pixels: Vec<u8>,
    labels: Vec<u16>,
}

/// A whole data set before the protocol is applied.
#[derive(Debug)]
struct Named {
    side: usize,
    names: Vec<String>,
    train: Part,
    val: Option<Part>,
    test: Part,
    synthetic: bool,
    fingerprint: String,
    skipped: Vec<String>,
}

impl DataSource {
    /// CIFAR files in `dir` (generated there if `synthetic`), the closed protocol, no
    /// validation split.
    #[must_use]
    pub fn cifar(kind: Kind, dir: PathBuf, synthetic: Option<SynthConfig>) -> Self {
        Self {
            origin: Origin::Cifar {
                kind,
                dir,
                synthetic,
            },
            image_size: crate::CIFAR_SIDE,
            skip_unreadable: false,
            cache_dir: crate::own::default_cache_dir(),
            validation: 0,
            validation_classes: 0,
            protocol: Protocol::Closed,
        }
    }

    /// Read the data, generating the synthetic set first if it is one, and downloading the
    /// official set first if `fetch` and it cannot be read; then split it by the protocol.
    /// `log` hears what is done.
    pub fn load(&self, fetch: bool, log: &dyn Fn(&str)) -> Result<Splits> {
        let named = match &self.origin {
            Origin::Cifar {
                kind,
                dir,
                synthetic,
            } => load_cifar(*kind, dir, *synthetic, fetch, log)?,
            Origin::Folder { dir } => self.load_own(&listing::read_folder(dir)?, log)?,
            Origin::Csv { file } => self.load_own(&listing::read_csv(file)?, log)?,
        };
        assemble(named, self)
    }

    fn load_own(&self, listing: &listing::Listing, log: &dyn Fn(&str)) -> Result<Named> {
        let options = DecodeOptions {
            side: self.image_size,
            skip_unreadable: self.skip_unreadable,
            cache_dir: self.cache_dir.clone(),
        };
        let mut decoded = decode_listing(listing, &options, log)?;
        // The listing's canonical order is by split (train, val, test) first, so each split
        // is one run of images: cut the pixels apart instead of copying them.
        if !decoded.splits.is_sorted() {
            bail!("internal error: the decoded images are not in split order");
        }
        let plane = image_len(decoded.side);
        let mut parts: [Part; 3] = Default::default();
        for k in [2, 1] {
            let start = decoded.splits.partition_point(|&s| usize::from(s) < k);
            parts[k] = Part {
                pixels: decoded.pixels.split_off(start * plane),
                labels: decoded.labels.split_off(start),
            };
        }
        parts[0] = Part {
            pixels: std::mem::take(&mut decoded.pixels),
            labels: std::mem::take(&mut decoded.labels),
        };
        let [train, val, test] = parts;
        for (part, split) in [(&train, "train"), (&test, "test")] {
            if part.labels.is_empty() {
                bail!(
                    "{}: no readable {split} image is left",
                    listing.origin.display()
                );
            }
        }
        let synthetic = match &self.origin {
            Origin::Folder { dir } => dir.join(synth::MANIFEST).exists(),
            _ => false,
        };
        Ok(Named {
            side: decoded.side,
            names: decoded.names,
            train,
            val: (!val.labels.is_empty()).then_some(val),
            test,
            synthetic,
            fingerprint: decoded.fingerprint,
            skipped: decoded.skipped,
        })
    }
}

/// Read CIFAR binary files, generating the synthetic set or fetching the official one first.
fn load_cifar(
    kind: Kind,
    dir: &Path,
    synthetic: Option<SynthConfig>,
    fetch: bool,
    log: &dyn Fn(&str),
) -> Result<Named> {
    if let Some(wanted) = synthetic {
        generate_if_missing(dir, wanted, log)?;
    }
    let load_both = || -> Result<(DataSet, DataSet), DataError> {
        Ok((
            load(dir, kind, Split::Train)?,
            load(dir, kind, Split::Test)?,
        ))
    };
    let (train, test) = match load_both() {
        // Read once when the data is there; fetch (official sets only) and read again when not.
        Err(_) if fetch && synthetic.is_none() => {
            log(&format!(
                "{} holds no usable {} data: fetching it",
                dir.display(),
                kind.name()
            ));
            fetch_into(dir, kind)?;
            load_both()?
        }
        loaded => loaded?,
    };
    // Labels hashed as the files' bytes, so fingerprints of existing runs stay valid.
    let bytes = |labels: &[u16]| labels.iter().map(|&l| l as u8).collect::<Vec<u8>>();
    let fingerprint = sha256_hex(&[
        &train.images,
        &bytes(&train.labels),
        &test.images,
        &bytes(&test.labels),
    ]);
    Ok(Named {
        side: train.side,
        names: cifar_class_names(dir, kind, train.num_classes),
        synthetic: train.synthetic,
        train: Part {
            pixels: train.images,
            labels: train.labels,
        },
        val: None,
        test: Part {
            pixels: test.images,
            labels: test.labels,
        },
        fingerprint,
        skipped: Vec::new(),
    })
}

/// The class names the official archive ships (`fine_label_names.txt`, `batches.meta.txt`),
/// in label order; zero-padded label numbers when there are none (the synthetic set), so
/// that sorting by name keeps label order.
fn cifar_class_names(dir: &Path, kind: Kind, classes: usize) -> Vec<String> {
    let file = match kind {
        Kind::Cifar100 => "fine_label_names.txt",
        Kind::Cifar10 => "batches.meta.txt",
    };
    let listed: Vec<String> = std::fs::read_to_string(dir.join(file))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if listed.len() == classes {
        return listed;
    }
    let width = (classes.max(1) - 1).to_string().len();
    (0..classes).map(|i| format!("{i:0width$}")).collect()
}

/// Write the synthetic set unless the folder already holds exactly this one. One process at a
/// time checks and writes (a lock file beside the set): the array tasks of a cluster export
/// start together on the same folder, and without it one task's generation renamed away the
/// file another was writing (`train.bin: No such file or directory`) or removed the manifest
/// under a task already loading the set.
fn generate_if_missing(dir: &Path, wanted: SynthConfig, log: &dyn Fn(&str)) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data folder {}", dir.display()))?;
    let lock_path = dir.join(".lossbench-synthetic.lock");
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("cannot create {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("cannot lock {}", lock_path.display()))?;
    let present = SynthManifest::read(dir)?;
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
            dir.display()
        ));
        synth::write(dir, wanted)?;
    }
    Ok(())
}

/// A data set from the images of `part` whose labels `keep` maps to a new label, kept in
/// place (no second copy of the pixels).
fn subset(
    mut part: Part,
    side: usize,
    split: Split,
    classes: usize,
    synthetic: bool,
    keep: &dyn Fn(u16) -> Option<u16>,
) -> DataSet {
    let plane = image_len(side);
    let mut kept = 0;
    for i in 0..part.labels.len() {
        if let Some(new) = keep(part.labels[i]) {
            part.pixels
                .copy_within(i * plane..(i + 1) * plane, kept * plane);
            part.labels[kept] = new;
            kept += 1;
        }
    }
    part.labels.truncate(kept);
    part.pixels.truncate(kept * plane);
    DataSet {
        split,
        side,
        num_classes: classes,
        images: part.pixels,
        labels: part.labels,
        synthetic,
    }
}

impl Part {
    /// A copy of the images whose label `keep` accepts.
    fn select(&self, side: usize, keep: &dyn Fn(u16) -> bool) -> Part {
        let plane = image_len(side);
        let mut out = Part::default();
        for (i, &label) in self.labels.iter().enumerate() {
            if keep(label) {
                out.labels.push(label);
                out.pixels
                    .extend_from_slice(&self.pixels[i * plane..(i + 1) * plane]);
            }
        }
        out
    }
}

/// The classes present in `labels`, in label order.
fn present(labels: &[u16], names: usize) -> Vec<u16> {
    let mut seen = vec![false; names];
    for &l in labels {
        seen[usize::from(l)] = true;
    }
    (0..names as u16)
        .filter(|&k| seen[usize::from(k)])
        .collect()
}

/// `classes` (labels into `names`) as the new labels `0..`: the map old → new.
fn relabel(classes: &[u16], names: usize) -> Vec<Option<u16>> {
    let mut map = vec![None; names];
    for (new, &old) in classes.iter().enumerate() {
        map[usize::from(old)] = Some(new as u16);
    }
    map
}

fn names_of(classes: &[u16], names: &[String]) -> Vec<String> {
    classes
        .iter()
        .map(|&k| names[usize::from(k)].clone())
        .collect()
}

/// A short list of class names for a message.
fn some_names(classes: &[u16], names: &[String]) -> String {
    let shown: Vec<&str> = classes
        .iter()
        .take(5)
        .map(|&k| names[usize::from(k)].as_str())
        .collect();
    let more = if classes.len() > shown.len() {
        format!(" and {} more", classes.len() - shown.len())
    } else {
        String::new()
    };
    format!("{}{more}", shown.join(", "))
}

/// Apply the protocol and the validation split.
fn assemble(named: Named, source: &DataSource) -> Result<Splits> {
    let n = named.names.len();
    let Named {
        side,
        names,
        train,
        val,
        test,
        synthetic,
        fingerprint,
        skipped,
    } = named;
    let by_name = |mut classes: Vec<u16>| {
        classes.sort_by(|&a, &b| names[usize::from(a)].cmp(&names[usize::from(b)]));
        classes
    };
    let (train_classes, test_classes) = match source.protocol {
        Protocol::Closed => {
            let trained = present(&train.labels, n);
            for (part, split) in [(Some(&test), "test"), (val.as_ref(), "val")] {
                let Some(part) = part else { continue };
                let unseen: Vec<u16> = present(&part.labels, n)
                    .into_iter()
                    .filter(|k| trained.binary_search(k).is_err())
                    .collect();
                if !unseen.is_empty() {
                    bail!(
                        "{split} class{} {} {} no training images: under the closed protocol every {split} class is trained on (set data.protocol = \"open\" to test on unseen classes)",
                        if unseen.len() == 1 { "" } else { "es" },
                        some_names(&unseen, &names),
                        if unseen.len() == 1 { "has" } else { "have" },
                    );
                }
            }
            (trained.clone(), trained)
        }
        Protocol::Open {
            train_classes: Some(k),
        } => {
            let all = by_name((0..n as u16).collect());
            if k == 0 || k >= all.len() {
                bail!(
                    "data.open.train_classes = {k} is invalid: the data set has {} classes, so it must be in [1, {}]",
                    all.len(),
                    all.len().saturating_sub(1)
                );
            }
            if val.is_some() {
                bail!(
                    "data.open.train_classes splits the classes itself: remove the val/ images or data.open, and hold out validation classes with data.validation_classes"
                );
            }
            (all[..k].to_vec(), all[k..].to_vec())
        }
        Protocol::Open {
            train_classes: None,
        } => {
            let trained = by_name(present(&train.labels, n));
            let tested = by_name(present(&test.labels, n));
            let shared: Vec<u16> = tested
                .iter()
                .copied()
                .filter(|k| trained.contains(k))
                .collect();
            if !shared.is_empty() {
                bail!(
                    "the open protocol tests on classes not seen in training, but {} {} in both train and test (move them, or set data.open = {{ train_classes = K }} to split the classes by name)",
                    some_names(&shared, &names),
                    if shared.len() == 1 { "is" } else { "are" }
                );
            }
            if let Some(v) = &val {
                let shared: Vec<u16> = present(&v.labels, n)
                    .into_iter()
                    .filter(|k| trained.contains(k) || tested.contains(k))
                    .collect();
                if !shared.is_empty() {
                    bail!(
                        "the open protocol's validation classes must be unseen too, but {} {} also in train or test",
                        some_names(&shared, &names),
                        if shared.len() == 1 { "is" } else { "are" }
                    );
                }
            }
            (trained, tested)
        }
    };
    let open = source.protocol.is_open();
    if open && test_classes.len() < 2 {
        bail!(
            "the open protocol's test split has {} class: retrieval needs at least 2 unseen classes",
            test_classes.len()
        );
    }
    if source.validation_classes == 1 {
        bail!(
            "data.validation_classes = 1 is invalid: retrieval on one class is trivially perfect; hold out at least 2"
        );
    }
    if val.is_some() && (source.validation > 0 || source.validation_classes > 0) {
        bail!(
            "the data set has a val/ split and the experiment asks to hold one out of training as well (data.validation / data.validation_classes): choose one"
        );
    }
    if open && source.validation > 0 {
        bail!(
            "data.validation = {} holds out images of the training classes; under the open protocol the validation split holds out whole classes: use data.validation_classes",
            source.validation
        );
    }
    if !open && source.validation_classes > 0 {
        bail!(
            "data.validation_classes holds out whole classes, which only the open protocol does; under the closed protocol use data.validation (images)"
        );
    }
    // Open protocol: whole training classes held out, chosen by a permutation keyed by
    // nothing but the class count (the same for every loss and seed).
    let (train_classes, held_classes) = if source.validation_classes > 0 {
        let v = source.validation_classes;
        if v >= train_classes.len() {
            bail!(
                "data.validation_classes = {v} is invalid: there are only {} training classes",
                train_classes.len()
            );
        }
        let order = Stream::new(0, Purpose::ValidationSplit, train_classes.len() as u64)
            .permutation(train_classes.len());
        let mut held: Vec<u16> = order[..v]
            .iter()
            .map(|&i| train_classes[i as usize])
            .collect();
        held.sort_by(|&a, &b| names[usize::from(a)].cmp(&names[usize::from(b)]));
        let kept = train_classes
            .iter()
            .copied()
            .filter(|k| !held.contains(k))
            .collect();
        (kept, held)
    } else {
        (train_classes, Vec::new())
    };
    let train_map = relabel(&train_classes, n);
    let test_map = relabel(&test_classes, n);
    // Held-out classes are copied out of the training part before it is cut down in place.
    let held_map = relabel(&held_classes, n);
    let held = (!held_classes.is_empty()).then(|| {
        subset(
            train.select(side, &|l| held_map[usize::from(l)].is_some()),
            side,
            Split::Train,
            held_classes.len(),
            synthetic,
            &|l| held_map[usize::from(l)],
        )
    });
    let train_set = subset(
        train,
        side,
        Split::Train,
        train_classes.len(),
        synthetic,
        &|l| train_map[usize::from(l)],
    );
    let test_set = subset(
        test,
        side,
        Split::Test,
        test_classes.len(),
        synthetic,
        &|l| test_map[usize::from(l)],
    );
    let (train_set, validation, validation_names) = if let Some(held) = held {
        (train_set, Some(held), names_of(&held_classes, &names))
    } else if let Some(v) = val {
        let classes = if open {
            by_name(present(&v.labels, n))
        } else {
            train_classes.clone()
        };
        let map = relabel(&classes, n);
        (
            train_set,
            Some(subset(
                v,
                side,
                Split::Train,
                classes.len(),
                synthetic,
                &|l| map[usize::from(l)],
            )),
            names_of(&classes, &names),
        )
    } else if source.validation > 0 {
        let (kept, held) = split_validation(&train_set, source.validation)?;
        (kept, Some(held), names_of(&train_classes, &names))
    } else {
        (train_set, None, Vec::new())
    };
    for (set, what) in [(&train_set, "training"), (&test_set, "test")] {
        if set.is_empty() {
            bail!("the {what} split holds no images after the protocol is applied");
        }
    }
    let stats = ChannelStats::of(&train_set);
    Ok(Splits {
        train: train_set,
        validation,
        test: test_set,
        stats,
        fingerprint,
        train_classes: names_of(&train_classes, &names),
        test_classes: names_of(&test_classes, &names),
        validation_classes: validation_names,
        protocol: source.protocol,
        skipped,
    })
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
    crate::hex(&hasher.finalize())
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

    /// A cluster's array tasks generating one set at once: one generates it, the others find
    /// it, every one succeeds, and the set is the one a single writer leaves.
    #[test]
    fn concurrent_generations_of_one_set_write_it_once() {
        let config = SynthConfig {
            classes: 3,
            train_per_class: 40,
            test_per_class: 20,
            seed: 5,
        };
        let (shared, alone) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        let generated = std::sync::atomic::AtomicUsize::new(0);
        let count = |_: &str| {
            generated.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        };
        std::thread::scope(|s| {
            let writers: Vec<_> = (0..4)
                .map(|_| s.spawn(|| generate_if_missing(shared.path(), config, &count)))
                .collect();
            for w in writers {
                w.join().expect("thread").expect("generation");
            }
        });
        assert_eq!(generated.into_inner(), 1, "writers that generated the set");
        generate_if_missing(alone.path(), config, &|_| {}).expect("generation");
        for file in ["train.bin", "test.bin", synth::MANIFEST] {
            assert_eq!(
                std::fs::read(shared.path().join(file)).expect("shared"),
                std::fs::read(alone.path().join(file)).expect("alone"),
                "{file}"
            );
        }
    }

    #[test]
    fn a_synthetic_source_is_generated_once_and_split() {
        let dir = tempfile::tempdir().expect("tmp");
        let source = DataSource {
            validation: 3,
            ..DataSource::cifar(
                Kind::Cifar100,
                dir.path().join("synth"),
                Some(SynthConfig {
                    classes: 3,
                    train_per_class: 4,
                    test_per_class: 2,
                    seed: 5,
                }),
            )
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

    /// A set of `classes` classes named `c0`, `c1`, … with `per` 1-pixel-side images per
    /// class and split (the pixel value is the class), before any protocol.
    fn named(classes: u16, per: usize) -> Named {
        let part = || Part {
            pixels: (0..classes).flat_map(|c| vec![c as u8; 3 * per]).collect(),
            labels: (0..classes).flat_map(|c| vec![c; per]).collect(),
        };
        Named {
            side: 1,
            names: (0..classes).map(|c| format!("c{c}")).collect(),
            train: part(),
            val: None,
            test: part(),
            synthetic: true,
            fingerprint: "f".into(),
            skipped: Vec::new(),
        }
    }

    fn source(protocol: Protocol, validation: usize, validation_classes: usize) -> DataSource {
        DataSource {
            protocol,
            validation,
            validation_classes,
            ..DataSource::cifar(Kind::Cifar100, PathBuf::from("x"), None)
        }
    }

    #[test]
    fn the_open_protocol_splits_classes_by_name_and_holds_out_whole_classes() {
        let open = Protocol::Open {
            train_classes: Some(6),
        };
        let s = assemble(named(10, 3), &source(open, 0, 2)).expect("open");
        assert_eq!(s.test_classes, ["c6", "c7", "c8", "c9"]);
        assert_eq!((s.test.num_classes, s.test.len()), (4, 12));
        assert_eq!(s.test.images[0], 6, "test label 0 is class c6");
        let v = s.validation.as_ref().expect("validation classes");
        assert_eq!(
            (v.num_classes, v.len(), s.train.num_classes, s.train.len()),
            (2, 6, 4, 12)
        );
        // Disjoint: no held-out class is trained on; every training class is one of c0..c5.
        let held: Vec<&String> = s.validation_classes.iter().collect();
        assert!(held.iter().all(|c| !s.train_classes.contains(c)));
        assert!(s.train_classes.iter().all(|c| c.as_str() < "c6"));
        // Pixels travel with relabelled images: label k of each split is its k-th class.
        for (set, names) in [(&s.train, &s.train_classes), (v, &s.validation_classes)] {
            for (i, &label) in set.labels.iter().enumerate() {
                assert_eq!(format!("c{}", set.images[3 * i]), names[usize::from(label)]);
            }
        }
        // The same classes for any run: keyed by nothing but the class count.
        let again = assemble(named(10, 3), &source(open, 0, 2)).expect("again");
        assert_eq!(again.validation_classes, s.validation_classes);
    }

    #[test]
    fn the_closed_protocol_keeps_labels_and_protocol_mistakes_are_refused() {
        let closed = assemble(named(3, 2), &source(Protocol::Closed, 0, 0)).expect("closed");
        assert_eq!(closed.train.labels, [0, 0, 1, 1, 2, 2]);
        assert_eq!(closed.test_classes, closed.train_classes);
        let err = |n: Named, src: DataSource| assemble(n, &src).expect_err("refused").to_string();
        let open = |k| Protocol::Open { train_classes: k };
        assert!(
            err(named(4, 2), source(open(None), 0, 0))
                .contains("c0, c1, c2, c3 are in both train and test")
        );
        assert!(err(named(4, 2), source(open(Some(3)), 0, 0)).contains("test split has 1 class"));
        assert!(
            err(named(4, 2), source(open(Some(4)), 0, 0)).contains("train_classes = 4 is invalid")
        );
        assert!(
            err(named(4, 2), source(open(Some(2)), 2, 0)).contains("use data.validation_classes")
        );
        assert!(
            err(named(4, 2), source(Protocol::Closed, 0, 2)).contains("only the open protocol")
        );
        assert!(
            err(named(6, 2), source(open(Some(3)), 0, 1))
                .contains("validation_classes = 1 is invalid")
        );
        let mut unseen = named(3, 2);
        unseen.test.labels[0] = 2;
        unseen.train.labels.retain(|&l| l != 2);
        unseen.train.pixels.truncate(3 * 4);
        assert!(
            err(unseen, source(Protocol::Closed, 0, 0))
                .contains("test class c2 has no training images")
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
