//! Scaling controls on a `[[scaling]]` policy (SPEC "Scaling controls"): velocity limits
//! (`max_scale_out`, `max_scale_in`), guards (`hold_out_when`, `hold_in_when`) and the no-data
//! fallback (`on_no_data`, `no_data_for`). Read here; applied by [`crate::scaling::decide`].

use crate::promql::plan::ValueType;
use crate::promql::Query;
use crate::tomlread::{Doc, Obj};

/// At most the larger of `instances` and `percent` of the capacity at the period's start, per
/// period (HPA behavior policies with `selectPolicy: Max`).
#[derive(Debug, Clone, PartialEq)]
pub struct Velocity {
    pub instances: Option<u32>,
    pub percent: Option<f64>,
    pub period_ms: i64,
}

/// What a policy recommends once its expression has returned nothing for `no_data_for`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NoData {
    /// Keep the capacity (and never scale in): the default.
    #[default]
    Hold,
    /// Go to this capacity (KEDA's fallback).
    Capacity(u32),
}

#[derive(Debug, Clone, Default)]
pub struct Controls {
    pub max_scale_out: Option<Velocity>,
    pub max_scale_in: Option<Velocity>,
    /// No scale-out while this returns a sample.
    pub hold_out_when: Option<Query>,
    /// No scale-in while this returns a sample.
    pub hold_in_when: Option<Query>,
    pub on_no_data: NoData,
    pub no_data_for_ms: i64,
    /// How long a new instance warms: see `crate::warmup`.
    pub instance_warmup_ms: Option<i64>,
    /// Ranks the instances a scale-in terminates, lowest first: see `crate::victim`.
    pub scale_in_victim: Option<Query>,
}

/// The default `no_data_for`.
pub const NO_DATA_FOR_MS: i64 = 120_000;

