//! Secrets as logs, errors and status pages show them: not at all. A webhook URL (a Slack URL
//! is a credential; others may carry user info or a token in the query) keeps only its scheme,
//! host and port; a configuration file keeps its text and comments with every secret value
//! replaced.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// What a hidden value reads as (Alertmanager's word).
pub const SECRET: &str = "<secret>";

/// A target as logs show it: anything that is not a URL (an SNS topic's ARN) as it is; a URL as
/// its scheme, host and port, then `/…` when something followed. User info is dropped even when
/// it holds a `/` or `?` (invalid, but a hand-written config may have it).
pub fn url(target: &str) -> String {
    let Some((scheme, rest)) = target.split_once("://") else {
        return target.to_string();
    };
    // The host starts after the last '@' anywhere before a fragment: a path holding an '@'
    // then shows a wrong host, never a password.
    let before_fragment = rest.split('#').next().unwrap_or("");
    let from = before_fragment.rfind('@').map_or(0, |i| i + 1);
    let host = rest[from..].split(['/', '?', '#']).next().unwrap_or("");
    let hidden = rest.len() > host.len();
    format!("{scheme}://{host}{}", if hidden { "/…" } else { "" })
}

/// Whether a configuration key holds a secret: webhook URLs, and anything named like a token,
/// password or secret (the `_file` keys name where a secret lives, which is not one).
fn secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    if key.ends_with("_file") || key.ends_with("_files") {
        return false;
    }
    key.contains("webhook_url")
        || [
            "token",
            "password",
            "secret",
            "api_key",
            "access_key",
            "authorization",
        ]
        .iter()
        .any(|w| key.contains(w))
}

/// The text of a TOML configuration with every secret value replaced by `"<secret>"`: the
/// layout stays, so an operator recognizes their file. A URL under any other key that carries
/// user info or a query is shown as [`url`] shows it; a comment that mentions a URL or a
/// secret-like word is hidden (a commented-out webhook is still a webhook). Text that does not
/// parse is not shown at all (a secret could sit anywhere in it).
pub fn toml_text(text: &str) -> String {
    let Ok(table) = DeTable::parse(text) else {
        return "# (the file does not parse as TOML; not shown)\n".into();
    };
    let mut spans = Vec::new();
    secrets_in(table.get_ref(), false, &mut spans);
    spans.extend(comments(text).into_iter().filter_map(|c| {
        let body = &text[c.clone()];
        (body.contains("://") || secret_key(body)).then(|| {
            (
                c,
                "# (a comment that may hold a secret, hidden)".to_string(),
            )
        })
    }));
    spans.sort_by_key(|s| s.0.start);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (s, with) in spans {
        if s.start < at {
            continue;
        }
        out.push_str(&text[at..s.start]);
        out.push_str(&with);
        at = s.end;
    }
    out.push_str(&text[at..]);
    out
}

/// The spans of the values to replace, and with what: every scalar under a secret key, at any
/// depth, and URLs elsewhere that carry user info or a query.
fn secrets_in(t: &DeTable<'_>, hide: bool, out: &mut Vec<(Range<usize>, String)>) {
    for (k, v) in t {
        value(v.get_ref(), v.span(), hide || secret_key(k.get_ref()), out);
    }
}

fn value(v: &DeValue<'_>, span: Range<usize>, hide: bool, out: &mut Vec<(Range<usize>, String)>) {
    match v {
        DeValue::Table(t) => secrets_in(t, hide, out),
        DeValue::Array(a) => {
            for e in a {
                value(e.get_ref(), e.span(), hide, out);
            }
        }
        _ if hide => out.push((span, format!("\"{SECRET}\""))),
        DeValue::String(s) if s.contains("://") && (s.contains('@') || s.contains('?')) => {
            out.push((span, format!("{:?}", url(s))));
        }
        _ => {}
    }
}

