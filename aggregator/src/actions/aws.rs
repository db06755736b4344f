//! The AWS calls Vigil makes, each behind a small trait so the action layer can be driven by
//! anything that speaks them (the SDK against AWS or `moto_server`; a recorder in tests).
//!
//! Clients come from `aws-config`'s default credential chain (environment, profile, web
//! identity, ECS, IMDS) with `[aws].region`, and every client honours `[aws].endpoint_url`. The
//! SDK retries throttling, 5xx and transport errors itself (standard mode, 3 attempts, backoff
//! with jitter); each attempt and each call has a time limit so that a hung endpoint cannot hold
//! the action layer. What still fails is retried by the caller at its own pace.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_autoscaling::config::http::HttpResponse;
use aws_sdk_autoscaling::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::config::Config;

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
    /// `InService`, `Pending`, `Terminating`, `Standby`, ...
    pub lifecycle: String,
    /// `Healthy` or `Unhealthy`.
    pub health: String,
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
    fn set_desired<'a>(&'a self, asg: &'a str, desired: u32) -> BoxFut<'a, Result<(), CallError>>;
    /// SetInstanceHealth Unhealthy with ShouldRespectGracePeriod true.
    fn set_unhealthy<'a>(&'a self, instance: &'a str) -> BoxFut<'a, Result<(), CallError>>;
}

pub trait Publisher: Send + Sync {
    fn publish<'a>(
        &'a self,
        topic_arn: &'a str,
        subject: &'a str,
        message: &'a str,
        attributes: &'a BTreeMap<String, String>,
    ) -> BoxFut<'a, Result<(), CallError>>;
}

pub trait MetricSink: Send + Sync {
    fn put<'a>(
        &'a self,
        namespace: &'a str,
        data: &'a [Datum],
    ) -> BoxFut<'a, Result<(), CallError>>;
}

/// The three clients, built once.
pub struct Clients {
    pub autoscaling: Box<dyn AutoScaling>,
    pub sns: Box<dyn Publisher>,
    pub cloudwatch: Box<dyn MetricSink>,
}

/// Builds the clients from the default credential chain. Nothing is called yet: credentials are
/// resolved at the first call, and a missing one is reported then (and retried).
pub async fn connect(cfg: &Config) -> Clients {
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
    Clients {
        autoscaling: Box::new(Sdk(aws_sdk_autoscaling::Client::new(&sdk))),
        sns: Box::new(Sdk(aws_sdk_sns::Client::new(&sdk))),
        cloudwatch: Box::new(Sdk(aws_sdk_cloudwatch::Client::new(&sdk))),
    }
}

struct Sdk<C>(C);

fn count(v: Option<i32>) -> u32 {
    v.unwrap_or(0).max(0) as u32
}

impl AutoScaling for Sdk<aws_sdk_autoscaling::Client> {
    fn describe<'a>(
        &'a self,
        names: &'a [String],
    ) -> BoxFut<'a, Result<Vec<GroupInfo>, CallError>> {
        Box::pin(async move {
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
                                lifecycle: i
                                    .lifecycle_state()
                                    .map(|s| s.as_str().to_string())
                                    .unwrap_or_default(),
                                health: i.health_status().unwrap_or_default().to_string(),
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
        })
    }

    fn set_desired<'a>(&'a self, asg: &'a str, desired: u32) -> BoxFut<'a, Result<(), CallError>> {
        Box::pin(async move {
            self.0
                .set_desired_capacity()
                .auto_scaling_group_name(asg)
                .desired_capacity(desired.min(i32::MAX as u32) as i32)
                .honor_cooldown(false)
                .send()
                .await
                .map_err(|e| err("SetDesiredCapacity", e))?;
            Ok(())
        })
    }

    fn set_unhealthy<'a>(&'a self, instance: &'a str) -> BoxFut<'a, Result<(), CallError>> {
        Box::pin(async move {
            self.0
                .set_instance_health()
                .instance_id(instance)
                .health_status("Unhealthy")
                .should_respect_grace_period(true)
                .send()
                .await
                .map_err(|e| err("SetInstanceHealth", e))?;
            Ok(())
        })
    }
}

impl Publisher for Sdk<aws_sdk_sns::Client> {
    fn publish<'a>(
        &'a self,
        topic_arn: &'a str,
        subject: &'a str,
        message: &'a str,
        attributes: &'a BTreeMap<String, String>,
    ) -> BoxFut<'a, Result<(), CallError>> {
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
            req.send().await.map_err(|e| err("Publish", e))?;
            Ok(())
        })
    }
}

impl MetricSink for Sdk<aws_sdk_cloudwatch::Client> {
    fn put<'a>(
        &'a self,
        namespace: &'a str,
        data: &'a [Datum],
    ) -> BoxFut<'a, Result<(), CallError>> {
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
            self.0
                .put_metric_data()
                .namespace(namespace)
                .set_metric_data(Some(datums))
                .send()
                .await
                .map_err(|e| err("PutMetricData", e))?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// The shipped IAM policy allows exactly the calls this module makes.
    #[test]
    fn the_iam_policy_allows_exactly_the_calls_made() {
        let all = include_str!("aws.rs");
        let source = &all[..all.find("#[cfg(test)]").expect("a test module")];
        let mut made = BTreeSet::new();
        for (op, action) in [
            (
                "describe_auto_scaling_groups",
                "autoscaling:DescribeAutoScalingGroups",
            ),
            ("set_desired_capacity", "autoscaling:SetDesiredCapacity"),
            ("set_instance_health", "autoscaling:SetInstanceHealth"),
            ("put_metric_data", "cloudwatch:PutMetricData"),
            ("publish", "sns:Publish"),
        ] {
            if source.contains(&format!(".{op}()")) {
                made.insert(action.to_string());
            }
        }
        // Any other SDK operation called here would need a line above and in the policy.
        let calls = source.matches(".send()").count();
        assert_eq!(calls, made.len(), "an SDK call the policy may not cover");
        let policy: serde_json::Value = serde_json::from_str(include_str!(
            "../../../packaging/iam/vigil-aggregator-policy.json"
        ))
        .expect("the policy is JSON");
        let allowed: BTreeSet<String> = policy["Statement"]
            .as_array()
            .expect("statements")
            .iter()
            .flat_map(|s| s["Action"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect();
        assert_eq!(allowed, made);
        for s in policy["Statement"].as_array().into_iter().flatten() {
            assert_eq!(s["Effect"], "Allow");
            let action = s["Action"][0].as_str().unwrap_or("");
            if action != "autoscaling:DescribeAutoScalingGroups" {
                assert!(
                    s["Condition"].is_object() || s["Resource"] != "*",
                    "{action} must be narrowed by a condition or a resource"
                );
            }
        }
    }
}
