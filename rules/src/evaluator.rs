//! Evaluating rule files over a storage: rule groups in order (records feed later rules), alert
//! state, scaling and replacement decisions. Shared by `vigil-rules test`, `vigil-rules replay`
//! and the aggregator, so all three give the same answers.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use vigil_wire::{Labels, Sample, METRIC_NAME, STALE_NAN};

use crate::alerting::{self, RuleState, Transition};
use crate::health::{GroupHealth, RuleEvaluation};
use crate::promql::{Engine, MemStorage, Query, Storage, Value};
use crate::replace::{self, ReplaceDecision, ReplaceState};
use crate::rulefile::{Group, Rule, RuleFile, ScalingPolicy};
use crate::scaling::{self, Decision, GroupState, Guards, Observation, PolicyState};
use crate::victim::Where;

/// Storage that rule evaluation can also write to (recorded series, `ALERTS`).
pub trait RuleStorage: Storage {
    fn append(&mut self, labels: Labels, sample: Sample);
    /// A recording rule's native histogram.
    fn append_histogram(&mut self, labels: Labels, sample: vigil_wire::histogram::HSample);
}

impl RuleStorage for MemStorage {
    fn append(&mut self, labels: Labels, sample: Sample) {
        self.add(labels, sample);
    }

    fn append_histogram(&mut self, labels: Labels, sample: vigil_wire::histogram::HSample) {
        self.add_histogram(labels, sample);
    }
}

/// Whether the live fleet lets an instance the rules find unhealthy be replaced now.
#[derive(Debug, Clone, PartialEq)]
pub enum Eligibility {
    Eligible,
    /// Sick and already being dealt with (marked Unhealthy by something else): not replaced
    /// again, but counted towards the share of the group that fails open.
    Counted(String),
    /// Not to be judged now (in its grace period, not in service): neither replaced nor counted.
    Ignored(String),
}

/// What the live fleet says about one Auto Scaling group, handed to each [`Simulation::step`].
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// Described: its capacity (the one Vigil is applying, if a change is under way) and what
    /// each member's state allows. An instance absent from `members` is not a member and is
    /// left alone.
    Live {
        capacity: u32,
        members: BTreeMap<String, Eligibility>,
    },
    /// Not described lately: no scaling decision is made (it would start from a guess) and
    /// nothing is replaced.
    Unknown,
}

/// The fleet as observed before an evaluation, by group. A group absent here is simulated: its
/// capacity follows the simulation's own decisions, and every instance is eligible.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observations {
    pub groups: HashMap<String, Observed>,
    /// Group → where each member runs and whether it may be terminated (for
    /// `scale_in_victim`); absent for a simulated group.
    pub placement: HashMap<String, BTreeMap<String, crate::victim::Placement>>,
}

impl Observations {
    /// Nothing observed: every group simulated (`vigil-rules test` and `replay`, or no `[aws]`).
    pub fn none() -> &'static Observations {
        static NONE: std::sync::OnceLock<Observations> = std::sync::OnceLock::new();
        NONE.get_or_init(Observations::default)
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
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct State {
    /// Alert rule identity → state.
    #[cfg_attr(feature = "serde", serde(with = "crate::persist::alerts"))]
    pub alerts: HashMap<AlertKey, RuleState>,
    pub policies: HashMap<String, PolicyState>,
    pub groups: HashMap<String, GroupState>,
    pub replace: HashMap<String, ReplaceState>,
    /// When each instance was first seen, for `vigil_instance_warm`.
    #[cfg_attr(feature = "serde", serde(default))]
    pub warmup: crate::warmup::Warmup,
    /// Series each rule (file, group, index) wrote at its last evaluation, to mark the vanished
    /// ones stale.
    #[cfg_attr(feature = "serde", serde(skip))]
    written: HashMap<(String, String, usize), BTreeSet<Labels>>,
}

/// What identifies an alerting rule across evaluations and reloads: its file and group, name,
/// expression, hold and labels — so a "warning after 5m" and a "critical after 30m" rule with the
/// same name and expression keep separate states, and an unchanged rule keeps its state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct AlertKey {
    pub file: String,
    pub group: String,
    pub alert: String,
    pub expr: String,
    pub for_ms: i64,
    pub labels: String,
}

pub fn alert_key(group: &Group, a: &crate::rulefile::AlertRule) -> AlertKey {
    // The rule's labels as written: a JSON object of name → template source, in file order.
    let labels = serde_json::Value::Object(
        a.labels
            .iter()
            .map(|(k, t)| (k.clone(), serde_json::Value::String(t.source().to_string())))
            .collect(),
    );
    AlertKey {
        labels: labels.to_string(),
        ..legacy_alert_key(group, a)
    }
}

/// The key state databases of schema 1 used: the rule's labels as their `Debug` output (which
/// depends on how templates parse). Only for migrating those databases ([`migrate_v1_keys`]).
pub fn legacy_alert_key(group: &Group, a: &crate::rulefile::AlertRule) -> AlertKey {
    AlertKey {
        file: group.file.clone(),
        group: group.name.clone(),
        alert: a.alert.clone(),
        expr: a.expr.text().to_string(),
        for_ms: a.for_ms,
        labels: format!("{:?}", a.labels),
    }
}

/// Re-keys the alert state of a schema-1 database to today's keys, for the rules loaded now;
/// returns how many alert rules kept their state. State of a rule that is gone (or changed) is
/// dropped, as a reload drops it.
pub fn migrate_v1_keys(state: &mut State, rules: &RuleSet) -> usize {
    let mut map = HashMap::new();
    for g in rules.groups() {
        for r in &g.rules {
            if let Rule::Alert(a) = r {
                map.insert(legacy_alert_key(g, a), alert_key(g, a));
            }
        }
    }
    let old = std::mem::take(&mut state.alerts);
    for (k, v) in old {
        if let Some(new) = map.get(&k) {
            state.alerts.insert(new.clone(), v);
        }
    }
    state.alerts.len()
}

