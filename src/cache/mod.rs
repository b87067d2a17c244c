//! Looking inside the traffic: the exact answer cache and quality sampling. Plain Rust over the
//! `SharedStore` model of proxy-wasm shared data; `src/filter/gateway.rs` only moves the bytes.
//!
//! The cache works on the canonical OpenAI chat request and answer the gateway sees, so every
//! ingress that is translated into a chat request is covered.

pub mod key;
pub mod replay;
pub mod sample;
pub mod semantic;
pub mod slots;

use serde::Deserialize;

use crate::api::chat::Usage;
use crate::policy::routing::glob_match;
use crate::policy::store::SharedStore;

pub use key::Scope;

/// The response header saying what the cache did.
pub const CACHE_HEADER: &str = "x-switchyard-cache";

/// `cache` in the gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Who shares entries: `key` (default), `team` (a key without a team keeps its own), `global`.
    #[serde(default)]
    pub scope: ScopeKind,
    #[serde(default = "default_ttl")]
    pub ttl_seconds: u32,
    #[serde(default = "default_entries")]
    pub max_entries: u32,
    /// Bound on the bytes of all stored answers (each set of 4 entries gets its share).
    #[serde(default = "default_bytes")]
    pub max_bytes: u64,
    #[serde(default = "default_entry_bytes")]
    pub max_entry_bytes: u32,
    /// Also cache requests whose `temperature` is absent or above 0 (sampled answers).
    #[serde(default)]
    pub cache_sampled: bool,
    /// Charge a hit's original cost to the key's budget (default: a hit costs nothing).
    #[serde(default)]
    pub charge_hits: bool,
    /// Resolved model names (`*` patterns) whose answers are cached; empty: every model.
    #[serde(default)]
    pub models: Vec<String>,
    /// Serve paraphrases too (`semantic::SemanticConfig`). Absent: exact matches only.
    #[serde(default)]
    pub semantic: Option<semantic::SemanticConfig>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ScopeKind {
    #[default]
    Key,
    Team,
    Global,
}

fn default_ttl() -> u32 {
    300
}
fn default_entries() -> u32 {
    1024
}
fn default_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_entry_bytes() -> u32 {
    1024 * 1024
}

/// What the cache did for one request (`x-switchyard-cache`, metrics, access log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    Bypass,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Bypass => "bypass",
        }
    }
}

/// The compiled cache configuration.
#[derive(Debug, Clone)]
pub struct Cache {
    pub cfg: CacheConfig,
    slots: slots::Slots,
    semantic: Option<semantic::SemanticIndex>,
    /// `authorization` of the embeddings call, read from `semantic.api_key_env` at configuration.
    semantic_auth: Option<String>,
}

/// A stored answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The body was folded from a stream (else: the exact bytes of a whole answer).
    pub folded: bool,
    /// What the original answer cost, in micro-USD, when it was priced.
    pub cost_micros: Option<u64>,
    /// A `chat.completion` JSON body.
    pub body: Vec<u8>,
}

const ENTRY_VERSION: u8 = 1;

impl Entry {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.body.len() + 10);
        v.push(ENTRY_VERSION);
        v.push(u8::from(self.folded));
        v.extend_from_slice(&self.cost_micros.unwrap_or(u64::MAX).to_le_bytes());
        v.extend_from_slice(&self.body);
        v
    }

    pub fn decode(b: &[u8]) -> Option<Entry> {
        if b.len() < 10 || b[0] != ENTRY_VERSION {
            return None;
        }
        let cost = u64::from_le_bytes(b[2..10].try_into().ok()?);
        Some(Entry { folded: b[1] == 1, cost_micros: (cost != u64::MAX).then_some(cost), body: b[10..].to_vec() })
    }

    /// The answer as the client asked for it: the whole JSON body, or the OpenAI stream.
    pub fn answer(&self, stream: bool, include_usage: bool) -> Option<Vec<u8>> {
        if stream {
            replay::stream_from_completion(&self.body, include_usage)
        } else {
            Some(self.body.clone())
        }
    }

    pub fn usage(&self) -> Option<Usage> {
        crate::api::chat::ResponseSummary::parse(&self.body).usage
    }
}

