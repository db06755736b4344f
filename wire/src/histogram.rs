//! Native histograms as Prometheus models them (its `FloatHistogram`): exponential buckets of a
//! schema (bounds `base^i`, `base = 2^(2^-schema)`, schemas -4 to 8), positive and negative
//! sides as spans of consecutive buckets, a zero bucket `[-threshold, threshold]`, or custom
//! bucket bounds (schema -53, Prometheus's NHCB); counts are absolute floats.
//!
//! Here: the model, Prometheus's test notation (`{{schema:0 sum:5 count:4 buckets:[1 2 1]}}`),
//! bucket bounds and iteration, compaction, comparison within a tolerance, resolution reduction,
//! addition and subtraction (to the coarser schema and the wider zero bucket) and counter-reset
//! detection. The engine's histogram support is built on it.

/// The schema of histograms with custom bucket bounds.
pub const CUSTOM_BUCKETS_SCHEMA: i32 = -53;

/// What the producer said about a counter reset before this histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResetHint {
    #[default]
    Unknown,
    Reset,
    NotReset,
    /// A gauge histogram: resets are not a thing.
    Gauge,
}

/// A run of `length` consecutive buckets, `offset` buckets after the previous run's end (the
/// first span's offset is its first bucket's index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub offset: i32,
    pub length: u32,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct FloatHistogram {
    pub hint: ResetHint,
    pub schema: i32,
    pub zero_threshold: f64,
    pub zero_count: f64,
    pub count: f64,
    pub sum: f64,
    pub positive_spans: Vec<Span>,
    pub positive_buckets: Vec<f64>,
    pub negative_spans: Vec<Span>,
    pub negative_buckets: Vec<f64>,
    /// The upper bounds of the custom buckets (schema -53), the +Inf one implied.
    pub custom_values: Vec<f64>,
}

/// One histogram sample of one series (a series' staleness markers stay float samples).
#[derive(Debug, Clone, PartialEq)]
pub struct HSample {
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    pub h: std::sync::Arc<FloatHistogram>,
}

impl HSample {
    pub fn new(timestamp_ms: i64, h: FloatHistogram) -> Self {
        HSample {
            timestamp_ms,
            h: std::sync::Arc::new(h),
        }
    }
}

/// The outcome of [`FloatHistogram::combine`].
#[derive(Debug, Clone, PartialEq)]
pub struct Combined {
    pub h: FloatHistogram,
    /// One side said reset and the other not_reset (Prometheus warns).
    pub hint_collision: bool,
    /// Custom bucket bounds differed and were intersected (Prometheus's info).
    pub bounds_reconciled: bool,
}

/// The hint of a sum or difference (Prometheus's `adjustCounterReset`): gauge wins, then
/// unknown; reset against not_reset is a collision, unknown.
fn adjust_hint(a: ResetHint, b: ResetHint) -> (ResetHint, bool) {
    use ResetHint::*;
    match (a, b) {
        _ if a == b => (a, false),
        (Gauge, _) | (_, Gauge) => (Gauge, false),
        (Unknown, _) | (_, Unknown) => (Unknown, false),
        _ => (Unknown, true),
    }
}

/// One bucket: `(lower, upper]` (or `[lower, upper)` on the negative side), its count and index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub lower: f64,
    pub upper: f64,
    pub count: f64,
    pub index: i32,
}

/// The upper bound of bucket `index` in exponential `schema` (-4 to 8): `base^index`.
pub fn exponential_bound(index: i32, schema: i32) -> f64 {
    let schema = schema.clamp(-4, 8);
    // 2^(index · 2^-schema), computed as Prometheus does: an exact power of two times a
    // fraction in [0.5, 1) for positive schemas, so bounds at powers of two are exact.
    if schema <= 0 {
        let exp = i64::from(index) << (-schema);
        if exp == 1024 {
            return f64::MAX;
        }
        return ldexp(1.0, exp);
    }
    let per = 1i64 << schema;
    let idx = i64::from(index);
    let frac_idx = idx & (per - 1);
    let frac = (frac_idx as f64 / per as f64 - 1.0).exp2();
    let exp = (idx >> schema) + 1;
    if frac_idx == 0 && exp == 1025 {
        return f64::MAX;
    }
    ldexp(frac, exp)
}

fn ldexp(frac: f64, exp: i64) -> f64 {
    if exp > 1100 {
        return f64::INFINITY;
    }
    if exp < -1100 {
        return 0.0;
    }
    // Two steps keep 2^exp representable near the ends of the range.
    let half = exp / 2;
    frac * (half as f64).exp2() * ((exp - half) as f64).exp2()
}

