//! Notifications the way Alertmanager groups them: alerts are put into groups by receiver and the
//! `group_by` labels; a new group waits `group_wait` before its first notification, then is looked
//! at every `group_interval` and notified only when its firing set changed or an alert resolved;
//! an unchanged firing group is repeated every `repeat_interval`. A notified alert that stops
//! firing gets one resolved notice.
//!
//! This module is pure (time comes in as arguments): it decides what to send and renders it for
//! SNS, Slack and the Alertmanager v2 API. The outbox (SQLite) and the delivery worker make sure
//! what it decides is sent once, through restarts and outages. The groups' memory of what was
//! notified is persisted with the outbox rows in one transaction, so a restart between firing
//! and resolving sends no duplicate.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value as Json};
use vigil_rules::duration::format_timestamp_ms;
use vigil_wire::Labels;

use crate::config::Receiver;
use crate::state::{labels_from, labels_json, string_map};

/// An alert that fires now, as the notifier sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveAlert {
    pub labels: Labels,
    pub annotations: BTreeMap<String, String>,
    pub value: f64,
    pub starts_at: i64,
    /// Receivers named by the rule; empty means every receiver.
    pub receivers: Vec<String>,
    /// The decision that raised it (a fail-open replacement decision), when there is one.
    pub decision: Option<Json>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub group_by: Vec<String>,
    pub group_wait_ms: i64,
    pub group_interval_ms: i64,
    pub repeat_interval_ms: i64,
    pub receivers: Vec<Receiver>,
}

#[derive(Debug, Clone, PartialEq)]
struct Entry {
    alert: ActiveAlert,
    resolved_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
struct Group {
    receiver: String,
    labels: Labels,
    alerts: BTreeMap<Labels, Entry>,
    next_flush: i64,
    last_notified_at: Option<i64>,
    /// The firing alerts of the last notification.
    last_firing: BTreeSet<Labels>,
}

/// One message to one integration of a receiver.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    Sns {
        topic_arn: String,
        subject: String,
        message: String,
        /// SNS MessageAttributes (String type).
        attributes: BTreeMap<String, String>,
    },
    Slack {
        url: String,
        body: Json,
    },
    /// Alertmanager v2 `POST /api/v2/alerts`.
    Alertmanager {
        url: String,
        body: Json,
    },
}

impl Delivery {
    pub fn kind(&self) -> &'static str {
        match self {
            Delivery::Sns { .. } => "sns",
            Delivery::Slack { .. } => "slack",
            Delivery::Alertmanager { .. } => "alertmanager",
        }
    }

    /// Where it goes: deliveries to one target keep their order.
    pub fn target(&self) -> &str {
        match self {
            Delivery::Sns { topic_arn, .. } => topic_arn,
            Delivery::Slack { url, .. } | Delivery::Alertmanager { url, .. } => url,
        }
    }

    pub fn to_json(&self) -> Json {
        match self {
            Delivery::Sns {
                topic_arn,
                subject,
                message,
                attributes,
            } => {
                json!({"kind": "sns", "topic_arn": topic_arn, "subject": subject, "message": message, "attributes": attributes})
            }
            Delivery::Slack { url, body } => json!({"kind": "slack", "url": url, "body": body}),
            Delivery::Alertmanager { url, body } => {
                json!({"kind": "alertmanager", "url": url, "body": body})
            }
        }
    }

    pub fn from_json(v: &Json) -> Option<Delivery> {
        let s = |k: &str| v[k].as_str().map(str::to_string);
        Some(match v["kind"].as_str()? {
            "sns" => Delivery::Sns {
                topic_arn: s("topic_arn")?,
                subject: s("subject")?,
                message: s("message")?,
                attributes: v["attributes"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            "slack" => Delivery::Slack {
                url: s("url")?,
                body: v["body"].clone(),
            },
            "alertmanager" => Delivery::Alertmanager {
                url: s("url")?,
                body: v["body"].clone(),
            },
            _ => return None,
        })
    }
}

/// The notifier's memory: groups and the alerts Vigil raises itself (fail-open).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Notifier {
    groups: BTreeMap<(String, Labels), Group>,
    /// Alerts raised by decisions rather than rules, firing until their decision ends them.
    pub synthetic: BTreeMap<Labels, ActiveAlert>,
}

