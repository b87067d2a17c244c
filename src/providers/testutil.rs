//! Test helpers shared by the provider translators: recorded cassettes, stream runners that split
//! input at every byte, and a checker that validates every output event against the OpenAI chunk
//! shape while accumulating what a client would see.

// Compiled only for tests: `providers/mod.rs` declares it under #[cfg(test)].
#[cfg(test)]
use serde_json::{json, Value};

use super::StreamTranslate;
use crate::api::chat::Usage;

pub const CREATED: u64 = 1_700_000_000;

/// A vcrpy / go-vcr cassette as JSON.
pub fn cassette(yaml: &str) -> Value {
    serde_yaml::from_str(yaml).expect("cassette parses")
}

pub fn interaction(yaml: &str, n: usize) -> Value {
    cassette(yaml)["interactions"][n].clone()
}

/// Runs a fresh translator over `chunks`, then `finish`.
pub fn run_chunks<'a>(make: &dyn Fn() -> Box<dyn StreamTranslate>, chunks: impl IntoIterator<Item = &'a [u8]>) -> (Vec<u8>, Option<Usage>) {
    let mut t = make();
    let mut out = Vec::new();
    for c in chunks {
        t.push(c, &mut out);
    }
    t.finish(&mut out);
    (out, t.usage().cloned())
}

/// Feeds `head`, then `call(i)` for the first [`MAX_STREAM_TOOL_CALLS`](super::util::MAX_STREAM_TOOL_CALLS)
/// tool calls (all translated, no error), then one more: that one ends the stream with a single
/// `stream_overflow` error event, after which nothing more is written.
pub fn assert_tool_calls_capped(make: &dyn Fn() -> Box<dyn StreamTranslate>, head: &[u8], call: &dyn Fn(usize) -> Vec<u8>) {
    let limit = super::util::MAX_STREAM_TOOL_CALLS;
    let mut t = make();
    let mut out = Vec::new();
    t.push(head, &mut out);
    for i in 0..limit {
        t.push(&call(i), &mut out);
    }
    let before = payloads(&out);
    assert!(!before.iter().any(|d| d.starts_with("{\"error\"")), "no error up to the limit");
    let calls = before.iter().filter(|d| d.contains("\"tool_calls\"")).count();
    assert!(calls >= limit, "{calls} tool-call chunks for {limit} calls");
    let n = out.len();
    t.push(&call(limit), &mut out);
    let after = payloads(&out[n..]);
    assert_eq!(after.len(), 1, "one error event: {after:?}");
    let e: Value = serde_json::from_str(&after[0]).expect("JSON");
    assert_eq!(e["error"]["code"], "stream_overflow", "{e}");
    let m = out.len();
    t.push(&call(limit + 1), &mut out);
    t.finish(&mut out);
    assert_eq!(out.len(), m, "nothing after the error");
}

/// Output for every two-way split, 1-byte and 7-byte chunks must equal the whole-body output
/// (two-way splits at every offset for inputs up to 4 KB; above that ~300 evenly spread offsets,
/// the 1-byte run covering every boundary at once, to keep debug runs quick).
pub fn assert_split_invariant(make: &dyn Fn() -> Box<dyn StreamTranslate>, input: &[u8]) -> Vec<u8> {
    let (whole, usage) = run_chunks(make, [input]);
    let step = if input.len() <= 4096 { 1 } else { (input.len() / 300) | 1 };
    for at in (0..=input.len()).step_by(step) {
        let (a, b) = input.split_at(at);
        let (out, u) = run_chunks(make, [a, b]);
        assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&whole), "split at byte {at}");
        assert_eq!(u, usage, "usage, split at byte {at}");
    }
    assert_eq!(run_chunks(make, input.chunks(1)).0, whole, "1-byte chunks");
    assert_eq!(run_chunks(make, input.chunks(7)).0, whole, "7-byte chunks");
    whole
}

/// The `data:` payloads of an OpenAI SSE output, checking the framing on the way.
pub fn payloads(out: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(out).expect("output is UTF-8");
    assert!(text.is_empty() || text.ends_with("\n\n"), "output ends on an event boundary: {text:?}");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            assert!(!e.contains('\n'), "one data line per event: {e:?}");
            e.strip_prefix("data: ").expect("data line").to_string()
        })
        .collect()
}

/// Parsed JSON events (everything before `[DONE]`) and whether `[DONE]` ended the stream.
pub fn events(out: &[u8]) -> (Vec<Value>, bool) {
    let p = payloads(out);
    let mut done = false;
    let mut evs = Vec::new();
    for (i, d) in p.iter().enumerate() {
        if d == "[DONE]" {
            assert_eq!(i, p.len() - 1, "[DONE] is last");
            done = true;
        } else {
            evs.push(serde_json::from_str::<Value>(d).expect("event is JSON"));
        }
    }
    (evs, done)
}

#[derive(Debug, Default)]
pub struct Summary {
    pub content: String,
    pub reasoning: String,
    /// id, name, arguments
    pub tools: Vec<(String, String, String)>,
    pub finish: Vec<String>,
    pub usage: Option<Value>,
    pub error: Option<Value>,
    pub done: bool,
    pub role_first: bool,
    pub chunks: usize,
}

