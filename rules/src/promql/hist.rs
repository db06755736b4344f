//! Native histograms in the engine: which operations take them, and the operations on them.
//!
//! An operation that does not handle histograms yet refuses them as unsupported rather than
//! reading one as a float; one that Prometheus defines as ignoring them ignores them as it does.

use vigil_wire::histogram::{FloatHistogram, ResetHint};

use super::functions::Func;
use super::plan::Node;
use super::value::Value;

/// What an operation does with native histograms among its instant-vector operands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HistPolicy {
    /// Takes them (or has no such operands: a range function's argument is checked by
    /// [`range_use`] instead).
    Take,
    /// Reads floats only and leaves histogram samples out without a word, as Prometheus's
    /// float functions do.
    Drop,
    /// Not evaluated over histograms yet: refused as unsupported, naming the operation.
    Refuse(&'static str),
}

/// What `node` does with native histograms in its instant-vector operands.
pub(crate) fn policy(node: &Node) -> HistPolicy {
    use Func as F;
    match node {
        Node::Number(_) | Node::String(_) | Node::Selector(_) | Node::Subquery { .. } => {
            HistPolicy::Take
        }
        Node::Neg(_) | Node::Binary { .. } => HistPolicy::Take,
        Node::Aggregate { .. } => HistPolicy::Take,
        Node::Call { func, .. } => match func {
            _ if range_use(*func).is_some() => HistPolicy::Take,
            _ if func.is_math() => HistPolicy::Drop,
            F::Clamp
            | F::ClampMin
            | F::ClampMax
            | F::Round
            | F::Scalar
            | F::Sort
            | F::SortDesc
            | F::DaysInMonth
            | F::DayOfMonth
            | F::DayOfWeek
            | F::DayOfYear
            | F::Hour
            | F::Minute
            | F::Month
            | F::Year => HistPolicy::Drop,
            F::Timestamp
            | F::HistogramCount
            | F::HistogramSum
            | F::HistogramAvg
            | F::HistogramStddev
            | F::HistogramStdvar
            | F::HistogramQuantile
            | F::HistogramQuantiles
            | F::HistogramFraction
            | F::Absent
            | F::LabelReplace
            | F::LabelJoin
            | F::SortByLabel
            | F::SortByLabelDesc => HistPolicy::Take,
            _ => HistPolicy::Refuse(func.name()),
        },
    }
}

/// Whether a value holds a native histogram anywhere.
pub(crate) fn holds_histograms(v: &Value) -> bool {
    match v {
        Value::Vector(v) => v.iter().any(|s| s.h.is_some()),
        Value::Matrix(m) => m.iter().any(|s| !s.histograms.is_empty()),
        Value::Scalar(_) | Value::String(_) => false,
    }
}

/// What a function taking a range vector does with the histograms in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangeUse {
    /// Reads the floats only; a window holding both gets Prometheus's info.
    Floats,
    /// Reads both.
    Both,
}

/// `None` for a function without a range-vector argument.
pub(crate) fn range_use(f: Func) -> Option<RangeUse> {
    use Func as F;
    Some(match f {
        F::MinOverTime
        | F::MaxOverTime
        | F::QuantileOverTime
        | F::StddevOverTime
        | F::StdvarOverTime
        | F::MadOverTime
        | F::Deriv
        | F::PredictLinear
        | F::DoubleExpSmoothing
        | F::HoltWinters
        | F::TsOfMinOverTime
        | F::TsOfMaxOverTime => RangeUse::Floats,
        F::CountOverTime
        | F::LastOverTime
        | F::FirstOverTime
        | F::PresentOverTime
        | F::AbsentOverTime
        | F::Changes
        | F::Resets
        | F::TsOfFirstOverTime
        | F::TsOfLastOverTime
        | F::Rate
        | F::Increase
        | F::Delta
        | F::Irate
        | F::Idelta
        | F::SumOverTime
        | F::AvgOverTime => RangeUse::Both,
        _ => return None,
    })
}

/// The sum of histograms for `sum` and `avg`, with what Prometheus says about it.
pub(crate) struct HistSum {
    pub h: FloatHistogram,
    /// Custom bucket bounds differed and were intersected.
    pub reconciled: bool,
    /// One input said reset and another not_reset.
    pub collision: bool,
}

/// Adds histograms up; `Err(i)` when input `i` cannot be added to those before it (exponential
/// and custom buckets mixed).
pub(crate) fn sum_histograms<'a>(
    hs: impl IntoIterator<Item = &'a FloatHistogram>,
) -> Result<Option<HistSum>, usize> {
    let mut acc: Option<HistSum> = None;
    let (mut reset, mut not_reset) = (false, false);
    for (i, h) in hs.into_iter().enumerate() {
        match h.hint {
            ResetHint::Reset => reset = true,
            ResetHint::NotReset => not_reset = true,
            _ => {}
        }
        acc = Some(match acc {
            None => HistSum {
                h: h.clone(),
                reconciled: false,
                collision: false,
            },
            Some(a) => {
                let c = a.h.combine(h, false).map_err(|_| i)?;
                HistSum {
                    h: c.h,
                    reconciled: a.reconciled || c.bounds_reconciled,
                    collision: false,
                }
            }
        });
    }
    Ok(acc.map(|mut a| {
        a.collision = reset && not_reset;
        a
    }))
}