/// `(index, count)` of every bucket of one side.
fn flatten(spans: &[Span], buckets: &[f64]) -> Vec<(i32, f64)> {
    let mut out = Vec::with_capacity(buckets.len());
    let mut idx = 0i32;
    let mut it = buckets.iter();
    for (n, s) in spans.iter().enumerate() {
        idx = if n == 0 {
            s.offset
        } else {
            idx.saturating_add(s.offset)
        };
        for _ in 0..s.length {
            if let Some(c) = it.next() {
                out.push((idx, *c));
            }
            idx = idx.saturating_add(1);
        }
    }
    out
}

/// Spans and buckets from `(index, count)` in increasing index order, leaving out empty buckets
/// (a gap of up to `keep_empty` empty buckets stays inside a span).
fn build(pairs: &[(i32, f64)], keep_empty: u32) -> (Vec<Span>, Vec<f64>) {
    spans_of(pairs, keep_empty, true)
}

/// [`build`], keeping buckets whose count is zero unless `drop_zeros`.
fn spans_of(pairs: &[(i32, f64)], keep_empty: u32, drop_zeros: bool) -> (Vec<Span>, Vec<f64>) {
    let mut spans: Vec<Span> = Vec::new();
    let mut buckets = Vec::new();
    let mut next: Option<i32> = None; // the index after the current span's end
    for &(i, c) in pairs {
        if drop_zeros && c == 0.0 {
            continue;
        }
        match next {
            Some(n) if i >= n && i64::from(i) - i64::from(n) <= i64::from(keep_empty) => {
                let last = spans.last_mut().expect("a span is open");
                buckets.extend(std::iter::repeat_n(0.0, (i - n) as usize));
                last.length += (i - n) as u32 + 1;
            }
            Some(n) => spans.push(Span {
                offset: i - n,
                length: 1,
            }),
            None => spans.push(Span {
                offset: i,
                length: 1,
            }),
        }
        buckets.push(c);
        next = Some(i.saturating_add(1));
    }
    (spans, buckets)
}

/// The index bucket `index` of `from` falls in at the coarser schema `to`.
fn target_index(index: i32, from: i32, to: i32) -> i32 {
    let shift = (from - to).clamp(0, 62) as u32;
    (((i64::from(index) - 1) >> shift) + 1) as i32
}

impl FloatHistogram {
    pub fn is_custom(&self) -> bool {
        self.schema == CUSTOM_BUCKETS_SCHEMA
    }

    /// The bounds of bucket `index`: `(lower, upper)`.
    fn bounds(&self, index: i32) -> (f64, f64) {
        if self.is_custom() {
            let cv = &self.custom_values;
            let at = |i: i32| -> f64 {
                if i < 0 {
                    f64::NEG_INFINITY
                } else {
                    cv.get(i as usize).copied().unwrap_or(f64::INFINITY)
                }
            };
            return (at(index - 1), at(index));
        }
        (
            exponential_bound(index - 1, self.schema),
            exponential_bound(index, self.schema),
        )
    }

    /// The positive buckets, in increasing order.
    pub fn positive(&self) -> Vec<Bucket> {
        flatten(&self.positive_spans, &self.positive_buckets)
            .into_iter()
            .map(|(index, count)| {
                let (lower, upper) = self.bounds(index);
                Bucket {
                    lower,
                    upper,
                    count,
                    index,
                }
            })
            .collect()
    }

    /// The negative buckets, from the one nearest zero outwards (bounds negative).
    pub fn negative(&self) -> Vec<Bucket> {
        flatten(&self.negative_spans, &self.negative_buckets)
            .into_iter()
            .map(|(index, count)| {
                let (lower, upper) = self.bounds(index);
                Bucket {
                    lower: -upper,
                    upper: -lower,
                    count,
                    index,
                }
            })
            .collect()
    }

    /// Every bucket from the lowest to the highest: negative ones, the zero bucket (when it has
    /// a count), positive ones; a bucket reaching into the zero bucket is cut at its threshold
    /// (as Prometheus's `AllBucketIterator`).
    pub fn all_buckets(&self) -> Vec<Bucket> {
        let zt = self.zero_threshold;
        let clip = |mut b: Bucket| {
            if b.upper < 0.0 && b.upper > -zt {
                b.upper = -zt;
            } else if b.lower > 0.0 && b.lower < zt {
                b.lower = zt;
            }
            b
        };
        let mut out: Vec<Bucket> = self.negative().into_iter().rev().map(clip).collect();
        if !self.is_custom() && self.zero_count > 0.0 {
            out.push(Bucket {
                lower: -self.zero_threshold,
                upper: self.zero_threshold,
                count: self.zero_count,
                index: 0,
            });
        }
        out.extend(self.positive().into_iter().map(clip));
        out
    }

