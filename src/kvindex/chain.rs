//! The gateway's own block keys: a hash chain over token ids.
//!
//! vLLM's block hash is `H(parent_hash, block_token_ids, extra_keys)` with
//! `H` chosen by `--prefix-caching-hash-algo` (`sha256`: pickle-based and so
//! only reproducible inside Python; `sha256_cbor`/`xxhash_cbor`: CBOR) and
//! the chain rooted at `NONE_HASH`, which is random per process unless
//! `PYTHONHASHSEED` is set. Rather than depend on all of that, the gateway
//! keys blocks by its own chain over the same inputs — the token ids the
//! engine reports in `BlockStored` and the ids it gets from tokenizing the
//! prompt — and remembers, per node, which engine hash stands for which key
//! (llm-d's KV-cache indexer does the same). The engine's hashes are only
//! ever compared with the engine's own hashes.
//!
//! Key of block `k`: `xxh3_64(le_bytes(tokens of block k) ‖ extra, seed =
//! key of block k-1)`, block `-1` being [`root`] of the LoRA adapter name.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The chain's root for prompts run with `lora` (or the base model).
pub fn root(lora: Option<&str>) -> u64 {
    xxh3_64_with_seed(lora.unwrap_or("").as_bytes(), 0x6b76_696e_6465_7801)
}

/// Key of one block of `tokens` after the block keyed `parent`; `extra` is
/// the hash of the block's extra keys, if it has any.
pub fn block_key(parent: u64, tokens: &[u32], extra: Option<u64>) -> u64 {
    let mut buf = Vec::with_capacity(tokens.len() * 4 + 8);
    for t in tokens {
        buf.extend_from_slice(&t.to_le_bytes());
    }
    if let Some(e) = extra {
        buf.extend_from_slice(&e.to_le_bytes());
    }
    xxh3_64_with_seed(&buf, parent)
}

/// Keys of the full blocks of a prompt's `tokens` (a trailing partial block
/// has none, as in vLLM), at most `max_blocks`.
pub fn prompt_keys(root: u64, tokens: &[u32], block_size: usize, max_blocks: usize) -> Vec<u64> {
    let mut prev = root;
    tokens
        .chunks_exact(block_size.max(1))
        .take(max_blocks)
        .map(|block| {
            prev = block_key(prev, block, None);
            prev
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_share_leading_keys_and_drop_partial_blocks() {
        let r = root(None);
        let a: Vec<u32> = (0..40).collect();
        let mut b = a.clone();
        b[20] = 999;
        let ka = prompt_keys(r, &a, 16, 64);
        let kb = prompt_keys(r, &b, 16, 64);
        assert_eq!(ka.len(), 2);
        assert_eq!(ka[0], kb[0]);
        assert_ne!(ka[1], kb[1]);
        assert_ne!(prompt_keys(root(Some("x")), &a, 16, 64)[0], ka[0]);
        assert_eq!(prompt_keys(r, &a, 16, 1).len(), 1);
    }
}
