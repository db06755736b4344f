//! The evaluation loop: rule groups, scaling and replacement policies on their intervals, over
//! the series window. Before each tick the fleet tells the rules what AWS says; after it, the
//! decisions go to the fleet's actuator, recorded samples to the publisher, notifications to the
//! outbox — all committed to the state database in one transaction first — and readers get a
//! fresh [`View`].
//!
//! The engine is handed its collaborators; it owns the evaluation state and is the only writer
//! of the view.

mod metrics;
mod shared;
mod silences;
#[cfg(test)]
pub use shared::decode_shared;
pub use silences::alert_passes;
#[cfg(test)]
mod tests;
mod view;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use vigil_rules::alerting::AlertState;
use vigil_rules::duration::format_timestamp_ms;
use vigil_rules::evaluator::{alert_key, AlertKey, Event, Observations, RuleSet, Simulation};
use vigil_rules::promql;
use vigil_rules::replace::ReplaceDecision;
use vigil_rules::replay::event_text;
use vigil_rules::rulefile::{CloudWatchPublish, Rule};
use vigil_rules::scaling::Decision;
use vigil_wire::{Labels, Sample};

use metrics::Metrics;
pub use view::View;

use crate::clock::SharedClock;
use crate::cluster::Cluster;
use crate::fleet::Fleet;
use crate::notify::{self, ActiveAlert, Notifier, Outbox};
use crate::publish::{Point, Publisher};
use crate::ruleset::Rules;
use crate::state;
use crate::store::{RuleSink, Store};

/// Decisions kept for the API and the status page.
pub const HISTORY: usize = 200;

/// Written for each instance that pushes: 1 while its pushes arrive, 0 once `stale_after` passed.
const INSTANCE_UP: &str = "vigil_instance_up";

/// The evaluation state, behind the engine's lock.
pub struct Evaluation {
    pub sim: Simulation,
    pub decisions: VecDeque<Decision>,
    pub replacements: VecDeque<ReplaceDecision>,
    /// Human-readable recent events for the status page.
    pub log: VecDeque<String>,
    pub notifier: Notifier,
}

/// What the engine is handed.
pub struct Parts {
    pub store: Arc<Store>,
    /// `[storage] backend = "remote"`: the engine rules read beside the window.
    pub remote: Option<Arc<crate::remote::Remote>>,
    pub rules: Arc<Rules>,
    pub fleet: Arc<Fleet>,
    pub publisher: Arc<Publisher>,
    pub outbox: Arc<Outbox>,
    /// Who acts (alone, or the holder of an HA cluster's lease).
    pub cluster: Arc<Cluster>,
    pub db: state::Shared,
    pub clock: SharedClock,
    pub notify: notify::Settings,
    pub stale_after_ms: i64,
    pub evaluation_interval_ms: i64,
}

pub struct Engine {
    parts: Parts,
    promql: promql::Engine,
    eval: Mutex<Evaluation>,
    view: Arc<ArcSwap<View>>,
    /// After a restart with saved state, rules are not evaluated before this time (ms): the
    /// window starts empty, and evaluating it would resolve every firing alert and notify.
    warm_until_ms: i64,
    metrics: Metrics,
    /// One writer of the shared state at a time, so a later write always carries a later export.
    share_lock: tokio::sync::Mutex<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error("the notifier state in the state database is unreadable: {0}")]
    Notifier(serde_json::Error),
    #[error("the pending actions in the state database are unreadable: {0}")]
    Actions(serde_json::Error),
}

/// The record rules published to CloudWatch: record name → (how, high resolution).
fn cloudwatch_rules(rules: &RuleSet) -> HashMap<String, (CloudWatchPublish, bool)> {
    let mut m = HashMap::new();
    for g in rules.groups() {
        let high = g.interval_ms.unwrap_or(rules.default_interval_ms) < 60_000;
        for r in &g.rules {
            if let Rule::Record(rr) = r {
                if let Some(c) = &rr.cloudwatch {
                    m.insert(rr.record.clone(), (c.clone(), high));
                }
            }
        }
    }
    m
}

