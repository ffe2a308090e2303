//! Gerrit's duration and size forms (`10s`, `5 min`, `1 hour`, bare number = milliseconds; `64m`).

use std::time::Duration;

/// Parses a duration the way Gerrit's `ConfigUtil.getTimeUnit` does: a non-negative integer,
/// optional blanks, then an optional unit. A bare number is milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if digits_end == 0 {
        return Err(format!(
            "`{text}` is not a duration (expected a number and a unit, e.g. `10s`, `5 min`, `1 hour`)"
        ));
    }
    let n: u64 = text[..digits_end]
        .parse()
        .map_err(|_| format!("`{text}` is too large for a duration"))?;
    let unit = text[digits_end..].trim().to_ascii_lowercase();
    let ms_per_unit: u64 = match unit.as_str() {
        "" | "ms" | "milliseconds" | "millisecond" => 1,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000,
        "d" | "day" | "days" => 86_400_000,
        "w" | "week" | "weeks" => 7 * 86_400_000,
        "mon" | "month" | "months" => 30 * 86_400_000,
        "y" | "year" | "years" => 365 * 86_400_000,
        other => {
            return Err(format!(
                "unknown time unit `{other}` in `{text}` (use ms, s, min, h, d, w, mon or y)"
            ))
        }
    };
    n.checked_mul(ms_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{text}` is too large for a duration"))
}

/// Parses a size with git-config's optional `k`, `m`, `g` suffix (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let (num, mul) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t.as_str(), 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("`{text}` is not a size (a number with an optional k, m or g)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gerrit_forms() {
        let cases = [
            ("10s", 10_000),
            ("5 min", 300_000),
            ("1 hour", 3_600_000),
            ("250", 250),
            ("7 days", 7 * 86_400_000),
            ("2w", 14 * 86_400_000),
            ("1 mon", 30 * 86_400_000),
            ("0", 0),
            ("  3 h ", 10_800_000),
        ];
        for (text, ms) in cases {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(ms)),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_durations_say_why() {
        assert!(parse_duration("soon")
            .unwrap_err()
            .contains("not a duration"));
        assert!(parse_duration("5 fortnights")
            .unwrap_err()
            .contains("unknown time unit"));
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("99999999999999999999s").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("16m"), Ok(16 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("lots").is_err());
    }
}
