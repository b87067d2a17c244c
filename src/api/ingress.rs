//! Ingress APIs: which API a client spoke to the gateway, and everything that depends on it.
//!
//! The gateway has one canonical request form, OpenAI Chat Completions: model resolution, keys,
//! limits, budgets, routing rules, capabilities, guardrails, caching, failover and every backend
//! translation in `src/providers/` work on it. An ingress API other than OpenAI's is a front door
//! that translates at the two edges of the request and nowhere else:
//!
//! ```text
//! client ─(ingress API)─▶ gateway: Ingress::to_canonical ─▶ canonical OpenAI chat body ─▶ pipeline
//!                                 (the original body is kept for backends that speak the API)
//!   backend filter, per attempt:  native(schema)? → native_request (original body, model rewritten),
//!                                 answer passed back untouched, RequestState::native_answer = true
//!                                 else → the usual OpenAI → provider translation
//! client ◀─(ingress API)── gateway response side: canonical view (native answers are canonicalised
//!                                 for usage/metrics only) → AnswerTranslate → ingress JSON / SSE;
//!                                 every error (local, provider, Envoy's own) → Ingress::error_json
//! ```
//!
//! How a new ingress plugs in (this file is the only place that dispatches on [`Ingress`]):
//! 1. add a variant, its paths in [`endpoint`] and its metric/access-log `operation` label;
//! 2. write its API shape in its own file in `src/api/` (request → canonical chat body, canonical
//!    answer/stream → the API's answer/stream, its error body), host-tested from recordings;
//! 3. fill the `match`es below: [`Ingress::to_canonical`], [`Ingress::answer_translator`],
//!    [`Ingress::error_json`], [`Ingress::stream_error_event`], and — when some backend schema
//!    speaks the API natively — [`Ingress::native`], [`Ingress::native_request`] and
//!    [`Ingress::canonical_view`] (a native answer goes to the client untouched; the gateway reads its
//!    usage through the canonical view).
//!
//! The filter (`src/filter/gateway.rs`, `backend.rs`) needs no change for a new ingress beyond the
//! path table: it asks these functions.

use crate::api::chat::parse_chat_request_with;
use crate::api::limits::RequestLimits;
use crate::api::ApiError;
use crate::config::{Backend, Schema};
use crate::providers::{self, AttemptContext, Operation, StreamTranslate, UpstreamRequest};

/// The API the client spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ingress {
    /// OpenAI Chat Completions / Embeddings / Models: the canonical form, nothing to translate.
    #[default]
    OpenAi,
    /// Anthropic Messages (`POST /v1/messages`).
    Messages,
    /// OpenAI Responses (`POST /v1/responses`), stateless.
    Responses,
}

/// What a request path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub ingress: Ingress,
    /// The canonical operation the pipeline performs.
    pub op: Operation,
    /// The `operation` label of metrics and the access log.
    pub operation: &'static str,
    /// Answered by the gateway itself from the canonical request (token counting): no upstream.
    pub local: Option<Local>,
}

/// Endpoints the gateway answers itself after parsing the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// `POST /v1/messages/count_tokens`: the gateway's prompt-token estimate.
    CountTokens,
}

/// The endpoint of a (query-less, trailing-slash-less) path that takes a JSON body, if any.
pub fn endpoint(path: &str) -> Option<Endpoint> {
    let (ingress, op, operation, local) = match path {
        "/v1/chat/completions" => (Ingress::OpenAi, Operation::Chat, "chat", None),
        "/v1/embeddings" => (Ingress::OpenAi, Operation::Embeddings, "embeddings", None),
        "/v1/messages" => (Ingress::Messages, Operation::Chat, "messages", None),
        "/v1/messages/count_tokens" => (Ingress::Messages, Operation::Chat, "messages_count_tokens", Some(Local::CountTokens)),
        "/v1/responses" => (Ingress::Responses, Operation::Chat, "responses", None),
        _ => return None,
    };
    Some(Endpoint { ingress, op, operation, local })
}

