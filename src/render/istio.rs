//! `switchyard render FILE --target istio`: the gateway as Istio resources for an ingress gateway.
//!
//! - an `EnvoyFilter` with Envoy configuration patches: two extension configurations
//!   (`EXTENSION_CONFIG` `ADD`), the gateway role and the backend role, each a Wasm filter whose
//!   module is `code.remote` (`module.image`, an `oci://` image, or `module.url`) for istio-agent to
//!   fetch; the gateway filter (inserted before the router) and, in every route's cluster, the
//!   backend upstream filter refer to them by name (`config_discovery`, ECDS over ADS); with
//!   capabilities the `header_to_metadata` filter; one cluster per route (the candidates by
//!   priority) and one route per model (inserted first in the gateway's virtual hosts);
//! - a `ServiceEntry` per provider host (mesh-external, TLS on 443), so a mesh that only allows
//!   registered destinations lets the gateway reach them.
//!
//! Why ECDS: istio-agent rewrites every ECDS resource holding a Wasm filter with a remote module
//! into a local file it fetched (istio/istio `pkg/wasm/convert.go`; its cache pulls `oci://` images
//! of the compat variant that `scripts/package` writes, and http(s) URLs, `pkg/wasm/cache.go`), and
//! Envoy takes ECDS references in a cluster's upstream HTTP filters too. A `WasmPlugin` would pull
//! the image as well, but it cannot set `allow_on_headers_stop_iteration` (without it the gateway
//! filter stalls every request in Envoy 1.40: tests/e2e/test_render.py shows it), and the backend
//! role, an upstream filter, cannot be a `WasmPlugin` at all. Both extension configurations carry
//! the same `vm_config` (after the agent's rewrite: the same local file, the same `vm_id`), so
//! Envoy runs both roles in one VM, which the roles' shared per-request state needs.
//!
//! No `DestinationRule`: the route clusters are the gateway's own (one cluster per model holds the
//! candidates of several providers by priority), so Istio's per-host traffic policies do not apply to
//! them; TLS, SNI and the SAN check are in each cluster.

use super::envoy;
use super::yaml::{map, strs, Node};
use super::{GatewayFile, Module};

const NAME: &str = "switchyard";
const WASM: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
/// What istio-agent puts in place of an extension configuration whose module it could not fetch
/// (deny-all with `fail_open: false`): the reference must accept it too.
const RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";

/// An ECDS reference to the extension configuration `name`, as Istio writes them for its own Wasm
/// filters: over ADS, waiting for the configuration without a time limit (no request passes
/// before the filter is there).
pub fn ecds_filter(name: &str) -> Node {
    map([
        ("name", name.into()),
        (
            "config_discovery",
            map([
                ("config_source", map([("ads", Node::Map(vec![])), ("resource_api_version", "V3".into()), ("initial_fetch_timeout", "0s".into())])),
                ("type_urls", strs(&[WASM, RBAC])),
            ]),
        ),
    ])
}

/// The two extension configurations (gateway role, backend role): the same `vm_config`, the module
/// as `code.remote` for istio-agent.
pub fn extension_configs(f: &GatewayFile) -> Vec<Node> {
    let code = envoy::agent_fetched_code(f).unwrap_or(Node::Null);
    let vm = || envoy::vm_config_with_code(f, code.clone());
    vec![
        map([("name", envoy::GATEWAY_FILTER.into()), ("typed_config", envoy::gateway_wasm(f, vm()))]),
        map([("name", envoy::BACKEND_FILTER.into()), ("typed_config", envoy::backend_wasm(f, vm()))]),
    ]
}

fn metadata(f: &GatewayFile, name: &str) -> Node {
    map([
        ("name", name.into()),
        ("namespace", (&f.istio.namespace).into()),
        ("labels", map([("app.kubernetes.io/part-of", NAME.into())])),
    ])
}

fn labels(f: &GatewayFile) -> Node {
    Node::Map(f.istio.selector.iter().map(|(k, v)| (k.clone(), Node::from(v))).collect())
}

