//! `[storage] backend = "remote"`: the window on an existing Prometheus-compatible engine
//! (VictoriaMetrics, Prometheus, Mimir, Thanos, Amazon Managed Service for Prometheus).
//!
//! Rules read the engine's raw samples (range selectors through its query API, `vigil-remote`)
//! merged with what the aggregator holds itself (pushes it received, its recorded series and
//! `ALERTS`, staleness markers), and Vigil's own engine evaluates them: decisions do not depend
//! on the engine's dialect; with `evaluation = "engine"`, expressions go whole to an engine that
//! evaluates PromQL itself (checked: a MetricsQL engine is refused), except those reading what
//! the rules write (they read samples, so that a series recorded a moment ago is seen). An
//! engine that fails to answer fails the evaluation (rule health
//! shows its message; no scaling decision is made on it, `on_no_data` does not apply). The
//! query API (`/api/v1/query*`, series, labels) is the engine's own answer, passed through.

use std::time::Duration;

use std::sync::Arc;

use vigil_remote::{InstantError, QueryApi, SigV4, Signer};
use vigil_rules::promql::storage::{Matcher, StorageError};
use vigil_rules::promql::{EvalError, Query, SeriesData, Storage, Value};

use crate::config;

mod roles;
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
    if let Some((user, f)) = &cfg.basic_auth {
        let password = std::fs::read_to_string(f).map_err(|e| {
            format!(
                "storage.remote.basic_auth.password_file {}: {e}",
                f.display()
            )
        })?;
        let pair = format!("{user}:{}", password.trim_end_matches(['\r', '\n']));
        headers.push((
            "authorization".into(),
            format!("Basic {}", base64(pair.as_bytes())),
        ));
    }
    Ok(headers)
}

/// Standard base64 with padding (RFC 4648), for basic auth.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The largest answer one selection reads: a rule's window over tens of thousands of series.
/// An answer over it fails the evaluation (its message in rule health) rather than the process.
const MAX_ANSWER: usize = 64 << 20;
/// After a failed read, how long the following ones fail at once with its error, so that an
/// engine that does not answer costs one timeout per evaluation, not one per selector.
const HOLD_OFF: Duration = Duration::from_secs(5);

/// The signer of every request to the engine, when `sigv4` is set: SigV4 with the SDK's default
/// credential chain, in `sigv4.region` (else `default_region`, `[aws] region`).
pub async fn signer(
    cfg: &config::Remote,
    default_region: &str,
) -> Result<Option<Arc<dyn Signer>>, String> {
    let Some(s) = &cfg.sigv4 else {
        return Ok(None);
    };
    let region = s.region.as_deref().unwrap_or(default_region);
    let signer = SigV4::from_env(region, &s.service).await?;
    tracing::info!(region, service = %s.service, "storage: requests to the engine are SigV4-signed");
    Ok(Some(Arc::new(signer)))
}

pub struct Remote {
    api: QueryApi,
    /// The last failure, and until when it stands for every read.
    failed: std::sync::Mutex<Option<(std::time::Instant, StorageError)>>,
    timeout: Duration,
    /// The runtime the requests run on: selections come from blocking threads (evaluation,
    /// queries) and wait there.
    handle: tokio::runtime::Handle,
    /// `evaluation = "engine"`: whole expressions go to the engine.
    whole: bool,
    /// Whether the engine speaks PromQL, once it has said (asked before the first whole
    /// expression is sent).
    promql: std::sync::Mutex<Option<bool>>,
    /// Series names the aggregator writes into its window itself beyond the rules' (imports):
    /// expressions reading them are evaluated over samples, never sent whole.
    written_here: Vec<String>,
}

