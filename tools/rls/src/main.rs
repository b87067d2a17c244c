//! `switchyard-rls`: a small rate limit service for a fleet of Switchyard Envoys. It speaks
//! Envoy's standard `envoy.service.ratelimit.v3.RateLimitService` (so envoyproxy/ratelimit or
//! Limitador can take its place without a change to Envoy's configuration), reads its limits from
//! a file in envoyproxy/ratelimit's format (`switchyard fleet-limits` writes it from the gateway
//! configuration), and keeps every counter in Redis, so every Envoy sees the same counts and a
//! restart of any of them forgets nothing.
//!
//! Counting is envoyproxy/ratelimit's: each descriptor with a limit has a counter per fixed
//! window (second … year); a request adds its hits to every counter it names (one Lua script, so
//! atomically) and is over the limit when a counter then exceeds its limit. A descriptor sent with
//! `hits_addend` 0 only looks: over when the counter has already reached its limit (Switchyard's
//! budget check before a request). Hits are counted even for a request that is refused (as
//! envoyproxy/ratelimit does): a client that keeps knocking stays limited.
//!
//! Redis unreachable: the answer is a gRPC `UNAVAILABLE`, and Envoy applies its rate limit
//! filter's failure mode (`failure_mode_deny`).
//!
//! ```text
//! switchyard-rls --config limits.yaml [--listen 127.0.0.1:8081] [--redis redis://127.0.0.1:6379]
//! ```

mod limits;
mod proto;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

use limits::LimitsFile;
use proto::*;

const METHOD_PATH: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
/// Headers this service adds to answers carry this prefix; the Switchyard gateway (fleet mode)
/// turns them into the client's `x-ratelimit-*`, `retry-after` and budget headers.
const HEADER_PREFIX: &str = "x-switchyard-fleet-";

/// Adds `hits[i]` to counter `KEYS[i]` (or only reads it when 0) and returns every counter.
const SCRIPT: &str = r#"
local out = {}
for i, key in ipairs(KEYS) do
  local hits = tonumber(ARGV[2 * i - 1])
  if hits > 0 then
    out[i] = redis.call('INCRBY', key, hits)
    redis.call('EXPIRE', key, tonumber(ARGV[2 * i]))
  else
    out[i] = tonumber(redis.call('GET', key) or '0')
  end
end
return out
"#;

struct Ledger {
    limits: RwLock<Arc<LimitsFile>>,
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    script: redis::Script,
}

