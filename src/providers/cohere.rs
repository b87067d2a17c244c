//! Cohere v2 (`POST /v2/chat`, `POST /v2/embed`, `Authorization: Bearer`) ⇄ OpenAI.
//!
//! * [`request_body`] builds the `/v2/chat` request from a parsed [`ChatRequest`].
//! * [`response_body`] turns a whole `ChatResponseV2` into a `chat.completion`.
//! * [`StreamTranslator`] turns the Cohere SSE stream (`message-start`, `content-start`,
//!   `content-delta`, `content-end`, `tool-plan-delta`, `tool-call-start/-delta/-end`,
//!   `citation-start/-end`, `message-end`, `debug`, an optional `data: [DONE]`) into
//!   `chat.completion.chunk` events, ending with a usage-only chunk and `data: [DONE]`.
//! * [`embeddings_request_body`] / [`embeddings_response_body`] do the same for `/v2/embed`.
//! * [`map_error`] / [`map_status`] turn Cohere errors (`{"message": …}`) into OpenAI-shaped ones.
//!
//! Mapping choices where OpenAI and Cohere differ:
//! * `tool_plan` (the model's plan before calling tools) and `thinking` content both surface as
//!   `reasoning_content`; an assistant turn sent back with `tool_calls` and `reasoning_content`
//!   carries it as `tool_plan` again.
//! * `tool_choice`: `none` → `NONE`, `required` → `REQUIRED`, `auto` → omitted; a named function
//!   becomes `REQUIRED` with `tools` narrowed to that function (Cohere has no named choice).
//! * `temperature` is clamped to Cohere's 0–1, `top_p` to `p`'s 0.01–0.99 and the penalties to
//!   0–1, so OpenAI defaults such as `top_p: 1` do not fail.
//! * `finish_reason` `ERROR` / `TIMEOUT` are failures, not finishes: a whole answer becomes a
//!   502 / 504 error, a stream ends with an error event.
//! * Usage counts `usage.tokens` (what the model processed), falling back to `billed_units`.
//!
//! Everything here runs on untrusted bytes inside the VM: no `unwrap`, no indexing on input.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::util::{
    too_many, MAX_STREAM_TOOL_CALLS,
    check_single_choice, object_or_none, overflow, parse_data_url, parse_upstream, s, truncated, unreadable_event,
    unsupported_part, usage, write_error_event, ChunkWriter, Count, Phase, Str,
};
use super::StreamTranslate;
use crate::api::chat::{
    ChatCompletion, ChatRequest, Choice, Content, ContentPart, Delta, FunctionCall, FunctionDelta,
    PromptTokensDetails, ResponseFormat, ResponseMessage, Role, ToolCall, ToolCallDelta, ToolChoice, Usage,
};
use crate::api::embeddings::{embeddings_response_json, EmbeddingsRequest, EncodingFormat};
use crate::api::error::{kind_for_status, ApiError};
use crate::stream::sse::{SseParser, SseStatus};

const NAME: &str = "Cohere";

// =============================================================================================
// Request
// =============================================================================================

#[derive(Serialize)]
struct CohereRequest<'a> {
    model: &'a str,
    messages: Vec<CoMessage<'a>>,
    /// Always explicit (the recorded SDK request sends `"stream": false` too).
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<CoTool<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict_tools: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<CoResponseFormat<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<Thinking>,
}

#[derive(Serialize)]
struct Thinking {
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
enum CoMessage<'a> {
    System {
        content: String,
    },
    User {
        content: UserContent<'a>,
    },
    Assistant {
        #[serde(skip_serializing_if = "Option::is_none")]
        content: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        tool_calls: Option<Vec<CoToolCall<'a>>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        tool_plan: Option<&'a str>,
    },
    Tool {
        tool_call_id: &'a str,
        content: ToolContent<'a>,
    },
}

#[derive(Serialize)]
#[serde(untagged)]
enum UserContent<'a> {
    Text(&'a str),
    Parts(Vec<CoPart<'a>>),
}

#[derive(Serialize)]
#[serde(untagged)]
enum ToolContent<'a> {
    Text(&'a str),
    Parts(Vec<CoPart<'a>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum CoPart<'a> {
    Text { text: &'a str },
    ImageUrl { image_url: CoImageUrl<'a> },
}

#[derive(Serialize)]
struct CoImageUrl<'a> {
    url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

#[derive(Serialize)]
struct CoToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: CoFunctionCall<'a>,
}

#[derive(Serialize)]
struct CoFunctionCall<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Serialize)]
struct CoTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: CoFunction<'a>,
}

#[derive(Serialize)]
struct CoFunction<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    parameters: std::borrow::Cow<'a, Value>,
}

#[derive(Serialize)]
struct CoResponseFormat<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    json_schema: Option<&'a Value>,
}

/// Builds the Cohere `/v2/chat` JSON body.
///
/// * `system` / `developer` messages stay in place as `system` messages (text only).
/// * `user` content: a string, or `text` and `image_url` parts (base64 data URLs and http(s)
///   URLs, `detail` kept when it is `auto`/`low`/`high`).
/// * `assistant`: text as a string; `tool_calls` as they are (empty arguments become `{}`);
///   `reasoning_content` next to tool calls becomes `tool_plan`. Turns with nothing are skipped.
/// * `tool`: `tool_call_id` and the content (string, or text parts).
/// * Not translated: `logit_bias`, `logprobs`, `user`, `metadata`, `parallel_tool_calls`
///   (Cohere decides), `stream_options` (the stream always reports usage).
pub fn request_body(req: &ChatRequest, model: &str) -> Result<Vec<u8>, ApiError> {
    check_single_choice(NAME, req.n)?;

    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        match m.role {
            Role::System | Role::Developer => {
                let content = match &m.content {
                    Some(c) => text_only(c, i)?,
                    None => String::new(),
                };
                messages.push(CoMessage::System { content });
            }
            Role::User => {
                let content = match &m.content {
                    None => UserContent::Text(""),
                    Some(Content::Text(t)) => UserContent::Text(t),
                    Some(Content::Parts(parts)) => UserContent::Parts(parts_to_cohere(parts, i, true)?),
                };
                messages.push(CoMessage::User { content });
            }
            Role::Assistant => {
                let text = match &m.content {
                    Some(c) => text_only(c, i)?,
                    None => String::new(),
                };
                let tool_calls = match &m.tool_calls {
                    Some(calls) if !calls.is_empty() => Some(
                        calls
                            .iter()
                            .map(|c| CoToolCall {
                                id: &c.id,
                                kind: "function",
                                function: CoFunctionCall {
                                    name: &c.function.name,
                                    arguments: if c.function.arguments.trim().is_empty() { "{}" } else { &c.function.arguments },
                                },
                            })
                            .collect::<Vec<_>>(),
                    ),
                    _ => None,
                };
                let tool_plan = if tool_calls.is_some() { m.reasoning_content.as_deref().filter(|p| !p.is_empty()) } else { None };
                let content = if text.is_empty() { None } else { Some(text) };
                if content.is_none() && tool_calls.is_none() {
                    continue;
                }
                messages.push(CoMessage::Assistant { content, tool_calls, tool_plan });
            }
            Role::Tool => {
                let Some(tool_call_id) = m.tool_call_id.as_deref() else {
                    return Err(ApiError::invalid_param(
                        format!("messages[{i}].tool_call_id"),
                        format!("Missing required parameter: 'messages[{i}].tool_call_id'."),
                    ));
                };
                let content = match &m.content {
                    None => ToolContent::Text(""),
                    Some(Content::Text(t)) => ToolContent::Text(t),
                    Some(Content::Parts(parts)) => ToolContent::Parts(parts_to_cohere(parts, i, false)?),
                };
                messages.push(CoMessage::Tool { tool_call_id, content });
            }
            Role::Function => {
                return Err(ApiError::invalid_param(
                    format!("messages[{i}].role"),
                    format!(
                        "The deprecated 'function' role (messages[{i}]) is not supported by the Cohere backend; \
                         use 'tool' messages with 'tool_call_id'."
                    ),
                ));
            }
        }
    }

    // Tools, narrowed to one function for a named tool_choice.
    let named = match &req.tool_choice {
        Some(ToolChoice::Named(n)) => Some(n.function.name.as_str()),
        _ => None,
    };
    let mut tools = None;
    let mut strict_tools = None;
    let mut tool_choice = None;
    if let Some(defs) = req.tools.as_ref().filter(|t| !t.is_empty()) {
        let mut out = Vec::with_capacity(defs.len());
        let mut all_strict = true;
        for (t, def) in defs.iter().enumerate() {
            if def.kind != "function" {
                return Err(ApiError::invalid_param(
                    format!("tools[{t}].type"),
                    format!("Tool type '{}' is not supported by the Cohere backend; only 'function' tools are.", def.kind),
                ));
            }
            if named.is_some_and(|n| n != def.function.name) {
                continue;
            }
            all_strict &= def.function.strict == Some(true);
            let parameters = match &def.function.parameters {
                Some(p) => std::borrow::Cow::Borrowed(p),
                None => std::borrow::Cow::Owned(serde_json::json!({"type": "object", "properties": {}})),
            };
            out.push(CoTool {
                kind: "function",
                function: CoFunction { name: &def.function.name, description: def.function.description.as_deref(), parameters },
            });
        }
        if let Some(n) = named {
            if out.is_empty() {
                return Err(ApiError::invalid_param(
                    "tool_choice",
                    format!("Invalid value for 'tool_choice': no function named '{n}' is in 'tools'."),
                ));
            }
        }
        tool_choice = match &req.tool_choice {
            None => None,
            Some(ToolChoice::Named(_)) => Some("REQUIRED"),
            Some(ToolChoice::Mode(mode)) => match mode.as_str() {
                "auto" => None,
                "required" => Some("REQUIRED"),
                "none" => Some("NONE"),
                other => {
                    return Err(ApiError::invalid_param(
                        "tool_choice",
                        format!("Invalid value for 'tool_choice': '{other}'. Supported values are 'none', 'auto' and 'required'."),
                    ))
                }
            },
        };
        if all_strict {
            strict_tools = Some(true);
        }
        tools = Some(out);
    }

    let response_format = match &req.response_format {
        Some(ResponseFormat::JsonObject) => Some(CoResponseFormat { kind: "json_object", json_schema: None }),
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            Some(CoResponseFormat { kind: "json_object", json_schema: json_schema.schema.as_ref() })
        }
        Some(ResponseFormat::Text) | None => None,
    };

    let stop_sequences = req.stop.as_ref().and_then(|stop| {
        let v: Vec<&str> = match stop {
            crate::api::chat::Stop::One(one) => vec![one.as_str()],
            crate::api::chat::Stop::Many(many) => many.iter().map(String::as_str).collect(),
        };
        if v.is_empty() {
            None
        } else {
            Some(v)
        }
    });

    let seed = match req.seed {
        None => None,
        Some(v) => Some(u64::try_from(v).map_err(|_| {
            ApiError::invalid_param("seed", "Invalid value for 'seed': the Cohere backend accepts only non-negative seeds.")
        })?),
    };

    let thinking = match req.reasoning_effort.as_deref() {
        Some("none") => Some(Thinking { kind: "disabled" }),
        _ => None,
    };

    let body = CohereRequest {
        model,
        messages,
        stream: req.is_stream(),
        tools,
        strict_tools,
        tool_choice,
        response_format,
        max_tokens: req.output_token_limit(),
        stop_sequences,
        temperature: req.temperature.map(|t| clamp(t, 0.0, 1.0)),
        p: req.top_p.map(|p| clamp(p, 0.01, 0.99)),
        seed,
        frequency_penalty: req.frequency_penalty.map(|v| clamp(v, 0.0, 1.0)),
        presence_penalty: req.presence_penalty.map(|v| clamp(v, 0.0, 1.0)),
        thinking,
    };
    serde_json::to_vec(&body).map_err(|e| ApiError::gateway(500, format!("could not serialise the Cohere request: {e}")))
}

