//! Runs Prometheus's own PromQL test files (`../shared/peers/promqltest/*.test`, read as data, never
//! copied here) against Vigil's engine. Prints `passed N, failed N, unsupported N` per file and in
//! total, lists every failure, and fails if any block that is not unsupported fails, or if fewer
//! than 95% of the blocks that need neither native histograms nor experimental features pass.
//!
//! Native histograms (`{{…}}` series and `load_with_nhcb`'s converted classic histograms) are
//! loaded into the storage and compared as Prometheus compares them. A block is unsupported when
//! the engine refuses something it needs as unsupported (a native histogram where an operation
//! does not take one), or when it fails and uses an experimental feature (an experimental
//! function, or syntax the parser flags as such). Blocks using experimental features that pass are
//! counted as passed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use vigil_rules::promql::{self, Engine, EngineOpts, MemStorage, Severity, Value};
use vigil_wire::histogram::{FloatHistogram, HSample, Span, CUSTOM_BUCKETS_SCHEMA};
use vigil_wire::{Labels, Sample, STALE_NAN};

use vigil_rules::series::{self, parse_series_desc, parse_values, Point};

/// A duration as the test files write them: a Prometheus duration, or a bare number of seconds.
fn parse_duration_ms(s: &str) -> Result<i64, String> {
    match s.parse::<i64>() {
        Ok(secs) => Ok(secs * 1000),
        Err(_) => vigil_rules::duration::parse_ms(s),
    }
}

#[derive(Default, Clone, Copy)]
struct Counts {
    passed: usize,
    failed: usize,
    unsupported_native: usize,
    unsupported_experimental: usize,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.passed += o.passed;
        self.failed += o.failed;
        self.unsupported_native += o.unsupported_native;
        self.unsupported_experimental += o.unsupported_experimental;
    }
    fn unsupported(&self) -> usize {
        self.unsupported_native + self.unsupported_experimental
    }
}

enum Outcome {
    Pass,
    Fail(String),
    Native(String),
    Experimental(String),
}

struct Block {
    line: usize,
    header: String,
    body: Vec<String>,
}

struct Ctx {
    storage: MemStorage,
}

fn main() {
    let dir = std::env::var_os("PROMQLTEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/peers/promqltest")
        });
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the peer suite at {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "test"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .test files in {}", dir.display());
    let only = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let verbose = std::env::var_os("PROMQLTEST_VERBOSE").is_some();
    let mut total = Counts::default();
    let mut failures = String::new();
    let mut unsupported = String::new();
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        let c = run_file(&name, &text, &mut failures, &mut unsupported);
        println!(
            "{name}: passed {}, failed {}, unsupported {} (native histograms {}, experimental {})",
            c.passed,
            c.failed,
            c.unsupported(),
            c.unsupported_native,
            c.unsupported_experimental
        );
        total.add(c);
    }
    if verbose {
        println!("\nunsupported blocks:\n{unsupported}");
    }
    if !failures.is_empty() {
        println!("\nfailures:\n{failures}");
    }
    let base = total.passed + total.failed;
    let pct = if base == 0 {
        0.0
    } else {
        100.0 * total.passed as f64 / base as f64
    };
    println!(
        "\ntotal: passed {}, failed {}, unsupported {} (native histograms {}, experimental {}); passed {:.1}% of the blocks without native histograms or experimental features",
        total.passed,
        total.failed,
        total.unsupported(),
        total.unsupported_native,
        total.unsupported_experimental,
        pct
    );
    // The plain closing line CI reads.
    println!(
        "promqltest: {} passed, {} failed",
        total.passed, total.failed
    );
    if total.failed > 0 || (only.is_none() && pct < 95.0) {
        std::process::exit(1);
    }
}

fn indented(l: &str) -> bool {
    l.starts_with(' ') || l.starts_with('\t')
}

