//! Engine behaviour the peer suite cannot reach (its limit tests all read native histograms) or
//! that is Vigil's own API.

use vigil_wire::{Labels, Sample};

use super::{parse, Engine, EvalError, MemStorage, Severity, Value};

fn storage(n: usize) -> MemStorage {
    let mut s = MemStorage::new();
    for i in 0..n {
        let l = Labels::from_pairs([
            ("__name__", "req_total".to_string()),
            ("instance", format!("i-{i}")),
            ("group", ["a", "b"][i % 2].to_string()),
        ]);
        s.add_series(
            l,
            (0..=10).map(|k| Sample::new(k * 60_000, (k * (i as i64 + 1)) as f64)),
        );
    }
    s
}

fn vector(s: &MemStorage, q: &str, t: i64) -> Vec<(Labels, f64)> {
    let q = parse(q).unwrap_or_else(|e| panic!("{q}: {e}"));
    match Engine::default().instant(s, &q, t).unwrap().value {
        Value::Vector(v) => v.into_iter().map(|s| (s.labels, s.f)).collect(),
        other => panic!("not a vector: {other:?}"),
    }
}

#[test]
fn limitk_keeps_k_per_group_from_the_input() {
    let s = storage(10);
    let got = vector(&s, "limitk by (group) (2, req_total)", 600_000);
    assert_eq!(got.len(), 4);
    for g in ["a", "b"] {
        assert_eq!(
            got.iter()
                .filter(|(l, _)| l.get("group") == Some(g))
                .count(),
            2
        );
    }
    assert!(vector(&s, "limitk(0, req_total)", 600_000).is_empty());
}

#[test]
fn limit_ratio_and_its_complement_partition_the_input() {
    let s = storage(200);
    for r in [0.1, 0.25, 0.5, 0.9] {
        let a = vector(&s, &format!("limit_ratio({r}, req_total)"), 600_000);
        let b = vector(
            &s,
            &format!("limit_ratio(-{}, req_total)", 1.0 - r),
            600_000,
        );
        assert_eq!(a.len() + b.len(), 200, "ratio {r}");
        assert!(a.iter().all(|x| !b.contains(x)), "ratio {r}: overlap");
        // The choice is stable: the same series every time.
        assert_eq!(
            a,
            vector(&s, &format!("limit_ratio({r}, req_total)"), 600_000)
        );
    }
    let all = vector(&s, "limit_ratio(1, req_total)", 600_000);
    assert_eq!(all.len(), 200);
}

#[test]
fn range_query_validates_its_arguments() {
    let s = storage(1);
    let e = Engine::default();
    let q = parse("req_total").unwrap();
    assert!(matches!(
        e.range(&s, &q, 0, 60_000, 0),
        Err(EvalError::BadData(_))
    ));
    assert!(matches!(
        e.range(&s, &q, 60_000, 0, 1000),
        Err(EvalError::BadData(_))
    ));
    let m = parse("req_total[5m]").unwrap();
    assert!(matches!(
        e.range(&s, &m, 0, 60_000, 1000),
        Err(EvalError::BadData(_))
    ));
    let r = e.range(&s, &q, 0, 600_000, 60_000).unwrap();
    let Value::Matrix(m) = r.value else { panic!() };
    assert_eq!(m[0].points.len(), 11);
}

#[test]
fn rate_on_a_gauge_name_gets_an_info_annotation_with_its_position() {
    let mut s = MemStorage::new();
    s.add_series(
        Labels::from_pairs([("__name__", "temperature")]),
        (0..5).map(|k| Sample::new(k * 15_000, 1.0)),
    );
    let q = parse("sum(rate(temperature[1m]))").unwrap();
    let r = Engine::default().instant(&s, &q, 60_000).unwrap();
    assert_eq!(r.annotations.len(), 1);
    assert_eq!(r.annotations[0].severity, Severity::Info);
    assert!(
        r.annotations[0].message.ends_with("\"temperature\" (1:10)"),
        "{}",
        r.annotations[0].message
    );
}

#[test]
fn native_histogram_functions_read_histograms_and_never_guess_from_floats() {
    let mut s = storage(1);
    let h = vigil_wire::histogram::FloatHistogram::parse_notation(
        "{{schema:0 count:4 sum:10 buckets:[1 3]}}",
    )
    .unwrap()
    .0;
    s.add_histogram(
        Labels::from_pairs([("__name__", "latency"), ("job", "api")]),
        vigil_wire::histogram::HSample::new(0, h),
    );
    let v = vector(&s, "histogram_count({__name__=~\"latency|req_total\"})", 0);
    assert_eq!(v, [(Labels::from_pairs([("job", "api")]), 4.0)]);
    let v = vector(&s, "histogram_avg(latency)", 0);
    assert_eq!(v[0].1, 2.5);
    // The median of 4 observations, 1 in (0.5, 1] and 3 in (1, 2]: exponential interpolation
    // in the second bucket.
    let v = vector(&s, "histogram_quantile(0.5, latency)", 0);
    assert!((v[0].1 - 2f64.powf(1.0 / 3.0)).abs() < 1e-12, "{v:?}");
}

