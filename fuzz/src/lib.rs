//! Helpers shared by the fuzz targets: the backends every target can pick from, a strict reader of
//! the SSE the gateway sends to clients, shape checks of the OpenAI bodies the OpenAI Python SDK
//! parses, an AWS event-stream frame writer (so Bedrock streams get past the CRC checks), a
//! fuzzer-driven chunker and a counting allocator for the memory bound.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use serde_json::{Map, Value};
use switchyard::config::{AwsCredentials, Backend, PluginConfig};
use switchyard::providers::{Dialect, Operation};

// ---------------------------------------------------------------------------------------------
// Memory: a counting allocator (each target installs it as its global allocator)
// ---------------------------------------------------------------------------------------------

/// The system allocator, counting live bytes and their peak.
pub struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            if new_size >= layout.size() {
                let live = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size - layout.size();
                PEAK.fetch_max(live, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

/// Runs `f` and returns its result and the peak heap it added (bytes above the live heap at the
/// start). The targets are single-threaded, so the counters see only `f`'s allocations.
pub fn peak_heap<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let r = f();
    (r, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

/// The memory/output bound every target asserts: linear in the input, with a fixed allowance for
/// the start-up of a translator (its ids, model name, first chunks) and the configuration tables.
pub fn linear_bound(input_len: usize, per_byte: usize, fixed: usize) -> usize {
    fixed + per_byte * input_len
}

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

/// One backend per schema and per OpenAI preset, as a backend filter's configuration gives them.
const BACKENDS_JSON: &str = r#"{"role":"backend","backends":{
 "openai":{"schema":"openai","base_path":"/v1"},
 "mistral":{"schema":"openai","preset":"mistral"},
 "deepseek":{"schema":"openai","preset":"deepseek"},
 "qwen":{"schema":"openai","preset":"qwen"},
 "groq":{"schema":"openai","preset":"groq"},
 "xai":{"schema":"openai","preset":"xai"},
 "together":{"schema":"openai","preset":"together"},
 "fireworks":{"schema":"openai","preset":"fireworks"},
 "openrouter":{"schema":"openai","preset":"openrouter"},
 "vllm":{"schema":"openai","preset":"vllm","host":"vllm.internal"},
 "ollama-openai":{"schema":"openai","preset":"ollama","host":"ollama.internal"},
 "azure":{"schema":"azure_openai","base_path":"","api_version":"2024-10-21"},
 "anthropic":{"schema":"anthropic","default_max_tokens":1024},
 "bedrock":{"schema":"bedrock","host":"bedrock-runtime.us-east-1.amazonaws.com"},
 "bedrock-signed":{"schema":"bedrock","host":"bedrock-runtime.us-west-2.amazonaws.com"},
 "gemini":{"schema":"gemini"},
 "vertex":{"schema":"gemini","host":"us-central1-aiplatform.googleapis.com","vertex":{"project":"p-1","location":"us-central1"}},
 "cohere":{"schema":"cohere"},
 "ollama":{"schema":"ollama","host":"ollama.internal"}
}}"#;

/// Names in a fixed order (the configuration is a map).
pub const BACKEND_NAMES: &[&str] = &[
    "openai", "mistral", "deepseek", "qwen", "groq", "xai", "together", "fireworks", "openrouter", "vllm",
    "ollama-openai", "azure", "anthropic", "bedrock", "bedrock-signed", "gemini", "vertex", "cohere", "ollama",
];

/// The backends, parsed once through the real configuration parser.
pub fn backends() -> &'static [(&'static str, Backend)] {
    static B: OnceLock<Vec<(&'static str, Backend)>> = OnceLock::new();
    B.get_or_init(|| {
        let Ok(PluginConfig::Backend(mut cfg)) = PluginConfig::parse(BACKENDS_JSON.as_bytes()) else {
            panic!("the fuzz backends configuration does not parse");
        };
        BACKEND_NAMES
            .iter()
            .map(|n| (*n, cfg.backends.remove(*n).unwrap_or_else(|| panic!("backend {n} missing"))))
            .collect()
    })
}

/// AWS keys for the signed Bedrock backend (made up; SigV4 runs over them).
pub fn aws_credentials() -> &'static AwsCredentials {
    static C: OnceLock<AwsCredentials> = OnceLock::new();
    C.get_or_init(|| AwsCredentials {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
        session_token: Some("session-token".into()),
        region: "us-west-2".into(),
    })
}

