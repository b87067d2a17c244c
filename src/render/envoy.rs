//! `switchyard render FILE --target envoy`: a complete Envoy bootstrap from a gateway file —
//! listener, HTTP connection manager with the gateway filter and the access log, one route and one
//! cluster per route (endpoints by priority, retries across priorities, outlier detection, circuit
//! breakers, TLS with SNI and SAN checks per provider, the backend upstream filter), stats tags.

use super::yaml::{json_plugin, map, strs, Node};
use super::{GatewayFile, Module, RouteDef};

pub const ROUTE_PREFIX: &str = "route_";
const WASM: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";
/// The cluster a remote module is fetched from.
pub const MODULE_CLUSTER: &str = "switchyard_module";

/// Labels the filter encodes as `;label=value` in stat names: one list, the filter's own.
pub const STAT_TAGS: &[&str] = crate::telemetry::STATS_TAG_LABELS;

/// The access log's JSON fields beyond Envoy's own: the gateway's filter state.
pub const LOG_FIELDS: &[&str] = &[
    "request_id",
    "start_time_ms",
    "operation",
    "key_id",
    "team",
    "route",
    "requested_model",
    "response_model",
    "backend",
    "provider",
    "attempts",
    "failover",
    "status",
    "error_type",
    "error_code",
    "rejection",
    "stream",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_creation_tokens",
    "reasoning_tokens",
    "cost_micros",
    "duration_ms",
    "ttfb_ms",
    "ttft_ms",
    // Routing (README "Routing"): published only for requests that use it, null otherwise.
    "routing_rule",
    "canary_arm",
    "skipped_candidates",
    "first_token_timeout_ms",
    "hedge",
    "deadlines_fired",
    "winner_attempt",
    "winner_ttft_ms",
];


pub fn stats_tags() -> Node {
    Node::List(
        STAT_TAGS.iter().map(|t| map([("tag_name", (*t).into()), ("regex", format!("(;{t}=([^;]*))").into())])).collect(),
    )
}

pub fn vm_config(f: &GatewayFile) -> Node {
    let code = match &f.module {
        Module::File(path) => map([("local", map([("filename", path.into())]))]),
        Module::Remote { url, sha256 } => map([(
            "remote",
            map([
                ("http_uri", map([("uri", url.into()), ("cluster", MODULE_CLUSTER.into()), ("timeout", "10s".into())])),
                ("sha256", sha256.into()),
                // Fetched once at start; a failed fetch is retried before the listener comes up.
                ("retry_policy", map([("num_retries", 3u32.into())])),
            ]),
        )]),
        // Envoy cannot pull an image (`--target envoy` refuses it): only istio-agent's rewrite
        // of this remote source into a local file makes it loadable (src/render/istio.rs).
        Module::Image { .. } => agent_fetched_code(f).unwrap_or(Node::Null),
    };
    vm_config_with_code(f, code)
}

/// A `vm_config` with the given `code`: the same VM settings in every rendering.
pub fn vm_config_with_code(f: &GatewayFile, code: Node) -> Node {
    map([
        ("vm_id", (&f.vm_id).into()),
        ("runtime", "envoy.wasm.runtime.v8".into()),
        ("code", code),
        ("environment_variables", map([("host_env_keys", strs(&f.env))])),
    ])
}

/// `code.remote` as Istio's control plane writes it for the agent to fetch (an `oci://` image or an
/// http(s) URL, `cluster: "_"`, 30 s): istio-agent fetches the module, checks `sha256` (an image's
/// manifest digest, a URL's module digest) and rewrites the source into a local file before Envoy
/// sees it. None for a local file.
pub fn agent_fetched_code(f: &GatewayFile) -> Option<Node> {
    let (uri, sha256) = match &f.module {
        Module::File(_) => return None,
        Module::Remote { url, sha256 } => (url, Some(sha256)),
        Module::Image { image, sha256 } => (image, sha256.as_ref()),
    };
    let mut remote = vec![("http_uri".to_string(), map([("uri", uri.into()), ("cluster", "_".into()), ("timeout", "30s".into())]))];
    if let Some(s) = sha256 {
        remote.push(("sha256".into(), s.into()));
    }
    Some(map([("remote", Node::Map(remote))]))
}

/// The Wasm filter's `typed_config`: one plugin of the module in the VM `vm`.
pub fn wasm_typed_config(plugin_name: &str, vm: Node, configuration: String) -> Node {
    map([
        ("@type", WASM.into()),
        (
            "config",
            map([
                ("name", plugin_name.into()),
                ("root_id", "switchyard".into()),
                ("allow_on_headers_stop_iteration", true.into()),
                ("fail_open", false.into()),
                ("vm_config", vm),
                ("configuration", map([("@type", STRING_VALUE.into()), ("value", configuration.into())])),
            ]),
        ),
    ])
}

