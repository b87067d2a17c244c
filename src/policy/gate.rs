//! The per-request flow of keys, rate limits and budgets, as the gateway filter calls it:
//!
//! ```text
//! request headers   policy.authenticate(headers, now_ms)           → Principal        (401 / 403)
//! request body      policy.authorize_model(&principal, requested, resolved)           (403)
//!                   policy.admit(&principal, &estimate, model, max_cost, now_ms, store)
//!                                                                   → Admission       (429 + headers)
//! response headers  admission.response_headers()                    x-ratelimit-*, budget left
//! response end      policy.settle(admission, outcome, served, backend, now_ms, store)
//!                                                                   → Settlement (cost, headers)
//! ```
//!
//! Every admitted request must be settled exactly once, whatever happens to it — served, failed
//! upstream, rejected later by the gateway itself, or aborted by the client (`on_log`/`on_done` is
//! the place): [`Policy::settle`] takes the [`Admission`] by value so it cannot be settled twice,
//! and an `Admission` dropped unsettled logs an error. Even then nothing leaks for good: its
//! concurrency slot and budget reservation are leases that expire after `lease_secs`.
//!
//! State lives in shared data, one value per key (`switchyard:key:<id>`) and per team
//! (`switchyard:team:<id>`) holding that scope's rate counters *and* budget, so admitting a
//! request costs one compare-and-swap per scope with limits (zero for a key without limits or
//! budget). Admission is all or nothing: the key's scope is reserved first, then the team's; if
//! the team refuses, the key's reservation is rolled back.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

use super::budget::{Budget, BudgetState, OverBudget, Reservation};
use super::estimate::RequestEstimate;
use super::keys::{
    extract_byok, extract_key, model_not_allowed, KeyConfig, KeyError, KeyRecord, KeyRing, Secret, TeamConfig, TeamRecord,
    DEFAULT_BYOK_HEADER,
};
use super::limits::{lease_expiry, rate_limit_headers, retry_after_headers, Dimension, LimitsConfig, RateDenied, RateGrant, RateSnapshot, RateState};
use super::pricing::{femto_to_micros_ceil, format_usd, parse_usd_micros, ModelPrice, PriceTable, PricingConfig};
use super::store::{update, Reader, SharedStore, UpdateError, Writer};
use crate::api::chat::Usage;
use crate::api::ApiError;

/// Request header with which a client lowers the most one request may cost (US dollars).
pub const MAX_COST_HEADER: &str = "x-switchyard-max-cost";
/// Response header: what a (non-stream) request cost, in US dollars.
pub const COST_HEADER: &str = "x-switchyard-cost";
/// Response header: what is left of the tightest budget that applies, in US dollars.
pub const BUDGET_REMAINING_HEADER: &str = "x-switchyard-budget-remaining";
/// Output tokens a reservation assumes when neither the request, the configuration nor the price
/// table gives a bound.
pub const FALLBACK_MAX_OUTPUT_TOKENS: u64 = 4096;
pub const DEFAULT_LEASE_SECS: u64 = 900;
/// Version 2: rolling rate windows (`limits::RollingWindow`).
const STATE_VERSION: u8 = 2;
/// Version 1 had two-bucket rate windows: they start afresh; its leases and budget are kept.
const STATE_VERSION_V1: u8 = 1;

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// What to do with a request whose cost cannot be computed (no price for its model) when a
/// budget or a cost cap applies to it.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UnpricedModels {
    /// Refuse it (403 `model_not_priced`): a budget that cannot count is no budget.
    #[default]
    Deny,
    /// Let it through at zero cost.
    Free,
}

/// The gateway's `auth` configuration: virtual keys, teams, prices.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    #[serde(default)]
    pub teams: Vec<TeamConfig>,
    #[serde(default)]
    pub pricing: PricingConfig,
    /// Output tokens a budget reservation assumes for a request without `max_tokens`; by default
    /// the model's `max_output_tokens` from the price table, else 4096.
    #[serde(default)]
    pub default_max_output_tokens: Option<u64>,
    /// Seconds after which an unsettled concurrency slot or budget reservation frees itself.
    /// Longer than the longest request (a long stream), or concurrent requests could exceed
    /// `max_concurrent` while it runs.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
    /// Header for bring-your-own-key credentials (keys with `byok: true`).
    #[serde(default)]
    pub byok_header: Option<String>,
    #[serde(default)]
    pub unpriced_models: UnpricedModels,
    /// Where `rpm`, `tpm` and budgets are counted: `local` (default, this Envoy's shared data) or
    /// `fleet` (a rate limit service shared by every Envoy; see [`FleetTags`]).
    #[serde(default)]
    pub ledger: LedgerKind,
}

/// Where a gateway counts requests, tokens and money.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LedgerKind {
    /// In this Envoy's proxy-wasm shared data (every worker thread of one process).
    #[default]
    Local,
    /// In a rate limit service shared by a fleet of Envoys (Envoy's `envoy.filters.http.ratelimit`
    /// in front of a `envoy.service.ratelimit.v3` service on Redis). The gateway still authenticates,
    /// checks models, prices and holds `max_concurrent` per Envoy; it leaves the key, the team, the
    /// prompt estimate and, when the answer ends, the real tokens and cost in filter state for the
    /// rate limit filter's descriptors.
    Fleet,
}

fn default_lease_secs() -> u64 {
    DEFAULT_LEASE_SECS
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            keys: Vec::new(),
            teams: Vec::new(),
            pricing: PricingConfig::default(),
            default_max_output_tokens: None,
            lease_secs: DEFAULT_LEASE_SECS,
            byok_header: None,
            unpriced_models: UnpricedModels::Deny,
            ledger: LedgerKind::Local,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Per-request values
// ---------------------------------------------------------------------------------------------

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    key: Arc<KeyRecord>,
    byok: Option<Secret>,
}

impl Principal {
    pub fn key_id(&self) -> &str {
        &self.key.id
    }
    pub fn team(&self) -> Option<&str> {
        self.key.team.as_deref()
    }
    pub fn metadata(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.key.metadata
    }
    /// The client's own provider credential, to use upstream instead of the gateway's.
    pub fn byok(&self) -> Option<&Secret> {
        self.byok.as_ref()
    }
    pub fn record(&self) -> &KeyRecord {
        &self.key
    }
}

/// A refused admission: the error and the headers to answer it with (`retry-after`,
/// `x-ratelimit-*`, `x-should-retry`, budget left).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub error: ApiError,
    pub headers: Vec<(&'static str, String)>,
}

impl From<ApiError> for Rejection {
    fn from(error: ApiError) -> Self {
        Rejection { error, headers: Vec::new() }
    }
}

/// What one scope (a key or a team) granted, to give back in `settle`.
#[derive(Debug)]
struct ScopeGrant {
    store_key: String,
    rate: RateGrant,
    budget: Option<(Budget, Reservation)>,
}

/// An admitted request. Pass it to [`Policy::settle`] exactly once.
#[must_use = "an Admission must be settled with Policy::settle (or it holds its slot and reservation until the lease expires)"]
#[derive(Debug)]
pub struct Admission {
    scopes: Vec<ScopeGrant>,
    model: String,
    price: Option<ModelPrice>,
    est_prompt_tokens: u64,
    reserved_output_tokens: u64,
    reserved_micros: u64,
    byok: bool,
    snapshots: Vec<RateSnapshot>,
    budget_remaining_micros: Option<u64>,
    fleet: Option<FleetTags>,
    armed: bool,
}

/// What a fleet gateway tells the rate limit filter about an admitted request (published as
/// filter state `wasm.switchyard_fleet_*`, read by the descriptors of the Envoy configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetTags {
    pub key: String,
    pub team: Option<String>,
    /// Budgets apply (not a bring-your-own-key request).
    pub budgeted: bool,
    /// Tokens counted against `tpm` before the answer: the prompt estimate.
    pub prompt_estimate: u64,
}

impl Admission {
    /// Worst-case cost reserved against budgets (micro-USD; 0 when no budget applies).
    pub fn reserved_micros(&self) -> u64 {
        self.reserved_micros
    }
    /// Output tokens the reservation assumed. When the request set no `max_tokens`, the filter
    /// may set it to this value to turn the reservation into a hard bound.
    pub fn reserved_output_tokens(&self) -> u64 {
        self.reserved_output_tokens
    }
    pub fn estimated_prompt_tokens(&self) -> u64 {
        self.est_prompt_tokens
    }
    /// In fleet mode: what the rate limit filter's descriptors need.
    pub fn fleet(&self) -> Option<&FleetTags> {
        self.fleet.as_ref()
    }
    /// Budget left after this request's reservation (tightest of key and team).
    pub fn budget_remaining_micros(&self) -> Option<u64> {
        self.budget_remaining_micros
    }
    /// Headers for the response, known when it starts: the six `x-ratelimit-*` (for the
    /// tightest of key and team, where limits are configured) and `x-switchyard-budget-remaining`.
    pub fn response_headers(&self) -> Vec<(&'static str, String)> {
        let mut h = rate_limit_headers(&self.snapshots);
        if let Some(r) = self.budget_remaining_micros {
            h.push((BUDGET_REMAINING_HEADER, format_usd(r)));
        }
        h
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.armed {
            log::error!(
                "switchyard: an admission for model {} was dropped without settle; its concurrency slot and budget reservation are held until their lease expires",
                self.model
            );
        }
    }
}

