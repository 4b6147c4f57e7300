//! A synthetic data set in the CIFAR binary format, for tests, demos and CI (the real
//! CIFAR cannot be downloaded everywhere).
//!
//! Each class is a random smooth colour texture: a sum of low-frequency gratings per channel.
//! An image of class `c` is its texture at a random translation and contrast, blended with the
//! texture of a random other class and Gaussian pixel noise. The distractor and the noise keep
//! the task from being trivial; the texture keeps it learnable by a small ResNet.

use std::path::Path;

use lossbench_rng::{Purpose, Stream};
use serde::{Deserialize, Serialize};

use crate::{CIFAR_SIDE, DataError, Kind, Split, crop_pad, image_len};

const IMAGE_BYTES: usize = image_len(CIFAR_SIDE);

/// Manifest file that marks a folder as synthetic and records how it was made.
pub const MANIFEST: &str = "lossbench-synthetic.json";

/// How a synthetic set was generated; `load` checks the files against it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthManifest {
    pub kind: Kind,
    pub classes: usize,
    pub train_per_class: usize,
    pub test_per_class: usize,
    pub seed: u64,
    /// Generator version; bumped whenever the images for a seed change.
    pub format: u32,
}

impl SynthManifest {
    /// Images per class in `split`.
    #[must_use]
    pub fn per_class(&self, split: Split) -> usize {
        match split {
            Split::Train => self.train_per_class,
            Split::Test => self.test_per_class,
        }
    }

    /// The manifest in `dir`, if there is one.
    pub fn read(dir: &Path) -> Result<Option<Self>, DataError> {
        let path = dir.join(MANIFEST);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| DataError::Invalid(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(DataError::Io { path, cause: e }),
        }
    }

    pub(crate) fn write(&self, dir: &Path) -> Result<(), DataError> {
        let path = dir.join(MANIFEST);
        let json =
            serde_json::to_vec_pretty(self).map_err(|e| DataError::Invalid(e.to_string()))?;
        std::fs::write(&path, json).map_err(DataError::io(&path))
    }
}

/// Settings of `lossbench data synth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynthConfig {
    pub classes: usize,
    pub train_per_class: usize,
    pub test_per_class: usize,
    pub seed: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            classes: 100,
            train_per_class: 500,
            test_per_class: 100,
            seed: 0,
        }
    }
}

const GRATINGS: usize = 3;
const NOISE_STD: f64 = 0.45;
const FORMAT: u32 = 1;

/// A class texture: per channel, a sum of gratings `amp · sin(2π(fx·x + fy·y)/32 + phase)`
/// plus a colour offset.
#[derive(Debug, Clone)]
struct Texture {
    gratings: [[(f64, f64, f64, f64); GRATINGS]; 3],
    offset: [f64; 3],
}

impl Texture {
    fn random(stream: &mut Stream) -> Self {
        let mut gratings = [[(0.0, 0.0, 0.0, 0.0); GRATINGS]; 3];
        let mut offset = [0.0; 3];
        for ch in 0..3 {
            for g in &mut gratings[ch] {
                let fx = stream.below(5) as f64 - 2.0;
                let fy = stream.below(4) as f64 + 1.0;
                *g = (
                    fx,
                    fy,
                    2.0 * std::f64::consts::PI * stream.next_f64(),
                    0.4 + 0.6 * stream.next_f64(),
                );
            }
            offset[ch] = 0.6 * stream.next_f64() - 0.3;
        }
        Self { gratings, offset }
    }

    /// The texture at pixel `(x, y)` of an image whose shorter side is `side` (one period
    /// of the slowest grating per `side` pixels, whatever the size).
    fn value(&self, ch: usize, x: f64, y: f64, side: f64) -> f64 {
        self.offset[ch]
            + self.gratings[ch]
                .iter()
                .map(|&(fx, fy, phase, amp)| {
                    amp * (2.0 * std::f64::consts::PI * (fx * x + fy * y) / side + phase).sin()
                })
                .sum::<f64>()
                / GRATINGS as f64
    }
}

/// An image of `class`, `width`×`height` (the texture scaled to the shorter side), appended
/// to `out` as channel planes. At 32×32 these are the CIFAR-format set's images.
fn render(
    textures: &[Texture],
    class: usize,
    (width, height): (usize, usize),
    stream: &mut Stream,
    out: &mut Vec<u8>,
) {
    let side = width.min(height);
    let shift = crop_pad(side) as u64;
    let other =
        (class + 1 + stream.below(textures.len().max(2) as u64 - 1) as usize) % textures.len();
    let dx = stream.below(2 * shift + 1) as f64 - shift as f64;
    let dy = stream.below(2 * shift + 1) as f64 - shift as f64;
    let contrast = 0.6 + 0.6 * stream.next_f64();
    let blend = 0.7 * stream.next_f64();
    let scale = side as f64;
    for ch in 0..3 {
        for y in 0..height {
            for x in 0..width {
                let (xf, yf) = (x as f64 + dx, y as f64 + dy);
                let v = contrast * textures[class].value(ch, xf, yf, scale)
                    + blend * textures[other].value(ch, x as f64, y as f64, scale)
                    + NOISE_STD * stream.normal();
                out.push((128.0 + 70.0 * v).round().clamp(0.0, 255.0) as u8);
            }
        }
    }
}

