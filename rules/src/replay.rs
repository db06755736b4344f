//! `vigil-rules replay`: backtests rules on recorded samples and lists, in time order, every
//! alert transition and every scaling or replacement decision the rules would have made.
//!
//! Recorded data comes in one of two formats:
//!
//! - **series files** (TOML, promtool's notation): `interval = "1m"`, an optional
//!   `start = "2026-11-25T00:00:00Z"` (or Unix seconds; default 0), and
//!   `input_series = [{ series = 'up{instance="a"}', values = "1x10 0x5" }]`;
//! - **remote-write dumps**: any number of frames, each a 4-byte big-endian length followed by a
//!   remote-write 1.0 body exactly as sent over HTTP (snappy-compressed `WriteRequest`), so a dump
//!   is what a proxy would record from any Prometheus-compatible sender.
//!
//! Capacity is simulated: each group starts at `--capacity ASG=N` (default: the largest `min` of
//! its policies) and every decision is applied at once, so cooldowns and stabilization behave as
//! they would in production.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use vigil_wire::remote_write::WriteRequest;
use vigil_wire::{Labels, Sample, STALE_NAN};

use crate::duration::format_timestamp_ms;
use crate::evaluator::{Event, Observations, RuleSet, Simulation};
use crate::promql::reach::{self, Read};
use crate::promql::{Engine, EngineOpts, MemStorage, Query};
use crate::rulefile::Rule;
use crate::scaling::Direction;
use crate::series::{parse_series_desc, parse_values, Point};
use crate::tomlread::{Diagnostic, Doc, Obj};

/// Largest remote-write frame accepted in a dump (decompressed).
const MAX_FRAME: usize = 64 << 20;

/// Recorded data loaded into memory.
pub struct Data {
    pub storage: MemStorage,
    pub start: i64,
    pub end: i64,
}

/// Why recorded data could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}", .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))]
    Series(Vec<Diagnostic>),
    #[error("{file}: remote-write dump: {reason}")]
    Dump { file: String, reason: String },
    #[error("{0}: no samples")]
    Empty(String),
}

/// Reads a series file (promtool notation).
pub fn load_series_file(file: &str, text: &str) -> Result<Data, DataError> {
    let mut doc = Doc::new(file, text);
    let Some(root) = doc.parse() else {
        return Err(DataError::Series(doc.into_errors()));
    };
    let mut top = Obj::new(root.get_ref(), root.span(), "");
    let interval = top
        .duration(&mut doc, "interval")
        .map_or(60_000, |d| d.value);
    let start = match top.str(&mut doc, "start") {
        Some(s) => match crate::duration::parse_timestamp_ms(&s.value) {
            Ok(t) => t,
            Err(e) => {
                doc.error_at(s.span.start, format!("start: {e}"));
                0
            }
        },
        None => 0,
    };
    let mut storage = MemStorage::new();
    let mut end = start;
    for mut s in top.tables(&mut doc, "input_series") {
        let desc = s.req_str(&mut doc, "series");
        let values = s.req_str(&mut doc, "values");
        let path = s.path.clone();
        s.finish(&mut doc);
        let (Some(desc), Some(values)) = (desc, values) else {
            continue;
        };
        let labels = match parse_series_desc(&desc.value) {
            Ok((l, rest)) if rest.trim().is_empty() => l,
            Ok(_) => {
                doc.error_at(
                    desc.span.start,
                    format!("{path}.series: unexpected text after the series"),
                );
                continue;
            }
            Err(e) => {
                doc.error_at(desc.span.start, format!("{path}.series: {e}"));
                continue;
            }
        };
        let points = match parse_values(&values.value) {
            Ok(p) => p,
            Err(e) => {
                doc.error_at(values.span.start, format!("{path}.values: {e}"));
                continue;
            }
        };
        for (k, p) in points.iter().enumerate() {
            let ts = start + k as i64 * interval;
            match p {
                Point::Value(v) => storage.add(labels.clone(), Sample::new(ts, *v)),
                Point::Stale => storage.add(labels.clone(), Sample::new(ts, STALE_NAN)),
                Point::Histogram(h, _) => storage.add_histogram(
                    labels.clone(),
                    vigil_wire::histogram::HSample::new(ts, (**h).clone()),
                ),
                Point::Omitted => continue,
            }
            end = end.max(ts);
        }
    }
    top.finish(&mut doc);
    let errors = doc.into_errors();
    if !errors.is_empty() {
        return Err(DataError::Series(errors));
    }
    if storage.series_count() == 0 {
        return Err(DataError::Empty(file.to_string()));
    }
    Ok(Data {
        storage,
        start,
        end,
    })
}

