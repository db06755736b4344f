//! Admin writes in a pair. A Service may route `curl -X POST …/-/reload` (and later `amtool`'s
//! silences and the pause endpoints) to either node; what changes the cluster's state must
//! reach the node that acts. A follower passes such a request on to the holder, at the address
//! the lease item carries, with the caller's own `Authorization`, and answers with the holder's
//! answer. When the holder cannot be reached it answers 503 and names the holder's address
//! (`x-vigil-leader`), so the caller can retry there. A forwarded request carries
//! `x-vigil-forwarded-by` and is never passed on again: a node that is no longer the holder
//! answers it itself (reload) or with 503 (writes of the shared state).

use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::{Method, StatusCode};
use serde_json::json;

use super::{respond, Api, Resp};

/// The header a forwarded request carries: the node that forwarded it.
pub const FORWARDED_BY: &str = "x-vigil-forwarded-by";
/// The header naming the holder on a follower's answer: `node_id address`.
pub const LEADER: &str = "x-vigil-leader";

/// A forwarded call's time limit when no lease sets one.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer passed back (a list of silences or alerts may be long).
const MAX_ANSWER: usize = 16 << 20;

/// Passes the request to the holder when this node is a follower that knows one (and the
/// request was not forwarded already); `None`: this node answers it.
pub async fn to_leader(
    api: &Api,
    method: Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Option<Resp> {
    if headers.contains_key(FORWARDED_BY) {
        return None;
    }
    let (holder, address) = api.cluster.leader_elsewhere()?;
    let me = api.cluster.node_id();
    let mut pass: Vec<(&str, &str)> = vec![(FORWARDED_BY, me.as_str())];
    for name in ["authorization", "content-type"] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            pass.push((name, v));
        }
    }
    // Under TLS the pair's nodes speak it to each other too (the token is never sent in clear);
    // the holder's certificate is checked against the system's trust store.
    let scheme = if api.cfg.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let url = format!("{scheme}://{address}{path_and_query}");
    let timeout = api.cluster.call_timeout().unwrap_or(TIMEOUT);
    let leader = format!("{holder} {address}");
    let mut answer = match api
        .http
        .request(method, &url, &pass, body, timeout, MAX_ANSWER)
        .await
    {
        Ok(r) => {
            tracing::info!(path = %path_and_query, leader = %leader, status = r.status.as_u16(), "admin write forwarded to the leader");
            let ctype = r
                .headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("text/plain")
                .to_string();
            respond(r.status, &ctype, r.body)
        }
        Err(e) => {
            tracing::warn!(path = %path_and_query, leader = %leader, error = %e, "cannot forward an admin write to the leader");
            unreachable(&holder, &address, &e.to_string())
        }
    };
    if let Ok(v) = HeaderValue::from_str(&leader) {
        answer.headers_mut().insert(LEADER, v);
    }
    Some(answer)
}

/// 503 naming the holder: this node may not make the change, the holder did not answer.
fn unreachable(holder: &str, address: &str, error: &str) -> Resp {
    respond(
        StatusCode::SERVICE_UNAVAILABLE,
        "application/json",
        json!({
            "status": "error",
            "errorType": "unavailable",
            "error": format!("this node follows; the leader {holder} at {address} did not answer ({error}): send it there"),
            "leader": holder,
            "leader_address": address,
        })
        .to_string(),
    )
}
