//! Templates in the syntax of Go's `text/template`, as Prometheus rule files and Alertmanager
//! notification templates use them, so what is pasted from either keeps working:
//!
//! - variables `$value`, `$labels`, `$labels.name`, `$externalLabels.name` (and `.Value`,
//!   `.Labels.name`) in alert labels and annotations; the notification's data (`.Status`,
//!   `.Alerts`, `.GroupLabels`, `.CommonLabels`, …, as Alertmanager's) in `[notify.templates]`;
//! - `{{ if }}`/`{{ else if }}`/`{{ else }}`/`{{ end }}`, `{{ range }}` (over a list or a map,
//!   optionally `$i, $e :=`, with `{{ else }}` for an empty one), `{{ with }}`, `{{ $x := … }}`,
//!   with Go's truth (false, 0, empty and nil are false) and scoping;
//! - string and number literals, pipelines (`{{ $value | humanize }}`), calls
//!   (`{{ humanize $value }}`), parenthesised sub-expressions, `{{-`/`-}}` trimming;
//! - functions: Go's `and or not len index eq ne lt le gt ge print printf println`,
//!   Prometheus's `humanize humanize1024 humanizeDuration humanizePercentage humanizeTimestamp
//!   toUpper toLower title reReplaceAll stripPort stripDomain`, Alertmanager's `join match
//!   safeHtml trimSpace stringSlice`; a label map has `.SortedPairs`, `.Names` and `.Values`, a
//!   list of alerts `.Firing` and `.Resolved`, as in Alertmanager.
//!
//! `define`/`template`/`block`, `break`/`continue` and `query` are refused when the file is
//! checked, with a message saying so, rather than rendering something wrong at 3 a.m.

use std::collections::BTreeMap;

use crate::gofmt;

/// A template that parsed; render it with [`Template::render`].
#[derive(Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
    /// The text it was parsed from.
    source: String,
}

/// Prints the parsed parts only, exactly as the derived `Debug` did before `source` was kept:
/// state databases of schema 1 keyed alert state by this output
/// (`evaluator::legacy_alert_key`), and migrating them needs it unchanged.
impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Template")
            .field("parts", &self.parts)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Action(Pipeline),
    /// `{{ $x := pipeline }}`.
    Assign(String, Pipeline),
    /// `if`/`else if` branches, then the `else`.
    If(Vec<(Pipeline, Vec<Part>)>, Vec<Part>),
    /// Declared variables (`$i, $e :=`), what to range over, the body, the `else`.
    Range(Vec<String>, Pipeline, Vec<Part>, Vec<Part>),
    /// `{{ with pipeline }}` (optionally `$x :=`), its body and `else`.
    With(Vec<String>, Pipeline, Vec<Part>, Vec<Part>),
}

type Pipeline = Vec<Command>;

#[derive(Debug, Clone, PartialEq)]
struct Command {
    terms: Vec<Term>,
}

#[derive(Debug, Clone, PartialEq)]
enum Term {
    Str(String),
    Num(f64),
    /// `$name` followed by `.field` selectors; `.Value`/`.Labels` map to `$value`/`$labels`.
    Var(String, Vec<String>),
    Func(String),
    Sub(Pipeline),
    /// `.Field.Field` on the current dot (inside `range`/`with`, or in a notification).
    Dot(Vec<String>),
    /// `true`, `false`.
    Bool(bool),
}

/// A template syntax error, with the byte offset in the template where it was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template: {message}")]
pub struct TemplateError {
    pub offset: usize,
    pub message: String,
}

/// What a template can refer to.
#[derive(Debug, Clone, Default)]
pub struct Data<'a> {
    pub labels: BTreeMap<&'a str, &'a str>,
    pub external_labels: BTreeMap<&'a str, &'a str>,
    pub value: f64,
}

/// A value a template works on: what its data is made of, and what its functions return.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Nil,
    Bool(bool),
    Str(String),
    Num(f64),
    /// A map of names to values (labels, annotations): a missing key is the empty string.
    Map(BTreeMap<String, Val>),
    /// A record (an alert, the notification): a missing field is an error.
    Obj(BTreeMap<String, Val>),
    List(Vec<Val>),
}

impl Val {
    /// A map of strings (labels, annotations).
    pub fn strings<'a>(kv: impl IntoIterator<Item = (&'a str, &'a str)>) -> Val {
        Val::Map(
            kv.into_iter()
                .map(|(k, v)| (k.to_string(), Val::Str(v.to_string())))
                .collect(),
        )
    }

    /// A record from its fields.
    pub fn obj<const N: usize>(fields: [(&str, Val); N]) -> Val {
        Val::Obj(
            fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    fn print(&self) -> String {
        match self {
            Val::Nil => "<no value>".into(),
            Val::Bool(b) => b.to_string(),
            Val::Str(s) => s.clone(),
            Val::Num(n) => gofmt::shortest_g(*n),
            Val::Map(m) | Val::Obj(m) => {
                let items: Vec<String> = m
                    .iter()
                    .map(|(k, v)| format!("{k}:{}", v.print()))
                    .collect();
                format!("map[{}]", items.join(" "))
            }
            Val::List(l) => {
                let items: Vec<String> = l.iter().map(Val::print).collect();
                format!("[{}]", items.join(" "))
            }
        }
    }

    fn num(&self) -> Result<f64, String> {
        match self {
            Val::Num(n) => Ok(*n),
            Val::Str(s) => s
                .trim()
                .parse()
                .map_err(|_| format!("can't convert {s:?} to a number")),
            other => Err(format!("can't convert {} to a number", other.kind())),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Val::Nil => "nil",
            Val::Bool(_) => "a bool",
            Val::Str(_) => "a string",
            Val::Num(_) => "a number",
            Val::Map(_) | Val::Obj(_) => "a map",
            Val::List(_) => "a list",
        }
    }

    /// Go's truth: false, 0, nil and empty strings, lists and maps are false.
    fn truth(&self) -> bool {
        match self {
            Val::Nil => false,
            Val::Bool(b) => *b,
            Val::Str(s) => !s.is_empty(),
            Val::Num(n) => *n != 0.0,
            Val::Map(m) | Val::Obj(m) => !m.is_empty(),
            Val::List(l) => !l.is_empty(),
        }
    }

    /// `.name` of this value.
    fn field(&self, name: &str) -> Result<Val, String> {
        match self {
            Val::Obj(m) => m
                .get(name)
                .cloned()
                .ok_or_else(|| format!("can't evaluate field {name}")),
            Val::Map(m) => Ok(match (m.get(name), name) {
                (Some(v), _) => v.clone(),
                (None, "SortedPairs") => Val::List(
                    m.iter()
                        .map(|(k, v)| {
                            Val::obj([("Name", Val::Str(k.clone())), ("Value", v.clone())])
                        })
                        .collect(),
                ),
                (None, "Names") => Val::List(m.keys().map(|k| Val::Str(k.clone())).collect()),
                (None, "Values") => Val::List(m.values().cloned().collect()),
                (None, _) => Val::Str(String::new()),
            }),
            Val::List(l) if name == "Firing" || name == "Resolved" => {
                let want = if name == "Firing" {
                    "firing"
                } else {
                    "resolved"
                };
                Ok(Val::List(
                    l.iter()
                        .filter(|a| a.field("Status").is_ok_and(|s| s.print() == want))
                        .cloned()
                        .collect(),
                ))
            }
            other => Err(format!("can't evaluate field {name} in {}", other.kind())),
        }
    }
}

const FUNCS: [&str; 30] = [
    "and",
    "or",
    "not",
    "len",
    "index",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "print",
    "println",
    "join",
    "match",
    "safeHtml",
    "trimSpace",
    "stringSlice",
    "humanize",
    "humanize1024",
    "humanizeDuration",
    "humanizePercentage",
    "humanizeTimestamp",
    "printf",
    "toUpper",
    "toLower",
    "title",
    "reReplaceAll",
    "stripPort",
    "stripDomain",
];

/// What a template is written for: which fields its top-level dot has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    /// Alert labels and annotations: `.Value`, `.Labels`, `.ExternalLabels` (as `$value`, …).
    Annotation,
    /// `[notify.templates]`: Alertmanager's notification data.
    Notification,
}

