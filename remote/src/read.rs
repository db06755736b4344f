//! Raw samples from a Prometheus-compatible query API.
//!
//! A selection over `[mint, maxt]` is cut into chunks `(a, b]` of at most an hour; each is one
//! `POST /api/v1/query` of `SELECTOR[<b - a>ms]` at `time = b`, which Prometheus, Mimir, Thanos
//! and VictoriaMetrics all answer with the raw samples of that window (a range selector is not
//! evaluated further). Prometheus 2.x also returns a sample at exactly `b - range` (its windows
//! were closed on the left until 3.0): samples outside `(a, b]` are dropped here, so chunks
//! neither overlap nor leave gaps whichever the engine.
//!
//! Staleness markers are not part of what these APIs return: a series that stopped is seen to
//! stop at its last sample, and read as absent once the lookback has passed (as Prometheus reads
//! its own data through its API).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use serde::Deserialize;
use vigil_config::http::{Http, Response};
use vigil_rules::promql::storage::{MatchOp, Matcher, StorageError};
use vigil_rules::promql::SeriesData;
use vigil_wire::{Labels, Sample};

use crate::sign::Signer;

/// Length of one request's window: an hour of a 15 s series is 240 samples.
pub const DEFAULT_CHUNK_MS: i64 = 3_600_000;
/// The largest answer read by default (an hour of tens of thousands of series).
const MAX_BODY: usize = 512 << 20;

/// One chunk fetched, for progress reports.
#[derive(Debug, Clone, Copy)]
pub struct Chunk {
    /// 1-based.
    pub index: usize,
    pub of: usize,
    /// The chunk's window, `(from, to]` in ms.
    pub from: i64,
    pub to: i64,
    pub series: usize,
    pub samples: usize,
}

/// A Prometheus-compatible query API.
pub struct QueryApi {
    http: Http,
    base: String,
    headers: Vec<(String, String)>,
    timeout: Duration,
    chunk_ms: i64,
    max_body: usize,
    signer: Option<Arc<dyn Signer>>,
}

