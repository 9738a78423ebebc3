//! Human durations (`2s`, `15m`, `12h`, `30d`) and TTL bounds.

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TtlError {
    /// Not a number followed by one of `s`, `m`, `h`, `d`.
    #[error("invalid duration {0:?}: expected a positive number followed by s, m, h or d, such as 15m or 30d")]
    Syntax(String),
    /// Longer than the maximum allowed for this kind of credential.
    #[error("duration {given} is over the maximum of {max}")]
    OverMaximum {
        /// The requested duration, formatted.
        given: String,
        /// The maximum, formatted.
        max: String,
    },
}

/// Parses `<n>s|m|h|d` into seconds. Zero and negative values are refused.
pub fn parse_duration(s: &str) -> Result<i64, TtlError> {
    let err = || TtlError::Syntax(s.to_owned());
    let unit_at = s.len().checked_sub(1).ok_or_else(err)?;
    let (num, unit) = s.split_at(unit_at);
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(err()),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    let n: i64 = num.parse().map_err(|_| err())?;
    let secs = n.checked_mul(mult).ok_or_else(err)?;
    if secs <= 0 {
        return Err(err());
    }
    Ok(secs)
}

/// Parses a duration and checks it against `max_secs`.
pub fn parse_ttl(s: &str, max_secs: i64) -> Result<i64, TtlError> {
    let secs = parse_duration(s)?;
    if secs > max_secs {
        return Err(TtlError::OverMaximum { given: s.to_owned(), max: format_duration(max_secs) });
    }
    Ok(secs)
}

/// Formats seconds in the largest unit that divides them exactly (`30d`, `90m`).
pub fn format_duration(secs: i64) -> String {
    for (unit, mult) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs != 0 && secs % mult == 0 {
            return format!("{}{unit}", secs / mult);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MAX_AGENT_KEY_TTL_SECS;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("2s"), Ok(2));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("12h"), Ok(43_200));
        assert_eq!(parse_duration("30d"), Ok(2_592_000));
        for bad in ["", "s", "0s", "-1s", "1", "1w", "1.5h", " 1s", "99999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn maximum_is_inclusive() {
        assert_eq!(parse_ttl("30d", MAX_AGENT_KEY_TTL_SECS), Ok(MAX_AGENT_KEY_TTL_SECS));
        assert!(matches!(parse_ttl("31d", MAX_AGENT_KEY_TTL_SECS), Err(TtlError::OverMaximum { .. })));
        assert!(matches!(
            parse_ttl(&format!("{}s", MAX_AGENT_KEY_TTL_SECS + 1), MAX_AGENT_KEY_TTL_SECS),
            Err(TtlError::OverMaximum { .. })
        ));
    }

    #[test]
    fn formats() {
        assert_eq!(format_duration(2_592_000), "30d");
        assert_eq!(format_duration(5_400), "90m");
        assert_eq!(format_duration(7), "7s");
    }
}
