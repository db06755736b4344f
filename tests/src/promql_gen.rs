//! Random, well-typed PromQL over the compliance data set ([`crate::compliance::data_set`]):
//! selectors with matchers and offsets, range functions, subqueries, aggregations, binary
//! operators with and without vector matching, math and label functions, histograms. For the
//! differential test against Prometheus: every expression is valid, and none puts a sample or a
//! subquery step on a window's boundary (samples lie off whole seconds; subquery ranges are not
//! multiples of their steps), where Prometheus 2.x's closed and 3.x's left-open windows differ.

/// A small deterministic generator: the same seed gives the same queries.
pub struct Gen {
    state: u64,
}

const GAUGES: [&str; 4] = [
    "demo_memory_usage_bytes",
    "demo_disk_usage_bytes",
    "demo_num_cpus",
    "demo_intermittent_metric",
];
const COUNTERS: [&str; 3] = [
    "demo_cpu_usage_seconds_total",
    "demo_api_request_duration_seconds_count",
    "demo_api_request_duration_seconds_sum",
];
const LABELS: [&str; 6] = ["instance", "job", "mode", "type", "method", "status"];
const RANGES: [&str; 5] = ["30s", "1m", "2m", "5m", "10m"];
const OFFSETS: [&str; 3] = ["1m", "5m", "90s"];

/// One generated query.
pub struct Query {
    pub vigil: String,
    pub for_2_42: String,
    pub changes: Vec<&'static str>,
}

pub const ATAN2_CHANGE: &str =
    "Prometheus 2.46: atan2 drops the metric name like the other arithmetic operators (prometheus/prometheus#12595)";
pub const SPREAD_CHANGE: &str =
    "Prometheus 3.0: stddev and stdvar of a lone NaN or ±Inf are NaN, not 0 (prometheus/prometheus#14941)";

pub const KAHAN_CHANGE: &str =
    "Prometheus 2.54: sum() adds a Kahan compensation, so a lone -0 sums to +0 (prometheus/prometheus#14074)";

// Markers around the constructs whose meaning changed since 2.42: `SPREAD op BODY rest END`,
// `ANGLE expr END`.
const SPREAD: char = '\u{1}';
const BODY: char = '\u{2}';
const ANGLE: char = '\u{3}';
const END: char = '\u{4}';

/// An aggregation, marked when its meaning changed since 2.42 (see [`for_2_42`]).
fn aggregation(op: &str, body: &str) -> String {
    if ["sum", "stddev", "stdvar"].contains(&op) {
        format!("{SPREAD}{op}{BODY}{body}{END}")
    } else {
        format!("{op}{body}")
    }
}

/// The marked query as 2.42 must be asked it to answer as 3.x does, innermost marks first:
/// `stddev by (g) (x)` becomes `(stddev by (g) (x) + 0 * sum by (g) (x))` (a group holding a
/// NaN or ±Inf then answers NaN, whatever its size); `sum by (g) (x)` becomes
/// `(sum by (g) (x) + 0)` (3.x adds its Kahan compensation, a zero, at the end: a lone -0
/// sums to +0); `a atan2 b` loses its metric name through `label_replace(…, "__name__", "",
/// "", "")`.
pub fn for_2_42(marked: &str) -> String {
    let mut q = marked.to_string();
    loop {
        let Some(end) = q.find(END) else {
            return q;
        };
        let start = q[..end]
            .rfind([SPREAD, ANGLE])
            .expect("a mark opens what it closes");
        let inner = &q[start + 1..end];
        let plain = if q[start..].starts_with(SPREAD) {
            let (op, rest) = inner.split_once(BODY).expect("a marked aggregation");
            if op == "sum" {
                format!("({op}{rest} + 0)")
            } else {
                format!("({op}{rest} + 0 * sum{rest})")
            }
        } else {
            format!("label_replace({inner}, \"__name__\", \"\", \"\", \"\")")
        };
        q.replace_range(start..end + END.len_utf8(), &plain);
    }
}

