//! The validation split: training images held out for model selection, the same for every
//! loss and seed (keyed by the class alone, never by the run seed).

use lossbench_rng::{Purpose, Stream};

use crate::{DataError, DataSet, image_len};

/// Images per class to hold out: `n · count / total` rounded down, the remainder to the
/// classes with the largest fractional parts (lower class first on ties), so the split is
/// stratified and holds exactly `n` images.
fn quotas(counts: &[usize], n: usize) -> Vec<usize> {
    let total: usize = counts.iter().sum();
    let mut quota: Vec<usize> = counts.iter().map(|&c| n * c / total).collect();
    let mut by_fraction: Vec<usize> = (0..counts.len()).collect();
    by_fraction.sort_by_key(|&k| (std::cmp::Reverse(n * counts[k] % total), k));
    let short = n - quota.iter().sum::<usize>();
    for &k in by_fraction.iter().take(short) {
        quota[k] += 1;
    }
    quota
}

fn subset(set: &DataSet, indices: &[usize]) -> DataSet {
    let mut images = Vec::with_capacity(indices.len() * image_len(set.side));
    for &i in indices {
        images.extend_from_slice(set.image(i));
    }
    DataSet {
        split: set.split,
        side: set.side,
        num_classes: set.num_classes,
        images,
        labels: indices.iter().map(|&i| set.labels[i]).collect(),
        synthetic: set.synthetic,
    }
}

/// Split `n` images, stratified by class, off the training set: `(train, validation)`, both
/// in file order. Which images of class `k` go is a permutation keyed by `k` alone.
pub fn split_validation(train: &DataSet, n: usize) -> Result<(DataSet, DataSet), DataError> {
    if n >= train.len() {
        return Err(DataError::Invalid(format!(
            "data.validation = {n} is invalid: the training split has only {} images",
            train.len()
        )));
    }
    let counts = train.class_counts();
    let quota = quotas(&counts, n);
    if let Some(k) = (0..counts.len()).find(|&k| counts[k] > 0 && quota[k] >= counts[k]) {
        return Err(DataError::Invalid(format!(
            "data.validation = {n} is invalid: it would hold out every training image of class {k}"
        )));
    }
    let mut held = vec![false; train.len()];
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); counts.len()];
    for (i, &label) in train.labels.iter().enumerate() {
        by_class[usize::from(label)].push(i);
    }
    for (k, members) in by_class.iter().enumerate() {
        let order = Stream::new(0, Purpose::ValidationSplit, k as u64).permutation(members.len());
        for &j in order.iter().take(quota[k]) {
            held[members[j as usize]] = true;
        }
    }
    let (val, kept): (Vec<usize>, Vec<usize>) = (0..train.len()).partition(|&i| held[i]);
    Ok((subset(train, &kept), subset(train, &val)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CIFAR_SIDE, Split};

    const IMAGE_BYTES: usize = image_len(CIFAR_SIDE);

    fn set(labels: &[u16]) -> DataSet {
        DataSet {
            split: Split::Train,
            side: CIFAR_SIDE,
            num_classes: 3,
            images: labels
                .iter()
                .enumerate()
                .flat_map(|(i, _)| vec![i as u8; IMAGE_BYTES])
                .collect(),
            labels: labels.to_vec(),
            synthetic: true,
        }
    }

    #[test]
    fn quotas_are_stratified_and_exact() {
        assert_eq!(quotas(&[50, 50], 10), [5, 5]);
        // 7·[5, 3, 2]/10 = [3.5, 2.1, 1.4] → [3, 2, 1] + 1 to the largest fraction (class 0).
        assert_eq!(quotas(&[5, 3, 2], 7), [4, 2, 1]);
        assert_eq!(quotas(&[1, 1, 1], 2), [1, 1, 0]);
    }

    #[test]
    fn split_is_disjoint_complete_stratified_and_fixed() {
        let labels: Vec<u16> = (0..30).map(|i| (i % 3) as u16).collect();
        let data = set(&labels);
        let (train, val) = split_validation(&data, 6).expect("split");
        assert_eq!((train.len(), val.len()), (24, 6));
        assert_eq!(val.class_counts(), [2, 2, 2]);
        // Every image lands on exactly one side (the pixels encode the original index).
        let mut seen: Vec<u8> = train
            .images
            .chunks(IMAGE_BYTES)
            .chain(val.images.chunks(IMAGE_BYTES))
            .map(|img| img[0])
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..30).collect::<Vec<u8>>());
        for (img, &label) in val.images.chunks(IMAGE_BYTES).zip(&val.labels) {
            assert_eq!(
                labels[usize::from(img[0])],
                label,
                "labels travel with images"
            );
        }
        assert_eq!(split_validation(&data, 6).expect("again").1, val);
    }

    #[test]
    fn impossible_splits_are_errors() {
        let data = set(&[0, 0, 1, 1, 2, 2]);
        let err = split_validation(&data, 6).expect_err("all").to_string();
        assert!(err.contains("only 6 images"), "{err}");
        let err = split_validation(&set(&[0, 0, 0, 0, 1]), 3)
            .expect_err("class 1 emptied")
            .to_string();
        assert!(err.contains("every training image of class 1"), "{err}");
    }
}
