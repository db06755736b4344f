//! The operator console (`GET /`): one page rendered here from the view the engine published
//! and the fleet's state, so that it reads without JavaScript (and with `curl`). `console.js`
//! and `console.css`, served by the aggregator itself (no other network, a strict
//! Content-Security-Policy), draw each group's capacity and its policies' values over the
//! window from the query API (`crate`'s `vigil_scaling_*` series), refresh the page, and set
//! silences and pauses through the admin API with the token the operator gives (kept in the
//! tab's session storage, sent as a bearer header: basic auth never opens admin writes).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value as Json;
use vigil_rules::duration::format_timestamp_ms;

use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::StatusCode;

use super::views::{alerts_json, broken_rules, instances_json, rules_json, scaling_json};
use super::{respond, Api, Resp};

pub(super) const JS: &str = include_str!("console.js");
pub(super) const CSS: &str = include_str!("console.css");
pub(super) const ICON: &str = include_str!("console.svg");
/// Everything from the aggregator itself; no inline script or style.
pub(super) const CSP: &str = "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'";

/// A console page or asset: the console's Content-Security-Policy, never cached stale.
pub(super) fn response(ctype: &str, body: impl Into<Bytes>) -> Resp {
    let mut r = respond(StatusCode::OK, ctype, body);
    let h = r.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn text(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Null => String::new(),
        other => other.to_string(),
    }
}

fn button(act: &str, attrs: &[(&str, &str)], label: &str) -> String {
    let mut b = format!("<button type=button data-act={act}");
    for (k, v) in attrs {
        b.push_str(&format!(" data-{k}=\"{}\"", esc(v)));
    }
    b.push_str(&format!(">{label}</button>"));
    b
}

fn paused_text(p: &Json) -> String {
    if p.is_null() {
        return String::new();
    }
    format!(
        "paused by {} since {}{}: {}",
        text(&p["author"]),
        text(&p["since"]),
        p["until"]
            .as_str()
            .map_or(String::new(), |u| format!(" until {u}")),
        text(&p["reason"])
    )
}

/// The pause cell of a group or replacement policy: what is in force, and the switch.
fn pause_cell(kind: &str, name: &str, paused: &Json) -> String {
    let (act, label) = if paused.is_null() {
        ("pause", "Pause")
    } else {
        ("resume", "Resume")
    };
    format!(
        "{}{}",
        esc(&paused_text(paused)),
        button(act, &[("kind", kind), ("name", name)], label)
    )
}

pub(super) fn page(app: &Api) -> String {
    let mut h = String::from(
        "<!doctype html><html lang=en><meta charset=utf-8><meta name=viewport content=\"width=device-width\"><title>Vigil</title><link rel=icon href=\"/console/console.svg\"><link rel=stylesheet href=\"/console/console.css\"><script defer src=\"/console/console.js\"></script>",
    );
    let now = app.clock.now_ms();
    h.push_str(&format!(
        "<header><h1>Vigil aggregator</h1><p id=updated role=status></p><label>Admin token <input id=token type=password autocomplete=off placeholder=\"for silences and pauses\"></label></header><main id=live data-now=\"{now}\" data-window=\"{}\" data-step=\"{}\">",
        app.cfg.retention_ms,
        app.rules.current().tick_ms().max(1000),
    ));
    summary(app, &mut h);
    groups(app, &mut h);
    fleet(app, &mut h);
    alerts(app, &mut h);
    silences(app, &mut h);
    rule_health(app, &mut h);
    h.push_str("<h2>Last decisions</h2><pre class=log>");
    for l in app.view.load().log.iter().rev().take(50) {
        h.push_str(&esc(l));
        h.push('\n');
    }
    h.push_str("</pre></main>");
    h.push_str("<dialog id=act><form method=dialog><h3 id=act-title></h3><div id=act-fields></div><p id=act-status role=status></p><menu><button id=act-go>Apply</button> <button id=act-cancel type=button>Cancel</button></menu></form></dialog>");
    h
}