fn run_file(name: &str, text: &str, failures: &mut String, unsupported: &mut String) -> Counts {
    let lines: Vec<&str> = text.lines().collect();
    let mut ctx = Ctx {
        storage: MemStorage::new(),
    };
    let mut counts = Counts::default();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        let t = l.trim();
        if t.is_empty() || t.starts_with('#') {
            i += 1;
            continue;
        }
        let start = i;
        i += 1;
        let mut body = Vec::new();
        while i < lines.len()
            && (indented(lines[i]) || lines[i].trim_start().starts_with("expect"))
            && !lines[i].trim().is_empty()
        {
            let b = lines[i].trim();
            if !b.starts_with('#') {
                body.push(b.to_string());
            }
            i += 1;
        }
        let block = Block {
            line: start + 1,
            header: t.to_string(),
            body,
        };
        if t == "clear" {
            ctx.storage.clear();
        } else if let Some(rest) = t
            .strip_prefix("load_with_nhcb ")
            .or_else(|| t.strip_prefix("load "))
        {
            load(&mut ctx, rest, &block.body, t.starts_with("load_with_nhcb"));
        } else if t.starts_with("eval") {
            match run_eval(&ctx, &block) {
                Outcome::Pass => counts.passed += 1,
                Outcome::Fail(why) => {
                    counts.failed += 1;
                    let _ = writeln!(
                        failures,
                        "{name}:{}: {}\n    {}",
                        block.line,
                        block.header,
                        why.replace('\n', "\n    ")
                    );
                }
                Outcome::Native(why) => {
                    counts.unsupported_native += 1;
                    let _ = writeln!(
                        unsupported,
                        "{name}:{}: native histograms: {why}",
                        block.line
                    );
                }
                Outcome::Experimental(why) => {
                    counts.unsupported_experimental += 1;
                    let _ = writeln!(unsupported, "{name}:{}: experimental: {why}", block.line);
                }
            }
        } else {
            panic!("{name}:{}: unknown command {t:?}", start + 1);
        }
    }
    counts
}

fn load(ctx: &mut Ctx, interval: &str, body: &[String], nhcb: bool) {
    let step = parse_duration_ms(interval.trim()).expect("load interval");
    let mut floats: Vec<(Labels, Vec<(i64, f64)>)> = Vec::new();
    for line in body {
        let (labels, rest) =
            parse_series_desc(line).unwrap_or_else(|e| panic!("bad series {line:?}: {e}"));
        let points = parse_values(rest).unwrap_or_else(|e| panic!("bad values {line:?}: {e}"));
        let mut these = Vec::new();
        for (k, p) in points.into_iter().enumerate() {
            let ts = k as i64 * step;
            match p {
                Point::Value(v) => {
                    ctx.storage.add(labels.clone(), Sample::new(ts, v));
                    these.push((ts, v));
                }
                Point::Stale => ctx.storage.add(labels.clone(), Sample::new(ts, STALE_NAN)),
                Point::Histogram(h, _) => ctx
                    .storage
                    .add_histogram(labels.clone(), HSample::new(ts, *h)),
                Point::Omitted => {}
            }
        }
        floats.push((labels, these));
    }
    if nhcb {
        for (labels, samples) in classic_to_nhcb(&floats) {
            for (ts, h) in samples {
                ctx.storage
                    .add_histogram(labels.clone(), HSample::new(ts, h));
            }
        }
    }
}

/// `load_with_nhcb`: the classic histograms' `_bucket`, `_count` and `_sum` series of one load
/// also loaded as native histograms with custom buckets (Prometheus's `convertnhcb`), under
/// the family name without `le`.
fn classic_to_nhcb(
    series: &[(Labels, Vec<(i64, f64)>)],
) -> Vec<(Labels, Vec<(i64, FloatHistogram)>)> {
    #[derive(Default)]
    struct Temp {
        buckets: Vec<(f64, f64)>,
        count: Option<f64>,
        sum: f64,
    }
    let mut fams: std::collections::BTreeMap<Labels, std::collections::BTreeMap<i64, Temp>> =
        Default::default();
    for (labels, samples) in series {
        let name = labels.metric_name().unwrap_or("");
        let (kind, base) = if let Some(b) = name.strip_suffix("_bucket") {
            ("bucket", b)
        } else if let Some(b) = name.strip_suffix("_sum") {
            ("sum", b)
        } else if let Some(b) = name.strip_suffix("_count") {
            ("count", b)
        } else {
            continue;
        };
        let le = match kind {
            "bucket" => match labels.get("le").and_then(series::parse_number) {
                Some(le) if !le.is_nan() => Some(le),
                _ => continue,
            },
            _ => None,
        };
        let mut b = labels.to_builder();
        b.set("__name__", base);
        b.del("le");
        let fam = fams.entry(b.build()).or_default();
        for &(ts, v) in samples {
            let t = fam.entry(ts).or_default();
            match (kind, le) {
                ("bucket", Some(le)) => match t.buckets.iter_mut().find(|x| x.0 == le) {
                    Some(x) => x.1 = v,
                    None => t.buckets.push((le, v)),
                },
                ("count", _) => t.count = Some(v),
                _ => t.sum = v,
            }
        }
    }
    fams.into_iter()
        .map(|(labels, by_ts)| {
            let hs = by_ts
                .into_iter()
                .map(|(ts, mut t)| {
                    t.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                    let count = t
                        .count
                        .unwrap_or_else(|| t.buckets.last().map_or(0.0, |b| b.1));
                    if t.buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
                        t.buckets.push((f64::INFINITY, count));
                    }
                    let mut prev = 0.0;
                    let mut h = FloatHistogram {
                        schema: CUSTOM_BUCKETS_SCHEMA,
                        count,
                        sum: t.sum,
                        ..Default::default()
                    };
                    let mut counts = Vec::new();
                    for (le, c) in &t.buckets {
                        counts.push(c - prev);
                        prev = *c;
                        if le.is_finite() {
                            h.custom_values.push(*le);
                        }
                    }
                    h.positive_spans = vec![Span {
                        offset: 0,
                        length: counts.len() as u32,
                    }];
                    h.positive_buckets = counts;
                    h.compact(0);
                    (ts, h)
                })
                .collect();
            (labels, hs)
        })
        .collect()
}

