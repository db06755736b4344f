//! Routing, inhibition and time intervals, after Alertmanager's documented examples, read from
//! an `aggregator.toml` as a user writes them.

use std::collections::BTreeMap;

use vigil_wire::Labels;

use crate::config::parse;
use crate::notify::{ActiveAlert, Notifier, Settings};
use crate::routing::*;

const CONFIG: &str = r#"
[notify]
group_by = ["cluster", "alertname"]
receivers = ["default"]
group_wait = "10s"
group_interval = "1m"

# A page also goes to the pager, and then on down the list.
[[notify.route]]
matchers = ['severity="page"']
receivers = ["pager"]
continue = true

[[notify.route]]
matchers = ['service=~"mysql|cassandra"']
receivers = ["database"]

[[notify.route]]
matchers = ['team="frontend"']
receivers = ["frontend"]
group_by = ["product", "environment"]

[[notify.route.route]]
matchers = ['environment="staging"']
receivers = ["tickets"]

[[notify.route]]
matchers = ['severity="ticket"']
receivers = ["tickets"]
mute_time_intervals = ["offhours"]

[[notify.inhibit]]
source_matchers = ['severity="critical"']
target_matchers = ['severity="warning"']
equal = ["alertname", "cluster"]

# A night written as two ranges (Alertmanager's ranges do not cross midnight), in Paris.
[[notify.time_interval]]
name = "offhours"
times = [{ start_time = "22:00", end_time = "24:00" }, { start_time = "00:00", end_time = "06:00" }]
location = "Europe/Paris"

# And the weekend, a second entry of the same name.
[[notify.time_interval]]
name = "offhours"
weekdays = ["saturday", "sunday"]
location = "Europe/Paris"

[[receiver]]
name = "default"
webhook_url = "http://127.0.0.1:1/default"
[[receiver]]
name = "pager"
webhook_url = "http://127.0.0.1:1/pager"
[[receiver]]
name = "database"
webhook_url = "http://127.0.0.1:1/database"
[[receiver]]
name = "frontend"
webhook_url = "http://127.0.0.1:1/frontend"
[[receiver]]
name = "tickets"
webhook_url = "http://127.0.0.1:1/tickets"
"#;

fn settings() -> Settings {
    settings_of(CONFIG)
}

/// The notifier's settings from an `aggregator.toml`.
fn settings_of(text: &str) -> Settings {
    let c = parse("aggregator.toml", text).expect("valid");
    Settings {
        group_by: c.group_by,
        group_wait_ms: c.group_wait_ms,
        group_interval_ms: c.group_interval_ms,
        repeat_interval_ms: c.repeat_interval_ms,
        receivers: c.receivers,
        routing: c.routing,
        templates: c.templates,
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels::from_pairs(pairs.iter().copied())
}

/// (receiver, group_by) of each target, in order.
fn route(s: &Settings, pairs: &[(&str, &str)]) -> Vec<(String, Vec<String>)> {
    let all: Vec<String> = s.receivers.iter().map(|r| r.name.clone()).collect();
    s.routing
        .targets(&labels(pairs), &[], &s.group_by, &all)
        .into_iter()
        .flat_map(|t| {
            t.receivers
                .into_iter()
                .map(move |r| (r, t.group_by.clone()))
        })
        .collect()
}

fn names(v: Vec<(String, Vec<String>)>) -> Vec<String> {
    v.into_iter().map(|(r, _)| r).collect()
}

#[test]
fn the_first_matching_route_wins_unless_it_continues() {
    let s = settings();
    // No route matches: the root's receivers.
    assert_eq!(names(route(&s, &[("alertname", "X")])), ["default"]);
    // The page route matched (and continued, to no other): the root does not take it.
    assert_eq!(names(route(&s, &[("severity", "page")])), ["pager"]);
    // The page route continues; the database route then matches and stops the walk, so the
    // frontend route is never tried.
    assert_eq!(
        names(route(
            &s,
            &[
                ("severity", "page"),
                ("service", "mysql"),
                ("team", "frontend")
            ]
        )),
        ["pager", "database"]
    );
    // A route groups by its own labels; a child inherits them, and takes the alert when it
    // matches (the parent then does not).
    assert_eq!(
        route(&s, &[("team", "frontend"), ("environment", "prod")]),
        [(
            "frontend".to_string(),
            vec!["product".to_string(), "environment".to_string()]
        )]
    );
    assert_eq!(
        route(&s, &[("team", "frontend"), ("environment", "staging")]),
        [(
            "tickets".to_string(),
            vec!["product".to_string(), "environment".to_string()]
        )]
    );
    // A rule's receivers are a route of their own, taken first.
    let all: Vec<String> = s.receivers.iter().map(|r| r.name.clone()).collect();
    let t = s.routing.targets(
        &labels(&[("severity", "page")]),
        &["tickets".to_string()],
        &s.group_by,
        &all,
    );
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].receivers, ["tickets"]);
}

