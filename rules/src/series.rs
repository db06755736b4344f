//! The series notation of `promtool test rules` and Prometheus's PromQL tests:
//! `metric{a="b"} 1+2x3 _ stale` — a series descriptor, then values where `a+bxN` expands to
//! `a, a+b, …, a+N·b`, `_` is a missing sample, `_xN` is N of them, and `stale` a staleness marker.

use vigil_wire::histogram::FloatHistogram;
use vigil_wire::{Labels, LabelsBuilder};

#[derive(Debug, Clone, PartialEq)]
pub enum Point {
    Value(f64),
    Omitted,
    Stale,
    /// A native histogram, and whether the notation gave its counter-reset hint.
    Histogram(Box<FloatHistogram>, bool),
}

impl Point {
    pub fn value(&self) -> Option<f64> {
        match self {
            Point::Value(v) => Some(*v),
            _ => None,
        }
    }
}

/// Parses a number as the notation writes them (`1e3`, `Inf`, `-Inf`, `NaN`).
pub fn parse_number(s: &str) -> Option<f64> {
    let t = s.trim();
    let (neg, body) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let v = match body.to_ascii_lowercase().as_str() {
        "inf" => f64::INFINITY,
        "nan" => f64::NAN,
        _ => {
            if body.is_empty()
                || !body
                    .bytes()
                    .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-'))
            {
                return None;
            }
            body.parse::<f64>().ok()?
        }
    };
    Some(if neg { -v } else { v })
}

/// Decodes Go string escapes (`\\n`, `\\xNN`, `\\u1234`, octal).
pub fn unescape_go(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        i += 1;
        let c = *b.get(i).ok_or("trailing backslash")?;
        i += 1;
        match c {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'\\' => out.push(b'\\'),
            b'"' => out.push(b'"'),
            b'\'' => out.push(b'\''),
            b'x' => {
                let h = s.get(i..i + 2).ok_or("short \\x")?;
                out.push(u8::from_str_radix(h, 16).map_err(|e| e.to_string())?);
                i += 2;
            }
            b'u' | b'U' => {
                let n = if c == b'u' { 4 } else { 8 };
                let h = s.get(i..i + n).ok_or("short \\u")?;
                let cp = u32::from_str_radix(h, 16).map_err(|e| e.to_string())?;
                let ch = char::from_u32(cp).ok_or("bad code point")?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                i += n;
            }
            b'0'..=b'7' => {
                let h = s.get(i - 1..i + 2).ok_or("short octal")?;
                out.push(u8::from_str_radix(h, 8).map_err(|e| e.to_string())?);
                i += 2;
            }
            o => return Err(format!("unknown escape \\{}", o as char)),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn read_quoted(s: &str) -> Result<(String, &str), String> {
    let q = s.chars().next().ok_or("expected a quoted string")?;
    if !matches!(q, '"' | '\'' | '`') {
        return Err(format!("expected a quote at {s:?}"));
    }
    let b = s.as_bytes();
    let mut i = 1;
    while i < b.len() {
        if b[i] == b'\\' && q != '`' {
            i += 2;
            continue;
        }
        if b[i] == q as u8 {
            let inner = &s[1..i];
            let v = if q == '`' {
                inner.to_string()
            } else {
                unescape_go(inner)?
            };
            return Ok((v, &s[i + 1..]));
        }
        i += 1;
    }
    Err(format!("unterminated string in {s:?}"))
}

/// Parses `name{labels}` at the start of `line`; returns the labels and the rest of the line.
pub fn parse_series_desc(line: &str) -> Result<(Labels, &str), String> {
    let mut b = LabelsBuilder::new();
    let s = line.trim_start();
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(s.len());
    if end > 0 {
        b.set("__name__", &s[..end]);
    }
    let mut rest = &s[end..];
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let name;
            if rest.starts_with(['"', '\'', '`']) {
                let (n, r) = read_quoted(rest)?;
                let r = r.trim_start();
                if let Some(r2) = r.strip_prefix('=') {
                    name = n;
                    rest = r2;
                } else {
                    // A quoted metric name.
                    b.set("__name__", n);
                    rest = r.strip_prefix(',').unwrap_or(r);
                    continue;
                }
            } else {
                let e = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .ok_or_else(|| format!("bad labels in {line:?}"))?;
                name = rest[..e].to_string();
                rest = rest[e..]
                    .trim_start()
                    .strip_prefix('=')
                    .ok_or_else(|| format!("expected = in {line:?}"))?;
            }
            let (v, r) = read_quoted(rest.trim_start())?;
            b.set(name, v);
            rest = r.trim_start();
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    Ok((b.build(), rest))
}

/// Expands a values string: `1 2+3x4 _ _x2 stale -1-1x3 {{...}}`.
/// The largest repeat count accepted in one token (`1x1000000`): a typo must not exhaust memory.
pub const MAX_REPEAT: usize = 1_000_000;

pub fn parse_values(s: &str) -> Result<Vec<Point>, String> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        if rest.starts_with("{{") {
            // A native histogram, possibly in `a+bxN` form with histogram operands.
            let mut depth = 0usize;
            let mut end = rest.len();
            let bytes = rest.as_bytes();
            let mut i = 0;
            while i < bytes.len() {
                if rest[i..].starts_with("{{") {
                    depth += 1;
                    i += 2;
                    continue;
                }
                if rest[i..].starts_with("}}") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        // Optional +{{..}}xN / -{{..}}xN tail.
                        if i < bytes.len()
                            && (bytes[i] == b'+' || bytes[i] == b'-')
                            && rest[i + 1..].starts_with("{{")
                        {
                            continue;
                        }
                        end = rest[i..]
                            .find(char::is_whitespace)
                            .map_or(rest.len(), |k| i + k);
                        break;
                    }
                    continue;
                }
                i += 1;
            }
            expand_histograms(&rest[..end], &mut out)?;
            rest = rest[end..].trim_start();
            continue;
        }
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let tok = &rest[..end];
        rest = rest[end..].trim_start();
        expand_token(tok, &mut out)?;
    }
    Ok(out)
}

