//! Mistral's chat stream (`preset: "mistral"` on an `openai`-schema backend) made OpenAI-exact.
//!
//! Mistral streams OpenAI `chat.completion.chunk` events with two differences this translator
//! removes, chunk by chunk:
//! * Magistral models send `delta.content` as an array of typed chunks; `thinking` chunks become
//!   `delta.reasoning_content` and `text` chunks a string `delta.content`
//!   (see [`super::presets::normalise_message`]).
//! * Usage arrives unasked on the last chunk, next to `finish_reason`; it is moved into a
//!   usage-only chunk (`choices: []`) written just before `data: [DONE]`, which the gateway drops
//!   for clients that did not ask for usage.
//!
//! Chunks that need neither are forwarded byte for byte. An error object in the stream, an
//! unreadable event, or a stream that ends before any `finish_reason` and `[DONE]` ends the output
//! with one OpenAI error event.
//!
//! DeepSeek streams the same way (usage next to the last `finish_reason`, unasked for by the
//! client, since the gateway always asks): its preset uses this translator too
//! ([`StreamTranslator::for_provider`]), so a client that did not ask sees no usage.

use serde_json::{Map, Value};

use super::presets::normalise_message;
use super::util::{overflow, truncated, unreadable_event, write_error_event, Phase};
use super::StreamTranslate;
use crate::api::chat::Usage;
use crate::api::error::{kind_for_status, ApiError};
use crate::stream::sse::{write_json_event, write_raw_event, SseParser, SseStatus, DONE};

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
}

impl StreamTranslator {
    pub fn new() -> Self {
        Self::for_provider("Mistral")
    }

    /// The same translation for another provider that streams this way (DeepSeek); `provider`
    /// names it in error messages.
    pub fn for_provider(provider: &'static str) -> Self {
        StreamTranslator {
            parser: SseParser::new(),
            state: State { provider, phase: Phase::Open, held_usage: None, usage: None, saw_finish: false },
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

impl Default for StreamTranslator {
    fn default() -> Self {
        Self::new()
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
        let mut changed = false;
        let mut has_choices = false;
        if let Some(Value::Array(choices)) = v.get_mut("choices") {
            has_choices = !choices.is_empty();
            for c in choices.iter_mut() {
                if c.get("finish_reason").is_some_and(|f| !f.is_null()) {
                    self.saw_finish = true;
                }
                if let Some(d) = c.get_mut("delta").and_then(Value::as_object_mut) {
                    changed |= normalise_message(d, false);
                }
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
    use crate::providers::testutil::{assert_split_invariant, assert_terminates, interaction, payloads, run_chunks, summarize};
    use serde_json::json;

    const THINKING: &str = include_str!("../../tests/fixtures/mistral/test_mistral_model_thinking_part_iter.yaml");

    fn make() -> Box<dyn StreamTranslate> {
        Box::new(StreamTranslator::new())
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
}
