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

mod group;
mod outbox;
mod render;
#[cfg(test)]
mod routing_tests;
pub mod silence;
#[cfg(test)]
mod tests;

pub use group::{ActiveAlert, Delivery, Notifier, Settings};
pub use outbox::{Outbox, NOTIFICATION_TTL_MS};
pub use render::render;

/// A float in JSON: Vigil's one spelling (a number when finite, else `"NaN"`, `"+Inf"`,
/// `"-Inf"`), shared with the state snapshots.
fn finite(v: f64) -> serde_json::Value {
    vigil_rules::persist::float::to_json(v)
}

/// A stable fingerprint of a label set (FNV-1a over names and values, as Prometheus's model
/// hashes them, separated by 0xff).
pub fn fingerprint(labels: &vigil_wire::Labels) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for l in labels.iter() {
        for b in l
            .name
            .bytes()
            .chain([0xff])
            .chain(l.value.bytes())
            .chain([0xff])
        {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}
