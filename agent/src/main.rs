//! `vigil-agent`: runs on every instance or pod, collects host metrics, scrapes the application,
//! probes its health endpoint, and pushes everything with Prometheus remote-write, spooling to
//! disk while the receiver cannot be reached.
//!
//! Must never depend on the AWS SDK (IMDSv2 is plain HTTP) or on the rules engine: it has to cost
//! almost nothing on every host.

mod collect;
mod config;
mod health;
use vigil_config::http;
mod identity;
mod push;
mod scrape;
mod spool;
mod telemetry;

#[cfg(test)]
mod fuzz_tests;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use vigil_config::logging::LogFormat;
use vigil_wire::text::{FamilyMeta, MetricType, ParsedSample};
use vigil_wire::{Labels, Sample};

use config::Config;
use identity::Identity;

const DEFAULT_CONFIG: &str = "/etc/vigil/agent.toml";

/// Vigil agent: host metrics, app scrape and health probe, pushed with remote-write.
#[derive(Debug, Parser)]
#[command(name = "vigil-agent", version, about)]
struct Args {
    /// Configuration file (without one, and with the default missing, the built-in default runs).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Collect one round, print it in the Prometheus text format with the labels it would be
    /// pushed with, and exit.
    #[arg(long)]
    once: bool,
    /// Validate a configuration file and exit.
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn load_config(path: &Path) -> Result<Config, String> {
    vigil_config::tomlread::load_file(path, config::parse)
}

/// Everything one round collected, with the labels it is pushed with.
struct Round {
    /// The round's timestamp (every sample collected by the agent itself carries it).
    ts: i64,
    samples: Vec<(Labels, Sample)>,
    /// Native histograms scraped from the application.
    histograms: Vec<(Labels, vigil_wire::histogram::HSample)>,
    families: Vec<FamilyMeta>,
}

struct Collector {
    cfg: Config,
    http: http::Http,
    host: collect::Host,
    metrics: telemetry::Metrics,
    warned_limit: std::collections::HashSet<String>,
    /// Host and own-series label sets, built once.
    host_labels: collect::LabelCache,
    /// One per scrape target: the app's label sets by series text.
    scrapers: Vec<scrape::Scraper>,
    /// Set while a host collection runs.
    host_busy: Arc<std::sync::atomic::AtomicBool>,
    /// An identity found after start (IMDS retried in the background).
    identity_update: Arc<std::sync::Mutex<Option<Identity>>>,
    target_labels: Vec<(String, String)>,
    /// The time rounds are stamped with: the wall clock's, its steps slewed.
    clock: vigil_wire::clock::HeldTime,
    last_round_ms: i64,
}

impl Collector {
    fn new(
        cfg: Config,
        http: http::Http,
        target_labels: Vec<(String, String)>,
        metrics: telemetry::Metrics,
    ) -> Self {
        let host = collect::Host {
            mount_exclude: cfg.mount_points_exclude.clone(),
            netdev_exclude: cfg.network_devices_exclude.clone(),
            ..collect::Host::default()
        };
        let scrapers = cfg
            .scrape
            .iter()
            .map(|t| scrape::Scraper::new(t.clone(), target_labels.clone()))
            .collect();
        Collector {
            clock: vigil_wire::clock::HeldTime::new(
                vigil_wire::clock::wall_ms(),
                std::time::Instant::now(),
            ),
            last_round_ms: 0,
            identity_update: Arc::new(std::sync::Mutex::new(None)),
            host_busy: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            target_labels: target_labels.clone(),
            host_labels: collect::LabelCache::new(target_labels.clone()),
            cfg,
            http,
            host,
            metrics,
            warned_limit: Default::default(),
            scrapers,
        }
    }

