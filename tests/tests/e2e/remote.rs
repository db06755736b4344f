//! `[storage] backend = "remote"` against Debian's VictoriaMetrics 1.79: an aggregator whose
//! rules read the engine decides as one on its own window fed the same samples; its query API
//! answers what VictoriaMetrics answers; with the engine down, rules report its error and no
//! decision is made (not even `on_no_data`'s). Also: Vigil's agent writes straight into
//! VictoriaMetrics, and vmagent writes into an aggregator.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vigil_e2e::http::{encode_component, get, now_ms, push_at};
use vigil_e2e::{bin, free_port, peer, tempdir, wait_http, wait_until, Child};
use vigil_wire::Labels;

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

[[scaling]]
name = "web"
asg = "web-asg"
min = 1
max = 2
expr = 'load:avg'
target = 0.5
tolerance = 0.1
interval = "1s"
scale_out_cooldown = "1s"
scale_in_cooldown = "1s"
scale_in_stabilization = "2s"
on_no_data = 2
no_data_for = "2s"
"#;

fn aggregator(d: &std::path::Path, name: &str, storage: &str) -> (Child, String) {
    aggregator_with(d, name, storage, &[])
}

fn aggregator_with(
    d: &std::path::Path,
    name: &str,
    storage: &str,
    env: &[(&str, &str)],
) -> (Child, String) {
    aggregator_on(d, name, storage, RULES, env)
}

/// An aggregator evaluating `rules` every second 5 s in the past, `storage` its `[storage]`
/// lines after `state_dir`.
pub(crate) fn aggregator_on(
    d: &std::path::Path,
    name: &str,
    storage: &str,
    rules: &str,
    env: &[(&str, &str)],
) -> (Child, String) {
    let port = free_port();
    let dir = d.join(name);
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("rules.toml"), rules).expect("rules");
    std::fs::write(
        dir.join("aggregator.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[storage]\nstate_dir = \"{}\"\n{storage}\n[rules]\nfiles = [\"{}\"]\nevaluation_interval = \"1s\"\nquery_offset = \"5s\"\n",
            dir.join("state").display(),
            dir.join("rules.toml").display()
        ),
    )
    .expect("config");
    let child = Child::spawn(
        name,
        Command::new(bin("vigil-aggregator"))
            .arg("--config")
            .arg(dir.join("aggregator.toml"))
            .envs(env.iter().copied()),
        d,
    );
    let url = format!("http://127.0.0.1:{port}");
    assert!(
        wait_http(&format!("{url}/-/ready"), Duration::from_secs(60)),
        "{name} not ready\n{}",
        child.log_text()
    );
    (child, url)
}

pub(crate) fn json(url: &str) -> serde_json::Value {
    let (code, body) = get(url).unwrap_or((0, String::new()));
    assert_eq!(code, 200, "{url}: {body}");
    serde_json::from_str(&body).expect("json")
}

/// The decision log, oldest first, without times: `scaling 1->2 out`, `alert Hot inactive->pending`.
pub(crate) fn decisions(agg: &str) -> Vec<String> {
    let v = json(&format!("{agg}/api/v1/decisions"));
    let mut out: Vec<String> = v["data"]
        .as_array()
        .expect("decisions")
        .iter()
        .map(|d| match d["kind"].as_str() {
            Some("scaling") => format!(
                "scaling {}->{} {}",
                d["from"],
                d["to"],
                d["direction"].as_str().unwrap_or("")
            ),
            Some("alert") => format!(
                "alert {} {}->{}",
                d["alert"].as_str().unwrap_or(""),
                d["from"].as_str().unwrap_or(""),
                d["to"].as_str().unwrap_or("")
            ),
            other => format!("{other:?}"),
        })
        .collect();
    out.reverse();
    out
}

pub(crate) fn rule_error(agg: &str) -> Option<String> {
    let v = json(&format!("{agg}/api/v1/rules"));
    v["data"]["groups"].as_array()?.iter().find_map(|g| {
        g["rules"].as_array()?.iter().find_map(|r| {
            r["lastError"]
                .as_str()
                .filter(|e| !e.is_empty())
                .map(str::to_string)
        })
    })
}

/// Debian's VictoriaMetrics on a free port, its data in `d/vm`: no result cache, and a 1 s
/// latency offset (production keeps its 30 s and sets `query_offset` to match,
/// docs/operations.md; the tests shorten both); `extra` flags beside those.
pub(crate) struct Vm {
    pub(crate) child: Child,
    pub(crate) url: String,
    args: Vec<String>,
}

