//! AWS Bedrock Runtime ⇄ OpenAI: chat through the Converse API (`POST /model/{modelId}/converse`
//! and `/converse-stream`), embeddings through `InvokeModel` (`POST /model/{modelId}/invoke`) with
//! Amazon Titan or Cohere embedding models.
//!
//! * [`chat_upstream`] / [`request_body`] build the Converse request from an OpenAI chat request.
//! * [`response_body`] turns a whole `ConverseResponse` into a `chat.completion`.
//! * [`StreamTranslator`] decodes the binary `application/vnd.amazon.eventstream` answer of
//!   `ConverseStream` incrementally (CRCs checked, `p` padding ignored) into
//!   `chat.completion.chunk` SSE, always ending with a usage-only chunk and `data: [DONE]`.
//! * [`embeddings_upstream`] / [`embeddings_response`]: Titan text embeddings (one input per
//!   request) and Cohere embed models (`cohere.*`, many inputs).
//! * [`map_status`] / [`map_error`]: Bedrock's `{"message"}` errors into OpenAI's shape; model
//!   errors and timeouts (424, 408) become 503 so Envoy retries them.
//! * Authentication: AWS SigV4 ([`sigv4_headers`], service `bedrock`) when AWS keys were configured,
//!   otherwise the backend's `credential` (a Bedrock API key) goes as `authorization: Bearer …` by the
//!   filter's generic code, unsigned.
//!
//! Everything here runs on untrusted bytes inside the VM: no `unwrap`, no indexing on input.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::util::{s, too_many, write_error_event, MAX_STREAM_TOOL_CALLS, write_chunk, write_usage_and_done, Phase, Str};
use super::{sigv4, AttemptContext, Operation, ResponseHints, UpstreamRequest};
use crate::api::chat::{
    parse_chat_request, ChatCompletion, ChatRequest, Choice, Content, ContentPart,
    Delta, FunctionCall, FunctionDelta, PromptTokensDetails, ResponseFormat, ResponseMessage, Role, Stop, ToolCall,
    ToolCallDelta, ToolChoice, Usage,
};
use crate::api::embeddings::{embeddings_response_json, parse_embeddings_request, EncodingFormat};
use crate::api::error::{kind_for_status, ApiError};
use crate::config::{AwsCredentials, Backend};
use crate::stream::eventstream::{EventStreamDecoder, Message as Frame};

/// SigV4 signing name of Bedrock Runtime.
pub const SIGNING_SERVICE: &str = "bedrock";

/// The request-body field that carries Bedrock-only Converse fields, passed through verbatim.
pub const NAMESPACE: &str = "bedrock";

/// Converse top-level fields a client may send through `"bedrock": {…}`. Everything the gateway
/// translates itself (messages, system, inferenceConfig, toolConfig) is deliberately not here.
pub const PASSTHROUGH_FIELDS: &[&str] = &[
    "additionalModelRequestFields",
    "additionalModelResponseFieldPaths",
    "guardrailConfig",
    "outputConfig",
    "performanceConfig",
    "promptVariables",
    "requestMetadata",
    "serviceTier",
];

// =============================================================================================
// Dispatch helpers (called from providers/mod.rs)
// =============================================================================================

/// The Converse request for one attempt: body, path and authentication headers.
pub fn chat_upstream(backend: &Backend, body: &[u8], ctx: &AttemptContext) -> Result<UpstreamRequest, ApiError> {
    let req = parse_chat_request(body)?;
    let stream = req.is_stream();
    let default_max_tokens = backend.default_max_tokens.unwrap_or(crate::config::DEFAULT_MAX_TOKENS);
    let out = request_body(&req, body, ctx.model, default_max_tokens)?;
    let path = model_path(backend.base_path(), ctx.model, if stream { "converse-stream" } else { "converse" });
    let headers = auth_headers(backend, ctx, &path, &out)?;
    Ok(UpstreamRequest { path, body: out, headers, hints: ResponseHints::chat(stream, ctx.model) })
}

/// The `InvokeModel` request embedding the client's input with a Titan or Cohere model.
pub fn embeddings_upstream(backend: &Backend, body: &[u8], ctx: &AttemptContext) -> Result<UpstreamRequest, ApiError> {
    let req = parse_embeddings_request(body)?;
    let encoding = req.encoding_format.unwrap_or(EncodingFormat::Float);
    let Some(texts) = req.input.texts() else {
        return Err(ApiError::invalid_param(
            "input",
            "Token-id input is not supported by the Bedrock backend; send the text to embed.",
        ));
    };
    let out = embeddings_request_body(ctx.model, &texts, req.dimensions)?;
    let path = model_path(backend.base_path(), ctx.model, "invoke");
    let headers = auth_headers(backend, ctx, &path, &out)?;
    let hints = ResponseHints { op: Operation::Embeddings, stream: false, encoding, model: ctx.model.to_string() };
    Ok(UpstreamRequest { path, body: out, headers, hints })
}

/// `{base}/model/{modelId}/{action}`, the model id percent-encoded as one path segment
/// (`:` → `%3A`, `/` of an ARN → `%2F`), as the AWS SDKs send it.
pub fn model_path(base: &str, model: &str, action: &str) -> String {
    format!("{base}/model/{}/{action}", sigv4::uri_encode(model, true))
}

/// SigV4 headers when AWS keys are configured; none otherwise (a Bedrock API key, if configured,
/// is sent by the filter as `authorization: Bearer …`).
fn auth_headers(backend: &Backend, ctx: &AttemptContext, path: &str, body: &[u8]) -> Result<Vec<(&'static str, String)>, ApiError> {
    let Some(creds) = ctx.aws else { return Ok(Vec::new()) };
    let Some(host) = backend.host.as_deref().filter(|h| !h.is_empty()) else {
        return Err(ApiError::gateway(
            500,
            "Gateway misconfiguration: a Bedrock backend needs `host` (e.g. bedrock-runtime.us-east-1.amazonaws.com) to sign requests.",
        ));
    };
    Ok(sigv4_headers(creds, host, path, body, ctx.now_unix))
}

/// SigV4 headers for a Bedrock request: `x-amz-date`, `x-amz-security-token` (with a session token)
/// and `authorization`.
///
/// The signed headers are exactly `content-type;host;x-amz-date[;x-amz-security-token]`: headers the
/// backend filter sends with these exact values (`host` is the backend's `host`, which the filter
/// sets as `:authority`; `content-type` is always `application/json`). `content-length` and
/// `accept-encoding` are deliberately left unsigned (Envoy may re-frame the body), and so is every
/// header the client or `headers` config adds. The canonical URI is the wire path encoded once
/// more, as every AWS service but S3 requires; the payload hash covers the final body.
pub fn sigv4_headers(creds: &AwsCredentials, host: &str, path: &str, body: &[u8], now_unix: u64) -> Vec<(&'static str, String)> {
    let amz_date = sigv4::amz_date(now_unix);
    let payload = sigv4::sha256_hex(body);
    let mut signed: Vec<(&str, &str)> = vec![("content-type", "application/json"), ("host", host), ("x-amz-date", &amz_date)];
    if let Some(token) = creds.session_token.as_deref() {
        signed.push(("x-amz-security-token", token));
    }
    let key = sigv4::Key {
        access_key_id: &creds.access_key_id,
        secret_access_key: &creds.secret_access_key,
        region: &creds.region,
        service: SIGNING_SERVICE,
    };
    let req = sigv4::Request { method: "POST", path, query: &[], headers: &signed, payload_sha256: &payload, double_encode_path: true };
    let s = sigv4::sign(&key, &req, &amz_date);
    let mut out = Vec::with_capacity(3);
    if let Some(token) = creds.session_token.as_deref() {
        out.push(("x-amz-security-token", token.to_string()));
    }
    out.push(("x-amz-date", amz_date));
    out.push(("authorization", s.authorization));
    out
}

// =============================================================================================
// Chat request
// =============================================================================================

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConverseRequest<'a> {
    messages: Vec<BMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<SystemBlock<'a>>,
    #[serde(skip_serializing_if = "InferenceConfig::is_empty")]
    inference_config: InferenceConfig<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfig<'a>>,
    #[serde(flatten)]
    passthrough: Map<String, Value>,
}

#[derive(Serialize)]
struct SystemBlock<'a> {
    text: Cow<'a, str>,
}

#[derive(Serialize)]
struct BMessage<'a> {
    role: &'static str,
    content: Vec<Block<'a>>,
}

