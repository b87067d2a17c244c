//! Per-request cost of the guardrails, for instruction counts (the machine is shared, so wall time
//! is noisy; `valgrind --tool=callgrind` counts are not). One mode per run, `N` iterations:
//!
//!   cargo bench --bench guardrails_cost --no-run          # then, with the binary it prints:
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/deps/guardrails_cost-* MODE N
//!
//! Cost per request = (Ir at N=1100 − Ir at N=100) / 1000. `scripts/guardrails-cost` does it all.
//! The request is the Envoy benchmark's (bench/data/request.json, 1 KB, no personal data), so the
//! common case — scan everything, find nothing, forward the body untouched — is what is measured.
//!
//! Modes:
//!   parse     the gateway's own parse of the request (what every request pays anyway; for scale)
//!   builtin   guardrails with all 13 built-in detectors (hand-written scanners), action `log`
//!   regex     the same 13 detectors written as regex-lite patterns (`custom`), action `log`
//!   redact    the request with an e-mail address added, `pii: redact`: the body is rewritten
//!   stream    answer scanning with every built-in over the recorded OpenAI stream (bench/data/openai.sse),
//!             one SSE event per push, plus restoring one placeholder

use std::hint::black_box;

use switchyard::api::chat::parse_chat_request;
use switchyard::policy::guardrails::{Guardrails, GuardrailsConfig};

const REQUEST: &[u8] = include_bytes!("../bench/data/request.json");
const OPENAI_SSE: &[u8] = include_bytes!("../bench/data/openai.sse");

/// The built-in detectors as a user would write them with a regular expression (no Luhn or
/// mod-97 check, which a regular expression cannot do).
const REGEX_EQUIVALENTS: &[(&str, &str)] = &[
    ("r_private_key", r"-----BEGIN [A-Z ]{0,40}PRIVATE KEY-----"),
    ("r_jwt", r"\beyJ[A-Za-z0-9_-]{7,}\.eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*"),
    ("r_anthropic_key", r"\bsk-ant-[A-Za-z0-9_-]{20,}"),
    ("r_openai_key", r"\bsk-[A-Za-z0-9_-]{20,}"),
    ("r_aws_access_key", r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b"),
    ("r_github_token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})"),
    ("r_slack_token", r"\bxox[bpaores]-[A-Za-z0-9-]{10,}"),
    ("r_email", r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"),
    ("r_iban", r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"),
    ("r_credit_card", r"\b[2-6][0-9]{3}(?:[ -]?[0-9]{4}){2}[ -]?[0-9]{1,7}\b"),
    ("r_us_ssn", r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b"),
    ("r_ip_address", r"\b(?:[0-9]{1,3}\.){3}[0-9]{1,3}\b|\b(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f:]*"),
    ("r_phone", r"\+[1-9][0-9 ().-]{7,18}[0-9]|\(?\b[2-9][0-9]{2}\)?[ .-]?[2-9][0-9]{2}[ .-]?[0-9]{4}\b"),
];

fn guardrails(json: &str) -> Guardrails {
    let cfg: GuardrailsConfig = serde_json::from_str(json).expect("configuration");
    Guardrails::new(cfg).expect("valid")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`: run every mode once, as a smoke test.
    let (mode, n) = match (args.get(1).map(String::as_str), args.get(2).and_then(|s| s.parse::<usize>().ok())) {
        (Some(m), Some(n)) if !m.starts_with('-') => (m.to_string(), n),
        _ => {
            for m in ["parse", "builtin", "regex", "redact", "stream"] {
                run(m, 10);
            }
            println!("guardrails_cost: every mode ran; count instructions with callgrind (see the file's header)");
            return;
        }
    };
    run(&mode, n);
}

fn run(mode: &str, n: usize) {
    match mode {
        "parse" => {
            for _ in 0..n {
                black_box(parse_chat_request(black_box(REQUEST)).expect("valid"));
            }
        }
        "builtin" => {
            let g = guardrails(r#"{"detectors": {"all": "log"}}"#);
            for _ in 0..n {
                let guard = g.check(Some("k"), None, "gpt-4o-mini", black_box(REQUEST)).expect("passes");
                black_box(guard);
            }
        }
        "regex" => {
            let custom: Vec<String> =
                REGEX_EQUIVALENTS.iter().map(|(name, re)| format!(r#"{{"name": "{name}", "pattern": {}, "action": "log"}}"#, serde_json::to_string(re).unwrap())).collect();
            let g = guardrails(&format!(r#"{{"custom": [{}]}}"#, custom.join(",")));
            for _ in 0..n {
                let guard = g.check(Some("k"), None, "gpt-4o-mini", black_box(REQUEST)).expect("passes");
                black_box(guard);
            }
        }
        "redact" => {
            let body = String::from_utf8_lossy(REQUEST).replace("Thank you!", "Reply to ops.desk@example.com. Thank you!");
            let g = guardrails(r#"{"detectors": {"pii": "redact", "secrets": "block"}, "restore": true}"#);
            for _ in 0..n {
                let guard = g.check(Some("k"), None, "gpt-4o-mini", black_box(body.as_bytes())).expect("passes");
                assert!(guard.expect("on").body.is_some());
            }
        }
        "stream" => {
            let body = String::from_utf8_lossy(REQUEST).replace("Thank you!", "Reply to ops.desk@example.com. Thank you!");
            let g = guardrails(r#"{"detectors": {"all": "redact"}, "restore": true, "answers": {"scan": true}}"#);
            let events: Vec<&[u8]> = OPENAI_SSE.split_inclusive(|&b| b == b'\n').collect();
            let mut out = Vec::with_capacity(OPENAI_SSE.len() * 2);
            for _ in 0..n {
                let mut guard = g.check(Some("k"), None, "gpt-4o-mini", body.as_bytes()).expect("passes").expect("on");
                out.clear();
                for e in &events {
                    guard.stream_push(&g, e, &mut out);
                }
                guard.stream_finish(&g, &mut out);
                black_box(&out);
            }
        }
        other => panic!("unknown mode {other}"),
    }
}
