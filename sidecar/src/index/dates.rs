//! Time values of documents and queries: timestamps to epoch seconds, Gerrit's `age:` units.
//!
//! A document's `updated` is either an integer (epoch seconds) or a string in one of the forms
//! `2024-01-02`, `2024-01-02 10:11:12[.nnnnnnnnn]` (Gerrit's REST timestamps, UTC) or RFC 3339
//! `2024-01-02T10:11:12[.nnn](Z|+01:00)`. Queries accept the same strings in `before:`/`after:`.

use serde_json::Value;

/// Epoch seconds of a document's time value.
pub(crate) fn doc_time(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => parse_timestamp(s),
        _ => None,
    }
}

/// Parses `YYYY-MM-DD`, optionally followed by ` ` or `T`, `HH:MM[:SS[.frac]]` and a zone
/// (`Z`, `+HH:MM`, `+HHMM`); no zone means UTC, as in Gerrit's REST API.
pub(crate) fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year: i16 = s.get(0..4)?.parse().ok()?;
    let month: i8 = s.get(5..7)?.parse().ok()?;
    let day: i8 = s.get(8..10)?.parse().ok()?;
    // jiff checks the calendar: 2024-02-31 and 2023-02-29 are refused, not rolled over.
    let date = jiff::civil::Date::new(year, month, day).ok()?;
    let rest = &s[10..];
    let (time, zone) = if rest.is_empty() {
        (jiff::civil::Time::midnight(), "")
    } else {
        let rest = rest.strip_prefix(['T', 't', ' '])?;
        let (clock, zone) = match rest.find(['Z', 'z', '+', '-']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let clock = clock.split('.').next()?;
        let mut parts = clock.split(':');
        let h: i8 = parts.next()?.parse().ok()?;
        let m: i8 = parts.next()?.parse().ok()?;
        let sec: i8 = match parts.next() {
            Some(p) => p.parse().ok()?,
            None => 0,
        };
        if parts.next().is_some() {
            return None;
        }
        // A leap second (`:60`) is read as the last second of its minute.
        (jiff::civil::Time::new(h, m, sec.min(59), 0).ok()?, zone)
    };
    let offset_secs: i32 = match zone {
        "" | "Z" | "z" => 0,
        z => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let digits: String = z[1..].chars().filter(|c| *c != ':').collect();
            if digits.len() != 4 {
                return None;
            }
            let zh: i32 = digits[..2].parse().ok()?;
            let zm: i32 = digits[2..].parse().ok()?;
            if zh > 23 || zm > 59 {
                return None;
            }
            sign * (zh * 3600 + zm * 60)
        }
    };
    let offset = jiff::tz::Offset::from_seconds(offset_secs).ok()?;
    let ts = offset.to_timestamp(date.to_datetime(time)).ok()?;
    Some(ts.as_second())
}

/// Seconds of a Gerrit age such as `2d`, `90min`, `1w2d`, `3mon`, `1y`
/// (units s/sec/second(s), m/min/minute(s), h/hr/hour(s), d/day(s), w/week(s),
/// mon/month(s) = 30 days, y/year(s) = 365 days).
pub(crate) fn parse_age(s: &str) -> Option<i64> {
    let mut total: i64 = 0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = rest[..unit_len].trim().to_ascii_lowercase();
        rest = &rest[unit_len..];
        let factor = match unit.as_str() {
            "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86_400,
            "w" | "week" | "weeks" => 7 * 86_400,
            "mon" | "month" | "months" => 30 * 86_400,
            "y" | "year" | "years" => 365 * 86_400,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(factor)?)?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_every_accepted_form() {
        assert_eq!(parse_timestamp("1970-01-01"), Some(0));
        assert_eq!(parse_timestamp("2024-01-01"), Some(1_704_067_200));
        assert_eq!(
            parse_timestamp("2024-01-01 00:00:10.000000000"),
            Some(1_704_067_210)
        );
        assert_eq!(parse_timestamp("2024-01-01T01:00:00Z"), Some(1_704_070_800));
        assert_eq!(
            parse_timestamp("2024-01-01T01:00:00+01:00"),
            Some(1_704_067_200)
        );
        assert_eq!(
            parse_timestamp("2023-12-31T23:00:00-01:00"),
            Some(1_704_067_200)
        );
        assert_eq!(parse_timestamp("2024-13-01"), None);
        assert_eq!(parse_timestamp("2024-02-31"), None);
        assert_eq!(parse_timestamp("2023-02-29"), None);
        assert_eq!(parse_timestamp("2024-02-29"), Some(1_709_164_800));
        assert_eq!(parse_timestamp("yesterday"), None);
        assert_eq!(
            doc_time(&serde_json::json!(1_704_067_200)),
            Some(1_704_067_200)
        );
    }

    #[test]
    fn ages_in_gerrit_units() {
        assert_eq!(parse_age("2d"), Some(172_800));
        assert_eq!(parse_age("90min"), Some(5400));
        assert_eq!(parse_age("1w2d"), Some(9 * 86_400));
        assert_eq!(parse_age("3mon"), Some(90 * 86_400));
        assert_eq!(parse_age("1y"), Some(365 * 86_400));
        assert_eq!(parse_age("5 hours"), Some(18_000));
        assert_eq!(parse_age("2 fortnights"), None);
        assert_eq!(parse_age("d"), None);
    }
}