/// A request in canonical form.
#[derive(Debug)]
pub struct Canonical {
    /// The OpenAI chat body the pipeline works on.
    pub body: Vec<u8>,
    /// Set when the client's request uses something the canonical form cannot carry (an
    /// Anthropic document block, a server tool…): backends that speak the ingress API natively
    /// still serve it; any other backend answers this error instead of a silently degraded request.
    pub untranslatable: Option<ApiError>,
}

/// Translates the canonical (OpenAI) answer of one request into the ingress API's shape.
pub trait AnswerTranslate {
    /// A whole successful `chat.completion` body → the ingress API's answer body.
    fn answer(&mut self, canonical: &[u8]) -> Result<Vec<u8>, ApiError>;
    /// Canonical `chat.completion.chunk` SSE bytes (split anywhere, usage chunk included, error
    /// events in OpenAI's shape) → the ingress API's stream bytes.
    fn push(&mut self, canonical: &[u8], out: &mut Vec<u8>);
    /// The canonical stream ended (after `push` of its last bytes).
    fn finish(&mut self, out: &mut Vec<u8>);
}

impl Ingress {
    /// Parses the client's body and returns its canonical form (validated against `limits` as a
    /// chat request is).
    pub fn to_canonical(self, body: &[u8], limits: &RequestLimits) -> Result<Canonical, ApiError> {
        let canonical = match self {
            Ingress::OpenAi => return Ok(Canonical { body: body.to_vec(), untranslatable: None }),
            Ingress::Messages => super::messages::to_canonical(body, limits)?,
            Ingress::Responses => {
                let (body, untranslatable) = super::responses::to_canonical(body, limits)?;
                Canonical { body, untranslatable }
            }
        };
        // The canonical body goes through the same checks as a client's chat request would.
        parse_chat_request_with(&canonical.body, limits).map_err(|e| self.rename_param(e))?;
        Ok(canonical)
    }

    /// Errors found on the canonical body name canonical fields; say so in the client's terms.
    fn rename_param(self, mut e: ApiError) -> ApiError {
        match (self, e.param.as_deref()) {
            (Ingress::Messages, Some(p)) => e.param = Some(super::messages::client_param(p)),
            (Ingress::Responses, Some(p)) => e.param = Some(super::responses::client_param(p)),
            _ => {}
        }
        e
    }

    /// The answer translator for one request, `None` for the canonical API. `original` is the
    /// client's body (a Responses object repeats its settings), `id_base` a fresh random string for
    /// the ids an answer needs (`resp_<id_base>`), `now` the time in Unix seconds.
    pub fn answer_translator(self, stream: bool, original: &[u8], id_base: &str, now: u64) -> Option<Box<dyn AnswerTranslate>> {
        match self {
            Ingress::OpenAi => None,
            Ingress::Messages => Some(Box::new(super::messages::AnswerWriter::new(stream))),
            Ingress::Responses => Some(Box::new(super::responses::AnswerWriter::new(stream, original, id_base, now))),
        }
    }

    /// An error body in the ingress API's shape (the status is the error's).
    pub fn error_json(self, e: &ApiError) -> Vec<u8> {
        match self {
            // The Responses API's errors are OpenAI's.
            Ingress::OpenAi | Ingress::Responses => e.to_json(),
            Ingress::Messages => super::messages::error_json(e),
        }
    }

    /// A canonical error body (OpenAI-shaped, as providers' errors are translated and Envoy's own
    /// failures rewritten) → the ingress API's error body. Bodies that are not OpenAI errors are
    /// wrapped whole as the message.
    pub fn convert_error_body(self, status: u16, body: &[u8]) -> Vec<u8> {
        match self {
            Ingress::OpenAi => body.to_vec(),
            _ => self.error_json(&ApiError::from_openai_body(status, body)),
        }
    }

    /// The stream error event (complete SSE event bytes) for an error in the middle of a stream.
    pub fn stream_error_event(self, e: &ApiError) -> Vec<u8> {
        match self {
            Ingress::OpenAi => {
                let mut out = Vec::new();
                crate::stream::sse::write_raw_event(&mut out, &e.to_json());
                out
            }
            Ingress::Messages => super::messages::error_event(e),
            Ingress::Responses => super::responses::error_event(e),
        }
    }

