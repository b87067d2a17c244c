//! The OpenAI Responses API (`POST /v1/responses`) as a front door.
//!
//! The gateway is stateless: a Responses request is translated into the canonical Chat Completions
//! request that the rest of the pipeline (routing, keys, limits, budgets, every provider schema)
//! already handles, and the chat answer — whole or streamed — back into a `Response` object or the
//! typed Responses event sequence (`response.created`, `response.output_item.added`,
//! `response.output_text.delta`, `response.function_call_arguments.delta`, `response.completed`, …)
//! that the official SDKs parse and accumulate.
//!
//! What needs server-side state is refused with a 400 that says so: `previous_response_id`,
//! `conversation`, `background: true`. `store` is accepted (absent, `false` or `true`) and never
//! acted on: the gateway keeps nothing, and the `Response` objects it builds say `"store": false`.
//!
//! Some features exist only on OpenAI's own Responses API: built-in tools (`web_search`,
//! `file_search`, `code_interpreter`, `computer_use_preview`, `mcp`, …), items that reference
//! OpenAI's stored objects (`item_reference`, images or files by `file_id`), stored prompts
//! (`prompt`), custom tools and the calls of all these. A request that uses one is still valid: an
//! OpenAI backend receives the client's body untouched (model rewritten) and serves it; the
//! translation for any other backend leaves those pieces out and lists them in
//! [`ResponsesRequest::openai_only`], so that the backend filter answers a 400 naming them instead
//! of sending a request that silently lost part of its meaning.
//!
//! Pieces the translation drops on purpose (documented in the README): `reasoning` items in `input`
//! (a model's private, provider-signed state), `reasoning.summary`, `text.verbosity`, `include`,
//! `truncation`, `top_logprobs`, `service_tier`, `metadata` and `prompt_cache_key`.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::chat::{parse_json_body, Usage};
use super::error::ApiError;
use super::limits::RequestLimits;
use crate::providers::StreamTranslate;
use crate::stream::sse::{SseParser, SseStatus};

// ---------------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------------

/// A validated `POST /v1/responses` body and its canonical chat translation.
#[derive(Debug, Clone)]
pub struct ResponsesRequest {
    pub model: String,
    pub stream: bool,
    /// The canonical Chat Completions request (without the OpenAI-only pieces).
    pub chat: Value,
    /// What only OpenAI's own Responses API can serve, described for an error message
    /// (`tools[0] (web_search)`); empty for most requests.
    pub openai_only: Vec<String>,
    /// The request's settings as a `Response` object repeats them.
    pub echo: Echo,
}

impl ResponsesRequest {
    /// The canonical chat body, serialised.
    pub fn chat_body(&self) -> Vec<u8> {
        serde_json::to_vec(&self.chat).unwrap_or_default()
    }

    /// The 400 a backend other than OpenAI's own Responses API answers, when the request needs it.
    pub fn openai_only_error(&self) -> Option<ApiError> {
        openai_only_error(&self.openai_only)
    }
}

/// The 400 for OpenAI-only features on another backend (see [`ResponsesRequest::openai_only`]).
pub fn openai_only_error(features: &[String]) -> Option<ApiError> {
    let first = features.first()?;
    let list = features.join(", ");
    let param = first.split(' ').next().unwrap_or_default().to_string();
    Some(
        ApiError::invalid_request(format!(
            "This request uses {list}, which only OpenAI's own Responses API can serve, and the backend it was routed to is not OpenAI. \
             Route the model to an OpenAI backend (the request then passes through untouched) or leave these out."
        ))
        .with_param(param)
        .with_code("unsupported_on_backend"),
    )
}

/// The request fields a `Response` object repeats, kept from the request.
#[derive(Debug, Clone, Default)]
pub struct Echo {
    pub fields: Map<String, Value>,
}

/// Tool types of OpenAI's built-in tools, named in errors as they are.
fn is_function_tool(kind: &str) -> bool {
    kind == "function"
}

/// Parses and validates a Responses request and translates it into the canonical chat request.
/// Errors are OpenAI-shaped 400s naming the parameter (`input[2].call_id`).
pub fn parse_responses_request(body: &[u8], limits: &RequestLimits) -> Result<ResponsesRequest, ApiError> {
    limits.check_body(body)?;
    let obj: Map<String, Value> = parse_json_body(body)?;
    Translator { limits, openai_only: Vec::new(), images: 0 }.run(&obj)
}

struct Translator<'a> {
    limits: &'a RequestLimits,
    openai_only: Vec<String>,
    images: usize,
}

fn missing(param: &str) -> ApiError {
    ApiError::invalid_param(param, format!("Missing required parameter: '{param}'."))
}

fn invalid(param: &str, what: &str) -> ApiError {
    ApiError::invalid_param(param, format!("Invalid value for '{param}': {what}."))
}

fn stateless(param: &str, what: &str) -> ApiError {
    ApiError::invalid_param(
        param,
        format!(
            "This gateway is stateless and does not support `{param}`: {what} Send the whole conversation in `input` instead \
             (the output items of earlier responses can be passed back as input items)."
        ),
    )
    .with_code("unsupported_parameter")
}

fn opt_str<'v>(obj: &'v Map<String, Value>, key: &str, param: &str) -> Result<Option<&'v str>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(param, "expected a string")),
    }
}

fn req_str<'v>(obj: &'v Map<String, Value>, key: &str, param: &str) -> Result<&'v str, ApiError> {
    opt_str(obj, key, param)?.ok_or_else(|| missing(param))
}

fn opt_number(obj: &Map<String, Value>, key: &str) -> Result<Option<Value>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Number(_)) => Ok(Some(v.clone())),
        Some(_) => Err(invalid(key, "expected a number")),
    }
}

fn opt_bool(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(invalid(key, "expected a boolean")),
    }
}

