//! The agent against Prometheus (remote-write receiver), node_exporter (`--once` parity), and a
//! recording receiver that shows exactly-once delivery through outages and `kill -9`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vigil_e2e::http::{get, prom_query};
use vigil_e2e::receiver::Receiver;
use vigil_e2e::{bin, free_port, peer, tempdir, wait_http, Child};
use vigil_wire::text::{self, Format};
use vigil_wire::Labels;

/// A tiny app for the agent to scrape and probe: `/metrics` and `/healthz`.
fn spawn_app(port: u16, metrics: String) {
    let l = TcpListener::bind(("127.0.0.1", port)).expect("bind app");
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if req.starts_with("GET /metrics") {
                ("200 OK", metrics.clone())
            } else if req.starts_with("GET /healthz") {
                ("200 OK", "ok".to_string())
            } else {
                ("404 Not Found", String::new())
            };
            let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
}

fn agent_config(dir: &Path, push_url: &str, extra: &str) -> std::path::PathBuf {
    let cfg = dir.join("agent.toml");
    let text = format!(
        r#"[agent]
interval = "1s"
labels = {{ env = "test" }}

[identity]
source = "static"
instance = "i-test"
asg = "web-asg"
az = "us-east-1a"

[push]
url = "{push_url}"
timeout = "2s"

[buffer]
dir = "{}"
max_bytes = "64MiB"

[listen]
address = "127.0.0.1:{}"
{extra}"#,
        dir.join("spool").display(),
        free_port()
    );
    std::fs::write(&cfg, text).expect("write config");
    cfg
}

#[test]
fn agent_series_arrive_in_prometheus_with_their_labels() {
    let dir = tempdir("agent-prom");
    let prom_port = free_port();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        "global:\n  scrape_interval: 1m\n",
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
            "--web.enable-remote-write-receiver".into(),
        ]),
        dir.path(),
    );
    let base = format!("http://127.0.0.1:{prom_port}");
    assert!(
        wait_http(&format!("{base}/-/ready"), Duration::from_secs(30)),
        "prometheus did not start"
    );

    let app_port = free_port();
    spawn_app(app_port, "# TYPE app_requests_total counter\napp_requests_total{code=\"200\"} 42\napp_requests_total{code=\"500\",instance=\"app-says\"} 3\n".into());
    let cfg = agent_config(
        dir.path(),
        &format!("{base}/api/v1/write"),
        &format!("\n[[scrape]]\nurl = \"http://127.0.0.1:{app_port}/metrics\"\n\n[[health]]\nurl = \"http://127.0.0.1:{app_port}/healthz\"\n"),
    );
    let agent = Child::spawn(
        "agent",
        Command::new(bin("vigil-agent")).arg("--config").arg(&cfg),
        dir.path(),
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut app = Vec::new();
    while Instant::now() < deadline {
        app = prom_query(&base, "app_requests_total");
        if app.len() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        app.len(),
        2,
        "app series not in Prometheus; agent log:\n{}",
        agent.log_text()
    );
    for (labels, v) in &app {
        assert_eq!(labels["instance"], "i-test");
        assert_eq!(labels["asg"], "web-asg");
        assert_eq!(labels["az"], "us-east-1a");
        assert_eq!(labels["env"], "test");
        match labels["code"].as_str() {
            Some("200") => assert_eq!(*v, 42.0),
            Some("500") => {
                assert_eq!(*v, 3.0);
                assert_eq!(
                    labels["exported_instance"], "app-says",
                    "the app's own instance label is kept as exported_instance"
                );
            }
            other => panic!("unexpected code {other:?}"),
        }
    }
    let up = prom_query(&base, "vigil_health_up");
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0].1, 1.0);
    assert_eq!(
        up[0].0["target"],
        format!("http://127.0.0.1:{app_port}/healthz").as_str()
    );
    let scrape_up = prom_query(&base, "vigil_scrape_up");
    assert_eq!(scrape_up[0].1, 1.0);
    // Host metrics under node_exporter's names.
    let mem = prom_query(&base, "node_memory_MemTotal_bytes{instance=\"i-test\"}");
    assert_eq!(mem.len(), 1);
    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
    let kb: f64 = meminfo
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("MemTotal");
    assert_eq!(mem[0].1, kb * 1024.0);
    let cpu = prom_query(
        &base,
        "count(node_cpu_seconds_total{instance=\"i-test\", mode=\"idle\"})",
    );
    let cores = std::fs::read_to_string("/proc/stat")
        .expect("stat")
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count();
    assert_eq!(cpu[0].1, cores as f64);
}