/// The answer-side dialects whose answers the gateway translates, plus the plain OpenAI one
/// (whose streams go through the usage tap only).
pub fn dialect(b: &Backend) -> Dialect {
    Dialect::from(b)
}

pub fn op_from(byte: u8) -> Operation {
    if byte & 1 == 0 {
        Operation::Chat
    } else {
        Operation::Embeddings
    }
}

// ---------------------------------------------------------------------------------------------
// Chunking
// ---------------------------------------------------------------------------------------------

/// Splits `data` into chunks whose sizes come from `sizes` (cycled; 0 means a zero-length chunk,
/// which Envoy can deliver too). Empty `sizes`: one chunk.
pub fn chunks<'a>(data: &'a [u8], sizes: &[u8]) -> Vec<&'a [u8]> {
    if sizes.is_empty() {
        return vec![data];
    }
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < data.len() {
        let s = sizes[i % sizes.len()] as usize;
        i += 1;
        let end = (at + s).min(data.len());
        out.push(&data[at..end]);
        at = end;
        if i > data.len() * 2 + 16 {
            // Only zero sizes: finish in one piece.
            out.push(&data[at..]);
            break;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Client-visible SSE
// ---------------------------------------------------------------------------------------------

/// One event the client gets.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Json(Value),
    Done,
}

/// Reads what the gateway sends to a client as SSE, strictly: only events made of `data: ` lines
/// and a blank line (the payload is the lines joined by `\n`, as an SSE client joins them), each
/// payload JSON or `[DONE]`, no bare CR. Panics (a fuzz finding) otherwise.
pub fn parse_client_sse(out: &[u8]) -> Vec<Event> {
    assert!(!out.contains(&b'\r'), "client SSE: a bare CR (clients end lines at it)");
    assert!(out.is_empty() || out.ends_with(b"\n\n"), "client SSE: the output does not end an event");
    let text = String::from_utf8_lossy(out);
    let mut events = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.is_empty()) {
        let mut payload = String::new();
        for (i, line) in block.split('\n').enumerate() {
            let Some(d) = line.strip_prefix("data: ") else {
                panic!("client SSE: a line is not a `data: ` field: {:?}", &line[..line.len().min(200)]);
            };
            if i > 0 {
                payload.push('\n');
            }
            payload.push_str(d);
        }
        if payload == "[DONE]" {
            events.push(Event::Done);
        } else {
            match serde_json::from_str::<Value>(&payload) {
                Ok(v) => events.push(Event::Json(v)),
                Err(e) => panic!("client SSE: data is neither JSON nor [DONE] ({e}): {:?}", &payload[..payload.len().min(300)]),
            }
        }
    }
    events
}

fn is_str_or_null(v: Option<&Value>) -> bool {
    matches!(v, None | Some(Value::Null) | Some(Value::String(_)))
}

fn is_uint(v: Option<&Value>) -> bool {
    v.is_some_and(|v| v.as_u64().is_some())
}

/// The finish reasons the OpenAI SDK's `Literal` types name.
pub const FINISH_REASONS: &[&str] = &["stop", "length", "tool_calls", "content_filter", "function_call"];

fn check_finish_reason(v: Option<&Value>, what: &str) {
    match v {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => assert!(FINISH_REASONS.contains(&s.as_str()), "{what}: finish_reason {s:?} is not one the SDK knows"),
        Some(other) => panic!("{what}: finish_reason is {other}"),
    }
}

fn check_usage(v: Option<&Value>, what: &str) {
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Object(u)) => {
            for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
                assert!(is_uint(u.get(k)), "{what}: usage.{k} is not a non-negative integer: {v:?}");
            }
        }
        Some(other) => panic!("{what}: usage is {other}"),
    }
}

