//! The importer against a recording reader: windows, stamps, batches, wildcards, retries.

use std::sync::Mutex;

use super::*;
use crate::aws::BoxFut;

/// Answers each query with one datapoint per period of the window whose start is in `have`,
/// valued by the period's start in minutes; records every call.
#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<(usize, i64, i64)>>,
    lists: Mutex<usize>,
    fail_next: Mutex<usize>,
    have: Vec<i64>,
}

impl MetricReader for Fake {
    fn get<'a>(
        &'a self,
        queries: &'a [MetricQuery],
        start_ms: i64,
        end_ms: i64,
    ) -> BoxFut<'a, Result<Vec<crate::aws::Points>, CallError>> {
        Box::pin(async move {
            {
                let mut f = self.fail_next.lock().unwrap();
                if *f > 0 {
                    *f -= 1;
                    return Err(CallError {
                        call: "GetMetricData",
                        message: "Throttling: Rate exceeded".into(),
                        permanent: false,
                    });
                }
            }
            self.calls
                .lock()
                .unwrap()
                .push((queries.len(), start_ms, end_ms));
            Ok(queries
                .iter()
                .map(|q| {
                    let p = i64::from(q.period_s) * 1000;
                    (start_ms..end_ms)
                        .step_by(p as usize)
                        .filter(|t| self.have.is_empty() || self.have.contains(t))
                        .map(|t| (t, (t / 60_000) as f64))
                        .collect()
                })
                .collect())
        })
    }

    fn list<'a>(
        &'a self,
        _namespace: &'a str,
        _metric: &'a str,
        dimensions: &'a [(String, Option<String>)],
    ) -> BoxFut<'a, Result<Vec<Dimensions>, CallError>> {
        Box::pin(async move {
            *self.lists.lock().unwrap() += 1;
            assert_eq!(dimensions, [("TargetGroup".to_string(), None)]);
            Ok((0..3)
                .map(|i| vec![("TargetGroup".to_string(), format!("targetgroup/tg{i}/0"))])
                .collect())
        })
    }
}

struct Fixed;
impl crate::clock::Clock for Fixed {
    fn now_ms(&self) -> i64 {
        0
    }
}

fn import(dims: &[(&str, &str)], stats: &[&str]) -> CloudWatchImport {
    CloudWatchImport {
        namespace: "AWS/ApplicationELB".into(),
        metric: "RequestCountPerTarget".into(),
        dimensions: dims
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        statistics: stats.iter().map(|s| s.to_string()).collect(),
        period_ms: 60_000,
        delay_ms: 60_000,
        name: None,
    }
}

fn importer(imports: Vec<CloudWatchImport>, fake: Arc<Fake>) -> (CloudWatch, Arc<Store>) {
    let store = Arc::new(Store::new(24 * 3_600_000, 100_000));
    let cw = CloudWatch::new(
        imports,
        fake,
        store.clone(),
        Arc::new(Fixed),
        &mut Registry::default(),
    );
    (cw, store)
}

fn series(store: &Store, name: &str, now: i64) -> Vec<(String, Vec<(i64, f64)>)> {
    use vigil_rules::promql::storage::{MatchOp, Matcher};
    store
        .read(&[Matcher::new(MatchOp::Equal, METRIC_NAME, name)], 0, now)
        .into_iter()
        .map(|s| {
            (
                s.labels.to_string(),
                s.samples
                    .iter()
                    .map(|x| (x.timestamp_ms, x.value))
                    .collect(),
            )
        })
        .collect()
}

