//! Publishing: CloudWatch custom metrics from record rules marked `cloudwatch = {...}`.
//!
//! The engine queues each recorded sample of such a rule ([`Publisher::queue`]); the flush task
//! sends what is queued every `[cloudwatch] flush_interval`, through the [`MetricSink`] it was
//! handed at start-up (the SDK's, or a dry run's that logs). `queue.rs` batches.

mod queue;

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use queue::Point;

use std::sync::Arc;

use crate::aws::{Datum, Effect, MetricSink};
use crate::clock::SharedClock;
use crate::cluster::Cluster;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
}

#[derive(Clone, Default)]
struct Metrics {
    datums: Counter,
    dropped: Family<DropLabels, Counter>,
    cost: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Metrics {
    fn register(r: &mut Registry) -> Metrics {
        let m = Metrics::default();
        r.register(
            "vigil_aggregator_cloudwatch_datums",
            "CloudWatch datums published",
            m.datums.clone(),
        );
        r.register(
            "vigil_aggregator_cloudwatch_dropped",
            "Recorded samples not published to CloudWatch, by reason (invalid: NaN, ±Inf, out of range; queue_full; too_old; rejected by CloudWatch)",
            m.dropped.clone(),
        );
        r.register(
            "vigil_aggregator_cloudwatch_estimated_monthly_cost_dollars",
            "Estimated monthly cost of the custom metrics published in the last hour and of the PutMetricData calls, at CloudWatch's list price",
            m.cost.clone(),
        );
        m
    }

    fn dropped(&self, reason: &'static str, n: u64) {
        if n > 0 {
            self.dropped.get_or_create(&DropLabels { reason }).inc_by(n);
        }
    }
}

pub struct Publisher {
    sink: Box<dyn MetricSink>,
    namespace: String,
    flush_ms: i64,
    clock: SharedClock,
    queue: Mutex<queue::Queue>,
    busy: tokio::sync::Mutex<()>,
    metrics: Metrics,
    /// Who acts: a follower publishes nothing (the leader does), a leader past its deadline
    /// keeps its points queued.
    cluster: Arc<Cluster>,
}

impl Publisher {
    pub fn new(
        sink: Box<dyn MetricSink>,
        namespace: String,
        flush_ms: i64,
        clock: SharedClock,
        cluster: Arc<Cluster>,
        r: &mut Registry,
    ) -> Publisher {
        Publisher {
            sink,
            namespace,
            flush_ms: flush_ms.max(1_000),
            clock,
            queue: Mutex::new(queue::Queue::new(200_000)),
            busy: tokio::sync::Mutex::new(()),
            metrics: Metrics::register(r),
            cluster,
        }
    }

    fn queue_lock(&self) -> std::sync::MutexGuard<'_, queue::Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an evaluation's points (counted when invalid or past the queue's bound).
    pub fn queue(&self, points: Vec<Point>) {
        if points.is_empty() {
            return;
        }
        if self.cluster.is_follower() {
            tracing::debug!(
                points = points.len(),
                "follower: would publish to CloudWatch (the leader does)"
            );
            return;
        }
        let (invalid, overflow) = self.queue_lock().push(points);
        self.metrics.dropped("invalid", invalid);
        self.metrics.dropped("queue_full", overflow);
    }

    /// Sends the queued points. One flush at a time; a failed call's points are queued again.
    pub async fn flush(&self) {
        let Ok(_busy) = self.busy.try_lock() else {
            return;
        };
        let (points, too_old) = self.queue_lock().take(self.clock.now_ms());
        self.metrics.dropped("too_old", too_old);
        if self.cluster.is_follower() {
            // Queued while this node led, and now the leader's to publish: a later lead must
            // not send them twice.
            return;
        }
        if points.is_empty() {
            return;
        }
        let batches = queue::calls(queue::datums(&points));
        let calls_per_flush = batches.len() as f64;
        let flushes_per_month = 30.0 * 86_400_000.0 / self.flush_ms as f64;
        let mut batches = batches.into_iter();
        while let Some(batch) = batches.next() {
            let (data, members): (Vec<Datum>, Vec<Vec<Point>>) = batch.into_iter().unzip();
            if self.cluster.may_act().is_none() {
                // Not (or no longer) the holder within its deadline: nothing is sent.
                tracing::warn!(
                    datums = data.len(),
                    "not acting (no valid lease): PutMetricData waits"
                );
                let rest = members
                    .into_iter()
                    .flatten()
                    .chain(batches.flat_map(|b| b.into_iter().flat_map(|(_, m)| m)))
                    .collect();
                let dropped = self.queue_lock().requeue(rest);
                self.metrics.dropped("queue_full", dropped);
                return;
            }
            match self.sink.put(&self.namespace, &data).await {
                Ok(effect) => {
                    if effect == Effect::Made {
                        self.metrics.datums.inc_by(data.len() as u64);
                    }
                    let cost = self.queue_lock().note_published(
                        &data,
                        self.clock.now_ms(),
                        calls_per_flush * flushes_per_month,
                    );
                    self.metrics.cost.set(cost);
                }
                Err(e) if e.permanent => {
                    // Sending the same datums again cannot succeed: drop them, say so.
                    tracing::error!(error = %e, datums = data.len(), "CloudWatch refused the datums; dropped");
                    self.metrics
                        .dropped("rejected", members.iter().map(|m| m.len() as u64).sum());
                }
                Err(e) => {
                    tracing::warn!(error = %e, datums = data.len(), "PutMetricData failed; the datums wait for the next flush");
                    let dropped = self
                        .queue_lock()
                        .requeue(members.into_iter().flatten().collect());
                    self.metrics.dropped("queue_full", dropped);
                }
            }
        }
    }

    /// Flushes forever, half a second after each multiple of `flush_interval`, so that the
    /// evaluation at that instant is in the flush. A slow flush does not delay the next tick
    /// (and the next finds the busy one and leaves it be).
    pub async fn run(self: std::sync::Arc<Self>) {
        let every = self.flush_ms;
        loop {
            let now = self.clock.now_ms();
            let next = (now / every + 1) * every + 500;
            tokio::time::sleep(Duration::from_millis((next - now) as u64)).await;
            let me = self.clone();
            tokio::spawn(async move { me.flush().await });
        }
    }
}
