//! The OpenAI Responses API front door (`src/api/responses.rs`): the request parser and its
//! canonical translation, the chat → Responses answer and event-stream writers, and the read-back of
//! OpenAI's own Responses answers and streams into canonical chat.
//!
//! Input: `[mode][n][n chunk sizes][bytes]`; `mode % 3`: 0 a client's Responses body, 1 a chat SSE
//! stream to write as Responses events (and a whole chat answer to write as a Response), 2 an
//! OpenAI Responses body / event stream to read back.
//!
//! Properties: a refusal is a 400 OpenAI error; an accepted request's canonical body is a chat
//! request the gateway's own parser accepts; the written stream is `event:`/`data:` SSE whose data
//! are JSON objects typed as the event name, numbered 0, 1, 2… and ending with exactly one terminal
//! event (`response.completed`, `response.incomplete` or `response.failed`) — the same for the whole
//! body and for the fuzzer's chunks; nothing panics; output and peak heap are linear in the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use switchyard::api::chat::parse_chat_request;
use switchyard::api::limits::DEFAULT_LIMITS;
use switchyard::api::responses::{chat_from_response, parse_responses_request, to_canonical, AnswerWriter, ChatFromResponses};
use switchyard::providers::StreamTranslate;
use switchyard_fuzz::*;

#[global_allocator]
static ALLOC: Counting = Counting;

const ORIGINAL: &[u8] = br#"{"model":"m","input":"hi","stream":true,"instructions":"be brief","tools":[{"type":"function","name":"f"}]}"#;

fn write_stream(pieces: &[&[u8]]) -> Vec<u8> {
    let mut w = AnswerWriter::new(true, ORIGINAL, "fuzz", 1_700_000_000);
    let mut out = Vec::new();
    for p in pieces {
        w.push(p, &mut out);
    }
    w.finish(&mut out);
    out
}

/// Checks the Responses event stream; returns its events.
fn check_events(out: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(out).expect("the stream is UTF-8");
    assert!(text.ends_with("\n\n"), "ends on an event boundary");
    let mut events = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.is_empty()) {
        let mut lines = block.split('\n');
        let name = lines.next().and_then(|l| l.strip_prefix("event: ")).expect("an event line");
        let data = lines.next().and_then(|l| l.strip_prefix("data: ")).expect("a data line");
        assert!(lines.next().is_none(), "one data line: {block:?}");
        let v: Value = serde_json::from_str(data).expect("data is JSON");
        assert_eq!(v["type"], name, "typed as its event");
        assert_eq!(v["sequence_number"].as_u64(), Some(events.len() as u64), "numbered in order");
        events.push(v);
    }
    let terminal = |v: &Value| matches!(v["type"].as_str(), Some("response.completed" | "response.incomplete" | "response.failed"));
    assert_eq!(events.iter().filter(|v| terminal(v)).count(), 1, "one terminal event");
    assert!(terminal(events.last().expect("events")), "the terminal event is last");
    assert_eq!(events[0]["type"], "response.created");
    events
}

fuzz_target!(|data: &[u8]| {
    let [mode, n, rest @ ..] = data else { return };
    let n = (*n as usize).min(rest.len());
    let (sizes, body) = rest.split_at(n);
    let bound = linear_bound(body.len(), 64, 256 * 1024);
    let ((), peak) = peak_heap(|| match mode % 3 {
        0 => match parse_responses_request(body, &DEFAULT_LIMITS) {
            Ok(req) => {
                // A request made only of what OpenAI alone serves has no chat message; `to_canonical`
                // gives it a placeholder (checked below). Anything else is a chat request as it is.
                let only_openai_pieces = !req.openai_only.is_empty()
                    && req.chat.get("messages").and_then(Value::as_array).is_some_and(Vec::is_empty);
                if !only_openai_pieces {
                    parse_chat_request(&req.chat_body()).expect("the canonical body is a chat request");
                }
                let (canonical, untranslatable) = to_canonical(body, &DEFAULT_LIMITS).expect("accepted once, accepted twice");
                assert_eq!(untranslatable.is_some(), !req.openai_only.is_empty());
                parse_chat_request(&canonical).expect("the canonical form parses");
            }
            Err(e) => {
                assert_eq!(e.status, 400, "a parser refusal is a 400");
                let v: Value = serde_json::from_slice(&e.to_json()).expect("error JSON");
                check_error_body(&v, "responses parser");
            }
        },
        1 => {
            let whole = write_stream(&[body]);
            assert!(whole.len() <= bound, "output {} for input {}", whole.len(), body.len());
            let events = check_events(&whole);
            let split = write_stream(&chunks(body, sizes));
            assert_eq!(check_events(&split), events, "chunking changes nothing");
            let mut w = AnswerWriter::new(false, ORIGINAL, "fuzz", 1);
            if let Ok(r) = w.answer(body) {
                let v: Value = serde_json::from_slice(&r).expect("a Response is JSON");
                assert_eq!(v["object"], "response");
            }
        }
        _ => {
            if let Ok(c) = chat_from_response(body, 1) {
                let v: Value = serde_json::from_slice(&c).expect("canonical JSON");
                assert_eq!(v["object"], "chat.completion");
            }
            let run = |pieces: &[&[u8]]| {
                let mut t = ChatFromResponses::new(1);
                let mut out = Vec::new();
                for p in pieces {
                    t.push(p, &mut out);
                }
                t.finish(&mut out);
                out
            };
            let whole = run(&[body]);
            assert!(whole.len() <= bound, "output {} for input {}", whole.len(), body.len());
            let events = parse_client_sse(&whole);
            assert!(!events.is_empty(), "something always ends the canonical view");
            assert_eq!(parse_client_sse(&run(&chunks(body, sizes))), events, "chunking changes nothing");
        }
    });
    assert!(peak <= bound, "peak heap {peak} for input {}", body.len());
});