/// A Converse content block: a union, one key per kind (`{"text": …}`, `{"toolUse": {…}}`, …).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum Block<'a> {
    Text(&'a str),
    Image(ImageBlock<'a>),
    ToolUse(ToolUseBlock<'a>),
    ToolResult(ToolResultBlock<'a>),
}

impl Block<'_> {
    fn is_tool_result(&self) -> bool {
        matches!(self, Block::ToolResult(_))
    }
}

#[derive(Serialize)]
struct ImageBlock<'a> {
    format: &'static str,
    source: ImageSource<'a>,
}

#[derive(Serialize)]
struct ImageSource<'a> {
    /// Base64, as rest-json carries blobs.
    bytes: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolUseBlock<'a> {
    tool_use_id: &'a str,
    name: &'a str,
    input: Value,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolResultBlock<'a> {
    tool_use_id: &'a str,
    content: Vec<ToolResultContent<'a>>,
    status: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum ToolResultContent<'a> {
    Text(&'a str),
    Image(ImageBlock<'a>),
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct InferenceConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<Vec<&'a str>>,
}

impl InferenceConfig<'_> {
    fn is_empty(&self) -> bool {
        self.max_tokens.is_none() && self.temperature.is_none() && self.top_p.is_none() && self.stop_sequences.is_none()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfig<'a> {
    tools: Vec<ToolEntry<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<BToolChoice<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolEntry<'a> {
    tool_spec: ToolSpec<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolSpec<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: InputSchema<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

#[derive(Serialize)]
struct InputSchema<'a> {
    json: Cow<'a, Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum BToolChoice<'a> {
    Auto(Empty),
    Any(Empty),
    Tool(NamedTool<'a>),
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct NamedTool<'a> {
    name: &'a str,
}

/// Appended to the system prompt for `response_format: {"type":"json_object"}`.
const JSON_OBJECT_INSTRUCTION: &str = "Respond with a single valid JSON object and nothing else: \
no prose, no explanation and no Markdown code fences before or after it.";

/// Builds the Converse JSON body (the model id goes in the path, not the body).
///
/// * `system` and `developer` messages, wherever they appear, become `system` text blocks (one per
///   message, empty ones dropped).
/// * `user` / `assistant` messages become content blocks: text, and images from base64 data URLs
///   (`{image:{format:"png|jpeg|gif|webp", source:{bytes}}}`). Converse cannot fetch image URLs, so an
///   http(s) image URL is a 400 naming the parameter. Assistant `tool_calls` become `toolUse` blocks
///   after the assistant's text (empty text is dropped: Converse rejects blank text blocks).
/// * `tool` messages become `toolResult` blocks (`content: [{text}]`, `status: "success"`) in a user
///   turn. The result is always sent as `text`, never as `json`: OpenAI tool output is a string,
///   text keeps it exactly, and several Converse models reject `json` tool results.
/// * Converse requires alternating roles: consecutive turns of the same role are merged into one
///   message, and in a merged user turn every `toolResult` block goes before other content.
/// * `max_completion_tokens`/`max_tokens`, `temperature`, `top_p` and `stop` become
///   `inferenceConfig{maxTokens,temperature,topP,stopSequences}` (values unchanged: a temperature
///   over 1 comes back as Bedrock's own 400).
/// * `tools` become `toolConfig.tools[].toolSpec{name,description,inputSchema{json}}`; `tool_choice`
///   `auto` → `{auto:{}}`, `required` → `{any:{}}`, a named function → `{tool:{name}}`, and `none`
///   leaves `toolConfig` out entirely (Converse has no "none"; note Bedrock then rejects a history
///   that contains tool calls). `parallel_tool_calls` has no Converse equivalent and is ignored.
/// * `response_format`: Converse has no JSON mode that every model supports, so `json_object` /
///   `json_schema` are emulated as in the Anthropic backend, by a system instruction (with the
///   schema) — not by a forced tool, which would turn the answer into a tool call and needs
///   `toolChoice` support that only some model families have. Clients that want Bedrock's native
///   structured output on models that support it can send `"bedrock": {"outputConfig": …}`.
/// * `n` > 1 is a 400 (one choice per request).
/// * `"bedrock": {…}` in the client's body carries Converse-only fields, passed through verbatim:
///   `additionalModelRequestFields`, `guardrailConfig`, and the others in [`PASSTHROUGH_FIELDS`];
///   any other key is a 400 naming it.
/// * `reasoning_effort` (`low`/`medium`/`high`): see [`reasoning`]; `none`/`minimal` ask for no
///   reasoning and send nothing.
/// * Not translated: `seed`, `user`, `metadata`, `stream_options` (the stream always reports usage),
///   `reasoning_content` of earlier assistant turns (Converse needs the model's signed reasoning).
pub fn request_body(req: &ChatRequest, raw: &[u8], model: &str, default_max_tokens: u32) -> Result<Vec<u8>, ApiError> {
    if let Some(n) = req.n {
        if n > 1 {
            return Err(ApiError::invalid_param(
                "n",
                format!("`n` = {n} is not supported: the Bedrock backend returns one choice per request."),
            ));
        }
    }

    let mut system: Vec<SystemBlock<'_>> = Vec::new();
    let mut messages: Vec<BMessage<'_>> = Vec::with_capacity(req.messages.len());

    for (i, m) in req.messages.iter().enumerate() {
        match m.role {
            Role::System | Role::Developer => {
                if let Some(c) = &m.content {
                    let text = match c {
                        Content::Text(s) => Cow::Borrowed(s.as_str()),
                        parts => Cow::Owned(parts.joined_text()),
                    };
                    if !text.trim().is_empty() {
                        system.push(SystemBlock { text });
                    }
                }
            }
            Role::User => {
                let mut blocks = Vec::new();
                if let Some(c) = &m.content {
                    content_blocks(c, i, &mut blocks)?;
                }
                push_turn(&mut messages, "user", blocks);
            }
            Role::Assistant => {
                let mut blocks = Vec::new();
                if let Some(c) = &m.content {
                    content_blocks(c, i, &mut blocks)?;
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
                        blocks.push(Block::ToolUse(ToolUseBlock { tool_use_id: &call.id, name: &call.function.name, input }));
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
                let mut content = Vec::new();
                match &m.content {
                    None => {}
                    Some(Content::Text(s)) if s.is_empty() => {}
                    Some(Content::Text(s)) => content.push(ToolResultContent::Text(s)),
                    Some(c @ Content::Parts(_)) => {
                        let mut inner = Vec::new();
                        content_blocks(c, i, &mut inner)?;
                        for b in inner {
                            match b {
                                Block::Text(t) => content.push(ToolResultContent::Text(t)),
                                Block::Image(img) => content.push(ToolResultContent::Image(img)),
                                Block::ToolUse(_) | Block::ToolResult(_) => {}
                            }
                        }
                    }
                }
                let block = Block::ToolResult(ToolResultBlock { tool_use_id, content, status: "success" });
                push_turn(&mut messages, "user", vec![block]);
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
        Some(ResponseFormat::JsonObject) => system.push(SystemBlock { text: Cow::Borrowed(JSON_OBJECT_INSTRUCTION) }),
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
            system.push(SystemBlock { text: Cow::Owned(s) });
        }
        Some(ResponseFormat::Text) | None => {}
    }

    let stop_sequences = req.stop.as_ref().and_then(|s| {
        let v: Vec<&str> = match s {
            Stop::One(one) => vec![one.as_str()],
            Stop::Many(many) => many.iter().map(String::as_str).collect(),
        };
        let v: Vec<&str> = v.into_iter().filter(|s| !s.is_empty()).collect();
        if v.is_empty() {
            None
        } else {
            Some(v)
        }
    });
    let mut inference_config = InferenceConfig {
        max_tokens: req.output_token_limit(),
        temperature: req.temperature,
        top_p: req.top_p,
        stop_sequences,
    };

    let tool_config = tool_config(req)?;
    let mut passthrough = passthrough_fields(raw)?;
    reasoning(req, model, default_max_tokens, tool_config.as_ref(), &mut inference_config, &mut passthrough)?;

    let body = ConverseRequest { messages, system, inference_config, tool_config, passthrough };
    serde_json::to_vec(&body).map_err(|e| ApiError::gateway(500, format!("could not serialise the Converse request: {e}")))
}

/// `reasoning_effort` on Bedrock. Claude models that think (Claude 3.7 Sonnet, Claude 4 and later)
/// get Anthropic's thinking configuration in `additionalModelRequestFields.thinking`, with the
/// budgets of the Anthropic backend (1024 / 8192 / 24576 tokens for low / medium / high), capped
/// below the client's token limit (no thinking when less than 1024 tokens remain) or, without a
/// limit, `maxTokens` raised so the answer keeps its allowance on top of the thinking. As with
/// Anthropic, a thinking model takes no `temperature` and only a `top_p` in 0.95..=1, and a forced
/// tool choice turns thinking off. Any other Bedrock model answers a 400 naming `reasoning_effort`
/// rather than silently ignoring it. A client that sends its own `thinking` (or another reasoning
/// setting) in `bedrock.additionalModelRequestFields` keeps it: `reasoning_effort` is not applied.
fn reasoning(
    req: &ChatRequest,
    model: &str,
    default_max_tokens: u32,
    tools: Option<&ToolConfig<'_>>,
    inference: &mut InferenceConfig<'_>,
    passthrough: &mut Map<String, Value>,
) -> Result<(), ApiError> {
    let Some(effort) = req.reasoning_effort.as_deref() else { return Ok(()) };
    let Some(budget) = super::anthropic::effort_budget(effort) else { return Ok(()) };
    let own = passthrough.get("additionalModelRequestFields").and_then(Value::as_object);
    if own.is_some_and(|f| f.keys().any(|k| matches!(k.as_str(), "thinking" | "reasoning_config" | "reasoningConfig"))) {
        return Ok(());
    }
    if !claude_thinks(model) {
        return Err(ApiError::invalid_param(
            "reasoning_effort",
            format!(
                "`reasoning_effort` is not supported for the Bedrock model `{model}`: on Bedrock it applies to Claude \
                 models with extended thinking (Claude 3.7 Sonnet, Claude 4 and later). Leave it out, or pass the \
                 model's own reasoning settings in `bedrock.additionalModelRequestFields`."
            ),
        ));
    }
    let forced_tool = tools.and_then(|t| t.tool_choice.as_ref()).is_some_and(|c| matches!(c, BToolChoice::Any(_) | BToolChoice::Tool(_)));
    if forced_tool {
        return Ok(());
    }
    let budget = match req.output_token_limit() {
        Some(limit) => match budget.min(limit.saturating_sub(1)) {
            b if b >= super::anthropic::MIN_THINKING_BUDGET => b,
            _ => return Ok(()),
        },
        None => {
            inference.max_tokens = Some(super::anthropic::max_tokens_for_budget(default_max_tokens, budget));
            budget
        }
    };
    inference.temperature = None;
    inference.top_p = inference.top_p.filter(|p| (0.95..=1.0).contains(p));
    let fields = passthrough.entry("additionalModelRequestFields").or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(f) = fields {
        f.insert("thinking".into(), serde_json::json!({ "type": "enabled", "budget_tokens": budget }));
    }
    Ok(())
}

/// Whether a Bedrock model id (or inference profile id such as `us.anthropic.claude-…`) names a
/// Claude model with extended thinking: Claude 3.7 Sonnet, and every family of generation 4 or
/// later (`claude-sonnet-4…`, `claude-opus-4-1…`, `claude-haiku-4-5…`, `claude-4…`).
pub fn claude_thinks(model: &str) -> bool {
    let m = model.to_ascii_lowercase();
    let Some(pos) = m.find("anthropic.claude-") else { return false };
    let rest = &m[pos + "anthropic.claude-".len()..];
    if rest.starts_with("3-7") {
        return true;
    }
    let rest = ["sonnet-", "opus-", "haiku-"].iter().find_map(|f| rest.strip_prefix(f)).unwrap_or(rest);
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse::<u32>().is_ok_and(|generation| (4..100).contains(&generation))
}

fn tool_config(req: &ChatRequest) -> Result<Option<ToolConfig<'_>>, ApiError> {
    let Some(defs) = req.tools.as_ref().filter(|t| !t.is_empty()) else { return Ok(None) };
    let tool_choice = match &req.tool_choice {
        None => None,
        Some(ToolChoice::Mode(mode)) => match mode.as_str() {
            "auto" => Some(BToolChoice::Auto(Empty {})),
            "required" => Some(BToolChoice::Any(Empty {})),
            "none" => return Ok(None),
            other => {
                return Err(ApiError::invalid_param(
                    "tool_choice",
                    format!("Invalid value for 'tool_choice': '{other}'. Supported values are 'none', 'auto' and 'required'."),
                ))
            }
        },
        Some(ToolChoice::Named(named)) => Some(BToolChoice::Tool(NamedTool { name: &named.function.name })),
    };
    let mut tools = Vec::with_capacity(defs.len());
    for (t, def) in defs.iter().enumerate() {
        if def.kind != "function" {
            return Err(ApiError::invalid_param(
                format!("tools[{t}].type"),
                format!("Tool type '{}' is not supported by this backend; only 'function' tools are.", def.kind),
            ));
        }
        let json = match &def.function.parameters {
            Some(p) => Cow::Borrowed(p),
            None => Cow::Owned(serde_json::json!({"type": "object", "properties": {}})),
        };
        tools.push(ToolEntry {
            tool_spec: ToolSpec {
                name: &def.function.name,
                description: def.function.description.as_deref().filter(|d| !d.is_empty()),
                input_schema: InputSchema { json },
                strict: def.function.strict,
            },
        });
    }
    Ok(Some(ToolConfig { tools, tool_choice }))
}

/// The `"bedrock": {…}` namespace of the client's body, checked against [`PASSTHROUGH_FIELDS`].
fn passthrough_fields(raw: &[u8]) -> Result<Map<String, Value>, ApiError> {
    // Most bodies have no namespace: skip the second parse unless the key can be there.
    let needle = b"\"bedrock\"";
    if !raw.windows(needle.len()).any(|w| w == needle) {
        return Ok(Map::new());
    }
    #[derive(Deserialize)]
    struct Outer {
        #[serde(default)]
        bedrock: Option<Value>,
    }
    let outer: Outer = serde_json::from_slice(raw).map_err(|e| ApiError::invalid_request(format!("Invalid JSON body: {e}")))?;
    match outer.bedrock {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(map)) => {
            for k in map.keys() {
                if !PASSTHROUGH_FIELDS.contains(&k.as_str()) {
                    return Err(ApiError::invalid_param(
                        format!("{NAMESPACE}.{k}"),
                        format!(
                            "Unknown Bedrock field '{NAMESPACE}.{k}'. Supported: {}.",
                            PASSTHROUGH_FIELDS.join(", ")
                        ),
                    ));
                }
            }
            Ok(map)
        }
        Some(_) => Err(ApiError::invalid_param(NAMESPACE, format!("'{NAMESPACE}' must be an object of Converse fields."))),
    }
}

/// Appends a turn, merging it into the previous message when that has the same role. In a merged
/// user turn, `toolResult` blocks go before any other block.
fn push_turn<'a>(messages: &mut Vec<BMessage<'a>>, role: &'static str, blocks: Vec<Block<'a>>) {
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
    messages.push(BMessage { role, content: blocks });
}

/// Content → Converse blocks; empty text is dropped (Converse rejects blank text blocks).
fn content_blocks<'a>(content: &'a Content, i: usize, out: &mut Vec<Block<'a>>) -> Result<(), ApiError> {
    match content {
        Content::Text(s) => {
            if !s.is_empty() {
                out.push(Block::Text(s));
            }
        }
        Content::Parts(parts) => {
            for (j, part) in parts.iter().enumerate() {
                match part {
                    ContentPart::Text { text } | ContentPart::Refusal { refusal: text } => {
                        if !text.is_empty() {
                            out.push(Block::Text(text));
                        }
                    }
                    ContentPart::ImageUrl { image_url } => out.push(Block::Image(image_block(&image_url.url, i, j)?)),
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
        format!("Content part type '{kind}' in messages[{i}].content[{j}] is not supported by the Bedrock backend."),
    )
}

/// `data:image/<png|jpeg|gif|webp>;base64,<data>` → an image block. Converse takes image bytes
/// (or S3 locations) only, so URLs are rejected.
fn image_block(url: &str, i: usize, j: usize) -> Result<ImageBlock<'_>, ApiError> {
    let param = format!("messages[{i}].content[{j}].image_url.url");
    let bad = |why: String| ApiError::invalid_param(param.clone(), format!("Invalid image in messages[{i}].content[{j}]: {why}"));
    if let Some(rest) = strip_prefix_ignore_case(url, "data:") {
        let (meta, data) = rest.split_once(',').ok_or_else(|| bad("a data URL needs a ',' before its data.".into()))?;
        let mut params = meta.split(';');
        let media_type = params.next().unwrap_or("").trim().to_ascii_lowercase();
        if !params.any(|p| p.trim().eq_ignore_ascii_case("base64")) {
            return Err(bad("only base64-encoded data URLs are supported.".into()));
        }
        let format = match media_type.as_str() {
            "image/png" => "png",
            "image/jpeg" | "image/jpg" => "jpeg",
            "image/gif" => "gif",
            "image/webp" => "webp",
            "" => return Err(bad("the data URL has no media type.".into())),
            other => return Err(bad(format!("media type '{other}' is not supported; Bedrock accepts png, jpeg, gif and webp."))),
        };
        if data.is_empty() {
            return Err(bad("the data URL has no data.".into()));
        }
        return Ok(ImageBlock { format, source: ImageSource { bytes: data } });
    }
    if strip_prefix_ignore_case(url, "https://").is_some() || strip_prefix_ignore_case(url, "http://").is_some() {
        return Err(ApiError::invalid_param(
            param.clone(),
            format!(
                "Image URLs are not supported by the Bedrock backend (Converse does not fetch images): \
                 send messages[{i}].content[{j}] as a base64 data URL (data:image/png;base64,…)."
            ),
        )
        .with_code("unsupported_image_url"));
    }
    Err(bad("expected a base64 data URL.".into()))
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
        return Some(Value::Object(Map::new()));
    }
    match serde_json::from_str::<Value>(args) {
        Ok(v @ Value::Object(_)) => Some(v),
        _ => None,
    }
}

// =============================================================================================
// Embeddings
// =============================================================================================

/// Whether the model is a Cohere embed model served by Bedrock (`cohere.embed-…`, also behind an
/// inference-profile prefix such as `us.cohere.embed-…`).
pub fn is_cohere_embed(model: &str) -> bool {
    model.starts_with("cohere.") || model.contains(".cohere.") || model.contains("/cohere.")
}

/// Titan text embeddings v1 take `inputText` only (no `dimensions`, no `normalize`).
fn is_titan_v1(model: &str) -> bool {
    model.contains("titan-embed-text-v1") || model.contains("titan-embed-g1-text")
}

/// The `InvokeModel` body: Cohere `{"texts":[…],"input_type":"search_document"}` for `cohere.*`
/// models (all inputs in one call), otherwise Titan `{"inputText","dimensions","normalize"}`, which
/// embeds one input per request — more than one is a 400 rather than several calls.
pub fn embeddings_request_body(model: &str, texts: &[&str], dimensions: Option<u32>) -> Result<Vec<u8>, ApiError> {
    let body = if is_cohere_embed(model) {
        let mut obj = serde_json::json!({"texts": texts, "input_type": "search_document"});
        if let (Some(d), Value::Object(map)) = (dimensions, &mut obj) {
            map.insert("output_dimension".into(), Value::from(d));
        }
        obj
    } else {
        let [text] = texts else {
            return Err(ApiError::invalid_param(
                "input",
                format!(
                    "Bedrock Titan embeds one input per request; this request has {} inputs. Send them one at a time \
                     (or use a Cohere embed model on Bedrock, which takes a batch).",
                    texts.len()
                ),
            ));
        };
        let mut map = Map::new();
        map.insert("inputText".into(), Value::from(*text));
        if is_titan_v1(model) {
            if dimensions.is_some() {
                return Err(ApiError::invalid_param("dimensions", "`dimensions` is not supported by Titan text embeddings v1."));
            }
        } else {
            if let Some(d) = dimensions {
                map.insert("dimensions".into(), Value::from(d));
            }
            // OpenAI's embeddings are unit vectors; Titan v2's default is the same, said explicitly.
            map.insert("normalize".into(), Value::Bool(true));
        }
        Value::Object(map)
    };
    serde_json::to_vec(&body).map_err(|e| ApiError::gateway(500, format!("could not serialise the embeddings request: {e}")))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TitanEmbedding {
    embedding: Vec<f32>,
    #[serde(default)]
    input_text_token_count: Option<u64>,
}

#[derive(Deserialize)]
struct CohereEmbeddings {
    embeddings: CohereVectors,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum CohereVectors {
    Floats(Vec<Vec<f32>>),
    ByType { float: Vec<Vec<f32>> },
}

/// A Titan or Cohere `InvokeModel` answer as an OpenAI embeddings list.
pub fn embeddings_response(body: &[u8], model: &str, encoding: EncodingFormat) -> Result<Vec<u8>, ApiError> {
    let unreadable = |e: serde_json::Error| {
        ApiError::gateway(502, format!("The Bedrock backend returned an embeddings answer the gateway could not read: {e}."))
    };
    if is_cohere_embed(model) {
        let r: CohereEmbeddings = serde_json::from_slice(body).map_err(unreadable)?;
        let vectors = match r.embeddings {
            CohereVectors::Floats(v) | CohereVectors::ByType { float: v } => v,
        };
        // Bedrock reports Cohere's token count only in a response header; usage stays 0 here.
        embeddings_response_json(model, vectors, encoding, 0)
    } else {
        let r: TitanEmbedding = serde_json::from_slice(body).map_err(unreadable)?;
        embeddings_response_json(model, vec![r.embedding], encoding, r.input_text_token_count.unwrap_or(0))
    }
}

// =============================================================================================
// Whole chat response
// =============================================================================================

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseResponse {
    output: Option<ConverseOutput>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<TokenUsage>,
}

#[derive(Deserialize)]
struct ConverseOutput {
    #[serde(default)]
    message: Option<RespMessage>,
}

#[derive(Deserialize)]
struct RespMessage {
    #[serde(default)]
    content: Vec<RespBlock>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RespBlock {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    tool_use: Option<RespToolUse>,
    #[serde(default)]
    reasoning_content: Option<RespReasoning>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RespToolUse {
    #[serde(default)]
    tool_use_id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    input: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RespReasoning {
    #[serde(default)]
    reasoning_text: Option<ReasoningText>,
}

#[derive(Deserialize)]
struct ReasoningText {
    #[serde(default)]
    text: String,
}

/// Bedrock `TokenUsage`. `inputTokens` excludes prompt-cache reads and writes, which are reported
/// separately (as in Anthropic's API).
#[derive(Deserialize, Default, Clone, Copy, Debug)]
#[serde(rename_all = "camelCase")]
struct TokenUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_write_input_tokens: Option<u64>,
}

impl TokenUsage {
    /// OpenAI counts cached prompt tokens inside `prompt_tokens`, so cache reads and writes are added.
    fn to_openai(self) -> Usage {
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let write = self.cache_write_input_tokens.unwrap_or(0);
        let prompt = self.input_tokens.unwrap_or(0).saturating_add(read).saturating_add(write);
        let completion = self.output_tokens.unwrap_or(0);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt.saturating_add(completion),
            prompt_tokens_details: Some(PromptTokensDetails { cached_tokens: read, cache_creation_tokens: write }),
            completion_tokens_details: None,
        }
    }
}

/// Converse `stopReason` → OpenAI `finish_reason`.
fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        // end_turn, stop_sequence, malformed_* and anything new
        _ => "stop",
    }
}

/// A fresh completion id: Bedrock answers carry none (the request id is only in a header).
pub fn new_completion_id() -> String {
    use std::cell::Cell;
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static KEYS: (RandomState, RandomState) = (RandomState::new(), RandomState::new());
        static NEXT: Cell<u64> = const { Cell::new(0) };
    }
    let n = NEXT.with(|c| {
        let n = c.get();
        c.set(n.wrapping_add(1));
        n
    });
    KEYS.with(|(a, b)| {
        let mut h1 = a.build_hasher();
        h1.write_u64(n);
        let mut h2 = b.build_hasher();
        h2.write_u64(n);
        format!("chatcmpl-{:016x}{:016x}", h1.finish(), h2.finish())
    })
}

/// A whole `ConverseResponse` → `chat.completion` (content, reasoning_content, tool_calls,
/// finish_reason, usage). `model` is the model the request named (Converse answers do not).
pub fn response_body(body: &[u8], model: &str, created: u64) -> Result<Vec<u8>, ApiError> {
    response_body_with_id(body, model, &new_completion_id(), created)
}

/// [`response_body`], with the summary the gateway accounts with (see [`super::WholeAnswer`]).
pub fn response_answer(body: &[u8], model: &str, created: u64) -> Result<super::WholeAnswer, ApiError> {
    response_answer_with_id(body, model, &new_completion_id(), created)
}

pub fn response_body_with_id(body: &[u8], model: &str, id: &str, created: u64) -> Result<Vec<u8>, ApiError> {
    response_answer_with_id(body, model, id, created).map(|a| a.body)
}

fn response_answer_with_id(body: &[u8], model: &str, id: &str, created: u64) -> Result<super::WholeAnswer, ApiError> {
    let resp: ConverseResponse = serde_json::from_slice(body)
        .map_err(|e| ApiError::gateway(502, format!("The Bedrock backend returned a response the gateway could not read: {e}.")))?;
    let Some(output) = resp.output else {
        return Err(ApiError::gateway(502, "The Bedrock backend returned a Converse response without `output`."));
    };

    let mut text: Option<String> = None;
    let mut reasoning: Option<String> = None;
    let mut tool_calls = Vec::new();
    for block in output.message.map(|m| m.content).unwrap_or_default() {
        if let Some(t) = block.text {
            text.get_or_insert_with(String::new).push_str(&t);
        }
        if let Some(r) = block.reasoning_content.and_then(|r| r.reasoning_text) {
            reasoning.get_or_insert_with(String::new).push_str(&r.text);
        }
        if let Some(tu) = block.tool_use {
            let arguments = match &tu.input {
                Some(v) => v.to_string(),
                None => "{}".to_string(),
            };
            tool_calls.push(ToolCall {
                id: tu.tool_use_id,
                kind: "function".to_string(),
                function: FunctionCall { name: tu.name, arguments },
            });
        }
        // image, citationsContent, redacted reasoning and future blocks carry nothing OpenAI can show.
    }
    let content = match text {
        Some(t) => Some(t),
        None if tool_calls.is_empty() => Some(String::new()),
        None => None,
    };
    let completion = ChatCompletion {
        id: id.to_string(),
        object: "chat.completion",
        created,
        model: model.to_string(),
        choices: vec![Choice {
            index: 0,
            message: ResponseMessage { role: "assistant", content, reasoning_content: reasoning, tool_calls, refusal: None },
            finish_reason: Some(finish_reason(resp.stop_reason.as_deref().unwrap_or("end_turn")).to_string()),
            logprobs: None,
        }],
        usage: Some(resp.usage.unwrap_or_default().to_openai()),
        system_fingerprint: None,
    };
    super::WholeAnswer::of(completion)
}

// =============================================================================================
// Errors
// =============================================================================================

/// Status the client (and Envoy's retry policy) sees: model errors (424 `ModelErrorException`,
/// `ModelStreamErrorException`) and model timeouts (408 `ModelTimeoutException`) become 503 so the
/// route retries them; 429 (throttling, model not ready) and 5xx stay as they are.
pub fn map_status(status: u16) -> u16 {
    match status {
        408 | 424 => 503,
        s => s,
    }
}

/// The Bedrock exception most likely behind a status, for when the `x-amzn-errortype` response
/// header is not available.
fn exception_for_status(status: u16) -> &'static str {
    match status {
        400 => "ValidationException",
        401 | 403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        408 => "ModelTimeoutException",
        424 => "ModelErrorException",
        429 => "ThrottlingException",
        503 => "ServiceUnavailableException",
        _ => "InternalServerException",
    }
}

/// HTTP status of a Bedrock exception type (for exceptions that arrive inside a stream).
fn status_for_exception(kind: &str) -> u16 {
    let lower = kind.to_ascii_lowercase();
    match lower.trim_end_matches("exception") {
        "validation" | "conflict" | "servicequotaexceeded" => 400,
        "accessdenied" | "unrecognizedclient" | "invalidsignature" => 403,
        "resourcenotfound" => 404,
        "modeltimeout" => 408,
        "modelerror" | "modelstreamerror" => 424,
        "throttling" | "modelnotready" => 429,
        "serviceunavailable" => 503,
        _ => 500,
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default, alias = "Message")]
    message: Option<String>,
}

/// A Bedrock error answer (`{"message": …}`) → mapped status and an OpenAI-shaped error body.
/// `error_type` is the `x-amzn-errortype` header when the caller has it (`ValidationException:http://…`);
/// without it the code is the exception most likely behind the status. `type` follows the mapped
/// status.
pub fn map_error(status: u16, error_type: Option<&str>, body: &[u8]) -> (u16, Vec<u8>) {
    let mapped = map_status(status);
    let code = error_type
        .map(|t| t.split(':').next().unwrap_or(t).trim())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| exception_for_status(status));
    let message = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { message: Some(m) }) if !m.is_empty() => m,
        _ => {
            let text = String::from_utf8_lossy(body);
            let snippet: String = text.trim().chars().take(500).collect();
            if snippet.is_empty() {
                format!("The Bedrock backend returned HTTP {status}.")
            } else {
                format!("The Bedrock backend returned HTTP {status}: {snippet}")
            }
        }
    };
    let err = ApiError::new(mapped, kind_for_status(mapped), message).with_code(code);
    (mapped, err.to_json())
}

