//! PROTOTYPE: Switchyard as an Envoy *dynamic module* (a native shared library loaded in-process
//! through Envoy's C ABI, `envoy.extensions.filters.http.dynamic_modules`), built with
//! `cargo build --profile native --features native --lib` for the host (never for wasm32).
//!
//! A second thin glue over the same core as `src/filter/` (the proxy-wasm glue): same configuration
//! JSON, same translations, same telemetry record. It serves the gateway and backend roles for the
//! plain path only — configurations with `auth`, routing rules, capabilities, canaries, deadlines,
//! `fastest`, guardrails, the answer cache or sampling are refused at load (see `unsupported`). Measured by `scripts/bench`
//! (`sw-native-*` rows); see bench/analysis.md for the numbers and why this is not a product target.
//!
//! Threads: Envoy calls a filter config's hooks on the main thread and each stream's hooks on its
//! worker thread. The configuration is read-only after load and shared by reference; the per-request
//! state the two roles share (`inflight`, the same file as the wasm glue's) is thread-local, as both
//! roles of a request run on one worker. Metrics are defined at load (Envoy freezes them after).

mod abi;
mod backend;
mod gateway;
mod host;
#[path = "../filter/inflight.rs"]
#[allow(dead_code)]
mod inflight;

use std::collections::HashMap;
use std::ffi::c_void;

use abi::*;
use host::Host;

use crate::config::{AwsCredentials, Backend, Gateway, PluginConfig, Schema};

/// ABI version this module is written against (Envoy 1.40 speaks v0.2.x and loads v0.1.x with a
/// warning: the header promises v0.1 modules keep working with v0.2).
static ABI_VERSION: &[u8] = b"v0.1.0\0";

pub(crate) struct BackendRuntime {
    pub name: String,
    pub cfg: Backend,
    pub credential: Option<String>,
    pub aws: Option<AwsCredentials>,
}

pub(crate) struct Backends {
    pub by_name: HashMap<String, BackendRuntime>,
    pub max_response_body_bytes: usize,
}

pub(crate) enum Role {
    Gateway(Gateway),
    Backend(Backends),
    Noop,
}

pub(crate) struct Config {
    pub role: Role,
    /// Metric `kind:family:label,…` → Envoy's metric id (defined at load: `define_metrics`).
    metrics: HashMap<String, usize>,
}

// The configuration is immutable once loaded and only read from the workers. What makes `Gateway`
// non-`Sync` is its capability table (`Rc`) and the policy's caches, both refused in this prototype.
unsafe impl Sync for Config {}
unsafe impl Send for Config {}

fn unsupported(g: &Gateway) -> Option<&'static str> {
    if g.policy.is_some() {
        return Some("auth (keys, limits, budgets)");
    }
    if g.routing.is_some() {
        return Some("routing rules");
    }
    if g.capabilities.is_some() {
        return Some("capabilities");
    }
    if !g.latency_tracked.is_empty() {
        return Some("the fastest policy");
    }
    if g.guardrails.is_some() {
        // Never silently ignored: a configuration that asks for redaction must get it.
        return Some("guardrails");
    }
    None
}

