//! `agent.toml`: the agent's configuration, read with every problem reported as
//! `FILE:LINE:COL: message`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use vigil_config::tomlread::{Diagnostic, Doc, Obj};

/// Where the instance identity comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentitySource {
    /// IMDSv2, then the pod's environment, then the hostname.
    Auto,
    Ec2,
    Kubernetes,
    Static,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub source: IdentitySource,
    /// Static overrides: `instance`, `asg`, `az`, `pod`, `namespace`.
    pub instance: Option<String>,
    pub asg: Option<String>,
    pub az: Option<String>,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    /// IMDS base URL (tests point it at a local server).
    pub imds_endpoint: String,
    /// Per-request IMDS timeout in milliseconds.
    pub imds_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScrapeTarget {
    pub url: String,
    pub timeout_ms: u64,
    /// Scrapes returning more series than this are dropped whole.
    pub series_limit: usize,
    /// Ask for the protobuf exposition first (it carries native histograms), as Prometheus
    /// does with native histograms on; else (the default) the text formats only.
    pub native_histograms: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthTarget {
    pub url: String,
    pub timeout_ms: u64,
    pub expect_status: u16,
}

/// One remote-write target. Every target gets every sample, with its own spool and backoff.
#[derive(Debug, Clone, PartialEq)]
pub struct Push {
    /// Names the target's spool directory (`buffer.dir/<name>`) and its self-metrics' `target`
    /// label; default the URL's `host:port`, so reordering the list moves no spool.
    pub name: String,
    pub url: String,
    pub token_file: Option<PathBuf>,
    /// `ca_file`, `cert_file`, `key_file`: the CA to trust for https:// and the client
    /// certificate for mTLS; re-read when they change.
    pub tls: vigil_config::tls::ClientFiles,
    pub timeout_ms: u64,
    /// Samples per remote-write request.
    pub max_samples_per_send: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Buffer {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub interval_ms: u64,
    pub labels: BTreeMap<String, String>,
    pub identity: Identity,
    pub scrape: Vec<ScrapeTarget>,
    pub health: Vec<HealthTarget>,
    /// At least one target (the built-in default: the local aggregator).
    pub push: Vec<Push>,
    pub buffer: Buffer,
    pub listen: SocketAddr,
    /// Collect host metrics (on by default; off in a sidecar that only scrapes).
    pub host_metrics: bool,
    /// Mount points (and, ending in `/`, what is below them) not reported.
    pub mount_points_exclude: Vec<String>,
    /// Network devices not reported.
    pub network_devices_exclude: Vec<String>,
}

impl Default for Config {
    /// The built-in default: what runs with no config file (push to a local aggregator).
    fn default() -> Self {
        Config {
            interval_ms: 10_000,
            labels: BTreeMap::new(),
            identity: Identity {
                source: IdentitySource::Auto,
                instance: None,
                asg: None,
                az: None,
                pod: None,
                namespace: None,
                imds_endpoint: "http://169.254.169.254".into(),
                imds_timeout_ms: 300,
            },
            scrape: vec![],
            health: vec![],
            push: vec![Push::to("http://127.0.0.1:9470/api/v1/write")],
            buffer: Buffer {
                dir: PathBuf::from("/var/lib/vigil-agent/spool"),
                max_bytes: 256 << 20,
            },
            listen: SocketAddr::from(([127, 0, 0, 1], 9471)),
            host_metrics: true,
            mount_points_exclude: crate::collect::DEFAULT_MOUNT_EXCLUDE
                .iter()
                .map(|s| s.to_string())
                .collect(),
            network_devices_exclude: crate::collect::DEFAULT_NETDEV_EXCLUDE
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

impl Push {
    /// A target with the defaults, named after its URL.
    pub fn to(url: &str) -> Push {
        Push {
            name: default_name(url),
            url: url.to_string(),
            token_file: None,
            tls: vigil_config::tls::ClientFiles::default(),
            timeout_ms: 10_000,
            max_samples_per_send: 5_000,
        }
    }
}

/// `host:port` of an http(s) URL (the scheme's port when none is written).
fn default_name(url: &str) -> String {
    let (rest, port) = match url.split_once("://") {
        Some(("https", r)) => (r, "443"),
        Some((_, r)) => (r, "80"),
        None => (url, "80"),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    // A port is what follows the last ':' outside an IPv6 literal's brackets.
    let has_port = host_port
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if has_port {
        host_port.to_string()
    } else {
        format!("{host_port}:{port}")
    }
}

/// A target name is a directory name and a label value: letters, digits and `._:-[]`.
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n != "."
        && n != ".."
        && n.len() <= 128
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-[]".contains(&b))
}

fn url(doc: &mut Doc<'_>, o: &mut Obj<'_, '_>, key: &str) -> Option<String> {
    let u = o.req_str(doc, key)?;
    if !(u.value.starts_with("http://") || u.value.starts_with("https://")) || u.value.len() < 10 {
        doc.error_at(
            u.span.start,
            format!(
                "{}.{key}: expected an http:// or https:// URL, got {:?}",
                o.path, u.value
            ),
        );
        return None;
    }
    // user:password@ would be logged with every push and never sent (the client ignores it).
    let authority = u.value.split("://").nth(1).unwrap_or("");
    let authority = authority.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        doc.error_at(
            u.span.start,
            format!(
                "{}.{key}: credentials in the URL are not sent and would be logged; use token_file",
                o.path
            ),
        );
        return None;
    }
    Some(u.value)
}

/// Parses and validates `agent.toml`.
pub fn parse(file: &str, text: &str) -> Result<Config, Vec<Diagnostic>> {
    let mut doc = Doc::new(file, text);
    let Some(root) = doc.parse() else {
        return Err(doc.into_errors());
    };
    let mut top = Obj::new(root.get_ref(), root.span(), "");
    let mut c = Config::default();

    if let Some(mut a) = top.table(&mut doc, "agent") {
        c.interval_ms = a.positive_duration(&mut doc, "interval", c.interval_ms as i64) as u64;
        if let Some(l) = a.str_map(&mut doc, "labels") {
            for (k, v) in l {
                if !vigil_wire::text::is_valid_label_name(&k) || k.starts_with("__") {
                    doc.error_at(
                        v.span.start,
                        format!("agent.labels: invalid label name {k:?}"),
                    );
                }
                c.labels.insert(k, v.value);
            }
        }
        if let Some(h) = a.bool(&mut doc, "host_metrics") {
            c.host_metrics = h.value;
        }
        a.finish(&mut doc);
    }
    if let Some(mut i) = top.table(&mut doc, "identity") {
        if let Some(s) = i.str(&mut doc, "source") {
            c.identity.source = match s.value.as_str() {
                "auto" => IdentitySource::Auto,
                "ec2" => IdentitySource::Ec2,
                "kubernetes" => IdentitySource::Kubernetes,
                "static" => IdentitySource::Static,
                other => {
                    doc.error_at(s.span.start, format!("identity.source: expected auto, ec2, kubernetes or static, got {other:?}"));
                    IdentitySource::Auto
                }
            };
        }
        c.identity.instance = i.str(&mut doc, "instance").map(|s| s.value);
        c.identity.asg = i.str(&mut doc, "asg").map(|s| s.value);
        c.identity.az = i.str(&mut doc, "az").map(|s| s.value);
        c.identity.pod = i.str(&mut doc, "pod").map(|s| s.value);
        c.identity.namespace = i.str(&mut doc, "namespace").map(|s| s.value);
        if i.has("imds_endpoint") {
            if let Some(u) = url(&mut doc, &mut i, "imds_endpoint") {
                c.identity.imds_endpoint = u.trim_end_matches('/').to_string();
            }
        }
        c.identity.imds_timeout_ms =
            i.positive_duration(&mut doc, "imds_timeout", c.identity.imds_timeout_ms as i64) as u64;
        if c.identity.source == IdentitySource::Static && c.identity.instance.is_none() {
            doc.error_at(
                i.span().start,
                "identity: source = \"static\" needs instance",
            );
        }
        i.finish(&mut doc);
    }
    if let Some(mut h) = top.table(&mut doc, "host") {
        if let Some(v) = h.str_list(&mut doc, "mount_points_exclude") {
            c.mount_points_exclude = v.into_iter().map(|s| s.value).collect();
        }
        if let Some(v) = h.str_list(&mut doc, "network_devices_exclude") {
            c.network_devices_exclude = v.into_iter().map(|s| s.value).collect();
        }
        h.finish(&mut doc);
    }
    for mut s in top.tables(&mut doc, "scrape") {
        let u = url(&mut doc, &mut s, "url");
        let timeout_ms = s.positive_duration(&mut doc, "timeout", 2_000) as u64;
        let series_limit = match s.int(&mut doc, "series_limit") {
            Some(n) if n.value > 0 => n.value as usize,
            Some(n) => {
                doc.error_at(
                    n.span.start,
                    format!("{}.series_limit: must be greater than zero", s.path),
                );
                50_000
            }
            None => 50_000,
        };
        let native_histograms = s
            .bool(&mut doc, "native_histograms")
            .is_some_and(|b| b.value);
        s.finish(&mut doc);
        if let Some(url) = u {
            c.scrape.push(ScrapeTarget {
                url,
                timeout_ms,
                series_limit,
                native_histograms,
            });
        }
    }
    for mut h in top.tables(&mut doc, "health") {
        let u = url(&mut doc, &mut h, "url");
        let timeout_ms = h.positive_duration(&mut doc, "timeout", 1_000) as u64;
        let expect_status = match h.int(&mut doc, "expect_status") {
            Some(n) if (100..=599).contains(&n.value) => n.value as u16,
            Some(n) => {
                doc.error_at(
                    n.span.start,
                    format!("{}.expect_status: not an HTTP status", h.path),
                );
                200
            }
            None => 200,
        };
        h.finish(&mut doc);
        if let Some(url) = u {
            c.health.push(HealthTarget {
                url,
                timeout_ms,
                expect_status,
            });
        }
    }
    // `[[push]]`, one table per target; a single `[push]` table (the first releases' form) is
    // one target.
    let targets = top.table_or_tables(&mut doc, "push");
    if !targets.is_empty() {
        c.push.clear();
    }
    for mut p in targets {
        let url = url(&mut doc, &mut p, "url");
        let defaults = Push::to(url.as_deref().unwrap_or(""));
        let name = match p.str(&mut doc, "name") {
            Some(n) if valid_name(&n.value) => Some(n),
            Some(n) => {
                doc.error_at(
                    n.span.start,
                    format!(
                        "{}.name: {:?} must be 1 to 128 letters, digits or ._:-[] (it names a directory)",
                        p.path, n.value
                    ),
                );
                None
            }
            None => None,
        };
        let token_file = p
            .str(&mut doc, "token_file")
            .map(|s| PathBuf::from(s.value));
        let mut tls = vigil_config::tls::ClientFiles::default();
        let mut cert_at = None;
        for (key, slot) in [
            ("ca_file", &mut tls.ca_file),
            ("cert_file", &mut tls.cert_file),
            ("key_file", &mut tls.key_file),
        ] {
            if let Some(v) = p.str(&mut doc, key) {
                cert_at.get_or_insert(v.span.start);
                *slot = Some(PathBuf::from(v.value));
            }
        }
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            doc.error_at(
                cert_at.unwrap_or(0),
                format!(
                    "{}: cert_file and key_file go together (the client certificate and its key)",
                    p.path
                ),
            );
        }
        let timeout_ms =
            p.positive_duration(&mut doc, "timeout", defaults.timeout_ms as i64) as u64;
        let mut max_samples_per_send = defaults.max_samples_per_send;
        if let Some(n) = p.int(&mut doc, "max_samples_per_send") {
            if n.value > 0 {
                max_samples_per_send = n.value as usize;
            } else {
                doc.error_at(
                    n.span.start,
                    format!("{}.max_samples_per_send: must be greater than zero", p.path),
                );
            }
        }
        let at = p.span().start;
        let path = p.path.clone();
        p.finish(&mut doc);
        let Some(url) = url else { continue };
        let name = name.map_or(defaults.name, |n| n.value);
        if !valid_name(&name) {
            doc.error_at(
                at,
                format!("{path}: the URL gives no usable default name {name:?}; set name"),
            );
            continue;
        }
        if c.push.iter().any(|q| q.name == name) {
            doc.error_at(
                at,
                format!("{path}: a second target named {name:?} (names must differ: each names a spool directory)"),
            );
            continue;
        }
        c.push.push(Push {
            name,
            url,
            token_file,
            tls,
            timeout_ms,
            max_samples_per_send,
        });
    }
    if let Some(mut b) = top.table(&mut doc, "buffer") {
        if let Some(d) = b.str(&mut doc, "dir") {
            c.buffer.dir = PathBuf::from(d.value);
        }
        if let Some(m) = b.str(&mut doc, "max_bytes") {
            match vigil_config::size::parse_bytes(&m.value) {
                Ok(n) if n >= 1 << 20 => c.buffer.max_bytes = n,
                Ok(_) => doc.error_at(m.span.start, "buffer.max_bytes: at least 1MiB"),
                Err(e) => doc.error_at(m.span.start, format!("buffer.max_bytes: {e}")),
            }
        }
        b.finish(&mut doc);
    }
    if let Some(mut l) = top.table(&mut doc, "listen") {
        if let Some(a) = l.str(&mut doc, "address") {
            match a.value.parse::<SocketAddr>() {
                Ok(addr) => c.listen = addr,
                Err(_) => doc.error_at(
                    a.span.start,
                    format!("listen.address: expected host:port, got {:?}", a.value),
                ),
            }
        }
        l.finish(&mut doc);
    }
    top.finish(&mut doc);
    let errors = doc.into_errors();
    if errors.is_empty() {
        Ok(c)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_EXAMPLE: &str = r#"
[agent]
interval = "10s"
labels = { env = "prod" }

[identity]
source = "auto"

[[scrape]]
url = "http://127.0.0.1:8080/metrics"
timeout = "2s"

[[health]]
url = "http://127.0.0.1:8080/healthz"
timeout = "1s"
expect_status = 200

[[push]]
name = "agg-a"
url = "https://aggregator-a.internal:9470/api/v1/write"
token_file = "/etc/vigil/token"
[[push]]
url = "https://aggregator-b.internal:9470/api/v1/write"

[buffer]
dir = "/var/lib/vigil-agent/spool"
max_bytes = "256MiB"

[listen]
address = "127.0.0.1:9471"
"#;

    #[test]
    fn the_spec_example_parses() {
        let c = parse("agent.toml", SPEC_EXAMPLE).unwrap();
        assert_eq!(c.interval_ms, 10_000);
        assert_eq!(c.labels["env"], "prod");
        assert_eq!(c.scrape[0].timeout_ms, 2_000);
        assert_eq!(c.health[0].expect_status, 200);
        assert_eq!(c.buffer.max_bytes, 256 << 20);
        assert_eq!(c.push.len(), 2);
        assert_eq!(c.push[0].name, "agg-a");
        assert_eq!(
            c.push[0].token_file.as_deref(),
            Some(std::path::Path::new("/etc/vigil/token"))
        );
        assert_eq!(c.push[1].name, "aggregator-b.internal:9470");
        assert_eq!(c.push[1].token_file, None);
    }

    #[test]
    fn a_single_push_table_is_one_target() {
        let c = parse(
            "a.toml",
            "[push]\nurl = \"http://10.0.0.5:9470/api/v1/write\"\ntimeout = \"3s\"\n",
        )
        .unwrap();
        assert_eq!(c.push.len(), 1);
        assert_eq!(c.push[0].name, "10.0.0.5:9470");
        assert_eq!(c.push[0].timeout_ms, 3_000);
        // No push section at all: the built-in default target.
        let d = parse("a.toml", "").unwrap();
        assert_eq!(d.push, Config::default().push);
        assert_eq!(d.push[0].name, "127.0.0.1:9470");
    }

    #[test]
    fn default_names_are_host_and_port() {
        for (url, name) in [
            ("http://a.example/api/v1/write", "a.example:80"),
            ("https://a.example/api/v1/write", "a.example:443"),
            ("http://[::1]:9470/api/v1/write", "[::1]:9470"),
            ("http://[::1]/api/v1/write", "[::1]:80"),
        ] {
            assert_eq!(default_name(url), name, "{url}");
        }
    }

    #[test]
    fn credentials_in_a_push_url_are_refused() {
        let errs = parse("a.toml", "[[push]]\nurl = \"https://u:pw@a:9470/w\"\n").unwrap_err();
        assert!(
            errs[0]
                .to_string()
                .contains("credentials in the URL are not sent and would be logged"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn tls_files_of_a_target() {
        let c = parse(
            "a.toml",
            "[[push]]\nurl = \"https://a:9470/w\"\nca_file = \"/ca.pem\"\ncert_file = \"/c.pem\"\nkey_file = \"/c.key\"\n",
        )
        .unwrap();
        assert_eq!(
            c.push[0].tls.ca_file.as_deref(),
            Some(std::path::Path::new("/ca.pem"))
        );
        assert_eq!(
            c.push[0].tls.key_file.as_deref(),
            Some(std::path::Path::new("/c.key"))
        );
        let errs: Vec<String> = parse(
            "a.toml",
            "[[push]]\nurl = \"https://a:9470/w\"\ncert_file = \"/c.pem\"\n",
        )
        .unwrap_err()
        .iter()
        .map(|d| d.to_string())
        .collect();
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(
            errs[0].starts_with("a.toml:3:13: push[0]: cert_file and key_file go together"),
            "{errs:#?}"
        );
    }

    #[test]
    fn target_names_must_differ_and_be_directory_names() {
        let text = "[[push]]\nurl = \"http://a:1/w\"\n[[push]]\nurl = \"http://a:1/other\"\n[[push]]\nname = \"../x\"\nurl = \"http://b:1/w\"\n";
        let errs: Vec<String> = parse("a.toml", text)
            .unwrap_err()
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(
            errs[0].starts_with("a.toml:3:1: push[1]: a second target named \"a:1\""),
            "{errs:#?}"
        );
        assert!(errs[1].starts_with("a.toml:6:8: push[2].name"), "{errs:#?}");
    }

    #[test]
    fn the_shipped_example_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/agent.toml");
        let text = std::fs::read_to_string(path).unwrap();
        parse(path, &text).unwrap();
    }

    #[test]
    fn every_problem_is_reported_with_its_position() {
        let text = "[agent]\ninterval = \"often\"\ncolour = 1\n[[scrape]]\nurl = \"ftp://x\"\n[buffer]\nmax_bytes = \"lots\"\n[listen]\naddress = \"nowhere\"\n";
        let errs: Vec<String> = parse("a.toml", text)
            .unwrap_err()
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(errs.len(), 5, "{errs:#?}");
        assert!(
            errs[0].starts_with("a.toml:2:12: agent.interval"),
            "{errs:#?}"
        );
        assert!(
            errs[1].starts_with("a.toml:3:1: agent.colour: unknown key"),
            "{errs:#?}"
        );
        assert!(
            errs[2].starts_with("a.toml:5:7: scrape[0].url"),
            "{errs:#?}"
        );
        assert!(
            errs[3].starts_with("a.toml:7:13: buffer.max_bytes"),
            "{errs:#?}"
        );
        assert!(
            errs[4].starts_with("a.toml:9:11: listen.address"),
            "{errs:#?}"
        );
    }
}