fn wasm_filter(filter_name: &str, plugin_name: &str, vm: Node, configuration: String) -> Node {
    map([("name", filter_name.into()), ("typed_config", wasm_typed_config(plugin_name, vm, configuration))])
}

/// The backend plugin's configuration: every backend, renderer-only fields removed.
pub fn backend_plugin(f: &GatewayFile) -> Node {
    Node::Map(vec![
        ("role".into(), "backend".into()),
        ("backends".into(), Node::Map(f.backends.iter().map(|b| (b.name.clone(), b.config.clone())).collect())),
    ])
}

/// The gateway plugin's configuration for `--target envoy` (Istio's mesh access log may read the
/// fields whatever the gateway file says, so `gateway_wasm` keeps them). Without an access log (`access_log:
/// false`) nothing in the rendered Envoy reads the access-log fields, so the gateway does not write
/// them (twenty filter-state objects per request, ~15 µs of CPU; bench/analysis.md section 8),
/// unless the file sets `metrics.access_log_fields` itself.
pub fn gateway_plugin(f: &GatewayFile) -> Node {
    let mut g = f.gateway.clone();
    if f.access_log.is_none() {
        match g.get_mut("metrics") {
            Some(m @ Node::Map(_)) => {
                if m.get("access_log_fields").is_none() {
                    m.set("access_log_fields", false.into());
                }
            }
            None => g.set("metrics", Node::Map(vec![("access_log_fields".into(), false.into())])),
            Some(_) => {}
        }
    }
    g
}

/// The filters' names (and, for `--target istio`, their extension configurations' names).
pub const GATEWAY_FILTER: &str = "switchyard.gateway";
pub const BACKEND_FILTER: &str = "switchyard.backend";

/// The gateway filter of `--target envoy` (Istio's goes through `gateway_wasm`).
pub fn gateway_filter(f: &GatewayFile) -> Node {
    wasm_filter(GATEWAY_FILTER, "switchyard-gateway", vm_config(f), json_plugin(&gateway_plugin(f)))
}

/// The gateway plugin's Wasm `typed_config` in the VM `vm`.
pub fn gateway_wasm(f: &GatewayFile, vm: Node) -> Node {
    wasm_typed_config("switchyard-gateway", vm, json_plugin(&f.gateway))
}

/// The backend plugin's Wasm `typed_config` in the VM `vm`.
pub fn backend_wasm(f: &GatewayFile, vm: Node) -> Node {
    wasm_typed_config("switchyard-backend", vm, json_plugin(&backend_plugin(f)))
}

/// Envoy's credential injector for one backend's SDS credential, skipped unless the request goes
/// to that backend's host (the backend filter has set `:authority`).
fn credential_injector(s: &super::SdsCredential) -> Node {
    let mut generic = vec![
        ("@type".to_string(), Node::from("type.googleapis.com/envoy.extensions.http.injected_credentials.generic.v3.Generic")),
        (
            "credential".into(),
            map([
                ("name", (&s.secret).into()),
                (
                    "sds_config",
                    map([(
                        "path_config_source",
                        map([("path", (&s.path).into()), ("watched_directory", map([("path", parent_dir(&s.path).into())]))]),
                    )]),
                ),
            ]),
        ),
        ("header".into(), (&s.header).into()),
    ];
    if !s.prefix.is_empty() {
        generic.push(("header_value_prefix".into(), (&s.prefix).into()));
    }
    only_for_authority(
        &s.host,
        map([
            ("name", "envoy.filters.http.credential_injector".into()),
            (
                "typed_config",
                map([
                    ("@type", "type.googleapis.com/envoy.extensions.filters.http.credential_injector.v3.CredentialInjector".into()),
                    ("overwrite", true.into()),
                    ("credential", map([("name", "envoy.http.injected_credentials.generic".into()), ("typed_config", Node::Map(generic))])),
                ]),
            ),
        ]),
    )
}

/// The directory of an absolute file path (what Envoy watches for the file being moved in).
fn parent_dir(path: &str) -> &str {
    path.rsplit_once('/').map_or("/", |(d, _)| if d.is_empty() { "/" } else { d })
}

