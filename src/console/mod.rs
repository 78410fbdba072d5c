//! The configuration console's core: [`ConfigStore`] owns the running
//! config's text, applies changes (from the admin API or the file on disk)
//! all or nothing, persists them atomically and records them in the audit
//! log.
//!
//! One change at a time (an async mutex), in this order: check the version
//! the change was based on (If-Match) and that the file has no edits the
//! gateway has not applied; edit a copy of the document ([`edit`]); parse
//! and validate it exactly as the file loader does; stage the new file
//! (temp + fsync); swap it into the running gateway; rename the file into
//! place. A failure at any step leaves the running config and the file as
//! they were.
//!
//! The version is a hash of the file's *redacted* text, so it survives
//! restarts, changes when someone edits the file by hand, and cannot be
//! used to test guesses of the token offline (it is served to readers who
//! have no token). A change of a secret alone does not change the redacted
//! text, so it moves a per-process counter that is hashed in too
//! ([`version_for`]); the audit entry names the secret that changed.

pub mod audit;
pub mod edit;
pub mod persist;
pub mod redact;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;
use serde_json::Value as Json;
use toml_edit::DocumentMut;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::config::{Config, ConfigError, FieldError};
use crate::proxy::Gateway;
pub use audit::{AuditEntry, AuditLog, Outcome};
pub use edit::Collection;

/// The version of a config text as a freshly started gateway gives it:
/// 16 hex digits of the hash of its redacted text (secrets are never
/// hashed, see the module doc).
pub fn version_of(text: &str) -> String {
    version_for(&redact::redact(text), 0)
}

/// The version of a config whose redacted text is `redacted`, after
/// `secret_changes` changes of a secret alone since start.
fn version_for(redacted: &str, secret_changes: u64) -> String {
    let hash = match secret_changes {
        0 => xxh3_64(redacted.as_bytes()),
        n => xxh3_64_with_seed(redacted.as_bytes(), n),
    };
    format!("{hash:016x}")
}

/// The running config as the console shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Current {
    /// Version (use it in If-Match).
    pub version: String,
    /// Configs applied since start (1 = the initial one).
    pub generation: u64,
    /// The config file, if changes are persisted.
    pub path: Option<String>,
    /// The file's text, secrets redacted.
    pub text: String,
}

/// A requested change.
#[derive(Debug, Clone)]
pub enum Edit {
    /// Add an entry to a collection.
    Create(Collection, Json),
    /// Merge-patch the named entry.
    Patch(Collection, String, Json),
    /// Remove the named entry.
    Delete(Collection, String),
    /// Merge-patch the whole document.
    Merge(Json),
    /// Replace the whole file with this TOML text.
    Replace(String),
    /// Go back to an earlier version kept in the history.
    Rollback(String),
}

/// Configs kept for rollback.
pub const HISTORY_LEN: usize = 20;

/// A config that was in force, for the history and rollback.
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    /// Its version.
    pub version: String,
    /// When it was put in force (ms since the Unix epoch).
    pub at_unix_ms: u64,
    /// Who put it in force (`start` for the config the gateway started with).
    pub actor: String,
    /// What made it.
    pub action: String,
}

/// A change with who asked and what it was based on.
#[derive(Debug, Clone)]
pub struct Change {
    /// Who asked (for the audit log).
    pub actor: String,
    /// What was asked, one line (for the audit log).
    pub action: String,
    /// The version it was based on (`*`: any).
    pub if_match: Option<String>,
    /// The edit.
    pub edit: Edit,
    /// Only validate and show the diff.
    pub dry_run: bool,
}

