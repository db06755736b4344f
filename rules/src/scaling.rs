//! Scaling decisions as pure functions of (policies, observations, state, now).
//!
//! Each policy turns its expression's value into a recommended capacity: target tracking
//! (`ceil(current × value / target)` outside a tolerance band) or step adjustments. Scale-in
//! recommendations are stabilized: a policy recommends the highest of its raw recommendations
//! over `scale_in_stabilization`. Several policies on one Auto Scaling group combine like AWS
//! target tracking: scale out if any asks (to the largest ask), scale in only if all agree (to the
//! largest of their recommendations), and a policy with no data never lets the group scale in.
//! A decision never leaves `[min, max]` and never comes inside a cooldown. The policies'
//! controls (`crate::controls`) then apply: a guard holds a direction, a velocity limit caps
//! the change, and a policy without data for `no_data_for` may fall back to a set capacity.
//! Every hold and limit is said in the decision.

use std::collections::{BTreeMap, VecDeque};

use crate::rulefile::{ScalingMode, ScalingPolicy};

/// What one policy saw at one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The expression's value; `None` when it returned nothing, NaN or ±Inf (no data), or
    /// could not be evaluated (`error`).
    pub value: Option<f64>,
    /// Why the expression gave no value when that is not "no data" (an evaluation error, or
    /// several series): it holds the group but never starts the no-data fallback.
    pub error: Option<String>,
}

impl Observation {
    pub fn value(value: Option<f64>) -> Self {
        Observation { value, error: None }
    }
}

/// What the group's guards (`hold_out_when`, `hold_in_when`) say at one evaluation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Guards {
    /// Why scale-out is held, if a guard returned a sample.
    pub hold_out: Option<String>,
    /// Why scale-in is held: a guard returned a sample or could not be evaluated.
    pub hold_in: Option<String>,
    /// Said on the decision: a `hold_out_when` that could not be evaluated (which holds nothing:
    /// a broken guard must not keep a fleet from growing).
    pub notes: Vec<String>,
    /// Instances of the group still warming (`crate::warmup`), when a policy has a warmup.
    pub warming: u32,
    /// Instances of the group that push and are warm, when a policy has a warmup.
    pub warm: u32,
    /// A schedule of the group ran at this evaluation.
    pub schedule_ran: bool,
    /// With `scale_in_victim` on a described group: how many instances may be terminated, and
    /// why not more (`crate::victim`).
    pub removable: Option<(u32, String)>,
}

/// A policy's state between evaluations.
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(transparent))]
pub struct PolicyState {
    /// Raw recommendations `(time, capacity)` within the stabilization window.
    pub history: VecDeque<(i64, u32)>,
}

/// A group's state between decisions.
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct GroupState {
    pub last_scale_out: Option<i64>,
    pub last_scale_in: Option<i64>,
    /// Set at run time: the group's decisions are held (no cooldown starts).
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    pub paused: Option<crate::pause::Pause>,
    /// Capacity changes `(time, delta)` within the longest velocity-limit period or warmup.
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "VecDeque::is_empty")
    )]
    pub changes: VecDeque<(i64, i64)>,
    /// Since when each policy's expression has returned nothing.
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "BTreeMap::is_empty")
    )]
    pub no_data_since: BTreeMap<String, i64>,
    /// The bounds the group's last schedule run set, replacing its policies' `[min, max]`.
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    pub scheduled: Option<crate::schedule::ScheduleRun>,
    /// Up to when schedule runs have been looked for.
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    pub schedules_checked: Option<i64>,
    /// `Where::Simulated`: the victims the simulation terminated, oldest first, never chosen
    /// again while their recorded data goes on.
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Vec::is_empty")
    )]
    pub simulated_gone: Vec<String>,
}

/// One policy's part in a decision.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyInput {
    pub policy: String,
    pub value: Option<f64>,
    /// Recommendation before stabilization (clamped to the policy's bounds).
    pub raw: Option<u32>,
    /// Recommendation after scale-in stabilization.
    pub recommended: Option<u32>,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Out,
    In,
}

/// The outcome of one evaluation for one group.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub at: i64,
    pub asg: String,
    pub current: u32,
    /// The capacity to set; equals `current` when nothing changes.
    pub desired: u32,
    pub direction: Option<Direction>,
    /// Set when a change was asked for but a cooldown, a guard or a pause holds it back.
    pub held: Option<String>,
    /// Limits and fallbacks that shaped the decision, and guards that could not be evaluated.
    pub notes: Vec<String>,
    /// A schedule that ran at this evaluation (its bounds apply from now on).
    pub scheduled: Option<crate::schedule::ScheduleRun>,
    /// The policy whose recommendation was chosen, if any.
    pub by: Option<String>,
    pub inputs: Vec<PolicyInput>,
    /// With `scale_in_victim`: the instances a scale-in terminates (each with why), rather than
    /// letting AWS choose; as many as the capacity drops.
    pub victims: Vec<(String, String)>,
}

