//! Finds where a query that `promql-parser` refused goes wrong. The parser reports syntax errors
//! without a position, so this scans the query with a small tokenizer and a two-state machine
//! (expecting an operand / expecting an operator), plus bracket matching.

#[derive(Debug, Clone, PartialEq)]
enum Tok<'a> {
    Ident(&'a str),
    Number,
    Str,
    Op(&'a str),
    Open(u8),
    Close(u8),
    Comma,
    Colon,
    At,
    Bad(char),
}

fn tokenize(s: &str) -> Result<Vec<(usize, Tok<'_>)>, (usize, String)> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' | b'\'' | b'`' => {
                i += 1;
                loop {
                    if i >= b.len() {
                        return Err((start, "unterminated quoted string".into()));
                    }
                    if b[i] == b'\\' && c != b'`' {
                        i += 2;
                        continue;
                    }
                    if b[i] == c {
                        i += 1;
                        break;
                    }
                    i += 1;
                }
                out.push((start, Tok::Str));
                continue;
            }
            b'0'..=b'9' | b'.' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_')
                {
                    // Exponent sign: 1e+3.
                    if (b[i] == b'e' || b[i] == b'E')
                        && i + 1 < b.len()
                        && (b[i + 1] == b'+' || b[i + 1] == b'-')
                    {
                        i += 1;
                    }
                    i += 1;
                }
                out.push((start, Tok::Number));
                continue;
            }
            b':' if b.get(i + 1).is_some_and(|d| d.is_ascii_digit()) => {
                // The subquery separator before a step: `[5m:30s]`.
                i += 1;
                out.push((start, Tok::Colon));
                continue;
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':')
                {
                    i += 1;
                }
                // A colon directly after an identifier inside [..] is the subquery separator;
                // identifiers may contain colons elsewhere. Split a trailing colon off.
                let mut end = i;
                while end > start + 1 && b[end - 1] == b':' {
                    end -= 1;
                }
                out.push((start, Tok::Ident(&s[start..end])));
                for k in end..i {
                    out.push((k, Tok::Colon));
                }
                continue;
            }
            _ => {}
        }
        let two = s.get(i..i + 2).unwrap_or("");
        let tok = match two {
            "==" | "!=" | "<=" | ">=" | "=~" | "!~" => {
                i += 2;
                Tok::Op(two)
            }
            _ => {
                i += 1;
                match c {
                    b'+' | b'-' | b'*' | b'/' | b'%' | b'^' | b'<' | b'>' | b'=' => {
                        Tok::Op(&s[start..i])
                    }
                    b'(' | b'{' | b'[' => Tok::Open(c),
                    b')' | b'}' | b']' => Tok::Close(c),
                    b',' => Tok::Comma,
                    b'@' => Tok::At,
                    _ => {
                        let ch = s[start..].chars().next().unwrap_or('?');
                        i = start + ch.len_utf8();
                        Tok::Bad(ch)
                    }
                }
            }
        };
        out.push((start, tok));
    }
    Ok(out)
}

fn describe(t: &Tok<'_>) -> String {
    match t {
        Tok::Ident(s) => format!("identifier {s:?}"),
        Tok::Number => "number".into(),
        Tok::Str => "string".into(),
        Tok::Op(o) => format!("operator {o:?}"),
        Tok::Open(c) | Tok::Close(c) => format!("{:?}", *c as char),
        Tok::Comma => "\",\"".into(),
        Tok::Colon => "\":\"".into(),
        Tok::At => "\"@\"".into(),
        Tok::Bad(c) => format!("character {c:?}"),
    }
}

const BINARY_WORDS: [&str; 4] = ["and", "or", "unless", "atan2"];
const MODIFIER_WORDS: [&str; 4] = ["on", "ignoring", "group_left", "group_right"];

fn closer_name(c: u8) -> &'static str {
    match c {
        b'(' => "parenthesis",
        b'{' => "brace",
        _ => "bracket",
    }
}