impl Ledger {
    async fn connection(&self) -> Result<ConnectionManager, redis::RedisError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_millis(300))
            .set_response_timeout(Duration::from_millis(500))
            .set_number_of_retries(1)
            .set_max_delay(500);
        let c = ConnectionManager::new_with_config(self.client.clone(), cfg).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn should_rate_limit(&self, req: RateLimitRequest) -> Result<RateLimitResponse, Status> {
        if std::env::var_os("SWITCHYARD_RLS_DEBUG").is_some() {
            eprintln!("switchyard-rls: {req:?}");
        }
        let limits = self.limits.read().map_err(|_| Status::internal("limits lock poisoned"))?.clone();
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let now = now_ms / 1000;
        let request_hits = if req.hits_addend == 0 { 1 } else { u64::from(req.hits_addend) };

        // One counter per descriptor that has a limit.
        struct Counted {
            index: usize,
            spec: limits::RateLimitSpec,
            hits: u64,
            window_end: u64,
            dimension: String,
        }
        let mut counted = Vec::new();
        let mut keys = Vec::new();
        let mut args: Vec<u64> = Vec::new();
        for (index, d) in req.descriptors.iter().enumerate() {
            let entries = d.entries.iter().map(|e| (e.key.as_str(), e.value.as_str()));
            let Some(spec) = (if req.domain == limits.domain { limits.find(entries) } else { None }) else { continue };
            let hits = d.hits_addend.as_ref().map_or(request_hits, |h| h.value);
            let (start, end) = spec.unit.window(now);
            let mut key = format!("switchyard-rls\u{1f}{}", req.domain);
            for e in &d.entries {
                key.push('\u{1f}');
                key.push_str(&e.key);
                key.push('\u{1f}');
                key.push_str(&e.value);
            }
            key.push('\u{1f}');
            key.push_str(&start.to_string());
            keys.push(key);
            args.push(hits);
            args.push(end.saturating_sub(now) + 1);
            let dimension = match d.entries.last() {
                Some(e) if e.key == "limit" => e.value.clone(),
                _ => String::new(),
            };
            counted.push(Counted { index, spec, hits, window_end: end, dimension });
        }

        let mut statuses: Vec<DescriptorStatus> =
            req.descriptors.iter().map(|_| DescriptorStatus { code: CODE_OK, ..Default::default() }).collect();
        if counted.is_empty() {
            return Ok(RateLimitResponse { overall_code: CODE_OK, statuses, ..Default::default() });
        }
        let mut conn = self.connection().await.map_err(unavailable)?;
        let mut inv = self.script.prepare_invoke();
        for k in &keys {
            inv.key(k);
        }
        for a in &args {
            inv.arg(*a);
        }
        let values: Vec<i64> = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        if values.len() != counted.len() {
            return Err(Status::internal("unexpected answer from Redis"));
        }

        let mut over = false;
        // Tightest status per dimension: (remaining, limit, reset ms).
        let mut tightest: Vec<(String, u64, u64, u64)> = Vec::new();
        let mut retry_ms: Option<u64> = None;
        let mut budget_over = false;
        for (c, v) in counted.iter().zip(values) {
            let after = v.max(0) as u64;
            let limit = u64::from(c.spec.requests_per_unit);
            let is_over = if c.hits > 0 { after > limit } else { after >= limit };
            let remaining = limit.saturating_sub(after);
            let reset_ms = (c.window_end * 1000).saturating_sub(now_ms);
            if let Some(s) = statuses.get_mut(c.index) {
                *s = DescriptorStatus {
                    code: if is_over { CODE_OVER_LIMIT } else { CODE_OK },
                    current_limit: Some(RateLimit { requests_per_unit: c.spec.requests_per_unit, unit: c.spec.unit.proto(), name: String::new() }),
                    limit_remaining: remaining.min(u64::from(u32::MAX)) as u32,
                    duration_until_reset: Some(proto::Duration { seconds: (reset_ms / 1000) as i64, nanos: ((reset_ms % 1000) * 1_000_000) as i32 }),
                };
            }
            if is_over {
                over = true;
                if c.dimension == "budget" {
                    budget_over = true;
                } else {
                    retry_ms = Some(retry_ms.map_or(reset_ms, |r| r.max(reset_ms)));
                }
            }
            if !c.dimension.is_empty() {
                match tightest.iter_mut().find(|t| t.0 == c.dimension) {
                    Some(t) if remaining < t.1 => *t = (c.dimension.clone(), remaining, limit, reset_ms),
                    Some(_) => {}
                    None => tightest.push((c.dimension.clone(), remaining, limit, reset_ms)),
                }
            }
        }

        let mut headers = Vec::new();
        let mut add = |k: &str, v: String| headers.push(HeaderValue { key: format!("{HEADER_PREFIX}{k}"), value: v });
        for (dim, remaining, limit, reset_ms) in &tightest {
            match dim.as_str() {
                "requests" | "tokens" => {
                    add(&format!("x-ratelimit-limit-{dim}"), limit.to_string());
                    add(&format!("x-ratelimit-remaining-{dim}"), remaining.to_string());
                    add(&format!("x-ratelimit-reset-{dim}"), openai_duration(*reset_ms));
                }
                "budget" => add("x-switchyard-budget-remaining", usd(*remaining)),
                _ => {}
            }
        }
        if let Some(ms) = retry_ms {
            add("retry-after", ms.div_ceil(1000).max(1).to_string());
            add("retry-after-ms", ms.max(1).to_string());
        }
        if budget_over {
            add("x-should-retry", "false".to_string());
        }
        Ok(RateLimitResponse {
            overall_code: if over { CODE_OVER_LIMIT } else { CODE_OK },
            statuses,
            response_headers_to_add: headers,
            request_headers_to_add: Vec::new(),
        })
    }
}

fn unavailable(e: redis::RedisError) -> Status {
    eprintln!("switchyard-rls: redis: {e}");
    Status::unavailable(format!("redis: {e}"))
}

/// A duration as OpenAI writes it in `x-ratelimit-reset-*`: `20ms`, `1.5s`, `59.9s`.
fn openai_duration(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let tenths = ms.div_ceil(100);
    if tenths % 10 == 0 {
        format!("{}s", tenths / 10)
    } else {
        format!("{}.{}s", tenths / 10, tenths % 10)
    }
}

