//! The aggregator with real senders (the agent, Prometheus's remote_write), its answers to bad
//! input, and all-or-nothing reload.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vigil_e2e::http::{get, post, prom_query};
use vigil_e2e::{bin, free_port, peer, tempdir, wait_http, wait_until, Child};
use vigil_wire::remote_write::{TimeSeries, WriteRequest};
use vigil_wire::{Labels, Sample};

fn write_config(dir: &Path, port: u16, rules: &str, extra: &str) -> std::path::PathBuf {
    let cfg = dir.join("aggregator.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n{extra}\n[storage]\nretention = \"1h\"\nstale_after = \"3s\"\nstate_dir = \"{}\"\n\n[rules]\nfiles = [\"{rules}\"]\nevaluation_interval = \"1s\"\n\n[[receiver]]\nname = \"oncall\"\nsns_topic_arn = \"arn:aws:sns:us-east-1:123456789012:oncall\"\n",
            dir.join("state").display()
        ),
    )
    .expect("write config");
    cfg
}

fn start(dir: &Path, cfg: &Path, port: u16) -> Child {
    let c = Child::spawn(
        "aggregator",
        Command::new(bin("vigil-aggregator"))
            .arg("--config")
            .arg(cfg),
        dir,
    );
    assert!(
        wait_http(
            &format!("http://127.0.0.1:{port}/-/ready"),
            Duration::from_secs(60)
        ),
        "aggregator did not start:\n{}",
        c.log_text()
    );
    c
}

fn wait_for(
    base: &str,
    query: &str,
    n: usize,
) -> Vec<(serde_json::Map<String, serde_json::Value>, f64)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = prom_query(base, query);
        if r.len() >= n || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn agent_pushes_rules_evaluate_and_the_api_answers() {
    let dir = tempdir("agg-agent");
    let port = free_port();
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/rules/web.toml");
    let cfg = write_config(dir.path(), port, &rules.display().to_string(), "");
    let agg = start(dir.path(), &cfg, port);
    let base = format!("http://127.0.0.1:{port}");
    let _agent = start_agent(dir.path(), &base, "i-e2e");
    let load = wait_for(&base, "node_load1{instance=\"i-e2e\"}", 1);
    assert_eq!(load.len(), 1, "aggregator log:\n{}", agg.log_text());
    assert_eq!(load[0].0["asg"], "web-asg");
    // Label values, narrowed by match[] as Prometheus does (the record rule's series carry no
    // instance label, so an unnarrowed answer would differ only by chance).
    let (code, body) = get(&format!(
        "{base}/api/v1/label/instance/values?match[]=node_load1%7Binstance%3D%22i-e2e%22%7D"
    ))
    .expect("label values");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["data"], serde_json::json!(["i-e2e"]), "{body}");
    let (code, body) = get(&format!("{base}/api/v1/labels?match[]=node_load1")).expect("labels");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("\"instance\"") && !body.contains("\"device\""),
        "{body}"
    );
    // The CPU record rule runs over the pushed series.
    let rec = wait_for(&base, "asg:cpu_utilization:avg", 1);
    assert_eq!(rec.len(), 1, "{}", agg.log_text());
    assert!((0.0..=1.0).contains(&rec[0].1));
    let (code, rules) = get(&format!("{base}/api/v1/rules")).expect("rules");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&rules).expect("json");
    assert_eq!(
        v["data"]["groups"].as_array().map(|g| g.len()),
        Some(2),
        "{rules}"
    );
    let (code, scaling) = get(&format!("{base}/api/v1/scaling")).expect("scaling");
    assert_eq!(code, 200, "{scaling}");
    assert!(scaling.contains("\"group\":\"web-asg\""), "{scaling}");
    let (code, inst) = get(&format!("{base}/api/v1/instances")).expect("instances");
    assert!(code == 200 && inst.contains("i-e2e"), "{inst}");
    // Range queries and label values.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    let (code, body) = get(&format!(
        "{base}/api/v1/query_range?query=node_load1&start={}&end={now}&step=1",
        now - 10
    ))
    .expect("range");
    assert!(
        code == 200 && body.contains("\"resultType\":\"matrix\""),
        "{body}"
    );
    let (code, body) = get(&format!("{base}/api/v1/label/instance/values")).expect("values");
    assert!(code == 200 && body.contains("i-e2e"), "{body}");
    let (code, body) = get(&format!("{base}/api/v1/query?query=sum(")).expect("bad query");
    assert!(
        code == 400 && body.contains("bad_data") && body.contains("1:4"),
        "{body}"
    );
}

/// A remote-write body from raw protobuf bytes (for bodies prost would refuse to build).
fn raw_body(proto: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new()
        .compress_vec(proto)
        .expect("snappy")
}

