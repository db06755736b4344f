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

fn push_duration() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// The agent's metrics; what concerns one push target is labelled `{target="<name>"}` and handed
/// to that target's pusher as [`TargetMetrics`].
#[derive(Clone)]
pub struct Metrics {
    pub samples_collected: Counter,
    samples_pushed: Family<LabelSet, Counter>,
    samples_spooled: Family<LabelSet, Counter>,
    /// `{target, reason}`: a push target's rejected, unwritable or queue-full batches, or a
    /// scrape target's oversized series.
    samples_dropped: Family<LabelSet, Counter>,
    push_requests: Family<LabelSet, Counter>,
    push_duration: Family<LabelSet, Histogram, fn() -> Histogram>,
    spool_frames: Family<LabelSet, Gauge>,
    spool_bytes: Family<LabelSet, Gauge>,
    spool_dropped_frames: Family<LabelSet, Counter>,
    pub scrape_limit_exceeded: Family<LabelSet, Counter>,
    pub collect_duration: Histogram,
    /// Steps of the wall clock slewed (see `vigil_wire::clock`), and the offset left to slew.
    pub clock_steps: Counter,
    pub clock_offset: Gauge<f64, std::sync::atomic::AtomicU64>,
}

/// One push target's share of the metrics (handles into the families above).
#[derive(Clone)]
pub struct TargetMetrics {
    pub samples_pushed: Counter,
    pub samples_spooled: Counter,
    pub rejected: Counter,
    pub unwritable: Counter,
    pub queue_full: Counter,
    pub sent: Counter,
    pub retried: Counter,
    pub refused: Counter,
    pub push_duration: Histogram,
    pub spool_frames: Gauge,
    pub spool_bytes: Gauge,
    pub spool_dropped_frames: Counter,
}

fn labels(pairs: &[(&str, &str)]) -> LabelSet {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Metrics {
    /// The handles of push target `name`.
    pub fn target(&self, name: &str) -> TargetMetrics {
        let t = labels(&[("target", name)]);
        let dropped = |reason| {
            self.samples_dropped
                .get_or_create(&labels(&[("target", name), ("reason", reason)]))
                .clone()
        };
        let requests = |result| {
            self.push_requests
                .get_or_create(&labels(&[("target", name), ("result", result)]))
                .clone()
        };
        TargetMetrics {
            samples_pushed: self.samples_pushed.get_or_create(&t).clone(),
            samples_spooled: self.samples_spooled.get_or_create(&t).clone(),
            rejected: dropped("rejected"),
            unwritable: dropped("unwritable"),
            queue_full: dropped("queue_full"),
            sent: requests("sent"),
            retried: requests("retry"),
            refused: requests("rejected"),
            push_duration: self.push_duration.get_or_create(&t).clone(),
            spool_frames: self.spool_frames.get_or_create(&t).clone(),
            spool_bytes: self.spool_bytes.get_or_create(&t).clone(),
            spool_dropped_frames: self.spool_dropped_frames.get_or_create(&t).clone(),
        }
    }

    /// Series of a scrape target dropped for exceeding the per-series limits.
    pub fn oversized(&self, scrape_url: &str, n: u64) {
        self.samples_dropped
            .get_or_create(&labels(&[("target", scrape_url), ("reason", "oversized")]))
            .inc_by(n);
    }

    pub fn register(r: &mut Registry) -> Metrics {
        let m = Metrics {
            samples_collected: Counter::default(),
            samples_pushed: Family::default(),
            samples_spooled: Family::default(),
            samples_dropped: Family::default(),
            push_requests: Family::default(),
            push_duration: Family::new_with_constructor(push_duration),
            spool_frames: Family::default(),
            spool_bytes: Family::default(),
            spool_dropped_frames: Family::default(),
            scrape_limit_exceeded: Family::default(),
            collect_duration: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
            clock_steps: Counter::default(),
            clock_offset: Gauge::default(),
        };
        r.register(
            "vigil_agent_samples_collected",
            "Samples collected (host, scrape, health)",
            m.samples_collected.clone(),
        );
        r.register(
            "vigil_agent_samples_pushed",
            "Samples accepted by a push target on first try, by target",
            m.samples_pushed.clone(),
        );
        r.register(
            "vigil_agent_samples_spooled",
            "Samples written to a target's disk spool, by target",
            m.samples_spooled.clone(),
        );
        r.register(
            "vigil_agent_samples_dropped",
            "Samples lost, by target and reason (rejected by the receiver, unwritable spool, queue full, oversized scraped series)",
            m.samples_dropped.clone(),
        );
        r.register(
            "vigil_agent_push_requests",
            "Remote-write requests by target and result",
            m.push_requests.clone(),
        );
        r.register(
            "vigil_agent_push_duration_seconds",
            "Remote-write request latency, by target",
            m.push_duration.clone(),
        );
        r.register(
            "vigil_agent_spool_frames",
            "Batches waiting in a target's spool",
            m.spool_frames.clone(),
        );
        r.register(
            "vigil_agent_spool_bytes",
            "Bytes a target's spool holds on disk",
            m.spool_bytes.clone(),
        );
        r.register(
            "vigil_agent_spool_dropped_frames",
            "Batches dropped because a target's spool was full",
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
        r.register(
            "vigil_agent_clock_steps",
            "Steps of the wall clock (a jump of more than 2 s against the monotonic clock) the agent turned into a slew",
            m.clock_steps.clone(),
        );
        r.register(
            "vigil_agent_clock_offset_seconds",
            "The time the agent stamps samples with minus the wall clock's: not 0 while a step is being slewed away",
            m.clock_offset.clone(),
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
