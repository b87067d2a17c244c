//! The Anthropic Messages API as an ingress (`POST /v1/messages`, `/v1/messages/count_tokens`):
//! its request translated into the canonical OpenAI chat request, the canonical answer and stream
//! translated back into a Messages `message` and the Messages event stream, and errors in
//! Anthropic's shape. See `ingress.rs` for where this sits.
//!
//! Request → canonical:
//! * `system` (string or text blocks, joined with a newline) → a `system` message first.
//! * `messages[]`: `text` → text parts; `image` (`base64` → a data URL, `url` → the URL) →
//!   `image_url` parts; assistant `tool_use` → `tool_calls` (input as JSON text); user
//!   `tool_result` → a `tool` message each, before the turn's other content (text of its blocks;
//!   `is_error` prefixes the text with `Error: `); `thinking` / `redacted_thinking` of earlier
//!   turns are dropped (only Anthropic takes them back, and Anthropic backends get the original).
//! * `max_tokens` → `max_tokens`; `stop_sequences` → `stop`; `temperature`, `top_p` as given;
//!   `metadata.user_id` → `user`; `stream` → `stream` with `stream_options.include_usage`.
//! * `tools` (custom tools) → function tools; `tool_choice` `auto`/`any`/`tool`/`none` →
//!   `auto`/`required`/named/`none`, `disable_parallel_tool_use` → `parallel_tool_calls: false`.
//! * `thinking` `{"type":"enabled","budget_tokens":N}` → `reasoning_effort` `low` (N ≤ 1024),
//!   `medium` (≤ 8192) or `high`; `adaptive` → `medium`; `disabled` → nothing.
//! * Not translatable (Anthropic backends still serve them, other backends answer a 400 naming
//!   it): `document`, `search_result`, `container_upload` and server-tool blocks, server tools
//!   (`type` other than `custom`), `mcp_servers`, `container`.
//! * Ignored for other backends: `cache_control`, `top_k`, `service_tier`, `citations`.
//!
//! Canonical answer → Messages: `content` (thinking, then text, then `tool_use` blocks with the
//! arguments parsed as the input object), `stop_reason` (`stop` → `end_turn`, `length` →
//! `max_tokens`, `tool_calls` → `tool_use`, `content_filter` → `refusal`), `usage` with
//! `input_tokens` excluding cache reads and writes, `cache_read_input_tokens` and
//! `cache_creation_input_tokens`, as Anthropic counts them. An OpenAI answer cannot say which stop
//! sequence matched: `stop_sequence` is always `null` and such a stop is `end_turn`.

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::chat::{ResponseSummary, Usage};
use super::error::ApiError;
use super::ingress::{AnswerTranslate, Canonical};
use super::limits::RequestLimits;
use crate::stream::sse::SseParser;

// =============================================================================================
// Request
// =============================================================================================

fn bad(param: impl Into<String>, message: impl Into<String>) -> ApiError {
    ApiError::invalid_param(param, message)
}

fn untranslatable(what: &str, param: String) -> ApiError {
    ApiError::invalid_param(
        param,
        format!("{what} needs an Anthropic backend: the backend that served this request does not speak the Messages API, and the gateway cannot translate it."),
    )
    .with_code("untranslatable")
}

/// A canonical parameter name → the Messages field it came from (for errors the canonical checks
/// find, such as a limit on `messages` or `tools`).
pub fn client_param(canonical: &str) -> String {
    match canonical {
        "stop" => "stop_sequences".into(),
        "user" => "metadata.user_id".into(),
        "reasoning_effort" => "thinking".into(),
        other => other.to_string(),
    }
}

