//! Gateway role through the native ABI (prototype): the same steps as `src/filter/gateway.rs` for
//! the plain path (validate, resolve the model to a route, let the router choose the cluster; watch
//! the answer for usage and time to first token; rewrite Envoy's plain-text errors; telemetry).

use std::cell::RefCell;
use std::rc::Rc;

use super::abi::*;
use super::host::Host;
use super::inflight::{self, RequestState, SharedState};
use super::{now_ms, Config, Role};
use crate::api::chat::{parse_chat_request_with, ResponseSummary, Usage};
use crate::api::embeddings::parse_embeddings_request_with;
use crate::api::error::kind_for_status;
use crate::api::{models, ApiError};
use crate::config::{Gateway, MODEL_HEADER, OP_HEADER, ROUTE_HEADER};
use crate::policy::headers as header_policy;
use crate::providers::Operation;
use crate::stream::usage_tap::UsageTap;
use crate::telemetry::{self, Rejection, RequestRecord};

const MAX_SUMMARY_BYTES: usize = 4 * 1024 * 1024;

enum ResponseMode {
    Ignore,
    Collect,
    Stream(Box<UsageTap>),
    RewriteError,
}

pub struct GatewayFilter {
    cfg: &'static Config,
    op: Option<Operation>,
    stream: bool,
    wants_usage: bool,
    mode: ResponseMode,
    buf: Vec<u8>,
    out: Vec<u8>,
    request_id: Option<String>,
    state: Option<SharedState>,
    start_ms: u64,
    record: RequestRecord,
    usage: Option<Usage>,
    published: bool,
}

impl Drop for GatewayFilter {
    fn drop(&mut self) {
        if let (Some(id), Some(_)) = (&self.request_id, &self.state) {
            inflight::remove(id);
        }
    }
}