fn check_tool_calls(v: Option<&Value>, what: &str, whole: bool) {
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Array(calls)) => {
            for c in calls {
                let c = c.as_object().unwrap_or_else(|| panic!("{what}: a tool call is not an object"));
                if whole {
                    assert!(c.get("id").is_some_and(Value::is_string), "{what}: tool call without a string id");
                    assert_eq!(c.get("type").and_then(Value::as_str), Some("function"), "{what}: tool call type");
                    let f = c.get("function").and_then(Value::as_object).unwrap_or_else(|| panic!("{what}: tool call without function"));
                    assert!(f.get("name").is_some_and(Value::is_string), "{what}: function.name");
                    assert!(f.get("arguments").is_some_and(Value::is_string), "{what}: function.arguments must be a JSON string");
                } else {
                    assert!(is_uint(c.get("index")), "{what}: a tool-call delta needs an integer index");
                    assert!(is_str_or_null(c.get("id")), "{what}: tool-call delta id");
                    if let Some(f) = c.get("function") {
                        let f = f.as_object().unwrap_or_else(|| panic!("{what}: tool-call delta function is not an object"));
                        assert!(is_str_or_null(f.get("name")), "{what}: delta function.name");
                        assert!(is_str_or_null(f.get("arguments")), "{what}: delta function.arguments");
                    }
                }
            }
        }
        Some(other) => panic!("{what}: tool_calls is {other}"),
    }
}

/// An OpenAI error body: `{"error":{"message": str, "type": str, "param": str|null, "code": str|null}}`.
pub fn check_error_body(v: &Value, what: &str) {
    let e = v.get("error").and_then(Value::as_object).unwrap_or_else(|| panic!("{what}: not an error object: {v}"));
    assert!(e.get("message").is_some_and(Value::is_string), "{what}: error.message: {v}");
    assert!(e.get("type").is_some_and(|t| t.is_string() || t.is_null()), "{what}: error.type: {v}");
    assert!(is_str_or_null(e.get("param")), "{what}: error.param: {v}");
    assert!(e.get("code").is_none_or(|c| c.is_null() || c.is_string()), "{what}: error.code: {v}");
}

/// A `chat.completion` the SDK's `ChatCompletion` model reads.
pub fn check_chat_completion(v: &Value) {
    let what = "chat.completion";
    let o = v.as_object().unwrap_or_else(|| panic!("{what}: not an object"));
    assert_eq!(o.get("object").and_then(Value::as_str), Some("chat.completion"), "{what}: object: {v}");
    assert!(o.get("id").is_some_and(Value::is_string), "{what}: id: {v}");
    assert!(is_uint(o.get("created")), "{what}: created: {v}");
    assert!(o.get("model").is_some_and(Value::is_string), "{what}: model: {v}");
    let choices = o.get("choices").and_then(Value::as_array).unwrap_or_else(|| panic!("{what}: choices: {v}"));
    for c in choices {
        let c = c.as_object().unwrap_or_else(|| panic!("{what}: a choice is not an object"));
        assert!(is_uint(c.get("index")), "{what}: choice index: {v}");
        check_finish_reason(c.get("finish_reason"), what);
        let m = c.get("message").and_then(Value::as_object).unwrap_or_else(|| panic!("{what}: choice without message: {v}"));
        assert_eq!(m.get("role").and_then(Value::as_str), Some("assistant"), "{what}: message.role: {v}");
        assert!(is_str_or_null(m.get("content")), "{what}: message.content must be a string or null: {v}");
        assert!(is_str_or_null(m.get("reasoning_content")), "{what}: message.reasoning_content: {v}");
        assert!(is_str_or_null(m.get("refusal")), "{what}: message.refusal: {v}");
        check_tool_calls(m.get("tool_calls"), what, true);
    }
    check_usage(o.get("usage"), what);
}

