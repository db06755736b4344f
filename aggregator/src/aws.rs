//! The AWS calls Vigil makes, each behind a small trait so the action layer can be driven by
//! anything that speaks them (the SDK against AWS or `moto_server`; a recorder in tests).
//!
//! Clients come from `aws-config`'s default credential chain (environment, profile, web
//! identity, ECS, IMDS) with `[aws].region`, and every client honours `[aws].endpoint_url`. The
//! SDK retries throttling, 5xx and transport errors itself (standard mode, 3 attempts, backoff
//! with jitter); each attempt and each call has a time limit so that a hung endpoint cannot hold
//! the action layer. What still fails is retried by the caller at its own pace.
//!
//! A dry run is an implementation of the same traits, chosen at start-up ([`connect`],
//! [`without_aws`]): it reads what it can (a dry run with `[aws]` still describes the groups)
//! and logs every change as "dry run: would …" without making it. Every implementation counts
//! its calls in `vigil_aggregator_aws_calls_total{call,result}` (result ok, error or dry_run).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_autoscaling::config::http::HttpResponse;
use aws_sdk_autoscaling::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::config::Config;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    call: &'static str,
    result: &'static str,
}

/// `vigil_aggregator_aws_calls_total`: AWS calls by call and result.
#[derive(Clone, Default)]
pub struct CallMetrics {
    calls: Family<CallLabels, Counter>,
}

impl CallMetrics {
    pub fn register(r: &mut Registry) -> CallMetrics {
        let m = CallMetrics::default();
        r.register(
            "vigil_aggregator_aws_calls",
            "AWS calls by call and result (ok, error, dry_run: logged, not made)",
            m.calls.clone(),
        );
        m
    }

    fn count<T>(&self, call: &'static str, r: &Result<T, CallError>) {
        let result = if r.is_ok() { "ok" } else { "error" };
        self.calls.get_or_create(&CallLabels { call, result }).inc();
    }

    fn dry_run(&self, call: &'static str) {
        self.calls
            .get_or_create(&CallLabels {
                call,
                result: "dry_run",
            })
            .inc();
    }
}

/// What became of a change sent to AWS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Made,
    /// A dry run: logged, not made.
    DryRun,
}

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A failed call: which, and why (with the SDK's causes).
#[derive(Debug, Clone, PartialEq)]
pub struct CallError {
    pub call: &'static str,
    pub message: String,
    /// AWS refused the request itself (a 4xx other than throttling): sending it again cannot
    /// succeed.
    pub permanent: bool,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.call, self.message)
    }
}

fn err<E>(call: &'static str, e: SdkError<E, HttpResponse>) -> CallError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    let code = e.code().unwrap_or("").to_string();
    let throttled = code.contains("Throttl")
        || code.contains("TooManyRequests")
        || code == "RequestLimitExceeded"
        || code == "SlowDown";
    CallError {
        call,
        permanent: status.is_some_and(|s| (400..500).contains(&s) && s != 408 && s != 429)
            && !throttled,
        message: DisplayErrorContext(e).to_string(),
    }
}

/// An instance of an Auto Scaling group as DescribeAutoScalingGroups tells it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub id: String,
    pub lifecycle: Lifecycle,
    /// `Healthy` or `Unhealthy`.
    pub health: String,
    /// The Availability Zone it runs in.
    pub az: String,
    pub protected_from_scale_in: bool,
}

/// An instance's lifecycle state in its group (only `InService` instances count or may be
/// replaced; the rest are shown as they are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lifecycle {
    InService,
    /// `Pending`, `Terminating`, `Standby`, `Detaching`, a warm pool's states, …
    Other(String),
}

