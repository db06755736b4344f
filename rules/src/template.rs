//! Alert label and annotation templates in the syntax of Prometheus rule files — a subset of Go's
//! `text/template` — so annotations pasted from Prometheus keep working:
//!
//! - variables `$value`, `$labels`, `$labels.name`, `$externalLabels.name` (and `.Value`,
//!   `.Labels.name`);
//! - string and number literals, pipelines (`{{ $value | humanize }}`), calls
//!   (`{{ humanize $value }}`), parenthesised sub-expressions, `{{-`/`-}}` trimming;
//! - functions `humanize`, `humanize1024`, `humanizeDuration`, `humanizePercentage`,
//!   `humanizeTimestamp`, `printf`, `toUpper`, `toLower`, `title`, `reReplaceAll`, `stripPort`,
//!   `stripDomain`.
//!
//! Control structures (`if`, `range`, `with`) and `query` are refused when the rule file is
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

#[derive(Debug, Clone, PartialEq)]
enum Val {
    Str(String),
    Num(f64),
    Map(BTreeMap<String, String>),
}

impl Val {
    fn print(&self) -> String {
        match self {
            Val::Str(s) => s.clone(),
            Val::Num(n) => gofmt::shortest_g(*n),
            Val::Map(m) => {
                let items: Vec<String> = m.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("map[{}]", items.join(" "))
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
            Val::Map(_) => Err("can't convert a map to a number".into()),
        }
    }
}

const FUNCS: [&str; 12] = [
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

impl Template {
    /// Parses a template.
    pub fn parse(src: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
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
                parts.push(Part::Text(text.to_string()));
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
            let body = &src[body_start..body_end];
            let trimmed = body.trim();
            if trimmed.starts_with("/*") {
                rest = close + 2;
                continue;
            }
            let mut p = Parser {
                src,
                pos: body_start,
                end: body_end,
            };
            let pipe = p.pipeline()?;
            p.skip_ws();
            if p.pos < p.end {
                return Err(p.err(format!("unexpected {:?} in action", &src[p.pos..p.end])));
            }
            if pipe.is_empty() {
                return Err(TemplateError {
                    offset: open,
                    message: "empty action".into(),
                });
            }
            parts.push(Part::Action(pipe));
            rest = close + 2;
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
            parts.push(Part::Text(text.to_string()));
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

    /// Renders the template. Errors (a number that is not one, a bad regex) are returned as text
    /// the way Prometheus puts `<error expanding template: ...>` in the annotation.
    pub fn render(&self, data: &Data<'_>) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Action(pipe) => out.push_str(&eval_pipeline(pipe, data)?.print()),
            }
        }
        Ok(out)
    }

    /// Renders, putting any error into the text as Prometheus does.
    pub fn render_or_error(&self, data: &Data<'_>) -> String {
        self.render(data)
            .unwrap_or_else(|e| format!("<error expanding template: {e}>"))
    }
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
            out.push(self.ident().to_string());
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
                match name.as_str() {
                    "value" | "labels" | "externalLabels" | "" => Ok(Term::Var(name, fields)),
                    other => Err(TemplateError {
                        offset: start,
                        message: format!("undefined variable \"${other}\""),
                    }),
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
                    "if" | "else" | "end" | "range" | "with" | "define" | "template" | "block" | "break" | "continue" => {
                        Err(TemplateError {
                            offset: start,
                            message: format!(
                                "unsupported action {name:?}: Vigil templates support variables, pipelines and the functions {}",
                                FUNCS.join(", ")
                            ),
                        })
                    }
                    f if FUNCS.contains(&f) => {
                        if !first {
                            // A function name as an argument is a call with no arguments in Go;
                            // none of ours take none.
                            return Err(TemplateError { offset: start, message: format!("{f} needs arguments; use parentheses") });
                        }
                        Ok(Term::Func(name))
                    }
                    "query" | "first" | "label" | "value" | "sortByLabel" | "strvalue" | "args" | "tmpl" | "safeHtml" | "externalURL" | "pathPrefix" => {
                        Err(TemplateError { offset: start, message: format!("function {name:?} is not supported in Vigil templates") })
                    }
                    _ => Err(TemplateError { offset: start, message: format!("function {name:?} not defined") }),
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

fn eval_pipeline(p: &Pipeline, data: &Data<'_>) -> Result<Val, String> {
    let mut piped: Option<Val> = None;
    for cmd in p {
        piped = Some(eval_command(cmd, data, piped)?);
    }
    piped.ok_or_else(|| "empty pipeline".to_string())
}

fn eval_term(t: &Term, data: &Data<'_>) -> Result<Val, String> {
    match t {
        Term::Str(s) => Ok(Val::Str(s.clone())),
        Term::Num(n) => Ok(Val::Num(*n)),
        Term::Sub(p) => eval_pipeline(p, data),
        Term::Func(f) => Err(format!("{f} used as a value")),
        Term::Var(name, fields) => {
            let base = match name.as_str() {
                "value" => Val::Num(data.value),
                "labels" => Val::Map(
                    data.labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                "externalLabels" => Val::Map(
                    data.external_labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                _ => Val::Map(BTreeMap::from([(
                    "Value".to_string(),
                    gofmt::shortest_g(data.value),
                )])),
            };
            match (fields.as_slice(), base) {
                ([], v) => Ok(v),
                ([f], Val::Map(m)) => Ok(Val::Str(m.get(f).cloned().unwrap_or_default())),
                _ => Err(format!(
                    "can't evaluate field {} of ${name}",
                    fields.join(".")
                )),
            }
        }
    }
}

fn eval_command(cmd: &Command, data: &Data<'_>, piped: Option<Val>) -> Result<Val, String> {
    let Some(Term::Func(f)) = cmd.terms.first() else {
        if cmd.terms.len() != 1 || piped.is_some() {
            return Err("can't give an argument to a non-function".into());
        }
        return eval_term(&cmd.terms[0], data);
    };
    let mut args = cmd.terms[1..]
        .iter()
        .map(|t| eval_term(t, data))
        .collect::<Result<Vec<_>, _>>()?;
    args.extend(piped);
    call(f, &args)
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
                "{{ if gt $value 1.0 }}x{{ end }}",
                "unsupported action \"if\"",
            ),
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
    fn render_errors_are_reported_in_the_text() {
        let t = Template::parse("{{ humanize \"abc\" }}").unwrap();
        assert!(t
            .render_or_error(&Data::default())
            .starts_with("<error expanding template:"));
    }
}