/// Parses a Messages request body and builds its canonical chat body.
pub fn to_canonical(body: &[u8], limits: &RequestLimits) -> Result<Canonical, ApiError> {
    // The same parse (and depth and size protections) as a chat request.
    let value: Value = super::chat::parse_json_body(body)?;
    let _ = limits;
    let Value::Object(req) = value else {
        return Err(ApiError::invalid_request("The request body must be a JSON object."));
    };
    let mut lossy: Option<ApiError> = None;
    let mut note = |e: ApiError| {
        lossy.get_or_insert(e);
    };
    let mut out = Map::new();

    let model = match req.get("model") {
        Some(Value::String(m)) => m.clone(),
        Some(_) => return Err(bad("model", "model: Input should be a valid string")),
        None => return Err(bad("model", "model: Field required")),
    };
    out.insert("model".into(), Value::String(model));

    let mut messages: Vec<Value> = Vec::new();
    match req.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(Value::Array(blocks)) => {
            let mut text = String::new();
            for (i, b) in blocks.iter().enumerate() {
                let t = b.get("text").and_then(Value::as_str);
                match (b.get("type").and_then(Value::as_str), t) {
                    (Some("text"), Some(t)) => {
                        if !text.is_empty() {
                            text.push('\n');
                        }
                        text.push_str(t);
                    }
                    _ => return Err(bad(format!("system.{i}"), format!("system.{i}: expected a text block with a string `text`"))),
                }
            }
            messages.push(json!({"role": "system", "content": text}));
        }
        Some(_) => return Err(bad("system", "system: Input should be a valid string or a list of text blocks")),
    }

    let turns = match req.get("messages") {
        Some(Value::Array(m)) => m,
        Some(_) => return Err(bad("messages", "messages: Input should be a valid list")),
        None => return Err(bad("messages", "messages: Field required")),
    };
    if turns.is_empty() {
        return Err(bad("messages", "messages: at least one message is required"));
    }
    for (i, turn) in turns.iter().enumerate() {
        let role = match turn.get("role").and_then(Value::as_str) {
            Some(r @ ("user" | "assistant")) => r,
            Some(_) => return Err(bad(format!("messages.{i}.role"), format!("messages.{i}.role: Input should be 'user' or 'assistant'"))),
            None => return Err(bad(format!("messages.{i}.role"), format!("messages.{i}.role: Field required"))),
        };
        match turn.get("content") {
            Some(Value::String(s)) => messages.push(json!({"role": role, "content": s})),
            Some(Value::Array(blocks)) => translate_turn(i, role, blocks, &mut messages, &mut note)?,
            Some(_) => return Err(bad(format!("messages.{i}.content"), format!("messages.{i}.content: Input should be a valid string or list of content blocks"))),
            None => return Err(bad(format!("messages.{i}.content"), format!("messages.{i}.content: Field required"))),
        }
    }
    out.insert("messages".into(), Value::Array(messages));

    match req.get("max_tokens") {
        Some(v @ Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 1) => {
            out.insert("max_tokens".into(), v.clone());
        }
        Some(_) => return Err(bad("max_tokens", "max_tokens: Input should be an integer greater than or equal to 1")),
        // count_tokens bodies have none; the canonical request is then unlimited (the estimate
        // of a real request uses the key's default output allowance).
        None => {}
    }
    for field in ["temperature", "top_p"] {
        match req.get(field) {
            None | Some(Value::Null) => {}
            Some(v @ Value::Number(_)) => {
                out.insert(field.into(), v.clone());
            }
            Some(_) => return Err(bad(field, format!("{field}: Input should be a valid number"))),
        }
    }
    match req.get("stop_sequences") {
        None | Some(Value::Null) => {}
        Some(Value::Array(seqs)) if seqs.iter().all(Value::is_string) => {
            if !seqs.is_empty() {
                out.insert("stop".into(), Value::Array(seqs.clone()));
            }
        }
        Some(_) => return Err(bad("stop_sequences", "stop_sequences: Input should be a list of strings")),
    }
    let stream = match req.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("stream", "stream: Input should be a valid boolean")),
    };
    if stream {
        out.insert("stream".into(), Value::Bool(true));
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    match req.get("metadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => match m.get("user_id") {
            None | Some(Value::Null) => {}
            Some(Value::String(u)) => {
                out.insert("user".into(), Value::String(u.clone()));
            }
            Some(_) => return Err(bad("metadata.user_id", "metadata.user_id: Input should be a valid string")),
        },
        Some(_) => return Err(bad("metadata", "metadata: Input should be a valid object")),
    }

    let mut named_tools = Vec::new();
    match req.get("tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(tools)) => {
            let mut fns = Vec::with_capacity(tools.len());
            for (i, t) in tools.iter().enumerate() {
                let kind = t.get("type").and_then(Value::as_str);
                if !matches!(kind, None | Some("custom")) {
                    note(untranslatable(&format!("The server tool `{}`", kind.unwrap_or_default()), format!("tools.{i}")));
                    continue;
                }
                let Some(name) = t.get("name").and_then(Value::as_str) else {
                    return Err(bad(format!("tools.{i}.name"), format!("tools.{i}.name: Field required")));
                };
                let schema = match t.get("input_schema") {
                    Some(s @ Value::Object(_)) => s.clone(),
                    _ => return Err(bad(format!("tools.{i}.input_schema"), format!("tools.{i}.input_schema: Input should be a valid object"))),
                };
                let mut f = Map::new();
                f.insert("name".into(), Value::String(name.to_string()));
                if let Some(d) = t.get("description").and_then(Value::as_str) {
                    f.insert("description".into(), Value::String(d.to_string()));
                }
                f.insert("parameters".into(), schema);
                named_tools.push(name.to_string());
                fns.push(json!({"type": "function", "function": Value::Object(f)}));
            }
            if !fns.is_empty() {
                out.insert("tools".into(), Value::Array(fns));
            }
        }
        Some(_) => return Err(bad("tools", "tools: Input should be a valid list")),
    }
    match req.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::Object(tc)) => {
            let choice = match tc.get("type").and_then(Value::as_str) {
                Some("auto") => json!("auto"),
                Some("any") => json!("required"),
                Some("none") => json!("none"),
                Some("tool") => match tc.get("name").and_then(Value::as_str) {
                    Some(n) => json!({"type": "function", "function": {"name": n}}),
                    None => return Err(bad("tool_choice.name", "tool_choice.name: Field required")),
                },
                _ => return Err(bad("tool_choice.type", "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")),
            };
            // OpenAI refuses a tool choice without tools; Anthropic accepts `auto`/`none` then.
            if out.contains_key("tools") {
                out.insert("tool_choice".into(), choice);
                if tc.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true) {
                    out.insert("parallel_tool_calls".into(), Value::Bool(false));
                }
            }
        }
        Some(_) => return Err(bad("tool_choice", "tool_choice: Input should be a valid object")),
    }
    match req.get("thinking") {
        None | Some(Value::Null) => {}
        Some(Value::Object(t)) => match t.get("type").and_then(Value::as_str) {
            Some("enabled") => {
                let Some(budget) = t.get("budget_tokens").and_then(Value::as_u64) else {
                    return Err(bad("thinking.budget_tokens", "thinking.budget_tokens: Field required"));
                };
                out.insert("reasoning_effort".into(), json!(effort_for_budget(budget)));
            }
            Some("adaptive") => {
                out.insert("reasoning_effort".into(), json!("medium"));
            }
            Some("disabled") => {}
            _ => return Err(bad("thinking.type", "thinking.type: Input should be 'enabled', 'adaptive' or 'disabled'")),
        },
        Some(_) => return Err(bad("thinking", "thinking: Input should be a valid object")),
    }
    for field in ["mcp_servers", "container"] {
        if req.get(field).is_some_and(|v| !v.is_null()) {
            note(untranslatable(&format!("`{field}`"), field.to_string()));
        }
    }

    let body = serde_json::to_vec(&Value::Object(out)).map_err(|e| ApiError::gateway(500, format!("could not encode the request: {e}")))?;
    Ok(Canonical { body, untranslatable: lossy })
}

