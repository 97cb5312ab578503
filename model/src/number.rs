//! Numbers with a range: ports ([`Port`]), bounded counts and durations ([`Bounded`]), request
//! rates ([`Rate`], [`Burst`]) and byte limits ([`BodyLimit`]).

use std::fmt;
use std::num::{NonZeroU16, NonZeroU32};
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ModelError;

/// Reads any integer a format offers (TOML's i64, JSON's u64/i64) as an i128, so the range
/// check (not the integer type) decides and names the allowed range.
pub(crate) fn integer<'de, D: Deserializer<'de>>(
    d: D,
    expecting: &'static str,
) -> Result<i128, D::Error> {
    struct IntVisitor(&'static str);
    impl Visitor<'_> for IntVisitor {
        type Value = i128;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i128, E> {
            Ok(i128::from(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i128, E> {
            Ok(i128::from(v))
        }
        fn visit_i128<E: de::Error>(self, v: i128) -> Result<i128, E> {
            Ok(v)
        }
        fn visit_u128<E: de::Error>(self, v: u128) -> Result<i128, E> {
            i128::try_from(v).map_err(|_| E::custom(format!("{v} is far too large")))
        }
    }
    d.deserialize_any(IntVisitor(expecting))
}

/// A TCP port, 1-65535.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port(NonZeroU16);

impl Port {
    /// Validates `port` (any integer width, so an out-of-range value is named as written).
    pub fn new(port: impl Into<i128>) -> Result<Self, ModelError> {
        let port = port.into();
        u16::try_from(port)
            .ok()
            .and_then(NonZeroU16::new)
            .map(Self)
            .ok_or_else(|| ModelError::value(format!("{port} is not a port: use 1-65535")))
    }

    /// The port number.
    pub fn get(self) -> u16 {
        self.0.get()
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<Port> for u16 {
    fn from(port: Port) -> u16 {
        port.get()
    }
}

impl Serialize for Port {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.get())
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = integer(d, "a port number (1-65535)")?;
        Port::new(value).map_err(|e| de::Error::custom(e.message))
    }
}

/// An integer setting within `MIN..=MAX` (a count, a prefix length, seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bounded<const MIN: u64, const MAX: u64>(u64);

impl<const MIN: u64, const MAX: u64> Bounded<MIN, MAX> {
    /// The smallest value accepted.
    pub const MIN: u64 = MIN;
    /// The largest value accepted.
    pub const MAX: u64 = MAX;

    /// Validates `value`.
    pub fn new(value: impl Into<i128>) -> Result<Self, ModelError> {
        let value = value.into();
        match u64::try_from(value) {
            Ok(v) if (MIN..=MAX).contains(&v) => Ok(Self(v)),
            _ => Err(ModelError::value(format!(
                "{value} is outside the allowed range {MIN}..={MAX}"
            ))),
        }
    }

    /// A value known to be in range (for defaults); out-of-range values are clamped.
    pub const fn saturating(value: u64) -> Self {
        if value < MIN {
            Self(MIN)
        } else if value > MAX {
            Self(MAX)
        } else {
            Self(value)
        }
    }

    /// The value.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The value as a `usize` (saturating on 32-bit targets).
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }

    /// The value as a `u32` (saturating).
    pub fn as_u32(self) -> u32 {
        u32::try_from(self.0).unwrap_or(u32::MAX)
    }

    /// The value as a `u8` (saturating; for prefix lengths).
    pub fn as_u8(self) -> u8 {
        u8::try_from(self.0).unwrap_or(u8::MAX)
    }

    /// The value as seconds.
    pub fn as_secs(self) -> Duration {
        Duration::from_secs(self.0)
    }
}

impl<const MIN: u64, const MAX: u64> fmt::Display for Bounded<MIN, MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<const MIN: u64, const MAX: u64> Serialize for Bounded<MIN, MAX> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Bounded<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = integer(d, "an integer")?;
        Self::new(value).map_err(|e| de::Error::custom(e.message))
    }
}

/// Highest request rate a policy accepts, in requests per second.
pub const MAX_RATE: f64 = 1_000_000.0;

/// A request rate in requests per second, `0` to [`MAX_RATE`]; `0` turns rate limiting off
/// where it is set.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Rate(f64);

impl Rate {
    /// Validates `per_second`.
    pub fn new(per_second: f64) -> Result<Self, ModelError> {
        if per_second.is_finite() && (0.0..=MAX_RATE).contains(&per_second) {
            Ok(Self(per_second))
        } else {
            Err(ModelError::value(format!(
                "{per_second} is not a rate: use requests per second from 0 (off) to {MAX_RATE}"
            )))
        }
    }

    /// Requests per second.
    pub fn get(self) -> f64 {
        self.0
    }

    /// Whether this rate turns limiting off (`0`).
    pub fn is_off(self) -> bool {
        self.0 == 0.0
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RateVisitor;
        impl Visitor<'_> for RateVisitor {
            type Value = f64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of requests per second, such as 10 or 2.5")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
                Ok(v)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
                Ok(v as f64)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
                Ok(v as f64)
            }
        }
        let value = d.deserialize_any(RateVisitor)?;
        Rate::new(value).map_err(|e| de::Error::custom(e.message))
    }
}