/// A note for the query's annotations: severity and text.
pub(crate) type Note = (super::value::Severity, String);

/// Bucket bounds cut at zero where the zero bucket spans zero but only one side has buckets
/// (Prometheus's `HistogramQuantile` and `HistogramFraction`).
fn zero_clipped(h: &FloatHistogram, b: &mut vigil_wire::histogram::Bucket) {
    if b.lower <= 0.0 && b.upper >= 0.0 {
        if h.negative_buckets.is_empty() && !h.positive_buckets.is_empty() {
            b.lower = 0.0;
        } else if h.positive_buckets.is_empty() && !h.negative_buckets.is_empty() {
            b.upper = 0.0;
        }
    }
}

fn with_name(text: &str, name: &str) -> String {
    if name.is_empty() {
        text.to_string()
    } else {
        format!("{text} for metric name {name:?}")
    }
}

/// The `q` quantile of a native histogram (Prometheus's `HistogramQuantile`): the bucket the
/// rank falls in, found from the low end for q < 0.5 (or a NaN sum) and from the high end
/// otherwise, interpolated linearly in custom buckets and the zero bucket and exponentially
/// (linearly in log2) in exponential ones.
pub(crate) fn quantile(q: f64, h: &FloatHistogram, name: &str) -> (f64, Option<Note>) {
    use super::value::Severity::Info;
    if q < 0.0 {
        return (f64::NEG_INFINITY, None);
    }
    if q > 1.0 {
        return (f64::INFINITY, None);
    }
    if h.count == 0.0 || q.is_nan() {
        return (f64::NAN, None);
    }
    let forward = h.sum.is_nan() || q < 0.5;
    let mut buckets = h.all_buckets();
    if !forward {
        buckets.reverse();
    }
    let mut rank = if forward {
        q * h.count
    } else {
        (1.0 - q) * h.count
    };
    let mut count = 0.0;
    let mut at = buckets.len();
    for (i, b) in buckets.iter().enumerate() {
        if b.count == 0.0 {
            continue;
        }
        count += b.count;
        at = i;
        if count >= rank {
            break;
        }
    }
    let Some(mut bucket) = buckets.get(at).copied() else {
        return (f64::NAN, None);
    };
    if !h.is_custom() && bucket.lower < 0.0 && bucket.upper > 0.0 {
        zero_clipped(h, &mut bucket);
    } else if h.is_custom() {
        if bucket.lower == f64::NEG_INFINITY {
            if bucket.upper <= 0.0 {
                return (bucket.upper, None);
            }
            bucket.lower = 0.0;
        } else if bucket.upper == f64::INFINITY {
            return (bucket.lower, None);
        }
    }
    if count > h.count {
        count = h.count;
    }
    if count < rank {
        if h.sum.is_nan() {
            let note = with_name(
                "input to histogram_quantile has NaN observations, result is NaN",
                name,
            );
            return (f64::NAN, Some((Info, note)));
        }
        return (bucket.upper, None);
    }
    if forward {
        rank -= count - bucket.count;
    } else {
        rank = count - rank;
    }
    let mut note = None;
    if h.sum.is_nan() {
        let total: f64 = count + buckets[at + 1..].iter().map(|b| b.count).sum::<f64>();
        if total < h.count {
            note = Some((
                Info,
                with_name(
                    "input to histogram_quantile has NaN observations, result is skewed higher",
                    name,
                ),
            ));
        }
    }
    let fraction = rank / bucket.count;
    if h.is_custom() || (bucket.lower <= 0.0 && bucket.upper >= 0.0) {
        return (
            bucket.lower + (bucket.upper - bucket.lower) * fraction,
            note,
        );
    }
    let log_lower = bucket.lower.abs().log2();
    let log_upper = bucket.upper.abs().log2();
    if bucket.lower > 0.0 {
        (
            (log_lower + (log_upper - log_lower) * fraction).exp2(),
            note,
        )
    } else {
        (
            -(log_upper + (log_lower - log_upper) * (1.0 - fraction)).exp2(),
            note,
        )
    }
}