/// The experimental features an expression text uses, if any.
fn experimental_feature(query: &str) -> Option<String> {
    let expr = promql_parser::parser::parse(query).ok();
    let mut found = None;
    if let Some(e) = &expr {
        find_experimental(e, &mut found);
    }
    if found.is_none() {
        for kw in [
            "step()",
            "range()",
            " anchored",
            " smoothed",
            "fill(",
            "fill_left(",
            "fill_right(",
            "info(",
        ] {
            if query.contains(kw) {
                found = Some(format!("syntax {}", kw.trim()));
            }
        }
        // Duration arithmetic inside brackets or after offset, e.g. [5m+1m] or offset (1m*2).
        let dur_expr = regex::Regex::new(
            r"\[[^\]]*[+*/()][^\]]*\]|offset\s*\(|offset\s+-?\d+[smhdwy]*\s*[+*/]",
        )
        .unwrap();
        if found.is_none() && dur_expr.is_match(query) && !query.contains(':') {
            found = Some("duration expressions".into());
        }
    }
    found
}

fn find_experimental(e: &promql_parser::parser::Expr, found: &mut Option<String>) {
    use promql_parser::parser::Expr;
    match e {
        Expr::Call(c) => {
            if c.func.experimental {
                *found = Some(format!("function {}()", c.func.name));
            }
            for a in &c.args.args {
                find_experimental(a, found);
            }
        }
        Expr::Aggregate(a) => {
            let op = a.op.to_string();
            if op == "limitk" || op == "limit_ratio" {
                *found = Some(format!("aggregation {op}"));
            }
            find_experimental(&a.expr, found);
            if let Some(p) = &a.param {
                find_experimental(p, found);
            }
        }
        Expr::Binary(b) => {
            find_experimental(&b.lhs, found);
            find_experimental(&b.rhs, found);
        }
        Expr::Paren(p) => find_experimental(&p.expr, found),
        Expr::Unary(u) => find_experimental(&u.expr, found),
        Expr::Subquery(s) => find_experimental(&s.expr, found),
        _ => {}
    }
}

struct Expect {
    fail: Option<Option<Matcher>>,
    ordered: bool,
    warn: Vec<Option<Matcher>>,
    info: Vec<Option<Matcher>>,
    no_warn: bool,
    no_info: bool,
    string: Option<String>,
    range_vector: Option<(i64, i64, i64)>,
    series: Vec<(Labels, Vec<Point>)>,
    scalar: Option<f64>,
}

enum Matcher {
    Exact(String),
    Regex(regex::Regex),
}

impl Matcher {
    fn matches(&self, s: &str) -> bool {
        match self {
            Matcher::Exact(m) => m == s,
            Matcher::Regex(r) => r.is_match(s),
        }
    }
}

