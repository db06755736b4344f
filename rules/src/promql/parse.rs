//! Parsing queries, with errors that say where in the expression they are.

use std::fmt;

use super::plan::{lower, Node, ValueType};
use super::EvalError;

/// A parsed, lowered query ready to evaluate many times.
#[derive(Debug, Clone)]
pub struct Query {
    text: String,
    plan: Node,
}

impl Query {
    pub fn text(&self) -> &str {
        &self.text
    }
    pub fn plan(&self) -> &Node {
        &self.plan
    }
    pub fn value_type(&self) -> ValueType {
        self.plan.value_type()
    }
}

/// A query that does not parse, or parses to something the engine cannot evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line and column in the query text.
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// True when the query is valid PromQL that Vigil does not evaluate (native histograms,
    /// experimental syntax).
    pub unsupported: bool,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Parses and lowers a PromQL expression.
pub fn parse(text: &str) -> Result<Query, ParseError> {
    let expr = promql_parser::parser::parse(text).map_err(|msg| locate(text, msg))?;
    let plan = lower(&expr).map_err(|e| {
        let unsupported = matches!(e, EvalError::Unsupported(_));
        ParseError {
            line: 1,
            column: 1,
            message: e.to_string(),
            unsupported,
        }
    })?;
    Ok(Query {
        text: text.to_string(),
        plan,
    })
}

/// Gives a parser message a position: the parser reports none, so the error is located by
/// scanning the tokens for the first place the query stops making sense.
fn locate(text: &str, msg: String) -> ParseError {
    let (pos, detail) = super::parse_pos::find_error(text);
    let message = match detail {
        Some(d) if msg == "invalid promql query" => format!("parse error: {d}"),
        Some(d) => format!("parse error: {msg} ({d})"),
        None => format!("parse error: {msg}"),
    };
    let before = &text[..pos.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.chars().count(), |i| before[i + 1..].chars().count())
        + 1;
    ParseError {
        line,
        column,
        message,
        unsupported: false,
    }
}
