//! A remote-write receiver for tests that records every sample it is sent — duplicates included —
//! so tests can show each sample arrived exactly once. It can be stopped (connections cut,
//! port closed) and started again on the same port to play an outage.

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

use vigil_wire::remote_write::WriteRequest;
use vigil_wire::{Labels, Sample};

#[derive(Default)]
pub struct Store {
    /// Every sample received, in arrival order.
    pub samples: Vec<(Labels, Sample)>,
    pub requests: usize,
    pub bad_requests: usize,
    /// When set, requests without `Authorization: Bearer <token>` get 401.
    pub require_token: Option<String>,
    pub unauthorized: usize,
    /// Answer this many requests with 429 and `Retry-After: <secs>` before accepting.
    pub throttle: usize,
    pub throttle_retry_after_secs: u64,
    /// Arrival times (ms since the receiver started) of every request, accepted or not.
    pub arrivals: Vec<u128>,
}

impl Store {
    /// Timestamps received per series, with how many times each arrived.
    pub fn by_series(&self) -> BTreeMap<Labels, BTreeMap<i64, usize>> {
        let mut m: BTreeMap<Labels, BTreeMap<i64, usize>> = BTreeMap::new();
        for (l, s) in &self.samples {
            *m.entry(l.clone())
                .or_default()
                .entry(s.timestamp_ms)
                .or_default() += 1;
        }
        m
    }
}

pub struct Receiver {
    pub port: u16,
    pub store: Arc<Mutex<Store>>,
    running: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    pub fn start(port: u16) -> Receiver {
        let mut r = Receiver {
            port,
            store: Arc::new(Mutex::new(Store::default())),
            running: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(Vec::new())),
            thread: None,
        };
        r.resume();
        r
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/api/v1/write", self.port)
    }

    /// (Re)opens the port and serves.
    pub fn resume(&mut self) {
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        listener.set_nonblocking(true).expect("nonblocking");
        self.running.store(true, Ordering::SeqCst);
        let (running, store, conns) =
            (self.running.clone(), self.store.clone(), self.conns.clone());
        self.thread = Some(std::thread::spawn(move || {
            while running.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(false);
                        if let Ok(c) = s.try_clone() {
                            conns.lock().expect("lock").push(c);
                        }
                        let (store, running) = (store.clone(), running.clone());
                        std::thread::spawn(move || serve(s, store, running));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }));
    }

    /// Closes the port and cuts every open connection.
    pub fn stop(&mut self) {
        self.running.store(false, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for c in self.conns.lock().expect("lock").drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(s: TcpStream, store: Arc<Mutex<Store>>, running: Arc<AtomicBool>) {
    let mut w = match s.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut r = BufReader::new(s);
    loop {
        let Some(req) = crate::hook::read_request(&mut r) else {
            return;
        };
        let auth = req.header("authorization").unwrap_or("").to_string();
        let body = req.body;
        if !running.load(Ordering::SeqCst) {
            // Stopped while the request was in flight: never answer it.
            return;
        }
        {
            let mut st = store.lock().expect("lock");
            let started = *START.get_or_init(std::time::Instant::now);
            st.arrivals.push(started.elapsed().as_millis());
            if let Some(t) = &st.require_token {
                if auth != format!("Bearer {t}") {
                    st.unauthorized += 1;
                    drop(st);
                    if w.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
            }
            if st.throttle > 0 {
                st.throttle -= 1;
                let resp = format!("HTTP/1.1 429 Too Many Requests\r\nRetry-After: {}\r\nContent-Length: 0\r\n\r\n", st.throttle_retry_after_secs);
                drop(st);
                if w.write_all(resp.as_bytes()).is_err() {
                    return;
                }
                continue;
            }
        }
        let ok = match WriteRequest::decode_snappy(&body, 64 << 20) {
            Ok(req) => {
                let mut st = store.lock().expect("lock");
                st.requests += 1;
                for ts in &req.timeseries {
                    if let Ok(l) = ts.validated_labels() {
                        for smp in ts.samples() {
                            st.samples.push((l.clone(), smp));
                        }
                    }
                }
                true
            }
            Err(_) => {
                store.lock().expect("lock").bad_requests += 1;
                false
            }
        };
        let resp: &[u8] = if ok {
            b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
        } else {
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
        };
        if w.write_all(resp).is_err() {
            return;
        }
    }
}
