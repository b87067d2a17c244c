//! Incremental Server-Sent Events parsing and writing.
//!
//! Upstream bodies arrive in arbitrary chunks: an event, a line, even a `\r\n` pair may be split
//! across two of them. The parser keeps the unfinished tail and hands out whole events only.

use std::borrow::Cow;

use serde::Serialize;

/// Largest unfinished event the parser holds before giving up on the stream (a provider that never
/// sends a blank line must not grow memory without bound).
pub const MAX_PENDING_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the current, unfinished line.
    line: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
    overflow: bool,
}

/// What a push reports besides the events it delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseStatus {
    Ok,
    /// The pending event grew past [`MAX_PENDING_BYTES`]; the stream cannot be trusted further.
    Overflow,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds a chunk; calls `on_event(event_name, data)` for every event completed by it.
    /// `event_name` is empty when the event had no `event:` field.
    pub fn push(&mut self, chunk: &[u8], mut on_event: impl FnMut(&str, &str)) -> SseStatus {
        if self.overflow {
            return SseStatus::Overflow;
        }
        let mut rest = chunk;
        // memchr scans a word at a time (a byte loop was a third of the usage tap's time).
        while let Some(pos) = memchr::memchr(b'\n', rest) {
            let (head, tail) = rest.split_at(pos);
            rest = &tail[1..];
            if self.line.is_empty() {
                self.process_line(head, &mut on_event);
            } else {
                self.line.extend_from_slice(head);
                let line = std::mem::take(&mut self.line);
                self.process_line(&line, &mut on_event);
                self.line = line;
                self.line.clear();
            }
        }
        self.line.extend_from_slice(rest);
        if self.line.len() + self.data.len() > MAX_PENDING_BYTES {
            self.overflow = true;
            return SseStatus::Overflow;
        }
        SseStatus::Ok
    }

    /// Ends the stream: an event that lacked its closing blank line is still delivered.
    pub fn finish(&mut self, mut on_event: impl FnMut(&str, &str)) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, &mut on_event);
        }
        self.dispatch(&mut on_event);
    }

    /// True when nothing is buffered: the stream ended on an event boundary.
    pub fn is_idle(&self) -> bool {
        self.line.is_empty() && !self.has_data && self.event.is_empty()
    }

    fn process_line(&mut self, raw: &[u8], on_event: &mut impl FnMut(&str, &str)) {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        if line[0] == b':' {
            return; // comment / keep-alive
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        // The fast validator first; the lossy one (several times slower) only for invalid UTF-8.
        let value = match std::str::from_utf8(value) {
            Ok(v) => Cow::Borrowed(v),
            Err(_) => String::from_utf8_lossy(value),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&value);
                self.has_data = true;
            }
            b"event" => {
                self.event.clear();
                self.event.push_str(value.trim_end());
            }
            _ => {} // id, retry and unknown fields are not needed here
        }
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(&str, &str)) {
        if self.has_data {
            on_event(&self.event, &self.data);
        }
        self.event.clear();
        self.data.clear();
        self.has_data = false;
    }
}

/// Appends `data: <json>\n\n`.
pub fn write_json_event<T: Serialize>(out: &mut Vec<u8>, value: &T) {
    out.extend_from_slice(b"data: ");
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\n\n");
}

/// Appends an already-serialised event: `data: <raw>\n\n`. Data of several lines (an upstream
/// event with several `data:` fields, joined by `\n`, or holding a bare `\r`) is written one
/// `data:` field per line, so that the client's parser, which ends lines at `\n`, `\r\n` and
/// `\r`, reassembles the same event instead of reading the second line as a field name.
pub fn write_raw_event(out: &mut Vec<u8>, data: &[u8]) {
    if memchr::memchr2(b'\n', b'\r', data).is_none() {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(data);
        out.extend_from_slice(b"\n\n");
        return;
    }
    for line in data.split(|&b| b == b'\n' || b == b'\r') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// The OpenAI end-of-stream marker.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(chunks: &[&[u8]]) -> Vec<(String, String)> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.push(c, |e, d| out.push((e.to_string(), d.to_string())));
        }
        p.finish(|e, d| out.push((e.to_string(), d.to_string())));
        out
    }

    #[test]
    fn events_split_anywhere_are_reassembled() {
        let whole = b"event: a\ndata: {\"x\":1}   \n\n: ping\r\n\r\nevent: b\r\ndata: 2\r\ndata: 3\r\n\r\n";
        let expected = collect(&[whole]);
        assert_eq!(
            expected,
            vec![("a".into(), "{\"x\":1}   ".into()), ("b".into(), "2\n3".into())]
        );
        for split in 1..whole.len() {
            let (a, b) = whole.split_at(split);
            assert_eq!(collect(&[a, b]), expected, "split at {split}");
        }
        let bytes: Vec<&[u8]> = whole.chunks(1).collect();
        assert_eq!(collect(&bytes), expected);
    }

    #[test]
    fn unterminated_last_event_is_delivered_on_finish() {
        assert_eq!(collect(&[b"data: [DONE]"]), vec![("".into(), "[DONE]".into())]);
    }

    #[test]
    fn multi_line_data_is_written_one_data_field_per_line() {
        // Found by the `decoders` fuzz target: the usage tap re-wrote an upstream event with two
        // `data:` lines as `data: a\nb\n\n`, whose second line a client reads as a field `b`.
        let mut out = Vec::new();
        write_raw_event(&mut out, b"a\nb\rc");
        assert_eq!(out, b"data: a\ndata: b\ndata: c\n\n");
        assert_eq!(collect(&[&out]), vec![("".into(), "a\nb\nc".into())]);
        let mut out = Vec::new();
        write_raw_event(&mut out, b"{\"x\":1}");
        assert_eq!(out, b"data: {\"x\":1}\n\n");
    }

    #[test]
    fn overflow_is_reported() {
        let mut p = SseParser::new();
        let big = vec![b'a'; MAX_PENDING_BYTES + 1];
        assert_eq!(p.push(&big, |_, _| {}), SseStatus::Overflow);
        assert_eq!(p.push(b"\n\n", |_, _| panic!("no events after overflow")), SseStatus::Overflow);
    }
}