/// The fields of a notification's data, as Alertmanager's templates know them.
pub const NOTIFICATION_FIELDS: [&str; 7] = [
    "Receiver",
    "Status",
    "Alerts",
    "GroupLabels",
    "CommonLabels",
    "CommonAnnotations",
    "ExternalURL",
];

/// Text and actions, before control structures are put together.
#[derive(Clone)]
enum Item {
    Text(String),
    /// An action: where its `{{` is, and its body's bounds (trim markers excluded).
    Act {
        open: usize,
        start: usize,
        end: usize,
    },
}

/// How a block ended.
enum Stop {
    Eof,
    /// `{{ end }}`, where it opened.
    End(usize),
    /// `{{ else … }}`: where it opened, and the rest of its body.
    Else(usize, usize, usize),
}

/// Splits a template into text and actions.
fn lex(src: &str) -> Result<Vec<Item>, TemplateError> {
    let mut items = Vec::new();
    let mut rest = 0;
    let mut trim_next_text = false;
    while let Some(open) = src[rest..].find("{{").map(|i| rest + i) {
        let mut text = &src[rest..open];
        if trim_next_text {
            text = text.trim_start();
        }
        let mut body_start = open + 2;
        if src[body_start..].starts_with("- ") || src[body_start..].starts_with("-\t") {
            text = text.trim_end();
            body_start += 1;
        }
        if !text.is_empty() {
            items.push(Item::Text(text.to_string()));
        }
        let close = find_close(src, body_start).ok_or_else(|| TemplateError {
            offset: open,
            message: "unclosed action: missing \"}}\"".into(),
        })?;
        let mut body_end = close;
        trim_next_text = false;
        if src[..close].ends_with(" -") || src[..close].ends_with("\t-") {
            body_end -= 1;
            trim_next_text = true;
        }
        rest = close + 2;
        if src[body_start..body_end].trim().starts_with("/*") {
            continue;
        }
        items.push(Item::Act {
            open,
            start: body_start,
            end: body_end,
        });
    }
    let mut text = &src[rest..];
    if trim_next_text {
        text = text.trim_start();
    }
    if let Some(i) = text.find("}}") {
        return Err(TemplateError {
            offset: rest + i,
            message: "unexpected \"}}\" outside an action".into(),
        });
    }
    if !text.is_empty() {
        items.push(Item::Text(text.to_string()));
    }
    Ok(items)
}

/// Puts the actions together into control structures, checking variables as Go does.
struct Builder<'s> {
    src: &'s str,
    items: Vec<Item>,
    i: usize,
    flavour: Flavour,
    /// How many `range`/`with` the current action is inside (its dot is not the top one).
    depth: usize,
    /// The variables in scope, innermost last.
    vars: Vec<String>,
}

impl<'s> Builder<'s> {
    fn parser(&self, start: usize, end: usize) -> Parser<'_> {
        Parser {
            src: self.src,
            pos: start,
            end,
            vars: &self.vars,
            flavour: self.flavour,
            depth: self.depth,
        }
    }

    /// A pipeline filling `[start, end)`; `what` names the action for errors.
    fn pipe_at(
        &self,
        start: usize,
        end: usize,
        open: usize,
        what: &str,
    ) -> Result<(Vec<String>, Pipeline), TemplateError> {
        let mut p = self.parser(start, end);
        let names = p.decl();
        let pipe = p.pipeline()?;
        p.skip_ws();
        if p.pos < p.end {
            return Err(p.err(format!(
                "unexpected {:?} in {what}",
                &self.src[p.pos..p.end]
            )));
        }
        if pipe.is_empty() {
            return Err(TemplateError {
                offset: open,
                message: if what == "action" {
                    "empty action".to_string()
                } else {
                    format!("missing value for {what}")
                },
            });
        }
        Ok((names.unwrap_or_default(), pipe))
    }

    fn block(&mut self) -> Result<(Vec<Part>, Stop), TemplateError> {
        let mut parts = Vec::new();
        while let Some(item) = self.items.get(self.i).cloned() {
            self.i += 1;
            let (open, start, end) = match item {
                Item::Text(t) => {
                    parts.push(Part::Text(t));
                    continue;
                }
                Item::Act { open, start, end } => (open, start, end),
            };
            let mut p = self.parser(start, end);
            p.skip_ws();
            let at = p.pos;
            let word = p.keyword();
            let after = p.pos;
            match word.as_str() {
                "end" => {
                    p.skip_ws();
                    if p.pos < p.end {
                        return Err(p.err("unexpected text after end".into()));
                    }
                    return Ok((parts, Stop::End(open)));
                }
                "else" => return Ok((parts, Stop::Else(open, after, end))),
                "if" => parts.push(self.if_chain(after, end, open)?),
                "range" | "with" => parts.push(self.scoped(&word, after, end, open)?),
                "define" | "template" | "block" | "break" | "continue" => {
                    return Err(TemplateError {
                        offset: at,
                        message: format!(
                            "unsupported action {word:?}: Vigil templates support if, range, with, variables, pipelines and the functions {}",
                            FUNCS.join(", ")
                        ),
                    })
                }
                _ => {
                    let (names, pipe) = self.pipe_at(start, end, open, "action")?;
                    match names.as_slice() {
                        [] => parts.push(Part::Action(pipe)),
                        [name] => {
                            self.vars.push(name.clone());
                            parts.push(Part::Assign(name.clone(), pipe));
                        }
                        _ => {
                            return Err(TemplateError {
                                offset: at,
                                message: "too many declarations in an action".into(),
                            })
                        }
                    }
                }
            }
        }
        Ok((parts, Stop::Eof))
    }

    /// A block whose variables end with it.
    fn scope_block(
        &mut self,
        names: &[String],
        deeper: bool,
    ) -> Result<(Vec<Part>, Stop), TemplateError> {
        let mark = self.vars.len();
        self.vars.extend(names.iter().cloned());
        self.depth += usize::from(deeper);
        let r = self.block();
        self.depth -= usize::from(deeper);
        self.vars.truncate(mark);
        r
    }

    fn unclosed(open: usize, what: &str) -> TemplateError {
        TemplateError {
            offset: open,
            message: format!("unclosed {what}: missing {{{{ end }}}}"),
        }
    }

    fn if_chain(&mut self, start: usize, end: usize, open: usize) -> Result<Part, TemplateError> {
        let (mut start, mut end, first) = (start, end, open);
        let mut branches = Vec::new();
        loop {
            let (_, cond) = self.pipe_at(start, end, first, "if")?;
            let (body, stop) = self.scope_block(&[], false)?;
            branches.push((cond, body));
            match stop {
                Stop::End(_) => return Ok(Part::If(branches, Vec::new())),
                Stop::Eof => return Err(Self::unclosed(first, "if")),
                Stop::Else(o, s, e) => {
                    let mut p = self.parser(s, e);
                    p.skip_ws();
                    if p.pos >= p.end {
                        let els = self.else_block(o, "if")?;
                        return Ok(Part::If(branches, els));
                    }
                    let at = p.pos;
                    if p.keyword() != "if" {
                        return Err(TemplateError {
                            offset: at,
                            message: "expected \"if\" or nothing after else".into(),
                        });
                    }
                    (start, end) = (p.pos, e);
                }
            }
        }
    }

    /// The `else` of an `if`, `range` or `with`, up to its `end`.
    fn else_block(&mut self, open: usize, what: &str) -> Result<Vec<Part>, TemplateError> {
        let (els, stop) = self.scope_block(&[], false)?;
        match stop {
            Stop::End(_) => Ok(els),
            Stop::Eof => Err(Self::unclosed(open, what)),
            Stop::Else(o, _, _) => Err(TemplateError {
                offset: o,
                message: format!("a second else in one {what}"),
            }),
        }
    }

    fn scoped(
        &mut self,
        word: &str,
        start: usize,
        end: usize,
        open: usize,
    ) -> Result<Part, TemplateError> {
        let (names, pipe) = self.pipe_at(start, end, open, word)?;
        if names.len() > if word == "range" { 2 } else { 1 } {
            return Err(TemplateError {
                offset: start,
                message: format!("too many declarations in {word}"),
            });
        }
        let (body, stop) = self.scope_block(&names, true)?;
        let els = match stop {
            Stop::End(_) => Vec::new(),
            Stop::Eof => return Err(Self::unclosed(open, word)),
            Stop::Else(o, s, e) => {
                if !self.src[s..e].trim().is_empty() {
                    return Err(TemplateError {
                        offset: s,
                        message: format!(
                            "unexpected {:?} after else in {word}",
                            self.src[s..e].trim()
                        ),
                    });
                }
                self.else_block(o, word)?
            }
        };
        Ok(if word == "range" {
            Part::Range(names, pipe, body, els)
        } else {
            Part::With(names, pipe, body, els)
        })
    }
}

