//! OpenAI-compatible answers made OpenAI-exact, in one place for every preset (Mistral, DeepSeek,
//! Qwen, Groq, xAI, Together, Fireworks, OpenRouter, vLLM, Ollama's `/v1`), whole and streamed.
//!
//! Compatible providers answer in OpenAI's envelope but not always in OpenAI's shape; strict clients
//! (typed SDKs, agents frameworks) then see `type: null` on a tool call or fail on an unknown finish
//! reason. Everything such a provider sends is normalised here:
//!
//! * Tool calls: every message tool call is `{id, type: "function", function: {name, arguments}}` —
//!   `type` added where the provider leaves it out (Mistral), `index` and other extra fields
//!   removed, `arguments` sent as an object made JSON text, a missing id synthesised. In streams,
//!   each call gets a stable `index` (by its id, so a provider that numbers every call 0 still
//!   yields separate calls) and its first delta carries the id (synthesised if absent, the same for
//!   all its deltas), `type: "function"` and the name; later deltas carry only the index and
//!   argument text, as OpenAI's do (the SDKs concatenate repeated strings).
//! * Reasoning: `reasoning` (OpenRouter, Groq, Together, vLLM, Ollama) and Magistral's `thinking`
//!   content chunks become `reasoning_content` (DeepSeek's and xAI's name); content chunk arrays
//!   become a string.
//! * Messages and deltas keep only OpenAI's fields (plus `reasoning_content`); a whole message
//!   always has `role` and `content` (`null` next to tool calls); `tool_calls: null` or `[]` is
//!   left out as OpenAI does.
//! * Finish reasons are OpenAI's: `model_length`/`max_tokens` → `length`, `tool_use` →
//!   `tool_calls`, `eos`/`end_turn`/`stop_sequence` → `stop`, any other unknown value (Mistral's
//!   `error` among them) → `stop`.
//! * Usage keeps OpenAI's fields; DeepSeek's `prompt_cache_hit_tokens` becomes
//!   `prompt_tokens_details.cached_tokens` (so cached input is priced as such) and a missing
//!   `total_tokens` is the sum. Top-level and choice objects keep only OpenAI's fields, `object`
//!   is `chat.completion` / `chat.completion.chunk`, and a missing `index` is the choice's position.
//!
//! Answers and chunks that are already exact pass byte for byte. Streams are translated chunk by
//! chunk by [`StreamTranslator`], which also moves usage that arrives on the finishing chunk
//! (Mistral unasked, DeepSeek with it) into the usage-only chunk written just before
//! `data: [DONE]` (the gateway drops it for clients that did not ask for usage). An error object
//! in the stream, an unreadable event, or a stream that ends before any `finish_reason` and
//! `[DONE]` ends the output with one OpenAI error event.

use serde_json::{Map, Value};

use super::util::{overflow, too_many, truncated, MAX_STREAM_TOOL_CALLS, unreadable_event, write_error_event, Phase};
use super::StreamTranslate;
use crate::api::chat::Usage;
use crate::api::error::{kind_for_status, ApiError};
use crate::stream::sse::{write_json_event, write_raw_event, SseParser, SseStatus, DONE};

const ANSWER_FIELDS: &[&str] = &["id", "object", "created", "model", "choices", "usage", "system_fingerprint", "service_tier"];
const CHOICE_FIELDS: &[&str] = &["index", "message", "delta", "finish_reason", "logprobs"];
const MESSAGE_FIELDS: &[&str] =
    &["role", "content", "refusal", "tool_calls", "function_call", "reasoning_content", "annotations", "audio"];
const USAGE_FIELDS: &[&str] = &["prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details", "completion_tokens_details"];

// =============================================================================================
// Whole answers
// =============================================================================================

/// A whole chat answer in OpenAI's exact shape; one that needs nothing (or is not a JSON object)
/// is returned byte for byte. `created` fills a missing `created`.
pub fn normalise_answer(body: &[u8], created: u64) -> Vec<u8> {
    let Ok(mut v) = serde_json::from_slice::<Map<String, Value>>(body) else { return body.to_vec() };
    if !normalise_answer_object(&mut v, created) {
        return body.to_vec();
    }
    serde_json::to_vec(&v).unwrap_or_else(|_| body.to_vec())
}

/// [`normalise_answer`] on a parsed answer; true if it changed.
pub fn normalise_answer_object(v: &mut Map<String, Value>, created: u64) -> bool {
    let mut changed = retain_fields(v, ANSWER_FIELDS);
    changed |= set_str(v, "object", "chat.completion");
    if !v.get("created").is_some_and(Value::is_u64) {
        v.insert("created".into(), Value::from(created));
        changed = true;
    }
    let id_seed = id_seed(v);
    if let Some(Value::Array(choices)) = v.get_mut("choices") {
        for (pos, c) in choices.iter_mut().enumerate() {
            let Some(c) = c.as_object_mut() else { continue };
            changed |= normalise_choice(c, pos);
            match c.get_mut("message") {
                Some(Value::Object(m)) => {
                    changed |= normalise_message(m, true);
                    changed |= normalise_message_tool_calls(m, id_seed, pos);
                }
                _ => {
                    let mut m = Map::new();
                    normalise_message(&mut m, true);
                    c.insert("message".into(), Value::Object(m));
                    changed = true;
                }
            }
        }
    }
    if let Some(u) = v.get_mut("usage") {
        changed |= normalise_usage(u);
    }
    changed
}

