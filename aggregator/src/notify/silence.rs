//! Silences with Alertmanager's meaning: a silence mutes every alert its matchers all match
//! between `startsAt` and `endsAt`. A muted alert sends no notice; if it still fires when the
//! silence ends, its notice goes out at the group's next flush. Silences live in the notifier's
//! memory, so they persist with it (SQLite) and travel in an HA cluster's shared state.
//!
//! The API's shapes are Alertmanager v2's (`postableSilence`, `gettableSilence`), so `amtool
//! silence add|query|expire` works unchanged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};
use vigil_config::duration::{format_timestamp_ms, parse_timestamp_ms};
use vigil_wire::Labels;

pub use crate::matcher::{matches_all, parse_filter, Matcher};

/// How long an expired silence is still listed (Alertmanager's `--data.retention` default).
pub const RETENTION_MS: i64 = 120 * 3_600_000;
/// The most silences kept: each is matched against every alert at every flush.
pub const MAX_SILENCES: usize = 10_000;

/// The longest matcher value, comment or author kept (each silence travels in the shared state).
pub const MAX_TEXT: usize = 1024;
/// The most matchers in one silence.
pub const MAX_MATCHERS: usize = 64;
/// One silence, as stored (times in Unix ms).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    pub matchers: Vec<Matcher>,
    pub starts_at: i64,
    pub ends_at: i64,
    pub updated_at: i64,
    pub created_by: String,
    pub comment: String,
}

impl Silence {
    pub fn state(&self, now: i64) -> &'static str {
        if now >= self.ends_at {
            "expired"
        } else if now < self.starts_at {
            "pending"
        } else {
            "active"
        }
    }

    /// Whether every matcher matches `labels` (a missing label is the empty value).
    pub fn matches(&self, labels: &Labels) -> bool {
        matches_all(&self.matchers, labels)
    }

    /// Alertmanager's `gettableSilence`.
    pub fn to_api(&self, now: i64) -> Json {
        json!({
            "id": self.id,
            "status": {"state": self.state(now)},
            "updatedAt": format_timestamp_ms(self.updated_at),
            "matchers": self.matchers,
            "startsAt": format_timestamp_ms(self.starts_at),
            "endsAt": format_timestamp_ms(self.ends_at),
            "createdBy": self.created_by,
            "comment": self.comment,
        })
    }

    /// The matchers as amtool writes them: `{alertname="X", instance=~"web-.*"}`.
    pub fn matchers_text(&self) -> String {
        let parts: Vec<String> = self
            .matchers
            .iter()
            .map(|m| format!("{}{}{:?}", m.name, m.op(), m.value))
            .collect();
        format!("{{{}}}", parts.join(", "))
    }
}

/// The silences, by id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Silences {
    by_id: BTreeMap<String, Silence>,
}

/// A request the API refuses, with Alertmanager's status for it.
#[derive(Debug, PartialEq)]
pub enum Refused {
    /// 400: the silence is not valid.
    Invalid(String),
    /// 404: no silence has that id.
    NotFound(String),
    /// 503: it cannot be stored now.
    Unavailable(String),
}

impl Silences {
    /// The ids of the active silences that mute `labels` at `now`.
    pub fn muting(&self, labels: &Labels, now: i64) -> Vec<String> {
        self.by_id
            .values()
            .filter(|s| s.state(now) == "active" && s.matches(labels))
            .map(|s| s.id.clone())
            .collect()
    }

    pub fn mutes(&self, labels: &Labels, now: i64) -> bool {
        self.by_id
            .values()
            .any(|s| s.state(now) == "active" && s.matches(labels))
    }

    pub fn get(&self, id: &str) -> Option<&Silence> {
        self.by_id.get(id)
    }

    /// Every silence (expired ones within the retention), newest first as amtool lists them.
    pub fn list(&self, now: i64) -> Vec<&Silence> {
        let mut v: Vec<&Silence> = self
            .by_id
            .values()
            .filter(|s| s.ends_at + RETENTION_MS > now)
            .collect();
        v.sort_by(|a, b| b.updated_at.cmp(&a.updated_at).then(a.id.cmp(&b.id)));
        v
    }

