//! Backend role: runs upstream, once per attempt (first try and every retry), after Envoy chose the
//! endpoint. The endpoint's metadata names the backend; this filter rewrites the attempt into that
//! backend's wire schema and translates the answer back into OpenAI's shape.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType};

use super::inflight::{self, SharedState};
use super::{header, now_ms, now_secs, send_error, send_json, set_request_header, set_response_header, BackendRuntime, Backends};
use crate::api::ApiError;
use crate::config::{METADATA_NAMESPACE, MODEL_HEADER, OP_HEADER};
use crate::policy::headers as header_policy;
use crate::providers::{self, AttemptContext, Operation, ResponseHints, StreamTranslate};
use crate::stream::first_token::FirstTokenWatch;

enum ResponseMode {
    /// The body is already in the client's shape (OpenAI-compatible success).
    Passthrough,
    /// An error answer, buffered and rewritten into an OpenAI error.
    Error { status: u16 },
    /// Non-stream success, buffered and translated whole.
    Whole,
    /// Non-stream success already in the client's shape: passed as it is, but held until complete
    /// and checked, so that an answer cut, stalled or garbled before its end is retried on the
    /// next candidate instead of reaching the client.
    Check,
    /// A held answer was refused (too large): the rest of its body is dropped.
    Discard,
    /// A stream, translated chunk by chunk.
    Stream(Box<dyn StreamTranslate>),
}

pub struct BackendFilter {
    backends: Rc<Backends>,
    backend: Option<Rc<BackendRuntime>>,
    /// Model name sent upstream.
    model: String,
    op: Operation,
    hints: Option<ResponseHints>,
    mode: ResponseMode,
    out: Vec<u8>,
    /// The request's state shared with the gateway role (see `inflight`).
    state: Option<SharedState>,
    /// With a first-token deadline: this attempt's index in the request's timings, and the watch
    /// for its first token while the answer is held back from the router.
    deadline: Option<Box<DeadlineHold>>,
    /// This attempt's backend speaks the client's ingress API: it gets the client's own body and
    /// its answer goes back untouched (errors are still translated, as for every backend).
    native: bool,
    /// The client's `:authority` (see `RequestState::client_authority`).
    client_authority: Option<String>,
}

/// A successful stream held back until its first token (routes with a first-token deadline).
struct DeadlineHold {
    attempt: usize,
    holding: bool,
    /// Bytes already in Envoy's buffer, as the client will get them.
    held_len: usize,
    watch: FirstTokenWatch,
}

impl BackendFilter {
    pub fn new(backends: Rc<Backends>) -> Self {
        BackendFilter {
            backends,
            backend: None,
            model: String::new(),
            op: Operation::Chat,
            hints: None,
            mode: ResponseMode::Passthrough,
            out: Vec::new(),
            state: None,
            deadline: None,
            native: false,
            client_authority: None,
        }
    }

    /// Settles this attempt's timing once: `released` when its answer goes to the router (then
    /// it is the one that served, whatever attempts started after it, as with hedging).
    fn settle_attempt(&self, released: bool) {
        let (Some(hold), Some(state)) = (&self.deadline, &self.state) else { return };
        let now = now_ms();
        let mut st = state.borrow_mut();
        match st.timings.get_mut(hold.attempt) {
            Some(t) if t.settled_ms.is_none() => {
                t.settled_ms = Some(now);
                t.released = released;
            }
            _ => return,
        }
        if let (true, Some(b)) = (released, &self.backend) {
            st.served_backend = Some(Rc::from(b.name.as_str()));
            st.served_provider = Some(b.cfg.schema.as_str());
            st.served_model = Some(self.model.clone());
        }
    }

