//! What every request leaves behind: metrics (Envoy stats) and access-log fields.
//!
//! Metric dimensions are encoded in the stat name as `;label=value` pairs, e.g.
//! `gen_ai_client_token_usage;gen_ai_provider_name=anthropic;gen_ai_request_model=claude-haiku;gen_ai_token_type=output`,
//! and turned into Prometheus labels by the `stats_config.stats_tags` regexes in envoy.yaml (one per
//! label: `(;LABEL=([^;]*))`, see [`STATS_TAG_LABELS`]). Envoy's wasm stats live in the `wasmcustom`
//! namespace, which the Prometheus endpoint exports without the `envoy_` prefix.
//! Names follow the OpenTelemetry GenAI semantic conventions where one exists.

use std::fmt::Write;

/// Every label the gateway puts in stat names; envoy.yaml needs one `stats_tags` entry for each.
pub const STATS_TAG_LABELS: &[&str] = &[
    "route",
    "backend",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
    "status_class",
    "error_type",
    "gen_ai_token_type",
    "reason",
    "key_id",
    "team",
    "detector",
    "action",
    "direction",
    "gen_ai_operation_name",
];

pub const REQUESTS: &str = "switchyard_requests";
pub const TOKENS: &str = "gen_ai_client_token_usage";
pub const COST: &str = "switchyard_cost_micros";
pub const FAILOVERS: &str = "switchyard_failovers";
pub const REJECTIONS: &str = "switchyard_rejections";
pub const DURATION: &str = "gen_ai_server_request_duration_ms";
pub const TTFT: &str = "gen_ai_server_time_to_first_token_ms";
pub const TPOT: &str = "gen_ai_server_time_per_output_token_ms";
pub const TOKENS_PER_REQUEST: &str = "switchyard_request_tokens";
/// Counter: attempts whose first-token deadline passed (abandoned, or hedged), by route.
pub const DEADLINES_FIRED: &str = "switchyard_first_token_deadlines";
/// Counter: requests on a route with a deadline, by route and the backend that won.
pub const DEADLINE_WINS: &str = "switchyard_deadline_winners";
/// Counter: attempts Envoy cancelled after sending them (abandoned at the deadline, or a hedge's
/// loser), by route and backend.
pub const CANCELLED_ATTEMPTS: &str = "switchyard_cancelled_attempts";
/// Histogram: the winning attempt's own time to first token (from its start), by route and backend.
pub const ATTEMPT_TTFT: &str = "switchyard_attempt_ttft_ms";
/// Gauge: a canary's current share of its route (parts per million), by `route` = the route's model.
pub const CANARY_SHARE: &str = "switchyard_canary_share_ppm";
/// Counter: canary rollbacks, by `route` and `reason` (the gate that failed).
pub const CANARY_ROLLBACKS: &str = "switchyard_canary_rollbacks";
/// Gauge: a `fastest` candidate's latest score (ms; lower is better), by `route` = model.
pub const CANDIDATE_SCORE: &str = "switchyard_candidate_score_ms";
/// Gauge: requests whose state is registered for their backend attempts, summed over workers.
/// Drains to zero when traffic stops; a value that keeps growing is a leak (scripts/soak watches it).
/// Guardrail detections, by detector, action and direction (`request`, `answer`); never the text.
pub const GUARDRAIL_DETECTIONS: &str = "switchyard_guardrail_detections";
/// Chat requests the exact cache answered, missed (and sent upstream), or did not look up.
pub const CACHE_HITS: &str = "switchyard_cache_hits";
pub const CACHE_MISSES: &str = "switchyard_cache_misses";
pub const CACHE_BYPASSES: &str = "switchyard_cache_bypasses";
/// What the answers served from the cache cost when they were first paid (micro-USD).
pub const CACHE_SAVED: &str = "switchyard_cache_saved_micros";
/// Answers stored in the cache, entries evicted to make room, answers too large to store.
pub const CACHE_STORES: &str = "switchyard_cache_stores";
pub const CACHE_EVICTIONS: &str = "switchyard_cache_evictions";
pub const CACHE_TOO_LARGE: &str = "switchyard_cache_too_large";
/// Hits served for a paraphrase (also counted in `switchyard_cache_hits`), and embeddings calls
/// that failed (the request then went upstream).
pub const CACHE_SEMANTIC_HITS: &str = "switchyard_cache_semantic_hits";
pub const CACHE_SEMANTIC_ERRORS: &str = "switchyard_cache_semantic_errors";
/// Quality samples queued for the sink, dropped (queue full, body too large), delivered, and
/// lost to a sink failure (an error status, no answer, an unknown cluster).
pub const SAMPLES_QUEUED: &str = "switchyard_quality_samples_queued";
pub const SAMPLES_DROPPED: &str = "switchyard_quality_samples_dropped";
pub const SAMPLES_DELIVERED: &str = "switchyard_quality_samples_delivered";
pub const SINK_FAILURES: &str = "switchyard_quality_sink_errors";
pub const INFLIGHT: &str = "switchyard_inflight_requests";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    Counter,
    Histogram,
    /// Set to the value (a gauge shared by every worker: the latest write wins).
    Gauge,
}