fn vector_of(v: Value, t: i64) -> Vec<crate::promql::VectorSample> {
    match v {
        Value::Vector(v) => v,
        Value::Scalar(f) => vec![crate::promql::VectorSample {
            labels: Labels::empty(),
            t,
            f,
            h: None,
            drop_name: false,
        }],
        _ => Vec::new(),
    }
}

/// Evaluates one group at `ts`, writing recorded series and `ALERTS` into `storage`, and how
/// each rule went into `health`.
pub fn eval_group(
    engine: &Engine,
    group: &Group,
    state: &mut State,
    storage: &mut dyn RuleStorage,
    ts: i64,
    external_labels: &Labels,
    health: &mut GroupHealth,
) -> Vec<Event> {
    let mut events = Vec::new();
    let group_start = std::time::Instant::now();
    health
        .rules
        .resize_with(group.rules.len(), Default::default);
    for (idx, rule) in group.rules.iter().enumerate() {
        let start = std::time::Instant::now();
        let errors_before = events.len();
        let written = eval_rule(
            engine,
            group,
            idx,
            rule,
            state,
            storage,
            ts,
            external_labels,
            &mut events,
        );
        let error = events[errors_before..].iter().find_map(|e| match e {
            Event::RuleError { error, .. } => Some(error.clone()),
            _ => None,
        });
        health.rules[idx].record(RuleEvaluation {
            at: ts,
            duration_ns: start.elapsed().as_nanos() as u64,
            samples: written,
            error,
        });
    }
    health.last_evaluation = Some(ts);
    health.duration_ns = group_start.elapsed().as_nanos() as u64;
    events
}

/// Evaluates one rule of a group; returns the series it wrote (errors go to `events`).
#[allow(clippy::too_many_arguments)]
fn eval_rule(
    engine: &Engine,
    group: &Group,
    idx: usize,
    rule: &Rule,
    state: &mut State,
    storage: &mut dyn RuleStorage,
    ts: i64,
    external_labels: &Labels,
    events: &mut Vec<Event>,
) -> usize {
    // Evaluated `query_offset` in the past, and written at that time (as Prometheus does);
    // an alert's `for` and its times are judged by the evaluation's own clock.
    let qt = ts - group.query_offset_ms.unwrap_or(0);
    let res = engine.instant(storage, rule.query(), qt);
    let mut written: Vec<(Labels, Sample)> = Vec::new();
    let mut written_h: Vec<(Labels, vigil_wire::histogram::HSample)> = Vec::new();
    match (rule, res) {
        (_, Err(e)) => {
            events.push(Event::RuleError {
                at: ts,
                rule: rule.name().to_string(),
                error: e.to_string(),
            });
            return 0;
        }
        (Rule::Record(r), Ok(res)) => {
            let mut seen = BTreeSet::new();
            let mut failed = false;
            for s in vector_of(res.value, qt) {
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
                    failed = true;
                    break;
                }
                match s.h {
                    Some(h) => written_h.push((
                        l,
                        vigil_wire::histogram::HSample {
                            timestamp_ms: qt,
                            h,
                        },
                    )),
                    None => written.push((l, Sample::new(qt, s.f))),
                }
            }
            if failed {
                // Like any failed evaluation: nothing written, nothing marked stale.
                return 0;
            }
        }
        (Rule::Alert(a), Ok(res)) => {
            let key = alert_key(group, a);
            let st = state.alerts.entry(key).or_default();
            match alerting::evaluate(a, st, &vector_of(res.value, qt), ts, external_labels) {
                Ok(out) => {
                    events.extend(out.transitions.into_iter().map(Event::Alert));
                    written = out.series;
                    // `ALERTS` and `ALERTS_FOR_STATE` at the time the rule looked at.
                    for (_, s) in &mut written {
                        s.timestamp_ms = qt;
                    }
                }
                Err(e) => {
                    events.push(Event::RuleError {
                        at: ts,
                        rule: a.alert.clone(),
                        error: e.to_string(),
                    });
                    return 0;
                }
            }
        }
    }
    let now: BTreeSet<Labels> = written
        .iter()
        .map(|(l, _)| l.clone())
        .chain(written_h.iter().map(|(l, _)| l.clone()))
        .collect();
    let prev = state
        .written
        .insert((group.file.clone(), group.name.clone(), idx), now.clone())
        .unwrap_or_default();
    for (l, s) in written {
        storage.append(l, s);
    }
    for (l, h) in written_h {
        storage.append_histogram(l, h);
    }
    for gone in prev.difference(&now) {
        storage.append(gone.clone(), Sample::new(qt, STALE_NAN));
    }
    now.len()
}

/// The value a scaling expression gives at `ts`: one number, or `None` (no data, several series,
/// or an error — all of which must never scale in).
pub fn scaling_value(engine: &Engine, storage: &dyn Storage, q: &Query, ts: i64) -> Option<f64> {
    scaling_observation(engine, storage, q, ts).value
}

/// What a scaling expression gives at `ts`: one finite number; nothing, NaN or ±Inf (no data);
/// or an error (it failed, or gave several series), which is not "no data".
pub fn scaling_observation(
    engine: &Engine,
    storage: &dyn Storage,
    q: &Query,
    ts: i64,
) -> Observation {
    let value = match engine.instant(storage, q, ts) {
        Err(e) => {
            return Observation {
                value: None,
                error: Some(format!("evaluation failed: {e}")),
            }
        }
        Ok(r) => r.value,
    };
    // NaN or ±Inf (a division by zero, say) is not "no data": it holds, never falls back.
    let number = |f: f64| {
        if f.is_finite() {
            Observation::value(Some(f))
        } else {
            Observation {
                value: None,
                error: Some(format!("the value is {}", crate::gofmt::shortest_g(f))),
            }
        }
    };
    match value {
        Value::Scalar(f) => number(f),
        // A native histogram is not a number to scale on (never read as 0).
        Value::Vector(v) if v.len() == 1 && v[0].h.is_some() => Observation {
            value: None,
            error: Some("the value is a native histogram, not a number".into()),
        },
        Value::Vector(v) if v.len() == 1 => number(v[0].f),
        Value::Vector(v) if v.is_empty() => Observation::value(None),
        Value::Vector(v) => Observation {
            value: None,
            error: Some(format!(
                "{} series (a scaling expression must give one)",
                v.len()
            )),
        },
        _ => Observation {
            value: None,
            error: Some("not a number".into()),
        },
    }
}

