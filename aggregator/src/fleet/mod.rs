//! The fleet: what AWS says of the Auto Scaling groups the policies name, and the changes Vigil
//! has decided and not yet carried out.
//!
//! - The view: DescribeAutoScalingGroups for every group a policy names, refreshed on its own
//!   task ([`Fleet::refresh`]); before each evaluation it gives the rules the groups' real
//!   capacity and which instances may be replaced now ([`Fleet::prepare`]).
//! - Scaling: a decision becomes the group's pending capacity, clamped to the group's own
//!   min/max, applied with SetDesiredCapacity by the actuator (`actuator.rs`) and retried until
//!   AWS takes it or a newer decision replaces it. Desired-capacity changes made outside Vigil are
//!   detected, logged, counted and adopted.
//! - Scale-in that chose its victims (`scale_in_victim`): TerminateInstanceInAutoScalingGroup
//!   with ShouldDecrementDesiredCapacity for each (`terminate.rs`), in place of a capacity.
//! - Replacement: SetInstanceHealth Unhealthy for each instance a decision names (the cap and
//!   fail-open are the rules crate's), retried while the instance is still in service.
//!
//! The fleet is handed its [`AutoScaling`] at start-up: the SDK's, or a dry run's, which logs
//! the changes; the fleet then follows its own simulation of them. Without `[aws]` nothing is
//! described and the rules simulate every group.

mod actuator;
mod bounds;
mod terminate;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};
use vigil_rules::duration::format_timestamp_ms;
use vigil_rules::evaluator::{Eligibility, Event, Observations, Observed};
use vigil_rules::victim::Placement;

use crate::aws::{AutoScaling, CallError, GroupInfo, Lifecycle};
use crate::clock::SharedClock;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    asg: String,
}

#[derive(Clone, Default)]
struct Metrics {
    external_changes: Family<GroupLabels, Counter>,
}

impl Metrics {
    fn register(r: &mut Registry) -> Metrics {
        let m = Metrics::default();
        r.register(
            "vigil_aggregator_external_capacity_changes",
            "Desired-capacity changes made outside Vigil, by group",
            m.external_changes.clone(),
        );
        m
    }

    fn external_change(&self, asg: &str) {
        self.external_changes
            .get_or_create(&GroupLabels {
                asg: asg.to_string(),
            })
            .inc();
    }
}

/// A capacity change decided and not yet carried out. Persisted with the evaluation; its
/// retry schedule starts over after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PendingScale {
    desired: u32,
    /// What the decision asked for (before the group's own bounds).
    asked: u32,
    /// The capacity the decision started from: if AWS shows another by the time it is applied,
    /// someone else changed the group meanwhile.
    from: u32,
    decided_at: i64,
    #[serde(skip)]
    attempts: u32,
    #[serde(skip)]
    next_try: i64,
}

/// An instance to mark Unhealthy, persisted as the name of its group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
struct PendingHealth {
    asg: String,
    attempts: u32,
    next_try: i64,
    /// The evaluation that decided it (0 when restored: what was saved is recorded).
    decided_at: i64,
}

impl From<String> for PendingHealth {
    fn from(asg: String) -> Self {
        PendingHealth {
            asg,
            attempts: 0,
            next_try: 0,
            decided_at: 0,
        }
    }
}

impl From<PendingHealth> for String {
    fn from(p: PendingHealth) -> String {
        p.asg
    }
}

/// The actions not carried out yet, as the state database keeps them.
#[derive(Serialize, Deserialize)]
struct Pending<'a> {
    #[serde(default)]
    scale: std::borrow::Cow<'a, BTreeMap<String, PendingScale>>,
    #[serde(default)]
    health: std::borrow::Cow<'a, BTreeMap<String, PendingHealth>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    bounds: std::borrow::Cow<'a, BTreeMap<String, bounds::PendingBounds>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    terminate: std::borrow::Cow<'a, BTreeMap<String, terminate::PendingTerminate>>,
}

/// What Vigil last did to a group, for the API.
#[derive(Debug, Clone)]
struct Applied {
    at: i64,
    desired: u32,
    result: String,
}

