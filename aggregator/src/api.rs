//! The HTTP API: Prometheus's query endpoints in its JSON envelope (so Grafana, promtool and
//! client libraries work against the aggregator), Vigil's own `/api/v1/scaling` and
//! `/api/v1/instances`, self-metrics, health, reload, and a plain status page.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value as Json};
use vigil_rules::duration::{format_timestamp_ms, parse_ms, parse_timestamp_ms};
use vigil_rules::evaluator::alert_key;
use vigil_rules::gofmt::shortest_g;
use vigil_rules::promql::{self, EvalError, Value};
use vigil_rules::rulefile::Rule;
use vigil_wire::Labels;

use crate::app::App;
use crate::engine::now_ms;
use crate::ingest;

type Resp = Response<Full<Bytes>>;

fn respond(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = ctype.parse() {
        r.headers_mut().insert("content-type", v);
    }
    r
}

fn json_ok(data: Json) -> Resp {
    respond(
        StatusCode::OK,
        "application/json",
        json!({"status": "success", "data": data}).to_string(),
    )
}

fn json_err(status: StatusCode, kind: &str, msg: &str) -> Resp {
    respond(
        status,
        "application/json",
        json!({"status": "error", "errorType": kind, "error": msg}).to_string(),
    )
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len()
                && b[i + 1].is_ascii_hexdigit()
                && b[i + 2].is_ascii_hexdigit() =>
            {
                let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                out.push(hex(b[i + 1]) * 16 + hex(b[i + 2]));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Query-string and form parameters; repeated keys (`match[]`) keep every value.
fn params(query: Option<&str>, body: Option<&[u8]>) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    let mut add = |s: &str| {
        for pair in s.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            m.entry(pct_decode(k)).or_default().push(pct_decode(v));
        }
    };
    if let Some(q) = query {
        add(q);
    }
    if let Some(b) = body {
        add(&String::from_utf8_lossy(b));
    }
    m
}

fn one<'a>(p: &'a HashMap<String, Vec<String>>, k: &str) -> Option<&'a str> {
    p.get(k).and_then(|v| v.last()).map(String::as_str)
}

fn time_param(p: &HashMap<String, Vec<String>>, k: &str, default: i64) -> Result<i64, String> {
    match one(p, k) {
        None | Some("") => Ok(default),
        Some(v) => parse_timestamp_ms(v).map_err(|e| format!("invalid parameter \"{k}\": {e}")),
    }
}

fn labels_json(l: &Labels) -> Json {
    Json::Object(
        l.iter()
            .map(|x| (x.name.to_string(), json!(x.value)))
            .collect(),
    )
}

fn point(t: i64, v: f64) -> Json {
    json!([t as f64 / 1000.0, shortest_g(v)])
}

fn value_json(v: &Value, t: i64) -> Json {
    match v {
        Value::Scalar(f) => json!({"resultType": "scalar", "result": point(t, *f)}),
        Value::String(s) => json!({"resultType": "string", "result": [t as f64 / 1000.0, s]}),
        Value::Vector(v) => {
            json!({"resultType": "vector", "result": v.iter().map(|s| json!({"metric": labels_json(&s.labels), "value": point(t, s.f)})).collect::<Vec<_>>()})
        }
        Value::Matrix(m) => {
            json!({"resultType": "matrix", "result": m.iter().map(|s| json!({"metric": labels_json(&s.labels), "values": s.points.iter().map(|p| point(p.timestamp_ms, p.value)).collect::<Vec<_>>()})).collect::<Vec<_>>()})
        }
    }
}

/// Prometheus's answer to a query past `[query] timeout`.
fn timeout_err(msg: &str) -> Resp {
    json_err(StatusCode::SERVICE_UNAVAILABLE, "timeout", msg)
}

