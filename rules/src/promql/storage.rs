//! What the engine reads: series selected by label matchers over a time range.

use std::collections::BTreeMap;

use promql_parser::label::Matcher;
use vigil_wire::{Labels, Sample};

/// One selected series: its labels and its samples in the asked range, oldest first. Staleness
/// markers are included (the engine interprets them).
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesData {
    pub labels: Labels,
    pub samples: Vec<Sample>,
}

/// Storage the engine evaluates over. The aggregator's in-memory window implements it; so does
/// [`MemStorage`] for tests, rule unit tests and backtests.
pub trait Storage {
    /// Every series matching all `matchers`, with its samples whose timestamps lie in
    /// `[mint, maxt]` (milliseconds, both inclusive). Series with no sample in the range may be
    /// left out.
    fn select(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Vec<SeriesData>;
}

/// Whether `labels` satisfy every matcher (an absent label matches as the empty string).
pub fn matches_all(labels: &Labels, matchers: &[Matcher]) -> bool {
    matchers
        .iter()
        .all(|m| m.is_match(labels.get_or_empty(&m.name)))
}

/// A simple in-memory storage: a sorted map from label set to samples.
#[derive(Debug, Default, Clone)]
pub struct MemStorage {
    series: BTreeMap<Labels, Vec<Sample>>,
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

    pub fn clear(&mut self) {
        self.series.clear();
    }

    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Labels, &Vec<Sample>)> {
        self.series.iter()
    }
}

impl Storage for MemStorage {
    fn select(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Vec<SeriesData> {
        let mut out = Vec::new();
        for (labels, samples) in &self.series {
            if !matches_all(labels, matchers) {
                continue;
            }
            let lo = samples.partition_point(|s| s.timestamp_ms < mint);
            let hi = samples.partition_point(|s| s.timestamp_ms <= maxt);
            if lo < hi {
                out.push(SeriesData {
                    labels: labels.clone(),
                    samples: samples[lo..hi].to_vec(),
                });
            }
        }
        out
    }
}
