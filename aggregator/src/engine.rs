//! The evaluation loop: rule groups, scaling and replacement policies on their intervals, over
//! the series window; decisions are logged and kept for the API. With `dry_run` (the embedded
//! default) every action is decided and logged but nothing is called; the capacity a decision
//! sets is then simulated.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use vigil_rules::alerting::AlertState;
use vigil_rules::evaluator::{alert_key, AlertKey, RuleSet};
use vigil_rules::rulefile::{CloudWatchPublish, Rule};
use vigil_wire::{Labels, Sample};

use vigil_rules::duration::format_timestamp_ms;
use vigil_rules::evaluator::Event;
use vigil_rules::replay::event_text;

use crate::actions::cloudwatch::Point;
use crate::actions::notify::{self, ActiveAlert};
use crate::app::{App, HISTORY};
use crate::store::RuleSink;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Instance liveness from push arrival: `vigil_instance_up{instance,asg,az,pod,namespace}` is 1
/// while the instance pushed within `stale_after`, else 0; the series of silent instances are
/// marked stale.
pub fn liveness(app: &App, ts: i64) {
    let now = now_ms();
    let marked = app.store.mark_stale(now, app.cfg.stale_after_ms);
    if marked > 0 {
        tracing::info!(
            series = marked,
            stale_after_ms = app.cfg.stale_after_ms,
            "series marked stale: not pushed to"
        );
    }
    for (_, labels, last_push) in app.store.instances() {
        let mut b = labels.to_builder();
        b.set(vigil_wire::METRIC_NAME, "vigil_instance_up");
        let up = if now - last_push <= app.cfg.stale_after_ms {
            1.0
        } else {
            0.0
        };
        let _ = app
            .store
            .append(&b.build(), [vigil_wire::Sample::new(ts, up)], now);
    }
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

/// Runs one evaluation at `ts` (aligned to the tick) and hands its decisions to the action layer.
pub fn evaluate(app: &App, ts: i64) {
    let rules = app.rules();
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
    let mut ev = app.eval.lock().unwrap_or_else(|p| p.into_inner());
    app.actions.prepare(app, &mut ev.sim, ts);
    let mut sink = RuleSink {
        store: &app.store,
        now_ms: now_ms(),
        tap: if cw.is_empty() { None } else { Some(&mut tap) },
    };
    let events = ev.sim.step(&mut sink, 0, ts);
    if !points.is_empty() {
        let (invalid, overflow) = app
            .actions
            .cloudwatch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(points);
        for (reason, n) in [("invalid", invalid), ("queue_full", overflow)] {
            if n > 0 {
                app.metrics
                    .cloudwatch_dropped
                    .get_or_create(&vec![("reason".into(), reason.into())])
                    .inc_by(n);
            }
        }
    }
    let mut history: Vec<(i64, &str, serde_json::Value)> = Vec::new();
    for e in &events {
        let kind = match e {
            Event::Alert(_) => "alert",
            Event::Scaling(_) => "scaling",
            Event::Replace(_) => "replace",
            Event::RuleError { .. } => continue,
        };
        history.push((ts, kind, vigil_rules::replay::event_json(e)));
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
                        if r.fail_open_started && Some(r.asg.as_str()) == t.labels.get("asg") =>
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
    let settings = app.notify_settings();
    let firing = firing_alerts(&rules, &ev.sim.state);
    let before = ev.notifier.clone();
    ev.notifier.observe(&settings, ts, &firing);
    let deliveries: Vec<(String, serde_json::Value)> = ev
        .notifier
        .flush(&settings, ts)
        .iter()
        .flat_map(|n| notify::render(n, &settings))
        .map(|d| (d.target().to_string(), d.to_json()))
        .collect();
    // The decisions go to the actuator, and everything — evaluation state, decision history,
    // what the notifier told and will tell, the actions still to carry out — is committed in one
    // transaction before anything is acted on: a crash can neither repeat nor forget any of it.
    app.actions.take(&events, ts);
    let notifier_json =
        (ev.notifier != before || !deliveries.is_empty()).then(|| ev.notifier.to_json());
    let committed = app.db().commit_evaluation(&crate::state::Evaluated {
        at: ts,
        state: &ev.sim.state,
        capacity: &ev.sim.capacity,
        actions: &app.actions.pending_json(),
        history: &history,
        notifier: notifier_json.as_ref(),
        deliveries: &deliveries,
        ttl_ms: crate::actions::NOTIFICATION_TTL_MS,
    });
    match committed {
        Ok(()) if !deliveries.is_empty() => app.actions.wake_outbox.notify_one(),
        Ok(()) => {}
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
                app.metrics.rule_evaluation_failures.inc();
                tracing::warn!(event = %line, "rule evaluation failed");
            }
            Event::Scaling(d) => {
                app.metrics
                    .decisions
                    .get_or_create(&vec![("kind".into(), "scaling".into())])
                    .inc();
                tracing::info!(asg = %d.asg, from = d.current, to = d.desired, by = ?d.by, held = ?d.held, "scaling decision");
                ev.decisions.push_back(d.clone());
                while ev.decisions.len() > HISTORY {
                    ev.decisions.pop_front();
                }
            }
            Event::Replace(r) => {
                app.metrics
                    .decisions
                    .get_or_create(&vec![("kind".into(), "replace".into())])
                    .inc();
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
    app.view.store(Arc::new(crate::app::View::of(&ev)));
}

/// Evaluates forever at the rules' tick, and compacts the window.
pub async fn run(app: Arc<App>) {
    let mut last_compact = now_ms();
    let mut warned_warm = false;
    loop {
        let tick = app.rules().tick_ms().max(1000);
        let now = now_ms();
        let next = (now / tick + 1) * tick;
        tokio::time::sleep(Duration::from_millis((next - now) as u64)).await;
        if next < app.warm_until_ms {
            // Restarted with saved state: give every instance `stale_after` to push again
            // before judging an empty window (alerts would resolve, then fire anew).
            if !warned_warm {
                tracing::info!(
                    until = %format_timestamp_ms(app.warm_until_ms),
                    "restarted: evaluation waits until the fleet has pushed again (stale_after)"
                );
                warned_warm = true;
            }
            continue;
        }
        let app2 = app.clone();
        // Evaluation is CPU work: keep it off the tasks that answer HTTP.
        let _ = tokio::task::spawn_blocking(move || {
            liveness(&app2, next);
            evaluate(&app2, next)
        })
        .await;
        if now_ms() - last_compact > 30_000 {
            app.store.compact(now_ms());
            last_compact = now_ms();
        }
        app.metrics.series.set(app.store.series_count() as i64);
        app.metrics.chunk_bytes.set(app.store.chunk_bytes() as i64);
        tracing::trace!(at = %format_timestamp_ms(next), "evaluated");
    }
}