/// An embeddings `list` the SDK's `CreateEmbeddingResponse` reads (vectors as float arrays or
/// base64 strings).
pub fn check_embeddings(v: &Value) {
    let what = "embeddings";
    let o = v.as_object().unwrap_or_else(|| panic!("{what}: not an object"));
    assert_eq!(o.get("object").and_then(Value::as_str), Some("list"), "{what}: object: {v}");
    assert!(o.get("model").is_some_and(Value::is_string), "{what}: model: {v}");
    let data = o.get("data").and_then(Value::as_array).unwrap_or_else(|| panic!("{what}: data: {v}"));
    for d in data {
        assert_eq!(d.get("object").and_then(Value::as_str), Some("embedding"), "{what}: data[].object: {v}");
        assert!(is_uint(d.get("index")), "{what}: data[].index: {v}");
        match d.get("embedding") {
            Some(Value::String(_)) => {}
            Some(Value::Array(xs)) => assert!(xs.iter().all(Value::is_number), "{what}: a vector holds a non-number"),
            other => panic!("{what}: embedding is {other:?}"),
        }
    }
    let u = o.get("usage").and_then(Value::as_object).unwrap_or_else(|| panic!("{what}: usage: {v}"));
    assert!(is_uint(u.get("prompt_tokens")) && is_uint(u.get("total_tokens")), "{what}: usage: {v}");
}

/// One `chat.completion.chunk` (or an error event) the SDK's stream reader accepts. `strict`: the
/// chunk was built by the gateway (not an upstream OpenAI-compatible chunk it only normalised,
/// whose `id` / `created` / `model` are the provider's).
pub fn check_chunk(v: &Value, strict: bool) {
    let what = "chat.completion.chunk";
    let o = v.as_object().unwrap_or_else(|| panic!("{what}: not an object: {v}"));
    if o.contains_key("error") {
        check_error_body(v, "stream error event");
        return;
    }
    if strict {
        assert_eq!(o.get("object").and_then(Value::as_str), Some("chat.completion.chunk"), "{what}: object: {v}");
        assert!(o.get("id").is_some_and(Value::is_string), "{what}: id: {v}");
        assert!(is_uint(o.get("created")), "{what}: created: {v}");
        assert!(o.get("model").is_some_and(Value::is_string), "{what}: model: {v}");
    }
    let choices = match o.get("choices") {
        None if !strict => return,
        c => c.and_then(Value::as_array).unwrap_or_else(|| panic!("{what}: choices: {v}")),
    };
    for c in choices {
        if !strict && !c.is_object() {
            continue;
        }
        assert!(!strict || is_uint(c.get("index")), "{what}: choice index: {v}");
        if strict {
            check_finish_reason(c.get("finish_reason"), what);
        }
        let d = match c.get("delta") {
            Some(d) => d,
            None if !strict => continue,
            None => panic!("{what}: choice without delta: {v}"),
        };
        if !strict {
            // A normalised upstream chunk: content arrays became text.
            assert!(!d.get("content").is_some_and(Value::is_array), "{what}: content array left in a normalised delta: {v}");
            continue;
        }
        let d = d.as_object().unwrap_or_else(|| panic!("{what}: delta is not an object: {v}"));
        assert!(d.get("role").is_none_or(|r| r.is_null() || r == "assistant"), "{what}: delta.role: {v}");
        assert!(is_str_or_null(d.get("content")), "{what}: delta.content: {v}");
        assert!(is_str_or_null(d.get("reasoning_content")), "{what}: delta.reasoning_content: {v}");
        check_tool_calls(d.get("tool_calls"), what, false);
    }
    if !strict {
        return;
    }
    check_usage(o.get("usage"), what);
}

/// What a client assembles from a stream: per choice the text, reasoning, tool calls (index →
/// id, name, arguments) and finish reason; the usage; whether it ended with `[DONE]` or an error.
#[derive(Debug, Default, PartialEq)]
pub struct Assembled {
    pub choices: Vec<(u64, String, String, Vec<(u64, String, String, String)>, Option<String>)>,
    pub usage: Option<Value>,
    pub done: bool,
    pub error: Option<Value>,
    pub events_after_end: usize,
}