pub fn envoy_filter(f: &GatewayFile) -> Node {
    let gateway_ctx = || map([("context", "GATEWAY".into())]);
    let before_router = || {
        map([
            ("context", "GATEWAY".into()),
            (
                "listener",
                map([(
                    "filterChain",
                    map([(
                        "filter",
                        map([
                            ("name", "envoy.filters.network.http_connection_manager".into()),
                            ("subFilter", map([("name", "envoy.filters.http.router".into())])),
                        ]),
                    )]),
                )]),
            ),
        ])
    };
    // The extension configurations first: istiod serves them over ECDS to the proxies this
    // EnvoyFilter selects (the match is ignored for EXTENSION_CONFIG; only ADD applies).
    let mut patches: Vec<Node> = extension_configs(f)
        .into_iter()
        .map(|value| map([("applyTo", "EXTENSION_CONFIG".into()), ("patch", map([("operation", "ADD".into()), ("value", value)]))]))
        .collect();
    patches.push(map([
        ("applyTo", "HTTP_FILTER".into()),
        ("match", before_router()),
        ("patch", map([("operation", "INSERT_BEFORE".into()), ("value", ecds_filter(envoy::GATEWAY_FILTER))])),
    ]));
    if f.capabilities {
        // After the gateway filter (which sets the headers), before the router.
        patches.push(map([
            ("applyTo", "HTTP_FILTER".into()),
            ("match", before_router()),
            ("patch", map([("operation", "INSERT_BEFORE".into()), ("value", envoy::header_to_metadata())])),
        ]));
    }
    for r in &f.routes {
        let c = envoy::cluster_with(f, r, envoy::upstream_filters_with(f, ecds_filter(envoy::BACKEND_FILTER)));
        patches.push(map([
            ("applyTo", "CLUSTER".into()),
            ("match", gateway_ctx()),
            ("patch", map([("operation", "ADD".into()), ("value", c)])),
        ]));
    }
    // Routes: inserted first in the gateway's virtual hosts, so they win over the mesh's own; in
    // reverse, so that they end up in the gateway file's order.
    for r in f.routes.iter().rev() {
        let mut route = envoy::route_entry(r);
        if let Node::Map(m) = &mut route {
            m.insert(0, ("name".into(), format!("switchyard-{}", r.name).into()));
        }
        let mut m = vec![("context".to_string(), Node::from("GATEWAY"))];
        let mut rc = Vec::new();
        if let Some(port) = f.istio.port {
            rc.push(("portNumber".to_string(), Node::from(port)));
        }
        if !rc.is_empty() {
            m.push(("routeConfiguration".into(), Node::Map(rc)));
        }
        patches.push(map([
            ("applyTo", "HTTP_ROUTE".into()),
            ("match", Node::Map(m)),
            ("patch", map([("operation", "INSERT_FIRST".into()), ("value", route)])),
        ]));
    }
    map([
        ("apiVersion", "networking.istio.io/v1alpha3".into()),
        ("kind", "EnvoyFilter".into()),
        ("metadata", metadata(f, NAME)),
        ("spec", map([("workloadSelector", map([("labels", labels(f))])), ("configPatches", Node::List(patches))])),
    ])
}

pub fn service_entries(f: &GatewayFile) -> Vec<Node> {
    let mut out = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for b in &f.backends {
        let host = &b.endpoint.address;
        if super::is_ip(host) || seen.contains(host) {
            continue;
        }
        seen.push(host.clone());
        let (name, protocol) = if b.endpoint.tls.is_some() { ("tls", "TLS") } else { ("http", "HTTP") };
        out.push(map([
            ("apiVersion", "networking.istio.io/v1".into()),
            ("kind", "ServiceEntry".into()),
            ("metadata", metadata(f, &format!("switchyard-{}", b.name))),
            (
                "spec",
                map([
                    ("hosts", strs(&[host])),
                    ("location", "MESH_EXTERNAL".into()),
                    ("ports", Node::List(vec![map([("number", b.endpoint.port.into()), ("name", name.into()), ("protocol", protocol.into())])])),
                    ("resolution", "DNS".into()),
                ]),
            ),
        ]));
    }
    out
}

/// Every resource, in the order to apply them.
pub fn render(f: &GatewayFile) -> Result<Vec<Node>, String> {
    if matches!(f.module, Module::File(_)) {
        return Err("module: --target istio needs module: {image: oci://REGISTRY/REPO:TAG, sha256: DIGEST} (scripts/package's image, pushed; \
                    sha256 is its manifest digest) or {url: https://…/switchyard.wasm, sha256: …}: istio-agent fetches it \
                    (see README \"Running in Istio\")"
            .into());
    }
    if f.fleet.is_some() {
        return Err("fleet: --target istio does not render the rate limit filters yet; render --target envoy, or add \
                    envoy/fleet.yaml's pieces to the gateway with an EnvoyFilter of your own"
            .into());
    }
    let mut docs = service_entries(f);
    docs.push(envoy_filter(f));
    Ok(docs)
}

pub fn to_yaml(docs: &[Node], header: &str) -> String {
    let mut out = header.to_string();
    for d in docs {
        out.push_str("---\n");
        out.push_str(&super::yaml::to_yaml(d, ""));
    }
    out
}
