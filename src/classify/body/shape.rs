//! Hand-written serde visitors for the few body fields routing reads.
//!
//! Each "shape" says what JSON value it accepts at a location and what to
//! make of it; [`Seed`] adapts a shape to serde. A value of any other type is
//! rejected with a fixed message naming the location ("`model` must be a
//! string"), never echoing the value. Strings are borrowed from the input
//! when they have no escapes. Unread fields are skipped with `IgnoredAny`.
use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::classify::Endpoint;

/// Where a value sits in the body, for error messages. Built on the stack as
/// the visitors descend; only formatted on error.
#[derive(Clone, Copy)]
pub(super) enum Loc<'p> {
    Root(&'static str),
    Field(&'p Loc<'p>, &'static str),
    Index(&'p Loc<'p>, usize),
}

impl fmt::Display for Loc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loc::Root(name) => f.write_str(name),
            Loc::Field(parent, name) => write!(f, "{parent}.{name}"),
            Loc::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// What one location accepts. Every JSON type not overridden is an error.
pub(super) trait Shape<'de>: Sized {
    type Out;
    /// The location, for the error message.
    fn loc(&self) -> Loc<'_>;
    /// What the value must be: "a string", "an integer", ...
    fn expected(&self) -> &'static str;

    fn wrong<E: de::Error>(&self) -> E {
        E::custom(format_args!("`{}` must be {}", self.loc(), self.expected()))
    }
    fn null<E: de::Error>(self) -> Result<Self::Out, E> {
        Err(self.wrong())
    }
    fn boolean<E: de::Error>(self, _v: bool) -> Result<Self::Out, E> {
        Err(self.wrong())
    }
    fn int<E: de::Error>(self, _v: i128) -> Result<Self::Out, E> {
        Err(self.wrong())
    }
    fn float<E: de::Error>(self, _v: f64) -> Result<Self::Out, E> {
        Err(self.wrong())
    }
    fn string<E: de::Error>(self, _v: Cow<'de, str>) -> Result<Self::Out, E> {
        Err(self.wrong())
    }
    fn seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<Self::Out, A::Error> {
        Err(self.wrong())
    }
    fn map<A: MapAccess<'de>>(self, _map: A) -> Result<Self::Out, A::Error> {
        Err(self.wrong())
    }
}

/// Adapts a [`Shape`] to serde's `DeserializeSeed` + `Visitor`.
pub(super) struct Seed<S>(pub S);

