//! Rule files: the TOML schema of `../shared/SPEC.md` (`[[group]]` with `[[group.record]]` and
//! `[[group.alert]]`, `[[scaling]]` with optional `[[scaling.step]]`, `[[replace]]`), read and
//! validated with every problem reported as `FILE:LINE:COL: message`.

use std::collections::{BTreeMap, HashMap};

use crate::promql::plan::ValueType;
use crate::promql::{self, Query};
use crate::template::Template;
use crate::tomlread::{At, Diagnostic, Doc, Obj};

/// A validated rule file.
#[derive(Debug, Clone)]
pub struct RuleFile {
    pub path: String,
    pub groups: Vec<Group>,
    pub scaling: Vec<ScalingPolicy>,
    pub replace: Vec<ReplacePolicy>,
    pub schedules: Vec<crate::schedule::Schedule>,
}

#[derive(Debug, Clone)]
pub struct Group {
    /// The file the group came from (groups in different files may share a name).
    pub file: String,
    pub name: String,
    /// Evaluation interval; `None` means the global `rules.evaluation_interval`.
    pub interval_ms: Option<i64>,
    /// How far in the past the group's rules are evaluated (Prometheus's `query_offset`, for
    /// data that arrives late); `None` means the global `[rules] query_offset` (0 unless set).
    pub query_offset_ms: Option<i64>,
    /// Rules in the order they appear in the file (records feed later rules).
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
pub enum Rule {
    Record(RecordRule),
    Alert(AlertRule),
}

impl Rule {
    pub fn name(&self) -> &str {
        match self {
            Rule::Record(r) => &r.record,
            Rule::Alert(a) => &a.alert,
        }
    }
    pub fn query(&self) -> &Query {
        match self {
            Rule::Record(r) => &r.expr,
            Rule::Alert(a) => &a.expr,
        }
    }
}

/// Publishes a record rule's samples as a CloudWatch custom metric.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudWatchPublish {
    pub metric_name: String,
    /// Labels that become CloudWatch dimensions (at most 30).
    pub dimensions: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct RecordRule {
    pub record: String,
    pub expr: Query,
    pub labels: BTreeMap<String, String>,
    pub cloudwatch: Option<CloudWatchPublish>,
}

#[derive(Debug, Clone)]
pub struct AlertRule {
    pub alert: String,
    pub expr: Query,
    pub for_ms: i64,
    pub keep_firing_for_ms: i64,
    pub labels: Vec<(String, Template)>,
    pub annotations: Vec<(String, Template)>,
    pub receivers: Vec<String>,
}

/// How a scaling policy turns its expression's value into a desired capacity.
#[derive(Debug, Clone, PartialEq)]
pub enum ScalingMode {
    /// `desired = ceil(current × value / target)` outside the tolerance band.
    Target { target: f64, tolerance: f64 },
    /// Adjust capacity by the step whose `[lower, upper)` holds the value.
    Steps(Vec<Step>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Inclusive lower bound; `None` is -∞.
    pub lower: Option<f64>,
    /// Exclusive upper bound; `None` is +∞.
    pub upper: Option<f64>,
    /// Capacity change, positive to scale out.
    pub adjust: i64,
}

#[derive(Debug, Clone)]
pub struct ScalingPolicy {
    pub name: String,
    pub asg: String,
    pub min: u32,
    pub max: u32,
    pub expr: Query,
    pub mode: ScalingMode,
    pub scale_out_cooldown_ms: i64,
    pub scale_in_cooldown_ms: i64,
    pub scale_in_stabilization_ms: i64,
    pub interval_ms: Option<i64>,
    pub controls: crate::controls::Controls,
}

#[derive(Debug, Clone)]
pub struct ReplacePolicy {
    pub name: String,
    pub asg: String,
    pub expr: Query,
    pub for_ms: i64,
    pub max_fraction: f64,
    pub window_ms: i64,
    pub fail_open_fraction: f64,
    pub interval_ms: Option<i64>,
    /// `az_aware = true`: fail-open and `max_fraction` also per Availability Zone.
    pub az_aware: bool,
}

/// What validation needs from outside the file.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// Receivers the aggregator config defines; `None` skips the check (no `--config` given).
    pub receivers: Option<Vec<String>>,
}

/// The byte offset in the file of byte `value_off` of a TOML string's decoded value, walking the
/// escapes of basic strings (`\"`, `\u00e9`, line-ending backslashes) so positions inside an
/// expression or template stay right.
fn raw_offset(text: &str, span_start: usize, value_off: usize) -> usize {
    let start = span_start.min(text.len());
    let base = start + content_offset(text, start);
    let raw = &text[base.min(text.len())..];
    if text[start..].starts_with('\'') {
        return base + value_off;
    }
    let b = raw.as_bytes();
    let (mut r, mut v) = (0usize, 0usize);
    while v < value_off && r < b.len() {
        if b[r] == b'\\' && r + 1 < b.len() {
            let (raw_len, val_len) = match b[r + 1] {
                b'u' => (
                    6,
                    raw.get(r + 2..r + 6)
                        .and_then(|h| u32::from_str_radix(h, 16).ok())
                        .and_then(char::from_u32)
                        .map_or(1, char::len_utf8),
                ),
                b'U' => (
                    10,
                    raw.get(r + 2..r + 10)
                        .and_then(|h| u32::from_str_radix(h, 16).ok())
                        .and_then(char::from_u32)
                        .map_or(1, char::len_utf8),
                ),
                b'\n' | b' ' | b'\t' | b'\r' => {
                    // A line-ending backslash swallows the newline and the whitespace after it.
                    let mut k = r + 1;
                    while k < b.len() && b[k].is_ascii_whitespace() {
                        k += 1;
                    }
                    (k - r, 0)
                }
                _ => (2, 1),
            };
            r += raw_len;
            v += val_len;
        } else {
            r += 1;
            v += 1;
        }
    }
    base + r
}

/// Where a TOML string's content starts, relative to the span of the string token.
fn content_offset(text: &str, span_start: usize) -> usize {
    let rest = &text[span_start.min(text.len())..];
    if rest.starts_with("'''") || rest.starts_with("\"\"\"") {
        let after = &rest[3..];
        3 + if after.starts_with("\r\n") {
            2
        } else {
            usize::from(after.starts_with('\n'))
        }
    } else {
        1
    }
}

/// Parses the expression at `path` (the full key path, e.g. `scaling[0].expr`) and checks its type.
pub(crate) fn parse_expr(
    doc: &mut Doc<'_>,
    s: &At<String>,
    path: &str,
    want: &[ValueType],
    what: &str,
) -> Option<Query> {
    match promql::parse(&s.value) {
        Ok(q) => {
            let vt = q.value_type();
            if !want.contains(&vt) {
                let name = |v: &ValueType| match v {
                    ValueType::Scalar => "scalar",
                    ValueType::String => "string",
                    ValueType::Vector => "instant vector",
                    ValueType::Matrix => "range vector",
                };
                let wanted: Vec<&str> = want.iter().map(name).collect();
                doc.error_at(
                    s.span.start,
                    format!(
                        "{path}: {what} expression must evaluate to {}, not {}",
                        wanted.join(" or "),
                        name(&vt)
                    ),
                );
                return None;
            }
            Some(q)
        }
        Err(e) => {
            // Point into the expression: its line and column, offset by where the string starts.
            let mut off = 0;
            for (i, line) in s.value.split('\n').enumerate() {
                if i + 1 == e.line {
                    off += line
                        .char_indices()
                        .nth(e.column - 1)
                        .map_or(line.len(), |(b, _)| b);
                    break;
                }
                off += line.len() + 1;
            }
            doc.error_at(
                raw_offset(doc.text, s.span.start, off),
                format!("{path}: {}", e.message),
            );
            None
        }
    }
}

fn check_label_names(
    doc: &mut Doc<'_>,
    map: &BTreeMap<String, At<String>>,
    path: &str,
    what: &str,
) {
    for (k, v) in map {
        if !vigil_wire::text::is_valid_label_name(k) {
            doc.error_at(
                v.span.start,
                format!("{path}.{what}: invalid label name {k:?}"),
            );
        }
        if k == "__name__" {
            doc.error_at(
                v.span.start,
                format!("{path}.{what}: the metric name cannot be set as a label"),
            );
        }
    }
}

fn templates(
    doc: &mut Doc<'_>,
    map: BTreeMap<String, At<String>>,
    path: &str,
    what: &str,
) -> Vec<(String, Template)> {
    let mut out = Vec::new();
    for (k, v) in map {
        match Template::parse(&v.value) {
            Ok(t) => out.push((k, t)),
            Err(e) => {
                let pos = raw_offset(doc.text, v.span.start, e.offset);
                doc.error_at(pos, format!("{path}.{what}.{k}: {e}"));
            }
        }
    }
    out
}

fn fraction(
    doc: &mut Doc<'_>,
    o: &mut Obj<'_, '_>,
    key: &str,
    default: Option<f64>,
) -> Option<f64> {
    let path = format!("{}.{key}", o.path);
    match o.float(doc, key) {
        Some(f) if f.value > 0.0 && f.value <= 1.0 => Some(f.value),
        Some(f) => {
            doc.error_at(
                f.span.start,
                format!("{path}: must be in (0, 1], got {}", f.value),
            );
            None
        }
        None if o.has(key) => None,
        None => {
            if default.is_none() {
                doc.error_at(o.span().start, format!("{path}: missing required key"));
            }
            default
        }
    }
}

fn positive_duration(doc: &mut Doc<'_>, o: &mut Obj<'_, '_>, key: &str) -> Option<i64> {
    let d = o.duration(doc, key)?;
    if d.value <= 0 {
        doc.error_at(
            d.span.start,
            format!("{}.{key}: must be greater than zero", o.path),
        );
        return None;
    }
    Some(d.value)
}

/// Reads and validates one rule file. Returns the file when it has no problems, else every
/// problem found.
pub fn load(path: &str, text: &str, ctx: &Context) -> Result<RuleFile, Vec<Diagnostic>> {
    let mut doc = Doc::new(path, text);
    let Some(root) = doc.parse() else {
        return Err(doc.into_errors());
    };
    let mut top = Obj::new(root.get_ref(), root.span(), "");
    let mut file = RuleFile {
        path: path.to_string(),
        groups: vec![],
        scaling: vec![],
        replace: vec![],
        schedules: vec![],
    };
    let mut ok = true;

    let mut group_names: HashMap<String, usize> = HashMap::new();
    for mut g in top.tables(&mut doc, "group") {
        let gpath = g.path.clone();
        let name = g.req_str(&mut doc, "name");
        if let Some(n) = &name {
            if n.value.is_empty() {
                doc.error_at(n.span.start, format!("{gpath}.name: must not be empty"));
            } else if group_names.insert(n.value.clone(), n.span.start).is_some() {
                doc.error_at(
                    n.span.start,
                    format!("{gpath}.name: duplicate group name {:?}", n.value),
                );
            }
        }
        let interval = if g.has("interval") {
            positive_duration(&mut doc, &mut g, "interval")
        } else {
            None
        };
        let query_offset = g.non_negative_duration(&mut doc, "query_offset");
        let mut rules: Vec<(usize, Option<Rule>)> = Vec::new();
        for mut r in g.tables(&mut doc, "record") {
            let rpath = r.path.clone();
            let start = r.span().start;
            let record = r.req_str(&mut doc, "record");
            if let Some(rec) = &record {
                if !vigil_wire::text::is_valid_metric_name(&rec.value) {
                    doc.error_at(
                        rec.span.start,
                        format!("{rpath}.record: invalid metric name {:?}", rec.value),
                    );
                }
            }
            let expr = r.req_str(&mut doc, "expr");
            let q = expr.as_ref().and_then(|e| {
                parse_expr(
                    &mut doc,
                    e,
                    &format!("{rpath}.expr"),
                    &[ValueType::Vector, ValueType::Scalar],
                    "a record rule's",
                )
            });
            let labels = r.str_map(&mut doc, "labels").unwrap_or_default();
            check_label_names(&mut doc, &labels, &rpath, "labels");
            let cloudwatch = r.table(&mut doc, "cloudwatch").and_then(|mut cw| {
                let cpath = cw.path.clone();
                let metric_name = cw.req_str(&mut doc, "metric_name");
                let dimensions = cw.str_list(&mut doc, "dimensions").unwrap_or_default();
                if dimensions.len() > 30 {
                    doc.error_at(
                        cw.span().start,
                        format!("{cpath}.dimensions: CloudWatch allows at most 30 dimensions"),
                    );
                }
                for d in &dimensions {
                    if !vigil_wire::text::is_valid_label_name(&d.value) {
                        doc.error_at(
                            d.span.start,
                            format!("{cpath}.dimensions: invalid label name {:?}", d.value),
                        );
                    }
                }
                if let Some(m) = &metric_name {
                    if m.value.is_empty() || m.value.len() > 255 {
                        doc.error_at(
                            m.span.start,
                            format!("{cpath}.metric_name: must be 1 to 255 characters"),
                        );
                    }
                }
                cw.finish(&mut doc);
                Some(CloudWatchPublish {
                    metric_name: metric_name?.value,
                    dimensions: dimensions.into_iter().map(|d| d.value).collect(),
                })
            });
            r.finish(&mut doc);
            let rule = match (record, q) {
                (Some(rec), Some(expr)) => Some(Rule::Record(RecordRule {
                    record: rec.value,
                    expr,
                    labels: labels.into_iter().map(|(k, v)| (k, v.value)).collect(),
                    cloudwatch,
                })),
                _ => None,
            };
            rules.push((start, rule));
        }
        for mut a in g.tables(&mut doc, "alert") {
            let apath = a.path.clone();
            let start = a.span().start;
            let alert = a.req_str(&mut doc, "alert");
            if let Some(n) = &alert {
                if n.value.is_empty() {
                    doc.error_at(n.span.start, format!("{apath}.alert: must not be empty"));
                }
            }
            let expr = a.req_str(&mut doc, "expr");
            let q = expr.as_ref().and_then(|e| {
                parse_expr(
                    &mut doc,
                    e,
                    &format!("{apath}.expr"),
                    &[ValueType::Vector],
                    "an alert's",
                )
            });
            let for_ms = a.duration(&mut doc, "for").map_or(0, |d| d.value);
            let keep = a
                .duration(&mut doc, "keep_firing_for")
                .map_or(0, |d| d.value);
            let labels = a.str_map(&mut doc, "labels").unwrap_or_default();
            check_label_names(&mut doc, &labels, &apath, "labels");
            let labels = templates(&mut doc, labels, &apath, "labels");
            let annotations = a.str_map(&mut doc, "annotations").unwrap_or_default();
            let annotations = templates(&mut doc, annotations, &apath, "annotations");
            let receivers = a.str_list(&mut doc, "receivers").unwrap_or_default();
            if let Some(known) = &ctx.receivers {
                for r in &receivers {
                    if !known.contains(&r.value) {
                        doc.error_at(
                            r.span.start,
                            format!("{apath}.receivers: receiver {:?} is not defined in the aggregator config", r.value),
                        );
                    }
                }
            }
            a.finish(&mut doc);
            let rule = match (alert, q) {
                (Some(n), Some(expr)) => Some(Rule::Alert(AlertRule {
                    alert: n.value,
                    expr,
                    for_ms,
                    keep_firing_for_ms: keep,
                    labels,
                    annotations,
                    receivers: receivers.into_iter().map(|r| r.value).collect(),
                })),
                _ => None,
            };
            rules.push((start, rule));
        }
        g.finish(&mut doc);
        rules.sort_by_key(|(s, _)| *s);
        if rules.iter().any(|(_, r)| r.is_none()) {
            ok = false;
        }
        if let Some(n) = name {
            file.groups.push(Group {
                file: path.to_string(),
                name: n.value,
                interval_ms: interval,
                query_offset_ms: query_offset,
                rules: rules.into_iter().filter_map(|(_, r)| r).collect(),
            });
        } else {
            ok = false;
        }
    }

    let mut scaling_names: HashMap<String, usize> = HashMap::new();
    for mut s in top.tables(&mut doc, "scaling") {
        if let Some(p) = read_scaling(&mut doc, &mut s, &mut scaling_names) {
            file.scaling.push(p);
        } else {
            ok = false;
        }
        s.finish(&mut doc);
    }
    let mut replace_names: HashMap<String, usize> = HashMap::new();
    for mut r in top.tables(&mut doc, "replace") {
        if let Some(p) = read_replace(&mut doc, &mut r, &mut replace_names) {
            file.replace.push(p);
        } else {
            ok = false;
        }
        r.finish(&mut doc);
    }
    for mut o in top.tables(&mut doc, "schedule") {
        if let Some(sc) = crate::schedule::read(&mut doc, &mut o) {
            file.schedules.push(sc);
        } else {
            ok = false;
        }
        o.finish(&mut doc);
    }
    top.finish(&mut doc);
    let errors = doc.into_errors();
    if errors.is_empty() && ok {
        Ok(file)
    } else if errors.is_empty() {
        // Defensive: a rule was dropped without a recorded reason.
        Err(vec![Diagnostic {
            file: path.to_string(),
            line: 1,
            column: 1,
            message: "invalid rule file".into(),
        }])
    } else {
        Err(errors)
    }
}

fn unique_name(
    doc: &mut Doc<'_>,
    o: &mut Obj<'_, '_>,
    seen: &mut HashMap<String, usize>,
    kind: &str,
) -> Option<String> {
    let path = o.path.clone();
    let n = o.req_str(doc, "name")?;
    if n.value.is_empty() {
        doc.error_at(n.span.start, format!("{path}.name: must not be empty"));
        return None;
    }
    if seen.insert(n.value.clone(), n.span.start).is_some() {
        doc.error_at(
            n.span.start,
            format!("{path}.name: duplicate {kind} name {:?}", n.value),
        );
        return None;
    }
    Some(n.value)
}

fn read_scaling(
    doc: &mut Doc<'_>,
    s: &mut Obj<'_, '_>,
    seen: &mut HashMap<String, usize>,
) -> Option<ScalingPolicy> {
    let path = s.path.clone();
    let name = unique_name(doc, s, seen, "scaling policy");
    let asg = s.req_str(doc, "asg");
    let min = s.int(doc, "min");
    let max = s.int(doc, "max");
    if !s.has("min") {
        doc.error_at(s.span().start, format!("{path}.min: missing required key"));
    }
    if !s.has("max") {
        doc.error_at(s.span().start, format!("{path}.max: missing required key"));
    }
    let mut bounds_ok = true;
    for b in [&min, &max].into_iter().flatten() {
        if b.value < 0 || b.value > i64::from(u32::MAX) {
            doc.error_at(
                b.span.start,
                format!("{path}: capacity bounds must be between 0 and {}", u32::MAX),
            );
            bounds_ok = false;
        }
    }
    if let (Some(lo), Some(hi)) = (&min, &max) {
        if lo.value > hi.value {
            doc.error_at(
                lo.span.start,
                format!(
                    "{path}: min ({}) is greater than max ({})",
                    lo.value, hi.value
                ),
            );
            bounds_ok = false;
        }
    }
    let expr = s.req_str(doc, "expr");
    let q = expr.as_ref().and_then(|e| {
        parse_expr(
            doc,
            e,
            &format!("{path}.expr"),
            &[ValueType::Vector, ValueType::Scalar],
            "a scaling policy's",
        )
    });
    let target = s.float(doc, "target");
    let tolerance = s.float(doc, "tolerance");
    let steps_objs = s.tables(doc, "step");
    let (has_target, has_steps) = (s.has("target"), !steps_objs.is_empty());
    let steps = if has_steps {
        read_steps(doc, steps_objs, &path)
    } else {
        None
    };
    let mode = if has_target == has_steps {
        doc.error_at(
            s.span().start,
            format!("{path}: give either target (target tracking) or [[scaling.step]] (step policy), exactly one of them"),
        );
        None
    } else if let Some(t) = target {
        let mut good = true;
        if !(t.value > 0.0 && t.value.is_finite()) {
            doc.error_at(
                t.span.start,
                format!("{path}.target: must be a positive number"),
            );
            good = false;
        }
        if let Some(tl) = &tolerance {
            if !(0.0..1.0).contains(&tl.value) {
                doc.error_at(
                    tl.span.start,
                    format!("{path}.tolerance: must be in [0, 1)"),
                );
                good = false;
            }
        }
        good.then_some(ScalingMode::Target {
            target: t.value,
            tolerance: tolerance.as_ref().map_or(0.1, |t| t.value),
        })
    } else {
        if let Some(tl) = &tolerance {
            doc.error_at(
                tl.span.start,
                format!("{path}.tolerance: only applies to target tracking"),
            );
        }
        steps.map(ScalingMode::Steps)
    };
    let cd = |doc: &mut Doc<'_>, s: &mut Obj<'_, '_>, key: &str, default: i64| {
        s.duration(doc, key).map_or(default, |d| d.value)
    };
    let scale_out_cooldown_ms = cd(doc, s, "scale_out_cooldown", 60_000);
    let scale_in_cooldown_ms = cd(doc, s, "scale_in_cooldown", 300_000);
    let scale_in_stabilization_ms = cd(doc, s, "scale_in_stabilization", 300_000);
    let interval_ms = if s.has("interval") {
        positive_duration(doc, s, "interval")
    } else {
        None
    };
    let bounds = match (&min, &max) {
        (Some(lo), Some(hi)) if bounds_ok => u32::try_from(lo.value)
            .ok()
            .zip(u32::try_from(hi.value).ok()),
        _ => None,
    };
    let controls = crate::controls::read(doc, s, bounds);
    if !bounds_ok {
        return None;
    }
    Some(ScalingPolicy {
        name: name?,
        asg: asg?.value,
        min: u32::try_from(min?.value).ok()?,
        max: u32::try_from(max?.value).ok()?,
        expr: q?,
        mode: mode?,
        scale_out_cooldown_ms,
        scale_in_cooldown_ms,
        scale_in_stabilization_ms,
        interval_ms,
        controls: controls?,
    })
}

