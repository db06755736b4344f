//! The operator console in Debian's Chromium, headless: what the page shows of a group moto
//! scales (its capacity charted over the window, the fleet by AZ), and the silence and pause
//! switches clicked and typed into as an operator would, with and without the admin token.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use vigil_e2e::aws::{Aws, Moto, ENV};
use vigil_e2e::browser::{self, Browser};
use vigil_e2e::http::{get, push_now};
use vigil_e2e::{bin, free_port, tempdir, wait_http, wait_until, Child};
use vigil_wire::Labels;

const RULES: &str = r#"
[[group]]
name = "app"
[[group.alert]]
alert = "HighCpu"
expr = 'avg by (asg) (app_cpu) > 0.8'
labels = { severity = "page" }
annotations = { summary = "CPU high on {{ $labels.asg }} <img src=x onerror=\"window.pwned=1\"><script>window.pwned=2</script>" }

[[scaling]]
name = "web-cpu"
asg = "web"
min = 2
max = 6
expr = 'avg(app_cpu{asg="web"})'
target = 0.5
scale_out_cooldown = "2s"
scale_in_cooldown = "1s"
scale_in_stabilization = "6s"

[[replace]]
name = "web-unhealthy"
asg = "web"
expr = 'vigil_health_up{asg="web"} == 0'
for = "5s"
"#;