/// Envoy's AWS request signing filter for one Bedrock backend (`aws: {signer: envoy}`), skipped
/// unless the request goes to that backend's host. It runs after the backend filter, so it signs
/// the translated request: path, body (hashed: `use_unsigned_payload: false` buffers it, streams
/// included — a ConverseStream request is an ordinary POST body), `host` and the other headers.
fn aws_request_signing(s: &super::EnvoyAwsSigner) -> Node {
    let mut signing = vec![
        ("@type".to_string(), Node::from("type.googleapis.com/envoy.extensions.filters.http.aws_request_signing.v3.AwsRequestSigning")),
        ("service_name".into(), crate::providers::bedrock::SIGNING_SERVICE.into()),
        ("region".into(), (&s.region).into()),
        ("use_unsigned_payload".into(), false.into()),
    ];
    let provider = match &s.credentials {
        super::AwsCredentialSource::File { path, profile } => {
            let mut file = vec![(
                "credentials_data_source".to_string(),
                map([("filename", path.into()), ("watched_directory", map([("path", parent_dir(path).into())]))]),
            )];
            if let Some(p) = profile {
                file.push(("profile".into(), p.into()));
            }
            // Only the file: not the environment, instance metadata or anything else of the chain.
            Some(map([("custom_credential_provider_chain", true.into()), ("credentials_file_provider", Node::Map(file))]))
        }
        super::AwsCredentialSource::DefaultChain { profile: Some(p) } => {
            Some(map([("credentials_file_provider", map([("profile", p.into())]))]))
        }
        super::AwsCredentialSource::DefaultChain { profile: None } => None,
    };
    if let Some(provider) = provider {
        signing.push(("credential_provider".into(), provider));
    }
    only_for_authority(&s.host, map([("name", "envoy.filters.http.aws_request_signing".into()), ("typed_config", Node::Map(signing))]))
}

/// `filter` wrapped in `match_delegate`: skipped unless the request's `:authority` is `host` (the
/// backend filter sets it to the chosen backend's `host`).
fn only_for_authority(host: &str, filter: Node) -> Node {
    let authority = map([
        ("name", "authority".into()),
        (
            "typed_config",
            map([("@type", "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput".into()), ("header_name", ":authority".into())]),
        ),
    ]);
    map([
        ("name", "envoy.filters.http.match_delegate".into()),
        (
            "typed_config",
            map([
                ("@type", "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher".into()),
                ("extension_config", filter),
                (
                    "xds_matcher",
                    map([(
                        "matcher_list",
                        map([(
                            "matchers",
                            Node::List(vec![map([
                                (
                                    "predicate",
                                    map([(
                                        "not_matcher",
                                        map([("single_predicate", map([("input", authority), ("value_match", map([("exact", host.into())]))]))]),
                                    )]),
                                ),
                                (
                                    "on_match",
                                    map([(
                                        "action",
                                        map([
                                            ("name", "skip".into()),
                                            ("typed_config", map([("@type", "type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter".into())])),
                                        ]),
                                    )]),
                                ),
                            ])]),
                        )]),
                    )]),
                ),
            ]),
        ),
    ])
}

/// The upstream filters of every route's cluster: the backend filter, Envoy's credential injector
/// for each backend whose credential comes from SDS, Envoy's AWS signer for each Bedrock backend
/// that Envoy signs, then the codec.
pub fn upstream_filters(f: &GatewayFile) -> Node {
    upstream_filters_with(f, wasm_filter(BACKEND_FILTER, "switchyard-backend", vm_config(f), json_plugin(&backend_plugin(f))))
}

/// The upstream filters with `backend` as the backend filter (inline, or an ECDS reference).
pub fn upstream_filters_with(f: &GatewayFile, backend: Node) -> Node {
    let mut filters = vec![backend];
    for b in &f.backends {
        if let Some(s) = &b.sds {
            filters.push(credential_injector(s));
        }
        if let Some(s) = &b.aws_signer {
            filters.push(aws_request_signing(s));
        }
    }
    filters.push(
        map([
            ("name", "envoy.filters.http.upstream_codec".into()),
            ("typed_config", map([("@type", "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec".into())])),
        ]),
    );
    Node::List(filters)
}