    /// Leaves out empty buckets, keeping runs of at most `keep_empty` empty buckets inside a
    /// span, and merges adjacent spans.
    pub fn compact(&mut self, keep_empty: u32) {
        let (ps, pb) = build(
            &flatten(&self.positive_spans, &self.positive_buckets),
            keep_empty,
        );
        let (ns, nb) = build(
            &flatten(&self.negative_spans, &self.negative_buckets),
            keep_empty,
        );
        self.positive_spans = ps;
        self.positive_buckets = pb;
        self.negative_spans = ns;
        self.negative_buckets = nb;
    }

    /// Whether `other` is the same histogram: the layout exactly (once both are compacted),
    /// the counts and sum within `tolerance` (relative, or absolute near zero).
    pub fn approx_eq(&self, other: &FloatHistogram, tolerance: f64) -> bool {
        // Prometheus's almost.Equal: relative to the sum of magnitudes, exact at zero.
        let close = |a: f64, b: f64| {
            (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() / (a.abs() + b.abs()) <= tolerance
        };
        let (mut a, mut b) = (self.clone(), other.clone());
        a.compact(0);
        b.compact(0);
        let same = |x: &[f64], y: &[f64]| {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| close(*p, *q))
        };
        a.schema == b.schema
            && a.zero_threshold == b.zero_threshold
            && a.positive_spans == b.positive_spans
            && a.negative_spans == b.negative_spans
            && close(a.count, b.count)
            && close(a.sum, b.sum)
            && close(a.zero_count, b.zero_count)
            && same(&a.positive_buckets, &b.positive_buckets)
            && same(&a.negative_buckets, &b.negative_buckets)
            && (!a.is_custom() || a.custom_values == b.custom_values)
    }

    /// Lowers the resolution to `schema` (coarser: smaller, -4 at least), merging buckets.
    pub fn reduce_resolution(&mut self, schema: i32) {
        let schema = schema.max(-4);
        if self.is_custom() || schema >= self.schema {
            return;
        }
        let merge = |spans: &[Span], buckets: &[f64]| {
            let mut pairs: Vec<(i32, f64)> = Vec::new();
            for (i, c) in flatten(spans, buckets) {
                let t = target_index(i, self.schema, schema);
                match pairs.last_mut() {
                    Some(last) if last.0 == t => last.1 += c,
                    _ => pairs.push((t, c)),
                }
            }
            build(&pairs, 0)
        };
        let (ps, pb) = merge(&self.positive_spans, &self.positive_buckets);
        let (ns, nb) = merge(&self.negative_spans, &self.negative_buckets);
        self.positive_spans = ps;
        self.positive_buckets = pb;
        self.negative_spans = ns;
        self.negative_buckets = nb;
        self.schema = schema;
    }

    /// Widens the zero bucket to `threshold`: buckets wholly inside it move into it (a bucket
    /// reaching past it widens the threshold to its upper bound, as Prometheus does).
    pub fn widen_zero_bucket(&mut self, threshold: f64) {
        if self.is_custom() || threshold <= self.zero_threshold {
            return;
        }
        let mut threshold = threshold;
        // A populated bucket straddling the threshold is taken in whole, which may make the
        // threshold straddle another: until none does.
        loop {
            let before = threshold;
            for b in self.positive().into_iter().chain(self.negative()) {
                let (lo, hi) = (
                    b.lower.abs().min(b.upper.abs()),
                    b.lower.abs().max(b.upper.abs()),
                );
                if b.count != 0.0 && lo < threshold && hi > threshold {
                    threshold = hi;
                }
            }
            if threshold == before {
                break;
            }
        }
        let mut moved = 0.0;
        let keep = |bs: Vec<Bucket>, moved: &mut f64| -> Vec<(i32, f64)> {
            bs.into_iter()
                .filter_map(|b| {
                    if b.lower.abs().max(b.upper.abs()) <= threshold {
                        *moved += b.count;
                        None
                    } else {
                        Some((b.index, b.count))
                    }
                })
                .collect()
        };
        let pos = keep(self.positive(), &mut moved);
        let neg = keep(self.negative(), &mut moved);
        (self.positive_spans, self.positive_buckets) = build(&pos, 0);
        (self.negative_spans, self.negative_buckets) = build(&neg, 0);
        self.zero_count += moved;
        self.zero_threshold = threshold;
    }

