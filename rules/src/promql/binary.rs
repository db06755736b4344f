//! Binary operators: scalar/scalar, vector/scalar and vector/vector with label matching.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use vigil_wire::histogram::{FloatHistogram, ResetHint};
use vigil_wire::{Labels, METRIC_NAME};

use super::eval::Evaluator;
use super::plan::{BinOp, Card, Matching, Node};
use super::value::{Severity, Value, VectorSample};
use super::EvalError;

/// Annotations a binary operation gives, added once it is done.
type Notes = Vec<(Severity, String)>;

/// One operand: a float, or a histogram.
type Operand<'a> = (f64, Option<&'a Arc<FloatHistogram>>);

/// The outcome of `op` on two elements, one or both histograms (Prometheus's
/// `vectorElemBinop`): the value (the bool says whether a comparison holds), or `None` when the
/// pair gives nothing (with the info or warning in `notes`).
fn apply_elem(
    op: BinOp,
    l: Operand,
    r: Operand,
    notes: &mut Notes,
) -> Option<(f64, Option<Arc<FloatHistogram>>, bool)> {
    let incompatible = |lt: &str, rt: &str, notes: &mut Notes| {
        let o = op.symbol();
        notes.push((
            Severity::Info,
            format!(
                "incompatible sample types encountered for binary operator \"{o}\": {lt} {o} {rt}"
            ),
        ));
        None
    };
    let shaped = |mut h: FloatHistogram| {
        h.compact(0);
        Some(Arc::new(h))
    };
    match (l.1, r.1) {
        (None, None) => {
            let (v, keep) = apply(op, l.0, r.0);
            Some((v, None, keep))
        }
        (None, Some(h)) => match op {
            BinOp::Mul => Some((0.0, shaped(h.scaled(l.0)), true)),
            _ => incompatible("float", "histogram", notes),
        },
        (Some(h), None) => match op {
            BinOp::Mul => Some((0.0, shaped(h.scaled(r.0)), true)),
            BinOp::Div => Some((0.0, shaped(h.divided(r.0)), true)),
            _ => incompatible("histogram", "float", notes),
        },
        (Some(a), Some(b)) => match op {
            BinOp::Add | BinOp::Sub => {
                let sub = op == BinOp::Sub;
                let what = if sub { "subtraction" } else { "addition" };
                let Ok(c) = a.combine(b, sub) else {
                    notes.push((
                        Severity::Warning,
                        format!(
                            "incompatible bucket layout encountered for binary operator {}",
                            op.symbol()
                        ),
                    ));
                    return None;
                };
                if c.hint_collision {
                    notes.push((
                        Severity::Warning,
                        format!("conflicting counter resets during histogram {what}"),
                    ));
                }
                if c.bounds_reconciled {
                    notes.push((
                        Severity::Info,
                        format!("mismatched custom buckets were reconciled during {what}"),
                    ));
                }
                let mut h = c.h;
                if sub {
                    h.hint = ResetHint::Gauge;
                }
                Some((0.0, shaped(h), true))
            }
            BinOp::Eq => Some((0.0, Some(a.clone()), a.equals(b))),
            BinOp::Ne => Some((0.0, Some(a.clone()), !a.equals(b))),
            _ => incompatible("histogram", "histogram", notes),
        },
    }
}

/// Applies `op` to two floats. For comparisons the value is `l` and the bool says whether the
/// comparison holds.
pub(crate) fn apply(op: BinOp, l: f64, r: f64) -> (f64, bool) {
    match op {
        BinOp::Add => (l + r, true),
        BinOp::Sub => (l - r, true),
        BinOp::Mul => (l * r, true),
        BinOp::Div => (l / r, true),
        BinOp::Mod => (l % r, true),
        BinOp::Pow => (l.powf(r), true),
        BinOp::Atan2 => (l.atan2(r), true),
        BinOp::Eq => (l, l == r),
        BinOp::Ne => (l, l != r),
        BinOp::Gt => (l, l > r),
        BinOp::Lt => (l, l < r),
        BinOp::Ge => (l, l >= r),
        BinOp::Le => (l, l <= r),
        BinOp::And | BinOp::Or | BinOp::Unless => (l, true),
    }
}

