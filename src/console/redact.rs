//! Secrets in the config text: hidden before it leaves the gateway (API,
//! dashboard, audit diffs) and put back when a whole file comes in with the
//! placeholder still in place, so a read-modify-write round trip through
//! the API never replaces a secret with the placeholder.
//!
//! Secrets: `admin.token` and the URLs of Slack notifiers (a Slack webhook
//! URL is itself the credential).
//!
//! What a caller sent is hidden too before it is recorded: [`redact_json`]
//! for the one-line rendering of a JSON change in the audit log and
//! history, [`secrets_in_json`] / [`secrets_in_text`] and [`mask`] to blank
//! any secret value that still reaches an audit line, and
//! [`changed_secrets`] names which secret changed (never its value).

use std::collections::BTreeMap;

use serde_json::Value as Json;
use toml_edit::{DocumentMut, Item, Value};

/// What a secret is replaced by.
pub const PLACEHOLDER: &str = "<redacted>";

/// Each secret's slot: visits every secret string in `doc`, by a stable key.
fn for_each_secret(doc: &mut DocumentMut, mut visit: impl FnMut(&str, &mut Value)) {
    if let Some(token) = doc
        .get_mut("admin")
        .and_then(Item::as_table_like_mut)
        .and_then(|a| a.get_mut("token"))
        .and_then(Item::as_value_mut)
    {
        visit("admin.token", token);
    }
    let Some(notifiers) = doc
        .get_mut("alerts")
        .and_then(Item::as_table_like_mut)
        .and_then(|a| a.get_mut("notifiers"))
    else {
        return;
    };
    let mut each = |i: usize, table: &mut dyn toml_edit::TableLike| {
        let slack = table.get("kind").and_then(Item::as_str) == Some("slack");
        if let (true, Some(url)) = (slack, table.get_mut("url").and_then(Item::as_value_mut)) {
            visit(&format!("alerts.notifiers[{i}].url"), url);
        }
    };
    match notifiers {
        Item::ArrayOfTables(tables) => {
            for (i, t) in tables.iter_mut().enumerate() {
                each(i, t);
            }
        }
        Item::Value(Value::Array(array)) => {
            for (i, v) in array.iter_mut().enumerate() {
                if let Some(t) = v.as_inline_table_mut() {
                    each(i, t);
                }
            }
        }
        _ => {}
    }
}

fn replace_keeping_decor(slot: &mut Value, text: &str) {
    let decor = slot.decor().clone();
    *slot = Value::from(text);
    *slot.decor_mut() = decor;
}

/// `text` with its secrets replaced by [`PLACEHOLDER`]. Text that does not
/// parse is hidden whole except its size (it may hold anything).
pub fn redact(text: &str) -> String {
    let Ok(mut doc) = text.parse::<DocumentMut>() else {
        return format!("# ({} bytes of TOML that does not parse)\n", text.len());
    };
    let mut any = false;
    for_each_secret(&mut doc, |_, slot| {
        if slot.as_str() != Some(PLACEHOLDER) {
            replace_keeping_decor(slot, PLACEHOLDER);
            any = true;
        }
    });
    if any {
        doc.to_string()
    } else {
        text.to_string()
    }
}

/// `incoming` with every placeholder replaced by the secret at the same
/// place in `current`. A placeholder with no secret to restore is left, so
/// validation or the admin rules see it and refuse it.
pub fn restore(incoming: &str, current: &str) -> String {
    let (Ok(mut doc), Ok(mut old)) = (
        incoming.parse::<DocumentMut>(),
        current.parse::<DocumentMut>(),
    ) else {
        return incoming.to_string();
    };
    let mut secrets = std::collections::HashMap::new();
    for_each_secret(&mut old, |key, slot| {
        if let Some(s) = slot.as_str() {
            secrets.insert(key.to_string(), s.to_string());
        }
    });
    let mut any = false;
    for_each_secret(&mut doc, |key, slot| {
        if slot.as_str() == Some(PLACEHOLDER) {
            if let Some(secret) = secrets.get(key) {
                replace_keeping_decor(slot, secret);
                any = true;
            }
        }
    });
    if any {
        doc.to_string()
    } else {
        incoming.to_string()
    }
}