fn eval_error(e: EvalError) -> Resp {
    match &e {
        EvalError::BadData(m) => json_err(StatusCode::BAD_REQUEST, "bad_data", m),
        EvalError::Unsupported(m) => json_err(
            StatusCode::UNPROCESSABLE_ENTITY,
            "execution",
            &format!("unsupported: {m}"),
        ),
        EvalError::Execution(m) => json_err(StatusCode::UNPROCESSABLE_ENTITY, "execution", m),
        EvalError::Timeout(_) => timeout_err(&e.to_string()),
    }
}

fn query(app: &App, p: &HashMap<String, Vec<String>>, deadline: Instant) -> Resp {
    let Some(q) = one(p, "query") else {
        return json_err(
            StatusCode::BAD_REQUEST,
            "bad_data",
            "missing parameter \"query\"",
        );
    };
    let t = match time_param(p, "time", now_ms()) {
        Ok(t) => t,
        Err(e) => return json_err(StatusCode::BAD_REQUEST, "bad_data", &e),
    };
    let parsed = match promql::parse(q) {
        Ok(x) => x,
        Err(e) => return json_err(StatusCode::BAD_REQUEST, "bad_data", &e.to_string()),
    };
    match app
        .query_engine
        .instant_until(&app.store, &parsed, t, Some(deadline))
    {
        Ok(r) => {
            let mut body = json!({"status": "success", "data": value_json(&r.value, t)});
            let warnings: Vec<&str> = r.annotations.iter().map(|a| a.message.as_str()).collect();
            if !warnings.is_empty() {
                body["warnings"] = json!(warnings);
            }
            respond(StatusCode::OK, "application/json", body.to_string())
        }
        Err(e) => eval_error(e),
    }
}

fn step_param(v: &str) -> Result<i64, String> {
    match v.parse::<f64>() {
        Ok(s) if s > 0.0 && s.is_finite() => Ok((s * 1000.0).round() as i64),
        Ok(_) => Err("zero or negative query resolution step widths are not accepted. Try a positive integer".into()),
        Err(_) => parse_ms(v),
    }
}

fn query_range(app: &App, p: &HashMap<String, Vec<String>>, deadline: Instant) -> Resp {
    let Some(q) = one(p, "query") else {
        return json_err(
            StatusCode::BAD_REQUEST,
            "bad_data",
            "missing parameter \"query\"",
        );
    };
    let (start, end) = match (
        time_param(p, "start", i64::MIN),
        time_param(p, "end", i64::MIN),
    ) {
        (Ok(s), Ok(e)) if s != i64::MIN && e != i64::MIN => (s, e),
        (Err(e), _) | (_, Err(e)) => return json_err(StatusCode::BAD_REQUEST, "bad_data", &e),
        _ => {
            return json_err(
                StatusCode::BAD_REQUEST,
                "bad_data",
                "start and end are required",
            )
        }
    };
    let step = match one(p, "step").map(step_param) {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            return json_err(
                StatusCode::BAD_REQUEST,
                "bad_data",
                &format!("invalid parameter \"step\": {e}"),
            )
        }
        None => {
            return json_err(
                StatusCode::BAD_REQUEST,
                "bad_data",
                "missing parameter \"step\"",
            )
        }
    };
    let parsed = match promql::parse(q) {
        Ok(x) => x,
        Err(e) => return json_err(StatusCode::BAD_REQUEST, "bad_data", &e.to_string()),
    };
    match app
        .query_engine
        .range_until(&app.store, &parsed, start, end, step, Some(deadline))
    {
        Ok(r) => json_ok(value_json(&r.value, end)),
        Err(e) => eval_error(e),
    }
}

