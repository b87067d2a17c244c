//! Watches the OpenAI SSE stream on its way to the client: keeps the usage the provider reported
//! and drops the usage-only chunk when the client did not ask for it (the backend always asks, so
//! the gateway can account for every stream).

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::sse::{write_raw_event, SseParser, SseStatus};
use crate::api::chat::Usage;
use crate::api::ApiError;
use crate::policy::estimate::OutputMeter;

pub struct UsageTap {
    parser: SseParser,
    forward_usage_chunk: bool,
    usage: Option<Usage>,
    saw_done: bool,
    events: u64,
    model: Option<String>,
    first_token: bool,
    error: bool,
    /// Counts generated text, for charging a stream that ends without usage (only when metered).
    meter: Option<OutputMeter>,
    /// The tap ended the client's stream with its own error event (an event that is not JSON):
    /// nothing more is forwarded, usage is still read.
    stopped: bool,
    /// The upstream has ended (`finish`): an unreadable last event is a cut one.
    at_end: bool,
}

#[derive(Deserialize)]
struct ModelHead {
    #[serde(default)]
    model: Option<String>,
}

#[derive(Deserialize)]
struct ChunkHead {
    #[serde(default)]
    choices: Option<Vec<IgnoredAny>>,
    #[serde(default)]
    usage: Option<Usage>,
}

impl UsageTap {
    pub fn new(client_wants_usage: bool) -> Self {
        UsageTap {
            parser: SseParser::new(),
            forward_usage_chunk: client_wants_usage,
            usage: None,
            saw_done: false,
            events: 0,
            model: None,
            first_token: false,
            error: false,
            meter: None,
            stopped: false,
            at_end: false,
        }
    }

    /// Also count the generated text (see [`Self::estimated_output_tokens`]).
    pub fn with_meter(mut self) -> Self {
        self.meter = Some(OutputMeter::new());
        self
    }

    /// Output tokens estimated from the text that went by (metered taps only).
    pub fn estimated_output_tokens(&self) -> u64 {
        self.meter.as_ref().map_or(0, OutputMeter::tokens)
    }

