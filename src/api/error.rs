//! OpenAI-shaped errors: `{"error":{"message","type","param","code"}}` with an HTTP status.

use serde::Serialize;

/// An error the gateway answers with. Everything a client sees on failure goes through this type,
/// so the shape stays the one the `openai` SDKs parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<String>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), kind, param: None, code: None }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// 400 `invalid_request_error` naming the offending parameter.
    pub fn invalid_param(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", message).with_param(param)
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", message)
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            404,
            "invalid_request_error",
            format!("The model `{model}` does not exist or you do not have access to it."),
        )
        .with_param("model")
        .with_code("model_not_found")
    }

    pub fn not_found_path(method: &str, path: &str) -> Self {
        Self::new(404, "invalid_request_error", format!("Unknown request URL: {method} {path}."))
            .with_code("unknown_url")
    }

    pub fn method_not_allowed(method: &str, path: &str, allowed: &str) -> Self {
        Self::new(
            405,
            "invalid_request_error",
            format!("Method {method} is not allowed for {path}; use {allowed}."),
        )
        .with_code("method_not_allowed")
    }

    pub fn body_too_large(limit: usize) -> Self {
        Self::new(413, "invalid_request_error", format!("Request body exceeds the gateway limit of {limit} bytes."))
            .with_code("request_too_large")
    }

    /// The gateway itself failed (configuration, an upstream answer it cannot translate).
    pub fn gateway(status: u16, message: impl Into<String>) -> Self {
        Self::new(status, "api_error", message).with_code("gateway_error")
    }

    /// Reads an OpenAI-shaped error body back (a provider's translated error, a local reply of the
    /// backend filter). A body that is not one (Envoy's plain-text failures) becomes the message.
    /// The `type` follows `status`; `code` and `param` are kept.
    pub fn from_openai_body(status: u16, body: &[u8]) -> ApiError {
        #[derive(serde::Deserialize)]
        struct Env {
            error: Inner,
        }
        #[derive(serde::Deserialize)]
        struct Inner {
            #[serde(default)]
            message: Option<String>,
            #[serde(default)]
            param: Option<String>,
            #[serde(default)]
            code: Option<serde_json::Value>,
        }
        match serde_json::from_slice::<Env>(body) {
            Ok(env) => {
                let mut e = ApiError::new(status, kind_for_status(status), env.error.message.unwrap_or_default());
                e.param = env.error.param;
                e.code = env.error.code.and_then(|c| match c {
                    serde_json::Value::String(s) => Some(s),
                    serde_json::Value::Null => None,
                    other => Some(other.to_string()),
                });
                e
            }
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                let message = if text.is_empty() {
                    format!("The gateway could not get an answer from the provider (HTTP {status}).")
                } else {
                    format!("The gateway could not get an answer from the provider: {text}")
                };
                ApiError::new(status, kind_for_status(status), message).with_code("upstream_unavailable")
            }
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        let env = Envelope {
            error: Body {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code.as_deref(),
            },
        };
        // Serialising plain strings cannot fail; fall back to a fixed body rather than panic.
        serde_json::to_vec(&env).unwrap_or_else(|_| br#"{"error":{"message":"internal error","type":"api_error","param":null,"code":null}}"#.to_vec())
    }
}

/// The OpenAI error `type` conventionally used for an HTTP status.
pub fn kind_for_status(status: u16) -> &'static str {
    match status {
        400 | 404 | 405 | 409 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        503 | 529 => "service_unavailable_error",
        _ => "api_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_matches_openai() {
        let e = ApiError::invalid_param("messages", "`messages` must not be empty");
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "messages");
        assert!(v["error"]["code"].is_null());
        assert_eq!(v["error"]["message"], "`messages` must not be empty");
    }

    #[test]
    fn model_not_found_has_code() {
        let v: serde_json::Value = serde_json::from_slice(&ApiError::model_not_found("x").to_json()).unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(ApiError::model_not_found("x").status, 404);
    }
}