/// The series the `match[]` selectors name between `start` and `end` (default: the window);
/// `None` without any `match[]`; the error is a `bad_data` message.
fn matched(app: &App, p: &HashMap<String, Vec<String>>) -> Result<Option<Vec<Labels>>, String> {
    let Some(ms) = p.get("match[]").filter(|m| !m.is_empty()) else {
        return Ok(None);
    };
    let now = now_ms();
    let (start, end) = match (
        time_param(p, "start", now - app.cfg.retention_ms),
        time_param(p, "end", now),
    ) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(e), _) | (_, Err(e)) => return Err(e),
    };
    let mut out: std::collections::BTreeSet<Labels> = Default::default();
    for m in ms {
        let q = promql::parse(m).map_err(|e| e.to_string())?;
        let promql::plan::Node::Selector(sel) = q.plan() else {
            return Err(format!("match[] must be a series selector, got {m:?}"));
        };
        out.extend(app.store.series(&sel.matchers, start, end));
    }
    Ok(Some(out.into_iter().collect()))
}

fn series(app: &App, p: &HashMap<String, Vec<String>>) -> Resp {
    match matched(app, p) {
        Ok(Some(out)) => json_ok(json!(out.iter().map(labels_json).collect::<Vec<_>>())),
        Ok(None) => json_err(
            StatusCode::BAD_REQUEST,
            "bad_data",
            "no match[] parameter provided",
        ),
        Err(e) => json_err(StatusCode::BAD_REQUEST, "bad_data", &e),
    }
}

/// `/api/v1/labels` (`name` None) and `/api/v1/label/<name>/values`: from the index, or from
/// the series `match[]` names when it is given.
fn labels(app: &App, p: &HashMap<String, Vec<String>>, name: Option<&str>) -> Resp {
    match matched(app, p) {
        Ok(None) => json_ok(json!(app.store.label_values(name))),
        Ok(Some(series)) => {
            let mut out: std::collections::BTreeSet<&str> = Default::default();
            for l in &series {
                match name {
                    None => out.extend(l.iter().map(|x| x.name)),
                    Some(n) => out.extend(l.get(n)),
                }
            }
            json_ok(json!(out))
        }
        Err(e) => json_err(StatusCode::BAD_REQUEST, "bad_data", &e),
    }
}

fn rules_json(app: &App) -> Json {
    let rules = app.rules();
    let view = app.view.load();
    let mut groups = Vec::new();
    for g in rules.groups() {
        let mut rs = Vec::new();
        for r in &g.rules {
            match r {
                Rule::Record(rec) => rs.push(json!({"type": "recording", "name": rec.record, "query": rec.expr.text(), "health": "ok"})),
                Rule::Alert(a) => {
                    let st = view.alerts.get(&alert_key(g, a));
                    let alerts: Vec<Json> = st.map(|s| s.iter().map(alert_json).collect()).unwrap_or_default();
                    let state = st.map_or("inactive", |s| {
                        if s.iter().any(|x| x.state == vigil_rules::alerting::AlertState::Firing) {
                            "firing"
                        } else if s.iter().any(|x| x.state == vigil_rules::alerting::AlertState::Pending) {
                            "pending"
                        } else {
                            "inactive"
                        }
                    });
                    rs.push(json!({"type": "alerting", "name": a.alert, "query": a.expr.text(), "duration": a.for_ms as f64 / 1000.0,
                        "keepFiringFor": a.keep_firing_for_ms as f64 / 1000.0, "state": state, "alerts": alerts, "health": "ok"}));
                }
            }
        }
        groups.push(json!({"name": g.name, "file": g.file, "interval": g.interval_ms.unwrap_or(rules.default_interval_ms) as f64 / 1000.0, "rules": rs}));
    }
    json!({"groups": groups})
}

fn alert_json(a: &vigil_rules::alerting::Alert) -> Json {
    json!({"labels": labels_json(&a.labels), "annotations": a.annotations, "state": a.state.as_str(),
        "activeAt": format_timestamp_ms(a.active_at), "value": shortest_g(a.value)})
}

fn alerts_json(app: &App) -> Json {
    let view = app.view.load();
    let mut v: Vec<&vigil_rules::alerting::Alert> = view.alerts.values().flatten().collect();
    v.sort_by(|a, b| a.labels.cmp(&b.labels));
    json!({"alerts": v.into_iter().map(alert_json).collect::<Vec<_>>()})
}