/// Reads the controls of one `[[scaling]]` table; `bounds` are its `[min, max]` when valid.
/// Returns `None` after reporting a problem.
pub fn read(
    doc: &mut Doc<'_>,
    s: &mut Obj<'_, '_>,
    bounds: Option<(u32, u32)>,
) -> Option<Controls> {
    let path = s.path.clone();
    let mut ok = true;
    let mut velocity = |doc: &mut Doc<'_>, s: &mut Obj<'_, '_>, key: &str| {
        let mut o = s.table(doc, key)?;
        let vpath = o.path.clone();
        let instances = o.int(doc, "instances");
        let percent = o.float(doc, "percent");
        let period = o.duration(doc, "period");
        let mut good = true;
        if !o.has("period") {
            doc.error_at(
                o.span().start,
                format!("{vpath}.period: missing required key"),
            );
            good = false;
        }
        if !o.has("instances") && !o.has("percent") {
            doc.error_at(
                o.span().start,
                format!("{vpath}: give instances, percent or both (the larger change wins)"),
            );
            good = false;
        }
        if let Some(i) = &instances {
            if i.value < 1 || i.value > i64::from(u32::MAX) {
                doc.error_at(
                    i.span.start,
                    format!("{vpath}.instances: must be at least 1"),
                );
                good = false;
            }
        }
        if let Some(p) = &percent {
            if !(p.value > 0.0 && p.value.is_finite()) {
                doc.error_at(
                    p.span.start,
                    format!("{vpath}.percent: must be a positive number"),
                );
                good = false;
            }
        }
        if let Some(p) = &period {
            if p.value <= 0 {
                doc.error_at(
                    p.span.start,
                    format!("{vpath}.period: must be greater than zero"),
                );
                good = false;
            }
        }
        o.finish(doc);
        if !good || period.is_none() {
            ok = false;
            return None;
        }
        Some(Velocity {
            instances: instances.and_then(|i| u32::try_from(i.value).ok()),
            percent: percent.map(|p| p.value),
            period_ms: period.map_or(0, |p| p.value),
        })
    };
    let max_scale_out = velocity(doc, s, "max_scale_out");
    let max_scale_in = velocity(doc, s, "max_scale_in");
    let mut guard = |doc: &mut Doc<'_>, s: &mut Obj<'_, '_>, key: &str, what: &str| {
        let e = s.str(doc, key)?;
        let q = crate::rulefile::parse_expr(
            doc,
            &e,
            &format!("{path}.{key}"),
            &[ValueType::Vector],
            what,
        );
        if q.is_none() {
            ok = false;
        }
        q
    };
    let hold_out_when = guard(doc, s, "hold_out_when", "a guard's");
    let hold_in_when = guard(doc, s, "hold_in_when", "a guard's");
    let scale_in_victim = guard(doc, s, "scale_in_victim", "the victim ranking's");
    let on_no_data = if !s.has("on_no_data") {
        NoData::Hold
    } else if s.is_str("on_no_data") {
        match s.str(doc, "on_no_data") {
            Some(v) if v.value == "hold" => NoData::Hold,
            Some(v) => {
                doc.error_at(
                    v.span.start,
                    format!(
                        "{path}.on_no_data: \"hold\" or a capacity (an integer), not {:?}",
                        v.value
                    ),
                );
                ok = false;
                NoData::Hold
            }
            None => NoData::Hold,
        }
    } else {
        match s.int(doc, "on_no_data") {
            Some(n) => match (u32::try_from(n.value), bounds) {
                (Ok(c), Some((lo, hi))) if (lo..=hi).contains(&c) => NoData::Capacity(c),
                (Ok(c), None) => NoData::Capacity(c),
                _ => {
                    let b = bounds.map_or(String::new(), |(lo, hi)| format!(" [{lo}, {hi}]"));
                    doc.error_at(
                        n.span.start,
                        format!("{path}.on_no_data: the fallback capacity must lie within the policy's bounds{b}"),
                    );
                    ok = false;
                    NoData::Hold
                }
            },
            None => {
                ok = false;
                NoData::Hold
            }
        }
    };
    let no_data_for_ms = match s.duration(doc, "no_data_for") {
        Some(d) if d.value > 0 => d.value,
        Some(d) => {
            doc.error_at(
                d.span.start,
                format!("{path}.no_data_for: must be greater than zero"),
            );
            ok = false;
            NO_DATA_FOR_MS
        }
        None => NO_DATA_FOR_MS,
    };
    let instance_warmup_ms = match s.duration(doc, "instance_warmup") {
        Some(d) if d.value > 0 => Some(d.value),
        Some(d) => {
            doc.error_at(
                d.span.start,
                format!("{path}.instance_warmup: must be greater than zero"),
            );
            ok = false;
            None
        }
        None => None,
    };
    ok.then_some(Controls {
        max_scale_out,
        max_scale_in,
        hold_out_when,
        hold_in_when,
        on_no_data,
        no_data_for_ms,
        instance_warmup_ms,
        scale_in_victim,
    })
}

/// The capacity the period's limit counts from, per direction: for scale-out, `current` less
/// what was added within the period; for scale-in, `current` plus what was removed. (Counting a
/// scale-out against a scale-in would let a group that just grew shrink past its limit.)
fn period_start(
    v: &Velocity,
    changes: &std::collections::VecDeque<(i64, i64)>,
    current: u32,
    now: i64,
    out: bool,
) -> (i64, String) {
    let moved: i64 = changes
        .iter()
        .filter(|(t, d)| *t > now.saturating_sub(v.period_ms) && (*d > 0) == out)
        .map(|(_, d)| d.abs())
        .sum();
    let start = if out {
        i64::from(current) - moved
    } else {
        i64::from(current) + moved
    }
    .max(0);
    (
        start,
        format!(
            "{start} at the start of the last {}",
            crate::duration::format_ms(v.period_ms)
        ),
    )
}

/// Whether `x` is a rounding error away from a whole number (10 × 1.1 is 11.000000000000002
/// and 11 × 3000/11 / 100 is 30.000000000000004 in binary floating point).
fn whole(x: f64) -> Option<f64> {
    let r = x.round();
    ((x - r).abs() <= 1e-9 * x.abs().max(1.0)).then_some(r)
}

/// `x` rounded up, a product that is a whole number but for a rounding error being that number.
pub fn ceil_whole(x: f64) -> f64 {
    whole(x).unwrap_or(x.ceil())
}

/// `x` rounded down, likewise.
pub fn floor_whole(x: f64) -> f64 {
    whole(x).unwrap_or(x.floor())
}

