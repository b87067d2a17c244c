//! Ollama's native API (`POST /api/chat`, `POST /api/embed`; no auth locally, Bearer for
//! ollama.com) ⇄ OpenAI.
//!
//! * [`request_body`] builds the `/api/chat` request from a parsed [`ChatRequest`].
//! * [`response_body`] turns a whole `ChatResponse` into a `chat.completion`.
//! * [`StreamTranslator`] turns the NDJSON stream (`application/x-ndjson`, one `ChatStreamEvent`
//!   per line, the last with `done: true`) into `chat.completion.chunk` SSE events, ending with a
//!   usage-only chunk and `data: [DONE]`.
//! * [`embeddings_request_body`] / [`embeddings_response_body`] do the same for `/api/embed`.
//! * [`map_error`] turns Ollama errors (`{"error": "…"}`) into OpenAI-shaped ones.
//!
//! Mapping choices where OpenAI and Ollama differ:
//! * `stream` is always sent: Ollama streams unless told `false`.
//! * Images must be inline: base64 data URLs become `images` (the base64 without the `data:`
//!   prefix); http(s) URLs are a 400 (Ollama does not fetch them).
//! * Tool-call arguments travel as objects both ways; Ollama's calls have no ids, so answers get
//!   `call_<n>` (or Ollama's own `id` when a version sends one). A `tool` message carries
//!   `tool_name`, looked up from the assistant turn whose `tool_calls` holds its `tool_call_id`.
//! * `tool_choice`: Ollama has none. `none` sends no tools; a named function sends only that tool;
//!   `required` is best effort (the tools are offered, a call is not forced).
//! * `response_format` → `format` (`"json"`, or the JSON schema); `reasoning_effort` → `think`
//!   (`none` → `false`, `minimal`/`low` → `"low"`, `medium`, `high`, `xhigh`/`max` → `"max"`), as
//!   Ollama's own OpenAI layer does; `reasoning_content` of earlier turns → `thinking`.
//! * `finish_reason`: `tool_calls` when the answer has tool calls, `length` for `done_reason:
//!   length`, `stop` otherwise. Usage: `prompt_eval_count` / `eval_count`.
//! * A line `{"error": …}` in a stream (Ollama keeps status 200) ends the stream with an OpenAI
//!   error event; so does a stream that ends without a `done: true` line.
//!
//! Everything here runs on untrusted bytes inside the VM: no `unwrap`, no indexing on input.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::util::{
    check_single_choice, is_http_url, overflow, parse_data_url, parse_upstream, s, truncated, unreadable_event,
    unsupported_part, usage, write_error_event, ChunkWriter, Count, Phase, Str,
};
use super::StreamTranslate;
use crate::api::chat::{
    ChatCompletion, ChatRequest, Choice, Content, ContentPart, Delta, FunctionCall, FunctionDelta, ResponseFormat,
    ResponseMessage, Role, Stop, ToolCall, ToolCallDelta, ToolChoice, Usage,
};
use crate::api::embeddings::{embeddings_response_json, EmbeddingInput, EmbeddingsRequest, EncodingFormat};
use crate::api::error::{kind_for_status, ApiError};
use crate::stream::ndjson::{NdjsonSplitter, NdjsonStatus};

const NAME: &str = "Ollama";

// =============================================================================================
// Request
// =============================================================================================

#[derive(Serialize)]
struct OllamaRequest<'a> {
    model: &'a str,
    messages: Vec<OlMessage<'a>>,
    /// Always explicit: Ollama's default is `true`.
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<OlTool<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<Cow<'a, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    options: Option<Options<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    think: Option<Value>,
}

#[derive(Serialize, Default)]
struct Options<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    num_predict: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
}

impl Options<'_> {
    fn is_empty(&self) -> bool {
        self.temperature.is_none()
            && self.top_p.is_none()
            && self.num_predict.is_none()
            && self.stop.is_none()
            && self.seed.is_none()
            && self.frequency_penalty.is_none()
            && self.presence_penalty.is_none()
    }
}

#[derive(Serialize)]
struct OlMessage<'a> {
    role: &'static str,
    content: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    images: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<OlToolCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_name: Option<&'a str>,
}

impl<'a> OlMessage<'a> {
    fn new(role: &'static str, content: String) -> Self {
        OlMessage { role, content, images: Vec::new(), thinking: None, tool_calls: Vec::new(), tool_name: None }
    }
}

#[derive(Serialize)]
struct OlToolCall<'a> {
    function: OlFunctionCall<'a>,
}

#[derive(Serialize)]
struct OlFunctionCall<'a> {
    name: &'a str,
    arguments: Value,
}

#[derive(Serialize)]
struct OlTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: OlFunction<'a>,
}

#[derive(Serialize)]
struct OlFunction<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    parameters: Cow<'a, Value>,
}