/// How many requests a client may send at once after a quiet spell (the bucket size), at
/// least 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Burst(NonZeroU32);

impl Burst {
    /// Validates `burst`.
    pub fn new(burst: impl Into<i128>) -> Result<Self, ModelError> {
        let burst = burst.into();
        u32::try_from(burst)
            .ok()
            .and_then(NonZeroU32::new)
            .map(Self)
            .ok_or_else(|| {
                ModelError::value(format!(
                    "{burst} is not a burst: use 1 to {} (requests a client may send at once)",
                    u32::MAX
                ))
            })
    }

    /// The burst of a rate when none is set: one second's worth of requests, at least one.
    pub fn for_rate(rate: Rate) -> Self {
        // MAX_RATE keeps the cast well inside u32; the max(1) keeps it non-zero.
        let burst = (rate.get().ceil() as u32).max(1);
        Self(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN))
    }

    /// The bucket size.
    pub fn get(self) -> u32 {
        self.0.get()
    }
}

impl fmt::Display for Burst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Burst {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.get())
    }
}

impl<'de> Deserialize<'de> for Burst {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = integer(d, "a whole number of requests (1 or more)")?;
        Burst::new(value).map_err(|e| de::Error::custom(e.message))
    }
}

/// A request rate policy: `burst` requests at once, refilled at `per_second` (governor's GCRA).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RatePolicy {
    /// Sustained requests per second per client key (above 0).
    pub per_second: f64,
    /// Bucket size: requests a client may send at once after being quiet (1 or more).
    pub burst: u32,
}

/// A request body limit in bytes; `0` means unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BodyLimit(u64);

impl BodyLimit {
    /// No limit.
    pub const UNLIMITED: BodyLimit = BodyLimit(0);

    /// `bytes`, or unlimited for 0. Every `u64` is a valid limit.
    pub const fn new(bytes: u64) -> Self {
        Self(bytes)
    }

    /// The limit, `None` when unlimited.
    pub fn bytes(self) -> Option<u64> {
        (self.0 > 0).then_some(self.0)
    }

    /// The raw value (0 = unlimited).
    pub fn get(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    struct Doc {
        port: Option<Port>,
        rate: Option<Rate>,
        burst: Option<Burst>,
        count: Option<Bounded<8, 100>>,
    }

    fn parse(json: &str) -> Result<Doc, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn ports() {
        assert_eq!(Port::new(1).unwrap().get(), 1);
        assert_eq!(Port::new(65535).unwrap().get(), 65535);
        for bad in [0, 65536, -1] {
            let message = Port::new(bad).unwrap_err().message;
            assert!(
                message.starts_with(&format!("{bad} is not a port")),
                "{message}"
            );
        }
        assert_eq!(
            parse(r#"{"port": 8001}"#).unwrap().port.unwrap().get(),
            8001
        );
        assert!(parse(r#"{"port": 70000}"#)
            .unwrap_err()
            .contains("70000 is not a port"));
        assert!(parse(r#"{"port": "80"}"#)
            .unwrap_err()
            .contains("port number"));
    }

    #[test]
    fn rates_and_bursts() {
        assert_eq!(parse(r#"{"rate": 2.5}"#).unwrap().rate.unwrap().get(), 2.5);
        assert_eq!(parse(r#"{"rate": 10}"#).unwrap().rate.unwrap().get(), 10.0);
        assert!(parse(r#"{"rate": 0}"#).unwrap().rate.unwrap().is_off());
        let message = parse(r#"{"rate": -1}"#).unwrap_err();
        assert!(message.contains("-1 is not a rate"), "{message}");
        let message = parse(r#"{"rate": "fast"}"#).unwrap_err();
        assert!(message.contains("requests per second"), "{message}");
        assert!(Rate::new(f64::NAN).is_err());
        assert!(Rate::new(MAX_RATE * 2.0).is_err());
        assert!(parse(r#"{"burst": 0}"#)
            .unwrap_err()
            .contains("not a burst"));
        assert_eq!(parse(r#"{"burst": 20}"#).unwrap().burst.unwrap().get(), 20);
        assert_eq!(Burst::for_rate(Rate::new(2.5).unwrap()).get(), 3);
        assert_eq!(Burst::for_rate(Rate::new(0.1).unwrap()).get(), 1);
    }

    #[test]
    fn bounded() {
        assert_eq!(parse(r#"{"count": 8}"#).unwrap().count.unwrap().get(), 8);
        let message = parse(r#"{"count": 7}"#).unwrap_err();
        assert!(
            message.contains("7 is outside the allowed range 8..=100"),
            "{message}"
        );
        assert!(parse(r#"{"count": 1.5}"#).is_err());
        assert_eq!(Bounded::<1, 10>::saturating(0).get(), 1);
        assert_eq!(
            Bounded::<1, 10>::new(3).unwrap().as_secs(),
            Duration::from_secs(3)
        );
        assert_eq!(BodyLimit::new(0).bytes(), None);
        assert_eq!(BodyLimit::new(10).bytes(), Some(10));
    }
}