fn parse_matcher(rest: &str) -> Option<Matcher> {
    let rest = rest.trim();
    if let Some(m) = rest.strip_prefix("msg:") {
        Some(Matcher::Exact(m.trim().to_string()))
    } else if let Some(r) = rest.strip_prefix("regex:") {
        let r = r.trim();
        Some(Matcher::Regex(
            regex::Regex::new(&format!("^(?:{})$", r))
                .or_else(|_| regex::Regex::new(r))
                .unwrap(),
        ))
    } else {
        None
    }
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    let inner = &s[1..s.len() - 1];
    if s.starts_with('`') {
        inner.to_string()
    } else {
        series::unescape_go(inner).unwrap_or_else(|_| inner.to_string())
    }
}

fn parse_expect(block: &Block, is_range: bool) -> Result<Expect, String> {
    let mut e = Expect {
        fail: None,
        ordered: false,
        warn: vec![],
        info: vec![],
        no_warn: false,
        no_info: false,
        string: None,
        range_vector: None,
        series: vec![],
        scalar: None,
    };
    let head = block.header.split_whitespace().next().unwrap_or("");
    match head {
        "eval_fail" => e.fail = Some(None),
        "eval_ordered" => e.ordered = true,
        "eval_warn" => e.warn.push(None),
        "eval_info" => e.info.push(None),
        _ => {}
    }
    for l in &block.body {
        if let Some(rest) = l.strip_prefix("expect ") {
            let rest = rest.trim();
            let (kind, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            match kind {
                "fail" => e.fail = Some(parse_matcher(tail)),
                "ordered" => e.ordered = true,
                "warn" => e.warn.push(parse_matcher(tail)),
                "info" => e.info.push(parse_matcher(tail)),
                "no_warn" => e.no_warn = true,
                "no_info" => e.no_info = true,
                "string" => e.string = Some(unquote(tail)),
                "range" => {
                    // range vector from A to B step S
                    let w: Vec<&str> = tail.split_whitespace().collect();
                    if w.len() == 7 {
                        e.range_vector = Some((
                            parse_time(w[2])?,
                            parse_time(w[4])?,
                            parse_duration_ms(w[6]).map_err(|x| x.to_string())?,
                        ));
                    } else {
                        return Err(format!("bad expect range line {l:?}"));
                    }
                }
                other => return Err(format!("unknown expect {other:?}")),
            }
            continue;
        }
        if !l.starts_with('{')
            && !l.contains('{')
            && series::parse_number(l.split_whitespace().next().unwrap_or("")).is_some()
            && l.split_whitespace().count() == 1
            && !is_range
        {
            e.scalar = series::parse_number(l.trim());
            continue;
        }
        let (labels, rest) = parse_series_desc(l)?;
        e.series.push((labels, parse_values(rest)?));
    }
    Ok(e)
}

fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(v) = s.parse::<f64>() {
        return Ok((v * 1000.0).round() as i64);
    }
    parse_duration_ms(s).map_err(|e| e.to_string())
}

fn float_eq(a: f64, b: f64) -> bool {
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let diff = (a - b).abs();
    let sum = a.abs() + b.abs();
    if a == 0.0 || b == 0.0 || sum < f64::MIN_POSITIVE {
        return diff < 1e-6 * f64::MIN_POSITIVE;
    }
    diff / sum.min(f64::MAX) < 1e-6
}

