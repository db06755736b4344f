//! The Prometheus text exposition format 0.0.4 and OpenMetrics 1.0 text: a parser (what the agent
//! scrapes) and a writer (what `vigil-agent --once` prints and what `/metrics` serves).

use std::fmt::Write as _;

use crate::labels::{Labels, LabelsBuilder, METRIC_NAME};

/// Which text dialect a body is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`: timestamps are integer milliseconds.
    Prometheus,
    /// `application/openmetrics-text; version=1.0.0`: timestamps are float seconds, `# EOF` ends it.
    OpenMetrics,
}

impl Format {
    /// Chooses the dialect from an HTTP `Content-Type`, defaulting to the Prometheus format.
    pub fn from_content_type(ct: &str) -> Format {
        if ct.trim_start().starts_with("application/openmetrics-text") {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }
}

/// The declared type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    GaugeHistogram,
    Summary,
    Info,
    StateSet,
    Unknown,
}

impl MetricType {
    fn parse(s: &str) -> Option<MetricType> {
        Some(match s {
            "counter" => MetricType::Counter,
            "gauge" => MetricType::Gauge,
            "histogram" => MetricType::Histogram,
            "gaugehistogram" => MetricType::GaugeHistogram,
            "summary" => MetricType::Summary,
            "info" => MetricType::Info,
            "stateset" => MetricType::StateSet,
            "unknown" | "untyped" => MetricType::Unknown,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::GaugeHistogram => "gaugehistogram",
            MetricType::Summary => "summary",
            MetricType::Info => "info",
            MetricType::StateSet => "stateset",
            MetricType::Unknown => "untyped",
        }
    }
}

/// One parsed sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedSample {
    /// All labels, the metric name as `__name__`.
    pub labels: Labels,
    pub value: f64,
    /// Milliseconds since the epoch, when the exposition gave one.
    pub timestamp_ms: Option<i64>,
}

/// HELP/TYPE/UNIT of one family, as declared.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilyMeta {
    pub name: String,
    pub metric_type: MetricType,
    pub help: Option<String>,
    pub unit: Option<String>,
}

/// A whole parsed exposition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    pub samples: Vec<ParsedSample>,
    pub families: Vec<FamilyMeta>,
}

/// A parse error with the 1-based line and column where it was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Parses a text exposition in `format`.
pub fn parse(body: &str, format: Format) -> Result<Exposition, ParseError> {
    let mut out = Exposition::default();
    let mut saw_eof = false;
    for (idx, raw_line) in body.split('\n').enumerate() {
        let line_no = idx + 1;
        let line = raw_line.strip_suffix('\r').unwrap_or(raw_line);
        let err = |col: usize, msg: String| ParseError {
            line: line_no,
            column: col + 1,
            message: msg,
        };
        if saw_eof {
            if line.is_empty() && idx + 1 == body.split('\n').count() {
                continue;
            }
            return Err(err(0, "content after # EOF".into()));
        }
        if format == Format::Prometheus {
            if line.trim().is_empty() {
                continue;
            }
        } else if line.is_empty() {
            // A trailing newline after the last line yields one empty piece; any other is an error.
            if idx + 1 == body.split('\n').count() {
                continue;
            }
            return Err(err(0, "empty line in OpenMetrics exposition".into()));
        }
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(rest) = trimmed.strip_prefix('#') {
            if format == Format::OpenMetrics && rest == " EOF" {
                saw_eof = true;
                continue;
            }
            parse_comment(rest, format, &mut out.families)
                .map_err(|(c, m)| err(indent + 1 + c, m))?;
            continue;
        }
        let s = parse_sample_line(trimmed, format).map_err(|(c, m)| err(indent + c, m))?;
        out.samples.push(s);
    }
    if format == Format::OpenMetrics && !saw_eof {
        return Err(ParseError {
            line: body.lines().count().max(1),
            column: 1,
            message: "OpenMetrics exposition does not end with # EOF".into(),
        });
    }
    Ok(out)
}

