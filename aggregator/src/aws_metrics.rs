//! Reading CloudWatch: GetMetricData (batched, paginated) and ListMetrics (for dimension
//! wildcards), behind [`MetricReader`].

use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{
    Dimension, DimensionFilter, Metric, MetricDataQuery, MetricStat, RecentlyActive, ScanBy,
    StatusCode,
};

use super::{err, BoxFut, CallError, Sdk};

/// A metric's dimensions, as (name, value).
pub type Dimensions = Vec<(String, String)>;
/// One query's datapoints: (period start in ms, value), oldest first.
pub type Points = Vec<(i64, f64)>;

/// Queries one GetMetricData call takes at most.
pub const MAX_QUERIES: usize = 500;

/// One statistic of one metric with concrete dimensions, at one period.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MetricQuery {
    pub namespace: String,
    pub metric: String,
    pub dimensions: Dimensions,
    pub statistic: String,
    pub period_s: i32,
}

pub trait MetricReader: Send + Sync {
    /// GetMetricData over `[start_ms, end_ms)` for at most [`MAX_QUERIES`] queries: each
    /// query's datapoints as (period start in ms, value), oldest first. A period without data
    /// has no datapoint.
    fn get<'a>(
        &'a self,
        queries: &'a [MetricQuery],
        start_ms: i64,
        end_ms: i64,
    ) -> BoxFut<'a, Result<Vec<Points>, CallError>>;

    /// ListMetrics: the dimension sets of `metric` in `namespace` whose dimension names are
    /// exactly those of `dimensions`, and whose values equal the given ones where a value is
    /// given (`None`: any).
    fn list<'a>(
        &'a self,
        namespace: &'a str,
        metric: &'a str,
        dimensions: &'a [(String, Option<String>)],
    ) -> BoxFut<'a, Result<Vec<Dimensions>, CallError>>;
}

fn millis(t: &DateTime) -> i64 {
    t.secs() * 1000 + i64::from(t.subsec_nanos() / 1_000_000)
}

impl MetricReader for Sdk<aws_sdk_cloudwatch::Client> {
    fn get<'a>(
        &'a self,
        queries: &'a [MetricQuery],
        start_ms: i64,
        end_ms: i64,
    ) -> BoxFut<'a, Result<Vec<Points>, CallError>> {
        Box::pin(async move {
            let r = self.get_all(queries, start_ms, end_ms).await;
            self.1.count("GetMetricData", &r);
            r
        })
    }

    fn list<'a>(
        &'a self,
        namespace: &'a str,
        metric: &'a str,
        dimensions: &'a [(String, Option<String>)],
    ) -> BoxFut<'a, Result<Vec<Dimensions>, CallError>> {
        Box::pin(async move {
            let r = self.list_all(namespace, metric, dimensions).await;
            self.1.count("ListMetrics", &r);
            r
        })
    }
}

