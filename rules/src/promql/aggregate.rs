//! Aggregation operators.

use std::collections::HashMap;

use vigil_wire::{Labels, METRIC_NAME};

use super::eval::Evaluator;
use super::mathx::{kahan_inc, quantile, AvgAcc, GoFloat};
use super::plan::{AggOp, Grouping, Node};
use super::value::{Severity, Value, VectorSample};
use super::EvalError;

struct Group {
    labels: Labels,
    drop_name: bool,
    members: Vec<usize>,
}

/// Whether a label takes part in the grouping key.
fn in_key(name: &str, g: Option<&Grouping>) -> bool {
    match g {
        None => false,
        Some(Grouping::By(names)) => names.iter().any(|n| n == name),
        Some(Grouping::Without(names)) => name != METRIC_NAME && !names.iter().any(|n| n == name),
    }
}

/// Hashes the grouping key of `l` without building it (the hot path of every aggregation).
fn key_hash(l: &Labels, g: Option<&Grouping>, buf: &mut Vec<u8>) -> u64 {
    buf.clear();
    match g {
        None => return 0,
        Some(Grouping::By(names)) => {
            for n in names {
                buf.extend_from_slice(n.as_bytes());
                buf.push(0xff);
                buf.extend_from_slice(l.get_or_empty(n).as_bytes());
                buf.push(0xff);
            }
        }
        Some(Grouping::Without(_)) => {
            for x in l.iter().filter(|x| in_key(x.name, g)) {
                buf.extend_from_slice(x.name.as_bytes());
                buf.push(0xff);
                buf.extend_from_slice(x.value.as_bytes());
                buf.push(0xff);
            }
        }
    }
    xxhash_rust::xxh3::xxh3_64(buf)
}

/// Whether `a` and `b` fall in the same group.
fn same_key(a: &Labels, b: &Labels, g: Option<&Grouping>) -> bool {
    match g {
        None => true,
        Some(Grouping::By(names)) => names.iter().all(|n| a.get_or_empty(n) == b.get_or_empty(n)),
        Some(Grouping::Without(_)) => {
            let mut ia = a.iter().filter(|x| in_key(x.name, g));
            let mut ib = b.iter().filter(|x| in_key(x.name, g));
            loop {
                match (ia.next(), ib.next()) {
                    (None, None) => return true,
                    (Some(x), Some(y)) if x == y => {}
                    _ => return false,
                }
            }
        }
    }
}

fn group_labels(l: &Labels, g: Option<&Grouping>) -> Labels {
    match g {
        None => Labels::empty(),
        Some(_) => l.filter(|x| in_key(x.name, g)),
    }
}

/// A series' grouping key, kept across the steps of a range query: the series' labels (held,
/// so their allocation cannot be reused by another set while the entry lives) and the number of
/// its group among the grouping's distinct keys ([`KeyIds`]).
pub(crate) struct CachedKey {
    _held: Labels,
    group: u32,
}

/// A range query's distinct grouping keys of one grouping, numbered in order of first
/// appearance.
#[derive(Default)]
pub(crate) struct KeyIds {
    keys: Vec<Labels>,
    by_hash: HashMap<u64, Vec<u32>>,
}

impl KeyIds {
    fn id(&mut self, labels: &Labels, g: Option<&Grouping>, buf: &mut Vec<u8>) -> u32 {
        let h = key_hash(labels, g, buf);
        let same = self.by_hash.entry(h).or_default();
        if let Some(&id) = same
            .iter()
            .find(|&&id| same_key(&self.keys[id as usize], labels, g))
        {
            return id;
        }
        let id = self.keys.len() as u32;
        same.push(id);
        self.keys.push(group_labels(labels, g));
        id
    }
}

/// Hashes the small integer keys of the range-query caches (a label allocation's address and a
/// plan node's): one multiply and a rotation per word instead of SipHash's rounds.
#[derive(Default, Clone, Copy)]
pub(crate) struct WordHasher(u64);

