//! The model's tokenizer on the gateway: `tokenizer.json` loaded with the
//! Hugging Face `tokenizers` crate, turning a request's prompt (see
//! [`Prompt`]) into the token ids the engine will cache.
//!
//! What is tokenized, as vLLM does it: a completions prompt as it is, with
//! the tokenizer's special tokens (`add_special_tokens = true`); chat
//! messages rendered with the model's chat template (see [`ChatTemplate`])
//! and encoded without adding special tokens (the template writes them,
//! and vLLM's chat requests default to `add_special_tokens = false`). A
//! prompt of token ids is used as it is. Without a chat template, chat
//! messages are tokenized in their canonical `role: text\n` form, as the
//! simulator does when it has no template either; against a real engine
//! they then find no precise hit and the policy falls back to its
//! approximate index.

use std::path::Path;

use super::ChatTemplate;
use crate::classify::Prompt;

/// A loaded tokenizer.
pub struct PromptTokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<ChatTemplate>,
}

impl std::fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTokenizer").finish_non_exhaustive()
    }
}

impl PromptTokenizer {
    /// Load a `tokenizer.json`; the error says why it cannot be used.
    pub fn from_file(path: &Path) -> Result<PromptTokenizer, String> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| format!("cannot load tokenizer `{}`: {e}", path.display()))?;
        Ok(PromptTokenizer {
            inner,
            chat_template: None,
        })
    }

    /// Load a tokenizer from its JSON text.
    pub fn from_json(json: &str) -> Result<PromptTokenizer, String> {
        let inner = json
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| format!("cannot parse tokenizer: {e}"))?;
        Ok(PromptTokenizer {
            inner,
            chat_template: None,
        })
    }

    /// The same tokenizer rendering chat prompts with `template`.
    pub fn with_chat_template(mut self, template: Option<ChatTemplate>) -> PromptTokenizer {
        self.chat_template = template;
        self
    }

    /// The chat template chat prompts are rendered with, if any.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// Token ids of `text` with the tokenizer's special tokens.
    pub fn encode(&self, text: &str) -> Option<Vec<u32>> {
        self.encode_with(text, true)
    }

    /// Token ids of `text`, adding the tokenizer's special tokens or not.
    pub fn encode_with(&self, text: &str, add_special_tokens: bool) -> Option<Vec<u32>> {
        self.inner
            .encode(text, add_special_tokens)
            .ok()
            .map(|e| e.get_ids().to_vec())
    }

    /// Token ids of a prompt, and whether they stop short of the whole
    /// prompt (the captured text was cut: its last block is unreliable).
    /// `None` when the prompt cannot be encoded (or its template fails).
    pub fn tokens(&self, prompt: &Prompt) -> Option<(Vec<u32>, bool)> {
        match prompt {
            Prompt::Ids(ids) => Some((ids.clone(), false)),
            Prompt::Text { text, truncated } => Some((self.encode(text)?, *truncated)),
            Prompt::Chat {
                text, truncated, ..
            } => match (&self.chat_template, prompt.chat_messages()) {
                (Some(template), Some(messages)) => {
                    let rendered = template.render(&messages, *truncated)?;
                    Some((self.encode_with(&rendered, false)?, *truncated))
                }
                _ => Some((self.encode(text)?, *truncated)),
            },
        }
    }
}

/// GPT-2's byte-to-character map of byte-level BPE (printable bytes stand
/// for themselves; the others are moved to U+0100 and up).
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| {
        (u32::from(b'!')..=u32::from(b'~')).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b)
    };
    let mut next = 256u32;
    (0u32..256)
        .map(|b| {
            let c = if printable(b) {
                b
            } else {
                next += 1;
                next - 1
            };
            char::from_u32(c).unwrap_or('?')
        })
        .collect()
}

/// A byte-level BPE `tokenizer.json` (GPT-2 style: every byte is a token,
/// so any text encodes) whose pre-tokenizer cuts each word, with its leading
/// space, into pieces of up to 4 characters, and whose vocabulary holds
/// every such piece of `words` (looked up whole: `ignore_merges`). That is
/// about the 4 bytes a token of real English BPE, which the simulator's
/// cost model assumes. The simulated fleet of `infergate bench` and the
/// tests give it to both the gateway and the simulator, the way a real
/// deployment gives both the model's tokenizer.
pub fn byte_level_bpe_json(words: &[&str]) -> String {
    const PIECE: usize = 4;
    let chars = byte_chars();
    let mut vocab: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
    let mut known: std::collections::HashSet<String> = vocab.iter().cloned().collect();
    for word in words {
        for spaced in [false, true] {
            let mut pieces: Vec<char> = Vec::new();
            if spaced {
                pieces.push(chars[usize::from(b' ')]);
            }
            pieces.extend(word.bytes().map(|b| chars[usize::from(b)]));
            for chunk in pieces.chunks(PIECE) {
                let token: String = chunk.iter().collect();
                if known.insert(token.clone()) {
                    vocab.push(token);
                }
            }
        }
    }
    let vocab: serde_json::Map<String, serde_json::Value> = vocab
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, serde_json::Value::from(i)))
        .collect();
    let byte_level = serde_json::json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
    });
    let pieces = serde_json::json!({
        "type": "Split", "pattern": {"Regex": "(?s).{1,4}"}, "behavior": "Isolated", "invert": false
    });
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [byte_level, pieces]},
        "post_processor": null,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": true,
            "vocab": vocab, "merges": []
        }
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_tokenizer_cuts_words_into_short_pieces_and_encodes_any_text() {
        let t = PromptTokenizer::from_json(&byte_level_bpe_json(&["cache", "prefix"])).unwrap();
        // Pieces of at most 4 characters: "cach|e", " pre|fix", " cac|he".
        let ids = t.encode("cache").unwrap();
        assert_eq!(ids.len(), 2, "{ids:?}");
        let all = t.encode("cache prefix cache").unwrap();
        assert_eq!(all.len(), 6, "{all:?}");
        assert_eq!(all[..2], ids[..]);
        assert_ne!(all[4], ids[0]);
        // Unknown text falls back to bytes, never to an unknown token.
        let other = t.encode("zz\u{e9}").unwrap();
        assert_eq!(other.len(), 4);
        let p = Prompt::Text {
            text: "cache".into(),
            truncated: true,
        };
        assert_eq!(t.tokens(&p), Some((ids, true)));
        assert_eq!(
            t.tokens(&Prompt::Ids(vec![5, 6])),
            Some((vec![5, 6], false))
        );
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let e = PromptTokenizer::from_file(Path::new("/nonexistent/tokenizer.json")).unwrap_err();
        assert!(e.contains("/nonexistent/tokenizer.json"), "{e}");
    }
}
