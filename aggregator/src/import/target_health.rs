//! `[[import.target_health]]`: what the load balancer thinks of each target, every `interval`
//! (DescribeTargetHealth), as `vigil_lb_target_healthy{target_group, instance, az}` (1 healthy,
//! 0 otherwise) and `vigil_lb_target_state{target_group, instance, az, state, reason}` (1 for
//! the current state; the series of a state left, or of a target deregistered, is marked stale
//! at once rather than lingering for the lookback). DescribeTargetHealth gives no AZ for an
//! instance target: it comes from the Auto Scaling groups' describe, else from the `az` label
//! the instance's agent pushes (its `vigil_instance_up`), else it is left out.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use vigil_wire::{Labels, Sample, METRIC_NAME, STALE_NAN};

use crate::aws::{TargetHealth, TargetHealthReader};
use crate::clock::SharedClock;
use crate::config::TargetHealthImport;
use crate::store::Store;

pub const HEALTHY: &str = "vigil_lb_target_healthy";
pub const STATE: &str = "vigil_lb_target_state";

pub struct TargetHealthPoller {
    imports: Vec<TargetHealthImport>,
    reader: Arc<dyn TargetHealthReader>,
    store: Arc<Store>,
    clock: SharedClock,
    /// Instance → AZ (the groups' last describe).
    zones: Arc<dyn Fn() -> HashMap<String, String> + Send + Sync>,
}

impl TargetHealthPoller {
    pub fn new(
        imports: Vec<TargetHealthImport>,
        reader: Arc<dyn TargetHealthReader>,
        store: Arc<Store>,
        clock: SharedClock,
        zones: Arc<dyn Fn() -> HashMap<String, String> + Send + Sync>,
    ) -> TargetHealthPoller {
        TargetHealthPoller {
            imports,
            reader,
            store,
            clock,
            zones,
        }
    }

