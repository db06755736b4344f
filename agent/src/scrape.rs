//! Scraping the application's Prometheus or OpenMetrics endpoint: content negotiation like
//! Prometheus, gzip, a timeout, and a per-target series limit (over it the whole scrape is
//! dropped, counted, and logged once).

use std::io::Read;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use vigil_wire::text::{self, Format};
use vigil_wire::{Labels, Sample};

use crate::config::ScrapeTarget;
use crate::http::Http;

const ACCEPT: &str = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
/// Largest scrape body read (compressed and decompressed).
const MAX_BODY: usize = 64 << 20;

pub struct ScrapeResult {
    pub samples: Vec<(Labels, Sample)>,
    pub up: bool,
    pub duration: Duration,
    pub limit_exceeded: bool,
    pub error: Option<String>,
}

/// Scrapes one target at `now_ms` (the timestamp of samples that carry none).
pub async fn scrape(http: &Http, t: &ScrapeTarget, now_ms: i64) -> ScrapeResult {
    let started = Instant::now();
    let timeout = Duration::from_millis(t.timeout_ms);
    let timeout_secs = format!("{}", t.timeout_ms as f64 / 1000.0);
    let fail = |e: String| ScrapeResult {
        samples: vec![],
        up: false,
        duration: started.elapsed(),
        limit_exceeded: false,
        error: Some(e),
    };
    let resp = match http
        .request(
            Method::GET,
            &t.url,
            &[
                ("Accept", ACCEPT),
                ("Accept-Encoding", "gzip"),
                ("X-Prometheus-Scrape-Timeout-Seconds", &timeout_secs),
            ],
            Bytes::new(),
            timeout,
            MAX_BODY,
        )
        .await
    {
        Ok(r) => r,
        Err(e) => return fail(e.to_string()),
    };
    if !resp.status.is_success() {
        return fail(format!("HTTP status {}", resp.status));
    }
    let gz = resp
        .headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let body = if gz {
        let mut out = Vec::new();
        match flate2::read::GzDecoder::new(&resp.body[..])
            .take(MAX_BODY as u64 + 1)
            .read_to_end(&mut out)
        {
            Ok(n) if n <= MAX_BODY => out,
            Ok(_) => return fail(format!("decompressed body larger than {MAX_BODY} bytes")),
            Err(e) => return fail(format!("gzip: {e}")),
        }
    } else {
        resp.body.to_vec()
    };
    let ct = resp
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let format = Format::from_content_type(ct);
    let Ok(body) = std::str::from_utf8(&body) else {
        return fail("body is not UTF-8".into());
    };
    let exp = match text::parse(body, format) {
        Ok(e) => e,
        Err(e) => return fail(format!("parse: {e}")),
    };
    if exp.samples.len() > t.series_limit {
        return ScrapeResult {
            samples: vec![],
            up: false,
            duration: started.elapsed(),
            limit_exceeded: true,
            error: Some(format!(
                "{} series exceed the limit of {}",
                exp.samples.len(),
                t.series_limit
            )),
        };
    }
    let samples = exp
        .samples
        .into_iter()
        .map(|s| {
            (
                s.labels,
                Sample::new(s.timestamp_ms.unwrap_or(now_ms), s.value),
            )
        })
        .collect();
    ScrapeResult {
        samples,
        up: true,
        duration: started.elapsed(),
        limit_exceeded: false,
        error: None,
    }
}
