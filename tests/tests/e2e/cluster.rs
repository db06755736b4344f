//! High availability against `moto_server`'s DynamoDB, Auto Scaling and SNS: two aggregators on
//! one lease, each calling AWS through its own fault proxy, so every AWS call is counted per node.
//! Exactly one acts; a `kill -9` or a SIGSTOP of the leader hands over without a repeated or lost
//! notice or scaling change; DynamoDB failing leaves nobody acting.

use std::time::{Duration, Instant};

use vigil_e2e::ha::{lease_writes, subjects, Pair, TTL_S};
use vigil_e2e::http::{get, metric_value, post, prom_query};
use vigil_e2e::proxy::Fault;
use vigil_e2e::wait_until;

#[test]
fn one_leader_acts_and_a_kill_9_hands_over_without_repeating_or_losing() {
    let mut pair = Pair::new("ha-kill");
    // The shared state in parts of 200 bytes: written in transactions, read back part by part.
    pair.state_part_bytes = Some(200);
    let a = pair.start(0);
    let timeout = Duration::from_secs(5 * TTL_S);
    wait_until(timeout, "agg-a to lead", || pair.acting(0), || a.log_text());
    let b = pair.start(1);
    pair.push_until(
        "agg-b to follow agg-a, warm",
        timeout,
        1.0,
        0.0,
        &[&a, &b],
        || {
            let c = pair.cluster(1);
            c["role"] == "follower"
                && c["leader"] == "agg-a"
                && c["leader_address"] == pair.nodes[0].base[7..]
                // Warm: agg-b evaluates the pushed series (or the spike below could reach it
                // only after agg-a's scale-out, and it would have nothing to say).
                && !prom_query(&pair.nodes[1].base, "asg:app_cpu:avg").is_empty()
        },
    );

    // A reload sent to the follower (as a Service may route it) reloads it and reaches the
    // leader, which answers through it.
    let reloads = |i: usize| {
        let m = get(&format!("{}/metrics", pair.nodes[i].base))
            .expect("metrics")
            .1;
        metric_value(&m, r#"vigil_aggregator_reloads_total{result="success"}"#).unwrap_or(0.0)
    };
    let before = (reloads(0), reloads(1));
    let (code, body) =
        post(&format!("{}/-/reload", pair.nodes[1].base), &[], b"").expect("reload through agg-b");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("this node (agg-b): reloaded") && body.contains("the leader (agg-a "),
        "{body}"
    );
    assert_eq!((reloads(0), reloads(1)), (before.0 + 1.0, before.1 + 1.0));
    // The leader answers a reload itself, and passes nothing on.
    let (code, body) =
        post(&format!("{}/-/reload", pair.nodes[0].base), &[], b"").expect("reload agg-a");
    assert_eq!((code, body.starts_with("reloaded ")), (200, true), "{body}");
    assert_eq!(reloads(1), before.1 + 1.0);

    // Load and errors: one scale-out (to 4: 1.8 / 4 is inside the target's tolerance), one
    // notice, CloudWatch datums: all from agg-a.
    let mut sns = Vec::new();
    pair.push_until(
        "the first scale-out and notice",
        timeout,
        1.8,
        1.0,
        &[&a, &b],
        || {
            // The proxy records a call once moto has answered it: the record can come after
            // the change shows in moto.
            pair.aws.group("web").0 == 4
                && pair.count(0, "SetDesiredCapacity") >= 1
                && pair.sns(&mut sns) >= 1
                && pair.count(0, "PutMetricData") > 0
        },
    );
    assert_eq!(pair.count(0, "SetDesiredCapacity"), 1);
    assert!(
        pair.effects(1).is_empty(),
        "the follower acted: {:?}",
        pair.effects(1)
    );
    // agg-b decided the same, and only logged it.
    pair.push_until(
        "agg-b to say what it would do",
        timeout,
        1.8,
        1.0,
        &[&a, &b],
        || {
            b.log_text().contains("follower: would scale")
                && b.log_text().contains("follower: would notify")
        },
    );
    assert!(pair.effects(1).is_empty(), "the follower acted");
    let m = get(&format!("{}/metrics", pair.nodes[1].base))
        .expect("metrics")
        .1;
    assert!(m.contains("vigil_aggregator_cluster_leader 0"), "{m}");
    let m = get(&format!("{}/metrics", pair.nodes[0].base))
        .expect("metrics")
        .1;
    assert!(m.contains("vigil_aggregator_cluster_leader 1"), "{m}");

    // kill -9 of the leader while the alert fires, once the shared state records the notice
    // (a kill between a delivery and its record has the next holder send it again).
    pair.push_until("the notice recorded", timeout, 1.8, 1.0, &[&a, &b], || {
        pair.deliveries_recorded()
    });
    let killed = Instant::now();
    a.signal("KILL");
    drop(a);
    // Until agg-b takes the lease, an admin write reaching it finds the holder gone: 503 naming
    // the holder's address (a reload still reloads agg-b's own rules).
    let (code, body) =
        post(&format!("{}/-/reload", pair.nodes[1].base), &[], b"").expect("reload through agg-b");
    if pair.cluster(1)["role"] == "follower" {
        assert_eq!(code, 503, "{body}");
        assert!(
            body.contains("this node (agg-b): reloaded")
                && body.contains(&format!("at {} did not answer", &pair.nodes[0].base[7..])),
            "{body}"
        );
    }
    pair.push_until("agg-b to lead", timeout, 1.8, 1.0, &[&b], || pair.acting(1));
    // Read now, not at the kill: a renewal in flight then is recorded once moto answers it.
    let last_renewal = *lease_writes(&pair.nodes[0]).last().expect("agg-a renewed");
    let took = *lease_writes(&pair.nodes[1])
        .first()
        .expect("agg-b took the lease");
    let takeover = took.duration_since(last_renewal);
    println!(
        "takeover: {} ms after agg-a's last renewal ({} ms after kill -9; lease_ttl {TTL_S} s)",
        takeover.as_millis(),
        took.duration_since(killed).as_millis()
    );
    assert!(
        takeover <= Duration::from_secs(2 * TTL_S),
        "takeover took {takeover:?}\n{}",
        b.log_text()
    );
    assert!(
        b.log_text().contains("the previous leader's state loaded"),
        "{}",
        b.log_text()
    );
    assert!(
        pair.count(0, "TransactWriteItems") > 0,
        "agg-a wrote no state in parts"
    );

    // The alert still fires: no second notice. A further spike scales once more, from agg-b.
    pair.push_until(
        "a second scale-out by agg-b",
        timeout,
        2.7,
        1.0,
        &[&b],
        || pair.count(1, "SetDesiredCapacity") >= 1 && pair.aws.group("web").0 == 6,
    );
    assert_eq!(pair.count(1, "SetDesiredCapacity"), 1, "{}", b.log_text());
    pair.sns(&mut sns);
    assert_eq!(
        subjects(&sns),
        ["[FIRING:1] AppErrors (web)"],
        "{}",
        b.log_text()
    );

    // Resolve: exactly one resolved notice, from agg-b.
    // The proxy records agg-b's Publish once moto has answered it, which can be after the
    // message reached the queue: wait for both before counting.
    pair.push_until("the resolved notice", timeout, 2.7, 0.0, &[&b], || {
        pair.sns(&mut sns) >= 2 && pair.count(1, "Publish") >= 1
    });
    let publishes = pair.count(1, "Publish");
    assert_eq!(publishes, 1, "{}", b.log_text());
    // Further group intervals send nothing more (counted in CloudWatch flushes, one a second).
    let flushes = pair.count(1, "PutMetricData");
    pair.push_until("five more flushes", timeout, 2.7, 0.0, &[&b], || {
        pair.count(1, "PutMetricData") >= flushes + 5
    });
    pair.sns(&mut sns);
    assert_eq!(
        subjects(&sns),
        ["[FIRING:1] AppErrors (web)", "[RESOLVED] AppErrors (web)"],
        "{}",
        b.log_text()
    );
    assert_eq!(pair.count(1, "Publish"), publishes);
}

