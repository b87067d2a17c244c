//! `switchyard check` on a whole Envoy configuration: each route's candidates (the endpoints of its
//! cluster, by priority) compared with what the gateway configuration says about them.
//!
//! - a fallback that lacks a capability its primary has (tools, vision, JSON schema, reasoning, a
//!   smaller context window) is a warning: failover would turn an answer into an error;
//! - a floating model name (`*-latest`, or no date or version in the name) in a route whose model
//!   entry sets `pin_versions: "warn"` is a warning, with `"forbid"` an error (and the backend
//!   filter refuses to send such a name at run time).
//!
//! Works on the configuration as JSON (the command line reads YAML into it): plain data in, text out.

use serde_json::Value;

use crate::config::{Gateway, ModelEntry, PinVersions, PluginConfig, NEEDS_HEADER_PREFIX, ROUTE_HEADER};
use crate::policy::capabilities;

/// What the check found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Findings {
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
}

/// A model name that follows whatever the provider currently serves under it: `*-latest`, or a
/// name with neither a date (`2024-08-06`, `20241022`, `12-2024`) nor a version (`-v1:0`, `@001`,
/// `-001`).
pub fn is_floating(model: &str) -> bool {
    let m = model.rsplit('/').next().unwrap_or(model);
    if m.ends_with("-latest") || m.ends_with(":latest") {
        return true;
    }
    let bytes = m.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            let run = &m[start..i];
            let after_dash = start > 0 && matches!(bytes[start - 1], b'-' | b'@' | b':');
            // A year (2024), a full date (20241022), or a pinned revision (-001, @002, :0 after -v1).
            if (run.len() >= 4 && run.starts_with("20")) || run.len() == 8 || (after_dash && run.len() == 3) {
                return false;
            }
            if bytes.get(start.wrapping_sub(1)) == Some(&b'v') && start >= 2 && bytes[start - 2] == b'-' {
                return false;
            }
        } else {
            i += 1;
        }
    }
    true
}

/// One endpoint of a route's cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    priority: u64,
    model: String,
    /// The endpoint's `envoy.lb` metadata (for the subset load balancer), if any.
    lb: Option<Value>,
}

/// Checks every gateway plugin configuration found in `envoy` against the routes and clusters.
pub fn check_envoy(envoy: &Value) -> Result<Findings, String> {
    let mut gateways = Vec::new();
    let mut backends = Vec::new();
    collect_plugins(envoy, &mut gateways, &mut backends)?;
    if gateways.is_empty() {
        return Err("no switchyard gateway configuration found in this Envoy configuration".into());
    }
    let routes = route_clusters(envoy);
    let mut f = Findings::default();
    let mut subsets_needed = false;
    for g in &gateways {
        for entry in g.router.entries() {
            let route = entry.route.as_deref().unwrap_or(&entry.name);
            let Some(cluster) = routes.iter().find(|(r, _)| r == route).map(|(_, c)| c.as_str()) else {
                f.warnings.push(format!("model {}: no Envoy route matches {ROUTE_HEADER}: {route}", entry.name));
                continue;
            };
            let candidates = cluster_candidates(envoy, cluster, &backends, &entry.name);
            let subsets = cluster_node(envoy, cluster).is_some_and(|c| c.get("lb_subset_config").is_some());
            check_route(g, entry, cluster, &candidates, subsets, &mut f);
            subsets_needed |= check_subsets(envoy, g, entry, cluster, &candidates, &mut f);
        }
    }
    if subsets_needed {
        let mut mapped = Vec::new();
        walk(envoy, &mut |node| {
            if let Some(h) = node.get("header").and_then(Value::as_str) {
                let ns = node.get("on_header_present").and_then(|o| o.get("metadata_namespace")).and_then(Value::as_str);
                if ns == Some("envoy.lb") {
                    mapped.push(h.to_string());
                }
            }
        });
        let missing: Vec<String> = capabilities::LB_KEYS
            .iter()
            .map(|k| format!("{NEEDS_HEADER_PREFIX}{k}"))
            .filter(|h| !mapped.contains(h))
            .collect();
        if !missing.is_empty() {
            f.warnings.push(format!(
                "no envoy.filters.http.header_to_metadata rule turns {} into envoy.lb metadata: the subset load balancers cannot see what a request needs (README \"Routing\")",
                missing.join(", ")
            ));
        }
    }
    Ok(f)
}