#[tokio::test]
async fn periods_are_read_once_stamped_at_their_end_and_gaps_stay_gaps() {
    let base = 1_800_000_000_000 / 60_000 * 60_000;
    // Data for every period but the one starting at base - 180 s.
    let have: Vec<i64> = (1..=20)
        .map(|k| base - k * 60_000)
        .filter(|&t| t != base - 180_000)
        .collect();
    let fake = Arc::new(Fake {
        have,
        ..Default::default()
    });
    let (cw, store) = importer(
        vec![import(
            &[("TargetGroup", "targetgroup/web/1")],
            &["Sum", "Maximum"],
        )],
        fake.clone(),
    );
    let mut st: Vec<State> = vec![State::default()];
    // 90 s past a period end, 60 s of delay: the newest period read ends 60 s before `base`.
    let now = base + 30_000;
    cw.poll(&mut st, now).await;
    let end = base - 60_000;
    assert_eq!(*fake.calls.lock().unwrap(), [(2, end - 600_000, end)]);
    let got = series(
        &store,
        "aws_applicationelb_request_count_per_target_sum",
        now,
    );
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].0,
        r#"aws_applicationelb_request_count_per_target_sum{target_group="targetgroup/web/1"}"#
    );
    let stamps: Vec<i64> = got[0].1.iter().map(|p| p.0).collect();
    // Ten periods ending at `end`, each stamped with its end; the one without data is absent.
    let want: Vec<i64> = (0..10)
        .rev()
        .map(|k| end - k * 60_000)
        .filter(|&t| t != base - 120_000)
        .collect();
    assert_eq!(stamps, want);
    assert_eq!(got[0].1[0].1, ((end - 600_000) / 60_000) as f64);
    // Polled again within the same period: nothing to read. A period later: that one only.
    cw.poll(&mut st, now + 20_000).await;
    assert_eq!(fake.calls.lock().unwrap().len(), 1);
    cw.poll(&mut st, now + 60_000).await;
    assert_eq!(fake.calls.lock().unwrap()[1], (2, end, end + 60_000));
}

#[tokio::test]
async fn a_failure_is_retried_from_the_last_good_read_after_a_wait() {
    let fake = Arc::new(Fake::default());
    let (cw, _store) = importer(
        vec![import(&[("TargetGroup", "a")], &["Sum"])],
        fake.clone(),
    );
    let mut st: Vec<State> = vec![State::default()];
    let t0 = 1_800_000_000_000 / 60_000 * 60_000 + 61_000;
    cw.poll(&mut st, t0).await;
    let end0 = fake.calls.lock().unwrap()[0].2;
    *fake.fail_next.lock().unwrap() = 2;
    // Two periods later the call fails; then again at the retry; then it succeeds and reads
    // every period since `end0` in one window.
    cw.poll(&mut st, t0 + 120_000).await;
    assert_eq!(st[0].retry, MIN_RETRY);
    cw.poll(&mut st, t0 + 121_000).await; // before the retry: not called
    assert_eq!(*fake.fail_next.lock().unwrap(), 1);
    cw.poll(&mut st, t0 + 125_000).await;
    assert_eq!(st[0].retry, MIN_RETRY * 2);
    cw.poll(&mut st, t0 + 240_000).await;
    let calls = fake.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    assert_eq!((calls[1].1, calls[1].2), (end0, end0 + 240_000));
    assert_eq!(st[0].retry, Duration::ZERO);
}

#[tokio::test]
async fn wildcards_are_listed_once_and_batches_hold_500_queries() {
    let fake = Arc::new(Fake::default());
    let mut imports = vec![import(&[("TargetGroup", "*")], &["Sum", "Average"])];
    // 600 more with one statistic each, due in the same window: 606 queries.
    for i in 0..600 {
        imports.push(import(&[("TargetGroup", &format!("tg/{i}"))], &["Sum"]));
    }
    let (cw, store) = importer(imports, fake.clone());
    let mut st: Vec<State> = (0..601).map(|_| State::default()).collect();
    let now = 1_800_000_000_000 / 60_000 * 60_000 + 61_000;
    cw.poll(&mut st, now).await;
    let calls = fake.calls.lock().unwrap().clone();
    assert_eq!(
        calls.iter().map(|c| c.0).collect::<Vec<_>>(),
        [500, 106],
        "3 target groups x 2 statistics + 600"
    );
    assert_eq!(*fake.lists.lock().unwrap(), 1);
    let avg = series(
        &store,
        "aws_applicationelb_request_count_per_target_average",
        now,
    );
    assert_eq!(avg.len(), 3);
    cw.poll(&mut st, now + 60_000).await;
    assert_eq!(
        *fake.lists.lock().unwrap(),
        1,
        "ListMetrics' answer is kept"
    );
    cw.poll(&mut st, now + LIST_TTL_MS + 60_000).await;
    assert_eq!(*fake.lists.lock().unwrap(), 2);
    // 606 metrics a minute for 30 days.
    assert_eq!(cw.metrics.per_month.get(), 606.0 * 43_200.0);
}