    /// Host collection runs on a blocking thread with a time limit: `statvfs` on a hung network
    /// mount never returns, and must not freeze pushing. While one is stuck, rounds skip host
    /// metrics rather than pile up threads.
    async fn collect_host(&mut self, out: &mut collect::Out<'_>) {
        if self.host_busy.load(std::sync::atomic::Ordering::SeqCst) {
            tracing::warn!(
                "host collection still stuck (a hung mount?): skipping host metrics this round"
            );
            return;
        }
        self.host_busy
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let host = self.host.clone();
        let mut cache = std::mem::take(out.cache);
        let busy = self.host_busy.clone();
        let job = tokio::task::spawn_blocking(move || {
            let (mut metrics, mut families) = (Vec::new(), Vec::new());
            let failed = host.collect(&mut collect::Out {
                metrics: &mut metrics,
                families: &mut families,
                cache: &mut cache,
            });
            busy.store(false, std::sync::atomic::Ordering::SeqCst);
            (metrics, families, cache, failed)
        });
        match tokio::time::timeout(Duration::from_secs(5), job).await {
            Ok(Ok((metrics, families, cache, failed))) => {
                out.metrics.extend(metrics);
                out.families.extend(families);
                *out.cache = cache;
                for f in failed {
                    tracing::debug!(source = f, "host source unreadable");
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "host collection failed"),
            Err(_) => {
                *out.cache = collect::LabelCache::new(self.target_labels.clone());
                tracing::warn!(
                    "host collection took over 5 s (a hung mount?): host metrics skipped"
                );
            }
        }
    }

    /// Takes up an identity found late (IMDS answering after start): new target labels, caches
    /// rebuilt.
    fn apply_identity(&mut self, id: &Identity) {
        let labels = identity_labels(id, &self.cfg);
        tracing::info!(instance = %id.instance, source = id.source, asg = ?id.asg, az = ?id.az, "identity updated");
        self.target_labels = labels.clone();
        self.host_labels = collect::LabelCache::new(labels.clone());
        self.scrapers = self
            .cfg
            .scrape
            .iter()
            .map(|t| scrape::Scraper::new(t.clone(), labels.clone()))
            .collect();
    }

    /// The round's timestamp, after the last one. A step of this host's clock alone (a bad RTC,
    /// a VM restored, `date -s`) would stamp the samples an hour off the fleet's: out of order
    /// at the receiver and dropped, or far ahead. It is turned into a slew: logged once, counted,
    /// and the offset shown while it lasts.
    fn now_ms(&mut self, at: std::time::Instant) -> i64 {
        let (t, step) = self.clock.read(vigil_wire::clock::wall_ms(), at);
        let offset = self.clock.offset_ms() as f64 / 1000.0;
        if let Some(step) = step {
            self.metrics.clock_steps.inc();
            tracing::warn!(
                step_seconds = step as f64 / 1000.0,
                offset_seconds = offset,
                "wall clock stepped: not followed but slewed (a twelfth of a second a second); samples keep the agent's time, offset_seconds from the wall clock"
            );
        }
        self.metrics.clock_offset.set(offset);
        // Never the same timestamp twice: a receiver would drop the second as a duplicate.
        let t = t.max(self.last_round_ms + 1);
        self.last_round_ms = t;
        t
    }

    async fn round(&mut self) -> Round {
        let late = self.identity_update.lock().ok().and_then(|mut g| g.take());
        if let Some(id) = late {
            self.apply_identity(&id);
        }
        let started = std::time::Instant::now();
        let ts = self.now_ms(started);
        let (mut metrics, mut families) = (Vec::new(), Vec::new());
        let mut out_cache = std::mem::take(&mut self.host_labels);
        let mut scraped: Vec<(Labels, Sample)> = Vec::new();
        let mut histograms = Vec::new();
        {
            let mut out = collect::Out {
                metrics: &mut metrics,
                families: &mut families,
                cache: &mut out_cache,
            };
            if self.cfg.host_metrics {
                self.collect_host(&mut out).await;
            }
            for sc in &mut self.scrapers {
                let r = sc.scrape(&self.http, ts).await;
                let url = sc.target.url.clone();
                if r.limit_exceeded {
                    self.metrics
                        .scrape_limit_exceeded
                        .get_or_create(&vec![("target".to_string(), url.clone())])
                        .inc();
                    if self.warned_limit.insert(url.clone()) {
                        tracing::warn!(url = %url, reason = r.error.as_deref().unwrap_or(""), "scrape dropped: series limit exceeded (logged once per target)");
                    }
                } else if let Some(e) = &r.error {
                    tracing::warn!(url = %url, error = %e, "scrape failed");
                }
                if r.oversized > 0 {
                    self.metrics.oversized(&url, r.oversized as u64);
                    if self.warned_limit.insert(format!("oversized {url}")) {
                        tracing::warn!(url = %url, series = r.oversized, "scraped series over the per-series label limits dropped (logged once per target)");
                    }
                }
                out.push(
                    "vigil_scrape_up",
                    &[("target", &url)],
                    if r.up { 1.0 } else { 0.0 },
                );
                out.push(
                    "vigil_scrape_duration_seconds",
                    &[("target", &url)],
                    r.duration.as_secs_f64(),
                );
                out.push(
                    "vigil_scrape_samples_scraped",
                    &[("target", &url)],
                    (r.samples.len() + r.histograms.len()) as f64,
                );
                scraped.extend(r.samples);
                histograms.extend(r.histograms);
            }
            for t in &self.cfg.health {
                let p = health::probe(&self.http, t).await;
                if let Some(e) = &p.error {
                    tracing::debug!(url = %t.url, error = %e, "health probe failed");
                }
                out.push(
                    "vigil_health_up",
                    &[("target", &t.url)],
                    if p.up { 1.0 } else { 0.0 },
                );
                out.push(
                    "vigil_health_latency_seconds",
                    &[("target", &t.url)],
                    p.latency.as_secs_f64(),
                );
            }
        }
        self.host_labels = out_cache;
        let mut samples: Vec<(Labels, Sample)> = Vec::with_capacity(metrics.len());
        samples.extend(
            metrics
                .into_iter()
                .map(|m| (m.labels, Sample::new(ts, m.value))),
        );
        samples.extend(scraped);
        for (name, t, help) in [
            (
                "vigil_health_up",
                MetricType::Gauge,
                "1 when the health endpoint answered with the expected status in time.",
            ),
            (
                "vigil_health_latency_seconds",
                MetricType::Gauge,
                "Health probe latency.",
            ),
            (
                "vigil_scrape_up",
                MetricType::Gauge,
                "1 when the scrape succeeded.",
            ),
            (
                "vigil_scrape_duration_seconds",
                MetricType::Gauge,
                "Scrape duration.",
            ),
            (
                "vigil_scrape_samples_scraped",
                MetricType::Gauge,
                "Samples the scrape returned.",
            ),
        ] {
            families.push(FamilyMeta {
                name: name.into(),
                metric_type: t,
                help: Some(help.into()),
                unit: None,
            });
        }
        self.metrics.samples_collected.inc_by(samples.len() as u64);
        self.metrics
            .collect_duration
            .observe(started.elapsed().as_secs_f64());
        Round {
            ts,
            samples,
            histograms,
            families,
        }
    }
}

fn identity_labels(id: &Identity, cfg: &Config) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = cfg
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, val) in id.labels() {
        v.retain(|(x, _)| x != k);
        v.push((k.to_string(), val.to_string()));
    }
    v
}

