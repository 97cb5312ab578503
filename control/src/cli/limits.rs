//! Flags for limits and tunnel settings: a route's own limits (`route add` / `route set`) and an
//! edge's `[limits]` defaults and `[tunnel]` settings (`edge add` / `edge set`).
//!
//! The CLI checks nothing itself: values go into the JSON body as given (a number when they read
//! as one) and the API validates them with the shared model, so `--rate fast` is refused with
//! the same message and field (`limits.rate`) as the same mistake in a request or a file.

use clap::Args;
use hyper::Method;
use serde_json::{Map, Value};

use super::client::segment;
use super::{edge_table, Api};
use crate::api::EdgeView;

/// A flag value as JSON: a number when it reads as one, else the text.
pub(super) fn scalar(text: &str) -> Value {
    match serde_json::from_str::<Value>(text.trim()) {
        Ok(number @ Value::Number(_)) => number,
        _ => Value::String(text.to_owned()),
    }
}

/// A route's own limits. Absent flags leave a limit as it is (`route set`) or unset, taking the
/// edge's `[limits]` default (`route add`).
#[derive(Debug, Default, Args)]
pub struct RouteLimitArgs {
    /// Requests per second per client (0: no rate limit on this route).
    #[arg(long)]
    pub rate: Option<String>,
    /// Requests a client may send at once (needs a rate).
    #[arg(long)]
    pub burst: Option<String>,
    /// Largest request body in bytes (0: unlimited on this route).
    #[arg(long)]
    pub max_body_bytes: Option<String>,
    /// Only clients in this network may use the route (CIDR or address; repeatable; replaces
    /// the list).
    #[arg(long = "allow")]
    pub allow: Vec<String>,
    /// Clients in this network are refused with 403 (CIDR or address; repeatable; replaces the
    /// list; deny wins over allow).
    #[arg(long = "deny")]
    pub deny: Vec<String>,
}

impl RouteLimitArgs {
    /// Whether any limit flag was given.
    pub fn is_empty(&self) -> bool {
        self.rate.is_none()
            && self.burst.is_none()
            && self.max_body_bytes.is_none()
            && self.allow.is_empty()
            && self.deny.is_empty()
    }

    /// Writes the given flags over `limits` (a route's `limits` object).
    pub fn apply(self, limits: &mut Map<String, Value>) {
        for (key, value) in [
            ("rate", self.rate),
            ("burst", self.burst),
            ("max_body_bytes", self.max_body_bytes),
        ] {
            if let Some(value) = value {
                limits.insert(key.into(), scalar(&value));
            }
        }
        if !self.allow.is_empty() {
            limits.insert("allow".into(), self.allow.into());
        }
        if !self.deny.is_empty() {
            limits.insert("deny".into(), self.deny.into());
        }
    }
}

/// An edge's `[limits]` defaults and `[tunnel]` settings, as set through control.
#[derive(Debug, Default, Args)]
pub struct EdgeSettingsArgs {
    /// One `[limits]` default, as in the edge's file: `rate=10`, `max_connections=4096`,
    /// `max_body_bytes=1048576`... (repeatable). Setting any makes control manage the edge's
    /// limits: keys not given take the model's defaults.
    #[arg(long = "limit", value_name = "KEY=VALUE", value_parser = key_value)]
    pub limits: Vec<(String, String)>,
    /// Tunnel MTU (inner packet size in bytes).
    #[arg(long)]
    pub mtu: Option<String>,
    /// Per-direction TCP buffer of each tunnel stream, in bytes.
    #[arg(long)]
    pub tcp_buffer: Option<String>,
}

fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("{text:?}: expected KEY=VALUE, such as rate=10")),
    }
}

impl EdgeSettingsArgs {
    /// Writes the given `--limit` flags over `limits` (an edge's `limits` object); `None` when
    /// none was given.
    pub fn apply_limits(&self, limits: Option<Map<String, Value>>) -> Option<Map<String, Value>> {
        if self.limits.is_empty() {
            return None;
        }
        let mut limits = limits.unwrap_or_default();
        for (key, value) in &self.limits {
            limits.insert(key.clone(), scalar(value));
        }
        Some(limits)
    }

    /// Writes `--mtu` and `--tcp-buffer` over `tunnel` (an edge's `tunnel` object); `None` when
    /// neither was given.
    pub fn apply_tunnel(&self, tunnel: Option<Map<String, Value>>) -> Option<Map<String, Value>> {
        if self.mtu.is_none() && self.tcp_buffer.is_none() {
            return None;
        }
        let mut tunnel = tunnel.unwrap_or_default();
        if let Some(mtu) = &self.mtu {
            tunnel.insert("mtu".into(), scalar(mtu));
        }
        if let Some(buffer) = &self.tcp_buffer {
            tunnel.insert("tcp_buffer".into(), scalar(buffer));
        }
        Some(tunnel)
    }
}

/// A JSON object field of `value` as a map (`None` when absent or `null`).
fn object(value: &Value) -> Option<Map<String, Value>> {
    value.as_object().cloned()
}

impl Api {
    /// `edge set`: merges the given flags over the edge's current settings (the API replaces
    /// `limits` and `tunnel` as a whole) and sends them.
    pub(super) async fn edge_set(
        &self,
        name: &str,
        settings: &EdgeSettingsArgs,
        clear_limits: bool,
        clear_tunnel: bool,
    ) -> anyhow::Result<()> {
        let path = format!("/edge-nodes/{}", segment(name));
        let current: Value = self.client.get(&path).await?;
        let mut body = Map::new();
        if clear_limits {
            body.insert("limits".into(), Value::Null);
        } else if let Some(limits) = settings.apply_limits(object(&current["limits"])) {
            body.insert("limits".into(), Value::Object(limits));
        }
        if clear_tunnel {
            body.insert("tunnel".into(), Value::Null);
        } else if let Some(tunnel) = settings.apply_tunnel(object(&current["tunnel"])) {
            body.insert("tunnel".into(), Value::Object(tunnel));
        }
        if body.is_empty() {
            anyhow::bail!("nothing to change: give --limit KEY=VALUE, --mtu, --tcp-buffer, --clear-limits or --clear-tunnel");
        }
        let edge: EdgeView = self.client.json(Method::PATCH, &path, &body).await?;
        self.print(&edge, |e| edge_table(std::slice::from_ref(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flags_become_json_without_judging_them() {
        assert_eq!(scalar("10"), json!(10));
        assert_eq!(scalar("2.5"), json!(2.5));
        assert_eq!(scalar("-1"), json!(-1));
        assert_eq!(scalar("fast"), json!("fast"));
        let mut limits = Map::new();
        limits.insert("burst".into(), json!(5));
        RouteLimitArgs {
            rate: Some("fast".into()),
            allow: vec!["10.0.0.0/8".into()],
            ..RouteLimitArgs::default()
        }
        .apply(&mut limits);
        assert_eq!(
            Value::Object(limits),
            json!({"rate": "fast", "burst": 5, "allow": ["10.0.0.0/8"]})
        );
        assert_eq!(key_value("rate=10"), Ok(("rate".into(), "10".into())));
        assert!(key_value("rate").is_err());
        let edge = EdgeSettingsArgs {
            limits: vec![("max_connections".into(), "100".into())],
            mtu: Some("1280".into()),
            tcp_buffer: None,
        };
        assert_eq!(
            edge.apply_limits(None).map(Value::Object),
            Some(json!({"max_connections": 100}))
        );
        assert_eq!(
            edge.apply_tunnel(None).map(Value::Object),
            Some(json!({"mtu": 1280}))
        );
    }
}
