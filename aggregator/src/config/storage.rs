//! `[storage]`: the window's retention and where state and the window's log live.

use std::path::PathBuf;

use vigil_config::tomlread::{Doc, Obj};

use super::Config;

/// The window kept on disk (`[storage] wal`, `wal_fsync`, `checkpoint_interval`): a log of
/// what was ingested under `<state_dir>/wal`, and checkpoints of the window beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct Wal {
    pub enabled: bool,
    /// `fsync` each request's record before answering (power loss); without it a record is in
    /// the kernel's page cache when the 204 goes (a `kill -9` loses nothing).
    pub fsync: bool,
    pub checkpoint_interval_ms: i64,
}

impl Default for Wal {
    fn default() -> Self {
        Wal {
            enabled: true,
            fsync: false,
            checkpoint_interval_ms: 5 * 60_000,
        }
    }
}

pub(super) fn parse(doc: &mut Doc<'_>, mut s: Obj<'_, '_>, c: &mut Config) {
    c.retention_ms = s.positive_duration(doc, "retention", c.retention_ms);
    c.stale_after_ms = s.positive_duration(doc, "stale_after", c.stale_after_ms);
    if let Some(d) = s.str(doc, "state_dir") {
        c.state_dir = PathBuf::from(d.value);
    }
    if let Some(b) = s.bool(doc, "wal") {
        c.wal.enabled = b.value;
    }
    if let Some(b) = s.bool(doc, "wal_fsync") {
        c.wal.fsync = b.value;
    }
    c.wal.checkpoint_interval_ms =
        s.positive_duration(doc, "checkpoint_interval", c.wal.checkpoint_interval_ms);
    s.finish(doc);
}
