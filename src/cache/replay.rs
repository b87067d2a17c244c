//! Answers in both delivery forms: a whole `chat.completion` replayed as an OpenAI stream, and an
//! OpenAI stream folded back into the whole `chat.completion` it delivered (so either form of an
//! answer can serve a later request of the other form).

use serde_json::{json, Map, Value};

use crate::stream::sse::{SseParser, SseStatus, DONE};

/// Fields of a choice's message that a stream delta carries as text.
const TEXT_FIELDS: &[&str] = &["content", "reasoning_content", "refusal"];

/// The OpenAI stream that delivers `completion` (a `chat.completion` JSON body): per choice one
/// chunk with the role and the whole message, one with its `finish_reason`; then the usage chunk if
/// the client asked for it (`stream_options.include_usage`); then `[DONE]`. `None` if the body is
/// not a completion.
pub fn stream_from_completion(completion: &[u8], include_usage: bool) -> Option<Vec<u8>> {
    let v: Value = serde_json::from_slice(completion).ok()?;
    let obj = v.as_object()?;
    let choices = obj.get("choices")?.as_array()?;
    let mut head = Map::new();
    for f in ["id", "created", "model", "system_fingerprint", "service_tier"] {
        if let Some(x) = obj.get(f) {
            head.insert(f.to_string(), x.clone());
        }
    }
    head.insert("object".to_string(), json!("chat.completion.chunk"));
    let chunk = |choice: Value| {
        let mut c = head.clone();
        c.insert("choices".to_string(), Value::Array(vec![choice]));
        Value::Object(c)
    };
    let mut out = Vec::with_capacity(completion.len() + 512);
    let mut write = |v: &Value| {
        out.extend_from_slice(b"data: ");
        if let Ok(b) = serde_json::to_vec(v) {
            out.extend_from_slice(&b);
        }
        out.extend_from_slice(b"\n\n");
    };
    for (pos, choice) in choices.iter().enumerate() {
        let index = choice.get("index").cloned().unwrap_or(json!(pos));
        let msg = choice.get("message").and_then(Value::as_object);
        let mut delta = Map::new();
        delta.insert("role".to_string(), msg.and_then(|m| m.get("role")).cloned().unwrap_or(json!("assistant")));
        if let Some(m) = msg {
            for f in TEXT_FIELDS {
                if let Some(x) = m.get(*f).filter(|x| !x.is_null()) {
                    delta.insert(f.to_string(), x.clone());
                }
            }
            if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                let calls: Vec<Value> = calls
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let mut d = c.as_object().cloned().unwrap_or_default();
                        d.insert("index".to_string(), json!(i));
                        Value::Object(d)
                    })
                    .collect();
                delta.insert("tool_calls".to_string(), Value::Array(calls));
            }
        }
        // A null content stays absent from the delta (it folds back to null, not to "").
        let logprobs = choice.get("logprobs").cloned().unwrap_or(Value::Null);
        write(&chunk(json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": null})));
        let finish = choice.get("finish_reason").cloned().unwrap_or(json!("stop"));
        write(&chunk(json!({"index": index, "delta": {}, "logprobs": null, "finish_reason": finish})));
    }
    if include_usage {
        if let Some(u) = obj.get("usage").filter(|u| !u.is_null()) {
            let mut c = head.clone();
            c.insert("choices".to_string(), json!([]));
            c.insert("usage".to_string(), u.clone());
            write(&Value::Object(c));
        }
    }
    out.extend_from_slice(DONE);
    Some(out)
}

/// A streamed tool call being put together: its stream `index`, id, type, name and arguments.
type ToolCallAcc = (u64, Option<Value>, Option<Value>, String, String);

#[derive(Debug, Default)]
struct ChoiceAcc {
    index: u64,
    role: Option<Value>,
    text: [Option<String>; 3],
    /// By the stream's tool-call `index`: id, type, name, arguments.
    tool_calls: Vec<ToolCallAcc>,
    finish_reason: Option<Value>,
}

/// Folds an OpenAI chat stream (as the gateway passes it, before any chunk is dropped) into the
/// whole `chat.completion` it delivered. Gives up (`finish` returns `None`) on anything it could
/// not reproduce faithfully: an error event, log-probabilities, a stream without `[DONE]` or
/// without every choice's `finish_reason`, unknown delta fields, or more than `max_bytes` of data.
#[derive(Debug)]
pub struct StreamFold {
    parser: SseParser,
    head: Map<String, Value>,
    choices: Vec<ChoiceAcc>,
    usage: Option<Value>,
    done: bool,
    failed: bool,
    bytes: usize,
    max_bytes: usize,
}

