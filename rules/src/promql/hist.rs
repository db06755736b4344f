//! Native histograms in the engine: which operations take them, and the operations on them.
//!
//! An operation that does not handle histograms yet refuses them as unsupported rather than
//! reading one as a float; one that Prometheus defines as ignoring them ignores them as it does.

use super::functions::Func;
use super::plan::Node;
use super::value::Value;

/// What `node` is, for the unsupported error, when it does not take native histograms among
/// its instant-vector operands; `None` when it takes them (or has no such operands: a range
/// function's argument is checked by [`range_use`] instead).
pub(crate) fn refuses(node: &Node) -> Option<&'static str> {
    match node {
        Node::Number(_) | Node::String(_) | Node::Selector(_) | Node::Subquery { .. } => None,
        Node::Neg(_) => Some("unary minus"),
        Node::Binary { .. } => Some("a binary operation"),
        Node::Aggregate { .. } => Some("an aggregation"),
        Node::Call { func, .. } => {
            if range_use(*func).is_some() {
                None
            } else {
                Some(func.name())
            }
        }
    }
}

/// Whether a value holds a native histogram anywhere.
pub(crate) fn holds_histograms(v: &Value) -> bool {
    match v {
        Value::Vector(v) => v.iter().any(|s| s.h.is_some()),
        Value::Matrix(m) => m.iter().any(|s| !s.histograms.is_empty()),
        Value::Scalar(_) | Value::String(_) => false,
    }
}

/// What a function taking a range vector does with the histograms in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangeUse {
    /// Reads the floats only; a window holding both gets Prometheus's info.
    Floats,
    /// Not evaluated over histograms yet: refused as unsupported.
    NotYet,
}

/// `None` for a function without a range-vector argument.
pub(crate) fn range_use(f: Func) -> Option<RangeUse> {
    use Func as F;
    Some(match f {
        F::MinOverTime
        | F::MaxOverTime
        | F::QuantileOverTime
        | F::StddevOverTime
        | F::StdvarOverTime
        | F::MadOverTime
        | F::Deriv
        | F::PredictLinear
        | F::DoubleExpSmoothing
        | F::HoltWinters
        | F::TsOfMinOverTime
        | F::TsOfMaxOverTime => RangeUse::Floats,
        F::Rate
        | F::Increase
        | F::Delta
        | F::Irate
        | F::Idelta
        | F::SumOverTime
        | F::AvgOverTime
        | F::CountOverTime
        | F::LastOverTime
        | F::FirstOverTime
        | F::PresentOverTime
        | F::AbsentOverTime
        | F::Changes
        | F::Resets
        | F::TsOfFirstOverTime
        | F::TsOfLastOverTime => RangeUse::NotYet,
        _ => return None,
    })
}
