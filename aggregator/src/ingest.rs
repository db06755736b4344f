//! `POST /api/v1/write`: remote-write 1.0 from any sender (Vigil's agent, Prometheus, vmagent,
//! Grafana Alloy). Answers 204 accepted, 400 malformed, 401 missing or wrong token, 413 too large,
//! 429 over the series limit (with `Retry-After`).

use bytes::Bytes;
use hyper::StatusCode;
use vigil_wire::remote_write::{self, DecodeError};

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
            .and_then(|h| {
                h.get(..7)
                    .filter(|p| p.eq_ignore_ascii_case("bearer "))
                    .map(|_| &h[7..])
            })
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
    let raw = match remote_write::decompress(body, app.cfg.max_body_bytes) {
        Ok(r) => r,
        Err(DecodeError::TooLarge { size, limit }) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body decompresses to {size} bytes, limit {limit}\n"),
            )
        }
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    // Pass 1: validate everything before storing anything (a malformed request changes nothing).
    let c = &app.cfg;
    let mut failure: Option<(StatusCode, &'static str, String)> = None;
    let mut buf = String::with_capacity(256);
    // Each series' canonical labels, encoded once in pass 1 and reused in pass 2.
    let mut encoded = String::with_capacity(raw.len());
    let mut ends: Vec<usize> = Vec::new();
    let mut count = 0usize;
    let res =
        remote_write::scan(&raw, |i, s| {
            count += 1;
            let mut fail = |status, reason, msg: String| {
                failure = Some((status, reason, msg));
                Err(String::new())
            };
            if count > c.max_series_per_request {
                return fail(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "series_per_request",
                    format!(
                        "more than {} series in one request",
                        c.max_series_per_request
                    ),
                );
            }
            if s.labels.len() > c.max_labels_per_series {
                return fail(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "labels_per_series",
                    format!(
                        "series {i}: {} labels, limit {}",
                        s.labels.len(),
                        c.max_labels_per_series
                    ),
                );
            }
            if let Some((n, _)) = s.labels.iter().find(|(n, v)| {
                n.len() > c.max_label_name_length || v.len() > c.max_label_value_length
            }) {
                return fail(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "label_length",
                    format!(
                        "series {i}: label {:?} longer than the limits ({} / {} bytes)",
                        n.chars().take(64).collect::<String>(),
                        c.max_label_name_length,
                        c.max_label_value_length
                    ),
                );
            }
            if let Some((n, _)) = s
                .labels
                .iter()
                .find(|(n, _)| !vigil_wire::text::is_valid_label_name(n))
            {
                return fail(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    format!("series {i}: invalid label name {n:?}"),
                );
            }
            if let Err(e) = vigil_wire::encode_sorted(&mut buf, s.labels.iter().copied()) {
                return fail(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    format!("series {i}: {e}"),
                );
            }
            if !s
                .labels
                .iter()
                .any(|(n, v)| *n == vigil_wire::METRIC_NAME && !v.is_empty())
            {
                return fail(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    format!("series {i}: no __name__ label"),
                );
            }
            encoded.push_str(&buf);
            ends.push(encoded.len());
            Ok(())
        });
    if let Some((status, reason, msg)) = failure {
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            app.metrics
                .write_refused
                .get_or_create(&vec![("reason".into(), reason.to_string())])
                .inc();
        }
        return (status, format!("{msg}\n"));
    }
    if let Err(e) = res {
        return (StatusCode::BAD_REQUEST, format!("protobuf: {e}\n"));
    }
    // Pass 2: store, holding the store once for the whole request.
    let now = now_ms();
    let mut dropped = [0usize; 5];
    let mut accepted = 0usize;
    let mut too_many = None;
    {
        let mut batch = app.store.batch();
        let _ = remote_write::scan(&raw, |i, s| {
            let start = if i == 0 { 0 } else { ends[i - 1] };
            match batch.append(&encoded[start..ends[i]], &s.samples, now) {
                Ok(st) => {
                    accepted += st.accepted;
                    dropped[0] += st.out_of_order;
                    dropped[1] += st.too_old;
                    dropped[2] += st.duplicates;
                    dropped[3] += st.too_new;
                    Ok(())
                }
                Err(e) => {
                    // Over the series limit: this series is refused, the rest of the request
                    // is still stored (one new series must not block an agent's whole batch).
                    dropped[4] += s.samples.len();
                    too_many = Some(e);
                    Ok(())
                }
            }
        });
    }
    app.metrics.samples_ingested.inc_by(accepted as u64);
    for (reason, n) in [
        "out_of_order",
        "too_old",
        "duplicate",
        "too_new",
        "series_limit",
    ]
    .iter()
    .zip(dropped)
    {
        if n > 0 {
            app.metrics
                .samples_dropped
                .get_or_create(&vec![("reason".into(), reason.to_string())])
                .inc_by(n as u64);
        }
    }
    if let Some(e) = too_many {
        app.metrics
            .write_refused
            .get_or_create(&vec![("reason".into(), "active_series".into())])
            .inc();
        return (
            StatusCode::TOO_MANY_REQUESTS,
            format!("{e}; series already stored were kept\n"),
        );
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
