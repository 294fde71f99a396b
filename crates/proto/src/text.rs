//! How domain values are written on the wire: ids and enums as their canonical text,
//! timestamps as RFC 3339 in UTC with milliseconds.

use gantry_domain::Timestamp;
use serde::{Deserialize, Deserializer, Serializer};
use serde_with::{DeserializeAs, SerializeAs};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339 as Rfc3339Format;

/// `serde_with` adapter: a [`Timestamp`] as `2026-11-27T23:14:41.123Z`.
#[derive(Debug)]
pub struct Rfc3339;

/// The RFC 3339 text of a timestamp.
pub fn format_timestamp(timestamp: Timestamp) -> String {
    let nanos = i128::from(timestamp.unix_millis()) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&Rfc3339Format).ok())
        .unwrap_or_else(|| timestamp.unix_millis().to_string())
}

impl SerializeAs<Timestamp> for Rfc3339 {
    fn serialize_as<S: Serializer>(source: &Timestamp, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_timestamp(*source))
    }
}

impl<'de> DeserializeAs<'de, Timestamp> for Rfc3339 {
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
        let text = String::deserialize(deserializer)?;
        let parsed = OffsetDateTime::parse(&text, &Rfc3339Format).map_err(|e| {
            serde::de::Error::custom(format!("{text:?} is not an RFC 3339 time: {e}"))
        })?;
        let millis = parsed.unix_timestamp_nanos() / 1_000_000;
        Ok(Timestamp::from_unix_millis(millis as i64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_with_millisecond_precision() {
        let t = Timestamp::from_unix_millis(1_795_000_000_123);
        let text = format_timestamp(t);
        assert_eq!(text, "2026-11-18T11:06:40.123Z");
        let json = serde_json::Value::String(text);
        let back: Timestamp = Rfc3339::deserialize_as(json).unwrap();
        assert_eq!(back, t);
    }
}
