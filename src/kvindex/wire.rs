//! vLLM's KV-cache event wire format (`vllm/distributed/kv_events.py`):
//! decoding what an engine publishes, and encoding it (for the simulator).
//!
//! One ZMQ message has three frames: the topic (UTF-8, often empty), the
//! sequence number (8 bytes, big-endian, counting from 0 per publisher
//! process) and the payload: a msgpack-encoded `KVEventBatch` written by
//! msgspec. Over vLLM's releases the layout has changed, so decoding accepts
//! every layout seen (as llm-d and the SGLang gateway do):
//!
//! * batch: an array `[ts, events]` or `[ts, events, data_parallel_rank]`
//!   (`array_like=True`), or a map `{"ts", "events", "data_parallel_rank"}`;
//! * each event: a tagged array `["BlockStored", block_hashes,
//!   parent_block_hash, token_ids, block_size, lora_id, medium, lora_name,
//!   extra_keys, ...]` (older releases), or a tagged map
//!   `{"type": "BlockStored", "block_hashes": …}` (current releases);
//! * a block hash: an integer (`VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1`, the
//!   low 64 bits of the digest) or the raw digest bytes (its last 8 bytes,
//!   big-endian, are taken — the same 64 bits).
//!
//! Unknown event types, unknown fields and malformed events are skipped and
//! counted, never fatal: one bad event must not lose a batch.

use rmpv::Value;

/// One KV-cache event of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvEvent {
    /// Full blocks became cached. `block_hashes[i]` holds the tokens
    /// `token_ids[i*block_size..(i+1)*block_size]`; the first block's
    /// parent is `parent` (`None`: the start of a prompt).
    Stored {
        /// The engine's hashes of the stored blocks, in prompt order.
        block_hashes: Vec<u64>,
        /// The engine's hash of the block before the first one.
        parent: Option<u64>,
        /// Token ids of all stored blocks, concatenated.
        token_ids: Vec<u32>,
        /// Tokens per block.
        block_size: u32,
        /// LoRA adapter the blocks were computed with.
        lora_name: Option<String>,
        /// Storage tier (`None` or `"GPU"`: device memory).
        medium: Option<String>,
        /// Per block: a hash of its extra keys (multimodal inputs, cache
        /// salt, prompt embeddings) when it has any besides the LoRA name.
        extra: Vec<Option<u64>>,
    },
    /// Blocks were evicted.
    Removed {
        /// The engine's hashes of the removed blocks.
        block_hashes: Vec<u64>,
        /// Storage tier.
        medium: Option<String>,
    },
    /// The whole cache was reset.
    AllCleared,
}

/// A decoded batch: its events plus how many were skipped as malformed or unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Events in order.
    pub events: Vec<KvEvent>,
    /// Events skipped.
    pub skipped: usize,
}

/// Why a payload could not be decoded at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not msgpack.
    #[error("payload is not msgpack: {0}")]
    NotMsgpack(String),
    /// msgpack, but not a batch.
    #[error("payload is not an event batch")]
    NotABatch,
}

/// Decode a payload frame.
pub fn decode_batch(payload: &[u8]) -> Result<Batch, WireError> {
    let mut rd = payload;
    let v = rmpv::decode::read_value_with_max_depth(&mut rd, 16)
        .map_err(|e| WireError::NotMsgpack(e.to_string()))?;
    let events = match &v {
        Value::Array(items) if items.len() >= 2 => items.get(1),
        Value::Map(_) => map_get(&v, "events"),
        _ => None,
    };
    let Some(Value::Array(events)) = events else {
        return Err(WireError::NotABatch);
    };
    let mut batch = Batch::default();
    for e in events {
        match decode_event(e) {
            Some(ev) => batch.events.push(ev),
            None => batch.skipped += 1,
        }
    }
    Ok(batch)
}

fn map_get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v),
        _ => None,
    }
}

/// Field `name` of an event, at `pos` (after the tag) in the array layout.
fn field<'a>(v: &'a Value, pos: usize, name: &str) -> Option<&'a Value> {
    match v {
        Value::Array(items) => items.get(pos + 1),
        Value::Map(_) => map_get(v, name),
        _ => None,
    }
    .filter(|v| !v.is_nil())
}

