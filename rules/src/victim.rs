//! Scale-in that chooses its victim (`scale_in_victim` on `[[scaling]]`): instead of lowering
//! the desired capacity and letting AWS pick, Vigil terminates the instances its expression
//! ranks lowest (fewest in-flight requests, say), one zone at a time as AWS balances them: each
//! victim comes from the zone with the most instances in service, and within it is the
//! lowest-ranked. An instance protected from scale-in, warming (`vigil_instance_warm == 0`) or
//! not in service is never chosen; an instance the expression does not rank comes after the
//! ranked ones of its zone.
//!
//! With the fleet described, a scale-in never removes more instances than may be chosen. On a
//! simulated group (`vigil-rules test`, `replay`, no `[aws]`) the ranked instances are the
//! candidates, placed in zones by their agents' `az` labels when they carry one, and an
//! instance the simulation has terminated is not chosen again while its recorded data goes on.

use std::collections::{BTreeMap, BTreeSet};

use crate::promql::{Engine, Query, Storage, Value};

/// Where a group's instances run, as far as a decision knows.
#[derive(Debug, Clone, Copy)]
pub enum Where<'a> {
    /// As AWS's describe says.
    Described(&'a BTreeMap<String, Placement>),
    /// Not described (no `[aws]`, a dry run, AWS unreachable): the ranked instances are the
    /// candidates, in the zones their agents' `az` labels name.
    Unknown,
    /// `vigil-rules test` and `replay`: as `Unknown`, and what the simulation terminated is not
    /// chosen again while the recorded data goes on.
    Simulated,
}

/// Where AWS says an instance of the group runs, and whether it may be terminated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub az: String,
    pub protected: bool,
    pub in_service: bool,
}

/// The expression's value by instance at `ts` (NaN ranks last).
pub fn rank(
    engine: &Engine,
    storage: &dyn Storage,
    q: &Query,
    ts: i64,
) -> Result<BTreeMap<String, f64>, String> {
    let res = engine.instant(storage, q, ts).map_err(|e| e.to_string())?;
    let Value::Vector(v) = res.value else {
        return Ok(BTreeMap::new());
    };
    let mut out = BTreeMap::new();
    for s in v {
        let Some(i) = s.labels.get("instance") else {
            return Err(format!(
                "result {} has no instance label: scale_in_victim must keep `instance`",
                s.labels
            ));
        };
        if s.h.is_some() {
            return Err(format!(
                "result {} is a native histogram: scale_in_victim must give numbers",
                s.labels
            ));
        }
        out.insert(i.to_string(), s.f);
    }
    Ok(out)
}

/// What may be terminated, and the victims of a scale-in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Candidates {
    /// Zone (`""` when the placement is unknown) → candidates, lowest-ranked first.
    zones: BTreeMap<String, Vec<(String, Option<f64>)>>,
    /// Zone → instances in service there (protected and warming ones included: balance is
    /// about where instances run).
    in_service: BTreeMap<String, u32>,
    /// Why some instances may not be chosen, for the decision's reason.
    pub excluded: Vec<String>,
    /// Whether the group's placement is known (a described group).
    pub placed: bool,
}

fn order(a: &(String, Option<f64>), b: &(String, Option<f64>)) -> std::cmp::Ordering {
    let key = |v: Option<f64>| v.filter(|v| !v.is_nan()).unwrap_or(f64::INFINITY);
    key(a.1).total_cmp(&key(b.1)).then_with(|| a.0.cmp(&b.0))
}

fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

impl Candidates {
    /// The candidates of a described group: its members by `placement`, less protected,
    /// warming and not-in-service ones.
    pub fn new(
        ranks: &BTreeMap<String, f64>,
        placement: &BTreeMap<String, Placement>,
        warming: &BTreeSet<String>,
    ) -> Candidates {
        let mut c = Candidates {
            placed: true,
            ..Candidates::default()
        };
        let (mut protected, mut warm, mut out_of_service) = (0, 0, 0);
        for (id, p) in placement {
            if !p.in_service {
                out_of_service += 1;
                continue;
            }
            *c.in_service.entry(p.az.clone()).or_default() += 1;
            if p.protected {
                protected += 1;
            } else if warming.contains(id) {
                warm += 1;
            } else {
                c.zones
                    .entry(p.az.clone())
                    .or_default()
                    .push((id.clone(), ranks.get(id).copied()));
            }
        }
        c.finish(protected, warm, out_of_service)
    }