#[test]
fn hostile_queries_are_refused_not_run() {
    for q in ["x[1e30]", "x offset 1e30", "x[5m:1e400]", "x @ 1e300"] {
        let e = parse(q).expect_err(q);
        assert!(e.message.contains("out of range"), "{q}: {e}");
    }
    let s = storage(1);
    let e = Engine::default();
    let q = parse("req_total").unwrap();
    assert!(
        matches!(
            e.range(&s, &q, 0, 86_400_000, 1),
            Err(EvalError::BadData(_))
        ),
        "too many points"
    );
    let q = parse("max_over_time(req_total[1y:1ms])").unwrap();
    assert!(
        matches!(e.instant(&s, &q, 0), Err(EvalError::BadData(_))),
        "too many subquery steps"
    );
}

#[test]
fn timestamp_is_the_sample_time_only_for_plain_selectors() {
    let s = storage(1);
    let at = 630_000; // 30s after the last sample
    let plain = vector(&s, "timestamp(req_total)", at);
    assert_eq!(plain[0].1, 600.0);
    let wrapped = vector(&s, "timestamp(req_total and req_total)", at);
    assert_eq!(wrapped[0].1, 630.0);
}

#[test]
fn arithmetic_drops_the_name_before_group_left_copies_labels() {
    let mut s = MemStorage::new();
    s.add(
        Labels::from_pairs([("__name__", "a"), ("x", "1")]),
        Sample::new(0, 1.0),
    );
    s.add(
        Labels::from_pairs([("__name__", "b"), ("x", "1"), ("team", "t")]),
        Sample::new(0, 2.0),
    );
    let got = vector(
        &s,
        "label_replace(a + on(x) group_left(team) b, \"n\", \"$1\", \"__name__\", \"(.+)\")",
        0,
    );
    assert_eq!(
        got,
        vec![(Labels::from_pairs([("x", "1"), ("team", "t")]), 3.0)]
    );
}

#[test]
fn a_query_past_its_deadline_fails_with_timeout() {
    let s = storage(100);
    let q = parse("sum(rate(req_total[5m]))").unwrap();
    let e = Engine::default();
    let past = Some(std::time::Instant::now());
    assert!(matches!(
        e.instant_until(&s, &q, 60_000, past),
        Err(EvalError::Timeout(_))
    ));
    assert!(matches!(
        e.range_until(&s, &q, 0, 60_000, 10_000, past),
        Err(EvalError::Timeout(_))
    ));
    let later = Some(std::time::Instant::now() + std::time::Duration::from_secs(3600));
    assert!(e.instant_until(&s, &q, 60_000, later).is_ok());
    assert!(e.range_until(&s, &q, 0, 60_000, 10_000, later).is_ok());
}

/// A range query (windows moved step by step, grouping keys kept across steps) answers at every
/// step what an instant query at that time answers, also as series start and stop.
#[test]
fn range_steps_equal_instant_queries() {
    let mut s = MemStorage::new();
    for i in 0..40i64 {
        let l = Labels::from_pairs([
            ("__name__", "req_total".to_string()),
            ("instance", format!("i-{i}")),
            ("group", ["a", "b", "c"][(i % 3) as usize].to_string()),
        ]);
        // Series i lives from 10·i s to 10·i s + 15 min; every fourth one's counter resets
        // (a range query skips the scan for resets only in series that have none).
        let from = i * 10;
        s.add_series(
            l,
            (from..from + 900).step_by(10).map(|t| {
                let v = t * (i + 1);
                Sample::new(t * 1000 + 3, if i % 4 == 0 { v % 7_000 } else { v } as f64)
            }),
        );
    }
    let e = Engine::default();
    for q in [
        "sum by (group) (rate(req_total[1m]))",
        "increase(req_total[3m])",
        "count without (instance) (req_total)",
        "topk(2, rate(req_total[2m]))",
    ] {
        let parsed = parse(q).unwrap();
        let Value::Matrix(m) = e.range(&s, &parsed, 0, 1_200_000, 30_000).unwrap().value else {
            panic!("not a matrix")
        };
        for t in (0..=1_200_000).step_by(30_000) {
            let mut want = vector(&s, q, t);
            want.sort_by(|a, b| a.0.cmp(&b.0));
            let mut got: Vec<(Labels, f64)> = m
                .iter()
                .filter_map(|r| {
                    r.points
                        .iter()
                        .find(|p| p.timestamp_ms == t)
                        .map(|p| (r.labels.clone(), p.value))
                })
                .collect();
            got.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(got, want, "{q} at {t}");
        }
    }
}

