//! Checks of the values a notification target is made of (its URL, signing secret and event
//! patterns). These are control's own records: no node ever sees them, so they are not part of
//! the shared model (`kokoa-model`), which holds every value a node applies. Names go through
//! the model's `Name` like every other name.

use super::error::{Result, StoreError};

/// Checks a target's name with the model's rule for names.
pub fn name(field: &'static str, input: &str) -> Result<String> {
    kokoa_model::Name::new(input.trim())
        .map(|name| name.to_string())
        .map_err(|e| StoreError::model(field, e))
}

/// Checks a notification target URL: absolute `http` or `https` with a host, at most 2048
/// characters, no user info. Returns the URL and its shown form (scheme, host and port only,
/// since the path of a Slack incoming-webhook URL is its credential).
pub fn notification_url(field: &'static str, input: &str) -> Result<(String, String)> {
    let url = input.trim();
    if url.is_empty() || url.len() > 2048 {
        return Err(StoreError::invalid(field, "must be 1 to 2048 characters"));
    }
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| StoreError::invalid(field, format!("not a URL: {e}")))?;
    let scheme = match uri.scheme_str() {
        Some(s @ ("http" | "https")) => s,
        _ => {
            return Err(StoreError::invalid(
                field,
                "must start with http:// or https://",
            ))
        }
    };
    let Some(authority) = uri.authority() else {
        return Err(StoreError::invalid(field, "has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(StoreError::invalid(
            field,
            "must not carry user:password@ (webhooks are authenticated by their signature)",
        ));
    }
    if authority.host().is_empty() {
        return Err(StoreError::invalid(field, "has no host"));
    }
    Ok((url.to_string(), format!("{scheme}://{authority}")))
}

/// Checks a webhook signing secret: 16 to 256 printable ASCII characters without spaces.
pub fn signing_secret(field: &'static str, input: &str) -> Result<String> {
    let secret = input.trim();
    if secret.len() < 16 || secret.len() > 256 {
        return Err(StoreError::invalid(field, "must be 16 to 256 characters"));
    }
    if !secret.chars().all(|c| c.is_ascii_graphic()) {
        return Err(StoreError::invalid(
            field,
            "must be printable ASCII without spaces",
        ));
    }
    Ok(secret.to_string())
}

/// Checks notification event patterns: each `*`, `ENTITY.ACTION`, `ENTITY.*` or `*.ACTION`
/// (lower-case letters, digits and `_`); at most 64 of them; duplicates removed.
pub fn event_patterns(field: &'static str, input: &[String]) -> Result<Vec<String>> {
    if input.len() > 64 {
        return Err(StoreError::invalid(field, "at most 64 patterns"));
    }
    let part_ok = |p: &str| {
        p == "*"
            || (!p.is_empty()
                && p.len() <= 64
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
    };
    let mut out: Vec<String> = Vec::new();
    for pattern in input {
        let pattern = pattern.trim();
        let ok = pattern == "*"
            || pattern
                .split_once('.')
                .is_some_and(|(entity, action)| part_ok(entity) && part_ok(action));
        if !ok {
            return Err(StoreError::invalid(
                field,
                format!(
                    "{pattern:?} is not an event pattern (ENTITY.ACTION, ENTITY.*, *.ACTION or *, \
                     e.g. edge.status_changed)"
                ),
            ));
        }
        if !out.iter().any(|p| p == pattern) {
            out.push(pattern.to_string());
        }
    }
    Ok(out)
}
