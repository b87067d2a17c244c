//! One module per provider wire schema. Each translates an OpenAI chat request into the schema's
//! request and the schema's answer (whole or streamed) back into OpenAI's shape. This file is the
//! only place that dispatches on [`Schema`], so the filter stays schema-agnostic.

pub mod anthropic;
pub mod openai;

use crate::api::chat::{parse_chat_request, Usage};
use crate::api::embeddings::EncodingFormat;
use crate::api::ApiError;
use crate::config::{Backend, Schema, DEFAULT_ANTHROPIC_VERSION, DEFAULT_MAX_TOKENS};

/// The API operation a request performs; the gateway tells the backend filter in `x-switchyard-op`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Chat,
    Embeddings,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::Embeddings => "embeddings",
        }
    }

    pub fn parse(s: &str) -> Option<Operation> {
        match s {
            "chat" => Some(Operation::Chat),
            "embeddings" => Some(Operation::Embeddings),
            _ => None,
        }
    }
}

/// What the backend filter sends upstream for one attempt.
#[derive(Debug)]
pub struct UpstreamRequest {
    pub path: String,
    pub body: Vec<u8>,
    /// Schema-specific headers (versions, signatures), set after the generic ones.
    pub headers: Vec<(&'static str, String)>,
    pub hints: ResponseHints,
}

/// What translating the answer needs to remember about the request.
#[derive(Debug, Clone)]
pub struct ResponseHints {
    pub op: Operation,
    pub stream: bool,
    /// Embeddings: the encoding the client asked for.
    pub encoding: EncodingFormat,
    /// The model name sent upstream (for answers that do not name one).
    pub model: String,
}

impl ResponseHints {
    pub fn chat(stream: bool, model: &str) -> Self {
        ResponseHints { op: Operation::Chat, stream, encoding: EncodingFormat::Float, model: model.to_string() }
    }
}

/// Per-attempt inputs that do not come from the client's body.
pub struct AttemptContext<'a> {
    /// Model name to send upstream.
    pub model: &'a str,
    pub now_unix: u64,
}

/// A streamed answer translated chunk by chunk into OpenAI `chat.completion.chunk` SSE.
pub trait StreamTranslate {
    /// Feeds one upstream body chunk (split anywhere); appends what the client gets to `out`.
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>);
    /// Upstream ended; a stream cut short appends an error event rather than ending silently.
    fn finish(&mut self, out: &mut Vec<u8>);
    fn usage(&self) -> Option<&Usage>;
}

impl StreamTranslate for anthropic::StreamTranslator {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        anthropic::StreamTranslator::push(self, chunk, out)
    }
    fn finish(&mut self, out: &mut Vec<u8>) {
        anthropic::StreamTranslator::finish(self, out)
    }
    fn usage(&self) -> Option<&Usage> {
        anthropic::StreamTranslator::usage(self)
    }
}

/// Builds the upstream request for `backend` from the client's (already validated) body.
pub fn upstream_request(op: Operation, backend: &Backend, body: &[u8], ctx: &AttemptContext) -> Result<UpstreamRequest, ApiError> {
    match op {
        Operation::Chat => chat_request(backend, body, ctx),
        Operation::Embeddings => embeddings_request(backend, body, ctx),
    }
}

fn chat_request(backend: &Backend, body: &[u8], ctx: &AttemptContext) -> Result<UpstreamRequest, ApiError> {
    let base = backend.base_path();
    match backend.schema {
        Schema::Openai => {
            let (body, stream) = openai::request_body(body, ctx.model)?;
            let path = format!("{base}/chat/completions");
            Ok(UpstreamRequest { path, body, headers: Vec::new(), hints: ResponseHints::chat(stream, ctx.model) })
        }
        Schema::Anthropic => {
            let req = parse_chat_request(body)?;
            let body = anthropic::request_body(&req, ctx.model, backend.default_max_tokens.unwrap_or(DEFAULT_MAX_TOKENS))?;
            let version = backend.anthropic_version.clone().unwrap_or_else(|| DEFAULT_ANTHROPIC_VERSION.to_string());
            Ok(UpstreamRequest {
                path: format!("{base}/messages"),
                body,
                headers: vec![("anthropic-version", version)],
                hints: ResponseHints::chat(req.is_stream(), ctx.model),
            })
        }
    }
}

fn embeddings_request(backend: &Backend, body: &[u8], ctx: &AttemptContext) -> Result<UpstreamRequest, ApiError> {
    let base = backend.base_path();
    let encoding = crate::api::embeddings::parse_embeddings_request(body)?.encoding_format.unwrap_or(EncodingFormat::Float);
    let hints = ResponseHints { op: Operation::Embeddings, stream: false, encoding, model: ctx.model.to_string() };
    match backend.schema {
        Schema::Openai => {
            let (body, _) = openai::request_body(body, ctx.model)?;
            Ok(UpstreamRequest { path: format!("{base}/embeddings"), body, headers: Vec::new(), hints })
        }
        Schema::Anthropic => Err(unsupported(backend, "embeddings")),
    }
}

/// 400 for a capability the chosen backend lacks, naming it.
pub fn unsupported(backend: &Backend, capability: &str) -> ApiError {
    ApiError::invalid_request(format!("The `{}` backend does not support {capability}.", backend.schema.as_str()))
        .with_code("unsupported_capability")
}

/// Status the client (and Envoy's retry policy) sees for an upstream error status.
pub fn error_status(schema: Schema, status: u16) -> u16 {
    match schema {
        Schema::Openai => status,
        Schema::Anthropic => anthropic::map_status(status),
    }
}

/// An upstream error body rewritten into an OpenAI error body.
pub fn error_body(schema: Schema, status: u16, body: &[u8]) -> Vec<u8> {
    match schema {
        Schema::Openai => openai::map_error(status, body),
        Schema::Anthropic => anthropic::map_error(status, body).1,
    }
}

/// Whether a successful non-stream answer needs translating (OpenAI-compatible ones pass as they are).
pub fn translates_responses(schema: Schema, _hints: &ResponseHints) -> bool {
    !matches!(schema, Schema::Openai)
}

/// A successful non-stream answer translated into the OpenAI body for the operation.
pub fn response_body(schema: Schema, hints: &ResponseHints, body: &[u8], created: u64) -> Result<Vec<u8>, ApiError> {
    match (schema, hints.op) {
        (Schema::Openai, _) => Ok(body.to_vec()),
        (Schema::Anthropic, Operation::Chat) => anthropic::response_body(body, created),
        (Schema::Anthropic, Operation::Embeddings) => Err(ApiError::gateway(502, "unexpected embeddings answer")),
    }
}

/// The stream translator for a schema; `None` when the stream is already OpenAI SSE.
pub fn stream_translator(schema: Schema, created: u64) -> Option<Box<dyn StreamTranslate>> {
    match schema {
        Schema::Openai => None,
        Schema::Anthropic => Some(Box::new(anthropic::StreamTranslator::new(created))),
    }
}