/// Reads a remote-write dump.
pub fn load_dump(file: &str, bytes: &[u8]) -> Result<Data, DataError> {
    let mut storage = MemStorage::new();
    let (mut start, mut end) = (i64::MAX, i64::MIN);
    let mut pos = 0;
    let mut frame = 0;
    while pos < bytes.len() {
        let err = |reason: String| DataError::Dump {
            file: file.to_string(),
            reason,
        };
        let len_bytes: [u8; 4] = bytes
            .get(pos..pos + 4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| err(format!("frame {frame} at byte {pos}: truncated length")))?;
        let len = u32::from_be_bytes(len_bytes) as usize;
        let body = bytes.get(pos + 4..pos + 4 + len).ok_or_else(|| {
            err(format!(
                "frame {frame} at byte {pos}: {len} bytes announced, file ends first"
            ))
        })?;
        let req = WriteRequest::decode_snappy(body, MAX_FRAME)
            .map_err(|e| err(format!("frame {frame} at byte {pos}: {e}")))?;
        for (i, ts) in req.timeseries.iter().enumerate() {
            let labels = ts
                .validated_labels()
                .map_err(|e| err(format!("frame {frame}, series {i}: {e}")))?;
            for s in ts.samples() {
                start = start.min(s.timestamp_ms);
                end = end.max(s.timestamp_ms);
                storage.add(labels.clone(), s);
            }
            for h in &ts.histograms {
                let fh = h
                    .to_float()
                    .map_err(|e| err(format!("frame {frame}, series {i}: histogram: {e}")))?;
                start = start.min(h.timestamp);
                end = end.max(h.timestamp);
                storage.add_histogram(
                    labels.clone(),
                    vigil_wire::histogram::HSample::new(h.timestamp, fh),
                );
            }
        }
        pos += 4 + len;
        frame += 1;
    }
    if storage.series_count() == 0 {
        return Err(DataError::Empty(file.to_string()));
    }
    Ok(Data {
        storage,
        start,
        end,
    })
}

/// Writes one frame of a remote-write dump.
pub fn dump_frame(req: &WriteRequest) -> Vec<u8> {
    let body = req.encode_snappy();
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// What replaying `rules` over `[start, end]` reads from storage (every rule's, policy's and
/// guard's expression, and what warmup reads), and the metric names the replay writes itself:
/// recorded series, `ALERTS`, `ALERTS_FOR_STATE`, `vigil_instance_warm` and the decisions'. A backtest on
/// history leaves the engine's copies of those out (they would be read beside the replay's
/// own), so the rules under test compute them afresh.
pub fn reads(rules: &RuleSet, start: i64, end: i64) -> (Vec<Read>, BTreeSet<String>) {
    let lookback = EngineOpts::default().lookback_delta_ms;
    let mut out = Vec::new();
    for g in rules.groups() {
        let offset = g.query_offset_ms.unwrap_or(0);
        for r in &g.rules {
            out.extend(reach::reads(
                r.query(),
                start - offset,
                end - offset,
                lookback,
            ));
        }
    }
    let mut queries: Vec<&Query> = Vec::new();
    for p in rules.scaling() {
        queries.push(&p.expr);
        queries.extend(&p.controls.hold_out_when);
        queries.extend(&p.controls.hold_in_when);
        queries.extend(&p.controls.scale_in_victim);
    }
    queries.extend(rules.replace().map(|p| &p.expr));
    let warm: Vec<Query> = if crate::warmup::any(rules) {
        [crate::warmup::BOOT_TIMES, crate::warmup::PRESENT]
            .iter()
            .filter_map(|q| crate::promql::parse(q).ok())
            .collect()
    } else {
        Vec::new()
    };
    for q in queries.into_iter().chain(&warm) {
        out.extend(reach::reads(q, start, end, lookback));
    }
    (out, written(rules))
}

/// The metric names evaluating `rules` writes: recorded series, `ALERTS`, `ALERTS_FOR_STATE`,
/// `vigil_instance_warm` and the scaling decisions' series (`crate::capacity`).
pub fn written(rules: &RuleSet) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = ["ALERTS", "ALERTS_FOR_STATE", crate::warmup::METRIC]
        .into_iter()
        .chain(crate::capacity::NAMES)
        .map(String::from)
        .collect();
    for g in rules.groups() {
        for r in &g.rules {
            if let Rule::Record(rec) = r {
                names.insert(rec.record.clone());
            }
        }
    }
    names
}

/// Evaluations one replay may make (a stray sample decades away from the rest would otherwise
/// mean hours of stepping through nothing).
pub const MAX_STEPS: i64 = 5_000_000;

