//! The actuator: carries out the fleet's pending changes when they are due, checks each against
//! AWS's latest word first, and retries what failed with backoff until AWS takes it, refuses it,
//! or a newer decision replaces it.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Applied, Fleet, PendingScale};
use crate::aws::{CallError, Effect, Lifecycle};
use crate::clock::backoff_ms;

/// The entries whose next try is due, copied out (the calls run without the lock).
pub(super) fn due_now<T: Clone>(
    m: &BTreeMap<String, T>,
    now: i64,
    next_try: impl Fn(&T) -> i64,
) -> Vec<(String, T)> {
    m.iter()
        .filter(|(_, p)| next_try(p) <= now)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

impl Fleet {
    pub(super) fn set_last(&self, asg: &str, desired: u32, result: String) {
        let at = self.now_ms();
        self.state().last.insert(
            asg.to_string(),
            Applied {
                at,
                desired,
                result,
            },
        );
    }

    /// Whether this process may act now ([`super::Fence`]); a dry run changes nothing, so it
    /// always may. Logs when that changes.
    pub(super) fn may_act(&self) -> bool {
        if self.scaler.dry_run() {
            return true;
        }
        let token = self.fence.token();
        let mut st = self.state();
        if st.fenced != token.is_none() {
            st.fenced = token.is_none();
            match token {
                Some(t) => {
                    tracing::info!(fencing_token = t, "may act: carrying out pending actions")
                }
                None => tracing::info!("may not act (not the lease holder): pending actions wait"),
            }
        }
        token.is_some()
    }

    /// A follower's pending changes are what it would do: logged and dropped (the holder has
    /// its own, and a follower that takes over adopts the holder's).
    fn follow(&self) -> bool {
        if !self.fence.follower() {
            return false;
        }
        let mut st = self.state();
        for (asg, p) in std::mem::take(&mut st.pending) {
            tracing::info!(asg = %asg, desired = p.desired, "follower: would SetDesiredCapacity (the leader acts)");
        }
        for (instance, p) in std::mem::take(&mut st.unhealthy) {
            tracing::info!(asg = %p.asg, instance = %instance, "follower: would SetInstanceHealth Unhealthy (the leader acts)");
        }
        for (asg, b) in std::mem::take(&mut st.bounds) {
            tracing::info!(asg = %asg, schedule = %b.schedule, min = ?b.min, max = ?b.max, "follower: would UpdateAutoScalingGroup (the leader acts)");
        }
        for (instance, t) in std::mem::take(&mut st.terminate) {
            tracing::info!(asg = %t.asg, instance = %instance, "follower: would TerminateInstanceInAutoScalingGroup (the leader acts)");
        }
        true
    }

    /// Applies the pending capacities and health changes that are due.
    pub async fn actuate(&self) {
        if self.follow() {
            return;
        }
        // A schedule's bounds first: a capacity inside them may lie outside the old ones.
        if !self.apply_bounds().await {
            return;
        }
        let now = self.now_ms();
        let due = due_now(&self.state().pending, now, |p| p.next_try);
        for (asg, p) in due {
            if !self.fence.recorded(p.decided_at) {
                continue;
            }
            if !self.may_act() {
                return;
            }
            self.scale(&asg, p).await;
        }
        if !self.apply_terminations().await {
            return;
        }
        let due = due_now(&self.state().unhealthy, now, |p| p.next_try);
        for (instance, p) in due {
            if !self.fence.recorded(p.decided_at) {
                continue;
            }
            if !self.may_act() {
                return;
            }
            let result = self.scaler.set_unhealthy(&instance).await;
            let mut st = self.state();
            match result {
                Ok(effect) => {
                    if effect == Effect::Made {
                        tracing::info!(asg = %p.asg, instance = %instance, "SetInstanceHealth Unhealthy");
                    }
                    st.unhealthy.remove(&instance);
                }
                Err(e) => {
                    let still_member = st.groups.get(&p.asg).is_some_and(|(g, _)| {
                        g.members
                            .iter()
                            .any(|m| m.id == instance && m.lifecycle == Lifecycle::InService)
                    });
                    if still_member && !e.permanent && p.attempts < 20 {
                        tracing::warn!(instance = %instance, error = %e, "SetInstanceHealth failed; retrying");
                        let next = self.now_ms();
                        if let Some(q) = st.unhealthy.get_mut(&instance) {
                            q.attempts += 1;
                            q.next_try = next + backoff_ms(q.attempts.min(5), next);
                        }
                    } else {
                        tracing::error!(instance = %instance, error = %e, "SetInstanceHealth failed; giving up (refused, instance gone, or too many attempts)");
                        st.unhealthy.remove(&instance);
                    }
                }
            }
        }
    }

    /// Carries out one pending capacity: checks it against AWS's latest word, then sets it. A
    /// dry run's change is logged and then followed as the group's simulated capacity.
    async fn scale(&self, asg: &str, p: PendingScale) {
        if self.scaler.dry_run() {
            let _ = self.scaler.set_desired(asg, p.desired).await;
            let mut st = self.state();
            st.simulated.insert(asg.to_string(), p.desired);
            st.settle(asg, p.decided_at);
            drop(st);
            self.set_last(asg, p.desired, "dry run".into());
            return;
        }
        // The group as it is now: a change made since the decision means the decision started
        // from a capacity that no longer holds.
        let view = match self.scaler.describe(&[asg.to_string()]).await {
            Ok(mut g) if !g.is_empty() => g.remove(0),
            Ok(_) => {
                tracing::error!(asg = %asg, "Auto Scaling group not found; the decision is dropped");
                self.state().pending.remove(asg);
                return;
            }
            Err(e) => {
                self.retry_scale(asg, &p, &e);
                return;
            }
        };
        {
            let now = self.now_ms();
            let mut st = self.state();
            let expected = st.baseline.get(asg).copied().unwrap_or(p.from);
            if view.desired != p.from && view.desired != expected {
                tracing::warn!(asg = %asg, decided_from = p.from, now_desired = view.desired, wanted = p.desired, "desired capacity changed outside Vigil while a decision was pending; dropping it and deciding again from the new capacity");
                self.metrics.external_change(asg);
                st.baseline.insert(asg.to_string(), view.desired);
                st.settle(asg, p.decided_at);
                st.groups.insert(asg.to_string(), (view, now));
                return;
            }
            st.groups.insert(asg.to_string(), (view.clone(), now));
        }
        let desired = p.desired.clamp(view.min, view.max.max(view.min));
        if desired != p.desired {
            tracing::warn!(asg = %asg, wanted = p.desired, applied = desired, min = view.min, max = view.max, "the group's bounds changed: clamped");
        }
        // The right to act may have ended while the describe was out.
        if !self.may_act() {
            return;
        }
        match self.scaler.set_desired(asg, desired).await {
            Ok(_) => {
                tracing::info!(asg = %asg, desired, decided_ms_ago = self.now_ms() - p.decided_at, attempts = p.attempts + 1, "SetDesiredCapacity");
                let mut st = self.state();
                st.generation += 1;
                st.baseline.insert(asg.to_string(), desired);
                if let Some((g, _)) = st.groups.get_mut(asg) {
                    g.desired = desired;
                }
                // A newer decision may have arrived while the call was out.
                st.settle(asg, p.decided_at);
                drop(st);
                let result = if p.asked != desired {
                    format!("set (decided {}, clamped to the group's bounds)", p.asked)
                } else {
                    "set".to_string()
                };
                self.set_last(asg, desired, result);
            }
            Err(e) => self.retry_scale(asg, &p, &e),
        }
    }

    fn retry_scale(&self, asg: &str, p: &PendingScale, e: &CallError) {
        let now = self.now_ms();
        let mut st = self.state();
        if e.permanent {
            tracing::error!(asg = %asg, desired = p.desired, error = %e, "AWS refused the change; dropping it (the next evaluation decides from the group as it is)");
            st.settle(asg, p.decided_at);
            drop(st);
            self.set_last(asg, p.desired, format!("refused: {e}"));
            return;
        }
        if let Some(q) = st
            .pending
            .get_mut(asg)
            .filter(|q| q.decided_at == p.decided_at)
        {
            q.attempts += 1;
            q.next_try = now + backoff_ms(q.attempts.min(3), now);
        }
        drop(st);
        tracing::warn!(asg = %asg, desired = p.desired, error = %e, "SetDesiredCapacity failed; retrying");
        self.set_last(asg, p.desired, format!("failed, retrying: {e}"));
    }

    /// Runs the actuator: whenever decisions arrive, and every second for retries.
    pub async fn run_actuator(&self) {
        loop {
            self.actuate().await;
            let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
        }
    }

    /// Describes the groups forever at `every`, logging when AWS stops and starts answering.
    pub async fn run_refresh(&self, groups: impl Fn() -> Vec<String>, every: Duration) {
        let mut failing = false;
        loop {
            match self.refresh(&groups()).await {
                Ok(()) if failing => {
                    tracing::info!("DescribeAutoScalingGroups answers again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot describe the Auto Scaling groups; the last view is kept");
                    }
                    failing = true;
                }
            }
            tokio::time::sleep(every).await;
        }
    }
}