/// Returns the byte offset of the first problem and a description, or `(0, None)` when the scan
/// finds nothing (the error is semantic; see the message).
pub(crate) fn find_error(s: &str) -> (usize, Option<String>) {
    let toks = match tokenize(s) {
        Ok(t) => t,
        Err((p, m)) => return (p, Some(m)),
    };
    // Bracket matching first: it explains most errors best.
    let mut stack: Vec<(usize, u8)> = Vec::new();
    for (p, t) in &toks {
        match t {
            Tok::Open(c) => stack.push((*p, *c)),
            Tok::Close(c) => {
                let want = match c {
                    b')' => b'(',
                    b'}' => b'{',
                    _ => b'[',
                };
                match stack.pop() {
                    Some((_, o)) if o == want => {}
                    Some((op, o)) => {
                        return (
                            *p,
                            Some(format!(
                                "unexpected {:?}, the {} opened at offset {op} is not closed",
                                *c as char,
                                closer_name(o)
                            )),
                        )
                    }
                    None => return (*p, Some(format!("unexpected right {}", closer_name(want)))),
                }
            }
            Tok::Bad(c) => return (*p, Some(format!("unexpected character {c:?}"))),
            _ => {}
        }
    }
    if let Some((p, c)) = stack.last() {
        return (*p, Some(format!("unclosed left {}", closer_name(*c))));
    }
    // Operand / operator alternation.
    let mut expect_operand = true;
    let mut i = 0;
    let mut prev_ident = false;
    while i < toks.len() {
        let (p, t) = &toks[i];
        match t {
            Tok::Open(b'{') => {
                // Label matchers: skip to the closing brace; an operand either way.
                let mut depth = 0;
                while i < toks.len() {
                    match toks[i].1 {
                        Tok::Open(b'{') => depth += 1,
                        Tok::Close(b'}') => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                expect_operand = false;
                prev_ident = false;
            }
            Tok::Open(b'[') => {
                if expect_operand {
                    return (*p, Some("unexpected \"[\"".into()));
                }
                while i < toks.len() && toks[i].1 != Tok::Close(b']') {
                    i += 1;
                }
                expect_operand = false;
                prev_ident = false;
            }
            Tok::Open(_) => {
                if !expect_operand && !prev_ident {
                    return (*p, Some("unexpected \"(\"".into()));
                }
                expect_operand = true;
                prev_ident = false;
                // A function call may have no arguments.
                if matches!(toks.get(i + 1), Some((_, Tok::Close(b')')))) {
                    i += 1;
                    expect_operand = false;
                }
            }
            Tok::Close(_) => {
                if expect_operand {
                    return (*p, Some(format!("unexpected {}", describe(t))));
                }
                prev_ident = false;
            }
            Tok::Ident(w) if ["by", "without"].contains(w) || MODIFIER_WORDS.contains(w) => {
                if matches!(toks.get(i + 1), Some((_, Tok::Open(b'(')))) {
                    while i < toks.len() && toks[i].1 != Tok::Close(b')') {
                        i += 1;
                    }
                }
                prev_ident = ["by", "without"].contains(w);
            }
            Tok::Ident("bool") => {}
            Tok::Ident("offset") => {
                if expect_operand {
                    return (*p, Some("unexpected \"offset\"".into()));
                }
                i += 1;
                if matches!(toks.get(i), Some((_, Tok::Op("-")))) {
                    i += 1;
                }
                if !matches!(toks.get(i), Some((_, Tok::Number))) {
                    let at = toks.get(i).map_or(s.len(), |x| x.0);
                    return (at, Some("expected a duration after \"offset\"".into()));
                }
            }
            Tok::At => {
                if expect_operand {
                    return (*p, Some("unexpected \"@\"".into()));
                }
                i += 1;
                match toks.get(i) {
                    Some((_, Tok::Number)) => {}
                    Some((_, Tok::Op("-" | "+"))) => i += 1,
                    Some((_, Tok::Ident("start" | "end"))) => i += 2, // start ( )
                    other => {
                        let at = other.map_or(s.len(), |x| x.0);
                        return (
                            at,
                            Some("expected a timestamp, start() or end() after \"@\"".into()),
                        );
                    }
                }
                if matches!(toks.get(i), Some((_, Tok::Open(b'(')))) {
                    i += 1;
                }
            }
            Tok::Ident(w) if BINARY_WORDS.contains(w) && !expect_operand => {
                expect_operand = true;
                prev_ident = false;
            }
            Tok::Op(o) => {
                if expect_operand {
                    if *o != "+" && *o != "-" {
                        return (*p, Some(format!("unexpected {}", describe(t))));
                    }
                } else {
                    expect_operand = true;
                }
                prev_ident = false;
            }
            Tok::Comma => {
                if expect_operand {
                    return (*p, Some("unexpected \",\"".into()));
                }
                expect_operand = true;
                prev_ident = false;
            }
            Tok::Ident(_) | Tok::Number | Tok::Str => {
                if !expect_operand {
                    return (*p, Some(format!("unexpected {}", describe(t))));
                }
                expect_operand = false;
                prev_ident = matches!(t, Tok::Ident(_));
            }
            Tok::Colon | Tok::Bad(_) => return (*p, Some(format!("unexpected {}", describe(t)))),
        }
        i += 1;
    }
    if expect_operand {
        return (s.len(), Some("unexpected end of input".into()));
    }
    (0, None)
}

#[cfg(test)]
mod tests {
    use super::find_error;

    #[test]
    fn locates_common_mistakes() {
        let cases = [
            ("sum(foo", 3, "unclosed left parenthesis"),
            ("foo +", 5, "unexpected end of input"),
            ("foo bar", 4, "unexpected identifier \"bar\""),
            ("rate(foo[5m]))", 13, "unexpected right parenthesis"),
            ("foo{a=\"b}", 6, "unterminated quoted string"),
            ("1 + * 2", 4, "unexpected operator \"*\""),
            ("foo offset", 10, "expected a duration"),
        ];
        for (q, pos, msg) in cases {
            let (p, d) = find_error(q);
            let d = d.unwrap_or_default();
            assert_eq!(p, pos, "{q}: {d}");
            assert!(d.contains(msg), "{q}: {d}");
        }
    }

    #[test]
    fn valid_queries_have_no_syntax_error() {
        for q in [
            "sum by (job) (rate(http_requests_total[5m]))",
            "histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m])))",
            "a / on(x) group_left(y) b",
            "foo offset -5m @ start()",
            "max_over_time(rate(x[1m])[5m:30s])",
            "time()",
            "-foo",
            "foo and bool bar",
        ] {
            assert_eq!(find_error(q), (0, None), "{q}");
        }
    }
}

/// Numbers the parser would turn into durations or timestamps (inside `[...]`, after `offset` or
/// `@`) that are too large or not finite: `promql-parser` panics on them, so they are refused
/// first, with their position.
pub(crate) fn find_bad_duration(s: &str) -> Option<(usize, String)> {
    let toks = tokenize(s).ok()?;
    let text_of = |i: usize| -> &str {
        let start = toks[i].0;
        let end = toks.get(i + 1).map_or(s.len(), |t| t.0);
        s[start..end].trim()
    };
    let mut depth = 0usize;
    for (i, (p, t)) in toks.iter().enumerate() {
        match t {
            Tok::Open(b'[') => depth += 1,
            Tok::Close(b']') => depth = depth.saturating_sub(1),
            Tok::Number => {
                let prev = |k: usize| i.checked_sub(k).map(|j| &toks[j].1);
                let after_kw = |tok: Option<&Tok<'_>>| {
                    matches!(tok, Some(Tok::Ident("offset")) | Some(Tok::At))
                };
                let sign = matches!(prev(1), Some(Tok::Op("-" | "+")));
                let in_duration = depth > 0 || after_kw(prev(1)) || (sign && after_kw(prev(2)));
                if !in_duration {
                    continue;
                }
                let raw = text_of(i);
                let raw = raw
                    .split(|c: char| c == ']' || c == ':' || c.is_whitespace())
                    .next()
                    .unwrap_or(raw);
                let bad = if raw
                    .bytes()
                    .any(|c| c.is_ascii_alphabetic() && !matches!(c, b'e' | b'E'))
                {
                    // A duration with units: no digit run may be absurdly long.
                    raw.split(|c: char| !c.is_ascii_digit())
                        .any(|d| d.len() > 15)
                } else {
                    raw.parse::<f64>()
                        .map_or(true, |v| !v.is_finite() || v.abs() >= 3.1536e11)
                };
                if bad {
                    return Some((*p, format!("duration or timestamp {raw:?} is out of range")));
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod duration_tests {
    use super::find_bad_duration;

    #[test]
    fn refuses_durations_the_parser_would_panic_on() {
        for q in [
            "x[1e30]",
            "x[5m:1e400]",
            "x offset 1e30",
            "x @ 1e300",
            "x[99999999999999999999y]",
            "x offset -1e30",
        ] {
            assert!(find_bad_duration(q).is_some(), "{q}");
        }
        for q in [
            "x[5m]",
            "x > 1e30",
            "x offset 5m",
            "x @ 1700000000",
            "rate(x[5m:30s])",
            "x[300]",
        ] {
            assert!(find_bad_duration(q).is_none(), "{q}");
        }
    }
}
