//! `POST /api/v1/write`: remote-write 1.0 from any sender (Vigil's agent, Prometheus, vmagent,
//! Grafana Alloy). Answers 204 accepted, 400 malformed, 401 missing or wrong token, 413 too large,
//! 429 over the series limit or after 30 s waiting for a write slot (with `Retry-After` and the
//! limit's name in `x-vigil-limit`), 503 when the window's log cannot be written
//! (disk full; with `Retry-After`, nothing stored).

use bytes::Bytes;
use hyper::StatusCode;
use vigil_wire::remote_write::{self, DecodeError};

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::store::Store;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Default)]
struct Metrics {
    write_requests: Family<CodeLabels, Counter>,
    write_refused: Family<ReasonLabels, Counter>,
    samples_ingested: Counter,
    samples_dropped: Family<ReasonLabels, Counter>,
}

impl Metrics {
    fn register(r: &mut Registry) -> Metrics {
        let m = Metrics::default();
        r.register(
            "vigil_aggregator_write_requests",
            "Remote-write requests by HTTP status",
            m.write_requests.clone(),
        );
        r.register(
            "vigil_aggregator_write_refused",
            "Remote-write requests refused by a limit, by limit",
            m.write_refused.clone(),
        );
        r.register(
            "vigil_aggregator_samples_ingested",
            "Samples stored",
            m.samples_ingested.clone(),
        );
        r.register(
            "vigil_aggregator_samples_dropped",
            "Samples not stored, by reason",
            m.samples_dropped.clone(),
        );
        m
    }

    fn refused(&self, reason: &'static str) {
        self.write_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}

/// Past the body limit a request is still read, and thrown away, up to this many more bytes
/// within [`DRAIN_TIME`]: a client that sends its whole body before reading the answer (Python's
/// `urllib`, curl without `Expect`) then reads its 413 instead of a connection reset (the kernel
/// resets a connection closed with unread data). Past the bound the connection is closed, as
/// nginx's lingering close does.
const DRAIN_BYTES: usize = 64 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads a remote-write body of at most `limit` bytes; past it, drains (see [`DRAIN_BYTES`])
/// and answers 413.
pub async fn read_body(
    body: axum::body::Body,
    limit: usize,
) -> Result<Bytes, (StatusCode, String)> {
    use http_body_util::BodyExt;
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than the limit (server.max_body_size = {limit} bytes)\n"),
        )
    };
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut over: Option<(usize, tokio::time::Instant)> = None;
    loop {
        let frame = match over {
            None => body.frame().await,
            Some((_, deadline)) => match tokio::time::timeout_at(deadline, body.frame()).await {
                Ok(f) => f,
                Err(_) => return Err(too_large()),
            },
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body: {e}\n"),
                ))
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
        };
        match &mut over {
            Some((drained, _)) => {
                *drained += data.len();
                if *drained > DRAIN_BYTES {
                    return Err(too_large());
                }
            }
            None if buf.len() + data.len() > limit => {
                over = Some((0, tokio::time::Instant::now() + DRAIN_TIME));
                buf = bytes::BytesMut::new();
            }
            None => buf.extend_from_slice(&data),
        }
    }
    match over {
        Some(_) => Err(too_large()),
        None => Ok(buf.freeze()),
    }
}

/// How long an async worker may wait for the window's lock before it hands the request to the
/// blocking pool: long enough for another push's turn or a reader's slice, so that the hand-over
/// (measured: a third of the ingest rate and more memory per series, the pool's threads each
/// growing an allocator arena, when every request took it) is rare; short enough that tasks
/// queued on the worker hardly notice.
const LOCK_WAIT_ON_WORKER: std::time::Duration = std::time::Duration::from_millis(2);

/// A request validated and ready to store: the decompressed body and each series' canonical
/// labels, encoded once.
pub struct Prepared {
    /// The body as received: what the window's log keeps.
    body: Bytes,
    raw: Vec<u8>,
    encoded: String,
    ends: Vec<usize>,
}

/// Remote-write ingest into the window: its limits and its self-metrics (the token is checked
/// by the router's layer, `auth.rs`).
pub struct Ingest {
    cfg: Config,
    store: Arc<Store>,
    clock: SharedClock,
    metrics: Metrics,
    /// Requests decoded or stored at once (see [`Ingest::slot`]), and how long one waits.
    slots: Arc<tokio::sync::Semaphore>,
    slot_wait: std::time::Duration,
}

