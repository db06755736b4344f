//! Reading TOML documents into typed values while collecting *every* problem with its position.
//!
//! Deserializing with serde stops at the first error; users fixing a rule file in CI want all of
//! them at once, each as `FILE:LINE:COL: message`. So documents are parsed into toml's spanned
//! tree and read field by field through [`Obj`], which records unknown keys, wrong types and bad
//! values instead of failing.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// One problem in a file, with the 1-based line and column it points at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// A document being read: its name and text (for positions) and the problems found so far.
pub struct Doc<'a> {
    pub file: &'a str,
    pub text: &'a str,
    pub errors: Vec<Diagnostic>,
}

impl<'a> Doc<'a> {
    pub fn new(file: &'a str, text: &'a str) -> Self {
        Doc {
            file,
            text,
            errors: Vec::new(),
        }
    }

    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, pos: usize) -> (usize, usize) {
        let mut pos = pos.min(self.text.len());
        while !self.text.is_char_boundary(pos) {
            pos -= 1;
        }
        let before = &self.text[..pos];
        let line = before.matches('\n').count() + 1;
        let col = before
            .rfind('\n')
            .map_or(before.chars().count(), |i| before[i + 1..].chars().count())
            + 1;
        (line, col)
    }

    /// Records a problem at byte offset `pos`.
    pub fn error_at(&mut self, pos: usize, message: impl Into<String>) {
        let (line, column) = self.line_col(pos);
        self.errors.push(Diagnostic {
            file: self.file.to_string(),
            line,
            column,
            message: message.into(),
        });
    }

    /// Parses the text into a spanned table, recording syntax errors.
    pub fn parse(&mut self) -> Option<Spanned<DeTable<'a>>> {
        match DeTable::parse(self.text) {
            Ok(t) => Some(t),
            Err(e) => {
                let pos = e.span().map_or(0, |s| s.start);
                let msg = e.message().trim().to_string();
                self.error_at(pos, format!("invalid TOML: {msg}"));
                None
            }
        }
    }

    /// The problems, sorted by position.
    pub fn into_errors(mut self) -> Vec<Diagnostic> {
        self.errors.sort();
        self.errors.dedup();
        self.errors
    }
}

/// A value with the byte range it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct At<T> {
    pub value: T,
    pub span: Range<usize>,
}

impl<T> At<T> {
    pub fn new(value: T, span: Range<usize>) -> Self {
        At { value, span }
    }
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// A table being read. Every key read is marked used; [`Obj::finish`] reports the rest as
/// unknown.
pub struct Obj<'t, 'i> {
    table: &'t DeTable<'i>,
    span: Range<usize>,
    /// The TOML key path, e.g. `group[0].alert[1]`, for messages.
    pub path: String,
    used: Vec<String>,
}

impl<'t, 'i> Obj<'t, 'i> {
    pub fn new(table: &'t DeTable<'i>, span: Range<usize>, path: impl Into<String>) -> Self {
        Obj {
            table,
            span,
            path: path.into(),
            used: Vec::new(),
        }
    }

    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn raw(&mut self, key: &str) -> Option<&'t Spanned<DeValue<'i>>> {
        self.used.push(key.to_string());
        self.table.get(key)
    }

    /// Reports `key`, when present, as an error with `why` at its value (a key this build
    /// knows of but does not serve: refused, never ignored).
    pub fn refuse(&mut self, doc: &mut Doc<'_>, key: &str, why: &str) {
        if let Some(v) = self.raw(key) {
            doc.error_at(v.span().start, format!("{}: {why}", self.key_path(key)));
        }
    }

    /// Whether the key is present.
    pub fn has(&self, key: &str) -> bool {
        self.table.get(key).is_some()
    }

    /// Whether the key is present and holds a string (for keys that take a word or a number).
    pub fn is_str(&self, key: &str) -> bool {
        matches!(
            self.table.get(key).map(|v| v.get_ref()),
            Some(DeValue::String(_))
        )
    }

    fn wrong(&self, doc: &mut Doc<'_>, key: &str, v: &Spanned<DeValue<'_>>, want: &str) {
        doc.error_at(
            v.span().start,
            format!(
                "{}: expected {want}, found {}",
                self.key_path(key),
                type_name(v.get_ref())
            ),
        );
    }

    /// A string field.
    pub fn str(&mut self, doc: &mut Doc<'_>, key: &str) -> Option<At<String>> {
        let v = self.raw(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some(At::new(s.to_string(), v.span())),
            _ => {
                self.wrong(doc, key, v, "a string");
                None
            }
        }
    }

