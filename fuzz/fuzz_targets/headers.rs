//! Client headers the policy reads: the virtual key (`authorization`, `x-api-key`, also joined
//! repeats), the bring-your-own-key header, `x-switchyard-max-cost` (`pricing::parse_usd_micros`),
//! and a request through authentication, model authorisation and admission against a policy with
//! keys, a team, rate limits and budgets.
//!
//! Input: lines `name:value`; the first line's value is also the max-cost header; the last byte
//! picks the model.
//!
//! Properties: a refusal is an OpenAI error (401/403/400/429) that never holds a configured key or
//! a client-sent credential; an extracted key is a non-empty run of visible ASCII found in a header;
//! a parsed max-cost prints back to the same amount; admission is released cleanly.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use switchyard::policy::estimate::RequestEstimate;
use switchyard::policy::keys::{extract_key, hash_key, parse_hex_hash, KeyError};
use switchyard::policy::pricing::{format_usd, parse_usd_micros};
use switchyard::policy::store::MemStore;
use switchyard::policy::{Policy, PolicyConfig};
use switchyard_fuzz::*;

#[global_allocator]
static ALLOC: Counting = Counting;

const KEYS: &[&str] = &["sk-fuzz-key-alpha", "sk-fuzz-key-beta", "sk-fuzz-key-gamma"];

fn policy() -> &'static Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    P.get_or_init(|| {
        let cfg = json!({
            "keys": [
                {"id": "alpha", "sha256": hash_key(KEYS[0]), "team": "t1", "limits": {"rpm": 5, "tpm": 1000, "max_concurrent": 2},
                 "budget": {"amount_usd": 0.01, "window": "daily"}},
                {"id": "beta", "sha256": hash_key(KEYS[1]), "models": ["gpt-4o*", "claude-*"], "byok": true},
                {"id": "gamma", "sha256": hash_key(KEYS[2]), "disabled": true}
            ],
            "teams": [{"id": "t1", "limits": {"rpm": 100}, "budget": {"amount_usd": 1.0, "window": "monthly"}}],
            "unpriced_models": "deny"
        });
        let cfg: PolicyConfig = serde_json::from_value(cfg).expect("policy config");
        Policy::new(cfg).expect("policy")
    })
}

const FIXED_WORDING: &[KeyError] = &[
    KeyError::Missing, KeyError::Empty, KeyError::NotBearer, KeyError::Ambiguous, KeyError::TooLong,
    KeyError::InvalidCharacters, KeyError::Unknown, KeyError::Disabled, KeyError::Expired,
];

const MODELS: &[&str] = &["gpt-4o-mini", "claude-3-5-haiku-latest", "unpriced-model", "gpt-4o"];

fn never_leaks(err: &[u8], headers: &[(String, String)]) {
    let s = String::from_utf8_lossy(err);
    for k in KEYS {
        assert!(!s.contains(k), "an error holds a configured key");
    }
    for (n, v) in headers {
        let v = v.trim();
        if (n.eq_ignore_ascii_case("authorization") || n.eq_ignore_ascii_case("x-api-key") || n.eq_ignore_ascii_case(policy().byok_header()))
            && v.len() >= 12
        {
            let secret = v.rsplit([' ', '\t']).next().unwrap_or(v);
            // (A value that is part of the gateway's fixed wording, like `Authorization:`, is no
            // credential the error could have echoed.)
            if secret.len() >= 12 && !FIXED_WORDING.iter().any(|k| k.message().contains(secret)) {
                assert!(!s.contains(secret), "an error echoes a client credential: {s}");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&model_sel, data)) = data.split_last() else { return };
    let text = String::from_utf8_lossy(data);
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in text.split('\n') {
        let (n, v) = line.split_once(':').unwrap_or((line, ""));
        let n = match n {
            "a" => "authorization",
            "k" => "x-api-key",
            "b" => "x-switchyard-provider-key",
            other => other,
        };
        headers.push((n.to_string(), v.to_string()));
    }
    let max_cost = headers.first().map(|(_, v)| v.clone());

    if let Some(m) = max_cost.as_deref().and_then(parse_usd_micros) {
        assert_eq!(parse_usd_micros(&format_usd(m)), Some(m), "max-cost does not round-trip");
    }
    if let Some((_, v)) = headers.first() {
        if let Some(h) = parse_hex_hash(v) {
            assert_eq!(switchyard::policy::keys::hex(&h), v.trim().to_ascii_lowercase());
        }
    }
    match extract_key(&headers) {
        Ok(k) => {
            assert!(!k.is_empty() && k.bytes().all(|b| b.is_ascii_graphic()), "extracted key {k:?}");
            assert!(headers.iter().any(|(_, v)| v.contains(k)), "the key is not in any header");
        }
        Err(e) => {
            never_leaks(&e.to_api_error().to_json(), &headers);
        }
    }

    let p = policy();
    let now = 1_700_000_000_000;
    let principal = match p.authenticate(&headers, now) {
        Ok(pr) => pr,
        Err(e) => {
            assert!(matches!(e.status, 400 | 401 | 403), "authentication refusal status {}", e.status);
            let j = e.to_json();
            let v: Value = serde_json::from_slice(&j).expect("error JSON");
            check_error_body(&v, "authentication");
            never_leaks(&j, &headers);
            return;
        }
    };
    let model = MODELS[model_sel as usize % MODELS.len()];
    if let Err(e) = p.authorize_model(&principal, model, model) {
        assert_eq!(e.status, 403);
        never_leaks(&e.to_json(), &headers);
        return;
    }
    let store = MemStore::new();
    let est = RequestEstimate { prompt_tokens: (model_sel as u64) * 7, max_output_tokens: Some(model_sel as u64), choices: 1 };
    match p.admit(&principal, &est, model, max_cost.as_deref(), now, &store) {
        Ok(adm) => {
            for (n, v) in adm.response_headers() {
                assert!(!v.bytes().any(|c| c == b'\r' || c == b'\n'), "response header {n} holds a line break");
            }
            p.release(adm, now, &store);
        }
        Err(r) => {
            assert!(matches!(r.error.status, 400 | 403 | 429), "admission refusal status {}", r.error.status);
            let j = r.error.to_json();
            check_error_body(&serde_json::from_slice(&j).expect("error JSON"), "admission");
            never_leaks(&j, &headers);
        }
    }
});