/// `{{a}}`, `{{a}}xN` (N+1 copies), `{{a}}+{{b}}xN` (a, a+b, …, a+N·b) or `{{a}}-{{b}}xN`.
/// Every element carries the hint-given flag of the last histogram written (the increment's).
fn expand_histograms(tok: &str, out: &mut Vec<Point>) -> Result<(), String> {
    let close = tok
        .find("}}")
        .ok_or_else(|| format!("unclosed histogram {tok:?}"))?
        + 2;
    let (base, base_hinted) = FloatHistogram::parse_notation(&tok[..close])?;
    let rest = &tok[close..];
    if rest.is_empty() {
        out.push(Point::Histogram(Box::new(base), base_hinted));
        return Ok(());
    }
    let times = |n: &str| -> Result<usize, String> {
        let n: usize = n.parse().map_err(|_| format!("bad repeat in {tok:?}"))?;
        if n > MAX_REPEAT {
            return Err(format!("repeat count in {tok:?} is above {MAX_REPEAT}"));
        }
        Ok(n)
    };
    if let Some(n) = rest.strip_prefix('x') {
        let n = times(n)?;
        for _ in 0..=n {
            out.push(Point::Histogram(Box::new(base.clone()), base_hinted));
        }
        return Ok(());
    }
    let negate = rest.starts_with('-');
    let inc_text = rest
        .strip_prefix(['+', '-'])
        .ok_or_else(|| format!("bad histogram series {tok:?}"))?;
    let close = inc_text
        .find("}}")
        .ok_or_else(|| format!("unclosed histogram {tok:?}"))?
        + 2;
    let (inc, hinted) = FloatHistogram::parse_notation(&inc_text[..close])?;
    let n = times(
        inc_text[close..]
            .strip_prefix('x')
            .ok_or_else(|| format!("expected xN after {tok:?}"))?,
    )?;
    let mut cur = base;
    out.push(Point::Histogram(Box::new(cur.clone()), hinted));
    for _ in 0..n {
        if cur.schema > inc.schema {
            return Err(format!(
                "error combining histograms: cannot merge from schema {} to {}",
                inc.schema, cur.schema
            ));
        }
        cur = cur.combine(&inc, negate)?.h;
        out.push(Point::Histogram(Box::new(cur.clone()), hinted));
    }
    Ok(())
}

fn expand_token(tok: &str, out: &mut Vec<Point>) -> Result<(), String> {
    if tok == "_" {
        out.push(Point::Omitted);
        return Ok(());
    }
    if tok == "stale" {
        out.push(Point::Stale);
        return Ok(());
    }
    if let Some(n) = tok.strip_prefix("_x") {
        let n: usize = n.parse().map_err(|_| format!("bad token {tok:?}"))?;
        if n > MAX_REPEAT {
            return Err(format!("repeat count in {tok:?} is above {MAX_REPEAT}"));
        }
        out.extend(std::iter::repeat_n(Point::Omitted, n));
        return Ok(());
    }
    if let Some(v) = parse_number(tok) {
        out.push(Point::Value(v));
        return Ok(());
    }
    let (head, times) = tok
        .rsplit_once('x')
        .ok_or_else(|| format!("bad value {tok:?}"))?;
    let n: usize = times
        .parse()
        .map_err(|_| format!("bad repeat in {tok:?}"))?;
    if n > MAX_REPEAT {
        return Err(format!("repeat count in {tok:?} is above {MAX_REPEAT}"));
    }
    // head is `a`, `a+b` or `a-b`.
    let hb = head.as_bytes();
    let mut split = None;
    for i in 1..hb.len() {
        if (hb[i] == b'+' || hb[i] == b'-') && !matches!(hb[i - 1], b'e' | b'E') {
            split = Some(i);
            break;
        }
    }
    let (a, b) = match split {
        Some(i) => {
            let a = parse_number(&head[..i]).ok_or_else(|| format!("bad value {tok:?}"))?;
            let b = parse_number(&head[i + 1..]).ok_or_else(|| format!("bad value {tok:?}"))?;
            (a, if hb[i] == b'-' { -b } else { b })
        }
        None => (
            parse_number(head).ok_or_else(|| format!("bad value {tok:?}"))?,
            0.0,
        ),
    };
    let mut v = a;
    for k in 0..=n {
        if k > 0 {
            v += b;
        }
        out.push(Point::Value(v));
    }
    Ok(())
}