fn family<'a>(families: &'a mut Vec<FamilyMeta>, name: &str) -> &'a mut FamilyMeta {
    if let Some(i) = families.iter().position(|f| f.name == name) {
        return &mut families[i];
    }
    families.push(FamilyMeta {
        name: name.to_string(),
        metric_type: MetricType::Unknown,
        help: None,
        unit: None,
    });
    let last = families.len() - 1;
    &mut families[last]
}

/// Parses the text after `#`. Comments other than HELP/TYPE/UNIT are ignored in the Prometheus
/// format and refused in OpenMetrics.
fn parse_comment(
    rest: &str,
    format: Format,
    families: &mut Vec<FamilyMeta>,
) -> Result<(), (usize, String)> {
    let body = rest.strip_prefix(' ').unwrap_or(rest);
    let off = rest.len() - body.len();
    let (kw, after) = body.split_once(' ').unwrap_or((body, ""));
    if !matches!(kw, "HELP" | "TYPE" | "UNIT") {
        return match format {
            Format::Prometheus => Ok(()),
            Format::OpenMetrics => Err((off, format!("unexpected comment keyword {kw:?}"))),
        };
    }
    let after_off = off + kw.len() + 1;
    let (name, value) = after.split_once(' ').unwrap_or((after, ""));
    if !is_valid_metric_name(name) {
        return Err((after_off, format!("invalid metric name {name:?} in # {kw}")));
    }
    match kw {
        "HELP" => family(families, name).help = Some(unescape_help(value)),
        "UNIT" => family(families, name).unit = Some(value.to_string()),
        _ => {
            let t = MetricType::parse(value).ok_or_else(|| {
                (
                    after_off + name.len() + 1,
                    format!("unknown metric type {value:?}"),
                )
            })?;
            family(families, name).metric_type = t;
        }
    }
    Ok(())
}

