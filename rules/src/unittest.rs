//! `vigil-rules test`: rule unit tests with the meaning of `promtool test rules`, in TOML.
//!
//! Input series are loaded at `interval` steps from time 0; rule groups are evaluated at their
//! intervals from 0 up to each check's `eval_time`. Alert checks compare the *firing* alerts of
//! one alert name (labels without the implied `alertname`, and annotations); expression checks
//! compare an instant query's samples. Vigil adds scaling checks (one policy's recommendation for
//! a given current capacity, with its scale-in stabilization but no cooldowns; or, with `asg`,
//! the whole group's decisions from `current` at time 0 up to `eval_time`, each applied, with
//! cooldowns, guards, limits and fallbacks) and replacement checks (the instances a policy
//! replaces up to `eval_time` for a given group size).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use vigil_wire::{Labels, Sample, STALE_NAN};

use crate::duration::format_ms;
use crate::evaluator::{self, RuleSet, State};
use crate::promql::{self, Engine, EngineOpts, MemStorage, Value};
use crate::replace::{self, ReplaceState};
use crate::rulefile::{self, Context};
use crate::scaling::{self, PolicyState};
use crate::series::{parse_series_desc, parse_values, Point};
use crate::tomlread::{Diagnostic, Doc, Obj};

struct AlertCheck {
    eval_time: i64,
    alertname: String,
    exp: Vec<(Labels, BTreeMap<String, String>)>,
}

struct ExprCheck {
    eval_time: i64,
    expr: String,
    exp: Vec<(Labels, f64)>,
}

struct ScalingCheck {
    eval_time: i64,
    /// One policy (`name`) or the whole group (`asg`).
    target: ScalingTarget,
    current: u32,
    exp_desired: u32,
    /// Group checks: a text some decision up to `eval_time` says.
    exp_reason: Option<String>,
}

enum ScalingTarget {
    Policy(String),
    Group(String),
}

struct ReplaceCheck {
    eval_time: i64,
    name: String,
    group_size: u32,
    exp_replaced: Vec<String>,
    exp_fail_open: Option<bool>,
    /// `az_aware`: the AZs failing open at `eval_time` (`None`: not checked).
    exp_fail_open_zones: Option<Vec<String>>,
}

struct TestCase {
    name: String,
    /// The file's `fuzzy_compare`.
    fuzzy: bool,
    interval: i64,
    series: Vec<(Labels, Vec<Point>)>,
    alerts: Vec<AlertCheck>,
    exprs: Vec<ExprCheck>,
    scaling: Vec<ScalingCheck>,
    replace: Vec<ReplaceCheck>,
}

struct TestFile {
    rule_files: Vec<String>,
    evaluation_interval: i64,
    tests: Vec<TestCase>,
}

/// The result of running one test file.
#[derive(Debug, Default)]
pub struct Report {
    /// Human-readable output, promtool style.
    pub text: String,
    pub failures: usize,
    pub checks: usize,
}

