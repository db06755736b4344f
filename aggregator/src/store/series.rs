//! One series of the window as it is held, and as a reader takes it.

use vigil_rules::promql::SeriesData;
use vigil_wire::{Labels, Sample};

use super::{chunk, hist};

pub(super) struct Series {
    pub(super) labels: Labels,
    /// Full chunks, oldest first, in one allocation.
    pub(super) closed: chunk::ClosedChunks,
    /// The chunk being appended to.
    pub(super) head: Option<chunk::Chunk>,
    /// The newest sample (appends must be newer).
    pub(super) last: Option<Sample>,
    /// When a sample last arrived by remote-write (wall clock ms), for instance liveness;
    /// `i64::MAX` for series the aggregator writes itself (records, `ALERTS`, liveness), which
    /// rule evaluation ends on its own.
    pub(super) last_push_ms: i64,
    /// Set when the series' instance stopped pushing: reads see a staleness marker here. Kept
    /// out of the chunks so that samples an agent replays from its spool after an outage, older
    /// than this, are still stored; a push clears it.
    pub(super) stale_at: Option<i64>,
    /// Native histograms, for the series that have them (a staleness marker of one is a float
    /// sample among `closed`/`head`).
    pub(super) hists: Option<Box<hist::Hists>>,
}

impl Series {
    /// The newest timestamp held, float or histogram.
    pub(super) fn newest_t(&self) -> Option<i64> {
        let f = self.last.map(|l| l.timestamp_ms);
        let h = self.hists.as_ref().and_then(|h| h.last_t());
        f.max(h)
    }

    /// Samples held, floats and histograms.
    pub(super) fn len(&self) -> usize {
        self.closed.iter().map(|c| c.len()).sum::<usize>()
            + self.head.as_ref().map_or(0, |h| h.len())
            + self.hists.as_ref().map_or(0, |h| h.len())
    }

    /// Heap bytes the samples take.
    pub(super) fn bytes(&self) -> usize {
        self.closed.bytes()
            + self.head.as_ref().map_or(0, |h| h.bytes())
            + self.hists.as_ref().map_or(0, |h| h.bytes())
    }

    pub(super) fn push(&mut self, s: Sample) {
        let head = self.head.get_or_insert_with(chunk::Chunk::default);
        head.push(s);
        // Closed as soon as it is full: its bytes are then sized exactly.
        if head.is_full() {
            if let Some(full) = self.head.take() {
                self.closed.push(full);
            }
        }
        self.last = Some(s);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.closed.is_empty()
            && self.head.as_ref().is_none_or(|h| h.len() == 0)
            && self.hists.as_ref().is_none_or(|h| h.is_empty())
    }

    /// Samples certainly in `[mint, maxt]`: those of the chunks that lie wholly inside it (a
    /// lower bound, from the chunks' headers, without decoding).
    pub(super) fn samples_surely_within(&self, mint: i64, maxt: i64) -> usize {
        let inside = |first: i64, last: i64| first >= mint && last <= maxt;
        let closed: usize = self
            .closed
            .iter()
            .filter(|c| inside(c.first_t(), c.last_t()))
            .map(|c| c.len())
            .sum();
        let head = self
            .head
            .as_ref()
            .filter(|h| h.len() > 0 && inside(h.first_t(), h.last_t()))
            .map_or(0, |h| h.len());
        let hists = self
            .hists
            .as_ref()
            .map_or(0, |h| h.surely_within(mint, maxt));
        closed + head + hists
    }

    /// What a reader needs to decode the series' samples in `[mint, maxt]` after the store's
    /// lock is released: the shared closed block (a reference count), a copy of the head chunk
    /// when it overlaps (at most 120 samples' bytes), the staleness marker. `None` when nothing
    /// in the series can fall in the range.
    pub(super) fn snapshot(&self, mint: i64, maxt: i64) -> Option<Snapshot> {
        let overlaps = |first: i64, last: i64| last >= mint && first <= maxt;
        let closed = self
            .closed
            .iter()
            .any(|c| overlaps(c.first_t(), c.last_t()))
            .then(|| self.closed.clone());
        let head = self
            .head
            .as_ref()
            .filter(|h| h.len() > 0 && overlaps(h.first_t(), h.last_t()))
            .cloned();
        let stale_at = self.stale_at.filter(|t| (mint..=maxt).contains(t));
        let hists = self
            .hists
            .as_ref()
            .map(|h| h.overlapping(mint, maxt))
            .unwrap_or_default();
        if closed.is_none() && head.is_none() && stale_at.is_none() && hists.is_empty() {
            return None;
        }
        Some(Snapshot {
            labels: self.labels.clone(),
            closed,
            head,
            stale_at,
            hists,
        })
    }
}

/// One series as a reader took it under the lock; decoded outside it.
pub(super) struct Snapshot {
    pub(super) labels: Labels,
    pub(super) closed: Option<chunk::ClosedChunks>,
    pub(super) head: Option<chunk::Chunk>,
    pub(super) stale_at: Option<i64>,
    pub(super) hists: Vec<hist::HChunk>,
}

impl Snapshot {
    /// Samples with timestamps in `[mint, maxt]`, oldest first.
    pub(super) fn decode(self, mint: i64, maxt: i64) -> SeriesData {
        let mut out = Vec::new();
        let in_range = |s: &Sample| s.timestamp_ms >= mint && s.timestamp_ms <= maxt;
        if let Some(closed) = &self.closed {
            for c in closed.iter() {
                if c.last_t() >= mint && c.first_t() <= maxt {
                    out.extend(c.iter().filter(in_range));
                }
            }
        }
        if let Some(h) = &self.head {
            out.extend(h.iter().filter(in_range));
        }
        let hists = hist::decode_range(&self.hists, mint, maxt);
        if let Some(t) = self.stale_at {
            let newest = out
                .last()
                .map(|l| l.timestamp_ms)
                .max(hists.last().map(|h| h.timestamp_ms));
            if newest.is_none_or(|n| n < t) {
                out.push(Sample::new(t, vigil_wire::STALE_NAN));
            }
        }
        if hists.is_empty() {
            return SeriesData::floats(self.labels, out);
        }
        // The counter-reset hints Prometheus's TSDB would read back.
        let histograms = vigil_rules::promql::storage::tsdb_hints(&out, &hists);
        SeriesData {
            labels: self.labels,
            samples: out,
            histograms,
        }
    }
}