/// `count_values` keeps its value label whatever the grouping (the peer suite's cases all load
/// native histograms, so none of them reached this).
#[test]
fn count_values_counts_each_distinct_value_under_its_label() {
    let mut s = MemStorage::new();
    for (i, (job, v)) in [
        ("api", 1.0),
        ("api", 1.0),
        ("api", 0.0),
        ("db", 1.0),
        ("db", 2.5),
    ]
    .iter()
    .enumerate()
    {
        s.add_series(
            Labels::from_pairs([
                ("__name__", "up".to_string()),
                ("job", job.to_string()),
                ("instance", format!("i-{i}")),
            ]),
            [Sample::new(0, *v)],
        );
    }
    let sorted = |q: &str| {
        let mut v: Vec<(String, f64)> = vector(&s, q, 0)
            .into_iter()
            .map(|(l, f)| (l.to_string(), f))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    assert_eq!(
        sorted(r#"count_values("value", up)"#),
        [
            ("{value=\"0\"}".to_string(), 1.0),
            ("{value=\"1\"}".to_string(), 3.0),
            ("{value=\"2.5\"}".to_string(), 1.0),
        ]
    );
    assert_eq!(
        sorted(r#"count_values by (job) ("value", up)"#),
        [
            ("{job=\"api\", value=\"0\"}".to_string(), 1.0),
            ("{job=\"api\", value=\"1\"}".to_string(), 2.0),
            ("{job=\"db\", value=\"1\"}".to_string(), 1.0),
            ("{job=\"db\", value=\"2.5\"}".to_string(), 1.0),
        ]
    );
    // `by` naming the value label itself: once.
    assert_eq!(
        sorted(r#"count_values by (value) ("value", up)"#),
        sorted(r#"count_values("value", up)"#)
    );
    // `without`: the name goes, the value label stays unless named.
    assert_eq!(
        sorted(r#"count_values without (instance) ("v", up)"#),
        [
            ("{job=\"api\", v=\"0\"}".to_string(), 1.0),
            ("{job=\"api\", v=\"1\"}".to_string(), 2.0),
            ("{job=\"db\", v=\"1\"}".to_string(), 1.0),
            ("{job=\"db\", v=\"2.5\"}".to_string(), 1.0),
        ]
    );
    assert_eq!(
        sorted(r#"count_values without (instance, v) ("v", up)"#),
        [
            ("{job=\"api\"}".to_string(), 3.0),
            ("{job=\"db\"}".to_string(), 2.0),
        ]
    );
    // The value label replaces one of the same name on the input.
    assert_eq!(
        sorted(r#"count_values("job", up)"#),
        [
            ("{job=\"0\"}".to_string(), 1.0),
            ("{job=\"1\"}".to_string(), 3.0),
            ("{job=\"2.5\"}".to_string(), 1.0),
        ]
    );
}

#[test]
fn irate_over_floats_after_histograms_is_the_float_answer() {
    // A series that switched from histograms to floats: the last two samples are floats.
    let mut s = MemStorage::new();
    let l = Labels::from_pairs([("__name__", "x_total")]);
    let h = vigil_wire::histogram::FloatHistogram::parse_notation("{{count:1 sum:1}}")
        .unwrap()
        .0;
    s.add_histogram(l.clone(), vigil_wire::histogram::HSample::new(0, h));
    s.add(l.clone(), Sample::new(10_000, 5.0));
    s.add(l.clone(), Sample::new(20_000, 7.0));
    let q = parse("irate(x_total[1m])").unwrap();
    let r = Engine::default().instant(&s, &q, 20_000).unwrap();
    assert!(r.annotations.is_empty(), "{:?}", r.annotations);
    match r.value {
        Value::Vector(v) => assert_eq!((v.len(), v[0].f), (1, 0.2)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_scaling_expression_giving_a_histogram_is_an_error_not_zero() {
    let mut s = MemStorage::new();
    let h = vigil_wire::histogram::FloatHistogram::parse_notation("{{count:4 sum:2}}")
        .unwrap()
        .0;
    s.add_histogram(
        Labels::from_pairs([("__name__", "latency")]),
        vigil_wire::histogram::HSample::new(0, h),
    );
    let q = parse("sum(latency)").unwrap();
    let o = crate::evaluator::scaling_observation(&Engine::default(), &s, &q, 0);
    assert_eq!(o.value, None);
    assert!(o.error.unwrap().contains("native histogram"));
}
