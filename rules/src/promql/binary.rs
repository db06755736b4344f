//! Binary operators: scalar/scalar, vector/scalar and vector/vector with label matching.

use std::collections::{HashMap, HashSet};

use vigil_wire::{Labels, METRIC_NAME};

use super::eval::Evaluator;
use super::plan::{BinOp, Card, Matching, Node};
use super::value::{Value, VectorSample};
use super::EvalError;

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
            (Value::Vector(v), Value::Scalar(s)) => Ok(Value::Vector(vector_scalar(
                op,
                v,
                s,
                false,
                return_bool,
                t,
            ))),
            (Value::Scalar(s), Value::Vector(v)) => {
                Ok(Value::Vector(vector_scalar(op, v, s, true, return_bool, t)))
            }
            (Value::Vector(a), Value::Vector(b)) => {
                if op.is_set() {
                    Ok(Value::Vector(set_op(op, a, b, matching)))
                } else {
                    Ok(Value::Vector(vector_vector(
                        op,
                        a,
                        b,
                        matching,
                        return_bool,
                        t,
                    )?))
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

fn vector_scalar(
    op: BinOp,
    v: Vec<VectorSample>,
    s: f64,
    swap: bool,
    return_bool: bool,
    t: i64,
) -> Vec<VectorSample> {
    let mut out = Vec::with_capacity(v.len());
    for mut smp in v {
        let (l, r) = if swap { (s, smp.f) } else { (smp.f, s) };
        let (mut val, mut keep) = apply(op, l, r);
        if op.is_comparison() && swap {
            // The vector element's value is kept even when the scalar is on the left.
            val = r;
        }
        if return_bool {
            val = if keep { 1.0 } else { 0.0 };
            keep = true;
        }
        if keep {
            smp.f = val;
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
        let (fl, fr) = if one_to_many {
            (os.f, ms.f)
        } else {
            (ms.f, os.f)
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
        let (mut val, keep) = apply(op, fl, fr);
        if return_bool {
            val = if keep { 1.0 } else { 0.0 };
        } else if !keep {
            continue;
        }
        // Comparisons without `bool` pass the sample through, keeping its pending name drop.
        let drop_name = return_bool || (op.is_comparison() && ms.drop_name);
        out.push(VectorSample {
            labels,
            t,
            f: val,
            h: None,
            drop_name,
        });
    }
    Ok(out)
}
