//! The parsing steps client and server messages share.

use serde::Deserialize;

use super::error::{ControlError, truncate};

/// JSON object → known `"type"` → typed message, so each failure gets its own error code.
pub(super) fn parse_tagged<T: serde::de::DeserializeOwned>(
    text: &str,
    types: &[&'static str],
) -> Result<T, ControlError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| ControlError::NotJson {
            detail: e.to_string(),
        })?;
    let Some(object) = value.as_object() else {
        return Err(ControlError::NotJson {
            detail: format!("found {}", json_kind(&value)),
        });
    };
    let message_type = match object.get("type") {
        None => return Err(ControlError::UnknownType { found: None }),
        Some(serde_json::Value::String(s)) => match types.iter().find(|t| **t == s.as_str()) {
            Some(known) => *known,
            None => {
                return Err(ControlError::UnknownType {
                    found: Some(truncate(s).to_owned()),
                });
            }
        },
        Some(other) => {
            return Err(ControlError::UnknownType {
                found: Some(truncate(&other.to_string()).to_owned()),
            });
        }
    };
    serde_json::from_value(value).map_err(|e| ControlError::Invalid {
        message_type,
        detail: e.to_string(),
    })
}

/// A field with a default reads `null` as that default, as an `Option` field reads it as `None`:
/// "optional fields may be omitted or `null`" holds for every optional field.
pub(super) fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
