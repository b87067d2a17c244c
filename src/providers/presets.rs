//! OpenAI-compatible providers by name: `"preset"` on an `openai`-schema backend supplies the
//! provider's host, base path and credential variable (explicit backend fields win), and the few
//! request and answer adjustments that make the provider look like OpenAI to clients.
//!
//! | preset       | host                          | base_path            | credential env       |
//! |--------------|-------------------------------|----------------------|----------------------|
//! | `mistral`    | `api.mistral.ai`              | `/v1`                | `MISTRAL_API_KEY`    |
//! | `deepseek`   | `api.deepseek.com`            | `` (`/chat/completions`) | `DEEPSEEK_API_KEY` |
//! | `qwen`       | `dashscope-intl.aliyuncs.com` | `/compatible-mode/v1`| `DASHSCOPE_API_KEY`  |
//! | `groq`       | `api.groq.com`                | `/openai/v1`         | `GROQ_API_KEY`       |
//! | `xai`        | `api.x.ai`                    | `/v1`                | `XAI_API_KEY`        |
//! | `together`   | `api.together.xyz`            | `/v1`                | `TOGETHER_API_KEY`   |
//! | `fireworks`  | `api.fireworks.ai`            | `/inference/v1`      | `FIREWORKS_API_KEY`  |
//! | `openrouter` | `openrouter.ai`               | `/api/v1`            | `OPENROUTER_API_KEY` |
//! | `vllm`       | —                             | `/v1`                | —                    |
//! | `ollama`     | —                             | `/v1`                | —                    |
//!
//! Answers, whole and streamed, of every preset are made OpenAI-exact in one place,
//! [`super::compat`]: tool calls with `type: "function"` and no extra fields, stable tool-call
//! indexes and ids in streams, OpenAI finish reasons and usage fields, and reasoning as
//! `reasoning_content` (DeepSeek's, Qwen's and xAI's name; Mistral's `thinking` content chunks and
//! the `reasoning` of OpenRouter, Groq, Together, vLLM and Ollama's `/v1` are rewritten into it).
//!
//! Mistral rejects any field its API does not define (HTTP 422 `extra_forbidden`), including
//! OpenAI's `stream_options`, `max_completion_tokens`, `seed`, `user` and an assistant's
//! `reasoning_content`: its requests are rewritten to Mistral's fields (`max_completion_tokens` →
//! `max_tokens`, `seed` → `random_seed`, `developer` → `system`, `dimensions` →
//! `output_dimension`), and fields Mistral does not know are dropped. Mistral streams report
//! usage on the last chunk unasked, and DeepSeek streams put the usage the gateway asks for on
//! the last chunk too (next to `finish_reason`): the stream translator ([`stream_translator`])
//! moves it into the usage-only chunk, which the gateway drops for a client that did not ask for
//! usage.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::openai;
use crate::api::ApiError;
use crate::config::{Backend, Credential};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    Mistral,
    Deepseek,
    Qwen,
    Groq,
    Xai,
    Together,
    Fireworks,
    Openrouter,
    Vllm,
    Ollama,
}

/// What a preset fills in when the backend leaves it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresetDefaults {
    pub host: Option<&'static str>,
    pub base_path: &'static str,
    pub credential_env: Option<&'static str>,
}