impl Template {
    /// Parses an alert label or annotation template.
    pub fn parse(src: &str) -> Result<Template, TemplateError> {
        Template::parse_as(src, Flavour::Annotation)
    }

    /// Parses a notification template (`[notify.templates]`), whose data is Alertmanager's.
    pub fn parse_notification(src: &str) -> Result<Template, TemplateError> {
        Template::parse_as(src, Flavour::Notification)
    }

    fn parse_as(src: &str, flavour: Flavour) -> Result<Template, TemplateError> {
        let vars = match flavour {
            Flavour::Annotation => vec![
                String::new(),
                "value".into(),
                "labels".into(),
                "externalLabels".into(),
            ],
            Flavour::Notification => vec![String::new()],
        };
        let mut b = Builder {
            src,
            items: lex(src)?,
            i: 0,
            flavour,
            depth: 0,
            vars,
        };
        let (parts, stop) = b.block()?;
        match stop {
            Stop::Eof => {}
            Stop::End(o) => {
                return Err(TemplateError {
                    offset: o,
                    message: "unexpected {{ end }}".into(),
                })
            }
            Stop::Else(o, _, _) => {
                return Err(TemplateError {
                    offset: o,
                    message: "unexpected {{ else }}".into(),
                })
            }
        }
        Ok(Template {
            parts,
            source: src.to_string(),
        })
    }

    /// The text it was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the template is plain text.
    pub fn is_static(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// Renders an alert label or annotation template. Errors (a number that is not one, a bad
    /// regex) are returned as text the way Prometheus puts `<error expanding template: ...>` in
    /// the annotation.
    pub fn render(&self, data: &Data<'_>) -> Result<String, String> {
        let labels = Val::strings(data.labels.iter().map(|(k, v)| (*k, *v)));
        let external = Val::strings(data.external_labels.iter().map(|(k, v)| (*k, *v)));
        let root = Val::obj([
            ("Value", Val::Num(data.value)),
            ("Labels", labels.clone()),
            ("ExternalLabels", external.clone()),
        ]);
        let mut vars = vec![
            (String::new(), root.clone()),
            ("value".to_string(), Val::Num(data.value)),
            ("labels".to_string(), labels),
            ("externalLabels".to_string(), external),
        ];
        let mut out = String::new();
        exec(&self.parts, &root, &mut vars, &mut out)?;
        Ok(out)
    }

    /// Renders a notification template over `root` (Alertmanager's data: see
    /// [`NOTIFICATION_FIELDS`]).
    pub fn render_val(&self, root: &Val) -> Result<String, String> {
        let mut vars = vec![(String::new(), root.clone())];
        let mut out = String::new();
        exec(&self.parts, root, &mut vars, &mut out)?;
        Ok(out)
    }

    /// Renders, putting any error into the text as Prometheus does.
    pub fn render_or_error(&self, data: &Data<'_>) -> String {
        self.render(data)
            .unwrap_or_else(|e| format!("<error expanding template: {e}>"))
    }
}

/// The most output one rendering may produce: a notification is cut far below it, and a
/// `range` in a `range` over a large group cannot take the process's memory.
const MAX_OUTPUT: usize = 4 << 20;

fn exec(
    parts: &[Part],
    dot: &Val,
    vars: &mut Vec<(String, Val)>,
    out: &mut String,
) -> Result<(), String> {
    for p in parts {
        if out.len() > MAX_OUTPUT {
            return Err(format!("output longer than {MAX_OUTPUT} bytes"));
        }
        match p {
            Part::Text(t) => out.push_str(t),
            Part::Action(pipe) => out.push_str(&eval_pipeline(pipe, dot, vars)?.print()),
            Part::Assign(name, pipe) => {
                let v = eval_pipeline(pipe, dot, vars)?;
                vars.push((name.clone(), v));
            }
            Part::If(branches, els) => {
                let mark = vars.len();
                let mut taken = false;
                for (cond, body) in branches {
                    if eval_pipeline(cond, dot, vars)?.truth() {
                        exec(body, dot, vars, out)?;
                        taken = true;
                        break;
                    }
                }
                if !taken {
                    exec(els, dot, vars, out)?;
                }
                vars.truncate(mark);
            }
            Part::With(names, pipe, body, els) => {
                let v = eval_pipeline(pipe, dot, vars)?;
                let mark = vars.len();
                if v.truth() {
                    vars.extend(names.iter().map(|n| (n.clone(), v.clone())));
                    exec(body, &v, vars, out)?;
                } else {
                    exec(els, dot, vars, out)?;
                }
                vars.truncate(mark);
            }
            Part::Range(names, pipe, body, els) => {
                let v = eval_pipeline(pipe, dot, vars)?;
                let items: Vec<(Val, Val)> = match v {
                    Val::List(l) => l
                        .into_iter()
                        .enumerate()
                        .map(|(i, e)| (Val::Num(i as f64), e))
                        .collect(),
                    Val::Map(m) | Val::Obj(m) => {
                        m.into_iter().map(|(k, e)| (Val::Str(k), e)).collect()
                    }
                    Val::Nil => Vec::new(),
                    other => return Err(format!("range can't iterate over {}", other.kind())),
                };
                let mark = vars.len();
                if items.is_empty() {
                    exec(els, dot, vars, out)?;
                }
                for (k, e) in items {
                    match names.as_slice() {
                        [one] => vars.push((one.clone(), e.clone())),
                        [key, elem] => {
                            vars.push((key.clone(), k));
                            vars.push((elem.clone(), e.clone()));
                        }
                        _ => {}
                    }
                    exec(body, &e, vars, out)?;
                    vars.truncate(mark);
                }
            }
        }
    }
    Ok(())
}

/// Finds the `}}` closing an action that starts at `from`, skipping quoted strings.
fn find_close(src: &str, from: usize) -> Option<usize> {
    let b = src.as_bytes();
    let mut i = from;
    while i + 1 < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'`' => {
                i += 1;
                while i < b.len() && b[i] != b'`' {
                    i += 1;
                }
            }
            b'}' if b[i + 1] == b'}' => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

struct Parser<'s> {
    src: &'s str,
    pos: usize,
    end: usize,
    /// The variables in scope (`$` is the empty name).
    vars: &'s [String],
    flavour: Flavour,
    /// Inside a `range` or `with`: the dot is not the top one.
    depth: usize,
}

impl Parser<'_> {
    fn err(&self, message: String) -> TemplateError {
        TemplateError {
            offset: self.pos,
            message,
        }
    }

