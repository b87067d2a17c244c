//! Quality sampling: a share of request/answer pairs, sent asynchronously to an evaluation sink.
//!
//! The gateway decides per request whether to sample (a rate per key, team, model or the default),
//! builds one JSON line per sampled pair when the answer is complete, and queues it; the filter's
//! root context sends the queue in batches (JSON lines, or OTLP/HTTP JSON logs) to an Envoy cluster
//! on a timer, so no client request ever waits for the sink or fails because of it.

use std::collections::{HashMap, VecDeque};

use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SinkFormat {
    /// One JSON object per line (`application/x-ndjson`).
    #[default]
    Jsonl,
    /// OTLP/HTTP logs, JSON encoding (`/v1/logs` of an OpenTelemetry collector).
    Otlp,
}

/// `quality_sampling` in the gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    /// The Envoy cluster of the sink.
    pub cluster: String,
    /// Request path at the sink (default `/v1/samples`; `/v1/logs` for OTLP).
    #[serde(default)]
    pub path: Option<String>,
    /// `:authority` of the sink requests (default: the cluster name).
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub format: SinkFormat,
    /// Share of requests sampled, 0 to 1, unless one of the maps below says otherwise.
    #[serde(default)]
    pub rate: f64,
    /// By key id (wins), team, then model (the requested name or the model it resolved to).
    #[serde(default)]
    pub keys: HashMap<String, f64>,
    #[serde(default)]
    pub teams: HashMap<String, f64>,
    #[serde(default)]
    pub models: HashMap<String, f64>,
    #[serde(default = "default_flush")]
    pub flush_interval_ms: u32,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u32,
    /// Samples waiting per worker; more are dropped (and counted).
    #[serde(default = "default_queue")]
    pub max_queue: usize,
    /// Bytes of samples waiting per worker (a sample can be ~2 × `max_sample_bytes`, so a count
    /// alone would let a worker hold gigabytes); more are dropped (and counted).
    #[serde(default = "default_queue_bytes")]
    pub max_queue_bytes: usize,
    /// Samples per sink request.
    #[serde(default = "default_batch")]
    pub max_batch: usize,
    /// Bytes per sink request (a batch holds at least one sample).
    #[serde(default = "default_batch_bytes")]
    pub max_batch_bytes: usize,
    /// Largest request or answer body kept for a sample; a larger pair is not sampled (counted as dropped).
    #[serde(default = "default_sample_bytes")]
    pub max_sample_bytes: usize,
}

fn default_flush() -> u32 {
    1000
}
fn default_timeout() -> u32 {
    5000
}
fn default_queue() -> usize {
    1000
}
fn default_batch() -> usize {
    100
}
fn default_queue_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_batch_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_sample_bytes() -> usize {
    256 * 1024
}

impl SamplingConfig {
    pub fn validate(&self) -> Result<(), String> {
        let ok = |r: f64| (0.0..=1.0).contains(&r);
        if self.cluster.is_empty() {
            return Err("quality_sampling: cluster must be set".into());
        }
        if !ok(self.rate) || !self.keys.values().chain(self.teams.values()).chain(self.models.values()).all(|r| ok(*r)) {
            return Err("quality_sampling: every rate must be between 0 and 1".into());
        }
        if self.flush_interval_ms == 0 || self.max_queue == 0 || self.max_batch == 0 || self.timeout_ms == 0 || self.max_queue_bytes == 0 || self.max_batch_bytes == 0 {
            return Err("quality_sampling: flush_interval_ms, timeout_ms, max_queue, max_queue_bytes, max_batch and max_batch_bytes must be positive".into());
        }
        Ok(())
    }

    /// The sampling rate of a request.
    pub fn rate_for(&self, key_id: Option<&str>, team: Option<&str>, requested: &str, resolved: &str) -> f64 {
        key_id
            .and_then(|k| self.keys.get(k))
            .or_else(|| team.and_then(|t| self.teams.get(t)))
            .or_else(|| self.models.get(requested))
            .or_else(|| self.models.get(resolved))
            .copied()
            .unwrap_or(self.rate)
    }

    pub fn path(&self) -> &str {
        self.path.as_deref().unwrap_or(match self.format {
            SinkFormat::Jsonl => "/v1/samples",
            SinkFormat::Otlp => "/v1/logs",
        })
    }

    pub fn authority(&self) -> &str {
        self.authority.as_deref().unwrap_or(&self.cluster)
    }

    pub fn content_type(&self) -> &'static str {
        match self.format {
            SinkFormat::Jsonl => "application/x-ndjson",
            SinkFormat::Otlp => "application/json",
        }
    }
}

