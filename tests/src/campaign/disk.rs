//! The disk fills under the agent's spool and the aggregator's state dir (one small tmpfs for
//! both), while the agent pushes a round a second: the aggregator must answer 503 (its log cannot
//! be written) and say why, the agent must say its spool is unwritable, queries must go on, and
//! once space returns both must carry on by themselves; then, killed with `kill -9` and
//! restarted, neither may find anything corrupt, and every round acknowledged is in the window.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{acknowledged, agent_config, json_lines, sample_times, spawn_agent};
use crate::http::{get, metric_value, now_ms};
use crate::{bin, free_port, wait_http, wait_until, Child};

#[derive(Debug, Default)]
pub struct Report {
    pub tmpfs_mib: u64,
    pub rounds_acknowledged_before: usize,
    /// Pushes the aggregator refused with 503 while the disk was full.
    pub refused_503: usize,
    /// Batches the agent could not spool while the disk was full (lost: there was no room).
    pub spool_write_failures: usize,
    /// Queries answered 200 while the disk was full.
    pub queries_while_full: usize,
    /// The aggregator's distinct error messages while the disk was full.
    pub aggregator_errors: BTreeSet<String>,
    pub rounds_acknowledged_after: usize,
    /// After `kill -9` and a restart: corrupt frames the aggregator's log replay and the agent's
    /// spool found (must be 0), and acknowledged rounds missing from the window (must be 0).
    pub wal_corrupt: f64,
    pub spool_corrupt: usize,
    pub rounds_acknowledged: usize,
    pub rounds_lost: usize,
}

impl Report {
    /// What went wrong: counts that must be 0 and are not, or something that did not happen.
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        if self.wal_corrupt != 0.0 || self.spool_corrupt > 0 {
            f.push(format!(
                "corrupt after the restart: log {}, spool {}",
                self.wal_corrupt, self.spool_corrupt
            ));
        }
        if self.rounds_lost > 0 {
            f.push(format!("acknowledged rounds lost: {}", self.rounds_lost));
        }
        if self.refused_503 == 0 || self.spool_write_failures == 0 || self.queries_while_full == 0 {
            f.push("a full disk did not give 503s, spool errors and answered queries".into());
        }
        if !self
            .aggregator_errors
            .iter()
            .any(|e| e.contains("window log: write failed") && e.contains("No space left"))
        {
            f.push("the aggregator did not say its log could not be written".into());
        }
        if self.rounds_acknowledged_after == 0 {
            f.push("no recovery once space returned".into());
        }
        f
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "disk full campaign: a {} MiB tmpfs under the spool and the state dir",
            self.tmpfs_mib
        )?;
        writeln!(
            f,
            "  full: {} pushes refused with 503, {} batches the spool could not keep, {} queries answered",
            self.refused_503, self.spool_write_failures, self.queries_while_full
        )?;
        for e in &self.aggregator_errors {
            writeln!(f, "    aggregator said: {e}")?;
        }
        writeln!(
            f,
            "  rounds acknowledged: {} before, {} after space returned",
            self.rounds_acknowledged_before, self.rounds_acknowledged_after
        )?;
        write!(
            f,
            "  after kill -9 and restart: wal corrupt {}, spool corrupt {}, acknowledged rounds {} of which lost {}",
            self.wal_corrupt, self.spool_corrupt, self.rounds_acknowledged, self.rounds_lost
        )
    }
}

/// A tmpfs mounted for the campaign, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: PathBuf, mib: u64) -> Tmpfs {
        std::fs::create_dir_all(&at).expect("mount point");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&at)
            .status()
            .expect("run mount");
        assert!(
            st.success(),
            "cannot mount a tmpfs at {} (the disk full campaign needs root, as CI has)",
            at.display()
        );
        Tmpfs(at)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem of `path` to the last byte; returns how much was written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).expect("filler");
    let mut written = 0u64;
    for chunk in [1 << 20, 4096, 1] {
        let buf = vec![0u8; chunk];
        while f.write_all(&buf).is_ok() {
            written += chunk as u64;
        }
    }
    let _ = f.sync_all();
    written
}

fn count(log: &str, pred: impl Fn(&str, &serde_json::Value) -> bool) -> usize {
    json_lines(log).filter(|(m, f)| pred(m, f)).count()
}