fn summary(app: &Api, h: &mut String) {
    h.push_str(&format!(
        "<p>{} series, {} samples in the window; dry run: {}; notifications waiting in the outbox: {}</p>",
        app.store.series_count(),
        app.store.sample_count(),
        app.cfg.dry_run,
        app.outbox.waiting()
    ));
    let c = app.cluster.status();
    if c["role"] != "single" {
        h.push_str(&format!(
            "<p>Cluster: this node {} is the <b>{}</b>; leader {} at {}, epoch {}, lease expires {}{}</p>",
            esc(c["node_id"].as_str().unwrap_or("")),
            esc(c["role"].as_str().unwrap_or("")),
            esc(c["leader"].as_str().unwrap_or("none")),
            esc(c["leader_address"].as_str().unwrap_or("-")),
            c["epoch"],
            esc(c["lease_expires"].as_str().unwrap_or("-")),
            if c["role"] == "follower" {
                " (decisions below are what this node would do; the leader acts)"
            } else {
                ""
            }
        ));
    }
    if let Some(e) = app.rules.last_error().as_ref() {
        h.push_str(&format!(
            "<p class=bad>Last reload failed (previous rules still running):<pre>{}</pre>",
            esc(e)
        ));
    }
    let broken = broken_rules(app);
    if !broken.is_empty() {
        h.push_str("<h2 class=bad>Broken rules</h2><table><tr><th>group<th>rule<th>last error");
        for (g, r, e) in &broken {
            h.push_str(&format!("<tr><td>{}<td>{}<td>{}", esc(g), esc(r), esc(e)));
        }
        h.push_str("</table>");
    }
}

/// Each Auto Scaling group: its policies (value against target, AWS's view, the last call, the
/// pause switch), its schedules, and a chart the script draws; then the replacement policies.
fn groups(app: &Api, h: &mut String) {
    let scaling = scaling_json(app);
    h.push_str("<h2>Auto Scaling groups</h2><table><tr><th>group<th>policy<th>AWS desired (min–max, in service)<th>pending<th>last call<th>last value<th>paused");
    let values = last_values(app);
    let mut charts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut switch_shown = BTreeSet::new();
    for p in scaling["policies"].as_array().into_iter().flatten() {
        let (group, policy) = (text(&p["group"]), text(&p["policy"]));
        charts
            .entry(group.clone())
            .or_default()
            .push(policy.clone());
        let f = &p["fleet"];
        let aws = if p["simulated"] == true {
            format!("simulated (dry run): {}", p["current"])
        } else if f["aws"].is_null() {
            "not described".to_string()
        } else {
            format!(
                "{} ({}–{}, {})",
                f["aws"]["desired"], f["aws"]["min"], f["aws"]["max"], f["aws"]["in_service"]
            )
        };
        let last = if f["last_applied"].is_null() {
            String::new()
        } else {
            format!(
                "{} → {}: {}",
                text(&f["last_applied"]["time"]),
                f["last_applied"]["desired"],
                text(&f["last_applied"]["result"])
            )
        };
        let value = values
            .get(&(group.clone(), policy.clone()))
            .map_or(String::new(), |v| vigil_rules::gofmt::g(*v, 6));
        // One switch per group (a pause holds the whole group's decisions).
        let pause = if switch_shown.insert(group.clone()) {
            pause_cell("scaling", &group, &p["paused"])
        } else {
            esc(&paused_text(&p["paused"]))
        };
        h.push_str(&format!(
            "<tr><td>{}<td>{}<td>{}<td>{}<td>{}<td>{}<td>{pause}",
            esc(&group),
            esc(&policy),
            esc(&aws),
            esc(&text(&f["pending"])),
            esc(&last),
            esc(&value),
        ));
    }
    h.push_str("</table>");
    let schedules = scaling["schedules"].as_array().cloned().unwrap_or_default();
    if !schedules.is_empty() {
        h.push_str("<h3>Schedules</h3><table><tr><th>schedule<th>group<th>cron<th>bounds<th>next run<th>in force");
        for s in &schedules {
            h.push_str(&format!(
                "<tr><td>{}<td>{}<td>{} ({})<td>{}–{}<td>{}<td>{}",
                esc(&text(&s["name"])),
                esc(&text(&s["group"])),
                esc(&text(&s["cron"])),
                esc(&text(&s["timezone"])),
                esc(&text(&s["min"])),
                esc(&text(&s["max"])),
                esc(&text(&s["next_run"])),
                if s["in_force"] == true { "yes" } else { "" }
            ));
        }
        h.push_str("</table>");
    }
    for (group, policies) in &charts {
        h.push_str(&format!(
            "<figure class=chart data-asg=\"{}\" data-policies=\"{}\"><figcaption>{}: desired, in service and recommended capacity; each policy's value against its target</figcaption></figure>",
            esc(group),
            esc(&serde_json::to_string(policies).unwrap_or_default()),
            esc(group)
        ));
    }
    let replace = scaling["replace"].as_array().cloned().unwrap_or_default();
    if !replace.is_empty() {
        h.push_str("<h3>Replacement</h3><table><tr><th>group<th>policy<th>paused");
        for p in &replace {
            let name = text(&p["policy"]);
            h.push_str(&format!(
                "<tr><td>{}<td>replacement {}<td>{}",
                esc(&text(&p["group"])),
                esc(&name),
                pause_cell("replace", &name, &p["paused"])
            ));
        }
        h.push_str("</table>");
    }
}

