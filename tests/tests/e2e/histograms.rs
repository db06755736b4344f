//! Native histograms end to end: an application exposing them in the protobuf format, scraped
//! by Debian's Prometheus 2.42 (native histograms on) which remote-writes them into the
//! aggregator, and by Vigil's agent which pushes them; the aggregator answers the same as
//! Prometheus where the two versions agree, and the same for both paths.

use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use vigil_e2e::hook::read_request;
use vigil_e2e::http::{encode_component, get, post};
use vigil_e2e::{bin, free_port, peer, tempdir, wait_http, wait_until, Child};
use vigil_wire::exposition_pb::{
    encode, BucketSpan, Histogram, LabelPair, Metric, MetricFamily, CONTENT_TYPE,
};

/// `rpc_seconds`: two fixed native histograms (the same at every scrape, so the agent's and
/// Prometheus's copies agree); `jobs_seconds`: one that grows by the second, for rates.
fn families() -> Vec<MetricFamily> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    let k = (secs % 100_000) as i64;
    let metric = |service: &str, h: Histogram| Metric {
        label: vec![LabelPair {
            name: "service".into(),
            value: service.into(),
        }],
        histogram: Some(h),
        ..Default::default()
    };
    let api = Histogram {
        sample_count: 46,
        sample_sum: 23.75,
        schema: 3,
        zero_threshold: 1e-3,
        zero_count: 2,
        negative_span: vec![BucketSpan {
            offset: 0,
            length: 2,
        }],
        negative_delta: vec![1, 1],
        positive_span: vec![
            BucketSpan {
                offset: -4,
                length: 4,
            },
            BucketSpan {
                offset: 2,
                length: 3,
            },
        ],
        positive_delta: vec![3, 2, -1, 1, 4, -3, 3],
        ..Default::default()
    };
    let db = Histogram {
        sample_count: 15,
        sample_sum: 40.5,
        schema: 0,
        zero_threshold: 1e-3,
        positive_span: vec![BucketSpan {
            offset: 0,
            length: 4,
        }],
        positive_delta: vec![2, 3, -1, 0],
        ..Default::default()
    };
    let jobs = Histogram {
        sample_count: (6 * k) as u64,
        sample_sum: 1.5 * k as f64,
        schema: 1,
        zero_threshold: 1e-3,
        positive_span: vec![BucketSpan {
            offset: -1,
            length: 3,
        }],
        positive_delta: vec![k, k, -k + 2 * k],
        ..Default::default()
    };
    vec![
        MetricFamily {
            name: "rpc_seconds".into(),
            help: "RPC latency.".into(),
            r#type: 4,
            metric: vec![metric("api", api), metric("db", db)],
        },
        MetricFamily {
            name: "jobs_seconds".into(),
            help: "Job durations.".into(),
            r#type: 4,
            metric: vec![metric("batch", jobs)],
        },
    ]
}

