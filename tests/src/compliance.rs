//! The PromQL compliance suite of the Prometheus project (`../shared/peers/promql-compliance/`,
//! read as data): its query templates expanded as its tester expands them, a data set shaped
//! like the PromLabs demo service it is meant for, and results compared as the tester compares
//! them (range queries, series sorted by labels, values within a relative 1e-5, NaN equal to NaN,
//! `should_fail` passing when both sides fail).

use std::collections::BTreeMap;

use serde_json::Value as Json;
use vigil_wire::{Labels, Sample, STALE_NAN};

/// One expanded case.
#[derive(Debug, Clone)]
pub struct Case {
    pub query: String,
    pub should_fail: bool,
    pub skip_comparison: bool,
}

/// The tester's variant lists.
fn variants(name: &str) -> &'static [&'static str] {
    match name {
        "range" => &["1s", "15s", "1m", "5m", "15m", "1h"],
        "offset" => &["1m", "5m", "10m"],
        "simpleAggrOp" => &["sum", "avg", "max", "min", "count", "stddev", "stdvar"],
        "simpleTimeAggrOp" => &[
            "sum", "avg", "max", "min", "count", "stddev", "stdvar", "absent", "last",
        ],
        "topBottomOp" => &["topk", "bottomk"],
        "quantile" => &[
            "-0.5", "0.1", "0.5", "0.75", "0.95", "0.90", "0.99", "1", "1.5",
        ],
        "arithBinOp" => &["+", "-", "*", "/", "%", "^"],
        "compBinOp" => &["==", "!=", "<", ">", "<=", ">="],
        "binOp" => &[
            "+", "-", "*", "/", "%", "^", "==", "!=", "<", ">", "<=", ">=",
        ],
        "simpleMathFunc" => &[
            "abs", "ceil", "floor", "exp", "sqrt", "ln", "log2", "log10", "round",
        ],
        "extrapolatedRateFunc" => &["delta", "rate", "increase"],
        "clampFunc" => &["clamp_min", "clamp_max"],
        "instantRateFunc" => &["idelta", "irate"],
        "dateFunc" => &[
            "day_of_month",
            "day_of_week",
            "days_in_month",
            "hour",
            "minute",
            "month",
            "year",
        ],
        "smoothingFactor" | "trendFactor" => &["0.1", "0.5", "0.8"],
        _ => &[],
    }
}

/// Every case of the suite's `test_cases` (the YAML file read as JSON), each template filled with
/// every combination of its `variant_args`.
pub fn expand(doc: &Json) -> Result<Vec<Case>, String> {
    let cases = doc["test_cases"]
        .as_array()
        .ok_or("no test_cases in the suite")?;
    let mut out = Vec::new();
    for c in cases {
        let template = match &c["query"] {
            Json::String(s) => s.clone(),
            Json::Number(n) => n.to_string(),
            other => return Err(format!("a case without a query: {other}")),
        };
        let args: Vec<&str> = c["variant_args"]
            .as_array()
            .map(|a| a.iter().filter_map(Json::as_str).collect())
            .unwrap_or_default();
        let mut queries = vec![template];
        for arg in args {
            let values = variants(arg);
            if values.is_empty() {
                return Err(format!("unknown variant {arg}"));
            }
            let hole = format!("{{{{.{arg}}}}}");
            queries = queries
                .iter()
                .flat_map(|q| values.iter().map(|v| q.replace(&hole, v)))
                .collect();
        }
        for query in queries {
            out.push(Case {
                query,
                should_fail: c["should_fail"].as_bool().unwrap_or(false),
                skip_comparison: c["skip_comparison"].as_bool().unwrap_or(false),
            });
        }
    }
    Ok(out)
}

/// The scrape interval of the data set.
pub const SCRAPE_MS: i64 = 5_000;

const INSTANCES: [&str; 3] = [
    "demo.promlabs.com:10000",
    "demo.promlabs.com:10001",
    "demo.promlabs.com:10002",
];

const BUCKETS: [&str; 12] = [
    "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
    "0.25", "+Inf",
];

