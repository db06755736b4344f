//! The scaling decisions as series, written into the window at each decision of a group (by the
//! aggregator and `replay`): what the console charts and what Grafana can query, as KEDA and the
//! HPA export theirs.
//!
//! - `vigil_scaling_desired_capacity{asg}`: the capacity Vigil decided (held decisions included);
//! - `vigil_scaling_in_service_instances{asg}`: instances in service, as AWS's describe says (only
//!   for a described group);
//! - `vigil_scaling_recommended_capacity{asg, policy}`: each policy's recommendation, after
//!   scale-in stabilization;
//! - `vigil_scaling_policy_value{asg, policy}`: each policy's value;
//! - `vigil_scaling_policy_target{asg, policy}`: a target-tracking policy's target.
//!
//! A series a decision no longer gives (a policy without data, a policy removed) is marked stale
//! at once, as Prometheus does for a target's vanished series.

use std::collections::{BTreeMap, BTreeSet};

use vigil_wire::{Labels, Sample, STALE_NAN};

use crate::evaluator::RuleStorage;
use crate::rulefile::{ScalingMode, ScalingPolicy};
use crate::scaling::Decision;

pub const DESIRED: &str = "vigil_scaling_desired_capacity";
pub const IN_SERVICE: &str = "vigil_scaling_in_service_instances";
pub const RECOMMENDED: &str = "vigil_scaling_recommended_capacity";
pub const VALUE: &str = "vigil_scaling_policy_value";
pub const TARGET: &str = "vigil_scaling_policy_target";

/// Every name this module writes.
pub const NAMES: [&str; 5] = [DESIRED, IN_SERVICE, RECOMMENDED, VALUE, TARGET];

/// What was written at each group's last decision, to mark the vanished series stale.
#[derive(Debug, Default, Clone)]
pub struct Written(BTreeMap<String, BTreeSet<Labels>>);

/// Writes the series of decision `d` of group `asg` (whose policies are `policies`) at its time;
/// `in_service` when the group is described.
pub fn publish(
    storage: &mut dyn RuleStorage,
    policies: &[&ScalingPolicy],
    d: &Decision,
    in_service: Option<u32>,
    written: &mut Written,
) {
    let asg = d.asg.as_str();
    let mut now: Vec<(Labels, f64)> = vec![(
        Labels::from_pairs([("__name__", DESIRED), ("asg", asg)]),
        f64::from(d.desired),
    )];
    if let Some(n) = in_service {
        now.push((
            Labels::from_pairs([("__name__", IN_SERVICE), ("asg", asg)]),
            f64::from(n),
        ));
    }
    let of = |name: &str, policy: &str| {
        Labels::from_pairs([("__name__", name), ("asg", asg), ("policy", policy)])
    };
    for i in &d.inputs {
        if let Some(r) = i.recommended {
            now.push((of(RECOMMENDED, &i.policy), f64::from(r)));
        }
        if let Some(v) = i.value.filter(|v| v.is_finite()) {
            now.push((of(VALUE, &i.policy), v));
        }
    }
    for p in policies {
        if let ScalingMode::Target { target, .. } = p.mode {
            now.push((of(TARGET, &p.name), target));
        }
    }
    let before = written.0.remove(asg).unwrap_or_default();
    let mut after = BTreeSet::new();
    for (labels, v) in now {
        storage.append(labels.clone(), Sample::new(d.at, v));
        after.insert(labels);
    }
    for gone in before.difference(&after) {
        storage.append(gone.clone(), Sample::new(d.at, STALE_NAN));
    }
    written.0.insert(asg.to_string(), after);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::promql::{parse, MemStorage};
    use crate::scaling::PolicyInput;

    fn policy(name: &str) -> ScalingPolicy {
        ScalingPolicy {
            name: name.into(),
            asg: "web".into(),
            min: 1,
            max: 10,
            expr: parse("1").unwrap(),
            mode: ScalingMode::Target {
                target: 0.6,
                tolerance: 0.1,
            },
            scale_out_cooldown_ms: 0,
            scale_in_cooldown_ms: 0,
            scale_in_stabilization_ms: 0,
            interval_ms: None,
            controls: Default::default(),
        }
    }

    fn decision(at: i64, value: Option<f64>) -> Decision {
        Decision {
            at,
            asg: "web".into(),
            current: 4,
            desired: 6,
            direction: None,
            by: None,
            inputs: vec![PolicyInput {
                policy: "cpu".into(),
                value,
                raw: value.map(|_| 6),
                recommended: value.map(|_| 6),
                reason: String::new(),
            }],
            held: None,
            notes: Vec::new(),
            victims: Vec::new(),
            scheduled: None,
        }
    }

    fn at(s: &MemStorage, q: &str, ts: i64) -> Vec<(String, f64)> {
        let e = crate::promql::Engine::new(Default::default());
        match e.instant(s, &parse(q).unwrap(), ts).unwrap().value {
            crate::promql::Value::Vector(v) => {
                v.into_iter().map(|x| (x.labels.to_string(), x.f)).collect()
            }
            _ => Vec::new(),
        }
    }

    #[test]
    fn each_decision_writes_its_capacities_and_a_vanished_value_goes_stale() {
        let p = policy("cpu");
        let mut s = MemStorage::default();
        let mut w = Written::default();
        publish(&mut s, &[&p], &decision(1_000, Some(0.9)), Some(5), &mut w);
        assert_eq!(
            at(&s, "vigil_scaling_desired_capacity", 1_000),
            [(
                r#"vigil_scaling_desired_capacity{asg="web"}"#.to_string(),
                6.0
            )]
        );
        assert_eq!(
            at(&s, "vigil_scaling_in_service_instances", 1_000)[0].1,
            5.0
        );
        assert_eq!(
            at(&s, r#"vigil_scaling_policy_value{policy="cpu"}"#, 1_000)[0].1,
            0.9
        );
        assert_eq!(at(&s, "vigil_scaling_policy_target", 1_000)[0].1, 0.6);
        assert_eq!(
            at(&s, "vigil_scaling_recommended_capacity", 1_000)[0].1,
            6.0
        );
        // No data, and the group no longer described: those series end at once.
        publish(&mut s, &[&p], &decision(2_000, None), None, &mut w);
        for gone in [
            "vigil_scaling_policy_value",
            "vigil_scaling_recommended_capacity",
            "vigil_scaling_in_service_instances",
        ] {
            assert!(at(&s, gone, 2_000).is_empty(), "{gone}");
        }
        assert_eq!(at(&s, "vigil_scaling_desired_capacity", 2_000).len(), 1);
        assert_eq!(at(&s, "vigil_scaling_policy_target", 2_000).len(), 1);
    }
}
