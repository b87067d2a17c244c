//! The semantic cache: a request whose last user message is a paraphrase of an earlier one (same
//! scope, model, history, system prompt, tools and parameters) gets that earlier answer.
//!
//! The question is embedded by a configured embeddings model (an HTTP call from the filter to an
//! Envoy cluster: the gateway's own listener or a backend). The vectors live in proxy-wasm shared
//! data in a fixed set of buckets (`max_entries / WAYS`, each holding up to `WAYS` vectors); a
//! partition (scope + the request without its last user message) hashes to one bucket, and a lookup
//! reads that bucket once and takes the most similar vector of the same partition at or above the
//! threshold. Each vector points to an entry of the exact cache, which holds the answer: an entry
//! evicted or expired there is a miss here.

use serde::Deserialize;
use serde_json::Value;

use crate::policy::store::{update, SharedStore};

/// Vectors per bucket.
pub const WAYS: usize = 8;
/// Largest vector accepted from the embeddings model.
pub const MAX_DIMS: usize = 4096;
/// Most of the question sent to the embeddings model.
pub const MAX_TEXT_BYTES: usize = 8192;
const VERSION: u8 = 1;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SemanticConfig {
    /// Envoy cluster that answers OpenAI-shaped `POST /v1/embeddings`.
    pub cluster: String,
    /// The embeddings model to ask for.
    pub model: String,
    #[serde(default = "default_path")]
    pub path: String,
    /// `:authority` of the call (default: the cluster name).
    #[serde(default)]
    pub authority: Option<String>,
    /// Cosine similarity at or above which a cached answer is served.
    #[serde(default = "default_threshold")]
    pub threshold: f32,
    #[serde(default = "default_entries")]
    pub max_entries: u32,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u32,
    /// Environment variable with a key sent as `authorization: Bearer …` (a virtual key when the
    /// cluster is the gateway's own listener).
    #[serde(default)]
    pub api_key_env: Option<String>,
}

fn default_path() -> String {
    "/v1/embeddings".to_string()
}
fn default_threshold() -> f32 {
    0.9
}
fn default_entries() -> u32 {
    1024
}
fn default_timeout() -> u32 {
    2000
}

impl SemanticConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.cluster.is_empty() || self.model.is_empty() {
            return Err("cache.semantic: cluster and model must be set".into());
        }
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            return Err("cache.semantic: threshold must be in (0, 1]".into());
        }
        if self.max_entries == 0 || self.timeout_ms == 0 {
            return Err("cache.semantic: max_entries and timeout_ms must be positive".into());
        }
        Ok(())
    }

    pub fn authority(&self) -> &str {
        self.authority.as_deref().unwrap_or(&self.cluster)
    }

    /// The body of the embeddings call.
    pub fn request_body(&self, text: &str) -> Vec<u8> {
        let mut end = text.len().min(MAX_TEXT_BYTES);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        serde_json::to_vec(&serde_json::json!({"model": self.model, "input": &text[..end]})).unwrap_or_default()
    }
}

/// The unit vector of the first embedding of an OpenAI-shaped embeddings answer.
pub fn parse_embedding(body: &[u8]) -> Option<Vec<f32>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = v.get("data")?.as_array()?.first()?.get("embedding")?.as_array()?;
    if e.is_empty() || e.len() > MAX_DIMS {
        return None;
    }
    let mut out = Vec::with_capacity(e.len());
    for x in e {
        let f = x.as_f64()? as f32;
        if !f.is_finite() {
            return None;
        }
        out.push(f);
    }
    let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm.is_nan() || norm <= 0.0 || !norm.is_finite() {
        return None;
    }
    out.iter_mut().for_each(|x| *x /= norm);
    Some(out)
}

#[derive(Debug, Clone, PartialEq)]
struct Item {
    partition: [u8; 32],
    exact: [u8; 32],
    expires_ms: u64,
    stored_ms: u64,
    vector: Vec<f32>,
}

