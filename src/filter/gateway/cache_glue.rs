//! The gateway's glue for the answer cache and quality sampling (`crate::cache`): reads what the
//! decisions need, serves a hit, stores and samples the answer when it ends. Only runs when the
//! configuration has a `cache` or `quality_sampling` section.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use super::GatewayFilter;
use crate::cache::{self, sample, Caller, StoreResult};
use crate::filter::{emit_metrics, now_ms, publish_queue_sample, EnvoyStore};
use crate::config::Gateway;
use crate::policy::guardrails::RequestGuard;
use crate::policy::{Outcome, Principal};
use crate::telemetry::{stat_name, MetricKind, MetricUpdate, CACHE_EVICTIONS, CACHE_SEMANTIC_ERRORS, CACHE_SEMANTIC_HITS, CACHE_STORES, CACHE_TOO_LARGE, SAMPLES_DROPPED, SAMPLES_QUEUED};

/// What [`begin`] decided.
pub(super) struct Begun {
    /// What the cache did (`None` when it is off).
    pub status: Option<&'static str>,
    pub watch: Option<Box<cache::Watch>>,
    /// A cached answer to serve: its bytes in the form asked for, the entry, the resolved model.
    pub hit: Option<Box<(Vec<u8>, cache::Entry, String)>>,
}

/// Looks a chat request up in the cache and decides whether to sample it.
#[allow(clippy::too_many_arguments)]
pub(super) fn begin(
    cfg: &Gateway,
    principal: Option<&Principal>,
    requested: &str,
    (stream, wants_usage): (bool, bool),
    control: cache::Control,
    body: &[u8],
    guard: Option<&RequestGuard>,
    resolved_model: &str,
    byok: bool,
) -> Begun {
    // Samples carry what the provider saw: the redacted body when guardrails rewrote it.
    let redacted = guard.and_then(|g| g.body.as_deref());
    let guarded = guard.is_some_and(|g| g.body.is_some() || g.wants_answer());
    let caller = Caller { key_id: principal.map(|p| p.key_id()), team: principal.and_then(|p| p.team()), byok, guarded };
    let (hit, watch) = cache::begin_request(
        cfg.cache.as_ref(),
        cfg.sampling.as_ref(),
        &EnvoyStore,
        body,
        redacted.unwrap_or(body),
        requested,
        resolved_model,
        &caller,
        control,
        now_ms(),
        super::random_unit,
    );
    if let Some(entry) = hit {
        // A stored body that cannot be replayed in the form asked for is a miss (not stored over).
        return match entry.answer(stream, wants_usage) {
            Some(answer) => Begun {
                status: Some(cache::CacheStatus::Hit.as_str()),
                watch: None,
                hit: Some(Box::new((answer, entry, resolved_model.to_string()))),
            },
            None => Begun { status: Some(cache::CacheStatus::Miss.as_str()), watch: None, hit: None },
        };
    }
    Begun { status: watch.as_ref().and_then(|w| w.cache_status()).map(|s| s.as_str()), watch: watch.map(Box::new), hit: None }
}

fn counter(name: &str, value: u64) -> MetricUpdate {
    MetricUpdate { kind: MetricKind::Counter, name: stat_name(name, &[]), value }
}

impl GatewayFilter {
    /// Answers from the cache: nothing goes upstream. The budget is charged the original cost only
    /// with `charge_hits`; otherwise the admission is released and the cost counted as saved.
    pub(super) fn serve_cached(&mut self, answer: Vec<u8>, entry: cache::Entry, model: &str) -> Action {
        self.op = None;
        self.canary = None;
        self.latency_model = None;
        self.record.status = 200;
        self.record.response_model = crate::api::chat::ResponseSummary::parse(&entry.body).model;
        let charge = self.cfg.cache.as_ref().is_some_and(|c| c.cfg.charge_hits);
        let mut headers: Vec<(&str, String)> = vec![
            ("content-type", if self.stream { "text/event-stream" } else { "application/json" }.to_string()),
            (cache::CACHE_HEADER, cache::CacheStatus::Hit.as_str().to_string()),
        ];
        if let Some(a) = &self.admission {
            headers.extend(a.response_headers());
        }
        let cfg = self.cfg.clone();
        if let (Some(admission), Some(policy)) = (self.admission.take(), cfg.policy.as_ref()) {
            let usage = entry.usage();
            let outcome = match (&usage, charge) {
                (Some(u), true) => Outcome::Usage(u),
                _ => Outcome::NotServed,
            };
            let s = policy.settle(admission, outcome, Some(model), None, now_ms(), &EnvoyStore);
            for (k, v) in s.headers() {
                // The settlement's figures replace the admission's (budget left after the hit).
                headers.retain(|(name, _)| *name != k);
                headers.push((k, v));
            }
            self.record.cost_micros = if charge { s.cost_micros } else { Some(0) };
        }
        if !charge {
            self.record.cache_saved_micros = entry.cost_micros;
        }
        // Another ingress API: the canonical answer in its shape.
        let answer = match (self.answer.as_mut(), self.stream) {
            (None, _) => answer,
            (Some(t), true) => {
                let mut out = Vec::with_capacity(answer.len() * 2);
                t.push(&answer, &mut out);
                t.finish(&mut out);
                out
            }
            (Some(_), false) => self.translate_whole_answer(&answer).unwrap_or(answer),
        };
        self.publish_record();
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if let Err(e) = hostcalls::send_http_response(200, pairs, Some(&answer)) {
            log::warn!("switchyard: cannot send cached answer: {e:?}");
        }
        Action::Pause
    }

