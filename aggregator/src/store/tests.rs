use super::*;
use vigil_rules::promql::storage::{matches_all, MatchOp};

fn l(name: &str, job: &str) -> Labels {
    Labels::from_pairs([("__name__", name), ("job", job)])
}

#[test]
fn out_of_order_and_old_samples_are_dropped_and_counted() {
    let s = Store::new(60_000, 100);
    let st = s
        .append(
            &l("up", "a"),
            [Sample::new(100_000, 1.0), Sample::new(110_000, 1.0)],
            120_000,
        )
        .unwrap();
    assert_eq!(st.accepted, 2);
    let st = s
        .append(
            &l("up", "a"),
            [
                Sample::new(105_000, 1.0),
                Sample::new(110_000, 1.0),
                Sample::new(110_000, 2.0),
                Sample::new(10_000, 1.0),
            ],
            120_000,
        )
        .unwrap();
    assert_eq!(
        (st.accepted, st.out_of_order, st.duplicates, st.too_old),
        (0, 2, 1, 1)
    );
    let got = s.read(
        &[Matcher::new(MatchOp::Equal, "__name__", "up")],
        0,
        200_000,
    );
    assert_eq!(got[0].samples.len(), 2);
}

#[test]
fn series_of_a_silent_instance_go_stale() {
    use vigil_rules::promql::{parse, Engine, Value};
    let s = Store::new(3_600_000, 100);
    let push = |labels: &Labels, t: i64| {
        s.batch()
            .append(labels.encoded(), &[Sample::new(t, 1.0)], t)
            .unwrap()
    };
    push(&l("up", "a"), 10_000);
    push(&l("up", "b"), 10_000);
    push(&l("up", "b"), 60_000);
    s.append(&l("rec", "c"), [Sample::new(10_000, 1.0)], 10_000)
        .unwrap();
    assert_eq!(
        s.mark_stale(75_000, 60_000),
        1,
        "only a is silent for a minute (recorded series are not pushed)"
    );
    assert_eq!(s.mark_stale(80_000, 60_000), 0, "marked once");
    let q = parse("up").unwrap();
    let Value::Vector(v) = Engine::default().instant(&s, &q, 90_000).unwrap().value else {
        panic!()
    };
    assert_eq!(
        v.len(),
        1,
        "a disappears at once instead of after the lookback"
    );
    assert_eq!(v[0].labels.get("job"), Some("b"));
}

#[test]
fn far_future_samples_are_refused_and_empty_series_never_created() {
    let s = Store::new(60_000, 100);
    let st = s
        .append(&l("up", "a"), [Sample::new(10_000_000, 1.0)], 100_000)
        .unwrap();
    assert_eq!((st.accepted, st.too_new), (0, 1));
    assert_eq!(s.series_count(), 0);
    let st = s
        .append(&l("up", "a"), [Sample::new(100_000, 1.0)], 100_000)
        .unwrap();
    assert_eq!(st.accepted, 1);
}

#[test]
fn retention_and_the_series_limit() {
    let s = Store::new(60_000, 2);
    s.append(&l("up", "a"), [Sample::new(0, 1.0)], 0).unwrap();
    s.append(&l("up", "b"), [Sample::new(0, 1.0)], 0).unwrap();
    assert!(s.append(&l("up", "c"), [Sample::new(0, 1.0)], 0).is_err());
    s.compact(61_000);
    assert_eq!(s.series_count(), 0);
    assert!(s
        .append(&l("up", "c"), [Sample::new(61_000, 1.0)], 61_000)
        .is_ok());
    assert_eq!(s.label_values(Some("job")), ["c"]);
}