    /// `self + other` (or `self - other` with `negate`), at the coarser schema and the wider zero
    /// bucket; the result's hint as Prometheus's `adjustCounterReset` gives it. Custom buckets
    /// with different bounds combine over the bounds both have (`bounds_reconciled`).
    /// Exponential and custom buckets do not combine.
    pub fn combine(&self, other: &FloatHistogram, negate: bool) -> Result<Combined, String> {
        if self.is_custom() != other.is_custom() {
            return Err("histograms with exponential and custom buckets cannot be combined".into());
        }
        let sign = if negate { -1.0 } else { 1.0 };
        let (hint, hint_collision) = adjust_hint(self.hint, other.hint);
        let add = |x: Vec<(i32, f64)>, y: Vec<(i32, f64)>| {
            let mut m: std::collections::BTreeMap<i32, f64> = x.into_iter().collect();
            for (i, c) in y {
                *m.entry(i).or_insert(0.0) += sign * c;
            }
            // Buckets that come out empty stay in place as zeros until compacted.
            spans_of(&m.into_iter().collect::<Vec<_>>(), 0, false)
        };
        if self.is_custom() {
            let (a, b, bounds_reconciled) = if self.custom_values == other.custom_values {
                (self.clone(), other.clone(), false)
            } else {
                let common: Vec<f64> = self
                    .custom_values
                    .iter()
                    .copied()
                    .filter(|v| other.custom_values.contains(v))
                    .collect();
                (self.onto_bounds(&common), other.onto_bounds(&common), true)
            };
            let (ps, pb) = add(
                flatten(&a.positive_spans, &a.positive_buckets),
                flatten(&b.positive_spans, &b.positive_buckets),
            );
            return Ok(Combined {
                h: FloatHistogram {
                    hint,
                    count: a.count + sign * b.count,
                    sum: a.sum + sign * b.sum,
                    positive_spans: ps,
                    positive_buckets: pb,
                    ..a
                },
                hint_collision,
                bounds_reconciled,
            });
        }
        let (mut a, mut b) = (self.clone(), other.clone());
        let schema = a.schema.min(b.schema);
        a.reduce_resolution(schema);
        b.reduce_resolution(schema);
        // Widening one zero bucket may take in a bucket that reaches past the other's: until
        // both agree.
        loop {
            let zt = a.zero_threshold.max(b.zero_threshold);
            a.widen_zero_bucket(zt);
            b.widen_zero_bucket(zt);
            if a.zero_threshold == b.zero_threshold {
                break;
            }
        }
        let (ps, pb) = add(
            flatten(&a.positive_spans, &a.positive_buckets),
            flatten(&b.positive_spans, &b.positive_buckets),
        );
        let (ns, nb) = add(
            flatten(&a.negative_spans, &a.negative_buckets),
            flatten(&b.negative_spans, &b.negative_buckets),
        );
        Ok(Combined {
            h: FloatHistogram {
                hint,
                schema,
                zero_threshold: a.zero_threshold,
                zero_count: a.zero_count + sign * b.zero_count,
                count: a.count + sign * b.count,
                sum: a.sum + sign * b.sum,
                positive_spans: ps,
                positive_buckets: pb,
                negative_spans: ns,
                negative_buckets: nb,
                custom_values: Vec::new(),
            },
            hint_collision,
            bounds_reconciled: false,
        })
    }

    /// A custom-bucket histogram re-bucketed onto `bounds` (a subset of its own): each bucket
    /// goes to the first bound at or above its upper bound, or to +Inf.
    fn onto_bounds(&self, bounds: &[f64]) -> FloatHistogram {
        let mut counts = vec![0.0; bounds.len() + 1];
        for (i, c) in flatten(&self.positive_spans, &self.positive_buckets) {
            let target = match self.custom_values.get(i.max(0) as usize) {
                Some(upper) => bounds.partition_point(|b| b < upper),
                None => bounds.len(),
            };
            counts[target] += c;
        }
        let pairs: Vec<(i32, f64)> = counts
            .into_iter()
            .enumerate()
            .map(|(i, c)| (i as i32, c))
            .collect();
        let (positive_spans, positive_buckets) = spans_of(&pairs, 0, false);
        FloatHistogram {
            positive_spans,
            positive_buckets,
            custom_values: bounds.to_vec(),
            ..self.clone()
        }
    }

