//! The HTTP API: Prometheus's query endpoints in its JSON envelope (so Grafana, promtool and
//! client libraries work against the aggregator), Vigil's own `/api/v1/scaling` and
//! `/api/v1/instances`, self-metrics, health, reload, and a plain status page.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value as Json};
use vigil_rules::promql;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::engine::{Engine, View};
use crate::fleet::Fleet;
use crate::notify::Outbox;
use crate::ruleset::Rules;
use crate::state;
use crate::store::Store;

mod pool;
mod query;
mod views;
pub mod write;

pub use pool::{QueryPool, QUERY_NICE};

use query::{labels, params, pct_decode, query, query_range, series, timeout_err};
use views::{alerts_json, instances_json, rules_json, scaling_json, status_page};

/// What the API is handed: the components it reads, and the admin actions it may take.
pub struct Api {
    pub cfg: Config,
    pub clock: SharedClock,
    pub store: Arc<Store>,
    pub rules: Arc<Rules>,
    pub engine: Arc<Engine>,
    /// The evaluation as readers see it (see [`View`]).
    pub view: Arc<arc_swap::ArcSwap<View>>,
    pub fleet: Arc<Fleet>,
    pub outbox: Arc<Outbox>,
    pub db: state::Shared,
    pub write: write::Ingest,
    /// The engine API queries run on: `[query] max_samples`.
    pub query_engine: promql::Engine,
    /// API queries running at once (`[query] max_concurrency`).
    pub query_slots: Arc<tokio::sync::Semaphore>,
    /// The threads they run on, at a lower CPU priority.
    pub query_pool: pool::QueryPool,
    pub registry: prometheus_client::registry::Registry,
    pub ready: std::sync::atomic::AtomicBool,
}

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

async fn route(app: Arc<Api>, req: Request<hyper::body::Incoming>) -> Resp {
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
        && !app.write.authorized(auth.as_deref())
    {
        if path == "/api/v1/write" {
            app.write.count(StatusCode::UNAUTHORIZED);
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
            let (status, msg) = app.write.write(auth.as_deref(), &body);
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
            let a = app.clone();
            // On the query threads, below ingest's and evaluation's CPU priority (`pool.rs`).
            let work = app.query_pool.run(move || {
                let _slot = slot;
                match path2.as_str() {
                    "/api/v1/query" => query(&a, &params, deadline),
                    "/api/v1/query_range" => query_range(&a, &params, deadline),
                    _ => series(&a, &params),
                }
            });
            let work = async {
                work.await.unwrap_or_else(|e| {
                    json_err(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        &e.to_string(),
                    )
                })
            };
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
            blocking(app, |app| match app.db.lock().recent(200) {
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
            match tokio::task::spawn_blocking(move || app2.rules.reload()).await {
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
async fn blocking(app: Arc<Api>, f: impl FnOnce(&Api) -> Resp + Send + 'static) -> Resp {
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
pub async fn serve(app: Arc<Api>, listener: tokio::net::TcpListener) {
    vigil_config::http::serve(listener, move |req| route(app.clone(), req)).await
}
