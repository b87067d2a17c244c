//! Backend role through the native ABI (prototype): per upstream attempt, rewrite the request into
//! the chosen backend's schema and translate the answer back, as `src/filter/backend.rs` does
//! (without first-token deadlines, capability skips and BYOK, which the native gateway refuses).

use std::rc::Rc;

use super::abi::*;
use super::host::Host;
use super::inflight::{self, SharedState};
use super::{now_secs, BackendRuntime, Backends, Config, Role};
use crate::api::ApiError;
use crate::config::{METADATA_NAMESPACE, MODEL_HEADER, OP_HEADER};
use crate::policy::headers as header_policy;
use crate::providers::{self, AttemptContext, Operation, ResponseHints, StreamTranslate};

enum ResponseMode {
    Passthrough,
    Error { status: u16 },
    Whole,
    Check,
    Discard,
    Stream(Box<dyn StreamTranslate>),
}

pub struct BackendFilter {
    cfg: &'static Config,
    backend: Option<&'static BackendRuntime>,
    model: String,
    op: Operation,
    hints: Option<ResponseHints>,
    mode: ResponseMode,
    out: Vec<u8>,
    state: Option<SharedState>,
}

impl BackendFilter {
    pub fn new(cfg: &'static Config) -> Self {
        BackendFilter { cfg, backend: None, model: String::new(), op: Operation::Chat, hints: None, mode: ResponseMode::Passthrough, out: Vec::new(), state: None }
    }

