//! The wall clocks of an aggregator and of one agent stepped back by an hour, forward again,
//! forward by an hour and back (libfaketime on those two processes, never the host's clock),
//! while the rest of the fleet pushes with the right time, an alert fires and a scaling policy
//! holds the group where the demand wants it. A step must not resolve the alert or fire it
//! again, repeat or invent a scaling call, refuse the fleet's samples, or lose what was
//! acknowledged: the aggregator's or the agent's.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use super::aggregator::Rig;
use super::{acknowledged, agent_config, json_lines, sample_times, spawn_agent};
use crate::http::get;
use crate::wait_until;

pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

#[derive(Debug, Default)]
pub struct Phase {
    /// The aggregator's clock offset, as libfaketime reads it ("-1h", "+0", ...).
    pub offset: &'static str,
    pub evaluations: usize,
    pub pushes: usize,
    /// Pushes answered other than 204.
    pub refused: usize,
    /// Notices and scaling calls sent during the phase.
    pub notices: Vec<String>,
    pub scaling_calls: Vec<i64>,
}

#[derive(Debug, Default)]
pub struct Report {
    pub phases: Vec<Phase>,
    /// Every notice, in order: exactly FIRING then RESOLVED (the resolve at the end) is right.
    pub notices: Vec<String>,
    pub scaling_calls: Vec<i64>,
    pub ticks_acknowledged: usize,
    pub ticks_lost: usize,
    /// What the aggregator logged about its clock, and how many times.
    pub said: BTreeSet<String>,
    pub steps_logged: usize,
    /// The agent under faketime: rounds acknowledged, those missing from the window (must be
    /// 0), batches the aggregator refused, steps it logged.
    pub agent_rounds_acknowledged: usize,
    pub agent_rounds_lost: usize,
    pub agent_refused: usize,
    pub agent_steps_logged: usize,
}

impl Report {
    /// What went wrong: counts that must be 0 and are not, or steps that were not seen.
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        let (n, s) = self.spurious();
        for (what, k) in [
            ("spurious notices", n),
            ("spurious scaling calls", s),
            ("acknowledged samples lost", self.ticks_lost),
            (
                "the agent's acknowledged rounds lost",
                self.agent_rounds_lost,
            ),
            ("the agent's batches refused", self.agent_refused),
            (
                "pushes refused",
                self.phases.iter().map(|p| p.refused).sum(),
            ),
        ] {
            if k > 0 {
                f.push(format!("{what}: {k}"));
            }
        }
        // Four steps each: back, forward (home), forward, back (home).
        if (self.steps_logged, self.agent_steps_logged) != (4, 4)
            || self.agent_rounds_acknowledged == 0
        {
            f.push(format!(
                "steps logged: aggregator {}, agent {} (4 each expected)",
                self.steps_logged, self.agent_steps_logged
            ));
        }
        f
    }

    /// Notices other than the one firing notice and its resolve, and scaling calls after the
    /// first (the demand never changed): must both be 0.
    pub fn spurious(&self) -> (usize, usize) {
        let n = if self.notices == ["FIRING", "RESOLVED"] {
            0
        } else {
            self.notices.len().abs_diff(2).max(1)
        };
        (n, self.scaling_calls.len().saturating_sub(1))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "clock step campaign (libfaketime on the aggregator and one agent; the rest of the fleet keeps the host's time)"
        )?;
        for p in &self.phases {
            writeln!(
                f,
                "  clock {:>4}: {} evaluations, {} pushes of which {} refused, notices {:?}, scaling calls {:?}",
                p.offset, p.evaluations, p.pushes, p.refused, p.notices, p.scaling_calls
            )?;
        }
        for s in &self.said {
            writeln!(f, "    aggregator said: {s}")?;
        }
        writeln!(
            f,
            "  steps logged: aggregator {}, agent {}; the agent's rounds acknowledged {}, lost {}, refused {}",
            self.steps_logged,
            self.agent_steps_logged,
            self.agent_rounds_acknowledged,
            self.agent_rounds_lost,
            self.agent_refused
        )?;
        let (n, s) = self.spurious();
        write!(
            f,
            "  notices {:?}, scaling calls {:?}: spurious notices {n}, spurious scaling calls {s}; acknowledged ticks {}, lost {}",
            self.notices, self.scaling_calls, self.ticks_acknowledged, self.ticks_lost
        )
    }
}