/// One metric update: add `value` to a counter, or record it in a histogram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricUpdate {
    pub kind: MetricKind,
    pub name: String,
    pub value: u64,
}

/// Why the gateway answered a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Auth,
    Scope,
    RateLimit,
    Budget,
    Validation,
    Guardrail,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Auth => "auth",
            Rejection::Scope => "scope",
            Rejection::RateLimit => "rate_limit",
            Rejection::Budget => "budget",
            Rejection::Validation => "validation",
            Rejection::Guardrail => "guardrail",
        }
    }
}

/// Everything known about one request when it ends.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestRecord {
    pub request_id: String,
    pub start_unix_ms: u64,
    pub operation: &'static str,
    pub key_id: Option<String>,
    pub team: Option<String>,
    pub route: Option<String>,
    pub requested_model: Option<String>,
    pub response_model: Option<String>,
    pub backend: Option<String>,
    pub provider: Option<String>,
    pub attempts: u32,
    pub failover: bool,
    pub status: u16,
    pub error_type: Option<String>,
    pub error_code: Option<String>,
    pub rejection: Option<Rejection>,
    pub stream: bool,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_creation_tokens: u64,
    pub reasoning_tokens: u64,
    pub usage_known: bool,
    pub cost_micros: Option<u64>,
    pub duration_ms: u64,
    pub ttfb_ms: Option<u64>,
    pub ttft_ms: Option<u64>,
    /// The arm of the route's canary this request took (`stable`, `canary`), if it has one.
    pub canary_arm: Option<&'static str>,
    /// Candidates skipped because their model lacks a capability the request needs.
    pub skipped_candidates: u32,
    /// The routing rule (or `meta:<name>` default) that chose the model, if one did.
    pub routing_rule: Option<String>,
    /// The route's first-token deadline and what it did (`None` on routes without one).
    pub deadline: Option<DeadlineRecord>,
    /// Attempts Envoy cancelled after sending them (`crate::policy::deadline::cancelled`).
    pub cancelled_attempts: Vec<CancelledAttempt>,
    /// The configured `*` pattern the requested model matched (its metric label; the access log
    /// keeps the name as sent).
    pub model_pattern: Option<String>,
    /// Guardrail detections of the request and its answer (counts only).
    pub guardrails: Vec<crate::policy::guardrails::Detection>,
    /// What the exact cache did (`hit`, `miss`, `bypass`); `None` when the cache is off.
    pub cache: Option<&'static str>,
    /// A hit's original cost, which this request did not pay again.
    pub cache_saved_micros: Option<u64>,
}

/// An attempt cancelled by Envoy (a deadline, a hedge's winner) after its provider got it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CancelledAttempt {
    pub backend: String,
    /// Its backend's schema (`gen_ai_provider_name`).
    pub provider: String,
    /// Its prompt at its model's input price (with prices configured; a provider bills a request
    /// it started processing).
    pub cost_micros: Option<u64>,
}