/// Anthropic's thinking budget → an OpenAI `reasoning_effort` level (the inverse of the budgets
/// the Anthropic backend uses for the levels: 1024, 8192, 24576).
pub fn effort_for_budget(budget: u64) -> &'static str {
    match budget {
        0..=1024 => "low",
        1025..=8192 => "medium",
        _ => "high",
    }
}

/// One Messages turn of content blocks → canonical messages (tool results first, as `tool`
/// messages; then the turn itself).
fn translate_turn(i: usize, role: &str, blocks: &[Value], messages: &mut Vec<Value>, note: &mut impl FnMut(ApiError)) -> Result<(), ApiError> {
    let mut parts: Vec<Value> = Vec::new();
    let mut tool_calls: Vec<Value> = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let at = |f: &str| if f.is_empty() { format!("messages.{i}.content.{j}") } else { format!("messages.{i}.content.{j}.{f}") };
        let kind = match b.get("type").and_then(Value::as_str) {
            Some(k) => k,
            None => return Err(bad(at("type"), format!("{}: Field required", at("type")))),
        };
        match kind {
            "text" => match b.get("text").and_then(Value::as_str) {
                Some(t) => parts.push(json!({"type": "text", "text": t})),
                None => return Err(bad(at("text"), format!("{}: Field required", at("text")))),
            },
            "image" => parts.push(image_part(b.get("source"), &at("source"))?),
            "tool_use" if role == "assistant" => {
                let (Some(id), Some(name)) = (b.get("id").and_then(Value::as_str), b.get("name").and_then(Value::as_str)) else {
                    return Err(bad(at(""), format!("{}: a tool_use block needs a string `id` and `name`", at(""))));
                };
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                tool_calls.push(json!({"id": id, "type": "function", "function": {"name": name, "arguments": input.to_string()}}));
            }
            "tool_result" if role == "user" => {
                let Some(id) = b.get("tool_use_id").and_then(Value::as_str) else {
                    return Err(bad(at("tool_use_id"), format!("{}: Field required", at("tool_use_id"))));
                };
                let mut text = match b.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(inner)) => {
                        let mut t = String::new();
                        for (k, c) in inner.iter().enumerate() {
                            match (c.get("type").and_then(Value::as_str), c.get("text").and_then(Value::as_str)) {
                                (Some("text"), Some(s)) => {
                                    if !t.is_empty() {
                                        t.push('\n');
                                    }
                                    t.push_str(s);
                                }
                                (Some(other), _) => note(untranslatable(&format!("A `{other}` block inside a tool result"), at(&format!("content.{k}")))),
                                (None, _) => return Err(bad(at(&format!("content.{k}.type")), "Field required")),
                            }
                        }
                        t
                    }
                    Some(_) => return Err(bad(at("content"), format!("{}: Input should be a valid string or list", at("content")))),
                };
                if b.get("is_error").and_then(Value::as_bool) == Some(true) {
                    text.insert_str(0, "Error: ");
                }
                messages.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
            }
            "tool_use" | "tool_result" => {
                return Err(bad(at("type"), format!("{}: a `{kind}` block belongs in a{} turn", at("type"), if kind == "tool_use" { "n assistant" } else { " user" })))
            }
            // Earlier turns' thinking: only Anthropic takes it back (signed); dropped elsewhere.
            "thinking" | "redacted_thinking" => {}
            other => note(untranslatable(&format!("A `{other}` content block"), at("type"))),
        }
    }
    if role == "assistant" {
        let mut m = Map::new();
        m.insert("role".into(), json!("assistant"));
        let text: Vec<&str> = parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect();
        m.insert("content".into(), if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { Value::String(text.concat()) });
        if !tool_calls.is_empty() {
            m.insert("tool_calls".into(), Value::Array(tool_calls));
        }
        messages.push(Value::Object(m));
    } else if !parts.is_empty() {
        messages.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

fn image_part(source: Option<&Value>, at: &str) -> Result<Value, ApiError> {
    let Some(src) = source else {
        return Err(bad(at, format!("{at}: Field required")));
    };
    let url = match src.get("type").and_then(Value::as_str) {
        Some("base64") => match (src.get("media_type").and_then(Value::as_str), src.get("data").and_then(Value::as_str)) {
            (Some(mt), Some(data)) => format!("data:{mt};base64,{data}"),
            _ => return Err(bad(at, format!("{at}: a base64 image source needs `media_type` and `data`"))),
        },
        Some("url") => match src.get("url").and_then(Value::as_str) {
            Some(u) => u.to_string(),
            None => return Err(bad(format!("{at}.url"), format!("{at}.url: Field required"))),
        },
        _ => return Err(bad(format!("{at}.type"), format!("{at}.type: Input should be 'base64' or 'url'"))),
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

// =============================================================================================
// count_tokens
// =============================================================================================

/// The body of a `count_tokens` answer.
pub fn count_tokens_json(input_tokens: u64) -> Vec<u8> {
    format!("{{\"input_tokens\":{input_tokens}}}").into_bytes()
}

// =============================================================================================
// Errors
// =============================================================================================

/// Anthropic's error `type` for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 | 405 | 409 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

/// `{"type":"error","error":{"type":…,"message":…}}` for an error.
pub fn error_json(e: &ApiError) -> Vec<u8> {
    let env = ErrorEnvelope { kind: "error", error: ErrorBody { kind: error_type(e.status), message: &e.message } };
    serde_json::to_vec(&env).unwrap_or_else(|_| br#"{"type":"error","error":{"type":"api_error","message":"internal error"}}"#.to_vec())
}

/// The `error` event of a Messages stream.
pub fn error_event(e: &ApiError) -> Vec<u8> {
    let mut out = b"event: error\ndata: ".to_vec();
    out.extend_from_slice(&error_json(e));
    out.extend_from_slice(b"\n\n");
    out
}

// =============================================================================================
// Answer (whole)
// =============================================================================================

fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic's usage from OpenAI's: `input_tokens` without the cached and cache-written tokens.
fn usage_json(u: Option<&Usage>) -> Value {
    let u = u.cloned().unwrap_or_default();
    let (read, written) = u.prompt_tokens_details.as_ref().map_or((0, 0), |d| (d.cached_tokens, d.cache_creation_tokens));
    json!({
        "input_tokens": u.prompt_tokens.saturating_sub(read).saturating_sub(written),
        "output_tokens": u.completion_tokens,
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": written,
    })
}

fn message_id(id: &str) -> String {
    if id.starts_with("msg_") {
        id.to_string()
    } else {
        format!("msg_{id}")
    }
}

/// A whole `chat.completion` → a Messages `message`.
pub fn answer_json(canonical: &[u8]) -> Result<Vec<u8>, ApiError> {
    let v: Value = serde_json::from_slice(canonical)
        .map_err(|e| ApiError::gateway(502, format!("The provider's answer could not be read: {e}.")))?;
    let choice = v.get("choices").and_then(Value::as_array).and_then(|c| c.first()).cloned().unwrap_or(Value::Null);
    let msg = choice.get("message").cloned().unwrap_or(Value::Null);
    let mut content = Vec::new();
    if let Some(r) = msg.get("reasoning_content").and_then(Value::as_str).filter(|r| !r.is_empty()) {
        content.push(json!({"type": "thinking", "thinking": r, "signature": ""}));
    }
    if let Some(t) = msg.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": t}));
    } else if let Some(r) = msg.get("refusal").and_then(Value::as_str).filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": r}));
    }
    for call in msg.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
        let f = call.get("function");
        let args = f.and_then(|f| f.get("arguments")).and_then(Value::as_str).unwrap_or("{}");
        content.push(json!({
            "type": "tool_use",
            "id": call.get("id").and_then(Value::as_str).unwrap_or_default(),
            "name": f.and_then(|f| f.get("name")).and_then(Value::as_str).unwrap_or_default(),
            "input": tool_input(args),
        }));
    }
    let usage: Option<Usage> = v.get("usage").and_then(|u| serde_json::from_value(u.clone()).ok());
    let out = json!({
        "id": message_id(v.get("id").and_then(Value::as_str).unwrap_or("gateway")),
        "type": "message",
        "role": "assistant",
        "model": v.get("model").and_then(Value::as_str).unwrap_or_default(),
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason").and_then(Value::as_str)),
        "stop_sequence": Value::Null,
        "usage": usage_json(usage.as_ref()),
    });
    serde_json::to_vec(&out).map_err(|e| ApiError::gateway(500, format!("could not encode the answer: {e}")))
}

/// Tool arguments (JSON text) → the `input` object. Arguments that are not a JSON object (a
/// provider's broken JSON) are kept as text under `_raw`, rather than lost.
fn tool_input(args: &str) -> Value {
    match serde_json::from_str::<Value>(args) {
        Ok(v @ Value::Object(_)) => v,
        _ if args.trim().is_empty() => json!({}),
        _ => json!({"_raw": args}),
    }
}

// =============================================================================================
// Stream
// =============================================================================================

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    Thinking,
    /// A tool call: its OpenAI `index`.
    Tool(u64),
}

