//! Expected renderings were produced by Python's Jinja2 3.1 in Hugging
//! Face's chat-template environment (`ImmutableSandboxedEnvironment`,
//! `trim_blocks`, `lstrip_blocks`, `loopcontrols`, `tojson` = `json.dumps`
//! with `ensure_ascii=False`) from the same templates and messages.

use super::*;

/// A Llama 3 style template (system message trimmed and moved first).
const LLAMA3: &str = r#"{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"#;

/// A ChatML style template (Python `.strip()`, `loop.first`, `raise_exception`).
const CHATML: &str = r#"{% for message in messages %}{% if message['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('unknown role ' + message['role']) }}{% endif %}{% if loop.first and message['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'].strip() + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}
"#;

/// Block tags on their own lines, `continue`, `upper`, `.startswith()`, `tojson`.
const BLOCKS: &str = r#"{{ bos_token }}
{% for m in messages %}
  {% if m.role == 'system' %}
    {% continue %}
  {% endif %}
[{{ m.role | upper }}] {{ m.content }}
  {% if m.content.startswith('Why') %}
(question)
  {% endif %}
{% endfor %}
{% if add_generation_prompt %}
[ASSISTANT] {{ {"turns": messages | length, "tags": ["a", "é"]} | tojson }}
{% endif %}
"#;

fn special() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("bos_token".to_string(), "<s>".to_string()),
        ("eos_token".to_string(), "</s>".to_string()),
    ])
}

fn messages() -> Vec<ChatMessage<'static>> {
    [
        ("system", "  You are terse.  "),
        ("user", "Hi there"),
        ("assistant", "Hello."),
        ("user", "Why is the sky blue?"),
    ]
    .into_iter()
    .map(|(role, text)| ChatMessage {
        role,
        parts: vec![text],
        cut: false,
    })
    .collect()
}

fn render(source: &str, messages: &[ChatMessage<'_>], truncated: bool) -> Option<String> {
    ChatTemplate::new(source, special(), "test")
        .unwrap()
        .render(messages, truncated)
}

#[test]
fn renders_as_hugging_face_does() {
    let m = messages();
    let cases = [
        (
            LLAMA3,
            "<s><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhy is the sky blue?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        ),
        (
            CHATML,
            "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nWhy is the sky blue?<|im_end|>\n<|im_start|>assistant\n",
        ),
        (
            BLOCKS,
            "<s>\n[USER] Hi there\n[ASSISTANT] Hello.\n[USER] Why is the sky blue?\n(question)\n[ASSISTANT] {\"turns\": 4, \"tags\": [\"a\", \"\u{e9}\"]}\n",
        ),
    ];
    for (source, expected) in cases {
        assert_eq!(render(source, &m, false).as_deref(), Some(expected));
    }
}

#[test]
fn a_cut_prompt_renders_a_prefix_of_the_whole() {
    // The capture limit fell inside the second user message.
    let mut m = messages();
    m[3].parts = vec!["Why is the"];
    m[3].cut = true;
    for source in [LLAMA3, CHATML] {
        let whole = render(source, &messages(), false).unwrap();
        let cut = render(source, &m, true).unwrap();
        assert!(
            whole.starts_with(&cut),
            "{cut:?} is not a prefix of {whole:?}"
        );
        assert!(cut.ends_with("Why is the"), "{cut:?}");
    }
    // Cut inside a role: the messages before it, without a generation
    // prompt (Jinja2 renders "<s><|start_header_id|>system...Hello.<|eot_id|>").
    let mut m = messages();
    m[3].parts.clear();
    m[3].role = "us";
    m[3].cut = true;
    let cut = render(LLAMA3, &m, true).unwrap();
    assert!(cut.ends_with("Hello.<|eot_id|>"), "{cut:?}");
    assert!(render(LLAMA3, &messages(), false)
        .unwrap()
        .starts_with(&cut));
}

#[test]
fn template_errors_give_no_rendering() {
    let mut m = messages();
    m[1].role = "tool";
    assert_eq!(render(CHATML, &m, false), None, "raise_exception");
    let e = ChatTemplate::new("{% for %}", special(), "broken.jinja").unwrap_err();
    assert!(e.contains("broken.jinja"), "{e}");
}

#[test]
fn tojson_uses_python_separators_and_indent() {
    let t = ChatTemplate::new(
        r#"{{ {"a": 1, "b": [1, "x"]} | tojson }}|{{ {"a": [1]} | tojson(indent=2) }}"#,
        special(),
        "t",
    )
    .unwrap();
    assert_eq!(
        t.render(&[], false).as_deref(),
        Some("{\"a\": 1, \"b\": [1, \"x\"]}|{\n  \"a\": [\n    1\n  ]\n}")
    );
}

#[test]
fn strftime_formats_utc_dates() {
    // 2024-07-26 12:34:56 UTC, a Friday.
    let t = 1_721_997_296;
    assert_eq!(strftime("%d %b %Y", t), "26 Jul 2024");
    assert_eq!(
        strftime("%A %a %B %m/%d/%y %H:%M:%S %j %p %% %Q", t),
        "Friday Fri July 07/26/24 12:34:56 208 PM % %Q"
    );
    assert_eq!(strftime("%Y-%m-%d", 951_782_400), "2000-02-29");
    assert_eq!(strftime("%j", 951_782_400 + 86_400), "061");
}

#[test]
fn loads_the_template_shipped_beside_the_tokenizer() {
    let dir = std::env::temp_dir().join(format!("infergate-template-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tokenizer = dir.join("tokenizer.json");
    let config = dir.join("tokenizer_config.json");
    let jinja = dir.join("chat_template.jinja");
    let only = [ChatMessage {
        role: "user",
        parts: vec!["a", "b"],
        cut: false,
    }];
    // No template at all.
    assert!(ChatTemplate::beside(&tokenizer).unwrap().is_none());
    // In tokenizer_config.json, as a list with a default; tokens as objects.
    std::fs::write(
        &config,
        r#"{"bos_token":{"content":"<B>","lstrip":false},"eos_token":"<E>",
            "chat_template":[{"name":"tool_use","template":"x"},
                             {"name":"default","template":"{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"}]}"#,
    )
    .unwrap();
    let t = ChatTemplate::beside(&tokenizer).unwrap().unwrap();
    assert_eq!(t.render(&only, false).as_deref(), Some("<B>a\nb<E>"));
    // chat_template.jinja wins, with the special tokens of the config.
    std::fs::write(&jinja, "[{{ bos_token }}|{{ messages[0].role }}]").unwrap();
    let t = ChatTemplate::beside(&tokenizer).unwrap().unwrap();
    assert_eq!(t.origin(), jinja.display().to_string());
    assert_eq!(t.render(&only, false).as_deref(), Some("[<B>|user]"));
    // Loaded by name, either kind.
    assert!(ChatTemplate::load(&config).is_ok());
    let e = ChatTemplate::load(&dir.join("missing.jinja")).unwrap_err();
    assert!(e.contains("missing.jinja"), "{e}");
    std::fs::write(&config, r#"{"eos_token":"<E>"}"#).unwrap();
    let e = ChatTemplate::load(&config).unwrap_err();
    assert!(e.contains("no chat_template"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