fn capacity(v: i64) -> u32 {
    v.clamp(0, i64::from(u32::MAX)) as u32
}

/// The highest capacity a scale-out may reach now, and how it was found: the larger of
/// `start + instances` and `ceil(start × (1 + percent/100))`, and at least `start + 1` (a
/// percentage of nothing would keep an empty group empty).
pub fn out_limit(
    v: &Velocity,
    changes: &std::collections::VecDeque<(i64, i64)>,
    current: u32,
    now: i64,
) -> (u32, String) {
    let (start, why) = period_start(v, changes, current, now, true);
    let by_instances = v.instances.map(|i| start + i64::from(i));
    let by_percent = v
        .percent
        .map(|p| ceil_whole(start as f64 * (1.0 + p / 100.0)) as i64);
    let limit = by_instances
        .into_iter()
        .chain(by_percent)
        .max()
        .unwrap_or(start);
    (capacity(limit.max(start + 1)), why)
}

/// The lowest capacity a scale-in may reach now: the smaller of `start - instances` and
/// `floor(start × (1 - percent/100))`, as HPA computes it.
pub fn in_limit(
    v: &Velocity,
    changes: &std::collections::VecDeque<(i64, i64)>,
    current: u32,
    now: i64,
) -> (u32, String) {
    let (start, why) = period_start(v, changes, current, now, false);
    let by_instances = v.instances.map(|i| start - i64::from(i));
    let by_percent = v
        .percent
        .map(|p| floor_whole(start as f64 * (1.0 - p / 100.0)) as i64);
    let limit = by_instances
        .into_iter()
        .chain(by_percent)
        .min()
        .unwrap_or(start);
    (capacity(limit), why)
}