/// What a change did.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    /// Version now in force (unchanged for a dry run).
    pub version: String,
    /// Configs applied since start.
    pub generation: u64,
    /// Whether the text changed (false: the change was a no-op).
    pub changed: bool,
    /// Whether the file on disk was written.
    pub persisted: bool,
    /// Only validated.
    pub dry_run: bool,
    /// Unified diff of the file, secrets redacted.
    pub diff: String,
    /// Settings that changed but are read only at start (the listener's
    /// address, connection and header limits and workers; admin, telemetry,
    /// access log, alert history size): they take effect at the next
    /// restart; everything else is in force now.
    pub restart_required: Vec<String>,
    /// Secrets that changed (`admin.token`, `alerts.notifiers[0].url`):
    /// the redacted diff cannot show them.
    pub secrets_changed: Vec<String>,
}

/// Sections the running gateway reads only at start.
const START_ONLY: [&str; 11] = [
    "listener.addr",
    "listener.max_connections",
    "listener.max_header_bytes",
    "listener.header_timeout",
    "listener.http2",
    "listener.workers",
    "admin",
    "telemetry",
    "access_log",
    "alerts.history",
    "epp",
];

/// Which start-only sections differ between two valid config texts.
pub fn restart_required(old: &str, new: &str) -> Vec<String> {
    let (Ok(old), Ok(new)) = (
        toml::from_str::<toml::Table>(old),
        toml::from_str::<toml::Table>(new),
    ) else {
        return Vec::new();
    };
    let pick = |t: &toml::Table, path: &str| -> Option<toml::Value> {
        let mut parts = path.split('.');
        let mut value = t.get(parts.next()?)?;
        for part in parts {
            value = value.get(part)?;
        }
        Some(value.clone())
    };
    START_ONLY
        .iter()
        .filter(|path| pick(&old, path) != pick(&new, path))
        .map(|p| p.to_string())
        .collect()
}

/// Why a change was not made. Nothing changed in any case.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChangeError {
    /// No If-Match was sent.
    #[error("send If-Match with the version the change is based on (GET /api/v1/config), or * to apply regardless")]
    VersionRequired,
    /// The change was based on an older version, or the file on disk holds
    /// edits that are not in force.
    #[error("{message}")]
    Conflict {
        /// Why.
        message: String,
        /// The version in force.
        current: String,
    },
    /// The named entry does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The result would not be a valid config.
    #[error("{message}")]
    Invalid {
        /// All problems in one text.
        message: String,
        /// Problems by field, when validation found them.
        errors: Vec<FieldError>,
    },
    /// Valid, but the file could not be written.
    #[error("{0}")]
    Persist(String),
}

struct State {
    /// The running config's text, exactly as on disk.
    text: String,
    /// Its version.
    version: String,
    /// Changes that changed secrets since start (hashed into versions, so
    /// that a new token makes a new version although the redacted text
    /// stays the same).
    secret_changes: u64,
    /// Hash of the file contents the watcher last looked at.
    seen_on_disk: Option<u64>,
}

impl State {
    /// Put `text` (redacted: `redacted`) in as the running text; returns
    /// the secrets it changed.
    fn set(&mut self, text: String, redacted: &str) -> Vec<String> {
        let changed = redact::changed_secrets(&self.text, &text);
        if !changed.is_empty() {
            self.secret_changes += 1;
        }
        self.version = version_for(redacted, self.secret_changes);
        self.text = text;
        changed
    }
}

/// The single writer of the running config and its file.
pub struct ConfigStore {
    gateway: Arc<Gateway>,
    path: Option<PathBuf>,
    state: tokio::sync::Mutex<State>,
    current: ArcSwap<Current>,
    /// The last [`HISTORY_LEN`] configs in force, oldest first, with their
    /// full text (for rollback; never served unredacted).
    history: std::sync::Mutex<std::collections::VecDeque<(VersionInfo, String)>>,
    /// Every change tried through the API or picked up from the file.
    pub audit: AuditLog,
}

