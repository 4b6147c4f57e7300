//! The experiment file (`experiments/*.toml`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Backbones the model crate provides.
pub const ARCHS: &[&str] = &["resnet18", "resnet34", "resnet50", "resnet101"];

/// A config that cannot be used; the message names the file, the key and what is allowed.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The I/O error is part of the message, not a `source`: a chain printed with `{:#}`
    /// would say it twice.
    #[error("cannot read {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {key} = {value} is invalid: {allowed}")]
    Invalid {
        path: PathBuf,
        key: String,
        value: String,
        allowed: String,
    },
}

/// One experiment: a data set, a backbone, a recipe, losses and seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Folder name under `results/` and `reports/`: lower-case letters, digits, `-`, `_`.
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub data: DataConfig,
    pub model: ModelConfig,
    pub training: TrainingConfig,
    pub seeds: Vec<u64>,
    pub losses: Vec<LossEntry>,
    /// Published numbers to compare against, by loss name.
    #[serde(default)]
    pub claimed: BTreeMap<String, Claim>,
    /// How the per-loss sweeps (`[[losses]] sweep = {…}`) are trained and judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<SweepConfig>,
    /// How the report judges the losses.
    #[serde(default, skip_serializing_if = "ReportConfig::is_default")]
    pub report: ReportConfig,
}

/// `[report]`: the headline metric of verdicts, forest plot and pairwise table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// Default: `top1` under the closed protocol, `map_at_r` under the open one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headline: Option<Headline>,
}

impl ReportConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// A test metric that can head the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Headline {
    Top1,
    MapAtR,
    RecallAt1,
}

impl Headline {
    /// Column stem in the records and report (`test_<stem>`).
    #[must_use]
    pub fn stem(self) -> &'static str {
        match self {
            Self::Top1 => "top1",
            Self::MapAtR => "map_at_r",
            Self::RecallAt1 => "recall_at_1",
        }
    }

    /// Name in prose and table headers.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Top1 => "top-1",
            Self::MapAtR => "MAP@R",
            Self::RecallAt1 => "Recall@1",
        }
    }
}

/// Shared settings of every sweep run: trained on the training split minus the validation
/// split, judged on the validation split only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    pub epochs: u32,
    #[serde(default = "seed_zero")]
    pub seeds: Vec<u64>,
    /// `val_top1` (higher is better), `val_loss` (lower is better), `val_map_at_r` or
    /// `val_recall_at_1` (higher is better), at the last epoch. Default: `val_top1`, under
    /// the open protocol `val_map_at_r`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metric: String,
}

/// Metrics a sweep can select by (the last two are the open protocol's, whose validation
/// classes are unseen: no top-1, no loss).
pub const SWEEP_METRICS: &[&str] = &["val_top1", "val_loss", "val_map_at_r", "val_recall_at_1"];

/// The sweep key that is not a loss parameter: the head's learning-rate factor.
pub const HEAD_LR_SCALE: &str = "head_lr_scale";

fn seed_zero() -> Vec<u64> {
    vec![0]
}

/// Which data set, where it is, and how a run splits it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub set: DataSetName,
    /// CIFAR: the folder holding the binary files (e.g. `data/cifar-100-binary`); `folder`:
    /// the folder holding `train/`, `test/` (and `val/`). Not used by `csv`.
    #[serde(default, skip_serializing_if = "is_empty_path")]
    pub dir: PathBuf,
    /// `csv`: the list of `path,label,split` rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// If present, the folder holds lossbench's synthetic set and is generated when missing.
    #[serde(default)]
    pub synthetic: Option<SynthSettings>,
    /// Training images held out as a validation split (stratified by class, the same for
    /// every loss and seed); 0 = none, model selection is then impossible without the test set.
    #[serde(default)]
    pub validation: usize,
    /// The open protocol's validation split: whole training classes held out; 0 = none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub validation_classes: usize,
    /// The training augmentation (default: crop and flip, no rotation).
    #[serde(default, skip_serializing_if = "Augment::is_standard")]
    pub augment: Augment,
    /// Side of the square images of a set of your own (default 32; CIFAR is 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<usize>,
    /// Leave unreadable images of your own out (listed in run.json) instead of refusing.
    #[serde(default, skip_serializing_if = "is_false")]
    pub skip_unreadable: bool,
    /// Where decoded images of your own are packed (default `~/.cache/lossbench`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<PathBuf>,
    /// `closed` (test classes are the training classes) or `open` (unseen test classes).
    #[serde(default, skip_serializing_if = "Protocol::is_closed")]
    pub protocol: Protocol,
    /// Open protocol on a set whose splits share classes: the first `train_classes` classes
    /// by sorted name train, the others test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open: Option<OpenSettings>,
}

