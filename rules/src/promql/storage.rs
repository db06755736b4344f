//! What the engine reads: series selected by label matchers over a time range.

use std::collections::BTreeMap;
use std::sync::Arc;

pub use promql_parser::label::{MatchOp, Matcher};
use vigil_wire::histogram::{FloatHistogram, HSample, ResetHint};
use vigil_wire::{Labels, Sample};

/// One selected series: its labels and its samples in the asked range, oldest first. Staleness
/// markers are included (the engine interprets them). Native histograms come beside the floats
/// (a series may switch between the two); their staleness markers are float samples.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesData {
    pub labels: Labels,
    pub samples: Vec<Sample>,
    pub histograms: Vec<HSample>,
}

impl SeriesData {
    /// A series of floats only.
    pub fn floats(labels: Labels, samples: Vec<Sample>) -> Self {
        SeriesData {
            labels,
            samples,
            histograms: Vec::new(),
        }
    }

    /// How many samples this counts as against a query's budget: one a float, one plus one a
    /// bucket a histogram (a histogram of thousands of buckets is not one float's worth).
    pub fn len(&self) -> usize {
        self.samples.len()
            + self
                .histograms
                .iter()
                .map(|h| 1 + h.h.positive_buckets.len() + h.h.negative_buckets.len())
                .sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty() && self.histograms.is_empty()
    }
}

/// A store that could not answer: an engine that is down, slow past its deadline, or that
/// answered an error. Evaluation fails with it (rule health shows the message); it is never
/// read as "no series".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StorageError(pub String);

/// Storage the engine evaluates over. The aggregator's in-memory window implements it; so do
/// [`MemStorage`] for tests, rule unit tests and backtests, and readers of a remote engine.
pub trait Storage {
    /// Every series matching all `matchers`, with its samples whose timestamps lie in
    /// `[mint, maxt]` (milliseconds, both inclusive). Series with no sample in the range may be
    /// left out.
    fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<SeriesData>, StorageError>;

    /// As [`Storage::select`], but `None` as soon as more than `budget` samples would be
    /// loaded. A store that can count before it decodes overrides this, so that a query over
    /// its `max_samples` costs neither the memory nor the time of loading what it may not load.
    fn select_within(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        budget: usize,
    ) -> Result<Option<Vec<SeriesData>>, StorageError> {
        let data = self.select(matchers, mint, maxt)?;
        Ok((data.iter().map(SeriesData::len).sum::<usize>() <= budget).then_some(data))
    }

    /// A store that is itself a PromQL engine may evaluate a whole instant query at `t`: its
    /// answer, or `None` to have it evaluated over [`Storage::select`] (the default).
    fn evaluate(
        &self,
        _query: &super::Query,
        _t: i64,
    ) -> Option<Result<super::Value, super::EvalError>> {
        None
    }
}

/// Whether `labels` satisfy every matcher (an absent label matches as the empty string).
pub fn matches_all(labels: &Labels, matchers: &[Matcher]) -> bool {
    matchers
        .iter()
        .all(|m| m.is_match(labels.get_or_empty(&m.name)))
}

/// `slice.partition_point(pred)`, searched by galloping back from the end: queries read the newest
/// samples, so this touches a few adjacent cache lines instead of a binary search's scattered ones.
pub fn partition_point_from_end<T>(slice: &[T], pred: impl Fn(&T) -> bool) -> usize {
    let n = slice.len();
    if n == 0 {
        return 0;
    }
    let mut step = 1;
    let mut hi = n; // every index >= hi is known to fail `pred`
    loop {
        let probe = hi.saturating_sub(step);
        if probe == 0 || pred(&slice[probe]) {
            // The boundary lies in [probe, hi).
            let base = if probe == 0 && !pred(&slice[0]) {
                0
            } else {
                probe
            };
            return base + slice[base..hi].partition_point(&pred);
        }
        hi = probe;
        step *= 2;
    }
}

