//! Reading the window: [`Storage`] for the store, a slice of series at a time under the lock,
//! decoded outside it, counting against the query's sample budget as it goes.

use parking_lot::MutexGuard;
use vigil_rules::promql::storage::StorageError;
use vigil_rules::promql::storage::{matches_all, Matcher};
use vigil_rules::promql::{SeriesData, Storage};

use super::series::Snapshot;
use super::{index, Inner, Store, SELECT_SLICE};

impl Storage for Store {
    /// The window is in memory: it always answers.
    fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<SeriesData>, StorageError> {
        Ok(self.read(matchers, mint, maxt))
    }

    fn select_within(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        budget: usize,
    ) -> Result<Option<Vec<SeriesData>>, StorageError> {
        Ok(self.read_within(matchers, mint, maxt, budget))
    }
}

impl Store {
    /// Every series matching `matchers` with its samples in `[mint, maxt]`.
    pub fn read(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Vec<SeriesData> {
        self.read_within(matchers, mint, maxt, usize::MAX)
            .unwrap_or_default()
    }

    /// Finds the candidate series, then takes what decoding needs a slice at a time under the
    /// lock (label and chunk references, a copy of each head chunk, matchers checked there), and
    /// decodes with the lock released: ingest and other readers go on meanwhile. A series
    /// created between two slices may be missed, as by a selection made a moment earlier; an id
    /// freed and reused meanwhile is checked against the matchers like any other.
    ///
    /// Counts as it goes: under the lock, the samples of chunks wholly in the range (from their
    /// headers) stop the selection once they pass `budget` (`None`); decoding stops there too.
    /// A query of death over a window of millions of series is refused having loaded at most
    /// its budget, instead of decoding the whole window first.
    pub fn read_within(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        budget: usize,
    ) -> Option<Vec<SeriesData>> {
        let mut snapshots: Vec<Snapshot> = Vec::new();
        let mut surely = 0usize;
        // Returns whether the budget is spent.
        let mut take = |g: &Inner, ids: &mut dyn Iterator<Item = usize>| {
            for id in ids {
                if surely > budget {
                    break;
                }
                if let Some(s) = g.series.get(id).and_then(Option::as_ref) {
                    if matches_all(&s.labels, matchers) {
                        surely += s.samples_surely_within(mint, maxt);
                        snapshots.extend(s.snapshot(mint, maxt));
                    }
                }
            }
            surely > budget
        };
        // `None`: every series (ids below the length at each turn).
        let ids: Option<Vec<index::Id>> = {
            let mut g = self.lock();
            g.catch_up_index();
            match g.index.candidates(matchers) {
                index::Candidates::None => return Some(Vec::new()),
                index::Candidates::All => None,
                index::Candidates::Lists(lists) => {
                    Some(lists.into_iter().flatten().copied().collect())
                }
            }
        };
        match ids {
            Some(ids) => {
                for slice in ids.chunks(SELECT_SLICE) {
                    let g = self.lock();
                    let spent = take(&g, &mut slice.iter().map(|&id| id as usize));
                    MutexGuard::unlock_fair(g);
                    if spent {
                        return None;
                    }
                }
            }
            None => self.each_slice(|g, mut range| {
                take(g, &mut range);
            }),
        }
        if surely > budget {
            return None;
        }
        let mut loaded = 0usize;
        let mut out = Vec::with_capacity(snapshots.len());
        for s in snapshots {
            let d = s.decode(mint, maxt);
            loaded += d.len();
            if loaded > budget {
                return None;
            }
            if !d.is_empty() {
                out.push(d);
            }
        }
        Some(out)
    }
}

/// Two stores' selections as one: series by their labels, a series in both with its samples
/// merged in time order (`ours` wins a timestamp both hold: the window has what was pushed to
/// this aggregator and what its rules recorded, staleness markers included, which a query API
/// does not return).
pub fn merge(theirs: Vec<SeriesData>, ours: Vec<SeriesData>) -> Vec<SeriesData> {
    let mut by: std::collections::BTreeMap<vigil_wire::Labels, SeriesData> =
        theirs.into_iter().map(|s| (s.labels.clone(), s)).collect();
    for o in ours {
        match by.get_mut(&o.labels) {
            None => {
                by.insert(o.labels.clone(), o);
            }
            Some(t) => {
                let mut samples = Vec::with_capacity(t.samples.len() + o.samples.len());
                let (mut a, mut b) = (t.samples.iter().peekable(), o.samples.iter().peekable());
                loop {
                    match (a.peek(), b.peek()) {
                        (Some(x), Some(y)) if x.timestamp_ms < y.timestamp_ms => {
                            samples.push(**x);
                            a.next();
                        }
                        (Some(x), Some(y)) if x.timestamp_ms == y.timestamp_ms => {
                            samples.push(**y);
                            a.next();
                            b.next();
                        }
                        (_, Some(y)) => {
                            samples.push(**y);
                            b.next();
                        }
                        (Some(x), None) => {
                            samples.push(**x);
                            a.next();
                        }
                        (None, None) => break,
                    }
                }
                t.samples = samples;
                t.histograms.extend(o.histograms);
                t.histograms.sort_by_key(|h| h.timestamp_ms);
            }
        }
    }
    by.into_values().collect()
}
