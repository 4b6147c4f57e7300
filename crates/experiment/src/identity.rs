//! What makes two runs the same run, and two experiment files the same experiment.
//!
//! A run's identity is everything that determines its numbers — the data (by content), the
//! validation split, the backbone, the training recipe, the loss and its parameters, the seed
//! and the epoch count — flattened to `key → value` pairs (sorted, so the form is canonical)
//! and hashed. `run --resume` compares it with the identity in `run.json` and refuses on any
//! difference, naming the keys, so a metrics file never mixes two recipes.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{EXPERIMENT_COPY, Experiment, atomic_write};

/// Lower-case hex SHA-256 of the concatenated `parts`.
#[must_use]
pub fn sha256_hex(parts: &[&[u8]]) -> String {
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

/// Flatten a JSON value to dotted keys (`training.schedule.kind`); arrays stay JSON text.
#[must_use]
pub fn flatten(value: &serde_json::Value) -> BTreeMap<String, String> {
    fn walk(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            serde_json::Value::String(s) => {
                out.insert(prefix.to_string(), s.clone());
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", value, &mut out);
    out
}

/// One key whose value differs between what is recorded and what is asked for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub key: String,
    /// `None`: the key is absent on that side.
    pub recorded: Option<String>,
    pub requested: Option<String>,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".into());
        write!(
            f,
            "{}: {} recorded, {} now",
            self.key,
            show(&self.recorded),
            show(&self.requested)
        )
    }
}

/// The keys on which `recorded` and `requested` differ, sorted.
#[must_use]
pub fn differences(
    recorded: &BTreeMap<String, String>,
    requested: &BTreeMap<String, String>,
) -> Vec<Difference> {
    let mut keys: Vec<&String> = recorded.keys().chain(requested.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| recorded.get(*k) != requested.get(*k))
        .map(|k| Difference {
            key: k.clone(),
            recorded: recorded.get(k).cloned(),
            requested: requested.get(k).cloned(),
        })
        .collect()
}

/// `a; b; c` of at most a few differences, for a one-line error.
#[must_use]
pub fn describe(diffs: &[Difference]) -> String {
    const SHOWN: usize = 4;
    let mut text = diffs
        .iter()
        .take(SHOWN)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    if diffs.len() > SHOWN {
        text.push_str(&format!("; and {} more", diffs.len() - SHOWN));
    }
    text
}

/// The identity of one run, as stored in `run.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunIdentity {
    /// SHA-256 of the canonical `key=value` lines of `values`.
    pub hash: String,
    pub values: BTreeMap<String, String>,
}

impl RunIdentity {
    /// The identity of `(loss, seed)` of `experiment` trained for `epochs` on data whose
    /// content hashes to `data_fingerprint`. The data folder is not part of it (the same
    /// files may live elsewhere on another node); their content is.
    #[must_use]
    pub fn new(
        experiment: &Experiment,
        loss: &str,
        params: &BTreeMap<String, f64>,
        seed: u64,
        epochs: u32,
        data_fingerprint: &str,
    ) -> Self {
        let mut values = BTreeMap::new();
        values.insert("data.set".into(), experiment.data.set_name().into());
        values.insert("data.content_sha256".into(), data_fingerprint.into());
        values.insert(
            "data.validation".into(),
            experiment.data.validation.to_string(),
        );
        // Only where they differ from the defaults (CIFAR, closed), so that existing runs
        // keep their identity.
        let d = &experiment.data;
        if d.is_own() {
            values.insert("data.image_size".into(), d.image_side().to_string());
            values.insert("data.skip_unreadable".into(), d.skip_unreadable.to_string());
        }
        if d.is_open() {
            values.insert("data.protocol".into(), "open".into());
            values.insert(
                "data.open.train_classes".into(),
                d.open
                    .map_or("listing".into(), |o| o.train_classes.to_string()),
            );
            values.insert(
                "data.validation_classes".into(),
                d.validation_classes.to_string(),
            );
        }
        // Only a non-standard augmentation is listed: runs from before it could be chosen
        // (crop and flip) keep their identity.
        if !experiment.data.augment.is_standard() {
            let a = experiment.data.augment;
            values.insert("data.augment.crop".into(), a.crop.to_string());
            values.insert("data.augment.flip".into(), a.flip.to_string());
            values.insert("data.augment.rotation".into(), format!("{:?}", a.rotation));
        }
        fn section(name: &str, value: serde_json::Value) -> Vec<(String, String)> {
            flatten(&value)
                .into_iter()
                .map(|(k, v)| (format!("{name}.{k}"), v))
                .collect()
        }
        values.extend(section(
            "model",
            serde_json::to_value(&experiment.model).unwrap_or_default(),
        ));
        // The experiment's default epoch count is not the run's: `epochs` below is.
        values.extend(
            section(
                "training",
                serde_json::to_value(&experiment.training).unwrap_or_default(),
            )
            .into_iter()
            .filter(|(k, _)| k != "training.epochs"),
        );
        values.insert("loss".into(), loss.into());
        for (k, v) in params {
            values.insert(format!("params.{k}"), format!("{v:?}"));
        }
        values.insert("seed".into(), seed.to_string());
        values.insert("epochs".into(), epochs.to_string());
        let canonical: String = values.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        Self {
            hash: sha256_hex(&[canonical.as_bytes()]),
            values,
        }
    }
}