/// Replays `data` through `rules` from the first to the last sample; returns the events.
pub fn run(
    rules: &RuleSet,
    data: &mut Data,
    capacity: &BTreeMap<String, u32>,
) -> Result<Vec<Event>, String> {
    let engine = Engine::new(EngineOpts {
        default_subquery_step_ms: rules.default_interval_ms,
        ..EngineOpts::default()
    });
    let mut sim = Simulation::new(std::sync::Arc::new(rules.clone()), engine);
    // Recorded agents' node_boot_time_seconds (or first samples) give vigil_instance_warm.
    sim.publish_warm = true;
    sim.publish_capacity = true;
    sim.offline = true;
    for (asg, n) in capacity {
        sim.start_at(asg, *n);
    }
    let tick = rules.tick_ms();
    let steps = (data.end - data.start) / tick;
    if steps > MAX_STEPS {
        return Err(format!(
            "the data spans {} to {}: {steps} evaluations at {}ms, more than {MAX_STEPS}; check for stray timestamps",
            format_timestamp_ms(data.start),
            format_timestamp_ms(data.end),
            tick
        ));
    }
    let mut events = Vec::new();
    let mut ts = data.start;
    while ts <= data.end {
        events.extend(sim.step(&mut data.storage, data.start, ts, Observations::none()));
        ts += tick;
    }
    Ok(events)
}

fn labels_json(l: &Labels) -> serde_json::Value {
    serde_json::Value::Object(
        l.iter()
            .map(|x| (x.name.to_string(), json!(x.value)))
            .collect(),
    )
}

fn num(v: f64) -> serde_json::Value {
    if v.is_finite() {
        json!(v)
    } else {
        json!(crate::gofmt::shortest_g(v))
    }
}

/// One event as a JSON object.
pub fn event_json(e: &Event) -> serde_json::Value {
    match e {
        Event::Alert(t) => json!({
            "time": format_timestamp_ms(t.at), "time_ms": t.at, "kind": "alert",
            "alert": t.rule, "labels": labels_json(&t.labels), "from": t.from.as_str(), "to": t.to.as_str(),
            "value": num(t.value), "active_since": format_timestamp_ms(t.active_at), "annotations": t.annotations,
        }),
        Event::Scaling(d) => {
            let mut j = json!({
                "time": format_timestamp_ms(d.at), "time_ms": d.at, "kind": "scaling",
                "asg": d.asg, "from": d.current, "to": d.desired,
                "direction": match d.direction { Some(Direction::Out) => "out", Some(Direction::In) => "in", None => "none" },
                "by": d.by,
                "inputs": d.inputs.iter().map(|i| json!({
                    "policy": i.policy, "value": i.value.map(num), "raw": i.raw, "recommended": i.recommended, "reason": i.reason,
                })).collect::<Vec<_>>(),
            });
            // Held (a paused group): what it would have done.
            if let Some(h) = &d.held {
                j["held"] = json!(h);
            }
            // Limits and fallbacks that shaped it.
            if !d.notes.is_empty() {
                j["notes"] = json!(d.notes);
            }
            if !d.victims.is_empty() {
                j["victims"] = json!(d
                    .victims
                    .iter()
                    .map(|(i, why)| json!({"instance": i, "reason": why}))
                    .collect::<Vec<_>>());
            }
            j
        }
        Event::Replace(r) => json!({
            "time": format_timestamp_ms(r.at), "time_ms": r.at,
                        "kind": if r.fail_open_started {
                "fail_open"
            } else if r.fail_open_ended && r.replace.is_empty() {
                "fail_open_ended"
            } else if r.replace.is_empty() {
                "replace_held"
            } else {
                "replace"
            },
            "asg": r.asg, "policy": r.policy, "group_size": r.group_size, "unhealthy": r.unhealthy,
            "instances": r.replace.iter().map(|(i, why)| json!({"instance": i, "reason": why})).collect::<Vec<_>>(),
            "held": r.held, "skipped": r.skipped, "note": r.note,
            "zones_fail_open_started": r.zone_fail_open_started.iter().map(|(az, n, total)| json!({"az": az, "unhealthy": n, "instances": total})).collect::<Vec<_>>(),
            "zones_fail_open_ended": r.zone_fail_open_ended,
        }),
        Event::RuleError { at, rule, error } => json!({
            "time": format_timestamp_ms(*at), "time_ms": at, "kind": "error", "rule": rule, "error": error,
        }),
    }
}

