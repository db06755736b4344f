//! The series window: the last `retention` of every series, in memory, with an inverted index
//! ([`index`]) for the selectors rules and queries use. Out-of-order and too-old samples are dropped and counted,
//! never stored wrongly.
//!
//! Samples are kept in Gorilla-compressed chunks ([`chunk`]): about a byte and a half per sample
//! for steady series instead of sixteen.
//!
//! The window survives restarts: what it takes is written to a log first ([`wal`]), and it is
//! copied to disk now and then ([`checkpoint`]); a start loads the one and replays the other.

pub mod checkpoint;
pub mod chunk;
mod hist;
mod index;
mod series;
pub mod wal;

use series::Series;

use parking_lot::{Mutex, MutexGuard};
use std::collections::HashMap;
use std::hash::BuildHasher;

use vigil_rules::promql::storage::Matcher;
use vigil_wire::{Labels, Sample};

/// `last_push_ms` of series written by the aggregator itself.
const INTERNAL: i64 = i64::MAX;

#[derive(Default)]
struct Inner {
    series: Vec<Option<Series>>,
    /// Series ids by their labels (hashed as their encoded text), without a second copy of
    /// the key: 4 bytes an entry instead of 24.
    by_labels: hashbrown::HashTable<index::Id>,
    hasher: std::hash::RandomState,
    index: index::Index,
    /// Series created since the index was last brought up to date. Ingest only notes them; the
    /// next reader indexes them in one go, which keeps the index's growing lists out of the
    /// allocations the ingest path makes (measured: indexing inline cost a tenth of the ingest
    /// rate, through the scattered chunk buffers it left behind).
    unindexed: Vec<index::Id>,
    free: Vec<usize>,
    samples: usize,
    /// The window's log ([`wal`]), when it is kept on disk: written under this lock, so that
    /// records are in the order the window took them and a checkpoint's cut falls between two
    /// requests.
    log: Option<wal::Log>,
    /// Set while a start rebuilds the window: the series limit does not apply.
    restoring: bool,
}

impl Inner {
    /// Adds a new series (its labels not yet in the map); returns its id.
    fn insert(&mut self, hash: u64, s: Series) -> usize {
        let id = match self.free.pop() {
            Some(id) => {
                self.series[id] = Some(s);
                id
            }
            None => {
                // Grow by an eighth, not double: at a million series, doubling would leave
                // up to half the slots (each over a hundred bytes) unused.
                if self.series.len() == self.series.capacity() {
                    let extra = self.series.capacity() / 8 + 1024;
                    self.series.reserve_exact(extra);
                }
                self.series.push(Some(s));
                self.series.len() - 1
            }
        };
        self.unindexed.push(id as index::Id);
        let Inner {
            by_labels,
            series,
            hasher,
            ..
        } = self;
        by_labels.insert_unique(hash, id as index::Id, |&other| {
            hasher.hash_one(
                series[other as usize]
                    .as_ref()
                    .map(|s| s.labels.encoded())
                    .expect("every id in the series map names a live series"),
            )
        });
        id
    }

    /// The id of the series whose canonical encoding is `encoded`.
    fn find(&self, hash: u64, encoded: &str) -> Option<usize> {
        let series = &self.series;
        self.by_labels
            .find(hash, |&id| {
                series[id as usize]
                    .as_ref()
                    .is_some_and(|s| s.labels.encoded() == encoded)
            })
            .map(|&id| id as usize)
    }

    /// Indexes the series created since the last call.
    fn catch_up_index(&mut self) {
        if self.unindexed.is_empty() {
            return;
        }
        let Inner {
            series,
            index,
            unindexed,
            ..
        } = self;
        for id in unindexed.drain(..) {
            if let Some(s) = &series[id as usize] {
                index.add(&s.labels, id);
            }
        }
        unindexed.shrink_to_fit();
    }
}

/// What one append did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AppendStats {
    pub accepted: usize,
    pub out_of_order: usize,
    pub too_old: usize,
    pub duplicates: usize,
    pub too_new: usize,
}

/// How far ahead of the aggregator's clock a sample may be.
pub const MAX_FUTURE_MS: i64 = 10 * 60 * 1000;

pub struct Store {
    inner: Mutex<Inner>,
    log_metrics: checkpoint::LogMetrics,
    /// The oldest log segment someone still reads (the forwarder): kept past checkpoints.
    pub keep_log_from: std::sync::atomic::AtomicU64,
    /// How far the log is written whole (the forwarder reads no further).
    pub log_committed: wal::Committed,
    pub retention_ms: i64,
    pub max_series: usize,
}