impl<'de, S: Shape<'de>> DeserializeSeed<'de> for Seed<S> {
    type Value = S::Out;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Out, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, S: Shape<'de>> Visitor<'de> for Seed<S> {
    type Value = S::Out;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.expected())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<S::Out, E> {
        self.0.boolean(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<S::Out, E> {
        self.0.int(v.into())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<S::Out, E> {
        self.0.int(v.into())
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<S::Out, E> {
        self.0.int(v)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<S::Out, E> {
        self.0.float(v)
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<S::Out, E> {
        self.0.string(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<S::Out, E> {
        // Only strings with escapes get here (serde_json unescapes into scratch).
        self.0.string(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<S::Out, E> {
        self.0.string(Cow::Owned(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<S::Out, E> {
        self.0.null()
    }
    fn visit_none<E: de::Error>(self) -> Result<S::Out, E> {
        self.0.null()
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<S::Out, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<S::Out, A::Error> {
        self.0.seq(seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<S::Out, A::Error> {
        self.0.map(map)
    }
}

/// An object key, matched without allocating.
struct KeySeed<F>(F);

/// Helps closure signature inference (`for<'a> FnOnce(&'a str)`).
fn key_seed<K, F: FnOnce(&str) -> K>(f: F) -> KeySeed<F> {
    KeySeed(f)
}

impl<'de, K, F: FnOnce(&str) -> K> DeserializeSeed<'de> for KeySeed<F> {
    type Value = K;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<K, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl<'de, K, F: FnOnce(&str) -> K> Visitor<'de> for KeySeed<F> {
    type Value = K;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<K, E> {
        Ok((self.0)(v))
    }
}

fn skip<'de, A: MapAccess<'de>>(map: &mut A) -> Result<(), A::Error> {
    map.next_value::<IgnoredAny>().map(|_| ())
}

// ---------------------------------------------------------------- scalars

/// A string, or null (= absent).
pub(super) struct Str<'p>(pub Loc<'p>);

impl<'de> Shape<'de> for Str<'_> {
    type Out = Option<Cow<'de, str>>;
    fn loc(&self) -> Loc<'_> {
        self.0
    }
    fn expected(&self) -> &'static str {
        "a string"
    }
    fn null<E: de::Error>(self) -> Result<Self::Out, E> {
        Ok(None)
    }
    fn string<E: de::Error>(self, v: Cow<'de, str>) -> Result<Self::Out, E> {
        Ok(Some(v))
    }
}

/// A boolean, or null (= absent).
struct Bool<'p>(Loc<'p>);

impl<'de> Shape<'de> for Bool<'_> {
    type Out = Option<bool>;
    fn loc(&self) -> Loc<'_> {
        self.0
    }
    fn expected(&self) -> &'static str {
        "a boolean"
    }
    fn null<E: de::Error>(self) -> Result<Self::Out, E> {
        Ok(None)
    }
    fn boolean<E: de::Error>(self, v: bool) -> Result<Self::Out, E> {
        Ok(Some(v))
    }
}

/// A token limit: an integer (or an integral float such as `100.0`), or null.
/// Negative means "no limit" (`None`); large values saturate at `u32::MAX`.
struct Count<'p>(Loc<'p>);

impl<'de> Shape<'de> for Count<'_> {
    type Out = Option<u32>;
    fn loc(&self) -> Loc<'_> {
        self.0
    }
    fn expected(&self) -> &'static str {
        "an integer"
    }
    fn null<E: de::Error>(self) -> Result<Self::Out, E> {
        Ok(None)
    }
    fn int<E: de::Error>(self, v: i128) -> Result<Self::Out, E> {
        Ok((v >= 0).then(|| u32::try_from(v).unwrap_or(u32::MAX)))
    }
    fn float<E: de::Error>(self, v: f64) -> Result<Self::Out, E> {
        if v.is_finite() && v.fract() == 0.0 {
            // `as` saturates; negative -> None like integers.
            Ok((v >= 0.0).then_some(v as u32))
        } else {
            Err(self.wrong())
        }
    }
}

/// An object holding one token limit under `key` (TGI `parameters`, Ollama
/// `options`), or null.
struct LimitIn<'p> {
    loc: Loc<'p>,
    key: &'static str,
}

impl<'de> Shape<'de> for LimitIn<'_> {
    type Out = Option<u32>;
    fn loc(&self) -> Loc<'_> {
        self.loc
    }
    fn expected(&self) -> &'static str {
        "an object"
    }
    fn null<E: de::Error>(self) -> Result<Self::Out, E> {
        Ok(None)
    }
    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
        let key = self.key;
        let mut out = None;
        while let Some(is_key) = map.next_key_seed(key_seed(|k| k == key))? {
            if is_key {
                out = map.next_value_seed(Seed(Count(Loc::Field(&self.loc, key))))?;
            } else {
                skip(&mut map)?;
            }
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------- prompts

/// A piece of a completions `prompt` / embeddings `input`.
#[derive(Debug)]
pub(super) enum Piece<'a> {
    Text(Cow<'a, str>),
    /// Token ids (one inner array, or a run of ids in a flat array).
    Ids(Vec<u32>),
}

/// A prompt: a string, or an array of strings / token ids / arrays of token ids.
struct Prompt<'p>(Loc<'p>);

impl<'de> Shape<'de> for Prompt<'_> {
    type Out = Option<Vec<Piece<'de>>>;
    fn loc(&self) -> Loc<'_> {
        self.0
    }
    fn expected(&self) -> &'static str {
        "a string, an array of strings, or an array of token ids"
    }
    fn null<E: de::Error>(self) -> Result<Self::Out, E> {
        Ok(None)
    }
    fn string<E: de::Error>(self, v: Cow<'de, str>) -> Result<Self::Out, E> {
        Ok(Some(vec![Piece::Text(v)]))
    }
    fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Out, A::Error> {
        let mut pieces: Vec<Piece<'de>> = Vec::new();
        let mut i = 0;
        while let Some(item) = seq.next_element_seed(Seed(PromptItem(Loc::Index(&self.0, i))))? {
            match item {
                PromptItem_::Text(t) => pieces.push(Piece::Text(t)),
                PromptItem_::Id(id) => match pieces.last_mut() {
                    Some(Piece::Ids(ids)) => ids.push(id),
                    _ => pieces.push(Piece::Ids(vec![id])),
                },
                PromptItem_::Ids(ids) => pieces.push(Piece::Ids(ids)),
            }
            i += 1;
        }
        Ok(Some(pieces))
    }
}