fn clamp(v: f64, lo: f64, hi: f64) -> f64 {
    if v.is_nan() {
        lo
    } else {
        v.clamp(lo, hi)
    }
}

/// Text of a system / assistant content; images there are a 400.
fn text_only(c: &Content, i: usize) -> Result<String, ApiError> {
    if let Content::Parts(parts) = c {
        for (j, p) in parts.iter().enumerate() {
            match p {
                ContentPart::Text { .. } | ContentPart::Refusal { .. } => {}
                ContentPart::ImageUrl { .. } => return Err(unsupported_part(NAME, i, j, "image_url")),
                ContentPart::InputAudio { .. } => return Err(unsupported_part(NAME, i, j, "input_audio")),
                ContentPart::File { .. } => return Err(unsupported_part(NAME, i, j, "file")),
            }
        }
        let mut out = String::new();
        for p in parts {
            if let ContentPart::Text { text } | ContentPart::Refusal { refusal: text } = p {
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(text);
            }
        }
        return Ok(out);
    }
    Ok(c.joined_text())
}

fn parts_to_cohere(parts: &[ContentPart], i: usize, images: bool) -> Result<Vec<CoPart<'_>>, ApiError> {
    let mut out = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        match part {
            ContentPart::Text { text } | ContentPart::Refusal { refusal: text } => out.push(CoPart::Text { text }),
            ContentPart::ImageUrl { image_url } if images => {
                let url = image_url.url.as_str();
                let bad = |why: &str| {
                    ApiError::invalid_param(
                        format!("messages[{i}].content[{j}].image_url.url"),
                        format!("Invalid image URL in messages[{i}].content[{j}]: {why}"),
                    )
                };
                match parse_data_url(url) {
                    Ok(Some(_)) => {}
                    Ok(None) if super::util::is_http_url(url) => {}
                    Ok(None) => return Err(bad("expected an http(s) URL or a base64 data URL.")),
                    Err(why) => return Err(bad(why)),
                }
                let detail = image_url.detail.as_deref().filter(|d| matches!(*d, "auto" | "low" | "high"));
                out.push(CoPart::ImageUrl { image_url: CoImageUrl { url, detail } });
            }
            ContentPart::ImageUrl { .. } => return Err(unsupported_part(NAME, i, j, "image_url")),
            ContentPart::InputAudio { .. } => return Err(unsupported_part(NAME, i, j, "input_audio")),
            ContentPart::File { .. } => return Err(unsupported_part(NAME, i, j, "file")),
        }
    }
    Ok(out)
}

// =============================================================================================
// Whole response
// =============================================================================================

#[derive(Deserialize)]
struct CoResponse {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    message: Option<CoRespMessage>,
    #[serde(default)]
    usage: Option<CoUsage>,
}

#[derive(Deserialize, Default)]
struct CoRespMessage {
    #[serde(default)]
    content: Option<RespContent>,
    #[serde(default)]
    tool_calls: Option<Vec<CoRespToolCall>>,
    #[serde(default)]
    tool_plan: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RespContent {
    Text(String),
    Parts(Vec<CoRespPart>),
}

#[derive(Deserialize)]
struct CoRespPart {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thinking: Option<String>,
}

#[derive(Deserialize)]
struct CoRespToolCall {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<CoRespFunction>,
}

#[derive(Deserialize)]
struct CoRespFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<Value>,
}

/// Cohere usage; every count is a JSON `number` (sometimes `37.0`).
#[derive(Deserialize, Default, Clone, Copy, Debug)]
struct CoUsage {
    #[serde(default)]
    billed_units: Option<Units>,
    #[serde(default)]
    tokens: Option<Units>,
    #[serde(default)]
    cached_tokens: Option<Count>,
}

#[derive(Deserialize, Default, Clone, Copy, Debug)]
struct Units {
    #[serde(default)]
    input_tokens: Option<Count>,
    #[serde(default)]
    output_tokens: Option<Count>,
}

impl CoUsage {
    fn to_openai(self) -> Usage {
        let pick = |f: fn(&Units) -> Option<Count>| {
            self.tokens.as_ref().and_then(f).or_else(|| self.billed_units.as_ref().and_then(f)).map_or(0, Count::get)
        };
        let mut u = usage(pick(|u| u.input_tokens), pick(|u| u.output_tokens));
        if let Some(cached) = self.cached_tokens {
            u.prompt_tokens_details = Some(PromptTokensDetails { cached_tokens: cached.get(), cache_creation_tokens: 0 });
        }
        u
    }
}

/// What a Cohere `finish_reason` means for the client.
enum Finish {
    Reason(&'static str),
    Failed(ApiError),
}

fn finish(reason: Option<&str>, error: Option<&str>, had_tool_calls: bool) -> Finish {
    match reason {
        Some("COMPLETE") | Some("STOP_SEQUENCE") => Finish::Reason("stop"),
        Some("MAX_TOKENS") => Finish::Reason("length"),
        Some("TOOL_CALL") => Finish::Reason("tool_calls"),
        Some("ERROR") => Finish::Failed(
            ApiError::new(
                502,
                "api_error",
                match error.filter(|e| !e.is_empty()) {
                    Some(e) => format!("The Cohere backend failed to generate a response: {e}"),
                    None => "The Cohere backend failed to generate a response.".to_string(),
                },
            )
            .with_code("upstream_generation_error"),
        ),
        Some("TIMEOUT") => Finish::Failed(
            ApiError::new(504, "api_error", "The Cohere backend stopped the generation: it exceeded its time limit.")
                .with_code("upstream_timeout"),
        ),
        _ if had_tool_calls => Finish::Reason("tool_calls"),
        _ => Finish::Reason("stop"),
    }
}

/// Translates a whole (non-stream) Cohere `ChatResponseV2` body into an OpenAI `chat.completion`.
/// `model` names the answer (Cohere's does not).
pub fn response_body(body: &[u8], model: &str, created: u64) -> Result<Vec<u8>, ApiError> {
    response_answer(body, model, created).map(|a| a.body)
}

/// [`response_body`], with the summary the gateway accounts with (see [`super::WholeAnswer`]).
pub fn response_answer(body: &[u8], model: &str, created: u64) -> Result<super::WholeAnswer, ApiError> {
    let resp: CoResponse = parse_upstream(NAME, body)?;
    let msg = resp.message.unwrap_or_default();

    let mut text: Option<String> = None;
    let mut reasoning = String::new();
    match msg.content {
        Some(RespContent::Text(t)) => text = Some(t),
        Some(RespContent::Parts(parts)) => {
            for p in parts {
                match p.kind.as_deref() {
                    Some("text") | None => text.get_or_insert_with(String::new).push_str(p.text.as_deref().unwrap_or("")),
                    Some("thinking") => reasoning.push_str(p.thinking.as_deref().unwrap_or("")),
                    _ => {}
                }
            }
        }
        None => {}
    }
    if let Some(plan) = msg.tool_plan.as_deref().filter(|p| !p.is_empty()) {
        if !reasoning.is_empty() {
            reasoning.push_str("\n\n");
        }
        reasoning.push_str(plan);
    }
    let tool_calls: Vec<ToolCall> = msg
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(k, c)| {
            let (name, arguments) = match c.function {
                Some(f) => (f.name.unwrap_or_default(), arguments_text(f.arguments)),
                None => (String::new(), "{}".to_string()),
            };
            ToolCall {
                id: c.id.filter(|i| !i.is_empty()).unwrap_or_else(|| format!("call_{k}")),
                kind: "function".to_string(),
                function: FunctionCall { name, arguments },
            }
        })
        .collect();

