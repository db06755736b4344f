//! Routing, inhibition and time intervals with Alertmanager's meaning (`[[notify.route]]`,
//! `[[notify.inhibit]]`, `[[notify.time_interval]]`). Pure: the config reads them
//! (`config/notify.rs`), the notifier applies them (`notify/group.rs`); their tests are in
//! `notify/routing_tests.rs`.
//!
//! - **Routes** form a tree under the root (`[notify]`: its `receivers`, every receiver when
//!   none are given, and its `group_by`). An alert enters every child whose matchers all match,
//!   in order, and stops at the first unless that child has `continue = true`; where no child of
//!   a matching route matches, the route itself takes the alert. A route inherits its parent's
//!   `receivers` and `group_by` when it gives none; time intervals are not inherited (as in
//!   Alertmanager). A rule's `receivers` is a route of its own, taken first: its alerts go to
//!   those receivers only.
//! - **Inhibition**: an alert matching a rule's `target_matchers` sends nothing while another
//!   firing alert matches its `source_matchers` and has the same values (missing counts as
//!   empty) for every label in `equal`; an alert never inhibits itself, and two alerts that
//!   each match both sides do not inhibit each other.
//! - **Time intervals**: a route's groups send nothing while one of its
//!   `mute_time_intervals` holds, or while none of its `active_time_intervals` does; what they
//!   hold back goes out at the first flush after.

use std::collections::{BTreeMap, HashMap};

use vigil_wire::Labels;

use crate::matcher::{matches_all, Matcher};

/// One `[[notify.route]]`, with its children.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Route {
    pub matchers: Vec<Matcher>,
    /// Empty: the parent's.
    pub receivers: Vec<String>,
    pub continue_matching: bool,
    /// None: the parent's.
    pub group_by: Option<Vec<String>>,
    pub mute_time_intervals: Vec<String>,
    pub active_time_intervals: Vec<String>,
    pub routes: Vec<Route>,
}

/// One `[[notify.inhibit]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Inhibit {
    pub source: Vec<Matcher>,
    pub target: Vec<Matcher>,
    pub equal: Vec<String>,
}

/// An inclusive range of one calendar field.
pub type Span = (i32, i32);

/// One `[[notify.time_interval]]` entry: it holds when every field it gives holds (each field:
/// any of its ranges), in its location. Several entries under one name: any of them.
#[derive(Debug, Clone)]
pub struct TimeInterval {
    /// Minutes of the day, `[start, end)`.
    pub times: Vec<(u32, u32)>,
    /// 0 = Sunday.
    pub weekdays: Vec<Span>,
    /// 1-based; negative counts from the month's end (-1 is its last day).
    pub days_of_month: Vec<Span>,
    /// 1 = January.
    pub months: Vec<Span>,
    pub years: Vec<Span>,
    pub location: jiff::tz::TimeZone,
    pub location_name: String,
}

impl PartialEq for TimeInterval {
    fn eq(&self, o: &TimeInterval) -> bool {
        self.times == o.times
            && self.weekdays == o.weekdays
            && self.days_of_month == o.days_of_month
            && self.months == o.months
            && self.years == o.years
            && self.location_name == o.location_name
    }
}

fn within(spans: &[Span], v: i32) -> bool {
    spans.is_empty() || spans.iter().any(|(a, b)| (*a..=*b).contains(&v))
}

impl TimeInterval {
    /// Whether `at_ms` falls in it.
    pub fn contains(&self, at_ms: i64) -> bool {
        let Ok(ts) = jiff::Timestamp::from_millisecond(at_ms) else {
            return false;
        };
        let z = ts.to_zoned(self.location.clone());
        let minute = u32::from(z.hour().unsigned_abs()) * 60 + u32::from(z.minute().unsigned_abs());
        let last = i32::from(z.days_in_month());
        let day = i32::from(z.day());
        let dom = self.days_of_month.is_empty()
            || self.days_of_month.iter().any(|(a, b)| {
                let abs = |d: i32| if d < 0 { last + d + 1 } else { d };
                (abs(*a)..=abs(*b)).contains(&day)
            });
        (self.times.is_empty() || self.times.iter().any(|(s, e)| (*s..*e).contains(&minute)))
            && within(
                &self.weekdays,
                i32::from(z.weekday().to_sunday_zero_offset()),
            )
            && dom
            && within(&self.months, i32::from(z.month()))
            && within(&self.years, i32::from(z.year()))
    }
}

/// Where the routes send an alert: its receivers, grouped by `group_by`, sent only when the
/// time intervals allow.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub receivers: Vec<String>,
    pub group_by: Vec<String>,
    pub mute: Vec<String>,
    pub active: Vec<String>,
}

/// The routing tree, the inhibition rules and the named time intervals.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Routing {
    /// The root's receivers (`[notify] receivers`); empty: every receiver.
    pub receivers: Vec<String>,
    pub routes: Vec<Route>,
    pub inhibit: Vec<Inhibit>,
    pub intervals: BTreeMap<String, Vec<TimeInterval>>,
}

