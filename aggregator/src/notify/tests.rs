use std::collections::BTreeMap;

use vigil_wire::Labels;

use super::group::*;
use super::render::*;
use crate::config::Receiver;
use serde_json::Value as Json;

fn settings() -> Settings {
    Settings {
        group_by: vec!["alertname".into(), "asg".into()],
        group_wait_ms: 10_000,
        group_interval_ms: 60_000,
        repeat_interval_ms: 3_600_000,
        routing: Default::default(),
        templates: Default::default(),
        receivers: vec![Receiver {
            name: "oncall".into(),
            sns_topic_arn: Some("arn:aws:sns:us-east-1:123456789012:oncall".into()),
            slack_webhook_url: Some("http://127.0.0.1:1/slack".into()),
            webhook_urls: vec![],
        }],
    }
}

fn alert(name: &str, instance: &str, at: i64) -> ActiveAlert {
    ActiveAlert {
        labels: Labels::from_pairs([
            ("alertname", name),
            ("asg", "web"),
            ("instance", instance),
            ("severity", "page"),
        ]),
        annotations: BTreeMap::from([("summary".into(), format!("{instance} down"))]),
        value: 1.0,
        starts_at: at,
        receivers: vec![],
        decision: None,
    }
}

/// Runs observe + flush at each time with the firing set given; returns what was notified.
fn drive(n: &mut Notifier, s: &Settings, steps: &[(i64, Vec<ActiveAlert>)]) -> Vec<Notification> {
    let mut out = Vec::new();
    for (t, firing) in steps {
        n.observe(s, *t, firing);
        out.extend(n.flush(s, *t).into_iter().filter(|x| !x.refresh_only));
    }
    out
}

#[test]
fn waits_groups_and_notifies_once_then_resolves() {
    let s = settings();
    let mut n = Notifier::default();
    let a = alert("Down", "i-1", 0);
    let b = alert("Down", "i-2", 0);
    let steps: Vec<(i64, Vec<ActiveAlert>)> = vec![
        (0, vec![a.clone()]),
        (5_000, vec![a.clone(), b.clone()]),
        (10_000, vec![a.clone(), b.clone()]),
        (20_000, vec![a.clone(), b.clone()]),
        (70_000, vec![a.clone(), b.clone()]),
        (80_000, vec![b.clone()]),
        (130_000, vec![b.clone()]),
        (190_000, vec![]),
        (250_000, vec![]),
    ];
    let got = drive(&mut n, &s, &steps);
    let summary: Vec<(i64, usize, usize)> = got
        .iter()
        .map(|x| (x.at, x.firing.len(), x.resolved.len()))
        .collect();
    // Both alerts in one message after group_wait; i-1's resolution at the next
    // group_interval tick; the last resolution at the tick after (where it happened).
    assert_eq!(summary, [(10_000, 2, 0), (130_000, 1, 1), (190_000, 0, 1)]);
    assert!(n.is_idle());
}

#[test]
fn repeats_an_unchanged_group_after_repeat_interval_only() {
    let s = settings();
    let mut n = Notifier::default();
    let a = alert("Down", "i-1", 0);
    let steps: Vec<(i64, Vec<ActiveAlert>)> =
        (0..=70).map(|k| (k * 60_000, vec![a.clone()])).collect();
    let got = drive(&mut n, &s, &steps);
    let at: Vec<i64> = got.iter().map(|x| x.at).collect();
    assert_eq!(at, [60_000, 60_000 + 3_600_000]);
    assert!(got[1].repeat);
}

#[test]
fn an_alert_resolved_before_anyone_was_told_is_never_notified() {
    let s = settings();
    let mut n = Notifier::default();
    let a = alert("Flap", "i-1", 0);
    let got = drive(
        &mut n,
        &s,
        &[(0, vec![a]), (5_000, vec![]), (10_000, vec![])],
    );
    assert!(got.is_empty(), "{got:?}");
    assert!(n.is_idle());
}

