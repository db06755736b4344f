//! `[notify]`: grouping timers, and the routes, inhibition rules and time intervals
//! (`routing.rs` says what they mean). Every problem names its file, line and column.

use std::collections::BTreeMap;

use vigil_config::tomlread::{At, Doc, Obj};
use vigil_rules::template::{Template, Val};

use super::Config;
use crate::matcher::{parse_filter, Matcher};
use crate::routing::{Inhibit, Route, Routing, Span, TimeInterval};

/// A `[[receiver]]`: where notifications go.
#[derive(Debug, Clone, PartialEq)]
pub struct Receiver {
    pub name: String,
    pub sns_topic_arn: Option<String>,
    pub slack_webhook_url: Option<String>,
    /// Alertmanager v2 webhooks: `webhook_url`, then every URL of `webhook_urls` (each peer of
    /// an Alertmanager cluster gets every alert, as Alertmanager's HA guide asks).
    pub webhook_urls: Vec<String>,
}

/// `[notify.templates]`: Go `text/template`s over Alertmanager's notification data, in place
/// of Vigil's own subject and text (`notify/render.rs`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Templates {
    pub sns_subject: Option<Template>,
    pub sns_message: Option<Template>,
    pub slack_title: Option<Template>,
    pub slack_text: Option<Template>,
    /// `.ExternalURL`: where people reach Vigil.
    pub external_url: String,
}

/// Notifications as templates see them, to try each template on when it is read: a mistake a
/// parse cannot see (a field missing inside a `range`, an `index` past the firing alerts of a
/// resolved notice) is reported then, not at 3 a.m. A firing and resolved one, a firing one, a
/// resolved one.
fn samples() -> [Val; 3] {
    let both = sample(&["firing", "resolved"]);
    let firing = sample(&["firing"]);
    let resolved = sample(&["resolved"]);
    [both, firing, resolved]
}

fn sample(statuses: &[&str]) -> Val {
    let alert = |status: &str, ends: &str| {
        Val::obj([
            ("Status", Val::Str(status.into())),
            (
                "Labels",
                Val::strings([("alertname", "Sample"), ("instance", "i-1")]),
            ),
            ("Annotations", Val::strings([("summary", "a sample")])),
            ("StartsAt", Val::Str("2026-01-01T00:00:00Z".into())),
            ("EndsAt", Val::Str(ends.into())),
            ("GeneratorURL", Val::Str(String::new())),
            ("Fingerprint", Val::Str("0000000000000000".into())),
            ("Value", Val::Num(1.0)),
        ])
    };
    Val::obj([
        ("Receiver", Val::Str("sample".into())),
        (
            "Status",
            Val::Str(
                if statuses.contains(&"firing") {
                    "firing"
                } else {
                    "resolved"
                }
                .into(),
            ),
        ),
        (
            "Alerts",
            Val::List(
                statuses
                    .iter()
                    .map(|s| match *s {
                        "firing" => alert("firing", ""),
                        _ => alert("resolved", "2026-01-01T00:05:00Z"),
                    })
                    .collect(),
            ),
        ),
        ("GroupLabels", Val::strings([("alertname", "Sample")])),
        ("CommonLabels", Val::strings([("alertname", "Sample")])),
        ("CommonAnnotations", Val::strings([("summary", "a sample")])),
        ("ExternalURL", Val::Str(String::new())),
    ])
}

fn templates(doc: &mut Doc<'_>, mut t: Obj<'_, '_>) -> Templates {
    let path = t.path.clone();
    let mut one = |doc: &mut Doc<'_>, key: &str| -> Option<Template> {
        let v = t.str(doc, key)?;
        // Where the template's text starts: after its quotes.
        let opening = doc.text.get(v.span.start..v.span.start + 3);
        let quote = if matches!(opening, Some("'''" | "\"\"\"")) {
            3
        } else {
            1
        };
        match Template::parse_notification(&v.value) {
            Ok(tpl) => {
                let failed = samples()
                    .iter()
                    .zip(["firing and resolved", "firing", "resolved"])
                    .find_map(|(s, what)| tpl.render_val(s).err().map(|e| (e, what)));
                if let Some((e, what)) = failed {
                    doc.error_at(
                        v.span.start,
                        format!("{path}.{key}: on a {what} notification: {e}"),
                    );
                }
                Some(tpl)
            }
            Err(e) => {
                doc.error_at(
                    v.span.start + quote + e.offset,
                    format!("{path}.{key}: {e}"),
                );
                None
            }
        }
    };
    let out = Templates {
        sns_subject: one(doc, "sns_subject"),
        sns_message: one(doc, "sns_message"),
        slack_title: one(doc, "slack_title"),
        slack_text: one(doc, "slack_text"),
        external_url: t
            .str(doc, "external_url")
            .map(|u| u.value)
            .unwrap_or_default(),
    };
    t.finish(doc);
    out
}

