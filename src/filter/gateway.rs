//! Gateway role: runs downstream, before the router. Validates the request, resolves the model to
//! a route and lets Envoy's router pick that route's cluster; answers `/v1/models` itself. On the
//! way back it watches the answer (usage, time to first token), turns Envoy's own plain-text error
//! replies into OpenAI-shaped ones, and leaves metrics and access-log fields behind.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType};

use super::inflight::{self, RequestState, SharedState};
use super::{adjust_inflight_gauge, emit_metrics, header, now_ms, publish_log_fields, send_json, set_request_header, set_response_header, EnvoyStore};
use crate::api::chat::{parse_chat_request_with, ResponseSummary, Usage};
use crate::api::embeddings::parse_embeddings_request_with;
use crate::api::ingress::{self, AnswerTranslate, Ingress, Local};
use crate::api::{models, ApiError};
use crate::config::{Gateway, NEEDS_HEADER_PREFIX, MODEL_HEADER, OP_HEADER, ROUTE_HEADER};
use crate::api::chat::ChatRequest;
use crate::policy::capabilities::Needs;
use crate::policy::canary;
use crate::policy::deadline;
use crate::policy::latency;
use crate::policy::rules::{self, RoutingTable};
use crate::policy::estimate::{estimate_text_tokens, RequestEstimate};
use crate::policy::gate::MAX_COST_HEADER;
use crate::policy::guardrails::RequestGuard;
use crate::policy::headers as header_policy;
use crate::policy::{Admission, LedgerKind, Outcome, Principal};
use crate::providers::{Operation, StreamTranslate};
use crate::stream::usage_tap::UsageTap;
use crate::telemetry::{self, Rejection, RequestRecord};

mod cache_glue;

/// Most of a whole answer the gateway keeps to read its usage (larger ones are not accounted).
const MAX_SUMMARY_BYTES: usize = 4 * 1024 * 1024;