/// What a first-token deadline did to one request (`crate::policy::deadline::report`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeadlineRecord {
    pub timeout_ms: u32,
    pub hedge: bool,
    /// Attempts abandoned (or overtaken, when hedging) at their deadline.
    pub fired: u32,
    /// 1-based attempt whose answer the client got.
    pub winner: Option<u32>,
    /// The winner's time from its own start to its first token (or whole answer).
    pub winner_ttft_ms: Option<u64>,
}

/// Which optional labels to add (per-key labels multiply series: opt-in).
#[derive(Debug, Clone, Copy, Default)]
pub struct LabelOptions {
    pub key_labels: bool,
}

/// Builds `metric;label=value;…`. Values are sanitised: `;` and `=` would break the encoding,
/// control characters and spaces have no place in a label, and an empty value reads `unknown`.
pub fn stat_name(metric: &str, labels: &[(&str, &str)]) -> String {
    let mut s = String::with_capacity(metric.len() + labels.len() * 32);
    s.push_str(metric);
    for (k, v) in labels {
        s.push(';');
        s.push_str(k);
        s.push('=');
        if v.is_empty() {
            s.push_str("unknown");
        }
        for c in v.chars().take(128) {
            s.push(if c == ';' || c == '=' || c.is_control() || c.is_whitespace() { '_' } else { c });
        }
    }
    s
}

pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}

