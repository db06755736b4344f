//! `[[import.cloudwatch]]`: CloudWatch metrics polled with GetMetricData into the window, named
//! as Prometheus's `cloudwatch_exporter` names them.

use vigil_config::tomlread::{Doc, Obj};

use super::Config;

/// One `[[import.cloudwatch]]`: a metric (with its dimensions, `"*"` for any value) and the
/// statistics read of it, each a series.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudWatchImport {
    pub namespace: String,
    pub metric: String,
    /// Dimension name and value, in the file's order; a value `"*"` matches any (ListMetrics).
    pub dimensions: Vec<(String, String)>,
    /// `Sum`, `Average`, `Maximum`, `Minimum`, `SampleCount`, or a percentile `p99`, `p99.9`.
    pub statistics: Vec<String>,
    pub period_ms: i64,
    /// How long after a period ends it is read (CloudWatch publishes late).
    pub delay_ms: i64,
    /// `name`: the series' name for every statistic (one statistic only), else
    /// [`series_name`]'s.
    pub name: Option<String>,
}

impl CloudWatchImport {
    /// The series name a statistic's samples get.
    pub fn series_name(&self, statistic: &str) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| series_name(&self.namespace, &self.metric, statistic))
    }
}

/// `cloudwatch_exporter`'s snake case: an `_` before an upper-case letter that follows a
/// lower-case letter or a digit, then everything lower case (`CPUUtilization` →
/// `cpuutilization`, `HTTPCode_Target_5XX_Count` → `httpcode_target_5_xx_count`).
pub fn snake_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    let mut prev: Option<char> = None;
    for c in s.chars() {
        if c.is_ascii_uppercase()
            && prev.is_some_and(|p| p.is_ascii_lowercase() || p.is_ascii_digit())
        {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
        prev = Some(c);
    }
    out
}

/// `cloudwatch_exporter`'s safe name: every character but `[a-zA-Z0-9:_]` becomes `_`, and runs
/// of `_` one.
pub fn safe_name(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = if c.is_ascii_alphanumeric() || c == ':' || c == '_' {
            c
        } else {
            '_'
        };
        if !(c == '_' && out.ends_with('_')) {
            out.push(c);
        }
    }
    out
}

/// `aws_applicationelb_request_count_per_target_sum`: the namespace lower-cased, the metric and
/// the statistic in snake case (`AWS/RDS` `CPUUtilization` `Average` →
/// `aws_rds_cpuutilization_average`; a custom `CWAgent` → `cwagent_...`).
pub fn series_name(namespace: &str, metric: &str, statistic: &str) -> String {
    format!(
        "{}_{}_{}",
        safe_name(&namespace.to_lowercase()),
        safe_name(&snake_case(metric)),
        safe_name(&snake_case(statistic))
    )
}

/// A dimension's label name: `TargetGroup` → `target_group`, `DBInstanceIdentifier` →
/// `dbinstance_identifier`.
pub fn label_name(dimension: &str) -> String {
    safe_name(&snake_case(dimension))
}

/// Why a namespace is not one CloudWatch takes (1 to 255 printable ASCII characters, not
/// beginning with `:`, and something after `AWS/`).
fn bad_namespace(ns: &str) -> Option<&'static str> {
    if ns.is_empty() || ns.len() > 255 {
        return Some("1 to 255 characters");
    }
    if !ns.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Some("printable ASCII only");
    }
    if ns.starts_with(':') || ns.trim() != ns {
        return Some("not beginning with ':' nor with or after a space");
    }
    if ns == "AWS/" || ns.contains("//") || ns.ends_with('/') {
        return Some("a name after each '/'");
    }
    None
}

fn good_statistic(s: &str) -> bool {
    match s {
        "Sum" | "Average" | "Maximum" | "Minimum" | "SampleCount" => true,
        _ => s
            .strip_prefix('p')
            .and_then(|n| n.parse::<f64>().ok())
            .is_some_and(|p| (0.0..=100.0).contains(&p) && !s.contains(['e', 'E', '+', '-'])),
    }
}

