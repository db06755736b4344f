//! The API's HTTP/1.1 server: hyper connections around the axum router, with the protections a
//! service on a shared network needs and the ones `axum::serve` leaves out: a deadline for a
//! request's headers (a client that opens a connection and sends nothing, or a byte a minute,
//! is closed), a cap on open connections (past it the listener waits, and the kernel's backlog
//! holds new ones), a cap per client address (past it a connection gets a 429 naming the
//! limit and is closed: one client flooding connections or holding them open a byte at a time
//! cannot take every slot), and a graceful stop (no new connections; requests in flight finish
//! within a grace period).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_http::add_extension::AddExtension;

/// The client's address, on every request (audit lines name it).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// `[server] max_connections`, `max_connections_per_ip`, `header_read_timeout`, and the grace
/// period of a stop.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Counts connections refused by the per-address cap.
    pub refused: Counter,
    /// Counts TLS connections that did not complete their handshake (no or a bad client
    /// certificate where one is required, plain HTTP to the TLS port, a timeout).
    pub tls_failed: Counter,
    /// Also how long an idle keep-alive connection is kept: hyper starts the deadline as it
    /// waits for the next request's headers.
    pub header_read_timeout: Duration,
    pub grace: Duration,
}

/// Open connections per client address.
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

/// One connection counted against its address; uncounted when dropped.
struct IpSlot(Arc<PerIp>, IpAddr);

