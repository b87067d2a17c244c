//! The only code that talks to Envoy. It moves bytes between the host and the plain-Rust logic in
//! the rest of the crate; decisions live there, not here.

mod backend;
mod gateway;
mod inflight;
mod noop;

use std::collections::HashMap;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel, MapType, MetricType};

use crate::api::ApiError;
use crate::config::{AwsCredentials, Backend, Gateway, PluginConfig, Schema};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { role: None, sink_calls: HashMap::new() }) });
}}

/// What one plugin instance is, per its configuration.
enum Role {
    Gateway(Rc<Gateway>),
    Backend(Rc<Backends>),
    /// Pass-through (benchmarks: the floor any wasm filter pays).
    Noop,
}

/// Backends with their credentials read once, at configuration time.
pub(crate) struct Backends {
    by_name: HashMap<String, Rc<BackendRuntime>>,
    /// Largest non-stream answer held (`max_response_body_bytes`).
    max_response_body_bytes: usize,
}

impl Backends {
    /// Whether `authority` is the `host` of a configured backend (ASCII case-insensitive).
    pub(crate) fn is_backend_host(&self, authority: &str) -> bool {
        self.by_name.values().any(|b| b.cfg.host.as_deref().is_some_and(|h| h.eq_ignore_ascii_case(authority)))
    }
}

pub(crate) struct BackendRuntime {
    pub name: String,
    pub cfg: Backend,
    /// The full credential header value (prefix + secret), if the environment provided one.
    pub credential: Option<String>,
    /// Bedrock: AWS keys for SigV4, if the environment provided them (they win over `credential`).
    pub aws: Option<AwsCredentials>,
}

struct Root {
    role: Option<Role>,
    /// Quality-sampling sink calls in flight: token → samples it carries.
    sink_calls: HashMap<u32, usize>,
}