/// What the client asked of the cache with its `cache-control` request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Normal: look up, store a miss.
    Normal,
    /// `no-cache`: do not serve from the cache, store the fresh answer.
    Refresh,
    /// `no-store`: neither look up nor store.
    Bypass,
}

/// Reads a `cache-control` request header (directives are case-insensitive, comma-separated).
pub fn control_of(header: Option<&str>) -> Control {
    let Some(h) = header else { return Control::Normal };
    let mut c = Control::Normal;
    for d in h.split(',') {
        let d = d.trim();
        if d.eq_ignore_ascii_case("no-store") {
            return Control::Bypass;
        }
        if d.eq_ignore_ascii_case("no-cache") || d.eq_ignore_ascii_case("max-age=0") {
            c = Control::Refresh;
        }
    }
    c
}

/// Who is asking, as far as scoping goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller<'a> {
    pub key_id: Option<&'a str>,
    pub team: Option<&'a str>,
    /// The request carries the client's own provider credential: never cached (its answer was paid
    /// by that credential, and another one might not be allowed to get it).
    pub byok: bool,
    /// Guardrails rewrote the request or will rewrite the answer: what the client gets is not the
    /// provider's answer to this body, so it is not cached.
    pub guarded: bool,
}

/// A request's cache decision: what to tell the client and, for a miss, where to store the answer.
#[derive(Debug)]
pub struct Ticket {
    pub status: CacheStatus,
    key: Option<[u8; 32]>,
    semantic: Option<Box<SemanticPending>>,
}

/// A missed request's part in the semantic cache.
#[derive(Debug)]
struct SemanticPending {
    partition: [u8; 32],
    /// The last user message, to embed.
    text: String,
    /// Look up (not a refresh).
    lookup: bool,
    /// Its embedding, once the call answered.
    vector: Option<Vec<f32>>,
    model: String,
}

/// The embeddings call of a missed request.
#[derive(Debug)]
pub struct SemanticCall<'a> {
    pub cluster: &'a str,
    pub path: &'a str,
    pub authority: &'a str,
    pub authorization: Option<&'a str>,
    pub body: Vec<u8>,
    pub timeout_ms: u32,
}

/// The outcome of [`Cache::begin`].
#[derive(Debug)]
pub enum Begin {
    /// Serve this entry; nothing goes upstream.
    Hit(Entry),
    /// Go upstream; the ticket stores the answer if it may.
    Upstream(Ticket),
}

impl Cache {
    pub fn new(cfg: CacheConfig) -> Result<Cache, String> {
        if cfg.max_entries == 0 || cfg.max_bytes == 0 || cfg.ttl_seconds == 0 {
            return Err("cache: max_entries, max_bytes and ttl_seconds must be positive".into());
        }
        let ttl_ms = u64::from(cfg.ttl_seconds) * 1000;
        let slots = slots::Slots::new("cache", cfg.max_entries, cfg.max_bytes, cfg.max_entry_bytes, ttl_ms);
        let mut semantic = None;
        let mut semantic_auth = None;
        if let Some(s) = &cfg.semantic {
            s.validate()?;
            semantic = Some(semantic::SemanticIndex::new(s, ttl_ms));
            semantic_auth = s.api_key_env.as_ref().and_then(|k| std::env::var(k).ok()).filter(|v| !v.is_empty()).map(|v| format!("Bearer {v}"));
        }
        Ok(Cache { cfg, slots, semantic, semantic_auth })
    }

    /// The scope a caller's entries live in.
    pub fn scope_of(&self, caller: &Caller) -> Scope {
        match (self.cfg.scope, caller.key_id, caller.team) {
            (ScopeKind::Global, _, _) => Scope::Global,
            (ScopeKind::Team, _, Some(t)) => Scope::Team(t.to_string()),
            (_, Some(k), _) => Scope::Key(k.to_string()),
            // A gateway without keys has one caller: everyone.
            (_, None, _) => Scope::Global,
        }
    }

