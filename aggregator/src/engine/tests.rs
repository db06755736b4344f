//! The engine started on a state database written by the previous release (schema 1, the
//! fixture in `aggregator/fixtures/state-v1/`, produced by that release's binary: see
//! `make_state_v1_fixture` in the e2e tests): nothing it knew is lost on upgrade.

use std::sync::Arc;

use prometheus_client::registry::Registry;
use vigil_rules::alerting::AlertState;
use vigil_rules::evaluator::{alert_key, RuleSet};
use vigil_rules::rulefile::{self, Context, Rule};

use super::{Engine, Parts};
use crate::clock::ManualClock;
use crate::fleet::Fleet;
use crate::notify::{Outbox, Settings};
use crate::publish::Publisher;
use crate::ruleset::Rules;
use crate::state::{self, Db};
use crate::store::Store;

const DUMP: &str = include_str!("../../fixtures/state-v1/vigil.sql");
const RULES: &str = include_str!("../../fixtures/state-v1/rules.toml");

/// The rule file's name as the fixture's run knew it (alert keys carry it).
fn rule_file_name() -> String {
    let at = DUMP
        .find("\"file\":\"")
        .expect("a keyed alert in the fixture")
        + 8;
    DUMP[at..at + DUMP[at..].find('"').unwrap()].to_string()
}

fn engine_on(dir: &std::path::Path) -> (Engine, state::Shared) {
    let files = rulefile::load_all(
        &[(rule_file_name(), RULES.to_string())],
        &Context::default(),
    )
    .expect("the fixture's rules");
    let rules = RuleSet {
        files,
        default_interval_ms: 1_000,
    };
    let mut r = Registry::default();
    let calls = crate::aws::CallMetrics::register(&mut r);
    let clients = crate::aws::without_aws(&calls);
    let clock = ManualClock::at(1_796_193_300_000);
    let db = state::Shared::new(Db::open(dir).expect("open"));
    let cfg = crate::config::Config::default();
    let cluster = Arc::new(crate::cluster::Cluster::single(clock.clone(), &mut r));
    let parts = Parts {
        remote: None,
        store: Arc::new(Store::new(3_600_000, 1000)),
        rules: Arc::new(Rules::new(cfg.clone(), rules, &mut r)),
        fleet: Arc::new(Fleet::new(
            clients.autoscaling,
            clock.clone(),
            1_000,
            &mut r,
        )),
        publisher: Arc::new(Publisher::new(
            clients.cloudwatch,
            "Vigil".into(),
            60_000,
            clock.clone(),
            cluster.clone(),
            &mut r,
        )),
        outbox: Arc::new(Outbox::new(
            db.clone(),
            clients.sns,
            clock.clone(),
            cluster.clone(),
            std::time::Duration::from_secs(10),
            &mut r,
        )),
        cluster,
        db: db.clone(),
        clock,
        notify: Settings {
            group_by: vec!["alertname".into()],
            group_wait_ms: 1_000,
            group_interval_ms: 2_000,
            repeat_interval_ms: 3_600_000,
            routing: Default::default(),
            templates: Default::default(),
            receivers: vec![],
        },
        stale_after_ms: 60_000,
        evaluation_interval_ms: 1_000,
    };
    (Engine::new(parts, &mut r).expect("the engine starts"), db)
}

#[test]
fn a_schema_1_database_keeps_its_alerts_cooldowns_notifier_and_outbox() {
    let dir = std::env::temp_dir().join(format!("vigil-state-v1-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    rusqlite::Connection::open(dir.join("vigil.db"))
        .unwrap()
        .execute_batch(DUMP)
        .expect("the fixture restores");
    let (engine, db) = engine_on(&dir);
    {
        let ev = engine.eval.lock().unwrap();
        let s = &ev.sim.state;
        let rules = engine.parts.rules.current();
        let g = rules.groups().next().unwrap();
        let alerts: Vec<_> = g
            .rules
            .iter()
            .filter_map(|r| match r {
                Rule::Alert(a) => Some(a),
                _ => None,
            })
            .collect();
        // Keyed by today's key: the evaluation finds them.
        let errors = &s.alerts[&alert_key(g, alerts[0])].active;
        assert_eq!(errors.len(), 1);
        let a = errors.values().next().unwrap();
        assert_eq!(a.state, AlertState::Firing);
        assert_eq!(a.labels.get("team"), Some("web i-a"));
        assert!(a.fired_at.is_some());
        let slow = &s.alerts[&alert_key(g, alerts[1])].active;
        assert_eq!(slow.len(), 4);
        assert!(slow.values().all(|a| a.state == AlertState::Pending));
        assert!(s.groups["web"].last_scale_out.is_some(), "the cooldown");
        assert!(
            !s.policies["load"].history.is_empty(),
            "the stabilization window"
        );
        assert!(s.replace["health"].replaced.iter().any(|(_, i)| i == "i-b"));
        assert_eq!(ev.sim.capacities().get("web"), Some(&4));
        assert!(
            !ev.notifier.is_idle(),
            "the notifier remembers what it told"
        );
    }
    assert_eq!(db.lock().outbox_len().unwrap(), 1, "the queued notice");
    // The next commit writes schema 2 (an evaluation would also judge the empty window: the
    // warm-up after a restart is what keeps that from happening); read again, nothing needs
    // migrating and nothing is lost.
    {
        let ev = engine.eval.lock().unwrap();
        db.lock()
            .commit_evaluation(&state::Evaluated {
                at: 1_796_193_301_000,
                state: &ev.sim.state,
                capacity: ev.sim.capacities(),
                actions: &engine.parts.fleet.pending_json(),
                history: &[],
                notifier: None,
                deliveries: &[],
                ttl_ms: 1,
            })
            .unwrap();
    }
    drop(engine);
    let snap = db.lock().load().unwrap().unwrap();
    assert_eq!(snap.schema, state::SCHEMA);
    let (again, _) = engine_on(&dir);
    let ev = again.eval.lock().unwrap();
    let firing = ev
        .sim
        .state
        .alerts
        .values()
        .flat_map(|r| r.active.values())
        .filter(|a| a.state == AlertState::Firing)
        .count();
    assert_eq!(firing, 1);
    assert_eq!(ev.sim.state.alerts.len(), 2);
    drop(ev);
    let _ = std::fs::remove_dir_all(&dir);
}
