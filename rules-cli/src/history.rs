//! `vigil-rules replay --from URL`: the history a backtest reads, fetched from a
//! Prometheus-compatible query API as raw samples before the replay starts.
//!
//! Only what the rules read is fetched: each selector of every rule, policy and guard over the
//! widest window its evaluations between `--start` and `--end` look at (ranges, lookback,
//! offsets, subqueries), in chunks of `--chunk`, with progress on stderr. Series the replay
//! writes itself (recorded series, `ALERTS`, `vigil_instance_warm`) are left out: the rules
//! under test compute them afresh, as the aggregator would have. The replay then runs exactly
//! as on `--data`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};
use vigil_remote::read::Chunk;
use vigil_remote::{selector_text, QueryApi, SigV4};
use vigil_rules::duration::{format_timestamp_ms, parse_ms, parse_timestamp_ms};
use vigil_rules::evaluator::RuleSet;
use vigil_rules::promql::storage::Matcher;
use vigil_rules::promql::MemStorage;
use vigil_rules::replay::{self, Data};

/// One request may take this long (an hour of a large selection, from a loaded engine).
const TIMEOUT: Duration = Duration::from_secs(120);

/// What `--from` and its flags ask for.
pub struct Request<'a> {
    pub url: &'a str,
    start: i64,
    end: i64,
    headers: Vec<(String, String)>,
    /// SigV4 region and service.
    sigv4: Option<(&'a str, &'a str)>,
    chunk_ms: i64,
}

impl<'a> Request<'a> {
    pub fn new(
        url: &'a str,
        start: Option<&str>,
        end: Option<&str>,
        header: &[String],
        bearer_token_file: Option<&Path>,
        sigv4: Option<(&'a str, &'a str)>,
        chunk: &str,
    ) -> anyhow::Result<Request<'a>> {
        let time = |flag: &str, v: Option<&str>| -> anyhow::Result<i64> {
            let v = v.with_context(|| format!("--from needs {flag}"))?;
            parse_timestamp_ms(v).map_err(|e| anyhow::anyhow!("{flag} {v:?}: {e}"))
        };
        let (start, end) = (time("--start", start)?, time("--end", end)?);
        if end < start {
            bail!(
                "--end ({}) is before --start ({})",
                format_timestamp_ms(end),
                format_timestamp_ms(start)
            );
        }
        let mut headers = Vec::new();
        for h in header {
            let (k, v) = h
                .split_once(':')
                .with_context(|| format!("--header {h:?}: expected `Name: value`"))?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        if let Some(f) = bearer_token_file {
            let token = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            headers.push(("authorization".into(), format!("Bearer {}", token.trim())));
        }
        let chunk_ms = parse_ms(chunk).map_err(|e| anyhow::anyhow!("--chunk {chunk:?}: {e}"))?;
        if chunk_ms <= 0 {
            bail!("--chunk must be greater than zero");
        }
        Ok(Request {
            url,
            start,
            end,
            headers,
            sigv4,
            chunk_ms,
        })
    }
}

/// Time windows `[mint, maxt]` (ms).
type Windows = Vec<(i64, i64)>;

/// Fetches what replaying `rules` over the request's range reads.
pub fn fetch(req: &Request<'_>, rules: &RuleSet) -> anyhow::Result<Data> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the HTTP client")?;
    let mut api = QueryApi::new(req.url, req.headers.clone(), TIMEOUT)
        .map_err(|e| anyhow::anyhow!("--from {e}"))?
        .with_chunk_ms(req.chunk_ms);
    if let Some((region, service)) = req.sigv4 {
        let signer = rt
            .block_on(SigV4::from_env(region, service))
            .map_err(|e| anyhow::anyhow!("--sigv4-region {region}: {e}"))?;
        api = api.with_signer(std::sync::Arc::new(signer));
    }
    let (reads, written) = replay::reads(rules, req.start, req.end);
    // One selection per distinct selector and window; windows of one selector that overlap
    // or touch are fetched as one (`x` and `x offset 1w` stay two).
    let mut windows: BTreeMap<String, (Vec<Matcher>, Windows)> = BTreeMap::new();
    for r in reads {
        for alt in r.alternatives {
            windows
                .entry(selector_text(&alt))
                .or_insert_with(|| (alt, Vec::new()))
                .1
                .push((r.mint, r.maxt));
        }
    }
    let mut selections: Vec<(String, Vec<Matcher>, i64, i64)> = Vec::new();
    for (text, (matchers, mut w)) in windows {
        w.sort_unstable();
        let mut merged: Vec<(i64, i64)> = Vec::new();
        for (lo, hi) in w {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        for (lo, hi) in merged {
            selections.push((text.clone(), matchers.clone(), lo, hi));
        }
    }
    let mut storage = MemStorage::new();
    let mut skipped = 0usize;
    let mut stderr = std::io::stderr();
    for (text, matchers, mint, maxt) in &selections {
        let mut report = |c: Chunk| {
            let _ = writeln!(
                stderr,
                "vigil-rules: {text} {} .. {} ({}/{}): {} series, {} samples",
                format_timestamp_ms(c.from + 1),
                format_timestamp_ms(c.to),
                c.index,
                c.of,
                c.series,
                c.samples
            );
        };
        let data = rt
            .block_on(api.select(matchers, *mint, *maxt, &mut report))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for sd in data {
            if sd.labels.metric_name().is_some_and(|n| written.contains(n)) {
                skipped += 1;
                continue;
            }
            storage.add_series(sd.labels, sd.samples);
        }
    }
    let samples: usize = storage.iter().map(|(_, s)| s.len()).sum();
    let _ = writeln!(
        stderr,
        "vigil-rules: {}: {} selections, {} series, {samples} samples{}",
        api.base(),
        selections.len(),
        storage.series_count(),
        if skipped > 0 {
            format!(", {skipped} series the rules write themselves left out")
        } else {
            String::new()
        }
    );
    Ok(Data {
        storage,
        start: req.start,
        end: req.end,
    })
}
