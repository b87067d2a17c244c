//! Token *estimates*, for charging a request before the provider says what it really used.
//!
//! No tokenizer runs in the gateway (each provider has its own, and they are megabytes), so the
//! count is a heuristic: ASCII text at about 4 characters per token (OpenAI's own rule of thumb
//! for English), every non-ASCII character as one token (CJK text is close to one token per
//! character; accented Latin text is over-counted, which errs on the safe side), plus a fixed
//! overhead per message (role and separators: OpenAI's cookbook counts 3-4) and per image
//! (OpenAI bills a 512×512 tile at 170 tokens plus 85; a high-detail image at 765 or more).
//! Estimates only decide admission and reservations; the real usage replaces them when the
//! response ends.

use std::borrow::Cow;

use serde::Deserialize;

use crate::api::chat::{ChatRequest, Content, ContentPart, ResponseFormat};

/// The parts of a stream chunk that carry generated text (borrowed unless JSON-escaped).
#[derive(Deserialize)]
struct MeterChunk<'a> {
    #[serde(borrow, default)]
    choices: Option<Vec<MeterChoice<'a>>>,
}

#[derive(Deserialize)]
struct MeterChoice<'a> {
    #[serde(borrow, default)]
    delta: Option<MeterDelta<'a>>,
}

#[derive(Deserialize)]
struct MeterDelta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<MeterToolCall<'a>>>,
}

#[derive(Deserialize)]
struct MeterToolCall<'a> {
    #[serde(borrow, default)]
    function: Option<MeterFunction<'a>>,
}

#[derive(Deserialize)]
struct MeterFunction<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

/// Tokens added per message for its role and framing.
pub const PER_MESSAGE_OVERHEAD: u64 = 4;
/// Tokens that prime every reply.
pub const PER_REQUEST_OVERHEAD: u64 = 3;
/// Tokens assumed for an image part (`detail: low` costs 85).
pub const PER_IMAGE_TOKENS: u64 = 765;
pub const PER_LOW_DETAIL_IMAGE_TOKENS: u64 = 85;
/// Tokens assumed for an audio or file part, whose size the body does not tell.
pub const PER_OTHER_PART_TOKENS: u64 = 1000;

/// Estimated tokens of a piece of text.
pub fn estimate_text_tokens(text: &str) -> u64 {
    let (ascii, other) = count_chars(text);
    ascii.div_ceil(4) + other
}

fn count_chars(text: &str) -> (u64, u64) {
    let ascii = text.bytes().filter(u8::is_ascii).count() as u64;
    // Non-ASCII characters: count their leading bytes (not continuation bytes 10xxxxxx).
    let other = text.bytes().filter(|b| !b.is_ascii() && (b & 0xC0) != 0x80).count() as u64;
    (ascii, other)
}

/// Estimated prompt tokens of a chat request: message text, tool calls and results, tool
/// definitions and the response schema.
pub fn estimate_prompt_tokens(req: &ChatRequest) -> u64 {
    let mut tokens = PER_REQUEST_OVERHEAD;
    for m in &req.messages {
        tokens += PER_MESSAGE_OVERHEAD;
        if let Some(name) = &m.name {
            tokens += estimate_text_tokens(name) + 1;
        }
        match &m.content {
            Some(Content::Text(s)) => tokens += estimate_text_tokens(s),
            Some(Content::Parts(parts)) => {
                for p in parts {
                    tokens += match p {
                        ContentPart::Text { text } => estimate_text_tokens(text),
                        ContentPart::Refusal { refusal } => estimate_text_tokens(refusal),
                        ContentPart::ImageUrl { image_url } if image_url.detail.as_deref() == Some("low") => {
                            PER_LOW_DETAIL_IMAGE_TOKENS
                        }
                        ContentPart::ImageUrl { .. } => PER_IMAGE_TOKENS,
                        ContentPart::InputAudio { .. } | ContentPart::File { .. } => PER_OTHER_PART_TOKENS,
                    };
                }
            }
            None => {}
        }
        for c in m.tool_calls.iter().flatten() {
            tokens += estimate_text_tokens(&c.function.name) + estimate_text_tokens(&c.function.arguments) + 3;
        }
        if let Some(r) = &m.reasoning_content {
            tokens += estimate_text_tokens(r);
        }
    }
    for t in req.tools.iter().flatten() {
        tokens += estimate_text_tokens(&t.function.name) + 8;
        if let Some(d) = &t.function.description {
            tokens += estimate_text_tokens(d);
        }
        if let Some(p) = &t.function.parameters {
            tokens += estimate_text_tokens(&p.to_string());
        }
    }
    if let Some(ResponseFormat::JsonSchema { json_schema }) = &req.response_format {
        if let Some(s) = &json_schema.schema {
            tokens += estimate_text_tokens(&s.to_string());
        }
    }
    tokens
}

