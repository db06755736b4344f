//! Prometheus remote-write 1.0: the `prometheus.WriteRequest` protobuf, snappy block compressed.
//!
//! The messages are declared with `prost` derives rather than generated from `.proto` files so the
//! build needs no `protoc`. Field numbers follow `prompb/remote.proto` and `prompb/types.proto`;
//! native histograms are `prometheus.Histogram` ([`crate::rw_histogram`]); fields this crate does
//! not model (exemplar details) are skipped on decode.

use prost::Message;

use crate::histogram::HSample;
use crate::labels::{Labels, LabelsBuilder};
use crate::rw_histogram::Histogram;
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
    #[prost(message, repeated, tag = "4")]
    pub histograms: Vec<Histogram>,
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
    /// The protobuf encoding, uncompressed (requests concatenate: their series add up).
    pub fn encode_raw(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    /// Encodes to protobuf and compresses with snappy's block format, ready for the HTTP body.
    pub fn encode_snappy(&self) -> Vec<u8> {
        compress(&self.encode_to_vec())
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
    encode_snappy_mixed(items, std::iter::empty())
}

/// [`encode_snappy_from`] with native histograms too: each `(labels, histogram)` becomes a
/// `TimeSeries` of its own after the float ones.
pub fn encode_snappy_mixed<'a>(
    items: impl IntoIterator<Item = (&'a Labels, &'a [Sample])>,
    histograms: impl IntoIterator<Item = (&'a Labels, &'a HSample)>,
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
    for (labels, h) in histograms {
        let mut series = TimeSeries::new(labels, &[]);
        series
            .histograms
            .push(Histogram::from_float(&h.h, h.timestamp_ms));
        ld(&mut out, 0x0a, &series.encode_to_vec());
    }
    snap::raw::Encoder::new()
        .compress_vec(&out)
        .unwrap_or_else(|e| panic!("snappy refuses a {} byte body: {e}", out.len()))
}

/// One series of a request as [`scan`] sees it: label pairs borrowed from the body, its samples
/// and its native histograms (checked, see [`Histogram::to_float`]).
pub struct SeriesRef<'a> {
    pub labels: Vec<(&'a str, &'a str)>,
    pub samples: Vec<Sample>,
    pub histograms: Vec<HSample>,
}

/// Compresses a request body (snappy's block format), as remote-write sends it.
pub fn compress(raw: &[u8]) -> Vec<u8> {
    // Compressing fails only for inputs over 2^32-1 bytes, far past any request.
    snap::raw::Encoder::new()
        .compress_vec(raw)
        .unwrap_or_else(|e| panic!("snappy refuses a {} byte body: {e}", raw.len()))
}

/// One `TimeSeries` of a decompressed `WriteRequest`, undecoded: what forwarding passes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawSeries<'a> {
    /// The message's bytes (without its field key and length).
    pub bytes: &'a [u8],
    /// Float samples and histograms it holds.
    pub samples: usize,
    /// A hash of its label fields' bytes: the same series, encoded the same way, hashes the
    /// same (senders write a series' labels in one order).
    pub label_hash: u64,
}

impl RawSeries<'_> {
    /// Appends the series to `out` as a `WriteRequest`'s field: `out` stays a request body.
    pub fn append_to(&self, out: &mut Vec<u8>) {
        out.push(0x0a);
        let mut n = self.bytes.len() as u64;
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out.extend_from_slice(self.bytes);
    }
}

/// The series of a decompressed `WriteRequest`, undecoded, in order (metadata and unknown
/// fields skipped).
pub fn raw_series<'a>(body: &'a [u8], mut f: impl FnMut(RawSeries<'a>)) -> Result<(), String> {
    use std::hash::Hasher;
    let mut pos = 0;
    while pos < body.len() {
        let (num, wire, ts, _) = field(body, &mut pos)?;
        if num != 1 || wire != 2 {
            continue;
        }
        let (mut p, mut samples) = (0, 0);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        while p < ts.len() {
            let start = p;
            let (n, w, _, _) = field(ts, &mut p)?;
            match (n, w) {
                (1, 2) => h.write(&ts[start..p]),
                (2, 2) | (4, 2) => samples += 1,
                _ => {}
            }
        }
        f(RawSeries {
            bytes: ts,
            samples,
            label_hash: h.finish(),
        });
    }
    Ok(())
}