    /// The candidates of a simulated group (`vigil-rules test`, `replay`, no `[aws]`): the
    /// ranked instances less warming ones, each in the zone its agent's `az` label names
    /// (`zones`: instance → AZ, of every instance that pushes), so that victims still come
    /// zone by zone when the data says where instances run.
    pub fn simulated(
        ranks: &BTreeMap<String, f64>,
        zones: &BTreeMap<String, String>,
        warming: &BTreeSet<String>,
    ) -> Candidates {
        let mut c = Candidates::default();
        let zone = |id: &String| zones.get(id).cloned().unwrap_or_default();
        for id in zones
            .keys()
            .chain(ranks.keys().filter(|i| !zones.contains_key(*i)))
        {
            *c.in_service.entry(zone(id)).or_default() += 1;
        }
        let mut warm = 0;
        for (id, v) in ranks {
            if warming.contains(id) {
                warm += 1;
            } else {
                c.zones
                    .entry(zone(id))
                    .or_default()
                    .push((id.clone(), Some(*v)));
            }
        }
        c.finish(0, warm, 0)
    }

    fn finish(mut self, protected: usize, warm: usize, out_of_service: usize) -> Candidates {
        for z in self.zones.values_mut() {
            z.sort_by(order);
        }
        for (n, what) in [
            (protected, "protected from scale-in"),
            (warm, "warming"),
            (out_of_service, "not in service"),
        ] {
            if n > 0 {
                self.excluded
                    .push(format!("{} {what}", plural(n, "instance")));
            }
        }
        self
    }

    /// How many instances are in service (protected and warming ones included).
    pub fn in_service(&self) -> u32 {
        self.in_service.values().sum()
    }

