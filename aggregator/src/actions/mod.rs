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
use vigil_rules::evaluator::{Eligibility, Event, Simulation};
use vigil_rules::promql;

use crate::app::App;
use crate::engine::now_ms;
use aws::{Clients, GroupInfo};

/// Expired notifications are dropped (counted) after this long undelivered.
pub const NOTIFICATION_TTL_MS: i64 = 24 * 3_600_000;

#[derive(Debug, Clone)]
struct PendingScale {
    desired: u32,
    /// What the decision asked for (before the group's own bounds).
    asked: u32,
    /// The capacity the decision started from: if AWS shows another by the time it is applied,
    /// someone else changed the group meanwhile.
    from: u32,
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
    /// Group → the desired capacity AWS should have as far as Vigil knows (what it set last, or
    /// what it last read): a describe showing another means someone else changed it.
    baseline: HashMap<String, u32>,
    /// Dry run: the capacity each group would have after Vigil's decisions.
    simulated: HashMap<String, u32>,
    /// Bumped at every SetDesiredCapacity, so a describe that overlapped one is not mistaken
    /// for an outside change and does not overwrite the new capacity.
    generation: u64,
    pub last: BTreeMap<String, Applied>,
    /// Dry run: groups that could not be described lately, whose capacity follows the
    /// simulation.
    simulating: std::collections::BTreeSet<String>,
}

impl Fleet {
    /// Removes a group's pending change if it is still the one decided at `decided_at` (a newer
    /// decision may have replaced it while a call was out).
    fn settle(&mut self, asg: &str, decided_at: i64) {
        if self
            .pending
            .get(asg)
            .is_some_and(|q| q.decided_at == decided_at)
        {
            self.pending.remove(asg);
        }
    }
}

