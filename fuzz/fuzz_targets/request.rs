//! Client requests: the chat and embeddings parsers and validators, the request estimate, and the
//! request translation for every backend (`providers::upstream_request`, every schema and preset,
//! Bedrock also signed with SigV4).
//!
//! Input: `[backend][mode][client body]`; `mode` bit 0: embeddings.
//!
//! Properties: a refusal is an OpenAI error (400 for the parsers); a translated request has a JSON
//! body, a path that starts with `/` and holds no whitespace or control bytes, and header values
//! without line breaks; its size and the peak heap are linear in the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use switchyard::api::chat::parse_chat_request;
use switchyard::api::embeddings::parse_embeddings_request;
use switchyard::api::ApiError;
use switchyard::policy::estimate::RequestEstimate;
use switchyard::providers::{upstream_request, AttemptContext, Operation};
use switchyard_fuzz::*;

#[global_allocator]
static ALLOC: Counting = Counting;

fn check_refusal(e: &ApiError, what: &str) {
    assert!((400..=599).contains(&e.status), "{what}: status {}", e.status);
    let v: Value = serde_json::from_slice(&e.to_json()).expect("ApiError JSON");
    check_error_body(&v, what);
}

fuzz_target!(|data: &[u8]| {
    let [sel, mode, body @ ..] = data else { return };
    let (name, b) = &backends()[*sel as usize % BACKEND_NAMES.len()];
    let op = op_from(*mode);
    let bound = linear_bound(body.len(), 16, 64 * 1024);

    let (valid, peak) = peak_heap(|| match op {
        Operation::Chat => match parse_chat_request(body) {
            Ok(req) => {
                let est = RequestEstimate::from_chat(&req);
                assert!(est.choices >= 1);
                let _ = (req.wants_stream_usage(), req.output_token_limit());
                true
            }
            Err(e) => {
                assert_eq!(e.status, 400, "a parser refusal is a 400");
                check_refusal(&e, "chat parser");
                false
            }
        },
        Operation::Embeddings => match parse_embeddings_request(body) {
            Ok(req) => {
                let _ = (req.input.texts(), req.input.len());
                true
            }
            Err(e) => {
                assert_eq!(e.status, 400, "a parser refusal is a 400");
                check_refusal(&e, "embeddings parser");
                false
            }
        },
    });
    assert!(peak <= 64 * bound, "parser peak heap {peak} for {} bytes", body.len());
    if !valid {
        return; // the gateway refuses it; no backend sees it
    }

    let aws = (*name == "bedrock-signed").then(aws_credentials);
    let ctx = AttemptContext { model: "model-x", now_unix: 1_700_000_000, aws };
    let (r, peak) = peak_heap(|| upstream_request(op, b, body, &ctx));
    match r {
        Ok(up) => {
            assert!(up.path.starts_with('/'), "{name}: path {:?}", up.path);
            assert!(up.path.bytes().all(|c| c.is_ascii_graphic()), "{name}: path with whitespace or control bytes: {:?}", up.path);
            for (h, v) in &up.headers {
                assert!(!v.bytes().any(|c| c == b'\r' || c == b'\n' || c == 0), "{name}: header {h} holds a line break");
            }
            if let Err(e) = serde_json::from_slice::<Value>(&up.body) {
                panic!("{name}: upstream body is not JSON ({e}): {:?}", String::from_utf8_lossy(&up.body));
            }
            assert!(up.body.len() <= bound, "{name}: upstream body {} for {} client bytes", up.body.len(), body.len());
            assert!(peak <= 64 * bound, "{name}: peak heap {peak} for {} bytes", body.len());
            assert_eq!(up.hints.op, op);
        }
        Err(e) => check_refusal(&e, "request translation"),
    }
});
