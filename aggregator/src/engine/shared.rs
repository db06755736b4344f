//! The engine's side of an HA cluster: the decision state it shares (written under the holder's
//! epoch after every change while it acts), and the adoption of a previous holder's state before a
//! new holder's first action.

use std::sync::Arc;
use std::time::Duration;

use super::Engine;
use crate::notify::{self, Notifier};
use crate::state;

impl Engine {
    /// The shared state document of an HA cluster: this node's snapshot (state, capacities,
    /// pending actions), the notifier's memory and the outbox, webhook URLs replaced by their
    /// receivers' names. JSON, gzipped when written.
    fn shared_doc(&self) -> Result<(i64, serde_json::Value), String> {
        let state::Export {
            at,
            snapshot,
            notifier,
            outbox,
        } = self.parts.db.lock().export().map_err(|e| e.to_string())?;
        // Nothing evaluated yet (a new holder waiting for the fleet to push again): writing now
        // would replace the state a previous holder left with none.
        if snapshot.is_none() {
            return Err("no evaluation yet".into());
        }
        let receivers = &self.parts.notify.receivers;
        let outbox: Vec<serde_json::Value> = outbox
            .into_iter()
            .filter_map(|q| {
                let d = notify::Delivery::from_json(&q.delivery)?.to_shared(receivers)?;
                Some(
                    serde_json::json!({"created": q.created, "attempts": q.attempts,
                    "next_at": q.next_at, "expires_at": q.expires_at, "delivery": d}),
                )
            })
            .collect();
        Ok((
            at,
            serde_json::json!({"schema": crate::cluster::SCHEMA, "at": at, "snapshot": snapshot,
                "notifier": notifier, "outbox": outbox}),
        ))
    }

