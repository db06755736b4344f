//! Delivery: the notifications the engine committed to the outbox (SQLite) are sent until
//! delivered, refused or expired, with backoff, in order per target, targets concurrently (a
//! slow webhook delays no other). SNS goes through the [`Publisher`] handed in at start-up (the
//! SDK's, or a dry run's that logs). Slack and Alertmanager webhooks are delivered even in a dry
//! run: they change nothing in AWS, and they are how a dry run is watched.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::group::Delivery;
use crate::aws::{Effect, Publisher};
use crate::clock::{backoff_ms, SharedClock};
use crate::cluster::Cluster;
use crate::state::{self, Pending};

/// Expired notifications are dropped (counted) after this long undelivered.
pub const NOTIFICATION_TTL_MS: i64 = 24 * 3_600_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    integration: &'static str,
    result: &'static str,
}

#[derive(Clone, Default)]
struct Metrics {
    notifications: Family<DeliveryLabels, Counter>,
    outbox: Gauge,
}

impl Metrics {
    fn register(r: &mut Registry) -> Metrics {
        let m = Metrics::default();
        r.register(
            "vigil_aggregator_notifications",
            "Notification delivery attempts by integration and result (delivered, failed, expired, dry_run)",
            m.notifications.clone(),
        );
        r.register(
            "vigil_aggregator_notification_outbox",
            "Notifications waiting in the outbox",
            m.outbox.clone(),
        );
        m
    }

    fn count(&self, integration: &'static str, result: &'static str) {
        self.notifications
            .get_or_create(&DeliveryLabels {
                integration,
                result,
            })
            .inc();
    }
}

/// Why a delivery did not go through; `permanent` when sending it again cannot succeed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct Undelivered {
    message: String,
    permanent: bool,
}

pub struct Outbox {
    db: state::Shared,
    sns: Box<dyn Publisher>,
    http: Option<vigil_config::http::Http>,
    clock: SharedClock,
    /// Wakes the delivery task when the engine committed new notifications.
    pub wake: tokio::sync::Notify,
    metrics: Metrics,
    /// Only the holder delivers, and only within its deadline; each delivery is then recorded
    /// in the shared state (its removal from the outbox).
    cluster: Arc<Cluster>,
    /// A webhook call's time limit (inside the lease in a cluster).
    timeout: Duration,
}

pub use vigil_config::redact::url as redacted;

