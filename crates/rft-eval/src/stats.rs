//! The few statistics the report needs, written out so each is easy to check by hand.

/// The arithmetic mean; 0 for no values.
pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

/// The population standard deviation (what GRPO's group normalisation divides by).
pub fn std(values: &[f64]) -> f64 {
    if values.len() < 2 {
        return 0.0;
    }
    let m = mean(values);
    (values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / values.len() as f64).sqrt()
}

/// The half-width of a normal-approximation 95% confidence interval of the mean.
pub fn ci95(values: &[f64]) -> f64 {
    if values.len() < 2 {
        return 0.0;
    }
    let m = mean(values);
    let sample_var =
        values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (values.len() - 1) as f64;
    1.96 * (sample_var / values.len() as f64).sqrt()
}

/// Counts of `values` in `n_bins` equal bins over `[lo, hi]` (values outside are clamped into
/// the end bins).
pub fn histogram(values: &[f64], lo: f64, hi: f64, n_bins: usize) -> Vec<usize> {
    let n_bins = n_bins.max(1);
    let mut counts = vec![0; n_bins];
    let width = (hi - lo).max(f64::EPSILON);
    for v in values {
        let idx = (((v - lo) / width) * n_bins as f64).floor();
        let idx = if idx.is_finite() {
            idx.clamp(0.0, (n_bins - 1) as f64)
        } else {
            0.0
        };
        counts[idx as usize] += 1;
    }
    counts
}

/// Pearson's correlation; `None` when either side has no variance.
pub fn pearson(xs: &[f64], ys: &[f64]) -> Option<f64> {
    let n = xs.len().min(ys.len());
    if n < 2 {
        return None;
    }
    let (mx, my) = (mean(&xs[..n]), mean(&ys[..n]));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in xs.iter().zip(ys) {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx).powi(2);
        syy += (y - my).powi(2);
    }
    if sxx <= 1e-12 || syy <= 1e-12 {
        return None;
    }
    Some(sxy / (sxx * syy).sqrt())
}

/// Average ranks (ties share their mean rank), 1-based.
pub fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &idx in &order[i..=j] {
            ranks[idx] = rank;
        }
        i = j + 1;
    }
    ranks
}

/// Spearman's rank correlation; `None` when either side is constant.
pub fn spearman(xs: &[f64], ys: &[f64]) -> Option<f64> {
    pearson(&ranks(xs), &ranks(ys))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn std_and_ci_match_hand_values() {
        assert!((std(&[0.0, 1.0]) - 0.5).abs() < 1e-12);
        assert!((ci95(&[0.0, 1.0, 0.0, 1.0]) - 1.96 * (1.0f64 / 3.0 / 4.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn histogram_clamps_the_max_into_the_last_bin() {
        assert_eq!(histogram(&[0.0, 0.5, 1.0, 1.0], 0.0, 1.0, 2), vec![1, 3]);
    }

    #[test]
    fn spearman_uses_average_ranks() {
        assert_eq!(ranks(&[3.0, 1.0, 3.0]), vec![2.5, 1.0, 2.5]);
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]).unwrap() + 1.0).abs() < 1e-12);
        assert_eq!(pearson(&[1.0, 1.0], &[0.0, 1.0]), None);
    }
}