#[test]
fn inhibition_needs_a_firing_source_with_the_equal_labels() {
    let s = settings();
    let critical = labels(&[
        ("alertname", "Disk"),
        ("cluster", "a"),
        ("severity", "critical"),
    ]);
    let warning_a = labels(&[
        ("alertname", "Disk"),
        ("cluster", "a"),
        ("severity", "warning"),
    ]);
    let warning_b = labels(&[
        ("alertname", "Disk"),
        ("cluster", "b"),
        ("severity", "warning"),
    ]);
    let firing = [critical.clone(), warning_a.clone(), warning_b.clone()];
    assert_eq!(
        s.routing.inhibited_by(&warning_a, &firing),
        [&critical],
        "same alertname and cluster"
    );
    assert!(s.routing.inhibited_by(&warning_b, &firing).is_empty());
    assert!(s.routing.inhibited_by(&critical, &firing).is_empty());
    // Without its source firing, nothing is inhibited.
    assert!(s
        .routing
        .inhibited_by(&warning_a, std::slice::from_ref(&warning_a))
        .is_empty());
    // A label missing on both sides is equal (empty).
    let src = labels(&[("alertname", "Disk"), ("severity", "critical")]);
    let tgt = labels(&[("alertname", "Disk"), ("severity", "warning")]);
    assert_eq!(
        s.routing.inhibited_by(&tgt, std::slice::from_ref(&src)),
        [&src]
    );
    // An alert matching both sides does not inhibit itself.
    let both = Routing {
        inhibit: vec![Inhibit {
            source: vec![crate::matcher::parse_filter("a=\"1\"").unwrap()],
            target: vec![crate::matcher::parse_filter("a=\"1\"").unwrap()],
            equal: vec![],
        }],
        ..Routing::default()
    };
    let one = labels(&[("a", "1")]);
    assert!(both
        .inhibited_by(&one, std::slice::from_ref(&one))
        .is_empty());
    // Nor do two alerts that each match both sides inhibit each other (Alertmanager's
    // two-sided exclusion): a NodeDown from two jobs still pages.
    let two = labels(&[("a", "1"), ("job", "b")]);
    let firing = [one.clone(), two.clone()];
    assert!(both.inhibited_by(&one, &firing).is_empty());
    assert!(both.inhibited_by(&two, &firing).is_empty());
}

fn ms(rfc3339: &str) -> i64 {
    vigil_config::duration::parse_timestamp_ms(rfc3339).expect("a time")
}

#[test]
fn a_night_mute_as_two_ranges_in_its_location_and_the_weekend() {
    let s = settings();
    let muted = |t: &str| {
        s.routing
            .time_muted(&["offhours".to_string()], &[], ms(t))
            .is_some()
    };
    // Wednesday 2 December 2026; Paris is UTC+1 in winter.
    assert!(muted("2026-12-02T21:30:00Z"), "22:30 in Paris");
    assert!(muted("2026-12-02T23:00:00Z"), "00:00 in Paris");
    assert!(muted("2026-12-03T04:59:00Z"), "05:59 in Paris");
    assert!(!muted("2026-12-03T05:00:00Z"), "06:00 in Paris");
    assert!(!muted("2026-12-02T20:59:00Z"), "21:59 in Paris");
    // In summer Paris is UTC+2: 21:30 UTC is 23:30 there.
    assert!(muted("2026-07-01T21:30:00Z"));
    assert!(muted("2026-07-01T03:30:00Z"), "05:30 in Paris");
    assert!(!muted("2026-07-01T04:30:00Z"), "06:30 in Paris");
    // Saturday noon.
    assert!(muted("2026-12-05T11:00:00Z"));
    // active_time_intervals: the other way round.
    let active = |t: &str| {
        s.routing
            .time_muted(&[], &["offhours".to_string()], ms(t))
            .is_none()
    };
    assert!(active("2026-12-02T23:00:00Z"));
    assert!(!active("2026-12-02T12:00:00Z"));
    // What /api/v2/alerts says mutes it (Alertmanager's mutedBy).
    let night = ms("2026-12-02T23:00:00Z");
    let off = ["offhours".to_string()];
    assert_eq!(s.routing.muted_by(&off, &[], night), off);
    assert!(s.routing.muted_by(&[], &off, night).is_empty());
    assert_eq!(
        s.routing.muted_by(&[], &off, ms("2026-12-02T12:00:00Z")),
        off
    );
}