    /// Polls until the process ends, each target group at its own interval.
    pub async fn run(self) {
        let this = Arc::new(self);
        let mut tasks = Vec::new();
        for i in 0..this.imports.len() {
            let this = this.clone();
            tasks.push(tokio::spawn(async move {
                let every = Duration::from_millis(this.imports[i].interval_ms as u64);
                let mut written: BTreeMap<String, Labels> = BTreeMap::new();
                loop {
                    this.poll(i, &mut written).await;
                    tokio::time::sleep(every).await;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Reads one target group and writes its series; `written`: each target's state series
    /// last written (to mark it stale when it changes or goes).
    async fn poll(&self, i: usize, written: &mut BTreeMap<String, Labels>) {
        let imp = &self.imports[i];
        let targets = match self.reader.describe(&imp.target_group_arn).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(target_group = %imp.label(), error = %e, "target health: DescribeTargetHealth failed; retried at the next interval");
                return;
            }
        };
        let now = self.clock.now_ms();
        let mut zones = (self.zones)();
        if targets
            .iter()
            .any(|t| t.az.is_none() && !zones.contains_key(&t.id))
        {
            for (i, az) in self.agents_zones(now) {
                zones.entry(i).or_insert(az);
            }
        }
        let mut seen = BTreeMap::new();
        for t in &targets {
            let (healthy, state) = series(imp.label(), t, &zones);
            self.write(&healthy, now, if t.state == "healthy" { 1.0 } else { 0.0 });
            self.write(&state, now, 1.0);
            if let Some(old) = written.get(&t.id) {
                if *old != state {
                    self.write(old, now, STALE_NAN);
                }
            }
            seen.insert(t.id.clone(), state);
        }
        for (id, old) in written.iter() {
            if !seen.contains_key(id) {
                self.write(old, now, STALE_NAN);
                let mut b = old.to_builder();
                b.set(METRIC_NAME, HEALTHY);
                b.del("state");
                b.del("reason");
                self.write(&b.build(), now, STALE_NAN);
            }
        }
        *written = seen;
    }

    /// Instance → the `az` its agent pushes with (`vigil_instance_up` of the last 5 minutes).
    fn agents_zones(&self, now: i64) -> HashMap<String, String> {
        use vigil_rules::promql::storage::{MatchOp, Matcher};
        self.store
            .read(
                &[Matcher::new(
                    MatchOp::Equal,
                    METRIC_NAME,
                    "vigil_instance_up",
                )],
                now - 300_000,
                now,
            )
            .into_iter()
            .filter_map(|s| {
                let az = s.labels.get("az").filter(|z| !z.is_empty())?.to_string();
                Some((s.labels.get("instance")?.to_string(), az))
            })
            .collect()
    }

    fn write(&self, labels: &Labels, now: i64, value: f64) {
        if let Err(e) = self.store.append(labels, [Sample::new(now, value)], now) {
            tracing::warn!(series = %labels, error = %e, "target health sample dropped");
        }
    }
}

/// A target's two series: healthy (0/1) and its state.
fn series(group: &str, t: &TargetHealth, zones: &HashMap<String, String>) -> (Labels, Labels) {
    let az =
        t.az.clone()
            .or_else(|| zones.get(&t.id).cloned())
            .unwrap_or_default();
    let healthy = Labels::from_pairs([
        (METRIC_NAME, HEALTHY),
        ("target_group", group),
        ("instance", t.id.as_str()),
        ("az", az.as_str()),
    ]);
    let state = Labels::from_pairs([
        (METRIC_NAME, STATE),
        ("target_group", group),
        ("instance", t.id.as_str()),
        ("az", az.as_str()),
        ("state", t.state.as_str()),
        ("reason", t.reason.as_str()),
    ]);
    (healthy, state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::{BoxFut, CallError};
    use std::sync::Mutex;
    use vigil_rules::promql::storage::{MatchOp, Matcher};

    struct Fake(Mutex<Vec<TargetHealth>>);
    impl TargetHealthReader for Fake {
        fn describe<'a>(
            &'a self,
            _arn: &'a str,
        ) -> BoxFut<'a, Result<Vec<TargetHealth>, CallError>> {
            let v = self.0.lock().unwrap().clone();
            Box::pin(async move { Ok(v) })
        }
    }

    struct At(std::sync::atomic::AtomicI64);
    impl crate::clock::Clock for At {
        fn now_ms(&self) -> i64 {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    fn target(id: &str, state: &str, reason: &str) -> TargetHealth {
        TargetHealth {
            id: id.into(),
            state: state.into(),
            reason: reason.into(),
            az: None,
        }
    }

    #[tokio::test]
    async fn health_per_instance_with_its_zone_and_a_state_left_marked_stale() {
        let fake = Arc::new(Fake(Mutex::new(vec![
            target("i-1", "healthy", ""),
            target("i-2", "unhealthy", "Target.FailedHealthChecks"),
        ])));
        let store = Arc::new(Store::new(3_600_000, 1000));
        let clock = Arc::new(At(std::sync::atomic::AtomicI64::new(1_000_000)));
        let p = TargetHealthPoller::new(
            vec![TargetHealthImport {
                target_group_arn:
                    "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/0a".into(),
                interval_ms: 15_000,
            }],
            fake.clone(),
            store.clone(),
            clock.clone(),
            Arc::new(|| HashMap::from([("i-1".to_string(), "us-east-1a".to_string())])),
        );
        // i-2 is in no group: its agent says where it runs.
        let up = Labels::from_pairs([
            (METRIC_NAME, "vigil_instance_up"),
            ("instance", "i-2"),
            ("az", "us-east-1b"),
        ]);
        store
            .append(&up, [Sample::new(999_000, 1.0)], 1_000_000)
            .unwrap();
        let mut written = BTreeMap::new();
        p.poll(0, &mut written).await;
        let read = |name: &str| -> Vec<(String, Vec<f64>)> {
            store
                .read(
                    &[Matcher::new(MatchOp::Equal, METRIC_NAME, name)],
                    0,
                    2_000_000,
                )
                .into_iter()
                .map(|s| {
                    (
                        s.labels.to_string(),
                        s.samples.iter().map(|x| x.value).collect(),
                    )
                })
                .collect()
        };
        assert_eq!(
            read(HEALTHY),
            [
                (
                    r#"vigil_lb_target_healthy{az="us-east-1a", instance="i-1", target_group="targetgroup/web/0a"}"#.to_string(),
                    vec![1.0]
                ),
                (
                    r#"vigil_lb_target_healthy{az="us-east-1b", instance="i-2", target_group="targetgroup/web/0a"}"#.to_string(),
                    vec![0.0]
                ),
            ]
        );
        // i-2 recovers, i-1 is deregistered: i-2's unhealthy state and i-1's series go stale.
        *fake.0.lock().unwrap() = vec![target("i-2", "healthy", "")];
        clock
            .0
            .store(1_015_000, std::sync::atomic::Ordering::SeqCst);
        p.poll(0, &mut written).await;
        let states = read(STATE);
        let stale = |name: &str, l: &str| {
            read(name)
                .iter()
                .find(|(k, _)| k.contains(l))
                .is_some_and(|(_, v)| v.last().is_some_and(|x| Sample::new(0, *x).is_stale()))
        };
        assert!(stale(STATE, "Target.FailedHealthChecks"), "{states:?}");
        assert!(stale(STATE, "i-1"), "{states:?}");
        assert!(stale(HEALTHY, "i-1"), "{:?}", read(HEALTHY));
        assert!(!stale(HEALTHY, "i-2"));
    }
}
