//! HTTPS and mTLS between the agent and the aggregator, with certificates from `openssl` and
//! `curl` as the independent client: who is refused, certificates replaced on disk without a
//! restart, and the token never in a log.

use std::process::Command;
use std::time::Duration;

use vigil_e2e::tls::{ca, curl, leaf, served_serial};
use vigil_e2e::{bin, free_port, tempdir, wait_until, Child};

const TOKEN: &str = "tok-3f9a1c7e-never-in-a-log";

#[test]
fn an_agent_pushes_over_mtls_and_everyone_else_is_refused() {
    vigil_e2e::secret(TOKEN);
    let dir = tempdir("tls");
    let d = dir.path();
    let pki = d.join("pki");
    std::fs::create_dir_all(&pki).expect("pki");
    let ca1 = ca(&pki, "ca");
    let other = ca(&pki, "other-ca");
    let server = leaf(&pki, &ca1, "server", true);
    let server2 = leaf(&pki, &ca1, "server2", true);
    let client = leaf(&pki, &ca1, "client", false);
    let stranger = leaf(&pki, &other, "stranger", false);
    let ca3 = ca(&pki, "ca3");
    let client3 = leaf(&pki, &ca3, "client3", false);

    // The aggregator serves the files at these paths; the test replaces them later.
    let (cert, key) = (d.join("tls.pem"), d.join("tls.key"));
    std::fs::copy(&server.cert, &cert).expect("cert");
    std::fs::copy(&server.key, &key).expect("key");
    let client_ca = d.join("client-ca.pem");
    std::fs::copy(&ca1.cert, &client_ca).expect("client ca");
    std::fs::write(d.join("token"), format!("{TOKEN}\n")).expect("token");
    std::fs::write(d.join("rules.toml"), "").expect("rules");
    let port = free_port();
    let cfg = d.join("aggregator.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[server]
listen = "127.0.0.1:{port}"
auth_token_file = "{token}"
tls_cert_file = "{cert}"
tls_key_file = "{key}"
client_ca_file = "{ca}"

[storage]
state_dir = "{state}"

[rules]
files = ["{rules}"]
evaluation_interval = "1s"
"#,
            token = d.join("token").display(),
            cert = cert.display(),
            key = key.display(),
            ca = client_ca.display(),
            state = d.join("state").display(),
            rules = d.join("rules.toml").display(),
        ),
    )
    .expect("config");
    let agg = Child::spawn(
        "aggregator",
        Command::new(bin("vigil-aggregator"))
            .arg("--config")
            .arg(&cfg),
        d,
    );
    let base = format!("https://127.0.0.1:{port}");
    let ca_path = ca1.cert.as_path();
    // Probes and readers connect without a client certificate.
    wait_until(
        Duration::from_secs(60),
        "the aggregator to answer over HTTPS",
        || curl(&format!("{base}/-/ready"), Some(ca_path), None, &[], None).0 == 200,
        || agg.log_text(),
    );

    // The agent starts trusting the wrong CA: its pushes fail the server's certificate. Then
    // the right CA is written over its ca_file, and it pushes without a restart.
    let agent_ca = d.join("agent-ca.pem");
    std::fs::copy(&other.cert, &agent_ca).expect("agent ca");
    let (agent_cert, agent_key) = (d.join("agent.pem"), d.join("agent.key"));
    std::fs::copy(&client.cert, &agent_cert).expect("agent cert");
    std::fs::copy(&client.key, &agent_key).expect("agent key");
    let agent_cfg = d.join("agent.toml");
    std::fs::write(
        &agent_cfg,
        format!(
            r#"[agent]
interval = "1s"

[identity]
source = "static"
instance = "i-tls"
asg = "web"

[[push]]
url = "{base}/api/v1/write"
token_file = "{token}"
ca_file = "{agent_ca}"
cert_file = "{cert}"
key_file = "{key}"
timeout = "5s"

[buffer]
dir = "{spool}"

[listen]
address = "127.0.0.1:{listen}"
"#,
            token = d.join("token").display(),
            agent_ca = agent_ca.display(),
            cert = agent_cert.display(),
            key = agent_key.display(),
            spool = d.join("spool").display(),
            listen = free_port(),
        ),
    )
    .expect("agent config");
    let agent = Child::spawn(
        "agent",
        Command::new(bin("vigil-agent"))
            .arg("--config")
            .arg(&agent_cfg),
        d,
    );
    let query = format!("{base}/api/v1/query?query=node_load1");
    let arrived = || {
        let (code, body) = curl(&query, Some(ca_path), None, &[], None);
        code == 200 && body.contains("i-tls")
    };
    wait_until(
        Duration::from_secs(60),
        "the agent's push refused for the server's certificate",
        || agent.log_text().contains("invalid peer certificate"),
        || agent.log_text(),
    );
    assert!(!arrived(), "pushed through a certificate it must not trust");
    std::fs::copy(&ca1.cert, &agent_ca).expect("the right CA");
    wait_until(
        Duration::from_secs(60),
        "samples over mTLS after the CA file changed",
        arrived,
        || format!("{}\n{}", agent.log_text(), agg.log_text()),
    );
    assert!(agent
        .log_text()
        .contains("TLS files changed: using the new ones"));

    // Everyone else is refused.
    let write = format!("{base}/api/v1/write");
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let body: &[u8] = b"not snappy";
    // No client certificate: 403, the token notwithstanding.
    let (code, text) = curl(&write, Some(ca_path), None, &[&bearer], Some(body));
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("client certificate"), "{text}");
    // A certificate of another CA: the handshake fails.
    let (code, text) = curl(
        &write,
        Some(ca_path),
        Some(&stranger),
        &[&bearer],
        Some(body),
    );
    assert_eq!(code, 0, "{text}");
    // The right certificate, a wrong token: 401.
    let (code, text) = curl(
        &write,
        Some(ca_path),
        Some(&client),
        &["Authorization: Bearer wrong"],
        Some(body),
    );
    assert_eq!(code, 401, "{text}");
    // Both right: past the checks (a body that is not snappy is the sender's fault: 400).
    let (code, text) = curl(&write, Some(ca_path), Some(&client), &[&bearer], Some(body));
    assert_eq!(code, 400, "{text}");
    // Plain HTTP to the TLS port: told so.
    let (code, text) = curl(
        &format!("http://127.0.0.1:{port}/-/healthy"),
        None,
        None,
        &[],
        None,
    );
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("HTTP request to an HTTPS server"), "{text}");
    // Both failed handshakes are counted (the certificate of another CA, plain HTTP).
    let m = curl(&format!("{base}/metrics"), Some(ca_path), None, &[], None).1;
    let failed = vigil_e2e::http::metric_value(&m, "vigil_aggregator_tls_handshake_failures_total");
    assert!(failed.is_some_and(|n| n >= 2.0), "{failed:?}");

    // A new certificate on disk is served after SIGHUP; a bad one keeps the last good one.
    let first = served_serial(port);
    assert!(!first.is_empty());
    std::fs::copy(&server2.cert, &cert).expect("cert");
    std::fs::copy(&server2.key, &key).expect("key");
    agg.signal("HUP");
    let want = vigil_e2e::tls::serial(&std::fs::read_to_string(&server2.cert).expect("pem"));
    assert_ne!(want, first);
    wait_until(
        Duration::from_secs(30),
        "the new certificate served",
        || served_serial(port) == want,
        || agg.log_text(),
    );
    std::fs::write(&cert, "not a certificate\n").expect("cert");
    agg.signal("HUP");
    wait_until(
        Duration::from_secs(30),
        "the bad certificate reported",
        || agg.log_text().contains("TLS files re-read failed"),
        || agg.log_text(),
    );
    assert_eq!(served_serial(port), want);
    let accepted = || {
        let m = curl(&format!("{base}/metrics"), Some(ca_path), None, &[], None).1;
        vigil_e2e::http::metric_value(&m, r#"vigil_aggregator_write_requests_total{code="204"}"#)
            .unwrap_or(0.0)
    };
    let before = accepted();
    wait_until(
        Duration::from_secs(30),
        "the agent still pushing (three more accepted writes)",
        || accepted() >= before + 3.0,
        || agg.log_text(),
    );

    // The writers' CA changes (client_ca_file re-read on SIGHUP): the agent's certificate of
    // the old CA is refused at the handshake; a certificate of the new CA written over its
    // cert_file and key_file is used without a restart.
    std::fs::copy(&server2.cert, &cert).expect("cert");
    std::fs::copy(&ca3.cert, &client_ca).expect("client ca");
    let reloads = || {
        agg.log_text()
            .matches("TLS certificate and key re-read")
            .count()
    };
    let reloaded_before = reloads();
    agg.signal("HUP");
    wait_until(
        Duration::from_secs(30),
        "the client CA re-read",
        || reloads() > reloaded_before,
        || agg.log_text(),
    );
    // From here no write of the old CA's certificate is stored, not even one on a connection
    // accepted before the reload (it is answered 503 and closed).
    let after_reload = accepted();
    let handshakes = || {
        let m = curl(&format!("{base}/metrics"), Some(ca_path), None, &[], None).1;
        vigil_e2e::http::metric_value(&m, "vigil_aggregator_tls_handshake_failures_total")
            .unwrap_or(0.0)
    };
    let failed_before = handshakes();
    wait_until(
        Duration::from_secs(30),
        "the agent's certificate of the old CA refused (three failed handshakes)",
        || handshakes() >= failed_before + 3.0,
        || format!("{}\n{}", agent.log_text(), agg.log_text()),
    );
    let stalled = accepted();
    assert_eq!(
        stalled, after_reload,
        "a write stored on the old client CA's verdict"
    );
    // Replaced as a deployment tool does: written aside, renamed over.
    for (from, to) in [(&client3.key, &agent_key), (&client3.cert, &agent_cert)] {
        let aside = to.with_extension("new");
        std::fs::copy(from, &aside).expect("copy");
        std::fs::rename(&aside, to).expect("rename");
    }
    wait_until(
        Duration::from_secs(60),
        "the agent pushing with its new certificate (three more accepted writes)",
        || accepted() >= stalled + 3.0,
        || format!("{}\n{}", agent.log_text(), agg.log_text()),
    );
    assert!(
        agent
            .log_text()
            .matches("TLS files changed: using the new ones")
            .count()
            >= 2,
        "{}",
        agent.log_text()
    );

    // The token is in no log.
    for (name, log) in [("aggregator", agg.log_text()), ("agent", agent.log_text())] {
        assert!(
            !log.contains(TOKEN),
            "the token leaked into the {name}'s log"
        );
    }
}

