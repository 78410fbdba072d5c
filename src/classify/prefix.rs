//! Prefix fingerprints: a chain of hashes over fixed-size blocks of prompt text.
//!
//! The gateway and the simulator share this one definition of a "block" so the
//! gateway's idea of which prompts share a cached prefix matches what a node's
//! KV cache holds. A token is approximated as [`BYTES_PER_TOKEN`] bytes of text
//! (the usual rule of thumb for English with BPE tokenizers), and a block is
//! [`TOKENS_PER_BLOCK`] tokens, as vLLM's default KV block size. Each block's
//! hash is seeded with the previous block's hash, so two prompts share their
//! leading hashes exactly as long as they share their leading blocks.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Approximate bytes of prompt text per token.
pub const BYTES_PER_TOKEN: usize = 4;
/// Tokens per KV-cache block (vLLM's default block size).
pub const TOKENS_PER_BLOCK: usize = 16;
/// Bytes of prompt text per block.
pub const BLOCK_BYTES: usize = BYTES_PER_TOKEN * TOKENS_PER_BLOCK;

/// Estimated token count of `bytes` bytes of prompt text (rounded up).
pub fn estimate_tokens(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(BYTES_PER_TOKEN)).unwrap_or(u32::MAX)
}

/// Seed for a prompt's hash chain: the model name, so equal prompts sent to
/// different models never share a fingerprint.
pub fn seed_for_model(model: &str) -> u64 {
    xxh3_64_with_seed(model.as_bytes(), 0x1f6e_67a7_e5ee_d001)
}

/// Incremental block hasher. Feed prompt text in any number of segments; only
/// full blocks are hashed (a trailing partial block is counted in
/// [`PrefixHasher::total_bytes`] but has no hash, like a partial KV block).
#[derive(Debug, Clone)]
pub struct PrefixHasher {
    buf: [u8; BLOCK_BYTES],
    filled: usize,
    prev: u64,
    total_bytes: usize,
    max_blocks: usize,
    hashes: Vec<u64>,
    /// The text fed, kept (up to a limit) for a tokenizer when asked for.
    capture: Option<Capture>,
}

/// Prompt text kept by [`PrefixHasher::with_capture`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// The bytes fed, in order, up to the limit.
    pub text: Vec<u8>,
    /// Most bytes kept.
    pub limit: usize,
    /// More bytes were fed than kept.
    pub truncated: bool,
    /// Where each chat message's role and text parts lie in `text` (fed by
    /// [`feed_message`]), for rendering the messages with the model's chat
    /// template. A span may run past the end of `text` when it was cut.
    pub spans: Vec<ChatSpan>,
}

/// One piece of a chat message inside a [`Capture`]'s text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatSpan {
    /// A message's role: a new message starts here.
    Role(std::ops::Range<usize>),
    /// One text part of the current message's content.
    Part(std::ops::Range<usize>),
}

impl PrefixHasher {
    /// A hasher whose chain starts from `seed` and keeps at most `max_blocks` hashes.
    pub fn new(seed: u64, max_blocks: usize) -> Self {
        PrefixHasher {
            buf: [0; BLOCK_BYTES],
            filled: 0,
            prev: seed,
            total_bytes: 0,
            max_blocks,
            hashes: Vec::new(),
            capture: None,
        }
    }

    /// Also keep the first `limit` bytes fed (the canonical prompt text the
    /// precise prefix policy tokenizes, see [`crate::kvindex`]).
    pub fn with_capture(mut self, limit: usize) -> Self {
        self.capture = Some(Capture {
            text: Vec::new(),
            limit,
            truncated: false,
            spans: Vec::new(),
        });
        self
    }

    /// Append a segment of prompt text.
    pub fn update(&mut self, mut data: &[u8]) {
        self.total_bytes += data.len();
        if let Some(c) = &mut self.capture {
            let room = c.limit.saturating_sub(c.text.len());
            c.text.extend_from_slice(&data[..room.min(data.len())]);
            c.truncated |= data.len() > room;
        }
        while !data.is_empty() && self.hashes.len() < self.max_blocks {
            if self.filled == 0 && data.len() >= BLOCK_BYTES {
                let (block, rest) = data.split_at(BLOCK_BYTES);
                self.push_block(block);
                data = rest;
                continue;
            }
            let take = (BLOCK_BYTES - self.filled).min(data.len());
            self.buf[self.filled..self.filled + take].copy_from_slice(&data[..take]);
            self.filled += take;
            data = &data[take..];
            if self.filled == BLOCK_BYTES {
                let block = self.buf;
                self.push_block(&block);
                self.filled = 0;
            }
        }
    }

