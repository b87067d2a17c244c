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
fn rendered_subset_load_balancers_match_the_capabilities() {
    // envoy/envoy.yaml turns capability checks on with the built-in table's defaults; its
    // gpt-4o-mini route (OpenAI's 128k window, then Claude's 200k) is rendered with the subset
    // load balancer.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let (ok, text) = check(&root.join("envoy/envoy.yaml"));
    assert!(ok, "{text}");
    assert!(text.contains("Envoy configuration is valid (0 warnings)"), "{text}");
    // The demo with what its any-chat candidates (OpenAI, Gemini 2.5 Flash, Nova Micro) can do,
    // rendered: what `switchyard render` wrote is what `switchyard check` expects.
    let demo = std::fs::read_to_string(root.join("examples/demo.yaml")).unwrap();
    let file = format!(
        "{demo}\ncapabilities:\n  gemini-2.5-flash: {{ vision: true, tools: true, json_schema: true, reasoning: true, context_window: 1048576 }}\n  \"us.amazon.nova-micro-v1:0\": {{ vision: false, tools: true, json_schema: true, reasoning: false, context_window: 128000 }}\n"
    );
    let dir = std::env::temp_dir().join(format!("switchyard-check-subsets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("gateway.yaml");
    std::fs::write(&src, file).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard")).current_dir(root).arg("render").arg(&src).args(["--target", "envoy"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, &out.stdout).unwrap();
    let (ok, text) = check(&path);
    assert!(ok, "{text}");
    // Only the facts of the routes remain, each said with what handles it.
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains(": warning: ")).collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(warnings[0].ends_with("route any-chat (cluster route_any-chat): fallback us.amazon.nova-micro-v1:0 (priority 2) lacks vision that primary gpt-4o-mini has (the cluster's subset load balancer skips it for requests that need it)"), "{text}");
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

#[test]
fn the_guardrails_example_is_valid() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/gateway-guardrails.json");
    let (ok, text) = check(&example);
    assert!(ok, "{text}");
    assert!(text.contains("gateway configuration with 2 model entries is valid"), "{text}");
}
