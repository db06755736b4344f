//! A fleet of simulated agents from one process, for bench/fleet_overload.sh: AGENTS agents,
//! each on its own keep-alive connection from its own source address in 127.0.0.0/8 (so that
//! per-address limits mean what they mean for a real fleet), each pushing SERIES series every
//! 10 s (spread over the interval) for ROUNDS rounds; meanwhile one address floods connections
//! and holds them open a byte at a time (a slowloris), and a query of death is sent now and then.
//!
//!   fleetload HOST:PORT AGENTS SERIES ROUNDS [QUERIES_OF_DEATH]
//!
//! Prints per round: pushes answered 204, 429 (by the limit named), other answers or errors,
//! push latency p50/p99/max, and whether the round ended within its 10 s; then what the
//! slowloris and the queries of death got.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use vigil_wire::{Labels, Sample};

const INTERVAL: Duration = Duration::from_secs(10);

/// What one push got.
struct Answer {
    status: u16,
    /// `x-vigil-limit`, or the first words of the body.
    limit: String,
}

async fn connect(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<BufReader<TcpStream>> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(from.into(), 0))?;
    let c = s.connect(to).await?;
    c.set_nodelay(true)?;
    Ok(BufReader::new(c))
}

async fn post(conn: &mut BufReader<TcpStream>, body: &[u8]) -> std::io::Result<Answer> {
    let head = format!(
        "POST /api/v1/write HTTP/1.1\r\nhost: vigil\r\ncontent-type: application/x-protobuf\r\ncontent-encoding: snappy\r\nx-prometheus-remote-write-version: 0.1.0\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut req = head.into_bytes();
    req.extend_from_slice(body);
    conn.get_mut().write_all(&req).await?;
    let mut line = String::new();
    conn.read_line(&mut line).await?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (mut len, mut limit) = (0usize, String::new());
    loop {
        let mut h = String::new();
        if conn.read_line(&mut h).await? == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().unwrap_or(0),
                "x-vigil-limit" => limit = v.trim().to_string(),
                _ => {}
            }
        }
    }
    let mut text = vec![0u8; len];
    conn.read_exact(&mut text).await?;
    if limit.is_empty() && status >= 400 {
        limit = String::from_utf8_lossy(&text).chars().take(40).collect();
    }
    Ok(Answer { status, limit })
}

fn agent_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        127,
        1 + (i / 62_500) as u8,
        (i / 250 % 250) as u8,
        (i % 250 + 1) as u8,
    )
}

#[derive(Default)]
struct Round {
    ok: u64,
    refused: BTreeMap<String, u64>,
    failed: u64,
    latencies: Vec<f64>,
    ended_ms: u64,
}

async fn agent(
    i: usize,
    to: SocketAddr,
    series: usize,
    rounds: usize,
    start: Instant,
    log: Arc<Mutex<Vec<Round>>>,
    agents: usize,
) {
    let labels: Vec<Labels> = (0..series)
        .map(|k| {
            Labels::from_pairs([
                ("__name__", format!("fleet_metric_{}", k % 50).as_str()),
                ("instance", &format!("agent-{i}")),
                ("job", "fleet"),
                ("series", &k.to_string()),
            ])
        })
        .collect();
    let offset = INTERVAL.mul_f64(i as f64 / agents as f64);
    let mut conn = None;
    for r in 0..rounds {
        let at = start + INTERVAL * r as u32 + offset;
        tokio::time::sleep_until(at.into()).await;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let samples: Vec<[Sample; 1]> = (0..series)
            .map(|k| [Sample::new(now_ms, (r * k) as f64)])
            .collect();
        let body = vigil_wire::remote_write::encode_snappy_from(
            labels.iter().zip(&samples).map(|(l, s)| (l, s.as_slice())),
        );
        let t = Instant::now();
        // A kept-alive connection the server closed while idle is met with a new one, once
        // (as any HTTP client does).
        let reused = conn.is_some();
        if conn.is_none() {
            conn = connect(agent_address(i), to).await.ok();
        }
        let mut answer = match conn.as_mut() {
            Some(c) => post(c, &body).await.ok().filter(|a| a.status != 0),
            None => None,
        };
        if answer.is_none() && reused {
            conn = connect(agent_address(i), to).await.ok();
            if let Some(c) = conn.as_mut() {
                answer = post(c, &body).await.ok();
            }
        }
        let took = t.elapsed().as_secs_f64() * 1000.0;
        let mut g = log.lock().unwrap_or_else(|p| p.into_inner());
        let round = &mut g[r];
        round.latencies.push(took);
        round.ended_ms = round.ended_ms.max(start.elapsed().as_millis() as u64);
        match answer {
            Some(a) if a.status == 204 => round.ok += 1,
            Some(a) => {
                *round
                    .refused
                    .entry(format!("{} {}", a.status, a.limit))
                    .or_default() += 1;
                conn = None;
            }
            None => {
                round.failed += 1;
                conn = None;
            }
        }
    }
}