    fn skip_ws(&mut self) {
        while self.pos < self.end && self.src.as_bytes()[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        (self.pos < self.end).then(|| self.src.as_bytes()[self.pos])
    }

    /// A keyword at the start of an action (`if`, `end`, …): the word, if it is one followed by
    /// a space or the end; else nothing is consumed.
    fn keyword(&mut self) -> String {
        let save = self.pos;
        let w = self.ident().to_string();
        let ends = self
            .peek()
            .is_none_or(|c| c.is_ascii_whitespace() || c == b'-');
        let keywords = [
            "if", "else", "end", "range", "with", "define", "template", "block", "break",
            "continue",
        ];
        if keywords.contains(&w.as_str()) && ends {
            w
        } else {
            self.pos = save;
            String::new()
        }
    }

    /// `$a, $b :=` at the start of a pipeline: the names declared; else nothing is consumed.
    fn decl(&mut self) -> Option<Vec<String>> {
        let save = self.pos;
        let mut names = Vec::new();
        loop {
            self.skip_ws();
            if self.peek() != Some(b'$') {
                self.pos = save;
                return None;
            }
            self.pos += 1;
            names.push(self.ident().to_string());
            self.skip_ws();
            if self.peek() == Some(b',') {
                self.pos += 1;
                continue;
            }
            break;
        }
        if self.src[self.pos..self.end].starts_with(":=") {
            self.pos += 2;
            Some(names)
        } else {
            self.pos = save;
            None
        }
    }

    fn pipeline(&mut self) -> Result<Pipeline, TemplateError> {
        let mut cmds = Vec::new();
        loop {
            let cmd = self.command()?;
            if cmd.terms.is_empty() {
                if cmds.is_empty() {
                    return Ok(cmds);
                }
                return Err(self.err("missing command after \"|\"".into()));
            }
            cmds.push(cmd);
            self.skip_ws();
            if self.peek() == Some(b'|') {
                self.pos += 1;
                continue;
            }
            return Ok(cmds);
        }
    }

    fn command(&mut self) -> Result<Command, TemplateError> {
        let mut terms = Vec::new();
        loop {
            self.skip_ws();
            match self.peek() {
                None | Some(b'|') | Some(b')') => break,
                _ => terms.push(self.term(terms.is_empty())?),
            }
        }
        Ok(Command { terms })
    }

    fn ident(&mut self) -> &str {
        let st = self.pos;
        while self.pos < self.end {
            let c = self.src.as_bytes()[self.pos];
            if c.is_ascii_alphanumeric() || c == b'_' {
                self.pos += 1;
            } else {
                break;
            }
        }
        &self.src[st..self.pos]
    }

    fn fields(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while self.peek() == Some(b'.') {
            self.pos += 1;
            let f = self.ident();
            if !f.is_empty() {
                out.push(f.to_string());
            }
        }
        out
    }

    fn term(&mut self, first: bool) -> Result<Term, TemplateError> {
        let start = self.pos;
        let c = self.peek().unwrap_or(b' ');
        match c {
            b'"' => {
                let close = find_close_quote(self.src, self.pos, self.end)
                    .ok_or_else(|| self.err("unterminated string".into()))?;
                let raw = &self.src[self.pos + 1..close];
                self.pos = close + 1;
                Ok(Term::Str(unescape(raw).map_err(|m| TemplateError {
                    offset: start,
                    message: m,
                })?))
            }
            b'`' => {
                let close = self.src[self.pos + 1..self.end]
                    .find('`')
                    .map(|i| self.pos + 1 + i);
                let close = close.ok_or_else(|| self.err("unterminated raw string".into()))?;
                let s = self.src[self.pos + 1..close].to_string();
                self.pos = close + 1;
                Ok(Term::Str(s))
            }
            b'(' => {
                self.pos += 1;
                let p = self.pipeline()?;
                self.skip_ws();
                if self.peek() != Some(b')') {
                    return Err(self.err("missing \")\"".into()));
                }
                self.pos += 1;
                Ok(Term::Sub(p))
            }
            b'$' => {
                self.pos += 1;
                let name = self.ident().to_string();
                let fields = self.fields();
                if self.vars.contains(&name) {
                    Ok(Term::Var(name, fields))
                } else {
                    Err(TemplateError {
                        offset: start,
                        message: format!("undefined variable \"${name}\""),
                    })
                }
            }
            b'.' if self.depth > 0 => Ok(Term::Dot(self.fields())),
            b'.' if self.flavour == Flavour::Notification => {
                let fields = self.fields();
                match fields.first() {
                    Some(f) if !f.is_empty() && !NOTIFICATION_FIELDS.contains(&f.as_str()) => {
                        Err(TemplateError {
                            offset: start,
                            message: format!(
                                "can't evaluate field {f}: a notification has {}",
                                NOTIFICATION_FIELDS.join(", ")
                            ),
                        })
                    }
                    _ => Ok(Term::Dot(fields)),
                }
            }
            b'.' => {
                let fields = self.fields();
                let (head, rest) = fields
                    .split_first()
                    .map_or(("", &[][..]), |(h, r)| (h.as_str(), r));
                let var = match head {
                    "Value" => "value",
                    "Labels" => "labels",
                    "ExternalLabels" => "externalLabels",
                    "" => "",
                    other => {
                        return Err(TemplateError {
                            offset: start,
                            message: format!("can't evaluate field {other}"),
                        })
                    }
                };
                Ok(Term::Var(var.to_string(), rest.to_vec()))
            }
            b'-' | b'+' | b'0'..=b'9' => {
                while self.pos < self.end
                    && !self.src.as_bytes()[self.pos].is_ascii_whitespace()
                    && !matches!(self.src.as_bytes()[self.pos], b')' | b'|')
                {
                    self.pos += 1;
                }
                let s = &self.src[start..self.pos];
                s.parse::<f64>().map(Term::Num).map_err(|_| TemplateError {
                    offset: start,
                    message: format!("bad number syntax: {s:?}"),
                })
            }
            c if c.is_ascii_alphabetic() => {
                let name = self.ident().to_string();
                match name.as_str() {
                    "true" | "false" => Ok(Term::Bool(name == "true")),
                    "nil" => Err(TemplateError {
                        offset: start,
                        message: "nil is not a command".into(),
                    }),
                    "if" | "else" | "end" | "range" | "with" | "define" | "template" | "block"
                    | "break" | "continue" => Err(TemplateError {
                        offset: start,
                        message: format!("{name:?} starts an action; it cannot be used inside one"),
                    }),
                    f if FUNCS.contains(&f) => {
                        if !first {
                            // A function name as an argument is a call with no arguments in Go;
                            // none of ours take none.
                            return Err(TemplateError {
                                offset: start,
                                message: format!("{f} needs arguments; use parentheses"),
                            });
                        }
                        Ok(Term::Func(name))
                    }
                    "query" | "first" | "label" | "value" | "sortByLabel" | "strvalue" | "args"
                    | "tmpl" | "safeHtml" | "externalURL" | "pathPrefix" => Err(TemplateError {
                        offset: start,
                        message: format!("function {name:?} is not supported in Vigil templates"),
                    }),
                    _ => Err(TemplateError {
                        offset: start,
                        message: format!("function {name:?} not defined"),
                    }),
                }
            }
            _ => {
                let ch = self.src[self.pos..].chars().next().unwrap_or('?');
                Err(self.err(format!("unexpected {ch:?} in action")))
            }
        }
    }
}

fn find_close_quote(src: &str, open: usize, end: usize) -> Option<usize> {
    let b = src.as_bytes();
    let mut i = open + 1;
    while i < end {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            other => {
                return Err(format!(
                    "invalid escape \\{}",
                    other.map(String::from).unwrap_or_default()
                ))
            }
        }
    }
    Ok(out)
}

