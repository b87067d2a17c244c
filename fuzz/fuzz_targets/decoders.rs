//! The incremental decoders on their own: SSE (`stream::sse`), NDJSON (`stream::ndjson`), AWS
//! event-stream (`stream::eventstream`, raw bytes and validly framed messages) and the usage tap
//! (`stream::usage_tap`).
//!
//! Input: `[decoder][n][n chunk sizes][bytes]`.
//!
//! Properties: the whole input and the same bytes in the fuzzer's chunks decode to the same
//! events / lines / messages / errors; NDJSON lines hold no line break and are not blank; what the
//! decoders keep buffered is bounded by their caps; the tap's output is SSE and linear in the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::stream::eventstream::{EventStreamDecoder, HeaderValue, MAX_MESSAGE_BYTES};
use switchyard::stream::ndjson::{NdjsonSplitter, NdjsonStatus};
use switchyard::stream::sse::{SseParser, SseStatus};
use switchyard::stream::usage_tap::UsageTap;
use switchyard_fuzz::*;

#[global_allocator]
static ALLOC: Counting = Counting;

fn sse(pieces: &[&[u8]]) -> (Vec<(String, String)>, bool) {
    let mut p = SseParser::new();
    let mut ev = Vec::new();
    for c in pieces {
        assert_eq!(p.push(c, |e, d| ev.push((e.to_string(), d.to_string()))), SseStatus::Ok);
    }
    let idle = p.is_idle();
    p.finish(|e, d| ev.push((e.to_string(), d.to_string())));
    (ev, idle)
}

fn ndjson(pieces: &[&[u8]]) -> (Vec<Vec<u8>>, bool) {
    let mut s = NdjsonSplitter::new();
    let mut lines = Vec::new();
    for c in pieces {
        assert_eq!(s.push(c, |l| lines.push(l.to_vec())), NdjsonStatus::Ok);
    }
    let idle = s.is_idle();
    s.finish(|l| lines.push(l.to_vec()));
    (lines, idle)
}

type Owned = (Vec<(String, String)>, Vec<u8>);

fn eventstream(pieces: &[&[u8]]) -> (Vec<Owned>, Option<String>, bool) {
    let mut d = EventStreamDecoder::new();
    let mut msgs: Vec<Owned> = Vec::new();
    let mut err = None;
    for c in pieces {
        let r = d.push(c, |m| {
            let headers = m.headers.iter().map(|(n, v)| (n.to_string(), format!("{v:?}"))).collect();
            // Header values borrow the frame; a string one is UTF-8 by construction.
            for (_, v) in &m.headers {
                if let HeaderValue::String(s) = v {
                    assert!(s.len() <= u16::MAX as usize);
                }
            }
            msgs.push((headers, m.payload.to_vec()));
        });
        assert!(d.pending() <= MAX_MESSAGE_BYTES, "event-stream decoder holds {} bytes", d.pending());
        if let Err(e) = r {
            err = Some(e.to_string());
            break;
        }
    }
    (msgs, err, d.is_idle())
}

fn tap(pieces: &[&[u8]], wants: bool) -> (Vec<u8>, Option<String>, bool, bool, u64) {
    let mut t = UsageTap::new(wants).with_meter();
    let mut out = Vec::new();
    for c in pieces {
        t.push(c, &mut out);
    }
    t.finish(&mut out);
    (out, t.usage().map(|u| format!("{u:?}")), t.completed(), t.saw_error(), t.estimated_output_tokens())
}

fuzz_target!(|data: &[u8]| {
    let [sel, n, rest @ ..] = data else { return };
    let n = (*n as usize % 16).min(rest.len());
    let (sizes, bytes) = rest.split_at(n);
    let framed;
    let bytes = if sel % 5 == 3 {
        framed = bedrock_frames(bytes);
        &framed[..]
    } else {
        bytes
    };
    let pieces = chunks(bytes, sizes);
    let bound = linear_bound(bytes.len(), 16, 16 * 1024);
    let ((), peak) = peak_heap(|| match sel % 5 {
        0 => {
            let whole = sse(&[bytes]);
            let chunked = sse(&pieces);
            assert_eq!(whole, chunked);
        }
        1 => {
            let whole = ndjson(&[bytes]);
            let chunked = ndjson(&pieces);
            for l in &chunked.0 {
                assert!(!l.contains(&b'\n') && !l.iter().all(u8::is_ascii_whitespace), "bad NDJSON line {l:?}");
            }
            assert_eq!(whole, chunked);
        }
        2 | 3 => {
            let whole = eventstream(&[bytes]);
            let chunked = eventstream(&pieces);
            assert_eq!(whole.0, chunked.0);
            assert_eq!(whole.1, chunked.1);
            if sel % 5 == 3 {
                assert!(whole.1.is_none(), "a valid frame was refused: {:?}", whole.1);
                assert!(whole.2, "valid frames left bytes pending");
            }
        }
        _ => {
            let wants = sel & 0x80 != 0;
            let whole = tap(&[bytes], wants);
            let chunked = tap(&pieces, wants);
            assert_eq!(whole, chunked);
            assert!(chunked.0.len() <= bound, "tap output {} for {} bytes", chunked.0.len(), bytes.len());
            // Every event the tap writes is `data:` lines and a blank line (the payloads are
            // upstream's and may be anything but line breaks).
            for event in chunked.0.split(|&b| b == b'\n').collect::<Vec<_>>().split(|l| l.is_empty()) {
                for line in event {
                    assert!(line.starts_with(b"data: ") && !line.contains(&b'\r'), "tap output line is not a data field: {:?}", String::from_utf8_lossy(line));
                }
            }
            assert!(chunked.0.is_empty() || chunked.0.ends_with(b"\n\n"), "tap output does not end an event");
        }
    });
    assert!(peak <= 8 * bound, "peak heap {peak} for {} bytes", bytes.len());
});