impl std::hash::Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(26) ^ x).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
}

pub(crate) type WordMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<WordHasher>>;

/// Groups sample indexes by their output labels, in order of first appearance.
fn groups(v: &[VectorSample], g: Option<&Grouping>) -> Vec<Group> {
    let mut index: HashMap<u64, Vec<usize>> = HashMap::new();
    let mut out: Vec<Group> = Vec::new();
    let mut buf = Vec::with_capacity(128);
    for (i, s) in v.iter().enumerate() {
        let h = key_hash(&s.labels, g, &mut buf);
        let candidates = index.entry(h).or_default();
        let found = candidates
            .iter()
            .copied()
            .find(|&gi| same_key(&v[out[gi].members[0]].labels, &s.labels, g));
        match found {
            Some(gi) => {
                out[gi].members.push(i);
                out[gi].drop_name |= s.drop_name;
            }
            None => {
                candidates.push(out.len());
                out.push(Group {
                    labels: group_labels(&s.labels, g),
                    drop_name: s.drop_name,
                    members: vec![i],
                });
            }
        }
    }
    out
}

/// [`groups`] for a range query: most input series come back at every step with the same
/// label allocation (a selector's, carried through functions), so each one's group is worked out
/// once per query, not once per step (measured: the label scans were half the range query, and
/// then comparing keys at every step a sixth).
fn groups_cached(
    cache: &mut WordMap<(usize, usize), CachedKey>,
    ids: &mut WordMap<usize, KeyIds>,
    v: &[VectorSample],
    g: Option<&Grouping>,
) -> Vec<Group> {
    let Some(grouping) = g else {
        return groups(v, g);
    };
    let gid = grouping as *const Grouping as usize;
    let ids = ids.entry(gid).or_default();
    let mut out: Vec<Group> = Vec::new();
    // This step's group of each key id, `u32::MAX` until one of its series is seen.
    let mut slot: Vec<u32> = vec![u32::MAX; ids.keys.len()];
    let mut buf = Vec::with_capacity(128);
    for (i, s) in v.iter().enumerate() {
        let key = match cache.get(&(gid, s.labels.alloc_id())) {
            Some(c) => c.group,
            None => {
                let group = ids.id(&s.labels, g, &mut buf);
                cache.insert(
                    (gid, s.labels.alloc_id()),
                    CachedKey {
                        _held: s.labels.clone(),
                        group,
                    },
                );
                group
            }
        } as usize;
        if slot.len() <= key {
            slot.resize(key + 1, u32::MAX);
        }
        match slot[key] {
            u32::MAX => {
                slot[key] = out.len() as u32;
                out.push(Group {
                    labels: ids.keys[key].clone(),
                    drop_name: s.drop_name,
                    members: vec![i],
                });
            }
            gi => {
                let grp = &mut out[gi as usize];
                grp.members.push(i);
                grp.drop_name |= s.drop_name;
            }
        }
    }
    out
}

/// Converts a `topk`/`limitk` parameter to a count as Prometheus does.
fn k_param(p: f64, what: &str) -> Result<i64, EvalError> {
    if p.is_nan() {
        return Err(EvalError::Execution(format!("{what} value is NaN")));
    }
    if p < 1.0 {
        return Ok(0);
    }
    if !(-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&p) {
        return Err(EvalError::Execution(format!(
            "Scalar value {} overflows int64",
            p.go()
        )));
    }
    Ok(p as i64)
}