fn read_steps(doc: &mut Doc<'_>, objs: Vec<Obj<'_, '_>>, path: &str) -> Option<Vec<Step>> {
    let mut steps = Vec::new();
    let mut good = true;
    for mut o in objs {
        let spath = o.path.clone();
        let lower = o.float(doc, "lower");
        let upper = o.float(doc, "upper");
        let adjust = o.int(doc, "adjust");
        if !o.has("adjust") {
            doc.error_at(
                o.span().start,
                format!("{spath}.adjust: missing required key"),
            );
            good = false;
        }
        if let (Some(l), Some(u)) = (&lower, &upper) {
            if l.value >= u.value {
                doc.error_at(
                    l.span.start,
                    format!(
                        "{spath}: lower ({}) must be below upper ({})",
                        l.value, u.value
                    ),
                );
                good = false;
            }
        }
        if lower.is_none() && upper.is_none() && !o.has("lower") && !o.has("upper") {
            doc.error_at(
                o.span().start,
                format!("{spath}: give lower, upper or both"),
            );
            good = false;
        }
        if let Some(a) = &adjust {
            if a.value.unsigned_abs() > u64::from(u32::MAX) {
                doc.error_at(a.span.start, format!("{spath}.adjust: out of range"));
                good = false;
            }
            if a.value == 0 {
                doc.error_at(a.span.start, format!("{spath}.adjust: must not be zero"));
                good = false;
            }
        }
        let span = o.span().start;
        o.finish(doc);
        if let Some(a) = adjust {
            steps.push((
                span,
                Step {
                    lower: lower.map(|l| l.value),
                    upper: upper.map(|u| u.value),
                    adjust: a.value,
                },
            ));
        }
    }
    steps.sort_by(|a, b| {
        a.1.lower
            .unwrap_or(f64::NEG_INFINITY)
            .total_cmp(&b.1.lower.unwrap_or(f64::NEG_INFINITY))
    });
    for w in steps.windows(2) {
        let (a, b) = (&w[0].1, &w[1].1);
        let a_hi = a.upper.unwrap_or(f64::INFINITY);
        let b_lo = b.lower.unwrap_or(f64::NEG_INFINITY);
        if b_lo < a_hi {
            doc.error_at(
                w[1].0,
                format!(
                    "{path}.step: steps [{:?}, {:?}) and [{:?}, {:?}) overlap",
                    a.lower, a.upper, b.lower, b.upper
                ),
            );
            good = false;
        }
    }
    good.then(|| steps.into_iter().map(|(_, s)| s).collect())
}

