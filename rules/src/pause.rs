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

/// What a pause is set on, as the audit log names it.
pub const SCALING: &str = "scaling group";
pub const REPLACEMENT: &str = "replacement policy";

/// The pauses in `state` whose `until` has passed at `now`: each ends at its group's or policy's
/// next evaluation. `(what, name, pause)`.
pub fn ending(state: &crate::evaluator::State, now: i64) -> Vec<(&'static str, String, Pause)> {
    let due = |p: &Option<Pause>| p.clone().filter(|p| p.until.is_some_and(|u| now >= u));
    let mut out: Vec<(&'static str, String, Pause)> = state
        .groups
        .iter()
        .filter_map(|(n, g)| due(&g.paused).map(|p| (SCALING, n.clone(), p)))
        .chain(
            state
                .replace
                .iter()
                .filter_map(|(n, r)| due(&r.paused).map(|p| (REPLACEMENT, n.clone(), p))),
        )
        .collect();
    out.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    out
}

/// Whether `pause` is still set on `what` `name` in `state`.
pub fn still_set(state: &crate::evaluator::State, what: &str, name: &str, pause: &Pause) -> bool {
    let set = if what == SCALING {
        state.groups.get(name).and_then(|g| g.paused.as_ref())
    } else {
        state.replace.get(name).and_then(|r| r.paused.as_ref())
    };
    set == Some(pause)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_past_its_end_is_found_and_ends_at_its_evaluation() {
        let p = Pause {
            reason: "deploy".into(),
            author: "ops".into(),
            since: 0,
            until: Some(60_000),
        };
        let mut st = crate::evaluator::State::default();
        st.groups.entry("web".into()).or_default().paused = Some(p.clone());
        st.groups.entry("api".into()).or_default().paused = Some(Pause {
            until: None,
            ..p.clone()
        });
        assert!(ending(&st, 59_999).is_empty());
        let e = ending(&st, 60_000);
        assert_eq!(e, [(SCALING, "web".to_string(), p.clone())]);
        assert!(still_set(&st, SCALING, "web", &p));
        let g = st.groups.get_mut("web").unwrap();
        assert!(in_force(&mut g.paused, 60_000).is_none());
        assert!(!still_set(&st, SCALING, "web", &p));
    }
}