impl Evaluator<'_> {
    pub(crate) fn aggregate(
        &mut self,
        op: AggOp,
        expr: &Node,
        param: Option<&Node>,
        grouping: Option<&Grouping>,
        t: i64,
    ) -> Result<Value, EvalError> {
        let param_val = match param {
            Some(p) => Some(self.eval(p, t)?),
            None => None,
        };
        // A bad label name fails before the data is looked at (as in Prometheus).
        if let (AggOp::CountValues, Some(Value::String(label))) = (op, &param_val) {
            if !vigil_wire::text::is_valid_label_name(label) {
                // Quoted as written when written in double quotes: Go quotes the bytes of a
                // `\x` escape that is not UTF-8 as the escape, which a Rust string cannot hold.
                let written = self
                    .query
                    .split_once("count_values")
                    .and_then(|(_, r)| r.trim_start().strip_prefix('('))
                    .and_then(|r| r.split_once(','))
                    .map(|(lit, _)| lit.trim())
                    .filter(|lit| lit.starts_with('"') && lit.contains("\\x"));
                return Err(EvalError::Execution(match written {
                    Some(lit) => format!("invalid label name {lit}"),
                    None => format!("invalid label name {label:?}"),
                }));
            }
        }
        let mut v = self.eval_vector(expr, t)?;
        let ignores = match op {
            AggOp::Topk => Some("topk"),
            AggOp::Bottomk => Some("bottomk"),
            AggOp::Min => Some("min"),
            AggOp::Max => Some("max"),
            AggOp::Stddev => Some("stddev"),
            AggOp::Stdvar => Some("stdvar"),
            AggOp::Quantile => Some("quantile"),
            _ => None,
        };
        if let Some(name) = ignores {
            if v.iter().any(|s| s.h.is_some()) {
                v.retain(|s| s.h.is_none());
                self.annotate(
                    Severity::Info,
                    format!("ignored histogram in {name} aggregation"),
                    None,
                );
            }
        }
        let scalar_param = || -> f64 {
            match &param_val {
                Some(Value::Scalar(x)) => *x,
                _ => f64::NAN,
            }
        };
        match op {
            AggOp::Topk | AggOp::Bottomk => {
                let k = k_param(scalar_param(), "Parameter")?;
                if v.is_empty() {
                    return Ok(Value::Vector(vec![]));
                }
                Ok(Value::Vector(top_bottom(op == AggOp::Topk, k, v, grouping)))
            }
            AggOp::Limitk => {
                let k = k_param(scalar_param(), "Parameter")?;
                let mut out = Vec::new();
                if k > 0 {
                    let gs = groups(&v, grouping);
                    let mut keep = vec![false; v.len()];
                    for g in &gs {
                        for &i in g.members.iter().take(k as usize) {
                            keep[i] = true;
                        }
                    }
                    out = v
                        .into_iter()
                        .zip(keep)
                        .filter(|(_, k)| *k)
                        .map(|(s, _)| s)
                        .collect();
                }
                Ok(Value::Vector(out))
            }
            AggOp::LimitRatio => {
                let mut r = scalar_param();
                if r.is_nan() {
                    return Err(EvalError::Execution("Ratio value is NaN".into()));
                }
                if !(-1.0..=1.0).contains(&r) {
                    // At the ratio: the first argument of the first limit_ratio.
                    let pos = self.query.find("limit_ratio").map_or(0, |i| {
                        let rest = &self.query[i + "limit_ratio".len()..];
                        let after = rest.trim_start().strip_prefix('(').unwrap_or(rest);
                        self.query.len() - after.trim_start().len()
                    });
                    self.annotate_at(
                        Severity::Warning,
                        format!(
                            "ratio value should be between -1 and 1, got {}, capping to {}",
                            r.go(),
                            r.clamp(-1.0, 1.0).go()
                        ),
                        pos,
                    );
                    r = r.clamp(-1.0, 1.0);
                }
                Ok(Value::Vector(
                    v.into_iter()
                        .filter(|s| ratio_selects(r, &s.labels))
                        .collect(),
                ))
            }
            AggOp::CountValues => {
                let label = match &param_val {
                    Some(Value::String(s)) => s.clone(),
                    _ => {
                        return Err(EvalError::Execution(
                            "count_values needs a string label name".into(),
                        ))
                    }
                };
                if !vigil_wire::text::is_valid_label_name(&label) {
                    return Err(EvalError::Execution(format!(
                        "invalid label name {label:?}"
                    )));
                }
                // The value label is always part of the key: added to `by` (and to no
                // grouping at all, which is `by ()`), and set before `without` drops what it
                // names, so `without (<it>)` alone drops it (as Prometheus does).
                let grouping = match grouping {
                    None => Grouping::By(vec![label.clone()]),
                    Some(Grouping::By(names)) => {
                        let mut names = names.clone();
                        if !names.contains(&label) {
                            names.push(label.clone());
                        }
                        Grouping::By(names)
                    }
                    Some(without) => without.clone(),
                };
                let mut index: HashMap<Labels, usize> = HashMap::new();
                let mut out: Vec<VectorSample> = Vec::new();
                for s in &v {
                    let mut b = s.labels.to_builder();
                    b.set(
                        label.clone(),
                        match &s.h {
                            Some(h) => h.go_string(crate::gofmt::shortest_g),
                            None => s.f.go(),
                        },
                    );
                    let key = group_labels(&b.build(), Some(&grouping));
                    match index.get(&key) {
                        Some(&i) => out[i].f += 1.0,
                        None => {
                            index.insert(key.clone(), out.len());
                            out.push(VectorSample {
                                labels: key,
                                t,
                                f: 1.0,
                                h: None,
                                drop_name: false,
                            });
                        }
                    }
                }
                Ok(Value::Vector(out))
            }
            _ => {
                let q = scalar_param();
                if op == AggOp::Quantile && !(0.0..=1.0).contains(&q) {
                    self.annotate(
                        Severity::Warning,
                        format!("quantile value should be between 0 and 1, got {}", q.go()),
                        Some("quantile"),
                    );
                }
                let gs = if self.step > 0 {
                    groups_cached(&mut self.group_keys, &mut self.group_ids, &v, grouping)
                } else {
                    groups(&v, grouping)
                };
                let mut out = Vec::with_capacity(gs.len());
                for g in gs {
                    if matches!(op, AggOp::Sum | AggOp::Avg)
                        && g.members.iter().any(|&i| v[i].h.is_some())
                    {
                        if let Some(h) = self.sum_histograms(op, &g.members, &v) {
                            out.push(VectorSample {
                                labels: g.labels,
                                t,
                                f: 0.0,
                                h: Some(std::sync::Arc::new(h)),
                                drop_name: g.drop_name,
                            });
                        }
                        continue;
                    }
                    let vals = g.members.iter().map(|&i| v[i].f);
                    let f = match op {
                        AggOp::Sum => {
                            let (mut s, mut c) = (0.0, 0.0);
                            for x in vals {
                                (s, c) = kahan_inc(x, s, c);
                            }
                            s + c
                        }
                        AggOp::Avg => {
                            let mut acc = AvgAcc::default();
                            for x in vals {
                                acc.add(x);
                            }
                            acc.value()
                        }
                        AggOp::Count => g.members.len() as f64,
                        AggOp::Group => 1.0,
                        AggOp::Min | AggOp::Max => {
                            let mut it = vals;
                            let mut acc = it.next().unwrap_or(f64::NAN);
                            for x in it {
                                let better = if op == AggOp::Max { acc < x } else { acc > x };
                                if better || acc.is_nan() {
                                    acc = x;
                                }
                            }
                            acc
                        }
                        AggOp::Stddev | AggOp::Stdvar => {
                            let (mut n, mut mean, mut m2) = (0.0, 0.0, 0.0);
                            for x in vals {
                                n += 1.0;
                                let delta = x - mean;
                                mean += delta / n;
                                m2 += delta * (x - mean);
                            }
                            let var = m2 / n;
                            if op == AggOp::Stddev {
                                var.sqrt()
                            } else {
                                var
                            }
                        }
                        AggOp::Quantile => {
                            let mut xs: Vec<f64> = vals.collect();
                            quantile(q, &mut xs)
                        }
                        _ => unreachable!("handled above"),
                    };
                    out.push(VectorSample {
                        labels: g.labels,
                        t,
                        f,
                        h: None,
                        drop_name: g.drop_name,
                    });
                }
                Ok(Value::Vector(out))
            }
        }
    }
}

