//! How the decision state is written down (the aggregator's snapshots, the coming shared state):
//! `serde` for the state types themselves, with the few encodings JSON needs spelled out here
//! once — label sets as objects, non-finite floats as Prometheus writes them (`"NaN"`, `"+Inf"`,
//! `"-Inf"`), and maps keyed by label sets or rule identities as lists.

use std::collections::HashMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use vigil_wire::Labels;

use crate::alerting::{Alert, RuleState};
use crate::evaluator::AlertKey;

/// A label set as a JSON object (`{"alertname":"X","instance":"i-1"}`), sorted by name.
pub mod labels {
    use super::*;

    pub fn serialize<S: Serializer>(l: &Labels, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(l.iter().map(|x| (x.name, x.value)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Labels, D::Error> {
        let m: std::collections::BTreeMap<String, String> = Deserialize::deserialize(d)?;
        Ok(Labels::from_pairs(
            m.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        ))
    }
}

/// A float: a JSON number when finite, else `"NaN"`, `"+Inf"` or `"-Inf"`.
pub mod float {
    use super::*;

    /// The one spelling of a float in Vigil's JSON.
    pub fn to_json(v: f64) -> serde_json::Value {
        if v.is_finite() {
            serde_json::json!(v)
        } else {
            serde_json::json!(crate::gofmt::shortest_g(v))
        }
    }

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        to_json(*v).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Number(n) => n
                .as_f64()
                .ok_or_else(|| D::Error::custom("a float out of range")),
            serde_json::Value::String(s) => vigil_wire::text::parse_float(&s)
                .ok_or_else(|| D::Error::custom(format!("not a float: {s:?}"))),
            other => Err(D::Error::custom(format!("not a float: {other}"))),
        }
    }
}

/// A rule's active alerts as a list (each carries its labels).
pub mod by_labels {
    use super::*;

    pub fn serialize<S: Serializer>(m: &HashMap<Labels, Alert>, s: S) -> Result<S::Ok, S::Error> {
        let mut v: Vec<&Alert> = m.values().collect();
        v.sort_by(|a, b| a.labels.cmp(&b.labels));
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<HashMap<Labels, Alert>, D::Error> {
        let v: Vec<Alert> = Deserialize::deserialize(d)?;
        Ok(v.into_iter().map(|a| (a.labels.clone(), a)).collect())
    }
}

#[derive(Serialize, Deserialize)]
struct KeyedRule {
    key: AlertKey,
    #[serde(flatten)]
    state: RuleState,
}

/// Every alert rule's state as a list of `{key, active}` (rules with no active alert left out).
pub mod alerts {
    use super::*;

    pub fn serialize<S: Serializer>(
        m: &HashMap<AlertKey, RuleState>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut v: Vec<KeyedRule> = m
            .iter()
            .filter(|(_, r)| !r.active.is_empty())
            .map(|(k, r)| KeyedRule {
                key: k.clone(),
                state: r.clone(),
            })
            .collect();
        v.sort_by(|a, b| {
            (&a.key.file, &a.key.group, &a.key.alert).cmp(&(
                &b.key.file,
                &b.key.group,
                &b.key.alert,
            ))
        });
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<HashMap<AlertKey, RuleState>, D::Error> {
        let v: Vec<KeyedRule> = Deserialize::deserialize(d)?;
        Ok(v.into_iter().map(|k| (k.key, k.state)).collect())
    }
}

/// A label set written as [`labels`] writes it, for lists and sets of them.
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
struct LabelsObj(#[serde(with = "labels")] Labels);

/// A set of label sets as a list of objects.
pub mod label_set {
    use super::*;

    pub fn serialize<S: Serializer>(
        m: &std::collections::BTreeSet<Labels>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter().map(|l| LabelsObj(l.clone())))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<std::collections::BTreeSet<Labels>, D::Error> {
        let v: Vec<LabelsObj> = Deserialize::deserialize(d)?;
        Ok(v.into_iter().map(|l| l.0).collect())
    }
}

/// A value that carries its own map key (an alert its labels, a group its receiver and labels).
pub trait Keyed {
    type Key: Ord;
    fn key(&self) -> Self::Key;
}

/// A map whose values carry their keys ([`Keyed`]) as the list of its values, in key order.
pub mod values {
    use super::*;
    use std::collections::BTreeMap;

    pub fn serialize<K, V: Serialize, S: Serializer>(
        m: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.values())
    }

    pub fn deserialize<'de, V, D>(d: D) -> Result<BTreeMap<V::Key, V>, D::Error>
    where
        V: Keyed + Deserialize<'de>,
        D: Deserializer<'de>,
    {
        let v: Vec<V> = Deserialize::deserialize(d)?;
        Ok(v.into_iter().map(|x| (x.key(), x)).collect())
    }
}