/// The byte ranges of a TOML text's comments (`#` to the end of its line, outside strings).
fn comments(text: &str) -> Vec<Range<usize>> {
    const OPENERS: [&[u8]; 4] = [b"\"\"\"", b"'''", b"\"", b"'"];
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    // The closing delimiter of the string being read, if any.
    let mut close: Option<&[u8]> = None;
    while i < b.len() {
        if let Some(end) = close {
            if b[i] == b'\\' && end[0] == b'"' {
                i += 2;
            } else if b[i..].starts_with(end) {
                i += end.len();
                close = None;
            } else {
                // A one-line string ends with its line in valid TOML: never read past it.
                if b[i] == b'\n' && end.len() == 1 {
                    close = None;
                }
                i += 1;
            }
            continue;
        }
        if let Some(open) = OPENERS.iter().find(|o| b[i..].starts_with(o)) {
            close = Some(open);
            i += open.len();
        } else if b[i] == b'#' {
            let end = text[i..].find('\n').map_or(text.len(), |n| i + n);
            out.push(i..end);
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_scheme_host_and_port_only() {
        assert_eq!(
            url("https://hooks.slack.com/services/T000/B000/XXXXSECRET"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            url("http://u:pw@am.internal:9093/api/v2/alerts?x=1"),
            "http://am.internal:9093/…"
        );
        assert_eq!(url("http://am:9093"), "http://am:9093");
        assert_eq!(
            url("arn:aws:sns:us-east-1:123456789012:oncall"),
            "arn:aws:sns:us-east-1:123456789012:oncall"
        );
    }

    #[test]
    fn user_info_holding_a_slash_or_a_query_mark_is_still_dropped() {
        for u in [
            "https://user:pa/ss@am.internal:9093/api",
            "https://user:pa?ss@am.internal:9093",
            "https://us/er:p@ss@am.internal:9093/x",
        ] {
            let r = url(u);
            assert!(r.starts_with("https://am.internal:9093"), "{u} -> {r}");
            assert!(!r.contains("pa") && !r.contains("ss@"), "{u} -> {r}");
        }
    }

    #[test]
    fn a_config_keeps_its_layout_and_loses_its_secrets() {
        let text = r#"# the aggregator
[server]
listen = "127.0.0.1:9470"
auth_token_file = "/etc/vigil/token"   # a path, shown
# slack_webhook_url = "https://hooks.slack.com/services/T0/B0/SEKRIT5"
endpoint = "http://user:SEKRIT6@aws.internal:4566"   # "a # in quotes" is no comment

[[notify.receivers]]
name = "oncall"
slack_webhook_url = "https://hooks.slack.com/services/T0/B0/SEKRIT1"
webhook_urls = ["http://u:SEKRIT2@am1:9093", 'http://am2:9093/?token=SEKRIT3']
extra = { api_token = """SEKRIT4""", port = 9 }
"#;
        let r = toml_text(text);
        for s in [
            "SEKRIT1", "SEKRIT2", "SEKRIT3", "SEKRIT4", "SEKRIT5", "SEKRIT6",
        ] {
            assert!(!r.contains(s), "{s} in {r}");
        }
        assert!(r.contains("# the aggregator\n[server]\nlisten = \"127.0.0.1:9470\""));
        assert!(r.contains("auth_token_file = \"/etc/vigil/token\"   # a path, shown"));
        assert!(r.contains("slack_webhook_url = \"<secret>\"\n"));
        assert!(r.contains("webhook_urls = [\"<secret>\", \"<secret>\"]"));
        assert!(r.contains("port = 9"));
        assert!(
            r.contains(
                r#"endpoint = "http://aws.internal:4566/…"   # "a # in quotes" is no comment"#
            ),
            "{r}"
        );
        assert!(
            r.contains("# (a comment that may hold a secret, hidden)\n"),
            "{r}"
        );
        // Still TOML.
        assert!(DeTable::parse(&r).is_ok(), "{r}");
        assert!(!toml_text("a = \"SEKRIT\" [").contains("SEKRIT"));
    }
}
