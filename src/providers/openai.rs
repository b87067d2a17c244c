//! OpenAI Chat Completions and every compatible API. The client's JSON is edited, not rebuilt, so
//! fields the gateway does not know still reach the provider.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::api::error::kind_for_status;
use crate::api::ApiError;

/// Request fields that carry another provider's own features (`"anthropic": {…}`,
/// `"bedrock": {…}`, `"gemini": {…}`). They are meant to be ignored by backends that lack those
/// features, but OpenAI rejects fields it does not define ("Unrecognized request argument"), so
/// they are removed from what OpenAI-compatible backends get.
pub const PROVIDER_NAMESPACES: &[&str] = &[super::anthropic::NAMESPACE, super::bedrock::NAMESPACE, "gemini"];

/// Builds the upstream body: the model renamed to what the backend serves, other providers'
/// namespaces ([`PROVIDER_NAMESPACES`]) removed, and usage requested on streams so the gateway can
/// account for tokens (the gateway drops that usage chunk again for a client that did not ask for
/// it).
/// Returns the body and whether the request streams.
pub fn request_body(body: &[u8], model: &str) -> Result<(Vec<u8>, bool), ApiError> {
    // Most requests need no edit (same model name; a stream that already asks for usage): pass
    // the bytes through without building and re-serialising a JSON tree.
    if let Ok(peek) = serde_json::from_slice::<Peek>(body) {
        let stream = peek.stream == Some(true);
        let usage_asked = peek.stream_options.and_then(|o| o.include_usage) == Some(true);
        let foreign = peek.anthropic.is_some() || peek.bedrock.is_some() || peek.gemini.is_some();
        if peek.model == model && !foreign && (!stream || usage_asked) {
            return Ok((body.to_vec(), stream));
        }
    }
    let mut obj: Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| ApiError::invalid_request(format!("Invalid JSON body: {e}")))?;
    obj.insert("model".into(), Value::String(model.to_string()));
    for ns in PROVIDER_NAMESPACES {
        obj.remove(*ns);
    }
    let stream = obj.get("stream").and_then(Value::as_bool) == Some(true);
    if stream {
        match obj.get_mut("stream_options") {
            Some(Value::Object(opts)) => {
                opts.insert("include_usage".into(), Value::Bool(true));
            }
            _ => {
                let mut opts = Map::new();
                opts.insert("include_usage".into(), Value::Bool(true));
                obj.insert("stream_options".into(), Value::Object(opts));
            }
        }
    }
    let out = serde_json::to_vec(&obj).map_err(|e| ApiError::gateway(500, format!("could not encode request: {e}")))?;
    Ok((out, stream))
}

/// A Responses API request for OpenAI's own `/responses` (the client spoke the Responses API and
/// the backend is OpenAI itself): the client's body with only the model renamed, so that built-in
/// tools, stored items and everything else the gateway does not translate keep working.
pub fn responses_request(backend: &crate::config::Backend, original: &[u8], ctx: &super::AttemptContext) -> Result<super::UpstreamRequest, ApiError> {
    #[derive(Deserialize)]
    struct Head<'a> {
        #[serde(borrow)]
        model: std::borrow::Cow<'a, str>,
        #[serde(default)]
        stream: Option<bool>,
    }
    let head: Head = serde_json::from_slice(original).map_err(|e| ApiError::invalid_request(format!("Invalid JSON body: {e}")))?;
    let stream = head.stream == Some(true);
    let body = if head.model == ctx.model {
        original.to_vec()
    } else {
        let mut obj: Map<String, Value> =
            serde_json::from_slice(original).map_err(|e| ApiError::invalid_request(format!("Invalid JSON body: {e}")))?;
        obj.insert("model".into(), Value::String(ctx.model.to_string()));
        serde_json::to_vec(&obj).map_err(|e| ApiError::gateway(500, format!("could not encode request: {e}")))?
    };
    let path = format!("{}/responses", backend.base_path());
    Ok(super::UpstreamRequest { path, body, headers: Vec::new(), hints: super::ResponseHints::chat(stream, ctx.model) })
}

