//! Forms as API requests. A dashboard form names the API request in hidden fields and its
//! inputs by the JSON path they fill:
//!
//! - `_method` (`POST`, `PATCH`, `PUT`, `DELETE`), `_path` (below `/api/v1`), `_csrf`, `_form`
//!   (which form, to show an error next to it), `_return` (the page to go back to), `_done`
//!   (the note shown after success);
//! - every other field is `PATH` or `PATH:KIND`, where PATH is dotted (`limits.rate`) and KIND
//!   says how the text becomes JSON: none (a string; empty: left out), `int` / `num` (a number;
//!   text that is not one is sent as a string so the API's own validation names the field),
//!   `lines` (one array item per line or comma; `optlines`: the same, but left out when empty),
//!   `list` (repeated fields as an array), `bool`
//!   (a checkbox: present is true), `null` (empty is `null`, to clear a value).
//!
//! So the body is exactly what a CLI or `curl` user would send, and the API validates it.

use std::collections::BTreeMap;

use axum::http::Method;
use serde_json::{Map, Number, Value};

/// A submitted form.
#[derive(Clone, Debug)]
pub struct Submitted {
    /// API method.
    pub method: Method,
    /// API path below `/api/v1`.
    pub path: String,
    /// CSRF token as submitted.
    pub csrf: String,
    /// Which form (for placing an error).
    pub form: String,
    /// Dashboard page to return to.
    pub return_to: String,
    /// Note for success.
    pub done: Option<String>,
    /// The input fields, in order.
    pub fields: Vec<(String, String)>,
}

/// What a page needs to show a failed form again.
#[derive(Clone, Debug, Default)]
pub struct FormState {
    /// Which form failed.
    pub form: String,
    /// The API's message.
    pub error: String,
    /// The field the API named (JSON path).
    pub field: Option<String>,
    /// The values as typed, by field name without the `:KIND` suffix.
    pub values: BTreeMap<String, String>,
}

impl FormState {
    /// Form `form` refused by the API with `error` (the message next to the field it names),
    /// with no typed values to show again.
    pub fn refused(form: &str, error: &crate::api::ApiError) -> FormState {
        FormState {
            form: form.to_string(),
            error: error.message.clone(),
            field: error.field.clone(),
            values: BTreeMap::new(),
        }
    }

    /// The typed value of `name` in `form`, if that form failed.
    pub fn value(&self, form: &str, name: &str) -> Option<&str> {
        (self.form == form)
            .then(|| self.values.get(name).map(String::as_str))
            .flatten()
    }

    /// The error to show next to input `name` of `form`: when the API named this field, or a
    /// path inside it (`aliases[1]` for `aliases`, `limits.rate` for `limits`).
    pub fn error_for(&self, form: &str, name: &str) -> Option<&str> {
        if self.form != form {
            return None;
        }
        let field = self.field.as_deref()?;
        let inside = field == name
            || field
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['));
        inside.then_some(self.error.as_str())
    }
}

impl Submitted {
    /// Reads the hidden fields; refuses a path that is not an API path.
    pub fn parse(fields: Vec<(String, String)>) -> Result<Submitted, String> {
        let mut method = None;
        let mut path = None;
        let mut csrf = String::new();
        let mut form = String::new();
        let mut return_to = None;
        let mut done = None;
        let mut inputs = Vec::new();
        for (name, value) in fields {
            match name.as_str() {
                "_method" => method = Some(value),
                "_path" => path = Some(value),
                "_csrf" => csrf = value,
                "_form" => form = value,
                "_return" => return_to = Some(value),
                "_done" => done = Some(value).filter(|d| !d.is_empty()),
                _ if name.starts_with('_') => {}
                _ => inputs.push((name, value)),
            }
        }
        let method = match method.as_deref().unwrap_or("POST") {
            "POST" => Method::POST,
            "PATCH" => Method::PATCH,
            "PUT" => Method::PUT,
            "DELETE" => Method::DELETE,
            other => return Err(format!("unsupported form method {other:?}")),
        };
        let path = path.ok_or("the form names no API path")?;
        if !path.starts_with('/') || path.contains("..") || path.contains("//") {
            return Err(format!("not an API path: {path:?}"));
        }
        let return_to = return_to
            .filter(|r| r.starts_with('/') && !r.starts_with("//"))
            .unwrap_or_else(|| "/".into());
        Ok(Submitted {
            method,
            path,
            csrf,
            form,
            return_to,
            done,
            fields: inputs,
        })
    }