/// Translates one request's canonical answer (whole or streamed) into the Messages API.
pub struct AnswerWriter {
    stream: bool,
    parser: SseParser,
    started: bool,
    ended: bool,
    /// The open content block and its Messages index.
    open: Option<(Block, u32)>,
    next_index: u32,
    finish: Option<String>,
    usage: Option<Usage>,
}

impl AnswerWriter {
    pub fn new(stream: bool) -> Self {
        AnswerWriter { stream, parser: SseParser::new(), started: false, ended: false, open: None, next_index: 0, finish: None, usage: None }
    }

    fn event(out: &mut Vec<u8>, name: &str, data: &Value) {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        // Serialising a Value cannot fail.
        out.extend_from_slice(&serde_json::to_vec(data).unwrap_or_default());
        out.extend_from_slice(b"\n\n");
    }

    fn start(&mut self, id: &str, model: &str, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let msg = json!({
            "type": "message_start",
            "message": {
                "id": message_id(id), "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": Value::Null, "stop_sequence": Value::Null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }
        });
        Self::event(out, "message_start", &msg);
        Self::event(out, "ping", &json!({"type": "ping"}));
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if let Some((kind, index)) = self.open.take() {
            if kind == Block::Thinking {
                // The SDK's thinking block carries a signature; only Anthropic can sign.
                Self::event(out, "content_block_delta", &json!({"type": "content_block_delta", "index": index, "delta": {"type": "signature_delta", "signature": ""}}));
            }
            Self::event(out, "content_block_stop", &json!({"type": "content_block_stop", "index": index}));
        }
    }

    /// Makes `kind` the open block (opening it with `start` when it is not), returns its index.
    fn ensure_block(&mut self, kind: Block, start: impl FnOnce() -> Value, out: &mut Vec<u8>) -> u32 {
        if let Some((open, index)) = self.open {
            if open == kind {
                return index;
            }
        }
        self.close_block(out);
        let index = self.next_index;
        self.next_index += 1;
        Self::event(out, "content_block_start", &json!({"type": "content_block_start", "index": index, "content_block": start()}));
        self.open = Some((kind, index));
        index
    }

