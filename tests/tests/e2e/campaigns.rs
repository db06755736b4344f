//! The crash campaigns (vigil_e2e::campaign), each for a short while: the full-length runs are
//! bench/crash_campaigns.sh. Every count that must be 0 is asserted; the reports print with
//! `--nocapture`.

use std::time::Duration;

use vigil_e2e::campaign::{agent, aggregator, clock, disk};
use vigil_e2e::tempdir;

#[test]
fn agent_killed_at_random_loses_no_round_it_spooled_or_had_acknowledged() {
    let dir = tempdir("campaign-agent");
    let r = agent::run(Duration::from_secs(60), dir.path());
    println!("{r}");
    assert_eq!((r.lost, r.corrupt_frames), (0, 0), "{r}");
    // The campaign saw both fates, or it proved nothing.
    assert!(
        r.lives >= 5 && r.rounds_spooled > 0 && r.rounds_acknowledged > 0,
        "{r}"
    );
}

#[test]
fn aggregator_killed_at_random_under_load_repeats_no_notice_or_scaling_call() {
    let dir = tempdir("campaign-aggregator");
    let r = aggregator::run(
        Duration::from_secs(90),
        aggregator::Pace::quick(),
        2000,
        dir.path(),
    );
    println!("{r}");
    assert_eq!(r.restored + 1, r.lives, "{r}");
    assert_eq!(
        (
            r.duplicate_notices,
            r.lost_resolves,
            r.repeated_scaling_calls,
            r.ticks_lost
        ),
        (0, 0, 0, 0),
        "{r}"
    );
    assert!(
        r.lives >= 3 && r.firing_notices >= 2 && r.scaling_calls >= 2,
        "{r}"
    );
}

#[test]
fn a_full_disk_is_refused_with_clear_errors_and_leaves_nothing_corrupt() {
    let dir = tempdir("campaign-disk");
    let r = disk::run(dir.path());
    println!("{r}");
    assert_eq!(
        (r.wal_corrupt, r.spool_corrupt, r.rounds_lost),
        (0.0, 0, 0),
        "{r}"
    );
    assert!(
        r.refused_503 > 0 && r.spool_write_failures > 0 && r.queries_while_full > 0,
        "{r}"
    );
    assert!(
        r.aggregator_errors
            .iter()
            .any(|e| e.contains("window log: write failed") && e.contains("No space left")),
        "{r}"
    );
    assert!(r.rounds_acknowledged_after > 0, "{r}");
}

#[test]
fn clock_steps_of_an_hour_change_nothing_the_aggregator_decides() {
    let dir = tempdir("campaign-clock");
    let r = clock::run(5, dir.path());
    println!("{r}");
    assert_eq!(r.spurious(), (0, 0), "{r}");
    assert_eq!(r.ticks_lost, 0, "{r}");
    assert!(r.phases.iter().all(|p| p.refused == 0), "{r}");
    // Four steps: back, forward (home), forward, back (home).
    assert_eq!((r.steps_logged, r.agent_steps_logged), (4, 4), "{r}");
    assert_eq!((r.agent_rounds_lost, r.agent_refused), (0, 0), "{r}");
    assert!(r.agent_rounds_acknowledged > 0, "{r}");
}
