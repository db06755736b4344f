//! HTTPS on the API's port (`[server] tls_cert_file`, `tls_key_file`), TLS 1.2 and 1.3 only,
//! with optional mTLS (`client_ca_file`): a client certificate is asked for at the handshake
//! but optional there (Grafana, amtool, browsers and kubelet probes connect without one), and
//! `/api/v1/write` requires one signed by that CA (see `api/mod.rs`). The files are re-read on
//! SIGHUP; a new pair that cannot be used keeps the old one, and says why. A reload drops no
//! connection: one accepted before it has its request answered, with `connection: close`, and
//! the client's next handshake meets the new files.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use vigil_config::tls::{certs, key, provider, roots};

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::IntoResponse;

use crate::config::ServerTls;

/// What a request knows of its connection: whether the client presented a certificate the
/// `client_ca_file` CA signed (the handshake verified it; a bad one fails the handshake), and
/// whether the files were re-read since that handshake.
#[derive(Debug, Clone, Default)]
pub struct ClientCert {
    pub verified: bool,
    /// The generation of the files the handshake used, and the current one.
    accepted_with: u64,
    current: Arc<AtomicU64>,
}

impl ClientCert {
    /// Whether the connection was accepted before the last reload: its request is answered,
    /// then the connection closed, so that the client's next handshake meets the new
    /// certificate and the new client CA (a CA no longer trusted stops being trusted at the
    /// next request, not when the keep-alive connection happens to end).
    pub fn stale(&self) -> bool {
        self.current.load(Ordering::Acquire) != self.accepted_with
    }
}

/// A request on a TLS connection accepted before the certificate files were re-read: answered,
/// then the connection closed (see [`ClientCert::stale`]).
pub async fn close_if_stale(req: Request, next: Next) -> axum::response::Response {
    let stale = req
        .extensions()
        .get::<ClientCert>()
        .is_some_and(ClientCert::stale);
    let mut r = next.run(req).await;
    if stale {
        r.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
    }
    r
}

/// Under mTLS, a write on a connection whose certificate was verified against a client CA since
/// re-read: nothing is stored on the old verdict. 503 (a sender retries it at once), and the
/// connection closes (by [`close_if_stale`]): the retry's handshake meets the current CA.
pub fn refuse_stale_write(req: &Request) -> Option<axum::response::Response> {
    if !req
        .extensions()
        .get::<ClientCert>()
        .is_some_and(ClientCert::stale)
    {
        return None;
    }
    let mut r = super::respond(
        hyper::StatusCode::SERVICE_UNAVAILABLE,
        "text/plain",
        "the TLS files were re-read since this connection's handshake: reconnect\n",
    );
    r.headers_mut()
        .insert("retry-after", hyper::header::HeaderValue::from_static("0"));
    Some(r.into_response())
}

pub struct Tls {
    files: ServerTls,
    current: ArcSwap<ServerConfig>,
    /// Successful re-reads so far.
    generation: Arc<AtomicU64>,
}

/// The first byte of a TLS handshake record; a plain HTTP request starts with a method's letter.
const HANDSHAKE: u8 = 0x16;

const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: 48\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

impl Tls {
    /// Reads the files; an error names the file.
    pub fn load(files: &ServerTls) -> Result<Tls, String> {
        Ok(Tls {
            current: ArcSwap::from_pointee(build(files)?),
            files: files.clone(),
            generation: Arc::default(),
        })
    }

    /// Re-reads the files; on an error the previous certificate stays in use.
    pub fn reload(&self) -> Result<(), String> {
        let cfg = build(&self.files)?;
        // The config first: a connection accepted between the two is merely closed once more.
        self.current.store(Arc::new(cfg));
        // Release: a handshake that reads the new generation (Acquire) also sees the new config.
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Whether writes need a client certificate.
    pub fn mtls(&self) -> bool {
        self.files.client_ca_file.is_some()
    }

    /// The handshake, within `timeout`. A client speaking plain HTTP gets a 400 that says so
    /// (as Go's servers answer) instead of a dropped connection.
    pub async fn accept(
        &self,
        stream: TcpStream,
        timeout: Duration,
    ) -> Result<(TlsStream<TcpStream>, ClientCert), String> {
        let accepted_with = self.generation.load(Ordering::Acquire);
        let acceptor = TlsAcceptor::from(self.current.load_full());
        let work = async {
            let mut first = [0u8; 1];
            let n = stream.peek(&mut first).await.map_err(|e| e.to_string())?;
            if n == 1 && first[0] != HANDSHAKE {
                let mut stream = stream;
                let _ = stream.write_all(PLAIN_HTTP_ANSWER).await;
                let _ = stream.shutdown().await;
                return Err("plain HTTP on the TLS port".to_string());
            }
            let tls = acceptor.accept(stream).await.map_err(|e| e.to_string())?;
            let verified = tls
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|c| !c.is_empty());
            let cert = ClientCert {
                verified,
                accepted_with,
                current: self.generation.clone(),
            };
            Ok((tls, cert))
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| "TLS handshake timed out".to_string())?
    }
}

fn build(files: &ServerTls) -> Result<ServerConfig, String> {
    let chain = certs(&files.cert_file)?;
    let key = key(&files.key_file)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &files.client_ca_file {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "{} and {}: {e}",
            files.cert_file.display(),
            files.key_file.display()
        )
    })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}
