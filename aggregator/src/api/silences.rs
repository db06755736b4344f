//! Alertmanager's v2 silences and alerts, so `amtool silence add|query|expire` and `amtool alert
//! query` work against the aggregator unchanged: `GET|POST /api/v2/silences`,
//! `GET|DELETE /api/v2/silence/{id}`, `GET /api/v2/alerts`. Writes need the admin token and are
//! audited; reads the query token. In a pair, a follower passes every one of them to the holder
//! (whose silences are the cluster's); the holder writes a new silence to the shared state before
//! it answers.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::handler::Handler;
use axum::middleware;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use hyper::{HeaderMap, Method, StatusCode, Uri};
use serde_json::{json, Value as Json};

use super::{blocking, forward, guard_admin, guard_query, query::params, respond, Api, Resp};
use crate::engine::alert_passes;
use crate::notify::silence::{self, Refused};

/// The routes, each behind its guard.
pub fn routes(api: &Arc<Api>) -> Router<Arc<Api>> {
    let admin = || middleware::from_fn_with_state(api.clone(), guard_admin);
    let query = || middleware::from_fn_with_state(api.clone(), guard_query);
    Router::new()
        .route(
            "/api/v2/silences",
            get(list.layer(query())).post(create.layer(admin())),
        )
        .route(
            "/api/v2/silence/{id}",
            get(one.layer(query())).delete(expire.layer(admin())),
        )
        .route("/api/v2/alerts", get(alerts.layer(query())))
}

fn answer(status: StatusCode, body: &Json) -> Resp {
    respond(status, "application/json", body.to_string())
}

/// Alertmanager answers errors as a JSON string.
fn refused(r: Refused) -> Resp {
    let (status, m) = match r {
        Refused::Invalid(m) => (StatusCode::BAD_REQUEST, m),
        Refused::NotFound(m) => (StatusCode::NOT_FOUND, m),
        Refused::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
    };
    answer(status, &json!(m))
}