/// Where the spool goes when the configured directory cannot be used and no config file was given
/// (a developer running the built-in default without root).
fn fallback_spool_dir() -> PathBuf {
    std::env::temp_dir().join("vigil-agent-spool")
}

async fn run(cfg: Config, explicit_config: bool, once: bool) -> Result<(), String> {
    let http = http::Http::new().map_err(|e| e.to_string())?;
    let id = identity::resolve(&cfg.identity, &http).await;
    let target_labels = identity_labels(&id, &cfg);
    let mut registry = Registry::default();
    let metrics = telemetry::Metrics::register(&mut registry);
    let mut collector = Collector::new(cfg.clone(), http.clone(), target_labels, metrics.clone());
    if once {
        let round = collector.round().await;
        let samples: Vec<ParsedSample> = round
            .samples
            .into_iter()
            .map(|(labels, s)| ParsedSample {
                labels,
                value: s.value,
                timestamp_ms: None,
            })
            .collect();
        print!("{}", vigil_wire::text::write(&samples, &round.families));
        // The text format has no native histograms: each as a comment, in PromQL's notation.
        for (l, h) in &round.histograms {
            println!(
                "# native histogram {l} {}",
                h.h.go_string(|v| format!("{v}"))
            );
        }
        return Ok(());
    }
    tracing::info!(instance = %id.instance, source = id.source, asg = ?id.asg, az = ?id.az, "identity");
    // On EC2 the metadata service can be slow right after boot: when it did not answer, keep
    // asking in the background (up to 10 minutes) rather than report a hostname for good.
    if id.source == "hostname"
        && matches!(
            cfg.identity.source,
            config::IdentitySource::Auto | config::IdentitySource::Ec2
        )
    {
        let (http2, icfg, slot) = (
            http.clone(),
            cfg.identity.clone(),
            collector.identity_update.clone(),
        );
        tokio::spawn(async move {
            let mut wait = Duration::from_secs(5);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
            while tokio::time::Instant::now() < deadline {
                tokio::time::sleep(wait).await;
                if identity::from_imds(
                    &http2,
                    &icfg.imds_endpoint,
                    Duration::from_millis(icfg.imds_timeout_ms.max(1000)),
                )
                .await
                .is_some()
                {
                    let found = identity::resolve(&icfg, &http2).await;
                    if let Ok(mut g) = slot.lock() {
                        *g = Some(found);
                    }
                    return;
                }
                wait = (wait * 2).min(Duration::from_secs(60));
            }
        });
    }

    // One spool, queue and task per target: a target that is down or slow fills its own queue
    // and spool, never another's.
    let base = spool_base(&cfg.buffer.dir, explicit_config)?;
    adopt_single_spool(&base, &cfg.push[0].name);
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut queues = Vec::new();
    let mut tasks = Vec::new();
    for target in &cfg.push {
        let dir = base.join(&target.name);
        let (spool, rec) = spool::Spool::open(&dir, cfg.buffer.max_bytes)
            .map_err(|e| format!("spool {}: {e}", dir.display()))?;
        if rec.frames > 0 || rec.torn_bytes > 0 {
            tracing::info!(
                target = %target.name,
                frames = rec.frames,
                pending = spool.pending(),
                torn_bytes = rec.torn_bytes,
                "spool recovered"
            );
        }
        let m = metrics.target(&target.name);
        // The files' stamp first: a file replaced while the client is built is seen as a change.
        let stamp = target.tls.stamp();
        let client = if target.tls.is_empty() {
            http.clone()
        } else {
            http::Http::with_tls(&target.tls)
                .map_err(|e| format!("push target {}: {e}", target.name))?
        };
        let pusher = push::Pusher::new(target, (client, stamp), spool, m.clone());
        let (tx, rx) = mpsc::channel::<push::Batch>(PUSH_QUEUE);
        queues.push((target.name.clone(), target.max_samples_per_send, tx, m));
        tasks.push(tokio::spawn(pusher.run(rx, stopping.clone())));
    }
    let registry = Arc::new(registry);
    let listen = cfg.listen;
    tokio::spawn(async move {
        if let Err(e) = telemetry::serve(listen, registry).await {
            tracing::error!(address = %listen, error = %e, "cannot serve self-metrics");
        }
    });

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for t in &cfg.push {
        tracing::info!(target = %t.name, url = %t.url, interval_ms = cfg.interval_ms, "pushing");
    }
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let round = collector.round().await;
                tracing::debug!(round_ms = round.ts, samples = round.samples.len(), "round collected");
                // Targets with the same batch size share the encoded bodies.
                let mut bodies: Vec<(usize, Vec<push::Batch>)> = Vec::new();
                for (name, max, tx, m) in &queues {
                    let k = match bodies.iter().position(|(n, _)| n == max) {
                        Some(k) => k,
                        None => {
                            bodies.push((*max, push::encode(&round.samples, &round.histograms, *max, round.ts)));
                            bodies.len() - 1
                        }
                    };
                    for b in &bodies[k].1 {
                        match tx.try_send(b.clone()) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(b)) => {
                                // Only a target stuck inside its sends (each bounded by its
                                // timeout) for PUSH_QUEUE batches gets here.
                                m.queue_full.inc_by(b.samples as u64);
                                tracing::error!(target = %name, samples = b.samples, "push queue full (the target is stuck): batch dropped for this target");
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => {
                                return Err(format!("push task of {name} ended"));
                            }
                        }
                    }
                }
            }
            _ = term.recv() => {
                tracing::info!("SIGTERM: draining");
                break;
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("interrupted: draining");
                break;
            }
        }
    }
    stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    drop(queues);
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// Batches each target's queue holds before the collector drops them for that target.
const PUSH_QUEUE: usize = 64;