/// Checks every chunk against the OpenAI chunk shape (`id`, `object`, `created`, `model`,
/// `choices[].index/delta/finish_reason/logprobs`, usage only on the `choices: []` chunk) and
/// accumulates what a client would see. `id` / `created` are checked when given.
pub fn summarize(out: &[u8], id: Option<&str>, model: &str, created: Option<u64>) -> Summary {
    let (evs, done) = events(out);
    let mut sum = Summary { done, ..Summary::default() };
    let mut first_id: Option<Value> = None;
    for (n, ev) in evs.iter().enumerate() {
        if let Some(err) = ev.get("error") {
            assert_eq!(n, evs.len() - 1, "an error event is last");
            assert!(!done, "no [DONE] after an error");
            for k in ["message", "type"] {
                assert!(err[k].is_string(), "error.{k} is a string: {err}");
            }
            assert!(err.get("param").is_some() && err.get("code").is_some(), "error has param and code: {err}");
            sum.error = Some(err.clone());
            continue;
        }
        assert!(sum.usage.is_none(), "nothing but [DONE] after the usage chunk");
        match id {
            Some(id) => assert_eq!(ev["id"], id),
            None => assert!(ev["id"].as_str().is_some_and(|s| !s.is_empty()), "id: {ev}"),
        }
        let this_id = ev["id"].clone();
        assert_eq!(first_id.get_or_insert_with(|| this_id.clone()), &this_id, "one id for the whole stream");
        assert_eq!(ev["object"], "chat.completion.chunk");
        assert!(ev["created"].is_u64());
        if let Some(c) = created {
            assert_eq!(ev["created"], c);
        }
        assert_eq!(ev["model"], model);
        let choices = ev["choices"].as_array().expect("choices array");
        if choices.is_empty() {
            assert!(ev["usage"].is_object(), "a chunk without choices is the usage chunk: {ev}");
            for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
                assert!(ev["usage"][k].is_u64(), "usage.{k}");
            }
            sum.usage = Some(ev["usage"].clone());
            continue;
        }
        sum.chunks += 1;
        assert!(ev.get("usage").is_none_or(Value::is_null), "usage only on the usage chunk: {ev}");
        assert_eq!(choices.len(), 1);
        let c = &choices[0];
        assert_eq!(c["index"], 0);
        assert!(c.get("logprobs").is_none_or(Value::is_null));
        let delta = c["delta"].as_object().expect("delta object");
        if n == 0 {
            sum.role_first = delta.get("role") == Some(&json!("assistant"));
        } else {
            assert!(delta.get("role").is_none(), "role only in the first chunk: {ev}");
        }
        if let Some(t) = delta.get("content") {
            match t {
                Value::String(t) => sum.content.push_str(t),
                Value::Null => {}
                other => panic!("content must be a string: {other}"),
            }
        }
        if let Some(t) = delta.get("reasoning_content") {
            match t {
                Value::String(t) => sum.reasoning.push_str(t),
                Value::Null => {}
                other => panic!("reasoning_content must be a string: {other}"),
            }
        }
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            for call in calls {
                let k = call["index"].as_u64().expect("tool index") as usize;
                if let Some(tid) = call.get("id") {
                    assert_eq!(k, sum.tools.len(), "tool calls are numbered from 0 in order");
                    assert_eq!(call["type"], "function");
                    sum.tools.push((
                        tid.as_str().expect("id string").to_string(),
                        call["function"]["name"].as_str().expect("name").to_string(),
                        call["function"]["arguments"].as_str().unwrap_or("").to_string(),
                    ));
                } else {
                    assert!(call["function"].get("name").is_none());
                    sum.tools[k].2.push_str(call["function"]["arguments"].as_str().expect("arguments"));
                }
            }
        }
        match &c["finish_reason"] {
            Value::Null => {}
            Value::String(f) => {
                let trivial = delta.iter().all(|(k, v)| k == "content" && v.as_str() == Some(""));
                assert!(trivial, "the finishing chunk carries no text: {ev}");
                sum.finish.push(f.clone());
            }
            other => panic!("finish_reason {other}"),
        }
    }
    sum
}

/// Every stream output ends with `[DONE]` or a single error event, and every payload is JSON.
pub fn assert_terminates(out: &[u8]) {
    let p = payloads(out);
    let last = p.last().expect("something is always written");
    assert!(
        last == "[DONE]" || serde_json::from_str::<Value>(last).expect("JSON").get("error").is_some(),
        "stream ends with [DONE] or an error: {last}"
    );
    for d in &p {
        assert!(d == "[DONE]" || serde_json::from_str::<Value>(d).is_ok(), "{d}");
    }
}

/// An OpenAI error body `{"error":{message,type,param,code}}`.
pub fn error_json(body: &[u8]) -> Value {
    let v: Value = serde_json::from_slice(body).expect("error body is JSON");
    let e = v["error"].clone();
    assert!(e["message"].is_string() && e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
    e
}

/// One backend entry, parsed (and its preset applied) the way the filter gets it.
pub fn backend(entry: Value) -> crate::config::Backend {
    let cfg = json!({"role":"backend","backends":{"b": entry}}).to_string();
    match crate::config::PluginConfig::parse(cfg.as_bytes()) {
        Ok(crate::config::PluginConfig::Backend(mut b)) => b.backends.remove("b").expect("backend b"),
        Ok(_) => panic!("not a backend configuration"),
        Err(e) => panic!("{entry}: {e}"),
    }
}

/// A backend configuration's error, if it is rejected.
pub fn backend_error(entry: Value) -> Option<String> {
    let cfg = json!({"role":"backend","backends":{"b": entry}}).to_string();
    crate::config::PluginConfig::parse(cfg.as_bytes()).err()
}

/// The upstream request the backend filter would send for `body`.
pub fn upstream(
    op: super::Operation,
    b: &crate::config::Backend,
    body: &Value,
    model: &str,
) -> Result<super::UpstreamRequest, crate::api::ApiError> {
    super::upstream_request(op, b, body.to_string().as_bytes(), &super::AttemptContext { model, now_unix: CREATED, aws: None })
}
