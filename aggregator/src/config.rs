//! `aggregator.toml`, read with every problem reported as `FILE:LINE:COL: message`. The keys
//! are the SPEC's; the AWS, CloudWatch and notification sections are read and validated here
//! and acted on by the action layer.

use std::net::SocketAddr;
use std::path::PathBuf;

use vigil_config::tomlread::{Diagnostic, Doc, Obj};

mod cluster;
mod import;
mod notify;
mod storage;
pub use cluster::Cluster;
pub use import::{label_name, CloudWatchImport, TargetHealthImport};
pub use notify::{Receiver, Templates};
pub use storage::{Remote, Wal};

/// Whether `a` is exactly `host:port`: a DNS name, an IPv4 address or a bracketed IPv6 one, and
/// a port; nothing a URL could read as user info, a path, a query or a fragment (a follower
/// builds `http://<address>/…` from the lease item and sends the caller's token there).
pub fn host_port(a: &str) -> bool {
    let Some((host, port)) = a.rsplit_once(':') else {
        return false;
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        }
    };
    host_ok && port.parse::<u16>().is_ok_and(|p| p > 0)
}

/// `[server] tls_cert_file`, `tls_key_file`, `client_ca_file`: HTTPS, and mTLS for writers.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// mTLS: a client certificate is asked for at the handshake (optional there) and required,
    /// signed by this CA, for `/api/v1/write`.
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub auth_token_file: Option<PathBuf>,
    /// Admin writes (reload, and later silences and pauses); without it, `auth_token_file`.
    pub admin_token_file: Option<PathBuf>,
    /// When set, the query API, `/metrics` and the console need it (bearer, or basic auth's
    /// password).
    pub query_token_file: Option<PathBuf>,
    /// `[server] tls_cert_file`, `tls_key_file`: HTTPS (both re-read on SIGHUP).
    pub tls: Option<ServerTls>,
    pub retention_ms: i64,
    /// A series not pushed to for this long is marked stale; its instance counts as down.
    pub stale_after_ms: i64,
    pub state_dir: PathBuf,
    /// `[storage] wal`, `wal_fsync`, `checkpoint_interval`: the window kept on disk.
    pub wal: Wal,
    /// `[storage] backend = "remote"`: the engine rules and queries read (None: memory).
    pub remote: Option<Remote>,
    /// `[cluster]`: run as one of an HA group (None: act alone).
    pub cluster: Option<Cluster>,
    /// Rule file paths or globs (`*` in the file name).
    pub rule_files: Vec<String>,
    pub evaluation_interval_ms: i64,
    /// `[rules] query_offset`: how far in the past groups without their own are evaluated.
    pub query_offset_ms: i64,
    pub region: String,
    pub endpoint_url: Option<String>,
    /// Whether `[aws]` is given: without it there are no AWS clients at all (capacities are
    /// simulated and every action is logged only).
    pub aws_configured: bool,
    pub dry_run: bool,
    /// `[aws] attempt_timeout`, `call_timeout`: one attempt of an AWS call, and the call with
    /// its retries. Longer than a slow answer: an attempt cut while AWS still carries it out is
    /// retried, and a Publish would be delivered twice.
    pub aws_attempt_timeout_ms: i64,
    pub aws_call_timeout_ms: i64,
    pub cloudwatch_namespace: String,
    pub cloudwatch_flush_ms: i64,
    /// `[[import.cloudwatch]]`: CloudWatch metrics polled into the window.
    pub cloudwatch_imports: Vec<CloudWatchImport>,
    /// `[[import.target_health]]`: load balancer target health polled into the window.
    pub target_health_imports: Vec<TargetHealthImport>,
    pub group_by: Vec<String>,
    pub group_wait_ms: i64,
    pub group_interval_ms: i64,
    pub repeat_interval_ms: i64,
    pub receivers: Vec<Receiver>,
    /// `[[notify.route]]`, `[[notify.inhibit]]`, `[[notify.time_interval]]`.
    pub routing: crate::routing::Routing,
    pub templates: Templates,
    /// Largest remote-write body accepted, decompressed.
    pub max_body_bytes: usize,
    /// `[server] max_connections`: open connections at most (past it new ones wait in the
    /// kernel's backlog); `header_read_timeout`: a request's headers must arrive within it, and
    /// an idle keep-alive connection is closed after it.
    pub max_connections: usize,
    /// `max_connections_per_ip`: past it a client's new connection gets a 429 and is closed.
    pub max_connections_per_ip: usize,
    pub header_read_timeout_ms: i64,
    /// Most active series held; pushes that would add more are refused with 429.
    pub max_series: usize,
    /// Per request: series, labels per series, label name and value length (413 over them).
    pub max_series_per_request: usize,
    pub max_labels_per_series: usize,
    pub max_label_name_length: usize,
    pub max_label_value_length: usize,
    /// `[query]`: samples one API query may load (422 past it), how long it may run (503
    /// past it), and how many API queries run at once (others wait; rule evaluation never
    /// waits behind them).
    pub query_max_samples: usize,
    pub query_timeout_ms: i64,
    pub query_max_concurrency: usize,
    /// Rule files compiled into the binary, as (name, text): the embedded default's demo rules.
    pub builtin_rules: Vec<(String, String)>,
}

