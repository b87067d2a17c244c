//! Per-request cost of the telemetry the gateway computes on the host side of every request (the
//! metric updates and the access-log fields), for instruction counts (the machine is shared, so wall
//! time is noisy; `valgrind --tool=callgrind` counts are not). One mode per run, `N` iterations:
//!
//!   cargo bench --bench telemetry_cost --no-run          # then, with the binary it prints:
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/deps/telemetry_cost-* MODE N
//!
//! Cost per request = (Ir at N=1100 − Ir at N=100) / 1000. The record is that of the Envoy
//! benchmark's translated request (OpenAI → Anthropic, non-stream, served on the first attempt).
//!
//! Modes:
//!   metrics    `telemetry::metric_updates` (a dozen `name;label=value;…` stat names)
//!   logfields  `telemetry::log_fields` (the access-log record)

use std::hint::black_box;

use switchyard::telemetry::{log_fields, metric_updates, LabelOptions, RequestRecord};

fn record() -> RequestRecord {
    RequestRecord {
        request_id: "sy-5f0c2a9e41b7d3c8-1a".into(),
        start_unix_ms: 1_796_472_435_000,
        operation: "chat",
        route: Some("ant-json".into()),
        requested_model: Some("claude-haiku".into()),
        response_model: Some("claude-3-5-haiku-20241022".into()),
        backend: Some("ant-json".into()),
        provider: Some("anthropic".into()),
        attempts: 1,
        status: 200,
        usage_known: true,
        input_tokens: 20,
        output_tokens: 10,
        duration_ms: 3,
        ttfb_ms: Some(3),
        ..Default::default()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` runs every bench binary with `--bench`: do nothing then.
    let (Some(mode), Some(n)) = (args.get(1), args.get(2).and_then(|n| n.parse::<usize>().ok())) else { return };
    let r = record();
    let mut total = 0usize;
    for _ in 0..n {
        total += match mode.as_str() {
            "metrics" => metric_updates(black_box(&r), LabelOptions::default()).iter().map(|u| u.name.len()).sum::<usize>(),
            "logfields" => log_fields(black_box(&r)).iter().map(|(_, v)| v.len()).sum::<usize>(),
            other => panic!("unknown mode {other}"),
        };
    }
    println!("{mode} x{n}: {total}");
}