impl Translator<'_> {
    fn run(mut self, obj: &Map<String, Value>) -> Result<ResponsesRequest, ApiError> {
        let model = req_str(obj, "model", "model")?;
        if model.is_empty() {
            return Err(ApiError::invalid_param("model", "`model` must be a non-empty string."));
        }
        self.limits.check_string("model", Some(model), self.limits.max_model_bytes)?;
        // Server-side state the gateway does not keep.
        if !matches!(obj.get("previous_response_id"), None | Some(Value::Null)) {
            return Err(stateless("previous_response_id", "it refers to a response stored by the server, and the gateway stores none."));
        }
        if !matches!(obj.get("conversation"), None | Some(Value::Null)) {
            return Err(stateless("conversation", "a conversation is state stored by the server, and the gateway stores none."));
        }
        if opt_bool(obj, "background")? == Some(true) {
            return Err(stateless("background", "a background response is polled for later, which needs it stored by the server."));
        }
        opt_bool(obj, "store")?;
        let stream = opt_bool(obj, "stream")?.unwrap_or(false);
        let user = opt_str(obj, "user", "user")?;
        self.limits.check_string("user", user, self.limits.max_user_bytes)?;
        let instructions = opt_str(obj, "instructions", "instructions")?;
        if !matches!(obj.get("prompt"), None | Some(Value::Null)) {
            self.openai_only.push("prompt (a stored prompt)".to_string());
        }

        let mut messages: Vec<Value> = Vec::new();
        if let Some(text) = instructions.filter(|s| !s.is_empty()) {
            messages.push(json!({"role": "system", "content": text}));
        }
        match obj.get("input") {
            None | Some(Value::Null) => {
                if messages.is_empty() && self.openai_only.is_empty() {
                    return Err(missing("input"));
                }
            }
            Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
            Some(Value::Array(items)) => {
                self.limits.check_len("input", items.len(), self.limits.max_messages)?;
                for (i, item) in items.iter().enumerate() {
                    self.input_item(i, item, &mut messages)?;
                }
            }
            Some(_) => return Err(invalid("input", "expected a string or an array of input items")),
        }
        if messages.is_empty() && self.openai_only.is_empty() {
            return Err(ApiError::invalid_param("input", "`input` must contain at least one message."));
        }

        let mut chat = Map::new();
        chat.insert("model".into(), Value::String(model.to_string()));
        chat.insert("messages".into(), Value::Array(messages));
        let tools = self.tools(obj)?;
        let tool_names: Vec<String> = tools
            .iter()
            .filter_map(|t| t.pointer("/function/name").and_then(Value::as_str).map(str::to_string))
            .collect();
        let (tools, tool_choice) = self.tool_choice(obj, tools, &tool_names)?;
        if !tools.is_empty() {
            chat.insert("tools".into(), Value::Array(tools));
            if let Some(p) = opt_bool(obj, "parallel_tool_calls")? {
                chat.insert("parallel_tool_calls".into(), Value::Bool(p));
            }
        } else {
            opt_bool(obj, "parallel_tool_calls")?;
        }
        if let Some(tc) = tool_choice {
            chat.insert("tool_choice".into(), tc);
        }
        if let Some(rf) = self.text_format(obj)? {
            chat.insert("response_format".into(), rf);
        }
        match obj.get("reasoning") {
            None | Some(Value::Null) => {}
            Some(Value::Object(r)) => {
                if let Some(effort) = opt_str(r, "effort", "reasoning.effort")? {
                    chat.insert("reasoning_effort".into(), Value::String(effort.to_string()));
                }
            }
            Some(_) => return Err(invalid("reasoning", "expected an object")),
        }
        match obj.get("max_output_tokens") {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 && n <= u32::MAX as u64 => {
                    chat.insert("max_completion_tokens".into(), json!(n));
                }
                _ => return Err(invalid("max_output_tokens", "expected a positive integer")),
            },
        }
        for key in ["temperature", "top_p"] {
            if let Some(v) = opt_number(obj, key)? {
                chat.insert(key.into(), v);
            }
        }
        if let Some(u) = user {
            chat.insert("user".into(), Value::String(u.to_string()));
        }
        if stream {
            chat.insert("stream".into(), Value::Bool(true));
            // The Responses events end with the usage (`response.completed`): always asked for.
            chat.insert("stream_options".into(), json!({"include_usage": true}));
        }
        let echo = echo_of(obj, instructions);
        Ok(ResponsesRequest { model: model.to_string(), stream, chat: Value::Object(chat), openai_only: self.openai_only, echo })
    }

    fn input_item(&mut self, i: usize, item: &Value, messages: &mut Vec<Value>) -> Result<(), ApiError> {
        let p = format!("input[{i}]");
        let Some(obj) = item.as_object() else {
            return Err(invalid(&p, "expected an input item object"));
        };
        let kind = opt_str(obj, "type", &format!("{p}.type"))?;
        match kind {
            None | Some("message") => self.message_item(&p, obj, messages),
            Some("function_call") => {
                let call_id = req_str(obj, "call_id", &format!("{p}.call_id"))?;
                let name = req_str(obj, "name", &format!("{p}.name"))?;
                let arguments = req_str(obj, "arguments", &format!("{p}.arguments"))?;
                let call = json!({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}});
                // Calls join the assistant message they follow (chat carries them on it).
                let last_is_assistant = messages.last().and_then(|m| m.get("role")).and_then(Value::as_str) == Some("assistant");
                if last_is_assistant {
                    if let Some(Value::Object(m)) = messages.last_mut() {
                        match m.get_mut("tool_calls") {
                            Some(Value::Array(calls)) => calls.push(call),
                            _ => {
                                m.insert("tool_calls".into(), Value::Array(vec![call]));
                            }
                        }
                    }
                } else {
                    messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
                }
                Ok(())
            }
            Some("function_call_output") => {
                let call_id = req_str(obj, "call_id", &format!("{p}.call_id"))?;
                let content = match obj.get("output") {
                    None | Some(Value::Null) => return Err(missing(&format!("{p}.output"))),
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => {
                        let mut text = String::new();
                        for (j, part) in parts.iter().enumerate() {
                            let pp = format!("{p}.output[{j}]");
                            let po = part.as_object().ok_or_else(|| invalid(&pp, "expected a content object"))?;
                            match req_str(po, "type", &format!("{pp}.type"))? {
                                "input_text" | "output_text" => {
                                    if !text.is_empty() {
                                        text.push('\n');
                                    }
                                    text.push_str(req_str(po, "text", &format!("{pp}.text"))?);
                                }
                                other => self.openai_only.push(format!("{pp} ({other} in a function call output)")),
                            }
                        }
                        text
                    }
                    Some(_) => return Err(invalid(&format!("{p}.output"), "expected a string or an array of content")),
                };
                messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": content}));
                Ok(())
            }
            // A model's own reasoning from an earlier turn: private to the provider that made it.
            Some("reasoning") => Ok(()),
            Some(other) => {
                self.openai_only.push(format!("{p} ({other})"));
                Ok(())
            }
        }
    }

    fn message_item(&mut self, p: &str, obj: &Map<String, Value>, messages: &mut Vec<Value>) -> Result<(), ApiError> {
        let role = req_str(obj, "role", &format!("{p}.role"))?;
        if !matches!(role, "user" | "assistant" | "system" | "developer") {
            return Err(invalid(&format!("{p}.role"), "expected one of user, assistant, system, developer"));
        }
        let cp = format!("{p}.content");
        let content = match obj.get("content") {
            None | Some(Value::Null) => return Err(missing(&cp)),
            Some(Value::String(s)) => Value::String(s.clone()),
            Some(Value::Array(parts)) if role == "assistant" => {
                // Earlier output: its text (a refusal is what the model said, too).
                let mut text = String::new();
                for (j, part) in parts.iter().enumerate() {
                    let pp = format!("{cp}[{j}]");
                    let po = part.as_object().ok_or_else(|| invalid(&pp, "expected a content object"))?;
                    let piece = match req_str(po, "type", &format!("{pp}.type"))? {
                        "output_text" | "input_text" | "text" => req_str(po, "text", &format!("{pp}.text"))?,
                        "refusal" => req_str(po, "refusal", &format!("{pp}.refusal"))?,
                        other => return Err(invalid(&format!("{pp}.type"), &format!("`{other}` is not an assistant content type"))),
                    };
                    text.push_str(piece);
                }
                Value::String(text)
            }
            Some(Value::Array(parts)) => {
                let mut out = Vec::with_capacity(parts.len());
                for (j, part) in parts.iter().enumerate() {
                    if let Some(part) = self.content_part(&format!("{cp}[{j}]"), part)? {
                        out.push(part);
                    }
                }
                Value::Array(out)
            }
            Some(_) => return Err(invalid(&cp, "expected a string or an array of content")),
        };
        messages.push(json!({"role": role, "content": content}));
        Ok(())
    }

    /// One part of a user, system or developer message, in chat's shape (`None`: OpenAI-only).
    fn content_part(&mut self, pp: &str, part: &Value) -> Result<Option<Value>, ApiError> {
        let po = part.as_object().ok_or_else(|| invalid(pp, "expected a content object"))?;
        match req_str(po, "type", &format!("{pp}.type"))? {
            "input_text" | "text" | "output_text" => Ok(Some(json!({"type": "text", "text": req_str(po, "text", &format!("{pp}.text"))?}))),
            "input_image" => {
                let detail = opt_str(po, "detail", &format!("{pp}.detail"))?;
                match opt_str(po, "image_url", &format!("{pp}.image_url"))? {
                    Some(url) => {
                        self.images += 1;
                        if self.images > self.limits.max_images {
                            return Err(self.limits.too_many_images(self.images));
                        }
                        self.limits.check_string(&format!("{pp}.image_url"), Some(url), self.limits.max_image_url_bytes)?;
                        let mut image = Map::new();
                        image.insert("url".into(), Value::String(url.to_string()));
                        if let Some(d) = detail {
                            image.insert("detail".into(), Value::String(d.to_string()));
                        }
                        Ok(Some(json!({"type": "image_url", "image_url": image})))
                    }
                    None if opt_str(po, "file_id", &format!("{pp}.file_id"))?.is_some() => {
                        self.openai_only.push(format!("{pp} (an image by file_id)"));
                        Ok(None)
                    }
                    None => Err(missing(&format!("{pp}.image_url"))),
                }
            }
            "input_file" => {
                let filename = opt_str(po, "filename", &format!("{pp}.filename"))?;
                match opt_str(po, "file_data", &format!("{pp}.file_data"))? {
                    Some(data) => {
                        let mut file = Map::new();
                        file.insert("file_data".into(), Value::String(data.to_string()));
                        if let Some(f) = filename {
                            file.insert("filename".into(), Value::String(f.to_string()));
                        }
                        Ok(Some(json!({"type": "file", "file": file})))
                    }
                    None => {
                        self.openai_only.push(format!("{pp} (a file by file_id or file_url)"));
                        Ok(None)
                    }
                }
            }
            "input_audio" => match po.get("input_audio") {
                Some(a @ Value::Object(_)) => Ok(Some(json!({"type": "input_audio", "input_audio": a}))),
                _ => Err(missing(&format!("{pp}.input_audio"))),
            },
            other => Err(invalid(&format!("{pp}.type"), &format!("`{other}` is not an input content type"))),
        }
    }

    /// Function tools in chat's shape; other tool types are OpenAI's built-in tools.
    fn tools(&mut self, obj: &Map<String, Value>) -> Result<Vec<Value>, ApiError> {
        let tools = match obj.get("tools") {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Array(t)) => t,
            Some(_) => return Err(invalid("tools", "expected an array of tools")),
        };
        self.limits.check_len("tools", tools.len(), self.limits.max_tools)?;
        let mut out = Vec::with_capacity(tools.len());
        for (i, tool) in tools.iter().enumerate() {
            let p = format!("tools[{i}]");
            let to = tool.as_object().ok_or_else(|| invalid(&p, "expected a tool object"))?;
            let kind = req_str(to, "type", &format!("{p}.type"))?;
            if !is_function_tool(kind) {
                self.openai_only.push(format!("{p} ({kind})"));
                continue;
            }
            let name = req_str(to, "name", &format!("{p}.name"))?;
            let mut function = Map::new();
            function.insert("name".into(), Value::String(name.to_string()));
            if let Some(d) = opt_str(to, "description", &format!("{p}.description"))? {
                function.insert("description".into(), Value::String(d.to_string()));
            }
            match to.get("parameters") {
                None | Some(Value::Null) => {}
                Some(v @ Value::Object(_)) => {
                    self.limits.check_tool_schema(i, Some(v))?;
                    function.insert("parameters".into(), v.clone());
                }
                Some(_) => return Err(invalid(&format!("{p}.parameters"), "expected a JSON schema object")),
            }
            if let Some(s) = opt_bool(to, "strict")? {
                function.insert("strict".into(), Value::Bool(s));
            }
            out.push(json!({"type": "function", "function": function}));
        }
        Ok(out)
    }

    /// Chat's `tool_choice` (and the tools it leaves offered: `allowed_tools` narrows them).
    fn tool_choice(&mut self, obj: &Map<String, Value>, tools: Vec<Value>, names: &[String]) -> Result<(Vec<Value>, Option<Value>), ApiError> {
        let choice = match obj.get("tool_choice") {
            None | Some(Value::Null) => return Ok((tools, None)),
            Some(c) => c,
        };
        match choice {
            Value::String(mode) if matches!(mode.as_str(), "none" | "auto" | "required") => Ok((tools, Some(Value::String(mode.clone())))),
            Value::String(_) => Err(invalid("tool_choice", "expected `none`, `auto`, `required` or a tool choice object")),
            Value::Object(c) => {
                let kind = req_str(c, "type", "tool_choice.type")?;
                match kind {
                    "function" => {
                        let name = req_str(c, "name", "tool_choice.name")?;
                        if !names.iter().any(|n| n == name) {
                            return Err(invalid("tool_choice.name", &format!("no function tool named `{name}` is in `tools`")));
                        }
                        Ok((tools, Some(json!({"type": "function", "function": {"name": name}}))))
                    }
                    "allowed_tools" => {
                        let mode = opt_str(c, "mode", "tool_choice.mode")?.unwrap_or("auto");
                        if !matches!(mode, "auto" | "required") {
                            return Err(invalid("tool_choice.mode", "expected `auto` or `required`"));
                        }
                        let allowed = match c.get("tools") {
                            Some(Value::Array(a)) => a,
                            _ => return Err(missing("tool_choice.tools")),
                        };
                        let mut keep: Vec<&str> = Vec::new();
                        for (j, a) in allowed.iter().enumerate() {
                            let ap = format!("tool_choice.tools[{j}]");
                            let ao = a.as_object().ok_or_else(|| invalid(&ap, "expected a tool object"))?;
                            let k = req_str(ao, "type", &format!("{ap}.type"))?;
                            if k == "function" {
                                keep.push(req_str(ao, "name", &format!("{ap}.name"))?);
                            } else {
                                self.openai_only.push(format!("{ap} ({k})"));
                            }
                        }
                        let tools: Vec<Value> = tools
                            .into_iter()
                            .filter(|t| t.pointer("/function/name").and_then(Value::as_str).is_some_and(|n| keep.contains(&n)))
                            .collect();
                        let choice = if tools.is_empty() { None } else { Some(Value::String(mode.to_string())) };
                        Ok((tools, choice))
                    }
                    other => {
                        self.openai_only.push(format!("tool_choice ({other})"));
                        Ok((tools, None))
                    }
                }
            }
            _ => Err(invalid("tool_choice", "expected a string or an object")),
        }
    }

    /// Chat's `response_format` from `text.format`.
    fn text_format(&mut self, obj: &Map<String, Value>) -> Result<Option<Value>, ApiError> {
        let text = match obj.get("text") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Object(t)) => t,
            Some(_) => return Err(invalid("text", "expected an object")),
        };
        let format = match text.get("format") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Object(f)) => f,
            Some(_) => return Err(invalid("text.format", "expected an object")),
        };
        match req_str(format, "type", "text.format.type")? {
            "text" => Ok(None),
            "json_object" => Ok(Some(json!({"type": "json_object"}))),
            "json_schema" => {
                let name = req_str(format, "name", "text.format.name")?;
                let mut js = Map::new();
                js.insert("name".into(), Value::String(name.to_string()));
                if let Some(d) = opt_str(format, "description", "text.format.description")? {
                    js.insert("description".into(), Value::String(d.to_string()));
                }
                match format.get("schema") {
                    Some(s @ Value::Object(_)) => {
                        js.insert("schema".into(), s.clone());
                    }
                    None | Some(Value::Null) => return Err(missing("text.format.schema")),
                    Some(_) => return Err(invalid("text.format.schema", "expected a JSON schema object")),
                }
                if let Some(s) = opt_bool(format, "strict")? {
                    js.insert("strict".into(), Value::Bool(s));
                }
                Ok(Some(json!({"type": "json_schema", "json_schema": js})))
            }
            other => {
                self.openai_only.push(format!("text.format ({other})"));
                Ok(None)
            }
        }
    }
}