/// Why a request is answered locally: the error, its reason for the metrics, extra headers.
type Refusal = (ApiError, Rejection, Vec<(&'static str, String)>);

/// What the response side does with the body.
enum ResponseMode {
    /// Nothing to watch (local replies, `/v1/models`).
    Ignore,
    /// A whole answer: copied aside as it passes, summarised at the end.
    Collect,
    /// A whole answer held back until it is complete, so its cost can go in the headers.
    Hold,
    /// An SSE stream: watched chunk by chunk, usage-only chunk dropped unless asked for.
    Stream(Box<UsageTap>),
    /// Envoy's own plain-text error (no healthy upstream, reset, timeout): held and rewritten.
    RewriteError,
}

pub struct GatewayFilter {
    cfg: Rc<Gateway>,
    /// Set once the request is an API operation whose body must be read.
    op: Option<Operation>,
    stream: bool,
    wants_usage: bool,
    mode: ResponseMode,
    buf: Vec<u8>,
    out: Vec<u8>,
    /// `x-request-id` of this request (client's or minted here), the key of its shared state.
    request_id: Option<String>,
    state: Option<SharedState>,
    start_ms: u64,
    record: RequestRecord,
    usage: Option<Usage>,
    /// The record is complete and published as filter state (see `publish_record`).
    published: bool,
    /// The authenticated virtual key (when the gateway has an `auth` policy).
    principal: Option<Principal>,
    /// What admission granted; settled exactly once, when the answer ends (or in `on_log`).
    admission: Option<Admission>,
    /// `x-switchyard-max-cost`, read before internal headers are stripped.
    max_cost: Option<String>,
    /// Output counted on a stream that ended without usage.
    streamed_tokens: u64,
    /// Request headers the routing rules look at (only when some rule does).
    rule_headers: Vec<(String, String)>,
    /// The model whose latency this request measures (a `fastest` candidate).
    latency_model: Option<String>,
    /// The route's model and the arm of its canary this request took.
    canary: Option<(String, canary::Arm)>,
    /// Guardrails of this request (only when configured and on for its key, team and route).
    guard: Option<Box<RequestGuard>>,
    /// The API the client spoke (`api::ingress`): its errors, answers and streams are in its shape.
    ingress: Ingress,
    /// An endpoint the gateway answers itself once the body is read (`count_tokens`).
    local: Option<Local>,
    /// Translates the canonical answer into the ingress API (not for OpenAI's own API).
    answer: Option<Box<dyn AnswerTranslate>>,
    /// A stream in the ingress API's own shape (a native backend's): translated into canonical
    /// SSE only to be watched; the client gets the native bytes.
    native_view: Option<Box<dyn StreamTranslate>>,
    /// The cache and quality sampling watching this request's answer (`None`: both off or idle).
    watch: Option<Box<crate::cache::Watch>>,
    /// A cached answer to serve instead of going upstream: its bytes, the entry, the resolved model.
    cache_hit: Option<Box<(Vec<u8>, crate::cache::Entry, String)>>,
    /// The ingress request holds what its canonical form leaves out (documents, file ids, server
    /// tools, stored prompts): a cache key from the canonical form would not tell such requests apart.
    lossy_ingress: bool,
    /// The client's `cache-control` (read only when the cache is on).
    cache_control: crate::cache::Control,
    /// The backend's summary of the whole answer it translated (see `RequestState::handover`),
    /// taken when nothing here needs the answer's bytes: the body is then not read back.
    handover: Option<ResponseSummary>,
    /// Bytes of a handed-over answer that passed (the summary stands only for what `Collect`
    /// would have kept).
    handed_bytes: usize,
}

impl Drop for GatewayFilter {
    fn drop(&mut self) {
        if let (Some(id), Some(_)) = (&self.request_id, &self.state) {
            inflight::remove(id);
            if self.cfg.emit_metrics {
                adjust_inflight_gauge(-1);
            }
        }
    }
}

impl GatewayFilter {
    pub fn new(cfg: Rc<Gateway>) -> Self {
        GatewayFilter {
            cfg,
            op: None,
            stream: false,
            wants_usage: false,
            mode: ResponseMode::Ignore,
            buf: Vec::new(),
            out: Vec::new(),
            request_id: None,
            state: None,
            start_ms: 0,
            record: RequestRecord::default(),
            usage: None,
            published: false,
            principal: None,
            admission: None,
            max_cost: None,
            streamed_tokens: 0,
            rule_headers: Vec::new(),
            latency_model: None,
            canary: None,
            guard: None,
            ingress: Ingress::OpenAi,
            local: None,
            answer: None,
            native_view: None,
            watch: None,
            cache_hit: None,
            lossy_ingress: false,
            cache_control: crate::cache::Control::Normal,
            handover: None,
            handed_bytes: 0,
        }
    }

    /// Reads the request; for another ingress API, returns the canonical body that replaces the
    /// client's.
    fn on_body(&mut self, op: Operation, body: &[u8]) -> Result<Option<Vec<u8>>, Refusal> {
        let invalid = |e: ApiError| (e, Rejection::Validation, Vec::new());
        if self.ingress == Ingress::OpenAi {
            return self.on_canonical_body(op, body).map(|()| None);
        }
        // Another API's front door: everything from here on works on the canonical form.
        let canonical = self.ingress.to_canonical(body, &self.cfg.limits).map_err(invalid)?;
        self.lossy_ingress = canonical.untranslatable.is_some();
        self.on_canonical_body(op, &canonical.body)?;
        self.answer = self.ingress.answer_translator(self.stream, body, &random_hex(12), now_ms() / 1000);
        if let Some(state) = &self.state {
            let mut st = state.borrow_mut();
            st.ingress = self.ingress;
            // Guardrails work on the canonical form (the request and the answer): with them on,
            // every backend gets the canonical request, native ones too.
            if self.guard.is_none() {
                st.native_body = Some(Rc::from(body));
            }
            st.untranslatable = canonical.untranslatable;
        }
        Ok(Some(canonical.body))
    }

    /// `count_tokens`: the gateway's prompt-token estimate of the canonical request (the same
    /// estimate admission uses), for a model the gateway serves and the key may use. Answered by
    /// the gateway, never sent upstream; not admitted, so not counted against limits or budgets.
    fn count_tokens(&mut self, body: &[u8]) -> Result<u64, Refusal> {
        let invalid = |e: ApiError| (e, Rejection::Validation, Vec::new());
        let canonical = self.ingress.to_canonical(body, &self.cfg.limits).map_err(invalid)?;
        let req = parse_chat_request_with(&canonical.body, &self.cfg.limits).map_err(invalid)?;
        self.record.requested_model = Some(req.model.clone());
        let cfg = self.cfg.clone();
        let resolved = cfg.router.resolve(&req.model).ok_or_else(|| invalid(ApiError::model_not_found(&req.model)))?;
        if let (Some(policy), Some(p)) = (cfg.policy.as_ref(), self.principal.as_ref()) {
            policy.authorize_model(p, &req.model, resolved.model).map_err(|e| (e, Rejection::Scope, Vec::new()))?;
        }
        Ok(RequestEstimate::from_chat(&req).prompt_tokens)
    }

    fn on_canonical_body(&mut self, op: Operation, body: &[u8]) -> Result<(), Refusal> {
        let invalid = |e: ApiError| (e, Rejection::Validation, Vec::new());
        let mut target = None;
        let mut needs = None;
        let (model, estimate) = match op {
            Operation::Chat => {
                let req = parse_chat_request_with(body, &self.cfg.limits).map_err(invalid)?;
                self.stream = req.is_stream();
                self.wants_usage = req.wants_stream_usage();
                let est = self.principal.as_ref().map(|_| RequestEstimate::from_chat(&req));
                if let Some(caps) = self.cfg.capabilities.as_ref() {
                    let prompt = est.as_ref().map_or_else(|| RequestEstimate::from_chat(&req).prompt_tokens, |e| e.prompt_tokens);
                    needs = Some((Needs::of_chat(&req, prompt), caps.clone()));
                }
                if let Some(rt) = self.cfg.routing.as_ref() {
                    target = self.choose_by_rules(rt, &req, est.as_ref(), needs.as_ref().map(|(n, _)| n));
                }
                (req.model, est)
            }
            Operation::Embeddings => {
                let req = parse_embeddings_request_with(body, &self.cfg.limits).map_err(invalid)?;
                let est = self.principal.as_ref().map(|_| RequestEstimate {
                    prompt_tokens: req.input.texts().map_or(0, |t| t.iter().map(|s| estimate_text_tokens(s)).sum()),
                    max_output_tokens: Some(0),
                    choices: 1,
                });
                (req.model, est)
            }
        };
        self.record.requested_model = Some(model);
        let cfg = self.cfg.clone();
        let model = self.record.requested_model.as_deref().unwrap_or_default();
        let resolved = match &target {
            // A rule (or a meta-model's default) chose the model; the key's model list applies to
            // the name the client asked for.
            Some((chosen, label)) => {
                self.record.routing_rule = Some(label.clone());
                cfg.router.resolve(chosen).ok_or_else(|| invalid(ApiError::model_not_found(model)))?
            }
            None => cfg.router.resolve(model).ok_or_else(|| invalid(ApiError::model_not_found(model)))?,
        };
        let stable_model = resolved.model;
        let resolved = match resolved.canary {
            Some(c) => {
                // The route's canary takes its current share (shared by every worker).
                let now = now_ms();
                let state = canary::load(&EnvoyStore, c, now);
                let arm = if state.share_ppm == 0 { canary::Arm::Stable } else { state.pick(random_unit()) };
                self.record.canary_arm = Some(arm.as_str());
                self.canary = Some((resolved.model.to_string(), arm));
                match arm {
                    canary::Arm::Canary => cfg.router.resolve(&c.cfg.model).unwrap_or(resolved),
                    canary::Arm::Stable => resolved,
                }
            }
            None => resolved,
        };
        if let (Some(g), Operation::Chat) = (cfg.guardrails.as_ref(), op) {
            // A `block` refuses the request; a `redact` leaves a new body for on_http_request_body.
            let p = self.principal.as_ref();
            match g.check(p.map(|p| p.key_id()), p.and_then(|p| p.team()), resolved.route, body) {
                Ok(guard) => self.guard = guard.map(Box::new),
                Err(b) => {
                    self.record.guardrails = b.counts;
                    return Err((b.error, Rejection::Guardrail, Vec::new()));
                }
            }
        }
        let mut byok = None;
        if let (Some(policy), Some(principal), Some(est)) = (cfg.policy.as_ref(), self.principal.as_ref(), estimate) {
            let asked = if target.is_some() { cfg.router.resolve(model).map_or(model, |r| r.model) } else { stable_model };
            policy.authorize_model(principal, model, asked).map_err(|e| (e, Rejection::Scope, Vec::new()))?;
            match policy.admit(principal, &est, resolved.model, self.max_cost.as_deref(), now_ms(), &EnvoyStore) {
                Ok(admission) => {
                    if let Some(tags) = admission.fleet() {
                        publish_fleet_tags(tags);
                    }
                    self.admission = Some(admission);
                }
                Err(rej) => {
                    let reason = match (rej.error.status, rej.error.code.as_deref()) {
                        (429, Some("insufficient_quota")) => Rejection::Budget,
                        (429, _) => Rejection::RateLimit,
                        (403, _) => Rejection::Scope,
                        _ => Rejection::Validation,
                    };
                    return Err((rej.error, reason, rej.headers));
                }
            }
            byok = principal.byok().map(|s| s.expose().to_string());
        }
        self.record.route = Some(resolved.route.to_string());
        if op == Operation::Chat && (cfg.cache.is_some() || cfg.sampling.is_some()) {
            let b = cache_glue::begin(&cfg, self.principal.as_ref(), model, (self.stream, self.wants_usage), self.cache_control, body, self.guard.as_deref(), resolved.model, byok.is_some() || self.lossy_ingress);
            (self.record.cache, self.watch) = (b.status, b.watch);
            if b.hit.is_some() {
                self.cache_hit = b.hit;
                return Ok(()); // answered in on_http_request_body
            }
        }
        if !cfg.latency_tracked.is_empty() && cfg.latency_tracked.iter().any(|m| m == resolved.model) {
            self.latency_model = Some(resolved.model.to_string());
        }
        self.record.model_pattern = resolved.pattern.map(str::to_string);
        set_request_header(ROUTE_HEADER, Some(resolved.route));
        set_request_header(MODEL_HEADER, Some(resolved.model));
        set_request_header(OP_HEADER, Some(op.as_str()));
        if byok.is_some() {
            // The client's own credential is for one provider: no retry may carry the request to
            // another, and the client sees that provider's own answer (its 401 for a bad key).
            set_request_header("x-envoy-max-retries", Some("0"));
        }
        let mut state = RequestState::new(resolved.model.to_string(), op);
        state.byok = byok;
        if let Some((n, _)) = &needs {
            // For Envoy's subset load balancer (header_to_metadata → `envoy.lb`): only endpoints
            // whose metadata says they can are chosen, first try and failover alike.
            for (key, value) in n.lb_values() {
                set_request_header(&format!("{NEEDS_HEADER_PREFIX}{key}"), Some(value));
            }
        }
        state.needs = needs;
        state.forbid_floating = resolved.forbid_floating;
        if let Some(d) = resolved.deadline {
            // Envoy's router reads (and removes) these: its per-try timeout becomes the deadline,
            // because the backend filter holds each answer until its first token.
            set_request_header(deadline::PER_TRY_TIMEOUT_HEADER, Some(&d.header_value));
            // A request with its own credential is not hedged: that credential is for the first
            // attempt's backend only, and the backend filter's refusal of a second backend (a local
            // reply) would end the whole request, the first attempt with it.
            let hedge = d.hedge && state.byok.is_none();
            if hedge {
                set_request_header(deadline::HEDGE_HEADER, Some("true"));
            }
            state.deadline_ms = Some(d.timeout_ms);
            self.record.deadline = Some(telemetry::DeadlineRecord { timeout_ms: d.timeout_ms, hedge, ..Default::default() });
        }
        self.share_state(state);
        // Make Envoy select the route again, now that the route header is set.
        if let Err(e) = hostcalls::call_foreign_function("clear_route_cache", None) {
            log::warn!("switchyard: clear_route_cache failed: {e:?}");
        }
        Ok(())
    }

    /// The model the routing rules choose for a chat request (and the rule's label), if any. Rules
    /// apply only to names the gateway knows: an unknown model stays a 404.
    fn choose_by_rules(&self, rt: &RoutingTable, req: &ChatRequest, est: Option<&RequestEstimate>, needs: Option<&Needs>) -> Option<(String, String)> {
        if !rt.is_meta(&req.model) && self.cfg.router.resolve(&req.model).is_none() {
            return None;
        }
        let mut facts = rules::chat_facts(req);
        facts.headers = &self.rule_headers;
        if let Some(p) = self.principal.as_ref() {
            facts.key_id = Some(p.key_id());
            facts.team = p.team();
            facts.metadata = Some(p.metadata());
        }
        if rt.needs_prompt_tokens() {
            facts.prompt_tokens = est.map_or_else(|| RequestEstimate::from_chat(req).prompt_tokens, |e| e.prompt_tokens);
        }
        if rt.needs_last_user_text() {
            facts.last_user_text = rules::last_user_text(req);
            if rt.needs_last_user_message() {
                facts.last_user_message = facts.last_user_text.to_lowercase();
            }
        } else if rt.needs_last_user_message() {
            facts.last_user_message = rules::last_user_message(req);
        }
        // Candidates of a policy are gateway model names: capabilities and prices are looked up
        // under the name they resolve to.
        let router = &self.cfg.router;
        let canonical = |m: &str| router.resolve(m).map_or_else(|| m.to_string(), |r| r.model.to_string());
        let caps = self.cfg.capabilities.as_deref();
        let compatible = |m: &str| match (caps, needs) {
            (Some(t), Some(n)) => t.missing(&canonical(m), n).is_none(),
            _ => true,
        };
        let prices = self.cfg.policy.as_ref().map(|p| p.prices()).or(self.cfg.routing_prices.as_ref());
        let cost = |m: &str, prompt: u64, out: u64| prices.and_then(|t| t.lookup(&canonical(m))).map(|p| p.cost_of_tokens_femto(prompt, out));
        let latency = |m: &str| latency::score_ms(latency::load(&EnvoyStore, &canonical(m)).as_ref());
        let roll = || {
            let mut r = [0u8; 8];
            if getrandom::getrandom(&mut r).is_err() {
                return (1.0, 0);
            }
            let x = u64::from_le_bytes(r);
            (((x >> 11) as f64) / ((1u64 << 53) as f64), (x & 0xffff_ffff) as u32)
        };
        let info = rules::CandidateInfo { compatible: &compatible, cost: &cost, latency: &latency, roll: &roll };
        rt.choose(&facts, &info).map(|c| (c.model.to_string(), c.label.to_string()))
    }

    /// Publishes the request's state for its backend attempts, under a request id unique on this
    /// thread (a client-sent id already in flight is replaced).
    fn share_state(&mut self, state: RequestState) {
        let state = Rc::new(RefCell::new(state));
        let mut id = match self.request_id.take() {
            Some(id) => id,
            None => {
                let id = inflight::new_request_id();
                set_request_header("x-request-id", Some(&id));
                id
            }
        };
        if !inflight::register(&id, state.clone()) {
            id = inflight::new_request_id();
            set_request_header("x-request-id", Some(&id));
            if !inflight::register(&id, state.clone()) {
                return;
            }
        }
        if self.cfg.emit_metrics {
            adjust_inflight_gauge(1);
        }
        self.record.request_id = id.clone();
        self.request_id = Some(id);
        self.state = Some(state);
    }

    /// Answers locally with an OpenAI-shaped error and remembers why.
    fn reject(&mut self, err: &ApiError, reason: Rejection, extra: &[(&str, &str)]) -> Action {
        self.op = None;
        self.record.status = err.status;
        self.record.error_type = Some(err.kind.to_string());
        self.record.error_code = err.code.clone();
        self.record.rejection = Some(reason);
        self.publish_record();
        send_json(err.status, &self.ingress.error_json(err), extra);
        Action::Pause
    }

    /// A whole successful canonical answer in the shape of the client's ingress API (`None` for
    /// OpenAI's own API). An answer that cannot be translated becomes the ingress API's error.
    fn translate_whole_answer(&mut self, canonical: &[u8]) -> Option<Vec<u8>> {
        let translated = self.answer.as_mut()?.answer(canonical);
        Some(match translated {
            Ok(out) => out,
            Err(e) => {
                set_response_header(":status", Some(&e.status.to_string()));
                self.record.status = e.status;
                self.record.error_type = Some(e.kind.to_string());
                self.record.error_code = e.code.clone();
                self.ingress.error_json(&e)
            }
        })
    }

    /// Settles the admission (once): the real cost from usage, or what a cut stream produced,
    /// or nothing for an answer that never came.
    fn settle(&mut self) -> Option<crate::policy::Settlement> {
        // Attempts Envoy cancelled after sending them (a deadline, a hedge's loser): counted in
        // metrics, and charged their prompt where prices are configured.
        let cancelled: Vec<(Rc<str>, &'static str, String)> = match (&self.state, &self.record.deadline) {
            (Some(st), Some(d)) => {
                let st = st.borrow();
                deadline::cancelled(&st.timings, d.timeout_ms, now_ms()).into_iter().filter_map(|i| st.timed_targets.get(i).cloned()).collect()
            }
            _ => Vec::new(),
        };
        let (Some(admission), Some(policy)) = (self.admission.take(), self.cfg.policy.as_ref()) else {
            self.record.cancelled_attempts = cancelled
                .iter()
                .map(|(b, p, _)| telemetry::CancelledAttempt { backend: b.to_string(), provider: p.to_string(), cost_micros: None })
                .collect();
            return None;
        };
        let status = self.record.status;
        let outcome = if status == 0 || status >= 400 {
            Outcome::NotServed
        } else if let Some(u) = self.usage.as_ref() {
            Outcome::Usage(u)
        } else {
            Outcome::Partial { prompt_tokens: None, output_tokens: self.streamed_tokens }
        };
        let (model, backend) = match &self.state {
            Some(st) => {
                let st = st.borrow();
                (st.served_model.clone(), st.served_backend.as_deref().map(str::to_string))
            }
            None => (None, None),
        };
        let targets: Vec<(&str, &str)> = cancelled.iter().map(|(b, _, m)| (m.as_str(), &**b)).collect();
        let s = policy.settle_with_cancelled(admission, outcome, model.as_deref(), backend.as_deref(), &targets, now_ms(), &EnvoyStore);
        if let Some(c) = s.fleet_charge {
            // Read by the rate limit filter's `apply_on_stream_done` descriptors, which Envoy
            // evaluates after the access-log stage (`on_log`), so a stream the client cut is
            // charged too (billed cancelled attempts included).
            set_filter_state(FLEET_TOKENS, &c.extra_tokens.to_string());
            set_filter_state(FLEET_COST, &c.cost_micros.to_string());
        }
        self.record.cancelled_attempts = cancelled
            .iter()
            .zip(&s.cancelled_micros)
            .map(|((b, p, _), c)| telemetry::CancelledAttempt { backend: b.to_string(), provider: p.to_string(), cost_micros: *c })
            .collect();
        let extra: u64 = s.cancelled_micros.iter().flatten().sum();
        self.record.cost_micros = match (s.cost_micros, extra) {
            (c, 0) => c,
            (c, e) => Some(c.unwrap_or(0).saturating_add(e)),
        };
        if s.estimated && self.usage.is_none() {
            // No usage report (a stream cut short): the tokens are what was charged, the prompt
            // estimate and the output that reached the client.
            self.record.usage_known = true;
            self.record.input_tokens = s.prompt_tokens;
            self.record.output_tokens = s.completion_tokens;
        }
        Some(s)
    }

    /// Whether Envoy ended the response because of the upstream (a reset or a timeout after the
    /// answer had started) rather than the client. Read only for answers that did not complete.
    fn upstream_cut(&self) -> bool {
        let details = self.get_property(vec!["response", "code_details"]).and_then(|v| String::from_utf8(v).ok()).unwrap_or_default();
        log::debug!("switchyard: incomplete stream, response code details {details:?}");
        details.starts_with("upstream") || details.contains("timeout")
    }

    fn answer(&mut self, status: u16, body: &[u8]) -> Action {
        self.record.status = status;
        self.publish_record();
        send_json(status, body, &[]);
        Action::Pause
    }

    /// Completes the record and publishes it as filter state, once, as soon as the answer is
    /// complete (before a local reply is sent, at the end of a proxied response). Not later: Envoy
    /// finalises the request's trace span, whose custom_tags read this filter state, before the
    /// access-log stage that runs `on_log`. `on_log` publishes whatever ended otherwise.
    fn publish_record(&mut self) {
        if self.published {
            return;
        }
        self.published = true;
        if let Some(g) = self.guard.as_mut() {
            self.record.guardrails.append(&mut g.counts);
        }
        self.settle();
        self.finish_record();
        if self.watch.is_some() {
            self.finish_watch();
        }
        if self.cfg.publish_log_fields {
            publish_log_fields(&telemetry::log_fields(&self.record));
        }
    }

    /// Fills the record from the shared state and the answer, once the response ends.
    fn finish_record(&mut self) {
        let now = now_ms();
        self.record.duration_ms = now.saturating_sub(self.start_ms);
        if let Some(state) = &self.state {
            let st = state.borrow();
            self.record.attempts = st.attempts;
            self.record.failover = st.failed_over();
            self.record.backend = st.served_backend.as_deref().map(str::to_string);
            self.record.provider = st.served_provider.map(str::to_string);
            if self.record.response_model.is_none() {
                self.record.response_model = st.served_model.clone();
            }
            self.record.skipped_candidates = st.skipped;
            if let Some(d) = self.record.deadline.as_mut() {
                let r = deadline::report(&st.timings, d.timeout_ms, now);
                (d.fired, d.winner, d.winner_ttft_ms) = (r.fired, r.winner, r.winner_ttft_ms);
            }
        }
        if let Some(u) = self.usage.take() {
            let r = &mut self.record;
            r.usage_known = true;
            r.input_tokens = u.prompt_tokens;
            r.output_tokens = u.completion_tokens;
            if let Some(d) = &u.prompt_tokens_details {
                r.cached_input_tokens = d.cached_tokens;
                r.cache_creation_tokens = d.cache_creation_tokens;
            }
            if let Some(d) = &u.completion_tokens_details {
                r.reasoning_tokens = d.reasoning_tokens;
            }
        }
    }
}

impl Context for GatewayFilter {
    fn on_http_call_response(&mut self, _token_id: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        // The only call a gateway request makes: the semantic cache's embedding.
        self.on_semantic_answer(body_size);
    }
}

impl HttpContext for GatewayFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.start_ms = now_ms();
        self.record.start_unix_ms = self.start_ms;
        let headers = self.get_http_request_headers();
        // A bring-your-own-key header of another name than `x-switchyard-…` is just as internal.
        let byok_header = self.cfg.policy.as_ref().map(|p| p.byok_header());
        for (name, _) in &headers {
            if header_policy::is_internal(name, byok_header) {
                set_request_header(name, None);
            }
        }
        self.request_id = header(&headers, "x-request-id").filter(|v| header_policy::usable_request_id(v)).map(str::to_string);
        if self.cfg.cache.is_some() {
            self.cache_control = crate::cache::control_of(header(&headers, "cache-control"));
        }
        if let Some(rt) = self.cfg.routing.as_ref().filter(|rt| !rt.header_names().is_empty()) {
            self.rule_headers = headers.iter().filter(|(n, _)| rt.header_names().contains(n)).cloned().collect();
        }
        self.record.request_id = self.request_id.clone().unwrap_or_default();
        let method = header(&headers, ":method").unwrap_or("");
        let full_path = header(&headers, ":path").unwrap_or("/");
        let path = full_path.split('?').next().unwrap_or(full_path).trim_end_matches('/');

        let endpoint = ingress::endpoint(path);
        let op = endpoint.map(|e| e.op);
        if let Some(e) = endpoint {
            self.ingress = e.ingress;
            self.local = e.local;
        } else if path.starts_with("/v1/messages/") {
            // An Anthropic client on a path the gateway does not serve: its 404 in its shape.
            self.ingress = Ingress::Messages;
        }
        self.record.operation = match endpoint {
            Some(e) => e.operation,
            None if path == "/v1/models" || path.starts_with("/v1/models/") => "models",
            None => "unknown",
        };
        let cfg = self.cfg.clone();
        if let Some(policy) = cfg.policy.as_ref() {
            if op.is_some() || path == "/v1/models" || path.starts_with("/v1/models/") {
                match policy.authenticate(&headers, self.start_ms) {
                    Ok(p) => {
                        self.record.key_id = Some(p.key_id().to_string());
                        self.record.team = p.team().map(str::to_string);
                        self.principal = Some(p);
                    }
                    Err(e) => {
                        let reason = if e.status == 403 { Rejection::Scope } else { Rejection::Auth };
                        return self.reject(&e, reason, &[]);
                    }
                }
                self.max_cost = header(&headers, MAX_COST_HEADER).map(str::to_string);
            }
        }
        if let Some(op) = op {
            if method != "POST" {
                return self.reject(&ApiError::method_not_allowed(method, path, "POST"), Rejection::Validation, &[("allow", "POST")]);
            }
            let declared = header(&headers, "content-length").and_then(|v| v.parse::<usize>().ok());
            if let Some(Err(e)) = declared.map(|n| self.cfg.check_body_size(n)) {
                return self.reject(&e, Rejection::Validation, &[]);
            }
            if end_of_stream {
                let e = ApiError::invalid_request(
                    "We could not parse the JSON body of your request: the body is empty. The API expects a JSON payload.",
                );
                return self.reject(&e, Rejection::Validation, &[]);
            }
            self.op = Some(op);
            return Action::Pause;
        }
        if path.starts_with("/v1/responses/") {
            // A stored response (retrieve, delete, cancel, input items): the gateway keeps none.
            self.record.operation = "responses";
            return self.reject(&crate::api::responses::stored_response_error(method, path), Rejection::Validation, &[]);
        }
        self.record.operation = "models";
        if path == "/v1/models" || path.starts_with("/v1/models/") {
            if method != "GET" {
                return self.reject(&ApiError::method_not_allowed(method, path, "GET"), Rejection::Validation, &[("allow", "GET")]);
            }
            let now = self.start_ms / 1000;
            // A key sees only the models it may use: as for a request, a name is allowed when it
            // or the model it resolves to (an alias's model) matches the key's list.
            let allowed = |name: &str| match (cfg.policy.as_ref(), self.principal.as_ref()) {
                (Some(policy), Some(p)) => {
                    policy.authorize_model(p, name, cfg.router.resolve(name).map_or(name, |r| r.model)).is_ok()
                }
                _ => true,
            };
            if path == "/v1/models" {
                let metas = cfg.routing.iter().flat_map(|rt| rt.listed());
                let body = models::model_list_json(cfg.router.listed().chain(metas).filter(|(name, _)| allowed(name)), now);
                return self.answer(200, &body);
            }
            let id = &path["/v1/models/".len()..];
            let meta_owner = || cfg.routing.as_ref().and_then(|rt| rt.listed().find(|(n, _)| *n == id).map(|(_, o)| o));
            let owner = cfg.router.owner_of(id).or_else(meta_owner).filter(|_| allowed(id));
            return match owner {
                Some(owner) => {
                    let body = models::model_json(id, owner, now);
                    self.answer(200, &body)
                }
                None => self.reject(&ApiError::model_not_found(id), Rejection::Validation, &[]),
            };
        }
        self.record.operation = "unknown";
        self.reject(&ApiError::not_found_path(method, path), Rejection::Validation, &[])
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(op) = self.op else {
            return Action::Continue;
        };
        if let Err(e) = self.cfg.check_body_size(body_size) {
            return self.reject(&e, Rejection::Validation, &[]);
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        if self.local == Some(Local::CountTokens) {
            self.op = None;
            return match self.count_tokens(&body) {
                Ok(tokens) => self.answer(200, &crate::api::messages::count_tokens_json(tokens)),
                Err((e, reason, _)) => self.reject(&e, reason, &[]),
            };
        }
        match self.on_body(op, &body) {
            Ok(canonical) => {
                // A guardrail's redaction (of the canonical body), else the canonical body of another
                // ingress API, replaces what the client sent.
                if let Some(new_body) = self.guard.as_mut().and_then(|g| g.body.take()).or(canonical) {
                    if let Err(e) = hostcalls::set_buffer(BufferType::HttpRequestBody, 0, body_size, &new_body) {
                        log::warn!("switchyard: cannot replace request body: {e:?}");
                    }
                    set_request_header("content-length", Some(&new_body.len().to_string()));
                }
                self.record.stream = self.stream;
                if let Some(hit) = self.cache_hit.take() {
                    let (answer, entry, model) = *hit;
                    return self.serve_cached(answer, entry, &model);
                }
                if let Some(paused) = self.start_semantic() {
                    return paused; // resumed (or answered) when the embedding arrives
                }
                Action::Continue
            }
            Err((e, reason, headers)) => {
                let extra: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                self.reject(&e, reason, &extra)
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.op.is_none() {
            return Action::Continue;
        }
        self.record.ttfb_ms = Some(now_ms().saturating_sub(self.start_ms));
        let headers = self.get_http_response_headers();
        let status: u16 = header(&headers, ":status").and_then(|s| s.parse().ok()).unwrap_or(0);
        self.record.status = status;
        let fleet = self.cfg.policy.as_ref().is_some_and(|p| p.ledger() == LedgerKind::Fleet);
        // Only the gateway speaks `x-switchyard-*` to clients; what a provider says about its own
        // account (organisation, project, cookies) is not the client's business either.
        for (name, _) in &headers {
            if header_policy::withheld_from_client(name, self.cfg.policy.is_some()) {
                set_response_header(name, None);
            }
        }
        if fleet {
            // The rate limit service's view of the fleet (`x-switchyard-fleet-x-ratelimit-…`,
            // `…-retry-after`, `…-x-switchyard-budget-remaining`), under the client's names.
            for (name, value) in &headers {
                if let Some(client_name) = name.strip_prefix(FLEET_HEADER_PREFIX).filter(|n| !n.is_empty()) {
                    set_response_header(client_name, Some(value));
                }
            }
        }
        if let (true, Some(state)) = (self.cfg.expose_served_by, &self.state) {
            let st = state.borrow();
            if let Some(b) = &st.served_backend {
                set_response_header("x-switchyard-backend", Some(b));
            }
            if let Some(m) = &st.served_model {
                set_response_header("x-switchyard-model", Some(m));
            }
            if st.attempts > 0 {
                set_response_header("x-switchyard-attempts", Some(&st.attempts.to_string()));
            }
        }
        if let Some(admission) = &self.admission {
            for (k, v) in admission.response_headers() {
                set_response_header(k, Some(&v));
            }
        }
        let ctype = header(&headers, "content-type").unwrap_or_default();
        // Another ingress API: every error is rewritten into its shape, every answer translated
        // (or, from a backend that speaks it natively, passed as it is and read through the
        // canonical view).
        let translated = self.ingress != Ingress::OpenAi;
        let native = translated && self.state.as_ref().is_some_and(|st| st.borrow().native_answer);
        self.native_view = None;
        self.mode = if status >= 400 && (translated || !ctype.starts_with("application/json")) {
            ResponseMode::RewriteError
        } else if self.stream && status == 200 && ctype.starts_with("text/event-stream") {
            // The tap may drop the usage-only chunk: an upstream content-length would then be wrong
            // (and a keep-alive client would wait for bytes that never come).
            set_response_header("content-length", None);
            if native {
                self.native_view = self.ingress.canonical_view().map(|v| (v.stream)(now_ms() / 1000));
            }
            let tap = UsageTap::new(self.wants_usage);
            ResponseMode::Stream(Box::new(if self.admission.is_some() { tap.with_meter() } else { tap }))
        } else if (self.admission.is_some() || translated || self.guard.as_ref().is_some_and(|g| g.wants_answer() && status == 200)) && !end_of_stream {
            ResponseMode::Hold
        } else {
            ResponseMode::Collect
        };
        if let Some(w) = self.watch.as_mut() {
            if let Some(s) = w.cache_status() {
                set_response_header(crate::cache::CACHE_HEADER, Some(s.as_str()));
            }
            w.on_response_headers(status, matches!(self.mode, ResponseMode::Stream(_)));
        }
        // A whole answer the backend translated (and summarised) here, which the client gets as it
        // is: unless the cache or quality sampling keeps it or guardrails scan it, its bytes are
        // not needed. Anything else (another VM's backend, OpenAI's own answers, errors, another
        // ingress API) has no hand-over and is read and parsed as before.
        self.handover = None;
        if matches!(self.mode, ResponseMode::Collect | ResponseMode::Hold)
            // Only a success: the backend stores a summary only for a translated 2xx, and an error
            // answer (whoever sent it) is read for its error type and code.
            && (200..300).contains(&status)
            && !translated
            && !self.guard.as_ref().is_some_and(|g| g.wants_answer())
            && !self.watch.as_ref().is_some_and(|w| w.wants_whole())
        {
            if let Some(state) = &self.state {
                self.handover = state.borrow_mut().handover.take();
            }
        }
        let action = match self.mode {
            ResponseMode::RewriteError if end_of_stream => {
                let e = ApiError::from_openai_body(status, b"");
                self.record.error_type = Some(e.kind.to_string());
                self.record.error_code = e.code.clone();
                // A header-only reply cannot grow a body here; fix the content type at least.
                set_response_header("content-type", Some("application/json"));
                Action::Continue
            }
            ResponseMode::RewriteError => {
                set_response_header("content-type", Some("application/json"));
                Action::Pause
            }
            ResponseMode::Hold => Action::Pause,
            _ => Action::Continue,
        };
        if end_of_stream {
            self.publish_record();
        }
        action
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let action = match self.mode {
            ResponseMode::Ignore => return Action::Continue,
            ResponseMode::Hold => {
                if !end_of_stream {
                    return Action::Pause;
                }
                let handed = self.handover.take();
                // With a hand-over nothing below reads the body (no guardrails scan, no watch that
                // keeps it, OpenAI ingress: no translation).
                let body = if handed.is_some() { Vec::new() } else { self.get_http_response_body(0, body_size).unwrap_or_default() };
                let native = self.ingress != Ingress::OpenAi && self.state.as_ref().is_some_and(|st| st.borrow().native_answer);
                let summary = match (handed, self.ingress.canonical_view().filter(|_| native && self.record.status < 400)) {
                    (Some(s), _) => s,
                    // A native answer is read through its canonical view; the client gets it as it is.
                    (None, Some(view)) => (view.answer)(&body, now_ms() / 1000).map(|c| ResponseSummary::parse(&c)).unwrap_or_default(),
                    (None, None) => ResponseSummary::parse(&body),
                };
                self.record.response_model = summary.model;
                self.usage = summary.usage;
                if let Some(e) = summary.error {
                    self.record.error_type = e.kind;
                    self.record.error_code = e.code.map(|c| c.as_str().map(str::to_string).unwrap_or_else(|| c.to_string()));
                }
                if let Some(settlement) = self.settle() {
                    for (k, v) in settlement.headers() {
                        set_response_header(k, Some(&v));
                    }
                }
                if let Some(w) = self.watch.as_mut().filter(|w| w.wants_whole()) {
                    // The canonical answer (a native one through its canonical view).
                    let canonical = match self.ingress.canonical_view().filter(|_| native && self.record.status < 400) {
                        Some(view) => (view.answer)(&body, now_ms() / 1000).ok(),
                        None => Some(body.clone()),
                    };
                    if let Some(c) = canonical {
                        w.count_whole(c.len());
                        w.set_whole(c);
                    }
                }
                let mut out = None;
                if let (Some(guard), Some(g), 200) = (self.guard.as_mut(), self.cfg.guardrails.as_ref(), self.record.status) {
                    out = guard.answer_body(g, &body);
                }
                if !native && self.record.status < 400 {
                    // Another ingress API: the (guarded) canonical answer in its shape.
                    if let Some(translated) = self.translate_whole_answer(out.as_deref().unwrap_or(&body)) {
                        out = Some(translated);
                    }
                }
                if let Some(out) = out {
                    if let Err(e) = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, &out) {
                        log::warn!("switchyard: cannot replace response body: {e:?}");
                    }
                    set_response_header("content-length", Some(&out.len().to_string()));
                }
                Action::Continue
            }
            ResponseMode::Collect if self.handover.is_some() => {
                self.handed_bytes = self.handed_bytes.saturating_add(body_size);
                if let Some(w) = self.watch.as_mut() {
                    w.count_whole(body_size);
                }
                if end_of_stream {
                    // What `Collect` would have parsed: nothing once the answer outgrew its buffer.
                    let summary = self.handover.take().filter(|_| self.handed_bytes <= MAX_SUMMARY_BYTES).unwrap_or_default();
                    self.record.response_model = summary.model;
                    self.usage = summary.usage;
                }
                Action::Continue
            }
            ResponseMode::Collect => {
                if body_size > 0 && self.buf.len() + body_size <= MAX_SUMMARY_BYTES {
                    if let Some(chunk) = self.get_http_response_body(0, body_size) {
                        self.buf.extend_from_slice(&chunk);
                    }
                }
                if let Some(w) = self.watch.as_mut() {
                    w.count_whole(body_size);
                }
                if end_of_stream {
                    let summary = ResponseSummary::parse(&self.buf);
                    match self.watch.as_mut().filter(|w| w.wants_whole()) {
                        Some(w) => w.set_whole(std::mem::take(&mut self.buf)),
                        None => self.buf = Vec::new(),
                    }
                    self.record.response_model = summary.model;
                    self.usage = summary.usage;
                    if let Some(e) = summary.error {
                        self.record.error_type = e.kind;
                        self.record.error_code = e.code.map(|c| c.as_str().map(str::to_string).unwrap_or_else(|| c.to_string()));
                    }
                }
                Action::Continue
            }
            ResponseMode::RewriteError => {
                if !end_of_stream {
                    return Action::Pause;
                }
                let text = self.get_http_response_body(0, body_size).unwrap_or_default();
                let status = self.record.status;
                // Envoy's plain text, or (for another ingress API) a provider's translated error.
                let e = ApiError::from_openai_body(status, &text);
                self.record.error_type = Some(e.kind.to_string());
                self.record.error_code = e.code.clone();
                let body = self.ingress.error_json(&e);
                if let Err(err) = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, &body) {
                    log::warn!("switchyard: cannot replace response body: {err:?}");
                }
                set_response_header("content-length", Some(&body.len().to_string()));
                Action::Continue
            }
            ResponseMode::Stream(ref mut tap) => {
                let had_token = tap.first_token_seen();
                let chunk = if body_size > 0 { hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size).ok().flatten() } else { None };
                self.out.clear();
                let chunk = chunk.as_deref().unwrap_or_default();
                if let Some(view) = self.native_view.as_mut() {
                    // A native stream: the client gets it as it is; the tap reads its canonical view.
                    let mut canonical = Vec::new();
                    view.push(chunk, &mut canonical);
                    if let Some(w) = self.watch.as_mut() {
                        w.stream_chunk(&canonical);
                    }
                    let mut scratch = Vec::new();
                    tap.push(&canonical, &mut scratch);
                    self.out.extend_from_slice(chunk);
                    if end_of_stream {
                        let done = tap.completed() || tap.saw_error();
                        canonical.clear();
                        view.finish(&mut canonical);
                        if let Some(w) = self.watch.as_mut() {
                            w.stream_chunk(&canonical);
                        }
                        tap.push(&canonical, &mut scratch);
                        tap.finish(&mut scratch);
                        if !done {
                            // Cut short: the client's stream ends with an error in its API's shape.
                            let e = ApiError::new(502, "api_error", "The upstream stream ended before completion.").with_code("stream_truncated");
                            self.out.extend_from_slice(&self.ingress.stream_error_event(&e));
                        }
                    }
                } else {
                    if let Some(w) = self.watch.as_mut() {
                        w.stream_chunk(chunk);
                    }
                    tap.push(chunk, &mut self.out);
                    if end_of_stream {
                        tap.finish(&mut self.out);
                    }
                    // Guardrails on the canonical stream, then (another ingress API) its translation.
                    if let (Some(guard), Some(g)) = (self.guard.as_mut().filter(|g| g.wants_answer()), self.cfg.guardrails.as_ref()) {
                        let mut guarded = Vec::with_capacity(self.out.len());
                        guard.stream_push(g, &self.out, &mut guarded);
                        if end_of_stream {
                            guard.stream_finish(g, &mut guarded);
                        }
                        self.out = guarded;
                    }
                    if let Some(answer) = self.answer.as_mut() {
                        let mut translated = Vec::with_capacity(self.out.len() * 2);
                        answer.push(&self.out, &mut translated);
                        if end_of_stream {
                            answer.finish(&mut translated);
                        }
                        self.out = translated;
                    }
                }
                if !had_token && tap.first_token_seen() {
                    self.record.ttft_ms = Some(now_ms().saturating_sub(self.start_ms));
                }
                if end_of_stream {
                    self.usage = tap.usage().cloned();
                    self.streamed_tokens = tap.estimated_output_tokens();
                    self.record.response_model = tap.model().map(str::to_string);
                    if tap.saw_error() || !tap.completed() {
                        self.record.error_type = Some("stream_error".to_string());
                    }
                }
                if let Err(e) = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, &self.out) {
                    log::warn!("switchyard: cannot replace response body: {e:?}");
                }
                Action::Continue
            }
        };
        if end_of_stream {
            self.publish_record();
        }
        action
    }

    fn on_log(&mut self) {
        if !self.published {
            // A stream cut short by the client never reached end_of_stream: count what it produced.
            if let ResponseMode::Stream(tap) = &self.mode {
                if self.usage.is_none() {
                    self.usage = tap.usage().cloned();
                    self.streamed_tokens = tap.estimated_output_tokens();
                }
                if self.record.response_model.is_none() {
                    self.record.response_model = tap.model().map(str::to_string);
                }
                if tap.saw_error() {
                    // The client stopped reading at the error event, before the upstream's end.
                    self.record.error_type.get_or_insert_with(|| "stream_error".to_string());
                } else if !tap.completed() {
                    // Envoy cut it: the client went away, or the upstream failed (reset, timeout)
                    // after the stream had started and the router could only reset it.
                    let kind = if self.upstream_cut() { "stream_error" } else { "client_closed" };
                    self.record.error_type.get_or_insert_with(|| kind.to_string());
                }
            }
            if self.record.status == 0 {
                // The client went away before any answer.
                self.record.status = 499;
                self.record.error_type.get_or_insert_with(|| "client_closed".to_string());
            }
            self.publish_record();
        }
        if let Some(model) = self.latency_model.take() {
            self.record_latency(&model);
        }
        if let Some((model, arm)) = self.canary.take() {
            self.record_canary(&model, arm);
        }
        if self.cfg.emit_metrics {
            emit_metrics(&telemetry::metric_updates(&self.record, self.cfg.label_options));
        }
    }
}