pub fn retry_policy(r: &RouteDef) -> Node {
    map([
        ("retry_on", "5xx,reset,connect-failure,refused-stream,retriable-status-codes".into()),
        // 401/403: a provider refused its credential; the next candidate is tried (the backend
        // filter never sends a refused credential twice in one request).
        ("retriable_status_codes", Node::List(vec![429i64.into(), 401i64.into(), 403i64.into()])),
        ("num_retries", r.retries.into()),
        ("per_try_idle_timeout", "60s".into()),
        ("retry_back_off", map([("base_interval", "0.05s".into()), ("max_interval", "1s".into())])),
        (
            "retry_priority",
            map([
                ("name", "envoy.retry_priorities.previous_priorities".into()),
                (
                    "typed_config",
                    map([
                        (
                            "@type",
                            "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig".into(),
                        ),
                        ("update_frequency", 1u32.into()),
                    ]),
                ),
            ]),
        ),
        (
            "retry_host_predicate",
            Node::List(vec![map([
                ("name", "envoy.retry_host_predicates.previous_hosts".into()),
                (
                    "typed_config",
                    map([("@type", "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate".into())]),
                ),
            ])]),
        ),
        ("host_selection_retry_max_attempts", 3u32.into()),
    ])
}

pub fn route_entry(r: &RouteDef) -> Node {
    let mut action = map([
        ("cluster", format!("{ROUTE_PREFIX}{}", r.name).into()),
        ("timeout", (&r.timeout).into()),
        ("idle_timeout", (&r.idle_timeout).into()),
        ("retry_policy", retry_policy(r)),
    ]);
    if r.hedge {
        // The gateway sets the per-try timeout (the first-token deadline) on each request; on its
        // expiry the next candidate starts without cancelling the first.
        action.set("hedge_policy", map([("hedge_on_per_try_timeout", true.into())]));
    }
    map([
        (
            "match",
            map([
                ("prefix", "/".into()),
                (
                    "headers",
                    Node::List(vec![map([
                        ("name", crate::config::ROUTE_HEADER.into()),
                        ("string_match", map([("exact", (&r.name).into())])),
                    ])]),
                ),
            ]),
        ),
        ("route", action),
    ])
}

/// The last route: a model the gateway resolved but no route serves gets an OpenAI-shaped error.
pub fn no_route() -> Node {
    map([
        ("match", map([("prefix", "/".into())])),
        (
            "direct_response",
            map([
                ("status", 503u32.into()),
                (
                    "body",
                    map([(
                        "inline_string",
                        r#"{"error":{"message":"No Envoy route serves this model (add its candidates to the gateway file and render it again).","type":"api_error","param":null,"code":"no_route"}}"#.into(),
                    )]),
                ),
            ]),
        ),
        (
            "response_headers_to_add",
            Node::List(vec![map([("header", map([("key", "content-type".into()), ("value", "application/json".into())]))])]),
        ),
    ])
}

pub fn access_log(path: &str) -> Node {
    let mut fields = vec![
        ("time".to_string(), Node::from("%START_TIME%")),
        ("method".into(), "%REQ(:METHOD)%".into()),
        ("response_code".into(), "%RESPONSE_CODE%".into()),
        ("response_flags".into(), "%RESPONSE_FLAGS%".into()),
        ("upstream_host".into(), "%UPSTREAM_HOST%".into()),
        ("envoy_duration_ms".into(), "%DURATION%".into()),
    ];
    for f in LOG_FIELDS {
        fields.push((f.to_string(), format!("%FILTER_STATE(wasm.switchyard.{f}:PLAIN)%").into()));
    }
    Node::List(vec![map([
        ("name", "envoy.access_loggers.file".into()),
        (
            "typed_config",
            map([
                ("@type", "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog".into()),
                ("path", path.into()),
                ("log_format", map([("json_format", Node::Map(fields))])),
            ]),
        ),
    ])])
}

/// `x-switchyard-needs-*` → `envoy.lb` metadata for the subset load balancer.
pub fn header_to_metadata() -> Node {
    let mut rules = Vec::new();
    let rule = |header: String, key: String| {
        map([
            ("header", header.into()),
            ("remove", true.into()),
            ("on_header_present", map([("metadata_namespace", "envoy.lb".into()), ("key", key.into()), ("type", "STRING".into())])),
        ])
    };
    // One per capability key (src/policy/capabilities.rs `LB_KEYS`): `x-switchyard-needs-context`
    // carries the context class the prompt needs, the others `true`.
    for key in crate::policy::capabilities::LB_KEYS {
        rules.push(rule(format!("{}{key}", crate::config::NEEDS_HEADER_PREFIX), key.to_string()));
    }
    map([
        ("name", "envoy.filters.http.header_to_metadata".into()),
        (
            "typed_config",
            map([
                ("@type", "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config".into()),
                ("request_rules", Node::List(rules)),
            ]),
        ),
    ])
}