/// The spool's base directory: `[buffer] dir`, or a temporary one when it cannot be used and no
/// config file was given (a developer running the built-in default without root).
fn spool_base(dir: &Path, explicit_config: bool) -> Result<PathBuf, String> {
    match std::fs::create_dir_all(dir) {
        Ok(()) => Ok(dir.to_path_buf()),
        Err(e) if !explicit_config => {
            let fallback = fallback_spool_dir();
            tracing::warn!(dir = %dir.display(), error = %e, fallback = %fallback.display(), "spool directory unusable; using the fallback");
            Ok(fallback)
        }
        Err(e) => Err(format!("spool {}: {e}", dir.display())),
    }
}

/// Releases before `[[push]]` kept one spool directly in `[buffer] dir`; its frames belong to
/// the first target now. Moved (renamed) once, and only into a target spool that is still empty.
fn adopt_single_spool(base: &Path, first: &str) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let old: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && (p.extension().is_some_and(|x| x == "seg")
                    || p.file_name().is_some_and(|n| n == "ack"))
        })
        .collect();
    if old.is_empty() {
        return;
    }
    let dest = base.join(first);
    let dest_has_segments = std::fs::read_dir(&dest).is_ok_and(|mut d| {
        d.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "seg")))
    });
    if dest_has_segments {
        tracing::warn!(dir = %base.display(), target = %first, "an old single spool and a target spool both exist; leaving the old one where it is");
        return;
    }
    if let Err(e) = std::fs::create_dir_all(&dest) {
        tracing::error!(dir = %dest.display(), error = %e, "cannot adopt the old spool");
        return;
    }
    for p in &old {
        if let Some(name) = p.file_name() {
            if let Err(e) = std::fs::rename(p, dest.join(name)) {
                tracing::error!(file = %p.display(), error = %e, "cannot adopt the old spool");
                return;
            }
        }
    }
    tracing::info!(files = old.len(), target = %first, "adopted the old single spool for the first push target");
}

fn main() -> ExitCode {
    let args = Args::parse();
    vigil_config::logging::init(args.log_format, "info");
    if let Some(path) = &args.check_config {
        return match load_config(path) {
            Ok(_) => {
                println!("{}: ok", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        };
    }
    let (cfg, explicit) = match &args.config {
        Some(p) => match load_config(p) {
            Ok(c) => (c, true),
            Err(e) => {
                eprintln!("vigil-agent: {e}");
                return ExitCode::from(1);
            }
        },
        None if Path::new(DEFAULT_CONFIG).exists() => {
            match load_config(Path::new(DEFAULT_CONFIG)) {
                Ok(c) => (c, true),
                Err(e) => {
                    eprintln!("vigil-agent: {e}");
                    return ExitCode::from(1);
                }
            }
        }
        None => (Config::default(), false),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vigil-agent: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cfg, explicit, args.once)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil-agent: {e}");
            ExitCode::from(1)
        }
    }
}