fn parse_one(doc: &mut Doc<'_>, mut t: Obj<'_, '_>) -> Option<CloudWatchImport> {
    let path = t.path.clone();
    let namespace = t.req_str(doc, "namespace");
    if let Some(n) = &namespace {
        if let Some(why) = bad_namespace(&n.value) {
            doc.error_at(
                n.span.start,
                format!(
                    "{path}.namespace: {:?} is not a CloudWatch namespace ({why})",
                    n.value
                ),
            );
        }
    }
    let metric = t.req_str(doc, "metric");
    if let Some(m) = &metric {
        if m.value.is_empty() || m.value.len() > 255 {
            doc.error_at(m.span.start, format!("{path}.metric: 1 to 255 characters"));
        }
    }
    let mut dimensions = Vec::new();
    if let Some(map) = t.str_map(doc, "dimensions") {
        if map.len() > 30 {
            let at = t.span().start;
            doc.error_at(at, format!("{path}.dimensions: at most 30"));
        }
        for (k, v) in map {
            if k.is_empty() || k.len() > 255 || k.starts_with(':') {
                doc.error_at(
                    v.span.start,
                    format!("{path}.dimensions: {k:?} is not a dimension name"),
                );
            }
            if v.value.is_empty() || v.value.len() > 1024 {
                doc.error_at(
                    v.span.start,
                    format!("{path}.dimensions.{k}: 1 to 1024 characters (\"*\" for any)"),
                );
            }
            dimensions.push((k, v.value));
        }
    }
    let statistics: Vec<String> = match t.str_list(doc, "statistics") {
        Some(list) if !list.is_empty() => {
            for s in &list {
                if !good_statistic(&s.value) {
                    doc.error_at(
                        s.span.start,
                        format!(
                            "{path}.statistics: {:?}: expected Sum, Average, Maximum, Minimum, SampleCount or a percentile like p99",
                            s.value
                        ),
                    );
                }
            }
            list.into_iter().map(|s| s.value).collect()
        }
        Some(_) => {
            let at = t.span().start;
            doc.error_at(at, format!("{path}.statistics: at least one"));
            Vec::new()
        }
        None => vec!["Average".into()],
    };
    let mut period_ms = 60_000;
    if let Some(p) = t.duration(doc, "period") {
        let custom = namespace
            .as_ref()
            .is_some_and(|n| !n.value.starts_with("AWS/"));
        let ok = p.value > 0
            && p.value % 1000 == 0
            && (p.value % 60_000 == 0
                || (custom && [1_000, 5_000, 10_000, 30_000].contains(&p.value)));
        if ok {
            period_ms = p.value;
        } else {
            doc.error_at(
                p.span.start,
                format!("{path}.period: a multiple of 60s (or 1s, 5s, 10s or 30s for a high-resolution custom metric)"),
            );
        }
    }
    let delay_ms = t.non_negative_duration(doc, "delay").unwrap_or(60_000);
    let name = t.str(doc, "name");
    if let Some(n) = &name {
        let valid = !n.value.is_empty()
            && n.value.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            });
        if !valid {
            doc.error_at(
                n.span.start,
                format!("{path}.name: not a metric name: {:?}", n.value),
            );
        }
        if statistics.len() > 1 {
            doc.error_at(
                n.span.start,
                format!("{path}.name: one name for {} statistics (give one statistic, or leave the names to the default)", statistics.len()),
            );
        }
    }
    t.finish(doc);
    Some(CloudWatchImport {
        namespace: namespace?.value,
        metric: metric?.value,
        dimensions,
        statistics,
        period_ms,
        delay_ms,
        name: name.map(|n| n.value),
    })
}

/// One `[[import.target_health]]`: a target group whose targets' health is read with
/// DescribeTargetHealth every `interval`.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetHealthImport {
    pub target_group_arn: String,
    pub interval_ms: i64,
}