/// What a sample says besides the two bodies.
#[derive(Debug, Clone, Default)]
pub struct SampleMeta<'a> {
    pub time_unix_ms: u64,
    pub request_id: &'a str,
    pub key_id: Option<&'a str>,
    pub team: Option<&'a str>,
    pub route: Option<&'a str>,
    pub requested_model: Option<&'a str>,
    pub response_model: Option<&'a str>,
    pub backend: Option<&'a str>,
    pub stream: bool,
    pub status: u16,
    pub cache: Option<&'static str>,
    pub duration_ms: u64,
}

/// One sample as a JSON line (without the newline), or `None` when a body is not JSON.
pub fn sample_line(meta: &SampleMeta, request: &[u8], response: &[u8]) -> Option<Vec<u8>> {
    let request: Value = serde_json::from_slice(request).ok()?;
    let response: Value = serde_json::from_slice(response).ok()?;
    let v = json!({
        "time_unix_ms": meta.time_unix_ms,
        "request_id": meta.request_id,
        "key_id": meta.key_id,
        "team": meta.team,
        "route": meta.route,
        "requested_model": meta.requested_model,
        "response_model": meta.response_model,
        "backend": meta.backend,
        "stream": meta.stream,
        "status": meta.status,
        "cache": meta.cache,
        "duration_ms": meta.duration_ms,
        "request": request,
        "response": response,
    });
    serde_json::to_vec(&v).ok()
}

/// The samples a worker has not sent yet.
#[derive(Debug, Default)]
pub struct SampleQueue {
    lines: VecDeque<Vec<u8>>,
    /// Bytes of `lines`.
    bytes: usize,
}

