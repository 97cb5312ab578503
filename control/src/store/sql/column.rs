//! Conversions between column values and Rust types: timestamps are stored as milliseconds since
//! the Unix epoch, ids as UUID text, keys as base64, JSON as text. A value that does not convert
//! back is [`StoreError::Corrupt`](super::StoreError), naming its table.

use std::time::Duration;

use kokoa_model::key::PublicKey;
use serde::de::DeserializeOwned;
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Result, StoreError};

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> i64 {
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX)
}

pub(super) fn ts(what: &'static str, ms: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|e| StoreError::corrupt(what, e))
}

pub(super) fn opt_ts(what: &'static str, ms: Option<i64>) -> Result<Option<OffsetDateTime>> {
    ms.map(|ms| ts(what, ms)).transpose()
}

pub(super) fn ms_of(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

pub(super) fn add_ms(now: i64, ttl: Duration) -> i64 {
    now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
}

pub(super) fn uuid(what: &'static str, s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| StoreError::corrupt(what, e))
}

pub(super) fn opt_uuid(what: &'static str, s: Option<String>) -> Result<Option<Uuid>> {
    s.map(|s| uuid(what, &s)).transpose()
}

pub(super) fn u64_of(what: &'static str, v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|e| StoreError::corrupt(what, e))
}

pub(super) fn json_of(what: &'static str, s: &str) -> Result<Value> {
    serde_json::from_str(s).map_err(|e| StoreError::corrupt(what, e))
}

pub(super) fn public_key(what: &'static str, s: &str) -> Result<PublicKey> {
    PublicKey::from_base64(s).map_err(|e| StoreError::corrupt(what, e))
}

/// A JSON column holding a typed value, read back through its `Deserialize` (for model types,
/// the model's validation).
pub(super) fn typed<T: DeserializeOwned>(what: &'static str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| StoreError::corrupt(what, e))
}

/// A nullable JSON column holding a typed value.
pub(super) fn opt_typed<T: DeserializeOwned>(
    what: &'static str,
    text: Option<String>,
) -> Result<Option<T>> {
    text.map(|text| typed(what, &text)).transpose()
}

/// The JSON text of a value to store (`NULL` for `None`).
pub(super) fn json_text<T: serde::Serialize>(value: Option<&T>) -> Option<String> {
    value.map(|value| serde_json::to_string(value).unwrap_or_default())
}