    let reason = match finish(resp.finish_reason.as_deref(), None, !tool_calls.is_empty()) {
        Finish::Reason(r) => r,
        Finish::Failed(e) => return Err(e),
    };
    let content = match text {
        Some(t) => Some(t),
        None if tool_calls.is_empty() => Some(String::new()),
        None => None,
    };
    let completion = ChatCompletion {
        id: resp.id.filter(|i| !i.is_empty()).unwrap_or_else(|| format!("chatcmpl-{created}")),
        object: "chat.completion",
        created,
        model: model.to_string(),
        choices: vec![Choice {
            index: 0,
            message: ResponseMessage {
                role: "assistant",
                content,
                reasoning_content: if reasoning.is_empty() { None } else { Some(reasoning) },
                tool_calls,
                refusal: None,
            },
            finish_reason: Some(reason.to_string()),
            logprobs: None,
        }],
        usage: Some(resp.usage.unwrap_or_default().to_openai()),
        system_fingerprint: None,
    };
    super::WholeAnswer::of(completion)
}

/// Tool-call arguments as OpenAI's JSON text (Cohere sends a string; an object is re-encoded).
fn arguments_text(v: Option<Value>) -> String {
    match v {
        Some(Value::String(s)) => s,
        None | Some(Value::Null) => "{}".to_string(),
        Some(other) => other.to_string(),
    }
}

// =============================================================================================
// Embeddings
// =============================================================================================

#[derive(Serialize)]
struct EmbedRequest<'a> {
    model: &'a str,
    texts: Vec<&'a str>,
    input_type: &'static str,
    embedding_types: [&'static str; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    output_dimension: Option<u32>,
}

/// Builds the `/v2/embed` body: texts embedded as `search_document`, floats requested (a client
/// asking for base64 gets the floats encoded by the gateway). Token-id input is a 400.
pub fn embeddings_request_body(req: &EmbeddingsRequest, model: &str) -> Result<Vec<u8>, ApiError> {
    let texts = req.input.texts().ok_or_else(|| {
        ApiError::invalid_param("input", "The Cohere backend embeds text only: token-id input is not supported.")
            .with_code("unsupported_capability")
    })?;
    let body = EmbedRequest { model, texts, input_type: "search_document", embedding_types: ["float"], output_dimension: req.dimensions };
    serde_json::to_vec(&body).map_err(|e| ApiError::gateway(500, format!("could not serialise the Cohere request: {e}")))
}

#[derive(Deserialize)]
struct EmbedResponse {
    embeddings: EmbedVectors,
    #[serde(default)]
    meta: Option<EmbedMeta>,
}

/// `embeddings_by_type` (`{"float": [[…]]}`) or the older `embeddings_floats` (`[[…]]`).
#[derive(Deserialize)]
#[serde(untagged)]
enum EmbedVectors {
    ByType {
        #[serde(default)]
        float: Option<Vec<Vec<f32>>>,
    },
    Floats(Vec<Vec<f32>>),
}

#[derive(Deserialize)]
struct EmbedMeta {
    #[serde(default)]
    billed_units: Option<Units>,
}

/// Translates a `/v2/embed` answer into the OpenAI embeddings list.
pub fn embeddings_response_body(body: &[u8], model: &str, encoding: EncodingFormat) -> Result<Vec<u8>, ApiError> {
    let resp: EmbedResponse = parse_upstream(NAME, body)?;
    let vectors = match resp.embeddings {
        EmbedVectors::Floats(v) => v,
        EmbedVectors::ByType { float: Some(v) } => v,
        EmbedVectors::ByType { float: None } => {
            return Err(ApiError::gateway(502, "The Cohere backend returned no float embeddings."));
        }
    };
    let prompt_tokens = resp.meta.and_then(|m| m.billed_units).and_then(|u| u.input_tokens).map_or(0, Count::get);
    embeddings_response_json(model, vectors, encoding, prompt_tokens)
}

// =============================================================================================
// Errors
// =============================================================================================

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: Option<Value>,
}

/// Status the client (and Envoy's retry policy) sees: Cohere's 498 (a deny-listed token in the
/// request or answer) is a 400; everything else, 429 and 5xx included, stays as it is.
pub fn map_status(status: u16) -> u16 {
    match status {
        498 => 400,
        s => s,
    }
}

/// A Cohere error answer (`{"id":…, "message":…}`) as an OpenAI error body.
pub fn map_error(status: u16, body: &[u8]) -> Vec<u8> {
    let mapped = map_status(status);
    let message = match serde_json::from_slice::<ErrorBody>(body).ok().and_then(|b| b.message) {
        Some(Value::String(m)) if !m.is_empty() => m,
        Some(other @ (Value::Object(_) | Value::Array(_))) => other.to_string(),
        _ => {
            let text = String::from_utf8_lossy(body);
            let snippet: String = text.trim().chars().take(500).collect();
            if snippet.is_empty() {
                format!("The Cohere backend returned HTTP {status}.")
            } else {
                format!("The Cohere backend returned HTTP {status}: {snippet}")
            }
        }
    };
    let code = match status {
        429 => Some("rate_limit_exceeded"),
        498 => Some("invalid_token"),
        499 => Some("request_cancelled"),
        _ => None,
    };
    let e = ApiError::new(mapped, kind_for_status(mapped), message);
    match code {
        Some(c) => e.with_code(c),
        None => e,
    }
    .to_json()
}

// =============================================================================================
// Streaming
// =============================================================================================

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(default)]
    index: Option<u32>,
    #[serde(borrow, default, deserialize_with = "object_or_none")]
    delta: Option<EvDelta<'a>>,
}

#[derive(Deserialize)]
struct EvDelta<'a> {
    #[serde(borrow, default, deserialize_with = "object_or_none")]
    message: Option<EvMessage<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Str<'a>>,
    #[serde(default, deserialize_with = "object_or_none")]
    usage: Option<CoUsage>,
    #[serde(borrow, default)]
    error: Option<Str<'a>>,
}

/// `delta.message`: `content` and `tool_calls` are objects in content / tool-call events but
/// arrays in `message-start`, hence the lenient parsing.
#[derive(Deserialize)]
struct EvMessage<'a> {
    #[serde(borrow, default, deserialize_with = "object_or_none")]
    content: Option<EvContent<'a>>,
    #[serde(borrow, default)]
    tool_plan: Option<Str<'a>>,
    #[serde(borrow, default, deserialize_with = "object_or_none")]
    tool_calls: Option<EvToolCall<'a>>,
}

#[derive(Deserialize)]
struct EvContent<'a> {
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
    #[serde(borrow, default)]
    thinking: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct EvToolCall<'a> {
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default, deserialize_with = "object_or_none")]
    function: Option<EvFunction<'a>>,
}

#[derive(Deserialize)]
struct EvFunction<'a> {
    #[serde(borrow, default)]
    name: Option<Str<'a>>,
    #[serde(default)]
    arguments: Option<Value>,
}

/// Incremental stream translator: Cohere v2 SSE in, OpenAI `chat.completion.chunk` SSE out.
///
/// Output: a first chunk with `delta: {role: "assistant", content: ""}`, one chunk per text /
/// thinking / tool-plan / tool-argument delta, a chunk per tool call start (id, name, arguments
/// so far), a finishing chunk with `finish_reason`, a usage-only chunk (`choices: []`) and
/// `data: [DONE]`. A `message-end` with `ERROR` / `TIMEOUT`, an unreadable event or a stream
/// that ends before `message-end` produces one `data: {"error":{…}}` event and nothing after it.
pub struct StreamTranslator {
    parser: SseParser,
    state: State,
}

struct State {
    w: ChunkWriter,
    phase: Phase,
    started: bool,
    /// (Cohere tool-call index, OpenAI tool-call index) for each tool call started.
    tool_index: Vec<(u32, u32)>,
    usage: Option<Usage>,
}

impl StreamTranslator {
    pub fn new(created: u64, model: &str) -> Self {
        StreamTranslator {
            parser: SseParser::new(),
            state: State {
                w: ChunkWriter { id: String::new(), model: model.to_string(), created },
                phase: Phase::Open,
                started: false,
                tool_index: Vec::new(),
                usage: None,
            },
        }
    }

    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if self.state.phase != Phase::Open {
            return;
        }
        let StreamTranslator { parser, state } = self;
        if parser.push(chunk, |name, data| state.on_event(name, data, out)) == SseStatus::Overflow {
            state.fail(out, overflow());
        }
    }

    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.state.phase != Phase::Open {
            return;
        }
        let StreamTranslator { parser, state } = self;
        parser.finish(|name, data| state.on_event(name, data, out));
        if state.phase == Phase::Open {
            state.fail(out, truncated());
        }
    }

    pub fn usage(&self) -> Option<&Usage> {
        self.state.usage.as_ref()
    }
}