impl Evaluator<'_> {
    /// `sum` or `avg` of a group holding histograms: `None` (with Prometheus's warning) when it
    /// also holds floats or mixes exponential and custom buckets.
    fn sum_histograms(
        &mut self,
        op: AggOp,
        members: &[usize],
        v: &[VectorSample],
    ) -> Option<vigil_wire::histogram::FloatHistogram> {
        if members.iter().any(|&i| v[i].h.is_none()) {
            self.annotate(
                Severity::Warning,
                "encountered a mix of histograms and floats for aggregation".into(),
                None,
            );
            return None;
        }
        let hs = members.iter().filter_map(|&i| v[i].h.as_deref());
        match super::hist::sum_histograms(hs) {
            Err(k) => {
                let name = super::eval::metric_name(&v[members[k]].labels).to_string();
                self.annotate(
                    Severity::Warning,
                    format!("vector contains a mix of histograms with exponential and custom buckets schemas for metric name \"{name}\""),
                    None,
                );
                None
            }
            Ok(None) => None,
            Ok(Some(sum)) => {
                if sum.reconciled {
                    self.annotate(
                        Severity::Info,
                        "mismatched custom buckets were reconciled during aggregation".into(),
                        None,
                    );
                }
                if sum.collision {
                    self.annotate(
                        Severity::Warning,
                        "conflicting counter resets during histogram aggregation".into(),
                        None,
                    );
                }
                let mut h = if op == AggOp::Avg {
                    sum.h.divided(members.len() as f64)
                } else {
                    sum.h
                };
                h.compact(0);
                Some(h)
            }
        }
    }
}

