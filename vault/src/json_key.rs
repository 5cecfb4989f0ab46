//! Selects one entry of a JSON object secret value by a `json_key`.

use serde_json::Value;

use crate::error::VaultError;
use crate::keys::SecretValue;

/// Returns the entry of the JSON object in `value` that `key` selects.
///
/// `key` is first looked up literally among the top-level keys, so `"a.b"`
/// finds a key named `a.b`. Only if no such key exists is `key` split on `.`
/// and each part looked up in the object that the previous part selected.
/// Arrays are not indexed. A string entry is returned as its text; any other
/// entry as its compact JSON text.
///
/// NOTE: serde_json does not zeroize its parsed values, so copies of the
/// plaintext stay in freed memory after this returns.
pub fn select_json_key(
    value: &SecretValue,
    secret: &str,
    key: &str,
) -> Result<SecretValue, VaultError> {
    let not_object = || VaultError::ValueNotJsonObject {
        secret: secret.to_owned(),
    };
    let parsed: Value = serde_json::from_slice(value.as_bytes()).map_err(|_| not_object())?;
    let Value::Object(top) = &parsed else {
        return Err(not_object());
    };

    let selected = match top.get(key) {
        Some(entry) => entry,
        None => walk_path(&parsed, key).ok_or_else(|| VaultError::JsonKeyNotFound {
            secret: secret.to_owned(),
            key: key.to_owned(),
        })?,
    };

    match selected {
        Value::String(text) => Ok(SecretValue::from_string(text.clone())),
        other => Ok(SecretValue::from_bytes(other.to_string().into_bytes())),
    }
}

/// Follows the `.`-separated parts of `path` through nested objects.
fn walk_path<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    if !path.contains('.') {
        return None;
    }
    path.split('.')
        .try_fold(root, |current, part| current.as_object()?.get(part))
}

#[cfg(test)]
mod tests;
