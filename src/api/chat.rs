//! The OpenAI Chat Completions contract: the request as clients send it and the response and stream
//! chunks the gateway answers with, whatever provider served them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ApiError;
use super::limits::RequestLimits;

// ---------------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------------

/// A `POST /v1/chat/completions` body. Fields the gateway does not translate stay out of this type:
/// OpenAI-compatible backends receive the client's JSON (edited, not re-built), so nothing is lost.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub tools: Option<Vec<Tool>>,
    #[serde(default)]
    pub tool_choice: Option<ToolChoice>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    /// `none`, `minimal`, `low`, `medium`, `high` (and provider extensions such as `xhigh`).
    #[serde(default)]
    pub reasoning_effort: Option<String>,
}

impl ChatRequest {
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Whether the client asked for the usage-only last chunk of a stream.
    pub fn wants_stream_usage(&self) -> bool {
        self.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false)
    }

    /// `max_completion_tokens` wins over the deprecated `max_tokens`, as in OpenAI's API.
    pub fn output_token_limit(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Message {
    pub role: Role,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCall>>,
    #[serde(default)]
    pub tool_call_id: Option<String>,
    #[serde(default)]
    pub reasoning_content: Option<String>,
}

/// Message content: a plain string or an array of typed parts.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

impl Content {
    /// The text of the content, parts joined by newlines; non-text parts are skipped.
    pub fn joined_text(&self) -> String {
        match self {
            Content::Text(s) => s.clone(),
            Content::Parts(parts) => {
                let mut out = String::new();
                for p in parts {
                    if let ContentPart::Text { text } = p {
                        if !out.is_empty() {
                            out.push('\n');
                        }
                        out.push_str(text);
                    }
                }
                out
            }
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
    InputAudio { input_audio: Value },
    File { file: Value },
    Refusal { refusal: String },
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ImageUrl {
    pub url: String,
    #[serde(default)]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: FunctionCall,
}

fn function_type() -> String {
    "function".to_string()
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct FunctionCall {
    pub name: String,
    /// JSON text, as OpenAI sends it.
    pub arguments: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionDef,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct FunctionDef {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub parameters: Option<Value>,
    #[serde(default)]
    pub strict: Option<bool>,
}

/// `"none" | "auto" | "required"` or `{"type":"function","function":{"name":…}}`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ToolChoice {
    Mode(String),
    Named(NamedToolChoice),
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct NamedToolChoice {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: NamedFunction,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct NamedFunction {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct JsonSchemaFormat {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub schema: Option<Value>,
    #[serde(default)]
    pub strict: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s.clone()],
            Stop::Many(v) => v.clone(),
        }
    }
}

/// Parses and validates a chat request body. Errors name the offending parameter the way OpenAI
/// does (`messages[0].role`), so a client can see what to fix. No limits: for bodies the gateway
/// has already checked with [`parse_chat_request_with`].
pub fn parse_chat_request(body: &[u8]) -> Result<ChatRequest, ApiError> {
    parse_chat_request_with(body, &RequestLimits::UNLIMITED)
}

/// [`parse_chat_request`] within the gateway's limits on what a client controls.
pub fn parse_chat_request_with(body: &[u8], limits: &RequestLimits) -> Result<ChatRequest, ApiError> {
    limits.check_body(body)?;
    let req: ChatRequest = parse_json_body(body)?;
    if req.model.is_empty() {
        return Err(ApiError::invalid_param("model", "`model` must be a non-empty string."));
    }
    limits.check_string("model", Some(&req.model), limits.max_model_bytes)?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid_param("messages", "`messages` must be a non-empty array."));
    }
    limits.check_len("messages", req.messages.len(), limits.max_messages)?;
    if let Some(n) = req.n {
        if n == 0 {
            return Err(ApiError::invalid_param("n", "`n` must be at least 1."));
        }
    }
    limits.check_n(req.n)?;
    limits.check_string("user", req.user.as_deref(), limits.max_user_bytes)?;
    if let Some(Stop::Many(v)) = &req.stop {
        limits.check_len("stop", v.len(), limits.max_stop_sequences)?;
    }
    if let Some(tools) = &req.tools {
        limits.check_len("tools", tools.len(), limits.max_tools)?;
        for (i, t) in tools.iter().enumerate() {
            limits.check_tool_schema(i, t.function.parameters.as_ref())?;
        }
    }
    let mut images = 0usize;
    for (i, m) in req.messages.iter().enumerate() {
        if let Some(Content::Parts(parts)) = &m.content {
            for (j, p) in parts.iter().enumerate() {
                if let ContentPart::ImageUrl { image_url } = p {
                    images += 1;
                    if images > limits.max_images {
                        return Err(limits.too_many_images(images));
                    }
                    if image_url.url.len() > limits.max_image_url_bytes {
                        let param = format!("messages[{i}].content[{j}].image_url.url");
                        limits.check_string(&param, Some(&image_url.url), limits.max_image_url_bytes)?;
                    }
                }
            }
        }
        if m.role == Role::Tool && m.tool_call_id.is_none() {
            return Err(ApiError::invalid_param(
                format!("messages[{i}].tool_call_id"),
                format!("Missing required parameter: 'messages[{i}].tool_call_id'."),
            ));
        }
        if m.content.is_none() && m.role != Role::Assistant {
            return Err(ApiError::invalid_param(
                format!("messages[{i}].content"),
                format!("Missing required parameter: 'messages[{i}].content'."),
            ));
        }
    }
    Ok(req)
}

/// Deserialises a JSON body into `T`, turning serde's errors into OpenAI-shaped 400s with a `param`.
pub fn parse_json_body<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid_request(
            "We could not parse the JSON body of your request: the body is empty. The API expects a JSON payload.",
        ));
    }
    // serde's derived maps also accept positional arrays (`["gpt-4o", [...]]`); the API takes objects.
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        Some(_) if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() => {
            return Err(ApiError::invalid_request("The request body must be a JSON object."));
        }
        _ => {
            return Err(ApiError::invalid_request(
                "We could not parse the JSON body of your request. The API expects a JSON object payload.",
            ))
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let result = serde_path_to_error::deserialize(&mut de)
        .map_err(|err| (err.path().to_string(), err.into_inner()))
        .and_then(|v| de.end().map(|()| v).map_err(|e| (String::new(), e)));
    result.map_err(|(path, inner)| {
        match inner.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof | serde_json::error::Category::Io => {
                ApiError::invalid_request(format!(
                    "We could not parse the JSON body of your request ({inner}). The API expects a JSON payload."
                ))
            }
            serde_json::error::Category::Data => {
                let text = inner.to_string();
                let detail = strip_position(&text);
                let param = match missing_field(detail) {
                    Some(field) if path == "." || path.is_empty() => field.to_string(),
                    Some(field) => format!("{path}.{field}"),
                    None if path == "." => String::new(),
                    None => path,
                };
                if param.is_empty() {
                    ApiError::invalid_request(format!("Invalid request body: {detail}."))
                } else if detail.starts_with("missing field") {
                    ApiError::invalid_param(param.clone(), format!("Missing required parameter: '{param}'."))
                } else {
                    ApiError::invalid_param(param.clone(), format!("Invalid value for '{param}': {detail}."))
                }
            }
        }
    })
}

