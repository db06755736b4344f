//! The evaluation loop: rule groups, scaling and replacement policies on their intervals, over
//! the series window; decisions are logged and kept for the API. With `dry_run` (the embedded
//! default) every action is decided and logged but nothing is called; the capacity a decision
//! sets is then simulated.

use std::sync::Arc;
use std::time::Duration;

use vigil_rules::duration::format_timestamp_ms;
use vigil_rules::evaluator::Event;
use vigil_rules::replay::event_text;

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

/// Runs one evaluation at `ts` (aligned to the tick).
pub fn evaluate(app: &App, ts: i64) {
    let mut ev = app.eval.lock().unwrap_or_else(|p| p.into_inner());
    let mut sink = RuleSink {
        store: &app.store,
        now_ms: now_ms(),
    };
    let events = ev.sim.step(&mut sink, 0, ts);
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
    if let Some(db) = &app.db {
        let db = db.lock().unwrap_or_else(|p| p.into_inner());
        // Saved before anything is acted on: a restart never repeats or forgets a decision.
        if let Err(e) = db
            .save(ts, &ev.sim.state, &ev.sim.capacity)
            .and_then(|_| db.record(ts, &history, 7 * 86_400_000))
        {
            tracing::error!(error = %e, "cannot persist the evaluation state");
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
                if app.cfg.dry_run {
                    tracing::info!(asg = %d.asg, from = d.current, to = d.desired, by = ?d.by, "dry run: would SetDesiredCapacity");
                }
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
                if app.cfg.dry_run {
                    for (i, why) in &r.replace {
                        tracing::info!(asg = %r.asg, instance = %i, reason = %why, "dry run: would SetInstanceHealth Unhealthy");
                    }
                }
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
}

/// Evaluates forever at the rules' tick, and compacts the window.
pub async fn run(app: Arc<App>) {
    let mut last_compact = now_ms();
    loop {
        let tick = app.rules().tick_ms().max(1000);
        let now = now_ms();
        let next = (now / tick + 1) * tick;
        tokio::time::sleep(Duration::from_millis((next - now) as u64)).await;
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
