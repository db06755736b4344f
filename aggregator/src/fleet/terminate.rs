//! A scale-in that chose its victims (`scale_in_victim`): each instance is terminated with
//! TerminateInstanceInAutoScalingGroup(ShouldDecrementDesiredCapacity=true), so AWS lowers the
//! desired capacity by one per instance instead of choosing one itself. Retried with backoff while
//! the instance is still in service; a newer decision for the group replaces what is not done yet.

use serde::{Deserialize, Serialize};

use super::actuator::due_now;
use super::{Fleet, State};
use crate::aws::{Effect, Lifecycle};
use crate::clock::backoff_ms;

/// How long a terminated victim is kept out of service whatever describes say, at most.
pub(super) const TERMINATED_KEPT_MS: i64 = 10 * 60_000;

/// A victim not terminated within this of its decision (AWS away, a restart) is dropped: the
/// next evaluation decides from the group as it is then.
const MAX_AGE_MS: i64 = 10 * 60_000;

/// An instance to terminate, by the group it belongs to. Persisted with the evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct PendingTerminate {
    pub asg: String,
    pub decided_at: i64,
    #[serde(skip)]
    pub attempts: u32,
    #[serde(skip)]
    pub next_try: i64,
}

impl State {
    /// Removes a victim if it is still the one decided at `decided_at`.
    pub(super) fn settle_terminate(&mut self, instance: &str, decided_at: i64) {
        if self
            .terminate
            .get(instance)
            .is_some_and(|t| t.decided_at == decided_at)
        {
            self.terminate.remove(instance);
        }
    }

    /// How many of the group's victims are still to be terminated.
    pub(super) fn terminating(&self, asg: &str) -> u32 {
        self.terminate.values().filter(|t| t.asg == asg).count() as u32
    }
}

impl Fleet {
    /// Terminates the victims that are due. Returns false when this process may not act.
    pub(super) async fn apply_terminations(&self) -> bool {
        let now = self.now_ms();
        let due = due_now(&self.state().terminate, now, |t| t.next_try);
        for (instance, t) in due {
            if !self.fence.recorded(t.decided_at) {
                continue;
            }
            if !self.may_act() {
                return false;
            }
            {
                let mut st = self.state();
                // A newer decision may have replaced it while earlier calls of this pass ran.
                if st
                    .terminate
                    .get(&instance)
                    .is_none_or(|q| q.decided_at != t.decided_at)
                {
                    continue;
                }
                if now - t.decided_at > MAX_AGE_MS {
                    tracing::warn!(asg = %t.asg, instance = %instance, "the scale-in victim was not terminated in time: dropped (the next evaluation decides from the group as it is)");
                    st.settle_terminate(&instance, t.decided_at);
                    continue;
                }
                // Only from a view of the group: after a restart, once it is described.
                let Some(in_service) = st.groups.get(&t.asg).map(|(g, _)| {
                    g.members
                        .iter()
                        .any(|m| m.id == instance && m.lifecycle == Lifecycle::InService)
                }) else {
                    continue;
                };
                if !in_service {
                    tracing::warn!(asg = %t.asg, instance = %instance, "the instance chosen for scale-in is no longer in service: not terminated (the next evaluation decides from the group as it is)");
                    st.settle_terminate(&instance, t.decided_at);
                    continue;
                }
            }
            let result = self.scaler.terminate(&instance).await;
            let mut st = self.state();
            match result {
                Ok(effect) => {
                    st.settle_terminate(&instance, t.decided_at);
                    st.terminated
                        .insert(instance.clone(), (t.asg.clone(), self.now_ms()));
                    let desired = if effect == Effect::Made {
                        // AWS lowers the desired capacity by one itself: not a change made
                        // outside Vigil, and a describe already on its way may predate it.
                        st.generation += 1;
                        let d = st.baseline.get(&t.asg).map(|b| b.saturating_sub(1));
                        if let Some(d) = d {
                            st.baseline.insert(t.asg.clone(), d);
                        }
                        if let Some((g, _)) = st.groups.get_mut(&t.asg) {
                            g.desired = g.desired.saturating_sub(1);
                            for m in g.members.iter_mut().filter(|m| m.id == instance) {
                                m.lifecycle = Lifecycle::Other("Terminating".into());
                            }
                        }
                        tracing::info!(asg = %t.asg, instance = %instance, decided_ms_ago = self.now_ms() - t.decided_at, "TerminateInstanceInAutoScalingGroup (ShouldDecrementDesiredCapacity true)");
                        d
                    } else {
                        // A dry run follows its own simulation.
                        let base = st
                            .simulated
                            .get(&t.asg)
                            .copied()
                            .or_else(|| st.groups.get(&t.asg).map(|(g, _)| g.desired));
                        let d = base.map(|b| b.saturating_sub(1));
                        if let Some(d) = d {
                            st.simulated.insert(t.asg.clone(), d);
                        }
                        d
                    };
                    drop(st);
                    let result = match effect {
                        Effect::Made => format!("terminated {instance}"),
                        Effect::DryRun => format!("dry run: terminate {instance}"),
                    };
                    self.set_last(&t.asg, desired.unwrap_or(0), result);
                }
                Err(e) if !e.permanent && t.attempts < 20 => {
                    tracing::warn!(asg = %t.asg, instance = %instance, error = %e, "TerminateInstanceInAutoScalingGroup failed; retrying");
                    let next = self.now_ms();
                    if let Some(q) = st
                        .terminate
                        .get_mut(&instance)
                        .filter(|q| q.decided_at == t.decided_at)
                    {
                        q.attempts += 1;
                        q.next_try = next + backoff_ms(q.attempts.min(5), next);
                    }
                }
                Err(e) => {
                    tracing::error!(asg = %t.asg, instance = %instance, error = %e, "TerminateInstanceInAutoScalingGroup failed; giving up (refused, or too many attempts): the next evaluation decides from the group as it is");
                    st.settle_terminate(&instance, t.decided_at);
                    let desired = st.groups.get(&t.asg).map_or(0, |(g, _)| g.desired);
                    drop(st);
                    self.set_last(&t.asg, desired, format!("refused: {e}"));
                }
            }
        }
        true
    }
}
