//! A Prometheus-compatible engine as Vigil reads it: raw samples through the HTTP query API
//! (`/api/v1/query` with a range selector), which every engine Vigil targets answers alike:
//! VictoriaMetrics (which has no remote-read), Prometheus, Mimir, Thanos and Amazon Managed
//! Service for Prometheus. Rules are then evaluated by Vigil's own engine over those samples, so
//! they decide as on the embedded window whatever the engine's own query dialect.
//!
//! Kept out of `vigil-rules`, which stays free of tokio: `vigil-rules replay --from` and the
//! aggregator's remote mode read through here.

pub mod read;
pub mod sign;

pub use read::{selector_text, InstantError, QueryApi};
pub use sign::{SigV4, Signer};
