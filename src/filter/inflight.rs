//! Per-request state shared by the two roles of one request: the gateway (downstream) and every
//! backend attempt (upstream).
//!
//! Why not headers: Envoy hands every retry attempt the same header map, already rewritten by the
//! upstream filters of earlier attempts. Whatever the gateway passed in an `x-switchyard-*` header
//! is gone after the first attempt strips it, and the first attempt's provider headers are still
//! there for the second. Both roles run on the same worker thread in the same VM (one `vm_id`), so
//! a thread-local registry keyed by `x-request-id` reaches across instead.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::providers::Operation;

#[derive(Debug)]
pub struct RequestState {
    /// Canonical model the gateway resolved.
    pub model: String,
    pub op: Operation,
    /// Upstream attempts so far (first try and retries).
    pub attempts: u32,
    pub first_backend: Option<Rc<str>>,
    /// Backend of the latest attempt: the one that served the answer, once there is one.
    pub served_backend: Option<Rc<str>>,
    /// Schema (provider family) of the latest attempt's backend.
    pub served_provider: Option<&'static str>,
    /// Model name sent upstream by the latest attempt.
    pub served_model: Option<String>,
    /// Headers the latest attempt added for its provider; the next attempt removes them first.
    pub provider_headers: Vec<String>,
    /// The client's `:authority`, as the first attempt found it (a later attempt finds the earlier
    /// backend's `host` there): what a backend without `host` is sent.
    pub client_authority: Option<String>,
    /// The client's own provider credential (bring-your-own-key), used instead of the gateway's.
    pub byok: Option<String>,
    /// Backends whose credential a provider refused (401/403) during this request: a later
    /// attempt to one of them ends locally, with the provider's answer, instead of sending it again.
    pub refused: Vec<Refused>,
    /// The route's first-token deadline (ms), when it has one: backend attempts then hold their
    /// answer until its first token and record their timings.
    pub deadline_ms: Option<u32>,
    /// Timings of the attempts, in start order (only with a deadline).
    pub timings: Vec<crate::policy::deadline::AttemptTiming>,
    /// What each timed attempt was sent to: backend, its schema, the model sent (same order).
    pub timed_targets: Vec<(Rc<str>, &'static str, String)>,
    /// What the request needs of a model, and what each model can do (only with capabilities
    /// configured): an attempt to a model that lacks something is skipped.
    pub needs: Option<(crate::policy::capabilities::Needs, Rc<crate::policy::capabilities::CapabilityTable>)>,
    /// Candidates skipped because they lack a capability.
    pub skipped: u32,
    /// The route forbids floating model names (`pin_versions: "forbid"`).
    pub forbid_floating: bool,
    /// The API the client spoke (see `api::ingress`); the body the backends get is canonical.
    pub ingress: crate::api::ingress::Ingress,
    /// The client's own body, for backends that speak its ingress API natively.
    pub native_body: Option<Rc<[u8]>>,
    /// What the canonical form could not carry: backends that are not native answer it (400).
    pub untranslatable: Option<crate::api::ApiError>,
    /// The latest attempt went to a native backend: its answer is in the ingress API's shape.
    pub native_answer: bool,
    /// What the latest attempt's backend read from the whole answer it translated (model, usage):
    /// the gateway uses it instead of reading the translated bytes back, when it needs nothing
    /// else of them. Cleared when an attempt starts; set only by a successful translation.
    pub handover: Option<crate::api::chat::ResponseSummary>,
}

#[derive(Debug)]
pub struct Refused {
    pub backend: Rc<str>,
    pub status: u16,
    /// The provider's error, as the client got it (OpenAI-shaped, credentials scrubbed).
    pub answer: Option<Vec<u8>>,
}

impl RequestState {
    pub fn new(model: String, op: Operation) -> Self {
        RequestState { model, op, attempts: 0, first_backend: None, served_backend: None, served_provider: None, served_model: None, provider_headers: Vec::new(), client_authority: None, byok: None, refused: Vec::new(), deadline_ms: None, timings: Vec::new(), timed_targets: Vec::new(), needs: None, skipped: 0, forbid_floating: false, ingress: Default::default(), native_body: None, untranslatable: None, native_answer: false, handover: None }
    }

    /// How a provider refused `backend`'s credential in this request, if it did.
    pub fn refusal(&self, backend: &str) -> Option<&Refused> {
        self.refused.iter().find(|r| &*r.backend == backend)
    }

    /// Served by a backend other than the first attempt's.
    pub fn failed_over(&self) -> bool {
        match (&self.first_backend, &self.served_backend) {
            (Some(a), Some(b)) => a != b,
            _ => false,
        }
    }
}

pub type SharedState = Rc<RefCell<RequestState>>;

thread_local! {
    static INFLIGHT: RefCell<HashMap<String, SharedState>> = RefCell::new(HashMap::new());
    static COUNTER: RefCell<u64> = const { RefCell::new(0) };
}

/// Registers the state under `id`; false when a request with that id is already in flight here.
pub fn register(id: &str, state: SharedState) -> bool {
    INFLIGHT.with(|m| {
        let mut m = m.borrow_mut();
        if m.contains_key(id) {
            return false;
        }
        m.insert(id.to_string(), state);
        true
    })
}

pub fn lookup(id: &str) -> Option<SharedState> {
    INFLIGHT.with(|m| m.borrow().get(id).cloned())
}

pub fn remove(id: &str) {
    INFLIGHT.with(|m| {
        m.borrow_mut().remove(id);
    });
}

/// A fresh request id for requests that came without one or with one already in flight.
pub fn new_request_id() -> String {
    let mut rnd = [0u8; 8];
    if getrandom::getrandom(&mut rnd).is_err() {
        rnd = [0; 8];
    }
    let n = COUNTER.with(|c| {
        let mut c = c.borrow_mut();
        *c = c.wrapping_add(1);
        *c
    });
    format!("sy-{:016x}-{n:x}", u64::from_le_bytes(rnd))
}