    /// Decides for one chat request (its body as sent, the model it resolved to).
    pub fn begin<S: SharedStore + ?Sized>(&self, store: &S, body: &[u8], resolved_model: &str, caller: &Caller, control: Control, now_ms: u64) -> Begin {
        let bypass = Begin::Upstream(Ticket { status: CacheStatus::Bypass, key: None, semantic: None });
        if control == Control::Bypass || caller.byok || caller.guarded {
            return bypass;
        }
        if !self.cfg.models.is_empty() && !self.cfg.models.iter().any(|p| glob_match(p, resolved_model)) {
            return bypass;
        }
        let Ok(canonical) = key::canonical_request(body, resolved_model, self.cfg.cache_sampled) else { return bypass };
        let k = key::cache_key(&self.scope_of(caller), &canonical);
        if control == Control::Normal {
            if let Some(e) = self.slots.get(store, &k, now_ms).and_then(|b| Entry::decode(&b)) {
                return Begin::Hit(e);
            }
        }
        let semantic = self.semantic.as_ref().and_then(|_| {
            let (without_last, text) = key::semantic_parts(body, resolved_model, self.cfg.cache_sampled)?;
            Some(Box::new(SemanticPending {
                partition: key::partition_key(&self.scope_of(caller), &without_last),
                text,
                lookup: control == Control::Normal,
                vector: None,
                model: resolved_model.to_string(),
            }))
        });
        Begin::Upstream(Ticket { status: CacheStatus::Miss, key: Some(k), semantic })
    }

    /// The embeddings call a missed request makes before going upstream: `(cluster, path,
    /// authority, authorization, body)`. `None` when the semantic cache has nothing to do.
    pub fn semantic_call(&self, ticket: &Ticket) -> Option<SemanticCall<'_>> {
        let cfg = self.cfg.semantic.as_ref()?;
        let p = ticket.semantic.as_ref().filter(|_| ticket.key.is_some())?;
        Some(SemanticCall {
            cluster: &cfg.cluster,
            path: &cfg.path,
            authority: cfg.authority(),
            authorization: self.semantic_auth.as_deref(),
            body: cfg.request_body(&p.text),
            timeout_ms: cfg.timeout_ms,
        })
    }

    /// The embeddings call answered: remembers the vector (to index the answer once stored) and
    /// returns the cached answer of the nearest paraphrase, if any, with its similarity.
    pub fn semantic_answer<S: SharedStore + ?Sized>(&self, store: &S, ticket: &mut Ticket, status: u16, body: &[u8], now_ms: u64) -> Option<(Entry, f32)> {
        let index = self.semantic.as_ref()?;
        let p = ticket.semantic.as_mut()?;
        if !(200..300).contains(&status) {
            return None;
        }
        let vector = semantic::parse_embedding(body)?;
        let found = if p.lookup { index.nearest(store, &p.partition, &vector, now_ms) } else { None };
        p.vector = Some(vector);
        let (exact, similarity) = found?;
        let entry = self.slots.get(store, &exact, now_ms).and_then(|b| Entry::decode(&b))?;
        Some((entry, similarity))
    }

    /// Stores a finished answer of a missed request, if it is one to keep: a 200 whose body is a
    /// chat completion (`folded`: rebuilt from a stream that completed). Returns what happened.
    #[allow(clippy::too_many_arguments)]
    pub fn store<S: SharedStore + ?Sized>(&self, store: &S, ticket: &mut Ticket, status: u16, body: &[u8], folded: bool, cost_micros: Option<u64>, now_ms: u64) -> StoreResult {
        let Some(k) = ticket.key.take() else { return StoreResult::NotStored };
        if status != 200 || !is_success_completion(body) {
            return StoreResult::NotStored;
        }
        let entry = Entry { folded, cost_micros, body: body.to_vec() };
        match self.slots.insert(store, &k, &entry.encode(), now_ms) {
            Ok(evicted) => {
                if let (Some(index), Some(p)) = (self.semantic.as_ref(), ticket.semantic.as_ref()) {
                    if let Some(v) = &p.vector {
                        index.insert(store, &p.partition, &k, v, now_ms);
                    }
                }
                StoreResult::Stored { evicted }
            }
            Err(slots::InsertError::TooLarge) => StoreResult::TooLarge,
            Err(slots::InsertError::Contention) => StoreResult::NotStored,
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.capacity()
    }
}

