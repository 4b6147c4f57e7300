//! Small-sample statistics: mean, sample standard deviation, Student-t 95 % confidence and
//! prediction intervals, paired differences with a paired t-test, Holm's correction and
//! convergence epochs. The t distribution comes from `statrs`.

use statrs::distribution::{ContinuousCDF, StudentsT};

/// Fewer seeds than this and an interval is reported as "n too small": with n = 2 the
/// t quantile is 12.7 and a 95 % interval spans tens of points, which reads as a result.
pub const MIN_N_FOR_INTERVAL: usize = 3;

fn t_distribution(df: usize) -> Option<StudentsT> {
    (df > 0)
        .then(|| StudentsT::new(0.0, 1.0, df as f64).ok())
        .flatten()
}

/// Two-sided 95 % quantile of Student's t with `df` degrees of freedom (NaN for df = 0).
#[must_use]
pub fn t_975(df: usize) -> f64 {
    t_distribution(df).map_or(f64::NAN, |t| t.inverse_cdf(0.975))
}

/// Two-sided p-value of a t statistic with `df` degrees of freedom.
#[must_use]
pub fn two_sided_p(t: f64, df: usize) -> f64 {
    if t.is_infinite() {
        return 0.0;
    }
    t_distribution(df).map_or(f64::NAN, |dist| (2.0 * dist.cdf(-t.abs())).min(1.0))
}

/// Mean, sample standard deviation and 95 % intervals of a few values (one per seed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (n − 1); NaN for n < 2.
    pub std: f64,
    /// 95 % confidence interval of the mean, `t·s/√n`; NaN bounds for n < 2.
    pub ci: (f64, f64),
    /// 95 % prediction interval of one more run, `t·s·√(1 + 1/n)`: what a single published
    /// number is compared with. NaN bounds for n < 2.
    pub pi: (f64, f64),
}

impl Estimate {
    /// Estimate from values; `None` when there are none.
    #[must_use]
    pub fn of(values: &[f64]) -> Option<Self> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        if n < 2 {
            return Some(Self {
                n,
                mean,
                std: f64::NAN,
                ci: (f64::NAN, f64::NAN),
                pi: (f64::NAN, f64::NAN),
            });
        }
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let std = var.sqrt();
        let t = t_975(n - 1);
        let half = t * std / (n as f64).sqrt();
        let half_pi = t * std * (1.0 + 1.0 / n as f64).sqrt();
        Some(Self {
            n,
            mean,
            std,
            ci: (mean - half, mean + half),
            pi: (mean - half_pi, mean + half_pi),
        })
    }

    /// Whether the intervals exist (n ≥ 2).
    #[must_use]
    pub fn has_ci(&self) -> bool {
        self.ci.0.is_finite()
    }

    /// Whether there are enough values to show the intervals as a result.
    #[must_use]
    pub fn enough_for_interval(&self) -> bool {
        self.has_ci() && self.n >= MIN_N_FOR_INTERVAL
    }
}

/// Differences `a − b` paired by key (seed): only keys present in both count.
#[must_use]
pub fn paired_values(a: &[(u64, f64)], b: &[(u64, f64)]) -> Vec<f64> {
    a.iter()
        .filter_map(|(k, x)| b.iter().find(|(kb, _)| kb == k).map(|(_, y)| x - y))
        .collect()
}

/// Difference `a − b` paired by key (seed).
#[must_use]
pub fn paired_difference(a: &[(u64, f64)], b: &[(u64, f64)]) -> Option<Estimate> {
    Estimate::of(&paired_values(a, b))
}

/// Paired t-test of the differences (H0: mean difference 0), two-sided; `None` for n < 2.
/// Differences with no spread give p = 0 (all equal and non-zero) or 1 (all zero).
#[must_use]
pub fn paired_t_test(differences: &[f64]) -> Option<f64> {
    let e = Estimate::of(differences)?;
    if e.n < 2 {
        return None;
    }
    if e.std == 0.0 {
        return Some(if e.mean == 0.0 { 1.0 } else { 0.0 });
    }
    let t = e.mean / (e.std / (e.n as f64).sqrt());
    Some(two_sided_p(t, e.n - 1))
}

/// Holm's step-down adjustment of a family of p-values (same order as given): the i-th
/// smallest becomes `max over j ≤ i of min(1, (m − j + 1)·p_(j))`. NaN stays NaN and does
/// not count in the family.
#[must_use]
pub fn holm(p_values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..p_values.len())
        .filter(|&i| !p_values[i].is_nan())
        .collect();
    order.sort_by(|&a, &b| p_values[a].total_cmp(&p_values[b]));
    let m = order.len();
    let mut adjusted = vec![f64::NAN; p_values.len()];
    let mut running: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max(((m - rank) as f64 * p_values[i]).min(1.0));
        adjusted[i] = running;
    }
    adjusted
}