#[allow(non_camel_case_types)]
enum PromptItem_<'a> {
    Text(Cow<'a, str>),
    Id(u32),
    Ids(Vec<u32>),
}

struct PromptItem<'p>(Loc<'p>);

impl<'de> Shape<'de> for PromptItem<'_> {
    type Out = PromptItem_<'de>;
    fn loc(&self) -> Loc<'_> {
        self.0
    }
    fn expected(&self) -> &'static str {
        "a string, a token id, or an array of token ids"
    }
    fn string<E: de::Error>(self, v: Cow<'de, str>) -> Result<Self::Out, E> {
        Ok(PromptItem_::Text(v))
    }
    fn int<E: de::Error>(self, v: i128) -> Result<Self::Out, E> {
        TokenId(self.0).int(v).map(PromptItem_::Id)
    }
    fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Out, A::Error> {
        let mut ids = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(id) = seq.next_element_seed(Seed(TokenId(Loc::Index(&self.0, ids.len()))))? {
            ids.push(id);
        }
        Ok(PromptItem_::Ids(ids))
    }
}

/// A token id: an integer in `0..=u32::MAX`.
struct TokenId<'p>(Loc<'p>);

impl<'de> Shape<'de> for TokenId<'_> {
    type Out = u32;
    fn loc(&self) -> Loc<'_> {
        self.0
    }
    fn expected(&self) -> &'static str {
        "a token id (an integer from 0 to 4294967295)"
    }
    fn int<E: de::Error>(self, v: i128) -> Result<u32, E> {
        u32::try_from(v).map_err(|_| self.wrong())
    }
}

// ---------------------------------------------------------------- messages

/// Message content: a string, an array of parts, or null/absent.
#[derive(Debug, Default)]
pub(super) enum Content<'a> {
    #[default]
    None,
    Text(Cow<'a, str>),
    /// The text parts only; other part types are dropped while parsing.
    Parts(Vec<Cow<'a, str>>),
}

impl<'a> Content<'a> {
    /// The text parts in order.
    pub(super) fn parts(&self) -> impl Iterator<Item = &str> + '_ {
        let (one, many): (Option<&str>, &[Cow<'a, str>]) = match self {
            Content::None => (None, &[]),
            Content::Text(t) => (Some(t.as_ref()), &[]),
            Content::Parts(p) => (None, p.as_slice()),
        };
        one.into_iter().chain(many.iter().map(|c| c.as_ref()))
    }
}

/// A chat message (or a Responses input item): role and content.
#[derive(Debug)]
pub(super) struct Message<'a> {
    pub role: Option<Cow<'a, str>>,
    pub content: Content<'a>,
}

struct Messages<'p>(Loc<'p>);

impl<'de> Shape<'de> for Messages<'_> {
    type Out = Option<Vec<Message<'de>>>;
    fn loc(&self) -> Loc<'_> {
        self.0
    }
    fn expected(&self) -> &'static str {
        "an array of message objects"
    }
    fn null<E: de::Error>(self) -> Result<Self::Out, E> {
        Ok(None)
    }
    fn seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Out, A::Error> {
        message_list(self.0, seq).map(Some)
    }
}

