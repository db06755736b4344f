//! The inverted index: for every label name and value, the ids of the series carrying that pair.
//!
//! A selection starts from the narrowest postings list its matchers allow — an equality, or a
//! regular expression that cannot match the empty string (resolved against the label's values,
//! as Prometheus does) — and checks every matcher on that list only. Lists are kept unsorted:
//! ids are reused after compaction, and keeping a hundred-thousand-entry list sorted on every
//! reuse would move it each time; selection never needs their order.

use std::collections::{HashMap, HashSet};

use vigil_rules::promql::storage::{MatchOp, Matcher};
use vigil_wire::Labels;

/// Series ids: `u32` halves the index against `usize` and a window holds far fewer series.
pub type Id = u32;

#[derive(Default)]
pub struct Index {
    postings: HashMap<Box<str>, HashMap<Box<str>, Vec<Id>>>,
}

/// Where a selection should look.
pub enum Candidates<'a> {
    /// No series can match.
    None,
    /// Every series must be checked (no matcher narrows the search).
    All,
    /// Only these lists, each a disjoint set of ids.
    Lists(Vec<&'a [Id]>),
}

impl Index {
    pub fn add(&mut self, labels: &Labels, id: Id) {
        for l in labels.iter() {
            let values = match self.postings.get_mut(l.name) {
                Some(v) => v,
                None => self.postings.entry(l.name.into()).or_default(),
            };
            match values.get_mut(l.value) {
                Some(ids) => ids.push(id),
                None => {
                    values.insert(l.value.into(), vec![id]);
                }
            }
        }
    }

    /// Removes many series at once: every list they are on is rewritten once.
    pub fn remove_all<'a>(&mut self, removed: impl IntoIterator<Item = (&'a Labels, Id)>) {
        let mut by_pair: HashMap<(&str, &str), HashSet<Id>> = HashMap::new();
        for (labels, id) in removed {
            for l in labels.iter() {
                by_pair.entry((l.name, l.value)).or_default().insert(id);
            }
        }
        for ((name, value), ids) in by_pair {
            let Some(values) = self.postings.get_mut(name) else {
                continue;
            };
            if let Some(list) = values.get_mut(value) {
                list.retain(|id| !ids.contains(id));
                if list.is_empty() {
                    values.remove(value);
                } else if list.capacity() > 2 * list.len() + 16 {
                    list.shrink_to_fit();
                }
            }
            if values.is_empty() {
                self.postings.remove(name);
            }
        }
    }

    /// The ids of series with `name="value"`.
    #[cfg(test)]
    pub fn get(&self, name: &str, value: &str) -> &[Id] {
        self.postings
            .get(name)
            .and_then(|v| v.get(value))
            .map_or(&[], |l| l.as_slice())
    }

    /// Every label name in use, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.postings.keys().map(|k| k.to_string()).collect();
        v.sort();
        v
    }

    /// Every value of `name` in use, sorted.
    pub fn values(&self, name: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .postings
            .get(name)
            .map(|vals| vals.keys().map(|k| k.to_string()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The narrowest set of lists that holds every series matching all `matchers`.
    pub fn candidates(&self, matchers: &[Matcher]) -> Candidates<'_> {
        let mut best: Option<(usize, Vec<&[Id]>)> = None;
        for m in matchers {
            // A matcher that accepts the empty string also accepts series without the label,
            // which no list holds.
            if m.is_match("") {
                continue;
            }
            let lists: Vec<&[Id]> = match &m.op {
                MatchOp::Equal => match self.postings.get(m.name.as_str()) {
                    Some(values) => values
                        .get(m.value.as_str())
                        .map(|l| vec![l.as_slice()])
                        .unwrap_or_default(),
                    None => Vec::new(),
                },
                MatchOp::Re(_) | MatchOp::NotEqual | MatchOp::NotRe(_) => {
                    match self.postings.get(m.name.as_str()) {
                        Some(values) => values
                            .iter()
                            .filter(|(v, _)| m.is_match(v))
                            .map(|(_, l)| l.as_slice())
                            .collect(),
                        None => Vec::new(),
                    }
                }
            };
            let size = lists.iter().map(|l| l.len()).sum::<usize>();
            if size == 0 {
                return Candidates::None;
            }
            if best.as_ref().is_none_or(|(s, _)| size < *s) {
                best = Some((size, lists));
            }
        }
        match best {
            Some((_, lists)) => Candidates::Lists(lists),
            None => Candidates::All,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, op: MatchOp, value: &str) -> Matcher {
        Matcher::new(op, name, value)
    }

    fn re(name: &str, value: &str) -> Matcher {
        Matcher::new_matcher(
            promql_parser::parser::token::T_EQL_REGEX,
            name.into(),
            value.into(),
        )
        .unwrap()
    }

    fn ids(c: Candidates<'_>) -> Option<Vec<Id>> {
        match c {
            Candidates::None => Some(Vec::new()),
            Candidates::All => None,
            Candidates::Lists(l) => {
                let mut v: Vec<Id> = l.into_iter().flatten().copied().collect();
                v.sort();
                Some(v)
            }
        }
    }

    fn index() -> Index {
        let mut ix = Index::default();
        let series = [
            ("up", "web", "a"),
            ("up", "web", "b"),
            ("up", "db", "c"),
            ("load1", "web", "a"),
        ];
        for (id, (name, job, inst)) in series.iter().enumerate() {
            ix.add(
                &Labels::from_pairs([("__name__", *name), ("job", *job), ("instance", *inst)]),
                id as Id,
            );
        }
        ix
    }

    #[test]
    fn narrowest_list_is_chosen() {
        let ix = index();
        // job="web" holds 3, instance="c" holds 1.
        let c = ix.candidates(&[
            m("job", MatchOp::Equal, "web"),
            m("instance", MatchOp::Equal, "c"),
        ]);
        assert_eq!(ids(c), Some(vec![2]));
        assert_eq!(
            ids(ix.candidates(&[m("__name__", MatchOp::Equal, "up")])),
            Some(vec![0, 1, 2])
        );
        // A value nobody has: nothing to check at all.
        assert_eq!(
            ids(ix.candidates(&[m("job", MatchOp::Equal, "nope")])),
            Some(vec![])
        );
    }

    #[test]
    fn regex_resolves_against_values_and_empty_matchers_do_not_narrow() {
        let ix = index();
        assert_eq!(
            ids(ix.candidates(&[re("instance", "a|c")])),
            Some(vec![0, 2, 3])
        );
        // `=~".*"` and `!="x"` also match series without the label: no list narrows them.
        assert_eq!(ids(ix.candidates(&[re("instance", ".*")])), None);
        assert_eq!(
            ids(ix.candidates(&[m("job", MatchOp::NotEqual, "web")])),
            None
        );
        // `{job=""}`: series without `job`, which no list holds.
        assert_eq!(ids(ix.candidates(&[m("job", MatchOp::Equal, "")])), None);
    }

    #[test]
    fn removal_rewrites_lists_and_drops_empty_ones() {
        let mut ix = index();
        let gone = Labels::from_pairs([("__name__", "up"), ("job", "db"), ("instance", "c")]);
        ix.remove_all([(&gone, 2)]);
        assert_eq!(ix.values("job"), vec!["web"]);
        assert_eq!(ix.get("__name__", "up"), &[0, 1]);
        assert!(ix.get("instance", "c").is_empty());
        assert_eq!(ix.names(), vec!["__name__", "instance", "job"]);
    }
}