/// A small deterministic generator (the data set is the same on every run).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Series like the demo service's, scraped every 5 s from `from_ms` to `to_ms`, each instance at
/// its own phase with a few odd milliseconds (no sample on a whole second, so no sample on a
/// window's or a step's boundary: Prometheus 2.x's closed and 3.x's left-open windows agree).
/// Counters grow and one resets; gauges move; `demo_intermittent_metric` comes and goes, with a
/// staleness marker where it goes, as a scraping Prometheus writes one.
pub fn data_set(from_ms: i64, to_ms: i64) -> Vec<(Labels, Vec<Sample>)> {
    let mut out: BTreeMap<String, (Labels, Vec<Sample>)> = BTreeMap::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut put = |name: &str, inst: &str, extra: &[(&str, &str)], s: Sample| {
        let mut pairs: Vec<(String, String)> = vec![
            ("__name__".into(), name.into()),
            ("instance".into(), inst.into()),
            ("job".into(), "demo".into()),
        ];
        pairs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let labels = Labels::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.clone())));
        out.entry(labels.to_string())
            .or_insert_with(|| (labels, Vec::new()))
            .1
            .push(s);
    };
    for (i, inst) in INSTANCES.iter().enumerate() {
        let phase = 1_003 + 1_337 * i as i64;
        let cpus = [4.0, 6.0, 8.0][i];
        let mut cpu = [0.0f64; 3];
        let mut api = vec![0.0f64; 8 * BUCKETS.len()];
        let mut api_sum = [0.0f64; 8];
        let mut disk = 2.0e10 + 1.0e9 * i as f64;
        let mut batch = (from_ms / 1000) as f64;
        let mut t = from_ms - from_ms.rem_euclid(SCRAPE_MS) + phase;
        let mut k = 0i64;
        while t <= to_ms {
            let s = |v: f64| Sample::new(t, v);
            let x = k as f64;
            // CPU: idle, user, system seconds; instance 1 restarts (its counters reset) once.
            if i == 1 && k == 700 {
                cpu = [0.0; 3];
            }
            for (m, mode) in ["idle", "user", "system"].iter().enumerate() {
                let busy = [0.6, 0.3, 0.1][m] * cpus;
                cpu[m] += 5.0 * busy * (0.8 + 0.4 * rng.next());
                put(
                    "demo_cpu_usage_seconds_total",
                    inst,
                    &[("mode", mode)],
                    s(cpu[m]),
                );
            }
            // Memory: four gauges moving around their levels.
            for (m, ty) in ["buffers", "cached", "free", "used"].iter().enumerate() {
                let level = [5.0e7, 3.0e8, 8.0e8, 2.5e9][m] * (1.0 + 0.3 * i as f64);
                let v = (level * (1.0 + 0.1 * (x / (40.0 + 7.0 * m as f64)).sin())
                    + 1.0e6 * rng.next())
                .round();
                put("demo_memory_usage_bytes", inst, &[("type", ty)], s(v));
            }
            put("demo_num_cpus", inst, &[], s(cpus));
            // Disk: grows, with noise, and is cleaned up now and then.
            disk += 2.0e5 * (1.0 + rng.next());
            if k % 500 == 499 {
                disk -= 5.0e7;
            }
            put("demo_disk_usage_bytes", inst, &[], s(disk.round()));
            // Request durations: a classic histogram per method, path and status.
            let mut h = 0;
            for method in ["GET", "POST"] {
                for path in ["/api/foo", "/api/bar"] {
                    for status in ["200", "500"] {
                        let n = (1.0 + 20.0 * rng.next()).floor();
                        for _ in 0..n as usize {
                            let d = 0.0001 * (1.0 + 2000.0 * rng.next().powi(3));
                            api_sum[h] += d;
                            for (b, le) in BUCKETS.iter().enumerate() {
                                let bound: f64 = if *le == "+Inf" {
                                    f64::INFINITY
                                } else {
                                    le.parse().unwrap_or(0.0)
                                };
                                if d <= bound {
                                    api[h * BUCKETS.len() + b] += 1.0;
                                }
                            }
                        }
                        let base = [("method", method), ("path", path), ("status", status)];
                        for (b, le) in BUCKETS.iter().enumerate() {
                            let mut l = base.to_vec();
                            l.push(("le", le));
                            put(
                                "demo_api_request_duration_seconds_bucket",
                                inst,
                                &l,
                                s(api[h * BUCKETS.len() + b]),
                            );
                        }
                        let count = api[h * BUCKETS.len() + BUCKETS.len() - 1];
                        put(
                            "demo_api_request_duration_seconds_count",
                            inst,
                            &base,
                            s(count),
                        );
                        put(
                            "demo_api_request_duration_seconds_sum",
                            inst,
                            &base,
                            s(api_sum[h]),
                        );
                        h += 1;
                    }
                }
            }
            // A batch job succeeding every few minutes.
            if k % 37 == 0 {
                batch = (t / 1000) as f64;
            }
            put(
                "demo_batch_last_success_timestamp_seconds",
                inst,
                &[],
                s(batch),
            );
            // Present for two minutes in every three; a staleness marker where it goes.
            let cycle = (k + 8 * i as i64) % 36;
            if cycle < 24 {
                put("demo_intermittent_metric", inst, &[], s(x));
            } else if cycle == 24 {
                put("demo_intermittent_metric", inst, &[], s(STALE_NAN));
            }
            t += SCRAPE_MS;
            k += 1;
        }
    }
    out.into_values().collect()
}

/// How an [`Answer`]'s error begins when the server did not answer at all (a crash is never
/// an agreement).
pub const NO_ANSWER: &str = "no answer";

/// A range query's answer: `Err` with the error, or every series (labels rendered sorted) with
/// its points (seconds, value as sent).
pub type Answer = Result<BTreeMap<String, Vec<(f64, String)>>, String>;