pub struct Actions {
    pub clients: Option<Clients>,
    dry_run: bool,
    /// A fleet view older than this is not trusted: no decision is made from it.
    max_view_age_ms: i64,
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

/// The entries whose next try is due, copied out (the calls run without the lock).
fn due_now<T: Clone>(
    m: &BTreeMap<String, T>,
    now: i64,
    next_try: impl Fn(&T) -> i64,
) -> Vec<(String, T)> {
    m.iter()
        .filter(|(_, p)| next_try(p) <= now)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// How often the fleet is described: the rules' tick, within 1–15 s.
pub fn refresh_interval_ms(tick_ms: i64) -> i64 {
    tick_ms.clamp(1_000, 15_000)
}

impl Actions {
    pub fn new(clients: Option<Clients>, dry_run: bool, tick_ms: i64) -> Actions {
        Actions {
            dry_run: dry_run || clients.is_none(),
            clients,
            max_view_age_ms: (5 * refresh_interval_ms(tick_ms)).max(30_000),
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
    /// is applying, or in dry run would have set), and which instances may be replaced now.
    pub fn prepare(&self, app: &App, sim: &mut Simulation, now: i64) {
        if self.clients.is_none() {
            return;
        }
        let boot = boot_times(app, now);
        let mut simulating = std::collections::BTreeSet::new();
        let mut fleet = self.fleet();
        let rules = app.rules();
        let named = rules
            .scaling()
            .map(|p| p.asg.clone())
            .chain(rules.replace().map(|p| p.asg.clone()));
        for asg in named {
            let fresh = fleet
                .groups
                .get(&asg)
                .filter(|(_, at)| now - at <= self.max_view_age_ms);
            let Some((g, _)) = fresh else {
                if self.dry_run {
                    // A dry run with AWS away follows its own simulation, as without [aws]:
                    // from what it last knew (its simulated or described capacity, else the
                    // policies' min), marked "simulated" in the API and on the page.
                    sim.unknown_capacity.remove(&asg);
                    sim.eligibility.remove(&asg);
                    if let Some(c) = fleet.pending.get(&asg).map(|p| p.desired).or_else(|| {
                        fleet
                            .simulated
                            .get(&asg)
                            .copied()
                            .or_else(|| fleet.groups.get(&asg).map(|(g, _)| g.desired))
                    }) {
                        sim.capacity.insert(asg.clone(), c);
                    }
                    simulating.insert(asg);
                    continue;
                }
                // Not described (lately): decide nothing from a guessed capacity, replace nothing.
                sim.unknown_capacity.insert(asg.clone());
                sim.eligibility.insert(asg, BTreeMap::new());
                continue;
            };
            sim.unknown_capacity.remove(&asg);
            let cap = match fleet.pending.get(&asg) {
                Some(p) => p.desired,
                None if self.dry_run => fleet.simulated.get(&asg).copied().unwrap_or(g.desired),
                None => g.desired,
            };
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
                        Eligibility::Ignored(format!("not in service ({})", m.lifecycle))
                    } else if !m.health.eq_ignore_ascii_case("healthy") {
                        Eligibility::Counted(format!("already {}", m.health))
                    } else if fleet.unhealthy.contains_key(&m.id) {
                        Eligibility::Counted("being marked Unhealthy".to_string())
                    } else if now - launched < g.grace_ms {
                        Eligibility::Ignored(format!(
                            "in its health-check grace period (until {})",
                            vigil_rules::duration::format_timestamp_ms(launched + g.grace_ms)
                        ))
                    } else {
                        Eligibility::Eligible
                    };
                    (m.id.clone(), why)
                })
                .collect();
            sim.eligibility.insert(asg, view);
        }
        fleet.simulating = simulating;
    }

    /// Whether the group's capacity is Vigil's own simulation rather than AWS's: always without
    /// `[aws]`; in a dry run while the group cannot be described.
    pub fn simulated(&self, asg: &str) -> bool {
        self.clients.is_none() || self.fleet().simulating.contains(asg)
    }

    /// After an evaluation: hands its decisions to the actuator.
    pub fn take(&self, events: &[Event], now: i64) {
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
                            from: d.current,
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
        self.wake_actuator.notify_one();
    }

    /// The actions waiting to be carried out, for the state database (a restart finishes them).
    pub fn pending_json(&self) -> Json {
        let fleet = self.fleet();
        json!({
            "scale": fleet.pending.iter().map(|(asg, p)| (asg.clone(), json!({"desired": p.desired, "asked": p.asked, "from": p.from, "decided_at": p.decided_at}))).collect::<serde_json::Map<_, _>>(),
            "health": fleet.unhealthy.iter().map(|(i, p)| (i.clone(), json!(p.asg))).collect::<serde_json::Map<_, _>>(),
        })
    }

    /// Takes back what a previous run had not carried out yet.
    pub fn restore_pending(&self, v: &Json) {
        let mut fleet = self.fleet();
        for (asg, p) in v["scale"].as_object().into_iter().flatten() {
            let n = |k: &str| p[k].as_u64().map(|x| x as u32);
            if let (Some(desired), Some(from), Some(decided_at)) =
                (n("desired"), n("from"), p["decided_at"].as_i64())
            {
                fleet.pending.insert(
                    asg.clone(),
                    PendingScale {
                        desired,
                        asked: n("asked").unwrap_or(desired),
                        from,
                        decided_at,
                        attempts: 0,
                        next_try: 0,
                    },
                );
            }
        }
        for (instance, asg) in v["health"].as_object().into_iter().flatten() {
            if let Some(asg) = asg.as_str() {
                fleet.unhealthy.insert(
                    instance.clone(),
                    PendingHealth {
                        asg: asg.to_string(),
                        attempts: 0,
                        next_try: 0,
                    },
                );
            }
        }
    }

    fn set_last(&self, asg: &str, desired: u32, result: String) {
        self.fleet().last.insert(
            asg.to_string(),
            Applied {
                at: now_ms(),
                desired,
                result,
            },
        );
    }

    /// Applies pending capacities and health changes that are due.
    async fn actuate(&self, app: &App) {
        let now = now_ms();
        let due = due_now(&self.fleet().pending, now, |p| p.next_try);
        for (asg, p) in due {
            self.scale(app, &asg, p).await;
        }
        let due = due_now(&self.fleet().unhealthy, now, |p| p.next_try);
        for (instance, p) in due {
            let result = match (&self.clients, self.dry_run) {
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
                    if !self.dry_run {
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
                    if still_member && !e.permanent && p.attempts < 20 {
                        tracing::warn!(instance = %instance, error = %e, "SetInstanceHealth failed; retrying");
                        if let Some(q) = fleet.unhealthy.get_mut(&instance) {
                            q.attempts += 1;
                            q.next_try = now_ms() + backoff_ms(q.attempts.min(5));
                        }
                    } else {
                        tracing::error!(instance = %instance, error = %e, "SetInstanceHealth failed; giving up (refused, instance gone, or too many attempts)");
                        fleet.unhealthy.remove(&instance);
                    }
                }
            }
        }
    }

    /// Carries out one pending capacity: checks it against AWS's latest word, then sets it.
    async fn scale(&self, app: &App, asg: &str, p: PendingScale) {
        if self.dry_run {
            tracing::info!(asg = %asg, desired = p.desired, "dry run: would SetDesiredCapacity (HonorCooldown false)");
            app.metrics.aws_call("SetDesiredCapacity", "dry_run");
            let mut fleet = self.fleet();
            fleet.simulated.insert(asg.to_string(), p.desired);
            fleet.settle(asg, p.decided_at);
            drop(fleet);
            self.set_last(asg, p.desired, "dry run".into());
            return;
        }
        let Some(c) = &self.clients else { return };
        // The group as it is now: a change made since the decision means the decision started
        // from a capacity that no longer holds.
        let view = match c.autoscaling.describe(&[asg.to_string()]).await {
            Ok(mut g) if !g.is_empty() => {
                app.metrics.aws_call("DescribeAutoScalingGroups", "ok");
                g.remove(0)
            }
            Ok(_) => {
                tracing::error!(asg = %asg, "Auto Scaling group not found; the decision is dropped");
                self.fleet().pending.remove(asg);
                return;
            }
            Err(e) => {
                app.metrics.aws_call("DescribeAutoScalingGroups", "error");
                self.retry_scale(asg, &p, &e);
                return;
            }
        };
        {
            let mut fleet = self.fleet();
            let expected = fleet.baseline.get(asg).copied().unwrap_or(p.from);
            if view.desired != p.from && view.desired != expected {
                tracing::warn!(asg = %asg, decided_from = p.from, now_desired = view.desired, wanted = p.desired, "desired capacity changed outside Vigil while a decision was pending; dropping it and deciding again from the new capacity");
                app.metrics
                    .external_changes
                    .get_or_create(&vec![("asg".into(), asg.to_string())])
                    .inc();
                fleet.baseline.insert(asg.to_string(), view.desired);
                fleet.settle(asg, p.decided_at);
                fleet.groups.insert(asg.to_string(), (view, now_ms()));
                return;
            }
            fleet
                .groups
                .insert(asg.to_string(), (view.clone(), now_ms()));
        }
        let desired = p.desired.clamp(view.min, view.max.max(view.min));
        if desired != p.desired {
            tracing::warn!(asg = %asg, wanted = p.desired, applied = desired, min = view.min, max = view.max, "the group's bounds changed: clamped");
        }
        match c.autoscaling.set_desired(asg, desired).await {
            Ok(()) => {
                app.metrics.aws_call("SetDesiredCapacity", "ok");
                tracing::info!(asg = %asg, desired, decided_ms_ago = now_ms() - p.decided_at, attempts = p.attempts + 1, "SetDesiredCapacity");
                let mut fleet = self.fleet();
                fleet.generation += 1;
                fleet.baseline.insert(asg.to_string(), desired);
                if let Some((g, _)) = fleet.groups.get_mut(asg) {
                    g.desired = desired;
                }
                // A newer decision may have arrived while the call was out.
                fleet.settle(asg, p.decided_at);
                drop(fleet);
                let result = if p.asked != desired {
                    format!("set (decided {}, clamped to the group's bounds)", p.asked)
                } else {
                    "set".to_string()
                };
                self.set_last(asg, desired, result);
            }
            Err(e) => {
                app.metrics.aws_call("SetDesiredCapacity", "error");
                self.retry_scale(asg, &p, &e);
            }
        }
    }

    fn retry_scale(&self, asg: &str, p: &PendingScale, e: &aws::CallError) {
        let mut fleet = self.fleet();
        if e.permanent {
            tracing::error!(asg = %asg, desired = p.desired, error = %e, "AWS refused the change; dropping it (the next evaluation decides from the group as it is)");
            fleet.settle(asg, p.decided_at);
            drop(fleet);
            self.set_last(asg, p.desired, format!("refused: {e}"));
            return;
        }
        if let Some(q) = fleet
            .pending
            .get_mut(asg)
            .filter(|q| q.decided_at == p.decided_at)
        {
            q.attempts += 1;
            q.next_try = now_ms() + backoff_ms(q.attempts.min(3));
        }
        drop(fleet);
        tracing::warn!(asg = %asg, desired = p.desired, error = %e, "SetDesiredCapacity failed; retrying");
        self.set_last(asg, p.desired, format!("failed, retrying: {e}"));
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
        let overlapped = fleet.generation != generation;
        for mut g in groups {
            for m in &g.members {
                fleet.first_seen.entry(m.id.clone()).or_insert(now);
            }
            if overlapped {
                // Vigil set a capacity while this answer was on its way: it may predate it.
                if let Some(b) = fleet.baseline.get(&g.name) {
                    g.desired = *b;
                }
            } else if !fleet.pending.contains_key(&g.name) {
                let known = fleet.baseline.get(&g.name).copied();
                if known.is_some_and(|b| b != g.desired) {
                    tracing::warn!(asg = %g.name, expected = known, now_desired = g.desired, "desired capacity changed outside Vigil (a user, a scheduled action or another scaling policy); adopting it");
                    app.metrics
                        .external_changes
                        .get_or_create(&vec![("asg".into(), g.name.clone())])
                        .inc();
                    fleet.simulated.remove(&g.name);
                }
                fleet.baseline.insert(g.name.clone(), g.desired);
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
        let (points, too_old) = self
            .cloudwatch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(now_ms());
        if too_old > 0 {
            app.metrics
                .cloudwatch_dropped
                .get_or_create(&vec![("reason".into(), "too_old".into())])
                .inc_by(too_old);
        }
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
            let result = match (&self.clients, self.dry_run) {
                (Some(c), false) => c.cloudwatch.put(ns, &data).await,
                _ => {
                    tracing::info!(namespace = %ns, datums = data.len(), "dry run: would PutMetricData");
                    app.metrics.aws_call("PutMetricData", "dry_run");
                    Ok(())
                }
            };
            match result {
                Ok(()) => {
                    if !self.dry_run {
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
                Err(e) if e.permanent => {
                    // Sending the same datums again cannot succeed: drop them, say so.
                    app.metrics.aws_call("PutMetricData", "error");
                    tracing::error!(error = %e, datums = data.len(), "CloudWatch refused the datums; dropped");
                    app.metrics
                        .cloudwatch_dropped
                        .get_or_create(&vec![("reason".into(), "rejected".into())])
                        .inc_by(members.iter().map(|m| m.len() as u64).sum());
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

    /// Runs database work off the runtime's thread (the evaluation may hold the database for a
    /// synchronous commit).
    async fn db<T: Send + 'static>(
        app: &Arc<App>,
        f: impl FnOnce(&crate::state::Db) -> Result<T, crate::state::StateError> + Send + 'static,
    ) -> Result<T, String> {
        let app = app.clone();
        tokio::task::spawn_blocking(move || f(&app.db()))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// Delivers what is due in the outbox: targets concurrently (a slow webhook delays no
    /// other), each target's notifications one after another, oldest first.
    async fn deliver(app: &Arc<App>, http: &vigil_config::http::Http) {
        let now = now_ms();
        let due = match Self::db(app, move |db| db.due(now, 100)).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the notification outbox");
                return;
            }
        };
        let mut by_target: BTreeMap<String, Vec<crate::state::Pending>> = BTreeMap::new();
        for p in due {
            by_target.entry(p.target.clone()).or_default().push(p);
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (_, rows) in by_target {
            let (app, http) = (app.clone(), http.clone());
            tasks.spawn(async move { Self::deliver_target(&app, &http, rows, now).await });
        }
        while tasks.join_next().await.is_some() {}
        if let Ok(n) = Self::db(app, |db| db.outbox_len()).await {
            app.metrics.outbox.set(n as i64);
        }
    }

    async fn deliver_target(
        app: &Arc<App>,
        http: &vigil_config::http::Http,
        rows: Vec<crate::state::Pending>,
        now: i64,
    ) {
        for p in rows {
            let (target, id) = (p.target.clone(), p.id);
            if Self::db(app, move |db| db.waiting_before(&target, id))
                .await
                .unwrap_or(true)
            {
                // An older notification to the same place is still waiting: keep the order.
                return;
            }
            let Some(d) = notify::Delivery::from_json(&p.delivery) else {
                tracing::error!(id = p.id, "unreadable notification in the outbox; dropped");
                let _ = Self::db(app, move |db| db.remove(id)).await;
                continue;
            };
            let kind = d.kind();
            let result = app.actions.send(app, http, &d).await;
            let (outcome, stop) = match result {
                Ok(outcome) => {
                    app.metrics.notification(kind, outcome);
                    (Self::db(app, move |db| db.remove(id)).await, false)
                }
                Err((e, true)) => {
                    app.metrics.notification(kind, "rejected");
                    tracing::error!(target = %p.target, error = %e, "notification refused by the receiver; dropped (sending it again cannot succeed)");
                    (Self::db(app, move |db| db.remove(id)).await, false)
                }
                Err((e, _)) if now >= p.expires_at => {
                    app.metrics.notification(kind, "expired");
                    tracing::error!(target = %p.target, attempts = p.attempts + 1, error = %e, "notification expired undelivered");
                    (Self::db(app, move |db| db.remove(id)).await, false)
                }
                Err((e, _)) => {
                    app.metrics.notification(kind, "failed");
                    let next = now_ms() + backoff_ms(p.attempts);
                    tracing::warn!(target = %p.target, attempts = p.attempts + 1, retry_in_ms = next - now_ms(), error = %e, "notification not delivered; retrying");
                    (
                        Self::db(app, move |db| db.retry_at(id, next, &e)).await,
                        true,
                    )
                }
            };
            if let Err(e) = outcome {
                tracing::error!(error = %e, "cannot update the notification outbox");
            }
            if stop {
                return;
            }
        }
    }

    async fn send(
        &self,
        app: &App,
        http: &vigil_config::http::Http,
        d: &notify::Delivery,
    ) -> Result<&'static str, (String, bool)> {
        match d {
            notify::Delivery::Sns {
                topic_arn,
                subject,
                message,
                attributes,
            } => match (&self.clients, self.dry_run) {
                (Some(c), false) => {
                    let r = c.sns.publish(topic_arn, subject, message, attributes).await;
                    app.metrics
                        .aws_call("Publish", if r.is_ok() { "ok" } else { "error" });
                    r.map(|()| "delivered")
                        .map_err(|e| (e.to_string(), e.permanent))
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
                    .map_err(|e| (e.to_string(), false))?;
                if resp.status.is_success() {
                    Ok("delivered")
                } else {
                    // As Alertmanager does: a 4xx other than 408/429 is the receiver refusing
                    // this message, not an outage.
                    let code = resp.status.as_u16();
                    Err((
                        format!(
                            "HTTP {code}: {}",
                            String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
                        ),
                        (400..500).contains(&code) && code != 408 && code != 429,
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
    let refresh_every = Duration::from_millis(refresh_interval_ms(app.rules().tick_ms()) as u64);
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
    let a = app.clone();
    tokio::spawn(async move {
        // CloudWatch on its own clock, half a second after each multiple of flush_interval so
        // that the evaluation at that instant is in the flush.
        let every = a.cfg.cloudwatch_flush_ms.max(1_000);
        loop {
            let now = now_ms();
            let next = (now / every + 1) * every + 500;
            tokio::time::sleep(Duration::from_millis((next - now) as u64)).await;
            let b = a.clone();
            tokio::spawn(async move { b.actions.flush_cloudwatch(&b).await });
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
            Actions::deliver(&a, &http).await;
            let _ = tokio::time::timeout(Duration::from_secs(1), a.actions.wake_outbox.notified())
                .await;
        }
    });
}