pub fn router_filter() -> Node {
    map([
        ("name", "envoy.filters.http.router".into()),
        (
            "typed_config",
            map([
                ("@type", "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router".into()),
                ("suppress_envoy_headers", true.into()),
            ]),
        ),
    ])
}

/// `envoy/fleet.yaml`: the rate limit filters, their per-route descriptors, the local replies and
/// the service's cluster — the one copy, rendered here and documented there.
const FLEET_YAML: &str = include_str!("../../envoy/fleet.yaml");

/// One piece of `envoy/fleet.yaml`, with the gateway file's service and failure mode.
fn fleet_piece(f: &GatewayFile, key: &str) -> Node {
    let doc: serde_yaml::Value = serde_yaml::from_str(FLEET_YAML).unwrap_or(serde_yaml::Value::Null);
    let mut n = node_of(doc.get(key).unwrap_or(&serde_yaml::Value::Null));
    if let Some(fleet) = &f.fleet {
        set_fleet_settings(&mut n, fleet);
    }
    n
}

fn set_fleet_settings(n: &mut Node, fleet: &super::FleetSettings) {
    match n {
        Node::Map(m) => {
            for (k, v) in m.iter_mut() {
                match k.as_str() {
                    "failure_mode_deny" => *v = fleet.failure_mode_deny.into(),
                    "socket_address" => *v = socket(&fleet.rate_limit_service.0, fleet.rate_limit_service.1).get("socket_address").cloned().unwrap_or(Node::Null),
                    _ => set_fleet_settings(v, fleet),
                }
            }
        }
        Node::List(l) => l.iter_mut().for_each(|v| set_fleet_settings(v, fleet)),
        _ => {}
    }
}

/// A parsed YAML value as a rendering node.
fn node_of(v: &serde_yaml::Value) -> Node {
    use serde_yaml::Value as V;
    match v {
        V::Null => Node::Null,
        V::Bool(b) => Node::Bool(*b),
        V::Number(n) => n.as_i64().map(Node::Int).unwrap_or_else(|| Node::Float(n.as_f64().unwrap_or(0.0))),
        V::String(s) => Node::Str(s.clone()),
        V::Sequence(l) => Node::List(l.iter().map(node_of).collect()),
        V::Mapping(m) => Node::Map(m.iter().map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), node_of(v))).collect()),
        V::Tagged(t) => node_of(&t.value),
    }
}

pub fn http_filters(f: &GatewayFile) -> Node {
    let mut filters = vec![gateway_filter(f)];
    if f.fleet.is_some() {
        // After the gateway (which leaves the descriptors' filter state), before the router.
        if let Node::List(l) = fleet_piece(f, "http_filters") {
            filters.extend(l);
        }
    }
    if f.capabilities {
        filters.push(header_to_metadata());
    }
    filters.push(router_filter());
    Node::List(filters)
}

pub fn route_config(f: &GatewayFile) -> Node {
    let mut routes: Vec<Node> = f.routes.iter().map(route_entry).collect();
    routes.push(no_route());
    let mut vhost = vec![
        ("name".to_string(), Node::from("llm")),
        ("domains".into(), strs(&["*"])),
        ("request_body_buffer_limit".into(), 16_777_216u32.into()),
        ("routes".into(), Node::List(routes)),
    ];
    if f.fleet.is_some() {
        vhost.push(("typed_per_filter_config".into(), fleet_piece(f, "typed_per_filter_config")));
    }
    map([("name", "llm".into()), ("virtual_hosts", Node::List(vec![Node::Map(vhost)]))])
}

pub fn hcm(f: &GatewayFile) -> Node {
    let mut hcm = vec![
        ("@type".to_string(), Node::from("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager")),
        ("stat_prefix".into(), "llm".into()),
    ];
    if let Some(path) = &f.access_log {
        hcm.push(("access_log".into(), access_log(path)));
    }
    hcm.extend([
        ("stream_idle_timeout".to_string(), Node::from("300s")),
        ("request_timeout".into(), "0s".into()),
        ("max_request_headers_kb".into(), 60u32.into()),
        ("request_headers_timeout".into(), "10s".into()),
        (
            "common_http_protocol_options".into(),
            map([("max_headers_count", 100u32.into()), ("headers_with_underscores_action", "DROP_HEADER".into())]),
        ),
    ]);
    if f.fleet.is_some() {
        hcm.push(("local_reply_config".into(), fleet_piece(f, "local_reply_config")));
    }
    hcm.push(("route_config".into(), route_config(f)));
    hcm.push(("http_filters".into(), http_filters(f)));
    Node::Map(hcm)
}