impl ConfigStore {
    /// A store for a gateway started from `text`, read from `path` (`None`:
    /// changes are applied but not persisted).
    pub fn new(gateway: Arc<Gateway>, path: Option<PathBuf>, text: String) -> Arc<ConfigStore> {
        let redacted = redact::redact(&text);
        let current = Current {
            version: version_for(&redacted, 0),
            generation: gateway.config_status().version,
            path: path.as_ref().map(|p| p.display().to_string()),
            text: redacted,
        };
        let first = VersionInfo {
            version: current.version.clone(),
            at_unix_ms: crate::telemetry::unix_ms(),
            actor: "start".into(),
            action: "config the gateway started with".into(),
        };
        Arc::new(ConfigStore {
            gateway,
            history: std::sync::Mutex::new([(first, text.clone())].into()),
            state: tokio::sync::Mutex::new(State {
                seen_on_disk: Some(xxh3_64(text.as_bytes())),
                version: current.version.clone(),
                secret_changes: 0,
                text,
            }),
            path,
            current: ArcSwap::from_pointee(current),
            audit: AuditLog::default(),
        })
    }

    /// The configs kept for rollback, newest first.
    pub fn history(&self) -> Vec<VersionInfo> {
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        history.iter().rev().map(|(v, _)| v.clone()).collect()
    }

    fn remember(&self, state: &State, actor: &str, action: &str) {
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        history.push_back((
            VersionInfo {
                version: state.version.clone(),
                at_unix_ms: crate::telemetry::unix_ms(),
                actor: actor.to_string(),
                action: action.to_string(),
            },
            state.text.clone(),
        ));
        while history.len() > HISTORY_LEN {
            history.pop_front();
        }
    }

    fn kept_text(&self, version: &str) -> Option<String> {
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        history
            .iter()
            .rev()
            .find(|(v, _)| v.version == version)
            .map(|(_, text)| text.clone())
    }

    /// The running config (redacted) and its version.
    pub fn current(&self) -> Arc<Current> {
        self.current.load_full()
    }

    /// The gateway this store configures.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Apply a change all or nothing; see the module doc for the steps.
    ///
    /// The audit entry and the history show the change's `action` and
    /// `actor` with any secret of the running config or of the change
    /// blanked, whatever the caller wrote into them.
    pub async fn change(&self, mut change: Change) -> Result<Applied, ChangeError> {
        let mut state = self.state.lock().await;
        let secrets = secret_values(&state.text, &change.edit);
        change.action = redact::mask(&change.action, &secrets);
        change.actor = redact::mask(&change.actor, &secrets);
        let before = state.version.clone();
        let result = self.try_change(&mut state, &change).await;
        let (outcome, detail, after, diff) = match &result {
            Ok(a) if a.dry_run => return result,
            Ok(a) if !a.changed => (Outcome::Unchanged, None, None, String::new()),
            Ok(a) => (
                Outcome::Applied,
                None,
                Some(a.version.clone()),
                a.diff.clone(),
            ),
            Err(ChangeError::Conflict { .. } | ChangeError::VersionRequired) => (
                Outcome::Conflict,
                result.as_ref().err().map(|e| e.to_string()),
                None,
                String::new(),
            ),
            Err(ChangeError::Persist(m)) => (Outcome::Failed, Some(m.clone()), None, String::new()),
            Err(e) => (Outcome::Refused, Some(e.to_string()), None, String::new()),
        };
        let secrets_changed = match &result {
            Ok(a) if a.changed => a.secrets_changed.clone(),
            _ => Vec::new(),
        };
        self.audit.record(AuditEntry {
            id: 0,
            at_unix_ms: 0,
            actor: change.actor.clone(),
            action: change.action.clone(),
            outcome,
            detail: detail.map(|d| redact::mask(&d, &secrets)),
            version_before: before,
            version_after: after,
            diff,
            secrets_changed,
        });
        result
    }