#[derive(Debug, Default)]
struct State {
    /// Group → what AWS said, and when.
    groups: HashMap<String, (GroupInfo, i64)>,
    /// Instance → first time Vigil saw it in a group (a launch-time stand-in when the instance
    /// reports no boot time).
    first_seen: HashMap<String, i64>,
    pending: BTreeMap<String, PendingScale>,
    unhealthy: BTreeMap<String, PendingHealth>,
    /// Group → a schedule's bounds to set at AWS.
    bounds: BTreeMap<String, bounds::PendingBounds>,
    /// Instance → the scale-in victim to terminate.
    terminate: BTreeMap<String, terminate::PendingTerminate>,
    /// Instance → (group, when) of a victim terminated (or, in a dry run, that would have
    /// been): not in service any more, whatever a describe that predates it says, until a
    /// describe shows it gone or leaving (`terminate::TERMINATED_KEPT_MS` at most).
    terminated: HashMap<String, (String, i64)>,
    /// Group → the desired capacity AWS should have as far as Vigil knows (what it set last, or
    /// what it last read): a describe showing another means someone else changed it.
    baseline: HashMap<String, u32>,
    /// Dry run: the capacity each group would have after Vigil's decisions.
    simulated: HashMap<String, u32>,
    /// Bumped at every SetDesiredCapacity, so a describe that overlapped one is not mistaken
    /// for an outside change and does not overwrite the new capacity.
    generation: u64,
    last: BTreeMap<String, Applied>,
    /// Dry run: groups that could not be described lately, whose capacity follows the
    /// simulation.
    simulating: BTreeSet<String>,
    /// Whether the fence last said this process may not act (to log changes only).
    fenced: bool,
}

impl State {
    /// Removes a group's pending change if it is still the one decided at `decided_at` (a newer
    /// decision may have replaced it while a call was out).
    fn settle(&mut self, asg: &str, decided_at: i64) {
        if self
            .pending
            .get(asg)
            .is_some_and(|q| q.decided_at == decided_at)
        {
            self.pending.remove(asg);
        }
    }
}

/// Whether this process may change AWS now: the hook of the coming lease (of an HA pair,
/// exactly one acts). The actuator asks right before every call that changes a group (the
/// describe before a change included), and a process that may not act changes nothing and keeps
/// its pending actions, untried, for when it may.
pub trait Fence: Send + Sync {
    /// The fencing token of the current right to act (it grows with every new holder), or
    /// `None` while this process may not act.
    fn token(&self) -> Option<u64>;
    /// Whether another process acts (this one follows an HA holder): its decisions are only
    /// logged ("follower: would …") and dropped; the holder makes its own.
    fn follower(&self) -> bool {
        false
    }
    /// Whether what the evaluation at `at_ms` decided is recorded where a successor would find
    /// it (an HA cluster's shared state): only then is it carried out.
    fn recorded(&self, _at_ms: i64) -> bool {
        true
    }
}

/// A single aggregator: always allowed to act.
pub struct Sole;

impl Fence for Sole {
    fn token(&self) -> Option<u64> {
        Some(0)
    }
}

pub struct Fleet {
    scaler: Box<dyn AutoScaling>,
    fence: Box<dyn Fence>,
    clock: SharedClock,
    /// A fleet view older than this is not trusted: no decision is made from it.
    max_view_age_ms: i64,
    state: Mutex<State>,
    /// Wakes the actuator when decisions arrive.
    pub wake: tokio::sync::Notify,
    metrics: Metrics,
}

/// How often the fleet is described: the rules' tick, within 1–15 s.
pub fn refresh_interval_ms(tick_ms: i64) -> i64 {
    tick_ms.clamp(1_000, 15_000)
}

impl Fleet {
    pub fn new(
        scaler: Box<dyn AutoScaling>,
        clock: SharedClock,
        tick_ms: i64,
        r: &mut Registry,
    ) -> Fleet {
        Fleet {
            scaler,
            fence: Box::new(Sole),
            clock,
            max_view_age_ms: (5 * refresh_interval_ms(tick_ms)).max(30_000),
            state: Mutex::new(State::default()),
            wake: tokio::sync::Notify::new(),
            metrics: Metrics::register(r),
        }
    }

    /// The fleet acting only while `fence` allows it.
    pub fn with_fence(mut self, fence: Box<dyn Fence>) -> Fleet {
        self.fence = fence;
        self
    }