/// Parses a text exposition into (name, labels without `instance`) → value.
fn exposition(text: &str) -> BTreeMap<(String, Labels), f64> {
    let e = text::parse(text, Format::Prometheus).expect("parse");
    e.samples
        .into_iter()
        .map(|s| {
            let name = s.labels.metric_name().unwrap_or("").to_string();
            let l = s
                .labels
                .filter(|x| x.name != "__name__" && x.name != "instance");
            ((name, l), s.value)
        })
        .collect()
}

#[test]
fn once_matches_node_exporter_on_the_spec_metrics() {
    let dir = tempdir("agent-ne");
    let port = free_port();
    let _ne = Child::spawn(
        "node_exporter",
        Command::new(peer("prometheus-node-exporter"))
            .arg(format!("--web.listen-address=127.0.0.1:{port}")),
        dir.path(),
    );
    let url = format!("http://127.0.0.1:{port}/metrics");
    assert!(
        wait_http(&url, Duration::from_secs(20)),
        "node_exporter did not start"
    );
    let (_, ne_text) = get(&url).expect("scrape node_exporter");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        "[identity]\nsource = \"static\"\ninstance = \"i-once\"\n",
    )
    .expect("write");
    let out = Command::new(bin("vigil-agent"))
        .arg("--once")
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("run --once");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours_text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(ours_text.contains("instance=\"i-once\""));
    let ne = exposition(&ne_text);
    let ours = exposition(&ours_text);

    // (metric, absolute tolerance, relative tolerance): counters move between the two reads,
    // gauges of memory and disk change a little, sizes and the boot time do not.
    let spec: [(&str, f64, f64); 11] = [
        ("node_cpu_seconds_total", 3.0, 0.0),
        ("node_load1", 1.0, 0.0),
        ("node_load5", 0.5, 0.0),
        ("node_load15", 0.5, 0.0),
        ("node_memory_MemTotal_bytes", 0.0, 0.0),
        ("node_memory_MemAvailable_bytes", 0.0, 0.05),
        ("node_filesystem_size_bytes", 0.0, 0.0),
        ("node_filesystem_avail_bytes", 0.0, 0.01),
        ("node_network_receive_bytes_total", 1_000_000.0, 0.01),
        ("node_network_transmit_bytes_total", 1_000_000.0, 0.01),
        ("node_boot_time_seconds", 1.0, 0.0),
    ];
    for (name, abs, rel) in spec {
        let a: BTreeMap<&Labels, f64> = ne
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, l), v)| (l, *v))
            .collect();
        let b: BTreeMap<&Labels, f64> = ours
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, l), v)| (l, *v))
            .collect();
        assert!(!a.is_empty(), "node_exporter has no {name}");
        let ka: Vec<&&Labels> = a.keys().collect();
        let kb: Vec<&&Labels> = b.keys().collect();
        assert_eq!(ka, kb, "{name}: label sets differ");
        for (l, va) in &a {
            let vb = b[l];
            let tol = abs + rel * va.abs();
            assert!(
                (va - vb).abs() <= tol,
                "{name}{l}: node_exporter {va}, vigil {vb} (tolerance {tol})"
            );
        }
    }
}