// =============================================================================================
// Streaming
// =============================================================================================

/// Any ConverseStream event payload, all kinds flattened (the `p` padding and unknown fields are
/// skipped without allocating).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventPayload<'a> {
    #[serde(default)]
    content_block_index: Option<u32>,
    #[serde(borrow, default)]
    start: Option<BlockStart<'a>>,
    #[serde(borrow, default)]
    delta: Option<BlockDelta<'a>>,
    #[serde(borrow, default)]
    stop_reason: Option<Str<'a>>,
    #[serde(default)]
    usage: Option<TokenUsage>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockStart<'a> {
    #[serde(borrow, default)]
    tool_use: Option<ToolUseStart<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ToolUseStart<'a> {
    #[serde(borrow, default)]
    tool_use_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    name: Option<Str<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockDelta<'a> {
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
    #[serde(borrow, default)]
    tool_use: Option<ToolUseDelta<'a>>,
    #[serde(borrow, default)]
    reasoning_content: Option<ReasoningDelta<'a>>,
}

#[derive(Deserialize)]
struct ToolUseDelta<'a> {
    #[serde(borrow, default)]
    input: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct ReasoningDelta<'a> {
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct ExceptionPayload {
    #[serde(default, alias = "Message")]
    message: Option<String>,
}

/// Incremental stream translator: Bedrock ConverseStream event-stream in, OpenAI
/// `chat.completion.chunk` SSE out.
///
/// Output: a first chunk with `delta: {role: "assistant", content: ""}`, one chunk per text /
/// reasoning / tool-argument delta, a chunk per `toolUse` block start (id, name, empty arguments),
/// a finishing chunk with `finish_reason` at `messageStop`, then — once `metadata` brought the usage —
/// a usage-only chunk (`choices: []`) and `data: [DONE]`. An `exception` or `error` frame, a frame
/// failing its CRC, an unreadable payload, or a stream that ends mid-frame or before both
/// `messageStop` and `metadata` produce one `data: {"error":{…}}` event and nothing after it.
pub struct StreamTranslator {
    decoder: EventStreamDecoder,
    state: StreamState,
}

struct StreamState {
    created: u64,
    id: String,
    model: String,
    phase: Phase,
    started: bool,
    /// Number of `toolUse` blocks seen so far (the next OpenAI tool-call index).
    tool_calls: u32,
    /// (Converse content block index, OpenAI tool-call index) of each `toolUse` block.
    tool_blocks: Vec<(u32, u32)>,
    /// Set by `messageStop`.
    finish_reason: Option<&'static str>,
    /// Set by `metadata`.
    usage: Option<Usage>,
}

impl StreamTranslator {
    /// `model` is the model the request named (the stream does not say).
    pub fn new(model: &str, created: u64) -> Self {
        Self::with_id(model, &new_completion_id(), created)
    }

    pub fn with_id(model: &str, id: &str, created: u64) -> Self {
        StreamTranslator {
            decoder: EventStreamDecoder::new(),
            state: StreamState {
                created,
                id: id.to_string(),
                model: model.to_string(),
                phase: Phase::Open,
                started: false,
                tool_calls: 0,
                tool_blocks: Vec::new(),
                finish_reason: None,
                usage: None,
            },
        }
    }

    /// Feeds one upstream body chunk (split anywhere, even inside a frame's prelude); appends
    /// translated output bytes to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if self.state.phase != Phase::Open {
            return;
        }
        let StreamTranslator { decoder, state } = self;
        let result = decoder.push(chunk, |frame| state.on_frame(frame, out));
        if let Err(e) = result {
            if state.phase == Phase::Open {
                state.fail(
                    out,
                    ApiError::new(502, "api_error", format!("The Bedrock backend sent a corrupt event-stream frame: {e}."))
                        .with_code("invalid_upstream_event"),
                );
            }
        }
    }

    /// Upstream ended. A completed stream writes nothing more; a stream cut short (mid-frame, or
    /// before `messageStop` and `metadata`) appends an OpenAI error event instead of ending silently.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.state.phase != Phase::Open {
            return;
        }
        let message = if self.decoder.pending() > 0 {
            "upstream stream ended in the middle of an event-stream frame"
        } else {
            "upstream stream ended before completion"
        };
        self.state.fail(out, ApiError::new(502, "api_error", message).with_code("stream_truncated"));
    }

    /// Usage reported so far (from `metadata`) in OpenAI shape, for accounting.
    pub fn usage(&self) -> Option<&Usage> {
        self.state.usage.as_ref()
    }
}