/// Write a synthetic set in CIFAR-100 binary format (`train.bin`, `test.bin`, coarse label
/// `class % 20`) plus its manifest to `dir`. Deterministic for a seed. The manifest is written
/// last, so an interrupted run leaves a folder that `load` rejects.
pub fn write(dir: &Path, config: SynthConfig) -> Result<SynthManifest, DataError> {
    check(config)?;
    let textures = start_writing(dir, config)?;
    for (split, file, per_class, salt) in [
        (Split::Train, "train.bin", config.train_per_class, 1),
        (Split::Test, "test.bin", config.test_per_class, 2),
    ] {
        let _ = split;
        let n = per_class * config.classes;
        let mut bytes = Vec::with_capacity(n * (IMAGE_BYTES + 2));
        let mut pixels = Vec::with_capacity(IMAGE_BYTES);
        for i in 0..n {
            // Interleave classes so any prefix of the file is balanced.
            let class = i % config.classes;
            let mut stream = Stream::new(config.seed, Purpose::Synthetic, salt).sub(i as u64);
            pixels.clear();
            render(
                &textures,
                class,
                (CIFAR_SIDE, CIFAR_SIDE),
                &mut stream,
                &mut pixels,
            );
            bytes.push((class % 20) as u8);
            bytes.push(class as u8);
            bytes.extend_from_slice(&pixels);
        }
        let path = dir.join(file);
        let tmp = dir.join(format!("{file}.tmp"));
        std::fs::write(&tmp, &bytes).map_err(DataError::io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(DataError::io(&path))?;
    }
    let manifest = SynthManifest {
        kind: Kind::Cifar100,
        classes: config.classes,
        train_per_class: config.train_per_class,
        test_per_class: config.test_per_class,
        seed: config.seed,
        format: FORMAT,
    };
    manifest.write(dir)?;
    Ok(manifest)
}

/// Files of `lossbench data synth --format folder`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    Png,
    Jpeg,
    /// PNG and JPEG in turn.
    Mixed,
}

/// What a synthetic image folder is, written to its [`MANIFEST`] (which marks the folder's
/// runs as synthetic in the report).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FolderManifest {
    pub layout: String,
    pub classes: usize,
    pub train_per_class: usize,
    pub test_per_class: usize,
    pub seed: u64,
    /// Shorter side of the images (their sizes vary around it).
    pub side: usize,
    pub file_format: FileFormat,
    pub format: u32,
}

/// Size of image `i` at shorter side `side`: square, wide, tall, larger — a folder of mixed
/// sizes, as photographs are.
fn folder_image_size(i: usize, side: usize) -> (usize, usize) {
    match i % 4 {
        0 => (side, side),
        1 => (side * 3 / 2, side),
        2 => (side, side * 5 / 4),
        _ => (side * 2, side * 3 / 2),
    }
}

/// Image `i` as a file: RGB, grey, RGBA or grey+alpha in turn (JPEG has no alpha: RGB, grey).
fn folder_image(
    planes: &[u8],
    (w, h): (usize, usize),
    i: usize,
    jpeg: bool,
) -> image::DynamicImage {
    let plane = w * h;
    let rgb = image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let at = y as usize * w + x as usize;
        image::Rgb([planes[at], planes[plane + at], planes[2 * plane + at]])
    });
    let rgb = image::DynamicImage::ImageRgb8(rgb);
    match (i % 4, jpeg) {
        (0, _) => rgb,
        (1, _) | (3, true) => image::DynamicImage::ImageLuma8(rgb.to_luma8()),
        (2, false) => image::DynamicImage::ImageRgba8(rgb.to_rgba8()),
        (2, true) => rgb,
        _ => image::DynamicImage::ImageLumaA8(rgb.to_luma_alpha8()),
    }
}