impl Routing {
    /// The targets of an alert with `labels`, raised by a rule naming `rule_receivers`; the
    /// root groups by `group_by`, and `all` are every receiver's names.
    pub fn targets(
        &self,
        labels: &Labels,
        rule_receivers: &[String],
        group_by: &[String],
        all: &[String],
    ) -> Vec<Target> {
        let root = Target {
            receivers: if !rule_receivers.is_empty() {
                rule_receivers.to_vec()
            } else if !self.receivers.is_empty() {
                self.receivers.clone()
            } else {
                all.to_vec()
            },
            group_by: group_by.to_vec(),
            mute: Vec::new(),
            active: Vec::new(),
        };
        if !rule_receivers.is_empty() {
            return vec![root];
        }
        let mut out = Vec::new();
        if !walk(&self.routes, labels, &root, &mut out) {
            out.push(root);
        }
        out
    }

    /// The firing alerts (of `firing`) that inhibit the alert with `target` labels (one
    /// question; the notifier asks an [`Inhibitor`] many).
    #[cfg(test)]
    pub fn inhibited_by<'a>(
        &self,
        target: &Labels,
        firing: impl IntoIterator<Item = &'a Labels>,
    ) -> Vec<&'a Labels> {
        self.inhibitor(firing).inhibited_by(target)
    }

    /// The inhibition sources among `firing`, indexed by each rule's `equal` values: asking it
    /// about every alert costs one lookup per rule, not a pass over every firing alert.
    pub fn inhibitor<'a>(&self, firing: impl IntoIterator<Item = &'a Labels>) -> Inhibitor<'_, 'a> {
        let mut sources: Vec<HashMap<Vec<&'a str>, Vec<&'a Labels>>> =
            vec![HashMap::new(); self.inhibit.len()];
        for s in firing {
            for (r, index) in self.inhibit.iter().zip(sources.iter_mut()) {
                if matches_all(&r.source, s) {
                    index.entry(equal_values(&r.equal, s)).or_default().push(s);
                }
            }
        }
        Inhibitor {
            rules: &self.inhibit,
            sources,
        }
    }

    /// The time intervals that keep a route's groups from sending at `now`: the mute ones that
    /// hold, or every active one when none holds (Alertmanager's `mutedBy`).
    pub fn muted_by(&self, mute: &[String], active: &[String], now: i64) -> Vec<String> {
        let holds = |name: &String| {
            self.intervals
                .get(name)
                .is_some_and(|v| v.iter().any(|t| t.contains(now)))
        };
        let mut by: Vec<String> = mute.iter().filter(|n| holds(n)).cloned().collect();
        if !active.is_empty() && !active.iter().any(holds) {
            by.extend(active.iter().cloned());
        }
        by
    }

    /// Why a route's groups may not send at `now` (a mute interval holds, or no active one
    /// does), if so.
    pub fn time_muted(&self, mute: &[String], active: &[String], now: i64) -> Option<String> {
        let holds = |name: &String| {
            self.intervals
                .get(name)
                .is_some_and(|v| v.iter().any(|t| t.contains(now)))
        };
        if let Some(m) = mute.iter().find(|n| holds(n)) {
            return Some(format!("in mute time interval {m}"));
        }
        if !active.is_empty() && !active.iter().any(holds) {
            return Some(format!(
                "outside active time intervals {}",
                active.join(", ")
            ));
        }
        None
    }
}

/// The values of the `equal` labels (missing: empty).
fn equal_values<'a>(equal: &[String], l: &'a Labels) -> Vec<&'a str> {
    equal.iter().map(|n| l.get(n).unwrap_or("")).collect()
}

/// Inhibition over one set of firing alerts ([`Routing::inhibitor`]).
pub struct Inhibitor<'r, 'a> {
    rules: &'r [Inhibit],
    /// Per rule: `equal` values → the firing alerts matching its source side.
    sources: Vec<HashMap<Vec<&'a str>, Vec<&'a Labels>>>,
}

impl<'a> Inhibitor<'_, 'a> {
    /// The firing alerts that inhibit the alert with `target` labels: a source of a rule whose
    /// target side it matches, with the same `equal` values, never itself; when it matches the
    /// source side too, a source that also matches the target side does not count (as
    /// Alertmanager: two such alerts would mute each other).
    pub fn inhibited_by(&self, target: &Labels) -> Vec<&'a Labels> {
        let mut out: Vec<&'a Labels> = Vec::new();
        for (r, index) in self.rules.iter().zip(&self.sources) {
            if !matches_all(&r.target, target) {
                continue;
            }
            let two_sided = matches_all(&r.source, target);
            let Some(found) = index.get(&equal_values(&r.equal, target)) else {
                continue;
            };
            for s in found {
                if *s != target && !(two_sided && matches_all(&r.target, s)) && !out.contains(s) {
                    out.push(s);
                }
            }
        }
        out
    }
}

/// Routes `labels` through `routes` (the children of a route that matched, whose settings are
/// `parent`); returns whether any child matched.
fn walk(routes: &[Route], labels: &Labels, parent: &Target, out: &mut Vec<Target>) -> bool {
    let mut any = false;
    for r in routes {
        if !matches_all(&r.matchers, labels) {
            continue;
        }
        any = true;
        let here = Target {
            receivers: if r.receivers.is_empty() {
                parent.receivers.clone()
            } else {
                r.receivers.clone()
            },
            group_by: r
                .group_by
                .clone()
                .unwrap_or_else(|| parent.group_by.clone()),
            mute: r.mute_time_intervals.clone(),
            active: r.active_time_intervals.clone(),
        };
        if !walk(&r.routes, labels, &here, out) {
            out.push(here);
        }
        if !r.continue_matching {
            break;
        }
    }
    any
}