    /// Every count and the sum multiplied by `factor` (Prometheus's `Mul`; `Div` is the
    /// reciprocal). A negative factor makes a gauge histogram.
    pub fn scaled(&self, factor: f64) -> FloatHistogram {
        let mut h = self.clone();
        h.count *= factor;
        h.sum *= factor;
        h.zero_count *= factor;
        h.positive_buckets.iter_mut().for_each(|c| *c *= factor);
        h.negative_buckets.iter_mut().for_each(|c| *c *= factor);
        if factor < 0.0 {
            h.hint = ResetHint::Gauge;
        }
        h
    }

    /// Every count and the sum divided by `divisor` (Prometheus's `Div`: a division by zero
    /// gives infinities or NaN as the float division does).
    pub fn divided(&self, divisor: f64) -> FloatHistogram {
        let mut h = self.clone();
        h.count /= divisor;
        h.sum /= divisor;
        h.zero_count /= divisor;
        h.positive_buckets.iter_mut().for_each(|c| *c /= divisor);
        h.negative_buckets.iter_mut().for_each(|c| *c /= divisor);
        if divisor < 0.0 {
            h.hint = ResetHint::Gauge;
        }
        h
    }

    /// Go's `FloatHistogram.String()`, as `count_values` labels a histogram: `{count:20,
    /// sum:10, [-2,-1):2, [-0.001,0.001]:2, (0.5,1]:1}` (only populated buckets; numbers as
    /// `%g` through `fmt_float`).
    pub fn go_string(&self, fmt_float: impl Fn(f64) -> String) -> String {
        let mut out = format!(
            "{{count:{}, sum:{}",
            fmt_float(self.count),
            fmt_float(self.sum)
        );
        for b in self.negative().iter().rev().filter(|b| b.count != 0.0) {
            out += &format!(
                ", [{},{}):{}",
                fmt_float(b.lower),
                fmt_float(b.upper),
                fmt_float(b.count)
            );
        }
        if self.zero_count != 0.0 {
            out += &format!(
                ", [{},{}]:{}",
                fmt_float(-self.zero_threshold),
                fmt_float(self.zero_threshold),
                fmt_float(self.zero_count)
            );
        }
        for b in self.positive().iter().filter(|b| b.count != 0.0) {
            // A custom histogram's first bucket includes its lower bound.
            let open = if self.is_custom() && b.index == 0 {
                '['
            } else {
                '('
            };
            out += &format!(
                ", {open}{},{}]:{}",
                fmt_float(b.lower),
                fmt_float(b.upper),
                fmt_float(b.count)
            );
        }
        out.push('}');
        out
    }

    /// Whether both are the same histogram exactly (Prometheus's `Equals`): sums compared bit
    /// for bit where NaN, layout after compaction, every count.
    pub fn equals(&self, other: &FloatHistogram) -> bool {
        let (mut a, mut b) = (self.clone(), other.clone());
        a.compact(0);
        b.compact(0);
        let sum_eq = a.sum == b.sum
            || (a.sum.is_nan() && b.sum.is_nan() && a.sum.to_bits() == b.sum.to_bits());
        a.schema == b.schema
            && a.zero_threshold == b.zero_threshold
            && a.zero_count == b.zero_count
            && a.count == b.count
            && sum_eq
            && a.positive_spans == b.positive_spans
            && a.negative_spans == b.negative_spans
            && a.positive_buckets == b.positive_buckets
            && a.negative_buckets == b.negative_buckets
            && (!a.is_custom() || a.custom_values == b.custom_values)
    }

    /// Whether a counter reset happened between `previous` and this histogram: as its hint says
    /// when it says, else when the count or any bucket went down, the schema went up (finer),
    /// the zero bucket narrowed, or the bucket layout changed kind.
    pub fn detect_reset(&self, previous: &FloatHistogram) -> bool {
        match self.hint {
            ResetHint::Reset => return true,
            ResetHint::NotReset => return false,
            ResetHint::Unknown | ResetHint::Gauge => {}
        }
        if self.count < previous.count || self.is_custom() != previous.is_custom() {
            return true;
        }
        if self.is_custom() && self.custom_values != previous.custom_values {
            // Compared over the bounds both have.
            let common: Vec<f64> = self
                .custom_values
                .iter()
                .copied()
                .filter(|v| previous.custom_values.contains(v))
                .collect();
            return self
                .onto_bounds(&common)
                .detect_reset(&previous.onto_bounds(&common));
        }
        if self.schema > previous.schema || self.zero_threshold < previous.zero_threshold {
            return true;
        }
        let mut prev = previous.clone();
        prev.reduce_resolution(self.schema);
        prev.widen_zero_bucket(self.zero_threshold);
        // The new threshold inside a populated bucket of the previous histogram.
        if prev.zero_threshold != self.zero_threshold || self.zero_count < prev.zero_count {
            return true;
        }
        let went_down = |now: Vec<(i32, f64)>, before: Vec<(i32, f64)>| {
            let now: std::collections::BTreeMap<i32, f64> = now.into_iter().collect();
            before
                .into_iter()
                .any(|(i, c)| now.get(&i).copied().unwrap_or(0.0) < c)
        };
        went_down(
            flatten(&self.positive_spans, &self.positive_buckets),
            flatten(&prev.positive_spans, &prev.positive_buckets),
        ) || went_down(
            flatten(&self.negative_spans, &self.negative_buckets),
            flatten(&prev.negative_spans, &prev.negative_buckets),
        )
    }

