//! Scraping the application's Prometheus or OpenMetrics endpoint: content negotiation like
//! Prometheus, gzip, a timeout, and a per-target series limit (over it the whole scrape is
//! dropped, counted, and logged once).

use std::collections::HashMap;
use std::io::Read;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use vigil_wire::exposition_pb;
use vigil_wire::histogram::HSample;
use vigil_wire::text::{self, Format};
use vigil_wire::{Labels, Sample};

use crate::config::ScrapeTarget;
use crate::http::Http;

/// Adds the agent's labels to a scraped series; a scraped label of the same name is kept as
/// `exported_<name>`, as Prometheus does with `honor_labels: false`.
pub fn with_target_labels(l: &Labels, target: &[(String, String)]) -> Labels {
    let mut b = l.to_builder();
    for (k, v) in target {
        if let Some(old) = l.get(k) {
            if old != v {
                b.set(format!("exported_{k}"), old.to_string());
            }
        }
        b.set(k.clone(), v.clone());
    }
    b.build()
}

/// A sample timestamp as each format writes it (milliseconds, or seconds in OpenMetrics).
fn parse_ts(t: &str, format: Format) -> Option<i64> {
    match format {
        Format::Prometheus => t.parse::<i64>().ok(),
        Format::OpenMetrics => text::parse_float(t)
            .filter(|v| v.is_finite())
            .map(|s| (s * 1000.0).round() as i64),
    }
}

const ACCEPT: &str = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
/// With native histograms: the protobuf exposition first, as Prometheus asks for it.
const ACCEPT_PROTOBUF: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6,application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
/// Largest scrape body read (compressed and decompressed).
const MAX_BODY: usize = 64 << 20;

/// Per-series limits a receiver enforces (the aggregator's defaults): a series beyond them is
/// dropped here, alone, rather than have the receiver refuse the whole batch it travels in.
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_NAME: usize = 256;
pub const MAX_LABEL_VALUE: usize = 4096;

fn oversized(l: &Labels) -> bool {
    l.len() > MAX_LABELS
        || l.iter()
            .any(|x| x.name.len() > MAX_LABEL_NAME || x.value.len() > MAX_LABEL_VALUE)
}

/// A parsed scrape: the samples kept, and how many series were dropped as oversized.
type Parsed = (Vec<(Labels, Sample)>, usize);

pub struct ScrapeResult {
    pub samples: Vec<(Labels, Sample)>,
    /// Native histograms (from the protobuf exposition).
    pub histograms: Vec<(Labels, HSample)>,
    /// Series dropped for exceeding the per-series limits.
    pub oversized: usize,
    pub up: bool,
    pub duration: Duration,
    pub limit_exceeded: bool,
    pub error: Option<String>,
}

/// One scrape target with its label cache: the final label set (target labels applied) of each
/// series, keyed by the series text as the application writes it, so a steady endpoint costs a
/// hash lookup per line instead of a parse and a label-set build.
pub struct Scraper {
    pub target: ScrapeTarget,
    target_labels: Vec<(String, String)>,
    cache: HashMap<String, (Labels, u64)>,
    generation: u64,
}

impl Scraper {
    pub fn new(target: ScrapeTarget, target_labels: Vec<(String, String)>) -> Self {
        Scraper {
            target,
            target_labels,
            cache: HashMap::new(),
            generation: 0,
        }
    }

