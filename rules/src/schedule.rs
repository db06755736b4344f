//! `[[schedule]]`: bounds a group takes at times given by cron, like Auto Scaling scheduled
//! actions. From a schedule's run until the next run of any schedule of the same group, its
//! `min` / `max` replace the policies' bounds in Vigil's decisions.
//!
//! Cron is the five fields of Unix cron (minute hour day-of-month month day-of-week), with `*`,
//! lists, ranges, steps, and month and weekday names; when both day fields are restricted, a day
//! matching either runs (Vixie cron). Times are read in `timezone` (IANA, bundled; UTC by
//! default). A local time skipped by a daylight-saving change runs at the change; a local time
//! that occurs twice runs once, at its first occurrence.

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// A parsed cron expression: one bit per allowed value of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    /// Bits 1..=31.
    days: u32,
    /// Bits 1..=12.
    months: u16,
    /// Bits 0..=6, Sunday 0.
    weekdays: u8,
    days_any: bool,
    weekdays_any: bool,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

fn value(s: &str, lo: u32, names: &[&str], name_base: u32) -> Result<u32, String> {
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        return Ok(i as u32 + name_base);
    }
    let v: u32 = s.parse().map_err(|_| {
        format!(
            "{s:?} is not a number{}",
            if names.is_empty() { "" } else { " or a name" }
        )
    })?;
    if v < lo {
        return Err(format!("{v} is below {lo}"));
    }
    Ok(v)
}

/// One field: a comma list of `*`, `N`, `A-B`, each with an optional `/STEP`.
fn field(
    s: &str,
    what: &str,
    lo: u32,
    hi: u32,
    names: &[&str],
    name_base: u32,
) -> Result<(u64, bool), String> {
    let err = |e: String| format!("{what} {s:?}: {e}");
    let mut bits = 0u64;
    for part in s.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, st)) => {
                let st: u32 = st
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| err(format!("step {st:?} must be a positive number")))?;
                (r, st)
            }
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (
                value(a, lo, names, name_base).map_err(err)?,
                value(b, lo, names, name_base).map_err(err)?,
            )
        } else {
            let a = value(range, lo, names, name_base).map_err(err)?;
            // `N/STEP` runs from N to the end, as Vixie cron.
            (a, if part.contains('/') { hi } else { a })
        };
        if a > hi || b > hi {
            return Err(err(format!("values must lie within {lo}-{hi}")));
        }
        if a > b {
            return Err(err(format!("range {a}-{b} runs backwards")));
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    // Vixie cron: a field starting with `*` is unrestricted for the day-of-month/weekday rule.
    Ok((bits, s.starts_with('*')))
}