    async fn try_change(&self, state: &mut State, change: &Change) -> Result<Applied, ChangeError> {
        let current = state.version.clone();
        match change.if_match.as_deref().map(normalize_version) {
            None => return Err(ChangeError::VersionRequired),
            Some("*") => {}
            Some(v) if v == current => {}
            Some(v) => {
                return Err(ChangeError::Conflict {
                    message: format!(
                        "the config changed since version {v}: it is now at {current}; read it again and redo the change"
                    ),
                    current,
                })
            }
        }
        if let Some(path) = &self.path {
            if let Some(disk) = read_if_exists(path).await {
                if disk != state.text {
                    let why = self
                        .gateway
                        .config_status()
                        .last_error
                        .map(|e| format!(" (refused: {e})"))
                        .unwrap_or_default();
                    return Err(ChangeError::Conflict {
                        message: format!(
                            "{} was edited on disk and the edit is not in force{why}; fix or apply the file first, so this change does not overwrite it",
                            path.display()
                        ),
                        current,
                    });
                }
            }
        }

        let new_text = match &change.edit {
            Edit::Replace(text) => redact::restore(text, &state.text),
            Edit::Rollback(version) => {
                let version = normalize_version(version);
                self.kept_text(version).ok_or_else(|| {
                    ChangeError::NotFound(format!(
                        "version {version} is not among the last {HISTORY_LEN} configs (GET /api/v1/config/history)"
                    ))
                })?
            }
            edit => {
                let mut doc: DocumentMut =
                    state.text.parse().map_err(|e| ChangeError::Invalid {
                        message: format!("the running config does not parse: {e}"),
                        errors: Vec::new(),
                    })?;
                let done = match edit {
                    Edit::Create(c, entry) => edit::create(&mut doc, c, entry),
                    Edit::Patch(c, name, changes) => edit::patch(&mut doc, c, name, changes),
                    Edit::Delete(c, name) => edit::delete(&mut doc, c, name),
                    Edit::Merge(changes) => edit::merge_document(&mut doc, changes),
                    Edit::Replace(_) | Edit::Rollback(_) => Ok(()),
                };
                done.map_err(|e| match e {
                    edit::EditError::NotFound(m) => ChangeError::NotFound(m),
                    edit::EditError::Bad(m) => ChangeError::Invalid {
                        errors: field_of(&m).into_iter().collect(),
                        message: m,
                    },
                })?;
                doc.to_string()
            }
        };
        let config = Config::from_toml(&new_text).map_err(invalid)?;
        let (diff, redacted) = self.diff_from_running(&state.text, &new_text);
        let restart = restart_required(&state.text, &new_text);
        let generation = self.gateway.config_status().version;
        if new_text == state.text {
            return Ok(Applied {
                version: current,
                generation,
                changed: false,
                persisted: false,
                dry_run: change.dry_run,
                diff,
                restart_required: restart,
                secrets_changed: Vec::new(),
            });
        }
        if change.dry_run {
            return Ok(Applied {
                version: current,
                generation,
                changed: true,
                persisted: false,
                dry_run: true,
                diff,
                restart_required: restart,
                secrets_changed: redact::changed_secrets(&state.text, &new_text),
            });
        }

        let staged = match &self.path {
            Some(path) => Some(stage(path, &new_text).await?),
            None => None,
        };
        self.gateway.reload(&config).map_err(invalid)?;
        if let Some(staged) = staged {
            if let Err(e) = commit(staged).await {
                // The file keeps the old text: put the old config back too.
                if let Ok(old) = Config::from_toml(&state.text) {
                    let _ = self.gateway.reload(&old);
                }
                return Err(e);
            }
        }
        state.seen_on_disk = Some(xxh3_64(new_text.as_bytes()));
        let secrets_changed = state.set(new_text, &redacted);
        self.remember(state, &change.actor, &change.action);
        let applied = self.publish(state, redacted);
        Ok(Applied {
            version: applied.version.clone(),
            generation: applied.generation,
            changed: true,
            persisted: self.path.is_some(),
            dry_run: false,
            diff,
            restart_required: restart,
            secrets_changed,
        })
    }

    /// The diff from the running text to `new` with secrets redacted, and
    /// `new` redacted (what [`publish`](Self::publish) shows if it goes
    /// into force). The running text's redacted form is already published,
    /// so only the new text is redacted here.
    fn diff_from_running(&self, running: &str, new: &str) -> (String, String) {
        let shown = self.current();
        if running == new {
            return (String::new(), shown.text.clone());
        }
        let redacted = redact::redact(new);
        (unified_diff(&shown.text, &redacted), redacted)
    }