/// What a `Response` object repeats of the request (OpenAI's defaults where it was silent).
fn echo_of(obj: &Map<String, Value>, instructions: Option<&str>) -> Echo {
    let get = |k: &str| obj.get(k).filter(|v| !v.is_null()).cloned();
    let mut f = Map::new();
    f.insert("instructions".into(), instructions.map_or(Value::Null, |s| Value::String(s.to_string())));
    f.insert("max_output_tokens".into(), get("max_output_tokens").unwrap_or(Value::Null));
    f.insert("max_tool_calls".into(), get("max_tool_calls").unwrap_or(Value::Null));
    f.insert("parallel_tool_calls".into(), get("parallel_tool_calls").unwrap_or(Value::Bool(true)));
    f.insert("previous_response_id".into(), Value::Null);
    f.insert("prompt_cache_key".into(), get("prompt_cache_key").unwrap_or(Value::Null));
    let reasoning = obj.get("reasoning").and_then(Value::as_object);
    let r = |k: &str| reasoning.and_then(|r| r.get(k)).cloned().unwrap_or(Value::Null);
    f.insert("reasoning".into(), json!({"effort": r("effort"), "summary": r("summary")}));
    f.insert("safety_identifier".into(), get("safety_identifier").unwrap_or(Value::Null));
    f.insert("service_tier".into(), Value::Null);
    f.insert("store".into(), Value::Bool(false));
    f.insert("temperature".into(), get("temperature").unwrap_or(Value::Null));
    let mut text = obj.get("text").and_then(Value::as_object).cloned().unwrap_or_default();
    if !text.get("format").is_some_and(Value::is_object) {
        text.insert("format".into(), json!({"type": "text"}));
    }
    f.insert("text".into(), Value::Object(text));
    f.insert("tool_choice".into(), get("tool_choice").unwrap_or_else(|| Value::String("auto".into())));
    f.insert("tools".into(), get("tools").filter(Value::is_array).unwrap_or_else(|| Value::Array(Vec::new())));
    // Not translated (chat logprobs are not carried over): what the response holds is none.
    f.insert("top_logprobs".into(), json!(0));
    f.insert("top_p".into(), get("top_p").unwrap_or(Value::Null));
    f.insert("truncation".into(), get("truncation").unwrap_or_else(|| Value::String("disabled".into())));
    f.insert("user".into(), get("user").unwrap_or(Value::Null));
    f.insert("metadata".into(), get("metadata").filter(Value::is_object).unwrap_or_else(|| Value::Object(Map::new())));
    Echo { fields: f }
}

