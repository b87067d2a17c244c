//! Gateway role: runs downstream, before the router. Validates the request, resolves the model to
//! a route and lets Envoy's router pick that route's cluster; answers `/v1/models` itself.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use super::inflight::{self, RequestState, SharedState};
use super::{header, now_secs, send_error, send_json, set_request_header, set_response_header};
use crate::api::chat::parse_chat_request;
use crate::api::embeddings::parse_embeddings_request;
use crate::api::{models, ApiError};
use crate::config::{Gateway, INTERNAL_HEADER_PREFIX, MODEL_HEADER, OP_HEADER, ROUTE_HEADER};
use crate::providers::Operation;
use crate::stream::usage_tap::UsageTap;

pub struct GatewayFilter {
    cfg: Rc<Gateway>,
    /// Set once the request is an API operation whose body must be read.
    op: Option<Operation>,
    stream: bool,
    wants_usage: bool,
    tap: Option<UsageTap>,
    out: Vec<u8>,
    /// `x-request-id` of this request (client's or minted here), the key of its shared state.
    request_id: Option<String>,
    state: Option<SharedState>,
}

impl Drop for GatewayFilter {
    fn drop(&mut self) {
        if let (Some(id), Some(_)) = (&self.request_id, &self.state) {
            inflight::remove(id);
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
            tap: None,
            out: Vec::new(),
            request_id: None,
            state: None,
        }
    }

    fn on_body(&mut self, op: Operation, body: &[u8]) -> Result<(), ApiError> {
        let model = match op {
            Operation::Chat => {
                let req = parse_chat_request(body)?;
                self.stream = req.is_stream();
                self.wants_usage = req.wants_stream_usage();
                req.model
            }
            Operation::Embeddings => parse_embeddings_request(body)?.model,
        };
        let resolved = self.cfg.router.resolve(&model).ok_or_else(|| ApiError::model_not_found(&model))?;
        set_request_header(ROUTE_HEADER, Some(resolved.route));
        set_request_header(MODEL_HEADER, Some(resolved.model));
        set_request_header(OP_HEADER, Some(op.as_str()));
        self.share_state(RequestState::new(resolved.model.to_string(), op));
        // Make Envoy select the route again, now that the route header is set.
        if let Err(e) = hostcalls::call_foreign_function("clear_route_cache", None) {
            log::warn!("switchyard: clear_route_cache failed: {e:?}");
        }
        Ok(())
    }
}

impl GatewayFilter {
    /// Publishes the request's state for its backend attempts, under a request id unique on this
    /// thread (a client-sent id already in flight is replaced).
    fn share_state(&mut self, state: RequestState) {
        let state = Rc::new(std::cell::RefCell::new(state));
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
        self.request_id = Some(id);
        self.state = Some(state);
    }
}

impl Context for GatewayFilter {}

impl HttpContext for GatewayFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let headers = self.get_http_request_headers();
        for (name, _) in &headers {
            if name.starts_with(INTERNAL_HEADER_PREFIX) {
                set_request_header(name, None);
            }
        }
        self.request_id = header(&headers, "x-request-id").filter(|v| !v.is_empty()).map(str::to_string);
        let method = header(&headers, ":method").unwrap_or("");
        let full_path = header(&headers, ":path").unwrap_or("/");
        let path = full_path.split('?').next().unwrap_or(full_path);

        let op = match path.trim_end_matches('/') {
            "/v1/chat/completions" => Some(Operation::Chat),
            "/v1/embeddings" => Some(Operation::Embeddings),
            _ => None,
        };
        match path.trim_end_matches('/') {
            _ if op.is_some() => {
                if method != "POST" {
                    send_json(405, &ApiError::method_not_allowed(method, path, "POST").to_json(), &[("allow", "POST")]);
                    return Action::Pause;
                }
                let declared = header(&headers, "content-length").and_then(|v| v.parse::<usize>().ok());
                if let Some(Err(e)) = declared.map(|n| self.cfg.check_body_size(n)) {
                    send_error(&e);
                    return Action::Pause;
                }
                if end_of_stream {
                    send_error(&ApiError::invalid_request(
                        "We could not parse the JSON body of your request: the body is empty. The API expects a JSON payload.",
                    ));
                    return Action::Pause;
                }
                self.op = op;
                Action::Pause
            }
            "/v1/models" => {
                if method != "GET" {
                    send_json(405, &ApiError::method_not_allowed(method, path, "GET").to_json(), &[("allow", "GET")]);
                } else {
                    send_json(200, &models::model_list_json(self.cfg.router.listed(), now_secs()), &[]);
                }
                Action::Pause
            }
            p if p.starts_with("/v1/models/") => {
                let id = &p["/v1/models/".len()..];
                if method != "GET" {
                    send_json(405, &ApiError::method_not_allowed(method, path, "GET").to_json(), &[("allow", "GET")]);
                } else {
                    match self.cfg.router.owner_of(id) {
                        Some(owner) => send_json(200, &models::model_json(id, owner, now_secs()), &[]),
                        None => send_error(&ApiError::model_not_found(id)),
                    }
                }
                Action::Pause
            }
            _ => {
                send_error(&ApiError::not_found_path(method, path));
                Action::Pause
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(op) = self.op else {
            return Action::Continue;
        };
        if let Err(e) = self.cfg.check_body_size(body_size) {
            self.op = None;
            send_error(&e);
            return Action::Pause;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        match self.on_body(op, &body) {
            Ok(()) => Action::Continue,
            Err(e) => {
                self.op = None;
                send_error(&e);
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
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
        if self.op == Some(Operation::Chat) && self.stream {
            let status = self.get_http_response_header(":status");
            let ctype = self.get_http_response_header("content-type").unwrap_or_default();
            if status.as_deref() == Some("200") && ctype.starts_with("text/event-stream") {
                self.tap = Some(UsageTap::new(self.wants_usage));
            }
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.tap.is_none() {
            return Action::Continue;
        }
        let chunk = if body_size > 0 { self.get_http_response_body(0, body_size).unwrap_or_default() } else { Vec::new() };
        let Some(tap) = self.tap.as_mut() else {
            return Action::Continue;
        };
        self.out.clear();
        tap.push(&chunk, &mut self.out);
        if end_of_stream {
            tap.finish(&mut self.out);
        }
        if let Err(e) = hostcalls::set_buffer(proxy_wasm::types::BufferType::HttpResponseBody, 0, body_size, &self.out) {
            log::warn!("switchyard: cannot replace response body: {e:?}");
        }
        Action::Continue
    }
}