#[test]
fn groups_split_by_group_by_and_receivers() {
    let mut s = settings();
    s.receivers.push(Receiver {
        name: "team".into(),
        sns_topic_arn: None,
        slack_webhook_url: Some("http://127.0.0.1:1/team".into()),
        webhook_urls: vec![],
    });
    let mut n = Notifier::default();
    let mut a = alert("Down", "i-1", 0);
    a.receivers = vec!["team".into()];
    let b = alert("Slow", "i-1", 0);
    let got = drive(
        &mut n,
        &s,
        &[(0, vec![a.clone(), b.clone()]), (10_000, vec![a, b])],
    );
    let mut who: Vec<(String, String)> = got
        .iter()
        .map(|x| {
            (
                x.receiver.clone(),
                x.group_labels.get("alertname").unwrap_or("").to_string(),
            )
        })
        .collect();
    who.sort();
    // Down only to team (its rule names it), Slow to both (no receivers named).
    assert_eq!(
        who,
        [
            ("oncall".into(), "Slow".into()),
            ("team".into(), "Down".into()),
            ("team".into(), "Slow".into())
        ]
    );
}

#[test]
fn state_survives_a_round_trip_so_a_restart_sends_no_duplicate() {
    let s = settings();
    let mut n = Notifier::default();
    let a = alert("Down", "i-1", 0);
    assert_eq!(
        drive(
            &mut n,
            &s,
            &[(0, vec![a.clone()]), (10_000, vec![a.clone()])]
        )
        .len(),
        1
    );
    let mut restored = Notifier::from_json(&n.to_json()).expect("restores");
    assert_eq!(restored, n);
    let got = drive(
        &mut restored,
        &s,
        &[(70_000, vec![a.clone()]), (130_000, vec![])],
    );
    assert_eq!(got.len(), 1);
    assert!(got[0].firing.is_empty() && got[0].resolved.len() == 1);
}

#[test]
fn renders_sns_within_its_limits_and_slack_blocks() {
    let s = settings();
    let mut a = alert(&"X".repeat(150), "i-1", 0);
    a.annotations
        .insert("summary".into(), "naïve <b> & ünïcode".into());
    let n = Notification {
        receiver: "oncall".into(),
        group_labels: a.labels.keep_only(&["alertname", "asg"]),
        firing: vec![a],
        resolved: vec![],
        at: 1_000,
        repeat: false,
        refresh_only: false,
        muted_told: vec![],
    };
    let d = render(&n, &s);
    assert_eq!(d.len(), 2);
    let Delivery::Sns {
        subject,
        message,
        attributes,
        ..
    } = &d[0]
    else {
        panic!("{d:?}")
    };
    assert!(subject.len() <= 100 && subject.is_ascii(), "{subject}");
    assert!(subject.starts_with("[FIRING:1] XXX"));
    let m: Json = serde_json::from_str(message).unwrap();
    assert_eq!(m["status"], "firing");
    assert_eq!(m["alerts"][0]["labels"]["instance"], "i-1");
    assert_eq!(attributes.get("severity").map(String::as_str), Some("page"));
    assert_eq!(attributes.get("asg").map(String::as_str), Some("web"));
    let Delivery::Slack { body, .. } = &d[1] else {
        panic!()
    };
    let text = body["blocks"][1]["text"]["text"].as_str().unwrap();
    assert!(text.contains("naïve &lt;b&gt; &amp; ünïcode"), "{text}");
    let back = Delivery::from_json(&d[0].to_json()).unwrap();
    assert_eq!(back, d[0]);
}

#[test]
fn long_non_ascii_text_is_cut_on_character_boundaries() {
    let s = settings();
    let mut a = alert("Down", "i-1", 0);
    a.annotations.insert("summary".into(), "é".repeat(4000));
    let n = Notification {
        receiver: "oncall".into(),
        group_labels: a.labels.keep_only(&["alertname", "asg"]),
        firing: vec![a],
        resolved: vec![],
        at: 0,
        repeat: false,
        refresh_only: false,
        muted_told: vec![],
    };
    let d = render(&n, &s);
    let Delivery::Slack { body, .. } = &d[1] else {
        panic!()
    };
    let text = body["blocks"][1]["text"]["text"].as_str().unwrap();
    assert!(text.chars().count() <= 2900);
}