    fn on_event(&mut self, data: &str, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        if data == "[DONE]" {
            self.end(out);
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            self.fail(&ApiError::new(502, "api_error", "The provider's stream carried an event the gateway could not read.").with_code("invalid_upstream_event"), out);
            return;
        };
        if let Some(err) = v.get("error") {
            let status = err.get("code").and_then(Value::as_u64).and_then(|c| u16::try_from(c).ok()).filter(|c| *c >= 400).unwrap_or(500);
            let e = ApiError::from_openai_body(status, data.as_bytes());
            let e = match err.get("type").and_then(Value::as_str) {
                Some("rate_limit_error") => ApiError { status: 429, ..e },
                Some("service_unavailable_error" | "overloaded_error") => ApiError { status: 503, ..e },
                _ => e,
            };
            self.fail(&e, out);
            return;
        }
        let id = v.get("id").and_then(Value::as_str).unwrap_or("gateway").to_string();
        let model = v.get("model").and_then(Value::as_str).unwrap_or_default().to_string();
        self.start(&id, &model, out);
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            if let Ok(u) = serde_json::from_value::<Usage>(u.clone()) {
                self.usage = Some(u);
            }
        }
        let Some(choice) = v.get("choices").and_then(Value::as_array).and_then(|c| c.first()) else { return };
        if let Some(delta) = choice.get("delta") {
            if let Some(r) = delta.get("reasoning_content").and_then(Value::as_str).filter(|s| !s.is_empty()) {
                let index = self.ensure_block(Block::Thinking, || json!({"type": "thinking", "thinking": "", "signature": ""}), out);
                Self::event(out, "content_block_delta", &json!({"type": "content_block_delta", "index": index, "delta": {"type": "thinking_delta", "thinking": r}}));
            }
            if let Some(t) = delta.get("content").and_then(Value::as_str).filter(|s| !s.is_empty()) {
                let index = self.ensure_block(Block::Text, || json!({"type": "text", "text": ""}), out);
                Self::event(out, "content_block_delta", &json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": t}}));
            }
            for call in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                let n = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                let f = call.get("function");
                let id = call.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
                let name = f.and_then(|f| f.get("name")).and_then(Value::as_str).unwrap_or_default().to_string();
                let index = self.ensure_block(Block::Tool(n), || json!({"type": "tool_use", "id": id, "name": name, "input": {}}), out);
                if let Some(args) = f.and_then(|f| f.get("arguments")).and_then(Value::as_str).filter(|s| !s.is_empty()) {
                    Self::event(out, "content_block_delta", &json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": args}}));
                }
            }
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(f.to_string());
        }
    }

    /// The stream's normal end: the open block closes, then `message_delta` (stop reason and
    /// usage) and `message_stop`.
    fn end(&mut self, out: &mut Vec<u8>) {
        self.start("gateway", "", out);
        self.close_block(out);
        let mut usage = usage_json(self.usage.as_ref());
        if let Value::Object(m) = &mut usage {
            // Anthropic's message_delta carries output_tokens (and, in newer versions, the rest).
            m.retain(|_, v| !v.is_null());
        }
        Self::event(out, "message_delta", &json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(self.finish.as_deref()), "stop_sequence": Value::Null},
            "usage": usage,
        }));
        Self::event(out, "message_stop", &json!({"type": "message_stop"}));
        self.ended = true;
    }

    fn fail(&mut self, e: &ApiError, out: &mut Vec<u8>) {
        out.extend_from_slice(&error_event(e));
        self.ended = true;
    }
}

impl AnswerTranslate for AnswerWriter {
    fn answer(&mut self, canonical: &[u8]) -> Result<Vec<u8>, ApiError> {
        answer_json(canonical)
    }

    fn push(&mut self, canonical: &[u8], out: &mut Vec<u8>) {
        let _ = self.stream;
        let mut parser = std::mem::take(&mut self.parser);
        parser.push(canonical, |_, data| self.on_event(data, out));
        self.parser = parser;
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        let mut parser = std::mem::take(&mut self.parser);
        parser.finish(|_, data| self.on_event(data, out));
        self.parser = parser;
        if !self.ended {
            self.fail(&ApiError::new(502, "api_error", "The upstream stream ended before completion.").with_code("stream_truncated"), out);
        }
    }
}

/// The usage of a canonical whole answer (for tests and callers that have only the bytes).
pub fn canonical_usage(canonical: &[u8]) -> Option<Usage> {
    ResponseSummary::parse(canonical).usage
}

#[cfg(test)]
mod tests {
    //! Both directions from recordings: Anthropic's own requests, answers and streams are taken
    //! through the canonical form and back (with the Anthropic backend's translation, which has its
    //! own tests against the same recordings), and must come back as the SDK would accumulate them.
    use super::*;
    use crate::api::chat::parse_chat_request;
    use crate::providers::anthropic;
    use crate::providers::testutil::interaction;
    use crate::providers::StreamTranslate;

    const INSTRUCTIONS: &str = include_str!("../../tests/fixtures/anthropic/test_anthropic_model_instructions.yaml");
    const THINKING_STREAM: &str = include_str!("../../tests/fixtures/anthropic/test_anthropic_model_thinking_part_stream.yaml");
    const TOOL_STREAM: &str = include_str!("../../tests/fixtures/anthropic-sdk/tool_use_response.txt");
    const BASIC_STREAM: &str = include_str!("../../tests/fixtures/anthropic-sdk/basic_response.txt");

