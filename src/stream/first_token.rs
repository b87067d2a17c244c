//! Watches an OpenAI-shaped SSE stream for its first generated token (text, reasoning or a tool
//! call), without changing it: the backend filter holds a stream's headers until then when the
//! route has a first-token deadline.

use super::sse::{SseParser, SseStatus};

#[derive(Debug, Default)]
pub struct FirstTokenWatch {
    parser: SseParser,
    seen: bool,
    /// The stream cannot be parsed further (an event above the parser's limit), or carried an
    /// error event: nothing to wait for.
    done: bool,
}

/// An OpenAI chunk's `data` that carries generated content (a role-only chunk does not). An
/// Anthropic Messages event counts too (a native answer to a Messages client): a content delta
/// (text, thinking or tool input) or the start of a `tool_use` block.
pub fn is_content_event(data: &str) -> bool {
    (data.contains("\"content\":\"") && !data.contains("\"content\":\"\""))
        || data.contains("\"tool_calls\"")
        || (data.contains("\"reasoning_content\":\"") && !data.contains("\"reasoning_content\":\"\""))
        || data.contains("\"type\":\"content_block_delta\"")
        || (data.contains("\"type\":\"content_block_start\"") && data.contains("\"type\":\"tool_use\""))
}

/// An error event: OpenAI's `{"error":…}` or Anthropic's `{"type":"error",…}`.
fn is_error_event(data: &str) -> bool {
    data.starts_with("{\"error\"") || data.starts_with("{\"type\":\"error\"") || data.starts_with("{\"type\": \"error\"")
}

impl FirstTokenWatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes of the stream; true once a token (or an error event) has gone by.
    pub fn push(&mut self, chunk: &[u8]) -> bool {
        if self.seen || self.done {
            return true;
        }
        let mut seen = false;
        let mut error = false;
        let status = self.parser.push(chunk, |_, data| {
            if is_content_event(data) {
                seen = true;
            } else if is_error_event(data) {
                error = true;
            }
        });
        self.seen = seen;
        self.done = error || status == SseStatus::Overflow;
        self.seen || self.done
    }

    /// A token went by (not just an error or an unreadable stream).
    pub fn token_seen(&self) -> bool {
        self.seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_chunk_is_not_a_token_split_content_chunk_is() {
        let mut w = FirstTokenWatch::new();
        assert!(!w.push(b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n"));
        assert!(!w.push(b"data: {\"choices\":[{\"delta\":{\"cont"));
        assert!(!w.token_seen());
        assert!(w.push(b"ent\":\"Hi\"}}]}\n\n"));
        assert!(w.token_seen());
    }

    #[test]
    fn tool_calls_reasoning_and_errors_end_the_wait() {
        let mut w = FirstTokenWatch::new();
        assert!(w.push(b"data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0}]}}]}\n\n"));
        let mut w = FirstTokenWatch::new();
        assert!(!w.push(b"data: {\"choices\":[{\"delta\":{\"reasoning_content\":\"\"}}]}\n\n"));
        assert!(w.push(b"data: {\"choices\":[{\"delta\":{\"reasoning_content\":\"Let\"}}]}\n\n"));
        let mut w = FirstTokenWatch::new();
        assert!(w.push(b"data: {\"error\":{\"message\":\"overloaded\"}}\n\n"));
        assert!(!w.token_seen());
    }

    #[test]
    fn anthropic_messages_events_native_answers() {
        // The recorded Messages stream: message_start, the empty text block and ping are not tokens.
        let rec = include_str!("../../tests/fixtures/anthropic-sdk/basic_response.txt");
        let first_delta = rec.find("event: content_block_delta").unwrap();
        let mut w = FirstTokenWatch::new();
        assert!(!w.push(rec[..first_delta].as_bytes()));
        assert!(w.push(rec[first_delta..].as_bytes()) && w.token_seen());
        let mut w = FirstTokenWatch::new();
        assert!(w.push(b"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{}}}\n\n"));
        let mut w = FirstTokenWatch::new();
        assert!(w.push(b"event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n"));
        assert!(!w.token_seen());
    }

    #[test]
    fn an_event_without_its_blank_line_is_not_seen_yet() {
        let mut w = FirstTokenWatch::new();
        assert!(!w.push(b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n"));
        assert!(w.push(b"\n"));
    }
}
