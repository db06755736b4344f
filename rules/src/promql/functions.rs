//! PromQL functions (over floats, and native histograms where Prometheus defines them).

use std::sync::Arc;

use vigil_wire::histogram::{FloatHistogram, HSample};
use vigil_wire::{Labels, Sample, METRIC_NAME};

use super::eval::{check_unique, metric_name, Evaluator};
use super::mathx::{go_max, go_min, kahan_inc, quantile, AvgAcc, GoFloat};
use super::plan::{Node, ValueType};
use super::storage::SeriesData;
use super::value::{RangeSeries, Severity, Value, VectorSample};
use super::EvalError;

macro_rules! funcs {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// Every function the engine evaluates.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Func { $($variant),* }
        impl Func {
            pub fn from_name(n: &str) -> Option<Func> {
                match n { $($name => Some(Func::$variant),)* _ => None }
            }
            pub fn name(self) -> &'static str {
                match self { $(Func::$variant => $name),* }
            }
        }
    };
}

funcs! {
    Abs => "abs", Absent => "absent", AbsentOverTime => "absent_over_time", Acos => "acos", Acosh => "acosh",
    Asin => "asin", Asinh => "asinh", Atan => "atan", Atanh => "atanh", AvgOverTime => "avg_over_time",
    Ceil => "ceil", Changes => "changes", Clamp => "clamp", ClampMax => "clamp_max", ClampMin => "clamp_min",
    Cos => "cos", Cosh => "cosh", CountOverTime => "count_over_time", DaysInMonth => "days_in_month",
    DayOfMonth => "day_of_month", DayOfWeek => "day_of_week", DayOfYear => "day_of_year", Deg => "deg",
    Delta => "delta", Deriv => "deriv", DoubleExpSmoothing => "double_exponential_smoothing", Exp => "exp",
    FirstOverTime => "first_over_time", Floor => "floor", HistogramQuantile => "histogram_quantile",
    HistogramQuantiles => "histogram_quantiles",
    HistogramAvg => "histogram_avg", HistogramCount => "histogram_count", HistogramFraction => "histogram_fraction",
    HistogramStddev => "histogram_stddev", HistogramStdvar => "histogram_stdvar", HistogramSum => "histogram_sum",
    HoltWinters => "holt_winters", Hour => "hour", Idelta => "idelta", Increase => "increase", Info => "info",
    Irate => "irate", LabelJoin => "label_join", LabelReplace => "label_replace", LastOverTime => "last_over_time",
    Ln => "ln", Log10 => "log10", Log2 => "log2", MadOverTime => "mad_over_time", MaxOverTime => "max_over_time",
    MinOverTime => "min_over_time", Minute => "minute", Month => "month", Pi => "pi",
    PredictLinear => "predict_linear", PresentOverTime => "present_over_time",
    QuantileOverTime => "quantile_over_time", Rad => "rad", Rate => "rate", Resets => "resets", Round => "round",
    Scalar => "scalar", Sgn => "sgn", Sin => "sin", Sinh => "sinh", Sort => "sort", SortByLabel => "sort_by_label",
    SortByLabelDesc => "sort_by_label_desc", SortDesc => "sort_desc", Sqrt => "sqrt",
    StddevOverTime => "stddev_over_time", StdvarOverTime => "stdvar_over_time", SumOverTime => "sum_over_time",
    Tan => "tan", Tanh => "tanh", Time => "time", Timestamp => "timestamp",
    TsOfFirstOverTime => "ts_of_first_over_time", TsOfLastOverTime => "ts_of_last_over_time",
    TsOfMaxOverTime => "ts_of_max_over_time", TsOfMinOverTime => "ts_of_min_over_time", Vector => "vector",
    Year => "year", Step => "step", Range => "range", Start => "start", End => "end", MinOf => "min_of",
    MaxOf => "max_of",
}

impl Func {
    /// The functions that map each float to another (`abs`, `ln`, `sin`, `deg`, …).
    pub(crate) fn is_math(self) -> bool {
        use Func as F;
        matches!(
            self,
            F::Abs
                | F::Ceil
                | F::Floor
                | F::Exp
                | F::Ln
                | F::Log2
                | F::Log10
                | F::Sqrt
                | F::Sgn
                | F::Sin
                | F::Cos
                | F::Tan
                | F::Asin
                | F::Acos
                | F::Atan
                | F::Sinh
                | F::Cosh
                | F::Tanh
                | F::Asinh
                | F::Acosh
                | F::Atanh
                | F::Deg
                | F::Rad
        )
    }

    pub fn return_type(self) -> ValueType {
        match self {
            Func::Pi
            | Func::Time
            | Func::Scalar
            | Func::Step
            | Func::Range
            | Func::Start
            | Func::End
            | Func::MinOf
            | Func::MaxOf => ValueType::Scalar,
            _ => ValueType::Vector,
        }
    }
}

/// One range-vector argument: either windows into preloaded selector data or a subquery's
/// evaluated series.
pub(crate) struct RangeArg {
    data: Arc<Vec<SeriesData>>,
    windows: Vec<(usize, usize)>,
    owned: Vec<RangeSeries>,
    /// `(start, end]` of the window, for extrapolation.
    pub(crate) start: i64,
    pub(crate) end: i64,
    /// The selector's metric name, for annotations.
    pub(crate) name: Option<String>,
    /// The selector's id when the windows are a selector's (see [`Evaluator::counter_checked`]).
    sel: Option<usize>,
}

impl RangeArg {
    /// Every series with a sample in its window: its floats and its histograms.
    fn for_each_mixed(&self, mut f: impl FnMut(&Labels, bool, &[Sample], &[HSample])) {
        for (sd, &(lo, hi)) in self.data.iter().zip(&self.windows) {
            let h = super::eval::hist_window(&sd.histograms, self.start, self.end);
            if lo < hi || !h.is_empty() {
                f(&sd.labels, false, &sd.samples[lo..hi], &h);
            }
        }
        for s in &self.owned {
            if !s.points.is_empty() || !s.histograms.is_empty() {
                f(&s.labels, s.drop_name, &s.points, &s.histograms);
            }
        }
    }

    fn for_each(&self, mut f: impl FnMut(&Labels, bool, &[Sample])) {
        for (sd, &(lo, hi)) in self.data.iter().zip(&self.windows) {
            if lo < hi {
                f(&sd.labels, false, &sd.samples[lo..hi]);
            }
        }
        for s in &self.owned {
            if !s.points.is_empty() {
                f(&s.labels, s.drop_name, &s.points);
            }
        }
    }
}

/// The histogram `rate`/`increase`/`delta` of one series' window: nothing (with Prometheus's
/// warning) when floats and histograms meet in it.
fn hist_rate(
    floats: &[Sample],
    hists: &[HSample],
    arg: &RangeArg,
    counter: bool,
    rate: bool,
    name: &str,
    notes: &mut Vec<super::hist::Note>,
) -> Option<FloatHistogram> {
    if !floats.is_empty() {
        notes.push((
            Severity::Warning,
            format!("encountered a mix of histograms and floats for metric name {name:?}"),
        ));
        return None;
    }
    super::hist::extrapolated(hists, arg.start, arg.end, counter, rate, name, notes)
}