impl StreamFold {
    pub fn new(max_bytes: usize) -> Self {
        StreamFold { parser: SseParser::new(), head: Map::new(), choices: Vec::new(), usage: None, done: false, failed: false, bytes: 0, max_bytes }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        if self.failed {
            return;
        }
        self.bytes += chunk.len();
        if self.bytes > self.max_bytes {
            self.failed = true;
            return;
        }
        let mut events: Vec<String> = Vec::new();
        let status = self.parser.push(chunk, |name, data| {
            if name.is_empty() {
                events.push(data.to_string());
            } else {
                events.push(String::new()); // a named event (`error`) is not a chat chunk
            }
        });
        if status == SseStatus::Overflow {
            self.failed = true;
        }
        for e in events {
            self.event(&e);
        }
    }

    fn event(&mut self, data: &str) {
        if self.failed {
            return;
        }
        if self.done {
            self.failed = true; // anything after [DONE]
            return;
        }
        if data.trim() == "[DONE]" {
            self.done = true;
            return;
        }
        let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(data) else {
            self.failed = true;
            return;
        };
        if obj.contains_key("error") {
            self.failed = true;
            return;
        }
        for f in ["id", "created", "model", "system_fingerprint", "service_tier"] {
            if let Some(x) = obj.get(f).filter(|x| !x.is_null()) {
                self.head.insert(f.to_string(), x.clone());
            }
        }
        if let Some(u) = obj.get("usage").filter(|u| !u.is_null()) {
            self.usage = Some(u.clone());
        }
        let Some(choices) = obj.get("choices").and_then(Value::as_array) else { return };
        for c in choices {
            if !self.choice(c) {
                self.failed = true;
                return;
            }
        }
    }

    fn choice(&mut self, c: &Value) -> bool {
        let Some(index) = c.get("index").and_then(Value::as_u64) else { return false };
        if c.get("logprobs").is_some_and(|l| !l.is_null()) {
            return false;
        }
        let pos = match self.choices.iter().position(|x| x.index == index) {
            Some(p) => p,
            None => {
                if self.choices.len() >= 128 {
                    return false;
                }
                self.choices.push(ChoiceAcc { index, ..Default::default() });
                self.choices.len() - 1
            }
        };
        let acc = &mut self.choices[pos];
        if let Some(f) = c.get("finish_reason").filter(|f| !f.is_null()) {
            acc.finish_reason = Some(f.clone());
        }
        let Some(delta) = c.get("delta").and_then(Value::as_object) else { return true };
        for (k, v) in delta {
            if v.is_null() {
                continue;
            }
            match k.as_str() {
                "role" => acc.role = Some(v.clone()),
                "tool_calls" => {
                    let Some(calls) = v.as_array() else { return false };
                    for call in calls {
                        let Some(i) = call.get("index").and_then(Value::as_u64) else { return false };
                        let slot = match acc.tool_calls.iter().position(|t| t.0 == i) {
                            Some(p) => p,
                            None => {
                                acc.tool_calls.push((i, None, None, String::new(), String::new()));
                                acc.tool_calls.len() - 1
                            }
                        };
                        let t = &mut acc.tool_calls[slot];
                        if let Some(id) = call.get("id").filter(|x| !x.is_null()) {
                            t.1 = Some(id.clone());
                        }
                        if let Some(ty) = call.get("type").filter(|x| !x.is_null()) {
                            t.2 = Some(ty.clone());
                        }
                        if let Some(f) = call.get("function") {
                            if let Some(n) = f.get("name").and_then(Value::as_str) {
                                t.3.push_str(n);
                            }
                            if let Some(a) = f.get("arguments").and_then(Value::as_str) {
                                t.4.push_str(a);
                            }
                        }
                    }
                }
                other => match TEXT_FIELDS.iter().position(|f| *f == other) {
                    Some(i) => {
                        let Some(s) = v.as_str() else { return false };
                        acc.text[i].get_or_insert_with(String::new).push_str(s);
                    }
                    None => return false, // a delta field this fold would lose
                },
            }
        }
        true
    }

