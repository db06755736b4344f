//! Backtests on real history: six hours of a web tier's samples held by Debian's VictoriaMetrics
//! 1.79 (imported) and by Debian's Prometheus 2.42 (blocks written by its own `promtool tsdb
//! create-blocks-from openmetrics`); `vigil-rules replay --from` each gives the same alert
//! transitions and scaling decisions, line for line, as `--data` on a remote-write dump of the
//! same samples.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use vigil_e2e::http::{encode_component, get, now_ms, post};
use vigil_e2e::{bin, free_port, peer, tempdir, wait_until, Child};
use vigil_wire::{Labels, Sample};

const STEP_MS: i64 = 15_000;
const POINTS: i64 = 6 * 240 + 1; // six hours at 15 s, both ends included

const RULES: &str = r#"
[[group]]
name = "recording"
interval = "30s"

[[group.record]]
record = "asg:http_requests:rate1m"
expr = 'sum by (asg) (rate(http_requests_total[1m]))'

[[group.record]]
record = "asg:http_errors:ratio2m"
expr = 'sum by (asg) (rate(http_requests_total{code=~"5.."}[2m])) / sum by (asg) (rate(http_requests_total[2m]))'

[[group]]
name = "alerts"
interval = "1m"

[[group.alert]]
alert = "HighErrorRate"
expr = 'asg:http_errors:ratio2m > 0.05'
for = "3m"

[[group.alert]]
alert = "InstanceDown"
expr = 'up == 0'
for = "2m"

[[group.alert]]
alert = "TrafficSpike"
expr = 'sum(increase(http_requests_total[10m] offset 1m)) > 25000'

[[group.alert]]
alert = "NoTraffic"
expr = 'absent(up{instance="i-c"})'
for = "5m"

[[scaling]]
name = "web-cpu"
asg = "web-asg"
min = 2
max = 10
expr = 'avg(cpu_busy{asg="web-asg"})'
target = 0.6
tolerance = 0.1
scale_out_cooldown = "2m"
scale_in_cooldown = "5m"
scale_in_stabilization = "5m"
"#;

/// The recorded tier: three instances; a load peak (hour 2:00–2:40), a counter reset (i-b at
/// 1:30), an instance down (i-c 3:00–3:10) then silent (5:00–5:30), quiet CPU (3:30–4:00),
/// errors (4:00–4:20). Values are integers or short decimals (VictoriaMetrics stores decimals).
fn tier(t0: i64) -> Vec<(Labels, Vec<Sample>)> {
    let mut out = Vec::new();
    let minute = |k: i64| k * STEP_MS / 60_000;
    for inst in ["i-a", "i-b", "i-c"] {
        let silent = |k: i64| inst == "i-c" && (300..330).contains(&minute(k));
        let (mut ok, mut err) = (0.0, 0.0);
        let (mut oks, mut errs, mut ups, mut cpus) = (vec![], vec![], vec![], vec![]);
        for k in 0..POINTS {
            let m = minute(k);
            let t = t0 + k * STEP_MS;
            if inst == "i-b" && m == 90 && k * STEP_MS % 60_000 == 0 {
                (ok, err) = (0.0, 0.0);
            }
            ok += if (120..160).contains(&m) {
                450.0
            } else {
                150.0
            };
            if (240..260).contains(&m) {
                err += 30.0;
            }
            if silent(k) {
                continue;
            }
            let up = if inst == "i-c" && (180..190).contains(&m) {
                0.0
            } else {
                1.0
            };
            let cpu = if (120..160).contains(&m) {
                0.9
            } else if (210..240).contains(&m) {
                0.25
            } else {
                0.5
            };
            oks.push(Sample::new(t, ok));
            errs.push(Sample::new(t, err));
            ups.push(Sample::new(t, up));
            cpus.push(Sample::new(t, cpu));
        }
        let l = |name: &str, extra: &[(&str, &str)]| {
            let mut pairs = vec![("__name__", name), ("asg", "web-asg"), ("instance", inst)];
            pairs.extend_from_slice(extra);
            Labels::from_pairs(pairs)
        };
        out.push((l("http_requests_total", &[("code", "200")]), oks));
        out.push((l("http_requests_total", &[("code", "500")]), errs));
        out.push((l("up", &[]), ups));
        out.push((l("cpu_busy", &[]), cpus));
    }
    out
}

/// `name{labels} value timestamp` lines; `ts` writes a timestamp in the unit the format wants.
fn text_lines(data: &[(Labels, Vec<Sample>)], ts: impl Fn(i64) -> String) -> String {
    let mut s = String::new();
    for (l, samples) in data {
        let pairs: Vec<String> = l
            .iter()
            .filter(|x| x.name != "__name__")
            .map(|x| format!("{}=\"{}\"", x.name, x.value))
            .collect();
        let series = format!("{}{{{}}}", l.metric_name().unwrap_or(""), pairs.join(","));
        for x in samples {
            writeln!(s, "{series} {} {}", x.value, ts(x.timestamp_ms)).unwrap();
        }
    }
    s
}