/// A window's floats and histograms in time order: `(t, Err(float) | Ok(histogram))`.
fn merge_samples<'a>(
    p: &[Sample],
    h: &'a [HSample],
) -> Vec<(i64, Result<&'a FloatHistogram, f64>)> {
    let mut out: Vec<(i64, Result<&FloatHistogram, f64>)> = p
        .iter()
        .map(|x| (x.timestamp_ms, Err(x.value)))
        .chain(h.iter().map(|x| (x.timestamp_ms, Ok(&*x.h))))
        .collect();
    if !p.is_empty() && !h.is_empty() {
        out.sort_by_key(|x| x.0);
    }
    out
}

fn math1(f: Func, x: f64) -> f64 {
    match f {
        Func::Abs => x.abs(),
        Func::Ceil => x.ceil(),
        Func::Floor => x.floor(),
        Func::Exp => x.exp(),
        Func::Ln => x.ln(),
        Func::Log2 => x.log2(),
        Func::Log10 => x.log10(),
        Func::Sqrt => x.sqrt(),
        Func::Sgn => {
            if x < 0.0 {
                -1.0
            } else if x > 0.0 {
                1.0
            } else {
                x
            }
        }
        Func::Sin => x.sin(),
        Func::Cos => x.cos(),
        Func::Tan => x.tan(),
        Func::Asin => x.asin(),
        Func::Acos => x.acos(),
        Func::Atan => x.atan(),
        Func::Sinh => x.sinh(),
        Func::Cosh => x.cosh(),
        Func::Tanh => x.tanh(),
        Func::Asinh => asinh(x),
        Func::Acosh => x.acosh(),
        Func::Atanh => x.atanh(),
        Func::Deg => x * 180.0 / std::f64::consts::PI,
        Func::Rad => x * std::f64::consts::PI / 180.0,
        _ => f64::NAN,
    }
}

/// Civil date (UTC) of a Unix time in seconds: (year, month 1-12, day 1-31, day of week 0=Sunday,
/// day of year 1-366, hour, minute).
fn civil(secs: f64) -> (i64, i64, i64, i64, i64, i64, i64) {
    // Go's time.Unix(int64(f), 0): truncation toward zero.
    let s = secs.trunc() as i64;
    let days = s.div_euclid(86_400);
    let rem = s.rem_euclid(86_400);
    let (y, m, d) = crate::duration::civil_from_days(days);
    let dow = (days + 4).rem_euclid(7);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    const CUM: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let doy = CUM[(m - 1) as usize] + d + i64::from(leap && m > 2);
    (y, m, d, dow, doy, rem / 3600, (rem % 3600) / 60)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => {
            if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 {
                29
            } else {
                28
            }
        }
    }
}

/// Compares strings in natural order: digit runs numerically.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (ab, bb) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < ab.len() && j < bb.len() {
        if ab[i].is_ascii_digit() && bb[j].is_ascii_digit() {
            let si = i;
            while i < ab.len() && ab[i].is_ascii_digit() {
                i += 1;
            }
            let sj = j;
            while j < bb.len() && bb[j].is_ascii_digit() {
                j += 1;
            }
            let na = a[si..i].trim_start_matches('0');
            let nb = b[sj..j].trim_start_matches('0');
            let o = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
            if o != Ordering::Equal {
                return o;
            }
        } else {
            let o = ab[i].cmp(&bb[j]);
            if o != Ordering::Equal {
                return o;
            }
            i += 1;
            j += 1;
        }
    }
    (ab.len() - i).cmp(&(bb.len() - j))
}

/// Prometheus's extrapolated rate/increase/delta over one window.
fn extrapolated(points: &[Sample], start: i64, end: i64, counter: bool, rate: bool) -> Option<f64> {
    extrapolated_scan(points, start, end, counter, rate, counter)
}

/// [`extrapolated`]; `scan_resets` false when the caller knows no counter reset lies in
/// `points` (the sum of corrections is then zero: the same result without reading every point).
fn extrapolated_scan(
    points: &[Sample],
    start: i64,
    end: i64,
    counter: bool,
    rate: bool,
    scan_resets: bool,
) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let (first, last) = (points[0], points[points.len() - 1]);
    let mut result = last.value - first.value;
    if counter && scan_resets {
        let mut prev = first.value;
        for p in &points[1..] {
            if p.value < prev {
                result += prev;
            }
            prev = p.value;
        }
    }
    let factor = super::mathx::extrapolation_factor(
        (first.timestamp_ms, last.timestamp_ms, points.len()),
        (start, end),
        counter.then_some((first.value, result)),
        rate,
    );
    Some(result * factor)
}

fn instant_delta(points: &[Sample], rate: bool) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let (prev, last) = (points[points.len() - 2], points[points.len() - 1]);
    let mut v = if rate && last.value < prev.value {
        last.value
    } else {
        last.value - prev.value
    };
    let dt = last.timestamp_ms - prev.timestamp_ms;
    if dt == 0 {
        return None;
    }
    if rate {
        v /= dt as f64 / 1e3;
    }
    Some(v)
}

/// Least-squares slope and intercept at `at` (ms), with compensated sums.
fn linear_regression(points: &[Sample], at: i64) -> (f64, f64) {
    let init = points[0].value;
    if points.iter().all(|p| p.value == init) {
        if init.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init);
    }
    let (mut n, mut sx, mut cx, mut sy, mut cy, mut sxy, mut cxy, mut sx2, mut cx2) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for p in points {
        n += 1.0;
        let x = (p.timestamp_ms - at) as f64 / 1e3;
        (sx, cx) = kahan_inc(x, sx, cx);
        (sy, cy) = kahan_inc(p.value, sy, cy);
        (sxy, cxy) = kahan_inc(x * p.value, sxy, cxy);
        (sx2, cx2) = kahan_inc(x * x, sx2, cx2);
    }
    let (sx, sy, sxy, sx2) = (sx + cx, sy + cy, sxy + cxy, sx2 + cx2);
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    (slope, sy / n - slope * sx / n)
}

fn variance(points: &[Sample]) -> f64 {
    let (mut n, mut mean, mut cm, mut aux, mut ca) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for p in points {
        n += 1.0;
        let delta = p.value - (mean + cm);
        (mean, cm) = kahan_inc(delta / n, mean, cm);
        (aux, ca) = kahan_inc(delta * (p.value - (mean + cm)), aux, ca);
    }
    (aux + ca) / n
}

fn double_exp_smoothing(points: &[Sample], sf: f64, tf: f64) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let mut s1 = points[0].value;
    let mut b = points[1].value - points[0].value;
    let mut s0 = s1;
    for (i, p) in points.iter().enumerate().skip(1) {
        if i > 1 {
            b = tf * (s1 - s0) + (1.0 - tf) * b;
        }
        s0 = s1;
        s1 = sf * p.value + (1.0 - sf) * (s0 + b);
    }
    Some(s1)
}