/// Each secret in a config text by its key (`admin.token`,
/// `alerts.notifiers[0].url`); empty when the text does not parse.
fn secrets_by_key(text: &str) -> BTreeMap<String, String> {
    let mut secrets = BTreeMap::new();
    if let Ok(mut doc) = text.parse::<DocumentMut>() {
        for_each_secret(&mut doc, |key, slot| {
            if let Some(s) = slot.as_str() {
                secrets.insert(key.to_string(), s.to_string());
            }
        });
    }
    secrets
}

/// The keys of the secrets that differ between two config texts (set,
/// changed or removed), e.g. `["admin.token"]`, for the audit log: the
/// redacted diff cannot show a secret change, so it is named instead.
pub fn changed_secrets(old: &str, new: &str) -> Vec<String> {
    let (old, new) = (secrets_by_key(old), secrets_by_key(new));
    let mut keys: Vec<String> = old
        .keys()
        .chain(new.keys())
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Whether a JSON string under `key` may be a credential: tokens,
/// passwords, secrets, API keys, authorization headers and URLs (a Slack
/// webhook URL is its own credential; a notifier of unknown kind is
/// treated alike), or any Slack webhook URL wherever it is.
fn secret_slot(key: Option<&str>, value: &str) -> bool {
    let key = key.unwrap_or("").to_ascii_lowercase();
    let by_key = key == "token"
        || key == "url"
        || key == "authorization"
        || key.contains("secret")
        || key.contains("password")
        || key.contains("api_key")
        || key.contains("api-key");
    by_key || value.contains("hooks.slack.com")
}

/// `value` (a change as the API received it) with every string that may be
/// a credential ([`secret_slot`]) replaced by [`PLACEHOLDER`]: what the
/// audit log and the history show of a merge patch or a new entry.
pub fn redact_json(value: &Json) -> Json {
    fn walk(value: &Json, key: Option<&str>) -> Json {
        match value {
            Json::Object(map) => map
                .iter()
                .map(|(k, v)| (k.clone(), walk(v, Some(k))))
                .collect(),
            Json::Array(items) => items.iter().map(|v| walk(v, key)).collect(),
            Json::String(s) if secret_slot(key, s) => Json::String(PLACEHOLDER.into()),
            other => other.clone(),
        }
    }
    walk(value, None)
}

/// The strings in `value` that [`redact_json`] hides.
pub fn secrets_in_json(value: &Json) -> Vec<String> {
    fn walk(value: &Json, key: Option<&str>, out: &mut Vec<String>) {
        match value {
            Json::Object(map) => map.iter().for_each(|(k, v)| walk(v, Some(k), out)),
            Json::Array(items) => items.iter().for_each(|v| walk(v, key, out)),
            Json::String(s) if secret_slot(key, s) && s != PLACEHOLDER => out.push(s.clone()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, None, &mut out);
    out
}

/// The strings of a TOML config text that may be credentials, as
/// [`secrets_in_json`] finds them (nothing when the text does not parse).
pub fn secrets_in_text(text: &str) -> Vec<String> {
    toml::from_str::<toml::Table>(text)
        .ok()
        .and_then(|v| serde_json::to_value(v).ok())
        .map(|v| secrets_in_json(&v))
        .unwrap_or_default()
}

/// Shortest value [`mask`] blanks: shorter ones would garble the text
/// (and are no credential worth the name).
const MASK_MIN: usize = 4;

/// `text` with every occurrence of each of `secrets` replaced by
/// [`PLACEHOLDER`]: the last line of defence for audit lines.
pub fn mask(text: &str, secrets: &[String]) -> String {
    let mut secrets: Vec<&String> = secrets.iter().filter(|s| s.len() >= MASK_MIN).collect();
    // Longest first, so a secret containing another is blanked whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut text = text.to_string();
    for secret in secrets {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), PLACEHOLDER);
        }
    }
    text
}