/// Every alert firing now, with the receivers its rule names.
fn firing_alerts(rules: &RuleSet, state: &vigil_rules::evaluator::State) -> Vec<ActiveAlert> {
    let mut receivers: HashMap<AlertKey, &Vec<String>> = HashMap::new();
    for g in rules.groups() {
        for r in &g.rules {
            if let Rule::Alert(a) = r {
                receivers.insert(alert_key(g, a), &a.receivers);
            }
        }
    }
    let mut out = Vec::new();
    for (key, rs) in &state.alerts {
        let Some(recv) = receivers.get(key) else {
            continue;
        };
        for a in rs.active.values() {
            if a.state == AlertState::Firing {
                out.push(ActiveAlert {
                    labels: a.labels.clone(),
                    annotations: a.annotations.clone(),
                    value: a.value,
                    starts_at: a.active_at,
                    receivers: (*recv).clone(),
                    decision: None,
                });
            }
        }
    }
    out
}

impl Engine {
    /// The engine, with the evaluation state a previous run saved (alerts, cooldowns, the
    /// notifier's memory, the actions it had not carried out yet).
    pub fn new(parts: Parts, r: &mut Registry) -> Result<Engine, StartError> {
        let promql = promql::Engine::new(promql::EngineOpts {
            default_subquery_step_ms: parts.evaluation_interval_ms,
            ..promql::EngineOpts::default()
        });
        let mut sim = Simulation::new(parts.rules.current(), promql.clone());
        sim.publish_warm = true;
        sim.publish_capacity = true;
        let mut warm_until_ms = 0;
        let db = parts.db.lock();
        if let Some(snap) = db.load()? {
            let (mut state, capacity) = (snap.state, snap.capacity);
            if snap.schema == 1 {
                // Alert state was keyed by the rules' labels' Debug output: re-key it for the
                // rules loaded now, or every alert would start over after the upgrade.
                let rules = parts.rules.current();
                let before = state.alerts.len();
                let kept = vigil_rules::evaluator::migrate_v1_keys(&mut state, &rules);
                tracing::info!(
                    alert_rules = before,
                    kept,
                    schema = state::SCHEMA,
                    "state database of schema 1 migrated"
                );
            }
            warm_until_ms = parts.clock.now_ms() + parts.stale_after_ms;
            let firing = state
                .alerts
                .values()
                .flat_map(|r| r.active.values())
                .filter(|a| a.state == AlertState::Firing)
                .count();
            tracing::info!(
                firing_alerts = firing,
                groups = capacity.len(),
                "evaluation state restored"
            );
            sim.state = state;
            for (asg, n) in &capacity {
                sim.start_at(asg, *n);
            }
        }
        if let Some(pending) = db.load_actions()? {
            parts
                .fleet
                .restore_pending(&pending)
                .map_err(StartError::Actions)?;
        }
        let notifier = match db.load_notifier()? {
            Some(v) => Notifier::from_json(&v).map_err(StartError::Notifier)?,
            None => Notifier::default(),
        };
        drop(db);
        let evaluation = Evaluation {
            sim,
            decisions: VecDeque::new(),
            replacements: VecDeque::new(),
            log: VecDeque::new(),
            notifier,
        };
        Ok(Engine {
            view: Arc::new(ArcSwap::from_pointee(View::of(&evaluation))),
            eval: Mutex::new(evaluation),
            promql,
            warm_until_ms,
            metrics: Metrics::register(r),
            share_lock: tokio::sync::Mutex::new(()),
            parts,
        })
    }

    /// The view readers load (the API, the status page).
    pub fn view(&self) -> Arc<ArcSwap<View>> {
        self.view.clone()
    }

    /// The rule-evaluation PromQL engine (no sample limit beyond the default).
    pub fn promql(&self) -> &promql::Engine {
        &self.promql
    }

