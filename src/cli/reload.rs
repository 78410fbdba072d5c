//! Reloading the config file: when it changes on disk, and on SIGHUP.
//!
//! The file is read every `every` and compared by content hash, so editors
//! that write in place and tools that replace it atomically (rename) are
//! both seen, and touching it without a change does nothing. An invalid file
//! is refused: the error is logged and kept in the gateway's config status
//! (admin API and dashboard) and the running config stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use xxhash_rust::xxh3::xxh3_64;

use crate::config::Config;
use crate::proxy::Gateway;

/// Watch `path` until the task is dropped.
pub async fn watch(gateway: Arc<Gateway>, path: PathBuf, every: Duration) {
    let mut seen = read_hash(&path).await.map(|(_, hash)| hash);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hangup = hangups();
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = next_hangup(&mut hangup) => true,
        };
        let Some((text, hash)) = read_hash(&path).await else {
            if forced {
                refuse(&gateway, &path, "cannot read the file");
            }
            continue;
        };
        if !forced && seen == Some(hash) {
            continue;
        }
        seen = Some(hash);
        match Config::from_toml(&text).and_then(|config| gateway.reload(&config)) {
            Ok(()) => tracing::info!(file = %path.display(), forced, "config file applied"),
            Err(e) => refuse(&gateway, &path, &e.to_string()),
        }
    }
}

fn refuse(gateway: &Gateway, path: &Path, why: &str) {
    tracing::error!(file = %path.display(), error = %why, "config reload refused; running config kept");
    gateway.note_reload_refused(&format!("{}: {why}", path.display()));
}

async fn read_hash(path: &Path) -> Option<(String, u64)> {
    let text = tokio::fs::read_to_string(path).await.ok()?;
    let hash = xxh3_64(text.as_bytes());
    Some((text, hash))
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = Option<()>;

#[cfg(unix)]
fn hangups() -> Hangups {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}
#[cfg(not(unix))]
fn hangups() -> Hangups {
    None
}

/// The next SIGHUP; never resolves where there are none.
async fn next_hangup(hangups: &mut Hangups) -> Option<()> {
    #[cfg(unix)]
    if let Some(signal) = hangups {
        return signal.recv().await;
    }
    let _ = hangups;
    std::future::pending().await
}
