//! Prometheus's query endpoints: `/api/v1/query`, `query_range`, `series`, `labels` and
//! `label/<name>/values`, with its parameters, its JSON envelope and its error types, so that
//! Grafana, promtool and client libraries work against the aggregator.

use std::collections::HashMap;
use std::time::Instant;

use hyper::StatusCode;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::{json, Value as Json};
use vigil_rules::duration::{parse_ms, parse_timestamp_ms};
use vigil_rules::gofmt::shortest_g;
use vigil_rules::promql::value::{RangeSeries, VectorSample};
use vigil_rules::promql::{self, EvalError, Value};
use vigil_wire::histogram::FloatHistogram;
use vigil_wire::{Labels, Sample};

use super::{json_err, json_ok, respond, Api, Resp};

/// Query-string and form parameters (`application/x-www-form-urlencoded`, as Prometheus's
/// `ParseForm` reads them); repeated keys (`match[]`) keep every value, in order.
pub(super) fn params(query: Option<&str>, body: Option<&[u8]>) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    let pairs = query
        .map(|q| form_urlencoded::parse(q.as_bytes()))
        .into_iter()
        .flatten()
        .chain(body.map(form_urlencoded::parse).into_iter().flatten());
    for (k, v) in pairs {
        m.entry(k.into_owned()).or_default().push(v.into_owned());
    }
    m
}

pub(super) fn one<'a>(p: &'a HashMap<String, Vec<String>>, k: &str) -> Option<&'a str> {
    p.get(k).and_then(|v| v.last()).map(String::as_str)
}

pub(super) fn time_param(
    p: &HashMap<String, Vec<String>>,
    k: &str,
    default: i64,
) -> Result<i64, String> {
    match one(p, k) {
        None | Some("") => Ok(default),
        Some(v) => parse_timestamp_ms(v).map_err(|e| format!("invalid parameter \"{k}\": {e}")),
    }
}

pub(super) fn labels_json(l: &Labels) -> Json {
    Json::Object(
        l.iter()
            .map(|x| (x.name.to_string(), json!(x.value)))
            .collect(),
    )
}

/// A label set as a JSON object, written as it is serialized.
struct LabelsOut<'a>(&'a Labels);

impl Serialize for LabelsOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|l| (l.name, l.value)))
    }
}

/// A timestamp in seconds as Prometheus writes it: `1700000000`, or `1700000000.123`.
struct Secs(i64);

impl Serialize for Secs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 % 1000 == 0 {
            s.serialize_i64(self.0 / 1000)
        } else {
            s.serialize_f64(self.0 as f64 / 1000.0)
        }
    }
}

/// `[seconds, "value"]`.
struct Point(i64, f64);

impl Serialize for Point {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (Secs(self.0), shortest_g(self.1)).serialize(s)
    }
}

/// `[[seconds, "value"], ...]`.
struct PointsOut<'a>(&'a [Sample]);

impl Serialize for PointsOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|p| Point(p.timestamp_ms, p.value)))
    }
}

/// A native histogram as Prometheus's API writes one: `{"count": "…", "sum": "…", "buckets":
/// [[boundary rule, "lower", "upper", "count"], …]}`, populated buckets only, the rule 0 for
/// `(lower, upper]`, 1 for `[lower, upper)` (negative buckets), 3 for the zero bucket.
struct HistOut<'a>(&'a FloatHistogram);

impl Serialize for HistOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let h = self.0;
        let negatives = h.negative().len();
        let zero = !h.is_custom() && h.zero_count > 0.0;
        let buckets: Vec<(u8, String, String, String)> = h
            .all_buckets()
            .into_iter()
            .enumerate()
            .filter(|(_, b)| b.count != 0.0)
            .map(|(i, b)| {
                // Prometheus's bounds: negative buckets [lower, upper), positive ones
                // (lower, upper], the zero bucket and a custom histogram's first bucket closed.
                let rule = if i < negatives {
                    1
                } else if (zero && i == negatives) || (h.is_custom() && b.index == 0) {
                    3
                } else {
                    0
                };
                (
                    rule,
                    shortest_g(b.lower),
                    shortest_g(b.upper),
                    shortest_g(b.count),
                )
            })
            .collect();
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("count", &shortest_g(h.count))?;
        m.serialize_entry("sum", &shortest_g(h.sum))?;
        if !buckets.is_empty() {
            m.serialize_entry("buckets", &buckets)?;
        }
        m.end()
    }
}

/// One element of a vector: `"value": [seconds, "value"]` or `"histogram": [seconds, {…}]`.
struct InstantOut<'a>(&'a VectorSample, i64);

impl Serialize for InstantOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("metric", &LabelsOut(&self.0.labels))?;
        match &self.0.h {
            Some(h) => m.serialize_entry("histogram", &(Secs(self.1), HistOut(h)))?,
            None => m.serialize_entry("value", &Point(self.1, self.0.f))?,
        }
        m.end()
    }
}