/// Micro-dollars as dollars with six decimals.
fn usd(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

// ---------------------------------------------------------------------------------------------
// gRPC plumbing (what tonic's code generator would write for this one method)
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct RateLimitService(Arc<Ledger>);

impl NamedService for RateLimitService {
    const NAME: &'static str = "envoy.service.ratelimit.v3.RateLimitService";
}

struct ShouldRateLimit(Arc<Ledger>);

impl UnaryService<RateLimitRequest> for ShouldRateLimit {
    type Response = RateLimitResponse;
    type Future = BoxFuture<Response<RateLimitResponse>, Status>;
    fn call(&mut self, request: Request<RateLimitRequest>) -> Self::Future {
        let ledger = self.0.clone();
        Box::pin(async move { ledger.should_rate_limit(request.into_inner()).await.map(Response::new) })
    }
}

impl<B> Service<http::Request<B>> for RateLimitService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let ledger = self.0.clone();
        Box::pin(async move {
            if req.uri().path() == METHOD_PATH {
                let mut grpc = Grpc::new(tonic_prost::ProstCodec::<RateLimitResponse, RateLimitRequest>::default());
                Ok(grpc.unary(ShouldRateLimit(ledger), req).await)
            } else {
                Ok(Status::unimplemented("only ShouldRateLimit is served").into_http())
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Start-up
// ---------------------------------------------------------------------------------------------

struct Args {
    config: String,
    listen: SocketAddr,
    redis: String,
}

fn parse_args() -> Result<Args, String> {
    let mut config = None;
    let mut listen = "127.0.0.1:8081".to_string();
    let mut redis = "redis://127.0.0.1:6379".to_string();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--config" => config = Some(value()?),
            "--listen" => listen = value()?,
            "--redis" => redis = value()?,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        config: config.ok_or("--config FILE is required")?,
        listen: listen.parse().map_err(|e| format!("--listen {listen}: {e}"))?,
        redis,
    })
}

fn load(path: &str) -> Result<LimitsFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    LimitsFile::parse(&text).map_err(|e| format!("{path}: {e}"))
}

fn modified(path: &str) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("switchyard-rls: {e}");
            }
            eprintln!("usage: switchyard-rls --config limits.yaml [--listen 127.0.0.1:8081] [--redis redis://127.0.0.1:6379]");
            std::process::exit(2);
        }
    };
    let limits = match load(&args.config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("switchyard-rls: {e}");
            std::process::exit(1);
        }
    };
    let client = match redis::Client::open(args.redis.as_str()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchyard-rls: --redis {}: {e}", args.redis);
            std::process::exit(1);
        }
    };
    let ledger = Arc::new(Ledger {
        limits: RwLock::new(Arc::new(limits)),
        client,
        conn: tokio::sync::Mutex::new(None),
        script: redis::Script::new(SCRIPT),
    });

    // The limits file is read again whenever it changes (keys added, limits changed): no restart.
    let watched = ledger.clone();
    let path = args.config.clone();
    tokio::spawn(async move {
        let mut seen = modified(&path);
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = modified(&path);
            if now == seen {
                continue;
            }
            seen = now;
            match load(&path) {
                Ok(l) => {
                    if let Ok(mut cur) = watched.limits.write() {
                        *cur = Arc::new(l);
                        eprintln!("switchyard-rls: reloaded {path}");
                    }
                }
                Err(e) => eprintln!("switchyard-rls: keeping the previous limits: {e}"),
            }
        }
    });

    eprintln!("switchyard-rls: listening on {} (redis {})", args.listen, args.redis);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let served = tonic::transport::Server::builder()
        .serve_with_shutdown(args.listen, RateLimitService(ledger), shutdown)
        .await;
    if let Err(e) = served {
        eprintln!("switchyard-rls: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_dollars() {
        assert_eq!(openai_duration(20), "20ms");
        assert_eq!(openai_duration(1500), "1.5s");
        assert_eq!(openai_duration(59_901), "60s");
        assert_eq!(openai_duration(59_850), "59.9s");
        assert_eq!(usd(1_234_567), "1.234567");
        assert_eq!(usd(5), "0.000005");
    }
}
