//! No-op role (`{"role": "noop"}`): a pass-through HTTP context that only lets Envoy call into the
//! VM for every callback. `scripts/bench` runs it to measure the floor any wasm filter pays.

use proxy_wasm::traits::{Context, HttpContext};

pub struct NoopFilter;

impl Context for NoopFilter {}

impl HttpContext for NoopFilter {}