impl Cron {
    pub fn parse(s: &str) -> Result<Cron, String> {
        let f: Vec<&str> = s.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!(
                "{} fields; cron has 5: minute hour day-of-month month day-of-week",
                f.len()
            ));
        }
        let (minutes, _) = field(f[0], "minute", 0, 59, &[], 0)?;
        let (hours, _) = field(f[1], "hour", 0, 23, &[], 0)?;
        let (days, days_any) = field(f[2], "day-of-month", 1, 31, &[], 0)?;
        let (months, _) = field(f[3], "month", 1, 12, &MONTHS, 1)?;
        // 0 and 7 are both Sunday.
        let (wd, weekdays_any) = field(f[4], "day-of-week", 0, 7, &DAYS, 0)?;
        let weekdays = ((wd | (wd >> 7)) & 0x7f) as u8;
        Ok(Cron {
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays,
            days_any,
            weekdays_any,
        })
    }

    fn day_matches(&self, d: Date) -> bool {
        let dom = self.days & (1 << d.day()) != 0;
        let dow = self.weekdays & (1 << d.weekday().to_sunday_zero_offset()) != 0;
        match (self.days_any, self.weekdays_any) {
            (true, true) => true,
            (true, false) => dow,
            (false, true) => dom,
            (false, false) => dom || dow,
        }
    }

    /// The first run strictly after `after_ms` (Unix ms), read in `tz`; `None` if there is none
    /// within about five years (`0 0 30 2 *`).
    pub fn next_after(&self, tz: &TimeZone, after_ms: i64) -> Option<i64> {
        let after = Timestamp::from_millisecond(after_ms).ok()?;
        let start = after.to_zoned(tz.clone()).datetime();
        // The next whole minute.
        let mut t = DateTime::from(start.date())
            .checked_add((i64::from(start.hour()) * 60 + i64::from(start.minute()) + 1).minutes())
            .ok()?;
        let end = start.date().checked_add(5.years()).ok()?;
        while t.date() <= end {
            if self.months & (1 << t.month()) == 0 {
                t = DateTime::from(t.date().first_of_month().checked_add(1.month()).ok()?);
                continue;
            }
            if !self.day_matches(t.date()) {
                t = DateTime::from(t.date().tomorrow().ok()?);
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = t.date().to_datetime(Time::new(t.hour(), 0, 0, 0).ok()?);
                t = t.checked_add(1.hour()).ok()?;
                continue;
            }
            if self.minutes & (1 << t.minute()) == 0 {
                t = t.checked_add(1.minute()).ok()?;
                continue;
            }
            // A time in a gap runs at the change itself (Vixie cron runs skipped jobs then); in a
            // fold, at its first occurrence.
            let amb = tz.to_ambiguous_zoned(t);
            let ms = match amb.offset() {
                jiff::tz::AmbiguousOffset::Gap { after, .. } => {
                    // Read with the later offset, the time falls before the change.
                    let early = after.to_timestamp(t).ok()?;
                    tz.following(early).next()?.timestamp().as_millisecond()
                }
                _ => amb.compatible().ok()?.timestamp().as_millisecond(),
            };
            if ms > after_ms {
                return Some(ms);
            }
            t = t.checked_add(1.minute()).ok()?;
        }
        None
    }
}

/// One `[[schedule]]` entry.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// `name`, or `asg cron` when none is given.
    pub name: String,
    pub asg: String,
    pub cron_text: String,
    pub cron: Cron,
    pub timezone: String,
    pub tz: TimeZone,
    pub min: Option<u32>,
    pub max: Option<u32>,
}

impl Schedule {
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        self.cron.next_after(&self.tz, after_ms)
    }

    /// `min 6, max 30`.
    pub fn describe_bounds(&self) -> String {
        let mut parts = Vec::new();
        if let Some(m) = self.min {
            parts.push(format!("min {m}"));
        }
        if let Some(m) = self.max {
            parts.push(format!("max {m}"));
        }
        parts.join(", ")
    }
}

/// The bounds a schedule set on its group, in force until another schedule of the group runs.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ScheduleRun {
    pub schedule: String,
    pub at: i64,
    pub min: Option<u32>,
    pub max: Option<u32>,
}

/// The latest run of any of `schedules` in `(checked, now]` (`[now, now]` when never checked);
/// on a tie, the schedule listed last.
pub fn due(schedules: &[&Schedule], checked: Option<i64>, now: i64) -> Option<ScheduleRun> {
    // Runs missed in a long outage: the latest of the last 35 days (an every-minute schedule
    // is then 50,400 runs to walk, not millions).
    let after = checked
        .unwrap_or(now - 1)
        .min(now)
        .max(now.saturating_sub(35 * 86_400_000));
    let mut best: Option<ScheduleRun> = None;
    for s in schedules {
        let mut last = None;
        let mut r = s.next_after(after);
        while let Some(t) = r.filter(|t| *t <= now) {
            last = Some(t);
            r = s.next_after(t);
        }
        if let Some(t) = last {
            if best.as_ref().is_none_or(|b| t >= b.at) {
                best = Some(ScheduleRun {
                    schedule: s.name.clone(),
                    at: t,
                    min: s.min,
                    max: s.max,
                });
            }
        }
    }
    best
}