fn run_eval(ctx: &Ctx, block: &Block) -> Outcome {
    let h = &block.header;
    let words: Vec<&str> = h.split_whitespace().collect();
    // eval[_x] instant at T QUERY | eval[_x] range from A to B step S QUERY
    let (is_range, query, t, range) = if words.get(1) == Some(&"instant") {
        let at = words[3];
        let pos = h.find(" at ").unwrap() + 4 + at.len();
        (false, h[pos..].trim().to_string(), parse_time(at), None)
    } else if words.get(1) == Some(&"range") {
        let (a, b, s) = (words[3], words[5], words[7]);
        let pos = h.find(" step ").unwrap() + 6 + s.len();
        let r = (parse_time(a), parse_time(b), parse_duration_ms(s));
        (true, h[pos..].trim().to_string(), Ok(0), Some(r))
    } else {
        return Outcome::Fail(format!("cannot read eval header {h:?}"));
    };
    let t = match t {
        Ok(t) => t,
        Err(e) => return Outcome::Fail(e),
    };
    let exp = match parse_expect(block, is_range) {
        Ok(e) => e,
        Err(e) => return Outcome::Fail(format!("cannot read expectations: {e}")),
    };
    let experimental = experimental_feature(&query);
    let fail_or_experimental = |msg: String| match &experimental {
        Some(f) => Outcome::Experimental(format!("{f}: {msg}")),
        None => Outcome::Fail(msg),
    };
    let q = match promql::parse(&query) {
        Ok(q) => q,
        Err(e) => {
            if let Some(Some(m)) = &exp.fail {
                if m.matches(&e.message) {
                    return Outcome::Pass;
                }
            } else if exp.fail.is_some() {
                return Outcome::Pass;
            }
            if e.unsupported && e.message.contains("histogram") {
                return Outcome::Native(e.message);
            }
            return fail_or_experimental(format!("parse error: {e}"));
        }
    };
    let engine = Engine::new(EngineOpts::default());
    let range_ms = range
        .as_ref()
        .and_then(|r| r.0.clone().ok().zip(r.2.clone().ok()));
    let res = match range {
        None => engine.instant(&ctx.storage, &q, t),
        Some((a, b, s)) => match (a.clone(), b.clone(), s.clone()) {
            (Ok(a), Ok(b), Ok(s)) => engine.range(&ctx.storage, &q, a, b, s),
            _ => return Outcome::Fail("bad range header".into()),
        },
    };
    let res = match (res, &exp.fail) {
        (Err(e), Some(m)) => {
            let msg = e.to_string();
            return match m {
                Some(m) if !m.matches(&msg) => {
                    fail_or_experimental(format!("error {msg:?} does not match the expected one"))
                }
                _ => Outcome::Pass,
            };
        }
        (Ok(_), Some(_)) => {
            return fail_or_experimental("expected the query to fail, it succeeded".into())
        }
        (Err(promql::EvalError::Unsupported(m)), None) => {
            return if m.contains("histogram") {
                Outcome::Native(m)
            } else {
                fail_or_experimental(format!("unsupported: {m}"))
            }
        }
        (Err(e), None) => return fail_or_experimental(format!("query failed: {e}")),
        (Ok(r), None) => r,
    };
    // Annotations.
    let warns: Vec<&str> = res
        .annotations
        .iter()
        .filter(|a| a.severity == Severity::Warning)
        .map(|a| a.message.as_str())
        .collect();
    let infos: Vec<&str> = res
        .annotations
        .iter()
        .filter(|a| a.severity == Severity::Info)
        .map(|a| a.message.as_str())
        .collect();
    for (kind, expected, got, none) in [
        ("warn", &exp.warn, &warns, exp.no_warn),
        ("info", &exp.info, &infos, exp.no_info),
    ] {
        if none && !got.is_empty() {
            return fail_or_experimental(format!("expected no {kind} annotation, got {got:?}"));
        }
        for m in expected.iter() {
            let ok = match m {
                None => !got.is_empty(),
                Some(m) => got.iter().any(|g| m.matches(g)),
            };
            if !ok {
                return fail_or_experimental(format!("expected a {kind} annotation, got {got:?}"));
            }
        }
        if !expected.is_empty() && expected.iter().all(|m| m.is_some()) {
            for g in got.iter() {
                if !expected.iter().flatten().any(|m| m.matches(g)) {
                    return fail_or_experimental(format!("unexpected {kind} annotation {g:?}"));
                }
            }
        }
    }
    match compare(&res.value, &exp, is_range, range_ms) {
        Ok(()) => Outcome::Pass,
        Err(e) => fail_or_experimental(e),
    }
}