fn is_empty_path(p: &Path) -> bool {
    p.as_os_str().is_empty()
}
fn is_zero(v: &usize) -> bool {
    *v == 0
}
fn is_false(v: &bool) -> bool {
    !*v
}

/// Closed or open set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Closed,
    Open,
}

impl Protocol {
    #[must_use]
    pub fn is_closed(&self) -> bool {
        *self == Self::Closed
    }
}

/// `[data] open = { train_classes = K }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenSettings {
    pub train_classes: usize,
}

/// Training augmentation, applied in torchvision's order: random crop of the zero-padded
/// image, random horizontal flip, random rotation (bilinear, zero fill).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Augment {
    #[serde(default = "yes")]
    pub crop: bool,
    #[serde(default = "yes")]
    pub flip: bool,
    /// Largest rotation in degrees: an angle uniform in [−rotation, rotation] per image
    /// (pytorch-cifar100's `RandomRotation(15)`); 0 = none.
    #[serde(default)]
    pub rotation: f64,
}

fn yes() -> bool {
    true
}

impl Default for Augment {
    fn default() -> Self {
        Self {
            crop: true,
            flip: true,
            rotation: 0.0,
        }
    }
}

impl Augment {
    /// lossbench's augmentation before it could be chosen (crop and flip).
    #[must_use]
    pub fn is_standard(&self) -> bool {
        *self == Self::default()
    }
}

impl DataConfig {
    /// `cifar10`, `cifar100`, `folder` or `csv`.
    #[must_use]
    pub fn set_name(&self) -> &'static str {
        match self.set {
            DataSetName::Cifar10 => "cifar10",
            DataSetName::Cifar100 => "cifar100",
            DataSetName::Folder => "folder",
            DataSetName::Csv => "csv",
        }
    }

    /// Whether the images are the user's own (a folder or a CSV), not CIFAR files.
    #[must_use]
    pub fn is_own(&self) -> bool {
        matches!(self.set, DataSetName::Folder | DataSetName::Csv)
    }

    /// The side of the images a run trains on.
    #[must_use]
    pub fn image_side(&self) -> usize {
        self.image_size.unwrap_or(32)
    }

    /// The path that holds the data: the CSV file for `csv`, else `dir`.
    #[must_use]
    pub fn location(&self) -> &Path {
        match (&self.set, &self.file) {
            (DataSetName::Csv, Some(file)) => file,
            _ => &self.dir,
        }
    }

    /// Whether the test classes are unseen in training.
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.protocol == Protocol::Open
    }
}

/// CIFAR-10, CIFAR-100, an image folder or a CSV list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataSetName {
    #[serde(rename = "cifar10")]
    Cifar10,
    #[serde(rename = "cifar100")]
    Cifar100,
    #[serde(rename = "folder")]
    Folder,
    #[serde(rename = "csv")]
    Csv,
}

/// Settings of a generated synthetic set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthSettings {
    pub classes: usize,
    pub train_per_class: usize,
    pub test_per_class: usize,
    #[serde(default)]
    pub seed: u64,
}

