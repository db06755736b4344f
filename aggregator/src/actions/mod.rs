//! The action layer: what the evaluation loop decided, carried out on AWS.
//!
//! - The fleet view: DescribeAutoScalingGroups for every group a policy names, refreshed on its
//!   own task; it gives the evaluation the groups' real capacity and which instances may be
//!   replaced now (in service, past their grace period, members of the group).
//! - Scaling: a decision becomes the group's pending capacity, clamped to the group's own
//!   min/max, applied with SetDesiredCapacity by the actuator task and retried until AWS takes
//!   it or a newer decision replaces it. Desired-capacity changes made outside Vigil are
//!   detected, logged and adopted.
//! - Replacement: SetInstanceHealth Unhealthy for each instance a decision names (the cap and
//!   fail-open are the rules crate's), retried while the instance is still in service.
//! - CloudWatch: recorded samples of rules marked `cloudwatch` are queued and flushed in batches.
//! - Notifications: decided in the evaluation (see `notify`), kept in the SQLite outbox, sent by
//!   the delivery task with backoff until delivered or expired.
//!
//! With `dry_run` every change is decided identically, logged as "dry run: would …" and counted;
//! without `[aws]` there are no clients at all and capacities are simulated.

pub mod aws;
pub mod cloudwatch;
pub mod notify;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value as Json};
use vigil_rules::evaluator::{Event, Simulation};
use vigil_rules::promql;

use crate::app::App;
use crate::engine::now_ms;
use aws::{Clients, GroupInfo};

/// Expired notifications are dropped (counted) after this long undelivered.
pub const NOTIFICATION_TTL_MS: i64 = 24 * 3_600_000;

#[derive(Debug, Clone)]
struct PendingScale {
    desired: u32,
    asked: u32,
    decided_at: i64,
    attempts: u32,
    next_try: i64,
}

#[derive(Debug, Clone)]
struct PendingHealth {
    asg: String,
    attempts: u32,
    next_try: i64,
}

/// What Vigil last did to a group, for the API.
#[derive(Debug, Clone)]
pub struct Applied {
    pub at: i64,
    pub desired: u32,
    pub result: String,
}

#[derive(Debug, Default)]
pub struct Fleet {
    /// Group → what AWS said, and when.
    groups: HashMap<String, (GroupInfo, i64)>,
    /// Instance → first time Vigil saw it in a group (a launch-time stand-in when the instance
    /// reports no boot time).
    first_seen: HashMap<String, i64>,
    pending: BTreeMap<String, PendingScale>,
    unhealthy: BTreeMap<String, PendingHealth>,
    /// Group → the capacity Vigil last set, and the generation it was set at.
    applied: HashMap<String, (u32, u64)>,
    /// Bumped at every SetDesiredCapacity, so a describe that overlapped one is not mistaken
    /// for an outside change.
    generation: u64,
    pub last: BTreeMap<String, Applied>,
}

pub struct Actions {
    pub clients: Option<Clients>,
    pub fleet: Mutex<Fleet>,
    pub wake_actuator: tokio::sync::Notify,
    pub wake_outbox: tokio::sync::Notify,
    pub cloudwatch: Mutex<cloudwatch::Queue>,
    cloudwatch_busy: tokio::sync::Mutex<()>,
}

fn backoff_ms(attempts: u32) -> i64 {
    let base = 1_000i64.saturating_mul(1 << attempts.min(8)).min(300_000);
    // Jitter: up to a quarter more, from the clock's low bits (no RNG needed for this).
    base + (now_ms().rem_euclid(1000) * base / 4000)
}

impl Actions {
    pub fn new(clients: Option<Clients>) -> Actions {
        Actions {
            clients,
            fleet: Mutex::new(Fleet::default()),
            wake_actuator: tokio::sync::Notify::new(),
            wake_outbox: tokio::sync::Notify::new(),
            cloudwatch: Mutex::new(cloudwatch::Queue::new(200_000)),
            cloudwatch_busy: tokio::sync::Mutex::new(()),
        }
    }