fn message_list<'de, A: SeqAccess<'de>>(
    loc: Loc<'_>,
    mut seq: A,
) -> Result<Vec<Message<'de>>, A::Error> {
    let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(256));
    while let Some(m) = seq.next_element_seed(Seed(MessageShape(Loc::Index(&loc, out.len()))))? {
        out.push(m);
    }
    Ok(out)
}

struct MessageShape<'p>(Loc<'p>);

impl<'de> Shape<'de> for MessageShape<'_> {
    type Out = Message<'de>;
    fn loc(&self) -> Loc<'_> {
        self.0
    }
    fn expected(&self) -> &'static str {
        "an object"
    }
    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
        #[derive(Clone, Copy)]
        enum K {
            Role,
            Content,
            Other,
        }
        let mut msg = Message {
            role: None,
            content: Content::None,
        };
        while let Some(k) = map.next_key_seed(key_seed(|k| match k {
            "role" => K::Role,
            "content" => K::Content,
            _ => K::Other,
        }))? {
            match k {
                K::Role => {
                    msg.role = map.next_value_seed(Seed(Str(Loc::Field(&self.0, "role"))))?
                }
                K::Content => {
                    msg.content =
                        map.next_value_seed(Seed(ContentShape(Loc::Field(&self.0, "content"))))?
                }
                K::Other => skip(&mut map)?,
            }
        }
        Ok(msg)
    }
}

struct ContentShape<'p>(Loc<'p>);

impl<'de> Shape<'de> for ContentShape<'_> {
    type Out = Content<'de>;
    fn loc(&self) -> Loc<'_> {
        self.0
    }
    fn expected(&self) -> &'static str {
        "a string, an array of content parts, or null"
    }
    fn null<E: de::Error>(self) -> Result<Self::Out, E> {
        Ok(Content::None)
    }
    fn string<E: de::Error>(self, v: Cow<'de, str>) -> Result<Self::Out, E> {
        Ok(Content::Text(v))
    }
    fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Out, A::Error> {
        let mut parts = Vec::new();
        let mut i = 0;
        while let Some(part) = seq.next_element_seed(Seed(PartShape(Loc::Index(&self.0, i))))? {
            parts.extend(part);
            i += 1;
        }
        Ok(Content::Parts(parts))
    }
}

/// A content part: `{"type": "text", "text": ...}` (also `input_text`,
/// `output_text`, or no type) gives its text; a bare string is text; other
/// part types give nothing.
struct PartShape<'p>(Loc<'p>);

impl<'de> Shape<'de> for PartShape<'_> {
    type Out = Option<Cow<'de, str>>;
    fn loc(&self) -> Loc<'_> {
        self.0
    }
    fn expected(&self) -> &'static str {
        "a content part object"
    }
    fn string<E: de::Error>(self, v: Cow<'de, str>) -> Result<Self::Out, E> {
        Ok(Some(v))
    }
    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
        #[derive(Clone, Copy)]
        enum K {
            Type,
            Text,
            Other,
        }
        let mut ty: Option<Cow<'de, str>> = None;
        let mut text = None;
        while let Some(k) = map.next_key_seed(key_seed(|k| match k {
            "type" => K::Type,
            "text" => K::Text,
            _ => K::Other,
        }))? {
            match k {
                K::Type => ty = map.next_value_seed(Seed(Str(Loc::Field(&self.0, "type"))))?,
                K::Text => text = map.next_value_seed(Seed(Str(Loc::Field(&self.0, "text"))))?,
                K::Other => skip(&mut map)?,
            }
        }
        let is_text = matches!(
            ty.as_deref(),
            None | Some("text") | Some("input_text") | Some("output_text")
        );
        Ok(if is_text { text } else { None })
    }
}

/// Responses API `input`: a string, or an array of items.
#[derive(Debug)]
pub(super) enum ResponsesInput<'a> {
    Text(Cow<'a, str>),
    Items(Vec<Message<'a>>),
}

struct ResponsesInputShape<'p>(Loc<'p>);