/// One event as a line of text.
pub fn event_text(e: &Event) -> String {
    match e {
        Event::Alert(t) => format!(
            "{}  alert    {}  {} -> {}  value={}",
            format_timestamp_ms(t.at),
            t.labels,
            t.from.as_str(),
            t.to.as_str(),
            crate::gofmt::shortest_g(t.value)
        ),
        Event::Scaling(d) if !d.changes() => match &d.held {
            Some(held) => format!(
                "{}  scale    {} held at {}: {held}{}",
                format_timestamp_ms(d.at),
                d.asg,
                d.current,
                // A schedule that ran meanwhile is said too.
                match (&d.scheduled, d.notes.first()) {
                    (Some(_), Some(n)) => format!("; {n}"),
                    _ => String::new(),
                }
            ),
            // Said although nothing changed: a schedule ran (or, in a test, what was asked).
            None => format!(
                "{}  scale    {} stays at {}: {}",
                format_timestamp_ms(d.at),
                d.asg,
                d.current,
                d.reasons().join("; ")
            ),
        },
        Event::Scaling(d) => {
            let why = d.reasons();
            format!(
                "{}  scale    {} {} -> {} ({}) by {}: {}",
                format_timestamp_ms(d.at),
                d.asg,
                d.current,
                d.desired,
                if d.desired > d.current { "out" } else { "in" },
                d.by.as_deref().unwrap_or("-"),
                why.join("; ")
            )
        }
        Event::Replace(r) if r.fail_open_started => format!(
            "{}  fail-open {} by {}: {}",
            format_timestamp_ms(r.at),
            r.asg,
            r.policy,
            r.note.as_deref().unwrap_or("")
        ),
        Event::Replace(r) if r.replace.is_empty() && r.fail_open_ended => format!(
            "{}  fail-open-ended {} by {}: {} of {} unhealthy",
            format_timestamp_ms(r.at),
            r.asg,
            r.policy,
            r.unhealthy,
            r.group_size
        ),
        Event::Replace(r)
            if r.replace.is_empty() && r.held.is_empty() && !r.zone_fail_open_ended.is_empty() =>
        {
            format!(
                "{}  fail-open-ended {} in {} by {}",
                format_timestamp_ms(r.at),
                r.asg,
                r.zone_fail_open_ended.join(", "),
                r.policy
            )
        }
        Event::Replace(r) if r.replace.is_empty() => format!(
            "{}  held     {} {} by {}: {}",
            format_timestamp_ms(r.at),
            r.asg,
            r.held.join(", "),
            r.policy,
            r.note.as_deref().unwrap_or("")
        ),
        Event::Replace(r) => {
            let items: Vec<String> = r
                .replace
                .iter()
                .map(|(i, why)| format!("{i} ({why})"))
                .collect();
            let held = match (&r.held[..], &r.note) {
                ([], _) => String::new(),
                (h, Some(note)) => format!("; held: {} ({note})", h.join(", ")),
                (h, None) => format!("; held by the cap: {}", h.join(", ")),
            };
            format!(
                "{}  replace  {} {} by {}{held}",
                format_timestamp_ms(r.at),
                r.asg,
                items.join(", "),
                r.policy
            )
        }
        Event::RuleError { at, rule, error } => {
            format!("{}  error    {rule}: {error}", format_timestamp_ms(*at))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_wire::remote_write::TimeSeries;

    #[test]
    fn dumps_round_trip_and_truncation_is_reported() {
        let l = Labels::from_pairs([("__name__", "up"), ("instance", "a")]);
        let req = WriteRequest {
            timeseries: vec![TimeSeries::new(
                &l,
                &[Sample::new(1000, 1.0), Sample::new(2000, 0.0)],
            )],
            metadata: vec![],
        };
        let mut bytes = dump_frame(&req);
        bytes.extend(dump_frame(&req));
        let d = load_dump("d", &bytes).unwrap();
        assert_eq!((d.start, d.end, d.storage.series_count()), (1000, 2000, 1));
        let e = load_dump("d", &bytes[..bytes.len() - 3])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("frame 1") && e.contains("file ends first"),
            "{e}"
        );
        assert!(load_dump("d", b"\x00\x00\x00\x03abc").is_err());
    }

    #[test]
    fn series_files_report_positions() {
        let e = load_series_file(
            "s.toml",
            "interval = \"1m\"\ninput_series = [{ series = 'up{', values = \"1\" }]\n",
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.starts_with("s.toml:2:"), "{e}");
        let d = load_series_file("s.toml", "interval = \"1m\"\nstart = \"1970-01-01T01:00:00Z\"\ninput_series = [{ series = 'up', values = \"1x3\" }]\n").unwrap();
        assert_eq!((d.start, d.end), (3_600_000, 3_780_000));
    }
}