/// `n` random bytes as hex (ids the gateway makes; a counter keeps them unique on this thread when
/// no randomness is available).
fn random_hex(n: usize) -> String {
    thread_local!(static FALLBACK: std::cell::Cell<u64> = const { std::cell::Cell::new(0) });
    let mut r = vec![0u8; n];
    if getrandom::getrandom(&mut r).is_err() {
        let c = FALLBACK.with(|c| {
            c.set(c.get().wrapping_add(1));
            c.get()
        });
        for (b, x) in r.iter_mut().zip(c.to_le_bytes()) {
            *b = x;
        }
    }
    r.iter().map(|b| format!("{b:02x}")).collect()
}

/// Prefix of the headers the fleet's rate limit service adds (see `tools/rls`).
const FLEET_HEADER_PREFIX: &str = "x-switchyard-fleet-";
/// Filter state (`wasm.<name>` in Envoy) for the rate limit filter's descriptors in fleet mode.
const FLEET_KEY: &str = "switchyard_fleet_key";
const FLEET_TEAM: &str = "switchyard_fleet_team";
const FLEET_BUDGET_KEY: &str = "switchyard_fleet_budget_key";
const FLEET_BUDGET_TEAM: &str = "switchyard_fleet_budget_team";
const FLEET_PROMPT: &str = "switchyard_fleet_prompt_tokens";
const FLEET_TOKENS: &str = "switchyard_fleet_tokens";
const FLEET_COST: &str = "switchyard_fleet_cost";