/// How a request ended, for [`Policy::settle`].
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// The provider reported usage: a non-stream body, or a stream's final usage chunk.
    Usage(&'a Usage),
    /// The provider answered but the response ended without usage (a stream cut by the client or
    /// the provider). Charged for the prompt (`prompt_tokens` if a partial usage told it, else
    /// the estimate) and for the output produced (count it with
    /// [`super::estimate::OutputMeter`]): never for nothing.
    Partial { prompt_tokens: Option<u64>, output_tokens: u64 },
    /// No provider answer: rejected by the gateway after admission, a provider error status, a
    /// connection failure. Releases everything, charges nothing.
    NotServed,
}

/// What a request cost and what is left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// Cost in micro-USD (rounded up); `None` when the model has no price.
    pub cost_micros: Option<u64>,
    /// Cost of each cancelled attempt given to [`Policy::settle_with_cancelled`] (`None`: its
    /// model has no price), in the order given; charged to budgets on top of `cost_micros`.
    pub cancelled_micros: Vec<Option<u64>>,
    /// Whether the cost was charged to budgets (not for BYOK requests, nor when not served).
    pub charged: bool,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// The token counts are estimates (a stream cut without usage).
    pub estimated: bool,
    /// Budget left after settling (tightest of key and team); `None` without budgets.
    pub budget_remaining_micros: Option<u64>,
    /// In fleet mode, what the rate limit service is charged when the stream is done: tokens
    /// beyond the prompt estimate counted at admission, and the cost (0 when not charged).
    pub fleet_charge: Option<FleetCharge>,
}

/// See [`Settlement::fleet_charge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetCharge {
    pub extra_tokens: u64,
    pub cost_micros: u64,
}

impl Settlement {
    /// `x-switchyard-cost` and `x-switchyard-budget-remaining`, for a response whose headers
    /// are still unsent when it is settled (a buffered non-stream response).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = Vec::with_capacity(2);
        if let Some(c) = self.cost_micros {
            h.push((COST_HEADER, format_usd(c)));
        }
        if let Some(r) = self.budget_remaining_micros {
            h.push((BUDGET_REMAINING_HEADER, format_usd(r)));
        }
        h
    }
}

// ---------------------------------------------------------------------------------------------
// Scope state in shared data
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ScopeState {
    rate: RateState,
    budget: BudgetState,
}

impl ScopeState {
    /// `size_hint`: the length of the value this one replaces (it changes by a few bytes).
    fn encode(&self, size_hint: usize) -> Vec<u8> {
        let mut w = Writer::with_capacity(size_hint + 32);
        w.u8(STATE_VERSION);
        self.rate.encode(&mut w);
        self.budget.encode(&mut w);
        w.finish()
    }

    /// Absent, empty (primed) or unreadable (another version) values start from zero; a
    /// version-1 value keeps its concurrency leases and budget, and its rate windows start afresh.
    fn decode(bytes: Option<&[u8]>, key: &str) -> ScopeState {
        let Some(b) = bytes.filter(|b| !b.is_empty()) else { return ScopeState::default() };
        let mut r = Reader::new(b);
        let parsed = (|| {
            let rate = match r.u8()? {
                STATE_VERSION => RateState::decode(&mut r)?,
                STATE_VERSION_V1 => RateState::decode_v1(&mut r)?,
                _ => return None,
            };
            let s = ScopeState { rate, budget: BudgetState::decode(&mut r)? };
            r.is_at_end().then_some(s)
        })();
        parsed.unwrap_or_else(|| {
            log::warn!("switchyard: unreadable policy state in shared data {key}; starting it afresh");
            ScopeState::default()
        })
    }
}

/// A key or team as admission sees it.
struct Scope<'a> {
    kind: &'static str,
    id: &'a str,
    limits: &'a LimitsConfig,
    budget: Option<&'a Budget>,
}

impl Scope<'_> {
    fn store_key(&self) -> String {
        format!("switchyard:{}:{}", self.kind, self.id)
    }
}

enum ScopeDenied {
    Rate(RateDenied),
    Budget(OverBudget, Budget),
}

// ---------------------------------------------------------------------------------------------
// The policy
// ---------------------------------------------------------------------------------------------

/// Keys, teams and prices, validated; shared by every request of a worker.
#[derive(Debug)]
pub struct Policy {
    keys: KeyRing,
    teams: HashMap<String, Arc<TeamRecord>>,
    prices: PriceTable,
    default_max_output_tokens: Option<u64>,
    lease_secs: u64,
    byok_header: String,
    unpriced: UnpricedModels,
    ledger: LedgerKind,
    /// `max_concurrent` alone, the only limit a fleet gateway holds itself.
    fleet_local: HashMap<String, LimitsConfig>,
}

impl Policy {
    pub fn new(cfg: PolicyConfig) -> Result<Policy, String> {
        let mut teams = HashMap::new();
        for t in &cfg.teams {
            let rec = t.compile()?;
            if teams.insert(rec.id.clone(), Arc::new(rec)).is_some() {
                return Err(format!("team {} is configured twice", t.id));
            }
        }
        let mut records = Vec::with_capacity(cfg.keys.len());
        for k in &cfg.keys {
            let rec = k.compile()?;
            if let Some(team) = &rec.team {
                if !teams.contains_key(team) {
                    return Err(format!("key {}: team {team} is not listed in teams", rec.id));
                }
            }
            records.push(rec);
        }
        let keys = KeyRing::new(records)?;
        let prices = PriceTable::from_config(&cfg.pricing)?;
        if cfg.lease_secs == 0 {
            return Err("lease_secs must be positive".into());
        }
        if cfg.default_max_output_tokens == Some(0) {
            return Err("default_max_output_tokens must be positive".into());
        }
        let byok_header = cfg.byok_header.unwrap_or_else(|| DEFAULT_BYOK_HEADER.to_string()).to_ascii_lowercase();
        if byok_header.is_empty()
            || !byok_header.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            || ["authorization", "x-api-key"].contains(&byok_header.as_str())
        {
            return Err(format!("byok_header {byok_header:?} is not a usable header name"));
        }
        Ok(Policy {
            keys,
            teams,
            prices,
            default_max_output_tokens: cfg.default_max_output_tokens,
            lease_secs: cfg.lease_secs,
            byok_header,
            unpriced: cfg.unpriced_models,
            ledger: cfg.ledger,
            fleet_local: HashMap::new(),
        }
        .with_fleet_limits())
    }

    /// In fleet mode, every scope's `max_concurrent` (without `rpm` and `tpm`), by store key.
    fn with_fleet_limits(mut self) -> Policy {
        if self.ledger == LedgerKind::Fleet {
            let only_concurrency = |l: &LimitsConfig| LimitsConfig { max_concurrent: l.max_concurrent, ..Default::default() };
            for k in self.keys.iter() {
                self.fleet_local.insert(format!("key:{}", k.id), only_concurrency(&k.limits));
            }
            for t in self.teams.values() {
                self.fleet_local.insert(format!("team:{}", t.id), only_concurrency(&t.limits));
            }
        }
        self
    }

    pub fn ledger(&self) -> LedgerKind {
        self.ledger
    }

    /// Keys and teams, for the rate limit service's limits (`switchyard fleet-limits`).
    pub fn key_records(&self) -> impl Iterator<Item = &KeyRecord> {
        self.keys.iter().map(|k| &**k)
    }
    pub fn team_records(&self) -> impl Iterator<Item = &TeamRecord> {
        self.teams.values().map(|t| &**t)
    }

    pub fn prices(&self) -> &PriceTable {
        &self.prices
    }