    /// Scrapes once at `now_ms` (the timestamp of samples that carry none).
    pub async fn scrape(&mut self, http: &Http, now_ms: i64) -> ScrapeResult {
        let started = Instant::now();
        let t = &self.target;
        let fail = |e: String| ScrapeResult {
            samples: vec![],
            histograms: vec![],
            oversized: 0,
            up: false,
            duration: started.elapsed(),
            limit_exceeded: false,
            error: Some(e),
        };
        let timeout = Duration::from_millis(t.timeout_ms);
        let timeout_secs = format!("{}", t.timeout_ms as f64 / 1000.0);
        let resp = match http
            .request(
                Method::GET,
                &t.url,
                &[
                    (
                        "Accept",
                        if t.native_histograms {
                            ACCEPT_PROTOBUF
                        } else {
                            ACCEPT
                        },
                    ),
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
        let decoded;
        let raw: &[u8] = if gz {
            let mut out = Vec::new();
            match flate2::read::GzDecoder::new(&resp.body[..])
                .take(MAX_BODY as u64 + 1)
                .read_to_end(&mut out)
            {
                Ok(n) if n <= MAX_BODY => {
                    decoded = out;
                    &decoded
                }
                Ok(_) => return fail(format!("decompressed body larger than {MAX_BODY} bytes")),
                Err(e) => return fail(format!("gzip: {e}")),
            }
        } else {
            &resp.body
        };
        let ct = resp
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let parsed = if exposition_pb::is_protobuf(ct) {
            self.parse_protobuf(raw, now_ms)
        } else {
            let format = Format::from_content_type(ct);
            let Ok(body) = std::str::from_utf8(raw) else {
                return fail("body is not UTF-8".into());
            };
            self.parse(body, format, now_ms)
                .map(|(samples, oversized)| (samples, vec![], oversized))
        };
        match parsed {
            Ok((samples, histograms, oversized)) => ScrapeResult {
                samples,
                histograms,
                oversized,
                up: true,
                duration: started.elapsed(),
                limit_exceeded: false,
                error: None,
            },
            Err((limit, e)) => ScrapeResult {
                limit_exceeded: limit,
                ..fail(e)
            },
        }
    }

    /// Parses a protobuf exposition body: every series gets the target labels; the series limit
    /// counts histograms too.
    #[allow(clippy::type_complexity)]
    fn parse_protobuf(
        &self,
        body: &[u8],
        now_ms: i64,
    ) -> Result<(Vec<(Labels, Sample)>, Vec<(Labels, HSample)>, usize), (bool, String)> {
        let scraped = exposition_pb::parse(body, now_ms).map_err(|e| (false, e))?;
        if scraped.floats.len() + scraped.histograms.len() > self.target.series_limit {
            return Err((
                true,
                format!("more than {} series (the limit)", self.target.series_limit),
            ));
        }
        let mut dropped = 0;
        let mut label = |l: &Labels| {
            let l = with_target_labels(l, &self.target_labels);
            if oversized(&l) {
                dropped += 1;
                None
            } else {
                Some(l)
            }
        };
        let floats: Vec<(Labels, Sample)> = scraped
            .floats
            .iter()
            .filter_map(|(l, s)| Some((label(l)?, *s)))
            .collect();
        let hists: Vec<(Labels, HSample)> = scraped
            .histograms
            .into_iter()
            .filter_map(|(l, h)| Some((label(&l)?, h)))
            .collect();
        Ok((floats, hists, dropped))
    }

    /// Parses a body, using and refreshing the label cache. Errors say whether the series limit
    /// was the cause.
    fn parse(&mut self, body: &str, format: Format, now_ms: i64) -> Result<Parsed, (bool, String)> {
        self.generation += 1;
        let generation = self.generation;
        let mut out = Vec::with_capacity(self.cache.len().max(16));
        let mut saw_eof = false;
        let mut dropped = 0usize;
        for (i, line) in body.lines().enumerate() {
            if format == Format::OpenMetrics && line == "# EOF" {
                saw_eof = true;
                break;
            }
            let Some((series, rest)) = text::split_series(line) else {
                continue;
            };
            if out.len() >= self.target.series_limit {
                return Err((
                    true,
                    format!("more than {} series (the limit)", self.target.series_limit),
                ));
            }
            let bad = |what: &str| (false, format!("line {}: invalid {what}", i + 1));
            // The fast path: a known series without an exemplar.
            if !rest.contains('#') {
                if let Some(entry) = self.cache.get_mut(series) {
                    entry.1 = generation;
                    let mut f = rest.split_ascii_whitespace();
                    let value = f
                        .next()
                        .and_then(text::parse_float)
                        .ok_or_else(|| bad("value"))?;
                    let ts = match f.next() {
                        None => now_ms,
                        Some(t) => parse_ts(t, format).ok_or_else(|| bad("timestamp"))?,
                    };
                    if f.next().is_some() {
                        return Err(bad("trailing text"));
                    }
                    out.push((entry.0.clone(), Sample::new(ts, value)));
                    continue;
                }
            }
            let p = text::parse_line(line, format)
                .map_err(|e| (false, format!("line {}: {}", i + 1, e.message)))?;
            let labels = match self.cache.get_mut(series) {
                Some(e) => {
                    e.1 = generation;
                    e.0.clone()
                }
                None => {
                    let l = with_target_labels(&p.labels, &self.target_labels);
                    if oversized(&l) {
                        dropped += 1;
                        continue;
                    }
                    self.cache
                        .insert(series.to_string(), (l.clone(), generation));
                    l
                }
            };
            out.push((
                labels,
                Sample::new(p.timestamp_ms.unwrap_or(now_ms), p.value),
            ));
        }
        if format == Format::OpenMetrics && !saw_eof {
            return Err((
                false,
                "OpenMetrics exposition does not end with # EOF".into(),
            ));
        }
        // Forget series not seen for a while (an app that relabels must not grow the cache).
        if generation.is_multiple_of(16) {
            self.cache.retain(|_, (_, g)| generation - *g < 16);
        }
        Ok((out, dropped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scraper(limit: usize) -> Scraper {
        let t = ScrapeTarget {
            url: "http://x/metrics".into(),
            timeout_ms: 1000,
            series_limit: limit,
            native_histograms: true,
        };
        Scraper::new(t, vec![("instance".into(), "i-1".into())])
    }

    #[test]
    fn protobuf_expositions_give_native_histograms_with_the_target_labels() {
        use vigil_wire::exposition_pb::{encode, BucketSpan, Histogram, Metric, MetricFamily};
        let body = encode(&[MetricFamily {
            name: "rpc_seconds".into(),
            r#type: 4,
            metric: vec![Metric {
                histogram: Some(Histogram {
                    sample_count: 3,
                    sample_sum: 1.0,
                    schema: 2,
                    positive_span: vec![BucketSpan {
                        offset: 0,
                        length: 2,
                    }],
                    positive_delta: vec![1, 1],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }]);
        let (floats, hists, dropped) = scraper(10).parse_protobuf(&body, 7).unwrap();
        assert!(floats.is_empty() && dropped == 0);
        assert_eq!(hists[0].0.to_string(), "rpc_seconds{instance=\"i-1\"}");
        assert_eq!((hists[0].1.timestamp_ms, hists[0].1.h.count), (7, 3.0));
        // Over the series limit: the whole scrape goes, said to be the limit.
        assert!(scraper(0).parse_protobuf(&body, 7).unwrap_err().0);
        // Garbage: an error, not a guess.
        assert!(!scraper(10).parse_protobuf(b"\x05ab", 7).unwrap_err().0);
    }

    #[test]
    fn cached_and_fresh_parses_agree() {
        let body = "# TYPE a counter\na{x=\"1\"} 5\na{x=\"2\",instance=\"app\"} 7 1000\nb 1.5\n";
        let mut s = scraper(100);
        let first = s.parse(body, Format::Prometheus, 42).unwrap().0;
        let second = s.parse(body, Format::Prometheus, 42).unwrap().0;
        assert_eq!(first, second);
        assert_eq!(first[1].0.get("exported_instance"), Some("app"));
        assert_eq!(first[1].0.get("instance"), Some("i-1"));
        assert_eq!(first[1].1, Sample::new(1000, 7.0));
        assert_eq!(first[0].1, Sample::new(42, 5.0));
    }

    #[test]
    fn limit_and_bad_lines() {
        let mut s = scraper(2);
        let e = s
            .parse("a 1\nb 2\nc 3\n", Format::Prometheus, 0)
            .unwrap_err();
        assert!(e.0, "limit");
        let mut s = scraper(10);
        s.parse("a 1\n", Format::Prometheus, 0).unwrap();
        let e = s.parse("a one\n", Format::Prometheus, 0).unwrap_err();
        assert!(!e.0 && e.1.contains("line 1"), "{e:?}");
        assert!(
            s.parse("a 1\n", Format::OpenMetrics, 0).is_err(),
            "missing # EOF"
        );
        assert_eq!(
            s.parse("a 1 1.5\n# EOF\n", Format::OpenMetrics, 0)
                .unwrap()
                .0[0]
                .1
                .timestamp_ms,
            1500
        );
        // One oversized series is dropped alone.
        let long = "x".repeat(MAX_LABEL_VALUE + 1);
        let (kept, dropped) = s
            .parse(
                &format!("ok 1\nbig{{v=\"{long}\"}} 2\n"),
                Format::Prometheus,
                0,
            )
            .unwrap();
        assert_eq!((kept.len(), dropped), (1, 1));
    }
}
