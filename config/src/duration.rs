//! Prometheus durations (`1h30m`, `5m`, `6997ms`, `2d`, `1w`, `1y`) as milliseconds.

/// The longest duration accepted (10,000 years): timestamp arithmetic never overflows.
pub const MAX_MS: i64 = 10_000 * 365 * 86_400_000;

/// Parses a Prometheus duration into milliseconds. Units must be given largest first, each at most
/// once, as Prometheus requires (`1h30m`, not `30m1h`).
pub fn parse_ms(s: &str) -> Result<i64, String> {
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err("empty duration".into());
    }
    const UNITS: [(&str, i64); 7] = [
        ("y", 365 * 86_400_000),
        ("w", 7 * 86_400_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ];
    let b = s.as_bytes();
    let mut i = 0;
    let mut total: i64 = 0;
    let mut last_unit = usize::MAX;
    while i < b.len() {
        let st = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if st == i {
            return Err(format!("not a valid duration string: {s:?}"));
        }
        let n: i64 = s[st..i]
            .parse()
            .map_err(|_| format!("not a valid duration string: {s:?}"))?;
        let ust = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = &s[ust..i];
        let Some(k) = UNITS.iter().position(|(u, _)| *u == unit) else {
            return Err(format!("not a valid duration string: {s:?} (unknown unit {unit:?}; use ms, s, m, h, d, w, y)"));
        };
        if last_unit != usize::MAX && k <= last_unit {
            return Err(format!(
                "not a valid duration string: {s:?} (units must go from largest to smallest)"
            ));
        }
        last_unit = k;
        total = n
            .checked_mul(UNITS[k].1)
            .and_then(|v| total.checked_add(v))
            .filter(|t| *t <= MAX_MS)
            .ok_or_else(|| format!("duration {s:?} is too long (at most 10000y)"))?;
    }
    Ok(total)
}

/// Formats milliseconds as Prometheus does (`1h30m`, `6s997ms`, `0s`).
pub fn format_ms(ms: i64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let mut rest = ms.unsigned_abs();
    if ms < 0 {
        out.push('-');
    }
    for (u, v) in [
        ("y", 365 * 86_400_000u64),
        ("w", 7 * 86_400_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ] {
        if rest >= v {
            out.push_str(&format!("{}{u}", rest / v));
            rest %= v;
        }
    }
    out
}

/// (year, month 1–12, day 1–31) of a count of days since 1970-01-01 (proleptic Gregorian).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses a time as `--start`-style arguments and data files give it: RFC 3339
/// (`2026-11-25T20:12:31Z`, `2026-11-25T20:12:31.5+01:00`) or Unix seconds (`1764101551.5`).
pub fn parse_timestamp_ms(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        if !secs.is_finite() || secs.abs() > 1e13 {
            return Err(format!("timestamp {s:?} is out of range"));
        }
        return Ok((secs * 1000.0).round() as i64);
    }
    let bad =
        || format!("invalid timestamp {s:?}: use RFC 3339 (2026-11-25T20:12:31Z) or Unix seconds");
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num =
        |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<i64>().ok()).ok_or_else(bad);
    let (y, mo, d, h, mi, sec) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return Err(bad());
    }
    let mut rest = &s[19..];
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits: String = frac.chars().take_while(|c| c.is_ascii_digit()).collect();
        if digits.is_empty() {
            return Err(bad());
        }
        ms = format!("{digits:0<3}")[..3]
            .parse::<i64>()
            .map_err(|_| bad())?;
        rest = &frac[digits.len()..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && rest.as_bytes()[3] == b':' =>
        {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            let hh: i64 = rest
                .get(1..3)
                .and_then(|x| x.parse().ok())
                .ok_or_else(bad)?;
            let mm: i64 = rest
                .get(4..6)
                .and_then(|x| x.parse().ok())
                .ok_or_else(bad)?;
            sign * (hh * 60 + mm)
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(y, mo, d);
    Ok(((days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60) * 1000) + ms)
}

/// RFC 3339 in UTC with millisecond precision when needed: `2026-11-25T20:12:31Z`,
/// `2026-11-25T20:12:31.250Z`.
pub fn format_timestamp_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let frac = ms.rem_euclid(1000);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    let (h, mi, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    if frac == 0 {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    } else {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac:03}Z")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(format_timestamp_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_timestamp_ms(1_764_101_551_250),
            "2025-11-25T20:12:31.250Z"
        );
        assert_eq!(format_timestamp_ms(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(format_timestamp_ms(-1000), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn parses_timestamps() {
        assert_eq!(parse_timestamp_ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_timestamp_ms("2025-11-25T20:12:31.25Z"),
            Ok(1_764_101_551_250)
        );
        assert_eq!(
            parse_timestamp_ms("2025-11-25T21:12:31.250+01:00"),
            Ok(1_764_101_551_250)
        );
        assert_eq!(parse_timestamp_ms("1764101551.25"), Ok(1_764_101_551_250));
        for ms in [0, 951_782_400_000, 1_764_101_551_250, -86_400_000] {
            assert_eq!(parse_timestamp_ms(&format_timestamp_ms(ms)), Ok(ms));
        }
        for bad in [
            "",
            "yesterday",
            "2025-13-01T00:00:00Z",
            "2025-11-25 20:12",
            "1e300",
        ] {
            assert!(parse_timestamp_ms(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_prometheus_durations() {
        assert_eq!(parse_ms("0"), Ok(0));
        assert_eq!(parse_ms("5m"), Ok(300_000));
        assert_eq!(parse_ms("1m30s"), Ok(90_000));
        assert_eq!(parse_ms("6997ms"), Ok(6997));
        assert_eq!(parse_ms("1d2h"), Ok(93_600_000));
        for bad in ["", "5", "m", "30s1m", "1m1m", "5 m", "1.5h", "-1m", "5x"] {
            assert!(parse_ms(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_round_trip() {
        for ms in [0, 1, 999, 1000, 90_000, 6997, 3_600_000, 93_600_000] {
            assert_eq!(parse_ms(&format_ms(ms)), Ok(ms), "{ms}");
        }
        assert_eq!(format_ms(90_000), "1m30s");
    }
}