#[test]
fn an_sns_message_too_large_keeps_what_fits_and_says_how_many_more() {
    let s = settings();
    let firing: Vec<ActiveAlert> = (0..3000)
        .map(|k| alert("Down", &format!("i-{k:017}"), 0))
        .collect();
    let n = Notification {
        receiver: "oncall".into(),
        group_labels: firing[0].labels.keep_only(&["alertname", "asg"]),
        firing,
        resolved: vec![],
        at: 0,
        repeat: false,
        refresh_only: false,
        muted_told: vec![],
    };
    let d = render(&n, &s);
    let Delivery::Sns { message, .. } = &d[0] else {
        panic!()
    };
    assert!(message.len() <= SNS_MAX_MESSAGE);
    let m: Json = serde_json::from_str(message).unwrap();
    let kept = m["alerts"].as_array().unwrap().len();
    assert!(kept > 100);
    assert_eq!(kept as u64 + m["truncatedAlerts"].as_u64().unwrap(), 3000);
}

#[test]
fn every_alertmanager_peer_gets_each_notice_and_the_shared_state_keeps_no_url() {
    let mut s = settings();
    s.receivers[0].webhook_urls = vec![
        "http://127.0.0.1:1/am-0/secret".into(),
        "http://127.0.0.1:1/am-1/secret".into(),
    ];
    let mut n = Notifier::default();
    n.observe(&s, 0, &[alert("Down", "i-1", 0)]);
    let out: Vec<Delivery> = n
        .flush(&s, 10_000)
        .iter()
        .flat_map(|x| render(x, &s))
        .collect();
    let am: Vec<&str> = out
        .iter()
        .filter(|d| d.kind() == "alertmanager")
        .map(|d| d.target())
        .collect();
    assert_eq!(
        am,
        [
            "http://127.0.0.1:1/am-0/secret",
            "http://127.0.0.1:1/am-1/secret"
        ]
    );
    for d in &out {
        let shared = d.to_shared(&s.receivers).expect("a configured receiver");
        assert!(!shared.to_string().contains("secret"), "{shared}");
        if d.kind() != "sns" {
            assert!(!shared.to_string().contains("http://"), "{shared}");
            assert_eq!(shared["receiver"], "oncall");
        }
        assert_eq!(
            Delivery::from_shared(&shared, &s.receivers).as_ref(),
            Some(d)
        );
    }
    // A receiver gone from this node's config: the delivery cannot be resolved.
    let shared = out[1].to_shared(&s.receivers).expect("slack");
    assert_eq!(Delivery::from_shared(&shared, &[]), None);
}

#[test]
fn logs_show_a_webhook_by_its_host_only() {
    use super::outbox::redacted;
    assert_eq!(
        redacted("https://hooks.slack.com/services/T000/B000/XXXXSECRET"),
        "https://hooks.slack.com/…"
    );
    assert_eq!(
        redacted("http://u:pw@am.internal:9093/api/v2/alerts?x=1"),
        "http://am.internal:9093/…"
    );
    assert_eq!(redacted("http://am:9093"), "http://am:9093");
    assert_eq!(
        redacted("arn:aws:sns:us-east-1:123456789012:oncall"),
        "arn:aws:sns:us-east-1:123456789012:oncall"
    );
}

mod silences {
    use super::*;
    use crate::notify::silence::{self, parse_filter, Refused, Silences};
    use serde_json::json;

    fn post(s: &mut Silences, body: Json, now: i64) -> Result<String, Refused> {
        s.post(&body, now, silence::new_id)
    }

    fn at(ms: i64) -> String {
        vigil_config::duration::format_timestamp_ms(ms)
    }

    const T0: i64 = 1_764_000_000_000;

    fn down_i1(from: i64, to: i64) -> Json {
        json!({"matchers": [{"name": "alertname", "value": "Down", "isRegex": false, "isEqual": true},
                            {"name": "instance", "value": "i-[1]", "isRegex": true}],
               "startsAt": at(from), "endsAt": at(to), "createdBy": "ops", "comment": "disk swap"})
    }

