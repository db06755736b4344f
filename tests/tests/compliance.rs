//! The Prometheus project's PromQL compliance suite (`../shared/peers/promql-compliance/`) scored
//! as vendors are scored: the same demo-service-like samples remote-written into Debian's
//! Prometheus 2.42 and the aggregator, every case expanded and run as a range query on both
//! (end = now − 12 min, 10 min, step 10 s), the answers compared as the tester compares them.
//! Prints `passed N / total (P%), unsupported U` and each failure; fails on any failure that is
//! not a known difference between Prometheus 2.x and 3.x (which Vigil follows), each named.
//!
//! Then the differential test on the same data: `PROMQL_DIFF_CASES` random well-typed queries
//! (default 300; `bench/promql_diff.sh` runs 10,000) from `PROMQL_DIFF_SEED` (default 1), each a
//! range query on both, compared the same way; prints the agreement count and every difference.

use std::process::{Command, ExitCode};
use std::time::Duration;

use vigil_e2e::compliance::{answer, data_set, expand, judge, Answer, Case, NO_ANSWER};
use vigil_e2e::http::{encode_component, get, post};
use vigil_e2e::promql_gen::Gen;
use vigil_e2e::{bin, free_port, peer, tempdir, wait_http, Child};

/// Cases whose answers differ because Prometheus changed between 2.42 and 3.x, and Vigil
/// follows 3.x: the query, the same question put to 2.42 with 3.x's semantics (Vigil's answer
/// must equal 2.42's answer to it, so each exception is checked, not only named), and the change.
///
/// Subquery steps fall on the range query's 10 s grid, so the first inner point of a
/// `[5m:10s]` window lies exactly on its start: 2.x's closed window counts it, 3.x's left-open
/// one does not. A window one second shorter has the same points in both.
const KNOWN: &[(&str, &str, &str)] = &[
    (
        "max_over_time((time() - max(demo_batch_last_success_timestamp_seconds) < 1000)[5m:10s] offset 5m)",
        "max_over_time((time() - max(demo_batch_last_success_timestamp_seconds) < 1000)[4m59s:10s] offset 5m)",
        "Prometheus 3.0: range and subquery windows left-open (prometheus/prometheus#13904, #15431)",
    ),
    (
        "avg_over_time(rate(demo_cpu_usage_seconds_total[1m])[2m:10s])",
        "avg_over_time(rate(demo_cpu_usage_seconds_total[1m])[1m59s:10s])",
        "Prometheus 3.0: range and subquery windows left-open (prometheus/prometheus#13904, #15431)",
    ),
];

/// The `errorType` an answer failed with (`bad_data`, `execution`, ...).
fn error_type(a: &Answer) -> Option<&str> {
    a.as_ref().err().and_then(|e| e.split(':').next())
}