type Vars = Vec<(String, Val)>;

fn eval_pipeline(p: &Pipeline, dot: &Val, vars: &Vars) -> Result<Val, String> {
    let mut piped: Option<Val> = None;
    for cmd in p {
        piped = Some(eval_command(cmd, dot, vars, piped)?);
    }
    piped.ok_or_else(|| "empty pipeline".to_string())
}

/// Follows `fields` from `v`, copying only what it ends at.
fn walk(v: &Val, fields: &[String]) -> Result<Val, String> {
    let Some((first, rest)) = fields.split_first() else {
        return Ok(v.clone());
    };
    match v {
        // Records and maps are followed by reference; what a field makes (a map's
        // `.SortedPairs`, a list's `.Firing`) is a new value.
        Val::Obj(m) | Val::Map(m) if m.contains_key(first) => walk(&m[first], rest),
        _ => walk(&v.field(first)?, rest),
    }
}

fn eval_term(t: &Term, dot: &Val, vars: &Vars) -> Result<Val, String> {
    match t {
        Term::Str(s) => Ok(Val::Str(s.clone())),
        Term::Num(n) => Ok(Val::Num(*n)),
        Term::Bool(b) => Ok(Val::Bool(*b)),
        Term::Sub(p) => eval_pipeline(p, dot, vars),
        Term::Func(f) => Err(format!("{f} used as a value")),
        Term::Dot(fields) => walk(dot, fields),
        Term::Var(name, fields) => {
            let v = vars
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v)
                .ok_or_else(|| format!("undefined variable ${name}"))?;
            walk(v, fields).map_err(|e| format!("{e} of ${name}"))
        }
    }
}

fn eval_command(cmd: &Command, dot: &Val, vars: &Vars, piped: Option<Val>) -> Result<Val, String> {
    let Some(Term::Func(f)) = cmd.terms.first() else {
        if cmd.terms.len() != 1 || piped.is_some() {
            return Err("can't give an argument to a non-function".into());
        }
        return eval_term(&cmd.terms[0], dot, vars);
    };
    // `and` and `or` stop at the first argument that decides, as Go's do since 1.18: a guard
    // such as `and .Alerts.Firing (index .Alerts.Firing 0)` must not evaluate what it guards.
    if f == "and" || f == "or" {
        let mut last = Val::Nil;
        for t in &cmd.terms[1..] {
            last = eval_term(t, dot, vars)?;
            if last.truth() != (f == "and") {
                return Ok(last);
            }
        }
        return Ok(piped.unwrap_or(last));
    }
    let mut args = cmd.terms[1..]
        .iter()
        .map(|t| eval_term(t, dot, vars))
        .collect::<Result<Vec<_>, _>>()?;
    args.extend(piped);
    call(f, &args)
}

fn two<'a>(f: &str, args: &'a [Val]) -> Result<(&'a Val, &'a Val), String> {
    match args {
        [a, b] => Ok((a, b)),
        _ => Err(format!(
            "wrong number of args for {f}: want 2 got {}",
            args.len()
        )),
    }
}

/// Go's `eq` between two values: numbers, strings and bools compare by value.
fn equal(a: &Val, b: &Val) -> bool {
    match (a, b) {
        (Val::Num(x), Val::Num(y)) => x == y,
        (Val::Str(x), Val::Str(y)) => x == y,
        (Val::Bool(x), Val::Bool(y)) => x == y,
        (Val::Nil, Val::Nil) => true,
        _ => a == b,
    }
}

fn compare(f: &str, a: &Val, b: &Val) -> Result<std::cmp::Ordering, String> {
    match (a, b) {
        (Val::Num(x), Val::Num(y)) => x
            .partial_cmp(y)
            .ok_or_else(|| format!("{f}: NaN does not compare")),
        (Val::Str(x), Val::Str(y)) => Ok(x.cmp(y)),
        _ => Err(format!(
            "{f}: incompatible types for comparison ({} and {})",
            a.kind(),
            b.kind()
        )),
    }
}