fn load(bytes: &[u8]) -> Result<Role, String> {
    match PluginConfig::parse(bytes)? {
        PluginConfig::Gateway(g) => {
            let g = Gateway::new(g)?;
            if let Some(what) = unsupported(&g) {
                return Err(format!("the native prototype does not support {what}; use switchyard.wasm"));
            }
            Ok(Role::Gateway(g))
        }
        PluginConfig::Noop => Ok(Role::Noop),
        PluginConfig::Backend(b) => {
            let mut by_name = HashMap::new();
            for (name, cfg) in b.backends {
                let credential = cfg.credential.as_ref().and_then(|c| match std::env::var(&c.env) {
                    Ok(secret) if !secret.is_empty() => Some(format!("{}{}", cfg.credential_prefix(), secret)),
                    _ => {
                        log::warn!("switchyard: backend {name}: no credential: environment variable {} is empty", c.env);
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
                    log::warn!("switchyard: backend {name}: no AWS keys and no Bedrock API key in the environment");
                }
                by_name.insert(name.clone(), BackendRuntime { name, cfg, credential, aws });
            }
            Ok(Role::Backend(Backends { by_name, max_response_body_bytes: b.max_response_body_bytes }))
        }
    }
}

/// `family;k=v;…` → (metric key `kind:family:k,…`, label values).
fn split_stat(kind: crate::telemetry::MetricKind, name: &str) -> (String, Vec<&str>) {
    use crate::telemetry::MetricKind;
    let mut parts = name.split(';');
    let family = parts.next().unwrap_or_default();
    let mut names: Vec<&str> = Vec::new();
    let mut values: Vec<&str> = Vec::new();
    for p in parts {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        names.push(k);
        values.push(v);
    }
    let kind = match kind {
        MetricKind::Counter => "c",
        MetricKind::Histogram => "h",
        MetricKind::Gauge => "g",
    };
    (format!("{kind}:{family}:{}", names.join(",")), values)
}

/// Envoy freezes a dynamic module's metric definitions once its configuration is loaded, so every
/// family the gateway can emit is defined here, with its label names: those of a synthetic record
/// that takes every branch of `telemetry::metric_updates`.
fn define_metrics(envoy: FilterConfigEnvoyPtr, opts: crate::telemetry::LabelOptions) -> HashMap<String, usize> {
    use crate::telemetry::{DeadlineRecord, MetricKind, RequestRecord};
    let r = RequestRecord {
        rejection: Some(crate::telemetry::Rejection::Validation),
        failover: true,
        usage_known: true,
        input_tokens: 2,
        output_tokens: 3,
        cached_input_tokens: 1,
        cache_creation_tokens: 1,
        reasoning_tokens: 1,
        cost_micros: Some(1),
        deadline: Some(DeadlineRecord { fired: 1, winner: Some(1), winner_ttft_ms: Some(1), ..Default::default() }),
        attempts: 1,
        duration_ms: 5,
        ttft_ms: Some(1),
        ..Default::default()
    };
    let mut ids = HashMap::new();
    for u in crate::telemetry::metric_updates(&r, opts) {
        let (key, _) = split_stat(u.kind, &u.name);
        if ids.contains_key(&key) {
            continue;
        }
        let mut parts = u.name.split(';');
        let family = parts.next().unwrap_or_default();
        let mut label_names: Vec<ModuleBuffer> = parts.map(|p| ModuleBuffer::of(p.split_once('=').map_or(p, |(k, _)| k).as_bytes())).collect();
        let name = ModuleBuffer::of(family.as_bytes());
        let mut id = 0usize;
        let res = unsafe {
            match u.kind {
                MetricKind::Counter => envoy_dynamic_module_callback_http_filter_config_define_counter(envoy, name, label_names.as_mut_ptr(), label_names.len(), &mut id),
                MetricKind::Histogram => envoy_dynamic_module_callback_http_filter_config_define_histogram(envoy, name, label_names.as_mut_ptr(), label_names.len(), &mut id),
                MetricKind::Gauge => envoy_dynamic_module_callback_http_filter_config_define_gauge(envoy, name, label_names.as_mut_ptr(), label_names.len(), &mut id),
            }
        };
        if res == METRICS_SUCCESS {
            ids.insert(key, id);
        } else {
            log::warn!("switchyard: cannot define metric {family} (result {res})");
        }
    }
    ids
}

impl Config {
    /// Applies metric updates (`telemetry::metric_updates`): each `family;k=v;…` name is an Envoy
    /// metric with labels, defined when the configuration loaded (`define_metrics`).
    pub fn emit_metrics(&self, host: Host, updates: &[crate::telemetry::MetricUpdate]) {
        use crate::telemetry::MetricKind;
        for u in updates {
            let (key, values) = split_stat(u.kind, &u.name);
            let Some(&id) = self.metrics.get(&key) else { continue };
            let mut values: Vec<ModuleBuffer> = values.iter().map(|v| ModuleBuffer::of(v.as_bytes())).collect();
            unsafe {
                match u.kind {
                    MetricKind::Counter => envoy_dynamic_module_callback_http_filter_increment_counter(host.0, id, values.as_mut_ptr(), values.len(), u.value),
                    MetricKind::Histogram => envoy_dynamic_module_callback_http_filter_record_histogram_value(host.0, id, values.as_mut_ptr(), values.len(), u.value),
                    MetricKind::Gauge => envoy_dynamic_module_callback_http_filter_set_gauge(host.0, id, values.as_mut_ptr(), values.len(), u.value),
                };
            }
        }
    }
}

/// Wall-clock milliseconds (no host call needed natively).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub(crate) fn now_secs() -> u64 {
    now_ms() / 1000
}

enum Filter {
    Gateway(gateway::GatewayFilter),
    Backend(backend::BackendFilter),
    Noop,
}

struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Info
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!("[switchyard native] {} {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

static LOGGER: StderrLog = StderrLog;

/// Runs a hook; a panic (a bug: nothing untrusted may cause one) is contained and logged instead
/// of unwinding into Envoy.
fn guard<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => {
            log::error!("switchyard: a hook panicked; continuing the stream unchanged");
            fallback
        }
    }
}

