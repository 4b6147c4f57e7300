//! Deterministic batches: the order of an epoch and the augmentation of every image are pure
//! functions of `(seed, epoch, index)`, so any batch can be rebuilt on its own (which is what
//! makes resuming in the middle of an epoch exact) and rayon's scheduling cannot change it.

use lossbench_rng::{Purpose, Stream};
use rayon::prelude::*;

use crate::{
    AugmentSpec, ChannelStats, DataSet, Normalizer, augment_image, crop_pad, image_len,
    normalize_image, rotate_image,
};

/// A batch ready for the device.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `[len, 3, side, side]`, normalised.
    pub images: Vec<f32>,
    /// Side of the images.
    pub side: usize,
    pub labels: Vec<i64>,
}

impl Batch {
    /// Number of images.
    #[must_use]
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The order of the training images in `epoch`.
#[must_use]
pub fn epoch_order(seed: u64, epoch: u64, n: usize) -> Vec<u32> {
    Stream::new(seed, Purpose::Shuffle, epoch).permutation(n)
}

/// Batches of one pass over a data set.
#[derive(Debug)]
pub struct Batcher<'a> {
    set: &'a DataSet,
    normalizer: Normalizer,
    batch_size: usize,
    /// `Some((seed, epoch))` for training: shuffled and augmented.
    augment: Option<(u64, u64)>,
    /// Which transforms a training image gets.
    spec: AugmentSpec,
    order: Vec<u32>,
}

impl<'a> Batcher<'a> {
    /// Shuffled, augmented batches of `epoch`. The last batch may be smaller.
    #[must_use]
    pub fn train(
        set: &'a DataSet,
        stats: ChannelStats,
        batch_size: usize,
        seed: u64,
        epoch: u64,
    ) -> Self {
        let order = epoch_order(seed, epoch, set.len());
        Self {
            set,
            normalizer: stats.normalizer(),
            batch_size: batch_size.max(1),
            augment: Some((seed, epoch)),
            spec: AugmentSpec::default(),
            order,
        }
    }

    /// The same batches with other transforms (`[data] augment`).
    #[must_use]
    pub fn with_augment(self, spec: AugmentSpec) -> Self {
        Self { spec, ..self }
    }

    /// Batches in file order, only normalised (evaluation).
    #[must_use]
    pub fn eval(set: &'a DataSet, stats: ChannelStats, batch_size: usize) -> Self {
        Self {
            set,
            normalizer: stats.normalizer(),
            batch_size: batch_size.max(1),
            augment: None,
            spec: AugmentSpec::default(),
            order: (0..set.len() as u32).collect(),
        }
    }

    /// Number of batches.
    #[must_use]
    pub fn len(&self) -> usize {
        self.order.len().div_ceil(self.batch_size)
    }

    /// Whether there are no batches.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Batch `index`, built in parallel; the same bytes whatever the thread count.
    #[must_use]
    pub fn batch(&self, index: usize) -> Batch {
        let start = index * self.batch_size;
        let ids = &self.order
            [start.min(self.order.len())..(start + self.batch_size).min(self.order.len())];
        let side = self.set.side;
        let (len, pad) = (image_len(side), crop_pad(side));
        let mut images = vec![0f32; ids.len() * len];
        images
            .par_chunks_mut(len)
            .zip(ids.par_iter())
            .for_each(|(out, &id)| {
                let src = self.set.image(id as usize);
                match self.augment {
                    Some((seed, epoch)) => {
                        // Always the same three draws, so turning a transform off leaves the
                        // others' values unchanged.
                        let mut s = Stream::new(seed, Purpose::Augment, epoch).sub(u64::from(id));
                        let dx = s.below(2 * pad as u64 + 1) as usize;
                        let dy = s.below(2 * pad as u64 + 1) as usize;
                        let flip = s.below(2) == 1;
                        let (dx, dy) = if self.spec.crop { (dx, dy) } else { (pad, pad) };
                        let flip = flip && self.spec.flip;
                        augment_image(src, side, &self.normalizer, dx, dy, flip, out);
                        if self.spec.rotation_deg > 0.0 {
                            let u = Stream::new(seed, Purpose::Rotation, epoch)
                                .sub(u64::from(id))
                                .next_f64();
                            let degrees = (2.0 * u - 1.0) * self.spec.rotation_deg;
                            let cropped = out.to_vec();
                            rotate_image(&cropped, side, degrees, self.normalizer.zero(), out);
                        }
                    }
                    None => normalize_image(src, side, &self.normalizer, out),
                }
            });
        Batch {
            images,
            side,
            labels: ids
                .iter()
                .map(|&i| i64::from(self.set.labels[i as usize]))
                .collect(),
        }
    }

    /// All batches in order.
    pub fn iter(&self) -> impl Iterator<Item = Batch> + '_ {
        (0..self.len()).map(|i| self.batch(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{SynthConfig, write};
    use crate::{Kind, Split, load};

    fn set() -> (tempfile::TempDir, DataSet) {
        let dir = tempfile::tempdir().expect("tmp");
        write(
            dir.path(),
            SynthConfig {
                classes: 4,
                train_per_class: 10,
                test_per_class: 2,
                seed: 3,
            },
        )
        .expect("synth");
        let set = load(dir.path(), Kind::Cifar100, Split::Train).expect("load");
        (dir, set)
    }

    #[test]
    fn same_seed_and_epoch_same_batches() {
        let (_dir, set) = set();
        let stats = ChannelStats::of(&set);
        let a: Vec<Batch> = Batcher::train(&set, stats, 16, 5, 2).iter().collect();
        let b: Vec<Batch> = Batcher::train(&set, stats, 16, 5, 2).iter().collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), 3);
        assert_eq!(a[2].len(), 8);
        let c: Vec<Batch> = Batcher::train(&set, stats, 16, 5, 3).iter().collect();
        assert_ne!(a, c, "another epoch must reshuffle");
    }

    #[test]
    fn thread_count_does_not_change_batches() {
        let (_dir, set) = set();
        let stats = ChannelStats::of(&set);
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("pool");
        let many = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .expect("pool");
        let a = one.install(|| Batcher::train(&set, stats, 40, 1, 0).batch(0));
        let b = many.install(|| Batcher::train(&set, stats, 40, 1, 0).batch(0));
        assert_eq!(a, b);
    }

    #[test]
    fn an_epoch_visits_every_image_once() {
        let (_dir, set) = set();
        let mut labels: Vec<i64> = Batcher::train(&set, ChannelStats::of(&set), 7, 9, 0)
            .iter()
            .flat_map(|b| b.labels)
            .collect();
        labels.sort_unstable();
        let mut want: Vec<i64> = set.labels.iter().map(|&l| i64::from(l)).collect();
        want.sort_unstable();
        assert_eq!(labels, want);
    }

    #[test]
    fn eval_batches_are_in_file_order_without_augmentation() {
        let (_dir, set) = set();
        let stats = ChannelStats::of(&set);
        let b = Batcher::eval(&set, stats, 5).batch(1);
        let len = image_len(set.side);
        let mut want = vec![0f32; len];
        normalize_image(set.image(5), set.side, &stats.normalizer(), &mut want);
        assert_eq!(&b.images[..len], &want[..]);
        assert_eq!(b.labels[0], i64::from(set.labels[5]));
    }
}