pub fn run(dir: &Path) -> Report {
    let mib = 24;
    let disk = Tmpfs::mount(dir.join("disk"), mib);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let agg_cfg = dir.join("aggregator.toml");
    std::fs::write(
        &agg_cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n\n[storage]\nretention = \"1h\"\nstale_after = \"3s\"\nstate_dir = \"{}\"\ncheckpoint_interval = \"2s\"\n\n[rules]\nevaluation_interval = \"1s\"\n",
            disk.0.join("state").display()
        ),
    )
    .expect("aggregator config");
    let agent_cfg = agent_config(
        dir,
        &format!("{base}/api/v1/write"),
        "i-disk",
        &disk.0.join("spool"),
    );
    let aggregator = |name: &str| {
        let c = Child::spawn(
            name,
            Command::new(bin("vigil-aggregator"))
                .args(["--log-format", "json", "--config"])
                .arg(&agg_cfg),
            dir,
        );
        assert!(
            wait_http(&format!("{base}/-/ready"), Duration::from_secs(60)),
            "{}",
            c.log_text()
        );
        c
    };
    let agent = |name: &str| spawn_agent(name, &agent_cfg, dir, &[]);
    let mut report = Report {
        tmpfs_mib: mib,
        ..Report::default()
    };

    let agg = aggregator("aggregator-1");
    let ag = agent("agent-1");
    wait_until(
        Duration::from_secs(60),
        "3 rounds acknowledged",
        || acknowledged(&ag.log_text()).len() >= 3,
        || ag.log_text(),
    );
    report.rounds_acknowledged_before = acknowledged(&ag.log_text()).len();

    // Full.
    let filler = disk.0.join("filler");
    // Counted first: the aggregator may say why as soon as the disk is full.
    let agg_lines_before = agg.log_text().lines().count();
    fill(&filler);
    let refused = |log: &str| {
        count(log, |m, f| {
            m == "push failed"
                && f.get("reason")
                    .and_then(|r| r.as_str())
                    .is_some_and(|r| r.starts_with("503"))
        })
    };
    let unwritable = |log: &str| count(log, |m, _| m.starts_with("cannot write the spool"));
    wait_until(
        Duration::from_secs(90),
        "503s from the aggregator and a spool the agent cannot write",
        || {
            let log = ag.log_text();
            refused(&log) >= 2 && unwritable(&log) >= 1
        },
        || format!("{}\n{}", ag.log_text(), agg.log_text()),
    );
    for _ in 0..3 {
        if get(&format!("{base}/api/v1/query?query=up")).is_ok_and(|(c, _)| c == 200) {
            report.queries_while_full += 1;
        }
    }
    let log = ag.log_text();
    report.refused_503 = refused(&log);
    report.spool_write_failures = unwritable(&log);
    for l in agg.log_text().lines().skip(agg_lines_before) {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
        if v["level"] == "ERROR" || v["level"] == "WARN" {
            let f = &v["fields"];
            let mut s = f["message"].as_str().unwrap_or("").to_string();
            if let Some(e) = f["error"].as_str() {
                s = format!("{s}: {e}");
            }
            report.aggregator_errors.insert(s);
        }
    }

    // Space returns.
    std::fs::remove_file(&filler).expect("remove the filler");
    let back = now_ms();
    wait_until(
        Duration::from_secs(90),
        "3 rounds acknowledged after space returned",
        || acknowledged(&ag.log_text()).range(back..).count() >= 3,
        || format!("{}\n{}", ag.log_text(), agg.log_text()),
    );
    report.rounds_acknowledged_after = acknowledged(&ag.log_text()).range(back..).count();

    // kill -9 both, then start them again on what the disk holds.
    let acked = acknowledged(&ag.log_text());
    for mut c in [ag, agg] {
        c.signal("KILL");
        c.wait_exit(Duration::from_secs(30));
    }
    let agg = aggregator("aggregator-2");
    let ag = agent("agent-2");
    wait_until(
        Duration::from_secs(60),
        "a round acknowledged after the restart",
        || !acknowledged(&ag.log_text()).is_empty(),
        || format!("{}\n{}", ag.log_text(), agg.log_text()),
    );
    let metrics = get(&format!("{base}/metrics"))
        .map(|r| r.1)
        .unwrap_or_default();
    report.wal_corrupt =
        metric_value(&metrics, "vigil_aggregator_wal_corrupt_total").unwrap_or(-1.0);
    report.spool_corrupt = count(&ag.log_text(), |m, _| m.starts_with("spool: corrupt"));
    let held = sample_times(&base, "node_load1{instance=\"i-disk\"}");
    report.rounds_acknowledged = acked.len();
    report.rounds_lost = acked.difference(&held).count();
    for c in [ag, agg] {
        c.signal("TERM");
    }
    report
}
