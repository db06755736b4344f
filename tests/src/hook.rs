//! Plain HTTP/1.1 on the server side for the harness: reading one request off a connection, and
//! a webhook receiver (Slack incoming webhook, Alertmanager-style) that records what it is sent
//! and answers with a status the test sets.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as read off the wire.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one request (Content-Length bodies); `None` at the end of the connection.
pub fn read_request(r: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        // Read the chunks; hand the request on with a plain Content-Length.
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        headers.retain(|(k, _)| {
            !k.eq_ignore_ascii_case("transfer-encoding")
                && !k.eq_ignore_ascii_case("content-length")
        });
        headers.push(("Content-Length".into(), body.len().to_string()));
        body
    } else {
        let len = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0usize);
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).ok()?;
        body
    };
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

#[derive(Default)]
struct HookState {
    /// Requests answered 2xx.
    received: Vec<(Instant, Request)>,
    /// Every request, with the status it was answered.
    attempts: Vec<(Instant, u16)>,
    status: u16,
}

/// Records every POST; answers `status` (200 unless set).
pub struct Hook {
    pub port: u16,
    state: Arc<Mutex<HookState>>,
}

impl Hook {
    pub fn start() -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(Mutex::new(HookState {
            status: 200,
            ..Default::default()
        }));
        let st = state.clone();
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let st = st.clone();
                std::thread::spawn(move || {
                    let Ok(mut w) = s.try_clone() else { return };
                    let mut r = BufReader::new(s);
                    while let Some(req) = read_request(&mut r) {
                        let status = {
                            let mut g = st.lock().expect("lock");
                            let status = g.status;
                            g.attempts.push((Instant::now(), status));
                            if status < 300 {
                                g.received.push((Instant::now(), req));
                            }
                            status
                        };
                        let resp = format!("HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\nok");
                        if w.write_all(resp.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Hook { port, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Answer every request with this status from now on (non-2xx ones are not recorded).
    pub fn set_status(&self, status: u16) {
        self.state.lock().expect("lock").status = status;
    }

    /// Every request so far (refused ones too): when, and the status it got.
    pub fn attempts(&self) -> Vec<(Instant, u16)> {
        self.state.lock().expect("lock").attempts.clone()
    }

    /// Bodies received so far, parsed as JSON, with their paths.
    pub fn bodies(&self) -> Vec<(String, serde_json::Value)> {
        self.state
            .lock()
            .expect("lock")
            .received
            .iter()
            .map(|(_, r)| {
                (
                    r.path.clone(),
                    serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null),
                )
            })
            .collect()
    }

    /// Waits until `pred` holds over the bodies received.
    pub fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&[(String, serde_json::Value)]) -> bool,
    ) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if pred(&self.bodies()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        pred(&self.bodies())
    }
}