impl TargetHealthImport {
    /// The `target_group` label: the ARN's `targetgroup/<name>/<id>`, as CloudWatch's
    /// `TargetGroup` dimension writes it.
    pub fn label(&self) -> &str {
        self.target_group_arn
            .find(":targetgroup/")
            .map_or(&self.target_group_arn[..], |i| {
                &self.target_group_arn[i + 1..]
            })
    }
}

fn parse_target_health(doc: &mut Doc<'_>, mut t: Obj<'_, '_>) -> Option<TargetHealthImport> {
    let path = t.path.clone();
    let arn = t.req_str(doc, "target_group_arn");
    if let Some(a) = &arn {
        let parts: Vec<&str> = a.value.split(':').collect();
        let ok = parts.len() == 6
            && parts[0] == "arn"
            && parts[1].starts_with("aws")
            && parts[2] == "elasticloadbalancing"
            && parts[5].starts_with("targetgroup/")
            && parts[5].split('/').count() == 3;
        if !ok {
            doc.error_at(
                a.span.start,
                format!("{path}.target_group_arn: not a target group ARN (arn:aws:elasticloadbalancing:<region>:<account>:targetgroup/<name>/<id>): {:?}", a.value),
            );
        }
    }
    let interval_ms = t.positive_duration(doc, "interval", 15_000);
    t.finish(doc);
    Some(TargetHealthImport {
        target_group_arn: arn?.value,
        interval_ms,
    })
}

/// `[import]`: its `[[import.cloudwatch]]` and `[[import.target_health]]` entries.
pub(super) fn parse(doc: &mut Doc<'_>, mut i: Obj<'_, '_>, c: &mut Config) {
    for t in i.tables(doc, "cloudwatch") {
        if let Some(imp) = parse_one(doc, t) {
            c.cloudwatch_imports.push(imp);
        }
    }
    for t in i.tables(doc, "target_health") {
        if let Some(imp) = parse_target_health(doc, t) {
            c.target_health_imports.push(imp);
        }
    }
    i.finish(doc);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_cloudwatch_exporter_gives_them() {
        assert_eq!(snake_case("CPUUtilization"), "cpuutilization");
        assert_eq!(
            snake_case("HTTPCode_Target_5XX_Count"),
            "httpcode_target_5_xx_count"
        );
        assert_eq!(
            series_name("AWS/ApplicationELB", "RequestCountPerTarget", "Sum"),
            "aws_applicationelb_request_count_per_target_sum"
        );
        assert_eq!(
            series_name("AWS/RDS", "CPUUtilization", "Average"),
            "aws_rds_cpuutilization_average"
        );
        assert_eq!(
            series_name("CWAgent", "mem_used_percent", "p99.9"),
            "cwagent_mem_used_percent_p99_9"
        );
        assert_eq!(
            series_name("AWS/ApplicationELB", "TargetResponseTime", "SampleCount"),
            "aws_applicationelb_target_response_time_sample_count"
        );
        assert_eq!(label_name("TargetGroup"), "target_group");
        assert_eq!(label_name("DBInstanceIdentifier"), "dbinstance_identifier");
        assert_eq!(label_name("AvailabilityZone"), "availability_zone");
    }

    #[test]
    fn statistics_and_namespaces() {
        for s in ["Sum", "p99", "p99.9", "p0", "p100"] {
            assert!(good_statistic(s), "{s}");
        }
        for s in ["sum", "p101", "p", "p-1", "P99", "p1e1", "Median"] {
            assert!(!good_statistic(s), "{s}");
        }
        assert_eq!(bad_namespace("AWS/ApplicationELB"), None);
        assert_eq!(bad_namespace("CWAgent"), None);
        assert_eq!(bad_namespace("My App/Web"), None);
        for ns in ["", "AWS/", ":x", "a//b", "x/", " x", "é"] {
            assert!(bad_namespace(ns).is_some(), "{ns:?}");
        }
    }
}
