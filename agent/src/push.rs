//! Pushing batches with Prometheus remote-write 1.0: bearer token, timeouts, exponential backoff
//! with full jitter, `Retry-After` honoured on 429, and the disk spool while the receiver cannot
//! be reached. Order is kept: while anything is spooled, new batches join the spool behind it, so
//! a receiver never sees a series go back in time.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use tokio::sync::mpsc;
use vigil_wire::{Labels, Sample};

use vigil_wire::histogram::HSample;

use crate::http::Http;
use crate::spool::Spool;
use crate::telemetry::TargetMetrics;

/// Part of one collection round, ready to send: the body is shared by every target's queue.
#[derive(Clone)]
pub struct Batch {
    pub body: Bytes,
    pub samples: usize,
    /// The collection round's timestamp, for the debug log of what became of the batch.
    pub round_ms: i64,
}

/// Encodes samples into remote-write bodies of at most `max_samples` samples each (one round has
/// each series once, so every sample is its own `TimeSeries`); native histograms follow, each
/// counted as a sample.
pub fn encode(
    samples: &[(Labels, Sample)],
    histograms: &[(Labels, HSample)],
    max_samples: usize,
    round_ms: i64,
) -> Vec<Batch> {
    let max = max_samples.max(1);
    let mut out: Vec<Batch> = samples
        .chunks(max)
        .map(|chunk| Batch {
            body: Bytes::from(vigil_wire::remote_write::encode_snappy_from(
                chunk.iter().map(|(l, s)| (l, std::slice::from_ref(s))),
            )),
            samples: chunk.len(),
            round_ms,
        })
        .collect();
    out.extend(histograms.chunks(max).map(|chunk| Batch {
        body: Bytes::from(vigil_wire::remote_write::encode_snappy_mixed(
            std::iter::empty(),
            chunk.iter().map(|(l, h)| (l, h)),
        )),
        samples: chunk.len(),
        round_ms,
    }));
    out
}

#[derive(Debug)]
enum Outcome {
    Sent,
    /// Worth retrying (connection refused, timeout, 5xx, 429) after at least this long.
    Retry(Option<Duration>, String),
    /// The receiver refuses this body for good (4xx other than 429): retrying cannot help.
    Rejected(String),
}

/// One push target: its own spool, backoff and metrics, on its own task, so that one target
/// down or slow never delays another.
pub struct Pusher {
    pub name: String,
    /// The client, and the stamp of the TLS files it was built from (rebuilt when they change).
    http: std::sync::Mutex<(Http, vigil_config::tls::Stamp)>,
    tls: vigil_config::tls::ClientFiles,
    pub url: String,
    pub token_file: Option<PathBuf>,
    pub timeout: Duration,
    pub spool: Spool,
    pub metrics: TargetMetrics,
    /// Jitter state (xorshift; no need for a cryptographic generator).
    rng: u64,
    backoff: Duration,
    /// Attempts at the oldest spooled frame.
    head_attempts: u32,
}

/// Attempts at one batch answered 429 before it is given up.
const MAX_THROTTLED_ATTEMPTS: u32 = 20;

const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

