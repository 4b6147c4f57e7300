//! Small-sample statistics: mean, sample standard deviation, Student-t 95 % confidence
//! intervals, paired differences and convergence epochs.

/// Two-sided 95 % quantile of Student's t with `df` degrees of freedom (table to 30, then
/// the Cornish–Fisher-style approximation `1.96 + 2.4/df`, within 0.002 of the exact value).
#[must_use]
pub fn t_975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => TABLE[df - 1],
        _ => 1.96 + 2.4 / df as f64,
    }
}

/// Mean, sample standard deviation and 95 % CI of the mean.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (n − 1); NaN for n < 2.
    pub std: f64,
    /// 95 % confidence interval of the mean; NaN bounds for n < 2.
    pub ci: (f64, f64),
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
            });
        }
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let std = var.sqrt();
        let half = t_975(n - 1) * std / (n as f64).sqrt();
        Some(Self {
            n,
            mean,
            std,
            ci: (mean - half, mean + half),
        })
    }

    /// Whether the CI exists (n ≥ 2).
    #[must_use]
    pub fn has_ci(&self) -> bool {
        self.ci.0.is_finite()
    }
}

/// Difference `a − b` paired by key (seed): only keys present in both count.
#[must_use]
pub fn paired_difference(a: &[(u64, f64)], b: &[(u64, f64)]) -> Option<Estimate> {
    let diffs: Vec<f64> = a
        .iter()
        .filter_map(|(k, x)| b.iter().find(|(kb, _)| kb == k).map(|(_, y)| x - y))
        .collect();
    Estimate::of(&diffs)
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
        // values 0.70, 0.72, 0.74: mean 0.72, s = 0.02, CI half-width 4.303·0.02/√3 = 0.0496868.
        let e = Estimate::of(&[0.70, 0.72, 0.74]).expect("values");
        assert!((e.mean - 0.72).abs() < 1e-12);
        assert!((e.std - 0.02).abs() < 1e-12);
        assert!((e.ci.1 - e.mean - 0.049_686_8).abs() < 1e-6, "{:?}", e.ci);
        assert!((e.mean - e.ci.0 - 0.049_686_8).abs() < 1e-6);
    }

    #[test]
    fn single_value_has_no_ci() {
        let e = Estimate::of(&[0.5]).expect("value");
        assert_eq!(e.mean, 0.5);
        assert!(e.std.is_nan() && !e.has_ci());
        assert!(Estimate::of(&[]).is_none());
    }

    #[test]
    fn paired_difference_uses_common_seeds_only() {
        let arc = [(0, 0.80), (1, 0.82), (2, 0.79)];
        let soft = [(0, 0.78), (1, 0.79), (5, 0.10)];
        let d = paired_difference(&arc, &soft).expect("pairs");
        assert_eq!(d.n, 2);
        assert!((d.mean - 0.025).abs() < 1e-12); // (0.02 + 0.03) / 2
        // s = 0.0070711; half-width 12.706 · s / √2 = 0.06353.
        assert!((d.ci.1 - d.mean - 0.063_53).abs() < 1e-4, "{:?}", d.ci);
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
        assert_eq!(t_975(2), 4.303);
        assert!((t_975(60) - 2.000).abs() < 0.002);
        assert!((t_975(120) - 1.980).abs() < 0.002);
    }
}
