//! `vigil-aggregator`: ingests remote-write from the fleet, keeps a short in-memory window of
//! series, evaluates rule files, serves the Prometheus HTTP API, and acts (in this first cut:
//! decides and logs — the embedded default is a dry run).
//!
//! Rule semantics live in `vigil-rules`; this crate feeds them and carries out what they return.
//!
//! `main` wires the components; each is handed what it needs and nothing imports back up:
//! `api` → `engine` → `fleet`, `publish`, `notify` → `cluster`, `aws`, `state`, `store`,
//! `ruleset`, `clock`, `config` (`scripts/module-graph` checks that no two modules import each
//! other). `cluster` decides who acts: alone, or the holder of an HA pair's DynamoDB lease.

mod api;
mod aws;
mod clock;
mod cluster;
mod config;
mod engine;
mod fleet;
mod import;
mod matcher;
mod notify;
mod publish;
mod remote;
mod routing;
mod ruleset;
mod state;
mod store;

#[cfg(test)]
mod fuzz_tests;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use vigil_config::logging::LogFormat;

const DEFAULT_CONFIG: &str = "/etc/vigil/aggregator.toml";
/// How long API requests in flight may finish after SIGTERM (the unit's TimeoutStopSec is 30 s).
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Vigil aggregator: remote-write ingest, PromQL rules, alerts and AWS actions.
#[derive(Debug, Parser)]
#[command(name = "vigil-aggregator", version, about)]
struct Args {
    /// Configuration file (without one, and with the default missing, the embedded default runs:
    /// 127.0.0.1:9470, demo rules on this host's metrics, dry run).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Validate a configuration file and every rule file it names, then exit.
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn load(path: &Path) -> Result<config::Config, String> {
    load_shown(path).map(|(c, _)| c)
}

/// The configuration, and its text as `/api/v2/status` shows it (secrets replaced).
fn load_shown(path: &Path) -> Result<(config::Config, String), String> {
    let mut shown = String::new();
    let c = vigil_config::tomlread::load_file(path, |file, text| {
        shown = vigil_config::redact::toml_text(text);
        config::parse(file, text)
    })?;
    Ok((c, shown))
}

fn main() -> ExitCode {
    let args = Args::parse();
    vigil_config::logging::init(args.log_format, "info");
    if let Some(path) = &args.check_config {
        let res = load(path).and_then(|c| {
            if let Some(t) = &c.tls {
                api::tls::Tls::load(t)?;
            }
            ruleset::load_rules(&c)
                .map(|r| (c, r))
                .map_err(|e| e.to_string())
        });
        return match res {
            Ok((_, rules)) => {
                let n: usize = rules
                    .files
                    .iter()
                    .map(|f| f.groups.iter().map(|g| g.rules.len()).sum::<usize>())
                    .sum();
                println!(
                    "{}: ok ({} rule files, {n} rules)",
                    path.display(),
                    rules.files.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        };
    }
    // Several workers: ingest, health checks and the API's async work go on while an
    // evaluation or a query holds a thread (both run on the blocking pool).
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vigil-aggregator: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // SIGHUP and SIGTERM are taken over first thing: a reload sent while the rules load or AWS
    // is first described must not kill the process (SIGHUP's default), which systemd would count
    // as a clean exit and not restart.
    let signals = {
        let _in_runtime = rt.enter();
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::hangup()).and_then(|h| Ok((h, signal(SignalKind::terminate())?)))
    };
    let (mut hup, mut term) = match signals {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vigil-aggregator: cannot handle signals: {e}");
            return ExitCode::from(1);
        }
    };
    let cfg = match &args.config {
        Some(p) => load_shown(p),
        None if Path::new(DEFAULT_CONFIG).exists() => load_shown(Path::new(DEFAULT_CONFIG)),
        None => {
            tracing::info!(
                "no config file: running the embedded default (127.0.0.1:9470, demo rules on this host's metrics, dry run)"
            );
            Ok((
                config::Config::embedded(),
                "# no configuration file: the embedded default\n".to_string(),
            ))
        }
    };
    let (cfg, shown) = match cfg {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vigil-aggregator: {e}");
            return ExitCode::from(1);
        }
    };
    let rules = match ruleset::load_rules(&cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vigil-aggregator: {e}");
            return ExitCode::from(1);
        }
    };
    let (db, state_dir) = match state::Db::open(&cfg.state_dir) {
        Ok(d) => (d, cfg.state_dir.clone()),
        Err(e) if args.config.is_none() && !Path::new(DEFAULT_CONFIG).exists() => {
            // The embedded default, run by someone who cannot write /var/lib/vigil.
            let dir = std::env::temp_dir().join("vigil-aggregator-state");
            tracing::warn!(error = %e, fallback = %dir.display(), "state directory unusable; using the fallback");
            match state::Db::open(&dir) {
                Ok(d) => (d, dir),
                Err(e) => {
                    eprintln!("vigil-aggregator: {e}");
                    return ExitCode::from(1);
                }
            }
        }
        Err(e) => {
            eprintln!("vigil-aggregator: {}: {e}", cfg.state_dir.display());
            return ExitCode::from(1);
        }
    };
    let tls = match cfg.tls.as_ref().map(api::tls::Tls::load).transpose() {
        Ok(t) => t.map(Arc::new),
        Err(e) => {
            eprintln!("vigil-aggregator: server TLS: {e}");
            return ExitCode::from(1);
        }
    };
    let res: Result<(), String> = rt.block_on(async move {
        let wired = wire(cfg, shown, rules, db, &state_dir).await?;
        let Wired { api, engine, fleet, publisher, outbox, rules, cluster, forwarder, cloudwatch, target_health } = wired;
        let store = api.store.clone();
        let listen = api.cfg.listen;
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        tracing::info!(address = %listen, tls = tls.is_some(), mtls = tls.as_ref().is_some_and(|t| t.mtls()), dry_run = api.cfg.dry_run, rule_files = rules.current().files.len(), "serving");
        let limits = api::Limits {
            max_connections: api.cfg.max_connections,
            max_connections_per_ip: api.cfg.max_connections_per_ip,
            refused: api.connections_refused.clone(),
            tls_failed: api.tls_handshake_failures.clone(),
            header_read_timeout: Duration::from_millis(api.cfg.header_read_timeout_ms as u64),
            grace: STOP_GRACE,
        };
        let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(api::serve(api::router(api.clone()), listener, tls.clone(), limits, async move {
            let _ = api_stopped.await;
        }));
        // The first view of the fleet before the first evaluation, so that no decision is made
        // against a capacity that is only a guess (bounded: AWS may be unreachable).
        if let Err(e) = tokio::time::timeout(Duration::from_secs(10), fleet.refresh(&rules.groups())).await.unwrap_or(Ok(())) {
            tracing::warn!(error = %e, "cannot describe the Auto Scaling groups yet; retrying in the background");
        }
        let every = Duration::from_millis(fleet::refresh_interval_ms(rules.current().tick_ms()) as u64);
        let (f, r) = (fleet.clone(), rules.clone());
        tokio::spawn(async move { f.run_refresh(|| r.groups(), every).await });
        let f = fleet.clone();
        tokio::spawn(async move { f.run_actuator().await });
        tokio::spawn(publisher.run());
        tokio::spawn(outbox.run());
        tokio::spawn(engine.clone().run());
        let c = cluster.clone();
        tokio::spawn(async move { c.run().await });
        tokio::spawn(engine.clone().run_cluster());
        if api.cfg.wal.enabled {
            tokio::spawn(checkpoints(store.clone(), api.cfg.wal.checkpoint_interval_ms));
        }
        if let Some(f) = forwarder {
            tokio::spawn(f.run());
        }
        if let Some(c) = cloudwatch {
            tokio::spawn(c.run());
        }
        if let Some(t) = target_health {
            tokio::spawn(t.run());
        }
        api.ready.store(true, Ordering::SeqCst);
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    let r = rules.clone();
                    let _ = tokio::task::spawn_blocking(move || r.reload()).await;
                    if let Some(t) = &tls {
                        match t.reload() {
                            Ok(()) => tracing::info!("TLS certificate and key re-read"),
                            Err(e) => tracing::error!(error = %e, "TLS files re-read failed: the previous certificate stays in use"),
                        }
                    }
                }
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        tracing::info!("stopping");
        // No new connections; requests in flight finish within the grace period.
        let _ = stop_api.send(());
        // The holder begins nothing more, lets its calls in flight end, writes the state as it
        // is, then gives the lease up: a follower takes over at once rather than after the
        // lease runs out, and repeats nothing.
        if let Some(epoch) = cluster.stop_acting() {
            if let Some(t) = cluster.call_timeout() {
                tokio::time::sleep(t).await;
            }
            engine.share_final(epoch).await;
        }
        cluster.release().await;
        let _ = server.await;
        // Ingest has stopped: a checkpoint now leaves no log to replay at the next start.
        if api.cfg.wal.enabled {
            let s = store.clone();
            let saved = tokio::task::spawn_blocking(move || {
                let r = s.checkpoint();
                // Whatever the checkpoint did, what the last evaluation recorded is logged.
                s.flush_log();
                r
            })
            .await;
            match saved {
                Ok(Ok(bytes)) => tracing::info!(bytes, "window saved"),
                Ok(Err(e)) => tracing::error!(error = %e, "window checkpoint failed at stop: the next start replays the log"),
                Err(e) => tracing::error!(error = %e, "window checkpoint failed at stop: the next start replays the log"),
            }
        }
        Ok(())
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil-aggregator: {e}");
            ExitCode::from(1)
        }
    }
}

