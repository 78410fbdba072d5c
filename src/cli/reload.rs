//! Reloading the config file: when it changes on disk, and on SIGHUP.
//!
//! The file is read every `every` and compared by content hash, so editors
//! that write in place and tools that replace it atomically (rename) are
//! both seen, and touching it without a change does nothing. An invalid file
//! is refused: the error is logged and kept in the gateway's config status
//! (admin API and dashboard) and the running config stays. The work is
//! done by [`ConfigStore::poll_file`], so file edits and API changes are
//! serialized and audited alike.

use std::sync::Arc;
use std::time::Duration;

use crate::console::ConfigStore;

/// Watch the store's config file until the task is dropped.
pub async fn watch(store: Arc<ConfigStore>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hangup = hangups();
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = next_hangup(&mut hangup) => true,
        };
        store.poll_file(forced).await;
    }
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