fn set_filter_state(name: &str, value: &str) {
    if let Err(e) = hostcalls::set_property(vec![name], Some(value.as_bytes())) {
        log::warn!("switchyard: cannot set filter state {name}: {e:?}");
    }
}

/// The admitted request's key, team and prompt estimate for the rate limit filter; the charges
/// start at 0 and are set when the request is settled.
fn publish_fleet_tags(t: &crate::policy::FleetTags) {
    set_filter_state(FLEET_KEY, &t.key);
    set_filter_state(FLEET_PROMPT, &t.prompt_estimate.to_string());
    if let Some(team) = &t.team {
        set_filter_state(FLEET_TEAM, team);
    }
    if t.budgeted {
        set_filter_state(FLEET_BUDGET_KEY, &t.key);
        if let Some(team) = &t.team {
            set_filter_state(FLEET_BUDGET_TEAM, team);
        }
    }
    set_filter_state(FLEET_TOKENS, "0");
    set_filter_state(FLEET_COST, "0");
}

/// A uniform number in [0, 1) (1.0 when no randomness is available: the stable arm).
fn random_unit() -> f64 {
    let mut r = [0u8; 8];
    if getrandom::getrandom(&mut r).is_err() {
        return 1.0;
    }
    ((u64::from_le_bytes(r) >> 11) as f64) / ((1u64 << 53) as f64)
}