/// Receiver names the routes give, checked once every `[[receiver]]` is read.
pub(super) type Named = Vec<At<String>>;

fn matchers(doc: &mut Doc<'_>, o: &mut Obj<'_, '_>, key: &str) -> Vec<Matcher> {
    let path = format!("{}.{key}", o.path);
    let mut out = Vec::new();
    for m in o.str_list(doc, key).unwrap_or_default() {
        match parse_filter(&m.value) {
            Ok(x) => out.push(x),
            Err(e) => doc.error_at(m.span.start, format!("{path}: {e}")),
        }
    }
    out
}

fn strings(doc: &mut Doc<'_>, o: &mut Obj<'_, '_>, key: &str) -> Vec<At<String>> {
    o.str_list(doc, key).unwrap_or_default()
}

/// Reads `[notify]` into `c`; returns the receiver names the routes give.
pub(super) fn read(doc: &mut Doc<'_>, mut n: Obj<'_, '_>, c: &mut Config) -> Named {
    if let Some(g) = n.str_list(doc, "group_by") {
        c.group_by = g.into_iter().map(|s| s.value).collect();
    }
    c.group_wait_ms = n.positive_duration(doc, "group_wait", c.group_wait_ms);
    c.group_interval_ms = n.positive_duration(doc, "group_interval", c.group_interval_ms);
    c.repeat_interval_ms = n.positive_duration(doc, "repeat_interval", c.repeat_interval_ms);
    let mut named = strings(doc, &mut n, "receivers");
    let mut routing = Routing {
        receivers: named.iter().map(|r| r.value.clone()).collect(),
        ..Routing::default()
    };
    for t in n.tables(doc, "time_interval") {
        if let Some((name, ti)) = time_interval(doc, t) {
            routing.intervals.entry(name).or_default().push(ti);
        }
    }
    let mut uses = Vec::new();
    routing.routes = n
        .tables(doc, "route")
        .into_iter()
        .map(|r| route(doc, r, &mut named, &mut uses))
        .collect();
    for u in uses {
        if !routing.intervals.contains_key(&u.value) {
            doc.error_at(
                u.span.start,
                format!(
                    "unknown time interval {:?} (give it as [[notify.time_interval]])",
                    u.value
                ),
            );
        }
    }
    for mut t in n.tables(doc, "inhibit") {
        let path = t.path.clone();
        let source = matchers(doc, &mut t, "source_matchers");
        let target = matchers(doc, &mut t, "target_matchers");
        let equal = strings(doc, &mut t, "equal")
            .into_iter()
            .map(|e| e.value)
            .collect();
        if source.is_empty() || target.is_empty() {
            doc.error_at(
                t.span().start,
                format!("{path}: give source_matchers and target_matchers (an inhibition without either would mute every alert)"),
            );
        }
        t.finish(doc);
        routing.inhibit.push(Inhibit {
            source,
            target,
            equal,
        });
    }
    if let Some(t) = n.table(doc, "templates") {
        c.templates = templates(doc, t);
    }
    n.finish(doc);
    c.routing = routing;
    named
}

fn route(
    doc: &mut Doc<'_>,
    mut r: Obj<'_, '_>,
    named: &mut Named,
    uses: &mut Vec<At<String>>,
) -> Route {
    let matchers = matchers(doc, &mut r, "matchers");
    let receivers = strings(doc, &mut r, "receivers");
    let group_by = r
        .str_list(doc, "group_by")
        .map(|g| g.into_iter().map(|s| s.value).collect());
    let continue_matching = r.bool(doc, "continue").is_some_and(|b| b.value);
    let mute = strings(doc, &mut r, "mute_time_intervals");
    let active = strings(doc, &mut r, "active_time_intervals");
    let children = r.tables(doc, "route");
    let routes = children
        .into_iter()
        .map(|c| route(doc, c, named, uses))
        .collect();
    r.finish(doc);
    let out = Route {
        matchers,
        receivers: receivers.iter().map(|s| s.value.clone()).collect(),
        continue_matching,
        group_by,
        mute_time_intervals: mute.iter().map(|s| s.value.clone()).collect(),
        active_time_intervals: active.iter().map(|s| s.value.clone()).collect(),
        routes,
    };
    named.extend(receivers);
    uses.extend(mute);
    uses.extend(active);
    out
}

const WEEKDAYS: [&str; 7] = [
    "sunday",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
];
const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