/// A pair under TLS: a reload sent to the follower reaches the leader over HTTPS (the admin
/// token never crosses in clear), the leader's certificate checked against the trust store
/// (`SSL_CERT_FILE` here, as an operator with a private CA would set it).
#[test]
fn a_follower_passes_admin_writes_to_the_leader_over_https() {
    const ADMIN: &str = "adm-6a2f-forwarded-never-logged";
    vigil_e2e::secret(ADMIN);
    let dir = tempdir("tls-pair");
    let d = dir.path();
    let pki = d.join("pki");
    std::fs::create_dir_all(&pki).expect("pki");
    let ca1 = ca(&pki, "ca");
    let server = leaf(&pki, &ca1, "server", true);
    let moto = vigil_e2e::aws::Moto::start(d);
    std::fs::write(d.join("admin"), format!("{ADMIN}\n")).expect("token");
    std::fs::write(d.join("rules.toml"), "").expect("rules");
    let node = |name: &str| {
        let port = free_port();
        let cfg = d.join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                r#"[server]
listen = "127.0.0.1:{port}"
admin_token_file = "{admin}"
tls_cert_file = "{cert}"
tls_key_file = "{key}"

[storage]
state_dir = "{state}"

[rules]
files = ["{rules}"]
evaluation_interval = "1s"

[aws]
region = "us-east-1"
endpoint_url = "{moto}"

[cluster]
node_id = "{name}"
lease_name = "tls-tier"
lease_ttl = "12s"
create_tables = true
"#,
                admin = d.join("admin").display(),
                cert = server.cert.display(),
                key = server.key.display(),
                state = d.join(format!("state-{name}")).display(),
                rules = d.join("rules.toml").display(),
                moto = moto.url(),
            ),
        )
        .expect("config");
        (cfg, format!("https://127.0.0.1:{port}"))
    };
    let start = |cfg: &std::path::Path, name: &str| {
        Child::spawn(
            name,
            Command::new(bin("vigil-aggregator"))
                .arg("--config")
                .arg(cfg)
                .envs(vigil_e2e::aws::ENV)
                .env("SSL_CERT_FILE", &ca1.cert),
            d,
        )
    };
    let ca_path = ca1.cert.as_path();
    let cluster = |base: &str| -> serde_json::Value {
        let (code, body) = curl(
            &format!("{base}/api/v1/cluster"),
            Some(ca_path),
            None,
            &[],
            None,
        );
        if code != 200 {
            return serde_json::Value::Null;
        }
        serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default()["data"].clone()
    };
    let (cfg_a, a_base) = node("agg-a");
    let (cfg_b, b_base) = node("agg-b");
    let a = start(&cfg_a, "agg-a");
    wait_until(
        Duration::from_secs(90),
        "agg-a to act as the leader",
        || cluster(&a_base)["acting"] == true,
        || a.log_text(),
    );
    let b = start(&cfg_b, "agg-b");
    wait_until(
        Duration::from_secs(90),
        "agg-b to follow agg-a",
        || {
            let c = cluster(&b_base);
            c["role"] == "follower" && c["leader"] == "agg-a"
        },
        || b.log_text(),
    );
    let reload = format!("{b_base}/-/reload");
    let admin = format!("Authorization: Bearer {ADMIN}");
    let (code, body) = curl(&reload, Some(ca_path), None, &[&admin], Some(b""));
    assert_eq!(code, 200, "{body}\n{}", b.log_text());
    assert!(
        body.contains("this node (agg-b): reloaded") && body.contains("the leader (agg-a "),
        "{body}"
    );
    assert!(
        a.log_text().contains("admin request"),
        "the leader audited nothing:\n{}",
        a.log_text()
    );
    // A wrong token is refused by the follower and never passed on.
    let audited = a.log_text().matches("admin request").count();
    let (code, _) = curl(
        &reload,
        Some(ca_path),
        None,
        &["Authorization: Bearer no"],
        Some(b""),
    );
    assert_eq!(code, 401);
    assert_eq!(a.log_text().matches("admin request").count(), audited);
}