#[test]
fn a_leader_frozen_past_its_lease_wakes_up_as_a_follower_and_sends_nothing() {
    let pair = Pair::new("ha-stop");
    let a = pair.start(0);
    let timeout = Duration::from_secs(5 * TTL_S);
    wait_until(timeout, "agg-a to lead", || pair.acting(0), || a.log_text());
    let b = pair.start(1);
    // agg-a publishes every second and has told of the alert.
    let mut sns = Vec::new();
    pair.push_until(
        "agg-a to notify and publish",
        timeout,
        1.0,
        1.0,
        &[&a, &b],
        || {
            pair.sns(&mut sns) >= 1
                && pair.count(0, "PutMetricData") >= 2
                && pair.cluster(1)["role"] == "follower"
        },
    );

    // Frozen (once the shared state records the notice): agg-b takes over and acts (a
    // scale-out).
    pair.push_until("the notice recorded", timeout, 1.0, 1.0, &[&a, &b], || {
        pair.deliveries_recorded()
    });
    a.signal("STOP");
    pair.push_until("agg-b to lead", timeout, 1.0, 1.0, &[&b], || pair.acting(1));
    pair.push_until("agg-b to scale out", timeout, 1.8, 1.0, &[&b], || {
        pair.count(1, "SetDesiredCapacity") >= 1 && pair.aws.group("web").0 == 4
    });
    let before = pair.effects(0).len();
    // Nothing of agg-a's reached AWS once agg-b held the lease (a call written just before
    // the SIGSTOP may arrive just after it: that is not acting without the lease).
    let b_took = *lease_writes(&pair.nodes[1])
        .first()
        .expect("agg-b took the lease");
    assert!(
        pair.effects(0).iter().all(|c| c.at < b_took),
        "agg-a acted while stopped"
    );

    // Woken: its timers all fire at once, its deadline has long passed; it sends nothing and
    // learns from the lease that it follows.
    a.signal("CONT");
    pair.push_until(
        "agg-a to report itself a follower",
        timeout,
        1.8,
        1.0,
        &[&a, &b],
        || {
            let c = pair.cluster(0);
            c["role"] == "follower" && c["leader"] == "agg-b"
        },
    );
    assert!(a.log_text().contains("stepping down"), "{}", a.log_text());
    // While agg-b flushes five more times, agg-a's proxy sees no effect call.
    let flushes = pair.count(1, "PutMetricData");
    pair.push_until(
        "five more flushes by agg-b",
        timeout,
        1.8,
        1.0,
        &[&a, &b],
        || pair.count(1, "PutMetricData") >= flushes + 5,
    );
    assert_eq!(
        pair.effects(0).len(),
        before,
        "the woken node acted: {:?}\n{}",
        pair.effects(0)
            .iter()
            .map(|c| &c.action)
            .collect::<Vec<_>>(),
        a.log_text()
    );
    pair.sns(&mut sns);
    assert_eq!(subjects(&sns), ["[FIRING:1] AppErrors (web)"]);
    let m = get(&format!("{}/metrics", pair.nodes[0].base))
        .expect("metrics")
        .1;
    assert!(m.contains("vigil_aggregator_cluster_leader 0"), "{m}");

    // A graceful stop of the leader: it writes its state, releases the lease, and agg-a takes
    // over at its next look instead of after a whole lease; still no second notice.
    let mut b = b;
    b.signal("TERM");
    let stopped = Instant::now();
    assert!(b.wait_exit(timeout), "{}", b.log_text());
    assert!(b.log_text().contains("lease released"), "{}", b.log_text());
    pair.push_until(
        "agg-a to lead after the release",
        timeout,
        1.8,
        1.0,
        &[&a],
        || pair.acting(0),
    );
    let took = stopped.elapsed();
    println!("takeover after a graceful stop: {} ms", took.as_millis());
    // Taken because agg-b released it, not because it expired: the holder agg-a found was
    // nobody (a lease that ran out would still name agg-b). Judged by the event rather than
    // by time, which a slow moto stretches.
    let log = a.log_text();
    let taken = log
        .lines()
        .rfind(|l| l.contains("lease taken"))
        .unwrap_or_default();
    assert!(
        // (`previous="none"`, field names coloured in the text log)
        taken.contains("previous") && taken.contains("\"none\""),
        "{taken}\n{log}"
    );
    let flushes = pair.count(0, "PutMetricData");
    pair.push_until("five flushes by agg-a", timeout, 1.8, 1.0, &[&a], || {
        pair.count(0, "PutMetricData") >= flushes + 5
    });
    pair.sns(&mut sns);
    assert_eq!(
        subjects(&sns),
        ["[FIRING:1] AppErrors (web)"],
        "{}",
        a.log_text()
    );
}