fn read_replace(
    doc: &mut Doc<'_>,
    r: &mut Obj<'_, '_>,
    seen: &mut HashMap<String, usize>,
) -> Option<ReplacePolicy> {
    let path = r.path.clone();
    let name = unique_name(doc, r, seen, "replace policy");
    let asg = r.req_str(doc, "asg");
    let expr = r.req_str(doc, "expr");
    let q = expr.as_ref().and_then(|e| {
        parse_expr(
            doc,
            e,
            &format!("{path}.expr"),
            &[ValueType::Vector],
            "a replace policy's",
        )
    });
    let for_ms = r.duration(doc, "for").map_or(0, |d| d.value);
    let max_fraction = fraction(doc, r, "max_fraction", Some(0.2));
    let window_ms = if r.has("window") {
        positive_duration(doc, r, "window")
    } else {
        Some(600_000)
    };
    let fail_open_fraction = fraction(doc, r, "fail_open_fraction", Some(0.5));
    let az_aware = r.bool(doc, "az_aware").is_some_and(|b| b.value);
    let interval_ms = if r.has("interval") {
        positive_duration(doc, r, "interval")
    } else {
        None
    };
    if let (Some(m), Some(f)) = (max_fraction, fail_open_fraction) {
        if m > f {
            doc.error_at(r.span().start, format!("{path}: max_fraction ({m}) above fail_open_fraction ({f}) could replace a group that is failing as a whole"));
            return None;
        }
    }
    Some(ReplacePolicy {
        name: name?,
        asg: asg?.value,
        expr: q?,
        for_ms,
        max_fraction: max_fraction?,
        window_ms: window_ms?,
        fail_open_fraction: fail_open_fraction?,
        interval_ms,
        az_aware,
    })
}

