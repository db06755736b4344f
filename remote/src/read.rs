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
use vigil_rules::promql::{SeriesData, Value, VectorSample};
use vigil_wire::histogram::{exponential_bound, FloatHistogram, HSample, Span};
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
        let mut all: BTreeMap<Labels, (Vec<Sample>, Vec<HSample>)> = BTreeMap::new();
        for (i, &(a, b)) in windows.iter().enumerate() {
            let got = self.window(&selector, a, b).await?;
            let (mut series, mut samples) = (0, 0);
            for got in got {
                let within = |t: i64| t > a && t <= b;
                let floats: Vec<Sample> = got
                    .samples
                    .into_iter()
                    .filter(|s| within(s.timestamp_ms))
                    .collect();
                let hists: Vec<HSample> = got
                    .histograms
                    .into_iter()
                    .filter(|h| within(h.timestamp_ms))
                    .collect();
                if floats.is_empty() && hists.is_empty() {
                    continue;
                }
                series += 1;
                samples += floats.len() + hists.len();
                let e = all.entry(got.labels).or_default();
                e.0.extend(floats);
                e.1.extend(hists);
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
            .map(|(labels, (mut samples, mut histograms))| {
                samples.sort_by_key(|s| s.timestamp_ms);
                samples.dedup_by_key(|s| s.timestamp_ms);
                histograms.sort_by_key(|h| h.timestamp_ms);
                histograms.dedup_by_key(|h| h.timestamp_ms);
                SeriesData {
                    labels,
                    samples,
                    histograms,
                }
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
    ) -> Result<Vec<SeriesData>, StorageError> {
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
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct Series {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    #[serde(default)]
    values: Vec<(f64, String)>,
    #[serde(default)]
    histograms: Vec<(f64, serde_json::Value)>,
}

#[derive(Deserialize)]
struct Element {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    #[serde(default)]
    value: Option<(f64, String)>,
    #[serde(default)]
    histogram: Option<(f64, serde_json::Value)>,
}

/// Why an instant query has no answer.
#[derive(Debug, Clone, PartialEq)]
pub enum InstantError {
    /// The engine did not answer, or not readably (down, timed out, 5xx, a partial answer).
    Unreachable(String),
    /// The engine answered that the query fails (`bad_data`, `execution`, 4xx): the query's
    /// fault, not the engine's.
    Failed(String),
}

impl std::fmt::Display for InstantError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InstantError::Unreachable(e) | InstantError::Failed(e) => f.write_str(e),
        }
    }
}

impl QueryApi {
    /// Evaluates `query` at `t` (ms) in the engine itself: its whole answer (a vector's samples
    /// stamped `t`, as Prometheus's own instant queries are).
    pub async fn instant(&self, query: &str, t: i64) -> Result<Value, InstantError> {
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", query)
            .append_pair("time", &seconds(t))
            .append_pair("partial_response", "false")
            .append_pair("deny_partial_response", "1")
            .finish();
        let url = format!("{}/api/v1/query", self.base);
        let resp = self
            .request(
                Method::POST,
                &url,
                Some("application/x-www-form-urlencoded"),
                Bytes::from(form),
            )
            .await
            .map_err(|e| InstantError::Unreachable(format!("{url}: {e}")))?;
        parse_instant(resp.status.as_u16(), &resp.body, t).map_err(|e| match e {
            InstantError::Unreachable(m) => InstantError::Unreachable(format!("{url}: {m}")),
            InstantError::Failed(m) => InstantError::Failed(format!("{url}: {m}")),
        })
    }

    /// Whether the engine evaluates PromQL as Prometheus does, asked the way only the answer
    /// tells: `1` is a scalar in PromQL (Prometheus, Mimir, Thanos, Amazon Managed Service for
    /// Prometheus), a one-sample vector in MetricsQL (VictoriaMetrics).
    pub async fn speaks_promql(&self) -> Result<bool, InstantError> {
        let now = vigil_wire::clock::wall_ms();
        match self.instant("1", now).await? {
            Value::Scalar(_) => Ok(true),
            _ => Ok(false),
        }
    }
}

/// The answer's data, once its status, partialness and warnings are checked; `annotations`:
/// whether PromQL's own notes (`PromQL info: …`, `PromQL warning: …`) are let through.
fn checked(status: u16, body: &[u8], annotations: bool) -> Result<Data, InstantError> {
    let answer: Answer = match serde_json::from_slice(body) {
        Ok(a) => a,
        Err(e) => {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
            return Err(InstantError::Unreachable(if (200..300).contains(&status) {
                format!("unreadable answer ({e}): {text}")
            } else {
                format!("HTTP {status}: {}", text.trim())
            }));
        }
    };
    if answer.status != "success" {
        let what = format!(
            "HTTP {status}: {}: {}",
            answer.error_type.as_deref().unwrap_or("error"),
            answer.error.as_deref().unwrap_or("(no message)")
        );
        // Prometheus answers a query's own fault with 400 (bad_data) or 422 (execution); the
        // rest is the engine's (5xx, 503 while it starts) or the way to it (401/403: the
        // credentials, 429: a tenant's limits, 408/499: time), held off as unreachable.
        let engines = matches!(
            answer.error_type.as_deref(),
            Some("timeout" | "canceled" | "unavailable" | "internal")
        );
        return Err(if (status == 400 || status == 422) && !engines {
            InstantError::Failed(what)
        } else {
            InstantError::Unreachable(what)
        });
    }
    if answer.is_partial {
        return Err(InstantError::Unreachable(
            "a partial answer (isPartial: a storage node did not answer)".into(),
        ));
    }
    let warnings: Vec<&String> = answer
        .warnings
        .iter()
        .filter(|w| !(annotations && w.starts_with("PromQL ")))
        .collect();
    if !warnings.is_empty() {
        let joined: Vec<&str> = warnings.iter().map(|w| w.as_str()).collect();
        return Err(InstantError::Unreachable(format!(
            "an answer with warnings (it may be partial): {}",
            joined.join("; ")
        )));
    }
    answer
        .data
        .ok_or_else(|| InstantError::Unreachable("an answer without data".into()))
}

/// An answer of the query API: a matrix's series, or why not.
fn parse_matrix(status: u16, body: &[u8]) -> Result<Vec<SeriesData>, String> {
    let data = checked(status, body, false).map_err(|e| e.to_string())?;
    if data.result_type != "matrix" {
        return Err(format!(
            "a {} where a matrix of raw samples was asked for",
            data.result_type
        ));
    }
    let result: Vec<Series> =
        serde_json::from_value(data.result).map_err(|e| format!("unreadable matrix: {e}"))?;
    let mut out = Vec::with_capacity(result.len());
    for s in result {
        let labels = Labels::from_pairs(s.metric.iter());
        let mut samples = Vec::with_capacity(s.values.len());
        for (t, v) in s.values {
            let value = parse_value(&v).ok_or_else(|| format!("{labels}: value {v:?}"))?;
            samples.push(Sample::new(ms(t), value));
        }
        let mut parsed = Vec::with_capacity(s.histograms.len());
        for (t, h) in &s.histograms {
            let (h, shown) =
                parse_histogram_shown(h).map_err(|e| format!("{labels}: histogram: {e}"))?;
            parsed.push((ms(*t), h, shown));
        }
        // A sample that showed no zero bucket (or no bucket) has the series' threshold (or
        // schema) as its neighbours show it: the one before, else the first after. Assumed
        // defaults would read as a layout change, which is a counter reset.
        let known = |i: usize, pick: &dyn Fn(&(i64, FloatHistogram, Shown)) -> bool| {
            parsed[..i]
                .iter()
                .rev()
                .find(|x| pick(x))
                .or_else(|| parsed[i..].iter().find(|x| pick(x)))
                .map(|x| (x.1.zero_threshold, x.1.schema))
        };
        let mut histograms = Vec::with_capacity(parsed.len());
        for (i, (t, h, shown)) in parsed.iter().enumerate() {
            let (t, mut h, shown) = (*t, h.clone(), *shown);
            if !shown.zero {
                if let Some((zt, _)) = known(i, &|x| x.2.zero) {
                    h.zero_threshold = zt;
                }
            }
            if !shown.schema {
                if let Some((_, schema)) = known(i, &|x| x.2.schema) {
                    h.schema = schema;
                }
            }
            histograms.push(HSample::new(t, h));
        }
        out.push(SeriesData {
            labels,
            samples,
            histograms,
        });
    }
    Ok(out)
}

/// An instant query's answer: a vector (floats and native histograms), a scalar or a string.
fn parse_instant(status: u16, body: &[u8], t: i64) -> Result<Value, InstantError> {
    let data = checked(status, body, true)?;
    let bad =
        |e: String| InstantError::Unreachable(format!("unreadable {}: {e}", data.result_type));
    match data.result_type.as_str() {
        "vector" => {
            let result: Vec<Element> =
                serde_json::from_value(data.result.clone()).map_err(|e| bad(e.to_string()))?;
            let mut out = Vec::with_capacity(result.len());
            for e in result {
                let labels = Labels::from_pairs(e.metric.iter());
                let (f, h) = match (e.value, e.histogram) {
                    (Some((_, v)), None) => (
                        parse_value(&v).ok_or_else(|| bad(format!("{labels}: value {v:?}")))?,
                        None,
                    ),
                    (None, Some((_, h))) => (
                        0.0,
                        Some(Arc::new(
                            parse_histogram(&h)
                                .map_err(|e| bad(format!("{labels}: histogram: {e}")))?,
                        )),
                    ),
                    _ => return Err(bad(format!("{labels}: neither a value nor a histogram"))),
                };
                out.push(VectorSample {
                    labels,
                    t,
                    f,
                    h,
                    drop_name: false,
                });
            }
            Ok(Value::Vector(out))
        }
        "scalar" | "string" => {
            let (_, v): (f64, String) =
                serde_json::from_value(data.result.clone()).map_err(|e| bad(e.to_string()))?;
            if data.result_type == "string" {
                return Ok(Value::String(v));
            }
            parse_value(&v)
                .map(Value::Scalar)
                .ok_or_else(|| bad(format!("value {v:?}")))
        }
        other => Err(InstantError::Failed(format!(
            "a {other} where an instant vector or a scalar was asked for"
        ))),
    }
}

/// The API's seconds (`1700000000.123`) as milliseconds.
fn ms(t: f64) -> i64 {
    (t * 1000.0).round() as i64
}

/// The default zero threshold of Prometheus's clients (2^-128): the one assumed when an answer
/// shows no zero bucket (the API leaves empty buckets out, the zero bucket with them).
const DEFAULT_ZERO_THRESHOLD: f64 = 2.938_735_877_055_719e-39;

/// A native histogram as the query API writes it: `{"count", "sum", "buckets": [[boundary rule,
/// "lower", "upper", "count"], …]}`, populated buckets only. The schema is read back from the
/// buckets' bounds (each a power of `2^(2^-schema)`), the zero threshold from the zero bucket.
/// What the API does not carry is assumed: a histogram without a bucket has the finest schema
/// (so that it never coarsens a sum), no zero bucket means the clients' default threshold, and
/// the counter-reset hint is unknown (resets are detected from the counts, as Prometheus does
/// for a chunk's first histogram).
pub fn parse_histogram(v: &serde_json::Value) -> Result<FloatHistogram, String> {
    parse_histogram_shown(v).map(|(h, _)| h)
}

/// What an answer showed of a histogram's layout: a zero bucket (its threshold), and regular
/// buckets (its schema). What it did not show is taken from the series' other samples.
#[derive(Clone, Copy, Default)]
struct Shown {
    zero: bool,
    schema: bool,
}

fn parse_histogram_shown(v: &serde_json::Value) -> Result<(FloatHistogram, Shown), String> {
    let mut shown = Shown::default();
    let num = |v: &serde_json::Value, what: &str| -> Result<f64, String> {
        v.as_str()
            .and_then(parse_value)
            .ok_or_else(|| format!("{what}: {v}"))
    };
    let mut h = FloatHistogram {
        count: num(&v["count"], "count")?,
        sum: num(&v["sum"], "sum")?,
        zero_threshold: DEFAULT_ZERO_THRESHOLD,
        schema: 8,
        ..Default::default()
    };
    let buckets = match &v["buckets"] {
        serde_json::Value::Null => &Vec::new(),
        serde_json::Value::Array(b) => b,
        other => return Err(format!("buckets: {other}")),
    };
    // (upper bound's magnitude, magnitude of the lower one, count, positive)
    let mut regular: Vec<(f64, f64, f64, bool)> = Vec::new();
    for b in buckets {
        let parts = b.as_array().filter(|p| p.len() == 4);
        let Some(p) = parts else {
            return Err(format!("bucket {b}"));
        };
        let (lower, upper, count) = (
            num(&p[1], "lower")?,
            num(&p[2], "upper")?,
            num(&p[3], "count")?,
        );
        let rule = p[0].as_u64();
        if lower <= 0.0 && upper >= 0.0 {
            // The zero bucket: closed, symmetric, finite. Anything else spanning zero is a
            // custom bucket (its first is (-Inf, b]).
            if rule != Some(3) || lower != -upper || !upper.is_finite() {
                return Err(format!(
                    "bucket ({lower}, {upper}] is not one of an exponential schema (custom buckets are not read)"
                ));
            }
            h.zero_threshold = upper;
            h.zero_count = count;
            shown.zero = true;
        } else if lower > 0.0 {
            regular.push((upper, lower, count, true));
        } else {
            regular.push((-lower, -upper, count, false));
        }
    }
    if let Some(&(upper, lower, _, _)) = regular.first() {
        // upper / lower = 2^(2^-schema)
        let schema = -(upper / lower).log2().log2().round();
        if !(-4.0..=8.0).contains(&schema) {
            return Err(format!(
                "bucket ({lower}, {upper}] is not one of an exponential schema (custom buckets are not read)"
            ));
        }
        h.schema = schema as i32;
        shown.schema = true;
    }
    let mut pos: Vec<(i32, f64)> = Vec::new();
    let mut neg: Vec<(i32, f64)> = Vec::new();
    for (upper, lower, count, positive) in regular {
        let index = (upper.log2() * f64::from(1u32 << (h.schema + 4)) / 16.0).round() as i32;
        let want = exponential_bound(index, h.schema);
        let below = exponential_bound(index - 1, h.schema);
        if (want - upper).abs() > upper * 1e-9 || (below - lower).abs() > lower * 1e-9 {
            return Err(format!(
                "bucket ({lower}, {upper}] is not one of an exponential schema (custom buckets are not read)"
            ));
        }
        if positive {
            pos.push((index, count));
        } else {
            neg.push((index, count));
        }
    }
    (h.positive_spans, h.positive_buckets) = spans(pos);
    (h.negative_spans, h.negative_buckets) = spans(neg);
    Ok((h, shown))
}

/// Buckets by index as spans and counts.
fn spans(mut buckets: Vec<(i32, f64)>) -> (Vec<Span>, Vec<f64>) {
    buckets.sort_by_key(|b| b.0);
    let mut spans: Vec<Span> = Vec::new();
    let mut counts = Vec::with_capacity(buckets.len());
    let mut next = 0i32; // the index after the last bucket placed
    for (i, (index, count)) in buckets.into_iter().enumerate() {
        match spans.last_mut() {
            Some(s) if index == next => s.length += 1,
            _ => spans.push(Span {
                offset: if i == 0 { index } else { index - next },
                length: 1,
            }),
        }
        counts.push(count);
        next = index + 1;
    }
    (spans, counts)
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
        assert_eq!(got[0].labels.to_string(), r#"up{job="a"}"#);
        let ts: Vec<i64> = got[0].samples.iter().map(|s| s.timestamp_ms).collect();
        assert_eq!(
            ts,
            vec![1_700_000_000_123, 1_700_000_015_000, 1_700_000_030_500]
        );
        assert!(got[0].samples[1].value.is_nan() && got[0].samples[2].value == f64::INFINITY);

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
        assert!(e.contains("count"), "{e}");
    }

    #[test]
    fn histograms_read_back_as_prometheus_wrote_them() {
        use vigil_wire::histogram::FloatHistogram;
        // The histogram of Prometheus's own JSON tests (web/api/v1), and one of schema 3 with
        // a gap, negative buckets and a zero bucket: each written as Prometheus's API writes
        // it (populated buckets, bounds and boundary rules), then read back.
        for notation in [
            "{{schema:0 count:10 sum:20 z_bucket:3 z_bucket_w:0.001 buckets:[1 2] n_buckets:[4]}}",
            "{{schema:3 count:46 sum:23.75 z_bucket:2 z_bucket_w:0.001 offset:-4 buckets:[3 5 4 5 9 6 9] n_buckets:[1 2]}}",
            // No zero bucket shown: the clients' default threshold is assumed.
            "{{schema:-2 count:3 sum:1e6 z_bucket_w:2.938735877055719e-39 offset:3 buckets:[1 0 0 2]}}",
        ] {
            let (want, _) = FloatHistogram::parse_notation(notation).expect("notation");
            let mut buckets = Vec::new();
            for b in want.all_buckets() {
                if b.count == 0.0 {
                    continue;
                }
                let rule = if b.lower < 0.0 && b.upper > 0.0 {
                    3
                } else if b.upper <= 0.0 {
                    1
                } else {
                    0
                };
                buckets.push(serde_json::json!([
                    rule,
                    b.lower.to_string(),
                    b.upper.to_string(),
                    b.count.to_string()
                ]));
            }
            let json = serde_json::json!({
                "count": want.count.to_string(),
                "sum": want.sum.to_string(),
                "buckets": buckets,
            });
            let mut got = parse_histogram(&json).unwrap_or_else(|e| panic!("{notation}: {e}"));
            let mut want = want;
            want.compact(0);
            got.compact(0);
            assert!(got.equals(&want), "{notation}\n{got:?}\n{want:?}");
        }
        // Custom bounds (not a power of an exponential base) are refused, not misread.
        let e = parse_histogram(&serde_json::json!({"count": "1", "sum": "1",
            "buckets": [[0, "1", "3", "1"]]}))
        .unwrap_err();
        assert!(e.contains("custom"), "{e}");
    }

    #[test]
    fn a_series_layout_comes_from_its_other_samples() {
        // The first sample shows no bucket at all: its zero threshold and schema are the
        // second's, so the two read as one layout (no counter reset between them).
        let body = br#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"__name__":"h"},"histograms":[
            [1,{"count":"0","sum":"0"}],
            [2,{"count":"3","sum":"1","buckets":[[3,"-0.001","0.001","1"],[0,"0.5","0.5946035575013605","2"]]}]]}]}}"#;
        let got = parse_matrix(200, body).unwrap();
        let h = &got[0].histograms;
        assert_eq!((h[0].h.zero_threshold, h[0].h.schema), (0.001, 2));
        assert_eq!((h[1].h.zero_threshold, h[1].h.schema), (0.001, 2));
        assert!(!h[1].h.detect_reset(&h[0].h));
        // A custom bucket spanning zero is not taken for the zero bucket.
        let e = parse_histogram(&serde_json::json!({"count": "1", "sum": "1",
            "buckets": [[0, "-Inf", "0.5", "1"]]}))
        .unwrap_err();
        assert!(e.contains("custom"), "{e}");
    }

    #[test]
    fn instant_answers() {
        let v = parse_instant(
            200,
            br#"{"status":"success","warnings":["PromQL info: metric might not be a counter"],"data":{"resultType":"vector","result":[
                {"metric":{"job":"a"},"value":[1700000000,"0.5"]},
                {"metric":{"job":"b"},"histogram":[1700000000,{"count":"2","sum":"3","buckets":[[0,"1","2","2"]]}]}]}}"#,
            1_700_000_000_000,
        )
        .unwrap();
        let Value::Vector(v) = v else { panic!("{v:?}") };
        assert_eq!(v.len(), 2);
        assert_eq!(
            (v[0].labels.to_string().as_str(), v[0].f),
            (r#"{job="a"}"#, 0.5)
        );
        assert_eq!(v[1].h.as_ref().map(|h| h.count), Some(2.0));
        assert_eq!(
            parse_instant(
                200,
                br#"{"status":"success","data":{"resultType":"scalar","result":[1,"+Inf"]}}"#,
                1
            ),
            Ok(Value::Scalar(f64::INFINITY))
        );
        // A query's fault is the query's; a storage warning or a 5xx is the engine's.
        let e = parse_instant(
            422,
            br#"{"status":"error","errorType":"execution","error":"many-to-many matching not allowed"}"#,
            1,
        );
        assert!(
            matches!(e, Err(InstantError::Failed(ref m)) if m.contains("many-to-many")),
            "{e:?}"
        );
        let e = parse_instant(
            200,
            br#"{"status":"success","warnings":["store b unavailable"],"data":{"resultType":"scalar","result":[1,"1"]}}"#,
            1,
        );
        assert!(matches!(e, Err(InstantError::Unreachable(_))), "{e:?}");
        let e = parse_instant(503, b"starting", 1);
        assert!(matches!(e, Err(InstantError::Unreachable(_))), "{e:?}");
        // A tenant's limit or credentials are the way to the engine, not the query.
        for status in [401, 403, 429] {
            let e = parse_instant(
                status,
                br#"{"status":"error","errorType":"bad_data","error":"no"}"#,
                1,
            );
            assert!(
                matches!(e, Err(InstantError::Unreachable(_))),
                "{status}: {e:?}"
            );
        }
    }
}