/// Rebuilds the window from the checkpoint and the log in `dir`, before anything is ingested.
async fn restore_window(
    store: &Arc<store::Store>,
    dir: &Path,
    fsync: bool,
    max_body: usize,
) -> Result<(), String> {
    let (s, d) = (store.clone(), dir.to_path_buf());
    let r = tokio::task::spawn_blocking(move || s.open_log(&d, fsync, max_body))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{}: cannot restore the window: {e}", dir.display()))?;
    tracing::info!(
        series = r.series,
        samples = r.samples,
        checkpoint_series = r.checkpoint_series,
        log_records = r.log.records,
        log_bytes = r.log.bytes,
        corrupt = r.log.corrupt + r.damaged_blocks,
        cut_bytes = r.log.cut_bytes,
        over_series_limit = r.over_limit,
        seconds = r.seconds,
        "window restored from disk"
    );
    Ok(())
}

/// Checkpoints the window every `interval_ms`, or sooner when the log has grown large.
async fn checkpoints(store: Arc<store::Store>, interval_ms: i64) {
    let mut last = std::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(10).min(Duration::from_millis(interval_ms as u64)))
            .await;
        if last.elapsed() < Duration::from_millis(interval_ms as u64) && !store.checkpoint_due() {
            continue;
        }
        last = std::time::Instant::now();
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.checkpoint()).await {
            Ok(Ok(bytes)) => tracing::debug!(bytes, "window checkpoint written"),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "window checkpoint failed: the log keeps everything since the last one")
            }
            Err(e) => tracing::error!(error = %e, "window checkpoint failed"),
        }
    }
}

