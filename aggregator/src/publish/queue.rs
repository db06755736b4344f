//! CloudWatch custom metrics from record rules marked `cloudwatch = {...}`.
//!
//! Every recorded sample of such a rule is queued as a point (a bounded queue: when CloudWatch
//! is away for long, the oldest points go first, counted). At each flush the points become
//! datums: samples of one metric and dimension set within one storage-resolution period share a
//! datum (Values/Counts), high resolution when the rule's group runs more often than once a
//! minute; NaN and ±Inf are never sent (CloudWatch refuses them). Datums go in calls of at most
//! 1000 datums and 1 MB; a failed call's datums go back to the queue for the next flush.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::aws::Datum;

/// One recorded sample on its way to CloudWatch.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub metric_name: String,
    pub dimensions: Vec<(String, String)>,
    pub timestamp_ms: i64,
    pub value: f64,
    pub high_resolution: bool,
}

pub const MAX_DATUMS_PER_CALL: usize = 1000;
/// CloudWatch's limit on a PutMetricData request body.
pub const MAX_CALL_BYTES: usize = 1 << 20;
/// CloudWatch's limit on distinct values in one datum's Values array.
const MAX_VALUES_PER_DATUM: usize = 150;

/// Points waiting for the next flush.
#[derive(Debug)]
pub struct Queue {
    points: VecDeque<Point>,
    cap: usize,
    /// Metric (name and dimensions) → last time published, for the cost estimate.
    published: HashMap<(String, Vec<(String, String)>), i64>,
}

impl Queue {
    pub fn new(cap: usize) -> Queue {
        Queue {
            points: VecDeque::new(),
            cap,
            published: HashMap::new(),
        }
    }

    /// Queues points; returns how many were dropped: those CloudWatch would refuse (NaN, ±Inf,
    /// values outside its range, dimension values over 1024 characters), and the oldest when
    /// full.
    pub fn push(&mut self, points: impl IntoIterator<Item = Point>) -> (u64, u64) {
        let (mut invalid, mut overflow) = (0, 0);
        for p in points {
            if !acceptable(&p) {
                invalid += 1;
                continue;
            }
            if self.points.len() == self.cap {
                self.points.pop_front();
                overflow += 1;
            }
            self.points.push_back(p);
        }
        (invalid, overflow)
    }

    /// Takes every queued point younger than CloudWatch accepts (two weeks; an hour is kept
    /// in hand); returns them and how many were too old.
    pub fn take(&mut self, now: i64) -> (Vec<Point>, u64) {
        let oldest = now - 14 * 86_400_000 + 3_600_000;
        let before = self.points.len();
        let points: Vec<Point> = self
            .points
            .drain(..)
            .filter(|p| p.timestamp_ms >= oldest)
            .collect();
        let old = (before - points.len()) as u64;
        (points, old)
    }

    /// Puts back points a failed call did not deliver (before newer ones), within the cap.
    pub fn requeue(&mut self, points: Vec<Point>) -> u64 {
        let mut dropped = 0;
        for p in points.into_iter().rev() {
            if self.points.len() == self.cap {
                dropped += 1;
                continue;
            }
            self.points.push_front(p);
        }
        dropped
    }

    /// Notes the metrics published at `now` and returns the estimated monthly cost in dollars:
    /// metrics published within the last hour at CloudWatch's tiered custom-metric price, plus
    /// PutMetricData calls at `calls_per_month`.
    pub fn note_published(&mut self, data: &[Datum], now: i64, calls_per_month: f64) -> f64 {
        for d in data {
            self.published
                .insert((d.metric_name.clone(), d.dimensions.clone()), now);
        }
        self.published.retain(|_, t| now - *t <= 3_600_000);
        monthly_cost(self.published.len(), calls_per_month)
    }
}

/// Whether CloudWatch takes the point: a finite value within its range (about ±1.17e108, and
/// no magnitude below 8.52e-109 but zero), dimension values of 1 to 1024 characters.
fn acceptable(p: &Point) -> bool {
    let v = p.value.abs();
    p.value.is_finite()
        && v <= 1.174_271e108
        && (v == 0.0 || v >= 8.515_920e-109)
        && p.dimensions
            .iter()
            .all(|(_, d)| !d.is_empty() && d.chars().count() <= 1024)
}

