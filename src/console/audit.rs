//! The audit log: who changed the config, when, what, and how it went.
//!
//! Bounded in memory (oldest entries drop first) and readable through the
//! admin API; each entry is also written to the log (target `audit`) for
//! durable keeping. Diffs are redacted before they get here.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;

/// Entries kept.
pub const AUDIT_CAPACITY: usize = 500;

/// Longest diff kept per entry, in bytes.
const MAX_DIFF: usize = 16 * 1024;

/// What happened to a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
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
}

/// The bounded log.
#[derive(Debug, Default)]
pub struct AuditLog {
    entries: Mutex<VecDeque<AuditEntry>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl AuditLog {
    /// Record an entry (its id and time are filled in).
    pub fn record(&self, mut entry: AuditEntry) {
        entry.id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        entry.at_unix_ms = crate::proxy::unix_ms();
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
            "config change"
        );
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
        }
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
