//! The action layer against `moto_server`, through the harness's fault-injecting proxy: scaling
//! an Auto Scaling group, replacing unhealthy instances within the cap, alerts through SNS (read
//! back from a subscribed SQS queue), a Slack-style webhook and a real Alertmanager, CloudWatch
//! batches, and AWS failing in every way a network can.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use vigil_e2e::aws::{Aws, Moto, ENV};
use vigil_e2e::hook::Hook;
use vigil_e2e::http::{get, metric_value, push_now};
use vigil_e2e::proxy::{Fault, Proxy};
use vigil_e2e::{bin, free_port, peer, tempdir, wait_http, wait_until, Child, TempDir};
use vigil_wire::Labels;

/// moto, the proxy in front of it, and an aggregator configured to call AWS through the proxy.
struct Rig {
    dir: TempDir,
    _moto: Moto,
    proxy: Proxy,
    aws: Aws,
    port: u16,
    base: String,
    cfg: PathBuf,
}

impl Rig {
    fn new(name: &str) -> Rig {
        let dir = tempdir(name);
        let moto = Moto::start(dir.path());
        let proxy = Proxy::start(moto.port);
        let aws = Aws::new(&moto.url());
        let port = free_port();
        Rig {
            cfg: dir.path().join("aggregator.toml"),
            dir,
            _moto: moto,
            proxy,
            aws,
            port,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Writes the rules and the config: 1 s evaluation, short notification timers, the
    /// receivers given, AWS through the proxy.
    fn configure(&self, rules: &str, receivers: &str, extra: &str) {
        let rules_path = self.dir.path().join("rules.toml");
        std::fs::write(&rules_path, rules).expect("rules");
        std::fs::write(
            &self.cfg,
            format!(
                r#"[server]
listen = "127.0.0.1:{port}"

[storage]
retention = "1h"
stale_after = "3s"
state_dir = "{state}"

[rules]
files = ["{rules}"]
evaluation_interval = "1s"

[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"
{extra}

[notify]
group_by = ["alertname", "asg"]
group_wait = "1s"
group_interval = "2s"
repeat_interval = "1h"

{receivers}
"#,
                port = self.port,
                state = self.dir.path().join("state").display(),
                rules = rules_path.display(),
                endpoint = self.proxy.url(),
            ),
        )
        .expect("config");
    }

    fn start(&self) -> Child {
        let mut cmd = Command::new(bin("vigil-aggregator"));
        cmd.arg("--config").arg(&self.cfg).envs(ENV);
        let c = Child::spawn("aggregator", &mut cmd, self.dir.path());
        assert!(
            wait_http(&format!("{}/-/ready", self.base), Duration::from_secs(30)),
            "aggregator did not start:\n{}",
            c.log_text()
        );
        c
    }

    /// Waits for the first rule group's first evaluation (the rules need a `[[group]]`).
    fn wait_first_evaluation(&self, agg: &Child) {
        let evaluated = || {
            let (_, r) = get(&format!("{}/api/v1/rules", self.base)).expect("rules");
            serde_json::from_str::<serde_json::Value>(&r)
                .ok()
                .is_some_and(|v| {
                    v["data"]["groups"][0]["lastEvaluation"]
                        .as_str()
                        .is_some_and(|t| !t.starts_with("0001"))
                })
        };
        vigil_e2e::wait_until(
            Duration::from_secs(30),
            "the first evaluation",
            evaluated,
            || agg.log_text(),
        );
    }

    fn push(&self, series: &[(Labels, f64)]) {
        assert_eq!(push_now(&self.base, series), 204);
    }

    fn metrics(&self) -> String {
        get(&format!("{}/metrics", self.base)).expect("metrics").1
    }
}

fn series(name: &str, asg: &str, instances: &[String], v: f64) -> Vec<(Labels, f64)> {
    instances
        .iter()
        .map(|i| {
            (
                Labels::from_pairs([("__name__", name), ("asg", asg), ("instance", i.as_str())]),
                v,
            )
        })
        .collect()
}

/// Pushes `f(elapsed)` every second until `until` holds or `timeout` passes.
fn push_until(
    rig: &Rig,
    timeout: Duration,
    mut each: impl FnMut() -> Vec<(Labels, f64)>,
    mut until: impl FnMut() -> bool,
) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        rig.push(&each());
        if until() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1000));
    }
    false
}

const SCALING: &str = r#"
[[scaling]]
name = "web-cpu"
asg = "web"
min = 2
max = 6
expr = 'avg(app_cpu{asg="web"})'
target = 0.5
tolerance = 0.1
scale_out_cooldown = "2s"
scale_in_cooldown = "1s"
scale_in_stabilization = "6s"
"#;

