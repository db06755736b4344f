//! Who may do what. Three tokens, each read from its own file at start:
//! - `auth_token_file`: writers (`/api/v1/write`);
//! - `admin_token_file`: admin writes (`/-/reload`, silences and pauses); without it,
//!   `auth_token_file` (one token, as before the split); never from another site's page
//!   (`cross_site`), token or not;
//! - `query_token_file`: the query API, `/metrics` and the console; without it they are open.
//!
//! `/-/healthy` and `/-/ready` are always open (probes). Tokens come as `Authorization: Bearer`,
//! or as basic auth's password (any user name): browsers cannot add a bearer header to a page
//! load, and basic auth keeps no session on the server, so either node of a pair behind one
//! Service accepts it, as Prometheus's own `web.yml` basic auth does. Comparisons take the same
//! time wherever the strings differ. Refusals are counted by the endpoint they guard.

use std::path::Path;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::config::Config;

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Write,
    Admin,
    Query,
}

impl Need {
    fn as_str(self) -> &'static str {
        match self {
            Need::Write => "write",
            Need::Admin => "admin",
            Need::Query => "query",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    endpoint: &'static str,
    reason: &'static str,
}

/// A token and the config key it came from (named in audit lines, never the token itself).
struct Token {
    key: &'static str,
    value: String,
}

pub struct Tokens {
    write: Option<Token>,
    admin: Option<Token>,
    query: Option<Token>,
    refused: Family<RefusedLabels, Counter>,
}

/// Compares what a client `given` with the `secret` in time that depends only on the length
/// of what was given: neither where they differ nor the secret's length shows.
pub fn constant_time_eq(given: &[u8], secret: &[u8]) -> bool {
    if secret.is_empty() {
        return given.is_empty();
    }
    let mut diff = u8::from(given.len() != secret.len());
    for (i, g) in given.iter().enumerate() {
        diff |= g ^ secret[i % secret.len()];
    }
    diff == 0
}

fn read(key: &'static str, path: Option<&Path>) -> Result<Option<Token>, String> {
    let Some(p) = path else { return Ok(None) };
    let t = std::fs::read_to_string(p).map_err(|e| format!("server.{key} {}: {e}", p.display()))?;
    let value = t.trim().to_string();
    if value.is_empty() {
        return Err(format!("server.{key} {} is empty", p.display()));
    }
    Ok(Some(Token { key, value }))
}

/// The standard base64 alphabet, decoded (padding optional); `None` for anything else.
fn base64(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// The secret an `Authorization` header carries: a bearer token, or (readers only) basic auth's
/// password. A browser sends saved basic credentials with a cross-site form too, so basic auth
/// never opens an admin write (no CSRF through the console's sign-in).
fn presented(header: Option<&str>, basic: bool) -> Option<Vec<u8>> {
    let h = header?.trim();
    let (scheme, rest) = h.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().as_bytes().to_vec());
    }
    if basic && scheme.eq_ignore_ascii_case("basic") {
        let pair = base64(rest.trim())?;
        let colon = pair.iter().position(|&b| b == b':')?;
        return Some(pair[colon + 1..].to_vec());
    }
    None
}

/// Why a request comes from another site's page, when a browser says so: `Sec-Fetch-Site`
/// `cross-site` or `same-site`, or an `Origin` that is not this server. An admin write from
/// there is a cross-site request forgery (with no token configured, nothing else would stop
/// it); curl, amtool and the pair's own forwarding send neither header.
pub fn cross_site(h: &hyper::HeaderMap) -> Option<&'static str> {
    let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
    // A browser that says where the request comes from is believed (behind a reverse proxy the
    // Host may not be the page's); an older one is judged by its Origin.
    if let Some(site) = get("sec-fetch-site") {
        return matches!(site, "cross-site" | "same-site").then_some("Sec-Fetch-Site");
    }
    let origin = get("origin")?;
    let host = get("host").unwrap_or("");
    let authority = origin.split_once("://").map_or("", |(_, a)| a);
    (authority.is_empty() || !authority.eq_ignore_ascii_case(host)).then_some("Origin")
}

impl Tokens {
    pub fn load(cfg: &Config, r: &mut Registry) -> Result<Tokens, String> {
        let refused = Family::default();
        r.register(
            "vigil_aggregator_http_refused",
            "Requests refused before their handler, by the endpoint class and the reason (token, client_cert)",
            refused.clone(),
        );
        Ok(Tokens {
            write: read("auth_token_file", cfg.auth_token_file.as_deref())?,
            admin: read("admin_token_file", cfg.admin_token_file.as_deref())?,
            query: read("query_token_file", cfg.query_token_file.as_deref())?,
            refused,
        })
    }

    fn token(&self, need: Need) -> Option<&Token> {
        match need {
            Need::Write => self.write.as_ref(),
            Need::Admin => self.admin.as_ref().or(self.write.as_ref()),
            Need::Query => self.query.as_ref(),
        }
    }

