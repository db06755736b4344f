//! Evaluating rule files over a storage: rule groups in order (records feed later rules), alert
//! state, scaling and replacement decisions. Shared by `vigil-rules test`, `vigil-rules replay`
//! and the aggregator, so all three give the same answers.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use vigil_wire::{Labels, Sample, METRIC_NAME, STALE_NAN};

use crate::alerting::{self, RuleState, Transition};
use crate::promql::{Engine, MemStorage, Query, Storage, Value};
use crate::replace::{self, ReplaceDecision, ReplaceState};
use crate::rulefile::{Group, Rule, RuleFile, ScalingPolicy};
use crate::scaling::{self, Decision, GroupState, Observation, PolicyState};

/// Storage that rule evaluation can also write to (recorded series, `ALERTS`).
pub trait RuleStorage: Storage {
    fn append(&mut self, labels: Labels, sample: Sample);
}

impl RuleStorage for MemStorage {
    fn append(&mut self, labels: Labels, sample: Sample) {
        self.add(labels, sample);
    }
}

/// Something evaluation produced, in time order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Alert(Transition),
    Scaling(Decision),
    Replace(ReplaceDecision),
    /// A rule whose query failed at this evaluation (it keeps its previous state).
    RuleError {
        at: i64,
        rule: String,
        error: String,
    },
}

/// The state of every rule between evaluations. Keyed by names so that a reload keeps the state
/// of unchanged rules.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// (group, alert name, expression) → state.
    pub alerts: HashMap<(String, String, String), RuleState>,
    pub policies: HashMap<String, PolicyState>,
    pub groups: HashMap<String, GroupState>,
    pub replace: HashMap<String, ReplaceState>,
    /// Series each rule wrote at its last evaluation, to mark the vanished ones stale.
    written: HashMap<(String, usize), BTreeSet<Labels>>,
}

fn alert_key(group: &Group, rule_name: &str, q: &Query) -> (String, String, String) {
    (
        group.name.clone(),
        rule_name.to_string(),
        q.text().to_string(),
    )
}

fn vector_of(v: Value, t: i64) -> Vec<crate::promql::VectorSample> {
    match v {
        Value::Vector(v) => v,
        Value::Scalar(f) => vec![crate::promql::VectorSample {
            labels: Labels::empty(),
            t,
            f,
            drop_name: false,
        }],
        _ => Vec::new(),
    }
}

/// Evaluates one group at `ts`, writing recorded series and `ALERTS` into `storage`.
pub fn eval_group(
    engine: &Engine,
    group: &Group,
    state: &mut State,
    storage: &mut dyn RuleStorage,
    ts: i64,
    external_labels: &Labels,
) -> Vec<Event> {
    let mut events = Vec::new();
    for (idx, rule) in group.rules.iter().enumerate() {
        let res = engine.instant(storage, rule.query(), ts);
        let mut written: Vec<(Labels, Sample)> = Vec::new();
        match (rule, res) {
            (_, Err(e)) => {
                events.push(Event::RuleError {
                    at: ts,
                    rule: rule.name().to_string(),
                    error: e.to_string(),
                });
                continue;
            }
            (Rule::Record(r), Ok(res)) => {
                let mut seen = BTreeSet::new();
                for s in vector_of(res.value, ts) {
                    let mut b = s.labels.to_builder();
                    b.set(METRIC_NAME, r.record.clone());
                    for (k, v) in &r.labels {
                        b.set(k.clone(), v.clone());
                    }
                    let l = b.build();
                    if !seen.insert(l.clone()) {
                        events.push(Event::RuleError {
                            at: ts,
                            rule: r.record.clone(),
                            error: "vector contains metrics with the same labelset after applying rule labels".into(),
                        });
                        written.clear();
                        break;
                    }
                    written.push((l, Sample::new(ts, s.f)));
                }
            }
            (Rule::Alert(a), Ok(res)) => {
                let key = alert_key(group, &a.alert, &a.expr);
                let st = state.alerts.entry(key).or_default();
                match alerting::evaluate(a, st, &vector_of(res.value, ts), ts, external_labels) {
                    Ok(out) => {
                        events.extend(out.transitions.into_iter().map(Event::Alert));
                        written = out.series;
                    }
                    Err(e) => {
                        events.push(Event::RuleError {
                            at: ts,
                            rule: a.alert.clone(),
                            error: e.to_string(),
                        });
                        continue;
                    }
                }
            }
        }
        let now: BTreeSet<Labels> = written.iter().map(|(l, _)| l.clone()).collect();
        let prev = state
            .written
            .insert((group.name.clone(), idx), now.clone())
            .unwrap_or_default();
        for (l, s) in written {
            storage.append(l, s);
        }
        for gone in prev.difference(&now) {
            storage.append(gone.clone(), Sample::new(ts, STALE_NAN));
        }
    }
    events
}

