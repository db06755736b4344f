use super::*;
use vigil_rules::alerting::{Alert, AlertState, RuleState};
use vigil_rules::evaluator::AlertKey;
use vigil_rules::replace::ReplaceState;
use vigil_rules::scaling::{GroupState, PolicyState};

#[test]
fn snapshots_round_trip_through_sqlite() {
    let dir = std::env::temp_dir().join(format!("vigil-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let db = Db::open(&dir).unwrap();
    assert!(db.load().unwrap().is_none());
    let mut s = State::default();
    let key = AlertKey {
        file: "f".into(),
        group: "g".into(),
        alert: "A".into(),
        expr: "up == 0".into(),
        for_ms: 60_000,
        labels: "[]".into(),
    };
    let labels = Labels::from_pairs([("alertname", "A"), ("instance", "i-1")]);
    let mut rs = RuleState::default();
    rs.active.insert(
        labels.clone(),
        Alert {
            labels,
            annotations: [("summary".to_string(), "x".to_string())].into(),
            value: f64::NAN,
            state: AlertState::Firing,
            active_at: 1000,
            fired_at: Some(61_000),
            resolved_at: None,
            keep_firing_since: None,
        },
    );
    s.alerts.insert(key.clone(), rs);
    s.groups.insert(
        "web".into(),
        GroupState {
            last_scale_out: Some(5),
            last_scale_in: None,
            paused: None,
            changes: [(5, 2)].into(),
            no_data_since: [("cpu".to_string(), 3)].into(),
            scheduled: Some(vigil_rules::schedule::ScheduleRun {
                schedule: "peak".into(),
                at: 4,
                min: Some(6),
                max: None,
            }),
            schedules_checked: Some(5),
            simulated_gone: vec!["i-9".to_string()],
        },
    );
    s.policies.insert(
        "cpu".into(),
        PolicyState {
            history: [(1, 4u32), (2, 6)].into(),
        },
    );
    let mut r = ReplaceState::default();
    r.replaced.push_back((7, "i-9".into()));
    r.failing_open = true;
    s.replace.insert("rep".into(), r);
    let cap = BTreeMap::from([("web".to_string(), 6u32)]);
    let actions = json!({"scale": {"web": {"desired": 7, "from": 6, "decided_at": 5}}});
    for at in [100, 200] {
        db.commit_evaluation(&Evaluated {
            at,
            state: &s,
            capacity: &cap,
            actions: &actions,
            history: &[],
            notifier: None,
            deliveries: &[],
            ttl_ms: 1,
        })
        .unwrap();
    }
    assert_eq!(db.load_actions().unwrap(), Some(actions));
    let snap = Db::open(&dir).unwrap().load().unwrap().unwrap();
    assert_eq!(snap.schema, SCHEMA);
    let (back, cap2) = (snap.state, snap.capacity);
    assert_eq!(cap2, cap);
    let a = back.alerts[&key].active.values().next().unwrap();
    assert_eq!(
        (a.state, a.active_at, a.fired_at),
        (AlertState::Firing, 1000, Some(61_000))
    );
    assert!(a.value.is_nan());
    assert_eq!(back.groups["web"], s.groups["web"]);
    assert_eq!(back.policies["cpu"], s.policies["cpu"]);
    assert_eq!(back.replace["rep"], s.replace["rep"]);
    db.record(300, &[(300, "scaling", json!({"asg": "web"}))], 1000)
        .unwrap();
    assert_eq!(db.recent(10).unwrap()[0].1, "scaling");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_outbox_keeps_order_per_target_and_survives_reopening() {
    let dir = std::env::temp_dir().join(format!("vigil-outbox-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    {
        let db = Db::open(&dir).unwrap();
        db.commit_evaluation(&Evaluated {
            at: 1_000,
            state: &State::default(),
            capacity: &BTreeMap::new(),
            actions: &json!({}),
            history: &[],
            notifier: Some(&json!({"groups": []})),
            deliveries: &[
                ("t1".into(), json!({"n": 1})),
                ("t2".into(), json!({"n": 2})),
                ("t1".into(), json!({"n": 3})),
            ],
            ttl_ms: 60_000,
        })
        .unwrap();
    }
    let db = Db::open(&dir).unwrap();
    assert_eq!(db.load_notifier().unwrap(), Some(json!({"groups": []})));
    let due = db.due(1_000, 10).unwrap();
    assert_eq!(due.len(), 3);
    assert!(!db.waiting_before("t1", due[0].id).unwrap());
    assert!(db.waiting_before("t1", due[2].id).unwrap());
    db.retry_at(due[0].id, 5_000, "503").unwrap();
    assert_eq!(db.due(1_000, 10).unwrap().len(), 2);
    let again = db.due(5_000, 10).unwrap();
    assert_eq!(again[0].attempts, 1);
    db.remove(due[0].id).unwrap();
    assert!(!db.waiting_before("t1", due[2].id).unwrap());
    assert_eq!(db.outbox_len().unwrap(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn export_and_import_carry_a_holders_state_to_its_successor() {
    let base = std::env::temp_dir().join(format!("vigil-export-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let holder = Db::open(&base.join("a")).unwrap();
    holder
        .commit_evaluation(&Evaluated {
            at: 5_000,
            state: &State::default(),
            capacity: &BTreeMap::from([("web".to_string(), 4u32)]),
            actions: &json!({"scale": {}}),
            history: &[],
            notifier: Some(&json!({"groups": [], "synthetic": []})),
            deliveries: &[
                ("t1".into(), json!({"n": 1})),
                ("t1".into(), json!({"n": 2})),
            ],
            ttl_ms: 60_000,
        })
        .unwrap();
    let e = holder.export().unwrap();
    assert_eq!(e.at, 5_000);
    assert_eq!(e.outbox.len(), 2);
    assert_eq!(e.outbox[1].delivery, json!({"n": 2}));
    let next = Db::open(&base.join("b")).unwrap();
    next.commit_evaluation(&Evaluated {
        at: 1_000,
        state: &State::default(),
        capacity: &BTreeMap::new(),
        actions: &json!({}),
        history: &[],
        notifier: None,
        deliveries: &[("mine".into(), json!({"n": 9}))],
        ttl_ms: 60_000,
    })
    .unwrap();
    let rows: Vec<(String, Queued)> = e
        .outbox
        .iter()
        .map(|q| ("t1".to_string(), q.clone()))
        .collect();
    next.import(7_000, e.snapshot.as_ref(), e.notifier.as_ref(), &rows)
        .unwrap();
    let snap = next.load().unwrap().unwrap();
    assert_eq!(snap.capacity["web"], 4);
    let due = next.due(10_000, 10).unwrap();
    assert_eq!(
        due.iter()
            .map(|p| p.delivery["n"].clone())
            .collect::<Vec<_>>(),
        [json!(1), json!(2)]
    );
    assert_eq!(due[0].created, 5_000);
    // A holder that had evaluated nothing leaves the successor's own snapshot alone.
    next.import(8_000, None, None, &[]).unwrap();
    assert_eq!(next.load().unwrap().unwrap().capacity["web"], 4);
    assert_eq!(next.outbox_len().unwrap(), 0);
    let _ = std::fs::remove_dir_all(&base);
}
