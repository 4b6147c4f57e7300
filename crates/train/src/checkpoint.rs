//! Checkpoints: every float tensor of the model (parameters and batch-norm running
//! statistics, in module order), the SGD momentum buffers, the epoch and the step.
//!
//! Layout: `MAGIC`, a little-endian u64 length and that many bytes of JSON metadata, the raw
//! little-endian f32 values, and a CRC-32 of everything before it. A file whose size or CRC
//! does not match is reported and skipped in favour of the previous checkpoint; files are
//! written atomically and the newest [`KEEP`] are kept.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use lossbench_experiment::atomic_write;
use serde::{Deserialize, Serialize};

use crate::sgd::SgdState;

const MAGIC: &[u8; 8] = b"LBCKPT01";
/// Checkpoints kept per run: the newest and one fallback.
pub const KEEP: usize = 2;

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    epoch: u32,
    iteration: u64,
    model_shapes: Vec<Vec<usize>>,
    /// Element count of each momentum buffer (`None`: no buffer).
    momentum_sizes: Vec<Option<usize>>,
    /// Set in a checkpoint written in the middle of epoch `epoch + 1` (pre-emption).
    #[serde(default)]
    partial: Option<PartialEpoch>,
}

/// Where a run stood inside an epoch when it was stopped: enough to continue with the next
/// batch and finish the epoch's metrics exactly as without the stop.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PartialEpoch {
    /// Batches of the epoch already trained.
    pub batches_done: usize,
    /// Sums of the epoch's training loss (per image), correct predictions and images.
    pub loss_sum: f64,
    pub correct: usize,
    pub seen: usize,
    pub lr: f64,
    /// Training time spent on the epoch before the stop.
    pub train_seconds: f64,
}

/// What a checkpoint restores.
#[derive(Debug)]
pub struct Restored<M> {
    pub model: M,
    pub sgd: SgdState,
    /// Epochs completed.
    pub epoch: u32,
    /// Optimiser steps done.
    pub iteration: u64,
    /// Set when the checkpoint was written in the middle of epoch `epoch + 1`.
    pub partial: Option<PartialEpoch>,
    pub path: PathBuf,
}

fn to_host(t: Tensor<1>) -> Vec<f32> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .expect("float tensor data converts to f32")
}

/// Every float tensor of `module` (call on a synced module, e.g. from `valid()`).
fn capture<M: Module>(module: &M) -> Tensors {
    struct Capture(Tensors);
    impl ModuleVisitor for Capture {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val();
            let shape = t.dims().to_vec();
            let n: usize = shape.iter().product();
            self.0.push((shape, to_host(t.reshape([n]))));
        }
    }
    let mut c = Capture(Vec::new());
    module.visit(&mut c);
    c.0
}

/// Replace every float tensor of `module` with the saved values, in the same order.
fn restore<M: Module>(module: M, tensors: Tensors) -> Result<M> {
    struct Restore {
        tensors: std::vec::IntoIter<(Vec<usize>, Vec<f32>)>,
        error: Option<String>,
        index: usize,
    }
    impl ModuleMapper for Restore {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let index = self.index;
            self.index += 1;
            let (id, tensor, mapper) = param.consume();
            let Some((shape, values)) = self.tensors.next() else {
                self.error.get_or_insert_with(|| {
                    format!("checkpoint has fewer tensors than the model ({index})")
                });
                return Param::from_mapped_value(id, tensor, mapper);
            };
            if shape != tensor.dims().to_vec() {
                self.error.get_or_insert_with(|| {
                    format!(
                        "tensor {index}: checkpoint shape {shape:?}, model {:?}",
                        tensor.dims()
                    )
                });
                return Param::from_mapped_value(id, tensor, mapper);
            }
            let require_grad = tensor.is_require_grad();
            let mut loaded =
                Tensor::<D>::from_data(TensorData::new(values, shape), &tensor.device());
            if require_grad {
                loaded = loaded.require_grad();
            }
            Param::from_mapped_value(id, loaded, mapper)
        }
    }
    let mut r = Restore {
        tensors: tensors.into_iter(),
        error: None,
        index: 0,
    };
    let module = module.map(&mut r);
    if let Some(e) = r.error {
        bail!(e);
    }
    ensure!(
        r.tensors.len() == 0,
        "checkpoint has more tensors than the model"
    );
    Ok(module)
}

/// Orders checkpoints: after `epoch` completed epochs, and whether inside the next one
/// (a partial checkpoint is newer than the full one of the same epoch).
type Key = (u32, bool);

fn file_name((epoch, partial): Key) -> String {
    if partial {
        format!("epoch-{epoch:04}.partial.ckpt")
    } else {
        format!("epoch-{epoch:04}.ckpt")
    }
}

fn parse_name(name: &str) -> Option<Key> {
    let stem = name.strip_prefix("epoch-")?.strip_suffix(".ckpt")?;
    match stem.strip_suffix(".partial") {
        Some(epoch) => Some((epoch.parse().ok()?, true)),
        None => Some((stem.parse().ok()?, false)),
    }
}

/// Checkpoints in `dir`, newest first.
fn list(dir: &Path) -> Result<Vec<(Key, PathBuf)>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(key) = parse_name(&name) {
            found.push((key, dir.join(name)));
        }
    }
    found.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    Ok(found)
}