impl Evaluator<'_> {
    fn range_arg(&mut self, node: &Node, t: i64) -> Result<RangeArg, EvalError> {
        match node {
            Node::Selector(s) if s.range_ms.is_some() => {
                let (data, windows) = self.matrix_windows(s, t);
                let end = self.selector_ref_time(s, t);
                let arg = RangeArg {
                    data,
                    windows,
                    owned: vec![],
                    start: end - s.range_ms.unwrap_or(0),
                    end,
                    name: s.name.clone(),
                    sel: Some(s.id),
                };
                self.check_range_histograms(&arg)?;
                Ok(arg)
            }
            Node::Subquery {
                range_ms,
                offset_ms,
                at,
                ..
            } => {
                let owned = self.subquery(node, t)?;
                let end = match at {
                    Some(_) => {
                        // The subquery's own reference time.
                        let Node::Subquery { at: Some(a), .. } = node else {
                            unreachable!()
                        };
                        self.at_time(*a)
                    }
                    None => t,
                } - offset_ms;
                let arg = RangeArg {
                    data: Arc::default(),
                    windows: vec![],
                    owned,
                    start: end - range_ms,
                    end,
                    name: None,
                    sel: None,
                };
                self.check_range_histograms(&arg)?;
                Ok(arg)
            }
            _ => Err(EvalError::Execution(
                "expected a range vector argument".into(),
            )),
        }
    }

    fn at_time(&self, a: super::plan::At) -> i64 {
        match a {
            super::plan::At::Start => self.start,
            super::plan::At::End => self.end,
            super::plan::At::Time(t) => t,
        }
    }

    /// A `label_replace` regex, compiled once per query: anchored, `.` matching newlines.
    fn regex(&mut self, src: &str) -> Result<regex::Regex, regex::Error> {
        if let Some(r) = self.regex_cache.get(src) {
            return Ok(r.clone());
        }
        let r = regex::Regex::new(&format!("^(?s:{src})$"))?;
        self.regex_cache.insert(src.to_string(), r.clone());
        Ok(r)
    }

    fn string_arg(&mut self, node: &Node, t: i64) -> Result<String, EvalError> {
        match self.eval(node, t)? {
            Value::String(s) => Ok(s),
            other => Err(EvalError::Execution(format!(
                "expected string, got {}",
                other.type_name()
            ))),
        }
    }

    /// [`Evaluator::over_time`] over floats and histograms: `f` gives a float or a histogram.
    fn over_time_mixed(
        &mut self,
        args: &[Node],
        t: i64,
        keep_name: bool,
        mut f: impl FnMut(&[Sample], &[HSample]) -> Option<(f64, Option<Arc<FloatHistogram>>)>,
    ) -> Result<Value, EvalError> {
        let arg = self.range_arg(&args[0], t)?;
        let mut out = Vec::new();
        arg.for_each_mixed(|labels, drop, points, hists| {
            if let Some((v, h)) = f(points, hists) {
                out.push(VectorSample {
                    labels: labels.clone(),
                    t,
                    f: v,
                    h,
                    drop_name: drop || !keep_name,
                });
            }
        });
        Ok(Value::Vector(out))
    }

    /// Applies `f` to every window of a range argument; `keep_name` keeps the metric name.
    fn over_time(
        &mut self,
        args: &[Node],
        t: i64,
        keep_name: bool,
        mut f: impl FnMut(&[Sample]) -> Option<f64>,
    ) -> Result<Value, EvalError> {
        let arg = self.range_arg(&args[0], t)?;
        let mut out = Vec::new();
        arg.for_each(|labels, drop, points| {
            if let Some(v) = f(points) {
                out.push(VectorSample {
                    labels: labels.clone(),
                    t,
                    f: v,
                    h: None,
                    drop_name: drop || !keep_name,
                });
            }
        });
        Ok(Value::Vector(out))
    }

    pub(crate) fn call(&mut self, func: Func, args: &[Node], t: i64) -> Result<Value, EvalError> {
        let outer = self.calling.replace(func);
        let v = self.call_func(func, args, t);
        self.calling = outer;
        v
    }

    /// Gives Prometheus's info for each window holding both floats and histograms when the
    /// function being called reads floats only.
    fn check_range_histograms(&mut self, arg: &RangeArg) -> Result<(), EvalError> {
        let Some(func) = self.calling else {
            return Ok(());
        };
        if super::hist::range_use(func) != Some(super::hist::RangeUse::Floats) {
            return Ok(());
        }
        let mut mixed: Vec<String> = Vec::new();
        for (sd, &(lo, hi)) in arg.data.iter().zip(&arg.windows) {
            if lo < hi
                && !sd.histograms.is_empty()
                && !super::eval::hist_window(&sd.histograms, arg.start, arg.end).is_empty()
            {
                mixed.push(metric_name(&sd.labels).to_string());
            }
        }
        for s in &arg.owned {
            if !s.points.is_empty() && !s.histograms.is_empty() {
                mixed.push(metric_name(&s.labels).to_string());
            }
        }
        for name in mixed {
            self.annotate(
                Severity::Info,
                format!("ignored histograms in a range containing both floats and histograms for metric name {name:?}"),
                Some(&name),
            );
        }
        Ok(())
    }

    fn call_func(&mut self, func: Func, args: &[Node], t: i64) -> Result<Value, EvalError> {
        use Func as F;
        match func {
            f if f.is_math() => {
                let mut v = self.eval_vector(&args[0], t)?;
                for s in &mut v {
                    s.f = math1(func, s.f);
                    s.t = t;
                    s.drop_name = true;
                }
                Ok(Value::Vector(v))
            }
            F::Pi => Ok(Value::Scalar(std::f64::consts::PI)),
            F::Time => Ok(Value::Scalar(t as f64 / 1e3)),
            F::Step => Ok(Value::Scalar(self.step as f64 / 1e3)),
            F::Range => Ok(Value::Scalar((self.end - self.start) as f64 / 1e3)),
            F::Start => Ok(Value::Scalar(self.start as f64 / 1e3)),
            F::End => Ok(Value::Scalar(self.end as f64 / 1e3)),
            F::MinOf | F::MaxOf => {
                let a = self.eval_scalar(&args[0], t)?;
                let b = self.eval_scalar(&args[1], t)?;
                Ok(Value::Scalar(if func == F::MinOf {
                    go_min(a, b)
                } else {
                    go_max(a, b)
                }))
            }
            F::Vector => {
                let v = self.eval_scalar(&args[0], t)?;
                Ok(Value::Vector(vec![VectorSample {
                    labels: Labels::empty(),
                    t,
                    f: v,
                    h: None,
                    drop_name: false,
                }]))
            }
            F::Scalar => {
                let v = self.eval_vector(&args[0], t)?;
                Ok(Value::Scalar(if v.len() == 1 { v[0].f } else { f64::NAN }))
            }
            F::Timestamp => {
                // Only a plain selector has sample timestamps; anything else is at the step.
                let plain = matches!(&args[0], Node::Selector(sel) if sel.range_ms.is_none());
                let mut v = self.eval_vector(&args[0], t)?;
                for s in &mut v {
                    s.h = None;
                    s.f = if plain {
                        s.t as f64 / 1e3
                    } else {
                        t as f64 / 1e3
                    };
                    s.t = t;
                    s.drop_name = true;
                }
                Ok(Value::Vector(v))
            }
            F::Round => {
                let to = if args.len() > 1 {
                    self.eval_scalar(&args[1], t)?
                } else {
                    1.0
                };
                let inv = 1.0 / to;
                let mut v = self.eval_vector(&args[0], t)?;
                for s in &mut v {
                    s.f = (s.f * inv + 0.5).floor() / inv;
                    s.t = t;
                    s.drop_name = true;
                }
                Ok(Value::Vector(v))
            }
            F::Clamp | F::ClampMin | F::ClampMax => {
                let mut v = self.eval_vector(&args[0], t)?;
                let (lo, hi) = match func {
                    F::Clamp => (
                        self.eval_scalar(&args[1], t)?,
                        self.eval_scalar(&args[2], t)?,
                    ),
                    F::ClampMin => (self.eval_scalar(&args[1], t)?, f64::INFINITY),
                    _ => (f64::NEG_INFINITY, self.eval_scalar(&args[1], t)?),
                };
                if func == F::Clamp && hi < lo {
                    return Ok(Value::Vector(vec![]));
                }
                for s in &mut v {
                    s.f = match func {
                        F::Clamp => go_max(lo, go_min(hi, s.f)),
                        F::ClampMin => go_max(lo, s.f),
                        _ => go_min(hi, s.f),
                    };
                    s.t = t;
                    s.drop_name = true;
                }
                Ok(Value::Vector(v))
            }
            F::DayOfMonth
            | F::DayOfWeek
            | F::DayOfYear
            | F::DaysInMonth
            | F::Hour
            | F::Minute
            | F::Month
            | F::Year => {
                let mut v = if args.is_empty() {
                    vec![VectorSample {
                        labels: Labels::empty(),
                        t,
                        f: t as f64 / 1e3,
                        h: None,
                        drop_name: false,
                    }]
                } else {
                    self.eval_vector(&args[0], t)?
                };
                for s in &mut v {
                    s.t = t;
                    s.drop_name = true;
                    if s.f.is_nan() || s.f.is_infinite() {
                        continue;
                    }
                    let (y, m, d, dow, doy, h, min) = civil(s.f);
                    s.f = match func {
                        F::DayOfMonth => d,
                        F::DayOfWeek => dow,
                        F::DayOfYear => doy,
                        F::DaysInMonth => days_in_month(y, m),
                        F::Hour => h,
                        F::Minute => min,
                        F::Month => m,
                        _ => y,
                    } as f64;
                }
                Ok(Value::Vector(v))
            }
            F::Rate | F::Increase | F::Delta => {
                let arg = self.range_arg(&args[0], t)?;
                let counter = func != F::Delta;
                let mut out = Vec::with_capacity(arg.windows.len() + arg.owned.len());
                let mut not_counters: Vec<String> = Vec::new();
                let mut check = |labels: &Labels| {
                    let n = metric_name(labels);
                    let looks_like_counter = ["_total", "_sum", "_count", "_bucket"]
                        .iter()
                        .any(|s| n.ends_with(s));
                    if counter
                        && !n.is_empty()
                        && !looks_like_counter
                        && !not_counters.iter().any(|x| x == n)
                    {
                        not_counters.push(n.to_string());
                    }
                };
                // A range query reads the same selector series at every step: each one's name
                // is checked the first time it gives a value, not at every step.
                let mut checked = arg
                    .sel
                    .and_then(|id| self.counter_checked.remove(&id))
                    .unwrap_or_default();
                checked.resize(arg.data.len(), false);
                // A range query also learns once which series have no counter reset at all in
                // their loaded samples (most): their windows need no scan for resets.
                let no_resets = match arg.sel.filter(|_| counter && self.step > 0) {
                    Some(id) => self
                        .no_resets
                        .entry(id)
                        .or_insert_with(|| {
                            // A reset is a point below the one before it, as the scan counts.
                            let no_reset = |x: &[Sample]| {
                                x.windows(2).all(|w| {
                                    w[1].value.partial_cmp(&w[0].value)
                                        != Some(std::cmp::Ordering::Less)
                                })
                            };
                            Arc::new(arg.data.iter().map(|sd| no_reset(&sd.samples)).collect())
                        })
                        .clone(),
                    None => Arc::default(),
                };
                let mut notes = Vec::new();
                let rate = func == F::Rate;
                for (i, (sd, &(lo, hi))) in arg.data.iter().zip(&arg.windows).enumerate() {
                    if !sd.histograms.is_empty() {
                        let h = super::eval::hist_window(&sd.histograms, arg.start, arg.end);
                        if !h.is_empty() {
                            let name = metric_name(&sd.labels);
                            let floats = &sd.samples[lo..hi];
                            if let Some(h) =
                                hist_rate(floats, &h, &arg, counter, rate, name, &mut notes)
                            {
                                out.push(VectorSample {
                                    labels: sd.labels.clone(),
                                    t,
                                    f: 0.0,
                                    h: Some(Arc::new(h)),
                                    drop_name: true,
                                });
                            }
                            continue;
                        }
                    }
                    if lo >= hi {
                        continue;
                    }
                    let scan = counter && !no_resets.get(i).copied().unwrap_or(false);
                    let Some(v) = extrapolated_scan(
                        &sd.samples[lo..hi],
                        arg.start,
                        arg.end,
                        counter,
                        func == F::Rate,
                        scan,
                    ) else {
                        continue;
                    };
                    if !checked[i] {
                        checked[i] = true;
                        check(&sd.labels);
                    }
                    out.push(VectorSample {
                        labels: sd.labels.clone(),
                        t,
                        f: v,
                        h: None,
                        drop_name: true,
                    });
                }
                for s in arg.owned.iter().filter(|s| !s.histograms.is_empty()) {
                    let name = metric_name(&s.labels);
                    if let Some(h) = hist_rate(
                        &s.points,
                        &s.histograms,
                        &arg,
                        counter,
                        rate,
                        name,
                        &mut notes,
                    ) {
                        out.push(VectorSample {
                            labels: s.labels.clone(),
                            t,
                            f: 0.0,
                            h: Some(Arc::new(h)),
                            drop_name: true,
                        });
                    }
                }
                for s in arg
                    .owned
                    .iter()
                    .filter(|s| !s.points.is_empty() && s.histograms.is_empty())
                {
                    if let Some(v) =
                        extrapolated(&s.points, arg.start, arg.end, counter, func == F::Rate)
                    {
                        check(&s.labels);
                        out.push(VectorSample {
                            labels: s.labels.clone(),
                            t,
                            f: v,
                            h: None,
                            drop_name: true,
                        });
                    }
                }
                if let Some(id) = arg.sel.filter(|_| self.step > 0) {
                    self.counter_checked.insert(id, checked);
                }
                for (severity, text) in notes {
                    self.annotate(severity, text, arg.name.as_deref());
                }
                for n in not_counters {
                    self.annotate(
                        Severity::Info,
                        format!("metric might not be a counter, name does not end in _total/_sum/_count/_bucket: {n:?}"),
                        arg.name.as_deref().or(Some(n.as_str())),
                    );
                }
                Ok(Value::Vector(out))
            }
            F::Irate | F::Idelta => {
                let rate = func == F::Irate;
                let arg = self.range_arg(&args[0], t)?;
                let mut notes = Vec::new();
                let mut out = Vec::new();
                arg.for_each_mixed(|labels, _, floats, hists| {
                    // The last two samples both floats: the float answer, histograms before
                    // them or not.
                    let floats_last = floats.len() >= 2
                        && hists
                            .last()
                            .is_none_or(|h| h.timestamp_ms < floats[floats.len() - 2].timestamp_ms);
                    let (f, h) = if floats_last || hists.is_empty() {
                        match instant_delta(floats, rate) {
                            Some(f) => (f, None),
                            None => return,
                        }
                    } else {
                        let name = metric_name(labels);
                        match super::hist::instant(floats, hists, rate, name, &mut notes) {
                            Some(h) => (0.0, Some(Arc::new(h))),
                            None => return,
                        }
                    };
                    out.push(VectorSample {
                        labels: labels.clone(),
                        t,
                        f,
                        h,
                        drop_name: true,
                    });
                });
                for (severity, text) in notes {
                    self.annotate(severity, text, arg.name.as_deref());
                }
                Ok(Value::Vector(out))
            }
            F::Deriv => self.over_time(args, t, false, |p| {
                (p.len() >= 2).then(|| linear_regression(p, p[0].timestamp_ms).0)
            }),
            F::PredictLinear => {
                let d = self.eval_scalar(&args[1], t)?;
                self.over_time(args, t, false, |p| {
                    (p.len() >= 2).then(|| {
                        let (slope, icpt) = linear_regression(p, t);
                        slope * d + icpt
                    })
                })
            }
            F::Changes | F::Resets => self.over_time_mixed(args, t, false, |p, h| {
                let mut n = 0.0;
                let merged = merge_samples(p, h);
                for w in merged.windows(2) {
                    let hit = match (w[0].1, w[1].1) {
                        (Err(a), Err(b)) => {
                            if func == F::Changes {
                                !(a == b || (a.is_nan() && b.is_nan()))
                            } else {
                                b < a
                            }
                        }
                        (Ok(a), Ok(b)) => {
                            if func == F::Changes {
                                !b.equals(a)
                            } else {
                                b.detect_reset(a)
                            }
                        }
                        // A switch between floats and histograms is a change and a reset.
                        _ => true,
                    };
                    if hit {
                        n += 1.0;
                    }
                }
                Some((n, None))
            }),
            F::AvgOverTime | F::SumOverTime => {
                let arg = self.range_arg(&args[0], t)?;
                let mut notes: Vec<super::hist::Note> = Vec::new();
                let mut out = Vec::new();
                arg.for_each_mixed(|labels, _, floats, hists| {
                    let name = metric_name(labels);
                    let v = if hists.is_empty() {
                        let (mut s, mut c) = (0.0, 0.0);
                        let mut avg = AvgAcc::default();
                        for x in floats {
                            (s, c) = kahan_inc(x.value, s, c);
                            avg.add(x.value);
                        }
                        let f = if func == F::SumOverTime { s + c } else { avg.value() };
                        (f, None)
                    } else if !floats.is_empty() {
                        notes.push((
                            Severity::Warning,
                            format!("encountered a mix of histograms and floats for metric name {name:?}"),
                        ));
                        return;
                    } else {
                        match super::hist::sum_histograms(hists.iter().map(|h| &*h.h)) {
                            Err(_) => {
                                notes.push((
                                    Severity::Warning,
                                    format!("vector contains a mix of histograms with exponential and custom buckets schemas for metric name {name:?}"),
                                ));
                                return;
                            }
                            Ok(None) => return,
                            Ok(Some(sum)) => {
                                if sum.collision {
                                    notes.push((
                                        Severity::Warning,
                                        "conflicting counter resets during histogram aggregation".into(),
                                    ));
                                }
                                if sum.reconciled {
                                    notes.push((
                                        Severity::Info,
                                        "mismatched custom buckets were reconciled during aggregation".into(),
                                    ));
                                }
                                let mut h = if func == F::AvgOverTime {
                                    sum.h.divided(hists.len() as f64)
                                } else {
                                    sum.h
                                };
                                h.compact(0);
                                (0.0, Some(Arc::new(h)))
                            }
                        }
                    };
                    out.push(VectorSample {
                        labels: labels.clone(),
                        t,
                        f: v.0,
                        h: v.1,
                        drop_name: true,
                    });
                });
                for (severity, text) in notes {
                    self.annotate(severity, text, arg.name.as_deref());
                }
                Ok(Value::Vector(out))
            }
            F::CountOverTime => self.over_time_mixed(args, t, false, |p, h| {
                Some(((p.len() + h.len()) as f64, None))
            }),
            F::PresentOverTime => self.over_time_mixed(args, t, false, |_, _| Some((1.0, None))),
            F::LastOverTime | F::FirstOverTime | F::TsOfLastOverTime | F::TsOfFirstOverTime => {
                let last = matches!(func, F::LastOverTime | F::TsOfLastOverTime);
                let ts = matches!(func, F::TsOfLastOverTime | F::TsOfFirstOverTime);
                self.over_time_mixed(args, t, !ts, |p, h| {
                    let merged = merge_samples(p, h);
                    let (at, x) = if last {
                        merged.last()?
                    } else {
                        merged.first()?
                    };
                    Some(match (ts, x) {
                        (true, _) => (*at as f64 / 1e3, None),
                        (false, Err(f)) => (*f, None),
                        (false, Ok(h)) => (0.0, Some(Arc::new((*h).clone()))),
                    })
                })
            }
            F::MinOverTime | F::MaxOverTime | F::TsOfMinOverTime | F::TsOfMaxOverTime => {
                let max = matches!(func, F::MaxOverTime | F::TsOfMaxOverTime);
                let ts = matches!(func, F::TsOfMinOverTime | F::TsOfMaxOverTime);
                self.over_time(args, t, false, |p| {
                    let mut best = p[0];
                    for x in &p[1..] {
                        let better = if max {
                            x.value > best.value
                        } else {
                            x.value < best.value
                        };
                        if better || best.value.is_nan() || (ts && x.value == best.value) {
                            best = *x;
                        }
                    }
                    Some(if ts {
                        best.timestamp_ms as f64 / 1e3
                    } else {
                        best.value
                    })
                })
            }
            F::StddevOverTime => self.over_time(args, t, false, |p| Some(variance(p).sqrt())),
            F::StdvarOverTime => self.over_time(args, t, false, |p| Some(variance(p))),
            F::MadOverTime => self.over_time(args, t, false, |p| {
                if p.iter().any(|x| x.value.is_nan()) {
                    return Some(f64::NAN);
                }
                let mut xs: Vec<f64> = p.iter().map(|x| x.value).collect();
                let median = quantile(0.5, &mut xs);
                let mut dev: Vec<f64> = xs.iter().map(|x| (x - median).abs()).collect();
                Some(quantile(0.5, &mut dev))
            }),
            F::QuantileOverTime => {
                let q = self.eval_scalar(&args[0], t)?;
                if !(0.0..=1.0).contains(&q) {
                    self.annotate(
                        Severity::Warning,
                        format!("quantile value should be between 0 and 1, got {}", q.go()),
                        Some("quantile_over_time"),
                    );
                }
                self.over_time(&args[1..], t, false, |p| {
                    let mut xs: Vec<f64> = p.iter().map(|x| x.value).collect();
                    Some(quantile(q, &mut xs))
                })
            }
            F::DoubleExpSmoothing | F::HoltWinters => {
                let sf = self.eval_scalar(&args[1], t)?;
                let tf = self.eval_scalar(&args[2], t)?;
                let arg = self.range_arg(&args[0], t)?;
                let mut any = false;
                arg.for_each(|_, _, _| any = true);
                if !any {
                    return Ok(Value::Vector(vec![]));
                }
                if sf <= 0.0 || sf >= 1.0 {
                    return Err(EvalError::Execution(format!(
                        "invalid smoothing factor. Expected: 0 < sf < 1, got: {}",
                        sf.go()
                    )));
                }
                if tf <= 0.0 || tf >= 1.0 {
                    return Err(EvalError::Execution(format!(
                        "invalid trend factor. Expected: 0 < tf < 1, got: {}",
                        tf.go()
                    )));
                }
                self.over_time(args, t, false, |p| double_exp_smoothing(p, sf, tf))
            }
            F::Absent | F::AbsentOverTime => {
                let empty = if func == F::Absent {
                    self.eval_vector(&args[0], t)?.is_empty()
                } else {
                    let arg = self.range_arg(&args[0], t)?;
                    let mut any = false;
                    arg.for_each_mixed(|_, _, _, _| any = true);
                    !any
                };
                if !empty {
                    return Ok(Value::Vector(vec![]));
                }
                Ok(Value::Vector(vec![VectorSample {
                    labels: absent_labels(&args[0]),
                    t,
                    f: 1.0,
                    h: None,
                    drop_name: false,
                }]))
            }
            F::LabelReplace => {
                let v = self.eval_vector(&args[0], t)?;
                let dst = self.string_arg(&args[1], t)?;
                let repl = self.string_arg(&args[2], t)?;
                let src = self.string_arg(&args[3], t)?;
                let re_src = self.string_arg(&args[4], t)?;
                let re = self.regex(&re_src).map_err(|e| {
                    EvalError::Execution(format!(
                        "invalid regular expression in label_replace(): {re_src}: {e}"
                    ))
                })?;
                if !vigil_wire::text::is_valid_label_name(&dst) {
                    return Err(EvalError::Execution(format!(
                        "invalid destination label name in label_replace(): {dst}"
                    )));
                }
                let mut out = Vec::with_capacity(v.len());
                for mut s in v {
                    if let Some(caps) = re.captures(s.labels.get_or_empty(&src)) {
                        let mut res = String::new();
                        caps.expand(&repl, &mut res);
                        let mut b = s.labels.to_builder();
                        b.set(dst.clone(), res);
                        s.labels = b.build();
                        if dst == METRIC_NAME {
                            s.drop_name = false;
                        }
                    }
                    out.push(s);
                }
                check_unique(&out)?;
                Ok(Value::Vector(out))
            }
            F::LabelJoin => {
                let v = self.eval_vector(&args[0], t)?;
                let dst = self.string_arg(&args[1], t)?;
                let sep = self.string_arg(&args[2], t)?;
                let mut srcs = Vec::new();
                for a in &args[3..] {
                    let s = self.string_arg(a, t)?;
                    if !vigil_wire::text::is_valid_label_name(&s) {
                        return Err(EvalError::Execution(format!(
                            "invalid source label name in label_join(): {s}"
                        )));
                    }
                    srcs.push(s);
                }
                if !vigil_wire::text::is_valid_label_name(&dst) {
                    return Err(EvalError::Execution(format!(
                        "invalid destination label name in label_join(): {dst}"
                    )));
                }
                let mut out = Vec::with_capacity(v.len());
                for mut s in v {
                    let joined: Vec<&str> = srcs.iter().map(|n| s.labels.get_or_empty(n)).collect();
                    let joined = joined.join(&sep);
                    let mut b = s.labels.to_builder();
                    b.set(dst.clone(), joined);
                    s.labels = b.build();
                    if dst == METRIC_NAME {
                        s.drop_name = false;
                    }
                    out.push(s);
                }
                check_unique(&out)?;
                Ok(Value::Vector(out))
            }
            F::Sort | F::SortDesc | F::SortByLabel | F::SortByLabelDesc
                if self.step > 0 && !self.sort_warned =>
            {
                self.sort_warned = true;
                self.annotate(
                    Severity::Warning,
                    "sort is ineffective for range queries since results are always ordered by labels".into(),
                    Some(func.name()),
                );
                self.call(func, args, t)
            }
            F::Sort | F::SortDesc => {
                let mut v = self.eval_vector(&args[0], t)?;
                let desc = func == F::SortDesc;
                v.sort_by(|a, b| match (a.f.is_nan(), b.f.is_nan()) {
                    (true, true) => std::cmp::Ordering::Equal,
                    (true, false) => std::cmp::Ordering::Greater,
                    (false, true) => std::cmp::Ordering::Less,
                    _ => {
                        let o = a.f.partial_cmp(&b.f).unwrap_or(std::cmp::Ordering::Equal);
                        if desc {
                            o.reverse()
                        } else {
                            o
                        }
                    }
                });
                Ok(Value::Vector(v))
            }
            F::SortByLabel | F::SortByLabelDesc => {
                let mut v = self.eval_vector(&args[0], t)?;
                let mut names = Vec::new();
                for a in &args[1..] {
                    names.push(self.string_arg(a, t)?);
                }
                let desc = func == F::SortByLabelDesc;
                v.sort_by(|a, b| {
                    let mut o = std::cmp::Ordering::Equal;
                    for n in &names {
                        o = natural_cmp(a.labels.get_or_empty(n), b.labels.get_or_empty(n));
                        if o != std::cmp::Ordering::Equal {
                            break;
                        }
                    }
                    let o = o.then_with(|| a.labels.cmp(&b.labels));
                    if desc {
                        o.reverse()
                    } else {
                        o
                    }
                });
                Ok(Value::Vector(v))
            }
            F::HistogramQuantile => self.histogram_quantile(args, t),
            F::HistogramQuantiles => self.histogram_quantiles(args, t),
            F::HistogramFraction => self.histogram_fraction(args, t),
            F::HistogramAvg
            | F::HistogramCount
            | F::HistogramStddev
            | F::HistogramStdvar
            | F::HistogramSum => {
                // Native histograms only; float samples give nothing.
                let v = self.eval_vector(&args[0], t)?;
                let out = v
                    .into_iter()
                    .filter_map(|s| {
                        let h = s.h?;
                        let f = match func {
                            F::HistogramCount => h.count,
                            F::HistogramSum => h.sum,
                            F::HistogramAvg => h.sum / h.count,
                            F::HistogramStdvar => super::hist::variance(&h),
                            _ => super::hist::variance(&h).sqrt(),
                        };
                        Some(VectorSample {
                            labels: s.labels,
                            t,
                            f,
                            h: None,
                            drop_name: true,
                        })
                    })
                    .collect();
                Ok(Value::Vector(out))
            }
            F::Info => Err(EvalError::Unsupported(format!(
                "{}() needs metadata, which Vigil does not store",
                func.name()
            ))),
            // The math functions, all taken by the first arm.
            _ => Err(EvalError::Execution(format!(
                "{}() is not evaluated here",
                func.name()
            ))),
        }
    }

    /// The native histograms of `v` and the classic ones of its floats; a native histogram with
    /// the labels of a classic one (less `le`) leaves both out, with Prometheus's warning.
    fn both_histograms(
        &mut self,
        v: Vec<VectorSample>,
    ) -> (Vec<VectorSample>, Vec<ClassicHistogram>) {
        let (natives, floats): (Vec<VectorSample>, Vec<VectorSample>) =
            v.into_iter().partition(|s| s.h.is_some());
        let mut classics = self.classic_histograms(&floats);
        let mut kept = Vec::with_capacity(natives.len());
        for n in natives {
            match classics.iter().position(|c| c.labels == n.labels) {
                Some(i) => {
                    let name = metric_name(&n.labels).to_string();
                    self.annotate(
                        Severity::Warning,
                        format!("vector contains a mix of classic and native histograms for metric name {name:?}"),
                        Some(&name),
                    );
                    classics.remove(i);
                }
                None => kept.push(n),
            }
        }
        (kept, classics)
    }

    /// `f` of each native histogram (its labels kept, its name to be dropped), what it noted
    /// annotated.
    fn of_natives(
        &mut self,
        natives: Vec<VectorSample>,
        t: i64,
        f: impl Fn(&FloatHistogram, &str) -> (f64, Option<super::hist::Note>),
    ) -> Vec<VectorSample> {
        let mut out = Vec::with_capacity(natives.len());
        for n in natives {
            let name = metric_name(&n.labels).to_string();
            let Some(h) = n.h.as_deref() else { continue };
            let (val, note) = f(h, &name);
            self.note(note, &name);
            out.push(VectorSample {
                labels: n.labels,
                t,
                f: val,
                h: None,
                drop_name: true,
            });
        }
        out
    }

    /// Annotates what the histogram math noted, at the metric name.
    fn note(&mut self, note: Option<super::hist::Note>, name: &str) {
        if let Some((severity, text)) = note {
            self.annotate(severity, text, Some(name));
        }
    }

    /// Classic histograms in `v`: its series grouped by their labels less `le` (the name kept,
    /// for delayed name removal), each with its buckets `(upper bound, cumulative count)`. A
    /// series without a valid `le` is left out with Prometheus's warning.
    fn classic_histograms(&mut self, v: &[VectorSample]) -> Vec<ClassicHistogram> {
        let mut groups: Vec<ClassicHistogram> = Vec::new();
        let mut index: std::collections::HashMap<Labels, usize> = std::collections::HashMap::new();
        for s in v {
            let le = s.labels.get("le").and_then(vigil_wire::text::parse_float);
            let Some(le) = le else {
                let name = metric_name(&s.labels).to_string();
                self.annotate(
                    Severity::Warning,
                    format!(
                        "bucket label \"le\" is missing or has a malformed value of {:?} for metric name {:?}",
                        s.labels.get_or_empty("le"),
                        name
                    ),
                    Some(&name),
                );
                continue;
            };
            // The name stays in the key (delayed name removal): two histograms that differ only
            // by name must not be merged; the final duplicate check reports them.
            let key = s.labels.filter(|l| l.name != "le");
            let gi = *index.entry(key.clone()).or_insert_with(|| {
                groups.push(ClassicHistogram {
                    labels: key,
                    buckets: vec![],
                    name: metric_name(&s.labels).to_string(),
                });
                groups.len() - 1
            });
            groups[gi].buckets.push((le, s.f));
        }
        groups
    }

    /// The `q` quantile of classic buckets, with Prometheus's info when their counts had to be
    /// forced monotonic (placed at `about` in the query).
    fn classic_quantile(
        &mut self,
        q: f64,
        buckets: &mut [(f64, f64)],
        name: &str,
        about: &str,
    ) -> f64 {
        let (val, forced) = bucket_quantile(q, buckets);
        if forced {
            self.annotate(
                Severity::Info,
                format!(
                    "input to histogram_quantile needed to be fixed for monotonicity (see https://prometheus.io/docs/prometheus/latest/querying/functions/#histogram_quantile) for metric name {name:?}"
                ),
                Some(about),
            );
        }
        val
    }

    /// `histogram_quantiles(v, "label", q1, …)` (experimental in Prometheus) over classic
    /// histograms: each histogram's quantiles at once, each a series with `label` set to the
    /// quantile in OpenMetrics' spelling (`0.0`, `0.25`, `1.0`).
    fn histogram_quantiles(&mut self, args: &[Node], t: i64) -> Result<Value, EvalError> {
        let v = self.eval_vector(&args[0], t)?;
        let label = self.string_arg(&args[1], t)?;
        let mut qs = Vec::with_capacity(args.len().saturating_sub(2));
        for a in &args[2..] {
            let q = self.eval_scalar(a, t)?;
            if !(0.0..=1.0).contains(&q) {
                self.annotate(
                    Severity::Warning,
                    format!("quantile value should be between 0 and 1, got {}", q.go()),
                    Some("histogram_quantiles"),
                );
            }
            qs.push(q);
        }
        let (natives, groups) = self.both_histograms(v);
        let mut out = Vec::with_capacity((natives.len() + groups.len()) * qs.len());
        for q in qs {
            let spelled = open_metrics_float(q);
            let sample = |labels: &Labels, f: f64| {
                let mut b = labels.to_builder();
                b.set(label.as_str(), spelled.as_str());
                VectorSample {
                    labels: b.build(),
                    t,
                    f,
                    h: None,
                    drop_name: true,
                }
            };
            for n in &natives {
                let name = metric_name(&n.labels).to_string();
                let h = n.h.as_deref().expect("a native histogram");
                let (val, note) = super::hist::quantile(q, h, &name);
                self.note(note, &name);
                out.push(sample(&n.labels, val));
            }
            for g in &groups {
                let val = self.classic_quantile(q, &mut g.buckets.clone(), &g.name, &g.name);
                out.push(sample(&g.labels, val));
            }
        }
        Ok(Value::Vector(out))
    }

    /// `histogram_fraction(lower, upper, v)` over classic histograms: the share of observations
    /// between the bounds, interpolated linearly within a bucket (never within one of infinite
    /// width), as Prometheus's `BucketFraction`.
    fn histogram_fraction(&mut self, args: &[Node], t: i64) -> Result<Value, EvalError> {
        let lower = self.eval_scalar(&args[0], t)?;
        let upper = self.eval_scalar(&args[1], t)?;
        let v = self.eval_vector(&args[2], t)?;
        let (natives, groups) = self.both_histograms(v);
        let mut out = self.of_natives(natives, t, |h, name| {
            super::hist::fraction(lower, upper, h, name)
        });
        out.extend(groups.into_iter().map(|mut g| VectorSample {
            labels: g.labels,
            t,
            f: bucket_fraction(lower, upper, &mut g.buckets),
            h: None,
            drop_name: true,
        }));
        Ok(Value::Vector(out))
    }

    fn histogram_quantile(&mut self, args: &[Node], t: i64) -> Result<Value, EvalError> {
        let q = self.eval_scalar(&args[0], t)?;
        let v = self.eval_vector(&args[1], t)?;
        if !(0.0..=1.0).contains(&q) {
            self.annotate(
                Severity::Warning,
                format!("quantile value should be between 0 and 1, got {}", q.go()),
                Some("histogram_quantile"),
            );
        }
        let (natives, groups) = self.both_histograms(v);
        let mut out = self.of_natives(natives, t, |h, name| super::hist::quantile(q, h, name));
        for mut g in groups {
            let val = self.classic_quantile(q, &mut g.buckets, &g.name, "histogram_quantile");
            out.push(VectorSample {
                labels: g.labels,
                t,
                f: val,
                h: None,
                drop_name: true,
            });
        }
        Ok(Value::Vector(out))
    }
}

