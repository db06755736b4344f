//! A minimal blocking HTTP/1.1 client for tests (on 127.0.0.1).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), "/".to_string()),
    }
}

fn exchange(
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let (host, path) = split_url(url);
    let mut s = TcpStream::connect(&host)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let head_end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&resp[..head_end]).to_string();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut body = resp[head_end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok((code, body))
}

fn dechunk(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let Some(eol) = b[i..].windows(2).position(|w| w == b"\r\n") else {
            break;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[i..i + eol]).trim(), 16).unwrap_or(0);
        i += eol + 2;
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[i..(i + size).min(b.len())]);
        i += size + 2;
    }
    out
}

pub fn get(url: &str) -> std::io::Result<(u16, String)> {
    let (c, b) = exchange(url, "GET", &[], &[])?;
    Ok((c, String::from_utf8_lossy(&b).into_owned()))
}

pub fn post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<(u16, String)> {
    request("POST", url, headers, body)
}

/// Any method, with headers (a `DELETE` with a token, say).
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let (c, b) = exchange(url, method, headers, body)?;
    Ok((c, String::from_utf8_lossy(&b).into_owned()))
}

/// Percent-encodes a query-string component (everything but RFC 3986's unreserved characters).
pub fn encode_component(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Runs an instant query against a Prometheus-compatible API; returns `(labels, value)` pairs.
pub fn prom_query(
    base: &str,
    query: &str,
) -> Vec<(serde_json::Map<String, serde_json::Value>, f64)> {
    let q = encode_component(query);
    let (code, body) = get(&format!("{base}/api/v1/query?query={q}")).expect("query");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    v["data"]["result"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    let labels = r["metric"].as_object().cloned().unwrap_or_default();
                    let val = r["value"][1]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(f64::NAN);
                    (labels, val)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Remote-writes one sample per series, stamped now, to `base`/api/v1/write; returns the status.
pub fn push_now(base: &str, series: &[(vigil_wire::Labels, f64)]) -> u16 {
    push_at(base, series, now_ms())
}

/// Remote-writes one sample per series, stamped `ts`; returns the status (0: no answer).
pub fn push_at(base: &str, series: &[(vigil_wire::Labels, f64)], ts: i64) -> u16 {
    let body = remote_write_body_at(series, ts);
    post(
        &format!("{base}/api/v1/write"),
        &[
            ("Content-Encoding", "snappy"),
            ("Content-Type", "application/x-protobuf"),
            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
        ],
        &body,
    )
    .map_or(0, |(c, _)| c)
}

/// Milliseconds since the epoch, by this host's clock.
pub use vigil_wire::clock::wall_ms as now_ms;

/// A remote-write body (snappy protobuf) of one sample per series, stamped now.
pub fn remote_write_body(series: &[(vigil_wire::Labels, f64)]) -> Vec<u8> {
    remote_write_body_at(series, now_ms())
}

/// A remote-write body (snappy protobuf) of one sample per series, stamped `now`.
pub fn remote_write_body_at(series: &[(vigil_wire::Labels, f64)], now: i64) -> Vec<u8> {
    let samples: Vec<[vigil_wire::Sample; 1]> = series
        .iter()
        .map(|(_, v)| [vigil_wire::Sample::new(now, *v)])
        .collect();
    vigil_wire::remote_write::encode_snappy_from(
        series
            .iter()
            .zip(&samples)
            .map(|((l, _), s)| (l, s.as_slice())),
    )
}

/// The value of one series in a text exposition: `series` is the name with its labels exactly as
/// written there (`vigil_agent_spool_frames{target="a"}`).
pub fn metric_value(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    })
}