    /// Each member's AZ, as its group's last describe said (instance → AZ).
    pub fn zones(&self) -> HashMap<String, String> {
        self.state()
            .groups
            .values()
            .flat_map(|(g, _)| g.members.iter().map(|m| (m.id.clone(), m.az.clone())))
            .collect()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Whether AWS describes the groups (not without `[aws]`).
    pub fn describes(&self) -> bool {
        self.scaler.describes()
    }

    /// The group as AWS last described it.
    pub fn group(&self, asg: &str) -> Option<GroupInfo> {
        self.state().groups.get(asg).map(|(g, _)| g.clone())
    }

    pub fn pending(&self, asg: &str) -> Option<u32> {
        self.state().pending.get(asg).map(|p| p.desired)
    }

    /// A pause set on the group: a capacity decided before it and not yet applied (retried
    /// after a failure, say) is dropped, not applied late. Returns it.
    pub fn drop_pending(&self, asg: &str) -> Option<u32> {
        let dropped = self.state().pending.remove(asg).map(|p| p.desired);
        if let Some(d) = dropped {
            tracing::warn!(asg = %asg, desired = d, "paused: the capacity decided before the pause and not yet applied is dropped");
        }
        dropped
    }

    /// Before an evaluation: the real capacity of each group the rules name (or the capacity
    /// Vigil is applying, or in a dry run would have set), and which instances may be replaced
    /// now. `boot` is each instance's boot time (ms), from its agent. Without `[aws]` nothing
    /// is observed: every group is simulated.
    pub fn observe(
        &self,
        groups: &[String],
        boot: &HashMap<String, i64>,
        now: i64,
    ) -> Observations {
        let mut seen = Observations::default();
        if !self.scaler.describes() {
            return seen;
        }
        let dry_run = self.scaler.dry_run();
        let mut simulating = BTreeSet::new();
        let mut st = self.state();
        for asg in groups {
            let fresh = st
                .groups
                .get(asg)
                .filter(|(_, at)| now - at <= self.max_view_age_ms);
            let Some((g, _)) = fresh else {
                if dry_run {
                    // A dry run with AWS away follows its own simulation, as without [aws]
                    // (from the capacity it last decided), marked "simulated" in the API and
                    // on the page.
                    simulating.insert(asg.clone());
                } else {
                    // Not described (lately): decide nothing from a guessed capacity, replace
                    // nothing.
                    seen.groups.insert(asg.clone(), Observed::Unknown);
                }
                continue;
            };
            let capacity = match st.pending.get(asg) {
                Some(p) => p.desired,
                None if dry_run => st.simulated.get(asg).copied().unwrap_or(g.desired),
                None => g.desired,
            }
            .saturating_sub(st.terminating(asg));
            let placement = g
                .members
                .iter()
                .map(|m| {
                    let p = Placement {
                        az: m.az.clone(),
                        protected: m.protected_from_scale_in,
                        // A victim on its way out is not in service any more.
                        in_service: m.lifecycle == Lifecycle::InService
                            && !st.terminate.contains_key(&m.id)
                            && !st.terminated.contains_key(&m.id),
                    };
                    (m.id.clone(), p)
                })
                .collect();
            seen.placement.insert(asg.clone(), placement);
            let members = g
                .members
                .iter()
                .map(|m| {
                    let launched = boot
                        .get(&m.id)
                        .copied()
                        .or_else(|| st.first_seen.get(&m.id).copied())
                        .unwrap_or(now);
                    let why = if m.lifecycle != Lifecycle::InService {
                        Eligibility::Ignored(format!("not in service ({})", m.lifecycle.as_str()))
                    } else if !m.health.eq_ignore_ascii_case("healthy") {
                        Eligibility::Counted(format!("already {}", m.health))
                    } else if st.unhealthy.contains_key(&m.id) {
                        Eligibility::Counted("being marked Unhealthy".to_string())
                    } else if now - launched < g.grace_ms {
                        Eligibility::Ignored(format!(
                            "in its health-check grace period (until {})",
                            format_timestamp_ms(launched + g.grace_ms)
                        ))
                    } else {
                        Eligibility::Eligible
                    };
                    (m.id.clone(), why)
                })
                .collect();
            seen.groups
                .insert(asg.clone(), Observed::Live { capacity, members });
        }
        st.simulating = simulating;
        seen
    }

    /// Whether the group's capacity is Vigil's own simulation rather than AWS's: always without
    /// `[aws]`; in a dry run while the group cannot be described.
    pub fn simulated(&self, asg: &str) -> bool {
        !self.scaler.describes() || self.state().simulating.contains(asg)
    }

    /// After an evaluation: hands its decisions to the actuator.
    pub fn take(&self, events: &[Event], now: i64) {
        let mut st = self.state();
        for e in events {
            match e {
                Event::Scaling(d) => {
                    if let Some(r) = &d.scheduled {
                        st.bounds.insert(
                            d.asg.clone(),
                            bounds::PendingBounds {
                                schedule: r.schedule.clone(),
                                min: r.min,
                                max: r.max,
                                decided_at: now,
                                attempts: 0,
                                next_try: now,
                            },
                        );
                    }
                    // A held decision (a paused group) asks for no capacity.
                    if !d.changes() {
                        continue;
                    }
                    // Each victim's termination lowers AWS's desired capacity by one, after
                    // those still on their way (the decision counted them as gone already);
                    // never below the group's own min.
                    if !d.victims.is_empty() && !st.pending.contains_key(&d.asg) {
                        let lo = st
                            .bounds
                            .get(&d.asg)
                            .and_then(|b| b.min)
                            .unwrap_or_else(|| st.groups.get(&d.asg).map_or(0, |(g, _)| g.min));
                        let allowed = d.current.saturating_sub(lo) as usize;
                        if d.victims.len() > allowed {
                            tracing::warn!(asg = %d.asg, victims = d.victims.len(), min = lo, "more victims than the group's min allows: only the first are terminated");
                        }
                        for (instance, why) in d.victims.iter().take(allowed) {
                            tracing::info!(asg = %d.asg, instance = %instance, reason = %why, "scale-in victim");
                            st.terminate.insert(
                                instance.clone(),
                                terminate::PendingTerminate {
                                    asg: d.asg.clone(),
                                    decided_at: now,
                                    attempts: 0,
                                    next_try: now,
                                },
                            );
                        }
                        continue;
                    }
                    if !d.victims.is_empty() {
                        tracing::warn!(asg = %d.asg, desired = d.desired, "a capacity decided earlier is still being applied: this scale-in sets the capacity and AWS chooses the instances");
                    }
                    // A capacity replaces the victims not terminated yet.
                    st.terminate.retain(|_, t| t.asg != d.asg);
                    let (lo, hi) = match st.groups.get(&d.asg) {
                        Some((g, _)) => (g.min, g.max),
                        None => (0, u32::MAX),
                    };
                    // A schedule's bounds on their way to AWS are the group's already.
                    let (lo, hi) = match st.bounds.get(&d.asg) {
                        Some(b) => (b.min.unwrap_or(lo), b.max.unwrap_or(hi)),
                        None => (lo, hi),
                    };
                    let desired = d.desired.clamp(lo, hi.max(lo));
                    if desired != d.desired {
                        tracing::warn!(asg = %d.asg, decided = d.desired, applied = desired, min = lo, max = hi, "decision outside the group's own min/max: clamped");
                    }
                    st.pending.insert(
                        d.asg.clone(),
                        PendingScale {
                            desired,
                            asked: d.desired,
                            from: d.current,
                            decided_at: now,
                            attempts: 0,
                            next_try: now,
                        },
                    );
                }
                Event::Replace(r) => {
                    for (instance, why) in &r.replace {
                        tracing::info!(asg = %r.asg, instance = %instance, reason = %why, policy = %r.policy, "replacing instance");
                        st.unhealthy.insert(
                            instance.clone(),
                            PendingHealth {
                                asg: r.asg.clone(),
                                attempts: 0,
                                next_try: now,
                                decided_at: now,
                            },
                        );
                    }
                    for (instance, why) in &r.skipped {
                        tracing::info!(asg = %r.asg, instance = %instance, reason = %why, "unhealthy but left alone");
                    }
                }
                _ => {}
            }
        }
        drop(st);
        self.wake.notify_one();
    }

    /// The actions waiting to be carried out, for the state database (a restart finishes them).
    pub fn pending_json(&self) -> Json {
        let st = self.state();
        serde_json::to_value(Pending {
            scale: std::borrow::Cow::Borrowed(&st.pending),
            health: std::borrow::Cow::Borrowed(&st.unhealthy),
            bounds: std::borrow::Cow::Borrowed(&st.bounds),
            terminate: std::borrow::Cow::Borrowed(&st.terminate),
        })
        .unwrap_or(Json::Null)
    }

    /// Takes back what a previous run had not carried out yet.
    pub fn restore_pending(&self, v: &Json) -> Result<(), serde_json::Error> {
        let p = Pending::deserialize(v)?;
        let mut st = self.state();
        st.pending = p.scale.into_owned();
        st.unhealthy = p.health.into_owned();
        st.bounds = p.bounds.into_owned();
        st.terminate = p.terminate.into_owned();
        Ok(())
    }

    /// Describes `names` (the groups the rules name); detects capacity changes made outside
    /// Vigil.
    pub async fn refresh(&self, names: &[String]) -> Result<(), CallError> {
        if !self.scaler.describes() || names.is_empty() {
            return Ok(());
        }
        let generation = self.state().generation;
        let started = self.now_ms();
        let groups = self.scaler.describe(names).await?;
        let now = self.now_ms();
        let mut st = self.state();
        for name in names {
            if !groups.iter().any(|g| &g.name == name) {
                tracing::warn!(asg = %name, "Auto Scaling group not found");
            }
        }
        let overlapped = st.generation != generation;
        for mut g in groups {
            for m in &g.members {
                st.first_seen.entry(m.id.clone()).or_insert(now);
            }
            if overlapped {
                // Vigil set a capacity while this answer was on its way: it may predate it.
                if let Some(b) = st.baseline.get(&g.name) {
                    g.desired = *b;
                }
            } else if !st.pending.contains_key(&g.name) {
                let known = st.baseline.get(&g.name).copied();
                if known.is_some_and(|b| b != g.desired) && self.fence.follower() {
                    // The leader's changes, most likely: a follower cannot tell them apart.
                    tracing::debug!(asg = %g.name, now_desired = g.desired, "follower: desired capacity changed (by the leader or outside Vigil)");
                    st.simulated.remove(&g.name);
                } else if known.is_some_and(|b| b != g.desired) {
                    tracing::warn!(asg = %g.name, expected = known, now_desired = g.desired, "desired capacity changed outside Vigil (a user, a scheduled action or another scaling policy); adopting it");
                    self.metrics.external_change(&g.name);
                    st.simulated.remove(&g.name);
                }
                st.baseline.insert(g.name.clone(), g.desired);
            }
            st.groups.insert(g.name.clone(), (g, now));
        }
        let live: HashSet<String> = st
            .groups
            .values()
            .flat_map(|(g, _)| g.members.iter().map(|m| m.id.clone()))
            .collect();
        st.first_seen.retain(|i, _| live.contains(i));
        // A victim is forgotten once a describe that started after its termination shows it
        // gone or leaving (not one that overlapped it), or after a while.
        let in_service: HashSet<String> = st
            .groups
            .values()
            .flat_map(|(g, _)| g.members.iter())
            .filter(|m| m.lifecycle == Lifecycle::InService)
            .map(|m| m.id.clone())
            .collect();
        st.terminated.retain(|i, (_, at)| {
            now - *at < terminate::TERMINATED_KEPT_MS
                && (overlapped || *at > started || in_service.contains(i))
        });
        Ok(())
    }

    /// The fleet for the API: each described group and what Vigil did to it last.
    pub fn group_json(&self, asg: &str) -> Json {
        let st = self.state();
        let aws = st.groups.get(asg).map(|(g, at)| {
            json!({"desired": g.desired, "min": g.min, "max": g.max,
                "in_service": g.members.iter().filter(|m| m.lifecycle == Lifecycle::InService).count(),
                "instances": g.members.len(), "described_at": format_timestamp_ms(*at)})
        });
        let last = st.last.get(asg).map(|a| {
            json!({"time": format_timestamp_ms(a.at), "desired": a.desired, "result": a.result})
        });
        json!({"aws": aws, "pending": st.pending.get(asg).map(|p| p.desired), "last_applied": last})
    }
}