/// Evaluates the group's guards at `ts`: the first `hold_out_when` / `hold_in_when` that returns
/// a sample holds its direction. A `hold_in_when` that fails holds scale-in (the safe side); a
/// `hold_out_when` that fails holds nothing and is said in the decision.
pub fn eval_guards(
    engine: &Engine,
    storage: &dyn Storage,
    policies: &[&ScalingPolicy],
    ts: i64,
) -> Guards {
    let mut g = Guards::default();
    for p in policies {
        for (q, out) in [
            (&p.controls.hold_out_when, true),
            (&p.controls.hold_in_when, false),
        ] {
            let Some(q) = q else { continue };
            let key = if out { "hold_out_when" } else { "hold_in_when" };
            let slot = if out { &mut g.hold_out } else { &mut g.hold_in };
            match engine.instant(storage, q, ts).map(|r| r.value) {
                Ok(Value::Vector(v)) if !v.is_empty() => {
                    if slot.is_none() {
                        let more = if v.len() > 1 {
                            format!(" and {} more", v.len() - 1)
                        } else {
                            String::new()
                        };
                        // The guard's value beside its labels: what held, and by how much.
                        let value = match &v[0].h {
                            Some(_) => "a native histogram".to_string(),
                            None => crate::gofmt::shortest_g(v[0].f),
                        };
                        *slot = Some(format!(
                            "{key} of {} returns {} = {value}{more}",
                            p.name, v[0].labels
                        ));
                    }
                }
                Ok(_) => {}
                Err(e) if out => g.notes.push(format!(
                    "{key} of {} could not be evaluated ({e}): not held",
                    p.name
                )),
                Err(e) => {
                    if slot.is_none() {
                        *slot = Some(format!("{key} of {} could not be evaluated ({e})", p.name));
                    }
                }
            }
        }
    }
    g
}