    /// Whether `need` is met by the request's `Authorization`: `Ok` with the key of the token
    /// it matched (None: no token is configured for it), `Err` counted as refused.
    pub fn check(&self, need: Need, header: Option<&str>) -> Result<Option<&'static str>, ()> {
        let Some(t) = self.token(need) else {
            return Ok(None);
        };
        if presented(header, need == Need::Query)
            .is_some_and(|p| constant_time_eq(&p, t.value.as_bytes()))
        {
            Ok(Some(t.key))
        } else {
            self.refuse(need, "token");
            Err(())
        }
    }

    /// Counts a refusal.
    pub fn refuse(&self, need: Need, reason: &'static str) {
        self.refused
            .get_or_create(&RefusedLabels {
                endpoint: need.as_str(),
                reason,
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(write: Option<&str>, admin: Option<&str>, query: Option<&str>) -> Tokens {
        let t = |key, v: Option<&str>| {
            v.map(|v| Token {
                key,
                value: v.to_string(),
            })
        };
        Tokens {
            write: t("auth_token_file", write),
            admin: t("admin_token_file", admin),
            query: t("query_token_file", query),
            refused: Family::default(),
        }
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"abcabc", b"abc"));
        assert!(!constant_time_eq(b"", b"abc"));
    }

    #[test]
    fn each_endpoint_takes_its_own_token() {
        let t = tokens(Some("w"), Some("a"), Some("q"));
        assert_eq!(
            t.check(Need::Write, Some("Bearer w")),
            Ok(Some("auth_token_file"))
        );
        assert_eq!(t.check(Need::Write, Some("Bearer a")), Err(()));
        assert_eq!(t.check(Need::Admin, Some("Bearer w")), Err(()));
        assert_eq!(
            t.check(Need::Admin, Some("bearer a")),
            Ok(Some("admin_token_file"))
        );
        assert_eq!(t.check(Need::Query, None), Err(()));
        // Basic auth: any user, the token as the password ("u:q", "grafana:q").
        assert_eq!(
            t.check(Need::Query, Some("Basic dTpx")),
            Ok(Some("query_token_file"))
        );
        assert_eq!(
            t.check(Need::Query, Some("Basic Z3JhZmFuYTpx")),
            Ok(Some("query_token_file"))
        );
        assert_eq!(t.check(Need::Query, Some("Basic dTp3")), Err(()));
        assert_eq!(t.check(Need::Query, Some("Basic !!!")), Err(()));
        // Basic auth opens reads only ("u:a" is the admin token as a password).
        assert_eq!(t.check(Need::Admin, Some("Basic dTph")), Err(()));
        let m = t
            .refused
            .get_or_create(&RefusedLabels {
                endpoint: "query",
                reason: "token",
            })
            .get();
        assert_eq!(m, 3);
    }

    #[test]
    fn without_an_admin_token_the_write_token_is_it_and_unset_means_open() {
        let t = tokens(Some("w"), None, None);
        assert_eq!(
            t.check(Need::Admin, Some("Bearer w")),
            Ok(Some("auth_token_file"))
        );
        assert_eq!(t.check(Need::Query, None), Ok(None));
        let open = tokens(None, None, None);
        assert_eq!(open.check(Need::Admin, None), Ok(None));
        assert_eq!(open.check(Need::Write, None), Ok(None));
    }

    #[test]
    fn a_browser_page_of_another_site_is_told_apart() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = hyper::HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, hyper::header::HeaderValue::from_static(v));
            }
            m
        };
        // curl, amtool, a follower forwarding: no browser headers.
        assert_eq!(cross_site(&h(&[("host", "127.0.0.1:9470")])), None);
        // The console itself, also behind a proxy that rewrites the Host.
        let own = [
            ("host", "127.0.0.1:9470"),
            ("origin", "https://vigil.example"),
            ("sec-fetch-site", "same-origin"),
        ];
        assert_eq!(cross_site(&h(&own)), None);
        let old_browser = [
            ("host", "127.0.0.1:9470"),
            ("origin", "http://127.0.0.1:9470"),
        ];
        assert_eq!(cross_site(&h(&old_browser)), None);
        // Another site's form or fetch.
        assert_eq!(
            cross_site(&h(&[
                ("host", "vigil:9470"),
                ("sec-fetch-site", "cross-site")
            ])),
            Some("Sec-Fetch-Site")
        );
        assert_eq!(
            cross_site(&h(&[
                ("host", "vigil:9470"),
                ("origin", "https://evil.example")
            ])),
            Some("Origin")
        );
        assert_eq!(
            cross_site(&h(&[("host", "vigil:9470"), ("origin", "null")])),
            Some("Origin")
        );
    }

    #[test]
    fn base64_decodes_the_standard_alphabet() {
        assert_eq!(base64("dTpx").as_deref(), Some(&b"u:q"[..]));
        assert_eq!(base64("YQ==").as_deref(), Some(&b"a"[..]));
        assert_eq!(base64("YWI=").as_deref(), Some(&b"ab"[..]));
        assert_eq!(base64("a-b"), None);
    }
}