/// CloudWatch's published price (us-east-1): custom metrics $0.30 each for the first 10,000,
/// $0.10 up to 250,000, $0.05 up to 1,000,000, $0.02 beyond; API requests $0.01 per 1,000.
pub fn monthly_cost(metrics: usize, calls_per_month: f64) -> f64 {
    let tiers = [
        (10_000.0, 0.30),
        (240_000.0, 0.10),
        (750_000.0, 0.05),
        (f64::INFINITY, 0.02),
    ];
    let mut left = metrics as f64;
    let mut cost = 0.0;
    for (size, price) in tiers {
        let n = left.min(size);
        cost += n * price;
        left -= n;
        if left <= 0.0 {
            break;
        }
    }
    cost + calls_per_month / 1000.0 * 0.01
}

type DatumKey = (String, Vec<(String, String)>, bool, i64);

/// Turns points into datums: one per metric, dimension set and period, values with counts.
pub fn datums(points: &[Point]) -> Vec<(Datum, Vec<Point>)> {
    let mut by: BTreeMap<DatumKey, Vec<&Point>> = BTreeMap::new();
    for p in points {
        let period = if p.high_resolution { 1_000 } else { 60_000 };
        by.entry((
            p.metric_name.clone(),
            p.dimensions.clone(),
            p.high_resolution,
            p.timestamp_ms.div_euclid(period),
        ))
        .or_default()
        .push(p);
    }
    let mut out = Vec::new();
    for ((metric_name, dimensions, high_resolution, _), ps) in by {
        // Distinct values with their counts, in first-seen order, at most 150 per datum.
        let mut values: Vec<f64> = Vec::new();
        let mut counts: Vec<f64> = Vec::new();
        let mut members: Vec<Point> = Vec::new();
        let timestamp_ms = ps.iter().map(|p| p.timestamp_ms).max().unwrap_or(0);
        let mut flush = |values: &mut Vec<f64>, counts: &mut Vec<f64>, members: &mut Vec<Point>| {
            if !values.is_empty() {
                out.push((
                    Datum {
                        metric_name: metric_name.clone(),
                        dimensions: dimensions.clone(),
                        timestamp_ms,
                        values: std::mem::take(values),
                        counts: std::mem::take(counts),
                        high_resolution,
                    },
                    std::mem::take(members),
                ));
            }
        };
        for p in ps {
            match values.iter().position(|v| *v == p.value) {
                Some(k) => counts[k] += 1.0,
                None => {
                    if values.len() == MAX_VALUES_PER_DATUM {
                        flush(&mut values, &mut counts, &mut members);
                    }
                    values.push(p.value);
                    counts.push(1.0);
                }
            }
            members.push(p.clone());
        }
        flush(&mut values, &mut counts, &mut members);
    }
    out
}

/// A generous estimate of a datum's size in the query-protocol form body.
pub fn datum_bytes(d: &Datum) -> usize {
    let per_field = 48;
    let mut n = per_field + d.metric_name.len() * 3;
    for (k, v) in &d.dimensions {
        n += 2 * per_field + (k.len() + v.len()) * 3;
    }
    n += d.values.len() * 2 * (per_field + 24);
    n + 3 * per_field + 32
}