#[test]
fn bad_writes_are_refused_and_the_aggregator_keeps_serving() {
    let dir = tempdir("agg-bad");
    let port = free_port();
    std::fs::write(dir.path().join("token"), "t0ken\n").expect("token");
    let cfg = write_config(
        dir.path(),
        port,
        "/nonexistent/*.toml",
                &format!(
            "auth_token_file = \"{}\"\nmax_body_size = \"1MiB\"\nmax_series = 3\nmax_series_per_request = 3\nmax_labels_per_series = 4",
            dir.path().join("token").display()
        ),
    );
    let _agg = start(dir.path(), &cfg, port);
    let url = format!("http://127.0.0.1:{port}/api/v1/write");
    let auth = [("Authorization", "Bearer t0ken")];
    let l = Labels::from_pairs([("__name__", "m"), ("job", "x")]);
    let good = WriteRequest {
        timeseries: vec![TimeSeries::new(
            &l,
            &[Sample::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("t")
                    .as_millis() as i64,
                1.0,
            )],
        )],
        metadata: vec![],
    }
    .encode_snappy();
    assert_eq!(post(&url, &[], &good).expect("post").0, 401, "no token");
    assert_eq!(
        post(&url, &[("Authorization", "Bearer nope")], &good)
            .expect("post")
            .0,
        401,
        "wrong token"
    );
    assert_eq!(post(&url, &auth, b"not snappy").expect("post").0, 400);
    let huge = vec![b'a'; 2 << 20];
    let big = snap::raw::Encoder::new()
        .compress_vec(&huge)
        .expect("snappy");
    assert_eq!(post(&url, &auth, &big).expect("post").0, 413);
    // Far over the limit and sent whole before the answer is read, as Python's urllib does:
    // the client reads its 413 (the server drains the rest) instead of a connection reset.
    let whole = vec![0u8; 40 << 20];
    let (code, text) = post(&url, &auth, &whole).expect("the answer, not a reset");
    assert_eq!(code, 413, "{text}");
    assert!(text.contains("server.max_body_size"), "{text}");
    let unsorted = WriteRequest {
        timeseries: vec![TimeSeries {
            labels: vec![vigil_wire::remote_write::ProtoLabel {
                name: "job".into(),
                value: "x".into(),
            }],
            samples: vec![],
            exemplars: vec![],
            histograms: vec![],
        }],
        metadata: vec![],
    }
    .encode_snappy();
    let (code, body) = post(&url, &auth, &unsorted).expect("post");
    assert_eq!(code, 400, "{body}");
    // Empty body, bad protobuf inside good snappy, invalid UTF-8 in a label, duplicate labels.
    assert_eq!(post(&url, &auth, b"").expect("post").0, 400, "empty");
    assert_eq!(
        post(&url, &auth, &raw_body(&[0x0a, 0xff, 0xff, 0xff]))
            .expect("post")
            .0,
        400,
        "bad protobuf"
    );
    // TimeSeries{ labels: [Label{ name: "__name__", value: 0xff 0xfe }] }
    let bad_utf8 = [
        0x0a, 0x10, 0x0a, 0x0e, 0x0a, 0x08, b'_', b'_', b'n', b'a', b'm', b'e', b'_', b'_', 0x12,
        0x02, 0xff, 0xfe,
    ];
    assert_eq!(
        post(&url, &auth, &raw_body(&bad_utf8)).expect("post").0,
        400,
        "invalid UTF-8"
    );
    let dup = WriteRequest {
        timeseries: vec![TimeSeries {
            labels: vec![
                vigil_wire::remote_write::ProtoLabel {
                    name: "__name__".into(),
                    value: "m".into(),
                },
                vigil_wire::remote_write::ProtoLabel {
                    name: "job".into(),
                    value: "a".into(),
                },
                vigil_wire::remote_write::ProtoLabel {
                    name: "job".into(),
                    value: "b".into(),
                },
            ],
            samples: vec![],
            exemplars: vec![],
            histograms: vec![],
        }],
        metadata: vec![],
    }
    .encode_snappy();
    assert_eq!(
        post(&url, &auth, &dup).expect("post").0,
        400,
        "duplicate labels"
    );
    // NaN and ±Inf are valid sample values (a staleness marker is a NaN): stored, not refused.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("t")
        .as_millis() as i64;
    let specials = WriteRequest {
        timeseries: vec![TimeSeries::new(
            &Labels::from_pairs([("__name__", "special"), ("job", "x")]),
            &[
                Sample::new(now_ms - 2, f64::NAN),
                Sample::new(now_ms - 1, f64::INFINITY),
                Sample::new(now_ms, f64::NEG_INFINITY),
            ],
        )],
        metadata: vec![],
    }
    .encode_snappy();
    assert_eq!(post(&url, &auth, &specials).expect("post").0, 204);
    assert_eq!(post(&url, &auth, &good).expect("post").0, 204);
    assert!(wait_http(
        &format!("http://127.0.0.1:{port}/-/healthy"),
        Duration::from_secs(2)
    ));
    let m = prom_query(&format!("http://127.0.0.1:{port}"), "m");
    assert_eq!(m.len(), 1);
    // Limits: series per request and labels per series (413), active series (429).
    let many = |n: usize, prefix: &str| WriteRequest {
        timeseries: (0..n)
            .map(|i| {
                TimeSeries::new(
                    &Labels::from_pairs([("__name__", format!("{prefix}{i}"))]),
                    &[Sample::new(now_ms, 1.0)],
                )
            })
            .collect(),
        metadata: vec![],
    };
    assert_eq!(
        post(&url, &auth, &many(4, "n").encode_snappy())
            .expect("post")
            .0,
        413,
        "series per request"
    );
    let wide = WriteRequest {
        timeseries: vec![TimeSeries::new(
            &Labels::from_pairs([
                ("__name__", "w"),
                ("a", "1"),
                ("b", "1"),
                ("c", "1"),
                ("d", "1"),
            ]),
            &[Sample::new(now_ms, 1.0)],
        )],
        metadata: vec![],
    };
    assert_eq!(
        post(&url, &auth, &wide.encode_snappy()).expect("post").0,
        413,
        "labels per series"
    );
    let (code, _) = post(&url, &auth, &many(2, "new").encode_snappy()).expect("post");
    assert_eq!(code, 429, "active series limit (2 stored + 2 new > 3)");
}