/// Builds the Ollama `/api/chat` JSON body (see the module notes for the mapping).
pub fn request_body(req: &ChatRequest, model: &str) -> Result<Vec<u8>, ApiError> {
    check_single_choice(NAME, req.n)?;

    // tool_call_id → function name, for the `tool_name` of tool results.
    let mut call_names: HashMap<&str, &str> = HashMap::new();
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        match m.role {
            Role::System | Role::Developer => {
                let (text, _) = content_parts(m.content.as_ref(), i, false)?;
                messages.push(OlMessage::new("system", text));
            }
            Role::User => {
                let (text, images) = content_parts(m.content.as_ref(), i, true)?;
                let mut msg = OlMessage::new("user", text);
                msg.images = images;
                messages.push(msg);
            }
            Role::Assistant => {
                let (text, _) = content_parts(m.content.as_ref(), i, false)?;
                let mut msg = OlMessage::new("assistant", text);
                msg.thinking = m.reasoning_content.as_deref().filter(|t| !t.is_empty());
                for (k, call) in m.tool_calls.iter().flatten().enumerate() {
                    let arguments = parse_arguments(&call.function.arguments).ok_or_else(|| {
                        ApiError::invalid_param(
                            format!("messages[{i}].tool_calls[{k}].function.arguments"),
                            format!(
                                "Invalid value for 'messages[{i}].tool_calls[{k}].function.arguments': \
                                 expected a JSON object encoded as a string."
                            ),
                        )
                    })?;
                    call_names.insert(&call.id, &call.function.name);
                    msg.tool_calls.push(OlToolCall { function: OlFunctionCall { name: &call.function.name, arguments } });
                }
                messages.push(msg);
            }
            Role::Tool => {
                let (text, _) = content_parts(m.content.as_ref(), i, false)?;
                let mut msg = OlMessage::new("tool", text);
                msg.tool_name = m.tool_call_id.as_deref().and_then(|id| call_names.get(id).copied());
                messages.push(msg);
            }
            Role::Function => {
                return Err(ApiError::invalid_param(
                    format!("messages[{i}].role"),
                    format!(
                        "The deprecated 'function' role (messages[{i}]) is not supported by the Ollama backend; \
                         use 'tool' messages with 'tool_call_id'."
                    ),
                ));
            }
        }
    }

    let mut tools = None;
    if let Some(defs) = req.tools.as_ref().filter(|t| !t.is_empty()) {
        let named = match &req.tool_choice {
            Some(ToolChoice::Named(n)) => Some(n.function.name.as_str()),
            Some(ToolChoice::Mode(mode)) => match mode.as_str() {
                "auto" | "required" | "none" => None,
                other => {
                    return Err(ApiError::invalid_param(
                        "tool_choice",
                        format!("Invalid value for 'tool_choice': '{other}'. Supported values are 'none', 'auto' and 'required'."),
                    ))
                }
            },
            None => None,
        };
        let mut out = Vec::with_capacity(defs.len());
        for (t, def) in defs.iter().enumerate() {
            if def.kind != "function" {
                return Err(ApiError::invalid_param(
                    format!("tools[{t}].type"),
                    format!("Tool type '{}' is not supported by the Ollama backend; only 'function' tools are.", def.kind),
                ));
            }
            if named.is_some_and(|n| n != def.function.name) {
                continue;
            }
            let parameters = match &def.function.parameters {
                Some(p) => Cow::Borrowed(p),
                None => Cow::Owned(serde_json::json!({"type": "object", "properties": {}})),
            };
            out.push(OlTool {
                kind: "function",
                function: OlFunction { name: &def.function.name, description: def.function.description.as_deref(), parameters },
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
        let none = matches!(&req.tool_choice, Some(ToolChoice::Mode(m)) if m == "none");
        if !none {
            tools = Some(out);
        }
    }

    let format = match &req.response_format {
        Some(ResponseFormat::JsonObject) => Some(Cow::Owned(Value::String("json".into()))),
        Some(ResponseFormat::JsonSchema { json_schema }) => Some(match &json_schema.schema {
            Some(schema) => Cow::Borrowed(schema),
            None => Cow::Owned(Value::String("json".into())),
        }),
        Some(ResponseFormat::Text) | None => None,
    };

    let stop = req.stop.as_ref().and_then(|st| {
        let v: Vec<&str> = match st {
            Stop::One(one) => vec![one.as_str()],
            Stop::Many(many) => many.iter().map(String::as_str).collect(),
        };
        if v.is_empty() {
            None
        } else {
            Some(v)
        }
    });
    let options = Options {
        temperature: req.temperature,
        top_p: req.top_p,
        num_predict: req.output_token_limit(),
        stop,
        seed: req.seed,
        frequency_penalty: req.frequency_penalty,
        presence_penalty: req.presence_penalty,
    };

    let think = match req.reasoning_effort.as_deref() {
        None => None,
        Some("none") => Some(Value::Bool(false)),
        Some("minimal") | Some("low") => Some(Value::String("low".into())),
        Some("medium") => Some(Value::String("medium".into())),
        Some("high") => Some(Value::String("high".into())),
        Some("xhigh") | Some("max") => Some(Value::String("max".into())),
        Some(other) => {
            return Err(ApiError::invalid_param(
                "reasoning_effort",
                format!("Invalid value for 'reasoning_effort': '{other}'."),
            ))
        }
    };

    let body = OllamaRequest {
        model,
        messages,
        stream: req.is_stream(),
        tools,
        format,
        options: if options.is_empty() { None } else { Some(options) },
        think,
    };
    serde_json::to_vec(&body).map_err(|e| ApiError::gateway(500, format!("could not serialise the Ollama request: {e}")))
}

/// Content → (text, base64 images). Text parts are joined with newlines; image parts are only
/// allowed where `images` is true.
fn content_parts(content: Option<&Content>, i: usize, images: bool) -> Result<(String, Vec<&str>), ApiError> {
    let mut text = String::new();
    let mut imgs = Vec::new();
    match content {
        None => {}
        Some(Content::Text(t)) => text.push_str(t),
        Some(Content::Parts(parts)) => {
            for (j, part) in parts.iter().enumerate() {
                match part {
                    ContentPart::Text { text: t } | ContentPart::Refusal { refusal: t } => {
                        if !text.is_empty() {
                            text.push('\n');
                        }
                        text.push_str(t);
                    }
                    ContentPart::ImageUrl { image_url } if images => {
                        let url = image_url.url.as_str();
                        let bad = |why: &str| {
                            ApiError::invalid_param(
                                format!("messages[{i}].content[{j}].image_url.url"),
                                format!("Invalid image URL in messages[{i}].content[{j}]: {why}"),
                            )
                        };
                        match parse_data_url(url) {
                            Ok(Some(d)) => imgs.push(d.data),
                            Ok(None) if is_http_url(url) => {
                                return Err(bad(
                                    "the Ollama backend does not fetch image URLs; send the image inline as a base64 data URL.",
                                ))
                            }
                            Ok(None) => return Err(bad("expected a base64 data URL.")),
                            Err(why) => return Err(bad(why)),
                        }
                    }
                    ContentPart::ImageUrl { .. } => return Err(unsupported_part(NAME, i, j, "image_url")),
                    ContentPart::InputAudio { .. } => return Err(unsupported_part(NAME, i, j, "input_audio")),
                    ContentPart::File { .. } => return Err(unsupported_part(NAME, i, j, "file")),
                }
            }
        }
    }
    Ok((text, imgs))
}

/// Tool-call arguments (JSON text) → the object Ollama wants. Empty text counts as `{}`.
fn parse_arguments(args: &str) -> Option<Value> {
    if args.trim().is_empty() {
        return Some(Value::Object(Map::new()));
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
struct OlResponse {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    message: Option<OlRespMessage>,
    #[serde(default)]
    done_reason: Option<String>,
    #[serde(default)]
    prompt_eval_count: Option<Count>,
    #[serde(default)]
    eval_count: Option<Count>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize, Default)]
struct OlRespMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<OlRespToolCall>>,
}

#[derive(Deserialize)]
struct OlRespToolCall {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<OlRespFunction>,
}

#[derive(Deserialize)]
struct OlRespFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<Value>,
}

/// OpenAI's `chatcmpl-…` id from Ollama's `created_at` timestamp (Ollama answers carry no id).
fn completion_id(created_at: Option<&str>, created: u64) -> String {
    let digits: String = created_at.unwrap_or("").chars().filter(char::is_ascii_digit).take(32).collect();
    if digits.is_empty() {
        format!("chatcmpl-{created}")
    } else {
        format!("chatcmpl-{digits}")
    }
}

fn arguments_text(v: Option<Value>) -> String {
    match v {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
    }
}

fn finish_reason(done_reason: Option<&str>, had_tool_calls: bool) -> &'static str {
    if had_tool_calls {
        return "tool_calls";
    }
    match done_reason {
        Some("length") => "length",
        _ => "stop",
    }
}

