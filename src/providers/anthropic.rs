//! Anthropic Messages API (`POST /v1/messages`, `anthropic-version: 2023-06-01`) ⇄ OpenAI Chat
//! Completions.
//!
//! * [`chat_request`] builds the upstream request (path, body, `anthropic-version` /
//!   `anthropic-beta` headers); [`request_body`] builds the Messages body from a parsed
//!   [`ChatRequest`] and the client's `"anthropic": {…}` namespace ([`Extras`]).
//! * [`response_body`] turns a whole Anthropic `Message` into a `chat.completion`.
//! * [`StreamTranslator`] turns the Anthropic SSE stream (`message_start`, `content_block_*`,
//!   `message_delta`, `message_stop`, `ping`, `error`) into `chat.completion.chunk` events, ending
//!   with a usage-only chunk and `data: [DONE]`.
//! * [`map_error`] / [`map_status`] turn Anthropic errors into OpenAI-shaped ones (529 → 503).
//!
//! Everything here runs on untrusted bytes inside the VM: no `unwrap`, no indexing on input.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::util::{overflow, s, too_many, truncated, MAX_STREAM_TOOL_CALLS, write_error_event, write_chunk, write_usage_and_done, Phase, Str};
use super::{AttemptContext, ResponseHints, UpstreamRequest};
use crate::api::chat::{
    parse_chat_request, ChatCompletion, ChatRequest, Choice,
    Content, ContentPart, Delta, FunctionCall, FunctionDelta, PromptTokensDetails, ResponseFormat,
    ResponseMessage, Role, Stop, ToolCall, ToolCallDelta, ToolChoice, Usage,
};
use crate::api::error::{kind_for_status, ApiError};
use crate::config::{Backend, DEFAULT_ANTHROPIC_VERSION, DEFAULT_MAX_TOKENS};
use crate::stream::sse::{SseParser, SseStatus};

// =============================================================================================
// Request
// =============================================================================================

#[derive(Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<AnthMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<AnthTool<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<AnthToolChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<Cow<'a, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_tier: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_config: Option<&'a Value>,
}

#[derive(Serialize)]
struct AnthMessage<'a> {
    role: &'static str,
    content: Vec<Block<'a>>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text {
        text: &'a str,
    },
    Image {
        source: ImageSource<'a>,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: Value,
    },
    ToolResult {
        tool_use_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        content: Option<ToolResultContent<'a>>,
    },
}

impl Block<'_> {
    fn is_tool_result(&self) -> bool {
        matches!(self, Block::ToolResult { .. })
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ImageSource<'a> {
    Base64 { media_type: &'a str, data: &'a str },
    Url { url: &'a str },
}

#[derive(Serialize)]
#[serde(untagged)]
enum ToolResultContent<'a> {
    Text(&'a str),
    Blocks(Vec<Block<'a>>),
}

#[derive(Serialize)]
struct AnthTool<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: Cow<'a, Value>,
}

#[derive(Serialize)]
struct AnthToolChoice<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disable_parallel_tool_use: Option<bool>,
}

// ---------------------------------------------------------------------------------------------
// Upstream request and the `"anthropic": {…}` namespace
// ---------------------------------------------------------------------------------------------

/// The request-body field that carries Anthropic-only Messages features.
pub const NAMESPACE: &str = "anthropic";

/// Keys accepted inside `"anthropic": {…}`; any other key is a 400 naming `anthropic.<key>`.
pub const NAMESPACE_FIELDS: &[&str] =
    &["thinking", "top_k", "metadata", "service_tier", "output_config", "anthropic_beta", "cache_control"];

/// Smallest `thinking.budget_tokens` Anthropic accepts.
pub const MIN_THINKING_BUDGET: u32 = 1024;

/// The chat attempt for an Anthropic backend: `POST {base}/messages` with the translated body, the
/// `anthropic-version` header and, when the client asks for betas, `anthropic-beta` (joined with
/// any `anthropic-beta` the backend configuration already sends, which it would otherwise replace).
pub fn chat_request(backend: &Backend, body: &[u8], ctx: &AttemptContext) -> Result<UpstreamRequest, ApiError> {
    let req = parse_chat_request(body)?;
    let extras = Extras::from_body(body)?;
    let out = request_body(&req, &extras, ctx.model, backend.default_max_tokens.unwrap_or(DEFAULT_MAX_TOKENS))?;
    let version = backend.anthropic_version.clone().unwrap_or_else(|| DEFAULT_ANTHROPIC_VERSION.to_string());
    let mut headers = vec![("anthropic-version", version)];
    if !extras.betas.is_empty() {
        let mut betas: Vec<&str> = backend
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("anthropic-beta"))
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .collect();
        for b in &extras.betas {
            if !betas.contains(&b.as_str()) {
                betas.push(b);
            }
        }
        headers.push(("anthropic-beta", betas.join(",")));
    }
    Ok(UpstreamRequest {
        path: format!("{}/messages", backend.base_path()),
        body: out,
        headers,
        hints: ResponseHints::chat(req.is_stream(), ctx.model),
    })
}

/// The attempt for an Anthropic backend of a client that spoke the Messages API itself: its own
/// body, with only `model` rewritten (so every Anthropic-only feature keeps working), to
/// `{base}/messages` with the backend's `anthropic-version`. The client's `anthropic-beta` header
/// passes as it came.
pub fn native_request(backend: &Backend, body: &[u8], ctx: &AttemptContext) -> Result<UpstreamRequest, ApiError> {
    #[derive(Deserialize)]
    struct Peek<'a> {
        #[serde(borrow)]
        model: Cow<'a, str>,
        #[serde(default)]
        stream: Option<bool>,
    }
    let peek: Peek = serde_json::from_slice(body).map_err(|e| ApiError::invalid_request(format!("Invalid JSON body: {e}")))?;
    let stream = peek.stream == Some(true);
    let out = if peek.model == ctx.model {
        body.to_vec()
    } else {
        let mut obj: Map<String, Value> =
            serde_json::from_slice(body).map_err(|e| ApiError::invalid_request(format!("Invalid JSON body: {e}")))?;
        obj.insert("model".into(), Value::String(ctx.model.to_string()));
        serde_json::to_vec(&obj).map_err(|e| ApiError::gateway(500, format!("could not encode request: {e}")))?
    };
    let version = backend.anthropic_version.clone().unwrap_or_else(|| DEFAULT_ANTHROPIC_VERSION.to_string());
    Ok(UpstreamRequest {
        path: format!("{}/messages", backend.base_path()),
        body: out,
        headers: vec![("anthropic-version", version)],
        hints: ResponseHints::chat(stream, ctx.model),
    })
}

/// What the client's `"anthropic": {…}` object asks for (checked; `null` or absent = nothing).
///
/// * `thinking` — Anthropic's thinking configuration, sent as given. `{"type":"enabled"}` needs an
///   integer `budget_tokens` ≥ 1024 and below the request's `max_tokens` (see [`request_body`]).
/// * `top_k` (non-negative integer), `service_tier` (string), `metadata` (object: its keys are added
///   to the `metadata.user_id` taken from `user`, and win), `output_config` (object) — sent as given.
/// * `anthropic_beta` — a beta name or an array of them, sent as the `anthropic-beta` header. Names
///   are letters, digits, `-`, `_` and `.` only (they become a header value).
/// * `cache_control` — e.g. `{"type":"ephemeral"}` (optionally with `ttl`): a prompt-caching
///   breakpoint is put, with this object, on the last tool definition, on the system prompt and on
///   the last content block of the last message (three of Anthropic's four breakpoints), so the
///   whole prefix is cached and the next turn reads it.
#[derive(Debug, Default)]
pub struct Extras {
    thinking: Option<ThinkingConfig>,
    top_k: Option<u64>,
    metadata: Option<Map<String, Value>>,
    service_tier: Option<String>,
    output_config: Option<Value>,
    betas: Vec<String>,
    cache_control: Option<Value>,
}

#[derive(Debug)]
struct ThinkingConfig {
    /// The object as the client sent it.
    value: Value,
    /// `budget_tokens` of `{"type":"enabled"}`.
    budget: Option<u32>,
    /// Any type but `disabled`: the model thinks, so sampling is constrained.
    active: bool,
}

fn ns_error(key: &str, message: impl Into<String>) -> ApiError {
    let param = if key.is_empty() { NAMESPACE.to_string() } else { format!("{NAMESPACE}.{key}") };
    ApiError::invalid_param(param, message)
}

impl Extras {
    /// Reads and checks the `"anthropic"` field of the client's (already parsed) body.
    pub fn from_body(raw: &[u8]) -> Result<Extras, ApiError> {
        // Most bodies have no namespace: skip the second parse unless the key can be there.
        let needle = NAMESPACE.as_bytes();
        if !raw.windows(needle.len()).any(|w| w == needle) {
            return Ok(Extras::default());
        }
        #[derive(Deserialize)]
        struct Outer {
            #[serde(default)]
            anthropic: Option<Value>,
        }
        let outer: Outer =
            serde_json::from_slice(raw).map_err(|e| ApiError::invalid_request(format!("Invalid JSON body: {e}")))?;
        match outer.anthropic {
            None | Some(Value::Null) => Ok(Extras::default()),
            Some(Value::Object(map)) => Extras::from_map(map),
            Some(_) => Err(ns_error("", "Invalid value for 'anthropic': expected an object of Anthropic request fields.")),
        }
    }

    fn from_map(map: Map<String, Value>) -> Result<Extras, ApiError> {
        let mut x = Extras::default();
        for (k, v) in map {
            // `null` is the same as absent (for known keys only: an unknown key is still an error).
            if v.is_null() && NAMESPACE_FIELDS.contains(&k.as_str()) {
                continue;
            }
            match k.as_str() {
                "thinking" => x.thinking = Some(ThinkingConfig::parse(v)?),
                "top_k" => {
                    x.top_k = Some(v.as_u64().ok_or_else(|| {
                        ns_error("top_k", "Invalid value for 'anthropic.top_k': expected a non-negative integer.")
                    })?)
                }
                "metadata" => match v {
                    Value::Object(m) => x.metadata = Some(m),
                    _ => return Err(ns_error("metadata", "Invalid value for 'anthropic.metadata': expected an object.")),
                },
                "service_tier" => match v {
                    Value::String(t) => x.service_tier = Some(t),
                    _ => return Err(ns_error("service_tier", "Invalid value for 'anthropic.service_tier': expected a string.")),
                },
                "output_config" => match v {
                    v @ Value::Object(_) => x.output_config = Some(v),
                    _ => return Err(ns_error("output_config", "Invalid value for 'anthropic.output_config': expected an object.")),
                },
                "anthropic_beta" => x.betas = parse_betas(v)?,
                "cache_control" => match v {
                    Value::Object(ref m) if m.get("type").is_some_and(Value::is_string) => x.cache_control = Some(v),
                    _ => {
                        return Err(ns_error(
                            "cache_control",
                            "Invalid value for 'anthropic.cache_control': expected an object with a string 'type', \
                             such as {\"type\": \"ephemeral\"}.",
                        ))
                    }
                },
                other => {
                    return Err(ns_error(
                        other,
                        format!("Unknown Anthropic field 'anthropic.{other}'. Supported: {}.", NAMESPACE_FIELDS.join(", ")),
                    ))
                }
            }
        }
        Ok(x)
    }
}

impl ThinkingConfig {
    fn parse(v: Value) -> Result<ThinkingConfig, ApiError> {
        let Value::Object(m) = &v else {
            return Err(ns_error(
                "thinking",
                "Invalid value for 'anthropic.thinking': expected an object such as {\"type\": \"enabled\", \"budget_tokens\": 2048}.",
            ));
        };
        let Some(kind) = m.get("type").and_then(Value::as_str) else {
            return Err(ns_error("thinking.type", "Missing or invalid 'anthropic.thinking.type': expected a string such as \"enabled\"."));
        };
        let mut budget = None;
        if kind == "enabled" {
            let b = m.get("budget_tokens").and_then(Value::as_u64).and_then(|b| u32::try_from(b).ok());
            match b {
                Some(b) if b >= MIN_THINKING_BUDGET => budget = Some(b),
                _ => {
                    return Err(ns_error(
                        "thinking.budget_tokens",
                        format!(
                            "Invalid value for 'anthropic.thinking.budget_tokens': expected an integer of at least \
                             {MIN_THINKING_BUDGET} when thinking is enabled."
                        ),
                    ))
                }
            }
        }
        let active = kind != "disabled";
        Ok(ThinkingConfig { value: v, budget, active })
    }
}

