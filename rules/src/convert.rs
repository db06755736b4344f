//! `vigil-rules convert`: a Prometheus rule file (YAML) as Vigil's TOML. Groups keep their name,
//! interval and query_offset; recording and alerting rules keep `expr`, `for`, `keep_firing_for`, `labels`
//! and `annotations` as they are (PromQL and Go templates are the same language in both). Whole
//! comment lines are kept before the group or rule they precede; a comment at the end of a
//! line is lost (it says so). What Vigil has no counterpart for (`limit`, group `labels`) is an error naming its line and column, never dropped silently.

use std::fmt::Write as _;

use saphyr_parser::{Event, Parser, ScalarStyle};

/// A YAML node with the line (1-based) and column it starts at.
#[derive(Debug, Clone)]
enum Node {
    Scalar(String, Pos),
    Seq(Vec<Node>, Pos),
    Map(Vec<(String, Node)>, Pos),
}

#[derive(Debug, Clone, Copy, Default)]
struct Pos {
    line: usize,
    col: usize,
}

impl Node {
    fn pos(&self) -> Pos {
        match self {
            Node::Scalar(_, p) | Node::Seq(_, p) | Node::Map(_, p) => *p,
        }
    }
}

/// Reads the first YAML document of `text` into nodes.
fn parse_yaml(file: &str, text: &str) -> Result<Option<Node>, String> {
    let mut stack: Vec<(Node, Option<String>)> = Vec::new();
    let mut key: Option<String> = None;
    let mut root = None;
    for ev in Parser::new_from_str(text) {
        let (ev, span) = ev.map_err(|e| {
            let m = e.marker();
            format!(
                "{file}:{}:{}: invalid YAML: {}",
                m.line(),
                m.col() + 1,
                e.info()
            )
        })?;
        let pos = Pos {
            line: span.start.line(),
            col: span.start.col() + 1,
        };
        let done = match ev {
            Event::Scalar(v, style, _, _) => {
                // A plain `~`/`null`/empty scalar is YAML's null: kept as an empty string.
                let v = if style == ScalarStyle::Plain && matches!(&*v, "~" | "null" | "Null") {
                    String::new()
                } else {
                    v.into_owned()
                };
                Some(Node::Scalar(v, pos))
            }
            Event::SequenceStart(..) => {
                stack.push((Node::Seq(Vec::new(), pos), key.take()));
                None
            }
            Event::MappingStart(..) => {
                stack.push((Node::Map(Vec::new(), pos), key.take()));
                None
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, k) = stack.pop().ok_or("unbalanced YAML")?;
                key = k;
                Some(node)
            }
            Event::Alias(_) => {
                return Err(format!(
                    "{file}:{}:{}: YAML aliases are not converted; write the value out",
                    pos.line, pos.col
                ))
            }
            Event::DocumentEnd => break,
            _ => None,
        };
        let Some(node) = done else { continue };
        match stack.last_mut() {
            None => root = Some(node),
            Some((Node::Seq(items, _), _)) => items.push(node),
            Some((Node::Map(entries, _), _)) => match key.take() {
                None => match node {
                    Node::Scalar(k, _) => key = Some(k),
                    other => {
                        let p = other.pos();
                        return Err(format!(
                            "{file}:{}:{}: a mapping key must be a plain value",
                            p.line, p.col
                        ));
                    }
                },
                Some(k) => entries.push((k, node)),
            },
            Some((Node::Scalar(..), _)) => return Err("unbalanced YAML".into()),
        }
    }
    Ok(root)
}

/// A TOML string holding `s`: a literal string when it can be one (PromQL reads best without
/// escapes), multi-line when it has line breaks, else a basic string with escapes.
fn toml_str(s: &str) -> String {
    quoted(s, true)
}

/// [`toml_str`], on one line when `multi_line` is false (inside an inline table).
fn quoted(s: &str, multi_line: bool) -> String {
    if !s.contains('\n') && !s.contains('\'') && !s.chars().any(char::is_control) {
        return format!("'{s}'");
    }
    if multi_line
        && s.contains('\n')
        && !s.contains("'''")
        && !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return format!("'''\n{s}'''");
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML key: bare when it can be.
fn toml_key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        toml_str(k)
    }
}

struct Converter<'a> {
    file: &'a str,
    /// The source's whole-line comments by line, each taken once.
    comments: Vec<Option<String>>,
    /// The last line whose comments were taken.
    taken_to: usize,
    out: String,
    lost_trailing: usize,
}

