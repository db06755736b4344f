//! Instance warmup (`instance_warmup` on `[[scaling]]`): Vigil publishes
//! `vigil_instance_warm{instance, asg}`, 1 once an instance is older than its group's warmup (by
//! the agent's `node_boot_time_seconds`, else its first push Vigil saw) and 0 before. Policies
//! keep warming instances out of their metric with `and on (instance) vigil_instance_warm == 1`;
//! the decision then counts from the warm instances only, so capacity still warming is not asked
//! for twice (as AWS target tracking does), and no scale-in starts while any instance warms.
//!
//! `vigil-rules test` reads `vigil_instance_warm` from its input series as given; the aggregator
//! and `replay` publish it.

use std::collections::{BTreeMap, BTreeSet};

use vigil_wire::{Labels, Sample, STALE_NAN};

use crate::evaluator::{Observations, Observed, RuleSet, RuleStorage};
use crate::promql::{Engine, Storage, Value};

pub const METRIC: &str = "vigil_instance_warm";

/// What publishing reads: each instance's boot time, and the instances that push.
pub const BOOT_TIMES: &str = "max by (instance) (node_boot_time_seconds)";
pub const PRESENT: &str = r#"group by (instance, asg) ({__name__=~"node_boot_time_seconds|vigil_health_up|up", instance!=""})"#;

/// Whether any policy of `rules` has an `instance_warmup` (publishing is then on).
pub fn any(rules: &RuleSet) -> bool {
    !warmups(rules).is_empty()
}

/// How long an instance Vigil no longer sees is remembered (a brief gap in its pushes must not
/// make it cold again).
const FORGET_MS: i64 = 15 * 60_000;

/// When Vigil first and last saw an instance push.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Seen {
    pub first: i64,
    pub last: i64,
}

/// The warmup state between evaluations.
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Warmup {
    pub seen: BTreeMap<String, Seen>,
    /// The series written at the last evaluation, to mark the vanished ones stale.
    #[cfg_attr(feature = "serde", serde(skip))]
    written: BTreeSet<Labels>,
}

/// The query's samples; `None` when it failed (a remote engine down): nothing is known then,
/// which is not "no instance".
fn vector(
    engine: &Engine,
    storage: &dyn Storage,
    expr: &str,
    ts: i64,
) -> Option<Vec<(Labels, f64)>> {
    let q = crate::promql::parse(expr).ok()?;
    match engine.instant(storage, &q, ts).map(|r| r.value) {
        Ok(Value::Vector(v)) => Some(v.into_iter().map(|s| (s.labels, s.f)).collect()),
        Ok(_) => Some(Vec::new()),
        Err(_) => None,
    }
}

/// Each group's warmup: the longest of its policies'.
fn warmups(rules: &RuleSet) -> BTreeMap<&str, i64> {
    let mut m: BTreeMap<&str, i64> = BTreeMap::new();
    for p in rules.scaling() {
        if let Some(w) = p.controls.instance_warmup_ms {
            let e = m.entry(p.asg.as_str()).or_insert(0);
            *e = (*e).max(w);
        }
    }
    m
}