/// What `claim_experiment_copy` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyOutcome {
    Written,
    Unchanged,
    /// The new file extends the recorded one (more losses or seeds, other claims or text).
    Extended,
}

/// The settings every run of an experiment shares (data, model, recipe), flattened, without
/// the data folder (the same files may live elsewhere on another node).
#[must_use]
pub fn shared_settings(e: &Experiment) -> BTreeMap<String, String> {
    let mut keys = flatten(&serde_json::json!({
        "data": e.data,
        "model": e.model,
        "training": e.training,
    }));
    // Where the data is is not what it is (the runs record its content).
    for location in ["data.dir", "data.file", "data.cache"] {
        keys.remove(location);
    }
    keys
}

fn loss_settings(e: &Experiment) -> BTreeMap<String, BTreeMap<String, String>> {
    e.losses
        .iter()
        .map(|l| {
            let mut keys = flatten(&serde_json::json!({ "params": l.params }));
            keys.insert(
                "epochs".into(),
                e.epochs_for(&l.name).to_string(), // the effective count
            );
            (l.name.clone(), keys)
        })
        .collect()
}

/// Write `results/<name>/experiment.toml` if absent; if present, refuse an experiment of the
/// same name that changes the data, model, recipe, or the parameters or epochs of a loss
/// both list. Adding losses or seeds, or changing claims or the description, extends the
/// copy. The data folder may differ (another node, `--data-dir`): the runs record the data's
/// content instead.
pub fn claim_experiment_copy(dir: &Path, experiment: &Experiment) -> Result<CopyOutcome> {
    let path = dir.join(EXPERIMENT_COPY);
    if !path.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        atomic_write(&path, experiment.to_toml().as_bytes())?;
        return Ok(CopyOutcome::Written);
    }
    let recorded =
        Experiment::load(&path).with_context(|| format!("{} is unreadable", path.display()))?;
    if recorded == *experiment {
        return Ok(CopyOutcome::Unchanged);
    }
    let mut diffs = differences(&shared_settings(&recorded), &shared_settings(experiment));
    let (old, new) = (loss_settings(&recorded), loss_settings(experiment));
    for (loss, keys) in &new {
        if let Some(before) = old.get(loss) {
            diffs.extend(differences(before, keys).into_iter().map(|mut d| {
                d.key = format!("losses.{loss}.{}", d.key);
                d
            }));
        }
    }
    if !diffs.is_empty() {
        bail!(
            "{} holds a different experiment named `{}` ({}); use another experiment name or another --results",
            path.display(),
            experiment.name,
            describe(&diffs)
        );
    }
    let mut merged = experiment.clone();
    for l in &recorded.losses {
        if !merged.losses.iter().any(|m| m.name == l.name) {
            merged.losses.push(l.clone());
        }
    }
    for s in &recorded.seeds {
        if !merged.seeds.contains(s) {
            merged.seeds.push(*s);
        }
    }
    atomic_write(&path, merged.to_toml().as_bytes())?;
    Ok(CopyOutcome::Extended)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::VALID;

    fn experiment(text: &str) -> Experiment {
        Experiment::parse(text, Path::new("x.toml")).expect("valid")
    }

    fn identity(e: &Experiment, epochs: u32) -> RunIdentity {
        let params = BTreeMap::from([("s".to_string(), 64.0), ("m".to_string(), 0.5)]);
        RunIdentity::new(e, "arcface", &params, 0, epochs, "abc")
    }

    #[test]
    fn identity_is_canonical_and_names_what_differs() {
        let e = experiment(VALID);
        let a = identity(&e, 2);
        assert_eq!(a, identity(&e, 2), "same inputs, same identity");
        assert_eq!(a.values["training.lr"], "0.1");
        assert_eq!(a.values["params.m"], "0.5");
        assert!(!a.values.contains_key("training.epochs"));
        assert_eq!(a.hash.len(), 64);

        let other = experiment(&VALID.replace("lr = 0.1", "lr = 0.05"));
        let b = identity(&other, 3);
        assert_ne!(a.hash, b.hash);
        let diffs = differences(&a.values, &b.values);
        let keys: Vec<&str> = diffs.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(keys, ["epochs", "training.lr"]);
        assert_eq!(
            describe(&diffs),
            "epochs: 2 recorded, 3 now; training.lr: 0.1 recorded, 0.05 now"
        );
        // The data folder is not part of a run's identity; the data's content is.
        let moved = experiment(&VALID.replace("data/synthetic", "/mnt/elsewhere"));
        assert_eq!(identity(&moved, 2), a);
    }

    #[test]
    fn sha256_of_a_known_string() {
        assert_eq!(
            sha256_hex(&[b"ab", b"c"]),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn experiment_copy_is_written_once_and_guards_the_name() {
        let dir = tempfile::tempdir().expect("tmp");
        let e = experiment(VALID);
        assert_eq!(
            claim_experiment_copy(dir.path(), &e).expect("write"),
            CopyOutcome::Written
        );
        assert_eq!(
            claim_experiment_copy(dir.path(), &e).expect("same"),
            CopyOutcome::Unchanged
        );
        let before = std::fs::read(dir.path().join(EXPERIMENT_COPY)).expect("read");
        for (from, to, key) in [
            (
                "lr = 0.1",
                "lr = 0.05",
                "training.lr: 0.1 recorded, 0.05 now",
            ),
            ("width = 0.125", "width = 0.25", "model.width"),
            ("m = 0.5 }", "m = 0.3 }", "losses.arcface.params.m"),
            ("epochs = 2\n", "epochs = 4\n", "losses.arcface.epochs"),
        ] {
            let err = claim_experiment_copy(dir.path(), &experiment(&VALID.replace(from, to)))
                .expect_err(to)
                .to_string();
            assert!(err.contains("different experiment named `t`"), "{err}");
            assert!(err.contains(key), "{key}: {err}");
            assert!(err.contains("another --results"), "{err}");
            assert_eq!(
                std::fs::read(dir.path().join(EXPERIMENT_COPY)).expect("read"),
                before,
                "nothing written"
            );
        }
        // More seeds, another loss, a new claim: the copy grows and keeps what it had.
        let grown = experiment(
            &VALID
                .replace("seeds = [0, 1]", "seeds = [0, 1, 2]")
                .replace(
                    "[claimed.arcface]",
                    "[[losses]]\nname = \"cosface\"\n\n[claimed.arcface]",
                ),
        );
        assert_eq!(
            claim_experiment_copy(dir.path(), &grown).expect("extend"),
            CopyOutcome::Extended
        );
        let copy = Experiment::load(&dir.path().join(EXPERIMENT_COPY)).expect("copy");
        assert_eq!(copy.seeds, [0, 1, 2]);
        assert_eq!(copy.losses.len(), 3);
    }
}