/// The value a scaling expression gives at `ts`: one number, or `None` (no data, several series,
/// or an error — all of which must never scale in).
pub fn scaling_value(engine: &Engine, storage: &dyn Storage, q: &Query, ts: i64) -> Option<f64> {
    match engine.instant(storage, q, ts).ok()?.value {
        Value::Scalar(f) => Some(f),
        Value::Vector(v) if v.len() == 1 => Some(v[0].f),
        _ => None,
    }
    .filter(|f| f.is_finite())
}

/// Evaluates every scaling policy of one group and decides its capacity.
pub fn eval_scaling(
    engine: &Engine,
    asg: &str,
    policies: &[&ScalingPolicy],
    state: &mut State,
    storage: &dyn Storage,
    current: u32,
    ts: i64,
) -> Decision {
    let mut owned: Vec<(String, PolicyState)> = policies
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                state.policies.remove(&p.name).unwrap_or_default(),
            )
        })
        .collect();
    let mut inputs: Vec<(&ScalingPolicy, Observation, &mut PolicyState)> = policies
        .iter()
        .zip(owned.iter_mut())
        .map(|(p, (_, st))| {
            (
                *p,
                Observation {
                    value: scaling_value(engine, storage, &p.expr, ts),
                },
                st,
            )
        })
        .collect();
    let group = state.groups.entry(asg.to_string()).or_default();
    let d = scaling::decide(asg, current, &mut inputs, group, ts);
    drop(inputs);
    for (name, st) in owned {
        state.policies.insert(name, st);
    }
    d
}

/// The instances a replace expression marks unhealthy at `ts`.
pub fn unhealthy_instances(
    engine: &Engine,
    storage: &dyn Storage,
    q: &Query,
    ts: i64,
) -> Result<Vec<String>, String> {
    let res = engine.instant(storage, q, ts).map_err(|e| e.to_string())?;
    let Value::Vector(v) = res.value else {
        return Ok(Vec::new());
    };
    let set: BTreeSet<String> = v
        .iter()
        .filter_map(|s| s.labels.get("instance").map(str::to_string))
        .collect();
    Ok(set.into_iter().collect())
}

/// Everything loaded, with the intervals resolved.
#[derive(Debug, Clone)]
pub struct RuleSet {
    pub files: Vec<RuleFile>,
    pub default_interval_ms: i64,
}

