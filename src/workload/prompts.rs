//! Deterministic prompt text for the workload.

const WORDS: &[&str] = &[
    "cluster",
    "latency",
    "token",
    "batch",
    "cache",
    "prefix",
    "gateway",
    "model",
    "request",
    "stream",
    "node",
    "queue",
    "policy",
    "weight",
    "health",
    "drain",
    "route",
    "pool",
    "prefill",
    "decode",
    "memory",
    "block",
    "schedule",
    "throughput",
    "balance",
    "replica",
    "shard",
    "tensor",
    "kernel",
    "vector",
];

/// Every word the workload's prompts are made of (besides numbers and
/// punctuation): the vocabulary of the simulated fleet's tokenizer
/// ([`crate::kvindex::tokenizer::byte_level_bpe_json`]).
pub fn vocabulary() -> Vec<&'static str> {
    let mut words = WORDS.to_vec();
    words.extend([
        "You",
        "are",
        "assistant",
        "Follow",
        "these",
        "operating",
        "notes",
        "user",
        "system",
    ]);
    words
}

/// The simulated fleet's `tokenizer.json` (byte-level BPE over the
/// workload's vocabulary), for gateways and nodes alike.
pub fn fleet_tokenizer_json() -> String {
    crate::kvindex::tokenizer::byte_level_bpe_json(&vocabulary())
}

/// `bytes` bytes (about) of pseudo-random words from `rng`.
pub fn words(rng: &mut fastrand::Rng, bytes: usize) -> String {
    let mut text = String::with_capacity(bytes + 16);
    while text.len() < bytes {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(WORDS[rng.usize(..WORDS.len())]);
    }
    text
}

/// The `index`-th shared system prompt, `bytes` long.
pub fn system_prompt(seed: u64, index: usize, bytes: usize) -> String {
    let mut rng =
        fastrand::Rng::with_seed(seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    format!(
        "You are assistant #{index}. Follow these operating notes: {}",
        words(&mut rng, bytes)
    )
}