    /// The JSON body the inputs make (`None` without inputs, e.g. a delete button).
    pub fn body(&self) -> Option<Value> {
        if self.fields.is_empty() {
            return None;
        }
        let mut root = Map::new();
        for (name, text) in &self.fields {
            let (path, kind) = name.split_once(':').unwrap_or((name.as_str(), ""));
            let value = match kind {
                "int" | "num" => {
                    let text = text.trim();
                    if text.is_empty() {
                        continue;
                    }
                    match (kind, text.parse::<i64>(), text.parse::<f64>()) {
                        (_, Ok(n), _) => Value::Number(n.into()),
                        ("num", _, Ok(f)) => Number::from_f64(f)
                            .map(Value::Number)
                            .unwrap_or_else(|| Value::String(text.into())),
                        _ => Value::String(text.into()),
                    }
                }
                "optlines" if text.trim().is_empty() => continue,
                "lines" | "optlines" => Value::Array(
                    text.split(['\n', ','])
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| Value::String(s.into()))
                        .collect(),
                ),
                "list" => {
                    if text.is_empty() {
                        continue;
                    }
                    let slot = slot(&mut root, path);
                    match slot {
                        Value::Array(items) => items.push(Value::String(text.clone())),
                        other => *other = Value::Array(vec![Value::String(text.clone())]),
                    }
                    continue;
                }
                "bool" => Value::Bool(!text.is_empty() && text != "false"),
                "null" => {
                    if text.trim().is_empty() {
                        Value::Null
                    } else {
                        Value::String(text.trim().into())
                    }
                }
                _ => {
                    if text.trim().is_empty() {
                        continue;
                    }
                    Value::String(text.clone())
                }
            };
            *slot(&mut root, path) = value;
        }
        Some(Value::Object(root))
    }

    /// The state to show the form again with `error`.
    pub fn failed(&self, error: &crate::api::ApiError) -> FormState {
        FormState {
            values: self
                .fields
                .iter()
                .map(|(name, value)| {
                    let name = name.split_once(':').map_or(name.as_str(), |(n, _)| n);
                    (name.to_string(), value.clone())
                })
                .collect(),
            ..FormState::refused(&self.form, error)
        }
    }
}

/// The slot at dotted `path` in `root`, creating objects on the way.
fn slot<'a>(root: &'a mut Map<String, Value>, path: &str) -> &'a mut Value {
    let mut parts = path.split('.');
    let first = parts.next().unwrap_or_default();
    let mut current = root.entry(first.to_string()).or_insert(Value::Null);
    for part in parts {
        if !current.is_object() {
            *current = Value::Object(Map::new());
        }
        let Value::Object(map) = current else {
            unreachable!("made an object above")
        };
        current = map.entry(part.to_string()).or_insert(Value::Null);
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn submitted(fields: &[(&str, &str)]) -> Submitted {
        Submitted::parse(
            fields
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        )
        .expect("parse")
    }

    #[test]
    fn fields_become_the_api_body() {
        let s = submitted(&[
            ("_path", "/routes"),
            ("_csrf", "t"),
            ("hostname", "app.example.com"),
            ("aliases:lines", "a.example.com\n b.example.com, \n"),
            ("limits.rate:num", "2.5"),
            ("limits.burst:int", "10"),
            ("limits.max_body_bytes:int", "ten"),
            ("limits.allow:lines", ""),
            ("origins:list", "home"),
            ("origins:list", "lab"),
            ("health_path:null", ""),
            ("public_ip", ""),
            ("enabled:bool", "on"),
        ]);
        assert_eq!(s.method, Method::POST);
        assert_eq!(
            s.body().expect("body"),
            json!({
                "hostname": "app.example.com",
                "aliases": ["a.example.com", "b.example.com"],
                "limits": {"rate": 2.5, "burst": 10, "max_body_bytes": "ten", "allow": []},
                "origins": ["home", "lab"],
                "health_path": null,
                "enabled": true,
            })
        );
    }

    #[test]
    fn hidden_fields_are_checked() {
        let bad = |path: &str| Submitted::parse(vec![("_path".into(), path.into())]).is_err();
        assert!(bad("http://evil/"));
        assert!(bad("/origins/../x"));
        assert!(Submitted::parse(vec![("_method".into(), "GET".into())]).is_err());
        let s = submitted(&[
            ("_path", "/origins/x"),
            ("_method", "DELETE"),
            ("_return", "//evil"),
        ]);
        assert_eq!(s.return_to, "/");
        assert!(s.body().is_none());
    }

    #[test]
    fn errors_land_on_the_named_field() {
        let s = submitted(&[
            ("_path", "/routes"),
            ("_form", "route"),
            ("aliases:lines", "x"),
        ]);
        let state = s.failed(&crate::api::ApiError::invalid("aliases[0]", "bad name"));
        assert_eq!(state.error_for("route", "aliases"), Some("bad name"));
        assert_eq!(state.error_for("route", "alias"), None);
        assert_eq!(state.error_for("other", "aliases"), None);
        assert_eq!(state.value("route", "aliases"), Some("x"));
    }
}
