//! Reading Vigil's TOML files — agent and aggregator configs, rule files, rule tests — so that
//! every problem is reported at once as `FILE:LINE:COL: message`, plus the value syntaxes they
//! share: Prometheus durations (`"10s"`), sizes (`"256MiB"`) and timestamps.
//!
//! No I/O beyond what callers hand in, and nothing heavier than the `toml` parser: the agent
//! links this crate and must stay small.

pub mod duration;
pub mod size;
pub mod tomlread;

#[cfg(feature = "cli")]
pub mod logging;

#[cfg(feature = "http")]
pub mod http;