fn unescape_help(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('\\') => out.push('\\'),
                Some('"') => out.push('"'),
                Some(o) => {
                    out.push('\\');
                    out.push(o);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Splits a sample line into its series part (`name{labels}`, quotes respected) and the rest
/// (value, optional timestamp, optional exemplar). Comments and blank lines give `None`. Lets a
/// scraper cache label sets by the series text and skip re-parsing labels it has seen.
pub fn split_series(line: &str) -> Option<(&str, &str)> {
    let t = line.trim_start();
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    let b = t.as_bytes();
    let mut i = 0;
    while i < b.len() && b[i] != b'{' && b[i] != b' ' && b[i] != b'\t' {
        i += 1;
    }
    if i < b.len() && b[i] == b'{' {
        let mut in_q = false;
        i += 1;
        while i < b.len() {
            match b[i] {
                b'\\' if in_q => i += 1,
                b'"' => in_q = !in_q,
                b'}' if !in_q => {
                    i += 1;
                    break;
                }
                _ => {}
            }
            i += 1;
        }
    }
    Some((&t[..i.min(t.len())], &t[i.min(t.len())..]))
}

/// Parses one sample line (see [`parse`] for whole expositions).
pub fn parse_line(line: &str, format: Format) -> Result<ParsedSample, ParseError> {
    parse_sample_line(line.trim_start(), format).map_err(|(c, m)| ParseError {
        line: 1,
        column: c + 1,
        message: m,
    })
}

fn parse_sample_line(line: &str, format: Format) -> Result<ParsedSample, (usize, String)> {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len()
        && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
    {
        i += 1;
    }
    let name = &line[..i];
    if !is_valid_metric_name(name) {
        return Err((0, format!("invalid metric name {name:?}")));
    }
    let mut b = LabelsBuilder::new();
    b.set(METRIC_NAME, name);
    if i < bytes.len() && bytes[i] == b'{' {
        i = parse_label_block(line, i + 1, &mut b)?;
    }
    let rest = &line[i..];
    if !rest.starts_with([' ', '\t']) {
        return Err((i, "expected a space before the value".into()));
    }
    let (main, _exemplar) = match (format, rest.find(" # ")) {
        (Format::OpenMetrics, Some(p)) => (&rest[..p], Some(&rest[p + 3..])),
        _ => (rest, None),
    };
    let mut fields = main.split_ascii_whitespace();
    let value_str = fields.next().ok_or((i, "missing value".to_string()))?;
    let value =
        parse_float(value_str).ok_or_else(|| (i + 1, format!("invalid value {value_str:?}")))?;
    let timestamp_ms = match fields.next() {
        None => None,
        Some(ts) => Some(match format {
            Format::Prometheus => ts
                .parse::<i64>()
                .map_err(|_| (i + 1, format!("invalid timestamp {ts:?}")))?,
            Format::OpenMetrics => {
                let secs = parse_float(ts)
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| (i + 1, format!("invalid timestamp {ts:?}")))?;
                (secs * 1000.0).round() as i64
            }
        }),
    };
    if let Some(extra) = fields.next() {
        return Err((
            i + 1,
            format!("unexpected text {extra:?} after the timestamp"),
        ));
    }
    Ok(ParsedSample {
        labels: b.build(),
        value,
        timestamp_ms,
    })
}

/// Parses `name="value",...}` starting after the `{`; returns the index after the `}`.
fn parse_label_block(
    line: &str,
    mut i: usize,
    b: &mut LabelsBuilder,
) -> Result<usize, (usize, String)> {
    let bytes = line.as_bytes();
    let mut seen: Vec<String> = Vec::new();
    loop {
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        if i >= bytes.len() {
            return Err((i, "unterminated label set".into()));
        }
        if bytes[i] == b'}' {
            return Ok(i + 1);
        }
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        let lname = &line[start..i];
        if !is_valid_label_name(lname) {
            return Err((start, format!("invalid label name {lname:?}")));
        }
        if seen.iter().any(|s| s == lname) {
            return Err((start, format!("duplicate label name {lname:?}")));
        }
        seen.push(lname.to_string());
        if bytes.get(i) != Some(&b'=') {
            return Err((i, format!("expected '=' after label name {lname:?}")));
        }
        i += 1;
        if bytes.get(i) != Some(&b'"') {
            return Err((i, "expected '\"' to open the label value".into()));
        }
        i += 1;
        let mut value = String::new();
        loop {
            let Some(c) = line[i..].chars().next() else {
                return Err((i, "unterminated label value".into()));
            };
            i += c.len_utf8();
            match c {
                '"' => break,
                '\\' => {
                    let e = line[i..]
                        .chars()
                        .next()
                        .ok_or((i, "unterminated escape".to_string()))?;
                    i += e.len_utf8();
                    match e {
                        'n' => value.push('\n'),
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        other => {
                            return Err((i - 1, format!("invalid escape \\{other} in label value")))
                        }
                    }
                }
                c => value.push(c),
            }
        }
        b.set(lname, value);
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        match bytes.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => return Ok(i + 1),
            _ => return Err((i, "expected ',' or '}' after a label".into())),
        }
    }
}