fn parse_betas(v: Value) -> Result<Vec<String>, ApiError> {
    let bad = || {
        ns_error(
            "anthropic_beta",
            "Invalid value for 'anthropic.anthropic_beta': expected a beta name or an array of them \
             (letters, digits, '-', '_' and '.').",
        )
    };
    let names = match v {
        Value::String(s) => vec![s],
        Value::Array(items) => items
            .into_iter()
            .map(|i| match i {
                Value::String(s) => Ok(s),
                _ => Err(bad()),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err(bad()),
    };
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for n in names {
        let n = n.trim().to_string();
        if n.is_empty() || n.len() > 128 || !n.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
            return Err(bad());
        }
        if !out.contains(&n) {
            out.push(n);
        }
    }
    Ok(out)
}

/// `max_tokens` when the client set no limit and the model thinks on `budget` tokens: the default
/// when the budget fits below it, else the budget plus the default (the answer keeps the default
/// allowance on top of the thinking).
pub(crate) fn max_tokens_for_budget(default_max_tokens: u32, budget: u32) -> u32 {
    if budget < default_max_tokens {
        default_max_tokens
    } else {
        budget.saturating_add(default_max_tokens)
    }
}

/// OpenAI `reasoning_effort` → thinking budget (the budgets Google's OpenAI-compatible endpoint uses
/// for the same levels). `none`, `minimal` and unknown levels: no thinking.
pub(crate) fn effort_budget(effort: &str) -> Option<u32> {
    match effort {
        "low" => Some(1024),
        "medium" => Some(8192),
        "high" => Some(24576),
        _ => None,
    }
}

/// Puts `cache_control` on the last tool, the system prompt (made a text block) and the last
/// content block of the last message.
fn apply_cache_control(body: &mut Value, cc: &Value) {
    let Value::Object(obj) = body else { return };
    if let Some(Value::Object(tool)) = obj.get_mut("tools").and_then(Value::as_array_mut).and_then(|t| t.last_mut()) {
        tool.insert("cache_control".into(), cc.clone());
    }
    if let Some(Value::String(text)) = obj.get("system") {
        let block = serde_json::json!([{ "type": "text", "text": text, "cache_control": cc }]);
        obj.insert("system".into(), block);
    }
    if let Some(Value::Object(block)) = obj
        .get_mut("messages")
        .and_then(Value::as_array_mut)
        .and_then(|m| m.last_mut())
        .and_then(|m| m.get_mut("content"))
        .and_then(Value::as_array_mut)
        .and_then(|c| c.last_mut())
    {
        block.insert("cache_control".into(), cc.clone());
    }
}

/// Appended to the system prompt for `response_format: {"type":"json_object"}`.
const JSON_OBJECT_INSTRUCTION: &str = "Respond with a single valid JSON object and nothing else: \
no prose, no explanation and no Markdown code fences before or after it.";

/// Build the Anthropic `/v1/messages` JSON body.
///
/// * `system` and `developer` messages, wherever they appear, become the top-level `system` string
///   (several are joined with a blank line).
/// * `user` / `assistant` messages become content blocks; assistant `tool_calls` become `tool_use`
///   blocks after the assistant's text; `tool` messages become `tool_result` blocks in a `user`
///   turn. Consecutive turns of the same Anthropic role are merged into one message, and inside a
///   merged user turn every `tool_result` block comes before other content, as Anthropic requires.
/// * `response_format`: this API version has no JSON mode, so `json_object` / `json_schema` are
///   emulated by appending an instruction (with the schema, when one is given) to the system
///   prompt. The model is asked, not forced: clients that need a guarantee must validate.
/// * `temperature` and `top_p` are passed unchanged (Anthropic's temperature range is 0–1; a larger
///   value comes back as Anthropic's own 400) — except when the model thinks, below.
/// * `max_completion_tokens` / `max_tokens` → `max_tokens`; without either, `default_max_tokens`.
/// * Thinking: `anthropic.thinking` (see [`Extras`]) is sent as given. Otherwise `reasoning_effort`
///   becomes `{"type":"enabled","budget_tokens":…}` with 1024 (`low`), 8192 (`medium`) or 24576
///   (`high`) tokens; `none`, `minimal` and other levels send no thinking. The effort is a hint, so
///   its budget is capped below the client's `max_tokens` (no thinking when that leaves less than
///   1024), and it is not applied when `tool_choice` forces a tool (Anthropic refuses forced tool
///   use while thinking). An explicit `anthropic.thinking` budget is checked instead: at least 1024
///   and below the client's `max_tokens`, else a 400 naming `anthropic.thinking.budget_tokens`. When
///   the client set no limit, `max_tokens` is raised to fit the budget (the budget plus
///   `default_max_tokens`, when the default is not already larger than the budget).
/// * While thinking, Anthropic accepts no `temperature` but its default 1 and `top_p` only between
///   0.95 and 1: the client's `temperature` is dropped, and so is a `top_p` outside that range
///   (OpenAI clients often send sampling values by habit; the answer is the model's at default
///   sampling). `anthropic.top_k` is sent as given (Anthropic refuses it while thinking).
/// * Thinking comes back as `reasoning_content` on the message and on stream deltas (thinking
///   signatures and `redacted_thinking` are not forwarded).
/// * `"anthropic": {…}`: Anthropic-only fields, see [`Extras`]. Other backends ignore the field
///   (OpenAI-compatible ones have it removed from the body they get).
/// * Not translated: `seed`, `metadata`, `stream_options` (the stream always reports usage), and the
///   `reasoning_content` of earlier assistant turns: Anthropic only takes thinking back as the
///   signed `thinking` blocks it produced, and the gateway forwards no signature to clients, so the
///   text is dropped (the model answers without its earlier reasoning).
pub fn request_body(req: &ChatRequest, extras: &Extras, model: &str, default_max_tokens: u32) -> Result<Vec<u8>, ApiError> {
    if let Some(n) = req.n {
        if n > 1 {
            return Err(ApiError::invalid_param(
                "n",
                format!("`n` = {n} is not supported: the Anthropic backend returns one choice per request."),
            ));
        }
    }

    let mut system_parts: Vec<String> = Vec::new();
    let mut messages: Vec<AnthMessage<'_>> = Vec::with_capacity(req.messages.len());

    for (i, m) in req.messages.iter().enumerate() {
        match m.role {
            Role::System | Role::Developer => {
                if let Some(c) = &m.content {
                    let text = c.joined_text();
                    if !text.is_empty() {
                        system_parts.push(text);
                    }
                }
            }
            Role::User => {
                let mut blocks = Vec::new();
                if let Some(c) = &m.content {
                    content_blocks(c, i, false, &mut blocks)?;
                }
                push_turn(&mut messages, "user", blocks);
            }
            Role::Assistant => {
                let mut blocks = Vec::new();
                if let Some(c) = &m.content {
                    content_blocks(c, i, true, &mut blocks)?;
                }
                if let Some(calls) = &m.tool_calls {
                    for (k, call) in calls.iter().enumerate() {
                        let input = parse_arguments(&call.function.arguments).ok_or_else(|| {
                            ApiError::invalid_param(
                                format!("messages[{i}].tool_calls[{k}].function.arguments"),
                                format!(
                                    "Invalid value for 'messages[{i}].tool_calls[{k}].function.arguments': \
                                     expected a JSON object encoded as a string."
                                ),
                            )
                        })?;
                        blocks.push(Block::ToolUse { id: &call.id, name: &call.function.name, input });
                    }
                }
                push_turn(&mut messages, "assistant", blocks);
            }
            Role::Tool => {
                let Some(tool_use_id) = m.tool_call_id.as_deref() else {
                    return Err(ApiError::invalid_param(
                        format!("messages[{i}].tool_call_id"),
                        format!("Missing required parameter: 'messages[{i}].tool_call_id'."),
                    ));
                };
                let content = match &m.content {
                    None => None,
                    Some(Content::Text(s)) if s.is_empty() => None,
                    Some(Content::Text(s)) => Some(ToolResultContent::Text(s)),
                    Some(c @ Content::Parts(_)) => {
                        let mut inner = Vec::new();
                        content_blocks(c, i, true, &mut inner)?;
                        if inner.is_empty() {
                            None
                        } else {
                            Some(ToolResultContent::Blocks(inner))
                        }
                    }
                };
                push_turn(&mut messages, "user", vec![Block::ToolResult { tool_use_id, content }]);
            }
            Role::Function => {
                return Err(ApiError::invalid_param(
                    format!("messages[{i}].role"),
                    format!(
                        "The deprecated 'function' role (messages[{i}]) is not supported by this backend; \
                         use 'tool' messages with 'tool_call_id'."
                    ),
                ));
            }
        }
    }

    match &req.response_format {
        Some(ResponseFormat::JsonObject) => system_parts.push(JSON_OBJECT_INSTRUCTION.to_string()),
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            let mut s = format!(
                "Respond with a single valid JSON object and nothing else (no prose, no Markdown code fences). \
                 The object is the `{}` response format",
                json_schema.name
            );
            if let Some(d) = json_schema.description.as_deref().filter(|d| !d.is_empty()) {
                s.push_str(" (");
                s.push_str(d);
                s.push(')');
            }
            match &json_schema.schema {
                Some(schema) => {
                    s.push_str(" and must conform to this JSON Schema:\n");
                    s.push_str(&schema.to_string());
                }
                None => s.push('.'),
            }
            system_parts.push(s);
        }
        Some(ResponseFormat::Text) | None => {}
    }
    let system = if system_parts.is_empty() { None } else { Some(system_parts.join("\n\n")) };

    let stop_sequences = req.stop.as_ref().and_then(|s| {
        let v: Vec<&str> = match s {
            Stop::One(one) => vec![one.as_str()],
            Stop::Many(many) => many.iter().map(String::as_str).collect(),
        };
        if v.is_empty() {
            None
        } else {
            Some(v)
        }
    });

    let mut tools = None;
    if let Some(defs) = req.tools.as_ref().filter(|t| !t.is_empty()) {
        let mut out = Vec::with_capacity(defs.len());
        for (t, def) in defs.iter().enumerate() {
            if def.kind != "function" {
                return Err(ApiError::invalid_param(
                    format!("tools[{t}].type"),
                    format!("Tool type '{}' is not supported by this backend; only 'function' tools are.", def.kind),
                ));
            }
            let input_schema = match &def.function.parameters {
                Some(p) => Cow::Borrowed(p),
                None => Cow::Owned(serde_json::json!({"type": "object", "properties": {}})),
            };
            out.push(AnthTool {
                name: &def.function.name,
                description: def.function.description.as_deref(),
                input_schema,
            });
        }
        tools = Some(out);
    }

    // tool_choice and parallel_tool_calls only mean something with tools.
    let mut tool_choice = None;
    if tools.is_some() {
        let mut choice = match &req.tool_choice {
            None => None,
            Some(ToolChoice::Mode(mode)) => Some(match mode.as_str() {
                "auto" => AnthToolChoice { kind: "auto", name: None, disable_parallel_tool_use: None },
                "required" => AnthToolChoice { kind: "any", name: None, disable_parallel_tool_use: None },
                "none" => AnthToolChoice { kind: "none", name: None, disable_parallel_tool_use: None },
                other => {
                    return Err(ApiError::invalid_param(
                        "tool_choice",
                        format!(
                            "Invalid value for 'tool_choice': '{other}'. Supported values are 'none', 'auto' and 'required'."
                        ),
                    ))
                }
            }),
            Some(ToolChoice::Named(named)) => Some(AnthToolChoice {
                kind: "tool",
                name: Some(named.function.name.as_str()),
                disable_parallel_tool_use: None,
            }),
        };
        if req.parallel_tool_calls == Some(false) {
            let c = choice.get_or_insert(AnthToolChoice { kind: "auto", name: None, disable_parallel_tool_use: None });
            // `{"type":"none"}` accepts no other property.
            if c.kind != "none" {
                c.disable_parallel_tool_use = Some(true);
            }
        }
        tool_choice = choice;
    }

    // Thinking and the token limit it must fit in.
    let client_limit = req.output_token_limit();
    let mut max_tokens = client_limit.unwrap_or(default_max_tokens);
    let mut thinking: Option<Cow<'_, Value>> = None;
    let mut thinks = false;
    if let Some(t) = &extras.thinking {
        if let Some(budget) = t.budget {
            match client_limit {
                Some(limit) if budget >= limit => {
                    return Err(ns_error(
                        "thinking.budget_tokens",
                        format!(
                            "Invalid value for 'anthropic.thinking.budget_tokens': {budget} must be less than the \
                             request's max_tokens ({limit})."
                        ),
                    ))
                }
                Some(_) => {}
                None => max_tokens = max_tokens_for_budget(default_max_tokens, budget),
            }
        }
        thinking = Some(Cow::Borrowed(&t.value));
        thinks = t.active;
    } else if let Some(budget) = req.reasoning_effort.as_deref().and_then(effort_budget) {
        let forced_tool = tool_choice.as_ref().is_some_and(|c| matches!(c.kind, "any" | "tool"));
        let budget = match client_limit {
            Some(limit) => Some(budget.min(limit.saturating_sub(1))).filter(|b| *b >= MIN_THINKING_BUDGET),
            None => Some(budget),
        };
        if let Some(budget) = budget.filter(|_| !forced_tool) {
            if client_limit.is_none() {
                max_tokens = max_tokens_for_budget(default_max_tokens, budget);
            }
            thinking = Some(Cow::Owned(serde_json::json!({ "type": "enabled", "budget_tokens": budget })));
            thinks = true;
        }
    }
    let (temperature, top_p) = if thinks {
        (None, req.top_p.filter(|p| (0.95..=1.0).contains(p)))
    } else {
        (req.temperature, req.top_p)
    };

    let mut metadata: Option<Map<String, Value>> =
        req.user.as_deref().map(|u| Map::from_iter([("user_id".to_string(), Value::String(u.to_string()))]));
    if let Some(extra) = &extras.metadata {
        let m = metadata.get_or_insert_with(Map::new);
        for (k, v) in extra {
            m.insert(k.clone(), v.clone());
        }
    }

    let body = MessagesRequest {
        model,
        max_tokens,
        system,
        messages,
        stop_sequences,
        temperature,
        top_p,
        stream: if req.is_stream() { Some(true) } else { None },
        metadata,
        tools,
        tool_choice,
        thinking,
        top_k: extras.top_k,
        service_tier: extras.service_tier.as_deref(),
        output_config: extras.output_config.as_ref(),
    };
    let encoded = match &extras.cache_control {
        None => serde_json::to_vec(&body),
        Some(cc) => serde_json::to_value(&body).and_then(|mut v| {
            apply_cache_control(&mut v, cc);
            serde_json::to_vec(&v)
        }),
    };
    encoded.map_err(|e| ApiError::gateway(500, format!("could not serialise the Anthropic request: {e}")))
}