impl Decision {
    pub fn changes(&self) -> bool {
        self.desired != self.current
    }

    /// Each policy's reason (`policy: reason`), then the notes, then the victims.
    pub fn reasons(&self) -> Vec<String> {
        self.inputs
            .iter()
            .map(|i| format!("{}: {}", i.policy, i.reason))
            .chain(self.notes.iter().cloned())
            .chain(
                self.victims
                    .iter()
                    .map(|(i, why)| format!("terminates {i}: {why}")),
            )
            .collect()
    }

    /// Whether a held decision is worth saying (once per change of what it says): a guard or a
    /// pause holds it, not a cooldown, which runs out by itself.
    pub fn held_worth_saying(&self) -> bool {
        self.held
            .as_deref()
            .is_some_and(|h| !h.starts_with(COOLDOWN_OUT) && !h.starts_with(COOLDOWN_IN))
    }
}

const COOLDOWN_OUT: &str = "scale-out cooldown";
const COOLDOWN_IN: &str = "scale-in cooldown";

/// One policy's recommendation from its value: the capacity it wants, clamped to `[min, max]`,
/// with a sentence saying why.
pub fn recommend(p: &ScalingPolicy, current: u32, value: f64) -> (u32, String) {
    recommend_within(p, current, value, p.min, p.max)
}

/// [`recommend`] within bounds other than the policy's own (a schedule's).
pub fn recommend_within(
    p: &ScalingPolicy,
    current: u32,
    value: f64,
    min: u32,
    max: u32,
) -> (u32, String) {
    let v6 = crate::gofmt::g(value, 6);
    let (want, why): (i64, String) = match &p.mode {
        ScalingMode::Target { target, tolerance } => {
            let ratio = value / target;
            if (ratio - 1.0).abs() <= *tolerance {
                (
                    i64::from(current),
                    format!("value {v6} within {tolerance} of target {target}"),
                )
            } else {
                let base = f64::from(current.max(1));
                let want = crate::controls::ceil_whole(base * ratio);
                let want = if want.is_finite() {
                    want.clamp(0.0, f64::from(u32::MAX)) as i64
                } else {
                    i64::from(current)
                };
                (
                    want,
                    format!(
                        "value {v6} vs target {target}: ceil({base} × {v6} / {target}) = {want}"
                    ),
                )
            }
        }
        ScalingMode::Steps(steps) => {
            match steps
                .iter()
                .find(|s| s.lower.is_none_or(|l| value >= l) && s.upper.is_none_or(|u| value < u))
            {
                Some(s) => (
                    i64::from(current).saturating_add(s.adjust),
                    format!(
                        "value {v6} in step [{}, {}): adjust {:+}",
                        s.lower.map_or("-inf".into(), |l| l.to_string()),
                        s.upper.map_or("+inf".into(), |u| u.to_string()),
                        s.adjust
                    ),
                ),
                None => (i64::from(current), format!("value {v6} in no step")),
            }
        }
    };
    let clamped = want.clamp(i64::from(min), i64::from(max.max(min))) as u32;
    let why = if i64::from(clamped) != want {
        format!("{why}, clamped to [{min}, {}]", max.max(min))
    } else {
        why
    };
    (clamped, why)
}

/// Records a raw recommendation and returns the stabilized one. A scale-out (or hold) passes
/// through; a scale-in goes only to the highest recommendation within the stabilization window,
/// and never above `current` (an old high recommendation holds capacity, it does not add any).
pub fn stabilize(p: &ScalingPolicy, st: &mut PolicyState, now: i64, raw: u32, current: u32) -> u32 {
    st.history.push_back((now, raw));
    while st
        .history
        .front()
        .is_some_and(|(t, _)| *t <= now.saturating_sub(p.scale_in_stabilization_ms))
    {
        st.history.pop_front();
    }
    if raw >= current {
        return raw;
    }
    st.history
        .iter()
        .map(|(_, r)| *r)
        .max()
        .unwrap_or(raw)
        .min(current)
}