    /// Put the running config (its redacted form `redacted`) on show.
    fn publish(&self, state: &State, redacted: String) -> Arc<Current> {
        let current = Arc::new(Current {
            version: state.version.clone(),
            generation: self.gateway.config_status().version,
            path: self.path.as_ref().map(|p| p.display().to_string()),
            text: redacted,
        });
        self.current.store(Arc::clone(&current));
        current
    }

    /// Look at the file: apply it when its content changed since the last
    /// look (or always when `forced`, e.g. on SIGHUP). An invalid file is
    /// refused: the reason goes to the log, the config status and the
    /// audit log, and the running config stays.
    pub async fn poll_file(&self, forced: bool) {
        let Some(path) = &self.path else { return };
        let mut state = self.state.lock().await;
        let Some(text) = read_if_exists(path).await else {
            if forced {
                self.refuse_file(path, "cannot read the file", &state);
            }
            return;
        };
        let hash = xxh3_64(text.as_bytes());
        if !forced && state.seen_on_disk == Some(hash) {
            return;
        }
        state.seen_on_disk = Some(hash);
        if text == state.text && !forced {
            return;
        }
        let before = state.version.clone();
        match Config::from_toml(&text).and_then(|config| self.gateway.reload(&config)) {
            Ok(()) => {
                tracing::info!(file = %path.display(), forced, "config file applied");
                let (diff, redacted) = self.diff_from_running(&state.text, &text);
                let secrets_changed = state.set(text, &redacted);
                let changed = !diff.is_empty() || !secrets_changed.is_empty();
                if changed {
                    self.remember(&state, "file", "file changed on disk");
                }
                let current = self.publish(&state, redacted);
                self.audit.record(AuditEntry {
                    id: 0,
                    at_unix_ms: 0,
                    actor: "file".into(),
                    action: if forced {
                        "reload (SIGHUP)"
                    } else {
                        "file changed on disk"
                    }
                    .into(),
                    outcome: if changed {
                        Outcome::Applied
                    } else {
                        Outcome::Unchanged
                    },
                    detail: None,
                    version_before: before,
                    version_after: Some(current.version.clone()),
                    diff,
                    secrets_changed,
                });
            }
            Err(e) => {
                let why = redact::mask(&e.to_string(), &redact::secrets_in_text(&text));
                self.refuse_file(path, &why, &state);
            }
        }
    }

    fn refuse_file(&self, path: &Path, why: &str, running: &State) {
        let why = &redact::mask(
            &redact::scrub_message(why),
            &redact::secrets_in_text(&running.text),
        );
        tracing::error!(file = %path.display(), error = %why, "config reload refused; running config kept");
        self.gateway
            .note_reload_refused(&format!("{}: {why}", path.display()));
        self.audit.record(AuditEntry {
            id: 0,
            at_unix_ms: 0,
            actor: "file".into(),
            action: "file changed on disk".into(),
            outcome: Outcome::Refused,
            detail: Some(why.to_string()),
            version_before: running.version.clone(),
            version_after: None,
            diff: String::new(),
            secrets_changed: Vec::new(),
        });
    }
}

/// Every value that may be a secret in the running text or in what a
/// change brings, for blanking audit lines.
fn secret_values(running: &str, edit: &Edit) -> Vec<String> {
    let mut values = redact::secrets_in_text(running);
    match edit {
        Edit::Create(_, json) | Edit::Patch(_, _, json) | Edit::Merge(json) => {
            values.extend(redact::secrets_in_json(json))
        }
        Edit::Replace(text) => values.extend(redact::secrets_in_text(text)),
        Edit::Rollback(_) | Edit::Delete(..) => {}
    }
    values
}