    fn canonical(v: Value) -> Value {
        let c = to_canonical(&serde_json::to_vec(&v).unwrap(), &RequestLimits::UNLIMITED).unwrap();
        assert!(c.untranslatable.is_none());
        let out: Value = serde_json::from_slice(&c.body).unwrap();
        parse_chat_request(&c.body).expect("the canonical body is a valid chat request");
        out
    }

    fn canonical_err(v: Value) -> ApiError {
        to_canonical(&serde_json::to_vec(&v).unwrap(), &RequestLimits::UNLIMITED).unwrap_err()
    }

    /// What the official SDK's `accumulate_event` builds from a Messages event stream (the same
    /// rules: blocks appended on start, deltas by index, message_delta overwrites usage counts).
    fn accumulate(stream: &[u8]) -> Value {
        let mut msg = Value::Null;
        let mut json_bufs: std::collections::HashMap<u64, String> = Default::default();
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        parser.push(stream, |name, data| events.push((name.to_string(), data.to_string())));
        parser.finish(|name, data| events.push((name.to_string(), data.to_string())));
        for (name, data) in events {
            let ev: Value = serde_json::from_str(data.trim()).unwrap_or_else(|e| panic!("event {name} is not JSON: {e}: {data}"));
            assert_eq!(ev["type"].as_str(), Some(name.as_str()), "the SSE event name is the data's type");
            match name.as_str() {
                "message_start" => msg = ev["message"].clone(),
                "content_block_start" => {
                    assert_eq!(ev["index"].as_u64().unwrap() as usize, msg["content"].as_array().unwrap().len(), "blocks are numbered in order");
                    msg["content"].as_array_mut().unwrap().push(ev["content_block"].clone());
                }
                "content_block_delta" => {
                    let i = ev["index"].as_u64().unwrap();
                    let block = &mut msg["content"][i as usize];
                    let d = &ev["delta"];
                    match d["type"].as_str().unwrap() {
                        "text_delta" => block["text"] = json!(format!("{}{}", block["text"].as_str().unwrap(), d["text"].as_str().unwrap())),
                        "thinking_delta" => block["thinking"] = json!(format!("{}{}", block["thinking"].as_str().unwrap(), d["thinking"].as_str().unwrap())),
                        "signature_delta" => block["signature"] = d["signature"].clone(),
                        "input_json_delta" => {
                            let buf = json_bufs.entry(i).or_default();
                            buf.push_str(d["partial_json"].as_str().unwrap());
                            if let Ok(v) = serde_json::from_str::<Value>(buf) {
                                block["input"] = v;
                            }
                        }
                        other => panic!("unknown delta {other}"),
                    }
                }
                "message_delta" => {
                    msg["stop_reason"] = ev["delta"]["stop_reason"].clone();
                    msg["stop_sequence"] = ev["delta"]["stop_sequence"].clone();
                    for (k, v) in ev["usage"].as_object().unwrap() {
                        if !v.is_null() {
                            msg["usage"][k] = v.clone();
                        }
                    }
                }
                "content_block_stop" | "message_stop" | "ping" => {}
                "error" => msg["error"] = ev["error"].clone(),
                other => panic!("unknown event {other}"),
            }
        }
        msg
    }

    /// An Anthropic stream → canonical (the Anthropic backend's translator) → Messages (ours),
    /// with the canonical stream fed in pieces of `step` bytes.
    fn round_trip_stream(native: &[u8], step: usize) -> Vec<u8> {
        let mut t = anthropic::StreamTranslator::new(1);
        let mut canonical = Vec::new();
        t.push(native, &mut canonical);
        StreamTranslate::finish(&mut t, &mut canonical);
        let mut w = AnswerWriter::new(true);
        let mut out = Vec::new();
        for piece in canonical.chunks(step.max(1)) {
            w.push(piece, &mut out);
        }
        w.finish(&mut out);
        out
    }

    fn content_of(m: &Value) -> Vec<Value> {
        // Only what both sides carry: the SDK-visible block fields (signatures are Anthropic's).
        m["content"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| match b["type"].as_str().unwrap() {
                "text" => json!({"type": "text", "text": b["text"]}),
                "thinking" => json!({"type": "thinking", "thinking": b["thinking"]}),
                "tool_use" => json!({"type": "tool_use", "id": b["id"], "name": b["name"], "input": b["input"]}),
                other => json!({"type": other}),
            })
            .collect()
    }

    fn assert_same_message(native: &Value, ours: &Value) {
        assert_eq!(content_of(ours), content_of(native));
        assert_eq!(ours["stop_reason"], native["stop_reason"]);
        assert_eq!(ours["model"], native["model"]);
        assert_eq!(ours["id"], native["id"]);
        for k in ["input_tokens", "output_tokens"] {
            assert_eq!(ours["usage"][k], native["usage"][k], "usage.{k}");
        }
        for k in ["cache_read_input_tokens", "cache_creation_input_tokens"] {
            assert_eq!(ours["usage"][k].as_u64().unwrap_or(0), native["usage"][k].as_u64().unwrap_or(0), "usage.{k}");
        }
        assert!(ours.get("error").is_none(), "no error event: {ours}");
    }

    #[test]
    fn recorded_streams_come_back_as_the_sdk_accumulates_them() {
        let thinking = interaction(THINKING_STREAM, 0)["response"]["body"]["string"].as_str().unwrap().to_string();
        for (name, native) in [("tool_use", TOOL_STREAM.to_string()), ("basic", BASIC_STREAM.to_string()), ("thinking", thinking)] {
            let want = accumulate(native.as_bytes());
            let whole = round_trip_stream(native.as_bytes(), usize::MAX);
            let got = accumulate(&whole);
            assert_same_message(&want, &got);
            assert!(!content_of(&got).is_empty(), "{name}");
            // The canonical stream split anywhere gives the same events.
            for step in [1, 7, 64] {
                assert_eq!(round_trip_stream(native.as_bytes(), step), whole, "{name} in pieces of {step}");
            }
            let mut names: Vec<String> = Vec::new();
            SseParser::new().push(&whole, |name, _| names.push(name.to_string()));
            assert_eq!(names.first().map(String::as_str), Some("message_start"), "{name}");
            assert_eq!(names.last().map(String::as_str), Some("message_stop"), "{name}");
            assert_eq!(names.iter().filter(|n| *n == "content_block_start").count(), names.iter().filter(|n| *n == "content_block_stop").count());
        }
    }

