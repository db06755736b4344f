//! The evaluator: loads each selector's data once per query, then evaluates the plan at each
//! step. Range queries are evaluated step by step over the preloaded data.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use vigil_wire::histogram::{FloatHistogram, HSample, ResetHint};
use vigil_wire::{Labels, Sample, METRIC_NAME};

use super::hist::HistPolicy;
use super::plan::{At, Node, Selector, ValueType};
use super::storage::{SeriesData, Storage, StorageError};
use super::value::{Annotation, RangeSeries, Severity, Value, VectorSample};
use super::{EngineOpts, EvalError};

/// State of one query's evaluation.
pub(crate) struct Evaluator<'a> {
    pub(crate) storage: &'a dyn Storage,
    pub(crate) opts: &'a EngineOpts,
    /// Query start and end (ms), what `@ start()` and `@ end()` mean.
    pub(crate) start: i64,
    pub(crate) end: i64,
    /// The range query's step (ms), 0 for an instant query.
    pub(crate) step: i64,
    data: HashMap<usize, Arc<Vec<SeriesData>>>,
    pub(crate) annotations: Vec<Annotation>,
    /// Inner results of subqueries by (subquery id, time).
    subquery_cache: HashMap<(usize, i64), Value>,
    /// Compiled `label_replace` regexes by source.
    pub(crate) regex_cache: HashMap<String, regex::Regex>,
    /// Samples loaded so far, checked against `max_samples`.
    loaded_samples: usize,
    /// Whether the range-query sort warning was given.
    pub(crate) sort_warned: bool,
    /// The query text, to locate annotations.
    pub(crate) query: &'a str,
    /// Past this the query fails with [`EvalError::Timeout`].
    pub(crate) deadline: Option<std::time::Instant>,
    /// Range queries: each range selector's windows at the last reference time it was read.
    window_cursor: HashMap<usize, (i64, Vec<(usize, usize)>)>,
    /// Range queries: each input series' grouping key for an aggregation, by the grouping's
    /// address and the series' label allocation (see [`super::aggregate`]).
    pub(crate) group_keys: super::aggregate::WordMap<(usize, usize), super::aggregate::CachedKey>,
    /// Range queries: the distinct grouping keys of each grouping, by the grouping's address.
    pub(crate) group_ids: super::aggregate::WordMap<usize, super::aggregate::KeyIds>,
    /// Range queries: per range selector, which of its series' names were checked for the
    /// "might not be a counter" annotation (once per query, not once per step).
    pub(crate) counter_checked: HashMap<usize, Vec<bool>>,
    /// What the node being evaluated does with native histograms among its operands.
    pub(crate) hist_policy: HistPolicy,
    /// The function being called (innermost), for its range argument's histogram check.
    pub(crate) calling: Option<super::functions::Func>,
    /// Range queries: per range selector, which series have no counter reset in all their
    /// loaded samples (`rate` and `increase` then read only each window's ends).
    pub(crate) no_resets: HashMap<usize, Arc<Vec<bool>>>,
}

impl<'a> Evaluator<'a> {
    pub(crate) fn new(
        storage: &'a dyn Storage,
        opts: &'a EngineOpts,
        query: &'a str,
        start: i64,
        end: i64,
        step: i64,
    ) -> Self {
        Evaluator {
            storage,
            opts,
            start,
            end,
            step,
            data: HashMap::new(),
            annotations: Vec::new(),
            sort_warned: false,
            query,
            subquery_cache: HashMap::new(),
            regex_cache: HashMap::new(),
            loaded_samples: 0,
            deadline: None,
            window_cursor: HashMap::new(),
            group_keys: Default::default(),
            group_ids: Default::default(),
            counter_checked: HashMap::new(),
            no_resets: HashMap::new(),
            hist_policy: HistPolicy::Take,
            calling: None,
        }
    }

    fn check_deadline(&self, phase: &'static str) -> Result<(), EvalError> {
        match self.deadline {
            Some(d) if std::time::Instant::now() >= d => Err(EvalError::Timeout(phase)),
            _ => Ok(()),
        }
    }