/// How long a request waits for one of [`Ingest`]'s slots before it is answered 429 (naming the
/// limit `write_queue`): as long as a sender's push timeout is commonly (Prometheus's
/// remote-write: 30 s), so that a burst waits rather than fails.
const SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl Ingest {
    pub fn new(cfg: Config, store: Arc<Store>, clock: SharedClock, r: &mut Registry) -> Ingest {
        // Decoding is CPU work and storing takes the window's lock in turn: more requests at once
        // than twice the cores only hold more decoded bodies in memory (measured with
        // bench/fleet_overload.sh: 3,000 refused agents' bodies, decoded while they waited for
        // the lock, left RSS 10% above the calm twin's).
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ingest {
            cfg,
            store,
            clock,
            metrics: Metrics::register(r),
            slots: Arc::new(tokio::sync::Semaphore::new(2 * cores)),
            slot_wait: SLOT_WAIT,
        }
    }

    /// Waits for a slot to decode and store one request in; a request waiting holds only its
    /// compressed body. Past [`SLOT_WAIT`]: 429, and a write the sender retries later. The slot
    /// is owned: a request handed to the blocking pool takes it along, and keeps it while it
    /// waits for the window's lock even when its client has gone.
    pub async fn slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, (StatusCode, String)> {
        match tokio::time::timeout(self.slot_wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                self.metrics.refused("write_queue");
                Err((
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "busy: no write slot within {:?} (write_queue)\n",
                        self.slot_wait
                    ),
                ))
            }
        }
    }

    /// Counts a request by its answer.
    pub fn count(&self, status: StatusCode) {
        self.metrics
            .write_requests
            .get_or_create(&CodeLabels {
                code: status.as_u16(),
            })
            .inc();
    }

    /// Handles one write whose bearer token was checked (by the router's token layer): validates
    /// it and, when the window's lock comes within [`LOCK_WAIT_ON_WORKER`], stores it at once and answers (status, and a body
    /// for errors); when a reader holds the lock, hands back what storing needs, for a thread
    /// that may wait (an async worker must not: tasks queued on it would wait too).
    pub fn write_or_defer(&self, body: &Bytes) -> Result<(StatusCode, String), Prepared> {
        let answer = match self.prepare(body) {
            // An fsync per request is a wait for the disk: never on an async worker.
            Ok(p) if self.cfg.wal.enabled && self.cfg.wal.fsync => return Err(p),
            Ok(p) => match self.store.try_batch(LOCK_WAIT_ON_WORKER) {
                Some(batch) => self.store_prepared(&p, batch),
                None => return Err(p),
            },
            Err(e) => e,
        };
        self.count(answer.0);
        Ok(answer)
    }

    /// Stores a request [`Ingest::write_or_defer`] deferred, waiting for the lock.
    pub fn write_deferred(&self, p: Prepared) -> (StatusCode, String) {
        let batch = self.store.batch();
        let answer = self.store_prepared(&p, batch);
        self.count(answer.0);
        answer
    }

    /// Pass 1: decompress and validate everything before storing anything (a malformed request
    /// changes nothing).
    fn prepare(&self, body: &Bytes) -> Result<Prepared, (StatusCode, String)> {
        let app = self;
        let raw = match remote_write::decompress(body, app.cfg.max_body_bytes) {
            Ok(r) => r,
            Err(DecodeError::TooLarge { size, limit }) => {
                return Err((
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("body decompresses to {size} bytes, limit {limit}\n"),
                ))
            }
            Err(e) => return Err((StatusCode::BAD_REQUEST, format!("{e}\n"))),
        };
        let c = &app.cfg;
        let mut failure: Option<(StatusCode, &'static str, String)> = None;
        let mut buf = String::with_capacity(256);
        // Each series' canonical labels, encoded once in pass 1 and reused in pass 2.
        let mut encoded = String::with_capacity(raw.len());
        let mut ends: Vec<usize> = Vec::new();
        let mut count = 0usize;
        let res = remote_write::scan(&raw, |i, s| {
            count += 1;
            let mut fail = |status, reason, msg: String| {
                failure = Some((status, reason, msg));
                Err(String::new())
            };
            if count > c.max_series_per_request {
                return fail(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "series_per_request",
                    format!(
                        "more than {} series in one request",
                        c.max_series_per_request
                    ),
                );
            }
            if s.labels.len() > c.max_labels_per_series {
                return fail(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "labels_per_series",
                    format!(
                        "series {i}: {} labels, limit {}",
                        s.labels.len(),
                        c.max_labels_per_series
                    ),
                );
            }
            if let Some((n, _)) = s.labels.iter().find(|(n, v)| {
                n.len() > c.max_label_name_length || v.len() > c.max_label_value_length
            }) {
                return fail(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "label_length",
                    format!(
                        "series {i}: label {:?} longer than the limits ({} / {} bytes)",
                        n.chars().take(64).collect::<String>(),
                        c.max_label_name_length,
                        c.max_label_value_length
                    ),
                );
            }
            if let Some((n, _)) = s
                .labels
                .iter()
                .find(|(n, _)| !vigil_wire::text::is_valid_label_name(n))
            {
                return fail(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    format!("series {i}: invalid label name {n:?}"),
                );
            }
            if let Err(e) = vigil_wire::encode_sorted(&mut buf, s.labels.iter().copied()) {
                return fail(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    format!("series {i}: {e}"),
                );
            }
            if !s
                .labels
                .iter()
                .any(|(n, v)| *n == vigil_wire::METRIC_NAME && !v.is_empty())
            {
                return fail(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    format!("series {i}: no __name__ label"),
                );
            }
            encoded.push_str(&buf);
            ends.push(encoded.len());
            Ok(())
        });
        if let Some((status, reason, msg)) = failure {
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                app.metrics.refused(reason);
            }
            return Err((status, format!("{msg}\n")));
        }
        if let Err(e) = res {
            return Err((StatusCode::BAD_REQUEST, format!("protobuf: {e}\n")));
        }
        Ok(Prepared {
            body: body.clone(),
            raw,
            encoded,
            ends,
        })
    }

    /// Pass 2: store, holding the window for the whole request.
    fn store_prepared(&self, p: &Prepared, batch: crate::store::Batch<'_>) -> (StatusCode, String) {
        let app = self;
        let Prepared {
            body,
            raw,
            encoded,
            ends,
        } = p;
        let now = app.clock.now_ms();
        let mut batch = batch;
        // Logged before it is stored: what is acknowledged survives a kill -9.
        let pending_sync = match batch.log(now, body) {
            Ok(p) => p,
            Err(e) => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                    "the window's log cannot be written ({e}); nothing was stored, retry later\n"
                ),
                )
            }
        };
        let mut dropped = [0usize; 5];
        let mut accepted = 0usize;
        let mut too_many = None;
        {
            let _ = remote_write::scan(raw, |i, s| {
                let start = if i == 0 { 0 } else { ends[i - 1] };
                let series = &encoded[start..ends[i]];
                let mut outcome = batch.append(series, &s.samples, now);
                if !s.histograms.is_empty() && outcome.is_ok() {
                    let floats = outcome.as_ref().ok().copied().unwrap_or_default();
                    outcome = batch
                        .append_histograms(series, &s.histograms, now)
                        .map(|h| crate::store::AppendStats {
                            accepted: floats.accepted + h.accepted,
                            out_of_order: floats.out_of_order + h.out_of_order,
                            too_old: floats.too_old + h.too_old,
                            duplicates: floats.duplicates + h.duplicates,
                            too_new: floats.too_new + h.too_new,
                        });
                }
                match outcome {
                    Ok(st) => {
                        accepted += st.accepted;
                        dropped[0] += st.out_of_order;
                        dropped[1] += st.too_old;
                        dropped[2] += st.duplicates;
                        dropped[3] += st.too_new;
                        Ok(())
                    }
                    Err(e) => {
                        // Over the series limit: this series is refused, the rest of the request
                        // is still stored (one new series must not block an agent's whole batch).
                        dropped[4] += s.samples.len() + s.histograms.len();
                        too_many = Some(e);
                        Ok(())
                    }
                }
            });
        }
        drop(batch);
        // `wal_fsync`: the disk has the record before the answer; waited for with the window
        // free, so requests that came meanwhile share the wait.
        if let Some(Err(e)) = pending_sync.map(|p| p.wait()) {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the window's log cannot be synced ({e}); retry later\n"),
            );
        }
        app.metrics.samples_ingested.inc_by(accepted as u64);
        for (reason, n) in [
            "out_of_order",
            "too_old",
            "duplicate",
            "too_new",
            "series_limit",
        ]
        .into_iter()
        .zip(dropped)
        {
            if n > 0 {
                app.metrics
                    .samples_dropped
                    .get_or_create(&ReasonLabels { reason })
                    .inc_by(n as u64);
            }
        }
        if let Some(e) = too_many {
            app.metrics.refused("active_series");
            return (
                StatusCode::TOO_MANY_REQUESTS,
                format!("{e}; series already stored were kept\n"),
            );
        }
        (StatusCode::NO_CONTENT, String::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_waits_for_a_slot_and_past_the_wait_gets_429_naming_the_limit() {
        let mut r = Registry::default();
        let store = Arc::new(Store::new(60_000, 100));
        let mut ingest = Ingest::new(
            Config::default(),
            store,
            crate::clock::system(&mut r),
            &mut r,
        );
        ingest.slot_wait = std::time::Duration::from_millis(50);
        let taken: Vec<_> = std::iter::from_fn(|| ingest.slots.try_acquire().ok()).collect();
        assert!(taken.len() >= 2, "two slots a core at least");
        let (status, msg) = ingest.slot().await.expect_err("every slot taken");
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert!(msg.contains("write_queue"), "{msg}");
        assert_eq!(
            ingest
                .metrics
                .write_refused
                .get_or_create(&ReasonLabels {
                    reason: "write_queue"
                })
                .get(),
            1
        );
        // A slot given back is taken by the next request.
        drop(taken);
        assert!(ingest.slot().await.is_ok());
    }
}
