//! A `[[schedule]]`'s bounds at AWS: when a schedule runs, the rules' decision carries it, and
//! the actuator sets the group's MinSize/MaxSize with UpdateAutoScalingGroup before any capacity
//! of the same pass (a capacity inside the new bounds may lie outside the old ones). Retried with
//! backoff until AWS takes it or refuses it; a newer run of the group's schedules replaces it.

use serde::{Deserialize, Serialize};

use super::Fleet;
use crate::aws::Effect;
use crate::clock::backoff_ms;

/// A schedule's bounds decided and not yet set at AWS. Persisted with the evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct PendingBounds {
    pub schedule: String,
    pub min: Option<u32>,
    pub max: Option<u32>,
    pub decided_at: i64,
    #[serde(skip)]
    pub attempts: u32,
    #[serde(skip)]
    pub next_try: i64,
}

impl Fleet {
    /// Sets the bounds that are due. Returns false when this process may not act.
    pub(super) async fn apply_bounds(&self) -> bool {
        let now = self.now_ms();
        let due: Vec<(String, PendingBounds)> = self
            .state()
            .bounds
            .iter()
            .filter(|(_, b)| b.next_try <= now)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (asg, b) in due {
            if !self.fence.recorded(b.decided_at) {
                continue;
            }
            if !self.may_act() {
                return false;
            }
            let result = self.scaler.set_bounds(&asg, b.min, b.max).await;
            let mut st = self.state();
            let current = st
                .bounds
                .get(&asg)
                .is_some_and(|q| q.decided_at == b.decided_at);
            match result {
                Ok(effect) => {
                    if effect == Effect::Made {
                        tracing::info!(asg = %asg, schedule = %b.schedule, min = ?b.min, max = ?b.max, "UpdateAutoScalingGroup");
                        if let Some((g, _)) = st.groups.get_mut(&asg) {
                            g.min = b.min.unwrap_or(g.min);
                            g.max = b.max.unwrap_or(g.max);
                        }
                        // AWS moves the desired capacity into the new bounds itself: that is
                        // not a change made outside Vigil.
                        let (lo, hi) = (b.min.unwrap_or(0), b.max.unwrap_or(u32::MAX));
                        if let Some(d) = st.baseline.get_mut(&asg) {
                            *d = (*d).clamp(lo, hi.max(lo));
                        }
                    }
                    if current {
                        st.bounds.remove(&asg);
                    }
                }
                Err(e) if !e.permanent && b.attempts < 20 => {
                    tracing::warn!(asg = %asg, schedule = %b.schedule, error = %e, "UpdateAutoScalingGroup failed; retrying");
                    let next = self.now_ms();
                    if let Some(q) = st.bounds.get_mut(&asg).filter(|_| current) {
                        q.attempts += 1;
                        q.next_try = next + backoff_ms(q.attempts.min(5), next);
                    }
                }
                Err(e) => {
                    tracing::error!(asg = %asg, schedule = %b.schedule, min = ?b.min, max = ?b.max, error = %e, "UpdateAutoScalingGroup failed; giving up (refused, or too many attempts): the group keeps its bounds at AWS");
                    if current {
                        st.bounds.remove(&asg);
                    }
                }
            }
        }
        true
    }
}