pub fn assemble(events: &[Event]) -> Assembled {
    let mut a = Assembled::default();
    for e in events {
        if a.done || a.error.is_some() {
            a.events_after_end += 1;
            continue;
        }
        let v = match e {
            Event::Done => {
                a.done = true;
                continue;
            }
            Event::Json(v) => v,
        };
        if let Some(err) = v.get("error") {
            a.error = Some(err.clone());
            continue;
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            a.usage = Some(u.clone());
        }
        for c in v.get("choices").and_then(Value::as_array).into_iter().flatten() {
            let idx = c.get("index").and_then(Value::as_u64).unwrap_or(0);
            let pos = match a.choices.iter().position(|ch| ch.0 == idx) {
                Some(p) => p,
                None => {
                    a.choices.push((idx, String::new(), String::new(), Vec::new(), None));
                    a.choices.len() - 1
                }
            };
            let ch = &mut a.choices[pos];
            let d = c.get("delta").cloned().unwrap_or(Value::Object(Map::new()));
            if let Some(t) = d.get("content").and_then(Value::as_str) {
                ch.1.push_str(t);
            }
            if let Some(t) = d.get("reasoning_content").and_then(Value::as_str) {
                ch.2.push_str(t);
            }
            for tc in d.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                let ti = tc.get("index").and_then(Value::as_u64).unwrap_or(0);
                let tp = match ch.3.iter().position(|t| t.0 == ti) {
                    Some(p) => p,
                    None => {
                        ch.3.push((ti, String::new(), String::new(), String::new()));
                        ch.3.len() - 1
                    }
                };
                let t = &mut ch.3[tp];
                if let Some(id) = tc.get("id").and_then(Value::as_str) {
                    t.1.push_str(id);
                }
                if let Some(n) = tc.pointer("/function/name").and_then(Value::as_str) {
                    t.2.push_str(n);
                }
                if let Some(args) = tc.pointer("/function/arguments").and_then(Value::as_str) {
                    t.3.push_str(args);
                }
            }
            if let Some(f) = c.get("finish_reason").and_then(Value::as_str) {
                ch.4 = Some(f.to_string());
            }
        }
    }
    a
}

// ---------------------------------------------------------------------------------------------
// AWS event-stream frames
// ---------------------------------------------------------------------------------------------

/// Appends one event-stream message with string headers and a valid prelude and message CRC.
pub fn write_frame(out: &mut Vec<u8>, headers: &[(&str, &str)], payload: &[u8]) {
    let mut h = Vec::new();
    for (name, value) in headers {
        let name = &name.as_bytes()[..name.len().min(255)];
        let value = &value.as_bytes()[..value.len().min(u16::MAX as usize)];
        h.push(name.len() as u8);
        h.extend_from_slice(name);
        h.push(7);
        h.extend_from_slice(&(value.len() as u16).to_be_bytes());
        h.extend_from_slice(value);
    }
    let total = 12 + h.len() + payload.len() + 4;
    let start = out.len();
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out[start..start + 8]);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// Bedrock's `ConverseStream` event types.
pub const BEDROCK_EVENTS: &[&str] = &[
    "messageStart", "contentBlockStart", "contentBlockDelta", "contentBlockStop", "messageStop", "metadata",
    "internalServerException", "modelStreamErrorException", "throttlingException", "validationException",
    "serviceUnavailableException",
];

/// Turns fuzz bytes into a Bedrock event stream: records separated by `\n`, each `<type byte><JSON
/// payload>`; the type byte picks the event (and whether it is an event or an exception message).
pub fn bedrock_frames(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for rec in data.split(|&b| b == b'\n') {
        let Some((&t, payload)) = rec.split_first() else { continue };
        let name = BEDROCK_EVENTS[t as usize % BEDROCK_EVENTS.len()];
        let is_exception = name.ends_with("Exception");
        let headers: [(&str, &str); 3] = if is_exception {
            [(":message-type", "exception"), (":exception-type", name), (":content-type", "application/json")]
        } else {
            [(":message-type", "event"), (":event-type", name), (":content-type", "application/json")]
        };
        write_frame(&mut out, &headers, payload);
    }
    out
}
