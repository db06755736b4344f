//! Prometheus remote-write 1.0: the `prometheus.WriteRequest` protobuf, snappy block compressed.
//!
//! The messages are declared with `prost` derives rather than generated from `.proto` files so the
//! build needs no `protoc`. Field numbers follow `prompb/remote.proto` and `prompb/types.proto`;
//! fields this crate does not model (native histograms, exemplar details) are skipped on decode.

use prost::Message;

use crate::labels::{Labels, LabelsBuilder};
use crate::sample::Sample;

/// `prometheus.WriteRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
    #[prost(message, repeated, tag = "3")]
    pub metadata: Vec<MetricMetadata>,
}

/// `prometheus.TimeSeries`.
#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<ProtoLabel>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<ProtoSample>,
    #[prost(message, repeated, tag = "3")]
    pub exemplars: Vec<Exemplar>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, Message)]
pub struct ProtoLabel {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`.
#[derive(Clone, Copy, PartialEq, Message)]
pub struct ProtoSample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// `prometheus.Exemplar`.
#[derive(Clone, PartialEq, Message)]
pub struct Exemplar {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<ProtoLabel>,
    #[prost(double, tag = "2")]
    pub value: f64,
    #[prost(int64, tag = "3")]
    pub timestamp: i64,
}

/// `prometheus.MetricMetadata`.
#[derive(Clone, PartialEq, Message)]
pub struct MetricMetadata {
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(string, tag = "2")]
    pub metric_family_name: String,
    #[prost(string, tag = "4")]
    pub help: String,
    #[prost(string, tag = "5")]
    pub unit: String,
}

/// Why a remote-write body was refused.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("snappy decode: {0}")]
    Snappy(#[from] snap::Error),
    #[error("decompressed body of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("protobuf decode: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("series {index}: {reason}")]
    InvalidSeries { index: usize, reason: String },
}

impl WriteRequest {
    /// Encodes to protobuf and compresses with snappy's block format, ready for the HTTP body.
    pub fn encode_snappy(&self) -> Vec<u8> {
        let raw = self.encode_to_vec();
        // Compressing a Vec we own cannot fail except for inputs over 2^32-1 bytes.
        snap::raw::Encoder::new()
            .compress_vec(&raw)
            .unwrap_or_else(|e| panic!("snappy refuses a {} byte body: {e}", raw.len()))
    }

    /// Decompresses and decodes an HTTP body, refusing any body that would decompress to more than
    /// `max_decoded` bytes before allocating for it.
    pub fn decode_snappy(body: &[u8], max_decoded: usize) -> Result<Self, DecodeError> {
        let size = snap::raw::decompress_len(body)?;
        if size > max_decoded {
            return Err(DecodeError::TooLarge {
                size,
                limit: max_decoded,
            });
        }
        let raw = snap::raw::Decoder::new().decompress_vec(body)?;
        Ok(WriteRequest::decode(raw.as_slice())?)
    }
}

/// Encodes a `WriteRequest` straight from label sets and samples, snappy-compressed, without
/// building the intermediate protobuf structs (no per-label string copies): what an agent pushing
/// every second wants. Each item becomes one `TimeSeries`.
pub fn encode_snappy_from<'a>(
    items: impl IntoIterator<Item = (&'a Labels, &'a [Sample])>,
) -> Vec<u8> {
    fn varint(buf: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        buf.push(v as u8);
    }
    fn ld(buf: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
        buf.push(tag);
        varint(buf, bytes.len() as u64);
        buf.extend_from_slice(bytes);
    }
    let mut out = Vec::with_capacity(4096);
    let mut ts = Vec::with_capacity(256);
    let mut inner = Vec::with_capacity(64);
    for (labels, samples) in items {
        ts.clear();
        for l in labels.iter() {
            inner.clear();
            ld(&mut inner, 0x0a, l.name.as_bytes());
            ld(&mut inner, 0x12, l.value.as_bytes());
            ld(&mut ts, 0x0a, &inner);
        }
        for s in samples {
            inner.clear();
            inner.push(0x09); // field 1, fixed64
            inner.extend_from_slice(&s.value.to_le_bytes());
            if s.timestamp_ms != 0 {
                inner.push(0x10); // field 2, varint
                varint(&mut inner, s.timestamp_ms as u64);
            }
            ld(&mut ts, 0x12, &inner);
        }
        ld(&mut out, 0x0a, &ts);
    }
    snap::raw::Encoder::new()
        .compress_vec(&out)
        .unwrap_or_else(|e| panic!("snappy refuses a {} byte body: {e}", out.len()))
}

impl TimeSeries {
    /// Builds a series from a label set and samples.
    pub fn new(labels: &Labels, samples: &[Sample]) -> Self {
        TimeSeries {
            labels: labels
                .iter()
                .map(|l| ProtoLabel {
                    name: l.name.to_string(),
                    value: l.value.to_string(),
                })
                .collect(),
            samples: samples
                .iter()
                .map(|s| ProtoSample {
                    value: s.value,
                    timestamp: s.timestamp_ms,
                })
                .collect(),
            exemplars: Vec::new(),
        }
    }

    /// Checks the series as Prometheus's receiver does (label names valid, no duplicates, a metric
    /// name present) and returns its label set.
    pub fn validated_labels(&self) -> Result<Labels, String> {
        let mut b = LabelsBuilder::new();
        let mut prev: Option<&str> = None;
        for l in &self.labels {
            if !crate::text::is_valid_label_name(&l.name) {
                return Err(format!("invalid label name {:?}", l.name));
            }
            if let Some(p) = prev {
                if p >= l.name.as_str() {
                    return Err(format!("labels not sorted or duplicated at {:?}", l.name));
                }
            }
            prev = Some(&l.name);
            b.set(l.name.clone(), l.value.clone());
        }
        let labels = b.build();
        if labels.metric_name().is_none() {
            return Err("series has no __name__ label".into());
        }
        Ok(labels)
    }

    /// The samples in the wire order.
    pub fn samples(&self) -> impl Iterator<Item = Sample> + '_ {
        self.samples
            .iter()
            .map(|s| Sample::new(s.timestamp, s.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{is_stale_nan, STALE_NAN};

    fn request() -> WriteRequest {
        let l = Labels::from_pairs([("__name__", "up"), ("instance", "i-1"), ("job", "node")]);
        WriteRequest {
            timeseries: vec![TimeSeries::new(
                &l,
                &[Sample::new(1_000, 1.0), Sample::new(2_000, STALE_NAN)],
            )],
            metadata: vec![],
        }
    }

    #[test]
    fn round_trips_and_keeps_staleness_bits() {
        let req = request();
        let body = req.encode_snappy();
        let back = WriteRequest::decode_snappy(&body, 1 << 20).unwrap();
        assert_eq!(back.timeseries.len(), 1);
        let s: Vec<Sample> = back.timeseries[0].samples().collect();
        assert_eq!(s[0], Sample::new(1_000, 1.0));
        assert!(is_stale_nan(s[1].value));
        assert_eq!(
            back.timeseries[0].validated_labels().unwrap().get("job"),
            Some("node")
        );
    }

    #[test]
    fn refuses_garbage_and_oversized_bodies() {
        assert!(matches!(
            WriteRequest::decode_snappy(b"not snappy at all", 1 << 20),
            Err(DecodeError::Snappy(_)) | Err(DecodeError::Protobuf(_))
        ));
        let body = request().encode_snappy();
        assert!(matches!(
            WriteRequest::decode_snappy(&body, 4),
            Err(DecodeError::TooLarge { .. })
        ));
        // Valid snappy around invalid protobuf.
        let bad = snap::raw::Encoder::new()
            .compress_vec(&[0x0a, 0xff, 0xff])
            .unwrap();
        assert!(matches!(
            WriteRequest::decode_snappy(&bad, 1 << 20),
            Err(DecodeError::Protobuf(_))
        ));
    }

    #[test]
    fn direct_encoding_matches_prost() {
        let a = Labels::from_pairs([("__name__", "up"), ("job", "x")]);
        let b = Labels::from_pairs([("__name__", "temp"), ("room", "é")]);
        let sa = [
            Sample::new(1_700_000_000_000, 1.0),
            Sample::new(-5, STALE_NAN),
        ];
        let sb = [Sample::new(0, -2.5)];
        let body = encode_snappy_from([(&a, &sa[..]), (&b, &sb[..])]);
        let got = WriteRequest::decode_snappy(&body, 1 << 20).unwrap();
        let want = WriteRequest {
            timeseries: vec![TimeSeries::new(&a, &sa), TimeSeries::new(&b, &sb)],
            metadata: vec![],
        };
        assert_eq!(got.timeseries.len(), 2);
        assert_eq!(got.timeseries[0].labels, want.timeseries[0].labels);
        assert_eq!(got.timeseries[0].samples[0], want.timeseries[0].samples[0]);
        assert!(is_stale_nan(got.timeseries[0].samples[1].value));
        assert_eq!(got.timeseries[0].samples[1].timestamp, -5);
        assert_eq!(got.timeseries[1], want.timeseries[1]);
    }

    #[test]
    fn validates_series_labels() {
        let mut ts = request().timeseries.remove(0);
        ts.labels.swap(0, 1);
        assert!(ts.validated_labels().is_err());
        let no_name = TimeSeries::new(&Labels::from_pairs([("job", "x")]), &[]);
        assert!(no_name.validated_labels().is_err());
    }
}