impl Preset {
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Mistral => "mistral",
            Preset::Deepseek => "deepseek",
            Preset::Qwen => "qwen",
            Preset::Groq => "groq",
            Preset::Xai => "xai",
            Preset::Together => "together",
            Preset::Fireworks => "fireworks",
            Preset::Openrouter => "openrouter",
            Preset::Vllm => "vllm",
            Preset::Ollama => "ollama",
        }
    }

    pub fn defaults(self) -> PresetDefaults {
        let (host, base_path, credential_env) = match self {
            Preset::Mistral => (Some("api.mistral.ai"), "/v1", Some("MISTRAL_API_KEY")),
            Preset::Deepseek => (Some("api.deepseek.com"), "", Some("DEEPSEEK_API_KEY")),
            Preset::Qwen => (Some("dashscope-intl.aliyuncs.com"), "/compatible-mode/v1", Some("DASHSCOPE_API_KEY")),
            Preset::Groq => (Some("api.groq.com"), "/openai/v1", Some("GROQ_API_KEY")),
            Preset::Xai => (Some("api.x.ai"), "/v1", Some("XAI_API_KEY")),
            Preset::Together => (Some("api.together.xyz"), "/v1", Some("TOGETHER_API_KEY")),
            Preset::Fireworks => (Some("api.fireworks.ai"), "/inference/v1", Some("FIREWORKS_API_KEY")),
            Preset::Openrouter => (Some("openrouter.ai"), "/api/v1", Some("OPENROUTER_API_KEY")),
            Preset::Vllm => (None, "/v1", None),
            Preset::Ollama => (None, "/v1", None),
        };
        PresetDefaults { host, base_path, credential_env }
    }

    /// The provider's name in error messages.
    pub fn display_name(self) -> &'static str {
        match self {
            Preset::Mistral => "Mistral",
            Preset::Deepseek => "DeepSeek",
            Preset::Qwen => "Qwen",
            Preset::Groq => "Groq",
            Preset::Xai => "xAI",
            Preset::Together => "Together",
            Preset::Fireworks => "Fireworks",
            Preset::Openrouter => "OpenRouter",
            Preset::Vllm => "vLLM",
            Preset::Ollama => "Ollama",
        }
    }
}

/// The stream translator of a preset: every preset's stream is made OpenAI-exact
/// ([`super::compat`]).
pub fn stream_translator(preset: Preset) -> super::compat::StreamTranslator {
    super::compat::StreamTranslator::for_provider(preset.display_name())
}

/// Fills the backend's unset `host`, `base_path` and `credential` from its preset (at
/// configuration time, so the filter sees ordinary fields).
pub fn apply_defaults(backend: &mut Backend) {
    let Some(preset) = backend.preset else { return };
    let d = preset.defaults();
    if backend.host.is_none() {
        backend.host = d.host.map(str::to_string);
    }
    if backend.base_path.is_none() {
        backend.base_path = Some(d.base_path.to_string());
    }
    if backend.credential.is_none() {
        backend.credential = d.credential_env.map(|env| Credential { env: env.to_string(), header: None, prefix: None });
    }
}

// =============================================================================================
// Requests
// =============================================================================================

/// The upstream chat body for an `openai`-schema backend with this preset, and whether it streams.
pub fn chat_body(preset: Option<Preset>, body: &[u8], model: &str) -> Result<(Vec<u8>, bool), ApiError> {
    match preset {
        Some(Preset::Mistral) => mistral_chat_body(body, model),
        _ => openai::request_body(body, model),
    }
}

/// The upstream embeddings body for an `openai`-schema backend with this preset.
pub fn embeddings_body(preset: Option<Preset>, body: &[u8], model: &str) -> Result<Vec<u8>, ApiError> {
    match preset {
        Some(Preset::Mistral) => {
            let mut obj = parse_object(body)?;
            obj.insert("model".into(), Value::String(model.to_string()));
            if let Some(d) = obj.remove("dimensions") {
                if !d.is_null() && !obj.contains_key("output_dimension") {
                    obj.insert("output_dimension".into(), d);
                }
            }
            obj.retain(|k, _| MISTRAL_EMBEDDING_FIELDS.contains(&k.as_str()));
            encode(&obj)
        }
        _ => openai::request_body(body, model).map(|(b, _)| b),
    }
}

/// Top-level fields of Mistral's `ChatCompletionRequest` (openapi.yaml; `additionalProperties:
/// false`).
const MISTRAL_CHAT_FIELDS: &[&str] = &[
    "model", "temperature", "top_p", "max_tokens", "stream", "stop", "random_seed", "metadata", "messages",
    "response_format", "tools", "tool_choice", "presence_penalty", "frequency_penalty", "n", "prediction",
    "parallel_tool_calls", "prompt_mode", "reasoning_effort", "guardrails", "prompt_cache_key", "safe_prompt",
];

/// Fields of Mistral's `EmbeddingRequest`.
const MISTRAL_EMBEDDING_FIELDS: &[&str] = &["model", "metadata", "input", "output_dimension", "output_dtype", "encoding_format"];