impl Lifecycle {
    pub fn parse(s: &str) -> Lifecycle {
        match s {
            "InService" => Lifecycle::InService,
            other => Lifecycle::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Lifecycle::InService => "InService",
            Lifecycle::Other(s) => s,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GroupInfo {
    pub name: String,
    pub min: u32,
    pub max: u32,
    pub desired: u32,
    pub grace_ms: i64,
    pub members: Vec<Member>,
}

/// One CloudWatch datum: a metric with its dimensions, at one time, with one or several values
/// (Values/Counts).
#[derive(Debug, Clone, PartialEq)]
pub struct Datum {
    pub metric_name: String,
    pub dimensions: Vec<(String, String)>,
    pub timestamp_ms: i64,
    pub values: Vec<f64>,
    pub counts: Vec<f64>,
    /// StorageResolution 1 (high resolution) rather than 60.
    pub high_resolution: bool,
}

pub trait AutoScaling: Send + Sync {
    fn describe<'a>(&'a self, names: &'a [String])
        -> BoxFut<'a, Result<Vec<GroupInfo>, CallError>>;
    /// SetDesiredCapacity with HonorCooldown false: Vigil keeps its own cooldowns.
    fn set_desired<'a>(
        &'a self,
        asg: &'a str,
        desired: u32,
    ) -> BoxFut<'a, Result<Effect, CallError>>;
    /// SetInstanceHealth Unhealthy with ShouldRespectGracePeriod true.
    fn set_unhealthy<'a>(&'a self, instance: &'a str) -> BoxFut<'a, Result<Effect, CallError>>;
    /// UpdateAutoScalingGroup with MinSize and/or MaxSize: a schedule's bounds.
    fn set_bounds<'a>(
        &'a self,
        asg: &'a str,
        min: Option<u32>,
        max: Option<u32>,
    ) -> BoxFut<'a, Result<Effect, CallError>>;
    /// TerminateInstanceInAutoScalingGroup with ShouldDecrementDesiredCapacity true: a scale-in
    /// that chose its victim.
    fn terminate<'a>(&'a self, instance: &'a str) -> BoxFut<'a, Result<Effect, CallError>>;
    /// Whether the groups can be described at all (not without `[aws]`).
    fn describes(&self) -> bool {
        true
    }
    /// Whether changes are only logged: the fleet then follows its own simulation of them.
    fn dry_run(&self) -> bool {
        false
    }
}

pub trait Publisher: Send + Sync {
    fn publish<'a>(
        &'a self,
        topic_arn: &'a str,
        subject: &'a str,
        message: &'a str,
        attributes: &'a BTreeMap<String, String>,
    ) -> BoxFut<'a, Result<Effect, CallError>>;
}

pub trait MetricSink: Send + Sync {
    fn put<'a>(
        &'a self,
        namespace: &'a str,
        data: &'a [Datum],
    ) -> BoxFut<'a, Result<Effect, CallError>>;
}

/// The clients, built once: the SDK's, or the dry run's.
pub struct Clients {
    pub autoscaling: Box<dyn AutoScaling>,
    pub sns: Box<dyn Publisher>,
    pub cloudwatch: Box<dyn MetricSink>,
    /// CloudWatch read (`[[import.cloudwatch]]`): with `[aws]`, dry run or not (reading changes
    /// nothing).
    pub metrics: Option<std::sync::Arc<dyn MetricReader>>,
    /// Target health (`[[import.target_health]]`): with `[aws]`, dry run or not.
    pub target_health: Option<std::sync::Arc<dyn TargetHealthReader>>,
}

/// Builds the clients from the default credential chain (with `[aws] dry_run`, the dry run's,
/// reading through the SDK). Nothing is called yet: credentials are resolved at the first call,
/// and a missing one is reported then (and retried).
pub async fn connect(cfg: &Config, calls: &CallMetrics) -> Clients {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(cfg.region.clone()))
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                // Longer than a slow answer: a call cut while AWS still carries it out would be
                // retried and, for Publish, delivered twice.
                .operation_attempt_timeout(Duration::from_millis(cfg.aws_attempt_timeout_ms as u64))
                .operation_timeout(Duration::from_millis(cfg.aws_call_timeout_ms as u64))
                .build(),
        );
    if let Some(url) = &cfg.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let sdk = loader.load().await;
    let autoscaling = Box::new(Sdk(aws_sdk_autoscaling::Client::new(&sdk), calls.clone()));
    let cloudwatch = aws_sdk_cloudwatch::Client::new(&sdk);
    let metrics: Option<std::sync::Arc<dyn MetricReader>> =
        Some(std::sync::Arc::new(Sdk(cloudwatch.clone(), calls.clone())));
    let target_health: Option<std::sync::Arc<dyn TargetHealthReader>> =
        Some(std::sync::Arc::new(Sdk(
            aws_sdk_elasticloadbalancingv2::Client::new(&sdk),
            calls.clone(),
        )));
    if cfg.dry_run {
        return Clients {
            autoscaling: Box::new(DryRunAutoScaling {
                reader: Some(autoscaling),
                calls: calls.clone(),
            }),
            metrics,
            target_health,
            ..without_aws(calls)
        };
    }
    Clients {
        autoscaling,
        sns: Box::new(Sdk(aws_sdk_sns::Client::new(&sdk), calls.clone())),
        cloudwatch: Box::new(Sdk(cloudwatch, calls.clone())),
        metrics,
        target_health,
    }
}

