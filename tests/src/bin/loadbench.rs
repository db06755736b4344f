//! The aggregator under query load, and its PromQL latency beside Prometheus's; used by
//! bench/aggregator_under_load.sh after rwbench has loaded the same samples into both.
//!
//!   loadbench stall AGGREGATOR SECONDS CLIENTS
//!     Pushes 200 fresh series every 20 ms and asks /-/healthy every 20 ms for SECONDS, first with
//!     no queries, then while CLIENTS clients repeat a heavy query; prints p50/p99/max of both.
//!   loadbench queries AGGREGATOR PROMETHEUS TIME_MS RUNS
//!     Runs each benchmark query RUNS times against both (instant queries at TIME_MS, the range
//!     query over the 25 minutes before it at a 60 s step); prints the median latency of each,
//!     the ratio, the geometric mean of the ratios, and whether the answers agree.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use vigil_e2e::http::{encode_component, get, push_now};
use vigil_wire::Labels;

/// The heavy query of the stall test: every series of the fleet, rated and summed.
const HEAVY: &str = r#"sum by (instance) (rate({job="node"}[5m]))"#;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Latencies {
    push: Vec<f64>,
    healthy: Vec<f64>,
    queries: usize,
    failed: usize,
}

/// One phase of the stall test: pushes and health checks for `secs`, with `clients` query loops.
fn phase(base: &str, secs: u64, clients: usize) -> Latencies {
    let stop = Arc::new(AtomicBool::new(false));
    let end = Instant::now() + Duration::from_secs(secs);
    let series: Vec<(Labels, f64)> = (0..200)
        .map(|i| {
            (
                Labels::from_pairs([
                    ("__name__", "bench_live".to_string()),
                    ("job", "live".to_string()),
                    ("n", i.to_string()),
                ]),
                i as f64,
            )
        })
        .collect();
    std::thread::scope(|s| {
        let mut queriers = Vec::new();
        for _ in 0..clients {
            let stop = stop.clone();
            queriers.push(s.spawn(move || {
                let url = format!("{base}/api/v1/query?query={}", encode_component(HEAVY));
                let (mut n, mut failed) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    match get(&url) {
                        Ok((200, _)) => n += 1,
                        _ => failed += 1,
                    }
                }
                (n, failed)
            }));
        }
        let pusher = s.spawn(|| {
            let mut out = Vec::new();
            let mut failed = 0;
            while Instant::now() < end {
                let t = Instant::now();
                if push_now(base, &series) != 204 {
                    failed += 1;
                }
                out.push(t.elapsed().as_secs_f64() * 1000.0);
                std::thread::sleep(Duration::from_millis(20));
            }
            (out, failed)
        });
        let prober = s.spawn(|| {
            let mut out = Vec::new();
            let mut failed = 0;
            while Instant::now() < end {
                let t = Instant::now();
                if !matches!(get(&format!("{base}/-/healthy")), Ok((200, _))) {
                    failed += 1;
                }
                out.push(t.elapsed().as_secs_f64() * 1000.0);
                std::thread::sleep(Duration::from_millis(20));
            }
            (out, failed)
        });
        let (mut push, pf) = pusher.join().expect("pusher");
        let (mut healthy, hf) = prober.join().expect("prober");
        stop.store(true, Ordering::Relaxed);
        let (mut queries, mut qf) = (0, 0);
        for q in queriers {
            let (n, f) = q.join().expect("querier");
            queries += n;
            qf += f;
        }
        push.sort_by(f64::total_cmp);
        healthy.sort_by(f64::total_cmp);
        Latencies {
            push,
            healthy,
            queries,
            failed: pf + hf + qf,
        }
    })
}

fn stall(args: &[String]) {
    let base = &args[0];
    let secs: u64 = args[1].parse().expect("seconds");
    let clients: usize = args[2].parse().expect("clients");
    let idle = phase(base, secs, 0);
    let busy = phase(base, secs, clients);
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>8}",
        "", "p50 ms", "p99 ms", "max ms", "failed"
    );
    for (name, l) in [("idle", &idle), ("under queries", &busy)] {
        for (what, v) in [("push", &l.push), ("/-/healthy", &l.healthy)] {
            println!(
                "{:<28} {:>9.2} {:>9.2} {:>9.2} {:>8}",
                format!("{what}, {name}"),
                percentile(v, 0.5),
                percentile(v, 0.99),
                percentile(v, 1.0),
                l.failed
            );
        }
    }
    let (ip99, bp99) = (percentile(&idle.push, 0.99), percentile(&busy.push, 0.99));
    println!(
        "heavy queries answered during the loaded phase: {} ({clients} clients, {HEAVY})",
        busy.queries
    );
    println!(
        "push p99 under queries / idle: {:.2}x (goal <= 3x, or <= 50 ms: {}); /-/healthy max under queries {:.1} ms (goal < 1000)",
        bp99 / ip99,
        if bp99 <= 3.0 * ip99 || bp99 <= 50.0 { "met" } else { "NOT met" },
        percentile(&busy.healthy, 1.0)
    );
}