fn scaling_json(app: &App) -> Json {
    let rules = app.rules();
    let view = app.view.load();
    let mut out = Vec::new();
    for (asg, ps) in rules.scaling_by_asg() {
        for p in ps {
            let last: Vec<Json> = view
                .decisions
                .iter()
                .rev()
                .filter(|d| d.asg == asg)
                .take(10)
                .map(|d| json!({"time": format_timestamp_ms(d.at), "from": d.current, "to": d.desired, "by": d.by, "held": d.held,
                    "inputs": d.inputs.iter().map(|i| json!({"policy": i.policy, "value": i.value.map(shortest_g), "recommended": i.recommended, "reason": i.reason})).collect::<Vec<_>>()}))
                .collect();
            let decided = view.capacity.get(asg).copied();
            let group = app.actions.group(asg);
            let simulated = app.actions.simulated(asg);
            let current = match &group {
                Some(g) if !simulated => Some(g.desired),
                _ => decided,
            };
            let desired = app.actions.pending(asg).or(decided);
            out.push(json!({"policy": p.name, "group": asg, "min": p.min, "max": p.max, "current": current,
                "desired": desired, "dry_run": app.cfg.dry_run, "simulated": simulated, "last_decisions": last,
                "fleet": app.actions.group_json(asg)}));
        }
    }
    json!({"policies": out})
}

fn instances_json(app: &App) -> Json {
    let health = app.engine.instant(
        &app.store,
        &match promql::parse("min by (instance) (vigil_health_up)") {
            Ok(q) => q,
            Err(_) => return json!([]),
        },
        now_ms(),
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
    let now = now_ms();
    json!({"instances": app.store.instances().into_iter().map(|(i, l, last)| {
        let health = match h.get(&i) { Some(v) if *v >= 1.0 => "healthy", Some(_) => "unhealthy", None => "unknown" };
        json!({"instance": i, "labels": labels_json(&l), "lastPush": format_timestamp_ms(last), "secondsSinceLastPush": (now - last) as f64 / 1000.0, "health": health})
    }).collect::<Vec<_>>()})
}

fn status_page(app: &App) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut html = String::from("<!doctype html><meta charset=utf-8><title>Vigil</title><style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:left}</style><h1>Vigil aggregator</h1>");
    html.push_str(&format!(
        "<p>{} series, {} samples in the window; dry run: {}</p>",
        app.store.series_count(),
        app.store.sample_count(),
        app.cfg.dry_run
    ));
    if let Some(e) = app
        .last_reload_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
    {
        html.push_str(&format!(
            "<p style=color:#b00>Last reload failed (previous rules still running):<pre>{}</pre>",
            esc(e)
        ));
    }
    html.push_str("<h2>Fleet</h2><table><tr><th>instance<th>labels<th>last push<th>health");
    if let Json::Array(items) = &instances_json(app)["instances"] {
        for i in items {
            html.push_str(&format!(
                "<tr><td>{}<td>{}<td>{}<td>{}",
                esc(i["instance"].as_str().unwrap_or("")),
                esc(&i["labels"].to_string()),
                esc(i["lastPush"].as_str().unwrap_or("")),
                esc(i["health"].as_str().unwrap_or(""))
            ));
        }
    }
    html.push_str("</table><h2>Auto Scaling groups</h2><table><tr><th>group<th>policy<th>AWS desired (min–max, in service)<th>pending<th>last call");
    if let Json::Array(items) = &scaling_json(app)["policies"] {
        for p in items {
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
                    f["last_applied"]["time"].as_str().unwrap_or(""),
                    f["last_applied"]["desired"],
                    f["last_applied"]["result"].as_str().unwrap_or("")
                )
            };
            html.push_str(&format!(
                "<tr><td>{}<td>{}<td>{}<td>{}<td>{}",
                esc(p["group"].as_str().unwrap_or("")),
                esc(p["policy"].as_str().unwrap_or("")),
                esc(&aws),
                esc(&f["pending"].to_string()),
                esc(&last)
            ));
        }
    }
    html.push_str(&format!(
        "</table><p>Notifications waiting in the outbox: {}</p>",
        app.metrics.outbox.get()
    ));
    html.push_str("<h2>Alerts</h2><table><tr><th>labels<th>state<th>since");
    if let Json::Array(items) = &alerts_json(app)["alerts"] {
        for a in items {
            html.push_str(&format!(
                "<tr><td>{}<td>{}<td>{}",
                esc(&a["labels"].to_string()),
                esc(a["state"].as_str().unwrap_or("")),
                esc(a["activeAt"].as_str().unwrap_or(""))
            ));
        }
    }
    html.push_str("</table><h2>Last decisions</h2><pre>");
    for l in app.view.load().log.iter().rev().take(50) {
        html.push_str(&esc(l));
        html.push('\n');
    }
    html.push_str("</pre>");
    html
}