impl GatewayFilter {
    pub fn new(cfg: &'static Config) -> Self {
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
        }
    }

    fn gw(&self) -> &'static Gateway {
        match &self.cfg.role {
            Role::Gateway(g) => g,
            // A gateway filter is only made from a gateway configuration.
            _ => unreachable!("gateway filter without a gateway configuration"),
        }
    }

    fn reject(&mut self, h: Host, err: &ApiError, reason: Rejection, extra: &[(&str, &str)]) -> HeadersStatus {
        self.op = None;
        self.record.status = err.status;
        self.record.error_type = Some(err.kind.to_string());
        self.record.error_code = err.code.clone();
        self.record.rejection = Some(reason);
        self.publish_record(h);
        h.send_json(err.status, &err.to_json(), extra);
        HEADERS_STOP_ITERATION
    }

    fn answer(&mut self, h: Host, status: u16, body: &[u8]) -> HeadersStatus {
        self.record.status = status;
        self.publish_record(h);
        h.send_json(status, body, &[]);
        HEADERS_STOP_ITERATION
    }

    fn publish_record(&mut self, h: Host) {
        if self.published {
            return;
        }
        self.published = true;
        self.finish_record();
        if self.gw().publish_log_fields {
            // Same filter-state keys as the wasm build, so the same access-log format reads them.
            for (name, value) in telemetry::log_fields(&self.record) {
                h.set_filter_state(&format!("wasm.switchyard.{name}"), value.as_bytes());
            }
        }
    }

    fn finish_record(&mut self) {
        self.record.duration_ms = now_ms().saturating_sub(self.start_ms);
        if let Some(state) = &self.state {
            let st = state.borrow();
            self.record.attempts = st.attempts;
            self.record.failover = st.failed_over();
            self.record.backend = st.served_backend.as_deref().map(str::to_string);
            self.record.provider = st.served_provider.map(str::to_string);
            if self.record.response_model.is_none() {
                self.record.response_model = st.served_model.clone();
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

    fn share_state(&mut self, h: Host, state: RequestState) {
        let state = Rc::new(RefCell::new(state));
        let mut id = match self.request_id.take() {
            Some(id) => id,
            None => {
                let id = inflight::new_request_id();
                h.set_request_header("x-request-id", Some(&id));
                id
            }
        };
        if !inflight::register(&id, state.clone()) {
            id = inflight::new_request_id();
            h.set_request_header("x-request-id", Some(&id));
            if !inflight::register(&id, state.clone()) {
                return;
            }
        }
        self.record.request_id = id.clone();
        self.request_id = Some(id);
        self.state = Some(state);
    }

    fn on_body(&mut self, h: Host, op: Operation, body: &[u8]) -> Result<(), ApiError> {
        let cfg = self.gw();
        let model = match op {
            Operation::Chat => {
                let req = parse_chat_request_with(body, &cfg.limits)?;
                self.stream = req.is_stream();
                self.wants_usage = req.wants_stream_usage();
                req.model
            }
            Operation::Embeddings => parse_embeddings_request_with(body, &cfg.limits)?.model,
        };
        let resolved = cfg.router.resolve(&model).ok_or_else(|| ApiError::model_not_found(&model))?;
        self.record.requested_model = Some(model.clone());
        if resolved.canary.is_some() || resolved.deadline.is_some() {
            return Err(ApiError::gateway(500, "The native prototype does not serve routes with a canary or a deadline."));
        }
        self.record.route = Some(resolved.route.to_string());
        self.record.model_pattern = resolved.pattern.map(str::to_string);
        h.set_request_header(ROUTE_HEADER, Some(resolved.route));
        h.set_request_header(MODEL_HEADER, Some(resolved.model));
        h.set_request_header(OP_HEADER, Some(op.as_str()));
        let mut state = RequestState::new(resolved.model.to_string(), op);
        state.forbid_floating = resolved.forbid_floating;
        self.share_state(h, state);
        h.clear_route_cache();
        Ok(())
    }

    pub fn on_request_headers(&mut self, h: Host, end_of_stream: bool) -> HeadersStatus {
        self.start_ms = now_ms();
        self.record.start_unix_ms = self.start_ms;
        let cfg = self.gw();
        for (name, _) in h.headers(REQUEST_HEADER) {
            if let Ok(name) = std::str::from_utf8(name) {
                if header_policy::is_internal(name, None) {
                    h.set_request_header(name, None);
                }
            }
        }
        self.request_id = h.header_str(REQUEST_HEADER, "x-request-id").filter(|v| header_policy::usable_request_id(v)).map(str::to_string);
        self.record.request_id = self.request_id.clone().unwrap_or_default();
        let method = h.header_str(REQUEST_HEADER, ":method").unwrap_or("").to_string();
        let full_path = h.header_str(REQUEST_HEADER, ":path").unwrap_or("/").to_string();
        let path = full_path.split('?').next().unwrap_or(&full_path).trim_end_matches('/').to_string();
        let op = match path.as_str() {
            "/v1/chat/completions" => Some(Operation::Chat),
            "/v1/embeddings" => Some(Operation::Embeddings),
            _ => None,
        };
        if let Some(op) = op {
            self.record.operation = op.as_str();
            if method != "POST" {
                return self.reject(h, &ApiError::method_not_allowed(&method, &path, "POST"), Rejection::Validation, &[("allow", "POST")]);
            }
            let declared = h.header_str(REQUEST_HEADER, "content-length").and_then(|v| v.parse::<usize>().ok());
            if let Some(Err(e)) = declared.map(|n| cfg.check_body_size(n)) {
                return self.reject(h, &e, Rejection::Validation, &[]);
            }
            if end_of_stream {
                let e = ApiError::invalid_request("We could not parse the JSON body of your request: the body is empty. The API expects a JSON payload.");
                return self.reject(h, &e, Rejection::Validation, &[]);
            }
            self.op = Some(op);
            return HEADERS_STOP_ITERATION;
        }
        self.record.operation = "models";
        if path == "/v1/models" || path.starts_with("/v1/models/") {
            if method != "GET" {
                return self.reject(h, &ApiError::method_not_allowed(&method, &path, "GET"), Rejection::Validation, &[("allow", "GET")]);
            }
            let now = self.start_ms / 1000;
            if path == "/v1/models" {
                let body = models::model_list_json(cfg.router.listed(), now);
                return self.answer(h, 200, &body);
            }
            let id = &path["/v1/models/".len()..];
            return match cfg.router.owner_of(id) {
                Some(owner) => {
                    let body = models::model_json(id, owner, now);
                    self.answer(h, 200, &body)
                }
                None => self.reject(h, &ApiError::model_not_found(id), Rejection::Validation, &[]),
            };
        }
        self.record.operation = "unknown";
        self.reject(h, &ApiError::not_found_path(&method, &path), Rejection::Validation, &[])
    }

    pub fn on_request_body(&mut self, h: Host, end_of_stream: bool) -> BodyStatus {
        let Some(op) = self.op else { return BODY_CONTINUE };
        let size = unsafe {
            let mut n = envoy_dynamic_module_callback_http_get_body_size(h.0, RECEIVED_REQUEST_BODY);
            if !envoy_dynamic_module_callback_http_received_buffered_request_body(h.0) {
                n += envoy_dynamic_module_callback_http_get_body_size(h.0, BUFFERED_REQUEST_BODY);
            }
            n
        };
        if let Err(e) = self.gw().check_body_size(size) {
            self.reject(h, &e, Rejection::Validation, &[]);
            return BODY_STOP_AND_BUFFER;
        }
        if !end_of_stream {
            return BODY_STOP_AND_BUFFER;
        }
        let body = h.body(true);
        match self.on_body(h, op, &body) {
            Ok(()) => {
                self.record.stream = self.stream;
                BODY_CONTINUE
            }
            Err(e) => {
                self.reject(h, &e, Rejection::Validation, &[]);
                BODY_STOP_AND_BUFFER
            }
        }
    }

    pub fn on_response_headers(&mut self, h: Host, end_of_stream: bool) -> HeadersStatus {
        if self.op.is_none() {
            return HEADERS_CONTINUE;
        }
        let cfg = self.gw();
        self.record.ttfb_ms = Some(now_ms().saturating_sub(self.start_ms));
        let status: u16 = h.header_str(RESPONSE_HEADER, ":status").and_then(|s| s.parse().ok()).unwrap_or(0);
        self.record.status = status;
        for (name, _) in h.headers(RESPONSE_HEADER) {
            if let Ok(name) = std::str::from_utf8(name) {
                if header_policy::withheld_from_client(name, false) {
                    h.set_response_header(name, None);
                }
            }
        }
        if let (true, Some(state)) = (cfg.expose_served_by, &self.state) {
            let st = state.borrow();
            if let Some(b) = &st.served_backend {
                h.set_response_header("x-switchyard-backend", Some(b));
            }
            if let Some(m) = &st.served_model {
                h.set_response_header("x-switchyard-model", Some(m));
            }
            if st.attempts > 0 {
                h.set_response_header("x-switchyard-attempts", Some(&st.attempts.to_string()));
            }
        }
        let ctype = h.header_str(RESPONSE_HEADER, "content-type").unwrap_or_default();
        self.mode = if status >= 400 && !ctype.starts_with("application/json") {
            ResponseMode::RewriteError
        } else if self.stream && status == 200 && ctype.starts_with("text/event-stream") {
            h.set_response_header("content-length", None);
            ResponseMode::Stream(Box::new(UsageTap::new(self.wants_usage)))
        } else {
            ResponseMode::Collect
        };
        let action = match self.mode {
            ResponseMode::RewriteError if end_of_stream => {
                let e = ApiError::new(status, kind_for_status(status), format!("The gateway could not get an answer from the provider (HTTP {status})."))
                    .with_code("upstream_unavailable");
                self.record.error_type = Some(e.kind.to_string());
                self.record.error_code = e.code.clone();
                h.set_response_header("content-type", Some("application/json"));
                HEADERS_CONTINUE
            }
            ResponseMode::RewriteError => {
                h.set_response_header("content-type", Some("application/json"));
                HEADERS_STOP_ITERATION
            }
            _ => HEADERS_CONTINUE,
        };
        if end_of_stream {
            self.publish_record(h);
        }
        action
    }

    pub fn on_response_body(&mut self, h: Host, end_of_stream: bool) -> BodyStatus {
        let action = match self.mode {
            ResponseMode::Ignore => return BODY_CONTINUE,
            ResponseMode::Collect => {
                let chunk = h.received(false);
                if self.buf.len() + chunk.len() <= MAX_SUMMARY_BYTES {
                    self.buf.extend_from_slice(&chunk);
                }
                if end_of_stream {
                    let summary = ResponseSummary::parse(&self.buf);
                    self.buf = Vec::new();
                    self.record.response_model = summary.model;
                    self.usage = summary.usage;
                    if let Some(e) = summary.error {
                        self.record.error_type = e.kind;
                        self.record.error_code = e.code.map(|c| c.as_str().map(str::to_string).unwrap_or_else(|| c.to_string()));
                    }
                }
                BODY_CONTINUE
            }
            ResponseMode::RewriteError => {
                if !end_of_stream {
                    return BODY_STOP_AND_BUFFER;
                }
                let text = h.body(false);
                let status = self.record.status;
                let detail = String::from_utf8_lossy(&text);
                let e = ApiError::new(status, kind_for_status(status), format!("The gateway could not get an answer from the provider: {}", detail.trim()))
                    .with_code("upstream_unavailable");
                self.record.error_type = Some(e.kind.to_string());
                self.record.error_code = e.code.clone();
                let body = e.to_json();
                h.replace_body(false, &body);
                h.set_response_header("content-length", Some(&body.len().to_string()));
                BODY_CONTINUE
            }
            ResponseMode::Stream(ref mut tap) => {
                let had_token = tap.first_token_seen();
                let chunk = h.received(false);
                self.out.clear();
                tap.push(&chunk, &mut self.out);
                if end_of_stream {
                    tap.finish(&mut self.out);
                }
                if !had_token && tap.first_token_seen() {
                    self.record.ttft_ms = Some(now_ms().saturating_sub(self.start_ms));
                }
                if end_of_stream {
                    self.usage = tap.usage().cloned();
                    self.record.response_model = tap.model().map(str::to_string);
                    if tap.saw_error() || !tap.completed() {
                        self.record.error_type = Some("stream_error".to_string());
                    }
                }
                if self.out != chunk {
                    h.replace_received(false, &self.out);
                }
                BODY_CONTINUE
            }
        };
        if end_of_stream {
            self.publish_record(h);
        }
        action
    }

    /// Envoy's end of the stream (before access logs): what `on_log` does in the wasm build.
    pub fn on_stream_complete(&mut self, h: Host) {
        if !self.published {
            if let ResponseMode::Stream(tap) = &self.mode {
                if self.usage.is_none() {
                    self.usage = tap.usage().cloned();
                }
                if self.record.response_model.is_none() {
                    self.record.response_model = tap.model().map(str::to_string);
                }
                if tap.saw_error() {
                    self.record.error_type.get_or_insert_with(|| "stream_error".to_string());
                } else if !tap.completed() {
                    let details = h.response_code_details();
                    let kind = if details.starts_with("upstream") || details.contains("timeout") { "stream_error" } else { "client_closed" };
                    self.record.error_type.get_or_insert_with(|| kind.to_string());
                }
            }
            if self.record.status == 0 {
                self.record.status = 499;
                self.record.error_type.get_or_insert_with(|| "client_closed".to_string());
            }
            self.publish_record(h);
        }
        let cfg = self.gw();
        if cfg.emit_metrics {
            self.cfg.emit_metrics(h, &telemetry::metric_updates(&self.record, cfg.label_options));
        }
    }
}
