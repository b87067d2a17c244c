//! OpenAI Chat Completions and every compatible API. The client's JSON is edited, not rebuilt, so
//! fields the gateway does not know still reach the provider.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::api::error::kind_for_status;
use crate::api::ApiError;

/// Builds the upstream body: the model renamed to what the backend serves, and usage requested on
/// streams so the gateway can account for tokens (the gateway drops that usage chunk again for a
/// client that did not ask for it).
/// Returns the body and whether the request streams.
pub fn request_body(body: &[u8], model: &str) -> Result<(Vec<u8>, bool), ApiError> {
    let mut obj: Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| ApiError::invalid_request(format!("Invalid JSON body: {e}")))?;
    obj.insert("model".into(), Value::String(model.to_string()));
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

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: Value,
}

/// Normalises an error answer from an OpenAI-compatible provider. OpenAI-shaped bodies pass as they
/// are; anything else (an HTML page from a proxy, a bare string, `{"detail":…}`) is wrapped.
pub fn map_error(status: u16, body: &[u8]) -> Vec<u8> {
    if let Ok(env) = serde_json::from_slice::<ErrorEnvelope>(body) {
        if env.error.get("message").is_some() {
            return body.to_vec();
        }
        if let Some(msg) = env.error.as_str() {
            return ApiError::new(status, kind_for_status(status), msg).to_json();
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
}