/// Write the synthetic set as an image folder: `dir/train/class-KK/NNNNN.png` (or `.jpg`) and
/// `dir/test/…`, images of mixed sizes (shorter side `side`) and colour modes. Deterministic
/// for a seed; the manifest is written last.
pub fn write_folder(
    dir: &Path,
    config: SynthConfig,
    side: usize,
    file_format: FileFormat,
) -> Result<FolderManifest, DataError> {
    use rayon::prelude::*;
    check(config)?;
    if !(8..=512).contains(&side) {
        return Err(DataError::Invalid(format!(
            "--side {side} is invalid: must be in [8, 512]"
        )));
    }
    let textures = start_writing(dir, config)?;
    let width = (config.classes - 1).to_string().len().max(2);
    for (split, per_class, salt) in [
        ("train", config.train_per_class, 1),
        ("test", config.test_per_class, 2),
    ] {
        let _ = std::fs::remove_dir_all(dir.join(split));
        (0..per_class * config.classes)
            .into_par_iter()
            .try_for_each(|i| -> Result<(), DataError> {
                let class = i % config.classes;
                let mut stream = Stream::new(config.seed, Purpose::Synthetic, salt).sub(i as u64);
                let size = folder_image_size(i, side);
                let mut pixels = Vec::with_capacity(3 * size.0 * size.1);
                render(&textures, class, size, &mut stream, &mut pixels);
                let jpeg = match file_format {
                    FileFormat::Png => false,
                    FileFormat::Jpeg => true,
                    FileFormat::Mixed => i % 2 == 1,
                };
                let folder = dir.join(split).join(format!("class-{class:0width$}"));
                std::fs::create_dir_all(&folder).map_err(DataError::io(&folder))?;
                let path = folder.join(format!("{i:05}.{}", if jpeg { "jpg" } else { "png" }));
                folder_image(&pixels, size, i, jpeg)
                    .save(&path)
                    .map_err(|e| DataError::Invalid(format!("{}: {e}", path.display())))
            })?;
    }
    let manifest = FolderManifest {
        layout: "folder".into(),
        classes: config.classes,
        train_per_class: config.train_per_class,
        test_per_class: config.test_per_class,
        seed: config.seed,
        side,
        file_format,
        format: FORMAT,
    };
    let path = dir.join(MANIFEST);
    let json =
        serde_json::to_vec_pretty(&manifest).map_err(|e| DataError::Invalid(e.to_string()))?;
    std::fs::write(&path, json).map_err(DataError::io(&path))?;
    Ok(manifest)
}

/// Create `dir`, remove its manifest (a half-written set must not pass for a whole one) and
/// draw the class textures of `config.seed`: what both formats start with.
fn start_writing(dir: &Path, config: SynthConfig) -> Result<Vec<Texture>, DataError> {
    std::fs::create_dir_all(dir).map_err(DataError::io(dir))?;
    let _ = std::fs::remove_file(dir.join(MANIFEST));
    let mut tex_stream = Stream::new(config.seed, Purpose::Synthetic, 0);
    Ok((0..config.classes)
        .map(|_| Texture::random(&mut tex_stream))
        .collect())
}

fn check(config: SynthConfig) -> Result<(), DataError> {
    if !(2..=100).contains(&config.classes) {
        return Err(DataError::Invalid(format!(
            "--classes {} is invalid: must be in [2, 100]",
            config.classes
        )));
    }
    if config.train_per_class == 0 || config.test_per_class == 0 {
        return Err(DataError::Invalid(
            "--train-per-class and --test-per-class must be at least 1".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{load, verify};

    fn small() -> SynthConfig {
        SynthConfig {
            classes: 5,
            train_per_class: 4,
            test_per_class: 2,
            seed: 7,
        }
    }

    #[test]
    fn synth_then_verify_round_trip() {
        let dir = tempfile::tempdir().expect("tmp");
        write(dir.path(), small()).expect("synth");
        let summary = verify(dir.path(), Kind::Cifar100).expect("verify");
        assert!(summary.synthetic);
        assert_eq!(summary.splits[0].1, 20);
        assert_eq!(summary.splits[0].2, vec![4; 5]);
        assert_eq!(summary.splits[1].2, vec![2; 5]);
        assert!(summary.to_string().contains("balanced"));
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let (a, b, c) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        write(a.path(), small()).expect("synth");
        write(b.path(), small()).expect("synth");
        write(c.path(), SynthConfig { seed: 8, ..small() }).expect("synth");
        let read = |d: &tempfile::TempDir| std::fs::read(d.path().join("train.bin")).expect("read");
        assert_eq!(read(&a), read(&b));
        assert_ne!(read(&a), read(&c));
    }

    #[test]
    fn classes_differ_more_between_than_within() {
        // Learnable: mean images of two classes are further apart than two halves of one class.
        let dir = tempfile::tempdir().expect("tmp");
        write(
            dir.path(),
            SynthConfig {
                classes: 3,
                train_per_class: 240,
                test_per_class: 1,
                seed: 1,
            },
        )
        .expect("synth");
        let set = load(dir.path(), Kind::Cifar100, Split::Train).expect("load");
        let mean = |class: u16, parity: usize| -> Vec<f64> {
            let idx: Vec<usize> = (0..set.len())
                .filter(|&i| set.labels[i] == class && (i / 3) % 2 == parity)
                .collect();
            (0..IMAGE_BYTES)
                .map(|p| {
                    idx.iter().map(|&i| f64::from(set.image(i)[p])).sum::<f64>() / idx.len() as f64
                })
                .collect()
        };
        let dist = |a: &[f64], b: &[f64]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let within = dist(&mean(0, 0), &mean(0, 1));
        let between = dist(&mean(0, 0), &mean(1, 0));
        assert!(between > 2.0 * within, "between {between} within {within}");
    }

    #[test]
    fn invalid_settings_are_errors() {
        let dir = tempfile::tempdir().expect("tmp");
        let err = write(
            dir.path(),
            SynthConfig {
                classes: 101,
                ..small()
            },
        )
        .expect_err("101 classes");
        assert!(err.to_string().contains("--classes 101"));
    }
}
