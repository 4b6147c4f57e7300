//! Deterministic random numbers that do not depend on a backend, a thread count or a
//! library version.
//!
//! Every random decision in lossbench (initial weights, data order, augmentation, the
//! synthetic data set) draws from a [`Stream`] keyed by `(seed, purpose, index)`. Keys are
//! mixed with SplitMix64 (Steele et al., 2014), so streams for neighbouring keys are
//! independent and any one of them can be recreated without replaying the others: image 917
//! of epoch 12 gets the same crop whichever rayon thread handles it.

/// Names a use of randomness so two uses with the same seed never share a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Purpose {
    /// Initial weights of the backbone.
    BackboneInit = 1,
    /// Initial weights of a loss head (class centres).
    HeadInit = 2,
    /// Order of training images in an epoch.
    Shuffle = 3,
    /// Random crop and flip of one training image.
    Augment = 4,
    /// The synthetic data set.
    Synthetic = 5,
    /// Which training images are held out for validation (never keyed by the run seed).
    ValidationSplit = 6,
    /// Initial weights of the embedding neck.
    NeckInit = 7,
    /// Random rotation of one training image (its own stream: crop and flip draws are
    /// unchanged by turning rotation on).
    Rotation = 8,
}

/// One step of SplitMix64: a bijective, well-mixed 64-bit hash.
#[must_use]
pub const fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A SplitMix64 generator whose start is derived from a key.
#[derive(Debug, Clone)]
pub struct Stream {
    state: u64,
}

impl Stream {
    /// The stream for `(seed, purpose, index)`; `index` distinguishes e.g. layers or images.
    #[must_use]
    pub fn new(seed: u64, purpose: Purpose, index: u64) -> Self {
        let key = splitmix64(splitmix64(seed ^ splitmix64(purpose as u64)) ^ index);
        Self { state: key }
    }

    /// A stream with a further sub-index, e.g. `(seed, Augment, epoch).sub(image)`.
    #[must_use]
    pub fn sub(&self, index: u64) -> Self {
        Self {
            state: splitmix64(self.state ^ splitmix64(index.wrapping_add(0x5851_F42D))),
        }
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `0..bound` (Lemire's multiply-shift; the bias is below 2^-32 for
    /// the bounds used here, far under anything measurable).
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "below(0) has no valid result");
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// A standard normal sample (Box–Muller; one of the pair is discarded so a sample is a
    /// pure function of the stream position).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // (0, 1]: ln stays finite
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// A uniformly random permutation of `0..n` (Fisher–Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<u32> {
        let mut order: Vec<u32> = (0..n as u32).collect();
        for i in (1..n).rev() {
            let j = self.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        order
    }

    /// `n` samples of N(0, std²) as f32.
    pub fn normal_vec(&mut self, n: usize, std: f64) -> Vec<f32> {
        (0..n).map(|_| (self.normal() * std) as f32).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_stream_and_different_keys_differ() {
        let a: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(Stream::new(7, Purpose::Shuffle, 3), |s, _| {
                Some(s.next_u64())
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(Stream::new(7, Purpose::Shuffle, 3), |s, _| {
                Some(s.next_u64())
            })
            .collect();
        assert_eq!(a, b);
        let mut c = Stream::new(7, Purpose::Augment, 3);
        let mut d = Stream::new(7, Purpose::Shuffle, 4);
        assert_ne!(a[0], c.next_u64());
        assert_ne!(a[0], d.next_u64());
    }

    #[test]
    fn splitmix_matches_reference_values() {
        // Reference: the first outputs of Vigna's splitmix64.c seeded with 0.
        let mut s = Stream { state: 0 };
        assert_eq!(s.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(s.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn permutation_is_a_permutation() {
        let p = Stream::new(1, Purpose::Shuffle, 0).permutation(1000);
        let mut sorted = p.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<u32>>());
        assert_ne!(p, sorted, "a shuffle of 1000 items left them in order");
    }

    #[test]
    fn normal_has_unit_moments() {
        let mut s = Stream::new(3, Purpose::BackboneInit, 0);
        let xs: Vec<f64> = (0..200_000).map(|_| s.normal()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "variance {var}");
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut s = Stream::new(9, Purpose::Augment, 1);
        let mut seen = [0u32; 9];
        for _ in 0..9000 {
            seen[s.below(9) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800), "{seen:?}");
    }
}
