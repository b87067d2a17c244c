//! `switchyard render FILE --target istio`: the gateway as Istio resources for an ingress gateway.
//!
//! - an `EnvoyFilter` with Envoy configuration patches: the gateway filter (inserted before the
//!   router), with capabilities the `header_to_metadata` filter, one cluster per route (the
//!   candidates by priority, with the backend upstream filter) and one route per model (inserted
//!   first in the gateway's virtual hosts);
//! - a `ServiceEntry` per provider host (mesh-external, TLS on 443), so a mesh that only allows
//!   registered destinations lets the gateway reach them.
//!
//! No `DestinationRule`: the route clusters are the gateway's own (one cluster per model holds the
//! candidates of several providers by priority), so Istio's per-host traffic policies do not apply to
//! them; TLS, SNI and the SAN check are in each cluster.
//!
//! Why not a `WasmPlugin` for the gateway role: it cannot set `allow_on_headers_stop_iteration`, and
//! without it the gateway filter stalls every request in Envoy 1.40 (tests/e2e/test_render.py shows
//! it); and the backend role, an upstream filter of each cluster, cannot be a `WasmPlugin` at all,
//! yet must run in the gateway role's VM. So both roles are patches with the same `vm_config`, the
//! module fetched by Envoy from `module.url` with its pinned `sha256` (the same bytes as the OCI
//! image's `plugin.wasm`, which Istio pulls only for a `WasmPlugin`).

use super::envoy;
use super::yaml::{map, strs, Node};
use super::{GatewayFile, Module};

const NAME: &str = "switchyard";

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
    let mut patches = vec![map([
        ("applyTo", "HTTP_FILTER".into()),
        ("match", before_router()),
        ("patch", map([("operation", "INSERT_BEFORE".into()), ("value", envoy::gateway_filter(f))])),
    ])];
    if f.capabilities {
        // After the gateway filter (which sets the headers), before the router.
        patches.push(map([
            ("applyTo", "HTTP_FILTER".into()),
            ("match", before_router()),
            ("patch", map([("operation", "INSERT_BEFORE".into()), ("value", envoy::header_to_metadata())])),
        ]));
    }
    for r in &f.routes {
        let c = envoy::cluster(f, r);
        patches.push(map([
            ("applyTo", "CLUSTER".into()),
            ("match", gateway_ctx()),
            ("patch", map([("operation", "ADD".into()), ("value", c)])),
        ]));
    }
    if let Module::Remote { url, .. } = &f.module {
        if let Some(c) = envoy::module_cluster(url) {
            patches.push(map([
                ("applyTo", "CLUSTER".into()),
                ("match", gateway_ctx()),
                ("patch", map([("operation", "ADD".into()), ("value", c)])),
            ]));
        }
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
    if !matches!(f.module, Module::Remote { .. }) {
        return Err("module: --target istio needs module: {url: https://…/switchyard.wasm, sha256: …}: the gateway's Envoy fetches it \
                    (serve the same file as the OCI image's plugin.wasm; see README \"Running in Istio\")"
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
