//! Host micro-benchmarks of the filter's hot paths, without Envoy, on the same payloads the Envoy
//! benchmark sends and serves (bench/data/, built from tests/fixtures by bench/payloads.py):
//!
//!   cargo bench --bench hot_paths                 all
//!   cargo bench --bench hot_paths -- stream/      one group (criterion filter)
//!
//! `bench` inherits the release profile (opt-level "s", LTO), as the .wasm is built. Groups:
//!   request/   the gateway's parse of a ~1 KB chat request and the backend's per-schema translation
//!   response/  translating a whole (non-stream) answer back into a chat.completion
//!   stream/    per chunk: the Anthropic stream translator and the gateway's usage tap, fed one SSE
//!              event per push (as a real provider sends them) and the whole stream in one push
//!              (as the benchmark's direct_response mock delivers it)
//!   policy/    model routing (exact name, alias, wildcard)

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use switchyard::api::chat::parse_chat_request;
use switchyard::config::{Backend, ModelEntry, PluginConfig};
use switchyard::policy::routing::ModelRouter;
use switchyard::providers::{self, anthropic, AttemptContext, Operation, ResponseHints};
use switchyard::stream::usage_tap::UsageTap;

const REQUEST: &[u8] = include_bytes!("../bench/data/request.json");
const REQUEST_STREAM: &[u8] = include_bytes!("../bench/data/request_stream.json");
const ANTHROPIC_JSON: &[u8] = include_bytes!("../bench/data/anthropic.json");
const ANTHROPIC_SSE: &[u8] = include_bytes!("../bench/data/anthropic.sse");
const OPENAI_SSE: &[u8] = include_bytes!("../bench/data/openai.sse");
const NOW: u64 = 1_760_000_000;

fn backend(schema: &str) -> Backend {
    let json = format!(r#"{{"role":"backend","backends":{{"b":{{"schema":"{schema}","base_path":"/v1"}}}}}}"#);
    match PluginConfig::parse(json.as_bytes()) {
        Ok(PluginConfig::Backend(mut b)) => b.backends.remove("b").expect("backend"),
        _ => panic!("backend configuration"),
    }
}

/// SSE events, each with its terminating blank line: one push per event, as a provider sends them.
fn events(sse: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    while let Some(i) = sse[start..].windows(2).position(|w| w == b"\n\n") {
        out.push(&sse[start..start + i + 2]);
        start += i + 2;
    }
    out
}

fn request(c: &mut Criterion) {
    let mut g = c.benchmark_group("request");
    g.throughput(Throughput::Bytes(REQUEST.len() as u64));
    g.bench_function("parse_chat_request", |b| b.iter(|| parse_chat_request(black_box(REQUEST)).expect("valid")));
    for schema in ["openai", "anthropic"] {
        let backend = backend(schema);
        let ctx = AttemptContext { model: "upstream-model", now_unix: NOW, aws: None };
        for (name, body) in [("chat", REQUEST), ("chat_stream", REQUEST_STREAM)] {
            g.bench_function(format!("translate/{schema}/{name}"), |b| {
                b.iter(|| providers::upstream_request(Operation::Chat, &backend, black_box(body), &ctx).expect("translated"))
            });
        }
    }
    g.finish();
}

fn response(c: &mut Criterion) {
    let mut g = c.benchmark_group("response");
    g.throughput(Throughput::Bytes(ANTHROPIC_JSON.len() as u64));
    let hints = ResponseHints::chat(false, "claude-3-5-haiku-latest");
    let schema = backend("anthropic").schema;
    g.bench_function("translate/anthropic", |b| {
        b.iter(|| providers::response_body(schema, &hints, black_box(ANTHROPIC_JSON), NOW).expect("translated"))
    });
    g.finish();
}

fn stream(c: &mut Criterion) {
    let mut g = c.benchmark_group("stream");
    for (name, sse) in [("anthropic_translate", ANTHROPIC_SSE), ("usage_tap", OPENAI_SSE)] {
        let chunks = events(sse);
        // Throughput in upstream events, so criterion reports the time per chunk.
        g.throughput(Throughput::Elements(chunks.len() as u64));
        let run = |pieces: &[&[u8]], out: &mut Vec<u8>| {
            out.clear();
            if name == "usage_tap" {
                let mut tap = UsageTap::new(false);
                for p in pieces {
                    tap.push(p, out);
                }
                tap.finish(out);
            } else {
                let mut t = anthropic::StreamTranslator::new(NOW);
                for p in pieces {
                    t.push(p, out);
                }
                t.finish(out);
            }
        };
        let mut out = Vec::with_capacity(16 * 1024);
        run(&chunks, &mut out);
        assert!(out.ends_with(b"data: [DONE]\n\n"), "{name}: the stream must translate completely");
        g.bench_function(format!("{name}/per_event"), |b| {
            b.iter_batched_ref(Vec::new, |out| run(black_box(&chunks), out), BatchSize::SmallInput)
        });
        g.bench_function(format!("{name}/one_push"), |b| {
            b.iter_batched_ref(Vec::new, |out| run(black_box(&[sse]), out), BatchSize::SmallInput)
        });
    }
    g.finish();
}

fn policy(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy");
    let entries: Vec<ModelEntry> = serde_json::from_str(
        r#"[{"name":"gpt-4o-mini","aliases":["fast"]},{"name":"gpt-4o"},{"name":"o3-mini"},
            {"name":"claude-haiku","aliases":["claude-3-5-haiku-latest"]},{"name":"claude-sonnet"},
            {"name":"mistral-*","route":"mistral"},{"name":"claude-*","route":"anthropic"}]"#,
    )
    .expect("model entries");
    let router = ModelRouter::new(entries).expect("router");
    for (name, model) in [("route/exact", "claude-sonnet"), ("route/alias", "fast"), ("route/wildcard", "claude-3-opus-latest")] {
        assert!(router.resolve(model).is_some());
        g.bench_function(name, |b| b.iter(|| router.resolve(black_box(model)).map(|r| r.route.len())));
    }
    g.finish();
}

criterion_group!(benches, request, response, stream, policy);
criterion_main!(benches);
