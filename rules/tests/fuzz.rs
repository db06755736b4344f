//! Rule files and PromQL under the fuzzer (`vigil-fuzz`). `cargo test` runs a short pass;
//! `bench/fuzz.sh` runs 100,000 inputs a target.

use std::time::{Duration, Instant};

use vigil_rules::promql::{self, Engine, EngineOpts, MemStorage};
use vigil_rules::rulefile::{self, Context};
use vigil_wire::{Labels, Sample};

#[test]
fn fuzz_rule_file() {
    let mut seeds = vigil_fuzz::corpus("rule_file");
    seeds.extend(vigil_fuzz::files("examples/rules", "toml"));
    seeds.extend(vigil_fuzz::files("packaging/etc/rules", "toml"));
    assert!(seeds.len() > 2, "no rule files to start from");
    let dict: &[&[u8]] = &[
        b"[[group]]\n",
        b"[[group.alert]]\n",
        b"[[group.record]]\n",
        b"[[scaling]]\n",
        b"[[replace]]\n",
        b"expr = \"",
        b"for = \"5m\"\n",
        b"{{ $labels.instance }}",
        b"{{ $value | humanize }}",
        b"\"\"\"",
        b"'''",
        b"rate(x[5m])",
        b"= [",
        b"{ a = 1 }",
        b"\\u00e9",
        b"99999999999999999999",
        b"-1",
        b"1e400",
    ];
    let ctx = Context { receivers: None };
    vigil_fuzz::run("rule_file", seeds, dict, 1 << 16, |b| {
        let text = String::from_utf8_lossy(b);
        rulefile::load("fuzz.toml", &text, &ctx).is_ok()
    })
    .assert_clean();
}

/// Expressions to start from: the corpus, and every expression of Prometheus's own test
/// suite when it is beside the repository (read as data).
fn promql_seeds() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = vigil_fuzz::corpus("promql")
        .iter()
        .flat_map(|f| {
            String::from_utf8_lossy(f)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.as_bytes().to_vec())
                .collect::<Vec<_>>()
        })
        .collect();
    let suite = vigil_fuzz::repo().join("../shared/peers/promqltest");
    let mut files: Vec<_> = std::fs::read_dir(&suite)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for line in text.lines() {
            let l = line.trim_start();
            if let Some(rest) = l.strip_prefix("eval ") {
                // eval [instant|range] at T [...] EXPR / eval range from A to B step S EXPR
                let words: Vec<&str> = rest.split_whitespace().collect();
                let skip = match words.first() {
                    Some(&"range") => 7,
                    _ => 3,
                };
                let expr = words
                    .iter()
                    .skip(skip)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" ");
                if !expr.is_empty() {
                    seeds.push(expr.into_bytes());
                }
            }
        }
    }
    seeds
}

#[test]
fn fuzz_promql() {
    let seeds = promql_seeds();
    assert!(!seeds.is_empty(), "fuzz/corpus/promql is empty");
    let mut store = MemStorage::new();
    for (i, job) in ["api", "web"].iter().enumerate() {
        for k in 0..60 {
            let t = k * 15_000;
            for (name, v) in [
                ("http_requests_total", (k * (i as i64 + 1) * 7) as f64),
                ("node_load1", (k % 5) as f64 / 4.0),
            ] {
                let l = Labels::from_pairs([("__name__", name), ("job", job), ("instance", "a:1")]);
                store.add(l, Sample::new(t, v));
            }
            let b = Labels::from_pairs([
                ("__name__", "latency_bucket"),
                ("job", job),
                ("le", if k % 2 == 0 { "0.5" } else { "+Inf" }),
            ]);
            store.add(b, Sample::new(t, k as f64));
        }
    }
    let dict: &[&[u8]] = &[
        b"rate(",
        b"sum by (job) (",
        b"[5m]",
        b"[1h:1s]",
        b"offset 1h",
        b"@ 100",
        b"histogram_quantile(0.9, ",
        b"label_replace(",
        b"count_values(\"v\", ",
        b"topk(3, ",
        b"quantile_over_time(0.5, ",
        b" or ",
        b" and on(job) ",
        b" / ignoring(instance) group_left ",
        b"{job=~\"a.*\"}",
        b"absent(",
        b"predict_linear(",
        b"holt_winters(",
        b"1e308",
        b"NaN",
        b"Inf",
        b"-",
        b")",
        b"]",
        b"\"",
        b"time()",
        b"vector(1)",
        b"scalar(",
        b"sort_desc(",
        b"clamp(",
        b"round(",
        b"deriv(",
        b"changes(",
        b"resets(",
        b"timestamp(",
        b"^",
        b"%",
        b"atan2",
    ];
    let engine = Engine::new(EngineOpts {
        // The aggregator's own limits keep a query of death from running on.
        max_samples: 1_000_000,
        max_subquery_steps: 100_000,
        ..EngineOpts::default()
    });
    vigil_fuzz::run("promql", seeds, dict, 4096, |b| {
        let text = String::from_utf8_lossy(b);
        let Ok(q) = promql::parse(&text) else {
            return false;
        };
        let deadline = Some(Instant::now() + Duration::from_millis(500));
        let instant = engine.instant_until(&store, &q, 900_000, deadline).is_ok();
        let _ = engine.range_until(&store, &q, 0, 900_000, 60_000, deadline);
        instant
    })
    .assert_clean();
}
