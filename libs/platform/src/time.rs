//! Conversions between protobuf `Timestamp`s and the `chrono` times the database speaks.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use crate::error::ApiError;

/// A time as a protobuf `Timestamp`.
pub fn to_timestamp(time: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// The range a protobuf `Timestamp` may hold (0001-01-01 to 9999-12-31 UTC), which is also
/// what PostgreSQL and every client can represent.
const SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;

/// A request's `Timestamp` as a time; out of range is `INVALID_ARGUMENT` naming `field`.
pub fn from_timestamp(timestamp: &Timestamp, field: &str) -> Result<DateTime<Utc>, ApiError> {
    u32::try_from(timestamp.nanos)
        .ok()
        .filter(|nanos| *nanos < 1_000_000_000 && SECONDS.contains(&timestamp.seconds))
        .and_then(|nanos| DateTime::from_timestamp(timestamp.seconds, nanos))
        .ok_or_else(|| {
            ApiError::invalid_argument("INVALID_REQUEST", format!("{field} is not a valid time"))
                .violation(field, "not a valid timestamp")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_and_nonsense_is_refused() {
        let now = Utc::now();
        assert_eq!(from_timestamp(&to_timestamp(now), "t").unwrap(), now);
        let bad = Timestamp {
            seconds: 0,
            nanos: -1,
        };
        let ancient = Timestamp {
            seconds: -220_000_000_000,
            nanos: 0,
        };
        assert_eq!(
            from_timestamp(&ancient, "t").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            from_timestamp(&bad, "at_time").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