    fn push_block(&mut self, block: &[u8]) {
        let h = xxh3_64_with_seed(block, self.prev);
        self.prev = h;
        self.hashes.push(h);
    }

    /// Append a segment and, when capturing, record where it lies.
    fn update_span(&mut self, data: &[u8], span: fn(std::ops::Range<usize>) -> ChatSpan) {
        if let Some(c) = &mut self.capture {
            let start = c.text.len();
            // Only spans that begin inside what is kept.
            if !c.truncated && (start < c.limit || data.is_empty()) {
                c.spans.push(span(start..start + data.len()));
            }
        }
        self.update(data);
    }

    /// Bytes fed so far (including any not hashed because of `max_blocks`).
    pub fn total_bytes(&self) -> usize {
        self.total_bytes
    }

    /// The chain of full-block hashes, first block first.
    pub fn finish(self) -> Vec<u64> {
        self.hashes
    }

    /// The chain and the captured text (if capturing).
    pub fn finish_with_capture(self) -> (Vec<u64>, Option<Capture>) {
        (self.hashes, self.capture)
    }
}

/// Feed one chat message the canonical way: `role`, `": "`, then the text
/// parts in order, then `"\n"`. The simulator feeds messages the same way, so
/// keep the two in step by always calling this.
pub fn feed_message<'a>(
    h: &mut PrefixHasher,
    role: &str,
    parts: impl IntoIterator<Item = &'a str>,
) {
    h.update_span(role.as_bytes(), ChatSpan::Role);
    h.update(b": ");
    for part in parts {
        h.update_span(part.as_bytes(), ChatSpan::Part);
    }
    h.update(b"\n");
}

/// Hash a whole prompt at once.
pub fn block_hashes(seed: u64, text: &[u8], max_blocks: usize) -> Vec<u64> {
    let mut h = PrefixHasher::new(seed, max_blocks);
    h.update(text);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_prefix_shares_leading_hashes() {
        let seed = seed_for_model("m");
        let common = "x".repeat(BLOCK_BYTES * 3);
        let a = block_hashes(
            seed,
            format!("{common}aaaa{}", "a".repeat(200)).as_bytes(),
            64,
        );
        let b = block_hashes(
            seed,
            format!("{common}bbbb{}", "b".repeat(200)).as_bytes(),
            64,
        );
        assert_eq!(a[..3], b[..3]);
        assert_ne!(a[3], b[3]);
    }

    #[test]
    fn segmentation_does_not_change_hashes() {
        let seed = seed_for_model("m");
        let text: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let whole = block_hashes(seed, &text, 64);
        let mut h = PrefixHasher::new(seed, 64);
        for chunk in text.chunks(7) {
            h.update(chunk);
        }
        assert_eq!(h.total_bytes(), 1000);
        assert_eq!(h.finish(), whole);
        assert_eq!(whole.len(), 1000 / BLOCK_BYTES);
    }

    #[test]
    fn model_seed_separates_prompts_and_cap_holds() {
        let text = "y".repeat(BLOCK_BYTES * 10);
        let a = block_hashes(seed_for_model("a"), text.as_bytes(), 4);
        let b = block_hashes(seed_for_model("b"), text.as_bytes(), 4);
        assert_eq!(a.len(), 4);
        assert_ne!(a[0], b[0]);
        // identical blocks at different positions hash differently (chained)
        assert_ne!(a[0], a[1]);
    }

    #[test]
    fn capture_keeps_fed_text_up_to_its_limit() {
        let mut h = PrefixHasher::new(1, 64).with_capture(10);
        feed_message(&mut h, "user", ["hello", " world"]);
        let (_, c) = h.finish_with_capture();
        let c = c.unwrap();
        assert_eq!(c.text, b"user: hell");
        assert!(c.truncated);
    }

    #[test]
    fn token_estimate_rounds_up() {
        assert_eq!(estimate_tokens(0), 0);
        assert_eq!(estimate_tokens(1), 1);
        assert_eq!(estimate_tokens(8), 2);
    }
}
