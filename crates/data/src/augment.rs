//! The standard CIFAR augmentation — random crop of the image zero-padded by a side/8 margin
//! (4 pixels at 32×32), then a random horizontal flip (torchvision `RandomCrop(32, padding=4)`,
//! `RandomHorizontalFlip()`) — and per-channel normalisation. Every function takes the side of
//! the (square) images, a property of the data set.

use serde::{Deserialize, Serialize};

use crate::DataSet;

/// Side of a CIFAR image.
pub const CIFAR_SIDE: usize = 32;

/// Values of one `side`×`side` image: 3 channel planes.
#[must_use]
pub const fn image_len(side: usize) -> usize {
    3 * side * side
}

/// Zero padding before the random crop: side/8 (4 at CIFAR's 32, as torchvision's recipe),
/// at least 1.
#[must_use]
pub const fn crop_pad(side: usize) -> usize {
    if side >= 16 { side / 8 } else { 1 }
}

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
        let plane = set.side * set.side;
        let mut sum = [0f64; 3];
        let mut sq = [0f64; 3];
        for image in set.images.chunks_exact(image_len(set.side)) {
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

/// Normalise a `side`×`side` image without augmentation (evaluation). `out` holds
/// [`image_len`] values.
pub fn normalize_image(src: &[u8], side: usize, normalizer: &Normalizer, out: &mut [f32]) {
    let pad = crop_pad(side);
    augment_image(src, side, normalizer, pad, pad, false, out);
}

/// Crop at offset `(dx, dy)` in `0..=2·pad` of the image zero-padded by
/// [`crop_pad`]`(side)`, flip if asked, and normalise into `out` (channel-planar,
/// [`image_len`] values).
pub fn augment_image(
    src: &[u8],
    side: usize,
    normalizer: &Normalizer,
    dx: usize,
    dy: usize,
    flip: bool,
    out: &mut [f32],
) {
    let pad = crop_pad(side);
    debug_assert!(dx <= 2 * pad && dy <= 2 * pad);
    let plane = side * side;
    for ch in 0..3 {
        let table = &normalizer.tables[ch];
        let zero = table[0];
        let src_plane = &src[ch * plane..(ch + 1) * plane];
        for y in 0..side {
            let row = &mut out[ch * plane + y * side..ch * plane + (y + 1) * side];
            let sy = (y + dy).wrapping_sub(pad);
            if sy >= side {
                row.fill(zero);
                continue;
            }
            let src_row = &src_plane[sy * side..(sy + 1) * side];
            for (x, v) in row.iter_mut().enumerate() {
                let cx = if flip { side - 1 - x } else { x };
                let sx = (cx + dx).wrapping_sub(pad);
                *v = if sx < side {
                    table[usize::from(src_row[sx])]
                } else {
                    zero
                };
            }
        }
    }
}

/// Which random transforms a training image gets (`[data] augment`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AugmentSpec {
    /// Random crop of the image zero-padded by [`crop_pad`].
    pub crop: bool,
    /// Random horizontal flip.
    pub flip: bool,
    /// Largest rotation in degrees (an angle uniform in ±this per image); 0 = none.
    pub rotation_deg: f64,
}

impl Default for AugmentSpec {
    /// The standard CIFAR augmentation: crop and flip.
    fn default() -> Self {
        Self {
            crop: true,
            flip: true,
            rotation_deg: 0.0,
        }
    }
}

/// Rotate each channel plane of `image` (channel-planar, `side`×`side`) by
/// `degrees` counter-clockwise about the image centre, as torchvision's `rotate` with
/// bilinear interpolation: output pixel centres are mapped back into the input and sampled
/// bilinearly, a sample outside the image reading `fill[channel]` (the normalised value of
/// a black pixel: zero fill before normalisation). Normalisation is affine per channel, so
/// rotating normalised values equals normalising rotated pixels.
pub fn rotate_image(image: &[f32], side: usize, degrees: f64, fill: [f32; 3], out: &mut [f32]) {
    let plane = side * side;
    let (sin, cos) = degrees.to_radians().sin_cos();
    let centre = side as f64 / 2.0;
    for ch in 0..3 {
        let src = &image[ch * plane..(ch + 1) * plane];
        let at = |x: i64, y: i64| -> f64 {
            if (0..side as i64).contains(&x) && (0..side as i64).contains(&y) {
                f64::from(src[y as usize * side + x as usize])
            } else {
                f64::from(fill[ch])
            }
        };
        for y in 0..side {
            for x in 0..side {
                // Pixel centre relative to the image centre, y downwards.
                let (px, py) = (x as f64 + 0.5 - centre, y as f64 + 0.5 - centre);
                // The inverse rotation gives the source point (counter-clockwise on screen).
                let u = cos * px - sin * py + centre - 0.5;
                let v = sin * px + cos * py + centre - 0.5;
                let (x0, y0) = (u.floor(), v.floor());
                let (fx, fy) = (u - x0, v - y0);
                let (x0, y0) = (x0 as i64, y0 as i64);
                let value = (1.0 - fy) * ((1.0 - fx) * at(x0, y0) + fx * at(x0 + 1, y0))
                    + fy * ((1.0 - fx) * at(x0, y0 + 1) + fx * at(x0 + 1, y0 + 1));
                out[ch * plane + y * side + x] = value as f32;
            }
        }
    }
}

