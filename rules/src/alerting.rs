//! The alert lifecycle of Prometheus's alerting rules: inactive → pending → firing → resolved,
//! with `for`, `keep_firing_for`, templated labels and annotations, and the `ALERTS` /
//! `ALERTS_FOR_STATE` series. A pure state machine: (rule, state, query result, time) in,
//! transitions and series out.

use std::collections::{BTreeMap, HashMap};

use vigil_wire::{Labels, LabelsBuilder, Sample, METRIC_NAME};

use crate::promql::VectorSample;
use crate::rulefile::AlertRule;
use crate::template::Data;

/// How long a resolved alert is kept so that its resolution is sent at least once.
pub const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum AlertState {
    Inactive,
    Pending,
    Firing,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
        }
    }
}

/// One alert instance of a rule (one label set).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Alert {
    /// Labels including `alertname` and the rule's labels.
    #[cfg_attr(feature = "serde", serde(with = "crate::persist::labels"))]
    pub labels: Labels,
    pub annotations: BTreeMap<String, String>,
    #[cfg_attr(feature = "serde", serde(with = "crate::persist::float"))]
    pub value: f64,
    pub state: AlertState,
    /// When the alert became pending (ms).
    pub active_at: i64,
    pub fired_at: Option<i64>,
    pub resolved_at: Option<i64>,
    pub keep_firing_since: Option<i64>,
}

/// The active alerts of one rule.
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RuleState {
    #[cfg_attr(feature = "serde", serde(with = "crate::persist::by_labels"))]
    pub active: HashMap<Labels, Alert>,
}

/// A change of an alert's state.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub at: i64,
    pub rule: String,
    pub labels: Labels,
    pub annotations: BTreeMap<String, String>,
    pub from: AlertState,
    pub to: AlertState,
    pub value: f64,
    pub active_at: i64,
}

/// What one evaluation produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvalOutput {
    pub transitions: Vec<Transition>,
    /// `ALERTS` and `ALERTS_FOR_STATE` samples at the evaluation time.
    pub series: Vec<(Labels, Sample)>,
}

/// Why an evaluation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AlertError {
    #[error("vector contains metrics with the same labelset after applying alert labels: {0}")]
    DuplicateLabels(Labels),
}

