//! The crash campaigns (vigil_e2e::campaign), each for a short while: the full-length runs are
//! bench/crash_campaigns.sh. Every count that must be 0 is asserted (each report's `failures`);
//! the reports print with `--nocapture`.

use std::time::Duration;

use vigil_e2e::campaign::{agent, aggregator, clock, disk};
use vigil_e2e::tempdir;

/// Prints the report and fails with its failures, if any.
fn judge(report: &dyn std::fmt::Display, failures: Vec<String>) {
    println!("{report}");
    assert!(failures.is_empty(), "{}\n{report}", failures.join("\n"));
}

#[test]
fn agent_killed_at_random_loses_no_round_it_spooled_or_had_acknowledged() {
    let dir = tempdir("campaign-agent");
    let r = agent::run(Duration::from_secs(60), dir.path());
    judge(&r, r.failures());
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
    judge(&r, r.failures());
}

#[test]
fn a_full_disk_is_refused_with_clear_errors_and_leaves_nothing_corrupt() {
    let dir = tempdir("campaign-disk");
    let r = disk::run(dir.path());
    judge(&r, r.failures());
}

#[test]
fn clock_steps_of_an_hour_change_nothing_the_aggregator_or_agent_does() {
    let dir = tempdir("campaign-clock");
    let r = clock::run(5, dir.path());
    judge(&r, r.failures());
}
