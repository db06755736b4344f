//! `[[import.cloudwatch]]`: CloudWatch metrics (the load balancer's, the database's, custom ones)
//! polled into the window beside what agents push, so rules and policies read them like any
//! series.
//!
//! Each import is read once per `period`, `delay` after a period ends (CloudWatch publishes
//! late): every period that ended since the last read, as one GetMetricData window, a sample
//! per datapoint stamped with its period's end. Imports due together with the same window share
//! calls, up to 500 queries each. A period without a datapoint has no sample (never a 0). A
//! dimension given as `"*"` is resolved through ListMetrics, kept for 15 minutes. A failed call
//! (throttled, say) is tried again with a growing wait, from where the last good read ended, so
//! nothing is skipped unless the gap passes an hour. At start, the last ten periods (at least
//! ten minutes) are read, so rules have history at once.
//!
//! Cost: CloudWatch bills GetMetricData by metrics requested; `vigil_aggregator_cloudwatch_
//! metrics_requested_total` counts them and `..._per_month` says what the imports come to at
//! their periods. Every node of a cluster polls (a follower is ready to act), so a pair pays
//! twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use vigil_wire::{Labels, Sample, METRIC_NAME};

use crate::aws::{CallError, Dimensions, MetricQuery, MetricReader, MAX_QUERIES};
use crate::clock::SharedClock;
use crate::config::{label_name, CloudWatchImport};
use crate::store::Store;

/// How long ListMetrics' answer for a wildcard stands.
const LIST_TTL_MS: i64 = 15 * 60_000;
/// The longest gap a failing import catches up on.
const MAX_CATCH_UP_MS: i64 = 3_600_000;
const MIN_RETRY: Duration = Duration::from_secs(5);
const MAX_RETRY: Duration = Duration::from_secs(300);
const MONTH_MS: f64 = 30.0 * 86_400_000.0;
/// How far back a plain selector looks (PromQL's default lookback).
const LOOKBACK_MS: i64 = 300_000;

#[derive(Clone, Default)]
struct Metrics {
    requested: Counter,
    per_month: Gauge<f64, std::sync::atomic::AtomicU64>,
    samples: Counter,
    failures: Counter,
}

/// Where one import stands.
#[derive(Default)]
struct State {
    /// The start of the first period not read yet (`None` before the first read).
    next_start: Option<i64>,
    /// Dimension sets a wildcard resolved to, and when.
    listed: Option<(i64, Vec<Dimensions>)>,
    /// After a failure: not before this (wall ms), and the wait that led there.
    retry_at: i64,
    retry: Duration,
    /// Metrics this import requests in 30 days, as last known.
    per_month: f64,
}

pub struct CloudWatch {
    imports: Vec<CloudWatchImport>,
    reader: Arc<dyn MetricReader>,
    store: Arc<Store>,
    clock: SharedClock,
    metrics: Metrics,
}

/// The newest period end at least `delay` before `now`.
fn period_end(now: i64, imp: &CloudWatchImport) -> i64 {
    (now - imp.delay_ms).div_euclid(imp.period_ms) * imp.period_ms
}

impl CloudWatch {
    pub fn new(
        imports: Vec<CloudWatchImport>,
        reader: Arc<dyn MetricReader>,
        store: Arc<Store>,
        clock: SharedClock,
        registry: &mut Registry,
    ) -> CloudWatch {
        for imp in &imports {
            if imp.period_ms + imp.delay_ms > LOOKBACK_MS {
                tracing::warn!(namespace = %imp.namespace, metric = %imp.metric, period_ms = imp.period_ms, delay_ms = imp.delay_ms, "CloudWatch import: its newest sample can be period + delay old, past the 5m lookback: a plain selector sees nothing for part of each period; read it with last_over_time(...[{}s])", (imp.period_ms + imp.delay_ms) / 1000 + 60);
            }
        }
        let metrics = Metrics::default();
        let r = registry.sub_registry_with_prefix("vigil_aggregator_cloudwatch");
        r.register(
            "metrics_requested",
            "Metrics requested from CloudWatch by GetMetricData (what it bills)",
            metrics.requested.clone(),
        );
        r.register(
            "metrics_requested_per_month",
            "Metrics the imports request in 30 days at their periods, by this node (every node of a cluster polls)",
            metrics.per_month.clone(),
        );
        r.register(
            "import_samples",
            "Samples imported from CloudWatch",
            metrics.samples.clone(),
        );
        r.register(
            "import_failures",
            "GetMetricData or ListMetrics calls that failed (retried)",
            metrics.failures.clone(),
        );
        CloudWatch {
            imports,
            reader,
            store,
            clock,
            metrics,
        }
    }

    /// Polls until the process ends.
    pub async fn run(self) {
        let mut states: Vec<State> = self.imports.iter().map(|_| State::default()).collect();
        tracing::info!(imports = self.imports.len(), "importing CloudWatch metrics");
        loop {
            let now = self.clock.now_ms();
            self.poll(&mut states, now).await;
            // Until the next period end (plus its delay) of any import, or a retry.
            let next = self
                .imports
                .iter()
                .zip(&states)
                .map(|(imp, st)| {
                    let due = period_end(now, imp) + imp.period_ms + imp.delay_ms;
                    if st.retry_at > now {
                        due.min(st.retry_at)
                    } else {
                        due
                    }
                })
                .min()
                .unwrap_or(now + 60_000);
            tokio::time::sleep(Duration::from_millis(
                (next - now).clamp(100, 3_600_000) as u64
            ))
            .await;
        }
    }