async fn route(app: Arc<App>, req: Request<hyper::body::Incoming>) -> Resp {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query_s = parts.uri.query().map(str::to_string);
    let auth = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // The token is checked before a body is read: an unauthenticated sender cannot make the
    // aggregator buffer 32 MiB.
    if matches!(path.as_str(), "/api/v1/write" | "/-/reload")
        && !ingest::authorized(&app, auth.as_deref())
    {
        if path == "/api/v1/write" {
            app.metrics
                .write_requests
                .get_or_create(&vec![("code".into(), "401".into())])
                .inc();
        }
        return respond(
            StatusCode::UNAUTHORIZED,
            "text/plain",
            "missing or wrong bearer token\n",
        );
    }
    // Bodies are bounded before they are read.
    let limit = if path == "/api/v1/write" {
        app.cfg.max_body_bytes
    } else {
        1 << 20
    };
    let body = match Limited::new(body, limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return respond(
                StatusCode::PAYLOAD_TOO_LARGE,
                "text/plain",
                format!("request body larger than {limit} bytes\n"),
            )
        }
    };
    let form = (parts.method == Method::POST).then_some(&body[..]);
    let p = || params(query_s.as_deref(), form);
    match (&parts.method, path.as_str()) {
        (&Method::POST, "/api/v1/write") => {
            let (status, msg) = ingest::write(&app, auth.as_deref(), &body);
            let mut r = respond(status, "text/plain", msg);
            if status == StatusCode::TOO_MANY_REQUESTS {
                r.headers_mut()
                    .insert("retry-after", hyper::header::HeaderValue::from_static("30"));
            }
            r
        }
        // Queries are CPU work: off the async workers that accept and ingest, at most
        // `[query] max_concurrency` at once (rule evaluation has its own thread and never waits
        // for a slot), within `[query] timeout` counted from the request's arrival.
        (
            &Method::GET | &Method::POST,
            "/api/v1/query" | "/api/v1/query_range" | "/api/v1/series",
        ) => {
            let params = p();
            let deadline = Instant::now() + Duration::from_millis(app.cfg.query_timeout_ms as u64);
            let slot = match tokio::time::timeout_at(
                deadline.into(),
                app.query_slots.clone().acquire_owned(),
            )
            .await
            {
                Ok(Ok(slot)) => slot,
                Ok(Err(_)) => {
                    return respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "stopping\n")
                }
                Err(_) => return timeout_err("query timed out in queue"),
            };
            let path2 = path.clone();
            let work = blocking(app.clone(), move |app| {
                let _slot = slot;
                match path2.as_str() {
                    "/api/v1/query" => query(app, &params, deadline),
                    "/api/v1/query_range" => query_range(app, &params, deadline),
                    _ => series(app, &params),
                }
            });
            // The engine checks the deadline as it goes; this answers in time when one step runs long.
            tokio::time::timeout_at((deadline + Duration::from_millis(100)).into(), work)
                .await
                .unwrap_or_else(|_| timeout_err("query timed out in expression evaluation"))
        }
        (&Method::GET | &Method::POST, "/api/v1/labels") => {
            let params = p();
            blocking(app, move |app| labels(app, &params, None)).await
        }
        (&Method::GET | &Method::POST, p2)
            if label_values_path(p2).is_some_and(|n| !n.is_empty()) =>
        {
            let name = pct_decode(label_values_path(p2).unwrap_or(""));
            let params = p();
            blocking(app, move |app| labels(app, &params, Some(&name))).await
        }
        (&Method::GET, "/api/v1/rules") => blocking(app, |app| json_ok(rules_json(app))).await,
        (&Method::GET, "/api/v1/alerts") => blocking(app, |app| json_ok(alerts_json(app))).await,
        (&Method::GET, "/api/v1/scaling") => blocking(app, |app| json_ok(scaling_json(app))).await,
        (&Method::GET, "/api/v1/instances") => {
            blocking(app, |app| json_ok(instances_json(app))).await
        }
        (&Method::GET, "/api/v1/decisions") => {
            // Vigil's own: the persisted decision history (alerts, scaling, replacement), newest
            // first; it survives restarts. SQLite, so off the async workers.
            blocking(app, |app| match app.db().recent(200) {
                Ok(v) => json_ok(json!(v
                    .into_iter()
                    .map(|(_, _, body)| body)
                    .collect::<Vec<_>>())),
                Err(e) => json_err(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    &e.to_string(),
                ),
            })
            .await
        }
        (&Method::GET, "/api/v1/status/buildinfo") => json_ok(
            json!({"version": env!("CARGO_PKG_VERSION"), "application": "vigil-aggregator"}),
        ),
        (&Method::GET, "/metrics") => {
            let mut s = String::new();
            let _ = prometheus_client::encoding::text::encode(&mut s, &app.registry);
            respond(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                s,
            )
        }
        (&Method::GET, "/-/healthy") => {
            respond(StatusCode::OK, "text/plain", "Vigil is Healthy.\n")
        }
        (&Method::GET, "/-/ready") => {
            if app.ready.load(Ordering::SeqCst) {
                respond(StatusCode::OK, "text/plain", "Vigil is Ready.\n")
            } else {
                respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "starting\n")
            }
        }
        (&Method::POST | &Method::PUT, "/-/reload") => {
            // The token was checked above, with the write endpoint's.
            let app2 = app.clone();
            match tokio::task::spawn_blocking(move || app2.reload()).await {
                Ok(Ok(n)) => respond(
                    StatusCode::OK,
                    "text/plain",
                    format!("reloaded {n} rules\n"),
                ),
                Ok(Err(e)) => respond(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    format!("reload failed; the previous rules keep running:\n{e}\n"),
                ),
                Err(e) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("{e}\n"),
                ),
            }
        }
        (&Method::GET, "/") => {
            blocking(app, |app| {
                respond(StatusCode::OK, "text/html; charset=utf-8", status_page(app))
            })
            .await
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// Runs a handler that reads the store, runs PromQL or waits for SQLite on the blocking pool,
/// so the async workers stay free for ingest and health checks.
async fn blocking(app: Arc<App>, f: impl FnOnce(&App) -> Resp + Send + 'static) -> Resp {
    tokio::task::spawn_blocking(move || f(&app))
        .await
        .unwrap_or_else(|e| {
            json_err(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &e.to_string(),
            )
        })
}

/// The label name of a `/api/v1/label/<name>/values` path.
fn label_values_path(p: &str) -> Option<&str> {
    p.strip_prefix("/api/v1/label/")?.strip_suffix("/values")
}

/// Serves the API until the process ends.
pub async fn serve(app: Arc<App>, listener: tokio::net::TcpListener) {
    vigil_config::http::serve(listener, move |req| route(app.clone(), req)).await
}
