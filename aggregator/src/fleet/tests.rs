//! The fleet and its actuator against a scripted Auto Scaling (what it answers, which calls
//! fail), on a clock the test moves.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use prometheus_client::registry::Registry;
use vigil_rules::evaluator::{Event, Observations, Observed};
use vigil_rules::replace::ReplaceDecision;
use vigil_rules::scaling::Decision;

use super::Fleet;
use crate::aws::{AutoScaling, BoxFut, CallError, Effect, GroupInfo, Lifecycle, Member};
use crate::clock::ManualClock;

/// An Auto Scaling that answers from `groups`, fails the next calls of a kind (`describe`,
/// `set`, `unhealthy`) with `failures`, and writes down every call.
#[derive(Default)]
struct Scripted {
    groups: Mutex<Vec<GroupInfo>>,
    failures: Mutex<HashMap<&'static str, VecDeque<CallError>>>,
    calls: Mutex<Vec<String>>,
    dry_run: bool,
}

impl Scripted {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn fail_next(&self, kind: &'static str, permanent: bool) {
        self.failures
            .lock()
            .unwrap()
            .entry(kind)
            .or_default()
            .push_back(CallError {
                call: "test",
                message: if permanent { "refused" } else { "timed out" }.into(),
                permanent,
            });
    }

    /// Someone else (a user, a scheduled action) sets the group's capacity.
    fn set_outside(&self, desired: u32) {
        self.groups.lock().unwrap()[0].desired = desired;
    }

    fn call(&self, kind: &'static str, what: String) -> Result<(), CallError> {
        self.calls.lock().unwrap().push(what);
        match self
            .failures
            .lock()
            .unwrap()
            .entry(kind)
            .or_default()
            .pop_front()
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

struct Handle(Arc<Scripted>);

impl AutoScaling for Handle {
    fn describe<'a>(
        &'a self,
        names: &'a [String],
    ) -> BoxFut<'a, Result<Vec<GroupInfo>, CallError>> {
        let r = self
            .0
            .call("describe", format!("describe {}", names.join(",")))
            .map(|()| {
                let groups = self.0.groups.lock().unwrap();
                groups
                    .iter()
                    .filter(|g| names.contains(&g.name))
                    .cloned()
                    .collect()
            });
        Box::pin(async move { r })
    }

    fn set_desired<'a>(
        &'a self,
        asg: &'a str,
        desired: u32,
    ) -> BoxFut<'a, Result<Effect, CallError>> {
        let r = self.0.call("set", format!("set {asg} {desired}"));
        if r.is_ok() && !self.0.dry_run {
            self.0.set_outside(desired);
        }
        let effect = if self.0.dry_run {
            Effect::DryRun
        } else {
            Effect::Made
        };
        Box::pin(async move { r.map(|()| effect) })
    }

    fn set_unhealthy<'a>(&'a self, instance: &'a str) -> BoxFut<'a, Result<Effect, CallError>> {
        let r = self.0.call("unhealthy", format!("unhealthy {instance}"));
        Box::pin(async move { r.map(|()| Effect::Made) })
    }

    fn set_bounds<'a>(
        &'a self,
        asg: &'a str,
        min: Option<u32>,
        max: Option<u32>,
    ) -> BoxFut<'a, Result<Effect, CallError>> {
        let r = self
            .0
            .call("bounds", format!("bounds {asg} {min:?} {max:?}"));
        if r.is_ok() && !self.0.dry_run {
            let mut groups = self.0.groups.lock().unwrap();
            groups[0].min = min.unwrap_or(groups[0].min);
            groups[0].max = max.unwrap_or(groups[0].max);
        }
        Box::pin(async move { r.map(|()| Effect::Made) })
    }

    fn terminate<'a>(&'a self, instance: &'a str) -> BoxFut<'a, Result<Effect, CallError>> {
        let r = self.0.call("terminate", format!("terminate {instance}"));
        if r.is_ok() && !self.0.dry_run {
            let mut groups = self.0.groups.lock().unwrap();
            groups[0].members.retain(|m| m.id != instance);
            groups[0].desired -= 1;
        }
        Box::pin(async move { r.map(|()| Effect::Made) })
    }

    fn dry_run(&self) -> bool {
        self.0.dry_run
    }
}

