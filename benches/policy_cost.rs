//! Per-request cost of keys, rate limits and budgets on the host side (issue 15: "keys, limits and
//! budgets on cost at most 10% more than off"): the steps the gateway runs for a request with a
//! virtual key — authenticate, admit (key and team: one compare-and-swap each), the admission's
//! response headers, settle (again one per scope) and the settlement's headers — over an in-memory
//! store with Envoy's shared-data semantics, with the benchmark's configuration (bench/envoy_configs.py
//! `policy_auth`) and the clock moving 0.25 ms per request (the benchmark's ~4,000 requests/s, so the
//! rolling windows hold what they hold under load).
//!
//!   cargo bench --bench policy_cost --no-run          # then, with the binary it prints:
//!   target/release/deps/policy_cost-* time 200000          # wall time per request, natively
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/deps/policy_cost-* flow N
//!
//! Cost per request in instructions = (Ir at N=11000 − Ir at N=1000) / 10000.
//!
//! Modes: `flow` (all of it), `auth` (authenticate only), `time` (the flow, timed).

use std::hint::black_box;
use std::time::Instant;

use switchyard::api::chat::Usage;
use switchyard::policy::estimate::RequestEstimate;
use switchyard::policy::store::MemStore;
use switchyard::policy::{Outcome, Policy, PolicyConfig};

const KEY: &str = "sk-sy-bench-0123456789abcdef";

fn policy() -> Policy {
    let sha = switchyard::policy::keys::hash_key(KEY);
    let json = format!(
        r#"{{"keys": [{{"id": "bench-key", "team": "bench-team", "sha256": "{sha}",
              "limits": {{"rpm": 1000000000, "tpm": 1000000000000, "max_concurrent": 100000}},
              "budget": {{"amount_usd": 1000000, "window": "monthly"}}}}],
            "teams": [{{"id": "bench-team",
              "limits": {{"rpm": 1000000000, "tpm": 1000000000000, "max_concurrent": 100000}},
              "budget": {{"amount_usd": 1000000, "window": "monthly"}}}}],
            "pricing": {{"aliases": {{"claude-haiku": "claude-3-5-haiku-latest"}}}}}}"#
    );
    let cfg: PolicyConfig = serde_json::from_str(&json).expect("bench policy");
    Policy::new(cfg).expect("bench policy")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` runs every bench binary with `--bench`: do nothing then.
    let (Some(mode), Some(n)) = (args.get(1), args.get(2).and_then(|n| n.parse::<usize>().ok())) else { return };
    let p = policy();
    let store = MemStore::new();
    p.prime(&store);
    let headers = vec![
        ("authorization".to_string(), format!("Bearer {KEY}")),
        ("content-type".to_string(), "application/json".to_string()),
    ];
    let est = RequestEstimate { prompt_tokens: 260, max_output_tokens: Some(64), choices: 1 };
    let usage = Usage { prompt_tokens: 20, completion_tokens: 10, total_tokens: 30, ..Default::default() };
    let mut now_ms: u64 = 1_796_472_435_000;
    let mut total = 0usize;
    let t0 = Instant::now();
    for i in 0..n {
        now_ms += (i % 4 == 0) as u64; // 0.25 ms per request
        let principal = p.authenticate(black_box(&headers), now_ms).expect("key");
        if mode == "auth" {
            total += principal.key_id().len();
            continue;
        }
        let adm = p.admit(&principal, black_box(&est), "claude-3-5-haiku-20241022", None, now_ms, &store).expect("admitted");
        total += adm.response_headers().iter().map(|(_, v)| v.len()).sum::<usize>();
        let s = p.settle(adm, Outcome::Usage(black_box(&usage)), Some("claude-3-5-haiku-20241022"), None, now_ms + 3, &store);
        total += s.headers().iter().map(|(_, v)| v.len()).sum::<usize>();
    }
    let dt = t0.elapsed();
    if mode == "time" {
        println!("{:.2} µs per request ({n} requests)", dt.as_secs_f64() * 1e6 / n as f64);
    }
    println!("{mode} x{n}: {total}");
}
