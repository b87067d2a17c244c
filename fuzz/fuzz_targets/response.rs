//! Whole answers: every backend's answer translator (`providers::response_body`) for chat and
//! embeddings, and its error translator (`providers::error_body`, `error_status`).
//!
//! Input: `[backend][mode][upstream body]`. `mode` bit 0: embeddings; bit 1: base64 encoding;
//! bit 7: an error status (bits 2..6 pick it).
//!
//! Properties: a translated answer is JSON of the shape the OpenAI SDK reads (`chat.completion`,
//! an embeddings `list`, or an OpenAI error with a 4xx/5xx status); an error answer always becomes
//! an OpenAI error body; the output and the peak heap are linear in the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use switchyard::api::embeddings::EncodingFormat;
use switchyard::providers::{error_body, error_status, response_body, translates_responses, Operation, ResponseHints};
use switchyard_fuzz::*;

#[global_allocator]
static ALLOC: Counting = Counting;

const STATUSES: &[u16] = &[400, 401, 403, 404, 408, 409, 413, 422, 429, 499, 500, 502, 503, 504, 529, 418];

fuzz_target!(|data: &[u8]| {
    let [sel, mode, body @ ..] = data else { return };
    let (_, b) = &backends()[*sel as usize % BACKEND_NAMES.len()];
    let op = op_from(*mode);
    let bound = linear_bound(body.len(), 16, 16 * 1024);
    if mode & 0x80 != 0 {
        let status = STATUSES[((mode >> 2) & 0x0f) as usize];
        let mapped = error_status(b.schema, status);
        assert!((400..=599).contains(&mapped), "error status {status} mapped to {mapped}");
        let (out, peak) = peak_heap(|| error_body(b.schema, status, body));
        let v: Value = serde_json::from_slice(&out).unwrap_or_else(|e| panic!("error body is not JSON ({e}): {:?}", String::from_utf8_lossy(&out)));
        check_error_body(&v, "translated error");
        assert!(out.len() <= bound && peak <= 8 * bound, "error body {} / heap {peak} for {} bytes", out.len(), body.len());
        return;
    }
    let encoding = if mode & 2 != 0 { EncodingFormat::Base64 } else { EncodingFormat::Float };
    let hints = ResponseHints { op, stream: false, encoding, model: "model-x".to_string() };
    if !translates_responses(dialect(b), &hints) {
        return; // passes through byte for byte
    }
    let (r, peak) = peak_heap(|| response_body(dialect(b), &hints, body, 1_700_000_000));
    match r {
        Ok(out) => {
            assert!(out.len() <= bound && peak <= 8 * bound, "answer {} / heap {peak} for {} bytes", out.len(), body.len());
            if b.preset.is_some() {
                // The presets normalise what needs it and leave the rest byte for byte.
                if out != body {
                    let v: Value = serde_json::from_slice(&out).expect("a normalised answer is JSON");
                    check_chat_completion_if_shaped(&v);
                }
                return;
            }
            let v: Value = serde_json::from_slice(&out).unwrap_or_else(|e| panic!("answer is not JSON ({e}): {:?}", String::from_utf8_lossy(&out)));
            match op {
                Operation::Chat => check_chat_completion(&v),
                Operation::Embeddings => check_embeddings(&v),
            }
        }
        Err(e) => {
            assert!((400..=599).contains(&e.status), "error status {}", e.status);
            let v: Value = serde_json::from_slice(&e.to_json()).expect("ApiError JSON");
            check_error_body(&v, "answer translation error");
        }
    }
});

/// A normalised answer keeps the upstream's fields; only when it claims to be a chat completion
/// does the SDK shape apply to it.
fn check_chat_completion_if_shaped(v: &Value) {
    if v.get("object").and_then(Value::as_str) == Some("chat.completion") && v.get("choices").is_some_and(Value::is_array) {
        for c in v["choices"].as_array().into_iter().flatten() {
            if let Some(m) = c.get("message") {
                let content = m.get("content");
                assert!(content.is_none_or(|c| c.is_null() || c.is_string()), "normalised content is neither string nor null: {v}");
            }
        }
    }
}
