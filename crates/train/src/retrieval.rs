//! Retrieval metrics of an embedding, as in Musgrave et al., "A Metric Learning Reality
//! Check" (ECCV 2020): every test image queries all the others by cosine similarity
//! (leave-one-out). Recall@K: an image of the query's class is among the K nearest others.
//! MAP@R: with R the number of other images of the query's class, the mean over the first R
//! neighbours of the precision at each correct one, divided by R. Queries whose class has no
//! other image are skipped. Ties in similarity go to the lower index, so the result is
//! deterministic.
//!
//! Memory is bounded whatever the test set's size: similarities are computed for
//! [`QUERY_CHUNK`] queries at a time (`QUERY_CHUNK × n` floats: 61 MB for SOP's 60,000
//! images), never the `n × n` matrix.

use burn::prelude::*;
use rayon::prelude::*;

/// Queries per similarity block.
pub const QUERY_CHUNK: usize = 256;

/// The K of the Recall@K columns.
pub const RECALL_KS: [usize; 4] = [1, 2, 4, 8];

/// Recall@K and MAP@R over all queries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retrieval {
    /// Recall@K for each K of [`RECALL_KS`].
    pub recall: [f64; 4],
    pub map_at_r: f64,
    /// Queries that counted (their class has another image).
    pub queries: usize,
}

impl Retrieval {
    #[must_use]
    pub fn recall_at_1(&self) -> f64 {
        self.recall[0]
    }
}

/// Rows scaled to unit L2 norm (a zero row stays zero).
#[must_use]
pub fn l2_normalise(features: Tensor<2>) -> Tensor<2> {
    let norm = features
        .clone()
        .powi_scalar(2)
        .sum_dim(1)
        .sqrt()
        .clamp_min(1e-12); // [n, 1]
    features / norm
}

/// Terms of one query: `(a hit within each K of RECALL_KS, average precision at R)`, or
/// `None` when the query's class has no other member. `similarities` is the query's row
/// against every image (itself included, at `query`); `scratch` is reused between calls.
fn score_query(
    similarities: &[f32],
    labels: &[i64],
    r: usize,
    query: usize,
    scratch: &mut Vec<(f32, u32)>,
) -> Option<([bool; 4], f64)> {
    if r == 0 {
        return None;
    }
    let class = labels[query];
    scratch.clear();
    scratch.extend(
        similarities
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != query)
            // A NaN similarity (a diverged model) ranks last rather than poisoning the order.
            .map(|(j, &s)| (if s.is_nan() { f32::NEG_INFINITY } else { s }, j as u32)),
    );
    let before = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    let keep = r.max(RECALL_KS[3]);
    if keep < scratch.len() {
        scratch.select_nth_unstable_by(keep - 1, before);
        scratch.truncate(keep);
    }
    scratch.sort_unstable_by(before);
    let correct = |&(_, j): &(f32, u32)| labels[j as usize] == class;
    let (mut hits, mut precision_sum) = (0usize, 0.0f64);
    for (rank, pair) in scratch.iter().take(r).enumerate() {
        if correct(pair) {
            hits += 1;
            precision_sum += hits as f64 / (rank + 1) as f64;
        }
    }
    let within = RECALL_KS.map(|k| scratch.iter().take(k).any(correct));
    Some((within, precision_sum / r as f64))
}