    #[test]
    fn recorded_tool_stream_keeps_the_tool_input() {
        let got = accumulate(&round_trip_stream(TOOL_STREAM.as_bytes(), usize::MAX));
        let tool = content_of(&got).into_iter().find(|b| b["type"] == "tool_use").expect("a tool_use block");
        assert_eq!(tool["name"], "get_weather");
        assert_eq!(tool["input"]["location"], "Paris");
        assert_eq!(got["stop_reason"], "tool_use");
    }

    #[test]
    fn recorded_whole_answer_round_trips() {
        let rec = interaction(INSTRUCTIONS, 0);
        let native = &rec["response"]["parsed_body"];
        let canonical = anthropic::response_body(&serde_json::to_vec(native).unwrap(), 1).unwrap();
        let ours: Value = serde_json::from_slice(&answer_json(&canonical).unwrap()).unwrap();
        assert_same_message(native, &ours);
        assert_eq!(ours["type"], "message");
        assert_eq!(ours["role"], "assistant");
        assert!(ours["stop_sequence"].is_null());
    }

    #[test]
    fn recorded_request_round_trips_through_the_anthropic_translation() {
        // Messages → canonical → Messages (the Anthropic backend's translation): the same request.
        let rec = interaction(INSTRUCTIONS, 0);
        let original = rec["request"]["parsed_body"].clone();
        let c = canonical(original.clone());
        assert_eq!(c["messages"][0], json!({"role": "system", "content": original["system"]}));
        let req = parse_chat_request(&serde_json::to_vec(&c).unwrap()).unwrap();
        let back: Value = serde_json::from_slice(&anthropic::request_body(&req, &anthropic::Extras::default(), "claude-3-opus-latest", 4096).unwrap()).unwrap();
        assert_eq!(back["system"], original["system"]);
        assert_eq!(back["messages"], original["messages"]);
        assert_eq!(back["max_tokens"], original["max_tokens"]);
        assert_eq!(back["model"], original["model"]);

        let rec = interaction(THINKING_STREAM, 0);
        let c = canonical(rec["request"]["parsed_body"].clone());
        assert_eq!((c["stream"].clone(), c["stream_options"]["include_usage"].clone()), (json!(true), json!(true)));
        assert_eq!(c["reasoning_effort"], "low", "a 1024-token thinking budget");
        let req = parse_chat_request(&serde_json::to_vec(&c).unwrap()).unwrap();
        let back: Value = serde_json::from_slice(&anthropic::request_body(&req, &anthropic::Extras::default(), "claude-sonnet-4-0", 4096).unwrap()).unwrap();
        assert_eq!(back["thinking"], rec["request"]["parsed_body"]["thinking"]);
    }

