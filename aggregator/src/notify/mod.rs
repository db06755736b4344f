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