/// Recall@K and MAP@R of `embeddings` `[n, dim]` (L2-normalised rows) with their labels.
/// `None` when no query counts (every class has a single image).
#[must_use]
pub fn retrieval(embeddings: &Tensor<2>, labels: &[i64]) -> Option<Retrieval> {
    let [n, dim] = embeddings.dims();
    assert_eq!(n, labels.len(), "one label per embedding");
    let mut members = std::collections::HashMap::<i64, usize>::new();
    for &l in labels {
        *members.entry(l).or_default() += 1;
    }
    let others: Vec<usize> = labels.iter().map(|l| members[l] - 1).collect();
    let keys = embeddings.clone().transpose(); // [dim, n]
    let (mut hits, mut ap_sum, mut queries) = ([0usize; 4], 0.0f64, 0usize);
    for start in (0..n).step_by(QUERY_CHUNK) {
        let end = (start + QUERY_CHUNK).min(n);
        let block = embeddings
            .clone()
            .slice([start..end, 0..dim])
            .matmul(keys.clone()); // [end - start, n]
        let values: Vec<f32> = block
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("float tensor data converts to f32");
        // Scored in parallel, summed in query order: the same bits on any thread count.
        let scored: Vec<Option<([bool; 4], f64)>> = values
            .par_chunks_exact(n)
            .zip(start..end)
            .map_init(Vec::new, |scratch, (row, query)| {
                score_query(row, labels, others[query], query, scratch)
            })
            .collect();
        for (within, ap) in scored.into_iter().flatten() {
            for (h, w) in hits.iter_mut().zip(within) {
                *h += usize::from(w);
            }
            ap_sum += ap;
            queries += 1;
        }
    }
    (queries > 0).then(|| Retrieval {
        recall: hits.map(|h| h as f64 / queries as f64),
        map_at_r: ap_sum / queries as f64,
        queries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(rows: &[Vec<f64>]) -> Tensor<2> {
        let dim = rows[0].len();
        let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
        Tensor::from_data(TensorData::new(flat, [rows.len(), dim]), &Device::flex())
    }

    /// Points on the unit circle at the given angles (degrees).
    fn circle(angles: &[f64]) -> Vec<Vec<f64>> {
        angles
            .iter()
            .map(|a| vec![a.to_radians().cos(), a.to_radians().sin()])
            .collect()
    }

    #[test]
    fn hand_computed_case() {
        // Angles 0, 10, 30, 100 (class 0, 1, 0, 0) and 200, 215 (class 1, 1).
        // Query 0 (class 0, R = 2): neighbours by angle 10 (x), 30 (✓) → AP = (1/2)/2 = 0.25,
        //   rank-1 miss.
        // Query 1 (class 1, R = 2): 0 (x), 30 (x) → AP 0, miss.
        // Query 2 (class 0, R = 2): 10 (x), 0 (✓) → AP = (1/2)/2 = 0.25, miss.
        // Query 3 (class 0, R = 2): 30 (✓, 70°), 10 (x, 90°) → AP = 1/2, hit.
        // Query 4 (class 1, R = 2): 215 (✓), then 100 (100°) vs 10 (170°) → 100 (x) →
        //   AP = 1/2, hit.
        // Query 5 (class 1, R = 2): 200 (✓), 100 (x, 115°) → AP = 1/2, hit.
        let e = l2_normalise(tensor(&circle(&[0.0, 10.0, 30.0, 100.0, 200.0, 215.0])));
        let m = retrieval(&e, &[0, 1, 0, 0, 1, 1]).expect("queries");
        assert_eq!(m.queries, 6);
        assert!((m.recall_at_1() - 3.0 / 6.0).abs() < 1e-12, "{m:?}");
        // Recall@2: queries 0 (30 second), 2 (0 second), 3, 4, 5 → 5/6; Recall@4 and @8: all.
        assert!((m.recall[1] - 5.0 / 6.0).abs() < 1e-12, "{m:?}");
        assert_eq!((m.recall[2], m.recall[3]), (1.0, 1.0));
        assert!((m.map_at_r - 2.0 / 6.0).abs() < 1e-6, "{m:?}");
    }

    #[test]
    fn perfect_clusters_score_one_and_singletons_are_skipped() {
        let e = l2_normalise(tensor(&circle(&[0.0, 1.0, 2.0, 120.0, 121.0, 240.0])));
        let m = retrieval(&e, &[0, 0, 0, 1, 1, 2]).expect("queries");
        assert_eq!(m.queries, 5, "class 2 has one image");
        assert_eq!((m.recall, m.map_at_r), ([1.0; 4], 1.0));
        assert!(retrieval(&e, &[0, 1, 2, 3, 4, 5]).is_none());
    }

    /// The definition in float64, sorting every row fully: the reference for the chunked
    /// single-precision version.
    fn reference(rows: &[Vec<f64>], labels: &[i64]) -> ([f64; 4], f64) {
        let unit: Vec<Vec<f64>> = rows
            .iter()
            .map(|r| {
                let n = r.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
                r.iter().map(|v| v / n).collect()
            })
            .collect();
        let (mut hits, mut ap, mut q) = ([0.0; 4], 0.0, 0.0);
        for i in 0..rows.len() {
            let r = labels.iter().filter(|&&l| l == labels[i]).count() - 1;
            if r == 0 {
                continue;
            }
            let mut others: Vec<(f64, usize)> = (0..rows.len())
                .filter(|&j| j != i)
                .map(|j| (unit[i].iter().zip(&unit[j]).map(|(a, b)| a * b).sum(), j))
                .collect();
            others.sort_by(|a, b| b.0.partial_cmp(&a.0).expect("finite").then(a.1.cmp(&b.1)));
            let correct: Vec<bool> = others
                .iter()
                .map(|&(_, j)| labels[j] == labels[i])
                .collect();
            for (h, k) in hits.iter_mut().zip([1, 2, 4, 8]) {
                *h += f64::from(u8::from(correct[..k].contains(&true)));
            }
            let correct = &correct[..r];
            let mut found = 0.0;
            let mut sum = 0.0;
            for (k, &c) in correct.iter().enumerate() {
                if c {
                    found += 1.0;
                    sum += found / (k + 1) as f64;
                }
            }
            ap += sum / r as f64;
            q += 1.0;
        }
        (hits.map(|h| h / q), ap / q)
    }

    #[test]
    fn matches_a_float64_reference_across_chunks() {
        // 600 points (more than two query chunks), 7 unbalanced classes, noisy clusters in 16-d.
        let mut stream = lossbench_rng::Stream::new(3, lossbench_rng::Purpose::Synthetic, 9);
        let labels: Vec<i64> = (0..600).map(|i| (i * i % 7) as i64).collect();
        let rows: Vec<Vec<f64>> = labels
            .iter()
            .map(|&l| {
                (0..16)
                    .map(|d| (if d == l as usize { 1.0 } else { 0.0 }) + 0.8 * stream.normal())
                    .collect()
            })
            .collect();
        let m = retrieval(&l2_normalise(tensor(&rows)), &labels).expect("queries");
        let (recall, map) = reference(&rows, &labels);
        assert!(
            (m.recall_at_1() - recall[0]).abs() < 1e-9,
            "{} vs {recall:?}",
            m.recall_at_1()
        );
        for (got, want) in m.recall.iter().zip(recall) {
            assert!((got - want).abs() < 1e-9, "{:?} vs {recall:?}", m.recall);
        }
        assert!((m.map_at_r - map).abs() < 1e-5, "{} vs {map}", m.map_at_r);
        assert!(recall[0] < recall[3], "a case where K matters: {recall:?}");
        assert!(map > 0.1 && map < 0.95, "a case that discriminates: {map}");
    }
}
