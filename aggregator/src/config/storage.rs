//! `[storage]`: the window's retention and where state and the window's log live.

use std::path::PathBuf;

use vigil_config::tomlread::{Doc, Obj};

use super::Config;

/// The window kept on disk (`[storage] wal`, `wal_fsync`, `checkpoint_interval`): a log of
/// what was ingested under `<state_dir>/wal`, and checkpoints of the window beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct Wal {
    pub enabled: bool,
    /// `fsync` each request's record before answering (power loss); without it a record is in
    /// the kernel's page cache when the 204 goes (a `kill -9` loses nothing).
    pub fsync: bool,
    pub checkpoint_interval_ms: i64,
}

impl Default for Wal {
    fn default() -> Self {
        Wal {
            enabled: true,
            fsync: false,
            checkpoint_interval_ms: 5 * 60_000,
        }
    }
}

/// `[storage] backend = "remote"` and `[storage.remote]`: rules (and the query API) read the
/// window from an existing Prometheus-compatible engine, beside what the aggregator holds itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Remote {
    /// The engine's query API base (`http://vm:8428`, a Mimir's `.../prometheus`).
    pub query_url: String,
    /// Sent with every request: a tenant's `X-Scope-OrgID`, an `Authorization`.
    pub headers: Vec<(String, String)>,
    /// `bearer_token_file`: read at start, sent as `Authorization: Bearer ...`.
    pub bearer_token_file: Option<PathBuf>,
    /// `basic_auth = { username, password_file }`: sent as `Authorization: Basic ...`.
    pub basic_auth: Option<(String, PathBuf)>,
    /// One request's time limit (`query_timeout`, default 10s).
    pub timeout_ms: i64,
    /// `write_url`: everything ingested (and recorded) is forwarded there with remote-write 1.0.
    pub write_url: Option<String>,
    /// `queue_dir`: where the window's log lives, which is the forwarding queue (default
    /// `<state_dir>/wal`).
    pub queue_dir: Option<PathBuf>,
    /// `queue_max_bytes`: past this much unsent log, the oldest is dropped (default 1GiB).
    pub queue_max_bytes: u64,
    /// `shards`: concurrent senders (series keep their order: each goes to one shard).
    pub shards: usize,
    /// `sigv4 = { region, service }`: sign requests (Amazon Managed Service for Prometheus);
    /// the region defaults to `[aws] region`, the service to `aps`.
    pub sigv4: Option<SigV4>,
    /// `evaluation = "engine"`: rule, scaling and replacement expressions are sent whole to the
    /// engine's query API (for engines that evaluate PromQL exactly: Prometheus, Mimir, Thanos,
    /// Amazon Managed Service for Prometheus), except those reading what the rules write
    /// themselves. Default `"samples"`: Vigil's engine over the raw samples.
    pub whole_expressions: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SigV4 {
    pub region: Option<String>,
    pub service: String,
}

