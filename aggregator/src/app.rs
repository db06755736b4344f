//! The aggregator's shared state: configuration, the series window, the rules and their
//! evaluation state, self-metrics.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use vigil_rules::alerting::{Alert, AlertState};
use vigil_rules::evaluator::{AlertKey, RuleSet, Simulation};
use vigil_rules::promql::{Engine, EngineOpts};
use vigil_rules::replace::ReplaceDecision;
use vigil_rules::rulefile::{self, Context};
use vigil_rules::scaling::Decision;

use crate::config::{self, Config};
use crate::store::Store;

type LabelSet = Vec<(String, String)>;

#[derive(Clone)]
pub struct Metrics {
    pub write_requests: Family<LabelSet, Counter>,
    pub write_refused: Family<LabelSet, Counter>,
    pub samples_ingested: Counter,
    pub samples_dropped: Family<LabelSet, Counter>,
    pub series: Gauge,
    pub chunk_bytes: Gauge,
    pub rule_evaluation_failures: Counter,
    pub reloads: Family<LabelSet, Counter>,
    pub decisions: Family<LabelSet, Counter>,
    pub aws_calls: Family<LabelSet, Counter>,
    pub external_changes: Family<LabelSet, Counter>,
    pub notifications: Family<LabelSet, Counter>,
    pub outbox: Gauge,
    pub cloudwatch_datums: Counter,
    pub cloudwatch_dropped: Family<LabelSet, Counter>,
    pub cloudwatch_cost: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Metrics {
    pub fn register(r: &mut Registry) -> Metrics {
        let m = Metrics {
            write_requests: Family::default(),
            write_refused: Family::default(),
            samples_ingested: Counter::default(),
            samples_dropped: Family::default(),
            series: Gauge::default(),
            chunk_bytes: Gauge::default(),
            rule_evaluation_failures: Counter::default(),
            reloads: Family::default(),
            decisions: Family::default(),
            aws_calls: Family::default(),
            external_changes: Family::default(),
            notifications: Family::default(),
            outbox: Gauge::default(),
            cloudwatch_datums: Counter::default(),
            cloudwatch_dropped: Family::default(),
            cloudwatch_cost: Gauge::default(),
        };
        r.register(
            "vigil_aggregator_write_requests",
            "Remote-write requests by HTTP status",
            m.write_requests.clone(),
        );
        r.register(
            "vigil_aggregator_write_refused",
            "Remote-write requests refused by a limit, by limit",
            m.write_refused.clone(),
        );
        r.register(
            "vigil_aggregator_samples_ingested",
            "Samples stored",
            m.samples_ingested.clone(),
        );
        r.register(
            "vigil_aggregator_samples_dropped",
            "Samples not stored, by reason",
            m.samples_dropped.clone(),
        );
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
            "vigil_aggregator_reloads",
            "Rule reloads by result",
            m.reloads.clone(),
        );
        r.register(
            "vigil_aggregator_decisions",
            "Decisions by kind",
            m.decisions.clone(),
        );
        r.register(
            "vigil_aggregator_aws_calls",
            "AWS calls by call and result (ok, error, dry_run: logged, not made)",
            m.aws_calls.clone(),
        );
        r.register(
            "vigil_aggregator_external_capacity_changes",
            "Desired-capacity changes made outside Vigil, by group",
            m.external_changes.clone(),
        );
        r.register(
            "vigil_aggregator_notifications",
            "Notification delivery attempts by integration and result (delivered, failed, expired, dry_run)",
            m.notifications.clone(),
        );
        r.register(
            "vigil_aggregator_notification_outbox",
            "Notifications waiting in the outbox",
            m.outbox.clone(),
        );
        r.register(
            "vigil_aggregator_cloudwatch_datums",
            "CloudWatch datums published",
            m.cloudwatch_datums.clone(),
        );
        r.register(
            "vigil_aggregator_cloudwatch_dropped",
            "Recorded samples not published to CloudWatch, by reason (invalid: NaN, ±Inf, out of range; queue_full; too_old; rejected by CloudWatch)",
            m.cloudwatch_dropped.clone(),
        );
        r.register(
            "vigil_aggregator_cloudwatch_estimated_monthly_cost_dollars",
            "Estimated monthly cost of the custom metrics published in the last hour and of the PutMetricData calls, at CloudWatch's list price",
            m.cloudwatch_cost.clone(),
        );
        m
    }

