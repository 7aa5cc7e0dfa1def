//! `google.protobuf.Duration` in its JSON form (`"3s"`, `"0.500s"`), as istioctl prints it.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A protobuf Duration. Serialises like Go's protojson: whole seconds as `"3s"`, fractions with
/// 3, 6 or 9 digits (`"0.500s"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const ZERO: Duration = Duration(std::time::Duration::ZERO);

    pub fn from_secs(s: u64) -> Duration {
        Duration(std::time::Duration::from_secs(s))
    }
    pub fn from_millis(ms: u64) -> Duration {
        Duration(std::time::Duration::from_millis(ms))
    }
    pub fn as_std(&self) -> std::time::Duration {
        self.0
    }
    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }

    /// Parses the protobuf JSON form (`"3s"`, `"1.5s"`, `"-0s"` is refused).
    pub fn parse_proto(s: &str) -> Result<Duration, DurationError> {
        let body = s
            .strip_suffix('s')
            .ok_or_else(|| DurationError(s.to_string()))?;
        let (whole, frac) = match body.split_once('.') {
            Some((w, f)) => (w, f),
            None => (body, ""),
        };
        if whole.is_empty()
            || !whole.chars().all(|c| c.is_ascii_digit())
            || !frac.chars().all(|c| c.is_ascii_digit())
            || frac.len() > 9
        {
            return Err(DurationError(s.to_string()));
        }
        let secs: u64 = whole.parse().map_err(|_| DurationError(s.to_string()))?;
        let nanos: u32 = if frac.is_empty() {
            0
        } else {
            let mut padded = frac.to_string();
            while padded.len() < 9 {
                padded.push('0');
            }
            padded.parse().map_err(|_| DurationError(s.to_string()))?
        };
        Ok(Duration(std::time::Duration::new(secs, nanos)))
    }

    /// Parses a Kubernetes/Istio API duration (Go `time.ParseDuration` units: h, m, s, ms, us, ns;
    /// compound forms such as `1h30m`). Used for DR/VS fields, which are strings in YAML.
    pub fn parse_go(s: &str) -> Result<Duration, DurationError> {
        let err = || DurationError(s.to_string());
        if s.is_empty() {
            return Err(err());
        }
        if s == "0" {
            return Ok(Duration::ZERO);
        }
        let mut total: f64 = 0.0;
        let bytes = s.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                i += 1;
            }
            if start == i {
                return Err(err());
            }
            let num: f64 = s[start..i].parse().map_err(|_| err())?;
            let ustart = i;
            while i < bytes.len() && !(bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                i += 1;
            }
            let mult = match &s[ustart..i] {
                "h" => 3600.0,
                "m" => 60.0,
                "s" => 1.0,
                "ms" => 1e-3,
                "us" | "µs" => 1e-6,
                "ns" => 1e-9,
                _ => return Err(err()),
            };
            total += num * mult;
        }
        if !total.is_finite() || total < 0.0 {
            return Err(err());
        }
        let nanos = (total * 1e9).round() as u128;
        Ok(Duration(std::time::Duration::new(
            (nanos / 1_000_000_000) as u64,
            (nanos % 1_000_000_000) as u32,
        )))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?} (expected e.g. \"3s\", \"0.500s\", \"1h\")")]
pub struct DurationError(pub String);

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        let nanos = self.0.subsec_nanos();
        if nanos == 0 {
            write!(f, "{secs}s")
        } else if nanos.is_multiple_of(1_000_000) {
            write!(f, "{secs}.{:03}s", nanos / 1_000_000)
        } else if nanos.is_multiple_of(1_000) {
            write!(f, "{secs}.{:06}s", nanos / 1_000)
        } else {
            write!(f, "{secs}.{nanos:09}s")
        }
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Duration(d)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Duration::parse_proto(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn formats_like_protojson() {
        assert_eq!(Duration::from_secs(3).to_string(), "3s");
        assert_eq!(Duration::from_millis(500).to_string(), "0.500s");
        assert_eq!(
            Duration(std::time::Duration::from_micros(1500)).to_string(),
            "0.001500s"
        );
        assert_eq!(
            Duration::parse_proto("0.500s").unwrap(),
            Duration::from_millis(500)
        );
        assert!(Duration::parse_proto("3").is_err());
        assert_eq!(
            Duration::parse_go("1h30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            Duration::parse_go("300s").unwrap(),
            Duration::from_secs(300)
        );
        assert_eq!(
            Duration::parse_go("250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert!(Duration::parse_go("abc").is_err());
        assert!(Duration::parse_go("10").is_err());
    }
}