// ---------------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------------

/// What building a `Response` needs besides the chat answer.
#[derive(Debug, Clone)]
pub struct ResponseContext {
    /// Unique part of the ids: `resp_<base>`, `msg_<base>`, `fc_<base>_<n>`, `rs_<base>`.
    pub base: String,
    /// `created_at` when the answer has no `created`.
    pub created_at: u64,
    /// The model when the answer names none.
    pub model: String,
    pub echo: Echo,
}

impl ResponseContext {
    pub fn new(request: &ResponsesRequest, base: &str, now: u64) -> Self {
        ResponseContext { base: base.to_string(), created_at: now, model: request.model.clone(), echo: request.echo.clone() }
    }

    fn response_id(&self) -> String {
        format!("resp_{}", self.base)
    }

    /// The `Response` object around `output` (echoed settings, usage).
    fn response(&self, status: &str, created_at: u64, model: &str, output: Vec<Value>, usage: Option<&Usage>, incomplete: Option<&str>, error: Option<Value>) -> Value {
        let mut r = Map::new();
        r.insert("id".into(), Value::String(self.response_id()));
        r.insert("object".into(), Value::String("response".into()));
        r.insert("created_at".into(), json!(created_at));
        r.insert("status".into(), Value::String(status.to_string()));
        r.insert("background".into(), Value::Bool(false));
        r.insert("error".into(), error.unwrap_or(Value::Null));
        r.insert("incomplete_details".into(), incomplete.map_or(Value::Null, |reason| json!({"reason": reason})));
        r.insert("model".into(), Value::String(model.to_string()));
        r.insert("output".into(), Value::Array(output));
        for (k, v) in &self.echo.fields {
            r.insert(k.clone(), v.clone());
        }
        r.insert("usage".into(), usage.map_or(Value::Null, responses_usage));
        Value::Object(r)
    }
}

/// Chat usage in the Responses shape.
pub fn responses_usage(u: &Usage) -> Value {
    let cached = u.prompt_tokens_details.as_ref().map_or(0, |d| d.cached_tokens);
    let written = u.prompt_tokens_details.as_ref().map_or(0, |d| d.cache_creation_tokens);
    let reasoning = u.completion_tokens_details.as_ref().map_or(0, |d| d.reasoning_tokens);
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": u.total_tokens,
    })
}

/// Responses usage (from OpenAI's own answers and events) in the chat shape the gateway accounts
/// with.
pub fn chat_usage(v: &Value) -> Option<Usage> {
    let o = v.as_object()?;
    let n = |p: &str| v.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    if !o.contains_key("input_tokens") && !o.contains_key("output_tokens") {
        return None;
    }
    let (input, output) = (n("/input_tokens"), n("/output_tokens"));
    let (cached, written, reasoning) = (n("/input_tokens_details/cached_tokens"), n("/input_tokens_details/cache_write_tokens"), n("/output_tokens_details/reasoning_tokens"));
    Some(Usage {
        prompt_tokens: input,
        completion_tokens: output,
        total_tokens: o.get("total_tokens").and_then(Value::as_u64).unwrap_or(input.saturating_add(output)),
        prompt_tokens_details: (cached > 0 || written > 0)
            .then_some(super::chat::PromptTokensDetails { cached_tokens: cached, cache_creation_tokens: written }),
        completion_tokens_details: (reasoning > 0).then_some(super::chat::CompletionTokensDetails { reasoning_tokens: reasoning }),
    })
}

/// Model and usage of a whole `Response` body (OpenAI's own, passed through).
pub fn summarize_response(body: &[u8]) -> (Option<String>, Option<Usage>) {
    let Ok(v) = serde_json::from_slice::<Value>(body) else { return (None, None) };
    let model = v.get("model").and_then(Value::as_str).map(str::to_string);
    (model, v.get("usage").and_then(chat_usage))
}

/// Status of a response (and its incomplete reason) from chat's `finish_reason`.
fn status_of(finish: Option<&str>) -> (&'static str, Option<&'static str>) {
    match finish {
        Some("length") => ("incomplete", Some("max_output_tokens")),
        Some("content_filter") => ("incomplete", Some("content_filter")),
        _ => ("completed", None),
    }
}

#[derive(Deserialize, Default)]
struct ChatAnswer {
    #[serde(default)]
    created: Option<u64>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<AnswerChoice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize, Default)]
struct AnswerChoice {
    #[serde(default)]
    message: AnswerMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct AnswerMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Vec<AnswerToolCall>,
}

#[derive(Deserialize)]
struct AnswerToolCall {
    #[serde(default)]
    id: String,
    function: AnswerFunction,
}

#[derive(Deserialize)]
struct AnswerFunction {
    #[serde(default)]
    name: String,
    #[serde(default)]
    arguments: String,
}

fn reasoning_item(id: &str, text: &str, status: &str) -> Value {
    json!({"id": id, "type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": text}], "status": status})
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

fn refusal_part(text: &str) -> Value {
    json!({"type": "refusal", "refusal": text})
}

fn message_item(id: &str, status: &str, content: Vec<Value>) -> Value {
    json!({"id": id, "type": "message", "status": status, "role": "assistant", "content": content})
}

fn function_call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"id": id, "type": "function_call", "status": status, "arguments": arguments, "call_id": call_id, "name": name})
}

