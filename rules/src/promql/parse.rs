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
    if let Some((pos, msg)) = super::parse_pos::find_bad_duration(text) {
        return Err(at(text, pos, format!("parse error: {msg}")));
    }
    // The parser has panicked on inputs before; a query must never take the process down.
    let parsed = std::panic::catch_unwind(|| promql_parser::parser::parse(text)).map_err(|_| {
        at(
            text,
            0,
            "parse error: the query could not be parsed".to_string(),
        )
    })?;
    let expr = parsed.map_err(|msg| locate(text, msg))?;
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
    let (mut pos, detail) = super::parse_pos::find_error(text);
    if detail.is_none() {
        // Semantic errors name the function or construct they are about: point at it.
        let quoted = msg
            .split('\'')
            .nth(1)
            .filter(|n| !n.is_empty())
            .map(|n| format!("{n}("));
        let tail = msg.rsplit_once(" for ").map(|(_, t)| t.to_string());
        if let Some(p) = quoted
            .iter()
            .chain(tail.iter())
            .find_map(|needle| text.find(needle.as_str()))
        {
            pos = p;
        }
    }
    let message = match detail {
        Some(d) if msg == "invalid promql query" || msg == d => format!("parse error: {d}"),
        Some(d) => format!("parse error: {msg} ({d})"),
        None => format!("parse error: {msg}"),
    };
    at(text, pos, message)
}

fn at(text: &str, pos: usize, message: String) -> ParseError {
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

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn every_parse_error_has_a_position() {
        let cases = [
            (
                "sum(rate(x[5m])",
                "1:4: parse error: unclosed left parenthesis",
            ),
            ("x +", "1:4: parse error: unexpected end of input"),
            (
                "sum(x) by (job) foo",
                "1:17: parse error: unexpected identifier \"foo\"",
            ),
            (
                "1 + rate(foo)",
                "1:5: parse error: expected type matrix in call to function 'rate', got vector",
            ),
            ("x{a=~\"(\"}", "1:7: parse error: illegal regex for ("),
        ];
        for (q, want) in cases {
            let e = parse(q).unwrap_err();
            assert_eq!(e.to_string(), want, "{q}");
        }
    }

    #[test]
    fn multi_line_queries_report_line_and_column() {
        let e = parse("sum(\n  rate(x[5m])\n  +\n)").unwrap_err();
        assert_eq!((e.line, e.column), (4, 1), "{e}");
    }
}
