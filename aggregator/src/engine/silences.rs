//! Run-time controls through the engine. Silences live in the notifier's memory, behind the evaluation's
//! lock, so a change lands between two evaluations, is persisted with the notifier, and in an
//! HA cluster is written to the shared state before the API answers. Pauses live in the rules'
//! evaluation state (the scaling group's or the replacement policy's) and travel the same way.

use std::sync::Arc;

use serde_json::{json, Value as Json};
use vigil_rules::duration::format_timestamp_ms;

use super::{firing_alerts, Engine};
use crate::notify::silence::{self, Refused, Silences};
use crate::notify::ActiveAlert;

/// Where a change was made: alone, or in the shared state of this epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Acting {
    Alone,
    Epoch(u64),
}

/// How long past now a firing alert's `endsAt` is shown (Prometheus sends four resend delays).
const ENDS_AFTER_MS: i64 = 4 * 60_000;

impl Engine {
    /// Reads the silences at `now`.
    pub fn read_silences<R>(&self, f: impl FnOnce(&Silences, i64) -> R) -> R {
        let now = self.parts.clock.now_ms();
        let ev = self.eval.lock().unwrap_or_else(|p| p.into_inner());
        f(&ev.notifier.silences, now)
    }

    /// Changes the silences; the notifier is persisted before this returns, and a cluster's
    /// holder is woken to write its shared state.
    pub fn change_silences<R>(
        &self,
        f: impl FnOnce(&mut Silences, i64) -> Result<R, Refused>,
    ) -> Result<(R, Acting), Refused> {
        let now = self.parts.clock.now_ms();
        let mut ev = self.eval.lock().unwrap_or_else(|p| p.into_inner());
        let acting = self.acting()?;
        let before = ev.notifier.silences.clone();
        let r = match f(&mut ev.notifier.silences, now) {
            Ok(r) => r,
            Err(e) => {
                ev.notifier.silences = before;
                return Err(e);
            }
        };
        if let Err(e) = self.parts.db.lock().save_notifier(&ev.notifier.to_json()) {
            ev.notifier.silences = before;
            return Err(Refused::Unavailable(format!(
                "the silence cannot be saved: {e}"
            )));
        }
        drop(ev);
        self.parts.cluster.state_changed.notify_one();
        Ok((r, acting))
    }

    /// Under the evaluation's lock (which an adoption holds while it replaces the state): the
    /// epoch whose state a change lands in; alone, `Alone`.
    fn acting(&self) -> Result<Acting, Refused> {
        let c = &self.parts.cluster;
        if !c.clustered() {
            return Ok(Acting::Alone);
        }
        // Before its first evaluation a holder has no state to write the change with.
        if self
            .parts
            .db
            .lock()
            .export()
            .map_or(true, |x| x.snapshot.is_none())
        {
            return Err(Refused::Unavailable(
                "nothing evaluated yet since this node took the lease; retry in a second".into(),
            ));
        }
        match c.may_act() {
            Some(e) => Ok(Acting::Epoch(e)),
            None => Err(Refused::Unavailable(
                "this node does not act for the cluster now; retry".into(),
            )),
        }
    }