fn hash(v: &Value) -> Option<u64> {
    match v {
        Value::Integer(i) => i.as_u64().or_else(|| i.as_i64().map(|n| n as u64)),
        Value::Binary(b) if !b.is_empty() => {
            let tail = &b[b.len().saturating_sub(8)..];
            Some(tail.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
        }
        _ => None,
    }
}

fn hashes(v: Option<&Value>) -> Option<Vec<u64>> {
    match v? {
        Value::Array(items) => items.iter().map(hash).collect(),
        _ => None,
    }
}

fn string(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_string)
}

fn decode_event(v: &Value) -> Option<KvEvent> {
    let tag = match v {
        Value::Array(items) => items.first()?.as_str()?,
        Value::Map(_) => map_get(v, "type")?.as_str()?,
        _ => return None,
    };
    match tag {
        "BlockStored" => {
            let block_hashes = hashes(field(v, 0, "block_hashes"))?;
            let parent = match field(v, 1, "parent_block_hash") {
                None => None,
                Some(p) => Some(hash(p)?),
            };
            let token_ids = match field(v, 2, "token_ids")? {
                Value::Array(items) => items
                    .iter()
                    .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
                    .collect::<Option<Vec<u32>>>()?,
                _ => return None,
            };
            let block_size = u32::try_from(field(v, 3, "block_size")?.as_u64()?).ok()?;
            let medium = string(field(v, 5, "medium"));
            let lora_name = string(field(v, 6, "lora_name"));
            let extra = match field(v, 7, "extra_keys") {
                Some(Value::Array(keys)) => keys
                    .iter()
                    .map(|k| extra_hash(k, lora_name.as_deref()))
                    .collect(),
                _ => Vec::new(),
            };
            Some(KvEvent::Stored {
                block_hashes,
                parent,
                token_ids,
                block_size,
                lora_name,
                medium,
                extra,
            })
        }
        "BlockRemoved" => Some(KvEvent::Removed {
            block_hashes: hashes(field(v, 0, "block_hashes"))?,
            medium: string(field(v, 1, "medium")),
        }),
        "AllBlocksCleared" => Some(KvEvent::AllCleared),
        _ => None,
    }
}

/// A block's extra keys other than the LoRA name, hashed; `None` when it
/// has none (nil, empty, or only the LoRA name), so plain text prompts match.
fn extra_hash(keys: &Value, lora: Option<&str>) -> Option<u64> {
    let Value::Array(items) = keys else {
        return None;
    };
    let rest: Vec<&Value> = items
        .iter()
        .filter(|k| !(lora.is_some() && k.as_str() == lora))
        .collect();
    if rest.is_empty() {
        return None;
    }
    let mut buf = Vec::new();
    for k in rest {
        // Writing to a Vec cannot fail.
        let _ = rmpv::encode::write_value(&mut buf, k);
    }
    Some(xxhash_rust::xxh3::xxh3_64(&buf))
}

