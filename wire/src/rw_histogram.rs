//! Remote-write 1.0's native histogram message (`prometheus.Histogram` of `prompb/types.proto`)
//! and its conversion to and from [`FloatHistogram`], checked as Prometheus's receiver checks it.

use prost::Message;

use crate::histogram::{FloatHistogram, ResetHint, Span, CUSTOM_BUCKETS_SCHEMA};
use crate::sample::is_stale_nan;

/// `prometheus.Histogram`: integer counts (bucket counts as deltas) or float counts.
#[derive(Clone, PartialEq, Message)]
pub struct Histogram {
    #[prost(oneof = "Count", tags = "1, 2")]
    pub count: Option<Count>,
    #[prost(double, tag = "3")]
    pub sum: f64,
    #[prost(sint32, tag = "4")]
    pub schema: i32,
    #[prost(double, tag = "5")]
    pub zero_threshold: f64,
    #[prost(oneof = "ZeroCount", tags = "6, 7")]
    pub zero_count: Option<ZeroCount>,
    #[prost(message, repeated, tag = "8")]
    pub negative_spans: Vec<BucketSpan>,
    #[prost(sint64, repeated, tag = "9")]
    pub negative_deltas: Vec<i64>,
    #[prost(double, repeated, tag = "10")]
    pub negative_counts: Vec<f64>,
    #[prost(message, repeated, tag = "11")]
    pub positive_spans: Vec<BucketSpan>,
    #[prost(sint64, repeated, tag = "12")]
    pub positive_deltas: Vec<i64>,
    #[prost(double, repeated, tag = "13")]
    pub positive_counts: Vec<f64>,
    /// 0 unknown, 1 reset, 2 not reset, 3 gauge.
    #[prost(int32, tag = "14")]
    pub reset_hint: i32,
    #[prost(int64, tag = "15")]
    pub timestamp: i64,
    #[prost(double, repeated, tag = "16")]
    pub custom_values: Vec<f64>,
}

#[derive(Clone, Copy, PartialEq, prost::Oneof)]
pub enum Count {
    #[prost(uint64, tag = "1")]
    Int(u64),
    #[prost(double, tag = "2")]
    Float(f64),
}

#[derive(Clone, Copy, PartialEq, prost::Oneof)]
pub enum ZeroCount {
    #[prost(uint64, tag = "6")]
    Int(u64),
    #[prost(double, tag = "7")]
    Float(f64),
}

/// `prometheus.BucketSpan`.
#[derive(Clone, Copy, PartialEq, Message)]
pub struct BucketSpan {
    #[prost(sint32, tag = "1")]
    pub offset: i32,
    #[prost(uint32, tag = "2")]
    pub length: u32,
}

/// The largest bucket index accepted (bounds are infinite long before it at any schema).
const MAX_INDEX: i64 = 1 << 20;

/// The most buckets one histogram may carry on one side (Prometheus's default
/// `native_histogram_bucket_limit` is unlimited; a bound keeps a hostile body small in memory).
pub const MAX_BUCKETS: usize = 1 << 16;

fn spans(s: &[BucketSpan]) -> Vec<Span> {
    s.iter()
        .map(|s| Span {
            offset: s.offset,
            length: s.length,
        })
        .collect()
}

fn proto_spans(s: &[Span]) -> Vec<BucketSpan> {
    s.iter()
        .map(|s| BucketSpan {
            offset: s.offset,
            length: s.length,
        })
        .collect()
}

/// Integer bucket deltas to absolute counts, refusing a negative count.
fn absolute(deltas: &[i64]) -> Result<Vec<f64>, String> {
    let mut acc = 0i64;
    deltas
        .iter()
        .map(|d| {
            acc = acc.checked_add(*d).ok_or("bucket count overflows")?;
            if acc < 0 {
                return Err(format!("negative bucket count {acc}"));
            }
            Ok(acc as f64)
        })
        .collect()
}