/// Go's control and comparison functions, and Alertmanager's; `None` for the others.
fn call_go(f: &str, args: &[Val]) -> Option<Result<Val, String>> {
    use std::cmp::Ordering::*;
    let r = match f {
        "and" => Ok(args
            .iter()
            .find(|a| !a.truth())
            .or(args.last())
            .cloned()
            .unwrap_or(Val::Nil)),
        "or" => Ok(args
            .iter()
            .find(|a| a.truth())
            .or(args.last())
            .cloned()
            .unwrap_or(Val::Nil)),
        "not" => one(f, args).map(|a| Val::Bool(!a.truth())),
        "len" => one(f, args).and_then(|a| match a {
            Val::Str(s) => Ok(Val::Num(s.len() as f64)),
            Val::List(l) => Ok(Val::Num(l.len() as f64)),
            Val::Map(m) | Val::Obj(m) => Ok(Val::Num(m.len() as f64)),
            other => Err(format!("len of {}", other.kind())),
        }),
        "index" => match args.split_first() {
            None => Err("wrong number of args for index: want at least 1 got 0".into()),
            Some((v, keys)) => keys.iter().try_fold(v.clone(), |v, k| match (&v, k) {
                (Val::List(l), k) => {
                    let i = k.num()?;
                    l.get(i as usize)
                        .filter(|_| i >= 0.0 && i.fract() == 0.0)
                        .cloned()
                        .ok_or_else(|| format!("index out of range: {}", k.print()))
                }
                (Val::Map(m), k) => Ok(m
                    .get(&k.print())
                    .cloned()
                    .unwrap_or(Val::Str(String::new()))),
                (Val::Obj(m), k) => Ok(m.get(&k.print()).cloned().unwrap_or(Val::Nil)),
                (other, _) => Err(format!("can't index {}", other.kind())),
            }),
        },
        "eq" => match args.split_first() {
            Some((a, rest)) if !rest.is_empty() => Ok(Val::Bool(rest.iter().any(|b| equal(a, b)))),
            _ => Err("wrong number of args for eq: want at least 2".into()),
        },
        "ne" => two(f, args).map(|(a, b)| Val::Bool(!equal(a, b))),
        "lt" | "le" | "gt" | "ge" => two(f, args).and_then(|(a, b)| {
            let o = compare(f, a, b)?;
            Ok(Val::Bool(match f {
                "lt" => o == Less,
                "le" => o != Greater,
                "gt" => o == Greater,
                _ => o != Less,
            }))
        }),
        // Go's Sprint: a space between operands when neither is a string.
        "print" => {
            let mut out = String::new();
            for (i, a) in args.iter().enumerate() {
                if i > 0 && !matches!(a, Val::Str(_)) && !matches!(args[i - 1], Val::Str(_)) {
                    out.push(' ');
                }
                out.push_str(&a.print());
            }
            Ok(Val::Str(out))
        }
        "println" => Ok(Val::Str(format!(
            "{}\n",
            args.iter().map(Val::print).collect::<Vec<_>>().join(" ")
        ))),
        "join" => two(f, args).and_then(|(sep, list)| match list {
            Val::List(l) => Ok(Val::Str(
                l.iter()
                    .map(Val::print)
                    .collect::<Vec<_>>()
                    .join(&sep.print()),
            )),
            other => Err(format!("join: expected a list, got {}", other.kind())),
        }),
        "match" => two(f, args).and_then(|(re, text)| {
            let re = regex::Regex::new(&re.print()).map_err(|e| e.to_string())?;
            Ok(Val::Bool(re.is_match(&text.print())))
        }),
        "safeHtml" => one(f, args).map(|a| Val::Str(a.print())),
        "trimSpace" => one(f, args).map(|a| Val::Str(a.print().trim().to_string())),
        "stringSlice" => Ok(Val::List(
            args.iter().map(|a| Val::Str(a.print())).collect(),
        )),
        _ => return None,
    };
    Some(r)
}

fn one<'a>(f: &str, args: &'a [Val]) -> Result<&'a Val, String> {
    match args {
        [a] => Ok(a),
        _ => Err(format!(
            "wrong number of args for {f}: want 1 got {}",
            args.len()
        )),
    }
}

fn call(f: &str, args: &[Val]) -> Result<Val, String> {
    if let Some(r) = call_go(f, args) {
        return r;
    }
    Ok(Val::Str(match f {
        "humanize" => humanize(one(f, args)?.num()?),
        "humanize1024" => humanize_1024(one(f, args)?.num()?),
        "humanizeDuration" => humanize_duration(one(f, args)?.num()?),
        "humanizePercentage" => format!("{}%", gofmt::g(one(f, args)?.num()? * 100.0, 4)),
        "humanizeTimestamp" => humanize_timestamp(one(f, args)?.num()?),
        "toUpper" => one(f, args)?.print().to_uppercase(),
        "toLower" => one(f, args)?.print().to_lowercase(),
        "title" => {
            let s = one(f, args)?.print();
            let mut out = String::with_capacity(s.len());
            let mut start = true;
            for c in s.chars() {
                if start && c.is_alphabetic() {
                    out.extend(c.to_uppercase());
                } else {
                    out.push(c);
                }
                start = !c.is_alphanumeric();
            }
            out
        }
        "stripPort" => {
            let s = one(f, args)?.print();
            match s.rsplit_once(':') {
                Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => {
                    h.trim_start_matches('[').trim_end_matches(']').to_string()
                }
                _ => s,
            }
        }
        "stripDomain" => {
            let s = one(f, args)?.print();
            let (host, port) = match s.rsplit_once(':') {
                Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => {
                    (h.to_string(), format!(":{p}"))
                }
                _ => (s.clone(), String::new()),
            };
            if host.parse::<std::net::IpAddr>().is_ok() {
                s
            } else {
                format!("{}{port}", host.split('.').next().unwrap_or(""))
            }
        }
        "reReplaceAll" => match args {
            [re, repl, text] => {
                let re = regex::Regex::new(&re.print()).map_err(|e| e.to_string())?;
                re.replace_all(&text.print(), repl.print().as_str())
                    .into_owned()
            }
            _ => {
                return Err(format!(
                    "wrong number of args for reReplaceAll: want 3 got {}",
                    args.len()
                ))
            }
        },
        "printf" => {
            let (fmt, rest) = args
                .split_first()
                .ok_or("wrong number of args for printf: want at least 1 got 0")?;
            printf(&fmt.print(), rest)?
        }
        other => return Err(format!("function {other:?} not defined")),
    }))
}

/// Prometheus's `humanize`: SI prefixes, 4 significant digits.
pub fn humanize(v: f64) -> String {
    if v == 0.0 || v.is_nan() || v.is_infinite() {
        return gofmt::g(v, 4);
    }
    let mut v = v;
    let mut prefix = "";
    if v.abs() >= 1.0 {
        for p in ["k", "M", "G", "T", "P", "E", "Z", "Y"] {
            if v.abs() < 1000.0 {
                break;
            }
            prefix = p;
            v /= 1000.0;
        }
    } else {
        for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
            if v.abs() >= 1.0 {
                break;
            }
            prefix = p;
            v *= 1000.0;
        }
    }
    format!("{}{prefix}", gofmt::g(v, 4))
}

fn humanize_1024(v: f64) -> String {
    if v.abs() <= 1.0 || v.is_nan() || v.is_infinite() {
        return gofmt::g(v, 4);
    }
    let mut v = v;
    let mut prefix = "";
    for p in ["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"] {
        if v.abs() < 1024.0 {
            break;
        }
        prefix = p;
        v /= 1024.0;
    }
    format!("{}{prefix}", gofmt::g(v, 4))
}