/// A whole chat completion (OpenAI's shape, as every backend's answer is translated to) as a
/// `Response` object.
pub fn response_from_chat(body: &[u8], ctx: &ResponseContext) -> Result<Vec<u8>, ApiError> {
    let answer: ChatAnswer = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(502, "api_error", format!("The provider's answer could not be used: it is not a chat completion ({e}).")).with_code("invalid_upstream_response")
    })?;
    let choice = answer.choices.into_iter().next().unwrap_or_default();
    let (status, incomplete) = status_of(choice.finish_reason.as_deref());
    let item_status = if status == "completed" { "completed" } else { "incomplete" };
    let m = choice.message;
    let mut output = Vec::new();
    if let Some(r) = m.reasoning_content.as_deref().filter(|s| !s.is_empty()) {
        output.push(reasoning_item(&format!("rs_{}", ctx.base), r, "completed"));
    }
    let mut parts = Vec::new();
    if let Some(t) = m.content.as_deref().filter(|s| !s.is_empty()) {
        parts.push(text_part(t));
    }
    if let Some(t) = m.refusal.as_deref().filter(|s| !s.is_empty()) {
        parts.push(refusal_part(t));
    }
    if !parts.is_empty() || m.tool_calls.is_empty() {
        if parts.is_empty() {
            parts.push(text_part(""));
        }
        output.push(message_item(&format!("msg_{}", ctx.base), item_status, parts));
    }
    for (i, call) in m.tool_calls.iter().enumerate() {
        output.push(function_call_item(&format!("fc_{}_{i}", ctx.base), &call.id, &call.function.name, &call.function.arguments, "completed"));
    }
    let model = answer.model.unwrap_or_else(|| ctx.model.clone());
    let v = ctx.response(status, answer.created.unwrap_or(ctx.created_at), &model, output, answer.usage.as_ref(), incomplete, None);
    serde_json::to_vec(&v).map_err(|e| ApiError::gateway(500, format!("could not encode the response: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

/// Most text one streamed response accumulates (its `done` events and final object repeat it);
/// past it the stream ends with an error.
pub const MAX_STREAM_TEXT_BYTES: usize = 32 * 1024 * 1024;

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    created: Option<u64>,
    #[serde(default)]
    choices: Option<Vec<ChunkChoice>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Option<ChunkDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct ChunkDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ChunkToolCall>>,
}

#[derive(Deserialize)]
struct ChunkToolCall {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<ChunkFunction>,
}

#[derive(Deserialize)]
struct ChunkFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartKind {
    Text,
    Refusal,
    Reasoning,
}

#[derive(Debug)]
enum ItemKind {
    Reasoning,
    Message,
    Call { call_id: String, name: String, chat_index: u32 },
}

#[derive(Debug)]
struct Item {
    kind: ItemKind,
    id: String,
    parts: Vec<(PartKind, String)>,
    arguments: String,
    open: bool,
}

/// Translates an OpenAI chat SSE stream (what every backend's stream is translated to) into the
/// Responses event sequence, event by event.
pub struct ResponsesStream {
    ctx: ResponseContext,
    parser: SseParser,
    seq: u64,
    started: bool,
    model: Option<String>,
    created: Option<u64>,
    items: Vec<Item>,
    /// Output index of the reasoning or message item deltas currently go to.
    current: Option<usize>,
    finish: Option<String>,
    usage: Option<Usage>,
    text_bytes: usize,
    /// The stream reached `[DONE]`, or failed: nothing more is written.
    ended: bool,
    failed: bool,
    fc_count: usize,
}

impl ResponsesStream {
    pub fn new(ctx: ResponseContext) -> Self {
        ResponsesStream {
            ctx,
            parser: SseParser::new(),
            seq: 0,
            started: false,
            model: None,
            created: None,
            items: Vec::new(),
            current: None,
            finish: None,
            usage: None,
            text_bytes: 0,
            ended: false,
            failed: false,
            fc_count: 0,
        }
    }

    /// The stream reached its end (`response.completed` or `response.incomplete`).
    pub fn completed(&self) -> bool {
        self.ended && !self.failed
    }

    /// The stream ended with `response.failed`.
    pub fn failed(&self) -> bool {
        self.failed
    }

    fn emit(&mut self, out: &mut Vec<u8>, kind: &str, mut event: Map<String, Value>) {
        event.insert("type".into(), Value::String(kind.to_string()));
        event.insert("sequence_number".into(), json!(self.seq));
        self.seq += 1;
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        if serde_json::to_writer(&mut *out, &Value::Object(event)).is_err() {
            out.extend_from_slice(b"{}");
        }
        out.extend_from_slice(b"\n\n");
    }

    fn model(&self) -> String {
        self.model.clone().unwrap_or_else(|| self.ctx.model.clone())
    }

    fn snapshot(&self, status: &str, incomplete: Option<&str>, error: Option<Value>) -> Value {
        let output: Vec<Value> = (0..self.items.len()).map(|i| self.item_json(i)).collect();
        let created = self.created.unwrap_or(self.ctx.created_at);
        let usage = if status == "in_progress" { None } else { self.usage.as_ref() };
        self.ctx.response(status, created, &self.model(), output, usage, incomplete, error)
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let mut r = self.snapshot("in_progress", None, None);
        if let Some(o) = r.as_object_mut() {
            o.insert("output".into(), Value::Array(Vec::new()));
        }
        let mut e = Map::new();
        e.insert("response".into(), r.clone());
        self.emit(out, "response.created", e);
        let mut e = Map::new();
        e.insert("response".into(), r);
        self.emit(out, "response.in_progress", e);
    }

    fn item_json(&self, i: usize) -> Value {
        let Some(item) = self.items.get(i) else { return Value::Null };
        let status = if item.open { if self.failed { "incomplete" } else { "in_progress" } } else { "completed" };
        let status = if !item.open && self.finish.as_deref().is_some_and(|f| status_of(Some(f)).0 == "incomplete") && matches!(item.kind, ItemKind::Message) {
            "incomplete"
        } else {
            status
        };
        match &item.kind {
            ItemKind::Reasoning => {
                let text = item.parts.first().map_or("", |(_, t)| t.as_str());
                reasoning_item(&item.id, text, status)
            }
            ItemKind::Message => message_item(&item.id, status, item.parts.iter().map(|(k, t)| part_json(*k, t)).collect()),
            ItemKind::Call { call_id, name, .. } => function_call_item(&item.id, call_id, name, &item.arguments, status),
        }
    }

    /// Opens a new output item (after closing the current reasoning or message item).
    fn open_item(&mut self, out: &mut Vec<u8>, kind: ItemKind) -> usize {
        let index = self.items.len();
        let id = match &kind {
            ItemKind::Reasoning => format!("rs_{}_{index}", self.ctx.base),
            ItemKind::Message => format!("msg_{}_{index}", self.ctx.base),
            ItemKind::Call { .. } => format!("fc_{}_{index}", self.ctx.base),
        };
        let textual = !matches!(kind, ItemKind::Call { .. });
        self.items.push(Item { kind, id, parts: Vec::new(), arguments: String::new(), open: true });
        let mut added = self.item_json(index);
        if let Some(o) = added.as_object_mut() {
            // As OpenAI announces them: empty, filled by the deltas that follow.
            match o.get("type").and_then(Value::as_str) {
                Some("reasoning") | Some("message") => {
                    o.insert("content".into(), Value::Array(Vec::new()));
                }
                _ => {}
            }
        }
        let mut e = Map::new();
        e.insert("output_index".into(), json!(index));
        e.insert("item".into(), added);
        self.emit(out, "response.output_item.added", e);
        if textual {
            self.current = Some(index);
        }
        index
    }

    /// Closes item `i`: its parts' `done` events, then `output_item.done`.
    fn close_item(&mut self, out: &mut Vec<u8>, i: usize) {
        let Some(item) = self.items.get(i) else { return };
        if !item.open {
            return;
        }
        let id = item.id.clone();
        let parts = item.parts.clone();
        match &item.kind {
            ItemKind::Call { name, .. } => {
                let mut e = Map::new();
                e.insert("item_id".into(), Value::String(id.clone()));
                e.insert("output_index".into(), json!(i));
                e.insert("name".into(), Value::String(name.clone()));
                e.insert("arguments".into(), Value::String(item.arguments.clone()));
                self.emit(out, "response.function_call_arguments.done", e);
            }
            _ => {
                for (ci, (kind, text)) in parts.iter().enumerate() {
                    let mut e = Map::new();
                    e.insert("item_id".into(), Value::String(id.clone()));
                    e.insert("output_index".into(), json!(i));
                    e.insert("content_index".into(), json!(ci));
                    let name = match kind {
                        PartKind::Text => {
                            e.insert("text".into(), Value::String(text.clone()));
                            e.insert("logprobs".into(), Value::Array(Vec::new()));
                            "response.output_text.done"
                        }
                        PartKind::Refusal => {
                            e.insert("refusal".into(), Value::String(text.clone()));
                            "response.refusal.done"
                        }
                        PartKind::Reasoning => {
                            e.insert("text".into(), Value::String(text.clone()));
                            "response.reasoning_text.done"
                        }
                    };
                    self.emit(out, name, e);
                    let mut e = Map::new();
                    e.insert("item_id".into(), Value::String(id.clone()));
                    e.insert("output_index".into(), json!(i));
                    e.insert("content_index".into(), json!(ci));
                    e.insert("part".into(), part_json(*kind, text));
                    self.emit(out, "response.content_part.done", e);
                }
            }
        }
        if let Some(item) = self.items.get_mut(i) {
            item.open = false;
        }
        if self.current == Some(i) {
            self.current = None;
        }
        let mut e = Map::new();
        e.insert("output_index".into(), json!(i));
        e.insert("item".into(), self.item_json(i));
        self.emit(out, "response.output_item.done", e);
    }

    fn close_open_calls(&mut self, out: &mut Vec<u8>) {
        for i in 0..self.items.len() {
            if matches!(self.items[i].kind, ItemKind::Call { .. }) {
                self.close_item(out, i);
            }
        }
    }

    /// Text for the current reasoning or message item, opening what is needed.
    fn text_delta(&mut self, out: &mut Vec<u8>, kind: PartKind, delta: &str) {
        if delta.is_empty() {
            return;
        }
        let want_reasoning = kind == PartKind::Reasoning;
        let index = match self.current {
            Some(i) if matches!(self.items[i].kind, ItemKind::Reasoning) == want_reasoning => i,
            other => {
                if let Some(i) = other {
                    self.close_item(out, i);
                }
                self.close_open_calls(out);
                self.open_item(out, if want_reasoning { ItemKind::Reasoning } else { ItemKind::Message })
            }
        };
        let id = self.items[index].id.clone();
        let needs_part = self.items[index].parts.last().map(|(k, _)| *k) != Some(kind);
        if needs_part {
            // A message holds a text part and then, if the model refuses, a refusal part.
            self.items[index].parts.push((kind, String::new()));
            let ci = self.items[index].parts.len() - 1;
            let mut e = Map::new();
            e.insert("item_id".into(), Value::String(id.clone()));
            e.insert("output_index".into(), json!(index));
            e.insert("content_index".into(), json!(ci));
            e.insert("part".into(), part_json(kind, ""));
            self.emit(out, "response.content_part.added", e);
        }
        let ci = self.items[index].parts.len() - 1;
        if let Some((_, text)) = self.items[index].parts.last_mut() {
            text.push_str(delta);
        }
        let mut e = Map::new();
        e.insert("item_id".into(), Value::String(id));
        e.insert("output_index".into(), json!(index));
        e.insert("content_index".into(), json!(ci));
        e.insert("delta".into(), Value::String(delta.to_string()));
        let name = match kind {
            PartKind::Text => {
                e.insert("logprobs".into(), Value::Array(Vec::new()));
                "response.output_text.delta"
            }
            PartKind::Refusal => "response.refusal.delta",
            PartKind::Reasoning => "response.reasoning_text.delta",
        };
        self.emit(out, name, e);
    }

    fn tool_delta(&mut self, out: &mut Vec<u8>, call: ChunkToolCall) {
        let chat_index = call.index.unwrap_or(0);
        let (name, arguments) = match call.function {
            Some(f) => (f.name, f.arguments),
            None => (None, None),
        };
        let existing = self.items.iter().position(|it| matches!(&it.kind, ItemKind::Call { chat_index: c, .. } if *c == chat_index) && it.open);
        let index = match existing {
            Some(i) => i,
            None => {
                if self.fc_count >= crate::providers::util::MAX_STREAM_TOOL_CALLS {
                    let e = crate::providers::util::too_many("tool calls", crate::providers::util::MAX_STREAM_TOOL_CALLS);
                    self.fail(out, &e.to_json());
                    return;
                }
                self.fc_count += 1;
                if let Some(i) = self.current {
                    self.close_item(out, i);
                }
                let call_id = call.id.clone().unwrap_or_else(|| format!("call_{}_{}", self.ctx.base, self.items.len()));
                self.open_item(out, ItemKind::Call { call_id, name: name.clone().unwrap_or_default(), chat_index })
            }
        };
        if let Some(args) = arguments.filter(|a| !a.is_empty()) {
            self.items[index].arguments.push_str(&args);
            let mut e = Map::new();
            e.insert("item_id".into(), Value::String(self.items[index].id.clone()));
            e.insert("output_index".into(), json!(index));
            e.insert("delta".into(), Value::String(args));
            self.emit(out, "response.function_call_arguments.delta", e);
        }
    }

    /// Ends the stream with an `error` event and `response.failed`, from an OpenAI error body.
    fn fail(&mut self, out: &mut Vec<u8>, error_json: &[u8]) {
        if self.ended {
            return;
        }
        let v: Value = serde_json::from_slice(error_json).unwrap_or(Value::Null);
        let err = v.get("error").unwrap_or(&v);
        let message = err.get("message").and_then(Value::as_str).unwrap_or("The upstream stream failed.").to_string();
        let code = err.get("code").and_then(Value::as_str).or_else(|| err.get("type").and_then(Value::as_str)).map(str::to_string);
        let param = err.get("param").cloned().filter(|p| p.is_string()).unwrap_or(Value::Null);
        self.start(out);
        self.failed = true;
        self.ended = true;
        let mut e = Map::new();
        e.insert("code".into(), code.clone().map_or(Value::Null, Value::String));
        e.insert("message".into(), Value::String(message.clone()));
        e.insert("param".into(), param);
        self.emit(out, "error", e);
        // `response.error.code` is one of OpenAI's response error codes.
        let kind = err.get("type").and_then(Value::as_str).unwrap_or_default();
        let rcode = if kind == "rate_limit_error" || code.as_deref() == Some("rate_limit_exceeded") { "rate_limit_exceeded" } else { "server_error" };
        let r = self.snapshot("failed", None, Some(json!({"code": rcode, "message": message})));
        let mut e = Map::new();
        e.insert("response".into(), r);
        self.emit(out, "response.failed", e);
    }

    fn complete(&mut self, out: &mut Vec<u8>) {
        self.start(out);
        if let Some(i) = self.current {
            self.close_item(out, i);
        }
        self.close_open_calls(out);
        self.ended = true;
        let (status, incomplete) = status_of(self.finish.as_deref());
        let r = self.snapshot(status, incomplete, None);
        let mut e = Map::new();
        e.insert("response".into(), r);
        self.emit(out, if status == "completed" { "response.completed" } else { "response.incomplete" }, e);
    }

    fn on_event(&mut self, data: &str, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        let data = data.trim();
        if data == "[DONE]" {
            self.complete(out);
            return;
        }
        if data.is_empty() {
            return;
        }
        let chunk: Chunk = match serde_json::from_str(data) {
            Ok(c) => c,
            Err(e) => {
                let err = crate::providers::util::unreadable_event("upstream", &e);
                self.fail(out, &err.to_json());
                return;
            }
        };
        if let Some(err) = chunk.error {
            let body = serde_json::to_vec(&json!({ "error": err })).unwrap_or_default();
            self.fail(out, &body);
            return;
        }
        if self.model.is_none() {
            self.model = chunk.model.filter(|m| !m.is_empty());
        }
        if self.created.is_none() {
            self.created = chunk.created;
        }
        self.start(out);
        if let Some(u) = chunk.usage {
            self.usage = Some(u);
        }
        for choice in chunk.choices.unwrap_or_default() {
            if choice.index != 0 {
                continue;
            }
            let delta = choice.delta.unwrap_or_default();
            for (kind, text) in [(PartKind::Reasoning, delta.reasoning_content), (PartKind::Text, delta.content), (PartKind::Refusal, delta.refusal)] {
                if let Some(t) = text {
                    self.text_bytes = self.text_bytes.saturating_add(t.len());
                    self.text_delta(out, kind, &t);
                }
            }
            for call in delta.tool_calls.unwrap_or_default() {
                if let Some(a) = call.function.as_ref().and_then(|f| f.arguments.as_ref()) {
                    self.text_bytes = self.text_bytes.saturating_add(a.len());
                }
                self.tool_delta(out, call);
                if self.ended {
                    return;
                }
            }
            if let Some(f) = choice.finish_reason {
                self.finish = Some(f);
            }
        }
        if self.text_bytes > MAX_STREAM_TEXT_BYTES {
            let e = ApiError::new(502, "api_error", format!("The streamed answer exceeded the gateway's limit of {MAX_STREAM_TEXT_BYTES} bytes."))
                .with_code("stream_overflow");
            self.fail(out, &e.to_json());
        }
    }
}

fn part_json(kind: PartKind, text: &str) -> Value {
    match kind {
        PartKind::Text => text_part(text),
        PartKind::Refusal => refusal_part(text),
        PartKind::Reasoning => json!({"type": "reasoning_text", "text": text}),
    }
}

impl StreamTranslate for ResponsesStream {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        let mut parser = std::mem::take(&mut self.parser);
        let status = parser.push(chunk, |_, data| self.on_event(data, out));
        self.parser = parser;
        if status == SseStatus::Overflow {
            self.fail(out, &crate::providers::util::overflow().to_json());
        }
    }

    /// The upstream ended: a stream that reached neither `[DONE]` nor an error fails, never ends
    /// silently.
    fn finish(&mut self, out: &mut Vec<u8>) {
        let mut parser = std::mem::take(&mut self.parser);
        parser.finish(|_, data| self.on_event(data, out));
        self.parser = parser;
        if !self.ended {
            let e = ApiError::new(502, "api_error", "The upstream stream ended before completion.").with_code("stream_truncated");
            self.fail(out, &e.to_json());
        }
    }

    fn usage(&self) -> Option<&Usage> {
        self.usage.as_ref()
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway's view of OpenAI's own answers (native passthrough): canonical chat, for accounting
// ---------------------------------------------------------------------------------------------

/// Chat's `finish_reason` for a Responses status.
fn finish_of(status: Option<&str>, incomplete_reason: Option<&str>, calls: bool) -> &'static str {
    match (status, incomplete_reason) {
        (Some("incomplete"), Some("content_filter")) => "content_filter",
        (Some("incomplete"), _) => "length",
        _ if calls => "tool_calls",
        _ => "stop",
    }
}

/// The text of a reasoning item: its raw reasoning, else its summaries.
fn reasoning_text(item: &Value) -> String {
    let mut out = String::new();
    for key in ["content", "summary"] {
        for part in item.get(key).and_then(Value::as_array).into_iter().flatten() {
            if let Some(t) = part.get("text").and_then(Value::as_str) {
                out.push_str(t);
            }
        }
        if !out.is_empty() {
            break;
        }
    }
    out
}

/// A whole `Response` of OpenAI's own Responses API as a canonical chat completion: what the
/// gateway reads usage, model and errors from (the client gets the Response itself).
pub fn chat_from_response(body: &[u8], created: u64) -> Result<Vec<u8>, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(502, "api_error", format!("The provider's answer could not be used: it is not a response object ({e}).")).with_code("invalid_upstream_response")
    })?;
    if !v.is_object() {
        return Err(ApiError::new(502, "api_error", "The provider's answer could not be used: it is not a response object.").with_code("invalid_upstream_response"));
    }
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut refusal = String::new();
    let mut calls = Vec::new();
    for item in v.get("output").and_then(Value::as_array).into_iter().flatten() {
        match item.get("type").and_then(Value::as_str) {
            Some("message") => {
                for part in item.get("content").and_then(Value::as_array).into_iter().flatten() {
                    match part.get("type").and_then(Value::as_str) {
                        Some("output_text") => text.push_str(part.get("text").and_then(Value::as_str).unwrap_or_default()),
                        Some("refusal") => refusal.push_str(part.get("refusal").and_then(Value::as_str).unwrap_or_default()),
                        _ => {}
                    }
                }
            }
            Some("reasoning") => reasoning.push_str(&reasoning_text(item)),
            Some("function_call") => {
                let s = |k: &str| item.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
                calls.push(json!({"id": s("call_id"), "type": "function", "function": {"name": s("name"), "arguments": s("arguments")}}));
            }
            _ => {}
        }
    }
    let status = v.get("status").and_then(Value::as_str);
    let reason = v.pointer("/incomplete_details/reason").and_then(Value::as_str);
    let mut message = Map::new();
    message.insert("role".into(), Value::String("assistant".into()));
    message.insert("content".into(), if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) });
    if !reasoning.is_empty() {
        message.insert("reasoning_content".into(), Value::String(reasoning));
    }
    let finish = finish_of(status, reason, !calls.is_empty());
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    message.insert("refusal".into(), if refusal.is_empty() { Value::Null } else { Value::String(refusal) });
    let mut out = json!({
        "id": v.get("id").cloned().unwrap_or(Value::Null),
        "object": "chat.completion",
        "created": v.get("created_at").and_then(Value::as_u64).unwrap_or(created),
        "model": v.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": null}],
    });
    if let Some(u) = v.get("usage").and_then(chat_usage) {
        out["usage"] = serde_json::to_value(u).unwrap_or(Value::Null);
    }
    serde_json::to_vec(&out).map_err(|e| ApiError::gateway(500, format!("could not encode the answer: {e}")))
}