    fn at_ms(&self, at: At) -> i64 {
        match at {
            At::Start => self.start,
            At::End => self.end,
            At::Time(t) => t,
        }
    }

    /// Adds an annotation once. `about` is text of the expression it is about, used to find a
    /// position in the query.
    pub(crate) fn annotate(&mut self, severity: Severity, text: String, about: Option<&str>) {
        let pos = about.and_then(|a| self.query.find(a)).unwrap_or(0);
        self.annotate_at(severity, text, pos);
    }

    /// Adds an annotation once, at byte offset `pos` of the query.
    pub(crate) fn annotate_at(&mut self, severity: Severity, text: String, pos: usize) {
        let prefix = match severity {
            Severity::Warning => "PromQL warning: ",
            Severity::Info => "PromQL info: ",
        };
        let (line, col) = line_col(self.query, pos);
        let message = format!("{prefix}{text} ({line}:{col})");
        if !self.annotations.iter().any(|a| a.message == message) {
            self.annotations.push(Annotation { severity, message });
        }
    }

    /// Walks the plan and loads every selector's data for all the times it will be read at.
    pub(crate) fn preload(&mut self, node: &Node, lo: i64, hi: i64) -> Result<(), EvalError> {
        match node {
            Node::Number(_) | Node::String(_) => {}
            Node::Selector(s) => {
                let (rlo, rhi) = match s.at {
                    Some(at) => {
                        let t = self.at_ms(at).saturating_sub(s.offset_ms);
                        (t, t)
                    }
                    None => (
                        lo.saturating_sub(s.offset_ms),
                        hi.saturating_sub(s.offset_ms),
                    ),
                };
                let width = s.range_ms.unwrap_or(self.opts.lookback_delta_ms);
                // Windows are left-open: (ref - width, ref].
                let max = self.opts.max_samples;
                let too_many = move || {
                    EvalError::Execution(format!(
                        "query processing would load too many samples into memory in query execution (limit {max})"
                    ))
                };
                let budget = self.opts.max_samples.saturating_sub(self.loaded_samples);
                let data = self
                    .select(s, rlo.saturating_sub(width).saturating_add(1), rhi, budget)
                    .map_err(|e| EvalError::Storage(e.0))?
                    .ok_or_else(too_many)?;
                self.loaded_samples += data.iter().map(SeriesData::len).sum::<usize>();
                if self.loaded_samples > self.opts.max_samples {
                    return Err(too_many());
                }
                self.check_deadline("query preparation")?;
                self.data.insert(s.id, Arc::new(data));
            }
            Node::Subquery {
                expr,
                range_ms,
                offset_ms,
                at,
                ..
            } => {
                let (rlo, rhi) = match at {
                    Some(at) => {
                        let t = self.at_ms(*at).saturating_sub(*offset_ms);
                        (t, t)
                    }
                    None => (lo.saturating_sub(*offset_ms), hi.saturating_sub(*offset_ms)),
                };
                self.preload(expr, rlo.saturating_sub(*range_ms), rhi)?;
            }
            Node::Neg(e) => self.preload(e, lo, hi)?,
            Node::Binary { lhs, rhs, .. } => {
                self.preload(lhs, lo, hi)?;
                self.preload(rhs, lo, hi)?;
            }
            Node::Aggregate { expr, param, .. } => {
                if let Some(p) = param {
                    self.preload(p, lo, hi)?;
                }
                self.preload(expr, lo, hi)?;
            }
            Node::Call { args, .. } => {
                for a in args {
                    self.preload(a, lo, hi)?;
                }
            }
        }
        Ok(())
    }