/// Parses a sample value as both formats write them (`NaN`, `+Inf`, `-Inf`, Go float syntax).
pub fn parse_float(s: &str) -> Option<f64> {
    match s {
        "NaN" | "nan" => Some(f64::NAN),
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        _ => {
            let ok = s.bytes().all(|c| {
                c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-' | b'_')
            });
            if !ok {
                return None;
            }
            s.replace('_', "").parse::<f64>().ok()
        }
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_valid_metric_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_valid_label_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Escapes a label value for the text format (`\\`, `\"`, `\n`).
pub fn escape_label_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Formats a value as Prometheus does (`NaN`, `+Inf`, `-Inf`, shortest round-trip otherwise).
pub fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// Writes samples in the Prometheus text format 0.0.4, with `# HELP` and `# TYPE` lines for each
/// family that has metadata. Samples are grouped by family (keeping their order within one), as
/// the format requires.
pub fn write(samples: &[ParsedSample], families: &[FamilyMeta]) -> String {
    let mut out = String::new();
    let mut current: Option<String> = None;
    let family_key = |s: &ParsedSample| -> String {
        let name = s.labels.metric_name().unwrap_or("");
        families
            .iter()
            .find(|f| name == f.name || family_of(name) == f.name)
            .map_or_else(|| name.to_string(), |f| f.name.clone())
    };
    let mut order: Vec<(String, usize)> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| (family_key(s), i))
        .collect();
    // First appearance decides a family's place; within a family the input order is kept.
    let mut first: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (k, i) in &order {
        first.entry(k.clone()).or_insert(*i);
    }
    order.sort_by_key(|(k, i)| (first[k], *i));
    for s in order.iter().map(|(_, i)| &samples[*i]) {
        let name = s.labels.metric_name().unwrap_or("");
        let fam = families
            .iter()
            .find(|f| name == f.name || family_of(name) == f.name);
        let fam_name = fam.map_or(name, |f| f.name.as_str());
        if current.as_deref() != Some(fam_name) {
            if let Some(f) = fam {
                if let Some(h) = &f.help {
                    let h = h.replace('\\', "\\\\").replace('\n', "\\n");
                    let _ = writeln!(out, "# HELP {} {}", f.name, h);
                }
                let _ = writeln!(out, "# TYPE {} {}", f.name, f.metric_type.as_str());
            }
            current = Some(fam_name.to_string());
        }
        out.push_str(name);
        let rest: Vec<_> = s.labels.iter().filter(|l| l.name != METRIC_NAME).collect();
        if !rest.is_empty() {
            out.push('{');
            for (i, l) in rest.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{}=\"{}\"", l.name, escape_label_value(l.value));
            }
            out.push('}');
        }
        let _ = write!(out, " {}", format_float(s.value));
        if let Some(ts) = s.timestamp_ms {
            let _ = write!(out, " {ts}");
        }
        out.push('\n');
    }
    out
}