    /// A held stream's body: everything buffered so far (what was already translated, then the new
    /// bytes). Released to the router with its first token, or at its end.
    fn on_held_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let body = if body_size > 0 { self.get_http_response_body(0, body_size).unwrap_or_default() } else { Vec::new() };
        let Some(hold) = self.deadline.as_mut() else { return Action::Continue };
        let (prefix, fresh) = body.split_at(hold.held_len.min(body.len()));
        let mut out = prefix.to_vec();
        let start = out.len();
        match &mut self.mode {
            ResponseMode::Stream(translator) => {
                translator.push(fresh, &mut out);
                if end_of_stream {
                    translator.finish(&mut out);
                }
            }
            _ => out.extend_from_slice(fresh),
        }
        let out = self.scrub_error_events(out, start);
        let Some(hold) = self.deadline.as_mut() else { return Action::Continue };
        let token = hold.watch.push(out.get(start..).unwrap_or_default());
        hold.held_len = out.len();
        if out != body {
            if let Err(e) = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, &out) {
                log::warn!("switchyard: cannot replace response body: {e:?}");
            }
        }
        if token || end_of_stream {
            hold.holding = false;
            self.settle_attempt(true);
            return Action::Continue;
        }
        Action::Pause
    }

    fn set_provider_header(&self, name: &str, value: &str) {
        set_request_header(name, Some(value));
        if let Some(state) = &self.state {
            state.borrow_mut().provider_headers.push(name.to_string());
        }
    }

    fn metadata(&self, key: &str) -> Option<String> {
        let v = self.get_property(vec!["xds", "upstream_host_metadata", "filter_metadata", METADATA_NAMESPACE, key])?;
        String::from_utf8(v).ok().filter(|s| !s.is_empty())
    }

    /// Rewrites the buffered request body and the headers for the chosen backend.
    fn translate_request(&mut self, backend: &BackendRuntime, body: &[u8]) -> Result<(), ApiError> {
        let cfg = &backend.cfg;
        let ctx = AttemptContext { model: &self.model, now_unix: now_secs(), aws: backend.aws.as_ref() };
        let native = if self.native { self.state.as_ref().and_then(|st| st.borrow().native_body.clone().map(|b| (st.borrow().ingress, b))) } else { None };
        let up = match native {
            Some((ingress, original)) => ingress.native_request(cfg, &original, &ctx)?,
            None => providers::upstream_request(self.op, cfg, body, &ctx)?,
        };
        set_request_header(":path", Some(&up.path));
        // Always set: an earlier attempt (retries share one header map) left its backend's `host`
        // there, and Envoy's credential injector and AWS signer pick their backend by `:authority`.
        // A backend without `host` gets the client's, unless that names a configured backend's
        // host (then the backend's name), so no attempt goes out looking like another backend's.
        // An empty or unknown client authority gets the backend's name too: the header is never
        // left as an earlier attempt wrote it.
        let authority = match (&cfg.host, self.client_authority.as_deref()) {
            (Some(host), _) => host.clone(),
            (None, Some(a)) if !a.is_empty() && !self.backends.is_backend_host(a) => a.to_string(),
            (None, _) => backend.name.clone(),
        };
        set_request_header(":authority", Some(&authority));
        set_request_header("content-type", Some("application/json"));
        let body_changed = up.body.as_slice() != body;
        // Always set: an earlier attempt (retries share one header map) may have changed it.
        set_request_header("content-length", Some(&up.body.len().to_string()));
        // The answer must come back uncompressed: it is parsed and translated here and in the gateway.
        set_request_header("accept-encoding", Some("identity"));
        let byok = self.state.as_ref().and_then(|st| st.borrow().byok.clone());
        match (byok, &backend.credential) {
            (Some(own), _) => self.set_provider_header(cfg.credential_header(), &format!("{}{own}", cfg.credential_prefix())),
            (None, Some(cred)) => self.set_provider_header(cfg.credential_header(), cred),
            (None, None) => {}
        }
        for (k, v) in &cfg.headers {
            self.set_provider_header(k, v);
        }
        for (k, v) in &up.headers {
            self.set_provider_header(k, v);
        }
        if body_changed {
            if let Err(e) = hostcalls::set_buffer(BufferType::HttpRequestBody, 0, body.len(), &up.body) {
                return Err(ApiError::gateway(500, format!("cannot replace the request body: {e:?}")));
            }
        }
        self.hints = Some(up.hints);
        Ok(())
    }
}