    /// Whether `backend` speaks this ingress API natively (then it gets the client's own body,
    /// model rewritten, and its answer goes back untouched).
    pub fn native(self, backend: &Backend) -> bool {
        match self {
            Ingress::OpenAi => false,
            Ingress::Messages => backend.schema == Schema::Anthropic,
            // OpenAI itself (a plain `openai` backend; presets are other providers' chat APIs).
            Ingress::Responses => backend.schema == Schema::Openai && backend.preset.is_none(),
        }
    }

    /// The upstream request of a native backend from the client's original body.
    pub fn native_request(self, backend: &Backend, original: &[u8], ctx: &AttemptContext) -> Result<UpstreamRequest, ApiError> {
        match self {
            Ingress::Messages => providers::anthropic::native_request(backend, original, ctx),
            Ingress::Responses => providers::openai::responses_request(backend, original, ctx),
            Ingress::OpenAi => Err(ApiError::gateway(500, "no native request for the canonical API")),
        }
    }

    /// How the gateway reads a native answer (for usage, metrics and budgets; the client gets the
    /// native bytes): a whole answer's canonical body, or a stream translator into canonical SSE.
    pub fn canonical_view(self) -> Option<CanonicalView> {
        match self {
            Ingress::OpenAi => None,
            Ingress::Messages => Some(CanonicalView {
                answer: |body, created| providers::anthropic::response_body(body, created),
                stream: |created| Box::new(providers::anthropic::StreamTranslator::new(created)),
            }),
            Ingress::Responses => Some(CanonicalView {
                answer: super::responses::chat_from_response,
                stream: |created| Box::new(super::responses::ChatFromResponses::new(created)),
            }),
        }
    }
}

/// See [`Ingress::canonical_view`].
pub struct CanonicalView {
    pub answer: fn(&[u8], u64) -> Result<Vec<u8>, ApiError>,
    pub stream: fn(u64) -> Box<dyn StreamTranslate>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(endpoint("/v1/chat/completions").map(|e| (e.ingress, e.operation)), Some((Ingress::OpenAi, "chat")));
        assert_eq!(endpoint("/v1/messages").map(|e| (e.ingress, e.op, e.local)), Some((Ingress::Messages, Operation::Chat, None)));
        assert_eq!(endpoint("/v1/messages/count_tokens").and_then(|e| e.local), Some(Local::CountTokens));
        assert!(endpoint("/v1/message").is_none() && endpoint("/v1/models").is_none());
    }

    #[test]
    fn responses_path_and_native_backends() {
        use crate::providers::testutil::backend;
        assert_eq!(endpoint("/v1/responses").map(|e| (e.ingress, e.op, e.operation)), Some((Ingress::Responses, Operation::Chat, "responses")));
        let native = |b: serde_json::Value| Ingress::Responses.native(&backend(b));
        assert!(native(serde_json::json!({"schema": "openai", "base_path": "/v1"})), "OpenAI itself");
        assert!(!native(serde_json::json!({"schema": "openai", "preset": "mistral"})), "a preset speaks chat only");
        assert!(!native(serde_json::json!({"schema": "anthropic"})) && !native(serde_json::json!({"schema": "azure_openai", "host": "x"})));
        let e = ApiError::invalid_param("input", "x");
        assert_eq!(Ingress::Responses.error_json(&e), e.to_json(), "the Responses API's errors are OpenAI's");
    }

    #[test]
    fn openai_errors_become_the_ingress_shape() {
        let openai = br#"{"error":{"message":"slow down","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}"#;
        assert_eq!(Ingress::OpenAi.convert_error_body(429, openai), openai.to_vec());
        let v: serde_json::Value = serde_json::from_slice(&Ingress::Messages.convert_error_body(429, openai)).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["error"]["message"], "slow down");
        // Envoy's plain-text failure.
        let v: serde_json::Value = serde_json::from_slice(&Ingress::Messages.convert_error_body(503, b"no healthy upstream")).unwrap();
        assert_eq!(v["error"]["type"], "overloaded_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("no healthy upstream"));
    }
}