impl SampleQueue {
    /// Queues a line; `false` (dropped) when `max_queue` lines or `max_queue_bytes` already wait.
    pub fn push(&mut self, line: Vec<u8>, cfg: &SamplingConfig) -> bool {
        if self.lines.len() >= cfg.max_queue || self.bytes + line.len() > cfg.max_queue_bytes {
            return false;
        }
        self.bytes += line.len();
        self.lines.push_back(line);
        true
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Takes up to `max_batch` samples as one sink request body, and how many it holds.
    pub fn drain_batch(&mut self, cfg: &SamplingConfig) -> Option<(Vec<u8>, usize)> {
        if self.lines.is_empty() {
            return None;
        }
        let mut n = 0;
        let mut size = 0;
        for l in self.lines.iter().take(cfg.max_batch) {
            if n > 0 && size + l.len() > cfg.max_batch_bytes {
                break;
            }
            size += l.len();
            n += 1;
        }
        self.bytes -= size;
        let batch: Vec<Vec<u8>> = self.lines.drain(..n).collect();
        let body = match cfg.format {
            SinkFormat::Jsonl => {
                let mut b = Vec::with_capacity(batch.iter().map(|l| l.len() + 1).sum());
                for l in &batch {
                    b.extend_from_slice(l);
                    b.push(b'\n');
                }
                b
            }
            SinkFormat::Otlp => otlp_logs(&batch),
        };
        Some((body, n))
    }
}

/// An OTLP `ExportLogsServiceRequest` (JSON encoding): one log record per sample, its body the
/// sample's JSON text, with the model and key as attributes.
fn otlp_logs(batch: &[Vec<u8>]) -> Vec<u8> {
    let records: Vec<Value> = batch
        .iter()
        .map(|line| {
            let v: Value = serde_json::from_slice(line).unwrap_or(Value::Null);
            let ms = v.get("time_unix_ms").and_then(Value::as_u64).unwrap_or(0);
            let mut attrs = Vec::new();
            for (name, field) in [("gen_ai.request.model", "requested_model"), ("gen_ai.response.model", "response_model"), ("switchyard.key_id", "key_id"), ("switchyard.request_id", "request_id")] {
                if let Some(s) = v.get(field).and_then(Value::as_str) {
                    attrs.push(json!({"key": name, "value": {"stringValue": s}}));
                }
            }
            json!({
                "timeUnixNano": (u128::from(ms) * 1_000_000).to_string(),
                "severityText": "INFO",
                "body": {"stringValue": String::from_utf8_lossy(line)},
                "attributes": attrs,
            })
        })
        .collect();
    let req = json!({"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "switchyard"}}]},
        "scopeLogs": [{"scope": {"name": "switchyard.quality_sampling"}, "logRecords": records}]
    }]});
    serde_json::to_vec(&req).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> SamplingConfig {
        let c: SamplingConfig = serde_json::from_str(json).unwrap();
        c.validate().unwrap();
        c
    }

    #[test]
    fn rates_by_key_team_model_default() {
        let c = cfg(r#"{"cluster":"sink","rate":0.1,"keys":{"k1":1.0},"teams":{"t1":0.5},"models":{"fast":0.25,"gpt-4o-mini":0.75}}"#);
        assert_eq!(c.rate_for(Some("k1"), Some("t1"), "fast", "gpt-4o-mini"), 1.0);
        assert_eq!(c.rate_for(Some("k2"), Some("t1"), "fast", "gpt-4o-mini"), 0.5);
        assert_eq!(c.rate_for(Some("k2"), None, "fast", "gpt-4o-mini"), 0.25);
        assert_eq!(c.rate_for(None, None, "other", "gpt-4o-mini"), 0.75);
        assert_eq!(c.rate_for(None, None, "x", "y"), 0.1);
        assert_eq!(c.path(), "/v1/samples");
        assert_eq!(c.authority(), "sink");
        for bad in [r#"{"cluster":"s","rate":1.5}"#, r#"{"cluster":"s","models":{"m":-1}}"#, r#"{"cluster":""}"#, r#"{"cluster":"s","max_batch":0}"#] {
            let c: SamplingConfig = serde_json::from_str(bad).unwrap();
            assert!(c.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn lines_carry_both_bodies_and_the_queue_is_bounded() {
        let meta = SampleMeta { request_id: "r1", requested_model: Some("fast"), status: 200, ..Default::default() };
        let line = sample_line(&meta, br#"{"model":"fast","messages":[]}"#, br#"{"choices":[]}"#).unwrap();
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["request"]["model"], "fast");
        assert_eq!(v["response"]["choices"], json!([]));
        assert_eq!(v["request_id"], "r1");
        assert!(!line.contains(&b'\n'));
        assert!(sample_line(&meta, b"not json", b"{}").is_none());

        let c = cfg(r#"{"cluster":"sink","max_batch":2,"max_queue":3}"#);
        let mut q = SampleQueue::default();
        assert!(q.push(b"{\"a\":1}".to_vec(), &c));
        assert!(q.push(b"{\"a\":2}".to_vec(), &c));
        assert!(q.push(b"{\"a\":3}".to_vec(), &c));
        assert!(!q.push(b"{\"a\":4}".to_vec(), &c), "full");
        let (body, n) = q.drain_batch(&c).unwrap();
        assert_eq!((body.as_slice(), n), (&b"{\"a\":1}\n{\"a\":2}\n"[..], 2));
        let (body, n) = q.drain_batch(&c).unwrap();
        assert_eq!((body.as_slice(), n), (&b"{\"a\":3}\n"[..], 1));
        assert!(q.drain_batch(&c).is_none());
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn the_queue_and_each_batch_are_bounded_in_bytes() {
        let c = cfg(r#"{"cluster":"sink","max_queue_bytes":2500,"max_batch_bytes":1500}"#);
        let mut q = SampleQueue::default();
        let line = vec![b'x'; 1000];
        assert!(q.push(line.clone(), &c));
        assert!(q.push(line.clone(), &c));
        assert!(!q.push(line.clone(), &c), "2000 + 1000 bytes > max_queue_bytes");
        assert!(q.push(vec![b'y'; 400], &c), "2400 bytes fit");
        assert_eq!(q.bytes(), 2400);
        // One 1000-byte sample per batch (two would pass 1500 bytes); a larger sample still goes alone.
        assert_eq!(q.drain_batch(&c).unwrap().1, 1);
        assert_eq!(q.drain_batch(&c).unwrap().1, 2, "1000 + 400 bytes");
        assert_eq!(q.bytes(), 0);
        assert!(q.push(vec![b'z'; 2000], &c));
        assert_eq!(q.drain_batch(&c).unwrap().1, 1, "a sample larger than a batch goes alone");
    }

    #[test]
    fn otlp_logs_wrap_each_sample() {
        let c = cfg(r#"{"cluster":"otel","format":"otlp"}"#);
        assert_eq!(c.path(), "/v1/logs");
        let mut q = SampleQueue::default();
        q.push(br#"{"time_unix_ms":1700000000123,"requested_model":"fast","request_id":"r9"}"#.to_vec(), &c);
        let (body, n) = q.drain_batch(&c).unwrap();
        assert_eq!(n, 1);
        let v: Value = serde_json::from_slice(&body).unwrap();
        let rec = &v["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0];
        assert_eq!(rec["timeUnixNano"], "1700000000123000000");
        assert!(rec["body"]["stringValue"].as_str().unwrap().contains("\"r9\""));
        assert_eq!(rec["attributes"][0]["key"], "gen_ai.request.model");
    }
}
