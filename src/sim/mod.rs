//! The inference node simulator (in progress).