/// Appends a turn, merging it into the previous message when that has the same role. In a merged
/// user turn, `tool_result` blocks go before any other block.
fn push_turn<'a>(messages: &mut Vec<AnthMessage<'a>>, role: &'static str, blocks: Vec<Block<'a>>) {
    if blocks.is_empty() {
        return;
    }
    if let Some(last) = messages.last_mut().filter(|m| m.role == role) {
        for b in blocks {
            if b.is_tool_result() {
                let at = last.content.iter().take_while(|x| x.is_tool_result()).count();
                last.content.insert(at, b);
            } else {
                last.content.push(b);
            }
        }
        return;
    }
    messages.push(AnthMessage { role, content: blocks });
}

/// Content → Anthropic blocks. `skip_empty_text` drops empty text (assistant turns echo `""`
/// next to tool calls, and Anthropic rejects empty text blocks).
fn content_blocks<'a>(
    content: &'a Content,
    i: usize,
    skip_empty_text: bool,
    out: &mut Vec<Block<'a>>,
) -> Result<(), ApiError> {
    match content {
        Content::Text(s) => {
            if !(skip_empty_text && s.is_empty()) {
                out.push(Block::Text { text: s });
            }
        }
        Content::Parts(parts) => {
            for (j, part) in parts.iter().enumerate() {
                match part {
                    ContentPart::Text { text } | ContentPart::Refusal { refusal: text } => {
                        if !(skip_empty_text && text.is_empty()) {
                            out.push(Block::Text { text });
                        }
                    }
                    ContentPart::ImageUrl { image_url } => out.push(image_block(&image_url.url, i, j)?),
                    ContentPart::InputAudio { .. } => return Err(unsupported_part(i, j, "input_audio")),
                    ContentPart::File { .. } => return Err(unsupported_part(i, j, "file")),
                }
            }
        }
    }
    Ok(())
}

fn unsupported_part(i: usize, j: usize, kind: &str) -> ApiError {
    ApiError::invalid_param(
        format!("messages[{i}].content[{j}]"),
        format!("Content part type '{kind}' in messages[{i}].content[{j}] is not supported by this backend."),
    )
}

/// `data:<media type>;base64,<data>` → base64 source; `http(s)://…` → URL source.
fn image_block(url: &str, i: usize, j: usize) -> Result<Block<'_>, ApiError> {
    let bad = |why: &str| {
        ApiError::invalid_param(
            format!("messages[{i}].content[{j}].image_url.url"),
            format!("Invalid image URL in messages[{i}].content[{j}]: {why}"),
        )
    };
    if let Some(rest) = strip_prefix_ignore_case(url, "data:") {
        let (meta, data) = rest.split_once(',').ok_or_else(|| bad("a data URL needs a ',' before its data."))?;
        let mut params = meta.split(';');
        let media_type = params.next().unwrap_or("").trim();
        if !params.any(|p| p.trim().eq_ignore_ascii_case("base64")) {
            return Err(bad("only base64-encoded data URLs are supported."));
        }
        if media_type.is_empty() {
            return Err(bad("the data URL has no media type."));
        }
        return Ok(Block::Image { source: ImageSource::Base64 { media_type, data } });
    }
    if strip_prefix_ignore_case(url, "https://").is_some() || strip_prefix_ignore_case(url, "http://").is_some() {
        return Ok(Block::Image { source: ImageSource::Url { url } });
    }
    Err(bad("expected an http(s) URL or a base64 data URL."))
}

fn strip_prefix_ignore_case<'s>(s: &'s str, prefix: &str) -> Option<&'s str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

/// Tool-call arguments (JSON text) → the `input` object. Empty text counts as `{}`.
fn parse_arguments(args: &str) -> Option<Value> {
    if args.trim().is_empty() {
        return Some(Value::Object(serde_json::Map::new()));
    }
    match serde_json::from_str::<Value>(args) {
        Ok(v @ Value::Object(_)) => Some(v),
        _ => None,
    }
}

// =============================================================================================
// Whole response
// =============================================================================================

#[derive(Deserialize)]
struct AnthResponse {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    id: String,
    #[serde(default)]
    model: String,
    content: Vec<RespBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<AnthUsage>,
}

#[derive(Deserialize)]
struct RespBlock {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    input: Option<Value>,
}

/// Anthropic usage. Cache counters may be absent or `null`.
#[derive(Deserialize, Default, Clone, Copy, Debug)]
struct AnthUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

/// Running token counts, Anthropic's split.
#[derive(Default, Clone, Copy, Debug)]
struct Tokens {
    input: u64,
    output: u64,
    cache_read: u64,
    cache_creation: u64,
}

impl Tokens {
    /// Overwrites the counters present in `u` (Anthropic's counts are cumulative).
    fn update(&mut self, u: &AnthUsage) {
        if let Some(v) = u.input_tokens {
            self.input = v;
        }
        if let Some(v) = u.output_tokens {
            self.output = v;
        }
        if let Some(v) = u.cache_read_input_tokens {
            self.cache_read = v;
        }
        if let Some(v) = u.cache_creation_input_tokens {
            self.cache_creation = v;
        }
    }

    /// OpenAI counts cached prompt tokens inside `prompt_tokens`; Anthropic's `input_tokens` does
    /// not include cache reads or writes, so they are added.
    fn to_openai(self) -> Usage {
        let prompt = self.input.saturating_add(self.cache_read).saturating_add(self.cache_creation);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: self.output,
            total_tokens: prompt.saturating_add(self.output),
            prompt_tokens_details: Some(PromptTokensDetails {
                cached_tokens: self.cache_read,
                cache_creation_tokens: self.cache_creation,
            }),
            completion_tokens_details: None,
        }
    }
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn and anything new
        _ => "stop",
    }
}

/// Translate a whole (non-stream) Anthropic Message response body into an OpenAI
/// `chat.completion` JSON body.
pub fn response_body(body: &[u8], created: u64) -> Result<Vec<u8>, ApiError> {
    response_answer(body, created).map(|a| a.body)
}

/// [`response_body`], with the summary the gateway accounts with (see [`super::WholeAnswer`]).
pub fn response_answer(body: &[u8], created: u64) -> Result<super::WholeAnswer, ApiError> {
    let msg: AnthResponse = serde_json::from_slice(body)
        .map_err(|e| ApiError::gateway(502, format!("The Anthropic backend returned a response the gateway could not read: {e}.")))?;
    if let Some(kind) = msg.kind.as_deref() {
        if kind != "message" {
            return Err(ApiError::gateway(
                502,
                format!("The Anthropic backend returned an object of type '{kind}' instead of a message."),
            ));
        }
    }

    let mut text: Option<String> = None;
    let mut reasoning: Option<String> = None;
    let mut tool_calls = Vec::new();
    for block in msg.content {
        match block.kind.as_str() {
            "text" => text.get_or_insert_with(String::new).push_str(block.text.as_deref().unwrap_or("")),
            "thinking" => reasoning.get_or_insert_with(String::new).push_str(block.thinking.as_deref().unwrap_or("")),
            "tool_use" => {
                let arguments = match &block.input {
                    Some(v) => v.to_string(),
                    None => "{}".to_string(),
                };
                tool_calls.push(ToolCall {
                    id: block.id.unwrap_or_default(),
                    kind: "function".to_string(),
                    function: FunctionCall { name: block.name.unwrap_or_default(), arguments },
                });
            }
            // redacted_thinking, server tool blocks and future types carry nothing OpenAI can show.
            _ => {}
        }
    }
    let content = match text {
        Some(t) => Some(t),
        None if tool_calls.is_empty() => Some(String::new()),
        None => None,
    };

    let mut tokens = Tokens::default();
    if let Some(u) = &msg.usage {
        tokens.update(u);
    }
    let completion = ChatCompletion {
        id: msg.id,
        object: "chat.completion",
        created,
        model: msg.model,
        choices: vec![Choice {
            index: 0,
            message: ResponseMessage {
                role: "assistant",
                content,
                reasoning_content: reasoning,
                tool_calls,
                refusal: None,
            },
            finish_reason: Some(finish_reason(msg.stop_reason.as_deref().unwrap_or("end_turn")).to_string()),
            logprobs: None,
        }],
        usage: Some(tokens.to_openai()),
        system_fingerprint: None,
    };
    super::WholeAnswer::of(completion)
}

// =============================================================================================
// Errors
// =============================================================================================

#[derive(Deserialize)]
struct ErrorEnvelope {
    #[serde(default)]
    error: Option<ErrorBody>,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// Status to use for an upstream error status (used at response-header time, before the body is
/// seen): 529 (Anthropic "overloaded") → 503, others unchanged.
pub fn map_status(status: u16) -> u16 {
    if status == 529 {
        503
    } else {
        status
    }
}

/// Map an Anthropic error answer (status + body) to the status the gateway returns and an
/// OpenAI-shaped error body. `type` follows the mapped status; `code` is Anthropic's error type.
pub fn map_error(status: u16, body: &[u8]) -> (u16, Vec<u8>) {
    let mapped = map_status(status);
    let parsed = serde_json::from_slice::<ErrorEnvelope>(body).ok().and_then(|e| e.error);
    let err = match parsed {
        Some(ErrorBody { kind, message }) => {
            let message = message
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| format!("The Anthropic backend returned HTTP {status}."));
            let e = ApiError::new(mapped, kind_for_status(mapped), message);
            match kind {
                Some(k) if !k.is_empty() => e.with_code(k),
                _ => e,
            }
        }
        None => ApiError::new(
            mapped,
            kind_for_status(mapped),
            format!("The Anthropic backend returned HTTP {status} with a body that is not an Anthropic error."),
        ),
    };
    (mapped, err.to_json())
}

/// HTTP status Anthropic uses for an error type (for errors that arrive inside a stream).
fn status_for_error_type(kind: &str) -> u16 {
    match kind {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "timeout_error" => 504,
        "overloaded_error" => 529,
        _ => 500,
    }
}

// =============================================================================================
// Streaming
// =============================================================================================

/// One stream event, all kinds flattened (unknown fields are skipped without allocating).
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(default)]
    index: Option<u32>,
    #[serde(borrow, default)]
    message: Option<StartMessage<'a>>,
    #[serde(borrow, default)]
    content_block: Option<StartBlock<'a>>,
    #[serde(borrow, default)]
    delta: Option<EventDelta<'a>>,
    #[serde(default)]
    usage: Option<AnthUsage>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct StartMessage<'a> {
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default)]
    model: Option<Str<'a>>,
    #[serde(default)]
    usage: Option<AnthUsage>,
}

#[derive(Deserialize)]
struct StartBlock<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default)]
    name: Option<Str<'a>>,
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
    #[serde(borrow, default)]
    thinking: Option<Str<'a>>,
    #[serde(default)]
    input: Option<Value>,
}

/// `delta` of `content_block_delta` (text / partial_json / thinking) and of `message_delta`
/// (stop_reason).
#[derive(Deserialize)]
struct EventDelta<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
    #[serde(borrow, default)]
    partial_json: Option<Str<'a>>,
    #[serde(borrow, default)]
    thinking: Option<Str<'a>>,
    #[serde(borrow, default)]
    stop_reason: Option<Str<'a>>,
}

/// Incremental stream translator: Anthropic SSE in, OpenAI `chat.completion.chunk` SSE out.
///
/// Output: a first chunk with `delta: {role: "assistant", content: ""}`, one chunk per text /
/// thinking / tool-argument delta, a chunk per `tool_use` block start (id, name, empty arguments),
/// a finishing chunk with `finish_reason`, a usage-only chunk (`choices: []`) and `data: [DONE]`.
/// An upstream `error` event, an unreadable event or a stream that ends before `message_stop`
/// produces one `data: {"error":{…}}` event and nothing after it (no `[DONE]`), which the OpenAI
/// SDKs raise as an `APIError`.
pub struct StreamTranslator {
    parser: SseParser,
    state: StreamState,
}

struct StreamState {
    created: u64,
    id: String,
    model: String,
    phase: Phase,
    started: bool,
    /// Number of `tool_use` blocks seen so far (the next OpenAI tool-call index).
    tool_calls: u32,
    /// (Anthropic content block index, OpenAI tool-call index) of each `tool_use` block.
    tool_blocks: Vec<(u32, u32)>,
    finish_reason: Option<&'static str>,
    tokens: Tokens,
    usage: Option<Usage>,
}

impl StreamTranslator {
    pub fn new(created: u64) -> Self {
        StreamTranslator {
            parser: SseParser::new(),
            state: StreamState {
                created,
                id: String::new(),
                model: String::new(),
                phase: Phase::Open,
                started: false,
                tool_calls: 0,
                tool_blocks: Vec::new(),
                finish_reason: None,
                tokens: Tokens::default(),
                usage: None,
            },
        }
    }