/// `a:b` or `a`, each a name of `names` (numbered from `first`) or a number in `lo..=hi`.
fn span(text: &str, names: &[&str], first: i32, lo: i32, hi: i32) -> Result<Span, String> {
    let one = |s: &str| -> Result<i32, String> {
        let s = s.trim().to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == s) {
            return Ok(i as i32 + first);
        }
        match s.parse::<i32>() {
            Ok(v) if (lo..=hi).contains(&v) && v != 0 => Ok(v),
            _ => Err(format!("{s:?} is not a valid value")),
        }
    };
    let (a, b) = match text.split_once(':') {
        Some((a, b)) => (one(a)?, one(b)?),
        None => {
            let v = one(text)?;
            (v, v)
        }
    };
    // Days of the month may count from the end (-1 is the last day): compared as Alertmanager
    // does, as if the month had 31 days (25:-1 holds, -1:25 and 25:-10 never would).
    let norm = |v: i32| if v < 0 { 32 + v } else { v };
    if norm(a) > norm(b) {
        return Err(format!("{text:?}: the start is after the end"));
    }
    Ok((a, b))
}

/// `HH:MM`, 00:00 to 24:00, in minutes.
fn clock(text: &str) -> Result<u32, String> {
    let bad = || format!("{text:?}: expected HH:MM between 00:00 and 24:00");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 24 || m > 59 || (h == 24 && m != 0) || text.len() != 5 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn time_interval(doc: &mut Doc<'_>, mut t: Obj<'_, '_>) -> Option<(String, TimeInterval)> {
    let path = t.path.clone();
    let name = t.req_str(doc, "name");
    let spans = |doc: &mut Doc<'_>,
                 t: &mut Obj<'_, '_>,
                 key: &str,
                 names: &[&str],
                 first: i32,
                 (lo, hi): (i32, i32)| {
        let mut out = Vec::new();
        for v in strings(doc, t, key) {
            match span(&v.value, names, first, lo, hi) {
                Ok(s) => out.push(s),
                Err(e) => doc.error_at(v.span.start, format!("{path}.{key}: {e}")),
            }
        }
        out
    };
    // Weekdays by name only, as in Alertmanager.
    let weekdays = spans(doc, &mut t, "weekdays", &WEEKDAYS, 0, (1, 0));
    let days_of_month = spans(doc, &mut t, "days_of_month", &[], 1, (-31, 31));
    let months = spans(doc, &mut t, "months", &MONTHS, 1, (1, 12));
    let years = spans(doc, &mut t, "years", &[], 0, (1, 9999));
    let mut times = Vec::new();
    for mut r in t.tables(doc, "times") {
        let rpath = r.path.clone();
        let start = r.req_str(doc, "start_time");
        let end = r.req_str(doc, "end_time");
        r.finish(doc);
        let (Some(start), Some(end)) = (start, end) else {
            continue;
        };
        match (clock(&start.value), clock(&end.value)) {
            (Ok(s), Ok(e)) if s < e => times.push((s, e)),
            (Ok(_), Ok(_)) => doc.error_at(
                start.span.start,
                format!("{rpath}: start_time must be before end_time (a range across midnight is two ranges, as in Alertmanager)"),
            ),
            (Err(e), _) => doc.error_at(start.span.start, format!("{rpath}.start_time: {e}")),
            (_, Err(e)) => doc.error_at(end.span.start, format!("{rpath}.end_time: {e}")),
        }
    }
    let location = t.str(doc, "location");
    let (tz, location_name) = match &location {
        Some(l) => match jiff::tz::TimeZone::get(&l.value) {
            Ok(tz) => (tz, l.value.clone()),
            Err(_) => {
                doc.error_at(
                    l.span.start,
                    format!("{path}.location: unknown time zone {:?} (an IANA name such as Europe/Paris)", l.value),
                );
                (jiff::tz::TimeZone::UTC, "UTC".to_string())
            }
        },
        None => (jiff::tz::TimeZone::UTC, "UTC".to_string()),
    };
    t.finish(doc);
    let ti = TimeInterval {
        times,
        weekdays,
        days_of_month,
        months,
        years,
        location: tz,
        location_name,
    };
    Some((name?.value, ti))
}

/// Every receiver a route or `[notify] receivers` names must exist.
pub(super) fn check_receivers(doc: &mut Doc<'_>, named: &Named, c: &Config) {
    let known: BTreeMap<&str, ()> = c.receivers.iter().map(|r| (r.name.as_str(), ())).collect();
    for n in named {
        if !known.contains_key(n.value.as_str()) {
            doc.error_at(
                n.span.start,
                format!("unknown receiver {:?} (give it as [[receiver]])", n.value),
            );
        }
    }
}