fn last_evaluation(base: &str) -> String {
    let (_, body) = get(&format!("{base}/api/v1/rules")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["groups"][0]["lastEvaluation"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Runs the campaign; `evaluations` is how many the aggregator makes at each offset.
pub fn run(evaluations: usize, dir: &Path) -> Report {
    assert!(
        Path::new(LIBFAKETIME).is_file(),
        "{LIBFAKETIME} is missing: scripts/test installs Debian's faketime"
    );
    // One offset file each: the steps reach the two processes at their own moments.
    let offset_files = [dir.join("aggregator.faketime"), dir.join("agent.faketime")];
    // Written whole and renamed in: libfaketime must never read a half-written file.
    let step_to = |offset: &str| {
        for f in &offset_files {
            let tmp = f.with_extension("tmp");
            std::fs::write(&tmp, offset).expect("faketime offset");
            std::fs::rename(&tmp, f).expect("faketime offset");
        }
    };
    step_to("+0");
    let env = |file: &Path| {
        [
            ("LD_PRELOAD", LIBFAKETIME.to_string()),
            ("FAKETIME_TIMESTAMP_FILE", file.display().to_string()),
            ("FAKETIME_CACHE_DURATION", "1".to_string()),
            // A stepped wall clock; the monotonic clock never steps.
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_string()),
        ]
    };
    // Hour-long cooldowns: one scale-out, and a step that ended a cooldown early would show.
    let mut rig = Rig::new(dir, "1h");
    let agg = rig.start("aggregator", &env(&offset_files[0]));
    let agent_cfg = agent_config(
        dir,
        &format!("{}/api/v1/write", rig.base),
        "i-clock",
        &dir.join("spool"),
    );
    let agent = spawn_agent("agent", &agent_cfg, dir, &env(&offset_files[1]));
    let mut report = Report::default();
    let mut ticks = BTreeSet::new();

    // Steady: the alert has fired and the group is at the demand's size.
    wait_until(
        Duration::from_secs(120),
        "the firing notice and the scale-out",
        || {
            if let (204, ts) = rig.step(true, true) {
                ticks.insert(ts);
            }
            std::thread::sleep(Duration::from_millis(500));
            rig.notices() == ["FIRING"] && rig.scaling_calls() == [6]
        },
        || agg.log_text(),
    );

    let steps = |log: &str| {
        json_lines(log)
            .filter(|(m, _)| m.starts_with("wall clock stepped"))
            .count()
    };
    for (k, offset) in ["-1h", "+0", "+1h", "+0"].into_iter().enumerate() {
        step_to(offset);
        let (n0, s0) = (rig.notices().len(), rig.scaling_calls().len());
        let mut phase = Phase {
            offset,
            ..Phase::default()
        };
        let mut seen = BTreeSet::new();
        wait_until(
            Duration::from_secs(120),
            "evaluations at the new offset",
            || {
                let (status, ts) = rig.step(true, true);
                phase.pushes += 1;
                if status == 204 {
                    ticks.insert(ts);
                } else {
                    phase.refused += 1;
                }
                std::thread::sleep(Duration::from_millis(250));
                seen.insert(last_evaluation(&rig.base));
                // The first evaluation seen may still be at the old offset; both processes
                // must have seen this step.
                seen.len() > evaluations
                    && steps(&agg.log_text()) > k
                    && steps(&agent.log_text()) > k
            },
            || format!("{}\n{}", agg.log_text(), agent.log_text()),
        );
        phase.evaluations = seen.len() - 1;
        phase.notices = rig.notices()[n0..].to_vec();
        phase.scaling_calls = rig.scaling_calls()[s0..].to_vec();
        report.phases.push(phase);
    }

    // The errors stop: one resolve.
    wait_until(
        Duration::from_secs(120),
        "the resolve",
        || {
            if let (204, ts) = rig.step(false, true) {
                ticks.insert(ts);
            }
            std::thread::sleep(Duration::from_millis(500));
            rig.notices().last().is_some_and(|s| s == "RESOLVED")
        },
        || agg.log_text(),
    );
    report.notices = rig.notices();
    report.scaling_calls = rig.scaling_calls();
    report.ticks_acknowledged = ticks.len();
    report.ticks_lost = ticks.difference(&rig.ticks()).count();
    for (msg, _) in json_lines(&agg.log_text()) {
        if msg.starts_with("wall clock stepped") {
            report.said.insert(msg);
            report.steps_logged += 1;
        }
    }
    let log = agent.log_text();
    let acked = acknowledged(&log);
    report.agent_rounds_acknowledged = acked.len();
    report.agent_rounds_lost = acked
        .difference(&sample_times(&rig.base, "node_load1{instance=\"i-clock\"}"))
        .count();
    for (msg, _) in json_lines(&log) {
        report.agent_refused += usize::from(msg.starts_with("receiver rejected"));
        report.agent_steps_logged += usize::from(msg.starts_with("wall clock stepped"));
    }
    agent.signal("TERM");
    agg.signal("TERM");
    report
}