impl Histogram {
    /// The histogram as the engine holds it, checked: a schema Prometheus knows (exponential
    /// ones finer than 8 are reduced to 8, as Prometheus's remote read does), spans that cover
    /// exactly the buckets given, no negative or NaN count, custom bounds finite and strictly
    /// increasing (and only with schema -53, which has no negative side or zero bucket). A
    /// staleness marker (a NaN sum with the marker's bits) comes through as it is.
    pub fn to_float(&self) -> Result<FloatHistogram, String> {
        let schema = self.schema;
        let custom = schema == CUSTOM_BUCKETS_SCHEMA;
        if !custom && !(-4..=52).contains(&schema) {
            return Err(format!("histogram schema {schema} is not -4 to 52, or -53"));
        }
        let integer = matches!(self.count, Some(Count::Int(_)));
        let (positive, negative) = if integer {
            (
                absolute(&self.positive_deltas)?,
                absolute(&self.negative_deltas)?,
            )
        } else {
            (self.positive_counts.clone(), self.negative_counts.clone())
        };
        let count = match self.count {
            Some(Count::Int(c)) => c as f64,
            Some(Count::Float(c)) => c,
            None => 0.0,
        };
        let zero_count = match self.zero_count {
            Some(ZeroCount::Int(c)) => c as f64,
            Some(ZeroCount::Float(c)) => c,
            None => 0.0,
        };
        let mut h = FloatHistogram {
            hint: match self.reset_hint {
                1 => ResetHint::Reset,
                2 => ResetHint::NotReset,
                3 => ResetHint::Gauge,
                _ => ResetHint::Unknown,
            },
            schema,
            zero_threshold: self.zero_threshold,
            zero_count,
            count,
            sum: self.sum,
            positive_spans: spans(&self.positive_spans),
            positive_buckets: positive,
            negative_spans: spans(&self.negative_spans),
            negative_buckets: negative,
            custom_values: self.custom_values.clone(),
        };
        if is_stale_nan(h.sum) {
            return Ok(h);
        }
        for (side, s, b) in [
            ("positive", &h.positive_spans, &h.positive_buckets),
            ("negative", &h.negative_spans, &h.negative_buckets),
        ] {
            if b.len() > MAX_BUCKETS {
                return Err(format!("{} {side} buckets, limit {MAX_BUCKETS}", b.len()));
            }
            let covered: u64 = s.iter().map(|s| u64::from(s.length)).sum();
            if covered != b.len() as u64 {
                return Err(format!(
                    "{side} spans cover {covered} buckets, {} given",
                    b.len()
                ));
            }
            if s.iter().skip(1).any(|s| s.offset < 0) {
                return Err(format!(
                    "{side} span with a negative offset after the first"
                ));
            }
            // NaN passes, as in Prometheus (observations that were NaN); negative does not.
            if let Some(c) = b.iter().find(|c| **c < 0.0) {
                return Err(format!("{side} bucket count {c}"));
            }
            if s.len() > MAX_BUCKETS + 1 {
                return Err(format!(
                    "{} {side} spans, limit {}",
                    s.len(),
                    MAX_BUCKETS + 1
                ));
            }
            // Indices past where bounds are finite (or past i32) are nonsense, not data.
            let mut index = 0i64;
            for (k, sp) in s.iter().enumerate() {
                index = if k == 0 {
                    i64::from(sp.offset)
                } else {
                    index + i64::from(sp.offset)
                };
                let end = index + i64::from(sp.length);
                if index.abs() > MAX_INDEX || end.abs() > MAX_INDEX {
                    return Err(format!("{side} bucket index {index} out of range"));
                }
                index = end;
            }
        }
        if integer {
            // As Prometheus checks integer histograms: the buckets hold every observation
            // (at most all of them when some were NaN).
            let total: f64 = h.zero_count
                + h.positive_buckets.iter().sum::<f64>()
                + h.negative_buckets.iter().sum::<f64>();
            if total > h.count || (!h.sum.is_nan() && total != h.count) {
                return Err(format!(
                    "{total} observations found in buckets, but the count is {}",
                    h.count
                ));
            }
        }
        if h.count < 0.0 || h.zero_count < 0.0 {
            return Err(format!(
                "count {} and zero count {} must be non-negative",
                h.count, h.zero_count
            ));
        }
        if h.zero_threshold.is_nan() || h.zero_threshold < 0.0 {
            return Err(format!("zero threshold {}", h.zero_threshold));
        }
        if custom {
            if !h.negative_buckets.is_empty() || h.zero_count != 0.0 || h.zero_threshold != 0.0 {
                return Err("custom buckets with a negative side or a zero bucket".into());
            }
            let cv = &h.custom_values;
            if cv.iter().any(|v| !v.is_finite()) || cv.windows(2).any(|w| w[0] >= w[1]) {
                return Err("custom bounds must be finite and strictly increasing".into());
            }
            let last = h.positive_spans.iter().fold(-1i64, |end, s| {
                let start = if end < 0 {
                    i64::from(s.offset)
                } else {
                    end + i64::from(s.offset)
                };
                start + i64::from(s.length)
            });
            if last > cv.len() as i64 + 1 || h.positive_spans.first().is_some_and(|s| s.offset < 0)
            {
                return Err("custom bucket index past the bounds given".into());
            }
        } else if !h.custom_values.is_empty() {
            return Err("custom bounds given with an exponential schema".into());
        }
        if h.schema > 8 {
            h.reduce_resolution(8);
        }
        Ok(h)
    }