/// What the policy needs to know about a request before it is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestEstimate {
    /// Estimated prompt tokens.
    pub prompt_tokens: u64,
    /// The request's own output limit (`max_completion_tokens`, else `max_tokens`), per choice.
    pub max_output_tokens: Option<u64>,
    /// Number of choices (`n`), which multiplies the output.
    pub choices: u64,
}

impl RequestEstimate {
    pub fn from_chat(req: &ChatRequest) -> Self {
        RequestEstimate {
            prompt_tokens: estimate_prompt_tokens(req),
            max_output_tokens: req.output_token_limit().map(u64::from),
            choices: req.n.unwrap_or(1).max(1) as u64,
        }
    }
}

/// Counts the output a response has produced so far, for a stream that ends without usage (cut
/// by the client or the provider): feed it the text of every delta forwarded to the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputMeter {
    ascii: u64,
    other: u64,
    deltas: u64,
}

impl OutputMeter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Text of a delta: content, reasoning, refusal, tool-call name or arguments.
    pub fn push_text(&mut self, text: &str) {
        let (a, o) = count_chars(text);
        self.ascii += a;
        self.other += o;
    }

    /// The `data:` payload of one OpenAI `chat.completion.chunk`; anything else is ignored.
    /// Parsed into borrowed fields only (no `Value` tree): it runs on every chunk of a metered stream.
    /// Returns whether `data` parsed — then it is valid JSON, and the caller need not check that again.
    pub fn push_chunk_json(&mut self, data: &str) -> bool {
        let Ok(chunk) = serde_json::from_str::<MeterChunk>(data) else { return false };
        for c in chunk.choices.iter().flatten() {
            let Some(d) = &c.delta else { continue };
            self.deltas += 1;
            for text in [&d.content, &d.reasoning_content, &d.refusal].into_iter().flatten() {
                self.push_text(text);
            }
            for tc in d.tool_calls.iter().flatten() {
                if let Some(f) = &tc.function {
                    for text in [&f.name, &f.arguments].into_iter().flatten() {
                        self.push_text(text);
                    }
                }
            }
        }
        true
    }

    /// Number of choice deltas seen.
    pub fn deltas(&self) -> u64 {
        self.deltas
    }

    /// Estimated output tokens so far.
    pub fn tokens(&self) -> u64 {
        self.ascii.div_ceil(4) + self.other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::chat::parse_chat_request;

    #[test]
    fn text_estimates() {
        assert_eq!(estimate_text_tokens(""), 0);
        assert_eq!(estimate_text_tokens("abcd"), 1);
        assert_eq!(estimate_text_tokens("abcde"), 2);
        assert_eq!(estimate_text_tokens("Hello, world! How are you?"), 7);
        assert_eq!(estimate_text_tokens("日本語"), 3);
        assert_eq!(estimate_text_tokens("café"), 2); // "caf" → 1, "é" → 1
    }

    #[test]
    fn request_estimate() {
        let req = parse_chat_request(
            br#"{"model":"m","n":2,"max_tokens":50,"messages":[
                {"role":"system","content":"You are terse."},
                {"role":"user","content":[{"type":"text","text":"What is in this image?"},{"type":"image_url","image_url":{"url":"data:x","detail":"low"}}]},
                {"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"look","arguments":"{\"q\":1}"}}]},
                {"role":"tool","tool_call_id":"c","content":"a cat"}],
              "tools":[{"type":"function","function":{"name":"look","parameters":{"type":"object"}}}]}"#,
        )
        .unwrap();
        let e = RequestEstimate::from_chat(&req);
        // 3 + 4×4 + "You are terse."(4) + "What is in this image?"(6) + 85 + (1+2+3) + "a cat"(2)
        //   + tool: "look"(1) + 8 + {"type":"object"}(5)
        assert_eq!(e.prompt_tokens, 3 + 16 + 4 + 6 + 85 + 6 + 2 + 1 + 8 + 5);
        assert_eq!(e.max_output_tokens, Some(50));
        assert_eq!(e.choices, 2);
    }

    #[test]
    fn output_meter_counts_deltas() {
        let mut m = OutputMeter::new();
        m.push_chunk_json(r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":"Hello"}}]}"#);
        m.push_chunk_json(r#"{"choices":[{"index":0,"delta":{"content":" world, again"}}]}"#);
        m.push_chunk_json(r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":"}}]}}]}"#);
        assert!(!m.push_chunk_json("[DONE]"));
        assert!(!m.push_chunk_json("not json"));
        assert_eq!(m.tokens(), (5 + 13 + 5u64).div_ceil(4));
    }
}
