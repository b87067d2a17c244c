//! Google Gemini API (`generativelanguage.googleapis.com/v1beta`) and its Vertex AI variant ⇄
//! OpenAI Chat Completions and Embeddings.
//!
//! * [`chat_request`] builds `POST {base}/models/{model}:generateContent` (or
//!   `:streamGenerateContent?alt=sse`) from an OpenAI chat body; [`request_body`] is the body part.
//!   With `vertex: {project, location}` (and `host` `{location}-aiplatform.googleapis.com`) the
//!   path is `/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:…`.
//! * [`response_body`] turns a whole `GenerateContentResponse` into a `chat.completion`.
//! * [`StreamTranslator`] turns the `alt=sse` stream (one whole `GenerateContentResponse` per event,
//!   CRLF separators, no terminator) into `chat.completion.chunk` events, ending with a usage-only
//!   chunk and `data: [DONE]`.
//! * [`embeddings_request`] / [`embeddings_response_body`]: `POST /v1/embeddings` ⇄
//!   `:batchEmbedContents`.
//! * [`map_error`] / [`map_status`]: Google's `{"error":{"code","message","status"}}` → OpenAI.
//!
//! Gemini has no tool-call ids of its own (older models) and requires the `thoughtSignature` of a
//! function call to come back with it (Gemini 3). Both ride in the OpenAI tool-call id, which every
//! client echoes verbatim: `call_<responseId>_<n>` (or Gemini's own id), then
//! `__thought__<signature>` when the part carried one. Tool results are matched back to function
//! names through the assistant `tool_calls` earlier in the conversation.
//!
//! Everything here runs on untrusted bytes inside the VM: no `unwrap`, no indexing on input.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::util::{overflow, truncated, unreadable_event, write_error_event, write_chunk, write_usage_and_done, Phase};
use super::{unsupported, AttemptContext, ResponseHints, StreamTranslate, UpstreamRequest};
use crate::api::chat::{
    parse_chat_request, parse_json_body, ChatCompletion, ChatRequest, Choice,
    CompletionTokensDetails, Content, ContentPart, Delta, FunctionCall, FunctionDelta, Message, PromptTokensDetails,
    ResponseFormat, ResponseMessage, Role, ToolCall, ToolCallDelta, ToolChoice, Usage,
};
use crate::api::embeddings::{embeddings_response_json, parse_embeddings_request};
use crate::api::error::{kind_for_status, ApiError};
use crate::config::Backend;
use crate::stream::sse::{SseParser, SseStatus};

/// Separates a tool-call id from the Gemini `thoughtSignature` carried inside it.
pub const THOUGHT_SEPARATOR: &str = "__thought__";

/// Wrapper key for a tool result that is not a JSON object (`functionResponse.response` must be one).
const TOOL_RESULT_KEY: &str = "result";

/// Deepest JSON Schema nesting converted to Gemini's `Schema`; deeper ones go as JSON Schema.
const MAX_SCHEMA_DEPTH: usize = 40;

/// Most candidates (choices) a stream may open; more are ignored rather than grow state.
const MAX_STREAM_CHOICES: usize = 64;

// =============================================================================================
// Paths and headers
// =============================================================================================

/// Model names go into the URL path: only resource-name characters, no `..`, `?`, `#`, `:` or `%`
/// (a client-chosen model must not be able to reach another endpoint with the gateway's key).
fn check_model_name(model: &str) -> Result<(), ApiError> {
    let bad = |why: &str| {
        let shown: String = model.chars().take(100).collect();
        ApiError::invalid_param("model", format!("The model name `{shown}` cannot be sent to the Gemini backend: {why}"))
    };
    if model.is_empty() {
        return Err(bad("it is empty."));
    }
    if model.len() > 256 {
        return Err(bad("it is longer than 256 characters."));
    }
    if !model.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b'/')) {
        return Err(bad("only letters, digits, '-', '_', '.', '@' and '/' are allowed."));
    }
    if model.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
        return Err(bad("it has an empty, '.' or '..' path segment."));
    }
    Ok(())
}

/// The model's resource name: `models/{model}` (Gemini API; `tunedModels/…` kept), or
/// `projects/{p}/locations/{l}/publishers/google/models/{model}` (Vertex; a name with a `/` is
/// taken relative to the location, a `projects/…` name as is).
fn model_resource(backend: &Backend, model: &str) -> Result<String, ApiError> {
    check_model_name(model)?;
    match &backend.vertex {
        None => {
            if model.starts_with("models/") || model.starts_with("tunedModels/") {
                Ok(model.to_string())
            } else if model.contains('/') {
                Err(ApiError::invalid_param(
                    "model",
                    format!("The model name `{model}` is not a Gemini API model (`models/…` or `tunedModels/…`)."),
                ))
            } else {
                Ok(format!("models/{model}"))
            }
        }
        Some(v) => {
            if model.starts_with("projects/") {
                Ok(model.to_string())
            } else if model.contains('/') {
                Ok(format!("projects/{}/locations/{}/{model}", v.project, v.location))
            } else {
                Ok(format!("projects/{}/locations/{}/publishers/google/models/{model}", v.project, v.location))
            }
        }
    }
}

/// `{base}/{resource}:{method}`; `method` may carry a query (`streamGenerateContent?alt=sse`).
fn method_path(backend: &Backend, model: &str, method: &str) -> Result<String, ApiError> {
    Ok(format!("{}/{}:{method}", backend.base_path(), model_resource(backend, model)?))
}

/// The chat attempt for a Gemini backend: path by model and stream, the translated body.
pub fn chat_request(backend: &Backend, body: &[u8], ctx: &AttemptContext) -> Result<UpstreamRequest, ApiError> {
    let req = parse_chat_request(body)?;
    let extras: Extras = parse_json_body(body)?;
    let stream = req.is_stream();
    let method = if stream { "streamGenerateContent?alt=sse" } else { "generateContent" };
    let path = method_path(backend, ctx.model, method)?;
    let body = request_body(&req, &extras)?;
    Ok(UpstreamRequest { path, body, headers: Vec::new(), hints: ResponseHints::chat(stream, ctx.model) })
}

// =============================================================================================
// Chat request
// =============================================================================================

/// What the gateway reads from the raw body beyond [`ChatRequest`]: the `gemini` pass-through
/// object, and the response schema with its key order (serde_json's `Value` sorts keys, and Gemini
/// generates properties in the order it is given).
#[derive(Deserialize, Default)]
pub struct Extras {
    #[serde(default)]
    gemini: Option<Value>,
    #[serde(default)]
    response_format: Option<RawResponseFormat>,
}

#[derive(Deserialize, Default)]
struct RawResponseFormat {
    #[serde(default)]
    json_schema: Option<RawJsonSchema>,
}

#[derive(Deserialize, Default)]
struct RawJsonSchema {
    #[serde(default)]
    schema: Option<Ordered>,
}

