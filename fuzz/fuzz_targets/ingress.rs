//! Ingress APIs other than OpenAI's (`src/api/ingress.rs`): the Anthropic Messages request into the
//! canonical chat request, and canonical answers (whole and streamed, split anywhere) back into
//! Messages.
//!
//! Input: `[mode][n][n chunk sizes][bytes]`; `mode` % 3: 0 the bytes are a Messages request, 1 a
//! canonical whole answer, 2 a canonical stream.
//!
//! Properties: a refused request is a 400 or 413 whose body is Anthropic's error shape; an accepted
//! one is a valid canonical chat request (and anything it could not carry is a 400); a whole answer
//! becomes a `message` object or a 502; a stream becomes well-formed Messages SSE (`event:` +
//! `data:` JSON whose `type` is the event's name) that starts with `message_start` or `error`, ends
//! with exactly one `message_stop` or `error` and nothing after it, opens and closes content blocks
//! in order and only sends deltas to the open block, whatever the split; output is linear in the
//! input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use switchyard::api::chat::parse_chat_request;
use switchyard::api::ingress::Ingress;
use switchyard::api::limits::RequestLimits;
use switchyard::api::messages;
use switchyard_fuzz::*;

#[global_allocator]
static ALLOC: Counting = Counting;

fn check_anthropic_error(body: &[u8], what: &str) {
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| panic!("{what}: error body is not JSON: {e}"));
    assert_eq!(v["type"], "error", "{what}");
    assert!(v["error"]["type"].is_string() && v["error"]["message"].is_string(), "{what}: {v}");
}

fn check_stream(out: &[u8]) {
    assert!(out.ends_with(b"\n\n"), "Messages SSE does not end an event");
    let text = std::str::from_utf8(out).expect("Messages SSE is UTF-8");
    let mut names = Vec::new();
    let mut open: Option<u64> = None;
    let mut next = 0u64;
    for block in text.split("\n\n").filter(|b| !b.is_empty()) {
        let mut lines = block.split('\n');
        let name = lines.next().and_then(|l| l.strip_prefix("event: ")).expect("an event line first");
        let data = lines.next().and_then(|l| l.strip_prefix("data: ")).expect("then one data line");
        assert!(lines.next().is_none(), "one data line per event");
        let v: Value = serde_json::from_str(data).expect("event data is JSON");
        assert_eq!(v["type"].as_str(), Some(name), "the event's name is its type");
        match name {
            "content_block_start" => {
                assert!(open.is_none(), "a block opens while another is open");
                assert_eq!(v["index"].as_u64(), Some(next), "blocks are numbered in order");
                open = Some(next);
                next += 1;
            }
            "content_block_delta" => assert_eq!(v["index"].as_u64(), open, "a delta for a block that is not open"),
            "content_block_stop" => {
                assert_eq!(v["index"].as_u64(), open, "a stop for a block that is not open");
                open = None;
            }
            "message_delta" | "message_stop" => assert!(open.is_none(), "the message ends with a block open"),
            "error" => check_anthropic_error(data.as_bytes(), "error event"),
            "message_start" | "ping" => {}
            other => panic!("unknown event {other}"),
        }
        names.push(name);
    }
    assert!(matches!(names.first(), Some(&("message_start" | "error"))), "starts with {:?}", names.first());
    let ends = names.iter().filter(|n| matches!(**n, "message_stop" | "error")).count();
    assert_eq!(ends, 1, "exactly one end: {names:?}");
    assert!(matches!(names.last(), Some(&("message_stop" | "error"))), "nothing after the end");
}

fuzz_target!(|data: &[u8]| {
    let [mode, n, rest @ ..] = data else { return };
    let n = (*n as usize % 8).min(rest.len());
    let (sizes, body) = rest.split_at(n);
    let bound = linear_bound(body.len(), 64, 64 * 1024);
    match mode % 3 {
        0 => match Ingress::Messages.to_canonical(body, &RequestLimits::default()) {
            Ok(c) => {
                parse_chat_request(&c.body).expect("the canonical body is a valid chat request");
                if let Some(e) = c.untranslatable {
                    assert_eq!(e.status, 400);
                }
                assert!(c.body.len() <= bound, "canonical body {} for {} input bytes", c.body.len(), body.len());
            }
            Err(e) => {
                assert!(matches!(e.status, 400 | 413), "status {}", e.status);
                check_anthropic_error(&Ingress::Messages.error_json(&e), "refusal");
            }
        },
        1 => match messages::answer_json(body) {
            Ok(out) => {
                let v: Value = serde_json::from_slice(&out).expect("a message is JSON");
                assert_eq!(v["type"], "message");
                assert!(v["content"].is_array() && v["usage"]["output_tokens"].is_u64(), "{v}");
            }
            Err(e) => assert_eq!(e.status, 502),
        },
        _ => {
            let mut w = Ingress::Messages.answer_translator(true, b"{}", "fuzz", 1).expect("a translator");
            let mut out = Vec::new();
            for piece in chunks(body, sizes) {
                w.push(piece, &mut out);
            }
            w.finish(&mut out);
            check_stream(&out);
            assert!(out.len() <= bound * 4, "stream output {} for {} input bytes", out.len(), body.len());
        }
    }
});
