use http::{HeaderMap, Method};

use super::*;
use crate::classify::prefix::{block_hashes, BLOCK_BYTES};
use crate::classify::{classify_head, ApiFamily, Priority, PRIORITY_HEADER};

fn head_for(path: &str) -> Head {
    classify_head(&Method::POST, path, (&HeaderMap::new()).into())
}

fn classify(path: &str, body: &str) -> Result<RequestClass, ClassifyError> {
    classify_body(head_for(path), body.as_bytes(), &ClassifyOptions::default())
}

fn ok(path: &str, body: &str) -> RequestClass {
    classify(path, body).unwrap_or_else(|e| panic!("{path} {body}: {e}"))
}

fn err(path: &str, body: &str) -> String {
    match classify(path, body) {
        Ok(c) => panic!("{path} {body}: expected error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

/// The fingerprint of messages fed the canonical way.
fn chat_fp(model: &str, msgs: &[(&str, &[&str])]) -> (Vec<u64>, usize) {
    let mut h = PrefixHasher::new(seed_for_model(model), 256);
    for (role, parts) in msgs {
        feed_message(&mut h, role, parts.iter().copied());
    }
    let n = h.total_bytes();
    (h.finish(), n)
}

#[test]
fn chat_extraction() {
    let sys = "s".repeat(300);
    let body = format!(
        r#"{{"model":"llama","stream":true,"max_tokens":128,"temperature":0.2,
            "stream_options":{{"include_usage":true}},
            "messages":[{{"role":"system","content":"{sys}"}},
                        {{"role":"user","content":"hello there"}},
                        {{"role":"assistant","content":null,"tool_calls":[{{"id":"x"}}]}},
                        {{"role":"tool","content":[{{"type":"text","text":"42"}}]}}]}}"#
    );
    let c = ok("/v1/chat/completions", &body);
    assert_eq!(c.family, ApiFamily::OpenAi);
    assert_eq!(c.endpoint, Endpoint::ChatCompletions);
    assert_eq!(c.model.as_deref(), Some("llama"));
    assert!(c.stream);
    assert_eq!(c.max_tokens, Some(128));
    let (fp, bytes) = chat_fp(
        "llama",
        &[
            ("system", &[&sys]),
            ("user", &["hello there"]),
            ("assistant", &[]),
            ("tool", &["42"]),
        ],
    );
    assert_eq!(c.prefix, fp);
    assert_eq!(c.prefix.len(), bytes / BLOCK_BYTES);
    assert_eq!(c.prompt_tokens, estimate_tokens(bytes));
    assert_eq!(c.priority, Priority::Standard);
}

#[test]
fn chat_defaults_and_limits() {
    let c = ok("/v1/chat/completions", r#"{"messages":[]}"#);
    assert_eq!(c.model, None);
    assert!(!c.stream);
    assert_eq!(c.max_tokens, None);
    assert_eq!(c.prompt_tokens, 0);
    assert!(c.prefix.is_empty());
    let c = ok(
        "/v1/chat/completions",
        r#"{"model":"m","max_completion_tokens":7,"max_tokens":9,"messages":[]}"#,
    );
    assert_eq!(c.max_tokens, Some(7));
    let c = ok("/v1/chat/completions", r#"{"max_tokens":9,"stream":null}"#);
    assert_eq!(c.max_tokens, Some(9));
    assert!(!c.stream);
    let c = ok("/v1/chat/completions", r#"{"max_tokens":100.0}"#);
    assert_eq!(c.max_tokens, Some(100));
    let c = ok("/v1/chat/completions", r#"{"max_tokens":99999999999}"#);
    assert_eq!(c.max_tokens, Some(u32::MAX));
}

#[test]
fn shared_system_prompt_shares_leading_hashes() {
    let sys = "You are a helpful assistant. ".repeat(40); // ~1.2 KB
    let a = ok(
        "/v1/chat/completions",
        &format!(
            r#"{{"model":"m","messages":[{{"role":"system","content":"{sys}"}},{{"role":"user","content":"{}"}}]}}"#,
            "a".repeat(300)
        ),
    );
    let b = ok(
        "/v1/chat/completions",
        &format!(
            r#"{{"messages":[{{"role":"system","content":"{sys}"}},{{"role":"user","content":"{}"}}],"model":"m"}}"#,
            "b".repeat(300)
        ),
    );
    let shared = ("system: ".len() + sys.len() + "\nuser: ".len()) / BLOCK_BYTES;
    assert!(shared >= 10);
    assert_eq!(a.prefix.len(), b.prefix.len());
    assert_eq!(a.prefix[..shared], b.prefix[..shared]);
    assert_ne!(a.prefix[shared], b.prefix[shared]);
    assert_ne!(a.prefix.last(), b.prefix.last());
    // A different model never shares.
    let c = ok(
        "/v1/chat/completions",
        &format!(r#"{{"model":"other","messages":[{{"role":"system","content":"{sys}"}}]}}"#),
    );
    assert_ne!(a.prefix[0], c.prefix[0]);
}

#[test]
fn content_string_and_parts_fingerprint_alike() {
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(10);
    let half = text.len() / 2;
    let (t1, t2) = text.split_at(half);
    let s = ok(
        "/v1/chat/completions",
        &format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{text}"}}]}}"#),
    );
    let p = ok(
        "/v1/chat/completions",
        &format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":[
                {{"type":"text","text":"{t1}"}},
                {{"type":"image_url","image_url":{{"url":"data:image/png;base64,AAAA"}}}},
                {{"text":"{t2}","type":"text"}}]}}]}}"#
        ),
    );
    assert!(!s.prefix.is_empty());
    assert_eq!(s.prefix, p.prefix);
    assert_eq!(s.prompt_tokens, p.prompt_tokens);
}