impl StreamTranslate for StreamTranslator {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        StreamTranslator::push(self, chunk, out)
    }
    fn finish(&mut self, out: &mut Vec<u8>) {
        StreamTranslator::finish(self, out)
    }
    fn usage(&self) -> Option<&Usage> {
        StreamTranslator::usage(self)
    }
}

impl State {
    fn on_event(&mut self, name: &str, data: &str, out: &mut Vec<u8>) {
        if self.phase != Phase::Open {
            return;
        }
        if data.trim() == "[DONE]" {
            // Only meaningful after message-end (which already ended the stream).
            return;
        }
        let ev: Event<'_> = match serde_json::from_str(data) {
            Ok(ev) => ev,
            Err(e) => {
                self.fail(out, unreadable_event(NAME, &e));
                return;
            }
        };
        let kind = s(&ev.kind).unwrap_or(name);
        let message = ev.delta.as_ref().and_then(|d| d.message.as_ref());
        match kind {
            "message-start" => {
                if let Some(id) = s(&ev.id).filter(|i| !i.is_empty()) {
                    if self.w.id.is_empty() {
                        self.w.id.push_str(id);
                    }
                }
                self.start(out);
            }
            "content-start" | "content-delta" => {
                let Some(c) = message.and_then(|m| m.content.as_ref()) else { return };
                if let Some(t) = s(&c.thinking).filter(|t| !t.is_empty()) {
                    self.start(out);
                    self.w.chunk(out, Delta { reasoning_content: Some(t), ..Delta::default() }, None);
                }
                if let Some(t) = s(&c.text).filter(|t| !t.is_empty()) {
                    self.start(out);
                    self.w.chunk(out, Delta { content: Some(t), ..Delta::default() }, None);
                }
            }
            "tool-plan-delta" => {
                if let Some(t) = message.and_then(|m| s(&m.tool_plan)).filter(|t| !t.is_empty()) {
                    self.start(out);
                    self.w.chunk(out, Delta { reasoning_content: Some(t), ..Delta::default() }, None);
                }
            }
            "tool-call-start" => {
                if self.tool_index.len() >= MAX_STREAM_TOOL_CALLS {
                    self.fail(out, too_many("tool calls", MAX_STREAM_TOOL_CALLS));
                    return;
                }
                let call = message.and_then(|m| m.tool_calls.as_ref());
                let k = u32::try_from(self.tool_index.len()).unwrap_or(u32::MAX);
                self.tool_index.push((ev.index.unwrap_or(k), k));
                let fallback_id = format!("call_{k}");
                let id = call.and_then(|c| s(&c.id)).filter(|i| !i.is_empty()).unwrap_or(&fallback_id);
                let f = call.and_then(|c| c.function.as_ref());
                let name = f.and_then(|f| s(&f.name)).unwrap_or("");
                let initial = f.map(|f| arguments_fragment(&f.arguments)).unwrap_or_default();
                self.start(out);
                let delta = ToolCallDelta {
                    index: k,
                    id: Some(id),
                    kind: Some("function"),
                    function: FunctionDelta { name: Some(name), arguments: Some(&initial) },
                };
                self.w.chunk(out, Delta { tool_calls: Some(vec![delta]), ..Delta::default() }, None);
            }
            "tool-call-delta" => {
                let Some(f) = message.and_then(|m| m.tool_calls.as_ref()).and_then(|c| c.function.as_ref()) else { return };
                let part = arguments_fragment(&f.arguments);
                if part.is_empty() {
                    return;
                }
                // The OpenAI index of this Cohere index; without an index, the latest call.
                let k = match ev.index {
                    Some(i) => self.tool_index.iter().rev().find(|(c, _)| *c == i).map(|(_, k)| *k),
                    None => self.tool_index.last().map(|(_, k)| *k),
                };
                let Some(k) = k else { return };
                let delta = ToolCallDelta { index: k, id: None, kind: None, function: FunctionDelta { name: None, arguments: Some(&part) } };
                self.w.chunk(out, Delta { tool_calls: Some(vec![delta]), ..Delta::default() }, None);
            }
            "message-end" => {
                let d = ev.delta.as_ref();
                if let Some(u) = d.and_then(|d| d.usage) {
                    self.usage = Some(u.to_openai());
                }
                let reason = d.and_then(|d| s(&d.finish_reason));
                let error = d.and_then(|d| s(&d.error));
                match finish(reason, error, !self.tool_index.is_empty()) {
                    Finish::Failed(e) => self.fail(out, e),
                    Finish::Reason(r) => {
                        self.start(out);
                        let usage = self.usage.get_or_insert_with(Usage::default);
                        self.w.finish(out, r, usage);
                        self.phase = Phase::Done;
                    }
                }
            }
            // content-end, tool-call-end, citation-start/-end, debug and later additions.
            _ => {}
        }
    }

    /// The first chunk (`role: assistant`), once; an id is made up if `message-start` had none.
    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        if self.w.id.is_empty() {
            self.w.id = format!("chatcmpl-{}", self.w.created);
        }
        self.w.chunk(out, Delta { role: Some("assistant"), content: Some(""), ..Delta::default() }, None);
    }

    fn fail(&mut self, out: &mut Vec<u8>, err: ApiError) {
        write_error_event(out, &err);
        self.phase = Phase::Failed;
    }
}

/// A streamed arguments fragment: a string as it is, anything else (not seen) as JSON text.
fn arguments_fragment(v: &Option<Value>) -> std::borrow::Cow<'_, str> {
    match v {
        Some(Value::String(s)) => std::borrow::Cow::Borrowed(s.as_str()),
        None | Some(Value::Null) => std::borrow::Cow::Borrowed(""),
        Some(other) => std::borrow::Cow::Owned(other.to_string()),
    }
}

