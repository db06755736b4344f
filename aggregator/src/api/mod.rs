//! The HTTP API: Prometheus's query endpoints in its JSON envelope (so Grafana, promtool and
//! client libraries work against the aggregator), Vigil's own `/api/v1/scaling` and
//! `/api/v1/instances`, self-metrics, health, reload, and a plain status page.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use serde_json::{json, Value as Json};
use tower_http::trace::{DefaultMakeSpan, DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::Level;
use vigil_rules::promql;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::engine::{Engine, View};
use crate::fleet::Fleet;
use crate::notify::Outbox;
use crate::ruleset::Rules;
use crate::state;
use crate::store::Store;

pub mod auth;
mod console;
mod forward;
mod passthrough;
mod pause;
mod pool;
mod query;
mod serve;
mod silences;
pub mod tls;
mod views;
pub mod write;

pub use pool::{QueryPool, QUERY_NICE};
pub use serve::{serve, Limits};

use query::{labels, params, query, query_range, series, timeout_err};
use views::{alerts_json, instances_json, rules_json, scaling_json, status_v2_json};

/// What the API is handed: the components it reads, and the admin actions it may take.
pub struct Api {
    pub cfg: Config,
    pub clock: SharedClock,
    pub store: Arc<Store>,
    /// `[storage] backend = "remote"`: the engine the data routes pass through to.
    pub remote: Option<Arc<crate::remote::Remote>>,
    pub rules: Arc<Rules>,
    pub engine: Arc<Engine>,
    /// The evaluation as readers see it (see [`View`]).
    pub view: Arc<arc_swap::ArcSwap<View>>,
    pub fleet: Arc<Fleet>,
    pub cluster: Arc<crate::cluster::Cluster>,
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
    /// Admin writes a follower passes on to the holder.
    pub http: vigil_config::http::Http,
    /// The writers', admins' and readers' tokens.
    pub tokens: auth::Tokens,
    pub ready: std::sync::atomic::AtomicBool,
    /// Connections refused by `[server] max_connections_per_ip` (the server counts them).
    pub connections_refused: prometheus_client::metrics::counter::Counter,
    /// TLS handshakes that failed (the server counts them).
    pub tls_handshake_failures: prometheus_client::metrics::counter::Counter,
    /// The configuration file as loaded, its secrets replaced (`GET /api/v2/status`).
    pub config_shown: String,
    /// When the process started (Unix ms).
    pub started_ms: i64,
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

/// Bodies of requests other than remote-write (query forms, reloads).
const FORM_LIMIT: usize = 1 << 20;

/// The routes. Answers and envelopes are Prometheus's; a wrong method on a known path is 405,
/// an unknown path 404. Each class of route has its guard (`auth.rs`), checked before a body is
/// read, so an unauthenticated sender cannot make the aggregator buffer 32 MiB: writers
/// (`auth_token_file`, and a client certificate under mTLS), admin writes (`admin_token_file`,
/// audited), readers (`query_token_file`); `/-/healthy` and `/-/ready` are open.
pub fn router(api: Arc<Api>) -> Router {
    let write_routes = Router::new()
        .route(
            "/api/v1/write",
            // The limit is the handler's own (`write::read_body`): it drains what is over it.
            post(write).layer(DefaultBodyLimit::disable()),
        )
        .route_layer(middleware::from_fn_with_state(api.clone(), guard_write));
    let admin_routes = Router::new()
        .route("/-/reload", post(reload).put(reload))
        .route_layer(middleware::from_fn_with_state(api.clone(), guard_admin));
    let query_routes = passthrough::data_routes(&api)
        .route("/api/v1/rules", get(read(|a| json_ok(rules_json(a)))))
        .route("/api/v1/alerts", get(read(|a| json_ok(alerts_json(a)))))
        .route("/api/v1/scaling", get(read(|a| json_ok(scaling_json(a)))))
        .route(
            "/api/v1/instances",
            get(read(|a| json_ok(instances_json(a)))),
        )
        .route("/api/v1/decisions", get(read(views::decisions)))
        .route(
            "/api/v1/cluster",
            get(read(|a| json_ok(a.cluster.status()))),
        )
        .route("/api/v1/status/buildinfo", get(buildinfo))
        // Alertmanager's own shape, without Prometheus's envelope.
        .route(
            "/api/v2/status",
            get(read(|a| {
                respond(
                    StatusCode::OK,
                    "application/json",
                    status_v2_json(a).to_string(),
                )
            })),
        )
        .route("/metrics", get(metrics))
        .route(
            "/",
            get(read(|a| {
                console::response("text/html; charset=utf-8", console::page(a))
            })),
        )
        .route(
            "/console/console.js",
            get(|| async { console::response("text/javascript; charset=utf-8", console::JS) }),
        )
        .route(
            "/console/console.css",
            get(|| async { console::response("text/css; charset=utf-8", console::CSS) }),
        )
        .route(
            "/console/console.svg",
            get(|| async { console::response("image/svg+xml", console::ICON) }),
        )
        .route_layer(middleware::from_fn_with_state(api.clone(), guard_query));
    Router::new()
        .route("/-/healthy", get(healthy))
        .route("/-/ready", get(ready))
        .merge(query_routes)
        .merge(write_routes)
        .merge(admin_routes)
        .merge(silences::routes(&api))
        .merge(pause::routes(&api))
        .fallback(|| async { respond(StatusCode::NOT_FOUND, "text/plain", "not found\n") })
        .layer(middleware::from_fn(tls::close_if_stale))
        .layer(DefaultBodyLimit::max(FORM_LIMIT))
        // One span per request at debug level (`RUST_LOG=tower_http=debug`); 5xx answers at warn.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::DEBUG))
                .on_response(DefaultOnResponse::new().level(Level::DEBUG))
                .on_failure(DefaultOnFailure::new().level(Level::WARN)),
        )
        .with_state(api)
}

fn authorization(req: &Request) -> Option<&str> {
    req.headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

fn unauthorized(what: &str) -> axum::response::Response {
    respond(
        StatusCode::UNAUTHORIZED,
        "text/plain",
        format!("missing or wrong {what}\n"),
    )
    .into_response()
}

/// Writers: a client certificate under mTLS (a bad one failed the handshake), then the token.
async fn guard_write(
    State(api): State<Arc<Api>>,
    req: Request,
    next: Next,
) -> axum::response::Response {
    if api
        .cfg
        .tls
        .as_ref()
        .is_some_and(|t| t.client_ca_file.is_some())
        && !req
            .extensions()
            .get::<tls::ClientCert>()
            .is_some_and(|c| c.verified)
    {
        api.tokens.refuse(auth::Need::Write, "client_cert");
        api.write.count(StatusCode::FORBIDDEN);
        return respond(
            StatusCode::FORBIDDEN,
            "text/plain",
            "a client certificate signed by server.client_ca_file is required for /api/v1/write\n",
        )
        .into_response();
    }
    if api
        .tokens
        .check(auth::Need::Write, authorization(&req))
        .is_err()
    {
        api.write.count(StatusCode::UNAUTHORIZED);
        return unauthorized("bearer token");
    }
    if api
        .cfg
        .tls
        .as_ref()
        .is_some_and(|t| t.client_ca_file.is_some())
    {
        if let Some(r) = tls::refuse_stale_write(&req) {
            api.write.count(StatusCode::SERVICE_UNAVAILABLE);
            return r;
        }
    }
    next.run(req).await
}

/// Admin writes: the admin token (else the writers'), and an audit line naming the token's key
/// (never the token) and the client.
async fn guard_admin(
    State(api): State<Arc<Api>>,
    req: Request,
    next: Next,
) -> axum::response::Response {
    let client = req
        .extensions()
        .get::<serve::Peer>()
        .map_or_else(|| "unknown".to_string(), |p| p.0.to_string());
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let forwarded_by = req
        .headers()
        .get(forward::FORWARDED_BY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(why) = auth::cross_site(req.headers()) {
        api.tokens.refuse(auth::Need::Admin, "cross_site");
        tracing::warn!(target: "vigil::audit", %method, %path, %client, why, "admin request refused: sent from another site");
        return respond(
            StatusCode::FORBIDDEN,
            "text/plain; charset=utf-8",
            format!("admin writes are not taken from another site's page ({why})\n"),
        )
        .into_response();
    }
    match api.tokens.check(auth::Need::Admin, authorization(&req)) {
        Ok(key) => {
            tracing::info!(target: "vigil::audit", %method, %path, %client, token = key.unwrap_or("none (no token configured)"), forwarded_by = forwarded_by.as_deref().unwrap_or(""), "admin request");
            next.run(req).await
        }
        Err(()) => {
            tracing::warn!(target: "vigil::audit", %method, %path, %client, "admin request refused: missing or wrong token");
            unauthorized("admin token")
        }
    }
}

/// Readers: the query token when one is set; a browser is asked for basic auth (any user name,
/// the token as the password).
async fn guard_query(
    State(api): State<Arc<Api>>,
    req: Request,
    next: Next,
) -> axum::response::Response {
    if api
        .tokens
        .check(auth::Need::Query, authorization(&req))
        .is_ok()
    {
        return next.run(req).await;
    }
    let mut r = unauthorized("query token (bearer, or basic auth's password)");
    r.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        hyper::header::HeaderValue::from_static("Basic realm=\"vigil\", charset=\"UTF-8\""),
    );
    r
}

/// A body read within the route's limit: 413 past it.
struct Body(Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = Resp;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Bytes::from_request(req, state).await {
            Ok(b) => Ok(Body(b)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(respond(
                StatusCode::PAYLOAD_TOO_LARGE,
                "text/plain",
                "request body larger than the limit (server.max_body_size)\n",
            )),
            Err(e) => Err(respond(
                e.status(),
                "text/plain",
                format!("{}\n", e.body_text()),
            )),
        }
    }
}

/// Prometheus's parameters: the query string, and for POST the form body.
struct Params(HashMap<String, Vec<String>>);

impl<S: Send + Sync> FromRequest<S> for Params {
    type Rejection = Resp;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let post = req.method() == Method::POST;
        let query = req.uri().query().map(str::to_string);
        let Body(body) = Body::from_request(req, state).await?;
        Ok(Params(params(query.as_deref(), post.then_some(&body[..]))))
    }
}

async fn write(State(api): State<Arc<Api>>, req: Request) -> Resp {
    let body = match write::read_body(req.into_body(), api.cfg.max_body_bytes).await {
        Ok(b) => b,
        Err((status, msg)) => {
            api.write.count(status);
            return respond(status, "text/plain", msg);
        }
    };
    let (status, msg, limit) = match api.write.slot().await {
        Ok(slot) => {
            // Stored here when the window's lock comes within 2 ms; otherwise on the blocking
            // pool, never by an async worker waiting long for the lock: every task queued behind
            // it on that worker would wait too (measured: health checks and other pushes waited
            // up to 100 ms behind one blocked push).
            let (status, msg) = match api.write.write_or_defer(&body) {
                Ok(answer) => answer,
                Err(prepared) => {
                    let a = api.clone();
                    // The slot goes along: held until stored, even if this handler is dropped.
                    match tokio::task::spawn_blocking(move || {
                        let _slot = slot;
                        a.write.write_deferred(prepared)
                    })
                    .await
                    {
                        Ok(answer) => answer,
                        Err(e) => (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("ingest failed: {e}\n"),
                        ),
                    }
                }
            };
            // Past a limit: which one (the series limit, or the window's log).
            let limit = match status {
                StatusCode::TOO_MANY_REQUESTS => Some("max_series"),
                StatusCode::SERVICE_UNAVAILABLE => Some("wal"),
                _ => None,
            };
            (status, msg, limit)
        }
        Err((status, msg)) => {
            api.write.count(status);
            (status, msg, Some("write_queue"))
        }
    };
    let mut r = respond(status, "text/plain", msg);
    // Past a limit: when to come back, and which limit.
    if let Some(limit) = limit {
        let h = r.headers_mut();
        h.insert("retry-after", hyper::header::HeaderValue::from_static("30"));
        h.insert(
            "x-vigil-limit",
            hyper::header::HeaderValue::from_static(limit),
        );
    }
    r
}

#[derive(Clone, Copy)]
enum Pooled {
    Instant,
    Range,
    Series,
}

async fn instant(State(api): State<Arc<Api>>, Params(p): Params) -> Resp {
    pooled(api, Pooled::Instant, p).await
}

async fn range(State(api): State<Arc<Api>>, Params(p): Params) -> Resp {
    pooled(api, Pooled::Range, p).await
}

async fn series_h(State(api): State<Arc<Api>>, Params(p): Params) -> Resp {
    pooled(api, Pooled::Series, p).await
}

/// Queries are CPU work: off the async workers that accept and ingest, at most
/// `[query] max_concurrency` at once (rule evaluation has its own thread and never waits for a
/// slot), within `[query] timeout` counted from the request's arrival.
async fn pooled(api: Arc<Api>, kind: Pooled, params: HashMap<String, Vec<String>>) -> Resp {
    let deadline = Instant::now() + Duration::from_millis(api.cfg.query_timeout_ms as u64);
    let slot =
        match tokio::time::timeout_at(deadline.into(), api.query_slots.clone().acquire_owned())
            .await
        {
            Ok(Ok(slot)) => slot,
            Ok(Err(_)) => {
                return respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "stopping\n")
            }
            Err(_) => return timeout_err("query timed out in queue"),
        };
    let a = api.clone();
    // On the query threads, below ingest's and evaluation's CPU priority (`pool.rs`).
    let work = api.query_pool.run(move || {
        let _slot = slot;
        match kind {
            Pooled::Instant => query(&a, &params, deadline),
            Pooled::Range => query_range(&a, &params, deadline),
            Pooled::Series => series(&a, &params),
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

async fn label_names(State(api): State<Arc<Api>>, Params(p): Params) -> Resp {
    blocking(api, move |api| labels(api, &p, None)).await
}

async fn label_values(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    Params(p): Params,
) -> Resp {
    blocking(api, move |api| labels(api, &p, Some(&name))).await
}

/// A handler that reads views, the store or SQLite, run on the blocking pool.
fn read(
    f: fn(&Api) -> Resp,
) -> impl Fn(State<Arc<Api>>) -> std::pin::Pin<Box<dyn std::future::Future<Output = Resp> + Send>>
       + Clone
       + Send
       + Sync
       + 'static {
    move |State(api)| Box::pin(blocking(api, f))
}

async fn buildinfo() -> Resp {
    json_ok(json!({"version": env!("CARGO_PKG_VERSION"), "application": "vigil-aggregator"}))
}

async fn metrics(State(api): State<Arc<Api>>) -> Resp {
    let mut s = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut s, &api.registry);
    respond(
        StatusCode::OK,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        s,
    )
}

async fn healthy() -> Resp {
    respond(StatusCode::OK, "text/plain", "Vigil is Healthy.\n")
}

async fn ready(State(api): State<Arc<Api>>) -> Resp {
    if api.ready.load(Ordering::SeqCst) {
        respond(StatusCode::OK, "text/plain", "Vigil is Ready.\n")
    } else {
        respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "starting\n")
    }
}

/// `/-/reload` (the token layer checked the caller): the new rules, or the old ones kept. Every
/// node of a pair evaluates, so each reloads its own files; a follower also passes the reload on
/// to the holder (`forward.rs`), so one reload through a Service reaches the node that acts.
async fn reload(State(api): State<Arc<Api>>, headers: hyper::HeaderMap) -> Resp {
    let rules = api.rules.clone();
    let (status, here) = match tokio::task::spawn_blocking(move || rules.reload()).await {
        Ok(Ok(n)) => (StatusCode::OK, format!("reloaded {n} rules\n")),
        Ok(Err(e)) => (
            StatusCode::BAD_REQUEST,
            format!("reload failed; the previous rules keep running:\n{e}\n"),
        ),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    };
    let Some(leader) =
        forward::to_leader(&api, Method::POST, "/-/reload", &headers, Bytes::new()).await
    else {
        return respond(status, "text/plain", here);
    };
    // Both answers. The holder not reached: 503 whatever happened here (the caller must retry
    // there); else this node's own failure first, else the holder's answer.
    let named = leader
        .headers()
        .get(forward::LEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let combined = if leader.status() == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::OK
    {
        leader.status()
    } else {
        status
    };
    let there =
        String::from_utf8_lossy(&leader.into_body().into_inner().unwrap_or_default()).into_owned();
    let mut r = respond(
        combined,
        "text/plain",
        format!(
            "this node ({}): {here}the leader ({named}): {there}{}",
            api.cluster.node_id(),
            if there.ends_with('\n') { "" } else { "\n" }
        ),
    );
    if let Ok(v) = named.parse() {
        r.headers_mut().insert(forward::LEADER, v);
    }
    r
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