/// The receiver names an aggregator config defines (`[[receiver]] name = ...`), for checking the
/// receivers rule files name. Other keys are the aggregator's to validate.
pub fn receivers_from_config(path: &str, text: &str) -> Result<Vec<String>, Vec<Diagnostic>> {
    let mut doc = Doc::new(path, text);
    let Some(root) = doc.parse() else {
        return Err(doc.into_errors());
    };
    let mut top = Obj::new(root.get_ref(), root.span(), "");
    let mut names = Vec::new();
    for mut r in top.tables(&mut doc, "receiver") {
        if let Some(n) = r.req_str(&mut doc, "name") {
            names.push(n.value);
        }
    }
    let errors = doc.into_errors();
    if errors.is_empty() {
        Ok(names)
    } else {
        Err(errors)
    }
}

/// Loads several files, also checking names that must be unique across files.
pub fn load_all(
    files: &[(String, String)],
    ctx: &Context,
) -> Result<Vec<RuleFile>, Vec<Diagnostic>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (path, text) in files {
        match load(path, text, ctx) {
            Ok(f) => out.push(f),
            Err(e) => errors.extend(e),
        }
    }
    // Policies on one group must agree on its bounds: combining [2, 5] with [10, 20] has no
    // meaning.
    let mut bounds: HashMap<&str, (u32, u32, &str, &str)> = HashMap::new();
    for f in &out {
        for p in &f.scaling {
            match bounds.get(p.asg.as_str()) {
                Some((lo, hi, other, file)) if (*lo, *hi) != (p.min, p.max) => errors.push(Diagnostic {
                    file: f.path.clone(),
                    line: 1,
                    column: 1,
                    message: format!(
                        "scaling policy {:?} bounds {} to [{}, {}] but {other:?} (in {file}) to [{lo}, {hi}]: policies on one group must agree",
                        p.name, p.asg, p.min, p.max
                    ),
                }),
                Some(_) => {}
                None => {
                    bounds.insert(&p.asg, (p.min, p.max, &p.name, &f.path));
                }
            }
        }
    }
    // A schedule bounds Vigil's decisions for a group: it needs a policy that scales it, and a
    // name of its own (the decisions and the API say which ran).
    let mut schedule_names: HashMap<&str, &str> = HashMap::new();
    for f in &out {
        for sc in &f.schedules {
            if let Some(other) = schedule_names.insert(&sc.name, &f.path) {
                errors.push(Diagnostic {
                    file: f.path.clone(),
                    line: 1,
                    column: 1,
                    message: format!("schedule {:?} is also defined in {other}", sc.name),
                });
            }
            if !out
                .iter()
                .any(|g| g.scaling.iter().any(|p| p.asg == sc.asg))
            {
                errors.push(Diagnostic {
                    file: f.path.clone(),
                    line: 1,
                    column: 1,
                    message: format!(
                        "schedule {:?}: no scaling policy scales {:?}",
                        sc.name, sc.asg
                    ),
                });
            }
        }
    }
    let mut seen: HashMap<(&str, &str), &str> = HashMap::new();
    for f in &out {
        for (kind, name) in f
            .scaling
            .iter()
            .map(|s| ("scaling policy", s.name.as_str()))
            .chain(
                f.replace
                    .iter()
                    .map(|r| ("replace policy", r.name.as_str())),
            )
        {
            if let Some(other) = seen.insert((kind, name), &f.path) {
                errors.push(Diagnostic {
                    file: f.path.clone(),
                    line: 1,
                    column: 1,
                    message: format!("{kind} {name:?} is also defined in {other}"),
                });
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `*.good.toml` loads; every `*.bad.toml` fails with exactly the errors in the
    /// `*.bad.err` file beside it (validated with the receivers `oncall` defined).
    #[test]
    fn fixtures() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rules");
        let ctx = Context {
            receivers: Some(vec!["oncall".into()]),
        };
        let mut seen = 0;
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if !name.ends_with(".toml") {
                continue;
            }
            seen += 1;
            let text = std::fs::read_to_string(&p).unwrap();
            let res = load(&name, &text, &ctx);
            if name.ends_with(".good.toml") {
                if let Err(e) = res {
                    let e: Vec<String> = e.iter().map(|d| d.to_string()).collect();
                    panic!("{name} should load:\n{}", e.join("\n"));
                }
            } else {
                let want = std::fs::read_to_string(p.with_extension("err")).unwrap();
                let got = match res {
                    Ok(_) => panic!("{name} should fail"),
                    Err(e) => e.iter().map(|d| format!("{d}\n")).collect::<String>(),
                };
                assert_eq!(
                    got, want,
                    "{name}: errors differ\n--- got\n{got}--- want\n{want}"
                );
            }
        }
        assert!(seen >= 4);
    }

    #[test]
    fn positions_survive_escapes_and_multibyte_text() {
        let text = "[[group]]\nname = \"g\"\n[[group.alert]]\nalert = \"A\"\nexpr = \"up == 0\"\nannotations = { summary = \"Disk \\\"/\\\" at 95% — {{ $value\" }\n";
        let e = load("f.toml", text, &Context::default()).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        // `{{` sits after `Disk "/" at 95% — ` (two escapes, one 3-byte dash).
        let line6 = text.lines().nth(5).unwrap();
        let col = line6[..line6.find("{{").unwrap()].chars().count() + 1;
        assert_eq!((e[0].line, e[0].column), (6, col), "{}", e[0]);
    }

    #[test]
    fn rules_keep_file_order_across_record_and_alert() {
        let text = "[[group]]\nname = \"g\"\n[[group.alert]]\nalert = \"A\"\nexpr = \"up == 0\"\n[[group.record]]\nrecord = \"r\"\nexpr = \"up\"\n";
        let f = load("f.toml", text, &Context::default()).unwrap();
        let names: Vec<&str> = f.groups[0].rules.iter().map(|r| r.name()).collect();
        assert_eq!(names, ["A", "r"]);
    }
}