fn humanize_duration(v: f64) -> String {
    if v.is_nan() || v.is_infinite() {
        return gofmt::g(v, 4);
    }
    if v == 0.0 {
        return format!("{}s", gofmt::g(v, 4));
    }
    if v.abs() >= 1.0 {
        let sign = if v < 0.0 { "-" } else { "" };
        let v = v.abs();
        let d = v as i64;
        let (secs, mins, hours, days) = (d % 60, (d / 60) % 60, (d / 3600) % 24, d / 86_400);
        return if days != 0 {
            format!("{sign}{days}d {hours}h {mins}m {secs}s")
        } else if hours != 0 {
            format!("{sign}{hours}h {mins}m {secs}s")
        } else if mins != 0 {
            format!("{sign}{mins}m {secs}s")
        } else {
            format!("{sign}{}s", gofmt::g(v, 4))
        };
    }
    let mut v = v;
    let mut prefix = "";
    for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
        if v.abs() >= 1.0 {
            break;
        }
        prefix = p;
        v *= 1000.0;
    }
    format!("{}{prefix}s", gofmt::g(v, 4))
}

fn humanize_timestamp(v: f64) -> String {
    if v.is_nan() || v.is_infinite() {
        return gofmt::g(v, 4);
    }
    // Prometheus converts through model.Time: millisecond precision.
    let ms = ((v * 1e9) as i64).div_euclid(1_000_000);
    let secs = ms.div_euclid(1000);
    let nanos = ms.rem_euclid(1000) * 1_000_000;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = crate::duration::civil_from_days(days);
    let frac = if nanos > 0 {
        format!(".{nanos:09}").trim_end_matches('0').to_string()
    } else {
        String::new()
    };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}{frac} +0000 UTC",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Go's `fmt.Sprintf` for the verbs templates use: `%s %v %d %f %e %g %q %x %%`, with width,
