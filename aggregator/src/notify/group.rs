//! Grouping: which notifications to send, and when. This part is pure (time comes in as
//! arguments), so it is tested without a clock.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use vigil_rules::persist::{self, Keyed};
use vigil_wire::Labels;

use super::silence::Silences;
use crate::config::Receiver;
use crate::routing::Routing;

/// An alert that fires now, as the notifier sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveAlert {
    #[serde(with = "persist::labels")]
    pub labels: Labels,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(with = "persist::float")]
    pub value: f64,
    pub starts_at: i64,
    /// Receivers named by the rule; empty means every receiver.
    #[serde(default)]
    pub receivers: Vec<String>,
    /// The decision that raised it (a fail-open replacement decision), when there is one.
    #[serde(default)]
    pub decision: Option<Json>,
}

impl Keyed for ActiveAlert {
    type Key = Labels;
    fn key(&self) -> Labels {
        self.labels.clone()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub group_by: Vec<String>,
    pub group_wait_ms: i64,
    pub group_interval_ms: i64,
    pub repeat_interval_ms: i64,
    pub receivers: Vec<Receiver>,
    /// Routes, inhibition and time intervals (`crate::routing`).
    pub routing: Routing,
    /// `[notify.templates]`.
    pub templates: crate::config::Templates,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Entry {
    alert: ActiveAlert,
    resolved_at: Option<i64>,
}

impl Keyed for Entry {
    type Key = Labels;
    fn key(&self) -> Labels {
        self.alert.labels.clone()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Group {
    receiver: String,
    #[serde(with = "persist::labels")]
    labels: Labels,
    #[serde(with = "persist::values")]
    alerts: BTreeMap<Labels, Entry>,
    next_flush: i64,
    last_notified_at: Option<i64>,
    /// The firing alerts of the last notification.
    #[serde(with = "persist::label_set")]
    last_firing: BTreeSet<Labels>,
    /// The time intervals of the route that made the group (`crate::routing`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    mute: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    active: Vec<String>,
}

impl Keyed for Group {
    type Key = (String, Labels);
    fn key(&self) -> (String, Labels) {
        (self.receiver.clone(), self.labels.clone())
    }
}

/// One message to one integration of a receiver, as the outbox keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Delivery {
    Sns {
        topic_arn: String,
        subject: String,
        message: String,
        /// SNS MessageAttributes (String type).
        #[serde(default)]
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
        serde_json::to_value(self).unwrap_or(Json::Null)
    }

    pub fn from_json(v: &Json) -> Option<Delivery> {
        Delivery::deserialize(v).ok()
    }

    /// The delivery as the shared state (DynamoDB) keeps it: a webhook's URL is a secret, so it
    /// is replaced by its receiver's name and the URL's place (`url`: `slack`, or `webhook:<i>`);
    /// `None` when no receiver has the URL any more.
    pub fn to_shared(&self, receivers: &[Receiver]) -> Option<Json> {
        let mut v = self.to_json();
        let (receiver, place) = match self {
            Delivery::Sns { .. } => return Some(v),
            Delivery::Slack { url, .. } => receivers
                .iter()
                .find(|r| r.slack_webhook_url.as_deref() == Some(url.as_str()))
                .map(|r| (r.name.clone(), "slack".to_string()))?,
            Delivery::Alertmanager { url, .. } => receivers.iter().find_map(|r| {
                let i = r.webhook_urls.iter().position(|u| u == url)?;
                Some((r.name.clone(), format!("webhook:{i}")))
            })?,
        };
        v["url"] = Json::String(place);
        v["receiver"] = Json::String(receiver);
        Some(v)
    }

    /// Back from [`Delivery::to_shared`] with the URLs configured here.
    pub fn from_shared(v: &Json, receivers: &[Receiver]) -> Option<Delivery> {
        let mut v = v.clone();
        if let Some(name) = v.get("receiver").and_then(Json::as_str) {
            let r = receivers.iter().find(|r| r.name == name)?;
            let place = v.get("url").and_then(Json::as_str).unwrap_or("");
            let url = match place.strip_prefix("webhook:") {
                Some(i) => r.webhook_urls.get(i.parse::<usize>().ok()?)?.clone(),
                None if place == "slack" => r.slack_webhook_url.clone()?,
                None => return None,
            };
            v["url"] = Json::String(url);
        }
        Delivery::from_json(&v)
    }
}

/// The notifier's memory: groups and the alerts Vigil raises itself (fail-open). Persisted as
/// itself (serde), with the evaluation that changed it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Notifier {
    #[serde(with = "persist::values")]
    groups: BTreeMap<(String, Labels), Group>,
    /// Alerts raised by decisions rather than rules, firing until their decision ends them.
    #[serde(with = "persist::values")]
    pub synthetic: BTreeMap<Labels, ActiveAlert>,
    /// Silences (`/api/v2/silences`): an alert one mutes is left out of its group's notices.
    #[serde(default)]
    pub silences: Silences,
}

/// A notification decided at a flush, before rendering.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub receiver: String,
    pub group_labels: Labels,
    pub firing: Vec<ActiveAlert>,
    /// Resolved alerts with the time they resolved.
    pub resolved: Vec<(ActiveAlert, i64)>,
    /// Alerts told of before and silenced now, with the time they resolved if they did: only
    /// an Alertmanager receiver gets them (see `flush`).
    pub muted_told: Vec<(ActiveAlert, Option<i64>)>,
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
        let all: Vec<String> = s.receivers.iter().map(|r| r.name.clone()).collect();
        for a in firing.iter().chain(self.synthetic.values()) {
            for t in s
                .routing
                .targets(&a.labels, &a.receivers, &s.group_by, &all)
            {
                let key_labels = group_labels(&t.group_by, &a.labels);
                for r in &t.receivers {
                    if !all.contains(r) {
                        continue;
                    }
                    let key = (r.clone(), key_labels.clone(), a.labels.clone());
                    // Two routes to one receiver and group: one group, the first route's.
                    if seen.contains(&key) {
                        continue;
                    }
                    let g = self
                        .groups
                        .entry((r.clone(), key_labels.clone()))
                        .or_insert_with(|| Group {
                            receiver: r.clone(),
                            labels: key_labels.clone(),
                            alerts: BTreeMap::new(),
                            next_flush: now + s.group_wait_ms,
                            last_notified_at: None,
                            last_firing: BTreeSet::new(),
                            mute: Vec::new(),
                            active: Vec::new(),
                        });
                    g.mute.clone_from(&t.mute);
                    g.active.clone_from(&t.active);
                    g.alerts.insert(
                        a.labels.clone(),
                        Entry {
                            alert: a.clone(),
                            resolved_at: None,
                        },
                    );
                    seen.insert(key);
                }
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
        let silences = &self.silences;
        // Every alert firing now, as inhibition sources (silenced ones included, as in
        // Alertmanager).
        let firing_now: BTreeSet<Labels> = self
            .groups
            .values()
            .flat_map(|g| g.alerts.iter())
            .filter(|(_, e)| e.resolved_at.is_none())
            .map(|(l, _)| l.clone())
            .collect();
        let inhibitor = s.routing.inhibitor(&firing_now);
        for (key, g) in self.groups.iter_mut() {
            if g.next_flush > now {
                continue;
            }
            // Outside its route's time: nothing is sent and nothing forgotten; the first flush
            // after tells what changed meanwhile.
            if s.routing.time_muted(&g.mute, &g.active, now).is_some() {
                // An Alertmanager receiver is still re-sent what it was told of, or it would
                // resolve those alerts by itself and fire them again after the interval.
                let told: Vec<ActiveAlert> = g
                    .last_firing
                    .iter()
                    .filter_map(|l| g.alerts.get(l))
                    .filter(|e| e.resolved_at.is_none())
                    .map(|e| e.alert.clone())
                    .collect();
                if !told.is_empty() {
                    out.push(Notification {
                        receiver: g.receiver.clone(),
                        group_labels: g.labels.clone(),
                        firing: told,
                        resolved: Vec::new(),
                        muted_told: Vec::new(),
                        at: now,
                        repeat: false,
                        refresh_only: true,
                    });
                }
                g.next_flush = now + s.group_interval_ms;
                continue;
            }
            // A muted alert (silenced or inhibited) is left out as if it were not there: not
            // notified while it fires, no resolved notice while muted; told of at the first
            // flush after its silence or its inhibiting alert ends.
            let muted: BTreeSet<Labels> = g
                .alerts
                .keys()
                .filter(|l| silences.mutes(l, now) || !inhibitor.inhibited_by(l).is_empty())
                .cloned()
                .collect();
            let firing: BTreeSet<Labels> = g
                .alerts
                .iter()
                .filter(|(l, e)| e.resolved_at.is_none() && !muted.contains(*l))
                .map(|(l, _)| l.clone())
                .collect();
            // A resolved notice only for alerts someone was told were firing.
            let resolved: Vec<(ActiveAlert, i64)> = g
                .alerts
                .iter()
                .filter(|(l, _)| !muted.contains(*l))
                .filter_map(|(l, e)| {
                    let at = e.resolved_at?;
                    g.last_firing.contains(l).then(|| (e.alert.clone(), at))
                })
                .collect();
            // What the last notice said, of the alerts not muted now.
            let told: BTreeSet<Labels> = g.last_firing.difference(&muted).cloned().collect();
            let changed = firing != told || !resolved.is_empty();
            let repeat = !firing.is_empty()
                && g.last_notified_at
                    .is_some_and(|t| now - t >= s.repeat_interval_ms);
            // Told of before, muted now: an Alertmanager receiver keeps getting them (with their
            // end ahead while they fire, the time they resolved once they do), or it would resolve
            // them by itself and fire them again when the silence ends.
            let muted_told: Vec<(ActiveAlert, Option<i64>)> = g
                .last_firing
                .intersection(&muted)
                .filter_map(|l| g.alerts.get(l).map(|e| (e.alert.clone(), e.resolved_at)))
                .collect();
            let has_content = !firing.is_empty() || !resolved.is_empty() || !muted_told.is_empty();
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
                    muted_told,
                    at: now,
                    repeat: repeat && !changed,
                    refresh_only: !notify,
                });
                if notify {
                    g.last_notified_at = Some(now);
                    // A muted alert told of before keeps its place while it still fires, so no
                    // second firing notice comes when its silence ends.
                    let kept: Vec<Labels> = g
                        .last_firing
                        .intersection(&muted)
                        .filter(|l| g.alerts.get(*l).is_some_and(|e| e.resolved_at.is_none()))
                        .cloned()
                        .collect();
                    g.last_firing = firing.clone();
                    g.last_firing.extend(kept);
                }
            }
            // A muted alert that resolved is forgotten without a notice.
            for l in &muted {
                if g.alerts.get(l).is_some_and(|e| e.resolved_at.is_some()) {
                    g.last_firing.remove(l);
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
        serde_json::to_value(self).unwrap_or(Json::Null)
    }

    pub fn from_json(v: &Json) -> Result<Notifier, serde_json::Error> {
        Notifier::deserialize(v)
    }
}