/// Message tool calls of a whole answer: `{id, type: "function", function: {name, arguments}}`.
fn normalise_message_tool_calls(m: &mut Map<String, Value>, id_seed: u64, choice: usize) -> bool {
    let Some(Value::Array(calls)) = m.get_mut("tool_calls") else { return false };
    let mut changed = false;
    for (i, call) in calls.iter_mut().enumerate() {
        let Some(call) = call.as_object_mut() else { continue };
        changed |= retain_fields(call, &["id", "type", "function"]);
        if !call.get("id").and_then(Value::as_str).is_some_and(is_real_id) {
            call.insert("id".into(), Value::String(synthetic_id(id_seed, choice * 1000 + i)));
            changed = true;
        }
        changed |= set_str(call, "type", "function");
        match call.get_mut("function") {
            Some(Value::Object(f)) => {
                changed |= retain_fields(f, &["name", "arguments"]);
                if !matches!(f.get("name"), Some(Value::String(_))) {
                    f.insert("name".into(), Value::String(String::new()));
                    changed = true;
                }
                if !matches!(f.get("arguments"), Some(Value::String(_))) {
                    f.insert("arguments".into(), Value::String(String::from("{}")));
                    changed = true;
                }
            }
            _ => {
                call.insert("function".into(), serde_json::json!({"name": "", "arguments": "{}"}));
                changed = true;
            }
        }
    }
    changed
}

// =============================================================================================
// Streamed chunks
// =============================================================================================

/// The tool calls a stream has started: the OpenAI index of each is its position here.
#[derive(Debug, Default)]
pub struct ToolCalls {
    /// Per call: the id given to the client and the provider's own index, if it sent one.
    calls: Vec<(String, Option<u64>)>,
}

impl ToolCalls {
    /// The OpenAI index of a tool-call delta, and whether it starts a new call. A delta with an id
    /// belongs to the call with that id; one without belongs to the latest call with the same
    /// provider index, or — with no index either — to the latest call unless it names a function
    /// (then it starts one).
    fn place(&mut self, id: Option<&str>, provider_index: Option<u64>, named: bool, seed: u64) -> (usize, bool) {
        if let Some(id) = id {
            if let Some(i) = self.calls.iter().position(|(known, _)| known == id) {
                return (i, false);
            }
            self.calls.push((id.to_string(), provider_index));
            return (self.calls.len() - 1, true);
        }
        // No id: a continuation of the latest call with that provider index (or the latest call).
        let found = match provider_index {
            Some(p) => self.calls.iter().rposition(|(_, known)| *known == Some(p)),
            None if named => None,
            None => self.calls.len().checked_sub(1),
        };
        match found {
            Some(i) => (i, false),
            None => {
                self.calls.push((synthetic_id(seed, self.calls.len()), provider_index));
                (self.calls.len() - 1, true)
            }
        }
    }
}

/// One `chat.completion.chunk` in OpenAI's exact shape; true if it changed.
pub fn normalise_chunk(v: &mut Map<String, Value>, calls: &mut ToolCalls) -> bool {
    let mut changed = retain_fields(v, ANSWER_FIELDS);
    changed |= set_str(v, "object", "chat.completion.chunk");
    let seed = id_seed(v);
    if let Some(Value::Array(choices)) = v.get_mut("choices") {
        for (pos, c) in choices.iter_mut().enumerate() {
            let Some(c) = c.as_object_mut() else { continue };
            changed |= normalise_choice(c, pos);
            if let Some(Value::Object(d)) = c.get_mut("delta") {
                changed |= normalise_message(d, false);
                changed |= normalise_delta_tool_calls(d, calls, seed);
            }
        }
    }
    if let Some(u) = v.get_mut("usage").filter(|u| !u.is_null()) {
        changed |= normalise_usage(u);
    }
    changed
}

fn normalise_delta_tool_calls(d: &mut Map<String, Value>, track: &mut ToolCalls, seed: u64) -> bool {
    let Some(Value::Array(calls)) = d.get_mut("tool_calls") else { return false };
    let mut changed = false;
    for call in calls.iter_mut() {
        let Some(call) = call.as_object_mut() else { continue };
        let id = call.get("id").and_then(Value::as_str).filter(|id| is_real_id(id)).map(str::to_string);
        let provider_index = call.get("index").and_then(Value::as_u64);
        let (name, arguments) = match call.get("function") {
            Some(Value::Object(f)) => (f.get("name").cloned(), f.get("arguments").cloned()),
            _ => (None, None),
        };
        let named = matches!(&name, Some(Value::String(n)) if !n.is_empty());
        let (index, first) = track.place(id.as_deref(), provider_index, named, seed);
        let arguments = match arguments {
            Some(Value::String(s)) => Some(Value::String(s)),
            Some(a @ (Value::Object(_) | Value::Array(_))) => Some(Value::String(a.to_string())),
            _ => None,
        };
        let mut f = Map::new();
        let mut out = Map::new();
        out.insert("index".into(), Value::from(index as u64));
        if first {
            let id = track.calls.get(index).map(|(id, _)| id.clone()).unwrap_or_default();
            out.insert("id".into(), Value::String(id));
            out.insert("type".into(), Value::String("function".into()));
            f.insert("name".into(), match name {
                Some(n @ Value::String(_)) => n,
                _ => Value::String(String::new()),
            });
            f.insert("arguments".into(), arguments.unwrap_or_else(|| Value::String(String::new())));
        } else if let Some(a) = arguments {
            f.insert("arguments".into(), a);
        }
        out.insert("function".into(), Value::Object(f));
        if *call != out {
            *call = out;
            changed = true;
        }
    }
    changed
}