/// Encode a batch as current vLLM does: `[ts, events, data_parallel_rank]`
/// with each event a map tagged by `"type"` (msgspec `omit_defaults`: only
/// fields that are set, plus the required ones).
pub fn encode_batch(ts: f64, events: &[KvEvent], dp_rank: Option<i64>) -> Vec<u8> {
    let s = |t: &str| Value::from(t);
    let list = |hs: &[u64]| Value::Array(hs.iter().map(|&h| Value::from(h)).collect());
    let opt = |o: &Option<String>| o.as_deref().map_or(Value::Nil, Value::from);
    let evs: Vec<Value> = events
        .iter()
        .map(|e| match e {
            KvEvent::Stored {
                block_hashes,
                parent,
                token_ids,
                block_size,
                lora_name,
                medium,
                extra: _,
            } => Value::Map(vec![
                (s("type"), s("BlockStored")),
                (s("block_hashes"), list(block_hashes)),
                (
                    s("parent_block_hash"),
                    parent.map_or(Value::Nil, Value::from),
                ),
                (
                    s("token_ids"),
                    Value::Array(token_ids.iter().map(|&t| Value::from(t)).collect()),
                ),
                (s("block_size"), Value::from(*block_size)),
                (s("lora_id"), Value::Nil),
                (s("medium"), opt(medium)),
                (s("lora_name"), opt(lora_name)),
            ]),
            KvEvent::Removed {
                block_hashes,
                medium,
            } => Value::Map(vec![
                (s("type"), s("BlockRemoved")),
                (s("block_hashes"), list(block_hashes)),
                (s("medium"), opt(medium)),
            ]),
            KvEvent::AllCleared => Value::Map(vec![(s("type"), s("AllBlocksCleared"))]),
        })
        .collect();
    let mut batch = vec![Value::F64(ts), Value::Array(evs)];
    if let Some(rank) = dp_rank {
        batch.push(Value::from(rank));
    }
    let mut buf = Vec::with_capacity(64 + 16 * events.len());
    let _ = rmpv::encode::write_value(&mut buf, &Value::Array(batch));
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: Value) -> Vec<u8> {
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, &v).unwrap();
        buf
    }

    #[test]
    fn legacy_array_layout_decodes() {
        // What vLLM 0.9 published: array batch, array events, tag first.
        let payload = enc(Value::Array(vec![
            Value::F64(1.5),
            Value::Array(vec![
                Value::Array(vec![
                    "BlockStored".into(),
                    Value::Array(vec![Value::from(7u64), Value::from(u64::MAX)]),
                    Value::Nil,
                    Value::Array((0..8).map(Value::from).collect()),
                    Value::from(4),
                    Value::Nil,
                ]),
                Value::Array(vec![
                    "BlockRemoved".into(),
                    Value::Array(vec![Value::from(7u64)]),
                ]),
                Value::Array(vec!["AllBlocksCleared".into()]),
                Value::Array(vec!["BlockMigrated".into(), Value::Nil]),
            ]),
        ]));
        let b = decode_batch(&payload).unwrap();
        assert_eq!(b.skipped, 1);
        assert_eq!(b.events.len(), 3);
        match &b.events[0] {
            KvEvent::Stored {
                block_hashes,
                parent,
                token_ids,
                block_size,
                ..
            } => {
                assert_eq!(block_hashes, &[7, u64::MAX]);
                assert_eq!(*parent, None);
                assert_eq!(token_ids.len(), 8);
                assert_eq!(*block_size, 4);
            }
            e => panic!("{e:?}"),
        }
        assert_eq!(b.events[2], KvEvent::AllCleared);
    }

    #[test]
    fn map_layout_and_byte_hashes_decode() {
        let digest: Vec<u8> = (0u8..32).collect();
        let payload = enc(Value::Map(vec![
            ("ts".into(), Value::F64(2.0)),
            (
                "events".into(),
                Value::Array(vec![Value::Map(vec![
                    ("type".into(), "BlockStored".into()),
                    (
                        "block_hashes".into(),
                        Value::Array(vec![Value::Binary(digest.clone())]),
                    ),
                    ("parent_block_hash".into(), Value::from(-1i64)),
                    (
                        "token_ids".into(),
                        Value::Array((0..4).map(Value::from).collect()),
                    ),
                    ("block_size".into(), Value::from(4)),
                    ("lora_name".into(), "ad".into()),
                    (
                        "extra_keys".into(),
                        Value::Array(vec![Value::Array(vec!["ad".into(), "salt".into()])]),
                    ),
                ])]),
            ),
        ]));
        let b = decode_batch(&payload).unwrap();
        let KvEvent::Stored {
            block_hashes,
            parent,
            lora_name,
            extra,
            ..
        } = &b.events[0]
        else {
            panic!()
        };
        assert_eq!(
            block_hashes[0],
            u64::from_be_bytes(digest[24..].try_into().unwrap())
        );
        assert_eq!(*parent, Some(u64::MAX));
        assert_eq!(lora_name.as_deref(), Some("ad"));
        assert!(extra[0].is_some());
    }

    #[test]
    fn encode_round_trips_and_garbage_is_refused() {
        let events = vec![
            KvEvent::Stored {
                block_hashes: vec![1, 2],
                parent: Some(9),
                token_ids: (0..32).collect(),
                block_size: 16,
                lora_name: None,
                medium: Some("GPU".into()),
                extra: Vec::new(),
            },
            KvEvent::Removed {
                block_hashes: vec![1],
                medium: Some("GPU".into()),
            },
            KvEvent::AllCleared,
        ];
        let b = decode_batch(&encode_batch(3.0, &events, Some(0))).unwrap();
        assert_eq!(b.events, events);
        assert_eq!(b.skipped, 0);
        assert!(decode_batch(b"\xc1").is_err());
        assert_eq!(
            decode_batch(&enc(Value::from(3))),
            Err(WireError::NotABatch)
        );
    }
}
