//! The HA pair's takeover time, measured: `moto_server` and two aggregators on one lease (see
//! `vigil_e2e::ha`), the leader `kill -9`ed REPS times (it restarts and follows; the roles swap
//! each time). The takeover is the time from the killed holder's last lease renewal to the
//! other's taking the lease, both seen at the nodes' proxies; the bound is 2 × lease_ttl.
//!
//!   hatakeover [REPS [LEASE_TTL_SECONDS]]      (default 10 and 10, the shipped default)

use std::time::{Duration, Instant};

use vigil_e2e::ha::{lease_writes, Pair};
use vigil_e2e::wait_until;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let reps: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let ttl_s: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);
    let pair = Pair::with_ttl("ha-bench", ttl_s);
    let timeout = Duration::from_secs(5 * ttl_s);
    let mut nodes = [Some(pair.start(0)), None];
    wait_until(timeout, "agg-a to lead", || pair.acting(0), String::new);
    nodes[1] = Some(pair.start(1));
    let logs = |nodes: &[Option<vigil_e2e::Child>; 2]| {
        nodes
            .iter()
            .flatten()
            .map(|c| c.log_text())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut times = Vec::new();
    let mut leader = 0;
    for rep in 0..reps {
        let other = 1 - leader;
        let refs: Vec<&vigil_e2e::Child> = nodes.iter().flatten().collect();
        pair.push_until("both up, one leading", timeout, 1.0, 0.0, &refs, || {
            pair.acting(leader) && pair.cluster(other)["role"] == "follower"
        });
        let last = *lease_writes(&pair.nodes[leader])
            .last()
            .expect("the leader renewed");
        let killed = Instant::now();
        if let Some(c) = &nodes[leader] {
            c.signal("KILL");
        }
        nodes[leader] = None;
        let refs: Vec<&vigil_e2e::Child> = nodes.iter().flatten().collect();
        pair.push_until("the other to lead", timeout, 1.0, 0.0, &refs, || {
            pair.acting(other)
        });
        let took = lease_writes(&pair.nodes[other])
            .into_iter()
            .find(|t| *t > killed)
            .unwrap_or_else(|| panic!("no take seen\n{}", logs(&nodes)));
        let t = took.duration_since(last).as_secs_f64();
        println!(
            "rep {:>2}: {} -> {}: takeover {:.2} s after the last renewal ({:.2} s after kill -9)",
            rep + 1,
            pair.nodes[leader].name,
            pair.nodes[other].name,
            t,
            took.duration_since(killed).as_secs_f64()
        );
        times.push(t);
        nodes[leader] = Some(pair.start(leader));
        leader = other;
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let bound = 2.0 * ttl_s as f64;
    println!(
        "takeover over {reps} kill -9s, lease_ttl {ttl_s} s: min {:.2} s, median {median:.2} s, max {:.2} s; bound 2 x lease_ttl = {bound:.0} s (max/bound {:.2})",
        times[0],
        times[times.len() - 1],
        times[times.len() - 1] / bound
    );
}
