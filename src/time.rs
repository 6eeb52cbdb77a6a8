//! Time as dealsync and HubSpot write it: epoch milliseconds inside, ISO-8601 with
//! milliseconds in UTC on the wire (HubSpot's date-time format). One home for the helpers the
//! engine, notices, status, replay and the sandbox all use, so production code never reaches
//! into the sandbox for them.

/// Milliseconds since the epoch, from the wall clock.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// ISO-8601 with milliseconds in UTC (`2026-12-02T19:13:03.000Z`). A time outside chrono's
/// range prints as the epoch rather than failing: callers format stored or received numbers.
pub fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// HubSpot's date-times (RFC 3339) or epoch milliseconds.
pub fn parse_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.timestamp_millis())
}

/// [`parse_ms`], and also a bare date (`2026-12-02`, midnight UTC), as HubSpot accepts in
/// search filters and date properties.
pub fn parse_time_ms(s: &str) -> Option<i64> {
    parse_ms(s).or_else(|| {
        chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|d| d.and_utc().timestamp_millis())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_round_trips_through_parse() {
        let t = 1_796_238_783_123;
        assert_eq!(iso(t), "2026-12-02T19:13:03.123Z");
        assert_eq!(parse_ms(&iso(t)), Some(t));
        assert_eq!(parse_ms(" 42 "), Some(42));
        assert_eq!(parse_ms("2026-12-02"), None);
        assert_eq!(parse_time_ms("2026-12-02"), Some(1_796_169_600_000));
        assert_eq!(parse_time_ms("soon"), None);
    }

    #[test]
    fn out_of_range_times_print_as_the_epoch() {
        assert_eq!(iso(i64::MAX), "1970-01-01T00:00:00.000Z");
    }
}