fn parse_file(path: &str, text: &str) -> Result<TestFile, Vec<Diagnostic>> {
    let mut doc = Doc::new(path, text);
    let Some(root) = doc.parse() else {
        return Err(doc.into_errors());
    };
    let mut top = Obj::new(root.get_ref(), root.span(), "");
    let rule_files = top
        .str_list(&mut doc, "rule_files")
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.value)
        .collect();
    let evaluation_interval = match top.duration(&mut doc, "evaluation_interval") {
        Some(d) if d.value > 0 => d.value,
        Some(d) => {
            doc.error_at(
                d.span.start,
                "evaluation_interval: must be greater than zero",
            );
            60_000
        }
        None => 60_000,
    };
    let fuzzy_compare = top.bool(&mut doc, "fuzzy_compare").is_some_and(|b| b.value);
    let mut tests = Vec::new();
    for (ti, mut t) in top.tables(&mut doc, "test").into_iter().enumerate() {
        let name = t
            .str(&mut doc, "name")
            .map_or_else(|| format!("test {}", ti + 1), |s| s.value);
        let interval = match t.duration(&mut doc, "interval") {
            Some(d) if d.value > 0 => d.value,
            Some(d) => {
                doc.error_at(
                    d.span.start,
                    format!("{}.interval: must be greater than zero", t.path),
                );
                evaluation_interval
            }
            None => evaluation_interval,
        };
        let mut series = Vec::new();
        for mut s in t.tables(&mut doc, "input_series") {
            let desc = s.req_str(&mut doc, "series");
            let values = s.req_str(&mut doc, "values");
            let path = s.path.clone();
            s.finish(&mut doc);
            let (Some(desc), Some(values)) = (desc, values) else {
                continue;
            };
            match parse_series_desc(&desc.value) {
                Ok((labels, rest)) if rest.trim().is_empty() => match parse_values(&values.value) {
                    Ok(v) => series.push((labels, v)),
                    Err(e) => doc.error_at(values.span.start, format!("{path}.values: {e}")),
                },
                Ok(_) => doc.error_at(
                    desc.span.start,
                    format!("{path}.series: unexpected text after the series"),
                ),
                Err(e) => doc.error_at(desc.span.start, format!("{path}.series: {e}")),
            }
        }
        let mut alerts = Vec::new();
        for mut a in t.tables(&mut doc, "alert") {
            let eval_time = Some(a.duration(&mut doc, "eval_time").map_or(0, |d| d.value));
            let alertname = a.req_str(&mut doc, "alertname");
            let mut exp = Vec::new();
            for mut e in a.tables(&mut doc, "exp_alerts") {
                let labels = e.str_map(&mut doc, "labels").unwrap_or_default();
                let annotations = e.str_map(&mut doc, "annotations").unwrap_or_default();
                e.finish(&mut doc);
                let mut l =
                    Labels::from_pairs(labels.iter().map(|(k, v)| (k.as_str(), v.value.as_str())))
                        .to_builder();
                if let Some(n) = &alertname {
                    l.set("alertname", n.value.clone());
                }
                exp.push((
                    l.build(),
                    annotations.into_iter().map(|(k, v)| (k, v.value)).collect(),
                ));
            }
            a.finish(&mut doc);
            if let (Some(t), Some(n)) = (eval_time, alertname) {
                alerts.push(AlertCheck {
                    eval_time: t,
                    alertname: n.value,
                    exp,
                });
            }
        }
        let mut exprs = Vec::new();
        for mut e in t.tables(&mut doc, "expr") {
            let eval_time = Some(e.duration(&mut doc, "eval_time").map_or(0, |d| d.value));
            let expr = e.req_str(&mut doc, "expr");
            let mut exp = Vec::new();
            for mut s in e.tables(&mut doc, "exp_samples") {
                let labels = s
                    .str(&mut doc, "labels")
                    .map_or_else(|| "{}".to_string(), |l| l.value);
                let value = s.float(&mut doc, "value");
                let (path, at) = (s.path.clone(), s.span().start);
                if !s.has("value") {
                    doc.error_at(at, format!("{path}.value: missing required key"));
                }
                s.finish(&mut doc);
                match parse_series_desc(&labels) {
                    Ok((l, _)) => exp.push((l, value.map_or(f64::NAN, |v| v.value))),
                    Err(err) => doc.error_at(at, format!("{path}.labels: {err}")),
                }
            }
            e.finish(&mut doc);
            if let (Some(t), Some(x)) = (eval_time, expr) {
                exprs.push(ExprCheck {
                    eval_time: t,
                    expr: x.value,
                    exp,
                });
            }
        }
        let mut scaling = Vec::new();
        for mut s in t.tables(&mut doc, "scaling") {
            let eval_time = Some(s.duration(&mut doc, "eval_time").map_or(0, |d| d.value));
            let target = match (s.has("name"), s.has("asg")) {
                (true, false) => s
                    .str(&mut doc, "name")
                    .map(|n| ScalingTarget::Policy(n.value)),
                (false, true) => s
                    .str(&mut doc, "asg")
                    .map(|n| ScalingTarget::Group(n.value)),
                _ => {
                    doc.error_at(
                        s.span().start,
                        format!(
                            "{}: give name (one policy) or asg (the whole group), exactly one of them",
                            s.path
                        ),
                    );
                    None
                }
            };
            let current = s.int(&mut doc, "current");
            let exp = s.int(&mut doc, "exp_desired");
            let exp_reason = s.str(&mut doc, "exp_reason").map(|r| r.value);
            if exp_reason.is_some() && matches!(target, Some(ScalingTarget::Policy(_))) {
                doc.error_at(
                    s.span().start,
                    format!("{}.exp_reason: only for a group check (asg)", s.path),
                );
            }
            for key in ["current", "exp_desired"] {
                if !s.has(key) {
                    doc.error_at(
                        s.span().start,
                        format!("{}.{key}: missing required key", s.path),
                    );
                }
            }
            s.finish(&mut doc);
            if let (Some(t), Some(target), Some(c), Some(e)) = (eval_time, target, current, exp) {
                scaling.push(ScalingCheck {
                    eval_time: t,
                    target,
                    current: c.value.clamp(0, i64::from(u32::MAX)) as u32,
                    exp_desired: e.value.clamp(0, i64::from(u32::MAX)) as u32,
                    exp_reason,
                });
            }
        }
        let mut replace = Vec::new();
        for mut r in t.tables(&mut doc, "replace") {
            let eval_time = Some(r.duration(&mut doc, "eval_time").map_or(0, |d| d.value));
            let name = r.req_str(&mut doc, "name");
            let size = r.int(&mut doc, "group_size");
            if !r.has("group_size") {
                doc.error_at(
                    r.span().start,
                    format!("{}.group_size: missing required key", r.path),
                );
            }
            let exp = r.str_list(&mut doc, "exp_replaced").unwrap_or_default();
            let fail_open = r.bool(&mut doc, "exp_fail_open").map(|b| b.value);
            let zones = r
                .str_list(&mut doc, "exp_fail_open_zones")
                .map(|v| v.into_iter().map(|s| s.value).collect());
            r.finish(&mut doc);
            if let (Some(t), Some(n), Some(sz)) = (eval_time, name, size) {
                replace.push(ReplaceCheck {
                    eval_time: t,
                    name: n.value,
                    group_size: sz.value.clamp(0, i64::from(u32::MAX)) as u32,
                    exp_replaced: exp.into_iter().map(|s| s.value).collect(),
                    exp_fail_open: fail_open,
                    exp_fail_open_zones: zones,
                });
            }
        }
        t.finish(&mut doc);
        tests.push(TestCase {
            name,
            fuzzy: fuzzy_compare,
            interval,
            series,
            alerts,
            exprs,
            scaling,
            replace,
        });
    }
    top.finish(&mut doc);
    let errors = doc.into_errors();
    if errors.is_empty() {
        Ok(TestFile {
            rule_files,
            evaluation_interval,
            tests,
        })
    } else {
        Err(errors)
    }
}

