//! Replacement decisions: which unhealthy instances to replace, within a blast radius.
//!
//! The policy's expression marks instances unhealthy (one result per `instance` label). An
//! instance is replaced once it has been unhealthy for `for`; never more than
//! `floor(max_fraction × group size)` instances are replaced in any `window`; and when at least
//! `fail_open_fraction` of the group is unhealthy at once, nothing is replaced and an alert is
//! raised instead — the cause is likely shared (a database, a bad deploy) and replacing would only
//! add churn.
//!
//! With `az_aware`, the same two limits also hold per Availability Zone: an AZ where at least
//! `fail_open_fraction` of its instances are unhealthy has nothing replaced (an AZ impairment is
//! not a reason to churn its instances) and is paged by name while the other AZs go on being
//! served, and at most `floor(max_fraction × the AZ's size)` of an AZ's instances are replaced in
//! any `window`, beside the group's cap. The group-wide fail-open still holds above them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

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
    /// `az_aware`: the AZs failing open now (each paged once per episode).
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "BTreeSet::is_empty")
    )]
    pub zones_failing_open: BTreeSet<String>,
    /// `az_aware`: the replacements within the window with their AZ, oldest first: (time,
    /// instance, AZ), for the per-AZ cap (an instance may be replaced again after it recovered).
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "VecDeque::is_empty")
    )]
    pub replaced_zone: VecDeque<(i64, String, String)>,
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
    /// `az_aware`: AZs that started or stopped failing open at this evaluation, each with its
    /// unhealthy and total instances.
    pub zone_fail_open_started: Vec<(String, usize, usize)>,
    pub zone_fail_open_ended: Vec<String>,
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
    decide_in_zones(p, st, unhealthy, not_now, group_size, None, now)
}

/// How many of an AZ's instances the policy allows per window.
pub fn zone_cap(p: &ReplacePolicy, zone_size: usize) -> usize {
    (p.max_fraction * zone_size as f64).floor() as usize
}

