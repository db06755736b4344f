//! `vigil-rules`: check rule files, run their unit tests, and backtest them on recorded data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use vigil_config::logging::LogFormat;
use vigil_rules::evaluator::RuleSet;
use vigil_rules::rulefile::{self, Context};
use vigil_rules::{replay, unittest};

mod history;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DataFormat {
    /// By extension: `.toml` is a series file, anything else a remote-write dump.
    Auto,
    Series,
    RemoteWrite,
}

/// Check Vigil rule files, run their unit tests, and backtest them on recorded data.
#[derive(Debug, Parser)]
#[command(name = "vigil-rules", version, about)]
struct Args {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
// Parsed once per run: the size of the largest variant (replay's flags) costs nothing.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Validate rule files; print one `FILE:LINE:COL: message` line per problem.
    Check {
        /// Rule files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Aggregator config whose receivers the rules may name.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Convert a Prometheus rule file (YAML) to Vigil's TOML, printed on stdout; whole-line
    /// comments are kept; what Vigil cannot hold is an error naming its line and column.
    Convert {
        /// A Prometheus rule file.
        file: PathBuf,
    },
    /// Run rule unit tests (promtool's `test rules`, in TOML).
    Test {
        /// Test files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Aggregator config whose receivers the rules may name.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Replay recorded samples through rules; print every alert transition and every scaling or
    /// replacement decision, in time order.
    Replay {
        /// Rule files (repeat for several).
        #[arg(long = "rules", required = true)]
        rules: Vec<PathBuf>,
        /// Recorded data: a series file (.toml) or a remote-write dump.
        #[arg(long, required_unless_present = "from", conflicts_with = "from")]
        data: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "auto")]
        data_format: DataFormat,
        /// History from a Prometheus-compatible query API instead (VictoriaMetrics, Prometheus,
        /// Mimir, Thanos, Amazon Managed Service for Prometheus): its base URL.
        #[arg(long, value_name = "URL", requires_all = ["start", "end"])]
        from: Option<String>,
        /// With --from: the first evaluation (RFC 3339 or Unix seconds).
        #[arg(long)]
        start: Option<String>,
        /// With --from: the last evaluation (RFC 3339 or Unix seconds).
        #[arg(long)]
        end: Option<String>,
        /// With --from: a header sent with every request, `Name: value` (repeatable), such as
        /// a tenant's `X-Scope-OrgID: web`.
        #[arg(long, value_name = "NAME: VALUE")]
        header: Vec<String>,
        /// With --from: a file holding a bearer token, sent as `Authorization: Bearer ...`.
        #[arg(long, value_name = "FILE")]
        bearer_token_file: Option<PathBuf>,
        /// With --from: sign requests with SigV4 in this region (Amazon Managed Service for
        /// Prometheus), with the AWS SDK's default credential chain.
        #[arg(long, value_name = "REGION")]
        sigv4_region: Option<String>,
        /// With --sigv4-region: the service signed for.
        #[arg(long, default_value = "aps")]
        sigv4_service: String,
        /// With --from: the longest window one request asks for.
        #[arg(long, default_value = "1h")]
        chunk: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
        /// Interval for groups and policies that set none.
        #[arg(long, visible_alias = "step", default_value = "10s")]
        evaluation_interval: String,
        /// Starting capacity of an Auto Scaling group, `ASG=N` (repeatable).
        #[arg(long, value_name = "ASG=N")]
        capacity: Vec<String>,
    },
}

fn receivers(config: Option<&Path>) -> anyhow::Result<Option<Vec<String>>> {
    let Some(path) = config else { return Ok(None) };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    match rulefile::receivers_from_config(&path.display().to_string(), &text) {
        Ok(r) => Ok(Some(r)),
        Err(errs) => {
            for e in errs {
                eprintln!("{e}");
            }
            bail!("invalid config {}", path.display())
        }
    }
}

fn read_rule_files(files: &[PathBuf]) -> anyhow::Result<Vec<(String, String)>> {
    files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            Ok((f.display().to_string(), text))
        })
        .collect()
}

fn convert(file: &Path) -> anyhow::Result<bool> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    match vigil_rules::convert::rule_file(&file.display().to_string(), &text) {
        Ok(toml) => {
            print!("{toml}");
            Ok(true)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(false)
        }
    }
}