#[test]
fn json_escapes_are_decoded() {
    let c = ok(
        "/v1/chat/completions",
        r#"{"model":"caf\u00e9","messages":[{"role":"user","content":"line1\nline2 caf\u00e9 \"q\" \ud83d\ude00"}]}"#,
    );
    assert_eq!(c.model.as_deref(), Some("café"));
    let text = "line1\nline2 café \"q\" 😀";
    let mut h = PrefixHasher::new(seed_for_model("café"), 256);
    feed_message(&mut h, "user", [text]);
    assert_eq!(c.prompt_tokens, estimate_tokens(h.total_bytes()));
    // Long enough to hash blocks: compare with the unescaped text.
    let long = "x\\u00e9\\n".repeat(40);
    let c = ok(
        "/v1/completions",
        &format!(r#"{{"model":"m","prompt":"{long}"}}"#),
    );
    let plain = "xé\n".repeat(40);
    assert_eq!(
        c.prefix,
        block_hashes(seed_for_model("m"), plain.as_bytes(), 256)
    );
    assert_eq!(c.prompt_tokens, estimate_tokens(plain.len()));
}

#[test]
fn completions_prompts() {
    let c = ok(
        "/v1/completions",
        r#"{"model":"m","prompt":"abcd","max_tokens":5,"stream":true}"#,
    );
    assert_eq!(c.endpoint, Endpoint::Completions);
    assert_eq!(c.model.as_deref(), Some("m"));
    assert!(c.stream);
    assert_eq!(c.max_tokens, Some(5));
    assert_eq!(c.prompt_tokens, 1);

    let a = "a".repeat(BLOCK_BYTES);
    let b = "b".repeat(BLOCK_BYTES + 10);
    let c = ok(
        "/v1/completions",
        &format!(r#"{{"model":"m","prompt":["{a}","{b}"]}}"#),
    );
    let want = block_hashes(seed_for_model("m"), format!("{a}{b}").as_bytes(), 256);
    assert_eq!(c.prefix, want);
    assert_eq!(c.prefix.len(), 2);
    assert_eq!(c.prompt_tokens, estimate_tokens(a.len() + b.len()));
    assert!(!c.stream);

    // Token ids: count ids, hash u32 little-endian bytes.
    let ids: Vec<u32> = (0..40).collect();
    let list = ids
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let c = ok(
        "/v1/completions",
        &format!(r#"{{"model":"m","prompt":[{list}]}}"#),
    );
    assert_eq!(c.prompt_tokens, 40);
    let bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
    assert_eq!(c.prefix, block_hashes(seed_for_model("m"), &bytes, 256));
    assert_eq!(c.prefix.len(), 160 / BLOCK_BYTES);
    // Array of arrays: same ids split in two, same fingerprint and count.
    let (l, r) = ids.split_at(17);
    let j = |v: &[u32]| {
        v.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let c2 = ok(
        "/v1/completions",
        &format!(r#"{{"model":"m","prompt":[[{}],[{}]]}}"#, j(l), j(r)),
    );
    assert_eq!(c2.prefix, c.prefix);
    assert_eq!(c2.prompt_tokens, 40);

    let e = err("/v1/completions", r#"{"prompt":[1,-2]}"#);
    assert!(e.contains("`prompt[1]`"), "{e}");
    let e = err("/v1/completions", r#"{"prompt":[[1],[2,"x"]]}"#);
    assert!(e.contains("`prompt[1][1]`"), "{e}");
    let e = err("/v1/completions", r#"{"prompt":5}"#);
    assert!(e.starts_with("`prompt` must be"), "{e}");
}

#[test]
fn embeddings_input() {
    let c = ok(
        "/v1/embeddings",
        r#"{"model":"bge","input":["hello","world"],"stream":true,"max_tokens":3}"#,
    );
    assert_eq!(c.endpoint, Endpoint::Embeddings);
    assert_eq!(c.model.as_deref(), Some("bge"));
    assert!(!c.stream);
    assert_eq!(c.max_tokens, None);
    assert_eq!(c.prompt_tokens, estimate_tokens(10));
    assert!(c.prefix.is_empty());
    let c = ok("/v1/embeddings", r#"{"model":"bge","input":[[1,2,3],[4]]}"#);
    assert_eq!(c.prompt_tokens, 4);
    let long = "e".repeat(BLOCK_BYTES * 3);
    let c = ok("/v1/embeddings", &format!(r#"{{"input":"{long}"}}"#));
    assert_eq!(c.prefix.len(), 3);
    assert_eq!(
        c.prefix,
        block_hashes(seed_for_model(""), long.as_bytes(), 256)
    );
    let e = err("/v1/embeddings", r#"{"input":{"text":"x"}}"#);
    assert!(e.starts_with("`input` must be"), "{e}");
}

#[test]
fn rerank_query_and_documents() {
    let q = "q".repeat(BLOCK_BYTES);
    let d1 = "d".repeat(BLOCK_BYTES);
    let body = format!(
        r#"{{"model":"rr","query":"{q}","documents":["{d1}",{{"text":"tail","id":3}}],"top_n":2}}"#
    );
    for path in ["/v1/rerank", "/rerank", "/v2/rerank"] {
        let c = ok(path, &body);
        assert_eq!(c.endpoint, Endpoint::Rerank);
        assert_eq!(c.model.as_deref(), Some("rr"));
        assert!(!c.stream);
        let text = format!("{q}{d1}tail");
        assert_eq!(
            c.prefix,
            block_hashes(seed_for_model("rr"), text.as_bytes(), 256)
        );
        assert_eq!(c.prefix.len(), 2);
        assert_eq!(c.prompt_tokens, estimate_tokens(text.len()));
    }
    let e = err("/v1/rerank", r#"{"query":"x","documents":["a",7]}"#);
    assert_eq!(
        e,
        "`documents[1]` must be a string or an object with `text`"
    );
}

#[test]
fn responses_instructions_and_input() {
    let instr = "i".repeat(100);
    let c = ok(
        "/v1/responses",
        &format!(
            r#"{{"model":"gpt","instructions":"{instr}","input":"hi","max_output_tokens":64,"stream":true}}"#
        ),
    );
    assert_eq!(c.endpoint, Endpoint::Responses);
    assert_eq!(c.model.as_deref(), Some("gpt"));
    assert!(c.stream);
    assert_eq!(c.max_tokens, Some(64));
    let (fp, n) = chat_fp("gpt", &[("system", &[&instr]), ("user", &["hi"])]);
    assert_eq!(c.prefix, fp);
    assert_eq!(c.prompt_tokens, estimate_tokens(n));

    let c = ok(
        "/v1/responses",
        &format!(
            r#"{{"model":"gpt","instructions":"{instr}","input":[
                {{"role":"user","content":"hi"}},
                {{"type":"function_call_output","call_id":"c","output":"zzz"}},
                {{"type":"message","role":"assistant","content":[{{"type":"output_text","text":"yo"}}]}},
                {{"role":"user","content":[{{"type":"input_text","text":"again"}},{{"type":"input_image","image_url":"x"}}]}}]}}"#
        ),
    );
    assert!(!c.stream);
    let (fp, n) = chat_fp(
        "gpt",
        &[
            ("system", &[&instr]),
            ("user", &["hi"]),
            ("assistant", &["yo"]),
            ("user", &["again"]),
        ],
    );
    assert_eq!(c.prefix, fp);
    assert_eq!(c.prompt_tokens, estimate_tokens(n));
}

#[test]
fn tgi_generate() {
    let inputs = "t".repeat(BLOCK_BYTES * 2 + 5);
    let body = format!(
        r#"{{"inputs":"{inputs}","parameters":{{"max_new_tokens":20,"temperature":0.5}}}}"#
    );
    let c = ok("/generate", &body);
    assert_eq!(c.family, ApiFamily::Tgi);
    assert_eq!(c.endpoint, Endpoint::TgiGenerate);
    assert_eq!(c.model, None);
    assert!(!c.stream);
    assert_eq!(c.max_tokens, Some(20));
    assert_eq!(
        c.prefix,
        block_hashes(seed_for_model(""), inputs.as_bytes(), 256)
    );
    assert_eq!(c.prompt_tokens, estimate_tokens(inputs.len()));
    let c = ok("/generate_stream", &body);
    assert!(c.stream);
    let c = ok(
        "/generate_stream",
        r#"{"inputs":"x","model":"tgi-m","stream":false}"#,
    );
    assert!(c.stream);
    assert_eq!(c.model.as_deref(), Some("tgi-m"));
    let e = err(
        "/generate",
        r#"{"inputs":"x","parameters":{"max_new_tokens":"5"}}"#,
    );
    assert_eq!(e, "`parameters.max_new_tokens` must be an integer");
}

#[test]
fn ollama_endpoints() {
    // generate: system first as a message, then the prompt raw; stream defaults to true.
    let c = ok(
        "/api/generate",
        r#"{"model":"llama3","system":"be brief","prompt":"why is the sky blue","options":{"num_predict":50}}"#,
    );
    assert_eq!(c.family, ApiFamily::Ollama);
    assert_eq!(c.endpoint, Endpoint::OllamaGenerate);
    assert_eq!(c.model.as_deref(), Some("llama3"));
    assert!(c.stream);
    assert_eq!(c.max_tokens, Some(50));
    let mut h = PrefixHasher::new(seed_for_model("llama3"), 256);
    feed_message(&mut h, "system", ["be brief"]);
    h.update(b"why is the sky blue");
    assert_eq!(c.prompt_tokens, estimate_tokens(h.total_bytes()));
    assert_eq!(c.prefix, h.finish());

    let c = ok(
        "/api/generate",
        r#"{"model":"llama3","prompt":"x","stream":false}"#,
    );
    assert!(!c.stream);
    let c = ok(
        "/api/generate",
        r#"{"model":"llama3","options":{"num_predict":-1}}"#,
    );
    assert_eq!(c.max_tokens, None);

    // chat: like OpenAI, stream default true.
    let long = "c".repeat(200);
    let c = ok(
        "/api/chat",
        &format!(
            r#"{{"model":"llama3","messages":[{{"role":"user","content":"{long}","images":[]}}]}}"#
        ),
    );
    assert_eq!(c.endpoint, Endpoint::OllamaChat);
    assert!(c.stream);
    let (fp, n) = chat_fp("llama3", &[("user", &[&long])]);
    assert_eq!(c.prefix, fp);
    assert_eq!(c.prompt_tokens, estimate_tokens(n));
    let c = ok(
        "/api/chat",
        r#"{"model":"llama3","messages":[],"stream":false}"#,
    );
    assert!(!c.stream);

    // embed: input string/array, or legacy prompt; never streams.
    let c = ok("/api/embed", r#"{"model":"nomic","input":["ab","cd"]}"#);
    assert_eq!(c.endpoint, Endpoint::OllamaEmbed);
    assert!(!c.stream);
    assert_eq!(c.prompt_tokens, 1);
    let c = ok(
        "/api/embeddings",
        r#"{"model":"nomic","prompt":"abcdefgh"}"#,
    );
    assert_eq!(c.prompt_tokens, 2);
    assert_eq!(c.model.as_deref(), Some("nomic"));
}

#[test]
fn kserve_and_non_body_endpoints_use_head_only() {
    let h = head_for("/v2/models/resnet/versions/2/infer");
    assert!(!h.parse_body);
    let c = classify_body(h, b"\x00not json", &ClassifyOptions::default()).unwrap();
    assert_eq!(c.endpoint, Endpoint::KServeInfer);
    assert_eq!(c.model.as_deref(), Some("resnet"));
    assert!(c.prefix.is_empty());
    let c = classify_body(head_for("/v1/models"), b"", &ClassifyOptions::default()).unwrap();
    assert_eq!(c.endpoint, Endpoint::Models);
}

#[test]
fn model_falls_back_to_path_and_priority_comes_from_head() {
    let mut head = head_for("/v1/chat/completions");
    head.path_model = Some("from-path".into());
    head.asked_priority = Some(Priority::Critical);
    let c = classify_body(head.clone(), br#"{"messages":[]}"#, &Default::default()).unwrap();
    assert_eq!(c.model.as_deref(), Some("from-path"));
    assert_eq!(c.asked_priority, Some(Priority::Critical));
    assert_eq!(c.priority, Priority::Standard, "the route decides");
    let c = classify_body(head, br#"{"model":"body"}"#, &Default::default()).unwrap();
    assert_eq!(c.model.as_deref(), Some("body"));

    let mut headers = HeaderMap::new();
    headers.insert(PRIORITY_HEADER, "sheddable".parse().unwrap());
    let h = classify_head(&Method::POST, "/v1/completions", (&headers).into());
    let c = classify_body(h, br#"{"prompt":"x"}"#, &Default::default()).unwrap();
    assert_eq!(c.asked_priority, Some(Priority::Sheddable));
}

#[test]
fn max_prefix_blocks_caps_hashes_but_not_token_estimate() {
    let long = "z".repeat(BLOCK_BYTES * 20);
    let body = format!(r#"{{"prompt":"{long}"}}"#);
    let opts = ClassifyOptions {
        max_prefix_blocks: 4,
        ..ClassifyOptions::default()
    };
    let c = classify_body(head_for("/v1/completions"), body.as_bytes(), &opts).unwrap();
    assert_eq!(c.prefix.len(), 4);
    assert_eq!(c.prompt_tokens, estimate_tokens(long.len()));
    assert_eq!(c.prompt, None, "no capture unless asked for");
}

#[test]
fn prompt_is_captured_for_the_precise_policy_when_asked() {
    use crate::classify::Prompt;
    let opts = ClassifyOptions {
        capture_prompt_bytes: 12,
        ..ClassifyOptions::default()
    };
    let body =
        r#"{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}]}"#;
    let c = classify_body(head_for("/v1/chat/completions"), body.as_bytes(), &opts).unwrap();
    let prompt = c.prompt.as_deref().unwrap();
    let Prompt::Chat {
        text, truncated, ..
    } = prompt
    else {
        panic!("a chat prompt: {prompt:?}");
    };
    assert_eq!((text.as_str(), *truncated), ("system: be b", true));
    let messages = prompt.chat_messages().unwrap();
    assert_eq!(messages.len(), 1, "the user message was not kept");
    assert_eq!(
        (messages[0].role, &messages[0].parts[..], messages[0].cut),
        ("system", &["be b"][..], true)
    );
    let whole = ClassifyOptions {
        capture_prompt_bytes: 1000,
        ..ClassifyOptions::default()
    };
    let parts = r#"{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"b"}]}]}"#;
    let c = classify_body(head_for("/v1/chat/completions"), parts.as_bytes(), &whole).unwrap();
    let prompt = c.prompt.as_deref().unwrap();
    let messages = prompt.chat_messages().unwrap();
    let seen: Vec<(&str, Vec<&str>, bool)> = messages
        .iter()
        .map(|m| (m.role, m.parts.clone(), m.cut))
        .collect();
    assert_eq!(
        seen,
        [
            ("system", vec!["be brief"], false),
            ("user", vec!["a", "b"], false)
        ]
    );
    // A completions prompt stays plain text.
    let plain = classify_body(
        head_for("/v1/completions"),
        br#"{"prompt":"hello"}"#,
        &whole,
    )
    .unwrap();
    assert_eq!(
        plain.prompt.as_deref(),
        Some(&Prompt::Text {
            text: "hello".into(),
            truncated: false
        })
    );
    let ids = classify_body(
        head_for("/v1/completions"),
        br#"{"prompt":[[1,2],[3]]}"#,
        &opts,
    )
    .unwrap();
    assert_eq!(ids.prompt.as_deref(), Some(&Prompt::Ids(vec![1, 2, 3])));
}

#[test]
fn errors_name_the_field() {
    let chat = "/v1/chat/completions";
    let cases: &[(&str, &str)] = &[
        (r#"{"model":5}"#, "`model` must be a string"),
        (r#"{"stream":"yes"}"#, "`stream` must be a boolean"),
        (r#"{"max_tokens":"10"}"#, "`max_tokens` must be an integer"),
        (r#"{"max_tokens":1.5}"#, "`max_tokens` must be an integer"),
        (
            r#"{"max_completion_tokens":[]}"#,
            "`max_completion_tokens` must be an integer",
        ),
        (
            r#"{"messages":{}}"#,
            "`messages` must be an array of message objects",
        ),
        (r#"{"messages":["hi"]}"#, "`messages[0]` must be an object"),
        (
            r#"{"messages":[{"role":"user","content":"a"},{"role":1}]}"#,
            "`messages[1].role` must be a string",
        ),
        (
            r#"{"messages":[{"role":"user","content":7}]}"#,
            "`messages[0].content` must be a string, an array of content parts, or null",
        ),
        (
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":false}]}]}"#,
            "`messages[0].content[0].text` must be a string",
        ),
        (
            r#"{"messages":[{"role":"user","content":[5]}]}"#,
            "`messages[0].content[0]` must be a content part object",
        ),
    ];
    for (body, want) in cases {
        let e = classify(chat, body).unwrap_err();
        assert!(matches!(e, ClassifyError::InvalidField(_)), "{body}: {e:?}");
        assert_eq!(e.to_string(), *want, "{body}");
    }
    // Fields the endpoint does not read are not checked.
    ok(
        chat,
        r#"{"prompt":5,"input":{},"options":"x","temperature":"hot"}"#,
    );
    assert_eq!(
        err("/api/generate", r#"{"options":[1]}"#),
        "`options` must be an object"
    );
    assert_eq!(
        err("/v1/responses", r#"{"input":5}"#),
        "`input` must be a string or an array of input items"
    );
    assert_eq!(
        err("/v1/responses", r#"{"instructions":{}}"#),
        "`instructions` must be a string"
    );
}

#[test]
fn malformed_bodies_are_errors() {
    let chat = "/v1/chat/completions";
    assert_eq!(classify(chat, "").unwrap_err(), ClassifyError::EmptyBody);
    assert_eq!(
        classify(chat, " \n\t").unwrap_err(),
        ClassifyError::EmptyBody
    );
    for body in ["[]", "\"x\"", "5", "null", "true", " [1,2]"] {
        assert_eq!(
            classify(chat, body).unwrap_err(),
            ClassifyError::NotAnObject,
            "{body}"
        );
    }
    assert_eq!(
        ClassifyError::NotAnObject.to_string(),
        "request body must be a JSON object"
    );
    for body in [
        "{",
        r#"{"model":"m""#,
        r#"{"model":"m",}"#,
        r#"{"model":"m"} x"#,
        r#"{"model":"m"}{}"#,
        "hello",
        r#"{"messages":[{"role":"user","content":"abc"#,
        r#"{"model":"\x"}"#,
    ] {
        let e = classify(chat, body).unwrap_err();
        assert!(matches!(e, ClassifyError::InvalidJson(_)), "{body}: {e:?}");
        assert!(e.to_string().starts_with("invalid JSON body: "), "{e}");
    }
    // Deep nesting never overflows the stack: skipped fields are skipped
    // iteratively, and fields we read hit serde_json's recursion limit.
    let open = "[".repeat(100_000);
    let close = "]".repeat(100_000);
    ok(chat, &format!(r#"{{"x":{open}{close}}}"#));
    assert!(classify(chat, &format!(r#"{{"x":{open}"#)).is_err());
    assert!(classify("/v1/completions", &format!(r#"{{"prompt":{open}{close}}}"#)).is_err());
    let deep_obj = format!(r#"{{"messages":[{}"#, r#"{"content":["#.repeat(50_000));
    assert!(classify(chat, &deep_obj).is_err());
}

#[test]
fn garbage_and_truncations_never_panic() {
    const PATHS: &[&str] = &[
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/rerank",
        "/v1/responses",
        "/generate_stream",
        "/api/generate",
        "/api/chat",
        "/api/embed",
    ];
    let valid: &[&str] = &[
        r#"{"model":"m","stream":true,"max_tokens":12,"messages":[{"role":"system","content":"caf\u00e9\n"},{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"x"}}]},{"role":"assistant","content":null}]}"#,
        r#"{"model":"m","prompt":[[1,2,3],[4]],"input":["a","b"],"max_tokens":3}"#,
        r#"{"query":"q","documents":["a",{"text":"b"}],"instructions":"i","input":[{"role":"user","content":"x"}]}"#,
        r#"{"inputs":"x","parameters":{"max_new_tokens":3},"system":"s","prompt":"p","options":{"num_predict":-1}}"#,
    ];
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let opts = ClassifyOptions::default();
    let alphabet = br#"{}[]":,0123456789-.eE truefalsnul\u"abc"#;
    for _ in 0..3000 {
        let len = rng.usize(0..200);
        let bytes: Vec<u8> = if rng.bool() {
            (0..len).map(|_| rng.u8(..)).collect()
        } else {
            (0..len)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect()
        };
        for path in PATHS {
            let _ = classify_body(head_for(path), &bytes, &opts);
        }
    }
    for body in valid {
        for path in PATHS {
            for cut in 0..body.len() {
                let _ = classify_body(head_for(path), &body.as_bytes()[..cut], &opts);
            }
            // Random single-byte corruptions.
            for _ in 0..200 {
                let mut b = body.as_bytes().to_vec();
                let i = rng.usize(..b.len());
                b[i] = rng.u8(..);
                let _ = classify_body(head_for(path), &b, &opts);
            }
        }
    }
}

#[test]
fn user_field_is_read_as_session_key() {
    let c = ok(
        "/v1/chat/completions",
        r#"{"model":"m","user":"alice","messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(c.user.as_deref(), Some("alice"));
    let c = ok(
        "/v1/completions",
        r#"{"model":"m","prompt":"x","user":null}"#,
    );
    assert_eq!(c.user, None);
}

/// A UTF-8 body is read as text, any other through the byte reader, and
/// both give what serde_json's byte reader always gave: multi-byte text
/// is read alike, a bad byte in a field routing reads is a JSON error,
/// and one in a field it skips is not looked at.
#[test]
fn bodies_read_alike_whether_utf8_or_not() {
    let path = "/v1/chat/completions";
    let model = "m\u{e9}";
    let text = "gr\u{fc}\u{df} \u{1f600} ".repeat(20);
    let c = ok(
        path,
        &format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"{text}"}}]}}"#),
    );
    assert_eq!(c.model.as_deref(), Some(model));
    let (fp, bytes) = chat_fp(model, &[("user", &[&text])]);
    assert!(!fp.is_empty());
    assert_eq!(c.prefix, fp);
    assert_eq!(c.prompt_tokens, estimate_tokens(bytes));

    let body = |model: &[u8], skipped: &[u8]| {
        let mut b = b"{\"model\":\"".to_vec();
        b.extend_from_slice(model);
        b.extend_from_slice(b"\",\"user_note\":\"");
        b.extend_from_slice(skipped);
        b.extend_from_slice(b"\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
        b
    };
    let run = |b: Vec<u8>| classify_body(head_for(path), &b, &ClassifyOptions::default());
    let e = run(body(b"m\xff", b"x")).expect_err("a bad byte in `model`");
    assert!(matches!(e, ClassifyError::InvalidJson(_)), "{e:?}");
    let c = run(body(b"m", b"\xc3\x28")).expect("a bad byte in a skipped field");
    assert_eq!(c.model.as_deref(), Some("m"));
}