impl RuleSet {
    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.files.iter().flat_map(|f| f.groups.iter())
    }

    pub fn scaling(&self) -> impl Iterator<Item = &ScalingPolicy> {
        self.files.iter().flat_map(|f| f.scaling.iter())
    }

    pub fn replace(&self) -> impl Iterator<Item = &crate::rulefile::ReplacePolicy> {
        self.files.iter().flat_map(|f| f.replace.iter())
    }

    /// Scaling policies grouped by Auto Scaling group, in a stable order.
    pub fn scaling_by_asg(&self) -> BTreeMap<&str, Vec<&ScalingPolicy>> {
        let mut m: BTreeMap<&str, Vec<&ScalingPolicy>> = BTreeMap::new();
        for p in self.scaling() {
            m.entry(p.asg.as_str()).or_default().push(p);
        }
        m
    }

    /// The interval of a scaling group: the shortest of its policies'.
    pub fn asg_interval(&self, policies: &[&ScalingPolicy]) -> i64 {
        policies
            .iter()
            .map(|p| p.interval_ms.unwrap_or(self.default_interval_ms))
            .min()
            .unwrap_or(self.default_interval_ms)
    }

    /// The step at which every group and policy can be scheduled (gcd of all intervals).
    pub fn tick_ms(&self) -> i64 {
        fn gcd(a: i64, b: i64) -> i64 {
            if b == 0 {
                a
            } else {
                gcd(b, a % b)
            }
        }
        let mut g = self.default_interval_ms;
        for i in self
            .groups()
            .filter_map(|g| g.interval_ms)
            .chain(self.scaling().filter_map(|p| p.interval_ms))
            .chain(self.replace().filter_map(|p| p.interval_ms))
        {
            g = gcd(g, i);
        }
        g.max(1)
    }
}

/// Drives a rule set through time over a storage that holds recorded data: what `vigil-rules
/// test` and `vigil-rules replay` use. Capacity is simulated: decisions are applied at once.
pub struct Simulation<'a> {
    pub engine: Engine,
    pub rules: &'a RuleSet,
    pub state: State,
    /// Simulated capacity of each Auto Scaling group.
    pub capacity: BTreeMap<String, u32>,
    pub external_labels: Labels,
}

impl<'a> Simulation<'a> {
    pub fn new(rules: &'a RuleSet, engine: Engine) -> Self {
        let mut capacity = BTreeMap::new();
        for (asg, ps) in rules.scaling_by_asg() {
            capacity.insert(asg.to_string(), ps.iter().map(|p| p.min).max().unwrap_or(0));
        }
        Simulation {
            engine,
            rules,
            state: State::default(),
            capacity,
            external_labels: Labels::empty(),
        }
    }

    /// Evaluates everything due at `ts` (`ts` is measured from `origin`, where intervals align).
    pub fn step(&mut self, storage: &mut dyn RuleStorage, origin: i64, ts: i64) -> Vec<Event> {
        let due = |interval: i64| (ts - origin).rem_euclid(interval.max(1)) == 0;
        let mut events = Vec::new();
        let default = self.rules.default_interval_ms;
        for g in self.rules.groups() {
            if due(g.interval_ms.unwrap_or(default)) {
                events.extend(eval_group(
                    &self.engine,
                    g,
                    &mut self.state,
                    storage,
                    ts,
                    &self.external_labels,
                ));
            }
        }
        for (asg, ps) in self.rules.scaling_by_asg() {
            if !due(self.rules.asg_interval(&ps)) {
                continue;
            }
            let current = self.capacity.get(asg).copied().unwrap_or(0);
            let d = eval_scaling(
                &self.engine,
                asg,
                &ps,
                &mut self.state,
                storage,
                current,
                ts,
            );
            self.capacity.insert(asg.to_string(), d.desired);
            if d.changes() {
                events.push(Event::Scaling(d));
            }
        }
        for p in self.rules.replace() {
            if !due(p.interval_ms.unwrap_or(default)) {
                continue;
            }
            let size = self.capacity.get(&p.asg).copied().unwrap_or(0);
            match unhealthy_instances(&self.engine, storage, &p.expr, ts) {
                Ok(sick) => {
                    let st = self.state.replace.entry(p.name.clone()).or_default();
                    let d = replace::decide(p, st, &sick, size, ts);
                    if !d.replace.is_empty() || d.fail_open_started || d.fail_open_ended {
                        events.push(Event::Replace(d));
                    }
                }
                Err(e) => events.push(Event::RuleError {
                    at: ts,
                    rule: p.name.clone(),
                    error: e,
                }),
            }
        }
        events
    }
}