fn alert(pairs: &[(&str, &str)]) -> ActiveAlert {
    ActiveAlert {
        labels: labels(pairs),
        annotations: BTreeMap::new(),
        value: 1.0,
        starts_at: 0,
        receivers: vec![],
        decision: None,
    }
}

#[test]
fn pages_and_tickets_reach_their_receivers_and_an_inhibited_or_muted_alert_waits() {
    let s = settings();
    let mut n = Notifier::default();
    // Wednesday 2 December 2026, 12:00 in Paris: working hours.
    let t0 = ms("2026-12-02T11:00:00Z");
    let page = alert(&[("alertname", "Down"), ("severity", "page")]);
    let ticket = alert(&[("alertname", "Slow"), ("severity", "ticket")]);
    let critical = alert(&[
        ("alertname", "Disk"),
        ("cluster", "a"),
        ("severity", "critical"),
    ]);
    let warning = alert(&[
        ("alertname", "Disk"),
        ("cluster", "a"),
        ("severity", "warning"),
    ]);
    let firing = vec![page, ticket, critical, warning.clone()];
    n.observe(&s, t0, &firing);
    let sent: Vec<(String, Vec<String>)> = n
        .flush(&s, t0 + 10_000)
        .into_iter()
        .filter(|x| !x.refresh_only)
        .map(|x| {
            (
                x.receiver,
                x.firing
                    .iter()
                    .map(|a| a.labels.get("alertname").unwrap_or("").to_string())
                    .collect(),
            )
        })
        .collect();
    // The page goes to the pager only (a route matched, so the root does not take it, though
    // it continued); the ticket to tickets; the critical to the default; the warning nowhere
    // while the critical fires.
    let mut sent = sent;
    sent.sort();
    assert_eq!(
        sent,
        [
            ("default".to_string(), vec!["Disk".to_string()]),
            ("pager".to_string(), vec!["Down".to_string()]),
            ("tickets".to_string(), vec!["Slow".to_string()]),
        ]
    );
    // The critical resolves: the warning goes out at its group's next flush.
    n.observe(&s, t0 + 20_000, std::slice::from_ref(&warning));
    let sent = n.flush(&s, t0 + 70_000);
    let warned: Vec<&str> = sent
        .iter()
        .filter(|x| !x.refresh_only)
        .flat_map(|x| x.firing.iter())
        .filter_map(|a| a.labels.get("severity"))
        .collect();
    assert_eq!(warned, ["warning"], "{sent:?}");

    // At night a ticket waits: nothing is sent until the mute ends, then it is.
    let mut n = Notifier::default();
    let night = ms("2026-12-02T22:00:00Z");
    let ticket = alert(&[("alertname", "Slow"), ("severity", "ticket")]);
    let mut told = Vec::new();
    let mut t = night;
    while t < night + 10 * 3_600_000 {
        n.observe(&s, t, std::slice::from_ref(&ticket));
        told.extend(
            n.flush(&s, t)
                .into_iter()
                .filter(|x| !x.refresh_only)
                .map(|x| x.at),
        );
        t += 60_000;
    }
    assert_eq!(
        told.first().copied(),
        Some(ms("2026-12-03T05:00:00Z")),
        "06:00 in Paris, the first flush after the night"
    );
}

