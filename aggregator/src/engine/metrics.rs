//! The engine's own metrics: series and chunk bytes in the window, rule evaluation failures,
//! decisions by kind, scaling decisions and schedule runs by group.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use vigil_rules::scaling::Decision;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    asg: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScalingLabels {
    asg: String,
    result: &'static str,
}

#[derive(Clone, Default)]
pub(super) struct Metrics {
    pub(super) rule_evaluation_failures: Counter,
    decisions: Family<KindLabels, Counter>,
    scaling: Family<ScalingLabels, Counter>,
    schedule_runs: Family<GroupLabels, Counter>,
    pub(super) series: Gauge,
    pub(super) chunk_bytes: Gauge,
}

impl Metrics {
    pub(super) fn register(r: &mut Registry) -> Metrics {
        let m = Metrics::default();
        r.register(
            "vigil_aggregator_series",
            "Series in the window",
            m.series.clone(),
        );
        r.register(
            "vigil_aggregator_chunk_bytes",
            "Bytes of compressed samples in the window",
            m.chunk_bytes.clone(),
        );
        r.register(
            "vigil_aggregator_rule_evaluation_failures",
            "Rule evaluations that failed",
            m.rule_evaluation_failures.clone(),
        );
        r.register(
            "vigil_aggregator_decisions",
            "Decisions by kind",
            m.decisions.clone(),
        );
        r.register(
            "vigil_aggregator_scaling_decisions",
            "Scaling decisions acted on, by group and result: out, in, held (a pause, guard or limit held a change back)",
            m.scaling.clone(),
        );
        r.register(
            "vigil_aggregator_schedule_runs",
            "Schedule runs acted on, by group",
            m.schedule_runs.clone(),
        );
        m
    }

    pub(super) fn scaling_decision(&self, d: &Decision) {
        let result = if d.desired > d.current {
            Some("out")
        } else if d.desired < d.current {
            Some("in")
        } else if d.held_worth_saying() {
            Some("held")
        } else {
            None
        };
        if let Some(result) = result {
            self.scaling
                .get_or_create(&ScalingLabels {
                    asg: d.asg.clone(),
                    result,
                })
                .inc();
        }
        if d.scheduled.is_some() {
            self.schedule_runs
                .get_or_create(&GroupLabels { asg: d.asg.clone() })
                .inc();
        }
    }

    pub(super) fn decision(&self, kind: &'static str) {
        self.decisions.get_or_create(&KindLabels { kind }).inc();
    }
}