struct Sdk<C>(C, CallMetrics);

fn count(v: Option<i32>) -> u32 {
    v.unwrap_or(0).max(0) as u32
}

impl AutoScaling for Sdk<aws_sdk_autoscaling::Client> {
    fn describe<'a>(
        &'a self,
        names: &'a [String],
    ) -> BoxFut<'a, Result<Vec<GroupInfo>, CallError>> {
        Box::pin(async move {
            let r = self.describe_all(names).await;
            self.1.count("DescribeAutoScalingGroups", &r);
            r
        })
    }

    fn set_desired<'a>(
        &'a self,
        asg: &'a str,
        desired: u32,
    ) -> BoxFut<'a, Result<Effect, CallError>> {
        Box::pin(async move {
            let r = self
                .0
                .set_desired_capacity()
                .auto_scaling_group_name(asg)
                .desired_capacity(desired.min(i32::MAX as u32) as i32)
                .honor_cooldown(false)
                .send()
                .await
                .map(|_| Effect::Made)
                .map_err(|e| err("SetDesiredCapacity", e));
            self.1.count("SetDesiredCapacity", &r);
            r
        })
    }

    fn set_unhealthy<'a>(&'a self, instance: &'a str) -> BoxFut<'a, Result<Effect, CallError>> {
        Box::pin(async move {
            let r = self
                .0
                .set_instance_health()
                .instance_id(instance)
                .health_status("Unhealthy")
                .should_respect_grace_period(true)
                .send()
                .await
                .map(|_| Effect::Made)
                .map_err(|e| err("SetInstanceHealth", e));
            self.1.count("SetInstanceHealth", &r);
            r
        })
    }

    fn set_bounds<'a>(
        &'a self,
        asg: &'a str,
        min: Option<u32>,
        max: Option<u32>,
    ) -> BoxFut<'a, Result<Effect, CallError>> {
        let size = |v: Option<u32>| v.map(|v| v.min(i32::MAX as u32) as i32);
        Box::pin(async move {
            let r = self
                .0
                .update_auto_scaling_group()
                .auto_scaling_group_name(asg)
                .set_min_size(size(min))
                .set_max_size(size(max))
                .send()
                .await
                .map(|_| Effect::Made)
                .map_err(|e| err("UpdateAutoScalingGroup", e));
            self.1.count("UpdateAutoScalingGroup", &r);
            r
        })
    }

    fn terminate<'a>(&'a self, instance: &'a str) -> BoxFut<'a, Result<Effect, CallError>> {
        Box::pin(async move {
            let r = self
                .0
                .terminate_instance_in_auto_scaling_group()
                .instance_id(instance)
                .should_decrement_desired_capacity(true)
                .send()
                .await
                .map(|_| Effect::Made)
                .map_err(|e| err("TerminateInstanceInAutoScalingGroup", e));
            self.1.count("TerminateInstanceInAutoScalingGroup", &r);
            r
        })
    }
}