/// `4 instances or 100%`.
pub fn describe(v: &Velocity) -> String {
    let mut parts = Vec::new();
    if let Some(i) = v.instances {
        parts.push(format!("{i} instance{}", if i == 1 { "" } else { "s" }));
    }
    if let Some(p) = v.percent {
        parts.push(format!("{}%", crate::gofmt::shortest_g(p)));
    }
    format!(
        "{} per {}",
        parts.join(" or "),
        crate::duration::format_ms(v.period_ms)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    fn v(instances: Option<u32>, percent: Option<f64>) -> Velocity {
        Velocity {
            instances,
            percent,
            period_ms: 60_000,
        }
    }

    #[test]
    fn the_larger_of_instances_and_percent_wins_as_hpa_select_policy_max() {
        let none = VecDeque::new();
        // HPA's documented example: 4 pods or 100% per 15 s, whichever is more.
        assert_eq!(out_limit(&v(Some(4), Some(100.0)), &none, 2, 0).0, 6);
        assert_eq!(out_limit(&v(Some(4), Some(100.0)), &none, 10, 0).0, 20);
        // Scale-in: 1 instance or 10%, the larger change.
        assert_eq!(in_limit(&v(Some(1), Some(10.0)), &none, 5, 0).0, 4);
        assert_eq!(in_limit(&v(Some(1), Some(10.0)), &none, 40, 0).0, 36);
        // Percent only: floor on the way in, ceil on the way out, never stuck at zero.
        assert_eq!(in_limit(&v(None, Some(10.0)), &none, 15, 0).0, 13);
        assert_eq!(out_limit(&v(None, Some(10.0)), &none, 15, 0).0, 17);
        assert_eq!(out_limit(&v(None, Some(50.0)), &none, 0, 0).0, 1);
    }

    #[test]
    fn a_percentage_that_gives_a_whole_number_is_not_rounded_past_it() {
        let none = VecDeque::new();
        // 50 × 1.1 is 55.00000000000001 and 10 × 0.2 is 1.9999999999999996 in floating point.
        assert_eq!(out_limit(&v(None, Some(10.0)), &none, 50, 0).0, 55);
        assert_eq!(out_limit(&v(None, Some(12.0)), &none, 25, 0).0, 28);
        assert_eq!(in_limit(&v(None, Some(80.0)), &none, 10, 0).0, 2);
        assert_eq!(in_limit(&v(None, Some(80.0)), &none, 15, 0).0, 3);
        // Not whole for real: still rounded outwards.
        assert_eq!(out_limit(&v(None, Some(10.0)), &none, 51, 0).0, 57);
        assert_eq!(in_limit(&v(None, Some(10.0)), &none, 51, 0).0, 45);
    }

    #[test]
    fn the_period_counts_from_the_capacity_at_its_start() {
        // Scaled out by 4 at t=10s and 2 at t=40s: at t=50s the period began at 4 instances.
        let changes: VecDeque<(i64, i64)> = [(10_000, 4), (40_000, 2)].into();
        let (lim, why) = out_limit(&v(Some(4), None), &changes, 10, 50_000);
        assert_eq!((lim, why.as_str()), (8, "4 at the start of the last 1m"));
        // The first change leaves the period at t=70s: the start is 8, the limit 12.
        assert_eq!(out_limit(&v(Some(4), None), &changes, 10, 70_000).0, 12);
        // Removals within the period count back.
        let changes: VecDeque<(i64, i64)> = [(10_000, -1)].into();
        assert_eq!(in_limit(&v(Some(1), None), &changes, 9, 20_000).0, 9);
        assert_eq!(in_limit(&v(Some(1), None), &changes, 9, 70_001).0, 8);
        // Each direction counts its own changes: out 10 -> 20, then in, within one period: the
        // scale-in counts from 20, not from the 10 the period began with.
        let changes: VecDeque<(i64, i64)> = [(10_000, 10)].into();
        assert_eq!(
            in_limit(&v(Some(1), Some(10.0)), &changes, 20, 20_000).0,
            18
        );
        let changes: VecDeque<(i64, i64)> = [(10_000, -2)].into();
        assert_eq!(out_limit(&v(Some(4), None), &changes, 18, 20_000).0, 22);
    }

    #[test]
    fn bad_controls_name_file_line_and_column() {
        let text = r#"[[scaling]]
name = "a"
asg = "g"
min = 2
max = 10
expr = "1"
target = 1
max_scale_out = { instances = 0, period = "1m", burst = 3 }
max_scale_in = { percent = 10 }
hold_out_when = 'rate(x[1m]'
hold_in_when = '1'
on_no_data = 12
no_data_for = "0s"
"#;
        let errs: Vec<String> = crate::rulefile::load("r.toml", text, &Default::default())
            .expect_err("invalid")
            .iter()
            .map(|d| d.to_string())
            .collect();
        let want = [
            "r.toml:8:31: scaling[0].max_scale_out.instances: must be at least 1",
            "r.toml:8:49: scaling[0].max_scale_out.burst: unknown key",
            "r.toml:9:16: scaling[0].max_scale_in.period: missing required key",
            "r.toml:10:22: scaling[0].hold_out_when: parse error: unclosed left parenthesis",
            "r.toml:11:16: scaling[0].hold_in_when: a guard's expression must evaluate to instant vector, not scalar",
            "r.toml:12:14: scaling[0].on_no_data: the fallback capacity must lie within the policy's bounds [2, 10]",
            "r.toml:13:15: scaling[0].no_data_for: must be greater than zero",
        ];
        assert_eq!(errs.len(), want.len(), "{errs:#?}");
        for (e, w) in errs.iter().zip(want) {
            assert!(e.starts_with(w), "{e} does not start with {w}: {errs:#?}");
        }
        let ok = text
            .replace(
                "instances = 0, period = \"1m\", burst = 3",
                "instances = 4, period = \"1m\"",
            )
            .replace("{ percent = 10 }", "{ percent = 10, period = \"5m\" }")
            .replace("'rate(x[1m]'", "'x > 1'")
            .replace("'1'", "'y > 1'")
            .replace("= 12", "= \"hold\"")
            .replace("\"0s\"", "\"2m\"");
        let f = crate::rulefile::load("r.toml", &ok, &Default::default()).expect("valid");
        let c = &f.scaling[0].controls;
        assert_eq!(
            c.max_scale_out.as_ref().map(describe).as_deref(),
            Some("4 instances per 1m")
        );
        assert_eq!(
            c.max_scale_in.as_ref().map(describe).as_deref(),
            Some("10% per 5m")
        );
        assert_eq!((c.on_no_data, c.no_data_for_ms), (NoData::Hold, 120_000));
        assert!(c.hold_out_when.is_some() && c.hold_in_when.is_some());
    }
}