    fn fleet(&self) -> std::sync::MutexGuard<'_, Fleet> {
        self.fleet.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The group as AWS last described it.
    pub fn group(&self, asg: &str) -> Option<GroupInfo> {
        self.fleet().groups.get(asg).map(|(g, _)| g.clone())
    }

    pub fn pending(&self, asg: &str) -> Option<u32> {
        self.fleet().pending.get(asg).map(|p| p.desired)
    }

    /// Before an evaluation: the real capacity of each described group (or the capacity Vigil
    /// is applying), and which instances may be replaced now.
    pub fn prepare(&self, app: &App, sim: &mut Simulation, now: i64) {
        if self.clients.is_none() {
            return;
        }
        let boot = boot_times(app, now);
        let fleet = self.fleet();
        let rules = app.rules();
        let named = rules
            .scaling()
            .map(|p| p.asg.clone())
            .chain(rules.replace().map(|p| p.asg.clone()));
        for asg in named {
            let Some((g, _)) = fleet.groups.get(&asg) else {
                // Not described yet: decide nothing from a guessed capacity, replace nothing.
                sim.unknown_capacity.insert(asg.clone());
                sim.eligibility.insert(asg, BTreeMap::new());
                continue;
            };
            sim.unknown_capacity.remove(&asg);
            let cap = fleet.pending.get(&asg).map_or(g.desired, |p| p.desired);
            sim.capacity.insert(asg.clone(), cap);
            let view = g
                .members
                .iter()
                .map(|m| {
                    let launched = boot
                        .get(&m.id)
                        .copied()
                        .or_else(|| fleet.first_seen.get(&m.id).copied())
                        .unwrap_or(now);
                    let why = if m.lifecycle != "InService" {
                        Some(format!("not in service ({})", m.lifecycle))
                    } else if !m.health.eq_ignore_ascii_case("healthy") {
                        Some(format!("already {}", m.health))
                    } else if fleet.unhealthy.contains_key(&m.id) {
                        Some("being marked Unhealthy".to_string())
                    } else if now - launched < g.grace_ms {
                        Some(format!(
                            "in its health-check grace period (until {})",
                            vigil_rules::duration::format_timestamp_ms(launched + g.grace_ms)
                        ))
                    } else {
                        None
                    };
                    (m.id.clone(), why)
                })
                .collect();
            sim.eligibility.insert(asg, view);
        }
    }

    /// After an evaluation: hands its decisions to the actuator.
    pub fn take(&self, app: &App, events: &[Event], now: i64) {
        let mut fleet = self.fleet();
        for e in events {
            match e {
                Event::Scaling(d) => {
                    let (lo, hi) = match fleet.groups.get(&d.asg) {
                        Some((g, _)) => (g.min, g.max),
                        None => (0, u32::MAX),
                    };
                    let desired = d.desired.clamp(lo, hi.max(lo));
                    if desired != d.desired {
                        tracing::warn!(asg = %d.asg, decided = d.desired, applied = desired, min = lo, max = hi, "decision outside the group's own min/max: clamped");
                    }
                    fleet.pending.insert(
                        d.asg.clone(),
                        PendingScale {
                            desired,
                            asked: d.desired,
                            decided_at: now,
                            attempts: 0,
                            next_try: now,
                        },
                    );
                }
                Event::Replace(r) => {
                    for (instance, why) in &r.replace {
                        tracing::info!(asg = %r.asg, instance = %instance, reason = %why, policy = %r.policy, "replacing instance");
                        fleet.unhealthy.insert(
                            instance.clone(),
                            PendingHealth {
                                asg: r.asg.clone(),
                                attempts: 0,
                                next_try: now,
                            },
                        );
                    }
                    for (instance, why) in &r.skipped {
                        tracing::info!(asg = %r.asg, instance = %instance, reason = %why, "unhealthy but left alone");
                    }
                }
                _ => {}
            }
        }
        drop(fleet);
        let _ = app;
        self.wake_actuator.notify_one();
    }