/// A notification decided at a flush, before rendering.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub receiver: String,
    pub group_labels: Labels,
    pub firing: Vec<ActiveAlert>,
    /// Resolved alerts with the time they resolved.
    pub resolved: Vec<(ActiveAlert, i64)>,
    pub at: i64,
    /// True when this is a repeat of an unchanged firing group.
    pub repeat: bool,
    /// True when only an Alertmanager refresh is due (nothing changed, no repeat yet): an
    /// Alertmanager needs its firing alerts re-sent before their `endsAt`, and dedups itself.
    pub refresh_only: bool,
}

fn group_labels(group_by: &[String], l: &Labels) -> Labels {
    if group_by.iter().any(|g| g == "...") {
        return l.clone();
    }
    l.keep_only(group_by)
}

impl Notifier {
    /// Takes the alerts firing now (the full set). Alerts that were firing and are not any
    /// more are marked resolved.
    pub fn observe(&mut self, s: &Settings, now: i64, firing: &[ActiveAlert]) {
        let mut seen: BTreeSet<(String, Labels, Labels)> = BTreeSet::new();
        for a in firing.iter().chain(self.synthetic.values()) {
            let key_labels = group_labels(&s.group_by, &a.labels);
            for r in &s.receivers {
                if !a.receivers.is_empty() && !a.receivers.contains(&r.name) {
                    continue;
                }
                let g = self
                    .groups
                    .entry((r.name.clone(), key_labels.clone()))
                    .or_insert_with(|| Group {
                        receiver: r.name.clone(),
                        labels: key_labels.clone(),
                        alerts: BTreeMap::new(),
                        next_flush: now + s.group_wait_ms,
                        last_notified_at: None,
                        last_firing: BTreeSet::new(),
                    });
                g.alerts.insert(
                    a.labels.clone(),
                    Entry {
                        alert: a.clone(),
                        resolved_at: None,
                    },
                );
                seen.insert((r.name.clone(), key_labels.clone(), a.labels.clone()));
            }
        }
        for ((recv, gl), g) in self.groups.iter_mut() {
            for (l, e) in g.alerts.iter_mut() {
                if e.resolved_at.is_none() && !seen.contains(&(recv.clone(), gl.clone(), l.clone()))
                {
                    e.resolved_at = Some(now);
                }
            }
        }
    }

    /// The notifications due at `now`; updates the groups as if they were sent (the caller
    /// persists both in one transaction).
    pub fn flush(&mut self, s: &Settings, now: i64) -> Vec<Notification> {
        let mut out = Vec::new();
        let mut empty = Vec::new();
        for (key, g) in self.groups.iter_mut() {
            if g.next_flush > now {
                continue;
            }
            let firing: BTreeSet<Labels> = g
                .alerts
                .iter()
                .filter(|(_, e)| e.resolved_at.is_none())
                .map(|(l, _)| l.clone())
                .collect();
            // A resolved notice only for alerts someone was told were firing.
            let resolved: Vec<(ActiveAlert, i64)> = g
                .alerts
                .iter()
                .filter_map(|(l, e)| {
                    let at = e.resolved_at?;
                    g.last_firing.contains(l).then(|| (e.alert.clone(), at))
                })
                .collect();
            let changed = firing != g.last_firing || !resolved.is_empty();
            let repeat = !firing.is_empty()
                && g.last_notified_at
                    .is_some_and(|t| now - t >= s.repeat_interval_ms);
            let has_content = !firing.is_empty() || !resolved.is_empty();
            if has_content {
                let notify = (changed && (!firing.is_empty() || !resolved.is_empty())) || repeat;
                out.push(Notification {
                    receiver: g.receiver.clone(),
                    group_labels: g.labels.clone(),
                    firing: firing
                        .iter()
                        .filter_map(|l| g.alerts.get(l).map(|e| e.alert.clone()))
                        .collect(),
                    resolved,
                    at: now,
                    repeat: repeat && !changed,
                    refresh_only: !notify,
                });
                if notify {
                    g.last_notified_at = Some(now);
                    g.last_firing = firing.clone();
                }
            }
            g.alerts.retain(|_, e| e.resolved_at.is_none());
            if g.alerts.is_empty() {
                empty.push(key.clone());
            }
            g.next_flush = now + s.group_interval_ms;
        }
        for k in empty {
            self.groups.remove(&k);
        }
        out
    }