    /// Feed one upstream body chunk (any split, even mid-line); append translated output bytes to
    /// `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if self.state.phase != Phase::Open {
            return;
        }
        let StreamTranslator { parser, state } = self;
        let status = parser.push(chunk, |name, data| state.on_event(name, data, out));
        if status == SseStatus::Overflow {
            state.fail(out, overflow());
        }
    }

    /// Upstream ended. If the stream completed normally this writes nothing more; if it was cut
    /// short (no `message_stop` seen) append an OpenAI error event instead of silently ending.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.state.phase != Phase::Open {
            return;
        }
        let StreamTranslator { parser, state } = self;
        // An event that lacked its closing blank line (a body ending right after `message_stop`).
        parser.finish(|name, data| state.on_event(name, data, out));
        if state.phase == Phase::Open {
            state.fail(out, truncated());
        }
    }

    /// Usage seen so far (input/output/cache tokens) in OpenAI shape, for accounting.
    pub fn usage(&self) -> Option<&Usage> {
        self.state.usage.as_ref()
    }
}

impl StreamState {
    fn on_event(&mut self, name: &str, data: &str, out: &mut Vec<u8>) {
        if self.phase != Phase::Open {
            return;
        }
        let ev: Event<'_> = match serde_json::from_str(data) {
            Ok(ev) => ev,
            Err(e) => {
                let what = if name.is_empty() { "an" } else { name };
                self.fail(
                    out,
                    ApiError::new(502, "api_error", format!("The Anthropic backend sent an unreadable stream event ({what}): {e}."))
                        .with_code("invalid_upstream_event"),
                );
                return;
            }
        };
        let kind = s(&ev.kind).unwrap_or(name);
        match kind {
            "message_start" => self.on_message_start(&ev, out),
            "content_block_start" => self.on_block_start(&ev, out),
            "content_block_delta" => self.on_block_delta(&ev, out),
            "message_delta" => {
                if let Some(reason) = ev.delta.as_ref().and_then(|d| s(&d.stop_reason)) {
                    self.finish_reason = Some(finish_reason(reason));
                }
                if let Some(u) = &ev.usage {
                    self.tokens.update(u);
                    self.usage = Some(self.tokens.to_openai());
                }
            }
            "message_stop" => self.on_message_stop(out),
            "error" => {
                let body = ev.error.unwrap_or_default();
                let code = body.kind.unwrap_or_else(|| "api_error".to_string());
                let status = map_status(status_for_error_type(&code));
                let message = body
                    .message
                    .filter(|m| !m.is_empty())
                    .unwrap_or_else(|| format!("The Anthropic backend reported an error ({code}) during the stream."));
                self.fail(out, ApiError::new(status, kind_for_status(status), message).with_code(code));
            }
            // ping, content_block_stop and event types added later carry nothing to forward.
            _ => {}
        }
    }

    fn on_message_start(&mut self, ev: &Event<'_>, out: &mut Vec<u8>) {
        if let Some(m) = &ev.message {
            if let Some(id) = s(&m.id) {
                self.id.clear();
                self.id.push_str(id);
            }
            if let Some(model) = s(&m.model) {
                self.model.clear();
                self.model.push_str(model);
            }
            if let Some(u) = &m.usage {
                self.tokens.update(u);
            }
        }
        self.usage = Some(self.tokens.to_openai());
        if !self.started {
            self.started = true;
            let delta = Delta { role: Some("assistant"), content: Some(""), ..Delta::default() };
            self.chunk(out, delta, None);
        }
    }

    fn on_block_start(&mut self, ev: &Event<'_>, out: &mut Vec<u8>) {
        let Some(block) = &ev.content_block else { return };
        match s(&block.kind) {
            Some("text") => {
                if let Some(t) = s(&block.text).filter(|t| !t.is_empty()) {
                    self.chunk(out, Delta { content: Some(t), ..Delta::default() }, None);
                }
            }
            Some("thinking") => {
                if let Some(t) = s(&block.thinking).filter(|t| !t.is_empty()) {
                    self.chunk(out, Delta { reasoning_content: Some(t), ..Delta::default() }, None);
                }
            }
            Some("tool_use") => {
                if self.tool_calls as usize >= MAX_STREAM_TOOL_CALLS {
                    self.fail(out, too_many("tool calls", MAX_STREAM_TOOL_CALLS));
                    return;
                }
                let k = self.tool_calls;
                self.tool_calls = self.tool_calls.saturating_add(1);
                if let Some(index) = ev.index {
                    self.tool_blocks.push((index, k));
                }
                // Anthropic starts with `input: {}` and streams the arguments; a non-empty start
                // input (not seen in practice) is forwarded whole.
                let initial = match &block.input {
                    Some(Value::Object(map)) if !map.is_empty() => Some(Value::Object(map.clone()).to_string()),
                    _ => None,
                };
                let call = ToolCallDelta {
                    index: k,
                    id: Some(s(&block.id).unwrap_or("")),
                    kind: Some("function"),
                    function: FunctionDelta {
                        name: Some(s(&block.name).unwrap_or("")),
                        arguments: Some(initial.as_deref().unwrap_or("")),
                    },
                };
                self.chunk(out, Delta { tool_calls: Some(vec![call]), ..Delta::default() }, None);
            }
            // redacted_thinking, server_tool_use, web search results, …
            _ => {}
        }
    }

    fn on_block_delta(&mut self, ev: &Event<'_>, out: &mut Vec<u8>) {
        let Some(d) = &ev.delta else { return };
        match s(&d.kind) {
            Some("text_delta") => {
                if let Some(t) = s(&d.text).filter(|t| !t.is_empty()) {
                    self.chunk(out, Delta { content: Some(t), ..Delta::default() }, None);
                }
            }
            Some("thinking_delta") => {
                if let Some(t) = s(&d.thinking).filter(|t| !t.is_empty()) {
                    self.chunk(out, Delta { reasoning_content: Some(t), ..Delta::default() }, None);
                }
            }
            Some("input_json_delta") => {
                let Some(part) = s(&d.partial_json).filter(|p| !p.is_empty()) else { return };
                let Some(block) = ev.index else { return };
                let Some(&(_, k)) = self.tool_blocks.iter().find(|(b, _)| *b == block) else { return };
                let call = ToolCallDelta {
                    index: k,
                    id: None,
                    kind: None,
                    function: FunctionDelta { name: None, arguments: Some(part) },
                };
                self.chunk(out, Delta { tool_calls: Some(vec![call]), ..Delta::default() }, None);
            }
            // signature_delta, citations_delta, …
            _ => {}
        }
    }

    fn on_message_stop(&mut self, out: &mut Vec<u8>) {
        self.chunk(out, Delta::default(), Some(self.finish_reason.unwrap_or("stop")));
        let usage = self.usage.get_or_insert_with(|| self.tokens.to_openai());
        write_usage_and_done(out, &self.id, &self.model, self.created, usage);
        self.phase = Phase::Done;
    }

    fn chunk(&self, out: &mut Vec<u8>, delta: Delta<'_>, finish_reason: Option<&str>) {
        write_chunk(out, &self.id, &self.model, self.created, 0, delta, finish_reason);
    }

    fn fail(&mut self, out: &mut Vec<u8>, err: ApiError) {
        write_error_event(out, &err);
        self.phase = Phase::Failed;
    }
}

