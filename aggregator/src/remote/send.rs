//! Forwarding (`[storage.remote] write_url`): everything the window's log holds, remote-write
//! requests as they came, the series the rules recorded and the staleness markers of series
//! no longer pushed, is sent on to the engine with remote-write 1.0.
//!
//! The log is the queue (no second copy on disk): a request is acknowledged once it is in the
//! log, and the forwarder reads the log from its saved position (`forward.position` beside
//! the segments). Segments it has not sent stay past checkpoints; past `queue_max_bytes` of
//! unsent log the oldest is dropped, counted and logged. A restart (or a `kill -9`) resumes
//! from the saved position: what was acknowledged is sent, some of it perhaps twice, which an
//! engine takes as the same sample.
//!
//! Each round reads up to `shards` × 2,000 samples, splits them by series over `shards`
//! concurrent requests (a series always to the same shard, so its samples stay in order) and
//! saves the position once every shard's request is done: answered 2xx, or refused with a 4xx
//! other than 429, which would be refused again (dropped, counted as failed, logged). A 5xx, a
//! 429 or no answer is retried with exponential backoff from 100 ms to 5 s, or after the
//! `Retry-After` the engine gives.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use vigil_config::http::Http;
use vigil_wire::remote_write::{self, RawSeries, TimeSeries, WriteRequest};
use vigil_wire::rw_histogram::Histogram;
use vigil_wire::{Labels, Sample, STALE_NAN};

use crate::store::wal::{self, Kind, Record, Tail};
use crate::store::Store;

/// Samples one request carries at most (a histogram counts as one), as Prometheus's
/// `max_samples_per_send`.
const PER_SEND: usize = 2_000;
const POSITION_FILE: &str = "forward.position";
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// How often an idle forwarder looks for new records.
const IDLE: Duration = Duration::from_millis(100);

#[derive(Clone, Default)]
struct Metrics {
    pending_bytes: Gauge,
    sent: Counter,
    failed: Counter,
    dropped: Counter,
    left_out: Counter,
    retries: Counter,
    shards: Gauge,
    position_segment: Gauge,
    corrupt: Counter,
}

/// What every shard's request needs.
struct Shared {
    url: String,
    headers: Vec<(String, String)>,
    http: Http,
    metrics: Metrics,
    /// A retrying shard gives up past this much unsent log (the oldest is dropped).
    max_bytes: u64,
    /// Signs each attempt (SigV4), when set.
    signer: Option<Arc<dyn vigil_remote::Signer>>,
    /// The log, and the position saved last: what is pending is measured from there.
    dir: PathBuf,
    committed: std::sync::Mutex<(u64, u64)>,
}

pub struct Forwarder {
    dir: PathBuf,
    shards: usize,
    max_body: usize,
    store: Arc<Store>,
    shared: Arc<Shared>,
    /// Whether this node's own series go to the engine now (in a cluster, the acting node's).
    acting: Arc<dyn Fn() -> bool + Send + Sync>,
}

/// Where forwarding resumes in the log at `dir`: segment and byte offset (the start of the
/// log when nothing was saved, or when what was saved points past the log: segments deleted
/// or restored by hand would otherwise leave the forwarder waiting for a segment that never
/// comes).
pub fn saved_position(dir: &Path) -> (u64, u64) {
    let Some((seg, offset)) = std::fs::read_to_string(dir.join(POSITION_FILE))
        .ok()
        .and_then(|t| {
            let (s, o) = t.trim().split_once(' ')?;
            Some((s.parse::<u64>().ok()?, o.parse::<u64>().ok()?))
        })
    else {
        return (0, 0);
    };
    let newest = wal::segments(dir).ok().and_then(|v| v.last().copied());
    let size = std::fs::metadata(wal::segment_path(dir, seg)).map(|m| m.len());
    let past = match (newest, size) {
        (None, _) => seg > 0 || offset > 0,
        (Some(n), _) if seg > n => true,
        (_, Ok(len)) => offset > len,
        // The segment is gone (sent and removed): the next one that exists is read.
        (_, Err(_)) => offset > 0 && seg == newest.unwrap_or(0),
    };
    if past {
        tracing::warn!(segment = seg, offset, newest_segment = ?newest, "forwarding: the saved position is past the log (segments removed or restored?); forwarding from the oldest segment");
        return (0, 0);
    }
    (seg, offset)
}