impl Remote {
    /// Called from within the runtime.
    pub fn connect(
        cfg: &config::Remote,
        signer: Option<Arc<dyn Signer>>,
    ) -> Result<Remote, String> {
        let api = QueryApi::new(
            &cfg.query_url,
            headers(cfg)?,
            Duration::from_millis(cfg.timeout_ms as u64),
        )
        .map_err(|e| format!("storage.remote.query_url: {e}"))?
        .with_max_body(MAX_ANSWER);
        let api = match signer {
            Some(s) => api.with_signer(s),
            None => api,
        };
        Ok(Remote {
            api,
            failed: std::sync::Mutex::new(None),
            timeout: Duration::from_millis(cfg.timeout_ms as u64),
            handle: tokio::runtime::Handle::current(),
            whole: cfg.whole_expressions,
            promql: std::sync::Mutex::new(None),
            written_here: Vec::new(),
        })
    }

    /// Names the aggregator writes itself (imports), read as samples in whole-expression mode.
    pub fn written_here(mut self, names: Vec<String>) -> Remote {
        self.written_here = names;
        self
    }

    pub fn local_names(&self) -> &[String] {
        &self.written_here
    }

    /// The error reads stand on after a recent failure.
    fn held_off(&self) -> Option<StorageError> {
        let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        let (until, e) = failed.as_ref()?;
        (std::time::Instant::now() < *until).then(|| e.clone())
    }

    /// Fails the reads of the next few seconds with `e` (see [`HOLD_OFF`]).
    fn hold_off(&self, e: &str) {
        let hold = HOLD_OFF.min(self.timeout);
        *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some((
            std::time::Instant::now() + hold,
            StorageError(format!("{e} (reads held off for {}s)", hold.as_secs())),
        ));
    }

    /// `query` evaluated whole by the engine at `t`, once it has shown that it speaks PromQL.
    fn whole_expression(&self, query: &str, t: i64) -> Result<Value, EvalError> {
        if let Some(e) = self.held_off() {
            return Err(EvalError::Storage(e.0));
        }
        let known = *self.promql.lock().unwrap_or_else(|p| p.into_inner());
        let speaks = match known {
            Some(b) => b,
            None => match self.handle.block_on(self.api.speaks_promql()) {
                Ok(b) => {
                    if !b {
                        tracing::error!(query_url = %vigil_config::redact::url(self.api.base()), "storage.remote.evaluation = \"engine\": the engine answers MetricsQL, not PromQL; no expression is sent to it (set evaluation = \"samples\")");
                    }
                    *self.promql.lock().unwrap_or_else(|p| p.into_inner()) = Some(b);
                    b
                }
                Err(e) => {
                    self.hold_off(&e.to_string());
                    return Err(EvalError::Storage(e.to_string()));
                }
            },
        };
        if !speaks {
            return Err(EvalError::Storage(format!(
                "{} answers `1` with a vector: it speaks MetricsQL (VictoriaMetrics), whose rate and lookback differ from PromQL's; evaluation = \"engine\" needs Prometheus, Mimir, Thanos or Amazon Managed Service for Prometheus (set evaluation = \"samples\")",
                self.api.base()
            )));
        }
        match self.handle.block_on(self.api.instant(query, t)) {
            Ok(v) => Ok(v),
            Err(InstantError::Failed(e)) => Err(EvalError::Execution(e)),
            Err(InstantError::Unreachable(e)) => {
                self.hold_off(&e);
                Err(EvalError::Storage(e))
            }
        }
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
        if let Some(e) = self.held_off() {
            return Err(e);
        }
        let got = self
            .handle
            .block_on(self.api.select(matchers, mint, maxt, &mut |_| {}));
        if let Err(e) = &got {
            self.hold_off(&e.0);
        }
        got
    }

    /// With `evaluation = "engine"`, the engine's own answer (blocking as `select` does).
    fn evaluate(&self, query: &Query, t: i64) -> Option<Result<Value, EvalError>> {
        self.whole.then(|| self.whole_expression(query.text(), t))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_as_rfc_4648_writes_it() {
        // RFC 4648, section 10.
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(plain.as_bytes()), encoded);
        }
    }
}