/// The backbone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub arch: String,
    #[serde(default = "one")]
    pub width: f64,
    /// Initial class weights of every loss head: N(0, std²). Default: each head's own
    /// (N(0, 0.01²), InsightFace's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_init: Option<HeadInit>,
    /// InsightFace's embedding neck, BN → linear(dim) → BN, between the pooled features and
    /// the head of every loss. Default: none (the head sees the pooled features).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Embedding>,
}

/// `[model] head_init = { std = 1.0 }`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadInit {
    pub std: f64,
}

/// `[model] embedding = { dim = 512 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Embedding {
    pub dim: usize,
}

fn one() -> f64 {
    1.0
}

/// The optimiser and learning-rate recipe, shared by every loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingConfig {
    pub epochs: u32,
    pub batch_size: usize,
    #[serde(default = "eval_batch")]
    pub eval_batch_size: usize,
    pub lr: f64,
    #[serde(default = "momentum")]
    pub momentum: f64,
    #[serde(default = "weight_decay")]
    pub weight_decay: f64,
    #[serde(default)]
    pub nesterov: bool,
    /// Linear warm-up from `lr / warmup_steps` to `lr` over this many epochs.
    #[serde(default)]
    pub warmup_epochs: u32,
    pub schedule: Schedule,
    /// Float type of every tensor: `f32` (default), `bf16` or `f16` — the whole run, as burn
    /// has no mixed precision (see the README).
    #[serde(default = "f32_name", skip_serializing_if = "is_f32")]
    pub precision: String,
    /// The loss head's parameters learn at `lr × head_lr_scale` (pytorch-metric-learning's
    /// users need ~10× for cosine heads); sweepable like a loss parameter.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub head_lr_scale: f64,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_one(x: &f64) -> bool {
    *x == 1.0
}

/// Float types `training.precision` accepts.
pub const PRECISIONS: &[&str] = &["f32", "bf16", "f16"];

fn f32_name() -> String {
    "f32".into()
}
// Settings at their defaults are not written, so results of a lossbench without the setting
// keep their identity.
fn is_f32(s: &str) -> bool {
    s == "f32"
}

fn eval_batch() -> usize {
    256
}
fn momentum() -> f64 {
    0.9
}
fn weight_decay() -> f64 {
    5e-4
}

/// Learning rate after warm-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Schedule {
    /// `lr · gamma^(number of milestones ≤ epoch)`; epochs counted from 0.
    Multistep { milestones: Vec<u32>, gamma: f64 },
    /// Cosine from `lr` to `min_lr` over the epochs after warm-up, per step.
    Cosine {
        #[serde(default)]
        min_lr: f64,
    },
    /// Constant `lr`.
    Constant,
}

/// One loss to train, with its parameters (validated by the registry) and an optional
/// epoch count of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossEntry {
    pub name: String,
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub epochs: Option<u32>,
    /// Values to try per parameter (a loss parameter or `head_lr_scale`): every combination
    /// is a sweep run; `lossbench sweep` picks the best on the validation split.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sweep: BTreeMap<String, Vec<f64>>,
}

/// A published result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    /// Top-1 accuracy as a fraction (0.807, not 80.7).
    pub top1: f64,
    #[serde(default)]
    pub epochs: Option<u32>,
    #[serde(default)]
    pub source: String,
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

