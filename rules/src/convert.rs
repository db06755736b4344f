//! `vigil-rules convert`: a Prometheus rule file (YAML) as Vigil's TOML. Groups keep their name
//! and interval; recording and alerting rules keep `expr`, `for`, `keep_firing_for`, `labels`
//! and `annotations` as they are (PromQL and Go templates are the same language in both). Whole
//! comment lines are kept before the group or rule they precede; a comment at the end of a
//! line is lost (it says so). What Vigil has no counterpart for (`limit`, `query_offset`, group
//! `labels`) is an error naming its line and column, never dropped silently.

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
    if !s.contains('\n') && !s.contains('\'') && !s.chars().any(char::is_control) {
        return format!("'{s}'");
    }
    if s.contains('\n')
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
                "name" | "interval" => {
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

/// Converts a Prometheus rule file; returns the TOML text, or an error naming file, line and
/// column.
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
mod tests {
    use super::*;

    const YAML: &str = r#"# Web tier rules
groups:
  # Recording first
  - name: web
    interval: 30s
    rules:
      - record: job:http_requests:rate5m
        expr: sum by (job) (rate(http_requests_total[5m]))
      # Page when errors pass 5%
      - alert: HighErrorRate
        expr: |
          sum(rate(http_requests_total{code=~"5.."}[5m]))
            / sum(rate(http_requests_total[5m])) > 0.05
        for: 10m
        keep_firing_for: 5m
        labels:
          severity: page
          "team": web
        annotations:
          summary: 'Errors at {{ $value | humanizePercentage }}'
          description: |
            {{ $labels.job }} is failing.
            Look at it.
  - name: empty
    rules: []
"#;

    #[test]
    fn a_prometheus_rule_file_converts_with_its_comments_and_loads() {
        let toml = rule_file("web.yml", YAML).unwrap();
        for want in [
            "# Web tier rules\n",
            "# Recording first\n[[group]]\nname = 'web'\ninterval = '30s'\n",
            "[[group.record]]\nrecord = 'job:http_requests:rate5m'\nexpr = 'sum by (job) (rate(http_requests_total[5m]))'\n",
            "# Page when errors pass 5%\n[[group.alert]]\nalert = 'HighErrorRate'\n",
            "for = '10m'\nkeep_firing_for = '5m'\n",
            "labels = { severity = 'page', team = 'web' }\n",
            "[group.alert.annotations]\nsummary = 'Errors at {{ $value | humanizePercentage }}'\n",
        ] {
            assert!(toml.contains(want), "{want:?} not in\n{toml}");
        }
        let f = crate::rulefile::load("web.toml", &toml, &crate::rulefile::Context::default())
            .unwrap_or_else(|e| panic!("{e:?}\n{toml}"));
        assert_eq!(f.groups.len(), 2);
        assert_eq!(f.groups[0].rules.len(), 2);
    }

    #[test]
    fn what_vigil_cannot_hold_is_an_error_with_its_position() {
        let e = rule_file(
            "r.yml",
            "groups:\n  - name: a\n    limit: 10\n    rules: []\n",
        )
        .unwrap_err();
        assert!(e.starts_with("r.yml:3:12: "), "{e}");
        let e = rule_file(
            "r.yml",
            "groups:\n  - name: a\n    rules:\n      - expr: up\n",
        )
        .unwrap_err();
        assert!(e.contains("exactly one of `alert` and `record`"), "{e}");
        let e = rule_file("r.yml", "groups: [\n").unwrap_err();
        assert!(e.starts_with("r.yml:"), "{e}");
        assert!(rule_file("r.yml", "a: &x 1\nb: *x\n").is_err());
    }

    #[test]
    fn strings_quote_as_toml_reads_them_back() {
        for s in [
            "plain",
            "it's",
            "a\nb\n",
            "tab\there",
            "x'''y\nz",
            "\u{7}bell",
            "",
        ] {
            let doc = format!("k = {}\n", toml_str(s));
            let v: toml::Table = toml::from_str(&doc).unwrap_or_else(|e| panic!("{doc}: {e}"));
            assert_eq!(v["k"].as_str(), Some(s), "{doc}");
        }
    }
}