/// Decides a group's capacity. `policies` are the group's policies with their observations and
/// states, in a stable order.
pub fn decide(
    asg: &str,
    current: u32,
    policies: &mut [(&ScalingPolicy, Observation, &mut PolicyState)],
    guards: &Guards,
    group: &mut GroupState,
    now: i64,
) -> Decision {
    // Bounds of the group: the tightest of its policies', or those of the schedule in force.
    let mut lo = policies.iter().map(|(p, _, _)| p.min).max().unwrap_or(0);
    let mut hi = policies
        .iter()
        .map(|(p, _, _)| p.max)
        .min()
        .unwrap_or(u32::MAX)
        .max(lo);
    if let Some(r) = &group.scheduled {
        lo = r.min.unwrap_or(lo);
        hi = r.max.unwrap_or(hi).max(lo);
    }
    // Capacity still warming is not asked for twice: a policy with a warmup counts from the
    // warm instances, whose metric it reads. Warming is the larger of the instances that push
    // but are not yet warm and what this group grew by within the warmup (net of what it
    // shrank by since), as far as warm instances leave it room: launched instances whose
    // agents do not push yet are warming too, as AWS counts them.
    let warmup_ms = policies
        .iter()
        .filter_map(|(p, _, _)| p.controls.instance_warmup_ms)
        .max();
    let grown: i64 = warmup_ms.map_or(0, |w| {
        group
            .changes
            .iter()
            .filter(|(t, _)| *t > now.saturating_sub(w))
            .map(|(_, d)| *d)
            .sum()
    });
    let launching = u32::try_from(grown.max(0))
        .unwrap_or(u32::MAX)
        .min(current.saturating_sub(guards.warm));
    let warming = guards.warming.max(launching).min(current);
    let warm = current - warming;
    let mut inputs = Vec::with_capacity(policies.len());
    for (p, obs, st) in policies.iter_mut() {
        let value = obs.value.filter(|v| v.is_finite());
        if value.is_some() {
            group.no_data_since.remove(&p.name);
        }
        match value {
            Some(v) => {
                let base = if p.controls.instance_warmup_ms.is_some() && warming > 0 {
                    warm
                } else {
                    current
                };
                let (raw, reason) = recommend_within(p, base, v, lo, hi);
                // Counted from the warm instances, a recommendation can only add to the group:
                // no scale-in while instances warm.
                let (raw, reason) = if base != current {
                    (
                        raw.max(current.clamp(lo, hi)),
                        format!("{reason} ({warming} of {current} warming: counted from {base})"),
                    )
                } else {
                    (raw, reason)
                };
                let rec = stabilize(p, st, now, raw, current);
                let reason = if rec != raw {
                    format!(
                        "{reason}; stabilized to {rec} (highest over the last {})",
                        crate::duration::format_ms(p.scale_in_stabilization_ms)
                    )
                } else {
                    reason
                };
                inputs.push(PolicyInput {
                    policy: p.name.clone(),
                    value: Some(v),
                    raw: Some(raw),
                    recommended: Some(rec),
                    reason,
                });
            }
            None => {
                let (recommended, reason) = match &obs.error {
                    Some(e) => {
                        // Not "no data": the no-data clock starts again after it.
                        group.no_data_since.remove(&p.name);
                        (None, format!("{e}: holds, never scales in"))
                    }
                    None => no_data(p, group, current, now, (lo, hi)),
                };
                inputs.push(PolicyInput {
                    policy: p.name.clone(),
                    value: None,
                    raw: recommended,
                    recommended,
                    reason,
                });
            }
        }
    }
    let names: std::collections::HashSet<&str> =
        policies.iter().map(|(p, _, _)| p.name.as_str()).collect();
    group
        .no_data_since
        .retain(|k, _| names.contains(k.as_str()));
    let mut d = Decision {
        at: now,
        asg: asg.to_string(),
        current,
        desired: current,
        direction: None,
        held: None,
        notes: guards.notes.clone(),
        scheduled: None,
        by: None,
        inputs,
        victims: Vec::new(),
    };
    // Out if any asks: the largest ask.
    let out = d
        .inputs
        .iter()
        .filter_map(|i| {
            i.recommended
                .filter(|r| *r > current)
                .map(|r| (r, i.policy.clone()))
        })
        .max_by_key(|(r, _)| *r);
    // Outside the bounds (changed by hand, or bounds edited): bring it back first.
    // A schedule that ran now moves the group into its bounds and no further, pause or not (as
    // AWS applies a scheduled action); anything more is decided next time, like any change.
    let schedule_move = guards.schedule_ran && (current < lo || current > hi);
    if current < lo || current > hi {
        let target = current.clamp(lo, hi);
        let target = match &out {
            Some((r, _)) if *r > target && !schedule_move => (*r).min(hi),
            _ => target,
        };
        d.desired = target;
        d.direction = Some(if target > current {
            Direction::Out
        } else {
            Direction::In
        });
        d.by = Some(match &group.scheduled {
            Some(r) if schedule_move => format!("schedule {}", r.schedule),
            _ => "bounds".into(),
        });
    } else if let Some((r, by)) = out {
        let cooldown = policies
            .iter()
            .find(|(p, _, _)| p.name == by)
            .map_or(0, |(p, _, _)| p.scale_out_cooldown_ms);
        if let Some(last) = group
            .last_scale_out
            .filter(|l| now.saturating_sub(*l) < cooldown)
        {
            d.held = Some(format!(
                "{COOLDOWN_OUT} of {by} until {}",
                last.saturating_add(cooldown)
            ));
        } else if let Some(g) = &guards.hold_out {
            d.held = Some(format!(
                "{g}: would scale out from {current} to {}",
                r.min(hi)
            ));
        } else {
            d.desired = r.min(hi);
            d.direction = Some(Direction::Out);
            d.by = Some(by);
            for (p, _, _) in policies.iter() {
                let Some(v) = &p.controls.max_scale_out else {
                    continue;
                };
                let (lim, why) = crate::controls::out_limit(v, &group.changes, current, now);
                if d.desired > lim {
                    d.notes.push(format!(
                        "max_scale_out of {}: {} limits {} to {lim} ({why})",
                        p.name,
                        crate::controls::describe(v),
                        d.desired
                    ));
                    d.desired = lim.max(current);
                }
            }
            if d.desired == current {
                d.held = d.notes.last().cloned();
            }
        }
    } else if !d.inputs.is_empty()
        && d.inputs
            .iter()
            .all(|i| i.recommended.is_some_and(|r| r < current))
    {
        // In only if all agree: to the largest recommendation, so no policy is pushed below its
        // own wish.
        let (r, by) = d
            .inputs
            .iter()
            .filter_map(|i| i.recommended.map(|r| (r, i.policy.clone())))
            .max_by_key(|(r, _)| *r)
            .unwrap_or((current, String::new()));
        let last_activity = match (group.last_scale_in, group.last_scale_out) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let blocking = policies
            .iter()
            .filter(|(p, _, _)| {
                last_activity.is_some_and(|l| now.saturating_sub(l) < p.scale_in_cooldown_ms)
            })
            .map(|(p, _, _)| {
                (
                    p.name.clone(),
                    last_activity
                        .unwrap_or(0)
                        .saturating_add(p.scale_in_cooldown_ms),
                )
            })
            .max_by_key(|(_, until)| *until);
        if let Some((name, until)) = blocking {
            d.held = Some(format!("{COOLDOWN_IN} of {name} until {until}"));
        } else if warming > 0 && warmup_ms.is_some() {
            d.held = Some(format!(
                "{} instance{} warming: no scale-in (would scale in from {current} to {})",
                warming,
                if warming == 1 { "" } else { "s" },
                r.max(lo)
            ));
        } else if let Some(g) = &guards.hold_in {
            d.held = Some(format!(
                "{g}: would scale in from {current} to {}",
                r.max(lo)
            ));
        } else {
            d.desired = r.max(lo);
            d.direction = Some(Direction::In);
            d.by = Some(by);
            for (p, _, _) in policies.iter() {
                let Some(v) = &p.controls.max_scale_in else {
                    continue;
                };
                let (lim, why) = crate::controls::in_limit(v, &group.changes, current, now);
                if d.desired < lim {
                    d.notes.push(format!(
                        "max_scale_in of {}: {} limits {} to {lim} ({why})",
                        p.name,
                        crate::controls::describe(v),
                        d.desired
                    ));
                    d.desired = lim.min(current);
                }
            }
            if let Some((n, why)) = &guards.removable {
                let lim = current.saturating_sub(*n);
                if d.desired < lim {
                    d.notes.push(format!(
                        "scale_in_victim: {} may be terminated ({why}): limits {} to {lim}",
                        if *n == 1 {
                            "1 instance".to_string()
                        } else {
                            format!("{n} instances")
                        },
                        d.desired
                    ));
                    d.desired = lim;
                }
            }
            if d.desired == current {
                d.held = d.notes.last().cloned();
            }
        }
    }
    // Paused: said and held, no cooldown started.
    if d.desired != current && !schedule_move {
        if let Some(p) = crate::pause::in_force(&mut group.paused, now) {
            d.held = Some(format!(
                "paused: would scale {} from {current} to {} {}",
                if d.desired > current { "out" } else { "in" },
                d.desired,
                p.describe()
            ));
            d.desired = current;
        }
    } else {
        crate::pause::in_force(&mut group.paused, now);
    }
    // What velocity limits and warmup count: every change within the longest of their periods.
    let keep = policies
        .iter()
        .flat_map(|(p, _, _)| [&p.controls.max_scale_out, &p.controls.max_scale_in])
        .flatten()
        .map(|v| v.period_ms)
        .chain(warmup_ms)
        .max()
        .unwrap_or(0);
    if d.desired == current {
        d.direction = None;
    } else {
        if let Some(r) = &group.scheduled {
            d.notes.push(format!(
                "bounds [{lo}, {hi}] from schedule {} (ran {})",
                r.schedule,
                crate::duration::format_timestamp_ms(r.at)
            ));
        }
        match d.direction {
            Some(Direction::Out) => group.last_scale_out = Some(now),
            Some(Direction::In) => group.last_scale_in = Some(now),
            None => {}
        }
        if keep > 0 {
            group
                .changes
                .push_back((now, i64::from(d.desired) - i64::from(current)));
        }
    }
    while group
        .changes
        .front()
        .is_some_and(|(t, _)| *t <= now.saturating_sub(keep))
    {
        group.changes.pop_front();
    }
    d
}