impl<'de> Shape<'de> for ResponsesInputShape<'_> {
    type Out = Option<ResponsesInput<'de>>;
    fn loc(&self) -> Loc<'_> {
        self.0
    }
    fn expected(&self) -> &'static str {
        "a string or an array of input items"
    }
    fn null<E: de::Error>(self) -> Result<Self::Out, E> {
        Ok(None)
    }
    fn string<E: de::Error>(self, v: Cow<'de, str>) -> Result<Self::Out, E> {
        Ok(Some(ResponsesInput::Text(v)))
    }
    fn seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Out, A::Error> {
        message_list(self.0, seq).map(|m| Some(ResponsesInput::Items(m)))
    }
}

// ---------------------------------------------------------------- rerank

/// Rerank `documents`: strings, or objects with a `text` field.
struct Documents<'p>(Loc<'p>);

impl<'de> Shape<'de> for Documents<'_> {
    type Out = Option<Vec<Cow<'de, str>>>;
    fn loc(&self) -> Loc<'_> {
        self.0
    }
    fn expected(&self) -> &'static str {
        "an array of documents"
    }
    fn null<E: de::Error>(self) -> Result<Self::Out, E> {
        Ok(None)
    }
    fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Out, A::Error> {
        let mut docs = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        let mut i = 0;
        while let Some(d) = seq.next_element_seed(Seed(Document(Loc::Index(&self.0, i))))? {
            docs.extend(d);
            i += 1;
        }
        Ok(Some(docs))
    }
}

struct Document<'p>(Loc<'p>);

impl<'de> Shape<'de> for Document<'_> {
    type Out = Option<Cow<'de, str>>;
    fn loc(&self) -> Loc<'_> {
        self.0
    }
    fn expected(&self) -> &'static str {
        "a string or an object with `text`"
    }
    fn string<E: de::Error>(self, v: Cow<'de, str>) -> Result<Self::Out, E> {
        Ok(Some(v))
    }
    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
        let mut text = None;
        while let Some(is_text) = map.next_key_seed(key_seed(|k| k == "text"))? {
            if is_text {
                text = map.next_value_seed(Seed(Str(Loc::Field(&self.0, "text"))))?;
            } else {
                skip(&mut map)?;
            }
        }
        Ok(text)
    }
}

// ---------------------------------------------------------------- body

/// What was read from a body; which fields are filled depends on the endpoint.
#[derive(Debug, Default)]
pub(super) struct Parsed<'a> {
    pub model: Option<Cow<'a, str>>,
    pub stream: Option<bool>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    /// `max_output_tokens`, `parameters.max_new_tokens`, `options.num_predict`.
    pub limit: Option<u32>,
    /// Responses `instructions`, Ollama generate `system`.
    pub system: Option<Cow<'a, str>>,
    /// TGI `inputs`, Ollama generate `prompt`, Ollama legacy embeddings
    /// `prompt`, rerank `query`.
    pub text: Option<Cow<'a, str>>,
    /// Completions `prompt`, embeddings `input`, Ollama embed `input`.
    pub pieces: Option<Vec<Piece<'a>>>,
    /// Chat `messages`.
    pub messages: Option<Vec<Message<'a>>>,
    /// Responses `input`.
    pub responses_input: Option<ResponsesInput<'a>>,
    /// Rerank `documents`.
    pub docs: Option<Vec<Cow<'a, str>>>,
    /// OpenAI `user` (end-user id), for session affinity.
    pub user: Option<Cow<'a, str>>,
}

/// The top-level object of a request to `endpoint`.
pub(super) struct BodyShape<'p> {
    pub loc: Loc<'p>,
    pub endpoint: Endpoint,
}

#[derive(Clone, Copy)]
enum Key {
    Model,
    Stream,
    MaxTokens,
    MaxCompletionTokens,
    MaxOutputTokens,
    Messages,
    Prompt,
    Input,
    Instructions,
    System,
    Query,
    Documents,
    Inputs,
    Parameters,
    Options,
    User,
    Other,
}

