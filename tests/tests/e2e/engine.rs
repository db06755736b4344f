//! `[storage] backend = "remote"` on Debian's Prometheus 2.42 (a PromQL engine, with its
//! remote-write receiver and native histograms on): an aggregator that sends whole expressions
//! to it (`evaluation = "engine"`) and one that reads its raw samples, native histograms
//! included, decide exactly as one on its own window fed the same samples. An aggregator told
//! to send whole expressions to VictoriaMetrics (MetricsQL) refuses, saying why.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vigil_e2e::http::{now_ms, post};
use vigil_e2e::{free_port, peer, tempdir, wait_http, wait_until, Child};
use vigil_wire::remote_write::{TimeSeries, WriteRequest};
use vigil_wire::rw_histogram::{BucketSpan, Count, Histogram, ZeroCount};
use vigil_wire::{Labels, Sample};

use crate::remote::{aggregator_on, decisions, rule_error, Vm};

/// `Hot` reads a recorded series (evaluated by Vigil over samples in every mode); `Busy`,
/// `Slow` (over a native histogram) and the scaling expression are whole expressions in
/// engine mode.
const RULES: &str = r#"
[[group]]
name = "load"
interval = "1s"

[[group.record]]
record = "load:avg"
expr = 'avg(app_load)'

[[group.alert]]
alert = "Hot"
expr = 'load:avg > 0.8'
for = "2s"

[[group.alert]]
alert = "Busy"
expr = 'avg(app_load) > 0.8'
for = "2s"

[[group.alert]]
alert = "Slow"
expr = 'histogram_quantile(0.9, sum(rate(app_latency_seconds[5s]))) > 0.5'
for = "2s"

[[scaling]]
name = "web"
asg = "web-asg"
min = 1
max = 2
expr = 'avg(app_load)'
target = 0.5
tolerance = 0.1
interval = "1s"
scale_out_cooldown = "1s"
scale_in_cooldown = "1s"
scale_in_stabilization = "2s"
"#;

/// A cumulative native histogram of schema 0 with a fast bucket, (2^-7, 2^-6] s, and a slow
/// one, (1, 2] s, integer counts (what Prometheus 2.42's receiver reads).
fn latency(fast: u64, slow: u64, ts: i64) -> Histogram {
    Histogram {
        count: Some(Count::Int(fast + slow)),
        sum: fast as f64 * 0.01 + slow as f64 * 1.5,
        schema: 0,
        zero_threshold: 2.938_735_877_055_719e-39,
        zero_count: Some(ZeroCount::Int(0)),
        positive_spans: vec![
            BucketSpan {
                offset: -6,
                length: 1,
            },
            BucketSpan {
                offset: 6,
                length: 1,
            },
        ],
        positive_deltas: vec![fast as i64, slow as i64 - fast as i64],
        timestamp: ts,
        ..Default::default()
    }
}

