//! The OpenAI Embeddings contract: `POST /v1/embeddings`.

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::chat::parse_json_body;
use super::error::ApiError;
use super::limits::RequestLimits;

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub input: EmbeddingInput,
    #[serde(default)]
    pub encoding_format: Option<EncodingFormat>,
    #[serde(default)]
    pub dimensions: Option<u32>,
    #[serde(default)]
    pub user: Option<String>,
}

/// A string, an array of strings, or pre-tokenised input (array of token ids, or arrays of them).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<u32>),
    TokenBatches(Vec<Vec<u32>>),
}

impl EmbeddingInput {
    /// The texts to embed; `None` for token-id input, which only OpenAI-compatible backends accept.
    pub fn texts(&self) -> Option<Vec<&str>> {
        match self {
            EmbeddingInput::One(s) => Some(vec![s.as_str()]),
            EmbeddingInput::Many(v) => Some(v.iter().map(String::as_str).collect()),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            EmbeddingInput::One(_) => 1,
            EmbeddingInput::Many(v) => v.len(),
            EmbeddingInput::Tokens(v) => usize::from(!v.is_empty()),
            EmbeddingInput::TokenBatches(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    Float,
    Base64,
}

/// Parses and validates an embeddings body, without limits (for bodies the gateway has checked
/// with [`parse_embeddings_request_with`]).
pub fn parse_embeddings_request(body: &[u8]) -> Result<EmbeddingsRequest, ApiError> {
    parse_embeddings_request_with(body, &RequestLimits::UNLIMITED)
}

/// [`parse_embeddings_request`] within the gateway's limits on what a client controls.
pub fn parse_embeddings_request_with(body: &[u8], limits: &RequestLimits) -> Result<EmbeddingsRequest, ApiError> {
    limits.check_body(body)?;
    let req: EmbeddingsRequest = parse_json_body(body)?;
    if req.model.is_empty() {
        return Err(ApiError::invalid_param("model", "`model` must be a non-empty string."));
    }
    limits.check_string("model", Some(&req.model), limits.max_model_bytes)?;
    limits.check_string("user", req.user.as_deref(), limits.max_user_bytes)?;
    if req.input.is_empty() {
        return Err(ApiError::invalid_param("input", "`input` must not be empty."));
    }
    limits.check_len("input", req.input.len(), limits.max_embedding_inputs)?;
    if let Some(texts) = req.input.texts() {
        if texts.iter().any(|t| t.is_empty()) {
            return Err(ApiError::invalid_param("input", "`input` must not contain empty strings."));
        }
    }
    if req.dimensions == Some(0) {
        return Err(ApiError::invalid_param("dimensions", "`dimensions` must be at least 1."));
    }
    Ok(req)
}

#[derive(Debug, Serialize)]
pub struct EmbeddingsResponse<'a> {
    pub object: &'static str,
    pub data: Vec<Embedding>,
    pub model: &'a str,
    pub usage: EmbeddingsUsage,
}

#[derive(Debug, Serialize)]
pub struct Embedding {
    pub object: &'static str,
    pub index: u32,
    pub embedding: EmbeddingVector,
}

/// Floats, or the base64 of their little-endian `f32` bytes (what OpenAI sends for `base64`).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

impl EmbeddingVector {
    pub fn new(values: Vec<f32>, format: EncodingFormat) -> Self {
        match format {
            EncodingFormat::Float => EmbeddingVector::Float(values),
            EncodingFormat::Base64 => {
                let mut bytes = Vec::with_capacity(values.len() * 4);
                for v in values {
                    bytes.extend_from_slice(&v.to_le_bytes());
                }
                EmbeddingVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
        }
    }
}

#[derive(Debug, Serialize, Default)]
pub struct EmbeddingsUsage {
    pub prompt_tokens: u64,
    pub total_tokens: u64,
}

/// Builds the OpenAI list body from vectors in input order. A value that is not a finite `f32`
/// (an upstream number out of range, which JSON would carry as `null`) is a 502: clients expect
/// numbers.
pub fn embeddings_response_json(model: &str, vectors: Vec<Vec<f32>>, format: EncodingFormat, prompt_tokens: u64) -> Result<Vec<u8>, crate::api::ApiError> {
    if vectors.iter().flatten().any(|x| !x.is_finite()) {
        return Err(crate::api::ApiError::gateway(
            502,
            "The upstream provider returned an embedding value that is not a finite 32-bit floating-point number.",
        ));
    }
    let resp = EmbeddingsResponse {
        object: "list",
        data: vectors
            .into_iter()
            .enumerate()
            .map(|(i, v)| Embedding { object: "embedding", index: i as u32, embedding: EmbeddingVector::new(v, format) })
            .collect(),
        model,
        usage: EmbeddingsUsage { prompt_tokens, total_tokens: prompt_tokens },
    };
    Ok(serde_json::to_vec(&resp).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_input_shapes() {
        for body in [
            r#"{"model":"m","input":"hi"}"#,
            r#"{"model":"m","input":["a","b"]}"#,
            r#"{"model":"m","input":[1,2,3]}"#,
            r#"{"model":"m","input":[[1],[2]]}"#,
        ] {
            parse_embeddings_request(body.as_bytes()).unwrap();
        }
        let r = parse_embeddings_request(br#"{"model":"m","input":["a","b"],"encoding_format":"base64","dimensions":8}"#).unwrap();
        assert_eq!(r.input.texts().unwrap(), vec!["a", "b"]);
        assert_eq!(r.encoding_format, Some(EncodingFormat::Base64));
    }

    #[test]
    fn rejects_bad_input_naming_the_param() {
        for (body, param) in [
            (r#"{"input":"x"}"#, "model"),
            (r#"{"model":"m"}"#, "input"),
            (r#"{"model":"m","input":[]}"#, "input"),
            (r#"{"model":"m","input":[""]}"#, "input"),
            (r#"{"model":"m","input":{"a":1}}"#, "input"),
            (r#"{"model":"m","input":"x","encoding_format":"hex"}"#, "encoding_format"),
            (r#"{"model":"m","input":"x","dimensions":0}"#, "dimensions"),
        ] {
            let e = parse_embeddings_request(body.as_bytes()).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
        }
    }

    #[test]
    fn non_finite_values_are_refused_not_written_as_null() {
        // Found by the `response` fuzz target: Cohere's `0.0466e086` overflows f32 and was
        // answered as `null` inside the vector.
        for format in [EncodingFormat::Float, EncodingFormat::Base64] {
            for bad in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
                let e = embeddings_response_json("m", vec![vec![0.5], vec![1.0, bad]], format, 1).unwrap_err();
                assert_eq!((e.status, e.code.as_deref()), (502, Some("gateway_error")));
            }
        }
        assert!(embeddings_response_json("m", vec![vec![f32::MAX, f32::MIN, 0.0]], EncodingFormat::Float, 1).is_ok());
    }

    #[test]
    fn base64_is_little_endian_f32() {
        let out = embeddings_response_json("m", vec![vec![1.0, -2.5]], EncodingFormat::Base64, 3).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let b64 = v["data"][0]["embedding"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        assert_eq!(bytes.len(), 8);
        assert_eq!(f32::from_le_bytes(bytes[0..4].try_into().unwrap()), 1.0);
        assert_eq!(f32::from_le_bytes(bytes[4..8].try_into().unwrap()), -2.5);
        assert_eq!(v["usage"]["prompt_tokens"], 3);
        assert_eq!(v["object"], "list");
    }
}