/// The family a sample name belongs to, stripping the suffixes histograms and summaries add.
fn family_of(name: &str) -> &str {
    for suffix in ["_bucket", "_count", "_sum", "_total", "_created", "_info"] {
        if let Some(base) = name.strip_suffix(suffix) {
            return base;
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROM: &str = r#"# HELP http_requests_total The total number of HTTP requests.
# TYPE http_requests_total counter
http_requests_total{method="post",code="200"} 1027 1395066363000
http_requests_total{method="post",code="400"}    3 1395066363000

# A normal comment.
msdos_file_access_time_seconds{path="C:\\DIR\\FILE.TXT",error="Cannot find file:\n\"FILE.TXT\""} 1.458255915e9
metric_without_timestamp_and_labels 12.47
something_weird{problem="division by zero"} +Inf -3982045
# TYPE rpc_duration_seconds summary
rpc_duration_seconds{quantile="0.5"} NaN
rpc_duration_seconds_count 2693
"#;

    #[test]
    fn parses_the_reference_example() {
        let e = parse(PROM, Format::Prometheus).unwrap();
        assert_eq!(e.samples.len(), 7);
        assert_eq!(e.samples[0].labels.get("code"), Some("200"));
        assert_eq!(e.samples[0].timestamp_ms, Some(1_395_066_363_000));
        assert_eq!(e.samples[2].labels.get("path"), Some(r"C:\DIR\FILE.TXT"));
        assert_eq!(
            e.samples[2].labels.get("error"),
            Some("Cannot find file:\n\"FILE.TXT\"")
        );
        assert_eq!(e.samples[4].value, f64::INFINITY);
        assert_eq!(e.samples[4].timestamp_ms, Some(-3_982_045));
        assert!(e.samples[5].value.is_nan());
        assert_eq!(e.families[0].metric_type, MetricType::Counter);
        assert_eq!(e.families[1].metric_type, MetricType::Summary);
    }

    #[test]
    fn parses_openmetrics_with_exemplars_and_second_timestamps() {
        let body = "# TYPE foo counter\n# UNIT foo seconds\nfoo_total{a=\"b\"} 17.0 1520879607.789 # {trace_id=\"x\"} 1 1520879607.7\n# EOF\n";
        let e = parse(body, Format::OpenMetrics).unwrap();
        assert_eq!(e.samples[0].timestamp_ms, Some(1_520_879_607_789));
        assert_eq!(e.families[0].unit.as_deref(), Some("seconds"));
        assert!(
            parse("foo 1\n", Format::OpenMetrics).is_err(),
            "missing # EOF"
        );
        assert!(
            parse("# EOF\nfoo 1\n", Format::OpenMetrics).is_err(),
            "content after # EOF"
        );
    }

    #[test]
    fn malformed_lines_name_line_and_column() {
        let cases = [
            ("ok 1\nbad{a=\"1\" 2\n", 2, "expected ',' or '}'"),
            ("1bad 1\n", 1, "invalid metric name"),
            ("m{a=1} 2\n", 1, "expected '\"'"),
            ("m{a=\"1\",a=\"2\"} 2\n", 1, "duplicate label name"),
            ("m abc\n", 1, "invalid value"),
            ("m 1 2 3\n", 1, "unexpected text"),
            ("m{a=\"x\\q\"} 1\n", 1, "invalid escape"),
            ("# TYPE m bogus\n", 1, "unknown metric type"),
        ];
        for (body, line, msg) in cases {
            let e = parse(body, Format::Prometheus).unwrap_err();
            assert_eq!(e.line, line, "{body:?}: {e}");
            assert!(e.message.contains(msg), "{body:?}: {e}");
        }
    }

    #[test]
    fn writer_round_trips() {
        let e = parse(PROM, Format::Prometheus).unwrap();
        let text = write(&e.samples, &e.families);
        let back = parse(&text, Format::Prometheus).unwrap();
        assert_eq!(back.samples.len(), e.samples.len());
        for (a, b) in e.samples.iter().zip(&back.samples) {
            assert_eq!(a.labels, b.labels);
            assert_eq!(a.timestamp_ms, b.timestamp_ms);
            assert!(a.value == b.value || (a.value.is_nan() && b.value.is_nan()));
        }
        assert!(text.contains("# TYPE http_requests_total counter"));
    }

    #[test]
    fn series_split_respects_quotes() {
        assert_eq!(
            split_series("a{x=\"}{ \\\" \"} 1 2"),
            Some(("a{x=\"}{ \\\" \"}", " 1 2"))
        );
        assert_eq!(split_series("up 1"), Some(("up", " 1")));
        assert_eq!(split_series("# HELP x"), None);
        assert_eq!(split_series("   "), None);
        assert!(parse_line("up{a=\"1\"} 3 1000", Format::Prometheus).is_ok());
    }

    #[test]
    fn writer_groups_families() {
        let e = parse("a{x=\"1\"} 1\nb 2\na{x=\"2\"} 3\n", Format::Prometheus).unwrap();
        let fams = vec![FamilyMeta {
            name: "a".into(),
            metric_type: MetricType::Gauge,
            help: None,
            unit: None,
        }];
        let text = write(&e.samples, &fams);
        assert_eq!(text, "# TYPE a gauge\na{x=\"1\"} 1\na{x=\"2\"} 3\nb 2\n");
    }

    #[test]
    fn float_formatting() {
        assert_eq!(format_float(1.0), "1");
        assert_eq!(format_float(0.5), "0.5");
        assert_eq!(format_float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(parse_float("1e3"), Some(1000.0));
        assert_eq!(parse_float("0x1"), None);
    }
}