/// Reads every frame of a spool directory (the format is documented in agent/src/spool.rs).
fn spooled_samples(dir: &Path) -> Vec<(Labels, i64)> {
    let mut segs: Vec<_> = std::fs::read_dir(dir)
        .expect("spool dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    let mut out = Vec::new();
    for s in segs {
        let b = std::fs::read(&s).expect("segment");
        let mut i = 0;
        while i + 8 <= b.len() {
            let len = u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize;
            if i + 8 + len > b.len() {
                break;
            }
            let req = vigil_wire::remote_write::WriteRequest::decode_snappy(
                &b[i + 8..i + 8 + len],
                64 << 20,
            )
            .expect("frame");
            for ts in &req.timeseries {
                let l = ts.validated_labels().expect("labels");
                out.extend(ts.samples().map(|smp| (l.clone(), smp.timestamp_ms)));
            }
            i += 8 + len;
        }
    }
    out
}

fn load1(l: &Labels) -> bool {
    l.metric_name() == Some("node_load1")
}

#[test]
fn an_outage_loses_nothing_and_duplicates_nothing() {
    let dir = tempdir("agent-outage");
    let mut rx = Receiver::start(free_port());
    let cfg = agent_config(dir.path(), &rx.url(), "");
    let mut agent = Child::spawn(
        "agent",
        Command::new(bin("vigil-agent")).arg("--config").arg(&cfg),
        dir.path(),
    );
    std::thread::sleep(Duration::from_secs(3));
    rx.stop();
    std::thread::sleep(Duration::from_secs(5));
    rx.resume();
    // How many rounds the agent has collected so far (its own count): every one must arrive,
    // once its backoff (exponential, jittered: it may have grown past the outage) lets it retry.
    let cfg_text = std::fs::read_to_string(&cfg).expect("config");
    let addr = cfg_text
        .split("address = \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("listen address")
        .to_string();
    let rounds_now = || -> usize {
        let (_, metrics) = get(&format!("http://{addr}/metrics")).expect("agent metrics");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("vigil_agent_collect_duration_seconds_count "))
            .and_then(|v| v.trim().parse().ok())
            .expect("round count")
    };
    let arrived = || -> usize {
        rx.store
            .lock()
            .expect("lock")
            .by_series()
            .iter()
            .find(|(l, _)| load1(l))
            .map_or(0, |(_, ts)| ts.len())
    };
    std::thread::sleep(Duration::from_secs(6));
    let rounds = rounds_now();
    let end = std::time::Instant::now() + Duration::from_secs(40);
    while arrived() < rounds && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(250));
    }
    agent.signal("TERM");
    assert!(
        agent.wait_exit(Duration::from_secs(20)),
        "agent did not stop on SIGTERM"
    );
    let store = rx.store.lock().expect("lock");
    let series = store.by_series();
    let (_, ts) = series
        .iter()
        .find(|(l, _)| load1(l))
        .expect("node_load1 arrived");
    assert!(
        rounds >= 8,
        "the agent collected only {rounds} rounds in 14 s"
    );
    assert!(
        ts.len() >= rounds,
        "{rounds} rounds collected before the end, {} arrived: samples lost during the outage\n{}",
        ts.len(),
        agent.log_text()
    );
    for (t, n) in ts {
        assert_eq!(*n, 1, "sample at {t} arrived {n} times");
    }
    // Every series: no duplicates at all.
    for (l, ts) in &series {
        assert!(ts.values().all(|n| *n == 1), "{l}: duplicates");
    }
    assert!(
        agent.log_text().contains("push failed"),
        "the outage was noticed"
    );
}