    /// Parses Prometheus's test notation, `{{schema:0 sum:5 count:4 z_bucket:1 z_bucket_w:0.001
    /// buckets:[1 2 1] n_buckets:[1] offset:0 n_offset:0 custom_values:[1 2]
    /// counter_reset_hint:gauge}}` (the braces optional). Returns the histogram and whether a
    /// hint was given.
    pub fn parse_notation(text: &str) -> Result<(FloatHistogram, bool), String> {
        let body = text.trim();
        let body = body
            .strip_prefix("{{")
            .and_then(|b| b.strip_suffix("}}"))
            .unwrap_or(body);
        let mut h = FloatHistogram::default();
        let mut hint_given = false;
        let (mut pos, mut neg) = (Vec::new(), Vec::new());
        let (mut off, mut noff) = (0i32, 0i32);
        let mut seen: Vec<String> = Vec::new();
        let mut rest = body.trim();
        while !rest.is_empty() {
            let (key, after) = rest
                .split_once(':')
                .ok_or_else(|| format!("expected key:value in {body:?}"))?;
            let key = key.trim();
            if seen.iter().any(|k| k == key) {
                return Err(format!("duplicate key {key:?} in {body:?}"));
            }
            seen.push(key.to_string());
            let after = after.trim_start();
            let (value, next) = if let Some(list) = after.strip_prefix('[') {
                let end = list
                    .find(']')
                    .ok_or_else(|| format!("unclosed [ after {key}"))?;
                (&list[..end], &list[end + 1..])
            } else {
                let end = after.find(char::is_whitespace).unwrap_or(after.len());
                (&after[..end], &after[end..])
            };
            let num = |v: &str| -> Result<f64, String> {
                crate::text::parse_float(v).ok_or_else(|| format!("{key}: not a number: {v:?}"))
            };
            let list =
                |v: &str| -> Result<Vec<f64>, String> { v.split_whitespace().map(num).collect() };
            let int = |v: &str| -> Result<i32, String> {
                v.parse()
                    .map_err(|_| format!("{key}: not an integer: {v:?}"))
            };
            match key {
                "schema" => h.schema = int(value)?,
                "sum" => h.sum = num(value)?,
                "count" => h.count = num(value)?,
                "z_bucket" => h.zero_count = num(value)?,
                "z_bucket_w" => h.zero_threshold = num(value)?,
                "buckets" => pos = list(value)?,
                "n_buckets" => neg = list(value)?,
                "offset" => off = int(value)?,
                "n_offset" => noff = int(value)?,
                "custom_values" => h.custom_values = list(value)?,
                "counter_reset_hint" => {
                    hint_given = true;
                    h.hint = match value {
                        "unknown" => ResetHint::Unknown,
                        "reset" => ResetHint::Reset,
                        "not_reset" => ResetHint::NotReset,
                        "gauge" => ResetHint::Gauge,
                        other => {
                            return Err(format!("counter_reset_hint: unknown value {other:?}"))
                        }
                    }
                }
                other => return Err(format!("unknown key {other:?} in {body:?}")),
            }
            rest = next.trim_start();
        }
        let side = |buckets: Vec<f64>, offset: i32| -> (Vec<Span>, Vec<f64>) {
            if buckets.is_empty() {
                (Vec::new(), buckets)
            } else {
                (
                    vec![Span {
                        offset,
                        length: buckets.len() as u32,
                    }],
                    buckets,
                )
            }
        };
        if !(-4..=8).contains(&h.schema) && !h.is_custom() {
            return Err(format!(
                "schema {}: -4 to 8, or -53 (custom buckets)",
                h.schema
            ));
        }
        let limit = 1 << 20;
        if off.abs() > limit || noff.abs() > limit {
            return Err(format!("offset out of range (at most {limit} either way)"));
        }
        (h.positive_spans, h.positive_buckets) = side(pos, off);
        (h.negative_spans, h.negative_buckets) = side(neg, noff);
        Ok((h, hint_given))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(text: &str) -> FloatHistogram {
        FloatHistogram::parse_notation(text).expect(text).0
    }

    #[test]
    fn the_test_notation_reads_as_prometheus_builds_it() {
        let (x, hinted) = FloatHistogram::parse_notation(
            "{{schema:0 sum:10 count:20 z_bucket_w:0.001 z_bucket:2 buckets:[1 2] n_buckets:[1 2] counter_reset_hint:gauge}}",
        )
        .unwrap();
        assert!(hinted);
        assert_eq!(x.hint, ResetHint::Gauge);
        assert_eq!((x.schema, x.sum, x.count), (0, 10.0, 20.0));
        assert_eq!((x.zero_threshold, x.zero_count), (0.001, 2.0));
        assert_eq!(
            x.positive_spans,
            [Span {
                offset: 0,
                length: 2
            }]
        );
        assert_eq!(x.negative_buckets, [1.0, 2.0]);
        let (y, hinted) = FloatHistogram::parse_notation("{{}}").unwrap();
        assert!(!hinted);
        assert_eq!(y, FloatHistogram::default());
        let z = h("{{schema:-53 sum:3 count:3 custom_values:[5 10] buckets:[3]}}");
        assert!(z.is_custom());
        for bad in [
            "{{schema:9}}",
            "{{schema:-5}}",
            "{{offset:2000000000 buckets:[1]}}",
            "{{schema:x}}",
            "{{count:1 count:2}}",
            "{{nope:1}}",
            "{{buckets:[1 2}}",
            "{{counter_reset_hint:maybe}}",
        ] {
            assert!(FloatHistogram::parse_notation(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bucket_bounds_follow_the_schema() {
        // Schema 0: (0.5, 1], (1, 2], (2, 4].
        let x = h("{{schema:0 count:4 buckets:[1 2 1]}}");
        let b: Vec<(f64, f64, f64)> = x
            .positive()
            .iter()
            .map(|b| (b.lower, b.upper, b.count))
            .collect();
        assert_eq!(b, [(0.5, 1.0, 1.0), (1.0, 2.0, 2.0), (2.0, 4.0, 1.0)]);
        // Schema 1: bounds at powers of the square root of 2; schema -1: powers of 4.
        assert!((exponential_bound(1, 1) - 2f64.sqrt()).abs() < 1e-15);
        assert_eq!(exponential_bound(2, 1), 2.0);
        assert!((exponential_bound(-1, 1) - 0.5f64.sqrt()).abs() < 1e-15);
        assert_eq!(exponential_bound(1, -1), 4.0);
        assert_eq!(exponential_bound(-3, 0), 0.125);
        // Negative buckets mirror, nearest zero first; all buckets run low to high.
        let y = h("{{schema:0 count:5 z_bucket:1 z_bucket_w:0.5 buckets:[1] n_buckets:[2 1]}}");
        let all: Vec<(f64, f64)> = y.all_buckets().iter().map(|b| (b.lower, b.upper)).collect();
        assert_eq!(all, [(-2.0, -1.0), (-1.0, -0.5), (-0.5, 0.5), (0.5, 1.0)]);
        // Custom bounds: (-Inf, 5], (5, 10], (10, +Inf].
        let z = h("{{schema:-53 count:3 custom_values:[5 10] buckets:[1 1 1]}}");
        let b: Vec<(f64, f64)> = z.positive().iter().map(|b| (b.lower, b.upper)).collect();
        assert_eq!(
            b,
            [(f64::NEG_INFINITY, 5.0), (5.0, 10.0), (10.0, f64::INFINITY)]
        );
    }

    #[test]
    fn compaction_drops_empty_buckets_and_comparison_ignores_layout_noise() {
        let mut x = h("{{schema:0 count:3 buckets:[0 1 0 0 2 0] offset:-1}}");
        x.compact(0);
        assert_eq!(
            x.positive_spans,
            [
                Span {
                    offset: 0,
                    length: 1
                },
                Span {
                    offset: 2,
                    length: 1
                }
            ]
        );
        assert_eq!(x.positive_buckets, [1.0, 2.0]);
        let y = h("{{schema:0 count:3 buckets:[1 0 0 2]}}");
        assert!(x.approx_eq(&y, 1e-6));
        assert!(!x.approx_eq(&h("{{schema:0 count:3 buckets:[1 0 2]}}"), 1e-6));
        assert!(x.approx_eq(&h("{{schema:0 count:3.0000001 buckets:[1 0 0 2]}}"), 1e-6));
        // Near zero, relative: 0 and 5e-7 differ.
        assert!(!h("{{count:0}}").approx_eq(&h("{{count:5e-7}}"), 1e-6));
        // Resolution reduction joins adjacent buckets into one span.
        let mut f = h("{{schema:1 count:4 buckets:[1 1 1 1] offset:1}}");
        f.reduce_resolution(0);
        assert_eq!(
            f.positive_spans,
            [Span {
                offset: 1,
                length: 2
            }]
        );
        assert_eq!(f.positive_buckets, [2.0, 2.0]);
    }

    #[test]
    fn addition_goes_to_the_coarser_schema_and_the_wider_zero_bucket() {
        // Schema 1 buckets 1..4 are (√2^0, √2^1], …: at schema 0 they pair into (1, 2], (2, 4].
        let fine = h("{{schema:1 count:4 sum:6 buckets:[1 1 1 1] offset:1}}");
        let coarse = h("{{schema:0 count:2 sum:3 buckets:[1 1] offset:1}}");
        let s = fine.combine(&coarse, false).unwrap().h;
        assert_eq!(s.schema, 0);
        assert_eq!((s.count, s.sum), (6.0, 9.0));
        let b: Vec<(f64, f64, f64)> = s
            .positive()
            .iter()
            .map(|b| (b.lower, b.upper, b.count))
            .collect();
        assert_eq!(b, [(1.0, 2.0, 3.0), (2.0, 4.0, 3.0)]);
        // A wider zero bucket swallows the buckets inside it.
        let a = h("{{schema:0 count:3 z_bucket:1 z_bucket_w:0.5 buckets:[2] offset:0}}");
        let w = h("{{schema:0 count:1 z_bucket:1 z_bucket_w:1}}");
        let s = a.combine(&w, false).unwrap().h;
        assert_eq!((s.zero_threshold, s.zero_count, s.count), (1.0, 4.0, 4.0));
        assert!(s.positive_buckets.iter().all(|c| *c == 0.0));
        // Hints: gauge wins, then unknown; reset against not_reset collides.
        let d = coarse
            .combine(&h("{{counter_reset_hint:gauge}}"), true)
            .unwrap();
        assert_eq!(
            (d.h.hint, d.h.count, d.hint_collision),
            (ResetHint::Gauge, 2.0, false)
        );
        let c = h("{{counter_reset_hint:reset}}")
            .combine(&h("{{counter_reset_hint:not_reset}}"), false)
            .unwrap();
        assert_eq!((c.h.hint, c.hint_collision), (ResetHint::Unknown, true));
        // Exponential and custom buckets do not mix; different custom bounds meet on the
        // bounds both have.
        let nhcb = h("{{schema:-53 count:3 custom_values:[1 2 5] buckets:[1 1 1]}}");
        assert!(coarse.combine(&nhcb, false).is_err());
        let r = nhcb
            .combine(
                &h("{{schema:-53 count:2 custom_values:[2 4] buckets:[1 0 1]}}"),
                false,
            )
            .unwrap();
        assert!(r.bounds_reconciled);
        assert_eq!(r.h.custom_values, [2.0]);
        assert_eq!(r.h.positive_buckets, [3.0, 2.0]);
        assert_eq!(r.h.count, 5.0);
    }

    #[test]
    fn a_reset_is_what_the_hint_says_else_anything_that_went_down() {
        let before = h("{{schema:0 count:4 buckets:[2 2]}}");
        assert!(!h("{{schema:0 count:5 buckets:[2 3]}}").detect_reset(&before));
        assert!(
            h("{{schema:0 count:5 buckets:[3 1 1]}}").detect_reset(&before),
            "a bucket went down"
        );
        assert!(
            h("{{schema:0 count:3 buckets:[2 2]}}").detect_reset(&before),
            "the count went down"
        );
        assert!(
            h("{{schema:1 count:5 buckets:[2 3]}}").detect_reset(&before),
            "a finer schema"
        );
        // At a coarser schema, (0.5, 1] and (1, 2] fall in (0.25, 1] and (1, 4].
        assert!(
            !h("{{schema:-1 count:5 buckets:[2 3]}}").detect_reset(&before),
            "coarser, nothing lost"
        );
        assert!(
            h("{{schema:-1 count:5 buckets:[5]}}").detect_reset(&before),
            "coarser, (1, 4] emptied"
        );
        assert!(
            h("{{schema:0 count:5 buckets:[2 3] counter_reset_hint:reset}}").detect_reset(&before)
        );
        assert!(!h("{{schema:0 count:1 counter_reset_hint:not_reset}}").detect_reset(&before));
    }
}