/// The labels two samples are matched on.
fn signature(l: &Labels, m: &Matching) -> Labels {
    if m.on {
        l.keep_only(&m.labels)
    } else {
        l.filter(|x| x.name != METRIC_NAME && !m.labels.iter().any(|n| *n == x.name))
    }
}

impl Evaluator<'_> {
    pub(crate) fn binary(
        &mut self,
        op: BinOp,
        lhs: &Node,
        rhs: &Node,
        return_bool: bool,
        matching: &Matching,
        t: i64,
    ) -> Result<Value, EvalError> {
        let l = self.eval(lhs, t)?;
        let r = self.eval(rhs, t)?;
        match (l, r) {
            (Value::Scalar(a), Value::Scalar(b)) => {
                let (v, keep) = apply(op, a, b);
                Ok(Value::Scalar(if op.is_comparison() {
                    if keep {
                        1.0
                    } else {
                        0.0
                    }
                } else {
                    v
                }))
            }
            (Value::Vector(v), Value::Scalar(s)) => {
                let mut notes = Notes::new();
                let out = vector_scalar(op, v, s, false, return_bool, t, &mut notes);
                self.annotate_all(notes);
                Ok(Value::Vector(out))
            }
            (Value::Scalar(s), Value::Vector(v)) => {
                let mut notes = Notes::new();
                let out = vector_scalar(op, v, s, true, return_bool, t, &mut notes);
                self.annotate_all(notes);
                Ok(Value::Vector(out))
            }
            (Value::Vector(a), Value::Vector(b)) => {
                if op.is_set() {
                    Ok(Value::Vector(set_op(op, a, b, matching)))
                } else {
                    let mut notes = Notes::new();
                    let out = vector_vector(op, a, b, matching, return_bool, t, &mut notes)?;
                    self.annotate_all(notes);
                    Ok(Value::Vector(out))
                }
            }
            (a, b) => Err(EvalError::Execution(format!(
                "binary operator between {} and {} is not allowed",
                a.type_name(),
                b.type_name()
            ))),
        }
    }
}

impl Evaluator<'_> {
    fn annotate_all(&mut self, notes: Notes) {
        for (severity, text) in notes {
            self.annotate(severity, text, None);
        }
    }
}

fn vector_scalar(
    op: BinOp,
    v: Vec<VectorSample>,
    s: f64,
    swap: bool,
    return_bool: bool,
    t: i64,
    notes: &mut Notes,
) -> Vec<VectorSample> {
    let mut out = Vec::with_capacity(v.len());
    for mut smp in v {
        let (mut val, mut h, mut keep) = if smp.h.is_none() {
            let (l, r) = if swap { (s, smp.f) } else { (smp.f, s) };
            let (val, keep) = apply(op, l, r);
            (val, None, keep)
        } else {
            let (l, r) = if swap {
                ((s, None), (smp.f, smp.h.as_ref()))
            } else {
                ((smp.f, smp.h.as_ref()), (s, None))
            };
            match apply_elem(op, l, r, notes) {
                Some(x) => x,
                None => continue,
            }
        };
        if op.is_comparison() && swap {
            // The vector element's value is kept even when the scalar is on the left.
            val = smp.f;
            h = smp.h.clone();
        }
        if return_bool {
            val = if keep { 1.0 } else { 0.0 };
            h = None;
            keep = true;
        }
        if keep {
            smp.f = val;
            smp.h = h;
            smp.t = t;
            if return_bool || !op.is_comparison() {
                smp.drop_name = true;
            }
            out.push(smp);
        }
    }
    out
}

fn set_op(
    op: BinOp,
    lhs: Vec<VectorSample>,
    rhs: Vec<VectorSample>,
    m: &Matching,
) -> Vec<VectorSample> {
    match op {
        BinOp::And => {
            if lhs.is_empty() || rhs.is_empty() {
                return Vec::new();
            }
            let rs: HashSet<Labels> = rhs.iter().map(|s| signature(&s.labels, m)).collect();
            lhs.into_iter()
                .filter(|s| rs.contains(&signature(&s.labels, m)))
                .collect()
        }
        BinOp::Or => {
            let ls: HashSet<Labels> = lhs.iter().map(|s| signature(&s.labels, m)).collect();
            let mut out = lhs;
            out.extend(
                rhs.into_iter()
                    .filter(|s| !ls.contains(&signature(&s.labels, m))),
            );
            out
        }
        _ => {
            let rs: HashSet<Labels> = rhs.iter().map(|s| signature(&s.labels, m)).collect();
            lhs.into_iter()
                .filter(|s| !rs.contains(&signature(&s.labels, m)))
                .collect()
        }
    }
}

