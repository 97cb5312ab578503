//! What a notification looks like on the wire: the webhook JSON body and its signature, and the
//! Slack-compatible `{"text": ...}` body.
//!
//! Webhook requests carry:
//! - `Content-Type: application/json`;
//! - `Kokoa-Event: ENTITY.ACTION` and `Kokoa-Delivery: <delivery id>` (the same id on every
//!   retry, so a receiver can drop duplicates);
//! - `Kokoa-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`, the MAC keyed with the target's
//!   secret over `"<t>.<body>"`. The timestamp is taken at each attempt: receivers should refuse
//!   one more than a few minutes old (replays) and compare the MAC in constant time.

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::store::{Delivery, Event};

/// The signature header of webhook requests.
pub const SIGNATURE_HEADER: &str = "kokoa-signature";
/// The header naming the event kind.
pub const EVENT_HEADER: &str = "kokoa-event";
/// The header carrying the delivery id.
pub const DELIVERY_HEADER: &str = "kokoa-delivery";

/// The `Kokoa-Signature` value for `body` sent at `timestamp` (Unix seconds).
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", hex(&mac(secret, timestamp, body)))
}

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// Checks a `Kokoa-Signature` header (constant-time MAC comparison) and that its timestamp is
/// within `tolerance_seconds` of `now`. For receivers written in Rust, and tests.
pub fn verify(secret: &str, header: &str, body: &[u8], now: i64, tolerance_seconds: i64) -> bool {
    let mut timestamp = None;
    let mut given = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v)) => given.push(v.to_string()),
            _ => {}
        }
    }
    let Some(timestamp) = timestamp else {
        return false;
    };
    if (now - timestamp).abs() > tolerance_seconds {
        return false;
    }
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    given
        .iter()
        .any(|v| unhex(v).is_some_and(|bytes| mac.clone().verify_slice(&bytes).is_ok()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// One line saying what happened, for chat and for the webhook body's `text`:
/// `edge e1: config_rejected (version 3: bad route) by node:e1`.
pub fn summary(event: &Event) -> String {
    let subject = event
        .detail
        .get("name")
        .and_then(Value::as_str)
        .map_or_else(|| event.entity_id.clone(), str::to_string);
    let mut details: Vec<String> = Vec::new();
    if let Value::Object(map) = &event.detail {
        for (key, value) in map {
            if key == "name" {
                continue;
            }
            let value = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let value: String = value.chars().take(200).collect();
            details.push(format!("{key}: {value}"));
        }
    }
    let mut line = format!(
        "{} {subject}: {} by {}",
        event.entity, event.action, event.actor
    );
    if !details.is_empty() {
        line.push_str(&format!(" ({})", details.join(", ")));
    }
    line
}

/// The webhook body: the delivery id, the event kind, a one-line summary and the audit event
/// itself (as `GET /api/v1/events` shows it).
pub fn webhook_body(delivery: &Delivery, event: &Event) -> Vec<u8> {
    json!({
        "delivery_id": delivery.id,
        "kind": delivery.kind,
        "text": summary(event),
        "event": event,
    })
    .to_string()
    .into_bytes()
}

/// The Slack-compatible incoming-webhook body: `{"text": ...}` in Slack's mrkdwn (also what
/// Mattermost and Rocket.Chat accept).
pub fn slack_body(event: &Event) -> Vec<u8> {
    let escaped = summary(event)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    json!({
        "text": format!(
            "*kokoa* `{}.{}` {escaped}",
            event.entity, event.action
        ),
    })
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_with_the_right_secret_body_and_time() {
        let body = br#"{"kind":"edge.created"}"#;
        let header = signature("s3cret-s3cret-s3cret", 1_700_000_000, body);
        assert!(header.starts_with("t=1700000000,v1="));
        assert_eq!(header.len(), "t=1700000000,v1=".len() + 64);
        assert!(verify(
            "s3cret-s3cret-s3cret",
            &header,
            body,
            1_700_000_100,
            300
        ));
        assert!(!verify(
            "other-secret-other",
            &header,
            body,
            1_700_000_100,
            300
        ));
        assert!(!verify(
            "s3cret-s3cret-s3cret",
            &header,
            b"{}",
            1_700_000_100,
            300
        ));
        assert!(!verify(
            "s3cret-s3cret-s3cret",
            &header,
            body,
            1_700_001_000,
            300
        ));
        assert!(!verify(
            "s3cret-s3cret-s3cret",
            "v1=00",
            body,
            1_700_000_000,
            300
        ));
    }
}
