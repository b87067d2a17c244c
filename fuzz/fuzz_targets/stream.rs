//! Streamed answers: every backend's stream translator (Anthropic / Gemini SSE, Cohere SSE, Ollama
//! NDJSON, Bedrock event-stream, the Mistral / DeepSeek presets), followed by the gateway's usage
//! tap, as in the filters; OpenAI-compatible streams that pass untranslated go through the tap only.
//!
//! Input: `[backend][flags][n][n chunk sizes][upstream body]`. Bedrock bodies are framed into valid
//! event-stream messages unless flag bit 1 asks for the raw bytes.
//!
//! Properties: translated output is SSE whose every `data:` is JSON (a `chat.completion.chunk` or
//! an OpenAI error) or `[DONE]`, ends with exactly one of `[DONE]` or an error event and has nothing
//! after it; the whole body and the same bytes in the fuzzer's chunks give the same events, usage
//! and tap results; output and peak heap are linear in the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::config::Schema;
use switchyard::providers::{stream_translator, ResponseHints};
use switchyard::stream::usage_tap::UsageTap;
use switchyard_fuzz::*;

#[global_allocator]
static ALLOC: Counting = Counting;

struct Run {
    translated: Vec<u8>,
    client: Vec<u8>,
    usage: Option<String>,
    tap_usage: Option<String>,
    tap_done: bool,
    tap_error: bool,
    tap_model: Option<String>,
}

fn run(backend: usize, wants_usage: bool, pieces: &[&[u8]]) -> Option<Run> {
    let (_, b) = &backends()[backend];
    let hints = ResponseHints::chat(true, "model-x");
    let mut translator = stream_translator(dialect(b), &hints, 1_700_000_000);
    let mut tap = UsageTap::new(wants_usage).with_meter();
    let (mut translated, mut client, mut mid) = (Vec::new(), Vec::new(), Vec::new());
    for p in pieces {
        mid.clear();
        match translator.as_mut() {
            Some(t) => t.push(p, &mut mid),
            None => mid.extend_from_slice(p),
        }
        translated.extend_from_slice(&mid);
        tap.push(&mid, &mut client);
    }
    mid.clear();
    if let Some(t) = translator.as_mut() {
        t.finish(&mut mid);
    }
    translated.extend_from_slice(&mid);
    tap.push(&mid, &mut client);
    tap.finish(&mut client);
    Some(Run {
        translated,
        client,
        usage: translator.as_ref().and_then(|t| t.usage()).map(|u| format!("{u:?}")),
        tap_usage: tap.usage().map(|u| format!("{u:?}")),
        tap_done: tap.completed(),
        tap_error: tap.saw_error(),
        tap_model: tap.model().map(str::to_string),
    })
}

/// The `data:` payloads of an SSE byte stream (tap output may carry upstream's non-JSON data).
fn parse_any_sse(out: &[u8]) -> Vec<String> {
    let mut v = Vec::new();
    let mut p = switchyard::stream::sse::SseParser::new();
    p.push(out, |_, d| v.push(d.to_string()));
    p.finish(|_, d| v.push(d.to_string()));
    v
}

/// Blanks `chatcmpl-…` ids (random when upstream sends none).
fn without_ids(events: Vec<String>) -> Vec<String> {
    events
        .into_iter()
        .map(|s| match s.find("chatcmpl-") {
            Some(i) => {
                let end = s[i..].find('"').map_or(s.len(), |e| i + e);
                format!("{}chatcmpl-*{}", &s[..i], &s[end..])
            }
            None => s,
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let [sel, flags, n, rest @ ..] = data else { return };
    let n = (*n as usize % 16).min(rest.len());
    let (sizes, body) = rest.split_at(n);
    let backend = *sel as usize % BACKEND_NAMES.len();
    let (_, b) = &backends()[backend];
    let framed;
    let body = if b.schema == Schema::Bedrock && flags & 2 == 0 {
        framed = bedrock_frames(body);
        &framed[..]
    } else {
        body
    };
    let wants_usage = flags & 1 == 1;
    let translates = stream_translator(dialect(b), &ResponseHints::chat(true, "model-x"), 0).is_some();

    let whole = run(backend, wants_usage, &[body]).unwrap_or_else(|| unreachable!());
    let pieces = chunks(body, sizes);
    let (chunked, peak) = peak_heap(|| run(backend, wants_usage, &pieces).unwrap_or_else(|| unreachable!()));

    // Linear output and memory.
    let bound = linear_bound(body.len(), 64, 64 * 1024);
    assert!(chunked.client.len() <= bound, "client output {} > bound {bound} for {} input bytes", chunked.client.len(), body.len());
    assert!(peak <= 4 * bound, "peak heap {peak} > {} for {} input bytes", 4 * bound, body.len());

    // Chunking does not change what the client sees or what is counted (a stream without an id
    // gets a random one: ids are blanked before comparing).
    let (wc, cc) = (without_ids(parse_any_sse(&whole.client)), without_ids(parse_any_sse(&chunked.client)));
    assert!(wc == cc, "client events differ between whole and chunked input:\n{wc:?}\n{cc:?}");
    assert_eq!(whole.usage, chunked.usage);
    assert_eq!(whole.tap_usage, chunked.tap_usage);
    assert_eq!((whole.tap_done, whole.tap_error), (chunked.tap_done, chunked.tap_error));
    assert_eq!(whole.tap_model, chunked.tap_model);

    // The client always learns how the stream ended.
    assert!(chunked.tap_done || chunked.tap_error, "the stream ended silently");

    if translates {
        let events = parse_client_sse(&chunked.translated);
        for e in &events {
            if let Event::Json(v) = e {
                check_chunk(v, b.preset.is_none());
            }
        }
        let a = assemble(&events);
        assert!(a.done ^ a.error.is_some(), "a translated stream must end with [DONE] or one error event: {a:?}");
        assert_eq!(a.events_after_end, 0, "events after the end of the stream");
        assert_eq!(without_ids(events.iter().map(|e| format!("{e:?}")).collect()), without_ids(parse_client_sse(&whole.translated).iter().map(|e| format!("{e:?}")).collect()));
        // The tap forwards a translated stream's events (maybe minus the usage-only chunk).
        let client = parse_client_sse(&chunked.client);
        let ca = assemble(&client);
        assert_eq!((ca.done, ca.error.is_some()), (a.done, a.error.is_some()));
        assert_eq!(ca.choices, a.choices, "the tap changed the content");
        if wants_usage {
            assert_eq!(ca.usage, a.usage);
        }
    }
});
