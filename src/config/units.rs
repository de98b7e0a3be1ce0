//! Durations and sizes as written in the configuration file and on the command line.
//!
//! Both functions return a one-sentence error naming the rejected value and what was
//! expected, so callers only have to prefix the key (`limits.idle_timeout: ...`).

use std::time::Duration;

/// What a duration looks like, for error messages.
pub const DURATION_EXAMPLES: &str = r#"expected e.g. "250ms", "5s", "2m""#;
/// What a size looks like, for error messages.
pub const SIZE_EXAMPLES: &str =
    r#"expected a number of bytes or e.g. "512B", "64KiB", "10MiB", "1GiB", "100kB""#;

/// Parses a duration such as `"250ms"`, `"5s"`, `"2m"`, `"1h"` or `"1m30s"`.
///
/// A number without a unit is rejected (except `"0"`): "5" could mean seconds or
/// milliseconds, so the unit must be written out.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let trimmed = s.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) && trimmed != "0" {
        return Err(format!(
            "\"{s}\" has no unit; durations need one, write e.g. \"{trimmed}s\" or \"{trimmed}ms\""
        ));
    }
    humantime::parse_duration(trimmed)
        .map_err(|_| format!("\"{s}\" is not a duration; {DURATION_EXAMPLES}"))
}

/// The message for a duration written as a bare TOML number (`timeout = 5`).
pub fn bare_number_duration(n: i64) -> String {
    format!("{n} is a bare number but durations are strings with a unit; write e.g. \"{n}s\"")
}

/// Parses a size: a plain number of bytes (`"1024"`), or a number followed by a unit:
/// `B`, decimal `kB`/`KB`, `MB`, `GB`, `TB` (powers of 1000) or binary `KiB`, `MiB`,
/// `GiB`, `TiB` (powers of 1024). Units are matched case-insensitively; a space between
/// number and unit is allowed. Fractions are not.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("\"{s}\" is not a size; {SIZE_EXAMPLES}");
    let trimmed = s.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(digits_end);
    if number.is_empty() {
        return Err(bad());
    }
    let multiplier: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000 * 1000,
        "gb" => 1000 * 1000 * 1000,
        "tb" => 1000 * 1000 * 1000 * 1000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("\"{s}\" is too large a size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations() {
        assert_eq!(
            parse_duration("5 parsecs").unwrap_err(),
            r#""5 parsecs" is not a duration; expected e.g. "250ms", "5s", "2m""#
        );
        assert_eq!(
            parse_duration("5").unwrap_err(),
            r#""5" has no unit; durations need one, write e.g. "5s" or "5ms""#
        );
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("s").is_err());
        assert!(bare_number_duration(5).contains(r#"write e.g. "5s""#));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("64KiB"), Ok(64 * 1024));
        assert_eq!(parse_size("64 KiB"), Ok(64 * 1024));
        assert_eq!(parse_size("10MiB"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
        assert_eq!(parse_size("100kB"), Ok(100_000));
        assert_eq!(parse_size("100KB"), Ok(100_000));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_size("3GB"), Ok(3_000_000_000));
    }

    #[test]
    fn bad_sizes() {
        assert_eq!(
            parse_size("ten").unwrap_err(),
            r#""ten" is not a size; expected a number of bytes or e.g. "512B", "64KiB", "10MiB", "1GiB", "100kB""#
        );
        assert!(parse_size("").is_err());
        assert!(parse_size("KiB").is_err());
        assert!(parse_size("1.5MiB").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("10 parsecs").is_err());
        assert_eq!(
            parse_size("20000000TiB").unwrap_err(),
            r#""20000000TiB" is too large a size"#
        );
    }
}