/// Runs every future at once and returns their outputs in order.
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    fs: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

/// One address opens `n` connections and sends a request's headers a byte a second.
async fn slowloris(to: SocketAddr, n: usize) -> (u64, u64, u64) {
    let from = Ipv4Addr::new(127, 250, 0, 1);
    let mut held = Vec::new();
    let (mut refused, mut failed) = (0u64, 0u64);
    for _ in 0..n {
        match connect(from, to).await {
            Ok(mut c) => {
                let _ = c
                    .get_mut()
                    .write_all(b"POST /api/v1/write HTTP/1.1\r\nx-a: ")
                    .await;
                held.push(c);
            }
            Err(_) => failed += 1,
        }
    }
    // Those past the address's cap are answered 429 at once and closed; the rest stay open.
    let checks = held.into_iter().map(|mut c| async move {
        let mut buf = [0u8; 12];
        let r = tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut buf)).await;
        (r, buf, c)
    });
    let mut open = Vec::new();
    for (r, buf, c) in futures_join_all(checks).await {
        match r {
            Ok(Ok(_)) if buf.starts_with(b"HTTP/1.1 429") => refused += 1,
            Ok(_) => failed += 1,
            Err(_) => open.push(c),
        }
    }
    let held = open.len() as u64;
    // The rest dribble until the server's header deadline closes them.
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for c in open.iter_mut() {
                let _ = c.get_mut().write_all(b"a").await;
            }
        }
    });
    (held, refused, failed)
}

/// A query that would load every sample of the window, against `[query] max_samples`.
async fn query_of_death(to: SocketAddr) -> (u16, f64) {
    let t = Instant::now();
    let q = "count_over_time({job=\"fleet\"}[1h])";
    let Ok(mut c) = connect(Ipv4Addr::new(127, 251, 0, 1), to).await else {
        return (0, 0.0);
    };
    let req = format!(
        "GET /api/v1/query?query={} HTTP/1.1\r\nhost: vigil\r\nconnection: close\r\n\r\n",
        vigil_e2e::http::encode_component(q)
    );
    let _ = c.get_mut().write_all(req.as_bytes()).await;
    let mut line = String::new();
    let _ = c.read_line(&mut line).await;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, t.elapsed().as_secs_f64() * 1000.0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let to: SocketAddr = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .expect("usage: fleetload HOST:PORT AGENTS SERIES ROUNDS");
    let arg = |i: usize, d: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (agents, series, rounds, deadly) = (arg(2, 5000), arg(3, 1000), arg(4, 4), arg(5, 3));
    let log = Arc::new(Mutex::new(
        (0..rounds).map(|_| Round::default()).collect::<Vec<_>>(),
    ));
    let start = Instant::now() + Duration::from_secs(1);
    let mut tasks = Vec::new();
    for i in 0..agents {
        tasks.push(tokio::spawn(agent(
            i,
            to,
            series,
            rounds,
            start,
            log.clone(),
            agents,
        )));
    }
    tokio::time::sleep_until((start + INTERVAL / 2).into()).await;
    let (held, refused, failed) = slowloris(to, 1000).await;
    let mut deaths = Vec::new();
    for _ in 0..deadly {
        deaths.push(query_of_death(to).await);
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut g = log.lock().unwrap_or_else(|p| p.into_inner());
    println!("{agents} agents x {series} series every 10 s, {rounds} rounds");
    for (r, round) in g.iter_mut().enumerate() {
        let deadline = (INTERVAL.as_millis() as u64) * (r as u64 + 1) + 2000;
        println!(
            "round {}: {} x 204, refused {:?}, {} failed; push p50 {:.0} ms p99 {:.0} ms max {:.0} ms; {}",
            r + 1,
            round.ok,
            round.refused,
            round.failed,
            pct(&mut round.latencies, 0.5),
            pct(&mut round.latencies, 0.99),
            pct(&mut round.latencies, 1.0),
            if round.ended_ms <= deadline { "kept up" } else { "fell behind" }
        );
    }
    println!("slowloris from one address, 1000 connections: {held} held open, {refused} answered 429 at once, {failed} other");
    for (status, ms) in deaths {
        println!("query of death: {status} in {ms:.0} ms");
    }
}