impl Converter<'_> {
    fn err(&self, p: Pos, msg: impl std::fmt::Display) -> String {
        format!("{}:{}:{}: {msg}", self.file, p.line, p.col)
    }

    /// Writes the comment lines before `line` not yet written.
    fn comments_before(&mut self, line: usize) {
        let end = line.saturating_sub(1).min(self.comments.len());
        for i in self.taken_to..end {
            if let Some(c) = self.comments[i].take() {
                let _ = writeln!(self.out, "{c}");
            }
        }
        self.taken_to = self.taken_to.max(end);
    }

    fn scalar<'n>(&self, n: &'n Node, what: &str) -> Result<&'n str, String> {
        match n {
            Node::Scalar(s, _) => Ok(s),
            other => Err(self.err(other.pos(), format!("{what} must be a single value"))),
        }
    }

    fn string_map(&mut self, n: &Node, what: &str) -> Result<Vec<(String, String)>, String> {
        match n {
            Node::Map(entries, _) => entries
                .iter()
                .map(|(k, v)| Ok((k.clone(), self.scalar(v, what)?.to_string())))
                .collect(),
            Node::Scalar(s, _) if s.is_empty() => Ok(Vec::new()),
            other => Err(self.err(other.pos(), format!("{what} must be a mapping"))),
        }
    }

    fn group(&mut self, g: &Node) -> Result<(), String> {
        let Node::Map(entries, pos) = g else {
            return Err(self.err(g.pos(), "a group must be a mapping"));
        };
        self.comments_before(pos.line);
        self.out.push_str("[[group]]\n");
        let mut rules = None;
        for (k, v) in entries {
            match k.as_str() {
                "name" | "interval" | "query_offset" => {
                    let s = self.scalar(v, k)?.to_string();
                    let _ = writeln!(self.out, "{k} = {}", toml_str(&s));
                }
                "rules" => rules = Some(v),
                other => {
                    return Err(self.err(
                        v.pos(),
                        format!("group key {other:?} has no counterpart in Vigil's rule files"),
                    ))
                }
            }
        }
        self.out.push('\n');
        match rules {
            Some(Node::Seq(items, _)) => items.iter().try_for_each(|r| self.rule(r)),
            Some(Node::Scalar(s, _)) if s.is_empty() => Ok(()),
            Some(other) => Err(self.err(other.pos(), "rules must be a list")),
            None => Ok(()),
        }
    }

    fn rule(&mut self, r: &Node) -> Result<(), String> {
        let Node::Map(entries, pos) = r else {
            return Err(self.err(r.pos(), "a rule must be a mapping"));
        };
        let has = |k: &str| entries.iter().any(|(x, _)| x == k);
        let kind = match (has("alert"), has("record")) {
            (true, false) => "alert",
            (false, true) => "record",
            _ => return Err(self.err(*pos, "a rule needs exactly one of `alert` and `record`")),
        };
        self.comments_before(pos.line);
        let _ = writeln!(self.out, "[[group.{kind}]]");
        let mut tables = Vec::new();
        for (k, v) in entries {
            match k.as_str() {
                "alert" | "record" | "expr" | "for" | "keep_firing_for" => {
                    let s = self.scalar(v, k)?.to_string();
                    let _ = writeln!(self.out, "{k} = {}", toml_str(s.trim_end_matches('\n')));
                }
                "labels" | "annotations" => tables.push((k.clone(), self.string_map(v, k)?)),
                other => {
                    return Err(self.err(
                        v.pos(),
                        format!("rule key {other:?} has no counterpart in Vigil's rule files"),
                    ))
                }
            }
        }
        for (k, map) in tables.iter().filter(|(_, m)| !m.is_empty()) {
            if map.iter().any(|(_, v)| v.contains('\n')) {
                let _ = writeln!(self.out, "\n[group.{kind}.{k}]");
                for (lk, lv) in map {
                    let _ = writeln!(self.out, "{} = {}", toml_key(lk), toml_str(lv));
                }
            } else {
                let inner: Vec<String> = map
                    .iter()
                    .map(|(lk, lv)| format!("{} = {}", toml_key(lk), toml_str(lv)))
                    .collect();
                let _ = writeln!(self.out, "{k} = {{ {} }}", inner.join(", "));
            }
        }
        self.out.push('\n');
        Ok(())
    }
}