const T0: i64 = 1_800_000_000_000;

fn member(id: &str) -> Member {
    Member {
        id: id.into(),
        lifecycle: Lifecycle::InService,
        health: "Healthy".into(),
        az: "az-a".into(),
        protected_from_scale_in: false,
    }
}

fn web(desired: u32) -> GroupInfo {
    GroupInfo {
        name: "web".into(),
        min: 1,
        max: 4,
        desired,
        grace_ms: 0,
        members: vec![member("i-1"), member("i-2")],
    }
}

struct Rig {
    aws: Arc<Scripted>,
    clock: Arc<ManualClock>,
    fleet: Fleet,
    registry: Registry,
}

fn rig(dry_run: bool) -> Rig {
    let aws = Arc::new(Scripted {
        groups: Mutex::new(vec![web(2)]),
        dry_run,
        ..Scripted::default()
    });
    let clock = ManualClock::at(T0);
    let mut registry = Registry::default();
    let fleet = Fleet::new(
        Box::new(Handle(aws.clone())),
        clock.clone(),
        10_000,
        &mut registry,
    );
    Rig {
        aws,
        clock,
        fleet,
        registry,
    }
}

fn names() -> Vec<String> {
    vec!["web".to_string()]
}

fn scale(from: u32, to: u32) -> Event {
    Event::Scaling(Decision {
        at: T0,
        asg: "web".into(),
        current: from,
        desired: to,
        direction: None,
        held: None,
        notes: vec![],
        scheduled: None,
        by: Some("cpu".into()),
        inputs: vec![],
        victims: vec![],
    })
}

fn replace(instance: &str) -> Event {
    Event::Replace(ReplaceDecision {
        at: T0,
        policy: "health".into(),
        asg: "web".into(),
        group_size: 2,
        unhealthy: 1,
        replace: vec![(instance.into(), "probe failing".into())],
        held: vec![],
        skipped: vec![],
        fail_open_started: false,
        fail_open_ended: false,
        note: None,
        ..Default::default()
    })
}

/// The capacity an observation gives a group (None: not observed live).
fn observed_capacity(o: &Observations, asg: &str) -> Option<u32> {
    match o.groups.get(asg) {
        Some(Observed::Live { capacity, .. }) => Some(*capacity),
        _ => None,
    }
}