    /// Adds a silence from Alertmanager's `postableSilence`, or replaces the one it names by
    /// `id`. Returns its id. As Alertmanager: at least one matcher, one that does not match the
    /// empty string; `endsAt` after `startsAt` and not in the past; a start in the past becomes
    /// now. Changing an active silence's matchers or start makes a new silence and expires the
    /// old one.
    pub fn post(
        &mut self,
        body: &Json,
        now: i64,
        new_id: impl FnOnce() -> String,
    ) -> Result<String, Refused> {
        let invalid = |m: String| Refused::Invalid(m);
        let matchers: Vec<Matcher> = serde_json::from_value(body["matchers"].clone())
            .map_err(|e| invalid(format!("matchers: {e}")))?;
        if matchers.is_empty() {
            return Err(invalid("at least one matcher is required".into()));
        }
        if matchers.len() > MAX_MATCHERS {
            return Err(invalid(format!("more than {MAX_MATCHERS} matchers")));
        }
        for m in &matchers {
            if !valid_label_name(&m.name) {
                return Err(invalid(format!(
                    "invalid label name {:?}: want [a-zA-Z_][a-zA-Z0-9_]*",
                    m.name
                )));
            }
            if m.value.len() > MAX_TEXT {
                return Err(invalid(format!(
                    "matcher {}: value longer than {MAX_TEXT} bytes",
                    m.name
                )));
            }
            if m.is_regex {
                m.regex().map_err(invalid)?;
            }
        }
        let matches_empty = |m: &Matcher| m.matches_value(m.compiled(), "");
        if matchers.iter().all(matches_empty) {
            return Err(invalid(
                "at least one matcher must not match the empty string".into(),
            ));
        }
        let time = |k: &str| -> Result<i64, Refused> {
            let s = body[k]
                .as_str()
                .ok_or_else(|| invalid(format!("{k} is required (RFC 3339)")))?;
            parse_timestamp_ms(s).map_err(|e| invalid(format!("{k}: {e}")))
        };
        let (mut starts_at, ends_at) = (time("startsAt")?, time("endsAt")?);
        if ends_at < starts_at {
            return Err(invalid("endsAt is before startsAt".into()));
        }
        if ends_at <= now {
            return Err(invalid("endsAt is in the past".into()));
        }
        starts_at = starts_at.max(now);
        let text = |k: &str| body[k].as_str().unwrap_or("").to_string();
        for k in ["createdBy", "comment"] {
            if text(k).len() > MAX_TEXT {
                return Err(invalid(format!("{k} longer than {MAX_TEXT} bytes")));
            }
        }
        let posted_start = starts_at;
        let mut silence = Silence {
            id: String::new(),
            matchers,
            starts_at,
            ends_at,
            updated_at: now,
            created_by: text("createdBy"),
            comment: text("comment"),
        };
        self.gc(now);
        let id = body["id"].as_str().filter(|s| !s.is_empty());
        let in_force = self
            .by_id
            .values()
            .filter(|s| s.state(now) != "expired")
            .count();
        if in_force >= MAX_SILENCES && id.is_none_or(|i| !self.by_id.contains_key(i)) {
            return Err(invalid(format!(
                "{MAX_SILENCES} silences in force or to come already; expire some first"
            )));
        }
        if let Some(id) = id {
            let old = self
                .by_id
                .get_mut(id)
                .ok_or_else(|| Refused::NotFound(format!("silence {id} not found")))?;
            // As Alertmanager: an active silence is changed in place only when its matchers
            // stay and its start does not move into the future.
            let in_place = match old.state(now) {
                "pending" => true,
                "active" => old.matchers == silence.matchers && posted_start <= now,
                _ => false,
            };
            if in_place {
                silence.id = id.to_string();
                if old.state(now) == "active" {
                    silence.starts_at = old.starts_at;
                }
                *old = silence;
                return Ok(id.to_string());
            }
            if old.state(now) == "active" {
                old.ends_at = now;
                old.updated_at = now;
            }
        }
        silence.id = new_id();
        let id = silence.id.clone();
        self.by_id.insert(id.clone(), silence);
        Ok(id)
    }

    /// Expires a silence now (a pending one never starts).
    pub fn expire(&mut self, id: &str, now: i64) -> Result<(), Refused> {
        let s = self
            .by_id
            .get_mut(id)
            .ok_or_else(|| Refused::NotFound(format!("silence {id} not found")))?;
        match s.state(now) {
            "expired" => {}
            "pending" => {
                s.starts_at = now;
                s.ends_at = now;
                s.updated_at = now;
            }
            _ => {
                s.ends_at = now;
                s.updated_at = now;
            }
        }
        Ok(())
    }

    /// Forgets silences expired longer than the retention.
    pub fn gc(&mut self, now: i64) {
        self.by_id.retain(|_, s| s.ends_at + RETENTION_MS > now);
    }
}

/// Prometheus's label names: `[a-zA-Z_][a-zA-Z0-9_]*`.
fn valid_label_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// Whether every filter matcher matches `labels`.
pub fn filter_matches(filter: &[Matcher], labels: &Labels) -> bool {
    let probe = Silence {
        id: String::new(),
        matchers: filter.to_vec(),
        starts_at: 0,
        ends_at: 0,
        updated_at: 0,
        created_by: String::new(),
        comment: String::new(),
    };
    probe.matches(labels)
}

/// The labels a silence's equality matchers name (what Alertmanager filters silences by).
pub fn equal_labels(s: &Silence) -> Labels {
    Labels::from_pairs(
        s.matchers
            .iter()
            .filter(|m| m.is_equal && !m.is_regex)
            .map(|m| (m.name.as_str(), m.value.as_str())),
    )
}

/// A new silence id: a random UUID (version 4), as Alertmanager's.
pub fn new_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let word = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(salt);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        h.finish()
    };
    let b = ((word(1) as u128) << 64) | word(2) as u128;
    // Version 4, variant 1.
    let b = (b & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let h = format!("{b:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