/// Fields of Mistral's message objects, by role.
fn mistral_message_fields(role: &str) -> &'static [&'static str] {
    match role {
        "assistant" => &["role", "content", "tool_calls", "prefix"],
        "tool" => &["role", "content", "tool_call_id", "name"],
        _ => &["role", "content"],
    }
}

fn mistral_chat_body(body: &[u8], model: &str) -> Result<(Vec<u8>, bool), ApiError> {
    let mut obj = parse_object(body)?;
    obj.insert("model".into(), Value::String(model.to_string()));
    // `max_completion_tokens` wins over `max_tokens`, as in OpenAI's API.
    if let Some(v) = obj.remove("max_completion_tokens") {
        if !v.is_null() {
            obj.insert("max_tokens".into(), v);
        }
    }
    if let Some(v) = obj.remove("seed") {
        if !v.is_null() && !obj.contains_key("random_seed") {
            obj.insert("random_seed".into(), v);
        }
    }
    obj.retain(|k, _| MISTRAL_CHAT_FIELDS.contains(&k.as_str()));
    if let Some(Value::Array(messages)) = obj.get_mut("messages") {
        for m in messages.iter_mut() {
            let Some(m) = m.as_object_mut() else { continue };
            if m.get("role").and_then(Value::as_str) == Some("developer") {
                m.insert("role".into(), Value::String("system".into()));
            }
            let role = m.get("role").and_then(Value::as_str).unwrap_or("user").to_string();
            let allowed = mistral_message_fields(&role);
            m.retain(|k, _| allowed.contains(&k.as_str()));
        }
    }
    let stream = obj.get("stream").and_then(Value::as_bool) == Some(true);
    Ok((encode(&obj)?, stream))
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid_request(format!("Invalid JSON body: {e}")))
}