impl Context for Root {
    fn on_http_call_response(&mut self, token_id: u32, _num_headers: usize, _body_size: usize, _num_trailers: usize) {
        let Some(n) = self.sink_calls.remove(&token_id) else { return };
        let status = self
            .get_http_call_response_header(":status")
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        let ok = (200..300).contains(&status);
        if !ok {
            log::debug!("switchyard: quality sink answered {status} for {n} samples");
        }
        let metrics = matches!(&self.role, Some(Role::Gateway(g)) if g.emit_metrics);
        if metrics {
            let name = if ok { crate::telemetry::SAMPLES_DELIVERED } else { crate::telemetry::SINK_FAILURES };
            emit_metrics(&[crate::telemetry::MetricUpdate { kind: crate::telemetry::MetricKind::Counter, name: name.to_string(), value: n as u64 }]);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let parsed = PluginConfig::parse(&bytes).and_then(|cfg| match cfg {
            PluginConfig::Gateway(g) => Gateway::new(g).map(|g| {
                if let Some(policy) = &g.policy {
                    // Create every key's state up front: proxy-wasm's CAS cannot guard a first write.
                    policy.prime(&EnvoyStore);
                }
                Role::Gateway(Rc::new(g))
            }),
            PluginConfig::Noop => Ok(Role::Noop),
            PluginConfig::Backend(b) => {
                let mut by_name = HashMap::new();
                for (name, cfg) in b.backends {
                    let credential = cfg.credential.as_ref().and_then(|c| match std::env::var(&c.env) {
                        Ok(secret) if !secret.is_empty() => Some(format!("{}{}", cfg.credential_prefix(), secret)),
                        _ => {
                            log::warn!(
                                "switchyard: backend {name}: no credential: environment variable {} is empty in the VM (set it in Envoy's environment and list it in vm_config.environment_variables.host_env_keys); requests to this backend go without one",
                                c.env
                            );
                            None
                        }
                    });
                    let aws = match cfg.load_aws_credentials(|k| std::env::var(k).ok()) {
                        Ok(aws) => aws,
                        Err(e) => {
                            log::warn!("switchyard: backend {name}: {e}; requests are not SigV4-signed");
                            None
                        }
                    };
                    if cfg.schema == Schema::Bedrock && aws.is_none() && credential.is_none() {
                        log::warn!("switchyard: backend {name}: no AWS keys and no Bedrock API key in the environment; requests go unauthenticated");
                    }
                    by_name.insert(name.clone(), Rc::new(BackendRuntime { name, cfg, credential, aws }));
                }
                Ok(Role::Backend(Rc::new(Backends { by_name, max_response_body_bytes: b.max_response_body_bytes })))
            }
        });
        match parsed {
            Ok(role) => {
                if let Role::Gateway(g) = &role {
                    if let Some(s) = &g.sampling {
                        // Samples are sent from the root context on a timer: never from a request.
                        self.set_tick_period(std::time::Duration::from_millis(u64::from(s.flush_interval_ms)));
                    }
                }
                self.role = Some(role);
                true
            }
            Err(e) => {
                log::error!("switchyard: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        match &self.role {
            Some(Role::Gateway(g)) => Some(Box::new(gateway::GatewayFilter::new(g.clone()))),
            Some(Role::Backend(b)) => Some(Box::new(backend::BackendFilter::new(b.clone()))),
            Some(Role::Noop) => Some(Box::new(noop::NoopFilter)),
            None => None,
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn on_tick(&mut self) {
        if let Some(Role::Gateway(g)) = &self.role {
            if let Some(s) = g.sampling.clone() {
                self.flush_samples(&s, g.emit_metrics);
            }
        }
    }
}

thread_local! {
    /// Quality samples this worker has not sent yet (`crate::cache::sample`).
    static SAMPLES: std::cell::RefCell<crate::cache::sample::SampleQueue> = std::cell::RefCell::new(Default::default());
}

/// Queues a sample for the root context to send; false (dropped) when the queue is full.
fn publish_queue_sample(line: Vec<u8>, cfg: &crate::cache::sample::SamplingConfig) -> bool {
    SAMPLES.with(|q| q.borrow_mut().push(line, cfg))
}

impl Root {
    /// Sends what the queue holds, a batch per sink request (a few per tick). A refused dispatch
    /// (unknown cluster) loses its samples, counted as sink failures.
    fn flush_samples(&mut self, s: &crate::cache::sample::SamplingConfig, metrics: bool) {
        use crate::telemetry::{SINK_FAILURES, SAMPLES_DROPPED};
        let mut failed = 0u64;
        let mut dropped = 0u64;
        for _ in 0..4 {
            let Some((body, n)) = SAMPLES.with(|q| q.borrow_mut().drain_batch(s)) else { break };
            if self.sink_calls.len() >= 64 {
                // The sink is not keeping up: shed instead of piling up calls.
                dropped += n as u64;
                continue;
            }
            let headers = vec![(":method", "POST"), (":path", s.path()), (":authority", s.authority()), ("content-type", s.content_type())];
            match self.dispatch_http_call(&s.cluster, headers, Some(&body), vec![], std::time::Duration::from_millis(u64::from(s.timeout_ms))) {
                Ok(token) => {
                    self.sink_calls.insert(token, n);
                }
                Err(e) => {
                    log::debug!("switchyard: quality sink {}: dispatch failed: {e:?}", s.cluster);
                    failed += n as u64;
                }
            }
        }
        if metrics {
            let mut u = Vec::new();
            if failed > 0 {
                u.push(crate::telemetry::MetricUpdate { kind: crate::telemetry::MetricKind::Counter, name: SINK_FAILURES.to_string(), value: failed });
            }
            if dropped > 0 {
                u.push(crate::telemetry::MetricUpdate { kind: crate::telemetry::MetricKind::Counter, name: SAMPLES_DROPPED.to_string(), value: dropped });
            }
            emit_metrics(&u);
        }
    }
}

// Small wrappers over hostcalls that log instead of panicking: a failed hostcall must never take
// the VM (and every request it serves) down.

fn set_request_header(name: &str, value: Option<&str>) {
    if let Err(e) = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value) {
        log::warn!("switchyard: cannot set request header {name}: {e:?}");
    }
}

fn set_response_header(name: &str, value: Option<&str>) {
    if let Err(e) = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, value) {
        log::warn!("switchyard: cannot set response header {name}: {e:?}");
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Answers locally with an OpenAI-shaped error.
fn send_error(err: &ApiError) {
    send_json(err.status, &err.to_json(), &[]);
}

fn send_json(status: u16, body: &[u8], extra: &[(&str, &str)]) {
    let mut headers = vec![("content-type", "application/json")];
    headers.extend_from_slice(extra);
    if let Err(e) = hostcalls::send_http_response(status as u32, headers, Some(body)) {
        log::warn!("switchyard: cannot send local response: {e:?}");
    }
}

/// proxy-wasm shared data (one store per VM id, shared by every worker), for the policy's state.
pub(crate) struct EnvoyStore;

impl crate::policy::store::SharedStore for EnvoyStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, u32) {
        match hostcalls::get_shared_data(key) {
            Ok((value, cas)) => (value, cas.unwrap_or(0)),
            Err(_) => (None, 0),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), crate::policy::store::CasMismatch> {
        let cas = if cas == 0 { None } else { Some(cas) };
        hostcalls::set_shared_data(key, Some(value), cas).map_err(|_| crate::policy::store::CasMismatch)
    }
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

thread_local! {
    /// Stat name → metric id. Each name is defined once per VM, then only incremented.
    static METRICS: std::cell::RefCell<HashMap<String, u32>> = std::cell::RefCell::new(HashMap::new());
}

fn emit_metrics(updates: &[crate::telemetry::MetricUpdate]) {
    use crate::telemetry::MetricKind;
    METRICS.with(|cache| {
        let mut cache = cache.borrow_mut();
        for u in updates {
            let id = match cache.get(&u.name) {
                Some(id) => *id,
                None => {
                    let ty = match u.kind {
                        MetricKind::Counter => MetricType::Counter,
                        MetricKind::Histogram => MetricType::Histogram,
                        MetricKind::Gauge => MetricType::Gauge,
                    };
                    match hostcalls::define_metric(ty, &u.name) {
                        Ok(id) => {
                            cache.insert(u.name.clone(), id);
                            id
                        }
                        Err(e) => {
                            log::warn!("switchyard: cannot define metric {}: {e:?}", u.name);
                            continue;
                        }
                    }
                }
            };
            let res = match u.kind {
                MetricKind::Counter => hostcalls::increment_metric(id, u.value.min(i64::MAX as u64) as i64),
                MetricKind::Histogram | MetricKind::Gauge => hostcalls::record_metric(id, u.value),
            };
            if let Err(e) = res {
                log::warn!("switchyard: cannot update metric {}: {e:?}", u.name);
            }
        }
    });
}

thread_local! {
    static INFLIGHT_GAUGE: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

/// Moves the in-flight gauge (`telemetry::INFLIGHT`) by `delta`; every worker adds to one stat.
fn adjust_inflight_gauge(delta: i64) {
    INFLIGHT_GAUGE.with(|id| {
        let metric = match id.get() {
            Some(m) => m,
            None => match hostcalls::define_metric(MetricType::Gauge, crate::telemetry::INFLIGHT) {
                Ok(m) => {
                    id.set(Some(m));
                    m
                }
                Err(e) => {
                    log::warn!("switchyard: cannot define metric {}: {e:?}", crate::telemetry::INFLIGHT);
                    return;
                }
            },
        };
        if let Err(e) = hostcalls::increment_metric(metric, delta) {
            log::warn!("switchyard: cannot update metric {}: {e:?}", crate::telemetry::INFLIGHT);
        }
    });
}

/// Access-log fields as filter state `wasm.switchyard.<name>` (see `telemetry::log_fields`).
fn publish_log_fields(fields: &[(&'static str, String)]) {
    for (name, value) in fields {
        let key = format!("switchyard.{name}");
        if let Err(e) = hostcalls::set_property(vec![key.as_str()], Some(value.as_bytes())) {
            log::debug!("switchyard: cannot set property {key}: {e:?}");
        }
    }
}

fn now_secs() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