/// A policy without data: holds, or after `no_data_for` falls back to its `on_no_data` capacity.
fn no_data(
    p: &ScalingPolicy,
    group: &mut GroupState,
    current: u32,
    now: i64,
    (lo, hi): (u32, u32),
) -> (Option<u32>, String) {
    use crate::controls::NoData;
    use crate::duration::format_ms;
    let since = *group.no_data_since.entry(p.name.clone()).or_insert(now);
    let gone = now.saturating_sub(since);
    match p.controls.on_no_data {
        NoData::Hold => (None, "no data: holds, never scales in".into()),
        NoData::Capacity(c) if gone >= p.controls.no_data_for_ms => {
            let c = c.clamp(lo, hi);
            (
                Some(c),
                format!(
                    "no data for {}: on_no_data falls back to {c} (from {current})",
                    format_ms(gone)
                ),
            )
        }
        NoData::Capacity(c) => (
            None,
            format!(
                "no data for {}: holds (falls back to {c} after {})",
                format_ms(gone),
                format_ms(p.controls.no_data_for_ms)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::promql::parse;
    use crate::rulefile::Step;
    use proptest::prelude::*;

    fn target_policy(name: &str, min: u32, max: u32, target: f64) -> ScalingPolicy {
        ScalingPolicy {
            name: name.into(),
            asg: "web".into(),
            min,
            max,
            expr: parse("1").unwrap(),
            mode: ScalingMode::Target {
                target,
                tolerance: 0.1,
            },
            scale_out_cooldown_ms: 60_000,
            scale_in_cooldown_ms: 300_000,
            scale_in_stabilization_ms: 300_000,
            interval_ms: None,
            controls: Default::default(),
        }
    }

    fn decide_one(
        p: &ScalingPolicy,
        st: &mut PolicyState,
        g: &mut GroupState,
        current: u32,
        v: Option<f64>,
        now: i64,
    ) -> Decision {
        decide(
            "web",
            current,
            &mut [(p, Observation::value(v), st)],
            &Guards::default(),
            g,
            now,
        )
    }

    #[test]
    fn a_pause_holds_the_decision_without_starting_a_cooldown_and_ends_at_its_time() {
        let p = target_policy("cpu", 2, 20, 0.6);
        let (mut st, mut g) = (PolicyState::default(), GroupState::default());
        g.paused = Some(crate::pause::Pause {
            reason: "deploy".into(),
            author: "ops".into(),
            since: 0,
            until: Some(120_000),
        });
        let d = decide_one(&p, &mut st, &mut g, 4, Some(0.9), 60_000);
        assert_eq!((d.current, d.desired, d.direction), (4, 4, None));
        let held = d.held.expect("held");
        assert!(
            held.starts_with("paused: would scale out from 4 to 6 (paused by ops"),
            "{held}"
        );
        assert_eq!(g.last_scale_out, None, "no cooldown started");
        // At its end the pause is cleared and the next decision goes through.
        let d = decide_one(&p, &mut st, &mut g, 4, Some(0.9), 120_000);
        assert_eq!((d.desired, d.held), (6, None));
        assert!(g.paused.is_none());
    }

    #[test]
    fn a_velocity_limit_caps_each_period_and_says_so() {
        let mut p = target_policy("cpu", 1, 100, 0.5);
        p.scale_out_cooldown_ms = 0;
        p.controls.max_scale_out = Some(crate::controls::Velocity {
            instances: Some(4),
            percent: Some(100.0),
            period_ms: 60_000,
        });
        let (mut st, mut g) = (PolicyState::default(), GroupState::default());
        // 2 instances at 4x the target want 8: 2 + max(4, 100% of 2) = 6.
        let d = decide_one(&p, &mut st, &mut g, 2, Some(2.0), 0);
        assert_eq!(d.desired, 6, "{d:?}");
        assert_eq!(
            d.notes,
            ["max_scale_out of cpu: 4 instances or 100% per 1m limits 8 to 6 (2 at the start of the last 1m)"]
        );
        // Within the same minute the period still starts at 2: nothing more.
        let d = decide_one(&p, &mut st, &mut g, 6, Some(2.0), 30_000);
        assert_eq!(d.desired, 6, "{d:?}");
        // A minute after the first change the period starts at 6: 6 + max(4, 6) = 12.
        let d = decide_one(&p, &mut st, &mut g, 6, Some(2.0), 60_000);
        assert_eq!(d.desired, 12, "{d:?}");
        assert!(g.changes.iter().all(|(t, _)| *t > 0), "old changes pruned");
    }

    #[test]
    fn guards_hold_their_direction_only() {
        let mut p = target_policy("cpu", 1, 20, 0.5);
        p.scale_in_cooldown_ms = 0;
        p.scale_in_stabilization_ms = 0;
        let guards = Guards {
            hold_out: Some("hold_out_when of cpu returns {db=\"main\"}".into()),
            hold_in: None,
            notes: vec![],
            ..Guards::default()
        };
        let (mut st, mut g) = (PolicyState::default(), GroupState::default());
        let obs = |v| Observation::value(Some(v));
        let d = decide("web", 4, &mut [(&p, obs(1.0), &mut st)], &guards, &mut g, 0);
        assert_eq!(d.desired, 4);
        assert_eq!(
            d.held.as_deref(),
            Some("hold_out_when of cpu returns {db=\"main\"}: would scale out from 4 to 8")
        );
        assert!(d.held_worth_saying());
        assert_eq!(g.last_scale_out, None, "a held decision starts no cooldown");
        // The guard holds scale-out only: scale-in goes through.
        let d = decide(
            "web",
            4,
            &mut [(&p, obs(0.1), &mut st)],
            &guards,
            &mut g,
            1_000,
        );
        assert_eq!(d.desired, 1, "{d:?}");
    }

    #[test]
    fn a_product_a_rounding_error_above_a_whole_number_is_not_rounded_up() {
        let p = target_policy("rps", 1, 100, 100.0);
        // 3,000 requests/s over 11 instances, 11 of them: 30 exactly (not 31).
        let (want, why) = recommend(&p, 11, 3000.0 / 11.0);
        assert_eq!(want, 30, "{why}");
        // Just above a whole number for real still asks for one more.
        assert_eq!(recommend(&p, 10, 300.1).0, 31);
    }

    #[test]
    fn capacity_launched_within_the_warmup_is_warming_before_its_agents_push() {
        let mut p = target_policy("rps", 1, 100, 100.0);
        p.controls.instance_warmup_ms = Some(180_000);
        let (mut st, mut g) = (PolicyState::default(), GroupState::default());
        // 6 warm instances at 500 each: 30.
        let d = decide_one(&p, &mut st, &mut g, 6, Some(500.0), 0);
        assert_eq!(d.desired, 30);
        // A minute on, the 24 launched do not push yet: the metric is still the 6 warm ones'
        // (500 each), and nothing more is asked for.
        let d = decide_one(&p, &mut st, &mut g, 30, Some(500.0), 60_000);
        assert_eq!(d.desired, 30, "{:?}", d.reasons());
        assert!(
            d.reasons()[0].contains("(24 of 30 warming: counted from 6)"),
            "{:?}",
            d.reasons()
        );
        // Nor does the group scale in while they warm.
        let d = decide_one(&p, &mut st, &mut g, 30, Some(10.0), 120_000);
        assert_eq!(d.desired, 30);
        assert!(
            d.reasons()[0].contains("(24 of 30 warming: counted from 6)"),
            "{:?}",
            d.reasons()
        );
        // Past the warmup they count as warm.
        let d = decide_one(&p, &mut st, &mut g, 30, Some(100.0), 181_000);
        assert_eq!(d.desired, 30);
        assert!(!d.reasons()[0].contains("warming"), "{:?}", d.reasons());
    }

    #[test]
    fn no_data_holds_then_falls_back_but_an_error_never_does() {
        let mut p = target_policy("cpu", 2, 20, 0.5);
        p.scale_in_cooldown_ms = 0;
        p.controls.on_no_data = crate::controls::NoData::Capacity(6);
        p.controls.no_data_for_ms = 120_000;
        let (mut st, mut g) = (PolicyState::default(), GroupState::default());
        let d = decide_one(&p, &mut st, &mut g, 10, None, 0);
        assert_eq!(d.desired, 10);
        assert_eq!(
            d.inputs[0].reason,
            "no data for 0s: holds (falls back to 6 after 2m)"
        );
        let d = decide_one(&p, &mut st, &mut g, 10, None, 119_000);
        assert_eq!(d.desired, 10);
        let d = decide_one(&p, &mut st, &mut g, 10, None, 120_000);
        assert_eq!((d.desired, d.direction), (6, Some(Direction::In)), "{d:?}");
        assert_eq!(
            d.inputs[0].reason,
            "no data for 2m: on_no_data falls back to 6 (from 10)"
        );
        // Data returns: the clock starts again.
        decide_one(&p, &mut st, &mut g, 6, Some(0.5), 130_000);
        assert!(g.no_data_since.is_empty());
        // An evaluation error is not "no data": it holds however long it lasts.
        for t in [200_000, 400_000, 600_000] {
            let d = decide(
                "web",
                6,
                &mut [(
                    &p,
                    Observation {
                        value: None,
                        error: Some("evaluation failed: boom".into()),
                    },
                    &mut st,
                )],
                &Guards::default(),
                &mut g,
                t,
            );
            assert_eq!(d.desired, 6, "{d:?}");
            assert_eq!(
                d.inputs[0].reason,
                "evaluation failed: boom: holds, never scales in"
            );
        }
        assert!(g.no_data_since.is_empty());
    }

    #[test]
    fn a_schedule_sets_the_bounds_even_in_a_pause() {
        let mut p = target_policy("cpu", 2, 20, 0.5);
        p.scale_out_cooldown_ms = 0;
        let (mut st, mut g) = (PolicyState::default(), GroupState::default());
        g.scheduled = Some(crate::schedule::ScheduleRun {
            schedule: "peak".into(),
            at: 0,
            min: Some(6),
            max: Some(8),
        });
        g.paused = Some(crate::pause::Pause {
            reason: "deploy".into(),
            author: "ops".into(),
            since: 0,
            until: None,
        });
        // The run brings the group into its bounds, and no further, though a policy wants more.
        let ran = Guards {
            schedule_ran: true,
            ..Guards::default()
        };
        let d = decide(
            "web",
            2,
            &mut [(&p, Observation::value(Some(5.0)), &mut st)],
            &ran,
            &mut g,
            1_000,
        );
        assert_eq!(
            (d.desired, d.by.as_deref()),
            (6, Some("schedule peak")),
            "{d:?}"
        );
        // Later, outside the bounds again (changed by hand): the pause holds.
        let d = decide_one(&p, &mut st, &mut g, 3, Some(0.5), 1_500);
        assert_eq!(d.desired, 3, "{d:?}");
        assert!(
            d.held.as_deref().unwrap_or("").starts_with("paused:"),
            "{d:?}"
        );
        // Inside the scheduled bounds the pause holds; recommendations clamp to them.
        let d = decide_one(&p, &mut st, &mut g, 6, Some(5.0), 2_000);
        assert_eq!(d.desired, 6);
        assert!(
            d.held
                .as_deref()
                .unwrap_or("")
                .starts_with("paused: would scale out from 6 to 8"),
            "{d:?}"
        );
    }

    #[test]
    fn target_tracking_math_and_tolerance() {
        let p = target_policy("cpu", 2, 20, 0.6);
        assert_eq!(recommend(&p, 4, 0.9).0, 6);
        assert_eq!(recommend(&p, 4, 0.62).0, 4, "inside tolerance");
        assert_eq!(recommend(&p, 4, 0.3).0, 2);
        assert_eq!(recommend(&p, 4, 0.01).0, 2, "clamped to min");
        assert_eq!(recommend(&p, 10, 6.0).0, 20, "clamped to max");
    }

    #[test]
    fn steps() {
        let mut p = target_policy("rps", 1, 10, 1.0);
        p.mode = ScalingMode::Steps(vec![
            Step {
                lower: None,
                upper: Some(50.0),
                adjust: -1,
            },
            Step {
                lower: Some(200.0),
                upper: Some(400.0),
                adjust: 2,
            },
            Step {
                lower: Some(400.0),
                upper: None,
                adjust: 4,
            },
        ]);
        assert_eq!(recommend(&p, 4, 10.0).0, 3);
        assert_eq!(recommend(&p, 4, 100.0).0, 4);
        assert_eq!(recommend(&p, 4, 200.0).0, 6);
        assert_eq!(recommend(&p, 4, 1000.0).0, 8);
    }

    #[test]
    fn cooldowns_and_stabilization() {
        let p = target_policy("cpu", 2, 20, 0.5);
        let (mut st, mut g) = (PolicyState::default(), GroupState::default());
        let d = decide_one(&p, &mut st, &mut g, 4, Some(1.0), 0);
        assert_eq!((d.desired, d.direction), (8, Some(Direction::Out)));
        let d = decide_one(&p, &mut st, &mut g, 8, Some(1.0), 30_000);
        assert_eq!(d.desired, 8);
        assert!(
            d.held
                .as_deref()
                .unwrap_or("")
                .contains("scale-out cooldown"),
            "{d:?}"
        );
        let d = decide_one(&p, &mut st, &mut g, 8, Some(1.0), 60_000);
        assert_eq!(d.desired, 16, "cooldown over");
        // Load drops: scale-in waits for the stabilization window and the cooldown.
        let d = decide_one(&p, &mut st, &mut g, 16, Some(0.1), 300_000);
        assert_eq!(d.desired, 16, "{d:?}");
        let d = decide_one(&p, &mut st, &mut g, 16, Some(0.1), 700_000);
        assert_eq!((d.desired, d.direction), (4, Some(Direction::In)), "{d:?}");
    }

    #[test]
    fn scale_in_goes_only_to_the_highest_recommendation_of_the_window() {
        let mut p = target_policy("cpu", 1, 20, 0.5);
        p.scale_in_cooldown_ms = 0;
        let (mut st, mut g) = (PolicyState::default(), GroupState::default());
        let d = decide_one(&p, &mut st, &mut g, 10, Some(0.5), 0);
        assert_eq!(d.desired, 10, "on target");
        let d = decide_one(&p, &mut st, &mut g, 10, Some(0.1), 100_000);
        assert_eq!(
            d.desired, 10,
            "the window still holds the recommendation of 10: {d:?}"
        );
        let d = decide_one(&p, &mut st, &mut g, 10, Some(0.3), 200_000);
        assert_eq!(d.desired, 10);
        let d = decide_one(&p, &mut st, &mut g, 10, Some(0.1), 301_000);
        assert_eq!(
            d.desired, 6,
            "highest of the last 5m is ceil(10 x 0.3 / 0.5) = 6: {d:?}"
        );
    }

    #[test]
    fn combination_out_if_any_in_only_if_all() {
        let a = target_policy("cpu", 2, 20, 0.5);
        let b = target_policy("rps", 2, 20, 100.0);
        let (mut sa, mut sb, mut g) = (
            PolicyState::default(),
            PolicyState::default(),
            GroupState::default(),
        );
        let d = decide(
            "web",
            4,
            &mut [
                (&a, Observation::value(Some(1.0)), &mut sa),
                (&b, Observation::value(Some(10.0)), &mut sb),
            ],
            &Guards::default(),
            &mut g,
            0,
        );
        assert_eq!(
            (d.desired, d.by.as_deref()),
            (8, Some("cpu")),
            "out if any asks"
        );
        let (mut sa, mut sb, mut g) = (
            PolicyState::default(),
            PolicyState::default(),
            GroupState::default(),
        );
        let d = decide(
            "web",
            8,
            &mut [
                (&a, Observation::value(Some(0.1)), &mut sa),
                (&b, Observation::value(Some(80.0)), &mut sb),
            ],
            &Guards::default(),
            &mut g,
            0,
        );
        assert_eq!(d.desired, 7, "in to the largest recommendation: {d:?}");
        let (mut sa, mut sb, mut g) = (
            PolicyState::default(),
            PolicyState::default(),
            GroupState::default(),
        );
        let d = decide(
            "web",
            8,
            &mut [
                (&a, Observation::value(Some(0.1)), &mut sa),
                (&b, Observation::value(None), &mut sb),
            ],
            &Guards::default(),
            &mut g,
            0,
        );
        assert_eq!(d.desired, 8, "missing data never scales in");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Random policies, capacities and value sequences: every decision stays within
        /// [min, max] (once the group is inside), never lands inside a cooldown, and never scales
        /// in when a policy had no data.
        #[test]
        fn invariants_hold(
            min in 0u32..10,
            span in 0u32..30,
            start in 0u32..50,
            target in 0.1f64..100.0,
            out_cd in 0i64..600_000,
            in_cd in 0i64..900_000,
                        stab in 0i64..900_000,
            step_in in 1i64..50,
            step_out in 1i64..(i64::from(u32::MAX) * 2),
            steps in proptest::collection::vec((0i64..120_000, proptest::option::of(-1.0f64..1000.0), proptest::option::of(-1.0f64..1000.0)), 1..40),
        ) {
            let max = min + span;
            let mut a = target_policy("a", min, max, target);
            a.scale_out_cooldown_ms = out_cd;
            a.scale_in_cooldown_ms = in_cd;
            a.scale_in_stabilization_ms = stab;
                        // The second policy is a step policy on the same group.
            let mut b = a.clone();
            b.name = "b".into();
            b.mode = ScalingMode::Steps(vec![
                Step { lower: None, upper: Some(10.0), adjust: -step_in },
                Step { lower: Some(10.0), upper: Some(500.0), adjust: 0 },
                Step { lower: Some(500.0), upper: None, adjust: step_out },
            ]);
            let (mut sa, mut sb, mut g) = (PolicyState::default(), PolicyState::default(), GroupState::default());
            let mut current = start;
            let mut now = 0i64;
            let mut last_out: Option<i64> = None;
            let mut last_any: Option<i64> = None;
            for (dt, va, vb) in steps {
                now += dt;
                let d = decide("g", current, &mut [(&a, Observation::value(va), &mut sa), (&b, Observation::value(vb), &mut sb)], &Guards::default(), &mut g, now);
                // Always inside the bounds (a group found outside them is brought back at once).
                prop_assert!((min..=max).contains(&d.desired), "left bounds: {d:?}");
                if (min..=max).contains(&current) {
                    if d.desired > current {
                        prop_assert!(last_out.is_none_or(|l| now - l >= out_cd), "scale-out inside cooldown");
                    }
                    if d.desired < current {
                        prop_assert!(va.is_some() && vb.is_some(), "scaled in without data");
                        prop_assert!(last_any.is_none_or(|l| now - l >= in_cd), "scale-in inside cooldown");
                    }
                }
                if d.desired > current { last_out = Some(now); }
                if d.desired != current { last_any = Some(now); }
                current = d.desired;
            }
        }
    }
}