// =============================================================================================
// Shared pieces
// =============================================================================================

/// A choice's own fields: OpenAI's only, an `index`, an OpenAI finish reason.
fn normalise_choice(c: &mut Map<String, Value>, pos: usize) -> bool {
    let mut changed = retain_fields(c, CHOICE_FIELDS);
    if !c.get("index").is_some_and(Value::is_u64) {
        c.insert("index".into(), Value::from(pos as u64));
        changed = true;
    }
    if let Some(Value::String(reason)) = c.get("finish_reason") {
        let mapped = finish_reason(reason);
        if mapped != reason {
            c.insert("finish_reason".into(), Value::String(mapped.to_string()));
            changed = true;
        }
    }
    changed
}

/// OpenAI's finish reason for a compatible provider's.
pub fn finish_reason(reason: &str) -> &str {
    match reason {
        "stop" | "length" | "tool_calls" | "content_filter" | "function_call" => reason,
        "model_length" | "max_tokens" => "length",
        "tool_use" => "tool_calls",
        _ => "stop",
    }
}

/// Normalises one `message` (whole answers) or `delta` (streams) in place; true if it changed.
///
/// * `content` as an array of chunks: `text` chunks become the string content, `thinking` chunks
///   (whose `thinking` is a string or an array of text chunks) are appended to
///   `reasoning_content`. In a whole message, content without text becomes `""` (or `null` next
///   to tool calls); in a delta it is left out.
/// * `reasoning` (a string) becomes `reasoning_content` when that is absent.
/// * Fields outside OpenAI's message (and `reasoning_content`) are removed; `tool_calls: null` or
///   `[]` is left out; a whole message always has `role` and `content`.
/// * Tool-call `arguments` sent as an object become JSON text (the rest of each tool call is
///   shaped by the whole-answer or delta tool-call normalisers).
pub fn normalise_message(m: &mut Map<String, Value>, whole: bool) -> bool {
    let mut changed = false;
    if let Some(Value::Array(chunks)) = m.get("content") {
        let mut text = String::new();
        let mut thinking = String::new();
        let mut any_text = false;
        for chunk in chunks {
            match chunk.get("type").and_then(Value::as_str) {
                Some("text") | None => {
                    if let Some(t) = chunk.get("text").and_then(Value::as_str) {
                        text.push_str(t);
                        any_text = true;
                    }
                }
                Some("thinking") => match chunk.get("thinking") {
                    Some(Value::String(t)) => thinking.push_str(t),
                    Some(Value::Array(parts)) => {
                        for p in parts {
                            if let Some(t) = p.get("text").and_then(Value::as_str) {
                                thinking.push_str(t);
                            }
                        }
                    }
                    _ => {}
                },
                // references, images and other chunk kinds have no OpenAI counterpart
                Some(_) => {}
            }
        }
        let has_tool_calls = m.get("tool_calls").and_then(Value::as_array).is_some_and(|a| !a.is_empty());
        if any_text || (whole && !has_tool_calls) {
            m.insert("content".into(), Value::String(text));
        } else if whole {
            m.insert("content".into(), Value::Null);
        } else {
            m.remove("content");
        }
        if !thinking.is_empty() {
            match m.get_mut("reasoning_content") {
                Some(Value::String(existing)) => existing.push_str(&thinking),
                _ => {
                    m.insert("reasoning_content".into(), Value::String(thinking));
                }
            }
        }
        changed = true;
    }
    let has_reasoning_content = matches!(m.get("reasoning_content"), Some(Value::String(_)));
    if !has_reasoning_content && matches!(m.get("reasoning"), Some(Value::String(_))) {
        if let Some(r) = m.remove("reasoning") {
            m.insert("reasoning_content".into(), r);
            changed = true;
        }
    }
    changed |= retain_fields(m, MESSAGE_FIELDS);
    if m.get("tool_calls").is_some_and(|t| t.is_null() || t.as_array().is_some_and(Vec::is_empty)) {
        m.remove("tool_calls");
        changed = true;
    }
    if let Some(Value::Array(calls)) = m.get_mut("tool_calls") {
        for call in calls.iter_mut() {
            if let Some(f) = call.get_mut("function").and_then(Value::as_object_mut) {
                if let Some(args @ (Value::Object(_) | Value::Array(_))) = f.get("arguments") {
                    let text = args.to_string();
                    f.insert("arguments".into(), Value::String(text));
                    changed = true;
                }
            }
        }
    }
    if whole {
        if !matches!(m.get("role"), Some(Value::String(r)) if r == "assistant") {
            m.insert("role".into(), Value::String("assistant".into()));
            changed = true;
        }
        if !m.contains_key("content") {
            m.insert("content".into(), Value::Null);
            changed = true;
        }
    }
    changed
}

