//! Azure OpenAI (`schema: "azure_openai"`): OpenAI's bodies on Azure's paths.
//!
//! `POST {base}/openai/deployments/{deployment}/chat/completions?api-version={api_version}` (and
//! `/embeddings`), where the deployment is the model name sent upstream and `api_version` comes from
//! the backend configuration (default [`DEFAULT_API_VERSION`]). The credential goes in `api-key`
//! (no prefix) unless the backend configures another header (Entra ID: `authorization` with
//! `Bearer `). Bodies are OpenAI's, edited by [`super::openai::request_body`]; answers, streams and
//! errors are OpenAI-shaped already, so they pass through untouched — Azure's
//! `prompt_filter_results` / `content_filter_results` included.

/// The GA `api-version` used when the backend sets none (it accepts `stream_options`).
pub const DEFAULT_API_VERSION: &str = "2024-10-21";

/// The upstream path for `operation` (`chat/completions` or `embeddings`), with the deployment
/// and the api-version percent-encoded.
pub fn path(base: &str, deployment: &str, operation: &str, api_version: Option<&str>) -> String {
    use super::util::percent_encode;
    format!(
        "{base}/openai/deployments/{}/{operation}?api-version={}",
        percent_encode(deployment),
        percent_encode(api_version.filter(|v| !v.is_empty()).unwrap_or(DEFAULT_API_VERSION))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::openai;
    use crate::providers::testutil::interaction;
    use serde_json::{json, Value};

    const BASIC: &str = include_str!("../../tests/fixtures/azure/azure-chat-basic.yaml");

    #[test]
    fn recorded_request_path_and_body() {
        let rec = interaction(BASIC, 0);
        let req = &rec["request"];
        let url = req["url"].as_str().unwrap();
        let version = req["form"]["api-version"][0].as_str().unwrap();
        assert_eq!(version, "2024-12-01-preview");
        let p = path("", "gpt-5-nano", "chat/completions", Some(version));
        assert_eq!(format!("https://{}{}", req["host"].as_str().unwrap(), p), format!("{url}?api-version={version}"));

        let want: Value = serde_json::from_str(req["body"].as_str().unwrap()).unwrap();
        let (body, stream) = openai::request_body(br#"{"model":"nano","messages":[{"role":"user","content":"Hello!"}]}"#, "gpt-5-nano").unwrap();
        assert!(!stream);
        assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), want, "OpenAI's body, model = deployment");
    }

    #[test]
    fn default_version_base_path_and_encoding() {
        assert_eq!(path("", "gpt-4o", "chat/completions", None), "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21");
        assert_eq!(path("/proxy", "emb", "embeddings", Some("")), "/proxy/openai/deployments/emb/embeddings?api-version=2024-10-21");
        assert_eq!(
            path("", "my model/v2", "chat/completions", Some("2025-01-01-preview&x=1")),
            "/openai/deployments/my%20model%2Fv2/chat/completions?api-version=2025-01-01-preview%26x%3D1"
        );
    }

    #[test]
    fn recorded_answer_is_openai_shaped_with_content_filter_fields() {
        let rec = interaction(BASIC, 0);
        let body: Value = serde_json::from_str(rec["response"]["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["object"], "chat.completion");
        assert!(body["choices"][0]["message"]["content"].as_str().unwrap().starts_with("Hi there!"));
        assert_eq!(body["choices"][0]["content_filter_results"], json!({}));
        assert_eq!(body["prompt_filter_results"][0]["prompt_index"], 0);
        // The usage the gateway accounts with reads from it despite Azure's extra fields.
        let usage: crate::api::chat::Usage = serde_json::from_value(body["usage"].clone()).unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens, usage.total_tokens), (8, 271, 279));
        assert_eq!(usage.completion_tokens_details.unwrap().reasoning_tokens, 192);
    }

    #[test]
    fn content_filter_errors_pass_as_they_are() {
        let filtered = br#"{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy.","type":null,"param":"prompt","code":"content_filter","status":400,"innererror":{"code":"ResponsibleAIPolicyViolation","content_filter_result":{"hate":{"filtered":true,"severity":"high"}}}}}"#;
        assert_eq!(openai::map_error(400, filtered), filtered.to_vec());
    }
}

#[cfg(test)]
mod dispatch_tests {
    use crate::config::Schema;
    use crate::providers::testutil::{backend, backend_error, upstream, CREATED};
    use crate::providers::{self, Operation};
    use serde_json::{json, Value};

    #[test]
    fn azure_backend_end_to_end() {
        let b = backend(json!({"schema":"azure_openai","host":"res.openai.azure.com","credential":{"env":"AZURE_OPENAI_API_KEY"}}));
        assert_eq!(b.schema.as_str(), "azure_openai");
        assert_eq!((b.credential_header(), b.credential_prefix()), ("api-key", ""));
        assert_eq!(b.base_path(), "");
        let up = upstream(Operation::Chat, &b, &json!({"model":"fast","messages":[{"role":"user","content":"Hello!"}],"stream":true}), "gpt-4o-mini").unwrap();
        assert_eq!(up.path, "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21");
        assert!(up.headers.is_empty());
        let body: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert!(up.hints.stream);
        let d = providers::Dialect::from(&b);
        assert!(providers::stream_translator(d, &up.hints, CREATED).is_none(), "Azure streams are OpenAI SSE");
        assert!(!providers::translates_responses(d, &up.hints));
        assert_eq!(providers::response_body(d, &up.hints, b"{\"x\":1}", CREATED).unwrap(), b"{\"x\":1}");
        assert_eq!(providers::error_status(Schema::AzureOpenai, 429), 429);
        assert_eq!(providers::error_status(Schema::AzureOpenai, 503), 503);

        let b = backend(json!({"schema":"azure_openai","api_version":"2025-04-01-preview","base_path":"/gw",
            "credential":{"env":"AZURE_TOKEN","header":"authorization"}}));
        assert_eq!(b.credential_prefix(), "Bearer ", "Entra ID tokens");
        let up = upstream(Operation::Embeddings, &b, &json!({"model":"e","input":"hi"}), "text-embedding-3-small").unwrap();
        assert_eq!(up.path, "/gw/openai/deployments/text-embedding-3-small/embeddings?api-version=2025-04-01-preview");
        assert!(backend_error(json!({"schema":"openai","api_version":"2024-10-21"})).unwrap().contains("api_version"));
    }
}
