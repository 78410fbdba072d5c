//! The audit log: who changed the config, when, what, and how it went.
//!
//! Bounded in memory (oldest entries drop first) and readable through the
//! admin API; each entry is also written to the log (target `audit`) and,
//! with `admin.audit_file`, appended as a JSON line to that file, from
//! which the latest entries are read back at start so the API's view
//! survives restarts. Diffs are redacted, and actions and details
//! stripped of secrets, before they get here; a changed secret is named
//! in `secrets_changed`, never shown.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Entries kept.
pub const AUDIT_CAPACITY: usize = 500;

/// Longest diff kept per entry, in bytes.
const MAX_DIFF: usize = 16 * 1024;

/// What happened to a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Validated, in force and persisted.
    Applied,
    /// Valid but changed nothing.
    Unchanged,
    /// Refused by validation (or the edit was malformed).
    Refused,
    /// Based on a stale version, or the file had unapplied edits.
    Conflict,
    /// Valid, but could not be written; nothing changed.
    Failed,
}

/// One audit entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Increasing id.
    pub id: u64,
    /// When (ms since the Unix epoch).
    pub at_unix_ms: u64,
    /// Who: the caller's `X-Infergate-Actor` and address, or `file` for
    /// edits picked up from disk.
    pub actor: String,
    /// What was asked, e.g. `PATCH pools/llama/nodes/a`.
    pub action: String,
    /// How it went.
    pub outcome: Outcome,
    /// Why it was refused or failed.
    pub detail: Option<String>,
    /// Version (etag) the change was based on.
    pub version_before: String,
    /// Version after the change, when applied.
    pub version_after: Option<String>,
    /// Unified diff of the config file (secrets redacted), when applied.
    pub diff: String,
    /// Secrets the change set, changed or removed (`admin.token`,
    /// `alerts.notifiers[0].url`), which the redacted diff cannot show.
    #[serde(default)]
    pub secrets_changed: Vec<String>,
}

/// The bounded log.
#[derive(Debug, Default)]
pub struct AuditLog {
    entries: Mutex<VecDeque<AuditEntry>>,
    next_id: std::sync::atomic::AtomicU64,
    /// Where entries are appended (`admin.audit_file`).
    file: Mutex<Option<std::fs::File>>,
}

impl AuditLog {
    /// Keep entries in `path` too: its latest entries are loaded now (lines
    /// that do not parse are skipped), new ones are appended as JSON lines.
    pub fn attach_file(&self, path: &std::path::Path) -> std::io::Result<()> {
        use std::io::BufRead;
        let mut loaded = VecDeque::new();
        match std::fs::File::open(path) {
            Ok(file) => {
                for line in std::io::BufReader::new(file).lines() {
                    if let Ok(entry) = serde_json::from_str::<AuditEntry>(&line?) {
                        loaded.push_back(entry);
                        if loaded.len() > AUDIT_CAPACITY {
                            loaded.pop_front();
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let last_id = loaded.iter().map(|e| e.id).max().unwrap_or(0);
        self.next_id
            .fetch_max(last_id, std::sync::atomic::Ordering::Relaxed);
        {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let mine = std::mem::take(&mut *entries);
            loaded.extend(mine);
            while loaded.len() > AUDIT_CAPACITY {
                loaded.pop_front();
            }
            *entries = loaded;
        }
        *self.file.lock().unwrap_or_else(|p| p.into_inner()) = Some(file);
        Ok(())
    }

    /// Record an entry (its id and time are filled in).
    pub fn record(&self, mut entry: AuditEntry) {
        entry.id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        entry.at_unix_ms = crate::telemetry::unix_ms();
        if entry.diff.len() > MAX_DIFF {
            let mut cut = MAX_DIFF;
            while !entry.diff.is_char_boundary(cut) {
                cut -= 1;
            }
            entry.diff.truncate(cut);
            entry.diff.push_str("\n… (diff truncated)\n");
        }
        tracing::info!(
            target: "audit",
            id = entry.id,
            actor = %entry.actor,
            action = %entry.action,
            outcome = ?entry.outcome,
            detail = entry.detail.as_deref().unwrap_or(""),
            version_after = entry.version_after.as_deref().unwrap_or(""),
            secrets_changed = ?entry.secrets_changed,
            "config change"
        );
        if let Some(file) = self.file.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            use std::io::Write;
            // One write per line, so concurrent readers never see half a line.
            let mut line = serde_json::to_vec(&entry).unwrap_or_default();
            line.push(b'\n');
            if let Err(e) = file.write_all(&line) {
                tracing::warn!(error = %e, "cannot append to the audit file");
            }
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.push_back(entry);
        while entries.len() > AUDIT_CAPACITY {
            entries.pop_front();
        }
    }

    /// The latest `n` entries, newest first.
    pub fn latest(&self, n: usize) -> Vec<AuditEntry> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.iter().rev().take(n).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &str) -> AuditEntry {
        AuditEntry {
            id: 0,
            at_unix_ms: 0,
            actor: "t".into(),
            action: action.into(),
            outcome: Outcome::Applied,
            detail: None,
            version_before: "a".into(),
            version_after: Some("b".into()),
            diff: "x".repeat(MAX_DIFF + 10),
            secrets_changed: Vec::new(),
        }
    }

    #[test]
    fn entries_survive_in_the_audit_file() {
        let path =
            std::env::temp_dir().join(format!("infergate-audit-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let first = AuditLog::default();
        first.attach_file(&path).unwrap();
        first.record(entry("one"));
        first.record(entry("two"));
        drop(first);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"{torn line\n"))
            .unwrap();
        let again = AuditLog::default();
        again.attach_file(&path).unwrap();
        again.record(entry("three"));
        let latest = again.latest(10);
        let actions: Vec<&str> = latest.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["three", "two", "one"]);
        assert_eq!(latest[0].id, 3);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn bounded_newest_first_and_diff_capped() {
        let log = AuditLog::default();
        for i in 0..AUDIT_CAPACITY + 5 {
            log.record(entry(&format!("change {i}")));
        }
        let latest = log.latest(usize::MAX);
        assert_eq!(latest.len(), AUDIT_CAPACITY);
        assert_eq!(latest[0].action, format!("change {}", AUDIT_CAPACITY + 4));
        assert_eq!(latest[0].id as usize, AUDIT_CAPACITY + 5);
        assert!(latest[0].diff.len() < MAX_DIFF + 40);
        assert!(latest[0].diff.ends_with("(diff truncated)\n"));
    }
}