    /// The bring-your-own-key header (lower case), which the filter must strip from upstream
    /// requests and never log.
    pub fn byok_header(&self) -> &str {
        &self.byok_header
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    fn scopes<'a>(&'a self, principal: &'a Principal, with_budget: bool) -> Vec<Scope<'a>> {
        let k = &principal.key;
        let mut out = Vec::with_capacity(2);
        let key_budget = k.budget.as_ref().filter(|_| with_budget);
        if !k.limits.is_empty() || key_budget.is_some() {
            out.push(Scope { kind: "key", id: &k.id, limits: &k.limits, budget: key_budget });
        }
        if let Some(t) = k.team.as_deref().and_then(|t| self.teams.get(t)) {
            let team_budget = t.budget.as_ref().filter(|_| with_budget);
            if !t.limits.is_empty() || team_budget.is_some() {
                out.push(Scope { kind: "team", id: &t.id, limits: &t.limits, budget: team_budget });
            }
        }
        out
    }

    /// The scopes this gateway counts itself: all of them in local mode; in fleet mode only
    /// those with `max_concurrent`, with nothing else (the rate limit service counts the rest).
    fn local_scopes<'a>(&'a self, principal: &'a Principal, with_budget: bool) -> Vec<Scope<'a>> {
        let mut scopes = self.scopes(principal, with_budget);
        if self.ledger == LedgerKind::Fleet {
            scopes.retain_mut(|s| match self.fleet_local.get(&format!("{}:{}", s.kind, s.id)) {
                Some(l) if l.max_concurrent.is_some() => {
                    s.limits = l;
                    s.budget = None;
                    true
                }
                _ => false,
            });
        }
        scopes
    }

    /// Creates every scope's shared-data value that does not exist yet. Call it from the root
    /// context's `on_configure`: proxy-wasm's compare-and-swap cannot protect the *creation* of a
    /// key (a `set` of a missing key always succeeds), so creating them before any request makes
    /// every later update a real compare-and-swap.
    pub fn prime<S: SharedStore + ?Sized>(&self, store: &S) {
        let empty = ScopeState::default().encode(0);
        let mut keys: Vec<String> = Vec::new();
        for k in self.keys.iter() {
            if !k.limits.is_empty() || k.budget.is_some() {
                keys.push(Scope { kind: "key", id: &k.id, limits: &k.limits, budget: None }.store_key());
            }
        }
        for t in self.teams.values() {
            if !t.limits.is_empty() || t.budget.is_some() {
                keys.push(Scope { kind: "team", id: &t.id, limits: &t.limits, budget: None }.store_key());
            }
        }
        for key in keys {
            if store.get(&key).0.is_none() && store.set(&key, &empty, 0).is_err() {
                log::warn!("switchyard: cannot create shared data {key}");
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Authentication and authorization
    // -----------------------------------------------------------------------------------------

    /// Who is calling: the virtual key from `authorization: Bearer …` or `x-api-key`, checked
    /// (401 for a missing, malformed, unknown, disabled or expired key), and its BYOK credential
    /// if it sent one (403 if the key may not).
    pub fn authenticate(&self, headers: &[(String, String)], now_ms: u64) -> Result<Principal, ApiError> {
        let key = extract_key(headers)?;
        let rec = self.keys.find(key).ok_or(KeyError::Unknown)?;
        if rec.disabled {
            return Err(KeyError::Disabled.into());
        }
        if rec.expires_at.is_some_and(|t| now_ms / 1000 >= t) {
            return Err(KeyError::Expired.into());
        }
        let byok = extract_byok(headers, &self.byok_header, rec)?;
        Ok(Principal { key: rec.clone(), byok })
    }

    /// 403 unless the key may use the model (asked for as `requested`, resolved to `resolved`).
    pub fn authorize_model(&self, principal: &Principal, requested: &str, resolved: &str) -> Result<(), ApiError> {
        if principal.key.allows_model(requested, resolved) {
            Ok(())
        } else {
            Err(model_not_allowed(&principal.key.id, requested))
        }
    }

    /// [`Self::authenticate`] and [`Self::authorize_model`] in one call.
    pub fn authorize(&self, headers: &[(String, String)], model: &str, now_ms: u64) -> Result<Principal, ApiError> {
        let p = self.authenticate(headers, now_ms)?;
        self.authorize_model(&p, model, model)?;
        Ok(p)
    }

    // -----------------------------------------------------------------------------------------
    // Admission
    // -----------------------------------------------------------------------------------------

    /// Admits a request or refuses it, all or nothing: rate limits (requests, prompt-estimate
    /// tokens, a concurrency slot) and the worst-case cost against budgets, for the key and then
    /// its team. `max_cost` is the raw `x-switchyard-max-cost` header value, if sent.
    pub fn admit<S: SharedStore + ?Sized>(
        &self,
        principal: &Principal,
        estimate: &RequestEstimate,
        model: &str,
        max_cost: Option<&str>,
        now_ms: u64,
        store: &S,
    ) -> Result<Admission, Rejection> {
        let cap = match max_cost {
            None => None,
            Some(raw) => Some(parse_usd_micros(raw).ok_or_else(|| {
                ApiError::invalid_request(format!(
                    "Invalid {MAX_COST_HEADER} header: expected an amount in US dollars such as 0.25."
                ))
                .with_code("invalid_max_cost")
            })?),
        };
        // BYOK requests are paid by the client's own provider account: budgets do not apply.
        let charges_budget = principal.byok.is_none();
        let budgeted = self.scopes(principal, charges_budget).iter().any(|s| s.budget.is_some());
        let scopes = self.local_scopes(principal, charges_budget);

        let price = self.prices.worst_case(model);
        let choices = estimate.choices.max(1);
        let per_choice = estimate
            .max_output_tokens
            .or(self.default_max_output_tokens)
            .or(price.and_then(|p| p.max_output_tokens))
            .unwrap_or(FALLBACK_MAX_OUTPUT_TOKENS);
        let reserved_output_tokens = per_choice.saturating_mul(choices);
        let worst = match price {
            Some(p) => femto_to_micros_ceil(p.worst_case_femto(estimate.prompt_tokens, reserved_output_tokens)),
            None if (budgeted || cap.is_some()) && self.unpriced == UnpricedModels::Deny => {
                return Err(ApiError::new(
                    403,
                    "permission_error",
                    format!("The model `{model}` has no price in the gateway's pricing table, so its cost cannot be counted against a budget."),
                )
                .with_param("model")
                .with_code("model_not_priced")
                .into());
            }
            None => 0,
        };
        if let Some(cap) = cap {
            if worst > cap {
                return Err(Rejection {
                    error: insufficient_quota(format!(
                        "This request could cost up to ${} ({} prompt tokens estimated, up to {} output tokens), more than the {MAX_COST_HEADER} cap of ${}. Lower max_tokens or raise the cap.",
                        format_usd(worst),
                        estimate.prompt_tokens,
                        reserved_output_tokens,
                        format_usd(cap)
                    )),
                    headers: vec![("x-should-retry", "false".to_string())],
                });
            }
        }
        let reserved_micros = if budgeted && self.ledger == LedgerKind::Local { worst } else { 0 };

        let expiry = lease_expiry(now_ms, self.lease_secs);
        let mut grants: Vec<ScopeGrant> = Vec::with_capacity(scopes.len());
        let mut snapshots = Vec::with_capacity(scopes.len());
        let mut remaining: Option<u64> = None;
        for scope in &scopes {
            match self.admit_scope(store, scope, now_ms, estimate.prompt_tokens, reserved_micros, expiry) {
                Ok((grant, left)) => {
                    snapshots.push(grant.rate.snapshot);
                    if let Some(l) = left {
                        remaining = Some(remaining.map_or(l, |r: u64| r.min(l)));
                    }
                    grants.push(grant);
                }
                Err(denied) => {
                    // All or nothing: give back what the scopes before this one granted.
                    for g in &grants {
                        self.settle_scope(store, g, now_ms, 0, 0, true);
                    }
                    return Err(self.rejection(scope, denied));
                }
            }
        }
        Ok(Admission {
            scopes: grants,
            model: model.to_string(),
            price,
            est_prompt_tokens: estimate.prompt_tokens,
            reserved_output_tokens,
            reserved_micros,
            byok: !charges_budget,
            snapshots,
            budget_remaining_micros: remaining,
            fleet: (self.ledger == LedgerKind::Fleet).then(|| FleetTags {
                key: principal.key.id.clone(),
                team: principal.key.team.clone(),
                budgeted: charges_budget,
                prompt_estimate: estimate.prompt_tokens,
            }),
            armed: true,
        })
    }

    fn admit_scope<S: SharedStore + ?Sized>(
        &self,
        store: &S,
        scope: &Scope,
        now_ms: u64,
        est_tokens: u64,
        reserve_micros: u64,
        expiry: u64,
    ) -> Result<(ScopeGrant, Option<u64>), Option<ScopeDenied>> {
        let key = scope.store_key();
        // What the last (the written) run of the closure granted: rate, budget, budget left.
        type Granted = (RateGrant, Option<(Budget, Reservation)>, Option<u64>);
        let mut out: Option<Granted> = None;
        let r = update(store, &key, |cur| {
            let mut st = ScopeState::decode(cur, &key);
            let rate = st.rate.admit(scope.limits, now_ms, est_tokens, expiry).map_err(ScopeDenied::Rate)?;
            let mut budget = None;
            let mut left = None;
            if let Some(b) = scope.budget {
                let res = st.budget.reserve(b, now_ms, reserve_micros, expiry).map_err(|e| ScopeDenied::Budget(e, *b))?;
                left = Some(st.budget.remaining(b));
                budget = Some((*b, res));
            }
            out = Some((rate, budget, left));
            Ok(st.encode(cur.map_or(0, <[u8]>::len)))
        });
        match (r, out) {
            (Ok(()), Some((rate, budget, left))) => Ok((ScopeGrant { store_key: key, rate, budget }, left)),
            (Err(UpdateError::Rejected(d)), _) => Err(Some(d)),
            (Err(UpdateError::Contention), _) | (Ok(()), None) => Err(None),
        }
    }

    fn rejection(&self, scope: &Scope, denied: Option<ScopeDenied>) -> Rejection {
        let who = format!("{} `{}`", scope.kind, scope.id);
        match denied {
            None => {
                log::warn!("switchyard: shared-data contention on {who}; request refused");
                let mut headers = retry_after_headers(1000);
                headers.push(("x-should-retry", "true".to_string()));
                Rejection {
                    error: rate_limited(format!("The gateway is too busy to account for this request ({who}); please retry.")),
                    headers,
                }
            }
            Some(ScopeDenied::Rate(d)) => {
                let mut headers = rate_limit_headers(&[d.snapshot]);
                let message = match (d.dimension, d.retry_after_ms) {
                    (Dimension::Concurrency, _) => {
                        format!("Too many concurrent requests for {who}: limit {}. Please retry when a request finishes.", d.limit)
                    }
                    (dim, Some(ms)) => {
                        let (what, used) = match dim {
                            Dimension::Requests => ("requests per minute (RPM)", d.snapshot.requests),
                            _ => ("tokens per minute (TPM)", d.snapshot.tokens),
                        };
                        let used = used.map_or(0, |q| q.limit.saturating_sub(q.remaining));
                        format!(
                            "Rate limit reached for {who} on {what}: Limit {}, Used {used}, Requested {}. Please try again in {}.",
                            d.limit,
                            d.requested,
                            super::limits::format_duration_ms(ms)
                        )
                    }
                    (_, None) => format!(
                        "Request too large for {who} on tokens per minute (TPM): Limit {}, Requested {} (estimated). Shorten the messages.",
                        d.limit, d.requested
                    ),
                };
                match d.retry_after_ms {
                    Some(ms) => headers.extend(retry_after_headers(ms)),
                    None => headers.push(("x-should-retry", "false".to_string())),
                }
                Rejection { error: rate_limited(message), headers }
            }
            Some(ScopeDenied::Budget(e, b)) => {
                let window = match b.window {
                    super::budget::BudgetWindow::Daily => "daily",
                    super::budget::BudgetWindow::Monthly => "monthly",
                    super::budget::BudgetWindow::Total => "total",
                };
                Rejection {
                    error: insufficient_quota(format!(
                        "You exceeded your current quota: this request could cost up to ${} and the {window} budget of {who} has ${} left.",
                        format_usd(e.requested_micros),
                        format_usd(e.remaining_micros)
                    )),
                    headers: vec![
                        ("x-should-retry", "false".to_string()),
                        (BUDGET_REMAINING_HEADER, format_usd(e.remaining_micros)),
                    ],
                }
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Settlement
    // -----------------------------------------------------------------------------------------

    /// Ends an admitted request: computes its real cost from `outcome` (priced as `served_model`
    /// on `backend` when known — a failover may have served another model — else as the admitted
    /// model), charges it to the budgets and releases the rest of the reservation, corrects the
    /// token counters to the real usage and frees the concurrency slot. Never fails: a store
    /// that stays contended is logged and the leases expire on their own.
    pub fn settle<S: SharedStore + ?Sized>(
        &self,
        admission: Admission,
        outcome: Outcome,
        served_model: Option<&str>,
        backend: Option<&str>,
        now_ms: u64,
        store: &S,
    ) -> Settlement {
        self.settle_with_cancelled(admission, outcome, served_model, backend, &[], now_ms, store)
    }

    /// [`Self::settle`], also charging the attempts Envoy cancelled after their providers had
    /// started on them (a first-token deadline, a hedge's loser: `(model, backend)` each): their
    /// prompt, the admission's estimate, at that model's input price on that backend. Their cost
    /// is in the settlement's `cancelled_micros` (each) and charged to the budgets even when no
    /// attempt served (providers bill a request they started); a bring-your-own-key request is
    /// never charged.
    #[allow(clippy::too_many_arguments)]
    pub fn settle_with_cancelled<S: SharedStore + ?Sized>(
        &self,
        mut admission: Admission,
        outcome: Outcome,
        served_model: Option<&str>,
        backend: Option<&str>,
        cancelled: &[(&str, &str)],
        now_ms: u64,
        store: &S,
    ) -> Settlement {
        admission.armed = false;
        let cancelled_micros: Vec<Option<u64>> = cancelled
            .iter()
            .map(|(m, b)| self.prices.lookup_on(m, Some(b)).map(|p| femto_to_micros_ceil(p.cost_of_tokens_femto(admission.est_prompt_tokens, 0))))
            .collect();
        let extra: u64 = if admission.byok { 0 } else { cancelled_micros.iter().flatten().sum() };
        let (prompt, completion, total, estimated) = match outcome {
            Outcome::Usage(u) => {
                let total = if u.total_tokens > 0 { u.total_tokens } else { u.prompt_tokens.saturating_add(u.completion_tokens) };
                (u.prompt_tokens, u.completion_tokens, total, false)
            }
            Outcome::Partial { prompt_tokens, output_tokens } => {
                let p = prompt_tokens.unwrap_or(admission.est_prompt_tokens);
                (p, output_tokens, p.saturating_add(output_tokens), true)
            }
            Outcome::NotServed => (0, 0, 0, false),
        };
        let price = served_model
            .and_then(|m| self.prices.lookup_on(m, backend))
            .or_else(|| self.prices.lookup_on(&admission.model, backend))
            .or(admission.price);
        let cost_micros = price.map(|p| match outcome {
            Outcome::Usage(u) => femto_to_micros_ceil(p.cost_femto(u)),
            Outcome::Partial { .. } => femto_to_micros_ceil(p.cost_of_tokens_femto(prompt, completion)),
            Outcome::NotServed => 0,
        });
        let served = !matches!(outcome, Outcome::NotServed);
        let charged = served && !admission.byok;
        let charge = if charged { cost_micros.unwrap_or(0) } else { 0 }.saturating_add(extra);
        let mut remaining: Option<u64> = None;
        for g in &admission.scopes {
            if let Some(l) = self.settle_scope(store, g, now_ms, total, charge, false) {
                remaining = Some(remaining.map_or(l, |r| r.min(l)));
            }
        }
        let fleet_charge = admission.fleet.as_ref().map(|f| FleetCharge {
            extra_tokens: total.saturating_sub(f.prompt_estimate),
            cost_micros: charge,
        });
        Settlement {
            cost_micros,
            cancelled_micros,
            charged,
            prompt_tokens: prompt,
            completion_tokens: completion,
            estimated,
            budget_remaining_micros: remaining,
            fleet_charge,
        }
    }

    /// Releases an admission without serving it (a later local rejection): [`Self::settle`] with
    /// [`Outcome::NotServed`].
    pub fn release<S: SharedStore + ?Sized>(&self, admission: Admission, now_ms: u64, store: &S) {
        let _ = self.settle(admission, Outcome::NotServed, None, None, now_ms, store);
    }

    /// Gives one scope's grant back: tokens corrected to `actual_tokens`, slot freed, budget
    /// charged `charge_micros` and its reservation released; `undo` (a rollback) also returns the
    /// request to the requests-per-minute counter. Returns the budget left, if the scope has one.
    fn settle_scope<S: SharedStore + ?Sized>(
        &self,
        store: &S,
        g: &ScopeGrant,
        now_ms: u64,
        actual_tokens: u64,
        charge_micros: u64,
        undo: bool,
    ) -> Option<u64> {
        let mut left = None;
        let r = update(store, &g.store_key, |cur| -> Result<Vec<u8>, ()> {
            let mut st = ScopeState::decode(cur, &g.store_key);
            st.rate.settle(&g.rate, now_ms, actual_tokens, undo);
            left = g.budget.map(|(b, res)| st.budget.settle(&b, now_ms, Some(res), charge_micros));
            Ok(st.encode(cur.map_or(0, <[u8]>::len)))
        });
        if r.is_err() {
            log::error!(
                "switchyard: could not settle {} (shared-data contention); its slot and reservation free themselves when their lease expires",
                g.store_key
            );
            return None;
        }
        left
    }

    /// Budget left for a principal now (tightest of key and team), without changing anything;
    /// `None` when no budget applies.
    pub fn budget_remaining<S: SharedStore + ?Sized>(&self, principal: &Principal, now_ms: u64, store: &S) -> Option<u64> {
        let mut out: Option<u64> = None;
        for s in self.scopes(principal, true) {
            if let Some(b) = s.budget {
                let key = s.store_key();
                let mut st = ScopeState::decode(store.get(&key).0.as_deref(), &key);
                st.budget.roll(b.window, now_ms);
                let l = st.budget.remaining(b);
                out = Some(out.map_or(l, |r| r.min(l)));
            }
        }
        out
    }
}

fn rate_limited(message: String) -> ApiError {
    ApiError::new(429, "rate_limit_error", message).with_code("rate_limit_exceeded")
}

fn insufficient_quota(message: String) -> ApiError {
    ApiError::new(429, "insufficient_quota", message).with_code("insufficient_quota")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::chat::{parse_chat_request, PromptTokensDetails};
    use crate::policy::keys::hash_key;
    use crate::policy::store::testing::{ConflictStore, SyncStore};
    use crate::policy::store::MemStore;

    const NOW: u64 = 1_718_000_000_000; // 2024-06-10T06:13:20Z
    const KEY_A: &str = "sk-sy-alpha";
    const KEY_B: &str = "sk-sy-bravo";
    const KEY_OFF: &str = "sk-sy-off";
    const KEY_OLD: &str = "sk-sy-old";
    const KEY_BYOK: &str = "sk-sy-byok";
    const KEY_FREE: &str = "sk-sy-free";

    fn config() -> PolicyConfig {
        let json = format!(
            r#"{{
              "keys": [
                {{"id":"a","team":"eng","sha256":"{}","models":["gpt-4o*","claude-*"],
                  "limits":{{"rpm":100,"tpm":100000,"max_concurrent":5}},
                  "budget":{{"amount_usd":1,"window":"daily"}},"metadata":{{"owner":"alice"}}}},
                {{"id":"b","team":"eng","sha256":"{}","limits":{{"rpm":1000}}}},
                {{"id":"off","sha256":"{}","disabled":true}},
                {{"id":"old","sha256":"{}","expires_at":1700000000}},
                {{"id":"byok","sha256":"{}","byok":true,"budget":{{"amount_usd":0.01,"window":"total"}},"limits":{{"rpm":10}}}},
                {{"id":"free","sha256":"{}"}}
              ],
              "teams": [{{"id":"eng","limits":{{"rpm":50}},"budget":{{"amount_usd":10,"window":"monthly"}}}}],
              "pricing": {{"models": {{"house-model": {{"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}}}}}}
            }}"#,
            hash_key(KEY_A),
            hash_key(KEY_B),
            hash_key(KEY_OFF),
            hash_key(KEY_OLD),
            hash_key(KEY_BYOK),
            hash_key(KEY_FREE)
        );
        serde_json::from_str(&json).unwrap()
    }

    fn policy() -> Policy {
        Policy::new(config()).unwrap()
    }

    fn fleet_policy() -> Policy {
        let mut cfg = config();
        cfg.ledger = LedgerKind::Fleet;
        Policy::new(cfg).unwrap()
    }

    #[test]
    fn fleet_mode_holds_only_max_concurrent_and_hands_the_rest_to_the_service() {
        let p = fleet_policy();
        let store = MemStore::default();
        let a = p.authenticate(&bearer(KEY_A), NOW).unwrap();
        // rpm 100 (key) and 50 (team), a $1 budget: none of them is counted here; max_concurrent 5 is.
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(p.admit(&a, &est(1000, Some(100_000)), "house-model", None, NOW, &store).unwrap());
        }
        let refused = p.admit(&a, &est(1000, Some(100)), "house-model", None, NOW, &store).unwrap_err();
        assert_eq!(refused.error.code.as_deref(), Some("rate_limit_exceeded"));
        assert!(refused.error.message.contains("concurrent"), "{}", refused.error.message);
        let first = held.remove(0);
        assert_eq!(first.reserved_micros(), 0, "no local reservation");
        assert_eq!(first.budget_remaining_micros(), None);
        assert_eq!(
            first.fleet(),
            Some(&FleetTags { key: "a".into(), team: Some("eng".into()), budgeted: true, prompt_estimate: 1000 })
        );
        assert!(first.response_headers().iter().all(|(k, _)| !k.starts_with("x-ratelimit")));
        // Settled: the service is charged the tokens beyond the estimate and the real cost.
        let s = p.settle(first, Outcome::Usage(&usage(1200, 300)), None, None, NOW, &store);
        assert_eq!(s.cost_micros, Some(1200 + 600));
        assert_eq!(s.fleet_charge, Some(FleetCharge { extra_tokens: 500, cost_micros: 1800 }));
        // A slot is free again.
        held.push(p.admit(&a, &est(10, Some(10)), "house-model", None, NOW, &store).unwrap());
        // Not served: nothing to charge; an over-estimate is not given back (the protocol only adds).
        let s = p.settle(held.remove(0), Outcome::NotServed, None, None, NOW, &store);
        assert_eq!(s.fleet_charge, Some(FleetCharge { extra_tokens: 0, cost_micros: 0 }));
        for h in held {
            p.release(h, NOW, &store);
        }
        // rpm 1000 for key b and no max_concurrent anywhere: no local state at all.
        let b = p.authenticate(&bearer(KEY_B), NOW).unwrap();
        for _ in 0..60 {
            let adm = p.admit(&b, &est(5, Some(5)), "house-model", None, NOW, &store).unwrap();
            p.release(adm, NOW, &store);
        }
        assert!(store.get("switchyard:key:b").0.map_or(true, |v| ScopeState::decode(Some(&v), "k").rate.requests.total() == 0));
    }

    #[test]
    fn fleet_mode_byok_is_rate_limited_but_never_budgeted() {
        let p = fleet_policy();
        let store = MemStore::default();
        let mut h = bearer(KEY_BYOK);
        h.push(("x-switchyard-provider-key".into(), "sk-own".into()));
        let pr = p.authenticate(&h, NOW).unwrap();
        let adm = p.admit(&pr, &est(10, Some(10)), "house-model", None, NOW, &store).unwrap();
        assert_eq!(adm.fleet().map(|f| f.budgeted), Some(false));
        let s = p.settle(adm, Outcome::Usage(&usage(10, 10)), None, None, NOW, &store);
        assert_eq!(s.fleet_charge.map(|c| c.cost_micros), Some(0));
        assert_eq!(s.cost_micros, Some(30));
    }

    fn bearer(key: &str) -> Vec<(String, String)> {
        vec![("authorization".into(), format!("Bearer {key}"))]
    }

    fn est(prompt: u64, max_out: Option<u64>) -> RequestEstimate {
        RequestEstimate { prompt_tokens: prompt, max_output_tokens: max_out, choices: 1 }
    }

    fn usage(prompt: u64, completion: u64) -> Usage {
        Usage { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion, ..Default::default() }
    }

    fn state(store: &impl SharedStore, key: &str) -> ScopeState {
        ScopeState::decode(store.get(key).0.as_deref(), key)
    }

    fn header<'a>(h: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        h.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn authentication_outcomes() {
        let p = policy();
        let a = p.authenticate(&bearer(KEY_A), NOW).unwrap();
        assert_eq!((a.key_id(), a.team()), ("a", Some("eng")));
        assert_eq!(a.metadata()["owner"], "alice");
        assert!(a.byok().is_none());
        let x = vec![("x-api-key".to_string(), KEY_A.to_string())];
        assert_eq!(p.authenticate(&x, NOW).unwrap().key_id(), "a");

        let err = |h: &[(String, String)]| p.authenticate(h, NOW).unwrap_err();
        assert_eq!(err(&[]).message, KeyError::Missing.message());
        assert_eq!(err(&bearer("sk-sy-forged")).message, KeyError::Unknown.message());
        assert_eq!(err(&bearer(KEY_OFF)).message, KeyError::Disabled.message());
        assert_eq!(err(&bearer(KEY_OLD)).message, KeyError::Expired.message());
        for e in [err(&[]), err(&bearer("sk-sy-forged")), err(&bearer(KEY_OFF)), err(&bearer(KEY_OLD))] {
            assert_eq!((e.status, e.kind, e.code.as_deref()), (401, "invalid_request_error", Some("invalid_api_key")));
        }
        // The key that expires in the future is fine before that moment.
        assert!(p.authenticate(&bearer(KEY_OLD), 1_699_999_999_000).is_ok());
    }

    #[test]
    fn model_allow_list() {
        let p = policy();
        let a = p.authenticate(&bearer(KEY_A), NOW).unwrap();
        assert!(p.authorize_model(&a, "gpt-4o-mini", "gpt-4o-mini").is_ok());
        assert!(p.authorize_model(&a, "fast", "gpt-4o-mini").is_ok());
        let e = p.authorize_model(&a, "gemini-1.5-flash", "gemini-1.5-flash").unwrap_err();
        assert_eq!((e.status, e.code.as_deref()), (403, Some("model_not_allowed")));
        assert!(p.authorize(&bearer(KEY_B), "anything", NOW).is_ok(), "no list: every model");
        assert_eq!(p.authorize(&bearer(KEY_A), "llama", NOW).unwrap_err().status, 403);
    }

    #[test]
    fn byok_is_passed_through_and_not_charged() {
        let p = policy();
        let mut h = bearer(KEY_BYOK);
        h.push(("x-switchyard-provider-key".into(), "sk-openai-own".into()));
        let pr = p.authenticate(&h, NOW).unwrap();
        assert_eq!(pr.byok().map(Secret::expose), Some("sk-openai-own"));
        assert!(!format!("{pr:?}").contains("sk-openai-own"), "never printed");
        // Not allowed for other keys.
        let mut h = bearer(KEY_A);
        h.push(("x-switchyard-provider-key".into(), "sk-openai-own".into()));
        assert_eq!(p.authenticate(&h, NOW).unwrap_err().status, 403);
        // The BYOK key's $0.01 budget would refuse this expensive request; its own credential pays.
        let store = MemStore::new();
        let adm = p.admit(&pr, &est(10_000, Some(1000)), "gpt-4o", None, NOW, &store).unwrap();
        assert_eq!(adm.reserved_micros(), 0);
        let s = p.settle(adm, Outcome::Usage(&usage(10_000, 1000)), None, None, NOW, &store);
        assert_eq!(s.cost_micros, Some(35_000));
        assert!(!s.charged);
        assert_eq!(state(&store, "switchyard:key:byok").budget.spent_micros, 0);
        // Without its own credential the same key is held to its budget.
        let plain = p.authenticate(&bearer(KEY_BYOK), NOW).unwrap();
        let r = p.admit(&plain, &est(10_000, Some(1000)), "gpt-4o", None, NOW, &store).unwrap_err();
        assert_eq!(r.error.kind, "insufficient_quota");
    }

    #[test]
    fn admit_and_settle_a_request() {
        let p = policy();
        let store = MemStore::new();
        p.prime(&store);
        assert_eq!(store.len(), 4, "keys a, b, byok and team eng have state");
        let a = p.authenticate(&bearer(KEY_A), NOW).unwrap();
        let adm = p.admit(&a, &est(1000, Some(500)), "gpt-4o-mini", None, NOW, &store).unwrap();
        // Worst case: 1000×0.15µ + 500×0.6µ = 450 µ$.
        assert_eq!(adm.reserved_micros(), 450);
        assert_eq!(adm.budget_remaining_micros(), Some(1_000_000 - 450));
        let h = adm.response_headers();
        // The team's 50 rpm is tighter than the key's 100.
        assert_eq!(header(&h, "x-ratelimit-limit-requests"), Some("50"));
        assert_eq!(header(&h, "x-ratelimit-remaining-requests"), Some("49"));
        assert_eq!(header(&h, "x-ratelimit-limit-tokens"), Some("100000"));
        assert_eq!(header(&h, "x-ratelimit-remaining-tokens"), Some("99000"));
        assert!(header(&h, "x-ratelimit-reset-requests").is_some());
        assert!(header(&h, "x-ratelimit-reset-tokens").is_some());
        assert_eq!(header(&h, BUDGET_REMAINING_HEADER), Some("0.999550"));
        let key_state = state(&store, "switchyard:key:a");
        assert_eq!(key_state.rate.concurrent.total(), 1);
        assert_eq!(key_state.budget.reserved.total(), 450);

        let u = Usage {
            prompt_tokens: 1200,
            completion_tokens: 100,
            total_tokens: 1300,
            prompt_tokens_details: Some(PromptTokensDetails { cached_tokens: 1000, cache_creation_tokens: 0 }),
            completion_tokens_details: None,
        };
        let s = p.settle(adm, Outcome::Usage(&u), Some("gpt-4o-mini-2024-07-18"), None, NOW + 2000, &store);
        // 200×0.15 + 1000×0.075 + 100×0.6 = 30 + 75 + 60 = 165 µ$.
        assert_eq!(s.cost_micros, Some(165));
        assert!(s.charged);
        assert_eq!(s.budget_remaining_micros, Some(1_000_000 - 165));
        assert_eq!(header(&s.headers(), COST_HEADER), Some("0.000165"));
        assert_eq!(header(&s.headers(), BUDGET_REMAINING_HEADER), Some("0.999835"));
        let key_state = state(&store, "switchyard:key:a");
        assert_eq!(key_state.rate.concurrent.total(), 0);
        assert_eq!(key_state.budget.reserved.total(), 0);
        assert_eq!(key_state.budget.spent_micros, 165);
        assert_eq!(key_state.rate.tokens.used_at(NOW + 2000), 1300, "estimate corrected to real usage");
        assert_eq!(state(&store, "switchyard:team:eng").budget.spent_micros, 165);
        assert_eq!(p.budget_remaining(&a, NOW + 3000, &store), Some(1_000_000 - 165));
    }

    #[test]
    fn budget_rejection_is_insufficient_quota_and_the_cap_header_lowers_it() {
        let p = policy();
        let store = MemStore::new();
        let a = p.authenticate(&bearer(KEY_A), NOW).unwrap();
        // claude-3-opus: 4096 output tokens × 75 µ$ = $0.3072 + 100k prompt × 18.75µ (cache write
        // is its dearest input) = $1.875 → over the $1 daily budget.
        let r = p.admit(&a, &est(100_000, None), "claude-3-opus-20240229", None, NOW, &store).unwrap_err();
        assert_eq!((r.error.status, r.error.kind, r.error.code.as_deref()), (429, "insufficient_quota", Some("insufficient_quota")));
        assert_eq!(header(&r.headers, "x-should-retry"), Some("false"));
        assert_eq!(header(&r.headers, BUDGET_REMAINING_HEADER), Some("1.000000"));
        assert!(r.error.message.contains("daily budget of key `a`"), "{}", r.error.message);
        // Nothing was left behind by the refused admission.
        let st = state(&store, "switchyard:key:a");
        assert_eq!((st.rate.requests.total(), st.rate.concurrent.total(), st.budget.reserved.total()), (0, 0, 0));

        // Cap: 1000 prompt + 500 output of gpt-4o-mini = 450 µ$.
        let ok = p.admit(&a, &est(1000, Some(500)), "gpt-4o-mini", Some("0.00045"), NOW, &store).unwrap();
        p.release(ok, NOW, &store);
        let r = p.admit(&a, &est(1000, Some(500)), "gpt-4o-mini", Some("0.000449"), NOW, &store).unwrap_err();
        assert_eq!((r.error.status, r.error.kind), (429, "insufficient_quota"));
        assert!(r.error.message.contains(MAX_COST_HEADER));
        let r = p.admit(&a, &est(1000, Some(500)), "gpt-4o-mini", Some("lots"), NOW, &store).unwrap_err();
        assert_eq!((r.error.status, r.error.code.as_deref()), (400, Some("invalid_max_cost")));
        // The cap applies to keys without a budget too.
        let free = p.authenticate(&bearer(KEY_FREE), NOW).unwrap();
        assert!(p.admit(&free, &est(1000, Some(500)), "gpt-4o-mini", Some("0.0001"), NOW, &store).is_err());
        let adm = p.admit(&free, &est(1000, Some(500)), "gpt-4o-mini", None, NOW, &store).unwrap();
        assert_eq!(store.len(), 2, "a key without limits or budget touches no shared data (a, eng only)");
        p.release(adm, NOW, &store);
    }

    #[test]
    fn team_rejection_rolls_back_the_key() {
        let p = policy();
        let store = MemStore::new();
        let b = p.authenticate(&bearer(KEY_B), NOW).unwrap();
        // Fill the team's 50 requests per minute through key b (1000 rpm of its own).
        let mut held = Vec::new();
        for _ in 0..50 {
            held.push(p.admit(&b, &est(10, Some(10)), "gpt-4o-mini", None, NOW, &store).unwrap());
        }
        let before_b = state(&store, "switchyard:key:b");
        let a = p.authenticate(&bearer(KEY_A), NOW).unwrap();
        let r = p.admit(&a, &est(10, Some(10)), "gpt-4o-mini", None, NOW, &store).unwrap_err();
        assert_eq!((r.error.status, r.error.kind), (429, "rate_limit_error"));
        assert!(r.error.message.contains("team `eng`"), "{}", r.error.message);
        assert_eq!(header(&r.headers, "x-ratelimit-remaining-requests"), Some("0"));
        assert!(header(&r.headers, "retry-after").is_some());
        // Key a's own scope was reserved, then given back in full.
        let st = state(&store, "switchyard:key:a");
        assert_eq!(st.rate.requests.total(), 0);
        assert_eq!(st.rate.tokens.total(), 0);
        assert_eq!(st.rate.concurrent.total(), 0);
        assert_eq!(st.budget.reserved.total(), 0);
        assert_eq!(st.budget.spent_micros, 0);
        assert_eq!(state(&store, "switchyard:key:b"), before_b);
        for adm in held {
            p.release(adm, NOW, &store);
        }
        assert_eq!(state(&store, "switchyard:team:eng").budget.reserved.total(), 0);
    }

    #[test]
    fn concurrency_limit_and_release_on_every_outcome() {
        let p = policy();
        let store = MemStore::new();
        let a = p.authenticate(&bearer(KEY_A), NOW).unwrap();
        let mut held: Vec<Admission> = (0..5).map(|_| p.admit(&a, &est(1, Some(1)), "gpt-4o-mini", None, NOW, &store).unwrap()).collect();
        let r = p.admit(&a, &est(1, Some(1)), "gpt-4o-mini", None, NOW, &store).unwrap_err();
        assert!(r.error.message.contains("concurrent"));
        let u = usage(1, 1);
        let outcomes = [
            Outcome::Usage(&u),
            Outcome::Partial { prompt_tokens: None, output_tokens: 0 },
            Outcome::NotServed,
        ];
        for o in outcomes {
            let adm = held.pop().unwrap();
            let _ = p.settle(adm, o, None, None, NOW, &store);
        }
        assert_eq!(state(&store, "switchyard:key:a").rate.concurrent.total(), 2);
        for adm in held.drain(..) {
            p.release(adm, NOW, &store);
        }
        assert_eq!(state(&store, "switchyard:key:a").rate.concurrent.total(), 0);
        // A forgotten admission frees its slot after lease_secs.
        for _ in 0..5 {
            std::mem::forget(p.admit(&a, &est(1, Some(1)), "gpt-4o-mini", None, NOW, &store).unwrap());
        }
        assert!(p.admit(&a, &est(1, Some(1)), "gpt-4o-mini", None, NOW + 60_000, &store).is_err());
        let later = NOW + (DEFAULT_LEASE_SECS + 31) * 1000;
        let adm = p.admit(&a, &est(1, Some(1)), "gpt-4o-mini", None, later, &store).unwrap();
        p.release(adm, later, &store);
    }

    #[test]
    fn attempts_cancelled_by_envoy_are_charged_their_prompt() {
        let p = policy();
        let store = MemStore::new();
        let a = p.authenticate(&bearer(KEY_A), NOW).unwrap();
        // A hedge: OpenAI's gpt-4o started on the 2000-token prompt and was cancelled when
        // Claude's first token won; Claude served 2000 in, 100 out.
        let adm = p.admit(&a, &est(2000, Some(1000)), "gpt-4o", None, NOW, &store).unwrap();
        let s = p.settle_with_cancelled(
            adm,
            Outcome::Usage(&usage(2000, 100)),
            Some("claude-3-5-haiku-20241022"),
            Some("anthropic"),
            &[("gpt-4o", "openai"), ("not-priced", "x")],
            NOW,
            &store,
        );
        // Claude: 2000×0.8 + 100×4 = 2000 µ$; OpenAI's prompt: 2000×2.5 = 5000 µ$; unpriced: none.
        assert_eq!(s.cost_micros, Some(2_000));
        assert_eq!(s.cancelled_micros, vec![Some(5_000), None]);
        assert_eq!(state(&store, "switchyard:key:a").budget.spent_micros, 7_000);
        // Every attempt abandoned (no answer): the cancelled ones are still charged.
        let adm = p.admit(&a, &est(2000, Some(1000)), "gpt-4o", None, NOW, &store).unwrap();
        let s = p.settle_with_cancelled(adm, Outcome::NotServed, None, None, &[("gpt-4o", "openai")], NOW, &store);
        assert_eq!((s.cost_micros, s.charged, s.cancelled_micros.clone()), (Some(0), false, vec![Some(5_000)]));
        let st = state(&store, "switchyard:key:a");
        assert_eq!((st.budget.spent_micros, st.budget.reserved.total()), (12_000, 0));
    }

    #[test]
    fn cut_streams_are_charged_for_what_was_produced() {
        let p = policy();
        let store = MemStore::new();
        let a = p.authenticate(&bearer(KEY_A), NOW).unwrap();
        let adm = p.admit(&a, &est(2000, Some(1000)), "gpt-4o", None, NOW, &store).unwrap();
        // Reserved: 2000×2.5µ + 1000×10µ = 15000 µ$.
        assert_eq!(adm.reserved_micros(), 15_000);
        let s = p.settle(adm, Outcome::Partial { prompt_tokens: None, output_tokens: 120 }, None, None, NOW, &store);
        // Charged: 2000×2.5 + 120×10 = 6200 µ$, not 0 and not the reservation.
        assert_eq!(s.cost_micros, Some(6_200));
        assert!(s.estimated && s.charged);
        assert_eq!((s.prompt_tokens, s.completion_tokens), (2000, 120));
        // Cut before any output: still the prompt.
        let adm = p.admit(&a, &est(2000, Some(1000)), "gpt-4o", None, NOW, &store).unwrap();
        let s = p.settle(adm, Outcome::Partial { prompt_tokens: Some(1800), output_tokens: 0 }, None, None, NOW, &store);
        assert_eq!(s.cost_micros, Some(4_500));
        // Not served: nothing.
        let adm = p.admit(&a, &est(2000, Some(1000)), "gpt-4o", None, NOW, &store).unwrap();
        let s = p.settle(adm, Outcome::NotServed, None, None, NOW, &store);
        assert_eq!((s.cost_micros, s.charged), (Some(0), false));
        let st = state(&store, "switchyard:key:a");
        assert_eq!(st.budget.spent_micros, 10_700);
        assert_eq!(st.budget.reserved.total(), 0);
    }

    #[test]
    fn failover_is_priced_as_the_model_that_served() {
        let p = policy();
        let store = MemStore::new();
        let a = p.authenticate(&bearer(KEY_A), NOW).unwrap();
        let adm = p.admit(&a, &est(100, Some(100)), "gpt-4o-mini", None, NOW, &store).unwrap();
        let s = p.settle(adm, Outcome::Usage(&usage(100, 100)), Some("claude-3-5-haiku-20241022"), Some("anthropic"), NOW, &store);
        assert_eq!(s.cost_micros, Some(100 * 4 / 5 + 100 * 4)); // 80 + 400
        // An unknown served name falls back to the admitted model's price.
        let adm = p.admit(&a, &est(100, Some(100)), "gpt-4o-mini", None, NOW, &store).unwrap();
        let s = p.settle(adm, Outcome::Usage(&usage(100, 100)), Some("mystery"), None, NOW, &store);
        assert_eq!(s.cost_micros, Some(15 + 60));
    }

    #[test]
    fn unpriced_models() {
        let p = policy();
        let store = MemStore::new();
        let a = p.authenticate(&bearer(KEY_A), NOW).unwrap();
        let r = p.admit(&a, &est(10, None), "claude-unknown", None, NOW, &store).unwrap_err();
        assert_eq!((r.error.status, r.error.code.as_deref()), (403, Some("model_not_priced")));
        // Without a budget or cap an unpriced model passes, with no cost header.
        let b = p.authenticate(&bearer(KEY_B), NOW).unwrap();
        let b_free_team = Policy::new(PolicyConfig {
            teams: vec![serde_json::from_str(r#"{"id":"eng"}"#).unwrap()],
            ..config()
        })
        .unwrap();
        let b2 = b_free_team.authenticate(&bearer(KEY_B), NOW).unwrap();
        let adm = b_free_team.admit(&b2, &est(10, None), "llama-local", None, NOW, &store).unwrap();
        let s = b_free_team.settle(adm, Outcome::Usage(&usage(10, 10)), None, None, NOW, &store);
        assert_eq!(s.cost_micros, None);
        assert!(s.headers().is_empty());
        // Key b's team has a budget, so with `deny` the unpriced model is refused…
        assert!(p.admit(&b, &est(10, None), "llama-local", None, NOW, &store).is_err());
        // …and with `free` it passes at zero cost.
        let free = Policy::new(PolicyConfig { unpriced_models: UnpricedModels::Free, ..config() }).unwrap();
        let b = free.authenticate(&bearer(KEY_B), NOW).unwrap();
        let adm = free.admit(&b, &est(10, None), "llama-local", None, NOW, &store).unwrap();
        assert_eq!(adm.reserved_micros(), 0);
        free.release(adm, NOW, &store);
    }

    #[test]
    fn reservation_uses_the_model_max_output_or_the_configured_cap() {
        let p = policy();
        let store = MemStore::new();
        let a = p.authenticate(&bearer(KEY_A), NOW).unwrap();
        // No max_tokens: gpt-4o-mini's max_output_tokens (16384) × 0.6 µ$ = 9830.4 → 9831 µ$.
        let adm = p.admit(&a, &est(0, None), "gpt-4o-mini", None, NOW, &store).unwrap();
        assert_eq!((adm.reserved_output_tokens(), adm.reserved_micros()), (16_384, 9_831));
        p.release(adm, NOW, &store);
        let capped = Policy::new(PolicyConfig { default_max_output_tokens: Some(1000), ..config() }).unwrap();
        let a = capped.authenticate(&bearer(KEY_A), NOW).unwrap();
        let adm = capped.admit(&a, &RequestEstimate { prompt_tokens: 0, max_output_tokens: None, choices: 3 }, "gpt-4o-mini", None, NOW, &store).unwrap();
        assert_eq!((adm.reserved_output_tokens(), adm.reserved_micros()), (3000, 1800));
        capped.release(adm, NOW, &store);
    }

    #[test]
    fn admission_survives_cas_conflicts() {
        let p = policy();
        // Every third read races with another writer.
        let store = ConflictStore::new(|i| i % 3 == 0);
        p.prime(&store.inner);
        let a = p.authenticate(&bearer(KEY_A), NOW).unwrap();
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(p.admit(&a, &est(100, Some(100)), "gpt-4o-mini", None, NOW, &store).unwrap());
        }
        assert!(store.conflicts.get() > 0);
        let st = state(&store.inner, "switchyard:key:a");
        assert_eq!(st.rate.requests.total(), 5, "each admission counted once despite retries");
        assert_eq!(st.budget.reserved.total(), 5 * 75);
        for adm in held {
            let _ = p.settle(adm, Outcome::Usage(&usage(100, 100)), None, None, NOW, &store);
        }
        let st = state(&store.inner, "switchyard:key:a");
        assert_eq!((st.budget.spent_micros, st.budget.reserved.total(), st.rate.concurrent.total()), (5 * 75, 0, 0));
        // A store that always conflicts refuses the admission (fail closed) with retry-after.
        let hopeless = ConflictStore::new(|_| true);
        p.prime(&hopeless.inner);
        let r = p.admit(&a, &est(1, Some(1)), "gpt-4o-mini", None, NOW, &hopeless).unwrap_err();
        assert_eq!(r.error.status, 429);
        assert_eq!(header(&r.headers, "retry-after"), Some("1"));
    }

    #[test]
    fn concurrent_admissions_never_overspend() {
        // 200 admissions on 8 threads against a budget that fits exactly 100 worst cases; a
        // shared store whose get and set are separate critical sections, as in Envoy.
        let json = format!(
            r#"{{"keys":[{{"id":"k","sha256":"{}","budget":{{"amount_usd":0.0075,"window":"total"}}}}]}}"#,
            hash_key(KEY_A)
        );
        let p = Policy::new(serde_json::from_str(&json).unwrap()).unwrap();
        let store = SyncStore::default();
        p.prime(&store);
        let principal = p.authenticate(&bearer(KEY_A), NOW).unwrap();
        // 100 prompt + 100 output of gpt-4o-mini: 15 + 60 = 75 µ$; 7500 µ$ fit 100.
        let admitted = std::sync::atomic::AtomicUsize::new(0);
        let contended = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..25 {
                        match p.admit(&principal, &est(100, Some(100)), "gpt-4o-mini", None, NOW, &store) {
                            Ok(adm) => {
                                std::mem::forget(adm); // keep the reservation held
                                admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                            Err(r) if r.error.kind == "insufficient_quota" => {}
                            Err(_) => {
                                contended.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                        }
                        let st = state(&store, "switchyard:key:k");
                        assert!(st.budget.reserved.total() + st.budget.spent_micros <= 7_500);
                    }
                });
            }
        });
        let st = state(&store, "switchyard:key:k");
        let admitted = admitted.into_inner();
        assert!(admitted <= 100);
        assert_eq!(st.budget.reserved.total(), admitted as u64 * 75, "every admission reserved exactly once");
        if contended.into_inner() == 0 {
            assert_eq!(admitted, 100, "without contention refusals the whole budget is used");
        }
    }

    #[test]
    fn budget_windows_through_the_policy() {
        // A key with $1 a day in a team with $1.50 a month, and a key with $1 for all time.
        let json = format!(
            r#"{{"keys":[{{"id":"d","team":"t","sha256":"{}","budget":{{"amount_usd":1,"window":"daily"}}}},
                         {{"id":"f","sha256":"{}","budget":{{"amount_usd":1,"window":"total"}}}}],
                "teams":[{{"id":"t","budget":{{"amount_usd":1.5,"window":"monthly"}}}}]}}"#,
            hash_key(KEY_A),
            hash_key(KEY_B)
        );
        let p = Policy::new(serde_json::from_str(&json).unwrap()).unwrap();
        let store = MemStore::new();
        p.prime(&store);
        let spend = |key: &str, now: u64| -> Result<Settlement, Rejection> {
            let pr = p.authenticate(&bearer(key), now).unwrap();
            // Reserves 1000×0.15 + 100×0.6 = 210 µ$; the provider reports 400k prompt tokens of
            // gpt-4o-mini: $0.06 + 100×0.6µ = 60_060 µ$, over the reservation (still charged).
            let adm = p.admit(&pr, &est(1000, Some(100)), "gpt-4o-mini", None, now, &store)?;
            Ok(p.settle(adm, Outcome::Usage(&usage(400_000, 100)), None, None, now, &store))
        };
        // NOW is 2024-06-10T06:13:20Z; the day ends at 2024-06-11T00:00:00Z, the month at
        // 2024-07-01T00:00:00Z.
        let midnight = 1_718_064_000_000;
        let next_month = 1_719_792_000_000;
        for i in 0..17 {
            let s = spend(KEY_A, NOW + i * 60_000).unwrap();
            assert_eq!(s.cost_micros, Some(60_060));
        }
        // 17 × 60_060 = 1_021_020 µ$: over the day's $1 by less than one request's excess.
        let r = spend(KEY_A, midnight - 1).unwrap_err();
        assert_eq!(r.error.kind, "insufficient_quota");
        assert!(r.error.message.contains("daily budget of key `d`"), "{}", r.error.message);
        assert_eq!(header(&r.headers, BUDGET_REMAINING_HEADER), Some("0.000000"));
        // At midnight the key's day starts afresh; the team's month does not (and is now the
        // tighter of the two).
        let pr = p.authenticate(&bearer(KEY_A), midnight).unwrap();
        assert_eq!(p.budget_remaining(&pr, midnight, &store), Some(1_500_000 - 1_021_020));
        let s = spend(KEY_A, midnight).unwrap();
        assert_eq!(state(&store, "switchyard:key:d").budget.spent_micros, 60_060);
        assert_eq!(state(&store, "switchyard:team:t").budget.spent_micros, 1_021_020 + 60_060);
        assert_eq!(s.budget_remaining_micros, Some(1_500_000 - 1_081_080));
        for i in 1..8 {
            spend(KEY_A, midnight + i * 60_000).unwrap();
        }
        // Now the team's $1.50 is what refuses, with the team named.
        let r = spend(KEY_A, midnight + 3_600_000).unwrap_err();
        assert!(r.error.message.contains("monthly budget of team `t`"), "{}", r.error.message);
        assert!(spend(KEY_A, next_month - 1).is_err());
        assert!(spend(KEY_A, next_month).is_ok(), "a new month, a new team budget (and a new day)");
        // The total budget never starts afresh.
        for i in 0..17 {
            spend(KEY_B, NOW + i * 1000).unwrap();
        }
        assert!(spend(KEY_B, NOW + 400 * 86_400_000).is_err());
        let st = state(&store, "switchyard:key:f");
        assert_eq!((st.budget.spent_micros, st.budget.reserved.total()), (17 * 60_060, 0));
    }

    #[test]
    fn state_encoding_is_versioned_and_tolerant() {
        let mut s = ScopeState::default();
        s.rate.requests.charge(NOW, 7);
        s.budget.spent_micros = 99;
        let bytes = s.encode(0);
        assert_eq!(ScopeState::decode(Some(&bytes), "k"), s);
        assert_eq!(ScopeState::decode(Some(&[]), "k"), ScopeState::default());
        assert_eq!(ScopeState::decode(Some(&[9, 9, 9]), "k"), ScopeState::default());
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(ScopeState::decode(Some(&trailing), "k"), ScopeState::default());
        assert_eq!(ScopeState::decode(Some(&bytes[..bytes.len() - 1]), "k"), ScopeState::default());
        // A value of version 1 (two-bucket rate windows): the windows start afresh, the leases
        // and the budget are kept.
        let mut old = ScopeState::default();
        old.rate.concurrent.add(1_718_000_900, 1);
        old.budget.spent_micros = 99;
        let mut w = Writer::new();
        w.u8(1);
        for v in [28_633_333u64, 7, 3, 28_633_333, 700, 300] {
            w.u64(v);
        }
        old.rate.concurrent.encode(&mut w);
        old.budget.encode(&mut w);
        assert_eq!(ScopeState::decode(Some(&w.finish()), "k"), old);
    }

    #[test]
    fn configuration_errors() {
        let bad = |json: &str| serde_json::from_str::<PolicyConfig>(json).map_err(|e| e.to_string()).and_then(Policy::new);
        let h = hash_key("x");
        assert!(bad(&format!(r#"{{"keys":[{{"id":"k","team":"ghost","sha256":"{h}"}}]}}"#)).is_err());
        assert!(bad(r#"{"teams":[{"id":"t"},{"id":"t"}]}"#).is_err());
        assert!(bad(r#"{"lease_secs":0}"#).is_err());
        assert!(bad(r#"{"byok_header":"authorization"}"#).is_err());
        assert!(bad(r#"{"byok_header":"bad header"}"#).is_err());
        assert!(bad(r#"{"unknown":1}"#).is_err());
        assert!(bad(r#"{"unpriced_models":"maybe"}"#).is_err());
        let p = bad(r#"{"byok_header":"X-Provider-Key"}"#).unwrap();
        assert_eq!(p.byok_header(), "x-provider-key");
        assert_eq!(p.key_count(), 0);
    }

    #[test]
    fn estimate_from_a_real_request_feeds_admission() {
        let p = policy();
        let store = MemStore::new();
        let req = parse_chat_request(br#"{"model":"gpt-4o-mini","max_tokens":10,"messages":[{"role":"user","content":"Hello there"}]}"#).unwrap();
        let e = RequestEstimate::from_chat(&req);
        let a = p.authenticate(&bearer(KEY_A), NOW).unwrap();
        let adm = p.admit(&a, &e, &req.model, None, NOW, &store).unwrap();
        assert_eq!(adm.estimated_prompt_tokens(), 3 + 4 + 3);
        assert_eq!(adm.reserved_output_tokens(), 10);
        p.release(adm, NOW, &store);
    }
}
