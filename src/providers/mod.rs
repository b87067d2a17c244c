//! One module per provider wire schema. Each translates an OpenAI chat request into the schema's
//! request and the schema's answer (whole or streamed) back into OpenAI's shape. This file is the
//! only place that dispatches on [`Schema`], so the filter stays schema-agnostic.

pub mod anthropic;
pub mod openai;

use crate::api::chat::{parse_chat_request, Usage};
use crate::api::ApiError;
use crate::config::{Backend, Schema, DEFAULT_ANTHROPIC_VERSION, DEFAULT_MAX_TOKENS};

/// What the backend filter sends upstream for one attempt.
#[derive(Debug)]
pub struct UpstreamRequest {
    pub path: String,
    pub body: Vec<u8>,
    pub stream: bool,
    /// Schema-specific headers (versions, signatures), set after the generic ones.
    pub headers: Vec<(&'static str, String)>,
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

/// Builds the upstream chat request for `backend` from the client's (already validated) body.
pub fn chat_request(backend: &Backend, body: &[u8], ctx: &AttemptContext) -> Result<UpstreamRequest, ApiError> {
    let path = backend.chat_path();
    match backend.schema {
        Schema::Openai => {
            let (body, stream) = openai::request_body(body, ctx.model)?;
            Ok(UpstreamRequest { path, body, stream, headers: Vec::new() })
        }
        Schema::Anthropic => {
            let req = parse_chat_request(body)?;
            let body = anthropic::request_body(&req, ctx.model, backend.default_max_tokens.unwrap_or(DEFAULT_MAX_TOKENS))?;
            let version = backend.anthropic_version.clone().unwrap_or_else(|| DEFAULT_ANTHROPIC_VERSION.to_string());
            Ok(UpstreamRequest { path, body, stream: req.is_stream(), headers: vec![("anthropic-version", version)] })
        }
    }
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
pub fn translates_responses(schema: Schema) -> bool {
    !matches!(schema, Schema::Openai)
}

/// A successful non-stream answer translated into a `chat.completion` body.
pub fn response_body(schema: Schema, body: &[u8], created: u64) -> Result<Vec<u8>, ApiError> {
    match schema {
        Schema::Openai => Ok(body.to_vec()),
        Schema::Anthropic => anthropic::response_body(body, created),
    }
}

/// The stream translator for a schema; `None` when the stream is already OpenAI SSE.
pub fn stream_translator(schema: Schema, created: u64) -> Option<Box<dyn StreamTranslate>> {
    match schema {
        Schema::Openai => None,
        Schema::Anthropic => Some(Box::new(anthropic::StreamTranslator::new(created))),
    }
}