impl QueryApi {
    /// `query_url` is the API's base (`http://vm:8428`, `http://prometheus:9090`,
    /// `https://aps-workspaces.<region>.amazonaws.com/workspaces/<id>`); `headers` go with
    /// every request (a tenant's `X-Scope-OrgID`, an `Authorization`); each request must
    /// answer within `timeout`.
    pub fn new(
        query_url: &str,
        headers: Vec<(String, String)>,
        timeout: Duration,
    ) -> Result<QueryApi, String> {
        let base = query_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!(
                "{query_url:?}: expected an http:// or https:// URL"
            ));
        }
        let http = Http::new().map_err(|e| e.to_string())?;
        Ok(QueryApi {
            http,
            base: base.to_string(),
            headers,
            timeout,
            chunk_ms: DEFAULT_CHUNK_MS,
            max_body: MAX_BODY,
            signer: None,
        })
    }

    /// Sets the longest window one request covers.
    pub fn with_chunk_ms(mut self, ms: i64) -> QueryApi {
        self.chunk_ms = ms.max(1);
        self
    }

    /// Signs every request (SigV4 for Amazon Managed Service for Prometheus).
    pub fn with_signer(mut self, signer: Arc<dyn Signer>) -> QueryApi {
        self.signer = Some(signer);
        self
    }

    /// Sends one request with the configured headers, signed when a signer is set.
    async fn request(
        &self,
        method: Method,
        url: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Response, String> {
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(ct) = content_type {
            headers.push(("content-type", ct));
        }
        headers.extend(self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let signed = match &self.signer {
            Some(s) => s.sign(method.as_str(), url, &headers, &body).await?,
            None => Vec::new(),
        };
        headers.extend(signed.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        self.http
            .request(method, url, &headers, body, self.timeout, self.max_body)
            .await
            .map_err(|e| e.to_string())
    }

    /// Sets the largest answer read (an answer over it is an error, not a truncation).
    pub fn with_max_body(mut self, bytes: usize) -> QueryApi {
        self.max_body = bytes;
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Every series matching all `matchers`, with its samples in `[mint, maxt]` (ms, both
    /// inclusive), oldest first; `progress` sees each chunk once fetched. Any chunk's failure
    /// fails the whole selection (a partial answer would read as missing data).
    pub async fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        progress: &mut (dyn FnMut(Chunk) + Send),
    ) -> Result<Vec<SeriesData>, StorageError> {
        let selector = selector_text(matchers);
        let windows = chunks(mint, maxt, self.chunk_ms);
        let mut all: BTreeMap<Labels, Vec<Sample>> = BTreeMap::new();
        for (i, &(a, b)) in windows.iter().enumerate() {
            let got = self.window(&selector, a, b).await?;
            let (mut series, mut samples) = (0, 0);
            for (labels, values) in got {
                let kept: Vec<Sample> = values
                    .into_iter()
                    .filter(|s| s.timestamp_ms > a && s.timestamp_ms <= b)
                    .collect();
                if kept.is_empty() {
                    continue;
                }
                series += 1;
                samples += kept.len();
                all.entry(labels).or_default().extend(kept);
            }
            progress(Chunk {
                index: i + 1,
                of: windows.len(),
                from: a,
                to: b,
                series,
                samples,
            });
        }
        Ok(all
            .into_iter()
            .map(|(labels, mut samples)| {
                samples.sort_by_key(|s| s.timestamp_ms);
                samples.dedup_by_key(|s| s.timestamp_ms);
                SeriesData::floats(labels, samples)
            })
            .collect())
    }

    /// Passes an API request on to the engine as it came (`/api/v1/query?...`, or a form
    /// body), with the configured headers; the engine's answer, whatever its status.
    pub async fn pass(
        &self,
        method: Method,
        path_and_query: &str,
        body: Bytes,
        content_type: Option<&str>,
    ) -> Result<Response, String> {
        let url = format!("{}{path_and_query}", self.base);
        self.request(method, &url, content_type, body)
            .await
            .map_err(|e| format!("{}: {e}", self.base))
    }

    /// The raw samples of `(a, b]` (and, from Prometheus 2.x, at `a` too).
    async fn window(
        &self,
        selector: &str,
        a: i64,
        b: i64,
    ) -> Result<Vec<(Labels, Vec<Sample>)>, StorageError> {
        let query = format!("{selector}[{}ms]", b - a);
        // A partial answer (a storage node of a cluster down) would read as missing data: asked
        // for never (Thanos, VictoriaMetrics cluster), and refused when given all the same.
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", &query)
            .append_pair("time", &seconds(b))
            .append_pair("partial_response", "false")
            .append_pair("deny_partial_response", "1")
            .finish();
        let url = format!("{}/api/v1/query", self.base);
        let fail = |what: String| StorageError(format!("{url}: {query} at {}: {what}", seconds(b)));
        let resp = self
            .request(
                Method::POST,
                &url,
                Some("application/x-www-form-urlencoded"),
                Bytes::from(form),
            )
            .await
            .map_err(fail)?;
        parse_matrix(resp.status.as_u16(), &resp.body).map_err(fail)
    }
}

/// `(a, b]` windows covering `[mint, maxt]`, oldest first, each at most `chunk` long.
fn chunks(mint: i64, maxt: i64, chunk: i64) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut a = mint.saturating_sub(1);
    while a < maxt {
        let b = a.saturating_add(chunk).min(maxt);
        out.push((a, b));
        a = b;
    }
    out
}

/// Milliseconds as the API's seconds (`1700000000.123`).
fn seconds(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

/// Matchers as a PromQL selector, `{__name__="up",job=~"a|b"}`; values quoted as PromQL reads
/// them back (a regex keeps the text it was written with).
pub fn selector_text(matchers: &[Matcher]) -> String {
    let mut s = String::from("{");
    for (i, m) in matchers.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let op = match m.op {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Re(_) => "=~",
            MatchOp::NotRe(_) => "!~",
        };
        s.push_str(&m.name);
        s.push_str(op);
        quote_into(&mut s, &m.value);
    }
    s.push('}');
    s
}

fn quote_into(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    warnings: Vec<String>,
    /// VictoriaMetrics cluster: some storage node did not answer.
    #[serde(default, rename = "isPartial")]
    is_partial: bool,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    #[serde(default)]
    result: Vec<Series>,
}

#[derive(Deserialize)]
struct Series {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    #[serde(default)]
    values: Vec<(f64, String)>,
    #[serde(default)]
    histograms: Option<serde_json::Value>,
}

/// An answer of the query API: a matrix's series, or why not.
fn parse_matrix(status: u16, body: &[u8]) -> Result<Vec<(Labels, Vec<Sample>)>, String> {
    let answer: Answer = match serde_json::from_slice(body) {
        Ok(a) => a,
        Err(e) => {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
            return Err(if (200..300).contains(&status) {
                format!("unreadable answer ({e}): {text}")
            } else {
                format!("HTTP {status}: {}", text.trim())
            });
        }
    };
    if answer.status != "success" {
        return Err(format!(
            "HTTP {status}: {}: {}",
            answer.error_type.as_deref().unwrap_or("error"),
            answer.error.as_deref().unwrap_or("(no message)")
        ));
    }
    if answer.is_partial {
        return Err("a partial answer (isPartial: a storage node did not answer)".into());
    }
    if !answer.warnings.is_empty() {
        return Err(format!(
            "an answer with warnings (it may be partial): {}",
            answer.warnings.join("; ")
        ));
    }
    let data = answer.data.ok_or("an answer without data")?;
    if data.result_type != "matrix" {
        return Err(format!(
            "a {} where a matrix of raw samples was asked for",
            data.result_type
        ));
    }
    let mut out = Vec::with_capacity(data.result.len());
    for s in data.result {
        let labels = Labels::from_pairs(s.metric.iter());
        if s.histograms.is_some() {
            return Err(format!(
                "{labels} holds native histograms, which are not read through the query API yet"
            ));
        }
        let mut samples = Vec::with_capacity(s.values.len());
        for (t, v) in s.values {
            let value = parse_value(&v).ok_or_else(|| format!("{labels}: value {v:?}"))?;
            samples.push(Sample::new((t * 1000.0).round() as i64, value));
        }
        out.push((labels, samples));
    }
    Ok(out)
}

/// A sample value as the API writes it: Go's `strconv.FormatFloat`, with `NaN`, `+Inf`, `-Inf`.
fn parse_value(v: &str) -> Option<f64> {
    match v {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => v.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    #[test]
    fn chunks_cover_the_range_once() {
        assert_eq!(chunks(0, 10, 4), vec![(-1, 3), (3, 7), (7, 10)]);
        assert_eq!(chunks(5, 5, 4), vec![(4, 5)]);
        assert!(chunks(6, 5, 4).is_empty());
        assert_eq!(seconds(1_700_000_000_123), "1700000000.123");
        assert_eq!(seconds(-1500), "-2.500");
    }

    #[test]
    fn selectors_quote_as_promql_reads_them() {
        let re = |p: &str| MatchOp::Re(Regex::new(&format!("^(?:{p})$")).unwrap());
        let m = vec![
            Matcher::new(MatchOp::Equal, "__name__", "up"),
            Matcher::new(re("a|b\\.c"), "job", "a|b\\.c"),
            Matcher::new(MatchOp::NotEqual, "path", "say \"hi\"\n"),
        ];
        assert_eq!(
            selector_text(&m),
            r#"{__name__="up",job=~"a|b\\.c",path!="say \"hi\"\n"}"#
        );
        let parsed = vigil_rules::promql::parse(&selector_text(&m)).unwrap();
        assert_eq!(parsed.text(), selector_text(&m));
    }

    #[test]
    fn answers_and_errors() {
        let body = br#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"__name__":"up","job":"a"},"values":[[1700000000.123,"1"],[1700000015,"NaN"],[1700000030.5,"+Inf"]]}]}}"#;
        let got = parse_matrix(200, body).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.to_string(), r#"up{job="a"}"#);
        let ts: Vec<i64> = got[0].1.iter().map(|s| s.timestamp_ms).collect();
        assert_eq!(
            ts,
            vec![1_700_000_000_123, 1_700_000_015_000, 1_700_000_030_500]
        );
        assert!(got[0].1[1].value.is_nan() && got[0].1[2].value == f64::INFINITY);

        let e = parse_matrix(
            422,
            br#"{"status":"error","errorType":"execution","error":"too many samples"}"#,
        )
        .unwrap_err();
        assert_eq!(e, "HTTP 422: execution: too many samples");
        let e = parse_matrix(502, b"<html>bad gateway</html>").unwrap_err();
        assert_eq!(e, "HTTP 502: <html>bad gateway</html>");
        let e = parse_matrix(
            200,
            br#"{"status":"success","isPartial":true,"data":{"resultType":"matrix","result":[]}}"#,
        )
        .unwrap_err();
        assert!(e.contains("partial"), "{e}");
        let e = parse_matrix(
            200,
            br#"{"status":"success","warnings":["store b unavailable"],"data":{"resultType":"matrix","result":[]}}"#,
        )
        .unwrap_err();
        assert!(e.contains("store b unavailable"), "{e}");
        let e = parse_matrix(
            200,
            br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
        )
        .unwrap_err();
        assert!(e.contains("a vector where a matrix"), "{e}");
        let e = parse_matrix(
            200,
            br#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"__name__":"h"},"histograms":[[1,{}]]}]}}"#,
        )
        .unwrap_err();
        assert!(e.contains("native histograms"), "{e}");
    }
}