/// The share of observations between `lower` and `upper` (Prometheus's `HistogramFraction`),
/// interpolated as [`quantile`] does; nothing is interpolated within a bucket of infinite width.
pub(crate) fn fraction(
    lower: f64,
    upper: f64,
    h: &FloatHistogram,
    name: &str,
) -> (f64, Option<Note>) {
    if h.count == 0.0 || lower.is_nan() || upper.is_nan() {
        return (f64::NAN, None);
    }
    if lower >= upper {
        return (0.0, None);
    }
    let buckets = h.all_buckets();
    let (mut count, mut rank, mut lower_rank, mut upper_rank) = (0.0, 0.0, 0.0, 0.0);
    let (mut lower_set, mut upper_set) = (false, false);
    let mut seen = 0;
    for b in &buckets {
        seen += 1;
        let mut b = *b;
        count += b.count;
        let zero_bucket = b.lower <= 0.0 && b.upper >= 0.0;
        if zero_bucket {
            zero_clipped(h, &mut b);
        }
        let linear = h.is_custom() || zero_bucket;
        let below = |v: f64| -> f64 {
            if linear {
                if b.lower == f64::NEG_INFINITY {
                    return b.count;
                }
                rank + b.count * (v - b.lower) / (b.upper - b.lower)
            } else {
                let (ll, lu, lv) = (b.lower.abs().log2(), b.upper.abs().log2(), v.abs().log2());
                let f = if v > 0.0 {
                    (lv - ll) / (lu - ll)
                } else {
                    1.0 - (lv - lu) / (ll - lu)
                };
                rank + b.count * f
            }
        };
        if !lower_set && b.lower >= lower {
            lower_rank = rank;
            lower_set = true;
        }
        if !upper_set && b.lower >= upper {
            upper_rank = rank;
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        if !lower_set && b.lower < lower && b.upper > lower {
            lower_rank = below(lower);
            lower_set = true;
        }
        if !upper_set && b.lower < upper && b.upper > upper {
            upper_rank = below(upper);
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        rank += b.count;
    }
    let mut note = None;
    if h.sum.is_nan() {
        count += buckets[seen..].iter().map(|b| b.count).sum::<f64>();
        if count < h.count {
            note = Some((
                super::value::Severity::Info,
                with_name(
                    "input to histogram_fraction has NaN observations, which are excluded from all fractions",
                    name,
                ),
            ));
        }
    } else {
        count = h.count;
    }
    if !lower_set || lower_rank > count {
        lower_rank = count;
    }
    if !upper_set || upper_rank > count {
        upper_rank = count;
    }
    ((upper_rank - lower_rank) / h.count, note)
}

/// The variance of the observations (Prometheus's `histogramVariance`): each bucket's count at
/// its representative value (the arithmetic mean of custom bounds, 0 in the zero bucket, the
/// geometric mean of exponential bounds) against the mean `sum / count`.
pub(crate) fn variance(h: &FloatHistogram) -> f64 {
    let mean = h.sum / h.count;
    let (mut var, mut c) = (0.0, 0.0);
    for b in h.all_buckets() {
        if b.count == 0.0 {
            continue;
        }
        let val = if h.is_custom() {
            (b.upper + b.lower) / 2.0
        } else if b.lower <= 0.0 && b.upper >= 0.0 {
            0.0
        } else {
            let g = (b.upper * b.lower).sqrt();
            if b.upper < 0.0 {
                -g
            } else {
                g
            }
        };
        let d = val - mean;
        (var, c) = super::mathx::kahan_inc(b.count * d * d, var, c);
    }
    (var + c) / h.count
}

fn warn(notes: &mut Vec<Note>, text: String) {
    notes.push((super::value::Severity::Warning, text));
}

fn mixed_schemas(name: &str) -> String {
    format!("vector contains a mix of histograms with exponential and custom buckets schemas for metric name {name:?}")
}

/// `a + b` or `a - b` for the rate functions: `None` (with the warning) when the layouts do not
/// combine; reconciled custom bounds get Prometheus's info.
fn combine_noted(
    a: &FloatHistogram,
    b: &FloatHistogram,
    negate: bool,
    name: &str,
    notes: &mut Vec<Note>,
) -> Option<FloatHistogram> {
    match a.combine(b, negate) {
        Err(_) => {
            warn(notes, mixed_schemas(name));
            None
        }
        Ok(c) => {
            if c.bounds_reconciled {
                let what = if negate { "subtraction" } else { "addition" };
                notes.push((
                    super::value::Severity::Info,
                    format!("mismatched custom buckets were reconciled during {what}"),
                ));
            }
            Some(c.h)
        }
    }
}

/// The increase (or, not a counter, the change) of a window of histograms, not extrapolated:
/// Prometheus's `histogramRate`. The last minus the first at the coarsest schema seen, plus the
/// histogram before each counter reset; a gauge histogram.
pub(crate) fn increase(
    points: &[vigil_wire::histogram::HSample],
    counter: bool,
    name: &str,
    notes: &mut Vec<Note>,
) -> Option<FloatHistogram> {
    let not_counter = || format!("this native histogram metric is not a counter: {name:?}");
    let (first, last) = (&*points[0].h, &*points[points.len() - 1].h);
    let mut prev = first.clone();
    let mut custom = prev.is_custom();
    if counter && (first.hint == ResetHint::Gauge || last.hint == ResetHint::Gauge) {
        warn(notes, not_counter());
    }
    if counter {
        let second = &*points[1].h;
        if second.detect_reset(&prev) {
            prev = FloatHistogram {
                schema: second.schema,
                custom_values: second.custom_values.clone(),
                ..FloatHistogram::default()
            };
            custom = second.is_custom();
        }
    }
    if last.is_custom() != custom {
        warn(notes, mixed_schemas(name));
        return None;
    }
    let mut min_schema = last.schema.min(prev.schema);
    for p in &points[1..points.len() - 1] {
        if !counter {
            continue;
        }
        if p.h.hint == ResetHint::Gauge {
            warn(notes, not_counter());
        }
        min_schema = min_schema.min(p.h.schema);
        if p.h.is_custom() != custom {
            warn(notes, mixed_schemas(name));
            return None;
        }
    }
    let mut h = last.clone();
    h.reduce_resolution(min_schema);
    let mut h = combine_noted(&h, &prev, true, name, notes)?;
    if counter {
        for p in &points[1..] {
            if p.h.detect_reset(&prev) {
                h = combine_noted(&h, &prev, false, name, notes)?;
            }
            prev = (*p.h).clone();
        }
    } else if first.hint != ResetHint::Gauge || last.hint != ResetHint::Gauge {
        warn(
            notes,
            format!("this native histogram metric is not a gauge: {name:?}"),
        );
    }
    h.hint = ResetHint::Gauge;
    h.compact(0);
    Some(h)
}

/// `rate`, `increase` or `delta` of a window of histograms over `(start, end]`: [`increase`]
/// extrapolated as Prometheus extrapolates floats (towards zero by the count).
pub(crate) fn extrapolated(
    points: &[vigil_wire::histogram::HSample],
    start: i64,
    end: i64,
    counter: bool,
    rate: bool,
    name: &str,
    notes: &mut Vec<Note>,
) -> Option<FloatHistogram> {
    if points.len() < 2 {
        return None;
    }
    let result = increase(points, counter, name, notes)?;
    let (first, last) = (&points[0], &points[points.len() - 1]);
    let factor = super::mathx::extrapolation_factor(
        (first.timestamp_ms, last.timestamp_ms, points.len()),
        (start, end),
        counter.then_some((first.h.count, result.count)),
        rate,
    );
    Some(result.scaled(factor))
}

/// `irate` or `idelta` of the last two samples of a window when one of them is a histogram
/// (Prometheus's `instantValue`): `None` when there is nothing to say, or (with the warning)
/// when a float meets a histogram.
pub(crate) fn instant(
    floats: &[vigil_wire::Sample],
    hists: &[vigil_wire::histogram::HSample],
    rate: bool,
    name: &str,
    notes: &mut Vec<Note>,
) -> Option<FloatHistogram> {
    // The last two samples of either kind, oldest first.
    let mut last: Vec<(i64, Option<&FloatHistogram>)> = floats
        .iter()
        .rev()
        .take(2)
        .map(|f| (f.timestamp_ms, None))
        .chain(
            hists
                .iter()
                .rev()
                .take(2)
                .map(|h| (h.timestamp_ms, Some(&*h.h))),
        )
        .collect();
    if last.len() < 2 {
        return None;
    }
    last.sort_by_key(|x| std::cmp::Reverse(x.0));
    let (newer, older) = (last[0], last[1]);
    let dt = newer.0 - older.0;
    if dt == 0 {
        return None;
    }
    let (b, a) = match (newer.1, older.1) {
        (Some(b), Some(a)) => (b, a),
        // The last two are floats: the float answer (histograms before them do not count).
        (None, None) => return None,
        _ => {
            warn(
                notes,
                format!("encountered a mix of histograms and floats for metric name {name:?}"),
            );
            return None;
        }
    };
    if rate && (b.hint == ResetHint::Gauge || a.hint == ResetHint::Gauge) {
        warn(
            notes,
            format!("this native histogram metric is not a counter: {name:?}"),
        );
    }
    if !rate && (b.hint != ResetHint::Gauge || a.hint != ResetHint::Gauge) {
        warn(
            notes,
            format!("this native histogram metric is not a gauge: {name:?}"),
        );
    }
    let mut h = if !rate || !b.detect_reset(a) {
        combine_noted(b, a, true, name, notes)?
    } else {
        b.clone()
    };
    h.hint = ResetHint::Gauge;
    h.compact(0);
    if rate {
        h = h.divided(dt as f64 / 1e3);
    }
    Some(h)
}