impl Outbox {
    pub fn new(
        db: state::Shared,
        sns: Box<dyn Publisher>,
        clock: SharedClock,
        cluster: Arc<Cluster>,
        timeout: Duration,
        r: &mut Registry,
    ) -> Outbox {
        let http = match vigil_config::http::Http::new() {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::error!(error = %e, "no HTTP client: webhooks cannot be delivered");
                None
            }
        };
        Outbox {
            db,
            sns,
            http,
            clock,
            wake: tokio::sync::Notify::new(),
            metrics: Metrics::register(r),
            cluster,
            timeout,
        }
    }

    /// Notifications waiting, as last counted.
    pub fn waiting(&self) -> i64 {
        self.metrics.outbox.get()
    }

    /// Delivers forever: whenever the engine commits notifications, and every second for
    /// retries.
    pub async fn run(self: Arc<Self>) {
        loop {
            self.deliver().await;
            let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
        }
    }

    /// Delivers what is due now.
    async fn deliver(self: &Arc<Self>) {
        let now = self.clock.now_ms();
        let due = match self.db.run(move |db| db.due(now, 100)).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the notification outbox");
                return;
            }
        };
        let mut by_target: BTreeMap<String, Vec<Pending>> = BTreeMap::new();
        for p in due {
            by_target.entry(p.target.clone()).or_default().push(p);
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (_, rows) in by_target {
            let me = self.clone();
            tasks.spawn(async move { me.deliver_target(rows, now).await });
        }
        while tasks.join_next().await.is_some() {}
        if let Ok(n) = self.db.run(|db| db.outbox_len()).await {
            self.metrics.outbox.set(n as i64);
        }
    }

    /// One target's due notifications, oldest first; stops at the first that must wait.
    async fn deliver_target(&self, rows: Vec<Pending>, now: i64) {
        for p in rows {
            let (target, id) = (p.target.clone(), p.id);
            if self
                .db
                .run(move |db| db.waiting_before(&target, id))
                .await
                .unwrap_or(true)
            {
                // An older notification to the same place is still waiting: keep the order.
                return;
            }
            let Some(d) = Delivery::from_json(&p.delivery) else {
                tracing::error!(id = p.id, "unreadable notification in the outbox; dropped");
                let _ = self.db.run(move |db| db.remove(id)).await;
                continue;
            };
            let kind = d.kind();
            if self.cluster.may_act().is_none() || !self.cluster.recorded(p.created) {
                // A follower, or a holder past its deadline, sends nothing; a holder sends what
                // the shared state records (a successor would send it otherwise).
                return;
            }
            let (outcome, stop) = match self.send(&d).await {
                Ok(effect) => {
                    let result = match effect {
                        Effect::Made => "delivered",
                        Effect::DryRun => "dry_run",
                    };
                    self.metrics.count(kind, result);
                    (self.db.run(move |db| db.remove(id)).await, false)
                }
                Err(e) if e.permanent => {
                    self.metrics.count(kind, "rejected");
                    tracing::error!(target = %redacted(&p.target), error = %e, "notification refused by the receiver; dropped (sending it again cannot succeed)");
                    (self.db.run(move |db| db.remove(id)).await, false)
                }
                Err(e) if now >= p.expires_at => {
                    self.metrics.count(kind, "expired");
                    tracing::error!(target = %redacted(&p.target), attempts = p.attempts + 1, error = %e, "notification expired undelivered");
                    (self.db.run(move |db| db.remove(id)).await, false)
                }
                Err(e) => {
                    self.metrics.count(kind, "failed");
                    let at = self.clock.now_ms();
                    let next = at + backoff_ms(p.attempts, at);
                    tracing::warn!(target = %redacted(&p.target), attempts = p.attempts + 1, retry_in_ms = next - at, error = %e, "notification not delivered; retrying");
                    let msg = e.message;
                    (
                        self.db.run(move |db| db.retry_at(id, next, &msg)).await,
                        true,
                    )
                }
            };
            if let Err(e) = outcome {
                tracing::error!(error = %e, "cannot update the notification outbox");
            }
            self.cluster.state_changed.notify_one();
            if stop {
                return;
            }
        }
    }

    async fn send(&self, d: &Delivery) -> Result<Effect, Undelivered> {
        match d {
            Delivery::Sns {
                topic_arn,
                subject,
                message,
                attributes,
            } => self
                .sns
                .publish(topic_arn, subject, message, attributes)
                .await
                .map_err(|e| Undelivered {
                    message: e.to_string(),
                    permanent: e.permanent,
                }),
            Delivery::Slack { url, body } | Delivery::Alertmanager { url, body } => {
                let Some(http) = &self.http else {
                    return Err(Undelivered {
                        message: "no HTTP client".into(),
                        permanent: false,
                    });
                };
                let resp = http
                    .request(
                        hyper::Method::POST,
                        url,
                        &[("content-type", "application/json")],
                        bytes::Bytes::from(body.to_string()),
                        self.timeout,
                        64 << 10,
                    )
                    .await
                    .map_err(|e| Undelivered {
                        message: e.to_string(),
                        permanent: false,
                    })?;
                if resp.status.is_success() {
                    Ok(Effect::Made)
                } else {
                    // As Alertmanager does: a 4xx other than 408/429 is the receiver refusing
                    // this message, not an outage.
                    let code = resp.status.as_u16();
                    Err(Undelivered {
                        message: format!(
                            "HTTP {code}: {}",
                            String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
                        ),
                        permanent: (400..500).contains(&code) && code != 408 && code != 429,
                    })
                }
            }
        }
    }
}