    /// Takes over the holder's shared state (or keeps this node's own when the cluster has
    /// none yet), then lets the cluster act.
    fn adopt(&self, epoch: u64, doc: Option<Vec<u8>>) -> Result<(), String> {
        let p = &self.parts;
        let mut ev = self.eval.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bytes) = doc {
            let doc = decode_shared(&bytes)?;
            let snap = doc.get("snapshot").filter(|v| !v.is_null());
            let state: Option<vigil_rules::evaluator::State> = snap
                .map(|v| serde_json::from_value(v["state"].clone()))
                .transpose()
                .map_err(|e| format!("shared state: {e}"))?;
            let notifier = match doc.get("notifier").filter(|n| !n.is_null()) {
                Some(n) => Notifier::from_json(n).map_err(|e| format!("shared notifier: {e}"))?,
                None => Notifier::default(),
            };
            let receivers = &p.notify.receivers;
            let mut outbox = Vec::new();
            for q in doc["outbox"].as_array().into_iter().flatten() {
                let Some(d) = notify::Delivery::from_shared(&q["delivery"], receivers) else {
                    tracing::error!(receiver = %q["delivery"]["receiver"], "a notification of the previous leader names a receiver not configured here; dropped");
                    continue;
                };
                let n = |k: &str| q[k].as_i64().unwrap_or(0);
                outbox.push((
                    d.target().to_string(),
                    state::Queued {
                        created: n("created"),
                        attempts: n("attempts") as u32,
                        next_at: n("next_at"),
                        expires_at: n("expires_at"),
                        delivery: d.to_json(),
                    },
                ));
            }
            let notifier_json = notifier.to_json();
            p.db.lock()
                // The holder's evaluation time stays the snapshot's: the watermark of what is
                // recorded moves on only with this node's own evaluations.
                .import(
                    doc["at"].as_i64().unwrap_or(0),
                    snap,
                    Some(&notifier_json),
                    &outbox,
                )
                .map_err(|e| e.to_string())?;
            if let (Some(snap), Some(state)) = (snap, state) {
                if let Err(e) = p.fleet.restore_pending(&snap["actions"]) {
                    tracing::error!(error = %e, "the previous leader's pending actions are unreadable; none carried over");
                }
                let capacity: Vec<(String, u32)> = snap["capacity"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_u64()? as u32)))
                    .collect();
                ev.sim.state = state;
                for (asg, n) in capacity {
                    ev.sim.start_at(&asg, n);
                }
            }
            ev.notifier = notifier;
            tracing::info!(
                epoch,
                notifications_waiting = outbox.len(),
                "the previous leader's state loaded"
            );
        } else {
            tracing::info!(epoch, "no shared state yet: this node's own stands");
        }
        // Adopted before the lock is let go: an evaluation waiting for it decides as the holder.
        p.cluster.adopted(epoch);
        drop(ev);
        p.cluster.state_changed.notify_one();
        p.outbox.wake.notify_one();
        p.fleet.wake.notify_one();
        Ok(())
    }

    /// In an HA cluster: adopts the shared state whenever this node takes the lease, and
    /// writes it (under the epoch) after every change while it acts.
    pub async fn run_cluster(self: Arc<Self>) {
        let c = self.parts.cluster.clone();
        if !c.clustered() {
            return;
        }
        tokio::spawn(self.clone().share());
        let mut failures = 0;
        loop {
            if let Some(epoch) = c.needs_adoption() {
                let outcome = match c.claim_state(epoch).await {
                    Ok(doc) => {
                        let me = self.clone();
                        match tokio::task::spawn_blocking(move || me.adopt(epoch, doc)).await {
                            Ok(r) => r,
                            Err(e) => Err(format!("adoption task: {e}")),
                        }
                    }
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(()) => failures = 0,
                    Err(e) => {
                        failures += 1;
                        tracing::error!(error = %e, failures, "cannot take over the shared state; not acting yet");
                        // Unreadable state (a newer release's, say): let another node try.
                        if failures >= 3 {
                            c.yield_lease("the shared state cannot be taken over").await;
                            failures = 0;
                        }
                    }
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), c.promoted.notified()).await;
        }
    }

    /// Writes the shared state while this node acts, whenever it changed. What an evaluation
    /// decided (notifications, capacity changes) is carried out only once the shared state
    /// holds it, so a successor carries out what this node could not, and repeats nothing it
    /// decided (only an effect made in the moment between its call and the next write).
    async fn share(self: Arc<Self>) {
        let c = self.parts.cluster.clone();
        let mut last: Option<(u64, serde_json::Value)> = None;
        let mut failures = 0;
        loop {
            let _ = tokio::time::timeout(Duration::from_secs(5), c.state_changed.notified()).await;
            let Some(epoch) = c.may_act() else {
                continue;
            };
            match self.share_once(epoch, &mut last, false).await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, failures, "cannot write the shared state; retrying");
                    // A holder whose state cannot be shared cannot act: let another node try.
                    if failures >= 5 {
                        c.yield_lease("the shared state cannot be written").await;
                        failures = 0;
                    }
                }
            }
        }
    }

    /// Writes the shared state under `epoch` if it changed since `last`. `required`: nothing to
    /// write (no evaluation yet) is an error, not success.
    pub(super) async fn share_once(
        self: &Arc<Self>,
        epoch: u64,
        last: &mut Option<(u64, serde_json::Value)>,
        required: bool,
    ) -> Result<(), String> {
        let c = &self.parts.cluster;
        let _one_writer = self.share_lock.lock().await;
        let me = self.clone();
        let (at, doc) = match tokio::task::spawn_blocking(move || me.shared_doc()).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) if required => return Err(e),
            Err(e) if required => return Err(e.to_string()),
            // Nothing evaluated yet: nothing to share.
            Ok(Err(_)) | Err(_) => return Ok(()),
        };
        if last.as_ref().is_some_and(|(e, d)| *e == epoch && *d == doc) {
            return Ok(());
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let bytes = std::io::Write::write_all(&mut gz, doc.to_string().as_bytes())
            .and_then(|()| gz.finish())
            .map_err(|e| e.to_string())?;
        // Past one DynamoDB item's 400 KB it is written in parts (`cluster/parts.rs`).
        c.write_state(epoch, &bytes).await?;
        // What this evaluation decided may be carried out now.
        c.recorded_through(epoch, at);
        self.parts.outbox.wake.notify_one();
        self.parts.fleet.wake.notify_one();
        *last = Some((epoch, doc));
        Ok(())
    }

    /// A graceful stop of the holder: once its calls in flight have ended, the state as it is
    /// (deliveries made since the last write included) is written for the successor.
    pub async fn share_final(self: &Arc<Self>, epoch: u64) {
        match self.share_once(epoch, &mut None, false).await {
            Ok(()) => tracing::info!(epoch, "shared state written for the successor"),
            Err(e) => tracing::warn!(error = %e, "cannot write the shared state at the stop"),
        }
    }
}

/// The most a shared state document may decompress to: ten parts of gzipped JSON are far
/// smaller; a document past it is refused, not followed into memory.
const MAX_SHARED_TEXT: u64 = 48 << 20;

/// The shared state document from its gzipped bytes (as the cluster's table holds them).
pub fn decode_shared(bytes: &[u8]) -> Result<serde_json::Value, String> {
    use std::io::Read;
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes)
        .take(MAX_SHARED_TEXT + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("shared state: {e}"))?;
    if text.len() as u64 > MAX_SHARED_TEXT {
        return Err(format!(
            "shared state: decompresses past {MAX_SHARED_TEXT} bytes"
        ));
    }
    serde_json::from_str(&text).map_err(|e| format!("shared state: {e}"))
}