    /// The selector's series in `[mint, maxt]`; `None` past `budget` samples (each alternative
    /// of an `or` selector gets the whole budget: the union is counted after).
    fn select(
        &self,
        s: &Selector,
        mint: i64,
        maxt: i64,
        budget: usize,
    ) -> Result<Option<Vec<SeriesData>>, StorageError> {
        let mut data = if s.or_matchers.is_empty() {
            match self
                .storage
                .select_within(&s.matchers, mint, maxt, budget)?
            {
                Some(d) => d,
                None => return Ok(None),
            }
        } else {
            let mut all: BTreeMap<Labels, SeriesData> = BTreeMap::new();
            for alt in &s.or_matchers {
                let Some(part) = self.storage.select_within(alt, mint, maxt, budget)? else {
                    return Ok(None);
                };
                for sd in part {
                    all.entry(sd.labels.clone()).or_insert(sd);
                }
            }
            all.into_values().collect()
        };
        if s.range_ms.is_some() {
            // Range windows never contain staleness markers; drop them once here.
            for sd in &mut data {
                sd.samples.retain(|x| !x.is_stale());
            }
            data.retain(|sd| !sd.is_empty());
        }
        Ok(Some(data))
    }

    /// Evaluates `node` at time `t` (ms). A native histogram reaching an operation that does
    /// not handle them yet is refused as unsupported (never read as a float).
    pub(crate) fn eval(&mut self, node: &Node, t: i64) -> Result<Value, EvalError> {
        self.check_deadline("expression evaluation")?;
        let parent = std::mem::replace(&mut self.hist_policy, super::hist::policy(node));
        let value = self.eval_node(node, t);
        self.hist_policy = parent;
        let mut value = value?;
        match parent {
            HistPolicy::Take => {}
            HistPolicy::Drop => {
                if let Value::Vector(v) = &mut value {
                    v.retain(|s| s.h.is_none());
                }
            }
            HistPolicy::Refuse(consumer) => {
                if super::hist::holds_histograms(&value) {
                    return Err(EvalError::Unsupported(format!(
                        "native histograms in {consumer}"
                    )));
                }
            }
        }
        Ok(value)
    }

    fn eval_node(&mut self, node: &Node, t: i64) -> Result<Value, EvalError> {
        match node {
            Node::Number(v) => Ok(Value::Scalar(*v)),
            Node::String(s) => Ok(Value::String(s.clone())),
            Node::Selector(s) => Ok(match s.range_ms {
                None => Value::Vector(self.instant_selector(s, t)),
                Some(_) => Value::Matrix(self.matrix_selector(s, t)),
            }),
            Node::Subquery { .. } => Ok(Value::Matrix(self.subquery(node, t)?)),
            Node::Neg(e) => Ok(match self.eval(e, t)? {
                Value::Scalar(v) => Value::Scalar(-v),
                Value::Vector(mut v) => {
                    for s in &mut v {
                        if let Some(h) = &s.h {
                            s.h = Some(Arc::new(h.scaled(-1.0)));
                        }
                        s.f = -s.f;
                        s.drop_name = true;
                        s.t = t;
                    }
                    Value::Vector(v)
                }
                other => {
                    return Err(EvalError::Execution(format!(
                        "unary minus on {}",
                        other.type_name()
                    )))
                }
            }),
            Node::Binary {
                op,
                lhs,
                rhs,
                return_bool,
                matching,
            } => self.binary(*op, lhs, rhs, *return_bool, matching, t),
            Node::Aggregate {
                op,
                expr,
                param,
                grouping,
            } => self.aggregate(*op, expr, param.as_deref(), grouping.as_ref(), t),
            Node::Call { func, args } => self.call(*func, args, t),
        }
    }

    /// Evaluates a node that must yield an instant vector.
    pub(crate) fn eval_vector(
        &mut self,
        node: &Node,
        t: i64,
    ) -> Result<Vec<VectorSample>, EvalError> {
        match self.eval(node, t)? {
            Value::Vector(v) => Ok(v),
            other => Err(EvalError::Execution(format!(
                "expected instant vector, got {}",
                other.type_name()
            ))),
        }
    }

    /// Evaluates a node that must yield a scalar.
    pub(crate) fn eval_scalar(&mut self, node: &Node, t: i64) -> Result<f64, EvalError> {
        match self.eval(node, t)? {
            Value::Scalar(v) => Ok(v),
            other => Err(EvalError::Execution(format!(
                "expected scalar, got {}",
                other.type_name()
            ))),
        }
    }