impl StreamState {
    fn on_frame(&mut self, frame: &Frame<'_>, out: &mut Vec<u8>) {
        if self.phase != Phase::Open {
            return;
        }
        match frame.header_str(":message-type").unwrap_or("event") {
            "event" => {}
            "exception" => {
                let kind = frame.header_str(":exception-type").unwrap_or("internalServerException");
                let message = serde_json::from_slice::<ExceptionPayload>(frame.payload).ok().and_then(|p| p.message);
                self.upstream_error(out, kind, message);
                return;
            }
            "error" => {
                let kind = frame.header_str(":error-code").unwrap_or("InternalServerException");
                let message = frame.header_str(":error-message").map(str::to_string);
                self.upstream_error(out, kind, message);
                return;
            }
            // Message types added later carry nothing to forward.
            _ => return,
        }
        let event = frame.header_str(":event-type").unwrap_or("");
        if !matches!(event, "messageStart" | "contentBlockStart" | "contentBlockDelta" | "messageStop" | "metadata") {
            // contentBlockStop and event types added later carry nothing to forward: not even parsed.
            return;
        }
        let ev: EventPayload<'_> = match serde_json::from_slice(frame.payload) {
            Ok(ev) => ev,
            Err(e) => {
                let what = if event.is_empty() { "an unnamed" } else { event };
                self.fail(
                    out,
                    ApiError::new(502, "api_error", format!("The Bedrock backend sent an unreadable stream event ({what}): {e}."))
                        .with_code("invalid_upstream_event"),
                );
                return;
            }
        };
        match event {
            "messageStart" => self.ensure_started(out),
            "contentBlockStart" => self.on_block_start(&ev, out),
            "contentBlockDelta" => self.on_block_delta(&ev, out),
            "messageStop" => {
                if self.finish_reason.is_none() {
                    self.ensure_started(out);
                    let reason = finish_reason(s(&ev.stop_reason).unwrap_or("end_turn"));
                    self.finish_reason = Some(reason);
                    self.chunk(out, Delta::default(), Some(reason));
                }
                self.maybe_done(out);
            }
            "metadata" => {
                self.usage = Some(ev.usage.unwrap_or_default().to_openai());
                self.maybe_done(out);
            }
            _ => {}
        }
    }

    fn ensure_started(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            let delta = Delta { role: Some("assistant"), content: Some(""), ..Delta::default() };
            self.chunk(out, delta, None);
        }
    }

    fn on_block_start(&mut self, ev: &EventPayload<'_>, out: &mut Vec<u8>) {
        let Some(tool) = ev.start.as_ref().and_then(|st| st.tool_use.as_ref()) else { return };
        if self.tool_calls as usize >= MAX_STREAM_TOOL_CALLS {
            self.fail(out, too_many("tool calls", MAX_STREAM_TOOL_CALLS));
            return;
        }
        self.ensure_started(out);
        let k = self.tool_calls;
        self.tool_calls = self.tool_calls.saturating_add(1);
        if let Some(index) = ev.content_block_index {
            self.tool_blocks.push((index, k));
        }
        let call = ToolCallDelta {
            index: k,
            id: Some(s(&tool.tool_use_id).unwrap_or("")),
            kind: Some("function"),
            function: FunctionDelta { name: Some(s(&tool.name).unwrap_or("")), arguments: Some("") },
        };
        self.chunk(out, Delta { tool_calls: Some(vec![call]), ..Delta::default() }, None);
    }

    fn on_block_delta(&mut self, ev: &EventPayload<'_>, out: &mut Vec<u8>) {
        let Some(d) = &ev.delta else { return };
        if let Some(t) = s(&d.text).filter(|t| !t.is_empty()) {
            self.ensure_started(out);
            self.chunk(out, Delta { content: Some(t), ..Delta::default() }, None);
        }
        if let Some(t) = d.reasoning_content.as_ref().and_then(|r| s(&r.text)).filter(|t| !t.is_empty()) {
            self.ensure_started(out);
            self.chunk(out, Delta { reasoning_content: Some(t), ..Delta::default() }, None);
        }
        if let Some(part) = d.tool_use.as_ref().and_then(|t| s(&t.input)).filter(|p| !p.is_empty()) {
            let Some(block) = ev.content_block_index else { return };
            let Some(&(_, k)) = self.tool_blocks.iter().find(|(b, _)| *b == block) else { return };
            let call = ToolCallDelta { index: k, id: None, kind: None, function: FunctionDelta { name: None, arguments: Some(part) } };
            self.chunk(out, Delta { tool_calls: Some(vec![call]), ..Delta::default() }, None);
        }
        // reasoning signatures / redacted reasoning, citations, … carry nothing OpenAI can show.
    }

    /// Both `messageStop` and `metadata` seen: the usage-only chunk and `[DONE]`.
    fn maybe_done(&mut self, out: &mut Vec<u8>) {
        let (Some(_), Some(usage)) = (self.finish_reason, self.usage.as_ref()) else { return };
        write_usage_and_done(out, &self.id, &self.model, self.created, usage);
        self.phase = Phase::Done;
    }

    fn upstream_error(&mut self, out: &mut Vec<u8>, kind: &str, message: Option<String>) {
        let status = map_status(status_for_exception(kind));
        let message = message
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| format!("The Bedrock backend reported an error ({kind}) during the stream."));
        self.fail(out, ApiError::new(status, kind_for_status(status), message).with_code(kind));
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
    use crate::stream::eventstream::{encode_event, encode_message, HeaderValue};
    use base64::Engine;
    use crate::providers::testutil::{assert_tool_calls_capped, events, interaction, payloads};

    #[test]
    fn tool_calls_per_stream_are_capped() {
        let head = encode_event("messageStart", br#"{"role":"assistant"}"#);
        let call = |i: usize| {
            let p = json!({"contentBlockIndex": i, "start": {"toolUse": {"toolUseId": format!("t{i}"), "name": "f"}}});
            encode_event("contentBlockStart", p.to_string().as_bytes())
        };
        assert_tool_calls_capped(&|| Box::new(StreamTranslator::new("m", 1)), &head, &call);
    }
    use serde_json::json;

    const MODEL_YAML: &str = include_str!("../../tests/fixtures/bedrock/test_bedrock_model.yaml");
    const STREAM_YAML: &str = include_str!("../../tests/fixtures/bedrock/test_bedrock_model_stream.yaml");
    const TOOL_STREAM_YAML: &str = include_str!("../../tests/fixtures/bedrock/test_bedrock_model_iter_stream.yaml");
    const ERROR_YAML: &str = include_str!("../../tests/fixtures/bedrock/test_bedrock_error.yaml");
    const STREAM_ERROR_YAML: &str = include_str!("../../tests/fixtures/bedrock/test_bedrock_streaming_error.yaml");
    const SERVICE_MODEL: &str = include_str!("../../tests/fixtures/bedrock/bedrock-runtime-2023-09-30-service-2.json");

    const CREATED: u64 = 1_700_000_000;
    const ID: &str = "chatcmpl-test";
    const NOVA: &str = "us.amazon.nova-micro-v1:0";
    const HOST: &str = "bedrock-runtime.us-east-1.amazonaws.com";

    // ------------------------------------------------------------------------------ helpers

    /// The recorded request body (vcrpy keeps it as a JSON string).
    fn recorded_request(yaml: &str, n: usize) -> Value {
        let body = interaction(yaml, n)["request"]["body"].as_str().expect("request body").to_string();
        serde_json::from_str(&body).expect("request body is JSON")
    }

    /// The path of the recorded request URI.
    fn recorded_path(yaml: &str, n: usize) -> String {
        let uri = interaction(yaml, n)["request"]["uri"].as_str().expect("uri").to_string();
        uri.strip_prefix(&format!("https://{HOST}")).expect("bedrock host").to_string()
    }

    /// The recorded binary event-stream body (`!!binary`, base64 over several lines).
    fn recorded_stream(yaml: &str, n: usize) -> Vec<u8> {
        let b64: String = interaction(yaml, n)["response"]["body"]["string"]
            .as_str()
            .expect("binary body")
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        base64::engine::general_purpose::STANDARD.decode(b64).expect("base64")
    }

    fn backend(extra: Value) -> Backend {
        let mut v = json!({"schema": "bedrock", "host": HOST});
        if let (Value::Object(m), Value::Object(e)) = (&mut v, extra) {
            m.extend(e);
        }
        serde_json::from_value(v).expect("backend config")
    }

    fn ctx<'a>(model: &'a str, aws: Option<&'a AwsCredentials>) -> AttemptContext<'a> {
        AttemptContext { model, now_unix: 1_440_938_160, aws }
    }

    fn creds(token: Option<&str>) -> AwsCredentials {
        AwsCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: token.map(str::to_string),
            region: "us-east-1".into(),
        }
    }

    fn upstream(v: Value, model: &str) -> UpstreamRequest {
        chat_upstream(&backend(json!({})), v.to_string().as_bytes(), &ctx(model, None)).expect("translates")
    }

    fn translate(v: Value) -> Value {
        let up = upstream(v, NOVA);
        serde_json::from_slice(&up.body).expect("request is JSON")
    }

    fn translate_err(v: Value) -> ApiError {
        match chat_upstream(&backend(json!({})), v.to_string().as_bytes(), &ctx(NOVA, None)) {
            Ok(up) => panic!("must be rejected: {}", String::from_utf8_lossy(&up.body)),
            Err(e) => e,
        }
    }

    fn header<'a>(up: &'a UpstreamRequest, name: &str) -> Option<&'a str> {
        up.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    // ----- the service model: every field we send must exist there, with the right type

    /// Checks `value` against `shape` of the botocore service model: unknown members, union
    /// members (exactly one), required members, enums, list / string / number bounds.
    fn check_shape(model: &Value, shape: &str, value: &Value, path: &str) {
        let s = &model["shapes"][shape];
        assert!(s.is_object(), "{path}: no shape {shape}");
        match s["type"].as_str().unwrap() {
            "structure" if s["document"] == true => {}
            "structure" => {
                let obj = value.as_object().unwrap_or_else(|| panic!("{path}: {shape} must be an object, got {value}"));
                let members = s["members"].as_object().unwrap();
                for (k, v) in obj {
                    let m = members.get(k).unwrap_or_else(|| panic!("{path}: {shape} has no member '{k}'"));
                    assert!(m.get("location").is_none(), "{path}.{k} belongs in the {} , not the body", m["location"]);
                    check_shape(model, m["shape"].as_str().unwrap(), v, &format!("{path}.{k}"));
                }
                if s["union"] == true {
                    assert_eq!(obj.len(), 1, "{path}: {shape} is a union: exactly one member, got {value}");
                }
                for r in s["required"].as_array().into_iter().flatten() {
                    let r = r.as_str().unwrap();
                    if members[r].get("location").is_none() {
                        assert!(obj.contains_key(r), "{path}: {shape} requires '{r}'");
                    }
                }
            }
            "list" => {
                let arr = value.as_array().unwrap_or_else(|| panic!("{path}: {shape} must be an array"));
                if let Some(min) = s["min"].as_u64() {
                    assert!(arr.len() as u64 >= min, "{path}: at least {min} items");
                }
                if let Some(max) = s["max"].as_u64() {
                    assert!(arr.len() as u64 <= max, "{path}: at most {max} items");
                }
                for (i, v) in arr.iter().enumerate() {
                    check_shape(model, s["member"]["shape"].as_str().unwrap(), v, &format!("{path}[{i}]"));
                }
            }
            "map" => {
                for (k, v) in value.as_object().unwrap_or_else(|| panic!("{path}: {shape} must be an object")) {
                    check_shape(model, s["value"]["shape"].as_str().unwrap(), v, &format!("{path}.{k}"));
                }
            }
            "string" => {
                let text = value.as_str().unwrap_or_else(|| panic!("{path}: {shape} must be a string"));
                if let Some(e) = s["enum"].as_array() {
                    assert!(e.iter().any(|x| x == text), "{path}: '{text}' is not one of {e:?}");
                }
                if let Some(min) = s["min"].as_u64() {
                    assert!(text.chars().count() as u64 >= min, "{path}: at least {min} characters");
                }
            }
            "blob" => assert!(value.is_string(), "{path}: {shape} (blob) is base64 text in rest-json"),
            "boolean" => assert!(value.is_boolean(), "{path}: {shape} must be a boolean"),
            "integer" | "long" => {
                let n = value.as_i64().unwrap_or_else(|| panic!("{path}: {shape} must be an integer"));
                if let Some(min) = s["min"].as_i64() {
                    assert!(n >= min, "{path}: at least {min}");
                }
            }
            "float" | "double" => {
                let n = value.as_f64().unwrap_or_else(|| panic!("{path}: {shape} must be a number"));
                if let Some(min) = s["min"].as_f64() {
                    assert!(n >= min, "{path}: at least {min}");
                }
                if let Some(max) = s["max"].as_f64() {
                    assert!(n <= max, "{path}: at most {max}");
                }
            }
            other => panic!("{path}: unexpected shape type {other}"),
        }
    }

    fn assert_valid_converse(body: &Value, stream: bool) {
        let model: Value = serde_json::from_str(SERVICE_MODEL).unwrap();
        let op = if stream { "ConverseStream" } else { "Converse" };
        let input = model["operations"][op]["input"]["shape"].as_str().unwrap().to_string();
        check_shape(&model, &input, body, op);
    }

    // ----- SSE output

    fn run_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> (Vec<u8>, Option<Usage>) {
        let mut t = StreamTranslator::with_id(NOVA, ID, CREATED);
        let mut out = Vec::new();
        for c in chunks {
            t.push(c, &mut out);
        }
        t.finish(&mut out);
        (out, t.usage().cloned())
    }

    fn run_whole(bytes: &[u8]) -> Vec<u8> {
        run_chunks([bytes]).0
    }

    /// Output for every two-way split and for 1-byte chunks must equal the whole-body output.
    fn assert_split_invariant(input: &[u8]) -> Vec<u8> {
        assert_split_invariant_step(input, 1)
    }

    /// The same with two-way splits every `step` bytes (for the many variants of one recording).
    fn assert_split_invariant_step(input: &[u8], step: usize) -> Vec<u8> {
        let (whole, usage) = run_chunks([input]);
        for at in (0..=input.len()).step_by(step) {
            let (a, b) = input.split_at(at);
            let (out, u) = run_chunks([a, b]);
            assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&whole), "split at byte {at}");
            assert_eq!(u, usage, "usage, split at byte {at}");
        }
        assert_eq!(run_chunks(input.chunks(1)).0, whole, "1-byte chunks");
        assert_eq!(run_chunks(input.chunks(5)).0, whole, "5-byte chunks");
        whole
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
        chunks: usize,
    }

    /// Checks every chunk against the OpenAI chunk shape and accumulates what a client would see.
    fn summarize(out: &[u8]) -> Summary {
        let (evs, done) = events(out);
        let mut sum = Summary { done, chunks: evs.len(), ..Summary::default() };
        for (n, ev) in evs.iter().enumerate() {
            if let Some(err) = ev.get("error") {
                assert_eq!(n, evs.len() - 1, "an error event is last");
                assert!(!done, "no [DONE] after an error");
                sum.error = Some(err.clone());
                continue;
            }
            assert!(sum.usage.is_none(), "nothing but [DONE] after the usage chunk");
            assert_eq!(ev["id"], ID);
            assert_eq!(ev["object"], "chat.completion.chunk");
            assert_eq!(ev["created"], CREATED);
            assert_eq!(ev["model"], NOVA);
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
                assert!(sum.finish.is_empty(), "no content after the finish chunk");
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

    fn ev(kind: &str, payload: Value) -> Vec<u8> {
        encode_event(kind, payload.to_string().as_bytes())
    }

    fn stream(frames: &[Vec<u8>]) -> Vec<u8> {
        frames.concat()
    }

    fn exception(kind: &str, message: &str) -> Vec<u8> {
        encode_message(
            &[
                (":exception-type", HeaderValue::String(kind)),
                (":content-type", HeaderValue::String("application/json")),
                (":message-type", HeaderValue::String("exception")),
            ],
            json!({"message": message}).to_string().as_bytes(),
        )
    }

    fn start() -> Vec<u8> {
        ev("messageStart", json!({"p": "abc", "role": "assistant"}))
    }

    fn text(i: u32, t: &str) -> Vec<u8> {
        ev("contentBlockDelta", json!({"contentBlockIndex": i, "delta": {"text": t}, "p": "abcdefgh"}))
    }

    fn stop(reason: &str) -> Vec<u8> {
        ev("messageStop", json!({"p": "ab", "stopReason": reason}))
    }

    fn metadata(input: u64, output: u64) -> Vec<u8> {
        ev("metadata", json!({"metrics": {"latencyMs": 1}, "p": "abc", "usage": {"inputTokens": input, "outputTokens": output, "totalTokens": input + output}}))
    }

    // ------------------------------------------------------------------------------ requests

    #[test]
    fn recorded_converse_request_is_reproduced() {
        let want = recorded_request(MODEL_YAML, 0);
        let system = want["system"][0]["text"].as_str().unwrap();
        let user = want["messages"][0]["content"][0]["text"].as_str().unwrap();
        let up = upstream(json!({"model":"nova","messages":[{"role":"system","content":system},{"role":"user","content":user}]}), NOVA);
        assert_eq!(up.path, recorded_path(MODEL_YAML, 0));
        assert_eq!(up.path, "/model/us.amazon.nova-micro-v1%3A0/converse");
        assert!(!up.hints.stream);
        assert_eq!(up.hints.model, NOVA);
        let got: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(got["messages"], want["messages"]);
        assert_eq!(got["system"], want["system"]);
        // The recording's `"inferenceConfig": {}` is an empty default; the gateway leaves it out.
        assert_eq!(want["inferenceConfig"], json!({}));
        assert_eq!(got.as_object().unwrap().len(), 2, "only messages and system: {got}");
        assert!(got.get("modelId").is_none(), "the model id goes in the path");
        assert_valid_converse(&got, false);
        assert_valid_converse(&want, false);
    }

    #[test]
    fn recorded_stream_request_is_reproduced() {
        let want = recorded_request(STREAM_YAML, 0);
        let up = upstream(
            json!({"model":"nova","stream":true,"temperature":0.0,"messages":[
                {"role":"system","content":want["system"][0]["text"]},
                {"role":"user","content":want["messages"][0]["content"][0]["text"]}]}),
            NOVA,
        );
        assert_eq!(up.path, recorded_path(STREAM_YAML, 0));
        assert!(up.hints.stream);
        let got: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(got, want, "the whole body");
        assert_valid_converse(&got, true);
    }

    #[test]
    fn recorded_tool_round_trip_requests_are_reproduced() {
        let tools = json!([
            {"type":"function","function":{"name":"get_capital","description":"Get the capital of a country.",
             "parameters":{"properties":{"country":{"description":"The country name.","title":"Country","type":"string"}},"required":["country"],"type":"object","additionalProperties":false}}},
            {"type":"function","function":{"name":"get_temperature","description":"Get the temperature in a city.",
             "parameters":{"properties":{"city":{"description":"The city name.","title":"City","type":"string"}},"required":["city"],"type":"object","additionalProperties":false}}}
        ]);
        let first = recorded_request(TOOL_STREAM_YAML, 0);
        let mut messages = vec![
            json!({"role":"system","content":"You are a helpful chatbot."}),
            json!({"role":"user","content":"What is the temperature of the capital of France?"}),
        ];
        let up = upstream(json!({"model":"m","stream":true,"top_p":0.5,"tools":tools,"messages":messages}), NOVA);
        assert_eq!(up.path, recorded_path(TOOL_STREAM_YAML, 0));
        let got: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(got, first, "first turn, whole body");
        assert_valid_converse(&got, true);

        // Second turn: the assistant's text and tool call, then the tool's answer.
        let second = recorded_request(TOOL_STREAM_YAML, 1);
        let thinking = second["messages"][1]["content"][0]["text"].as_str().unwrap();
        messages.push(json!({"role":"assistant","content":thinking,"tool_calls":[
            {"id":"tooluse_lAG_zP8QRHmSYOwZzzaCqA","type":"function","function":{"name":"get_temperature","arguments":"{\"city\":\"Paris\"}"}}]}));
        messages.push(json!({"role":"tool","tool_call_id":"tooluse_lAG_zP8QRHmSYOwZzzaCqA","content":"30\u{b0}C"}));
        let up = upstream(json!({"model":"m","stream":true,"top_p":0.5,"tools":tools,"messages":messages}), NOVA);
        let got: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(got["messages"], second["messages"]);
        assert_eq!(got, second, "second turn, whole body");
        assert_valid_converse(&got, true);
    }

    #[test]
    fn model_ids_are_encoded_as_one_path_segment() {
        let arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-haiku-20241022-v1:0";
        assert_eq!(
            model_path("", arn, "converse"),
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-3-5-haiku-20241022-v1%3A0/converse"
        );
        assert_eq!(model_path("/proxy", "amazon.titan-embed-text-v2:0", "invoke"), "/proxy/model/amazon.titan-embed-text-v2%3A0/invoke");
        let up = chat_upstream(&backend(json!({"base_path":"/bedrock/"})), br#"{"model":"x","messages":[{"role":"user","content":"hi"}],"stream":true}"#, &ctx("a:b", None)).unwrap();
        assert_eq!(up.path, "/bedrock/model/a%3Ab/converse-stream");
    }

    #[test]
    fn sampling_fields_become_inference_config() {
        let got = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],
            "max_tokens":5,"max_completion_tokens":77,"temperature":0.25,"top_p":0.5,"stop":["END","","\n\nHuman:"],
            "user":"u-1","seed":7,"metadata":{"a":"b"},"parallel_tool_calls":false,"stream_options":{"include_usage":true}}));
        assert_eq!(got["inferenceConfig"], json!({"maxTokens":77,"temperature":0.25,"topP":0.5,"stopSequences":["END","\n\nHuman:"]}));
        for k in ["seed", "user", "metadata", "stop", "max_tokens", "model", "stream", "stream_options", "requestMetadata"] {
            assert!(got.get(k).is_none(), "{k}");
        }
        assert_valid_converse(&got, false);
        let one = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"stop":"STOP","max_tokens":9}));
        assert_eq!(one["inferenceConfig"], json!({"maxTokens":9,"stopSequences":["STOP"]}));
        let none = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"stop":[]}));
        assert!(none.get("inferenceConfig").is_none());
    }

    #[test]
    fn system_and_developer_messages_anywhere_become_system_blocks() {
        let got = translate(json!({"model":"m","messages":[
            {"role":"system","content":"Be brief."},
            {"role":"user","content":"hi"},
            {"role":"developer","content":[{"type":"text","text":"Answer in"},{"type":"text","text":"French."}]},
            {"role":"system","content":"  "},
            {"role":"assistant","content":"Bonjour"},
            {"role":"user","content":"again"}
        ]}));
        assert_eq!(got["system"], json!([{"text":"Be brief."},{"text":"Answer in\nFrench."}]));
        assert_eq!(
            got["messages"],
            json!([
                {"role":"user","content":[{"text":"hi"}]},
                {"role":"assistant","content":[{"text":"Bonjour"}]},
                {"role":"user","content":[{"text":"again"}]}
            ])
        );
        assert_valid_converse(&got, false);
    }

    #[test]
    fn consecutive_same_role_turns_are_merged() {
        let got = translate(json!({"model":"m","messages":[
            {"role":"user","content":"one"},
            {"role":"user","content":[{"type":"text","text":"two"},{"type":"text","text":""}]},
            {"role":"assistant","content":"a"},
            {"role":"assistant","content":""},
            {"role":"assistant","content":"b"},
            {"role":"user","content":""},
            {"role":"user","content":"three"}
        ]}));
        assert_eq!(
            got["messages"],
            json!([
                {"role":"user","content":[{"text":"one"},{"text":"two"}]},
                {"role":"assistant","content":[{"text":"a"},{"text":"b"}]},
                {"role":"user","content":[{"text":"three"}]}
            ])
        );
        assert_valid_converse(&got, false);
    }

    #[test]
    fn tool_round_trip_is_translated() {
        let got = translate(json!({"model":"m","messages":[
            {"role":"user","content":"Weather in Paris and Rome?"},
            {"role":"assistant","content":"","tool_calls":[
                {"id":"t1","type":"function","function":{"name":"get_weather","arguments":"{\"location\": \"Paris\"}"}},
                {"id":"t2","type":"function","function":{"name":"get_weather","arguments":""}}
            ]},
            {"role":"tool","tool_call_id":"t1","content":"18C sunny"},
            {"role":"user","content":"and?"},
            {"role":"tool","tool_call_id":"t2","content":[{"type":"text","text":"21C"},{"type":"text","text":"clear"}]},
            {"role":"assistant","content":null,"tool_calls":[{"id":"t3","type":"function","function":{"name":"noop","arguments":"{}"}}]},
            {"role":"tool","tool_call_id":"t3","content":""}
        ],"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"location":{"type":"string"}}}}},
                   {"type":"function","function":{"name":"noop","description":""}}]}));
        assert_eq!(
            got["messages"],
            json!([
                {"role":"user","content":[{"text":"Weather in Paris and Rome?"}]},
                {"role":"assistant","content":[
                    {"toolUse":{"toolUseId":"t1","name":"get_weather","input":{"location":"Paris"}}},
                    {"toolUse":{"toolUseId":"t2","name":"get_weather","input":{}}}
                ]},
                // Both results in ONE user turn, toolResult blocks first, then the user's text.
                {"role":"user","content":[
                    {"toolResult":{"toolUseId":"t1","content":[{"text":"18C sunny"}],"status":"success"}},
                    {"toolResult":{"toolUseId":"t2","content":[{"text":"21C"},{"text":"clear"}],"status":"success"}},
                    {"text":"and?"}
                ]},
                {"role":"assistant","content":[{"toolUse":{"toolUseId":"t3","name":"noop","input":{}}}]},
                {"role":"user","content":[{"toolResult":{"toolUseId":"t3","content":[],"status":"success"}}]}
            ])
        );
        assert_eq!(
            got["toolConfig"],
            json!({"tools":[
                {"toolSpec":{"name":"get_weather","inputSchema":{"json":{"type":"object","properties":{"location":{"type":"string"}}}}}},
                {"toolSpec":{"name":"noop","inputSchema":{"json":{"type":"object","properties":{}}}}}
            ]})
        );
        assert_valid_converse(&got, false);
    }

    #[test]
    fn tool_choice_variants() {
        let base = |choice: Value| {
            json!({"model":"m","messages":[{"role":"user","content":"hi"}],
                   "tools":[{"type":"function","function":{"name":"f","description":"does f","parameters":{"type":"object"},"strict":true}}],
                   "tool_choice":choice})
        };
        let auto = translate(base(json!("auto")));
        assert_eq!(auto["toolConfig"]["toolChoice"], json!({"auto":{}}));
        assert_eq!(auto["toolConfig"]["tools"][0], json!({"toolSpec":{"name":"f","description":"does f","inputSchema":{"json":{"type":"object"}},"strict":true}}));
        assert_valid_converse(&auto, false);
        let any = translate(base(json!("required")));
        assert_eq!(any["toolConfig"]["toolChoice"], json!({"any":{}}));
        assert_valid_converse(&any, false);
        let named = translate(base(json!({"type":"function","function":{"name":"f"}})));
        assert_eq!(named["toolConfig"]["toolChoice"], json!({"tool":{"name":"f"}}));
        assert_valid_converse(&named, false);
        let none = translate(base(json!("none")));
        assert!(none.get("toolConfig").is_none(), "tool_choice none leaves the tools out: {none}");
        let unset = translate(base(Value::Null));
        assert!(unset["toolConfig"].get("toolChoice").is_none());
        assert_eq!(translate_err(base(json!("sometimes"))).param.as_deref(), Some("tool_choice"));
        // tool_choice without tools means nothing.
        let no_tools = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"tool_choice":"required","tools":[]}));
        assert!(no_tools.get("toolConfig").is_none());
    }

    #[test]
    fn images_from_data_urls_and_http_urls_rejected() {
        let got = translate(json!({"model":"m","messages":[{"role":"user","content":[
            {"type":"text","text":"what is this?"},
            {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}},
            {"type":"image_url","image_url":{"url":"DATA:image/JPEG;base64,/9j/4AAQ"}},
            {"type":"image_url","image_url":{"url":"data:image/jpg;base64,/9j/"}},
            {"type":"image_url","image_url":{"url":"data:image/gif;base64,R0lGOD"}},
            {"type":"image_url","image_url":{"url":"data:image/webp;charset=x;base64,UklGR","detail":"high"}}
        ]}]}));
        assert_eq!(
            got["messages"][0]["content"],
            json!([
                {"text":"what is this?"},
                {"image":{"format":"png","source":{"bytes":"iVBORw0KGgo="}}},
                {"image":{"format":"jpeg","source":{"bytes":"/9j/4AAQ"}}},
                {"image":{"format":"jpeg","source":{"bytes":"/9j/"}}},
                {"image":{"format":"gif","source":{"bytes":"R0lGOD"}}},
                {"image":{"format":"webp","source":{"bytes":"UklGR"}}}
            ])
        );
        assert_valid_converse(&got, false);
        let url = |u: &str| json!({"model":"m","messages":[{"role":"user","content":"x"},{"role":"user","content":[{"type":"text","text":"t"},{"type":"image_url","image_url":{"url":u}}]}]});
        let e = translate_err(url("https://example.com/cat.png"));
        assert_eq!(e.status, 400);
        assert_eq!(e.param.as_deref(), Some("messages[1].content[1].image_url.url"));
        assert_eq!(e.code.as_deref(), Some("unsupported_image_url"));
        assert!(e.message.contains("base64 data URL"), "{}", e.message);
        assert_eq!(translate_err(url("http://example.com/cat.png")).param.as_deref(), Some("messages[1].content[1].image_url.url"));
        for bad in ["data:image/bmp;base64,Qk0=", "data:image/png,rawbytes", "data:;base64,AAAA", "data:image/png;base64", "data:image/png;base64,", "ftp://x/y.png"] {
            let e = translate_err(url(bad));
            assert_eq!((e.status, e.param.as_deref()), (400, Some("messages[1].content[1].image_url.url")), "{bad}");
        }
        // An image in a tool result goes inside the toolResult.
        let got = translate(json!({"model":"m","messages":[
            {"role":"assistant","content":null,"tool_calls":[{"id":"t","type":"function","function":{"name":"shot","arguments":"{}"}}]},
            {"role":"tool","tool_call_id":"t","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}
        ],"tools":[{"type":"function","function":{"name":"shot"}}]}));
        assert_eq!(
            got["messages"][1]["content"][0],
            json!({"toolResult":{"toolUseId":"t","content":[{"image":{"format":"png","source":{"bytes":"AAAA"}}}],"status":"success"}})
        );
        assert_valid_converse(&got, false);
    }

    #[test]
    fn unsupported_inputs_are_400s_naming_the_param() {
        let cases = [
            (json!({"model":"m","n":2,"messages":[{"role":"user","content":"hi"}]}), "n"),
            (json!({"model":"m","messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{"data":"x","format":"wav"}}]}]}), "messages[0].content[0]"),
            (json!({"model":"m","messages":[{"role":"user","content":[{"type":"file","file":{"file_id":"f"}}]}]}), "messages[0].content[0]"),
            (json!({"model":"m","messages":[{"role":"function","name":"f","content":"x"}]}), "messages[0].role"),
            (json!({"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"[1]"}}]}]}), "messages[0].tool_calls[0].function.arguments"),
            (json!({"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"retrieval","function":{"name":"f"}}]}), "tools[0].type"),
        ];
        for (body, param) in cases {
            let e = translate_err(body.clone());
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
            assert_eq!(e.kind, "invalid_request_error");
        }
        // n = 1 is fine.
        translate(json!({"model":"m","n":1,"messages":[{"role":"user","content":"hi"}]}));
    }

    #[test]
    fn response_format_is_emulated_with_a_system_instruction() {
        let got = translate(json!({"model":"m","messages":[{"role":"system","content":"S"},{"role":"user","content":"hi"}],"response_format":{"type":"json_object"}}));
        assert_eq!(got["system"], json!([{"text":"S"},{"text":JSON_OBJECT_INSTRUCTION}]));
        assert!(got.get("toolConfig").is_none(), "no forced tool");
        let schema = json!({"type":"object","properties":{"city":{"type":"string"}},"required":["city"]});
        let got = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],
            "response_format":{"type":"json_schema","json_schema":{"name":"place","description":"A place","schema":schema,"strict":true}}}));
        let sys = got["system"][0]["text"].as_str().unwrap();
        assert!(sys.contains("`place` response format (A place)"), "{sys}");
        assert!(sys.ends_with(&schema.to_string()), "{sys}");
        assert_valid_converse(&got, false);
        let text = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"text"}}));
        assert!(text.get("system").is_none());
    }

    const CLAUDE: &str = "us.anthropic.claude-sonnet-4-20250514-v1:0";

    fn translate_for(model: &str, v: Value) -> Result<Value, ApiError> {
        chat_upstream(&backend(json!({})), v.to_string().as_bytes(), &ctx(model, None))
            .map(|up| serde_json::from_slice(&up.body).expect("request is JSON"))
    }

    #[test]
    fn claude_models_that_think_are_recognised() {
        for m in ["anthropic.claude-3-7-sonnet-20250219-v1:0", CLAUDE, "global.anthropic.claude-opus-4-1-20250805-v1:0",
                  "eu.anthropic.claude-haiku-4-5-20251001-v1:0", "anthropic.claude-sonnet-4-5-20250929-v1:0",
                  "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-opus-4-20250514-v1:0"] {
            assert!(claude_thinks(m), "{m}");
        }
        for m in [NOVA, "anthropic.claude-3-5-sonnet-20241022-v2:0", "anthropic.claude-3-haiku-20240307-v1:0",
                  "anthropic.claude-instant-v1", "anthropic.claude-v2:1", "meta.llama3-70b-instruct-v1:0",
                  "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123", "", "anthropic.claude-"] {
            assert!(!claude_thinks(m), "{m}");
        }
    }

    /// Issue 16: `reasoning_effort` was dropped for Bedrock. Claude gets Anthropic's thinking
    /// configuration with the Anthropic backend's budgets; sampling is constrained as thinking needs.
    #[test]
    fn reasoning_effort_becomes_claude_thinking_in_additional_model_request_fields() {
        let msgs = json!([{"role":"user","content":"Why is the sky blue?"}]);
        for (effort, budget) in [("low", 1024), ("medium", 8192), ("high", 24576)] {
            let got = translate_for(CLAUDE, json!({"model":"m","messages":msgs,"reasoning_effort":effort,"temperature":0.2,"top_p":0.5})).unwrap();
            assert_eq!(got["additionalModelRequestFields"]["thinking"], json!({"type":"enabled","budget_tokens":budget}), "{effort}");
            let max = got["inferenceConfig"]["maxTokens"].as_u64().unwrap();
            assert!(max > budget, "{effort}: maxTokens {max} must leave room above the budget");
            assert!(got["inferenceConfig"].get("temperature").is_none() && got["inferenceConfig"].get("topP").is_none(), "{got}");
        }
        // Capped below the client's limit; the limit stays the client's.
        let got = translate_for(CLAUDE, json!({"model":"m","messages":msgs,"reasoning_effort":"high","max_completion_tokens":4000,"top_p":0.97})).unwrap();
        assert_eq!(got["additionalModelRequestFields"]["thinking"]["budget_tokens"], 3999);
        assert_eq!(got["inferenceConfig"]["maxTokens"], 4000);
        assert_eq!(got["inferenceConfig"]["topP"], 0.97);
        // Too small a limit to think in, `none`/`minimal`, and a forced tool: no thinking, no error.
        for extra in [json!({"reasoning_effort":"low","max_tokens":500}), json!({"reasoning_effort":"none"}), json!({"reasoning_effort":"minimal"}),
                      json!({"reasoning_effort":"low","tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"required"})] {
            let mut body = json!({"model":"m","messages":msgs});
            body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            let got = translate_for(CLAUDE, body.clone()).unwrap();
            assert!(got.get("additionalModelRequestFields").is_none(), "{body} -> {got}");
        }
        // Other additional fields are kept and thinking joins them; the client's own thinking wins.
        let got = translate_for(CLAUDE, json!({"model":"m","messages":msgs,"reasoning_effort":"low","bedrock":{"additionalModelRequestFields":{"top_k":5}}})).unwrap();
        assert_eq!(got["additionalModelRequestFields"], json!({"top_k":5,"thinking":{"type":"enabled","budget_tokens":1024}}));
        let own = json!({"thinking":{"type":"enabled","budget_tokens":2000}});
        let got = translate_for(CLAUDE, json!({"model":"m","messages":msgs,"reasoning_effort":"high","bedrock":{"additionalModelRequestFields":own}})).unwrap();
        assert_eq!(got["additionalModelRequestFields"], own);
    }

    #[test]
    fn reasoning_effort_for_a_bedrock_model_that_cannot_think_is_a_400() {
        let msgs = json!([{"role":"user","content":"hi"}]);
        for model in [NOVA, "anthropic.claude-3-5-haiku-20241022-v1:0"] {
            let e = translate_for(model, json!({"model":"m","messages":msgs,"reasoning_effort":"medium"})).unwrap_err();
            assert_eq!((e.status, e.param.as_deref()), (400, Some("reasoning_effort")), "{model}");
            assert!(e.message.contains(model), "{}", e.message);
        }
        // Asking for no reasoning is fine anywhere.
        assert!(translate_for(NOVA, json!({"model":"m","messages":msgs,"reasoning_effort":"none"})).is_ok());
    }

    #[test]
    fn bedrock_namespace_is_passed_through() {
        let got = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],
            "bedrock":{"additionalModelRequestFields":{"top_k":200,"thinking":{"type":"enabled","budget_tokens":1024}},
                       "guardrailConfig":{"guardrailIdentifier":"gr-1","guardrailVersion":"DRAFT","trace":"enabled"},
                       "performanceConfig":{"latency":"optimized"}}}));
        assert_eq!(got["additionalModelRequestFields"], json!({"top_k":200,"thinking":{"type":"enabled","budget_tokens":1024}}));
        assert_eq!(got["guardrailConfig"], json!({"guardrailIdentifier":"gr-1","guardrailVersion":"DRAFT","trace":"enabled"}));
        assert_eq!(got["performanceConfig"], json!({"latency":"optimized"}));
        assert!(got.get("bedrock").is_none());
        assert_valid_converse(&got, false);
        // Streams take guardrailStreamConfiguration (streamProcessingMode).
        let up = upstream(json!({"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}],
            "bedrock":{"guardrailConfig":{"guardrailIdentifier":"gr-1","guardrailVersion":"1","streamProcessingMode":"async"}}}), NOVA);
        assert_valid_converse(&serde_json::from_slice(&up.body).unwrap(), true);
        // null is the same as absent; a string that merely mentions "bedrock" is not a namespace.
        let plain = translate(json!({"model":"m","messages":[{"role":"user","content":"say \"bedrock\""}],"bedrock":null}));
        assert_eq!(plain.as_object().unwrap().len(), 1);
        let e = translate_err(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"bedrock":{"messages":[]}}));
        assert_eq!(e.param.as_deref(), Some("bedrock.messages"));
        let e = translate_err(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"bedrock":{"inferenceConfig":{}}}));
        assert_eq!(e.param.as_deref(), Some("bedrock.inferenceConfig"));
        let e = translate_err(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"bedrock":"guardrail"}));
        assert_eq!(e.param.as_deref(), Some("bedrock"));
        // Every passthrough field exists on both Converse operations.
        let model: Value = serde_json::from_str(SERVICE_MODEL).unwrap();
        for shape in ["ConverseRequest", "ConverseStreamRequest"] {
            for f in PASSTHROUGH_FIELDS {
                assert!(model["shapes"][shape]["members"].get(*f).is_some(), "{shape}.{f}");
            }
        }
    }

    // ------------------------------------------------------------------------------ auth

    #[test]
    fn sigv4_signs_the_final_body_path_and_headers() {
        let c = creds(None);
        let body = br#"{"model":"m","messages":[{"role":"user","content":"Hello!"}]}"#;
        let up = chat_upstream(&backend(json!({})), body, &ctx(NOVA, Some(&c))).unwrap();
        assert_eq!(header(&up, "x-amz-date"), Some("20150830T123600Z"));
        assert_eq!(header(&up, "x-amz-security-token"), None);
        let auth = header(&up, "authorization").unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature="),
            "{auth}"
        );
        // Recompute from the spelled-out canonical request: double-encoded path, exact header set,
        // hash of the body actually sent.
        let canonical = format!(
            "POST\n/model/us.amazon.nova-micro-v1%253A0/converse\n\ncontent-type:application/json\nhost:{HOST}\nx-amz-date:20150830T123600Z\n\ncontent-type;host;x-amz-date\n{}",
            sigv4::sha256_hex(&up.body)
        );
        let sts = sigv4::string_to_sign("20150830T123600Z", "20150830/us-east-1/bedrock/aws4_request", &canonical);
        let key = sigv4::signing_key(&c.secret_access_key, "20150830", "us-east-1", "bedrock");
        let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(&key).unwrap();
        hmac::Mac::update(&mut mac, sts.as_bytes());
        let sig: String = hmac::Mac::finalize(mac).into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert!(auth.ends_with(&format!("Signature={sig}")), "{auth}\nwant {sig}");
        // A different body (here: streaming) signs differently and its own path.
        let up2 = chat_upstream(&backend(json!({})), br#"{"model":"m","stream":true,"messages":[{"role":"user","content":"Hello!"}]}"#, &ctx(NOVA, Some(&c))).unwrap();
        assert_eq!(up2.body, up.body, "stream does not change the Converse body");
        assert_ne!(header(&up2, "authorization"), header(&up, "authorization"), "the path is signed");
    }

    #[test]
    fn sigv4_with_a_session_token_signs_it_too() {
        let c = creds(Some("FwoGZXIvYXdzEXAMPLE//token+/="));
        let up = chat_upstream(&backend(json!({})), br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#, &ctx(NOVA, Some(&c))).unwrap();
        assert_eq!(header(&up, "x-amz-security-token"), Some("FwoGZXIvYXdzEXAMPLE//token+/="));
        assert!(header(&up, "authorization").unwrap().contains("SignedHeaders=content-type;host;x-amz-date;x-amz-security-token,"));
        // Matches a direct signature over the same inputs.
        let direct = sigv4_headers(&c, HOST, &up.path, &up.body, 1_440_938_160);
        assert_eq!(direct, up.headers);
        // The time is an input: another second, another signature.
        assert_ne!(sigv4_headers(&c, HOST, &up.path, &up.body, 1_440_938_161), up.headers);
    }

    #[test]
    fn without_aws_keys_nothing_is_signed() {
        // The filter sends the backend's `credential` (a Bedrock API key) as `authorization: Bearer …`.
        let b = backend(json!({"credential":{"env":"AWS_BEARER_TOKEN_BEDROCK"}}));
        assert_eq!(b.credential_header(), "authorization");
        assert_eq!(b.credential_prefix(), "Bearer ");
        let up = chat_upstream(&b, br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#, &ctx(NOVA, None)).unwrap();
        assert!(up.headers.is_empty(), "{:?}", up.headers);
        // Signing without a host is a configuration error, not a panic.
        let mut nohost = backend(json!({}));
        nohost.host = None;
        let e = chat_upstream(&nohost, br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#, &ctx(NOVA, Some(&creds(None)))).unwrap_err();
        assert_eq!(e.status, 500);
        assert!(e.message.contains("host"));
    }

    #[test]
    fn dispatch_goes_through_providers_mod() {
        let c = creds(None);
        let b = backend(json!({}));
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
        let up = super::super::upstream_request(Operation::Chat, &b, body, &ctx(NOVA, Some(&c))).unwrap();
        assert_eq!(up.path, "/model/us.amazon.nova-micro-v1%3A0/converse-stream");
        assert!(header(&up, "authorization").is_some());
        assert!(super::super::translates_responses(b.schema, &up.hints));
        let mut t = super::super::stream_translator(b.schema, &up.hints, CREATED).expect("a translator");
        let mut out = Vec::new();
        t.push(&recorded_stream(STREAM_YAML, 0), &mut out);
        t.finish(&mut out);
        let (evs, done) = events(&out);
        assert!(done);
        assert_eq!(evs[0]["model"], NOVA);
        assert!(evs[0]["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(t.usage().map(|u| u.total_tokens), Some(95));
        assert_eq!(super::super::error_status(b.schema, 424), 503);
        let emb = super::super::upstream_request(Operation::Embeddings, &b, br#"{"model":"e","input":"hi"}"#, &ctx("amazon.titan-embed-text-v2:0", Some(&c))).unwrap();
        assert_eq!(emb.path, "/model/amazon.titan-embed-text-v2%3A0/invoke");
        assert_eq!(emb.hints.op, Operation::Embeddings);
        let out = super::super::response_body(b.schema, &emb.hints, br#"{"embedding":[0.5],"inputTextTokenCount":2}"#, CREATED).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["data"][0]["embedding"], json!([0.5]));
    }

    // ------------------------------------------------------------------------------ responses

    #[test]
    fn recorded_converse_response_is_translated() {
        let rec = interaction(MODEL_YAML, 0);
        let body = serde_json::to_vec(&rec["response"]["parsed_body"]).unwrap();
        let out = response_body_with_id(&body, NOVA, ID, CREATED).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        let want_text = rec["response"]["parsed_body"]["output"]["message"]["content"][0]["text"].as_str().unwrap();
        assert!(want_text.starts_with("Hello! How can I assist you today?"));
        assert_eq!(
            v,
            json!({"id":ID,"object":"chat.completion","created":CREATED,"model":NOVA,
                   "choices":[{"index":0,"message":{"role":"assistant","content":want_text,"refusal":null},"finish_reason":"stop","logprobs":null}],
                   "usage":{"prompt_tokens":7,"completion_tokens":30,"total_tokens":37,"prompt_tokens_details":{"cached_tokens":0}}})
        );
        // The generated id is fresh each time.
        let a: Value = serde_json::from_slice(&response_body(&body, NOVA, CREATED).unwrap()).unwrap();
        let b: Value = serde_json::from_slice(&response_body(&body, NOVA, CREATED).unwrap()).unwrap();
        assert_ne!(a["id"], b["id"]);
        assert!(a["id"].as_str().unwrap().starts_with("chatcmpl-"));
    }

    #[test]
    fn tool_use_reasoning_and_cache_usage_are_translated() {
        let body = json!({
            "output":{"message":{"role":"assistant","content":[
                {"reasoningContent":{"reasoningText":{"text":"Need the weather.","signature":"sig"}}},
                {"reasoningContent":{"redactedContent":"AAAA"}},
                {"text":"Checking."},
                {"toolUse":{"toolUseId":"tooluse_1","name":"get_weather","input":{"city":"Paris","units":["c"]}}},
                {"toolUse":{"toolUseId":"tooluse_2","name":"noop","input":{}}}
            ]}},
            "stopReason":"tool_use",
            "usage":{"inputTokens":10,"outputTokens":20,"totalTokens":1030,"cacheReadInputTokens":1000,"cacheWriteInputTokens":5},
            "metrics":{"latencyMs":1}
        });
        let out = response_body_with_id(body.to_string().as_bytes(), NOVA, ID, CREATED).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        let m = &v["choices"][0]["message"];
        assert_eq!(m["content"], "Checking.");
        assert_eq!(m["reasoning_content"], "Need the weather.");
        assert_eq!(
            m["tool_calls"],
            json!([
                {"id":"tooluse_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\",\"units\":[\"c\"]}"}},
                {"id":"tooluse_2","type":"function","function":{"name":"noop","arguments":"{}"}}
            ])
        );
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens":1015,"completion_tokens":20,"total_tokens":1035,"prompt_tokens_details":{"cached_tokens":1000,"cache_creation_tokens":5}})
        );
        // Only tool calls: content is null, as OpenAI sends it.
        let only_tools = json!({"output":{"message":{"role":"assistant","content":[{"toolUse":{"toolUseId":"t","name":"f","input":{}}}]}},"stopReason":"tool_use","usage":{"inputTokens":1,"outputTokens":1,"totalTokens":2}});
        let v: Value = serde_json::from_slice(&response_body_with_id(only_tools.to_string().as_bytes(), NOVA, ID, CREATED).unwrap()).unwrap();
        assert!(v["choices"][0]["message"]["content"].is_null());
    }

    #[test]
    fn stop_reasons_map_to_finish_reasons() {
        for (stop, finish) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("model_context_window_exceeded", "length"),
            ("tool_use", "tool_calls"),
            ("guardrail_intervened", "content_filter"),
            ("content_filtered", "content_filter"),
            ("malformed_model_output", "stop"),
            ("something_new", "stop"),
        ] {
            let body = json!({"output":{"message":{"role":"assistant","content":[{"text":"x"}]}},"stopReason":stop,"usage":{"inputTokens":1,"outputTokens":1,"totalTokens":2},"metrics":{"latencyMs":1}});
            let v: Value = serde_json::from_slice(&response_body_with_id(body.to_string().as_bytes(), NOVA, ID, CREATED).unwrap()).unwrap();
            assert_eq!(v["choices"][0]["finish_reason"], finish, "{stop}");
            // And the same in a stream.
            let out = run_whole(&stream(&[start(), text(0, "x"), super::tests::stop(stop), metadata(1, 1)]));
            assert_eq!(summarize(&out).finish, vec![finish.to_string()], "{stop} (stream)");
        }
    }

    #[test]
    fn unreadable_responses_are_502s() {
        for body in [&b"not json"[..], b"{}", b"[]", br#"{"output":{"message":{"content":"text"}}}"#] {
            let e = response_body_with_id(body, NOVA, ID, CREATED).unwrap_err();
            assert_eq!(e.status, 502, "{}", String::from_utf8_lossy(body));
        }
        // An output without a message is an empty answer, not an error.
        let v: Value = serde_json::from_slice(&response_body_with_id(br#"{"output":{},"stopReason":"end_turn"}"#, NOVA, ID, CREATED).unwrap()).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "");
        assert_eq!(v["usage"]["total_tokens"], 0);
    }

    // ------------------------------------------------------------------------------ errors

    #[test]
    fn recorded_errors_are_mapped() {
        for yaml in [ERROR_YAML, STREAM_ERROR_YAML] {
            let rec = interaction(yaml, 0);
            let status = rec["response"]["status"]["code"].as_u64().unwrap() as u16;
            let body = serde_json::to_vec(&rec["response"]["parsed_body"]).unwrap();
            assert_eq!(status, 400);
            let (mapped, out) = map_error(status, None, &body);
            assert_eq!(mapped, 400);
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(
                v,
                json!({"error":{"message":"The provided model identifier is invalid.","type":"invalid_request_error","param":null,"code":"ValidationException"}})
            );
            assert_eq!(super::super::error_body(crate::config::Schema::Bedrock, status, &body), out);
        }
    }

    #[test]
    fn error_statuses_and_types() {
        for (status, mapped, kind, code) in [
            (400, 400, "invalid_request_error", "ValidationException"),
            (403, 403, "permission_error", "AccessDeniedException"),
            (404, 404, "invalid_request_error", "ResourceNotFoundException"),
            (408, 503, "service_unavailable_error", "ModelTimeoutException"),
            (424, 503, "service_unavailable_error", "ModelErrorException"),
            (429, 429, "rate_limit_error", "ThrottlingException"),
            (500, 500, "api_error", "InternalServerException"),
            (503, 503, "service_unavailable_error", "ServiceUnavailableException"),
        ] {
            assert_eq!(map_status(status), mapped);
            let (m, out) = map_error(status, None, br#"{"message":"m"}"#);
            assert_eq!(m, mapped);
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!((v["error"]["type"].as_str(), v["error"]["code"].as_str()), (Some(kind), Some(code)), "{status}");
        }
        // The x-amzn-errortype header, when the caller has it, names the exception.
        let (_, out) = map_error(400, Some("ServiceQuotaExceededException:http://internal.amazon.com/coral/com.amazon.bedrock/"), br#"{"Message":"quota"}"#);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["error"]["code"], "ServiceQuotaExceededException");
        assert_eq!(v["error"]["message"], "quota");
        // Bodies that are not Bedrock errors are quoted, not lost.
        let (_, out) = map_error(502, None, b"<html>Bad Gateway</html>");
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["error"]["message"], "The Bedrock backend returned HTTP 502: <html>Bad Gateway</html>");
        let (_, out) = map_error(500, None, b"");
        assert_eq!(serde_json::from_slice::<Value>(&out).unwrap()["error"]["message"], "The Bedrock backend returned HTTP 500.");
    }

    // ------------------------------------------------------------------------------ streams

    #[test]
    fn recorded_text_stream_is_translated_at_every_split() {
        let bytes = recorded_stream(STREAM_YAML, 0);
        assert_eq!(bytes.len(), 6616);
        let out = assert_split_invariant(&bytes);
        let sum = summarize(&out);
        assert!(sum.role_first);
        assert!(sum.content.starts_with("The capital of France is Paris. Paris is not only the capital city but also the most populous city in France"));
        assert!(sum.content.ends_with("referred to as \"The City of Light\" or \"The City of Love.\""), "{}", sum.content);
        assert_eq!(sum.finish, vec!["stop"]);
        assert_eq!(sum.usage, Some(json!({"prompt_tokens":13,"completion_tokens":82,"total_tokens":95,"prompt_tokens_details":{"cached_tokens":0}})));
        assert!(sum.done);
        assert!(sum.error.is_none());
        // role + 29 text deltas + finish + usage
        assert_eq!(sum.chunks, 32);
        assert!(!String::from_utf8_lossy(&out).contains("\"p\""), "the padding never reaches the client");
    }

    #[test]
    fn recorded_tool_stream_is_translated_at_every_split() {
        let bytes = recorded_stream(TOOL_STREAM_YAML, 0);
        let out = assert_split_invariant(&bytes);
        let sum = summarize(&out);
        assert!(sum.role_first);
        assert!(sum.content.starts_with("<thinking> To find the temperature of the capital of France"));
        assert!(sum.content.ends_with("current temperature in Paris.</thinking>\n"));
        assert_eq!(sum.tools, vec![("tooluse_lAG_zP8QRHmSYOwZzzaCqA".to_string(), "get_temperature".to_string(), "{\"city\":\"Paris\"}".to_string())]);
        assert_eq!(sum.finish, vec!["tool_calls"]);
        assert_eq!(sum.usage.as_ref().unwrap()["prompt_tokens"], 471);
        assert_eq!(sum.usage.as_ref().unwrap()["completion_tokens"], 91);
        assert_eq!(sum.usage.as_ref().unwrap()["total_tokens"], 562);
        assert!(sum.done);

        let bytes = recorded_stream(TOOL_STREAM_YAML, 1);
        let out = assert_split_invariant(&bytes);
        let sum = summarize(&out);
        assert_eq!(sum.content, "The current temperature in Paris, the capital of France, is 30\u{b0}C.");
        assert!(sum.tools.is_empty());
        assert_eq!(sum.finish, vec!["stop"]);
        assert_eq!(sum.usage.as_ref().unwrap()["total_tokens"], 595);
        assert!(sum.done);
        let (_, usage) = run_chunks([bytes.as_slice()]);
        assert_eq!(usage.map(|u| (u.prompt_tokens, u.completion_tokens)), Some((577, 18)));
    }

    #[test]
    fn corrupt_crc_is_an_error_event() {
        let bytes = recorded_stream(STREAM_YAML, 0);
        // The third frame starts after the first two (143 + 214 bytes).
        let third = 143 + 214;
        for (at, what) in [(0, "first prelude"), (9, "first prelude CRC"), (20, "first headers"), (third + 5, "third prelude"), (third + 100, "third payload"), (third + 217, "third message CRC")] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x20;
            let out = assert_split_invariant_step(&bad, 5);
            let sum = summarize(&out);
            let err = sum.error.unwrap_or_else(|| panic!("{what}: an error event"));
            assert_eq!(err["code"], "invalid_upstream_event", "{what}");
            assert_eq!(err["type"], "api_error");
            assert!(err["message"].as_str().unwrap().contains("CRC"), "{what}: {err}");
            assert!(!sum.done, "{what}");
            assert!(sum.finish.is_empty(), "{what}");
            if at >= third {
                // messageStart and the first delta ("The") went through; the bad frame is the second delta.
                assert_eq!(sum.content, "The", "{what}: frames before the bad one went through");
            } else {
                assert_eq!(sum.chunks, 1, "{what}: only the error");
            }
        }
    }

    #[test]
    fn truncated_streams_are_error_events() {
        let bytes = recorded_stream(STREAM_YAML, 0);
        let n = bytes.len();
        // Mid-frame (inside the metadata frame, 262 bytes), inside a prelude, and nothing at all.
        for cut in [n - 1, n - 100, n - 262 + 5, 3] {
            let out = assert_split_invariant_step(&bytes[..cut], 11);
            let sum = summarize(&out);
            let err = sum.error.expect("an error event");
            assert_eq!(err["code"], "stream_truncated", "cut at {cut}");
            assert!(err["message"].as_str().unwrap().contains("middle of an event-stream frame"), "cut at {cut}");
            assert!(!sum.done);
        }
        // On a frame boundary, but before messageStop / metadata.
        let before_stop = n - 262 - 144;
        let out = run_whole(&bytes[..before_stop]);
        let sum = summarize(&out);
        assert!(sum.finish.is_empty());
        assert_eq!(sum.error.unwrap()["message"], "upstream stream ended before completion");
        // messageStop seen but no metadata: the finish chunk went out, then the error.
        let out = run_whole(&bytes[..n - 262]);
        let sum = summarize(&out);
        assert_eq!(sum.finish, vec!["stop"]);
        assert!(sum.usage.is_none());
        assert_eq!(sum.error.unwrap()["code"], "stream_truncated");
        let (evs, done) = events(&run_whole(b""));
        assert!(!done);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0]["error"]["code"], "stream_truncated");
    }

    #[test]
    fn exception_frames_are_error_events() {
        for (kind, status_type, code) in [
            ("throttlingException", "rate_limit_error", "throttlingException"),
            ("modelStreamErrorException", "service_unavailable_error", "modelStreamErrorException"),
            ("internalServerException", "api_error", "internalServerException"),
            ("validationException", "invalid_request_error", "validationException"),
            ("serviceUnavailableException", "service_unavailable_error", "serviceUnavailableException"),
        ] {
            let input = stream(&[start(), text(0, "partial"), exception(kind, "Something went wrong"), text(0, "never"), stop("end_turn"), metadata(1, 1)]);
            let out = assert_split_invariant(&input);
            let sum = summarize(&out);
            assert_eq!(sum.content, "partial");
            assert!(!sum.done);
            assert!(sum.finish.is_empty());
            assert_eq!(sum.error, Some(json!({"message":"Something went wrong","type":status_type,"param":null,"code":code})), "{kind}");
        }
        // An exception first, without a message.
        let out = run_whole(&encode_message(&[(":message-type", HeaderValue::String("exception")), (":exception-type", HeaderValue::String("throttlingException"))], b"{}"));
        let (evs, done) = events(&out);
        assert!(!done);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0]["error"]["code"], "throttlingException");
        assert!(evs[0]["error"]["message"].as_str().unwrap().contains("throttlingException"));
        // finish() adds nothing after an error, and later input is ignored.
        let mut t = StreamTranslator::with_id(NOVA, ID, CREATED);
        let mut o = Vec::new();
        t.push(&stream(&[start(), exception("throttlingException", "slow down")]), &mut o);
        let n = o.len();
        t.push(&text(0, "more"), &mut o);
        t.finish(&mut o);
        assert_eq!(o.len(), n);
    }

    #[test]
    fn error_frames_are_error_events() {
        let err = encode_message(
            &[
                (":message-type", HeaderValue::String("error")),
                (":error-code", HeaderValue::String("InternalFailure")),
                (":error-message", HeaderValue::String("Internal failure")),
            ],
            b"",
        );
        let out = assert_split_invariant(&stream(&[start(), text(0, "a"), err]));
        let sum = summarize(&out);
        assert_eq!(sum.content, "a");
        assert_eq!(sum.error, Some(json!({"message":"Internal failure","type":"api_error","param":null,"code":"InternalFailure"})));
    }

    #[test]
    fn reasoning_and_interleaved_tools_in_a_stream() {
        let input = stream(&[
            start(),
            ev("contentBlockDelta", json!({"contentBlockIndex":0,"delta":{"reasoningContent":{"text":"Let me "}},"p":"x"})),
            ev("contentBlockDelta", json!({"contentBlockIndex":0,"delta":{"reasoningContent":{"text":"think."}}})),
            ev("contentBlockDelta", json!({"contentBlockIndex":0,"delta":{"reasoningContent":{"signature":"c2ln"}}})),
            ev("contentBlockStop", json!({"contentBlockIndex":0})),
            text(1, "Calling tools."),
            ev("contentBlockStart", json!({"contentBlockIndex":2,"start":{"toolUse":{"toolUseId":"tu_a","name":"a"}}})),
            ev("contentBlockStart", json!({"contentBlockIndex":3,"start":{"toolUse":{"toolUseId":"tu_b","name":"b"}}})),
            ev("contentBlockDelta", json!({"contentBlockIndex":3,"delta":{"toolUse":{"input":"{\"y\":"}}})),
            ev("contentBlockDelta", json!({"contentBlockIndex":2,"delta":{"toolUse":{"input":"{\"x\":1}"}}})),
            ev("contentBlockDelta", json!({"contentBlockIndex":3,"delta":{"toolUse":{"input":"\"caf\\u00e9 \\\"q\\\"\"}"}}})),
            ev("contentBlockDelta", json!({"contentBlockIndex":9,"delta":{"toolUse":{"input":"{orphan}"}}})),
            ev("contentBlockStop", json!({"contentBlockIndex":2})),
            ev("someFutureEvent", json!({"anything":[1,2]})),
            encode_event("anotherFutureEvent", b"not json at all"),
            ev("contentBlockStop", json!({"contentBlockIndex":"not a number"})),
            // metadata before messageStop: still one usage chunk, last.
            ev("metadata", json!({"usage":{"inputTokens":3,"outputTokens":4,"totalTokens":7,"cacheReadInputTokens":2},"metrics":{"latencyMs":5}})),
            stop("tool_use"),
        ]);
        let out = assert_split_invariant(&input);
        let sum = summarize(&out);
        assert_eq!(sum.reasoning, "Let me think.");
        assert_eq!(sum.content, "Calling tools.");
        assert_eq!(
            sum.tools,
            vec![
                ("tu_a".to_string(), "a".to_string(), "{\"x\":1}".to_string()),
                // Argument fragments are JSON text, forwarded as is (escapes included).
                ("tu_b".to_string(), "b".to_string(), "{\"y\":\"caf\\u00e9 \\\"q\\\"\"}".to_string()),
            ]
        );
        assert_eq!(sum.finish, vec!["tool_calls"]);
        assert_eq!(sum.usage, Some(json!({"prompt_tokens":5,"completion_tokens":4,"total_tokens":9,"prompt_tokens_details":{"cached_tokens":2}})));
        assert!(sum.done);
    }

    #[test]
    fn content_without_message_start_still_starts_with_the_role() {
        let out = run_whole(&stream(&[text(0, "hi"), stop("end_turn"), metadata(1, 2)]));
        let sum = summarize(&out);
        assert!(sum.role_first);
        assert_eq!(sum.content, "hi");
        assert!(sum.done);
        // A duplicate messageStop does not duplicate the finish chunk.
        let out = run_whole(&stream(&[start(), stop("max_tokens"), stop("end_turn"), metadata(1, 2)]));
        assert_eq!(summarize(&out).finish, vec!["length"]);
    }

    #[test]
    fn unreadable_payload_is_an_error_event() {
        let out = assert_split_invariant(&stream(&[start(), text(0, "ok"), encode_event("contentBlockDelta", b"{\"contentBlockIndex\":0,\"delta\":{\"text\":"), text(0, "after")]));
        let sum = summarize(&out);
        assert_eq!(sum.content, "ok");
        let err = sum.error.unwrap();
        assert_eq!(err["code"], "invalid_upstream_event");
        assert!(err["message"].as_str().unwrap().contains("contentBlockDelta"));
        // A field of the wrong type is unreadable too.
        let out = run_whole(&stream(&[start(), ev("contentBlockDelta", json!({"contentBlockIndex":"zero","delta":{"text":"x"}}))]));
        assert_eq!(summarize(&out).error.unwrap()["code"], "invalid_upstream_event");
    }

    #[test]
    fn garbage_and_cut_streams_never_panic_and_always_terminate() {
        let inputs: Vec<Vec<u8>> = vec![
            recorded_stream(STREAM_YAML, 0),
            recorded_stream(TOOL_STREAM_YAML, 0),
            b"\xff\xfe\x00garbage that is not an event stream".to_vec(),
            b"data: {\"type\":\"message_stop\"}\n\n".to_vec(),
            encode_event("metadata", b"null"),
            encode_event("contentBlockDelta", b"[]"),
            encode_event("contentBlockStart", br#"{"contentBlockIndex":4294967296}"#),
            encode_message(&[(":message-type", HeaderValue::String("somethingNew"))], b"{}"),
        ];
        for input in &inputs {
            for cut in (0..=input.len()).step_by(11) {
                let prefix = input.get(..cut).unwrap();
                let out = run_whole(prefix);
                let p = payloads(&out);
                let last = p.last().expect("something is always written");
                assert!(
                    last == "[DONE]" || serde_json::from_str::<Value>(last).unwrap().get("error").is_some(),
                    "stream ends with [DONE] or an error: {last}"
                );
            }
        }
        // Random corruption of a recorded stream: never a panic, always a proper end.
        let base = recorded_stream(TOOL_STREAM_YAML, 1);
        let mut seed: u32 = 7;
        for round in 0..200 {
            let mut bytes = base.clone();
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let i = (seed as usize) % bytes.len();
            bytes[i] = (seed >> 16) as u8;
            let out = run_chunks(bytes.chunks(round % 13 + 1)).0;
            let p = payloads(&out);
            assert!(p.last().is_some());
        }
    }

    // ------------------------------------------------------------------------------ embeddings

    fn emb(model: &str, body: Value) -> Result<UpstreamRequest, ApiError> {
        embeddings_upstream(&backend(json!({})), body.to_string().as_bytes(), &ctx(model, None))
    }

    #[test]
    fn titan_embeddings_request_and_response() {
        let up = emb("amazon.titan-embed-text-v2:0", json!({"model":"e","input":"hello world","dimensions":256,"encoding_format":"base64"})).unwrap();
        assert_eq!(up.path, "/model/amazon.titan-embed-text-v2%3A0/invoke");
        let body: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(body, json!({"inputText":"hello world","dimensions":256,"normalize":true}));
        assert_eq!(up.hints.encoding, EncodingFormat::Base64);
        let one = emb("amazon.titan-embed-text-v2:0", json!({"model":"e","input":["only one"]})).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&one.body).unwrap(), json!({"inputText":"only one","normalize":true}));
        let v1 = emb("amazon.titan-embed-text-v1", json!({"model":"e","input":"x"})).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&v1.body).unwrap(), json!({"inputText":"x"}));
        assert_eq!(emb("amazon.titan-embed-text-v1", json!({"model":"e","input":"x","dimensions":8})).unwrap_err().param.as_deref(), Some("dimensions"));
        let e = emb("amazon.titan-embed-text-v2:0", json!({"model":"e","input":["a","b"]})).unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (400, Some("input")));
        assert!(e.message.contains("one input per request"), "{}", e.message);
        let e = emb("amazon.titan-embed-text-v2:0", json!({"model":"e","input":[1,2,3]})).unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (400, Some("input")));

        let out = embeddings_response(br#"{"embedding":[0.25,-1.5,3.0],"inputTextTokenCount":4,"embeddingsByType":{"float":[0.25,-1.5,3.0]}}"#, "amazon.titan-embed-text-v2:0", EncodingFormat::Float).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            json!({"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.25,-1.5,3.0]}],"model":"amazon.titan-embed-text-v2:0","usage":{"prompt_tokens":4,"total_tokens":4}})
        );
        let out = embeddings_response(br#"{"embedding":[1.0],"inputTextTokenCount":1}"#, "amazon.titan-embed-text-v2:0", EncodingFormat::Base64).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["data"][0]["embedding"], base64::engine::general_purpose::STANDARD.encode(1.0f32.to_le_bytes()));
        assert_eq!(embeddings_response(b"{\"embeddings\":[]}", "amazon.titan-embed-text-v2:0", EncodingFormat::Float).unwrap_err().status, 502);
    }

    #[test]
    fn cohere_embeddings_request_and_response() {
        for model in ["cohere.embed-english-v3", "us.cohere.embed-v4:0"] {
            assert!(is_cohere_embed(model));
            let up = emb(model, json!({"model":"e","input":["a","b"]})).unwrap();
            assert_eq!(serde_json::from_slice::<Value>(&up.body).unwrap(), json!({"texts":["a","b"],"input_type":"search_document"}));
        }
        assert!(!is_cohere_embed("amazon.titan-embed-text-v2:0"));
        let up = emb("cohere.embed-v4:0", json!({"model":"e","input":"a","dimensions":512})).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&up.body).unwrap(), json!({"texts":["a"],"input_type":"search_document","output_dimension":512}));
        let out = embeddings_response(br#"{"embeddings":[[0.5,1.0],[2.0,-0.5]],"id":"x","response_type":"embeddings_floats","texts":["a","b"]}"#, "cohere.embed-english-v3", EncodingFormat::Float).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["data"], json!([{"object":"embedding","index":0,"embedding":[0.5,1.0]},{"object":"embedding","index":1,"embedding":[2.0,-0.5]}]));
        let out = embeddings_response(br#"{"embeddings":{"float":[[0.5]]},"response_type":"embeddings_by_type"}"#, "cohere.embed-v4:0", EncodingFormat::Float).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&out).unwrap()["data"][0]["embedding"], json!([0.5]));
        assert_eq!(embeddings_response(b"{}", "cohere.embed-v4:0", EncodingFormat::Float).unwrap_err().status, 502);
    }

    #[test]
    fn embeddings_are_signed_too() {
        let c = creds(None);
        let up = embeddings_upstream(&backend(json!({})), br#"{"model":"e","input":"hi"}"#, &ctx("amazon.titan-embed-text-v2:0", Some(&c))).unwrap();
        assert_eq!(sigv4_headers(&c, HOST, "/model/amazon.titan-embed-text-v2%3A0/invoke", &up.body, 1_440_938_160), up.headers);
    }
}