/// precision and the `-`, `+`, `0` flags.
fn printf(fmt: &str, args: &[Val]) -> Result<String, String> {
    let mut out = String::new();
    let mut it = fmt.chars().peekable();
    let mut argi = 0;
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let (mut minus, mut plus, mut zero) = (false, false, false);
        while let Some(&f) = it.peek() {
            match f {
                '-' => minus = true,
                '+' => plus = true,
                '0' => zero = true,
                _ => break,
            }
            it.next();
        }
        let mut width = String::new();
        while let Some(&d) = it.peek().filter(|d| d.is_ascii_digit()) {
            width.push(d);
            it.next();
        }
        let mut prec: Option<usize> = None;
        if it.peek() == Some(&'.') {
            it.next();
            let mut p = String::new();
            while let Some(&d) = it.peek().filter(|d| d.is_ascii_digit()) {
                p.push(d);
                it.next();
            }
            prec = Some(p.parse::<usize>().unwrap_or(0).min(10_000));
        }
        let Some(verb) = it.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.get(argi) else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        argi += 1;
        let mut s = match verb {
            's' | 'v' => match (arg, prec) {
                (Val::Num(n), Some(p)) if verb == 'v' => gofmt::g(*n, p),
                (a, Some(p)) if verb == 's' => a.print().chars().take(p).collect(),
                (a, _) => a.print(),
            },
            'q' => format!("{:?}", arg.print()),
            'd' => match arg {
                Val::Num(n) if n.fract() == 0.0 => format!("{}", *n as i64),
                a => format!("%!d({})", a.print()),
            },
            'x' => match arg {
                Val::Num(n) if n.fract() == 0.0 => format!("{:x}", *n as i64),
                a => a.print().bytes().map(|b| format!("{b:02x}")).collect(),
            },
            'f' | 'F' => gofmt::f(arg.num()?, prec.unwrap_or(6)),
            'e' => gofmt::e(arg.num()?, prec.unwrap_or(6)),
            'g' => match prec {
                Some(p) => gofmt::g(arg.num()?, p),
                None => gofmt::shortest_g(arg.num()?),
            },
            other => format!("%!{other}({})", arg.print()),
        };
        if plus && matches!(verb, 'd' | 'f' | 'F' | 'e' | 'g' | 'v') && !s.starts_with('-') {
            s.insert(0, '+');
        }
        // Go caps width and precision at 1e6; a template must never allocate without bound.
        let w: usize = width.parse::<usize>().unwrap_or(0).min(10_000);
        let len = s.chars().count();
        if len < w {
            let pad = w - len;
            if minus {
                s.push_str(&" ".repeat(pad));
            } else if zero && !matches!(verb, 's' | 'q') {
                let sign = if s.starts_with(['-', '+']) {
                    s.remove(0).to_string()
                } else {
                    String::new()
                };
                s = format!("{sign}{}{s}", "0".repeat(pad));
            } else {
                s = format!("{}{s}", " ".repeat(pad));
            }
        }
        out.push_str(&s);
    }
    if argi < args.len() {
        let extra: Vec<String> = args[argi..].iter().map(|a| a.print()).collect();
        out.push_str(&format!("%!(EXTRA {})", extra.join(", ")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str, value: f64) -> String {
        let t = Template::parse(src).unwrap_or_else(|e| panic!("{src}: {e}"));
        let data = Data {
            labels: BTreeMap::from([("asg", "web-asg"), ("instance", "10.0.0.1:9100")]),
            value,
            ..Default::default()
        };
        t.render(&data).unwrap_or_else(|e| panic!("{src}: {e}"))
    }

    #[test]
    fn renders_what_prometheus_rule_files_use() {
        assert_eq!(
            render("5xx ratio {{ $value }} on {{ $labels.asg }}", 0.0523),
            "5xx ratio 0.0523 on web-asg"
        );
        assert_eq!(render("{{ $value | humanize }}", 1234567.0), "1.235M");
        assert_eq!(render("{{ humanize $value }}", 0.00123), "1.23m");
        assert_eq!(render("{{ humanizePercentage $value }}", 0.0523), "5.23%");
        assert_eq!(
            render("{{ $value | humanizeDuration }}", 93784.0),
            "1d 2h 3m 4s"
        );
        assert_eq!(render("{{ humanizeDuration 0.0015 }}", 0.0), "1.5ms");
        assert_eq!(render("{{ humanize1024 $value }}", 1048576.0), "1Mi");
        assert_eq!(render("{{ printf \"%.2f\" $value }}", 1.23456), "1.23");
        assert_eq!(render("{{ printf \"%5.1f%%\" $value }}", 9.87), "  9.9%");
        assert_eq!(
            render("{{ $labels.instance | stripPort }}", 0.0),
            "10.0.0.1"
        );
        assert_eq!(render("{{ .Labels.asg | toUpper }}", 0.0), "WEB-ASG");
        assert_eq!(render("{{- \" a \" -}}  b", 0.0), " a b");
        assert_eq!(render("{{ $labels.missing }}x", 0.0), "x");
        assert_eq!(
            render("{{ humanizeTimestamp 1435065584.128 }}", 0.0),
            "2015-06-23 13:19:44.128 +0000 UTC"
        );
        assert_eq!(
            render("{{ reReplaceAll \"-asg$\" \"\" $labels.asg }}", 0.0),
            "web"
        );
        assert_eq!(render("{{ title \"hello world\" }}", 0.0), "Hello World");
        assert_eq!(render("{{ (humanize $value) }}", 1500.0), "1.5k");
    }

    #[test]
    fn refuses_what_it_cannot_render_when_parsed() {
        let cases = [
            ("{{ $value", "unclosed action"),
            (
                "{{ define \"x\" }}x{{ end }}",
                "unsupported action \"define\"",
            ),
            ("{{ if gt $value 1.0 }}x", "unclosed if"),
            (
                "{{ range $labels }}x{{ else }}y{{ else }}z{{ end }}",
                "a second else",
            ),
            ("x{{ end }}", "unexpected {{ end }}"),
            ("{{ else }}", "unexpected {{ else }}"),
            (
                "{{ if true }}{{ $y := 1 }}{{ end }}{{ $y }}",
                "undefined variable \"$y\"",
            ),
            (
                "{{ range $i, $e := $labels }}{{ end }}{{ $e }}",
                "undefined variable \"$e\"",
            ),
            ("{{ if }}x{{ end }}", "missing value for if"),
            ("{{ query \"up\" }}", "not supported"),
            ("{{ $nope }}", "undefined variable"),
            ("{{ nosuch $value }}", "not defined"),
            ("{{ $value | }}", "missing command"),
            ("a }} b", "outside an action"),
            ("{{ }}", "empty action"),
        ];
        for (src, want) in cases {
            let e = Template::parse(src).unwrap_err();
            assert!(e.message.contains(want), "{src}: {e}");
        }
    }

    #[test]
    fn if_range_with_and_variables_follow_go() {
        let level =
            "{{ if gt $value 1.0 }}high{{ else if gt $value 0.5 }}mid{{ else }}low{{ end }}";
        assert_eq!(render(level, 2.0), "high");
        assert_eq!(render(level, 0.7), "mid");
        assert_eq!(render(level, 0.1), "low");
        assert_eq!(
            render(
                "{{ range $k, $v := $labels }}{{ $k }}={{ $v }};{{ end }}",
                0.0
            ),
            "asg=web-asg;instance=10.0.0.1:9100;"
        );
        assert_eq!(
            render(
                "{{ range .Labels.SortedPairs }}{{ .Name }}:{{ .Value }} {{ end }}",
                0.0
            ),
            "asg:web-asg instance:10.0.0.1:9100 "
        );
        assert_eq!(
            render(
                "{{ range $i, $n := .Labels.Names }}{{ $i }}{{ $n }} {{ end }}",
                0.0
            ),
            "0asg 1instance "
        );
        assert_eq!(
            render("{{ range stringSlice }}x{{ else }}none{{ end }}", 0.0),
            "none"
        );
        assert_eq!(
            render(
                "{{ with $labels.asg }}asg {{ . }}{{ else }}none{{ end }}",
                0.0
            ),
            "asg web-asg"
        );
        assert_eq!(
            render("{{ with $labels.nope }}x{{ else }}none{{ end }}", 0.0),
            "none"
        );
        // Inside range the dot is the element; $ is still the top.
        assert_eq!(
            render("{{ range .Labels.Names }}{{ $.Value }}{{ end }}", 3.0),
            "33"
        );
        assert_eq!(
            render("{{ $x := humanize $value }}{{ $x }}/{{ $x }}", 1500.0),
            "1.5k/1.5k"
        );
        // Go's truth, and its functions.
        for (src, want) in [
            ("{{ if \"\" }}a{{ else }}b{{ end }}", "b"),
            ("{{ if 0 }}a{{ else }}b{{ end }}", "b"),
            ("{{ if and 1 \"x\" }}a{{ else }}b{{ end }}", "a"),
            ("{{ or \"\" \"d\" }}", "d"),
            ("{{ and 0 (index $labels.Names 9) }}", "0"),
            ("{{ or 1 (index $labels.Names 9) }}", "1"),
            ("{{ not 0 }}", "true"),
            ("{{ len \"abc\" }}", "3"),
            ("{{ len $labels }}", "2"),
            ("{{ eq 1 2 1 }}", "true"),
            ("{{ ne \"a\" \"a\" }}", "false"),
            ("{{ lt 1 2 }} {{ ge \"b\" \"a\" }}", "true true"),
            ("{{ index $labels \"asg\" }}", "web-asg"),
            ("{{ print 1 2 \"a\" 3 }}", "1 2a3"),
            ("{{ .Labels.Names | join \", \" }}", "asg, instance"),
            ("{{ if match \"^web\" $labels.asg }}web{{ end }}", "web"),
            ("{{ stringSlice \"a\" \"b\" | join \"+\" }}", "a+b"),
            ("{{ trimSpace \"  x \" }}", "x"),
            ("{{- if true -}}  yes  {{- end -}}", "yes"),
        ] {
            assert_eq!(render(src, 0.0), want, "{src}");
        }
        let t = Template::parse("{{ lt 1 \"a\" }}").unwrap();
        assert!(t
            .render(&Data::default())
            .unwrap_err()
            .contains("incompatible types"));
    }

    fn notification() -> Val {
        let alert = |instance: &str, status: &str| {
            Val::obj([
                ("Status", Val::Str(status.into())),
                (
                    "Labels",
                    Val::strings([("alertname", "Down"), ("instance", instance)]),
                ),
                ("Annotations", Val::strings([("summary", "it is down")])),
                ("StartsAt", Val::Str("2026-12-05T10:00:00Z".into())),
            ])
        };
        Val::obj([
            ("Receiver", Val::Str("pager".into())),
            ("Status", Val::Str("firing".into())),
            (
                "Alerts",
                Val::List(vec![
                    alert("i-1", "firing"),
                    alert("i-2", "resolved"),
                    alert("i-3", "firing"),
                ]),
            ),
            ("GroupLabels", Val::strings([("alertname", "Down")])),
            ("CommonLabels", Val::strings([("alertname", "Down")])),
            (
                "CommonAnnotations",
                Val::strings([("summary", "it is down")]),
            ),
            ("ExternalURL", Val::Str("http://vigil:9470".into())),
        ])
    }

    #[test]
    fn notification_templates_see_alertmanagers_data() {
        let t = Template::parse_notification(
            "[{{ .Status | toUpper }}{{ if eq .Status \"firing\" }}:{{ .Alerts.Firing | len }}{{ end }}] {{ .GroupLabels.alertname }}\n\
             {{ range .Alerts.Firing }}- {{ .Labels.instance }}: {{ .Annotations.summary }}\n{{ end }}\
             {{ with .Alerts.Resolved }}resolved: {{ range . }}{{ .Labels.instance }} {{ end }}{{ end }}",
        )
        .unwrap();
        assert_eq!(
            t.render_val(&notification()).unwrap(),
            "[FIRING:2] Down\n- i-1: it is down\n- i-3: it is down\nresolved: i-2 "
        );
        // A field the data does not have: refused when parsed at the top, when rendered inside.
        let e = Template::parse_notification("{{ .Nope }}").unwrap_err();
        assert!(e.message.contains("can't evaluate field Nope"), "{e}");
        let t =
            Template::parse_notification("{{ range .Alerts }}{{ .Lables.x }}{{ end }}").unwrap();
        assert!(t
            .render_val(&notification())
            .unwrap_err()
            .contains("can't evaluate field Lables"));
        // Annotation variables do not exist here.
        assert!(Template::parse_notification("{{ $labels }}").is_err());
    }

    #[test]
    fn render_errors_are_reported_in_the_text() {
        let t = Template::parse("{{ humanize \"abc\" }}").unwrap();
        assert!(t
            .render_or_error(&Data::default())
            .starts_with("<error expanding template:"));
    }
}
