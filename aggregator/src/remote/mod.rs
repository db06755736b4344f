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

/// The largest answer one selection reads: a rule's window over tens of thousands of series.
/// An answer over it fails the evaluation (its message in rule health) rather than the process.
const MAX_ANSWER: usize = 64 << 20;
/// After a failed read, how long the following ones fail at once with its error, so that an
/// engine that does not answer costs one timeout per evaluation, not one per selector.
const HOLD_OFF: Duration = Duration::from_secs(5);

pub struct Remote {
    api: QueryApi,
    /// The last failure, and until when it stands for every read.
    failed: std::sync::Mutex<Option<(std::time::Instant, StorageError)>>,
    timeout: Duration,
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
        .map_err(|e| format!("storage.remote.query_url: {e}"))?
        .with_max_body(MAX_ANSWER);
        Ok(Remote {
            api,
            failed: std::sync::Mutex::new(None),
            timeout: Duration::from_millis(cfg.timeout_ms as u64),
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
        let now = std::time::Instant::now();
        if let Some((until, e)) = &*self.failed.lock().unwrap_or_else(|p| p.into_inner()) {
            if now < *until {
                return Err(e.clone());
            }
        }
        let got = self
            .handle
            .block_on(self.api.select(matchers, mint, maxt, &mut |_| {}));
        if let Err(e) = &got {
            let hold = HOLD_OFF.min(self.timeout);
            *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some((
                std::time::Instant::now() + hold,
                StorageError(format!("{} (reads held off for {}s)", e.0, hold.as_secs())),
            ));
        }
        got
    }
}