impl Experiment {
    /// Read and validate an experiment file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Io {
            path: path.to_path_buf(),
            cause,
        })?;
        Self::parse(&text, path)
    }

    /// Parse and validate TOML text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut experiment: Self = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
            let key = text
                .lines()
                .nth(line - 1)
                .and_then(|l| l.split_once('='))
                .map(|(k, _)| k.trim());
            let mut message = e.message().trim().replace('\n', " ");
            if let Some(key) =
                key.filter(|k| !k.is_empty() && !k.starts_with('[') && !message.contains(k))
            {
                message = format!("key `{key}`: {message}");
            }
            ConfigError::Syntax {
                path: path.to_path_buf(),
                line,
                column,
                message,
            }
        })?;
        if let Some(sweep) = &mut experiment.sweep
            && sweep.metric.is_empty()
        {
            sweep.metric = if experiment.data.is_open() {
                "val_map_at_r"
            } else {
                "val_top1"
            }
            .into();
        }
        experiment.validate(path)?;
        Ok(experiment)
    }

    /// The report's headline metric: `[report] headline`, else top-1 (closed protocol) or
    /// MAP@R (open protocol, where top-1 does not exist).
    #[must_use]
    pub fn headline(&self) -> Headline {
        self.report.headline.unwrap_or(if self.data.is_open() {
            Headline::MapAtR
        } else {
            Headline::Top1
        })
    }

    /// `[data]`'s rules: where each kind of set is named, the protocol's settings.
    fn validate_data(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: &str, value: String, allowed: &str| invalid(path, key, value, allowed);
        let d = &self.data;
        let set = d.set_name();
        match d.set {
            DataSetName::Csv => {
                if d.file.is_none() {
                    return bad(
                        "data.file",
                        "(missing)".into(),
                        "set = \"csv\" names its list of path,label,split rows with data.file",
                    );
                }
            }
            _ => {
                if d.dir.as_os_str().is_empty() {
                    return bad(
                        "data.dir",
                        "(missing)".into(),
                        &format!("set = \"{set}\" needs the folder that holds it"),
                    );
                }
                if d.file.is_some() {
                    return bad(
                        "data.file",
                        "…".into(),
                        "only set = \"csv\" reads a file; a folder or CIFAR set is named by data.dir",
                    );
                }
            }
        }
        if d.is_own() {
            if d.synthetic.is_some() {
                return bad(
                    "data.synthetic",
                    "…".into(),
                    "generates CIFAR-format files; for a synthetic image folder run `lossbench data synth --format folder` and point data.dir there",
                );
            }
        } else {
            if d.image_size.is_some_and(|n| n != 32) {
                return bad(
                    "data.image_size",
                    format!("{}", d.image_size.unwrap_or(0)),
                    "CIFAR images are 32×32; image_size applies to set = \"folder\" or \"csv\"",
                );
            }
            if d.skip_unreadable {
                return bad(
                    "data.skip_unreadable",
                    "true".into(),
                    "applies to image folders and CSV lists, not CIFAR files",
                );
            }
        }
        if let Some(n) = d.image_size
            && !(8..=1024).contains(&n)
        {
            return bad(
                "data.image_size",
                n.to_string(),
                "must be in [8, 1024] (the CIFAR ResNets need 8 pixels for their stride-2 stages)",
            );
        }
        if d.open.is_some() && !d.is_open() {
            return bad(
                "data.open",
                "…".into(),
                "splits the classes for the open protocol: also set data.protocol = \"open\"",
            );
        }
        if d.is_open() {
            if d.validation > 0 {
                return bad(
                    "data.validation",
                    d.validation.to_string(),
                    "holds out images of the training classes; the open protocol holds out whole classes: use data.validation_classes",
                );
            }
            if self.report.headline == Some(Headline::Top1) {
                return bad(
                    "report.headline",
                    "\"top1\"".into(),
                    "the open protocol's test classes are unseen in training, so there is no top-1: use \"map_at_r\" or \"recall_at_1\"",
                );
            }
            if !self.claimed.is_empty() {
                return bad(
                    "claimed",
                    "…".into(),
                    "claims are top-1 accuracies, which the open protocol does not have",
                );
            }
        } else if d.validation_classes > 0 {
            return bad(
                "data.validation_classes",
                d.validation_classes.to_string(),
                "holds out whole classes, which only the open protocol does: under the closed protocol use data.validation (images)",
            );
        }
        Ok(())
    }

    /// Check every value that serde cannot (ranges, uniqueness, cross references).
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: &str, value: String, allowed: &str| invalid(path, key, value, allowed);
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            return bad(
                "name",
                format!("{:?}", self.name),
                "must be non-empty lower-case letters, digits, '-' or '_' (it names a folder)",
            );
        }
        if !ARCHS.contains(&self.model.arch.as_str()) {
            return bad(
                "model.arch",
                format!("{:?}", self.model.arch),
                &format!("must be one of {}", ARCHS.join(", ")),
            );
        }
        if !(self.model.width > 0.0 && self.model.width <= 4.0) {
            return bad(
                "model.width",
                self.model.width.to_string(),
                "must be in (0, 4]",
            );
        }
        let t = &self.training;
        if t.epochs == 0 {
            return bad("training.epochs", "0".into(), "must be at least 1");
        }
        if t.batch_size == 0 {
            return bad("training.batch_size", "0".into(), "must be at least 1");
        }
        if t.eval_batch_size == 0 {
            return bad("training.eval_batch_size", "0".into(), "must be at least 1");
        }
        if !(t.lr.is_finite() && t.lr > 0.0) {
            return bad(
                "training.lr",
                t.lr.to_string(),
                "must be a finite number > 0",
            );
        }
        if !(0.0..1.0).contains(&t.momentum) {
            return bad(
                "training.momentum",
                t.momentum.to_string(),
                "must be in [0, 1)",
            );
        }
        if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
            return bad(
                "training.weight_decay",
                t.weight_decay.to_string(),
                "must be a finite number >= 0",
            );
        }
        if t.nesterov && t.momentum == 0.0 {
            return bad(
                "training.nesterov",
                "true".into(),
                "needs training.momentum > 0",
            );
        }
        if !PRECISIONS.contains(&t.precision.as_str()) {
            return bad(
                "training.precision",
                format!("{:?}", t.precision),
                &format!("must be one of {}", PRECISIONS.join(", ")),
            );
        }
        match &t.schedule {
            Schedule::Multistep { milestones, gamma } => {
                if milestones.windows(2).any(|w| w[0] >= w[1]) {
                    return bad(
                        "training.schedule.milestones",
                        format!("{milestones:?}"),
                        "must be strictly increasing",
                    );
                }
                if !(gamma.is_finite() && *gamma > 0.0 && *gamma <= 1.0) {
                    return bad(
                        "training.schedule.gamma",
                        gamma.to_string(),
                        "must be in (0, 1]",
                    );
                }
            }
            Schedule::Cosine { min_lr } => {
                if !(min_lr.is_finite() && *min_lr >= 0.0 && *min_lr <= t.lr) {
                    return bad(
                        "training.schedule.min_lr",
                        min_lr.to_string(),
                        "must be in [0, training.lr]",
                    );
                }
            }
            Schedule::Constant => {}
        }
        if !(t.head_lr_scale.is_finite() && t.head_lr_scale > 0.0) {
            return bad(
                "training.head_lr_scale",
                t.head_lr_scale.to_string(),
                "must be a finite number > 0",
            );
        }
        if let Some(h) = self.model.head_init
            && !(h.std.is_finite() && h.std > 0.0)
        {
            return bad(
                "model.head_init.std",
                h.std.to_string(),
                "must be a finite number > 0",
            );
        }
        if let Some(e) = self.model.embedding
            && !(1..=8192).contains(&e.dim)
        {
            return bad(
                "model.embedding.dim",
                e.dim.to_string(),
                "must be in 1..=8192",
            );
        }
        let rotation = self.data.augment.rotation;
        if !(0.0..=180.0).contains(&rotation) {
            return bad(
                "data.augment.rotation",
                rotation.to_string(),
                "must be in [0, 180] degrees",
            );
        }
        self.validate_data(path)?;
        self.validate_sweep(path)?;
        if self.seeds.is_empty() {
            return bad("seeds", "[]".into(), "must list at least one seed");
        }
        if self.seeds.iter().collect::<BTreeSet<_>>().len() != self.seeds.len() {
            return bad(
                "seeds",
                format!("{:?}", self.seeds),
                "must not repeat a seed",
            );
        }
        if self.losses.is_empty() {
            return bad(
                "losses",
                "[]".into(),
                "must list at least one [[losses]] entry",
            );
        }
        let mut names = BTreeSet::new();
        for (i, loss) in self.losses.iter().enumerate() {
            if !names.insert(loss.name.as_str()) {
                return bad(
                    &format!("losses[{i}].name"),
                    format!("{:?}", loss.name),
                    "must not repeat a loss",
                );
            }
            if loss.epochs == Some(0) {
                return bad(
                    &format!("losses[{i}].epochs"),
                    "0".into(),
                    "must be at least 1",
                );
            }
            let epochs = loss.epochs.unwrap_or(t.epochs);
            if t.warmup_epochs > epochs {
                return bad(
                    "training.warmup_epochs",
                    t.warmup_epochs.to_string(),
                    &format!("must not exceed the {epochs} epochs of `{}`", loss.name),
                );
            }
        }
        for (name, claim) in &self.claimed {
            if !names.contains(name.as_str()) {
                return bad(
                    &format!("claimed.{name}"),
                    "…".into(),
                    "names a loss that is not in [[losses]]",
                );
            }
            if !(0.0..=1.0).contains(&claim.top1) {
                let hint = if (1.0..=100.0).contains(&claim.top1) {
                    " (a fraction: write 0.807 for 80.7 %)"
                } else {
                    ""
                };
                return bad(
                    &format!("claimed.{name}.top1"),
                    claim.top1.to_string(),
                    &format!("must be in [0, 1]{hint}"),
                );
            }
        }
        if let Some(s) = &self.data.synthetic
            && (s.classes < 2 || s.classes > 100 || s.train_per_class == 0 || s.test_per_class == 0)
        {
            return bad(
                "data.synthetic",
                format!("{s:?}"),
                "needs 2..=100 classes and at least 1 image per class and split",
            );
        }
        Ok(())
    }

    fn validate_sweep(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: &str, value: String, allowed: &str| invalid(path, key, value, allowed);
        let swept = self.losses.iter().any(|l| !l.sweep.is_empty());
        for l in &self.losses {
            for (key, values) in &l.sweep {
                let name = format!("losses.{}.sweep.{key}", l.name);
                if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
                    return bad(&name, format!("{values:?}"), "must list finite values");
                }
                if values
                    .iter()
                    .enumerate()
                    .any(|(i, v)| values[..i].contains(v))
                {
                    return bad(&name, format!("{values:?}"), "must not repeat a value");
                }
                if key == HEAD_LR_SCALE && values.iter().any(|v| *v <= 0.0) {
                    return bad(&name, format!("{values:?}"), "must be > 0");
                }
            }
        }
        match (&self.sweep, swept) {
            (None, true) => bad(
                "sweep",
                "(missing)".into(),
                "a loss has `sweep` values: add a [sweep] table (epochs, seeds, metric)",
            ),
            (Some(s), _) => {
                if s.epochs == 0 {
                    return bad("sweep.epochs", "0".into(), "must be at least 1");
                }
                if s.seeds.is_empty() {
                    return bad("sweep.seeds", "[]".into(), "must list at least one seed");
                }
                if !SWEEP_METRICS.contains(&s.metric.as_str()) {
                    return bad(
                        "sweep.metric",
                        format!("{:?}", s.metric),
                        &format!("must be one of {}", SWEEP_METRICS.join(", ")),
                    );
                }
                let open = self.data.is_open();
                if open && !s.metric.starts_with("val_map") && !s.metric.starts_with("val_recall") {
                    return bad(
                        "sweep.metric",
                        format!("{:?}", s.metric),
                        "the open protocol's validation classes are unseen in training: use val_map_at_r or val_recall_at_1",
                    );
                }
                if open && self.data.validation_classes == 0 {
                    return bad(
                        "data.validation_classes",
                        "0".into(),
                        "a sweep is judged on the validation split: under the open protocol hold out some training classes (e.g. validation_classes = 20)",
                    );
                }
                if !open && self.data.validation == 0 {
                    return bad(
                        "data.validation",
                        "0".into(),
                        "a sweep is judged on the validation split: hold out some training images (e.g. validation = 5000)",
                    );
                }
                if s.epochs < self.training.warmup_epochs {
                    return bad(
                        "sweep.epochs",
                        s.epochs.to_string(),
                        "must not be less than training.warmup_epochs",
                    );
                }
                Ok(())
            }
            (None, false) => Ok(()),
        }
    }

    /// Epochs for `loss`: its own count or the experiment's.
    #[must_use]
    pub fn epochs_for(&self, loss: &str) -> u32 {
        self.losses
            .iter()
            .find(|l| l.name == loss)
            .and_then(|l| l.epochs)
            .unwrap_or(self.training.epochs)
    }

    /// The experiment as TOML (what is copied into the results folder).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

