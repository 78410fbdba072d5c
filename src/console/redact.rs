//! Secrets in the config text: hidden before it leaves the gateway (API,
//! dashboard, audit diffs) and put back when a whole file comes in with the
//! placeholder still in place, so a read-modify-write round trip through
//! the API never replaces a secret with the placeholder.
//!
//! Secrets: `admin.token` and the URLs of Slack notifiers (a Slack webhook
//! URL is itself the credential).

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

/// An error message with any quoted source line that may hold a secret
/// masked: TOML parse errors quote the offending line, and a file broken
/// next to `token = "..."` would otherwise carry the token into the API's
/// answer, the audit log and the log.
pub fn scrub_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for line in message.split_inclusive('\n') {
        let lower = line.to_ascii_lowercase();
        let secret = lower.contains("token") || lower.contains("hooks.slack.com");
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
    fn unparsable_text_is_hidden_whole() {
        let shown = redact("token = \"s3cret");
        assert!(!shown.contains("s3cret"));
    }
}
