//! Classification: what kind of request this is and what routing needs from it.
//!
//! Two steps, so the proxy reads a body only when it must:
//! 1. [`classify_head`] looks at method, path and headers and decides the API
//!    family and endpoint, and whether the body carries routing information.
//! 2. [`classify_body`] parses a JSON body of an inference request just enough
//!    to get the model, stream flag, output-token limit, prompt-size estimate
//!    and prefix fingerprint. The bytes themselves are forwarded unchanged.

mod body;
mod head;
pub mod prefix;

pub use body::{classify_body, ClassifyError, ClassifyOptions};
pub use head::{classify_head, UNPREFIXED_OPENAI_PATHS};

/// The API family of a request: decides the error format and health path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiFamily {
    /// OpenAI-compatible (`/v1/...`): vLLM, SGLang, TGI's Messages API, llama.cpp server.
    OpenAi,
    /// Hugging Face TGI native API (`/generate`, `/generate_stream`).
    Tgi,
    /// KServe v2 / Triton (`/v2/models/{name}/infer`).
    KServe,
    /// Ollama (`/api/generate`, `/api/chat`, `/api/embed`).
    Ollama,
    /// gRPC (by `content-type: application/grpc`).
    Grpc,
    /// Anything else: forwarded as ordinary HTTP.
    Other,
}

impl ApiFamily {
    /// The name used in config files (`match.family`).
    pub fn as_str(self) -> &'static str {
        match self {
            ApiFamily::OpenAi => "openai",
            ApiFamily::Tgi => "tgi",
            ApiFamily::KServe => "kserve",
            ApiFamily::Ollama => "ollama",
            ApiFamily::Grpc => "grpc",
            ApiFamily::Other => "other",
        }
    }

    /// Parse a config name.
    pub fn from_name(name: &str) -> Option<ApiFamily> {
        Some(match name {
            "openai" => ApiFamily::OpenAi,
            "tgi" => ApiFamily::Tgi,
            "kserve" => ApiFamily::KServe,
            "ollama" => ApiFamily::Ollama,
            "grpc" => ApiFamily::Grpc,
            "other" => ApiFamily::Other,
            _ => return None,
        })
    }

    /// All families, for config validation messages.
    pub const NAMES: &'static [&'static str] =
        &["openai", "tgi", "kserve", "ollama", "grpc", "other"];
}

/// The specific endpoint within a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`
    ChatCompletions,
    /// `POST /v1/completions`
    Completions,
    /// `POST /v1/embeddings`
    Embeddings,
    /// `POST /v1/rerank` (also `/rerank`, `/v2/rerank` as Cohere/Jina-style servers use)
    Rerank,
    /// `GET /v1/models`
    Models,
    /// `POST /v1/responses`
    Responses,
    /// TGI `POST /generate`
    TgiGenerate,
    /// TGI `POST /generate_stream`
    TgiGenerateStream,
    /// KServe v2 `POST /v2/models/{name}[/versions/{v}]/infer`
    KServeInfer,
    /// Ollama `POST /api/generate`
    OllamaGenerate,
    /// Ollama `POST /api/chat`
    OllamaChat,
    /// Ollama `POST /api/embed` (and the older `/api/embeddings`)
    OllamaEmbed,
    /// A gRPC call (any path).
    Grpc,
    /// Not an inference endpoint.
    Other,
}

/// Request priority: the route's (`[[routes]] priority`), or the
/// `x-infergate-priority` header's from clients the route trusts with it
/// (`trust_priority_header_from`); see `proxy::priority`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    /// Shed first under overload.
    Sheddable,
    /// The default.
    #[default]
    Standard,
    /// Served first, shed last.
    Critical,
}

impl Priority {
    /// Parse a name (`critical`, `standard`, `sheddable`; any case).
    pub fn from_name(name: &str) -> Option<Priority> {
        let name = name.trim();
        [
            ("critical", Priority::Critical),
            ("standard", Priority::Standard),
            ("sheddable", Priority::Sheddable),
        ]
        .into_iter()
        .find(|(n, _)| crate::ascii_case::eq_lower(name.as_bytes(), n.as_bytes()))
        .map(|(_, p)| p)
    }

    /// All names, for config validation messages.
    pub const NAMES: &'static [&'static str] = &["critical", "standard", "sheddable"];
}

/// The header carrying [`Priority`].
pub const PRIORITY_HEADER: &str = "x-infergate-priority";

/// Result of [`classify_head`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// API family.
    pub family: ApiFamily,
    /// Endpoint within the family.
    pub endpoint: Endpoint,
    /// Model named in the path (KServe), if any.
    pub path_model: Option<String>,
    /// True when the body is JSON that names the model or the prompt, so the
    /// proxy must read it before routing.
    pub parse_body: bool,
    /// Priority the priority header asks for (`None` when absent or not a
    /// known name). Only a hint: the route decides whether to trust it.
    pub asked_priority: Option<Priority>,
}