    /// Reads every import that has a period to read at `now`.
    async fn poll(&self, states: &mut [State], now: i64) {
        // Due imports, by window: (start, end) -> the queries, each with (import, statistic,
        // dimension set).
        let mut windows: HashMap<(i64, i64), Vec<(MetricQuery, usize)>> = HashMap::new();
        let mut per_month = 0.0;
        for (i, imp) in self.imports.iter().enumerate() {
            let end = period_end(now, imp);
            let st = &mut states[i];
            if st.retry_at > now {
                per_month += st.per_month;
                continue;
            }
            let sets = match self.dimension_sets(imp, st, now).await {
                Ok(s) => s,
                Err(e) => {
                    self.failed(st, now, &e, imp);
                    continue;
                }
            };
            st.per_month =
                (sets.len() * imp.statistics.len()) as f64 * MONTH_MS / imp.period_ms as f64;
            per_month += st.per_month;
            let backfill = (10 * imp.period_ms).max(600_000);
            let start = st
                .next_start
                .unwrap_or(end - backfill)
                .max(end - MAX_CATCH_UP_MS.max(backfill));
            if start >= end {
                continue;
            }
            let queries = windows.entry((start, end)).or_default();
            for dims in &sets {
                for stat in &imp.statistics {
                    queries.push((
                        MetricQuery {
                            namespace: imp.namespace.clone(),
                            metric: imp.metric.clone(),
                            dimensions: dims.clone(),
                            statistic: stat.clone(),
                            period_s: (imp.period_ms / 1000) as i32,
                        },
                        i,
                    ));
                }
            }
            if sets.is_empty() {
                // Nothing matches the wildcard (yet): the window is read, with nothing in it.
                st.next_start = Some(end);
            }
        }
        self.metrics.per_month.set(per_month);
        for ((start, end), queries) in windows {
            let mut ok: Vec<bool> = vec![true; self.imports.len()];
            for batch in queries.chunks(MAX_QUERIES) {
                let qs: Vec<MetricQuery> = batch.iter().map(|(q, _)| q.clone()).collect();
                self.metrics.requested.inc_by(qs.len() as u64);
                match self.reader.get(&qs, start, end).await {
                    Ok(points) => {
                        for ((q, i), points) in batch.iter().zip(points) {
                            self.store_points(&self.imports[*i], q, &points, now);
                        }
                    }
                    Err(e) => {
                        for (_, i) in batch {
                            if ok[*i] {
                                ok[*i] = false;
                                self.failed(&mut states[*i], now, &e, &self.imports[*i]);
                            }
                        }
                    }
                }
            }
            let mut seen: Vec<usize> = queries.iter().map(|(_, i)| *i).collect();
            seen.sort_unstable();
            seen.dedup();
            for i in seen {
                if ok[i] {
                    let st = &mut states[i];
                    st.next_start = Some(end);
                    st.retry = Duration::ZERO;
                }
            }
        }
    }

    /// An import's dimension sets: as configured, or its wildcards resolved (ListMetrics).
    async fn dimension_sets(
        &self,
        imp: &CloudWatchImport,
        st: &mut State,
        now: i64,
    ) -> Result<Vec<Dimensions>, CallError> {
        if !imp.dimensions.iter().any(|(_, v)| v == "*") {
            return Ok(vec![imp.dimensions.clone()]);
        }
        if let Some((at, sets)) = &st.listed {
            if now - at < LIST_TTL_MS {
                return Ok(sets.clone());
            }
        }
        let filter: Vec<(String, Option<String>)> = imp
            .dimensions
            .iter()
            .map(|(k, v)| (k.clone(), (v != "*").then(|| v.clone())))
            .collect();
        match self.reader.list(&imp.namespace, &imp.metric, &filter).await {
            Ok(sets) => {
                st.listed = Some((now, sets.clone()));
                Ok(sets)
            }
            // A refresh that fails keeps the last answer (retried at the next poll).
            Err(e) => match &st.listed {
                Some((_, sets)) => {
                    self.metrics.failures.inc();
                    tracing::warn!(namespace = %imp.namespace, metric = %imp.metric, error = %e, "CloudWatch import: ListMetrics failed; the dimensions listed last are read");
                    Ok(sets.clone())
                }
                None => Err(e),
            },
        }
    }

    fn failed(&self, st: &mut State, now: i64, e: &CallError, imp: &CloudWatchImport) {
        self.metrics.failures.inc();
        st.retry = (st.retry * 2).clamp(MIN_RETRY, MAX_RETRY);
        st.retry_at = now + st.retry.as_millis() as i64;
        tracing::warn!(namespace = %imp.namespace, metric = %imp.metric, error = %e, retry_in_s = st.retry.as_secs(), "CloudWatch import failed; the periods missed are read at the retry");
    }

    /// One query's datapoints into the window, each stamped with its period's end.
    fn store_points(
        &self,
        imp: &CloudWatchImport,
        q: &MetricQuery,
        points: &[(i64, f64)],
        now: i64,
    ) {
        if points.is_empty() {
            return;
        }
        let name = imp.series_name(&q.statistic);
        let labels = Labels::from_pairs(
            std::iter::once((METRIC_NAME.to_string(), name))
                .chain(q.dimensions.iter().map(|(k, v)| (label_name(k), v.clone()))),
        );
        let samples = points
            .iter()
            .map(|&(t, v)| Sample::new(t + imp.period_ms, v));
        match self.store.append(&labels, samples, now) {
            Ok(stats) => {
                self.metrics.samples.inc_by(stats.accepted as u64);
            }
            Err(e) => tracing::warn!(series = %labels, error = %e, "CloudWatch samples dropped"),
        }
    }
}

pub mod target_health;

#[cfg(test)]
mod tests;
