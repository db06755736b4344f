//! What readers (the API, the status page) see of the evaluation: published by the engine
//! after each evaluation, so that no request waits behind one (an evaluation holds its state
//! through PromQL and the SQLite commit).

use std::collections::{HashMap, VecDeque};

use vigil_rules::alerting::{Alert, AlertState};
use vigil_rules::evaluator::AlertKey;
use vigil_rules::health::GroupHealth;
use vigil_rules::pause::Pause;
use vigil_rules::scaling::Decision;

use super::Evaluation;

#[derive(Default)]
pub struct View {
    /// Alerts pending or firing, by their rule.
    pub alerts: HashMap<AlertKey, Vec<Alert>>,
    /// Each group's capacity as the evaluation last decided or simulated it.
    pub capacity: HashMap<String, u32>,
    pub decisions: VecDeque<Decision>,
    /// Human-readable recent events for the status page.
    pub log: VecDeque<String>,
    /// Each rule group's recent evaluations, by (file, group name).
    pub health: HashMap<(String, String), GroupHealth>,
    /// Pauses set at run time: scaling by group, replacement by policy.
    pub scaling_paused: HashMap<String, Pause>,
    pub replace_paused: HashMap<String, Pause>,
    /// The bounds each group's last schedule run set.
    pub scheduled: HashMap<String, vigil_rules::schedule::ScheduleRun>,
}

impl View {
    pub fn of(ev: &Evaluation) -> View {
        View {
            alerts: ev
                .sim
                .state
                .alerts
                .iter()
                .filter_map(|(k, r)| {
                    let active: Vec<Alert> = r
                        .active
                        .values()
                        .filter(|a| a.state != AlertState::Inactive)
                        .cloned()
                        .collect();
                    (!active.is_empty()).then(|| (k.clone(), active))
                })
                .collect(),
            capacity: ev
                .sim
                .capacities()
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            decisions: ev.decisions.clone(),
            log: ev.log.clone(),
            health: ev.sim.health.clone(),
            scaling_paused: ev
                .sim
                .state
                .groups
                .iter()
                .filter_map(|(k, g)| Some((k.clone(), g.paused.clone()?)))
                .collect(),
            scheduled: ev
                .sim
                .state
                .groups
                .iter()
                .filter_map(|(k, g)| Some((k.clone(), g.scheduled.clone()?)))
                .collect(),
            replace_paused: ev
                .sim
                .state
                .replace
                .iter()
                .filter_map(|(k, r)| Some((k.clone(), r.paused.clone()?)))
                .collect(),
        }
    }
}
