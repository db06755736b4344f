//! The agent's own metrics (`prometheus-client`), served on `[listen].address` at `/metrics`.
//! Label values are bounded: results and configured targets, never instance ids.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type LabelSet = Vec<(String, String)>;

#[derive(Clone)]
pub struct Metrics {
    pub samples_collected: Counter,
    pub samples_pushed: Counter,
    pub samples_spooled: Counter,
    pub samples_dropped: Counter,
    pub push_requests: Family<LabelSet, Counter>,
    pub push_duration: Histogram,
    pub spool_frames: Gauge,
    pub spool_bytes: Gauge,
    pub spool_dropped_frames: Counter,
    pub scrape_limit_exceeded: Family<LabelSet, Counter>,
    pub collect_duration: Histogram,
}

impl Metrics {
    pub fn register(r: &mut Registry) -> Metrics {
        let m = Metrics {
            samples_collected: Counter::default(),
            samples_pushed: Counter::default(),
            samples_spooled: Counter::default(),
            samples_dropped: Counter::default(),
            push_requests: Family::default(),
            push_duration: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            spool_frames: Gauge::default(),
            spool_bytes: Gauge::default(),
            spool_dropped_frames: Counter::default(),
            scrape_limit_exceeded: Family::default(),
            collect_duration: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
        };
        r.register(
            "vigil_agent_samples_collected",
            "Samples collected (host, scrape, health)",
            m.samples_collected.clone(),
        );
        r.register(
            "vigil_agent_samples_pushed",
            "Samples accepted by the receiver on first try",
            m.samples_pushed.clone(),
        );
        r.register(
            "vigil_agent_samples_spooled",
            "Samples written to the disk spool",
            m.samples_spooled.clone(),
        );
        r.register(
            "vigil_agent_samples_dropped",
            "Samples lost: rejected by the receiver or unwritable",
            m.samples_dropped.clone(),
        );
        r.register(
            "vigil_agent_push_requests",
            "Remote-write requests by result",
            m.push_requests.clone(),
        );
        r.register(
            "vigil_agent_push_duration_seconds",
            "Remote-write request latency",
            m.push_duration.clone(),
        );
        r.register(
            "vigil_agent_spool_frames",
            "Batches waiting in the spool",
            m.spool_frames.clone(),
        );
        r.register(
            "vigil_agent_spool_bytes",
            "Bytes the spool holds on disk",
            m.spool_bytes.clone(),
        );
        r.register(
            "vigil_agent_spool_dropped_frames",
            "Batches dropped because the spool was full",
            m.spool_dropped_frames.clone(),
        );
        r.register(
            "vigil_agent_scrape_series_limit_exceeded",
            "Scrapes dropped for exceeding the series limit",
            m.scrape_limit_exceeded.clone(),
        );
        r.register(
            "vigil_agent_collect_duration_seconds",
            "Time one collection round took",
            m.collect_duration.clone(),
        );
        m
    }
}

/// Serves `/metrics` and `/-/healthy` until the process ends.
pub async fn serve(addr: SocketAddr, registry: Arc<Registry>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(address = %addr, "serving self-metrics");
    vigil_config::http::serve(listener, move |req: Request<hyper::body::Incoming>| {
        let registry = registry.clone();
        async move { answer(req.uri().path(), &registry) }
    })
    .await;
    Ok(())
}

fn answer(path: &str, registry: &Registry) -> Response<Full<Bytes>> {
    let resp = match path {
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => Response::builder()
                    .header(
                        "Content-Type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
                    .body(Full::new(Bytes::from(body))),
                Err(_) => Response::builder()
                    .status(StatusCode::INTERNAL_SERVER_ERROR)
                    .body(Full::new(Bytes::new())),
            }
        }
        "/-/healthy" => Response::builder().body(Full::new(Bytes::from_static(b"ok\n"))),
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(b"not found\n"))),
    };
    resp.unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}