/// Evaluates every scaling policy of one group and decides its capacity.
// Every input of a decision, explicitly: this is a pure function of them.
#[allow(clippy::too_many_arguments)]
pub fn eval_scaling(
    engine: &Engine,
    asg: &str,
    policies: &[&ScalingPolicy],
    schedules: &[&crate::schedule::Schedule],
    state: &mut State,
    storage: &dyn Storage,
    current: u32,
    placement: Where<'_>,
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
        .map(|(p, (_, st))| (*p, scaling_observation(engine, storage, &p.expr, ts), st))
        .collect();
    let mut guards = eval_guards(engine, storage, policies, ts);
    let victim = policies.iter().find_map(|p| {
        p.controls
            .scale_in_victim
            .as_ref()
            .map(|q| (p.name.as_str(), q))
    });
    let warmup = policies
        .iter()
        .any(|p| p.controls.instance_warmup_ms.is_some());
    let warming = if warmup || victim.is_some() {
        crate::warmup::warming(engine, storage, asg, ts).unwrap_or_else(|e| {
            // Which instances warm is unknown: none may be taken for cold, so no scale-in.
            guards.hold_in.get_or_insert_with(|| {
                format!("instance warmup could not be read ({e}): no scale-in")
            });
            Default::default()
        })
    } else {
        Default::default()
    };
    let (warming, warm) = warming;
    if warmup {
        guards.warming = warming.len() as u32;
        guards.warm = warm;
    }
    // The instances a scale-in may terminate, and so how far it may go (a described group).
    let mut aws_chooses = None;
    let mut ranked = 0;
    let gone = &mut state
        .groups
        .entry(asg.to_string())
        .or_default()
        .simulated_gone;
    if !matches!(placement, Where::Simulated) {
        gone.clear();
    }
    let candidates = victim.and_then(|(name, q)| {
        let ranks = match crate::victim::rank(engine, storage, q, ts) {
            Ok(r) => {
                // An instance the simulation terminated is forgotten once it stops pushing.
                gone.retain(|i| r.contains_key(i));
                r
            }
            Err(e) => {
                guards.notes.push(format!(
                    "scale_in_victim of {name} could not be evaluated ({e}): instances chosen by zone alone"
                ));
                BTreeMap::new()
            }
        };
        ranked = ranks.len();
        let c = match placement {
            Where::Described(members) => crate::victim::Candidates::new(&ranks, members, &warming),
            Where::Unknown | Where::Simulated => {
                // What a simulation terminated is gone, though its recorded data goes on.
                let mut ranks = ranks.clone();
                ranks.retain(|i, _| !gone.contains(i));
                let mut zones = zones_from_data(engine, storage, asg, ts);
                zones.retain(|i, _| !gone.contains(i));
                crate::victim::Candidates::simulated(&ranks, &zones, &warming)
            }
        };
        if c.placed && c.in_service() != current {
            // Capacity that is not an instance in service (launching, or failing to): lowering
            // the desired capacity drops it first; terminating would take serving instances.
            aws_chooses = Some(format!(
                "scale_in_victim: {} of {current} in service (the rest launching or leaving): the capacity is set and AWS chooses",
                c.in_service()
            ));
            return None;
        }
        if c.placed {
            let why = if c.excluded.is_empty() {
                "no other is in service".to_string()
            } else {
                c.excluded.join(", ")
            };
            guards.removable = Some((c.len(), why));
        }
        Some(c)
    });
    let group = state.groups.entry(asg.to_string()).or_default();
    // A schedule no longer in the rules no longer sets bounds.
    if group
        .scheduled
        .as_ref()
        .is_some_and(|r| !schedules.iter().any(|s| s.name == r.schedule))
    {
        group.scheduled = None;
    }
    let mut ran = crate::schedule::due(schedules, group.schedules_checked, ts);
    group.schedules_checked = Some(ts);
    if let Some(r) = &mut ran {
        // A bound the schedule leaves out stays as the group's last schedule set it (AWS keeps
        // a MinSize or MaxSize an action does not give).
        let prev = group.scheduled.take();
        r.min = r.min.or(prev.as_ref().and_then(|p| p.min));
        r.max = r.max.or(prev.as_ref().and_then(|p| p.max));
        group.scheduled = Some(r.clone());
        guards.schedule_ran = true;
    }
    let mut d = scaling::decide(asg, current, &mut inputs, &guards, group, ts);
    // A policy's scale-in terminates its victims; moving into the bounds lets AWS choose.
    let policy_scale_in = d.direction == Some(scaling::Direction::In)
        && d.desired < current
        && d.by
            .as_deref()
            .is_some_and(|b| policies.iter().any(|p| p.name == b));
    if let Some(c) = candidates.filter(|_| policy_scale_in) {
        d.victims = c.choose(current - d.desired);
        if matches!(placement, Where::Simulated) {
            let gone = &mut group.simulated_gone;
            gone.extend(d.victims.iter().map(|(i, _)| i.clone()));
            // No more gone than the recorded instances beyond the capacity: a simulated
            // scale-out brings the earliest terminated back.
            let keep = ranked.saturating_sub(d.desired as usize);
            let drop = gone.len().saturating_sub(keep);
            gone.drain(..drop);
        }
    }
    if let Some(note) = aws_chooses.filter(|_| policy_scale_in) {
        d.notes.push(note);
    }
    if let Some(r) = ran {
        d.notes.insert(
            0,
            format!(
                "schedule {} ran at {}: {}",
                r.schedule,
                crate::duration::format_timestamp_ms(r.at),
                schedules
                    .iter()
                    .find(|s| s.name == r.schedule)
                    .map_or(String::new(), |s| s.describe_bounds())
            ),
        );
        d.scheduled = Some(r);
    }
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
    if let Some(s) = v.iter().find(|s| s.labels.get("instance").is_none()) {
        return Err(format!(
            "result {} has no instance label: a replace expression must keep `instance`",
            s.labels
        ));
    }
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

    /// The schedules of one Auto Scaling group, in file order.
    pub fn schedules_for(&self, asg: &str) -> Vec<&crate::schedule::Schedule> {
        self.files
            .iter()
            .flat_map(|f| f.schedules.iter())
            .filter(|s| s.asg == asg)
            .collect()
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

    /// Rules, scaling policies and replace policies, all files together.
    pub fn rule_count(&self) -> usize {
        self.groups().map(|g| g.rules.len()).sum::<usize>()
            + self.scaling().count()
            + self.replace().count()
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
pub struct Simulation {
    pub engine: Engine,
    pub rules: std::sync::Arc<RuleSet>,
    pub state: State,
    /// Each group's capacity as of its last decision: observed then, or simulated (a group not
    /// observed follows its own decisions, starting at its policies' `min`).
    capacity: BTreeMap<String, u32>,
    pub external_labels: Labels,
    /// How each rule group's last evaluations went, by (file, group name).
    pub health: HashMap<(String, String), GroupHealth>,
    /// Replace policies already told that their group's size is unknown.
    warned: std::collections::HashSet<String>,
    /// Instances each replace policy held back last time (to report changes only).
    last_held: HashMap<String, Vec<String>>,
    /// Whether to publish `vigil_instance_warm` (the aggregator and `replay`; `vigil-rules test`
    /// takes it from its input series).
    pub publish_warm: bool,
    /// Whether to write each decision's capacities and values as series (`crate::capacity`:
    /// the aggregator and `replay`).
    pub publish_capacity: bool,
    capacity_written: crate::capacity::Written,
    /// A replay of recorded data: a group without placement is simulated (`Where::Simulated`).
    pub offline: bool,
    /// The last held decision said for each group (a pause or a guard), said again only when
    /// what it says changes.
    last_paused: HashMap<String, String>,
}

/// The alert a replace policy raises while it fails open (too much of the group unhealthy at
/// once: the cause is likely shared, so nothing is replaced and a human is asked to look).
pub fn fail_open_alert(
    p: &crate::rulefile::ReplacePolicy,
    d: &replace::ReplaceDecision,
) -> Transition {
    let labels = Labels::from_pairs([
        ("alertname", "VigilReplacementFailOpen"),
        ("asg", p.asg.as_str()),
        ("policy", p.name.as_str()),
        ("severity", "page"),
    ]);
    let mut annotations = BTreeMap::new();
    annotations.insert(
        "summary".to_string(),
        format!(
            "{} of {} instances of {} unhealthy: replacing nothing, the cause is likely shared",
            d.unhealthy, d.group_size, p.asg
        ),
    );
    let (from, to) = if d.fail_open_started {
        (alerting::AlertState::Inactive, alerting::AlertState::Firing)
    } else {
        (alerting::AlertState::Firing, alerting::AlertState::Inactive)
    };
    Transition {
        at: d.at,
        rule: "VigilReplacementFailOpen".into(),
        labels,
        annotations,
        from,
        to,
        value: d.unhealthy as f64 / f64::from(d.group_size.max(1)),
        active_at: d.at,
    }
}

/// The alert an `az_aware` replace policy raises while one AZ fails open (`started`: its
/// unhealthy and total instances; `None`: it ended).
pub fn zone_fail_open_alert(
    p: &crate::rulefile::ReplacePolicy,
    d: &replace::ReplaceDecision,
    az: &str,
    started: Option<(usize, usize)>,
) -> Transition {
    let shown = if az.is_empty() { "an unknown AZ" } else { az };
    let labels = Labels::from_pairs([
        ("alertname", "VigilReplacementFailOpen"),
        ("asg", p.asg.as_str()),
        ("az", az),
        ("policy", p.name.as_str()),
        ("severity", "page"),
    ]);
    let mut annotations = BTreeMap::new();
    let (n, total) = started.unwrap_or((0, 1));
    annotations.insert(
        "summary".to_string(),
        format!(
            "{n} of {total} instances of {} in {shown} unhealthy: replacing nothing in {shown} (an AZ impairment is not a reason to churn its instances); the other AZs are still served",
            p.asg
        ),
    );
    let (from, to) = if started.is_some() {
        (alerting::AlertState::Inactive, alerting::AlertState::Firing)
    } else {
        (alerting::AlertState::Firing, alerting::AlertState::Inactive)
    };
    Transition {
        at: d.at,
        rule: "VigilReplacementFailOpen".into(),
        labels,
        annotations,
        from,
        to,
        value: n as f64 / total.max(1) as f64,
        active_at: d.at,
    }
}

/// Where a simulated group's instances run, as the agents' `az` labels say (instance → AZ).
pub fn zones_from_data(
    engine: &Engine,
    storage: &dyn Storage,
    asg: &str,
    ts: i64,
) -> BTreeMap<String, String> {
    let quoted = asg.replace('\\', "\\\\").replace('"', "\\\"");
    let q = format!(
        r#"group by (instance, az) ({{__name__=~"node_boot_time_seconds|vigil_health_up|up", asg="{quoted}", instance!="", az!=""}})"#
    );
    let Ok(q) = crate::promql::parse(&q) else {
        return BTreeMap::new();
    };
    match engine.instant(storage, &q, ts).map(|r| r.value) {
        Ok(Value::Vector(v)) => v
            .iter()
            .filter_map(|s| {
                Some((
                    s.labels.get("instance")?.to_string(),
                    s.labels.get("az")?.to_string(),
                ))
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

impl Simulation {
    pub fn new(rules: std::sync::Arc<RuleSet>, engine: Engine) -> Self {
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
            health: HashMap::new(),
            warned: Default::default(),
            last_held: HashMap::new(),
            last_paused: HashMap::new(),
            publish_warm: false,
            publish_capacity: false,
            capacity_written: Default::default(),
            offline: false,
        }
    }

    /// Swaps in a reloaded rule set; the state of unchanged rules carries over (it is keyed by
    /// rule identity), and groups new to the set start at their policies' `min`.
    pub fn set_rules(&mut self, rules: std::sync::Arc<RuleSet>) {
        for (asg, ps) in rules.scaling_by_asg() {
            self.capacity
                .entry(asg.to_string())
                .or_insert_with(|| ps.iter().map(|p| p.min).max().unwrap_or(0));
        }
        // Rule positions may have changed: health starts anew with the next evaluation.
        self.health.clear();
        self.rules = rules;
    }

    /// Starts a group at `n` instances (a restart's saved capacity, `replay --capacity`).
    pub fn start_at(&mut self, asg: &str, n: u32) {
        self.capacity.insert(asg.to_string(), n);
    }

    /// Each group's capacity as of its last decision (what a restart resumes from).
    pub fn capacities(&self) -> &BTreeMap<String, u32> {
        &self.capacity
    }

    /// Evaluates everything due at `ts` (`ts` is measured from `origin`, where intervals align),
    /// against the fleet as `fleet` observed it.
    pub fn step(
        &mut self,
        storage: &mut dyn RuleStorage,
        origin: i64,
        ts: i64,
        fleet: &Observations,
    ) -> Vec<Event> {
        let due = |interval: i64| (ts - origin).rem_euclid(interval.max(1)) == 0;
        let mut events = Vec::new();
        let default = self.rules.default_interval_ms;
        if self.publish_warm {
            crate::warmup::publish(
                &self.engine,
                storage,
                &self.rules,
                fleet,
                &mut self.state.warmup,
                ts,
            );
        }
        for g in self.rules.groups() {
            if due(g.interval_ms.unwrap_or(default)) {
                let health = self
                    .health
                    .entry((g.file.clone(), g.name.clone()))
                    .or_default();
                events.extend(eval_group(
                    &self.engine,
                    g,
                    &mut self.state,
                    storage,
                    ts,
                    &self.external_labels,
                    health,
                ));
            }
        }
        for (asg, ps) in self.rules.scaling_by_asg() {
            if !due(self.rules.asg_interval(&ps)) {
                continue;
            }
            let current = match fleet.groups.get(asg) {
                Some(Observed::Unknown) => continue,
                Some(Observed::Live { capacity, .. }) => *capacity,
                None => self.capacity.get(asg).copied().unwrap_or(0),
            };
            let placement = match fleet.placement.get(asg) {
                Some(p) => Where::Described(p),
                None if self.offline => Where::Simulated,
                None => Where::Unknown,
            };
            let d = eval_scaling(
                &self.engine,
                asg,
                &ps,
                &self.rules.schedules_for(asg),
                &mut self.state,
                storage,
                current,
                placement,
                ts,
            );
            self.capacity.insert(asg.to_string(), d.desired);
            if self.publish_capacity {
                let in_service = fleet
                    .placement
                    .get(asg)
                    .map(|pl| pl.values().filter(|p| p.in_service).count() as u32);
                crate::capacity::publish(storage, &ps, &d, in_service, &mut self.capacity_written);
            }
            // A decision held by a pause, a guard or a limit is said when its cause or direction
            // changes (not at every new value of what it would do).
            let paused = d
                .held
                .as_deref()
                .filter(|_| d.held_worth_saying())
                .map(|h| h.split(" from ").next().unwrap_or(h).to_string());
            let said = match &paused {
                Some(h) => self.last_paused.insert(asg.to_string(), h.clone()).as_ref() != Some(h),
                None => {
                    self.last_paused.remove(asg);
                    false
                }
            };
            if d.changes() || said || d.scheduled.is_some() {
                events.push(Event::Scaling(d));
            }
        }
        for p in self.rules.replace() {
            if !due(p.interval_ms.unwrap_or(default)) {
                continue;
            }
            let observed = fleet.groups.get(&p.asg);
            let size = match observed {
                Some(Observed::Live { capacity, .. }) => Some(*capacity),
                _ => self.capacity.get(&p.asg).copied(),
            };
            let Some(size) = size else {
                if self.warned.insert(p.name.clone()) {
                    events.push(Event::RuleError {
                        at: ts,
                        rule: p.name.clone(),
                        error: format!("the size of {} is unknown (no scaling policy): give it with --capacity {}=N", p.asg, p.asg),
                    });
                }
                continue;
            };
            match unhealthy_instances(&self.engine, storage, &p.expr, ts) {
                Ok(mut sick) => {
                    let mut skipped = Vec::new();
                    let mut counted = Vec::new();
                    if let Some(Observed::Unknown) = observed {
                        skipped = std::mem::take(&mut sick)
                            .into_iter()
                            .map(|i| (i, format!("{} cannot be described now", p.asg)))
                            .collect();
                    }
                    if let Some(Observed::Live { members, .. }) = observed {
                        sick.retain(|i| match members.get(i) {
                            Some(Eligibility::Eligible) => true,
                            Some(Eligibility::Counted(why)) => {
                                skipped.push((i.clone(), why.clone()));
                                counted.push(i.clone());
                                false
                            }
                            Some(Eligibility::Ignored(why)) => {
                                skipped.push((i.clone(), why.clone()));
                                false
                            }
                            None => {
                                skipped.push((i.clone(), format!("not a member of {}", p.asg)));
                                false
                            }
                        });
                    }
                    // az_aware: each member's AZ, as the group's describe gives it (else as the
                    // agents' `az` labels say).
                    let zones: Option<BTreeMap<String, String>> =
                        p.az_aware.then(|| match fleet.placement.get(&p.asg) {
                            Some(pl) => pl.iter().map(|(i, x)| (i.clone(), x.az.clone())).collect(),
                            None => zones_from_data(&self.engine, storage, &p.asg, ts),
                        });
                    let st = self.state.replace.entry(p.name.clone()).or_default();
                    let mut d =
                        replace::decide_in_zones(p, st, &sick, &counted, size, zones.as_ref(), ts);
                    d.skipped = skipped;
                    if d.fail_open_started || d.fail_open_ended {
                        events.push(Event::Alert(fail_open_alert(p, &d)));
                    }
                    for (az, n, total) in &d.zone_fail_open_started {
                        events.push(Event::Alert(zone_fail_open_alert(
                            p,
                            &d,
                            az,
                            Some((*n, *total)),
                        )));
                    }
                    for az in &d.zone_fail_open_ended {
                        events.push(Event::Alert(zone_fail_open_alert(p, &d, az, None)));
                    }
                    // Held back or left alone: reported when that changes, not every time.
                    let mut waiting = d.held.clone();
                    waiting.extend(d.skipped.iter().map(|(i, why)| format!("{i}: {why}")));
                    // Paused: said again when the pause or what it holds changes.
                    waiting.extend(d.note.iter().filter(|n| n.starts_with("paused:")).cloned());
                    let waiting_changed = self.last_held.get(&p.name) != Some(&waiting);
                    self.last_held.insert(p.name.clone(), waiting.clone());
                    if !d.replace.is_empty()
                        || d.fail_open_started
                        || d.fail_open_ended
                        || !d.zone_fail_open_started.is_empty()
                        || !d.zone_fail_open_ended.is_empty()
                        || (waiting_changed && !waiting.is_empty())
                    {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rulefile::{load, load_all, Context};

    /// Group `g` observed live at `capacity`, with these members.
    fn live_g<const N: usize>(capacity: u32, members: [(&str, Eligibility); N]) -> Observations {
        let members = members
            .into_iter()
            .map(|(i, e)| (i.to_string(), e))
            .collect();
        Observations {
            groups: HashMap::from([("g".to_string(), Observed::Live { capacity, members })]),
            ..Observations::default()
        }
    }

    /// The rules of one file, evaluated every minute.
    fn simulation_of(text: &str) -> Simulation {
        let f = load("f.toml", text, &Context::default()).unwrap();
        let rules = RuleSet {
            files: vec![f],
            default_interval_ms: 60_000,
        };
        Simulation::new(std::sync::Arc::new(rules), Engine::default())
    }

    fn replace_decision(events: Vec<Event>) -> ReplaceDecision {
        events
            .into_iter()
            .find_map(|e| match e {
                Event::Replace(d) => Some(d),
                _ => None,
            })
            .expect("a replace decision")
    }

    #[test]
    fn same_name_and_expression_with_different_holds_keep_separate_states() {
        let text = r#"
[[group]]
name = "g"
[[group.alert]]
alert = "Down"
expr = "up == 0"
for = "1m"
labels = { severity = "warning" }
[[group.alert]]
alert = "Down"
expr = "up == 0"
for = "3m"
labels = { severity = "critical" }
"#;
        let mut storage = MemStorage::new();
        storage.add_series(
            Labels::from_pairs([("__name__", "up"), ("instance", "a")]),
            (0..=5).map(|k| Sample::new(k * 60_000, 0.0)),
        );
        let mut sim = simulation_of(text);
        let mut fired = Vec::new();
        for k in 0..=5 {
            for e in sim.step(&mut storage, 0, k * 60_000, Observations::none()) {
                if let Event::Alert(t) = e {
                    if t.to == alerting::AlertState::Firing {
                        fired.push((t.labels.get("severity").unwrap_or("").to_string(), t.at));
                    }
                }
            }
        }
        assert_eq!(
            fired,
            [
                ("warning".to_string(), 60_000),
                ("critical".to_string(), 180_000)
            ]
        );
    }

    #[test]
    fn a_group_with_a_query_offset_evaluates_and_records_that_far_back() {
        let text = r#"
[[group]]
name = "late"
query_offset = "1m"
[[group.record]]
record = "job:up:sum"
expr = "sum(up)"
[[group.alert]]
alert = "Down"
expr = "up == 0"
for = "2m"
"#;
        let mut storage = MemStorage::new();
        // Up until 3m, down from then on.
        storage.add_series(
            Labels::from_pairs([("__name__", "up"), ("instance", "a")]),
            (0..=10).map(|k| Sample::new(k * 60_000, if k < 3 { 1.0 } else { 0.0 })),
        );
        let mut sim = simulation_of(text);
        let mut fired = None;
        for k in 0..=10 {
            for e in sim.step(&mut storage, 0, k * 60_000, Observations::none()) {
                if let Event::Alert(t) = e {
                    if t.to == crate::alerting::AlertState::Firing && fired.is_none() {
                        fired = Some(k);
                    }
                }
            }
        }
        // Seen down at 4m (looking at 3m), firing 2m after that by the evaluation's clock.
        assert_eq!(fired, Some(6));
        let rec = storage
            .select(
                &[crate::promql::storage::Matcher::new(
                    crate::promql::storage::MatchOp::Equal,
                    "__name__",
                    "job:up:sum",
                )],
                0,
                i64::MAX,
            )
            .unwrap();
        let pts: Vec<(i64, f64)> = rec[0]
            .samples
            .iter()
            .map(|s| (s.timestamp_ms, s.value))
            .collect();
        // Written at the time it looked at: the first at 1m (for 1m of data), none at 0.
        assert_eq!(pts[0], (0, 1.0));
        assert_eq!(pts[3], (180_000, 0.0));
        assert_eq!(pts.last().copied(), Some((540_000, 0.0)));
        let bad = "[[group]]\nname = \"g\"\nquery_offset = \"-1m\"\n";
        let e = load_all(&[("r.toml".into(), bad.into())], &Context::default()).unwrap_err();
        assert!(
            e[0].message.starts_with("group[0].query_offset") && e[0].line == 3,
            "{e:?}"
        );
    }

    #[test]
    fn policies_on_one_group_must_agree_on_bounds() {
        let a = (
            "a.toml".to_string(),
            "[[scaling]]\nname = \"a\"\nasg = \"g\"\nmin = 2\nmax = 5\nexpr = \"1\"\ntarget = 1\n"
                .to_string(),
        );
        let b = ("b.toml".to_string(), "[[scaling]]\nname = \"b\"\nasg = \"g\"\nmin = 10\nmax = 20\nexpr = \"1\"\ntarget = 1\n".to_string());
        let e = load_all(&[a, b], &Context::default()).unwrap_err();
        assert!(e[0].message.contains("must agree"), "{e:?}");
    }

    #[test]
    fn a_replace_expression_must_keep_instance() {
        let mut storage = MemStorage::new();
        storage.add(
            Labels::from_pairs([("__name__", "up"), ("instance", "a")]),
            Sample::new(0, 0.0),
        );
        let q = crate::promql::parse("count(up == 0)").unwrap();
        let e = unhealthy_instances(&Engine::default(), &storage, &q, 0).unwrap_err();
        assert!(e.contains("no instance label"), "{e}");
    }

    #[test]
    fn instances_the_fleet_rules_out_are_neither_replaced_nor_counted() {
        let text = r#"
[[scaling]]
name = "s"
asg = "g"
min = 4
max = 4
expr = "1"
target = 1
[[replace]]
name = "r"
asg = "g"
expr = "health == 0"
for = "0s"
max_fraction = 0.5
window = "10m"
fail_open_fraction = 0.5
"#;
        let mut storage = MemStorage::new();
        for i in ["a", "b", "c"] {
            storage.add(
                Labels::from_pairs([("__name__", "health"), ("instance", i)]),
                Sample::new(0, 0.0),
            );
        }
        let mut sim = simulation_of(text);
        // b boots, c has left the group: only a is eligible, and 1 of 4 is under fail-open.
        let fleet = live_g(
            4,
            [
                ("a", Eligibility::Eligible),
                ("b", Eligibility::Ignored("in its grace period".to_string())),
                ("d", Eligibility::Eligible),
            ],
        );
        let d = replace_decision(sim.step(&mut storage, 0, 0, &fleet));
        assert_eq!(d.replace.len(), 1, "{d:?}");
        assert_eq!(d.replace[0].0, "a");
        assert!(!d.fail_open_started);
        assert_eq!(
            d.skipped,
            [
                ("b".to_string(), "in its grace period".to_string()),
                ("c".to_string(), "not a member of g".to_string())
            ]
        );
    }

    #[test]
    fn instances_already_unhealthy_count_towards_fail_open() {
        let text = "[[scaling]]\nname = \"s\"\nasg = \"g\"\nmin = 4\nmax = 4\nexpr = \"1\"\ntarget = 1\n[[replace]]\nname = \"r\"\nasg = \"g\"\nexpr = \"health == 0\"\nfor = \"0s\"\nmax_fraction = 0.5\nwindow = \"10m\"\nfail_open_fraction = 0.5\n";
        let mut storage = MemStorage::new();
        for i in ["a", "b"] {
            storage.add(
                Labels::from_pairs([("__name__", "health"), ("instance", i)]),
                Sample::new(0, 0.0),
            );
        }
        let mut sim = simulation_of(text);
        // b is sick and already Unhealthy (a load balancer said so): a alone would be 1 of 4,
        // but with b the group is 2 of 4 sick — at fail_open_fraction, so nothing is replaced.
        let fleet = live_g(
            4,
            [
                ("a", Eligibility::Eligible),
                ("b", Eligibility::Counted("already Unhealthy".to_string())),
            ],
        );
        let d = replace_decision(sim.step(&mut storage, 0, 0, &fleet));
        assert!(d.fail_open_started, "{d:?}");
        assert!(d.replace.is_empty());
    }

    #[test]
    fn scaling_starts_from_the_observed_capacity_and_a_group_not_observed_follows_its_own() {
        // Half as busy again as the target: desired = ceil(current × 1.5).
        let text = "[[scaling]]\nname = \"s\"\nasg = \"g\"\nmin = 1\nmax = 10\nexpr = \"load\"\ntarget = 1\nscale_out_cooldown = \"0s\"\n";
        let mut storage = MemStorage::new();
        storage.add_series(
            Labels::from_pairs([("__name__", "load")]),
            (0..=40).map(|k| Sample::new(k * 15_000, 1.5)),
        );
        let mut sim = simulation_of(text);
        let decided = |events: Vec<Event>| {
            events.into_iter().find_map(|e| match e {
                Event::Scaling(d) => Some((d.current, d.desired)),
                _ => None,
            })
        };
        // Unknown: nothing decided, the simulation's record untouched.
        let unknown = Observations {
            groups: HashMap::from([("g".to_string(), Observed::Unknown)]),
            ..Observations::default()
        };
        assert_eq!(decided(sim.step(&mut storage, 0, 0, &unknown)), None);
        assert_eq!(sim.capacities().get("g"), Some(&1), "the policy's min");
        // Observed at 2: decided from 2, not from the simulation's 1.
        assert_eq!(
            decided(sim.step(&mut storage, 0, 60_000, &live_g(2, []))),
            Some((2, 3))
        );
        // No longer observed (a dry run with AWS away): it goes on from 3, its last decision.
        assert_eq!(
            decided(sim.step(&mut storage, 0, 120_000, Observations::none())),
            Some((3, 5))
        );
        assert_eq!(sim.capacities().get("g"), Some(&5));
    }

    fn scaling_decision(events: Vec<Event>) -> Decision {
        events
            .into_iter()
            .find_map(|e| match e {
                Event::Scaling(d) => Some(d),
                _ => None,
            })
            .expect("a decision")
    }

    #[test]
    fn a_scale_in_terminates_the_lowest_ranked_instances_zone_by_zone_and_no_more_than_may_go() {
        // Load 0.25 against a target of 1: 5 instances want 2. in_flight ranks them.
        let text = "[[scaling]]\nname = \"s\"\nasg = \"g\"\nmin = 1\nmax = 10\nexpr = \"load\"\ntarget = 1\nscale_in_cooldown = \"0s\"\nscale_in_stabilization = \"0s\"\nscale_in_victim = 'sum by (instance) (in_flight)'\n";
        let mut storage = MemStorage::new();
        storage.add_series(
            Labels::from_pairs([("__name__", "load")]),
            (0..=8).map(|k| Sample::new(k * 15_000, 0.25)),
        );
        for (i, v) in [("i-a1", 5.0), ("i-a2", 1.0), ("i-b1", 0.0), ("i-b2", 3.0)] {
            storage.add_series(
                Labels::from_pairs([("__name__", "in_flight"), ("instance", i)]),
                (0..=8).map(|k| Sample::new(k * 15_000, v)),
            );
        }
        let place = |az: &str, protected: bool| crate::victim::Placement {
            az: az.into(),
            protected,
            in_service: true,
        };
        let mut fleet = live_g(5, []);
        fleet.placement.insert(
            "g".into(),
            BTreeMap::from([
                ("i-a1".to_string(), place("a", false)),
                ("i-a2".to_string(), place("a", false)),
                ("i-a3".to_string(), place("a", true)),
                ("i-b1".to_string(), place("b", false)),
                ("i-b2".to_string(), place("b", false)),
            ]),
        );
        let mut sim = simulation_of(text);
        let d = scaling_decision(sim.step(&mut storage, 0, 0, &fleet));
        // Zone a runs 3 (one protected), b 2: a gives its lowest (i-a2), then b (i-b1), then
        // a again (i-a1): the decision wants 5 -> 2, three victims.
        assert_eq!((d.current, d.desired), (5, 2), "{d:?}");
        let victims: Vec<&str> = d.victims.iter().map(|(i, _)| i.as_str()).collect();
        assert_eq!(victims, ["i-a2", "i-b1", "i-a1"], "{d:?}");
        assert!(d.reasons().iter().any(|r| r.starts_with("terminates i-a2: ranked 1 by scale_in_victim, lowest in a (3 instances in service there)")), "{:?}", d.reasons());

        // All but one protected: the scale-in goes no further than the one that may go.
        let mut sim = simulation_of(text);
        for p in fleet.placement.get_mut("g").unwrap().values_mut() {
            p.protected = true;
        }
        fleet
            .placement
            .get_mut("g")
            .unwrap()
            .get_mut("i-b2")
            .unwrap()
            .protected = false;
        let d = scaling_decision(sim.step(&mut storage, 0, 0, &fleet));
        assert_eq!(d.desired, 4, "{d:?}");
        assert_eq!(d.victims.len(), 1);
        assert!(d.notes.iter().any(|n| n.contains("scale_in_victim: 1 instance may be terminated (4 instances protected from scale-in): limits 2 to 4")), "{:?}", d.notes);

        // A sixth unit of capacity still launching: terminating would take serving instances,
        // so the capacity is set and AWS chooses.
        let mut sim = simulation_of(text);
        let mut launching = live_g(6, []);
        launching.placement = fleet.placement.clone();
        let d = scaling_decision(sim.step(&mut storage, 0, 0, &launching));
        assert_eq!((d.current, d.desired), (6, 2), "{d:?}");
        assert!(d.victims.is_empty(), "{d:?}");
        assert!(
            d.notes.iter().any(|n| n.contains("5 of 6 in service")),
            "{:?}",
            d.notes
        );
    }
}