/// Publishes `vigil_instance_warm` at `ts` for every instance that pushes, when any policy has
/// an `instance_warmup`. Returns how many instances it wrote.
pub fn publish(
    engine: &Engine,
    storage: &mut dyn RuleStorage,
    rules: &RuleSet,
    fleet: &Observations,
    st: &mut Warmup,
    ts: i64,
) -> usize {
    let warmups = warmups(rules);
    if warmups.is_empty() {
        return 0;
    }
    let longest = warmups.values().copied().max().unwrap_or(0);
    // The group of each fleet member, for instances whose series carry no `asg`.
    let mut member_of: BTreeMap<&str, &str> = BTreeMap::new();
    for (asg, g) in &fleet.groups {
        if let Observed::Live { members, .. } = g {
            for m in members.keys() {
                member_of.insert(m.as_str(), asg.as_str());
            }
        }
    }
    // A failed read publishes nothing and keeps what is known (no instance turns cold or stale).
    let (Some(boot), Some(present)) = (
        vector(engine, &*storage, BOOT_TIMES, ts),
        vector(engine, &*storage, PRESENT, ts),
    ) else {
        return 0;
    };
    let boot: BTreeMap<String, f64> = boot
        .into_iter()
        .filter_map(|(l, v)| Some((l.get("instance")?.to_string(), v)))
        .collect();
    let mut now: BTreeMap<String, Option<String>> = BTreeMap::new();
    for (l, _) in present {
        let Some(i) = l.get("instance") else { continue };
        let asg = l
            .get("asg")
            .or_else(|| member_of.get(i).copied())
            .map(str::to_string);
        let e = now.entry(i.to_string()).or_default();
        if e.is_none() {
            *e = asg;
        }
    }
    let mut written = BTreeSet::new();
    for (instance, asg) in &now {
        let seen = st.seen.entry(instance.clone()).or_insert(Seen {
            first: ts,
            last: ts,
        });
        seen.last = ts;
        let warmup = match asg.as_deref() {
            Some(a) => warmups.get(a).copied().unwrap_or(0),
            None => longest,
        };
        let since = boot
            .get(instance)
            .filter(|b| b.is_finite() && **b > 0.0)
            .map_or(seen.first, |b| (b * 1000.0) as i64);
        let warm = ts.saturating_sub(since) >= warmup;
        let mut pairs = vec![("__name__", METRIC), ("instance", instance.as_str())];
        if let Some(a) = asg {
            pairs.push(("asg", a.as_str()));
        }
        let labels = Labels::from_pairs(pairs);
        storage.append(
            labels.clone(),
            Sample::new(ts, if warm { 1.0 } else { 0.0 }),
        );
        written.insert(labels);
    }
    for gone in st.written.difference(&written) {
        storage.append(gone.clone(), Sample::new(ts, STALE_NAN));
    }
    st.written = written;
    st.seen.retain(|_, s| ts.saturating_sub(s.last) < FORGET_MS);
    now.len()
}