/// A float as OpenMetrics spells a label value (Prometheus's `FormatOpenMetricsFloat`): `1.0`,
/// `0.25`, `NaN`, `+Inf`.
fn open_metrics_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    if f == 0.0 {
        return "0.0".into(); // -0 too
    }
    let s = crate::gofmt::shortest_g(f);
    if s.contains(['.', 'e']) {
        s
    } else {
        format!("{s}.0")
    }
}

/// One classic histogram: its labels (less `le`), buckets and metric name.
struct ClassicHistogram {
    labels: Labels,
    buckets: Vec<(f64, f64)>,
    name: String,
}

/// The share of observations between `lower` and `upper` in classic buckets `(upper bound,
/// cumulative count)`: Prometheus's `BucketFraction`. The first bucket starts at 0 when its
/// upper bound is positive, else at -Inf; nothing is interpolated within an infinite bucket.
fn bucket_fraction(lower: f64, upper: f64, b: &mut [(f64, f64)]) -> f64 {
    b.sort_by(|x, y| x.0.partial_cmp(&y.0).unwrap_or(std::cmp::Ordering::Equal));
    if b.last().map(|x| x.0) != Some(f64::INFINITY) {
        return f64::NAN;
    }
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(b.len());
    for &(le, c) in b.iter() {
        match merged.last_mut() {
            Some(last) if last.0 == le => last.1 += c,
            _ => merged.push((le, c)),
        }
    }
    let count = merged[merged.len() - 1].1;
    if count == 0.0 || lower.is_nan() || upper.is_nan() {
        return f64::NAN;
    }
    if lower >= upper {
        return 0.0;
    }
    let (mut rank, mut lower_rank, mut upper_rank) = (0.0, 0.0, 0.0);
    let (mut lower_set, mut upper_set) = (false, false);
    let mut lower_bound = if merged[0].0 <= 0.0 {
        f64::NEG_INFINITY
    } else {
        0.0
    };
    for (i, &(upper_bound, c)) in merged.iter().enumerate() {
        if i > 0 {
            lower_bound = merged[i - 1].0;
        }
        let interpolate = |v: f64| {
            if lower_bound == f64::NEG_INFINITY {
                c
            } else {
                rank + (c - rank) * (v - lower_bound) / (upper_bound - lower_bound)
            }
        };
        if !lower_set && lower_bound >= lower {
            lower_rank = rank;
            lower_set = true;
        }
        if !upper_set && lower_bound >= upper {
            upper_rank = rank;
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        if !lower_set && lower_bound < lower && upper_bound > lower {
            lower_rank = interpolate(lower);
            lower_set = true;
        }
        if !upper_set && lower_bound < upper && upper_bound > upper {
            upper_rank = interpolate(upper);
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        rank = c;
    }
    if !lower_set || lower_rank > count {
        lower_rank = count;
    }
    if !upper_set || upper_rank > count {
        upper_rank = count;
    }
    (upper_rank - lower_rank) / count
}

/// Quantile of classic buckets `(upper bound, cumulative count)`; the bool says whether the counts
/// had to be forced monotonic.
fn bucket_quantile(q: f64, b: &mut [(f64, f64)]) -> (f64, bool) {
    if q.is_nan() {
        return (f64::NAN, false);
    }
    if q < 0.0 {
        return (f64::NEG_INFINITY, false);
    }
    if q > 1.0 {
        return (f64::INFINITY, false);
    }
    b.sort_by(|x, y| x.0.partial_cmp(&y.0).unwrap_or(std::cmp::Ordering::Equal));
    if b.last().map(|x| x.0) != Some(f64::INFINITY) {
        return (f64::NAN, false);
    }
    // Merge buckets with the same bound.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(b.len());
    for &(le, c) in b.iter() {
        match merged.last_mut() {
            Some(last) if last.0 == le => last.1 += c,
            _ => merged.push((le, c)),
        }
    }
    let mut forced = false;
    let mut prev = merged[0].1;
    for x in merged.iter_mut().skip(1) {
        let cur = x.1;
        if cur == prev {
            continue;
        }
        if almost_equal(prev, cur, 1e-12) {
            x.1 = prev;
            continue;
        }
        if cur < prev {
            x.1 = prev;
            forced = true;
            continue;
        }
        prev = cur;
    }
    if merged.len() < 2 {
        return (f64::NAN, forced);
    }
    let observations = merged[merged.len() - 1].1;
    if observations == 0.0 {
        return (f64::NAN, forced);
    }
    let mut rank = q * observations;
    let n = merged.len() - 1;
    let idx = merged[..n].partition_point(|x| x.1 < rank);
    if idx == n {
        return (merged[n - 1].0, forced);
    }
    if idx == 0 && merged[0].0 <= 0.0 {
        return (merged[0].0, forced);
    }
    let (mut start, end, mut count) = (0.0, merged[idx].0, merged[idx].1);
    if idx > 0 {
        start = merged[idx - 1].0;
        count -= merged[idx - 1].1;
        rank -= merged[idx - 1].1;
    }
    (start + (end - start) * (rank / count), forced)
}

fn almost_equal(a: f64, b: f64, eps: f64) -> bool {
    if a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < f64::MIN_POSITIVE {
        return diff < eps * f64::MIN_POSITIVE;
    }
    diff / abs_sum.min(f64::MAX) < eps
}

/// The labels `absent()` reports: the argument selector's equality matchers, when unambiguous.
fn absent_labels(node: &Node) -> Labels {
    let Node::Selector(s) = node else {
        return Labels::empty();
    };
    let mut b = Labels::empty().to_builder();
    let mut seen: Vec<&str> = Vec::new();
    for m in &s.matchers {
        if m.name == METRIC_NAME {
            continue;
        }
        // A label is reported only when a single equality matcher names it.
        if matches!(m.op, promql_parser::label::MatchOp::Equal) && !seen.contains(&m.name.as_str())
        {
            b.set(m.name.clone(), m.value.clone());
            seen.push(&m.name);
        } else {
            b.del(&m.name);
        }
    }
    b.build()
}

/// The inverse hyperbolic sine, computed as Go's `math.Asinh` does (so values match
/// Prometheus's) — and without `f64::asinh`, whose call to glibc's `hypot` would make the
/// binaries need glibc 2.35 (Amazon Linux 2023 and RHEL 9 have 2.34).
fn asinh(x: f64) -> f64 {
    const LN2: f64 = std::f64::consts::LN_2;
    const NEAR_ZERO: f64 = 1.0 / (1u64 << 28) as f64;
    const LARGE: f64 = (1u64 << 28) as f64;
    if x.is_nan() || x.is_infinite() {
        return x;
    }
    let (sign, x) = if x < 0.0 { (-1.0, -x) } else { (1.0, x) };
    let t = if x > LARGE {
        x.ln() + LN2
    } else if x > 2.0 {
        (2.0 * x + 1.0 / ((x * x + 1.0).sqrt() + x)).ln()
    } else if x < NEAR_ZERO {
        x
    } else {
        (x + x * x / (1.0 + (1.0 + x * x).sqrt())).ln_1p()
    };
    sign * t
}

#[cfg(test)]
mod asinh_tests {
    #[test]
    fn matches_the_library_asinh() {
        for x in [
            0.0, -0.0, 1e-300, 1e-9, 0.1, 0.5, 1.0, 1.5, 2.0, 2.5, 10.0, 1e6, 3e8, 1e300,
        ] {
            for x in [x, -x] {
                let (got, want) = (super::asinh(x), x.asinh());
                assert!(
                    (got - want).abs() <= 4.0 * f64::EPSILON * want.abs(),
                    "asinh({x}) = {got}, want {want}"
                );
            }
        }
        assert!(super::asinh(f64::NAN).is_nan());
        assert_eq!(super::asinh(f64::INFINITY), f64::INFINITY);
        assert_eq!(super::asinh(f64::NEG_INFINITY), f64::NEG_INFINITY);
    }
}
