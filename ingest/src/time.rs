//! Event-time parsing and formatting. herd carries time as epoch milliseconds (`i64`).

use chrono::{DateTime, SecondsFormat, Utc};

/// Earliest accepted event time: 2000-01-01T00:00:00Z. Anything earlier is a broken
/// clock or a unit mix-up, not an observation.
pub const MIN_TS_MS: i64 = 946_684_800_000;
/// Latest accepted event time: 2200-01-01T00:00:00Z.
pub const MAX_TS_MS: i64 = 7_258_118_400_000;

/// Parses an RFC 3339 timestamp into epoch milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    if s.len() > 64 {
        return None;
    }
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
        .filter(|ms| (MIN_TS_MS..=MAX_TS_MS).contains(ms))
}

/// Interprets an integer epoch time whose unit is guessed from its magnitude
/// (seconds, milliseconds, microseconds or nanoseconds) and returns milliseconds.
pub fn epoch_to_ms(v: i64) -> Option<i64> {
    let ms = match v.unsigned_abs() {
        0..=99_999_999_999 => v.checked_mul(1000)?,
        100_000_000_000..=99_999_999_999_999 => v,
        100_000_000_000_000..=99_999_999_999_999_999 => v / 1000,
        _ => v / 1_000_000,
    };
    (MIN_TS_MS..=MAX_TS_MS).contains(&ms).then_some(ms)
}

/// Interprets a float epoch time in seconds (as some producers write it).
pub fn epoch_secs_f64_to_ms(v: f64) -> Option<i64> {
    if !v.is_finite() {
        return None;
    }
    let ms = (v * 1000.0).round();
    ((MIN_TS_MS as f64)..=(MAX_TS_MS as f64))
        .contains(&ms)
        .then_some(ms as i64)
}

/// Formats epoch milliseconds as RFC 3339 UTC with millisecond precision.
pub fn format_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339_with_offsets_and_nanos() {
        assert_eq!(
            parse_rfc3339_ms("2026-11-23T10:00:00Z"),
            Some(1_795_428_000_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-23T11:00:00.123456789+01:00"),
            Some(1_795_428_000_123)
        );
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
    }

    #[test]
    fn guesses_epoch_units() {
        let ms = 1_795_428_000_000;
        assert_eq!(epoch_to_ms(ms / 1000), Some(ms));
        assert_eq!(epoch_to_ms(ms), Some(ms));
        assert_eq!(epoch_to_ms(ms * 1000), Some(ms));
        assert_eq!(epoch_to_ms(ms * 1_000_000), Some(ms));
        assert_eq!(epoch_to_ms(-5), None);
        assert_eq!(epoch_to_ms(i64::MAX), None);
        assert_eq!(format_ms(ms), "2026-11-23T10:00:00.000Z");
    }
}
