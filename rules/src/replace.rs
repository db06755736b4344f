//! Replacement decisions: which unhealthy instances to replace, within a blast radius.
//!
//! The policy's expression marks instances unhealthy (one result per `instance` label). An
//! instance is replaced once it has been unhealthy for `for`; never more than
//! `floor(max_fraction × group size)` instances are replaced in any `window`; and when at least
//! `fail_open_fraction` of the group is unhealthy at once, nothing is replaced and an alert is
//! raised instead — the cause is likely shared (a database, a bad deploy) and replacing would only
//! add churn.

use std::collections::{BTreeMap, VecDeque};

use crate::rulefile::ReplacePolicy;

/// A policy's memory between evaluations.
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ReplaceState {
    /// Instance → first time seen unhealthy (ms), for instances unhealthy now.
    pub unhealthy_since: BTreeMap<String, i64>,
    /// Replacements made within the window, oldest first: (time, instance).
    pub replaced: VecDeque<(i64, String)>,
    /// Instances already replaced that are still reported unhealthy (a terminating instance
    /// keeps pushing for a while): never replaced twice.
    pub done: BTreeMap<String, i64>,
    /// Whether the policy is failing open (so the alert is raised once per episode).
    pub failing_open: bool,
    /// Set at run time: eligible instances are held, not replaced.
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    pub paused: Option<crate::pause::Pause>,
}

/// One evaluation's outcome.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReplaceDecision {
    pub at: i64,
    pub policy: String,
    pub asg: String,
    pub group_size: u32,
    pub unhealthy: usize,
    /// Instances to replace now, each with why.
    pub replace: Vec<(String, String)>,
    /// Eligible instances held back by the cap.
    pub held: Vec<String>,
    /// Instances the expression marks unhealthy that may not be replaced now (not in service,
    /// in their health-check grace period, not a member of the group), each with why. They
    /// count neither against the cap nor towards fail-open.
    pub skipped: Vec<(String, String)>,
    /// True on the evaluation where fail-open starts; `fail_open_ended` when it stops.
    pub fail_open_started: bool,
    pub fail_open_ended: bool,
    /// Why nothing or less was done, for logs and the API.
    pub note: Option<String>,
}

/// How many replacements the policy allows per window for a group of `group_size`.
pub fn cap(p: &ReplacePolicy, group_size: u32) -> usize {
    (p.max_fraction * f64::from(group_size)).floor() as usize
}

/// Decides replacements. `unhealthy` are the instance ids the expression returned now.
pub fn decide(
    p: &ReplacePolicy,
    st: &mut ReplaceState,
    unhealthy: &[String],
    group_size: u32,
    now: i64,
) -> ReplaceDecision {
    decide_with(p, st, unhealthy, &[], group_size, now)
}