impl PerIp {
    fn take(self: &Arc<Self>, ip: IpAddr, cap: usize) -> Option<IpSlot> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(IpSlot(self.clone(), ip))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut m = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// Tells a client past its address's cap why it is closed (plain HTTP only: a TLS client would
/// read garbage, and is just closed), within a second.
fn refuse(mut stream: tokio::net::TcpStream, ip: IpAddr, cap: usize, plain: bool) {
    tokio::spawn(async move {
        if plain {
            use tokio::io::AsyncWriteExt;
            let body = format!(
                "too many connections from {ip}: limit server.max_connections_per_ip = {cap}\n"
            );
            let answer = format!(
                "HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\nx-vigil-limit: max_connections_per_ip\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            })
            .await;
        }
    });
}

/// Serves `router` on `listener` until `stop` completes, then lets requests in flight finish
/// for up to `limits.grace`.
pub async fn serve(
    router: axum::Router,
    listener: TcpListener,
    tls: Option<Arc<super::tls::Tls>>,
    limits: Limits,
    stop: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_ip = Arc::new(PerIp::default());
    let mut stop = std::pin::pin!(stop);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            () = &mut stop => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, addr)) => (stream, addr),
                Err(e) => {
                    // Out of file descriptors, say: a pause before the next try, or the loop
                    // spins on the same error (axum::serve and Go's net/http pause likewise).
                    tracing::warn!(error = %e, "accept failed");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        () = &mut stop => break,
                    }
                }
            },
            () = &mut stop => break,
        };
        let (stream, addr) = stream;
        let Some(ip_slot) = per_ip.take(addr.ip(), limits.max_connections_per_ip.max(1)) else {
            limits.refused.inc();
            drop(slot);
            refuse(
                stream,
                addr.ip(),
                limits.max_connections_per_ip,
                tls.is_none(),
            );
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Some(tls) = tls.clone() else {
            let svc = AddExtension::new(router.clone(), Peer(addr));
            let conn =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                let _ = conn.await;
                drop((slot, ip_slot));
            });
            continue;
        };
        // The handshake on the connection's own task (a slow one holds its slot, not the
        // listener), within the header deadline.
        let (router, builder, watcher) = (router.clone(), builder.clone(), graceful.watcher());
        let header_read_timeout = limits.header_read_timeout;
        let tls_failed = limits.tls_failed.clone();
        tokio::spawn(async move {
            // One deadline for the handshake and the first request's headers together.
            let began = std::time::Instant::now();
            match tls.accept(stream, header_read_timeout).await {
                Ok((stream, cert)) => {
                    let svc = AddExtension::new(AddExtension::new(router, cert), Peer(addr));
                    let mut builder = builder;
                    let left = header_read_timeout
                        .saturating_sub(began.elapsed())
                        .max(Duration::from_millis(1));
                    builder.header_read_timeout(left);
                    let conn = builder
                        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
                    let _ = watcher.watch(conn).await;
                }
                Err(e) => {
                    tls_failed.inc();
                    tracing::debug!(error = %e, "TLS connection refused");
                }
            }
            drop((slot, ip_slot));
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.grace) => {
            tracing::warn!(grace = ?limits.grace, "requests still running at the end of the grace period; closing them");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Generous: these tests wait for events, and this only bounds a broken run.
    const DEADLINE: Duration = Duration::from_secs(30);

    struct Server {
        addr: std::net::SocketAddr,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        done: tokio::task::JoinHandle<()>,
        /// Requests to `/slow` wait for this.
        release: Arc<tokio::sync::Notify>,
        /// Counts requests to `/slow` that arrived.
        arrived: Arc<Semaphore>,
    }

    async fn start(limits: Limits) -> Server {
        let release = Arc::new(tokio::sync::Notify::new());
        let arrived = Arc::new(Semaphore::new(0));
        let (r, a) = (release.clone(), arrived.clone());
        let router = axum::Router::new()
            .route("/fast", get(|| async { "fast" }))
            .route(
                "/slow",
                get(move || {
                    let (r, a) = (r.clone(), a.clone());
                    async move {
                        a.add_permits(1);
                        r.notified().await;
                        "slow"
                    }
                }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(serve(router, listener, None, limits, async move {
            let _ = rx.await;
        }));
        Server {
            addr,
            stop: Some(tx),
            done,
            release,
            arrived,
        }
    }

    fn limits(max_connections: usize, header_read_timeout: Duration) -> Limits {
        Limits {
            max_connections,
            max_connections_per_ip: max_connections,
            refused: Counter::default(),
            tls_failed: Counter::default(),
            header_read_timeout,
            grace: DEADLINE,
        }
    }

    async fn send(conn: &mut TcpStream, path: &str) {
        let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
        conn.write_all(req.as_bytes()).await.unwrap();
    }

    /// Reads until the response's body `want` arrived (or the connection closed).
    async fn read_until(conn: &mut TcpStream, want: &str) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        tokio::time::timeout(DEADLINE, async {
            while !String::from_utf8_lossy(&got).ends_with(want) {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .expect("an answer within the deadline");
        String::from_utf8_lossy(&got).into_owned()
    }

    #[tokio::test]
    async fn a_client_that_sends_no_headers_is_closed() {
        let s = start(limits(8, Duration::from_millis(200))).await;
        let mut silent = TcpStream::connect(s.addr).await.unwrap();
        silent.write_all(b"GET /fast HTTP/1.1\r\n").await.unwrap();
        // The server closes it (read returns 0 or an error), well before the deadline.
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(DEADLINE, silent.read(&mut buf))
            .await
            .expect("closed within the deadline");
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        // The server still serves others.
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        send(&mut c, "/fast").await;
        assert!(read_until(&mut c, "fast").await.starts_with("HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
        let s = start(limits(8, Duration::from_millis(200))).await;
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        send(&mut c, "/fast").await;
        assert!(read_until(&mut c, "fast").await.contains("200 OK"));
        // Kept alive, then closed once no next request's headers arrive.
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(DEADLINE, c.read(&mut buf))
            .await
            .expect("closed within the deadline");
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    }

    #[tokio::test]
    async fn past_the_connection_cap_a_client_waits_for_a_free_slot() {
        let s = start(limits(1, DEADLINE)).await;
        let mut first = TcpStream::connect(s.addr).await.unwrap();
        send(&mut first, "/fast").await;
        assert!(read_until(&mut first, "fast").await.contains("200 OK"));
        // The second connection is in the kernel's backlog, not served while the first is open.
        let mut second = TcpStream::connect(s.addr).await.unwrap();
        send(&mut second, "/fast").await;
        let mut buf = [0u8; 64];
        let early = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
        assert!(early.is_err(), "served past the cap: {early:?}");
        drop(first);
        assert!(read_until(&mut second, "fast").await.contains("200 OK"));
    }

    #[tokio::test]
    async fn past_its_address_cap_a_client_gets_a_429_and_others_are_still_served() {
        let mut l = limits(8, DEADLINE);
        l.max_connections_per_ip = 2;
        let refused = l.refused.clone();
        let s = start(l).await;
        // Two connections held open by 127.0.0.1, sending their headers a byte at a time.
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut c = TcpStream::connect(s.addr).await.unwrap();
            c.write_all(b"GET /fast HTTP/1.1\r\n").await.unwrap();
            held.push(c);
        }
        // A third from the same address is told why and closed, and counted.
        let mut third = TcpStream::connect(s.addr).await.unwrap();
        let answer = read_until(&mut third, "= 2\n").await;
        assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
        assert!(answer.contains("retry-after: 1") && answer.contains("max_connections_per_ip"));
        assert_eq!(refused.get(), 1);
        // Another address is served meanwhile.
        let other = tokio::net::TcpSocket::new_v4().unwrap();
        other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut other = other.connect(s.addr).await.unwrap();
        send(&mut other, "/fast").await;
        assert!(read_until(&mut other, "fast").await.contains("200 OK"));
        // Once one closes, the address may connect again.
        drop(held.pop());
        tokio::time::timeout(DEADLINE, async {
            loop {
                let mut c = TcpStream::connect(s.addr).await.unwrap();
                send(&mut c, "/fast").await;
                if read_until(&mut c, "fast").await.contains("200 OK") {
                    break;
                }
            }
        })
        .await
        .expect("served again");
    }

    #[tokio::test]
    async fn a_stop_lets_requests_in_flight_finish_and_takes_no_new_connections() {
        let mut s = start(limits(8, DEADLINE)).await;
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        send(&mut c, "/slow").await;
        // Wait for the request to be in the handler.
        let _ = tokio::time::timeout(DEADLINE, s.arrived.acquire())
            .await
            .expect("the request arrived");
        let _ = s.stop.take().unwrap().send(());
        // The listener closes: new connections are refused.
        tokio::time::timeout(DEADLINE, async {
            while TcpStream::connect(s.addr).await.is_ok() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the listener closed");
        // The request in flight still gets its answer, then the server ends.
        s.release.notify_one();
        assert!(read_until(&mut c, "slow").await.contains("200 OK"));
        tokio::time::timeout(DEADLINE, s.done)
            .await
            .expect("the server ended")
            .unwrap();
    }
}