fn compare(
    v: &Value,
    exp: &Expect,
    is_range: bool,
    range: Option<(i64, i64)>,
) -> Result<(), String> {
    match v {
        Value::String(s) => match &exp.string {
            Some(e) if e == s => Ok(()),
            other => Err(format!("got string {s:?}, expected {other:?}")),
        },
        Value::Scalar(f) => {
            let e = exp.scalar.or_else(|| {
                exp.series
                    .first()
                    .and_then(|(_, p)| p.first().and_then(|x| x.value()))
            });
            match e {
                Some(e) if float_eq(e, *f) => Ok(()),
                other => Err(format!("got scalar {f}, expected {other:?}")),
            }
        }
        Value::Vector(vec) => {
            let show = |vec: &[promql::VectorSample]| -> Vec<String> {
                vec.iter()
                    .map(|s| format!("{} {}", s.labels, show_value(s.f, s.h.as_deref())))
                    .collect()
            };
            if exp.series.len() != vec.len() {
                return Err(format!(
                    "expected {} samples, got {}: {:?}",
                    exp.series.len(),
                    vec.len(),
                    show(vec)
                ));
            }
            for (i, (labels, pts)) in exp.series.iter().enumerate() {
                let want = pts.first().ok_or("expected sample without a value")?;
                let found = if exp.ordered {
                    vec.get(i).filter(|s| &s.labels == labels)
                } else {
                    vec.iter().find(|s| &s.labels == labels)
                };
                match found {
                    None => {
                        return Err(format!(
                            "expected {labels} {want:?} (position {i}), got {:?}",
                            show(vec)
                        ));
                    }
                    Some(s) if !point_eq(want, s.f, s.h.as_deref()) => {
                        return Err(format!(
                            "{labels}: expected {}, got {}",
                            show_point(want),
                            show_value(s.f, s.h.as_deref())
                        ))
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        Value::Matrix(m) => {
            let (start, step) = match (is_range, range, exp.range_vector) {
                (true, Some((s, st)), _) => (s, st),
                (false, _, Some((s, _, st))) => (s, st),
                _ => (0, 1),
            };
            if exp.series.len() != m.len() {
                let got: Vec<String> = m
                    .iter()
                    .map(|s| format!("{} [{}]", s.labels, fmt_points(s)))
                    .collect();
                return Err(format!(
                    "expected {} series, got {}: {got:?}",
                    exp.series.len(),
                    m.len()
                ));
            }
            for (labels, pts) in &exp.series {
                let Some(s) = m.iter().find(|s| &s.labels == labels) else {
                    let got: Vec<String> = m.iter().map(|s| s.labels.to_string()).collect();
                    return Err(format!("missing series {labels}; got {got:?}"));
                };
                let want: Vec<(i64, &Point)> = pts
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| !matches!(p, Point::Omitted))
                    .map(|(k, p)| (start + k as i64 * step, p))
                    .collect();
                let got = merged(s);
                let ok = want.len() == got.len()
                    && want
                        .iter()
                        .zip(&got)
                        .all(|(w, g)| w.0 == g.0 && point_eq(w.1, g.1, g.2));
                if !ok {
                    let w: Vec<String> = want
                        .iter()
                        .map(|(t, p)| format!("{}@{t}", show_point(p)))
                        .collect();
                    return Err(format!(
                        "{labels}: expected [{}], got [{}]",
                        w.join(" "),
                        fmt_points(s)
                    ));
                }
            }
            Ok(())
        }
    }
}

/// A range series' floats and histograms in time order: `(t, f, h)`.
fn merged(s: &promql::RangeSeries) -> Vec<(i64, f64, Option<&FloatHistogram>)> {
    let mut out: Vec<(i64, f64, Option<&FloatHistogram>)> = s
        .points
        .iter()
        .map(|p| (p.timestamp_ms, p.value, None))
        .chain(
            s.histograms
                .iter()
                .map(|h| (h.timestamp_ms, 0.0, Some(&*h.h))),
        )
        .collect();
    out.sort_by_key(|x| x.0);
    out
}

fn fmt_points(s: &promql::RangeSeries) -> String {
    merged(s)
        .iter()
        .map(|(t, f, h)| format!("{}@{t}", show_value(*f, *h)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn show_value(f: f64, h: Option<&FloatHistogram>) -> String {
    match h {
        Some(h) => format!("{h:?}"),
        None => f.to_string(),
    }
}

fn show_point(p: &Point) -> String {
    match p {
        Point::Value(v) => v.to_string(),
        Point::Histogram(h, _) => format!("{h:?}"),
        other => format!("{other:?}"),
    }
}

/// Whether a result sample is the expected point: floats as [`float_eq`]; histograms as
/// Prometheus compares them (layout exactly, counts within 1e-6, custom bounds when expected,
/// the hint only where the test gave one).
fn point_eq(want: &Point, f: f64, h: Option<&FloatHistogram>) -> bool {
    match (want, h) {
        (Point::Value(v), None) => float_eq(*v, f),
        (Point::Histogram(w, hinted), Some(h)) => {
            let mut got = h.clone();
            if !w.is_custom() {
                got.custom_values.clone_from(&w.custom_values);
            }
            w.approx_eq(&got, 1e-6) && (!hinted || w.hint == h.hint)
        }
        _ => false,
    }
}