    #[test]
    fn matchers_have_alertmanagers_meaning() {
        let mut s = Silences::default();
        let id = post(&mut s, down_i1(T0, T0 + 60_000), T0).expect("valid");
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4", "a version-4 UUID: {id}");
        let l = |i: &str| alert("Down", i, 0).labels;
        assert!(s.mutes(&l("i-1"), T0));
        assert!(!s.mutes(&l("i-10"), T0), "regexes are anchored");
        assert!(!s.mutes(&l("i-2"), T0));
        assert!(!s.mutes(&alert("Up", "i-1", 0).labels, T0));
        assert!(!s.mutes(&l("i-1"), T0 + 60_000), "expired at endsAt");
        assert_eq!(s.get(&id).expect("kept").state(T0 + 60_000), "expired");
        // != and !~; a missing label is the empty value.
        let m = parse_filter(r#"severity!="page""#).expect("filter");
        assert!(!m.is_equal && !m.is_regex && m.value == "page");
        let m = parse_filter("team!~\"db|web\"").expect("filter");
        assert!(!m.is_equal && m.is_regex);
        assert!(silence::filter_matches(&[m], &l("i-1")));
        assert!(parse_filter("noop").is_err());
    }

    #[test]
    fn invalid_silences_are_refused_with_a_reason() {
        let mut s = Silences::default();
        let bad = |b: Json| match post(&mut Silences::default(), b, T0) {
            Err(Refused::Invalid(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(
            bad(json!({"matchers": [], "startsAt": at(T0), "endsAt": at(T0 + 1)}))
                .contains("at least one matcher")
        );
        assert!(bad(json!({"matchers": [{"name": "x", "value": ".*", "isRegex": true}], "startsAt": at(T0), "endsAt": at(T0 + 1)})).contains("empty string"));
        assert!(bad(json!({"matchers": [{"name": "x", "value": "(", "isRegex": true}], "startsAt": at(T0), "endsAt": at(T0 + 1)})).contains("regular expression"));
        assert!(bad(down_i1(T0, T0 - 1)).contains("before startsAt"));
        assert!(bad(down_i1(T0 - 10, T0 - 1)).contains("in the past"));
        assert!(bad(json!({"matchers": [{"name": "x", "value": "y", "isRegex": false}], "startsAt": "soon", "endsAt": at(T0 + 1)})).contains("startsAt"));
        assert!(matches!(s.expire("nope", T0), Err(Refused::NotFound(_))));
        let mut b = down_i1(T0, T0 + 1000);
        b["id"] = json!("nope");
        assert!(matches!(post(&mut s, b, T0), Err(Refused::NotFound(_))));
    }

    #[test]
    fn updates_expiry_and_retention() {
        let mut s = Silences::default();
        let id = post(&mut s, down_i1(T0, T0 + 60_000), T0).expect("valid");
        // Extending an active silence keeps its id and start.
        let mut b = down_i1(T0 + 5_000, T0 + 120_000);
        b["id"] = json!(id);
        assert_eq!(post(&mut s, b, T0 + 5_000).expect("update"), id);
        let x = s.get(&id).expect("kept");
        assert_eq!((x.starts_at, x.ends_at), (T0, T0 + 120_000));
        // Other matchers: a new silence, the old one expired.
        let mut b = json!({"matchers": [{"name": "alertname", "value": "Up", "isRegex": false}],
                           "startsAt": at(T0), "endsAt": at(T0 + 120_000), "id": id});
        b["comment"] = json!("other");
        let new = post(&mut s, b, T0 + 6_000).expect("replace");
        assert_ne!(new, id);
        assert_eq!(s.get(&id).expect("kept").state(T0 + 6_000), "expired");
        // A pending silence expired never starts.
        let later = post(&mut s, down_i1(T0 + 600_000, T0 + 700_000), T0).expect("pending");
        assert_eq!(s.get(&later).expect("kept").state(T0), "pending");
        s.expire(&later, T0 + 1).expect("expire");
        assert_eq!(s.get(&later).expect("kept").state(T0 + 650_000), "expired");
        // Listed until the retention has passed.
        assert_eq!(s.list(T0 + 1).len(), 3);
        assert!(
            s.list(T0 + 700_000 + silence::RETENTION_MS).is_empty(),
            "past the retention"
        );
        s.gc(T0 + 700_000 + silence::RETENTION_MS);
        assert!(s.list(0).is_empty(), "forgotten");
    }

    #[test]
    fn an_alert_silenced_after_it_was_told_keeps_its_place_and_alertmanager_keeps_it() {
        let mut st = settings();
        st.receivers[0].webhook_urls = vec!["http://127.0.0.1:1/api/v2/alerts".into()];
        let mut n = Notifier::default();
        let (a, b, c) = (
            alert("Down", "i-1", 0),
            alert("Down", "i-2", 0),
            alert("Down", "i-3", 0),
        );
        let flush = |n: &mut Notifier, t: i64, firing: &[ActiveAlert]| {
            n.observe(&st, t, firing);
            n.flush(&st, t)
        };
        flush(&mut n, 0, &[a.clone(), b.clone()]);
        let got = flush(&mut n, 10_000, &[a.clone(), b.clone()]);
        assert_eq!(got[0].firing.len(), 2);
        post(&mut n.silences, down_i1(20_000, 200_000), 20_000).expect("valid");
        // i-3 starts: told with i-2 only; i-1 neither firing nor resolved in it.
        let got = flush(&mut n, 70_000, &[a.clone(), b.clone(), c.clone()]);
        assert!(!got[0].refresh_only);
        let names: Vec<&str> = got[0]
            .firing
            .iter()
            .filter_map(|x| x.labels.get("instance"))
            .collect();
        assert_eq!(names, ["i-2", "i-3"]);
        assert!(got[0].resolved.is_empty());
        assert_eq!(got[0].muted_told.len(), 1);
        // The Alertmanager refresh keeps i-1 firing there (its end ahead); SNS and Slack get
        // nothing for a refresh.
        let got = flush(&mut n, 130_000, &[a.clone(), b.clone(), c.clone()]);
        assert!(got[0].refresh_only);
        let out = render(&got[0], &st);
        assert_eq!(out.len(), 1, "{out:?}");
        let Delivery::Alertmanager { body, .. } = &out[0] else {
            panic!("{out:?}")
        };
        let i1 = body
            .as_array()
            .and_then(|v| v.iter().find(|x| x["labels"]["instance"] == "i-1"))
            .expect("i-1 refreshed");
        assert!(
            i1["endsAt"].as_str().expect("endsAt") > "1970-01-01T00:02:10Z",
            "{i1}"
        );
        // The silence ends while i-1 still fires: nothing new to tell.
        let got: Vec<_> = flush(&mut n, 250_000, &[a.clone(), b.clone(), c.clone()])
            .into_iter()
            .filter(|x| !x.refresh_only)
            .collect();
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn a_silenced_alert_is_not_notified_until_its_silence_ends() {
        let st = settings();
        let mut n = Notifier::default();
        let a = alert("Down", "i-1", 0);
        let b = alert("Down", "i-2", 0);
        let id = post(&mut n.silences, down_i1(0, 100_000), 0).expect("valid");
        let mut out = Vec::new();
        for t in [0, 10_000, 70_000] {
            n.observe(&st, t, &[a.clone(), b.clone()]);
            out.extend(n.flush(&st, t).into_iter().filter(|x| !x.refresh_only));
        }
        // Only i-2, silenced i-1 left out.
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].firing.len(), 1);
        assert_eq!(out[0].firing[0].labels.get("instance"), Some("i-2"));
        // The silence ends while i-1 still fires: told at the next flush.
        n.observe(&st, 130_000, &[a.clone(), b.clone()]);
        let got: Vec<_> = n
            .flush(&st, 130_000)
            .into_iter()
            .filter(|x| !x.refresh_only)
            .collect();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].firing.len(), 2);
        // Silenced again after it was told: no resolved notice while muted, none for a
        // resolution during the silence, and nothing new when it ends.
        n.silences.expire(&id, 130_000).expect("expire");
        post(&mut n.silences, down_i1(130_000, 300_000), 130_000).expect("again");
        let mut out = Vec::new();
        for t in [190_000, 250_000] {
            n.observe(&st, t, std::slice::from_ref(&b));
            out.extend(n.flush(&st, t).into_iter().filter(|x| !x.refresh_only));
        }
        for t in [310_000, 370_000] {
            n.observe(&st, t, std::slice::from_ref(&b));
            out.extend(n.flush(&st, t).into_iter().filter(|x| !x.refresh_only));
        }
        assert!(out.is_empty(), "{out:?}");
        // Persisted with the notifier.
        let back = Notifier::from_json(&n.to_json()).expect("json");
        assert_eq!(back, n);
    }
}
