//! The agent killed with `kill -9` at random moments, a round a second, while its receiver comes
//! and goes (so rounds are spooled as well as sent). Every round the agent logged as spooled or
//! acknowledged must reach the receiver once the last agent drains the spool; a round still only
//! in memory at the kill is the documented exception, counted apart. The spool must never be
//! found corrupt (a torn tail, the frame being written at the kill, is cut and counted).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{agent_config, json_lines, spawn_agent, Rng};
use crate::receiver::Receiver;
use crate::{bin, free_port};

#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub minutes: f64,
    pub lives: usize,
    pub receiver_outages: usize,
    pub rounds_collected: usize,
    /// Rounds logged as spooled (at least once) or acknowledged by the receiver.
    pub rounds_spooled: usize,
    pub rounds_acknowledged: usize,
    /// Spooled or acknowledged rounds the receiver never got: must be 0.
    pub lost: usize,
    /// Rounds only in memory at a kill that never arrived (the documented exception).
    pub in_memory_at_kill: usize,
    /// Rounds neither spooled nor acknowledged that arrived anyway (in flight at the kill).
    pub in_flight_arrived: usize,
    /// Samples the receiver got more than once (sent, then killed before the spool recorded it).
    pub duplicate_samples: usize,
    pub torn_tails: usize,
    /// Corrupt frames found by a recovering spool: must be 0.
    pub corrupt_frames: usize,
}

impl Report {
    /// What went wrong: counts that must be 0 and are not, or a run that showed nothing.
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        if self.lost > 0 {
            f.push(format!("rounds lost: {}", self.lost));
        }
        if self.corrupt_frames > 0 {
            f.push(format!("corrupt spool frames: {}", self.corrupt_frames));
        }
        if self.lives < 5 || self.rounds_spooled == 0 || self.rounds_acknowledged == 0 {
            f.push("too few lives, or no round spooled or acknowledged".into());
        }
        f
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "agent kill -9 campaign (seed {}): {:.1} min, {} lives, {} receiver outages",
            self.seed, self.minutes, self.lives, self.receiver_outages
        )?;
        writeln!(
            f,
            "  rounds collected {}, spooled {}, acknowledged {}",
            self.rounds_collected, self.rounds_spooled, self.rounds_acknowledged
        )?;
        writeln!(
            f,
            "  lost (spooled or acknowledged, never received) {}",
            self.lost
        )?;
        writeln!(
            f,
            "  only in memory at a kill: {} never arrived, {} arrived (in flight)",
            self.in_memory_at_kill, self.in_flight_arrived
        )?;
        write!(
            f,
            "  duplicate samples {}, torn tails cut {}, corrupt frames {}",
            self.duplicate_samples, self.torn_tails, self.corrupt_frames
        )
    }
}

/// What one life's log says: round timestamp -> samples, per fate.
#[derive(Default)]
struct Fates {
    collected: BTreeMap<i64, usize>,
    spooled: BTreeSet<i64>,
    acknowledged: BTreeSet<i64>,
    torn: usize,
    corrupt: usize,
}

impl Fates {
    fn read(&mut self, log: &str) {
        for (msg, f) in json_lines(log) {
            let round = f.get("round_ms").and_then(serde_json::Value::as_i64);
            let samples = f.get("samples").and_then(serde_json::Value::as_u64);
            match (msg.as_str(), round) {
                ("round collected", Some(r)) => {
                    self.collected.insert(r, samples.unwrap_or(0) as usize);
                }
                ("batch spooled", Some(r)) => {
                    self.spooled.insert(r);
                }
                ("batch acknowledged", Some(r)) => {
                    self.acknowledged.insert(r);
                }
                ("spool: cutting a torn tail", _) => self.torn += 1,
                (m, _) if m.starts_with("spool: corrupt frame") => self.corrupt += 1,
                _ => {}
            }
        }
    }
}

