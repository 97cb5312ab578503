//! Serde glue shared by the value types, and the two entry points that parse a whole document
//! with field paths in the errors ([`from_toml`], [`from_json`]).

use serde::de::DeserializeOwned;

use crate::error::ModelError;

/// Implements `Serialize` (as the `Display` text) and `Deserialize` (a string, validated by
/// `$parse`) for a string-backed value type, so TOML, JSON and every other serde format parse
/// through the same check as the constructor.
macro_rules! string_serde {
    ($type:ty, $parse:path) => {
        impl serde::Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                $parse(&text)
                    .map_err(|e: $crate::error::ModelError| serde::de::Error::custom(e.message))
            }
        }
    };
}
pub(crate) use string_serde;

/// Parses a TOML document into `T`; an error names the field as a path
/// (`routes[2].limits.allow[0]: ...`), the same form [`from_json`] and the proto conversions
/// give.
pub fn from_toml<T: DeserializeOwned>(text: &str) -> Result<T, ModelError> {
    let deserializer = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let field = path_text(error.path());
        let inner = error.into_inner();
        let mut message = inner.message().to_owned();
        if let Some(span) = inner.span() {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            message.push_str(&format!(" (line {line})"));
        }
        ModelError::new(field, message)
    })
}

/// Parses a JSON document into `T`; an error names the field as a path (`limits.alow: unknown
/// field ...`).
pub fn from_json<T: DeserializeOwned>(text: &str) -> Result<T, ModelError> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let field = path_text(error.path());
        ModelError::new(field, strip_position(&error.into_inner().to_string()))
    })?;
    deserializer.end().map_err(|e| {
        ModelError::value(format!("trailing characters after the JSON value ({e})"))
    })?;
    Ok(value)
}

/// Converts a JSON value into `T`, with field paths in the errors.
pub fn from_json_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ModelError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let field = path_text(error.path());
        ModelError::new(field, error.into_inner().to_string())
    })
}

fn path_text(path: &serde_path_to_error::Path) -> String {
    let text = path.to_string();
    if text == "." {
        String::new()
    } else {
        text
    }
}

/// serde_json appends ` at line 1 column 17`; the path already says where.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}