/// Reads one `[[schedule]]` table.
pub fn read(
    doc: &mut crate::tomlread::Doc<'_>,
    o: &mut crate::tomlread::Obj<'_, '_>,
) -> Option<Schedule> {
    let path = o.path.clone();
    let name = o.str(doc, "name");
    let asg = o.req_str(doc, "asg");
    let cron_text = o.req_str(doc, "cron");
    let cron = cron_text
        .as_ref()
        .and_then(|c| match Cron::parse(&c.value) {
            Ok(cron) => Some(cron),
            Err(e) => {
                doc.error_at(c.span.start, format!("{path}.cron: {e}"));
                None
            }
        });
    let tz_text = o.str(doc, "timezone");
    let tz = match &tz_text {
        None => Some(TimeZone::UTC),
        Some(t) => match time_zone(&t.value) {
            Ok(tz) => Some(tz),
            Err(e) => {
                doc.error_at(t.span.start, format!("{path}.timezone: {e}"));
                None
            }
        },
    };
    let mut bound = |doc: &mut crate::tomlread::Doc<'_>, key: &str| -> Result<Option<u32>, ()> {
        match o.int(doc, key) {
            None if o.has(key) => Err(()),
            None => Ok(None),
            Some(v) => u32::try_from(v.value).map(Some).map_err(|_| {
                doc.error_at(
                    v.span.start,
                    format!("{path}.{key}: must be between 0 and {}", u32::MAX),
                );
            }),
        }
    };
    let min = bound(doc, "min");
    let max = bound(doc, "max");
    let (Ok(min), Ok(max)) = (min, max) else {
        return None;
    };
    if min.is_none() && max.is_none() {
        doc.error_at(o.span().start, format!("{path}: give min, max or both"));
        return None;
    }
    if let (Some(lo), Some(hi)) = (min, max) {
        if lo > hi {
            doc.error_at(
                o.span().start,
                format!("{path}: min ({lo}) is greater than max ({hi})"),
            );
            return None;
        }
    }
    let (asg, cron_text) = (asg?.value, cron_text?.value);
    Some(Schedule {
        name: name.map_or_else(|| format!("{asg} {cron_text}"), |n| n.value),
        asg,
        cron_text,
        cron: cron?,
        timezone: tz_text.map_or_else(|| "UTC".to_string(), |t| t.value),
        tz: tz?,
        min,
        max,
    })
}