impl BackendFilter {
    /// A provider's mid-stream error event may quote the credential, like its error answers:
    /// translated stream output from `from` on is scrubbed when it carries an error event (only
    /// then is it searched).
    fn scrub_error_events(&self, mut out: Vec<u8>, from: usize) -> Vec<u8> {
        let fresh = out.get(from..).unwrap_or_default();
        if memchr::memmem::find(fresh, br#"{"error":{"#).is_some() {
            let scrubbed = self.scrub_credentials(fresh);
            out.truncate(from);
            out.extend_from_slice(&scrubbed);
        }
        out
    }

    /// `body` without the credentials this attempt sent (a provider may quote them in an error).
    fn scrub_credentials(&self, body: &[u8]) -> Vec<u8> {
        let Some(backend) = self.backend.as_ref() else { return body.to_vec() };
        let byok = self.state.as_ref().and_then(|st| st.borrow().byok.clone());
        let mut secrets: Vec<&str> = Vec::with_capacity(4);
        if let Some(c) = &backend.credential {
            secrets.push(c.strip_prefix(backend.cfg.credential_prefix()).unwrap_or(c));
        }
        if let Some(aws) = &backend.aws {
            secrets.extend([aws.access_key_id.as_str(), aws.secret_access_key.as_str()]);
            secrets.extend(aws.session_token.as_deref());
        }
        secrets.extend(byok.as_deref());
        providers::redact::scrub(body, &secrets).into_owned()
    }
}

impl BackendFilter {
    /// Keeps the provider's (translated) refusal for a later attempt to the same backend.
    fn remember_refusal(&self) {
        let (Some(state), Some(backend)) = (&self.state, &self.backend) else { return };
        let mut st = state.borrow_mut();
        if let Some(r) = st.refused.iter_mut().rev().find(|r| *r.backend == *backend.name) {
            r.answer = Some(self.out.clone());
        }
    }
}

impl Context for BackendFilter {
    fn on_done(&mut self) -> bool {
        // An attempt that ends without having been released (reset, cancelled by a hedge's winner,
        // abandoned at its deadline): its timing ends here.
        if self.deadline.is_some() {
            self.settle_attempt(false);
        }
        true
    }
}

