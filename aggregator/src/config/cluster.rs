//! `[cluster]`: one of an HA group on a DynamoDB lease (see SPEC "High availability").

use vigil_config::tomlread::{Doc, Obj};

use super::{host_port, Config};

/// `[cluster]`: the HA pair's lease and shared decision state.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub node_id: String,
    pub lease_table: String,
    pub lease_name: String,
    pub lease_ttl_ms: i64,
    pub state_table: String,
    pub create_tables: bool,
    /// Where the other nodes reach this one's API (carried in the lease item): default
    /// `server.listen`, with an unspecified address replaced by the host name.
    pub advertise_address: String,
}

impl Cluster {
    /// The longest an AWS effect call (and each DynamoDB call) may take: a quarter of the
    /// lease, so that a call begun just before the holder's deadline has ended before anyone
    /// else could hold the lease.
    pub fn call_timeout_ms(&self) -> i64 {
        self.lease_ttl_ms / 4
    }
}

/// DynamoDB table names: 3 to 255 of `[A-Za-z0-9_.-]`.
fn valid_table(name: &str) -> bool {
    (3..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

pub(super) fn parse(
    doc: &mut Doc<'_>,
    mut k: Obj<'_, '_>,
    c: &mut Config,
    explicit_aws_timeouts: &[(&str, usize)],
) {
    let k_start = k.span().start;
    let mut cl = Cluster {
        node_id: vigil_config::hostname(),
        lease_table: "vigil-leases".into(),
        lease_name: String::new(),
        lease_ttl_ms: 10_000,
        state_table: "vigil-state".into(),
        create_tables: false,
        advertise_address: String::new(),
    };
    if let Some(n) = k.str(doc, "node_id") {
        if n.value.is_empty() || n.value.len() > 128 {
            doc.error_at(n.span.start, "cluster.node_id: 1 to 128 characters");
        }
        cl.node_id = n.value;
    }
    for (key, slot) in [
        ("lease_table", &mut cl.lease_table),
        ("state_table", &mut cl.state_table),
    ] {
        if let Some(t) = k.str(doc, key) {
            if !valid_table(&t.value) {
                doc.error_at(
                    t.span.start,
                    format!(
                        "cluster.{key}: a DynamoDB table name (3 to 255 of A-Z a-z 0-9 _ . -), got {:?}",
                        t.value
                    ),
                );
            }
            *slot = t.value;
        }
    }
    if let Some(n) = k.req_str(doc, "lease_name") {
        if n.value.is_empty() || n.value.contains('#') || n.value.len() > 200 {
            doc.error_at(
                n.span.start,
                "cluster.lease_name: 1 to 200 characters, without '#'",
            );
        }
        cl.lease_name = n.value;
    }
    if let Some(t) = k.duration(doc, "lease_ttl") {
        if t.value < 2_000 {
            doc.error_at(t.span.start, "cluster.lease_ttl: at least 2s");
        }
        cl.lease_ttl_ms = t.value;
    }
    if let Some(b) = k.bool(doc, "create_tables") {
        cl.create_tables = b.value;
    }
    if let Some(a) = k.str(doc, "advertise_address") {
        if host_port(&a.value) {
            cl.advertise_address = a.value;
        } else {
            doc.error_at(
                a.span.start,
                format!("cluster.advertise_address: expected host:port (a name or an address the other nodes reach, and a port), got {:?}", a.value),
            );
        }
    }
    k.finish(doc);
    if cl.advertise_address.is_empty() {
        // A StatefulSet sets it from the pod's name (`$(POD_NAME).vigil-aggregator:9470`).
        if let Ok(a) = std::env::var("VIGIL_ADVERTISE_ADDRESS") {
            if host_port(&a) {
                cl.advertise_address = a;
            } else {
                doc.error_at(
                    k_start,
                    format!("VIGIL_ADVERTISE_ADDRESS: expected host:port, got {a:?}"),
                );
            }
        }
    }
    if cl.advertise_address.is_empty() {
        cl.advertise_address = if c.listen.ip().is_unspecified() {
            format!("{}:{}", vigil_config::hostname(), c.listen.port())
        } else {
            c.listen.to_string()
        };
    }
    // Every effect call must end inside the lease (SPEC "High availability"): the AWS
    // timeouts default to a quarter of it, and may not exceed that.
    let cap = cl.call_timeout_ms();
    for (key, slot) in [
        ("attempt_timeout", &mut c.aws_attempt_timeout_ms),
        ("call_timeout", &mut c.aws_call_timeout_ms),
    ] {
        let explicit = explicit_aws_timeouts.iter().find(|(k, _)| *k == key);
        if let (true, Some((_, at))) = (*slot > cap, explicit) {
            doc.error_at(
                *at,
                format!(
                    "aws.{key}: at most a quarter of cluster.lease_ttl ({cap} ms) in a cluster, so that a call begun before the holder's deadline ends inside its lease"
                ),
            );
        }
        *slot = (*slot).min(cap);
    }
    if !c.aws_configured {
        doc.error_at(
            k_start,
            "cluster: the lease lives in DynamoDB; give [aws] (region, and endpoint_url for a local one)",
        );
    }
    c.cluster = Some(cl);
}