/// # Safety
/// `ptr` is a filter this module created and Envoy has not destroyed.
unsafe fn filter<'a>(ptr: FilterModulePtr) -> &'a mut Filter {
    &mut *(ptr as *mut Filter)
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> AbiVersionPtr {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
    ABI_VERSION.as_ptr() as AbiVersionPtr
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(envoy: FilterConfigEnvoyPtr, _name: EnvoyBuffer, config: EnvoyBuffer) -> FilterConfigModulePtr {
    let bytes = config.as_slice();
    guard(std::ptr::null(), || match load(bytes) {
        Ok(role) => {
            let metrics = match &role {
                Role::Gateway(g) if g.emit_metrics => define_metrics(envoy, g.label_options),
                _ => HashMap::new(),
            };
            Box::into_raw(Box::new(Config { role, metrics })) as FilterConfigModulePtr
        }
        Err(e) => {
            log::error!("switchyard: {e}");
            std::ptr::null()
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(ptr: FilterConfigModulePtr) {
    if !ptr.is_null() {
        drop(Box::from_raw(ptr as *mut Config));
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(config: FilterConfigModulePtr, _envoy: FilterEnvoyPtr) -> FilterModulePtr {
    if config.is_null() {
        return std::ptr::null();
    }
    // The configuration outlives its filters (Envoy destroys it after the last one).
    let cfg: &'static Config = &*(config as *const Config);
    let f = match &cfg.role {
        Role::Gateway(_) => Filter::Gateway(gateway::GatewayFilter::new(cfg)),
        Role::Backend(_) => Filter::Backend(backend::BackendFilter::new(cfg)),
        Role::Noop => Filter::Noop,
    };
    Box::into_raw(Box::new(f)) as FilterModulePtr
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(ptr: FilterModulePtr) {
    if !ptr.is_null() {
        let f = Box::from_raw(ptr as *mut Filter);
        guard((), move || drop(f));
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(envoy: FilterEnvoyPtr, ptr: FilterModulePtr, end: bool) -> HeadersStatus {
    let h = Host(envoy);
    guard(HEADERS_CONTINUE, || match filter(ptr) {
        Filter::Gateway(f) => f.on_request_headers(h, end),
        Filter::Backend(f) => f.on_request_headers(h, end),
        Filter::Noop => HEADERS_CONTINUE,
    })
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(envoy: FilterEnvoyPtr, ptr: FilterModulePtr, end: bool) -> BodyStatus {
    let h = Host(envoy);
    guard(BODY_CONTINUE, || match filter(ptr) {
        Filter::Gateway(f) => f.on_request_body(h, end),
        Filter::Backend(f) => f.on_request_body(h, end),
        Filter::Noop => BODY_CONTINUE,
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(_envoy: FilterEnvoyPtr, _ptr: FilterModulePtr) -> TrailersStatus {
    TRAILERS_CONTINUE
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(envoy: FilterEnvoyPtr, ptr: FilterModulePtr, end: bool) -> HeadersStatus {
    let h = Host(envoy);
    guard(HEADERS_CONTINUE, || match filter(ptr) {
        Filter::Gateway(f) => f.on_response_headers(h, end),
        Filter::Backend(f) => f.on_response_headers(h, end),
        Filter::Noop => HEADERS_CONTINUE,
    })
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_body(envoy: FilterEnvoyPtr, ptr: FilterModulePtr, end: bool) -> BodyStatus {
    let h = Host(envoy);
    guard(BODY_CONTINUE, || match filter(ptr) {
        Filter::Gateway(f) => f.on_response_body(h, end),
        Filter::Backend(f) => f.on_response_body(h, end),
        Filter::Noop => BODY_CONTINUE,
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(_envoy: FilterEnvoyPtr, _ptr: FilterModulePtr) -> TrailersStatus {
    TRAILERS_CONTINUE
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(envoy: FilterEnvoyPtr, ptr: FilterModulePtr) {
    let h = Host(envoy);
    guard((), || {
        if let Filter::Gateway(f) = filter(ptr) {
            f.on_stream_complete(h)
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_local_reply(
    _envoy: FilterEnvoyPtr,
    _ptr: FilterModulePtr,
    _code: u32,
    _details: EnvoyBuffer,
    _reset_imminent: bool,
) -> LocalReplyStatus {
    LOCAL_REPLY_CONTINUE
}

// Hooks this module never triggers (no per-route config, scheduler, callouts or watermarks), defined
// because Envoy resolves them when it loads an HTTP filter.

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(_name: EnvoyBuffer, _config: EnvoyBuffer) -> PerRouteConfigModulePtr {
    std::ptr::null()
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(_ptr: PerRouteConfigModulePtr) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(_e: FilterEnvoyPtr, _p: FilterModulePtr, _id: u64) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(_e: FilterConfigEnvoyPtr, _p: FilterConfigModulePtr, _id: u64) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _e: FilterEnvoyPtr,
    _p: FilterModulePtr,
    _id: u64,
    _result: i32,
    _headers: *mut EnvoyHttpHeader,
    _headers_size: usize,
    _chunks: *mut EnvoyBuffer,
    _chunks_size: usize,
) {
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _e: FilterConfigEnvoyPtr,
    _p: FilterConfigModulePtr,
    _id: u64,
    _result: i32,
    _headers: *mut EnvoyHttpHeader,
    _headers_size: usize,
    _chunks: *mut EnvoyBuffer,
    _chunks_size: usize,
) {
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(_e: FilterEnvoyPtr, _p: FilterModulePtr, _id: u64, _h: *mut EnvoyHttpHeader, _n: usize, _end: bool) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(_e: FilterEnvoyPtr, _p: FilterModulePtr, _id: u64, _d: *const EnvoyBuffer, _n: usize, _end: bool) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(_e: FilterEnvoyPtr, _p: FilterModulePtr, _id: u64, _t: *mut EnvoyHttpHeader, _n: usize) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(_e: FilterEnvoyPtr, _p: FilterModulePtr, _id: u64) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(_e: FilterEnvoyPtr, _p: FilterModulePtr, _id: u64, _reason: i32) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_headers(_e: FilterConfigEnvoyPtr, _p: FilterConfigModulePtr, _id: u64, _h: *mut EnvoyHttpHeader, _n: usize, _end: bool) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_data(_e: FilterConfigEnvoyPtr, _p: FilterConfigModulePtr, _id: u64, _d: *const EnvoyBuffer, _n: usize, _end: bool) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_trailers(_e: FilterConfigEnvoyPtr, _p: FilterConfigModulePtr, _id: u64, _t: *mut EnvoyHttpHeader, _n: usize) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_complete(_e: FilterConfigEnvoyPtr, _p: FilterConfigModulePtr, _id: u64) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_reset(_e: FilterConfigEnvoyPtr, _p: FilterConfigModulePtr, _id: u64, _reason: i32) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(_e: FilterEnvoyPtr, _p: FilterModulePtr) {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(_e: FilterEnvoyPtr, _p: FilterModulePtr) {}

#[allow(dead_code)]
fn _assert_ptr_sizes() {
    let _: *mut c_void = std::ptr::null_mut();
}
