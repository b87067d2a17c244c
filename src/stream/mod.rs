//! Incremental stream formats: SSE today; AWS event-stream and NDJSON as providers need them.

pub mod eventstream;
pub mod first_token;
pub mod ndjson;
pub mod sse;
pub mod usage_tap;