/// A route whose candidates differ in what they can serve needs its cluster's subset load
/// balancer (`lb_subset_config` and each endpoint's `envoy.lb` metadata, see
/// [`capabilities::lb_metadata`]): without it a request can fail over to, or start on, a candidate
/// that cannot serve it. Returns whether the route needs one.
fn check_subsets(envoy: &Value, g: &Gateway, entry: &ModelEntry, cluster: &str, candidates: &[Candidate], f: &mut Findings) -> bool {
    let Some(caps) = g.capabilities.as_deref() else { return false };
    let want: Vec<Value> = candidates.iter().map(|c| capabilities::lb_metadata(caps.get(&c.model))).collect();
    if want.windows(2).all(|w| w[0] == w[1]) {
        return false;
    }
    let describe = || {
        candidates
            .iter()
            .zip(&want)
            .map(|(c, w)| format!("{} (priority {}): {w}", c.model, c.priority))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let subset = cluster_node(envoy, cluster).and_then(|c| c.get("lb_subset_config"));
    let Some(subset) = subset else {
        f.warnings.push(format!(
            "route {} (cluster {cluster}): its candidates differ in what they can serve, and the cluster has no lb_subset_config: a request can be sent to one that cannot serve it and get a 400 instead of the next candidate. Give the cluster lb_subset_config (README \"Routing\") and its endpoints this envoy.lb metadata: {}",
            entry.name,
            describe()
        ));
        return true;
    };
    let mut problems = Vec::new();
    if subset.get("list_as_any").and_then(Value::as_bool) != Some(true) {
        problems.push("list_as_any: true".to_string());
    }
    if subset.get("fallback_policy").and_then(Value::as_str) != Some("ANY_ENDPOINT") {
        problems.push("fallback_policy: ANY_ENDPOINT".to_string());
    }
    let have: Vec<Vec<String>> = subset
        .get("subset_selectors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("keys").and_then(Value::as_array))
        .map(|keys| {
            let mut k: Vec<String> = keys.iter().filter_map(Value::as_str).map(str::to_string).collect();
            k.sort();
            k
        })
        .collect();
    let lacking = capabilities::subset_selectors().into_iter().filter(|s| !have.iter().any(|h| h == s)).count();
    if lacking > 0 {
        problems.push(format!("{lacking} of the 31 subset_selectors (every combination of {:?})", capabilities::LB_KEYS));
    }
    if !problems.is_empty() {
        f.warnings.push(format!("route {} (cluster {cluster}): lb_subset_config lacks {}", entry.name, problems.join(", ")));
    }
    for (c, w) in candidates.iter().zip(&want) {
        if c.lb.as_ref() != Some(w) {
            f.warnings.push(format!(
                "route {} (cluster {cluster}): endpoint {} (priority {}) has envoy.lb metadata {}, expected {w}",
                entry.name,
                c.model,
                c.priority,
                c.lb.as_ref().map_or_else(|| "none".to_string(), Value::to_string)
            ));
        }
    }
    true
}

/// The cluster named `name`.
fn cluster_node<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    let clusters = v.get("static_resources")?.get("clusters")?.as_array()?;
    clusters.iter().find(|c| c.get("name").and_then(Value::as_str) == Some(name))
}

fn check_route(g: &Gateway, entry: &ModelEntry, cluster: &str, candidates: &[Candidate], subsets: bool, f: &mut Findings) {
    if let Some(caps) = g.capabilities.as_deref() {
        for p in candidates.iter().filter(|c| c.priority == 0) {
            for fb in candidates.iter().filter(|c| c.priority > 0) {
                let lost = caps.regressions(&p.model, &fb.model);
                if !lost.is_empty() {
                    f.warnings.push(format!(
                        "route {} (cluster {cluster}): fallback {} (priority {}) lacks {} that primary {} has{}",
                        entry.name,
                        fb.model,
                        fb.priority,
                        lost.join(", "),
                        p.model,
                        if subsets { " (the cluster's subset load balancer skips it for requests that need it)" } else { "" }
                    ));
                }
            }
        }
    }
    if let Some(pin) = entry.pin_versions {
        for c in candidates.iter().filter(|c| is_floating(&c.model)) {
            let msg = format!(
                "route {} (cluster {cluster}) pins model versions but priority {} sends the floating name {}",
                entry.name, c.priority, c.model
            );
            match pin {
                PinVersions::Warn => f.warnings.push(msg),
                PinVersions::Forbid => f.errors.push(msg),
            }
        }
    }
}

/// Every wasm plugin configuration (a JSON string under `configuration.value`) by role.
fn collect_plugins(v: &Value, gateways: &mut Vec<Gateway>, backends: &mut Vec<crate::config::BackendsConfig>) -> Result<(), String> {
    match v {
        Value::Object(map) => {
            if let Some(text) = map.get("configuration").and_then(|c| c.get("value")).and_then(Value::as_str) {
                if text.contains("\"role\"") {
                    match PluginConfig::parse(text.as_bytes())? {
                        PluginConfig::Gateway(g) => gateways.push(Gateway::new(g)?),
                        PluginConfig::Backend(b) => backends.push(b),
                        PluginConfig::Noop => {}
                    }
                }
            }
            for child in map.values() {
                collect_plugins(child, gateways, backends)?;
            }
        }
        Value::Array(items) => {
            for child in items {
                collect_plugins(child, gateways, backends)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// (route name, cluster) of every Envoy route that matches the gateway's route header exactly.
fn route_clusters(v: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    walk(v, &mut |node| {
        let Some(cluster) = node.get("route").and_then(|r| r.get("cluster")).and_then(Value::as_str) else { return };
        let headers = node.get("match").and_then(|m| m.get("headers")).and_then(Value::as_array);
        for h in headers.into_iter().flatten() {
            if h.get("name").and_then(Value::as_str) == Some(ROUTE_HEADER) {
                if let Some(exact) = h.get("string_match").and_then(|s| s.get("exact")).and_then(Value::as_str) {
                    out.push((exact.to_string(), cluster.to_string()));
                }
            }
        }
    });
    out
}

/// The endpoints of `cluster` with the model each sends upstream: endpoint metadata `model`, else
/// the backend's `model`, else the gateway's model name.
fn cluster_candidates(v: &Value, cluster: &str, backends: &[crate::config::BackendsConfig], gateway_model: &str) -> Vec<Candidate> {
    let mut out = Vec::new();
    walk(v, &mut |node| {
        if node.get("name").and_then(Value::as_str) != Some(cluster) {
            return;
        }
        let Some(endpoints) = node.get("load_assignment").and_then(|l| l.get("endpoints")).and_then(Value::as_array) else { return };
        for group in endpoints {
            let priority = group.get("priority").and_then(Value::as_u64).unwrap_or(0);
            for ep in group.get("lb_endpoints").and_then(Value::as_array).into_iter().flatten() {
                let meta = ep.get("metadata").and_then(|m| m.get("filter_metadata")).and_then(|m| m.get(crate::config::METADATA_NAMESPACE));
                let backend = meta.and_then(|m| m.get("backend")).and_then(Value::as_str);
                let model = meta
                    .and_then(|m| m.get("model"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .or_else(|| backend.and_then(|b| backends.iter().find_map(|cfg| cfg.backends.get(b)).and_then(|b| b.model.clone())))
                    .unwrap_or_else(|| gateway_model.to_string());
                let lb = ep.get("metadata").and_then(|m| m.get("filter_metadata")).and_then(|m| m.get("envoy.lb")).cloned();
                out.push(Candidate { priority, model, lb });
            }
        }
    });
    out
}

fn walk(v: &Value, f: &mut impl FnMut(&Value)) {
    f(v);
    match v {
        Value::Object(map) => map.values().for_each(|c| walk(c, f)),
        Value::Array(items) => items.iter().for_each(|c| walk(c, f)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floating_names() {
        for floating in ["claude-3-5-haiku-latest", "gpt-4o-mini", "gpt-4o", "llama3.2", "gemini-2.5-flash", "mistral-large-latest", "qwen:latest"] {
            assert!(is_floating(floating), "{floating}");
        }
        for pinned in [
            "gpt-4o-mini-2024-07-18",
            "claude-3-5-haiku-20241022",
            "command-r7b-12-2024",
            "us.amazon.nova-micro-v1:0",
            "gemini-1.5-flash-002",
            "claude-3-5-sonnet-v2@20241022",
            "gpt-4-0125-preview-2024",
        ] {
            assert!(!is_floating(pinned), "{pinned}");
        }
    }

    fn envoy(gateway: &str) -> Value {
        let gw = serde_json::to_string(gateway).unwrap();
        let text = format!(
            r#"{{"static_resources": {{
              "listeners": [{{"filter_chains": [{{"filters": [{{"typed_config": {{
                "route_config": {{"virtual_hosts": [{{"routes": [
                  {{"match": {{"prefix": "/", "headers": [{{"name": "x-switchyard-route", "string_match": {{"exact": "chat"}}}}]}},
                   "route": {{"cluster": "route_chat"}}}},
                  {{"match": {{"prefix": "/", "headers": [{{"name": "x-switchyard-route", "string_match": {{"exact": "pinned"}}}}]}},
                   "route": {{"cluster": "route_pinned"}}}}]}}]}},
                "http_filters": [{{"typed_config": {{"config": {{"configuration": {{"value": {gw}}}}}}}}}]}}}}]}}]}}],
              "clusters": [
                {{"name": "route_chat", "load_assignment": {{"endpoints": [
                  {{"priority": 0, "lb_endpoints": [{{"metadata": {{"filter_metadata": {{"switchyard": {{"backend": "o", "model": "gpt-4o-mini"}}}}}}}}]}},
                  {{"priority": 1, "lb_endpoints": [{{"metadata": {{"filter_metadata": {{"switchyard": {{"backend": "c", "model": "command-r7b-12-2024"}}}}}}}}]}}]}}}},
                {{"name": "route_pinned", "load_assignment": {{"endpoints": [
                  {{"priority": 0, "lb_endpoints": [{{"metadata": {{"filter_metadata": {{"switchyard": {{"backend": "o", "model": "gpt-4o-mini-2024-07-18"}}}}}}}}]}},
                  {{"priority": 1, "lb_endpoints": [{{"metadata": {{"filter_metadata": {{"switchyard": {{"backend": "a", "model": "claude-3-5-haiku-latest"}}}}}}}}]}}]}}}}]
            }}}}"#
        );
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn fallbacks_that_lose_capabilities_and_floating_names() {
        let gw = r#"{"role":"gateway","models":[{"name":"chat"},{"name":"pinned","pin_versions":"warn"},{"name":"orphan"}],
                     "capabilities":{"gpt-4o-mini":{"vision":true,"tools":true,"context_window":128000},
                                     "command-r7b-12-2024":{"vision":false,"tools":true,"context_window":8192}}}"#;
        let f = check_envoy(&envoy(gw)).unwrap();
        assert!(f.errors.is_empty(), "{f:?}");
        assert_eq!(f.warnings.len(), 6, "{f:?}");
        assert!(f.warnings.iter().any(|w| w.contains("fallback command-r7b-12-2024 (priority 1) lacks vision, context_window that primary gpt-4o-mini has")));
        // Both routes' candidates differ (chat: images and context; pinned: context only), and
        // neither cluster has a subset load balancer; the warning says what to write.
        assert!(f.warnings.iter().any(|w| w.starts_with("route chat (cluster route_chat): its candidates differ")
            && w.contains(r#"command-r7b-12-2024 (priority 1): {"context":["8k"],"json_schema":"true","reasoning":"true","tools":"true","vision":"false"}"#)));
        assert!(f.warnings.iter().any(|w| w.starts_with("route pinned (cluster route_pinned): its candidates differ")));
        assert!(f.warnings.iter().any(|w| w.starts_with("no envoy.filters.http.header_to_metadata rule turns x-switchyard-needs-context")));
        assert!(f.warnings.iter().any(|w| w.contains("route pinned") && w.contains("floating name claude-3-5-haiku-latest")));
        assert!(f.warnings.iter().any(|w| w.contains("model orphan: no Envoy route")));
        // Forbidden: the same finding is an error.
        let f = check_envoy(&envoy(&gw.replace(r#""pin_versions":"warn""#, r#""pin_versions":"forbid""#))).unwrap();
        assert_eq!(f.errors.len(), 1, "{f:?}");
        // No capabilities, no pinning: nothing to say about these routes.
        let f = check_envoy(&envoy(r#"{"role":"gateway","models":[{"name":"chat"},{"name":"pinned"}]}"#)).unwrap();
        assert_eq!(f, Findings::default());
        assert!(check_envoy(&serde_json::json!({"static_resources": {}})).is_err());
    }

    #[test]
    fn a_complete_subset_configuration_checks_clean_and_a_wrong_one_is_named() {
        let gw = r#"{"role":"gateway","models":[{"name":"chat"}],
                     "capabilities":{"command-r7b-12-2024":{"vision":false,"tools":true,"context_window":8192}}}"#;
        let mut doc = envoy(gw);
        let clusters = doc["static_resources"]["clusters"].as_array_mut().unwrap();
        clusters.retain(|c| c["name"] == "route_chat");
        let selectors: Vec<Value> = capabilities::subset_selectors().into_iter().map(|k| serde_json::json!({"keys": k})).collect();
        clusters[0]["lb_subset_config"] = serde_json::json!({"fallback_policy": "ANY_ENDPOINT", "list_as_any": true, "subset_selectors": selectors});
        let caps = match PluginConfig::parse(gw.as_bytes()).unwrap() {
            PluginConfig::Gateway(g) => Gateway::new(g).unwrap().capabilities.unwrap(),
            _ => unreachable!(),
        };
        for (i, model) in ["gpt-4o-mini", "command-r7b-12-2024"].iter().enumerate() {
            clusters[0]["load_assignment"]["endpoints"][i]["lb_endpoints"][0]["metadata"]["filter_metadata"]["envoy.lb"] =
                capabilities::lb_metadata(caps.get(model));
        }
        let rules: Vec<Value> = capabilities::LB_KEYS
            .iter()
            .map(|k| serde_json::json!({"header": format!("x-switchyard-needs-{k}"), "on_header_present": {"metadata_namespace": "envoy.lb", "key": k}}))
            .collect();
        doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"name": "envoy.filters.http.header_to_metadata", "typed_config": {"request_rules": rules}}));
        let f = check_envoy(&doc).unwrap();
        // Only the fallback's missing capabilities remain (a fact of the route, not a mistake).
        assert_eq!(f.warnings.len(), 1, "{f:?}");
        assert!(f.warnings[0].contains("lacks vision, context_window"), "{f:?}");
        // The text-only endpoint claiming images, and a selector missing: both named.
        let mut wrong = doc.clone();
        wrong["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][1]["lb_endpoints"][0]["metadata"]["filter_metadata"]["envoy.lb"]["vision"] =
            Value::from("true");
        wrong["static_resources"]["clusters"][0]["lb_subset_config"]["subset_selectors"].as_array_mut().unwrap().pop();
        let f = check_envoy(&wrong).unwrap();
        assert!(f.warnings.iter().any(|w| w.contains("endpoint command-r7b-12-2024 (priority 1) has envoy.lb metadata") && w.contains(r#""vision":"false""#)), "{f:?}");
        assert!(f.warnings.iter().any(|w| w.contains("lacks 1 of the 31 subset_selectors")), "{f:?}");
    }
}