/// OpenAI's own Responses event stream as canonical chat chunks (the gateway's usage tap reads
/// them; the client gets the events themselves).
pub struct ChatFromResponses {
    parser: SseParser,
    created: u64,
    id: String,
    model: String,
    started: bool,
    /// Output index of each function call → its chat tool-call index.
    calls: Vec<u64>,
    ended: bool,
}

impl ChatFromResponses {
    pub fn new(created: u64) -> Self {
        ChatFromResponses { parser: SseParser::new(), created, id: String::new(), model: String::new(), started: false, calls: Vec::new(), ended: false }
    }

    fn chunk(&self, out: &mut Vec<u8>, delta: Value, finish: Option<&str>) {
        let c = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}]});
        crate::stream::sse::write_json_event(out, &c);
    }

    fn error(&mut self, out: &mut Vec<u8>, message: &str, code: Option<&str>) {
        let mut e = ApiError::new(502, "api_error", message.to_string());
        if let Some(c) = code {
            e = e.with_code(c);
        }
        crate::stream::sse::write_raw_event(out, &e.to_json());
        self.ended = true;
    }

    fn on_event(&mut self, data: &str, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        let Ok(e) = serde_json::from_str::<Value>(data) else {
            self.error(out, "The OpenAI backend sent an unreadable stream event.", Some("invalid_upstream_event"));
            return;
        };
        let kind = e.get("type").and_then(Value::as_str).unwrap_or_default();
        if let Some(r) = e.get("response") {
            if let Some(id) = r.get("id").and_then(Value::as_str) {
                self.id = id.to_string();
            }
            if let Some(m) = r.get("model").and_then(Value::as_str) {
                self.model = m.to_string();
            }
            if let Some(c) = r.get("created_at").and_then(Value::as_u64) {
                self.created = c;
            }
        }
        if !self.started && !kind.is_empty() && kind != "error" {
            self.started = true;
            self.chunk(out, json!({"role": "assistant", "content": ""}), None);
        }
        let delta = || e.get("delta").and_then(Value::as_str).unwrap_or_default().to_string();
        match kind {
            "response.output_text.delta" => self.chunk(out, json!({"content": delta()}), None),
            "response.reasoning_text.delta" | "response.reasoning_summary_text.delta" => self.chunk(out, json!({"reasoning_content": delta()}), None),
            "response.refusal.delta" => self.chunk(out, json!({"refusal": delta()}), None),
            "response.output_item.added" if e.pointer("/item/type").and_then(Value::as_str) == Some("function_call") => {
                if self.calls.len() >= crate::providers::util::MAX_STREAM_TOOL_CALLS {
                    return;
                }
                let index = self.calls.len();
                self.calls.push(e.get("output_index").and_then(Value::as_u64).unwrap_or(u64::MAX));
                let s = |k: &str| e.pointer(&format!("/item/{k}")).and_then(Value::as_str).unwrap_or_default().to_string();
                self.chunk(out, json!({"tool_calls": [{"index": index, "id": s("call_id"), "type": "function", "function": {"name": s("name"), "arguments": s("arguments")}}]}), None);
            }
            "response.function_call_arguments.delta" => {
                let at = e.get("output_index").and_then(Value::as_u64);
                if let Some(index) = self.calls.iter().position(|o| Some(*o) == at) {
                    self.chunk(out, json!({"tool_calls": [{"index": index, "function": {"arguments": delta()}}]}), None);
                }
            }
            "response.completed" | "response.incomplete" => {
                let r = e.get("response").cloned().unwrap_or(Value::Null);
                let reason = r.pointer("/incomplete_details/reason").and_then(Value::as_str);
                let finish = finish_of(r.get("status").and_then(Value::as_str).or(Some(if kind == "response.completed" { "completed" } else { "incomplete" })), reason, !self.calls.is_empty());
                self.chunk(out, json!({}), Some(finish));
                if let Some(u) = r.get("usage").and_then(chat_usage) {
                    let c = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model, "choices": [], "usage": u});
                    crate::stream::sse::write_json_event(out, &c);
                }
                out.extend_from_slice(crate::stream::sse::DONE);
                self.ended = true;
            }
            "response.failed" => {
                let message = e.pointer("/response/error/message").and_then(Value::as_str).unwrap_or("The response failed.").to_string();
                let code = e.pointer("/response/error/code").and_then(Value::as_str).map(str::to_string);
                self.error(out, &message, code.as_deref());
            }
            "error" => {
                let message = e.get("message").and_then(Value::as_str).unwrap_or("The stream failed.").to_string();
                let code = e.get("code").and_then(Value::as_str).map(str::to_string);
                self.error(out, &message, code.as_deref());
            }
            _ => {}
        }
    }
}