/// The refusal of one value: the file, the key, what it was and what is allowed.
fn invalid(path: &Path, key: &str, value: String, allowed: &str) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid {
        path: path.to_path_buf(),
        key: key.to_string(),
        value,
        allowed: allowed.to_string(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const VALID: &str = r#"
name = "t"
seeds = [0, 1]

[data]
set = "cifar100"
dir = "data/synthetic"

[model]
arch = "resnet18"
width = 0.125

[training]
epochs = 3
batch_size = 32
lr = 0.1
warmup_epochs = 1
schedule = { kind = "multistep", milestones = [2], gamma = 0.2 }

[[losses]]
name = "softmax"

[[losses]]
name = "arcface"
params = { s = 64.0, m = 0.5 }
epochs = 2

[claimed.arcface]
top1 = 0.807
epochs = 105
"#;

    fn parse(text: &str) -> Result<Experiment, ConfigError> {
        Experiment::parse(text, Path::new("x.toml"))
    }

    #[test]
    fn valid_file_parses_with_defaults() {
        let e = parse(VALID).expect("valid");
        assert_eq!(e.training.momentum, 0.9);
        assert_eq!(e.training.eval_batch_size, 256);
        assert_eq!(e.epochs_for("arcface"), 2);
        assert_eq!(e.epochs_for("softmax"), 3);
        assert_eq!(e.losses[1].params["m"], serde_json::json!(0.5));
        // The TOML copy in the results folder reads back the same.
        assert_eq!(parse(&e.to_toml()).expect("round trip"), e);
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = VALID.replace("lr = 0.1", "lr = 0.1\nlearning_rate = 0.2");
        let err = parse(&text).expect_err("unknown key accepted").to_string();
        assert!(err.starts_with("x.toml:17:"), "{err}");
        assert!(err.contains("unknown field `learning_rate`"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = parse(&VALID.replace("batch_size = 32", "batch_size = \"big\""))
            .expect_err("string batch")
            .to_string();
        assert!(err.contains("batch_size"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn bad_values_name_key_and_range() {
        for (from, to, want) in [
            ("lr = 0.1", "lr = -0.1", "training.lr = -0.1 is invalid"),
            (
                "arch = \"resnet18\"",
                "arch = \"vgg\"",
                "model.arch = \"vgg\" is invalid: must be one of resnet18",
            ),
            (
                "seeds = [0, 1]",
                "seeds = [1, 1]",
                "seeds = [1, 1] is invalid",
            ),
            ("top1 = 0.807", "top1 = 80.7", "write 0.807 for 80.7 %"),
            (
                "milestones = [2]",
                "milestones = [2, 2]",
                "strictly increasing",
            ),
            ("epochs = 2\n", "epochs = 0\n", "losses[1].epochs = 0"),
        ] {
            let err = parse(&VALID.replace(from, to)).expect_err(to).to_string();
            assert!(err.contains(want), "{to}: {err}");
        }
    }

    #[test]
    fn data_of_your_own_and_the_open_protocol_are_checked() {
        let data = |body: &str| {
            VALID
                .replace("set = \"cifar100\"\ndir = \"data/synthetic\"", body)
                .replace("[claimed.arcface]\ntop1 = 0.807\nepochs = 105\n", "")
        };
        let folder =
            parse(&data("set = \"folder\"\ndir = \"imgs\"\nimage_size = 64")).expect("folder");
        assert_eq!(
            (folder.data.image_side(), folder.headline()),
            (64, Headline::Top1)
        );
        let open = parse(&data(
            "set = \"csv\"\nfile = \"l.csv\"\nprotocol = \"open\"\nopen = { train_classes = 100 }",
        ))
        .expect("open");
        assert_eq!(open.headline(), Headline::MapAtR);
        assert_eq!(open.data.location(), Path::new("l.csv"));
        for (body, want) in [
            ("set = \"csv\"", "data.file = (missing) is invalid"),
            ("set = \"folder\"", "data.dir = (missing) is invalid"),
            (
                "set = \"folder\"\ndir = \"d\"\nimage_size = 4",
                "data.image_size = 4 is invalid",
            ),
            (
                "set = \"cifar100\"\ndir = \"d\"\nimage_size = 64",
                "CIFAR images are 32×32",
            ),
            (
                "set = \"folder\"\ndir = \"d\"\nopen = { train_classes = 3 }",
                "also set data.protocol = \"open\"",
            ),
            (
                "set = \"folder\"\ndir = \"d\"\nprotocol = \"open\"\nvalidation = 10",
                "use data.validation_classes",
            ),
            (
                "set = \"folder\"\ndir = \"d\"\nvalidation_classes = 2",
                "only the open protocol does",
            ),
            (
                "set = \"folder\"\ndir = \"d\"\nsynthetic = { classes = 3, train_per_class = 1, test_per_class = 1 }",
                "--format folder",
            ),
        ] {
            let err = parse(&data(body)).expect_err(body).to_string();
            assert!(err.contains(want), "{body}: {err}");
        }
        let top1 = data("set = \"folder\"\ndir = \"d\"\nprotocol = \"open\"")
            + "\n[report]\nheadline = \"top1\"\n";
        let err = parse(&top1).expect_err("top-1 under open").to_string();
        assert!(err.contains("there is no top-1"), "{err}");
    }

    #[test]
    fn claim_for_a_loss_not_trained_is_an_error() {
        let err = parse(&VALID.replace("[claimed.arcface]", "[claimed.cosface]"))
            .expect_err("claim")
            .to_string();
        assert!(err.contains("claimed.cosface"), "{err}");
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("\"\"".to_string()),
                Just("-1".to_string()),
                Just("0".to_string()),
                Just("nan".to_string()),
                Just("inf".to_string()),
                Just("true".to_string()),
                Just("[]".to_string()),
                Just("{}".to_string()),
                Just("1e308".to_string()),
                "[a-z]{0,6}".prop_map(|s| format!("\"{s}\"")),
                any::<i64>().prop_map(|v| v.to_string()),
                any::<f64>().prop_map(|v| format!("{v:?}")),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Any value at any key: a parse error or a validation error, never a panic.
            #[test]
            fn mutated_configs_never_panic(line in 1usize..40, v in value()) {
                let mut lines: Vec<String> = VALID.lines().map(str::to_string).collect();
                if let Some(l) = lines.get_mut(line)
                    && let Some((key, _)) = l.split_once(" = ")
                {
                    *l = format!("{key} = {v}");
                }
                let _ = parse(&lines.join("\n"));
            }

            #[test]
            fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
                let _ = parse(&text);
            }
        }
    }
}