    /// A required string field.
    pub fn req_str(&mut self, doc: &mut Doc<'_>, key: &str) -> Option<At<String>> {
        if !self.has(key) {
            doc.error_at(
                self.span.start,
                format!("{}: missing required key", self.key_path(key)),
            );
            self.used.push(key.to_string());
            return None;
        }
        self.str(doc, key)
    }

    /// A float field (integers accepted).
    pub fn float(&mut self, doc: &mut Doc<'_>, key: &str) -> Option<At<f64>> {
        let v = self.raw(key)?;
        let f = match v.get_ref() {
            DeValue::Float(f) => parse_toml_float(f.as_str()),
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|x| x as f64),
            _ => None,
        };
        if f.is_none() {
            self.wrong(doc, key, v, "a number");
        }
        f.map(|f| At::new(f, v.span()))
    }

    /// An integer field.
    pub fn int(&mut self, doc: &mut Doc<'_>, key: &str) -> Option<At<i64>> {
        let v = self.raw(key)?;
        match v.get_ref() {
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(x) => Some(At::new(x, v.span())),
                Err(_) => {
                    doc.error_at(
                        v.span().start,
                        format!("{}: integer out of range", self.key_path(key)),
                    );
                    None
                }
            },
            _ => {
                self.wrong(doc, key, v, "an integer");
                None
            }
        }
    }

    /// A boolean field.
    pub fn bool(&mut self, doc: &mut Doc<'_>, key: &str) -> Option<At<bool>> {
        let v = self.raw(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(At::new(*b, v.span())),
            _ => {
                self.wrong(doc, key, v, "true or false");
                None
            }
        }
    }

    /// A Prometheus duration string, in milliseconds.
    pub fn duration(&mut self, doc: &mut Doc<'_>, key: &str) -> Option<At<i64>> {
        let s = self.str(doc, key)?;
        match crate::duration::parse_ms(&s.value) {
            Ok(ms) => Some(At::new(ms, s.span)),
            Err(e) => {
                doc.error_at(s.span.start, format!("{}: {e}", self.key_path(key)));
                None
            }
        }
    }

    /// A duration that must be greater than zero; `default` when absent (or refused, with the
    /// problem reported at its position).
    /// A duration that may be zero but not negative (an error names it otherwise).
    pub fn non_negative_duration(&mut self, doc: &mut Doc<'_>, key: &str) -> Option<i64> {
        let d = self.duration(doc, key)?;
        if d.value < 0 {
            doc.error_at(
                d.span.start,
                format!("{}: must not be negative", self.key_path(key)),
            );
            return None;
        }
        Some(d.value)
    }

    pub fn positive_duration(&mut self, doc: &mut Doc<'_>, key: &str, default: i64) -> i64 {
        match self.duration(doc, key) {
            Some(d) if d.value > 0 => d.value,
            Some(d) => {
                doc.error_at(
                    d.span.start,
                    format!("{}: must be greater than zero", self.key_path(key)),
                );
                default
            }
            None => default,
        }
    }

    /// An array of strings.
    pub fn str_list(&mut self, doc: &mut Doc<'_>, key: &str) -> Option<Vec<At<String>>> {
        let v = self.raw(key)?;
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong(doc, key, v, "an array of strings");
            return None;
        };
        let mut out = Vec::new();
        for (i, it) in items.iter().enumerate() {
            match it.get_ref() {
                DeValue::String(s) => out.push(At::new(s.to_string(), it.span())),
                other => doc.error_at(
                    it.span().start,
                    format!(
                        "{}[{i}]: expected a string, found {}",
                        self.key_path(key),
                        type_name(other)
                    ),
                ),
            }
        }
        Some(out)
    }

    /// A table of string values (labels, annotations).
    pub fn str_map(
        &mut self,
        doc: &mut Doc<'_>,
        key: &str,
    ) -> Option<BTreeMap<String, At<String>>> {
        let v = self.raw(key)?;
        let DeValue::Table(t) = v.get_ref() else {
            self.wrong(doc, key, v, "a table of strings");
            return None;
        };
        let mut out = BTreeMap::new();
        for (k, val) in t.iter() {
            match val.get_ref() {
                DeValue::String(s) => {
                    out.insert(k.get_ref().to_string(), At::new(s.to_string(), val.span()));
                }
                other => doc.error_at(
                    val.span().start,
                    format!(
                        "{}.{}: expected a string, found {}",
                        self.key_path(key),
                        k.get_ref(),
                        type_name(other)
                    ),
                ),
            }
        }
        Some(out)
    }

    /// A sub-table.
    pub fn table(&mut self, doc: &mut Doc<'_>, key: &str) -> Option<Obj<'t, 'i>> {
        let v = self.raw(key)?;
        match v.get_ref() {
            DeValue::Table(t) => Some(Obj::new(t, v.span(), self.key_path(key))),
            _ => {
                self.wrong(doc, key, v, "a table");
                None
            }
        }
    }

    /// An array of tables (`[[key]]` or `key = [{...}]`).
    pub fn tables(&mut self, doc: &mut Doc<'_>, key: &str) -> Vec<Obj<'t, 'i>> {
        let Some(v) = self.raw(key) else {
            return Vec::new();
        };
        let path = self.key_path(key);
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong(doc, key, v, "an array of tables");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, it) in items.iter().enumerate() {
            match it.get_ref() {
                DeValue::Table(t) => out.push(Obj::new(t, it.span(), format!("{path}[{i}]"))),
                other => doc.error_at(
                    it.span().start,
                    format!("{path}[{i}]: expected a table, found {}", type_name(other)),
                ),
            }
        }
        out
    }

    /// One table (`[key]`, path `key`) or an array of them (`[[key]]`, paths `key[i]`): for a
    /// section that grew from one entry to a list and still accepts the old form.
    pub fn table_or_tables(&mut self, doc: &mut Doc<'_>, key: &str) -> Vec<Obj<'t, 'i>> {
        let Some(v) = self.raw(key) else {
            return Vec::new();
        };
        match v.get_ref() {
            DeValue::Table(t) => vec![Obj::new(t, v.span(), self.key_path(key))],
            // `tables` reports each item that is not a table.
            DeValue::Array(_) => self.tables(doc, key),
            _ => {
                self.wrong(doc, key, v, "a table or an array of tables");
                Vec::new()
            }
        }
    }

    /// Reports every key that was never read.
    pub fn finish(self, doc: &mut Doc<'_>) {
        for (k, _) in self.table.iter() {
            let name = k.get_ref();
            if !self.used.iter().any(|u| u == name.as_ref()) {
                doc.error_at(
                    k.span().start,
                    format!("{}: unknown key", self.key_path(name)),
                );
            }
        }
    }
}

