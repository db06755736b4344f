//! Native histograms in the engine: which operations take them, and the operations on them.
//!
//! An operation that does not handle histograms yet refuses them as unsupported rather than
//! reading one as a float; one that Prometheus defines as ignoring them ignores them as it does.

use vigil_wire::histogram::{FloatHistogram, ResetHint};

use super::functions::Func;
use super::plan::Node;
use super::value::Value;

/// What an operation does with native histograms among its instant-vector operands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HistPolicy {
    /// Takes them (or has no such operands: a range function's argument is checked by
    /// [`range_use`] instead).
    Take,
    /// Reads floats only and leaves histogram samples out without a word, as Prometheus's
    /// float functions do.
    Drop,
    /// Not evaluated over histograms yet: refused as unsupported, naming the operation.
    Refuse(&'static str),
}

/// What `node` does with native histograms in its instant-vector operands.
pub(crate) fn policy(node: &Node) -> HistPolicy {
    use Func as F;
    match node {
        Node::Number(_) | Node::String(_) | Node::Selector(_) | Node::Subquery { .. } => {
            HistPolicy::Take
        }
        Node::Neg(_) | Node::Binary { .. } => HistPolicy::Take,
        Node::Aggregate { .. } => HistPolicy::Take,
        Node::Call { func, .. } => match func {
            _ if range_use(*func).is_some() => HistPolicy::Take,
            F::Abs
            | F::Ceil
            | F::Floor
            | F::Exp
            | F::Ln
            | F::Log2
            | F::Log10
            | F::Sqrt
            | F::Sgn
            | F::Sin
            | F::Cos
            | F::Tan
            | F::Asin
            | F::Acos
            | F::Atan
            | F::Sinh
            | F::Cosh
            | F::Tanh
            | F::Asinh
            | F::Acosh
            | F::Atanh
            | F::Deg
            | F::Rad
            | F::Clamp
            | F::ClampMin
            | F::ClampMax
            | F::Round
            | F::Scalar
            | F::Sort
            | F::SortDesc
            | F::DaysInMonth
            | F::DayOfMonth
            | F::DayOfWeek
            | F::DayOfYear
            | F::Hour
            | F::Minute
            | F::Month
            | F::Year => HistPolicy::Drop,
            F::Timestamp
            | F::Absent
            | F::LabelReplace
            | F::LabelJoin
            | F::SortByLabel
            | F::SortByLabelDesc => HistPolicy::Take,
            _ => HistPolicy::Refuse(func.name()),
        },
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
    /// Reads both.
    Both,
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
        F::CountOverTime
        | F::LastOverTime
        | F::FirstOverTime
        | F::PresentOverTime
        | F::AbsentOverTime
        | F::Changes
        | F::Resets
        | F::TsOfFirstOverTime
        | F::TsOfLastOverTime => RangeUse::Both,
        F::Rate
        | F::Increase
        | F::Delta
        | F::Irate
        | F::Idelta
        | F::SumOverTime
        | F::AvgOverTime => RangeUse::NotYet,
        _ => return None,
    })
}

/// The sum of histograms for `sum` and `avg`, with what Prometheus says about it.
pub(crate) struct HistSum {
    pub h: FloatHistogram,
    /// Custom bucket bounds differed and were intersected.
    pub reconciled: bool,
    /// One input said reset and another not_reset.
    pub collision: bool,
}

/// Adds histograms up; `Err(i)` when input `i` cannot be added to those before it (exponential
/// and custom buckets mixed).
pub(crate) fn sum_histograms<'a>(
    hs: impl IntoIterator<Item = &'a FloatHistogram>,
) -> Result<Option<HistSum>, usize> {
    let mut acc: Option<HistSum> = None;
    let (mut reset, mut not_reset) = (false, false);
    for (i, h) in hs.into_iter().enumerate() {
        match h.hint {
            ResetHint::Reset => reset = true,
            ResetHint::NotReset => not_reset = true,
            _ => {}
        }
        acc = Some(match acc {
            None => HistSum {
                h: h.clone(),
                reconciled: false,
                collision: false,
            },
            Some(a) => {
                let c = a.h.combine(h, false).map_err(|_| i)?;
                HistSum {
                    h: c.h,
                    reconciled: a.reconciled || c.bounds_reconciled,
                    collision: false,
                }
            }
        });
    }
    Ok(acc.map(|mut a| {
        a.collision = reset && not_reset;
        a
    }))
}
