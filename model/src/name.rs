//! Names: of nodes and services ([`Name`]), DNS host names ([`HostName`]) and the host
//! patterns routes and certificates are matched by ([`HostPattern`]).
//!
//! Two rules that used to differ between control and the nodes are decided here once:
//!
//! - **No `_` in host names.** A host name is letters, digits and hyphens (RFC 952/1123).
//!   Public CAs may not issue certificates for names with `_` (CA/Browser Forum ballot SC12),
//!   so a route with one could never get a certificate through ACME, and control would be
//!   publishing a name no client could reach over TLS.
//! - **No `.` and no upper case in node and service names.** Names are identifiers: they label
//!   metrics, name bundle directories and files, stand in URLs and CLI arguments next to host
//!   names and are matched by routes. A dot makes `home.lab` read as a host name (`route add
//!   home.lab --origin home.lab`), upper case makes `Home` and `home` two names for one thing.

use std::fmt;

use crate::error::ModelError;
use crate::serde_util::string_serde;

/// Longest node or service name.
pub const MAX_NAME_LEN: usize = 63;
/// Longest host name (RFC 1035, without the trailing dot).
pub const MAX_HOST_LEN: usize = 253;
/// Longest label of a host name.
pub const MAX_LABEL_LEN: usize = 63;

/// The name of a node (origin, edge) or of a service: 1 to 63 characters of `a-z`, `0-9`, `-`
/// and `_`, starting with a letter or a digit, and not shaped like a UUID (so names and ids
/// never mix up in URLs).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    /// Validates `text` (surrounding whitespace is not trimmed: it is an error).
    pub fn new(text: &str) -> Result<Self, ModelError> {
        if text.is_empty() {
            return Err(ModelError::value(
                "empty: use 1-63 characters of a-z, 0-9, `-` and `_`",
            ));
        }
        if text.len() > MAX_NAME_LEN {
            return Err(ModelError::value(format!(
                "`{text}` is longer than {MAX_NAME_LEN} characters"
            )));
        }
        if let Some(c) = text
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_')))
        {
            let hint = if c.is_ascii_uppercase() {
                format!(" (write `{}`)", text.to_ascii_lowercase())
            } else {
                String::new()
            };
            return Err(ModelError::value(format!(
                "`{text}` contains {c:?}: a name is a-z, 0-9, `-` and `_` only{hint}"
            )));
        }
        if !text.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(ModelError::value(format!(
                "`{text}` must start with a letter or a digit"
            )));
        }
        if looks_like_uuid(text) {
            return Err(ModelError::value(format!(
                "`{text}` looks like an id (a UUID); pick a name, so names and ids never mix up"
            )));
        }
        Ok(Self(text.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn looks_like_uuid(text: &str) -> bool {
    text.len() == 36
        && text.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Name {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        Self::new(s)
    }
}

string_serde!(Name, Name::new);

/// Checks one label of a host name; `None` when it is fine.
fn label_problem(label: &str) -> Option<String> {
    if label.is_empty() {
        return Some("has an empty label (two dots in a row, or a leading dot)".into());
    }
    if label.len() > MAX_LABEL_LEN {
        return Some(format!(
            "has a label longer than {MAX_LABEL_LEN} characters"
        ));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        let why = match c {
            '_' => "`_` is not allowed in host names (no CA issues certificates for them)",
            '*' => "`*` is only allowed as the whole leftmost label (`*.example.com`)",
            _ => "only letters, digits and `-` are allowed",
        };
        return Some(format!("contains {c:?}: {why}"));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Some(format!("has label `{label}` starting or ending with `-`"));
    }
    None
}

/// Normalizes a host name: lowercase, no trailing dot.
fn normalize(text: &str) -> String {
    text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase()
}

/// An exact DNS host name: labels of letters, digits and `-` (1-63 characters, no `-` at either
/// end), 253 characters at most. Stored lowercase without a trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostName(String);

impl HostName {
    /// Validates and normalizes `text`.
    pub fn new(text: &str) -> Result<Self, ModelError> {
        let host = normalize(text);
        check_host(text, &host)?;
        Ok(Self(host))
    }

    /// The name, lowercase.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_host(input: &str, host: &str) -> Result<(), ModelError> {
    if host.is_empty() {
        return Err(ModelError::value(
            "empty: write a host name such as app.example.com",
        ));
    }
    if host.len() > MAX_HOST_LEN {
        return Err(ModelError::value(format!(
            "`{input}` is longer than {MAX_HOST_LEN} characters"
        )));
    }
    for label in host.split('.') {
        if let Some(problem) = label_problem(label) {
            return Err(ModelError::value(format!(
                "`{input}` is not a valid host name: it {problem}"
            )));
        }
    }
    Ok(())
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for HostName {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        Self::new(s)
    }
}

string_serde!(HostName, HostName::new);

/// A host name a route or a certificate answers for: an exact [`HostName`], or a wildcard
/// `*.example.com` that matches exactly one more label (`a.example.com`, not
/// `a.b.example.com`, not `example.com`). The domain under a wildcard has at least two labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPattern(String);

impl HostPattern {
    /// Validates and normalizes `text`.
    pub fn new(text: &str) -> Result<Self, ModelError> {
        let host = normalize(text);
        if let Some(domain) = host.strip_prefix("*.") {
            if domain.contains('*') || !domain.contains('.') {
                return Err(ModelError::value(format!(
                    "`{text}` is not a valid wildcard: write `*.example.com` (the `*` only as the whole leftmost label, over a domain of two labels or more)"
                )));
            }
            check_host(text, domain).map_err(|_| {
                ModelError::value(format!(
                    "`{text}` is not a valid wildcard: the domain after `*.` must be a valid host name"
                ))
            })?;
        } else if host.contains('*') {
            return Err(ModelError::value(format!(
                "`{text}`: a wildcard is only allowed as the whole leftmost label (`*.example.com`)"
            )));
        } else {
            check_host(text, &host)?;
        }
        Ok(Self(host))
    }

    /// The pattern, lowercase (`app.example.com` or `*.example.com`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether it is a `*.` wildcard.
    pub fn is_wildcard(&self) -> bool {
        self.0.starts_with("*.")
    }

    /// The domain under a wildcard (`example.com` for `*.example.com`).
    pub fn wildcard_domain(&self) -> Option<&str> {
        self.0.strip_prefix("*.")
    }

    /// Whether this pattern (a certificate's name) covers `host` (a route's name, exact or
    /// wildcard): equal names, or a wildcard over the host's parent domain. A wildcard route
    /// is covered only by the same wildcard.
    pub fn covers(&self, host: &HostPattern) -> bool {
        if self == host {
            return true;
        }
        match (self.wildcard_domain(), host.is_wildcard()) {
            (Some(domain), false) => host
                .0
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == domain),
            _ => false,
        }
    }
}

impl From<HostName> for HostPattern {
    fn from(host: HostName) -> Self {
        Self(host.0)
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for HostPattern {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        Self::new(s)
    }
}

string_serde!(HostPattern, HostPattern::new);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["home", "home-1", "a_b", "0lab", "x"] {
            assert_eq!(Name::new(good).unwrap().as_str(), good);
        }
        for (bad, says) in [
            ("", "empty"),
            ("home.lab", "contains '.'"),
            ("Home", "write `home`"),
            ("-x", "start with a letter"),
            ("_x", "start with a letter"),
            ("a b", "contains ' '"),
            ("550e8400-e29b-41d4-a716-446655440000", "UUID"),
        ] {
            let message = Name::new(bad).unwrap_err().message;
            assert!(message.contains(says), "{bad}: {message}");
        }
        assert!(Name::new(&"a".repeat(63)).is_ok());
        assert!(Name::new(&"a".repeat(64)).is_err());
    }

    #[test]
    fn host_names() {
        assert_eq!(
            HostName::new("App.Example.COM.").unwrap().as_str(),
            "app.example.com"
        );
        assert!(HostName::new("localhost").is_ok());
        assert!(HostName::new("xn--bcher-kva.example").is_ok());
        for (bad, says) in [
            ("", "empty"),
            ("a_b.example.com", "`_` is not allowed"),
            ("exa mple.com", "only letters"),
            ("-a.example.com", "starting or ending"),
            ("a-.example.com", "starting or ending"),
            ("a..b", "empty label"),
            (".a.b", "empty label"),
            ("*.example.com", "whole leftmost label"),
            ("http://a.example.com", "only letters"),
        ] {
            let message = HostName::new(bad).unwrap_err().message;
            assert!(message.contains(says), "{bad}: {message}");
        }
        assert!(HostName::new(&format!("{}.com", "a".repeat(64))).is_err());
        assert!(HostName::new(&format!("{}.com", "a".repeat(63))).is_ok());
        let long = vec!["abcdefghi"; 26].join(".");
        assert!(long.len() > 253 && HostName::new(&long).is_err());
    }

    #[test]
    fn host_patterns() {
        let wildcard = HostPattern::new("*.Example.com").unwrap();
        assert_eq!(wildcard.as_str(), "*.example.com");
        assert_eq!(wildcard.wildcard_domain(), Some("example.com"));
        for (bad, says) in [
            ("a.*.example.com", "leftmost"),
            ("*example.com", "leftmost"),
            ("*.com", "not a valid wildcard"),
            ("**.example.com", "leftmost"),
            ("*.*.example.com", "not a valid wildcard"),
            ("*.a_b.example", "not a valid wildcard"),
            ("bad host", "not a valid host name"),
        ] {
            let message = HostPattern::new(bad).unwrap_err().message;
            assert!(message.contains(says), "{bad}: {message}");
        }
    }

    #[test]
    fn certificate_name_matching() {
        let p = |s: &str| HostPattern::new(s).unwrap();
        assert!(p("app.example.com").covers(&p("APP.example.com")));
        assert!(p("*.example.com").covers(&p("a.example.com")));
        assert!(!p("*.example.com").covers(&p("a.b.example.com")));
        assert!(!p("*.example.com").covers(&p("example.com")));
        assert!(p("*.example.com").covers(&p("*.example.com")));
        assert!(!p("a.example.com").covers(&p("*.example.com")));
        assert!(!p("*.example.com").covers(&p("*.x.example.com")));
    }

    #[test]
    fn serde_validates_like_the_constructor() {
        #[derive(Debug, serde::Deserialize, serde::Serialize)]
        struct Doc {
            name: Name,
            host: HostPattern,
        }
        let doc: Doc = serde_json::from_str(r#"{"name":"web","host":"*.A.example"}"#).unwrap();
        assert_eq!(doc.host.as_str(), "*.a.example");
        assert_eq!(
            serde_json::to_string(&doc).unwrap(),
            r#"{"name":"web","host":"*.a.example"}"#
        );
        let error = serde_json::from_str::<Doc>(r#"{"name":"home.lab","host":"a"}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("contains '.'"), "{error}");
    }
}