impl Pusher {
    /// `client`: the HTTP client and the stamp of the TLS files as they were before it was built.
    pub fn new(
        target: &crate::config::Push,
        client: (Http, vigil_config::tls::Stamp),
        spool: Spool,
        metrics: TargetMetrics,
    ) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        let p = Pusher {
            name: target.name.clone(),
            http: std::sync::Mutex::new(client),
            tls: target.tls.clone(),
            url: target.url.clone(),
            token_file: target.token_file.clone(),
            timeout: Duration::from_millis(target.timeout_ms),
            spool,
            metrics,
            rng: seed,
            backoff: BACKOFF_MIN,
            head_attempts: 0,
        };
        p.metrics.spool_frames.set(p.spool.pending() as i64);
        p.metrics.spool_bytes.set(p.spool.bytes() as i64);
        p
    }

    fn jitter(&mut self, max: Duration) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let ms = max.as_millis().max(1) as u64;
        Duration::from_millis(self.rng % ms + 1)
    }

    fn token(&self) -> Option<String> {
        let path = self.token_file.as_ref()?;
        match std::fs::read_to_string(path) {
            Ok(t) => Some(t.trim().to_string()),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read the push token; sending without it");
                None
            }
        }
    }

    /// The client to send with: rebuilt from the TLS files when one was replaced (a rotated
    /// certificate needs no restart); a replacement that cannot be used keeps the previous one.
    fn client(&self) -> Http {
        let mut cur = self.http.lock().unwrap_or_else(|p| p.into_inner());
        if !self.tls.is_empty() {
            let stamp = self.tls.stamp();
            if stamp != cur.1 {
                cur.1 = stamp;
                match Http::with_tls(&self.tls) {
                    Ok(h) => {
                        cur.0 = h;
                        tracing::info!(target = %self.name, "TLS files changed: using the new ones");
                    }
                    Err(e) => {
                        tracing::error!(target = %self.name, error = %e, "TLS files changed but cannot be used; keeping the previous ones")
                    }
                }
            }
        }
        cur.0.clone()
    }

    async fn send(&self, body: Bytes) -> Outcome {
        let token = self.token();
        let auth = token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers = vec![
            ("Content-Encoding", "snappy"),
            ("Content-Type", "application/x-protobuf"),
            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
            (
                "User-Agent",
                concat!("vigil-agent/", env!("CARGO_PKG_VERSION")),
            ),
        ];
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        let started = Instant::now();
        let res = self
            .client()
            .request(
                Method::POST,
                &self.url,
                &headers,
                body,
                self.timeout,
                64 << 10,
            )
            .await;
        self.metrics
            .push_duration
            .observe(started.elapsed().as_secs_f64());
        match res {
            Err(e) => Outcome::Retry(None, e.to_string()),
            Ok(r) if r.status.is_success() => Outcome::Sent,
            Ok(r) => {
                let text = String::from_utf8_lossy(&r.body[..r.body.len().min(256)])
                    .trim()
                    .to_string();
                if r.status == StatusCode::TOO_MANY_REQUESTS {
                    let after = r
                        .headers
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    Outcome::Retry(after, format!("429: {text}"))
                } else if r.status.is_server_error()
                    || matches!(
                        r.status,
                        StatusCode::REQUEST_TIMEOUT
                            | StatusCode::UNAUTHORIZED
                            | StatusCode::FORBIDDEN
                            | StatusCode::NOT_FOUND
                    )
                {
                    // Also retried: a token being rotated (401/403) or a receiver being
                    // deployed behind a proxy (404) is not a verdict on the data.
                    Outcome::Retry(None, format!("{}: {text}", r.status.as_u16()))
                } else {
                    Outcome::Rejected(format!("{}: {text}", r.status.as_u16()))
                }
            }
        }
    }

    fn record(&self, outcome: &Outcome, samples: usize) {
        match outcome {
            Outcome::Sent => self.metrics.sent.inc(),
            Outcome::Retry(..) => self.metrics.retried.inc(),
            Outcome::Rejected(_) => self.metrics.refused.inc(),
        };
        if matches!(outcome, Outcome::Sent) {
            self.metrics.samples_pushed.inc_by(samples as u64);
        }
    }

    fn spool_append(&mut self, b: &Batch) {
        match self.spool.append(&b.body) {
            Ok(()) => {
                self.metrics.samples_spooled.inc_by(b.samples as u64);
                // The crash campaign (tests/src/campaign) counts on this line: a round logged as
                // spooled must never be lost.
                tracing::debug!(target = %self.name, round_ms = b.round_ms, samples = b.samples, "batch spooled");
            }
            Err(e) => {
                self.metrics.unwritable.inc_by(b.samples as u64);
                tracing::error!(target = %self.name, error = %e, samples = b.samples, "cannot write the spool: batch lost");
            }
        }
        self.metrics.spool_frames.set(self.spool.pending() as i64);
        self.metrics.spool_bytes.set(self.spool.bytes() as i64);
        self.metrics.spool_dropped_frames.inner().store(
            self.spool.dropped_frames,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Sends the oldest spooled frame; returns how long to wait before the next attempt.
    async fn drain_one(&mut self) -> Option<Duration> {
        let frame = match self.spool.peek() {
            Ok(Some(f)) => f,
            Ok(None) => {
                if !self.spool.is_empty() {
                    // The count says frames wait but none can be read (skipped corruption):
                    // recount, and never spin.
                    self.spool.recount();
                    return Some(BACKOFF_MIN);
                }
                return None;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read the spool");
                return Some(BACKOFF_MAX);
            }
        };
        let frame_len = frame.len();
        let outcome = self.send(Bytes::from(frame)).await;
        self.record(&outcome, 0);
        match outcome {
            Outcome::Sent | Outcome::Rejected(_) => {
                if let Outcome::Rejected(why) = &outcome {
                    tracing::error!(target = %self.name, reason = %why, "receiver rejected a spooled batch; dropping it");
                }
                if let Err(e) = self.spool.ack(frame_len) {
                    tracing::error!(error = %e, "cannot record spool progress");
                }
                self.head_attempts = 0;
                self.metrics.spool_frames.set(self.spool.pending() as i64);
                self.metrics.spool_bytes.set(self.spool.bytes() as i64);
                self.backoff = BACKOFF_MIN;
                if self.spool.is_empty() {
                    tracing::info!(target = %self.name, "spool drained");
                }
                None
            }
            Outcome::Retry(after, why) => {
                self.head_attempts += 1;
                if after.is_some() && self.head_attempts >= MAX_THROTTLED_ATTEMPTS {
                    // A receiver that keeps answering 429 for the same batch (a series limit it
                    // will not lift) must not block everything behind it for ever.
                    tracing::error!(target = %self.name, attempts = self.head_attempts, reason = %why, "batch still throttled after every retry; dropping it");
                    if let Err(e) = self.spool.ack(frame_len) {
                        tracing::error!(error = %e, "cannot record spool progress");
                    }
                    self.head_attempts = 0;
                    return Some(BACKOFF_MIN);
                }
                Some(self.wait_after(after, &why))
            }
        }
    }

    fn wait_after(&mut self, after: Option<Duration>, why: &str) -> Duration {
        let wait = match after {
            Some(a) => a.min(Duration::from_secs(300)),
            None => self.jitter(self.backoff),
        };
        tracing::warn!(target = %self.name, url = %self.url, reason = %why, retry_in_ms = wait.as_millis() as u64, "push failed");
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        wait
    }

    /// Sends a live batch, or spools it if it cannot go now (or if older data waits).
    async fn handle(&mut self, b: Batch) -> Option<Duration> {
        if !self.spool.is_empty() {
            self.spool_append(&b);
            return None;
        }
        let outcome = self.send(b.body.clone()).await;
        self.record(&outcome, b.samples);
        match outcome {
            Outcome::Sent => {
                tracing::debug!(target = %self.name, round_ms = b.round_ms, samples = b.samples, "batch acknowledged");
                self.backoff = BACKOFF_MIN;
                None
            }
            Outcome::Rejected(why) => {
                self.metrics.rejected.inc_by(b.samples as u64);
                tracing::error!(target = %self.name, reason = %why, samples = b.samples, "receiver rejected a batch; dropping it");
                None
            }
            Outcome::Retry(after, why) => {
                self.spool_append(&b);
                Some(self.wait_after(after, &why))
            }
        }
    }

    /// Runs until the channel closes, then makes one last attempt and spools what is left.
    /// Runs until the channel closes. Once `stopping` is set, queued batches go straight to the
    /// spool (a stop must not wait on a slow receiver, batch by batch).
    pub async fn run(mut self, mut rx: mpsc::Receiver<Batch>, stopping: Arc<AtomicBool>) {
        let mut not_before = Instant::now();
        loop {
            let now = Instant::now();
            let spooled = !self.spool.is_empty();
            let wake = if spooled {
                not_before.max(now)
            } else {
                now + Duration::from_secs(3600)
            };
            tokio::select! {
                biased;
                b = rx.recv() => match b {
                                        Some(b) => {
                        if stopping.load(Ordering::SeqCst) {
                            self.spool_append(&b);
                        } else if Instant::now() < not_before {
                            // Backing off: keep order by queueing behind the spool.
                            self.spool_append(&b);
                        } else if let Some(w) = self.handle(b).await {
                            not_before = Instant::now() + w;
                        }
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(wake.into()), if spooled => {
                    if let Some(w) = self.drain_one().await {
                        not_before = Instant::now() + w;
                    }
                }
            }
        }
        // Shutting down: whatever is still queued goes to the spool (the channel is drained by
        // now), so nothing collected is lost.
        tracing::info!(target = %self.name, spooled_frames = self.spool.pending(), "push: stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_split_at_the_sample_limit() {
        let a = Labels::from_pairs([("__name__", "a")]);
        let b = Labels::from_pairs([("__name__", "b")]);
        let samples: Vec<(Labels, Sample)> = (0..5)
            .flat_map(|t| {
                [
                    (a.clone(), Sample::new(t, 1.0)),
                    (b.clone(), Sample::new(t, 2.0)),
                ]
            })
            .collect();
        let batches = encode(&samples, &[], 4, 0);
        assert_eq!(batches.len(), 3);
        assert_eq!(batches.iter().map(|b| b.samples).sum::<usize>(), 10);
        let req = vigil_wire::remote_write::WriteRequest::decode_snappy(&batches[0].body, 1 << 20)
            .unwrap();
        assert_eq!(req.timeseries.len(), 4);
        assert_eq!(req.timeseries[1].validated_labels().unwrap(), b);
    }
}