/// Refused because the store holds `max_series` already.
#[derive(Debug, thiserror::Error)]
#[error("series limit of {0} reached")]
pub struct TooManySeries(pub usize);

impl Store {
    pub fn new(retention_ms: i64, max_series: usize) -> Store {
        Store {
            inner: Mutex::new(Inner::default()),
            log_metrics: Default::default(),
            keep_log_from: std::sync::atomic::AtomicU64::new(u64::MAX),
            log_committed: wal::Committed::default(),
            retention_ms,
            // Series ids are `u32` in the index.
            max_series: max_series.min(index::Id::MAX as usize),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// Appends samples the aggregator produced itself (recorded series, `ALERTS`, liveness).
    /// `now_ms` bounds what is too old.
    pub fn append(
        &self,
        labels: &Labels,
        samples: impl IntoIterator<Item = Sample>,
        now_ms: i64,
    ) -> Result<AppendStats, TooManySeries> {
        let samples: Vec<Sample> = samples.into_iter().collect();
        let mut g = self.lock();
        if let Some(log) = g.log.as_mut() {
            log.add(wal::Kind::Internal, now_ms, |out| {
                wal::encode_internal(out, labels.encoded(), &samples)
            });
            if log.is_full() {
                if let Err(e) = log.commit() {
                    self.log_failed(&e);
                }
            }
        }
        self.append_locked(&mut g, labels.encoded(), &samples, now_ms, false)
    }

    /// Holds the store for a batch of appends (one lock per remote-write request, not per series).
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            store: self,
            g: self.lock(),
        }
    }