impl Ticket {
    /// Whether the answer must be watched to be stored.
    pub fn wants_answer(&self) -> bool {
        self.key.is_some()
    }

    /// The resolved model of a request waiting for its embedding.
    pub fn semantic_model(&self) -> Option<&str> {
        self.semantic.as_ref().map(|p| p.model.as_str())
    }

    /// The answer will not be stored (an error, a cut stream).
    pub fn abandon(&mut self) {
        self.key = None;
    }
}

/// What a request's answer is watched for: the cache (a miss to store) and quality sampling (the
/// request body kept for the sample). The filter feeds it the answer as it passes.
#[derive(Debug)]
pub struct Watch {
    pub ticket: Option<Ticket>,
    sample_request: Option<Vec<u8>>,
    max_bytes: usize,
    fold: Option<replay::StreamFold>,
    whole: Option<Vec<u8>>,
    whole_seen: usize,
    stream: bool,
}

impl Watch {
    /// `max_bytes`: the largest answer worth keeping (a larger one is neither stored nor sampled).
    pub fn new(ticket: Option<Ticket>, sample_request: Option<Vec<u8>>, max_bytes: usize) -> Watch {
        Watch { ticket, sample_request, max_bytes, fold: None, whole: None, whole_seen: 0, stream: false }
    }

    pub fn cache_status(&self) -> Option<CacheStatus> {
        self.ticket.as_ref().map(|t| t.status)
    }

    fn wants_answer(&self) -> bool {
        self.ticket.as_ref().is_some_and(Ticket::wants_answer) || self.sample_request.is_some()
    }

    /// The response started: only a 200 is kept; a stream is folded as it passes.
    pub fn on_response_headers(&mut self, status: u16, stream: bool) {
        self.stream = stream;
        if status != 200 {
            if let Some(t) = self.ticket.as_mut() {
                t.abandon();
            }
            self.sample_request = None;
        } else if stream && self.wants_answer() {
            self.fold = Some(replay::StreamFold::new(self.max_bytes));
        }
    }

    /// A piece of a stream answer, as the upstream sent it.
    pub fn stream_chunk(&mut self, chunk: &[u8]) {
        if let Some(f) = self.fold.as_mut() {
            f.push(chunk);
        }
    }

    /// Whether the filter should hand over the whole (non-stream) answer.
    pub fn wants_whole(&self) -> bool {
        !self.stream && self.wants_answer()
    }

    /// Counts the bytes of a whole answer as they pass.
    pub fn count_whole(&mut self, n: usize) {
        self.whole_seen = self.whole_seen.saturating_add(n);
    }

    /// The whole answer as the filter kept it; ignored unless it is every byte that passed.
    pub fn set_whole(&mut self, body: Vec<u8>) {
        if body.len() == self.whole_seen && body.len() <= self.max_bytes {
            self.whole = Some(body);
        }
    }

    /// The answer as a `chat.completion` body, and whether it was folded from a stream.
    pub fn finish(&mut self) -> Option<(Vec<u8>, bool)> {
        if let Some(f) = self.fold.take() {
            return f.finish().map(|b| (b, true));
        }
        self.whole.take().map(|b| (b, false))
    }