    /// A missed request's semantic lookup: asks the embeddings model, holding the request until it
    /// answers. `None` (go on upstream) when there is nothing to ask or the call cannot be made.
    pub(super) fn start_semantic(&mut self) -> Option<Action> {
        let cfg = self.cfg.clone();
        let cache = cfg.cache.as_ref()?;
        let call = cache.semantic_call(self.watch.as_ref()?.ticket.as_ref()?)?;
        let mut headers = vec![(":method", "POST"), (":path", call.path), (":authority", call.authority), ("content-type", "application/json")];
        if let Some(a) = call.authorization {
            headers.push(("authorization", a));
        }
        match self.dispatch_http_call(call.cluster, headers, Some(&call.body), vec![], std::time::Duration::from_millis(u64::from(call.timeout_ms))) {
            Ok(_) => Some(Action::Pause),
            Err(e) => {
                log::debug!("switchyard: semantic cache: embeddings call to {} failed: {e:?}", call.cluster);
                if cfg.emit_metrics {
                    emit_metrics(&[counter(CACHE_SEMANTIC_ERRORS, 1)]);
                }
                None
            }
        }
    }

    /// The embedding arrived (or the call failed): serve the nearest paraphrase's answer, or let
    /// the request go upstream.
    pub(super) fn on_semantic_answer(&mut self, body_size: usize) {
        let cfg = self.cfg.clone();
        let status = self.get_http_call_response_header(":status").and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
        let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
        let (stream, wants_usage) = (self.stream, self.wants_usage);
        let found = match (cfg.cache.as_ref(), self.watch.as_mut().and_then(|w| w.ticket.as_mut())) {
            (Some(c), Some(t)) => {
                let model = t.semantic_model().unwrap_or_default().to_string();
                c.semantic_answer(&EnvoyStore, t, status, &body, now_ms()).map(|(e, _)| (e, model))
            }
            _ => None,
        };
        if cfg.emit_metrics && !(200..300).contains(&status) {
            emit_metrics(&[counter(CACHE_SEMANTIC_ERRORS, 1)]);
        }
        if let Some((entry, model)) = found {
            if let Some(answer) = entry.answer(stream, wants_usage) {
                self.watch = None;
                self.latency_model = None;
                self.record.cache = Some(cache::CacheStatus::Hit.as_str());
                if cfg.emit_metrics {
                    emit_metrics(&[counter(CACHE_SEMANTIC_HITS, 1)]);
                }
                self.serve_cached(answer, entry, &model);
                return;
            }
        }
        self.resume_http_request();
    }

    /// The answer ended: store it (a miss whose answer is a complete 200) and queue its sample.
    pub(super) fn finish_watch(&mut self) {
        let Some(mut w) = self.watch.take() else { return };
        let cfg = self.cfg.clone();
        let answer = w.finish();
        let mut updates = Vec::new();
        if let (Some(c), Some(t), Some((body, folded))) = (cfg.cache.as_ref(), w.ticket.as_mut(), answer.as_ref()) {
            match c.store(&EnvoyStore, t, self.record.status, body, *folded, self.record.cost_micros, now_ms()) {
                StoreResult::Stored { evicted } => {
                    updates.push(counter(CACHE_STORES, 1));
                    if evicted > 0 {
                        updates.push(counter(CACHE_EVICTIONS, evicted as u64));
                    }
                }
                StoreResult::TooLarge => updates.push(counter(CACHE_TOO_LARGE, 1)),
                StoreResult::NotStored => {}
            }
        }
        if let (Some(s), Some(req)) = (cfg.sampling.as_ref(), w.take_sample_request()) {
            if self.record.status == 200 {
                let r = &self.record;
                let meta = sample::SampleMeta {
                    time_unix_ms: r.start_unix_ms,
                    request_id: &r.request_id,
                    key_id: r.key_id.as_deref(),
                    team: r.team.as_deref(),
                    route: r.route.as_deref(),
                    requested_model: r.requested_model.as_deref(),
                    response_model: r.response_model.as_deref(),
                    backend: r.backend.as_deref(),
                    stream: r.stream,
                    status: r.status,
                    cache: r.cache,
                    duration_ms: r.duration_ms,
                };
                let line = answer.as_ref().and_then(|(b, _)| sample::sample_line(&meta, &req, b));
                let queued = line.is_some_and(|l| publish_queue_sample(l, s));
                updates.push(counter(if queued { SAMPLES_QUEUED } else { SAMPLES_DROPPED }, 1));
            }
        }
        if cfg.emit_metrics && !updates.is_empty() {
            emit_metrics(&updates);
        }
    }
}