    pub fn aws_call(&self, call: &str, result: &str) {
        self.aws_calls
            .get_or_create(&vec![
                ("call".into(), call.into()),
                ("result".into(), result.into()),
            ])
            .inc();
    }

    pub fn notification(&self, integration: &str, result: &str) {
        self.notifications
            .get_or_create(&vec![
                ("integration".into(), integration.into()),
                ("result".into(), result.into()),
            ])
            .inc();
    }
}

/// Decisions kept for the API and the status page.
pub const HISTORY: usize = 200;

pub struct Evaluation {
    pub sim: Simulation,
    pub decisions: VecDeque<Decision>,
    pub replacements: VecDeque<ReplaceDecision>,
    /// Human-readable recent events for the status page.
    pub log: VecDeque<String>,
    pub notifier: crate::actions::notify::Notifier,
}

/// What readers (the API, the status page) see of the evaluation: published by the engine
/// after each evaluation, so that no request waits behind one (an evaluation holds its state
/// through PromQL and the SQLite commit).
#[derive(Default)]
pub struct View {
    /// Alerts pending or firing, by their rule.
    pub alerts: HashMap<AlertKey, Vec<Alert>>,
    /// Each group's capacity as the evaluation last decided or simulated it.
    pub capacity: HashMap<String, u32>,
    pub decisions: VecDeque<Decision>,
    /// Human-readable recent events for the status page.
    pub log: VecDeque<String>,
}

impl View {
    pub fn of(ev: &Evaluation) -> View {
        View {
            alerts: ev
                .sim
                .state
                .alerts
                .iter()
                .filter_map(|(k, r)| {
                    let active: Vec<Alert> = r
                        .active
                        .values()
                        .filter(|a| a.state != AlertState::Inactive)
                        .cloned()
                        .collect();
                    (!active.is_empty()).then(|| (k.clone(), active))
                })
                .collect(),
            capacity: ev
                .sim
                .capacity
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            decisions: ev.decisions.clone(),
            log: ev.log.clone(),
        }
    }
}

pub struct App {
    pub cfg: Config,
    /// The evaluation as readers see it (see [`View`]).
    pub view: ArcSwap<View>,
    /// The engine API queries run on: `[query] max_samples`.
    pub query_engine: Engine,
    /// API queries running at once (`[query] max_concurrency`).
    pub query_slots: Arc<tokio::sync::Semaphore>,
    pub store: Store,
    pub engine: Engine,
    pub rules: RwLock<Arc<RuleSet>>,
    pub eval: Mutex<Evaluation>,
    pub token: Option<String>,
    pub registry: Registry,
    pub metrics: Metrics,
    pub ready: AtomicBool,
    /// After a restart with saved state, rules are not evaluated before this time (ms): the
    /// window starts empty, and evaluating it would resolve every firing alert and notify.
    pub warm_until_ms: i64,
    pub last_reload_error: Mutex<Option<String>>,
    pub db: Mutex<crate::state::Db>,
    pub actions: crate::actions::Actions,
}