fn save_position(dir: &Path, (seg, offset): (u64, u64)) -> std::io::Result<()> {
    // Written after the requests it covers were answered: a lost update only means sending
    // again, so no fsync; the rename keeps the file whole.
    let tmp = dir.join("forward.position.tmp");
    std::fs::write(&tmp, format!("{seg} {offset}\n"))?;
    std::fs::rename(tmp, dir.join(POSITION_FILE))
}

impl Forwarder {
    /// Forwards the log in `dir` to `cfg.write_url` (with the configured headers and token).
    pub fn new(
        cfg: &crate::config::Remote,
        signer: Option<Arc<dyn vigil_remote::Signer>>,
        dir: &Path,
        max_body: usize,
        store: Arc<Store>,
        registry: &mut Registry,
    ) -> Result<Forwarder, String> {
        let url = cfg
            .write_url
            .clone()
            .ok_or("storage.remote: no write_url")?;
        let headers = super::headers(cfg)?;
        let (shards, max_bytes) = (cfg.shards, cfg.queue_max_bytes);
        let http = Http::new().map_err(|e| e.to_string())?;
        let metrics = Metrics::default();
        let r = registry.sub_registry_with_prefix("vigil_aggregator_remote_write");
        r.register(
            "pending_bytes",
            "Bytes of the window's log not yet forwarded to the engine",
            metrics.pending_bytes.clone(),
        );
        r.register(
            "samples_sent",
            "Samples the engine accepted (a histogram counts as one)",
            metrics.sent.clone(),
        );
        r.register(
            "samples_failed",
            "Samples the engine refused with a 4xx other than 429 (not retried)",
            metrics.failed.clone(),
        );
        r.register(
            "samples_dropped",
            "Samples dropped unsent: past queue_max_bytes, oldest first",
            metrics.dropped.clone(),
        );
        r.register(
            "samples_left_to_holder",
            "Samples this node wrote itself (recorded series, ALERTS, liveness) not forwarded while another node of the cluster acts: the acting node's go",
            metrics.left_out.clone(),
        );
        r.register(
            "retries",
            "Requests retried after a 5xx, a 429 or no answer",
            metrics.retries.clone(),
        );
        r.register("shards", "Concurrent senders", metrics.shards.clone());
        r.register(
            "corrupt_records",
            "Torn or corrupt log records the forwarder skipped (with the rest of their segment)",
            metrics.corrupt.clone(),
        );
        r.register(
            "position_segment",
            "The log segment forwarding reads",
            metrics.position_segment.clone(),
        );
        metrics.shards.set(shards as i64);
        Ok(Forwarder {
            dir: dir.to_path_buf(),
            shards,
            max_body,
            store,
            acting: Arc::new(|| true),
            shared: Arc::new(Shared {
                url,
                headers,
                http,
                metrics,
                max_bytes,
                signer,
                dir: dir.to_path_buf(),
                committed: std::sync::Mutex::new(saved_position(dir)),
            }),
        })
    }

    /// In a cluster: forwards the series this node writes itself (recorded series, `ALERTS`,
    /// `vigil_instance_up`, imports) only when written while `acting` said this node acts
    /// (noted every 100 ms, kept in `forward.roles`), so that the engine holds one node's,
    /// those its decisions were made on; what agents push is forwarded by every node that
    /// received it (identical copies).
    pub fn acting_when(mut self, acting: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.acting = Arc::new(acting);
        self
    }

