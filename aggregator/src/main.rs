//! `vigil-aggregator`: ingests remote-write from the fleet, keeps a short in-memory window,
//! evaluates rule files and acts on AWS.
//!
//! First cut: the command line is in place; ingest, evaluation and actions are not built yet.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Vigil aggregator: remote-write ingest, PromQL rules, alerts and AWS actions.
#[derive(Debug, Parser)]
#[command(name = "vigil-aggregator", version, about)]
struct Args {
    /// Configuration file.
    #[arg(long, default_value = "/etc/vigil/aggregator.toml")]
    config: PathBuf,
    /// Validate a configuration file and every rule file it names, then exit.
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let what = if args.check_config.is_some() {
        "config validation"
    } else {
        "ingest, rule evaluation and actions"
    };
    tracing::error!(
        config = %args.config.display(),
        "vigil-aggregator: {what} is not built yet (see the aggregator issue); the PromQL engine is in vigil-rules"
    );
    ExitCode::from(2)
}