/// Everything routing needs to know about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestClass {
    /// API family.
    pub family: ApiFamily,
    /// Endpoint within the family.
    pub endpoint: Endpoint,
    /// The model asked for (body `model`, or the path for KServe).
    pub model: Option<String>,
    /// Whether the client asked for a streamed response.
    pub stream: bool,
    /// Declared output-token limit (`max_tokens`, `max_completion_tokens`,
    /// `max_new_tokens`, `num_predict`, `max_output_tokens`).
    pub max_tokens: Option<u32>,
    /// Estimated prompt tokens (prompt bytes / [`prefix::BYTES_PER_TOKEN`]).
    pub prompt_tokens: u32,
    /// Prefix fingerprint: chained block hashes of the prompt, see [`prefix`].
    pub prefix: Vec<u64>,
    /// Priority the request header asks for (see [`Head::asked_priority`]).
    pub asked_priority: Option<Priority>,
    /// The priority the request is queued with: `Standard` until the proxy
    /// has matched a route, which then decides it from its own setting and
    /// whether it trusts the client's header.
    pub priority: Priority,
    /// End-user id from the body's `user` field (OpenAI chat, completions,
    /// embeddings, responses), a session key for affinity policies.
    pub user: Option<String>,
    /// The prompt as the precise prefix policy tokenizes it, kept only when
    /// [`ClassifyOptions::capture_prompt_bytes`] asks for it.
    pub prompt: Option<std::sync::Arc<Prompt>>,
    /// Block keys of the prompt's token ids (see [`crate::kvindex`]), made
    /// once by the proxy before selection on routes that route on the
    /// engines' caches; `None` until then (the policy then makes them).
    pub prompt_keys: Option<std::sync::Arc<[u64]>>,
}

/// A request's prompt as fed to the prefix fingerprint (see [`body`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// Canonical prompt text: chat messages rendered as `role: text\n`,
    /// other prompts as they are; `truncated` when cut at the capture limit.
    Text {
        /// The text (cut at a character boundary).
        text: String,
        /// Cut at the capture limit.
        truncated: bool,
    },
    /// Chat messages (chat completions, Ollama chat, responses): `text` is
    /// their canonical rendering as in [`Prompt::Text`], `spans` where each
    /// message's role and text parts lie in it, so the precise policy can
    /// render them with the model's chat template instead.
    Chat {
        /// The canonical text (cut at a character boundary).
        text: String,
        /// Cut at the capture limit.
        truncated: bool,
        /// Roles and text parts, in order (see [`prefix::ChatSpan`]).
        spans: Vec<prefix::ChatSpan>,
    },
    /// A prompt given as token ids (`/v1/completions` with integer arrays).
    Ids(Vec<u32>),
}

/// One chat message of a [`Prompt::Chat`], as a chat template sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage<'a> {
    /// The role.
    pub role: &'a str,
    /// The text parts, in order.
    pub parts: Vec<&'a str>,
    /// Whether the capture limit cut this message (its role or a part).
    pub cut: bool,
}

impl Prompt {
    /// The messages of a chat prompt, in order; the last one is `cut` when
    /// the capture limit fell inside it. `None` for other prompts.
    pub fn chat_messages(&self) -> Option<Vec<ChatMessage<'_>>> {
        let Prompt::Chat { text, spans, .. } = self else {
            return None;
        };
        let mut out: Vec<ChatMessage<'_>> = Vec::new();
        for span in spans {
            let (range, is_role) = match span {
                prefix::ChatSpan::Role(r) => (r, true),
                prefix::ChatSpan::Part(r) => (r, false),
            };
            let end = range.end.min(text.len());
            let piece = text.get(range.start.min(end)..end).unwrap_or("");
            let cut = range.end > text.len();
            if is_role {
                out.push(ChatMessage {
                    role: piece,
                    parts: Vec::new(),
                    cut,
                });
            } else if let Some(last) = out.last_mut() {
                last.parts.push(piece);
                last.cut |= cut;
            }
        }
        Some(out)
    }
}

impl RequestClass {
    /// A class for a request whose body was not parsed.
    pub fn from_head(head: Head) -> RequestClass {
        RequestClass {
            family: head.family,
            endpoint: head.endpoint,
            model: head.path_model,
            stream: false,
            max_tokens: None,
            prompt_tokens: 0,
            prefix: Vec::new(),
            asked_priority: head.asked_priority,
            priority: Priority::Standard,
            user: None,
            prompt: None,
            prompt_keys: None,
        }
    }
}