/// The metric updates one finished request makes.
pub fn metric_updates(r: &RequestRecord, opts: LabelOptions) -> Vec<MetricUpdate> {
    let mut out = Vec::with_capacity(16);
    let route = r.route.as_deref().unwrap_or("");
    let backend = r.backend.as_deref().unwrap_or("");
    let provider = r.provider.as_deref().unwrap_or("");
    // A label carries only a model the configuration resolved: an unknown name is whatever a client
    // sent, and each distinct one would define a new stat for good (unbounded series and VM memory).
    // The access log keeps the name as sent.
    // Through a `*` pattern any name resolves: the pattern is the label, so clients cannot mint series.
    let req_model = match (&r.route, &r.model_pattern) {
        (Some(_), Some(pattern)) => pattern.as_str(),
        (Some(_), None) => r.requested_model.as_deref().unwrap_or(""),
        (None, _) => "",
    };
    let resp_model = r.response_model.as_deref().unwrap_or("");
    let error_type = r.error_type.as_deref().unwrap_or("none");
    let key = r.key_id.as_deref().unwrap_or("");
    let team = r.team.as_deref().unwrap_or("");

    let mut base: Vec<(&str, &str)> = vec![
        ("route", route),
        ("backend", backend),
        ("gen_ai_provider_name", provider),
        ("gen_ai_request_model", req_model),
        ("gen_ai_response_model", resp_model),
        ("status_class", status_class(r.status)),
        ("error_type", error_type),
    ];
    if opts.key_labels {
        base.push(("key_id", key));
        base.push(("team", team));
    }
    let counter = |name: String, value: u64| MetricUpdate { kind: MetricKind::Counter, name, value };
    let histogram = |name: String, value: u64| MetricUpdate { kind: MetricKind::Histogram, name, value };

    // The API the client spoke (`chat`, `embeddings`, `messages`, …): on the request counter only.
    let mut with_op = base.clone();
    with_op.push(("gen_ai_operation_name", if r.operation.is_empty() { "unknown" } else { r.operation }));
    out.push(counter(stat_name(REQUESTS, &with_op), 1));

    if let Some(rej) = r.rejection {
        let mut labels = vec![("reason", rej.as_str()), ("gen_ai_request_model", req_model)];
        if opts.key_labels {
            labels.push(("key_id", key));
            labels.push(("team", team));
        }
        out.push(counter(stat_name(REJECTIONS, &labels), 1));
    }
    if r.failover {
        out.push(counter(stat_name(FAILOVERS, &[("route", route), ("backend", backend)]), 1));
    }

    let model_labels: Vec<(&str, &str)> = {
        let mut l = vec![("gen_ai_provider_name", provider), ("gen_ai_request_model", req_model)];
        if opts.key_labels {
            l.push(("key_id", key));
            l.push(("team", team));
        }
        l
    };
    if r.usage_known {
        let cached = r.cached_input_tokens;
        let creation = r.cache_creation_tokens;
        for (ty, n) in [
            ("input", r.input_tokens),
            ("output", r.output_tokens),
            ("cached_input", cached),
            ("cache_creation", creation),
            ("reasoning", r.reasoning_tokens),
        ] {
            if n > 0 {
                let mut l = model_labels.clone();
                l.push(("gen_ai_token_type", ty));
                out.push(counter(stat_name(TOKENS, &l), n));
            }
        }
        for (ty, n) in [("input", r.input_tokens), ("output", r.output_tokens)] {
            let mut l = model_labels[..2].to_vec();
            l.push(("gen_ai_token_type", ty));
            out.push(histogram(stat_name(TOKENS_PER_REQUEST, &l), n));
        }
    }
    if let Some(c) = r.cost_micros {
        // The record's cost is the request's; cancelled attempts are counted under their own
        // provider below.
        let cancelled: u64 = r.cancelled_attempts.iter().filter_map(|a| a.cost_micros).sum();
        let c = c.saturating_sub(cancelled);
        if c > 0 {
            out.push(counter(stat_name(COST, &model_labels), c));
        }
    }
    if let Some(d) = &r.deadline {
        if d.fired > 0 {
            out.push(counter(stat_name(DEADLINES_FIRED, &[("route", route)]), u64::from(d.fired)));
        }
        if d.winner.is_some() {
            out.push(counter(stat_name(DEADLINE_WINS, &[("route", route), ("backend", backend)]), 1));
        }
        if let Some(t) = d.winner_ttft_ms {
            out.push(histogram(stat_name(ATTEMPT_TTFT, &[("route", route), ("backend", backend)]), t));
        }
    }
    for d in &r.guardrails {
        let l = [("detector", d.detector.as_str()), ("action", d.action), ("direction", d.direction)];
        out.push(counter(stat_name(GUARDRAIL_DETECTIONS, &l), u64::from(d.count)));
    }
    if let Some(c) = r.cache {
        let name = match c {
            "hit" => CACHE_HITS,
            "miss" => CACHE_MISSES,
            _ => CACHE_BYPASSES,
        };
        out.push(counter(stat_name(name, &[("gen_ai_request_model", req_model)]), 1));
        if let Some(s) = r.cache_saved_micros.filter(|s| *s > 0) {
            out.push(counter(stat_name(CACHE_SAVED, &[("gen_ai_request_model", req_model)]), s));
        }
    }
    for c in &r.cancelled_attempts {
        out.push(counter(stat_name(CANCELLED_ATTEMPTS, &[("route", route), ("backend", c.backend.as_str())]), 1));
        if let Some(micros) = c.cost_micros.filter(|m| *m > 0) {
            let mut l = model_labels.clone();
            if let Some(p) = l.first_mut() {
                p.1 = c.provider.as_str();
            }
            out.push(counter(stat_name(COST, &l), micros));
        }
    }
    // Latency histograms only for requests that reached a provider.
    if r.attempts > 0 {
        let l = &model_labels[..2];
        out.push(histogram(stat_name(DURATION, l), r.duration_ms));
        if let Some(ttft) = r.ttft_ms {
            out.push(histogram(stat_name(TTFT, l), ttft));
            if r.output_tokens > 1 && r.duration_ms >= ttft {
                out.push(histogram(stat_name(TPOT, l), (r.duration_ms - ttft) / (r.output_tokens - 1)));
            }
        }
    }
    out
}

