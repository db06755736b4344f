//! Vigil's own read endpoints (`/api/v1/rules`, `alerts`, `scaling`, `instances`), from the view
//! the engine published and the fleet's state (the console renders from them too).

use std::collections::HashMap;

use hyper::StatusCode;
use serde_json::{json, Value as Json};
use vigil_rules::alerting::AlertState;
use vigil_rules::duration::format_timestamp_ms;
use vigil_rules::evaluator::alert_key;
use vigil_rules::gofmt::shortest_g;
use vigil_rules::health::RuleHealth;
use vigil_rules::promql::{self, Value};
use vigil_rules::rulefile::Rule;

use super::query::labels_json;
use super::{json_err, json_ok, Api, Resp};

/// Prometheus's time for "never evaluated".
const NEVER: &str = "0001-01-01T00:00:00Z";

/// A rule's health fields as Prometheus gives them, and Vigil's ring of recent evaluations.
fn health_json(h: Option<&RuleHealth>) -> serde_json::Map<String, Json> {
    let last = h.and_then(RuleHealth::last);
    let mut m = serde_json::Map::new();
    m.insert(
        "health".into(),
        json!(h.map_or("unknown", RuleHealth::health)),
    );
    m.insert(
        "lastError".into(),
        json!(last.and_then(|e| e.error.as_deref()).unwrap_or("")),
    );
    m.insert(
        "lastEvaluation".into(),
        json!(last.map_or(NEVER.to_string(), |e| format_timestamp_ms(e.at))),
    );
    m.insert(
        "evaluationTime".into(),
        json!(last.map_or(0.0, |e| e.duration_ns as f64 / 1e9)),
    );
    m.insert(
        "recentEvaluations".into(),
        json!(h
            .map(|h| h
                .recent
                .iter()
                .rev()
                .map(|e| json!({"time": format_timestamp_ms(e.at), "evaluationTime": e.duration_ns as f64 / 1e9,
                    "samples": e.samples, "error": e.error}))
                .collect::<Vec<_>>())
            .unwrap_or_default()),
    );
    m
}

pub(super) fn rules_json(app: &Api) -> Json {
    let rules = app.rules.current();
    let view = app.view.load();
    let mut groups = Vec::new();
    for g in rules.groups() {
        let gh = view.health.get(&(g.file.clone(), g.name.clone()));
        let mut rs = Vec::new();
        for (idx, r) in g.rules.iter().enumerate() {
            let mut rule = match r {
                Rule::Record(rec) => {
                    json!({"type": "recording", "name": rec.record, "query": rec.expr.text()})
                }
                Rule::Alert(a) => {
                    let st = view.alerts.get(&alert_key(g, a));
                    let alerts: Vec<Json> = st
                        .map(|s| s.iter().map(alert_json).collect())
                        .unwrap_or_default();
                    let state = st.map_or("inactive", |s| {
                        if s.iter().any(|x| x.state == AlertState::Firing) {
                            "firing"
                        } else if s.iter().any(|x| x.state == AlertState::Pending) {
                            "pending"
                        } else {
                            "inactive"
                        }
                    });
                    json!({"type": "alerting", "name": a.alert, "query": a.expr.text(), "duration": a.for_ms as f64 / 1000.0,
                        "keepFiringFor": a.keep_firing_for_ms as f64 / 1000.0, "state": state, "alerts": alerts})
                }
            };
            if let Json::Object(m) = &mut rule {
                m.extend(health_json(gh.and_then(|h| h.rules.get(idx))));
            }
            rs.push(rule);
        }
        groups.push(json!({"name": g.name, "file": g.file, "interval": g.interval_ms.unwrap_or(rules.default_interval_ms) as f64 / 1000.0,
            "rules": rs,
            "lastEvaluation": gh.and_then(|h| h.last_evaluation).map_or(NEVER.to_string(), format_timestamp_ms),
            "evaluationTime": gh.map_or(0.0, |h| h.duration_ns as f64 / 1e9)}));
    }
    json!({"groups": groups})
}

/// Rules whose last evaluation failed: (group, rule, error), for the console.
pub(super) fn broken_rules(app: &Api) -> Vec<(String, String, String)> {
    let rules = app.rules.current();
    let view = app.view.load();
    let mut out = Vec::new();
    for g in rules.groups() {
        let Some(gh) = view.health.get(&(g.file.clone(), g.name.clone())) else {
            continue;
        };
        for (r, h) in g.rules.iter().zip(&gh.rules) {
            if let Some(e) = h.last().and_then(|e| e.error.as_ref()) {
                out.push((g.name.clone(), r.name().to_string(), e.clone()));
            }
        }
    }
    out
}

fn alert_json(a: &vigil_rules::alerting::Alert) -> Json {
    json!({"labels": labels_json(&a.labels), "annotations": a.annotations, "state": a.state.as_str(),
        "activeAt": format_timestamp_ms(a.active_at), "value": shortest_g(a.value)})
}

pub(super) fn alerts_json(app: &Api) -> Json {
    let view = app.view.load();
    let mut v: Vec<&vigil_rules::alerting::Alert> = view.alerts.values().flatten().collect();
    v.sort_by(|a, b| a.labels.cmp(&b.labels));
    json!({"alerts": v.into_iter().map(alert_json).collect::<Vec<_>>()})
}