fn metrics(r: &Registry) -> String {
    let mut s = String::new();
    prometheus_client::encoding::text::encode(&mut s, r).unwrap();
    s
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

impl Rig {
    fn refresh(&self) {
        block_on(self.fleet.refresh(&names())).unwrap();
    }

    fn actuate(&self) {
        block_on(self.fleet.actuate());
    }

    fn last_result(&self) -> String {
        self.fleet.group_json("web")["last_applied"]["result"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

#[test]
fn a_decision_past_the_groups_bounds_is_clamped_then_applied_after_a_fresh_describe() {
    let r = rig(false);
    r.refresh();
    r.fleet.take(&[scale(2, 9)], T0);
    assert_eq!(
        r.fleet.pending("web"),
        Some(4),
        "clamped to the group's max"
    );
    r.actuate();
    assert_eq!(r.aws.calls(), ["describe web", "describe web", "set web 4"]);
    assert_eq!(r.fleet.pending("web"), None);
    assert_eq!(r.fleet.group("web").unwrap().desired, 4);
    assert_eq!(
        r.last_result(),
        "set (decided 9, clamped to the group's bounds)"
    );
}

#[test]
fn a_failed_call_is_retried_after_its_backoff_and_not_before() {
    let r = rig(false);
    r.refresh();
    r.fleet.take(&[scale(2, 3)], T0);
    r.aws.fail_next("set", false);
    r.actuate();
    assert_eq!(r.fleet.pending("web"), Some(3), "kept for a retry");
    assert!(r.last_result().starts_with("failed, retrying"));
    let before = r.aws.calls().len();
    r.actuate();
    assert_eq!(r.aws.calls().len(), before, "not due yet: no call");
    // The first backoff is 2 s plus up to a quarter more.
    r.clock.advance(2_600);
    r.actuate();
    assert_eq!(r.aws.calls().last().unwrap(), "set web 3");
    assert_eq!(r.fleet.pending("web"), None);
    assert_eq!(r.last_result(), "set");
}

#[test]
fn a_refused_change_is_dropped_and_said_so() {
    let r = rig(false);
    r.refresh();
    r.fleet.take(&[scale(2, 3)], T0);
    r.aws.fail_next("set", true);
    r.actuate();
    assert_eq!(
        r.fleet.pending("web"),
        None,
        "sending it again cannot succeed"
    );
    assert!(
        r.last_result().starts_with("refused"),
        "{}",
        r.last_result()
    );
    r.clock.advance(600_000);
    r.actuate();
    assert_eq!(
        r.aws
            .calls()
            .iter()
            .filter(|c| c.starts_with("set"))
            .count(),
        1
    );
}

#[test]
fn a_describe_that_fails_before_a_change_retries_the_change() {
    let r = rig(false);
    r.refresh();
    r.fleet.take(&[scale(2, 3)], T0);
    r.aws.fail_next("describe", false);
    r.actuate();
    assert_eq!(r.fleet.pending("web"), Some(3));
    assert!(!r.aws.calls().iter().any(|c| c.starts_with("set")));
    r.clock.advance(2_600);
    r.actuate();
    assert_eq!(r.aws.calls().last().unwrap(), "set web 3");
}

#[test]
fn a_change_made_outside_vigil_while_a_decision_waits_drops_the_decision() {
    let r = rig(false);
    r.refresh();
    r.fleet.take(&[scale(2, 3)], T0);
    r.aws.set_outside(4);
    r.actuate();
    assert!(
        !r.aws.calls().iter().any(|c| c.starts_with("set")),
        "{:?}",
        r.aws.calls()
    );
    assert_eq!(
        r.fleet.pending("web"),
        None,
        "decided again from 4 next time"
    );
    assert_eq!(r.fleet.group("web").unwrap().desired, 4);
    assert!(
        metrics(&r.registry)
            .contains("vigil_aggregator_external_capacity_changes_total{asg=\"web\"} 1"),
        "{}",
        metrics(&r.registry)
    );
}

#[test]
fn a_describe_showing_an_outside_change_is_adopted_and_counted() {
    let r = rig(false);
    r.refresh();
    r.aws.set_outside(3);
    r.refresh();
    let seen = r.fleet.observe(&names(), &HashMap::new(), T0);
    assert_eq!(observed_capacity(&seen, "web"), Some(3));
    assert!(metrics(&r.registry)
        .contains("vigil_aggregator_external_capacity_changes_total{asg=\"web\"} 1"));
}

#[test]
fn an_old_view_decides_nothing() {
    let r = rig(false);
    r.refresh();
    r.clock.advance(60_001);
    let seen = r.fleet.observe(&names(), &HashMap::new(), r.clock_now());
    assert_eq!(
        seen.groups.get("web"),
        Some(&Observed::Unknown),
        "no decision from a guess, nobody replaced"
    );
    assert!(!r.fleet.simulated("web"));
}

impl Rig {
    fn clock_now(&self) -> i64 {
        use crate::clock::Clock;
        self.clock.now_ms()
    }
}

#[test]
fn a_dry_run_changes_nothing_and_follows_its_own_simulation_when_aws_is_away() {
    let r = rig(true);
    r.refresh();
    r.fleet.take(&[scale(2, 3)], T0);
    r.actuate();
    assert_eq!(r.aws.calls(), ["describe web", "set web 3"]);
    assert_eq!(
        r.aws.groups.lock().unwrap()[0].desired,
        2,
        "nothing changed"
    );
    assert_eq!(r.last_result(), "dry run");
    let seen = r.fleet.observe(&names(), &HashMap::new(), T0);
    assert_eq!(
        observed_capacity(&seen, "web"),
        Some(3),
        "the simulated capacity"
    );
    assert!(!r.fleet.simulated("web"), "described: AWS's view");
    // AWS goes away: the group is not observed, so the evaluation simulates it (from the
    // capacity it last decided: `evaluator` tests that side).
    r.clock.advance(60_001);
    let seen = r.fleet.observe(&names(), &HashMap::new(), r.clock_now());
    assert!(r.fleet.simulated("web"));
    assert_eq!(seen.groups.get("web"), None, "simulated, not unknown");
}

#[test]
fn an_instance_marked_unhealthy_is_retried_while_in_service_and_given_up_when_gone() {
    let r = rig(false);
    r.refresh();
    r.fleet.take(&[replace("i-1")], T0);
    let seen = r.fleet.observe(&names(), &HashMap::new(), T0);
    let Some(Observed::Live { members, .. }) = seen.groups.get("web") else {
        panic!("web observed: {seen:?}")
    };
    assert_eq!(
        members["i-1"],
        vigil_rules::evaluator::Eligibility::Counted("being marked Unhealthy".into())
    );
    r.aws.fail_next("unhealthy", false);
    r.actuate();
    assert_eq!(r.aws.calls().last().unwrap(), "unhealthy i-1");
    // Still in service: retried after its backoff.
    r.clock.advance(2_600);
    r.aws.fail_next("unhealthy", false);
    r.actuate();
    assert_eq!(
        r.aws
            .calls()
            .iter()
            .filter(|c| *c == "unhealthy i-1")
            .count(),
        2
    );
    // Gone from the group: given up.
    r.aws.groups.lock().unwrap()[0]
        .members
        .retain(|m| m.id != "i-1");
    r.refresh();
    r.clock.advance(5_000);
    r.aws.fail_next("unhealthy", false);
    r.actuate();
    r.clock.advance(60_000);
    r.actuate();
    assert_eq!(
        r.aws
            .calls()
            .iter()
            .filter(|c| *c == "unhealthy i-1")
            .count(),
        3,
        "no retry once the instance left the group"
    );
}

/// A fence switched by the test: the lease's stand-in.
struct Switch(Arc<std::sync::atomic::AtomicBool>);

impl super::Fence for Switch {
    fn token(&self) -> Option<u64> {
        self.0
            .load(std::sync::atomic::Ordering::SeqCst)
            .then_some(7)
    }
}

#[test]
fn a_process_that_may_not_act_changes_nothing_and_keeps_its_actions_for_when_it_may() {
    let mut r = rig(false);
    let lease = Arc::new(std::sync::atomic::AtomicBool::new(false));
    r.fleet = r.fleet.with_fence(Box::new(Switch(lease.clone())));
    r.refresh();
    r.fleet.take(&[scale(2, 3), replace("i-1")], T0);
    r.actuate();
    assert_eq!(r.aws.calls(), ["describe web"], "only the refresh");
    assert_eq!(r.fleet.pending("web"), Some(3), "kept");
    // Untried: no backoff runs up while it waits.
    r.clock.advance(1);
    lease.store(true, std::sync::atomic::Ordering::SeqCst);
    r.actuate();
    assert_eq!(
        r.aws.calls(),
        ["describe web", "describe web", "set web 3", "unhealthy i-1"]
    );
    assert_eq!(r.fleet.pending("web"), None);
}

#[test]
fn a_dry_run_acts_without_the_right_to() {
    let mut r = rig(true);
    r.fleet = r.fleet.with_fence(Box::new(Switch(Arc::new(false.into()))));
    r.refresh();
    r.fleet.take(&[scale(2, 3)], T0);
    r.actuate();
    assert_eq!(r.last_result(), "dry run", "it changes nothing anyway");
}

#[test]
fn pending_work_survives_a_restart() {
    let r = rig(false);
    r.refresh();
    r.fleet.take(&[scale(2, 3), replace("i-2")], T0);
    let saved = r.fleet.pending_json();
    assert_eq!(
        saved,
        serde_json::json!({
            "scale": {"web": {"desired": 3, "asked": 3, "from": 2, "decided_at": T0}},
            "health": {"i-2": "web"}
        }),
        "the state database's encoding (schema 2) is unchanged"
    );
    let again = rig(false);
    again.fleet.restore_pending(&saved).unwrap();
    assert_eq!(again.fleet.pending_json(), saved);
    again.refresh();
    again.actuate();
    assert_eq!(
        again.aws.calls(),
        ["describe web", "describe web", "set web 3", "unhealthy i-2"]
    );
    assert!(again
        .fleet
        .restore_pending(&serde_json::json!({"scale": {"web": {"desired": "x"}}}))
        .is_err());
}

#[path = "bounds_tests.rs"]
mod bounds;

#[path = "terminate_tests.rs"]
mod terminate;