    /// A float histogram as the message (float counts).
    pub fn from_float(h: &FloatHistogram, timestamp_ms: i64) -> Histogram {
        Histogram {
            count: Some(Count::Float(h.count)),
            sum: h.sum,
            schema: h.schema,
            zero_threshold: h.zero_threshold,
            zero_count: Some(ZeroCount::Float(h.zero_count)),
            negative_spans: proto_spans(&h.negative_spans),
            negative_deltas: Vec::new(),
            negative_counts: h.negative_buckets.clone(),
            positive_spans: proto_spans(&h.positive_spans),
            positive_deltas: Vec::new(),
            positive_counts: h.positive_buckets.clone(),
            reset_hint: match h.hint {
                ResetHint::Unknown => 0,
                ResetHint::Reset => 1,
                ResetHint::NotReset => 2,
                ResetHint::Gauge => 3,
            },
            timestamp: timestamp_ms,
            custom_values: h.custom_values.clone(),
        }
    }
}

/// Whether a histogram would be accepted from remote-write (see [`Histogram::to_float`]).
pub fn validate(h: &FloatHistogram) -> Result<(), String> {
    Histogram::from_float(h, 0).to_float().map(|_| ())
}

/// A histogram sample as the message's bytes (for logs that keep one).
pub fn encode(h: &crate::histogram::HSample, out: &mut Vec<u8>) {
    // Encoding into a Vec cannot run out of room.
    let _ = Histogram::from_float(&h.h, h.timestamp_ms).encode(out);
}

/// Reads back [`encode`]'s bytes, checked as a received histogram is.
pub fn decode(bytes: &[u8]) -> Result<crate::histogram::HSample, String> {
    let m = Histogram::decode(bytes).map_err(|e| e.to_string())?;
    let h = m.to_float()?;
    Ok(crate::histogram::HSample::new(m.timestamp, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(text: &str) -> FloatHistogram {
        FloatHistogram::parse_notation(text).unwrap().0
    }

    #[test]
    fn integer_deltas_and_float_counts_read_as_the_same_histogram() {
        let want = h("{{schema:1 count:9 sum:20 z_bucket:1 z_bucket_w:0.001 buckets:[1 3 2] n_buckets:[2] offset:-1 counter_reset_hint:not_reset}}");
        let int = Histogram {
            count: Some(Count::Int(9)),
            sum: 20.0,
            schema: 1,
            zero_threshold: 0.001,
            zero_count: Some(ZeroCount::Int(1)),
            negative_spans: vec![BucketSpan {
                offset: 0,
                length: 1,
            }],
            negative_deltas: vec![2],
            positive_spans: vec![BucketSpan {
                offset: -1,
                length: 3,
            }],
            positive_deltas: vec![1, 2, -1],
            reset_hint: 2,
            timestamp: 5,
            ..Default::default()
        };
        assert_eq!(int.to_float().unwrap(), want);
        let float = Histogram::from_float(&want, 5);
        assert_eq!(float.to_float().unwrap(), want);
        let bytes = float.encode_to_vec();
        assert_eq!(Histogram::decode(bytes.as_slice()).unwrap(), float);
    }

    #[test]
    fn malformed_histograms_are_refused_with_a_reason() {
        let ok = Histogram::from_float(&h("{{schema:0 count:2 buckets:[1 1]}}"), 0);
        let bad = [
            Histogram {
                schema: 60,
                ..ok.clone()
            },
            Histogram {
                positive_counts: vec![1.0],
                ..ok.clone()
            },
            Histogram {
                positive_counts: vec![1.0, -1.0],
                ..ok.clone()
            },
            Histogram {
                count: Some(Count::Float(-1.0)),
                ..ok.clone()
            },
            Histogram {
                custom_values: vec![1.0],
                ..ok.clone()
            },
            Histogram {
                count: Some(Count::Int(1)),
                positive_deltas: vec![1, -2],
                positive_counts: vec![],
                ..ok.clone()
            },
            Histogram {
                schema: CUSTOM_BUCKETS_SCHEMA,
                custom_values: vec![2.0, 1.0],
                ..ok.clone()
            },
        ];
        for b in bad {
            assert!(b.to_float().is_err(), "{b:?}");
        }
        // Finer than 8: reduced.
        let fine = Histogram::from_float(&h("{{schema:8 count:2 buckets:[1 1]}}"), 0);
        let fine = Histogram { schema: 10, ..fine };
        assert_eq!(fine.to_float().unwrap().schema, 8);
    }
}
