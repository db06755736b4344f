//! Crash campaigns (issue #14, item 6): processes killed with `kill -9` again and again at random
//! moments, disks that fill, clocks that step; then everything counted against what the
//! processes logged or what the peers received. `bench/crash_campaigns.sh` runs them at full
//! length (the `campaign` binary); the e2e suite runs each for a short while.
//!
//! Randomness comes from a seed printed with every report (`CAMPAIGN_SEED` replays one).

pub mod agent;
pub mod aggregator;
pub mod clock;
pub mod disk;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// A small deterministic generator (xorshift64*): enough to pick kill moments and outage lengths.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `CAMPAIGN_SEED`, or from the clock; the seed is returned for the report.
    pub fn from_env() -> (Rng, u64) {
        let seed = std::env::var("CAMPAIGN_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        (Rng(seed | 1), seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A duration uniformly in [lo, hi].
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_millis() as u64;
        lo + Duration::from_millis(if span == 0 {
            0
        } else {
            self.next_u64() % (span + 1)
        })
    }
}

/// The JSON log lines of a process run with `--log-format json`: (message, fields).
pub fn json_lines(text: &str) -> impl Iterator<Item = (String, serde_json::Value)> + '_ {
    text.lines().filter_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        let fields = v.get("fields")?.clone();
        let msg = fields.get("message")?.as_str()?.to_string();
        Some((msg, fields))
    })
}

/// Round timestamps an agent run with `vigil_agent=debug` logged as acknowledged.
pub fn acknowledged(log: &str) -> std::collections::BTreeSet<i64> {
    json_lines(log)
        .filter(|(m, _)| m == "batch acknowledged")
        .filter_map(|(_, f)| f.get("round_ms").and_then(serde_json::Value::as_i64))
        .collect()
}

/// The timestamps of the one series `selector` picks in the aggregator's window (3 hours).
pub fn sample_times(base: &str, selector: &str) -> std::collections::BTreeSet<i64> {
    let q = crate::http::encode_component(&format!("{selector}[3h]"));
    let (code, body) =
        crate::http::get(&format!("{base}/api/v1/query?query={q}")).unwrap_or_default();
    assert_eq!(code, 200, "{selector}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["result"][0]["values"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p[0].as_f64())
                .map(|t| (t * 1000.0).round() as i64)
                .collect()
        })
        .unwrap_or_default()
}

/// An agent's config for the campaigns: a round a second (host metrics only), one push target,
/// every round in one batch, identity `instance`, the spool under `spool`. Written as
/// `dir/<instance>.toml`.
pub fn agent_config(dir: &Path, push_url: &str, instance: &str, spool: &Path) -> PathBuf {
    let cfg = dir.join(format!("{instance}.toml"));
    std::fs::write(
        &cfg,
        format!(
            r#"[agent]
interval = "1s"

[identity]
source = "static"
instance = "{instance}"

[push]
url = "{push_url}"
timeout = "2s"
max_samples_per_send = 100000

[buffer]
dir = "{spool}"
max_bytes = "256MiB"

[listen]
address = "127.0.0.1:{listen}"
"#,
            spool = spool.display(),
            listen = crate::free_port()
        ),
    )
    .expect("write the agent's config");
    cfg
}

/// Starts an agent with JSON logs and its rounds' fates logged (`vigil_agent=debug`), with `env`.
pub fn spawn_agent(name: &str, cfg: &Path, dir: &Path, env: &[(&str, String)]) -> crate::Child {
    crate::Child::spawn(
        name,
        std::process::Command::new(crate::bin("vigil-agent"))
            .args(["--log-format", "json", "--config"])
            .arg(cfg)
            .env("RUST_LOG", "info,vigil_agent=debug")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str()))),
        dir,
    )
}