fn decode(b: Option<&[u8]>) -> Vec<Item> {
    let mut out = Vec::new();
    let Some(b) = b else { return out };
    if b.first() != Some(&VERSION) {
        return out;
    }
    let mut at = 1usize;
    let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
        let s = b.get(*at..*at + n)?;
        *at += n;
        Some(s)
    };
    while at < b.len() && out.len() < WAYS {
        let parsed = (|| {
            let partition: [u8; 32] = take(&mut at, 32)?.try_into().ok()?;
            let exact: [u8; 32] = take(&mut at, 32)?.try_into().ok()?;
            let expires_ms = u64::from_le_bytes(take(&mut at, 8)?.try_into().ok()?);
            let stored_ms = u64::from_le_bytes(take(&mut at, 8)?.try_into().ok()?);
            let dims = u16::from_le_bytes(take(&mut at, 2)?.try_into().ok()?) as usize;
            let raw = take(&mut at, dims * 4)?;
            let vector = raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            Some(Item { partition, exact, expires_ms, stored_ms, vector })
        })();
        match parsed {
            Some(i) => out.push(i),
            None => return Vec::new(), // unreadable: start afresh
        }
    }
    out
}

fn encode(items: &[Item]) -> Vec<u8> {
    let mut v = vec![VERSION];
    for i in items {
        v.extend_from_slice(&i.partition);
        v.extend_from_slice(&i.exact);
        v.extend_from_slice(&i.expires_ms.to_le_bytes());
        v.extend_from_slice(&i.stored_ms.to_le_bytes());
        v.extend_from_slice(&(i.vector.len() as u16).to_le_bytes());
        for f in &i.vector {
            v.extend_from_slice(&f.to_le_bytes());
        }
    }
    v
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return -1.0;
    }
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The vectors in shared data.
#[derive(Debug, Clone)]
pub struct SemanticIndex {
    prefix: String,
    buckets: u32,
    ttl_ms: u64,
    threshold: f32,
}

impl SemanticIndex {
    pub fn new(cfg: &SemanticConfig, ttl_ms: u64) -> SemanticIndex {
        let buckets = (cfg.max_entries as usize).div_ceil(WAYS).max(1) as u32;
        SemanticIndex { prefix: format!("sw:semantic:{buckets}x{WAYS}:"), buckets, ttl_ms, threshold: cfg.threshold }
    }

    fn bucket_key(&self, partition: &[u8; 32]) -> String {
        let mut x = [0u8; 8];
        x.copy_from_slice(&partition[..8]);
        format!("{}{}", self.prefix, u64::from_le_bytes(x) % u64::from(self.buckets))
    }

