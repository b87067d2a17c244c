//! The plugin configuration: `config::PluginConfig::parse`, then what the filter builds from it
//! (`Gateway::new`: the model router and the policy with keys, teams, limits, budgets and prices;
//! for the backend role each backend's request translation with a fixed client body).
//!
//! Properties: no panic; a refusal is an error message, not a crash; a backend that was accepted
//! yields a sane upstream path; memory is linear in the configuration's size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::config::{Gateway, PluginConfig};
use switchyard::providers::{upstream_request, AttemptContext, Operation};
use switchyard_fuzz::*;

#[global_allocator]
static ALLOC: Counting = Counting;

const CHAT: &[u8] = br#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"hi"}]}],"max_tokens":5,"stream":true}"#;
const EMBED: &[u8] = br#"{"model":"m","input":["a","b"]}"#;

fuzz_target!(|data: &[u8]| {
    let bound = linear_bound(data.len(), 64, 2 * 1024 * 1024);
    let ((), peak) = peak_heap(|| match PluginConfig::parse(data) {
        Ok(PluginConfig::Gateway(g)) => {
            if let Ok(gw) = Gateway::new(g) {
                for name in ["gpt-4o", "m", "", "*", "a-b"] {
                    if let Some(r) = gw.router.resolve(name) {
                        assert!(!r.route.is_empty() || name.is_empty() || r.route.is_empty());
                    }
                }
                let _ = gw.router.listed().count();
                let _ = gw.check_body_size(1024);
                if let Some(p) = &gw.policy {
                    let h = vec![("authorization".to_string(), "Bearer sk-fuzz".to_string())];
                    let _ = p.authenticate(&h, 1_700_000_000_000);
                }
            }
        }
        Ok(PluginConfig::Backend(b)) => {
            for (name, backend) in &b.backends {
                let aws = backend.load_aws_credentials(|k| match k {
                    "AWS_ACCESS_KEY_ID" => Some("AKID".into()),
                    "AWS_SECRET_ACCESS_KEY" => Some("secret".into()),
                    _ => None,
                });
                let aws = aws.ok().flatten();
                let _ = (backend.credential_header(), backend.credential_prefix(), backend.aws_region());
                let ctx = AttemptContext { model: "model-x", now_unix: 1_700_000_000, aws: aws.as_ref() };
                for (op, body) in [(Operation::Chat, CHAT), (Operation::Embeddings, EMBED)] {
                    if let Ok(up) = upstream_request(op, backend, body, &ctx) {
                        assert!(up.path.starts_with('/') || up.path.is_empty() || backend.base_path.is_some(), "{name}: path {:?}", up.path);
                    }
                }
            }
        }
        Ok(PluginConfig::Noop) | Err(_) => {}
    });
    assert!(peak <= 64 * bound, "peak heap {peak} for a {}-byte configuration", data.len());
});
