//! Watches the OpenAI SSE stream on its way to the client: keeps the usage the provider reported
//! and drops the usage-only chunk when the client did not ask for it (the backend always asks, so
//! the gateway can account for every stream).

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::sse::{write_raw_event, SseParser, SseStatus};
use crate::api::chat::Usage;

pub struct UsageTap {
    parser: SseParser,
    forward_usage_chunk: bool,
    usage: Option<Usage>,
    saw_done: bool,
    events: u64,
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
        UsageTap { parser: SseParser::new(), forward_usage_chunk: client_wants_usage, usage: None, saw_done: false, events: 0 }
    }

    /// Feeds a chunk of the upstream (already OpenAI-shaped) stream; appends what the client gets.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> SseStatus {
        let Self { parser, forward_usage_chunk, usage, saw_done, events } = self;
        parser.push(chunk, |_, data| Self::on_event(data, *forward_usage_chunk, usage, saw_done, events, out))
    }

    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let Self { parser, forward_usage_chunk, usage, saw_done, events } = self;
        parser.finish(|_, data| Self::on_event(data, *forward_usage_chunk, usage, saw_done, events, out));
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

    fn on_event(data: &str, forward: bool, usage: &mut Option<Usage>, saw_done: &mut bool, events: &mut u64, out: &mut Vec<u8>) {
        *events += 1;
        if data.trim() == "[DONE]" {
            *saw_done = true;
            write_raw_event(out, b"[DONE]");
            return;
        }
        if data.contains("\"usage\"") {
            if let Ok(head) = serde_json::from_str::<ChunkHead>(data) {
                if let Some(u) = head.usage {
                    *usage = Some(u);
                    let usage_only = head.choices.map_or(true, |c| c.is_empty());
                    if usage_only && !forward {
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

    const STREAM: &[u8] = b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n\
data: [DONE]\n\n";

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
    fn drops_usage_chunk_unless_asked_and_always_records_usage() {
        for chunk in [1, 7, STREAM.len()] {
            let (out, tap) = run(false, chunk);
            assert!(!out.contains("prompt_tokens"), "{out}");
            assert!(out.contains("\"content\":\"hi\""));
            assert!(out.ends_with("data: [DONE]\n\n"));
            assert_eq!(tap.usage().unwrap().total_tokens, 4);
            assert!(tap.completed());

            let (out, tap) = run(true, chunk);
            assert!(out.contains("\"prompt_tokens\":3"));
            assert_eq!(tap.usage().unwrap().prompt_tokens, 3);
        }
    }
}