/// The counter-reset hints Prometheus's TSDB gives histograms when it reads them back: it keeps
/// no per-sample hint, only one per chunk, and cuts a chunk at a reset, a layout change, a
/// float or a staleness marker in between, or a gauge/counter switch. The first histogram of a
/// chunk reads `reset` (a chunk cut at a reset), else `unknown`; the others `not_reset`; every
/// gauge histogram `gauge`. `floats` and `hists` are one series in timestamp order.
///
/// Custom bucket bounds that change between two histograms are judged as `FloatHistogram`'s
/// reset detection judges them (over the bounds both have) rather than as a reset outright:
/// Prometheus's own suite expects that (`irate` over `{path="/g"}` in `functions.test`).
pub fn tsdb_hints(floats: &[Sample], hists: &[HSample]) -> Vec<HSample> {
    enum Chunk {
        None,
        Float,
        Stale,
        Gauge,
        Counter(Arc<FloatHistogram>),
    }
    let mut state = Chunk::None;
    let mut out = Vec::with_capacity(hists.len());
    let mut f = 0;
    for hs in hists {
        while f < floats.len() && floats[f].timestamp_ms < hs.timestamp_ms {
            let stale = floats[f].is_stale();
            state = match state {
                Chunk::Counter(_) | Chunk::Gauge | Chunk::Stale if stale => Chunk::Stale,
                _ => Chunk::Float,
            };
            f += 1;
        }
        let h = &hs.h;
        let hint = match (&state, h.hint) {
            (_, ResetHint::Gauge) => ResetHint::Gauge,
            (Chunk::Counter(prev), given) => {
                if given == ResetHint::Reset || h.count < prev.count {
                    ResetHint::Reset
                } else if h.schema != prev.schema || h.zero_threshold != prev.zero_threshold {
                    ResetHint::Unknown
                } else {
                    let mut unhinted = (**h).clone();
                    unhinted.hint = ResetHint::Unknown;
                    if unhinted.detect_reset(prev) {
                        ResetHint::Reset
                    } else {
                        ResetHint::NotReset
                    }
                }
            }
            (Chunk::Gauge, _) => ResetHint::Unknown,
            (_, ResetHint::Reset) => ResetHint::Reset,
            _ => ResetHint::Unknown,
        };
        state = if h.hint == ResetHint::Gauge {
            Chunk::Gauge
        } else {
            Chunk::Counter(h.clone())
        };
        out.push(if hint == h.hint {
            hs.clone()
        } else {
            let mut x = (**h).clone();
            x.hint = hint;
            HSample::new(hs.timestamp_ms, x)
        });
    }
    out
}

/// A simple in-memory storage: a sorted map from label set to samples.
#[derive(Debug, Default, Clone)]
pub struct MemStorage {
    series: BTreeMap<Labels, Vec<Sample>>,
    /// Series holding native histograms: their histogram samples, as written (hints included).
    hists: BTreeMap<Labels, Vec<HSample>>,
}

impl MemStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a sample; out-of-order samples are inserted in place, and a sample at an existing
    /// timestamp replaces the old one.
    pub fn add(&mut self, labels: Labels, sample: Sample) {
        let v = self.series.entry(labels).or_default();
        match v.last() {
            Some(last) if last.timestamp_ms < sample.timestamp_ms => v.push(sample),
            None => v.push(sample),
            _ => match v.binary_search_by_key(&sample.timestamp_ms, |s| s.timestamp_ms) {
                Ok(i) => v[i] = sample,
                Err(i) => v.insert(i, sample),
            },
        }
    }

    /// Adds many samples of one series at once (any order; later duplicates win).
    pub fn add_series(&mut self, labels: Labels, samples: impl IntoIterator<Item = Sample>) {
        let v = self.series.entry(labels).or_default();
        let sorted_before = v.len();
        v.extend(samples);
        if !v[sorted_before.saturating_sub(1)..]
            .windows(2)
            .all(|w| w[0].timestamp_ms < w[1].timestamp_ms)
        {
            // Stable sort keeps insertion order among equal timestamps; keep the last of each.
            v.sort_by_key(|s| s.timestamp_ms);
            let mut out: Vec<Sample> = Vec::with_capacity(v.len());
            for s in v.drain(..) {
                match out.last_mut() {
                    Some(last) if last.timestamp_ms == s.timestamp_ms => *last = s,
                    _ => out.push(s),
                }
            }
            *v = out;
        }
    }

    /// Adds a native histogram sample (a sample at an existing timestamp replaces the old one).
    pub fn add_histogram(&mut self, labels: Labels, sample: HSample) {
        let v = self.hists.entry(labels).or_default();
        match v.binary_search_by_key(&sample.timestamp_ms, |s| s.timestamp_ms) {
            Ok(i) => v[i] = sample,
            Err(i) => v.insert(i, sample),
        }
    }

    pub fn clear(&mut self) {
        self.series.clear();
        self.hists.clear();
    }

    pub fn series_count(&self) -> usize {
        self.series.len()
            + self
                .hists
                .keys()
                .filter(|l| !self.series.contains_key(*l))
                .count()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Labels, &Vec<Sample>)> {
        self.series.iter()
    }
}