/// Compares as promtool does: exactly, or with `fuzzy_compare` one representable value apart
/// (promtool's comparer, prometheus/prometheus#16395: `x == y` or `y` is `x`'s next float
/// either way; `0.1 + 0.2` matches `0.3`, `0.30000001` does not). Unlike promtool, an expected
/// NaN matches a NaN (Go's `==`, which promtool compares with, never does).
fn float_eq(a: f64, b: f64, fuzzy: bool) -> bool {
    if a.is_nan() && b.is_nan() || a == b {
        return true;
    }
    fuzzy && (a.next_up() == b || a.next_down() == b)
}

fn fmt_alerts(v: &[(Labels, BTreeMap<String, String>)]) -> String {
    if v.is_empty() {
        return "[]".into();
    }
    let mut s = String::from("[\n");
    for (i, (l, a)) in v.iter().enumerate() {
        let ann: Vec<String> = a.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        let _ = writeln!(
            s,
            "            {i}:\n              Labels:{}\n              Annotations:{{{}}}",
            go_labels(l),
            ann.join(", ")
        );
    }
    s.push_str("            ]");
    s
}

fn go_labels(l: &Labels) -> String {
    let parts: Vec<String> = l
        .iter()
        .map(|x| format!("{}={:?}", x.name, x.value))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// Runs a test file. `path` locates the rule files, which are relative to it.
pub fn run(path: &Path, text: &str, receivers: Option<Vec<String>>) -> Report {
    let mut report = Report::default();
    let name = path.display().to_string();
    let _ = writeln!(report.text, "Unit Testing: {name}");
    let file = match parse_file(&name, text) {
        Ok(f) => f,
        Err(errs) => {
            for e in errs {
                let _ = writeln!(report.text, "  FAILED:\n    {e}");
            }
            report.failures += 1;
            return report;
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut sources = Vec::new();
    for rf in &file.rule_files {
        let p = dir.join(rf);
        let mut matched: Vec<std::path::PathBuf> = if rf.contains('*') {
            glob_files(&p)
        } else {
            vec![p.clone()]
        };
        matched.sort();
        for m in matched {
            match std::fs::read_to_string(&m) {
                Ok(t) => sources.push((m.display().to_string(), t)),
                Err(e) => {
                    let _ = writeln!(
                        report.text,
                        "  FAILED:\n    cannot read rule file {}: {e}",
                        m.display()
                    );
                    report.failures += 1;
                    return report;
                }
            }
        }
    }
    let rules = match rulefile::load_all(&sources, &Context { receivers }) {
        Ok(r) => RuleSet {
            files: r,
            default_interval_ms: file.evaluation_interval,
        },
        Err(errs) => {
            let _ = writeln!(report.text, "  FAILED:");
            for e in errs {
                let _ = writeln!(report.text, "    {e}");
            }
            report.failures += 1;
            return report;
        }
    };
    let engine = Engine::new(EngineOpts {
        default_subquery_step_ms: file.evaluation_interval,
        ..EngineOpts::default()
    });
    for t in &file.tests {
        let failures = run_case(&engine, &rules, t, &mut report);
        if failures > 0 {
            report.failures += failures;
        }
    }
    if report.failures == 0 {
        let _ = writeln!(report.text, "  SUCCESS");
    }
    report
}

fn glob_files(pattern: &Path) -> Vec<std::path::PathBuf> {
    let dir = pattern.parent().unwrap_or(Path::new("."));
    let pat = pattern
        .file_name()
        .map(|f| f.to_string_lossy().to_string())
        .unwrap_or_default();
    let (pre, post) = pat.split_once('*').unwrap_or((&pat, ""));
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let n = p
                        .file_name()
                        .map(|f| f.to_string_lossy().to_string())
                        .unwrap_or_default();
                    n.len() >= pre.len() + post.len() && n.starts_with(pre) && n.ends_with(post)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn run_case(engine: &Engine, rules: &RuleSet, t: &TestCase, report: &mut Report) -> usize {
    let mut storage = MemStorage::new();
    for (labels, points) in &t.series {
        for (k, p) in points.iter().enumerate() {
            let ts = k as i64 * t.interval;
            match p {
                Point::Value(v) => storage.add(labels.clone(), Sample::new(ts, *v)),
                Point::Stale => storage.add(labels.clone(), Sample::new(ts, STALE_NAN)),
                Point::Histogram(h, _) => storage.add_histogram(
                    labels.clone(),
                    vigil_wire::histogram::HSample::new(ts, (**h).clone()),
                ),
                Point::Omitted => {}
            }
        }
    }
    let mut check_times: BTreeSet<i64> = BTreeSet::new();
    check_times.extend(t.alerts.iter().map(|a| a.eval_time));
    check_times.extend(t.exprs.iter().map(|e| e.eval_time));
    // Scaling and replacement checks read recorded series: evaluate the groups through them too.
    let decision_times = t
        .scaling
        .iter()
        .map(|s| s.eval_time)
        .chain(t.replace.iter().map(|r| r.eval_time));
    let max_t = check_times
        .iter()
        .copied()
        .chain(decision_times)
        .max()
        .unwrap_or(0);
    let tick = rules.default_interval_ms.max(1);
    let mut state = State::default();
    let mut failures = Vec::new();
    let mut ts = 0;
    let mut pending_checks = check_times.into_iter().peekable();
    while ts <= max_t || pending_checks.peek().is_some() {
        if ts <= max_t {
            for g in rules.groups() {
                // As promtool does: every group at every evaluation_interval, whatever the group's
                // own interval.
                {
                    for ev in evaluator::eval_group(
                        engine,
                        g,
                        &mut state,
                        &mut storage,
                        ts,
                        &Labels::empty(),
                        &mut crate::health::GroupHealth::default(),
                    ) {
                        if let evaluator::Event::RuleError { rule, error, .. } = ev {
                            failures.push(format!(
                                "    rule {rule} failed at {}: {error}",
                                format_ms(ts)
                            ));
                        }
                    }
                }
            }
        }
        // Run the checks whose time is reached before the next evaluation.
        while let Some(&c) = pending_checks.peek() {
            if c >= ts + tick && ts <= max_t {
                break;
            }
            pending_checks.next();
            report.checks += 1;
            check_at(engine, rules, t, &state, &storage, c, &mut failures);
        }
        ts += tick;
    }
    for s in &t.scaling {
        report.checks += 1;
        if let Some(f) = check_scaling(engine, rules, t, &storage, s) {
            failures.push(f);
        }
    }
    for r in &t.replace {
        report.checks += 1;
        if let Some(f) = check_replace(engine, rules, t, &storage, r) {
            failures.push(f);
        }
    }
    if !failures.is_empty() {
        let _ = writeln!(report.text, "  FAILED ({}):", t.name);
        for f in &failures {
            let _ = writeln!(report.text, "{f}");
        }
    }
    failures.len()
}

fn check_at(
    engine: &Engine,
    rules: &RuleSet,
    t: &TestCase,
    state: &State,
    storage: &MemStorage,
    at: i64,
    failures: &mut Vec<String>,
) {
    for a in t.alerts.iter().filter(|a| a.eval_time == at) {
        let mut got: Vec<(Labels, BTreeMap<String, String>)> = Vec::new();
        for g in rules.groups() {
            for r in &g.rules {
                if let rulefile::Rule::Alert(ar) = r {
                    if ar.alert != a.alertname {
                        continue;
                    }
                    if let Some(st) = state.alerts.get(&evaluator::alert_key(g, ar)) {
                        got.extend(
                            st.firing()
                                .into_iter()
                                .map(|al| (al.labels.clone(), al.annotations.clone())),
                        );
                    }
                }
            }
        }
        let mut exp = a.exp.clone();
        got.sort_by(|x, y| x.0.cmp(&y.0));
        exp.sort_by(|x, y| x.0.cmp(&y.0));
        if got != exp {
            failures.push(format!(
                "    alertname: {}, time: {}, \n        exp:{}, \n        got:{}",
                a.alertname,
                format_ms(at),
                fmt_alerts(&exp),
                fmt_alerts(&got)
            ));
        }
    }
    for e in t.exprs.iter().filter(|e| e.eval_time == at) {
        let q = match promql::parse(&e.expr) {
            Ok(q) => q,
            Err(err) => {
                failures.push(format!(
                    "    expr: {:?}, time: {}, err: {err}",
                    e.expr,
                    format_ms(at)
                ));
                continue;
            }
        };
        let got: Vec<(Labels, f64)> = match engine.instant(storage, &q, at) {
            Ok(r) => match r.value {
                Value::Vector(v) if v.iter().any(|s| s.h.is_some()) => {
                    failures.push(format!(
                        "    expr: {:?}, time: {}, err: the result holds native histograms; expected samples are numbers (compare histogram_count, histogram_sum, histogram_quantile of it)",
                        e.expr,
                        format_ms(at)
                    ));
                    continue;
                }
                Value::Vector(v) => v.into_iter().map(|s| (s.labels, s.f)).collect(),
                Value::Scalar(f) => vec![(Labels::empty(), f)],
                other => {
                    failures.push(format!(
                        "    expr: {:?}, time: {}, err: expected a vector, got {}",
                        e.expr,
                        format_ms(at),
                        other.type_name()
                    ));
                    continue;
                }
            },
            Err(err) => {
                failures.push(format!(
                    "    expr: {:?}, time: {}, err: {err}",
                    e.expr,
                    format_ms(at)
                ));
                continue;
            }
        };
        let mut got_sorted = got.clone();
        got_sorted.sort_by(|x, y| x.0.cmp(&y.0));
        let mut exp_sorted = e.exp.clone();
        exp_sorted.sort_by(|x, y| x.0.cmp(&y.0));
        let same = got_sorted.len() == exp_sorted.len()
            && got_sorted
                .iter()
                .zip(&exp_sorted)
                .all(|(g, x)| g.0 == x.0 && float_eq(g.1, x.1, t.fuzzy));
        if !same {
            let fmt = |v: &[(Labels, f64)]| -> String {
                let items: Vec<String> = v
                    .iter()
                    .map(|(l, f)| format!("{} {}", l, crate::gofmt::shortest_g(*f)))
                    .collect();
                format!("[{}]", items.join(", "))
            };
            failures.push(format!(
                "    expr: {:?}, time: {},\n        exp: {}\n        got: {}",
                e.expr,
                format_ms(at),
                fmt(&exp_sorted),
                fmt(&got_sorted)
            ));
        }
    }
}

fn check_scaling(
    engine: &Engine,
    rules: &RuleSet,
    t: &TestCase,
    storage: &MemStorage,
    s: &ScalingCheck,
) -> Option<String> {
    let name = match &s.target {
        ScalingTarget::Policy(n) => n,
        ScalingTarget::Group(asg) => return check_group(engine, rules, storage, s, asg),
    };
    let Some(p) = rules.scaling().find(|p| &p.name == name) else {
        return Some(format!("    scaling: no policy named {name:?}"));
    };
    let interval = rules.default_interval_ms.max(1);
    let mut st = PolicyState::default();
    let mut got = s.current;
    let mut why = "no data".to_string();
    let mut ts = 0;
    while ts <= s.eval_time {
        let value = evaluator::scaling_value(engine, storage, &p.expr, ts);
        match value {
            Some(v) => {
                let (raw, reason) = scaling::recommend(p, s.current, v);
                got = scaling::stabilize(p, &mut st, ts, raw, s.current);
                why = reason;
            }
            None => {
                got = s.current.clamp(p.min, p.max);
                why = "no data".into();
            }
        }
        ts += interval;
    }
    let _ = t;
    (got != s.exp_desired).then(|| {
        format!(
            "    scaling: {}, time: {}, current: {}\n        exp_desired: {}\n        got: {} ({why})",
            name,
            format_ms(s.eval_time),
            s.current,
            s.exp_desired,
            got
        )
    })
}

/// A group check: its decisions from `current` at time 0, each applied, up to `eval_time`.
fn check_group(
    engine: &Engine,
    rules: &RuleSet,
    storage: &MemStorage,
    s: &ScalingCheck,
    asg: &str,
) -> Option<String> {
    let by_asg = rules.scaling_by_asg();
    let Some(ps) = by_asg.get(asg) else {
        return Some(format!("    scaling: no policy scales {asg:?}"));
    };
    let interval = rules.asg_interval(ps).max(1);
    let mut state = State::default();
    let mut current = s.current;
    let mut said = Vec::new();
    let mut ts = 0;
    while ts <= s.eval_time {
        let d = evaluator::eval_scaling(
            engine,
            asg,
            ps,
            &rules.schedules_for(asg),
            &mut state,
            storage,
            current,
            crate::victim::Where::Simulated,
            ts,
        );
        said.push(crate::replay::event_text(&evaluator::Event::Scaling(
            d.clone(),
        )));
        current = d.desired;
        ts += interval;
    }
    let reason_ok = s
        .exp_reason
        .as_ref()
        .is_none_or(|r| said.iter().any(|l| l.contains(r.as_str())));
    (current != s.exp_desired || !reason_ok).then(|| {
        let exp_reason = s
            .exp_reason
            .as_ref()
            .map_or(String::new(), |r| format!(", exp_reason: {r:?}"));
        let mut out = format!(
            "    scaling: asg {asg}, time: {}, current: {}\n        exp_desired: {}{exp_reason}\n        got: {current}; decisions:",
            format_ms(s.eval_time),
            s.current,
            s.exp_desired,
        );
        for l in said.iter().rev().take(10).rev() {
            let _ = write!(out, "\n          {l}");
        }
        out
    })
}

fn check_replace(
    engine: &Engine,
    rules: &RuleSet,
    t: &TestCase,
    storage: &MemStorage,
    r: &ReplaceCheck,
) -> Option<String> {
    let Some(p) = rules.replace().find(|p| p.name == r.name) else {
        return Some(format!("    replace: no policy named {:?}", r.name));
    };
    let interval = rules.default_interval_ms.max(1);
    let mut st = ReplaceState::default();
    let mut replaced = Vec::new();
    let mut fail_open = false;
    let mut ts = 0;
    while ts <= r.eval_time {
        let sick = match evaluator::unhealthy_instances(engine, storage, &p.expr, ts) {
            Ok(s) => s,
            Err(e) => return Some(format!("    replace: {}: {e}", r.name)),
        };
        // az_aware: the zones are the input series' `az` labels.
        let zones = p
            .az_aware
            .then(|| evaluator::zones_from_data(engine, storage, &p.asg, ts));
        let d = replace::decide_in_zones(p, &mut st, &sick, &[], r.group_size, zones.as_ref(), ts);
        replaced.extend(d.replace.into_iter().map(|(i, _)| i));
        fail_open = st.failing_open;
        ts += interval;
    }
    let _ = t;
    let mut exp = r.exp_replaced.clone();
    exp.sort();
    replaced.sort();
    let fo_ok = r.exp_fail_open.is_none_or(|f| f == fail_open);
    let zones: Vec<String> = st.zones_failing_open.iter().cloned().collect();
    let zones_ok = r.exp_fail_open_zones.as_ref().is_none_or(|z| {
        let mut z = z.clone();
        z.sort();
        z == zones
    });
    (replaced != exp || !fo_ok || !zones_ok).then(|| {
        format!(
            "    replace: {}, time: {}, group_size: {}\n        exp_replaced: {exp:?}{}{}\n        got: {replaced:?}, failing open: {fail_open}{}",
            r.name,
            format_ms(r.eval_time),
            r.group_size,
            r.exp_fail_open.map(|f| format!(", exp_fail_open: {f}")).unwrap_or_default(),
            r.exp_fail_open_zones.as_ref().map(|z| format!(", exp_fail_open_zones: {z:?}")).unwrap_or_default(),
            if p.az_aware { format!(", zones failing open: {zones:?}") } else { String::new() }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_missing_keys_are_errors_or_promtool_defaults() {
        let text = "rule_files = []\n[[test]]\n[[test.expr]]\nexpr = \"1\"\nexp_samples = [{ labels = \"{}\", value = 1 }]\n[[test.scaling]]\nname = \"x\"\n";
        let errs: Vec<String> = parse_file("t.toml", text)
            .err()
            .unwrap()
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].contains("test[0].scaling[0].current: missing required key"),
            "{errs:?}"
        );
        assert!(
            errs[1].contains("exp_desired: missing required key"),
            "{errs:?}"
        );
        let ok = parse_file("t.toml", "[[test]]\n[[test.expr]]\nexpr = \"1\"\n")
            .ok()
            .unwrap();
        assert_eq!(
            ok.tests[0].exprs[0].eval_time, 0,
            "eval_time defaults to 0 as in promtool"
        );
        assert!(parse_file("t.toml", "evaluation_interval = \"0\"\n").is_err());
    }

    #[test]
    fn expression_checks_compare_exactly_unless_fuzzy() {
        assert!(float_eq(0.1, 0.1, false));
        assert!(!float_eq(0.1 + 0.2, 0.3, false));
        // One float apart, either way, as promtool's fuzzy_compare; two apart is a failure.
        assert!(float_eq(0.1 + 0.2, 0.3, true));
        assert!(float_eq(0.3, 0.1 + 0.2, true));
        assert!(float_eq(1.0, 1.0f64.next_down(), true));
        assert!(!float_eq(1.0, 1.0f64.next_up().next_up(), true));
        assert!(!float_eq(0.3, 0.30000001, true));
        assert!(float_eq(0.0, -0.0, true) && float_eq(f64::NAN, f64::NAN, false));
    }
}