/// Pushes `series` every half second until dropped (a failing test stops it too).
struct Pusher {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pusher {
    fn start(base: String, series: Vec<(Labels, f64)>) -> Pusher {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                push_now(&base, &series);
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        Pusher {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Pusher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Clicks `selector` and waits for the action dialog it opens.
fn open_dialog(b: &mut Browser, selector: &str) {
    b.click(selector);
    b.wait_for(
        "document.querySelector('#act').open",
        "the dialog",
        Duration::from_secs(10),
    );
}

fn json(url: &str) -> Value {
    let (code, body) = get(url).expect("get");
    assert_eq!(code, 200, "{url}: {body}");
    serde_json::from_str(&body).expect("json")
}

#[test]
fn the_console_charts_a_group_and_its_switches_work_in_chromium() {
    if !browser::available() {
        return;
    }
    const ADMIN: &str = "adm-51d0-console-token";
    vigil_e2e::secret(ADMIN);
    let dir = tempdir("console");
    let d = dir.path();
    let moto = Moto::start(d);
    let aws = Aws::new(&moto.url());
    aws.create_group("web", 2, 6, 2);
    aws.grow_into("web", "us-east-1b", 3);
    std::fs::write(d.join("rules.toml"), RULES).expect("rules");
    std::fs::write(d.join("admin"), format!("{ADMIN}\n")).expect("token");
    let port = free_port();
    let cfg = d.join("aggregator.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[server]
listen = "127.0.0.1:{port}"
admin_token_file = "{admin}"

[storage]
retention = "1h"
stale_after = "3s"
state_dir = "{state}"

[rules]
files = ["{rules}"]
evaluation_interval = "1s"

[aws]
region = "us-east-1"
endpoint_url = "{moto}"
dry_run = false
"#,
            admin = d.join("admin").display(),
            state = d.join("state").display(),
            rules = d.join("rules.toml").display(),
            moto = moto.url(),
        ),
    )
    .expect("config");
    let agg = Child::spawn(
        "aggregator",
        Command::new(bin("vigil-aggregator"))
            .arg("--config")
            .arg(&cfg)
            .envs(ENV),
        d,
    );
    let base = format!("http://127.0.0.1:{port}");
    assert!(
        wait_http(&format!("{base}/-/ready"), Duration::from_secs(30)),
        "{}",
        agg.log_text()
    );
    // Load on the group's instances, each pushing with its AZ: it scales out to its max.
    let load = |aws: &Aws| -> Vec<(Labels, f64)> {
        aws.placement("web")
            .iter()
            .flat_map(|(i, az, _)| {
                let l = |name: &str| {
                    Labels::from_pairs([
                        ("__name__", name),
                        ("asg", "web"),
                        ("instance", i.as_str()),
                        ("az", az.as_str()),
                    ])
                };
                [(l("app_cpu"), 0.9), (l("vigil_health_up"), 1.0)]
            })
            .collect()
    };
    wait_until(
        Duration::from_secs(60),
        "the scale-out at moto and the alert",
        || {
            push_now(&base, &load(&aws));
            std::thread::sleep(Duration::from_millis(500));
            aws.group("web").0 == 6
                && json(&format!("{base}/api/v1/alerts"))["data"]["alerts"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|a| a["state"] == "firing"))
        },
        || agg.log_text(),
    );
    // The decisions' series the charts read.
    let q = |expr: &str| vigil_e2e::http::prom_query(&base, expr);
    wait_until(
        Duration::from_secs(30),
        "the capacity series",
        || {
            push_now(&base, &load(&aws));
            q(r#"vigil_scaling_desired_capacity{asg="web"}"#)
                .first()
                .is_some_and(|(_, v)| *v == 6.0)
                && q(r#"vigil_scaling_in_service_instances{asg="web"}"#).len() == 1
        },
        || agg.log_text(),
    );
    let target = q(r#"vigil_scaling_policy_target{asg="web", policy="web-cpu"}"#);
    assert_eq!(target.first().map(|(_, v)| *v), Some(0.5), "{target:?}");
    // The agents go on pushing while the operator works in the console.
    let _pusher = Pusher::start(base.clone(), load(&aws));

    let mut b = Browser::start(d);
    b.goto(&format!("{base}/"));
    // Charts: capacity (desired, in service, recommended) and the policy's value and target.
    b.wait_for(
        r#"(() => {
            const f = document.querySelector('figure.chart[data-asg="web"]');
            if (!f) return false;
            const n = (s) => { const l = f.querySelector(`polyline[data-series="${s}"]`); return l ? l.getAttribute('points').split(' ').length : 0; };
            return n('desired') >= 2 && n('in service') >= 1 && n('recommended by web-cpu') >= 1
                && n('value') >= 2 && n('target') >= 1;
        })()"#,
        "the group's charts",
        Duration::from_secs(60),
    );
    // Markup in an annotation is shown as text, never run.
    b.wait_for(
        "document.querySelector('#live').innerText.includes('CPU high on web <img src=x')",
        "the alert's summary",
        Duration::from_secs(30),
    );
    assert_eq!(b.eval("window.pwned === undefined"), Value::Bool(true));
    // The fleet by AZ: every instance moto runs, under its zone.
    for (i, az, _) in aws.placement("web") {
        let row = b.eval(&format!(
            "Array.from(document.querySelectorAll('table.fleet[data-asg=\"web\"] tr')).map(r => r.innerText).find(t => t.includes('{i}')) || ''"
        ));
        assert!(
            row.as_str()
                .is_some_and(|r| r.contains(&az) && r.contains("InService")),
            "{i} in {az}: {row}"
        );
    }

    let scaling = || json(&format!("{base}/api/v1/scaling"))["data"].clone();
    let dialog_says = |b: &mut Browser, what: &str| {
        b.wait_for(
            &format!("document.querySelector('#act-status').innerText.includes({what:?})"),
            what,
            Duration::from_secs(30),
        )
    };
    // Another site's page cannot pause the group, token or not (a form posted from it).
    let bearer = format!("Bearer {ADMIN}");
    for from in [
        ("origin", "https://elsewhere.example"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let (code, text) = vigil_e2e::http::request(
            "POST",
            &format!("{base}/api/v1/scaling/web/pause"),
            &[
                from,
                ("authorization", bearer.as_str()),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            b"reason=forged",
        )
        .expect("post");
        assert_eq!(code, 403, "{from:?}: {text}");
    }
    assert!(scaling()["policies"][0]["paused"].is_null());
    // Pausing without the token is refused, and said in the dialog.
    open_dialog(
        &mut b,
        "button[data-act=pause][data-kind=scaling][data-name=web]",
    );
    b.type_into("#act input[name=reason]", "deploy 7");
    b.type_into("#act input[name=author]", "ops");
    b.click("#act-go");
    dialog_says(&mut b, "401");
    assert!(scaling()["policies"][0]["paused"].is_null());
    b.click("#act-cancel");
    b.wait_for(
        "!document.querySelector('#act').open",
        "the dialog to close",
        Duration::from_secs(10),
    );
    // With the token typed in.
    b.type_into("#token", ADMIN);
    open_dialog(
        &mut b,
        "button[data-act=pause][data-kind=scaling][data-name=web]",
    );
    b.type_into("#act input[name=reason]", "deploy 7");
    b.type_into("#act input[name=author]", "ops");
    b.click("#act-go");
    wait_until(
        Duration::from_secs(30),
        "the pause",
        || scaling()["policies"][0]["paused"]["reason"] == "deploy 7",
        || agg.log_text(),
    );
    b.wait_for(
        "document.querySelector('#live').innerText.includes('paused by ops')",
        "the page to show the pause",
        Duration::from_secs(30),
    );

    // A silence from the firing alert's row: its labels are the matchers.
    open_dialog(&mut b, "button[data-act=silence]");
    b.type_into("#act input[name=comment]", "load test");
    b.click("#act-go");
    let silences = || json(&format!("{base}/api/v2/silences"));
    wait_until(
        Duration::from_secs(30),
        "the silence",
        || {
            silences().as_array().is_some_and(|s| {
                s.iter().any(|s| {
                    s["status"]["state"] == "active"
                        && s["createdBy"] == "ops"
                        && s["matchers"].as_array().is_some_and(|m| {
                            m.iter()
                                .any(|m| m["name"] == "alertname" && m["value"] == "HighCpu")
                        })
                })
            })
        },
        || agg.log_text(),
    );
    let id = silences()[0]["id"].as_str().expect("id").to_string();
    b.wait_for(
        &format!("document.querySelector('#live').innerText.includes('{id}')"),
        "the silence on the page",
        Duration::from_secs(30),
    );
    // Expired, resumed, and the replacement policy paused: each one click.
    b.click("button[data-act=expire]");
    wait_until(
        Duration::from_secs(30),
        "the silence expired",
        || silences()[0]["status"]["state"] == "expired",
        || agg.log_text(),
    );
    b.wait_for(
        &format!("!document.querySelector('#live').innerText.includes('{id}')"),
        "the page without the silence",
        Duration::from_secs(30),
    );
    b.wait_for(
        "!!document.querySelector('button[data-act=resume][data-kind=scaling]')",
        "the resume switch",
        Duration::from_secs(30),
    );
    b.click("button[data-act=resume][data-kind=scaling]");
    wait_until(
        Duration::from_secs(30),
        "the resume",
        || scaling()["policies"][0]["paused"].is_null(),
        || agg.log_text(),
    );
    b.wait_for(
        "!!document.querySelector('button[data-act=pause][data-kind=replace]')",
        "the replacement's switch",
        Duration::from_secs(30),
    );
    open_dialog(
        &mut b,
        "button[data-act=pause][data-kind=replace][data-name=web-unhealthy]",
    );
    b.type_into("#act input[name=reason]", "AMI rollout");
    b.click("#act-go");
    wait_until(
        Duration::from_secs(30),
        "the replacement paused",
        || scaling()["replace"][0]["paused"]["reason"] == "AMI rollout",
        || agg.log_text(),
    );
    // Everything came from the aggregator; nothing failed or was refused in the page.
    let foreign = b.eval(
        "performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith(location.origin))",
    );
    assert_eq!(foreign, serde_json::json!([]));
    // The one refusal the test asked for (the 401) is the only error the page saw.
    let unexpected: Vec<&String> = b.errors.iter().filter(|e| !e.contains("401")).collect();
    assert!(unexpected.is_empty(), "{:?}\n{}", b.errors, b.log_text());
    // The audit log names the token's key for each write.
    let log = agg.log_text();
    assert!(
        log.lines()
            .filter(|l| l.contains("vigil::audit") && l.contains("admin_token_file"))
            .count()
            >= 5,
        "{log}"
    );
}
