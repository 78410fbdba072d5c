//! The model's chat template on the gateway: the Jinja template a model
//! ships (`chat_template.jinja`, or `chat_template` in
//! `tokenizer_config.json`) rendered the way Hugging Face's
//! `apply_chat_template` renders it for vLLM, so chat prompts tokenize to the
//! ids the engine caches.
//!
//! What the template sees, as vLLM passes it for a chat request: `messages`
//! (each `{role, content}`, content the text parts joined with `"\n"`, vLLM's
//! "string" content format), `add_generation_prompt = true`, `tools` and
//! `documents` as none, and the special tokens of `tokenizer_config.json`
//! (`bos_token`, `eos_token`, ...). The environment is Hugging Face's: blocks
//! trimmed and left-stripped, `break`/`continue`, Python string methods
//! (`.strip()`, `.startswith()`, ...), `raise_exception`, `strftime_now`
//! (UTC) and a `tojson` with Python's separators. Requests whose template
//! input is more than that (tools, documents, images, `chat_template_kwargs`,
//! assistant tool calls) render differently from the engine; their blocks
//! find no precise hit and the policy falls back to its approximate index.
//!
//! A prompt cut at the capture limit is rendered up to the cut: the cut
//! message gets a marker at its end and the output stops there, so what is
//! tokenized is a prefix of what the engine renders.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};

use crate::classify::ChatMessage;

/// Marks where a cut message ends in the rendered text (private-use
/// characters no prompt is expected to hold).
const CUT_MARK: &str = "\u{F8FF}infergate-cut\u{F8FE}";

/// The special tokens `apply_chat_template` passes to the template.
const SPECIAL_TOKENS: &[&str] = &[
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// A compiled chat template with the special tokens it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    special: BTreeMap<String, String>,
    origin: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compile `source`; `special` maps `bos_token` etc. to their text;
    /// `origin` says where it came from (for logs).
    pub fn new(
        source: &str,
        special: BTreeMap<String, String>,
        origin: impl Into<String>,
    ) -> Result<ChatTemplate, String> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        let origin = origin.into();
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| format!("chat template {origin}: {e}"))?;
        Ok(ChatTemplate {
            env,
            special,
            origin,
        })
    }

    /// Where the template was read from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Load from `path`: a `tokenizer_config.json` (its `chat_template`,
    /// the one named `default` when it is a list, and its special tokens),
    /// or a Jinja file (special tokens from a `tokenizer_config.json` beside
    /// it, if any).
    pub fn load(path: &Path) -> Result<ChatTemplate, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read chat template `{}`: {e}", path.display()))?;
        let origin = path.display().to_string();
        if path.extension().is_some_and(|e| e == "json") {
            let config = parse_config(&text, path)?;
            let source =
                template_in(&config).ok_or_else(|| format!("`{origin}` has no chat_template"))?;
            return ChatTemplate::new(&source, special_tokens(&config), origin);
        }
        let special = match path.parent().map(|d| d.join("tokenizer_config.json")) {
            Some(cfg) if cfg.is_file() => {
                let config = std::fs::read_to_string(&cfg)
                    .map_err(|e| format!("cannot read `{}`: {e}", cfg.display()))?;
                special_tokens(&parse_config(&config, &cfg)?)
            }
            _ => BTreeMap::new(),
        };
        ChatTemplate::new(&text, special, origin)
    }

    /// The template to render with: the one at `explicit` when given, else
    /// the one shipped beside `tokenizer` (see [`ChatTemplate::beside`]).
    pub fn configured(
        explicit: Option<&Path>,
        tokenizer: &Path,
    ) -> Result<Option<ChatTemplate>, String> {
        match explicit {
            Some(path) => ChatTemplate::load(path).map(Some),
            None => ChatTemplate::beside(tokenizer),
        }
    }

    /// The template shipped beside `tokenizer` (a `tokenizer.json`), as
    /// vLLM uses the model's own by default: `chat_template.jinja`, else the
    /// `chat_template` of `tokenizer_config.json`. `Ok(None)` when there is
    /// none.
    pub fn beside(tokenizer: &Path) -> Result<Option<ChatTemplate>, String> {
        let Some(dir) = tokenizer.parent() else {
            return Ok(None);
        };
        let jinja: PathBuf = dir.join("chat_template.jinja");
        if jinja.is_file() {
            return ChatTemplate::load(&jinja).map(Some);
        }
        let config = dir.join("tokenizer_config.json");
        if !config.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&config)
            .map_err(|e| format!("cannot read `{}`: {e}", config.display()))?;
        let parsed = parse_config(&text, &config)?;
        match template_in(&parsed) {
            Some(source) => ChatTemplate::new(
                &source,
                special_tokens(&parsed),
                config.display().to_string(),
            )
            .map(Some),
            None => Ok(None),
        }
    }

    /// The messages rendered as the engine renders them for a chat
    /// request; when `truncated`, only up to the capture cut (see the
    /// module doc). `None` when the template fails on them.
    pub fn render(&self, messages: &[ChatMessage<'_>], truncated: bool) -> Option<String> {
        let mut list: Vec<BTreeMap<&str, String>> = Vec::with_capacity(messages.len());
        let mut marked = false;
        for m in messages {
            if m.cut && m.parts.is_empty() {
                // Cut in its role or before any text: render the messages
                // before it (their closing tokens precede it in any case).
                break;
            }
            let mut content = m.parts.join("\n");
            if m.cut {
                content.push_str(CUT_MARK);
                marked = true;
            }
            list.push(BTreeMap::from([
                ("role", m.role.to_string()),
                ("content", content),
            ]));
            if m.cut {
                break;
            }
        }
        let template = self.env.get_template("chat").ok()?;
        let mut ctx: BTreeMap<&str, Value> = self
            .special
            .iter()
            .map(|(k, v)| (k.as_str(), Value::from(v.as_str())))
            .collect();
        ctx.insert("messages", Value::from_serialize(&list));
        ctx.insert("add_generation_prompt", Value::from(!truncated));
        ctx.insert("tools", Value::from(()));
        ctx.insert("documents", Value::from(()));
        let mut out = template.render(ctx).ok()?;
        if marked {
            let at = out.find(CUT_MARK)?;
            out.truncate(at);
        }
        Some(out)
    }
}