fn varint(b: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint too long".into())
}

/// Reads one field header and, for length-delimited fields, its bytes; skips others.
fn field<'a>(b: &'a [u8], pos: &mut usize) -> Result<(u64, u8, &'a [u8], u64), String> {
    let key = varint(b, pos)?;
    let (num, wire) = (key >> 3, (key & 7) as u8);
    match wire {
        0 => {
            let v = varint(b, pos)?;
            Ok((num, wire, &[], v))
        }
        1 => {
            let bytes = b.get(*pos..*pos + 8).ok_or("truncated fixed64")?;
            *pos += 8;
            Ok((num, wire, bytes, 0))
        }
        2 => {
            let len = varint(b, pos)? as usize;
            let bytes = b
                .get(*pos..pos.checked_add(len).ok_or("length overflow")?)
                .ok_or("truncated field")?;
            *pos += len;
            Ok((num, wire, bytes, 0))
        }
        5 => {
            let bytes = b.get(*pos..*pos + 4).ok_or("truncated fixed32")?;
            *pos += 4;
            Ok((num, wire, bytes, 0))
        }
        w => Err(format!("unsupported wire type {w}")),
    }
}

/// Walks a decompressed `WriteRequest` without building it: calls `f` for each series with
/// its labels and samples borrowed from `body`. Label strings must be UTF-8. This is the hot path
/// of a receiver: no per-label allocation.
pub fn scan<'a>(
    body: &'a [u8],
    mut f: impl FnMut(usize, &SeriesRef<'a>) -> Result<(), String>,
) -> Result<(), String> {
    let mut pos = 0;
    let mut index = 0;
    let mut series = SeriesRef {
        labels: Vec::with_capacity(16),
        samples: Vec::with_capacity(4),
        histograms: Vec::new(),
    };
    while pos < body.len() {
        let (num, wire, ts, _) = field(body, &mut pos)?;
        if num != 1 || wire != 2 {
            continue; // metadata and unknown fields
        }
        series.labels.clear();
        series.samples.clear();
        series.histograms.clear();
        let mut p = 0;
        while p < ts.len() {
            let (n, w, bytes, _) = field(ts, &mut p)?;
            match (n, w) {
                (1, 2) => {
                    let (mut q, mut name, mut value) = (0, "", "");
                    while q < bytes.len() {
                        let (ln, lw, lb, _) = field(bytes, &mut q)?;
                        let text = || {
                            std::str::from_utf8(lb)
                                .map_err(|_| format!("series {index}: label is not valid UTF-8"))
                        };
                        match (ln, lw) {
                            (1, 2) => name = text()?,
                            (2, 2) => value = text()?,
                            _ => {}
                        }
                    }
                    series.labels.push((name, value));
                }
                (2, 2) => {
                    let (mut q, mut value, mut t) = (0, 0f64, 0i64);
                    while q < bytes.len() {
                        let (sn, sw, sb, sv) = field(bytes, &mut q)?;
                        match (sn, sw) {
                            (1, 1) => {
                                value = f64::from_le_bytes(sb.try_into().map_err(|_| "bad double")?)
                            }
                            (2, 0) => t = sv as i64,
                            _ => {}
                        }
                    }
                    series.samples.push(Sample::new(t, value));
                }
                (4, 2) => {
                    let h = Histogram::decode(bytes)
                        .map_err(|e| format!("series {index}: histogram: {e}"))?;
                    let fh = h
                        .to_float()
                        .map_err(|e| format!("series {index}: histogram: {e}"))?;
                    series.histograms.push(HSample::new(h.timestamp, fh));
                }
                _ => {}
            }
        }
        f(index, &series)?;
        index += 1;
    }
    Ok(())
}