fn invalid(e: ConfigError) -> ChangeError {
    let errors = match &e {
        ConfigError::Invalid(errors) => errors.clone(),
        ConfigError::Parse {
            field: Some(field), ..
        } => vec![field.clone()],
        _ => Vec::new(),
    };
    // Lead with the field when the parser named one: the generated TOML's
    // line numbers mean little to an API caller.
    let message = match &e {
        ConfigError::Parse {
            field: Some(field),
            message,
        } => format!("{field}\n{message}"),
        _ => e.to_string(),
    };
    let errors = errors
        .into_iter()
        .map(|f| FieldError {
            message: redact::scrub_message(&f.message),
            ..f
        })
        .collect();
    ChangeError::Invalid {
        message: redact::scrub_message(&message),
        errors,
    }
}

/// An edit error written `field.path: what` as a field error, so the
/// console can show it next to the field.
fn field_of(message: &str) -> Option<FieldError> {
    let (path, what) = message.split_once(": ")?;
    let is_path = !path.is_empty()
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']'));
    is_path.then(|| FieldError {
        path: path.to_string(),
        message: what.to_string(),
    })
}

/// `"abc"`, `W/"abc"` and `abc` all name version `abc`.
fn normalize_version(v: &str) -> &str {
    let v = v.trim();
    let v = v.strip_prefix("W/").unwrap_or(v);
    v.trim_matches('"')
}

async fn read_if_exists(path: &Path) -> Option<String> {
    tokio::fs::read_to_string(path).await.ok()
}

async fn stage(path: &Path, text: &str) -> Result<persist::Staged, ChangeError> {
    let (path, text) = (path.to_path_buf(), text.to_string());
    tokio::task::spawn_blocking(move || persist::stage(&path, &text))
        .await
        .map_err(|e| ChangeError::Persist(format!("writing the config file: {e}")))?
        .map_err(|e| ChangeError::Persist(format!("writing the config file: {e}")))
}

async fn commit(staged: persist::Staged) -> Result<(), ChangeError> {
    tokio::task::spawn_blocking(move || staged.commit())
        .await
        .map_err(|e| ChangeError::Persist(format!("replacing the config file: {e}")))?
        .map_err(|e| ChangeError::Persist(format!("replacing the config file: {e}")))
}

/// A unified diff of two (already redacted) config texts.
fn unified_diff(old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(2)
        .header("running", "new")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_hash_no_secret() {
        let weak = "[admin]\ntoken = \"weak\"\n";
        let other = "[admin]\ntoken = \"other\"\n";
        assert_eq!(version_of(weak), version_of(other));
        assert_ne!(
            version_of(weak),
            format!("{:016x}", xxh3_64(weak.as_bytes())),
            "the raw text (with the token) is not what is hashed"
        );
        // A secret change alone moves the version through the counter.
        assert_ne!(version_for(&redact::redact(weak), 1), version_of(weak));
        assert_ne!(
            version_of(weak),
            version_of("[admin]\ntoken = \"weak\"\nopen_reads = true\n")
        );
    }

    #[test]
    fn start_only_sections_are_named() {
        let old = "[listener]\naddr = \"127.0.0.1:1\"\n[[pools]]\nname = \"p\"\n";
        assert!(restart_required(old, old).is_empty());
        let pools = old.replace("name = \"p\"", "name = \"q\"");
        assert!(restart_required(old, &pools).is_empty());
        let listener = old.replace(":1", ":2");
        assert_eq!(restart_required(old, &listener), ["listener.addr"]);
        // Body limits are read per request from the route table.
        let body = old.replace("[listener]\n", "[listener]\nmax_body_bytes = 10\n");
        assert!(restart_required(old, &body).is_empty());
        let history = format!("{old}[alerts]\nhistory = 5\n");
        assert_eq!(restart_required(old, &history), ["alerts.history"]);
        let notifiers = format!("{old}[[alerts.notifiers]]\nkind = \"log\"\n");
        assert!(restart_required(old, &notifiers).is_empty());
    }
}
