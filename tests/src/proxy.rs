//! A fault-injecting HTTP proxy between the aggregator and `moto_server`: it forwards AWS calls,
//! records each one (time, action, status), and on demand refuses connections, answers 500, 503
//! or a throttling error, or holds each request for a while before forwarding it.

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::hook::{read_request, Request};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Forward everything.
    None,
    /// Nothing listens: connections are refused.
    Refuse,
    /// Answer this HTTP status with an AWS query-protocol error body.
    Status(u16),
    /// Answer 400 `Throttling`, as AWS does for the query protocol.
    Throttle,
    /// Hold each request this long, then forward it.
    Delay(Duration),
}

/// A call seen by the proxy.
#[derive(Debug, Clone)]
pub struct Call {
    /// When the request arrived at the proxy.
    pub at: Instant,
    /// The query protocol's `Action`, or the JSON protocol's `X-Amz-Target` operation.
    pub action: String,
    /// What the proxy answered (0: the connection was cut).
    pub status: u16,
    /// The body as text (gunzipped).
    pub body: String,
    /// Whether the body came gzip-compressed.
    pub gzip: bool,
}

struct Shared {
    fault: Fault,
    /// A fault for DynamoDB's calls only (JSON protocol, `X-Amz-Target: DynamoDB_…`); the
    /// others follow `fault`. `Refuse` cuts the connection at the request.
    dynamodb: Fault,
    calls: Vec<Call>,
}

pub struct Proxy {
    pub port: u16,
    upstream: u16,
    shared: Arc<Mutex<Shared>>,
    listener: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

/// The request body as text, gunzipped when the SDK compressed it (PutMetricData).
fn body_text(r: &Request) -> String {
    if r.header("content-encoding")
        .is_some_and(|e| e.eq_ignore_ascii_case("gzip"))
    {
        let mut out = String::new();
        if flate2::read::GzDecoder::new(&r.body[..])
            .read_to_string(&mut out)
            .is_ok()
        {
            return out;
        }
    }
    String::from_utf8_lossy(&r.body).into_owned()
}

fn action_of(r: &Request, body: &str) -> String {
    if let Some(t) = r.header("x-amz-target") {
        return t.rsplit('.').next().unwrap_or(t).to_string();
    }
    body.split('&')
        .find_map(|kv| kv.strip_prefix("Action="))
        .unwrap_or("")
        .to_string()
}

/// An error as DynamoDB's JSON protocol answers it.
fn json_error_response(status: u16, code: &str) -> Vec<u8> {
    let body = format!(
        "{{\"__type\":\"com.amazonaws.dynamodb.v20120810#{code}\",\"message\":\"injected by the test proxy\"}}"
    );
    format!(
        "HTTP/1.1 {status} Injected\r\nContent-Type: application/x-amz-json-1.0\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn error_response(status: u16, code: &str) -> Vec<u8> {
    let body = format!(
        "<ErrorResponse><Error><Type>Receiver</Type><Code>{code}</Code><Message>injected by the test proxy</Message></Error><RequestId>test</RequestId></ErrorResponse>"
    );
    format!(
        "HTTP/1.1 {status} Injected\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sends a request to `upstream` on a fresh connection and returns its raw response.
fn forward(upstream: u16, r: &Request) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", upstream))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!("{} {} HTTP/1.1\r\n", r.method, r.path);
    for (k, v) in &r.headers {
        if k.eq_ignore_ascii_case("connection") {
            continue;
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(&r.body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let status = String::from_utf8_lossy(&resp[..resp.len().min(20)])
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, resp))
}

fn serve(s: TcpStream, upstream: u16, shared: Arc<Mutex<Shared>>) {
    let Ok(mut w) = s.try_clone() else { return };
    let mut r = BufReader::new(s);
    while let Some(req) = read_request(&mut r) {
        let arrived = Instant::now();
        let dynamodb = req
            .header("x-amz-target")
            .is_some_and(|t| t.starts_with("DynamoDB_"));
        let fault = {
            let sh = shared.lock().expect("lock");
            if dynamodb {
                sh.dynamodb
            } else {
                sh.fault
            }
        };
        let (status, resp) = match fault {
            Fault::Status(code) if dynamodb => (
                code,
                json_error_response(
                    code,
                    if code == 503 {
                        "ServiceUnavailable"
                    } else {
                        "InternalServerError"
                    },
                ),
            ),
            Fault::Throttle if dynamodb => (400, json_error_response(400, "ThrottlingException")),
            Fault::Status(code) => (
                code,
                error_response(
                    code,
                    if code == 503 {
                        "ServiceUnavailable"
                    } else {
                        "InternalFailure"
                    },
                ),
            ),
            Fault::Throttle => (400, error_response(400, "Throttling")),
            Fault::Delay(d) => {
                std::thread::sleep(d);
                forward(upstream, &req).unwrap_or((0, Vec::new()))
            }
            // A connection opened before the refusal began is cut.
            Fault::Refuse => (0, Vec::new()),
            Fault::None => forward(upstream, &req).unwrap_or((0, Vec::new())),
        };
        let body = body_text(&req);
        shared.lock().expect("lock").calls.push(Call {
            at: arrived,
            action: action_of(&req, &body),
            status,
            body,
            gzip: req
                .header("content-encoding")
                .is_some_and(|e| e.eq_ignore_ascii_case("gzip")),
        });
        if resp.is_empty() || w.write_all(&resp).is_err() {
            return;
        }
        // The upstream's answer carries `Connection: close`; keep the client's connection
        // honest about it.
        if String::from_utf8_lossy(&resp[..resp.len().min(4096)])
            .to_ascii_lowercase()
            .contains("connection: close")
        {
            return;
        }
    }
}

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
        let port = crate::free_port();
        let p = Proxy {
            port,
            upstream,
            shared: Arc::new(Mutex::new(Shared {
                fault: Fault::None,
                dynamodb: Fault::None,
                calls: Vec::new(),
            })),
            listener: Arc::new(Mutex::new(None)),
            stop: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        p.listen();
        p
    }

    fn listen(&self) {
        use std::sync::atomic::Ordering;
        let listener = {
            let end = Instant::now() + Duration::from_secs(5);
            loop {
                match TcpListener::bind(("127.0.0.1", self.port)) {
                    Ok(l) => break l,
                    Err(e) if Instant::now() > end => panic!("proxy rebind: {e}"),
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        };
        listener.set_nonblocking(true).expect("nonblocking");
        self.stop.store(false, Ordering::SeqCst);
        let (upstream, shared, stop) = (self.upstream, self.shared.clone(), self.stop.clone());
        let h = std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let shared = shared.clone();
                        std::thread::spawn(move || serve(s, upstream, shared));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        *self.listener.lock().expect("lock") = Some(h);
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, fault: Fault) {
        use std::sync::atomic::Ordering;
        let was = std::mem::replace(&mut self.shared.lock().expect("lock").fault, fault);
        if fault == Fault::Refuse && was != Fault::Refuse {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(h) = self.listener.lock().expect("lock").take() {
                let _ = h.join();
            }
        } else if was == Fault::Refuse && fault != Fault::Refuse {
            self.listen();
        }
    }

    /// Sets the fault DynamoDB's calls meet (the others go on as they are).
    pub fn set_dynamodb(&self, fault: Fault) {
        self.shared.lock().expect("lock").dynamodb = fault;
    }

    /// Calls seen so far.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.lock().expect("lock").calls.clone()
    }

    /// Calls of one action seen so far.
    pub fn calls_of(&self, action: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.action == action)
            .collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
