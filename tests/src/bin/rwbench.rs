//! Sends remote-write traffic as fast as a receiver takes it and prints the rate: `series` series
//! (labels like a node_exporter fleet), `samples` rounds of one sample each, 10 s apart and ending
//! now, `batch` series per request, `workers` keep-alive connections.
//!
//! Used by bench/ingest_vs_prometheus.sh to send the same payloads to the aggregator and to
//! Prometheus.
//!
//!   rwbench URL [series] [samples] [batch] [workers] [end_ms]
//!
//! `end_ms` fixes the last round's timestamp, so that two receivers get the very same samples
//! (bench/aggregator_under_load.sh compares their answers); series `i` then grows by `i + 1` a
//! round, so that every series has its own rate (a `topk` has no ties to break differently), and
//! carries a `series` label.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use vigil_wire::{Labels, Sample};

fn series_labels(n: usize) -> Vec<Labels> {
    (0..n)
        .map(|i| {
            Labels::from_pairs([
                ("__name__", format!("bench_metric_{}", i % 100)),
                (
                    "instance",
                    format!("10.0.{}.{}:9100", (i / 100) / 250, (i / 100) % 250),
                ),
                ("job", "node".to_string()),
                ("asg", format!("asg-{}", i % 7)),
                ("cpu", (i % 8).to_string()),
            ])
        })
        .collect()
}

/// One keep-alive HTTP/1.1 POST; returns the status.
fn post(
    stream: &mut BufReader<TcpStream>,
    host: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<u16> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-protobuf\r\nContent-Encoding: snappy\r\nX-Prometheus-Remote-Write-Version: 0.1.0\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let s = stream.get_mut();
    let mut req = Vec::with_capacity(head.len() + body.len());
    req.extend_from_slice(head.as_bytes());
    req.extend_from_slice(body);
    s.write_all(&req)?;
    let mut status = String::new();
    stream.read_line(&mut status)?;
    let code = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        stream.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut sink = vec![0u8; len];
    stream.read_exact(&mut sink)?;
    Ok(code)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .expect("usage: rwbench URL [series] [samples] [batch] [workers]")
        .clone();
    let arg = |i: usize, d: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (series, samples, batch, workers) =
        (arg(2, 100_000), arg(3, 360), arg(4, 2_000), arg(5, 2));
    let rest = url.strip_prefix("http://").expect("http:// URL");
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h.to_string(), format!("/{p}")))
        .expect("URL with a path");
    let distinct = args.get(6).is_some();
    let mut labels = series_labels(series);
    if distinct {
        // Unique without the metric name too: Prometheus 2.42 refuses `rate({job="node"}[5m])`
        // when two series differ only by name (3.x removes the name after the aggregation).
        for (i, l) in labels.iter_mut().enumerate() {
            let mut b = l.to_builder();
            b.set("series", i.to_string());
            *l = b.build();
        }
    }
    let labels = Arc::new(labels);
    let now = args.get(6).and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_millis() as i64
    });
    let start_ts = now - (samples as i64 - 1) * 10_000;
    let failed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    // Rounds are sent in order (a receiver refuses samples going back in time); within a round
    // the batches are spread over the workers.
    for round in 0..samples {
        let ts = start_ts + round as i64 * 10_000;
        let chunks: Vec<(usize, usize)> = (0..series)
            .step_by(batch)
            .map(|a| (a, (a + batch).min(series)))
            .collect();
        let per = chunks.len().div_ceil(workers);
        std::thread::scope(|scope| {
            for part in chunks.chunks(per.max(1)) {
                let (labels, failed, host, path) =
                    (labels.clone(), failed.clone(), host.clone(), path.clone());
                scope.spawn(move || {
                    // One keep-alive connection per worker and round.
                    let connect = || {
                        let c = TcpStream::connect(&host).expect("connect");
                        let _ = c.set_nodelay(true);
                        BufReader::new(c)
                    };
                    let mut conn = connect();
                    for &(a, b) in part {
                        let smp: Vec<[Sample; 1]> = (a..b)
                            .map(|i| {
                                let v = if distinct {
                                    (round * (i + 1)) as f64
                                } else {
                                    (round * 10 + a) as f64
                                };
                                [Sample::new(ts, v)]
                            })
                            .collect();
                        let body = vigil_wire::remote_write::encode_snappy_from(
                            labels[a..b].iter().zip(&smp).map(|(l, s)| (l, &s[..])),
                        );
                        match post(&mut conn, &host, &path, &body) {
                            Ok(c) if (200..300).contains(&c) => {}
                            Ok(c) => {
                                if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                                    eprintln!("rwbench: HTTP {c}");
                                }
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                eprintln!("rwbench: {e}");
                                conn = connect();
                            }
                        }
                    }
                });
            }
        });
    }
    let elapsed = started.elapsed();
    let total = series * samples;
    let failed = failed.load(Ordering::Relaxed);
    println!("{total} {:.3} {failed}", elapsed.as_secs_f64());
    eprintln!(
        "rwbench: {total} samples in {:.1}s = {:.0} samples/s ({failed} failed requests)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64().max(1e-9)
    );
}