    /// Forwards until the process ends.
    pub async fn run(self) {
        let (seg, offset) = saved_position(&self.dir);
        tracing::info!(url = %vigil_config::redact::url(&self.shared.url), segment = seg, offset, shards = self.shards, "forwarding the window's log to the engine");
        let committed = self.store.log_committed.clone();
        // The node's role by wall time, noted as it changes.
        let roles = Arc::new(std::sync::Mutex::new(super::roles::Roles::load(&self.dir)));
        {
            let (roles, acting, dir) = (roles.clone(), self.acting.clone(), self.dir.clone());
            tokio::spawn(async move {
                loop {
                    let now = vigil_wire::clock::wall_ms();
                    let a = acting();
                    roles
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .note(&dir, now, a);
                    tokio::time::sleep(IDLE).await;
                }
            });
        }
        let mut tail = Some(Tail::new(&self.dir, seg, offset).bounded(committed.clone()));
        let mut saved = (seg, offset);
        let mut seen_skipped = 0;
        loop {
            let t = tail.take().expect("tail");
            let dir = self.dir.clone();
            let (shards, max_body, max_bytes) = (self.shards, self.max_body, self.shared.max_bytes);
            let roles = roles.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let read = tokio::task::spawn_blocking(move || {
                let mut t = t;
                let dropped = enforce_bound(&dir, &mut t, max_bytes);
                let batch = read_batch(&mut t, shards, max_body, &roles);
                (t, dropped, batch)
            })
            .await;
            let (t, dropped, batch) = match read {
                Ok(r) => r,
                Err(e) => {
                    // Never a silent stop (the log would grow past every checkpoint): start
                    // again from what was confirmed.
                    tracing::error!(error = %e, "forwarding: reading the log failed; resuming from the saved position");
                    tail = Some(Tail::new(&self.dir, saved.0, saved.1).bounded(committed.clone()));
                    seen_skipped = 0;
                    tokio::time::sleep(MAX_BACKOFF).await;
                    continue;
                }
            };
            let skipped = t.skipped;
            tail = Some(t);
            self.shared
                .metrics
                .corrupt
                .inc_by(skipped.saturating_sub(seen_skipped));
            seen_skipped = skipped;
            self.shared.metrics.dropped.inc_by(dropped);
            self.shared.measure();
            let batch = match batch {
                Ok((b, left_out)) => {
                    self.shared.metrics.left_out.inc_by(left_out);
                    b
                }
                Err(e) => {
                    tracing::error!(error = %e, "forwarding: reading the window's log failed; retrying");
                    tokio::time::sleep(MAX_BACKOFF).await;
                    continue;
                }
            };
            if batch.iter().all(|b| b.requests.is_empty()) {
                let here = tail.as_ref().expect("tail").position();
                if here != saved {
                    self.commit(here, &mut saved);
                }
                tokio::time::sleep(IDLE).await;
                continue;
            }
            let mut set = tokio::task::JoinSet::new();
            for shard in batch.into_iter().filter(|s| !s.requests.is_empty()) {
                let shared = self.shared.clone();
                set.spawn(async move {
                    for r in shard.requests {
                        shared.send(r.body, r.samples).await;
                    }
                });
            }
            while set.join_next().await.is_some() {}
            let here = tail.as_ref().expect("tail").position();
            self.commit(here, &mut saved);
        }
    }

    fn commit(&self, here: (u64, u64), saved: &mut (u64, u64)) {
        if let Err(e) = save_position(&self.dir, here) {
            tracing::warn!(error = %e, "forwarding: cannot save the position (a restart sends some samples again)");
        }
        *saved = here;
        *self
            .shared
            .committed
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = here;
        self.shared.measure();
        self.store.keep_log_from.store(here.0, Ordering::Relaxed);
        self.shared.metrics.position_segment.set(here.0 as i64);
    }
}

