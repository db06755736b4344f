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
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthTarget {
    pub url: String,
    pub timeout_ms: u64,
    pub expect_status: u16,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Push {
    pub url: String,
    pub token_file: Option<PathBuf>,
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
    pub push: Push,
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
            push: Push {
                url: "http://127.0.0.1:9470/api/v1/write".into(),
                token_file: None,
                timeout_ms: 10_000,
                max_samples_per_send: 5_000,
            },
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
        s.finish(&mut doc);
        if let Some(url) = u {
            c.scrape.push(ScrapeTarget {
                url,
                timeout_ms,
                series_limit,
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
    if let Some(mut p) = top.table(&mut doc, "push") {
        if let Some(u) = url(&mut doc, &mut p, "url") {
            c.push.url = u;
        }
        c.push.token_file = p
            .str(&mut doc, "token_file")
            .map(|s| PathBuf::from(s.value));
        c.push.timeout_ms =
            p.positive_duration(&mut doc, "timeout", c.push.timeout_ms as i64) as u64;
        if let Some(n) = p.int(&mut doc, "max_samples_per_send") {
            if n.value > 0 {
                c.push.max_samples_per_send = n.value as usize;
            } else {
                doc.error_at(
                    n.span.start,
                    "push.max_samples_per_send: must be greater than zero",
                );
            }
        }
        p.finish(&mut doc);
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

[push]
url = "http://127.0.0.1:9470/api/v1/write"
token_file = "/etc/vigil/token"

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
        assert_eq!(
            c.push.token_file.as_deref(),
            Some(std::path::Path::new("/etc/vigil/token"))
        );
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