fn error_message(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(o) => match o.get("message") {
            Some(Value::String(m)) => m.clone(),
            _ => v.to_string(),
        },
        other => other.to_string(),
    }
}

/// Translates a whole (non-stream) Ollama `/api/chat` answer into an OpenAI `chat.completion`.
/// `model` names the answer when Ollama's does not.
pub fn response_body(body: &[u8], model: &str, created: u64) -> Result<Vec<u8>, ApiError> {
    response_answer(body, model, created).map(|a| a.body)
}

/// [`response_body`], with the summary the gateway accounts with (see [`super::WholeAnswer`]).
pub fn response_answer(body: &[u8], model: &str, created: u64) -> Result<super::WholeAnswer, ApiError> {
    let resp: OlResponse = parse_upstream(NAME, body)?;
    if let Some(err) = &resp.error {
        return Err(ApiError::new(502, "api_error", format!("The Ollama backend failed: {}", error_message(err)))
            .with_code("upstream_error"));
    }
    let msg = resp.message.unwrap_or_default();
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
    let content = match msg.content {
        Some(c) if !c.is_empty() => Some(c),
        _ if tool_calls.is_empty() => Some(String::new()),
        _ => None,
    };
    let reason = finish_reason(resp.done_reason.as_deref(), !tool_calls.is_empty());
    let completion = ChatCompletion {
        id: completion_id(resp.created_at.as_deref(), created),
        object: "chat.completion",
        created,
        model: resp.model.filter(|m| !m.is_empty()).unwrap_or_else(|| model.to_string()),
        choices: vec![Choice {
            index: 0,
            message: ResponseMessage {
                role: "assistant",
                content,
                reasoning_content: msg.thinking.filter(|t| !t.is_empty()),
                tool_calls,
                refusal: None,
            },
            finish_reason: Some(reason.to_string()),
            logprobs: None,
        }],
        usage: Some(usage(
            resp.prompt_eval_count.map_or(0, Count::get),
            resp.eval_count.map_or(0, Count::get),
        )),
        system_fingerprint: None,
    };
    super::WholeAnswer::of(completion)
}

// =============================================================================================
// Embeddings
// =============================================================================================

#[derive(Serialize)]
struct EmbedRequest<'a> {
    model: &'a str,
    input: EmbedInput<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<u32>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum EmbedInput<'a> {
    One(&'a str),
    Many(Vec<&'a str>),
}

/// Builds the `/api/embed` body (`input` as the client sent it: a string or an array of strings).
pub fn embeddings_request_body(req: &EmbeddingsRequest, model: &str) -> Result<Vec<u8>, ApiError> {
    let input = match &req.input {
        EmbeddingInput::One(s) => EmbedInput::One(s),
        EmbeddingInput::Many(v) => EmbedInput::Many(v.iter().map(String::as_str).collect()),
        EmbeddingInput::Tokens(_) | EmbeddingInput::TokenBatches(_) => {
            return Err(ApiError::invalid_param("input", "The Ollama backend embeds text only: token-id input is not supported.")
                .with_code("unsupported_capability"))
        }
    };
    let body = EmbedRequest { model, input, dimensions: req.dimensions };
    serde_json::to_vec(&body).map_err(|e| ApiError::gateway(500, format!("could not serialise the Ollama request: {e}")))
}

#[derive(Deserialize)]
struct EmbedResponse {
    embeddings: Vec<Vec<f32>>,
    #[serde(default)]
    prompt_eval_count: Option<Count>,
}

/// Translates an `/api/embed` answer into the OpenAI embeddings list.
pub fn embeddings_response_body(body: &[u8], model: &str, encoding: EncodingFormat) -> Result<Vec<u8>, ApiError> {
    let resp: EmbedResponse = parse_upstream(NAME, body)?;
    embeddings_response_json(model, resp.embeddings, encoding, resp.prompt_eval_count.map_or(0, Count::get))
}

// =============================================================================================
// Errors
// =============================================================================================

#[derive(Deserialize)]
struct ErrorBody {
    error: Value,
}

/// An Ollama error answer (`{"error": "…"}`) as an OpenAI error body; the status is kept, so
/// Envoy retries 429 and 5xx.
pub fn map_error(status: u16, body: &[u8]) -> Vec<u8> {
    let message = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => error_message(&b.error),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let snippet: String = text.trim().chars().take(500).collect();
            if snippet.is_empty() {
                format!("The Ollama backend returned HTTP {status}.")
            } else {
                format!("The Ollama backend returned HTTP {status}: {snippet}")
            }
        }
    };
    let e = ApiError::new(status, kind_for_status(status), message);
    match status {
        404 => e.with_code("model_not_found"),
        _ => e,
    }
    .to_json()
}

// =============================================================================================
// Streaming
// =============================================================================================

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow, default)]
    model: Option<Str<'a>>,
    #[serde(borrow, default)]
    created_at: Option<Str<'a>>,
    #[serde(borrow, default)]
    message: Option<LineMessage<'a>>,
    #[serde(default)]
    done: Option<bool>,
    #[serde(borrow, default)]
    done_reason: Option<Str<'a>>,
    #[serde(default)]
    prompt_eval_count: Option<Count>,
    #[serde(default)]
    eval_count: Option<Count>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct LineMessage<'a> {
    #[serde(borrow, default)]
    content: Option<Str<'a>>,
    #[serde(borrow, default)]
    thinking: Option<Str<'a>>,
    #[serde(default)]
    tool_calls: Option<Vec<OlRespToolCall>>,
}

/// Incremental stream translator: Ollama NDJSON in, OpenAI `chat.completion.chunk` SSE out.
///
/// Output: a first chunk with `delta: {role: "assistant", content: ""}`, one chunk per thinking /
/// text fragment, one chunk per tool call (Ollama sends each call whole), a finishing chunk, a
/// usage-only chunk (`choices: []`) and `data: [DONE]`. An `{"error": …}` line, an unreadable
/// line or a stream that ends without `done: true` produces one `data: {"error":{…}}` event and
/// nothing after it.
pub struct StreamTranslator {
    splitter: NdjsonSplitter,
    state: State,
}