fn main() -> ExitCode {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let suite = std::env::var_os("PROMQL_COMPLIANCE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/peers/promql-compliance"))
        .join("promql-test-queries.yml");
    if !suite.is_file() {
        eprintln!(
            "compliance: the suite is not at {} (set PROMQL_COMPLIANCE_DIR)",
            suite.display()
        );
        return ExitCode::FAILURE;
    }
    // The YAML read by Python's yaml (scripts/test installs it), handed over as JSON.
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(&suite)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "reading {}: {}",
        suite.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("suite as JSON");
    let cases = expand(&doc).expect("the suite's cases");

    let dir = tempdir("compliance");
    let d = dir.path();
    let agg_port = free_port();
    std::fs::write(
        d.join("aggregator.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:{agg_port}\"\n\n[storage]\nretention = \"3h\"\nstate_dir = \"{}\"\n\n[rules]\nfiles = [\"/nonexistent/*.toml\"]\n",
            d.join("state").display()
        ),
    )
    .expect("config");
    let agg = Child::spawn(
        "aggregator",
        Command::new(bin("vigil-aggregator"))
            .arg("--config")
            .arg(d.join("aggregator.toml")),
        d,
    );
    let prom_port = free_port();
    std::fs::write(d.join("prometheus.yml"), "global:\n  scrape_interval: 5s\n").expect("prom");
    let prom = Child::spawn(
        "prometheus",
        Command::new(peer("prometheus")).args([
            format!("--config.file={}", d.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", d.join("tsdb").display()),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
            "--web.enable-remote-write-receiver".to_string(),
        ]),
        d,
    );
    let bases = [
        format!("http://127.0.0.1:{agg_port}"),
        format!("http://127.0.0.1:{prom_port}"),
    ];
    for (b, c) in bases.iter().zip([&agg, &prom]) {
        assert!(
            wait_http(&format!("{b}/-/ready"), Duration::from_secs(60)),
            "{b} did not start:\n{}",
            c.log_text()
        );
    }

    // Two hours and ten minutes of samples up to now, sent a minute at a time, oldest first (a
    // Prometheus head takes nothing older than an hour before its newest sample).
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_millis() as i64;
    // From a whole minute: where samples fall within the 10 s steps, and so the answers, are
    // the same on every run (the queries' own times move with the clock, on the same grid).
    let now_ms = now_ms - now_ms.rem_euclid(60_000);
    let from_ms = now_ms - 130 * 60_000;
    let data = data_set(from_ms, now_ms);
    let headers = [
        ("Content-Encoding", "snappy"),
        ("Content-Type", "application/x-protobuf"),
        ("X-Prometheus-Remote-Write-Version", "0.1.0"),
    ];
    let mut sent = 0usize;
    let mut at = from_ms;
    while at <= now_ms {
        let next = at + 60_000;
        let slices: Vec<_> = data
            .iter()
            .map(|(l, s)| {
                let lo = s.partition_point(|x| x.timestamp_ms < at);
                let hi = s.partition_point(|x| x.timestamp_ms < next);
                (l, &s[lo..hi])
            })
            .filter(|(_, s)| !s.is_empty())
            .collect();
        sent += slices.iter().map(|(_, s)| s.len()).sum::<usize>();
        let body = vigil_wire::remote_write::encode_snappy_from(slices);
        for b in &bases {
            let (code, text) = post(&format!("{b}/api/v1/write"), &headers, &body).expect("write");
            assert!(code / 100 == 2, "{b}: {code} {text}");
        }
        at = next;
    }

    let end = (now_ms / 1000 - 12 * 60) / 10 * 10;
    let range = format!("&start={}&end={end}&step=10", end - 600);
    let run = |base: &str, case: &Case| -> Answer {
        let url = format!(
            "{base}/api/v1/query_range?query={}{range}",
            encode_component(&case.query)
        );
        match get(&url) {
            Ok((code, body)) => answer(code, &body),
            Err(e) => Err(format!("{NO_ANSWER}: {e}")),
        }
    };
    let (mut passed, mut known, mut failed) = (0usize, Vec::new(), Vec::<(String, String)>::new());
    for case in &cases {
        let v = run(&bases[0], case);
        let p = run(&bases[1], case);
        match judge(case, &v, &p) {
            None => passed += 1,
            Some(why) => match KNOWN.iter().find(|(q, _, _)| *q == case.query) {
                Some((_, as_3x, change)) => {
                    let same_question = Case {
                        query: as_3x.to_string(),
                        ..case.clone()
                    };
                    match judge(case, &v, &run(&bases[1], &same_question)) {
                        None => known.push((case.query.clone(), why, *change)),
                        Some(still) => failed.push((
                            case.query.clone(),
                            format!("{why}; and against {as_3x}: {still}"),
                        )),
                    }
                }
                None => failed.push((case.query.clone(), why)),
            },
        }
    }
    let total = cases.len();
    println!(
        "PromQL compliance (prometheus/compliance's promql-test-queries.yml against Prometheus 2.42, {} series, {sent} samples): passed {passed} / {total} ({:.2}%), unsupported 0",
        data.len(),
        100.0 * passed as f64 / total as f64
    );
    for (q, why, change) in &known {
        println!(
            "  known 2.x/3.x difference (Vigil agrees with 2.42 asked the 3.x question): {q}\n      {why}\n      ({change})"
        );
    }
    for (q, why) in &failed {
        println!("  FAILED: {q}\n      {why}");
    }

    // The differential test: random queries over the same data, a few steps' width apart.
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (n, seed) = (env("PROMQL_DIFF_CASES", 300), env("PROMQL_DIFF_SEED", 1));
    let mut gen = Gen::new(seed);
    let (mut agreed, mut both_failed, mut differ) = (0usize, 0usize, Vec::new());
    let mut changed: Vec<(String, Vec<&str>)> = Vec::new();
    let mut non_empty = 0usize;
    for _ in 0..n {
        let q = gen.query();
        let case = Case {
            query: q.vigil.clone(),
            should_fail: false,
            skip_comparison: false,
        };
        let v = run(&bases[0], &case);
        let p = run(&bases[1], &case);
        match judge(&case, &v, &p) {
            None => {
                agreed += 1;
                if v.as_ref().is_ok_and(|s| !s.is_empty()) {
                    non_empty += 1;
                }
            }
            // An expression both refuse for the same reason (a many-to-many match, say).
            Some(_) if error_type(&v).is_some() && error_type(&v) == error_type(&p) => {
                both_failed += 1
            }
            // A construct whose meaning Prometheus changed since 2.42: checked by asking 2.42
            // the question with the new meaning.
            Some(why) if !q.changes.is_empty() => {
                let as_3x = Case {
                    query: q.for_2_42.clone(),
                    ..case.clone()
                };
                match judge(&case, &v, &run(&bases[1], &as_3x)) {
                    None => changed.push((case.query, q.changes)),
                    Some(still) => differ.push((
                        case.query,
                        format!("{why}; and against {}: {still}", q.for_2_42),
                    )),
                }
            }
            Some(why) => differ.push((case.query, why)),
        }
    }
    println!(
        "PromQL differential test (seed {seed}): {} of {n} random queries agree with Prometheus 2.42 ({non_empty} with series in their answers, {both_failed} refused by both for the same reason), {} differ by a change Prometheus made since (checked), {} differ otherwise",
        agreed + both_failed,
        changed.len(),
        differ.len()
    );
    let mut by_change: std::collections::BTreeMap<&str, usize> = Default::default();
    for c in changed.iter().flat_map(|(_, c)| c) {
        *by_change.entry(c).or_default() += 1;
    }
    // (a query is counted under each change it meets)
    for (c, k) in by_change {
        println!("  met by {k}: {c}");
    }
    for (q, why) in &differ {
        println!("  DIFFERS: {q}\n      {why}");
    }
    if failed.is_empty() && differ.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
