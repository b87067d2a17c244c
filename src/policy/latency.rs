//! Recent health of each candidate model for policy `fastest`: exponentially weighted moving
//! averages of the time to first token and of the error rate, kept in proxy-wasm shared data (one
//! key per model, updated with compare-and-swap, shared by every worker and surviving a
//! configuration reload of the same VM), and the choice they lead to.
//!
//! A candidate's score is its average time to first token plus its error rate times a penalty
//! (an error costs as much as `ERROR_PENALTY_MS` of waiting); lower is better. A candidate never
//! measured scores 0 and is tried first. With probability `exploration` a request goes to another
//! candidate than the best, so a recovered one is noticed.

use crate::policy::store::{self, SharedStore};

pub const KEY_PREFIX: &str = "switchyard/latency/";
/// Weight of a new sample in the moving averages.
pub const ALPHA: f64 = 0.3;
/// What an error counts for, in milliseconds of time to first token.
pub const ERROR_PENALTY_MS: f64 = 5000.0;
/// Default share of requests sent to a candidate other than the best.
pub const DEFAULT_EXPLORATION: f64 = 0.1;

const VERSION: u8 = 1;
const ENCODED_LEN: usize = 1 + 8 * 4;

/// A candidate's recent health.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Health {
    /// Moving average of the time to first token (ms); `None` until a request produced a token.
    pub ttft_ms: Option<f64>,
    /// Moving average of errors (0 to 1).
    pub error_rate: f64,
    pub samples: u64,
    pub updated_ms: u64,
}

/// One finished request of a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Time to its first token (stream) or its answer (non-stream); `None` when it failed first.
    pub ttft_ms: Option<u64>,
    pub error: bool,
}

impl Health {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCODED_LEN);
        out.push(VERSION);
        out.extend_from_slice(&self.ttft_ms.unwrap_or(f64::NAN).to_bits().to_le_bytes());
        out.extend_from_slice(&self.error_rate.to_bits().to_le_bytes());
        out.extend_from_slice(&self.samples.to_le_bytes());
        out.extend_from_slice(&self.updated_ms.to_le_bytes());
        out
    }

    /// `None` for anything that is not a value this version wrote.
    pub fn decode(bytes: &[u8]) -> Option<Health> {
        if bytes.len() != ENCODED_LEN || bytes.first() != Some(&VERSION) {
            return None;
        }
        let word = |i: usize| -> Option<u64> { Some(u64::from_le_bytes(bytes.get(1 + 8 * i..9 + 8 * i)?.try_into().ok()?)) };
        let ttft = f64::from_bits(word(0)?);
        let error_rate = f64::from_bits(word(1)?);
        if !(0.0..=1.0).contains(&error_rate) || ttft < 0.0 || ttft.is_infinite() {
            return None;
        }
        Some(Health { ttft_ms: (!ttft.is_nan()).then_some(ttft), error_rate, samples: word(2)?, updated_ms: word(3)? })
    }

    /// This health after `s`.
    pub fn observe(prev: Option<Health>, s: Sample, now_ms: u64) -> Health {
        let err = if s.error { 1.0 } else { 0.0 };
        let Some(p) = prev else {
            return Health { ttft_ms: s.ttft_ms.map(|t| t as f64), error_rate: err, samples: 1, updated_ms: now_ms };
        };
        let ttft_ms = match (p.ttft_ms, s.ttft_ms) {
            (Some(avg), Some(t)) => Some(avg * (1.0 - ALPHA) + ALPHA * t as f64),
            (None, Some(t)) => Some(t as f64),
            (avg, None) => avg,
        };
        Health { ttft_ms, error_rate: p.error_rate * (1.0 - ALPHA) + ALPHA * err, samples: p.samples.saturating_add(1), updated_ms: now_ms }
    }

    /// Lower is better.
    pub fn score_ms(&self) -> f64 {
        self.ttft_ms.unwrap_or(ERROR_PENALTY_MS) + self.error_rate * ERROR_PENALTY_MS
    }
}

/// A candidate's score; a candidate never measured scores 0 (it is tried first).
pub fn score_ms(h: Option<&Health>) -> f64 {
    h.map_or(0.0, Health::score_ms)
}