    pub(crate) fn selector_ref_time(&self, s: &Selector, t: i64) -> i64 {
        s.at.map_or(t, |a| self.at_ms(a))
            .saturating_sub(s.offset_ms)
    }

    fn instant_selector(&self, s: &Selector, t: i64) -> Vec<VectorSample> {
        let Some(data) = self.data.get(&s.id) else {
            return Vec::new();
        };
        let reft = self.selector_ref_time(s, t);
        let lookback = self.opts.lookback_delta_ms;
        let mut out = Vec::with_capacity(data.len());
        for sd in data.iter() {
            let idx = sd.samples.partition_point(|x| x.timestamp_ms <= reft);
            let float = idx.checked_sub(1).map(|i| sd.samples[i]);
            let hidx = sd.histograms.partition_point(|x| x.timestamp_ms <= reft);
            let hist = hidx.checked_sub(1).map(|i| &sd.histograms[i]);
            // The newest sample, float or histogram (a staleness marker is a float).
            let (ts, f, h) = match (float, hist) {
                (Some(f), Some(h)) if h.timestamp_ms > f.timestamp_ms => {
                    (h.timestamp_ms, 0.0, Some(h.h.clone()))
                }
                (Some(f), _) => {
                    if f.is_stale() {
                        continue;
                    }
                    (f.timestamp_ms, f.value, None)
                }
                (None, Some(h)) => (h.timestamp_ms, 0.0, Some(h.h.clone())),
                (None, None) => continue,
            };
            if ts <= reft - lookback {
                continue;
            }
            out.push(VectorSample {
                labels: sd.labels.clone(),
                t: ts,
                f,
                h,
                drop_name: false,
            });
        }
        out
    }

    /// The window `(ref - range, ref]` of every series, borrowed from the preloaded data. A
    /// range query moves each selector's windows forward step by step: from the previous
    /// step's bounds they advance over the few samples in between instead of searching anew.
    pub(crate) fn matrix_windows(
        &mut self,
        s: &Selector,
        t: i64,
    ) -> (Arc<Vec<SeriesData>>, Vec<(usize, usize)>) {
        let data = self.data.get(&s.id).cloned().unwrap_or_default();
        let reft = self.selector_ref_time(s, t);
        let lo_t = reft - s.range_ms.unwrap_or(0);
        if let Some((prev, w)) = self.window_cursor.get_mut(&s.id) {
            if *prev <= reft && w.len() == data.len() {
                for (sd, (lo, hi)) in data.iter().zip(w.iter_mut()) {
                    let x = &sd.samples;
                    while *lo < x.len() && x[*lo].timestamp_ms <= lo_t {
                        *lo += 1;
                    }
                    while *hi < x.len() && x[*hi].timestamp_ms <= reft {
                        *hi += 1;
                    }
                }
                *prev = reft;
                return (data, w.clone());
            }
        }
        let windows: Vec<(usize, usize)> = data
            .iter()
            .map(|sd| {
                let lo = sd.samples.partition_point(|x| x.timestamp_ms <= lo_t);
                let hi = sd.samples.partition_point(|x| x.timestamp_ms <= reft);
                (lo, hi)
            })
            .collect();
        if self.step > 0 {
            self.window_cursor.insert(s.id, (reft, windows.clone()));
        }
        (data, windows)
    }

    fn matrix_selector(&mut self, s: &Selector, t: i64) -> Vec<RangeSeries> {
        let (data, windows) = self.matrix_windows(s, t);
        let reft = self.selector_ref_time(s, t);
        let lo_t = reft - s.range_ms.unwrap_or(0);
        data.iter()
            .zip(windows)
            .map(|(sd, (lo, hi))| RangeSeries {
                labels: sd.labels.clone(),
                points: sd.samples[lo..hi].to_vec(),
                histograms: hist_window(&sd.histograms, lo_t, reft),
                drop_name: false,
            })
            .filter(|r| !r.points.is_empty() || !r.histograms.is_empty())
            .collect()
    }