fn body_key(k: &str) -> Key {
    match k {
        "model" => Key::Model,
        "stream" => Key::Stream,
        "max_tokens" => Key::MaxTokens,
        "max_completion_tokens" => Key::MaxCompletionTokens,
        "max_output_tokens" => Key::MaxOutputTokens,
        "messages" => Key::Messages,
        "prompt" => Key::Prompt,
        "input" => Key::Input,
        "instructions" => Key::Instructions,
        "system" => Key::System,
        "query" => Key::Query,
        "documents" => Key::Documents,
        "inputs" => Key::Inputs,
        "parameters" => Key::Parameters,
        "options" => Key::Options,
        "user" => Key::User,
        _ => Key::Other,
    }
}

impl<'de> Shape<'de> for BodyShape<'_> {
    type Out = Parsed<'de>;
    fn loc(&self) -> Loc<'_> {
        self.loc
    }
    fn expected(&self) -> &'static str {
        "a JSON object"
    }
    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
        use Endpoint as E;
        let ep = self.endpoint;
        let mut p = Parsed::default();
        let root = |name| Loc::Root(name);
        while let Some(key) = map.next_key_seed(key_seed(body_key))? {
            match (key, ep) {
                (Key::Model, _) => p.model = map.next_value_seed(Seed(Str(root("model"))))?,
                (
                    Key::Stream,
                    E::ChatCompletions
                    | E::Completions
                    | E::Responses
                    | E::OllamaGenerate
                    | E::OllamaChat,
                ) => p.stream = map.next_value_seed(Seed(Bool(root("stream"))))?,
                (Key::MaxTokens, E::ChatCompletions | E::Completions) => {
                    p.max_tokens = map.next_value_seed(Seed(Count(root("max_tokens"))))?
                }
                (Key::MaxCompletionTokens, E::ChatCompletions) => {
                    p.max_completion_tokens =
                        map.next_value_seed(Seed(Count(root("max_completion_tokens"))))?
                }
                (Key::MaxOutputTokens, E::Responses) => {
                    p.limit = map.next_value_seed(Seed(Count(root("max_output_tokens"))))?
                }
                (Key::Messages, E::ChatCompletions | E::OllamaChat) => {
                    p.messages = map.next_value_seed(Seed(Messages(root("messages"))))?
                }
                (Key::Prompt, E::Completions) => {
                    p.pieces = map.next_value_seed(Seed(Prompt(root("prompt"))))?
                }
                (Key::Input, E::Embeddings | E::OllamaEmbed) => {
                    p.pieces = map.next_value_seed(Seed(Prompt(root("input"))))?
                }
                (Key::Prompt, E::OllamaGenerate | E::OllamaEmbed) => {
                    p.text = map.next_value_seed(Seed(Str(root("prompt"))))?
                }
                (Key::Input, E::Responses) => {
                    p.responses_input =
                        map.next_value_seed(Seed(ResponsesInputShape(root("input"))))?
                }
                (Key::Instructions, E::Responses) => {
                    p.system = map.next_value_seed(Seed(Str(root("instructions"))))?
                }
                (Key::System, E::OllamaGenerate) => {
                    p.system = map.next_value_seed(Seed(Str(root("system"))))?
                }
                (Key::Query, E::Rerank) => {
                    p.text = map.next_value_seed(Seed(Str(root("query"))))?
                }
                (Key::Documents, E::Rerank) => {
                    p.docs = map.next_value_seed(Seed(Documents(root("documents"))))?
                }
                (Key::Inputs, E::TgiGenerate | E::TgiGenerateStream) => {
                    p.text = map.next_value_seed(Seed(Str(root("inputs"))))?
                }
                (Key::Parameters, E::TgiGenerate | E::TgiGenerateStream) => {
                    p.limit = map.next_value_seed(Seed(LimitIn {
                        loc: root("parameters"),
                        key: "max_new_tokens",
                    }))?
                }
                (Key::Options, E::OllamaGenerate | E::OllamaChat) => {
                    p.limit = map.next_value_seed(Seed(LimitIn {
                        loc: root("options"),
                        key: "num_predict",
                    }))?
                }
                (Key::User, E::ChatCompletions | E::Completions | E::Embeddings | E::Responses) => {
                    p.user = map.next_value_seed(Seed(Str(root("user"))))?
                }
                _ => skip(&mut map)?,
            }
        }
        Ok(p)
    }
}