/// Serves the families in the protobuf exposition to whoever asks for it (text otherwise).
fn start_app() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(mut w) = s.try_clone() else { return };
                let mut r = BufReader::new(s);
                while let Some(req) = read_request(&mut r) {
                    let protobuf = req
                        .header("accept")
                        .is_some_and(|a| a.contains("application/vnd.google.protobuf"));
                    let (ct, body) = if protobuf {
                        (CONTENT_TYPE.to_string(), encode(&families()))
                    } else {
                        (
                            "text/plain; version=0.0.4".to_string(),
                            b"# no text exposition here\n".to_vec(),
                        )
                    };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    if w.write_all(head.as_bytes()).is_err() || w.write_all(&body).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

fn query(base: &str, q: &str, t: f64) -> serde_json::Value {
    let (code, body) = get(&format!(
        "{base}/api/v1/query?query={}&time={t}",
        encode_component(q)
    ))
    .expect("query");
    assert_eq!(code, 200, "{base} {q}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let mut r = v["data"]["result"].as_array().cloned().unwrap_or_default();
    r.sort_by_key(|x| x["metric"].to_string());
    serde_json::Value::Array(r)
}

/// The values of an instant vector by their labels (as sorted JSON text).
fn values(v: &serde_json::Value) -> Vec<(String, f64)> {
    v.as_array()
        .expect("vector")
        .iter()
        .map(|x| {
            let f: f64 = x["value"][1]
                .as_str()
                .expect("a float sample")
                .parse()
                .expect("number");
            (x["metric"].to_string(), f)
        })
        .collect()
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs_f64()
}

fn close_bound(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-14 * a.abs().max(b.abs())
}

fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

#[test]
fn native_histograms_from_prometheus_and_the_agent_answer_as_prometheus_does() {
    let dir = tempdir("hist");
    let d = dir.path();
    let app = start_app();
    let port = free_port();
    let agg = format!("http://127.0.0.1:{port}");
    std::fs::write(
        d.join("aggregator.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[storage]\nretention = \"1h\"\nstate_dir = \"{}\"\n[rules]\nfiles = [\"/nonexistent/*.toml\"]\nevaluation_interval = \"1s\"\n",
            d.join("state").display()
        ),
    )
    .expect("config");
    let _agg = Child::spawn(
        "aggregator",
        Command::new(bin("vigil-aggregator"))
            .arg("--config")
            .arg(d.join("aggregator.toml")),
        d,
    );
    assert!(wait_http(
        &format!("{agg}/-/ready"),
        Duration::from_secs(60)
    ));

    // A malformed histogram is refused whole, with its reason; the aggregator goes on.
    let bad = {
        use vigil_wire::remote_write::{TimeSeries, WriteRequest};
        let l = vigil_wire::Labels::from_pairs([("__name__", "broken")]);
        let mut ts = TimeSeries::new(&l, &[]);
        let mut h = vigil_wire::rw_histogram::Histogram::from_float(
            &vigil_wire::histogram::FloatHistogram::parse_notation("{{count:1 buckets:[1]}}")
                .expect("notation")
                .0,
            1,
        );
        h.positive_counts.push(5.0);
        ts.histograms.push(h);
        WriteRequest {
            timeseries: vec![ts],
            metadata: vec![],
        }
        .encode_snappy()
    };
    let (code, body) = post(&format!("{agg}/api/v1/write"), &[], &bad).expect("post");
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("series 0: histogram: positive spans"),
        "{body}"
    );

    // Prometheus scrapes the application (protobuf, native histograms) and remote-writes.
    let prom_port = free_port();
    let prom = format!("http://127.0.0.1:{prom_port}");
    std::fs::write(
        d.join("prometheus.yml"),
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: app\n    static_configs: [{{ targets: ['127.0.0.1:{app}'] }}]\nremote_write:\n  - url: {agg}/api/v1/write\n    send_native_histograms: true\n    queue_config: {{ batch_send_deadline: 1s }}\n"),
    )
    .expect("prometheus.yml");
    let _prom = Child::spawn(
        "prometheus",
        Command::new(peer("prometheus")).args([
            format!("--config.file={}", d.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", d.join("tsdb").display()),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
            "--enable-feature=native-histograms".into(),
        ]),
        d,
    );
    // And Vigil's agent scrapes it too and pushes.
    std::fs::write(
        d.join("agent.toml"),
        format!(
            "[agent]\ninterval = \"1s\"\nhost_metrics = false\n[identity]\nsource = \"static\"\ninstance = \"i-hist\"\n[[scrape]]\nurl = \"http://127.0.0.1:{app}/metrics\"\nnative_histograms = true\n[push]\nurl = \"{agg}/api/v1/write\"\n[buffer]\ndir = \"{}\"\n[listen]\naddress = \"127.0.0.1:{}\"\n",
            d.join("spool").display(),
            free_port()
        ),
    )
    .expect("agent.toml");
    let agent = Child::spawn(
        "agent",
        Command::new(bin("vigil-agent"))
            .arg("--config")
            .arg(d.join("agent.toml")),
        d,
    );

    // Once both copies flow, a query time ten seconds on (so that every window and offset
    // below has samples), then until both have every sample for it: each of Prometheus's
    // series has one after it at both (remote-write sends each series in order).
    let started = Instant::now();
    wait_until(
        Duration::from_secs(120),
        "the first histograms from Prometheus and from the agent",
        || {
            let n = |q: &str| values(&query(&agg, q, now_secs())).len();
            n(r#"histogram_count({job="app"})"#) == 3
                && n(r#"histogram_count({instance="i-hist"})"#) == 3
        },
        || {
            format!(
                "{}\n{}",
                get(&format!("{prom}/api/v1/targets"))
                    .map(|r| r.1)
                    .unwrap_or_default(),
                agent.log_text()
            )
        },
    );
    let t = (now_secs() + 10.0).floor();
    let past_t = |base: &str| {
        let v = query(
            base,
            r#"min(timestamp({job="app", __name__=~"rpc_seconds|jobs_seconds"}))"#,
            t + 120.0,
        );
        values(&v).first().is_some_and(|(_, ts)| *ts >= t + 1.0)
    };
    wait_until(
        Duration::from_secs(120),
        "histograms past the query time at both, and the agent's",
        || {
            past_t(&agg)
                && past_t(&prom)
                && values(&query(
                    &agg,
                    r#"count(histogram_count(rpc_seconds{instance="i-hist"}))"#,
                    t + 120.0,
                ))
                .first()
                .is_some_and(|(_, n)| *n == 2.0)
        },
        || {
            let q = r#"{job="app"}"#;
            format!(
                "targets: {:?}\naggregator: {}\nprometheus: {}\nagent's: {}\n{}",
                get(&format!("{prom}/api/v1/targets")),
                query(&agg, q, t + 120.0),
                query(&prom, q, t + 120.0),
                query(&agg, r#"{instance="i-hist"}"#, t + 120.0),
                agent.log_text()
            )
        },
    );
    println!("histograms arrived: {} ms", started.elapsed().as_millis());

    // The raw histograms: Prometheus's JSON, bucket for bucket.
    let raw = r#"rpc_seconds{job="app"}"#;
    let (a, b) = (query(&agg, raw, t), query(&prom, raw, t));
    assert_eq!(a.as_array().map(Vec::len), Some(2), "{a}");
    for (x, y) in a
        .as_array()
        .expect("a")
        .iter()
        .zip(b.as_array().expect("b"))
    {
        assert_eq!(x["metric"], y["metric"]);
        assert_eq!(x["histogram"][0], y["histogram"][0], "{x}\n{y}");
        let (hx, hy) = (&x["histogram"][1], &y["histogram"][1]);
        assert_eq!(
            (&hx["count"], &hx["sum"]),
            (&hy["count"], &hy["sum"]),
            "{x}\n{y}"
        );
        let (bx, by) = (
            hx["buckets"].as_array().expect("buckets"),
            hy["buckets"].as_array().expect("buckets"),
        );
        assert_eq!(bx.len(), by.len(), "{x}\n{y}");
        // Bounds as Prometheus 3 computes them (exactly at powers of two, the last digit of
        // others may differ from 2.42's); rules and counts the same.
        let num =
            |v: &serde_json::Value| -> f64 { v.as_str().expect("text").parse().expect("num") };
        for (p, q) in bx.iter().zip(by) {
            assert_eq!((&p[0], &p[3]), (&q[0], &q[3]), "{x}\n{y}");
            assert!(
                close_bound(num(&p[1]), num(&q[1])) && close_bound(num(&p[2]), num(&q[2])),
                "{p} vs {q}"
            );
        }
    }
    // The functions both versions define alike (2.42 interpolates within a native bucket
    // linearly, 3.x exponentially: the fraction is asked at bucket bounds).
    for q in [
        r#"histogram_count(rpc_seconds{job="app"})"#,
        r#"histogram_sum(rpc_seconds{job="app"})"#,
        r#"histogram_fraction(0, 1, rpc_seconds{job="app"})"#,
        r#"histogram_count(rate(jobs_seconds{job="app"}[5s]))"#,
        r#"histogram_sum(rate(jobs_seconds{job="app"}[5s]))"#,
        r#"histogram_count(sum by (job) (rpc_seconds{job="app"}))"#,
        r#"histogram_count(jobs_seconds{job="app"}) - histogram_count(jobs_seconds{job="app"} offset 2s)"#,
    ] {
        let (a, b) = (values(&query(&agg, q, t)), values(&query(&prom, q, t)));
        assert!(!a.is_empty(), "{q}: nothing");
        assert_eq!(a.len(), b.len(), "{q}: {a:?} vs {b:?}");
        for (x, y) in a.iter().zip(&b) {
            assert!(x.0 == y.0 && close(x.1, y.1), "{q}: {a:?} vs {b:?}");
        }
    }
    // Histograms subtracted are the difference of their counts (2.42 may not subtract them).
    let diff = values(&query(
        &agg,
        r#"histogram_count(jobs_seconds{job="app"} - jobs_seconds{job="app"} offset 2s)"#,
        t,
    ));
    let counts = values(&query(
        &agg,
        r#"histogram_count(jobs_seconds{job="app"}) - histogram_count(jobs_seconds{job="app"} offset 2s)"#,
        t,
    ));
    assert!(diff.len() == 1 && diff == counts, "{diff:?} vs {counts:?}");
    // The agent's copy is the application's histogram too: the same answers as Prometheus's.
    for q in [
        "histogram_quantile(0.9, rpc_seconds{SEL})",
        "histogram_quantile(0.2, rpc_seconds{SEL})",
        "histogram_stddev(rpc_seconds{SEL})",
        "histogram_fraction(-0.5, 0.3, rpc_seconds{SEL})",
    ] {
        let via_prom = values(&query(&agg, &q.replace("SEL", r#"job="app""#), t));
        let via_agent = values(&query(&agg, &q.replace("SEL", r#"instance="i-hist""#), t));
        assert_eq!(via_prom.len(), 2, "{q}");
        for (x, y) in via_prom.iter().zip(&via_agent) {
            assert!(close(x.1, y.1), "{q}: {via_prom:?} vs {via_agent:?}");
        }
    }
}