    /// Instance liveness from push arrival: `vigil_instance_up{instance,asg,az,pod,namespace}`
    /// is 1 while the instance pushed within `stale_after`, else 0; the series of silent
    /// instances are marked stale. In remote mode, also for instances that write only to the
    /// engine (see [`Engine::engine_pushes`]).
    fn liveness(&self, ts: i64) {
        let p = &self.parts;
        let now = p.clock.now_ms();
        let marked = p.store.mark_stale(now, p.stale_after_ms);
        if marked > 0 {
            tracing::info!(
                series = marked,
                stale_after_ms = p.stale_after_ms,
                "series marked stale: not pushed to"
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (instance, labels, last_push) in p.store.instances() {
            self.instance_up(&labels, last_push, ts, now);
            seen.insert(instance);
        }
        // In remote mode, agents may write to the engine only: their newest
        // `node_boot_time_seconds` (written at every push) stands for their last push.
        if p.remote.is_some() {
            for (labels, last) in self.engine_pushes(now) {
                if labels.get("instance").is_some_and(|i| !seen.contains(i)) {
                    self.instance_up(&labels, last, ts, now);
                }
            }
        }
    }

    fn instance_up(&self, labels: &Labels, last_push: i64, ts: i64, now: i64) {
        let mut b = labels.to_builder();
        b.set(vigil_wire::METRIC_NAME, INSTANCE_UP);
        let up = if now - last_push <= self.parts.stale_after_ms {
            1.0
        } else {
            0.0
        };
        let _ = self
            .parts
            .store
            .append(&b.build(), [Sample::new(ts, up)], now);
    }

    /// An instant query at `now` over what rules read (the window and, in remote mode, the
    /// engine, where agents may write directly): its samples, or why not.
    fn vector(&self, query: &str, now: i64) -> Result<Vec<promql::VectorSample>, String> {
        let q = promql::parse(query).map_err(|e| e.to_string())?;
        let read = RuleSink {
            store: &self.parts.store,
            beside: self
                .parts
                .remote
                .as_deref()
                .map(|r| r as &dyn promql::Storage),
            whole_unless: None,
            now_ms: now,
            tap: None,
        };
        match self.promql.instant(&read, &q, now).map(|r| r.value) {
            Ok(promql::Value::Vector(v)) => Ok(v),
            Ok(_) => Ok(Vec::new()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Each instance that wrote to the engine in the last 15 minutes: its identity labels and
    /// the time of its newest `node_boot_time_seconds`. Nothing when the engine cannot answer
    /// (no instance is called down for the engine's fault).
    fn engine_pushes(&self, now: i64) -> Vec<(Labels, i64)> {
        const Q: &str = "max by (instance, asg, az, pod, namespace) (ts_of_last_over_time(node_boot_time_seconds{instance!=\"\"}[15m]))";
        match self.vector(Q, now) {
            Ok(v) => v
                .into_iter()
                .map(|s| (s.labels, (s.f * 1000.0) as i64))
                .collect(),
            Err(e) => {
                tracing::debug!(error = %e, "liveness: the engine's instances cannot be read");
                Vec::new()
            }
        }
    }

    /// Each instance's boot time (ms) from the agent's `node_boot_time_seconds`.
    fn boot_times(&self, now: i64) -> HashMap<String, i64> {
        self.vector("max by (instance) (node_boot_time_seconds)", now)
            .unwrap_or_default()
            .iter()
            .filter_map(|s| Some((s.labels.get("instance")?.to_string(), (s.f * 1000.0) as i64)))
            .collect()
    }

    /// Runs one evaluation at `ts` (aligned to the tick) and hands on what it decided.
    fn evaluate(&self, ts: i64) {
        let p = &self.parts;
        let rules = p.rules.current();
        let cw = cloudwatch_rules(&rules);
        let mut points: Vec<Point> = Vec::new();
        let mut tap = |l: &Labels, s: Sample| {
            if let Some((c, high)) = l.metric_name().and_then(|n| cw.get(n)) {
                points.push(Point {
                    metric_name: c.metric_name.clone(),
                    dimensions: c
                        .dimensions
                        .iter()
                        .filter_map(|d| Some((d.clone(), l.get(d)?.to_string())))
                        .collect(),
                    timestamp_ms: s.timestamp_ms,
                    value: s.value,
                    high_resolution: *high,
                });
            }
        };
        let mut ev = self.eval.lock().unwrap_or_else(|p| p.into_inner());
        if !Arc::ptr_eq(&ev.sim.rules, &rules) {
            // Reloaded since the last tick.
            ev.sim.set_rules(rules.clone());
        }
        let observed = if p.fleet.describes() {
            p.fleet.observe(&p.rules.groups(), &self.boot_times(ts), ts)
        } else {
            Observations::default()
        };
        // What the rules and the aggregator write is read as samples: the window holds it
        // before the engine does (and holds `vigil_instance_up` alone when nothing forwards).
        let mut written = vigil_rules::replay::written(&rules);
        written.insert(INSTANCE_UP.to_string());
        if let Some(r) = &p.remote {
            written.extend(r.local_names().iter().cloned());
        }
        let mut sink = RuleSink {
            store: &p.store,
            beside: p.remote.as_deref().map(|r| r as &dyn promql::Storage),
            whole_unless: p.remote.as_ref().map(|_| &written),
            now_ms: p.clock.now_ms(),
            tap: if cw.is_empty() { None } else { Some(&mut tap) },
        };
        let mut ended = vigil_rules::pause::ending(&ev.sim.state, ts);
        let events = ev.sim.step(&mut sink, 0, ts, &observed);
        ended
            .retain(|(what, name, p)| !vigil_rules::pause::still_set(&ev.sim.state, what, name, p));
        p.publisher.queue(points);
        // In a cluster only the holder (with the shared state adopted) acts on its decisions; a
        // follower's are what it would do, and say so in the decision history.
        let acting = p.cluster.holds_state();
        let mut history: Vec<(i64, &str, serde_json::Value)> = Vec::new();
        for e in &events {
            let kind = match e {
                Event::Alert(_) => "alert",
                Event::Scaling(_) => "scaling",
                Event::Replace(_) => "replace",
                Event::RuleError { .. } => continue,
            };
            let mut body = vigil_rules::replay::event_json(e);
            if !acting {
                body["follower"] = serde_json::Value::Bool(true);
            }
            history.push((ts, kind, body));
        }
        // Alerts Vigil raises from decisions (fail-open) fire until their decision ends them.
        for e in &events {
            if let Event::Alert(t) = e {
                if t.rule != "VigilReplacementFailOpen" {
                    continue;
                }
                if t.to == AlertState::Firing {
                    let decision = events.iter().find_map(|x| match x {
                        Event::Replace(r)
                            if r.fail_open_started
                                && Some(r.asg.as_str()) == t.labels.get("asg") =>
                        {
                            Some(vigil_rules::replay::event_json(x))
                        }
                        _ => None,
                    });
                    ev.notifier.synthetic.insert(
                        t.labels.clone(),
                        ActiveAlert {
                            labels: t.labels.clone(),
                            annotations: t.annotations.clone(),
                            value: t.value,
                            starts_at: t.at,
                            receivers: vec![],
                            decision,
                        },
                    );
                } else {
                    ev.notifier.synthetic.remove(&t.labels);
                }
            }
        }
        let settings = &p.notify;
        let firing = firing_alerts(&rules, &ev.sim.state);
        let before = ev.notifier.clone();
        ev.notifier.observe(settings, ts, &firing);
        let mut deliveries: Vec<(String, serde_json::Value)> = ev
            .notifier
            .flush(settings, ts)
            .iter()
            .flat_map(|n| notify::render(n, settings))
            .map(|d| (d.target().to_string(), d.to_json()))
            .collect();
        // A follower's notifier runs as if it had sent its notifications, and is replaced by the
        // holder's when it takes over.
        if !acting {
            for (_, d) in deliveries.drain(..) {
                tracing::info!(
                    integration = d["kind"].as_str().unwrap_or(""),
                    "follower: would notify (the leader does)"
                );
            }
        }
        // The decisions go to the actuator, and everything — evaluation state, decision history,
        // what the notifier told and will tell, the actions still to carry out — is committed in one
        // transaction before anything is acted on: a crash can neither repeat nor forget any of it.
        p.fleet.take(&events, ts);
        let notifier_json =
            (ev.notifier != before || !deliveries.is_empty()).then(|| ev.notifier.to_json());
        let committed = p.db.lock().commit_evaluation(&state::Evaluated {
            at: ts,
            state: &ev.sim.state,
            capacity: ev.sim.capacities(),
            actions: &p.fleet.pending_json(),
            history: &history,
            notifier: notifier_json.as_ref(),
            deliveries: &deliveries,
            ttl_ms: notify::NOTIFICATION_TTL_MS,
        });
        match committed {
            Ok(()) => {
                if !deliveries.is_empty() {
                    p.outbox.wake.notify_one();
                }
                if acting {
                    p.cluster.state_changed.notify_one();
                    // Said once, by the node that acts, once the end is saved.
                    for (what, name, p) in ended {
                        tracing::info!(target: "vigil::audit", what, name = %name, reason = %p.reason, author = %p.author, until = %p.until.map(format_timestamp_ms).unwrap_or_default(), "pause ended (its until passed)");
                    }
                }
            }
            Err(e) => {
                // Not committed: the notifier forgets this flush too, and decides it again.
                tracing::error!(error = %e, "cannot persist the evaluation; notifications are decided again at the next one");
                ev.notifier = before;
            }
        }
        for e in events {
            let line = event_text(&e);
            match &e {
                Event::RuleError { .. } => {
                    self.metrics.rule_evaluation_failures.inc();
                    tracing::warn!(event = %line, "rule evaluation failed");
                }
                Event::Scaling(d) => {
                    self.metrics.decision("scaling");
                    if acting {
                        self.metrics.scaling_decision(d);
                    }
                    if !d.changes() {
                        let what = if d.held.is_some() {
                            "scaling held"
                        } else {
                            "scaling unchanged"
                        };
                        tracing::info!(asg = %d.asg, held = d.held.as_deref().unwrap_or(""), notes = ?d.notes, "{what}");
                    } else if acting {
                        tracing::info!(asg = %d.asg, from = d.current, to = d.desired, by = ?d.by, held = ?d.held, notes = ?d.notes, victims = ?d.victims, "scaling decision");
                    } else {
                        tracing::info!(asg = %d.asg, from = d.current, to = d.desired, by = ?d.by, held = ?d.held, notes = ?d.notes, "follower: would scale (the leader acts)");
                    }
                    ev.decisions.push_back(d.clone());
                    while ev.decisions.len() > HISTORY {
                        ev.decisions.pop_front();
                    }
                }
                Event::Replace(r) => {
                    self.metrics.decision("replace");
                    let what = match (r.replace.is_empty(), acting) {
                        (true, _) if !r.held.is_empty() => "replacement held",
                        (true, _) => "replacement",
                        (false, true) => "replacement decision",
                        (false, false) => "follower: would replace (the leader acts)",
                    };
                    tracing::info!(policy = %r.policy, asg = %r.asg, replace = ?r.replace, held = ?r.held, note = r.note.as_deref().unwrap_or(""), "{what}");
                    ev.replacements.push_back(r.clone());
                    while ev.replacements.len() > HISTORY {
                        ev.replacements.pop_front();
                    }
                }
                Event::Alert(t) => {
                    tracing::info!(alert = %t.labels, from = t.from.as_str(), to = t.to.as_str(), "alert");
                }
            }
            ev.log.push_back(line);
            while ev.log.len() > HISTORY {
                ev.log.pop_front();
            }
        }
        self.view.store(Arc::new(View::of(&ev)));
    }

    /// Evaluates forever at the rules' tick, and compacts the window.
    pub async fn run(self: Arc<Self>) {
        let clock = self.parts.clock.clone();
        // The first evaluation compacts (and so measures the chunks' bytes) at once.
        let mut last_compact = i64::MIN / 2;
        let mut warned_warm = false;
        loop {
            let tick = self.parts.rules.current().tick_ms().max(1000);
            let now = clock.now_ms();
            let next = (now / tick + 1) * tick;
            tokio::time::sleep(Duration::from_millis((next - now) as u64)).await;
            if next < self.warm_until_ms {
                // Restarted with saved state: give every instance `stale_after` to push again
                // before judging an empty window (alerts would resolve, then fire anew).
                if !warned_warm {
                    tracing::info!(
                        until = %format_timestamp_ms(self.warm_until_ms),
                        "restarted: evaluation waits until the fleet has pushed again (stale_after)"
                    );
                    warned_warm = true;
                }
                continue;
            }
            let me = self.clone();
            let compact = clock.now_ms() - last_compact > 30_000;
            if compact {
                last_compact = clock.now_ms();
            }
            // Evaluation and compaction are CPU work and take the window's lock: keep them off
            // the tasks that answer HTTP.
            let _ = tokio::task::spawn_blocking(move || {
                me.liveness(next);
                me.evaluate(next);
                let store = &me.parts.store;
                // What the rules recorded reaches the window's log by the end of the tick.
                store.flush_log();
                if compact {
                    let bytes = store.compact(me.parts.clock.now_ms());
                    me.metrics.chunk_bytes.set(bytes as i64);
                }
                me.metrics.series.set(store.series_count() as i64);
            })
            .await;
            tracing::trace!(at = %format_timestamp_ms(next), "evaluated");
        }
    }
}