impl Converter<'_> {
    /// An inline table of strings, on one line.
    fn inline_map(&mut self, n: &Node, what: &str) -> Result<String, String> {
        let map = self.string_map(n, what)?;
        let inner: Vec<String> = map
            .iter()
            .map(|(k, v)| format!("{} = {}", toml_key(k), quoted(v, false)))
            .collect();
        Ok(format!("{{ {} }}", inner.join(", ")))
    }

    fn entries<'n>(&self, n: &'n Node, what: &str) -> Result<&'n [(String, Node)], String> {
        match n {
            Node::Map(e, _) => Ok(e),
            other => Err(self.err(other.pos(), format!("{what} must be a mapping"))),
        }
    }

    fn items<'n>(&self, n: &'n Node, what: &str) -> Result<&'n [Node], String> {
        match n {
            Node::Seq(items, _) => Ok(items),
            Node::Scalar(s, _) if s.is_empty() => Ok(&[]),
            other => Err(self.err(other.pos(), format!("{what} must be a list"))),
        }
    }

    fn unknown(&self, v: &Node, what: &str, key: &str) -> String {
        self.err(
            v.pos(),
            format!("{what} key {key:?} has no counterpart in vigil-rules test"),
        )
    }

    /// A number as TOML writes it (`nan`, `inf`, `-inf` included).
    fn number(&self, n: &Node) -> Result<String, String> {
        let s = self.scalar(n, "value")?;
        let v: f64 = s
            .trim()
            .trim_start_matches('+')
            .parse()
            .map_err(|_| self.err(n.pos(), format!("value {s:?} is not a number")))?;
        Ok(if v.is_nan() {
            "nan".into()
        } else if v.is_infinite() {
            if v > 0.0 { "inf" } else { "-inf" }.into()
        } else if v == v.trunc() && v.abs() < 1e15 {
            format!("{v:.0}")
        } else {
            format!("{v:?}")
        })
    }

    fn test(&mut self, t: &Node) -> Result<(), String> {
        let entries = self.entries(t, "a test")?;
        self.comments_before(t.pos().line);
        self.out.push_str("[[test]]\n");
        let mut alerts = &[][..];
        let mut exprs = &[][..];
        for (k, v) in entries {
            match k.as_str() {
                "interval" => {
                    let s = self.scalar(v, k)?.to_string();
                    let _ = writeln!(self.out, "interval = {}", toml_str(&s));
                }
                // A test's name is for promtool's report; Vigil numbers its tests.
                "name" => {
                    let s = self.scalar(v, k)?.to_string();
                    let _ = writeln!(self.out, "# {s}");
                }
                "input_series" => {
                    self.out.push_str("input_series = [\n");
                    for s in self.items(v, k)? {
                        let (mut series, mut values) = (None, None);
                        for (sk, sv) in self.entries(s, "an input series")? {
                            match sk.as_str() {
                                "series" => series = Some(self.scalar(sv, sk)?.to_string()),
                                "values" => values = Some(self.scalar(sv, sk)?.to_string()),
                                other => return Err(self.unknown(sv, "input_series", other)),
                            }
                        }
                        let _ = writeln!(
                            self.out,
                            "  {{ series = {}, values = {} }},",
                            quoted(series.as_deref().unwrap_or(""), false),
                            quoted(values.as_deref().unwrap_or("").trim(), false)
                        );
                    }
                    self.out.push_str("]\n");
                }
                "alert_rule_test" => alerts = self.items(v, k)?,
                "promql_expr_test" => exprs = self.items(v, k)?,
                other => return Err(self.unknown(v, "test", other)),
            }
        }
        self.out.push('\n');
        for a in alerts {
            self.comments_before(a.pos().line);
            self.out.push_str("[[test.alert]]\n");
            for (k, v) in self.entries(a, "an alert test")? {
                match k.as_str() {
                    "eval_time" | "alertname" => {
                        let s = self.scalar(v, k)?.to_string();
                        let _ = writeln!(self.out, "{k} = {}", toml_str(&s));
                    }
                    "exp_alerts" => {
                        self.out.push_str("exp_alerts = [\n");
                        for e in self.items(v, k)? {
                            let mut parts = Vec::new();
                            for (ek, ev) in self.entries(e, "an expected alert")? {
                                let key = match ek.as_str() {
                                    "exp_labels" => "labels",
                                    "exp_annotations" => "annotations",
                                    other => return Err(self.unknown(ev, "exp_alerts", other)),
                                };
                                parts.push(format!("{key} = {}", self.inline_map(ev, ek)?));
                            }
                            let _ = writeln!(self.out, "  {{ {} }},", parts.join(", "));
                        }
                        self.out.push_str("]\n");
                    }
                    other => return Err(self.unknown(v, "alert_rule_test", other)),
                }
            }
            self.out.push('\n');
        }
        for e in exprs {
            self.comments_before(e.pos().line);
            self.out.push_str("[[test.expr]]\n");
            for (k, v) in self.entries(e, "an expression test")? {
                match k.as_str() {
                    "eval_time" | "expr" => {
                        let s = self.scalar(v, k)?.to_string();
                        let _ = writeln!(self.out, "{k} = {}", toml_str(s.trim_end_matches('\n')));
                    }
                    "exp_samples" => {
                        self.out.push_str("exp_samples = [\n");
                        for x in self.items(v, k)? {
                            let (mut labels, mut value) = (String::from("{}"), None);
                            for (xk, xv) in self.entries(x, "an expected sample")? {
                                match xk.as_str() {
                                    "labels" => labels = self.scalar(xv, xk)?.to_string(),
                                    "value" => value = Some(self.number(xv)?),
                                    other => return Err(self.unknown(xv, "exp_samples", other)),
                                }
                            }
                            let value = value.ok_or_else(|| {
                                self.err(x.pos(), "an expected sample needs a value")
                            })?;
                            let _ = writeln!(
                                self.out,
                                "  {{ labels = {}, value = {value} }},",
                                quoted(&labels, false)
                            );
                        }
                        self.out.push_str("]\n");
                    }
                    other => return Err(self.unknown(v, "promql_expr_test", other)),
                }
            }
            self.out.push('\n');
        }
        Ok(())
    }

    /// A promtool test file: rule files renamed to the `.toml` files `convert` writes beside
    /// them.
    fn test_file(&mut self, entries: &[(String, Node)]) -> Result<(), String> {
        let mut tests = &[][..];
        for (k, v) in entries {
            match k.as_str() {
                "rule_files" => {
                    let files: Vec<String> = self
                        .items(v, k)?
                        .iter()
                        .map(|f| {
                            let f = self.scalar(f, "a rule file")?;
                            let stem = f
                                .strip_suffix(".yml")
                                .or_else(|| f.strip_suffix(".yaml"))
                                .unwrap_or(f);
                            Ok(quoted(&format!("{stem}.toml"), false))
                        })
                        .collect::<Result<_, String>>()?;
                    let _ = writeln!(
                        self.out,
                        "# (each rule file as `vigil-rules convert` writes it)\nrule_files = [{}]",
                        files.join(", ")
                    );
                }
                "evaluation_interval" => {
                    let s = self.scalar(v, k)?.to_string();
                    let _ = writeln!(self.out, "evaluation_interval = {}", toml_str(&s));
                }
                "fuzzy_compare" => {
                    let s = self.scalar(v, k)?;
                    let _ = writeln!(self.out, "fuzzy_compare = {}", s == "true");
                }
                "tests" => tests = self.items(v, k)?,
                other => return Err(self.unknown(v, "the test file's", other)),
            }
        }
        self.out.push('\n');
        tests.iter().try_for_each(|t| self.test(t))
    }
}

