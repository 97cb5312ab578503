//! Input validation at the store boundary: every value is checked (and normalized) here before
//! any SQL runs, so the REST layer can pass user input straight through.

use super::error::{Result, StoreError};

/// Normalizes and checks a route host name: RFC 1123 labels (letters, digits, hyphens; 1 to 63
/// characters; no leading or trailing hyphen), at most 253 characters, optionally one leading
/// `*.` wildcard label followed by at least two labels. Lower-cases it and drops a trailing dot.
pub fn hostname(field: &'static str, input: &str) -> Result<String> {
    let host = input.trim().trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return Err(StoreError::invalid(field, "empty host name"));
    }
    if host.len() > 253 {
        return Err(StoreError::invalid(
            field,
            format!("{input:?} is longer than 253 characters"),
        ));
    }
    let (wildcard, rest) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host.as_str()),
    };
    let labels: Vec<&str> = rest.split('.').collect();
    if wildcard && labels.len() < 2 {
        return Err(StoreError::invalid(
            field,
            format!(
                "{input:?}: a wildcard needs at least two labels after `*.` (e.g. *.example.com)"
            ),
        ));
    }
    for label in labels {
        if let Some(reason) = label_problem(label) {
            return Err(StoreError::invalid(field, format!("{input:?}: {reason}")));
        }
    }
    Ok(host)
}

fn label_problem(label: &str) -> Option<String> {
    if label.is_empty() {
        return Some("empty label (two dots in a row, or a leading dot)".into());
    }
    if label.len() > 63 {
        return Some(format!("label {label:?} is longer than 63 characters"));
    }
    if label == "*" {
        return Some("`*` is only allowed as the whole first label (`*.example.com`)".into());
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Some(format!(
            "label {label:?} contains {c:?} (only letters, digits and hyphens)"
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Some(format!("label {label:?} starts or ends with a hyphen"));
    }
    None
}

/// Checks an entity name (origin, edge, service, API token): 1 to 63 characters of lower-case
/// letters, digits, `-`, `_` and `.`, starting with a letter or digit. Such names are safe in
/// file names, URLs and CLI arguments.
pub fn name(field: &'static str, input: &str) -> Result<String> {
    let name = input.trim();
    if name.is_empty() || name.len() > 63 {
        return Err(StoreError::invalid(field, "must be 1 to 63 characters"));
    }
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !first_ok {
        return Err(StoreError::invalid(
            field,
            format!("{name:?} must start with a lower-case letter or a digit"),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')))
    {
        return Err(StoreError::invalid(
            field,
            format!("{name:?} contains {c:?} (allowed: a-z, 0-9, '-', '_', '.')"),
        ));
    }
    if uuid::Uuid::parse_str(name).is_ok() {
        return Err(StoreError::invalid(
            field,
            "must not look like an id (a UUID), so names and ids never mix up",
        ));
    }
    Ok(name.to_string())
}

/// Checks a TCP port: 1..=65535.
pub fn port(field: &'static str, port: u32) -> Result<u16> {
    match u16::try_from(port) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(StoreError::invalid(
            field,
            format!("{port} is out of range (1 to 65535)"),
        )),
    }
}

/// Checks a `host:port` address (an IP address or an RFC 1123 host name, and a port 1..=65535);
/// IPv6 addresses go in brackets.
pub fn host_port(field: &'static str, input: &str) -> Result<String> {
    let input = input.trim();
    if let Ok(addr) = input.parse::<std::net::SocketAddr>() {
        if addr.port() == 0 {
            return Err(StoreError::invalid(field, format!("{input:?}: port 0")));
        }
        return Ok(addr.to_string());
    }
    let Some((host, port_text)) = input.rsplit_once(':') else {
        return Err(StoreError::invalid(
            field,
            format!("{input:?} is not host:port"),
        ));
    };
    let port_num: u32 = port_text
        .parse()
        .map_err(|_| StoreError::invalid(field, format!("{input:?}: bad port {port_text:?}")))?;
    port(field, port_num)?;
    if host.starts_with("*.") {
        return Err(StoreError::invalid(
            field,
            format!("{input:?}: no wildcard here"),
        ));
    }
    let host = hostname(field, host)?;
    Ok(format!("{host}:{port_num}"))
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

/// Checks an HTTP health-check path: starts with `/`, printable ASCII without spaces, at most
/// 1024 characters.
pub fn health_path(field: &'static str, input: &str) -> Result<String> {
    let path = input.trim();
    if !path.starts_with('/') {
        return Err(StoreError::invalid(
            field,
            format!("{path:?} must start with '/'"),
        ));
    }
    if path.len() > 1024 || !path.chars().all(|c| c.is_ascii_graphic()) {
        return Err(StoreError::invalid(
            field,
            "must be at most 1024 printable ASCII characters without spaces",
        ));
    }
    Ok(path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        assert_eq!(
            hostname("h", "App.Example.COM.").ok().as_deref(),
            Some("app.example.com")
        );
        assert_eq!(
            hostname("h", "*.example.com").ok().as_deref(),
            Some("*.example.com")
        );
        assert!(hostname("h", "localhost").is_ok());
        assert!(hostname("h", "xn--bcher-kva.example").is_ok());
        for bad in [
            "",
            "exa mple.com",
            "-a.example.com",
            "a-.example.com",
            "a..b",
            ".a.b",
            "*.com",
            "a.*.example.com",
            "**.example.com",
            "*example.com",
            "a_b.example.com",
            "http://a.example.com",
            "a.example.com/path",
        ] {
            assert!(hostname("h", bad).is_err(), "{bad:?} accepted");
        }
        assert!(hostname("h", &format!("{}.com", "a".repeat(64))).is_err());
        assert!(hostname("h", &format!("{}.com", "a".repeat(63))).is_ok());
        let long = vec!["abcdefghi"; 26].join(".");
        assert!(long.len() > 253 && hostname("h", &long).is_err());
    }

    #[test]
    fn names_ports_and_addresses() {
        assert!(name("n", "home-1").is_ok());
        assert!(name("n", "Home").is_err());
        assert!(name("n", "-x").is_err());
        assert!(name("n", "a b").is_err());
        assert!(name("n", "550e8400-e29b-41d4-a716-446655440000").is_err());
        assert_eq!(port("p", 1).ok(), Some(1));
        assert_eq!(port("p", 65535).ok(), Some(65535));
        assert!(port("p", 0).is_err());
        assert!(port("p", 65536).is_err());
        assert_eq!(
            host_port("a", "127.0.0.1:8001").ok().as_deref(),
            Some("127.0.0.1:8001")
        );
        assert_eq!(host_port("a", "[::1]:80").ok().as_deref(), Some("[::1]:80"));
        assert_eq!(
            host_port("a", "Edge.example.com:51820").ok().as_deref(),
            Some("edge.example.com:51820")
        );
        assert!(host_port("a", "127.0.0.1").is_err());
        assert!(host_port("a", "127.0.0.1:0").is_err());
        assert!(host_port("a", "host:99999").is_err());
        assert!(health_path("p", "/healthz").is_ok());
        assert!(health_path("p", "healthz").is_err());
        assert!(health_path("p", "/a b").is_err());
    }
}