impl StreamTranslate for ChatFromResponses {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut parser = std::mem::take(&mut self.parser);
        let status = parser.push(chunk, |_, data| self.on_event(data, out));
        self.parser = parser;
        if status == SseStatus::Overflow && !self.ended {
            self.error(out, "An upstream stream event exceeded the gateway's size limit.", Some("stream_overflow"));
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        let mut parser = std::mem::take(&mut self.parser);
        parser.finish(|_, data| self.on_event(data, out));
        self.parser = parser;
        if !self.ended {
            self.error(out, "The upstream stream ended before completion.", Some("stream_truncated"));
        }
    }

    fn usage(&self) -> Option<&Usage> {
        None
    }
}

// ---------------------------------------------------------------------------------------------
// One request's answer, as the gateway writes it
// ---------------------------------------------------------------------------------------------

/// The settings a `Response` repeats, from the client's original body (already validated).
pub fn echo_from_body(body: &[u8]) -> Echo {
    match serde_json::from_slice::<Map<String, Value>>(body) {
        Ok(obj) => {
            let instructions = obj.get("instructions").and_then(Value::as_str).map(str::to_string);
            echo_of(&obj, instructions.as_deref())
        }
        Err(_) => Echo::default(),
    }
}

/// Writes one request's answer in the Responses shape: a whole `Response`, or the event stream.
pub struct AnswerWriter {
    ctx: ResponseContext,
    stream: Option<ResponsesStream>,
}

