//! The one error type of the model: which field is wrong (a path such as
//! `routes[2].limits.allow[0]`), what is wrong with it and what to do, and, when known, which
//! config object it belongs to (so a node's NACK and control's API can name the route, peer,
//! service or certificate rather than a position in a list).

use std::fmt;

/// The kind of config object an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// An HTTP route (key: its host).
    Route,
    /// A raw TCP route (key: its listen port).
    TcpRoute,
    /// An origin in an edge's config (key: the origin's name).
    Origin,
    /// An edge in an origin's config (key: the edge's name).
    Edge,
    /// A service of an origin (key: its name).
    Service,
    /// A certificate (key: control's id, or its position when it has none).
    Certificate,
    /// The edge's `[limits]` defaults.
    Limits,
    /// The tunnel settings (MTU, TCP buffer, overlay range).
    Tunnel,
    /// The node itself (its address, its private key).
    Node,
}

impl ObjectKind {
    /// A lowercase name for messages and logs (`route`, `tcp_route`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Route => "route",
            ObjectKind::TcpRoute => "tcp_route",
            ObjectKind::Origin => "origin",
            ObjectKind::Edge => "edge",
            ObjectKind::Service => "service",
            ObjectKind::Certificate => "certificate",
            ObjectKind::Limits => "limits",
            ObjectKind::Tunnel => "tunnel",
            ObjectKind::Node => "node",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The config object an error names: its kind and its key (host, name, port or id).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    /// What kind of object.
    pub kind: ObjectKind,
    /// Which one: a route's host, a peer's or service's name, a TCP route's listen port, a
    /// certificate's id; empty for singletons (limits, tunnel, node).
    pub key: String,
}

impl ObjectRef {
    /// The object `kind` named `key`.
    pub fn new(kind: ObjectKind, key: impl Into<String>) -> Self {
        Self {
            kind,
            key: key.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.kind)
        } else {
            write!(f, "{} `{}`", self.kind, self.key)
        }
    }
}

/// A config value or a combination of values the model refuses.
///
/// `Display` is `field: message` (or just the message when the field is unknown), the form
/// every error of a config file, an API request and a NACK takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelError {
    /// The path of the offending field, such as `routes[2].limits.allow[0]`; empty when the
    /// error is about a value on its own (the caller adds where it was).
    pub field: String,
    /// What is wrong and what to do about it.
    pub message: String,
    /// The config object the field belongs to, when the caller knows it.
    pub object: Option<ObjectRef>,
}

impl ModelError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
            object: None,
        }
    }

    /// An error about a value, before anyone knows where it was written.
    pub fn value(message: impl Into<String>) -> Self {
        Self::new(String::new(), message)
    }

    /// The same error one level down: `prefix` is prepended to the field path
    /// (`routes[2]` + `limits.rate` -> `routes[2].limits.rate`).
    #[must_use]
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = join(prefix, &self.field);
        self
    }

    /// The same error, naming `object` unless a more specific object was named already.
    #[must_use]
    pub fn about(mut self, object: ObjectRef) -> Self {
        if self.object.is_none() {
            self.object = Some(object);
        }
        self
    }
}

/// Joins two field paths: `routes[2]` + `host` = `routes[2].host`, `allow` + `[0]` =
/// `allow[0]`.
pub fn join(prefix: &str, rest: &str) -> String {
    match (prefix.is_empty(), rest.is_empty()) {
        (true, _) => rest.to_owned(),
        (false, true) => prefix.to_owned(),
        (false, false) if rest.starts_with('[') => format!("{prefix}{rest}"),
        (false, false) => format!("{prefix}.{rest}"),
    }
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ModelError {}

/// Adds a field to a value's error: `.at("port")`.
pub(crate) trait At<T> {
    /// Prepends `field` to the error's path.
    fn at(self, field: &str) -> Result<T, ModelError>;
}

impl<T> At<T> for Result<T, ModelError> {
    fn at(self, field: &str) -> Result<T, ModelError> {
        self.map_err(|error| error.within(field))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_like_the_config_writes_them() {
        assert_eq!(join("routes[2]", "limits.rate"), "routes[2].limits.rate");
        assert_eq!(join("allow", "[0]"), "allow[0]");
        assert_eq!(join("", "host"), "host");
        assert_eq!(join("routes[0]", ""), "routes[0]");
        let error = ModelError::value("bad")
            .within("[0]")
            .within("allow")
            .within("limits")
            .within("routes[2]");
        assert_eq!(error.to_string(), "routes[2].limits.allow[0]: bad");
        assert_eq!(ModelError::value("bad").to_string(), "bad");
    }

    #[test]
    fn the_innermost_object_wins() {
        let error = ModelError::new("port", "bad")
            .about(ObjectRef::new(ObjectKind::Service, "web"))
            .about(ObjectRef::new(ObjectKind::Node, ""));
        assert_eq!(
            error.object,
            Some(ObjectRef::new(ObjectKind::Service, "web"))
        );
        assert_eq!(
            error.object.map(|o| o.to_string()).as_deref(),
            Some("service `web`")
        );
    }
}