#[test]
fn whole_expressions_go_to_a_promql_engine_and_its_histograms_are_read() {
    let d = tempdir("engine");
    let port = free_port();
    let prom_url = format!("http://127.0.0.1:{port}");
    let query_log = d.path().join("queries.log");
    std::fs::write(
        d.path().join("prometheus.yml"),
        format!("global:\n  query_log_file: {}\n", query_log.display()),
    )
    .expect("prometheus.yml");
    let prom = Child::spawn(
        "prometheus",
        Command::new(peer("prometheus")).args([
            format!(
                "--config.file={}",
                d.path().join("prometheus.yml").display()
            ),
            format!("--storage.tsdb.path={}", d.path().join("tsdb").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--web.enable-remote-write-receiver".into(),
            "--enable-feature=native-histograms".into(),
        ]),
        d.path(),
    );
    assert!(
        wait_http(&format!("{prom_url}/-/ready"), Duration::from_secs(60)),
        "{}",
        prom.log_text()
    );
    let remote = |more: &str| {
        format!("backend = \"remote\"\n[storage.remote]\nquery_url = \"{prom_url}\"\nquery_timeout = \"5s\"\n{more}")
    };
    let (memory, mem_url) = aggregator_on(d.path(), "memory", "", RULES, &[]);
    let (samples, samples_url) = aggregator_on(d.path(), "samples", &remote(""), RULES, &[]);
    let (engine, engine_url) = aggregator_on(
        d.path(),
        "engine",
        &remote("evaluation = \"engine\""),
        RULES,
        &[],
    );

    // The same samples to Prometheus and to the memory-mode aggregator, every 250 ms, stamped
    // 125 ms past a quarter second: never on a window's edge (evaluations fall on whole
    // seconds), where Prometheus 2.42's closed windows and Vigil's open ones would differ.
    let hot = Arc::new(AtomicBool::new(true));
    let stop = Arc::new(AtomicBool::new(false));
    let pusher = {
        let (hot, stop, prom_url, mem_url) =
            (hot.clone(), stop.clone(), prom_url.clone(), mem_url.clone());
        std::thread::spawn(move || {
            let (mut fast, mut slow) = (0u64, 0u64);
            let mut last = 0;
            while !stop.load(Ordering::Relaxed) {
                let ts = now_ms() / 250 * 250 + 125;
                if ts <= last {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                last = ts;
                let hot = hot.load(Ordering::Relaxed);
                if hot {
                    slow += 1;
                } else {
                    fast += 1;
                }
                let mut timeseries: Vec<TimeSeries> = ["i-a", "i-b"]
                    .iter()
                    .map(|i| {
                        let l = Labels::from_pairs([("__name__", "app_load"), ("instance", i)]);
                        TimeSeries::new(&l, &[Sample::new(ts, if hot { 0.9 } else { 0.1 })])
                    })
                    .collect();
                let l = Labels::from_pairs([("__name__", "app_latency_seconds"), ("job", "app")]);
                let mut h = TimeSeries::new(&l, &[]);
                h.histograms.push(latency(fast, slow, ts));
                timeseries.push(h);
                let body = WriteRequest {
                    timeseries,
                    metadata: vec![],
                }
                .encode_snappy();
                for url in [&prom_url, &mem_url] {
                    let (code, text) = post(
                        &format!("{url}/api/v1/write"),
                        &[
                            ("Content-Encoding", "snappy"),
                            ("Content-Type", "application/x-protobuf"),
                            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
                        ],
                        &body,
                    )
                    .expect("push");
                    assert!((200..300).contains(&code), "{url}: {code} {text}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let logs = || {
        format!(
            "memory:\n{}\nsamples:\n{}\nengine:\n{}\nprometheus:\n{}",
            memory.log_text(),
            samples.log_text(),
            engine.log_text(),
            prom.log_text()
        )
    };
    let all = [&mem_url, &samples_url, &engine_url];
    let fired = |agg: &str| {
        let got = decisions(agg);
        got.contains(&"scaling 1->2 out".to_string())
            && ["Hot", "Busy", "Slow"]
                .iter()
                .all(|a| got.contains(&format!("alert {a} pending->firing")))
    };
    for agg in all {
        wait_until(
            Duration::from_secs(90),
            "a scale-out and the three alerts firing",
            || fired(agg),
            || format!("{agg}: {:?}\n{}", decisions(agg), logs()),
        );
    }
    hot.store(false, Ordering::Relaxed);
    let resolved = |agg: &str| {
        let got = decisions(agg);
        got.contains(&"scaling 2->1 in".to_string())
            && ["Hot", "Busy", "Slow"]
                .iter()
                .all(|a| got.contains(&format!("alert {a} firing->inactive")))
    };
    for agg in all {
        wait_until(
            Duration::from_secs(90),
            "a scale-in and the three alerts resolved",
            || resolved(agg),
            || format!("{agg}: {:?}\n{}", decisions(agg), logs()),
        );
    }
    stop.store(true, Ordering::Relaxed);
    pusher.join().expect("pusher");
    for agg in [&samples_url, &engine_url] {
        assert_eq!(
            decisions(agg),
            decisions(&mem_url),
            "{agg} decided otherwise than the window\n{}",
            logs()
        );
        assert_eq!(rule_error(agg), None, "{}", logs());
    }
    // Prometheus evaluated the whole expressions (its query log), and only those: `Hot` reads
    // the recorded series as samples.
    let asked = std::fs::read_to_string(&query_log).expect("query log");
    for whole in [
        "avg(app_load) > 0.8",
        "histogram_quantile(0.9, sum(rate(app_latency_seconds[5s]))) > 0.5",
    ] {
        assert!(
            asked.contains(&serde_json::to_string(whole).expect("json")),
            "{whole} not in Prometheus's query log"
        );
    }
    assert!(!asked.contains("\"load:avg > 0.8\""), "Hot went whole");

    // Whole expressions to VictoriaMetrics, which answers MetricsQL: refused, and said why.
    let vm = Vm::start(d.path(), &[]);
    let (_metricsql, metricsql_url) = aggregator_on(
        d.path(),
        "metricsql",
        &format!(
            "backend = \"remote\"\n[storage.remote]\nquery_url = \"{}\"\nevaluation = \"engine\"\n",
            vm.url
        ),
        RULES,
        &[],
    );
    wait_until(
        Duration::from_secs(60),
        "the refusal of MetricsQL in rule health",
        || rule_error(&metricsql_url).is_some_and(|e| e.contains("speaks MetricsQL")),
        || format!("{:?}", rule_error(&metricsql_url)),
    );
}