/// Like [`decide`], with `not_now`: instances the expression marks unhealthy that may not be
/// replaced now (already marked Unhealthy by something else) but that count towards the share of
/// the group that is sick, and keep their unhealthy-since times.
pub fn decide_with(
    p: &ReplacePolicy,
    st: &mut ReplaceState,
    unhealthy: &[String],
    not_now: &[String],
    group_size: u32,
    now: i64,
) -> ReplaceDecision {
    let mut d = ReplaceDecision {
        at: now,
        policy: p.name.clone(),
        asg: p.asg.clone(),
        group_size,
        ..Default::default()
    };
    while st
        .replaced
        .front()
        .is_some_and(|(t, _)| *t <= now.saturating_sub(p.window_ms))
    {
        st.replaced.pop_front();
    }
    // Track since when each instance is unhealthy; forget the ones that recovered or are gone.
    let sick: std::collections::HashSet<&String> = unhealthy.iter().chain(not_now).collect();
    st.unhealthy_since.retain(|i, _| sick.contains(i));
    st.done.retain(|i, _| sick.contains(i));
    for i in unhealthy.iter().chain(not_now) {
        st.unhealthy_since.entry(i.clone()).or_insert(now);
    }
    // A pause past its end is cleared whatever is decided below.
    crate::pause::in_force(&mut st.paused, now);
    let held_back: std::collections::HashSet<&String> = not_now.iter().collect();
    // An instance replaced within the window is being replaced: do not count it again.
    let pending: Vec<(&String, &i64)> = st
        .unhealthy_since
        .iter()
        .filter(|(i, _)| !st.done.contains_key(*i))
        .collect();
    d.unhealthy = pending.len();
    if group_size == 0 {
        d.note = Some("group size unknown or zero: nothing replaced".into());
        return d;
    }
    let fraction = pending.len() as f64 / f64::from(group_size);
    if fraction >= p.fail_open_fraction {
        if !st.failing_open {
            d.fail_open_started = true;
        }
        st.failing_open = true;
        d.note = Some(format!(
            "{} of {group_size} instances unhealthy ({:.0}% ≥ fail_open_fraction {:.0}%): replacing nothing, the cause is likely shared",
            pending.len(),
            fraction * 100.0,
            p.fail_open_fraction * 100.0
        ));
        return d;
    }
    if st.failing_open {
        d.fail_open_ended = true;
        st.failing_open = false;
    }
    let mut eligible: Vec<(i64, String)> = pending
        .iter()
        .filter(|(i, since)| !held_back.contains(i) && now.saturating_sub(**since) >= p.for_ms)
        .map(|(i, s)| (**s, (*i).clone()))
        .collect();
    eligible.sort();
    if let Some(pause) = crate::pause::in_force(&mut st.paused, now) {
        if !eligible.is_empty() {
            d.note = Some(format!(
                "paused: would replace {} {}",
                eligible
                    .iter()
                    .map(|(_, i)| i.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                pause.describe()
            ));
            d.held = eligible.into_iter().map(|(_, i)| i).collect();
        }
        return d;
    }
    let allowed = cap(p, group_size).saturating_sub(st.replaced.len());
    for (k, (since, inst)) in eligible.into_iter().enumerate() {
        if k < allowed {
            let why = format!("unhealthy for {}ms (for {}ms)", now - since, p.for_ms);
            st.replaced.push_back((now, inst.clone()));
            st.done.insert(inst.clone(), now);
            d.replace.push((inst, why));
        } else {
            d.held.push(inst);
        }
    }
    if !d.held.is_empty() {
        d.note = Some(format!(
            "cap of {} per {}ms for a group of {group_size} reached; {} held",
            cap(p, group_size),
            p.window_ms,
            d.held.len()
        ));
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::promql::parse;
    use proptest::prelude::*;

    fn policy() -> ReplacePolicy {
        ReplacePolicy {
            name: "web-unhealthy".into(),
            asg: "web".into(),
            expr: parse("up == 0").unwrap(),
            for_ms: 30_000,
            max_fraction: 0.2,
            window_ms: 600_000,
            fail_open_fraction: 0.5,
            interval_ms: None,
        }
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_paused_policy_holds_what_it_would_replace_and_replaces_nothing() {
        let p = policy();
        let mut st = ReplaceState {
            paused: Some(crate::pause::Pause {
                reason: "incident".into(),
                author: "ops".into(),
                since: 0,
                until: None,
            }),
            ..Default::default()
        };
        decide(&p, &mut st, &ids(&["i-1"]), 10, 0);
        let d = decide(&p, &mut st, &ids(&["i-1"]), 10, 30_000);
        assert!(d.replace.is_empty());
        assert_eq!(d.held, ids(&["i-1"]));
        let note = d.note.expect("note");
        assert!(
            note.starts_with("paused: would replace i-1 (paused by ops"),
            "{note}"
        );
        assert!(
            st.replaced.is_empty() && st.done.is_empty(),
            "nothing counted"
        );
        // Resumed: replaced at once (it has been unhealthy for its `for`).
        st.paused = None;
        let d = decide(&p, &mut st, &ids(&["i-1"]), 10, 31_000);
        assert_eq!(d.replace.len(), 1);
    }

    #[test]
    fn waits_for_the_hold_and_respects_the_cap() {
        let p = policy();
        let mut st = ReplaceState::default();
        let d = decide(&p, &mut st, &ids(&["i-1", "i-2"]), 10, 0);
        assert!(d.replace.is_empty());
        let d = decide(&p, &mut st, &ids(&["i-1", "i-2"]), 10, 30_000);
        assert_eq!(d.replace.len(), 2, "cap is floor(0.2 × 10) = 2");
        let d = decide(&p, &mut st, &ids(&["i-1", "i-2", "i-3"]), 10, 40_000);
        assert!(d.replace.is_empty(), "i-3 not yet unhealthy for 30s");
        let d = decide(&p, &mut st, &ids(&["i-3"]), 10, 80_000);
        assert_eq!(d.held, ids(&["i-3"]), "cap used up within the window");
        let d = decide(&p, &mut st, &ids(&["i-3"]), 10, 630_000);
        assert_eq!(d.replace.len(), 1, "window passed");
    }

    #[test]
    fn fails_open_when_much_of_the_group_is_unhealthy() {
        let p = policy();
        let mut st = ReplaceState::default();
        let d = decide(&p, &mut st, &ids(&["a", "b", "c"]), 6, 0);
        assert!(d.fail_open_started);
        let d = decide(&p, &mut st, &ids(&["a", "b", "c"]), 6, 60_000);
        assert!(
            d.replace.is_empty() && !d.fail_open_started,
            "alert raised once"
        );
        let d = decide(&p, &mut st, &ids(&["a"]), 6, 120_000);
        assert!(d.fail_open_ended);
        assert_eq!(d.replace.len(), 1, "a has been unhealthy since 0");
    }

    #[test]
    fn small_groups_get_no_replacements_rather_than_a_breach() {
        let p = policy();
        let mut st = ReplaceState::default();
        decide(&p, &mut st, &ids(&["a"]), 4, 0);
        let d = decide(&p, &mut st, &ids(&["a"]), 4, 60_000);
        assert!(d.replace.is_empty());
        assert_eq!(d.held, ids(&["a"]));
    }

    proptest! {
        /// Replacements within any window never exceed the cap, nothing is replaced before `for`,
        /// and nothing at all while at least `fail_open_fraction` of the group is unhealthy.
        #[test]
        fn never_above_the_cap(
                        size in 1u32..40,
            maxf in 0.05f64..1.0,
            fo in 0.05f64..=1.0,
            steps in proptest::collection::vec((1i64..200_000, proptest::collection::vec(0u8..40, 0..20)), 1..60),
        ) {
                        let mut p = policy();
            p.max_fraction = maxf;
            p.fail_open_fraction = fo.max(maxf);
            let mut st = ReplaceState::default();
            let mut now = 0;
            let mut log: Vec<(i64, String)> = Vec::new();
            let mut first_seen: BTreeMap<String, i64> = BTreeMap::new();
            let mut replaced: std::collections::BTreeSet<String> = Default::default();
            for (dt, sick) in steps {
                now += dt;
                let sick: Vec<String> = sick.iter().filter(|i| u32::from(**i) < size).map(|i| format!("i-{i}")).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
                first_seen.retain(|k, _| sick.contains(k));
                for s in &sick { first_seen.entry(s.clone()).or_insert(now); }
                // The test's own account, not the code's: instances it saw replaced that are still
                // sick are on their way out and not counted again.
                replaced.retain(|i| sick.contains(i));
                let counted = sick.iter().filter(|i| !replaced.contains(*i)).count();
                let d = decide(&p, &mut st, &sick, size, now);
                if counted as f64 / f64::from(size) >= p.fail_open_fraction {
                    prop_assert!(d.replace.is_empty(), "replaced while {counted} of {size} are sick");
                }
                for (i, _) in &d.replace {
                    prop_assert!(now - first_seen[i] >= p.for_ms, "replaced before `for`");
                    prop_assert!(!replaced.contains(i), "{i} replaced twice");
                    log.push((now, i.clone()));
                    replaced.insert(i.clone());
                }
                let in_window = log.iter().filter(|(t, _)| *t > now - p.window_ms).count();
                let limit = (maxf * f64::from(size)).floor() as usize;
                prop_assert!(in_window <= limit, "{} replacements in window, cap {}", in_window, limit);
            }
        }
    }
}