    /// Applies pending capacities and health changes that are due.
    async fn actuate(&self, app: &App) {
        let now = now_ms();
        let due: Vec<(String, PendingScale)> = self
            .fleet()
            .pending
            .iter()
            .filter(|(_, p)| p.next_try <= now)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (asg, p) in due {
            let known = self.group(&asg);
            if self.clients.is_some() && known.is_none() {
                // Its min/max are not known yet: applying could leave them.
                continue;
            }
            let result = if app.cfg.dry_run || self.clients.is_none() {
                tracing::info!(asg = %asg, desired = p.desired, "dry run: would SetDesiredCapacity (HonorCooldown false)");
                app.metrics.aws_call("SetDesiredCapacity", "dry_run");
                Ok(())
            } else {
                let c = self.clients.as_ref().map(|c| &c.autoscaling);
                match c {
                    Some(c) => c.set_desired(&asg, p.desired).await,
                    None => Ok(()),
                }
            };
            let mut fleet = self.fleet();
            match result {
                Ok(()) => {
                    if !(app.cfg.dry_run || self.clients.is_none()) {
                        app.metrics.aws_call("SetDesiredCapacity", "ok");
                        tracing::info!(asg = %asg, desired = p.desired, decided_ms_ago = now_ms() - p.decided_at, attempts = p.attempts + 1, "SetDesiredCapacity");
                    }
                    fleet.generation += 1;
                    let generation = fleet.generation;
                    fleet.applied.insert(asg.clone(), (p.desired, generation));
                    if let Some((g, _)) = fleet.groups.get_mut(&asg) {
                        g.desired = p.desired;
                    }
                    // A newer decision may have arrived while the call was out.
                    if fleet
                        .pending
                        .get(&asg)
                        .is_some_and(|q| q.decided_at == p.decided_at)
                    {
                        fleet.pending.remove(&asg);
                    }
                    let result = if p.asked != p.desired {
                        format!("set (decided {}, clamped to the group's bounds)", p.asked)
                    } else if app.cfg.dry_run || self.clients.is_none() {
                        "dry run".to_string()
                    } else {
                        "set".to_string()
                    };
                    fleet.last.insert(
                        asg.clone(),
                        Applied {
                            at: now_ms(),
                            desired: p.desired,
                            result,
                        },
                    );
                }
                Err(e) => {
                    app.metrics.aws_call("SetDesiredCapacity", "error");
                    if let Some(q) = fleet.pending.get_mut(&asg) {
                        if q.decided_at == p.decided_at {
                            q.attempts += 1;
                            q.next_try = now_ms() + backoff_ms(q.attempts.min(3));
                        }
                    }
                    tracing::warn!(asg = %asg, desired = p.desired, error = %e, "SetDesiredCapacity failed; retrying");
                    fleet.last.insert(
                        asg.clone(),
                        Applied {
                            at: now_ms(),
                            desired: p.desired,
                            result: format!("failed, retrying: {e}"),
                        },
                    );
                }
            }
        }
        let due: Vec<(String, PendingHealth)> = self
            .fleet()
            .unhealthy
            .iter()
            .filter(|(_, p)| p.next_try <= now)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (instance, p) in due {
            let result = match (&self.clients, app.cfg.dry_run) {
                (Some(c), false) => c.autoscaling.set_unhealthy(&instance).await,
                _ => {
                    tracing::info!(asg = %p.asg, instance = %instance, "dry run: would SetInstanceHealth Unhealthy (ShouldRespectGracePeriod true)");
                    app.metrics.aws_call("SetInstanceHealth", "dry_run");
                    Ok(())
                }
            };
            let mut fleet = self.fleet();
            match result {
                Ok(()) => {
                    if self.clients.is_some() && !app.cfg.dry_run {
                        app.metrics.aws_call("SetInstanceHealth", "ok");
                        tracing::info!(asg = %p.asg, instance = %instance, "SetInstanceHealth Unhealthy");
                    }
                    fleet.unhealthy.remove(&instance);
                }
                Err(e) => {
                    app.metrics.aws_call("SetInstanceHealth", "error");
                    let still_member = fleet.groups.get(&p.asg).is_some_and(|(g, _)| {
                        g.members
                            .iter()
                            .any(|m| m.id == instance && m.lifecycle == "InService")
                    });
                    if still_member && p.attempts < 20 {
                        tracing::warn!(instance = %instance, error = %e, "SetInstanceHealth failed; retrying");
                        if let Some(q) = fleet.unhealthy.get_mut(&instance) {
                            q.attempts += 1;
                            q.next_try = now_ms() + backoff_ms(q.attempts.min(5));
                        }
                    } else {
                        tracing::error!(instance = %instance, error = %e, "SetInstanceHealth failed; giving up (instance gone or too many attempts)");
                        fleet.unhealthy.remove(&instance);
                    }
                }
            }
        }
    }