/// The demo rules the embedded default evaluates (this host's own metrics, a simulated group).
const DEMO_RULES: &str = include_str!("../../examples/rules/this-host.toml");

impl Config {
    /// What runs without a config file: [`Config::default`] plus the demo rules of
    /// `examples/rules/this-host.toml`, so that a first run shows alerts and decisions.
    pub fn embedded() -> Config {
        Config {
            builtin_rules: vec![(
                "<embedded>/examples/rules/this-host.toml".into(),
                DEMO_RULES.into(),
            )],
            ..Config::default()
        }
    }
}

impl Default for Config {
    /// The embedded default: listen on 127.0.0.1:9470, keep an hour, dry-run every action.
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 9470)),
            auth_token_file: None,
            admin_token_file: None,
            query_token_file: None,
            tls: None,
            retention_ms: 3_600_000,
            stale_after_ms: 60_000,
            state_dir: PathBuf::from("/var/lib/vigil"),
            wal: Wal::default(),
            remote: None,
            cluster: None,
            rule_files: vec![],
            evaluation_interval_ms: 10_000,
            query_offset_ms: 0,
            region: "us-east-1".into(),
            endpoint_url: None,
            aws_configured: false,
            dry_run: true,
            aws_attempt_timeout_ms: 10_000,
            aws_call_timeout_ms: 30_000,
            cloudwatch_namespace: "Vigil".into(),
            cloudwatch_flush_ms: 60_000,
            cloudwatch_imports: vec![],
            target_health_imports: vec![],
            group_by: vec!["alertname".into(), "asg".into()],
            group_wait_ms: 10_000,
            group_interval_ms: 60_000,
            repeat_interval_ms: 4 * 3_600_000,
            receivers: vec![],
            routing: Default::default(),
            templates: Default::default(),
            max_body_bytes: 32 << 20,
            max_connections: 4096,
            max_connections_per_ip: 128,
            header_read_timeout_ms: 30_000,
            max_series: 2_000_000,
            max_series_per_request: 100_000,
            max_labels_per_series: 64,
            max_label_name_length: 256,
            max_label_value_length: 4096,
            query_max_samples: 50_000_000,
            query_timeout_ms: 120_000,
            query_max_concurrency: 20,
            builtin_rules: vec![],
        }
    }
}

