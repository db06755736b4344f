//! Lowers `promql-parser`'s AST into the engine's own plan: operators resolved to enums,
//! durations in milliseconds, every selector numbered so its data can be loaded once per query.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{
    self as ast, AtModifier, Expr, LabelModifier, Offset, VectorMatchCardinality,
};

use super::functions::Func;
use super::EvalError;

/// Where an `@` modifier pins a selector or subquery.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum At {
    Start,
    End,
    Time(i64),
}

#[derive(Debug, Clone)]
pub struct Selector {
    /// Index into the per-query data cache.
    pub id: usize,
    /// The metric name as written (for annotations and `absent`).
    pub name: Option<String>,
    /// Matchers, including the metric name as an `__name__` matcher.
    pub matchers: Vec<Matcher>,
    /// Alternative matcher sets (`{a="1" or b="2"}`), each including the name matcher.
    pub or_matchers: Vec<Vec<Matcher>>,
    pub offset_ms: i64,
    pub at: Option<At>,
    /// `Some` for a range (matrix) selector.
    pub range_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Atan2,
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    And,
    Or,
    Unless,
}

impl BinOp {
    /// How the operator is written.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
            BinOp::Pow => "^",
            BinOp::Atan2 => "atan2",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Gt => ">",
            BinOp::Lt => "<",
            BinOp::Ge => ">=",
            BinOp::Le => "<=",
            BinOp::And => "and",
            BinOp::Or => "or",
            BinOp::Unless => "unless",
        }
    }

    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Eq | BinOp::Ne | BinOp::Gt | BinOp::Lt | BinOp::Ge | BinOp::Le
        )
    }
    pub fn is_set(self) -> bool {
        matches!(self, BinOp::And | BinOp::Or | BinOp::Unless)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggOp {
    Sum,
    Avg,
    Count,
    Min,
    Max,
    Group,
    Stddev,
    Stdvar,
    Topk,
    Bottomk,
    CountValues,
    Quantile,
    Limitk,
    LimitRatio,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grouping {
    By(Vec<String>),
    Without(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Card {
    OneToOne,
    ManyToOne(Vec<String>),
    OneToMany(Vec<String>),
    ManyToMany,
}

#[derive(Debug, Clone)]
pub struct Matching {
    /// `on(...)` when true, `ignoring(...)` when false.
    pub on: bool,
    pub labels: Vec<String>,
    pub card: Card,
}

#[derive(Debug, Clone)]
pub enum Node {
    Number(f64),
    String(String),
    Selector(Selector),
    Subquery {
        /// Index into the per-query cache of inner evaluations.
        id: usize,
        expr: Box<Node>,
        range_ms: i64,
        step_ms: Option<i64>,
        offset_ms: i64,
        at: Option<At>,
    },
    Neg(Box<Node>),
    Binary {
        op: BinOp,
        lhs: Box<Node>,
        rhs: Box<Node>,
        return_bool: bool,
        matching: Matching,
    },
    Aggregate {
        op: AggOp,
        expr: Box<Node>,
        param: Option<Box<Node>>,
        grouping: Option<Grouping>,
    },
    Call {
        func: Func,
        args: Vec<Node>,
    },
}

/// Whether the expression's result is an instant vector, range vector, scalar or string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    Scalar,
    String,
    Vector,
    Matrix,
}

impl Node {
    pub fn value_type(&self) -> ValueType {
        match self {
            Node::Number(_) => ValueType::Scalar,
            Node::String(_) => ValueType::String,
            Node::Selector(s) if s.range_ms.is_some() => ValueType::Matrix,
            Node::Selector(_) => ValueType::Vector,
            Node::Subquery { .. } => ValueType::Matrix,
            Node::Neg(e) => e.value_type(),
            Node::Binary { lhs, rhs, .. } => {
                if lhs.value_type() == ValueType::Scalar && rhs.value_type() == ValueType::Scalar {
                    ValueType::Scalar
                } else {
                    ValueType::Vector
                }
            }
            Node::Aggregate { .. } => ValueType::Vector,
            Node::Call { func, .. } => func.return_type(),
        }
    }
}

/// Durations beyond this many milliseconds (about 10,000 years) are refused: the arithmetic on
/// timestamps must never overflow.
const MAX_DURATION_MS: i64 = 315_360_000_000_000;

fn dur_ms(d: &Duration) -> i64 {
    i64::try_from(d.as_millis())
        .unwrap_or(i64::MAX)
        .min(MAX_DURATION_MS)
}

fn check_durations(node: &Node) -> Result<(), EvalError> {
    let too_long = |ms: i64| ms.abs() >= MAX_DURATION_MS;
    let bad = match node {
        Node::Selector(s) => too_long(s.offset_ms) || s.range_ms.is_some_and(too_long),
        Node::Subquery {
            range_ms,
            offset_ms,
            step_ms,
            ..
        } => too_long(*range_ms) || too_long(*offset_ms) || step_ms.is_some_and(too_long),
        _ => false,
    };
    if bad {
        return Err(EvalError::BadData(
            "duration out of range (at most 10000y)".into(),
        ));
    }
    Ok(())
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => dur_ms(d),
        Some(Offset::Neg(d)) => -dur_ms(d),
    }
}

fn at_of(a: &Option<AtModifier>) -> Option<At> {
    a.as_ref().map(|a| match a {
        AtModifier::Start => At::Start,
        AtModifier::End => At::End,
        AtModifier::At(t) => At::Time(system_time_ms(t)),
    })
}

fn system_time_ms(t: &SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// Lowers a parsed expression. Fails for constructs the engine does not evaluate.
pub fn lower(expr: &Expr) -> Result<Node, EvalError> {
    let mut next_id = 0;
    lower_expr(expr, &mut next_id)
}

/// Prometheus 3 anchors regex matchers and lets `.` match newlines: `^(?s:re)$`.
fn prometheus_regex(m: &Matcher) -> Matcher {
    let rebuild = |re: &str| regex::Regex::new(&format!("^(?s:{re})$")).ok();
    match &m.op {
        MatchOp::Re(_) => match rebuild(&m.value) {
            Some(r) => Matcher {
                op: MatchOp::Re(r),
                name: m.name.clone(),
                value: m.value.clone(),
            },
            None => m.clone(),
        },
        MatchOp::NotRe(_) => match rebuild(&m.value) {
            Some(r) => Matcher {
                op: MatchOp::NotRe(r),
                name: m.name.clone(),
                value: m.value.clone(),
            },
            None => m.clone(),
        },
        _ => m.clone(),
    }
}

fn lower_selector(
    vs: &ast::VectorSelector,
    range: Option<&Duration>,
    next_id: &mut usize,
) -> Selector {
    let id = *next_id;
    *next_id += 1;
    let name_matcher = vs
        .name
        .as_ref()
        .map(|n| Matcher::new(MatchOp::Equal, "__name__", n));
    let mut matchers: Vec<Matcher> = name_matcher.iter().cloned().collect();
    matchers.extend(vs.matchers.matchers.iter().map(prometheus_regex));
    let or_matchers = vs
        .matchers
        .or_matchers
        .iter()
        .map(|alt| {
            name_matcher
                .iter()
                .cloned()
                .chain(alt.iter().map(prometheus_regex))
                .collect()
        })
        .collect();
    let name = vs.name.clone().or_else(|| {
        vs.matchers
            .matchers
            .iter()
            .find(|m| m.name == "__name__" && matches!(m.op, MatchOp::Equal))
            .map(|m| m.value.clone())
    });
    Selector {
        id,
        name,
        matchers,
        or_matchers,
        offset_ms: offset_ms(&vs.offset),
        at: at_of(&vs.at),
        range_ms: range.map(dur_ms),
    }
}

fn lower_expr(expr: &Expr, next_id: &mut usize) -> Result<Node, EvalError> {
    let node = match expr {
        Expr::NumberLiteral(n) => Node::Number(n.val),
        Expr::StringLiteral(s) => Node::String(s.val.clone()),
        Expr::Paren(p) => lower_expr(&p.expr, next_id)?,
        Expr::VectorSelector(vs) => Node::Selector(lower_selector(vs, None, next_id)),
        Expr::MatrixSelector(ms) => {
            Node::Selector(lower_selector(&ms.vs, Some(&ms.range), next_id))
        }
        Expr::Subquery(sq) => Node::Subquery {
            id: {
                *next_id += 1;
                *next_id - 1
            },
            expr: Box::new(lower_expr(&sq.expr, next_id)?),
            range_ms: dur_ms(&sq.range),
            step_ms: sq.step.as_ref().map(dur_ms).filter(|s| *s > 0),
            offset_ms: offset_ms(&sq.offset),
            at: at_of(&sq.at),
        },
        Expr::Unary(u) => Node::Neg(Box::new(lower_expr(&u.expr, next_id)?)),
        Expr::Binary(b) => lower_binary(b, next_id)?,
        Expr::Aggregate(a) => {
            let op = match a.op.to_string().as_str() {
                "sum" => AggOp::Sum,
                "avg" => AggOp::Avg,
                "count" => AggOp::Count,
                "min" => AggOp::Min,
                "max" => AggOp::Max,
                "group" => AggOp::Group,
                "stddev" => AggOp::Stddev,
                "stdvar" => AggOp::Stdvar,
                "topk" => AggOp::Topk,
                "bottomk" => AggOp::Bottomk,
                "count_values" => AggOp::CountValues,
                "quantile" => AggOp::Quantile,
                "limitk" => AggOp::Limitk,
                "limit_ratio" => AggOp::LimitRatio,
                other => return Err(EvalError::Unsupported(format!("aggregation {other}"))),
            };
            let grouping = a.modifier.as_ref().map(|m| match m {
                LabelModifier::Include(l) => Grouping::By(l.labels.clone()),
                LabelModifier::Exclude(l) => Grouping::Without(l.labels.clone()),
            });
            let param = match &a.param {
                Some(p) => Some(Box::new(lower_expr(p, next_id)?)),
                None => None,
            };
            Node::Aggregate {
                op,
                expr: Box::new(lower_expr(&a.expr, next_id)?),
                param,
                grouping,
            }
        }
        Expr::Call(c) => {
            let func = Func::from_name(c.func.name)
                .ok_or_else(|| EvalError::Unsupported(format!("function {}()", c.func.name)))?;
            let args = c
                .args
                .args
                .iter()
                .map(|a| lower_expr(a, next_id))
                .collect::<Result<Vec<_>, _>>()?;
            Node::Call { func, args }
        }
        Expr::Extension(_) => return Err(EvalError::Unsupported("extension expressions".into())),
    };
    check_durations(&node)?;
    Ok(node)
}

fn lower_binary(b: &ast::BinaryExpr, next_id: &mut usize) -> Result<Node, EvalError> {
    let op = match b.op.to_string().as_str() {
        "+" => BinOp::Add,
        "-" => BinOp::Sub,
        "*" => BinOp::Mul,
        "/" => BinOp::Div,
        "%" => BinOp::Mod,
        "^" => BinOp::Pow,
        "atan2" => BinOp::Atan2,
        "==" => BinOp::Eq,
        "!=" => BinOp::Ne,
        ">" => BinOp::Gt,
        "<" => BinOp::Lt,
        ">=" => BinOp::Ge,
        "<=" => BinOp::Le,
        "and" => BinOp::And,
        "or" => BinOp::Or,
        "unless" => BinOp::Unless,
        other => return Err(EvalError::Unsupported(format!("binary operator {other}"))),
    };
    let mut matching = Matching {
        on: false,
        labels: vec![],
        card: if op.is_set() {
            Card::ManyToMany
        } else {
            Card::OneToOne
        },
    };
    let mut return_bool = false;
    if let Some(m) = &b.modifier {
        if m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some() {
            return Err(EvalError::Unsupported(
                "fill modifiers for binary operators (experimental)".into(),
            ));
        }
        return_bool = m.return_bool;
        if let Some(lm) = &m.matching {
            matching.on = lm.is_include();
            matching.labels = lm.labels().labels.clone();
        }
        matching.card = match &m.card {
            VectorMatchCardinality::OneToOne => Card::OneToOne,
            VectorMatchCardinality::ManyToOne(l) => Card::ManyToOne(l.labels.clone()),
            VectorMatchCardinality::OneToMany(l) => Card::OneToMany(l.labels.clone()),
            VectorMatchCardinality::ManyToMany => Card::ManyToMany,
        };
        if op.is_set() {
            matching.card = Card::ManyToMany;
        }
    }
    Ok(Node::Binary {
        op,
        lhs: Box::new(lower_expr(&b.lhs, next_id)?),
        rhs: Box::new(lower_expr(&b.rhs, next_id)?),
        return_bool,
        matching,
    })
}
