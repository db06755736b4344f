//! Reading Vigil's TOML files — agent and aggregator configs, rule files, rule tests — so that
//! every problem is reported at once as `FILE:LINE:COL: message`, plus the value syntaxes they
//! share: Prometheus durations (`"10s"`), sizes (`"256MiB"`) and timestamps.
//!
//! No I/O beyond what callers hand in, and nothing heavier than the `toml` parser: the agent
//! links this crate and must stay small.

pub mod duration;

/// This host's name: the kernel's, else `$HOSTNAME`, else "localhost" (the agent's fallback
/// instance name, the aggregator's default node id).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

pub mod redact;
pub mod size;
pub mod tomlread;

#[cfg(feature = "cli")]
pub mod logging;

#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "http")]
pub mod tls;