#[test]
fn kill_9_mid_spool_loses_nothing_already_spooled() {
    let dir = tempdir("agent-kill");
    let port = free_port();
    // No receiver yet: everything is spooled.
    let cfg = agent_config(
        dir.path(),
        &format!("http://127.0.0.1:{port}/api/v1/write"),
        "",
    );
    let agent = Child::spawn(
        "agent",
        Command::new(bin("vigil-agent")).arg("--config").arg(&cfg),
        dir.path(),
    );
    std::thread::sleep(Duration::from_secs(4));
    agent.signal("KILL");
    std::thread::sleep(Duration::from_millis(300));
    let log1 = agent.log_text();
    drop(agent);
    let spooled = spooled_samples(&dir.path().join("spool"));
    let spooled_load: Vec<i64> = spooled
        .iter()
        .filter(|(l, _)| load1(l))
        .map(|(_, t)| *t)
        .collect();
    assert!(
        spooled_load.len() >= 2,
        "expected spooled rounds before the kill; log:\n{log1}"
    );

    let rx = Receiver::start(port);
    let agent = Child::spawn(
        "agent2",
        Command::new(bin("vigil-agent")).arg("--config").arg(&cfg),
        dir.path(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got: std::collections::BTreeSet<(Labels, i64)> = rx
            .store
            .lock()
            .expect("lock")
            .samples
            .iter()
            .map(|(l, s)| (l.clone(), s.timestamp_ms))
            .collect();
        if spooled.iter().all(|x| got.contains(x)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "spooled samples missing after restart; log:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let series = rx.store.lock().expect("lock").by_series();
    for (l, ts) in &series {
        assert!(
            ts.values().all(|n| *n == 1),
            "{l}: duplicates after the restart"
        );
    }
    assert!(
        agent.log_text().contains("spool recovered"),
        "{}",
        agent.log_text()
    );
}

#[test]
fn push_sends_the_bearer_token_and_honours_retry_after() {
    let dir = tempdir("agent-auth");
    let rx = Receiver::start(free_port());
    {
        let mut st = rx.store.lock().expect("lock");
        st.require_token = Some("s3cret".into());
        st.throttle = 1;
        st.throttle_retry_after_secs = 3;
    }
    std::fs::write(dir.path().join("token"), "s3cret\n").expect("token");
    let cfg = agent_config(dir.path(), &rx.url(), "");
    let text = std::fs::read_to_string(&cfg).expect("read").replace(
        "timeout = \"2s\"",
        &format!(
            "timeout = \"2s\"\ntoken_file = \"{}\"",
            dir.path().join("token").display()
        ),
    );
    std::fs::write(&cfg, text).expect("write");
    let agent = Child::spawn(
        "agent",
        Command::new(bin("vigil-agent")).arg("--config").arg(&cfg),
        dir.path(),
    );
    std::thread::sleep(Duration::from_secs(7));
    let st = rx.store.lock().expect("lock");
    assert_eq!(st.unauthorized, 0, "token sent");
    assert!(
        !st.samples.is_empty(),
        "accepted after the 429; log:\n{}",
        agent.log_text()
    );
    // After the 429 (second request at the earliest), the next request waits Retry-After (3 s).
    let a = &st.arrivals;
    assert!(a.len() >= 2, "{a:?}");
    assert!(
        a[1] - a[0] >= 2900,
        "Retry-After honoured: requests at {a:?} ms"
    );
    assert!(agent.log_text().contains("429"), "{}", agent.log_text());
}

#[test]
fn check_config_and_self_metrics() {
    let dir = tempdir("agent-cli");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[agent]\ninterval = \"soon\"\n[push]\nurl = \"nowhere\"\n",
    )
    .expect("write");
    let out = Command::new(bin("vigil-agent"))
        .arg("--check-config")
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:2:12: agent.interval") && err.contains("bad.toml:4:7: push.url"),
        "{err}"
    );

    let rx = Receiver::start(free_port());
    let self_port = free_port();
    let cfg = agent_config(dir.path(), &rx.url(), "");
    let text = std::fs::read_to_string(&cfg).expect("read");
    let text = text
        .rsplit_once("[listen]")
        .map(|(a, _)| a.to_string())
        .unwrap_or(text)
        + &format!("[listen]\naddress = \"127.0.0.1:{self_port}\"\n");
    std::fs::write(&cfg, text).expect("write");
    let out = Command::new(bin("vigil-agent"))
        .arg("--check-config")
        .arg(&cfg)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _agent = Child::spawn(
        "agent",
        Command::new(bin("vigil-agent")).arg("--config").arg(&cfg),
        dir.path(),
    );
    let url = format!("http://127.0.0.1:{self_port}/metrics");
    assert!(wait_http(&url, Duration::from_secs(10)));
    std::thread::sleep(Duration::from_secs(2));
    let (_, m) = get(&url).expect("metrics");
    for name in [
        "vigil_agent_samples_collected_total",
        "vigil_agent_push_requests_total{result=\"sent\"}",
        "vigil_agent_spool_frames",
    ] {
        assert!(m.contains(name), "{name} missing from\n{m}");
    }
}

#[test]
fn ec2_identity_comes_from_imdsv2() {
    let dir = tempdir("agent-imds");
    let port = free_port();
    let _moto = Child::spawn(
        "moto",
        Command::new(peer("moto_server")).args(["-H", "127.0.0.1", "-p", &port.to_string()]),
        dir.path(),
    );
    assert!(
        wait_http(
            &format!("http://127.0.0.1:{port}/moto-api/"),
            Duration::from_secs(30)
        ),
        "moto_server did not start"
    );
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, format!("[identity]\nsource = \"ec2\"\nimds_endpoint = \"http://127.0.0.1:{port}\"\nimds_timeout = \"5s\"\nasg = \"web-asg\"\n")).expect("write");
    let out = Command::new(bin("vigil-agent"))
        .arg("--once")
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("node_load1{"))
        .expect("node_load1");
    assert!(
        line.contains("instance=\"i-fake\"")
            && line.contains("az=\"us-east-1a\"")
            && line.contains("asg=\"web-asg\""),
        "{line}"
    );
}

#[test]
fn an_imds_that_answers_late_still_gives_the_ec2_identity() {
    let dir = tempdir("agent-late-imds");
    let rx = Receiver::start(free_port());
    let imds_port = free_port();
    let cfg = agent_config(dir.path(), &rx.url(), "");
    let text = std::fs::read_to_string(&cfg)
        .expect("read")
        .replace("source = \"static\"\ninstance = \"i-test\"\nasg = \"web-asg\"\naz = \"us-east-1a\"", &format!("source = \"auto\"\nimds_endpoint = \"http://127.0.0.1:{imds_port}\"\nasg = \"web-asg\""));
    assert!(text.contains("source = \"auto\""), "{text}");
    std::fs::write(&cfg, text).expect("write");
    let agent = Child::spawn(
        "agent",
        Command::new(bin("vigil-agent")).arg("--config").arg(&cfg),
        dir.path(),
    );
    std::thread::sleep(Duration::from_secs(2));
    // The metadata service comes up only now.
    let _moto = Child::spawn(
        "moto",
        Command::new(peer("moto_server")).args(["-H", "127.0.0.1", "-p", &imds_port.to_string()]),
        dir.path(),
    );
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let got = rx.store.lock().expect("lock").samples.iter().any(|(l, _)| {
            load1(l) && l.get("instance") == Some("i-fake") && l.get("az") == Some("us-east-1a")
        });
        if got {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the EC2 identity never arrived\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(agent.log_text().contains("identity updated"));
}