/// Usage in OpenAI's fields; true if it changed.
fn normalise_usage(u: &mut Value) -> bool {
    let Value::Object(u) = u else { return false };
    let mut changed = false;
    if let Some(hit) = u.get("prompt_cache_hit_tokens").and_then(Value::as_u64) {
        let details = u.entry("prompt_tokens_details").or_insert_with(|| Value::Object(Map::new()));
        if details.is_null() {
            *details = Value::Object(Map::new());
        }
        if let Value::Object(d) = details {
            if !d.contains_key("cached_tokens") {
                d.insert("cached_tokens".into(), Value::from(hit));
            }
        }
        changed = true;
    }
    changed |= retain_fields(u, USAGE_FIELDS);
    if !u.contains_key("total_tokens") {
        let sum = ["prompt_tokens", "completion_tokens"].iter().filter_map(|k| u.get(*k).and_then(Value::as_u64)).fold(0u64, u64::saturating_add);
        u.insert("total_tokens".into(), Value::from(sum));
        changed = true;
    }
    changed
}

/// Removes every key not in `keep`; true if any was removed.
fn retain_fields(m: &mut Map<String, Value>, keep: &[&str]) -> bool {
    let before = m.len();
    m.retain(|k, _| keep.contains(&k.as_str()));
    m.len() != before
}

/// Sets `key` to the string `value`; true if it was something else.
fn set_str(m: &mut Map<String, Value>, key: &str, value: &str) -> bool {
    if matches!(m.get(key), Some(Value::String(s)) if s == value) {
        return false;
    }
    m.insert(key.into(), Value::String(value.into()));
    true
}

/// An id a provider really gave (Mistral's schema defaults a missing one to the string `"null"`).
fn is_real_id(id: &str) -> bool {
    !id.is_empty() && id != "null"
}