impl Sdk<aws_sdk_autoscaling::Client> {
    async fn describe_all(&self, names: &[String]) -> Result<Vec<GroupInfo>, CallError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let resp = self
                .0
                .describe_auto_scaling_groups()
                .set_auto_scaling_group_names(Some(names.to_vec()))
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| err("DescribeAutoScalingGroups", e))?;
            for g in resp.auto_scaling_groups() {
                out.push(GroupInfo {
                    name: g.auto_scaling_group_name().unwrap_or_default().to_string(),
                    min: count(g.min_size()),
                    max: count(g.max_size()),
                    desired: count(g.desired_capacity()),
                    grace_ms: i64::from(g.health_check_grace_period().unwrap_or(0)) * 1000,
                    members: g
                        .instances()
                        .iter()
                        .map(|i| Member {
                            id: i.instance_id().unwrap_or_default().to_string(),
                            lifecycle: Lifecycle::parse(
                                i.lifecycle_state().map_or("", |s| s.as_str()),
                            ),
                            health: i.health_status().unwrap_or_default().to_string(),
                            az: i.availability_zone().unwrap_or_default().to_string(),
                            protected_from_scale_in: i.protected_from_scale_in().unwrap_or(false),
                        })
                        .collect(),
                });
            }
            match resp.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(out)
    }
}

impl Publisher for Sdk<aws_sdk_sns::Client> {
    fn publish<'a>(
        &'a self,
        topic_arn: &'a str,
        subject: &'a str,
        message: &'a str,
        attributes: &'a BTreeMap<String, String>,
    ) -> BoxFut<'a, Result<Effect, CallError>> {
        Box::pin(async move {
            let mut req = self
                .0
                .publish()
                .topic_arn(topic_arn)
                .subject(subject)
                .message(message);
            for (k, v) in attributes {
                let value = aws_sdk_sns::types::MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(v)
                    .build()
                    .map_err(|e| CallError {
                        call: "Publish",
                        message: e.to_string(),
                        permanent: true,
                    })?;
                req = req.message_attributes(k, value);
            }
            let r = req
                .send()
                .await
                .map(|_| Effect::Made)
                .map_err(|e| err("Publish", e));
            self.1.count("Publish", &r);
            r
        })
    }
}

impl MetricSink for Sdk<aws_sdk_cloudwatch::Client> {
    fn put<'a>(
        &'a self,
        namespace: &'a str,
        data: &'a [Datum],
    ) -> BoxFut<'a, Result<Effect, CallError>> {
        use aws_sdk_cloudwatch::primitives::DateTime;
        use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
        Box::pin(async move {
            let datums: Vec<MetricDatum> = data
                .iter()
                .map(|d| {
                    let mut b = MetricDatum::builder()
                        .metric_name(&d.metric_name)
                        .timestamp(DateTime::from_millis(d.timestamp_ms))
                        .unit(StandardUnit::None)
                        .storage_resolution(if d.high_resolution { 1 } else { 60 });
                    for (name, value) in &d.dimensions {
                        b = b.dimensions(Dimension::builder().name(name).value(value).build());
                    }
                    if d.values.len() == 1 && d.counts.first().is_none_or(|c| *c == 1.0) {
                        b = b.value(d.values[0]);
                    } else {
                        b = b
                            .set_values(Some(d.values.clone()))
                            .set_counts(Some(d.counts.clone()));
                    }
                    b.build()
                })
                .collect();
            // The SDK gzips PutMetricData bodies above 10 KiB (CloudWatch accepts gzip).
            let r = self
                .0
                .put_metric_data()
                .namespace(namespace)
                .set_metric_data(Some(datums))
                .send()
                .await
                .map(|_| Effect::Made)
                .map_err(|e| err("PutMetricData", e));
            self.1.count("PutMetricData", &r);
            r
        })
    }
}

#[path = "aws_metrics.rs"]
mod metrics;
#[cfg(test)]
pub use metrics::Points;
pub use metrics::{
    Dimensions, MetricQuery, MetricReader, TargetHealth, TargetHealthReader, MAX_QUERIES,
};

#[path = "aws_dry_run.rs"]
mod dry_run;
pub use dry_run::without_aws;
use dry_run::DryRunAutoScaling;

#[cfg(test)]
#[path = "aws_tests.rs"]
mod tests;
