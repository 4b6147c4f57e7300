//! The standard CIFAR augmentation — random 32×32 crop of the image zero-padded by 4 pixels,
//! then a random horizontal flip (torchvision `RandomCrop(32, padding=4)`,
//! `RandomHorizontalFlip()`) — and per-channel normalisation.

use serde::{Deserialize, Serialize};

use crate::DataSet;

/// Side of a CIFAR image.
pub const IMAGE_SIDE: usize = 32;
/// Bytes of one image: 3 channel planes of 32×32.
pub const IMAGE_BYTES: usize = 3 * IMAGE_SIDE * IMAGE_SIDE;
/// Zero padding before the random crop.
pub const PAD: usize = 4;

/// Per-channel mean and standard deviation of pixel values scaled to `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChannelStats {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl ChannelStats {
    /// Statistics of a data set (computed in f64, so the result does not depend on order).
    #[must_use]
    pub fn of(set: &DataSet) -> Self {
        let plane = IMAGE_SIDE * IMAGE_SIDE;
        let mut sum = [0f64; 3];
        let mut sq = [0f64; 3];
        for image in set.images.chunks_exact(IMAGE_BYTES) {
            for ch in 0..3 {
                for &p in &image[ch * plane..(ch + 1) * plane] {
                    let v = f64::from(p) / 255.0;
                    sum[ch] += v;
                    sq[ch] += v * v;
                }
            }
        }
        let n = (set.len() * plane).max(1) as f64;
        let mean = sum.map(|s| s / n);
        let std = [0, 1, 2].map(|c| (sq[c] / n - mean[c] * mean[c]).max(1e-12).sqrt());
        Self {
            mean: mean.map(|m| m as f32),
            std: std.map(|s| s as f32),
        }
    }

    /// The lookup tables that normalise pixels with these statistics.
    #[must_use]
    pub fn normalizer(&self) -> Normalizer {
        let mut tables = [[0f32; 256]; 3];
        for (ch, table) in tables.iter_mut().enumerate() {
            for (b, v) in table.iter_mut().enumerate() {
                *v = (b as f32 / 255.0 - self.mean[ch]) / self.std[ch];
            }
        }
        Normalizer { tables }
    }
}

/// Normalised value of every byte, per channel: built once per data set, shared by every
/// image of every batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalizer {
    tables: [[f32; 256]; 3],
}

/// Normalise an image without augmentation (evaluation). `out` holds [`IMAGE_BYTES`] values.
pub fn normalize_image(src: &[u8], normalizer: &Normalizer, out: &mut [f32]) {
    augment_image(src, normalizer, PAD, PAD, false, out);
}

/// Crop at offset `(dx, dy)` in `0..=2·PAD` of the zero-padded image, flip if asked, and
/// normalise into `out` (channel-planar, [`IMAGE_BYTES`] values).
pub fn augment_image(
    src: &[u8],
    normalizer: &Normalizer,
    dx: usize,
    dy: usize,
    flip: bool,
    out: &mut [f32],
) {
    debug_assert!(dx <= 2 * PAD && dy <= 2 * PAD);
    let plane = IMAGE_SIDE * IMAGE_SIDE;
    for ch in 0..3 {
        let table = &normalizer.tables[ch];
        let zero = table[0];
        let src_plane = &src[ch * plane..(ch + 1) * plane];
        for y in 0..IMAGE_SIDE {
            let row = &mut out[ch * plane + y * IMAGE_SIDE..ch * plane + (y + 1) * IMAGE_SIDE];
            let sy = (y + dy).wrapping_sub(PAD);
            if sy >= IMAGE_SIDE {
                row.fill(zero);
                continue;
            }
            let src_row = &src_plane[sy * IMAGE_SIDE..(sy + 1) * IMAGE_SIDE];
            for (x, v) in row.iter_mut().enumerate() {
                let cx = if flip { IMAGE_SIDE - 1 - x } else { x };
                let sx = (cx + dx).wrapping_sub(PAD);
                *v = if sx < IMAGE_SIDE {
                    table[usize::from(src_row[sx])]
                } else {
                    zero
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIT: ChannelStats = ChannelStats {
        mean: [0.0; 3],
        std: [1.0 / 255.0; 3],
    };

    /// An image whose pixel value encodes its position: channel·100 + row·3 + col (mod 256).
    fn known_image() -> Vec<u8> {
        (0..IMAGE_BYTES)
            .map(|i| ((i / 1024) * 100 + (i % 1024 / 32) * 3 + i % 32) as u8)
            .collect()
    }

    fn at(out: &[f32], ch: usize, y: usize, x: usize) -> f32 {
        out[ch * 1024 + y * 32 + x]
    }

    #[test]
    fn centre_crop_without_flip_is_identity() {
        let img = known_image();
        let mut out = vec![0.0; IMAGE_BYTES];
        normalize_image(&img, &UNIT.normalizer(), &mut out);
        for (o, &p) in out.iter().zip(&img) {
            assert!((o - f32::from(p)).abs() < 1e-3);
        }
    }

    #[test]
    fn crop_shifts_and_pads_with_zero() {
        let img = known_image();
        let mut out = vec![0.0; IMAGE_BYTES];
        // dx = 0, dy = 0: output (y, x) shows source (y − 4, x − 4); the first 4 rows/cols are padding.
        augment_image(&img, &UNIT.normalizer(), 0, 0, false, &mut out);
        assert_eq!(at(&out, 0, 0, 10), 0.0);
        assert_eq!(at(&out, 1, 10, 2), 0.0);
        assert!((at(&out, 2, 10, 12) - f32::from(img[2 * 1024 + 6 * 32 + 8])).abs() < 1e-3);
        // dx = 8: output column x shows source column x + 4; the last 4 columns are padding.
        augment_image(&img, &UNIT.normalizer(), 8, 4, false, &mut out);
        assert!((at(&out, 0, 5, 3) - f32::from(img[5 * 32 + 7])).abs() < 1e-3);
        assert_eq!(at(&out, 0, 5, 28), 0.0);
    }

    #[test]
    fn flip_mirrors_the_crop() {
        let img = known_image();
        let (mut plain, mut flipped) = (vec![0.0; IMAGE_BYTES], vec![0.0; IMAGE_BYTES]);
        augment_image(&img, &UNIT.normalizer(), 2, 6, false, &mut plain);
        augment_image(&img, &UNIT.normalizer(), 2, 6, true, &mut flipped);
        for ch in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    assert_eq!(at(&flipped, ch, y, x), at(&plain, ch, y, 31 - x));
                }
            }
        }
    }

    #[test]
    fn normalisation_uses_channel_stats() {
        let stats = ChannelStats {
            mean: [0.5, 0.25, 0.0],
            std: [0.5, 0.25, 1.0],
        };
        let img = vec![255u8; IMAGE_BYTES];
        let mut out = vec![0.0; IMAGE_BYTES];
        normalize_image(&img, &stats.normalizer(), &mut out);
        assert!((at(&out, 0, 3, 3) - 1.0).abs() < 1e-6);
        assert!((at(&out, 1, 3, 3) - 3.0).abs() < 1e-6);
        assert!((at(&out, 2, 3, 3) - 1.0).abs() < 1e-6);
        // Padding is black before normalisation, as in torchvision.
        augment_image(&img, &stats.normalizer(), 0, 0, false, &mut out);
        assert!((at(&out, 0, 0, 0) + 1.0).abs() < 1e-6);
    }
}