impl Gen {
    pub fn new(seed: u64) -> Gen {
        Gen {
            state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
        }
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    /// A random instant-vector expression: as Vigil is asked it, and as Prometheus 2.42 is
    /// asked the same question with the semantics of the changes Prometheus made since (which
    /// Vigil follows), and which of those changes the query meets.
    pub fn query(&mut self) -> Query {
        let marked = self.vector(3);
        Query {
            vigil: marked.replace([SPREAD, BODY, ANGLE, END], ""),
            changes: [
                (marked.contains(ANGLE), ATAN2_CHANGE),
                (
                    marked.contains(&format!("{SPREAD}stddev"))
                        || marked.contains(&format!("{SPREAD}stdvar")),
                    SPREAD_CHANGE,
                ),
                (marked.contains(&format!("{SPREAD}sum")), KAHAN_CHANGE),
            ]
            .into_iter()
            .filter_map(|(met, c)| met.then_some(c))
            .collect(),
            for_2_42: for_2_42(&marked),
        }
    }

    fn matchers(&mut self) -> String {
        let m = match self.below(6) {
            0 => r#"{instance="demo.promlabs.com:10001"}"#,
            1 => r#"{instance!="demo.promlabs.com:10000"}"#,
            2 => r#"{instance=~".*:1000[12]"}"#,
            3 => r#"{job="demo"}"#,
            _ => "",
        };
        m.to_string()
    }

    fn offset(&mut self) -> String {
        if self.chance(15) {
            format!(" offset {}", self.pick(&OFFSETS))
        } else {
            String::new()
        }
    }

    fn selector(&mut self, counter: bool) -> String {
        let name = if counter {
            self.pick(&COUNTERS)
        } else {
            self.pick(&GAUGES)
        };
        format!("{name}{}", self.matchers())
    }

    fn scalar(&mut self) -> String {
        match self.below(6) {
            0 => "time()".into(),
            1 if self.chance(50) => format!("scalar({})", self.vector(1)),
            _ => ["0", "1", "2", "0.5", "-3", "100", "1e6", "0.001"][self.below(8)].into(),
        }
    }

    fn grouping(&mut self) -> String {
        match self.below(4) {
            0 => String::new(),
            1 => format!(" by ({})", self.pick(&LABELS)),
            2 => format!(" without ({})", self.pick(&LABELS)),
            _ => format!(" by ({}, {})", self.pick(&LABELS), self.pick(&LABELS)),
        }
    }

    /// A range vector: a selector over a range, or a subquery whose range is not a multiple
    /// of its step (no inner point on the window's start).
    fn range(&mut self, counter: bool, depth: u32) -> String {
        if depth > 0 && self.chance(12) {
            let (r, s) = [
                ("65s", "10s"),
                ("125s", "30s"),
                ("295s", "1m"),
                ("3m5s", "20s"),
            ][self.below(4)];
            let inner = if counter {
                format!("rate({}[1m])", self.selector(true))
            } else {
                self.vector(depth - 1)
            };
            return format!("({inner})[{r}:{s}]");
        }
        format!(
            "{}[{}]{}",
            self.selector(counter),
            self.pick(&RANGES),
            self.offset()
        )
    }

    fn vector(&mut self, depth: u32) -> String {
        if depth == 0 {
            let counter = self.chance(30);
            return format!("{}{}", self.selector(counter), self.offset());
        }
        match self.below(12) {
            0 | 1 => {
                let f = self.pick(&["rate", "increase", "irate", "resets"]);
                format!("{f}({})", self.range(true, depth))
            }
            2 => {
                let f = self.pick(&[
                    "avg_over_time",
                    "min_over_time",
                    "max_over_time",
                    "sum_over_time",
                    "count_over_time",
                    "last_over_time",
                    "stddev_over_time",
                    "changes",
                    "delta",
                    "idelta",
                    "deriv",
                ]);
                format!("{f}({})", self.range(false, depth))
            }
            3 => {
                let q = self.pick(&["0", "0.25", "0.5", "0.9", "1"]);
                match self.below(3) {
                    0 => format!("quantile_over_time({q}, {})", self.range(false, depth)),
                    1 => format!("predict_linear({}, 600)", self.range(false, depth)),
                    _ => format!(
                        "histogram_quantile({q}, sum by (le{}) (rate(demo_api_request_duration_seconds_bucket{}[{}])))",
                        ["", ", instance", ", method", ", status"][self.below(4)],
                        self.matchers(),
                        self.pick(&["1m", "2m", "5m"])
                    ),
                }
            }
            4 | 5 => {
                let op = self.pick(&[
                    "sum", "avg", "min", "max", "count", "stddev", "stdvar", "group",
                ]);
                let body = format!("{}({})", self.grouping(), self.vector(depth - 1));
                aggregation(op, &body)
            }
            6 => match self.below(3) {
                // Over values that do not tie: Prometheus breaks ties by its input's order,
                // which in a range query is a Go map's (random).
                0 => format!(
                    "{}{}({}, {})",
                    self.pick(&["topk", "bottomk"]),
                    self.grouping(),
                    1 + self.below(3),
                    [
                        "demo_memory_usage_bytes",
                        "demo_disk_usage_bytes",
                        "rate(demo_cpu_usage_seconds_total[1m])"
                    ][self.below(3)]
                ),
                1 => format!(
                    "quantile{}({}, {})",
                    self.grouping(),
                    self.pick(&["0.1", "0.5", "0.99"]),
                    self.vector(depth - 1)
                ),
                // Over whole numbers: a value computed a last bit apart (a sum in another
                // order) is within any tolerance, but is another label value.
                _ => format!(
                    "count_values{}(\"value\", {})",
                    self.grouping(),
                    [
                        "demo_num_cpus".to_string(),
                        format!("changes({})", self.range(false, 0)),
                        format!("resets({})", self.range(true, 0)),
                        format!("count_over_time({})", self.range(false, 0)),
                        format!("count by (instance) ({})", self.vector(depth - 1)),
                    ][self.below(5)]
                ),
            },
            7 => {
                // `%` only of raw samples by a literal: a remainder magnifies a last-bit
                // difference in a computed operand past any tolerance (2e10 % 0.03).
                if self.chance(15) {
                    return format!(
                        "({} % {})",
                        self.selector(false),
                        self.pick(&["2", "0.5", "1.2345", "1000"])
                    );
                }
                let op = self.pick(&["+", "-", "*", "/", "^", "atan2"]);
                let cmp = self.pick(&["==", "!=", ">", "<", ">=", "<="]);
                let bool_ = if self.chance(50) { " bool" } else { "" };
                let branch = self.below(4);
                let e = match branch {
                    0 => format!("({} {op} {})", self.vector(depth - 1), self.scalar()),
                    1 => format!("({} {op} {})", self.scalar(), self.vector(depth - 1)),
                    2 => format!(
                        "({} {cmp}{bool_} {})",
                        self.vector(depth - 1),
                        self.scalar()
                    ),
                    _ => format!(
                        // `group_left ()`: a `(` right after `group_left` opens its label list.
                        "(({}) {op} on (instance) group_left () {})",
                        self.selector(false),
                        aggregation(
                            "sum",
                            &format!(" by (instance) ({})", self.vector(depth - 1))
                        )
                    ),
                };
                if op == "atan2" && branch != 2 {
                    format!("{ANGLE}{e}{END}")
                } else {
                    e
                }
            }
            8 => {
                // Vector to vector on one family: one-to-one on every label.
                let counter = self.chance(50);
                let s = self.selector(counter);
                let op = self.pick(&["+", "-", "*", "/", ">", "<", "and", "or", "unless"]);
                let other = if self.chance(50) {
                    format!("{s} offset {}", self.pick(&OFFSETS))
                } else {
                    s.replace("{instance", "{job=\"demo\", instance")
                };
                format!("({s} {op} {other})")
            }
            9 => {
                // (`exp` of raw samples only: of a computed value near 709.78, a last-bit
                // difference is the difference between a finite answer and +Inf.)
                let f = self.pick(&[
                    "abs",
                    "ceil",
                    "floor",
                    "sqrt",
                    "ln",
                    "log2",
                    "log10",
                    "round",
                    "sgn",
                    "timestamp",
                ]);
                if self.chance(8) {
                    return format!("exp({})", self.selector(false));
                }
                match self.below(3) {
                    0 => format!("clamp_min({}, {})", self.vector(depth - 1), self.scalar()),
                    1 => format!(
                        "clamp({}, 0, {})",
                        self.vector(depth - 1),
                        self.pick(&["1", "1e9"])
                    ),
                    _ => format!("{f}({})", self.vector(depth - 1)),
                }
            }
            10 => match self.below(3) {
                0 => format!(
                    "label_replace({}, \"port\", \"$1\", \"instance\", \".*:(.*)\")",
                    self.vector(depth - 1)
                ),
                1 => format!(
                    "label_join({}, \"both\", \"-\", \"instance\", \"{}\")",
                    self.vector(depth - 1),
                    self.pick(&LABELS)
                ),
                _ => format!("absent({})", self.vector(depth - 1)),
            },
            _ => format!("-({})", self.vector(depth - 1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_generated_query_parses() {
        let mut g = Gen::new(7);
        for _ in 0..2000 {
            let q = g.query();
            for q in [&q.vigil, &q.for_2_42] {
                assert!(!q.is_empty() && !q.contains(['\u{1}', '\u{2}', '\u{3}', '\u{4}']));
                assert_eq!(
                    q.matches('(').count(),
                    q.matches(')').count(),
                    "unbalanced: {q}"
                );
            }
            assert_eq!(q.vigil == q.for_2_42, q.changes.is_empty(), "{}", q.vigil);
        }
        // The same seed, the same queries.
        assert_eq!(Gen::new(3).query().vigil, Gen::new(3).query().vigil);
    }

    #[test]
    fn marked_constructs_are_asked_of_2_42_with_3x_semantics() {
        let m = format!("{SPREAD}stddev{BODY} by (job)(-(x)){END} / {ANGLE}(a atan2 {SPREAD}stdvar{BODY}(b){END}){END}");
        assert_eq!(
            for_2_42(&m),
            "(stddev by (job)(-(x)) + 0 * sum by (job)(-(x))) / label_replace((a atan2 (stdvar(b) + 0 * sum(b))), \"__name__\", \"\", \"\", \"\")"
        );
    }
}