impl GatewayFilter {
    /// Adds this request to its route's canary window, judges the gates, and says what changed.
    fn record_canary(&self, model: &str, arm: canary::Arm) {
        let cfg = self.cfg.clone();
        let Some(stable) = cfg.router.resolve(model) else { return };
        let Some(c) = stable.canary else { return };
        // The stable model's route (this request may have been served by the canary's own route).
        let route = stable.route;
        let r = &self.record;
        if r.status == 499 || r.error_type.as_deref() == Some("client_closed") {
            return;
        }
        let error = r.status == 0 || r.status == 429 || r.status >= 500 || r.error_type.as_deref() == Some("stream_error");
        let latency = if r.stream { r.ttft_ms } else { r.ttfb_ms };
        let sample = canary::Sample { latency_ms: if error { None } else { latency }, error, cost_micros: r.cost_micros.filter(|_| !error) };
        let Some((event, share)) = canary::record(&EnvoyStore, c, arm, sample, now_ms()) else { return };
        let mut updates = vec![telemetry::MetricUpdate {
            kind: telemetry::MetricKind::Gauge,
            name: telemetry::stat_name(telemetry::CANARY_SHARE, &[("route", model)]),
            value: share,
        }];
        match event {
            Some(canary::Event::RolledBack { gate, canary: cv, stable: sv }) => {
                log::warn!(
                    "switchyard: canary {} of route {route} rolled back to 0%: gate {} failed (canary {cv:.3}, stable {sv:.3})",
                    c.cfg.model,
                    gate.as_str()
                );
                updates.push(telemetry::MetricUpdate {
                    kind: telemetry::MetricKind::Counter,
                    name: telemetry::stat_name(telemetry::CANARY_ROLLBACKS, &[("route", model), ("reason", gate.as_str())]),
                    value: 1,
                });
            }
            Some(canary::Event::SteppedUp { share_ppm }) => {
                log::info!("switchyard: canary {} of route {route} stepped up to {} ppm", c.cfg.model, share_ppm);
            }
            None => {}
        }
        if cfg.emit_metrics {
            emit_metrics(&updates);
        }
    }

    /// Adds this request to its model's shared latency and error averages (policy `fastest`) and
    /// publishes the model's new score.
    fn record_latency(&self, model: &str) {
        let r = &self.record;
        if r.status == 499 || r.error_type.as_deref() == Some("client_closed") {
            return; // the client went away: says nothing about the model
        }
        let error = r.status == 0 || r.status == 429 || r.status >= 500 || r.error_type.as_deref() == Some("stream_error");
        let ttft = if r.stream { r.ttft_ms } else { r.ttfb_ms };
        let sample = latency::Sample { ttft_ms: if error { None } else { ttft }, error };
        if let Some(h) = latency::record(&EnvoyStore, model, sample, now_ms()) {
            if self.cfg.emit_metrics {
                let name = telemetry::stat_name(telemetry::CANDIDATE_SCORE, &[("route", model)]);
                emit_metrics(&[telemetry::MetricUpdate { kind: telemetry::MetricKind::Gauge, name, value: h.score_ms().round() as u64 }]);
            }
        }
    }
}