    /// Describes every group the rules name; detects capacity changes made outside Vigil.
    pub async fn refresh(&self, app: &App) -> Result<(), aws::CallError> {
        let Some(c) = &self.clients else {
            return Ok(());
        };
        let rules = app.rules();
        let mut names: Vec<String> = rules
            .scaling()
            .map(|p| p.asg.clone())
            .chain(rules.replace().map(|p| p.asg.clone()))
            .collect();
        names.sort();
        names.dedup();
        if names.is_empty() {
            return Ok(());
        }
        let generation = self.fleet().generation;
        let groups = match c.autoscaling.describe(&names).await {
            Ok(g) => {
                app.metrics.aws_call("DescribeAutoScalingGroups", "ok");
                g
            }
            Err(e) => {
                app.metrics.aws_call("DescribeAutoScalingGroups", "error");
                return Err(e);
            }
        };
        let now = now_ms();
        let mut fleet = self.fleet();
        for name in &names {
            if !groups.iter().any(|g| &g.name == name) {
                tracing::warn!(asg = %name, "Auto Scaling group not found");
            }
        }
        for g in groups {
            for m in &g.members {
                fleet.first_seen.entry(m.id.clone()).or_insert(now);
            }
            let outside = fleet.generation == generation
                && !fleet.pending.contains_key(&g.name)
                && fleet
                    .applied
                    .get(&g.name)
                    .is_some_and(|(set, _)| *set != g.desired);
            if outside {
                let set = fleet.applied.get(&g.name).map_or(0, |a| a.0);
                tracing::warn!(asg = %g.name, vigil_set = set, now_desired = g.desired, "desired capacity changed outside Vigil (a user, a scheduled action or another scaling policy); adopting it");
                app.metrics
                    .external_changes
                    .get_or_create(&vec![("asg".into(), g.name.clone())])
                    .inc();
                fleet
                    .applied
                    .insert(g.name.clone(), (g.desired, generation));
            }
            fleet.groups.insert(g.name.clone(), (g, now));
        }
        let live: std::collections::HashSet<String> = fleet
            .groups
            .values()
            .flat_map(|(g, _)| g.members.iter().map(|m| m.id.clone()))
            .collect();
        fleet.first_seen.retain(|i, _| live.contains(i));
        Ok(())
    }

