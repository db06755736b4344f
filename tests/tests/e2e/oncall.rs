//! On-call controls against the real tools: Debian's `amtool` sets, lists and expires silences
//! on the aggregator; a silenced alert's notice is held back from a webhook receiver until the
//! silence ends.

use std::process::Command;
use std::time::Duration;

use vigil_e2e::hook::Hook;
use vigil_e2e::http::{get, post, push_now};
use vigil_e2e::{bin, free_port, tempdir, wait_http, wait_until, Child};
use vigil_wire::Labels;

fn amtool_missing() -> bool {
    if Command::new("amtool").arg("--version").output().is_ok() {
        return false;
    }
    assert!(
        std::env::var_os("VIGIL_REQUIRE_PEERS").is_none(),
        "amtool is required but missing (apt-get install prometheus-alertmanager)"
    );
    eprintln!("amtool not installed: skipping");
    true
}

fn json(url: &str) -> serde_json::Value {
    let (code, body) = get(url).expect("GET");
    assert_eq!(code, 200, "{url}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

/// Starts an aggregator on `cfg` listening on `port`; returns it with its base URL once ready.
fn start(cfg: &std::path::Path, port: u16, dir: &std::path::Path) -> (Child, String) {
    let agg = Child::spawn(
        "aggregator",
        Command::new(bin("vigil-aggregator"))
            .arg("--config")
            .arg(cfg),
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

/// When the first rule group was last evaluated (ms; 0 before the first evaluation).
fn last_evaluation(base: &str) -> i64 {
    let r = json(&format!("{base}/api/v1/rules"));
    r["data"]["groups"][0]["lastEvaluation"]
        .as_str()
        .and_then(|t| vigil_config::duration::parse_timestamp_ms(t).ok())
        .unwrap_or(0)
}

#[test]
fn amtool_silences_an_alert_and_its_notice_goes_out_when_the_silence_is_expired() {
    if amtool_missing() {
        return;
    }
    let dir = tempdir("oncall-silence");
    let d = dir.path();
    let hook = Hook::start();
    let rules = d.join("rules.toml");
    std::fs::write(
        &rules,
        "[[group]]\nname = \"disk\"\n[[group.alert]]\nalert = \"DiskFull\"\nexpr = 'disk_used > 0.9'\nlabels = { severity = \"page\" }\n",
    )
    .expect("rules");
    let port = free_port();
    let cfg = d.join("aggregator.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[storage]\nstale_after = \"5s\"\nstate_dir = \"{}\"\n[rules]\nfiles = [\"{}\"]\nevaluation_interval = \"1s\"\n[notify]\ngroup_wait = \"1s\"\ngroup_interval = \"2s\"\n[[receiver]]\nname = \"hook\"\nwebhook_url = \"{}\"\n",
            d.join("state").display(),
            rules.display(),
            hook.url("/api/v2/alerts"),
        ),
    )
    .expect("config");
    let (agg, base) = start(&cfg, port, d);
    let url = format!("--alertmanager.url={base}");
    let amtool = |args: &[&str]| {
        let out = Command::new("amtool")
            .arg(&url)
            .args(args)
            .output()
            .expect("amtool");
        // Its standard output; the error output has a warning that the versions differ.
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "amtool {args:?}: {text}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            agg.log_text()
        );
        text
    };

    // Set before the alert fires.
    let id = amtool(&[
        "silence",
        "add",
        "alertname=DiskFull",
        "instance=~\"i-[0-9]+\"",
        "--comment=disk swap on i-1",
        "--author=ops",
        "--duration=1h",
    ])
    .trim()
    .to_string();
    assert_eq!(id.len(), 36, "{id}");
    let listed = amtool(&["silence", "query"]);
    assert!(
        listed.contains(&id) && listed.contains("disk swap on i-1"),
        "{listed}"
    );
    assert_eq!(amtool(&["silence", "query", "-q"]).trim(), id);
    let one = json(&format!("{base}/api/v2/silence/{id}"));
    assert_eq!(one["status"]["state"], "active", "{one}");
    assert_eq!(one["createdBy"], "ops", "{one}");
    let (_, page) = get(&format!("{base}/")).expect("status page");
    assert!(
        page.contains(&id) && page.contains("disk swap on i-1"),
        "{page}"
    );

    // Bad silences: 400 with the reason, and the aggregator keeps serving.
    for (body, why) in [
        (&b"{not json"[..], "not JSON"),
        (br#"{"matchers":[],"startsAt":"2026-01-01T00:00:00Z","endsAt":"2099-01-01T00:00:00Z"}"#, "at least one matcher"),
        (br#"{"matchers":[{"name":"a","value":".*","isRegex":true}],"startsAt":"2026-01-01T00:00:00Z","endsAt":"2099-01-01T00:00:00Z"}"#, "empty string"),
    ] {
        let (code, text) = post(
            &format!("{base}/api/v2/silences"),
            &[("content-type", "application/json")],
            body,
        )
        .expect("post");
        assert_eq!(code, 400, "{text}");
        assert!(text.contains(why), "{text}");
    }
    let (code, _) = get(&format!("{base}/api/v2/silence/no-such-id")).expect("get");
    assert_eq!(code, 404);

    // The alert fires, silenced: shown suppressed, no notice.
    let disk = |v: f64| {
        vec![(
            Labels::from_pairs([("__name__", "disk_used"), ("instance", "i-1")]),
            v,
        )]
    };
    let alert = || {
        json(&format!("{base}/api/v2/alerts"))
            .as_array()
            .and_then(|a| a.first().cloned())
    };
    wait_until(
        Duration::from_secs(30),
        "the alert, suppressed",
        || {
            push_now(&base, &disk(0.95));
            alert().is_some_and(|a| a["status"]["state"] == "suppressed")
        },
        || agg.log_text(),
    );
    let a = alert().expect("alert");
    assert_eq!(a["status"]["silencedBy"], serde_json::json!([id]), "{a}");
    assert_eq!(a["receivers"][0]["name"], "hook", "{a}");
    // Hidden from amtool's default query (active alerts), shown with --silenced.
    assert!(!amtool(&["alert", "query"]).contains("DiskFull"));
    assert!(amtool(&["alert", "query", "--silenced"]).contains("DiskFull"));
    // Held back over several group intervals: judged by the rule group's evaluations, at least
    // group_wait + 2 group_intervals after the alert began.
    let started =
        vigil_config::duration::parse_timestamp_ms(a["startsAt"].as_str().expect("startsAt"))
            .expect("RFC 3339");
    wait_until(
        Duration::from_secs(30),
        "five seconds of evaluations",
        || {
            push_now(&base, &disk(0.95));
            last_evaluation(&base) >= started + 5_000
        },
        || agg.log_text(),
    );
    assert!(hook.bodies().is_empty(), "{:?}", hook.bodies());

    // Expired: the notice goes out.
    amtool(&["silence", "expire", &id]);
    let one = json(&format!("{base}/api/v2/silence/{id}"));
    assert_eq!(one["status"]["state"], "expired", "{one}");
    assert!(amtool(&["silence", "query", "-q"]).trim().is_empty());
    assert!(amtool(&["silence", "query", "--expired"]).contains(&id));
    wait_until(
        Duration::from_secs(30),
        "the notice",
        || {
            push_now(&base, &disk(0.95));
            !hook.bodies().is_empty()
        },
        || agg.log_text(),
    );
    let (path, body) = &hook.bodies()[0];
    assert_eq!(path, "/api/v2/alerts");
    assert_eq!(body[0]["labels"]["alertname"], "DiskFull", "{body}");
    assert!(amtool(&["alert", "query"]).contains("DiskFull"));
    assert!(
        agg.log_text().contains("silence set") && agg.log_text().contains("silence expired"),
        "audit lines: {}",
        agg.log_text()
    );
}

/// amtool against `base` (standard output; the run must succeed, else the logs are shown).
fn amtool_at(base: &str, args: &[&str], logs: &[&Child]) -> String {
    let out = Command::new("amtool")
        .arg(format!("--alertmanager.url={base}"))
        .args(args)
        .output()
        .expect("amtool");
    assert!(
        out.status.success(),
        "amtool {args:?}: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        logs.iter()
            .map(|c| c.log_text())
            .collect::<Vec<_>>()
            .join("\n")
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_silence_set_through_the_follower_lives_in_the_shared_state_and_outlives_the_leader() {
    use vigil_e2e::ha::{subjects, Pair, TTL_S};
    if amtool_missing() {
        return;
    }
    let pair = Pair::new("ha-silence");
    let a = pair.start(0);
    let timeout = Duration::from_secs(5 * TTL_S);
    wait_until(timeout, "agg-a to lead", || pair.acting(0), || a.log_text());
    let b = pair.start(1);
    // A holder takes changes once it has evaluated (it has a state to write them with).
    let evaluated = |base: &str| {
        json(&format!("{base}/api/v1/rules"))["data"]["groups"][0]["lastEvaluation"]
            .as_str()
            .is_some_and(|t| !t.starts_with("0001"))
    };
    pair.push_until("agg-b to follow", timeout, 1.0, 0.0, &[&a, &b], || {
        pair.cluster(1)["role"] == "follower" && evaluated(&pair.nodes[0].base)
    });
    // Set and listed through the follower: both passed on to the holder.
    let (base_a, base_b) = (&pair.nodes[0].base, &pair.nodes[1].base);
    let id = amtool_at(
        base_b,
        &[
            "silence",
            "add",
            "alertname=AppErrors",
            "--comment=deploy",
            "--duration=1h",
        ],
        &[&a, &b],
    )
    .trim()
    .to_string();
    assert_eq!(id.len(), 36, "{id}");
    assert!(a.log_text().contains("silence set"), "{}", a.log_text());
    assert!(b.log_text().contains("admin write forwarded to the leader"));
    assert_eq!(
        amtool_at(base_b, &["silence", "query", "-q"], &[&a, &b]).trim(),
        id
    );
    assert_eq!(
        amtool_at(base_a, &["silence", "query", "-q"], &[&a, &b]).trim(),
        id
    );
    // The alert fires, silenced at the holder.
    let suppressed = |base: &str| {
        json(&format!("{base}/api/v2/alerts"))
            .as_array()
            .and_then(|x| x.first().cloned())
            .is_some_and(|x| x["status"]["silencedBy"] == serde_json::json!([id]))
    };
    pair.push_until("the alert, silenced", timeout, 1.0, 1.0, &[&a, &b], || {
        suppressed(base_a)
    });
    // kill -9 of the holder: agg-b takes over with the silence from the shared state.
    a.signal("KILL");
    drop(a);
    pair.push_until("agg-b to lead", timeout, 1.0, 1.0, &[&b], || pair.acting(1));
    assert_eq!(
        amtool_at(base_b, &["silence", "query", "-q"], &[&b]).trim(),
        id
    );
    pair.push_until(
        "the alert, silenced at agg-b",
        timeout,
        1.0,
        1.0,
        &[&b],
        || suppressed(base_b),
    );
    // Five CloudWatch flushes by agg-b (one a second): no notice while silenced.
    let flushes = pair.count(1, "PutMetricData");
    pair.push_until("five flushes by agg-b", timeout, 1.0, 1.0, &[&b], || {
        pair.count(1, "PutMetricData") >= flushes + 5
    });
    let mut sns = Vec::new();
    assert_eq!(pair.sns(&mut sns), 0, "{sns:?}\n{}", b.log_text());
    // Expired: the notice goes out, once.
    amtool_at(base_b, &["silence", "expire", &id], &[&b]);
    pair.push_until("the notice", timeout, 1.0, 1.0, &[&b], || {
        pair.sns(&mut sns) >= 1
    });
    assert_eq!(subjects(&sns), ["[FIRING:1] AppErrors (web)"]);
}

#[test]
fn pages_and_tickets_go_to_their_receivers_and_an_inhibited_alert_sends_nothing() {
    if amtool_missing() {
        return;
    }
    let dir = tempdir("oncall-route");
    let d = dir.path();
    let hook = Hook::start();
    let rules = d.join("rules.toml");
    std::fs::write(
        &rules,
        r#"[[group]]
name = "fleet"
[[group.alert]]
alert = "InstanceDown"
expr = 'up == 0'
labels = { severity = "page" }
[[group.alert]]
alert = "DiskFull"
expr = 'disk_used > 0.9'
labels = { severity = "page" }
[[group.alert]]
alert = "DiskSlow"
expr = 'disk_latency_seconds > 1'
labels = { severity = "ticket" }
"#,
    )
    .expect("rules");
    let port = free_port();
    let cfg = d.join("aggregator.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[server]
listen = "127.0.0.1:{port}"
[storage]
stale_after = "5s"
state_dir = "{state}"
[rules]
files = ["{rules}"]
evaluation_interval = "1s"
[notify]
group_by = ["alertname", "instance"]
group_wait = "1s"
group_interval = "2s"

[[notify.route]]
matchers = ['severity="page"']
receivers = ["pager"]

[[notify.route]]
matchers = ['severity="ticket"']
receivers = ["tickets", "chat"]

[notify.templates]
slack_title = '{{{{ .Alerts | len }}}} ticket{{{{ if gt (len .Alerts) 1 }}}}s{{{{ end }}}}'
slack_text = '{{{{ range .Alerts.Firing }}}}{{{{ .Labels.alertname }}}} on {{{{ .Labels.instance }}}}{{{{ end }}}}'

# A host that is down explains its disk alerts.
[[notify.inhibit]]
source_matchers = ['alertname="InstanceDown"']
target_matchers = ['alertname=~"Disk.*"']
equal = ["instance"]

[[receiver]]
name = "pager"
webhook_url = "{pager}"
[[receiver]]
name = "tickets"
webhook_url = "{tickets}"
[[receiver]]
name = "chat"
slack_webhook_url = "{chat}"
"#,
            state = d.join("state").display(),
            rules = rules.display(),
            pager = hook.url("/pager"),
            tickets = hook.url("/tickets"),
            chat = hook.url("/chat"),
        ),
    )
    .expect("config");
    let (agg, base) = start(&cfg, port, d);
    // i-1 is down (its full disk is the symptom); i-2's disk is full and slow.
    let push = |up: f64| {
        let s = |name: &str, instance: &str, v: f64| {
            (
                Labels::from_pairs([("__name__", name), ("instance", instance)]),
                v,
            )
        };
        push_now(
            &base,
            &[
                s("up", "i-1", up),
                s("disk_used", "i-1", 0.95),
                s("disk_used", "i-2", 0.95),
                s("disk_latency_seconds", "i-2", 2.0),
            ],
        );
    };
    // What each receiver got: (receiver, alertname, instance) of the firing alerts.
    let sent = || -> Vec<(String, String, String)> {
        let mut v: Vec<(String, String, String)> = hook
            .bodies()
            .iter()
            .flat_map(|(path, body)| {
                body.as_array()
                    .into_iter()
                    .flatten()
                    .map(move |a| {
                        let l = |k: &str| a["labels"][k].as_str().unwrap_or("").to_string();
                        (
                            path.trim_start_matches('/').to_string(),
                            l("alertname"),
                            l("instance"),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let t = |r: &str, a: &str, i: &str| (r.to_string(), a.to_string(), i.to_string());
    wait_until(
        Duration::from_secs(30),
        "the page and the ticket",
        || {
            push(0.0);
            sent().len() >= 3
        },
        || agg.log_text(),
    );
    // Shown inhibited, with the alert that inhibits it.
    let alerts = json(&format!("{base}/api/v2/alerts"));
    let full_i1 = alerts
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["labels"]["alertname"] == "DiskFull" && a["labels"]["instance"] == "i-1")
        .cloned()
        .expect("DiskFull on i-1");
    assert_eq!(full_i1["status"]["state"], "suppressed", "{full_i1}");
    assert_eq!(
        full_i1["status"]["inhibitedBy"].as_array().map(Vec::len),
        Some(1),
        "{full_i1}"
    );
    assert_eq!(full_i1["receivers"][0]["name"], "pager", "{full_i1}");
    let amtool = |args: &[&str]| amtool_at(&base, args, &[&agg]);
    // amtool asks for active alerts by default, for the inhibited ones alone with --inhibited.
    let shown = amtool(&["alert", "query", "alertname=DiskFull"]);
    assert_eq!(shown.matches("DiskFull").count(), 1, "{shown}");
    assert!(!shown.contains("suppressed"), "{shown}");
    let shown = amtool(&["alert", "query", "--inhibited", "alertname=DiskFull"]);
    assert_eq!(shown.matches("DiskFull").count(), 1, "{shown}");
    assert!(shown.contains("suppressed"), "{shown}");
    // Held back over several group intervals, judged by the rule group's evaluations.
    let started =
        vigil_config::duration::parse_timestamp_ms(full_i1["startsAt"].as_str().expect("startsAt"))
            .expect("RFC 3339");
    wait_until(
        Duration::from_secs(30),
        "five seconds of evaluations",
        || {
            push(0.0);
            last_evaluation(&base) >= started + 5_000
        },
        || agg.log_text(),
    );
    assert_eq!(
        sent(),
        [
            t("pager", "DiskFull", "i-2"),
            t("pager", "InstanceDown", "i-1"),
            t("tickets", "DiskSlow", "i-2"),
        ],
        "a page and a ticket apart, nothing for the inhibited alert"
    );
    // i-1 comes back: its full disk is no longer explained, and is paged.
    wait_until(
        Duration::from_secs(30),
        "the disk alert once the host is up",
        || {
            push(1.0);
            sent().contains(&t("pager", "DiskFull", "i-1"))
        },
        || agg.log_text(),
    );
    assert!(!sent().contains(&t("tickets", "DiskFull", "i-1")));
    // The ticket also reached the chat, in the words of [notify.templates].
    let chat: Vec<serde_json::Value> = hook
        .bodies()
        .into_iter()
        .filter(|(path, _)| path == "/chat")
        .map(|(_, b)| b)
        .collect();
    assert_eq!(chat.len(), 1, "{chat:?}");
    assert_eq!(chat[0]["text"], "1 ticket", "{chat:?}");
    assert_eq!(
        chat[0]["blocks"][1]["text"]["text"], "DiskSlow on i-2",
        "{chat:?}"
    );
}