/// Selections through the index give what a full scan gives, also after compaction frees ids
/// and new series reuse them.
#[test]
fn selections_through_the_index_match_a_full_scan() {
    use promql_parser::parser::token::{T_EQL_REGEX, T_NEQ_REGEX};
    // More series than one slice of a walk (SELECT_SLICE), so selections and compaction cross
    // several turns of the lock.
    let s = Store::new(60_000, 10_000);
    for i in 0..(3 * super::SELECT_SLICE + 40) {
        let t = if i % 3 == 0 { 0 } else { 50_000 };
        let labels = Labels::from_pairs([
            ("__name__", format!("m{}", i % 4)),
            ("job", format!("j{}", i % 5)),
            ("az", if i % 2 == 0 { "a" } else { "" }.to_string()),
        ]);
        s.append(&labels, [Sample::new(t, i as f64)], t).unwrap();
    }
    // Frees every third series; new ones take their ids.
    assert!(s.compact(70_000) > 0, "the chunks' bytes");
    for i in 0..10 {
        let labels = Labels::from_pairs([("__name__", "late"), ("job", &format!("j{i}"))]);
        s.append(&labels, [Sample::new(70_000, 1.0)], 70_000)
            .unwrap();
    }
    let re = |op, name: &str, v: &str| Matcher::new_matcher(op, name.into(), v.into()).unwrap();
    let cases: Vec<Vec<Matcher>> = vec![
        vec![Matcher::new(MatchOp::Equal, "job", "j2")],
        vec![Matcher::new(MatchOp::Equal, "az", "a")],
        vec![Matcher::new(MatchOp::Equal, "az", "")],
        vec![Matcher::new(MatchOp::NotEqual, "az", "")],
        vec![
            re(T_EQL_REGEX, "job", "j1|j3"),
            Matcher::new(MatchOp::Equal, "__name__", "m1"),
        ],
        vec![
            re(T_EQL_REGEX, "__name__", "m.*"),
            re(T_NEQ_REGEX, "job", "j0|j4"),
        ],
        vec![
            re(T_EQL_REGEX, "job", ".+"),
            Matcher::new(MatchOp::Equal, "__name__", "late"),
        ],
        vec![Matcher::new(MatchOp::Equal, "job", "missing")],
        vec![re(T_NEQ_REGEX, "job", ".*")],
    ];
    for matchers in cases {
        let mut got: Vec<String> = s
            .series(&matchers, 0, 100_000)
            .iter()
            .map(|l| l.encoded().to_string())
            .collect();
        got.sort();
        let g = s.lock();
        let mut want: Vec<String> = g
            .series
            .iter()
            .flatten()
            .filter(|x| matches_all(&x.labels, &matchers))
            .map(|x| x.labels.encoded().to_string())
            .collect();
        want.sort();
        assert_eq!(got, want, "{matchers:?}");
    }
    // Every series is found again by its labels after the map grew and ids were reused.
    let count = s.series_count();
    for i in 0..10 {
        let labels = Labels::from_pairs([("__name__", "late"), ("job", &format!("j{i}"))]);
        let st = s
            .append(&labels, [Sample::new(80_000, 2.0)], 80_000)
            .unwrap();
        assert_eq!(st.accepted, 1);
    }
    assert_eq!(s.series_count(), count);
    assert_eq!(
        s.label_values(Some("__name__")),
        ["late", "m0", "m1", "m2", "m3"]
    );
}

#[test]
fn a_selection_past_its_budget_stops_and_one_within_it_is_whole() {
    let s = Store::new(3_600_000, 10_000);
    // 100 series of 300 samples: two closed chunks and a head each.
    for j in 0..100 {
        let samples: Vec<Sample> = (0..300).map(|k| Sample::new(k * 1000, k as f64)).collect();
        s.append(&l("m", &j.to_string()), samples, 300_000).unwrap();
    }
    let all = [Matcher::new(MatchOp::Equal, "__name__", "m")];
    let whole = s.read(&all, 0, 300_000);
    assert_eq!(whole.iter().map(|d| d.samples.len()).sum::<usize>(), 30_000);
    let within = s
        .read_within(&all, 0, 300_000, 30_000)
        .expect("within its budget");
    assert_eq!(within.len(), whole.len());
    assert!(s.read_within(&all, 0, 300_000, 29_999).is_none());
    // A range that cuts every chunk: counted when decoded.
    assert_eq!(
        s.read_within(&all, 50_500, 60_000, 1_000)
            .map(|d| d.iter().map(|d| d.samples.len()).sum::<usize>()),
        Some(1_000)
    );
    assert!(s.read_within(&all, 50_500, 60_000, 999).is_none());
}