#[test]
fn scales_out_within_seconds_and_in_only_after_stabilization() {
    let rig = Rig::new("act-scale");
    rig.aws.create_group("web", 2, 6, 2);
    rig.configure(SCALING, "", "dry_run = false");
    let agg = rig.start();
    let load: Vec<String> = (0..4).map(|k| format!("i-load{k}")).collect();
    // Steady at target: nothing changes.
    for _ in 0..3 {
        rig.push(&series("app_cpu", "web", &load, 0.5));
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(rig.proxy.calls_of("SetDesiredCapacity").is_empty());
    // Load rises: the first sample over target, then one a second (a 1 s push). A fixed
    // amount of work spread over the group (1.8 instances' worth: 0.9 at 2 instances, 0.45 at
    // 4, within target ± tolerance), so the scale-out is one step however slow moto is.
    let first_over = Instant::now();
    let ok = push_until(
        &rig,
        Duration::from_secs(30),
        || {
            let desired = rig.aws.group("web").0.max(1);
            series("app_cpu", "web", &load, 1.8 / f64::from(desired))
        },
        || !rig.proxy.calls_of("SetDesiredCapacity").is_empty(),
    );
    assert!(ok, "no SetDesiredCapacity:\n{}", agg.log_text());
    let call = rig.proxy.calls_of("SetDesiredCapacity")[0].clone();
    let latency = call.at.duration_since(first_over);
    println!(
        "scale-out latency: first sample over target -> SetDesiredCapacity = {} ms (1 s push, 1 s evaluation)",
        latency.as_millis()
    );
    // One push and one evaluation a second: about 2 s when moto answers at once; the bound
    // leaves room for a slow moto (the actuator describes the group before it sets it).
    assert!(latency < Duration::from_secs(15), "{latency:?}");
    assert!(call.body.contains("HonorCooldown=false"), "{}", call.body);
    assert!(call.body.contains("DesiredCapacity=4"), "{}", call.body);
    // The count, the decision view and the status page are written after the call is sent
    // (the page once AWS has answered): wait for them.
    wait_until(
        Duration::from_secs(30),
        "the decision to show in the metrics, the API and the page",
        || {
            rig.metrics()
                .contains("vigil_aggregator_scaling_decisions_total{asg=\"web\",result=\"out\"}")
                && get(&format!("{}/api/v1/scaling", rig.base)).is_ok_and(|(_, s)| {
                    serde_json::from_str::<serde_json::Value>(&s)
                        .is_ok_and(|v| v["data"]["policies"][0]["last_decisions"][0]["to"] == 4)
                })
                && get(&format!("{}/", rig.base)).is_ok_and(|(_, p)| p.contains(": set<"))
        },
        || agg.log_text(),
    );
    assert_eq!(rig.aws.group("web").0, 4);
    // The decision and its causes are in /api/v1/scaling.
    let (_, s) = get(&format!("{}/api/v1/scaling", rig.base)).expect("scaling");
    let v: serde_json::Value = serde_json::from_str(&s).expect("json");
    let p = &v["data"]["policies"][0];
    assert_eq!(p["current"], 4, "{s}");
    assert_eq!(p["last_decisions"][0]["to"], 4, "{s}");
    assert_eq!(p["last_decisions"][0]["inputs"][0]["value"], "0.9", "{s}");
    assert_eq!(p["fleet"]["aws"]["max"], 6, "{s}");
    // And on the status page, for whoever is on call.
    let (_, page) = get(&format!("{}/", rig.base)).expect("status page");
    assert!(page.contains("<td>web<td>web-cpu<td>4 (2–6, "), "{page}");
    assert!(page.contains(": set<"), "{page}");

    // Load drops far below target: the recommendation is 1, but the group's min is 2, and
    // nothing happens before the 6 s stabilization window has passed.
    let before = rig.proxy.calls_of("SetDesiredCapacity").len();
    let dropped = Instant::now();
    let ok = push_until(
        &rig,
        Duration::from_secs(20),
        || series("app_cpu", "web", &load, 0.1),
        || rig.proxy.calls_of("SetDesiredCapacity").len() > before,
    );
    assert!(ok, "no scale-in:\n{}", agg.log_text());
    let call = rig.proxy.calls_of("SetDesiredCapacity")[before].clone();
    let waited = call.at.duration_since(dropped);
    println!(
        "scale-in after the load dropped: {} ms (stabilization 6 s)",
        waited.as_millis()
    );
    assert!(waited >= Duration::from_secs(5), "{waited:?}");
    assert!(call.body.contains("DesiredCapacity=2"), "{}", call.body);
    // It stays at min.
    for _ in 0..4 {
        rig.push(&series("app_cpu", "web", &load, 0.1));
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(rig.aws.group("web").0, 2);
    assert_eq!(rig.proxy.calls_of("SetDesiredCapacity").len(), before + 1);

    // A change from outside Vigil is noticed and adopted.
    rig.aws.set_desired("web", 3);
    let ok = push_until(
        &rig,
        Duration::from_secs(30),
        || series("app_cpu", "web", &load, 0.5),
        || {
            rig.metrics()
                .contains("vigil_aggregator_external_capacity_changes_total{asg=\"web\"} 1")
        },
    );
    assert!(ok, "{}\n{}", rig.metrics(), agg.log_text());
    assert!(agg.log_text().contains("changed outside Vigil"));
}

#[test]
fn dry_run_decides_the_same_and_changes_nothing() {
    let rig = Rig::new("act-dry");
    rig.aws.create_group("web", 2, 6, 2);
    rig.configure(SCALING, "", "dry_run = true");
    let agg = rig.start();
    let load: Vec<String> = (0..4).map(|k| format!("i-load{k}")).collect();
    let ok = push_until(
        &rig,
        Duration::from_secs(30),
        || series("app_cpu", "web", &load, 0.9),
        || {
            rig.metrics().contains(
                "vigil_aggregator_aws_calls_total{call=\"SetDesiredCapacity\",result=\"dry_run\"}",
            )
        },
    );
    assert!(ok, "{}\n{}", rig.metrics(), agg.log_text());
    assert!(agg.log_text().contains("dry run: would SetDesiredCapacity"));
    let (_, d) = get(&format!("{}/api/v1/decisions", rig.base)).expect("decisions");
    let d: serde_json::Value = serde_json::from_str(&d).expect("json");
    let scaled = d["data"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["kind"] == "scaling")
        .unwrap_or_else(|| panic!("no scaling decision: {d}"));
    assert_eq!(
        (scaled["from"].as_u64(), scaled["to"].as_u64()),
        (Some(2), Some(4)),
        "{d}"
    );
    // Reads are allowed; nothing that changes AWS was called.
    assert!(!rig.proxy.calls_of("DescribeAutoScalingGroups").is_empty());
    let changing: Vec<String> = rig
        .proxy
        .calls()
        .into_iter()
        .map(|c| c.action)
        .filter(|a| !a.starts_with("Describe"))
        .collect();
    assert!(changing.is_empty(), "{changing:?}");
    assert_eq!(rig.aws.group("web").0, 2);
    // A decision that was never applied is not mistaken for a change made outside Vigil.
    for _ in 0..3 {
        rig.push(&series("app_cpu", "web", &load, 0.5));
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        !rig.metrics().contains("external_capacity_changes_total{"),
        "{}",
        agg.log_text()
    );
    assert!(!agg.log_text().contains("changed outside Vigil"));
}

/// A dry run whose AWS cannot be reached decides from its own simulation (from the policies'
/// `min`), says so in the API and on the page, and calls nothing that changes AWS.
#[test]
fn dry_run_with_aws_away_follows_its_simulation() {
    let rig = Rig::new("act-dry-away");
    rig.proxy.set(Fault::Refuse);
    rig.configure(SCALING, "", "dry_run = true");
    let agg = rig.start();
    let load: Vec<String> = (0..4).map(|k| format!("i-load{k}")).collect();
    let scaled = || {
        let (_, d) = get(&format!("{}/api/v1/decisions", rig.base)).expect("decisions");
        let d: serde_json::Value = serde_json::from_str(&d).expect("json");
        d["data"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["kind"] == "scaling")
            .cloned()
    };
    let ok = push_until(
        &rig,
        Duration::from_secs(30),
        || series("app_cpu", "web", &load, 0.9),
        || scaled().is_some(),
    );
    assert!(ok, "no decision\n{}", agg.log_text());
    let d = scaled().expect("decision");
    assert_eq!(
        (d["from"].as_u64(), d["to"].as_u64()),
        (Some(2), Some(4)),
        "{d}"
    );
    let (_, s) = get(&format!("{}/api/v1/scaling", rig.base)).expect("scaling");
    let s: serde_json::Value = serde_json::from_str(&s).expect("json");
    let p = &s["data"]["policies"][0];
    assert_eq!(p["simulated"], true, "{s}");
    let (_, page) = get(&format!("{}/", rig.base)).expect("page");
    assert!(page.contains("simulated (dry run)"), "{page}");
    let changing: Vec<String> = rig
        .proxy
        .calls()
        .into_iter()
        .map(|c| c.action)
        .filter(|a| !a.starts_with("Describe"))
        .collect();
    assert!(changing.is_empty(), "{changing:?}");
}

#[test]
fn replaces_a_sick_instance_within_the_cap_but_never_a_sick_fleet() {
    let rig = Rig::new("act-replace");
    rig.aws.create_group("app", 5, 5, 5);
    let hook = Hook::start();
    rig.configure(
        r#"
[[replace]]
name = "app-unhealthy"
asg = "app"
expr = 'vigil_health_up{asg="app"} == 0'
for = "2s"
max_fraction = 0.2
window = "10m"
fail_open_fraction = 0.5
"#,
        &format!(
            "[[receiver]]\nname = \"oncall\"\nslack_webhook_url = \"{}\"\n",
            vigil_e2e::secret(hook.url("/slack"))
        ),
        "dry_run = false",
    );
    let agg = rig.start();
    let ids: Vec<String> = rig.aws.group("app").3.into_iter().map(|m| m.0).collect();
    assert_eq!(ids.len(), 5);
    let health = |sick: &[&String]| -> Vec<(Labels, f64)> {
        ids.iter()
            .map(|i| {
                (
                    Labels::from_pairs([
                        ("__name__", "vigil_health_up"),
                        ("asg", "app"),
                        ("instance", i.as_str()),
                    ]),
                    if sick.contains(&i) { 0.0 } else { 1.0 },
                )
            })
            .collect()
    };
    // One instance fails its probe: after `for` it is marked Unhealthy, the others are not.
    let sick = ids[0].clone();
    let started = Instant::now();
    let unhealthy = |rig: &Rig| -> Vec<String> {
        rig.aws
            .group("app")
            .3
            .into_iter()
            .filter(|m| m.2 == "Unhealthy")
            .map(|m| m.0)
            .collect()
    };
    let ok = push_until(
        &rig,
        Duration::from_secs(30),
        || health(&[&sick]),
        // The proxy records the call once moto has answered it: after the change shows.
        || !unhealthy(&rig).is_empty() && !rig.proxy.calls_of("SetInstanceHealth").is_empty(),
    );
    assert!(
        ok,
        "{:?}\n{:?}\n{}",
        get(&format!("{}/api/v1/decisions", rig.base)),
        get(&format!(
            "{}/api/v1/query?query=vigil_health_up%3D%3D0",
            rig.base
        )),
        agg.log_text()
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(unhealthy(&rig), std::slice::from_ref(&sick));
    let call = &rig.proxy.calls_of("SetInstanceHealth")[0];
    assert!(
        call.body.contains("ShouldRespectGracePeriod=true"),
        "{}",
        call.body
    );
    // Now three more fail at once: 3 of 5 is at or above fail_open_fraction — nothing more is
    // replaced, and the fail-open alert is delivered.
    let more: Vec<&String> = ids[..4].iter().collect();
    let ok = push_until(
        &rig,
        Duration::from_secs(30),
        || health(&more),
        || {
            hook.bodies()
                .iter()
                .any(|(_, b)| b.to_string().contains("VigilReplacementFailOpen"))
        },
    );
    assert!(
        ok,
        "no fail-open alert: {:?}\n{}",
        hook.bodies(),
        agg.log_text()
    );
    for _ in 0..4 {
        rig.push(&health(&more));
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(rig.proxy.calls_of("SetInstanceHealth").len(), 1);
    assert_eq!(unhealthy(&rig), [sick]);
    let text = hook.bodies()[0].1.to_string();
    assert!(text.contains("replacing nothing"), "{text}");
}

/// The instances of `placement` (id, zone, protected) in zone `z`, sorted.
fn in_zone(placement: &[(String, String, bool)], z: &str) -> Vec<String> {
    let mut v: Vec<String> = placement
        .iter()
        .filter(|(_, az, _)| az == z)
        .map(|(i, _, _)| i.clone())
        .collect();
    v.sort();
    v
}

/// Alerts of one group: two instances of one ASG.
const ALERTS: &str = r#"
[[group]]
name = "app"
[[group.alert]]
alert = "AppErrors"
expr = 'app_errors{asg="web"} > 0'
labels = { severity = "page" }
annotations = { summary = "errors on {{ $labels.instance }}" }
"#;

#[test]
fn alerts_arrive_once_per_group_and_resolve_once_across_a_restart() {
    let rig = Rig::new("act-notify");
    let (topic, queue) = rig.aws.topic_with_queue("oncall");
    let hook = Hook::start();
    rig.configure(
        ALERTS,
        &format!(
            "[[receiver]]\nname = \"oncall\"\nsns_topic_arn = \"{topic}\"\nslack_webhook_url = \"{}\"\n",
            vigil_e2e::secret(hook.url("/slack"))
        ),
        "dry_run = false",
    );
    let agg = rig.start();
    let inst = vec!["i-a".to_string(), "i-b".to_string()];
    let mut sns: Vec<serde_json::Value> = Vec::new();
    let ok = push_until(
        &rig,
        Duration::from_secs(20),
        || series("app_errors", "web", &inst, 3.0),
        || {
            sns.extend(rig.aws.drain(&queue));
            !sns.is_empty() && !hook.bodies().is_empty()
        },
    );
    assert!(ok, "{sns:?} {:?}\n{}", hook.bodies(), agg.log_text());
    // Keep firing for several group intervals: still one message each.
    for _ in 0..5 {
        rig.push(&series("app_errors", "web", &inst, 3.0));
        std::thread::sleep(Duration::from_secs(1));
    }
    sns.extend(rig.aws.drain(&queue));
    assert_eq!(sns.len(), 1, "{sns:#?}");
    assert_eq!(hook.bodies().len(), 1, "{:#?}", hook.bodies());
    let env = &sns[0];
    assert_eq!(env["Subject"], "[FIRING:2] AppErrors (web)", "{env}");
    assert_eq!(
        env["MessageAttributes"]["severity"]["Value"], "page",
        "{env}"
    );
    assert_eq!(env["MessageAttributes"]["asg"]["Value"], "web", "{env}");
    let msg: serde_json::Value =
        serde_json::from_str(env["Message"].as_str().expect("message")).expect("json message");
    assert_eq!(msg["status"], "firing");
    assert_eq!(msg["alerts"].as_array().map(Vec::len), Some(2));
    assert_eq!(msg["alerts"][0]["annotations"]["summary"], "errors on i-a");
    assert_eq!(msg["alerts"][0]["value"], 3.0);
    let slack = &hook.bodies()[0].1;
    assert!(
        slack["blocks"].as_array().is_some_and(|b| b.len() == 3),
        "{slack}"
    );

    // kill -9 between firing and resolving, once the sent notices are off the outbox (a kill
    // between a delivery and its record sends it again: at least once); the restarted
    // aggregator remembers it told.
    wait_until(
        Duration::from_secs(30),
        "an empty outbox",
        || metric_value(&rig.metrics(), "vigil_aggregator_notification_outbox") == Some(0.0),
        || agg.log_text(),
    );
    agg.signal("KILL");
    drop(agg);
    let agg = rig.start();
    for _ in 0..5 {
        rig.push(&series("app_errors", "web", &inst, 3.0));
        std::thread::sleep(Duration::from_secs(1));
    }
    sns.extend(rig.aws.drain(&queue));
    assert_eq!(
        sns.len(),
        1,
        "a restart must not repeat: {sns:#?}\n{}",
        agg.log_text()
    );
    assert_eq!(hook.bodies().len(), 1);
    // Resolve: one resolved notice each.
    let ok = push_until(
        &rig,
        Duration::from_secs(20),
        || series("app_errors", "web", &inst, 0.0),
        || {
            sns.extend(rig.aws.drain(&queue));
            sns.len() >= 2 && hook.bodies().len() >= 2
        },
    );
    assert!(ok, "{sns:#?}\n{}", agg.log_text());
    for _ in 0..4 {
        rig.push(&series("app_errors", "web", &inst, 0.0));
        std::thread::sleep(Duration::from_secs(1));
    }
    sns.extend(rig.aws.drain(&queue));
    assert_eq!(sns.len(), 2, "{sns:#?}");
    assert_eq!(hook.bodies().len(), 2);
    assert_eq!(sns[1]["Subject"], "[RESOLVED] AppErrors (web)");
    let msg: serde_json::Value =
        serde_json::from_str(sns[1]["Message"].as_str().expect("message")).expect("json");
    assert_eq!(msg["status"], "resolved");
    assert_eq!(msg["alerts"][0]["status"], "resolved");
}

#[test]
fn alertmanager_takes_over_through_its_v2_api() {
    let dir = tempdir("act-am");
    let am_port = free_port();
    let cluster_port = free_port();
    let am = Child::spawn(
        "alertmanager",
        Command::new(peer("prometheus-alertmanager")).args([
            &format!("--web.listen-address=127.0.0.1:{am_port}"),
            &format!("--cluster.listen-address=127.0.0.1:{cluster_port}"),
            &format!("--config.file={}", {
                let p = dir.path().join("am.yml");
                std::fs::write(&p, "route:\n  receiver: none\nreceivers:\n  - name: none\n")
                    .expect("am config");
                p.display().to_string()
            }),
            &format!("--storage.path={}", dir.path().join("am-data").display()),
        ]),
        dir.path(),
    );
    let am_url = format!("http://127.0.0.1:{am_port}");
    assert!(
        wait_http(&format!("{am_url}/-/ready"), Duration::from_secs(30)),
        "alertmanager did not start: {}",
        am.log_text()
    );
    // No AWS at all here: the webhook is not an AWS call and works in the embedded default.
    let (agg, base) = start_without_aws(
        dir.path(),
        ALERTS,
        &format!("[[receiver]]\nname = \"am\"\nwebhook_url = \"{am_url}/api/v2/alerts\"\n"),
    );
    let inst = vec!["i-a".to_string()];
    let active = || -> Vec<serde_json::Value> {
        let (code, b) = get(&format!("{am_url}/api/v2/alerts?active=true")).expect("am alerts");
        assert_eq!(code, 200, "{b}");
        serde_json::from_str::<Vec<serde_json::Value>>(&b).expect("Alertmanager's alert list")
    };
    let end = Instant::now() + Duration::from_secs(20);
    while active().is_empty() && Instant::now() < end {
        assert_eq!(
            push_now(&base, &series("app_errors", "web", &inst, 1.0)),
            204
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let a = active();
    assert_eq!(a.len(), 1, "{a:?}\n{}", agg.log_text());
    assert_eq!(a[0]["labels"]["alertname"], "AppErrors");
    assert_eq!(a[0]["labels"]["instance"], "i-a");
    assert_eq!(a[0]["annotations"]["summary"], "errors on i-a");
    // Resolved: Alertmanager no longer lists it as active.
    let end = Instant::now() + Duration::from_secs(20);
    while !active().is_empty() && Instant::now() < end {
        assert_eq!(
            push_now(&base, &series("app_errors", "web", &inst, 0.0)),
            204
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(active().is_empty(), "{:?}\n{}", active(), agg.log_text());
}

/// One PutMetricData call as the proxy saw it: its datums as (instance, timestamp) and the set of
/// timestamps they carry.
struct CwCall {
    datums: Vec<(String, String)>,
    timestamps: std::collections::BTreeSet<String>,
    status: u16,
    gzip: bool,
    high_resolution: bool,
}

impl CwCall {
    /// Reads the query-protocol form: `MetricData.member.N.Timestamp=…`,
    /// `MetricData.member.N.Dimensions.member.1.Value=…`, `….StorageResolution=1`.
    fn parse(c: &vigil_e2e::proxy::Call) -> CwCall {
        let mut members: std::collections::BTreeMap<u32, (String, String)> = Default::default();
        let mut high_resolution = true;
        for kv in c.body.split('&') {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let Some(rest) = k.strip_prefix("MetricData.member.") else {
                continue;
            };
            let Some((n, field)) = rest.split_once('.') else {
                continue;
            };
            let Ok(n) = n.parse::<u32>() else { continue };
            let m = members.entry(n).or_default();
            match field {
                "Timestamp" => m.1 = v.to_string(),
                "Dimensions.member.1.Value" => m.0 = v.to_string(),
                "StorageResolution" => high_resolution &= v == "1",
                _ => {}
            }
        }
        let datums: Vec<(String, String)> = members.into_values().collect();
        CwCall {
            timestamps: datums.iter().map(|d| d.1.clone()).collect(),
            datums,
            status: c.status,
            gzip: c.gzip,
            high_resolution,
        }
    }
}

#[test]
fn record_rule_datums_reach_cloudwatch_in_calls_of_at_most_1000() {
    const SERIES: usize = 1100;
    let rig = Rig::new("act-cw");
    rig.configure(
        r#"
[[group]]
name = "cw"
interval = "20s"
[[group.record]]
record = "app:load"
expr = 'app_load'
cloudwatch = { metric_name = "AppLoad", dimensions = ["instance"] }
"#,
        "",
        // With both cores busy moto took more than the default 10 s attempt timeout over one
        // call: the SDK cut it and sent it again (moto, still parsing, recorded both) and the
        // flush went back to the queue. Long timeouts keep each call one attempt.
        "dry_run = false\nattempt_timeout = \"3m\"\ncall_timeout = \"5m\"\n[cloudwatch]\nnamespace = \"VigilTest\"\nflush_interval = \"10s\"",
    );
    let agg = rig.start();
    // 1,100 series every 20 s: calls of 1000 and 100 datums. moto's query-protocol parsing takes
    // about 4 s per call of 1,000 datums on this machine (more with both cores busy), so it keeps
    // up only with well under 250 datums a second; at 2,500 every 10 s it fell behind and each
    // flush carried twice the evaluations of the one before.
    let inst: Vec<String> = (0..SERIES).map(|k| format!("i-{k:05}")).collect();
    let load: Vec<(Labels, f64)> = inst
        .iter()
        .enumerate()
        .map(|(k, i)| {
            (
                Labels::from_pairs([("__name__", "app_load"), ("instance", i.as_str())]),
                (k % 7) as f64,
            )
        })
        .collect();
    // Flushes are told apart by what they carry, not by when they came: every point is taken
    // by exactly one flush, a flush sends its calls one after another, and its datums are
    // sorted by dimensions first, so every call of one flush carries the same evaluation
    // timestamps and two flushes share none (unless a failed call's points went back to the
    // queue). A flush that found two evaluations queued (moto was slow with the one before)
    // carries both. Wait for the count of clean flushes, pushing all the while so the series
    // stay fresh; the first flush may hold a partial evaluation and the last may still be under
    // way, so only those between are judged.
    let flushes = |calls: &[vigil_e2e::proxy::Call]| -> Vec<Vec<CwCall>> {
        let mut out: Vec<Vec<CwCall>> = Vec::new();
        for c in calls.iter().map(CwCall::parse) {
            match out.last_mut() {
                Some(f) if f[0].timestamps == c.timestamps => f.push(c),
                _ => out.push(vec![c]),
            }
        }
        out
    };
    // A flush is clean when its calls are full 1000s then the rest, as few as CloudWatch's limit
    // allows, and carry every series of every evaluation in it exactly once. One that is not
    // has a call the SDK gave up on (its 10 s attempt timeout, with moto starved of CPU) and
    // sent again, or whose points went back to the queue: delivered at least once, as meant,
    // but not the shape to judge the batching by.
    let clean = |f: &[CwCall]| -> bool {
        let total = SERIES * f[0].timestamps.len();
        let sizes: Vec<usize> = f.iter().map(|c| c.datums.len()).collect();
        let want: Vec<usize> = (0..total.div_ceil(1000))
            .map(|k| (total - k * 1000).min(1000))
            .collect();
        let mut all: Vec<&(String, String)> = f.iter().flat_map(|c| &c.datums).collect();
        all.sort();
        all.dedup();
        sizes == want && all.len() == total && f.iter().all(|c| c.status == 200)
    };
    let end = Instant::now() + Duration::from_secs(600);
    let mut seen = Vec::new();
    let mut clean_count = 0;
    while Instant::now() < end {
        rig.push(&load);
        seen = flushes(&rig.proxy.calls_of("PutMetricData"));
        clean_count = match seen.len() {
            0..=2 => 0,
            n => seen[1..n - 1].iter().filter(|f| clean(f)).count(),
        };
        if clean_count >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let shape = |fs: &[Vec<CwCall>]| -> Vec<Vec<(usize, usize)>> {
        fs.iter()
            .map(|f| {
                f.iter()
                    .map(|c| (c.timestamps.len(), c.datums.len()))
                    .collect()
            })
            .collect()
    };
    assert!(
        clean_count >= 2,
        "no two clean flushes in 10 minutes; flushes (timestamps, datums per call): {:?}\n{}",
        shape(&seen),
        agg.log_text()
    );
    // In every flush, clean or not: no call over 1000 datums, gzipped, high resolution.
    for c in seen.iter().flatten() {
        assert!(c.datums.len() <= 1000, "flushes: {:?}", shape(&seen));
        assert!(c.gzip, "PutMetricData bodies are gzipped");
        assert!(c.high_resolution);
    }
    // Nothing lost: every evaluation after the first flush's and before the last one's reached
    // CloudWatch for every series.
    let edge: std::collections::BTreeSet<&String> = seen[0][0]
        .timestamps
        .iter()
        .chain(&seen[seen.len() - 1][0].timestamps)
        .collect();
    let mut by_time: std::collections::BTreeMap<&String, std::collections::BTreeSet<&String>> =
        Default::default();
    for (inst, ts) in seen.iter().flatten().flat_map(|c| &c.datums) {
        by_time.entry(ts).or_default().insert(inst);
    }
    for (ts, insts) in by_time.iter().filter(|(ts, _)| !edge.contains(*ts)) {
        assert_eq!(insts.len(), SERIES, "evaluation at {ts}: series lost");
    }
    println!(
        "PutMetricData (evaluations, datums) per call, by flush, of {SERIES} series: {:?}",
        shape(&seen)
    );
    // Read back: one instance's datums.
    let stats = vigil_e2e::aws::block_on(
        rig.aws
            .cw
            .get_metric_statistics()
            .namespace("VigilTest")
            .metric_name("AppLoad")
            .dimensions(
                aws_sdk_cloudwatch::types::Dimension::builder()
                    .name("instance")
                    .value("i-00003")
                    .build(),
            )
            .start_time(aws_sdk_cloudwatch::primitives::DateTime::from_secs(
                (std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock")
                    .as_secs()
                    - 600) as i64,
            ))
            .end_time(aws_sdk_cloudwatch::primitives::DateTime::from_secs(
                (std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock")
                    .as_secs()
                    + 600) as i64,
            ))
            .period(60)
            .statistics(aws_sdk_cloudwatch::types::Statistic::Average)
            .statistics(aws_sdk_cloudwatch::types::Statistic::SampleCount)
            .send(),
    )
    .expect("get metric statistics");
    let points = stats.datapoints();
    assert!(!points.is_empty(), "{stats:?}");
    let count: f64 = points.iter().filter_map(|p| p.sample_count()).sum();
    assert!(count >= 2.0, "{points:?}");
    for p in points {
        assert_eq!(p.average(), Some(3.0), "{points:?}");
    }
    let m = rig.metrics();
    assert!(
        m.contains("vigil_aggregator_cloudwatch_datums_total"),
        "{m}"
    );
    let cost = m
        .lines()
        .find(|l| l.starts_with("vigil_aggregator_cloudwatch_estimated_monthly_cost_dollars "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .expect("cost gauge");
    // 1,100 metrics at $0.30, plus the calls (a few a flush, one flush each 10 s: ~$5-10).
    assert!((330.0..350.0).contains(&cost), "{cost}");
}

#[test]
fn aws_failing_every_way_loses_no_notification_and_scaling_converges() {
    let rig = Rig::new("act-faults");
    rig.aws.create_group("web", 2, 6, 2);
    let (topic, queue) = rig.aws.topic_with_queue("faults");
    // The cooldown covers the time a slow AWS takes to carry a change out.
    rig.configure(
        &format!(
            "{}{ALERTS}",
            SCALING.replace(
                "scale_out_cooldown = \"2s\"",
                "scale_out_cooldown = \"30s\""
            )
        ),
        &format!("[[receiver]]\nname = \"oncall\"\nsns_topic_arn = \"{topic}\"\n"),
        "dry_run = false",
    );
    // AWS is down from the start: not even the first describe works.
    rig.proxy.set(Fault::Refuse);
    let agg = rig.start();
    let load: Vec<String> = (0..4).map(|k| format!("i-load{k}")).collect();
    // A fixed amount of work spread over the group: 1.8 instances' worth, so the group's CPU
    // is 0.9 at 2 instances and 0.45 (within target ± tolerance) at 4.
    let traffic = |rig: &Rig| {
        let desired = rig.aws.group("web").0.max(1);
        let mut all = series("app_cpu", "web", &load, 1.8 / f64::from(desired));
        all.extend(series("app_errors", "web", &["i-a".to_string()], 1.0));
        all
    };
    for f in [
        Fault::Refuse,
        Fault::Status(500),
        Fault::Status(503),
        Fault::Throttle,
    ] {
        rig.proxy.set(f);
        for _ in 0..4 {
            rig.push(&traffic(&rig));
            std::thread::sleep(Duration::from_secs(1));
        }
        let (code, _) = get(&format!("{}/-/healthy", rig.base)).expect("healthy");
        assert_eq!(code, 200, "under {f:?}");
    }
    assert_eq!(rig.aws.group("web").0, 2, "nothing got through the faults");
    assert!(rig.aws.drain(&queue).is_empty());
    // Slow answers: every call takes 5 s, and still gets through once.
    rig.proxy.set(Fault::Delay(Duration::from_secs(5)));
    let mut sns = Vec::new();
    let ok = push_until(
        &rig,
        Duration::from_secs(120),
        || traffic(&rig),
        || {
            sns.extend(rig.aws.drain(&queue));
            rig.aws.group("web").0 == 4 && !sns.is_empty()
        },
    );
    assert!(
        ok,
        "desired {} sns {sns:?}\n{}",
        rig.aws.group("web").0,
        agg.log_text()
    );
    rig.proxy.set(Fault::None);
    for _ in 0..6 {
        rig.push(&traffic(&rig));
        std::thread::sleep(Duration::from_secs(1));
    }
    sns.extend(rig.aws.drain(&queue));
    assert_eq!(sns.len(), 1, "exactly one notification: {sns:#?}");
    assert_eq!(rig.aws.group("web").0, 4, "converged: {}", agg.log_text());
    let m = rig.metrics();
    assert!(
        m.contains("vigil_aggregator_notifications_total{integration=\"sns\",result=\"failed\"}"),
        "{m}"
    );
    let statuses: std::collections::BTreeSet<u16> =
        rig.proxy.calls().iter().map(|c| c.status).collect();
    // Refused connections never reach the proxy; the aggregator saw them.
    assert!(
        [400, 500, 503, 200].iter().all(|s| statuses.contains(s)),
        "{statuses:?}"
    );
    assert!(agg.log_text().contains("Connection refused"));
}

#[test]
fn a_failing_receiver_delays_no_other_and_gets_its_message_once_it_answers() {
    let dir = tempdir("act-hooks");
    let (down, up) = (Hook::start(), Hook::start());
    down.set_status(503);
    let (agg, base) = start_without_aws(
        dir.path(),
        ALERTS,
        &format!(
            "[[receiver]]\nname = \"down\"\nslack_webhook_url = \"{}\"\n[[receiver]]\nname = \"up\"\nslack_webhook_url = \"{}\"\n",
            vigil_e2e::secret(down.url("/down")),
            vigil_e2e::secret(up.url("/up"))
        ),
    );
    let inst = vec!["i-a".to_string()];
    let refused = || down.attempts().iter().filter(|(_, st)| *st == 503).count();
    let end = Instant::now() + Duration::from_secs(60);
    // Both receivers are tried at once: the working one's message, and the failing one
    // tried (and refused) meanwhile.
    while (up.bodies().is_empty() || refused() == 0) && Instant::now() < end {
        assert_eq!(
            push_now(&base, &series("app_errors", "web", &inst, 1.0)),
            204
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(up.bodies().len(), 1, "{}", agg.log_text());
    assert!(refused() >= 1, "{:?}", down.attempts());
    assert!(down.bodies().is_empty());
    // The failing receiver recovers: its message arrives, once.
    down.set_status(200);
    assert!(
        down.wait_for(Duration::from_secs(20), |b| !b.is_empty()),
        "{}",
        agg.log_text()
    );
    // Nothing is left to send (the outbox is empty), so nothing more can arrive.
    vigil_e2e::wait_until(
        Duration::from_secs(30),
        "an empty outbox",
        || {
            let (_, m) = get(&format!("{base}/metrics")).expect("metrics");
            metric_value(&m, "vigil_aggregator_notification_outbox") == Some(0.0)
        },
        || agg.log_text(),
    );
    assert_eq!(down.bodies().len(), 1);
    assert_eq!(up.bodies().len(), 1);
    let (_, m) = get(&format!("{base}/metrics")).expect("metrics");
    assert!(
        m.contains("vigil_aggregator_notifications_total{integration=\"slack\",result=\"failed\"}"),
        "{m}"
    );
}

/// An aggregator with no AWS (webhook receivers only) on 1 s evaluation and short notification
/// timers; returns it and its base URL.
fn start_without_aws(dir: &std::path::Path, rules: &str, receivers: &str) -> (Child, String) {
    let port = free_port();
    let rules_path = dir.join("rules.toml");
    std::fs::write(&rules_path, rules).expect("rules");
    let cfg = dir.join("aggregator.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[storage]\nstate_dir = \"{}\"\n[rules]\nfiles = [\"{}\"]\nevaluation_interval = \"1s\"\n[notify]\ngroup_wait = \"1s\"\ngroup_interval = \"2s\"\n{receivers}",
            dir.join("state").display(),
            rules_path.display()
        ),
    )
    .expect("config");
    let agg = Child::spawn(
        "aggregator",
        Command::new(bin("vigil-aggregator"))
            .arg("--config")
            .arg(&cfg),
        dir,
    );
    let base = format!("http://127.0.0.1:{port}");
    assert!(
        wait_http(&format!("{base}/-/ready"), Duration::from_secs(30)),
        "{}",
        agg.log_text()
    );
    (agg, base)
}

#[test]
fn a_paused_group_changes_nothing_at_aws_and_says_what_it_would_do_until_resumed() {
    let rig = Rig::new("act-pause");
    rig.aws.create_group("web", 2, 6, 2);
    // A cooldown of an hour: had the held decision started it, nothing would follow the resume.
    // A record rule: its group's evaluations tell the test that time passed.
    let rules = format!(
        "[[group]]\nname = \"tick\"\n[[group.record]]\nrecord = \"tick\"\nexpr = \"vector(1)\"\n{}",
        SCALING.replace("scale_out_cooldown = \"2s\"", "scale_out_cooldown = \"1h\"")
    );
    rig.configure(&rules, "", "dry_run = false");
    let agg = rig.start();
    let base = rig.base.clone();
    let send = |path: &str, body: &str| {
        vigil_e2e::http::post(
            &format!("{base}{path}"),
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
        .expect("post")
    };
    // Pauses are taken once the aggregator has evaluated (before, 503: retry).
    rig.wait_first_evaluation(&agg);
    // Refused with the reason: no reason, no such group, an end in the past.
    let (code, text) = send("/api/v1/scaling/web/pause", r#"{"author": "ops"}"#);
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("reason is required"), "{text}");
    let (code, text) = send("/api/v1/scaling/nope/pause", r#"{"reason": "x"}"#);
    assert_eq!(code, 404, "{text}");
    let (code, text) = send(
        "/api/v1/scaling/web/pause",
        r#"{"reason": "x", "until": "2020-01-01T00:00:00Z"}"#,
    );
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("not in the future"), "{text}");
    // Paused for a deploy.
    let (code, text) = send(
        "/api/v1/scaling/web/pause",
        r#"{"reason": "deploy 42", "author": "ops", "until": "2h"}"#,
    );
    assert_eq!(code, 200, "{text}");
    let scaling = || {
        let (_, s) = get(&format!("{base}/api/v1/scaling")).expect("scaling");
        serde_json::from_str::<serde_json::Value>(&s).expect("json")
    };
    let s = scaling();
    assert_eq!(
        s["data"]["policies"][0]["paused"]["reason"], "deploy 42",
        "{s}"
    );
    assert_eq!(s["data"]["policies"][0]["paused"]["author"], "ops", "{s}");
    // A spike: the decision is said and held.
    let load: Vec<String> = (0..4).map(|k| format!("i-load{k}")).collect();
    let said = push_until(
        &rig,
        Duration::from_secs(20),
        || series("app_cpu", "web", &load, 0.9),
        || {
            // The log line comes first; the decision log and the policy view after it.
            agg.log_text()
                .contains("paused: would scale out from 2 to 4")
                && get(&format!("{base}/api/v1/decisions"))
                    .is_ok_and(|(_, d)| d.contains("paused: would scale out from 2 to 4"))
                && scaling()["data"]["policies"][0]["last_decisions"][0]["time"].is_string()
        },
    );
    assert!(said, "{}", agg.log_text());
    // Counted (before it is logged), for whoever alerts on Vigil itself.
    assert!(
        rig.metrics()
            .contains("vigil_aggregator_scaling_decisions_total{asg=\"web\",result=\"held\"}"),
        "{}",
        rig.metrics()
    );
    let (_, decisions) = get(&format!("{base}/api/v1/decisions")).expect("decisions");
    assert!(
        decisions.contains("paused: would scale out from 2 to 4"),
        "{decisions}"
    );
    let (_, page) = get(&format!("{base}/")).expect("page");
    assert!(page.contains("paused by ops since"), "{page}");
    // Held over several evaluations (judged by the rule evaluations' own clock: the held
    // decision's time is in the decision log).
    let held_at = scaling()["data"]["policies"][0]["last_decisions"][0]["time"]
        .as_str()
        .map(|t| vigil_config::duration::parse_timestamp_ms(t).expect("time"))
        .expect("a held decision");
    let mut seen = 0;
    let ok = push_until(
        &rig,
        Duration::from_secs(20),
        || series("app_cpu", "web", &load, 0.9),
        || {
            // Decisions keep being made: the log's held lines, or the next evaluations.
            let (_, r) = get(&format!("{base}/api/v1/rules")).expect("rules");
            let last = serde_json::from_str::<serde_json::Value>(&r)
                .ok()
                .and_then(|v| {
                    v["data"]["groups"][0]["lastEvaluation"]
                        .as_str()
                        .and_then(|t| vigil_config::duration::parse_timestamp_ms(t).ok())
                });
            seen = last.unwrap_or(seen);
            seen >= held_at + 4_000
        },
    );
    assert!(
        ok,
        "evaluations stopped: {seen} vs {held_at}\n{}",
        agg.log_text()
    );
    assert!(
        rig.proxy.calls_of("SetDesiredCapacity").is_empty(),
        "{:?}",
        rig.proxy.calls_of("SetDesiredCapacity")
    );
    assert_eq!(rig.aws.group("web").0, 2);
    // Resumed: the next decision goes through.
    let (code, text) = send("/api/v1/scaling/web/resume", "{}");
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("\"was_paused\":true"), "{text}");
    let ok = push_until(
        &rig,
        Duration::from_secs(20),
        || series("app_cpu", "web", &load, 0.9),
        || rig.aws.group("web").0 == 4,
    );
    assert!(ok, "{}", agg.log_text());
    // One decision, to 4 (a call the SDK retried after a slow answer may show twice: the same
    // capacity, at least once). The proxy records a call once moto has answered it, which can
    // be after the change shows in moto: wait for the record.
    vigil_e2e::wait_until(
        Duration::from_secs(30),
        "the SetDesiredCapacity recorded",
        || !rig.proxy.calls_of("SetDesiredCapacity").is_empty(),
        || agg.log_text(),
    );
    let calls = rig.proxy.calls_of("SetDesiredCapacity");
    assert!(
        !calls.is_empty() && calls.iter().all(|c| c.body.contains("DesiredCapacity=4")),
        "{calls:?}\n{}",
        agg.log_text()
    );
    assert!(scaling()["data"]["policies"][0]["paused"].is_null());
    let log = agg.log_text();
    let audited = |what: &str| {
        log.lines()
            .any(|l| l.contains("vigil::audit") && l.contains(what))
    };
    assert!(
        audited("deploy 42") && audited("resumed"),
        "audit lines: {log}"
    );
    // A pause with an end lifts itself at its group's first evaluation after it, and says so.
    let (code, text) = send(
        "/api/v1/scaling/web/pause",
        r#"{"reason": "short maintenance", "author": "ops", "until": "2s"}"#,
    );
    assert_eq!(code, 200, "{text}");
    vigil_e2e::wait_until(
        Duration::from_secs(30),
        "the pause's end in the audit log",
        || {
            agg.log_text().lines().any(|l| {
                l.contains("vigil::audit")
                    && l.contains("pause ended (its until passed)")
                    && l.contains("short maintenance")
            })
        },
        || agg.log_text(),
    );
    assert!(scaling()["data"]["policies"][0]["paused"].is_null());
}

/// Silences and pauses are admin writes (the admin token and nothing else), and both live
/// through a restart of a single node (its SQLite state): a paused replacement policy keeps
/// deciding, says what it would replace and marks nothing at AWS; the silenced alert stays
/// suppressed. Expiring the silence lets its notice out; resuming lets the replacement through.
#[test]
fn silences_and_pauses_need_the_admin_token_and_outlive_a_restart() {
    const ADMIN: &str = "adm-3e9c-pauses-and-silences";
    vigil_e2e::secret(ADMIN);
    let rig = Rig::new("act-admin-restart");
    rig.aws.create_group("app", 4, 4, 4);
    let hook = Hook::start();
    rig.configure(
        r#"
[[group]]
name = "disk"
[[group.alert]]
alert = "DiskFull"
expr = 'disk_used > 0.9'
labels = { severity = "page" }

[[replace]]
name = "app-unhealthy"
asg = "app"
expr = 'vigil_health_up{asg="app"} == 0'
for = "1s"
max_fraction = 0.5
"#,
        &format!(
            "[[receiver]]\nname = \"hook\"\nwebhook_url = \"{}\"\n",
            hook.url("/api/v2/alerts")
        ),
        "dry_run = false",
    );
    let token = rig.dir.path().join("admin");
    std::fs::write(&token, format!("{ADMIN}\n")).expect("token");
    let cfg = std::fs::read_to_string(&rig.cfg).expect("config").replacen(
        "[server]\n",
        &format!("[server]\nadmin_token_file = \"{}\"\n", token.display()),
        1,
    );
    std::fs::write(&rig.cfg, cfg).expect("config");
    let mut agg = rig.start();
    rig.wait_first_evaluation(&agg);
    let base = rig.base.clone();
    let bearer = format!("Bearer {ADMIN}");
    let send = |method: &str, path: &str, body: &str, token: Option<&str>| {
        let mut h = vec![("content-type", "application/json")];
        if let Some(t) = token {
            h.push(("authorization", t));
        }
        vigil_e2e::http::request(method, &format!("{base}{path}"), &h, body.as_bytes())
            .expect("request")
    };
    let silence = r#"{"matchers":[{"name":"alertname","value":"DiskFull","isRegex":false,"isEqual":true}],
        "startsAt":"2026-01-01T00:00:00Z","endsAt":"2099-01-01T00:00:00Z","createdBy":"ops","comment":"disk swap"}"#;
    let pause = r#"{"reason": "AMI rollout", "author": "ops"}"#;
    let writes = [
        ("POST", "/api/v2/silences", silence),
        ("POST", "/api/v1/replace/app-unhealthy/pause", pause),
    ];
    // Without the token, or with a wrong one: 401, and nothing is set.
    for (method, path, body) in writes {
        for t in [None, Some("Bearer nope")] {
            let (code, text) = send(method, path, body, t);
            assert_eq!(code, 401, "{method} {path} with {t:?}: {text}");
        }
    }
    let silences = || {
        let (_, s) = get(&format!("{base}/api/v2/silences")).expect("silences");
        serde_json::from_str::<serde_json::Value>(&s).expect("json")
    };
    let replace_paused = || {
        let (_, s) = get(&format!("{base}/api/v1/scaling")).expect("scaling");
        serde_json::from_str::<serde_json::Value>(&s).expect("json")["data"]["replace"][0]["paused"]
            .clone()
    };
    assert_eq!(silences(), serde_json::json!([]));
    assert!(replace_paused().is_null());
    // With it: set, and audited.
    let (code, text) = send(writes[0].0, writes[0].1, writes[0].2, Some(&bearer));
    assert_eq!(code, 200, "{text}");
    let id = serde_json::from_str::<serde_json::Value>(&text).expect("json")["silenceID"]
        .as_str()
        .expect("silenceID")
        .to_string();
    let (code, text) = send(writes[1].0, writes[1].1, writes[1].2, Some(&bearer));
    assert_eq!(code, 200, "{text}");
    assert_eq!(replace_paused()["reason"], "AMI rollout");

    // An instance fails its probe and the disk fills: the replacement is only said, the alert
    // only shown suppressed.
    let ids: Vec<String> = rig.aws.group("app").3.into_iter().map(|m| m.0).collect();
    let sick = ids[0].clone();
    let load = || {
        let mut s: Vec<(Labels, f64)> = ids
            .iter()
            .map(|i| {
                (
                    Labels::from_pairs([
                        ("__name__", "vigil_health_up"),
                        ("asg", "app"),
                        ("instance", i.as_str()),
                    ]),
                    if *i == sick { 0.0 } else { 1.0 },
                )
            })
            .collect();
        s.push((
            Labels::from_pairs([("__name__", "disk_used"), ("instance", "i-1")]),
            0.95,
        ));
        s
    };
    let would = format!("paused: would replace {sick}");
    let suppressed = || {
        get(&format!("{base}/api/v2/alerts"))
            .ok()
            .and_then(|(_, a)| serde_json::from_str::<serde_json::Value>(&a).ok())
            .and_then(|a| {
                a.as_array()
                    .and_then(|a| a.iter().find(|a| a["labels"]["alertname"] == "DiskFull"))
                    .cloned()
            })
            .is_some_and(|a| {
                a["status"]["state"] == "suppressed"
                    && a["status"]["silencedBy"] == serde_json::json!([id])
            })
    };
    let ok = push_until(&rig, Duration::from_secs(30), load, || {
        suppressed() && agg.log_text().contains(&would)
    });
    assert!(ok, "{}", agg.log_text());

    // Restarted: the silence and the pause are read back from the state.
    agg.signal("TERM");
    assert!(agg.wait_exit(Duration::from_secs(30)), "{}", agg.log_text());
    drop(agg);
    let agg = rig.start();
    let s = silences();
    assert_eq!(s[0]["id"], id.as_str(), "{s}");
    assert_eq!(s[0]["status"]["state"], "active", "{s}");
    assert_eq!(s[0]["comment"], "disk swap", "{s}");
    let p = replace_paused();
    assert_eq!(
        (p["reason"].as_str(), p["author"].as_str()),
        (Some("AMI rollout"), Some("ops"))
    );
    let ok = push_until(&rig, Duration::from_secs(30), load, || {
        suppressed() && agg.log_text().contains(&would)
    });
    assert!(ok, "after the restart:\n{}", agg.log_text());
    assert!(
        rig.proxy.calls_of("SetInstanceHealth").is_empty(),
        "{:?}",
        rig.proxy.calls_of("SetInstanceHealth")
    );
    assert!(hook.bodies().is_empty(), "{:?}", hook.bodies());

    // Expiring needs the token too; then the notice goes out (the alert still fires).
    let expire = format!("/api/v2/silence/{id}");
    assert_eq!(send("DELETE", &expire, "", None).0, 401);
    let (code, text) = send("DELETE", &expire, "", Some(&bearer));
    assert_eq!(code, 200, "{text}");
    let ok = push_until(&rig, Duration::from_secs(30), load, || {
        hook.bodies()
            .iter()
            .any(|(_, b)| b.to_string().contains("DiskFull"))
    });
    assert!(ok, "{:?}\n{}", hook.bodies(), agg.log_text());
    // Resuming needs the token; then the replacement goes through.
    let resume = "/api/v1/replace/app-unhealthy/resume";
    assert_eq!(send("POST", resume, "{}", None).0, 401);
    let (code, text) = send("POST", resume, "{}", Some(&bearer));
    assert_eq!(code, 200, "{text}");
    let ok = push_until(&rig, Duration::from_secs(30), load, || {
        !rig.proxy.calls_of("SetInstanceHealth").is_empty()
    });
    assert!(ok, "{}", agg.log_text());
    let calls = rig.proxy.calls_of("SetInstanceHealth");
    assert!(calls.iter().all(|c| c.body.contains(&sick)), "{calls:?}");
    let log = agg.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("vigil::audit") && l.contains("admin_token_file")),
        "{log}"
    );
}

/// A `[[schedule]]` runs at its time (moto stores scheduled actions but never runs them; Vigil
/// runs its own): the group's MinSize/MaxSize at AWS with UpdateAutoScalingGroup, then a
/// capacity inside them. The aggregator's clock (libfaketime on it alone, never the host's)
/// starts 45 s before a minute boundary (a step once running would be slewed, not followed),
/// and the schedule names that minute in a time zone half an hour off UTC. The test checks that
/// the first evaluation came before the run (a schedule is never applied retroactively).
#[test]
fn a_schedule_sets_the_groups_bounds_at_aws_at_its_time() {
    let lib = vigil_e2e::campaign::clock::LIBFAKETIME;
    assert!(
        std::path::Path::new(lib).is_file(),
        "{lib} is missing: scripts/test installs Debian's faketime"
    );
    let rig = Rig::new("act-schedule");
    rig.aws.create_group("web", 2, 6, 2);
    let real = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64
    };
    let boundary = (real() / 60 + 2) * 60;
    // Asia/Kolkata is UTC+5:30 all year.
    let local = boundary + 5 * 3600 + 1800;
    let (minute, hour) = ((local / 60) % 60, (local / 3600) % 24);
    let rules = format!(
        "[[group]]\nname = \"tick\"\n[[group.record]]\nrecord = \"tick\"\nexpr = \"vector(1)\"\n{SCALING}\n[[schedule]]\nname = \"office-hours\"\nasg = \"web\"\ncron = \"{minute} {hour} * * *\"\ntimezone = \"Asia/Kolkata\"\nmin = 4\nmax = 8\n"
    );
    rig.configure(&rules, "", "dry_run = false");
    let mut cmd = Command::new(bin("vigil-aggregator"));
    cmd.arg("--config")
        .arg(&rig.cfg)
        .envs(ENV)
        .env("LD_PRELOAD", lib)
        .env("FAKETIME", format!("+{}", boundary - 45 - real()))
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    let agg = Child::spawn("aggregator", &mut cmd, rig.dir.path());
    assert!(
        wait_http(&format!("{}/-/ready", rig.base), Duration::from_secs(30)),
        "aggregator did not start:\n{}",
        agg.log_text()
    );
    let scaling = || {
        let (_, s) = get(&format!("{}/api/v1/scaling", rig.base)).expect("scaling");
        serde_json::from_str::<serde_json::Value>(&s).expect("json")
    };
    let next_run = vigil_config::duration::format_timestamp_ms(boundary * 1000);
    rig.wait_first_evaluation(&agg);
    let s = scaling();
    assert_eq!(s["data"]["schedules"][0]["next_run"], next_run, "{s}");
    assert_eq!(s["data"]["schedules"][0]["in_force"], false, "{s}");
    assert!(rig.proxy.calls_of("UpdateAutoScalingGroup").is_empty());
    vigil_e2e::wait_until(
        Duration::from_secs(60),
        "MinSize 4 at AWS",
        || rig.aws.group("web").1 == 4,
        || agg.log_text(),
    );
    // Once (a call the SDK retried after a slow answer may show twice, the same). The proxy
    // records a call once moto has answered it, which can be after the change shows in moto.
    vigil_e2e::wait_until(
        Duration::from_secs(30),
        "the UpdateAutoScalingGroup recorded",
        || !rig.proxy.calls_of("UpdateAutoScalingGroup").is_empty(),
        || agg.log_text(),
    );
    let calls = rig.proxy.calls_of("UpdateAutoScalingGroup");
    assert!(
        !calls.is_empty()
            && calls
                .iter()
                .all(|c| c.body.contains("MinSize=4") && c.body.contains("MaxSize=8")),
        "{calls:?}"
    );
    assert_eq!(rig.aws.group("web").2, 8);
    assert!(
        rig.metrics()
            .contains("vigil_aggregator_schedule_runs_total{asg=\"web\"} 1"),
        "{}",
        rig.metrics()
    );
    vigil_e2e::wait_until(
        Duration::from_secs(30),
        "the capacity inside the schedule's bounds",
        || rig.aws.group("web").0 == 4,
        || agg.log_text(),
    );
    // The decision says which schedule ran, and when; AWS moving the desired capacity into the
    // new bounds is not taken for a change made outside Vigil.
    let log = agg.log_text();
    assert!(!log.contains("changed outside Vigil"), "{log}");
    assert!(
        log.contains(&format!(
            "schedule office-hours ran at {next_run}: min 4, max 8"
        )),
        "{log}"
    );
    let s = scaling();
    let sc = &s["data"]["schedules"][0];
    assert_eq!(sc["in_force"], true, "{s}");
    assert_eq!(
        sc["next_run"],
        vigil_config::duration::format_timestamp_ms((boundary + 86_400) * 1000),
        "{s}"
    );
}

#[test]
fn scale_in_terminates_the_lowest_ranked_instance_of_each_zone() {
    let rig = Rig::new("act-victim");
    // Three instances in us-east-1a, then two in us-east-1b.
    rig.aws.create_group("web", 1, 6, 3);
    rig.aws.grow_into("web", "us-east-1b", 5);
    let placement = rig.aws.placement("web");
    let zone = |z: &str| in_zone(&placement, z);
    let (a, b) = (zone("us-east-1a"), zone("us-east-1b"));
    assert_eq!((a.len(), b.len()), (3, 2), "{placement:?}");
    // In-flight requests: the lowest of a is protected from scale-in, so a gives its second
    // lowest; then the zones are even and b's lowest (the lowest of all) goes.
    rig.aws.protect_from_scale_in("web", &a[0]);
    let in_flight = [
        (&a[0], 1.0),
        (&a[1], 4.0),
        (&a[2], 9.0),
        (&b[0], 0.0),
        (&b[1], 7.0),
    ];
    let rules = r#"
[[scaling]]
name = "web-load"
asg = "web"
min = 3
max = 6
expr = 'avg(app_load{asg="web"})'
target = 0.5
scale_in_cooldown = "1s"
scale_in_stabilization = "0s"
scale_in_victim = 'sum by (instance) (in_flight{asg="web"})'
"#;
    rig.configure(rules, "", "dry_run = false");
    let agg = rig.start();
    let push = || {
        // The ranking before the load, in case a write is seen in part.
        let mut s = Vec::new();
        for (i, v) in in_flight {
            s.extend(series("in_flight", "web", std::slice::from_ref(i), v));
        }
        s.extend(series("app_load", "web", &["i-probe".to_string()], 0.1));
        s
    };
    // Far below target: the policy wants its min of 3, two fewer.
    let ok = push_until(&rig, Duration::from_secs(60), push, || {
        rig.proxy
            .calls_of("TerminateInstanceInAutoScalingGroup")
            .len()
            >= 2
    });
    assert!(ok, "no two terminations:\n{}", agg.log_text());
    let calls = rig.proxy.calls_of("TerminateInstanceInAutoScalingGroup");
    let mut victims: Vec<&str> = [&a[1], &b[0]].into_iter().map(String::as_str).collect();
    victims.sort();
    let mut terminated: Vec<&str> = victims
        .iter()
        .copied()
        .filter(|v| {
            calls
                .iter()
                .any(|c| c.body.contains(&format!("InstanceId={v}")))
        })
        .collect();
    terminated.sort();
    assert_eq!(terminated, victims, "{calls:?}");
    // And no other (a call the SDK retried may show twice, with the same instance).
    assert!(
        calls.iter().all(|c| victims
            .iter()
            .any(|v| c.body.contains(&format!("InstanceId={v}&"))
                || c.body.ends_with(&format!("InstanceId={v}")))),
        "{calls:?}"
    );
    assert!(
        calls
            .iter()
            .all(|c| c.body.contains("ShouldDecrementDesiredCapacity=true")),
        "{calls:?}"
    );
    assert!(rig.proxy.calls_of("SetDesiredCapacity").is_empty());
    // AWS lowered the capacity itself; the zones are balanced; the protected one stays.
    let (desired, ..) = rig.aws.group("web");
    assert_eq!(desired, 3);
    let left = rig.aws.placement("web");
    assert_eq!(
        (
            in_zone(&left, "us-east-1a").len(),
            in_zone(&left, "us-east-1b").len()
        ),
        (2, 1),
        "{left:?}"
    );
    assert!(left.iter().any(|(i, _, p)| i == &a[0] && *p), "{left:?}");
    // The decision names its victims and why.
    let (_, s) = get(&format!("{}/api/v1/scaling", rig.base)).expect("scaling");
    let v: serde_json::Value = serde_json::from_str(&s).expect("json");
    let d = &v["data"]["policies"][0]["last_decisions"][0];
    assert_eq!(
        (d["from"].as_u64(), d["to"].as_u64()),
        (Some(5), Some(3)),
        "{s}"
    );
    assert_eq!(d["victims"][0]["instance"], a[1].as_str(), "{s}");
    assert!(
        d["victims"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("lowest in us-east-1a (3 instances in service there)")),
        "{s}"
    );
    assert_eq!(d["victims"][1]["instance"], b[0].as_str(), "{s}");
    let log = agg.log_text();
    assert!(!log.contains("changed outside Vigil"), "{log}");
}

#[test]
fn an_impaired_zone_is_left_alone_paged_by_name_and_a_lone_failure_elsewhere_replaced() {
    let rig = Rig::new("act-zones");
    // Three instances in each of three zones (moto launches a batch in one of the group's
    // zones: the group is moved from zone to zone as it grows).
    rig.aws.create_group("web", 3, 9, 3);
    rig.aws.grow_into("web", "us-east-1b", 6);
    rig.aws.grow_into("web", "us-east-1c", 9);
    let placement = rig.aws.placement("web");
    let zone = |z: &str| in_zone(&placement, z);
    let (a, b, c) = (zone("us-east-1a"), zone("us-east-1b"), zone("us-east-1c"));
    assert_eq!((a.len(), b.len(), c.len()), (3, 3, 3), "{placement:?}");
    let hook = Hook::start();
    rig.configure(
        r#"
[[replace]]
name = "web-unhealthy"
asg = "web"
expr = 'vigil_health_up{asg="web"} == 0'
for = "2s"
max_fraction = 0.34
window = "10m"
fail_open_fraction = 0.5
az_aware = true
"#,
        &format!(
            "[[receiver]]\nname = \"oncall\"\nslack_webhook_url = \"{}\"\n",
            vigil_e2e::secret(hook.url("/slack"))
        ),
        "dry_run = false",
    );
    let agg = rig.start();
    // Two of us-east-1a's three fail (an impaired zone), and one of us-east-1b's: 3 of 9 is
    // under the group's fail-open.
    let sick: Vec<&String> = vec![&a[0], &a[1], &b[0]];
    let health = || -> Vec<(Labels, f64)> {
        placement
            .iter()
            .map(|(i, _, _)| {
                (
                    Labels::from_pairs([
                        ("__name__", "vigil_health_up"),
                        ("asg", "web"),
                        ("instance", i.as_str()),
                    ]),
                    if sick.contains(&i) { 0.0 } else { 1.0 },
                )
            })
            .collect()
    };
    let unhealthy = |rig: &Rig| -> Vec<String> {
        rig.aws
            .group("web")
            .3
            .into_iter()
            .filter(|m| m.2 == "Unhealthy")
            .map(|m| m.0)
            .collect()
    };
    let paged = || {
        hook.bodies().iter().any(|(_, b)| {
            let t = b.to_string();
            t.contains("VigilReplacementFailOpen") && t.contains("us-east-1a")
        })
    };
    let ok = push_until(&rig, Duration::from_secs(60), health, || {
        !unhealthy(&rig).is_empty() && paged()
    });
    assert!(
        ok,
        "{:?}\n{:?}\n{}",
        get(&format!("{}/api/v1/decisions", rig.base)),
        hook.bodies(),
        agg.log_text()
    );
    // More evaluations: still only us-east-1b's instance, never us-east-1a's.
    for _ in 0..4 {
        rig.push(&health());
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(unhealthy(&rig), [b[0].clone()]);
    assert_eq!(rig.proxy.calls_of("SetInstanceHealth").len(), 1);
    let page = hook
        .bodies()
        .iter()
        .map(|(_, b)| b.to_string())
        .find(|t| t.contains("VigilReplacementFailOpen"))
        .unwrap_or_default();
    assert!(
        page.contains("2 of 3 instances of web in us-east-1a unhealthy"),
        "{page}"
    );
}