/// Runs the campaign for `length` (lives of 1–6 s, receiver outages of 1–6 s between 2–8 s up),
/// then lets a last agent drain the spool. Logs go to `dir`.
pub fn run(length: Duration, dir: &Path) -> Report {
    let (mut rng, seed) = Rng::from_env();
    // Built before anything is timed (the first call builds the workspace).
    let _ = bin("vigil-agent");
    let port = free_port();
    let receiver = Arc::new(Mutex::new(Receiver::start(port)));
    let store = receiver.lock().expect("receiver").store.clone();
    let cfg = agent_config(
        dir,
        &format!("http://127.0.0.1:{port}/api/v1/write"),
        "i-campaign",
        &dir.join("spool"),
    );
    let mut report = Report {
        seed,
        ..Report::default()
    };

    // The receiver's outages, on their own thread and their own random sequence.
    let done = Arc::new(AtomicBool::new(false));
    let outages = {
        let (receiver, done) = (receiver.clone(), done.clone());
        let mut rng = Rng(seed.rotate_left(17) | 1);
        std::thread::spawn(move || {
            let mut n = 0;
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(rng.between(Duration::from_secs(2), Duration::from_secs(8)));
                if done.load(Ordering::SeqCst) {
                    break;
                }
                receiver.lock().expect("receiver").stop();
                n += 1;
                std::thread::sleep(rng.between(Duration::from_secs(1), Duration::from_secs(6)));
                receiver.lock().expect("receiver").resume();
            }
            n
        })
    };

    let started = Instant::now();
    let mut fates = Fates::default();
    while started.elapsed() < length {
        report.lives += 1;
        let mut agent = spawn_agent(&format!("agent-{}", report.lives), &cfg, dir, &[]);
        std::thread::sleep(rng.between(Duration::from_millis(1000), Duration::from_millis(6000)));
        agent.signal("KILL");
        assert!(
            agent.wait_exit(Duration::from_secs(30)),
            "a killed agent did not exit"
        );
        fates.read(&agent.log_text());
    }
    done.store(true, Ordering::SeqCst);
    report.receiver_outages = outages.join().expect("outage thread");
    report.minutes = started.elapsed().as_secs_f64() / 60.0;

    // The last life drains the spool into a receiver that stays up; its own rounds are not
    // counted (a stop spools what is queued, for a next life that never comes).
    let safe: BTreeSet<i64> = fates.spooled.union(&fates.acknowledged).copied().collect();
    let distinct = |store: &Mutex<crate::receiver::Store>| -> BTreeMap<i64, usize> {
        let s = store.lock().expect("store");
        let mut per: BTreeMap<i64, BTreeSet<&vigil_wire::Labels>> = BTreeMap::new();
        for (l, x) in &s.samples {
            per.entry(x.timestamp_ms).or_default().insert(l);
        }
        per.into_iter().map(|(t, ls)| (t, ls.len())).collect()
    };
    let whole = |got: &BTreeMap<i64, usize>, r: &i64| {
        got.get(r).copied().unwrap_or(0) >= fates.collected.get(r).copied().unwrap_or(1)
    };
    let mut last = spawn_agent("agent-drain", &cfg, dir, &[]);
    // Bounded; what is still missing at the deadline is reported as lost.
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        let got = distinct(&store);
        if safe.iter().all(|r| whole(&got, r)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    last.signal("TERM");
    last.wait_exit(Duration::from_secs(30));
    let mut drain = Fates::default();
    drain.read(&last.log_text());

    let got = distinct(&store);
    report.rounds_collected = fates.collected.len();
    report.rounds_spooled = fates.spooled.len();
    report.rounds_acknowledged = fates.acknowledged.len();
    report.lost = safe.iter().filter(|r| !whole(&got, r)).count();
    for r in fates.collected.keys().filter(|r| !safe.contains(r)) {
        if whole(&got, r) {
            report.in_flight_arrived += 1;
        } else {
            report.in_memory_at_kill += 1;
        }
    }
    report.duplicate_samples = {
        let s = store.lock().expect("store");
        s.by_series()
            .values()
            .flat_map(|ts| ts.values())
            .map(|n| n - 1)
            .sum()
    };
    report.torn_tails = fates.torn + drain.torn;
    report.corrupt_frames = fates.corrupt + drain.corrupt;
    report
}