fn check(files: &[PathBuf], config: Option<&Path>) -> anyhow::Result<bool> {
    let ctx = Context {
        receivers: receivers(config)?,
    };
    let sources = read_rule_files(files)?;
    let mut ok = true;
    for (path, text) in &sources {
        match rulefile::load(path, text, &ctx) {
            Ok(f) => {
                let rules: usize = f.groups.iter().map(|g| g.rules.len()).sum();
                println!(
                    "{path}: ok ({rules} rules in {} groups, {} scaling, {} replace)",
                    f.groups.len(),
                    f.scaling.len(),
                    f.replace.len()
                );
            }
            Err(errs) => {
                ok = false;
                for e in errs {
                    println!("{e}");
                }
            }
        }
    }
    if ok {
        // Names unique across files.
        if let Err(errs) = rulefile::load_all(&sources, &ctx) {
            ok = false;
            for e in errs {
                println!("{e}");
            }
        }
    }
    Ok(ok)
}

fn test(files: &[PathBuf], config: Option<&Path>) -> anyhow::Result<bool> {
    let recv = receivers(config)?;
    let mut ok = true;
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        let report = unittest::run(f, &text, recv.clone());
        print!("{}", report.text);
        if report.failures > 0 {
            ok = false;
        }
    }
    Ok(ok)
}

/// Where a replay's samples come from.
enum Source<'a> {
    File(&'a Path, DataFormat),
    History(history::Request<'a>),
}

fn run_replay(
    rules: &[PathBuf],
    source: Source<'_>,
    format: OutputFormat,
    interval: &str,
    capacity: &[String],
) -> anyhow::Result<bool> {
    let default_interval_ms = vigil_rules::duration::parse_ms(interval)
        .map_err(|e| anyhow::anyhow!("--evaluation-interval: {e}"))?;
    if default_interval_ms <= 0 {
        bail!("--evaluation-interval must be greater than zero");
    }
    let sources = read_rule_files(rules)?;
    let files = match rulefile::load_all(&sources, &Context::default()) {
        Ok(f) => f,
        Err(errs) => {
            for e in errs {
                eprintln!("{e}");
            }
            bail!("invalid rule files");
        }
    };
    let set = RuleSet {
        files,
        default_interval_ms,
    };
    let mut cap = BTreeMap::new();
    for c in capacity {
        let (asg, n) = c
            .split_once('=')
            .with_context(|| format!("--capacity {c:?}: expected ASG=N"))?;
        let n: u32 = n
            .parse()
            .with_context(|| format!("--capacity {c:?}: N must be a whole number"))?;
        cap.insert(asg.to_string(), n);
    }
    let (name, mut loaded) = match source {
        Source::File(data, data_format) => {
            let name = data.display().to_string();
            let series = match data_format {
                DataFormat::Series => true,
                DataFormat::RemoteWrite => false,
                DataFormat::Auto => data.extension().is_some_and(|e| e == "toml"),
            };
            let loaded = if series {
                let text =
                    std::fs::read_to_string(data).with_context(|| format!("cannot read {name}"))?;
                replay::load_series_file(&name, &text)?
            } else {
                let bytes = std::fs::read(data).with_context(|| format!("cannot read {name}"))?;
                replay::load_dump(&name, &bytes)?
            };
            (name, loaded)
        }
        Source::History(req) => (req.url.to_string(), history::fetch(&req, &set)?),
    };
    let events =
        replay::run(&set, &mut loaded, &cap).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    match format {
        OutputFormat::Text => {
            for e in &events {
                println!("{}", replay::event_text(e));
            }
        }
        OutputFormat::Json => {
            let v: Vec<serde_json::Value> = events.iter().map(replay::event_json).collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
    }
    Ok(true)
}

fn main() -> ExitCode {
    let args = Args::parse();
    vigil_config::logging::init(args.log_format, "warn");
    let res = match &args.command {
        Command::Check { files, config } => check(files, config.as_deref()),
        Command::Convert { file } => convert(file),
        Command::Test { files, config } => test(files, config.as_deref()),
        Command::Replay {
            rules,
            data,
            data_format,
            from,
            start,
            end,
            header,
            bearer_token_file,
            sigv4_region,
            sigv4_service,
            chunk,
            format,
            evaluation_interval,
            capacity,
        } => {
            let source = match (data, from) {
                (Some(d), _) => Ok(Source::File(d, *data_format)),
                (None, Some(url)) => history::Request::new(
                    url,
                    start.as_deref(),
                    end.as_deref(),
                    header,
                    bearer_token_file.as_deref(),
                    sigv4_region.as_deref().map(|r| (r, sigv4_service.as_str())),
                    chunk,
                )
                .map(Source::History),
                (None, None) => Err(anyhow::anyhow!("--data or --from is required")),
            };
            source.and_then(|s| run_replay(rules, s, *format, evaluation_interval, capacity))
        }
    };
    match res {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("vigil-rules: {e:#}");
            ExitCode::from(2)
        }
    }
}
