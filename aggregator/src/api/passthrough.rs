//! The data routes: `/api/v1/query`, `query_range`, `series`, `labels` and label values. On the
//! window, answered here; with `[storage] backend = "remote"`, passed through to the engine
//! (with the configured tenant headers and credentials), so they answer exactly what the engine
//! answers. Vigil's own routes (rules, alerts, scaling, decisions) are Vigil's in both modes.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use hyper::header::{HeaderMap, CONTENT_TYPE};
use hyper::{Method, StatusCode, Uri};

use super::{instant, json_err, label_names, label_values, range, respond, series_h, Api, Resp};

const DATA: [&str; 5] = [
    "/api/v1/query",
    "/api/v1/query_range",
    "/api/v1/series",
    "/api/v1/labels",
    "/api/v1/label/{name}/values",
];

pub(super) fn data_routes(api: &Api) -> Router<Arc<Api>> {
    if api.remote.is_some() {
        return DATA
            .iter()
            .fold(Router::new(), |r, path| r.route(path, get(pass).post(pass)));
    }
    Router::new()
        .route(DATA[0], get(instant).post(instant))
        .route(DATA[1], get(range).post(range))
        .route(DATA[2], get(series_h).post(series_h))
        .route(DATA[3], get(label_names).post(label_names))
        .route(DATA[4], get(label_values).post(label_values))
}

async fn pass(
    State(api): State<Arc<Api>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Resp {
    let Some(remote) = &api.remote else {
        return json_err(StatusCode::NOT_FOUND, "not_found", "no engine");
    };
    // Within `[query] max_concurrency` as local queries are: each may buffer a large answer.
    let Ok(_slot) = api.query_slots.clone().acquire_owned().await else {
        return respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "stopping\n");
    };
    let ctype = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let pq = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    match remote.api().pass(method, pq, body, ctype).await {
        Ok(r) => respond(
            r.status,
            r.headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json"),
            r.body,
        ),
        Err(e) => json_err(
            StatusCode::BAD_GATEWAY,
            "unavailable",
            &format!("storage: {e}"),
        ),
    }
}