pub(super) fn scaling_json(app: &Api) -> Json {
    let rules = app.rules.current();
    let view = app.view.load();
    // A pause past its end (cleared at the policy's next decision) is not shown as in force.
    let now = app.clock.now_ms();
    let in_force = |p: &&vigil_rules::pause::Pause| p.until.is_none_or(|u| now < u);
    let mut out = Vec::new();
    for (asg, ps) in rules.scaling_by_asg() {
        for p in ps {
            let last: Vec<Json> = view
                .decisions
                .iter()
                .rev()
                .filter(|d| d.asg == asg)
                .take(10)
                .map(|d| json!({"time": format_timestamp_ms(d.at), "from": d.current, "to": d.desired, "by": d.by, "held": d.held, "notes": d.notes,
                    "victims": d.victims.iter().map(|(i, why)| json!({"instance": i, "reason": why})).collect::<Vec<_>>(),
                    "inputs": d.inputs.iter().map(|i| json!({"policy": i.policy, "value": i.value.map(shortest_g), "recommended": i.recommended, "reason": i.reason})).collect::<Vec<_>>()}))
                .collect();
            let decided = view.capacity.get(asg).copied();
            let group = app.fleet.group(asg);
            let simulated = app.fleet.simulated(asg);
            let current = match &group {
                Some(g) if !simulated => Some(g.desired),
                _ => decided,
            };
            let desired = app.fleet.pending(asg).or(decided);
            out.push(json!({"policy": p.name, "group": asg, "min": p.min, "max": p.max, "current": current,
                "desired": desired, "dry_run": app.cfg.dry_run, "simulated": simulated,
                "acting": app.cluster.role().as_str() != "follower", "last_decisions": last,
                "paused": view.scaling_paused.get(asg).filter(|p| in_force(p)).map(super::pause::pause_json),
                "scheduled": view.scheduled.get(asg).map(|r| json!({"schedule": r.schedule, "ran": format_timestamp_ms(r.at), "min": r.min, "max": r.max})),
                "fleet": app.fleet.group_json(asg)}));
        }
    }
    let replace: Vec<Json> = rules
        .replace()
        .map(|p| {
            json!({"policy": p.name, "group": p.asg,
                "paused": view.replace_paused.get(&p.name).filter(|p| in_force(p)).map(super::pause::pause_json)})
        })
        .collect();
    // Each schedule with its next run (Vigil runs them itself, at their time).
    let schedules: Vec<Json> = rules
        .files
        .iter()
        .flat_map(|f| f.schedules.iter())
        .map(|s| {
            json!({"name": s.name, "group": s.asg, "cron": s.cron_text, "timezone": s.timezone,
                "min": s.min, "max": s.max,
                "next_run": s.next_after(now).map(format_timestamp_ms),
                "in_force": view.scheduled.get(&s.asg).is_some_and(|r| r.schedule == s.name)})
        })
        .collect();
    json!({"policies": out, "replace": replace, "schedules": schedules})
}

pub(super) fn instances_json(app: &Api) -> Json {
    let health = app.engine.promql().instant(
        &*app.store,
        &match promql::parse("min by (instance) (vigil_health_up)") {
            Ok(q) => q,
            Err(_) => return json!([]),
        },
        app.clock.now_ms(),
    );
    let mut h: HashMap<String, f64> = HashMap::new();
    if let Ok(r) = health {
        if let Value::Vector(v) = r.value {
            for s in v {
                if let Some(i) = s.labels.get("instance") {
                    h.insert(i.to_string(), s.f);
                }
            }
        }
    }
    let now = app.clock.now_ms();
    json!({"instances": app.store.instances().into_iter().map(|(i, l, last)| {
        let health = match h.get(&i) { Some(v) if *v >= 1.0 => "healthy", Some(_) => "unhealthy", None => "unknown" };
        json!({"instance": i, "labels": labels_json(&l), "lastPush": format_timestamp_ms(last), "secondsSinceLastPush": (now - last) as f64 / 1000.0, "health": health})
    }).collect::<Vec<_>>()})
}

/// `GET /api/v2/status`, Alertmanager's shape (amtool's `config show` and `cluster show` read
/// it): the configuration file as loaded, every secret replaced by `<secret>`; the cluster; the
/// version; when the process started.
pub fn status_v2_json(api: &Api) -> Json {
    let unknown = "unknown";
    json!({
        "cluster": api.cluster.alertmanager_status(),
        "config": {"original": api.config_shown},
        "uptime": format_timestamp_ms(api.started_ms),
        "versionInfo": {
            "version": env!("CARGO_PKG_VERSION"),
            "branch": unknown,
            "revision": unknown,
            "buildUser": unknown,
            "buildDate": unknown,
            "goVersion": "none (vigil-aggregator is written in Rust)",
        },
    })
}

/// Vigil's own: the persisted decision history (alerts, scaling, replacement), newest first;
/// it survives restarts.
pub(super) fn decisions(api: &Api) -> Resp {
    match api.db.lock().recent(200) {
        Ok(v) => json_ok(json!(v
            .into_iter()
            .map(|(_, _, body)| body)
            .collect::<Vec<_>>())),
        Err(e) => json_err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}