/// A follower's answer: the holder's. `None`: this node answers.
async fn at_leader(
    api: &Api,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Option<Resp> {
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    forward::to_leader(api, method, path, headers, body).await
}

/// A change is made only where the cluster's state is held (alone, or the holder).
fn not_here(api: &Api) -> Option<Resp> {
    (!api.cluster.holds_state()).then(|| {
        refused(Refused::Unavailable(
            "this node does not act for the cluster and knows no leader to pass the call to; retry"
                .into(),
        ))
    })
}

fn filters(p: &HashMap<String, Vec<String>>) -> Result<Vec<silence::Matcher>, String> {
    p.get("filter")
        .into_iter()
        .flatten()
        .map(|f| silence::parse_filter(f))
        .collect()
}

async fn list(State(api): State<Arc<Api>>, uri: Uri, headers: HeaderMap) -> Resp {
    if let Some(r) = at_leader(&api, Method::GET, &uri, &headers, Bytes::new()).await {
        return r;
    }
    // A node whose silences are not the cluster's would answer with stale ones.
    if let Some(r) = not_here(&api) {
        return r;
    }
    let p = params(uri.query(), None);
    let filter = match filters(&p) {
        Ok(f) => f,
        Err(e) => return refused(Refused::Invalid(e)),
    };
    blocking(api, move |a| {
        let out: Vec<Json> = a.engine.read_silences(|s, now| {
            s.list(now)
                .into_iter()
                .filter(|x| silence::filter_matches(&filter, &silence::equal_labels(x)))
                .map(|x| x.to_api(now))
                .collect()
        });
        answer(StatusCode::OK, &json!(out))
    })
    .await
}

async fn one(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Resp {
    if let Some(r) = at_leader(&api, Method::GET, &uri, &headers, Bytes::new()).await {
        return r;
    }
    // A node whose silences are not the cluster's would answer with stale ones.
    if let Some(r) = not_here(&api) {
        return r;
    }
    blocking(api, move |a| {
        match a
            .engine
            .read_silences(|s, now| s.get(&id).map(|x| x.to_api(now)))
        {
            Some(x) => answer(StatusCode::OK, &x),
            None => refused(Refused::NotFound(format!("silence {id} not found"))),
        }
    })
    .await
}

async fn create(State(api): State<Arc<Api>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Resp {
    if let Some(r) = at_leader(&api, Method::POST, &uri, &headers, body.clone()).await {
        return r;
    }
    if let Some(r) = not_here(&api) {
        return r;
    }
    let doc: Json = match serde_json::from_slice(&body) {
        Ok(d @ Json::Object(_)) => d,
        Ok(_) => return refused(Refused::Invalid("the body must be a JSON object".into())),
        Err(e) => return refused(Refused::Invalid(format!("the body is not JSON: {e}"))),
    };
    let a = api.clone();
    let done = tokio::task::spawn_blocking(move || {
        a.engine
            .change_silences(|s, now| s.post(&doc, now, silence::new_id))
            .map(|(id, acting)| {
                let text = a
                    .engine
                    .read_silences(|s, _| s.get(&id).map(|x| x.matchers_text()))
                    .unwrap_or_default();
                (id, text, acting)
            })
    })
    .await;
    let (id, matchers, acting) = match done {
        Ok(Ok(x)) => x,
        Ok(Err(r)) => return refused(r),
        Err(e) => return refused(Refused::Unavailable(e.to_string())),
    };
    tracing::info!(target: "vigil::audit", silence = %id, matchers = %matchers, "silence set");
    if let Err(e) = api.engine.record_now(acting).await {
        return refused(Refused::Unavailable(format!(
            "silence {id} is set on this node but not yet in the cluster's shared state ({e}); retry"
        )));
    }
    answer(StatusCode::OK, &json!({"silenceID": id}))
}

async fn expire(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Resp {
    if let Some(r) = at_leader(&api, Method::DELETE, &uri, &headers, Bytes::new()).await {
        return r;
    }
    if let Some(r) = not_here(&api) {
        return r;
    }
    let a = api.clone();
    let sid = id.clone();
    let acting = match tokio::task::spawn_blocking(move || {
        a.engine.change_silences(|s, now| s.expire(&sid, now))
    })
    .await
    {
        Ok(Ok(((), acting))) => acting,
        Ok(Err(r)) => return refused(r),
        Err(e) => return refused(Refused::Unavailable(e.to_string())),
    };
    tracing::info!(target: "vigil::audit", silence = %id, "silence expired");
    if let Err(e) = api.engine.record_now(acting).await {
        return refused(Refused::Unavailable(format!(
            "silence {id} is expired on this node but not yet in the cluster's shared state ({e}); retry"
        )));
    }
    respond(StatusCode::OK, "application/json", "")
}

/// `GET /api/v2/alerts` with Alertmanager's parameters: `active`, `silenced`, `inhibited`
/// (booleans, true unless given), `filter` (matchers), `receiver` (a regex on receiver names).
async fn alerts(State(api): State<Arc<Api>>, uri: Uri, headers: HeaderMap) -> Resp {
    if let Some(r) = at_leader(&api, Method::GET, &uri, &headers, Bytes::new()).await {
        return r;
    }
    // A node whose silences are not the cluster's would answer with stale ones.
    if let Some(r) = not_here(&api) {
        return r;
    }
    let p = params(uri.query(), None);
    let flag = |k: &str| {
        p.get(k)
            .and_then(|v| v.last())
            .is_none_or(|v| !v.eq_ignore_ascii_case("false"))
    };
    let (active, silenced, inhibited) = (flag("active"), flag("silenced"), flag("inhibited"));
    let filter = match filters(&p) {
        Ok(f) => f,
        Err(e) => return refused(Refused::Invalid(e)),
    };
    let receiver = match p.get("receiver").and_then(|v| v.last()) {
        Some(r) => match regex::Regex::new(&format!("^(?:{r})$")) {
            Ok(re) => Some(re),
            Err(e) => return refused(Refused::Invalid(format!("receiver: {e}"))),
        },
        None => None,
    };
    blocking(api, move |a| {
        let out: Vec<Json> = a
            .engine
            .alerts_v2()
            .into_iter()
            // Alertmanager's filter: each flag left false leaves out the alerts it describes.
            .filter(|(x, muted)| {
                let has = |k: &str| x["status"][k].as_array().is_some_and(|v| !v.is_empty());
                !((!silenced && has("silencedBy"))
                    || (!inhibited && has("inhibitedBy"))
                    || (!active && !*muted))
            })
            .map(|(x, _)| x)
            .filter(|x| alert_passes(x, &filter))
            .filter(|x| {
                receiver.as_ref().is_none_or(|re| {
                    x["receivers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|r| re.is_match(r["name"].as_str().unwrap_or("")))
                })
            })
            .collect();
        answer(StatusCode::OK, &json!(out))
    })
    .await
}