/// Looks up an IANA time zone in the bundled database.
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    if name == "UTC" {
        return Ok(TimeZone::UTC);
    }
    TimeZone::get(name)
        .map_err(|_| format!("unknown time zone {name:?} (an IANA name such as Europe/Paris)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_millisecond()
    }

    fn next(cron: &str, tz: &str, after: &str) -> String {
        let c = Cron::parse(cron).unwrap();
        let ms = c.next_after(&time_zone(tz).unwrap(), at(after)).unwrap();
        Timestamp::from_millisecond(ms).unwrap().to_string()
    }

    #[test]
    fn next_runs() {
        for (cron, tz, after, want, why) in [
            (
                "0 8 * * MON-FRI",
                "Europe/Paris",
                "2026-12-04T08:00:00Z",
                "2026-12-07T07:00:00Z",
                "Friday 09:00 Paris: Monday 08:00",
            ),
            (
                "0 8 * * MON-FRI",
                "Europe/Paris",
                "2026-12-07T07:00:00Z",
                "2026-12-08T07:00:00Z",
                "exactly at a run: the next one",
            ),
            (
                "0 8 * * MON-FRI",
                "Europe/Paris",
                "2026-07-01T12:00:00Z",
                "2026-07-02T06:00:00Z",
                "summer time: 08:00 Paris is 06:00 UTC",
            ),
            (
                "*/15 * * * *",
                "UTC",
                "2026-01-01T00:07:00Z",
                "2026-01-01T00:15:00Z",
                "a step",
            ),
            (
                "5,35 9-17/4 * * *",
                "UTC",
                "2026-01-01T09:40:00Z",
                "2026-01-01T13:05:00Z",
                "a list and a stepped range",
            ),
            (
                "0 0 1 jan,jul *",
                "UTC",
                "2026-02-01T00:00:00Z",
                "2026-07-01T00:00:00Z",
                "month names",
            ),
            (
                "0 0 * * 7",
                "UTC",
                "2026-12-01T00:00:00Z",
                "2026-12-06T00:00:00Z",
                "Sunday as 7",
            ),
            (
                "0 0 * * 0",
                "UTC",
                "2026-12-01T00:00:00Z",
                "2026-12-06T00:00:00Z",
                "Sunday as 0",
            ),
            (
                "0 0 15 * MON",
                "UTC",
                "2026-12-08T00:00:00Z",
                "2026-12-14T00:00:00Z",
                "both day fields: a Monday",
            ),
            (
                "0 0 15 * MON",
                "UTC",
                "2026-12-14T00:00:00Z",
                "2026-12-15T00:00:00Z",
                "both day fields: the 15th",
            ),
            (
                "0 0 */2 * MON",
                "UTC",
                "2026-12-01T00:00:00Z",
                "2026-12-07T00:00:00Z",
                "a day field starting with * is unrestricted: Mondays only",
            ),
            (
                "0 0 31 * *",
                "UTC",
                "2026-11-15T00:00:00Z",
                "2026-12-31T00:00:00Z",
                "months without a 31st are skipped",
            ),
            (
                "0 12 29 2 *",
                "UTC",
                "2026-03-01T00:00:00Z",
                "2028-02-29T12:00:00Z",
                "leap day",
            ),
            // 2026-03-29 Paris: 02:00 jumps to 03:00 (01:00Z); 02:30 does not exist and runs at
            // the change, also when asked from just after it.
            (
                "30 2 * * *",
                "Europe/Paris",
                "2026-03-28T12:00:00Z",
                "2026-03-29T01:00:00Z",
                "a gap runs at the change",
            ),
            (
                "30 2 * * *",
                "Europe/Paris",
                "2026-03-29T00:59:50Z",
                "2026-03-29T01:00:00Z",
                "from just before it",
            ),
            (
                "30 2 * * *",
                "Europe/Paris",
                "2026-03-29T01:00:00Z",
                "2026-03-30T00:30:00Z",
                "once",
            ),
            // 2026-10-25 Paris: 03:00 falls back to 02:00; 02:30 happens twice and runs once.
            (
                "30 2 * * *",
                "Europe/Paris",
                "2026-10-24T12:00:00Z",
                "2026-10-25T00:30:00Z",
                "a fold runs at its first 02:30",
            ),
            (
                "30 2 * * *",
                "Europe/Paris",
                "2026-10-25T00:30:00Z",
                "2026-10-26T01:30:00Z",
                "and not at its second",
            ),
        ] {
            assert_eq!(
                next(cron, tz, after),
                want,
                "{cron} in {tz} after {after}: {why}"
            );
        }
        assert!(Cron::parse("0 0 30 2 *")
            .unwrap()
            .next_after(&TimeZone::UTC, 0)
            .is_none());
    }

    #[test]
    fn bad_cron_says_which_field() {
        let e = |s: &str| Cron::parse(s).unwrap_err();
        assert_eq!(
            e("0 8 * *"),
            "4 fields; cron has 5: minute hour day-of-month month day-of-week"
        );
        assert_eq!(
            e("60 * * * *"),
            "minute \"60\": values must lie within 0-59"
        );
        assert_eq!(
            e("0 8 * * MON-FRY"),
            "day-of-week \"MON-FRY\": \"FRY\" is not a number or a name"
        );
        assert_eq!(e("0 8 0 * *"), "day-of-month \"0\": 0 is below 1");
        assert_eq!(
            e("*/0 * * * *"),
            "minute \"*/0\": step \"0\" must be a positive number"
        );
        assert_eq!(
            e("0 17-9 * * *"),
            "hour \"17-9\": range 17-9 runs backwards"
        );
        assert!(time_zone("Mars/Olympus").is_err());
    }
}