/// Loads every rule file the config names; all-or-nothing.
pub fn load_rules(cfg: &Config) -> Result<RuleSet, String> {
    let mut sources = Vec::new();
    for p in config::expand_rule_files(&cfg.rule_files) {
        let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        sources.push((p.display().to_string(), text));
    }
    sources.extend(cfg.builtin_rules.iter().cloned());
    let ctx = Context {
        receivers: Some(cfg.receivers.iter().map(|r| r.name.clone()).collect()),
    };
    let files = rulefile::load_all(&sources, &ctx).map_err(|errs| {
        errs.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    Ok(RuleSet {
        files,
        default_interval_ms: cfg.evaluation_interval_ms,
    })
}

impl App {
    pub fn new(
        cfg: Config,
        rules: RuleSet,
        db: crate::state::Db,
        clients: Option<crate::actions::aws::Clients>,
    ) -> Result<App, String> {
        let token = match &cfg.auth_token_file {
            Some(p) => {
                let t = std::fs::read_to_string(p)
                    .map_err(|e| format!("auth_token_file {}: {e}", p.display()))?;
                let t = t.trim().to_string();
                if t.is_empty() {
                    return Err(format!("auth_token_file {} is empty", p.display()));
                }
                Some(t)
            }
            None => None,
        };
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let engine = Engine::new(EngineOpts {
            default_subquery_step_ms: cfg.evaluation_interval_ms,
            ..EngineOpts::default()
        });
        let rules = Arc::new(rules);
        let mut sim = Simulation::new(rules.clone(), engine.clone());
        let mut warm_until_ms = 0;
        {
            match db.load() {
                Ok(Some((state, capacity))) => {
                    warm_until_ms = crate::engine::now_ms() + cfg.stale_after_ms;
                    let firing = state
                        .alerts
                        .values()
                        .flat_map(|r| r.active.values())
                        .filter(|a| a.state == vigil_rules::alerting::AlertState::Firing)
                        .count();
                    tracing::info!(
                        firing_alerts = firing,
                        groups = capacity.len(),
                        "evaluation state restored"
                    );
                    sim.state = state;
                    for (asg, n) in capacity {
                        sim.capacity.insert(asg, n);
                    }
                }
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        let actions = crate::actions::Actions::new(clients, cfg.dry_run, rules.tick_ms());
        if let Some(pending) = db.load_actions().map_err(|e| e.to_string())? {
            actions.restore_pending(&pending);
        }
        let notifier = match db.load_notifier().map_err(|e| e.to_string())? {
            Some(v) => crate::actions::notify::Notifier::from_json(&v)
                .ok_or("the notifier state in the state database is unreadable")?,
            None => Default::default(),
        };
        let evaluation = Evaluation {
            sim,
            decisions: VecDeque::new(),
            replacements: VecDeque::new(),
            log: VecDeque::new(),
            notifier,
        };
        Ok(App {
            store: Store::new(cfg.retention_ms, cfg.max_series),
            query_engine: Engine::new(EngineOpts {
                max_samples: cfg.query_max_samples,
                ..engine.opts.clone()
            }),
            query_slots: Arc::new(tokio::sync::Semaphore::new(cfg.query_max_concurrency)),
            engine,
            rules: RwLock::new(rules),
            view: ArcSwap::from_pointee(View::of(&evaluation)),
            eval: Mutex::new(evaluation),
            token,
            registry,
            metrics,
            ready: AtomicBool::new(false),
            warm_until_ms,
            last_reload_error: Mutex::new(None),
            db: Mutex::new(db),
            actions,
            cfg,
        })
    }

    pub fn db(&self) -> std::sync::MutexGuard<'_, crate::state::Db> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn notify_settings(&self) -> crate::actions::notify::Settings {
        crate::actions::notify::Settings {
            group_by: self.cfg.group_by.clone(),
            group_wait_ms: self.cfg.group_wait_ms,
            group_interval_ms: self.cfg.group_interval_ms,
            repeat_interval_ms: self.cfg.repeat_interval_ms,
            receivers: self.cfg.receivers.clone(),
        }
    }

    pub fn rules(&self) -> Arc<RuleSet> {
        self.rules.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reloads the rule files: all of them, or none (the previous rules keep running).
    pub fn reload(&self) -> Result<usize, String> {
        match load_rules(&self.cfg) {
            Ok(set) => {
                let n: usize = set
                    .files
                    .iter()
                    .map(|f| {
                        f.groups.iter().map(|g| g.rules.len()).sum::<usize>()
                            + f.scaling.len()
                            + f.replace.len()
                    })
                    .sum();
                let set = Arc::new(set);
                *self.rules.write().unwrap_or_else(|p| p.into_inner()) = set.clone();
                self.eval
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .sim
                    .set_rules(set);
                *self
                    .last_reload_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
                self.metrics
                    .reloads
                    .get_or_create(&vec![("result".into(), "success".into())])
                    .inc();
                tracing::info!(rules = n, "rules reloaded");
                Ok(n)
            }
            Err(e) => {
                *self
                    .last_reload_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
                self.metrics
                    .reloads
                    .get_or_create(&vec![("result".into(), "failure".into())])
                    .inc();
                tracing::error!(error = %e, "reload failed: the previous rules keep running");
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded default (no config file) evaluates the demo rules, in a dry run, with no
    /// AWS: what `scripts/run` shows a newcomer.
    #[test]
    fn the_embedded_default_runs_the_demo_rules() {
        let cfg = Config::embedded();
        assert!(cfg.dry_run && !cfg.aws_configured && cfg.rule_files.is_empty());
        let rules = load_rules(&cfg).expect("the demo rules load");
        assert_eq!(rules.files.len(), 1);
        assert_eq!(
            rules.scaling().map(|p| p.asg.as_str()).collect::<Vec<_>>(),
            ["demo-this-host"]
        );
        assert!(rules.groups().any(|g| g.name == "this-host"));
    }
}
