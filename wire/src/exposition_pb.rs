//! The protobuf exposition format (`io.prometheus.client.MetricFamily`, length-delimited), the
//! one that carries native histograms: what an application instrumented with a Prometheus
//! client library answers when asked for
//! `application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited`.
//!
//! Declared with `prost` derives (field numbers from `io/prometheus/client/metrics.proto`), and
//! turned into series as Prometheus's scraper does: counters, gauges and untyped as one series;
//! summaries as `{quantile}`, `_sum` and `_count`; histograms as one native histogram when they
//! carry one (a schema, spans or a zero bucket), else as classic `_bucket{le}`, `_sum`, `_count`.

use prost::Message;

use crate::histogram::{FloatHistogram, HSample};
use crate::labels::{Labels, LabelsBuilder};
use crate::sample::Sample;

/// The media type this module reads (and an `Accept` header's first choice).
pub const CONTENT_TYPE: &str =
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";

#[derive(Clone, PartialEq, Message)]
pub struct LabelPair {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, Copy, PartialEq, Message)]
pub struct Value {
    #[prost(double, tag = "1")]
    pub value: f64,
}

#[derive(Clone, Copy, PartialEq, Message)]
pub struct Quantile {
    #[prost(double, tag = "1")]
    pub quantile: f64,
    #[prost(double, tag = "2")]
    pub value: f64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Summary {
    #[prost(uint64, tag = "1")]
    pub sample_count: u64,
    #[prost(double, tag = "2")]
    pub sample_sum: f64,
    #[prost(message, repeated, tag = "3")]
    pub quantile: Vec<Quantile>,
}

#[derive(Clone, Copy, PartialEq, Message)]
pub struct Bucket {
    #[prost(uint64, tag = "1")]
    pub cumulative_count: u64,
    #[prost(double, tag = "2")]
    pub upper_bound: f64,
    #[prost(double, tag = "4")]
    pub cumulative_count_float: f64,
}

/// `BucketSpan`: the same message as remote-write's.
pub use crate::rw_histogram::BucketSpan;

#[derive(Clone, PartialEq, Message)]
pub struct Histogram {
    #[prost(uint64, tag = "1")]
    pub sample_count: u64,
    #[prost(double, tag = "4")]
    pub sample_count_float: f64,
    #[prost(double, tag = "2")]
    pub sample_sum: f64,
    #[prost(message, repeated, tag = "3")]
    pub bucket: Vec<Bucket>,
    #[prost(sint32, tag = "5")]
    pub schema: i32,
    #[prost(double, tag = "6")]
    pub zero_threshold: f64,
    #[prost(uint64, tag = "7")]
    pub zero_count: u64,
    #[prost(double, tag = "8")]
    pub zero_count_float: f64,
    #[prost(message, repeated, tag = "9")]
    pub negative_span: Vec<BucketSpan>,
    #[prost(sint64, repeated, packed = "false", tag = "10")]
    pub negative_delta: Vec<i64>,
    #[prost(double, repeated, packed = "false", tag = "11")]
    pub negative_count: Vec<f64>,
    #[prost(message, repeated, tag = "12")]
    pub positive_span: Vec<BucketSpan>,
    #[prost(sint64, repeated, packed = "false", tag = "13")]
    pub positive_delta: Vec<i64>,
    #[prost(double, repeated, packed = "false", tag = "14")]
    pub positive_count: Vec<f64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Metric {
    #[prost(message, repeated, tag = "1")]
    pub label: Vec<LabelPair>,
    #[prost(message, optional, tag = "2")]
    pub gauge: Option<Value>,
    #[prost(message, optional, tag = "3")]
    pub counter: Option<Value>,
    #[prost(message, optional, tag = "4")]
    pub summary: Option<Summary>,
    #[prost(message, optional, tag = "5")]
    pub untyped: Option<Value>,
    #[prost(message, optional, tag = "7")]
    pub histogram: Option<Histogram>,
    #[prost(int64, tag = "6")]
    pub timestamp_ms: i64,
}

/// `MetricType`: counter 0, gauge 1, summary 2, untyped 3, histogram 4, gauge histogram 5.
#[derive(Clone, PartialEq, Message)]
pub struct MetricFamily {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub help: String,
    #[prost(int32, tag = "3")]
    pub r#type: i32,
    #[prost(message, repeated, tag = "4")]
    pub metric: Vec<Metric>,
}

/// What a body gave: float samples and native histograms, each with its labels.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Scraped {
    pub floats: Vec<(Labels, Sample)>,
    pub histograms: Vec<(Labels, HSample)>,
}

/// Whether the histogram carries a native one (a client library marks an empty native
/// histogram with a span of no buckets).
fn is_native(h: &Histogram) -> bool {
    h.schema != 0
        || h.zero_threshold > 0.0
        || h.zero_count > 0
        || h.zero_count_float > 0.0
        || !h.negative_span.is_empty()
        || !h.positive_span.is_empty()
}

/// Integer deltas or float counts as absolute counts.
fn counts(deltas: &[i64], floats: &[f64]) -> Result<Vec<f64>, String> {
    if !floats.is_empty() {
        return Ok(floats.to_vec());
    }
    let mut acc = 0i64;
    deltas
        .iter()
        .map(|d| {
            acc = acc.checked_add(*d).ok_or("bucket count overflows")?;
            Ok(acc as f64)
        })
        .collect()
}

/// The native histogram of a message, checked as a received one is (integer ones too: their
/// buckets must hold their count).
pub fn native(h: &Histogram, gauge: bool) -> Result<FloatHistogram, String> {
    use crate::rw_histogram::{Count, Histogram as Rw, ZeroCount};
    let float = h.sample_count_float > 0.0 || h.zero_count_float > 0.0;
    let mut msg = Rw {
        sum: h.sample_sum,
        schema: h.schema,
        zero_threshold: h.zero_threshold,
        negative_spans: h.negative_span.clone(),
        positive_spans: h.positive_span.clone(),
        reset_hint: if gauge { 3 } else { 0 },
        ..Default::default()
    };
    if float {
        msg.count = Some(Count::Float(h.sample_count_float));
        msg.zero_count = Some(ZeroCount::Float(h.zero_count_float));
        msg.positive_counts = counts(&h.positive_delta, &h.positive_count)?;
        msg.negative_counts = counts(&h.negative_delta, &h.negative_count)?;
    } else {
        msg.count = Some(Count::Int(h.sample_count));
        msg.zero_count = Some(ZeroCount::Int(h.zero_count));
        msg.positive_deltas = h.positive_delta.clone();
        msg.negative_deltas = h.negative_delta.clone();
    }
    msg.to_float()
}

/// Reads a length-delimited sequence of `MetricFamily` messages into series, samples without a
/// timestamp stamped `now_ms`.
pub fn parse(body: &[u8], now_ms: i64) -> Result<Scraped, String> {
    let mut out = Scraped::default();
    let mut rest = body;
    let mut n = 0usize;
    while !rest.is_empty() {
        let mf = MetricFamily::decode_length_delimited(&mut rest)
            .map_err(|e| format!("metric family {n}: {e}"))?;
        n += 1;
        add_family(&mf, now_ms, &mut out)
            .map_err(|e| format!("metric family {:?}: {e}", mf.name))?;
    }
    Ok(out)
}

fn add_family(mf: &MetricFamily, now_ms: i64, out: &mut Scraped) -> Result<(), String> {
    for m in &mf.metric {
        let ts = if m.timestamp_ms != 0 {
            m.timestamp_ms
        } else {
            now_ms
        };
        let labels = |suffix: &str, extra: Option<(&str, String)>| -> Result<Labels, String> {
            let mut b = LabelsBuilder::new();
            for l in &m.label {
                if !crate::text::is_valid_label_name(&l.name) || l.name == crate::METRIC_NAME {
                    return Err(format!("invalid label name {:?}", l.name));
                }
                b.set(l.name.clone(), l.value.clone());
            }
            if let Some((k, v)) = extra {
                b.set(k.to_string(), v);
            }
            b.set(crate::METRIC_NAME, format!("{}{suffix}", mf.name));
            Ok(b.build())
        };
        let mut float =
            |suffix: &str, extra: Option<(&str, String)>, v: f64| -> Result<(), String> {
                out.floats
                    .push((labels(suffix, extra)?, Sample::new(ts, v)));
                Ok(())
            };
        match mf.r#type {
            0 => float("", None, m.counter.map_or(0.0, |c| c.value))?,
            1 => float("", None, m.gauge.map_or(0.0, |g| g.value))?,
            2 => {
                let s = m.summary.clone().unwrap_or_default();
                for q in &s.quantile {
                    let spelled = open_metrics_float(q.quantile);
                    float("", Some(("quantile", spelled)), q.value)?;
                }
                float("_sum", None, s.sample_sum)?;
                float("_count", None, s.sample_count as f64)?;
            }
            4 | 5 => {
                let h = m.histogram.clone().unwrap_or_default();
                if is_native(&h) {
                    let fh = native(&h, mf.r#type == 5)?;
                    out.histograms
                        .push((labels("", None)?, HSample::new(ts, fh)));
                } else {
                    let float_counts = h.sample_count_float > 0.0;
                    let mut inf = false;
                    for b in &h.bucket {
                        inf |= b.upper_bound == f64::INFINITY;
                        let c = if float_counts {
                            b.cumulative_count_float
                        } else {
                            b.cumulative_count as f64
                        };
                        let le = open_metrics_float(b.upper_bound);
                        float("_bucket", Some(("le", le)), c)?;
                    }
                    let count = if float_counts {
                        h.sample_count_float
                    } else {
                        h.sample_count as f64
                    };
                    if !inf {
                        float("_bucket", Some(("le", "+Inf".into())), count)?;
                    }
                    float("_sum", None, h.sample_sum)?;
                    float("_count", None, count)?;
                }
            }
            _ => float("", None, m.untyped.map_or(0.0, |u| u.value))?,
        }
    }
    Ok(())
}

/// A float as a label value, spelled as the text formats' bodies usually spell it (`1`,
/// `0.25`, `+Inf`): switching a target between the formats keeps its series' identities.
fn open_metrics_float(v: f64) -> String {
    crate::text::format_float(v)
}

/// Whether a `Content-Type` is the protobuf exposition.
pub fn is_protobuf(content_type: &str) -> bool {
    let ct = content_type.to_ascii_lowercase();
    ct.starts_with("application/vnd.google.protobuf")
        && ct.contains("proto=io.prometheus.client.metricfamily")
}

/// Encodes families as an exposition body (for tests and fixtures).
pub fn encode(families: &[MetricFamily]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in families {
        // Encoding into a Vec cannot run out of room.
        let _ = f.encode_length_delimited(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native_family() -> MetricFamily {
        MetricFamily {
            name: "rpc_seconds".into(),
            help: "RPC latency.".into(),
            r#type: 4,
            metric: vec![Metric {
                label: vec![LabelPair {
                    name: "service".into(),
                    value: "api".into(),
                }],
                histogram: Some(Histogram {
                    sample_count: 8,
                    sample_sum: 3.5,
                    schema: 3,
                    zero_threshold: 1e-4,
                    zero_count: 1,
                    positive_span: vec![BucketSpan {
                        offset: -2,
                        length: 3,
                    }],
                    positive_delta: vec![2, 1, -2],
                    negative_span: vec![BucketSpan {
                        offset: 0,
                        length: 1,
                    }],
                    negative_delta: vec![1],
                    ..Default::default()
                }),
                ..Default::default()
            }],
        }
    }

    #[test]
    fn families_become_series_as_prometheus_scrapes_them() {
        let counter = MetricFamily {
            name: "jobs_total".into(),
            r#type: 0,
            metric: vec![Metric {
                counter: Some(Value { value: 3.0 }),
                timestamp_ms: 99,
                ..Default::default()
            }],
            ..Default::default()
        };
        let classic = MetricFamily {
            name: "size_bytes".into(),
            r#type: 4,
            metric: vec![Metric {
                histogram: Some(Histogram {
                    sample_count: 4,
                    sample_sum: 10.0,
                    bucket: vec![
                        Bucket {
                            cumulative_count: 1,
                            upper_bound: 1.0,
                            ..Default::default()
                        },
                        Bucket {
                            cumulative_count: 3,
                            upper_bound: 5.0,
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let body = encode(&[counter, classic, native_family()]);
        let got = parse(&body, 1_000).unwrap();
        let names: Vec<String> = got
            .floats
            .iter()
            .map(|(l, s)| format!("{l} {} {}", s.value, s.timestamp_ms))
            .collect();
        assert_eq!(
            names,
            [
                "jobs_total 3 99",
                "size_bytes_bucket{le=\"1\"} 1 1000",
                "size_bytes_bucket{le=\"5\"} 3 1000",
                "size_bytes_bucket{le=\"+Inf\"} 4 1000",
                "size_bytes_sum 10 1000",
                "size_bytes_count 4 1000",
            ]
        );
        let (l, h) = &got.histograms[0];
        assert_eq!(l.to_string(), "rpc_seconds{service=\"api\"}");
        assert_eq!(h.h.positive_buckets, [2.0, 3.0, 1.0]);
        assert_eq!((h.h.count, h.h.zero_count, h.h.schema), (8.0, 1.0, 3));
        // An integer histogram whose buckets do not hold its count is refused.
        let mut bad = native_family();
        if let Some(h) = bad.metric[0].histogram.as_mut() {
            h.sample_count = 5;
        }
        assert!(parse(&encode(&[bad]), 0)
            .unwrap_err()
            .contains("observations"));
        assert!(is_protobuf(CONTENT_TYPE));
        // Cut short: a clear error, nothing half-read kept.
        assert!(parse(&body[..body.len() - 2], 0).is_err());
    }
}