pub fn listener(f: &GatewayFile) -> Node {
    map([
        ("name", "llm".into()),
        ("address", socket(&f.listen.0, f.listen.1)),
        ("per_connection_buffer_limit_bytes", 16_777_216u32.into()),
        (
            "filter_chains",
            Node::List(vec![map([(
                "filters",
                Node::List(vec![map([
                    ("name", "envoy.filters.network.http_connection_manager".into()),
                    ("typed_config", hcm(f)),
                ])]),
            )])]),
        ),
    ])
}

pub fn socket(address: &str, port: u16) -> Node {
    map([("socket_address", map([("address", address.into()), ("port_value", port.into())]))])
}

fn outlier_detection() -> Node {
    map([
        ("consecutive_5xx", 5u32.into()),
        ("consecutive_gateway_failure", 5u32.into()),
        ("interval", "5s".into()),
        ("base_ejection_time", "30s".into()),
        ("max_ejection_percent", 100u32.into()),
    ])
}

fn circuit_breakers() -> Node {
    map([(
        "thresholds",
        Node::List(vec![map([
            ("max_connections", 1024u32.into()),
            ("max_pending_requests", 1024u32.into()),
            ("max_requests", 1024u32.into()),
            ("max_retries", 64u32.into()),
        ])]),
    )])
}

fn tls_socket(sni: &str, ca_file: &str) -> Node {
    map([
        ("name", "envoy.transport_sockets.tls".into()),
        (
            "typed_config",
            map([
                ("@type", "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext".into()),
                ("sni", sni.into()),
                (
                    "common_tls_context",
                    map([(
                        "validation_context",
                        map([
                            ("trusted_ca", map([("filename", ca_file.into())])),
                            (
                                "match_typed_subject_alt_names",
                                Node::List(vec![map([("san_type", "DNS".into()), ("matcher", map([("exact", sni.into())]))])]),
                            ),
                        ]),
                    )]),
                ),
            ]),
        ),
    ])
}

/// The model a candidate sends upstream (what capabilities are looked up by), as `switchyard
/// check` reads it: the endpoint's model, else the backend's, else the route's name.
fn candidate_model(f: &GatewayFile, r: &RouteDef, c: &super::Candidate) -> String {
    c.model
        .clone()
        .or_else(|| f.backends.iter().find(|b| b.name == c.backend).and_then(|b| b.config.get("model")).and_then(Node::as_str).map(str::to_string))
        .unwrap_or_else(|| r.name.clone())
}

/// Each candidate's `envoy.lb` capability metadata, when the route's candidates differ in what
/// they can do (else the subset load balancer has nothing to skip and is not configured).
fn capability_metadata(f: &GatewayFile, r: &RouteDef) -> Option<Vec<Node>> {
    if !f.capabilities {
        return None;
    }
    let cfg = match crate::config::PluginConfig::parse(json_plugin(&f.gateway).as_bytes()) {
        Ok(crate::config::PluginConfig::Gateway(g)) => crate::config::Gateway::new(g).ok()?,
        _ => return None,
    };
    let table = cfg.capabilities?;
    // The metadata `switchyard check` expects (`capabilities::lb_metadata`): the booleans, and
    // `context`, the classes the model's window holds (`list_as_any`).
    let metas: Vec<Node> = r.candidates.iter().map(|c| json_node(&crate::policy::capabilities::lb_metadata(table.get(&candidate_model(f, r, c))))).collect();
    let differ = metas.windows(2).any(|w| w[0] != w[1]);
    differ.then_some(metas)
}

fn json_node(v: &serde_json::Value) -> Node {
    match v {
        serde_json::Value::Null => Node::Null,
        serde_json::Value::Bool(b) => Node::Bool(*b),
        serde_json::Value::Number(n) => n.as_i64().map_or_else(|| Node::Float(n.as_f64().unwrap_or_default()), Node::Int),
        serde_json::Value::String(s) => Node::Str(s.clone()),
        serde_json::Value::Array(a) => Node::List(a.iter().map(json_node).collect()),
        serde_json::Value::Object(o) => Node::Map(o.iter().map(|(k, v)| (k.clone(), json_node(v))).collect()),
    }
}

/// Every combination of needs a request can carry (each non-empty set of the capability keys,
/// `capabilities::subset_selectors`): a selector must name exactly the keys the request's
/// metadata has.
fn subset_selectors() -> Node {
    Node::List(crate::policy::capabilities::subset_selectors().into_iter().map(|keys| map([("keys", strs(&keys))])).collect())
}