    /// The request body kept for a sample, if this request is sampled.
    pub fn take_sample_request(&mut self) -> Option<Vec<u8>> {
        self.sample_request.take()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreResult {
    Stored { evicted: usize },
    TooLarge,
    NotStored,
}

/// The cache decision and the sampling decision for one chat request. `roll` draws a uniform
/// number in [0, 1) (called only when the request's sampling rate is positive). Returns a hit to
/// serve, or the watch for the answer (`None` when neither feature has anything to do).
#[allow(clippy::too_many_arguments)]
pub fn begin_request<S: SharedStore + ?Sized>(
    cache: Option<&Cache>,
    sampling: Option<&sample::SamplingConfig>,
    store: &S,
    body: &[u8],
    sample_body: &[u8],
    requested_model: &str,
    resolved_model: &str,
    caller: &Caller,
    control: Control,
    now_ms: u64,
    roll: impl FnOnce() -> f64,
) -> (Option<Entry>, Option<Watch>) {
    let ticket = match cache.map(|c| c.begin(store, body, resolved_model, caller, control, now_ms)) {
        Some(Begin::Hit(e)) => return (Some(e), None),
        Some(Begin::Upstream(t)) => Some(t),
        None => None,
    };
    let sample_request = sampling.and_then(|s| {
        let rate = s.rate_for(caller.key_id, caller.team, requested_model, resolved_model);
        (rate > 0.0 && sample_body.len() <= s.max_sample_bytes && roll() < rate).then(|| sample_body.to_vec())
    });
    if ticket.is_none() && sample_request.is_none() {
        return (None, None);
    }
    let max_bytes = cache.map_or(0, |c| c.cfg.max_entry_bytes as usize).max(sampling.map_or(0, |s| s.max_sample_bytes));
    (None, Some(Watch::new(ticket, sample_request, max_bytes)))
}

/// A 200 body that is a chat completion with choices (not an error object that slipped through).
fn is_success_completion(body: &[u8]) -> bool {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => v.get("error").is_none() && v.get("choices").and_then(|c| c.as_array()).is_some_and(|c| !c.is_empty()),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::store::MemStore;

    const BODY: &str = r#"{"model":"fast","temperature":0,"messages":[{"role":"user","content":"Hi"}]}"#;
    const ANSWER: &str = r#"{"id":"c1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;

    fn cache(scope: ScopeKind) -> Cache {
        let mut cfg: CacheConfig = serde_json::from_str("{}").unwrap();
        cfg.scope = scope;
        Cache::new(cfg).unwrap()
    }

    fn miss(c: &Cache, store: &MemStore, caller: &Caller, control: Control) -> Ticket {
        match c.begin(store, BODY.as_bytes(), "gpt-4o-mini", caller, control, 1000) {
            Begin::Upstream(t) => t,
            Begin::Hit(_) => panic!("unexpected hit"),
        }
    }

    #[test]
    fn a_stored_answer_is_served_to_its_scope_only() {
        let store = MemStore::new();
        let c = cache(ScopeKind::Key);
        let a = Caller { key_id: Some("a"), team: Some("t"), ..Caller::default() };
        let b = Caller { key_id: Some("b"), team: Some("t"), ..Caller::default() };
        let mut t = miss(&c, &store, &a, Control::Normal);
        assert_eq!(t.status, CacheStatus::Miss);
        let r = c.store(&store, &mut t, 200, ANSWER.as_bytes(), false, Some(7), 1000);
        assert_eq!(r, StoreResult::Stored { evicted: 0 });
        match c.begin(&store, BODY.as_bytes(), "gpt-4o-mini", &a, Control::Normal, 2000) {
            Begin::Hit(e) => {
                assert_eq!(e.body, ANSWER.as_bytes());
                assert_eq!(e.cost_micros, Some(7));
                assert_eq!(e.usage().unwrap().total_tokens, 4);
            }
            other => panic!("{other:?}"),
        }
        // Same team, another key: key scope keeps them apart.
        assert_eq!(miss(&c, &store, &b, Control::Normal).status, CacheStatus::Miss);
        // Team scope shares within the team, not outside it.
        let ct = cache(ScopeKind::Team);
        let mut t = miss(&ct, &store, &a, Control::Normal);
        ct.store(&store, &mut t, 200, ANSWER.as_bytes(), false, None, 1000);
        assert!(matches!(ct.begin(&store, BODY.as_bytes(), "gpt-4o-mini", &b, Control::Normal, 2000), Begin::Hit(_)));
        let other_team = Caller { key_id: Some("c"), team: Some("u"), ..Caller::default() };
        assert_eq!(miss(&ct, &store, &other_team, Control::Normal).status, CacheStatus::Miss);
        let no_team = Caller { key_id: Some("a2"), team: None, ..Caller::default() };
        assert_eq!(miss(&ct, &store, &no_team, Control::Normal).status, CacheStatus::Miss);
        // Expired after the TTL (300 s by default).
        assert!(matches!(c.begin(&store, BODY.as_bytes(), "gpt-4o-mini", &a, Control::Normal, 1000 + 300_000), Begin::Upstream(_)));
    }

    #[test]
    fn errors_and_cut_streams_are_not_stored() {
        let store = MemStore::new();
        let c = cache(ScopeKind::Global);
        let caller = Caller::default();
        for (status, body) in [
            (500, ANSWER),
            (429, r#"{"error":{"message":"slow down"}}"#),
            (200, r#"{"error":{"message":"odd"}}"#),
            (200, r#"{"id":"x","choices":[]}"#),
            (200, "not json"),
        ] {
            let mut t = miss(&c, &store, &caller, Control::Normal);
            assert_eq!(c.store(&store, &mut t, status, body.as_bytes(), false, None, 1000), StoreResult::NotStored, "{status} {body}");
        }
        // A stream that never finished.
        let mut w = Watch::new(Some(miss(&c, &store, &caller, Control::Normal)), None, 1 << 20);
        w.on_response_headers(200, true);
        w.stream_chunk(b"data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n");
        assert_eq!(w.finish(), None, "a cut stream gives no answer to store");
        // An error status abandons the ticket whatever the body.
        let mut w = Watch::new(Some(miss(&c, &store, &caller, Control::Normal)), Some(b"{}".to_vec()), 1 << 20);
        w.on_response_headers(503, false);
        assert!(!w.wants_whole());
        assert!(!w.ticket.as_ref().unwrap().wants_answer());
        assert!(w.take_sample_request().is_none());
        // An abandoned ticket stores nothing even if the answer looks fine.
        let mut t = miss(&c, &store, &caller, Control::Normal);
        t.abandon();
        assert_eq!(c.store(&store, &mut t, 200, ANSWER.as_bytes(), false, None, 1000), StoreResult::NotStored);
        assert!(matches!(c.begin(&store, BODY.as_bytes(), "gpt-4o-mini", &caller, Control::Normal, 1500), Begin::Upstream(_)));
    }

    #[test]
    fn a_finished_stream_fills_the_cache_for_a_whole_answer() {
        let store = MemStore::new();
        let c = cache(ScopeKind::Global);
        let caller = Caller::default();
        let mut w = Watch::new(Some(miss(&c, &store, &caller, Control::Normal)), None, 1 << 20);
        w.on_response_headers(200, true);
        assert!(!w.wants_whole());
        w.stream_chunk(b"data: {\"id\":\"s1\",\"object\":\"chat.completion.chunk\",\"created\":2,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"},\"finish_reason\":null}]}\n\ndata: {\"id\":\"s1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n");
        let (body, folded) = w.finish().unwrap();
        assert!(folded);
        assert_eq!(c.store(&store, w.ticket.as_mut().unwrap(), 200, &body, folded, None, 1000), StoreResult::Stored { evicted: 0 });
        let Begin::Hit(e) = c.begin(&store, BODY.as_bytes(), "gpt-4o-mini", &caller, Control::Normal, 1001) else { panic!("miss") };
        assert!(e.folded);
        let v: serde_json::Value = serde_json::from_slice(&e.answer(false, false).unwrap()).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "Hello");
        assert_eq!(v["object"], "chat.completion");
    }

    #[test]
    fn client_control_and_byok() {
        let store = MemStore::new();
        let c = cache(ScopeKind::Global);
        let caller = Caller::default();
        let mut t = miss(&c, &store, &caller, Control::Normal);
        c.store(&store, &mut t, 200, ANSWER.as_bytes(), false, None, 1000);
        // Refresh: not served, but stored again.
        let mut t = miss(&c, &store, &caller, Control::Refresh);
        assert_eq!(t.status, CacheStatus::Miss);
        assert!(t.wants_answer());
        let newer = ANSWER.replace("Hello", "Hello again");
        c.store(&store, &mut t, 200, newer.as_bytes(), false, None, 1000);
        let Begin::Hit(e) = c.begin(&store, BODY.as_bytes(), "gpt-4o-mini", &caller, Control::Normal, 1001) else { panic!() };
        assert_eq!(e.body, newer.as_bytes());
        // Bypass: neither.
        let t = miss(&c, &store, &caller, Control::Bypass);
        assert_eq!((t.status, t.wants_answer()), (CacheStatus::Bypass, false));
        let byok = Caller { byok: true, ..Caller::default() };
        assert_eq!(miss(&c, &store, &byok, Control::Normal).status, CacheStatus::Bypass);
        let guarded = Caller { guarded: true, ..Caller::default() };
        assert_eq!(miss(&c, &store, &guarded, Control::Normal).status, CacheStatus::Bypass);
        assert_eq!(control_of(Some("No-Cache")), Control::Refresh);
        assert_eq!(control_of(Some("max-age=0, no-store")), Control::Bypass);
        assert_eq!(control_of(Some("max-age=60")), Control::Normal);
        assert_eq!(control_of(None), Control::Normal);
    }

    #[test]
    fn sampled_requests_and_unlisted_models_bypass() {
        let store = MemStore::new();
        let mut cfg: CacheConfig = serde_json::from_str(r#"{"models":["gpt-*"]}"#).unwrap();
        cfg.scope = ScopeKind::Global;
        let c = Cache::new(cfg).unwrap();
        let sampled = r#"{"model":"m","temperature":0.7,"messages":[]}"#;
        let caller = Caller::default();
        assert!(matches!(c.begin(&store, sampled.as_bytes(), "gpt-4o", &caller, Control::Normal, 0), Begin::Upstream(Ticket { status: CacheStatus::Bypass, .. })));
        assert!(matches!(c.begin(&store, BODY.as_bytes(), "claude-haiku", &caller, Control::Normal, 0), Begin::Upstream(Ticket { status: CacheStatus::Bypass, .. })));
        assert!(matches!(c.begin(&store, BODY.as_bytes(), "gpt-4o", &caller, Control::Normal, 0), Begin::Upstream(Ticket { status: CacheStatus::Miss, .. })));
        assert!(serde_json::from_str::<CacheConfig>(r#"{"scope":"user"}"#).is_err());
        assert!(Cache::new(serde_json::from_str(r#"{"max_entries":0}"#).unwrap()).is_err());
    }

    #[test]
    fn sampling_decides_per_request_and_keeps_the_body() {
        let store = MemStore::new();
        let s: sample::SamplingConfig = serde_json::from_str(r#"{"cluster":"sink","rate":0.5,"keys":{"never":0}}"#).unwrap();
        let caller = Caller { key_id: Some("k"), ..Caller::default() };
        let (hit, w) = begin_request(None, Some(&s), &store, BODY.as_bytes(), BODY.as_bytes(), "fast", "gpt-4o-mini", &caller, Control::Normal, 0, || 0.49);
        let mut w = w.expect("sampled");
        assert!(hit.is_none() && w.cache_status().is_none());
        w.on_response_headers(200, false);
        assert!(w.wants_whole());
        w.count_whole(ANSWER.len());
        w.set_whole(ANSWER.as_bytes().to_vec());
        assert_eq!(w.finish(), Some((ANSWER.as_bytes().to_vec(), false)));
        assert_eq!(w.take_sample_request().as_deref(), Some(BODY.as_bytes()));
        // Not drawn, or a rate of 0 (never rolled): nothing to watch.
        let (_, w) = begin_request(None, Some(&s), &store, BODY.as_bytes(), BODY.as_bytes(), "fast", "gpt-4o-mini", &caller, Control::Normal, 0, || 0.5);
        assert!(w.is_none());
        let never = Caller { key_id: Some("never"), ..Caller::default() };
        let (_, w) = begin_request(None, Some(&s), &store, BODY.as_bytes(), BODY.as_bytes(), "fast", "gpt-4o-mini", &never, Control::Normal, 0, || panic!("rolled"));
        assert!(w.is_none());
        // A body that was only partly kept is not an answer.
        let (_, w) = begin_request(None, Some(&s), &store, BODY.as_bytes(), BODY.as_bytes(), "fast", "gpt-4o-mini", &caller, Control::Normal, 0, || 0.0);
        let mut w = w.unwrap();
        w.on_response_headers(200, false);
        w.count_whole(ANSWER.len() + 10);
        w.set_whole(ANSWER.as_bytes().to_vec());
        assert_eq!(w.finish(), None);
    }

    #[test]
    fn a_paraphrase_gets_the_answer_through_the_semantic_index() {
        let store = MemStore::new();
        let cfg: CacheConfig = serde_json::from_str(r#"{"scope":"key","semantic":{"cluster":"emb","model":"minilm","threshold":0.9}}"#).unwrap();
        let c = Cache::new(cfg).unwrap();
        let a = Caller { key_id: Some("a"), ..Caller::default() };
        let b = Caller { key_id: Some("b"), ..Caller::default() };
        let q1 = r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"What is the capital of France?"}]}"#;
        let q2 = r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"Which city is the capital of France?"}]}"#;
        let emb = |v: [f32; 2]| format!(r#"{{"data":[{{"embedding":[{},{}]}}]}}"#, v[0], v[1]);
        let Begin::Upstream(mut t) = c.begin(&store, q1.as_bytes(), "gpt", &a, Control::Normal, 0) else { panic!() };
        let call = c.semantic_call(&t).expect("a call");
        assert_eq!((call.cluster, call.path), ("emb", "/v1/embeddings"));
        assert!(String::from_utf8_lossy(&call.body).contains("What is the capital of France?"));
        // Nothing indexed yet: a miss, the vector kept for the store.
        assert!(c.semantic_answer(&store, &mut t, 200, emb([1.0, 0.0]).as_bytes(), 0).is_none());
        assert_eq!(c.store(&store, &mut t, 200, ANSWER.as_bytes(), false, None, 0), StoreResult::Stored { evicted: 0 });
        // The paraphrase (close vector) gets it; an unrelated question (far vector) does not.
        let Begin::Upstream(mut t2) = c.begin(&store, q2.as_bytes(), "gpt", &a, Control::Normal, 1) else { panic!("exact hit?") };
        let (e, sim) = c.semantic_answer(&store, &mut t2, 200, emb([0.99, 0.1]).as_bytes(), 1).expect("semantic hit");
        assert_eq!(e.body, ANSWER.as_bytes());
        assert!(sim > 0.99);
        let Begin::Upstream(mut t3) = c.begin(&store, q2.as_bytes(), "gpt", &a, Control::Normal, 1) else { panic!() };
        assert!(c.semantic_answer(&store, &mut t3, 200, emb([0.0, 1.0]).as_bytes(), 1).is_none());
        // Another scope never gets it; a failed call is a miss.
        let Begin::Upstream(mut t4) = c.begin(&store, q2.as_bytes(), "gpt", &b, Control::Normal, 1) else { panic!() };
        assert!(c.semantic_answer(&store, &mut t4, 200, emb([1.0, 0.0]).as_bytes(), 1).is_none());
        let Begin::Upstream(mut t5) = c.begin(&store, q2.as_bytes(), "gpt", &a, Control::Normal, 1) else { panic!() };
        assert!(c.semantic_answer(&store, &mut t5, 503, emb([1.0, 0.0]).as_bytes(), 1).is_none());
        // Bypassed requests make no call.
        let Begin::Upstream(t6) = c.begin(&store, q2.as_bytes(), "gpt", &a, Control::Bypass, 1) else { panic!() };
        assert!(c.semantic_call(&t6).is_none());
    }

    #[test]
    fn entries_decode_only_what_they_encode() {
        let e = Entry { folded: true, cost_micros: None, body: b"{}".to_vec() };
        assert_eq!(Entry::decode(&e.encode()), Some(e));
        assert_eq!(Entry::decode(b"\x02\x00"), None);
        assert_eq!(Entry::decode(b""), None);
    }
}
