//! `vigil-aggregator`: ingests remote-write from the fleet, keeps a short in-memory window of
//! series, evaluates rule files, serves the Prometheus HTTP API, and acts (in this first cut:
//! decides and logs — the embedded default is a dry run).
//!
//! Rule semantics live in `vigil-rules`; this crate feeds them and carries out what they return.

mod actions;
mod api;
mod app;
mod config;
mod engine;
mod ingest;
mod state;
mod store;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use clap::Parser;
use vigil_config::logging::LogFormat;

const DEFAULT_CONFIG: &str = "/etc/vigil/aggregator.toml";

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
    vigil_config::tomlread::load_file(path, config::parse)
}

fn main() -> ExitCode {
    let args = Args::parse();
    vigil_config::logging::init(args.log_format, "info");
    if let Some(path) = &args.check_config {
        let res = load(path).and_then(|c| app::load_rules(&c).map(|r| (c, r)));
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
        Some(p) => load(p),
        None if Path::new(DEFAULT_CONFIG).exists() => load(Path::new(DEFAULT_CONFIG)),
        None => {
            tracing::info!(
                "no config file: running the embedded default (127.0.0.1:9470, demo rules on this host's metrics, dry run)"
            );
            Ok(config::Config::embedded())
        }
    };
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vigil-aggregator: {e}");
            return ExitCode::from(1);
        }
    };
    let rules = match app::load_rules(&cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vigil-aggregator: {e}");
            return ExitCode::from(1);
        }
    };
    let db = match state::Db::open(&cfg.state_dir) {
        Ok(d) => d,
        Err(e) if args.config.is_none() && !Path::new(DEFAULT_CONFIG).exists() => {
            // The embedded default, run by someone who cannot write /var/lib/vigil.
            let dir = std::env::temp_dir().join("vigil-aggregator-state");
            tracing::warn!(error = %e, fallback = %dir.display(), "state directory unusable; using the fallback");
            match state::Db::open(&dir) {
                Ok(d) => d,
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
    // AWS clients only when [aws] is configured; credentials resolve at the first call.
    let clients = if cfg.aws_configured {
        Some(rt.block_on(actions::aws::connect(&cfg)))
    } else {
        None
    };
    let app = match app::App::new(cfg, rules, db, clients) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("vigil-aggregator: {e}");
            return ExitCode::from(1);
        }
    };
    let res: Result<(), String> = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(app.cfg.listen).await.map_err(|e| format!("cannot listen on {}: {e}", app.cfg.listen))?;
        tracing::info!(address = %app.cfg.listen, dry_run = app.cfg.dry_run, rule_files = app.rules().files.len(), "serving");
        tokio::spawn(api::serve(app.clone(), listener));
        // The first view of the fleet before the first evaluation, so that no decision is made
        // against a capacity that is only a guess (bounded: AWS may be unreachable).
        if let Err(e) = tokio::time::timeout(std::time::Duration::from_secs(10), app.actions.refresh(&app)).await.unwrap_or(Ok(())) {
            tracing::warn!(error = %e, "cannot describe the Auto Scaling groups yet; retrying in the background");
        }
        actions::spawn(app.clone());
        tokio::spawn(engine::run(app.clone()));
        app.ready.store(true, Ordering::SeqCst);
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    let a = app.clone();
                    let _ = tokio::task::spawn_blocking(move || a.reload()).await;
                }
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        tracing::info!("stopping");
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
