//! Classification cost per request: head, body, and both for a ~4 KB chat
//! request; and for `precise_prefix`, the prompt's token ids with and without
//! the model's chat template.
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{HeaderMap, HeaderValue, Method};
use infergate::classify::{classify_body, classify_head, ClassifyOptions, PRIORITY_HEADER};
use infergate::kvindex::{ChatTemplate, PromptTokenizer};

/// A typical OpenAI chat request: ~2.5 KB system prompt, four turns, the
/// usual sampling fields. About 4 KB.
fn chat_body() -> Vec<u8> {
    let sentence = "You are a careful assistant for an online store. Answer in short \
                    paragraphs, cite the order id when relevant, and never invent prices. ";
    let mut system = String::new();
    while system.len() < 2600 {
        system.push_str(sentence);
    }
    let turns = [
        ("user", "Hi, my order 12345 hasn't arrived yet. It was supposed to come on Monday \u{2014} can you check where it is?"),
        ("assistant", "I'm sorry about the delay. Order 12345 left our warehouse on Friday and is with the carrier.\nThe latest scan shows it at the regional depot; delivery is now expected on Thursday."),
        ("user", "Thursday is too late, I need it for a birthday on Wednesday. Is there any way to speed it up, or should I cancel and reorder with express shipping?"),
        ("assistant", "I understand. Reordering with express shipping would arrive Tuesday; I can cancel 12345 once the carrier returns it, and refund the original shipping."),
    ];
    let body = serde_json::json!({
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "messages": std::iter::once(serde_json::json!({"role": "system", "content": system}))
            .chain(turns.iter().map(|(r, c)| {
                let c = format!("{c} Thanks again for your patience; let me know which option you prefer and I will take care of the rest.");
                serde_json::json!({"role": r, "content": c})
            }))
            .collect::<Vec<_>>(),
        "stream": true,
        "stream_options": {"include_usage": true},
        "max_tokens": 512,
        "temperature": 0.7,
        "top_p": 0.95,
    });
    serde_json::to_vec(&body).unwrap()
}

fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("authorization", HeaderValue::from_static("Bearer sk-test"));
    h.insert("accept", HeaderValue::from_static("text/event-stream"));
    h.insert(PRIORITY_HEADER, HeaderValue::from_static("critical"));
    h
}

fn bench(c: &mut Criterion) {
    let body = chat_body();
    let headers = headers();
    let opts = ClassifyOptions::default();
    let path = "/v1/chat/completions";
    assert!(
        (3500..5000).contains(&body.len()),
        "body is {} bytes",
        body.len()
    );
    eprintln!("chat request body: {} bytes", body.len());
    let head = classify_head(&Method::POST, path, (&headers).into());
    assert!(head.parse_body);
    let class = classify_body(head.clone(), &body, &opts).unwrap();
    assert!(class.stream && class.max_tokens == Some(512) && !class.prefix.is_empty());

    let mut g = c.benchmark_group("classify");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("chat_4k", |b| {
        b.iter(|| {
            let head = classify_head(&Method::POST, black_box(path), black_box((&headers).into()));
            classify_body(head, black_box(&body), &opts).unwrap()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("classify_body");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("chat_4k", |b| {
        b.iter(|| classify_body(black_box(head.clone()), black_box(&body), &opts).unwrap())
    });
    g.finish();

    c.bench_function("classify_head/chat", |b| {
        b.iter(|| classify_head(&Method::POST, black_box(path), black_box((&headers).into())))
    });

    // precise_prefix: the prompt captured, then turned into token ids.
    let capture = ClassifyOptions {
        capture_prompt_bytes: 256 * 128,
        ..ClassifyOptions::default()
    };
    let class = classify_body(head.clone(), &body, &capture).unwrap();
    let prompt = class.prompt.clone().unwrap();
    let tokenizer =
        PromptTokenizer::from_json(&infergate::workload::fleet_tokenizer_json()).unwrap();
    let template = ChatTemplate::new(LLAMA3_STYLE, Default::default(), "bench").unwrap();
    let templated = PromptTokenizer::from_json(&infergate::workload::fleet_tokenizer_json())
        .unwrap()
        .with_chat_template(Some(template));
    let mut g = c.benchmark_group("precise_tokens");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("classify_with_capture", |b| {
        b.iter(|| classify_body(black_box(head.clone()), black_box(&body), &capture).unwrap())
    });
    g.bench_function("role_text_lines", |b| {
        b.iter(|| tokenizer.tokens(black_box(&prompt)).unwrap())
    });
    let messages = prompt.chat_messages().unwrap();
    let render = ChatTemplate::new(LLAMA3_STYLE, Default::default(), "bench").unwrap();
    g.bench_function("render_only", |b| {
        b.iter(|| render.render(black_box(&messages), false).unwrap())
    });
    g.bench_function("chat_template", |b| {
        b.iter(|| templated.tokens(black_box(&prompt)).unwrap())
    });
    // A real model's tokenizer.json, when given (e.g. bench/real-engines.sh's
    // tiny model: byte-level BPE with GPT-2's pre-tokenizer regex).
    if let Ok(path) = std::env::var("INFERGATE_BENCH_TOKENIZER") {
        let real = PromptTokenizer::from_file(std::path::Path::new(&path)).unwrap();
        g.bench_function("tokenizer_json", |b| {
            b.iter(|| real.tokens(black_box(&prompt)).unwrap())
        });
    }
    g.finish();
}

/// A Llama 3 style chat template (header tokens, trimmed content).
const LLAMA3_STYLE: &str = "{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}";

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench
}
criterion_main!(benches);