impl Normalizer {
    /// The normalised value of byte 0 per channel (what zero fill becomes).
    #[must_use]
    pub fn zero(&self) -> [f32; 3] {
        [self.tables[0][0], self.tables[1][0], self.tables[2][0]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGE_SIDE: usize = CIFAR_SIDE;
    const IMAGE_BYTES: usize = image_len(CIFAR_SIDE);

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
        normalize_image(&img, IMAGE_SIDE, &UNIT.normalizer(), &mut out);
        for (o, &p) in out.iter().zip(&img) {
            assert!((o - f32::from(p)).abs() < 1e-3);
        }
    }

    #[test]
    fn crop_shifts_and_pads_with_zero() {
        let img = known_image();
        let mut out = vec![0.0; IMAGE_BYTES];
        // dx = 0, dy = 0: output (y, x) shows source (y − 4, x − 4); the first 4 rows/cols are padding.
        augment_image(&img, IMAGE_SIDE, &UNIT.normalizer(), 0, 0, false, &mut out);
        assert_eq!(at(&out, 0, 0, 10), 0.0);
        assert_eq!(at(&out, 1, 10, 2), 0.0);
        assert!((at(&out, 2, 10, 12) - f32::from(img[2 * 1024 + 6 * 32 + 8])).abs() < 1e-3);
        // dx = 8: output column x shows source column x + 4; the last 4 columns are padding.
        augment_image(&img, IMAGE_SIDE, &UNIT.normalizer(), 8, 4, false, &mut out);
        assert!((at(&out, 0, 5, 3) - f32::from(img[5 * 32 + 7])).abs() < 1e-3);
        assert_eq!(at(&out, 0, 5, 28), 0.0);
    }

    #[test]
    fn the_crop_margin_scales_with_the_side() {
        assert_eq!(
            (crop_pad(32), crop_pad(64), crop_pad(96), crop_pad(8)),
            (4, 8, 12, 1)
        );
        // A 64×64 image whose pixel is its column: dx = dy = 0 shows source (y − 8, x − 8).
        let side = 64;
        let img: Vec<u8> = (0..image_len(side)).map(|i| (i % side) as u8).collect();
        let mut out = vec![0.0; image_len(side)];
        augment_image(&img, side, &UNIT.normalizer(), 0, 0, false, &mut out);
        let at64 = |ch: usize, y: usize, x: usize| out[ch * side * side + y * side + x];
        assert_eq!(at64(0, 7, 30), 0.0, "padding rows");
        assert_eq!(at64(1, 30, 7), 0.0, "padding columns");
        assert!((at64(2, 30, 40) - 32.0).abs() < 1e-3);
        normalize_image(&img, side, &UNIT.normalizer(), &mut out);
        assert!(
            (out[5 * side + 63] - 63.0).abs() < 1e-3,
            "the centre crop is the image"
        );
    }

    #[test]
    fn flip_mirrors_the_crop() {
        let img = known_image();
        let (mut plain, mut flipped) = (vec![0.0; IMAGE_BYTES], vec![0.0; IMAGE_BYTES]);
        augment_image(
            &img,
            IMAGE_SIDE,
            &UNIT.normalizer(),
            2,
            6,
            false,
            &mut plain,
        );
        augment_image(
            &img,
            IMAGE_SIDE,
            &UNIT.normalizer(),
            2,
            6,
            true,
            &mut flipped,
        );
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
        normalize_image(&img, IMAGE_SIDE, &stats.normalizer(), &mut out);
        assert!((at(&out, 0, 3, 3) - 1.0).abs() < 1e-6);
        assert!((at(&out, 1, 3, 3) - 3.0).abs() < 1e-6);
        assert!((at(&out, 2, 3, 3) - 1.0).abs() < 1e-6);
        // Padding is black before normalisation, as in torchvision.
        augment_image(&img, IMAGE_SIDE, &stats.normalizer(), 0, 0, false, &mut out);
        assert!((at(&out, 0, 0, 0) + 1.0).abs() < 1e-6);
    }
    /// An independent float64 reference: the inverse affine map written as torchvision's
    /// `_get_inverse_affine_matrix` (rotation about the centre, no shear or scale), applied
    /// to the raw bytes with zero fill, then normalised.
    fn reference_rotation(image: &[u8], degrees: f64, stats: ChannelStats) -> Vec<f64> {
        let side = IMAGE_SIDE as f64;
        let a = degrees.to_radians();
        // Inverse of a counter-clockwise rotation in y-down pixel coordinates.
        let m = [a.cos(), -a.sin(), a.sin(), a.cos()];
        let mut out = Vec::with_capacity(IMAGE_BYTES);
        for ch in 0..3 {
            for y in 0..IMAGE_SIDE {
                for x in 0..IMAGE_SIDE {
                    let p = [x as f64 + 0.5 - side / 2.0, y as f64 + 0.5 - side / 2.0];
                    let sx = m[0] * p[0] + m[1] * p[1] + side / 2.0 - 0.5;
                    let sy = m[2] * p[0] + m[3] * p[1] + side / 2.0 - 0.5;
                    let pixel = |xx: f64, yy: f64| -> f64 {
                        if xx < 0.0 || yy < 0.0 || xx > side - 1.0 || yy > side - 1.0 {
                            return 0.0;
                        }
                        f64::from(image[ch * 1024 + yy as usize * IMAGE_SIDE + xx as usize])
                    };
                    let (x0, y0) = (sx.floor(), sy.floor());
                    let (wx, wy) = (sx - x0, sy - y0);
                    let v = pixel(x0, y0) * (1.0 - wx) * (1.0 - wy)
                        + pixel(x0 + 1.0, y0) * wx * (1.0 - wy)
                        + pixel(x0, y0 + 1.0) * (1.0 - wx) * wy
                        + pixel(x0 + 1.0, y0 + 1.0) * wx * wy;
                    out.push((v / 255.0 - f64::from(stats.mean[ch])) / f64::from(stats.std[ch]));
                }
            }
        }
        out
    }

    #[test]
    fn rotation_matches_a_float64_reference() {
        let image = known_image();
        let stats = ChannelStats {
            mean: [0.5, 0.4, 0.3],
            std: [0.25, 0.2, 0.3],
        };
        let normalizer = stats.normalizer();
        let mut plain = vec![0f32; IMAGE_BYTES];
        normalize_image(&image, IMAGE_SIDE, &normalizer, &mut plain);
        for degrees in [0.0, 15.0, -15.0, 7.3, -2.5, 90.0, 180.0] {
            let mut out = vec![0f32; IMAGE_BYTES];
            rotate_image(&plain, IMAGE_SIDE, degrees, normalizer.zero(), &mut out);
            let want = reference_rotation(&image, degrees, stats);
            let worst = out
                .iter()
                .zip(&want)
                .map(|(&a, &b)| (f64::from(a) - b).abs())
                .fold(0.0, f64::max);
            assert!(worst < 1e-4, "{degrees}°: off by {worst}");
        }
    }

    #[test]
    fn rotation_by_zero_is_the_identity_and_a_quarter_turn_is_a_permutation() {
        let image = known_image();
        let normalizer = UNIT.normalizer();
        let mut plain = vec![0f32; IMAGE_BYTES];
        normalize_image(&image, IMAGE_SIDE, &normalizer, &mut plain);
        let mut out = vec![0f32; IMAGE_BYTES];
        rotate_image(&plain, IMAGE_SIDE, 0.0, normalizer.zero(), &mut out);
        assert_eq!(out, plain);
        // Counter-clockwise: output (x, y) shows input (31 − y, x); the top-right corner
        // moves to the top-left.
        rotate_image(&plain, IMAGE_SIDE, 90.0, normalizer.zero(), &mut out);
        for ch in 0..3 {
            for y in 0..IMAGE_SIDE {
                for x in 0..IMAGE_SIDE {
                    let got = out[ch * 1024 + y * IMAGE_SIDE + x];
                    let want = plain[ch * 1024 + x * IMAGE_SIDE + (IMAGE_SIDE - 1 - y)];
                    assert!((got - want).abs() < 1e-3, "({x}, {y}): {got} vs {want}");
                }
            }
        }
    }
}