/// The whole data set's sample count as an engine reports it at `t1`.
fn count_at(base: &str, t1: i64) -> Option<f64> {
    // Per name: count_over_time drops the name, and the names share their other labels.
    let q = encode_component(
        "sum(count_over_time(http_requests_total[6h1m])) + sum(count_over_time(up[6h1m])) + sum(count_over_time(cpu_busy[6h1m]))",
    );
    let (code, body) = get(&format!("{base}/api/v1/query?query={q}&time={}", t1 / 1000)).ok()?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

fn replay(rules: &std::path::Path, source: &[String]) -> (String, String) {
    let out = Command::new(bin("vigil-rules"))
        .arg("replay")
        .arg("--rules")
        .arg(rules)
        .args(source)
        .args(["--capacity", "web-asg=3"])
        .output()
        .expect("run vigil-rules");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "vigil-rules replay {source:?}: {stderr}"
    );
    (stdout, stderr)
}

#[test]
fn replay_from_victoriametrics_and_prometheus_matches_the_recorded_data() {
    let d = tempdir("history");
    // Six hours ending an hour ago, on a minute boundary.
    let t1 = (now_ms() / 60_000) * 60_000 - 3_600_000;
    let t0 = t1 - (POINTS - 1) * STEP_MS;
    let data = tier(t0);
    let total: usize = data.iter().map(|(_, s)| s.len()).sum();
    let rules = d.path().join("rules.toml");
    std::fs::write(&rules, RULES).expect("rules");

    // The recorded data as a remote-write dump: one frame a series.
    let mut dump = Vec::new();
    for (l, s) in &data {
        let body = vigil_wire::remote_write::encode_snappy_from([(l, s.as_slice())]);
        dump.extend_from_slice(&(body.len() as u32).to_be_bytes());
        dump.extend_from_slice(&body);
    }
    let dump_path = d.path().join("tier.rw");
    std::fs::write(&dump_path, dump).expect("dump");

    // VictoriaMetrics, fed through its import API.
    let vm_port = free_port();
    let vm_url = format!("http://127.0.0.1:{vm_port}");
    let vm = Child::spawn(
        "victoria-metrics",
        Command::new(peer("victoria-metrics")).args([
            format!("-storageDataPath={}", d.path().join("vm").display()),
            format!("-httpListenAddr=127.0.0.1:{vm_port}"),
            "-retentionPeriod=1y".into(),
            "-search.disableCache".into(),
        ]),
        d.path(),
    );
    let import = text_lines(&data, |t| t.to_string());
    wait_until(
        Duration::from_secs(60),
        "VictoriaMetrics to accept the import",
        || {
            post(
                &format!("{vm_url}/api/v1/import/prometheus"),
                &[],
                import.as_bytes(),
            )
            .is_ok_and(|(c, _)| c == 204)
        },
        String::new,
    );
    wait_until(
        Duration::from_secs(120),
        "VictoriaMetrics to hold every sample",
        || {
            let _ = get(&format!("{vm_url}/internal/force_flush"));
            count_at(&vm_url, t1) == Some(total as f64)
        },
        || format!("{:?} of {total}\n{}", count_at(&vm_url, t1), vm.log_text()),
    );

    // Prometheus, on blocks its own promtool wrote from the same samples.
    let om = d.path().join("tier.om");
    let mut text = text_lines(&data, |t| format!("{}.{:03}", t / 1000, t % 1000));
    text.push_str("# EOF\n");
    std::fs::write(&om, text).expect("openmetrics");
    let tsdb = d.path().join("prom-data");
    let st = Command::new(peer("promtool"))
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&om)
        .arg(&tsdb)
        .output()
        .expect("promtool");
    assert!(
        st.status.success(),
        "promtool: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    std::fs::write(d.path().join("prometheus.yml"), "global: {}\n").expect("prometheus.yml");
    let prom_port = free_port();
    let prom_url = format!("http://127.0.0.1:{prom_port}");
    let prom = Child::spawn(
        "prometheus",
        Command::new(peer("prometheus")).args([
            format!(
                "--config.file={}",
                d.path().join("prometheus.yml").display()
            ),
            format!("--storage.tsdb.path={}", tsdb.display()),
            "--storage.tsdb.retention.time=1y".into(),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
        ]),
        d.path(),
    );
    wait_until(
        Duration::from_secs(120),
        "Prometheus to serve the backfilled blocks",
        || count_at(&prom_url, t1) == Some(total as f64),
        || {
            format!(
                "{:?} of {total}\n{}",
                count_at(&prom_url, t1),
                prom.log_text()
            )
        },
    );

    let (want, _) = replay(&rules, &["--data".into(), dump_path.display().to_string()]);
    for needle in [
        "HighErrorRate",
        "InstanceDown",
        "TrafficSpike",
        "NoTraffic",
        "web-cpu",
    ] {
        assert!(want.contains(needle), "no {needle} in the replay:\n{want}");
    }
    assert!(
        want.contains("pending -> firing") && want.contains("firing -> inactive"),
        "{want}"
    );
    let range = [
        "--start".to_string(),
        (t0 / 1000).to_string(),
        "--end".into(),
        (t1 / 1000).to_string(),
    ];
    for (engine, url) in [("VictoriaMetrics", &vm_url), ("Prometheus", &prom_url)] {
        // Half-hour requests: a 6 h range in a dozen chunks a selector.
        let mut args = vec![
            "--from".to_string(),
            url.clone(),
            "--chunk".into(),
            "30m".into(),
        ];
        args.extend(range.iter().cloned());
        let (got, progress) = replay(&rules, &args);
        assert!(
            progress.contains("(13/13)"),
            "{engine}: no progress report of the last chunk:\n{progress}"
        );
        assert_eq!(
            got, want,
            "{engine}: replay --from differs from --data\n{progress}"
        );
    }
}
