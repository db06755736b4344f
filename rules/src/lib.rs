//! Vigil's rule layer: PromQL evaluation over a storage trait (this crate's [`promql`] module),
//! and, built on it, rule files, the alert lifecycle and scaling/replacement decisions as pure
//! functions.
//!
//! This crate must never depend on tokio, an HTTP stack or the AWS SDK: everything here is a
//! function of its inputs, so the aggregator, `vigil-rules test` and `vigil-rules replay` all
//! get the same answers.

pub use vigil_config::{duration, tomlread};

pub mod alerting;
pub mod capacity;
pub mod controls;
pub mod convert;
pub mod evaluator;
pub mod gofmt;
pub mod health;
pub mod pause;
#[cfg(feature = "serde")]
pub mod persist;
pub mod promql;
pub mod replace;
pub mod replay;
pub mod rulefile;
pub mod scaling;
pub mod schedule;
pub mod series;
pub mod template;
pub mod unittest;
pub mod victim;
pub mod warmup;
