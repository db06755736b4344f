//! SigV4 as Amazon Managed Service for Prometheus checks it: every request the reader makes
//! (a range-selector query, a passed-through API call) is checked by botocore, the AWS SDK for
//! Python's own signer (installed with moto by scripts/test), in a small server on 127.0.0.1.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_credential_types::Credentials;
use hyper::Method;
use vigil_remote::{QueryApi, SigV4};
use vigil_rules::promql::storage::{MatchOp, Matcher};

const ACCESS: &str = "AKIDVIGILTEST";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYVIGILKEY";

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn verifier() -> (Server, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sigv4_verify.py");
    let child = Command::new("python3")
        .args([
            script,
            ACCESS,
            SECRET,
            "us-east-1",
            "aps",
            &port.to_string(),
        ])
        .spawn()
        .expect("python3 is needed (scripts/test installs it, with botocore)");
    let mut server = Server(child);
    let end = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(st)) = server.0.try_wait() {
            panic!("the botocore verifier exited ({st}): is botocore installed (pip install moto[server])?");
        }
        assert!(Instant::now() < end, "the botocore verifier did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, format!("http://127.0.0.1:{port}/workspaces/ws-1"))
}

fn api(url: &str, secret: &str) -> QueryApi {
    let creds = Credentials::new(ACCESS, secret, None, None, "test");
    QueryApi::new(
        url,
        vec![("X-Scope-OrgID".into(), "web".into())],
        Duration::from_secs(10),
    )
    .expect("api")
    .with_signer(Arc::new(SigV4::with_credentials("us-east-1", "aps", creds)))
}

#[test]
fn requests_carry_the_signature_botocore_computes() {
    let (_server, url) = verifier();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let sel = [
        Matcher::new(MatchOp::Equal, "__name__", "up"),
        Matcher::new(MatchOp::NotEqual, "path", "/a b?c=d&e"),
    ];
    // A range-selector query (POST, form body), in two chunks.
    let got = rt
        .block_on(
            api(&url, SECRET)
                .with_chunk_ms(60_000)
                .select(&sel, 0, 100_000, &mut |_| {}),
        )
        .expect("signed query accepted");
    assert!(got.is_empty());
    // A passed-through API call (GET, query string).
    let r = rt
        .block_on(api(&url, SECRET).pass(
            Method::GET,
            "/api/v1/label/job/values?start=1&end=2&match[]=up",
            bytes::Bytes::new(),
            None,
        ))
        .expect("answer");
    assert_eq!(
        r.status.as_u16(),
        200,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    // The wrong key: refused, so the check above could fail.
    let e = rt
        .block_on(api(&url, "not-the-secret").select(&sel, 0, 1_000, &mut |_| {}))
        .expect_err("a wrong signature is refused");
    assert!(
        e.0.contains("403") && e.0.contains("signature mismatch"),
        "{}",
        e.0
    );
}