    /// Sends the queued CloudWatch points. One flush at a time; a failed call's points are
    /// queued again.
    pub async fn flush_cloudwatch(&self, app: &App) {
        let Ok(_busy) = self.cloudwatch_busy.try_lock() else {
            return;
        };
        let points = self
            .cloudwatch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if points.is_empty() {
            return;
        }
        let batches = cloudwatch::calls(cloudwatch::datums(&points));
        let calls_per_flush = batches.len() as f64;
        let flushes_per_month = 30.0 * 86_400_000.0 / app.cfg.cloudwatch_flush_ms as f64;
        for batch in batches {
            let (data, members): (Vec<aws::Datum>, Vec<Vec<cloudwatch::Point>>) =
                batch.into_iter().unzip();
            let ns = &app.cfg.cloudwatch_namespace;
            let result = match (&self.clients, app.cfg.dry_run) {
                (Some(c), false) => c.cloudwatch.put(ns, &data).await,
                _ => {
                    tracing::info!(namespace = %ns, datums = data.len(), "dry run: would PutMetricData");
                    app.metrics.aws_call("PutMetricData", "dry_run");
                    Ok(())
                }
            };
            match result {
                Ok(()) => {
                    let dry = self.clients.is_none() || app.cfg.dry_run;
                    if !dry {
                        app.metrics.aws_call("PutMetricData", "ok");
                        app.metrics.cloudwatch_datums.inc_by(data.len() as u64);
                    }
                    let cost = self
                        .cloudwatch
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .note_published(&data, now_ms(), calls_per_flush * flushes_per_month);
                    app.metrics.cloudwatch_cost.set(cost);
                }
                Err(e) => {
                    app.metrics.aws_call("PutMetricData", "error");
                    tracing::warn!(error = %e, datums = data.len(), "PutMetricData failed; the datums wait for the next flush");
                    let dropped = self
                        .cloudwatch
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .requeue(members.into_iter().flatten().collect());
                    if dropped > 0 {
                        app.metrics
                            .cloudwatch_dropped
                            .get_or_create(&vec![("reason".into(), "queue_full".into())])
                            .inc_by(dropped);
                    }
                }
            }
        }
    }

    /// Delivers what is due in the outbox; returns whether anything is left waiting.
    async fn deliver(&self, app: &App, http: &vigil_config::http::Http) {
        let now = now_ms();
        let due = match app.db().due(now, 100) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the notification outbox");
                return;
            }
        };
        let mut blocked: std::collections::HashSet<String> = Default::default();
        for p in due {
            if blocked.contains(&p.target)
                || app.db().waiting_before(&p.target, p.id).unwrap_or(true)
            {
                // An older notification to the same place is still waiting: keep the order.
                continue;
            }
            let Some(d) = notify::Delivery::from_json(&p.delivery) else {
                tracing::error!(id = p.id, "unreadable notification in the outbox; dropped");
                let _ = app.db().remove(p.id);
                continue;
            };
            let kind = d.kind();
            let result = self.send(app, http, &d).await;
            let db = app.db();
            match result {
                Ok(outcome) => {
                    app.metrics.notification(kind, outcome);
                    if let Err(e) = db.remove(p.id) {
                        tracing::error!(error = %e, "cannot remove a delivered notification");
                    }
                }
                Err(e) if now >= p.expires_at => {
                    app.metrics.notification(kind, "expired");
                    tracing::error!(target = %p.target, attempts = p.attempts + 1, error = %e, "notification expired undelivered");
                    let _ = db.remove(p.id);
                }
                Err(e) => {
                    app.metrics.notification(kind, "failed");
                    let next = now_ms() + backoff_ms(p.attempts);
                    tracing::warn!(target = %p.target, attempts = p.attempts + 1, retry_in_ms = next - now_ms(), error = %e, "notification not delivered; retrying");
                    let _ = db.retry_at(p.id, next, &e);
                    blocked.insert(p.target.clone());
                }
            }
        }
        if let Ok(n) = app.db().outbox_len() {
            app.metrics.outbox.set(n as i64);
        }
    }

    async fn send(
        &self,
        app: &App,
        http: &vigil_config::http::Http,
        d: &notify::Delivery,
    ) -> Result<&'static str, String> {
        match d {
            notify::Delivery::Sns {
                topic_arn,
                subject,
                message,
                attributes,
            } => match (&self.clients, app.cfg.dry_run) {
                (Some(c), false) => {
                    let r = c.sns.publish(topic_arn, subject, message, attributes).await;
                    app.metrics
                        .aws_call("Publish", if r.is_ok() { "ok" } else { "error" });
                    r.map(|()| "delivered").map_err(|e| e.to_string())
                }
                _ => {
                    tracing::info!(topic = %topic_arn, subject = %subject, "dry run: would Publish to SNS");
                    app.metrics.aws_call("Publish", "dry_run");
                    Ok("dry_run")
                }
            },
            notify::Delivery::Slack { url, body }
            | notify::Delivery::Alertmanager { url, body } => {
                let resp = http
                    .request(
                        hyper::Method::POST,
                        url,
                        &[("content-type", "application/json")],
                        bytes::Bytes::from(body.to_string()),
                        Duration::from_secs(10),
                        64 << 10,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                if resp.status.is_success() {
                    Ok("delivered")
                } else {
                    Err(format!(
                        "HTTP {}: {}",
                        resp.status.as_u16(),
                        String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
                    ))
                }
            }
        }
    }

    /// The fleet for the API: each described group and what Vigil did to it last.
    pub fn group_json(&self, asg: &str) -> Json {
        let fleet = self.fleet();
        let aws = fleet.groups.get(asg).map(|(g, at)| {
            json!({"desired": g.desired, "min": g.min, "max": g.max,
                "in_service": g.members.iter().filter(|m| m.lifecycle == "InService").count(),
                "instances": g.members.len(), "described_at": vigil_rules::duration::format_timestamp_ms(*at)})
        });
        let last = fleet.last.get(asg).map(|a| {
            json!({"time": vigil_rules::duration::format_timestamp_ms(a.at), "desired": a.desired, "result": a.result})
        });
        json!({"aws": aws, "pending": fleet.pending.get(asg).map(|p| p.desired), "last_applied": last})
    }
}

