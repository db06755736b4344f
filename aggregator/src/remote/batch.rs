//! The forwarder's reading side: whole log records into sharded requests of whole series,
//! halves of a refused request, and the queue's bound.

use super::*;

/// One request: a `WriteRequest` body (uncompressed) built of whole series.
#[derive(Default)]
pub(super) struct Request {
    pub(super) body: Vec<u8>,
    pub(super) samples: usize,
}

/// One shard's requests, sent in order.
#[derive(Default)]
pub(super) struct Shard {
    pub(super) requests: Vec<Request>,
}

impl Shard {
    /// Adds a series to the last request, or to a new one past [`PER_SEND`] samples.
    pub(super) fn add(&mut self, r: &RawSeries<'_>) {
        match self.requests.last_mut() {
            Some(last) if last.samples + r.samples <= PER_SEND => {
                r.append_to(&mut last.body);
                last.samples += r.samples;
            }
            _ => {
                let mut body = Vec::new();
                r.append_to(&mut body);
                self.requests.push(Request {
                    body,
                    samples: r.samples,
                });
            }
        }
    }
}

/// Reads whole records until about `shards` × [`PER_SEND`] samples, split by series. A
/// remote-write request's series are passed on as they came, undecoded; the aggregator's own
/// (recorded series, `ALERTS`, liveness, imports) only when written while this node acted,
/// else counted (the second value).
pub(super) fn read_batch(
    tail: &mut Tail,
    shards: usize,
    max_body: usize,
    roles: &super::super::roles::Roles,
) -> std::io::Result<(Vec<Shard>, u64)> {
    let mut out: Vec<Shard> = (0..shards).map(|_| Shard::default()).collect();
    let (mut total, mut left_out) = (0, 0);
    while total < shards * PER_SEND {
        let Some(body) = tail.next()? else { break };
        let not_ours = Record::parse(&body).is_some_and(|r| {
            matches!(r.kind, Kind::Internal | Kind::InternalHistogram) && !roles.acted_at(r.now_ms)
        });
        if not_ours {
            left_out += series_of(&body, max_body, &mut |_| {}) as u64;
            continue;
        }
        total += series_of(&body, max_body, &mut |r| {
            out[(r.label_hash % shards as u64) as usize].add(&r);
        });
    }
    Ok((out, left_out))
}

/// A request body's series in two halves (`None` for a single series).
pub(super) fn halves(raw: &[u8]) -> Option<[Request; 2]> {
    let mut all = Vec::new();
    remote_write::raw_series(raw, |r| all.push(r)).ok()?;
    if all.len() < 2 {
        return None;
    }
    let mid = all.len() / 2;
    let half = |part: &[RawSeries<'_>]| {
        let mut q = Request::default();
        for r in part {
            r.append_to(&mut q.body);
            q.samples += r.samples;
        }
        q
    };
    Some([half(&all[..mid]), half(&all[mid..])])
}

/// Hands each series of one log record to `f`, as remote-write sends it; returns the samples.
pub(super) fn series_of(body: &[u8], max_body: usize, f: &mut dyn FnMut(RawSeries<'_>)) -> usize {
    let Some(rec) = Record::parse(body) else {
        return 0;
    };
    let labelled = |payload: &[u8]| {
        wal::decode_internal(payload)
            .and_then(|(enc, samples)| Some((Labels::from_encoded_checked(enc)?, samples)))
    };
    let one = |ts: TimeSeries| {
        WriteRequest {
            timeseries: vec![ts],
            metadata: Vec::new(),
        }
        .encode_raw()
    };
    let raw: Vec<u8> = match rec.kind {
        // Accepted under the limit of its day: decoded under at least the default's.
        Kind::Write => {
            remote_write::decompress(rec.payload, max_body.max(32 << 20)).unwrap_or_default()
        }
        Kind::Internal => labelled(rec.payload)
            .map(|(l, s)| one(TimeSeries::new(&l, &s)))
            .unwrap_or_default(),
        Kind::Stale => labelled(rec.payload)
            .map(|(l, _)| one(TimeSeries::new(&l, &[Sample::new(rec.now_ms, STALE_NAN)])))
            .unwrap_or_default(),
        Kind::InternalHistogram => wal::decode_internal_histogram(rec.payload)
            .and_then(|(enc, h)| {
                let mut ts = TimeSeries::new(&Labels::from_encoded_checked(enc)?, &[]);
                ts.histograms
                    .push(Histogram::from_float(&h.h, h.timestamp_ms));
                Some(one(ts))
            })
            .unwrap_or_default(),
    };
    let mut n = 0;
    let _ = remote_write::raw_series(&raw, |r| {
        n += r.samples;
        f(r);
    });
    n
}

/// Bytes of the log from `position` on.
pub(super) fn pending_bytes(dir: &Path, (seg, offset): (u64, u64)) -> u64 {
    let Ok(segs) = wal::segments(dir) else {
        return 0;
    };
    segs.into_iter()
        .filter(|&n| n >= seg)
        .map(|n| {
            let size = std::fs::metadata(wal::segment_path(dir, n)).map_or(0, |m| m.len());
            if n == seg {
                size.saturating_sub(offset)
            } else {
                size
            }
        })
        .sum()
}

/// Past `max_bytes` of unsent log, drops whole segments, oldest first (never the one being
/// written); returns the samples dropped.
pub(super) fn enforce_bound(dir: &Path, tail: &mut Tail, max_bytes: u64) -> u64 {
    let mut dropped = 0;
    while pending_bytes(dir, tail.position()) > max_bytes {
        let seg = tail.position().0;
        // Count what goes: the rest of this segment's records.
        let mut n = 0u64;
        let mut probe = Tail::new(dir, seg, tail.position().1);
        while probe.position().0 == seg {
            match probe.next() {
                Ok(Some(body)) if probe.position().0 == seg => {
                    n += series_of(&body, 64 << 20, &mut |_| {}) as u64
                }
                _ => break,
            }
        }
        if !tail.skip_segment().unwrap_or(false) {
            break;
        }
        dropped += n;
        tracing::warn!(
            segment = seg,
            samples = n,
            max_bytes,
            "forwarding: queue past queue_max_bytes; the oldest segment dropped unsent"
        );
    }
    dropped
}