/// Decompresses a snappy body, refusing one that would exceed `max_decoded` bytes.
pub fn decompress(body: &[u8], max_decoded: usize) -> Result<Vec<u8>, DecodeError> {
    let size = snap::raw::decompress_len(body)?;
    if size > max_decoded {
        return Err(DecodeError::TooLarge {
            size,
            limit: max_decoded,
        });
    }
    Ok(snap::raw::Decoder::new().decompress_vec(body)?)
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
            histograms: Vec::new(),
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
    #[test]
    fn raw_series_pass_on_unchanged_and_group_by_labels() {
        let a = Labels::from_pairs([("__name__", "m"), ("i", "a")]);
        let b = Labels::from_pairs([("__name__", "m"), ("i", "b")]);
        let req = WriteRequest {
            timeseries: vec![
                TimeSeries::new(&a, &[Sample::new(1, 1.0), Sample::new(2, 2.0)]),
                TimeSeries::new(&b, &[Sample::new(1, 5.0)]),
                TimeSeries::new(&a, &[Sample::new(3, 3.0)]),
            ],
            metadata: vec![],
        };
        let body = req.encode_raw();
        let mut got = Vec::new();
        raw_series(&body, |r| got.push(r)).unwrap();
        assert_eq!(got.iter().map(|r| r.samples).collect::<Vec<_>>(), [2, 1, 1]);
        assert_eq!(got[0].label_hash, got[2].label_hash);
        assert_ne!(got[0].label_hash, got[1].label_hash);
        let mut out = Vec::new();
        for r in &got {
            r.append_to(&mut out);
        }
        assert_eq!(out, body);
        // A long series: its length takes more than one varint byte.
        let many: Vec<Sample> = (0..100).map(|t| Sample::new(t, t as f64)).collect();
        let big = WriteRequest {
            timeseries: vec![TimeSeries::new(&a, &many)],
            metadata: vec![],
        }
        .encode_raw();
        let mut out = Vec::new();
        raw_series(&big, |r| r.append_to(&mut out)).unwrap();
        assert_eq!(out, big);
        assert!(raw_series(&body[..body.len() - 1], |_| {}).is_err());
    }

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
    fn scan_agrees_with_prost_and_refuses_bad_input() {
        let req = request();
        let raw = decompress(&req.encode_snappy(), 1 << 20).unwrap();
        let mut seen = Vec::new();
        scan(&raw, |i, s| {
            seen.push((
                i,
                s.labels
                    .iter()
                    .map(|(n, v)| format!("{n}={v}"))
                    .collect::<Vec<_>>(),
                s.samples.clone(),
            ));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].1, ["__name__=up", "instance=i-1", "job=node"]);
        assert_eq!(seen[0].2[0], Sample::new(1_000, 1.0));
        assert!(is_stale_nan(seen[0].2[1].value));
        assert!(
            scan(&raw[..raw.len() - 1], |_, _| Ok(())).is_err(),
            "truncated"
        );
        // A label value that is not UTF-8.
        let bad = [0x0a, 0x08, 0x0a, 0x06, 0x0a, 0x01, b'a', 0x12, 0x01, 0xff];
        assert!(scan(&bad, |_, _| Ok(())).unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn scan_reads_native_histograms_and_refuses_malformed_ones() {
        let l = Labels::from_pairs([("__name__", "latency")]);
        let fh = crate::histogram::FloatHistogram::parse_notation(
            "{{schema:0 count:3 sum:4 buckets:[1 2]}}",
        )
        .unwrap()
        .0;
        let mut ts = TimeSeries::new(&l, &[]);
        ts.histograms.push(Histogram::from_float(&fh, 7_000));
        let req = WriteRequest {
            timeseries: vec![ts.clone()],
            metadata: vec![],
        };
        let raw = decompress(&req.encode_snappy(), 1 << 20).unwrap();
        let mut got = Vec::new();
        scan(&raw, |_, s| {
            got.extend(s.histograms.iter().cloned());
            Ok(())
        })
        .unwrap();
        assert_eq!(got, [HSample::new(7_000, fh)]);
        ts.histograms[0].positive_counts.push(1.0);
        let bad = WriteRequest {
            timeseries: vec![ts],
            metadata: vec![],
        };
        let raw = decompress(&bad.encode_snappy(), 1 << 20).unwrap();
        let e = scan(&raw, |_, _| Ok(())).unwrap_err();
        assert!(e.contains("series 0: histogram: positive spans"), "{e}");
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
