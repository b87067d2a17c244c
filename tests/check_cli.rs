//! `switchyard check` on whole Envoy configurations (the binary, as an operator runs it).

use std::process::Command;

fn check(path: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard")).arg("check").arg(path).output().expect("run switchyard");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn the_demo_configuration_checks_clean() {
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("envoy/demo.yaml");
    let (ok, text) = check(&demo);
    assert!(ok, "{text}");
    assert!(text.contains("Envoy configuration is valid (0 warnings)"), "{text}");
}

#[test]
fn capability_regressions_warn_and_forbidden_floating_names_fail() {
    let demo = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("envoy/demo.yaml")).unwrap();
    // The demo's gpt-4o-mini route fails over to claude-3-5-haiku-latest: say the fallback takes no
    // images, and pin the route's versions.
    let needle = r#""models": ["#;
    assert!(demo.contains(needle), "demo.yaml's gateway models list moved");
    let patched = demo.replacen(
        needle,
        r#""capabilities": {"gpt-4o-mini": {"vision": true}, "claude-3-5-haiku-latest": {"vision": false}},
                    "models": ["#,
        1,
    );
    let dir = std::env::temp_dir().join(format!("switchyard-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, &patched).unwrap();
    let (ok, text) = check(&path);
    assert!(ok, "{text}");
    assert!(text.contains("fallback claude-3-5-haiku-latest (priority 1) lacks vision that primary gpt-4o-mini has"), "{text}");

    let pinned = patched.replacen(r#"{"name": "gpt-4o-mini""#, r#"{"name": "gpt-4o-mini", "pin_versions": "forbid""#, 1);
    assert_ne!(pinned, patched, "demo.yaml's gpt-4o-mini entry moved");
    std::fs::write(&path, &pinned).unwrap();
    let (ok, text) = check(&path);
    assert!(!ok, "{text}");
    assert!(text.contains("error: route gpt-4o-mini") && text.contains("floating name gpt-4o-mini"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_shipped_subset_load_balancers_match_the_capabilities() {
    // envoy/envoy.yaml turns capability checks on with the built-in table's defaults; its
    // gpt-4o-mini route (OpenAI's 128k window, then Claude's 200k) ships the subset load balancer.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let (ok, text) = check(&root.join("envoy/envoy.yaml"));
    assert!(ok, "{text}");
    assert!(text.contains("Envoy configuration is valid (0 warnings)"), "{text}");
    // The demo's any-chat cluster (OpenAI, Gemini 2.5 Flash, Nova Micro) with what those models
    // can do (tests/e2e/test_routing.py runs it so): its shipped envoy.lb metadata matches.
    let demo = std::fs::read_to_string(root.join("envoy/demo.yaml")).unwrap();
    let needle = r#""models": ["#;
    let patched = demo.replacen(
        needle,
        r#""capabilities": {"gemini-2.5-flash": {"vision": true, "tools": true, "json_schema": true, "reasoning": true, "context_window": 1048576},
                                     "us.amazon.nova-micro-v1:0": {"vision": false, "tools": true, "json_schema": true, "reasoning": false, "context_window": 128000}},
                    "models": ["#,
        1,
    );
    let dir = std::env::temp_dir().join(format!("switchyard-check-subsets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, &patched).unwrap();
    let (ok, text) = check(&path);
    assert!(ok, "{text}");
    // Nova Micro takes no images: still said, with what handles it; nothing to fix.
    let any_chat: Vec<&str> = text.lines().filter(|l| l.contains("any-chat")).collect();
    assert_eq!(any_chat.len(), 1, "{text}");
    assert!(any_chat[0].ends_with("lacks vision that primary gpt-4o-mini has (the cluster's subset load balancer skips it for requests that need it)"), "{text}");
    // Nova Micro said to take images: the shipped metadata no longer matches, and check says so.
    std::fs::write(&path, patched.replacen(r#""vision": false, "tools": true, "json_schema": true, "reasoning": false, "context_window": 128000"#, r#""vision": true, "tools": true, "json_schema": true, "reasoning": false, "context_window": 128000"#, 1)).unwrap();
    let (_, text) = check(&path);
    assert!(text.contains("route any-chat (cluster route_any-chat): endpoint us.amazon.nova-micro-v1:0 (priority 2) has envoy.lb metadata"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_routing_example_is_valid() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/gateway-routing.json");
    let (ok, text) = check(&example);
    assert!(ok, "{text}");
    assert!(text.contains("gateway configuration with 6 model entries is valid"), "{text}");
}

#[test]
fn the_cache_and_sampling_example_is_valid() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/gateway-cache.json");
    let (ok, text) = check(&example);
    assert!(ok, "{text}");
    assert!(text.contains("gateway configuration with 3 model entries is valid"), "{text}");
}