    /// The exact-cache key of the most similar live question of the partition, with its
    /// similarity, if at or above the threshold.
    pub fn nearest<S: SharedStore + ?Sized>(&self, store: &S, partition: &[u8; 32], vector: &[f32], now_ms: u64) -> Option<([u8; 32], f32)> {
        let (cur, _) = store.get(&self.bucket_key(partition));
        decode(cur.as_deref())
            .into_iter()
            .filter(|i| i.partition == *partition && i.expires_ms > now_ms)
            .map(|i| (i.exact, dot(&i.vector, vector)))
            .filter(|(_, s)| *s >= self.threshold)
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// Remembers a question's vector for the exact-cache entry `exact` (evicting the bucket's
    /// expired items, then its oldest, to stay within `WAYS`).
    pub fn insert<S: SharedStore + ?Sized>(&self, store: &S, partition: &[u8; 32], exact: &[u8; 32], vector: &[f32], now_ms: u64) -> bool {
        if vector.is_empty() || vector.len() > MAX_DIMS {
            return false;
        }
        update(store, &self.bucket_key(partition), |cur| -> Result<Vec<u8>, ()> {
            let mut items = decode(cur);
            items.retain(|i| i.expires_ms > now_ms && i.exact != *exact);
            while items.len() >= WAYS {
                let oldest = items.iter().enumerate().min_by_key(|(_, i)| i.stored_ms).map(|(n, _)| n).unwrap_or(0);
                items.remove(oldest);
            }
            items.push(Item { partition: *partition, exact: *exact, expires_ms: now_ms.saturating_add(self.ttl_ms), stored_ms: now_ms, vector: vector.to_vec() });
            Ok(encode(&items))
        })
        .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::store::MemStore;

    fn cfg(threshold: f32) -> SemanticConfig {
        serde_json::from_value(serde_json::json!({"cluster": "emb", "model": "m", "threshold": threshold, "max_entries": 8})).unwrap()
    }

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn nearest_above_threshold_in_the_same_partition_only() {
        let store = MemStore::new();
        let idx = SemanticIndex::new(&cfg(0.9), 1000);
        let (p, q) = ([1u8; 32], [2u8; 32]);
        assert!(idx.insert(&store, &p, &[10u8; 32], &unit(&[1.0, 0.0, 0.0]), 0));
        assert!(idx.insert(&store, &p, &[11u8; 32], &unit(&[0.0, 1.0, 0.0]), 0));
        // Close to the first (cos ≈ 0.995): it wins.
        let (k, s) = idx.nearest(&store, &p, &unit(&[1.0, 0.1, 0.0]), 10).unwrap();
        assert_eq!(k, [10u8; 32]);
        assert!(s > 0.99);
        // Unrelated (cos ≈ 0.58 to both): a miss.
        assert!(idx.nearest(&store, &p, &unit(&[1.0, 1.0, 1.0]), 10).is_none());
        // Another partition never matches, however close.
        assert!(idx.nearest(&store, &q, &unit(&[1.0, 0.0, 0.0]), 10).is_none());
        // Expired.
        assert!(idx.nearest(&store, &p, &unit(&[1.0, 0.0, 0.0]), 1000).is_none());
        // Another dimension never matches.
        assert!(idx.nearest(&store, &p, &unit(&[1.0, 0.0]), 10).is_none());
    }

    #[test]
    fn buckets_are_bounded() {
        let store = MemStore::new();
        let idx = SemanticIndex::new(&cfg(0.5), 1_000_000);
        for i in 0..100u8 {
            let mut p = [0u8; 32];
            p[0] = i;
            idx.insert(&store, &p, &[i; 32], &unit(&[1.0, f32::from(i)]), u64::from(i));
        }
        // 8 entries → one bucket of at most WAYS vectors.
        assert_eq!(store.len(), 1);
        let (v, _) = store.get(&idx.bucket_key(&[0u8; 32]));
        assert_eq!(decode(v.as_deref()).len(), WAYS);
        // The newest stays, the oldest went.
        let mut p = [0u8; 32];
        p[0] = 99;
        assert!(idx.nearest(&store, &p, &unit(&[1.0, 99.0]), 200).is_some());
        p[0] = 0;
        assert!(idx.nearest(&store, &p, &unit(&[1.0, 0.0]), 200).is_none());
    }

    #[test]
    fn embeddings_answers_are_parsed_defensively() {
        let v = parse_embedding(br#"{"data":[{"embedding":[3.0,4.0]}]}"#).unwrap();
        assert_eq!(v, vec![0.6, 0.8]);
        for bad in [&br#"{"data":[]}"#[..], br#"{"data":[{"embedding":[0,0]}]}"#, br#"{"data":[{"embedding":["x"]}]}"#, b"nope", br#"{"error":{}}"#] {
            assert!(parse_embedding(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
        let c = cfg(0.9);
        let long = "é".repeat(MAX_TEXT_BYTES);
        let body: Value = serde_json::from_slice(&c.request_body(&long)).unwrap();
        assert!(body["input"].as_str().unwrap().len() <= MAX_TEXT_BYTES);
        assert_eq!(body["model"], "m");
        assert!(serde_json::from_value::<SemanticConfig>(serde_json::json!({"cluster": "e", "model": "m", "threshold": 1.5})).unwrap().validate().is_err());
    }
}