/// A result as comparable data: labels → points (one point for an instant vector).
fn result(body: &str) -> Result<BTreeMap<String, Vec<(i64, f64)>>, String> {
    let v: Json = serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))?;
    if v["status"] != "success" {
        return Err(body.chars().take(300).collect());
    }
    let mut out = BTreeMap::new();
    let num = |p: &Json| -> (i64, f64) {
        (
            (p[0].as_f64().unwrap_or(f64::NAN) * 1000.0).round() as i64,
            p[1].as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(f64::NAN),
        )
    };
    for r in v["data"]["result"].as_array().into_iter().flatten() {
        let key = r["metric"].to_string();
        let points = match r.get("values") {
            Some(vals) => vals.as_array().into_iter().flatten().map(num).collect(),
            None => vec![num(&r["value"])],
        };
        out.insert(key, points);
    }
    Ok(out)
}

/// Same series, same timestamps, values within a relative 1e-9 (summation order may differ).
fn agree(a: &BTreeMap<String, Vec<(i64, f64)>>, b: &BTreeMap<String, Vec<(i64, f64)>>) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((ka, pa), (kb, pb))| {
            ka == kb
                && pa.len() == pb.len()
                && pa.iter().zip(pb).all(|(x, y)| {
                    x.0 == y.0
                        && (x.1 == y.1
                            || (x.1.is_nan() && y.1.is_nan())
                            || (x.1 - y.1).abs() <= 1e-9 * x.1.abs().max(y.1.abs()))
                })
        })
}

fn median_ms(url: &str, runs: usize) -> (f64, String) {
    // One untimed run first: both servers get their caches warm.
    let (_, mut body) = get(url).expect("query");
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let (_, b) = get(url).expect("query");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        body = b;
    }
    times.sort_by(f64::total_cmp);
    (percentile(&times, 0.5), body)
}

fn queries(args: &[String]) {
    let (agg, prom) = (&args[0], &args[1]);
    let t: i64 = args[2].parse().expect("time ms");
    let runs: usize = args[3].parse().expect("runs");
    let secs = |ms: i64| format!("{:.3}", ms as f64 / 1000.0);
    let instant = |q: &str| {
        format!(
            "/api/v1/query?query={}&time={}",
            encode_component(q),
            secs(t)
        )
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "sum by (job) (rate)",
            instant(r#"sum by (job) (rate({job="node"}[5m]))"#),
        ),
        ("topk", instant(r#"topk(5, rate({job="node"}[5m]))"#)),
        (
            "ratio of two sums",
            instant("sum(rate(bench_metric_1[5m])) / sum(rate(bench_metric_2[5m]))"),
        ),
        ("count by", instant(r#"count by (asg) ({job="node"})"#)),
        ("one instance", instant(r#"{instance="10.0.0.7:9100"}"#)),
        (
            "range 25m / 60s",
            format!(
                "/api/v1/query_range?query={}&start={}&end={}&step=60",
                encode_component(r#"sum by (asg) (rate({job="node"}[5m]))"#),
                secs(t - 25 * 60_000),
                secs(t)
            ),
        ),
    ];
    println!(
        "{:<22} {:>12} {:>14} {:>8} {:>8}",
        "query", "vigil ms", "prometheus ms", "ratio", "answers"
    );
    let mut log_sum = 0.0;
    let mut all_agree = true;
    for (name, path) in &cases {
        let (va, ba) = median_ms(&format!("{agg}{path}"), runs);
        let (vp, bp) = median_ms(&format!("{prom}{path}"), runs);
        let same = match (result(&ba), result(&bp)) {
            (Ok(a), Ok(b)) => agree(&a, &b) && !a.is_empty(),
            (a, b) => {
                eprintln!("loadbench: {name}: {a:?} / {b:?}");
                false
            }
        };
        all_agree &= same;
        log_sum += (va / vp).ln();
        println!(
            "{name:<22} {va:>12.2} {vp:>14.2} {:>8.2} {:>8}",
            va / vp,
            if same { "same" } else { "DIFFER" }
        );
    }
    let geo = (log_sum / cases.len() as f64).exp();
    println!(
        "geometric mean of the ratios vigil/prometheus: {geo:.2} (goal <= 0.5); answers {}",
        if all_agree { "identical" } else { "DIFFER" }
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("stall") if args.len() == 4 => stall(&args[1..]),
        Some("queries") if args.len() == 5 => queries(&args[1..]),
        _ => {
            eprintln!("usage: loadbench stall AGGREGATOR SECONDS CLIENTS | loadbench queries AGGREGATOR PROMETHEUS TIME_MS RUNS");
            std::process::exit(2);
        }
    }
}