/// One series of a matrix: `"values"` and/or `"histograms"`, whichever it has.
struct SeriesOut<'a>(&'a RangeSeries);

impl Serialize for SeriesOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let x = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("metric", &LabelsOut(&x.labels))?;
        if !x.points.is_empty() || x.histograms.is_empty() {
            m.serialize_entry("values", &PointsOut(&x.points))?;
        }
        if !x.histograms.is_empty() {
            let hs: Vec<(Secs, HistOut)> = x
                .histograms
                .iter()
                .map(|h| (Secs(h.timestamp_ms), HistOut(&h.h)))
                .collect();
            m.serialize_entry("histograms", &hs)?;
        }
        m.end()
    }
}

struct VectorOut<'a>(&'a [VectorSample], i64);

impl Serialize for VectorOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|x| InstantOut(x, self.1)))
    }
}

struct MatrixOut<'a>(&'a [RangeSeries]);

impl Serialize for MatrixOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(SeriesOut))
    }
}

/// A query's `data`: `{"resultType": ..., "result": ...}`, serialized straight into the answer.
/// (A `serde_json::Value` tree of a vector of 300,000 series took about 3 KB a series, about a
/// gigabyte for one answer, which the allocator then kept.)
struct ValueOut<'a>(&'a Value, i64);

impl Serialize for ValueOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        let t = self.1;
        match self.0 {
            Value::Scalar(f) => {
                m.serialize_entry("result", &Point(t, *f))?;
                m.serialize_entry("resultType", "scalar")?;
            }
            Value::String(x) => {
                m.serialize_entry("result", &(Secs(t), x))?;
                m.serialize_entry("resultType", "string")?;
            }
            Value::Vector(v) => {
                m.serialize_entry("result", &VectorOut(v, t))?;
                m.serialize_entry("resultType", "vector")?;
            }
            Value::Matrix(x) => {
                m.serialize_entry("result", &MatrixOut(x))?;
                m.serialize_entry("resultType", "matrix")?;
            }
        }
        m.end()
    }
}

/// A successful query's answer, with its warnings.
fn answer(v: &Value, t: i64, warnings: &[&str]) -> Resp {
    #[derive(Serialize)]
    struct Body<'a> {
        data: ValueOut<'a>,
        status: &'static str,
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        warnings: &'a [&'a str],
    }
    let body = Body {
        data: ValueOut(v, t),
        status: "success",
        warnings,
    };
    match serde_json::to_vec(&body) {
        Ok(b) => respond(StatusCode::OK, "application/json", b),
        Err(e) => json_err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}

/// Prometheus's answer to a query past `[query] timeout`.
pub(super) fn timeout_err(msg: &str) -> Resp {
    json_err(StatusCode::SERVICE_UNAVAILABLE, "timeout", msg)
}

fn eval_error(e: EvalError) -> Resp {
    match &e {
        EvalError::BadData(m) => json_err(StatusCode::BAD_REQUEST, "bad_data", m),
        EvalError::Unsupported(m) => json_err(
            StatusCode::UNPROCESSABLE_ENTITY,
            "execution",
            &format!("unsupported: {m}"),
        ),
        EvalError::Execution(m) => json_err(StatusCode::UNPROCESSABLE_ENTITY, "execution", m),
        EvalError::Timeout(_) => timeout_err(&e.to_string()),
        EvalError::Storage(_) => json_err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}

pub(super) fn query(app: &Api, p: &HashMap<String, Vec<String>>, deadline: Instant) -> Resp {
    let Some(q) = one(p, "query") else {
        return json_err(
            StatusCode::BAD_REQUEST,
            "bad_data",
            "missing parameter \"query\"",
        );
    };
    let t = match time_param(p, "time", app.clock.now_ms()) {
        Ok(t) => t,
        Err(e) => return json_err(StatusCode::BAD_REQUEST, "bad_data", &e),
    };
    let parsed = match promql::parse(q) {
        Ok(x) => x,
        Err(e) => return json_err(StatusCode::BAD_REQUEST, "bad_data", &e.to_string()),
    };
    match app
        .query_engine
        .instant_until(&*app.store, &parsed, t, Some(deadline))
    {
        Ok(r) => {
            let warnings: Vec<&str> = r.annotations.iter().map(|a| a.message.as_str()).collect();
            answer(&r.value, t, &warnings)
        }
        Err(e) => eval_error(e),
    }
}

fn step_param(v: &str) -> Result<i64, String> {
    match v.parse::<f64>() {
        Ok(s) if s > 0.0 && s.is_finite() => Ok((s * 1000.0).round() as i64),
        Ok(_) => Err("zero or negative query resolution step widths are not accepted. Try a positive integer".into()),
        Err(_) => parse_ms(v),
    }
}

pub(super) fn query_range(app: &Api, p: &HashMap<String, Vec<String>>, deadline: Instant) -> Resp {
    let Some(q) = one(p, "query") else {
        return json_err(
            StatusCode::BAD_REQUEST,
            "bad_data",
            "missing parameter \"query\"",
        );
    };
    let (start, end) = match (
        time_param(p, "start", i64::MIN),
        time_param(p, "end", i64::MIN),
    ) {
        (Ok(s), Ok(e)) if s != i64::MIN && e != i64::MIN => (s, e),
        (Err(e), _) | (_, Err(e)) => return json_err(StatusCode::BAD_REQUEST, "bad_data", &e),
        _ => {
            return json_err(
                StatusCode::BAD_REQUEST,
                "bad_data",
                "start and end are required",
            )
        }
    };
    let step = match one(p, "step").map(step_param) {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            return json_err(
                StatusCode::BAD_REQUEST,
                "bad_data",
                &format!("invalid parameter \"step\": {e}"),
            )
        }
        None => {
            return json_err(
                StatusCode::BAD_REQUEST,
                "bad_data",
                "missing parameter \"step\"",
            )
        }
    };
    let parsed = match promql::parse(q) {
        Ok(x) => x,
        Err(e) => return json_err(StatusCode::BAD_REQUEST, "bad_data", &e.to_string()),
    };
    match app
        .query_engine
        .range_until(&*app.store, &parsed, start, end, step, Some(deadline))
    {
        Ok(r) => answer(&r.value, end, &[]),
        Err(e) => eval_error(e),
    }
}