/// Each policy's value as its last decision wrote it (`vigil_scaling_policy_value`).
fn last_values(app: &Api) -> BTreeMap<(String, String), f64> {
    let Ok(q) = vigil_rules::promql::parse(vigil_rules::capacity::VALUE) else {
        return BTreeMap::new();
    };
    match app
        .engine
        .promql()
        .instant(&*app.store, &q, app.clock.now_ms())
        .map(|r| r.value)
    {
        Ok(vigil_rules::promql::Value::Vector(v)) => v
            .into_iter()
            .filter_map(|s| {
                let asg = s.labels.get("asg")?.to_string();
                let policy = s.labels.get("policy")?.to_string();
                Some(((asg, policy), s.f))
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// The fleet by group and Availability Zone: every instance that pushes or that AWS describes,
/// with the agent's health and AWS's state.
fn fleet(app: &Api, h: &mut String) {
    #[derive(Default)]
    struct Row {
        az: String,
        agent: String,
        aws: String,
        last_push: String,
    }
    let mut groups: BTreeMap<String, BTreeMap<String, Row>> = BTreeMap::new();
    let mut names: BTreeSet<String> = app
        .rules
        .current()
        .scaling_by_asg()
        .into_keys()
        .map(str::to_string)
        .collect();
    names.extend(app.rules.current().replace().map(|p| p.asg.clone()));
    for g in &names {
        let Some(info) = app.fleet.group(g) else {
            continue;
        };
        let rows = groups.entry(g.clone()).or_default();
        for m in &info.members {
            let r = rows.entry(m.id.clone()).or_default();
            r.az = m.az.clone();
            r.agent = "no agent pushing".into();
            r.aws = format!(
                "{} {}{}",
                match &m.lifecycle {
                    crate::aws::Lifecycle::InService => "InService",
                    crate::aws::Lifecycle::Other(s) => s.as_str(),
                },
                m.health,
                if m.protected_from_scale_in {
                    ", protected from scale-in"
                } else {
                    ""
                }
            );
        }
    }
    let member_of: BTreeMap<String, String> = groups
        .iter()
        .flat_map(|(g, rows)| rows.keys().map(move |i| (i.clone(), g.clone())))
        .collect();
    for i in instances_json(app)["instances"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let id = text(&i["instance"]);
        let group = i["labels"]["asg"]
            .as_str()
            .map(str::to_string)
            .or_else(|| member_of.get(&id).cloned())
            .unwrap_or_else(|| "(no group)".to_string());
        let r = groups.entry(group).or_default().entry(id).or_default();
        if r.az.is_empty() {
            r.az = text(&i["labels"]["az"]);
        }
        r.agent = text(&i["health"]);
        r.last_push = text(&i["lastPush"]);
    }
    h.push_str("<h2>Fleet</h2>");
    for (g, rows) in &groups {
        let mut by_az: BTreeMap<&str, Vec<(&String, &Row)>> = BTreeMap::new();
        for (id, r) in rows {
            by_az.entry(r.az.as_str()).or_default().push((id, r));
        }
        let zones: Vec<String> = by_az
            .iter()
            .map(|(az, rs)| {
                let sick = rs.iter().filter(|(_, r)| r.agent == "unhealthy").count();
                format!(
                    "{}: {} instance{}{}",
                    if az.is_empty() { "AZ unknown" } else { az },
                    rs.len(),
                    if rs.len() == 1 { "" } else { "s" },
                    if sick > 0 {
                        format!(", {sick} unhealthy")
                    } else {
                        String::new()
                    }
                )
            })
            .collect();
        h.push_str(&format!(
            "<h3>{}</h3><p>{}</p><table class=fleet data-asg=\"{}\"><tr><th>AZ<th>instance<th>agent<th>AWS<th>last push",
            esc(g),
            esc(&zones.join("; ")),
            esc(g)
        ));
        for (az, rs) in &by_az {
            for (id, r) in rs {
                h.push_str(&format!(
                    "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
                    esc(&r.agent.replace(' ', "-")),
                    esc(az),
                    esc(id),
                    esc(&r.agent),
                    esc(&r.aws),
                    esc(&r.last_push)
                ));
            }
        }
        h.push_str("</table>");
    }
}

/// Alerts: firing ones (Vigil's own fail-open pages too) with what suppresses each, then pending
/// ones; each with a silence switch, and a pause switch for the group or replacement policy it
/// names.
fn alerts(app: &Api, h: &mut String) {
    let rules = app.rules.current();
    let groups: BTreeSet<&str> = rules.scaling_by_asg().into_keys().collect();
    let policies: BTreeSet<&str> = rules.replace().map(|p| p.name.as_str()).collect();
    let mut rows: Vec<(Json, &str, String, Vec<String>)> = Vec::new();
    for (a, _) in app.engine.alerts_v2() {
        let st = &a["status"];
        let by: Vec<String> = ["silencedBy", "inhibitedBy", "mutedBy"]
            .iter()
            .flat_map(|k| st[*k].as_array().cloned().unwrap_or_default())
            .map(|v| text(&v))
            .collect();
        let state = if st["state"] == "suppressed" {
            "firing, suppressed"
        } else {
            "firing"
        };
        let since = text(&a["startsAt"]);
        rows.push((a, state, since, by));
    }
    for a in alerts_json(app)["alerts"].as_array().into_iter().flatten() {
        if a["state"] == "pending" {
            rows.push((a.clone(), "pending", text(&a["activeAt"]), Vec::new()));
        }
    }
    h.push_str(&format!(
        "<h2>Alerts</h2><p>{} firing, {} pending.</p><table><tr><th>alert<th>state<th>since<th>summary<th>suppressed by<th>",
        rows.iter().filter(|r| r.1 != "pending").count(),
        rows.iter().filter(|r| r.1 == "pending").count()
    ));
    for (a, state, since, by) in &rows {
        let labels = a["labels"].as_object().cloned().unwrap_or_default();
        let l = vigil_wire::Labels::from_pairs(
            labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or(""))),
        );
        let summary = [
            &a["annotations"]["summary"],
            &a["annotations"]["description"],
        ]
        .into_iter()
        .find(|v| v.is_string())
        .map_or(String::new(), text);
        let mut switches = button(
            "silence",
            &[("labels", &a["labels"].to_string())],
            "Silence",
        );
        if let Some(g) = l.get("asg").filter(|g| groups.contains(g)) {
            switches.push_str(&button(
                "pause",
                &[("kind", "scaling"), ("name", g)],
                "Pause its scaling",
            ));
        }
        if let Some(p) = l.get("policy").filter(|p| policies.contains(p)) {
            switches.push_str(&button(
                "pause",
                &[("kind", "replace"), ("name", p)],
                "Pause its replacement",
            ));
        }
        h.push_str(&format!(
            "<tr><td>{}<td>{}<td>{}<td>{}<td>{}<td>{switches}",
            esc(&l.to_string()),
            esc(state),
            esc(since),
            esc(&summary),
            esc(&by.join(", ")),
        ));
    }
    h.push_str("</table>");
}

/// Silences in force or to come, each with its expiry switch.
fn silences(app: &Api, h: &mut String) {
    let rows: Vec<[String; 5]> = app.engine.read_silences(|s, now| {
        s.list(now)
            .into_iter()
            .filter(|x| x.state(now) != "expired")
            .map(|x| {
                [
                    x.id.clone(),
                    x.matchers_text(),
                    format!(
                        "{} {}–{}",
                        x.state(now),
                        format_timestamp_ms(x.starts_at),
                        format_timestamp_ms(x.ends_at)
                    ),
                    x.created_by.clone(),
                    x.comment.clone(),
                ]
            })
            .collect()
    });
    h.push_str(&format!(
        "<h2>Silences</h2><p>{} in force or to come; <code>amtool --alertmanager.url=… silence add|query|expire</code> sets, lists and ends them too.</p><table><tr><th>id<th>matchers<th>when<th>by<th>comment<th>",
        rows.len()
    ));
    for [id, m, when, by, comment] in &rows {
        h.push_str(&format!(
            "<tr><td>{}<td>{}<td>{}<td>{}<td>{}<td>{}",
            esc(id),
            esc(m),
            esc(when),
            esc(by),
            esc(comment),
            button("expire", &[("id", id)], "Expire")
        ));
    }
    h.push_str("</table>");
}

/// Every rule's health, as `/api/v1/rules` gives it.
fn rule_health(app: &Api, h: &mut String) {
    h.push_str("<h2>Rule health</h2><table class=rules><tr><th>group</th><th>rule</th><th>health</th><th>last evaluation</th><th>took</th><th>last error</th></tr>");
    for g in rules_json(app)["groups"].as_array().into_iter().flatten() {
        for r in g["rules"].as_array().into_iter().flatten() {
            h.push_str(&format!(
                "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} ms</td><td>{}</td></tr>",
                esc(&text(&r["health"])),
                esc(&text(&g["name"])),
                esc(&text(&r["name"])),
                esc(&text(&r["health"])),
                esc(&text(&r["lastEvaluation"])),
                vigil_rules::gofmt::g(r["evaluationTime"].as_f64().unwrap_or(0.0) * 1000.0, 3),
                esc(&text(&r["lastError"]))
            ));
        }
    }
    h.push_str("</table>");
}