fn parse_config(text: &str, path: &Path) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| format!("cannot parse `{}`: {e}", path.display()))
}

/// `chat_template` of a `tokenizer_config.json`: a string, or a list of
/// `{name, template}` of which `default` is the one chat requests use.
fn template_in(config: &serde_json::Value) -> Option<String> {
    match config.get("chat_template")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(|t| t.as_str())
            .map(str::to_string),
        _ => None,
    }
}

/// The special tokens of a `tokenizer_config.json` (a string, or an
/// `AddedToken` object with `content`).
fn special_tokens(config: &serde_json::Value) -> BTreeMap<String, String> {
    SPECIAL_TOKENS
        .iter()
        .filter_map(|&name| {
            let v = config.get(name)?;
            let text = v
                .as_str()
                .or_else(|| v.get("content").and_then(|c| c.as_str()))?;
            Some((name.to_string(), text.to_string()))
        })
        .collect()
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// `tojson` as Hugging Face defines it: `json.dumps` with
/// `ensure_ascii=False`, Python's `", "`/`": "` separators, or an indent.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let fail = |e: serde_json::Error| Error::new(ErrorKind::InvalidOperation, e.to_string());
    let mut out = Vec::new();
    match indent {
        Some(n) => {
            let pad = vec![b' '; n];
            let fmt = serde_json::ser::PrettyFormatter::with_indent(&pad);
            let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
            serde::Serialize::serialize(value, &mut ser).map_err(fail)?;
        }
        None => {
            let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonSeparators);
            serde::Serialize::serialize(value, &mut ser).map_err(fail)?;
        }
    }
    Ok(Value::from_safe_string(
        String::from_utf8(out).unwrap_or_default(),
    ))
}

/// `json.dumps`'s default separators: `", "` between items, `": "` after keys.
struct PythonSeparators;

impl serde_json::ser::Formatter for PythonSeparators {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        item_separator(writer, first)
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        item_separator(writer, first)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

fn item_separator<W: ?Sized + std::io::Write>(writer: &mut W, first: bool) -> std::io::Result<()> {
    if first {
        Ok(())
    } else {
        writer.write_all(b", ")
    }
}

/// `strftime_now(format)`: the current UTC time formatted with the common
/// directives (`%Y %y %m %d %e %j %H %M %S %b %B %a %A %p %%`); others are
/// kept as written. (Llama 3 templates print `strftime_now("%d %b %Y")`.)
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    strftime(&format, secs)
}

fn strftime(format: &str, unix_secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let days = unix_secs / 86_400;
    let rem = unix_secs % 86_400;
    let (year, month, day) = crate::utc::civil_from_days(days);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let before: [u64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = before[(month - 1) as usize] + day + u64::from(leap && month > 2);
    let (hour, minute, second) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let month_name = MONTHS[(month - 1) as usize];
    let day_name = DAYS[(days % 7) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('H') => out.push_str(&format!("{hour:02}")),
            Some('M') => out.push_str(&format!("{minute:02}")),
            Some('S') => out.push_str(&format!("{second:02}")),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('b') => out.push_str(&month_name[..3]),
            Some('B') => out.push_str(month_name),
            Some('a') => out.push_str(&day_name[..3]),
            Some('A') => out.push_str(day_name),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests;