/// A seed for synthesised tool-call ids: the answer's id (and `created`), so ids are the same for
/// every chunk of one stream and differ between answers.
fn id_seed(v: &Map<String, Value>) -> u64 {
    // FNV-1a: small, stable, no dependency.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let id = v.get("id").and_then(Value::as_str).unwrap_or_default();
    let created = v.get("created").and_then(Value::as_u64).unwrap_or_default();
    for b in id.bytes().chain(created.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `call_` + 24 hex digits, unique per answer and call (the length of OpenAI's own ids).
fn synthetic_id(seed: u64, n: usize) -> String {
    let mixed = seed ^ (n as u64).wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!("call_{seed:016x}{:08x}", (mixed >> 32) as u32 ^ (n as u32))
}

// =============================================================================================
// The stream translator
// =============================================================================================

pub struct StreamTranslator {
    parser: SseParser,
    state: State,
}

struct State {
    /// Provider name in error messages.
    provider: &'static str,
    phase: Phase,
    /// The usage-only chunk to write before `[DONE]`.
    held_usage: Option<Value>,
    usage: Option<Usage>,
    saw_finish: bool,
    tool_calls: ToolCalls,
}

impl StreamTranslator {
    /// The translator for a compatible provider's stream; `provider` names it in error messages.
    pub fn for_provider(provider: &'static str) -> Self {
        StreamTranslator {
            parser: SseParser::new(),
            state: State { provider, phase: Phase::Open, held_usage: None, usage: None, saw_finish: false, tool_calls: ToolCalls::default() },
        }
    }

    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if self.state.phase != Phase::Open {
            return;
        }
        let StreamTranslator { parser, state } = self;
        if parser.push(chunk, |_, data| state.on_event(data, out)) == SseStatus::Overflow {
            state.fail(out, overflow());
        }
    }

    /// Upstream ended: a stream that finished its choice but lost `[DONE]` is completed; one cut
    /// before that gets an error event.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.state.phase != Phase::Open {
            return;
        }
        let StreamTranslator { parser, state } = self;
        parser.finish(|_, data| state.on_event(data, out));
        if state.phase == Phase::Open {
            if state.saw_finish {
                state.done(out);
            } else {
                state.fail(out, truncated());
            }
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
    fn on_event(&mut self, data: &str, out: &mut Vec<u8>) {
        if self.phase != Phase::Open {
            return;
        }
        if data.trim() == "[DONE]" {
            self.done(out);
            return;
        }
        let mut v: Map<String, Value> = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => {
                self.fail(out, unreadable_event(self.provider, &e));
                return;
            }
        };
        if let Some(err) = stream_error(&v, self.provider) {
            self.fail(out, err);
            return;
        }
        if v.get("choices").is_some_and(|c| !c.is_array()) {
            let message = format!("The {} backend sent a stream chunk whose `choices` is not a list.", self.provider);
            self.fail(out, ApiError::new(502, "api_error", message).with_code("invalid_upstream_event"));
            return;
        }
        let mut changed = normalise_chunk(&mut v, &mut self.tool_calls);
        if self.tool_calls.calls.len() > MAX_STREAM_TOOL_CALLS {
            self.fail(out, too_many("tool calls", MAX_STREAM_TOOL_CALLS));
            return;
        }
        let mut has_choices = false;
        if let Some(Value::Array(choices)) = v.get("choices") {
            has_choices = !choices.is_empty();
            if choices.iter().any(|c| c.get("finish_reason").is_some_and(|f| !f.is_null())) {
                self.saw_finish = true;
            }
        }
        let usage = v.get("usage").filter(|u| !u.is_null()).cloned();
        if let Some(u) = usage {
            if let Ok(parsed) = serde_json::from_value::<Usage>(u.clone()) {
                self.usage = Some(parsed);
            }
            if has_choices {
                // Move it into the usage-only chunk written before [DONE].
                v.remove("usage");
                changed = true;
                let mut last = Map::new();
                for k in ["id", "object", "created", "model", "system_fingerprint"] {
                    if let Some(x) = v.get(k) {
                        last.insert(k.to_string(), x.clone());
                    }
                }
                last.insert("choices".into(), Value::Array(Vec::new()));
                last.insert("usage".into(), u);
                self.held_usage = Some(Value::Object(last));
            }
        }
        if changed {
            write_json_event(out, &v);
        } else {
            write_raw_event(out, data.as_bytes());
        }
    }

    fn done(&mut self, out: &mut Vec<u8>) {
        if let Some(last) = self.held_usage.take() {
            write_json_event(out, &last);
        }
        out.extend_from_slice(DONE);
        self.phase = Phase::Done;
    }

    fn fail(&mut self, out: &mut Vec<u8>, err: ApiError) {
        write_error_event(out, &err);
        self.phase = Phase::Failed;
    }
}

/// An error reported inside the stream: OpenAI's `{"error":{…}}` or Mistral's
/// `{"object":"error","message":…,"type":…,"code":…}`.
fn stream_error(v: &Map<String, Value>, provider: &str) -> Option<ApiError> {
    let (message, kind, code) = if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
        match e {
            Value::Object(o) => (o.get("message").cloned(), o.get("type").cloned(), o.get("code").cloned()),
            other => (Some(other.clone()), None, None),
        }
    } else if v.get("object").and_then(Value::as_str) == Some("error") {
        (v.get("message").cloned(), v.get("type").cloned(), v.get("code").cloned())
    } else {
        return None;
    };
    let message = match message {
        Some(Value::String(m)) if !m.is_empty() => m,
        Some(other @ (Value::Object(_) | Value::Array(_))) => other.to_string(),
        _ => format!("The {provider} backend reported an error during the stream."),
    };
    let status = match kind.as_ref().and_then(Value::as_str) {
        Some("invalid_request_error") => 400,
        Some("rate_limit_error") | Some("rate_limited") => 429,
        _ => 500,
    };
    let e = ApiError::new(status, kind_for_status(status), message);
    Some(match code {
        Some(Value::String(c)) if !c.is_empty() => e.with_code(c),
        Some(Value::Number(n)) => e.with_code(n.to_string()),
        _ => e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testutil::assert_tool_calls_capped;

    #[test]
    fn a_chunk_whose_choices_is_not_a_list_ends_the_stream_with_an_error() {
        // Found by the `stream` fuzz target: `"choices": 2169305` reached the client as it was.
        let mut t = StreamTranslator::for_provider("DeepSeek");
        let mut out = Vec::new();
        t.push(b"data: {\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n", &mut out);
        t.push(b"data: {\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":2169305}\n\n", &mut out);
        let n = out.len();
        t.push(b"data: [DONE]\n\n", &mut out);
        t.finish(&mut out);
        assert_eq!(out.len(), n, "nothing after the error");
        let p = payloads(&out);
        assert_eq!(p.len(), 2, "{p:?}");
        let e: Value = serde_json::from_str(&p[1]).unwrap();
        assert_eq!(e["error"]["code"], "invalid_upstream_event");
        assert!(!p[1].contains("2169305"));
    }

    #[test]
    fn tool_calls_per_stream_are_capped() {
        let call = |i: usize| {
            let c = json!({"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,
                "delta":{"tool_calls":[{"id":format!("c{i}"),"index":i,"type":"function","function":{"name":"f","arguments":"{}"}}]}}]});
            format!("data: {c}\n\n").into_bytes()
        };
        assert_tool_calls_capped(&|| Box::new(StreamTranslator::for_provider("Mistral")), b"", &call);
    }

    use crate::providers::testutil::{assert_split_invariant, assert_terminates, interaction, payloads, run_chunks, summarize};
    use serde_json::json;

    const THINKING: &str = include_str!("../../tests/fixtures/mistral/test_mistral_model_thinking_part_iter.yaml");

    fn make() -> Box<dyn StreamTranslate> {
        Box::new(StreamTranslator::for_provider("Mistral"))
    }

    fn recorded() -> String {
        interaction(THINKING, 0)["response"]["body"]["string"].as_str().unwrap().to_string()
    }

    /// The thinking and text fragments of the recording, concatenated, read straight from its JSON.
    fn recorded_texts() -> (String, String) {
        let mut thinking = String::new();
        let mut text = String::new();
        for line in recorded().lines().filter_map(|l| l.strip_prefix("data: ")).filter(|l| *l != "[DONE]") {
            let v: Value = serde_json::from_str(line).unwrap();
            match &v["choices"][0]["delta"]["content"] {
                Value::String(s) => text.push_str(s),
                Value::Array(chunks) => {
                    for c in chunks {
                        for t in c["thinking"].as_array().unwrap() {
                            thinking.push_str(t["text"].as_str().unwrap());
                        }
                    }
                }
                _ => {}
            }
        }
        (thinking, text)
    }

    #[test]
    fn recorded_magistral_stream() {
        let input = recorded();
        let out = assert_split_invariant(&make, input.as_bytes());
        let sum = summarize(&out, Some("9f9d90210f194076abeee223863eaaf0"), "magistral-medium-latest", Some(1764296393));
        let (thinking, text) = recorded_texts();
        assert!(thinking.starts_with("Okay, the user is asking how to cross the street."), "{thinking}");
        assert!(text.starts_with("To cross the street safely"));
        assert_eq!(sum.reasoning, thinking);
        assert_eq!(sum.content, text);
        assert!(sum.content.ends_with("you can ensure a safe crossing."));
        assert!(sum.role_first);
        assert_eq!(sum.finish, vec!["stop"]);
        assert_eq!(sum.usage, Some(json!({"prompt_tokens":10,"total_tokens":242,"completion_tokens":232})));
        assert!(sum.done);
        // Every output event is an OpenAI chunk with string content only.
        assert!(!String::from_utf8_lossy(&out).contains("\"content\":["));
        let (_, usage) = run_chunks(&make, [input.as_bytes()]);
        assert_eq!(usage.unwrap().completion_tokens, 232);
    }

    #[test]
    fn plain_chunks_pass_byte_for_byte() {
        let plain = "data: {\"id\":\"a\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n";
        let out = run_chunks(&make, [plain.as_bytes(), b"data: [DONE]\n\n".as_slice()]).0;
        assert_eq!(String::from_utf8(out).unwrap(), format!("{plain}data: [DONE]\n\n"));
    }

    #[test]
    fn usage_only_chunks_and_tool_arguments() {
        let input = [
            json!({"id":"t","object":"chat.completion.chunk","created":2,"model":"mistral-large","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}),
            json!({"id":"t","object":"chat.completion.chunk","created":2,"model":"mistral-large","choices":[{"index":0,"delta":{"tool_calls":[{"id":"c1","type":"function","index":0,"function":{"name":"f","arguments":{"x":1}}}]},"finish_reason":null}]}),
            json!({"id":"t","object":"chat.completion.chunk","created":2,"model":"mistral-large","choices":[{"index":0,"delta":{"content":""},"finish_reason":"tool_calls"}]}),
            json!({"id":"t","object":"chat.completion.chunk","created":2,"model":"mistral-large","choices":[],"usage":{"prompt_tokens":4,"completion_tokens":5,"total_tokens":9}}),
        ];
        let mut s: String = input.iter().map(|v| format!("data: {v}\n\n")).collect();
        s.push_str("data: [DONE]\n\n");
        let out = assert_split_invariant(&make, s.as_bytes());
        let sum = summarize(&out, Some("t"), "mistral-large", Some(2));
        assert_eq!(sum.tools, vec![("c1".into(), "f".into(), "{\"x\":1}".into())]);
        assert_eq!(sum.finish, vec!["tool_calls"]);
        assert_eq!(sum.usage.unwrap()["total_tokens"], 9, "an existing usage-only chunk passes");
    }

    #[test]
    fn errors_and_truncation() {
        let (head, _) = recorded().split_once("data: [DONE]").map(|(a, b)| (a.to_string(), b.to_string())).unwrap();
        // Cut after the finishing chunk but before [DONE]: completed, usage included.
        let out = run_chunks(&make, [head.as_bytes()]).0;
        let sum = summarize(&out, None, "magistral-medium-latest", None);
        assert!(sum.done);
        assert_eq!(sum.usage.unwrap()["total_tokens"], 242);
        // Cut mid-way: an error event.
        let cut = &head[..1500];
        let cut = &cut[..cut.rfind("\n\n").unwrap() + 2];
        let out = assert_split_invariant(&make, cut.as_bytes());
        let sum = summarize(&out, None, "magistral-medium-latest", None);
        assert!(!sum.done);
        assert_eq!(sum.error.unwrap()["code"], "stream_truncated");
        // Mistral's error object inside a stream.
        let s = "data: {\"id\":\"a\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"},\"finish_reason\":null}]}\n\n\
                 data: {\"object\":\"error\",\"message\":\"Service unavailable.\",\"type\":\"service_unavailable\",\"param\":null,\"code\":\"1000\"}\n\n";
        let out = assert_split_invariant(&make, s.as_bytes());
        let sum = summarize(&out, Some("a"), "m", None);
        assert_eq!(sum.content, "x");
        let err = sum.error.unwrap();
        assert_eq!(err["message"], "Service unavailable.");
        assert_eq!(err["code"], "1000");
        // OpenAI-style error and garbage.
        for bad in ["data: {\"error\":{\"message\":\"boom\",\"type\":\"rate_limit_error\",\"code\":null}}\n\n", "data: {nope\n\n", "data: [1]\n\n"] {
            let out = run_chunks(&make, [bad.as_bytes()]).0;
            assert_terminates(&out);
            assert_eq!(payloads(&out).len(), 1);
        }
        let recorded = recorded();
        for cut in (0..recorded.len()).step_by(499) {
            assert_terminates(&run_chunks(&make, [&recorded.as_bytes()[..cut]]).0);
        }
    }

    // ------------------------------------------------------------------------------------------
    // Issue 16: every compatible answer leaves in OpenAI's exact shape.

    const NO_TYPE: &str = include_str!("../../tests/fixtures/mistral/tool-calls-without-type.json");
    const OLLAMA_CLOUD: &str = include_str!("../../tests/fixtures/ollama/test_ollama_cloud_tool_output.yaml");
    const OPENAI_TOOLS: &str = include_str!("../../tests/fixtures/envoyproxy/ai-gateway/tests/internal/testopenai/cassettes/chat-tools.yaml");

    fn fixture(key: &str) -> Value {
        serde_json::from_str::<Value>(NO_TYPE).unwrap()[key].clone()
    }

    fn normalised(v: &Value) -> Value {
        serde_json::from_slice(&normalise_answer(v.to_string().as_bytes(), 7)).unwrap()
    }

    /// The shape the OpenAI SDK's `ChatCompletion` model declares: every message tool call has
    /// id, `type: "function"` and a function with name and string arguments, and nothing else.
    fn assert_openai_answer(out: &Value) {
        let top: Vec<&str> = out.as_object().unwrap().keys().map(String::as_str).collect();
        assert!(top.iter().all(|k| ANSWER_FIELDS.contains(k)), "{top:?}");
        assert_eq!(out["object"], "chat.completion");
        assert!(out["created"].is_u64() && out["id"].is_string() && out["model"].is_string());
        for (i, c) in out["choices"].as_array().unwrap().iter().enumerate() {
            assert_eq!(c["index"], i);
                let f = c["finish_reason"].as_str().unwrap();
            assert!(["stop", "length", "tool_calls", "content_filter", "function_call"].contains(&f), "{f}");
            let m = c["message"].as_object().unwrap();
            assert_eq!(m["role"], "assistant");
            assert!(m.contains_key("content"));
            assert!(m.keys().all(|k| MESSAGE_FIELDS.contains(&k.as_str())), "{m:?}");
            for call in m.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                let keys: Vec<&str> = call.as_object().unwrap().keys().map(String::as_str).collect();
                assert_eq!(keys.len(), 3, "{call}");
                assert!(call["id"].as_str().is_some_and(|id| !id.is_empty()));
                assert_eq!(call["type"], "function");
                assert!(call["function"]["name"].is_string() && call["function"]["arguments"].is_string());
                assert_eq!(call["function"].as_object().unwrap().len(), 2);
            }
        }
    }

    #[test]
    fn mistral_tool_call_without_type_gets_type_and_loses_index() {
        let recorded = fixture("answer");
        assert!(recorded["choices"][0]["message"]["tool_calls"][0].get("type").is_none(), "the fixture lacks type");
        let out = normalised(&recorded);
        assert_openai_answer(&out);
        let call = &out["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call, &json!({"id":"D681PevKs","type":"function",
            "function":{"name":"retrieve_payment_status","arguments":"{\"transaction_id\": \"T1001\"}"}}));
        let m = &out["choices"][0]["message"];
        assert!(m.get("prefix").is_none());
        assert_eq!(m["content"], "");
        assert_eq!(out["usage"], recorded["usage"]);
        assert_eq!((&out["id"], &out["created"]), (&recorded["id"], &recorded["created"]));
        // Two calls that Mistral both numbers 0 stay two calls with their own ids.
        let out = normalised(&fixture("answer_two_calls"));
        assert_openai_answer(&out);
        let ids: Vec<&str> = out["choices"][0]["message"]["tool_calls"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["D681PevKs", "q7bXsaMeF"]);
    }

    #[test]
    fn mistral_streamed_tool_calls_get_index_type_and_stable_ids() {
        let chunks = fixture("stream");
        let mut sse: String = chunks.as_array().unwrap().iter().map(|c| format!("data: {c}\n\n")).collect();
        sse.push_str("data: [DONE]\n\n");
        let make = || -> Box<dyn StreamTranslate> { Box::new(StreamTranslator::for_provider("Mistral")) };
        let out = assert_split_invariant(&make, sse.as_bytes());
        let sum = summarize(&out, Some("e6b3a7c1d2f94e0b8a5c7d9e1f3a5b7c"), "mistral-large-latest", Some(1721403552));
        assert_eq!(sum.tools, vec![
            ("D681PevKs".to_string(), "retrieve_payment_status".to_string(), "{\"transaction_id\": \"T1001\"}".to_string()),
            ("q7bXsaMeF".to_string(), "retrieve_payment_date".to_string(), "{\"transaction_id\": \"T1001\"}".to_string()),
        ], "two calls, numbered 0 and 1 although Mistral numbers both 0");
        assert_eq!(sum.finish, vec!["tool_calls"]);
        assert_eq!(sum.usage.unwrap()["total_tokens"], 145);
        assert!(sum.done);
    }

    #[test]
    fn ollama_cloud_tool_call_index_and_reasoning() {
        let rec = interaction(OLLAMA_CLOUD, 1);
        let recorded = &rec["response"]["parsed_body"];
        let call = &recorded["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["index"], 0, "the recording carries index on a message tool call");
        let out = normalised(recorded);
        assert_openai_answer(&out);
        let m = &out["choices"][0]["message"];
        assert_eq!(m["tool_calls"][0], json!({"id":"call_o2vnpxrw","type":"function",
            "function":{"name":"final_result","arguments":"{\"city\":\"Paris\",\"country\":\"France\"}"}}));
        assert!(m["reasoning_content"].as_str().unwrap().starts_with("The conversation: user asked"));
        assert!(m.get("reasoning").is_none());
        assert_eq!(out["system_fingerprint"], "fp_ollama");
    }

    #[test]
    fn an_exact_openai_answer_passes_byte_for_byte() {
        let rec = interaction(OPENAI_TOOLS, 0);
        let body = rec["response"]["body"].as_str().map(str::to_string).unwrap_or_else(|| rec["response"]["body"]["string"].as_str().unwrap().to_string());
        let out = normalise_answer(body.as_bytes(), 7);
        assert_eq!(out, body.as_bytes());
        assert_openai_answer(&serde_json::from_slice(&out).unwrap());
    }

    #[test]
    fn finish_reasons_usage_and_missing_pieces() {
        for (given, want) in [("stop", "stop"), ("length", "length"), ("tool_calls", "tool_calls"), ("content_filter", "content_filter"),
                              ("model_length", "length"), ("max_tokens", "length"), ("tool_use", "tool_calls"), ("eos", "stop"),
                              ("end_turn", "stop"), ("error", "stop"), ("weird", "stop")] {
            assert_eq!(finish_reason(given), want);
        }
        let bare = json!({"id":"x","model":"m","x_groq":{"id":"req"},"choices":[{"finish_reason":"eos","message":{"content":"hi","executed_tools":[]}}],
            "usage":{"prompt_tokens":3,"completion_tokens":4,"queue_time":0.1,"prompt_cache_hit_tokens":2}});
        let out = normalised(&bare);
        assert_openai_answer(&out);
        assert_eq!(out["created"], 7);
        assert_eq!(out["choices"][0]["finish_reason"], "stop");
        assert_eq!(out["usage"], json!({"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":2}}));
        // A tool call without an id gets one; `tool_calls: null` is left out; object arguments become text.
        let out = normalised(&json!({"id":"y","created":1,"model":"m","choices":[{"index":0,"finish_reason":"tool_calls",
            "message":{"role":"assistant","content":null,"tool_calls":[{"function":{"name":"f","arguments":{"a":1}}}]}}]}));
        assert_openai_answer(&out);
        let call = &out["choices"][0]["message"]["tool_calls"][0];
        assert!(call["id"].as_str().unwrap().starts_with("call_") && call["id"].as_str().unwrap().len() == 29, "{call}");
        assert_eq!(call["function"]["arguments"], "{\"a\":1}");
        let out = normalised(&json!({"id":"z","created":1,"model":"m","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"a","tool_calls":null}}]}));
        assert!(out["choices"][0]["message"].get("tool_calls").is_none());
    }

    #[test]
    fn streamed_fragments_keep_one_id_and_name_once() {
        // A provider that repeats the id and name on every fragment, and one that sends neither id nor index.
        let chunk = |delta: Value| json!({"id":"s","object":"chat.completion.chunk","created":3,"model":"m","choices":[{"index":0,"delta":delta,"finish_reason":null}]});
        let events = [
            chunk(json!({"role":"assistant"})),
            chunk(json!({"tool_calls":[{"id":"a1","type":"function","function":{"name":"get","arguments":"{\"ci"}}]})),
            chunk(json!({"tool_calls":[{"id":"a1","type":"function","function":{"name":"get","arguments":"ty\":1}"}}]})),
            chunk(json!({"tool_calls":[{"function":{"name":"put","arguments":"{"}}]})),
            chunk(json!({"tool_calls":[{"function":{"arguments":"}"}}]})),
            json!({"id":"s","object":"chat.completion.chunk","created":3,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}),
        ];
        let mut sse: String = events.iter().map(|c| format!("data: {c}\n\n")).collect();
        sse.push_str("data: [DONE]\n\n");
        let make = || -> Box<dyn StreamTranslate> { Box::new(StreamTranslator::for_provider("Groq")) };
        let out = assert_split_invariant(&make, sse.as_bytes());
        let sum = summarize(&out, Some("s"), "m", Some(3));
        assert_eq!(sum.tools.len(), 2);
        assert_eq!((sum.tools[0].0.as_str(), sum.tools[0].1.as_str(), sum.tools[0].2.as_str()), ("a1", "get", "{\"city\":1}"));
        assert!(sum.tools[1].0.starts_with("call_"));
        assert_eq!((sum.tools[1].1.as_str(), sum.tools[1].2.as_str()), ("put", "{}"));
        // The synthesised id is the same whichever way the stream was split (split invariant above)
        // and differs from another stream's.
        let other = sse.replace("\"id\":\"s\"", "\"id\":\"t\"");
        let sum2 = summarize(&run_chunks(&make, [other.as_bytes()]).0, Some("t"), "m", Some(3));
        assert_ne!(sum.tools[1].0, sum2.tools[1].0);
    }
}