struct State {
    w: ChunkWriter,
    phase: Phase,
    started: bool,
    tool_calls: u32,
    usage: Option<Usage>,
}

impl StreamTranslator {
    pub fn new(created: u64, model: &str) -> Self {
        StreamTranslator {
            splitter: NdjsonSplitter::new(),
            state: State {
                w: ChunkWriter { id: String::new(), model: model.to_string(), created },
                phase: Phase::Open,
                started: false,
                tool_calls: 0,
                usage: None,
            },
        }
    }

    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if self.state.phase != Phase::Open {
            return;
        }
        let StreamTranslator { splitter, state } = self;
        if splitter.push(chunk, |line| state.on_line(line, out)) == NdjsonStatus::Overflow {
            state.fail(out, overflow());
        }
    }

    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.state.phase != Phase::Open {
            return;
        }
        let StreamTranslator { splitter, state } = self;
        splitter.finish(|line| state.on_line(line, out));
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
    fn on_line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        if self.phase != Phase::Open {
            return;
        }
        let l: Line<'_> = match serde_json::from_slice(line) {
            Ok(l) => l,
            Err(e) => {
                self.fail(out, unreadable_event(NAME, &e));
                return;
            }
        };
        if let Some(err) = &l.error {
            self.fail(
                out,
                ApiError::new(502, "api_error", format!("The Ollama backend failed during the stream: {}", error_message(err)))
                    .with_code("upstream_error"),
            );
            return;
        }
        if !self.started {
            self.started = true;
            self.w.id = completion_id(s(&l.created_at), self.w.created);
            if let Some(m) = s(&l.model).filter(|m| !m.is_empty()) {
                self.w.model.clear();
                self.w.model.push_str(m);
            }
            self.w.chunk(out, Delta { role: Some("assistant"), content: Some(""), ..Delta::default() }, None);
        }
        if let Some(m) = &l.message {
            if let Some(t) = s(&m.thinking).filter(|t| !t.is_empty()) {
                self.w.chunk(out, Delta { reasoning_content: Some(t), ..Delta::default() }, None);
            }
            if let Some(t) = s(&m.content).filter(|t| !t.is_empty()) {
                self.w.chunk(out, Delta { content: Some(t), ..Delta::default() }, None);
            }
            for call in m.tool_calls.iter().flatten() {
                let k = self.tool_calls;
                self.tool_calls = self.tool_calls.saturating_add(1);
                let fallback = format!("call_{k}");
                let id = call.id.as_deref().filter(|i| !i.is_empty()).unwrap_or(&fallback);
                let (name, arguments) = match &call.function {
                    Some(f) => (f.name.as_deref().unwrap_or(""), arguments_text(f.arguments.clone())),
                    None => ("", "{}".to_string()),
                };
                let delta = ToolCallDelta {
                    index: k,
                    id: Some(id),
                    kind: Some("function"),
                    function: FunctionDelta { name: Some(name), arguments: Some(&arguments) },
                };
                self.w.chunk(out, Delta { tool_calls: Some(vec![delta]), ..Delta::default() }, None);
            }
        }
        if l.done == Some(true) {
            let usage = self.usage.insert(usage(
                l.prompt_eval_count.map_or(0, Count::get),
                l.eval_count.map_or(0, Count::get),
            ));
            self.w.finish(out, finish_reason(s(&l.done_reason), self.tool_calls > 0), usage);
            self.phase = Phase::Done;
        }
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
    use crate::api::chat::parse_chat_request;
    use crate::api::embeddings::parse_embeddings_request;
    use crate::providers::testutil::{assert_split_invariant, assert_terminates, error_json, events, run_chunks, summarize, CREATED};
    use serde_json::json;

    /// Ollama's API reference (docs/api.md): request and response examples per section.
    const API_MD: &str = include_str!("../../tests/fixtures/ollama/api.md");
    const ERRORS_MDX: &str = include_str!("../../tests/fixtures/ollama/errors.mdx");

    /// Properties of `ChatRequest`, `ChatMessage` and `ModelOptions` in Ollama's openapi.yaml, plus
    /// `tool_name` (message) from api.md.
    const SPEC_REQUEST: &[&str] = &["model", "messages", "tools", "format", "options", "stream", "think", "keep_alive", "logprobs", "top_logprobs"];
    const SPEC_MESSAGE: &[&str] = &["role", "content", "images", "tool_calls", "thinking", "tool_name"];
    const SPEC_OPTIONS: &[&str] = &["seed", "temperature", "top_k", "top_p", "min_p", "stop", "num_ctx", "num_predict", "frequency_penalty", "presence_penalty"];

    /// The text of `### … #### {title}` up to the next `####` heading.
    fn section(title: &str) -> &'static str {
        let at = API_MD.find(&format!("\n#### {title}\n")).unwrap_or_else(|| panic!("section {title}"));
        let rest = &API_MD[at + 1..];
        let body = &rest[rest.find('\n').unwrap()..];
        match body.find("\n#### ") {
            Some(end) => &body[..end],
            None => body,
        }
    }

    /// The code blocks of a section, by language.
    fn blocks(section: &str, lang: &str) -> Vec<String> {
        section
            .split(&format!("```{lang}\n"))
            .skip(1)
            .map(|b| b.split("```").next().unwrap().to_string())
            .collect()
    }

    /// The JSON body of the section's `curl … -d '{…}'` request (`//` comment lines dropped).
    fn doc_request(title: &str) -> Value {
        let shell = &blocks(section(title), "shell")[0];
        let start = shell.find("-d '").unwrap() + 4;
        let end = shell.rfind('\'').unwrap();
        let json: String = shell[start..end].lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{title}: {e}"))
    }

    /// The section's JSON response examples.
    fn doc_responses(title: &str) -> Vec<Value> {
        blocks(section(title), "json").iter().map(|b| serde_json::from_str(b).unwrap_or_else(|e| panic!("{title}: {e}"))).collect()
    }

    /// Every number as a float, so `0` and `0.0` compare equal.
    fn floats(v: Value) -> Value {
        match v {
            Value::Number(n) => json!(n.as_f64().unwrap()),
            Value::Array(a) => Value::Array(a.into_iter().map(floats).collect()),
            Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, floats(v))).collect()),
            other => other,
        }
    }

    /// JSON objects as NDJSON lines.
    fn ndjson(lines: &[Value]) -> String {
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    fn chat(v: Value) -> ChatRequest {
        parse_chat_request(v.to_string().as_bytes()).expect("valid chat request")
    }

    fn translate_as(v: Value, model: &str) -> Value {
        let out: Value = serde_json::from_slice(&request_body(&chat(v), model).expect("translates")).expect("JSON");
        for (k, val) in out.as_object().unwrap() {
            assert!(SPEC_REQUEST.contains(&k.as_str()), "`{k}` is not a ChatRequest property");
            if k == "options" {
                for o in val.as_object().unwrap().keys() {
                    assert!(SPEC_OPTIONS.contains(&o.as_str()), "`{o}` is not a model option");
                }
            }
        }
        for m in out["messages"].as_array().unwrap() {
            for k in m.as_object().unwrap().keys() {
                assert!(SPEC_MESSAGE.contains(&k.as_str()), "`{k}` is not a ChatMessage property");
            }
            assert!(m["content"].is_string(), "content is required and a string: {m}");
        }
        out
    }

    fn translate(v: Value) -> Value {
        translate_as(v, "llama3.2")
    }

    fn translate_err(v: Value) -> ApiError {
        request_body(&chat(v), "llama3.2").expect_err("must be rejected")
    }

    fn make() -> Box<dyn StreamTranslate> {
        Box::new(StreamTranslator::new(CREATED, "fallback-model"))
    }

    fn weather_tool() -> Value {
        json!({"type":"function","function":{"name":"get_weather","description":"Get the weather in a given city",
            "parameters":{"type":"object","properties":{"city":{"type":"string","description":"The city to get the weather for"}},"required":["city"]}}})
    }

    // ------------------------------------------------------------------------------ requests

    #[test]
    fn documented_tool_request_is_reproduced() {
        let want = doc_request("Chat request (No streaming, with tools)");
        let got = translate(json!({"model":"x","messages":[{"role":"user","content":"what is the weather in tokyo?"}],
            "tools":[weather_tool()],"stream":false,"tool_choice":"auto"}));
        assert_eq!(got, want);
        let want = doc_request("Chat request (Streaming with tools)");
        let got = translate(json!({"model":"x","messages":[{"role":"user","content":"what is the weather in tokyo?"}],
            "tools":[weather_tool()],"stream":true}));
        assert_eq!(got, want);
    }

    #[test]
    fn documented_history_with_tool_result_is_reproduced() {
        let want = doc_request("Chat request (With history, with tools)");
        let got = translate(json!({"model":"x","stream":false,"tools":[weather_tool()],"messages":[
            {"role":"user","content":"what is the weather in Toronto?"},
            {"role":"assistant","content":null,"tool_calls":[{"id":"call_7","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Toronto\"}"}}]},
            {"role":"tool","tool_call_id":"call_7","content":"11 degrees celsius"}
        ]}));
        assert_eq!(got, want, "assistant tool_calls with object arguments, tool result with tool_name");
    }

    #[test]
    fn documented_structured_output_image_and_options_requests() {
        let want = doc_request("Chat request (Structured outputs)");
        let got = translate_as(json!({"model":"x","stream":false,"temperature":0,
            "messages":[{"role":"user","content": want["messages"][0]["content"]}],
            "response_format":{"type":"json_schema","json_schema":{"name":"info","schema": want["format"]}}}), "llama3.1");
        assert_eq!(floats(got), floats(want), "(the docs write temperature 0, the gateway 0.0)");

        let want = doc_request("Chat request (with images)");
        let image = want["messages"][0]["images"][0].as_str().unwrap();
        let got = translate_as(json!({"model":"x","stream":true,"messages":[{"role":"user","content":[
            {"type":"text","text":"what is in this image?"},
            {"type":"image_url","image_url":{"url": format!("data:image/png;base64,{image}")}}]}]}), "llava");
        assert_eq!(got["stream"], true, "always explicit");
        let mut got_no_stream = got.clone();
        got_no_stream.as_object_mut().unwrap().remove("stream");
        assert_eq!(got_no_stream, want, "the base64 without its data: prefix");

        let want = doc_request("Chat request (Reproducible outputs)");
        let got = translate(json!({"model":"x","stream":true,"seed":101,"temperature":0,"messages":[{"role":"user","content":"Hello!"}]}));
        let mut got_no_stream = got.clone();
        got_no_stream.as_object_mut().unwrap().remove("stream");
        assert_eq!(floats(got_no_stream), floats(want));
    }

    #[test]
    fn sampling_fields_go_to_options() {
        let got = translate(json!({"model":"x","messages":[{"role":"system","content":"s"},{"role":"developer","content":[{"type":"text","text":"d"}]},{"role":"user","content":"hi"}],
            "temperature":0.7,"top_p":0.9,"max_tokens":10,"max_completion_tokens":20,"stop":"END","seed":-3,
            "frequency_penalty":0.5,"presence_penalty":0.25,"user":"u","stream_options":{"include_usage":true}}));
        assert_eq!(got["options"], json!({"temperature":0.7,"top_p":0.9,"num_predict":20,"stop":["END"],"seed":-3,"frequency_penalty":0.5,"presence_penalty":0.25}));
        assert_eq!(got["messages"][0], json!({"role":"system","content":"s"}));
        assert_eq!(got["messages"][1], json!({"role":"system","content":"d"}));
        assert_eq!(got["stream"], false, "explicit false: Ollama streams by default");
        let bare = translate(json!({"model":"x","messages":[{"role":"user","content":"hi"}],"stop":[]}));
        assert!(bare.get("options").is_none());
        assert_eq!(translate(json!({"model":"x","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_object"}}))["format"], "json");
        assert!(translate(json!({"model":"x","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"text"}})).get("format").is_none());
    }

    #[test]
    fn reasoning_effort_becomes_think_and_reasoning_goes_back_as_thinking() {
        for (effort, want) in [("none", json!(false)), ("minimal", json!("low")), ("low", json!("low")), ("medium", json!("medium")), ("high", json!("high")), ("xhigh", json!("max"))] {
            let got = translate(json!({"model":"x","messages":[{"role":"user","content":"1+1?"}],"reasoning_effort":effort}));
            assert_eq!(got["think"], want, "{effort}");
        }
        assert!(translate(json!({"model":"x","messages":[{"role":"user","content":"1+1?"}]})).get("think").is_none());
        assert_eq!(translate_err(json!({"model":"x","messages":[{"role":"user","content":"1+1?"}],"reasoning_effort":"lots"})).param.as_deref(), Some("reasoning_effort"));
        let got = translate(json!({"model":"x","messages":[{"role":"user","content":"q"},{"role":"assistant","content":"2","reasoning_content":"1+1=2"}]}));
        assert_eq!(got["messages"][1], json!({"role":"assistant","content":"2","thinking":"1+1=2"}));
    }

    #[test]
    fn tool_choice_is_best_effort() {
        let tools = json!([weather_tool(), {"type":"function","function":{"name":"now"}}]);
        let with = |choice: Value| translate(json!({"model":"x","messages":[{"role":"user","content":"hi"}],"tools":tools,"tool_choice":choice}));
        assert_eq!(with(json!("auto"))["tools"].as_array().unwrap().len(), 2);
        assert_eq!(with(json!("required"))["tools"].as_array().unwrap().len(), 2);
        assert!(with(json!("none")).get("tools").is_none(), "none: no tools offered");
        let named = with(json!({"type":"function","function":{"name":"now"}}));
        assert_eq!(named["tools"], json!([{"type":"function","function":{"name":"now","parameters":{"type":"object","properties":{}}}}]));
        assert!(named.get("tool_choice").is_none());
        let e = translate_err(json!({"model":"x","messages":[{"role":"user","content":"hi"}],"tools":tools,"tool_choice":{"type":"function","function":{"name":"nope"}}}));
        assert_eq!(e.param.as_deref(), Some("tool_choice"));
        let e = translate_err(json!({"model":"x","messages":[{"role":"user","content":"hi"}],"tools":tools,"tool_choice":"maybe"}));
        assert_eq!(e.param.as_deref(), Some("tool_choice"));
        let e = translate_err(json!({"model":"x","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"retrieval","function":{"name":"r"}}]}));
        assert_eq!(e.param.as_deref(), Some("tools[0].type"));
    }

    #[test]
    fn unsupported_and_invalid_input_is_400() {
        let e = translate_err(json!({"model":"x","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://example.com/cat.png"}}]}]}));
        assert_eq!((e.status, e.param.as_deref()), (400, Some("messages[0].content[0].image_url.url")));
        assert!(e.message.contains("does not fetch image URLs"), "{}", e.message);
        for url in ["ftp://x", "data:image/png,abc", "data:;base64,AA"] {
            let e = translate_err(json!({"model":"x","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":url}}]}]}));
            assert_eq!(e.param.as_deref(), Some("messages[0].content[0].image_url.url"), "{url}");
        }
        let e = translate_err(json!({"model":"x","messages":[{"role":"system","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AA"}}]}]}));
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0]"));
        let e = translate_err(json!({"model":"x","messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{"data":"AA","format":"wav"}}]}]}));
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0]"));
        let e = translate_err(json!({"model":"x","messages":[{"role":"user","content":"a"},{"role":"assistant","tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"[1]"}}]}]}));
        assert_eq!(e.param.as_deref(), Some("messages[1].tool_calls[0].function.arguments"));
        let e = translate_err(json!({"model":"x","messages":[{"role":"user","content":"a"}],"n":2}));
        assert_eq!(e.param.as_deref(), Some("n"));
        let e = translate_err(json!({"model":"x","messages":[{"role":"function","name":"f","content":"a"}]}));
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        // A tool result whose call is unknown goes without tool_name.
        let got = translate(json!({"model":"x","messages":[{"role":"tool","tool_call_id":"zzz","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}));
        assert_eq!(got["messages"][0], json!({"role":"tool","content":"a\nb"}));
    }

    // ------------------------------------------------------------------------------ responses

    fn translate_response(v: &Value) -> Value {
        serde_json::from_slice(&response_body(v.to_string().as_bytes(), "fallback-model", CREATED).expect("translates")).unwrap()
    }

    #[test]
    fn documented_responses_are_translated() {
        let r = &doc_responses("Chat request (No streaming, with tools)")[0];
        let out = translate_response(r);
        assert_eq!(out["object"], "chat.completion");
        assert_eq!(out["id"], "chatcmpl-20250707203253844124");
        assert_eq!(out["created"], CREATED);
        assert_eq!(out["model"], "llama3.2");
        let c = &out["choices"][0];
        assert_eq!(c["index"], 0);
        assert!(c["message"]["content"].is_null(), "no text next to tool calls");
        assert_eq!(c["message"]["tool_calls"], json!([{"id":"call_0","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Tokyo\"}"}}]));
        assert_eq!(c["finish_reason"], "tool_calls", "done_reason stop with tool calls");
        assert_eq!(out["usage"], json!({"prompt_tokens":169,"completion_tokens":18,"total_tokens":187}));

        let out = translate_response(&doc_responses("Chat request (Structured outputs)")[0]);
        let content = out["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(serde_json::from_str::<Value>(content).unwrap(), json!({"age":22,"available":false}));
        assert_eq!(out["choices"][0]["finish_reason"], "stop");
        assert_eq!(out["usage"], json!({"prompt_tokens":34,"completion_tokens":12,"total_tokens":46}));

        let out = translate_response(&doc_responses("Chat request (No streaming)")[0]);
        assert_eq!(out["choices"][0]["message"]["content"], "Hello! How are you today?");
        assert_eq!(out["choices"][0]["finish_reason"], "stop", "no done_reason");
        assert_eq!(out["usage"]["completion_tokens"], 298);

        let out = translate_response(&doc_responses("Chat request (with tools)")[0]);
        let args = out["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"].as_str().unwrap();
        assert_eq!(serde_json::from_str::<Value>(args).unwrap(), json!({"format":"celsius","location":"Paris, FR"}));
    }

    #[test]
    fn thinking_length_ids_and_errors_in_whole_answers() {
        let out = translate_response(&json!({"model":"gpt-oss","created_at":"2025-01-01T00:00:00Z","message":{"role":"assistant","content":"2","thinking":"1+1"},
            "done":true,"done_reason":"length","prompt_eval_count":5,"eval_count":9}));
        assert_eq!(out["choices"][0]["message"]["reasoning_content"], "1+1");
        assert_eq!(out["choices"][0]["finish_reason"], "length");
        let out = translate_response(&json!({"message":{"role":"assistant","content":"","tool_calls":[
            {"id":"call_abc","function":{"name":"a","arguments":{}}},{"function":{"name":"b"}}]},"done":true}));
        let calls = &out["choices"][0]["message"]["tool_calls"];
        assert_eq!(calls[0]["id"], "call_abc", "Ollama's id when it sends one");
        assert_eq!(calls[0]["function"]["arguments"], "{}");
        assert_eq!(calls[1]["id"], "call_1");
        assert_eq!(calls[1]["function"]["arguments"], "{}");
        assert_eq!(out["model"], "fallback-model");
        assert_eq!(out["id"], format!("chatcmpl-{CREATED}"));
        let e = response_body(br#"{"error":"model crashed"}"#, "m", CREATED).unwrap_err();
        assert_eq!((e.status, e.code.as_deref()), (502, Some("upstream_error")));
        assert!(e.message.contains("model crashed"));
        assert_eq!(response_body(b"not json", "m", CREATED).unwrap_err().status, 502);
    }

    #[test]
    fn errors_keep_their_status() {
        for (status, kind) in [(400, "invalid_request_error"), (404, "invalid_request_error"), (429, "rate_limit_error"), (500, "api_error"), (502, "api_error"), (503, "service_unavailable_error")] {
            let e = error_json(&map_error(status, br#"{"error":"the model failed to generate a response"}"#));
            assert_eq!(e["message"], "the model failed to generate a response");
            assert_eq!(e["type"], kind, "{status}");
        }
        assert_eq!(error_json(&map_error(404, br#"{"error":"model 'x' not found"}"#))["code"], "model_not_found");
        let e = error_json(&map_error(502, b"upstream connect error"));
        assert!(e["message"].as_str().unwrap().contains("upstream connect error"));
    }

    // ------------------------------------------------------------------------------ embeddings

    #[test]
    fn embeddings_round_trip() {
        let doc = section("Request (Multiple input)");
        let shell = &blocks(doc, "shell")[0];
        // The response example is in the "#### Response" section that follows.
        let after = &API_MD[API_MD.find("\n#### Request (Multiple input)\n").unwrap()..];
        let want: Value = serde_json::from_str(&shell[shell.find("-d '").unwrap() + 4..shell.rfind('\'').unwrap()]).unwrap();
        let req = parse_embeddings_request(br#"{"model":"e","input":["Why is the sky blue?","Why is the grass green?"]}"#).unwrap();
        let got: Value = serde_json::from_slice(&embeddings_request_body(&req, "all-minilm").unwrap()).unwrap();
        assert_eq!(got, want);
        let one = parse_embeddings_request(br#"{"model":"e","input":"hi","dimensions":128}"#).unwrap();
        let got: Value = serde_json::from_slice(&embeddings_request_body(&one, "m").unwrap()).unwrap();
        assert_eq!(got, json!({"model":"m","input":"hi","dimensions":128}));
        let tokens = parse_embeddings_request(br#"{"model":"e","input":[[1,2]]}"#).unwrap();
        assert_eq!(embeddings_request_body(&tokens, "m").unwrap_err().param.as_deref(), Some("input"));

        let answer = &blocks(after, "json")[0];
        let out: Value = serde_json::from_slice(&embeddings_response_body(answer.as_bytes(), "all-minilm", EncodingFormat::Float).unwrap()).unwrap();
        assert_eq!(out["object"], "list");
        assert_eq!(out["data"].as_array().unwrap().len(), 2);
        assert_eq!(out["data"][1]["index"], 1);
        let first = out["data"][0]["embedding"].as_array().unwrap();
        assert_eq!(first.len(), 10);
        assert!((first[0].as_f64().unwrap() - 0.010071029).abs() < 1e-6);
        assert_eq!(out["usage"]["prompt_tokens"], 0, "this example has no prompt_eval_count");
        let with_count = json!({"model":"m","embeddings":[[0.5]],"prompt_eval_count":8});
        let out: Value = serde_json::from_slice(&embeddings_response_body(with_count.to_string().as_bytes(), "m", EncodingFormat::Base64).unwrap()).unwrap();
        assert_eq!(out["usage"], json!({"prompt_tokens":8,"total_tokens":8}));
        assert!(out["data"][0]["embedding"].is_string());
    }

    // ------------------------------------------------------------------------------ streams

    #[test]
    fn documented_text_stream() {
        let docs = doc_responses("Chat request (Streaming)");
        let input = ndjson(&docs);
        let out = assert_split_invariant(&make, input.as_bytes());
        // The id is made of created_at's digits: 2023-08-04T08:52:19.385406455-07:00.
        let sum = summarize(&out, Some("chatcmpl-202308040852193854064550700"), "llama3.2", Some(CREATED));
        assert!(sum.role_first);
        assert_eq!(sum.content, "The");
        assert_eq!(sum.finish, vec!["stop"]);
        assert_eq!(sum.usage, Some(json!({"prompt_tokens":26,"completion_tokens":282,"total_tokens":308})));
        assert!(sum.done);
    }

    #[test]
    fn documented_tool_stream() {
        let input = ndjson(&doc_responses("Chat request (Streaming with tools)"));
        let out = assert_split_invariant(&make, input.as_bytes());
        let sum = summarize(&out, None, "llama3.2", Some(CREATED));
        assert_eq!(sum.tools, vec![("call_0".into(), "get_weather".into(), "{\"city\":\"Tokyo\"}".into())]);
        assert_eq!(sum.content, "");
        assert_eq!(sum.finish, vec!["tool_calls"]);
        assert_eq!(sum.usage, Some(json!({"prompt_tokens":169,"completion_tokens":15,"total_tokens":184})));
        assert!(sum.done);
    }

    fn line(content: &str, thinking: Option<&str>) -> Value {
        let mut m = json!({"role":"assistant","content":content});
        if let Some(t) = thinking {
            m["thinking"] = json!(t);
        }
        json!({"model":"qwen3","created_at":"2025-10-26T17:15:24.097767Z","message":m,"done":false})
    }

    fn done_line(reason: &str) -> Value {
        json!({"model":"qwen3","created_at":"2025-10-26T17:15:24.166576Z","message":{"role":"assistant","content":"!"},
               "done":true,"done_reason":reason,"prompt_eval_count":11,"eval_count":7})
    }

    #[test]
    fn thinking_then_text_with_crlf_and_unterminated_last_line() {
        let input = format!(
            "{}\r\n{}\r\n{}\r\n\r\n{}",
            line("", Some("Let me ")),
            line("", Some("think.")),
            line("caf\u{e9} \"ok\"", None),
            done_line("length")
        );
        let out = assert_split_invariant(&make, input.as_bytes());
        let sum = summarize(&out, Some("chatcmpl-20251026171524097767"), "qwen3", Some(CREATED));
        assert_eq!(sum.reasoning, "Let me think.");
        assert_eq!(sum.content, "caf\u{e9} \"ok\"!", "text on the done line is kept");
        assert_eq!(sum.finish, vec!["length"]);
        assert_eq!(sum.usage.unwrap()["total_tokens"], 18);
    }

    #[test]
    fn mid_stream_error_line_is_an_error_event() {
        let error_line = ERRORS_MDX.lines().find(|l| l.starts_with("{\"error\"")).expect("documented error line");
        let input = format!("{}\n{}\n{error_line}\n{}\n", line("Yes", None), line(".", None), done_line("stop"));
        let out = assert_split_invariant(&make, input.as_bytes());
        let sum = summarize(&out, None, "qwen3", None);
        assert_eq!(sum.content, "Yes.");
        assert!(!sum.done);
        assert!(sum.finish.is_empty());
        let err = sum.error.unwrap();
        assert_eq!(err["code"], "upstream_error");
        assert_eq!(err["type"], "api_error");
        assert!(err["message"].as_str().unwrap().contains("an error was encountered while running the model"));
        // An error as the very first line.
        let (evs, done) = events(&run_chunks(&make, [error_line.as_bytes()]).0);
        assert!(!done);
        assert_eq!(evs.len(), 1);
    }

    #[test]
    fn stream_without_done_is_truncated() {
        let input = ndjson(&[line("Hel", None), line("lo", None)]);
        let out = assert_split_invariant(&make, input.as_bytes());
        let sum = summarize(&out, None, "qwen3", None);
        assert_eq!(sum.content, "Hello");
        assert!(!sum.done);
        assert_eq!(sum.error.unwrap()["code"], "stream_truncated");
        let (evs, _) = events(&run_chunks(&make, [&b""[..]]).0);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0]["error"]["code"], "stream_truncated");
        // Lines after done are ignored.
        let out = run_chunks(&make, [ndjson(&[line("a", None), done_line("stop"), line("late", None)]).as_bytes()]).0;
        let sum = summarize(&out, None, "qwen3", None);
        assert_eq!(sum.content, "a!");
        assert!(sum.done);
    }

    #[test]
    fn unreadable_lines_and_garbage_terminate_cleanly() {
        let input = format!("{}\n{{\"message\":{{\"content\":\n{}\n", line("ok", None), done_line("stop"));
        let out = assert_split_invariant(&make, input.as_bytes());
        let sum = summarize(&out, None, "qwen3", None);
        assert_eq!(sum.content, "ok");
        assert_eq!(sum.error.unwrap()["code"], "invalid_upstream_event");
        let docs = ndjson(&doc_responses("Chat request (Streaming with tools)"));
        let inputs: Vec<Vec<u8>> = vec![
            docs.into_bytes(),
            b"\xff\xfe\n".to_vec(),
            b"[1,2]\n".to_vec(),
            b"{\"done\":true,\"eval_count\":-1e999}\n".to_vec(),
            b"{\"done\":\"yes\"}\n".to_vec(),
            b"{\"message\":{\"tool_calls\":[{\"function\":null}]},\"done\":true}\n".to_vec(),
        ];
        for input in &inputs {
            for cut in 0..=input.len() {
                let (out, _) = run_chunks(&make, [&input[..cut]]);
                assert_terminates(&out);
            }
        }
        let mut t = StreamTranslator::new(CREATED, "m");
        let mut o = Vec::new();
        t.push(&vec![b'{'; crate::stream::ndjson::MAX_LINE_BYTES + 1], &mut o);
        t.finish(&mut o);
        let (evs, _) = events(&o);
        assert_eq!(evs[0]["error"]["code"], "stream_overflow");
    }

    #[test]
    fn usage_is_reported_once_done() {
        let mut t = StreamTranslator::new(CREATED, "m");
        let mut out = Vec::new();
        t.push(ndjson(&[line("a", None)]).as_bytes(), &mut out);
        assert!(t.usage().is_none());
        t.push(ndjson(&[done_line("stop")]).as_bytes(), &mut out);
        let u = t.usage().unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.total_tokens), (11, 7, 18));
    }
}

#[cfg(test)]
mod dispatch_tests {
    use crate::config::Schema;
    use crate::providers::testutil::{backend, upstream, CREATED};
    use crate::providers::{self, Operation};
    use serde_json::{json, Value};

    #[test]
    fn ollama_backend_end_to_end() {
        let b = backend(json!({"schema":"ollama"}));
        assert!(b.credential.is_none(), "no auth by default");
        assert_eq!((b.credential_header(), b.base_path()), ("authorization", ""));
        let up = upstream(Operation::Chat, &b, &json!({"model":"m","messages":[{"role":"user","content":"hi"}]}), "llama3.2").unwrap();
        assert_eq!(up.path, "/api/chat");
        let body: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(body["stream"], false);
        let d = providers::Dialect::from(&b);
        assert!(providers::translates_responses(d, &up.hints));
        let out: Value = serde_json::from_slice(&providers::response_body(d, &up.hints,
            br#"{"model":"llama3.2","created_at":"2024-01-01T00:00:00Z","message":{"role":"assistant","content":"Hi"},"done":true,"done_reason":"stop","prompt_eval_count":2,"eval_count":1}"#, CREATED).unwrap()).unwrap();
        assert_eq!(out["choices"][0]["message"]["content"], "Hi");

        let up = upstream(Operation::Chat, &b, &json!({"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}), "llama3.2").unwrap();
        let mut t = providers::stream_translator(d, &up.hints, CREATED).expect("NDJSON streams are translated");
        let mut out = Vec::new();
        t.push(b"{\"model\":\"llama3.2\",\"message\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"done\":false}\n{\"done\":true,\"prompt_eval_count\":2,\"eval_count\":1}\n", &mut out);
        t.finish(&mut out);
        assert!(String::from_utf8(out).unwrap().ends_with("data: [DONE]\n\n"));
        assert_eq!(t.usage().unwrap().total_tokens, 3);

        let b = backend(json!({"schema":"ollama","host":"ollama.com","credential":{"env":"OLLAMA_API_KEY"},"base_path":"/proxy"}));
        assert_eq!(b.credential_prefix(), "Bearer ");
        let up = upstream(Operation::Embeddings, &b, &json!({"model":"e","input":"hi"}), "embeddinggemma").unwrap();
        assert_eq!(up.path, "/proxy/api/embed");
        let out: Value = serde_json::from_slice(&providers::response_body(d, &up.hints, br#"{"model":"embeddinggemma","embeddings":[[0.25]],"prompt_eval_count":3}"#, CREATED).unwrap()).unwrap();
        assert_eq!(out["data"][0]["embedding"], json!([0.25]));
        assert_eq!(out["usage"]["prompt_tokens"], 3);
        assert_eq!(providers::error_status(Schema::Ollama, 503), 503);
        let e: Value = serde_json::from_slice(&providers::error_body(Schema::Ollama, 500, br#"{"error":"boom"}"#)).unwrap();
        assert_eq!(e["error"]["message"], "boom");
    }
}