impl Sdk<aws_sdk_cloudwatch::Client> {
    async fn get_all(
        &self,
        queries: &[MetricQuery],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Points>, CallError> {
        let data: Vec<MetricDataQuery> = queries
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let mut metric = Metric::builder()
                    .namespace(&q.namespace)
                    .metric_name(&q.metric);
                for (name, value) in &q.dimensions {
                    metric =
                        metric.dimensions(Dimension::builder().name(name).value(value).build());
                }
                MetricDataQuery::builder()
                    .id(format!("q{i}"))
                    .metric_stat(
                        MetricStat::builder()
                            .metric(metric.build())
                            .period(q.period_s)
                            .stat(&q.statistic)
                            .build(),
                    )
                    .return_data(true)
                    .build()
            })
            .collect();
        let mut out: Vec<Points> = vec![Vec::new(); queries.len()];
        let mut token: Option<String> = None;
        loop {
            let resp = self
                .0
                .get_metric_data()
                .set_metric_data_queries(Some(data.clone()))
                .start_time(DateTime::from_millis(start_ms))
                .end_time(DateTime::from_millis(end_ms))
                .scan_by(ScanBy::TimestampAscending)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| err("GetMetricData", e))?;
            for r in resp.metric_data_results() {
                // A query CloudWatch could not answer is a failure, not "no datapoints" (which
                // would move the window on and leave a gap for good).
                if let Some(code @ (StatusCode::Forbidden | StatusCode::InternalError)) =
                    r.status_code()
                {
                    let said: Vec<&str> = r.messages().iter().filter_map(|m| m.value()).collect();
                    return Err(CallError {
                        call: "GetMetricData",
                        message: format!(
                            "{}: {}{}",
                            r.id().unwrap_or("?"),
                            code.as_str(),
                            if said.is_empty() {
                                String::new()
                            } else {
                                format!(" ({})", said.join("; "))
                            }
                        ),
                        permanent: false,
                    });
                }
                let Some(i) = r
                    .id()
                    .and_then(|id| id.strip_prefix('q'))
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|&i| i < out.len())
                else {
                    continue;
                };
                out[i].extend(
                    r.timestamps()
                        .iter()
                        .map(millis)
                        .zip(r.values().iter().copied()),
                );
            }
            match resp.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => break,
            }
        }
        for points in &mut out {
            points.sort_by_key(|p| p.0);
            points.dedup_by_key(|p| p.0);
        }
        Ok(out)
    }

    async fn list_all(
        &self,
        namespace: &str,
        metric: &str,
        dimensions: &[(String, Option<String>)],
    ) -> Result<Vec<Dimensions>, CallError> {
        let filters: Vec<DimensionFilter> = dimensions
            .iter()
            .map(|(name, value)| {
                DimensionFilter::builder()
                    .name(name)
                    .set_value(value.clone())
                    .build()
            })
            .collect();
        let mut names: Vec<&str> = dimensions.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let resp = self
                .0
                .list_metrics()
                .namespace(namespace)
                .metric_name(metric)
                .set_dimensions(Some(filters.clone()))
                // Metrics with data in the last 3 hours: not a deleted target group's, which
                // ListMetrics keeps for two weeks (each would be a metric requested, and billed).
                .recently_active(RecentlyActive::Pt3H)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| err("ListMetrics", e))?;
            for m in resp.metrics() {
                let dims: Dimensions = m
                    .dimensions()
                    .iter()
                    .map(|d| {
                        (
                            d.name().unwrap_or_default().to_string(),
                            d.value().unwrap_or_default().to_string(),
                        )
                    })
                    .collect();
                let mut got: Vec<&str> = dims.iter().map(|(n, _)| n.as_str()).collect();
                got.sort_unstable();
                if got == names && !out.contains(&dims) {
                    out.push(dims);
                }
            }
            match resp.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(out)
    }
}

/// One target of a target group as DescribeTargetHealth tells it.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetHealth {
    /// The instance id (or IP address) registered.
    pub id: String,
    /// `healthy`, `unhealthy`, `initial`, `draining`, `unused`, `unavailable`.
    pub state: String,
    /// `Target.FailedHealthChecks`, ... (empty when healthy).
    pub reason: String,
    /// Set only for an IP target outside the load balancer's VPC (`all`) or in a zone;
    /// instance targets carry none.
    pub az: Option<String>,
}

pub trait TargetHealthReader: Send + Sync {
    /// DescribeTargetHealth of one target group: every registered target.
    fn describe<'a>(&'a self, arn: &'a str) -> BoxFut<'a, Result<Vec<TargetHealth>, CallError>>;
}

impl TargetHealthReader for Sdk<aws_sdk_elasticloadbalancingv2::Client> {
    fn describe<'a>(&'a self, arn: &'a str) -> BoxFut<'a, Result<Vec<TargetHealth>, CallError>> {
        Box::pin(async move {
            let r = self
                .0
                .describe_target_health()
                .target_group_arn(arn)
                .send()
                .await
                .map_err(|e| err("DescribeTargetHealth", e))
                .map(|resp| {
                    resp.target_health_descriptions()
                        .iter()
                        .map(|d| {
                            let h = d.target_health();
                            TargetHealth {
                                id: d
                                    .target()
                                    .and_then(|t| t.id())
                                    .unwrap_or_default()
                                    .to_string(),
                                state: h
                                    .and_then(|h| h.state())
                                    .map(|s| s.as_str().to_string())
                                    .unwrap_or_default(),
                                reason: h
                                    .and_then(|h| h.reason())
                                    .map(|r| r.as_str().to_string())
                                    .unwrap_or_default(),
                                az: d
                                    .target()
                                    .and_then(|t| t.availability_zone())
                                    .filter(|z| *z != "all")
                                    .map(str::to_string),
                            }
                        })
                        .collect()
                });
            self.1.count("DescribeTargetHealth", &r);
            r
        })
    }
}