fn strip_position(text: &str) -> &str {
    match text.rfind(" at line ") {
        Some(i) => &text[..i],
        None => text,
    }
}

fn missing_field(detail: &str) -> Option<&str> {
    let rest = detail.strip_prefix("missing field `")?;
    rest.strip_suffix('`')
}

// ---------------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Choice {
    pub index: u32,
    pub message: ResponseMessage,
    pub finish_reason: Option<String>,
    pub logprobs: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ResponseMessage {
    pub role: &'static str,
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    pub refusal: Option<String>,
}

/// Token usage in OpenAI's shape. Deserialisable too: the gateway reads it back from every answer.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct PromptTokensDetails {
    #[serde(default)]
    pub cached_tokens: u64,
    /// Tokens written to a provider's prompt cache (Anthropic); not an OpenAI field, so omitted when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_creation_tokens: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct CompletionTokensDetails {
    #[serde(default)]
    pub reasoning_tokens: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletionChunk<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<ChunkChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<&'a Usage>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChunkChoice<'a> {
    pub index: u32,
    pub delta: Delta<'a>,
    pub finish_reason: Option<&'a str>,
    pub logprobs: Option<()>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta<'a>>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ToolCallDelta<'a> {
    pub index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionDelta<'a>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<&'a str>,
}

/// The parts of a whole OpenAI answer (chat, embeddings or error) the gateway accounts with.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ResponseSummary {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub usage: Option<Usage>,
    #[serde(default)]
    pub error: Option<ErrorSummary>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ErrorSummary {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub code: Option<Value>,
}

impl ResponseSummary {
    /// Never fails: an unreadable body summarises to nothing.
    pub fn parse(body: &[u8]) -> ResponseSummary {
        serde_json::from_slice(body).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_of_answers_and_errors() {
        let s = ResponseSummary::parse(br#"{"model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#);
        assert_eq!(s.model.as_deref(), Some("m"));
        assert_eq!(s.usage.unwrap().completion_tokens, 2);
        let s = ResponseSummary::parse(br#"{"error":{"message":"x","type":"rate_limit_error","code":"rate_limit_exceeded"}}"#);
        assert_eq!(s.error.unwrap().kind.as_deref(), Some("rate_limit_error"));
        assert!(ResponseSummary::parse(b"upstream connect error").model.is_none());
    }

    fn err(body: &str) -> ApiError {
        parse_chat_request(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn parses_a_full_request() {
        let r = parse_chat_request(
            br#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}],
                "stream":true,"stream_options":{"include_usage":true},"stop":["x"],"max_tokens":5,
                "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],
                "tool_choice":{"type":"function","function":{"name":"f"}},"response_format":{"type":"json_object"}}"#,
        )
        .unwrap();
        assert!(r.is_stream());
        assert!(r.wants_stream_usage());
        assert_eq!(r.output_token_limit(), Some(5));
        assert_eq!(r.stop.unwrap().to_vec(), vec!["x"]);
        assert!(matches!(r.tool_choice, Some(ToolChoice::Named(_))));
        assert!(matches!(r.response_format, Some(ResponseFormat::JsonObject)));
    }

    #[test]
    fn invalid_json_is_400_without_param() {
        let e = err("{not json");
        assert_eq!(e.status, 400);
        assert!(e.param.is_none());
        assert!(e.message.contains("could not parse the JSON body"));
        assert_eq!(err("").status, 400);
        assert!(err(r#"{"model":"m","messages":[{"role":"user","content":"x"}]} trailing"#).message.contains("could not parse"));
    }

    #[test]
    fn missing_fields_are_named() {
        assert_eq!(err(r#"{"messages":[{"role":"user","content":"x"}]}"#).param.as_deref(), Some("model"));
        assert_eq!(err(r#"{"model":"m"}"#).param.as_deref(), Some("messages"));
        assert_eq!(err(r#"{"model":"m","messages":[{"content":"x"}]}"#).param.as_deref(), Some("messages[0].role"));
        assert_eq!(err(r#"{"model":"m","messages":[]}"#).param.as_deref(), Some("messages"));
        assert_eq!(err(r#"{"model":"m","messages":[{"role":"user"}]}"#).param.as_deref(), Some("messages[0].content"));
    }

    #[test]
    fn wrong_types_are_named() {
        assert_eq!(err(r#"{"model":5,"messages":[{"role":"user","content":"x"}]}"#).param.as_deref(), Some("model"));
        assert_eq!(err(r#"{"model":"m","messages":"hi"}"#).param.as_deref(), Some("messages"));
        assert_eq!(err(r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#).param.as_deref(), Some("messages[0].role"));
        assert_eq!(
            err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#).param.as_deref(),
            Some("temperature")
        );
        assert_eq!(err(r#"[1,2]"#).status, 400);
        let positional = err(r#"["m",[{"role":"user","content":"x"}]]"#);
        assert_eq!((positional.status, positional.param), (400, None));
        assert!(err("  \"text\"").message.contains("JSON object"));
    }
}