/// `[query]` limits answer as Prometheus does: too many samples 422 `execution`, past the
/// timeout 503 `timeout`; the aggregator keeps serving and ingesting.
#[test]
fn queries_past_their_limits_are_refused_and_the_aggregator_keeps_serving() {
    let dir = tempdir("agg-query-limits");
    let port = free_port();
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, "").expect("rules");
    let cfg = write_config(
        dir.path(),
        port,
        &rules.display().to_string(),
        "[query]\nmax_samples = 1000\ntimeout = \"1ms\"\nmax_concurrency = 2\n",
    );
    let agg = start(dir.path(), &cfg, port);
    let base = format!("http://127.0.0.1:{port}");
    let series: Vec<(Labels, f64)> = (0..2000)
        .map(|i| {
            (
                Labels::from_pairs([("__name__", "m".to_string()), ("n", i.to_string())]),
                1.0,
            )
        })
        .collect();
    assert_eq!(vigil_e2e::http::push_now(&base, &series), 204);
    let ask = |q: &str| {
        get(&format!(
            "{base}/api/v1/query?query={}",
            vigil_e2e::http::encode_component(q)
        ))
        .expect("query")
    };
    let (code, body) = ask("count(m)");
    assert_eq!(code, 422, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["errorType"], "execution", "{body}");
    assert!(body.contains("too many samples"), "{body}");
    // 600,000 subquery steps cannot finish within a millisecond.
    let (code, body) = ask(r#"count_over_time(m{n="1"}[10m:1ms])"#);
    assert_eq!(code, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["status"], "error", "{body}");
    assert_eq!(v["errorType"], "timeout", "{body}");
    assert!(body.contains("query timed out"), "{body}");
    assert_eq!(get(&format!("{base}/-/healthy")).expect("healthy").0, 200);
    assert_eq!(vigil_e2e::http::push_now(&base, &series[..10]), 204);
    drop(agg);
}

#[test]
fn a_failed_reload_keeps_the_previous_rules() {
    let dir = tempdir("agg-reload");
    let port = free_port();
    let rules_dir = dir.path().join("rules");
    std::fs::create_dir_all(&rules_dir).expect("mkdir");
    std::fs::write(
        rules_dir.join("a.toml"),
        "[[group]]\nname = \"g\"\n[[group.record]]\nrecord = \"r:one\"\nexpr = \"vector(1)\"\n",
    )
    .expect("write");
    let cfg = write_config(
        dir.path(),
        port,
        &rules_dir.join("*.toml").display().to_string(),
        "",
    );
    let agg = start(dir.path(), &cfg, port);
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(wait_for(&base, "r:one", 1).len(), 1);
    std::fs::write(
        rules_dir.join("b.toml"),
        "[[group]]\nname = \"h\"\n[[group.record]]\nrecord = \"r:two\"\nexpr = \"sum(\"\n",
    )
    .expect("write");
    let (code, body) = post(&format!("{base}/-/reload"), &[], b"").expect("reload");
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("b.toml:5:") && body.contains("unclosed left parenthesis"),
        "{body}"
    );
    let (_, rules) = get(&format!("{base}/api/v1/rules")).expect("rules");
    assert!(
        rules.contains("r:one") && !rules.contains("r:two"),
        "{rules}"
    );
    std::fs::write(
        rules_dir.join("b.toml"),
        "[[group]]\nname = \"h\"\n[[group.record]]\nrecord = \"r:two\"\nexpr = \"vector(2)\"\n",
    )
    .expect("write");
    agg.signal("HUP");
    assert_eq!(
        wait_for(&base, "r:two", 1).len(),
        1,
        "SIGHUP reload; log:\n{}",
        agg.log_text()
    );
}