/// Reads a `/api/v1/query_range` answer.
pub fn answer(code: u16, body: &str) -> Answer {
    let v: Json =
        serde_json::from_str(body).map_err(|e| format!("HTTP {code}, not JSON ({e}): {body}"))?;
    if v["status"] != "success" {
        return Err(format!("{}: HTTP {code}: {}", v["errorType"], v["error"]));
    }
    let mut out = BTreeMap::new();
    for s in v["data"]["result"].as_array().into_iter().flatten() {
        let labels: BTreeMap<&str, &str> = s["metric"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or("")))
            .collect();
        let points = s["values"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p[0].as_f64().unwrap_or(f64::NAN),
                    p[1].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        out.insert(format!("{labels:?}"), points);
    }
    Ok(out)
}

/// Whether two values are the same as the tester judges: equal, both NaN, or within a relative
/// 1e-5 of each other.
fn same_value(a: &str, b: &str) -> bool {
    let (Ok(x), Ok(y)) = (a.parse::<f64>(), b.parse::<f64>()) else {
        return a == b;
    };
    if x == y || (x.is_nan() && y.is_nan()) {
        return true;
    }
    if !x.is_finite() || !y.is_finite() {
        return false;
    }
    (x - y).abs() <= 1e-5 * x.abs().min(y.abs())
}

/// `None` when the case passes; else why not (Vigil's answer first, the reference's second).
pub fn judge(case: &Case, vigil: &Answer, reference: &Answer) -> Option<String> {
    judge_by(case, vigil, reference, same_value)
}

fn judge_by(
    case: &Case,
    vigil: &Answer,
    reference: &Answer,
    same_value: impl Fn(&str, &str) -> bool,
) -> Option<String> {
    let no_answer = |a: &Answer| a.as_ref().is_err_and(|e| e.starts_with(NO_ANSWER));
    if no_answer(vigil) || no_answer(reference) {
        return Some(format!(
            "no answer: vigil {:?}, prometheus {:?}",
            vigil.as_ref().err(),
            reference.as_ref().err()
        ));
    }
    match (vigil, reference) {
        (Err(_), Err(_)) if case.should_fail => None,
        (_, _) if case.should_fail => Some(format!(
            "should fail on both: vigil {}, prometheus {}",
            if vigil.is_err() {
                "failed"
            } else {
                "succeeded"
            },
            if reference.is_err() {
                "failed"
            } else {
                "succeeded"
            },
        )),
        (Err(e), Ok(_)) => Some(format!("vigil failed: {e}")),
        (Ok(_), Err(e)) => Some(format!("prometheus failed, vigil succeeded: {e}")),
        (Err(_), Err(e)) => Some(format!("both failed: {e}")),
        (Ok(_), Ok(_)) if case.skip_comparison => None,
        (Ok(a), Ok(b)) => {
            if a.keys().ne(b.keys()) {
                let only_a: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).take(3).collect();
                let only_b: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).take(3).collect();
                return Some(format!(
                    "series differ ({} vs {}): only vigil {only_a:?}, only prometheus {only_b:?}",
                    a.len(),
                    b.len()
                ));
            }
            for (k, pa) in a {
                let pb = &b[k];
                let ta: Vec<f64> = pa.iter().map(|p| p.0).collect();
                let tb: Vec<f64> = pb.iter().map(|p| p.0).collect();
                if ta != tb {
                    return Some(format!(
                        "{k}: timestamps differ ({} vs {} points)",
                        ta.len(),
                        tb.len()
                    ));
                }
                if let Some((x, y)) = pa.iter().zip(pb).find(|(x, y)| !same_value(&x.1, &y.1)) {
                    return Some(format!("{k} at {}: vigil {} prometheus {}", x.0, x.1, y.1));
                }
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand_to_every_combination() {
        let doc = serde_json::json!({"test_cases": [
            {"query": "42"},
            {"query": "{{.simpleTimeAggrOp}}_over_time(x[{{.range}}])",
             "variant_args": ["simpleTimeAggrOp", "range"]},
            {"query": "{__name__=~\".*\"}", "should_fail": true},
        ]});
        let c = expand(&doc).unwrap();
        assert_eq!(c.len(), 1 + 9 * 6 + 1);
        assert!(c.iter().any(|c| c.query == "last_over_time(x[1h])"));
        assert!(c[c.len() - 1].should_fail);
    }

    #[test]
    fn values_match_within_a_relative_tolerance_and_nan_matches_nan() {
        assert!(same_value("NaN", "NaN"));
        assert!(same_value("+Inf", "+Inf"));
        assert!(!same_value("+Inf", "-Inf"));
        assert!(same_value("1000000", "1000000.5"));
        assert!(!same_value("1", "1.001"));
        assert!(!same_value("0", "1e-300"));
    }

    #[test]
    fn no_sample_falls_on_a_whole_second() {
        let d = data_set(1_700_000_000_000, 1_700_000_600_000);
        assert!(d.len() > 100);
        assert!(d
            .iter()
            .all(|(_, s)| s.iter().all(|s| s.timestamp_ms % 1000 != 0)));
    }
}