    fn backends(&self) -> &'static Backends {
        match &self.cfg.role {
            Role::Backend(b) => b,
            _ => unreachable!("backend filter without a backend configuration"),
        }
    }

    fn set_provider_header(&self, h: Host, name: &str, value: &str) {
        h.set_request_header(name, Some(value));
        if let Some(state) = &self.state {
            state.borrow_mut().provider_headers.push(name.to_string());
        }
    }

    fn scrub_credentials(&self, body: &[u8]) -> Vec<u8> {
        let Some(backend) = self.backend else { return body.to_vec() };
        let mut secrets: Vec<&str> = Vec::with_capacity(4);
        if let Some(c) = &backend.credential {
            secrets.push(c.strip_prefix(backend.cfg.credential_prefix()).unwrap_or(c));
        }
        if let Some(aws) = &backend.aws {
            secrets.extend([aws.access_key_id.as_str(), aws.secret_access_key.as_str()]);
            secrets.extend(aws.session_token.as_deref());
        }
        providers::redact::scrub(body, &secrets).into_owned()
    }

    fn translate_request(&mut self, h: Host, backend: &'static BackendRuntime, body: &[u8]) -> Result<(), ApiError> {
        let cfg = &backend.cfg;
        let up = providers::upstream_request(self.op, cfg, body, &AttemptContext { model: &self.model, now_unix: now_secs(), aws: backend.aws.as_ref() })?;
        h.set_request_header(":path", Some(&up.path));
        if let Some(host) = &cfg.host {
            h.set_request_header(":authority", Some(host));
        }
        h.set_request_header("content-type", Some("application/json"));
        h.set_request_header("content-length", Some(&up.body.len().to_string()));
        h.set_request_header("accept-encoding", Some("identity"));
        if let Some(cred) = &backend.credential {
            self.set_provider_header(h, cfg.credential_header(), cred);
        }
        for (k, v) in &cfg.headers {
            self.set_provider_header(h, k, v);
        }
        for (k, v) in &up.headers {
            self.set_provider_header(h, k, v);
        }
        if up.body.as_slice() != body {
            h.replace_body(true, &up.body);
        }
        self.hints = Some(up.hints);
        Ok(())
    }

    pub fn on_request_headers(&mut self, h: Host, end_of_stream: bool) -> HeadersStatus {
        let Some(name) = h.host_metadata(METADATA_NAMESPACE, "backend") else {
            log::error!("switchyard: the upstream endpoint has no filter_metadata.{METADATA_NAMESPACE}.backend");
            h.send_json(500, &ApiError::gateway(500, "Gateway misconfiguration: the chosen endpoint names no backend.").to_json(), &[]);
            return HEADERS_STOP_ITERATION;
        };
        let Some(backend) = self.backends().by_name.get(&name) else {
            log::error!("switchyard: endpoint names backend {name}, which the backend filter does not configure");
            h.send_json(500, &ApiError::gateway(500, format!("Gateway misconfiguration: unknown backend `{name}`.")).to_json(), &[]);
            return HEADERS_STOP_ITERATION;
        };
        self.state = h.header_str(REQUEST_HEADER, "x-request-id").and_then(inflight::lookup);
        let requested = match &self.state {
            Some(state) => {
                let mut st = state.borrow_mut();
                self.op = st.op;
                for name in std::mem::take(&mut st.provider_headers) {
                    h.set_request_header(&name, None);
                }
                st.model.clone()
            }
            None => {
                self.op = h.header_str(REQUEST_HEADER, OP_HEADER).and_then(Operation::parse).unwrap_or(Operation::Chat);
                h.header_str(REQUEST_HEADER, MODEL_HEADER).unwrap_or("").to_string()
            }
        };
        self.model = h.host_metadata(METADATA_NAMESPACE, "model").or_else(|| backend.cfg.model.clone()).unwrap_or(requested);
        if let Some(state) = &self.state {
            let st = state.borrow();
            if let Some(r) = st.refusal(&backend.name) {
                match &r.answer {
                    Some(answer) => h.send_json(r.status, answer, &[]),
                    None => h.send_json(r.status, &providers::credential_refused(&backend.name, r.status).to_json(), &[]),
                }
                return HEADERS_STOP_ITERATION;
            }
            if st.forbid_floating && crate::policy::route_check::is_floating(&self.model) {
                let e = ApiError::gateway(500, format!("Gateway misconfiguration: this route pins model versions, and backend `{}` would send the floating name `{}`.", backend.name, self.model));
                h.send_json(500, &e.to_json(), &[]);
                return HEADERS_STOP_ITERATION;
            }
        }
        for (k, _) in h.headers(REQUEST_HEADER) {
            if let Ok(k) = std::str::from_utf8(k) {
                if header_policy::withheld_from_provider(k) {
                    h.set_request_header(k, None);
                }
            }
        }
        if let Some(state) = &self.state {
            let mut st = state.borrow_mut();
            st.attempts += 1;
            let name: Rc<str> = Rc::from(backend.name.as_str());
            if st.first_backend.is_none() {
                st.first_backend = Some(name.clone());
            }
            st.served_backend = Some(name);
            st.served_provider = Some(backend.cfg.schema.as_str());
            st.served_model = Some(self.model.clone());
        }
        self.backend = Some(backend);
        if end_of_stream {
            return HEADERS_CONTINUE;
        }
        HEADERS_STOP_ITERATION
    }

    pub fn on_request_body(&mut self, h: Host, end_of_stream: bool) -> BodyStatus {
        if !end_of_stream {
            return BODY_STOP_AND_BUFFER;
        }
        let Some(backend) = self.backend else { return BODY_CONTINUE };
        let body = h.body(true);
        match self.translate_request(h, backend, &body) {
            Ok(()) => BODY_CONTINUE,
            Err(e) => {
                h.send_json(e.status, &e.to_json(), &[]);
                BODY_STOP_AND_BUFFER
            }
        }
    }

    pub fn on_response_headers(&mut self, h: Host, end_of_stream: bool) -> HeadersStatus {
        let (Some(backend), Some(hints)) = (self.backend, self.hints.as_ref()) else { return HEADERS_CONTINUE };
        let status: u16 = h.header_str(RESPONSE_HEADER, ":status").and_then(|s| s.parse().ok()).unwrap_or(0);
        let schema = backend.cfg.schema;
        let dialect = providers::Dialect::from(&backend.cfg);
        if providers::refuses_credential(status) {
            if let Some(state) = &self.state {
                let name = Rc::from(backend.name.as_str());
                let status = providers::error_status(schema, status);
                state.borrow_mut().refused.push(inflight::Refused { backend: name, status, answer: None });
            }
        }
        self.mode = if status >= 400 {
            let mapped = providers::error_status(schema, status);
            if mapped != status {
                h.set_response_header(":status", Some(&mapped.to_string()));
            }
            ResponseMode::Error { status }
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
        match self.mode {
            ResponseMode::Passthrough => HEADERS_CONTINUE,
            ResponseMode::Stream(_) => {
                h.set_response_header("content-length", None);
                h.set_response_header("content-type", Some("text/event-stream"));
                HEADERS_CONTINUE
            }
            _ if end_of_stream => HEADERS_CONTINUE,
            ResponseMode::Check => HEADERS_STOP_ITERATION,
            _ => {
                h.set_response_header("content-type", Some("application/json"));
                HEADERS_STOP_ITERATION
            }
        }
    }

    pub fn on_response_body(&mut self, h: Host, end_of_stream: bool) -> BodyStatus {
        let Some(backend) = self.backend else { return BODY_CONTINUE };
        let (schema, dialect) = (backend.cfg.schema, providers::Dialect::from(&backend.cfg));
        if matches!(self.mode, ResponseMode::Passthrough) {
            return BODY_CONTINUE;
        }
        if matches!(self.mode, ResponseMode::Discard) {
            h.replace_received(false, &[]);
            return BODY_CONTINUE;
        }
        let buffered = !matches!(self.mode, ResponseMode::Stream(_));
        if buffered {
            let limit = self.backends().max_response_body_bytes;
            let size = unsafe {
                let mut n = envoy_dynamic_module_callback_http_get_body_size(h.0, RECEIVED_RESPONSE_BODY);
                if !envoy_dynamic_module_callback_http_received_buffered_response_body(h.0) {
                    n += envoy_dynamic_module_callback_http_get_body_size(h.0, BUFFERED_RESPONSE_BODY);
                }
                n
            };
            if size > limit {
                let e = providers::response_too_large(limit);
                let out = e.to_json();
                h.set_response_header(":status", Some(&e.status.to_string()));
                h.set_response_header("content-type", Some("application/json"));
                h.set_response_header("content-length", Some(&out.len().to_string()));
                h.replace_body(false, &out);
                self.mode = ResponseMode::Discard;
                return BODY_CONTINUE;
            }
            if !end_of_stream {
                return BODY_STOP_AND_BUFFER;
            }
        }
        let body = if buffered { h.body(false) } else { h.received(false) };
        self.out.clear();
        match &mut self.mode {
            ResponseMode::Passthrough | ResponseMode::Discard => {}
            ResponseMode::Check => match providers::check_whole_answer(&body) {
                Ok(()) => return BODY_CONTINUE,
                Err(e) => {
                    h.set_response_header(":status", Some(&e.status.to_string()));
                    h.set_response_header("content-type", Some("application/json"));
                    self.out = e.to_json();
                }
            },
            ResponseMode::Stream(translator) => {
                translator.push(&body, &mut self.out);
                if end_of_stream {
                    translator.finish(&mut self.out);
                }
            }
            ResponseMode::Error { status } => {
                let status = *status;
                let translated = providers::error_body(schema, status, &self.scrub_credentials(&body));
                self.out = self.scrub_credentials(&translated);
                if providers::refuses_credential(status) {
                    if let Some(state) = &self.state {
                        let mut st = state.borrow_mut();
                        if let Some(r) = st.refused.iter_mut().rev().find(|r| *r.backend == *backend.name) {
                            r.answer = Some(self.out.clone());
                        }
                    }
                }
            }
            ResponseMode::Whole => match self.hints.as_ref().map(|hi| providers::response_body(dialect, hi, &body, now_secs())) {
                Some(Ok(b)) => self.out = b,
                Some(Err(e)) => {
                    h.set_response_header(":status", Some(&e.status.to_string()));
                    self.out = self.scrub_credentials(&e.to_json());
                }
                None => {}
            },
        }
        if buffered {
            h.replace_body(false, &self.out);
            h.set_response_header("content-length", Some(&self.out.len().to_string()));
        } else {
            h.replace_received(false, &self.out);
        }
        BODY_CONTINUE
    }
}
