//! Pause and resume at run time: `POST /api/v1/scaling/{asg}/pause|resume` holds a group's
//! scaling, `POST /api/v1/replace/{policy}/pause|resume` a replacement policy's. Fields `reason`
//! (required to pause), `author`, `until` (RFC 3339, Unix seconds, or a duration from now such as
//! `2h`), as a form, JSON or the query string. The admin token guards them, each leaves an audit
//! line; a follower passes them to the holder, which writes its shared state before answering.
//! A paused policy keeps deciding and says what it would do ("paused: would …").

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::handler::Handler;
use axum::middleware;
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use hyper::{HeaderMap, Method, StatusCode, Uri};
use serde_json::{json, Value as Json};
use vigil_rules::duration::format_timestamp_ms;
use vigil_rules::pause::Pause;

use super::{forward, guard_admin, query::params, respond, Api, Resp};
use crate::notify::silence::{Refused, MAX_TEXT};

/// The routes, behind the admin guard.
pub fn routes(api: &Arc<Api>) -> Router<Arc<Api>> {
    let admin = || middleware::from_fn_with_state(api.clone(), guard_admin);
    Router::new()
        .route(
            "/api/v1/scaling/{name}/{action}",
            post(scaling.layer(admin())),
        )
        .route(
            "/api/v1/replace/{name}/{action}",
            post(replace.layer(admin())),
        )
}

#[derive(Clone, Copy, PartialEq)]
enum What {
    Scaling,
    Replace,
}

fn answer(status: StatusCode, body: Json) -> Resp {
    respond(status, "application/json", body.to_string())
}

fn error(status: StatusCode, kind: &str, msg: &str) -> Resp {
    answer(
        status,
        json!({"status": "error", "errorType": kind, "error": msg}),
    )
}

/// The request's fields: the query string, then a form or JSON body.
fn fields(uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Result<HashMap<String, String>, String> {
    let mut out: HashMap<String, String> = params(uri.query(), None)
        .into_iter()
        .filter_map(|(k, v)| Some((k, v.last()?.clone())))
        .collect();
    let json_body = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    if json_body {
        let doc: Json =
            serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
        let Json::Object(m) = doc else {
            return Err("the body must be a JSON object".into());
        };
        for (k, v) in m {
            let text = match v {
                Json::String(s) => s,
                Json::Null => continue,
                other => other.to_string(),
            };
            out.insert(k, text);
        }
    } else {
        for (k, v) in params(None, Some(body)) {
            if let Some(v) = v.last() {
                out.insert(k, v.clone());
            }
        }
    }
    Ok(out)
}

/// `until` as a time, or a duration from `now`.
fn until(text: &str, now: i64) -> Result<i64, String> {
    let t = text.trim();
    let at = match vigil_config::duration::parse_ms(t) {
        Ok(d) if !t.chars().all(|c| c.is_ascii_digit() || c == '.') => now.saturating_add(d),
        _ => vigil_config::duration::parse_timestamp_ms(t)
            .map_err(|e| format!("until: {e} (or a duration such as 2h)"))?,
    };
    if at <= now {
        return Err(format!(
            "until: {} is not in the future",
            format_timestamp_ms(at)
        ));
    }
    Ok(at)
}

async fn scaling(
    State(api): State<Arc<Api>>,
    Path((name, action)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Resp {
    control(api, What::Scaling, name, action, uri, headers, body).await
}

async fn replace(
    State(api): State<Arc<Api>>,
    Path((name, action)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Resp {
    control(api, What::Replace, name, action, uri, headers, body).await
}

async fn control(
    api: Arc<Api>,
    what: What,
    name: String,
    action: String,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Resp {
    let pause = match action.as_str() {
        "pause" => true,
        "resume" => false,
        _ => return respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    };
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    if let Some(r) = forward::to_leader(&api, Method::POST, path, &headers, body.clone()).await {
        return r;
    }
    if !api.cluster.holds_state() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this node does not act for the cluster and knows no leader to pass the change to; retry",
        );
    }
    let rules = api.rules.current();
    let known = match what {
        What::Scaling => rules.scaling_by_asg().contains_key(name.as_str()),
        What::Replace => rules.replace().any(|p| p.name == name),
    };
    let noun = if what == What::Scaling {
        vigil_rules::pause::SCALING
    } else {
        vigil_rules::pause::REPLACEMENT
    };
    // A pause left on a group or policy the rules no longer name can still be lifted.
    let view = api.view.load();
    let stranded = !pause
        && match what {
            What::Scaling => view.scaling_paused.contains_key(&name),
            What::Replace => view.replace_paused.contains_key(&name),
        };
    drop(view);
    if !known && !stranded {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no {noun} {name:?} in the rules loaded"),
        );
    }
    let f = match fields(&uri, &headers, &body) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_data", &e),
    };
    let now = api.clock.now_ms();
    let set = if pause {
        let reason = f.get("reason").map(|r| r.trim()).unwrap_or("");
        let author = f.get("author").cloned().unwrap_or_default();
        if reason.len() > MAX_TEXT || author.len() > MAX_TEXT {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_data",
                &format!("reason and author take at most {MAX_TEXT} bytes"),
            );
        }
        if reason.is_empty() {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_data",
                "reason is required to pause (say why, for whoever looks at 3 a.m.)",
            );
        }
        let until = match f.get("until").filter(|u| !u.trim().is_empty()) {
            Some(u) => match until(u, now) {
                Ok(t) => Some(t),
                Err(e) => return error(StatusCode::BAD_REQUEST, "bad_data", &e),
            },
            None => None,
        };
        Some(Pause {
            reason: reason.to_string(),
            author,
            since: now,
            until,
        })
    } else {
        None
    };
    let a = api.clone();
    let (key, new) = (name.clone(), set.clone());
    let changed = tokio::task::spawn_blocking(move || {
        a.engine.change_state(|s, _| {
            let slot = match what {
                What::Scaling => &mut s.groups.entry(key).or_default().paused,
                What::Replace => &mut s.replace.entry(key).or_default().paused,
            };
            Ok(std::mem::replace(slot, new))
        })
    })
    .await;
    let (before, acting) = match changed {
        Ok(Ok(b)) => b,
        Ok(Err(Refused::Unavailable(m) | Refused::Invalid(m) | Refused::NotFound(m))) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &m)
        }
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &e.to_string(),
            )
        }
    };
    if set.is_some() && what == What::Scaling {
        api.fleet.drop_pending(&name);
    }
    match &set {
        Some(p) => {
            tracing::info!(target: "vigil::audit", what = noun, name = %name, reason = %p.reason, author = %p.author, until = %p.until.map(format_timestamp_ms).unwrap_or_default(), "paused")
        }
        None => {
            tracing::info!(target: "vigil::audit", what = noun, name = %name, was_paused = before.is_some(), "resumed")
        }
    }
    if let Err(e) = api.engine.record_now(acting).await {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            &format!("changed on this node but not yet in the cluster's shared state ({e}); retry"),
        );
    }
    answer(
        StatusCode::OK,
        json!({"status": "success", "data": {
            "name": name,
            "paused": set.as_ref().map(pause_json),
            "was_paused": before.is_some(),
        }}),
    )
}

/// A pause as the API shows it.
pub fn pause_json(p: &Pause) -> Json {
    json!({
        "reason": p.reason,
        "author": p.author,
        "since": format_timestamp_ms(p.since),
        "until": p.until.map(format_timestamp_ms),
    })
}