fn encode(obj: &Map<String, Value>) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(obj).map_err(|e| ApiError::gateway(500, format!("could not encode request: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testutil::interaction;
    use serde_json::json;

    const DEEPSEEK: &str = include_str!("../../tests/fixtures/deepseek/test_deepseek_model_thinking_part.yaml");
    const DEEPSEEK_STREAM: &str = include_str!("../../tests/fixtures/deepseek/test_deepseek_model_thinking_stream.yaml");
    const OLLAMA_V1: &str = include_str!("../../tests/fixtures/ollama/test_ollama_local_native_output_uses_json_schema.yaml");
    const MISTRAL: &str = include_str!("../../tests/fixtures/mistral/test_mistral_model_thinking_part_iter.yaml");

    use crate::providers::compat::normalise_answer;

    fn normalise_answer_0(body: &[u8]) -> Vec<u8> {
        normalise_answer(body, 0)
    }

    fn backend(json: Value) -> Backend {
        let mut b: Backend = serde_json::from_value(json).unwrap();
        apply_defaults(&mut b);
        b
    }

    #[test]
    fn every_preset_has_the_documented_defaults() {
        let table = [
            ("mistral", Some("api.mistral.ai"), "/v1", Some("MISTRAL_API_KEY")),
            ("deepseek", Some("api.deepseek.com"), "", Some("DEEPSEEK_API_KEY")),
            ("qwen", Some("dashscope-intl.aliyuncs.com"), "/compatible-mode/v1", Some("DASHSCOPE_API_KEY")),
            ("groq", Some("api.groq.com"), "/openai/v1", Some("GROQ_API_KEY")),
            ("xai", Some("api.x.ai"), "/v1", Some("XAI_API_KEY")),
            ("together", Some("api.together.xyz"), "/v1", Some("TOGETHER_API_KEY")),
            ("fireworks", Some("api.fireworks.ai"), "/inference/v1", Some("FIREWORKS_API_KEY")),
            ("openrouter", Some("openrouter.ai"), "/api/v1", Some("OPENROUTER_API_KEY")),
            ("vllm", None, "/v1", None),
            ("ollama", None, "/v1", None),
        ];
        for (name, host, base, env) in table {
            let b = backend(json!({"schema":"openai","preset":name}));
            assert_eq!(b.preset.unwrap().as_str(), name);
            assert_eq!(b.host.as_deref(), host, "{name}");
            assert_eq!(b.base_path(), base, "{name}");
            assert_eq!(b.credential.as_ref().map(|c| c.env.as_str()), env, "{name}");
            assert_eq!(b.credential_header(), "authorization");
            assert_eq!(b.credential_prefix(), "Bearer ");
        }
    }

    #[test]
    fn explicit_fields_override_the_preset() {
        let b = backend(json!({"schema":"openai","preset":"mistral","host":"eu.mistral.example","base_path":"/proxy/v1",
            "credential":{"env":"MY_KEY","header":"x-key"}}));
        assert_eq!(b.host.as_deref(), Some("eu.mistral.example"));
        assert_eq!(b.base_path(), "/proxy/v1");
        let c = b.credential.as_ref().unwrap();
        assert_eq!((c.env.as_str(), b.credential_header(), b.credential_prefix()), ("MY_KEY", "x-key", ""));
        let plain = backend(json!({"schema":"openai"}));
        assert!(plain.host.is_none() && plain.credential.is_none());
        assert_eq!(plain.base_path(), "/v1");
    }

    #[test]
    fn deepseek_request_and_answer_pass_as_recorded() {
        let rec = interaction(DEEPSEEK, 0);
        assert_eq!(rec["request"]["uri"], "https://api.deepseek.com/chat/completions");
        let b = backend(json!({"schema":"openai","preset":"deepseek"}));
        assert_eq!(format!("https://{}{}/chat/completions", b.host.as_deref().unwrap(), b.base_path()), "https://api.deepseek.com/chat/completions");
        let want = &rec["request"]["parsed_body"];
        let (body, stream) = chat_body(b.preset, want.to_string().as_bytes(), "deepseek-reasoner").unwrap();
        assert!(!stream);
        assert_eq!(&serde_json::from_slice::<Value>(&body).unwrap(), want);
        // The answer already says reasoning_content; only DeepSeek's own usage fields go, their
        // cache hits carried as OpenAI's cached_tokens.
        let recorded = &rec["response"]["parsed_body"];
        let mut out: Value = serde_json::from_slice(&normalise_answer(recorded.to_string().as_bytes(), 0)).unwrap();
        assert_eq!(out["usage"], json!({"prompt_tokens":12,"completion_tokens":789,"total_tokens":801,
            "prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":415}}));
        assert_eq!(recorded["usage"]["prompt_cache_miss_tokens"], 12);
        let mut want = recorded.clone();
        want["usage"] = out["usage"].take();
        out["usage"] = want["usage"].clone();
        assert_eq!(out, want, "everything else as recorded");

        let rec = interaction(DEEPSEEK_STREAM, 0);
        let want = &rec["request"]["parsed_body"];
        assert_eq!(want["stream_options"]["include_usage"], true);
        let (body, stream) = chat_body(Some(Preset::Deepseek), br#"{"model":"r","messages":[{"role":"user","content":"Hello"}],"stream":true}"#, "deepseek-reasoner").unwrap();
        assert!(stream);
        assert_eq!(&serde_json::from_slice::<Value>(&body).unwrap(), want, "usage asked for, as recorded");
        let sse = rec["response"]["body"]["string"].as_str().unwrap();
        assert!(sse.contains("\"reasoning_content\":\"H\""), "DeepSeek streams reasoning_content natively");
    }

    /// DeepSeek puts the usage the gateway asked for on its finishing chunk: the preset's stream
    /// translator moves it into a usage-only chunk (which the gateway drops for a client that did
    /// not ask), everything else of the recording passes unchanged.
    #[test]
    fn deepseek_stream_usage_moves_into_the_usage_only_chunk() {
        use crate::providers::testutil::{assert_split_invariant, events};
        let rec = interaction(DEEPSEEK_STREAM, 0);
        let sse = rec["response"]["body"]["string"].as_str().unwrap();
        let (want, _) = events(sse.replace("\r\n", "\n").as_bytes());
        let recorded_usage = want.last().unwrap()["usage"].clone();
        assert!(recorded_usage.is_object() && !want.last().unwrap()["choices"].as_array().unwrap().is_empty());
        let make = || -> Box<dyn crate::providers::StreamTranslate> { Box::new(stream_translator(Preset::Deepseek)) };
        let out = assert_split_invariant(&make, sse.as_bytes());
        let (evs, done) = events(&out);
        assert!(done);
        let (last, rest) = evs.split_last().unwrap();
        assert_eq!(last["choices"], json!([]));
        // DeepSeek's own usage fields go (their cache hits are OpenAI's cached_tokens).
        let mut want_usage = recorded_usage.clone();
        let extra = want_usage.as_object_mut().unwrap();
        assert_eq!(extra.remove("prompt_cache_hit_tokens"), Some(json!(0)));
        assert_eq!(extra.remove("prompt_cache_miss_tokens"), Some(json!(6)));
        assert_eq!(last["usage"], want_usage);
        assert_eq!((&last["id"], &last["model"]), (&want[0]["id"], &want[0]["model"]));
        assert_eq!(rest.len(), want.len());
        for (got, w) in rest.iter().zip(&want) {
            assert!(got["usage"].is_null(), "{got}");
            assert_eq!(got["choices"], w["choices"]);
        }
    }

    #[test]
    fn ollama_v1_reasoning_is_renamed() {
        let rec = interaction(OLLAMA_V1, 0);
        let answer = rec["response"]["parsed_body"].to_string();
        let reasoning = rec["response"]["parsed_body"]["choices"][0]["message"]["reasoning"].as_str().unwrap().to_string();
        let out: Value = serde_json::from_slice(&normalise_answer(answer.as_bytes(), 0)).unwrap();
        let m = &out["choices"][0]["message"];
        assert_eq!(m["reasoning_content"], reasoning.as_str());
        assert!(m.get("reasoning").is_none());
        assert_eq!(m["content"], "{ \"city\": \"Paris\", \"country\": \"France\" }");
        assert_eq!(out["usage"]["completion_tokens"], 15);
        assert_eq!(out["id"], "chatcmpl-150");
        // The recorded request (response_format json_schema) passes unchanged apart from usage on streams.
        let want = &rec["request"]["parsed_body"];
        let (body, _) = chat_body(Some(Preset::Ollama), want.to_string().as_bytes(), "qwen3:0.6b").unwrap();
        assert_eq!(&serde_json::from_slice::<Value>(&body).unwrap(), want);
    }

    #[test]
    fn openrouter_and_groq_reasoning_and_object_arguments() {
        let answer = json!({"id":"gen-1","object":"chat.completion","model":"deepseek/deepseek-r1","choices":[{"index":0,"finish_reason":"tool_calls",
            "message":{"role":"assistant","content":"","reasoning":"Think.","reasoning_details":[{"type":"reasoning.text","text":"Think."}],
            "tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":{"a":1}}}]}}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}});
        let out: Value = serde_json::from_slice(&normalise_answer(answer.to_string().as_bytes(), 0)).unwrap();
        let m = &out["choices"][0]["message"];
        assert_eq!(m["reasoning_content"], "Think.");
        assert!(m.get("reasoning").is_none());
        assert!(m.get("reasoning_details").is_none(), "not an OpenAI message field");
        assert_eq!(m["tool_calls"][0]["function"]["arguments"], "{\"a\":1}");
        // reasoning_content present: it wins, `reasoning` goes.
        let both = json!({"choices":[{"message":{"content":"x","reasoning_content":"a","reasoning":"b"}}]});
        let out: Value = serde_json::from_slice(&normalise_answer(both.to_string().as_bytes(), 0)).unwrap();
        assert_eq!(out["choices"][0]["message"], json!({"role":"assistant","content":"x","reasoning_content":"a"}));
        // Not JSON: untouched.
        assert_eq!(normalise_answer(b"<html>", 0), b"<html>");
    }

    #[test]
    fn mistral_whole_answer_with_thinking_chunks() {
        let answer = json!({"id":"m1","object":"chat.completion","model":"magistral-medium-latest","created":1,
            "choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","tool_calls":null,"content":[
                {"type":"thinking","thinking":[{"type":"text","text":"Okay, the user "},{"type":"text","text":"asks."}]},
                {"type":"text","text":"To cross "},{"type":"text","text":"safely, look."}]}}],
            "usage":{"prompt_tokens":10,"completion_tokens":232,"total_tokens":242}});
        let out: Value = serde_json::from_slice(&normalise_answer_0(answer.to_string().as_bytes())).unwrap();
        let m = &out["choices"][0]["message"];
        assert_eq!(m["content"], "To cross safely, look.");
        assert_eq!(m["reasoning_content"], "Okay, the user asks.");
        assert_eq!(out["usage"]["total_tokens"], 242);
        // Only thinking next to tool calls: null content.
        let calls = json!({"choices":[{"message":{"content":[{"type":"thinking","thinking":"t"}],
            "tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]}}]});
        let out: Value = serde_json::from_slice(&normalise_answer_0(calls.to_string().as_bytes())).unwrap();
        assert!(out["choices"][0]["message"]["content"].is_null());
        assert_eq!(out["choices"][0]["message"]["reasoning_content"], "t");
        // Only thinking, no tool calls: empty string content.
        let only = json!({"choices":[{"message":{"content":[{"type":"thinking","thinking":[]}]}}]});
        let out: Value = serde_json::from_slice(&normalise_answer_0(only.to_string().as_bytes())).unwrap();
        assert_eq!(out["choices"][0]["message"]["content"], "");
    }

    #[test]
    fn mistral_requests_keep_only_mistral_fields() {
        let rec = interaction(MISTRAL, 0);
        let want = &rec["request"]["parsed_body"];
        let (body, stream) = chat_body(Some(Preset::Mistral), br#"{"model":"magistral","messages":[{"role":"user","content":"How do I cross the street?"}],"stream":true,"stream_options":{"include_usage":true}}"#, "magistral-medium-latest").unwrap();
        assert!(stream);
        assert_eq!(&serde_json::from_slice::<Value>(&body).unwrap(), want, "exactly the recorded body: no stream_options");

        let (body, _) = chat_body(Some(Preset::Mistral), json!({"model":"x","messages":[
                {"role":"developer","content":"Be brief."},
                {"role":"user","content":"hi","name":"bob"},
                {"role":"assistant","content":"ok","reasoning_content":"r","refusal":null,"tool_calls":[{"id":"a","type":"function","function":{"name":"f","arguments":"{}"}}]},
                {"role":"tool","tool_call_id":"a","content":"1","name":"f"}],
            "max_tokens":5,"max_completion_tokens":50,"seed":7,"user":"u","logprobs":true,"temperature":0.2,"top_p":0.9,
            "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],"tool_choice":"required",
            "response_format":{"type":"json_object"},"parallel_tool_calls":false,"store":true,"service_tier":"auto"}).to_string().as_bytes(), "mistral-large-latest").unwrap();
        let got: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(got["model"], "mistral-large-latest");
        assert_eq!(got["max_tokens"], 50);
        assert_eq!(got["random_seed"], 7);
        assert_eq!(got["temperature"], 0.2);
        assert_eq!(got["tool_choice"], "required");
        assert_eq!(got["parallel_tool_calls"], false);
        for k in got.as_object().unwrap().keys() {
            assert!(MISTRAL_CHAT_FIELDS.contains(&k.as_str()), "{k}");
        }
        assert_eq!(
            got["messages"],
            json!([
                {"role":"system","content":"Be brief."},
                {"role":"user","content":"hi"},
                {"role":"assistant","content":"ok","tool_calls":[{"id":"a","type":"function","function":{"name":"f","arguments":"{}"}}]},
                {"role":"tool","tool_call_id":"a","content":"1","name":"f"}
            ])
        );
        let e = chat_body(Some(Preset::Mistral), b"{oops", "m").unwrap_err();
        assert_eq!(e.status, 400);
    }

    #[test]
    fn embeddings_bodies() {
        let body = embeddings_body(Some(Preset::Mistral), br#"{"model":"e","input":["a"],"dimensions":256,"user":"u","encoding_format":"float"}"#, "mistral-embed").unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), json!({"model":"mistral-embed","input":["a"],"output_dimension":256,"encoding_format":"float"}));
        let body = embeddings_body(Some(Preset::Together), br#"{"model":"e","input":"a","dimensions":8}"#, "m").unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), json!({"model":"m","input":"a","dimensions":8}));
    }
}

#[cfg(test)]
mod dispatch_tests {
    use super::Preset;
    use crate::providers::testutil::{backend, backend_error, upstream, CREATED};
    use crate::providers::{self, Operation};
    use serde_json::{json, Value};

    #[test]
    fn presets_through_the_dispatch() {
        let mistral = backend(json!({"schema":"openai","preset":"mistral"}));
        let d = providers::Dialect::from(&mistral);
        assert_eq!(d.preset, Some(Preset::Mistral));
        let up = upstream(Operation::Chat, &mistral, &json!({"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"seed":1}), "magistral-small-latest").unwrap();
        assert_eq!(up.path, "/v1/chat/completions");
        let body: Value = serde_json::from_slice(&up.body).unwrap();
        assert!(body.get("stream_options").is_none() && body["random_seed"] == 1);
        assert!(providers::stream_translator(d, &up.hints, CREATED).is_some(), "Mistral streams are rewritten");
        let emb = upstream(Operation::Embeddings, &mistral, &json!({"model":"e","input":"hi","dimensions":3}), "mistral-embed").unwrap();
        assert_eq!(emb.path, "/v1/embeddings");
        assert!(!providers::translates_responses(d, &emb.hints), "embeddings pass through");

        let deepseek = backend(json!({"schema":"openai","preset":"deepseek"}));
        let up = upstream(Operation::Chat, &deepseek, &json!({"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}), "deepseek-reasoner").unwrap();
        assert_eq!(up.path, "/chat/completions");
        let d = providers::Dialect::from(&deepseek);
        assert!(providers::stream_translator(d, &up.hints, CREATED).is_some(), "usage moved to the usage-only chunk");
        assert!(providers::translates_responses(d, &up.hints), "every preset's answers are made OpenAI-exact");

        let openrouter = backend(json!({"schema":"openai","preset":"openrouter"}));
        let d = providers::Dialect::from(&openrouter);
        let up = upstream(Operation::Chat, &openrouter, &json!({"model":"m","messages":[{"role":"user","content":"hi"}]}), "deepseek/deepseek-r1").unwrap();
        assert_eq!(up.path, "/api/v1/chat/completions");
        assert!(providers::translates_responses(d, &up.hints));
        assert!(providers::stream_translator(d, &up.hints, CREATED).is_some(), "stream deltas made OpenAI-exact too");
        let out: Value = serde_json::from_slice(&providers::response_body(d, &up.hints,
            br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"4","reasoning":"2+2"}}]}"#, CREATED).unwrap()).unwrap();
        assert_eq!(out["choices"][0]["message"]["reasoning_content"], "2+2");

        // A plain openai backend keeps zero-copy passthrough both ways.
        let plain = backend(json!({"schema":"openai"}));
        let d = providers::Dialect::from(&plain);
        let up = upstream(Operation::Chat, &plain, &json!({"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}), "gpt-4o").unwrap();
        assert!(!providers::translates_responses(d, &up.hints) && providers::stream_translator(d, &up.hints, CREATED).is_none());
    }

    #[test]
    fn configuration_checks() {
        assert!(backend_error(json!({"schema":"cohere","preset":"mistral"})).unwrap().contains("preset"));
        assert!(backend_error(json!({"schema":"openai","preset":"nope"})).is_some());
        assert!(backend_error(json!({"schema":"openai","base_path":"v1"})).is_some());
        assert_eq!(backend(json!({"schema":"openai","base_path":""})).base_path(), "", "an empty base path is allowed");
        for (schema, base) in [("cohere", ""), ("ollama", ""), ("azure_openai", "")] {
            let b = backend(json!({"schema": schema}));
            assert_eq!(b.schema.as_str(), schema);
            assert_eq!(b.base_path(), base);
            assert_eq!(b.schema.default_base_path(), base);
        }
    }
}