#[test]
fn prometheus_remote_writes_into_the_aggregator() {
    let dir = tempdir("agg-prom");
    let port = free_port();
    let cfg = write_config(dir.path(), port, "/nonexistent/*.toml", "");
    // Staleness by arrival at Prometheus's pace (a remote-write stalled past 3 s on a busy
    // machine would make the aggregator's series stale where Prometheus's are not).
    let text = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(
        &cfg,
        text.replace("stale_after = \"3s\"", "stale_after = \"60s\""),
    )
    .expect("config");
    let _agg = start(dir.path(), &cfg, port);
    let ne_port = free_port();
    let _ne = Child::spawn(
        "node_exporter",
        Command::new(peer("prometheus-node-exporter"))
            .arg(format!("--web.listen-address=127.0.0.1:{ne_port}")),
        dir.path(),
    );
    let prom_port = free_port();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: node\n    static_configs: [{{ targets: ['127.0.0.1:{ne_port}'] }}]\nremote_write:\n  - url: http://127.0.0.1:{port}/api/v1/write\n    queue_config: {{ batch_send_deadline: 1s }}\n"),
    )
    .expect("write");
    let _prom = Child::spawn(
        "prometheus",
        Command::new(peer("prometheus")).args([
            format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ),
            format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
        ]),
        dir.path(),
    );
    let agg = format!("http://127.0.0.1:{port}");
    let prom = format!("http://127.0.0.1:{prom_port}");
    let got = wait_for(&agg, "node_load1{job=\"node\"}", 1);
    assert_eq!(got.len(), 1, "Prometheus's samples did not arrive");
    assert_eq!(
        got[0].0["instance"],
        format!("127.0.0.1:{ne_port}").as_str()
    );

    // The same queries against both, at a time `t` both have all the data for: once every
    // series of the job has a sample after `t` at both (remote-write sends each series in order).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs_f64();
    let t = (now + 8.0).floor();
    let past_t = |base: &str| {
        // (the name kept as a label: `timestamp` drops it, and the series would collide)
        prom_query(
            base,
            r#"min(timestamp(label_replace({job="node"}, "name", "$1", "__name__", "(.+)")))"#,
        )
        .first()
        .is_some_and(|(_, ts)| *ts >= t + 1.0)
    };
    wait_until(
        Duration::from_secs(120),
        "samples past the query time at both",
        || past_t(&agg) && past_t(&prom),
        String::new,
    );
    let queries = [
        "node_load1",
        "sum by (mode) (rate(node_cpu_seconds_total[5s]))",
        "node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes",
        "count by (job) (up)",
        "topk(3, node_network_receive_bytes_total)",
    ];
    for q in queries {
        let a = query_at(&agg, q, &format!("time={t}"));
        let b = query_at(&prom, q, &format!("time={t}"));
        assert_same(q, &a, &b);
        let range = format!("start={}&end={t}&step=2", t - 6.0);
        let a = query_at_range(&agg, q, &range);
        let b = query_at_range(&prom, q, &range);
        assert_same(&format!("{q} (range)"), &a, &b);

        // And through Prometheus's own client: promtool's query commands.
        let instant = ["instant", "--time", &format!("{t}")];
        let a = promtool_query(&agg, &instant, q);
        let b = promtool_query(&prom, &instant, q);
        assert_same(&format!("{q} (promtool)"), &a, &b);
        let (start, end) = (format!("{}", t - 6.0), format!("{t}"));
        let range = ["range", "--start", &start, "--end", &end, "--step", "2s"];
        let a = promtool_query(&agg, &range, q);
        let b = promtool_query(&prom, &range, q);
        assert_same(&format!("{q} (promtool range)"), &a, &b);
    }
}

/// `promtool query <kind> -o json <flags> <server> <expr>`: its output is the `result` of the
/// API's envelope.
fn promtool_query(base: &str, kind_and_flags: &[&str], q: &str) -> Result {
    let out = Command::new(peer("promtool"))
        .arg("query")
        .arg(kind_and_flags[0])
        .args(["-o", "json"])
        .args(&kind_and_flags[1..])
        .args([base, q])
        .output()
        .expect("promtool");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "promtool query against {base}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_result(&format!(
        r#"{{"status":"success","data":{{"result":{}}}}}"#,
        text.trim()
    ))
}

/// `(labels, [(t, v)])` of an instant or range query, sorted by labels.
type Result = Vec<(String, Vec<(f64, f64)>)>;