/// The fields that decide whether a body needs editing; the rest is skipped without allocating.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow)]
    model: std::borrow::Cow<'a, str>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<PeekStreamOptions>,
    #[serde(default)]
    anthropic: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    bedrock: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    gemini: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct PeekStreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: Value,
}

/// Errors of compatible providers without OpenAI's envelope: Mistral's
/// `{"object":"error","message":…,"type":…,"code":…}` (where `message` may be an object of
/// validation details) and FastAPI-style `{"detail": …}` (vLLM and other servers).
#[derive(Deserialize)]
struct FlatError {
    #[serde(default)]
    message: Option<Value>,
    #[serde(default)]
    detail: Option<Value>,
    #[serde(default)]
    code: Option<Value>,
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(_) | Value::Array(_) => Some(v.to_string()),
        _ => None,
    }
}

/// Normalises an error answer from an OpenAI-compatible provider. OpenAI-shaped bodies pass as they
/// are; anything else (an HTML page from a proxy, a bare string, `{"detail":…}`) is wrapped.
pub fn map_error(status: u16, body: &[u8]) -> Vec<u8> {
    // Bytes that are not UTF-8 are not JSON: never passed on as they are.
    if let std::borrow::Cow::Owned(text) = String::from_utf8_lossy(body) {
        return map_error(status, text.as_bytes());
    }
    if let Ok(mut env) = serde_json::from_slice::<ErrorEnvelope>(body) {
        if let Some(e) = env.error.as_object_mut().filter(|e| e.get("message").is_some_and(Value::is_string)) {
            // OpenAI's own `type` may be null (Azure's content filter errors).
            let text_or_null = |v: Option<&Value>| matches!(v, Some(Value::Null | Value::String(_)));
            if text_or_null(e.get("type")) && ["param", "code"].iter().all(|k| e.get(*k).is_none() || text_or_null(e.get(*k))) {
                return body.to_vec();
            }
            // An envelope that is almost OpenAI's (no `type`, a numeric `code`): the same fields,
            // made what the SDKs read.
            if !text_or_null(e.get("type")) {
                e.insert("type".into(), Value::String(kind_for_status(status).into()));
            }
            for k in ["param", "code"] {
                match e.get(k) {
                    None | Some(Value::Null | Value::String(_)) => {}
                    Some(Value::Number(n)) => {
                        let n = n.to_string();
                        e.insert(k.into(), Value::String(n));
                    }
                    Some(_) => {
                        e.insert(k.into(), Value::Null);
                    }
                }
            }
            return serde_json::to_vec(&env.error).map_or_else(|_| body.to_vec(), |inner| [&b"{\"error\":"[..], &inner, b"}"].concat());
        }
        if let Some(msg) = env.error.get("message").map(|m| m.to_string()) {
            return ApiError::new(status, kind_for_status(status), msg).to_json();
        }
        if let Some(msg) = env.error.as_str() {
            return ApiError::new(status, kind_for_status(status), msg).to_json();
        }
    }
    if let Ok(flat) = serde_json::from_slice::<FlatError>(body) {
        if let Some(message) = flat.message.as_ref().and_then(text_of).or_else(|| flat.detail.as_ref().and_then(text_of)) {
            let e = ApiError::new(status, kind_for_status(status), message);
            let e = match flat.code {
                Some(Value::String(c)) if !c.is_empty() => e.with_code(c),
                Some(Value::Number(n)) => e.with_code(n.to_string()),
                _ => e,
            };
            return e.to_json();
        }
    }
    let text = String::from_utf8_lossy(body);
    let snippet: String = text.trim().chars().take(500).collect();
    let message = if snippet.is_empty() {
        format!("The upstream provider answered HTTP {status}.")
    } else {
        format!("The upstream provider answered HTTP {status}: {snippet}")
    };
    ApiError::new(status, kind_for_status(status), message).with_code(format!("upstream_{status}")).to_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_requests_pass_with_only_the_model_renamed() {
        use crate::providers::testutil::{backend, CREATED};
        let b = backend(serde_json::json!({"schema": "openai", "base_path": "/v1"}));
        let ctx = |model| crate::providers::AttemptContext { model, now_unix: CREATED, aws: None };
        let body = br#"{"model":"gpt-4.1","input":"news?","tools":[{"type":"web_search"}],"store":true,"stream":true}"#;
        let up = responses_request(&b, body, &ctx("gpt-4.1")).unwrap();
        assert_eq!((up.path.as_str(), up.body.as_slice(), up.hints.stream), ("/v1/responses", &body[..], true));
        let up = responses_request(&b, body, &ctx("gpt-4.1-2025-04-14")).unwrap();
        let mut want: Value = serde_json::from_slice(body).unwrap();
        want["model"] = "gpt-4.1-2025-04-14".into();
        assert_eq!(serde_json::from_slice::<Value>(&up.body).unwrap(), want);
        assert!(responses_request(&b, b"{", &ctx("m")).is_err());
    }

    #[test]
    fn bodies_that_need_no_edit_pass_byte_for_byte() {
        let body = br#"{"model":"m", "messages":[{"role":"user","content":"x"}],"seed":1}"#;
        assert_eq!(request_body(body, "m").unwrap(), (body.to_vec(), false));
        let s = br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;
        assert_eq!(request_body(s, "m").unwrap(), (s.to_vec(), true));
        // A rename, a stream without usage and a foreign namespace all need the edit.
        assert_ne!(request_body(body, "n").unwrap().0, body.to_vec());
        let s = br#"{"model":"m","stream":true,"messages":[]}"#;
        assert_ne!(request_body(s, "m").unwrap().0, s.to_vec());
        let g = br#"{"model":"m","gemini":{},"messages":[]}"#;
        assert_ne!(request_body(g, "m").unwrap().0, g.to_vec());
    }

    #[test]
    fn renames_model_and_keeps_unknown_fields() {
        let (out, stream) = request_body(br#"{"model":"fast","messages":[],"logit_bias":{"1":2},"seed":7}"#, "gpt-4o-mini").unwrap();
        assert!(!stream);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "gpt-4o-mini");
        assert_eq!(v["logit_bias"]["1"], 2);
        assert_eq!(v["seed"], 7);
        assert!(v.get("stream_options").is_none());
    }

    #[test]
    fn other_providers_namespaces_are_removed() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"say \"anthropic\""}],
            "anthropic":{"thinking":{"type":"enabled","budget_tokens":2048}},"gemini":{"safetySettings":[]},
            "bedrock":{"guardrailConfig":{}},"logit_bias":{"1":2},"metadata":{"anthropic":"kept"}}"#;
        let v: Value = serde_json::from_slice(&request_body(body, "gpt-4o-mini").unwrap().0).unwrap();
        for ns in ["anthropic", "gemini", "bedrock"] {
            assert!(v.get(ns).is_none(), "{ns} is not sent to an OpenAI-compatible backend");
        }
        assert_eq!(v["logit_bias"]["1"], 2, "other unknown fields still pass");
        assert_eq!(v["metadata"]["anthropic"], "kept", "only top-level fields are namespaces");
        assert_eq!(v["messages"][0]["content"], "say \"anthropic\"");
        // Azure and the presets that pass OpenAI's bodies through use the same function.
        let b = crate::providers::testutil::backend(serde_json::json!({"schema":"openai","preset":"openrouter"}));
        let up = crate::providers::testutil::upstream(
            crate::providers::Operation::Chat,
            &b,
            &serde_json::json!({"model":"m","messages":[{"role":"user","content":"hi"}],"anthropic":{"top_k":5}}),
            "x",
        )
        .unwrap();
        assert!(serde_json::from_slice::<Value>(&up.body).unwrap().get("anthropic").is_none());
    }

    #[test]
    fn streams_always_ask_for_usage() {
        let v: Value = serde_json::from_slice(&request_body(br#"{"model":"m","stream":true}"#, "m").unwrap().0).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        let v: Value = serde_json::from_slice(
            &request_body(br#"{"model":"m","stream":true,"stream_options":{"include_usage":false,"x":1}}"#, "m").unwrap().0,
        )
        .unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["x"], 1);
    }

    #[test]
    fn openai_errors_pass_and_others_are_wrapped() {
        let recorded = br#"{"error":{"message":"Unsupported value","type":"invalid_request_error","param":"messages[0].role","code":"unsupported_value"}}"#;
        assert_eq!(map_error(400, recorded), recorded.to_vec());
        let v: Value = serde_json::from_slice(&map_error(502, b"<html>Bad Gateway</html>")).unwrap();
        assert_eq!(v["error"]["type"], "api_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("Bad Gateway"));
        let v: Value = serde_json::from_slice(&map_error(429, br#"{"error":"slow down"}"#)).unwrap();
        assert_eq!(v["error"]["message"], "slow down");
        assert_eq!(v["error"]["type"], "rate_limit_error");
    }

    #[test]
    fn error_bodies_that_are_not_utf8_are_not_passed_on() {
        // Found by the `response` fuzz target: an OpenAI-shaped envelope with a stray non-UTF-8
        // byte outside `error` passed byte for byte, and is not JSON.
        let body = b"{\"error\":{\"message\":\"slow\",\"type\":\"rate_limit_error\"},\"request_id\":\"r\xff\"}";
        let out = map_error(429, body);
        let v: Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!((v["error"]["message"].as_str(), v["error"]["type"].as_str()), (Some("slow"), Some("rate_limit_error")));
        let v: Value = serde_json::from_slice(&map_error(502, b"\xfe\xff<html>")).expect("JSON");
        assert!(v["error"]["message"].as_str().unwrap().contains("<html>"));
    }

    #[test]
    fn almost_openai_error_envelopes_get_the_full_shape() {
        // Found by the `response` fuzz target: an envelope without `type` passed byte for byte.
        let no_type = br#"{"error":{"code":"unsupported_parameter","message":"Unsupported parameter"}}"#;
        let v: Value = serde_json::from_slice(&map_error(400, no_type)).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "unsupported_parameter");
        assert_eq!(v["error"]["message"], "Unsupported parameter");
        let numeric = br#"{"error":{"message":"slow","type":"rate_limit","code":429,"param":{"x":1}}}"#;
        let v: Value = serde_json::from_slice(&map_error(429, numeric)).unwrap();
        assert_eq!((v["error"]["code"].as_str(), v["error"]["param"].is_null()), (Some("429"), true));
        // A `message` that is not text is not passed as if it were.
        let v: Value = serde_json::from_slice(&map_error(500, br#"{"error":{"message":{"a":1}}}"#)).unwrap();
        assert!(v["error"]["message"].as_str().unwrap().contains("\"a\""));
        assert_eq!(v["error"]["type"], "api_error");
    }

    #[test]
    fn mistral_and_fastapi_errors_are_wrapped_with_their_message() {
        // Mistral's 422 for a field it does not define (shape as reported by Mistral API users).
        let mistral = br#"{"object":"error","message":{"detail":[{"type":"extra_forbidden","loc":["body","stream_options","include_usage"],"msg":"Extra inputs are not permitted","input":true}]},"type":"invalid_request_error","param":null,"code":null}"#;
        let v: Value = serde_json::from_slice(&map_error(422, mistral)).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("extra_forbidden"));
        let v: Value = serde_json::from_slice(&map_error(429, br#"{"object":"error","message":"Requests rate limit exceeded","type":"rate_limited","param":null,"code":"1300"}"#)).unwrap();
        assert_eq!(v["error"]["message"], "Requests rate limit exceeded");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["error"]["code"], "1300");
        let v: Value = serde_json::from_slice(&map_error(404, br#"{"detail":"Not Found"}"#)).unwrap();
        assert_eq!(v["error"]["message"], "Not Found");
        assert!(v["error"]["code"].is_null());
    }
}