    /// Changes the rules' evaluation state (a pause set or lifted); saved before this returns,
    /// shown to readers at once, and a cluster's holder is woken to write its shared state.
    pub fn change_state<R>(
        &self,
        f: impl FnOnce(&mut vigil_rules::evaluator::State, i64) -> Result<R, Refused>,
    ) -> Result<(R, Acting), Refused> {
        let now = self.parts.clock.now_ms();
        let mut ev = self.eval.lock().unwrap_or_else(|p| p.into_inner());
        let acting = self.acting()?;
        let before = ev.sim.state.clone();
        let r = match f(&mut ev.sim.state, now) {
            Ok(r) => r,
            Err(e) => {
                ev.sim.state = before;
                return Err(e);
            }
        };
        let saved = serde_json::to_value(&ev.sim.state)
            .map_err(|e| e.to_string())
            .and_then(|j| {
                self.parts
                    .db
                    .lock()
                    .save_rule_state(&j)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = saved {
            ev.sim.state = before;
            return Err(Refused::Unavailable(format!(
                "the change cannot be saved: {e}"
            )));
        }
        self.view.store(Arc::new(super::View::of(&ev)));
        drop(ev);
        self.parts.cluster.state_changed.notify_one();
        Ok((r, acting))
    }

    /// In an HA cluster, writes the shared state now (so a silence the API acknowledges
    /// survives a takeover); alone, nothing to do.
    pub async fn record_now(self: &Arc<Self>, acting: Acting) -> Result<(), String> {
        let Acting::Epoch(epoch) = acting else {
            return Ok(());
        };
        // Still the epoch the change was made in: a node that stepped down and took the lease
        // again since has adopted a state without it.
        if self.parts.cluster.may_act() != Some(epoch) {
            return Err(
                "this node no longer acts for the cluster under the epoch of the change".into(),
            );
        }
        self.share_once(epoch, &mut None, true).await
    }

    /// Every alert firing now, as Alertmanager's `GET /api/v2/alerts` lists them (`gettableAlert`),
    /// with the silences muting each.
    pub fn alerts_v2(&self) -> Vec<(Json, bool)> {
        let now = self.parts.clock.now_ms();
        let rules = self.parts.rules.current();
        let ev = self.eval.lock().unwrap_or_else(|p| p.into_inner());
        let mut alerts = firing_alerts(&rules, &ev.sim.state);
        alerts.extend(ev.notifier.synthetic.values().cloned());
        let all: Vec<String> = self
            .parts
            .notify
            .receivers
            .iter()
            .map(|r| r.name.clone())
            .collect();
        let s = &self.parts.notify;
        let inhibitor = s.routing.inhibitor(alerts.iter().map(|a| &a.labels));
        alerts
            .iter()
            .map(|a| {
                let by = ev.notifier.silences.muting(&a.labels, now);
                let inhibited: Vec<String> = inhibitor
                    .inhibited_by(&a.labels)
                    .into_iter()
                    .map(|l| format!("{:016x}", crate::notify::fingerprint(l)))
                    .collect();
                let targets = s
                    .routing
                    .targets(&a.labels, &a.receivers, &s.group_by, &all);
                // Muted by time only when every route that takes it is.
                let timed: Vec<Vec<String>> = targets
                    .iter()
                    .map(|t| s.routing.muted_by(&t.mute, &t.active, now))
                    .collect();
                let mut muted_by: Vec<String> = if timed.iter().all(|m| !m.is_empty()) {
                    timed.into_iter().flatten().collect()
                } else {
                    Vec::new()
                };
                muted_by.dedup();
                let mut receivers: Vec<String> =
                    targets.into_iter().flat_map(|t| t.receivers).collect();
                receivers.dedup();
                let muted = !by.is_empty() || !inhibited.is_empty() || !muted_by.is_empty();
                let status = Status {
                    silenced_by: &by,
                    inhibited_by: &inhibited,
                    muted_by: &muted_by,
                };
                (alert_json(a, &status, &receivers, now), muted)
            })
            .collect()
    }
}

/// Why an alert is suppressed, as Alertmanager's `alertStatus` says it.
struct Status<'a> {
    silenced_by: &'a [String],
    inhibited_by: &'a [String],
    muted_by: &'a [String],
}

fn alert_json(a: &ActiveAlert, st: &Status<'_>, receivers: &[String], now: i64) -> Json {
    let suppressed =
        !(st.silenced_by.is_empty() && st.inhibited_by.is_empty() && st.muted_by.is_empty());
    let receivers: Vec<Json> = receivers.iter().map(|r| json!({"name": r})).collect();
    let labels: serde_json::Map<String, Json> = a
        .labels
        .iter()
        .map(|l| (l.name.to_string(), json!(l.value)))
        .collect();
    json!({
        "labels": labels,
        "annotations": a.annotations,
        "startsAt": format_timestamp_ms(a.starts_at),
        "endsAt": format_timestamp_ms(now + ENDS_AFTER_MS),
        "updatedAt": format_timestamp_ms(now),
        "fingerprint": format!("{:016x}", crate::notify::fingerprint(&a.labels)),
        "receivers": receivers,
        "generatorURL": "",
        "status": {
            "state": if suppressed { "suppressed" } else { "active" },
            "silencedBy": st.silenced_by,
            "inhibitedBy": st.inhibited_by,
            "mutedBy": st.muted_by,
        },
    })
}

/// Whether `a` passes amtool's filters (`filter` matchers on its labels).
pub fn alert_passes(a: &Json, filter: &[silence::Matcher]) -> bool {
    let labels = vigil_wire::Labels::from_pairs(
        a["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or(""))),
    );
    silence::filter_matches(filter, &labels)
}