/// Access-log fields, published as filter state `wasm.switchyard.<name>` and read in envoy.yaml as
/// `%FILTER_STATE(wasm.switchyard.<name>:PLAIN)%`. No credential or prompt ever goes here.
pub fn log_fields(r: &RequestRecord) -> Vec<(&'static str, String)> {
    fn opt(v: &Option<String>) -> String {
        v.clone().unwrap_or_default()
    }
    let mut f = vec![
        ("request_id", r.request_id.clone()),
        ("start_time_ms", r.start_unix_ms.to_string()),
        ("operation", r.operation.to_string()),
        ("key_id", opt(&r.key_id)),
        ("team", opt(&r.team)),
        ("route", opt(&r.route)),
        ("routing_rule", opt(&r.routing_rule)),
        ("canary_arm", r.canary_arm.unwrap_or_default().to_string()),
        ("skipped_candidates", if r.skipped_candidates > 0 { r.skipped_candidates.to_string() } else { String::new() }),
        ("requested_model", opt(&r.requested_model)),
        ("response_model", opt(&r.response_model)),
        ("backend", opt(&r.backend)),
        ("provider", opt(&r.provider)),
        ("attempts", r.attempts.to_string()),
        ("failover", r.failover.to_string()),
        ("status", r.status.to_string()),
        ("error_type", opt(&r.error_type)),
        ("error_code", opt(&r.error_code)),
        ("rejection", r.rejection.map(|x| x.as_str().to_string()).unwrap_or_default()),
        ("stream", r.stream.to_string()),
        ("input_tokens", r.input_tokens.to_string()),
        ("output_tokens", r.output_tokens.to_string()),
        ("cached_input_tokens", r.cached_input_tokens.to_string()),
        ("cache_creation_tokens", r.cache_creation_tokens.to_string()),
        ("reasoning_tokens", r.reasoning_tokens.to_string()),
        ("cost_micros", r.cost_micros.map(|c| c.to_string()).unwrap_or_default()),
        ("duration_ms", r.duration_ms.to_string()),
        ("ttfb_ms", r.ttfb_ms.map(|c| c.to_string()).unwrap_or_default()),
        ("ttft_ms", r.ttft_ms.map(|c| c.to_string()).unwrap_or_default()),
    ];
    if let Some(c) = r.cache {
        f.push(("cache", c.to_string()));
        f.push(("cache_saved_micros", r.cache_saved_micros.map(|c| c.to_string()).unwrap_or_default()));
    }
    if let Some(d) = &r.deadline {
        f.push(("first_token_timeout_ms", d.timeout_ms.to_string()));
        f.push(("hedge", d.hedge.to_string()));
        f.push(("deadlines_fired", d.fired.to_string()));
        f.push(("winner_attempt", d.winner.map(|w| w.to_string()).unwrap_or_default()));
        f.push(("winner_ttft_ms", d.winner_ttft_ms.map(|t| t.to_string()).unwrap_or_default()));
    }
    if !r.guardrails.is_empty() {
        f.push(("guardrails_request", crate::policy::guardrails::summary(&r.guardrails, "request")));
        f.push(("guardrails_answer", crate::policy::guardrails::summary(&r.guardrails, "answer")));
    }
    f.retain(|(_, v)| !v.is_empty());
    f
}