impl Storage for MemStorage {
    fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<SeriesData>, StorageError> {
        let none: &[Sample] = &[];
        let hist_only = self
            .hists
            .keys()
            .filter(|l| !self.series.contains_key(*l))
            .map(|l| (l, none));
        let mut out = Vec::new();
        for (labels, samples) in self
            .series
            .iter()
            .map(|(l, s)| (l, s.as_slice()))
            .chain(hist_only)
        {
            if !matches_all(labels, matchers) {
                continue;
            }
            let hi = partition_point_from_end(samples, |s| s.timestamp_ms <= maxt);
            let lo = partition_point_from_end(&samples[..hi], |s| s.timestamp_ms < mint);
            let histograms = match self.hists.get(labels) {
                Some(h) => {
                    let h = tsdb_hints(samples, h);
                    let hhi = h.partition_point(|s| s.timestamp_ms <= maxt);
                    let hlo = h[..hhi].partition_point(|s| s.timestamp_ms < mint);
                    h[hlo..hhi].to_vec()
                }
                None => Vec::new(),
            };
            if lo < hi || !histograms.is_empty() {
                out.push(SeriesData {
                    labels: labels.clone(),
                    samples: samples[lo..hi].to_vec(),
                    histograms,
                });
            }
        }
        if !self.hists.is_empty() {
            out.sort_by(|a, b| a.labels.cmp(&b.labels));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use promql_parser::label::{MatchOp, Matcher};

    #[test]
    fn partition_from_end_matches_std() {
        let v: Vec<i64> = (0..100).map(|x| x * 2).collect();
        for t in -3..205 {
            assert_eq!(
                partition_point_from_end(&v, |x| *x <= t),
                v.partition_point(|x| *x <= t),
                "{t}"
            );
        }
        assert_eq!(partition_point_from_end(&[] as &[i64], |x| *x < 3), 0);
    }

    #[test]
    fn add_keeps_samples_sorted_and_replaces_duplicates() {
        let l = Labels::from_pairs([("__name__", "m")]);
        let mut s = MemStorage::new();
        s.add(l.clone(), Sample::new(20, 2.0));
        s.add(l.clone(), Sample::new(10, 1.0));
        s.add(l.clone(), Sample::new(20, 3.0));
        s.add_series(
            l.clone(),
            [
                Sample::new(15, 9.0),
                Sample::new(30, 4.0),
                Sample::new(15, 5.0),
            ],
        );
        let got = s
            .select(&[Matcher::new(MatchOp::Equal, "__name__", "m")], 0, 100)
            .unwrap();
        let ts: Vec<(i64, f64)> = got[0]
            .samples
            .iter()
            .map(|x| (x.timestamp_ms, x.value))
            .collect();
        assert_eq!(ts, [(10, 1.0), (15, 5.0), (20, 3.0), (30, 4.0)]);
    }

    #[test]
    fn histograms_read_back_with_the_hints_prometheus_tsdb_gives() {
        use vigil_wire::histogram::{FloatHistogram, HSample, ResetHint};
        let h = |t: &str| FloatHistogram::parse_notation(t).unwrap().0;
        let l = Labels::from_pairs([("__name__", "h")]);
        let mut s = MemStorage::new();
        let series = [
            (0, "{{count:1 sum:1}}"),                           // a new chunk: unknown
            (10, "{{count:2 sum:2}}"),                          // appended: not_reset
            (20, "{{count:1 sum:1}}"),                          // fewer: reset
            (40, "{{count:5 sum:5 counter_reset_hint:reset}}"), // after a stale marker, told
            (50, "{{count:6 sum:6 schema:1}}"),                 // another schema: unknown
            (60, "{{count:1 sum:1 counter_reset_hint:gauge}}"), // gauge
        ];
        for (t, text) in series {
            s.add_histogram(l.clone(), HSample::new(t, h(text)));
        }
        s.add(l.clone(), Sample::new(30, vigil_wire::STALE_NAN));
        let got = s
            .select(&[Matcher::new(MatchOp::Equal, "__name__", "h")], 0, 100)
            .unwrap();
        let hints: Vec<ResetHint> = got[0].histograms.iter().map(|x| x.h.hint).collect();
        use ResetHint::*;
        assert_eq!(hints, [Unknown, NotReset, Reset, Reset, Unknown, Gauge]);
        assert_eq!(
            got[0].samples.len(),
            1,
            "the staleness marker stays a float"
        );
        assert_eq!(s.series_count(), 1);
    }

    #[test]
    fn select_honours_matchers_and_inclusive_range() {
        let mut s = MemStorage::new();
        for job in ["a", "b"] {
            s.add_series(
                Labels::from_pairs([("__name__", "up"), ("job", job)]),
                (0..5).map(|i| Sample::new(i * 10, 1.0)),
            );
        }
        let m = [Matcher::new(MatchOp::NotEqual, "job", "a")];
        let got = s.select(&m, 10, 30).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].labels.get("job"), Some("b"));
        assert_eq!(got[0].samples.len(), 3);
        // An absent label matches as the empty string.
        assert_eq!(
            s.select(&[Matcher::new(MatchOp::Equal, "zone", "")], 0, 100)
                .unwrap()
                .len(),
            2
        );
    }
}