/// The series the `match[]` selectors name between `start` and `end` (default: the window);
/// `None` without any `match[]`; the error is a `bad_data` message.
fn matched(app: &Api, p: &HashMap<String, Vec<String>>) -> Result<Option<Vec<Labels>>, String> {
    let Some(ms) = p.get("match[]").filter(|m| !m.is_empty()) else {
        return Ok(None);
    };
    let now = app.clock.now_ms();
    let (start, end) = match (
        time_param(p, "start", now - app.cfg.retention_ms),
        time_param(p, "end", now),
    ) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(e), _) | (_, Err(e)) => return Err(e),
    };
    let mut out: std::collections::BTreeSet<Labels> = Default::default();
    for m in ms {
        let q = promql::parse(m).map_err(|e| e.to_string())?;
        let promql::plan::Node::Selector(sel) = q.plan() else {
            return Err(format!("match[] must be a series selector, got {m:?}"));
        };
        out.extend(app.store.series(&sel.matchers, start, end));
    }
    Ok(Some(out.into_iter().collect()))
}

pub(super) fn series(app: &Api, p: &HashMap<String, Vec<String>>) -> Resp {
    match matched(app, p) {
        Ok(Some(out)) => json_ok(json!(out.iter().map(labels_json).collect::<Vec<_>>())),
        Ok(None) => json_err(
            StatusCode::BAD_REQUEST,
            "bad_data",
            "no match[] parameter provided",
        ),
        Err(e) => json_err(StatusCode::BAD_REQUEST, "bad_data", &e),
    }
}

/// `/api/v1/labels` (`name` None) and `/api/v1/label/<name>/values`: from the index, or from
/// the series `match[]` names when it is given.
pub(super) fn labels(app: &Api, p: &HashMap<String, Vec<String>>, name: Option<&str>) -> Resp {
    match matched(app, p) {
        Ok(None) => json_ok(json!(app.store.label_values(name))),
        Ok(Some(series)) => {
            let mut out: std::collections::BTreeSet<&str> = Default::default();
            for l in &series {
                match name {
                    None => out.extend(l.iter().map(|x| x.name)),
                    Some(n) => out.extend(l.get(n)),
                }
            }
            json_ok(json!(out))
        }
        Err(e) => json_err(StatusCode::BAD_REQUEST, "bad_data", &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_written_as_prometheus_writes_them() {
        let h = |t: &str| FloatHistogram::parse_notation(t).expect(t).0;
        let exp = h(
            "{{schema:0 count:5 sum:4 z_bucket:1 z_bucket_w:0.001 buckets:[2 0 1] n_buckets:[1]}}",
        );
        let got = serde_json::to_string(&HistOut(&exp)).expect("json");
        assert_eq!(
            got,
            r#"{"count":"5","sum":"4","buckets":[[1,"-1","-0.5","1"],[3,"-0.001","0.001","1"],[0,"0.5","1","2"],[0,"2","4","1"]]}"#
        );
        // Custom buckets: the first one is closed on both sides.
        let nhcb = h("{{schema:-53 count:3 sum:2 custom_values:[1 5] buckets:[1 2]}}");
        let got = serde_json::to_string(&HistOut(&nhcb)).expect("json");
        assert_eq!(
            got,
            r#"{"count":"3","sum":"2","buckets":[[3,"-Inf","1","1"],[0,"1","5","2"]]}"#
        );
        assert_eq!(
            serde_json::to_string(&Secs(1_700_000_000_000)).unwrap(),
            "1700000000"
        );
        assert_eq!(
            serde_json::to_string(&Secs(1_700_000_000_250)).unwrap(),
            "1700000000.25"
        );
    }
}
