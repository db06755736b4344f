//! Numeric helpers shared by aggregations and functions, matching Prometheus's float behaviour.

/// Neumaier-compensated summation step: returns the new sum and compensation.
#[inline]
pub(crate) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// Mean with compensated summation that falls back to an incremental mean if the sum would
/// overflow, as Prometheus's `avg` and `avg_over_time` do.
#[derive(Default)]
pub(crate) struct AvgAcc {
    n: f64,
    sum: f64,
    c: f64,
    incremental: bool,
    mean: f64,
}

impl AvgAcc {
    pub(crate) fn add(&mut self, x: f64) {
        self.n += 1.0;
        if self.n == 1.0 {
            self.sum = x;
            self.c = 0.0;
            return;
        }
        if !self.incremental {
            let (s, c) = kahan_inc(x, self.sum, self.c);
            if !s.is_infinite() {
                self.sum = s;
                self.c = c;
                return;
            }
            self.incremental = true;
            self.mean = self.sum / (self.n - 1.0);
            self.c /= self.n - 1.0;
        }
        if self.mean.is_infinite() {
            if x.is_infinite() && (self.mean > 0.0) == (x > 0.0) {
                return;
            }
            if !x.is_infinite() && !x.is_nan() {
                return;
            }
        }
        let current = self.mean + self.c;
        let (m, c) = kahan_inc(x / self.n - current / self.n, self.mean, self.c);
        self.mean = m;
        self.c = c;
    }

    pub(crate) fn value(&self) -> f64 {
        if self.incremental {
            self.mean + self.c
        } else {
            self.sum / self.n + self.c / self.n
        }
    }
}

/// The φ-quantile of `xs` (sorted in place), as Prometheus computes it.
pub(crate) fn quantile(q: f64, xs: &mut [f64]) -> f64 {
    if xs.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    xs.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal),
    });
    let n = xs.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    xs[lower as usize] * (1.0 - weight) + xs[upper as usize] * weight
}

/// Prometheus's extrapolation of a window's increase to its whole range `(start, end]`
/// (`extrapolatedRate`): the `(first, last, count)` of its samples' times; for a counter, its
/// first value and increase, so that the start is not extrapolated below zero; per second when
/// `rate`. The increase is multiplied by what this returns.
pub(crate) fn extrapolation_factor(
    (first_t, last_t, n): (i64, i64, usize),
    (start, end): (i64, i64),
    counter: Option<(f64, f64)>,
    rate: bool,
) -> f64 {
    let mut to_start = (first_t - start) as f64 / 1e3;
    let mut to_end = (end - last_t) as f64 / 1e3;
    let sampled = (last_t - first_t) as f64 / 1e3;
    let avg_step = sampled / n.saturating_sub(1).max(1) as f64;
    let threshold = avg_step * 1.1;
    if to_start >= threshold {
        to_start = avg_step / 2.0;
    }
    if let Some((first, increase)) = counter {
        if increase > 0.0 && first >= 0.0 {
            let to_zero = sampled * (first / increase);
            if to_zero < to_start {
                to_start = to_zero;
            }
        }
    }
    if to_end >= threshold {
        to_end = avg_step / 2.0;
    }
    let mut factor = if sampled != 0.0 {
        (sampled + to_start + to_end) / sampled
    } else {
        1.0
    };
    if rate {
        factor /= (end - start) as f64 / 1e3;
    }
    factor
}

/// Go's `math.Max`/`math.Min`: NaN wins, and -0 < +0.
pub(crate) fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a == 0.0 && b == 0.0 {
        if a.is_sign_negative() {
            b
        } else {
            a
        }
    } else if a > b {
        a
    } else {
        b
    }
}

pub(crate) fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a == 0.0 && b == 0.0 {
        if a.is_sign_negative() {
            a
        } else {
            b
        }
    } else if a < b {
        a
    } else {
        b
    }
}

/// Go's `strconv.FormatFloat(f, 'f', -1, 64)` (shortest, no exponent), as `count_values` and
/// error messages print numbers.
pub(crate) trait GoFloat {
    fn go(self) -> String;
}

impl GoFloat for f64 {
    fn go(self) -> String {
        if self.is_nan() {
            "NaN".into()
        } else if self == f64::INFINITY {
            "+Inf".into()
        } else if self == f64::NEG_INFINITY {
            "-Inf".into()
        } else {
            format!("{self}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kahan_beats_naive_summation() {
        let (mut s, mut c) = (0.0, 0.0);
        for x in [1.0, 1e100, 1.0, -1e100] {
            (s, c) = kahan_inc(x, s, c);
        }
        assert_eq!(s + c, 2.0);
    }

    #[test]
    fn avg_survives_overflow() {
        let mut a = AvgAcc::default();
        a.add(f64::MAX);
        a.add(f64::MAX);
        assert_eq!(a.value(), f64::MAX);
    }

    #[test]
    fn quantile_interpolates() {
        assert_eq!(quantile(0.5, &mut [1.0, 3.0, 2.0]), 2.0);
        assert_eq!(quantile(0.25, &mut [1.0, 2.0, 3.0]), 1.5);
        assert!(quantile(0.5, &mut []).is_nan());
    }

    #[test]
    fn go_min_max_propagate_nan() {
        assert!(go_max(1.0, f64::NAN).is_nan());
        assert!(go_min(f64::NAN, 1.0).is_nan());
        assert_eq!(go_max(1.0, 2.0), 2.0);
    }
}