#[test]
fn dynamodb_failing_leaves_nobody_acting_and_loses_no_notice() {
    let mut pair = Pair::new("ha-ddb");
    pair.state_part_bytes = Some(200);
    let a = pair.start(0);
    let timeout = Duration::from_secs(5 * TTL_S);
    wait_until(timeout, "agg-a to lead", || pair.acting(0), || a.log_text());
    let b = pair.start(1);
    let mut sns = Vec::new();
    pair.push_until("the firing notice", timeout, 1.0, 1.0, &[&a, &b], || {
        pair.sns(&mut sns) >= 1 && pair.cluster(1)["role"] == "follower"
    });
    // Each outage begins once the shared state records the notices sent so far: one cut in
    // the moment between a delivery and its record is sent again by the next holder (at least
    // once), which this test, counting notices exactly, does not measure.
    pair.push_until("the notice recorded", timeout, 1.0, 1.0, &[&a, &b], || {
        pair.deliveries_recorded()
    });
    // Throttled, then slower than the calls' limit: each time nobody acts within the holder's
    // deadline (0.6 of the lease after its last renewal began, plus a call's limit of a
    // quarter), and a leader comes back when DynamoDB answers again.
    for (k, fault) in [
        Fault::Throttle,
        Fault::Delay(Duration::from_secs(5)),
        Fault::Status(500),
        Fault::Refuse,
    ]
    .into_iter()
    .enumerate()
    {
        // The alert resolves during the second and fourth outages and fires again in the third.
        let errors = if k % 2 == 1 { 0.0 } else { 1.0 };
        let faulted = Instant::now();
        for n in &pair.nodes {
            n.proxy.set_dynamodb(fault);
        }
        pair.push_until(
            &format!("nobody acting ({fault:?})"),
            timeout,
            1.0,
            errors,
            &[&a, &b],
            || !pair.acting(0) && !pair.acting(1),
        );
        // Both keep trying: four more lease reads or writes at each proxy.
        let seen: Vec<usize> = pair.nodes.iter().map(|n| n.proxy.calls().len()).collect();
        pair.push_until(
            "more lease attempts",
            timeout,
            1.0,
            errors,
            &[&a, &b],
            || {
                pair.nodes.iter().zip(&seen).all(|(n, s)| {
                    n.proxy
                        .calls()
                        .iter()
                        .skip(*s)
                        .filter(|c| c.action == "GetItem" || c.action == "PutItem")
                        .count()
                        >= 4
                })
            },
        );
        let bound = faulted + Duration::from_millis(TTL_S * 1000 * 85 / 100);
        for i in 0..2 {
            let late: Vec<String> = pair
                .effects(i)
                .iter()
                .filter(|c| c.at > bound)
                .map(|c| c.action.clone())
                .collect();
            assert!(
                late.is_empty(),
                "{} acted without a lease ({fault:?}): {late:?}",
                pair.nodes[i].name
            );
        }
        for n in &pair.nodes {
            n.proxy.set_dynamodb(Fault::None);
        }
        pair.push_until("a leader again", timeout, 1.0, errors, &[&a, &b], || {
            pair.acting(0) || pair.acting(1)
        });
        // What was decided during the outage is delivered now: the resolved notice (the alert
        // stopped during the slow phase), then a new firing one.
        let want = k + 1;
        pair.push_until(
            "the notices of the outage",
            timeout,
            1.0,
            errors,
            &[&a, &b],
            || pair.sns(&mut sns) >= want,
        );
        pair.push_until(
            "the notices recorded",
            timeout,
            1.0,
            errors,
            &[&a, &b],
            || pair.deliveries_recorded(),
        );
    }
    // The lease item deleted (by hand, or a restore of an older table) while the state item
    // keeps its epoch: the next holder's epoch is above the state's, so its claim goes through
    // at once instead of being refused until the epochs climb past it.
    let epoch = |i: usize| pair.cluster(i)["epoch"].as_u64().unwrap_or(0);
    let before = epoch(0).max(epoch(1));
    pair.aws.delete_item("vigil-leases", "web-tier");
    pair.push_until(
        "a leader under a newer epoch",
        timeout,
        1.0,
        0.0,
        &[&a, &b],
        || (0..2).any(|i| pair.acting(i) && epoch(i) == before + 1),
    );
    let flushes = pair.count(0, "PutMetricData") + pair.count(1, "PutMetricData");
    pair.push_until("five more flushes", timeout, 1.0, 0.0, &[&a, &b], || {
        pair.count(0, "PutMetricData") + pair.count(1, "PutMetricData") >= flushes + 5
    });
    pair.sns(&mut sns);
    assert_eq!(
        subjects(&sns),
        [
            "[FIRING:1] AppErrors (web)",
            "[RESOLVED] AppErrors (web)",
            "[FIRING:1] AppErrors (web)",
            "[RESOLVED] AppErrors (web)"
        ],
        "{}\n{}",
        a.log_text(),
        b.log_text()
    );
}