fn parse_result(body: &str) -> Result {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(v["status"], "success", "{body}");
    let mut out: Result = v["data"]["result"]
        .as_array()
        .expect("result")
        .iter()
        .map(|r| {
            let mut labels: Vec<(String, String)> = r["metric"]
                .as_object()
                .expect("metric")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect();
            labels.sort();
            let pts: Vec<&serde_json::Value> = match r.get("values") {
                Some(vs) => vs.as_array().expect("values").iter().collect(),
                None => vec![&r["value"]],
            };
            let pts = pts
                .iter()
                .map(|p| {
                    (
                        p[0].as_f64().unwrap_or(f64::NAN),
                        p[1].as_str()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(f64::NAN),
                    )
                })
                .collect();
            (format!("{labels:?}"), pts)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn query_at(base: &str, q: &str, args: &str) -> Result {
    let (code, body) = get(&format!(
        "{base}/api/v1/query?query={}&{args}",
        vigil_e2e::http::encode_component(q)
    ))
    .expect("query");
    assert_eq!(code, 200, "{base}: {body}");
    parse_result(&body)
}

fn query_at_range(base: &str, q: &str, args: &str) -> Result {
    let (code, body) = get(&format!(
        "{base}/api/v1/query_range?query={}&{args}",
        vigil_e2e::http::encode_component(q)
    ))
    .expect("query_range");
    assert_eq!(code, 200, "{base}: {body}");
    parse_result(&body)
}

fn assert_same(q: &str, a: &Result, b: &Result) {
    let la: Vec<&String> = a.iter().map(|x| &x.0).collect();
    let lb: Vec<&String> = b.iter().map(|x| &x.0).collect();
    assert_eq!(la, lb, "{q}: series differ");
    assert!(!a.is_empty(), "{q}: no result");
    for ((l, pa), (_, pb)) in a.iter().zip(b) {
        assert_eq!(
            pa.len(),
            pb.len(),
            "{q} {l}: points differ: {pa:?} vs {pb:?}"
        );
        for ((ta, va), (tb, vb)) in pa.iter().zip(pb) {
            assert_eq!(ta, tb, "{q} {l}");
            let tol = 1e-9 * va.abs().max(vb.abs()).max(1.0);
            assert!(
                (va - vb).abs() <= tol || (va.is_nan() && vb.is_nan()),
                "{q} {l} at {ta}: aggregator {va}, prometheus {vb}"
            );
        }
    }
}

#[test]
fn kill_9_keeps_firing_alerts_and_cooldowns() {
    let dir = tempdir("agg-kill");
    let port = free_port();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[group]]\nname = \"g\"\n[[group.alert]]\nalert = \"AlwaysFiring\"\nexpr = \"vector(1)\"\n\n[[scaling]]\nname = \"p\"\nasg = \"web\"\nmin = 1\nmax = 10\nexpr = \"vector(2)\"\ntarget = 1\nscale_out_cooldown = \"1h\"\n",
    )
    .expect("write");
    let cfg = write_config(dir.path(), port, &rules.display().to_string(), "");
    let base = format!("http://127.0.0.1:{port}");
    let read = |base: &str| {
        let (_, alerts) = get(&format!("{base}/api/v1/alerts")).expect("alerts");
        let (_, scaling) = get(&format!("{base}/api/v1/scaling")).expect("scaling");
        let a: serde_json::Value = serde_json::from_str(&alerts).expect("json");
        let s: serde_json::Value = serde_json::from_str(&scaling).expect("json");
        (
            a["data"]["alerts"][0]["activeAt"]
                .as_str()
                .map(str::to_string),
            s["data"]["policies"][0]["current"].as_u64(),
        )
    };
    let agg = start(dir.path(), &cfg, port);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (since, cap) = loop {
        let r = read(&base);
        if r.0.is_some() && r.1 == Some(2) {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no firing alert or scale-out: {r:?}\n{}",
            agg.log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    // What the view shows is committed (the evaluation is written before it is shown).
    let evaluated = |base: &str| {
        let (_, rules) = get(&format!("{base}/api/v1/rules")).expect("rules");
        let v: serde_json::Value = serde_json::from_str(&rules).expect("json");
        v["data"]["groups"][0]["lastEvaluation"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let before = evaluated(&base);
    agg.signal("KILL");
    drop(agg);
    let agg = start(dir.path(), &cfg, port);
    // Judged after the restarted aggregator's first evaluation.
    wait_until(
        Duration::from_secs(30),
        "an evaluation after the restart",
        || {
            let e = evaluated(&base);
            !e.is_empty() && e != before && e != "0001-01-01T00:00:00Z"
        },
        || agg.log_text(),
    );
    let (since2, cap2) = read(&base);
    assert_eq!(
        since2,
        since,
        "the alert keeps its original start time\n{}",
        agg.log_text()
    );
    assert_eq!(
        cap2, cap,
        "the scale-out cooldown is remembered: no second scale-out"
    );
    let (_, decisions) = get(&format!("{base}/api/v1/decisions")).expect("decisions");
    assert!(decisions.contains("\"kind\":\"scaling\""), "{decisions}");
    assert!(
        agg.log_text().contains("evaluation state restored"),
        "{}",
        agg.log_text()
    );
}

#[test]
fn an_instance_that_stops_pushing_goes_stale_and_down() {
    let dir = tempdir("agg-stale");
    let port = free_port();
    let cfg = write_config(dir.path(), port, "/nonexistent/*.toml", "");
    let agg = start(dir.path(), &cfg, port);
    let base = format!("http://127.0.0.1:{port}");
    let agent = start_agent(dir.path(), &base, "i-gone");
    let up = wait_for(&base, "vigil_instance_up{instance=\"i-gone\"} == 1", 1);
    assert_eq!(up.len(), 1, "{}", agg.log_text());
    assert_eq!(up[0].0["asg"], "web-asg");
    agent.signal("KILL");
    drop(agent);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let load = prom_query(&base, "node_load1{instance=\"i-gone\"}");
        let down = prom_query(&base, "vigil_instance_up{instance=\"i-gone\"} == 0");
        if load.is_empty() && down.len() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {load:?} / {down:?} long after the agent died\n{}",
            agg.log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// An agent on this host pushing to `base` as `instance` of `web-asg`, every second.
fn start_agent(dir: &Path, base: &str, instance: &str) -> Child {
    let agent_cfg = dir.join("agent.toml");
    std::fs::write(
        &agent_cfg,
        format!(
            "[agent]\ninterval = \"1s\"\n[identity]\nsource = \"static\"\ninstance = \"{instance}\"\nasg = \"web-asg\"\n[push]\nurl = \"{base}/api/v1/write\"\n[buffer]\ndir = \"{}\"\n[listen]\naddress = \"127.0.0.1:{}\"\n",
            dir.join("spool").display(),
            free_port()
        ),
    )
    .expect("write");
    Child::spawn(
        "agent",
        Command::new(bin("vigil-agent"))
            .arg("--config")
            .arg(&agent_cfg),
        dir,
    )
}

/// What `scripts/run` shows a newcomer: the embedded default's demo rules
/// (`examples/rules/this-host.toml`) over a real agent's metrics of this host give a firing
/// alert and a simulated scaling decision with its reason, in the API and on the page, within
/// two minutes, with nothing called at AWS (no `[aws]`: dry run).
#[test]
fn the_demo_rules_show_an_alert_and_a_simulated_decision_from_this_host() {
    let dir = tempdir("agg-demo");
    let port = free_port();
    let rules = vigil_e2e::procs::root().join("examples/rules/this-host.toml");
    let cfg = dir.path().join("aggregator.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[storage]\nstate_dir = \"{}\"\n[rules]\nfiles = [\"{}\"]\n",
            dir.path().join("state").display(),
            rules.display()
        ),
    )
    .expect("config");
    let agg = start(dir.path(), &cfg, port);
    let base = format!("http://127.0.0.1:{port}");
    let agent = start_agent(dir.path(), &base, "this-host");
    let decisions = || -> Vec<serde_json::Value> {
        let (_, d) = get(&format!("{base}/api/v1/decisions")).expect("decisions");
        let d: serde_json::Value = serde_json::from_str(&d).expect("json");
        d["data"].as_array().cloned().unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let (alert, scaling) = loop {
        let d = decisions();
        let alert = d
            .iter()
            .find(|x| x["kind"] == "alert" && x["alert"] == "AgentReporting" && x["to"] == "firing")
            .cloned();
        let scaling = d.iter().find(|x| x["kind"] == "scaling").cloned();
        if let (Some(a), Some(s)) = (&alert, &scaling) {
            break (a.clone(), s.clone());
        }
        assert!(
            Instant::now() < deadline,
            "no alert and decision in two minutes: {d:?}\n{}",
            agg.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(alert["labels"]["instance"], "this-host", "{alert}");
    assert_eq!(scaling["asg"], "demo-this-host", "{scaling}");
    assert_eq!(scaling["from"], 1, "{scaling}");
    assert!(scaling["to"].as_u64().unwrap_or(0) > 1, "{scaling}");
    let reason = scaling["inputs"][0]["reason"].as_str().unwrap_or("");
    assert!(!reason.is_empty(), "a decision says why: {scaling}");
    let (_, s) = get(&format!("{base}/api/v1/scaling")).expect("scaling");
    let s: serde_json::Value = serde_json::from_str(&s).expect("json");
    assert_eq!(s["data"]["policies"][0]["simulated"], true, "{s}");
    let (_, page) = get(&format!("{base}/")).expect("page");
    assert!(page.contains("AgentReporting"), "{page}");
    assert!(page.contains("demo-this-host"), "{page}");
    assert!(page.contains("simulated (dry run)"), "{page}");
    drop(agent);
}

/// `/api/v1/rules` reports each rule's health as Prometheus does, and the status page lists the
/// broken ones.
#[test]
fn rule_health_names_the_broken_rule_and_its_error() {
    let dir = tempdir("agg-health");
    let port = free_port();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        r#"
[[group]]
name = "health"
[[group.record]]
record = "x:sum"
expr = 'sum(x)'
[[group.record]]
record = "x:broken"
expr = 'x + on() y'
"#,
    )
    .expect("rules");
    let cfg = write_config(dir.path(), port, &rules.display().to_string(), "");
    let agg = start(dir.path(), &cfg, port);
    let base = format!("http://127.0.0.1:{port}");
    let series: Vec<(Labels, f64)> = ["x", "y"]
        .iter()
        .flat_map(|n| {
            ["a", "b"].map(|i| (Labels::from_pairs([("__name__", *n), ("instance", i)]), 1.0))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let rules = loop {
        assert_eq!(vigil_e2e::http::push_now(&base, &series), 204);
        let (code, body) = get(&format!("{base}/api/v1/rules")).expect("rules");
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        let rules = v["data"]["groups"][0]["rules"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        // Judged on an evaluation that saw the pushed series: one made before the first push
        // (an empty window) reports both rules healthy, rightly.
        if rules.len() == 2
            && rules.iter().all(|r| r["health"] != "unknown")
            && rules[0]["recentEvaluations"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["samples"].as_u64() > Some(0)))
            && rules[1]["health"] != "ok"
        {
            assert_ne!(
                v["data"]["groups"][0]["lastEvaluation"], "0001-01-01T00:00:00Z",
                "{v}"
            );
            assert!(
                v["data"]["groups"][0]["evaluationTime"].as_f64().is_some(),
                "{v}"
            );
            break rules;
        }
        assert!(
            Instant::now() < deadline,
            "no evaluation over the pushed series reported the broken rule: {body}\n{}",
            agg.log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(rules[0]["health"], "ok", "{:?}", rules[0]);
    assert_eq!(rules[0]["lastError"], "", "{:?}", rules[0]);
    assert_eq!(rules[1]["health"], "err", "{:?}", rules[1]);
    let err = rules[1]["lastError"].as_str().unwrap_or("");
    assert!(err.contains("many-to-many"), "{err}");
    assert!(rules[1]["evaluationTime"]
        .as_f64()
        .is_some_and(|t| t >= 0.0));
    assert_ne!(rules[1]["lastEvaluation"], "0001-01-01T00:00:00Z");
    let (_, page) = get(&format!("{base}/")).expect("page");
    assert!(
        page.contains("Broken rules") && page.contains("x:broken"),
        "{page}"
    );
    assert!(!page.contains("<td>x:sum<td>"), "{page}");
}

/// Writes `aggregator/fixtures/state-v1/vigil.sql`: the state database of a schema-1 aggregator
/// (commit d46eb0c, the release before serde snapshots) after it fired an alert, held another
/// pending, scaled (simulated, no `[aws]`), replaced an instance and queued notifications to a
/// webhook that never answers. Run once against that release (`--ignored`); the output is
/// committed and read by the migration test in `aggregator/src/state/tests.rs`.
#[test]
#[ignore]
fn make_state_v1_fixture() {
    let fixtures = vigil_e2e::procs::root().join("aggregator/fixtures/state-v1");
    let dir = tempdir("agg-fixture");
    let port = free_port();
    let cfg = dir.path().join("aggregator.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[storage]\nstate_dir = \"{}\"\n[rules]\nfiles = [\"{}\"]\nevaluation_interval = \"1s\"\n[notify]\ngroup_wait = \"1s\"\ngroup_interval = \"2s\"\n[[receiver]]\nname = \"hook\"\nwebhook_url = \"http://127.0.0.1:9/api/v2/alerts\"\n",
            dir.path().join("state").display(),
            fixtures.join("rules.toml").display()
        ),
    )
    .expect("config");
    let agg = start(dir.path(), &cfg, port);
    let base = format!("http://127.0.0.1:{port}");
    let series = |i: &str, errors: f64, healthy: f64| -> Vec<(Labels, f64)> {
        [
            ("app_errors", errors),
            ("app_latency", 0.9),
            ("app_load", 0.9),
            ("app_healthy", healthy),
        ]
        .map(|(n, v)| (Labels::from_pairs([("__name__", n), ("instance", i)]), v))
        .to_vec()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut s = series("i-a", 1.0, 1.0);
        s.extend(series("i-b", 0.0, 0.0));
        s.extend(series("i-c", 0.0, 1.0));
        s.extend(series("i-d", 0.0, 1.0));
        assert_eq!(vigil_e2e::http::push_now(&base, &s), 204);
        let (_, d) = get(&format!("{base}/api/v1/decisions")).expect("decisions");
        let kinds = [
            "\"kind\":\"alert\"",
            "\"kind\":\"scaling\"",
            "\"kind\":\"replace\"",
        ];
        let (_, m) = get(&format!("{base}/metrics")).expect("metrics");
        if kinds.iter().all(|k| d.contains(k))
            && m.lines().any(|l| {
                l.starts_with("vigil_aggregator_notification_outbox ") && !l.ends_with(" 0")
            })
        {
            break;
        }
        assert!(Instant::now() < deadline, "{d}\n{}", agg.log_text());
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(agg);
    let out = Command::new("sqlite3")
        .arg(dir.path().join("state/vigil.db"))
        .arg(".dump")
        .output()
        .expect("sqlite3");
    assert!(out.status.success());
    std::fs::write(fixtures.join("vigil.sql"), out.stdout).expect("write the fixture");
}

#[test]
fn writers_admins_and_readers_each_need_their_own_token() {
    use vigil_e2e::tls::curl;
    let dir = tempdir("agg-tokens");
    let d = dir.path();
    let (w, a, q) = (
        "w-7b1e-writer-secret",
        "a-4c2d-admin-secret",
        "q-9f0a-reader-secret",
    );
    for (file, token) in [("write", w), ("admin", a), ("query", q)] {
        vigil_e2e::secret(token);
        std::fs::write(d.join(file), format!("{token}\n")).expect("token");
    }
    let rules = d.join("rules.toml");
    std::fs::write(&rules, "").expect("rules");
    let port = free_port();
    let extra = format!(
        "auth_token_file = \"{}\"\nadmin_token_file = \"{}\"\nquery_token_file = \"{}\"\n",
        d.join("write").display(),
        d.join("admin").display(),
        d.join("query").display()
    );
    let cfg = write_config(d, port, &rules.display().to_string(), &extra);
    let agg = start(d, &cfg, port);
    let base = format!("http://127.0.0.1:{port}");
    let bearer = |t: &str| format!("Authorization: Bearer {t}");
    // Probes stay open.
    assert_eq!(
        curl(&format!("{base}/-/healthy"), None, None, &[], None).0,
        200
    );
    // Readers: the query token, as a bearer or as basic auth's password; a browser is asked.
    let query = format!("{base}/api/v1/query?query=vector(1)");
    let (code, body) = curl(&query, None, None, &[], None);
    assert_eq!(code, 401, "{body}");
    assert_eq!(curl(&query, None, None, &[&bearer(w)], None).0, 401);
    assert_eq!(curl(&query, None, None, &[&bearer(q)], None).0, 200);
    let basic = format!("{base}/");
    let mut cmd = Command::new("curl");
    let out = cmd
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-u",
            &format!("grafana:{q}"),
            &basic,
        ])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    let out = Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/null", &basic])
        .output()
        .expect("curl");
    let headers = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        headers.contains("www-authenticate: basic realm=\"vigil\""),
        "{headers}"
    );
    // Writers cannot reload; admins can.
    let reload = format!("{base}/-/reload");
    assert_eq!(curl(&reload, None, None, &[&bearer(w)], Some(b"")).0, 401);
    let (code, body) = curl(&reload, None, None, &[&bearer(a)], Some(b""));
    assert_eq!(code, 200, "{body}");
    // Admins cannot write; writers can.
    let series = vec![(
        vigil_wire::Labels::from_pairs([("__name__", "up"), ("instance", "i-1")]),
        1.0,
    )];
    let body = vigil_e2e::http::remote_write_body(&series);
    let h = [
        "Content-Encoding: snappy",
        "Content-Type: application/x-protobuf",
    ];
    let with = |t: &str| {
        let b = bearer(t);
        let mut all = h.to_vec();
        all.push(&b);
        curl(
            &format!("{base}/api/v1/write"),
            None,
            None,
            &all,
            Some(&body),
        )
        .0
    };
    assert_eq!(with(a), 401);
    assert_eq!(with(w), 204);
    // Refusals are counted; the admin request is audited by the token's name, never the token.
    let m = curl(&format!("{base}/metrics"), None, None, &[&bearer(q)], None).1;
    for (endpoint, n) in [("query", 3.0), ("admin", 1.0), ("write", 1.0)] {
        let series = format!(
            "vigil_aggregator_http_refused_total{{endpoint=\"{endpoint}\",reason=\"token\"}}"
        );
        assert_eq!(
            vigil_e2e::http::metric_value(&m, &series),
            Some(n),
            "{series}\n{m}"
        );
    }
    let log = agg.log_text();
    assert!(
        log.contains("admin request") && log.contains("admin_token_file"),
        "{log}"
    );
    for t in [w, a, q] {
        assert!(!log.contains(t), "a token leaked into the log:\n{log}");
    }
}

#[test]
fn amtool_reads_the_configuration_with_every_secret_replaced() {
    if Command::new("amtool").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("VIGIL_REQUIRE_PEERS").is_none(),
            "amtool is required but missing (apt-get install prometheus-alertmanager)"
        );
        eprintln!("amtool not installed: skipping");
        return;
    }
    let dir = tempdir("agg-status");
    let d = dir.path();
    let rules = d.join("rules.toml");
    std::fs::write(&rules, "").expect("rules");
    let port = free_port();
    let cfg = write_config(d, port, &rules.display().to_string(), "");
    // Receivers whose URLs are credentials: a Slack webhook, an Alertmanager behind basic auth
    // (a '/' in the password), one with a token in its query.
    let (slack, am_user, am_query) = (
        vigil_e2e::secret("http://127.0.0.1:9/services/T0/B0/slack-5e1f-secret"),
        vigil_e2e::secret("am-2b7c-pass/word"),
        vigil_e2e::secret("am-8d3e-query-token"),
    );
    let mut text = std::fs::read_to_string(&cfg).expect("config");
    text.push_str(&format!(
        "\n[[receiver]]\nname = \"chat\"\nslack_webhook_url = \"{slack}\"\nwebhook_urls = [\"http://vigil:{am_user}@127.0.0.1:9/api/v2/alerts\", \"http://127.0.0.1:9/?token={am_query}\"]\n"
    ));
    std::fs::write(&cfg, &text).expect("config");
    let _agg = start(d, &cfg, port);
    let url = format!("--alertmanager.url=http://127.0.0.1:{port}");
    let amtool = |args: &[&str]| {
        let out = Command::new("amtool")
            .arg(&url)
            .args(args)
            .output()
            .expect("amtool (apt-get install prometheus-alertmanager)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "amtool {args:?}: {text}");
        text
    };
    let shown = amtool(&["config", "show"]);
    for s in [&slack, &am_user, &am_query] {
        assert!(!shown.contains(s.as_str()), "{s} shown:\n{shown}");
    }
    assert!(
        shown.contains("slack_webhook_url = \"<secret>\"")
            && shown.contains("webhook_urls = [\"<secret>\", \"<secret>\"]")
            && shown.contains(&format!("listen = \"127.0.0.1:{port}\"")),
        "{shown}"
    );
    let cluster = amtool(&["cluster", "show"]);
    assert!(cluster.contains("disabled"), "{cluster}");
    let status: serde_json::Value = serde_json::from_str(
        &get(&format!("http://127.0.0.1:{port}/api/v2/status"))
            .expect("status")
            .1,
    )
    .expect("status json");
    assert_eq!(status["versionInfo"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["uptime"].as_str().is_some_and(|u| u.ends_with('Z')));
}
