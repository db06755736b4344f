//! Latency of the two queries every Vigil deployment runs most, over 100k series holding one hour
//! of 10 s samples (36M samples): a rate aggregated by job (instant, and over 25 minutes at a
//! 60 s step), and a p99 from classic buckets.
//!
//! `cargo bench -p vigil-rules` prints criterion's figures for each.

use criterion::{criterion_group, criterion_main, Criterion};
use vigil_rules::promql::{parse, Engine, MemStorage, Value};
use vigil_wire::{Labels, Sample};

const SERIES: usize = 100_000;
const STEP_MS: i64 = 10_000;
const HOUR_MS: i64 = 3_600_000;
const BUCKETS: [&str; 10] = [
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "+Inf",
];

/// Counter values that grow by a per-series rate with a little deterministic jitter.
fn fill(storage: &mut MemStorage, labels: Labels, seed: u64, scale: f64) {
    let mut v = 0.0;
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let samples = (0..=HOUR_MS).step_by(STEP_MS as usize).map(|t| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v += scale * (1.0 + (x % 100) as f64 / 100.0);
        Sample::new(t, v)
    });
    storage.add_series(labels, samples);
}

fn requests() -> MemStorage {
    let mut s = MemStorage::new();
    for i in 0..SERIES {
        let labels = Labels::from_pairs([
            ("__name__", "http_requests_total".to_string()),
            ("job", format!("job-{}", i % 20)),
            ("instance", format!("i-{:08x}", i / 4)),
            ("code", ["200", "201", "404", "500"][i % 4].to_string()),
        ]);
        fill(&mut s, labels, i as u64, 1.0);
    }
    s
}

fn buckets() -> MemStorage {
    let mut s = MemStorage::new();
    for i in 0..SERIES {
        let instance = i / BUCKETS.len();
        let b = i % BUCKETS.len();
        let labels = Labels::from_pairs([
            (
                "__name__",
                "http_request_duration_seconds_bucket".to_string(),
            ),
            ("job", format!("job-{}", instance % 20)),
            ("instance", format!("i-{instance:08x}")),
            ("le", BUCKETS[b].to_string()),
        ]);
        // Cumulative buckets: every instance sees the same shape, bigger for wider buckets.
        fill(&mut s, labels, instance as u64, (b + 1) as f64);
    }
    s
}

fn bench(c: &mut Criterion) {
    let engine = Engine::default();
    let mut g = c.benchmark_group("promql_100k_series_1h_10s");
    g.sample_size(10);

    let storage = requests();
    let q = parse("sum by (job) (rate(http_requests_total[5m]))").expect("query parses");
    let check = engine.instant(&storage, &q, HOUR_MS).expect("query runs");
    assert!(matches!(&check.value, Value::Vector(v) if v.len() == 20));
    g.bench_function("sum_by_job_rate_5m", |b| {
        b.iter(|| engine.instant(&storage, &q, HOUR_MS))
    });
    // A dashboard's graph: the same over the last 25 minutes at a 60 s step (26 steps).
    g.bench_function("range_25m_60s_sum_by_job_rate_5m", |b| {
        b.iter(|| engine.range(&storage, &q, HOUR_MS - 25 * 60_000, HOUR_MS, 60_000))
    });
    drop(storage);

    let storage = buckets();
    let q = parse(
        "histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))",
    )
    .expect("query parses");
    let check = engine.instant(&storage, &q, HOUR_MS).expect("query runs");
    assert!(matches!(&check.value, Value::Vector(v) if v.len() == 1 && v[0].f.is_finite()));
    g.bench_function("histogram_quantile_p99_sum_by_le_rate_5m", |b| {
        b.iter(|| engine.instant(&storage, &q, HOUR_MS))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