/// Each instance's boot time (ms) from the agent's `node_boot_time_seconds`.
fn boot_times(app: &App, now: i64) -> HashMap<String, i64> {
    let Ok(q) = promql::parse("max by (instance) (node_boot_time_seconds)") else {
        return HashMap::new();
    };
    let Ok(res) = app.engine.instant(&app.store, &q, now) else {
        return HashMap::new();
    };
    match res.value {
        promql::Value::Vector(v) => v
            .iter()
            .filter_map(|s| Some((s.labels.get("instance")?.to_string(), (s.f * 1000.0) as i64)))
            .collect(),
        _ => HashMap::new(),
    }
}

/// The tasks of the action layer: fleet refresh, actuator, outbox delivery.
pub fn spawn(app: Arc<App>) {
    let refresh_every = Duration::from_millis(app.rules().tick_ms().clamp(1_000, 15_000) as u64);
    let a = app.clone();
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            match a.actions.refresh(&a).await {
                Ok(()) if failing => {
                    tracing::info!("DescribeAutoScalingGroups answers again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot describe the Auto Scaling groups; the last view is kept");
                    }
                    failing = true;
                }
            }
            tokio::time::sleep(refresh_every).await;
        }
    });
    let a = app.clone();
    tokio::spawn(async move {
        loop {
            a.actions.actuate(&a).await;
            let _ =
                tokio::time::timeout(Duration::from_secs(1), a.actions.wake_actuator.notified())
                    .await;
        }
    });
    let a = app;
    tokio::spawn(async move {
        let http = match vigil_config::http::Http::new() {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "no HTTP client: webhooks cannot be delivered");
                return;
            }
        };
        loop {
            a.actions.deliver(&a, &http).await;
            let _ = tokio::time::timeout(Duration::from_secs(1), a.actions.wake_outbox.notified())
                .await;
        }
    });
}