    #[cfg(test)]
    pub fn is_idle(&self) -> bool {
        self.groups.is_empty()
    }

    pub fn to_json(&self) -> Json {
        let alert = |a: &ActiveAlert| {
            json!({"labels": labels_json(&a.labels), "annotations": a.annotations, "value": finite(a.value),
                "starts_at": a.starts_at, "receivers": a.receivers, "decision": a.decision})
        };
        json!({
            "groups": self.groups.values().map(|g| json!({
                "receiver": g.receiver,
                "labels": labels_json(&g.labels),
                "next_flush": g.next_flush,
                "last_notified_at": g.last_notified_at,
                "last_firing": g.last_firing.iter().map(labels_json).collect::<Vec<_>>(),
                "alerts": g.alerts.values().map(|e| json!({"alert": alert(&e.alert), "resolved_at": e.resolved_at})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "synthetic": self.synthetic.values().map(alert).collect::<Vec<_>>(),
        })
    }

    pub fn from_json(v: &Json) -> Option<Notifier> {
        fn alert(v: &Json) -> Option<ActiveAlert> {
            Some(ActiveAlert {
                labels: labels_from(&v["labels"])?,
                annotations: string_map(&v["annotations"]),
                value: v["value"].as_f64().unwrap_or(f64::NAN),
                starts_at: v["starts_at"].as_i64()?,
                receivers: v["receivers"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
                decision: Some(v["decision"].clone()).filter(|d| !d.is_null()),
            })
        }
        let mut n = Notifier::default();
        for g in v["groups"].as_array()? {
            let labels = labels_from(&g["labels"])?;
            let receiver = g["receiver"].as_str()?.to_string();
            let mut alerts = BTreeMap::new();
            for e in g["alerts"].as_array()? {
                let a = alert(&e["alert"])?;
                alerts.insert(
                    a.labels.clone(),
                    Entry {
                        alert: a,
                        resolved_at: e["resolved_at"].as_i64(),
                    },
                );
            }
            n.groups.insert(
                (receiver.clone(), labels.clone()),
                Group {
                    receiver,
                    labels,
                    alerts,
                    next_flush: g["next_flush"].as_i64()?,
                    last_notified_at: g["last_notified_at"].as_i64(),
                    last_firing: g["last_firing"]
                        .as_array()?
                        .iter()
                        .filter_map(labels_from)
                        .collect(),
                },
            );
        }
        for a in v["synthetic"].as_array()? {
            let a = alert(a)?;
            n.synthetic.insert(a.labels.clone(), a);
        }
        Some(n)
    }
}

fn finite(v: f64) -> Json {
    if v.is_finite() {
        json!(v)
    } else {
        json!(v.to_string())
    }
}

/// SNS wants subjects of fewer than 100 printable ASCII characters, no line breaks.
pub fn sns_subject(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                ' '
            }
        })
        .collect();
    let clean = clean.trim();
    if clean.len() < 100 {
        clean.to_string()
    } else {
        // ASCII only by now: any byte is a character boundary.
        format!("{}...", &clean[..96])
    }
}

fn title(n: &Notification) -> String {
    let name = n
        .group_labels
        .get("alertname")
        .or_else(|| n.firing.first().and_then(|a| a.labels.get("alertname")))
        .or_else(|| {
            n.resolved
                .first()
                .and_then(|(a, _)| a.labels.get("alertname"))
        })
        .unwrap_or("alerts")
        .to_string();
    let rest: Vec<&str> = n
        .group_labels
        .iter()
        .filter(|l| l.name != "alertname")
        .map(|l| l.value)
        .collect();
    let status = if n.firing.is_empty() {
        format!("[RESOLVED] {name}")
    } else {
        format!("[FIRING:{}] {name}", n.firing.len())
    };
    if rest.is_empty() {
        status
    } else {
        format!("{status} ({})", rest.join(" "))
    }
}

/// Labels shared by every alert of the notification.
fn common_labels(alerts: &[&ActiveAlert]) -> Labels {
    let Some(first) = alerts.first() else {
        return Labels::empty();
    };
    first
        .labels
        .filter(|l| alerts.iter().all(|a| a.labels.get(l.name) == Some(l.value)))
}

fn alert_json(a: &ActiveAlert, status: &str, ends_at: Option<i64>) -> Json {
    json!({
        "status": status,
        "labels": labels_json(&a.labels),
        "annotations": a.annotations,
        "value": finite(a.value),
        "startsAt": format_timestamp_ms(a.starts_at),
        "endsAt": ends_at.map(format_timestamp_ms),
        "decision": a.decision,
    })
}

/// Renders a notification for every integration of its receiver. `refresh_only`
/// notifications go to Alertmanager webhooks only.
pub fn render(n: &Notification, s: &Settings) -> Vec<Delivery> {
    let Some(r) = s.receivers.iter().find(|r| r.name == n.receiver) else {
        return Vec::new();
    };
    let all: Vec<&ActiveAlert> = n
        .firing
        .iter()
        .chain(n.resolved.iter().map(|(a, _)| a))
        .collect();
    let common = common_labels(&all);
    let status = if n.firing.is_empty() {
        "resolved"
    } else {
        "firing"
    };
    let mut out = Vec::new();
    if !n.refresh_only {
        let alerts: Vec<Json> = n
            .firing
            .iter()
            .map(|a| alert_json(a, "firing", None))
            .chain(
                n.resolved
                    .iter()
                    .map(|(a, at)| alert_json(a, "resolved", Some(*at))),
            )
            .collect();
        if let Some(topic) = &r.sns_topic_arn {
            let message = sns_message(json!({
                "version": "1",
                "status": status,
                "receiver": r.name,
                "repeat": n.repeat,
                "groupLabels": labels_json(&n.group_labels),
                "commonLabels": labels_json(&common),
                "alerts": alerts,
                "time": format_timestamp_ms(n.at),
            }));
            let mut attributes = BTreeMap::new();
            let severity = common
                .get("severity")
                .or_else(|| all.iter().find_map(|a| a.labels.get("severity")));
            if let Some(sev) = severity.filter(|v| !v.is_empty()) {
                attributes.insert("severity".to_string(), sev.to_string());
            }
            if let Some(asg) = common.get("asg").filter(|v| !v.is_empty()) {
                attributes.insert("asg".to_string(), asg.to_string());
            }
            attributes.insert("status".to_string(), status.to_string());
            out.push(Delivery::Sns {
                topic_arn: topic.clone(),
                subject: sns_subject(&title(n)),
                message,
                attributes,
            });
        }
        if let Some(url) = &r.slack_webhook_url {
            out.push(Delivery::Slack {
                url: url.clone(),
                body: slack_body(n),
            });
        }
    }
    if let Some(url) = &r.webhook_url {
        // Prometheus re-sends firing alerts with endsAt a few intervals ahead, so that an
        // Alertmanager resolves them by itself if the sender goes away; resolved ones carry
        // the time they resolved.
        let ahead = n.at + 4 * s.group_interval_ms.max(60_000);
        let alerts: Vec<Json> = n
            .firing
            .iter()
            .map(|a| am_alert(a, ahead))
            .chain(n.resolved.iter().map(|(a, at)| am_alert(a, *at)))
            .collect();
        out.push(Delivery::Alertmanager {
            url: url.clone(),
            body: Json::Array(alerts),
        });
    }
    out
}

/// SNS takes messages of at most 256 KiB: a group too large to fit keeps as many alerts as fit
/// and says how many were left out (`truncatedAlerts`).
pub const SNS_MAX_MESSAGE: usize = 256 * 1024;

fn sns_message(mut m: Json) -> String {
    let text = m.to_string();
    if text.len() <= SNS_MAX_MESSAGE {
        return text;
    }
    let all = m["alerts"].as_array().cloned().unwrap_or_default();
    let (mut lo, mut hi) = (0, all.len());
    // The most alerts that fit, by bisection.
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        m["alerts"] = Json::Array(all[..mid].to_vec());
        m["truncatedAlerts"] = json!(all.len() - mid);
        if m.to_string().len() <= SNS_MAX_MESSAGE {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    m["alerts"] = Json::Array(all[..lo].to_vec());
    m["truncatedAlerts"] = json!(all.len() - lo);
    m.to_string()
}

fn am_alert(a: &ActiveAlert, ends_at: i64) -> Json {
    json!({
        "labels": labels_json(&a.labels),
        "annotations": a.annotations,
        "startsAt": format_timestamp_ms(a.starts_at),
        "endsAt": format_timestamp_ms(ends_at),
        "generatorURL": "",
    })
}

fn slack_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn slack_body(n: &Notification) -> Json {
    let head = title(n);
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": head.chars().take(150).collect::<String>()}}),
    ];
    let lines = n
        .firing
        .iter()
        .map(|a| (a, "🔥", None))
        .chain(n.resolved.iter().map(|(a, at)| (a, "✅", Some(*at))));
    // Slack allows 50 blocks; keep room for the header and the footer.
    let mut shown = 0;
    for (a, mark, resolved) in lines {
        if shown == 45 {
            break;
        }
        shown += 1;
        let summary = a
            .annotations
            .get("summary")
            .or_else(|| a.annotations.get("description"))
            .cloned()
            .unwrap_or_else(|| a.labels.get("alertname").unwrap_or("").to_string());
        let labels: Vec<String> = a
            .labels
            .iter()
            .filter(|l| l.name != "alertname")
            .map(|l| format!("`{}={}`", l.name, slack_text(l.value)))
            .collect();
        let when = match resolved {
            Some(at) => format!("resolved {}", format_timestamp_ms(at)),
            None => format!("since {}", format_timestamp_ms(a.starts_at)),
        };
        let mut text = format!(
            "{mark} *{}*\n{}\n{when}",
            slack_text(&summary),
            labels.join(" ")
        );
        // Slack's limit is 3,000 characters a section; cut on a character boundary.
        if let Some((cut, _)) = text.char_indices().nth(2900) {
            text.truncate(cut);
        }
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": text}}));
    }
    let total = n.firing.len() + n.resolved.len();
    if total > shown {
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("and {} more", total - shown)}]}));
    }
    json!({"text": head, "blocks": blocks})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            group_by: vec!["alertname".into(), "asg".into()],
            group_wait_ms: 10_000,
            group_interval_ms: 60_000,
            repeat_interval_ms: 3_600_000,
            receivers: vec![Receiver {
                name: "oncall".into(),
                sns_topic_arn: Some("arn:aws:sns:us-east-1:123456789012:oncall".into()),
                slack_webhook_url: Some("http://127.0.0.1:1/slack".into()),
                webhook_url: None,
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
    fn drive(
        n: &mut Notifier,
        s: &Settings,
        steps: &[(i64, Vec<ActiveAlert>)],
    ) -> Vec<Notification> {
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
            webhook_url: None,
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
}