/// Save a checkpoint after `epoch` completed epochs (and `partial` progress into the next);
/// `synced` is the model after `valid()` (so batch-norm statistics are current). Older
/// checkpoints beyond [`KEEP`] are removed.
pub fn save<M: Module>(
    dir: &Path,
    epoch: u32,
    iteration: u64,
    synced: &M,
    sgd: &SgdState,
    partial: Option<PartialEpoch>,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tensors = capture(synced);
    let momentum: Vec<Option<Vec<f32>>> =
        sgd.buffers.iter().map(|b| b.clone().map(to_host)).collect();
    let meta = Meta {
        epoch,
        iteration,
        model_shapes: tensors.iter().map(|(s, _)| s.clone()).collect(),
        momentum_sizes: momentum.iter().map(|b| b.as_ref().map(Vec::len)).collect(),
        partial,
    };
    let json = serde_json::to_vec(&meta)?;
    let mut bytes = Vec::with_capacity(
        16 + json.len() + 4 * tensors.iter().map(|(_, v)| v.len()).sum::<usize>(),
    );
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(json.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&json);
    for values in tensors
        .iter()
        .map(|(_, v)| v)
        .chain(momentum.iter().flatten())
    {
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    let path = dir.join(file_name((epoch, partial.is_some())));
    atomic_write(&path, &bytes)?;
    for (_, old) in list(dir)?.into_iter().skip(KEEP) {
        let _ = std::fs::remove_file(old);
    }
    Ok(path)
}

fn floats(bytes: &[u8], count: usize, at: &mut usize) -> Result<Vec<f32>> {
    let end = *at + 4 * count;
    ensure!(end <= bytes.len(), "file ends inside the tensor data");
    let values = bytes[*at..end]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    *at = end;
    Ok(values)
}

/// Shapes and values of every model tensor, in module order.
type Tensors = Vec<(Vec<usize>, Vec<f32>)>;

/// Header, CRC and sizes of a checkpoint file: its metadata, the bytes before the CRC and
/// where the tensor data starts. Needs no device.
fn parse(bytes: &[u8]) -> Result<(Meta, &[u8], usize)> {
    ensure!(
        bytes.len() >= MAGIC.len() + 12 && &bytes[..8] == MAGIC,
        "not a lossbench checkpoint (bad header or truncated)"
    );
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    ensure!(
        crc32fast::hash(body) == stored,
        "checksum mismatch (truncated or corrupted)"
    );
    let json_len = u64::from_le_bytes(body[8..16].try_into()?) as usize;
    ensure!(
        16 + json_len <= body.len(),
        "metadata length beyond the end of the file"
    );
    let meta: Meta = serde_json::from_slice(&body[16..16 + json_len])?;
    let floats: usize = meta
        .model_shapes
        .iter()
        .map(|s| s.iter().product::<usize>())
        .chain(meta.momentum_sizes.iter().map(|s| s.unwrap_or(0)))
        .sum();
    ensure!(
        16 + json_len + 4 * floats == body.len(),
        "the metadata announces {floats} values but the file holds {} bytes of data",
        body.len() - 16 - json_len
    );
    Ok((meta, body, 16 + json_len))
}

/// Check a checkpoint file (header, CRC, sizes) without loading it; its epoch if sound.
pub fn verify(path: &Path) -> Result<u32> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(parse(&bytes)?.0.epoch)
}

/// Every checkpoint file of a run folder with its epoch, newest first.
pub fn files(dir: &Path) -> Result<Vec<(u32, PathBuf)>> {
    Ok(list(dir)?.into_iter().map(|((e, _), p)| (e, p)).collect())
}

fn read(path: &Path, device: &Device) -> Result<(Meta, Tensors, SgdState)> {
    let bytes = std::fs::read(path)?;
    let (meta, body, mut at) = parse(&bytes)?;
    let mut tensors = Vec::new();
    for shape in &meta.model_shapes {
        tensors.push((
            shape.clone(),
            floats(body, shape.iter().product(), &mut at)?,
        ));
    }
    let mut sgd = SgdState::default();
    for size in &meta.momentum_sizes {
        sgd.buffers.push(match size {
            Some(n) => Some(Tensor::from_data(
                TensorData::new(floats(body, *n, &mut at)?, [*n]),
                device,
            )),
            None => None,
        });
    }
    ensure!(
        at == body.len(),
        "{} unexpected bytes after the data",
        body.len() - at
    );
    Ok((meta, tensors, sgd))
}

/// Restore the newest readable checkpoint in `dir` into `model`. Unreadable ones are reported
/// through `warn` and skipped. `None` when there is no usable checkpoint.
pub fn load_latest<M: Module>(
    dir: &Path,
    model: M,
    device: &Device,
    mut warn: impl FnMut(String),
) -> Result<Option<Restored<M>>> {
    for (_, path) in list(dir)? {
        match read(&path, &device.clone().inner()) {
            Ok((meta, tensors, sgd)) => {
                let model = restore(model, tensors)
                    .with_context(|| format!("{} does not fit this model", path.display()))?;
                return Ok(Some(Restored {
                    model,
                    sgd,
                    epoch: meta.epoch,
                    iteration: meta.iteration,
                    partial: meta.partial,
                    path,
                }));
            }
            Err(e) => warn(format!(
                "checkpoint {} is unusable ({e}); trying the previous one",
                path.display()
            )),
        }
    }
    Ok(None)
}

/// Remove checkpoints newer than the one restored (`epoch`, `partial`): they belong to
/// epochs whose metrics were lost, or could not be read.
pub fn remove_after(dir: &Path, epoch: u32, partial: bool) -> Result<()> {
    for (key, path) in list(dir)? {
        if key > (epoch, partial) {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(())
}