/// JSON with object keys in document order.
#[derive(Debug, Clone)]
enum Ordered {
    Object(Vec<(String, Ordered)>),
    Array(Vec<Ordered>),
    Scalar(Value),
}

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Ordered, E> {
                Ok(Ordered::Scalar(Value::Bool(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Ordered, E> {
                Ok(Ordered::Scalar(Value::from(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Ordered, E> {
                Ok(Ordered::Scalar(Value::from(v)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Ordered, E> {
                Ok(Ordered::Scalar(Value::from(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Ordered, E> {
                Ok(Ordered::Scalar(Value::String(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Ordered, E> {
                Ok(Ordered::Scalar(Value::String(v)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Ordered, E> {
                Ok(Ordered::Scalar(Value::Null))
            }
            fn visit_none<E: de::Error>(self) -> Result<Ordered, E> {
                Ok(Ordered::Scalar(Value::Null))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Ordered, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = seq.next_element()? {
                    v.push(x);
                }
                Ok(Ordered::Array(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                let mut v: Vec<(String, Ordered)> = Vec::new();
                while let Some((k, x)) = map.next_entry::<String, Ordered>()? {
                    // A repeated key replaces the earlier value, as in serde_json.
                    v.retain(|(old, _)| *old != k);
                    v.push((k, x));
                }
                Ok(Ordered::Object(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl Ordered {
    fn to_value(&self) -> Value {
        match self {
            Ordered::Scalar(v) => v.clone(),
            Ordered::Array(a) => Value::Array(a.iter().map(Ordered::to_value).collect()),
            Ordered::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), v.to_value())).collect()),
        }
    }

    /// The schema as a `Value`, with `propertyOrdering` (Gemini's extension) added to every schema
    /// object that has `properties` and no ordering of its own, so the document order survives.
    fn schema_with_ordering(&self, depth: usize) -> Value {
        let Ordered::Object(fields) = self else { return self.to_value() };
        if depth > MAX_SCHEMA_DEPTH {
            return self.to_value();
        }
        let mut out = Map::new();
        let mut ordering = None;
        for (k, v) in fields {
            let converted = match (k.as_str(), v) {
                ("properties" | "$defs" | "definitions" | "patternProperties", Ordered::Object(props)) => {
                    if k == "properties" {
                        ordering = Some(props.iter().map(|(name, _)| Value::String(name.clone())).collect::<Vec<_>>());
                    }
                    Value::Object(props.iter().map(|(name, s)| (name.clone(), s.schema_with_ordering(depth + 1))).collect())
                }
                ("items" | "additionalProperties" | "not" | "contains" | "if" | "then" | "else", _) => {
                    match v {
                        Ordered::Array(list) => Value::Array(list.iter().map(|s| s.schema_with_ordering(depth + 1)).collect()),
                        _ => v.schema_with_ordering(depth + 1),
                    }
                }
                ("anyOf" | "oneOf" | "allOf" | "prefixItems", Ordered::Array(list)) => {
                    Value::Array(list.iter().map(|s| s.schema_with_ordering(depth + 1)).collect())
                }
                _ => v.to_value(),
            };
            out.insert(k.clone(), converted);
        }
        if let Some(order) = ordering {
            if !order.is_empty() && !out.contains_key("propertyOrdering") {
                out.insert("propertyOrdering".into(), Value::Array(order));
            }
        }
        Value::Object(out)
    }
}

/// Converts a JSON Schema into Gemini's `Schema` (an OpenAPI 3.0 subset: upper-case `type`,
/// `nullable`, string-only `enum`, `anyOf`). `None` when the schema uses anything whose meaning
/// would be lost (`$ref`, `allOf`, `additionalProperties` schemas, tuples, multi-type unions, …);
/// the caller then sends the JSON Schema as is (`parametersJsonSchema` / `responseJsonSchema`).
/// Annotations with no effect on validity (`$schema`, `$id`, `examples`, boolean
/// `additionalProperties`, …) are dropped.
fn gemini_schema(v: &Value, depth: usize) -> Option<Value> {
    if depth > MAX_SCHEMA_DEPTH {
        return None;
    }
    let obj = v.as_object()?;
    let mut out = Map::new();
    let mut nullable = false;
    let mut merged: Option<Map<String, Value>> = None;
    for (k, val) in obj {
        match k.as_str() {
            "type" => match val {
                Value::String(t) => {
                    out.insert("type".into(), Value::String(gemini_type(t)?.to_string()));
                }
                Value::Array(types) => {
                    let mut non_null = Vec::new();
                    for t in types {
                        match t.as_str()? {
                            "null" => nullable = true,
                            other => non_null.push(gemini_type(other)?),
                        }
                    }
                    let [only] = non_null.as_slice() else { return None };
                    out.insert("type".into(), Value::String((*only).to_string()));
                }
                _ => return None,
            },
            "properties" => {
                let mut props = Map::new();
                for (name, s) in val.as_object()? {
                    props.insert(name.clone(), gemini_schema(s, depth + 1)?);
                }
                out.insert("properties".into(), Value::Object(props));
            }
            "items" => {
                out.insert("items".into(), gemini_schema(val, depth + 1)?);
            }
            "anyOf" | "oneOf" => {
                let mut alternatives = Vec::new();
                for alt in val.as_array()? {
                    if is_null_schema(alt) {
                        nullable = true;
                    } else {
                        alternatives.push(gemini_schema(alt, depth + 1)?);
                    }
                }
                match alternatives.len() {
                    0 => return None,
                    1 => match alternatives.pop() {
                        Some(Value::Object(m)) => merged = Some(m),
                        _ => return None,
                    },
                    _ => {
                        out.insert("anyOf".into(), Value::Array(alternatives));
                    }
                }
            }
            "enum" => {
                let mut values = Vec::new();
                for e in val.as_array()? {
                    match e {
                        Value::String(_) => values.push(e.clone()),
                        Value::Null => nullable = true,
                        _ => return None,
                    }
                }
                out.insert("enum".into(), Value::Array(values));
            }
            "const" => {
                let c = val.as_str()?;
                out.insert("enum".into(), json!([c]));
            }
            "additionalProperties" => {
                if !val.is_boolean() {
                    return None;
                }
            }
            "format" | "title" | "description" | "nullable" | "minItems" | "maxItems" | "minProperties"
            | "maxProperties" | "minimum" | "maximum" | "minLength" | "maxLength" | "pattern" | "example"
            | "propertyOrdering" | "default" | "required" => {
                out.insert(k.clone(), val.clone());
            }
            "$schema" | "$id" | "$comment" | "examples" | "deprecated" | "readOnly" | "writeOnly" | "strict" => {}
            _ => return None,
        }
    }
    // `anyOf: [X, null]` is X, nullable; the outer schema's own keywords win.
    if let Some(inner) = merged {
        for (k, v) in inner {
            out.entry(k).or_insert(v);
        }
    }
    if nullable {
        out.insert("nullable".into(), Value::Bool(true));
    }
    if out.contains_key("enum") && !out.contains_key("type") {
        out.insert("type".into(), Value::String("STRING".into()));
    }
    Some(Value::Object(out))
}

fn gemini_type(t: &str) -> Option<&'static str> {
    Some(match t {
        "string" => "STRING",
        "number" => "NUMBER",
        "integer" => "INTEGER",
        "boolean" => "BOOLEAN",
        "array" => "ARRAY",
        "object" => "OBJECT",
        _ => return None,
    })
}

fn is_null_schema(v: &Value) -> bool {
    v.as_object().is_some_and(|o| o.len() == 1 && o.get("type").and_then(Value::as_str) == Some("null"))
}

/// A turn being assembled; consecutive turns of the same role are merged (Gemini wants the
/// responses to parallel function calls together in one turn).
struct Turn {
    role: &'static str,
    parts: Vec<Value>,
}

fn push_turn(turns: &mut Vec<Turn>, role: &'static str, parts: Vec<Value>) {
    if parts.is_empty() {
        return;
    }
    if let Some(last) = turns.last_mut().filter(|t| t.role == role) {
        last.parts.extend(parts);
        return;
    }
    turns.push(Turn { role, parts });
}

/// Build the `GenerateContentRequest` JSON body.
///
/// * `system` / `developer` messages, wherever they appear, become `systemInstruction` parts.
/// * `user` → role `user`; `assistant` → role `model` with its text, then a `functionCall` part per
///   tool call (`id` and `thoughtSignature` recovered from the tool-call id); `tool` → a
///   `functionResponse` part in a `user` turn, its `name` found through the assistant tool call
///   with that id. A tool result that is a JSON object is sent as the response object, anything
///   else as `{"result": <text>}`. Consecutive same-role turns are merged.
/// * Images: data URLs → `inlineData`, `http(s)://` and `gs://` URLs → `fileData` with a MIME type
///   guessed from the extension (`image/jpeg` when unknown); `input_audio` → `inlineData`
///   `audio/<format>`; `file.file_data` (data URL) → `inlineData`.
/// * `tools` → one `functionDeclarations` tool; parameters as Gemini `Schema` when convertible,
///   else `parametersJsonSchema`. `tool_choice` auto/none/required/named → `functionCallingConfig`
///   AUTO/NONE/ANY/ANY + `allowedFunctionNames`.
/// * `generationConfig`: temperature, topP, maxOutputTokens, stopSequences, candidateCount (n > 1),
///   seed (wrapped into 32 bits), presence/frequencyPenalty, responseMimeType + responseSchema
///   (or responseJsonSchema) for `response_format`, thinkingConfig from `reasoning_effort`.
/// * `gemini`: an object of Gemini request fields passed through: `generationConfig` keys and
///   `thinkingConfig` go into `generationConfig`, `tools` are appended, anything else
///   (`safetySettings`, `cachedContent`, `labels`, `toolConfig`, …) is set at the top level,
///   replacing what the translation produced.
/// * Not translated: `parallel_tool_calls` (Gemini has no switch), `logprobs`, `user`, `metadata`,
///   `stream_options` (streams always end with usage), earlier turns' `reasoning_content`.
pub fn request_body(req: &ChatRequest, extras: &Extras) -> Result<Vec<u8>, ApiError> {
    let obj = request_object(req, extras)?;
    serde_json::to_vec(&Value::Object(obj))
        .map_err(|e| ApiError::gateway(500, format!("could not serialise the Gemini request: {e}")))
}

fn request_object(req: &ChatRequest, extras: &Extras) -> Result<Map<String, Value>, ApiError> {
    let mut system: Vec<Value> = Vec::new();
    let mut turns: Vec<Turn> = Vec::with_capacity(req.messages.len());

    for (i, m) in req.messages.iter().enumerate() {
        match m.role {
            Role::System | Role::Developer => {
                if let Some(c) = &m.content {
                    let text = c.joined_text();
                    if !text.is_empty() {
                        system.push(json!({ "text": text }));
                    }
                }
            }
            Role::User => {
                let mut parts = Vec::new();
                if let Some(c) = &m.content {
                    content_parts(c, i, &mut parts)?;
                }
                push_turn(&mut turns, "user", parts);
            }
            Role::Assistant => {
                let mut parts = Vec::new();
                if let Some(c) = &m.content {
                    content_parts(c, i, &mut parts)?;
                }
                if let Some(calls) = &m.tool_calls {
                    for (k, call) in calls.iter().enumerate() {
                        let args = parse_arguments(&call.function.arguments).ok_or_else(|| {
                            ApiError::invalid_param(
                                format!("messages[{i}].tool_calls[{k}].function.arguments"),
                                format!(
                                    "Invalid value for 'messages[{i}].tool_calls[{k}].function.arguments': \
                                     expected a JSON object encoded as a string."
                                ),
                            )
                        })?;
                        let (id, signature) = split_tool_call_id(&call.id);
                        let mut fc = Map::new();
                        if !id.is_empty() {
                            fc.insert("id".into(), Value::String(id.to_string()));
                        }
                        fc.insert("name".into(), Value::String(call.function.name.clone()));
                        fc.insert("args".into(), args);
                        let mut part = Map::new();
                        part.insert("functionCall".into(), Value::Object(fc));
                        if let Some(sig) = signature {
                            part.insert("thoughtSignature".into(), Value::String(sig.to_string()));
                        }
                        parts.push(Value::Object(part));
                    }
                }
                push_turn(&mut turns, "model", parts);
            }
            Role::Tool => {
                let Some(call_id) = m.tool_call_id.as_deref() else {
                    return Err(ApiError::invalid_param(
                        format!("messages[{i}].tool_call_id"),
                        format!("Missing required parameter: 'messages[{i}].tool_call_id'."),
                    ));
                };
                let name = tool_name_for(&req.messages, i, call_id).or(m.name.as_deref()).ok_or_else(|| {
                    ApiError::invalid_param(
                        format!("messages[{i}].tool_call_id"),
                        format!(
                            "Invalid value for 'messages[{i}].tool_call_id': no earlier assistant message has a tool \
                             call with this id, and the Gemini backend needs the function's name."
                        ),
                    )
                })?;
                let response = tool_response(m, i)?;
                let (id, _) = split_tool_call_id(call_id);
                let mut fr = Map::new();
                if !id.is_empty() {
                    fr.insert("id".into(), Value::String(id.to_string()));
                }
                fr.insert("name".into(), Value::String(name.to_string()));
                fr.insert("response".into(), response);
                push_turn(&mut turns, "user", vec![json!({ "functionResponse": Value::Object(fr) })]);
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

    let mut out = Map::new();
    let contents: Vec<Value> = turns.into_iter().map(|t| json!({ "role": t.role, "parts": t.parts })).collect();
    out.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        out.insert("systemInstruction".into(), json!({ "role": "user", "parts": system }));
    }

    // Tools.
    let mut tools: Vec<Value> = Vec::new();
    let mut declared = false;
    if let Some(defs) = req.tools.as_ref().filter(|t| !t.is_empty()) {
        let mut decls = Vec::with_capacity(defs.len());
        for (t, def) in defs.iter().enumerate() {
            if def.kind != "function" {
                return Err(ApiError::invalid_param(
                    format!("tools[{t}].type"),
                    format!("Tool type '{}' is not supported by this backend; only 'function' tools are.", def.kind),
                ));
            }
            let mut d = Map::new();
            d.insert("name".into(), Value::String(def.function.name.clone()));
            d.insert("description".into(), Value::String(def.function.description.clone().unwrap_or_default()));
            if let Some(params) = &def.function.parameters {
                match gemini_schema(params, 0) {
                    Some(s) => d.insert("parameters".into(), s),
                    None => d.insert("parametersJsonSchema".into(), params.clone()),
                };
            }
            decls.push(Value::Object(d));
        }
        tools.push(json!({ "functionDeclarations": decls }));
        declared = true;
    }
    if declared {
        let config = match &req.tool_choice {
            None => None,
            Some(ToolChoice::Mode(mode)) => Some(match mode.as_str() {
                "auto" => json!({ "mode": "AUTO" }),
                "none" => json!({ "mode": "NONE" }),
                "required" => json!({ "mode": "ANY" }),
                other => {
                    return Err(ApiError::invalid_param(
                        "tool_choice",
                        format!(
                            "Invalid value for 'tool_choice': '{other}'. Supported values are 'none', 'auto' and 'required'."
                        ),
                    ))
                }
            }),
            Some(ToolChoice::Named(named)) => {
                Some(json!({ "mode": "ANY", "allowedFunctionNames": [named.function.name] }))
            }
        };
        if let Some(c) = config {
            out.insert("toolConfig".into(), json!({ "functionCallingConfig": c }));
        }
    }

    // Generation config.
    let mut gen = Map::new();
    if let Some(n) = req.n.filter(|n| *n > 1) {
        gen.insert("candidateCount".into(), Value::from(n));
    }
    if let Some(stop) = &req.stop {
        let v = stop.to_vec();
        if !v.is_empty() {
            gen.insert("stopSequences".into(), json!(v));
        }
    }
    if let Some(max) = req.output_token_limit() {
        gen.insert("maxOutputTokens".into(), Value::from(max));
    }
    if let Some(t) = req.temperature {
        gen.insert("temperature".into(), Value::from(t));
    }
    if let Some(p) = req.top_p {
        gen.insert("topP".into(), Value::from(p));
    }
    if let Some(seed) = req.seed {
        // Gemini's seed is an int32; a wider OpenAI seed is wrapped, so equal seeds stay equal.
        gen.insert("seed".into(), Value::from(seed as i32));
    }
    if let Some(p) = req.presence_penalty {
        gen.insert("presencePenalty".into(), Value::from(p));
    }
    if let Some(p) = req.frequency_penalty {
        gen.insert("frequencyPenalty".into(), Value::from(p));
    }
    match &req.response_format {
        Some(ResponseFormat::JsonObject) => {
            gen.insert("responseMimeType".into(), Value::String("application/json".into()));
        }
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            gen.insert("responseMimeType".into(), Value::String("application/json".into()));
            let ordered = extras
                .response_format
                .as_ref()
                .and_then(|f| f.json_schema.as_ref())
                .and_then(|s| s.schema.as_ref())
                .map(|s| s.schema_with_ordering(0));
            if let Some(schema) = ordered.or_else(|| json_schema.schema.clone()) {
                match gemini_schema(&schema, 0) {
                    Some(s) => gen.insert("responseSchema".into(), s),
                    None => gen.insert("responseJsonSchema".into(), schema),
                };
            }
        }
        Some(ResponseFormat::Text) | None => {}
    }
    if let Some(effort) = req.reasoning_effort.as_deref() {
        if let Some(cfg) = thinking_config(effort) {
            gen.insert("thinkingConfig".into(), cfg);
        }
    }

    // The `gemini` pass-through object.
    let mut top_level = Map::new();
    if let Some(g) = &extras.gemini {
        let Value::Object(g) = g else {
            return Err(ApiError::invalid_param("gemini", "Invalid value for 'gemini': expected an object of Gemini request fields."));
        };
        for (k, v) in g {
            match k.as_str() {
                "generationConfig" => {
                    let Value::Object(m) = v else {
                        return Err(ApiError::invalid_param(
                            "gemini.generationConfig",
                            "Invalid value for 'gemini.generationConfig': expected an object.",
                        ));
                    };
                    for (gk, gv) in m {
                        gen.insert(gk.clone(), gv.clone());
                    }
                }
                "thinkingConfig" => {
                    gen.insert("thinkingConfig".into(), v.clone());
                }
                "tools" => {
                    let Value::Array(extra) = v else {
                        return Err(ApiError::invalid_param("gemini.tools", "Invalid value for 'gemini.tools': expected an array."));
                    };
                    tools.extend(extra.iter().cloned());
                }
                "contents" => {
                    return Err(ApiError::invalid_param(
                        "gemini.contents",
                        "'gemini.contents' cannot be set: the conversation comes from 'messages'.",
                    ));
                }
                _ => {
                    top_level.insert(k.clone(), v.clone());
                }
            }
        }
    }
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
    }
    if !gen.is_empty() {
        out.insert("generationConfig".into(), Value::Object(gen));
    }
    for (k, v) in top_level {
        out.insert(k, v);
    }
    Ok(out)
}

/// OpenAI `reasoning_effort` → `thinkingConfig` (the budgets of Google's own OpenAI-compatible
/// endpoint); thoughts are included so that `reasoning_content` shows them. Unknown values → none.
fn thinking_config(effort: &str) -> Option<Value> {
    let budget = match effort {
        "none" => return Some(json!({ "thinkingBudget": 0 })),
        "minimal" | "low" => 1024,
        "medium" => 8192,
        "high" => 24576,
        _ => return None,
    };
    Some(json!({ "thinkingBudget": budget, "includeThoughts": true }))
}

/// The name of the function whose call has id `id`, from the nearest earlier assistant message.
fn tool_name_for<'a>(messages: &'a [Message], before: usize, id: &str) -> Option<&'a str> {
    messages.get(..before)?.iter().rev().filter(|m| m.role == Role::Assistant).find_map(|m| {
        m.tool_calls.as_ref()?.iter().find(|c| c.id == id).map(|c| c.function.name.as_str())
    })
}

/// A tool message's content → `functionResponse.response` (a JSON object).
fn tool_response(m: &Message, i: usize) -> Result<Value, ApiError> {
    let text = match &m.content {
        None => String::new(),
        Some(Content::Text(s)) => s.clone(),
        Some(Content::Parts(parts)) => {
            let mut out = String::new();
            for (j, p) in parts.iter().enumerate() {
                match p {
                    ContentPart::Text { text } | ContentPart::Refusal { refusal: text } => {
                        if !out.is_empty() {
                            out.push('\n');
                        }
                        out.push_str(text);
                    }
                    ContentPart::ImageUrl { .. } => return Err(unsupported_part(i, j, "image_url in a tool result")),
                    ContentPart::InputAudio { .. } => return Err(unsupported_part(i, j, "input_audio in a tool result")),
                    ContentPart::File { .. } => return Err(unsupported_part(i, j, "file in a tool result")),
                }
            }
            out
        }
    };
    if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(&text) {
        return Ok(v);
    }
    let mut wrapped = Map::new();
    wrapped.insert(TOOL_RESULT_KEY.into(), Value::String(text));
    Ok(Value::Object(wrapped))
}

/// `call_x__thought__SIG` → (`call_x`, Some(`SIG`)).
pub fn split_tool_call_id(id: &str) -> (&str, Option<&str>) {
    match id.split_once(THOUGHT_SEPARATOR) {
        Some((base, sig)) if !sig.is_empty() => (base, Some(sig)),
        Some((base, _)) => (base, None),
        None => (id, None),
    }
}

/// The OpenAI tool-call id for a Gemini function call: Gemini's own id, else
/// `call_<responseId>_<n>`; then the thought signature, when the part had one.
fn tool_call_id(gemini_id: Option<&str>, response_id: &str, n: u32, signature: Option<&str>) -> String {
    let mut id = match gemini_id.filter(|s| !s.is_empty()) {
        Some(g) => g.to_string(),
        None => {
            let rid: String = response_id
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                .take(32)
                .collect();
            if rid.is_empty() {
                format!("call_{n}")
            } else {
                format!("call_{rid}_{n}")
            }
        }
    };
    if let Some(sig) = signature.filter(|s| !s.is_empty()) {
        id.push_str(THOUGHT_SEPARATOR);
        id.push_str(sig);
    }
    id
}

/// Content → Gemini parts (text, inline data, file data). Empty text is skipped (Gemini rejects
/// empty text parts).
fn content_parts(content: &Content, i: usize, out: &mut Vec<Value>) -> Result<(), ApiError> {
    match content {
        Content::Text(s) => {
            if !s.is_empty() {
                out.push(json!({ "text": s }));
            }
        }
        Content::Parts(parts) => {
            for (j, part) in parts.iter().enumerate() {
                match part {
                    ContentPart::Text { text } | ContentPart::Refusal { refusal: text } => {
                        if !text.is_empty() {
                            out.push(json!({ "text": text }));
                        }
                    }
                    ContentPart::ImageUrl { image_url } => out.push(image_part(&image_url.url, i, j)?),
                    ContentPart::InputAudio { input_audio } => out.push(audio_part(input_audio, i, j)?),
                    ContentPart::File { file } => out.push(file_part(file, i, j)?),
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

/// `data:<mime>;base64,<data>` → (mime, data).
fn parse_data_url(url: &str) -> Result<(&str, &str), &'static str> {
    let rest = strip_prefix_ignore_case(url, "data:").ok_or("expected a data URL.")?;
    let (meta, data) = rest.split_once(',').ok_or("a data URL needs a ',' before its data.")?;
    let mut params = meta.split(';');
    let mime = params.next().unwrap_or("").trim();
    if !params.any(|p| p.trim().eq_ignore_ascii_case("base64")) {
        return Err("only base64-encoded data URLs are supported.");
    }
    if mime.is_empty() {
        return Err("the data URL has no media type.");
    }
    if data.is_empty() {
        return Err("the data URL has no data.");
    }
    Ok((mime, data))
}

fn image_part(url: &str, i: usize, j: usize) -> Result<Value, ApiError> {
    let bad = |why: &str| {
        ApiError::invalid_param(
            format!("messages[{i}].content[{j}].image_url.url"),
            format!("Invalid image URL in messages[{i}].content[{j}]: {why}"),
        )
    };
    if strip_prefix_ignore_case(url, "data:").is_some() {
        let (mime, data) = parse_data_url(url).map_err(bad)?;
        return Ok(json!({ "inlineData": { "mimeType": mime, "data": data } }));
    }
    let remote = ["https://", "http://", "gs://"].iter().any(|p| strip_prefix_ignore_case(url, p).is_some());
    if remote {
        return Ok(json!({ "fileData": { "mimeType": guess_mime(url), "fileUri": url } }));
    }
    Err(bad("expected an http(s) or gs:// URL or a base64 data URL."))
}

/// MIME type from a URL's file extension (query and fragment ignored); `image/jpeg` when unknown.
fn guess_mime(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let last = path.rsplit('/').next().unwrap_or(path);
    let ext = match last.rsplit_once('.') {
        Some((_, ext)) => ext.to_ascii_lowercase(),
        None => String::new(),
    };
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        _ => "image/jpeg",
    }
}

fn audio_part(input: &Value, i: usize, j: usize) -> Result<Value, ApiError> {
    let data = input.get("data").and_then(Value::as_str).filter(|d| !d.is_empty());
    let format = input.get("format").and_then(Value::as_str).filter(|f| !f.is_empty());
    let (Some(data), Some(format)) = (data, format) else {
        return Err(ApiError::invalid_param(
            format!("messages[{i}].content[{j}].input_audio"),
            format!("Invalid value for 'messages[{i}].content[{j}].input_audio': expected 'data' and 'format'."),
        ));
    };
    if !format.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ApiError::invalid_param(
            format!("messages[{i}].content[{j}].input_audio.format"),
            format!("Invalid audio format '{format}'."),
        ));
    }
    let mime = format!("audio/{}", format.to_ascii_lowercase());
    Ok(json!({ "inlineData": { "mimeType": mime, "data": data } }))
}

fn file_part(file: &Value, i: usize, j: usize) -> Result<Value, ApiError> {
    if let Some(url) = file.get("file_data").and_then(Value::as_str) {
        let (mime, data) = parse_data_url(url).map_err(|why| {
            ApiError::invalid_param(
                format!("messages[{i}].content[{j}].file.file_data"),
                format!("Invalid file data in messages[{i}].content[{j}]: {why}"),
            )
        })?;
        return Ok(json!({ "inlineData": { "mimeType": mime, "data": data } }));
    }
    Err(ApiError::invalid_param(
        format!("messages[{i}].content[{j}].file"),
        format!(
            "messages[{i}].content[{j}]: only files given inline as 'file_data' (a base64 data URL) can be sent to \
             the Gemini backend; OpenAI file ids cannot."
        ),
    ))
}

fn strip_prefix_ignore_case<'s>(s: &'s str, prefix: &str) -> Option<&'s str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

/// Tool-call arguments (JSON text) → the `args` object. Empty text counts as `{}`.
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
// Responses (whole and streamed share these types)
// =============================================================================================

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenResponse<'a> {
    #[serde(default, borrow)]
    candidates: Vec<Candidate<'a>>,
    #[serde(default)]
    prompt_feedback: Option<PromptFeedback>,
    #[serde(default)]
    usage_metadata: Option<UsageMetadata>,
    #[serde(default, borrow)]
    model_version: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    response_id: Option<Cow<'a, str>>,
    /// An error reported inside a stream (or a 200 body).
    #[serde(default)]
    error: Option<GError>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate<'a> {
    #[serde(default, borrow)]
    content: Option<GContent<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    finish_message: Option<String>,
    #[serde(default)]
    index: Option<u32>,
}

#[derive(Deserialize)]
struct GContent<'a> {
    #[serde(default, borrow)]
    parts: Vec<GPart<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GPart<'a> {
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    thought: Option<bool>,
    #[serde(default, borrow)]
    thought_signature: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    function_call: Option<GFunctionCall<'a>>,
}

#[derive(Deserialize)]
struct GFunctionCall<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default)]
    args: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    #[serde(default)]
    block_reason: Option<String>,
}

/// `usageMetadata`. Counts are cumulative per response: the last one seen is the answer's.
#[derive(Deserialize, Default, Clone, Copy, Debug)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
    #[serde(default)]
    tool_use_prompt_token_count: u64,
    #[serde(default)]
    cached_content_token_count: u64,
    #[serde(default)]
    total_token_count: Option<u64>,
}

impl UsageMetadata {
    /// OpenAI's split: prompt = prompt + tool-use prompt (cached tokens are already inside the
    /// prompt count); completion = candidates + thoughts (OpenAI counts reasoning as completion,
    /// detailed in `reasoning_tokens`); total as Gemini reports it.
    fn to_openai(self) -> Usage {
        let prompt = self.prompt_token_count.saturating_add(self.tool_use_prompt_token_count);
        let completion = self.candidates_token_count.saturating_add(self.thoughts_token_count);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: self.total_token_count.unwrap_or_else(|| prompt.saturating_add(completion)),
            prompt_tokens_details: Some(PromptTokensDetails {
                cached_tokens: self.cached_content_token_count,
                cache_creation_tokens: 0,
            }),
            completion_tokens_details: Some(CompletionTokensDetails { reasoning_tokens: self.thoughts_token_count }),
        }
    }
}

/// Gemini `finishReason` → OpenAI `finish_reason`. `MALFORMED_FUNCTION_CALL` never gets here: it
/// is an error (see [`malformed_call_error`]).
fn finish_reason(reason: &str, has_tool_calls: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT" | "IMAGE_RECITATION" => "content_filter",
        _ if has_tool_calls => "tool_calls",
        // STOP, LANGUAGE, OTHER, UNEXPECTED_TOOL_CALL, TOO_MANY_TOOL_CALLS, NO_IMAGE, …
        _ => "stop",
    }
}

/// The model produced a function call Gemini could not parse: nothing usable came back, so the
/// client gets an error (502, which Envoy may retry) rather than an empty `stop`.
fn malformed_call_error(message: Option<&str>) -> ApiError {
    let detail = message.filter(|m| !m.is_empty()).unwrap_or("the model produced a malformed function call");
    ApiError::new(502, "api_error", format!("The Gemini backend could not complete the answer: {detail}."))
        .with_code("malformed_function_call")
}

fn completion_id(response_id: Option<&str>, created: u64) -> String {
    match response_id.filter(|r| !r.is_empty()) {
        Some(r) => format!("chatcmpl-{r}"),
        None => format!("chatcmpl-gemini-{created}"),
    }
}

/// Translate a whole `GenerateContentResponse` body into an OpenAI `chat.completion` body.
///
/// Every candidate becomes a choice (`index` from the candidate). Text parts form `content`,
/// thought parts (`thought: true`) `reasoning_content`, `functionCall` parts `tool_calls`. A prompt
/// blocked by `promptFeedback.blockReason` is one empty choice with `content_filter`.
pub fn response_body(body: &[u8], hints: &ResponseHints, created: u64) -> Result<Vec<u8>, ApiError> {
    response_answer(body, hints, created).map(|a| a.body)
}

/// [`response_body`], with the summary the gateway accounts with (see [`super::WholeAnswer`]).
pub fn response_answer(body: &[u8], hints: &ResponseHints, created: u64) -> Result<super::WholeAnswer, ApiError> {
    let resp: GenResponse<'_> = serde_json::from_slice(body).map_err(|e| {
        ApiError::gateway(502, format!("The Gemini backend returned a response the gateway could not read: {e}."))
    })?;
    if let Some(err) = resp.error {
        return Err(stream_error(err));
    }
    let response_id = resp.response_id.as_deref().unwrap_or("");
    let mut choices = Vec::with_capacity(resp.candidates.len().max(1));
    for (pos, cand) in resp.candidates.iter().enumerate() {
        let reason = cand.finish_reason.as_deref();
        if reason == Some("MALFORMED_FUNCTION_CALL") {
            return Err(malformed_call_error(cand.finish_message.as_deref()));
        }
        let mut text: Option<String> = None;
        let mut reasoning: Option<String> = None;
        let mut tool_calls = Vec::new();
        for part in cand.content.iter().flat_map(|c| c.parts.iter()) {
            if let Some(fc) = &part.function_call {
                let n = u32::try_from(tool_calls.len()).unwrap_or(u32::MAX);
                let arguments = match &fc.args {
                    Some(v @ Value::Object(_)) => v.to_string(),
                    _ => "{}".to_string(),
                };
                tool_calls.push(ToolCall {
                    id: tool_call_id(fc.id.as_deref(), response_id, n, part.thought_signature.as_deref()),
                    kind: "function".to_string(),
                    function: FunctionCall { name: fc.name.as_deref().unwrap_or("").to_string(), arguments },
                });
            } else if let Some(t) = part.text.as_deref() {
                let target = if part.thought == Some(true) { &mut reasoning } else { &mut text };
                target.get_or_insert_with(String::new).push_str(t);
            }
        }
        let has_calls = !tool_calls.is_empty();
        let content = match text {
            Some(t) => Some(t),
            None if has_calls => None,
            None => Some(String::new()),
        };
        choices.push(Choice {
            index: cand.index.unwrap_or(u32::try_from(pos).unwrap_or(u32::MAX)),
            message: ResponseMessage { role: "assistant", content, reasoning_content: reasoning, tool_calls, refusal: None },
            finish_reason: Some(finish_reason(reason.unwrap_or("STOP"), has_calls).to_string()),
            logprobs: None,
        });
    }
    if choices.is_empty() {
        let blocked = resp.prompt_feedback.as_ref().and_then(|f| f.block_reason.as_deref()).is_some();
        if !blocked {
            return Err(ApiError::gateway(502, "The Gemini backend returned no candidates."));
        }
        choices.push(Choice {
            index: 0,
            message: ResponseMessage { role: "assistant", content: Some(String::new()), ..ResponseMessage::default() },
            finish_reason: Some("content_filter".to_string()),
            logprobs: None,
        });
    }
    let completion = ChatCompletion {
        id: completion_id(resp.response_id.as_deref(), created),
        object: "chat.completion",
        created,
        model: resp.model_version.as_deref().filter(|m| !m.is_empty()).unwrap_or(&hints.model).to_string(),
        choices,
        usage: Some(resp.usage_metadata.unwrap_or_default().to_openai()),
        system_fingerprint: None,
    };
    super::WholeAnswer::of(completion)
}

// =============================================================================================
// Embeddings
// =============================================================================================

/// `POST /v1/embeddings` → `{base}/models/{model}:batchEmbedContents` with one request per input
/// (`dimensions` → `outputDimensionality`). Token-id input cannot be sent (Gemini has no
/// tokenizer-level input); Vertex AI serves embeddings through `:predict`, which is not translated.
pub fn embeddings_request(backend: &Backend, body: &[u8], ctx: &AttemptContext, hints: ResponseHints) -> Result<UpstreamRequest, ApiError> {
    if backend.vertex.is_some() {
        return Err(unsupported(backend, "embeddings through Vertex AI"));
    }
    let req = parse_embeddings_request(body)?;
    let texts = req.input.texts().ok_or_else(|| {
        ApiError::invalid_param("input", "The Gemini backend embeds text only: token-id input is not supported.")
    })?;
    let resource = model_resource(backend, ctx.model)?;
    let requests: Vec<Value> = texts
        .iter()
        .map(|t| {
            let mut r = Map::new();
            r.insert("model".into(), Value::String(resource.clone()));
            r.insert("content".into(), json!({ "parts": [{ "text": t }] }));
            if let Some(d) = req.dimensions {
                r.insert("outputDimensionality".into(), Value::from(d));
            }
            Value::Object(r)
        })
        .collect();
    let body = serde_json::to_vec(&json!({ "requests": requests }))
        .map_err(|e| ApiError::gateway(500, format!("could not serialise the Gemini request: {e}")))?;
    Ok(UpstreamRequest {
        path: format!("{}/{resource}:batchEmbedContents", backend.base_path()),
        body,
        headers: Vec::new(),
        hints,
    })
}

#[derive(Deserialize)]
struct BatchEmbedResponse {
    #[serde(default)]
    embeddings: Vec<ContentEmbedding>,
}

#[derive(Deserialize)]
struct ContentEmbedding {
    #[serde(default)]
    values: Vec<f32>,
}

/// `{"embeddings":[{"values":[…]}]}` → the OpenAI list. Gemini reports no token usage for
/// embeddings, so `usage` is 0 (not estimated).
pub fn embeddings_response_body(body: &[u8], hints: &ResponseHints) -> Result<Vec<u8>, ApiError> {
    let resp: BatchEmbedResponse = serde_json::from_slice(body).map_err(|e| {
        ApiError::gateway(502, format!("The Gemini backend returned embeddings the gateway could not read: {e}."))
    })?;
    if resp.embeddings.is_empty() {
        return Err(ApiError::gateway(502, "The Gemini backend returned no embeddings."));
    }
    let vectors = resp.embeddings.into_iter().map(|e| e.values).collect();
    embeddings_response_json(&hints.model, vectors, hints.encoding, 0)
}

// =============================================================================================
// Errors
// =============================================================================================

#[derive(Deserialize)]
struct ErrorEnvelope {
    #[serde(default)]
    error: Option<GError>,
}

/// `google.rpc.Status` as the REST API sends it.
#[derive(Deserialize, Default)]
struct GError {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    details: Vec<Value>,
}

/// Status for an upstream error status, decided before the body is seen. Google's REST statuses
/// already follow the gRPC mapping Envoy's retry policy expects (RESOURCE_EXHAUSTED 429,
/// UNAVAILABLE 503, INTERNAL 500, DEADLINE_EXCEEDED 504), so they pass unchanged.
pub fn map_status(status: u16) -> u16 {
    status
}

/// HTTP status for a `google.rpc.Code` name (errors inside a 200 stream carry only that).
fn status_for_code_name(name: &str) -> Option<u16> {
    Some(match name {
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => 400,
        "UNAUTHENTICATED" => 401,
        "PERMISSION_DENIED" => 403,
        "NOT_FOUND" => 404,
        "ALREADY_EXISTS" | "ABORTED" => 409,
        "RESOURCE_EXHAUSTED" => 429,
        "CANCELLED" => 499,
        "UNIMPLEMENTED" => 501,
        "UNAVAILABLE" => 503,
        "DEADLINE_EXCEEDED" => 504,
        "INTERNAL" | "UNKNOWN" | "DATA_LOSS" => 500,
        _ => return None,
    })
}

/// `{"error":{…}}`, or the same wrapped in a one-element array (how the non-SSE stream reports it).
fn parse_error_body(body: &[u8]) -> Option<GError> {
    // Checked first: a derived struct also accepts a JSON array (as a sequence of its fields).
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return serde_json::from_slice::<Vec<ErrorEnvelope>>(body).ok()?.into_iter().next()?.error;
    }
    serde_json::from_slice::<ErrorEnvelope>(body).ok()?.error
}

fn to_api_error(status: u16, err: GError) -> ApiError {
    let message = err.message.filter(|m| !m.is_empty()).unwrap_or_else(|| format!("The Gemini backend returned HTTP {status}."));
    let key_invalid = err.details.iter().any(|d| d.get("reason").and_then(Value::as_str) == Some("API_KEY_INVALID"));
    let code = if key_invalid { Some("invalid_api_key".to_string()) } else { err.status.map(|s| s.to_ascii_lowercase()) };
    let e = ApiError::new(status, kind_for_status(status), message);
    match code {
        Some(c) if !c.is_empty() => e.with_code(c),
        _ => e,
    }
}

/// Map a Gemini error answer (status + body) to an OpenAI-shaped error body. `type` follows the
/// status; `code` is Google's status name in lower case (`resource_exhausted`), or
/// `invalid_api_key` for a rejected key.
pub fn map_error(status: u16, body: &[u8]) -> Vec<u8> {
    let mapped = map_status(status);
    match parse_error_body(body) {
        Some(err) => to_api_error(mapped, err).to_json(),
        None => ApiError::new(
            mapped,
            kind_for_status(mapped),
            format!("The Gemini backend returned HTTP {status} with a body that is not a Google API error."),
        )
        .to_json(),
    }
}

/// An error object that arrived with a 200 (inside a stream): status from its code name or number.
fn stream_error(err: GError) -> ApiError {
    let status = err
        .status
        .as_deref()
        .and_then(status_for_code_name)
        .or_else(|| err.code.and_then(|c| u16::try_from(c).ok()).filter(|c| (400..600).contains(c)))
        .unwrap_or(500);
    to_api_error(map_status(status), err)
}

// =============================================================================================
// Streaming
// =============================================================================================

#[derive(Debug, Clone, Copy)]
struct ChoiceState {
    index: u32,
    /// Function calls seen so far (the next OpenAI tool-call index).
    tool_calls: u32,
    finished: bool,
}

/// Incremental stream translator: Gemini `alt=sse` in, OpenAI `chat.completion.chunk` SSE out.
///
/// Each upstream event is a whole `GenerateContentResponse` holding the next slice of every
/// candidate. Output per candidate (choice `index`): a first chunk with
/// `delta: {role: "assistant", content: ""}`, a chunk per text / thought part (`content` /
/// `reasoning_content`), a chunk per `functionCall` part carrying the whole call (index, id, type,
/// name, arguments), and a finishing chunk with `finish_reason` when `finishReason` arrives. When
/// upstream ends with every candidate finished: a usage-only chunk (`choices: []`, from the last
/// `usageMetadata`) and `data: [DONE]`. Gemini sends no terminator, so a stream that ends with a
/// candidate unfinished (or with none) gets an error event (`stream_truncated`) instead; an `error`
/// object, an unreadable event or `MALFORMED_FUNCTION_CALL` also end it with one error event.
pub struct StreamTranslator {
    parser: SseParser,
    state: StreamState,
}

struct StreamState {
    created: u64,
    /// `chatcmpl-<responseId>`; set by the first event.
    id: String,
    response_id: String,
    model: String,
    have_head: bool,
    phase: Phase,
    choices: Vec<ChoiceState>,
    usage: Option<Usage>,
}

impl StreamTranslator {
    /// `model`: the name sent upstream, reported when the stream names no `modelVersion`.
    pub fn new(model: &str, created: u64) -> Self {
        StreamTranslator {
            parser: SseParser::new(),
            state: StreamState {
                created,
                id: String::new(),
                response_id: String::new(),
                model: model.to_string(),
                have_head: false,
                phase: Phase::Open,
                choices: Vec::new(),
                usage: None,
            },
        }
    }

    /// Feed one upstream body chunk (any split, even inside a CRLF pair); append the output to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if self.state.phase != Phase::Open {
            return;
        }
        let StreamTranslator { parser, state } = self;
        let status = parser.push(chunk, |_, data| state.on_event(data, out));
        if status == SseStatus::Overflow {
            state.fail(out, overflow());
        }
    }

    /// Upstream ended: the usage chunk and `[DONE]` if every candidate finished, else an error event.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.state.phase != Phase::Open {
            return;
        }
        let StreamTranslator { parser, state } = self;
        parser.finish(|_, data| state.on_event(data, out));
        state.on_end(out);
    }

    /// Usage from the last `usageMetadata` seen, in OpenAI shape.
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

impl StreamState {
    fn on_event(&mut self, data: &str, out: &mut Vec<u8>) {
        if self.phase != Phase::Open {
            return;
        }
        let ev: GenResponse<'_> = match serde_json::from_str(data) {
            Ok(ev) => ev,
            Err(e) => {
                self.fail(out, unreadable_event("Gemini", &e));
                return;
            }
        };
        if let Some(err) = ev.error {
            self.fail(out, stream_error(err));
            return;
        }
        if !self.have_head {
            self.have_head = true;
            if let Some(rid) = ev.response_id.as_deref() {
                self.response_id.push_str(rid);
            }
            self.id = completion_id(Some(self.response_id.as_str()), self.created);
            if let Some(m) = ev.model_version.as_deref().filter(|m| !m.is_empty()) {
                self.model.clear();
                self.model.push_str(m);
            }
        }
        if let Some(u) = ev.usage_metadata {
            self.usage = Some(u.to_openai());
        }
        if ev.candidates.is_empty() {
            if ev.prompt_feedback.as_ref().and_then(|f| f.block_reason.as_deref()).is_some() {
                // The prompt was blocked: no candidate will come.
                if let Some(mut st) = self.choice_state(0, out) {
                    if !st.finished {
                        self.chunk(out, 0, Delta::default(), Some("content_filter"));
                        st.finished = true;
                        self.store(st);
                    }
                }
            }
            return;
        }
        for (pos, cand) in ev.candidates.iter().enumerate() {
            let index = cand.index.unwrap_or(u32::try_from(pos).unwrap_or(u32::MAX));
            self.on_candidate(index, cand, out);
            if self.phase != Phase::Open {
                return;
            }
        }
    }

    fn on_candidate(&mut self, index: u32, cand: &Candidate<'_>, out: &mut Vec<u8>) {
        let Some(mut st) = self.choice_state(index, out) else { return };
        if st.finished {
            return;
        }
        for part in cand.content.iter().flat_map(|c| c.parts.iter()) {
            if let Some(fc) = &part.function_call {
                let n = st.tool_calls;
                st.tool_calls = st.tool_calls.saturating_add(1);
                let id = tool_call_id(fc.id.as_deref(), &self.response_id, n, part.thought_signature.as_deref());
                let arguments = match &fc.args {
                    Some(v @ Value::Object(_)) => v.to_string(),
                    _ => "{}".to_string(),
                };
                let call = ToolCallDelta {
                    index: n,
                    id: Some(&id),
                    kind: Some("function"),
                    function: FunctionDelta { name: Some(fc.name.as_deref().unwrap_or("")), arguments: Some(&arguments) },
                };
                self.chunk(out, index, Delta { tool_calls: Some(vec![call]), ..Delta::default() }, None);
            } else if let Some(t) = part.text.as_deref().filter(|t| !t.is_empty()) {
                let delta = if part.thought == Some(true) {
                    Delta { reasoning_content: Some(t), ..Delta::default() }
                } else {
                    Delta { content: Some(t), ..Delta::default() }
                };
                self.chunk(out, index, delta, None);
            }
        }
        if let Some(reason) = cand.finish_reason.as_deref() {
            if reason == "MALFORMED_FUNCTION_CALL" {
                self.fail(out, malformed_call_error(cand.finish_message.as_deref()));
                return;
            }
            self.chunk(out, index, Delta::default(), Some(finish_reason(reason, st.tool_calls > 0)));
            st.finished = true;
        }
        self.store(st);
    }

    /// The state of choice `index`, opening it (role chunk) on first sight.
    fn choice_state(&mut self, index: u32, out: &mut Vec<u8>) -> Option<ChoiceState> {
        if let Some(st) = self.choices.iter().find(|c| c.index == index) {
            return Some(*st);
        }
        if self.choices.len() >= MAX_STREAM_CHOICES {
            return None;
        }
        let st = ChoiceState { index, tool_calls: 0, finished: false };
        self.choices.push(st);
        self.chunk(out, index, Delta { role: Some("assistant"), content: Some(""), ..Delta::default() }, None);
        Some(st)
    }

    fn store(&mut self, st: ChoiceState) {
        if let Some(slot) = self.choices.iter_mut().find(|c| c.index == st.index) {
            *slot = st;
        }
    }

    fn on_end(&mut self, out: &mut Vec<u8>) {
        if self.phase != Phase::Open {
            return;
        }
        if self.choices.is_empty() || self.choices.iter().any(|c| !c.finished) {
            self.fail(out, truncated());
            return;
        }
        let usage = self.usage.get_or_insert_with(|| UsageMetadata::default().to_openai());
        write_usage_and_done(out, &self.id, &self.model, self.created, usage);
        self.phase = Phase::Done;
    }

    fn chunk(&self, out: &mut Vec<u8>, index: u32, delta: Delta<'_>, finish_reason: Option<&str>) {
        write_chunk(out, &self.id, &self.model, self.created, index, delta, finish_reason);
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
    use crate::config::{Backend, BackendsConfig, PluginConfig, Schema};
    use crate::providers::{self, Operation};
    use crate::providers::testutil::interaction;
    use serde_json::json;

    const MODEL: &str = include_str!("../../tests/fixtures/gemini/test_google_model.yaml");
    const MODEL_STREAM: &str = include_str!("../../tests/fixtures/gemini/test_google_model_stream.yaml");
    const TOOL_OUTPUT: &str = include_str!("../../tests/fixtures/gemini/test_google_tool_output.yaml");
    const MULTI_TOOLS: &str = include_str!("../../tests/fixtures/gemini/test_multiple_agent_tool_calls.yaml");

    const CREATED: u64 = 1_700_000_000;

    // ------------------------------------------------------------------------------ helpers

    fn stream_body() -> String {
        interaction(MODEL_STREAM, 0)["response"]["body"]["string"].as_str().expect("stream body").to_string()
    }

    fn backends(json: &str) -> BackendsConfig {
        match PluginConfig::parse(json.as_bytes()).expect("config parses") {
            PluginConfig::Backend(b) => b,
            _ => panic!("backend config expected"),
        }
    }

    fn gemini_backend() -> Backend {
        backends(r#"{"role":"backend","backends":{"g":{"schema":"gemini","credential":{"env":"GEMINI_API_KEY"}}}}"#)
            .backends
            .remove("g")
            .unwrap()
    }

    fn vertex_backend() -> Backend {
        backends(
            r#"{"role":"backend","backends":{"v":{"schema":"gemini","vertex":{"project":"my-proj","location":"us-central1"},
                "host":"us-central1-aiplatform.googleapis.com","credential":{"env":"VERTEX_TOKEN"}}}}"#,
        )
        .backends
        .remove("v")
        .unwrap()
    }

    fn ctx(model: &str) -> AttemptContext<'_> {
        AttemptContext { model, now_unix: CREATED, aws: None }
    }

    fn upstream(backend: &Backend, v: &Value, model: &str) -> Result<UpstreamRequest, ApiError> {
        let body = v.to_string();
        providers::upstream_request(Operation::Chat, backend, body.as_bytes(), &ctx(model))
    }

    /// The translated body for a chat request, through the dispatch layer.
    fn translate(v: Value) -> Value {
        let up = upstream(&gemini_backend(), &v, "gemini-test").expect("translates");
        serde_json::from_slice(&up.body).expect("request is JSON")
    }

    fn translate_err(v: Value) -> ApiError {
        upstream(&gemini_backend(), &v, "gemini-test").expect_err("must be rejected")
    }

    fn hints() -> ResponseHints {
        ResponseHints::chat(false, "gemini-test")
    }

    fn respond(body: &Value) -> Value {
        let out = providers::response_body(Schema::Gemini, &hints(), body.to_string().as_bytes(), CREATED).expect("translates");
        serde_json::from_slice(&out).expect("response is JSON")
    }

    fn run_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> (Vec<u8>, Option<Usage>) {
        let mut t = providers::stream_translator(Schema::Gemini, &ResponseHints::chat(true, "gemini-test"), CREATED).expect("gemini streams are translated");
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

    /// Output for every two-way split and for 1-byte / 7-byte chunks equals the whole-body output.
    fn assert_split_invariant(input: &str) -> Vec<u8> {
        let bytes = input.as_bytes();
        let whole = run_whole(input);
        for at in 0..=bytes.len() {
            let (a, b) = bytes.split_at(at);
            assert_eq!(run_chunks([a, b]).0, whole, "split at byte {at}");
        }
        assert_eq!(run_chunks(bytes.chunks(1)).0, whole, "1-byte chunks");
        assert_eq!(run_chunks(bytes.chunks(7)).0, whole, "7-byte chunks");
        whole
    }

    /// The `data:` payloads of an OpenAI SSE output, checking the framing on the way.
    fn payloads(out: &[u8]) -> Vec<String> {
        let text = std::str::from_utf8(out).expect("output is UTF-8");
        assert!(text.is_empty() || text.ends_with("\n\n"), "output ends on an event boundary");
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                assert!(!e.contains('\n') && !e.contains('\r'), "one data line per event: {e:?}");
                e.strip_prefix("data: ").expect("data line").to_string()
            })
            .collect()
    }

    #[derive(Debug, Default, Clone)]
    struct ChoiceSum {
        content: String,
        reasoning: String,
        tools: Vec<(String, String, String)>, // id, name, arguments
        finish: Vec<String>,
        role_first: bool,
    }

    #[derive(Debug, Default)]
    struct Summary {
        choices: std::collections::BTreeMap<u64, ChoiceSum>,
        usage: Option<Value>,
        error: Option<Value>,
        done: bool,
        events: usize,
    }

    impl Summary {
        fn c0(&self) -> ChoiceSum {
            self.choices.get(&0).cloned().unwrap_or_default()
        }
    }

    /// Checks every event against the OpenAI chunk shape and accumulates what a client would see.
    fn summarize(out: &[u8], id: &str, model: &str) -> Summary {
        let p = payloads(out);
        let mut sum = Summary { events: p.len(), ..Summary::default() };
        for (n, d) in p.iter().enumerate() {
            if d == "[DONE]" {
                assert_eq!(n, p.len() - 1, "[DONE] is last");
                sum.done = true;
                continue;
            }
            let ev: Value = serde_json::from_str(d).expect("every event is JSON");
            if let Some(err) = ev.get("error") {
                assert_eq!(n, p.len() - 1, "an error event is last");
                for k in ["message", "type", "param", "code"] {
                    assert!(err.get(k).is_some(), "error has {k}: {err}");
                }
                sum.error = Some(err.clone());
                continue;
            }
            assert!(sum.usage.is_none(), "nothing but [DONE] after the usage chunk");
            assert_eq!(ev["id"], id);
            assert_eq!(ev["object"], "chat.completion.chunk");
            assert_eq!(ev["created"], CREATED);
            assert_eq!(ev["model"], model);
            let choices = ev["choices"].as_array().expect("choices array");
            if choices.is_empty() {
                let u = &ev["usage"];
                assert!(u.is_object(), "a chunk without choices is the usage chunk");
                for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
                    assert!(u[k].is_u64(), "usage.{k}");
                }
                sum.usage = Some(u.clone());
                continue;
            }
            assert!(ev.get("usage").is_none(), "usage only on the last chunk");
            assert_eq!(choices.len(), 1, "one choice per chunk");
            let c = &choices[0];
            assert!(c["logprobs"].is_null());
            let idx = c["index"].as_u64().expect("choice index");
            let delta = c["delta"].as_object().expect("delta object");
            let is_new = !sum.choices.contains_key(&idx);
            let cs = sum.choices.entry(idx).or_default();
            assert!(cs.finish.is_empty(), "nothing for a choice after its finish chunk");
            if is_new {
                cs.role_first = delta.get("role") == Some(&json!("assistant")) && delta.get("content") == Some(&json!(""));
            } else {
                assert!(delta.get("role").is_none(), "role only in a choice's first chunk");
            }
            if let Some(t) = delta.get("content").and_then(Value::as_str) {
                cs.content.push_str(t);
            }
            if let Some(t) = delta.get("reasoning_content").and_then(Value::as_str) {
                cs.reasoning.push_str(t);
            }
            if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                for call in calls {
                    let k = call["index"].as_u64().expect("tool index") as usize;
                    assert_eq!(k, cs.tools.len(), "tool calls are whole and numbered from 0 in order");
                    assert_eq!(call["type"], "function");
                    cs.tools.push((
                        call["id"].as_str().expect("id").to_string(),
                        call["function"]["name"].as_str().expect("name").to_string(),
                        call["function"]["arguments"].as_str().expect("arguments").to_string(),
                    ));
                }
            }
            match &c["finish_reason"] {
                Value::Null => {}
                Value::String(f) => {
                    assert!(delta.is_empty(), "the finishing chunk has an empty delta");
                    cs.finish.push(f.clone());
                }
                other => panic!("finish_reason {other}"),
            }
        }
        sum
    }

    fn sse(events: &[Value]) -> String {
        events.iter().map(|e| format!("data: {e}\r\n\r\n")).collect()
    }

    fn text_event(t: &str) -> Value {
        json!({"candidates":[{"content":{"parts":[{"text":t}],"role":"model"},"index":0}],
               "usageMetadata":{"promptTokenCount":4,"totalTokenCount":4},"modelVersion":"gemini-x","responseId":"rid1"})
    }

    fn finish_event(reason: &str) -> Value {
        json!({"candidates":[{"content":{"parts":[{"text":""}],"role":"model"},"finishReason":reason,"index":0}],
               "usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":6,"thoughtsTokenCount":2,"totalTokenCount":12},
               "modelVersion":"gemini-x","responseId":"rid1"})
    }

    // ------------------------------------------------------------------------------ config and paths

    #[test]
    fn config_schema_defaults_and_vertex() {
        let g = gemini_backend();
        assert_eq!(g.schema, Schema::Gemini);
        assert_eq!(g.schema.as_str(), "gemini");
        assert_eq!(g.base_path(), "/v1beta");
        assert_eq!(g.credential_header(), "x-goog-api-key");
        assert_eq!(g.credential_prefix(), "", "the API key goes without a prefix");
        let v = vertex_backend();
        assert_eq!(v.base_path(), "/v1", "Vertex defaults to /v1");
        assert_eq!(v.credential_header(), "authorization");
        assert_eq!(v.credential_prefix(), "Bearer ");
        let vc = v.vertex.as_ref().unwrap();
        assert_eq!((vc.project.as_str(), vc.location.as_str()), ("my-proj", "us-central1"));
        assert_eq!(vc.endpoint_host(), "us-central1-aiplatform.googleapis.com");
        let global = crate::config::VertexConfig { project: "p".into(), location: "global".into() };
        assert_eq!(global.endpoint_host(), "aiplatform.googleapis.com");
        // Vertex needs its regional host (a retried attempt must not inherit a derived :authority).
        let e = PluginConfig::parse(
            br#"{"role":"backend","backends":{"x":{"schema":"gemini","vertex":{"project":"p","location":"europe-west4"}}}}"#,
        )
        .unwrap_err();
        assert!(e.contains("europe-west4-aiplatform.googleapis.com"), "{e}");

        for bad in [
            r#"{"role":"backend","backends":{"x":{"schema":"openai","host":"h","vertex":{"project":"p","location":"l"}}}}"#,
            r#"{"role":"backend","backends":{"x":{"schema":"gemini","host":"h","vertex":{"project":"","location":"us-central1"}}}}"#,
            r#"{"role":"backend","backends":{"x":{"schema":"gemini","host":"h","vertex":{"project":"p/../x","location":"us-central1"}}}}"#,
            r#"{"role":"backend","backends":{"x":{"schema":"gemini","host":"h","vertex":{"project":"p","location":"us central"}}}}"#,
            r#"{"role":"backend","backends":{"x":{"schema":"gemini","host":"h","vertex":{"project":"p"}}}}"#,
            r#"{"role":"backend","backends":{"x":{"schema":"gemini","host":"h","vertex":{"project":"p","location":"l","zone":"z"}}}}"#,
        ] {
            assert!(PluginConfig::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_depend_on_model_and_stream() {
        let g = gemini_backend();
        let msg = json!({"model":"alias","messages":[{"role":"user","content":"hi"}]});
        let up = upstream(&g, &msg, "gemini-2.5-flash").unwrap();
        assert_eq!(up.path, "/v1beta/models/gemini-2.5-flash:generateContent");
        assert!(up.headers.is_empty());
        assert!(!up.hints.stream);
        assert_eq!(up.hints.model, "gemini-2.5-flash");
        let mut streaming = msg.clone();
        streaming["stream"] = json!(true);
        let up = upstream(&g, &streaming, "gemini-2.5-flash").unwrap();
        assert_eq!(up.path, "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse");
        assert!(up.hints.stream);
        assert_eq!(upstream(&g, &msg, "models/gemini-pro").unwrap().path, "/v1beta/models/gemini-pro:generateContent");
        assert_eq!(upstream(&g, &msg, "tunedModels/my-tune-1").unwrap().path, "/v1beta/tunedModels/my-tune-1:generateContent");

        let custom = backends(r#"{"role":"backend","backends":{"g":{"schema":"gemini","base_path":"/gemini/v1beta/"}}}"#)
            .backends
            .remove("g")
            .unwrap();
        assert_eq!(upstream(&custom, &msg, "m").unwrap().path, "/gemini/v1beta/models/m:generateContent");

        let v = vertex_backend();
        let up = upstream(&v, &streaming, "gemini-2.5-pro").unwrap();
        assert_eq!(
            up.path,
            "/v1/projects/my-proj/locations/us-central1/publishers/google/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
        );
        assert!(up.headers.is_empty());
        assert_eq!(
            upstream(&v, &msg, "endpoints/1234").unwrap().path,
            "/v1/projects/my-proj/locations/us-central1/endpoints/1234:generateContent"
        );
        assert_eq!(
            upstream(&v, &msg, "projects/o/locations/europe-west4/publishers/google/models/g").unwrap().path,
            "/v1/projects/o/locations/europe-west4/publishers/google/models/g:generateContent"
        );
        // Vertex bodies are the same schema.
        assert_eq!(upstream(&v, &msg, "m").unwrap().body, upstream(&g, &msg, "m").unwrap().body);
    }

    #[test]
    fn model_names_cannot_escape_the_path() {
        let g = gemini_backend();
        let msg = json!({"model":"x","messages":[{"role":"user","content":"hi"}]});
        for bad in [
            "",
            "../files",
            "models/../../v1beta/files",
            "gemini:generateContent?key=x",
            "gemini-pro?alt=json",
            "gemini#frag",
            "a//b",
            "gemini pro",
            "gemini%2F..",
            "publishers/google/models/x",
        ] {
            let e = upstream(&g, &msg, bad).expect_err(bad);
            assert_eq!((e.status, e.param.as_deref()), (400, Some("model")), "{bad}");
        }
        let long = "m".repeat(300);
        assert!(upstream(&g, &msg, &long).is_err());
        assert!(upstream(&vertex_backend(), &msg, "claude-3@20240229").is_ok());
    }

    // ------------------------------------------------------------------------------ requests

    #[test]
    fn recorded_basic_request_is_reproduced_exactly() {
        let rec = interaction(MODEL, 0);
        let want = &rec["request"]["parsed_body"];
        assert!(rec["request"]["uri"].as_str().unwrap().ends_with("/v1beta/models/gemini-2.5-flash:generateContent"));
        let msg = json!({
            "model": "flash",
            "messages": [{"role":"system","content":"You are a chatbot."},{"role":"user","content":"Hello!"}],
            "gemini": {"generationConfig": {"responseModalities": ["TEXT"]}}
        });
        let up = upstream(&gemini_backend(), &msg, "gemini-2.5-flash").unwrap();
        assert_eq!(format!("https://generativelanguage.googleapis.com{}", up.path), rec["request"]["uri"].as_str().unwrap());
        let got: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(&got, want, "the whole body equals the recorded one");
    }

    #[test]
    fn recorded_stream_request_is_reproduced_exactly() {
        let rec = interaction(MODEL_STREAM, 0);
        let want = &rec["request"]["parsed_body"];
        let msg = json!({
            "model": "x", "stream": true, "stream_options": {"include_usage": false}, "temperature": 0.0,
            "messages": [{"role":"system","content":"You are a helpful chatbot."},{"role":"user","content":"What is the capital of France?"}]
        });
        let up = upstream(&gemini_backend(), &msg, "gemini-2.0-flash-exp").unwrap();
        assert_eq!(format!("https://generativelanguage.googleapis.com{}", up.path), rec["request"]["uri"].as_str().unwrap());
        let got: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(&got, want);
        assert_eq!(got["generationConfig"]["temperature"], 0.0);
    }

    fn pydantic_tools() -> Value {
        json!([
            {"type":"function","function":{"name":"get_user_country","parameters":{"type":"object","properties":{}}}},
            {"type":"function","function":{"name":"final_result","description":"The final response which ends this conversation",
             "parameters":{"type":"object","properties":{"city":{"type":"string"},"country":{"type":"string"}},
                           "required":["city","country"],"additionalProperties":false}}}
        ])
    }

    #[test]
    fn recorded_tool_round_trip_requests_are_reproduced() {
        // First call: tools, tool_choice required.
        let rec = interaction(TOOL_OUTPUT, 0);
        let want = &rec["request"]["parsed_body"];
        let got = translate(json!({
            "model":"x","tool_choice":"required","tools": pydantic_tools(),
            "messages":[{"role":"user","content":"What is the largest city in the user country?"}]
        }));
        assert_eq!(got["contents"], want["contents"]);
        assert_eq!(got["tools"], want["tools"], "function declarations equal the recorded ones (upper-case types)");
        assert_eq!(got["toolConfig"]["functionCallingConfig"]["mode"], want["toolConfig"]["functionCallingConfig"]["mode"]);
        assert_eq!(got["toolConfig"], json!({"functionCallingConfig":{"mode":"ANY"}}), "required → ANY over all functions");
        assert!(got.get("generationConfig").is_none(), "an empty generationConfig is left out");

        // Second call: the tool call and its result come back.
        let rec = interaction(TOOL_OUTPUT, 1);
        let want = &rec["request"]["parsed_body"];
        let got = translate(json!({
            "model":"x","tool_choice":{"type":"function","function":{"name":"final_result"}},"tools": pydantic_tools(),
            "messages":[
                {"role":"user","content":"What is the largest city in the user country?"},
                {"role":"assistant","content":null,"tool_calls":[{"id":"pyd_ai_3fa5644dae1d4aad997ae39c70006fbd","type":"function",
                  "function":{"name":"get_user_country","arguments":"{}"}}]},
                {"role":"tool","tool_call_id":"pyd_ai_3fa5644dae1d4aad997ae39c70006fbd","content":"{\"return_value\": \"Mexico\"}"}
            ]
        }));
        assert_eq!(got["contents"], want["contents"], "functionCall / functionResponse with ids, exactly as recorded");
        assert_eq!(got["tools"], want["tools"]);
        assert_eq!(
            got["toolConfig"],
            json!({"functionCallingConfig":{"mode":"ANY","allowedFunctionNames":["final_result"]}}),
            "a named tool_choice → ANY limited to that function"
        );
    }

    #[test]
    fn recorded_multi_turn_tool_requests_match() {
        // The Gemini half of the cassette was recorded by an older client that sent no call ids and
        // `tools` as one snake_case object with lower-case types; compare what both mean.
        fn strip_ids(v: &mut Value) {
            match v {
                Value::Object(m) => {
                    m.remove("id");
                    m.values_mut().for_each(strip_ids);
                }
                Value::Array(a) => a.iter_mut().for_each(strip_ids),
                _ => {}
            }
        }
        fn lower_types(v: &mut Value) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(t)) = m.get_mut("type") {
                        *t = t.to_ascii_lowercase();
                    }
                    m.values_mut().for_each(lower_types);
                }
                Value::Array(a) => a.iter_mut().for_each(lower_types),
                _ => {}
            }
        }
        // The OpenAI half of the same cassette has the client's tool (with additionalProperties).
        let openai = interaction(MULTI_TOOLS, 2)["request"]["parsed_body"].clone();
        let tools = openai["tools"].clone();
        assert_eq!(tools[0]["function"]["parameters"]["additionalProperties"], false);

        let rec = interaction(MULTI_TOOLS, 0);
        let want = &rec["request"]["parsed_body"];
        let mut got = translate(json!({"model":"x","tools":tools.clone(),
            "messages":[{"role":"user","content":"What is the capital of France?"}]}));
        assert_eq!(got["contents"], want["contents"]);
        lower_types(&mut got);
        assert_eq!(got["tools"][0]["functionDeclarations"], want["tools"]["function_declarations"]);
        assert!(got.get("toolConfig").is_none(), "no tool_choice → no toolConfig");

        let rec = interaction(MULTI_TOOLS, 1);
        let want = &rec["request"]["parsed_body"];
        let mut got = translate(json!({"model":"x","tools":tools,"messages":[
            {"role":"user","content":"What is the capital of France?"},
            {"role":"assistant","tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_capital","arguments":"{\"country\":\"France\"}"}}]},
            {"role":"tool","tool_call_id":"call_1","content":"{\"return_value\":\"Paris\"}"}
        ]}));
        assert_eq!(got["contents"][1]["parts"][0]["functionCall"]["id"], "call_1");
        assert_eq!(got["contents"][2]["parts"][0]["functionResponse"]["id"], "call_1");
        strip_ids(&mut got);
        assert_eq!(got["contents"], want["contents"]);
    }

    #[test]
    fn generation_config_fields() {
        let got = translate(json!({
            "model":"m","messages":[{"role":"user","content":"hi"}],
            "temperature":0.25,"top_p":0.5,"max_tokens":5,"max_completion_tokens":300,"stop":["END","\n\nUser:"],
            "seed":42,"n":3,"presence_penalty":0.5,"frequency_penalty":-0.25,"user":"u-1","parallel_tool_calls":false,
            "logprobs":true,"metadata":{"a":"b"}
        }));
        assert_eq!(
            got["generationConfig"],
            json!({"temperature":0.25,"topP":0.5,"maxOutputTokens":300,"stopSequences":["END","\n\nUser:"],
                   "seed":42,"candidateCount":3,"presencePenalty":0.5,"frequencyPenalty":-0.25})
        );
        let keys: Vec<&String> = got.as_object().unwrap().keys().collect();
        assert_eq!(keys, vec!["contents", "generationConfig"], "nothing else leaks into the body");

        let one = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"stop":"STOP","max_tokens":7,"n":1}));
        assert_eq!(one["generationConfig"], json!({"stopSequences":["STOP"],"maxOutputTokens":7}));
        let none = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"stop":[]}));
        assert!(none.get("generationConfig").is_none());
        // A seed wider than int32 is wrapped, deterministically.
        let big = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"seed":4294967297i64}));
        assert_eq!(big["generationConfig"]["seed"], 1);
        let neg = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"seed":-7}));
        assert_eq!(neg["generationConfig"]["seed"], -7);
    }

    #[test]
    fn reasoning_effort_maps_to_thinking_config() {
        for (effort, want) in [
            ("none", json!({"thinkingBudget":0})),
            ("minimal", json!({"thinkingBudget":1024,"includeThoughts":true})),
            ("low", json!({"thinkingBudget":1024,"includeThoughts":true})),
            ("medium", json!({"thinkingBudget":8192,"includeThoughts":true})),
            ("high", json!({"thinkingBudget":24576,"includeThoughts":true})),
        ] {
            let got = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"reasoning_effort":effort}));
            assert_eq!(got["generationConfig"]["thinkingConfig"], want, "{effort}");
        }
        let got = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"reasoning_effort":"xhigh"}));
        assert!(got.get("generationConfig").is_none());
        // The gemini namespace wins over the mapping.
        let got = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"reasoning_effort":"high",
            "gemini":{"thinkingConfig":{"thinkingLevel":"low"}}}));
        assert_eq!(got["generationConfig"]["thinkingConfig"], json!({"thinkingLevel":"low"}));
    }

    #[test]
    fn gemini_namespace_is_passed_through() {
        let safety = json!([{"category":"HARM_CATEGORY_HARASSMENT","threshold":"BLOCK_ONLY_HIGH"}]);
        let got = translate(json!({
            "model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.1,
            "tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"auto",
            "gemini":{
                "safetySettings": safety,
                "thinkingConfig": {"thinkingBudget":512,"includeThoughts":true},
                "generationConfig": {"topK": 40, "temperature": 0.9},
                "tools": [{"googleSearch":{}}],
                "cachedContent": "cachedContents/abc",
                "labels": {"team":"a"}
            }
        }));
        assert_eq!(got["safetySettings"], safety);
        assert_eq!(got["cachedContent"], "cachedContents/abc");
        assert_eq!(got["labels"], json!({"team":"a"}));
        assert_eq!(
            got["generationConfig"],
            json!({"temperature":0.9,"topK":40,"thinkingConfig":{"thinkingBudget":512,"includeThoughts":true}})
        );
        assert_eq!(got["tools"], json!([{"functionDeclarations":[{"name":"f","description":""}]},{"googleSearch":{}}]));
        assert_eq!(got["toolConfig"], json!({"functionCallingConfig":{"mode":"AUTO"}}));
        assert!(got.get("gemini").is_none());
        // toolConfig given in the namespace replaces the translated one.
        let got = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],
            "tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"auto",
            "gemini":{"toolConfig":{"functionCallingConfig":{"mode":"VALIDATED"}}}}));
        assert_eq!(got["toolConfig"], json!({"functionCallingConfig":{"mode":"VALIDATED"}}));

        for (g, param) in [
            (json!("x"), "gemini"),
            (json!([1]), "gemini"),
            (json!({"generationConfig": 3}), "gemini.generationConfig"),
            (json!({"tools": {}}), "gemini.tools"),
            (json!({"contents": []}), "gemini.contents"),
        ] {
            let e = translate_err(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"gemini":g}));
            assert_eq!((e.status, e.param.as_deref()), (400, Some(param)));
        }
    }

    #[test]
    fn system_and_developer_messages_anywhere_become_the_system_instruction() {
        let got = translate(json!({"model":"m","messages":[
            {"role":"system","content":"Be brief."},
            {"role":"user","content":"hi"},
            {"role":"developer","content":[{"type":"text","text":"Answer in French."}]},
            {"role":"system","content":""},
            {"role":"assistant","content":"Bonjour"},
            {"role":"user","content":"again"},
            {"role":"user","content":[{"type":"text","text":"and"},{"type":"text","text":""},{"type":"text","text":"again"}]}
        ]}));
        assert_eq!(got["systemInstruction"], json!({"role":"user","parts":[{"text":"Be brief."},{"text":"Answer in French."}]}));
        assert_eq!(
            got["contents"],
            json!([
                {"role":"user","parts":[{"text":"hi"}]},
                {"role":"model","parts":[{"text":"Bonjour"}]},
                {"role":"user","parts":[{"text":"again"},{"text":"and"},{"text":"again"}]}
            ])
        );
        let plain = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}]}));
        assert!(plain.get("systemInstruction").is_none());
    }

    #[test]
    fn parallel_tool_calls_results_and_thought_signatures() {
        let got = translate(json!({"model":"m","messages":[
            {"role":"user","content":"Weather in Paris and Rome?"},
            {"role":"assistant","content":"Let me check.","reasoning_content":"not sent back","tool_calls":[
                {"id":"call_r1_0__thought__c2lnLWE=","type":"function","function":{"name":"get_weather","arguments":"{\"location\": \"Paris\"}"}},
                {"id":"call_r1_1","type":"function","function":{"name":"get_time","arguments":""}}
            ]},
            {"role":"tool","tool_call_id":"call_r1_1","content":"12:00"},
            {"role":"tool","tool_call_id":"call_r1_0__thought__c2lnLWE=","content":[{"type":"text","text":"18C"},{"type":"text","text":"sunny"}]},
            {"role":"user","content":"Thanks"}
        ]}));
        let contents = got["contents"].as_array().unwrap();
        assert_eq!(contents.len(), 3, "{contents:#?}");
        assert_eq!(
            contents[1],
            json!({"role":"model","parts":[
                {"text":"Let me check."},
                {"functionCall":{"id":"call_r1_0","name":"get_weather","args":{"location":"Paris"}},"thoughtSignature":"c2lnLWE="},
                {"functionCall":{"id":"call_r1_1","name":"get_time","args":{}}}
            ]})
        );
        assert_eq!(
            contents[2],
            json!({"role":"user","parts":[
                {"functionResponse":{"id":"call_r1_1","name":"get_time","response":{"result":"12:00"}}},
                {"functionResponse":{"id":"call_r1_0","name":"get_weather","response":{"result":"18C\nsunny"}}},
                {"text":"Thanks"}
            ]}),
            "both results in one turn, names found through the tool calls, ids without the signature"
        );
        assert!(!got.to_string().contains("not sent back"));
    }

    #[test]
    fn repeated_ids_map_to_the_nearest_earlier_call() {
        let got = translate(json!({"model":"m","messages":[
            {"role":"user","content":"a"},
            {"role":"assistant","content":"","tool_calls":[{"id":"call_0","type":"function","function":{"name":"first","arguments":"{}"}}]},
            {"role":"tool","tool_call_id":"call_0","content":"1"},
            {"role":"user","content":""},
            {"role":"assistant","tool_calls":[{"id":"call_0","type":"function","function":{"name":"second","arguments":"{}"}}]},
            {"role":"tool","tool_call_id":"call_0","content":"[1,2]"}
        ]}));
        assert_eq!(
            got["contents"][1],
            json!({"role":"model","parts":[{"functionCall":{"id":"call_0","name":"first","args":{}}}]}),
            "empty text next to tool calls is not sent (Gemini rejects empty text parts)"
        );
        assert_eq!(got["contents"][2]["parts"].as_array().unwrap().len(), 1, "an empty user message adds nothing");
        assert_eq!(got["contents"][2]["parts"][0]["functionResponse"]["name"], "first");
        assert_eq!(got["contents"][4]["parts"][0]["functionResponse"]["name"], "second");
        assert_eq!(got["contents"][4]["parts"][0]["functionResponse"]["response"], json!({"result":"[1,2]"}), "only objects pass as is");
    }

    #[test]
    fn unknown_tool_call_ids_and_bad_arguments_are_400() {
        let e = translate_err(json!({"model":"m","messages":[
            {"role":"user","content":"a"},
            {"role":"tool","tool_call_id":"nope","content":"x"},
            {"role":"assistant","tool_calls":[{"id":"nope","type":"function","function":{"name":"later","arguments":"{}"}}]}
        ]}));
        assert_eq!((e.status, e.param.as_deref()), (400, Some("messages[1].tool_call_id")));
        // A tool message naming its function (LangChain does) works without a matching call.
        let got = translate(json!({"model":"m","messages":[{"role":"user","content":"a"},
            {"role":"tool","tool_call_id":"nope","name":"lookup","content":"x"}]}));
        assert_eq!(got["contents"][0]["parts"][1]["functionResponse"]["name"], "lookup");

        for bad in ["{not json", "[1,2]", "\"x\"", "{\"a\":1} trailing"] {
            let e = translate_err(json!({"model":"m","messages":[
                {"role":"user","content":"a"},
                {"role":"assistant","tool_calls":[
                    {"id":"ok","type":"function","function":{"name":"f","arguments":"{}"}},
                    {"id":"t","type":"function","function":{"name":"f","arguments":bad}}
                ]}
            ]}));
            assert_eq!(e.param.as_deref(), Some("messages[1].tool_calls[1].function.arguments"), "{bad}");
        }
        let e = translate_err(json!({"model":"m","messages":[{"role":"user","content":"hi"},{"role":"function","name":"f","content":"42"}]}));
        assert_eq!((e.status, e.param.as_deref()), (400, Some("messages[1].role")));
        let e = translate_err(json!({"model":"m","messages":[{"role":"user","content":"a"},
            {"role":"assistant","tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"{}"}}]},
            {"role":"tool","tool_call_id":"t","content":[{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}]}));
        assert_eq!(e.param.as_deref(), Some("messages[2].content[0]"));
    }

    #[test]
    fn images_audio_and_files() {
        let got = translate(json!({"model":"m","messages":[{"role":"user","content":[
            {"type":"text","text":"What is in these?"},
            {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}},
            {"type":"image_url","image_url":{"url":"https://example.com/cat.PNG?size=large#x","detail":"high"}},
            {"type":"image_url","image_url":{"url":"http://example.com/a/b.webp"}},
            {"type":"image_url","image_url":{"url":"https://example.com/photo"}},
            {"type":"image_url","image_url":{"url":"gs://bucket/doc.pdf"}},
            {"type":"image_url","image_url":{"url":"DATA:image/jpeg;BASE64,/9j/4AAQ"}},
            {"type":"input_audio","input_audio":{"data":"UklGRg==","format":"wav"}},
            {"type":"file","file":{"file_data":"data:application/pdf;base64,JVBERi0=","filename":"a.pdf"}}
        ]}]}));
        assert_eq!(
            got["contents"][0]["parts"],
            json!([
                {"text":"What is in these?"},
                {"inlineData":{"mimeType":"image/png","data":"iVBORw0KGgo="}},
                {"fileData":{"mimeType":"image/png","fileUri":"https://example.com/cat.PNG?size=large#x"}},
                {"fileData":{"mimeType":"image/webp","fileUri":"http://example.com/a/b.webp"}},
                {"fileData":{"mimeType":"image/jpeg","fileUri":"https://example.com/photo"}},
                {"fileData":{"mimeType":"application/pdf","fileUri":"gs://bucket/doc.pdf"}},
                {"inlineData":{"mimeType":"image/jpeg","data":"/9j/4AAQ"}},
                {"inlineData":{"mimeType":"audio/wav","data":"UklGRg=="}},
                {"inlineData":{"mimeType":"application/pdf","data":"JVBERi0="}}
            ])
        );
        for url in ["ftp://x/y.png", "data:image/png,abc", "data:;base64,abc", "data:image/png;base64", "data:image/png;base64,", "é"] {
            let e = translate_err(json!({"model":"m","messages":[{"role":"user","content":[
                {"type":"text","text":"x"},{"type":"image_url","image_url":{"url":url}}]}]}));
            assert_eq!((e.status, e.param.as_deref()), (400, Some("messages[0].content[1].image_url.url")), "{url}");
        }
        let e = translate_err(json!({"model":"m","messages":[{"role":"user","content":[{"type":"file","file":{"file_id":"file-1"}}]}]}));
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].file"));
        let e = translate_err(json!({"model":"m","messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{"data":"AA"}}]}]}));
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].input_audio"));
        let e = translate_err(json!({"model":"m","messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{"data":"AA","format":"../x"}}]}]}));
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].input_audio.format"));
    }

    #[test]
    fn tool_choice_modes() {
        let tools = json!([{"type":"function","function":{"name":"a"}},{"type":"function","function":{"name":"b"}}]);
        let base = |extra: Value| {
            let mut v = json!({"model":"m","messages":[{"role":"user","content":"hi"}],"tools":tools});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            translate(v)
        };
        let mode = |v: Value| v["toolConfig"]["functionCallingConfig"].clone();
        assert_eq!(mode(base(json!({"tool_choice":"auto"}))), json!({"mode":"AUTO"}));
        assert_eq!(mode(base(json!({"tool_choice":"none"}))), json!({"mode":"NONE"}));
        assert_eq!(mode(base(json!({"tool_choice":"required"}))), json!({"mode":"ANY"}));
        assert_eq!(
            mode(base(json!({"tool_choice":{"type":"function","function":{"name":"b"}}}))),
            json!({"mode":"ANY","allowedFunctionNames":["b"]})
        );
        assert!(base(json!({"parallel_tool_calls":false})).get("toolConfig").is_none(), "Gemini has no parallel switch");
        let plain = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[],"tool_choice":"required"}));
        assert!(plain.get("tools").is_none());
        assert!(plain.get("toolConfig").is_none(), "tool_choice without tools is dropped");
        let e = translate_err(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"tools":tools,"tool_choice":"sometimes"}));
        assert_eq!(e.param.as_deref(), Some("tool_choice"));
        let e = translate_err(json!({"model":"m","messages":[{"role":"user","content":"hi"}],
            "tools":[{"type":"function","function":{"name":"a"}},{"type":"code_interpreter","function":{"name":"b"}}]}));
        assert_eq!(e.param.as_deref(), Some("tools[1].type"));
    }

    #[test]
    fn json_schemas_become_gemini_schemas_or_pass_as_json_schema() {
        let strict = json!({
            "type":"object","additionalProperties":false,"$schema":"http://json-schema.org/draft-07/schema#",
            "properties":{
                "name":{"type":"string","description":"who"},
                "age":{"type":["integer","null"],"minimum":0},
                "tags":{"type":"array","items":{"type":"string","enum":["a","b"]},"maxItems":3},
                "kind":{"anyOf":[{"type":"string","enum":["x","y"]},{"type":"null"}],"description":"outer"},
                "fixed":{"const":"k"},
                "choice":{"oneOf":[{"type":"string"},{"type":"number"}]},
                "maybe":{"enum":["p",null]}
            },
            "required":["name","age"]
        });
        assert_eq!(
            gemini_schema(&strict, 0).unwrap(),
            json!({
                "type":"OBJECT",
                "properties":{
                    "name":{"type":"STRING","description":"who"},
                    "age":{"type":"INTEGER","nullable":true,"minimum":0},
                    "tags":{"type":"ARRAY","items":{"type":"STRING","enum":["a","b"]},"maxItems":3},
                    "kind":{"type":"STRING","enum":["x","y"],"nullable":true,"description":"outer"},
                    "fixed":{"type":"STRING","enum":["k"]},
                    "choice":{"anyOf":[{"type":"STRING"},{"type":"NUMBER"}]},
                    "maybe":{"type":"STRING","enum":["p"],"nullable":true}
                },
                "required":["name","age"]
            })
        );
        for unconvertible in [
            json!({"$ref":"#/$defs/A","$defs":{"A":{"type":"string"}}}),
            json!({"allOf":[{"type":"string"}]}),
            json!({"type":"object","additionalProperties":{"type":"string"}}),
            json!({"type":["string","number"]}),
            json!({"type":"array","items":[{"type":"string"}]}),
            json!({"type":"null"}),
            json!({"type":"integer","enum":[1,2]}),
            json!({"type":"string","patternProperties":{}}),
            json!(true),
        ] {
            assert!(gemini_schema(&unconvertible, 0).is_none(), "{unconvertible}");
        }
        let mut deep = json!({"type":"string"});
        for _ in 0..(MAX_SCHEMA_DEPTH + 2) {
            deep = json!({"type":"array","items":deep});
        }
        assert!(gemini_schema(&deep, 0).is_none(), "too deep");

        // In a request: convertible parameters → parameters; others → parametersJsonSchema.
        let referencing = json!({"type":"object","properties":{"a":{"$ref":"#/$defs/A"}},"$defs":{"A":{"type":"string"}}});
        let got = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[
            {"type":"function","function":{"name":"f","description":"d","parameters":strict,"strict":true}},
            {"type":"function","function":{"name":"g","parameters":referencing}}
        ]}));
        let decls = &got["tools"][0]["functionDeclarations"];
        assert_eq!(decls[0]["parameters"]["type"], "OBJECT");
        assert!(decls[0].get("parametersJsonSchema").is_none());
        assert_eq!(decls[1]["parametersJsonSchema"], referencing);
        assert!(decls[1].get("parameters").is_none());
    }

    #[test]
    fn response_format_sets_json_mode_and_schema_in_document_order() {
        let got = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_object"}}));
        assert_eq!(got["generationConfig"], json!({"responseMimeType":"application/json"}));
        let text = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"text"}}));
        assert!(text.get("generationConfig").is_none());

        // Raw text, so the key order (reasoning before answer) is the client's.
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_schema",
            "json_schema":{"name":"a","strict":true,"schema":{"type":"object","properties":{"reasoning":{"type":"string"},
            "answer":{"type":"object","properties":{"zeta":{"type":"number"},"alpha":{"type":"boolean"}},"required":["zeta","alpha"]}},
            "required":["reasoning","answer"],"additionalProperties":false}}}}"#;
        let up = providers::upstream_request(Operation::Chat, &gemini_backend(), body.as_bytes(), &ctx("m")).unwrap();
        let got: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(
            got["generationConfig"],
            json!({"responseMimeType":"application/json","responseSchema":{
                "type":"OBJECT","propertyOrdering":["reasoning","answer"],"required":["reasoning","answer"],
                "properties":{"reasoning":{"type":"STRING"},
                              "answer":{"type":"OBJECT","properties":{"zeta":{"type":"NUMBER"},"alpha":{"type":"BOOLEAN"}},
                                        "required":["zeta","alpha"],"propertyOrdering":["zeta","alpha"]}}}})
        );
        // Not convertible → responseJsonSchema, still ordered; a property named "properties" is a name.
        let body = r##"{"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_schema",
            "json_schema":{"name":"a","schema":{"type":"object","properties":{"b":{"$ref":"#/$defs/B"},"properties":{"type":"string"}},
            "$defs":{"B":{"type":"object","properties":{"y":{"type":"string"},"x":{"type":"string"}}}}}}}}"##;
        let up = providers::upstream_request(Operation::Chat, &gemini_backend(), body.as_bytes(), &ctx("m")).unwrap();
        let got: Value = serde_json::from_slice(&up.body).unwrap();
        assert!(got["generationConfig"].get("responseSchema").is_none());
        assert_eq!(
            got["generationConfig"]["responseJsonSchema"],
            json!({"type":"object","properties":{"b":{"$ref":"#/$defs/B"},"properties":{"type":"string"}},
                   "propertyOrdering":["b","properties"],
                   "$defs":{"B":{"type":"object","properties":{"y":{"type":"string"},"x":{"type":"string"}},"propertyOrdering":["y","x"]}}})
        );
        // A json_schema without a schema is plain JSON mode.
        let got = translate(json!({"model":"m","messages":[{"role":"user","content":"hi"}],
            "response_format":{"type":"json_schema","json_schema":{"name":"free"}}}));
        assert_eq!(got["generationConfig"], json!({"responseMimeType":"application/json"}));
    }

    // ------------------------------------------------------------------------------ responses

    #[test]
    fn recorded_response_is_translated() {
        let rec = interaction(MODEL, 0);
        let out = respond(&rec["response"]["parsed_body"]);
        assert_eq!(out["id"], "chatcmpl-bzlXaa_EE_aHqtsPi_zw8Ao");
        assert_eq!(out["object"], "chat.completion");
        assert_eq!(out["created"], CREATED);
        assert_eq!(out["model"], "gemini-2.5-flash");
        assert_eq!(out["choices"].as_array().unwrap().len(), 1);
        let choice = &out["choices"][0];
        assert_eq!(choice["index"], 0);
        assert_eq!(choice["message"]["role"], "assistant");
        assert_eq!(choice["message"]["content"], "Hello! How can I help you today?");
        assert!(choice["message"].get("tool_calls").is_none());
        assert!(choice["message"].get("reasoning_content").is_none());
        assert_eq!(choice["finish_reason"], "stop");
        assert!(choice["logprobs"].is_null());
        // 9 prompt; 9 candidates + 34 thoughts = 43 completion; 52 total as recorded.
        assert_eq!(
            out["usage"],
            json!({"prompt_tokens":9,"completion_tokens":43,"total_tokens":52,
                   "prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":34}})
        );
    }

    #[test]
    fn recorded_function_call_responses_are_translated() {
        let out = respond(&interaction(TOOL_OUTPUT, 0)["response"]["parsed_body"]);
        let m = &out["choices"][0]["message"];
        assert!(m["content"].is_null(), "tool calls only: content is null, as OpenAI sends it");
        assert_eq!(out["choices"][0]["finish_reason"], "tool_calls", "STOP with function calls → tool_calls");
        assert_eq!(
            m["tool_calls"],
            json!([{"id":"call_LlteaIDvD9m7nvgPz5Sb0Aw_0","type":"function","function":{"name":"get_user_country","arguments":"{}"}}])
        );
        assert_eq!(out["usage"]["prompt_tokens"], 33);
        assert_eq!(out["usage"]["completion_tokens"], 5);
        assert_eq!(out["usage"]["total_tokens"], 38);

        let out = respond(&interaction(TOOL_OUTPUT, 1)["response"]["parsed_body"]);
        let call = &out["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["function"]["name"], "final_result");
        let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"city":"Mexico City","country":"Mexico"}));
        assert_eq!((out["usage"]["prompt_tokens"].as_u64(), out["usage"]["total_tokens"].as_u64()), (Some(47), Some(55)));

        // No responseId recorded: ids are call_<n>, the id falls back.
        let out = respond(&interaction(MULTI_TOOLS, 0)["response"]["parsed_body"]);
        assert_eq!(out["id"], format!("chatcmpl-gemini-{CREATED}"));
        assert_eq!(out["model"], "gemini-2.0-flash-exp");
        let call = &out["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["id"], "call_0");
        assert_eq!(call["function"]["name"], "get_capital");
        assert_eq!(serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap()).unwrap(), json!({"country":"France"}));
        let out = respond(&interaction(MULTI_TOOLS, 1)["response"]["parsed_body"]);
        assert_eq!(out["choices"][0]["message"]["content"], "The capital of France is Paris.\n");
        assert_eq!(out["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            (out["usage"]["prompt_tokens"].as_u64(), out["usage"]["completion_tokens"].as_u64(), out["usage"]["total_tokens"].as_u64()),
            (Some(35), Some(8), Some(43))
        );
    }

    #[test]
    fn thoughts_signatures_and_candidates() {
        let body = json!({
            "candidates":[
                {"content":{"role":"model","parts":[
                    {"text":"Need the weather.","thought":true},
                    {"text":"I'll check "},
                    {"text":"Paris."},
                    {"functionCall":{"name":"get_weather","args":{"location":"Paris","days":2}},"thoughtSignature":"U0lHMQ=="},
                    {"functionCall":{"id":"fc-7","name":"get_time"}}
                ]},"finishReason":"STOP","index":0},
                {"content":{"role":"model","parts":[{"text":"Other"}]},"finishReason":"MAX_TOKENS","index":1}
            ],
            "usageMetadata":{"promptTokenCount":100,"candidatesTokenCount":40,"thoughtsTokenCount":7,
                             "cachedContentTokenCount":60,"toolUsePromptTokenCount":5,"totalTokenCount":152},
            "modelVersion":"gemini-2.5-pro","responseId":"R-1/x"
        });
        let out = respond(&body);
        let m = &out["choices"][0]["message"];
        assert_eq!(m["content"], "I'll check Paris.");
        assert_eq!(m["reasoning_content"], "Need the weather.");
        assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
        let calls = m["tool_calls"].as_array().unwrap();
        assert_eq!(calls[0]["id"], "call_R-1x_0__thought__U0lHMQ==", "signature rides in the id");
        assert_eq!(calls[1]["id"], "fc-7", "Gemini's own id is kept");
        assert_eq!(calls[1]["function"]["arguments"], "{}");
        assert_eq!(out["choices"][1]["index"], 1);
        assert_eq!(out["choices"][1]["message"]["content"], "Other");
        assert_eq!(out["choices"][1]["finish_reason"], "length");
        assert_eq!(
            out["usage"],
            json!({"prompt_tokens":105,"completion_tokens":47,"total_tokens":152,
                   "prompt_tokens_details":{"cached_tokens":60},"completion_tokens_details":{"reasoning_tokens":7}})
        );
        // Round trip: the ids the client got bring the signature and name back.
        let req = translate(json!({"model":"m","messages":[
            {"role":"user","content":"w?"},
            {"role":"assistant","content":m["content"],"tool_calls":calls},
            {"role":"tool","tool_call_id":calls[0]["id"],"content":"sunny"},
            {"role":"tool","tool_call_id":calls[1]["id"],"content":"noon"}
        ]}));
        assert_eq!(
            req["contents"][1]["parts"][1],
            json!({"functionCall":{"id":"call_R-1x_0","name":"get_weather","args":{"location":"Paris","days":2}},"thoughtSignature":"U0lHMQ=="})
        );
        assert_eq!(req["contents"][2]["parts"][0]["functionResponse"]["id"], "call_R-1x_0");
        assert_eq!(req["contents"][2]["parts"][1]["functionResponse"]["id"], "fc-7");
    }

    #[test]
    fn finish_reasons_map() {
        for (reason, want) in [
            ("STOP", "stop"),
            ("MAX_TOKENS", "length"),
            ("SAFETY", "content_filter"),
            ("RECITATION", "content_filter"),
            ("BLOCKLIST", "content_filter"),
            ("PROHIBITED_CONTENT", "content_filter"),
            ("SPII", "content_filter"),
            ("IMAGE_SAFETY", "content_filter"),
            ("LANGUAGE", "stop"),
            ("OTHER", "stop"),
            ("UNEXPECTED_TOOL_CALL", "stop"),
            ("SOMETHING_NEW", "stop"),
        ] {
            let body = json!({"candidates":[{"content":{"parts":[{"text":"x"}]},"finishReason":reason}]});
            assert_eq!(respond(&body)["choices"][0]["finish_reason"], want, "{reason}");
        }
        // Safety-blocked candidate without content.
        let out = respond(&json!({"candidates":[{"finishReason":"SAFETY","index":0}]}));
        assert_eq!(out["choices"][0]["message"]["content"], "");
        assert_eq!(out["choices"][0]["finish_reason"], "content_filter");
        // Blocked prompt: no candidates at all.
        let out = respond(&json!({"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":8,"totalTokenCount":8}}));
        assert_eq!(out["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(out["usage"]["prompt_tokens"], 8);
        assert_eq!(out["model"], "gemini-test", "the model sent upstream when the answer names none");
        // Malformed function call → 502 error, not an empty stop.
        let e = providers::response_body(
            Schema::Gemini,
            &hints(),
            br#"{"candidates":[{"content":{"parts":[{"text":""}]},"finishReason":"MALFORMED_FUNCTION_CALL","finishMessage":"Malformed function call: bad"}]}"#,
            CREATED,
        )
        .unwrap_err();
        assert_eq!((e.status, e.code.as_deref()), (502, Some("malformed_function_call")));
        assert!(e.message.contains("Malformed function call: bad"));
    }

    #[test]
    fn unreadable_responses_are_502_and_error_bodies_are_errors() {
        for body in [&b""[..], b"not json", b"{}", b"[1,2,3]", br#"{"candidates":"x"}"#, br#"{"candidates":[{"content":{"parts":[{"text":5}]}}]}"#] {
            let e = providers::response_body(Schema::Gemini, &hints(), body, 1).expect_err("must fail");
            assert_eq!((e.status, e.kind), (502, "api_error"), "{}", String::from_utf8_lossy(body));
        }
        let e = providers::response_body(Schema::Gemini, &hints(), br#"{"error":{"code":503,"message":"busy","status":"UNAVAILABLE"}}"#, 1)
            .unwrap_err();
        assert_eq!((e.status, e.code.as_deref(), e.message.as_str()), (503, Some("unavailable"), "busy"));
    }

    // ------------------------------------------------------------------------------ embeddings

    #[test]
    fn embeddings_request_and_response() {
        let g = gemini_backend();
        let body = br#"{"model":"emb","input":["hello","world"],"dimensions":8,"encoding_format":"base64"}"#;
        let up = providers::upstream_request(Operation::Embeddings, &g, body, &ctx("gemini-embedding-001")).unwrap();
        assert_eq!(up.path, "/v1beta/models/gemini-embedding-001:batchEmbedContents");
        let got: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(
            got,
            json!({"requests":[
                {"model":"models/gemini-embedding-001","content":{"parts":[{"text":"hello"}]},"outputDimensionality":8},
                {"model":"models/gemini-embedding-001","content":{"parts":[{"text":"world"}]},"outputDimensionality":8}
            ]})
        );
        assert_eq!(up.hints.op, Operation::Embeddings);
        let up = providers::upstream_request(Operation::Embeddings, &g, br#"{"model":"e","input":"one"}"#, &ctx("e")).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&up.body).unwrap(), json!({"requests":[{"model":"models/e","content":{"parts":[{"text":"one"}]}}]}));

        let e = providers::upstream_request(Operation::Embeddings, &g, br#"{"model":"e","input":[1,2]}"#, &ctx("e")).unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (400, Some("input")));
        let e = providers::upstream_request(Operation::Embeddings, &vertex_backend(), br#"{"model":"e","input":"x"}"#, &ctx("e"))
            .unwrap_err();
        assert_eq!((e.status, e.code.as_deref()), (400, Some("unsupported_capability")));

        let hints = ResponseHints { op: Operation::Embeddings, stream: false, encoding: crate::api::embeddings::EncodingFormat::Float, model: "gemini-embedding-001".into() };
        assert!(providers::translates_responses(Schema::Gemini, &hints));
        let out = providers::response_body(Schema::Gemini, &hints, br#"{"embeddings":[{"values":[0.5,-1.25]},{"values":[2.0]}]}"#, 0).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            json!({"object":"list","model":"gemini-embedding-001","usage":{"prompt_tokens":0,"total_tokens":0},"data":[
                {"object":"embedding","index":0,"embedding":[0.5,-1.25]},{"object":"embedding","index":1,"embedding":[2.0]}]})
        );
        let b64 = ResponseHints { encoding: crate::api::embeddings::EncodingFormat::Base64, ..hints.clone() };
        let out = providers::response_body(Schema::Gemini, &b64, br#"{"embeddings":[{"values":[1.0]}]}"#, 0).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["data"][0]["embedding"], "AACAPw==", "little-endian f32 1.0");
        for bad in [&b"{}"[..], b"nope", br#"{"embeddings":[{"values":["x"]}]}"#] {
            assert_eq!(providers::response_body(Schema::Gemini, &hints, bad, 0).unwrap_err().status, 502);
        }
    }

    // ------------------------------------------------------------------------------ errors

    #[test]
    fn errors_are_mapped() {
        for (status, body, kind, code, msg) in [
            (429, r#"{"error":{"code":429,"message":"You exceeded your current quota.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure"}]}}"#,
             "rate_limit_error", Some("resource_exhausted"), "You exceeded your current quota."),
            (503, r#"{"error":{"code":503,"message":"The model is overloaded. Please try again later.","status":"UNAVAILABLE"}}"#,
             "service_unavailable_error", Some("unavailable"), "The model is overloaded. Please try again later."),
            (500, r#"{"error":{"code":500,"message":"An internal error has occurred.","status":"INTERNAL"}}"#,
             "api_error", Some("internal"), "An internal error has occurred."),
            (400, r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT",
                      "details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#,
             "invalid_request_error", Some("invalid_api_key"), "API key not valid. Please pass a valid API key."),
            (404, r#"[{"error":{"code":404,"message":"models/nope is not found","status":"NOT_FOUND"}}]"#,
             "invalid_request_error", Some("not_found"), "models/nope is not found"),
            (403, r#"{"error":{"code":403,"message":"","status":"PERMISSION_DENIED"}}"#,
             "permission_error", Some("permission_denied"), "The Gemini backend returned HTTP 403."),
        ] {
            assert_eq!(providers::error_status(Schema::Gemini, status), status, "Envoy retries on the status as it is");
            let v: Value = serde_json::from_slice(&providers::error_body(Schema::Gemini, status, body.as_bytes())).unwrap();
            assert_eq!(v, json!({"error":{"message":msg,"type":kind,"param":null,"code":code}}), "{body}");
        }
        for body in [&b"<html>Bad gateway</html>"[..], b"", b"{\"error\":null}", b"\xff\xfe"] {
            let v: Value = serde_json::from_slice(&map_error(502, body)).unwrap();
            assert!(v["error"]["message"].as_str().unwrap().contains("502"), "{v}");
            assert_eq!(v["error"]["type"], "api_error");
            assert!(v["error"]["code"].is_null());
        }
    }

    // ------------------------------------------------------------------------------ streams

    #[test]
    fn recorded_stream_at_every_split() {
        let body = stream_body();
        assert!(body.contains("}\r\n\r\ndata: "), "the recording separates events with CRLF CRLF");
        assert!(!body.contains("[DONE]"));
        let out = assert_split_invariant(&body);
        let sum = summarize(&out, "chatcmpl-w1peaMz6INOvnvgPgYfPiQY", "gemini-2.0-flash-exp");
        let c = sum.c0();
        assert!(c.role_first);
        assert_eq!(c.content, "The capital of France is Paris.\n");
        assert_eq!(c.reasoning, "");
        assert!(c.tools.is_empty());
        assert_eq!(c.finish, vec!["stop"]);
        assert_eq!(
            sum.usage,
            Some(json!({"prompt_tokens":13,"completion_tokens":8,"total_tokens":21,
                        "prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}))
        );
        assert!(sum.done);
        assert!(sum.error.is_none());
        // role, 3 text chunks, finish, usage, [DONE]
        assert_eq!(sum.events, 7);
        assert!(out.ends_with(DONE));
    }

    #[test]
    fn the_recorded_stream_ends_only_when_upstream_ends() {
        let body = stream_body();
        let mut t = StreamTranslator::new("gemini-test", CREATED);
        let mut out = Vec::new();
        t.push(body.as_bytes(), &mut out);
        assert!(!out.ends_with(DONE), "no terminator upstream: [DONE] waits for the end");
        assert!(String::from_utf8_lossy(&out).contains("\"finish_reason\":\"stop\""));
        t.finish(&mut out);
        assert!(out.ends_with(DONE));
        let n = out.len();
        t.finish(&mut out);
        t.push(body.as_bytes(), &mut out);
        assert_eq!(out.len(), n, "nothing after [DONE]");
        // LF-only separators work the same.
        assert_eq!(run_whole(&body.replace("\r\n", "\n")), run_whole(&body));
    }

    #[test]
    fn usage_is_available_while_streaming() {
        let body = stream_body();
        let mut t = StreamTranslator::new("gemini-test", CREATED);
        let mut out = Vec::new();
        assert!(t.usage().is_none());
        let first_end = body.find("\r\n\r\n").unwrap() + 4;
        t.push(&body.as_bytes()[..first_end], &mut out);
        let u = t.usage().unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.total_tokens), (15, 0, 15));
        t.push(&body.as_bytes()[first_end..], &mut out);
        t.finish(&mut out);
        let u = t.usage().unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.total_tokens), (13, 8, 21));
    }

    #[test]
    fn truncated_streams_report_an_error() {
        let body = stream_body();
        let last = body.rfind("data: ").unwrap();
        let head = &body[..last];
        let out = assert_split_invariant(head);
        let sum = summarize(&out, "chatcmpl-w1peaMz6INOvnvgPgYfPiQY", "gemini-2.0-flash-exp");
        assert_eq!(sum.c0().content, "The capital of France");
        assert!(sum.c0().finish.is_empty());
        assert!(!sum.done);
        assert!(sum.usage.is_none(), "no usage chunk for a cut stream");
        assert_eq!(
            sum.error,
            Some(json!({"message":"upstream stream ended before completion","type":"api_error","param":null,"code":"stream_truncated"}))
        );
        // Cut in the middle of the last event's JSON: unreadable, then nothing more.
        let mid = &body[..last + 40];
        let sum = summarize(&run_whole(mid), "chatcmpl-w1peaMz6INOvnvgPgYfPiQY", "gemini-2.0-flash-exp");
        assert!(!sum.done);
        assert!(sum.error.is_some());
        // Nothing at all, or only usage: an error, never a silent end.
        for input in ["", "data: {\"usageMetadata\":{\"promptTokenCount\":3}}\r\n\r\n", ": keep-alive\r\n\r\n"] {
            let p = payloads(&run_whole(input));
            assert_eq!(p.len(), 1, "{input:?}");
            assert_eq!(serde_json::from_str::<Value>(&p[0]).unwrap()["error"]["code"], "stream_truncated");
        }
    }

    #[test]
    fn stream_with_thoughts_and_function_calls() {
        let input = sse(&[
            json!({"candidates":[{"content":{"role":"model","parts":[{"text":"Thinking about **weather**","thought":true}]},"index":0}],
                   "usageMetadata":{"promptTokenCount":30,"totalTokenCount":30},"modelVersion":"gemini-3-pro","responseId":"abc"}),
            json!({"candidates":[{"content":{"role":"model","parts":[
                      {"functionCall":{"name":"get_weather","args":{"city":"Paris"}},"thoughtSignature":"Q2lJQg=="},
                      {"functionCall":{"name":"get_weather","args":{"city":"Rome, \"IT\""}}}]},"index":0}],
                   "modelVersion":"gemini-3-pro","responseId":"abc"}),
            json!({"candidates":[{"content":{"role":"model","parts":[{"text":""}]},"finishReason":"STOP","index":0}],
                   "usageMetadata":{"promptTokenCount":30,"candidatesTokenCount":20,"thoughtsTokenCount":50,"totalTokenCount":100},
                   "modelVersion":"gemini-3-pro","responseId":"abc"}),
        ]);
        let out = assert_split_invariant(&input);
        let sum = summarize(&out, "chatcmpl-abc", "gemini-3-pro");
        let c = sum.c0();
        assert!(c.role_first);
        assert_eq!(c.reasoning, "Thinking about **weather**");
        assert_eq!(c.content, "");
        assert_eq!(
            c.tools,
            vec![
                ("call_abc_0__thought__Q2lJQg==".to_string(), "get_weather".to_string(), "{\"city\":\"Paris\"}".to_string()),
                ("call_abc_1".to_string(), "get_weather".to_string(), "{\"city\":\"Rome, \\\"IT\\\"\"}".to_string()),
            ]
        );
        assert_eq!(c.finish, vec!["tool_calls"]);
        assert_eq!(sum.usage.as_ref().unwrap()["completion_tokens"], 70);
        assert_eq!(sum.usage.as_ref().unwrap()["completion_tokens_details"]["reasoning_tokens"], 50);
        assert!(sum.done);
    }

    #[test]
    fn stream_with_several_candidates() {
        let input = sse(&[
            json!({"candidates":[{"content":{"parts":[{"text":"A1"}]},"index":0},{"content":{"parts":[{"text":"B1"}]},"index":1}],"responseId":"m"}),
            json!({"candidates":[{"content":{"parts":[{"text":"A2"}]},"finishReason":"STOP","index":0},
                                 {"content":{"parts":[{"text":"B2"}]},"index":1}],"responseId":"m"}),
            json!({"candidates":[{"content":{"parts":[{"text":"late"}]},"index":0},
                                 {"content":{"parts":[{"text":"B3"}]},"finishReason":"MAX_TOKENS","index":1}],
                   "usageMetadata":{"promptTokenCount":2,"candidatesTokenCount":6,"totalTokenCount":8},"responseId":"m"}),
        ]);
        let out = assert_split_invariant(&input);
        let sum = summarize(&out, "chatcmpl-m", "gemini-test");
        assert_eq!(sum.choices.len(), 2);
        assert_eq!((sum.choices[&0].content.as_str(), sum.choices[&0].finish.clone()), ("A1A2", vec!["stop".to_string()]));
        assert_eq!((sum.choices[&1].content.as_str(), sum.choices[&1].finish.clone()), ("B1B2B3", vec!["length".to_string()]));
        assert!(sum.choices.values().all(|c| c.role_first));
        assert!(sum.done);
        // One candidate left unfinished → truncated.
        let cut = sse(&[json!({"candidates":[{"content":{"parts":[{"text":"A"}]},"finishReason":"STOP","index":0},
                                              {"content":{"parts":[{"text":"B"}]},"index":1}]})]);
        let sum = summarize(&run_whole(&cut), "chatcmpl-gemini-1700000000", "gemini-test");
        assert_eq!(sum.error.unwrap()["code"], "stream_truncated");
    }

    #[test]
    fn error_inside_the_stream_ends_it() {
        let input = format!(
            "{}{}{}",
            sse(&[text_event("partial")]),
            sse(&[json!({"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}})]),
            sse(&[text_event("never"), finish_event("STOP")])
        );
        let out = assert_split_invariant(&input);
        let sum = summarize(&out, "chatcmpl-rid1", "gemini-x");
        assert_eq!(sum.c0().content, "partial");
        assert!(sum.c0().finish.is_empty());
        assert!(!sum.done);
        assert_eq!(
            sum.error,
            Some(json!({"message":"The model is overloaded.","type":"service_unavailable_error","param":null,"code":"unavailable"}))
        );
        for (err, kind) in [
            (json!({"code":429,"message":"m","status":"RESOURCE_EXHAUSTED"}), "rate_limit_error"),
            (json!({"code":500,"message":"m","status":"INTERNAL"}), "api_error"),
            (json!({"code":400,"message":"m"}), "invalid_request_error"),
            (json!({"message":"m"}), "api_error"),
        ] {
            let out = run_whole(&sse(&[json!({ "error": err })]));
            let p = payloads(&out);
            assert_eq!(p.len(), 1);
            assert_eq!(serde_json::from_str::<Value>(&p[0]).unwrap()["error"]["type"], kind, "{err}");
        }
    }

    #[test]
    fn malformed_function_call_and_unreadable_events_are_errors() {
        let input = sse(&[
            text_event("ok"),
            json!({"candidates":[{"content":{"parts":[{"thoughtSignature":"c2ln","text":""}]},"finishReason":"MALFORMED_FUNCTION_CALL",
                   "finishMessage":"Malformed function call: Function call is empty.","index":0}]}),
            finish_event("STOP"),
        ]);
        let out = assert_split_invariant(&input);
        let sum = summarize(&out, "chatcmpl-rid1", "gemini-x");
        assert_eq!(sum.c0().content, "ok");
        assert!(!sum.done);
        let err = sum.error.unwrap();
        assert_eq!(err["code"], "malformed_function_call");
        assert!(err["message"].as_str().unwrap().contains("Function call is empty"));

        let bad = format!("{}data: {{\"candidates\": [{{\"content\"\r\n\r\n{}", sse(&[text_event("ok")]), sse(&[finish_event("STOP")]));
        let out = assert_split_invariant(&bad);
        let sum = summarize(&out, "chatcmpl-rid1", "gemini-x");
        assert_eq!(sum.c0().content, "ok");
        assert_eq!(sum.error.unwrap()["code"], "invalid_upstream_event");
        let wrong_type = sse(&[json!({"candidates":[{"index":"zero"}]})]);
        let p = payloads(&run_whole(&wrong_type));
        assert_eq!(serde_json::from_str::<Value>(&p[0]).unwrap()["error"]["code"], "invalid_upstream_event");
    }

    #[test]
    fn blocked_prompt_and_safety_stop_in_streams() {
        let input = sse(&[json!({"promptFeedback":{"blockReason":"PROHIBITED_CONTENT"},
                                 "usageMetadata":{"promptTokenCount":9,"totalTokenCount":9},"modelVersion":"g","responseId":"b"})]);
        let sum = summarize(&assert_split_invariant(&input), "chatcmpl-b", "g");
        assert!(sum.c0().role_first);
        assert_eq!(sum.c0().finish, vec!["content_filter"]);
        assert_eq!(sum.usage.unwrap()["prompt_tokens"], 9);
        assert!(sum.done);

        let input = sse(&[text_event("Once upon"), finish_event("RECITATION")]);
        let sum = summarize(&assert_split_invariant(&input), "chatcmpl-rid1", "gemini-x");
        assert_eq!(sum.c0().content, "Once upon");
        assert_eq!(sum.c0().finish, vec!["content_filter"]);
        assert_eq!(
            sum.usage,
            Some(json!({"prompt_tokens":4,"completion_tokens":8,"total_tokens":12,
                        "prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":2}}))
        );
    }

    #[test]
    fn escapes_and_unicode_survive() {
        let input = sse(&[text_event("caf\u{e9} \"quoted\"\n\u{1F600}"), finish_event("STOP")]);
        let out = assert_split_invariant(&input);
        assert_eq!(summarize(&out, "chatcmpl-rid1", "gemini-x").c0().content, "caf\u{e9} \"quoted\"\n\u{1F600}");
    }

    #[test]
    fn garbage_and_cut_streams_never_panic_and_always_terminate() {
        let recorded = stream_body();
        let tools = sse(&[
            json!({"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":{"a":[1,{"b":null}]}},"thoughtSignature":"eA=="}]},"index":0}],"responseId":"z"}),
            finish_event("STOP"),
        ]);
        let inputs: Vec<Vec<u8>> = vec![
            recorded.into_bytes(),
            tools.into_bytes(),
            b"\xff\xfe\x00garbage\r\n\r\n".to_vec(),
            b"data: []\r\n\r\ndata: 1\r\n\r\n".to_vec(),
            b"data: {\"candidates\":[{\"index\":4294967296}]}\r\n\r\n".to_vec(),
            b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"args\":\"x\"}}]},\"finishReason\":\"STOP\"}]}\r\n\r\n".to_vec(),
            b"data: {\"usageMetadata\":{\"promptTokenCount\":-1}}\r\n\r\n".to_vec(),
        ];
        for input in &inputs {
            for cut in (0..=input.len()).step_by(5) {
                let (out, _) = run_chunks([input.get(..cut).unwrap()]);
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
        // Many candidate indexes do not grow state without bound.
        let many: Vec<Value> = (0..200).map(|i| json!({"candidates":[{"content":{"parts":[{"text":"x"}]},"index":i,"finishReason":"STOP"}]})).collect();
        let sum = summarize(&run_whole(&sse(&many)), "chatcmpl-gemini-1700000000", "gemini-test");
        assert_eq!(sum.choices.len(), MAX_STREAM_CHOICES);
        assert!(sum.done);
    }

    #[test]
    fn oversized_event_is_an_error() {
        let mut t = StreamTranslator::new("gemini-test", CREATED);
        let mut out = Vec::new();
        let big = vec![b'a'; crate::stream::sse::MAX_PENDING_BYTES + 10];
        t.push(b"data: ", &mut out);
        t.push(&big, &mut out);
        t.finish(&mut out);
        let p = payloads(&out);
        assert_eq!(p.len(), 1);
        assert_eq!(serde_json::from_str::<Value>(&p[0]).unwrap()["error"]["code"], "stream_overflow");
    }
}