/// Which of `scores` to use: the lowest (the first of equals), or, when `roll` (uniform in [0, 1))
/// falls within `exploration`, another one chosen by `pick`.
pub fn choose(scores: &[f64], exploration: f64, roll: f64, pick: u32) -> Option<usize> {
    let best = scores.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i)?;
    if scores.len() > 1 && roll < exploration {
        let others = scores.len() - 1;
        let k = pick as usize % others;
        return Some(if k >= best { k + 1 } else { k });
    }
    Some(best)
}

pub fn key(model: &str) -> String {
    format!("{KEY_PREFIX}{model}")
}

pub fn load(store: &impl SharedStore, model: &str) -> Option<Health> {
    store.get(&key(model)).0.as_deref().and_then(Health::decode)
}

/// Adds a sample to `model`'s shared health; returns the new health.
pub fn record(store: &impl SharedStore, model: &str, s: Sample, now_ms: u64) -> Option<Health> {
    let mut out = None;
    let res = store::update::<_, (), _>(store, &key(model), |cur| {
        let h = Health::observe(cur.and_then(Health::decode), s, now_ms);
        out = Some(h);
        Ok(h.encode())
    });
    res.ok().and(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::store::MemStore;

    const OK: fn(u64) -> Sample = |t| Sample { ttft_ms: Some(t), error: false };
    const FAIL: Sample = Sample { ttft_ms: None, error: true };

    #[test]
    fn moving_averages() {
        let h = Health::observe(None, OK(100), 1);
        assert_eq!((h.ttft_ms, h.error_rate, h.samples), (Some(100.0), 0.0, 1));
        let h = Health::observe(Some(h), OK(200), 2);
        assert!((h.ttft_ms.unwrap() - 130.0).abs() < 1e-9, "{h:?}");
        let h = Health::observe(Some(h), FAIL, 3);
        assert!((h.ttft_ms.unwrap() - 130.0).abs() < 1e-9 && (h.error_rate - 0.3).abs() < 1e-9);
        assert!((h.score_ms() - (130.0 + 0.3 * ERROR_PENALTY_MS)).abs() < 1e-6);
        // Errors fade as successes come back.
        let mut h = h;
        for _ in 0..20 {
            h = Health::observe(Some(h), OK(130), 4);
        }
        assert!(h.error_rate < 0.001 && h.samples == 23);
        // Only failures so far: scored as slow and failing.
        let f = Health::observe(None, FAIL, 1);
        assert_eq!(f.score_ms(), 2.0 * ERROR_PENALTY_MS);
    }

    #[test]
    fn encoding_round_trips_and_rejects_garbage() {
        let h = Health { ttft_ms: Some(12.5), error_rate: 0.25, samples: 7, updated_ms: 99 };
        assert_eq!(Health::decode(&h.encode()), Some(h));
        let none = Health { ttft_ms: None, ..h };
        assert_eq!(Health::decode(&none.encode()), Some(none));
        assert_eq!(Health::decode(b""), None);
        assert_eq!(Health::decode(&[2; ENCODED_LEN]), None);
        let mut bad = h.encode();
        bad[9..17].copy_from_slice(&2.0f64.to_bits().to_le_bytes());
        assert_eq!(Health::decode(&bad), None, "error rate above 1");
    }

    #[test]
    fn choice_prefers_unmeasured_then_fastest_and_explores() {
        assert_eq!(choose(&[], 0.1, 0.0, 0), None);
        assert_eq!(choose(&[300.0, 120.0, 500.0], 0.1, 0.5, 0), Some(1));
        assert_eq!(choose(&[300.0, 0.0, 500.0], 0.1, 0.5, 0), Some(1));
        assert_eq!(choose(&[120.0, 120.0], 0.1, 0.5, 0), Some(0), "first of equals");
        // Exploring: never the best, every other one reachable.
        assert_eq!(choose(&[300.0, 120.0, 500.0], 0.1, 0.05, 0), Some(0));
        assert_eq!(choose(&[300.0, 120.0, 500.0], 0.1, 0.05, 1), Some(2));
        assert_eq!(choose(&[300.0, 120.0, 500.0], 0.1, 0.05, 2), Some(0));
        assert_eq!(choose(&[300.0], 0.9, 0.0, 5), Some(0));
        assert_eq!(score_ms(None), 0.0);
    }

    #[test]
    fn shared_records_accumulate() {
        let store = MemStore::new();
        assert_eq!(load(&store, "m"), None);
        record(&store, "m", OK(100), 1).unwrap();
        let h = record(&store, "m", OK(200), 2).unwrap();
        assert_eq!(load(&store, "m"), Some(h));
        assert_eq!(load(&store, "other"), None);
    }
}