/// The instances of `asg` at `ts` by `vigil_instance_warm`: those warming (0), and how many
/// are warm (1); an error when the store could not answer (nothing is known then: not "none
/// warming").
pub fn warming(
    engine: &Engine,
    storage: &dyn Storage,
    asg: &str,
    ts: i64,
) -> Result<(BTreeSet<String>, u32), String> {
    let q = crate::promql::parse(METRIC).map_err(|e| e.to_string())?;
    let v = match engine
        .instant(storage, &q, ts)
        .map_err(|e| e.to_string())?
        .value
    {
        Value::Vector(v) => v,
        _ => Vec::new(),
    };
    let (mut cold, mut warm) = (BTreeSet::new(), 0);
    for s in v.iter().filter(|s| s.labels.get("asg") == Some(asg)) {
        match s.labels.get("instance") {
            Some(i) if s.f == 0.0 => {
                cold.insert(i.to_string());
            }
            Some(_) if s.f == 1.0 => warm += 1,
            _ => {}
        }
    }
    Ok((cold, warm))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluator::Eligibility;
    use crate::promql::MemStorage;

    fn series(name: &str, instance: &str, asg: Option<&str>) -> Labels {
        let mut p = vec![("__name__", name), ("instance", instance)];
        if let Some(a) = asg {
            p.push(("asg", a));
        }
        Labels::from_pairs(p)
    }

    #[test]
    fn warm_by_boot_time_else_by_first_push_and_stale_once_gone() {
        let text = "[[scaling]]\nname = \"a\"\nasg = \"web\"\nmin = 1\nmax = 4\nexpr = '1'\ntarget = 1\ninstance_warmup = \"3m\"\n";
        let f = crate::rulefile::load("r.toml", text, &Default::default()).expect("valid");
        let rules = RuleSet {
            files: vec![f],
            default_interval_ms: 10_000,
        };
        let engine = Engine::default();
        let mut s = MemStorage::new();
        let t0: i64 = 1_800_000_000_000;
        // i-1 booted ten minutes ago and says its group; i-2 only probes its health, and the
        // fleet says it belongs to web.
        let boot = (t0 / 1000 - 600) as f64;
        s.add(
            series("node_boot_time_seconds", "i-1", Some("web")),
            Sample::new(t0, boot),
        );
        s.add(series("vigil_health_up", "i-2", None), Sample::new(t0, 1.0));
        let mut fleet = Observations::default();
        fleet.groups.insert(
            "web".into(),
            Observed::Live {
                capacity: 2,
                members: [("i-2".to_string(), Eligibility::Eligible)].into(),
            },
        );
        let mut st = Warmup::default();
        let warm = |s: &MemStorage, t: i64| -> Vec<(String, String, f64)> {
            vector(&engine, s, METRIC, t)
                .unwrap()
                .into_iter()
                .map(|(l, v)| {
                    (
                        l.get("instance").unwrap_or("").to_string(),
                        l.get("asg").unwrap_or("").to_string(),
                        v,
                    )
                })
                .collect()
        };
        assert_eq!(publish(&engine, &mut s, &rules, &fleet, &mut st, t0), 2);
        assert_eq!(
            warm(&s, t0),
            [
                ("i-1".to_string(), "web".to_string(), 1.0),
                ("i-2".to_string(), "web".to_string(), 0.0)
            ]
        );
        let (cold, warm_count) = warming(&engine, &s, "web", t0).unwrap();
        assert_eq!((cold.len(), warm_count), (1, 1));
        // Three minutes after its first push, i-2 is warm.
        let t1 = t0 + 180_000;
        s.add(
            series("node_boot_time_seconds", "i-1", Some("web")),
            Sample::new(t1, boot),
        );
        s.add(series("vigil_health_up", "i-2", None), Sample::new(t1, 1.0));
        publish(&engine, &mut s, &rules, &fleet, &mut st, t1 - 10_000);
        assert_eq!(warming(&engine, &s, "web", t1 - 10_000).unwrap().0.len(), 1);
        publish(&engine, &mut s, &rules, &fleet, &mut st, t1);
        assert_eq!(
            warming(&engine, &s, "web", t1).unwrap(),
            (Default::default(), 2)
        );
        // i-2 goes away: its series is marked stale, not left to linger.
        let t2 = t1 + 10_000;
        s.add(
            series("vigil_health_up", "i-2", None),
            Sample::new(t2, STALE_NAN),
        );
        s.add(
            series("node_boot_time_seconds", "i-1", Some("web")),
            Sample::new(t2, boot),
        );
        assert_eq!(publish(&engine, &mut s, &rules, &fleet, &mut st, t2), 1);
        assert_eq!(warm(&s, t2).len(), 1, "{:?}", warm(&s, t2));
        // No policy with a warmup: nothing published.
        let plain = RuleSet {
            files: vec![crate::rulefile::load(
                "r.toml",
                &text.replace("instance_warmup = \"3m\"\n", ""),
                &Default::default(),
            )
            .expect("valid")],
            default_interval_ms: 10_000,
        };
        assert_eq!(
            publish(&engine, &mut s, &plain, &fleet, &mut Warmup::default(), t2),
            0
        );
    }

    /// A store that cannot answer (a remote engine down) and records what is written.
    struct Down(Vec<(Labels, Sample)>);

    impl Storage for Down {
        fn select(
            &self,
            _: &[crate::promql::storage::Matcher],
            _: i64,
            _: i64,
        ) -> Result<Vec<crate::promql::SeriesData>, crate::promql::StorageError> {
            Err(crate::promql::StorageError("engine down".into()))
        }
    }

    impl RuleStorage for Down {
        fn append(&mut self, labels: Labels, sample: Sample) {
            self.0.push((labels, sample));
        }
        fn append_histogram(&mut self, _: Labels, _: vigil_wire::histogram::HSample) {}
    }

    #[test]
    fn a_failed_read_publishes_nothing_and_forgets_nothing() {
        let rules = RuleSet {
            files: crate::rulefile::load_all(
                &[(
                    "w.toml".into(),
                    "[[scaling]]\nname = \"p\"\nasg = \"web\"\nmin = 1\nmax = 4\nexpr = 'm'\ntarget = 1\ninstance_warmup = \"2m\"\n".into(),
                )],
                &crate::rulefile::Context::default(),
            )
            .unwrap(),
            default_interval_ms: 10_000,
        };
        let engine = Engine::new(crate::promql::EngineOpts::default());
        let mut st = Warmup::default();
        let mut s = MemStorage::new();
        s.add(series("up", "i-1", Some("web")), Sample::new(0, 1.0));
        assert_eq!(
            publish(&engine, &mut s, &rules, Observations::none(), &mut st, 0),
            1
        );
        let before = (st.seen.clone(), st.written.clone());
        let mut down = Down(Vec::new());
        assert_eq!(
            publish(
                &engine,
                &mut down,
                &rules,
                Observations::none(),
                &mut st,
                60_000
            ),
            0
        );
        assert!(down.0.is_empty(), "wrote {:?}", down.0);
        assert_eq!((st.seen.clone(), st.written.clone()), before);
        // Which instances warm is unknown, not "none" (the scaling decision then holds scale-in).
        assert!(warming(&engine, &down, "web", 60_000).is_err());
    }
}
