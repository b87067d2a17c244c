//! `switchyard render` and `switchyard check` on gateway files (the binary, as an operator runs it).
//!
//! Golden files: envoy/demo.yaml and envoy/envoy.yaml are the rendered examples/demo.yaml and
//! examples/gateway.yaml, and tests/golden/ holds the other examples' renderings; a test fails when
//! one drifts. After changing the renderer or an example on purpose, regenerate them with
//! `SWITCHYARD_UPDATE_GOLDEN=1 cargo test --test render` and review the diff.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard")).args(args).current_dir(repo()).output().expect("run switchyard");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// (example, target, golden file)
const GOLDEN: &[(&str, &str, &str)] = &[
    ("examples/demo.yaml", "envoy", "envoy/demo.yaml"),
    ("examples/gateway.yaml", "envoy", "envoy/envoy.yaml"),
    ("examples/routing.yaml", "envoy", "tests/golden/routing.envoy.yaml"),
    ("examples/routing.yaml", "istio", "tests/golden/routing.istio.yaml"),
    ("examples/istio.yaml", "istio", "tests/golden/istio.istio.yaml"),
];

#[test]
fn rendered_files_match_their_examples() {
    let update = std::env::var("SWITCHYARD_UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let mut drift = Vec::new();
    for (example, target, golden) in GOLDEN {
        let (ok, out, err) = run(&["render", example, "--target", target]);
        assert!(ok, "render {example} --target {target}: {err}");
        let path = repo().join(golden);
        if update {
            std::fs::write(&path, &out).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if want != out {
            drift.push(format!(
                "{golden} is not what `switchyard render {example} --target {target}` writes: edit {example}, not {golden}, then run \
                 `cargo run --bin switchyard -- render {example} --target {target} > {golden}` (or SWITCHYARD_UPDATE_GOLDEN=1 cargo test --test render). \
                 What every rendering shares (stats tags, access-log fields, listener and retry settings) is in src/render/envoy.rs"
            ));
        }
    }
    assert!(drift.is_empty(), "{}", drift.join("\n"));
}

fn envoy_doc(example: &str) -> Value {
    let (ok, out, err) = run(&["render", example, "--target", "envoy"]);
    assert!(ok, "{err}");
    serde_yaml::from_str(&out).unwrap()
}

fn walk<'a>(v: &'a Value, f: &mut impl FnMut(&'a Value)) {
    f(v);
    match v {
        Value::Object(m) => m.values().for_each(|c| walk(c, f)),
        Value::Array(a) => a.iter().for_each(|c| walk(c, f)),
        _ => {}
    }
}

/// Every plugin configuration (role → parsed JSON) in a rendered document.
#[test]
fn a_fleet_ledger_renders_the_rate_limit_filters_and_service() {
    let text = format!("{BASE}auth: {{ ledger: fleet, keys: [] }}\nfleet: {{ rate_limit_service: \"rls.internal:8081\", failure_mode_deny: false }}\n");
    let path = write_tmp("fleet.yaml", &text);
    let (ok, out, err) = run(&["render", path.to_str().unwrap()]);
    assert!(ok, "{err}");
    let doc: Value = serde_yaml::from_str(&out).unwrap();
    let hcm = &doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let names: Vec<&str> = hcm["http_filters"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["switchyard.gateway", "envoy.filters.http.ratelimit", "envoy.filters.http.ratelimit.budget", "envoy.filters.http.router"]);
    for f in &hcm["http_filters"].as_array().unwrap()[1..3] {
        assert_eq!(f["typed_config"]["failure_mode_deny"], false);
    }
    let per_filter = &hcm["route_config"]["virtual_hosts"][0]["typed_per_filter_config"];
    assert!(per_filter["envoy.filters.http.ratelimit"]["rate_limits"].as_array().unwrap().len() >= 6);
    assert!(per_filter["envoy.filters.http.ratelimit.budget"]["rate_limits"].as_array().unwrap().len() >= 4);
    assert_eq!(hcm["local_reply_config"]["mappers"].as_array().unwrap().len(), 3);
    let rls: Vec<&Value> = doc["static_resources"]["clusters"].as_array().unwrap().iter().filter(|c| c["name"] == "switchyard_rls").collect();
    assert_eq!(rls.len(), 1);
    assert_eq!(rls[0]["type"], "STRICT_DNS");
    let addr = &rls[0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"];
    assert_eq!((addr["address"].as_str(), addr["port_value"].as_i64()), (Some("rls.internal"), Some(8081)));
    // Istio: not rendered yet, and says so rather than dropping the limits.
    let text = format!("{text}module: {{ url: \"https://example.com/s.wasm\", sha256: \"{}\" }}\n", "a".repeat(64));
    let path = write_tmp("fleet-istio.yaml", &text);
    let (ok, _, err) = run(&["render", path.to_str().unwrap(), "--target", "istio"]);
    assert!(!ok && err.contains("fleet: --target istio"), "{err}");
}

#[test]
fn cache_and_guardrails_at_the_top_reach_the_gateway_plugin() {
    let text = format!("{BASE}cache: {{ scope: global, ttl_seconds: 60 }}\nguardrails: {{ detectors: {{ email: redact }} }}\n");
    let path = write_tmp("top-cache.yaml", &text);
    let (ok, out, err) = run(&["render", path.to_str().unwrap()]);
    assert!(ok, "{err}");
    let doc: Value = serde_yaml::from_str(&out).unwrap();
    let [gateway] = &plugins(&doc, "gateway")[..] else { panic!("one gateway plugin") };
    assert_eq!(gateway["cache"], serde_json::json!({"scope": "global", "ttl_seconds": 60}));
    assert_eq!(gateway["guardrails"]["detectors"]["email"], "redact");
}

fn plugins(doc: &Value, role: &str) -> Vec<Value> {
    let mut out = Vec::new();
    walk(doc, &mut |n| {
        if let Some(s) = n.get("configuration").and_then(|c| c.get("value")).and_then(Value::as_str) {
            if let Ok(p) = serde_json::from_str::<Value>(s) {
                if p["role"] == role {
                    out.push(p);
                }
            }
        }
    });
    out
}

#[test]
fn every_model_has_a_route_and_a_cluster_and_every_backend_is_reachable() {
    for example in ["examples/demo.yaml", "examples/gateway.yaml", "examples/routing.yaml"] {
        let doc = envoy_doc(example);
        let hcm = &doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        let routes = hcm["route_config"]["virtual_hosts"][0]["routes"].as_array().unwrap();
        let clusters = doc["static_resources"]["clusters"].as_array().unwrap();
        let gateways = plugins(&doc, "gateway");
        assert_eq!(gateways.len(), 1, "{example}: one gateway filter");
        let source: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(repo().join(example)).unwrap()).unwrap();
        let models = gateways[0]["models"].as_array().unwrap();
        assert_eq!(models.len(), source["models"].as_sequence().unwrap().len(), "{example}: every model entry reaches the gateway");
        for m in models {
            let route = m.get("route").or(m.get("name")).and_then(Value::as_str).unwrap();
            let r = routes
                .iter()
                .find(|r| r["match"]["headers"][0]["string_match"]["exact"] == route)
                .unwrap_or_else(|| panic!("{example}: model {m} has no route {route}"));
            let cluster = r["route"]["cluster"].as_str().unwrap();
            let c = clusters.iter().find(|c| c["name"] == cluster).unwrap_or_else(|| panic!("{example}: no cluster {cluster}"));
            assert_eq!(c["load_assignment"]["cluster_name"], cluster);
            // Priorities count up from 0, and every endpoint names a backend of the backend filter.
            for (i, group) in c["load_assignment"]["endpoints"].as_array().unwrap().iter().enumerate() {
                assert_eq!(group["priority"].as_u64(), Some(i as u64), "{example}: {cluster}");
                assert!(!group["lb_endpoints"].as_array().unwrap().is_empty());
            }
        }
        // The last route answers models without a route with an OpenAI-shaped error.
        assert!(routes.last().unwrap()["direct_response"]["body"]["inline_string"].as_str().unwrap().contains("no_route"));
        let backends = plugins(&doc, "backend");
        assert!(!backends.is_empty());
        for b in &backends {
            assert_eq!(b, &backends[0], "{example}: every cluster has the same backend filter configuration");
        }
        for name in backends[0]["backends"].as_object().unwrap().keys() {
            let mut used = false;
            walk(&doc, &mut |n| used |= n.get("switchyard").and_then(|s| s.get("backend")).and_then(Value::as_str) == Some(name));
            assert!(used, "{example}: backend {name} is not reachable from any model");
        }
        // TLS endpoints: SNI and the certificate's DNS name are the provider's host.
        for c in clusters {
            for m in c["transport_socket_matches"].as_array().into_iter().flatten() {
                let tls = &m["transport_socket"]["typed_config"];
                let sni = tls["sni"].as_str().unwrap();
                assert_eq!(tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"][0]["matcher"]["exact"], sni);
                let host = backends[0]["backends"][m["name"].as_str().unwrap()]["host"].as_str();
                assert_eq!(host, Some(sni), "{example}: SNI of {}", m["name"]);
            }
        }
    }
}

#[test]
fn the_routing_example_renders_its_routing_needs() {
    let doc = envoy_doc("examples/routing.yaml");
    let hcm = &doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let filters: Vec<&str> = hcm["http_filters"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(filters, ["switchyard.gateway", "envoy.filters.http.header_to_metadata", "envoy.filters.http.router"]);
    let clusters = doc["static_resources"]["clusters"].as_array().unwrap();
    let cluster = |n: &str| clusters.iter().find(|c| c["name"] == n).unwrap();
    // gpt-4o-mini falls back to a model without vision: endpoints say so for the subset balancer.
    let gpt = cluster("route_gpt-4o-mini");
    let eps = gpt["load_assignment"]["endpoints"].as_array().unwrap();
    assert_eq!(eps[0]["lb_endpoints"][0]["metadata"]["filter_metadata"]["envoy.lb"]["vision"], "true");
    assert_eq!(eps[2]["lb_endpoints"][0]["metadata"]["filter_metadata"]["envoy.lb"]["vision"], "false");
    // The context classes each window holds (128k for Cohere's, 200k too for Claude's).
    assert_eq!(eps[2]["lb_endpoints"][0]["metadata"]["filter_metadata"]["envoy.lb"]["context"], serde_json::json!(["8k", "16k", "32k", "128k"]));
    assert_eq!(eps[1]["lb_endpoints"][0]["metadata"]["filter_metadata"]["envoy.lb"]["context"][4], "200k");
    let sels = gpt["lb_subset_config"]["subset_selectors"].as_array().unwrap();
    assert_eq!(sels.len(), 31);
    assert!(sels.iter().any(|s| s["keys"] == serde_json::json!(["context", "tools", "vision"])));
    assert_eq!(gpt["lb_subset_config"]["fallback_policy"], "ANY_ENDPOINT");
    assert_eq!(gpt["lb_subset_config"]["list_as_any"], true);
    // Magistral has one candidate: nothing to skip, no subset balancer.
    assert!(cluster("route_magistral").get("lb_subset_config").is_none());
    // The weighted split shares priority 0.
    let balanced = &cluster("route_balanced")["load_assignment"]["endpoints"];
    assert_eq!(balanced[0]["lb_endpoints"].as_array().unwrap().len(), 2);
    assert_eq!(balanced[0]["lb_endpoints"][1]["load_balancing_weight"], 50);
    // The hedged route hedges; the others do not.
    let routes = hcm["route_config"]["virtual_hosts"][0]["routes"].as_array().unwrap();
    for r in routes.iter().filter(|r| r.get("route").is_some()) {
        let hedged = r["route"]["hedge_policy"]["hedge_on_per_try_timeout"] == true;
        assert_eq!(hedged, r["route"]["cluster"] == "route_claude-haiku", "{r}");
    }
    // A three-level route retries at least twice.
    assert_eq!(routes[0]["route"]["retry_policy"]["num_retries"], 2);
    // The module comes from its URL with the pinned digest, through its own cluster.
    let vm = &hcm["http_filters"][0]["typed_config"]["config"]["vm_config"];
    assert_eq!(vm["code"]["remote"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(vm["code"]["remote"]["http_uri"]["cluster"], "switchyard_module");
    assert!(cluster("switchyard_module")["transport_socket"]["typed_config"]["sni"] == "artifacts.example.com");
    // Credentials are only named: each backend's variables are passed into the VM.
    let keys: Vec<&str> = vm["environment_variables"]["host_env_keys"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    for k in ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "COHERE_API_KEY", "VERTEX_ACCESS_TOKEN", "MISTRAL_API_KEY"] {
        assert!(keys.contains(&k), "{k} in {keys:?}");
    }
    // Bedrock is signed by Envoy (aws.signer: envoy): its keys never enter the VM.
    assert!(!keys.iter().any(|k| k.starts_with("AWS_")), "{keys:?}");
    let bedrock = cluster("route_balanced")["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["http_filters"][1]["typed_config"]["extension_config"].clone();
    assert_eq!(bedrock["name"], "envoy.filters.http.aws_request_signing");
    assert_eq!(bedrock["typed_config"]["region"], "us-east-1");
}

fn write_tmp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("switchyard-render-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const BASE: &str = "backends:\n  openai: { schema: openai, credential: { env: OPENAI_API_KEY } }\nmodels:\n- { name: m, candidates: [openai/gpt-4o-mini] }\n";

#[test]
fn check_names_the_field_and_says_what_to_do() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("unknown-backend", "backends:\n  openai: { schema: openai }\nmodels:\n- { name: m, candidates: [opneai/gpt-4o-mini] }\n",
         &["models[0] (m).candidates[0]", "unknown backend \"opneai\"", "one of: openai"]),
        ("no-candidates", "backends:\n  openai: { schema: openai }\nmodels:\n- { name: m }\n",
         &["models[0] (m)", "add `candidates:`"]),
        ("typo", &format!("{BASE}listne: 1.2.3.4:5\n"), &["listne: unknown field", "listen"]),
        ("bad-address", "backends:\n  local: { schema: ollama, address: \"localhost:99999\" }\nmodels:\n- { name: m, candidates: [local] }\n",
         &["backends.local.address", "1 to 65535"]),
        ("no-host", "backends:\n  local: { schema: ollama }\nmodels:\n- { name: m, candidates: [local] }\n",
         &["backends.local", "set `host`", "`address`"]),
        ("pattern", "backends:\n  openai: { schema: openai }\nmodels:\n- { name: \"gpt-*\", candidates: [openai] }\n",
         &["models[0] (gpt-*).route", "needs `route:`"]),
        ("gap", "backends:\n  openai: { schema: openai }\nmodels:\n- name: m\n  candidates: [{ backend: openai, priority: 1 }]\n",
         &["candidates[0].priority", "without gaps"]),
        ("bad-schema", "backends:\n  x: { schema: opanai }\nmodels:\n- { name: m, candidates: [x] }\n",
         &["backends.x", "opanai"]),
        ("twice", "backends:\n  openai: { schema: openai }\nmodels:\n- { name: m, candidates: [openai] }\n- { name: n, route: m, candidates: [openai] }\n",
         &["models[1] (n).candidates", "already has candidates"]),
        ("inline-secret", "backends:\n  openai: { schema: openai, credential: { value: sk-proj-abcdefghijklmnopqrstuvwxyz } }\nmodels:\n- { name: m, candidates: [openai] }\n",
         &["backends.openai.credential", "credential: {env: VARIABLE}"]),
        ("secret-anywhere", &format!("{BASE}gateway:\n  note: sk-ant-api03-abcdefghijklmnopqrstuvwxyz\n"),
         &[".gateway.note", "looks like a credential"]),
        ("gateway-check", &format!("{BASE}gateway:\n  max_request_body_bytes: 0\n"), &["max_request_body_bytes must be positive"]),
        ("url-without-digest", &format!("{BASE}module: {{ url: \"http://127.0.0.1:1/x.wasm\" }}\n"), &["module.sha256", "pinned sha256"]),
        ("sds-relative", "backends:\n  o: { schema: openai, host: api.openai.com, credential: { sds: secrets/o.yaml } }\nmodels:\n- { name: m, candidates: [o] }\n",
         &["backends.o.credential.sds", "absolute path"]),
        ("sds-no-host", "backends:\n  o: { schema: ollama, address: \"127.0.0.1:1\", credential: { sds: /s/o.yaml } }\nmodels:\n- { name: m, candidates: [o] }\n",
         &["backends.o.host", ":authority"]),
        ("sds-same-host", "backends:\n  a: { schema: openai, host: h.example, credential: { sds: /s/a.yaml } }\n  b: { schema: openai, host: h.example, credential: { sds: /s/b.yaml } }\nmodels:\n- { name: m, candidates: [a, b] }\n",
         &["backends.b.host", "its own host"]),
        ("sds-and-env", "backends:\n  a: { schema: openai, credential: { sds: /s/a.yaml, env: A } }\nmodels:\n- { name: m, candidates: [a] }\n",
         &["backends.a.credential", "either env or sds"]),
        ("fleet-without-service", &format!("{BASE}auth: {{ ledger: fleet, keys: [] }}\n"),
         &["auth.ledger", "fleet: {rate_limit_service: HOST:PORT}"]),
        ("fleet-without-ledger", &format!("{BASE}fleet: {{ rate_limit_service: \"127.0.0.1:8081\" }}\n"),
         &["fleet", "ledger: fleet"]),
        ("fleet-bad-service", &format!("{BASE}auth: {{ ledger: fleet, keys: [] }}\nfleet: {{ rate_limit_service: rls }}\n"),
         &["fleet.rate_limit_service", "host:port"]),
        ("name-is-keyed-host", "backends:\n  o: { schema: openai, host: api.openai.com, credential: { sds: /s/o.yaml } }\n  api.openai.com: { schema: ollama, address: \"127.0.0.1:1\" }\nmodels:\n- { name: m, candidates: [o, api.openai.com] }\n",
         &["backends.api.openai.com", "named like backend o's host"]),
        ("cache-twice", &format!("{BASE}cache: {{ scope: global }}\ngateway:\n  cache: {{ scope: key }}\n"),
         &["gateway.cache", "also given at the top"]),
        ("cache-check", &format!("{BASE}cache: {{ scope: everybody }}\n"), &["everybody"]),
        ("aws-file-without-envoy", "backends:\n  b: { schema: bedrock, host: bedrock-runtime.us-east-1.amazonaws.com, aws: { credentials_file: /etc/aws/credentials } }\nmodels:\n- { name: m, candidates: [b] }\n",
         &["backends.b.aws.credentials_file", "add `signer: envoy`"]),
        ("aws-profile-without-envoy", "backends:\n  b: { schema: bedrock, host: bedrock-runtime.us-east-1.amazonaws.com, aws: { signer: filter, profile: prod } }\nmodels:\n- { name: m, candidates: [b] }\n",
         &["backends.b.aws.profile", "add `signer: envoy`"]),
        ("aws-envoy-with-env-names", "backends:\n  b: { schema: bedrock, host: bedrock-runtime.us-east-1.amazonaws.com, aws: { signer: envoy, access_key_id_env: K, session_token_env: T } }\nmodels:\n- { name: m, candidates: [b] }\n",
         &["backends.b.aws.access_key_id_env", "backends.b.aws.session_token_env", "Envoy's credential providers supply the keys"]),
        ("aws-envoy-with-credential", "backends:\n  b: { schema: bedrock, host: bedrock-runtime.us-east-1.amazonaws.com, credential: { env: AWS_BEARER_TOKEN_BEDROCK }, aws: { signer: envoy } }\nmodels:\n- { name: m, candidates: [b] }\n",
         &["backends.b.credential", "remove the credential"]),
        ("aws-bad-signer", "backends:\n  b: { schema: bedrock, host: bedrock-runtime.us-east-1.amazonaws.com, aws: { signer: sdk } }\nmodels:\n- { name: m, candidates: [b] }\n",
         &["backends.b.aws.signer", "`filter`", "`envoy`"]),
        ("aws-relative-file", "backends:\n  b: { schema: bedrock, host: bedrock-runtime.us-east-1.amazonaws.com, aws: { signer: envoy, credentials_file: aws/credentials } }\nmodels:\n- { name: m, candidates: [b] }\n",
         &["backends.b.aws.credentials_file", "absolute path"]),
        ("aws-envoy-not-bedrock", "backends:\n  o: { schema: openai, aws: { signer: envoy } }\nmodels:\n- { name: m, candidates: [o] }\n",
         &["backends.o", "only applies to the bedrock schema"]),
        ("aws-envoy-no-region", "backends:\n  b: { schema: bedrock, host: \"bedrock.internal:8443\", aws: { signer: envoy } }\nmodels:\n- { name: m, candidates: [b] }\n",
         &["backends.b", "aws.region is not set"]),
        ("aws-envoy-same-host", "backends:\n  a: { schema: bedrock, host: bedrock-runtime.us-east-1.amazonaws.com, aws: { signer: envoy } }\n  b: { schema: bedrock, host: bedrock-runtime.us-east-1.amazonaws.com }\nmodels:\n- { name: m, candidates: [a, b] }\n",
         &["backends.a.host", "backend b has the same host", "its own host"]),
        ("floating-forbidden", "backends:\n  openai: { schema: openai }\nmodels:\n- { name: m, pin_versions: forbid, candidates: [openai/gpt-4o-mini] }\n",
         &["floating name gpt-4o-mini"]),
    ];
    for (name, text, wants) in cases {
        let path = write_tmp(&format!("{name}.yaml"), text);
        let (ok, _, err) = run(&["check", path.to_str().unwrap()]);
        assert!(!ok, "{name}: check accepted it");
        for w in *wants {
            assert!(err.contains(w), "{name}: {w:?} not in {err}");
        }
        // render refuses what check refuses (except checks of the rendered Envoy configuration).
        if *name != "floating-forbidden" {
            let (ok, out, _) = run(&["render", path.to_str().unwrap()]);
            assert!(!ok && out.is_empty(), "{name}: render wrote {out}");
        }
    }
    let path = write_tmp("ok.yaml", BASE);
    let (ok, out, err) = run(&["check", path.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("gateway file is valid: 1 routes, 1 backends (0 warnings)"), "{out}");
}

#[test]
fn rendered_output_holds_no_secret_values() {
    // The renderer never reads the environment: with canary values set, none appears.
    let canary = "sk-canary-0123456789abcdefghij";
    for (example, target, _) in GOLDEN {
        let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["render", example, "--target", target])
            .current_dir(repo())
            .env("OPENAI_API_KEY", canary)
            .env("ANTHROPIC_API_KEY", canary)
            .env("AWS_SECRET_ACCESS_KEY", canary)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && !text.contains(canary), "{example}");
        for token in text.split(|c: char| c.is_whitespace() || "\"',{}[]:".contains(c)) {
            assert!(!switchyard::render::looks_like_secret(token), "{example} --target {target}: {token}");
        }
    }
}

#[test]
fn the_examples_check_clean() {
    for example in ["examples/demo.yaml", "examples/gateway.yaml"] {
        let (ok, out, err) = run(&["check", example]);
        assert!(ok && out.contains("(0 warnings)"), "{example}: {out}{err}");
    }
    // The routing example's gpt-4o-mini falls back to a model without vision: a warning.
    let (ok, _, err) = run(&["check", "examples/routing.yaml"]);
    assert!(ok, "{err}");
    assert!(err.contains("fallback command-r7b-12-2024 (priority 2) lacks vision"), "{err}");
}

#[test]
fn a_reloadable_rendering_writes_a_bootstrap_and_watched_files() {
    let dir = std::env::temp_dir().join(format!("switchyard-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ok, out, err) = run(&["render", "examples/demo.yaml", "--reloadable", dir.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("listeners.yaml"), "{out}");
    let boot: Value = serde_yaml::from_str(&std::fs::read_to_string(dir.join("envoy.yaml")).unwrap()).unwrap();
    let lds = &boot["dynamic_resources"]["lds_config"]["path_config_source"];
    assert_eq!(Path::new(lds["path"].as_str().unwrap()), std::fs::canonicalize(&dir).unwrap().join("listeners.yaml"));
    assert!(lds["watched_directory"]["path"].is_string());
    let listeners: Value = serde_yaml::from_str(&std::fs::read_to_string(dir.join("listeners.yaml")).unwrap()).unwrap();
    assert_eq!(listeners["resources"][0]["@type"], "type.googleapis.com/envoy.config.listener.v3.Listener");
    let clusters: Value = serde_yaml::from_str(&std::fs::read_to_string(dir.join("clusters.yaml")).unwrap()).unwrap();
    assert_eq!(clusters["resources"].as_array().unwrap().len(), 17);
    // The same vm_id as the static rendering: shared data (limits, budgets, routing scores) is the same namespace.
    let demo = envoy_doc("examples/demo.yaml");
    let vm = |d: &Value| {
        let mut id = None;
        walk(d, &mut |n| {
            if id.is_none() {
                id = n.get("vm_id").cloned();
            }
        });
        id
    };
    assert_eq!(vm(&listeners), vm(&demo));
    let _ = std::fs::remove_dir_all(&dir);
}

fn istio_docs(example: &str) -> Vec<Value> {
    let (ok, out, err) = run(&["render", example, "--target", "istio"]);
    assert!(ok, "{err}");
    serde_yaml::Deserializer::from_str(&out).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect()
}

fn dns_label(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') && !s.starts_with('-') && !s.ends_with('-')
}

/// The EnvoyFilter's checks shared by every module source: patches, ECDS references, routes and
/// clusters, both roles' extension configurations with one `vm_config`. Returns that `vm_config`.
fn check_istio_envoy_filter(example: &str, docs: &[Value]) -> Value {
    let source: Value = serde_yaml::from_str(&std::fs::read_to_string(repo().join(example)).unwrap()).unwrap();
    let ef = docs.iter().find(|d| d["kind"] == "EnvoyFilter").unwrap();
    assert_eq!(ef["spec"]["workloadSelector"]["labels"], serde_json::json!({"istio": "ingressgateway"}));
    let patches = ef["spec"]["configPatches"].as_array().unwrap();
    for p in patches {
        let op = p["patch"]["operation"].as_str().unwrap();
        match p["applyTo"].as_str().unwrap() {
            "CLUSTER" => assert_eq!(op, "ADD"),
            "HTTP_ROUTE" => assert_eq!(op, "INSERT_FIRST"),
            "HTTP_FILTER" => {
                assert_eq!(op, "INSERT_BEFORE");
                assert_eq!(p["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"], "envoy.filters.http.router");
            }
            // Istio ignores the match of an extension configuration and applies only ADD.
            "EXTENSION_CONFIG" => {
                assert_eq!(op, "ADD");
                assert!(p.get("match").is_none());
                continue;
            }
            other => panic!("unexpected applyTo {other}"),
        }
        assert_eq!(p["match"]["context"], "GATEWAY", "{example}");
    }
    // Two extension configurations, the roles, with the same vm_config (one VM), defined before
    // anything refers to them.
    let exts: Vec<&Value> = patches.iter().filter(|p| p["applyTo"] == "EXTENSION_CONFIG").map(|p| &p["patch"]["value"]).collect();
    assert_eq!(exts.iter().map(|e| e["name"].as_str().unwrap()).collect::<Vec<_>>(), ["switchyard.gateway", "switchyard.backend"]);
    assert!(patches[..2].iter().all(|p| p["applyTo"] == "EXTENSION_CONFIG"));
    let roles: Vec<Value> = exts
        .iter()
        .map(|e| {
            let cfg = &e["typed_config"]["config"];
            assert_eq!(e["typed_config"]["@type"], "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm");
            assert_eq!(cfg["root_id"], "switchyard");
            assert_eq!(cfg["fail_open"], false);
            assert_eq!(cfg["vm_config"], exts[0]["typed_config"]["config"]["vm_config"], "{example}: one vm_config for both roles");
            serde_json::from_str::<Value>(cfg["configuration"]["value"].as_str().unwrap()).unwrap()["role"].clone()
        })
        .collect();
    assert_eq!(roles, ["gateway", "backend"]);
    assert_eq!(exts[0]["typed_config"]["config"]["allow_on_headers_stop_iteration"], true);
    let vm = exts[0]["typed_config"]["config"]["vm_config"].clone();
    assert_eq!(vm["vm_id"], "switchyard");
    // Fetched by istio-agent, not by Envoy: no cluster of its own.
    assert_eq!(vm["code"]["remote"]["http_uri"]["cluster"], "_");
    // Nothing but the extension configurations holds a vm_config: every filter is a reference.
    let mut vms = 0;
    walk(ef, &mut |n| vms += usize::from(n.get("vm_config").is_some()));
    assert_eq!(vms, 2);
    let ecds = |f: &Value, name: &str| {
        assert_eq!(f["name"], name);
        assert!(f.get("typed_config").is_none());
        let cd = &f["config_discovery"];
        assert_eq!(cd["config_source"]["ads"], serde_json::json!({}));
        assert_eq!(cd["config_source"]["initial_fetch_timeout"], "0s");
        let types = cd["type_urls"].as_array().unwrap();
        assert!(types.contains(&Value::from("type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm")));
        // What istio-agent puts in place of a module it could not fetch.
        assert!(types.contains(&Value::from("type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC")));
    };
    // The gateway filter first (it sets the headers header_to_metadata reads), both before the router.
    let filters: Vec<&Value> = patches.iter().filter(|p| p["applyTo"] == "HTTP_FILTER").map(|p| &p["patch"]["value"]).collect();
    ecds(filters[0], "switchyard.gateway");
    let plugin: Value = serde_json::from_str(exts[0]["typed_config"]["config"]["configuration"]["value"].as_str().unwrap()).unwrap();
    let models: Vec<Value> = plugin["models"].as_array().unwrap().clone();
    assert_eq!(models.len(), source["models"].as_array().unwrap().len());
    let clusters: Vec<&Value> = patches.iter().filter(|p| p["applyTo"] == "CLUSTER").map(|p| &p["patch"]["value"]).collect();
    let routes: Vec<&Value> = patches.iter().filter(|p| p["applyTo"] == "HTTP_ROUTE").map(|p| &p["patch"]["value"]).collect();
    for m in &models {
        let route = m.get("route").or(m.get("name")).and_then(Value::as_str).unwrap();
        let r = routes.iter().find(|r| r["match"]["headers"][0]["string_match"]["exact"] == route).unwrap_or_else(|| panic!("no route {route}"));
        assert!(clusters.iter().any(|c| c["name"] == r["route"]["cluster"]), "no cluster for {route}");
    }
    // Every cluster is a route's, its first upstream filter the backend role by reference.
    assert_eq!(clusters.len(), routes.len());
    for c in &clusters {
        let up = &c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["http_filters"];
        ecds(&up[0], "switchyard.backend");
        assert_eq!(up.as_array().unwrap().last().unwrap()["name"], "envoy.filters.http.upstream_codec");
    }
    // ServiceEntries cover every provider host the clusters reach over TLS.
    let hosts: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "ServiceEntry").map(|d| &d["spec"]["hosts"][0]).collect();
    for c in &clusters {
        for m in c["transport_socket_matches"].as_array().into_iter().flatten() {
            let sni = &m["transport_socket"]["typed_config"]["sni"];
            assert!(hosts.contains(&sni), "no ServiceEntry for {sni}");
        }
    }
    for d in docs.iter().filter(|d| d["kind"] == "ServiceEntry") {
        assert_eq!(d["spec"]["location"], "MESH_EXTERNAL");
        assert_eq!(d["spec"]["resolution"], "DNS");
        assert_eq!(d["spec"]["ports"][0]["protocol"], "TLS");
        assert_eq!(d["spec"]["ports"][0]["number"], 443);
    }
    for d in docs {
        let want = match d["kind"].as_str().unwrap() {
            "EnvoyFilter" => "networking.istio.io/v1alpha3",
            "ServiceEntry" => "networking.istio.io/v1",
            other => panic!("unexpected kind {other}"),
        };
        assert_eq!(d["apiVersion"], want);
        assert!(dns_label(d["metadata"]["name"].as_str().unwrap()), "{}", d["metadata"]["name"]);
        assert_eq!(d["metadata"]["namespace"], "istio-system");
    }
    vm
}

#[test]
fn istio_resources_are_structurally_sound() {
    let docs = istio_docs("examples/routing.yaml");
    let source: Value = serde_yaml::from_str(&std::fs::read_to_string(repo().join("examples/routing.yaml")).unwrap()).unwrap();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "ServiceEntry").count(), 6, "{kinds:?}");
    assert_eq!(kinds[6..], ["EnvoyFilter"]);
    // module: {url, sha256}: istio-agent fetches the URL and checks the module's digest.
    let vm = check_istio_envoy_filter("examples/routing.yaml", &docs);
    assert_eq!(vm["code"]["remote"]["sha256"], source["module"]["sha256"]);
    assert_eq!(vm["code"]["remote"]["http_uri"]["uri"], source["module"]["url"]);
    // Credentials are only named: each backend's variables are passed into the VM.
    let keys = vm["environment_variables"]["host_env_keys"].as_array().unwrap();
    assert!(keys.contains(&Value::from("VERTEX_ACCESS_TOKEN")), "{keys:?}");
}

#[test]
fn istio_pulls_the_module_from_an_oci_image() {
    let docs = istio_docs("examples/istio.yaml");
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ServiceEntry", "ServiceEntry", "EnvoyFilter"]);
    let vm = check_istio_envoy_filter("examples/istio.yaml", &docs);
    let remote = &vm["code"]["remote"];
    assert_eq!(remote["http_uri"]["uri"], "oci://registry.example.com/switchyard/filter:0.1.0");
    // The manifest digest as scripts/package prints it (sha256:HEX) becomes the hex Istio compares.
    let source: Value = serde_yaml::from_str(&std::fs::read_to_string(repo().join("examples/istio.yaml")).unwrap()).unwrap();
    assert_eq!(format!("sha256:{}", remote["sha256"].as_str().unwrap()), source["module"]["sha256"].as_str().unwrap());
}

#[test]
fn istio_needs_a_fetchable_module() {
    let (ok, _, err) = run(&["render", "examples/demo.yaml", "--target", "istio"]);
    assert!(!ok && err.contains("module: --target istio needs module: {image: oci://"), "{err}");
    // And an image is for istio only; a malformed one is refused by check and render alike.
    let (ok, _, err) = run(&["render", "examples/istio.yaml", "--target", "envoy"]);
    assert!(!ok && err.contains("module.image"), "{err}");
    let cases: &[(&str, &str, &str)] = &[
        ("no-tag", "module: { image: \"oci://registry.example.com/switchyard/filter\" }\n", "module.image"),
        ("not-oci", "module: { image: \"registry.example.com/switchyard/filter:0.1.0\" }\n", "module.image"),
        ("bad-digest", "module: { image: \"oci://registry.example.com/switchyard/filter:0.1.0\", sha256: \"sha256:abc\" }\n", "manifest digest"),
        ("image-and-url", "module: { image: \"oci://r.example/s/f:1\", url: \"https://x/y.wasm\", sha256: \"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\" }\n", "module"),
        ("unknown-field", "module: { image: \"oci://r.example/s/f:1\", digest: x }\n", "module.digest"),
    ];
    for (name, module, want) in cases {
        let path = write_tmp(&format!("{name}.yaml"), &format!("{BASE}{module}"));
        for cmd in ["check", "render"] {
            let (ok, _, err) = run(&[cmd, path.to_str().unwrap(), "--target", "istio"][..if cmd == "check" { 2 } else { 4 }]);
            assert!(!ok && err.contains(want), "{name} {cmd}: {err}");
        }
    }
    // A digest reference needs no sha256.
    let path = write_tmp("digest-ref.yaml", &format!("{BASE}module: {{ image: \"oci://r.example/s/f@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\" }}\n"));
    let (ok, out, err) = run(&["render", path.to_str().unwrap(), "--target", "istio"]);
    assert!(ok, "{err}");
    assert!(!out.contains("sha256: "), "no sha256 field: istio-agent takes the reference's digest");
}

#[test]
fn an_sds_credential_renders_envoys_credential_injector_for_that_host() {
    let text = "backends:\n  anthropic: { schema: anthropic, host: api.anthropic.com, credential: { sds: /etc/switchyard/anthropic.yaml } }\n  openai: { schema: openai, credential: { env: OPENAI_API_KEY } }\nmodels:\n- { name: m, candidates: [anthropic/claude-3-5-haiku-20241022, openai/gpt-4o-mini-2024-07-18] }\n";
    let path = write_tmp("sds.yaml", text);
    let (ok, out, err) = run(&["render", path.to_str().unwrap()]);
    assert!(ok, "{err}");
    let doc: Value = serde_yaml::from_str(&out).unwrap();
    assert!(doc["node"]["id"].is_string(), "SDS from files needs a node");
    let cluster = &doc["static_resources"]["clusters"][0];
    let filters = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["http_filters"].as_array().unwrap();
    let names: Vec<&str> = filters.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["switchyard.backend", "envoy.filters.http.match_delegate", "envoy.filters.http.upstream_codec"]);
    let md = &filters[1]["typed_config"];
    let generic = &md["extension_config"]["typed_config"]["credential"]["typed_config"];
    assert_eq!(generic["header"], "x-api-key", "Anthropic's credential header");
    assert!(generic.get("header_value_prefix").is_none());
    assert_eq!(generic["credential"]["sds_config"]["path_config_source"]["path"], "/etc/switchyard/anthropic.yaml");
    assert_eq!(generic["credential"]["sds_config"]["path_config_source"]["watched_directory"]["path"], "/etc/switchyard");
    let pred = &md["xds_matcher"]["matcher_list"]["matchers"][0];
    assert_eq!(pred["predicate"]["not_matcher"]["single_predicate"]["value_match"]["exact"], "api.anthropic.com");
    assert_eq!(pred["on_match"]["action"]["typed_config"]["@type"], "type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter");
    // The backend filter sends no credential of its own for that backend; the env one keeps its variable.
    let plugin: Value = serde_json::from_str(filters[0]["typed_config"]["config"]["configuration"]["value"].as_str().unwrap()).unwrap();
    assert!(plugin["backends"]["anthropic"].get("credential").is_none(), "{plugin}");
    assert_eq!(plugin["backends"]["openai"]["credential"]["env"], "OPENAI_API_KEY");
    let keys = &filters[0]["typed_config"]["config"]["vm_config"]["environment_variables"]["host_env_keys"];
    assert_eq!(keys, &serde_json::json!(["OPENAI_API_KEY"]));
}

/// The upstream filters of the first route's cluster, by name, and the backend plugin's configuration.
fn upstream_filters(doc: &Value) -> (Vec<Value>, Value) {
    let cluster = &doc["static_resources"]["clusters"][0];
    let filters = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["http_filters"].as_array().unwrap().clone();
    let plugin: Value = serde_json::from_str(filters[0]["typed_config"]["config"]["configuration"]["value"].as_str().unwrap()).unwrap();
    (filters, plugin)
}

#[test]
fn aws_signer_envoy_renders_envoys_aws_request_signing_for_that_host() {
    let text = "backends:\n  \
        br-file: { schema: bedrock, host: bedrock-runtime.us-east-1.amazonaws.com, aws: { signer: envoy, credentials_file: /etc/switchyard/aws/credentials, profile: bedrock } }\n  \
        br-chain: { schema: bedrock, host: bedrock-runtime.eu-west-1.amazonaws.com, aws: { signer: envoy } }\n  \
        br-own: { schema: bedrock, host: bedrock-runtime.us-west-2.amazonaws.com }\n  \
        openai: { schema: openai, credential: { env: OPENAI_API_KEY } }\n\
        models:\n- { name: m, candidates: [\"br-file/anthropic.claude-3-5-haiku-20241022-v1:0\", \"br-chain/us.amazon.nova-micro-v1:0\", \"br-own/us.amazon.nova-micro-v1:0\", openai/gpt-4o-mini-2024-07-18] }\n";
    let path = write_tmp("aws-envoy.yaml", text);
    let (ok, out, err) = run(&["check", path.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("0 warnings"), "{out}");
    let (ok, out, err) = run(&["render", path.to_str().unwrap()]);
    assert!(ok, "{err}");
    let doc: Value = serde_yaml::from_str(&out).unwrap();
    let (filters, plugin) = upstream_filters(&doc);
    let names: Vec<&str> = filters.iter().map(|f| f["name"].as_str().unwrap()).collect();
    // After the backend filter (it signs the translated request), before the codec; one per backend Envoy signs.
    assert_eq!(names, ["switchyard.backend", "envoy.filters.http.match_delegate", "envoy.filters.http.match_delegate", "envoy.filters.http.upstream_codec"]);
    let signer = |i: usize| filters[i]["typed_config"]["extension_config"].clone();
    let host = |i: usize| filters[i]["typed_config"]["xds_matcher"]["matcher_list"]["matchers"][0]["predicate"]["not_matcher"]["single_predicate"].clone();
    for i in [1, 2] {
        assert_eq!(signer(i)["name"], "envoy.filters.http.aws_request_signing");
        let c = &signer(i)["typed_config"];
        assert_eq!(c["@type"], "type.googleapis.com/envoy.extensions.filters.http.aws_request_signing.v3.AwsRequestSigning");
        assert_eq!(c["service_name"], "bedrock");
        assert_eq!(c["use_unsigned_payload"], false, "the payload is hashed");
        assert_eq!(host(i)["input"]["typed_config"]["header_name"], ":authority");
        assert_eq!(filters[i]["typed_config"]["xds_matcher"]["matcher_list"]["matchers"][0]["on_match"]["action"]["name"], "skip");
    }
    // The credentials file only (a custom chain), watched for a replacement in its directory.
    let c = &signer(1)["typed_config"];
    assert_eq!(c["region"], "us-east-1");
    assert_eq!(host(1)["value_match"]["exact"], "bedrock-runtime.us-east-1.amazonaws.com");
    let provider = &c["credential_provider"];
    assert_eq!(provider["custom_credential_provider_chain"], true);
    assert_eq!(provider["credentials_file_provider"]["profile"], "bedrock");
    let source = &provider["credentials_file_provider"]["credentials_data_source"];
    assert_eq!(source["filename"], "/etc/switchyard/aws/credentials");
    assert_eq!(source["watched_directory"]["path"], "/etc/switchyard/aws");
    // Envoy's default chain (environment, credentials file, web identity, container, instance metadata).
    let c = &signer(2)["typed_config"];
    assert_eq!(c["region"], "eu-west-1");
    assert_eq!(host(2)["value_match"]["exact"], "bedrock-runtime.eu-west-1.amazonaws.com");
    assert!(c.get("credential_provider").is_none(), "{c}");
    // The backend filter knows Envoy signs (so it signs nothing itself) and nothing of the source;
    // only the filter-signed backend's AWS variables reach the VM.
    assert_eq!(plugin["backends"]["br-file"]["aws"], serde_json::json!({"signer": "envoy"}));
    assert_eq!(plugin["backends"]["br-chain"]["aws"], serde_json::json!({"signer": "envoy"}));
    assert!(plugin["backends"]["br-own"].get("aws").is_none());
    let keys = &filters[0]["typed_config"]["config"]["vm_config"]["environment_variables"]["host_env_keys"];
    assert_eq!(keys, &serde_json::json!(["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "OPENAI_API_KEY"]));
    // The credentials file path is not a secret, and nothing else is written.
    assert!(!out.contains("aws_access_key_id") && !out.contains("AKIA"));

    // --reloadable and Istio share the cluster: the signer is in both.
    let dir = std::env::temp_dir().join(format!("switchyard-render-aws-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ok, _, err) = run(&["render", path.to_str().unwrap(), "--reloadable", dir.to_str().unwrap()]);
    assert!(ok, "{err}");
    let clusters = std::fs::read_to_string(dir.join("clusters.yaml")).unwrap();
    assert_eq!(clusters.matches("envoy.filters.http.aws_request_signing").count(), 2, "{clusters}");
    let with_url = format!("module: {{ url: \"https://example.com/s.wasm\", sha256: \"{}\" }}\n{text}", "0".repeat(64));
    let path = write_tmp("aws-envoy-istio.yaml", &with_url);
    let (ok, out, err) = run(&["render", path.to_str().unwrap(), "--target", "istio"]);
    assert!(ok, "{err}");
    assert_eq!(out.matches("envoy.filters.http.aws_request_signing").count(), 2);
}

#[test]
fn without_an_access_log_the_gateway_does_not_write_its_fields() {
    let render = |extra: &str| -> Value {
        let p = write_tmp("nolog.yaml", &format!("{extra}{BASE}"));
        let (ok, out, err) = run(&["render", p.to_str().unwrap(), "--target", "envoy"]);
        assert!(ok, "{err}");
        serde_yaml::from_str(&out).unwrap()
    };
    // No access log: nothing reads the fields, the gateway is told not to write them.
    let doc = render("access_log: false\n");
    assert_eq!(plugins(&doc, "gateway")[0]["metrics"]["access_log_fields"], Value::Bool(false));
    // With the access log (the default), or when the file says so, they are written.
    let doc = render("");
    assert!(plugins(&doc, "gateway")[0]["metrics"].get("access_log_fields").is_none());
    let doc = render("access_log: false\nmetrics: { access_log_fields: true, key_labels: true }\n");
    let m = &plugins(&doc, "gateway")[0]["metrics"];
    assert_eq!((&m["access_log_fields"], &m["key_labels"]), (&Value::Bool(true), &Value::Bool(true)));
}
