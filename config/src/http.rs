//! A small HTTP client over hyper (HTTP/1.1, TLS through rustls with the system's roots), with
//! a timeout on the whole exchange and a cap on response bodies; and the HTTP/1.1 server loop
//! the agent's self-metrics and the aggregator's API share.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid request: {0}")]
    Request(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Transport(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("response body larger than {0} bytes")]
    TooLarge(usize),
}

/// A response: status, headers and the whole body.
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

type TlsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Plain HTTP always; TLS (and the system's root certificates, which cost memory) only once an
/// `https://` URL is used.
#[derive(Clone)]
pub struct Http {
    plain: Client<HttpConnector, Full<Bytes>>,
    tls: Arc<OnceLock<Result<TlsClient, String>>>,
}

impl Http {
    pub fn new() -> Result<Http, HttpError> {
        let plain = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(2)
            .build(HttpConnector::new());
        Ok(Http {
            plain,
            tls: Arc::new(OnceLock::new()),
        })
    }

    /// A client whose `https://` requests trust `files.ca_file` (else the system's roots) and
    /// present `files.cert_file` when the server asks (mTLS); the files are read now.
    pub fn with_tls(files: &crate::tls::ClientFiles) -> Result<Http, HttpError> {
        let cfg = files.config().map_err(HttpError::Tls)?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(cfg)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(2)
            .build(https);
        let http = Http::new()?;
        let _ = http.tls.set(Ok(client));
        Ok(http)
    }

    fn tls(&self) -> Result<&TlsClient, HttpError> {
        self.tls
            .get_or_init(|| {
                // The provider named (the aggregator links two; rustls will not pick one).
                let cfg = crate::tls::ClientFiles::default().config()?;
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(cfg)
                    .https_or_http()
                    .enable_http1()
                    .build();
                Ok(Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(30))
                    .pool_max_idle_per_host(2)
                    .build(https))
            })
            .as_ref()
            .map_err(|e| HttpError::Transport(e.clone()))
    }

    /// Sends a request and reads the response, all within `timeout`; bodies above `max_body`
    /// bytes are refused.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Response, HttpError> {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| HttpError::Request(e.to_string()))?;
            let value = HeaderValue::from_str(v).map_err(|e| HttpError::Request(e.to_string()))?;
            req = req.header(name, value);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| HttpError::Request(e.to_string()))?;
        let exchange = async {
            let resp = if url.starts_with("https://") {
                self.tls()?.request(req).await
            } else {
                self.plain.request(req).await
            }
            .map_err(|e| HttpError::Transport(error_chain(&e)))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, max_body)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        HttpError::TooLarge(max_body)
                    } else {
                        HttpError::Transport(e.to_string())
                    }
                })?
                .to_bytes();
            Ok(Response {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| HttpError::Timeout(timeout))?
    }
}

/// The error and its causes on one line ("connection refused" is buried a level or two down).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Serves HTTP/1.1 on `listener` until the process ends, one task per connection, each request
/// answered by `handle`.
pub async fn serve<F, Fut>(listener: tokio::net::TcpListener, handle: F)
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = hyper::Response<Full<Bytes>>> + Send + 'static,
{
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let fut = handle(req);
                async move { Ok::<_, std::convert::Infallible>(fut.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}