// =============================================================================================
// Tests
// =============================================================================================

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::chat::parse_chat_request;
    use crate::api::embeddings::parse_embeddings_request;
    use crate::providers::testutil::{
        assert_split_invariant, assert_terminates, error_json, events, interaction, payloads, run_chunks, summarize, CREATED,
    };
    use serde_json::json;

    #[test]
    fn tool_calls_per_stream_are_capped() {
        let head = b"event: message-start\ndata: {\"type\":\"message-start\",\"id\":\"x\",\"delta\":{\"message\":{\"role\":\"assistant\"}}}\n\n";
        let call = |i: usize| {
            let c = json!({"type":"tool-call-start","index":i,"delta":{"message":{"tool_calls":{"id":format!("c_{i}"),"type":"function","function":{"name":"f","arguments":""}}}}});
            format!("event: tool-call-start\ndata: {c}\n\n").into_bytes()
        };
        crate::providers::testutil::assert_tool_calls_capped(&|| Box::new(StreamTranslator::new(CREATED, "m")), head, &call);
    }

    const SIMPLE: &str = include_str!("../../tests/fixtures/cohere/test_request_simple_success_with_vcr.yaml");
    const TOOL_DOCS: &str = include_str!("../../tests/fixtures/cohere/tool-use-streaming.mdx");

    /// Request properties of `POST /v2/chat` in cohere-openapi.yaml (line ~1966).
    const SPEC_CHAT_PROPERTIES: &[&str] = &[
        "stream", "model", "messages", "tools", "strict_tools", "documents", "citation_options", "response_format",
        "safety_mode", "max_tokens", "stop_sequences", "temperature", "seed", "frequency_penalty", "presence_penalty",
        "k", "p", "logprobs", "tool_choice", "thinking", "priority",
    ];

    fn chat(v: Value) -> ChatRequest {
        parse_chat_request(v.to_string().as_bytes()).expect("valid chat request")
    }

    fn translate(v: Value) -> Value {
        let body = request_body(&chat(v), "command-test").expect("translates");
        let out: Value = serde_json::from_slice(&body).expect("request is JSON");
        for k in out.as_object().unwrap().keys() {
            assert!(SPEC_CHAT_PROPERTIES.contains(&k.as_str()), "`{k}` is not a /v2/chat property");
        }
        out
    }

    fn translate_err(v: Value) -> ApiError {
        request_body(&chat(v), "command-test").expect_err("must be rejected")
    }

    fn make() -> Box<dyn StreamTranslate> {
        Box::new(StreamTranslator::new(CREATED, "command-a"))
    }

    // ------------------------------------------------------------------ docs sample streams

    /// Un-escapes a Python string literal body (`\n`, `\\`, `\'`, `\"`).
    fn py_unescape(s: &str) -> String {
        let mut out = String::new();
        let mut it = s.chars();
        while let Some(c) = it.next() {
            if c == '\\' {
                match it.next() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some(other) => out.push(other),
                    None => {}
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    /// The quoted value after `key=` in a Python repr line.
    fn py_field(line: &str, key: &str) -> Option<String> {
        let at = line.find(&format!("{key}="))? + key.len() + 1;
        let rest = &line[at..];
        let quote = rest.chars().next()?;
        if quote != '\'' && quote != '"' {
            // a number or None
            let end = rest.find([',', ')', ' ']).unwrap_or(rest.len());
            return Some(rest[..end].to_string());
        }
        let body = &rest[1..];
        let mut end = 0;
        let mut escaped = false;
        for (i, c) in body.char_indices() {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == quote {
                end = i;
                break;
            }
        }
        Some(py_unescape(&body[..end]))
    }

    fn num(line: &str, key: &str) -> f64 {
        py_field(line, key).unwrap().parse().unwrap()
    }

    /// Rebuilds the wire JSON of the `n`-th "Example stream" in the Cohere tool-use streaming docs
    /// (written there as Python SDK reprs, one event per line), as `(type, data)` pairs.
    fn docs_stream(n: usize) -> Vec<(String, Value)> {
        let block = TOOL_DOCS.split("```mdx wordWrap").nth(n + 1).expect("example block");
        let block = block.split("```").next().unwrap();
        let mut evs = Vec::new();
        for line in block.lines().map(str::trim).filter(|l| l.starts_with("type='")) {
            let kind = py_field(line, "type").unwrap();
            let index: Option<u64> = py_field(line, "index").map(|i| i.parse().unwrap());
            let v = match kind.as_str() {
                "message-start" => json!({"id": py_field(line, "id").unwrap(), "type": kind,
                    "delta":{"message":{"role":"assistant","content":[],"tool_plan":"","tool_calls":[],"citations":[]}}}),
                "tool-plan-delta" => json!({"type": kind, "delta":{"message":{"tool_plan": py_field(line, "tool_plan").unwrap()}}}),
                "tool-call-start" => json!({"type": kind, "index": index, "delta":{"message":{"tool_calls":{
                    "id": py_field(line, "id").unwrap(), "type":"function",
                    "function":{"name": py_field(line, "name").unwrap(), "arguments": py_field(line, "arguments").unwrap()}}}}}),
                "tool-call-delta" => json!({"type": kind, "index": index, "delta":{"message":{"tool_calls":{
                    "function":{"arguments": py_field(line, "arguments").unwrap()}}}}}),
                "content-start" => json!({"type": kind, "index": index, "delta":{"message":{"content":{"type":"text","text": py_field(line, "text").unwrap()}}}}),
                "content-delta" => json!({"type": kind, "index": index, "delta":{"message":{"content":{"text": py_field(line, "text").unwrap()}}}}),
                "citation-start" => json!({"type": kind, "index": index, "delta":{"message":{"citations":{
                    "start": num(line, "start"), "end": num(line, "end"), "text": py_field(line, "text").unwrap(),
                    "sources":[{"type":"tool","id": py_field(line, "id").unwrap(),"tool_output":{}}], "type":"TEXT_CONTENT"}}}}),
                "message-end" => {
                    let billed = &line[line.find("billed_units").unwrap()..];
                    let tokens = &line[line.find("tokens=UsageTokens").unwrap()..];
                    json!({"type": kind, "delta":{"finish_reason": py_field(line, "finish_reason").unwrap(), "usage":{
                        "billed_units":{"input_tokens": num(billed, "input_tokens"), "output_tokens": num(billed, "output_tokens")},
                        "tokens":{"input_tokens": num(tokens, "input_tokens"), "output_tokens": num(tokens, "output_tokens")}}}})
                }
                _ => json!({"type": kind, "index": index}),
            };
            evs.push((kind, v));
        }
        assert!(evs.len() > 5, "docs example {n} parsed");
        evs
    }

    /// SSE as Cohere sends it: `event:` + `data:` per event, optionally ending with `data: [DONE]`.
    fn sse(evs: &[(String, Value)], done: bool) -> String {
        let mut s = String::new();
        for (kind, data) in evs {
            s.push_str(&format!("event: {kind}\ndata: {data}\n\n"));
        }
        if done {
            s.push_str("data: [DONE]\n\n");
        }
        s
    }

    fn ev(kind: &str, v: Value) -> (String, Value) {
        (kind.to_string(), v)
    }

    fn start_ev(id: &str) -> (String, Value) {
        ev("message-start", json!({"id":id,"type":"message-start","delta":{"message":{"role":"assistant","content":[],"tool_plan":"","tool_calls":[],"citations":[]}}}))
    }

    fn text_ev(t: &str) -> (String, Value) {
        ev("content-delta", json!({"type":"content-delta","index":0,"delta":{"message":{"content":{"text":t}}}}))
    }

    fn end_ev(reason: &str) -> (String, Value) {
        ev("message-end", json!({"type":"message-end","delta":{"finish_reason":reason,
            "usage":{"billed_units":{"input_tokens":3,"output_tokens":2},"tokens":{"input_tokens":30,"output_tokens":4}}}}))
    }

    // ------------------------------------------------------------------------------ requests

    #[test]
    fn recorded_request_is_reproduced() {
        let rec = interaction(SIMPLE, 0);
        assert_eq!(rec["request"]["uri"], "https://api.cohere.com/v2/chat");
        let want = &rec["request"]["parsed_body"];
        let got = {
            let body = request_body(&chat(json!({"model":"alias","messages":[{"role":"user","content":"hello"}]})), "command-r7b-12-2024").unwrap();
            serde_json::from_slice::<Value>(&body).unwrap()
        };
        assert_eq!(&got, want, "exactly the recorded body, `stream: false` included");
    }

    #[test]
    fn messages_of_every_role() {
        let got = translate(json!({"model":"m","messages":[
            {"role":"system","content":"Be brief."},
            {"role":"developer","content":[{"type":"text","text":"Answer in French."},{"type":"text","text":"Politely."}]},
            {"role":"user","content":"Weather in Madrid?"},
            {"role":"assistant","content":null,"reasoning_content":"I will use get_weather.","tool_calls":[
                {"id":"get_weather_1","type":"function","function":{"name":"get_weather","arguments":"{\"location\":\"Madrid\"}"}},
                {"id":"get_weather_2","type":"function","function":{"name":"now","arguments":""}}]},
            {"role":"tool","tool_call_id":"get_weather_1","content":"{\"temperature\":\"24C\"}"},
            {"role":"tool","tool_call_id":"get_weather_2","content":[{"type":"text","text":"12:00"}]},
            {"role":"assistant","content":"Il fait 24C.","reasoning_content":"not a tool plan"},
            {"role":"assistant","content":""},
            {"role":"user","content":[{"type":"text","text":"And this?"},
                {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo=","detail":"low"}},
                {"type":"image_url","image_url":{"url":"https://example.com/cat.jpg","detail":"weird"}}]}
        ]}));
        assert_eq!(
            got["messages"],
            json!([
                {"role":"system","content":"Be brief."},
                {"role":"system","content":"Answer in French.\nPolitely."},
                {"role":"user","content":"Weather in Madrid?"},
                {"role":"assistant","tool_plan":"I will use get_weather.","tool_calls":[
                    {"id":"get_weather_1","type":"function","function":{"name":"get_weather","arguments":"{\"location\":\"Madrid\"}"}},
                    {"id":"get_weather_2","type":"function","function":{"name":"now","arguments":"{}"}}]},
                {"role":"tool","tool_call_id":"get_weather_1","content":"{\"temperature\":\"24C\"}"},
                {"role":"tool","tool_call_id":"get_weather_2","content":[{"type":"text","text":"12:00"}]},
                {"role":"assistant","content":"Il fait 24C."},
                {"role":"user","content":[{"type":"text","text":"And this?"},
                    {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo=","detail":"low"}},
                    {"type":"image_url","image_url":{"url":"https://example.com/cat.jpg"}}]}
            ])
        );
        assert_eq!(got["model"], "command-test");
        assert_eq!(got["stream"], false);
    }

    #[test]
    fn sampling_fields_are_renamed_and_clamped() {
        let got = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,
            "temperature":0.3,"top_p":0.9,"max_tokens":50,"max_completion_tokens":60,"stop":["END","\n\n"],"seed":42,
            "frequency_penalty":0.5,"presence_penalty":-1.0,"user":"u","logit_bias":{"1":2},"stream_options":{"include_usage":false}}));
        assert_eq!(got["stream"], true);
        assert_eq!(got["temperature"], 0.3);
        assert_eq!(got["p"], 0.9);
        assert_eq!(got["max_tokens"], 60, "max_completion_tokens wins");
        assert_eq!(got["stop_sequences"], json!(["END", "\n\n"]));
        assert_eq!(got["seed"], 42);
        assert_eq!(got["frequency_penalty"], 0.5);
        assert_eq!(got["presence_penalty"], 0.0);
        for k in ["top_p", "stop", "user", "logit_bias", "stream_options", "max_completion_tokens"] {
            assert!(got.get(k).is_none(), "{k}");
        }
        let edges = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":1.7,"top_p":1.0,"stop":"X"}));
        assert_eq!(edges["temperature"], 1.0);
        assert_eq!(edges["p"], 0.99);
        assert_eq!(edges["stop_sequences"], json!(["X"]));
        let low = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"top_p":0.0,"stop":[]}));
        assert_eq!(low["p"], 0.01);
        assert!(low.get("stop_sequences").is_none());
        let e = translate_err(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"seed":-1}));
        assert_eq!((e.status, e.param.as_deref()), (400, Some("seed")));
        let off = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"reasoning_effort":"none"}));
        assert_eq!(off["thinking"], json!({"type":"disabled"}));
        let on = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"reasoning_effort":"high"}));
        assert!(on.get("thinking").is_none());
    }

    #[test]
    fn tools_and_tool_choice() {
        let tools = json!([
            {"type":"function","function":{"name":"get_weather","description":"gets the weather of a given location",
             "parameters":{"type":"object","properties":{"location":{"type":"string"}},"required":["location"]}}},
            {"type":"function","function":{"name":"now"}}
        ]);
        let with = |extra: Value| {
            let mut v = json!({"model":"m","messages":[{"role":"user","content":"hi"}],"tools":tools});
            for (k, val) in extra.as_object().unwrap() {
                v[k] = val.clone();
            }
            v
        };
        let got = translate(with(json!({})));
        assert_eq!(
            got["tools"],
            json!([
                {"type":"function","function":{"name":"get_weather","description":"gets the weather of a given location",
                 "parameters":{"type":"object","properties":{"location":{"type":"string"}},"required":["location"]}}},
                {"type":"function","function":{"name":"now","parameters":{"type":"object","properties":{}}}}
            ])
        );
        assert!(got.get("tool_choice").is_none());
        assert!(got.get("strict_tools").is_none());
        assert!(translate(with(json!({"tool_choice":"auto"}))).get("tool_choice").is_none());
        assert_eq!(translate(with(json!({"tool_choice":"required"})))["tool_choice"], "REQUIRED");
        assert_eq!(translate(with(json!({"tool_choice":"none"})))["tool_choice"], "NONE");
        // A named function: REQUIRED with only that tool offered.
        let named = translate(with(json!({"tool_choice":{"type":"function","function":{"name":"now"}}})));
        assert_eq!(named["tool_choice"], "REQUIRED");
        assert_eq!(named["tools"].as_array().unwrap().len(), 1);
        assert_eq!(named["tools"][0]["function"]["name"], "now");
        let e = translate_err(with(json!({"tool_choice":{"type":"function","function":{"name":"missing"}}})));
        assert_eq!((e.status, e.param.as_deref()), (400, Some("tool_choice")));
        let e = translate_err(with(json!({"tool_choice":"sometimes"})));
        assert_eq!(e.param.as_deref(), Some("tool_choice"));
        // strict on every tool → strict_tools.
        let strict = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],
            "tools":[{"type":"function","function":{"name":"a","parameters":{"type":"object"},"strict":true}}]}));
        assert_eq!(strict["strict_tools"], true);
        // No tools: tool_choice is dropped.
        let plain = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[],"tool_choice":"required"}));
        assert!(plain.get("tools").is_none() && plain.get("tool_choice").is_none());
        let e = translate_err(json!({"model":"m","messages":[{"role":"user","content":"hi"}],
            "tools":[{"type":"code_interpreter","function":{"name":"x"}}]}));
        assert_eq!(e.param.as_deref(), Some("tools[0].type"));
    }

    #[test]
    fn response_format_maps_to_json_object() {
        let got = translate(json!({"model":"m","messages":[{"role":"user","content":"JSON please"}],"response_format":{"type":"json_object"}}));
        assert_eq!(got["response_format"], json!({"type":"json_object"}));
        let schema = json!({"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"}},"required":["name","age"]});
        let got = translate(json!({"model":"m","messages":[{"role":"user","content":"x"}],
            "response_format":{"type":"json_schema","json_schema":{"name":"person","schema":schema,"strict":true}}}));
        assert_eq!(got["response_format"], json!({"type":"json_object","json_schema":schema}));
        let got = translate(json!({"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"text"}}));
        assert!(got.get("response_format").is_none());
    }

    #[test]
    fn unsupported_requests_are_400_naming_the_param() {
        let e = translate_err(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"n":3}));
        assert_eq!((e.status, e.param.as_deref()), (400, Some("n")));
        translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"n":1}));
        for (content, param) in [
            (json!([{"type":"input_audio","input_audio":{"data":"AA","format":"wav"}}]), "messages[0].content[0]"),
            (json!([{"type":"text","text":"x"},{"type":"file","file":{"file_id":"f"}}]), "messages[0].content[1]"),
            (json!([{"type":"image_url","image_url":{"url":"ftp://x/y.png"}}]), "messages[0].content[0].image_url.url"),
            (json!([{"type":"image_url","image_url":{"url":"data:image/png,abc"}}]), "messages[0].content[0].image_url.url"),
        ] {
            let e = translate_err(json!({"model":"m","messages":[{"role":"user","content":content}]}));
            assert_eq!((e.status, e.param.as_deref()), (400, Some(param)), "{content}");
        }
        let e = translate_err(json!({"model":"m","messages":[{"role":"system","content":[{"type":"image_url","image_url":{"url":"https://x/y.png"}}]},{"role":"user","content":"x"}]}));
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0]"));
        let e = translate_err(json!({"model":"m","messages":[{"role":"user","content":"hi"},{"role":"function","name":"f","content":"1"}]}));
        assert_eq!(e.param.as_deref(), Some("messages[1].role"));
    }

    // ------------------------------------------------------------------------------ responses

    #[test]
    fn recorded_response_is_translated() {
        let rec = interaction(SIMPLE, 0);
        let body = rec["response"]["parsed_body"].to_string();
        let out: Value = serde_json::from_slice(&response_body(body.as_bytes(), "command-r7b-12-2024", CREATED).unwrap()).unwrap();
        assert_eq!(out["id"], "f17a5f6c-1734-4098-bd0d-733ef000ac7b");
        assert_eq!(out["object"], "chat.completion");
        assert_eq!(out["created"], CREATED);
        assert_eq!(out["model"], "command-r7b-12-2024");
        assert_eq!(out["choices"].as_array().unwrap().len(), 1);
        let c = &out["choices"][0];
        assert_eq!(c["index"], 0);
        assert_eq!(c["message"]["role"], "assistant");
        assert_eq!(c["message"]["content"], "Hello! How can I assist you today?");
        assert!(c["message"].get("tool_calls").is_none());
        assert!(c["message"].get("reasoning_content").is_none());
        assert_eq!(c["finish_reason"], "stop");
        // usage.tokens wins over billed_units (1 / 9 in the recording).
        assert_eq!(out["usage"], json!({"prompt_tokens":496,"completion_tokens":11,"total_tokens":507}));
    }

    #[test]
    fn tool_call_response_with_plan_and_thinking() {
        let body = json!({"id":"r1","finish_reason":"TOOL_CALL","message":{"role":"assistant",
            "content":[{"type":"thinking","thinking":"Need weather."}],
            "tool_plan":"I will use the get_weather tool to find the weather in Madrid and Brasilia.",
            "tool_calls":[
                {"id":"get_weather_15c2p6g19s8f","type":"function","function":{"name":"get_weather","arguments":"{\"location\":\"Madrid\"}"}},
                {"id":"get_weather_n01pkywy0p2w","type":"function","function":{"name":"get_weather","arguments":"{\"location\":\"Brasilia\"}"}}]},
            "usage":{"billed_units":{"input_tokens":37.0,"output_tokens":28.0},"tokens":{"input_tokens":913.0,"output_tokens":83.0},"cached_tokens":512}});
        let out: Value = serde_json::from_slice(&response_body(body.to_string().as_bytes(), "command-a", CREATED).unwrap()).unwrap();
        let m = &out["choices"][0]["message"];
        assert!(m["content"].is_null(), "no text next to tool calls");
        assert_eq!(m["reasoning_content"], "Need weather.\n\nI will use the get_weather tool to find the weather in Madrid and Brasilia.");
        assert_eq!(
            m["tool_calls"],
            json!([
                {"id":"get_weather_15c2p6g19s8f","type":"function","function":{"name":"get_weather","arguments":"{\"location\":\"Madrid\"}"}},
                {"id":"get_weather_n01pkywy0p2w","type":"function","function":{"name":"get_weather","arguments":"{\"location\":\"Brasilia\"}"}}
            ])
        );
        assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(out["usage"], json!({"prompt_tokens":913,"completion_tokens":83,"total_tokens":996,"prompt_tokens_details":{"cached_tokens":512}}));
    }

    #[test]
    fn finish_reasons_and_usage_fallback() {
        for (reason, want) in [("COMPLETE", "stop"), ("STOP_SEQUENCE", "stop"), ("MAX_TOKENS", "length"), ("TOOL_CALL", "tool_calls"), ("NEW_THING", "stop")] {
            let body = json!({"id":"x","finish_reason":reason,"message":{"role":"assistant","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
                "usage":{"billed_units":{"input_tokens":5,"output_tokens":7}}});
            let out: Value = serde_json::from_slice(&response_body(body.to_string().as_bytes(), "c", CREATED).unwrap()).unwrap();
            assert_eq!(out["choices"][0]["finish_reason"], want, "{reason}");
            assert_eq!(out["choices"][0]["message"]["content"], "ab");
            assert_eq!(out["usage"]["prompt_tokens"], 5, "billed_units when tokens are missing");
            assert_eq!(out["usage"]["completion_tokens"], 7);
        }
        // Generation failures are errors, not answers.
        let e = response_body(br#"{"id":"x","finish_reason":"ERROR","message":{"role":"assistant","content":[]}}"#, "c", CREATED).unwrap_err();
        assert_eq!((e.status, e.code.as_deref()), (502, Some("upstream_generation_error")));
        let e = response_body(br#"{"id":"x","finish_reason":"TIMEOUT","message":{"role":"assistant"}}"#, "c", CREATED).unwrap_err();
        assert_eq!((e.status, e.code.as_deref()), (504, Some("upstream_timeout")));
        // Unreadable answers are a 502 naming the provider.
        let e = response_body(b"<html>", "c", CREATED).unwrap_err();
        assert_eq!(e.status, 502);
        assert!(e.message.contains("Cohere"));
        // An empty message still gives a string content and a usage object.
        let out: Value = serde_json::from_slice(&response_body(br#"{"id":"x","finish_reason":"COMPLETE","message":{"role":"assistant"}}"#, "c", CREATED).unwrap()).unwrap();
        assert_eq!(out["choices"][0]["message"]["content"], "");
        assert_eq!(out["usage"]["total_tokens"], 0);
    }

    // ------------------------------------------------------------------------------ errors

    #[test]
    fn errors_are_openai_shaped_and_statuses_keep_retries() {
        for (status, mapped, kind) in [
            (400, 400, "invalid_request_error"),
            (401, 401, "authentication_error"),
            (404, 404, "invalid_request_error"),
            (422, 422, "invalid_request_error"),
            (429, 429, "rate_limit_error"),
            (498, 400, "invalid_request_error"),
            (500, 500, "api_error"),
            (503, 503, "service_unavailable_error"),
            (504, 504, "api_error"),
        ] {
            assert_eq!(map_status(status), mapped);
            let body = format!(r#"{{"id":"e1","message":"problem {status}"}}"#);
            let e = error_json(&map_error(status, body.as_bytes()));
            assert_eq!(e["message"], format!("problem {status}"));
            assert_eq!(e["type"], kind, "{status}");
        }
        assert_eq!(error_json(&map_error(429, br#"{"message":"slow"}"#))["code"], "rate_limit_exceeded");
        let e = error_json(&map_error(502, b"<html>Bad Gateway</html>"));
        assert!(e["message"].as_str().unwrap().contains("Bad Gateway"));
        let e = error_json(&map_error(500, b""));
        assert_eq!(e["message"], "The Cohere backend returned HTTP 500.");
    }

    // ------------------------------------------------------------------------------ embeddings

    #[test]
    fn embeddings_round_trip() {
        let req = parse_embeddings_request(br#"{"model":"e","input":["hello","goodbye"],"dimensions":256}"#).unwrap();
        let body: Value = serde_json::from_slice(&embeddings_request_body(&req, "embed-v4.0").unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"model":"embed-v4.0","texts":["hello","goodbye"],"input_type":"search_document","embedding_types":["float"],"output_dimension":256})
        );
        let one = parse_embeddings_request(br#"{"model":"e","input":"hi"}"#).unwrap();
        let body: Value = serde_json::from_slice(&embeddings_request_body(&one, "embed-v4.0").unwrap()).unwrap();
        assert_eq!(body["texts"], json!(["hi"]));
        assert!(body.get("output_dimension").is_none());
        let tokens = parse_embeddings_request(br#"{"model":"e","input":[1,2,3]}"#).unwrap();
        assert_eq!(embeddings_request_body(&tokens, "x").unwrap_err().param.as_deref(), Some("input"));

        // The spec's EmbedByTypeResponse example shape, with billed_units in meta.
        let answer = json!({"id":"bc57846a","texts":["hello","goodbye"],"embeddings":{"float":[[0.5,-0.25],[1.0,0.0]]},
            "meta":{"api_version":{"version":"2"},"billed_units":{"input_tokens":2.0}},"response_type":"embeddings_by_type"});
        let out: Value = serde_json::from_slice(&embeddings_response_body(answer.to_string().as_bytes(), "embed-v4.0", EncodingFormat::Float).unwrap()).unwrap();
        assert_eq!(out["object"], "list");
        assert_eq!(out["model"], "embed-v4.0");
        assert_eq!(out["data"][0], json!({"object":"embedding","index":0,"embedding":[0.5,-0.25]}));
        assert_eq!(out["data"][1]["index"], 1);
        assert_eq!(out["usage"], json!({"prompt_tokens":2,"total_tokens":2}));
        let b64: Value = serde_json::from_slice(&embeddings_response_body(answer.to_string().as_bytes(), "e", EncodingFormat::Base64).unwrap()).unwrap();
        assert!(b64["data"][0]["embedding"].is_string());
        // The older embeddings_floats shape.
        let old = json!({"id":"x","embeddings":[[1.5]],"meta":{"billed_units":{"input_tokens":1}}});
        let out: Value = serde_json::from_slice(&embeddings_response_body(old.to_string().as_bytes(), "e", EncodingFormat::Float).unwrap()).unwrap();
        assert_eq!(out["data"][0]["embedding"], json!([1.5]));
        assert_eq!(embeddings_response_body(br#"{"embeddings":{"int8":[[1]]}}"#, "e", EncodingFormat::Float).unwrap_err().status, 502);
    }

    // ------------------------------------------------------------------------------ streams

    #[test]
    fn docs_tool_calling_stream() {
        let input = sse(&docs_stream(0), true);
        eprintln!("{}", &input[..1500]);
        let out = assert_split_invariant(&make, input.as_bytes());
        eprintln!("{}", String::from_utf8_lossy(&out[out.len()-1500..]));
        let sum = summarize(&out, Some("fba98ad3-e5a1-413c-a8de-84fbf9baabf7"), "command-a", Some(CREATED));
        assert!(sum.role_first);
        assert_eq!(sum.content, "");
        assert_eq!(sum.reasoning, "I will search for the weather in Madrid and Brasilia.");
        assert_eq!(
            sum.tools,
            vec![
                ("get_weather_p1t92w7gfgq7".into(), "get_weather".into(), "{\n    \"location\": \"Madrid\"\n}".into()),
                ("get_weather_ay6nmvjgp9vn".into(), "get_weather".into(), "{\n    \"location\": \"Brasilia\"\n}".into()),
            ]
        );
        for (_, _, args) in &sum.tools {
            serde_json::from_str::<Value>(args).expect("arguments are complete JSON");
        }
        assert_eq!(sum.finish, vec!["tool_calls"]);
        assert_eq!(sum.usage, Some(json!({"prompt_tokens":913,"completion_tokens":83,"total_tokens":996})));
        assert!(sum.done);
        assert!(sum.error.is_none());
        // Without the optional [DONE] terminator the output is identical.
        assert_eq!(run_chunks(&make, [sse(&docs_stream(0), false).as_bytes()]).0, out);
    }

    #[test]
    fn docs_response_generation_stream_with_citations() {
        let input = sse(&docs_stream(1), false);
        assert!(input.contains("citation-start") && input.contains("content-end"));
        let out = assert_split_invariant(&make, input.as_bytes());
        let sum = summarize(&out, Some("e8f9afc1-0888-46f0-a9ed-eb0e5a51e17f"), "command-a", Some(CREATED));
        assert_eq!(sum.content, "It is currently 24°C in Madrid and 28°C in Brasilia.");
        assert!(sum.tools.is_empty());
        assert_eq!(sum.finish, vec!["stop"]);
        assert_eq!(sum.usage, Some(json!({"prompt_tokens":1061,"completion_tokens":85,"total_tokens":1146})));
        assert!(sum.done);
        let (_, usage) = run_chunks(&make, [input.as_bytes()]);
        assert_eq!(usage.unwrap().completion_tokens, 85);
    }

    #[test]
    fn data_only_crlf_and_thinking_streams() {
        // No `event:` lines, CRLF framing, a thinking block and the last event without its blank line.
        let evs = [
            start_ev("m1"),
            ev("content-start", json!({"type":"content-start","index":0,"delta":{"message":{"content":{"type":"thinking","thinking":"Hmm, "}}}})),
            ev("content-delta", json!({"type":"content-delta","index":0,"delta":{"message":{"content":{"thinking":"ok."}}}})),
            ev("content-start", json!({"type":"content-start","index":1,"delta":{"message":{"content":{"type":"text","text":""}}}})),
            text_ev("caf\u{e9} \"q\"\n"),
            ev("debug", json!({"type":"debug","prompt":"<secret prompt>"})),
            end_ev("MAX_TOKENS"),
        ];
        let mut input = String::new();
        for (_, data) in &evs {
            input.push_str(&format!("data: {data}\r\n\r\n"));
        }
        let input = input.trim_end().to_string();
        let out = assert_split_invariant(&make, input.as_bytes());
        let sum = summarize(&out, Some("m1"), "command-a", Some(CREATED));
        assert_eq!(sum.reasoning, "Hmm, ok.");
        assert_eq!(sum.content, "caf\u{e9} \"q\"\n");
        assert_eq!(sum.finish, vec!["length"]);
        assert!(!String::from_utf8_lossy(&out).contains("secret prompt"), "debug events are not forwarded");
        assert_eq!(sum.usage.unwrap()["prompt_tokens"], 30);
    }

    #[test]
    fn stream_without_message_start_still_has_one_id_and_role_first() {
        let out = run_chunks(&make, [sse(&[text_ev("hi"), end_ev("COMPLETE")], true).as_bytes()]).0;
        let sum = summarize(&out, Some(&format!("chatcmpl-{CREATED}")), "command-a", Some(CREATED));
        assert!(sum.role_first);
        assert_eq!(sum.content, "hi");
        assert!(sum.done);
    }

    #[test]
    fn truncated_stream_is_an_error() {
        let full = sse(&docs_stream(1), true);
        let cut = &full[..full.find("event: message-end").unwrap()];
        let out = assert_split_invariant(&make, cut.as_bytes());
        let sum = summarize(&out, None, "command-a", Some(CREATED));
        assert_eq!(sum.content, "It is currently 24°C in Madrid and 28°C in Brasilia.");
        assert!(!sum.done);
        assert!(sum.finish.is_empty());
        assert!(sum.usage.is_none());
        assert_eq!(
            sum.error,
            Some(json!({"message":"upstream stream ended before completion","type":"api_error","param":null,"code":"stream_truncated"}))
        );
        // `[DONE]` without message-end is a truncation too.
        let out = run_chunks(&make, [sse(&[start_ev("x"), text_ev("a")], true).as_bytes()]).0;
        assert_eq!(summarize(&out, None, "command-a", None).error.unwrap()["code"], "stream_truncated");
        // Nothing at all.
        let (evs, done) = events(&run_chunks(&make, [&b""[..]]).0);
        assert!(!done);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0]["error"]["code"], "stream_truncated");
    }

    #[test]
    fn generation_errors_in_the_stream() {
        let input = sse(&[start_ev("e"), text_ev("partial"),
            ev("message-end", json!({"type":"message-end","delta":{"finish_reason":"ERROR","error":"model overloaded"}})),
            text_ev("never")], true);
        let out = assert_split_invariant(&make, input.as_bytes());
        let sum = summarize(&out, Some("e"), "command-a", None);
        assert_eq!(sum.content, "partial");
        assert!(!sum.done);
        let err = sum.error.unwrap();
        assert_eq!(err["code"], "upstream_generation_error");
        assert!(err["message"].as_str().unwrap().contains("model overloaded"));
        let out = run_chunks(&make, [sse(&[start_ev("t"), end_ev("TIMEOUT")], false).as_bytes()]).0;
        assert_eq!(summarize(&out, None, "command-a", None).error.unwrap()["code"], "upstream_timeout");
    }

    #[test]
    fn unreadable_events_are_errors_and_nothing_follows() {
        let input = format!("{}data: {{\"type\":\"content-delta\",\"delta\":{{\n\n{}", sse(&[start_ev("b"), text_ev("ok")], false), sse(&[text_ev("after"), end_ev("COMPLETE")], true));
        let out = assert_split_invariant(&make, input.as_bytes());
        let sum = summarize(&out, Some("b"), "command-a", None);
        assert_eq!(sum.content, "ok");
        assert_eq!(sum.error.unwrap()["code"], "invalid_upstream_event");
        // A field of the wrong type is unreadable too.
        let out = run_chunks(&make, [b"data: {\"type\":\"message-start\",\"index\":\"zero\"}\n\n".as_slice()]).0;
        assert_eq!(summarize(&out, None, "command-a", None).error.unwrap()["code"], "invalid_upstream_event");
        // finish() and later pushes add nothing after an error.
        let mut t = StreamTranslator::new(CREATED, "m");
        let mut o = Vec::new();
        t.push(input.as_bytes(), &mut o);
        let n = o.len();
        t.finish(&mut o);
        t.push(b"data: {}\n\n", &mut o);
        assert_eq!(o.len(), n);
    }

    #[test]
    fn tool_deltas_follow_their_cohere_index() {
        let input = sse(&[
            start_ev("p"),
            ev("tool-call-start", json!({"type":"tool-call-start","index":3,"delta":{"message":{"tool_calls":{"id":"a_1","type":"function","function":{"name":"a","arguments":"{\"x\":"}}}}})),
            ev("tool-call-start", json!({"type":"tool-call-start","index":4,"delta":{"message":{"tool_calls":{"id":"","type":"function","function":{"name":"b","arguments":""}}}}})),
            ev("tool-call-delta", json!({"type":"tool-call-delta","index":4,"delta":{"message":{"tool_calls":{"function":{"arguments":"{}"}}}}})),
            ev("tool-call-delta", json!({"type":"tool-call-delta","index":3,"delta":{"message":{"tool_calls":{"function":{"arguments":"1}"}}}}})),
            ev("tool-call-delta", json!({"type":"tool-call-delta","index":9,"delta":{"message":{"tool_calls":{"function":{"arguments":"ignored"}}}}})),
            ev("tool-call-end", json!({"type":"tool-call-end","index":3})),
            end_ev("TOOL_CALL"),
        ], true);
        let out = assert_split_invariant(&make, input.as_bytes());
        let sum = summarize(&out, Some("p"), "command-a", None);
        assert_eq!(
            sum.tools,
            vec![("a_1".into(), "a".into(), "{\"x\":1}".into()), ("call_1".into(), "b".into(), "{}".into())]
        );
        assert_eq!(sum.finish, vec!["tool_calls"]);
    }

    #[test]
    fn garbage_and_cut_streams_never_panic_and_always_terminate() {
        let inputs: Vec<Vec<u8>> = vec![
            sse(&docs_stream(0), true).into_bytes(),
            sse(&docs_stream(1), true).into_bytes(),
            b"\xff\xfe\x00garbage\n\n".to_vec(),
            b"data: {\"type\":\"message-end\"}\n\n".to_vec(),
            b"data: {\"type\":\"message-end\",\"delta\":{\"usage\":{\"tokens\":{\"input_tokens\":-5e400}}}}\n\n".to_vec(),
            b"data: {\"type\":\"tool-call-delta\",\"index\":4294967296}\n\n".to_vec(),
            b"data: []\n\ndata: 1\n\ndata: null\n\n".to_vec(),
        ];
        for input in &inputs {
            for cut in (0..=input.len()).step_by(11) {
                let (out, _) = run_chunks(&make, [&input[..cut]]);
                assert_terminates(&out);
            }
        }
        // Every payload of a finished stream is an OpenAI chunk or [DONE].
        let out = run_chunks(&make, [sse(&docs_stream(0), true).as_bytes()]).0;
        assert!(payloads(&out).len() > 10);
    }

    #[test]
    fn oversized_event_is_an_error() {
        let mut t = StreamTranslator::new(CREATED, "m");
        let mut out = Vec::new();
        t.push(b"data: ", &mut out);
        t.push(&vec![b'a'; crate::stream::sse::MAX_PENDING_BYTES + 10], &mut out);
        t.finish(&mut out);
        let (evs, done) = events(&out);
        assert!(!done);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0]["error"]["code"], "stream_overflow");
    }
}

#[cfg(test)]
mod dispatch_tests {
    use crate::api::embeddings::EncodingFormat;
    use crate::config::Schema;
    use crate::providers::testutil::{backend, interaction, upstream, CREATED};
    use crate::providers::{self, Operation};
    use serde_json::{json, Value};

    const SIMPLE: &str = include_str!("../../tests/fixtures/cohere/test_request_simple_success_with_vcr.yaml");

    #[test]
    fn cohere_backend_end_to_end() {
        let b = backend(json!({"schema":"cohere","host":"api.cohere.com","credential":{"env":"COHERE_API_KEY"}}));
        assert_eq!((b.credential_header(), b.credential_prefix(), b.base_path()), ("authorization", "Bearer ", ""));
        let up = upstream(Operation::Chat, &b, &json!({"model":"c","messages":[{"role":"user","content":"hello"}]}), "command-r7b-12-2024").unwrap();
        assert_eq!(format!("https://{}{}", b.host.as_deref().unwrap(), up.path), interaction(SIMPLE, 0)["request"]["uri"]);
        assert!(!up.hints.stream);
        assert!(up.headers.is_empty());
        let d = providers::Dialect::from(&b);
        assert!(providers::translates_responses(d, &up.hints));
        let answer = interaction(SIMPLE, 0)["response"]["parsed_body"].to_string();
        let out: Value = serde_json::from_slice(&providers::response_body(d, &up.hints, answer.as_bytes(), CREATED).unwrap()).unwrap();
        assert_eq!(out["choices"][0]["message"]["content"], "Hello! How can I assist you today?");
        assert_eq!(out["model"], "command-r7b-12-2024");

        let up = upstream(Operation::Chat, &b, &json!({"model":"c","messages":[{"role":"user","content":"hello"}],"stream":true}), "command-a").unwrap();
        assert_eq!(up.headers, vec![("accept", "text/event-stream".to_string())]);
        let mut t = providers::stream_translator(d, &up.hints, CREATED).expect("Cohere streams are translated");
        let mut out = Vec::new();
        t.push(b"event: message-start\ndata: {\"type\":\"message-start\",\"id\":\"x\"}\n\nevent: message-end\ndata: {\"type\":\"message-end\",\"delta\":{\"finish_reason\":\"COMPLETE\"}}\n\n", &mut out);
        t.finish(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\"model\":\"command-a\"") && text.ends_with("data: [DONE]\n\n"), "{text}");

        let up = upstream(Operation::Embeddings, &b, &json!({"model":"e","input":["a"],"encoding_format":"base64"}), "embed-v4.0").unwrap();
        assert_eq!(up.path, "/v2/embed");
        assert_eq!(up.hints.encoding, EncodingFormat::Base64);
        let out: Value = serde_json::from_slice(&providers::response_body(d, &up.hints, br#"{"id":"i","embeddings":{"float":[[1.0]]},"meta":{"billed_units":{"input_tokens":1}}}"#, CREATED).unwrap()).unwrap();
        assert!(out["data"][0]["embedding"].is_string());
        assert_eq!(providers::error_status(Schema::Cohere, 498), 400);
        assert_eq!(providers::error_status(Schema::Cohere, 429), 429);
        let e: Value = serde_json::from_slice(&providers::error_body(Schema::Cohere, 429, br#"{"message":"too many"}"#)).unwrap();
        assert_eq!(e["error"]["message"], "too many");
        // Request errors surface as OpenAI 400s from the dispatch too.
        let e = upstream(Operation::Chat, &b, &json!({"model":"c","messages":[{"role":"user","content":"x"}],"n":2}), "c").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("n"));
    }
}