/// Like [`decide_with`], with each member's AZ (`zones`: instance → AZ, every member of the
/// group) for an `az_aware` policy. Without `zones`, or for a policy that is not `az_aware`, the
/// group-wide limits only. An unhealthy instance whose AZ is unknown counts in an AZ of its own,
/// `""`.
pub fn decide_in_zones(
    p: &ReplacePolicy,
    st: &mut ReplaceState,
    unhealthy: &[String],
    not_now: &[String],
    group_size: u32,
    zones: Option<&BTreeMap<String, String>>,
    now: i64,
) -> ReplaceDecision {
    let zones = zones.filter(|_| p.az_aware);
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
    while st
        .replaced_zone
        .front()
        .is_some_and(|(t, _, _)| *t <= now.saturating_sub(p.window_ms))
    {
        st.replaced_zone.pop_front();
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
    // Per AZ: its size, its unhealthy share, and whether it fails open.
    let zone_of = |i: &str| -> String { zones.and_then(|z| z.get(i)).cloned().unwrap_or_default() };
    let mut failing_zones: BTreeSet<String> = BTreeSet::new();
    if let Some(z) = zones {
        let mut size: BTreeMap<String, usize> = BTreeMap::new();
        for az in z.values() {
            *size.entry(az.clone()).or_default() += 1;
        }
        let mut sick: BTreeMap<String, usize> = BTreeMap::new();
        for (i, _) in &pending {
            *sick.entry(zone_of(i)).or_default() += 1;
        }
        for (az, n) in &sick {
            let total = size.get(az).copied().unwrap_or(0).max(*n);
            if *n as f64 / total as f64 >= p.fail_open_fraction {
                failing_zones.insert(az.clone());
                if !st.zones_failing_open.contains(az) {
                    d.zone_fail_open_started.push((az.clone(), *n, total));
                }
            }
        }
        d.zone_fail_open_ended = st
            .zones_failing_open
            .difference(&failing_zones)
            .cloned()
            .collect();
        st.zones_failing_open = failing_zones.clone();
        if !failing_zones.is_empty() {
            let names: Vec<String> = failing_zones
                .iter()
                .map(|az| {
                    format!(
                        "{} ({} of {})",
                        if az.is_empty() { "unknown AZ" } else { az },
                        sick[az],
                        size.get(az).copied().unwrap_or(0).max(sick[az])
                    )
                })
                .collect();
            d.note = Some(format!(
                "failing open in {}: at least fail_open_fraction {:.0}% of the AZ unhealthy, nothing replaced there (an AZ impairment); other AZs served",
                names.join(", "),
                p.fail_open_fraction * 100.0
            ));
        }
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
    let mut allowed = cap(p, group_size).saturating_sub(st.replaced.len());
    // Per AZ: what its cap leaves in this window.
    let mut zone_left: BTreeMap<String, usize> = BTreeMap::new();
    if let Some(z) = zones {
        let mut size: BTreeMap<String, usize> = BTreeMap::new();
        for az in z.values() {
            *size.entry(az.clone()).or_default() += 1;
        }
        for (az, n) in size {
            let used = st.replaced_zone.iter().filter(|(_, _, a)| *a == az).count();
            zone_left.insert(az.clone(), zone_cap(p, n).saturating_sub(used));
        }
    }
    let mut zone_held = 0;
    for (since, inst) in eligible {
        let az = zone_of(&inst);
        if zones.is_some() {
            if failing_zones.contains(&az) {
                d.held.push(inst);
                zone_held += 1;
                continue;
            }
            let left = zone_left.entry(az.clone()).or_default();
            if *left == 0 || allowed == 0 {
                d.held.push(inst);
                continue;
            }
            *left -= 1;
        } else if allowed == 0 {
            d.held.push(inst);
            continue;
        }
        allowed -= 1;
        let why = format!("unhealthy for {}ms (for {}ms)", now - since, p.for_ms);
        st.replaced.push_back((now, inst.clone()));
        if zones.is_some() {
            st.replaced_zone.push_back((now, inst.clone(), az));
        }
        st.done.insert(inst.clone(), now);
        d.replace.push((inst, why));
    }
    let capped = d.held.len() - zone_held;
    if capped > 0 {
        let per_zone = if zones.is_some() {
            " (or of its AZ's, max_fraction of the AZ's instances)"
        } else {
            ""
        };
        let cap_note = format!(
            "cap of {} per {}ms for a group of {group_size}{per_zone} reached; {capped} held",
            cap(p, group_size),
            p.window_ms,
        );
        d.note = Some(match d.note.take() {
            Some(n) => format!("{n}; {cap_note}"),
            None => cap_note,
        });
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
            az_aware: false,
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

    fn nine_in_three_zones() -> BTreeMap<String, String> {
        ["a", "b", "c"]
            .iter()
            .flat_map(|z| (1..=3).map(move |k| (format!("{z}{k}"), format!("us-east-1{z}"))))
            .collect()
    }

    #[test]
    fn an_az_failing_open_is_left_alone_and_the_others_served() {
        let mut p = policy();
        (p.az_aware, p.for_ms, p.max_fraction) = (true, 0, 0.34);
        let zones = nine_in_three_zones();
        let mut st = ReplaceState::default();
        // Two of us-east-1a's three are sick (67% ≥ 50%), one of us-east-1b's: the group is
        // at 33%, under its own fail-open.
        let d = decide_in_zones(
            &p,
            &mut st,
            &ids(&["a1", "a2", "b1"]),
            &[],
            9,
            Some(&zones),
            0,
        );
        let replaced: Vec<&str> = d.replace.iter().map(|(i, _)| i.as_str()).collect();
        assert_eq!(replaced, ["b1"]);
        assert_eq!(d.held, ids(&["a1", "a2"]));
        assert_eq!(d.zone_fail_open_started, [("us-east-1a".to_string(), 2, 3)]);
        assert!(!d.fail_open_started);
        assert!(
            d.note
                .as_deref()
                .is_some_and(|n| n.contains("us-east-1a (2 of 3)")),
            "{:?}",
            d.note
        );
        // Still failing: paged once. b2 now sick too: us-east-1b's cap (floor(0.34 × 3) = 1)
        // is spent by b1 within the window, though the group's (3) is not.
        let d = decide_in_zones(
            &p,
            &mut st,
            &ids(&["a1", "a2", "b1", "b2"]),
            &[],
            9,
            Some(&zones),
            60_000,
        );
        assert!(d.replace.is_empty() && d.zone_fail_open_started.is_empty());
        assert_eq!(d.held, ids(&["a1", "a2", "b2"]));
        assert!(
            d.note.as_deref().is_some_and(|n| n.contains("cap of 3")),
            "{:?}",
            d.note
        );
        // us-east-1a recovers to one sick of three: it ends failing open and its instance is
        // replaced under its own cap.
        let d = decide_in_zones(
            &p,
            &mut st,
            &ids(&["a1", "b1"]),
            &[],
            9,
            Some(&zones),
            120_000,
        );
        assert_eq!(d.zone_fail_open_ended, ["us-east-1a"]);
        assert_eq!(
            d.replace
                .iter()
                .map(|(i, _)| i.as_str())
                .collect::<Vec<_>>(),
            ["a1"]
        );
        // The group-wide fail-open still holds above the AZs.
        let mut st = ReplaceState::default();
        let d = decide_in_zones(
            &p,
            &mut st,
            &ids(&["a1", "a2", "b1", "b2", "c1"]),
            &[],
            9,
            Some(&zones),
            0,
        );
        assert!(d.fail_open_started && d.replace.is_empty());
        // Not az_aware: the zones change nothing.
        p.az_aware = false;
        let mut st = ReplaceState::default();
        let d = decide_in_zones(
            &p,
            &mut st,
            &ids(&["a1", "a2", "b1"]),
            &[],
            9,
            Some(&zones),
            0,
        );
        assert_eq!(d.replace.len(), 3);
    }

    proptest! {
        /// With `az_aware`, per AZ: nothing replaced in an AZ while at least
        /// `fail_open_fraction` of its instances are unhealthy, and never more than
        /// `floor(max_fraction × its size)` of it in any window; the group's own limits hold
        /// too. Checked against the test's own account.
        #[test]
        fn per_zone_caps_and_fail_open_hold(
            assignment in proptest::collection::vec(0u8..3, 1..30),
            maxf in 0.05f64..1.0,
            fo in 0.05f64..=1.0,
            steps in proptest::collection::vec((1i64..200_000, proptest::collection::vec(0u8..30, 0..20)), 1..60),
        ) {
            let mut p = policy();
            p.az_aware = true;
            p.max_fraction = maxf;
            p.fail_open_fraction = fo.max(maxf);
            let size = assignment.len() as u32;
            let zones: BTreeMap<String, String> = assignment
                .iter()
                .enumerate()
                .map(|(k, z)| (format!("i-{k}"), format!("az-{z}")))
                .collect();
            let zone_size = |z: &str| zones.values().filter(|v| *v == z).count();
            let mut st = ReplaceState::default();
            let mut now = 0;
            let mut log: Vec<(i64, String)> = Vec::new();
            let mut replaced: BTreeSet<String> = Default::default();
            for (dt, sick) in steps {
                now += dt;
                let sick: Vec<String> = sick.iter().filter(|i| u32::from(**i) < size).map(|i| format!("i-{i}")).collect::<BTreeSet<_>>().into_iter().collect();
                replaced.retain(|i| sick.contains(i));
                let counted: Vec<&String> = sick.iter().filter(|i| !replaced.contains(*i)).collect();
                let d = decide_in_zones(&p, &mut st, &sick, &[], size, Some(&zones), now);
                if counted.len() as f64 / f64::from(size) >= p.fail_open_fraction {
                    prop_assert!(d.replace.is_empty());
                }
                for (i, _) in &d.replace {
                    let z = &zones[i];
                    let in_zone = counted.iter().filter(|c| &zones[c.as_str()] == z).count();
                    prop_assert!(
                        (in_zone as f64 / zone_size(z) as f64) < p.fail_open_fraction,
                        "{i} replaced while {in_zone} of {} in {z} are sick", zone_size(z)
                    );
                    prop_assert!(!replaced.contains(i), "{i} replaced twice");
                    log.push((now, i.clone()));
                    replaced.insert(i.clone());
                }
                let window: Vec<&String> = log.iter().filter(|(t, _)| *t > now - p.window_ms).map(|(_, i)| i).collect();
                prop_assert!(window.len() <= cap(&p, size));
                for z in zones.values().collect::<BTreeSet<_>>() {
                    let n = window.iter().filter(|i| &zones[i.as_str()] == z).count();
                    prop_assert!(n <= zone_cap(&p, zone_size(z)), "{n} replaced in {z} within a window");
                }
            }
        }

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
