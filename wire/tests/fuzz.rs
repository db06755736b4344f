//! The wire codecs under the fuzzer (`vigil-fuzz`): remote-write bodies (snappy and protobuf)
//! and scrape bodies (Prometheus text and OpenMetrics). `cargo test` runs a short pass;
//! `bench/fuzz.sh` runs 100,000 inputs a target.

use prost::Message;
use vigil_wire::remote_write::{self, TimeSeries, WriteRequest};
use vigil_wire::text::{self, Format};
use vigil_wire::{Labels, Sample};

fn request(n: usize) -> WriteRequest {
    WriteRequest {
        timeseries: (0..n)
            .map(|i| {
                let l = Labels::from_pairs([
                    ("__name__", format!("m_{i}").as_str()),
                    ("instance", "10.0.0.1:9100"),
                    ("job", "node"),
                ]);
                let s: Vec<Sample> = (0..3)
                    .map(|k| Sample::new(1_700_000_000_000 + k * 10_000, k as f64 * 1.5))
                    .collect();
                TimeSeries::new(&l, &s)
            })
            .collect(),
        metadata: vec![],
    }
}

#[test]
fn fuzz_remote_write() {
    let mut seeds = vigil_fuzz::corpus("remote_write");
    for n in [0, 1, 3] {
        seeds.push(request(n).encode_snappy());
        seeds.push(request(n).encode_to_vec());
    }
    let dict: &[&[u8]] = &[
        b"\x0a",
        b"\x12",
        b"__name__",
        b"\x09",
        b"\x10",
        b"\xff\xff\xff\xff\x0f",
    ];
    vigil_fuzz::run("remote_write", seeds, dict, 1 << 16, |b| {
        let limit = 1 << 20;
        let decoded = WriteRequest::decode_snappy(b, limit).is_ok();
        if let Ok(raw) = remote_write::decompress(b, limit) {
            let _ = remote_write::scan(&raw, |_, s| {
                std::hint::black_box(s.samples.len());
                Ok(())
            });
        }
        // The protobuf reader straight on the input (a snappy mutant rarely decompresses).
        let mut buf = String::new();
        let _ = remote_write::scan(b, |_, s| {
            let _ = vigil_wire::encode_sorted(&mut buf, s.labels.iter().copied());
            Ok(())
        });
        decoded | WriteRequest::decode(b).is_ok()
    })
    .assert_clean();
}

#[test]
fn fuzz_exposition() {
    let seeds = vigil_fuzz::corpus("exposition");
    assert!(!seeds.is_empty(), "fuzz/corpus/exposition is empty");
    let dict: &[&[u8]] = &[
        b"# HELP ",
        b"# TYPE ",
        b" counter\n",
        b" histogram\n",
        b"_bucket{le=\"+Inf\"}",
        b"# EOF\n",
        b"NaN",
        b"+Inf",
        b"-Inf",
        b"{a=\"b\"}",
        b"\\\"",
        b"\\n",
        b" 1e308",
        b" 1.5e-300",
        b"_total",
        b"# UNIT ",
        b" # {trace_id=\"x\"} 1",
        b"\n",
    ];
    vigil_fuzz::run("exposition", seeds, dict, 1 << 16, |b| {
        let s = String::from_utf8_lossy(b);
        let mut accepted = false;
        for f in [Format::Prometheus, Format::OpenMetrics] {
            if let Ok(e) = text::parse(&s, f) {
                std::hint::black_box(&e);
                accepted = true;
            }
            for line in s.lines().take(64) {
                let _ = text::parse_line(line, f);
            }
        }
        accepted
    })
    .assert_clean();
}