    /// [`Store::batch`] if the lock comes within `wait` (another push's turn, a reader's slice:
    /// each well under a millisecond).
    pub fn try_batch(&self, wait: std::time::Duration) -> Option<Batch<'_>> {
        self.inner
            .try_lock_for(wait)
            .map(|g| Batch { store: self, g })
    }

    fn append_locked(
        &self,
        g: &mut Inner,
        encoded: &str,
        samples: &[Sample],
        now_ms: i64,
        pushed: bool,
    ) -> Result<AppendStats, TooManySeries> {
        let mut st = AppendStats::default();
        let newest = now_ms.saturating_add(MAX_FUTURE_MS);
        let oldest = now_ms.saturating_sub(self.retention_ms);
        let times = samples.iter().map(|s| s.timestamp_ms);
        let Some(id) = self.find_or_create(g, encoded, times, now_ms, pushed, &mut st)? else {
            return Ok(st);
        };
        let mut added = 0;
        if let Some(s) = g.series[id].as_mut() {
            // A series sent without samples says nothing about the instance being alive.
            if pushed && !samples.is_empty() {
                s.last_push_ms = now_ms;
            }
            for &smp in samples {
                if smp.timestamp_ms < oldest {
                    st.too_old += 1;
                    continue;
                }
                if smp.timestamp_ms > newest {
                    // A clock far ahead would otherwise block every real sample after it.
                    st.too_new += 1;
                    continue;
                }
                // A histogram at or after it: out of order whatever the value.
                if s.hists
                    .as_ref()
                    .and_then(|h| h.last_t())
                    .is_some_and(|t| t >= smp.timestamp_ms)
                {
                    st.out_of_order += 1;
                    continue;
                }
                match s.last {
                    Some(last) if last.timestamp_ms == smp.timestamp_ms => {
                        if last.value.to_bits() == smp.value.to_bits() {
                            st.duplicates += 1;
                        } else {
                            st.out_of_order += 1;
                        }
                        continue;
                    }
                    Some(last) if last.timestamp_ms > smp.timestamp_ms => {
                        st.out_of_order += 1;
                        continue;
                    }
                    _ => {}
                }
                s.push(smp);
                if s.stale_at.is_some_and(|t| smp.timestamp_ms >= t || pushed) {
                    s.stale_at = None;
                }
                added += 1;
            }
        }
        g.samples += added;
        st.accepted = added;
        Ok(st)
    }

    /// The id of the series `encoded`, created if one of `times` is one it will keep (else
    /// `None`, the samples counted as too old or too new in `st`).
    fn find_or_create(
        &self,
        g: &mut Inner,
        encoded: &str,
        times: impl Iterator<Item = i64> + Clone,
        now_ms: i64,
        pushed: bool,
        st: &mut AppendStats,
    ) -> Result<Option<usize>, TooManySeries> {
        let newest = now_ms.saturating_add(MAX_FUTURE_MS);
        let oldest = now_ms.saturating_sub(self.retention_ms);
        let hash = g.hasher.hash_one(encoded);
        if let Some(id) = g.find(hash, encoded) {
            return Ok(Some(id));
        }
        // A series is created only with a sample it will keep.
        if !times.clone().any(|t| t >= oldest && t <= newest) {
            st.too_old = times.clone().filter(|t| *t < oldest).count();
            st.too_new = times.count() - st.too_old;
            return Ok(None);
        }
        // A start restores what was acknowledged whatever the limit; compaction and ingest's
        // refusals bring the window back under it.
        if g.by_labels.len() >= self.max_series && !g.restoring {
            return Err(TooManySeries(self.max_series));
        }
        let s = Series {
            labels: Labels::from_encoded(encoded),
            closed: Default::default(),
            head: None,
            last: None,
            last_push_ms: if pushed { now_ms } else { INTERNAL },
            stale_at: None,
            hists: None,
        };
        Ok(Some(g.insert(hash, s)))
    }

    /// Drops samples older than the retention and series left empty, a slice of series per turn
    /// of the lock (see [`SELECT_SLICE`]); returns the heap bytes the chunks hold afterwards.
    pub fn compact(&self, now_ms: i64) -> usize {
        let oldest = now_ms - self.retention_ms;
        let mut emptied = Vec::new();
        let mut bytes = 0;
        self.each_slice(|g, range| {
            let mut removed = 0;
            for id in range {
                if let Some(s) = g.series[id].as_mut() {
                    // Whole chunks go once their newest sample is past the retention.
                    removed += s.closed.drop_older_than(oldest);
                    if let Some(h) = s.hists.as_mut() {
                        removed += h.drop_older_than(oldest);
                        if h.is_empty() {
                            s.hists = None;
                        }
                    }
                    if s.closed.is_empty()
                        && s.head
                            .as_ref()
                            .is_some_and(|h| h.len() > 0 && h.last_t() < oldest)
                    {
                        removed += s.head.take().map_or(0, |h| h.len());
                    }
                    if s.is_empty() {
                        emptied.push(id);
                    }
                    bytes += s.bytes();
                }
            }
            g.samples -= removed;
        });
        let mut g = self.lock();
        g.catch_up_index();
        let mut gone = Vec::with_capacity(emptied.len());
        for id in emptied {
            // Still empty: no sample arrived since its slice was compacted.
            if !g.series[id].as_ref().is_some_and(Series::is_empty) {
                continue;
            }
            if let Some(s) = g.series[id].take() {
                let hash = g.hasher.hash_one(s.labels.encoded());
                let entry = g.by_labels.find_entry(hash, |&x| x as usize == id);
                debug_assert!(entry.is_ok(), "series {id} missing from the series map");
                if let Ok(e) = entry {
                    e.remove();
                }
                gone.push((s.labels, id as index::Id));
                g.free.push(id);
            }
        }
        g.index.remove_all(gone.iter().map(|(l, id)| (l, *id)));
        bytes
    }

    /// Runs `f` over every series id, [`SELECT_SLICE`] ids per turn of the lock, so that a
    /// walk over the whole window never keeps ingest waiting for long.
    fn each_slice(&self, mut f: impl FnMut(&mut Inner, std::ops::Range<usize>)) {
        let mut start = 0;
        loop {
            let mut g = self.lock();
            let end = (start + SELECT_SLICE).min(g.series.len());
            f(&mut g, start..end);
            let len = g.series.len();
            // A thread waiting (ingest) gets the lock now, before this walk's next slice.
            MutexGuard::unlock_fair(g);
            if end >= len {
                return;
            }
            start = end;
        }
    }

    /// Marks stale every series that has not been pushed to for `stale_after` (its instance
    /// stopped pushing): a staleness marker ends it at `now_ms`, so queries stop returning its
    /// last value at once rather than after the 5-minute lookback. Returns how many were marked.
    pub fn mark_stale(&self, now_ms: i64, stale_after_ms: i64) -> usize {
        let mut marked = 0;
        self.each_slice(|g, range| {
            let Inner { series, log, .. } = g;
            for s in series[range].iter_mut().flatten() {
                let Some(newest) = s.newest_t() else { continue };
                let ended = s
                    .last
                    .is_some_and(|l| l.timestamp_ms == newest && vigil_wire::is_stale_nan(l.value));
                if s.stale_at.is_some()
                    || s.last_push_ms > now_ms.saturating_sub(stale_after_ms)
                    || ended
                    || newest >= now_ms
                {
                    continue;
                }
                s.stale_at = Some(now_ms);
                // Logged, so that a restart does not show the series' last value again.
                if let Some(log) = log.as_mut() {
                    log.add(wal::Kind::Stale, now_ms, |out| {
                        wal::encode_internal(out, s.labels.encoded(), &[])
                    });
                    if log.is_full() {
                        if let Err(e) = log.commit() {
                            self.log_failed(&e);
                        }
                    }
                }
                marked += 1;
            }
        });
        self.flush_log();
        marked
    }

    pub fn series_count(&self) -> usize {
        self.lock().by_labels.len()
    }

    pub fn sample_count(&self) -> usize {
        self.lock().samples
    }

    /// Label sets matching the matchers with a sample in `[mint, maxt]`.
    pub fn series(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Vec<Labels> {
        self.read(matchers, mint, maxt)
            .into_iter()
            .map(|s| s.labels)
            .collect()
    }

    /// Every label name, or every value of one label, among series in the window (sorted).
    pub fn label_values(&self, name: Option<&str>) -> Vec<String> {
        let mut g = self.lock();
        g.catch_up_index();
        match name {
            None => g.index.names(),
            Some(n) => g.index.values(n),
        }
    }

    /// Per instance: its label sets' last push time (ms).
    pub fn instances(&self) -> Vec<(String, Labels, i64)> {
        let mut m: HashMap<String, (Labels, i64)> = HashMap::new();
        self.each_slice(|g, range| {
            for s in g.series[range]
                .iter()
                .flatten()
                .filter(|s| s.last_push_ms != INTERNAL)
            {
                let Some(i) = s.labels.get("instance") else {
                    continue;
                };
                match m.get_mut(i) {
                    Some(e) => e.1 = e.1.max(s.last_push_ms),
                    None => {
                        let keep = s.labels.filter(|l| {
                            matches!(l.name, "instance" | "asg" | "az" | "pod" | "namespace")
                        });
                        m.insert(i.to_string(), (keep, s.last_push_ms));
                    }
                }
            }
        });
        let mut v: Vec<(String, Labels, i64)> =
            m.into_iter().map(|(k, (l, t))| (k, l, t)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// The store locked for a batch of appends.
pub struct Batch<'a> {
    store: &'a Store,
    g: MutexGuard<'a, Inner>,
}

impl Batch<'_> {
    /// Writes a remote-write request's body (as received) to the window's log before it is
    /// stored; an error means it must not be stored, nor acknowledged. Under `wal_fsync` the
    /// answer must also wait for what this returns, after the batch is dropped.
    pub fn log(&mut self, now_ms: i64, body: &[u8]) -> std::io::Result<Option<wal::PendingSync>> {
        let Some(log) = self.g.log.as_mut() else {
            return Ok(None);
        };
        let start = log.add(wal::Kind::Write, now_ms, |out| out.extend_from_slice(body));
        log.commit_request(start)
            .inspect_err(|e| self.store.log_failed(e))
    }

    /// Appends to the series whose canonical label encoding is `encoded`.
    pub fn append(
        &mut self,
        encoded: &str,
        samples: &[Sample],
        now_ms: i64,
    ) -> Result<AppendStats, TooManySeries> {
        self.store
            .append_locked(&mut self.g, encoded, samples, now_ms, true)
    }

    /// Appends native histograms to the series whose canonical label encoding is `encoded`.
    pub fn append_histograms(
        &mut self,
        encoded: &str,
        hists: &[vigil_wire::histogram::HSample],
        now_ms: i64,
    ) -> Result<AppendStats, TooManySeries> {
        self.store
            .append_hist_locked(&mut self.g, encoded, hists, now_ms, true)
    }
}

/// Series a selection snapshots (or a walk visits) per turn of the lock. Each turn ends with a
/// fair unlock, which hands the lock to a waiting thread (ingest) rather than letting the walker
/// take it straight back: a selection over every series of a large fleet keeps a push waiting for
/// a fraction of a millisecond, not for the whole walk (measured: with std's mutex three queries
/// in slices kept pushes waiting 30 ms and more).
const SELECT_SLICE: usize = 512;

mod select;
mod sink;
pub use sink::RuleSink;

#[cfg(test)]
mod tail_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod wal_tests;