/// Applies one evaluation's result to the rule's state.
pub fn evaluate(
    rule: &AlertRule,
    state: &mut RuleState,
    result: &[VectorSample],
    ts: i64,
    external_labels: &Labels,
) -> Result<EvalOutput, AlertError> {
    let mut current: HashMap<Labels, Alert> = HashMap::with_capacity(result.len());
    for s in result {
        let sample_labels = s.labels.without_metric_name();
        let mut data = Data {
            value: s.f,
            ..Default::default()
        };
        // Templates see the sample's labels including its name, as in Prometheus.
        for l in s.labels.iter() {
            data.labels.insert(l.name, l.value);
        }
        for l in external_labels.iter() {
            data.external_labels.insert(l.name, l.value);
        }
        let mut b: LabelsBuilder = sample_labels.to_builder();
        for (k, t) in &rule.labels {
            b.set(k.clone(), t.render_or_error(&data));
        }
        b.set("alertname", rule.alert.clone());
        let labels = b.build();
        let annotations: BTreeMap<String, String> = rule
            .annotations
            .iter()
            .map(|(k, t)| (k.clone(), t.render_or_error(&data)))
            .collect();
        if current.contains_key(&labels) {
            return Err(AlertError::DuplicateLabels(labels));
        }
        current.insert(
            labels.clone(),
            Alert {
                labels,
                annotations,
                value: s.f,
                state: AlertState::Pending,
                active_at: ts,
                fired_at: None,
                resolved_at: None,
                keep_firing_since: None,
            },
        );
    }

    let mut out = EvalOutput::default();
    let in_result: std::collections::HashSet<Labels> = current.keys().cloned().collect();
    for (k, a) in current {
        match state.active.get_mut(&k) {
            Some(existing) if existing.state != AlertState::Inactive => {
                existing.value = a.value;
                existing.annotations = a.annotations;
            }
            _ => {
                out.transitions.push(transition(
                    rule,
                    &a,
                    AlertState::Inactive,
                    AlertState::Pending,
                    ts,
                ));
                state.active.insert(k, a);
            }
        }
    }

    let mut remove = Vec::new();
    for (k, a) in state.active.iter_mut() {
        if !in_result.contains(k) {
            let mut keep_firing = false;
            if a.state == AlertState::Firing && rule.keep_firing_for_ms > 0 {
                let since = *a.keep_firing_since.get_or_insert(ts);
                keep_firing = ts - since < rule.keep_firing_for_ms;
            }
            if a.state == AlertState::Pending
                || a.resolved_at
                    .is_some_and(|r| ts - r > RESOLVED_RETENTION_MS)
            {
                remove.push(k.clone());
            }
            if a.state != AlertState::Inactive && !keep_firing {
                let from = a.state;
                a.state = AlertState::Inactive;
                a.resolved_at = Some(ts);
                out.transitions
                    .push(transition(rule, a, from, AlertState::Inactive, ts));
            }
            if !keep_firing {
                continue;
            }
        } else {
            a.keep_firing_since = None;
        }
        if a.state == AlertState::Pending && ts - a.active_at >= rule.for_ms {
            a.state = AlertState::Firing;
            a.fired_at = Some(ts);
            out.transitions.push(transition(
                rule,
                a,
                AlertState::Pending,
                AlertState::Firing,
                ts,
            ));
        }
        out.series.push(alerts_sample(a, ts));
        out.series.push(for_state_sample(a, ts));
    }
    for k in remove {
        state.active.remove(&k);
    }
    // A new alert with `for = 0` goes pending and firing in one evaluation: report only the
    // net change, in a stable order.
    out.transitions = merge_transitions(out.transitions);
    out.series.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn merge_transitions(ts: Vec<Transition>) -> Vec<Transition> {
    let mut out: Vec<Transition> = Vec::with_capacity(ts.len());
    for t in ts {
        if let Some(prev) = out
            .iter_mut()
            .find(|p| p.labels == t.labels && p.to == t.from)
        {
            prev.to = t.to;
            prev.value = t.value;
            prev.annotations = t.annotations;
            continue;
        }
        out.push(t);
    }
    out.retain(|t| t.from != t.to);
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    out
}

fn transition(
    rule: &AlertRule,
    a: &Alert,
    from: AlertState,
    to: AlertState,
    ts: i64,
) -> Transition {
    Transition {
        at: ts,
        rule: rule.alert.clone(),
        labels: a.labels.clone(),
        annotations: a.annotations.clone(),
        from,
        to,
        value: a.value,
        active_at: a.active_at,
    }
}

fn alerts_sample(a: &Alert, ts: i64) -> (Labels, Sample) {
    let mut b = a.labels.to_builder();
    b.set(METRIC_NAME, "ALERTS");
    b.set("alertstate", a.state.as_str());
    (b.build(), Sample::new(ts, 1.0))
}

fn for_state_sample(a: &Alert, ts: i64) -> (Labels, Sample) {
    let mut b = a.labels.to_builder();
    b.set(METRIC_NAME, "ALERTS_FOR_STATE");
    (
        b.build(),
        Sample::new(ts, a.active_at.div_euclid(1000) as f64),
    )
}

impl RuleState {
    /// The alerts currently firing, sorted by labels.
    pub fn firing(&self) -> Vec<&Alert> {
        let mut v: Vec<&Alert> = self
            .active
            .values()
            .filter(|a| a.state == AlertState::Firing)
            .collect();
        v.sort_by(|a, b| a.labels.cmp(&b.labels));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::promql::parse;
    use crate::template::Template;

    fn rule(for_ms: i64, keep_ms: i64) -> AlertRule {
        AlertRule {
            alert: "High".into(),
            expr: parse("x > 1").unwrap(),
            for_ms,
            keep_firing_for_ms: keep_ms,
            labels: vec![("severity".into(), Template::parse("page").unwrap())],
            annotations: vec![(
                "summary".into(),
                Template::parse("{{ $labels.job }} at {{ $value }}").unwrap(),
            )],
            receivers: vec![],
        }
    }

    fn sample(v: f64) -> Vec<VectorSample> {
        vec![VectorSample {
            labels: Labels::from_pairs([("__name__", "x"), ("job", "api")]),
            t: 0,
            f: v,
            h: None,
            drop_name: false,
        }]
    }

    fn states(out: &EvalOutput) -> Vec<(AlertState, AlertState)> {
        out.transitions.iter().map(|t| (t.from, t.to)).collect()
    }

    #[test]
    fn pending_then_firing_then_resolved() {
        let r = rule(120_000, 0);
        let mut st = RuleState::default();
        let ext = Labels::empty();
        let o = evaluate(&r, &mut st, &sample(2.0), 0, &ext).unwrap();
        assert_eq!(states(&o), [(AlertState::Inactive, AlertState::Pending)]);
        assert_eq!(o.transitions[0].annotations["summary"], "api at 2");
        assert_eq!(o.transitions[0].labels.get("severity"), Some("page"));
        assert_eq!(o.transitions[0].labels.get("alertname"), Some("High"));
        assert!(o
            .series
            .iter()
            .any(|(l, s)| l.get("alertstate") == Some("pending") && s.value == 1.0));
        let o = evaluate(&r, &mut st, &sample(3.0), 60_000, &ext).unwrap();
        assert!(o.transitions.is_empty());
        let o = evaluate(&r, &mut st, &sample(3.0), 120_000, &ext).unwrap();
        assert_eq!(states(&o), [(AlertState::Pending, AlertState::Firing)]);
        assert_eq!(st.firing().len(), 1);
        let for_state = o
            .series
            .iter()
            .find(|(l, _)| l.metric_name() == Some("ALERTS_FOR_STATE"))
            .unwrap();
        assert_eq!(for_state.1.value, 0.0, "active since t=0");
        let o = evaluate(&r, &mut st, &[], 180_000, &ext).unwrap();
        assert_eq!(states(&o), [(AlertState::Firing, AlertState::Inactive)]);
        assert!(o.series.is_empty());
        // Kept for the retention period, then forgotten.
        assert_eq!(st.active.len(), 1);
        evaluate(&r, &mut st, &[], 180_000 + RESOLVED_RETENTION_MS + 1, &ext).unwrap();
        assert!(st.active.is_empty());
    }

    #[test]
    fn pending_that_clears_is_dropped_without_firing() {
        let r = rule(120_000, 0);
        let mut st = RuleState::default();
        evaluate(&r, &mut st, &sample(2.0), 0, &Labels::empty()).unwrap();
        let o = evaluate(&r, &mut st, &[], 60_000, &Labels::empty()).unwrap();
        assert_eq!(states(&o), [(AlertState::Pending, AlertState::Inactive)]);
        assert!(st.active.is_empty());
    }

    #[test]
    fn zero_for_fires_at_once_and_keep_firing_for_holds() {
        let r = rule(0, 60_000);
        let mut st = RuleState::default();
        let o = evaluate(&r, &mut st, &sample(2.0), 0, &Labels::empty()).unwrap();
        assert_eq!(states(&o), [(AlertState::Inactive, AlertState::Firing)]);
        let o = evaluate(&r, &mut st, &[], 30_000, &Labels::empty()).unwrap();
        assert!(o.transitions.is_empty(), "kept firing");
        assert_eq!(st.firing().len(), 1);
        let o = evaluate(&r, &mut st, &[], 90_000, &Labels::empty()).unwrap();
        assert_eq!(states(&o), [(AlertState::Firing, AlertState::Inactive)]);
        // Returning data while resolved starts a new alert.
        let o = evaluate(&r, &mut st, &sample(5.0), 100_000, &Labels::empty()).unwrap();
        assert_eq!(states(&o), [(AlertState::Inactive, AlertState::Firing)]);
        assert_eq!(st.firing()[0].active_at, 100_000);
    }

    #[test]
    fn duplicate_label_sets_after_templating_are_an_error() {
        let r = rule(0, 0);
        let v = vec![
            VectorSample {
                labels: Labels::from_pairs([("__name__", "a"), ("job", "api")]),
                t: 0,
                f: 2.0,
                h: None,
                drop_name: false,
            },
            VectorSample {
                labels: Labels::from_pairs([("__name__", "b"), ("job", "api")]),
                t: 0,
                f: 3.0,
                h: None,
                drop_name: false,
            },
        ];
        assert!(evaluate(&r, &mut RuleState::default(), &v, 0, &Labels::empty()).is_err());
    }
}