    /// Feeds a chunk of the upstream (already OpenAI-shaped) stream; appends what the client gets.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> SseStatus {
        // The parser is moved out for the call so that the event callback may borrow `self`.
        let mut parser = std::mem::take(&mut self.parser);
        let status = parser.push(chunk, |_, data| self.on_event(data, out));
        self.parser = parser;
        status
    }

    /// Upstream ended. A stream that reached neither `[DONE]` nor an error event was cut short:
    /// the client gets an error event, never a silent end that looks complete.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.at_end = true;
        let mut parser = std::mem::take(&mut self.parser);
        parser.finish(|_, data| self.on_event(data, out));
        self.parser = parser;
        if !self.saw_done && !self.error {
            self.error = true;
            let e = ApiError::new(502, "api_error", "The upstream stream ended before completion.").with_code("stream_truncated");
            write_raw_event(out, &e.to_json());
        }
    }

    /// `model` of the first chunk: what actually served the stream.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// A chunk with generated content (text, reasoning or a tool call) has gone by.
    pub fn first_token_seen(&self) -> bool {
        self.first_token
    }

    /// The stream carried an error event.
    pub fn saw_error(&self) -> bool {
        self.error
    }

    pub fn usage(&self) -> Option<&Usage> {
        self.usage.as_ref()
    }

    /// The stream reached `data: [DONE]`.
    pub fn completed(&self) -> bool {
        self.saw_done
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    fn on_event(&mut self, data: &str, out: &mut Vec<u8>) {
        self.events += 1;
        if self.stopped {
            // The client's stream has ended; what the provider reports still counts.
            if data.contains("\"usage\"") {
                if let Some(u) = serde_json::from_str::<ChunkHead>(data).ok().and_then(|h| h.usage) {
                    self.usage = Some(u);
                }
            }
            return;
        }
        if data.trim() == "[DONE]" {
            self.saw_done = true;
            write_raw_event(out, b"[DONE]");
            return;
        }
        // A metered tap parses every chunk anyway: a chunk it could read is valid JSON.
        let metered = self.meter.as_mut().is_some_and(|m| m.push_chunk_json(data));
        if !metered && serde_json::from_str::<IgnoredAny>(data).is_err() {
            // The SDKs would fail on it with a JSON error of their own: end the stream with an
            // OpenAI error event instead (an event cut by the end of the stream is a truncation).
            self.error = true;
            self.stopped = true;
            let e = if self.at_end {
                ApiError::new(502, "api_error", "The upstream stream ended in the middle of an event.").with_code("stream_truncated")
            } else {
                ApiError::new(502, "api_error", "The upstream stream sent an event that is not valid JSON.").with_code("invalid_upstream_event")
            };
            write_raw_event(out, &e.to_json());
            return;
        }
        if self.model.is_none() {
            self.model = serde_json::from_str::<ModelHead>(data).ok().and_then(|h| h.model);
        }
        if !self.first_token
            && ((data.contains("\"content\":\"") && !data.contains("\"content\":\"\""))
                || data.contains("\"tool_calls\"")
                || data.contains("\"reasoning_content\":\""))
        {
            self.first_token = true;
        }
        if !self.error && data.starts_with("{\"error\"") {
            self.error = true;
        }
        if data.contains("\"usage\"") {
            if let Ok(head) = serde_json::from_str::<ChunkHead>(data) {
                if let Some(u) = head.usage {
                    self.usage = Some(u);
                    let usage_only = head.choices.is_none_or(|c| c.is_empty());
                    if usage_only && !self.forward_usage_chunk {
                        return;
                    }
                }
            }
        }
        write_raw_event(out, data.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] = b"data: {\"id\":\"c\",\"model\":\"m-1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n\
data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n\
data: [DONE]\n\n";

    #[test]
    fn an_event_of_several_data_lines_reaches_the_client_whole() {
        // Found by the `decoders` fuzz target: the second data line lost its `data:` field name.
        let mut tap = UsageTap::new(false);
        let mut out = Vec::new();
        tap.push(b"data: {\"choices\":\ndata: []}\n\ndata: [DONE]\n\n", &mut out);
        tap.finish(&mut out);
        assert_eq!(out, b"data: {\"choices\":\ndata: []}\n\ndata: [DONE]\n\n");
        let mut events = Vec::new();
        let mut p = SseParser::new();
        p.push(&out, |_, d| events.push(d.to_string()));
        assert_eq!(events, vec!["{\"choices\":\n[]}".to_string(), "[DONE]".to_string()]);
    }

    fn run(forward: bool, chunk: usize) -> (String, UsageTap) {
        let mut tap = UsageTap::new(forward);
        let mut out = Vec::new();
        for c in STREAM.chunks(chunk) {
            tap.push(c, &mut out);
        }
        tap.finish(&mut out);
        (String::from_utf8(out).unwrap(), tap)
    }

    #[test]
    fn a_stream_cut_short_ends_with_an_error_event() {
        let cut = &STREAM[..STREAM.len() - b"data: [DONE]\n\n".len()];
        let mut tap = UsageTap::new(false);
        let mut out = Vec::new();
        tap.push(cut, &mut out);
        tap.finish(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("\"code\":\"stream_truncated\"}}\n\n"), "{text}");
        assert!(tap.saw_error());
    }

    #[test]
    fn an_event_that_is_not_json_ends_the_stream_with_an_error_event() {
        let bad = b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n\
data: {\"id\":\"c\",\"choices\":[{\"ind\n\n\
data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lost\"}}]}\n\n\
data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n\
data: [DONE]\n\n";
        for chunk in [1, 5, bad.len()] {
            let mut tap = UsageTap::new(true);
            let mut out = Vec::new();
            for c in bad.chunks(chunk) {
                tap.push(c, &mut out);
            }
            tap.finish(&mut out);
            let text = String::from_utf8(out).unwrap();
            let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
            assert_eq!(events.len(), 2, "{text}");
            assert!(events[0].contains("\"hi\""));
            let err: serde_json::Value = serde_json::from_str(events[1].strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(err["error"]["code"], "invalid_upstream_event");
            assert!(!text.contains("lost") && !text.contains("[DONE]"), "nothing after the error: {text}");
            assert!(tap.saw_error() && !tap.completed());
            assert_eq!(tap.usage().unwrap().total_tokens, 5, "the usage that followed is still read");
        }
    }

    #[test]
    fn an_event_cut_by_the_end_of_the_stream_is_a_truncation_not_forwarded() {
        let cut = b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"id\":\"c\",\"cho";
        let mut tap = UsageTap::new(false);
        let mut out = Vec::new();
        tap.push(cut, &mut out);
        tap.finish(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("\"cho\n"), "the cut event is not forwarded: {text}");
        assert_eq!(text.matches("\"error\"").count(), 1, "{text}");
        assert!(text.ends_with("\"code\":\"stream_truncated\"}}\n\n"), "{text}");
    }

    #[test]
    fn metered_taps_estimate_output() {
        let mut tap = UsageTap::new(false).with_meter();
        let mut out = Vec::new();
        tap.push(b"data: {\"choices\":[{\"delta\":{\"content\":\"abcdefgh\"}}]}\n\n", &mut out);
        assert_eq!(tap.estimated_output_tokens(), 2);
        assert_eq!(UsageTap::new(false).estimated_output_tokens(), 0);
    }

    #[test]
    fn a_metered_tap_validates_what_its_meter_could_not_read() {
        // The meter's parse stands in for the JSON check; an event it cannot read must still be
        // checked: valid JSON of another shape goes through, invalid JSON ends the stream.
        let mut tap = UsageTap::new(false).with_meter();
        let mut out = Vec::new();
        tap.push(b"data: {\"choices\":\"not a list\"}\n\n", &mut out);
        assert!(!tap.saw_error());
        assert_eq!(String::from_utf8_lossy(&out), "data: {\"choices\":\"not a list\"}\n\n");
        tap.push(b"data: {\"choices\":[{\"delta\":{\"content\":\"ab\"}}]\n\n", &mut out);
        assert!(tap.saw_error());
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\"code\":\"invalid_upstream_event\""), "{text}");
        assert_eq!(tap.estimated_output_tokens(), 0, "nothing counted from the bad event");
    }

    #[test]
    fn role_only_chunk_is_not_a_token_and_errors_are_seen() {
        let mut tap = UsageTap::new(false);
        let mut out = Vec::new();
        tap.push(b"data: {\"model\":\"x\",\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n", &mut out);
        assert!(!tap.first_token_seen());
        tap.push(b"data: {\"error\":{\"message\":\"boom\"}}\n\n", &mut out);
        assert!(tap.saw_error());
        assert!(!tap.completed());
    }

    #[test]
    fn drops_usage_chunk_unless_asked_and_always_records_usage() {
        for chunk in [1, 7, STREAM.len()] {
            let (out, tap) = run(false, chunk);
            assert!(!out.contains("prompt_tokens"), "{out}");
            assert!(out.contains("\"content\":\"hi\""));
            assert!(out.ends_with("data: [DONE]\n\n"));
            assert_eq!(tap.usage().unwrap().total_tokens, 4);
            assert!(tap.completed());
            assert!(tap.first_token_seen());
            assert_eq!(tap.model(), Some("m-1"));
            assert!(!tap.saw_error());

            let (out, tap) = run(true, chunk);
            assert!(out.contains("\"prompt_tokens\":3"));
            assert_eq!(tap.usage().unwrap().prompt_tokens, 3);
        }
    }
}