fn top_bottom(
    top: bool,
    k: i64,
    v: Vec<VectorSample>,
    grouping: Option<&Grouping>,
) -> Vec<VectorSample> {
    if k < 1 {
        return Vec::new();
    }
    let gs = groups(&v, grouping);
    // `a` ranks before `b`: higher for topk, lower for bottomk; NaN always last.
    let before = |a: f64, b: f64| -> bool {
        if a.is_nan() {
            return false;
        }
        if b.is_nan() {
            return true;
        }
        if top {
            a > b
        } else {
            a < b
        }
    };
    let mut out = Vec::new();
    for g in gs {
        let mut idx = g.members.clone();
        idx.sort_by(|&a, &b| {
            if before(v[a].f, v[b].f) {
                std::cmp::Ordering::Less
            } else if before(v[b].f, v[a].f) {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        });
        idx.truncate(k.min(idx.len() as i64) as usize);
        out.extend(idx.into_iter().map(|i| v[i].clone()));
    }
    out
}

/// `limit_ratio`'s deterministic choice: a series is kept when its label hash, mapped to [0, 1),
/// is below `r` (or, for a negative `r`, at or above `1 + r`), as Prometheus's ratio sampler does.
fn ratio_selects(r: f64, l: &Labels) -> bool {
    // Prometheus's default (stringlabels) hash: each string length-prefixed, one byte below 255,
    // else 0xff and three little-endian bytes.
    let mut buf = Vec::with_capacity(64);
    let mut put = |s: &str| {
        let n = s.len();
        if n < 255 {
            buf.push(n as u8);
        } else {
            buf.push(0xff);
            buf.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
        }
        buf.extend_from_slice(s.as_bytes());
    };
    for x in l {
        put(x.name);
        put(x.value);
    }
    let h = xxhash_rust::xxh64::xxh64(&buf, 0);
    let offset = h as f64 / u64::MAX as f64;
    (r >= 0.0 && offset < r) || (r < 0.0 && offset >= 1.0 + r)
}
