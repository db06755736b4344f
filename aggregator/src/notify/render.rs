//! Rendering a notification for SNS (subject and JSON body within SNS's limits), Slack (blocks)
//! and the Alertmanager v2 API.

use std::collections::BTreeMap;

use serde_json::{json, Value as Json};
use vigil_rules::duration::format_timestamp_ms;
use vigil_wire::Labels;

use vigil_rules::template::{Template, Val};

use super::finite;
use super::group::{ActiveAlert, Delivery, Notification, Settings};
use crate::state::labels_json;

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

/// Labels or annotations as a template's map.
fn kv<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Val {
    Val::strings(pairs)
}

/// A notification as `[notify.templates]` see it: Alertmanager's data (`.Receiver`, `.Status`,
/// `.Alerts` with `.Firing`/`.Resolved`, `.GroupLabels`, `.CommonLabels`,
/// `.CommonAnnotations`, `.ExternalURL`), each alert with Vigil's `.Value` besides.
fn template_data(n: &Notification, s: &Settings, common: &Labels, status: &str) -> Val {
    let alert = |a: &ActiveAlert, status: &str, ends: Option<i64>| {
        Val::obj([
            ("Status", Val::Str(status.into())),
            ("Labels", kv(a.labels.iter().map(|l| (l.name, l.value)))),
            (
                "Annotations",
                kv(a.annotations.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            ),
            ("StartsAt", Val::Str(format_timestamp_ms(a.starts_at))),
            (
                "EndsAt",
                Val::Str(ends.map(format_timestamp_ms).unwrap_or_default()),
            ),
            ("GeneratorURL", Val::Str(String::new())),
            (
                "Fingerprint",
                Val::Str(format!("{:016x}", super::fingerprint(&a.labels))),
            ),
            ("Value", Val::Num(a.value)),
        ])
    };
    let alerts: Vec<&ActiveAlert> = n
        .firing
        .iter()
        .chain(n.resolved.iter().map(|(a, _)| a))
        .collect();
    let common_annotations: Vec<(&str, &str)> = alerts
        .first()
        .map(|first| {
            first
                .annotations
                .iter()
                .filter(|(k, v)| alerts.iter().all(|a| a.annotations.get(*k) == Some(*v)))
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect()
        })
        .unwrap_or_default();
    Val::obj([
        ("Receiver", Val::Str(n.receiver.clone())),
        ("Status", Val::Str(status.into())),
        (
            "Alerts",
            Val::List(
                n.firing
                    .iter()
                    .map(|a| alert(a, "firing", None))
                    .chain(
                        n.resolved
                            .iter()
                            .map(|(a, at)| alert(a, "resolved", Some(*at))),
                    )
                    .collect(),
            ),
        ),
        (
            "GroupLabels",
            kv(n.group_labels.iter().map(|l| (l.name, l.value))),
        ),
        ("CommonLabels", kv(common.iter().map(|l| (l.name, l.value)))),
        ("CommonAnnotations", kv(common_annotations.into_iter())),
        ("ExternalURL", Val::Str(s.templates.external_url.clone())),
    ])
}

/// A template's text; `None` (logged) when it fails on this notification or makes nothing (SNS
/// and Slack refuse an empty subject, message or block).
fn try_template(
    t: &Template,
    name: &str,
    data: &std::cell::OnceCell<Val>,
    make: impl FnOnce() -> Val,
) -> Option<String> {
    match t.render_val(data.get_or_init(make)) {
        Ok(text) if !text.trim().is_empty() => Some(text),
        Ok(_) => {
            tracing::warn!(
                template = name,
                "notification template made nothing; sending Vigil's own text instead"
            );
            None
        }
        Err(e) => {
            tracing::warn!(template = name, error = %e, "notification template failed; sending Vigil's own text instead");
            None
        }
    }
}

/// A template's text, or `default` when it has none or [`try_template`] gives none.
fn templated(
    t: &Option<Template>,
    name: &str,
    data: &std::cell::OnceCell<Val>,
    make: impl FnOnce() -> Val,
    default: impl FnOnce() -> String,
) -> String {
    t.as_ref()
        .and_then(|t| try_template(t, name, data, make))
        .unwrap_or_else(default)
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
        let data = std::cell::OnceCell::new();
        let make = || template_data(n, s, &common, status);
        let t = &s.templates;
        if let Some(topic) = &r.sns_topic_arn {
            let message = || {
                sns_message(json!({
                    "version": "1",
                    "status": status,
                    "receiver": r.name,
                    "repeat": n.repeat,
                    "groupLabels": labels_json(&n.group_labels),
                    "commonLabels": labels_json(&common),
                    "alerts": alerts,
                    "time": format_timestamp_ms(n.at),
                }))
            };
            let message = match &t.sns_message {
                Some(_) => cut(
                    templated(&t.sns_message, "sns_message", &data, make, message),
                    SNS_MAX_MESSAGE,
                ),
                None => message(),
            };
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
                subject: sns_subject(&templated(
                    &t.sns_subject,
                    "sns_subject",
                    &data,
                    make,
                    || title(n),
                )),
                message,
                attributes,
            });
        }
        if let Some(url) = &r.slack_webhook_url {
            out.push(Delivery::Slack {
                url: url.clone(),
                body: slack_body(
                    n,
                    &templated(&t.slack_title, "slack_title", &data, make, || title(n)),
                    t.slack_text
                        .as_ref()
                        .and_then(|t| try_template(t, "slack_text", &data, make)),
                ),
            });
        }
    }
    if !r.webhook_urls.is_empty() {
        // Prometheus re-sends firing alerts with endsAt a few intervals ahead, so that an
        // Alertmanager resolves them by itself if the sender goes away; resolved ones carry
        // the time they resolved.
        let ahead = n.at + 4 * s.group_interval_ms.max(60_000);
        let alerts: Vec<Json> = n
            .firing
            .iter()
            .map(|a| am_alert(a, ahead))
            .chain(n.resolved.iter().map(|(a, at)| am_alert(a, *at)))
            .chain(
                n.muted_told
                    .iter()
                    .map(|(a, resolved)| am_alert(a, resolved.unwrap_or(ahead))),
            )
            .collect();
        // Every peer of an Alertmanager cluster gets every alert; they deduplicate.
        for url in &r.webhook_urls {
            out.push(Delivery::Alertmanager {
                url: url.clone(),
                body: Json::Array(alerts.clone()),
            });
        }
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

/// `text` cut to at most `max` bytes, on a character boundary.
fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut at = max;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
    }
    text
}

/// Slack's message: `head` as its header, then a section per alert, or the `text` a template
/// made, in one section.
fn slack_body(n: &Notification, head: &str, text: Option<String>) -> Json {
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": head.chars().take(150).collect::<String>()}}),
    ];
    if let Some(text) = text {
        // Slack's limit is 3,000 characters a section.
        let text: String = text.chars().take(2900).collect();
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": text}}));
        return json!({"text": head, "blocks": blocks});
    }
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