/// The components, wired.
struct Wired {
    api: Arc<api::Api>,
    engine: Arc<engine::Engine>,
    fleet: Arc<fleet::Fleet>,
    publisher: Arc<publish::Publisher>,
    outbox: Arc<notify::Outbox>,
    rules: Arc<ruleset::Rules>,
    cluster: Arc<cluster::Cluster>,
    /// `[storage.remote] write_url`: sends the window's log on to the engine.
    forwarder: Option<remote::Forwarder>,
    /// `[[import.cloudwatch]]`: polls CloudWatch into the window.
    cloudwatch: Option<import::CloudWatch>,
    /// `[[import.target_health]]`: polls the load balancer's target health.
    target_health: Option<import::target_health::TargetHealthPoller>,
}

/// The fleet's fence in an HA cluster: the lease holder, within its deadline, acts.
struct LeaseFence(Arc<cluster::Cluster>);

impl fleet::Fence for LeaseFence {
    fn token(&self) -> Option<u64> {
        self.0.may_act()
    }

    fn follower(&self) -> bool {
        self.0.is_follower()
    }

    fn recorded(&self, at_ms: i64) -> bool {
        self.0.recorded(at_ms)
    }
}

/// Builds every component and hands each what it needs: the AWS clients (the SDK's or the dry
/// run's, chosen here once), one clock, one registry for the self-metrics each module owns.
async fn wire(
    cfg: config::Config,
    config_shown: String,
    rules: vigil_rules::evaluator::RuleSet,
    db: state::Db,
    state_dir: &Path,
) -> Result<Wired, String> {
    let mut registry = prometheus_client::registry::Registry::default();
    let clock = clock::system(&mut registry);
    let calls = aws::CallMetrics::register(&mut registry);
    // AWS clients only when [aws] is configured; credentials resolve at the first call.
    let clients = if cfg.aws_configured {
        aws::connect(&cfg, &calls).await
    } else {
        aws::without_aws(&calls)
    };
    let tick_ms = rules.tick_ms();
    let cloudwatch = match (&clients.metrics, cfg.cloudwatch_imports.is_empty()) {
        (Some(reader), false) => Some((reader.clone(), cfg.cloudwatch_imports.clone())),
        _ => None,
    };
    let target_health = match (&clients.target_health, cfg.target_health_imports.is_empty()) {
        (Some(reader), false) => Some((reader.clone(), cfg.target_health_imports.clone())),
        _ => None,
    };
    let rules = Arc::new(ruleset::Rules::new(cfg.clone(), rules, &mut registry));
    let store = Arc::new(store::Store::new(cfg.retention_ms, cfg.max_series));
    store.register_log_metrics(&mut registry);
    // The window's log; with forwarding, also its queue (`queue_dir`).
    let log_dir = match cfg.remote.as_ref().and_then(|r| r.queue_dir.clone()) {
        Some(d) => d,
        None => state_dir.join("wal"),
    };
    let forwarder = match cfg.remote.as_ref().filter(|r| r.write_url.is_some()) {
        Some(r) => {
            // Segments not yet forwarded outlive the checkpoint that replaying skips.
            let from = remote::saved_position(&log_dir).0;
            store.keep_log_from.store(from, Ordering::Relaxed);
            let max_body = cfg.max_body_bytes;
            let signer = remote::signer(r, &cfg.region).await?;
            let f = remote::Forwarder::new(
                r,
                signer,
                &log_dir,
                max_body,
                store.clone(),
                &mut registry,
            )?;
            Some(f)
        }
        None => None,
    };
    if cfg.wal.enabled {
        restore_window(&store, &log_dir, cfg.wal.fsync, cfg.max_body_bytes).await?;
    }
    let remote = match &cfg.remote {
        Some(r) => {
            let signer = remote::signer(r, &cfg.region).await?;
            let imported: Vec<String> = cfg
                .cloudwatch_imports
                .iter()
                .flat_map(|i| i.statistics.iter().map(|s| i.series_name(s)))
                .collect();
            let remote = remote::Remote::connect(r, signer)?.written_here(imported);
            if r.whole_expressions && r.write_url.is_none() {
                tracing::warn!("storage.remote.evaluation = \"engine\" without write_url: what agents push to the aggregator is not forwarded, so whole expressions only see what reaches the engine another way (agents writing to it directly)");
            }
            tracing::info!(query_url = %vigil_config::redact::url(&r.query_url), "storage: rules and the query API read the engine (backend = \"remote\")");
            Some(Arc::new(remote))
        }
        None => None,
    };
    let db = state::Shared::new(db);
    // Alone, or one of an HA cluster on a DynamoDB lease: the cluster decides who acts.
    let cluster = Arc::new(match &cfg.cluster {
        Some(cl) => {
            let table = cluster::Dynamo::connect(&cfg, cl).await;
            if cl.create_tables {
                table.create_tables().await?;
            }
            tracing::info!(node_id = %cl.node_id, lease = %cl.lease_name, lease_ttl_ms = cl.lease_ttl_ms, "cluster member: following until the lease is taken");
            if cl
                .advertise_address
                .rsplit_once(':')
                .and_then(|(h, _)| h.trim_matches(['[', ']']).parse::<std::net::IpAddr>().ok())
                .is_some_and(|ip| ip.is_loopback())
            {
                tracing::warn!(advertise_address = %cl.advertise_address, "the advertised address is a loopback one: a node on another host cannot forward admin writes to it; set [cluster] advertise_address (or listen on a reachable address)");
            }
            cluster::Cluster::new(cl.clone(), Box::new(table), clock.clone(), &mut registry)
        }
        None => cluster::Cluster::single(clock.clone(), &mut registry),
    });
    let fleet = Arc::new(
        fleet::Fleet::new(clients.autoscaling, clock.clone(), tick_ms, &mut registry)
            .with_fence(Box::new(LeaseFence(cluster.clone()))),
    );
    // A webhook call ends inside the lease in a cluster (as every AWS effect call does).
    let webhook_timeout = Duration::from_millis(match &cfg.cluster {
        Some(cl) => cl.call_timeout_ms() as u64,
        None => 10_000,
    });
    let publisher = Arc::new(publish::Publisher::new(
        clients.cloudwatch,
        cfg.cloudwatch_namespace.clone(),
        cfg.cloudwatch_flush_ms,
        clock.clone(),
        cluster.clone(),
        &mut registry,
    ));
    let outbox = Arc::new(notify::Outbox::new(
        db.clone(),
        clients.sns,
        clock.clone(),
        cluster.clone(),
        webhook_timeout,
        &mut registry,
    ));
    let engine = Arc::new(
        engine::Engine::new(
            engine::Parts {
                store: store.clone(),
                remote: remote.clone(),
                rules: rules.clone(),
                fleet: fleet.clone(),
                publisher: publisher.clone(),
                outbox: outbox.clone(),
                cluster: cluster.clone(),
                db: db.clone(),
                clock: clock.clone(),
                notify: notify::Settings {
                    group_by: cfg.group_by.clone(),
                    group_wait_ms: cfg.group_wait_ms,
                    group_interval_ms: cfg.group_interval_ms,
                    repeat_interval_ms: cfg.repeat_interval_ms,
                    receivers: cfg.receivers.clone(),
                    routing: cfg.routing.clone(),
                    templates: cfg.templates.clone(),
                },
                stale_after_ms: cfg.stale_after_ms,
                evaluation_interval_ms: cfg.evaluation_interval_ms,
            },
            &mut registry,
        )
        .map_err(|e| e.to_string())?,
    );
    let write = api::write::Ingest::new(cfg.clone(), store.clone(), clock.clone(), &mut registry);
    let tokens = api::auth::Tokens::load(&cfg, &mut registry)?;
    let connections_refused = prometheus_client::metrics::counter::Counter::default();
    registry.register(
        "vigil_aggregator_connections_refused",
        "Connections refused because their client address had max_connections_per_ip open",
        connections_refused.clone(),
    );
    let tls_handshake_failures = prometheus_client::metrics::counter::Counter::default();
    registry.register(
        "vigil_aggregator_tls_handshake_failures",
        "TLS connections that did not complete their handshake (bad or missing client certificate, plain HTTP, timeout)",
        tls_handshake_failures.clone(),
    );
    let query_engine = vigil_rules::promql::Engine::new(vigil_rules::promql::EngineOpts {
        max_samples: cfg.query_max_samples,
        ..engine.promql().opts.clone()
    });
    let query_pool = api::QueryPool::new(cfg.query_max_concurrency, api::QUERY_NICE)
        .map_err(|e| format!("cannot start the query threads: {e}"))?;
    let cloudwatch = cloudwatch.map(|(reader, imports)| {
        import::CloudWatch::new(imports, reader, store.clone(), clock.clone(), &mut registry)
    });
    let target_health = target_health.map(|(reader, imports)| {
        let f = fleet.clone();
        import::target_health::TargetHealthPoller::new(
            imports,
            reader,
            store.clone(),
            clock.clone(),
            Arc::new(move || f.zones()),
        )
    });
    let api = Arc::new(api::Api {
        remote,
        query_pool,
        query_slots: Arc::new(tokio::sync::Semaphore::new(cfg.query_max_concurrency)),
        query_engine,
        view: engine.view(),
        engine: engine.clone(),
        clock,
        store,
        rules: rules.clone(),
        fleet: fleet.clone(),
        cluster: cluster.clone(),
        outbox: outbox.clone(),
        db,
        write,
        registry,
        http: vigil_config::http::Http::new().map_err(|e| format!("no HTTP client: {e}"))?,
        tokens,
        ready: std::sync::atomic::AtomicBool::new(false),
        connections_refused,
        tls_handshake_failures,
        config_shown,
        started_ms: vigil_wire::clock::wall_ms(),
        cfg,
    });
    Ok(Wired {
        api,
        engine,
        fleet,
        publisher,
        outbox,
        rules,
        cloudwatch,
        target_health,
        forwarder: forwarder.map(|f| {
            let c = cluster.clone();
            f.acting_when(move || c.holds_state())
        }),
        cluster,
    })
}