/// Whole-line comments of `text`, by line (0-based), and how many comments end a line with
/// something else on it (those are not kept).
fn comments(text: &str) -> (Vec<Option<String>>, usize) {
    let mut trailing = 0;
    let lines = text
        .lines()
        .map(|l| {
            let t = l.trim_start();
            if t.starts_with('#') {
                Some(t.to_string())
            } else {
                // A ` #` outside quotes starts a comment (approximately: the count is a note).
                if l.contains(" #") && !l.contains('\'') && !l.contains('"') {
                    trailing += 1;
                }
                None
            }
        })
        .collect();
    (lines, trailing)
}

/// Converts a Prometheus rule file, or a promtool test file (one with `tests`); returns the TOML
/// text, or an error naming file, line and column.
pub fn rule_file(file: &str, text: &str) -> Result<String, String> {
    let (comments, lost_trailing) = comments(text);
    let mut c = Converter {
        file,
        comments,
        taken_to: 0,
        out: format!("# Converted from {file} by vigil-rules convert.\n"),
        lost_trailing,
    };
    if c.lost_trailing > 0 {
        let _ = writeln!(
            c.out,
            "# ({} comments at the ends of lines were not kept.)",
            c.lost_trailing
        );
    }
    c.out.push('\n');
    let root = parse_yaml(file, text)?;
    let groups = match &root {
        None => None,
        Some(Node::Map(entries, _)) if entries.iter().any(|(k, _)| k == "tests") => {
            c.test_file(entries)?;
            c.comments_before(usize::MAX);
            return Ok(c.out);
        }
        Some(Node::Map(entries, _)) => {
            for (k, v) in entries {
                if k != "groups" {
                    return Err(c.err(v.pos(), format!("unknown top-level key {k:?}")));
                }
            }
            entries.iter().find(|(k, _)| k == "groups").map(|(_, v)| v)
        }
        Some(other) => return Err(c.err(other.pos(), "a rule file is a mapping with `groups`")),
    };
    match groups {
        Some(Node::Seq(gs, _)) => gs.iter().try_for_each(|g| c.group(g))?,
        Some(Node::Scalar(s, _)) if s.is_empty() => {}
        Some(other) => return Err(c.err(other.pos(), "groups must be a list")),
        None => {}
    }
    c.comments_before(usize::MAX);
    Ok(c.out)
}

#[cfg(test)]
mod tests;