// =============================================================================================
// Tests
// =============================================================================================

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::sse::DONE;
    use crate::api::chat::parse_chat_request;
    use crate::providers::testutil::{assert_tool_calls_capped, events, interaction, payloads};

    #[test]
    fn tool_calls_per_stream_are_capped() {
        let head = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude\",\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\n\n";
        let call = |i: usize| {
            format!("event: content_block_start\ndata: {{\"type\":\"content_block_start\",\"index\":{i},\"content_block\":{{\"type\":\"tool_use\",\"id\":\"toolu_{i}\",\"name\":\"f\",\"input\":{{}}}}}}\n\n").into_bytes()
        };
        assert_tool_calls_capped(&|| Box::new(StreamTranslator::new(1)), head, &call);
    }
    use serde_json::json;

    const BASIC: &str = include_str!("../../tests/fixtures/anthropic/basic_response.txt");
    const TOOL_USE: &str = include_str!("../../tests/fixtures/anthropic/tool_use_response.txt");
    const REFUSAL: &str = include_str!("../../tests/fixtures/anthropic/refusal_response.txt");
    const PARTIAL_JSON: &str = include_str!("../../tests/fixtures/anthropic/incomplete_partial_json_response.txt");
    const INSTRUCTIONS: &str = include_str!("../../tests/fixtures/anthropic/test_anthropic_model_instructions.yaml");
    const THINKING_STREAM: &str =
        include_str!("../../tests/fixtures/anthropic/test_anthropic_model_thinking_part_stream.yaml");
    const ERROR_400: &str =
        include_str!("../../tests/fixtures/anthropic/test_anthropic_explicit_effort_xhigh_unsupported_model_errors.yaml");

    const CREATED: u64 = 1_700_000_000;

    // ------------------------------------------------------------------------------ helpers

    fn thinking_stream_body() -> String {
        interaction(THINKING_STREAM, 0)["response"]["body"]["string"].as_str().expect("stream body").to_string()
    }

    fn chat(v: Value) -> ChatRequest {
        parse_chat_request(v.to_string().as_bytes()).expect("valid chat request")
    }

    fn extras(v: &Value) -> Result<Extras, ApiError> {
        Extras::from_body(v.to_string().as_bytes())
    }

    fn translate(v: Value) -> Value {
        let x = extras(&v).expect("valid namespace");
        let body = request_body(&chat(v), &x, "claude-test", 1024).expect("translates");
        serde_json::from_slice(&body).expect("request is JSON")
    }

    fn translate_err(v: Value) -> ApiError {
        match extras(&v) {
            Err(e) => e,
            Ok(x) => request_body(&chat(v), &x, "claude-test", 1024).expect_err("must be rejected"),
        }
    }

    fn run_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> (Vec<u8>, Option<Usage>) {
        let mut t = StreamTranslator::new(CREATED);
        let mut out = Vec::new();
        for c in chunks {
            t.push(c, &mut out);
        }
        t.finish(&mut out);
        (out, t.usage().cloned())
    }

    fn run_whole(s: &str) -> Vec<u8> {
        run_chunks([s.as_bytes()]).0
    }

    #[derive(Debug, Default)]
    struct Summary {
        content: String,
        reasoning: String,
        tools: Vec<(String, String, String)>, // id, name, arguments
        finish: Vec<String>,
        usage: Option<Value>,
        error: Option<Value>,
        done: bool,
        role_first: bool,
    }

    /// Checks every chunk against the OpenAI chunk shape and accumulates what a client would see.
    fn summarize(out: &[u8], id: &str, model: &str) -> Summary {
        let (evs, done) = events(out);
        let mut sum = Summary { done, ..Summary::default() };
        for (n, ev) in evs.iter().enumerate() {
            if let Some(err) = ev.get("error") {
                assert_eq!(n, evs.len() - 1, "an error event is last");
                sum.error = Some(err.clone());
                continue;
            }
            assert_eq!(ev["id"], id);
            assert_eq!(ev["object"], "chat.completion.chunk");
            assert_eq!(ev["created"], CREATED);
            assert_eq!(ev["model"], model);
            let choices = ev["choices"].as_array().expect("choices array");
            if choices.is_empty() {
                assert!(ev["usage"].is_object(), "a chunk without choices is the usage chunk");
                sum.usage = Some(ev["usage"].clone());
                continue;
            }
            assert!(ev.get("usage").is_none(), "usage only on the last chunk");
            assert_eq!(choices.len(), 1);
            let c = &choices[0];
            assert_eq!(c["index"], 0);
            assert!(c["logprobs"].is_null());
            let delta = c["delta"].as_object().expect("delta object");
            if n == 0 {
                sum.role_first = delta.get("role") == Some(&json!("assistant")) && delta.get("content") == Some(&json!(""));
            } else {
                assert!(delta.get("role").is_none(), "role only in the first chunk");
            }
            if let Some(t) = delta.get("content").and_then(Value::as_str) {
                sum.content.push_str(t);
            }
            if let Some(t) = delta.get("reasoning_content").and_then(Value::as_str) {
                sum.reasoning.push_str(t);
            }
            if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                for call in calls {
                    let k = call["index"].as_u64().expect("tool index") as usize;
                    if let Some(id) = call.get("id") {
                        assert_eq!(k, sum.tools.len(), "tool calls are numbered from 0 in order");
                        assert_eq!(call["type"], "function");
                        sum.tools.push((
                            id.as_str().unwrap().to_string(),
                            call["function"]["name"].as_str().unwrap().to_string(),
                            call["function"]["arguments"].as_str().unwrap().to_string(),
                        ));
                    } else {
                        assert!(call.get("type").is_none());
                        assert!(call["function"].get("name").is_none());
                        sum.tools[k].2.push_str(call["function"]["arguments"].as_str().unwrap());
                    }
                }
            }
            match &c["finish_reason"] {
                Value::Null => {}
                Value::String(f) => {
                    assert!(delta.is_empty(), "the finishing chunk has an empty delta");
                    sum.finish.push(f.clone());
                }
                other => panic!("finish_reason {other}"),
            }
        }
        sum
    }

    /// Output for every two-way split and for 1-byte chunks must equal the whole-body output.
    fn assert_split_invariant(input: &str) -> Vec<u8> {
        let bytes = input.as_bytes();
        let whole = run_whole(input);
        // Every offset for the small recordings; a dense stride (still landing inside every event
        // kind, escape and padding run) for the 17 KB thinking recording, to keep debug runs quick.
        let step = if bytes.len() <= 4096 { 1 } else { 7 };
        for at in (0..=bytes.len()).step_by(step) {
            let (a, b) = bytes.split_at(at);
            assert_eq!(run_chunks([a, b]).0, whole, "split at byte {at}");
        }
        assert_eq!(run_chunks(bytes.chunks(1)).0, whole, "1-byte chunks");
        assert_eq!(run_chunks(bytes.chunks(7)).0, whole, "7-byte chunks");
        whole
    }

    fn sse(events: &[(&str, Value)]) -> String {
        let mut s = String::new();
        for (name, data) in events {
            s.push_str(&format!("event: {name}\ndata: {data}\n\n"));
        }
        s
    }

    fn start(id: &str, model: &str) -> (&'static str, Value) {
        (
            "message_start",
            json!({"type":"message_start","message":{"id":id,"type":"message","role":"assistant","content":[],"model":model,
                   "stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":1}}}),
        )
    }

    fn text_delta(t: &str) -> (&'static str, Value) {
        ("content_block_delta", json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":t}}))
    }

    // ------------------------------------------------------------------------------ requests

    #[test]
    fn recorded_instructions_request_is_reproduced() {
        let rec = interaction(INSTRUCTIONS, 0);
        let want = &rec["request"]["parsed_body"];
        let system = want["system"].as_str().unwrap();
        assert!(system.starts_with("You are a helpful assistant."));
        let user = want["messages"][0]["content"][0]["text"].as_str().unwrap();
        assert_eq!(user, "What is the capital of France?");
        let req = chat(json!({
            "model": "my-alias",
            "messages": [{"role":"system","content": system}, {"role":"user","content": user}],
            "max_tokens": 4096
        }));
        let body = request_body(&req, &Extras::default(), "claude-3-opus-latest", 1024).unwrap();
        let got: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(got["model"], want["model"]);
        assert_eq!(got["max_tokens"], want["max_tokens"]);
        assert_eq!(got["system"], want["system"]);
        assert_eq!(got["messages"], want["messages"]);
        // Non-stream requests leave `stream` out (the recording's `false` is Anthropic's default).
        assert_eq!(want["stream"], false);
        assert!(got.get("stream").is_none());
        let keys: Vec<&String> = got.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 4, "only model, max_tokens, system, messages: {keys:?}");
    }

    #[test]
    fn recorded_stream_request_is_reproduced() {
        let rec = interaction(THINKING_STREAM, 0);
        let want = &rec["request"]["parsed_body"];
        let got = {
            let req = chat(json!({
                "model": "x",
                "messages": [{"role":"user","content":"How do I cross the street?"}],
                "max_completion_tokens": 4096, "max_tokens": 5, "stream": true
            }));
            let body = request_body(&req, &Extras::default(), "claude-sonnet-4-0", 1024).unwrap();
            serde_json::from_slice::<Value>(&body).unwrap()
        };
        assert_eq!(got["model"], want["model"]);
        assert_eq!(got["messages"], want["messages"]);
        assert_eq!(got["stream"], true);
        assert_eq!(want["stream"], true);
        assert_eq!(got["max_tokens"], want["max_tokens"], "max_completion_tokens wins over max_tokens");
        assert!(got.get("system").is_none(), "no system prompt when there is none");
    }

    #[test]
    fn default_max_tokens_and_sampling_fields() {
        let got = translate(json!({
            "model":"m","messages":[{"role":"user","content":"hi"}],
            "temperature":0.25,"top_p":0.5,"stop":["END","\n\nHuman:"],"user":"user-42","seed":7
        }));
        assert_eq!(got["model"], "claude-test");
        assert_eq!(got["max_tokens"], 1024);
        assert_eq!(got["temperature"], 0.25);
        assert_eq!(got["top_p"], 0.5);
        assert_eq!(got["stop_sequences"], json!(["END", "\n\nHuman:"]));
        assert_eq!(got["metadata"], json!({"user_id":"user-42"}));
        assert!(got.get("seed").is_none());
        assert!(got.get("stop").is_none());
        assert!(got.get("user").is_none());
        let one = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"stop":"STOP"}));
        assert_eq!(one["stop_sequences"], json!(["STOP"]));
        let none = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"stop":[]}));
        assert!(none.get("stop_sequences").is_none());
        assert!(none.get("temperature").is_none());
        assert!(none.get("metadata").is_none());
    }

    // ------------------------------------------------------------------------------ the `anthropic` namespace

    fn hi(extra: Value) -> Value {
        let mut v = json!({"model":"m","messages":[{"role":"user","content":"hi"}]});
        if let (Value::Object(o), Value::Object(x)) = (&mut v, extra) {
            o.extend(x);
        }
        v
    }

    #[test]
    fn recorded_thinking_request_is_reproduced_from_the_namespace() {
        let rec = interaction(THINKING_STREAM, 0);
        let want = &rec["request"]["parsed_body"];
        assert_eq!(want["thinking"], json!({"type":"enabled","budget_tokens":1024}));
        let user = want["messages"][0]["content"][0]["text"].as_str().unwrap();
        let client = json!({
            "model": "x", "messages": [{"role":"user","content": user}], "stream": true,
            "max_completion_tokens": want["max_tokens"], "temperature": 0.2,
            "anthropic": {"thinking": want["thinking"]}
        });
        let x = extras(&client).unwrap();
        let got: Value = serde_json::from_slice(&request_body(&chat(client), &x, "claude-sonnet-4-0", 1024).unwrap()).unwrap();
        assert_eq!(&got, want, "the recorded body exactly (temperature dropped while thinking)");
    }

    #[test]
    fn thinking_budget_is_checked_and_max_tokens_raised_to_fit() {
        let think = |budget: Value| json!({"anthropic":{"thinking":{"type":"enabled","budget_tokens":budget}}});
        // No client limit: the default (1024 here) is raised to budget + default.
        let got = translate(hi(think(json!(2048))));
        assert_eq!(got["thinking"], json!({"type":"enabled","budget_tokens":2048}));
        assert_eq!(got["max_tokens"], 2048 + 1024);
        // A default that already fits is kept.
        let body = hi(think(json!(2048)));
        let x = extras(&body).unwrap();
        let got: Value = serde_json::from_slice(&request_body(&chat(body), &x, "c", 4096).unwrap()).unwrap();
        assert_eq!(got["max_tokens"], 4096);
        // A client limit must leave room for the budget.
        let mut ok = hi(think(json!(2048)));
        ok["max_tokens"] = json!(2049);
        assert_eq!(translate(ok)["max_tokens"], 2049);
        for limit in [2048, 100] {
            let mut bad = hi(think(json!(2048)));
            bad["max_completion_tokens"] = json!(limit);
            let e = translate_err(bad);
            assert_eq!((e.status, e.param.as_deref()), (400, Some("anthropic.thinking.budget_tokens")));
            assert!(e.message.contains("max_tokens"), "{}", e.message);
        }
        for budget in [json!(1023), json!(0), json!(-5), json!(2048.5), json!("2048"), json!(null), json!(1u64 << 40)] {
            let e = translate_err(hi(think(budget.clone())));
            assert_eq!(e.param.as_deref(), Some("anthropic.thinking.budget_tokens"), "{budget}");
            assert!(e.message.contains("1024"));
        }
        let e = translate_err(hi(json!({"anthropic":{"thinking":{"budget_tokens":2048}}})));
        assert_eq!(e.param.as_deref(), Some("anthropic.thinking.type"));
        let e = translate_err(hi(json!({"anthropic":{"thinking":true}})));
        assert_eq!(e.param.as_deref(), Some("anthropic.thinking"));
        // Disabled (or another type) is sent as given, without a budget check.
        let got = translate(hi(json!({"anthropic":{"thinking":{"type":"disabled"}},"temperature":0.3})));
        assert_eq!(got["thinking"], json!({"type":"disabled"}));
        assert_eq!(got["max_tokens"], 1024);
        assert_eq!(got["temperature"], 0.3, "no thinking: sampling unchanged");
    }

    #[test]
    fn sampling_is_constrained_while_thinking() {
        let base = json!({"anthropic":{"thinking":{"type":"enabled","budget_tokens":1024}},"max_tokens":2000});
        let mut v = hi(base.clone());
        v["temperature"] = json!(0.2);
        v["top_p"] = json!(0.5);
        let got = translate(v);
        assert!(got.get("temperature").is_none());
        assert!(got.get("top_p").is_none(), "top_p below 0.95 is dropped");
        let mut v = hi(base);
        v["top_p"] = json!(0.97);
        assert_eq!(translate(v)["top_p"], 0.97, "0.95..=1 is allowed");
        let mut v = hi(json!({"reasoning_effort":"low","temperature":1.5}));
        v["max_tokens"] = json!(4000);
        assert!(translate(v).get("temperature").is_none(), "same with reasoning_effort");
    }

    #[test]
    fn reasoning_effort_becomes_a_thinking_budget() {
        for (effort, budget) in [("low", 1024u32), ("medium", 8192), ("high", 24576)] {
            let got = translate(hi(json!({"reasoning_effort": effort})));
            assert_eq!(got["thinking"], json!({"type":"enabled","budget_tokens":budget}), "{effort}");
            let max = got["max_tokens"].as_u64().unwrap();
            assert!(max > u64::from(budget), "{effort}: max_tokens {max} fits the budget");
            assert_eq!(max, u64::from(budget) + 1024, "{effort}: budget + default (1024)");
        }
        for effort in ["none", "minimal", "xhigh", "bogus"] {
            let got = translate(hi(json!({"reasoning_effort": effort})));
            assert!(got.get("thinking").is_none(), "{effort}");
            assert_eq!(got["max_tokens"], 1024);
        }
        // Capped below the client's limit; no thinking when under 1024 would remain.
        let got = translate(hi(json!({"reasoning_effort":"high","max_completion_tokens":5000})));
        assert_eq!(got["thinking"]["budget_tokens"], 4999);
        assert_eq!(got["max_tokens"], 5000);
        let got = translate(hi(json!({"reasoning_effort":"low","max_tokens":1024})));
        assert!(got.get("thinking").is_none());
        assert_eq!(got["max_tokens"], 1024);
        // With the gateway's default (4096), low keeps it.
        let body = hi(json!({"reasoning_effort":"low"}));
        let got: Value = serde_json::from_slice(&request_body(&chat(body), &Extras::default(), "c", 4096).unwrap()).unwrap();
        assert_eq!((got["thinking"]["budget_tokens"].as_u64(), got["max_tokens"].as_u64()), (Some(1024), Some(4096)));
        // The namespace wins.
        let got = translate(hi(json!({"reasoning_effort":"high","anthropic":{"thinking":{"type":"disabled"}}})));
        assert_eq!(got["thinking"], json!({"type":"disabled"}));
        let got = translate(hi(json!({"reasoning_effort":"high","anthropic":{"thinking":{"type":"enabled","budget_tokens":3000}}})));
        assert_eq!(got["thinking"]["budget_tokens"], 3000);
        // Not while a tool is forced (Anthropic refuses forced tool use while thinking).
        let tools = json!([{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]);
        for (choice, thinks) in [(json!("required"), false), (json!({"type":"function","function":{"name":"f"}}), false), (json!("auto"), true)] {
            let got = translate(hi(json!({"reasoning_effort":"medium","tools":tools,"tool_choice":choice})));
            assert_eq!(got.get("thinking").is_some(), thinks, "{choice}");
        }
    }

    #[test]
    fn namespace_fields_are_sent_as_given() {
        let got = translate(hi(json!({"user":"u-1","anthropic":{
            "top_k": 40, "service_tier": "standard_only", "metadata": {"user_id":"override","x":1},
            "output_config": {"effort":"high"}
        }})));
        assert_eq!(got["top_k"], 40);
        assert_eq!(got["service_tier"], "standard_only");
        assert_eq!(got["metadata"], json!({"user_id":"override","x":1}));
        assert_eq!(got["output_config"], json!({"effort":"high"}));
        assert!(got.get("anthropic").is_none());
        assert!(got.get("anthropic_beta").is_none() && got.get("cache_control").is_none());
        let got = translate(hi(json!({"user":"u-1","anthropic":{"metadata":{"tag":"a"}}})));
        assert_eq!(got["metadata"], json!({"user_id":"u-1","tag":"a"}));
        // null means absent, for the namespace and for its known keys.
        let plain = translate(hi(json!({})));
        assert_eq!(translate(hi(json!({"anthropic":null}))), plain);
        assert_eq!(translate(hi(json!({"anthropic":{}}))), plain);
        assert_eq!(translate(hi(json!({"anthropic":{"thinking":null,"top_k":null}}))), plain);
        // A message that merely mentions "anthropic" is not a namespace.
        let said = translate(json!({"model":"m","messages":[{"role":"user","content":"\"anthropic\": {\"bogus\": 1}"}]}));
        assert!(said.get("thinking").is_none());
    }

    #[test]
    fn namespace_errors_name_the_field() {
        for (ns, param) in [
            (json!({"bogus": 1}), "anthropic.bogus"),
            (json!({"messages": []}), "anthropic.messages"),
            (json!({"bogus": null}), "anthropic.bogus"),
            (json!({"top_k": -1}), "anthropic.top_k"),
            (json!({"top_k": "40"}), "anthropic.top_k"),
            (json!({"metadata": "x"}), "anthropic.metadata"),
            (json!({"service_tier": 1}), "anthropic.service_tier"),
            (json!({"output_config": []}), "anthropic.output_config"),
            (json!({"anthropic_beta": 7}), "anthropic.anthropic_beta"),
            (json!({"anthropic_beta": ["ok-1", "bad\r\nx-injected: 1"]}), "anthropic.anthropic_beta"),
            (json!({"anthropic_beta": ""}), "anthropic.anthropic_beta"),
            (json!({"cache_control": "ephemeral"}), "anthropic.cache_control"),
            (json!({"cache_control": {}}), "anthropic.cache_control"),
            (json!("thinking"), "anthropic"),
            (json!([1]), "anthropic"),
        ] {
            let e = translate_err(hi(json!({ "anthropic": ns })));
            assert_eq!((e.status, e.kind), (400, "invalid_request_error"), "{ns}");
            assert_eq!(e.param.as_deref(), Some(param), "{ns}");
        }
        let e = translate_err(hi(json!({"anthropic":{"bogus":1}})));
        assert!(e.message.contains("anthropic.bogus") && e.message.contains("thinking"), "{}", e.message);
    }

    #[test]
    fn cache_control_marks_tools_system_and_the_last_block() {
        let cc = json!({"type":"ephemeral","ttl":"1h"});
        let got = translate(json!({"model":"m","messages":[
            {"role":"system","content":"Be brief."},
            {"role":"user","content":"a"},
            {"role":"assistant","content":"b"},
            {"role":"user","content":[{"type":"text","text":"c"},{"type":"text","text":"d"}]}
        ],"tools":[
            {"type":"function","function":{"name":"f1"}},
            {"type":"function","function":{"name":"f2"}}
        ],"anthropic":{"cache_control":cc}}));
        assert_eq!(got["system"], json!([{"type":"text","text":"Be brief.","cache_control":cc}]));
        assert!(got["tools"][0].get("cache_control").is_none());
        assert_eq!(got["tools"][1]["cache_control"], cc);
        let msgs = got["messages"].as_array().unwrap();
        assert_eq!(msgs[2]["content"], json!([{"type":"text","text":"c"},{"type":"text","text":"d","cache_control":cc}]));
        assert!(msgs[0]["content"][0].get("cache_control").is_none());
        assert!(got.get("cache_control").is_none());
        // Without a system prompt or tools, only the last block.
        let got = translate(hi(json!({"anthropic":{"cache_control":{"type":"ephemeral"}}})));
        assert!(got.get("system").is_none() && got.get("tools").is_none());
        assert_eq!(got["messages"][0]["content"][0]["cache_control"], json!({"type":"ephemeral"}));
    }

    #[test]
    fn earlier_reasoning_content_is_not_replayed() {
        // Anthropic takes thinking back only as its own signed blocks, which clients never get.
        let got = translate(json!({"model":"m","messages":[
            {"role":"user","content":"a"},
            {"role":"assistant","content":"b","reasoning_content":"I thought about it.","reasoning_signature":"sig"},
            {"role":"user","content":"c"}
        ],"anthropic":{"thinking":{"type":"enabled","budget_tokens":1024}},"max_tokens":2048}));
        assert_eq!(got["messages"][1], json!({"role":"assistant","content":[{"type":"text","text":"b"}]}));
        assert!(!got.to_string().contains("I thought about it."));
    }

    #[test]
    fn upstream_request_carries_the_beta_header() {
        use crate::providers::testutil::{backend, upstream};
        use crate::providers::Operation;
        let mut b = backend(json!({"schema":"anthropic","credential":{"env":"ANTHROPIC_API_KEY"}}));
        let body = json!({"model":"alias","messages":[{"role":"user","content":"hi"}],"stream":true,
            "anthropic":{"anthropic_beta":["interleaved-thinking-2025-05-14","context-1m-2025-08-07"],
                         "thinking":{"type":"enabled","budget_tokens":2048}}});
        let up = upstream(Operation::Chat, &b, &body, "claude-sonnet-4-0").unwrap();
        assert_eq!(up.path, "/v1/messages");
        assert!(up.hints.stream);
        assert_eq!(
            up.headers,
            vec![
                ("anthropic-version", "2023-06-01".to_string()),
                ("anthropic-beta", "interleaved-thinking-2025-05-14,context-1m-2025-08-07".to_string())
            ]
        );
        let sent: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(sent["thinking"]["budget_tokens"], 2048);
        assert_eq!(sent["max_tokens"], 4096, "the default max_tokens fits a 2048 budget");
        assert!(sent.get("anthropic").is_none());
        // Joined with betas the backend configuration sends (the header would replace them).
        b.headers.push(("anthropic-beta".to_string(), "context-1m-2025-08-07, files-api-2025-04-14".to_string()));
        let up = upstream(Operation::Chat, &b, &body, "claude-sonnet-4-0").unwrap();
        assert_eq!(
            up.headers.last().map(|(k, v)| (*k, v.as_str())),
            Some(("anthropic-beta", "context-1m-2025-08-07,files-api-2025-04-14,interleaved-thinking-2025-05-14"))
        );
        // No betas asked: no header.
        let up = upstream(Operation::Chat, &b, &json!({"model":"a","messages":[{"role":"user","content":"hi"}]}), "c").unwrap();
        assert_eq!(up.headers, vec![("anthropic-version", "2023-06-01".to_string())]);
        let e = upstream(Operation::Chat, &b, &json!({"model":"a","messages":[{"role":"user","content":"hi"}],"anthropic":{"bogus":1}}), "c")
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("anthropic.bogus"));
    }

    #[test]
    fn system_and_developer_messages_anywhere_become_system() {
        let got = translate(json!({"model":"m","messages":[
            {"role":"system","content":"Be brief."},
            {"role":"user","content":"hi"},
            {"role":"developer","content":[{"type":"text","text":"Answer in French."}]},
            {"role":"assistant","content":"Bonjour"},
            {"role":"user","content":"again"}
        ]}));
        assert_eq!(got["system"], "Be brief.\n\nAnswer in French.");
        assert_eq!(
            got["messages"],
            json!([
                {"role":"user","content":[{"type":"text","text":"hi"}]},
                {"role":"assistant","content":[{"type":"text","text":"Bonjour"}]},
                {"role":"user","content":[{"type":"text","text":"again"}]}
            ])
        );
    }

    #[test]
    fn tool_round_trip_is_translated() {
        let got = translate(json!({"model":"m","messages":[
            {"role":"user","content":"Weather in Paris and Rome?"},
            {"role":"assistant","content":"Let me check.","tool_calls":[
                {"id":"toolu_1","type":"function","function":{"name":"get_weather","arguments":"{\"location\": \"Paris\"}"}},
                {"id":"toolu_2","type":"function","function":{"name":"get_weather","arguments":"{\"location\": \"Rome\", \"units\": [\"c\"]}"}}
            ]},
            {"role":"tool","tool_call_id":"toolu_1","content":"18C sunny"},
            {"role":"tool","tool_call_id":"toolu_2","content":[{"type":"text","text":"21C"},{"type":"text","text":"clear"}]},
            {"role":"user","content":"Thanks, which is warmer?"}
        ]}));
        let msgs = got["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 3, "{msgs:#?}");
        assert_eq!(msgs[0]["role"], "user");
        assert_eq!(
            msgs[1],
            json!({"role":"assistant","content":[
                {"type":"text","text":"Let me check."},
                {"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"location":"Paris"}},
                {"type":"tool_use","id":"toolu_2","name":"get_weather","input":{"location":"Rome","units":["c"]}}
            ]})
        );
        // Both results in ONE user message, tool_result blocks first, then the user's text.
        assert_eq!(
            msgs[2],
            json!({"role":"user","content":[
                {"type":"tool_result","tool_use_id":"toolu_1","content":"18C sunny"},
                {"type":"tool_result","tool_use_id":"toolu_2","content":[{"type":"text","text":"21C"},{"type":"text","text":"clear"}]},
                {"type":"text","text":"Thanks, which is warmer?"}
            ]})
        );
    }

    #[test]
    fn tool_results_go_before_text_already_in_the_user_turn() {
        let got = translate(json!({"model":"m","messages":[
            {"role":"assistant","content":null,"tool_calls":[{"id":"t1","type":"function","function":{"name":"f","arguments":""}}]},
            {"role":"user","content":"note"},
            {"role":"tool","tool_call_id":"t1","content":""}
        ]}));
        assert_eq!(
            got["messages"],
            json!([
                {"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"f","input":{}}]},
                {"role":"user","content":[{"type":"tool_result","tool_use_id":"t1"},{"type":"text","text":"note"}]}
            ])
        );
    }

    #[test]
    fn assistant_edge_cases() {
        // Empty content next to tool calls is dropped; an assistant turn with nothing is skipped;
        // consecutive same-role turns merge.
        let got = translate(json!({"model":"m","messages":[
            {"role":"user","content":"a"},
            {"role":"assistant","content":"","tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"{}"}}]},
            {"role":"assistant"},
            {"role":"assistant","content":"more"},
            {"role":"user","content":"b"},
            {"role":"user","content":"c"}
        ]}));
        assert_eq!(
            got["messages"],
            json!([
                {"role":"user","content":[{"type":"text","text":"a"}]},
                {"role":"assistant","content":[{"type":"tool_use","id":"t","name":"f","input":{}},{"type":"text","text":"more"}]},
                {"role":"user","content":[{"type":"text","text":"b"},{"type":"text","text":"c"}]}
            ])
        );
    }

    #[test]
    fn invalid_tool_arguments_name_the_field() {
        for bad in ["{not json", "[1,2]", "\"x\"", "{\"a\":1} trailing"] {
            let e = translate_err(json!({"model":"m","messages":[
                {"role":"user","content":"a"},
                {"role":"assistant","tool_calls":[
                    {"id":"ok","type":"function","function":{"name":"f","arguments":"{}"}},
                    {"id":"t","type":"function","function":{"name":"f","arguments":bad}}
                ]}
            ]}));
            assert_eq!(e.status, 400);
            assert_eq!(e.kind, "invalid_request_error");
            assert_eq!(e.param.as_deref(), Some("messages[1].tool_calls[1].function.arguments"), "{bad}");
        }
    }

    #[test]
    fn images_become_image_blocks() {
        let got = translate(json!({"model":"m","messages":[{"role":"user","content":[
            {"type":"text","text":"What is in these?"},
            {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}},
            {"type":"image_url","image_url":{"url":"https://example.com/cat.jpg","detail":"high"}},
            {"type":"image_url","image_url":{"url":"DATA:image/webp;BASE64,UklGR"}}
        ]}]}));
        assert_eq!(
            got["messages"][0]["content"],
            json!([
                {"type":"text","text":"What is in these?"},
                {"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}},
                {"type":"image","source":{"type":"url","url":"https://example.com/cat.jpg"}},
                {"type":"image","source":{"type":"base64","media_type":"image/webp","data":"UklGR"}}
            ])
        );
    }

    #[test]
    fn bad_images_and_unsupported_parts_are_400() {
        for url in ["ftp://x/y.png", "data:image/png,abc", "data:;base64,abc", "data:image/png;base64", "é"] {
            let e = translate_err(json!({"model":"m","messages":[{"role":"user","content":[
                {"type":"text","text":"x"},{"type":"image_url","image_url":{"url":url}}]}]}));
            assert_eq!(e.status, 400, "{url}");
            assert_eq!(e.param.as_deref(), Some("messages[0].content[1].image_url.url"), "{url}");
        }
        let audio = translate_err(json!({"model":"m","messages":[
            {"role":"system","content":"s"},
            {"role":"user","content":[{"type":"text","text":"x"},{"type":"input_audio","input_audio":{"data":"AA","format":"wav"}}]}]}));
        assert_eq!(audio.status, 400);
        assert_eq!(audio.param.as_deref(), Some("messages[1].content[1]"));
        assert!(audio.message.contains("not supported by this backend"), "{}", audio.message);
        let file = translate_err(json!({"model":"m","messages":[
            {"role":"user","content":[{"type":"file","file":{"file_id":"f"}}]}]}));
        assert_eq!(file.param.as_deref(), Some("messages[0].content[0]"));
        assert!(file.message.contains("'file'"));
    }

    #[test]
    fn tools_and_tool_choice() {
        let tools = json!([
            {"type":"function","function":{"name":"get_weather","description":"Weather for a city",
             "parameters":{"type":"object","properties":{"location":{"type":"string"}},"required":["location"]}}},
            {"type":"function","function":{"name":"now"}}
        ]);
        let base = |extra: Value| {
            let mut v = json!({"model":"m","messages":[{"role":"user","content":"hi"}],"tools":tools});
            for (k, val) in extra.as_object().unwrap() {
                v[k] = val.clone();
            }
            translate(v)
        };
        let got = base(json!({}));
        assert_eq!(
            got["tools"],
            json!([
                {"name":"get_weather","description":"Weather for a city",
                 "input_schema":{"type":"object","properties":{"location":{"type":"string"}},"required":["location"]}},
                {"name":"now","input_schema":{"type":"object","properties":{}}}
            ])
        );
        assert!(got.get("tool_choice").is_none());
        assert_eq!(base(json!({"tool_choice":"auto"}))["tool_choice"], json!({"type":"auto"}));
        assert_eq!(base(json!({"tool_choice":"required"}))["tool_choice"], json!({"type":"any"}));
        assert_eq!(base(json!({"tool_choice":"none"}))["tool_choice"], json!({"type":"none"}));
        assert_eq!(
            base(json!({"tool_choice":{"type":"function","function":{"name":"now"}}}))["tool_choice"],
            json!({"type":"tool","name":"now"})
        );
        assert_eq!(
            base(json!({"parallel_tool_calls":false}))["tool_choice"],
            json!({"type":"auto","disable_parallel_tool_use":true})
        );
        assert_eq!(
            base(json!({"parallel_tool_calls":false,"tool_choice":"required"}))["tool_choice"],
            json!({"type":"any","disable_parallel_tool_use":true})
        );
        assert_eq!(
            base(json!({"parallel_tool_calls":false,"tool_choice":{"type":"function","function":{"name":"now"}}}))["tool_choice"],
            json!({"type":"tool","name":"now","disable_parallel_tool_use":true})
        );
        assert_eq!(base(json!({"parallel_tool_calls":false,"tool_choice":"none"}))["tool_choice"], json!({"type":"none"}));
        assert!(base(json!({"parallel_tool_calls":true})).get("tool_choice").is_none());

        // Without tools, tool_choice / parallel_tool_calls are dropped.
        let plain = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[],
                                     "tool_choice":"auto","parallel_tool_calls":false}));
        assert!(plain.get("tools").is_none());
        assert!(plain.get("tool_choice").is_none());

        let e = translate_err(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"tools":tools,"tool_choice":"sometimes"}));
        assert_eq!(e.param.as_deref(), Some("tool_choice"));
        let e = translate_err(json!({"model":"m","messages":[{"role":"user","content":"hi"}],
            "tools":[{"type":"function","function":{"name":"a"}},{"type":"code_interpreter","function":{"name":"b"}}]}));
        assert_eq!(e.param.as_deref(), Some("tools[1].type"));
    }

    #[test]
    fn response_format_is_emulated_in_the_system_prompt() {
        let got = translate(json!({"model":"m","messages":[{"role":"system","content":"You extract data."},{"role":"user","content":"hi"}],
                                   "response_format":{"type":"json_object"}}));
        let sys = got["system"].as_str().unwrap();
        assert!(sys.starts_with("You extract data.\n\n"), "{sys}");
        assert!(sys.ends_with(JSON_OBJECT_INSTRUCTION));

        let schema = json!({"type":"object","properties":{"city":{"type":"string"}},"required":["city"]});
        let got = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],
            "response_format":{"type":"json_schema","json_schema":{"name":"city_answer","schema":schema,"strict":true}}}));
        let sys = got["system"].as_str().unwrap();
        assert!(sys.contains("`city_answer`"), "{sys}");
        assert!(sys.contains("JSON object"), "{sys}");
        let tail = sys.rsplit('\n').next().unwrap();
        assert_eq!(serde_json::from_str::<Value>(tail).unwrap(), schema, "schema is embedded verbatim");

        let text = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"text"}}));
        assert!(text.get("system").is_none());
    }

    #[test]
    fn unsupported_request_features_are_400() {
        let e = translate_err(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"n":2}));
        assert_eq!((e.status, e.param.as_deref()), (400, Some("n")));
        assert!(e.message.contains("one choice"));
        translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"n":1}));

        let e = translate_err(json!({"model":"m","messages":[{"role":"user","content":"hi"},{"role":"function","name":"f","content":"42"}]}));
        assert_eq!((e.status, e.param.as_deref()), (400, Some("messages[1].role")));
        assert!(e.message.contains("function"));
    }

    // ------------------------------------------------------------------------------ responses

    #[test]
    fn recorded_response_is_translated() {
        let rec = interaction(INSTRUCTIONS, 0);
        let body = rec["response"]["parsed_body"].to_string();
        let out: Value = serde_json::from_slice(&response_body(body.as_bytes(), CREATED).unwrap()).unwrap();
        assert_eq!(out["id"], "msg_01Fg1JVgvCYUHWsxrj9GkpEv");
        assert_eq!(out["object"], "chat.completion");
        assert_eq!(out["created"], CREATED);
        assert_eq!(out["model"], "claude-3-opus-20240229");
        let choice = &out["choices"][0];
        assert_eq!(out["choices"].as_array().unwrap().len(), 1);
        assert_eq!(choice["index"], 0);
        assert_eq!(choice["message"]["role"], "assistant");
        assert_eq!(choice["message"]["content"], "The capital of France is Paris.");
        assert!(choice["message"].get("tool_calls").is_none());
        assert!(choice["message"].get("reasoning_content").is_none());
        assert_eq!(choice["finish_reason"], "stop");
        assert_eq!(
            out["usage"],
            json!({"prompt_tokens":20,"completion_tokens":10,"total_tokens":30,"prompt_tokens_details":{"cached_tokens":0}})
        );
    }

    #[test]
    fn tool_use_thinking_and_cache_usage() {
        let body = json!({
            "id":"msg_T","type":"message","role":"assistant","model":"claude-sonnet-4-20250514",
            "content":[
                {"type":"thinking","thinking":"Need weather.","signature":"sig"},
                {"type":"redacted_thinking","data":"xyz"},
                {"type":"text","text":"I'll check "},
                {"type":"text","text":"Paris."},
                {"type":"tool_use","id":"toolu_01A","name":"get_weather","input":{"location":"Paris","days":2}}
            ],
            "stop_reason":"tool_use","stop_sequence":null,
            "usage":{"input_tokens":100,"output_tokens":40,"cache_read_input_tokens":2000,"cache_creation_input_tokens":300}
        });
        let out: Value = serde_json::from_slice(&response_body(body.to_string().as_bytes(), 5).unwrap()).unwrap();
        let m = &out["choices"][0]["message"];
        assert_eq!(m["content"], "I'll check Paris.");
        assert_eq!(m["reasoning_content"], "Need weather.");
        assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
        let calls = m["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0]["id"], "toolu_01A");
        assert_eq!(calls[0]["type"], "function");
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        let args: Value = serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"location":"Paris","days":2}));
        assert_eq!(
            out["usage"],
            json!({"prompt_tokens":2400,"completion_tokens":40,"total_tokens":2440,
                   "prompt_tokens_details":{"cached_tokens":2000,"cache_creation_tokens":300}})
        );

        // Tool use only: content is null, as OpenAI sends it.
        let only = json!({"id":"m","type":"message","model":"c","content":[{"type":"tool_use","id":"t","name":"f","input":{}}],
                          "stop_reason":"tool_use","usage":{"input_tokens":1,"output_tokens":1,"cache_read_input_tokens":null}});
        let out: Value = serde_json::from_slice(&response_body(only.to_string().as_bytes(), 5).unwrap()).unwrap();
        assert!(out["choices"][0]["message"]["content"].is_null());
        assert_eq!(out["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], "{}");
        assert_eq!(out["usage"]["prompt_tokens"], 1);
    }

    #[test]
    fn stop_reasons_map_to_finish_reasons() {
        for (stop, finish) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("pause_turn", "stop"),
            ("refusal", "content_filter"),
        ] {
            let body = json!({"id":"m","type":"message","model":"c","content":[{"type":"text","text":"x"}],
                              "stop_reason":stop,"usage":{"input_tokens":1,"output_tokens":1}});
            let out: Value = serde_json::from_slice(&response_body(body.to_string().as_bytes(), 1).unwrap()).unwrap();
            assert_eq!(out["choices"][0]["finish_reason"], finish, "{stop}");
        }
    }

    #[test]
    fn unreadable_responses_are_502() {
        for body in [
            &b""[..],
            b"not json",
            b"{}",
            br#"{"id":"x","content":"text"}"#,
            br#"{"type":"error","error":{"type":"api_error","message":"boom"}}"#,
            br#"{"type":"completion","id":"x","content":[]}"#,
            b"[1,2,3]",
        ] {
            let e = response_body(body, 1).expect_err("must fail");
            assert_eq!(e.status, 502, "{}", String::from_utf8_lossy(body));
            assert_eq!(e.kind, "api_error");
        }
    }

    // ------------------------------------------------------------------------------ errors

    #[test]
    fn recorded_error_is_mapped() {
        let rec = interaction(ERROR_400, 0);
        assert_eq!(rec["response"]["status"]["code"], 400);
        let body = rec["response"]["parsed_body"].to_string();
        let (status, out) = map_error(400, body.as_bytes());
        assert_eq!(status, 400);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            json!({"error":{
                "message":"This model does not support effort level 'xhigh'. Supported levels: high, low, max, medium.",
                "type":"invalid_request_error","param":null,"code":"invalid_request_error"}})
        );
    }

    #[test]
    fn overloaded_and_other_errors() {
        assert_eq!(map_status(529), 503);
        for s in [400, 401, 403, 404, 413, 429, 500, 502, 503, 504] {
            assert_eq!(map_status(s), s);
        }
        let (status, out) = map_error(529, br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#);
        assert_eq!(status, 503);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            json!({"error":{"message":"Overloaded","type":"service_unavailable_error","param":null,"code":"overloaded_error"}})
        );
        let (status, out) = map_error(429, br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#);
        assert_eq!(status, 429);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["error"]["code"], "rate_limit_error");
        let (_, out) = map_error(401, br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#);
        assert_eq!(serde_json::from_slice::<Value>(&out).unwrap()["error"]["type"], "authentication_error");

        for body in [&b"<html>Bad gateway</html>"[..], b"", b"{\"type\":\"error\"}", b"\xff\xfe"] {
            let (status, out) = map_error(502, body);
            assert_eq!(status, 502);
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert!(v["error"]["message"].as_str().unwrap().contains("502"), "{v}");
            assert_eq!(v["error"]["type"], "api_error");
            assert!(v["error"]["param"].is_null());
        }
        let (status, out) = map_error(529, b"overloaded");
        assert_eq!(status, 503);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert!(v["error"]["message"].as_str().unwrap().contains("529"));
        assert_eq!(v["error"]["type"], "service_unavailable_error");
    }

    // ------------------------------------------------------------------------------ streams

    #[test]
    fn basic_stream() {
        let out = assert_split_invariant(BASIC);
        let sum = summarize(&out, "msg_4QpJur2dWWDjF6C758FbBw5vm12BaVipnK", "claude-3-opus-latest");
        assert!(sum.role_first);
        assert_eq!(sum.content, "Hello there!");
        assert_eq!(sum.reasoning, "");
        assert!(sum.tools.is_empty());
        assert_eq!(sum.finish, vec!["stop"]);
        assert_eq!(
            sum.usage,
            Some(json!({"prompt_tokens":11,"completion_tokens":6,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":0}}))
        );
        assert!(sum.done);
        assert!(sum.error.is_none());
        // role chunk, 3 text chunks, finish chunk, usage chunk, [DONE]
        assert_eq!(payloads(&out).len(), 7);
        assert!(out.ends_with(DONE));
    }

    #[test]
    fn basic_stream_needs_finish_for_its_unterminated_last_event() {
        // The fixture ends with `data: {"type":"message_stop"}` and no blank line.
        assert!(!BASIC.ends_with('\n'));
        let mut t = StreamTranslator::new(CREATED);
        let mut out = Vec::new();
        t.push(BASIC.as_bytes(), &mut out);
        assert!(!out.ends_with(DONE));
        let before = out.len();
        t.finish(&mut out);
        assert!(out.len() > before);
        assert!(out.ends_with(DONE));
        // finish() after a completed stream writes nothing more; nor does a later push.
        let done_len = out.len();
        t.finish(&mut out);
        t.push(b"event: ping\ndata: {\"type\":\"ping\"}\n\n", &mut out);
        assert_eq!(out.len(), done_len);
    }

    #[test]
    fn tool_use_stream() {
        let out = assert_split_invariant(TOOL_USE);
        let sum = summarize(&out, "msg_019Q1hrJbZG26Fb9BQhrkHEr", "claude-sonnet-4-20250514");
        assert!(sum.role_first);
        assert_eq!(sum.content, "I'll check the current weather in Paris for you.");
        assert_eq!(
            sum.tools,
            vec![("toolu_01NRLabsLyVHZPKxbKvkfSMn".to_string(), "get_weather".to_string(), "{\"location\": \"Paris\"}".to_string())]
        );
        let args: Value = serde_json::from_str(&sum.tools[0].2).unwrap();
        assert_eq!(args, json!({"location":"Paris"}));
        assert_eq!(sum.finish, vec!["tool_calls"]);
        assert_eq!(sum.usage.as_ref().unwrap()["prompt_tokens"], 377);
        assert_eq!(sum.usage.as_ref().unwrap()["completion_tokens"], 65);
        assert_eq!(sum.usage.as_ref().unwrap()["total_tokens"], 442);
        assert!(sum.done);
        // The tool-call start chunk carries the id, type, name and empty arguments.
        let (evs, _) = events(&out);
        let first_call = evs
            .iter()
            .find_map(|e| e["choices"][0]["delta"].get("tool_calls").cloned())
            .unwrap();
        assert_eq!(
            first_call,
            json!([{"index":0,"id":"toolu_01NRLabsLyVHZPKxbKvkfSMn","type":"function","function":{"name":"get_weather","arguments":""}}])
        );
    }

    #[test]
    fn refusal_stream() {
        let out = assert_split_invariant(REFUSAL);
        let sum = summarize(&out, "msg_01RefusalTestMessage123456789", "claude-opus-4-7");
        assert_eq!(sum.content, "");
        assert_eq!(sum.finish, vec!["content_filter"]);
        assert_eq!(sum.usage.as_ref().unwrap()["prompt_tokens"], 20);
        assert_eq!(sum.usage.as_ref().unwrap()["completion_tokens"], 0);
        assert!(sum.done);
    }

    #[test]
    fn max_tokens_stream_with_partial_tool_json() {
        let out = assert_split_invariant(PARTIAL_JSON);
        let sum = summarize(&out, "msg_01UdjYBBipA9omjYhicnevgq", "claude-3-7-sonnet-20250219");
        assert!(sum.content.starts_with("I'll create a comprehensive tax guide for someone with multiple W2s"));
        assert!(sum.content.ends_with("Let me do that for you now."));
        assert_eq!(sum.tools.len(), 1);
        assert_eq!(sum.tools[0].0, "toolu_01EKqbqmZrGRXy18eN7m9kvY");
        assert_eq!(sum.tools[0].1, "make_file");
        assert!(sum.tools[0].2.starts_with("{\"filename\": \"taxes.txt\", \"lines_of_text\": ["));
        assert!(sum.tools[0].2.ends_with("\n\"Filing taxes"));
        assert_eq!(sum.finish, vec!["length"]);
        assert_eq!(
            sum.usage,
            Some(json!({"prompt_tokens":450,"completion_tokens":124,"total_tokens":574,"prompt_tokens_details":{"cached_tokens":0}}))
        );
        assert!(sum.done);
    }

    #[test]
    fn recorded_thinking_stream_with_padded_data_lines() {
        let body = thinking_stream_body();
        assert!(body.contains("}}    }\n"), "the recording pads its JSON with spaces");
        let out = assert_split_invariant(&body);
        let sum = summarize(&out, "msg_01ALwQ87pTS7hH1PjSdC9wJD", "claude-sonnet-4-20250514");
        assert!(sum.role_first);
        assert_eq!(
            sum.reasoning,
            "This is a straightforward question about pedestrian safety. I should provide clear, helpful advice \
             about how to safely cross a street. This is basic safety information that could help prevent accidents."
        );
        assert!(sum.content.starts_with("Here are the basic steps for safely crossing the street:\n\n**At"), "{}", sum.content);
        assert!(sum.content.ends_with("Always prioritize safety over speed when crossing streets."));
        assert!(!sum.content.contains("EvMCCkYICxgC"), "signatures are not forwarded");
        assert!(!sum.reasoning.contains("EvMCCkYICxgC"));
        assert_eq!(sum.finish, vec!["stop"]);
        assert_eq!(
            sum.usage,
            Some(json!({"prompt_tokens":43,"completion_tokens":282,"total_tokens":325,"prompt_tokens_details":{"cached_tokens":0}}))
        );
        assert!(sum.done);
    }

    #[test]
    fn usage_is_available_while_streaming() {
        let mut t = StreamTranslator::new(CREATED);
        let mut out = Vec::new();
        assert!(t.usage().is_none());
        let (head, _) = TOOL_USE.split_once("event: content_block_start").unwrap();
        t.push(head.as_bytes(), &mut out);
        let u = t.usage().unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.total_tokens), (377, 1, 378));
        t.push(&TOOL_USE.as_bytes()[head.len()..], &mut out);
        t.finish(&mut out);
        let u = t.usage().unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.total_tokens), (377, 65, 442));
    }

    #[test]
    fn cache_tokens_count_in_the_prompt() {
        let input = sse(&[
            ("message_start", json!({"type":"message_start","message":{"id":"msg_c","model":"claude-x","content":[],
                "usage":{"input_tokens":10,"cache_read_input_tokens":1000,"cache_creation_input_tokens":50,"output_tokens":1}}})),
            text_delta("ok"),
            ("message_delta", json!({"type":"message_delta","delta":{"stop_reason":"stop_sequence","stop_sequence":"END"},"usage":{"output_tokens":3}})),
            ("message_stop", json!({"type":"message_stop"})),
        ]);
        let (out, usage) = run_chunks([input.as_bytes()]);
        let sum = summarize(&out, "msg_c", "claude-x");
        assert_eq!(sum.finish, vec!["stop"]);
        assert_eq!(
            sum.usage,
            Some(json!({"prompt_tokens":1060,"completion_tokens":3,"total_tokens":1063,
                        "prompt_tokens_details":{"cached_tokens":1000,"cache_creation_tokens":50}}))
        );
        let usage = usage.unwrap();
        assert_eq!(usage.prompt_tokens, 1060);
        assert_eq!(usage.prompt_tokens_details.unwrap().cache_creation_tokens, 50);
    }

    #[test]
    fn several_tool_calls_are_numbered_in_order() {
        let input = sse(&[
            start("msg_m", "claude-x"),
            ("content_block_start", json!({"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t_a","name":"a","input":{}}})),
            ("content_block_delta", json!({"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"x\":"}})),
            ("content_block_start", json!({"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t_b","name":"b","input":{}}})),
            ("content_block_delta", json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"y\":2}"}})),
            ("content_block_delta", json!({"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"1}"}})),
            ("content_block_delta", json!({"type":"content_block_delta","index":7,"delta":{"type":"input_json_delta","partial_json":"ignored"}})),
            ("message_delta", json!({"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":9}})),
            ("message_stop", json!({"type":"message_stop"})),
        ]);
        let out = assert_split_invariant(&input);
        let sum = summarize(&out, "msg_m", "claude-x");
        assert_eq!(
            sum.tools,
            vec![
                ("t_a".to_string(), "a".to_string(), "{\"x\":1}".to_string()),
                ("t_b".to_string(), "b".to_string(), "{\"y\":2}".to_string())
            ]
        );
        assert_eq!(sum.finish, vec!["tool_calls"]);
    }

    #[test]
    fn mid_stream_error_ends_the_stream_without_done() {
        let input = sse(&[
            start("msg_e", "claude-x"),
            text_delta("partial"),
            ("error", json!({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}})),
            text_delta("never"),
            ("message_stop", json!({"type":"message_stop"})),
        ]);
        let out = assert_split_invariant(&input);
        let sum = summarize(&out, "msg_e", "claude-x");
        assert_eq!(sum.content, "partial");
        assert!(!sum.done);
        assert!(sum.finish.is_empty());
        assert_eq!(
            sum.error,
            Some(json!({"message":"Overloaded","type":"service_unavailable_error","param":null,"code":"overloaded_error"}))
        );
        // finish() adds nothing after an error.
        let mut t = StreamTranslator::new(CREATED);
        let mut o = Vec::new();
        t.push(input.as_bytes(), &mut o);
        let n = o.len();
        t.finish(&mut o);
        t.push(BASIC.as_bytes(), &mut o);
        assert_eq!(o.len(), n);
        assert_eq!(payloads(&o).len(), 3);
    }

    #[test]
    fn other_stream_error_types() {
        for (kind, want) in [
            ("rate_limit_error", "rate_limit_error"),
            ("api_error", "api_error"),
            ("invalid_request_error", "invalid_request_error"),
            ("something_new", "api_error"),
        ] {
            let input = sse(&[start("m", "c"), ("error", json!({"type":"error","error":{"type":kind,"message":"m"}}))]);
            let sum = summarize(&run_whole(&input), "m", "c");
            let err = sum.error.unwrap();
            assert_eq!(err["type"], want, "{kind}");
            assert_eq!(err["code"], kind);
        }
        // An error before anything else (no message_start) is still a single error event.
        let out = run_whole(&sse(&[("error", json!({"type":"error","error":{"type":"api_error","message":"Internal"}}))]));
        let (evs, done) = events(&out);
        assert!(!done);
        assert_eq!(evs, vec![json!({"error":{"message":"Internal","type":"api_error","param":null,"code":"api_error"}})]);
    }

    #[test]
    fn truncated_stream_reports_an_error() {
        let (head, _) = BASIC.split_once("event: message_stop").unwrap();
        let out = assert_split_invariant(head);
        let sum = summarize(&out, "msg_4QpJur2dWWDjF6C758FbBw5vm12BaVipnK", "claude-3-opus-latest");
        assert_eq!(sum.content, "Hello there!");
        assert!(!sum.done);
        assert!(sum.finish.is_empty(), "no finish chunk without message_stop");
        assert!(sum.usage.is_none());
        assert_eq!(
            sum.error,
            Some(json!({"message":"upstream stream ended before completion","type":"api_error","param":null,"code":"stream_truncated"}))
        );
        // Nothing at all from upstream: only the error.
        let (evs, done) = events(&run_whole(""));
        assert!(!done);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0]["error"]["code"], "stream_truncated");
    }

    #[test]
    fn malformed_event_is_an_error() {
        let input = format!(
            "{}event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"x\"\n\n{}",
            sse(&[start("msg_bad", "c"), text_delta("ok")]),
            sse(&[text_delta("after")])
        );
        let out = assert_split_invariant(&input);
        let sum = summarize(&out, "msg_bad", "c");
        assert_eq!(sum.content, "ok");
        assert!(!sum.done);
        let err = sum.error.unwrap();
        assert_eq!(err["type"], "api_error");
        assert_eq!(err["code"], "invalid_upstream_event");
        assert!(err["param"].is_null());
        // A field of the wrong type is malformed too.
        let out = run_whole(&format!("{}event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":\"zero\"}}\n\n", sse(&[start("m", "c")])));
        assert_eq!(summarize(&out, "m", "c").error.unwrap()["code"], "invalid_upstream_event");
    }

    #[test]
    fn unknown_events_and_blocks_are_ignored() {
        let input = sse(&[
            start("msg_u", "claude-x"),
            ("ping", json!({"type":"ping"})),
            ("future_event", json!({"type":"future_event","stuff":[1,2,{"a":null}]})),
            ("content_block_start", json!({"type":"content_block_start","index":0,"content_block":{"type":"server_tool_use","id":"srv","name":"web_search","input":{}}})),
            ("content_block_delta", json!({"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"q\":1}"}})),
            ("content_block_start", json!({"type":"content_block_start","index":1,"content_block":{"type":"redacted_thinking","data":"abc"}})),
            ("content_block_start", json!({"type":"content_block_start","index":2,"content_block":{"type":"text","text":""}})),
            ("content_block_delta", json!({"type":"content_block_delta","index":2,"delta":{"type":"citations_delta","citation":{}}})),
            ("content_block_delta", json!({"type":"content_block_delta","index":2,"delta":{"type":"text_delta","text":"caf\u{e9} \"quoted\"\n"}})),
            ("content_block_stop", json!({"type":"content_block_stop","index":2})),
            ("message_delta", json!({"type":"message_delta","delta":{"stop_reason":"pause_turn"},"usage":{"output_tokens":4}})),
            ("message_stop", json!({"type":"message_stop"})),
        ]);
        let out = assert_split_invariant(&input);
        let sum = summarize(&out, "msg_u", "claude-x");
        assert_eq!(sum.content, "caf\u{e9} \"quoted\"\n");
        assert!(sum.tools.is_empty(), "server tools are not client tool calls");
        assert_eq!(sum.finish, vec!["stop"]);
        assert!(sum.done);
        // role, text, finish, usage, [DONE]
        assert_eq!(payloads(&out).len(), 5);
    }

    #[test]
    fn trailing_spaces_after_data_are_tolerated() {
        let padded: String = TOOL_USE.lines().map(|l| if l.starts_with("data:") { format!("{l}   \t \n") } else { format!("{l}\n") }).collect();
        assert!(padded.contains("}   \t \n"));
        let out = assert_split_invariant(&padded);
        assert_eq!(out, run_whole(TOOL_USE));
    }

    #[test]
    fn crlf_and_comment_lines_are_tolerated() {
        let crlf = TOOL_USE.replace('\n', "\r\n").replace("event: ping", ": keep-alive\r\nevent: ping");
        let out = assert_split_invariant(&crlf);
        let sum = summarize(&out, "msg_019Q1hrJbZG26Fb9BQhrkHEr", "claude-sonnet-4-20250514");
        assert_eq!(sum.tools[0].2, "{\"location\": \"Paris\"}");
        assert!(sum.done);
    }

    #[test]
    fn garbage_and_cut_streams_never_panic_and_always_terminate() {
        let body = thinking_stream_body();
        let inputs: Vec<Vec<u8>> = vec![
            BASIC.as_bytes().to_vec(),
            TOOL_USE.as_bytes().to_vec(),
            body.as_bytes().to_vec(),
            b"\xff\xfe\x00garbage\n\n".to_vec(),
            b"data: {\"type\":\"message_stop\"}\n\n".to_vec(),
            b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":null}\n\n".to_vec(),
            b"data: {\"type\":\"content_block_delta\",\"index\":4294967296}\n\n".to_vec(),
            b"data: []\n\ndata: 1\n\n".to_vec(),
        ];
        for input in &inputs {
            for cut in (0..=input.len()).step_by(13) {
                let prefix = input.get(..cut).unwrap();
                let (out, _) = run_chunks([prefix]);
                let p = payloads(&out);
                let last = p.last().expect("something is always written");
                assert!(
                    last == "[DONE]" || serde_json::from_str::<Value>(last).unwrap().get("error").is_some(),
                    "stream ends with [DONE] or an error: {last}"
                );
                for d in &p {
                    assert!(d == "[DONE]" || serde_json::from_str::<Value>(d).is_ok());
                }
            }
        }
    }

    #[test]
    fn oversized_event_is_an_error() {
        let mut t = StreamTranslator::new(CREATED);
        let mut out = Vec::new();
        let big = vec![b'a'; crate::stream::sse::MAX_PENDING_BYTES + 10];
        t.push(b"data: ", &mut out);
        t.push(&big, &mut out);
        t.finish(&mut out);
        let (evs, done) = events(&out);
        assert!(!done);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0]["error"]["code"], "stream_overflow");
    }
}
