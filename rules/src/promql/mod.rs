//! PromQL evaluation with Prometheus 3.x semantics over a [`Storage`].
//!
//! Queries are parsed by `promql-parser`, lowered into a plan ([`plan`]), then evaluated: each
//! selector's data is loaded once per query, range queries are evaluated step by step over it.
//! Native histograms are evaluated beside floats (module `hist`); an operation that does not take one
//! refuses it as unsupported rather than reading it as a float.

mod aggregate;
mod binary;
mod eval;
pub mod functions;
mod hist;
mod mathx;
pub mod parse;
mod parse_pos;
pub mod plan;
pub mod reach;
pub mod storage;
pub mod value;

pub use parse::{parse, ParseError, Query};
pub use storage::{MemStorage, SeriesData, Storage, StorageError};
pub use value::{Annotation, QueryResult, RangeSeries, Severity, Value, VectorSample};

/// Why an evaluation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// The query is valid PromQL but uses something Vigil does not evaluate.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The query cannot be run as asked (Prometheus's `bad_data`).
    #[error("{0}")]
    BadData(String),
    /// Evaluation failed on the data (Prometheus's `execution`).
    #[error("{0}")]
    Execution(String),
    /// The query ran past its deadline (Prometheus's `timeout`); the phase it was in.
    #[error("query timed out in {0}")]
    Timeout(&'static str),
    /// The storage could not answer (a remote engine down or in error); Prometheus's
    /// `errStorage`, answered as `internal`. Never read as an empty result.
    #[error("storage: {0}")]
    Storage(String),
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineOpts {
    /// How far back an instant selector looks for a sample (Prometheus: 5m).
    pub lookback_delta_ms: i64,
    /// Step of a subquery written without one (Prometheus: the global evaluation interval).
    pub default_subquery_step_ms: i64,
    /// Samples one query may load (Prometheus's `query.max-samples` plays this part).
    pub max_samples: usize,
    /// Points a range query may return per series (Prometheus's API refuses more than 11,000).
    pub max_points: i64,
    /// Steps within one subquery window.
    pub max_subquery_steps: i64,
}

impl Default for EngineOpts {
    fn default() -> Self {
        EngineOpts {
            lookback_delta_ms: 5 * 60 * 1000,
            default_subquery_step_ms: 60 * 1000,
            max_samples: 50_000_000,
            max_points: 11_000,
            max_subquery_steps: 1_000_000,
        }
    }
}

/// Evaluates parsed queries.
#[derive(Debug, Clone, Default)]
pub struct Engine {
    pub opts: EngineOpts,
}

impl Engine {
    pub fn new(opts: EngineOpts) -> Self {
        Engine { opts }
    }

    /// Evaluates `q` at time `t` (ms).
    pub fn instant(
        &self,
        storage: &dyn Storage,
        q: &Query,
        t: i64,
    ) -> Result<QueryResult, EvalError> {
        self.instant_until(storage, q, t, None)
    }

    /// [`Engine::instant`] that gives up with [`EvalError::Timeout`] past `deadline`: checked
    /// after each selector is loaded and before each node is evaluated.
    pub fn instant_until(
        &self,
        storage: &dyn Storage,
        q: &Query,
        t: i64,
        deadline: Option<std::time::Instant>,
    ) -> Result<QueryResult, EvalError> {
        if let Some(answer) = storage.evaluate(q, t) {
            return answer.map(|value| QueryResult {
                value,
                annotations: Vec::new(),
            });
        }
        let mut ev = eval::Evaluator::new(storage, &self.opts, q.text(), t, t, 0);
        ev.deadline = deadline;
        let value = eval::run_instant(&mut ev, q.plan(), t)?;
        Ok(QueryResult {
            value,
            annotations: ev.annotations,
        })
    }

    /// Evaluates `q` at every step from `start` to `end` (ms, inclusive); the result is a matrix.
    pub fn range(
        &self,
        storage: &dyn Storage,
        q: &Query,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<QueryResult, EvalError> {
        self.range_until(storage, q, start, end, step, None)
    }

    /// [`Engine::range`] with a deadline, as [`Engine::instant_until`].
    pub fn range_until(
        &self,
        storage: &dyn Storage,
        q: &Query,
        start: i64,
        end: i64,
        step: i64,
        deadline: Option<std::time::Instant>,
    ) -> Result<QueryResult, EvalError> {
        if step <= 0 {
            return Err(EvalError::BadData(
                "zero or negative query resolution step widths are not accepted".into(),
            ));
        }
        if end < start {
            return Err(EvalError::BadData(
                "end timestamp must not be before start time".into(),
            ));
        }
        if (end - start) / step >= self.opts.max_points {
            return Err(EvalError::BadData(format!(
                "exceeded maximum resolution of {} points per timeseries. Try decreasing the query resolution (?step=XX)",
                self.opts.max_points
            )));
        }
        let mut ev = eval::Evaluator::new(storage, &self.opts, q.text(), start, end, step);
        ev.deadline = deadline;
        let value = eval::run_range(&mut ev, q.plan())?;
        Ok(QueryResult {
            value,
            annotations: ev.annotations,
        })
    }
}

#[cfg(test)]
mod tests;