fn parse_remote(doc: &mut Doc<'_>, mut r: Obj<'_, '_>) -> Option<Remote> {
    let query_url = r.req_str(doc, "query_url");
    if let Some(u) = &query_url {
        if !(u.value.starts_with("http://") || u.value.starts_with("https://")) {
            doc.error_at(
                u.span.start,
                "storage.remote.query_url: expected an http:// or https:// URL",
            );
        }
    }
    let headers = r
        .str_map(doc, "headers")
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.value))
        .collect();
    let bearer_token_file = r
        .str(doc, "bearer_token_file")
        .map(|f| PathBuf::from(f.value));
    let basic_auth = r.table(doc, "basic_auth").and_then(|mut t| {
        let user = t.req_str(doc, "username");
        let file = t.req_str(doc, "password_file");
        t.finish(doc);
        Some((user?.value, PathBuf::from(file?.value)))
    });
    if let (Some(_), Some(_)) = (&bearer_token_file, &basic_auth) {
        let at = r.span().start;
        doc.error_at(
            at,
            "storage.remote: bearer_token_file and basic_auth exclude each other",
        );
    }
    let timeout_ms = r.positive_duration(doc, "query_timeout", 10_000);
    let write_url = r.str(doc, "write_url").map(|u| {
        if !(u.value.starts_with("http://") || u.value.starts_with("https://")) {
            doc.error_at(
                u.span.start,
                "storage.remote.write_url: expected an http:// or https:// URL",
            );
        }
        u.value
    });
    let queue_dir = r.str(doc, "queue_dir").map(|d| PathBuf::from(d.value));
    let mut queue_max_bytes = 1 << 30;
    if let Some(q) = r.str(doc, "queue_max_bytes") {
        match vigil_config::size::parse_bytes(&q.value) {
            Ok(n) if n >= 1 << 20 => queue_max_bytes = n,
            Ok(_) => doc.error_at(
                q.span.start,
                "storage.remote.queue_max_bytes: at least 1MiB",
            ),
            Err(e) => doc.error_at(q.span.start, format!("storage.remote.queue_max_bytes: {e}")),
        }
    }
    let mut shards = 4;
    if let Some(n) = r.int(doc, "shards") {
        if (1..=64).contains(&n.value) {
            shards = n.value as usize;
        } else {
            doc.error_at(n.span.start, "storage.remote.shards: 1 to 64");
        }
    }
    let sigv4 = r.table(doc, "sigv4").map(|mut t| {
        let region = t.str(doc, "region").map(|v| v.value);
        let service = t.str(doc, "service").map_or("aps".to_string(), |v| v.value);
        t.finish(doc);
        SigV4 { region, service }
    });
    let mut whole_expressions = false;
    if let Some(e) = r.str(doc, "evaluation") {
        match e.value.as_str() {
            "samples" => {}
            "engine" => whole_expressions = true,
            other => doc.error_at(
                e.span.start,
                format!(
                    "storage.remote.evaluation: expected \"samples\" or \"engine\", not {other:?}"
                ),
            ),
        }
    }
    r.finish(doc);
    Some(Remote {
        query_url: query_url?.value,
        headers,
        bearer_token_file,
        basic_auth,
        timeout_ms,
        write_url,
        queue_dir,
        queue_max_bytes,
        shards,
        sigv4,
        whole_expressions,
    })
}

pub(super) fn parse(doc: &mut Doc<'_>, mut s: Obj<'_, '_>, c: &mut Config) {
    c.retention_ms = s.positive_duration(doc, "retention", c.retention_ms);
    c.stale_after_ms = s.positive_duration(doc, "stale_after", c.stale_after_ms);
    if let Some(d) = s.str(doc, "state_dir") {
        c.state_dir = PathBuf::from(d.value);
    }
    if let Some(b) = s.bool(doc, "wal") {
        c.wal.enabled = b.value;
    }
    if let Some(b) = s.bool(doc, "wal_fsync") {
        c.wal.fsync = b.value;
    }
    c.wal.checkpoint_interval_ms =
        s.positive_duration(doc, "checkpoint_interval", c.wal.checkpoint_interval_ms);
    let backend = s.str(doc, "backend");
    let remote = s.table(doc, "remote").and_then(|r| parse_remote(doc, r));
    match backend.as_ref().map(|b| b.value.as_str()) {
        None | Some("memory") => {
            if remote.is_some() {
                let at = s.span().start;
                doc.error_at(
                    at,
                    "[storage.remote] is set but storage.backend is not \"remote\"",
                );
            }
        }
        Some("remote") => {
            if remote.as_ref().is_some_and(|r| r.write_url.is_some()) && !c.wal.enabled {
                let at = backend.as_ref().map_or(0, |b| b.span.start);
                doc.error_at(at, "storage.remote.write_url forwards from the window's log: it needs [storage] wal = true");
            }
            if remote.is_none() {
                let at = backend.as_ref().map_or(0, |b| b.span.start);
                doc.error_at(
                    at,
                    "storage.backend = \"remote\" needs [storage.remote] with query_url",
                );
            }
            c.remote = remote;
        }
        Some(other) => {
            let at = backend.as_ref().map_or(0, |b| b.span.start);
            doc.error_at(
                at,
                format!("storage.backend: expected \"memory\" or \"remote\", not {other:?}"),
            );
        }
    }
    s.finish(doc);
}