    #[test]
    fn every_request_feature_becomes_its_canonical_field() {
        let c = canonical(json!({
            "model": "claude-haiku", "max_tokens": 300, "temperature": 0.5, "top_p": 0.9, "top_k": 5,
            "stop_sequences": ["END"], "metadata": {"user_id": "u-1"},
            "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind.", "cache_control": {"type": "ephemeral"}}],
            "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "thinking": {"type": "enabled", "budget_tokens": 20000},
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "Look"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "22C"}]},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "boom", "is_error": true},
                    {"type": "text", "text": "Thanks"}]}
            ]
        }));
        assert_eq!(c["messages"][0], json!({"role": "system", "content": "Be brief.\nBe kind."}));
        assert_eq!(c["messages"][1]["content"][1]["image_url"]["url"], "data:image/png;base64,iVBORw0KGgo=");
        assert_eq!(c["messages"][1]["content"][2]["image_url"]["url"], "https://example.com/a.png");
        assert_eq!(c["messages"][2]["content"], "Checking.");
        assert_eq!(c["messages"][2]["tool_calls"][0]["function"]["name"], "get_weather");
        assert_eq!(serde_json::from_str::<Value>(c["messages"][2]["tool_calls"][0]["function"]["arguments"].as_str().unwrap()).unwrap(), json!({"city": "Paris"}));
        assert_eq!(c["messages"][3], json!({"role": "tool", "tool_call_id": "toolu_1", "content": "22C"}));
        assert_eq!(c["messages"][4], json!({"role": "tool", "tool_call_id": "toolu_2", "content": "Error: boom"}));
        assert_eq!(c["messages"][5]["content"], json!([{"type": "text", "text": "Thanks"}]));
        assert_eq!(c["stop"], json!(["END"]));
        assert_eq!(c["user"], "u-1");
        assert_eq!(c["max_tokens"], 300);
        assert_eq!(c["tool_choice"], "required");
        assert_eq!(c["parallel_tool_calls"], false);
        assert_eq!(c["tools"][0]["function"]["parameters"]["properties"]["city"]["type"], "string");
        assert_eq!(c["reasoning_effort"], "high");
        assert!(c.get("top_k").is_none());
        let named = canonical(json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}], "tool_choice": {"type": "tool", "name": "f"}}));
        assert_eq!(named["tool_choice"], json!({"type": "function", "function": {"name": "f"}}));
        assert_eq!(effort_for_budget(1024), "low");
        assert_eq!(effort_for_budget(8192), "medium");
        assert_eq!(effort_for_budget(8193), "high");
    }

    #[test]
    fn anthropic_only_features_are_kept_for_native_backends_and_refused_elsewhere() {
        let body = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}},
            {"type": "text", "text": "Summarise"}]}],
            "tools": [{"type": "web_search_20250305", "name": "web_search"}]});
        let c = to_canonical(&serde_json::to_vec(&body).unwrap(), &RequestLimits::UNLIMITED).unwrap();
        let e = c.untranslatable.expect("a document block cannot be translated");
        assert_eq!((e.status, e.param.as_deref(), e.code.as_deref()), (400, Some("messages.0.content.0.type"), Some("untranslatable")));
        assert!(e.message.contains("document"));
    }

    #[test]
    fn bad_requests_name_the_field() {
        let ok = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
        let with = |k: &str, v: Value| {
            let mut b = ok.clone();
            if v.is_null() {
                b.as_object_mut().unwrap().remove(k);
            } else {
                b[k] = v;
            }
            canonical_err(b)
        };
        assert_eq!(with("model", Value::Null).param.as_deref(), Some("model"));
        assert_eq!(with("messages", json!([])).param.as_deref(), Some("messages"));
        assert_eq!(with("messages", json!([{"role": "system", "content": "x"}])).param.as_deref(), Some("messages.0.role"));
        assert_eq!(with("messages", json!([{"role": "user", "content": [{"text": "x"}]}])).param.as_deref(), Some("messages.0.content.0.type"));
        assert_eq!(with("messages", json!([{"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}])).param.as_deref(), Some("messages.0.content.0.source.type"));
        assert_eq!(with("messages", json!([{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "b", "input": {}}]}])).param.as_deref(), Some("messages.0.content.0.type"));
        assert_eq!(with("max_tokens", json!(0)).param.as_deref(), Some("max_tokens"));
        assert_eq!(with("max_tokens", json!("5")).param.as_deref(), Some("max_tokens"));
        assert_eq!(with("stop_sequences", json!("END")).param.as_deref(), Some("stop_sequences"));
        assert_eq!(with("thinking", json!({"type": "enabled"})).param.as_deref(), Some("thinking.budget_tokens"));
        assert_eq!(with("tool_choice", json!({"type": "sometimes"})).param.as_deref(), Some("tool_choice.type"));
        assert_eq!(with("stream", json!("yes")).param.as_deref(), Some("stream"));
        let e = to_canonical(b"{\"model\":", &RequestLimits::UNLIMITED).unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(to_canonical(b"[1]", &RequestLimits::UNLIMITED).unwrap_err().status, 400);
    }

    #[test]
    fn errors_have_anthropics_shape_and_types() {
        for (status, kind) in [(400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"), (404, "not_found_error"),
            (413, "request_too_large"), (429, "rate_limit_error"), (500, "api_error"), (502, "api_error"), (503, "overloaded_error"), (504, "timeout_error")] {
            let v: Value = serde_json::from_slice(&error_json(&ApiError::new(status, "x", "why"))).unwrap();
            assert_eq!(v, json!({"type": "error", "error": {"type": kind, "message": "why"}}), "{status}");
        }
        let ev = String::from_utf8(error_event(&ApiError::new(529, "x", "busy"))).unwrap();
        assert!(ev.starts_with("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\""), "{ev}");
    }

    #[test]
    fn a_stream_error_or_cut_ends_with_an_error_event() {
        // An OpenAI error event mid-stream (as the backend translators write them).
        let mut w = AnswerWriter::new(true);
        let mut out = Vec::new();
        w.push(b"data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n", &mut out);
        w.push(b"data: {\"error\":{\"message\":\"upstream overloaded\",\"type\":\"service_unavailable_error\",\"param\":null,\"code\":null}}\n\n", &mut out);
        w.finish(&mut out);
        let got = accumulate(&out);
        assert_eq!(got["content"][0]["text"], "Hi");
        assert_eq!(got["error"], json!({"type": "overloaded_error", "message": "upstream overloaded"}));
        assert!(!String::from_utf8_lossy(&out).contains("message_stop"));
        // Cut without [DONE].
        let mut w = AnswerWriter::new(true);
        let mut out = Vec::new();
        w.push(b"data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n", &mut out);
        w.finish(&mut out);
        assert_eq!(accumulate(&out)["error"]["type"], "api_error");
    }

    #[test]
    fn canonical_answers_map_stop_reasons_and_usage() {
        let body = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": "Hel"}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 3, "total_tokens": 103, "prompt_tokens_details": {"cached_tokens": 60}}});
        let v: Value = serde_json::from_slice(&answer_json(&serde_json::to_vec(&body).unwrap()).unwrap()).unwrap();
        assert_eq!(v["id"], "msg_chatcmpl-1");
        assert_eq!(v["stop_reason"], "max_tokens");
        assert_eq!(v["usage"], json!({"input_tokens": 40, "output_tokens": 3, "cache_read_input_tokens": 60, "cache_creation_input_tokens": 0}));
        for (f, s) in [("stop", "end_turn"), ("tool_calls", "tool_use"), ("content_filter", "refusal")] {
            assert_eq!(stop_reason(Some(f)), s);
        }
        let tools = json!({"id": "c", "model": "m", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}, {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "not json"}}]}}]});
        let v: Value = serde_json::from_slice(&answer_json(&serde_json::to_vec(&tools).unwrap()).unwrap()).unwrap();
        assert_eq!(v["content"], json!([{"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}}, {"type": "tool_use", "id": "call_2", "name": "g", "input": {"_raw": "not json"}}]));
        assert_eq!(answer_json(b"<html>").unwrap_err().status, 502);
    }
}
