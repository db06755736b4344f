//! The crash campaigns at full length, for bench/crash_campaigns.sh (see vigil_e2e::campaign).
//!
//!   campaign agent MINUTES          kill -9 of the agent, a round a second
//!   campaign aggregator MINUTES     kill -9 of the aggregator every 30-90 s under load
//!   campaign disk                   the spool and the state dir on a small full tmpfs
//!   campaign clock                  the aggregator's clock stepped by an hour (faketime)
//!
//! Exits 1 when a count that must be 0 is not.

use std::time::Duration;

use vigil_e2e::campaign;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let minutes = |i: usize| -> Duration {
        let m: f64 = args.get(i).and_then(|a| a.parse().ok()).unwrap_or(10.0);
        Duration::from_secs_f64(m * 60.0)
    };
    let dir = vigil_e2e::tempdir("campaign");
    let failures = match args.first().map(String::as_str) {
        Some("agent") => {
            let r = campaign::agent::run(minutes(1), dir.path());
            println!("{r}");
            r.failures()
        }
        Some("aggregator") => {
            let load = std::env::var("LOAD")
                .ok()
                .and_then(|l| l.parse().ok())
                .unwrap_or(5000);
            let pace = if std::env::var_os("QUICK").is_some() {
                campaign::aggregator::Pace::quick()
            } else {
                campaign::aggregator::Pace::full()
            };
            let r = campaign::aggregator::run(minutes(1), pace, load, dir.path());
            println!("{r}");
            r.failures()
        }
        Some("disk") => {
            let r = campaign::disk::run(dir.path());
            println!("{r}");
            r.failures()
        }
        Some("clock") => {
            let r = campaign::clock::run(10, dir.path());
            println!("{r}");
            r.failures()
        }
        _ => {
            eprintln!("usage: campaign agent|aggregator MINUTES | disk | clock");
            std::process::exit(2);
        }
    };
    let ok = failures.is_empty();
    for f in &failures {
        eprintln!("FAILED: {f}");
    }
    if !ok {
        eprintln!("logs kept in {}", dir.path().display());
        std::mem::forget(dir);
        std::process::exit(1);
    }
}