/// First 1-based epoch whose accuracy reaches `fraction` of the final accuracy.
#[must_use]
pub fn epochs_to_reach(top1_by_epoch: &[f64], fraction: f64) -> Option<usize> {
    let last = *top1_by_epoch.last()?;
    top1_by_epoch
        .iter()
        .position(|&v| v >= fraction * last)
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_matches_hand_computation() {
        // values 0.70, 0.72, 0.74: mean 0.72, s = 0.02, t(2) = 4.302653;
        // CI half-width 4.302653·0.02/√3 = 0.0496828; PI half-width 4.302653·0.02·√(4/3) = 0.0993656.
        let e = Estimate::of(&[0.70, 0.72, 0.74]).expect("values");
        assert!((e.mean - 0.72).abs() < 1e-12);
        assert!((e.std - 0.02).abs() < 1e-12);
        assert!((e.ci.1 - e.mean - 0.049_682_8).abs() < 1e-6, "{:?}", e.ci);
        assert!((e.mean - e.ci.0 - 0.049_682_8).abs() < 1e-6);
        assert!((e.pi.1 - e.mean - 0.099_365_6).abs() < 1e-6, "{:?}", e.pi);
        assert!(e.enough_for_interval());
        assert!(
            !Estimate::of(&[0.7, 0.8])
                .expect("two")
                .enough_for_interval()
        );
    }

    #[test]
    fn single_value_has_no_ci() {
        let e = Estimate::of(&[0.5]).expect("value");
        assert_eq!(e.mean, 0.5);
        assert!(e.std.is_nan() && !e.has_ci() && e.pi.0.is_nan());
        assert!(Estimate::of(&[]).is_none());
    }

    #[test]
    fn paired_difference_uses_common_seeds_only() {
        let arc = [(0, 0.80), (1, 0.82), (2, 0.79)];
        let soft = [(0, 0.78), (1, 0.79), (5, 0.10)];
        let d = paired_difference(&arc, &soft).expect("pairs");
        assert_eq!(d.n, 2);
        assert!((d.mean - 0.025).abs() < 1e-12); // (0.02 + 0.03) / 2
        // s = 0.0070711; half-width 12.7062 · s / √2 = 0.063531.
        assert!((d.ci.1 - d.mean - 0.063_531).abs() < 1e-5, "{:?}", d.ci);
    }

    #[test]
    fn paired_t_test_matches_hand_computation() {
        // d = 0.01, 0.02, 0.03: mean 0.02, s 0.01, t = 0.02/(0.01/√3) = 3.4641, df 2:
        // p = 2·(1 − F(3.4641)) = 0.074180 (scipy.stats.ttest_1samp gives 0.0741799).
        let p = paired_t_test(&[0.01, 0.02, 0.03]).expect("p");
        assert!((p - 0.074_180).abs() < 1e-5, "{p}");
        assert_eq!(paired_t_test(&[0.01, 0.01, 0.01]), Some(0.0));
        assert_eq!(paired_t_test(&[0.0, 0.0]), Some(1.0));
        assert_eq!(paired_t_test(&[0.3]), None);
        // Symmetric in sign.
        assert_eq!(paired_t_test(&[-0.01, -0.02, -0.03]), Some(p));
    }

    #[test]
    fn holm_matches_hand_computation() {
        // m = 4: sorted 0.01, 0.02, 0.03, 0.5 → 0.04, max(0.04, 0.06), max(0.06, 0.06), 0.5.
        let adjusted = holm(&[0.03, 0.5, 0.01, 0.02]);
        let want = [0.06, 0.5, 0.04, 0.06];
        for (a, w) in adjusted.iter().zip(want) {
            assert!((a - w).abs() < 1e-12, "{adjusted:?}");
        }
        // Capped at 1; NaN ignored and kept.
        let adjusted = holm(&[0.6, f64::NAN, 0.4]);
        assert!((adjusted[0] - 0.8).abs() < 1e-12 && adjusted[1].is_nan());
        assert!((adjusted[2] - 0.8).abs() < 1e-12, "{adjusted:?}");
    }

    #[test]
    fn convergence_epochs() {
        let curve = [0.1, 0.5, 0.9, 0.95, 1.0];
        assert_eq!(epochs_to_reach(&curve, 0.95), Some(4));
        assert_eq!(epochs_to_reach(&curve, 0.99), Some(5));
        assert_eq!(epochs_to_reach(&curve, 0.5), Some(2));
        assert_eq!(epochs_to_reach(&[], 0.5), None);
    }

    #[test]
    fn t_quantiles() {
        // Published table values.
        assert!((t_975(2) - 4.303).abs() < 5e-4);
        assert!((t_975(10) - 2.228).abs() < 5e-4);
        assert!((t_975(120) - 1.980).abs() < 5e-4);
        assert!(t_975(0).is_nan());
    }
}