    /// How many instances may be terminated.
    pub fn len(&self) -> u32 {
        self.zones.values().map(|z| z.len() as u32).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `n` victims, each with why: from the zone with the most instances in service (on
    /// a tie, the zone whose candidate ranks lowest), its lowest-ranked candidate.
    pub fn choose(mut self, n: u32) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for _ in 0..n {
            let zone = self
                .zones
                .iter()
                .filter_map(|(z, c)| c.first().map(|first| (z, first)))
                .max_by(|(za, a), (zb, b)| {
                    let (na, nb) = (self.in_service.get(*za), self.in_service.get(*zb));
                    na.cmp(&nb).then_with(|| order(b, a))
                })
                .map(|(z, _)| z.clone());
            let Some(zone) = zone else { break };
            let (id, value) = self
                .zones
                .get_mut(&zone)
                .map(|c| c.remove(0))
                .unwrap_or_default();
            let count = self.in_service.get(&zone).copied().unwrap_or(0);
            let ranked = match value {
                Some(v) => format!("ranked {v} by scale_in_victim"),
                None => "not ranked by scale_in_victim".to_string(),
            };
            let why = if self.placed {
                format!(
                    "{ranked}, lowest in {zone} ({} in service there)",
                    plural(count as usize, "instance")
                )
            } else if !zone.is_empty() {
                format!(
                    "{ranked}, lowest in {zone} ({} there by the agents' az labels: simulated)",
                    plural(count as usize, "instance")
                )
            } else {
                format!("{ranked}, lowest (placement unknown: simulated)")
            };
            if let Some(c) = self.in_service.get_mut(&zone) {
                *c = c.saturating_sub(1);
            }
            out.push((id, why));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(members: &[(&str, &str, bool, bool)]) -> BTreeMap<String, Placement> {
        members
            .iter()
            .map(|(id, az, protected, in_service)| {
                (
                    id.to_string(),
                    Placement {
                        az: az.to_string(),
                        protected: *protected,
                        in_service: *in_service,
                    },
                )
            })
            .collect()
    }

    fn ranks(r: &[(&str, f64)]) -> BTreeMap<String, f64> {
        r.iter().map(|(i, v)| (i.to_string(), *v)).collect()
    }

    fn ids(v: &[(String, String)]) -> Vec<&str> {
        v.iter().map(|(i, _)| i.as_str()).collect()
    }

    #[test]
    fn takes_from_the_fullest_zone_its_lowest_ranked_instance() {
        // a: 3 instances, b: 2. The globally lowest (i-b1) is in the smaller zone: the first
        // victim still comes from a, then the zones are even and the lower candidate wins.
        let p = placed(&[
            ("i-a1", "a", false, true),
            ("i-a2", "a", false, true),
            ("i-a3", "a", false, true),
            ("i-b1", "b", false, true),
            ("i-b2", "b", false, true),
        ]);
        let r = ranks(&[
            ("i-a1", 5.0),
            ("i-a2", 2.0),
            ("i-a3", 9.0),
            ("i-b1", 1.0),
            ("i-b2", 7.0),
        ]);
        let c = Candidates::new(&r, &p, &BTreeSet::new());
        assert_eq!(c.len(), 5);
        let v = c.choose(3);
        assert_eq!(ids(&v), ["i-a2", "i-b1", "i-a1"]);
        assert!(
            v[0].1.contains(
                "ranked 2 by scale_in_victim, lowest in a (3 instances in service there)"
            ),
            "{}",
            v[0].1
        );
    }

    #[test]
    fn never_a_protected_warming_or_out_of_service_instance() {
        let p = placed(&[
            ("i-1", "a", true, true),
            ("i-2", "a", false, true),
            ("i-3", "a", false, false),
            ("i-4", "b", false, true),
        ]);
        let r = ranks(&[("i-1", 0.0), ("i-2", 1.0), ("i-3", 0.0), ("i-4", 0.5)]);
        let warming = BTreeSet::from(["i-4".to_string()]);
        let c = Candidates::new(&r, &p, &warming);
        assert_eq!(c.len(), 1);
        assert_eq!(
            c.excluded,
            [
                "1 instance protected from scale-in",
                "1 instance warming",
                "1 instance not in service"
            ]
        );
        assert_eq!(ids(&c.choose(2)), ["i-2"]);
    }

    #[test]
    fn unranked_instances_come_after_the_ranked_ones_of_their_zone() {
        let p = placed(&[
            ("i-1", "a", false, true),
            ("i-2", "a", false, true),
            ("i-3", "a", false, true),
        ]);
        let r = ranks(&[("i-2", f64::NAN), ("i-3", 4.0)]);
        let v = Candidates::new(&r, &p, &BTreeSet::new()).choose(3);
        assert_eq!(ids(&v), ["i-3", "i-1", "i-2"]);
        assert!(v[1].1.starts_with("not ranked"), "{}", v[1].1);
    }

    #[test]
    fn simulated_groups_follow_the_ranking_alone() {
        let r = ranks(&[("i-1", 3.0), ("i-2", 1.0), ("i-3", 2.0)]);
        let c = Candidates::simulated(&r, &BTreeMap::new(), &BTreeSet::from(["i-2".to_string()]));
        assert!(!c.placed);
        let v = c.choose(1);
        assert_eq!(ids(&v), ["i-3"]);
        assert!(v[0].1.contains("placement unknown"), "{}", v[0].1);
    }

    #[test]
    fn simulated_groups_balance_by_the_agents_az_labels() {
        // a: 3 instances pushing, b: 2 (one unranked). The lowest overall (i-b1) waits until
        // the zones are even.
        let zones: BTreeMap<String, String> = [
            ("i-a1", "a"),
            ("i-a2", "a"),
            ("i-a3", "a"),
            ("i-b1", "b"),
            ("i-b2", "b"),
        ]
        .iter()
        .map(|(i, z)| (i.to_string(), z.to_string()))
        .collect();
        let r = ranks(&[("i-a1", 5.0), ("i-a2", 2.0), ("i-a3", 9.0), ("i-b1", 1.0)]);
        let c = Candidates::simulated(&r, &zones, &BTreeSet::new());
        assert!(!c.placed);
        let v = c.choose(3);
        assert_eq!(ids(&v), ["i-a2", "i-b1", "i-a1"]);
        assert!(
            v[0].1.contains("ranked 2 by scale_in_victim, lowest in a (3 instances there by the agents' az labels: simulated)"),
            "{}",
            v[0].1
        );
    }
}