/// An error message with any quoted source line that may hold a secret
/// masked: TOML parse errors quote the offending line, and a file broken
/// next to `token = "..."` would otherwise carry the token into the API's
/// answer, the audit log and the log.
pub fn scrub_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for line in message.split_inclusive('\n') {
        let lower = line.to_ascii_lowercase();
        let secret = ["token", "url", "secret", "password", "hooks.slack.com"]
            .iter()
            .any(|word| lower.contains(word));
        match (secret, line.find('=')) {
            (true, Some(eq)) => {
                out.push_str(&line[..=eq]);
                out.push_str(" <redacted>");
                if line.ends_with('\n') {
                    out.push('\n');
                }
            }
            _ => out.push_str(line),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
[admin]
token = "s3cret" # keep me

[[alerts.notifiers]]
kind = "slack"
url = "http://hooks.example/T0/B0/xyz"

[[alerts.notifiers]]
kind = "webhook"
url = "http://alerts.example/in"
"#;

    #[test]
    fn secrets_are_hidden_and_come_back() {
        let shown = redact(TEXT);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(!shown.contains("xyz"), "{shown}");
        assert!(shown.contains("http://alerts.example/in"));
        assert!(shown.contains("\"<redacted>\" # keep me"), "{shown}");
        let edited = shown.replace("alerts.example/in", "alerts.example/new");
        let back = restore(&edited, TEXT);
        assert!(back.contains("token = \"s3cret\""), "{back}");
        assert!(back.contains("/T0/B0/xyz"));
        assert!(back.contains("alerts.example/new"));
    }

    #[test]
    fn error_messages_lose_quoted_secrets() {
        let text = "[admin]\ntoken = \"s3cr3t\n";
        let e = crate::config::Config::from_toml(text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("s3cr3t"), "the parser quotes the line: {e}");
        let clean = scrub_message(&e);
        assert!(!clean.contains("s3cr3t"), "{clean}");
        assert!(clean.contains("token = <redacted>"), "{clean}");
        assert!(clean.contains("line 2"), "{clean}");
    }

    #[test]
    fn json_changes_lose_their_secrets() {
        let patch = serde_json::json!({
            "admin": {"token": "n3w-s3cret"},
            "alerts": {"notifiers": [
                {"kind": "slack", "url": "https://hooks.slack.com/services/T0/B0/xyz"},
                {"kind": "webhook", "url": "http://alerts.example/in?key=abc"},
            ]},
            "pools": [{"name": "p", "nodes": [{"name": "n", "max_inflight_tokens": 5}]}],
            "note": "see https://hooks.slack.com/services/T1/B1/zzz",
        });
        let shown = redact_json(&patch).to_string();
        for secret in ["n3w-s3cret", "xyz", "key=abc", "zzz"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("\"max_inflight_tokens\":5"), "{shown}");
        assert!(shown.contains("\"kind\":\"slack\""), "{shown}");
        let values = secrets_in_json(&patch);
        assert_eq!(values.len(), 4, "{values:?}");
        let line = format!("PATCH config {patch}");
        let masked = mask(&line, &values);
        assert!(!masked.contains("n3w-s3cret") && !masked.contains("/T0/B0/"));
        assert!(secrets_in_text(TEXT).contains(&"s3cret".to_string()));
    }

    #[test]
    fn changed_secrets_are_named_not_shown() {
        let rotated = TEXT.replace("s3cret", "n3w");
        assert_eq!(changed_secrets(TEXT, &rotated), ["admin.token"]);
        let slack = TEXT.replace("/T0/B0/xyz", "/T0/B0/abc");
        assert_eq!(changed_secrets(TEXT, &slack), ["alerts.notifiers[0].url"]);
        assert!(changed_secrets(TEXT, TEXT).is_empty());
        let removed = TEXT.replace("token = \"s3cret\" # keep me\n", "");
        assert_eq!(changed_secrets(TEXT, &removed), ["admin.token"]);
    }

    #[test]
    fn unparsable_text_is_hidden_whole() {
        let shown = redact("token = \"s3cret");
        assert!(!shown.contains("s3cret"));
    }
}