impl Shared {
    /// Measures the log not yet sent (from the saved position), for the gauge and the bound.
    fn measure(&self) -> u64 {
        let at = *self.committed.lock().unwrap_or_else(|p| p.into_inner());
        let pending = pending_bytes(&self.dir, at);
        self.metrics.pending_bytes.set(pending as i64);
        pending
    }

    /// Sends one shard's series until the engine takes them, refuses them for good, or the
    /// queue is past its bound (the oldest, these, are dropped then).
    fn send(
        &self,
        raw: Vec<u8>,
        samples: usize,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(self.send_once(raw, samples))
    }

    async fn send_once(&self, raw: Vec<u8>, samples: usize) {
        let body = Bytes::from(remote_write::compress(&raw));
        let mut headers: Vec<(&str, &str)> = vec![
            ("content-encoding", "snappy"),
            ("content-type", "application/x-protobuf"),
            ("x-prometheus-remote-write-version", "0.1.0"),
            (
                "user-agent",
                concat!("vigil-aggregator/", env!("CARGO_PKG_VERSION")),
            ),
        ];
        headers.extend(self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let mut backoff = MIN_BACKOFF;
        let mut logged = false;
        loop {
            // A signature holds for minutes only: made again for every attempt.
            let signed = match &self.signer {
                Some(s) => s.sign("POST", &self.url, &headers, &body).await,
                None => Ok(Vec::new()),
            };
            let sent = match signed {
                Ok(signed) => {
                    let mut all = headers.clone();
                    all.extend(signed.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                    self.http
                        .request(
                            Method::POST,
                            &self.url,
                            &all,
                            body.clone(),
                            SEND_TIMEOUT,
                            1 << 20,
                        )
                        .await
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e),
            };
            let wait = match sent {
                Ok(r) if r.status.is_success() => {
                    self.metrics.sent.inc_by(samples as u64);
                    if logged {
                        tracing::info!("forwarding: the engine takes samples again");
                    }
                    return;
                }
                Ok(r)
                    if r.status == StatusCode::TOO_MANY_REQUESTS || r.status.is_server_error() =>
                {
                    if !logged {
                        tracing::warn!(status = r.status.as_u16(), answer = %String::from_utf8_lossy(&r.body[..r.body.len().min(200)]).trim(), "forwarding: the engine refused for now; retrying");
                        logged = true;
                    }
                    retry_after(&r.headers).unwrap_or(backoff)
                }
                Ok(r) if matches!(r.status.as_u16(), 400 | 413) && halves(&raw).is_some() => {
                    // One bad sample (out of order for a Prometheus receiver, a series over a
                    // limit) refuses the whole request: halve it, so only that series is lost.
                    if let Some([a, b]) = halves(&raw) {
                        self.send(a.body, a.samples).await;
                        self.send(b.body, b.samples).await;
                    }
                    return;
                }
                Ok(r) => {
                    self.metrics.failed.inc_by(samples as u64);
                    tracing::error!(status = r.status.as_u16(), samples, answer = %String::from_utf8_lossy(&r.body[..r.body.len().min(300)]).trim(), "forwarding: the engine refused samples for good; dropped");
                    return;
                }
                Err(e) => {
                    if !logged {
                        tracing::warn!(error = %e, "forwarding: the engine cannot be reached; retrying (the log keeps everything up to queue_max_bytes)");
                        logged = true;
                    }
                    backoff
                }
            };
            if self.measure() > self.max_bytes {
                self.metrics.dropped.inc_by(samples as u64);
                tracing::warn!(
                    samples,
                    max_bytes = self.max_bytes,
                    "forwarding: queue past queue_max_bytes; the oldest samples dropped"
                );
                return;
            }
            self.metrics.retries.inc();
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by remote-write receivers).
fn retry_after(h: &hyper::HeaderMap) -> Option<Duration> {
    let secs: u64 = h.get("retry-after")?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(300)))
}

#[path = "batch.rs"]
mod batch;
use batch::*;

#[cfg(test)]
#[path = "send_tests.rs"]
mod tests;
