//! `POST /api/v1/write`: remote-write 1.0 from any sender (Vigil's agent, Prometheus, vmagent,
//! Grafana Alloy). Answers 204 accepted, 400 malformed, 401 missing or wrong token, 413 too large,
//! 429 over the series limit (with `Retry-After`).

use bytes::Bytes;
use hyper::StatusCode;
use vigil_wire::remote_write::{DecodeError, WriteRequest};

use crate::app::App;
use crate::engine::now_ms;

/// Compares two byte strings in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the request carries the configured bearer token (always true when none is set).
pub fn authorized(app: &App, auth_header: Option<&str>) -> bool {
    match &app.token {
        None => true,
        Some(t) => auth_header
            .and_then(|h| h.strip_prefix("Bearer "))
            .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), t.as_bytes())),
    }
}

/// Handles one write; returns the status and a body for errors.
pub fn write(app: &App, auth_header: Option<&str>, body: &Bytes) -> (StatusCode, String) {
    let (status, msg) = handle(app, auth_header, body);
    app.metrics
        .write_requests
        .get_or_create(&vec![("code".into(), status.as_u16().to_string())])
        .inc();
    (status, msg)
}

fn handle(app: &App, auth_header: Option<&str>, body: &Bytes) -> (StatusCode, String) {
    if !authorized(app, auth_header) {
        return (
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token\n".into(),
        );
    }
    let req = match WriteRequest::decode_snappy(body, app.cfg.max_body_bytes) {
        Ok(r) => r,
        Err(DecodeError::TooLarge { size, limit }) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body decompresses to {size} bytes, limit {limit}\n"),
            )
        }
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    // Validate everything before storing anything: a malformed request changes nothing.
    let c = &app.cfg;
    let refuse = |reason: &str, msg: String| {
        app.metrics
            .write_refused
            .get_or_create(&vec![("reason".into(), reason.to_string())])
            .inc();
        (StatusCode::PAYLOAD_TOO_LARGE, msg)
    };
    if req.timeseries.len() > c.max_series_per_request {
        return refuse(
            "series_per_request",
            format!(
                "{} series in one request, limit {}\n",
                req.timeseries.len(),
                c.max_series_per_request
            ),
        );
    }
    let mut series = Vec::with_capacity(req.timeseries.len());
    for (i, ts) in req.timeseries.iter().enumerate() {
        if ts.labels.len() > c.max_labels_per_series {
            return refuse(
                "labels_per_series",
                format!(
                    "series {i}: {} labels, limit {}\n",
                    ts.labels.len(),
                    c.max_labels_per_series
                ),
            );
        }
        if let Some(l) = ts.labels.iter().find(|l| {
            l.name.len() > c.max_label_name_length || l.value.len() > c.max_label_value_length
        }) {
            return refuse(
                "label_length",
                format!(
                    "series {i}: label {:?} longer than the limits ({} / {} bytes)\n",
                    l.name.chars().take(64).collect::<String>(),
                    c.max_label_name_length,
                    c.max_label_value_length
                ),
            );
        }
        match ts.validated_labels() {
            Ok(l) => series.push(l),
            Err(e) => return (StatusCode::BAD_REQUEST, format!("series {i}: {e}\n")),
        }
    }
    let now = now_ms();
    let mut dropped = [0usize; 3];
    for (labels, ts) in series.iter().zip(&req.timeseries) {
        match app.store.append(labels, ts.samples(), now) {
            Ok(st) => {
                app.metrics.samples_ingested.inc_by(st.accepted as u64);
                dropped[0] += st.out_of_order;
                dropped[1] += st.too_old;
                dropped[2] += st.duplicates;
            }
            Err(e) => {
                app.metrics
                    .write_refused
                    .get_or_create(&vec![("reason".into(), "active_series".into())])
                    .inc();
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("{e}; series already stored were kept\n"),
                );
            }
        }
    }
    for (reason, n) in ["out_of_order", "too_old", "duplicate"].iter().zip(dropped) {
        if n > 0 {
            app.metrics
                .samples_dropped
                .get_or_create(&vec![("reason".into(), reason.to_string())])
                .inc_by(n as u64);
        }
    }
    (StatusCode::NO_CONTENT, String::new())
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
