//! A hasher for keys that are hashes already (block hashes, engine block
//! ids, precomputed pool keys): SipHash over them again would cost more
//! than the lookup. The value is multiplied by an odd constant, a
//! bijection that also spreads small integers (engine ids may be 1, 2,
//! 3, …) into the high bits, where hashbrown takes its tags.

use std::hash::{BuildHasherDefault, Hasher};

/// Hashes a `u64` key by one multiplication (see the module docs).
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Keys write one `u64`; anything else is folded in.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A `HashMap` hasher built from [`IdHasher`].
pub type BuildIdHasher = BuildHasherDefault<IdHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn small_integers_spread_over_the_high_bits_too() {
        let hash = |n: u64| {
            let mut h = IdHasher::default();
            h.write_u64(n);
            h.finish()
        };
        // hashbrown takes the bucket from the low bits and a tag from the
        // top 7: passed through, 1,024 small ids would share one tag.
        let tags: HashSet<u64> = (0..1024u64).map(|n| hash(n) >> 57).collect();
        assert_eq!(tags.len(), 128, "every tag used");
        let buckets: HashSet<u64> = (0..1024u64).map(|n| hash(n) & 1023).collect();
        assert_eq!(buckets.len(), 1024, "a bijection on the low bits");
    }
}
