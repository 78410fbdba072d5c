//! The process's file-descriptor limit against `listener.max_connections`.
//!
//! Each proxied client connection needs its own descriptor and, while a
//! request is in flight, one to the node; health checks, metrics scrapes
//! and the admin listener need a few more. Like nginx's
//! `worker_rlimit_nofile`, the gateway raises its soft limit to the hard
//! limit at start, and warns when `max_connections` still cannot be
//! honoured, instead of failing connects to healthy nodes under load.

/// Descriptors kept aside for the listener, checks, scrapes, admin, logs.
const RESERVED: u64 = 256;

/// Descriptors `max_connections` clients need at most.
pub fn needed(max_connections: usize) -> u64 {
    (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(RESERVED)
}

/// Raise the soft limit towards the hard one; returns the soft limit in
/// force afterwards (None where it cannot be read).
pub fn raise() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    Some(limit.rlim_cur)
}

/// Raise the limit and warn when `max_connections` does not fit in it.
pub fn check(max_connections: usize) {
    let Some(soft) = raise() else { return };
    let needed = needed(max_connections);
    if soft < needed {
        tracing::warn!(
            limit = soft,
            needed,
            max_connections,
            "the file descriptor limit is too low for listener.max_connections \
             (each client may need a descriptor to a node as well); raise the \
             hard limit (ulimit -n, LimitNOFILE=) or lower max_connections"
        );
    } else {
        tracing::debug!(limit = soft, needed, "file descriptor limit");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_reaches_the_hard_limit() {
        let soft = raise().expect("readable on this platform");
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(soft, limit.rlim_cur);
        assert_eq!(limit.rlim_cur, limit.rlim_max);
        assert_eq!(needed(10_000), 20_256);
    }
}