/// Splits datums into calls of at most 1000 datums and 1 MB.
pub fn calls<T>(items: Vec<(Datum, T)>) -> Vec<Vec<(Datum, T)>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 200;
    for (d, t) in items {
        let b = datum_bytes(&d);
        if !cur.is_empty() && (cur.len() == MAX_DATUMS_PER_CALL || bytes + b > MAX_CALL_BYTES) {
            out.push(std::mem::take(&mut cur));
            bytes = 200;
        }
        bytes += b;
        cur.push((d, t));
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(metric: &str, inst: &str, ts: i64, v: f64, hr: bool) -> Point {
        Point {
            metric_name: metric.into(),
            dimensions: vec![("instance".into(), inst.into())],
            timestamp_ms: ts,
            value: v,
            high_resolution: hr,
        }
    }

    #[test]
    fn samples_of_one_metric_in_one_period_share_a_datum() {
        let pts = vec![
            p("Cpu", "a", 0, 0.5, false),
            p("Cpu", "a", 10_000, 0.5, false),
            p("Cpu", "a", 20_000, 0.7, false),
            p("Cpu", "b", 20_000, 0.7, false),
            p("Cpu", "a", 60_000, 0.1, false),
            p("Cpu", "a", 61_000, 0.1, true),
            p("Cpu", "a", 61_500, 0.2, true),
        ];
        let d: Vec<Datum> = datums(&pts).into_iter().map(|(d, _)| d).collect();
        assert_eq!(d.len(), 4, "{d:#?}");
        assert_eq!(d[0].values, [0.5, 0.7]);
        assert_eq!(d[0].counts, [2.0, 1.0]);
        assert_eq!(d[0].timestamp_ms, 20_000);
        assert!(!d[0].high_resolution);
        let hr: Vec<&Datum> = d.iter().filter(|d| d.high_resolution).collect();
        assert_eq!(hr.len(), 1);
        assert_eq!(hr[0].values, [0.1, 0.2]);
    }

    /// Datums come out sorted by dimensions first, then time: every call of a flush carries the
    /// same evaluation times (the CloudWatch e2e test tells flushes apart by that).
    #[test]
    fn datums_are_ordered_by_dimensions_then_time_so_every_call_spans_the_same_times() {
        let mut pts = Vec::new();
        for ts in [1_000, 2_000] {
            for i in 0..1500 {
                pts.push(p("Load", &format!("i-{i:04}"), ts, 1.0, true));
            }
        }
        let d = datums(&pts);
        let order: Vec<(String, i64)> = d
            .iter()
            .take(4)
            .map(|(d, _)| (d.dimensions[0].1.clone(), d.timestamp_ms))
            .collect();
        assert_eq!(
            order,
            [
                ("i-0000".to_string(), 1_000),
                ("i-0000".to_string(), 2_000),
                ("i-0001".to_string(), 1_000),
                ("i-0001".to_string(), 2_000)
            ]
        );
        let batches = calls(d);
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            [1000, 1000, 1000]
        );
        for b in &batches {
            let times: std::collections::BTreeSet<i64> =
                b.iter().map(|(d, _)| d.timestamp_ms).collect();
            assert_eq!(times.into_iter().collect::<Vec<_>>(), [1_000, 2_000]);
        }
    }

    #[test]
    fn calls_hold_at_most_1000_datums_and_1_mb() {
        let pts: Vec<Point> = (0..2500)
            .map(|k| p("Cpu", &format!("i-{k:017}"), 0, k as f64, true))
            .collect();
        let c = calls(datums(&pts));
        assert_eq!(
            c.iter().map(Vec::len).collect::<Vec<_>>(),
            [1000, 1000, 500]
        );
        // Wide datums: the size limit cuts first.
        let wide: Vec<Point> = (0..1000)
            .map(|k| Point {
                dimensions: (0..30)
                    .map(|j| {
                        (
                            format!("dimension{j:02}"),
                            format!("{k}-{}", "v".repeat(200)),
                        )
                    })
                    .collect(),
                ..p("Wide", "x", 0, 1.0, false)
            })
            .collect();
        let c = calls(datums(&wide));
        assert!(c.len() > 1);
        for call in &c {
            let bytes: usize = call.iter().map(|(d, _)| datum_bytes(d)).sum();
            assert!(bytes <= MAX_CALL_BYTES);
        }
    }

    #[test]
    fn the_queue_refuses_what_cloudwatch_would_and_drops_the_oldest_when_full() {
        let mut q = Queue::new(3);
        let (nf, of) = q.push([
            p("M", "a", 0, f64::NAN, false),
            p("M", "a", 1, f64::INFINITY, false),
            p("M", "a", 1, 1e200, false),
            p("M", &"x".repeat(1025), 1, 1.0, false),
            p("M", "a", 2, 1.0, false),
            p("M", "a", 3, 2.0, false),
            p("M", "a", 4, 3.0, false),
            p("M", "a", 5, 4.0, false),
        ]);
        assert_eq!((nf, of), (4, 1));
        let (got, old) = q.take(5);
        assert_eq!(old, 0);
        let got: Vec<i64> = got.iter().map(|p| p.timestamp_ms).collect();
        assert_eq!(got, [3, 4, 5]);
        q.push([
            p("M", "a", 0, 1.0, false),
            p("M", "a", 20 * 86_400_000, 1.0, false),
        ]);
        let (got, old) = q.take(20 * 86_400_000);
        assert_eq!((got.len(), old), (1, 1));
    }

    #[test]
    fn cost_follows_the_price_tiers() {
        assert!((monthly_cost(10, 0.0) - 3.0).abs() < 1e-9);
        assert!((monthly_cost(20_000, 0.0) - (3000.0 + 1000.0)).abs() < 1e-6);
        assert!((monthly_cost(0, 43_200.0) - 0.432).abs() < 1e-9);
    }
}