/// Parses and validates `aggregator.toml`.
pub fn parse(file: &str, text: &str) -> Result<Config, Vec<Diagnostic>> {
    let mut doc = Doc::new(file, text);
    let Some(root) = doc.parse() else {
        return Err(doc.into_errors());
    };
    let mut top = Obj::new(root.get_ref(), root.span(), "");
    let mut c = Config {
        dry_run: false,
        ..Config::default()
    };
    // Where the AWS timeouts were set explicitly (a cluster caps them).
    let mut explicit_aws_timeouts: Vec<(&str, usize)> = Vec::new();
    let mut c_tls = None;
    if let Some(mut s) = top.table(&mut doc, "server") {
        if let Some(a) = s.str(&mut doc, "listen") {
            match a.value.parse() {
                Ok(addr) => c.listen = addr,
                Err(_) => doc.error_at(
                    a.span.start,
                    format!("server.listen: expected host:port, got {:?}", a.value),
                ),
            }
        }
        c.auth_token_file = s
            .str(&mut doc, "auth_token_file")
            .map(|v| PathBuf::from(v.value));
        c.admin_token_file = s
            .str(&mut doc, "admin_token_file")
            .map(|v| PathBuf::from(v.value));
        c.query_token_file = s
            .str(&mut doc, "query_token_file")
            .map(|v| PathBuf::from(v.value));
        let cert = s.str(&mut doc, "tls_cert_file");
        let key = s.str(&mut doc, "tls_key_file");
        let client_ca = s.str(&mut doc, "client_ca_file");
        match (cert, key) {
            (Some(c), Some(k)) => {
                c_tls = Some(ServerTls {
                    cert_file: PathBuf::from(c.value),
                    key_file: PathBuf::from(k.value),
                    client_ca_file: client_ca.map(|v| PathBuf::from(v.value)),
                })
            }
            (None, None) => {
                if let Some(v) = client_ca {
                    doc.error_at(
                        v.span.start,
                        "server.client_ca_file: needs tls_cert_file and tls_key_file (mTLS is TLS)",
                    );
                }
            }
            (Some(v), None) | (None, Some(v)) => doc.error_at(
                v.span.start,
                "server.tls_cert_file and server.tls_key_file go together",
            ),
        }
        if let Some(n) = s.str(&mut doc, "max_body_size") {
            match vigil_config::size::parse_bytes(&n.value) {
                Ok(0) => doc.error_at(
                    n.span.start,
                    "server.max_body_size: must be greater than zero",
                ),
                Ok(b) => c.max_body_bytes = b as usize,
                Err(e) => doc.error_at(n.span.start, format!("server.max_body_size: {e}")),
            }
        }
        c.header_read_timeout_ms =
            s.positive_duration(&mut doc, "header_read_timeout", c.header_read_timeout_ms);
        for (key, slot) in [
            ("max_connections", &mut c.max_connections),
            ("max_connections_per_ip", &mut c.max_connections_per_ip),
            ("max_series", &mut c.max_series),
            ("max_series_per_request", &mut c.max_series_per_request),
            ("max_labels_per_series", &mut c.max_labels_per_series),
            ("max_label_name_length", &mut c.max_label_name_length),
            ("max_label_value_length", &mut c.max_label_value_length),
        ] {
            if let Some(n) = s.int(&mut doc, key) {
                if n.value > 0 {
                    *slot = n.value as usize;
                } else {
                    doc.error_at(
                        n.span.start,
                        format!("server.{key}: must be greater than zero"),
                    );
                }
            }
        }
        s.finish(&mut doc);
        c.tls = c_tls.take();
    }
    if let Some(mut q) = top.table(&mut doc, "query") {
        for (key, slot) in [
            ("max_samples", &mut c.query_max_samples),
            ("max_concurrency", &mut c.query_max_concurrency),
        ] {
            if let Some(n) = q.int(&mut doc, key) {
                if n.value > 0 {
                    *slot = n.value as usize;
                } else {
                    doc.error_at(
                        n.span.start,
                        format!("query.{key}: must be greater than zero"),
                    );
                }
            }
        }
        c.query_timeout_ms = q.positive_duration(&mut doc, "timeout", c.query_timeout_ms);
        q.finish(&mut doc);
    }
    if let Some(s) = top.table(&mut doc, "storage") {
        storage::parse(&mut doc, s, &mut c);
    }
    if let Some(mut r) = top.table(&mut doc, "rules") {
        c.rule_files = r
            .str_list(&mut doc, "files")
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.value)
            .collect();
        c.evaluation_interval_ms =
            r.positive_duration(&mut doc, "evaluation_interval", c.evaluation_interval_ms);
        c.query_offset_ms = r
            .non_negative_duration(&mut doc, "query_offset")
            .unwrap_or(0);
        r.finish(&mut doc);
    }
    if let Some(mut a) = top.table(&mut doc, "aws") {
        c.aws_configured = true;
        if let Some(r) = a.str(&mut doc, "region") {
            c.region = r.value;
        }
        c.endpoint_url = a.str(&mut doc, "endpoint_url").map(|s| s.value);
        if let Some(d) = a.bool(&mut doc, "dry_run") {
            c.dry_run = d.value;
        }
        match a.duration(&mut doc, "attempt_timeout") {
            Some(t) if t.value > 0 => {
                c.aws_attempt_timeout_ms = t.value;
                explicit_aws_timeouts.push(("attempt_timeout", t.span.start));
            }
            Some(t) => doc.error_at(
                t.span.start,
                "aws.attempt_timeout: must be greater than zero",
            ),
            None => {}
        }
        if let Some(call) = a.duration(&mut doc, "call_timeout") {
            explicit_aws_timeouts.push(("call_timeout", call.span.start));
            c.aws_call_timeout_ms = call.value;
            if call.value < c.aws_attempt_timeout_ms {
                doc.error_at(
                    call.span.start,
                    "aws.call_timeout: must be at least attempt_timeout (a call is one or more attempts)",
                );
            }
        }
        a.finish(&mut doc);
    } else {
        // Without [aws] nothing can be called: decide and log only.
        c.dry_run = true;
    }
    if let Some(mut cw) = top.table(&mut doc, "cloudwatch") {
        if let Some(n) = cw.str(&mut doc, "namespace") {
            if n.value.is_empty() || n.value.len() > 255 || n.value.starts_with("AWS/") {
                doc.error_at(
                    n.span.start,
                    "cloudwatch.namespace: 1 to 255 characters, not starting with AWS/",
                );
            }
            c.cloudwatch_namespace = n.value;
        }
        c.cloudwatch_flush_ms =
            cw.positive_duration(&mut doc, "flush_interval", c.cloudwatch_flush_ms);
        cw.finish(&mut doc);
    }
    let routed = match top.table(&mut doc, "notify") {
        Some(n) => notify::read(&mut doc, n, &mut c),
        None => Vec::new(),
    };
    if let Some(k) = top.table(&mut doc, "cluster") {
        cluster::parse(&mut doc, k, &mut c, &explicit_aws_timeouts);
    }
    if let Some(i) = top.table(&mut doc, "import") {
        let at = i.span().start;
        import::parse(&mut doc, i, &mut c);
        let imports = c.cloudwatch_imports.len() + c.target_health_imports.len();
        if imports > 0 && !c.aws_configured {
            doc.error_at(
                at,
                "[[import.cloudwatch]] and [[import.target_health]] read AWS: they need [aws] (region, credentials)",
            );
        }
    }
    for mut r in top.tables(&mut doc, "receiver") {
        let path = r.path.clone();
        let name = r.req_str(&mut doc, "name");
        let sns = r.str(&mut doc, "sns_topic_arn");
        let slack = r.str(&mut doc, "slack_webhook_url");
        let hook = r.str(&mut doc, "webhook_url");
        let hooks = r.str_list(&mut doc, "webhook_urls").unwrap_or_default();
        if let Some(a) = &sns {
            if !a.value.starts_with("arn:aws") || a.value.split(':').count() != 6 {
                doc.error_at(
                    a.span.start,
                    format!("{path}.sns_topic_arn: not an SNS topic ARN: {:?}", a.value),
                );
            }
        }
        for u in [&slack, &hook].into_iter().flatten().chain(&hooks) {
            if !(u.value.starts_with("http://") || u.value.starts_with("https://")) {
                doc.error_at(
                    u.span.start,
                    format!("{path}: expected an http(s) URL, got {:?}", u.value),
                );
            }
        }
        if sns.is_none() && slack.is_none() && hook.is_none() && hooks.is_empty() {
            doc.error_at(
                r.span().start,
                format!(
                    "{path}: give sns_topic_arn, slack_webhook_url, webhook_url or webhook_urls"
                ),
            );
        }
        r.finish(&mut doc);
        if let Some(n) = name {
            if c.receivers.iter().any(|x| x.name == n.value) {
                doc.error_at(
                    n.span.start,
                    format!("{path}.name: duplicate receiver {:?}", n.value),
                );
            }
            c.receivers.push(Receiver {
                name: n.value,
                sns_topic_arn: sns.map(|s| s.value),
                slack_webhook_url: slack.map(|s| s.value),
                webhook_urls: hook.into_iter().chain(hooks).map(|s| s.value).collect(),
            });
        }
    }
    notify::check_receivers(&mut doc, &routed, &c);
    top.finish(&mut doc);
    let errors = doc.into_errors();
    if errors.is_empty() {
        Ok(c)
    } else {
        Err(errors)
    }
}

/// Expands rule file patterns (a `*` in the file name) into sorted paths.
pub fn expand_rule_files(patterns: &[String]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in patterns {
        let path = PathBuf::from(p);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        if let Some((pre, post)) = name.split_once('*') {
            let dir = path
                .parent()
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."));
            let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|f| {
                            let n = f
                                .file_name()
                                .map(|n| n.to_string_lossy().to_string())
                                .unwrap_or_default();
                            n.len() >= pre.len() + post.len()
                                && n.starts_with(pre)
                                && n.ends_with(post)
                        })
                        .collect()
                })
                .unwrap_or_default();
            found.sort();
            out.extend(found);
        } else {
            out.push(path);
        }
    }
    out
}

#[cfg(test)]
mod tests;
