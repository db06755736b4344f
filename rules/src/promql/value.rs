//! Values a PromQL expression evaluates to.

use std::sync::Arc;

use vigil_wire::histogram::{FloatHistogram, HSample};
use vigil_wire::{Labels, Sample};

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorSample {
    pub labels: Labels,
    /// The sample's own timestamp for a plain selector (what `timestamp()` returns), else the
    /// evaluation time.
    pub t: i64,
    /// The value (0 when `h` holds a native histogram).
    pub f: f64,
    /// A native histogram sample instead of a float.
    pub h: Option<Arc<FloatHistogram>>,
    /// Prometheus 3's delayed name removal: the metric name is still carried (so `label_replace`
    /// and `by (__name__)` can see it) but is dropped when the query finishes.
    pub drop_name: bool,
}

/// One series of a range vector (or of a range query's result).
#[derive(Debug, Clone, PartialEq)]
pub struct RangeSeries {
    pub labels: Labels,
    pub points: Vec<Sample>,
    /// Native histogram samples, beside the floats (both in time order).
    pub histograms: Vec<HSample>,
    pub drop_name: bool,
}

/// The result of evaluating an expression at one time.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(f64),
    String(String),
    Vector(Vec<VectorSample>),
    Matrix(Vec<RangeSeries>),
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Scalar(_) => "scalar",
            Value::String(_) => "string",
            Value::Vector(_) => "vector",
            Value::Matrix(_) => "matrix",
        }
    }
}

/// How serious an annotation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Warning,
    Info,
}

/// A note attached to a query result, as Prometheus returns in `warnings` / `infos`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    pub severity: Severity,
    /// The whole rendered message, `PromQL warning: ... (line:col)` style.
    pub message: String,
}

/// The result of a query with its annotations.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult {
    pub value: Value,
    pub annotations: Vec<Annotation>,
}
