//! `vigil-agent`: runs on every instance or pod, collects host metrics, scrapes the application,
//! probes its health endpoint and pushes everything with Prometheus remote-write.
//!
//! Must never depend on the AWS SDK (IMDSv2 is plain HTTP) or on the rules engine.
//!
//! First cut: the command line is in place; collection and push are not built yet.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Vigil agent: host metrics, app scrape and health probe, pushed with remote-write.
#[derive(Debug, Parser)]
#[command(name = "vigil-agent", version, about)]
struct Args {
    /// Configuration file.
    #[arg(long, default_value = "/etc/vigil/agent.toml")]
    config: PathBuf,
    /// Collect one round, print it in the Prometheus text format and exit.
    #[arg(long)]
    once: bool,
    /// Validate a configuration file and exit.
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    let what = if args.check_config.is_some() {
        "config validation"
    } else if args.once {
        "one-shot collection (--once)"
    } else {
        "collection and push"
    };
    tracing::error!(config = %args.config.display(), "vigil-agent: {what} is not built yet (see the agent issue)");
    ExitCode::from(2)
}