impl Vm {
    pub(crate) fn start(d: &std::path::Path, extra: &[&str]) -> Vm {
        let port = free_port();
        let mut args = vec![
            format!("-storageDataPath={}", d.join("vm").display()),
            format!("-httpListenAddr=127.0.0.1:{port}"),
            "-search.disableCache".into(),
            "-search.latencyOffset=1s".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let child = Child::spawn(
            "victoria-metrics",
            Command::new(peer("victoria-metrics")).args(&args),
            d,
        );
        let url = format!("http://127.0.0.1:{port}");
        assert!(wait_http(&format!("{url}/health"), Duration::from_secs(60)));
        Vm { child, url, args }
    }

    /// The same engine started again (same port, same data) once stopped.
    fn again(&self, d: &std::path::Path) -> Child {
        Child::spawn(
            "victoria-metrics-again",
            Command::new(peer("victoria-metrics")).args(&self.args),
            d,
        )
    }
}

#[test]
fn remote_mode_decides_as_the_window_does_and_answers_as_the_engine() {
    let d = tempdir("remote");
    let mut vm = Vm::start(d.path(), &[]);
    let vm_url = vm.url.clone();
    let (memory, mem_url) = aggregator(d.path(), "memory", "");
    let (remote, rem_url) = aggregator(
        d.path(),
        "remote",
        &format!("backend = \"remote\"\n[storage.remote]\nquery_url = \"{vm_url}\"\nheaders = {{ \"X-Scope-OrgID\" = \"web\" }}\nquery_timeout = \"2s\""),
    );

    // The same samples to the engine and to the memory-mode aggregator, every 250 ms.
    let load = Arc::new(AtomicU64::new(0.9f64.to_bits()));
    let stop = Arc::new(AtomicBool::new(false));
    let pusher = {
        let (load, stop, vm_url, mem_url) =
            (load.clone(), stop.clone(), vm_url.clone(), mem_url.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let v = f64::from_bits(load.load(Ordering::Relaxed));
                let ts = now_ms();
                let series: Vec<(Labels, f64)> = ["i-a", "i-b"]
                    .iter()
                    .map(|i| {
                        (
                            Labels::from_pairs([("__name__", "app_load"), ("instance", i)]),
                            v,
                        )
                    })
                    .collect();
                // The engine may be down (the fault phase): then only the window gets them.
                let _ = push_at(&vm_url, &series, ts);
                let _ = push_at(&mem_url, &series, ts);
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };

    let logs = || {
        format!(
            "memory:\n{}\nremote:\n{}",
            memory.log_text(),
            remote.log_text()
        )
    };
    let want_out = ["alert Hot inactive->pending", "alert Hot pending->firing"];
    for agg in [&mem_url, &rem_url] {
        wait_until(
            Duration::from_secs(90),
            "a scale-out and the alert firing",
            || {
                let got = decisions(agg);
                got.contains(&"scaling 1->2 out".to_string())
                    && want_out.iter().all(|w| got.contains(&w.to_string()))
            },
            || format!("{agg}: {:?}\n{}", decisions(agg), logs()),
        );
    }
    load.store(0.1f64.to_bits(), Ordering::Relaxed);
    for agg in [&mem_url, &rem_url] {
        wait_until(
            Duration::from_secs(90),
            "a scale-in and the alert resolved",
            || {
                let got = decisions(agg);
                got.contains(&"scaling 2->1 in".to_string())
                    && got.contains(&"alert Hot firing->inactive".to_string())
            },
            || format!("{agg}: {:?}\n{}", decisions(agg), logs()),
        );
    }
    assert_eq!(
        decisions(&rem_url),
        decisions(&mem_url),
        "the remote-mode aggregator decided otherwise than the window\n{}",
        logs()
    );
    assert_eq!(rule_error(&rem_url), None, "{}", logs());

    // The query API is the engine's answer.
    let t = now_ms() / 1000 - 10;
    for q in [
        format!(
            "/api/v1/query?query={}&time={t}",
            encode_component("sum by (instance) (app_load)")
        ),
        format!(
            "/api/v1/query_range?query={}&start={}&end={t}&step=1",
            encode_component("app_load"),
            t - 20
        ),
        format!("/api/v1/series?match[]=app_load&start={}&end={t}", t - 20),
        format!("/api/v1/labels?start={}&end={t}", t - 20),
        format!("/api/v1/label/instance/values?start={}&end={t}", t - 20),
    ] {
        let ours = get(&format!("{rem_url}{q}")).expect("remote aggregator");
        let theirs = get(&format!("{vm_url}{q}")).expect("victoria-metrics");
        assert_eq!(ours, theirs, "{q}");
        assert_eq!(ours.0, 200, "{q}: {}", ours.1);
    }

    // The engine down: the rules report its error, and no decision is made on it (on_no_data
    // would set 2 after 2 s of no data: an error is not "no data").
    let before = decisions(&rem_url);
    vm.child.signal("KILL");
    assert!(vm.child.wait_exit(Duration::from_secs(30)));
    wait_until(
        Duration::from_secs(60),
        "the engine's error in rule health",
        || rule_error(&rem_url).is_some_and(|e| e.contains("storage:")),
        || format!("{:?}\n{}", rule_error(&rem_url), logs()),
    );
    let errored_at = now_ms();
    // Evaluations go on erring past no_data_for (judged by the rules' own evaluation times).
    wait_until(
        Duration::from_secs(60),
        "evaluations past no_data_for with the engine down",
        || {
            let v = json(&format!("{rem_url}/api/v1/rules"));
            v["data"]["groups"][0]["lastEvaluation"]
                .as_str()
                .and_then(|s| vigil_config::duration::parse_timestamp_ms(s).ok())
                .is_some_and(|t| t > errored_at + 4_000)
        },
        logs,
    );
    assert!(rule_error(&rem_url).is_some_and(|e| e.contains("storage:")));
    assert_eq!(
        decisions(&rem_url),
        before,
        "decided while the engine erred\n{}",
        logs()
    );
    let (code, body) = get(&format!("{rem_url}/api/v1/query?query=app_load")).expect("query");
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("storage:"), "{body}");

    // Back: the errors end.
    let _vm = vm.again(d.path());
    wait_until(
        Duration::from_secs(90),
        "rule health clear once the engine is back",
        || rule_error(&rem_url).is_none(),
        || format!("{:?}\n{}", rule_error(&rem_url), logs()),
    );
    stop.store(true, Ordering::Relaxed);
    pusher.join().expect("pusher");
}

#[test]
fn the_agent_writes_into_victoriametrics_and_vmagent_into_the_aggregator() {
    let d = tempdir("engines");
    let vm = Vm::start(d.path(), &[]);
    let (vm_url, vm_port) = (
        vm.url.clone(),
        vm.url.rsplit(':').next().expect("port").to_string(),
    );

    // Vigil's agent, its one push target VictoriaMetrics' remote-write endpoint.
    let agent_port = free_port();
    std::fs::write(
        d.path().join("agent.toml"),
        format!(
            "[agent]\ninterval = \"1s\"\n[identity]\nsource = \"static\"\ninstance = \"i-agent\"\nasg = \"web-asg\"\n[[push]]\nurl = \"{vm_url}/api/v1/write\"\n[buffer]\ndir = \"{}\"\n[listen]\naddress = \"127.0.0.1:{agent_port}\"\n",
            d.path().join("spool").display()
        ),
    )
    .expect("agent config");
    let agent = Child::spawn(
        "agent",
        Command::new(bin("vigil-agent"))
            .arg("--config")
            .arg(d.path().join("agent.toml")),
        d.path(),
    );
    let q = encode_component(r#"count(node_cpu_seconds_total{instance="i-agent"})"#);
    wait_until(
        Duration::from_secs(90),
        "the agent's host metrics in VictoriaMetrics",
        || {
            get(&format!("{vm_url}/api/v1/query?query={q}"))
                .is_ok_and(|(c, b)| c == 200 && b.contains("\"value\""))
        },
        || agent.log_text(),
    );

    // Liveness of an agent that writes only to the engine: a remote-mode aggregator (which
    // forwards its own series there) calls it up by its newest node_boot_time_seconds, then
    // down once it stops.
    let storage = format!(
        "stale_after = \"5s\"\nbackend = \"remote\"\n[storage.remote]\nquery_url = \"{vm_url}\"\nwrite_url = \"{vm_url}/api/v1/write\""
    );
    let (live, _) = aggregator(d.path(), "liveness", &storage);
    let up = || {
        vm_count(
            &vm_url,
            r#"max(last_over_time(vigil_instance_up{instance="i-agent"}[10s]))"#,
        )
    };
    wait_until(
        Duration::from_secs(90),
        "vigil_instance_up 1 for the agent that writes to the engine",
        || up() == Some(1.0),
        || format!("{:?}\n{}", up(), live.log_text()),
    );
    let mut agent = agent;
    agent.signal("KILL");
    assert!(agent.wait_exit(Duration::from_secs(30)));
    wait_until(
        Duration::from_secs(90),
        "vigil_instance_up 0 once the agent stopped",
        || up() == Some(0.0),
        || format!("{:?}\n{}", up(), live.log_text()),
    );
    drop(live);

    // vmagent scrapes VictoriaMetrics' own metrics and writes them into an aggregator.
    let (_agg, agg_url) = aggregator(d.path(), "aggregator", "");
    std::fs::write(
        d.path().join("scrape.yml"),
        format!(
            "scrape_configs:\n  - job_name: vm\n    scrape_interval: 1s\n    static_configs:\n      - targets: [\"127.0.0.1:{vm_port}\"]\n"
        ),
    )
    .expect("scrape config");
    let vmagent = Child::spawn(
        "vmagent",
        Command::new(peer("vmagent")).args([
            format!(
                "-promscrape.config={}",
                d.path().join("scrape.yml").display()
            ),
            format!("-remoteWrite.url={agg_url}/api/v1/write"),
            format!(
                "-remoteWrite.tmpDataPath={}",
                d.path().join("vmagent").display()
            ),
            format!("-httpListenAddr=127.0.0.1:{}", free_port()),
        ]),
        d.path(),
    );
    let q = encode_component(r#"up{job="vm"}"#);
    wait_until(
        Duration::from_secs(90),
        "vmagent's samples in the aggregator",
        || {
            get(&format!("{agg_url}/api/v1/query?query={q}"))
                .is_ok_and(|(c, b)| c == 200 && b.contains(r#""value":["#) && b.contains(r#""1"]"#))
        },
        || vmagent.log_text(),
    );
}

fn vm_count(vm_url: &str, expr: &str) -> Option<f64> {
    let q = encode_component(expr);
    let (code, body) = get(&format!("{vm_url}/api/v1/query?query={q}")).ok()?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

fn metric(agg: &str, name: &str) -> Option<f64> {
    let (code, body) = get(&format!("{agg}/metrics")).ok()?;
    (code == 200).then_some(())?;
    vigil_e2e::http::metric_value(&body, name)
}

#[test]
fn forwarding_holds_what_was_acknowledged_through_an_engine_outage_and_a_kill_9() {
    let d = tempdir("forward");
    // A sample sent twice (a restart resends what it had not confirmed) is one sample.
    let mut vm = Vm::start(d.path(), &["-dedup.minScrapeInterval=1ms"]);
    let vm_url = vm.url.clone();
    let storage = format!(
        "backend = \"remote\"\n[storage.remote]\nquery_url = \"{vm_url}\"\nwrite_url = \"{vm_url}/api/v1/write\"\nshards = 2"
    );
    let (agg, agg_url) = aggregator(d.path(), "forwarder", &storage);
    let series: Vec<Labels> = (0..50)
        .map(|i| Labels::from_pairs([("__name__", "fwd_test"), ("s", &i.to_string())]))
        .collect();
    let mut acked = 0usize;
    let t0 = now_ms() - 30_000;
    let mut push = |agg_url: &str, k: usize| {
        let mut batch: Vec<(Labels, f64)> = series.iter().map(|l| (l.clone(), k as f64)).collect();
        acked += batch.len();
        // What the rules record from (load:avg).
        batch.push((
            Labels::from_pairs([("__name__", "app_load"), ("instance", "i-a")]),
            0.5,
        ));
        assert_eq!(push_at(agg_url, &batch, t0 + k as i64 * 100), 204);
    };
    let count = |vm_url: &str| vm_count(vm_url, "sum(count_over_time(fwd_test[10m]))");
    for k in 0..20 {
        push(&agg_url, k);
    }
    wait_until(
        Duration::from_secs(60),
        "the first 1000 samples in VictoriaMetrics",
        || count(&vm_url) == Some(1000.0),
        || format!("{:?}\n{}", count(&vm_url), agg.log_text()),
    );

    // The engine down (stopped: a kill -9 would lose VictoriaMetrics' own unflushed second):
    // the aggregator still acknowledges (the log holds them) and retries.
    vm.child.signal("TERM");
    assert!(vm.child.wait_exit(Duration::from_secs(30)));
    for k in 20..40 {
        push(&agg_url, k);
    }
    wait_until(
        Duration::from_secs(60),
        "retries and samples pending",
        || {
            metric(&agg_url, "vigil_aggregator_remote_write_retries_total").is_some_and(|r| r > 0.0)
                && metric(&agg_url, "vigil_aggregator_remote_write_pending_bytes")
                    .is_some_and(|p| p > 0.0)
        },
        || agg.log_text(),
    );
    // kill -9 meanwhile: what was acknowledged is in the log, and the position on disk.
    agg.signal("KILL");
    let mut agg = agg;
    assert!(agg.wait_exit(Duration::from_secs(30)));
    drop(agg);
    // The engine first: its port is its own again before the aggregator takes a free one.
    let _vm = vm.again(d.path());
    let (agg, agg_url) = aggregator(d.path(), "forwarder", &storage);
    wait_until(
        Duration::from_secs(120),
        "every acknowledged sample in VictoriaMetrics once it is back",
        || count(&vm_url) == Some(acked as f64),
        || format!("{:?} of {acked}\n{}", count(&vm_url), agg.log_text()),
    );
    // The rules' own series go there as well.
    wait_until(
        Duration::from_secs(60),
        "the recorded series in VictoriaMetrics",
        || vm_count(&vm_url, "count(count_over_time(load:avg[10m]))") == Some(1.0),
        || agg.log_text(),
    );
    assert_eq!(
        metric(
            &agg_url,
            "vigil_aggregator_remote_write_samples_dropped_total"
        ),
        Some(0.0)
    );
    let _ = agg_url;
}

#[test]
fn forwarding_and_reads_are_sigv4_signed_as_botocore_checks() {
    let d = tempdir("sigv4");
    let port = free_port();
    // botocore's own signer checks every request (remote/tests/sigv4_verify.py).
    let _verifier = Child::spawn(
        "sigv4-verifier",
        Command::new("python3").args([
            vigil_e2e::procs::root()
                .join("remote/tests/sigv4_verify.py")
                .display()
                .to_string(),
            "AKIDVIGILE2E".into(),
            "vigil/e2e/secret".into(),
            "eu-west-1".into(),
            "aps".into(),
            port.to_string(),
        ]),
        d.path(),
    );
    let url = format!("http://127.0.0.1:{port}/workspaces/ws-e2e");
    wait_until(
        Duration::from_secs(60),
        "the botocore verifier",
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        String::new,
    );
    let storage = format!(
        "backend = \"remote\"\n[storage.remote]\nquery_url = \"{url}\"\nwrite_url = \"{url}/api/v1/remote_write\"\nsigv4 = {{ region = \"eu-west-1\" }}"
    );
    let (agg, agg_url) = aggregator_with(
        d.path(),
        "signed",
        &storage,
        &[
            ("AWS_ACCESS_KEY_ID", "AKIDVIGILE2E"),
            ("AWS_SECRET_ACCESS_KEY", "vigil/e2e/secret"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    let l = Labels::from_pairs([("__name__", "app_load"), ("instance", "i-a")]);
    for k in 0..5 {
        assert_eq!(
            push_at(&agg_url, &[(l.clone(), 0.5)], now_ms() - 1_000 + k),
            204
        );
    }
    wait_until(
        Duration::from_secs(60),
        "signed samples taken by the verifier",
        || {
            metric(&agg_url, "vigil_aggregator_remote_write_samples_sent_total")
                .is_some_and(|n| n >= 5.0)
        },
        || agg.log_text(),
    );
    assert_eq!(
        metric(
            &agg_url,
            "vigil_aggregator_remote_write_samples_failed_total"
        ),
        Some(0.0),
        "{}",
        agg.log_text()
    );
    // The rules' reads were signed too: evaluations without an error.
    wait_until(
        Duration::from_secs(60),
        "a signed evaluation",
        || {
            let v = json(&format!("{agg_url}/api/v1/rules"));
            v["data"]["groups"][0]["rules"][0]["health"].as_str() == Some("ok")
        },
        || format!("{:?}\n{}", rule_error(&agg_url), agg.log_text()),
    );
}