pub fn cluster(f: &GatewayFile, r: &RouteDef) -> Node {
    cluster_with(f, r, upstream_filters(f))
}

/// A route's cluster with the given upstream filters.
pub fn cluster_with(f: &GatewayFile, r: &RouteDef, upstream_filters: Node) -> Node {
    let name = format!("{ROUTE_PREFIX}{}", r.name);
    let caps = capability_metadata(f, r);
    let backend = |n: &str| f.backends.iter().find(|b| b.name == n);
    let all_ip = r.candidates.iter().all(|c| backend(&c.backend).is_some_and(|b| super::is_ip(&b.endpoint.address)));
    let levels = r.candidates.iter().map(|c| c.priority).max().map_or(0, |m| m + 1);
    let mut groups = Vec::new();
    for level in 0..levels {
        let mut lb_endpoints = Vec::new();
        for (i, c) in r.candidates.iter().enumerate().filter(|(_, c)| c.priority == level) {
            let Some(b) = backend(&c.backend) else { continue };
            let mut ep = vec![("address".to_string(), socket(&b.endpoint.address, b.endpoint.port))];
            if b.endpoint.tls.is_some() || !super::is_ip(&b.endpoint.address) {
                ep.push(("hostname".into(), (&b.endpoint.address).into()));
            }
            let mut sw = vec![("backend".to_string(), Node::from(&c.backend))];
            if let Some(m) = &c.model {
                sw.push(("model".into(), m.into()));
            }
            let mut meta = vec![("switchyard".to_string(), Node::Map(sw))];
            if let Some(caps) = &caps {
                meta.push(("envoy.lb".into(), caps[i].clone()));
            }
            if b.endpoint.tls.is_some() {
                meta.push(("envoy.transport_socket_match".into(), map([("provider", (&b.name).into())])));
            }
            let mut lb = vec![("endpoint".to_string(), Node::Map(ep))];
            if let Some(w) = c.weight {
                lb.push(("load_balancing_weight".into(), w.into()));
            }
            lb.push(("metadata".into(), map([("filter_metadata", Node::Map(meta))])));
            lb_endpoints.push(Node::Map(lb));
        }
        groups.push(map([("priority", level.into()), ("lb_endpoints", Node::List(lb_endpoints))]));
    }
    let mut c = vec![("name".to_string(), Node::from(&name))];
    if all_ip {
        c.push(("type".into(), "STATIC".into()));
    } else {
        c.push(("type".into(), "STRICT_DNS".into()));
        c.push(("dns_lookup_family".into(), "V4_PREFERRED".into()));
    }
    c.push(("connect_timeout".into(), (&f.connect_timeout).into()));
    c.push(("lb_policy".into(), "ROUND_ROBIN".into()));
    if caps.is_some() {
        c.push((
            "lb_subset_config".into(),
            map([("fallback_policy", "ANY_ENDPOINT".into()), ("list_as_any", true.into()), ("subset_selectors", subset_selectors())]),
        ));
    }
    c.push(("load_assignment".into(), map([("cluster_name", (&name).into()), ("endpoints", Node::List(groups))])));
    if f.outlier_detection {
        c.push(("outlier_detection".into(), outlier_detection()));
    }
    // TLS per provider: each endpoint's transport_socket_match metadata picks its provider's SNI
    // and certificate name.
    let mut tls = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for cand in &r.candidates {
        if let Some(b) = backend(&cand.backend) {
            if let Some(sni) = &b.endpoint.tls {
                if !seen.contains(&b.name.as_str()) {
                    seen.push(&b.name);
                    tls.push(map([
                        ("name", (&b.name).into()),
                        ("match", map([("provider", (&b.name).into())])),
                        ("transport_socket", tls_socket(sni, &f.ca_file)),
                    ]));
                }
            }
        }
    }
    if !tls.is_empty() {
        c.push(("transport_socket_matches".into(), Node::List(tls)));
    }
    c.push(("circuit_breakers".into(), circuit_breakers()));
    c.push((
        "typed_extension_protocol_options".into(),
        map([(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            map([
                ("@type", "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into()),
                ("explicit_http_config", map([("http_protocol_options", Node::Map(vec![]))])),
                ("http_filters", upstream_filters),
            ]),
        )]),
    ));
    Node::Map(c)
}

/// The cluster a remote module is fetched from (`module: {url, sha256}`).
pub fn module_cluster(url: &str) -> Option<Node> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        (false, url.strip_prefix("http://")?)
    };
    let authority = rest.split('/').next()?;
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse::<u16>().ok()?),
        None => (authority.to_string(), if tls { 443 } else { 80 }),
    };
    let mut c = vec![
        ("name".to_string(), Node::from(MODULE_CLUSTER)),
        ("type".into(), if super::is_ip(&host) { "STATIC" } else { "STRICT_DNS" }.into()),
        ("connect_timeout".into(), "5s".into()),
        (
            "load_assignment".into(),
            map([
                ("cluster_name", MODULE_CLUSTER.into()),
                ("endpoints", Node::List(vec![map([("lb_endpoints", Node::List(vec![map([("endpoint", map([("address", socket(&host, port))]))])]))])])),
            ]),
        ),
    ];
    if tls {
        c.push(("transport_socket".into(), tls_socket(&host, "/etc/ssl/certs/ca-certificates.crt")));
    }
    Some(Node::Map(c))
}

