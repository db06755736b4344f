//! A pause set at run time (`POST /api/v1/scaling/{asg}/pause`, `/api/v1/replace/{policy}/pause`):
//! the policy keeps deciding, and what it would do is held and said ("paused: would …").

use crate::duration::format_timestamp_ms;

/// Who paused, why, since when and until when (Unix ms; none: until resumed).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Pause {
    pub reason: String,
    pub author: String,
    pub since: i64,
    #[cfg_attr(feature = "serde", serde(default))]
    pub until: Option<i64>,
}

impl Pause {
    /// `(paused by ops since …: deploy; until …)`.
    pub fn describe(&self) -> String {
        let until = self.until.map_or(String::new(), |u| {
            format!("; until {}", format_timestamp_ms(u))
        });
        format!(
            "(paused by {} since {}: {}{until})",
            if self.author.is_empty() {
                "?"
            } else {
                &self.author
            },
            format_timestamp_ms(self.since),
            self.reason
        )
    }
}

/// The pause in force at `now`; one whose `until` has passed is cleared.
pub fn in_force(p: &mut Option<Pause>, now: i64) -> Option<&Pause> {
    if p.as_ref().and_then(|x| x.until).is_some_and(|u| now >= u) {
        *p = None;
    }
    p.as_ref()
}