/// Every error reading `text` as `aggregator.toml`, one a line.
fn bad(text: &str) -> String {
    parse("aggregator.toml", text)
        .unwrap_err()
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn mistakes_name_their_line_and_column() {
    let e = bad("[[notify.route]]\nreceivers = [\"nobody\"]\n");
    assert!(
        e.contains("aggregator.toml:2:14: unknown receiver \"nobody\""),
        "{e}"
    );
    let e = bad("[[notify.route]]\nmatchers = ['severity=~\"(\"']\n");
    assert!(
        e.contains("aggregator.toml:2:13: notify.route[0].matchers"),
        "{e}"
    );
    let e = bad("[[notify.time_interval]]\nname = \"night\"\ntimes = [{ start_time = \"22:00\", end_time = \"06:00\" }]\n");
    assert!(
        e.contains("aggregator.toml:3:") && e.contains("a range across midnight is two ranges"),
        "{e}"
    );
    let e = bad("[[notify.route]]\nmute_time_intervals = [\"lunch\"]\n");
    assert!(
        e.contains("aggregator.toml:2:24: unknown time interval \"lunch\""),
        "{e}"
    );
    let e = bad("[[notify.time_interval]]\nname = \"x\"\nweekdays = [\"friday:monday\"]\nlocation = \"Mars/Olympus\"\n");
    assert!(e.contains("aggregator.toml:3:13"), "{e}");
    assert!(e.contains("unknown time zone \"Mars/Olympus\""), "{e}");
    let e = bad("[[notify.inhibit]]\ntarget_matchers = ['severity=\"warning\"']\n");
    assert!(
        e.contains("give source_matchers and target_matchers"),
        "{e}"
    );
}

const TEMPLATES: &str = r#"
[notify.templates]
external_url = "https://vigil.example"
sns_subject = '[{{ .Status | toUpper }}{{ if eq .Status "firing" }}:{{ .Alerts.Firing | len }}{{ end }}] {{ .GroupLabels.alertname }}'
sns_message = '''
{{ range .Alerts.Firing }}FIRING {{ .Labels.instance }}: {{ .Annotations.summary }}
{{ end }}{{ range .Alerts.Resolved }}RESOLVED {{ .Labels.instance }}
{{ end }}{{ .ExternalURL }}'''
slack_title = '{{ .CommonLabels.alertname }} on {{ len .Alerts }}'
slack_text = '{{ range .Alerts }}• {{ .Labels.instance }} ({{ .Status }}){{ end }}'

[[receiver]]
name = "oncall"
sns_topic_arn = "arn:aws:sns:us-east-1:123456789012:oncall"
slack_webhook_url = "http://127.0.0.1:1/slack"
"#;

#[test]
fn templates_write_the_sns_subject_and_message_and_the_slack_message() {
    let s = settings_of(TEMPLATES);
    let mut a = alert(&[("alertname", "Down"), ("instance", "i-1")]);
    a.annotations.insert("summary".into(), "i-1 is down".into());
    let b = alert(&[("alertname", "Down"), ("instance", "i-2")]);
    let n = crate::notify::group::Notification {
        receiver: "oncall".into(),
        group_labels: labels(&[("alertname", "Down")]),
        firing: vec![a],
        resolved: vec![(b, 60_000)],
        muted_told: vec![],
        at: 60_000,
        repeat: false,
        refresh_only: false,
    };
    let d = crate::notify::render(&n, &s);
    let crate::notify::Delivery::Sns {
        subject, message, ..
    } = &d[0]
    else {
        panic!("{d:?}")
    };
    assert_eq!(subject, "[FIRING:1] Down");
    assert_eq!(
        message,
        "FIRING i-1: i-1 is down\nRESOLVED i-2\nhttps://vigil.example"
    );
    let crate::notify::Delivery::Slack { body, .. } = &d[1] else {
        panic!("{d:?}")
    };
    assert_eq!(body["text"], "Down on 2");
    assert_eq!(body["blocks"][0]["text"]["text"], "Down on 2");
    assert_eq!(
        body["blocks"][1]["text"]["text"],
        "• i-1 (firing)• i-2 (resolved)"
    );
}

#[test]
fn a_bad_template_names_its_line_and_column_and_one_wrong_inside_a_range_is_caught_too() {
    let e = bad("[notify.templates]\nsns_subject = '{{ .Status }} {{ .Nope }}'\n");
    assert!(
        e.contains("aggregator.toml:2:33: notify.templates.sns_subject: template: can't evaluate field Nope"),
        "{e}"
    );
    let e = bad("[notify.templates]\nslack_text = '{{ range .Alerts }}{{ .Lables.x }}{{ end }}'\n");
    assert!(
        e.contains(
            "aggregator.toml:2:14: notify.templates.slack_text: on a firing and resolved notification: can't evaluate field Lables"
        ),
        "{e}"
    );
    // A guard that holds on firing notices and not on resolved ones is caught too.
    let e = bad("[notify.templates]\nsns_subject = '{{ index .Alerts.Firing 0 }}'\n");
    assert!(
        e.contains("on a resolved notification: index out of range"),
        "{e}"
    );
    assert!(parse(
        "aggregator.toml",
        "[notify.templates]\nsns_subject = '{{ if .Alerts.Firing }}{{ index .Alerts.Firing 0 }}{{ end }}x'\n"
    )
    .is_ok());
    let e = bad("[notify.templates]\nsns_message = '''\n{{ range .Alerts }}'''\n");
    assert!(e.contains("unclosed range"), "{e}");
    let e = bad("[notify.templates]\nsubject = 'x'\n");
    assert!(e.contains("notify.templates.subject: unknown key"), "{e}");
}

#[test]
fn days_of_the_month_count_from_the_end_and_months_and_years_hold_as_given() {
    let c = parse(
        "aggregator.toml",
        r#"
[[notify.time_interval]]
name = "month-end"
days_of_month = ["-3:-1"]

[[notify.time_interval]]
name = "late"
days_of_month = ["25:-1"]

[[notify.time_interval]]
name = "q1-2026"
months = ["january:march"]
years = ["2026"]
"#,
    )
    .expect("valid");
    let holds = |name: &str, t: &str| {
        !c.routing
            .muted_by(&[name.to_string()], &[], ms(t))
            .is_empty()
    };
    // February 2026 has 28 days, April 30, December 31.
    assert!(!holds("month-end", "2026-02-25T12:00:00Z"));
    assert!(holds("month-end", "2026-02-26T12:00:00Z"));
    assert!(holds("month-end", "2026-02-28T12:00:00Z"));
    assert!(!holds("month-end", "2026-04-27T12:00:00Z"));
    assert!(holds("month-end", "2026-04-28T12:00:00Z"));
    assert!(holds("month-end", "2026-12-29T12:00:00Z"));
    assert!(!holds("month-end", "2026-12-28T12:00:00Z"));
    assert!(holds("late", "2026-02-25T00:00:00Z"));
    assert!(holds("late", "2026-04-30T23:59:00Z"));
    assert!(!holds("late", "2026-04-24T23:59:00Z"));
    assert!(holds("q1-2026", "2026-03-31T23:59:00Z"));
    assert!(!holds("q1-2026", "2026-04-01T00:00:00Z"));
    assert!(!holds("q1-2026", "2027-02-01T00:00:00Z"));
    // Ranges that could never hold are refused, as Alertmanager refuses them.
    for bad in ["-1:25", "25:-10", "0", "32"] {
        let text = format!("[[notify.time_interval]]\nname = \"x\"\ndays_of_month = [\"{bad}\"]\n");
        let e = parse("aggregator.toml", &text).unwrap_err();
        assert!(
            e[0].to_string().contains("aggregator.toml:3:"),
            "{bad}: {}",
            e[0]
        );
    }
}

#[test]
fn a_template_that_makes_nothing_leaves_vigils_own_text() {
    let s = settings_of(
        "[notify.templates]\nslack_text = '{{ range .Alerts.Firing }}{{ .Labels.instance }}{{ end }}'\nsns_subject = '{{ range .Alerts.Firing }}x{{ end }}'\n[[receiver]]\nname = \"oncall\"\nsns_topic_arn = \"arn:aws:sns:us-east-1:123456789012:oncall\"\nslack_webhook_url = \"http://127.0.0.1:1/slack\"\n",
    );
    // Resolved only: both templates make nothing.
    let n = crate::notify::group::Notification {
        receiver: "oncall".into(),
        group_labels: labels(&[("alertname", "Down")]),
        firing: vec![],
        resolved: vec![(alert(&[("alertname", "Down"), ("instance", "i-1")]), 60_000)],
        muted_told: vec![],
        at: 60_000,
        repeat: false,
        refresh_only: false,
    };
    let d = crate::notify::render(&n, &s);
    let crate::notify::Delivery::Sns { subject, .. } = &d[0] else {
        panic!("{d:?}")
    };
    assert_eq!(subject, "[RESOLVED] Down");
    let crate::notify::Delivery::Slack { body, .. } = &d[1] else {
        panic!("{d:?}")
    };
    let text = body["blocks"][1]["text"]["text"].as_str().unwrap_or("");
    assert!(
        text.contains("resolved"),
        "Vigil's own block for the alert: {body}"
    );
}
