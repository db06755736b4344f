//! `[storage] backend = "remote"`: the window on an existing Prometheus-compatible engine
//! (VictoriaMetrics, Prometheus, Mimir, Thanos, Amazon Managed Service for Prometheus).
//!
//! Rules read the engine's raw samples (range selectors through its query API, `vigil-remote`)
//! merged with what the aggregator holds itself (pushes it received, its recorded series and
//! `ALERTS`, staleness markers), and Vigil's own engine evaluates them: decisions do not depend
//! on the engine's dialect. An engine that fails to answer fails the evaluation (rule health
//! shows its message; no scaling decision is made on it, `on_no_data` does not apply). The
//! query API (`/api/v1/query*`, series, labels) is the engine's own answer, passed through.

use std::time::Duration;

use vigil_remote::QueryApi;
use vigil_rules::promql::storage::{Matcher, StorageError};
use vigil_rules::promql::{SeriesData, Storage};

use crate::config;

mod send;
pub use send::{saved_position, Forwarder};

/// The headers every request to the engine carries: the configured ones and the bearer token.
pub fn headers(cfg: &config::Remote) -> Result<Vec<(String, String)>, String> {
    let mut headers = cfg.headers.clone();
    if let Some(f) = &cfg.bearer_token_file {
        let token = std::fs::read_to_string(f)
            .map_err(|e| format!("storage.remote.bearer_token_file {}: {e}", f.display()))?;
        headers.push(("authorization".into(), format!("Bearer {}", token.trim())));
    }
    Ok(headers)
}

pub struct Remote {
    api: QueryApi,
    /// The runtime the requests run on: selections come from blocking threads (evaluation,
    /// queries) and wait there.
    handle: tokio::runtime::Handle,
}

impl Remote {
    /// Called from within the runtime.
    pub fn connect(cfg: &config::Remote) -> Result<Remote, String> {
        let mut headers = cfg.headers.clone();
        if let Some(f) = &cfg.bearer_token_file {
            let token = std::fs::read_to_string(f)
                .map_err(|e| format!("storage.remote.bearer_token_file {}: {e}", f.display()))?;
            headers.push(("authorization".into(), format!("Bearer {}", token.trim())));
        }
        let api = QueryApi::new(
            &cfg.query_url,
            headers,
            Duration::from_millis(cfg.timeout_ms as u64),
        )
        .map_err(|e| format!("storage.remote.query_url: {e}"))?;
        Ok(Remote {
            api,
            handle: tokio::runtime::Handle::current(),
        })
    }

    pub fn api(&self) -> &QueryApi {
        &self.api
    }
}

impl Storage for Remote {
    /// Blocks the calling thread (never a runtime worker) until the engine answers.
    fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<SeriesData>, StorageError> {
        self.handle
            .block_on(self.api.select(matchers, mint, maxt, &mut |_| {}))
    }
}