fn parse_toml_float(s: &str) -> Option<f64> {
    match s {
        "inf" | "+inf" => Some(f64::INFINITY),
        "-inf" => Some(f64::NEG_INFINITY),
        "nan" | "+nan" | "-nan" => Some(f64::NAN),
        _ => s.replace('_', "").parse().ok(),
    }
}

/// Reads a file and parses it with `parse`; every problem becomes a line of the error.
pub fn load_file<T>(
    path: &std::path::Path,
    parse: impl FnOnce(&str, &str) -> Result<T, Vec<Diagnostic>>,
) -> Result<T, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&path.display().to_string(), &text).map_err(|errs| {
        errs.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_every_problem_with_positions() {
        let text = "a = 1\nb = \"x\"\n[t]\nc = \"5q\"\nd = true\n";
        let mut doc = Doc::new("f.toml", text);
        let root = doc.parse().unwrap();
        let mut o = Obj::new(root.get_ref(), root.span(), "");
        assert!(o.str(&mut doc, "a").is_none());
        let mut t = o.table(&mut doc, "t").unwrap();
        assert!(t.duration(&mut doc, "c").is_none());
        t.finish(&mut doc);
        o.req_str(&mut doc, "missing");
        o.finish(&mut doc);
        let errs: Vec<String> = doc.into_errors().iter().map(|d| d.to_string()).collect();
        assert_eq!(
            errs,
            [
                "f.toml:1:1: missing: missing required key",
                "f.toml:1:5: a: expected a string, found an integer",
                "f.toml:2:1: b: unknown key",
                "f.toml:4:5: t.c: not a valid duration string: \"5q\" (unknown unit \"q\"; use ms, s, m, h, d, w, y)",
                "f.toml:5:1: t.d: unknown key",
            ]
        );
    }

    #[test]
    fn syntax_errors_have_positions() {
        let mut doc = Doc::new("x.toml", "a = 1\nb = [\n");
        assert!(doc.parse().is_none());
        let e = &doc.errors[0];
        assert_eq!((e.line, e.column), (2, 6), "{e}");
        assert!(e.message.starts_with("invalid TOML"), "{e}");
    }
}