    /// Evaluates a subquery node at `t` into a range vector.
    pub(crate) fn subquery(&mut self, node: &Node, t: i64) -> Result<Vec<RangeSeries>, EvalError> {
        let Node::Subquery {
            id,
            expr,
            range_ms,
            step_ms,
            offset_ms,
            at,
        } = node
        else {
            return Err(EvalError::Execution("not a subquery".into()));
        };
        let step = step_ms.unwrap_or(self.opts.default_subquery_step_ms).max(1);
        let reft = at.map_or(t, |a| self.at_ms(a)).saturating_sub(*offset_ms);
        let lo = reft.saturating_sub(*range_ms);
        if range_ms / step > self.opts.max_subquery_steps {
            return Err(EvalError::BadData(format!(
                "subquery of {} steps exceeds the limit of {} (use a larger step)",
                range_ms / step,
                self.opts.max_subquery_steps
            )));
        }
        // First step-aligned time strictly after `lo` (windows are left-open).
        let mut ts = lo.div_euclid(step) * step;
        if ts <= lo {
            ts += step;
        }
        let mut series: BTreeMap<Labels, RangeSeries> = BTreeMap::new();
        while ts <= reft {
            // Inner times are absolute multiples of the step, so consecutive outer steps share
            // most of them: evaluate each once per query.
            let value = match self.subquery_cache.get(&(*id, ts)) {
                Some(v) => v.clone(),
                None => {
                    let parent = std::mem::replace(&mut self.hist_policy, HistPolicy::Take);
                    let v = self.eval(expr, ts);
                    self.hist_policy = parent;
                    let v = v?;
                    self.subquery_cache.insert((*id, ts), v.clone());
                    v
                }
            };
            match value {
                Value::Scalar(v) => {
                    series
                        .entry(Labels::empty())
                        .or_insert_with(|| RangeSeries {
                            labels: Labels::empty(),
                            points: vec![],
                            histograms: Vec::new(),
                            drop_name: false,
                        })
                        .points
                        .push(Sample::new(ts, v));
                }
                Value::Vector(v) => {
                    for s in v {
                        let e = series
                            .entry(s.labels.clone())
                            .or_insert_with(|| RangeSeries {
                                labels: s.labels.clone(),
                                points: vec![],
                                histograms: Vec::new(),
                                drop_name: s.drop_name,
                            });
                        e.drop_name |= s.drop_name;
                        match s.h {
                            // The engine's steps say nothing about resets: Prometheus forgets
                            // reset and not_reset in a subquery's output.
                            Some(h) => e.histograms.push(HSample {
                                timestamp_ms: ts,
                                h: forget_reset_hint(h),
                            }),
                            None => e.points.push(Sample::new(ts, s.f)),
                        }
                    }
                }
                other => {
                    return Err(EvalError::Execution(format!(
                        "subquery over {} is not allowed",
                        other.type_name()
                    )))
                }
            }
            match ts.checked_add(step) {
                Some(n) => ts = n,
                None => break,
            }
        }
        Ok(series.into_values().collect())
    }
}

/// The histograms of `(lo, hi]`.
pub(crate) fn hist_window(h: &[HSample], lo: i64, hi: i64) -> Vec<HSample> {
    if h.is_empty() {
        return Vec::new();
    }
    let a = h.partition_point(|x| x.timestamp_ms <= lo);
    let b = h.partition_point(|x| x.timestamp_ms <= hi);
    h[a..b.max(a)].to_vec()
}

/// `h` with a reset or not_reset hint turned into unknown.
pub(crate) fn forget_reset_hint(h: Arc<FloatHistogram>) -> Arc<FloatHistogram> {
    match h.hint {
        ResetHint::Reset | ResetHint::NotReset => {
            let mut x = (*h).clone();
            x.hint = ResetHint::Unknown;
            Arc::new(x)
        }
        _ => h,
    }
}

