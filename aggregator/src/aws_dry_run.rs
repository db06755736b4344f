//! The dry run's clients: they read what they can (a dry run with `[aws]` still describes the
//! groups through the SDK) and log every change as "dry run: would …" without making it.

use std::collections::BTreeMap;

use super::{
    AutoScaling, BoxFut, CallError, CallMetrics, Clients, Datum, Effect, GroupInfo, MetricSink,
    Publisher,
};

/// Without `[aws]`: nothing is read, every change is logged only.
pub fn without_aws(calls: &CallMetrics) -> Clients {
    Clients {
        autoscaling: Box::new(DryRunAutoScaling {
            reader: None,
            calls: calls.clone(),
        }),
        sns: Box::new(DryRun(calls.clone())),
        cloudwatch: Box::new(DryRun(calls.clone())),
        metrics: None,
        target_health: None,
    }
}

/// A dry run's Auto Scaling: describes through `reader` (the SDK's, when `[aws]` is given),
/// logs changes.
pub(super) struct DryRunAutoScaling {
    pub(super) reader: Option<Box<dyn AutoScaling>>,
    pub(super) calls: CallMetrics,
}

impl AutoScaling for DryRunAutoScaling {
    fn describe<'a>(
        &'a self,
        names: &'a [String],
    ) -> BoxFut<'a, Result<Vec<GroupInfo>, CallError>> {
        match &self.reader {
            Some(r) => r.describe(names),
            None => Box::pin(async { Ok(Vec::new()) }),
        }
    }

    fn set_desired<'a>(
        &'a self,
        asg: &'a str,
        desired: u32,
    ) -> BoxFut<'a, Result<Effect, CallError>> {
        tracing::info!(asg = %asg, desired, "dry run: would SetDesiredCapacity (HonorCooldown false)");
        self.calls.dry_run("SetDesiredCapacity");
        Box::pin(async { Ok(Effect::DryRun) })
    }

    fn set_unhealthy<'a>(&'a self, instance: &'a str) -> BoxFut<'a, Result<Effect, CallError>> {
        tracing::info!(instance = %instance, "dry run: would SetInstanceHealth Unhealthy (ShouldRespectGracePeriod true)");
        self.calls.dry_run("SetInstanceHealth");
        Box::pin(async { Ok(Effect::DryRun) })
    }

    fn set_bounds<'a>(
        &'a self,
        asg: &'a str,
        min: Option<u32>,
        max: Option<u32>,
    ) -> BoxFut<'a, Result<Effect, CallError>> {
        tracing::info!(asg = %asg, min = ?min, max = ?max, "dry run: would UpdateAutoScalingGroup");
        self.calls.dry_run("UpdateAutoScalingGroup");
        Box::pin(async { Ok(Effect::DryRun) })
    }

    fn terminate<'a>(&'a self, instance: &'a str) -> BoxFut<'a, Result<Effect, CallError>> {
        tracing::info!(instance = %instance, "dry run: would TerminateInstanceInAutoScalingGroup (ShouldDecrementDesiredCapacity true)");
        self.calls.dry_run("TerminateInstanceInAutoScalingGroup");
        Box::pin(async { Ok(Effect::DryRun) })
    }

    fn describes(&self) -> bool {
        self.reader.is_some()
    }

    fn dry_run(&self) -> bool {
        true
    }
}

/// A dry run's SNS and CloudWatch.
struct DryRun(CallMetrics);

impl Publisher for DryRun {
    fn publish<'a>(
        &'a self,
        topic_arn: &'a str,
        subject: &'a str,
        _message: &'a str,
        _attributes: &'a BTreeMap<String, String>,
    ) -> BoxFut<'a, Result<Effect, CallError>> {
        tracing::info!(topic = %topic_arn, subject = %subject, "dry run: would Publish to SNS");
        self.0.dry_run("Publish");
        Box::pin(async { Ok(Effect::DryRun) })
    }
}

impl MetricSink for DryRun {
    fn put<'a>(
        &'a self,
        namespace: &'a str,
        data: &'a [Datum],
    ) -> BoxFut<'a, Result<Effect, CallError>> {
        tracing::info!(namespace = %namespace, datums = data.len(), "dry run: would PutMetricData");
        self.0.dry_run("PutMetricData");
        Box::pin(async { Ok(Effect::DryRun) })
    }
}