    /// The whole `chat.completion`, if the stream completed and was folded faithfully.
    pub fn finish(mut self) -> Option<Vec<u8>> {
        self.parser.finish(|_, _| {});
        if self.failed || !self.done || self.choices.is_empty() || self.choices.iter().any(|c| c.finish_reason.is_none()) {
            return None;
        }
        let mut obj = self.head;
        obj.insert("object".to_string(), json!("chat.completion"));
        self.choices.sort_by_key(|c| c.index);
        let choices: Vec<Value> = self
            .choices
            .into_iter()
            .map(|c| {
                let mut m = Map::new();
                m.insert("role".to_string(), c.role.unwrap_or(json!("assistant")));
                let [content, reasoning, refusal] = c.text;
                m.insert("content".to_string(), content.map_or(Value::Null, Value::String));
                if let Some(r) = reasoning {
                    m.insert("reasoning_content".to_string(), Value::String(r));
                }
                m.insert("refusal".to_string(), refusal.map_or(Value::Null, Value::String));
                if !c.tool_calls.is_empty() {
                    let mut calls = c.tool_calls;
                    calls.sort_by_key(|t| t.0);
                    let calls: Vec<Value> = calls
                        .into_iter()
                        .map(|(_, id, ty, name, args)| {
                            json!({"id": id.unwrap_or(Value::Null), "type": ty.unwrap_or(json!("function")),
                                   "function": {"name": name, "arguments": args}})
                        })
                        .collect();
                    m.insert("tool_calls".to_string(), Value::Array(calls));
                }
                json!({"index": c.index, "message": m, "logprobs": null, "finish_reason": c.finish_reason})
            })
            .collect();
        obj.insert("choices".to_string(), Value::Array(choices));
        if let Some(u) = self.usage {
            obj.insert("usage".to_string(), u);
        }
        serde_json::to_vec(&Value::Object(obj)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per choice: index, text, tool calls (id, name, arguments), finish reason.
    type ClientChoice = (u64, String, Vec<(String, String, String)>, String);

    /// What the `openai` SDK's stream accumulation would rebuild: per choice, the concatenated
    /// texts, the tool calls, the finish reason; plus usage.
    fn fold_client_view(stream: &[u8]) -> (Vec<ClientChoice>, Option<Value>, bool) {
        let text = String::from_utf8(stream.to_vec()).unwrap();
        let mut choices: Vec<ClientChoice> = Vec::new();
        let mut usage = None;
        let mut done = false;
        for ev in text.split("\n\n").filter(|e| !e.is_empty()) {
            let data = ev.strip_prefix("data: ").expect("data line");
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let v: Value = serde_json::from_str(data).unwrap();
            assert_eq!(v["object"], "chat.completion.chunk");
            if let Some(u) = v.get("usage") {
                usage = Some(u.clone());
            }
            for c in v["choices"].as_array().unwrap() {
                let i = c["index"].as_u64().unwrap();
                if !choices.iter().any(|x| x.0 == i) {
                    choices.push((i, String::new(), Vec::new(), String::new()));
                }
                let acc = choices.iter_mut().find(|x| x.0 == i).unwrap();
                if let Some(s) = c["delta"]["content"].as_str() {
                    acc.1.push_str(s);
                }
                for t in c["delta"]["tool_calls"].as_array().into_iter().flatten() {
                    acc.2.push((
                        t["id"].as_str().unwrap().to_string(),
                        t["function"]["name"].as_str().unwrap().to_string(),
                        t["function"]["arguments"].as_str().unwrap().to_string(),
                    ));
                }
                if let Some(f) = c["finish_reason"].as_str() {
                    acc.3 = f.to_string();
                }
            }
        }
        (choices, usage, done)
    }

    const RECORDED: &str = r#"{"id":"chatcmpl-Bx1","object":"chat.completion","created":1733000000,"model":"gpt-4o-mini-2024-07-18",
        "choices":[{"index":0,"message":{"role":"assistant","content":"Hi there! How can I help today?","refusal":null},"logprobs":null,"finish_reason":"stop"}],
        "usage":{"prompt_tokens":8,"completion_tokens":271,"total_tokens":279},"system_fingerprint":"fp_1"}"#;

    #[test]
    fn a_completion_streams_as_openai_chunks() {
        let s = stream_from_completion(RECORDED.as_bytes(), true).unwrap();
        let (choices, usage, done) = fold_client_view(&s);
        assert!(done);
        assert_eq!(choices, vec![(0, "Hi there! How can I help today?".to_string(), vec![], "stop".to_string())]);
        assert_eq!(usage.unwrap()["total_tokens"], 279);
        let text = String::from_utf8(s.clone()).unwrap();
        assert!(text.contains(r#""id":"chatcmpl-Bx1""#) && text.contains(r#""system_fingerprint":"fp_1""#), "{text}");
        // Without include_usage: no usage chunk.
        let (_, usage, _) = fold_client_view(&stream_from_completion(RECORDED.as_bytes(), false).unwrap());
        assert!(usage.is_none());
        assert!(stream_from_completion(b"{\"error\":{}}", false).is_none());
        assert!(stream_from_completion(b"not json", false).is_none());
    }

    #[test]
    fn tool_calls_survive_both_ways() {
        let c = r#"{"id":"c1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":null,
            "tool_calls":[{"id":"call_a","type":"function","function":{"name":"get_weather","arguments":"{\"location\":\"Boston, MA\"}"}},
                          {"id":"call_b","type":"function","function":{"name":"get_time","arguments":"{}"}}]},"logprobs":null,"finish_reason":"tool_calls"}],
            "usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
        let s = stream_from_completion(c.as_bytes(), false).unwrap();
        let (choices, _, _) = fold_client_view(&s);
        assert_eq!(choices[0].2[0], ("call_a".into(), "get_weather".into(), r#"{"location":"Boston, MA"}"#.into()));
        assert_eq!(choices[0].2[1].1, "get_time");
        assert_eq!(choices[0].3, "tool_calls");
        // Folding the replayed stream gives the completion back.
        let mut fold = StreamFold::new(1 << 20);
        fold.push(&s);
        let back: Value = serde_json::from_slice(&fold.finish().unwrap()).unwrap();
        let orig: Value = serde_json::from_str(c).unwrap();
        assert_eq!(back["choices"][0]["message"]["tool_calls"], orig["choices"][0]["message"]["tool_calls"]);
        assert_eq!(back["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(back["id"], "c1");
    }

    /// A stream as a provider sends it, in awkward pieces.
    fn provider_stream() -> String {
        let chunks = [
            r#"{"id":"chatcmpl-9","object":"chat.completion.chunk","created":5,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#,
            r#"{"id":"chatcmpl-9","object":"chat.completion.chunk","created":5,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}]}"#,
            r#"{"id":"chatcmpl-9","object":"chat.completion.chunk","created":5,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":" wörld"},"logprobs":null,"finish_reason":null}]}"#,
            r#"{"id":"chatcmpl-9","object":"chat.completion.chunk","created":5,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}"#,
            r#"{"id":"chatcmpl-9","object":"chat.completion.chunk","created":5,"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
        ];
        let mut s = String::new();
        for c in chunks {
            s.push_str("data: ");
            s.push_str(c);
            s.push_str("\n\n");
        }
        s
    }

    #[test]
    fn a_stream_folds_into_the_completion_it_delivered() {
        let s = provider_stream() + "data: [DONE]\n\n";
        let mut fold = StreamFold::new(1 << 20);
        for piece in s.as_bytes().chunks(7) {
            fold.push(piece);
        }
        let v: Value = serde_json::from_slice(&fold.finish().unwrap()).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["id"], "chatcmpl-9");
        assert_eq!(v["choices"][0]["message"]["content"], "Hello wörld");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["total_tokens"], 5);
        // And replays as the same text.
        let (choices, usage, _) = fold_client_view(&stream_from_completion(&serde_json::to_vec(&v).unwrap(), true).unwrap());
        assert_eq!(choices[0].1, "Hello wörld");
        assert_eq!(usage.unwrap()["completion_tokens"], 2);
    }

    #[test]
    fn a_null_content_survives_the_round_trip() {
        // Fuzz finding (cache target): a completion whose content is null replayed with content ""
        // and folded back as "".
        let c = r#"{"id":"c","choices":[{"index":0,"message":{"role":"assistant","content":null},"finish_reason":"stop"}]}"#;
        let s = stream_from_completion(c.as_bytes(), false).unwrap();
        let mut fold = StreamFold::new(1 << 20);
        fold.push(&s);
        let v: Value = serde_json::from_slice(&fold.finish().unwrap()).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
    }

    #[test]
    fn cut_or_failed_streams_do_not_fold() {
        let full = provider_stream() + "data: [DONE]\n\n";
        let cases = [
            provider_stream(),                                                       // no [DONE]
            full[..full.len() / 2].to_string(),                                      // cut
            provider_stream() + "data: {\"error\":{\"message\":\"overloaded\"}}\n\n", // error event
            provider_stream().replace("\"finish_reason\":\"stop\"", "\"finish_reason\":null") + "data: [DONE]\n\n",
            full.replacen("\"logprobs\":null", "\"logprobs\":{\"content\":[]}", 2),
            full.replacen("\"content\":\"Hello\"", "\"content\":\"Hello\",\"audio\":{\"id\":\"a\"}", 1),
            full.clone() + "event: error\ndata: {}\n\n",
        ];
        for (i, c) in cases.iter().enumerate() {
            let mut fold = StreamFold::new(1 << 20);
            fold.push(c.as_bytes());
            assert!(fold.finish().is_none(), "case {i}");
        }
        let mut small = StreamFold::new(100);
        small.push(full.as_bytes());
        assert!(small.finish().is_none(), "over max_bytes");
    }
}