/// 1-based line and column of byte offset `pos` in `s`.
fn line_col(s: &str, pos: usize) -> (usize, usize) {
    let before = &s[..pos.min(s.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.chars().count(), |i| before[i + 1..].chars().count())
        + 1;
    (line, col)
}

/// Drops the metric name where delayed name removal asked for it, then refuses duplicates.
pub(crate) fn finish_vector(v: Vec<VectorSample>) -> Result<Vec<VectorSample>, EvalError> {
    let mut out = Vec::with_capacity(v.len());
    for mut s in v {
        if s.drop_name {
            s.labels = s.labels.without_metric_name();
            s.drop_name = false;
        }
        out.push(s);
    }
    check_unique(&out)?;
    Ok(out)
}

/// Errors when two samples carry the same label set.
pub(crate) fn check_unique(v: &[VectorSample]) -> Result<(), EvalError> {
    if v.len() < 2 {
        return Ok(());
    }
    let mut seen = std::collections::HashSet::with_capacity(v.len());
    for s in v {
        if !seen.insert(&s.labels) {
            return Err(EvalError::Execution(
                "vector cannot contain metrics with the same labelset".into(),
            ));
        }
    }
    Ok(())
}

/// Runs a whole range query: evaluates at each step and merges the steps into series.
pub(crate) fn run_range(ev: &mut Evaluator<'_>, root: &Node) -> Result<Value, EvalError> {
    match root.value_type() {
        ValueType::Vector | ValueType::Scalar => {}
        ValueType::Matrix => {
            return Err(EvalError::BadData(
                "invalid expression type \"range vector\" for range query, must be Scalar or instant Vector".into(),
            ))
        }
        ValueType::String => {
            return Err(EvalError::BadData(
                "invalid expression type \"string\" for range query, must be Scalar or instant Vector".into(),
            ))
        }
    }
    let (start, end, step) = (ev.start, ev.end, ev.step.max(1));
    ev.preload(root, start, end)?;
    let mut series: BTreeMap<Labels, (Vec<Sample>, Vec<HSample>)> = BTreeMap::new();
    let mut t = start;
    while t <= end {
        match ev.eval(root, t)? {
            Value::Scalar(v) => series
                .entry(Labels::empty())
                .or_default()
                .0
                .push(Sample::new(t, v)),
            Value::Vector(v) => {
                for s in finish_vector(v)? {
                    let e = series.entry(s.labels).or_default();
                    match s.h {
                        Some(h) => e.1.push(HSample { timestamp_ms: t, h }),
                        None => e.0.push(Sample::new(t, s.f)),
                    }
                }
            }
            other => {
                return Err(EvalError::Execution(format!(
                    "range query step gave {}",
                    other.type_name()
                )))
            }
        }
        t += step;
    }
    Ok(Value::Matrix(
        series
            .into_iter()
            .map(|(labels, (points, histograms))| RangeSeries {
                labels,
                points,
                histograms,
                drop_name: false,
            })
            .collect(),
    ))
}

/// Runs an instant query.
pub(crate) fn run_instant(ev: &mut Evaluator<'_>, root: &Node, t: i64) -> Result<Value, EvalError> {
    ev.preload(root, t, t)?;
    Ok(match ev.eval(root, t)? {
        Value::Vector(v) => Value::Vector(finish_vector(v)?),
        Value::Matrix(m) => {
            let m: Vec<RangeSeries> = m
                .into_iter()
                .map(|mut s| {
                    if s.drop_name {
                        s.labels = s.labels.without_metric_name();
                        s.drop_name = false;
                    }
                    s
                })
                .collect();
            let mut seen = std::collections::HashSet::new();
            if !m.iter().all(|s| seen.insert(s.labels.clone())) {
                return Err(EvalError::Execution(
                    "vector cannot contain metrics with the same labelset".into(),
                ));
            }
            Value::Matrix(m)
        }
        other => other,
    })
}

/// Whether the label set has a metric name (for annotations).
pub(crate) fn metric_name(l: &Labels) -> &str {
    l.get_or_empty(METRIC_NAME)
}