pub fn clusters(f: &GatewayFile) -> Vec<Node> {
    let mut out: Vec<Node> = f.routes.iter().map(|r| cluster(f, r)).collect();
    if let Some(fleet) = &f.fleet {
        if let Node::List(l) = fleet_piece(f, "clusters") {
            let dns = fleet.rate_limit_service.0.parse::<std::net::IpAddr>().is_err();
            out.extend(l.into_iter().map(|mut c| {
                if let (true, Some(t)) = (dns, c.get_mut("type")) {
                    *t = "STRICT_DNS".into();
                }
                c
            }));
        }
    }
    if let Module::Remote { url, .. } = &f.module {
        if let Some(c) = module_cluster(url) {
            out.push(c);
        }
    }
    out
}

fn header_top(f: &GatewayFile) -> Vec<(String, Node)> {
    let mut top = vec![("stats_config".to_string(), map([("stats_tags", stats_tags())]))];
    if let Some(i) = &f.stats_flush_interval {
        top.push(("stats_flush_interval".into(), i.into()));
    }
    if let Some((host, port)) = &f.admin {
        top.push(("admin".into(), map([("address", socket(host, *port))])));
    }
    top
}

/// The whole static bootstrap.
pub fn render(f: &GatewayFile) -> Node {
    let mut top = Vec::new();
    if f.backends.iter().any(|b| b.sds.is_some()) {
        // SDS from files needs a node identity.
        top.push(("node".to_string(), map([("id", (&f.vm_id).into()), ("cluster", (&f.vm_id).into())])));
    }
    top.extend(header_top(f));
    top.push((
        "static_resources".into(),
        map([("listeners", Node::List(vec![listener(f)])), ("clusters", Node::List(clusters(f)))]),
    ));
    Node::Map(top)
}

/// A bootstrap whose listener and clusters come from files Envoy watches (LDS and CDS with
/// `path_config_source`): rendering into the same directory again reloads without a restart.
/// Returns (bootstrap, listeners file, clusters file).
pub fn render_reloadable(f: &GatewayFile, dir: &str) -> (Node, Node, Node) {
    // File-based xDS needs a node identity.
    let mut top = vec![("node".to_string(), map([("id", (&f.vm_id).into()), ("cluster", (&f.vm_id).into())]))];
    top.extend(header_top(f));
    let source = |file: &str| {
        map([
            ("resource_api_version", "V3".into()),
            ("path_config_source", map([("path", format!("{dir}/{file}").into()), ("watched_directory", map([("path", dir.into())]))])),
        ])
    };
    top.push(("dynamic_resources".into(), map([("lds_config", source("listeners.yaml")), ("cds_config", source("clusters.yaml"))])));
    // The module's own cluster is static: a reload never refetches the module.
    let static_clusters: Vec<Node> = match &f.module {
        Module::Remote { url, .. } => module_cluster(url).into_iter().collect(),
        Module::File(_) | Module::Image { .. } => Vec::new(),
    };
    if !static_clusters.is_empty() {
        top.push(("static_resources".into(), map([("clusters", Node::List(static_clusters))])));
    }
    let resource = |type_url: &str, mut n: Node| {
        if let Node::Map(m) = &mut n {
            m.insert(0, ("@type".into(), type_url.into()));
        }
        n
    };
    let listeners = map([(
        "resources",
        Node::List(vec![resource("type.googleapis.com/envoy.config.listener.v3.Listener", listener(f))]),
    )]);
    let clusters = map([(
        "resources",
        Node::List(
            f.routes.iter().map(|r| resource("type.googleapis.com/envoy.config.cluster.v3.Cluster", cluster(f, r))).collect(),
        ),
    )]);
    (Node::Map(top), listeners, clusters)
}