/// The `stats_tags` block for envoy.yaml (used by docs and a test that keeps envoy.yaml in sync).
pub fn stats_tags_yaml(indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut s = String::new();
    for l in STATS_TAG_LABELS {
        let _ = writeln!(s, "{pad}- {{ tag_name: {l}, regex: \"(;{l}=([^;]*))\" }}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> RequestRecord {
        RequestRecord {
            request_id: "r1".into(),
            operation: "chat",
            route: Some("gpt-4o-mini".into()),
            requested_model: Some("gpt-4o-mini".into()),
            response_model: Some("claude-3-5-haiku-20241022".into()),
            backend: Some("anthropic".into()),
            provider: Some("anthropic".into()),
            attempts: 2,
            failover: true,
            status: 200,
            stream: true,
            input_tokens: 20,
            output_tokens: 11,
            cached_input_tokens: 5,
            usage_known: true,
            cost_micros: Some(42),
            duration_ms: 120,
            ttft_ms: Some(20),
            ..Default::default()
        }
    }

    #[test]
    fn names_encode_labels_and_sanitise_values() {
        assert_eq!(stat_name("m", &[("a", "x.y"), ("b", "")]), "m;a=x.y;b=unknown");
        assert_eq!(stat_name("m", &[("a", "p;q=r s\n")]), "m;a=p_q_r_s_");
    }

    #[test]
    fn a_failed_over_stream_counts_everything_once() {
        let u = metric_updates(&record(), LabelOptions::default());
        let get = |prefix: &str| u.iter().filter(|m| m.name.starts_with(prefix)).collect::<Vec<_>>();
        assert_eq!(get(REQUESTS).len(), 1);
        assert!(get(REQUESTS)[0].name.contains(";status_class=2xx;error_type=none"));
        assert_eq!(get(FAILOVERS).len(), 1);
        let tokens: Vec<_> = u.iter().filter(|m| m.name.starts_with("gen_ai_client_token_usage;")).collect();
        assert_eq!(tokens.len(), 3, "input, output, cached_input (zero counts are skipped)");
        assert!(tokens.iter().any(|m| m.name.ends_with("gen_ai_token_type=output") && m.value == 11));
        assert_eq!(get(COST)[0].value, 42);
        assert_eq!(get(TTFT)[0].value, 20);
        assert_eq!(get(TPOT)[0].value, 10, "(120-20)/(11-1)");
        assert!(get(REJECTIONS).is_empty());
        assert!(!u.iter().any(|m| m.name.contains("key_id")), "key labels are opt-in");
    }

    #[test]
    fn rejections_have_a_reason_and_no_latency() {
        let r = RequestRecord {
            status: 401,
            rejection: Some(Rejection::Auth),
            error_type: Some("invalid_request_error".into()),
            route: Some("m".into()),
            requested_model: Some("m".into()),
            ..Default::default()
        };
        let u = metric_updates(&r, LabelOptions { key_labels: true });
        assert!(u.iter().any(|m| m.name == "switchyard_rejections;reason=auth;gen_ai_request_model=m;key_id=unknown;team=unknown"));
        assert!(!u.iter().any(|m| m.kind == MetricKind::Histogram));
    }

    #[test]
    fn unresolved_models_do_not_become_label_values() {
        let r = RequestRecord {
            status: 404,
            rejection: Some(Rejection::Validation),
            error_type: Some("invalid_request_error".into()),
            requested_model: Some("no-such-model-1234".into()),
            ..Default::default()
        };
        let u = metric_updates(&r, LabelOptions::default());
        assert!(u.iter().all(|m| !m.name.contains("no-such-model")), "{u:?}");
        assert!(u.iter().any(|m| m.name == "switchyard_rejections;reason=validation;gen_ai_request_model=unknown"));
        assert!(log_fields(&r).iter().any(|(k, v)| *k == "requested_model" && v == "no-such-model-1234"));
    }

    #[test]
    fn names_matched_by_a_pattern_are_labelled_with_the_pattern() {
        let u = |name: &str| {
            let r = RequestRecord { requested_model: Some(name.into()), model_pattern: Some("claude-*".into()), ..record() };
            metric_updates(&r, LabelOptions::default())
        };
        let (a, b) = (u("claude-made-up-1"), u("claude-made-up-2"));
        assert_eq!(a.iter().map(|m| &m.name).collect::<Vec<_>>(), b.iter().map(|m| &m.name).collect::<Vec<_>>());
        assert!(a.iter().all(|m| !m.name.contains("made-up")), "{a:?}");
        assert!(a.iter().any(|m| m.name.contains("gen_ai_request_model=claude-*")), "{a:?}");
        let r = RequestRecord { requested_model: Some("claude-made-up-1".into()), model_pattern: Some("claude-*".into()), ..record() };
        assert!(log_fields(&r).iter().any(|(k, v)| *k == "requested_model" && v == "claude-made-up-1"));
    }

    #[test]
    fn cancelled_attempts_are_counted_and_their_cost_labelled_with_their_provider() {
        // The request cost 50 µ$: 42 for Anthropic's answer, 8 for the prompt OpenAI started on.
        let r = RequestRecord {
            cost_micros: Some(50),
            cancelled_attempts: vec![CancelledAttempt { backend: "openai".into(), provider: "openai".into(), cost_micros: Some(8) }],
            ..record()
        };
        let u = metric_updates(&r, LabelOptions::default());
        let cost: Vec<_> = u.iter().filter(|m| m.name.starts_with(COST)).map(|m| (m.name.as_str(), m.value)).collect();
        assert_eq!(
            cost,
            vec![
                ("switchyard_cost_micros;gen_ai_provider_name=anthropic;gen_ai_request_model=gpt-4o-mini", 42),
                ("switchyard_cost_micros;gen_ai_provider_name=openai;gen_ai_request_model=gpt-4o-mini", 8)
            ]
        );
        assert!(u.iter().any(|m| m.name == "switchyard_cancelled_attempts;route=gpt-4o-mini;backend=openai" && m.value == 1));
        assert!(log_fields(&r).contains(&("cost_micros", "50".to_string())));
        // Unpriced: counted, no cost.
        let r = RequestRecord {
            cancelled_attempts: vec![CancelledAttempt { backend: "openai".into(), provider: "openai".into(), cost_micros: None }],
            ..record()
        };
        let u = metric_updates(&r, LabelOptions::default());
        assert!(u.iter().any(|m| m.name.starts_with(CANCELLED_ATTEMPTS)));
        assert!(!u.iter().any(|m| m.name.starts_with(COST) && m.name.contains("openai")));
    }

    #[test]
    fn deadlines_are_counted_only_where_configured() {
        let u = metric_updates(&record(), LabelOptions::default());
        assert!(!u.iter().any(|m| m.name.starts_with("switchyard_first_token") || m.name.starts_with(ATTEMPT_TTFT)));
        assert!(!log_fields(&record()).iter().any(|(k, _)| *k == "deadlines_fired"));
        let r = RequestRecord {
            deadline: Some(DeadlineRecord { timeout_ms: 500, hedge: false, fired: 1, winner: Some(2), winner_ttft_ms: Some(140) }),
            ..record()
        };
        let u = metric_updates(&r, LabelOptions::default());
        let fired: Vec<_> = u.iter().filter(|m| m.name.starts_with(DEADLINES_FIRED)).collect();
        assert_eq!((fired.len(), fired[0].name.as_str(), fired[0].value), (1, "switchyard_first_token_deadlines;route=gpt-4o-mini", 1));
        assert!(u.iter().any(|m| m.name == "switchyard_deadline_winners;route=gpt-4o-mini;backend=anthropic" && m.value == 1));
        assert!(u.iter().any(|m| m.name == "switchyard_attempt_ttft_ms;route=gpt-4o-mini;backend=anthropic" && m.value == 140));
        let f = log_fields(&r);
        for (k, v) in [("deadlines_fired", "1"), ("winner_attempt", "2"), ("winner_ttft_ms", "140"), ("first_token_timeout_ms", "500")] {
            assert!(f.iter().any(|(fk, fv)| *fk == k && fv == v), "{k}: {f:?}");
        }
    }

    #[test]
    fn log_fields_skip_empty_values() {
        let f = log_fields(&record());
        assert!(f.iter().any(|(k, v)| *k == "backend" && v == "anthropic"));
        assert!(!f.iter().any(|(k, _)| *k == "key_id"));
    }

    #[test]
    fn stats_tags_cover_every_label() {
        let y = stats_tags_yaml(0);
        for l in STATS_TAG_LABELS {
            assert!(y.contains(&format!("tag_name: {l},")));
        }
    }
}