impl HttpContext for BackendFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(name) = self.metadata("backend") else {
            log::error!("switchyard: the upstream endpoint has no filter_metadata.{METADATA_NAMESPACE}.backend");
            send_error(&ApiError::gateway(500, "Gateway misconfiguration: the chosen endpoint names no backend."));
            return Action::Pause;
        };
        let Some(backend) = self.backends.by_name.get(&name).cloned() else {
            log::error!("switchyard: endpoint names backend {name}, which the backend filter does not configure");
            send_error(&ApiError::gateway(500, format!("Gateway misconfiguration: unknown backend `{name}`.")));
            return Action::Pause;
        };
        let headers = self.get_http_request_headers();
        self.state = header(&headers, "x-request-id").and_then(inflight::lookup);
        let authority = header(&headers, ":authority").map(str::to_string);
        self.client_authority = match &self.state {
            // The first attempt records it; later ones find the previous backend's host in the header.
            Some(state) => Some(state.borrow_mut().client_authority.get_or_insert_with(|| authority.unwrap_or_default()).clone()),
            None => authority,
        };
        let requested = match &self.state {
            Some(state) => {
                let mut st = state.borrow_mut();
                self.op = st.op;
                // Undo what an earlier attempt added for its provider: retries share one header map.
                for name in std::mem::take(&mut st.provider_headers) {
                    set_request_header(&name, None);
                }
                st.model.clone()
            }
            // The gateway runs in another VM: fall back to its headers (first attempt only).
            None => {
                self.op = header(&headers, OP_HEADER).and_then(Operation::parse).unwrap_or(Operation::Chat);
                header(&headers, MODEL_HEADER).unwrap_or("").to_string()
            }
        };
        self.model = self.metadata("model").or_else(|| backend.cfg.model.clone()).unwrap_or(requested);
        // A credential a provider refused earlier in this request is not sent again: the retry
        // that came back to its backend ends here, without reaching the provider.
        if let Some(state) = &self.state {
            let st = state.borrow();
            if let Some(r) = st.refusal(&backend.name) {
                match &r.answer {
                    Some(answer) => send_json(r.status, answer, &[]),
                    None => send_error(&providers::credential_refused(&backend.name, r.status)),
                }
                return Action::Pause;
            }
        }
        if let Some(state) = &self.state {
            if state.borrow().forbid_floating && crate::policy::route_check::is_floating(&self.model) {
                log::error!("switchyard: backend {} sends the floating model name {} on a route that forbids it", backend.name, self.model);
                send_error(&ApiError::gateway(
                    500,
                    format!("Gateway misconfiguration: this route pins model versions, and backend `{}` would send the floating name `{}`.", backend.name, self.model),
                ));
                return Action::Pause;
            }
        }
        // A candidate whose model lacks what the request needs (images, tools, context…) never
        // sees the request: the client gets a 400 naming the capability, not the provider's error.
        // (Envoy does not retry an upstream filter's local reply: steering around such candidates
        // is the subset load balancer's job, fed by the gateway's `x-switchyard-needs-*` headers.)
        if let Some(state) = &self.state {
            let missing = state.borrow().needs.as_ref().and_then(|(needs, caps)| caps.missing(&self.model, needs));
            if let Some(m) = missing {
                state.borrow_mut().skipped += 1;
                let (msg, param) = m.describe(&self.model);
                let e = ApiError::new(400, "invalid_request_error", format!("{msg} (backend `{}` was skipped)", backend.name))
                    .with_param(param)
                    .with_code("model_capability_missing");
                log::debug!("switchyard: skipping backend {}: {msg}", backend.name);
                send_json(400, &e.to_json(), &[]);
                return Action::Pause;
            }
        }
        for (k, _) in &headers {
            if header_policy::withheld_from_provider(k) {
                set_request_header(k, None);
            }
        }
        if let Some(state) = &self.state {
            // A client's own credential is for the provider of the first attempt: a failover to
            // another backend must not hand it to a third party (nor serve it on the gateway's key).
            let foreign = {
                let st = state.borrow();
                match st.first_backend.as_deref() {
                    Some(first) if st.byok.is_some() && !header_policy::byok_allowed(Some(first), &backend.name) => Some(first.to_string()),
                    _ => None,
                }
            };
            if let Some(first) = foreign {
                send_error(
                    &ApiError::new(
                        502,
                        "api_error",
                        format!(
                            "The request carries its own provider credential, which is for backend `{first}`; that backend failed and the request is not failed over to backend `{}`.",
                            backend.name
                        ),
                    )
                    .with_code("byok_no_failover"),
                );
                return Action::Pause;
            }
            let (ingress, untranslatable) = {
                let st = state.borrow();
                (st.ingress, st.untranslatable.clone())
            };
            self.native = ingress.native(&backend.cfg) && state.borrow().native_body.is_some();
            if let (false, Some(e)) = (self.native, untranslatable) {
                // The client's request needs a backend that speaks its API; this one does not.
                send_error(&ApiError { message: format!("{} (backend `{}`)", e.message, backend.name), ..e });
                return Action::Pause;
            }
            let mut st = state.borrow_mut();
            st.native_answer = self.native;
            st.handover = None;
            st.attempts += 1;
            let name: Rc<str> = Rc::from(backend.name.as_str());
            if st.first_backend.is_none() {
                st.first_backend = Some(name.clone());
            }
            st.served_backend = Some(name);
            st.served_provider = Some(backend.cfg.schema.as_str());
            st.served_model = Some(self.model.clone());
            if st.deadline_ms.is_some() {
                let attempt = st.timings.len();
                st.timings.push(crate::policy::deadline::AttemptTiming { start_ms: now_ms(), ..Default::default() });
                let target = (Rc::from(backend.name.as_str()), backend.cfg.schema.as_str(), self.model.clone());
                st.timed_targets.push(target);
                self.deadline = Some(Box::new(DeadlineHold { attempt, holding: false, held_len: 0, watch: FirstTokenWatch::new() }));
            }
        }
        log::debug!("switchyard: attempt to backend {} with model {}", backend.name, self.model);
        self.backend = Some(backend);
        if end_of_stream {
            return Action::Continue;
        }
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let Some(backend) = self.backend.clone() else {
            return Action::Continue;
        };
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        match self.translate_request(&backend, &body) {
            Ok(()) => Action::Continue,
            Err(e) => {
                send_error(&e);
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let (Some(backend), Some(hints)) = (self.backend.as_ref(), self.hints.as_ref()) else {
            return Action::Continue;
        };
        let status: u16 = self.get_http_response_header(":status").and_then(|s| s.parse().ok()).unwrap_or(0);
        let schema = backend.cfg.schema;
        let dialect = providers::Dialect::from(&backend.cfg);
        if providers::refuses_credential(status) {
            if let Some(state) = &self.state {
                let backend = Rc::from(backend.name.as_str());
                let status = providers::error_status(schema, status);
                state.borrow_mut().refused.push(inflight::Refused { backend, status, answer: None });
            }
        }
        self.mode = if status >= 400 {
            let mapped = providers::error_status(schema, status);
            if mapped != status {
                set_response_header(":status", Some(&mapped.to_string()));
            }
            ResponseMode::Error { status }
        } else if self.native {
            // Already in the client's API: streams pass, whole answers are checked.
            if hints.stream {
                ResponseMode::Passthrough
            } else {
                ResponseMode::Check
            }
        } else if hints.stream {
            match providers::stream_translator(dialect, hints, now_secs()) {
                Some(t) => ResponseMode::Stream(t),
                None => ResponseMode::Passthrough,
            }
        } else if providers::translates_responses(dialect, hints) {
            ResponseMode::Whole
        } else {
            ResponseMode::Check
        };
        // With a first-token deadline, a successful stream is held back from the router until its
        // first token: until then Envoy's per-try timeout may still move on to the next candidate.
        let mut hold_stream = false;
        if self.deadline.is_some() {
            if status >= 400 {
                if let (Some(hold), Some(state)) = (&self.deadline, &self.state) {
                    if let Some(t) = state.borrow_mut().timings.get_mut(hold.attempt) {
                        t.failed = true;
                    }
                }
                self.settle_attempt(false);
            } else if end_of_stream {
                self.settle_attempt(true);
            } else if matches!(self.mode, ResponseMode::Passthrough | ResponseMode::Stream(_)) {
                hold_stream = true;
                if let Some(hold) = self.deadline.as_mut() {
                    hold.holding = true;
                }
            }
        }
        match self.mode {
            ResponseMode::Passthrough if hold_stream => Action::Pause,
            ResponseMode::Passthrough => Action::Continue,
            ResponseMode::Stream(_) => {
                set_response_header("content-length", None);
                // What the client gets is OpenAI SSE whatever the upstream sent (Bedrock answers
                // `application/vnd.amazon.eventstream`); the gateway's usage tap keys on this too.
                set_response_header("content-type", Some("text/event-stream"));
                if hold_stream {
                    return Action::Pause;
                }
                Action::Continue
            }
            // Hold the headers until the whole body is translated: its status and length may change.
            _ if end_of_stream => Action::Continue,
            ResponseMode::Check => Action::Pause,
            _ => {
                set_response_header("content-type", Some("application/json"));
                Action::Pause
            }
        }
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let (schema, dialect) = match self.backend.as_ref() {
            Some(b) => (b.cfg.schema, providers::Dialect::from(&b.cfg)),
            None => return Action::Continue,
        };
        if self.deadline.as_ref().is_some_and(|h| h.holding) {
            return self.on_held_body(body_size, end_of_stream);
        }
        if matches!(self.mode, ResponseMode::Passthrough) {
            return Action::Continue;
        }
        let buffered = !matches!(self.mode, ResponseMode::Stream(_));
        if matches!(self.mode, ResponseMode::Discard) {
            if body_size > 0 {
                if let Err(e) = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, &[]) {
                    log::warn!("switchyard: cannot replace response body: {e:?}");
                }
            }
            return Action::Continue;
        }
        if buffered && body_size > self.backends.max_response_body_bytes {
            // The held headers become a 502 the router retries on the next candidate (it resets
            // this attempt); whatever else arrives is dropped.
            let e = providers::response_too_large(self.backends.max_response_body_bytes);
            let out = e.to_json();
            set_response_header(":status", Some(&e.status.to_string()));
            set_response_header("content-type", Some("application/json"));
            set_response_header("content-length", Some(&out.len().to_string()));
            if let Err(e) = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, &out) {
                log::warn!("switchyard: cannot replace response body: {e:?}");
            }
            self.mode = ResponseMode::Discard;
            return Action::Continue;
        }
        if buffered && !end_of_stream {
            return Action::Pause;
        }
        let body = if body_size > 0 { self.get_http_response_body(0, body_size).unwrap_or_default() } else { Vec::new() };
        self.out.clear();
        match &mut self.mode {
            ResponseMode::Passthrough | ResponseMode::Discard => {}
            ResponseMode::Check => match providers::check_whole_answer(&body) {
                Ok(()) => {
                    self.settle_attempt(true);
                    return Action::Continue;
                }
                Err(e) => {
                    set_response_header(":status", Some(&e.status.to_string()));
                    set_response_header("content-type", Some("application/json"));
                    self.out = e.to_json();
                }
            },
            ResponseMode::Stream(translator) => {
                translator.push(&body, &mut self.out);
                if end_of_stream {
                    translator.finish(&mut self.out);
                }
                let out = std::mem::take(&mut self.out);
                self.out = self.scrub_error_events(out, 0);
            }
            ResponseMode::Error { status } => {
                let status = *status;
                let translated = providers::error_body(schema, status, &self.scrub_credentials(&body));
                self.out = self.scrub_credentials(&translated);
                if providers::refuses_credential(status) {
                    self.remember_refusal();
                }
            }
            ResponseMode::Whole => match self.hints.as_ref().map(|h| providers::response_answer(dialect, h, &body, now_secs())) {
                Some(Ok(a)) => {
                    self.out = a.body;
                    // What the gateway would parse the bytes again for (see `inflight::RequestState::handover`).
                    if let (Some(summary), Some(state)) = (a.summary, &self.state) {
                        state.borrow_mut().handover = Some(summary);
                    }
                    self.settle_attempt(true);
                }
                Some(Err(e)) => {
                    set_response_header(":status", Some(&e.status.to_string()));
                    // The reason may quote the answer, which may quote what the provider received.
                    self.out = self.scrub_credentials(&e.to_json());
                }
                None => {}
            },
        }
        if let Err(e) = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, &self.out) {
            log::warn!("switchyard: cannot replace response body: {e:?}");
        }
        if buffered {
            set_response_header("content-length", Some(&self.out.len().to_string()));
        }
        Action::Continue
    }
}