impl AnswerWriter {
    /// `original` is the client's Responses body, `id_base` a fresh unique string for the ids
    /// (`resp_<id_base>`; the filter makes it from random bytes), `now` the time in Unix seconds.
    pub fn new(stream: bool, original: &[u8], id_base: &str, now: u64) -> Self {
        let model = serde_json::from_slice::<Value>(original)
            .ok()
            .and_then(|v| v.get("model").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_default();
        let ctx = ResponseContext { base: id_base.to_string(), created_at: now, model, echo: echo_from_body(original) };
        let stream = stream.then(|| ResponsesStream::new(ctx.clone()));
        AnswerWriter { ctx, stream }
    }

    /// A whole canonical chat completion → the `Response` body.
    pub fn answer(&mut self, canonical: &[u8]) -> Result<Vec<u8>, ApiError> {
        response_from_chat(canonical, &self.ctx)
    }

    pub fn push(&mut self, canonical: &[u8], out: &mut Vec<u8>) {
        if let Some(s) = self.stream.as_mut() {
            s.push(canonical, out);
        }
    }

    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if let Some(s) = self.stream.as_mut() {
            s.finish(out);
        }
    }
}

impl super::ingress::AnswerTranslate for AnswerWriter {
    fn answer(&mut self, canonical: &[u8]) -> Result<Vec<u8>, ApiError> {
        AnswerWriter::answer(self, canonical)
    }
    fn push(&mut self, canonical: &[u8], out: &mut Vec<u8>) {
        AnswerWriter::push(self, canonical, out)
    }
    fn finish(&mut self, out: &mut Vec<u8>) {
        AnswerWriter::finish(self, out)
    }
}

/// The `error` event of a stream the gateway has to end itself (a native stream cut short; the
/// gateway does not count that stream's events, so the event carries no sequence number).
pub fn error_event(e: &ApiError) -> Vec<u8> {
    let data = json!({"type": "error", "code": e.code.as_deref().unwrap_or(e.kind), "message": e.message, "param": e.param});
    let mut out = b"event: error\ndata: ".to_vec();
    out.extend_from_slice(data.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
    out
}

/// The 400 for the Responses API's stored-response endpoints (`GET`/`DELETE /v1/responses/{id}`,
/// `…/cancel`, `…/input_items`): the gateway stores no response.
pub fn stored_response_error(method: &str, path: &str) -> ApiError {
    ApiError::invalid_request(format!(
        "This gateway is stateless: it stores no responses, so {method} {path} cannot be served. \
         Responses are returned whole (or streamed) by POST /v1/responses and are not kept."
    ))
    .with_code("unsupported_operation")
}

/// A Responses request in canonical form: the chat body, and — when the request uses what only
/// OpenAI serves — the 400 other backends answer.
pub fn to_canonical(body: &[u8], limits: &RequestLimits) -> Result<(Vec<u8>, Option<ApiError>), ApiError> {
    let mut req = parse_responses_request(body, limits)?;
    let untranslatable = req.openai_only_error();
    // A request made only of OpenAI-only pieces (a stored prompt, item references) has no chat
    // message: a placeholder keeps the canonical form valid for routing and estimates; no backend
    // but OpenAI (which gets the original body) ever receives it.
    if untranslatable.is_some() {
        if let Some(Value::Array(m)) = req.chat.get_mut("messages") {
            if m.is_empty() {
                m.push(json!({"role": "user", "content": ""}));
            }
        }
    }
    Ok((req.chat_body(), untranslatable))
}

/// The Responses parameter a canonical (chat) parameter came from, for errors found on the
/// canonical form.
pub fn client_param(canonical: &str) -> String {
    if canonical.starts_with("messages") {
        return "input".to_string();
    }
    if let Some(rest) = canonical.strip_prefix("tools[") {
        if let Some((i, _)) = rest.split_once(']') {
            return format!("tools[{i}]");
        }
    }
    match canonical {
        "max_completion_tokens" | "max_tokens" => "max_output_tokens".to_string(),
        "response_format" => "text.format".to_string(),
        "reasoning_effort" => "reasoning.effort".to_string(),
        other if other.starts_with("response_format.") => "text.format".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
#[path = "responses_tests.rs"]
mod tests;