/// Go's `labels.String()` form used in matching errors: `{a="1", b="2"}` with the name as a label.
fn go_labels(l: &Labels) -> String {
    let parts: Vec<String> = l
        .iter()
        .map(|x| format!("{}={:?}", x.name, x.value))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

fn result_labels(ls: &Labels, rs: &Labels, m: &Matching, op: BinOp) -> Labels {
    let mut b = ls.to_builder();
    // Arithmetic changes what the series measures: its name goes at once (before group_x can
    // copy one from the other side), whether or not name removal is delayed.
    if !op.is_comparison() {
        b.del(METRIC_NAME);
    }
    match &m.card {
        Card::OneToOne => {
            if m.on {
                return b.build().keep_only(&m.labels);
            }
            for n in &m.labels {
                b.del(n);
            }
        }
        Card::ManyToOne(include) | Card::OneToMany(include) => {
            for n in include {
                match rs.get(n) {
                    Some(v) => {
                        b.set(n.clone(), v.to_string());
                    }
                    None => {
                        b.del(n);
                    }
                }
            }
        }
        Card::ManyToMany => {}
    }
    b.build()
}

fn vector_vector(
    op: BinOp,
    lhs: Vec<VectorSample>,
    rhs: Vec<VectorSample>,
    m: &Matching,
    return_bool: bool,
    t: i64,
    notes: &mut Notes,
) -> Result<Vec<VectorSample>, EvalError> {
    if lhs.is_empty() || rhs.is_empty() {
        return Ok(Vec::new());
    }
    let one_to_many = matches!(m.card, Card::OneToMany(_));
    let (many, one) = if one_to_many { (rhs, lhs) } else { (lhs, rhs) };
    let mut one_sigs: HashMap<Labels, usize> = HashMap::with_capacity(one.len());
    for (i, s) in one.iter().enumerate() {
        let sig = signature(&s.labels, m);
        if let Some(&j) = one_sigs.get(&sig) {
            let side = if one_to_many { "left" } else { "right" };
            let (a, b) = if one[j].labels <= s.labels {
                (&one[j], s)
            } else {
                (s, &one[j])
            };
            let group = if m.on {
                s.labels.keep_only(&m.labels)
            } else {
                sig.clone()
            };
            return Err(EvalError::Execution(format!(
                "found duplicate series for the match group {} on the {side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                go_labels(&group),
                go_labels(&a.labels),
                go_labels(&b.labels)
            )));
        }
        one_sigs.insert(sig, i);
    }
    let mut matched: HashMap<Labels, HashSet<Labels>> = HashMap::new();
    let mut out = Vec::new();
    for ms in &many {
        let sig = signature(&ms.labels, m);
        let Some(&oi) = one_sigs.get(&sig) else {
            continue;
        };
        let os = &one[oi];
        let (l, r) = if one_to_many {
            ((os.f, os.h.as_ref()), (ms.f, ms.h.as_ref()))
        } else {
            ((ms.f, ms.h.as_ref()), (os.f, os.h.as_ref()))
        };
        let labels = result_labels(&ms.labels, &os.labels, m, op);
        match m.card {
            Card::OneToOne => {
                if matched.insert(sig, HashSet::new()).is_some() {
                    return Err(EvalError::Execution(
                        "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)"
                            .into(),
                    ));
                }
            }
            _ => {
                if !matched.entry(sig).or_default().insert(labels.clone()) {
                    return Err(EvalError::Execution(
                        "multiple matches for labels: grouping labels must ensure unique matches"
                            .into(),
                    ));
                }
            }
        }
        let Some((mut val, mut h, keep)) = apply_elem(op, l, r, notes) else {
            continue;
        };
        if return_bool {
            val = if keep { 1.0 } else { 0.0 };
            h = None;
        } else if !keep {
            continue;
        }
        // Comparisons without `bool` pass the sample through, keeping its pending name drop.
        let drop_name = return_bool || (op.is_comparison() && ms.drop_name);
        out.push(VectorSample {
            labels,
            t,
            f: val,
            h,
            drop_name,
        });
    }
    Ok(out)
}
