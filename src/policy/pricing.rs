//! Model prices and the cost of a request.
//!
//! **Format.** Prices use the shape of the widely used model price table (LiteLLM's
//! `model_prices_and_context_window.json`): an object mapping a model name to an entry with
//! `input_cost_per_token`, `output_cost_per_token`, `cache_read_input_token_cost`,
//! `cache_creation_input_token_cost`, `output_cost_per_reasoning_token`, `max_output_tokens`, … in
//! US dollars per token. The whole file can be pasted as-is: unknown fields are ignored, the
//! `sample_spec` entry is skipped, and entries without per-token prices (image, audio, …) are
//! skipped. Per-backend overrides use the same shape; their fields replace the base entry's.
//!
//! **Units.** Prices are converted once, at configuration time, to integer *femto-USD per token*
//! (1e-15 $). Table prices have at most a handful of significant digits and none is below
//! 1e-12 $/token, so femto-USD holds each of them exactly; a u64 holds up to $18,446 per token.
//! The conversion does not multiply floats: it takes the float's shortest round-trip decimal
//! form (what the JSON said, e.g. `1.5e-7`) and shifts its digits, so `1.5e-7` becomes exactly
//! 150_000_000 femto-USD. A request's cost is summed in `u128` femto-USD (tokens × price cannot
//! overflow it) and rounded *up* to whole micro-USD, the accounting unit of budgets: a request is
//! never under-charged and is over-charged by less than one micro-dollar.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::api::chat::Usage;

pub const FEMTO_PER_MICRO: u128 = 1_000_000_000;

/// A model's prices in femto-USD per token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelPrice {
    pub input: u64,
    pub output: u64,
    /// Cached prompt tokens (`cache_read_input_token_cost`); `input` when absent.
    pub cache_read: Option<u64>,
    /// Prompt tokens written to the cache (`cache_creation_input_token_cost`); `input` when absent.
    pub cache_creation: Option<u64>,
    /// Reasoning tokens (`output_cost_per_reasoning_token`); `output` when absent.
    pub reasoning: Option<u64>,
    /// `max_output_tokens` (or the legacy `max_tokens`), the worst case when a request sets none.
    pub max_output_tokens: Option<u64>,
}

/// An entry as configured; absent fields are `None` (used for overrides).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartialPrice {
    pub input: Option<u64>,
    pub output: Option<u64>,
    pub cache_read: Option<u64>,
    pub cache_creation: Option<u64>,
    pub reasoning: Option<u64>,
    pub max_output_tokens: Option<u64>,
}

impl PartialPrice {
    /// A full price, if the entry prices tokens at all (missing input or output counts as free).
    fn complete(&self) -> Option<ModelPrice> {
        if self.input.is_none() && self.output.is_none() {
            return None;
        }
        Some(ModelPrice {
            input: self.input.unwrap_or(0),
            output: self.output.unwrap_or(0),
            cache_read: self.cache_read,
            cache_creation: self.cache_creation,
            reasoning: self.reasoning,
            max_output_tokens: self.max_output_tokens,
        })
    }

    /// This override's fields over `base`'s.
    fn over(&self, base: Option<ModelPrice>) -> Option<ModelPrice> {
        let Some(b) = base else { return self.complete() };
        Some(ModelPrice {
            input: self.input.unwrap_or(b.input),
            output: self.output.unwrap_or(b.output),
            cache_read: self.cache_read.or(b.cache_read),
            cache_creation: self.cache_creation.or(b.cache_creation),
            reasoning: self.reasoning.or(b.reasoning),
            max_output_tokens: self.max_output_tokens.or(b.max_output_tokens),
        })
    }
}

impl ModelPrice {
    /// Exact cost of `usage` in femto-USD. `prompt_tokens` includes cached and cache-creation
    /// tokens (OpenAI's convention, which the Anthropic translation follows): those are taken
    /// out and priced at their own rates. Reasoning tokens (inside `completion_tokens`) are priced
    /// apart only when the model has a reasoning price.
    pub fn cost_femto(&self, usage: &Usage) -> u128 {
        let (cached, creation) =
            usage.prompt_tokens_details.as_ref().map_or((0, 0), |d| (d.cached_tokens, d.cache_creation_tokens));
        let uncached = usage.prompt_tokens.saturating_sub(cached).saturating_sub(creation);
        let input = mul(uncached, self.input)
            .saturating_add(mul(cached, self.cache_read.unwrap_or(self.input)))
            .saturating_add(mul(creation, self.cache_creation.unwrap_or(self.input)));
        let completion = usage.completion_tokens;
        let output = match self.reasoning {
            Some(rp) => {
                let reasoning =
                    usage.completion_tokens_details.as_ref().map_or(0, |d| d.reasoning_tokens).min(completion);
                mul(reasoning, rp).saturating_add(mul(completion - reasoning, self.output))
            }
            None => mul(completion, self.output),
        };
        input.saturating_add(output)
    }

    /// Cost of plain prompt and output token counts (a partial stream without usage).
    pub fn cost_of_tokens_femto(&self, prompt_tokens: u64, output_tokens: u64) -> u128 {
        mul(prompt_tokens, self.input).saturating_add(mul(output_tokens, self.output))
    }

    /// The most `prompt_tokens` + `output_tokens` can cost: every prompt token at the dearest
    /// input rate (a cache write costs more than a plain input token) and every output token at
    /// the dearest output rate.
    pub fn worst_case_femto(&self, prompt_tokens: u64, output_tokens: u64) -> u128 {
        let input = self.input.max(self.cache_creation.unwrap_or(0)).max(self.cache_read.unwrap_or(0));
        let output = self.output.max(self.reasoning.unwrap_or(0));
        mul(prompt_tokens, input).saturating_add(mul(output_tokens, output))
    }

    /// Component-wise maximum: a price at least as high as either.
    fn max(self, o: ModelPrice) -> ModelPrice {
        let opt_max = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        };
        ModelPrice {
            input: self.input.max(o.input),
            output: self.output.max(o.output),
            cache_read: opt_max(self.cache_read, o.cache_read),
            cache_creation: opt_max(self.cache_creation, o.cache_creation),
            reasoning: opt_max(self.reasoning, o.reasoning),
            max_output_tokens: opt_max(self.max_output_tokens, o.max_output_tokens),
        }
    }
}

fn mul(tokens: u64, price: u64) -> u128 {
    tokens as u128 * price as u128
}

/// Femto-USD to micro-USD, rounded up.
pub fn femto_to_micros_ceil(femto: u128) -> u64 {
    femto.div_ceil(FEMTO_PER_MICRO).min(u64::MAX as u128) as u64
}

// ---------------------------------------------------------------------------------------------
// Exact decimal conversions
// ---------------------------------------------------------------------------------------------

/// `v` dollars in units of `10^-scale` dollars (6: micro-USD, 15: femto-USD), from the float's
/// shortest round-trip decimal form, rounding half up below the unit. `None` for negative, NaN,
/// infinite or too large values.
pub fn usd_f64_to_units(v: f64, scale: u32) -> Option<u64> {
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    if v == 0.0 {
        return Some(0);
    }
    // `{:e}` prints the shortest digits that round-trip: 1.5e-7 → "1.5e-7", 12.34 → "1.234e1".
    let text = format!("{v:e}");
    let (mantissa, exp) = text.split_once('e')?;
    let exp: i64 = exp.parse().ok()?;
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: u128 = format!("{int_part}{frac_part}").parse().ok()?;
    let shift = exp - frac_part.len() as i64 + scale as i64;
    let scaled = if shift >= 0 {
        digits.checked_mul(10u128.checked_pow(u32::try_from(shift).ok()?)?)?
    } else {
        let div = 10u128.checked_pow(u32::try_from(-shift).ok()?);
        match div {
            Some(d) => (digits + d / 2) / d,
            None => 0, // far below one unit
        }
    };
    u64::try_from(scaled).ok()
}

/// A plain decimal dollar amount (`"0.25"`, `"3"`, `"1.5e-3"` is refused) in micro-USD, rounded
/// down (the result is used as a cap). `None` when it is not such a number.
pub fn parse_usd_micros(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() || s.len() > 40 {
        return None;
    }
    let (int_part, frac_part) = s.split_once('.').unwrap_or((s, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    if !int_part.bytes().all(|b| b.is_ascii_digit()) || !frac_part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut micros: u64 = 0;
    for b in int_part.bytes() {
        micros = micros.checked_mul(10)?.checked_add((b - b'0') as u64)?;
    }
    micros = micros.checked_mul(1_000_000)?;
    let mut scale = 100_000u64;
    for b in frac_part.bytes().take(6) {
        micros = micros.checked_add((b - b'0') as u64 * scale)?;
        scale /= 10;
    }
    Some(micros)
}

/// Micro-USD as a dollar amount with six decimals: `1234567` → `"1.234567"`.
pub fn format_usd(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

// ---------------------------------------------------------------------------------------------
// Configuration and the table
// ---------------------------------------------------------------------------------------------

/// `pricing` in the policy configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingConfig {
    /// Model → price entry, in the model price table's shape (paste the table as-is). Entries here
    /// replace built-in ones of the same name.
    #[serde(default)]
    pub models: Map<String, Value>,
    /// Backend name → model → price fields that differ on that backend (a negotiated rate, a
    /// cloud reseller); the fields given replace the base entry's.
    #[serde(default)]
    pub backends: HashMap<String, Map<String, Value>>,
    /// Names priced like another model: `{"claude-haiku": "claude-3-5-haiku-latest"}`.
    #[serde(default)]
    pub aliases: HashMap<String, String>,
    /// Start from the built-in table of common models (default true).
    #[serde(default = "default_true")]
    pub builtin: bool,
}

fn default_true() -> bool {
    true
}

impl Default for PricingConfig {
    fn default() -> Self {
        PricingConfig { models: Map::new(), backends: HashMap::new(), aliases: HashMap::new(), builtin: true }
    }
}

/// Built-in prices for the models of the example configurations: public list prices of the
/// providers (USD per token, standard tier, prompts up to 128k tokens for Gemini), in the
/// model price table's shape. Each entry also carries the model table's capability fields, from
/// the providers' model documentation (`max_input_tokens` is the context window): OpenAI's GPT-4o
/// family takes 128,000 tokens, tools and images, and `json_schema` output (Structured Outputs)
/// from `gpt-4o-mini-2024-07-18` and `gpt-4o-2024-08-06` on, so not `gpt-4o-2024-05-13`; Anthropic's
/// Claude 3 and 3.5 models take 200,000 tokens, tools and images (JSON schema output is emulated by
/// the gateway's Anthropic translation, `src/providers/anthropic.rs`); Gemini 1.5 Flash takes
/// 1,048,576 tokens, tools, images and a response schema. None of them takes `reasoning_effort`
/// (extended thinking begins with Claude 3.7, OpenAI's reasoning models are the o-series).
pub const BUILTIN_PRICES: &str = r#"{
  "gpt-4o-mini":                {"input_cost_per_token": 1.5e-07, "output_cost_per_token": 6e-07, "cache_read_input_token_cost": 7.5e-08, "max_output_tokens": 16384, "litellm_provider": "openai", "mode": "chat", "max_input_tokens": 128000, "supports_function_calling": true, "supports_vision": true, "supports_response_schema": true, "supports_reasoning": false},
  "gpt-4o-mini-2024-07-18":     {"input_cost_per_token": 1.5e-07, "output_cost_per_token": 6e-07, "cache_read_input_token_cost": 7.5e-08, "max_output_tokens": 16384, "litellm_provider": "openai", "mode": "chat", "max_input_tokens": 128000, "supports_function_calling": true, "supports_vision": true, "supports_response_schema": true, "supports_reasoning": false},
  "gpt-4o":                     {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05, "cache_read_input_token_cost": 1.25e-06, "max_output_tokens": 16384, "litellm_provider": "openai", "mode": "chat", "max_input_tokens": 128000, "supports_function_calling": true, "supports_vision": true, "supports_response_schema": true, "supports_reasoning": false},
  "gpt-4o-2024-08-06":          {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05, "cache_read_input_token_cost": 1.25e-06, "max_output_tokens": 16384, "litellm_provider": "openai", "mode": "chat", "max_input_tokens": 128000, "supports_function_calling": true, "supports_vision": true, "supports_response_schema": true, "supports_reasoning": false},
  "gpt-4o-2024-11-20":          {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05, "cache_read_input_token_cost": 1.25e-06, "max_output_tokens": 16384, "litellm_provider": "openai", "mode": "chat", "max_input_tokens": 128000, "supports_function_calling": true, "supports_vision": true, "supports_response_schema": true, "supports_reasoning": false},
  "gpt-4o-2024-05-13":          {"input_cost_per_token": 5e-06, "output_cost_per_token": 1.5e-05, "max_output_tokens": 4096, "litellm_provider": "openai", "mode": "chat", "max_input_tokens": 128000, "supports_function_calling": true, "supports_vision": true, "supports_response_schema": false, "supports_reasoning": false},
  "claude-3-5-haiku-20241022":  {"input_cost_per_token": 8e-07, "output_cost_per_token": 4e-06, "cache_creation_input_token_cost": 1e-06, "cache_read_input_token_cost": 8e-08, "max_output_tokens": 8192, "litellm_provider": "anthropic", "mode": "chat", "max_input_tokens": 200000, "supports_function_calling": true, "supports_vision": true, "supports_response_schema": true, "supports_reasoning": false},
  "claude-3-5-haiku-latest":    {"input_cost_per_token": 8e-07, "output_cost_per_token": 4e-06, "cache_creation_input_token_cost": 1e-06, "cache_read_input_token_cost": 8e-08, "max_output_tokens": 8192, "litellm_provider": "anthropic", "mode": "chat", "max_input_tokens": 200000, "supports_function_calling": true, "supports_vision": true, "supports_response_schema": true, "supports_reasoning": false},
  "claude-3-haiku-20240307":    {"input_cost_per_token": 2.5e-07, "output_cost_per_token": 1.25e-06, "cache_creation_input_token_cost": 3e-07, "cache_read_input_token_cost": 3e-08, "max_output_tokens": 4096, "litellm_provider": "anthropic", "mode": "chat", "max_input_tokens": 200000, "supports_function_calling": true, "supports_vision": true, "supports_response_schema": true, "supports_reasoning": false},
  "claude-3-opus-20240229":     {"input_cost_per_token": 1.5e-05, "output_cost_per_token": 7.5e-05, "cache_creation_input_token_cost": 1.875e-05, "cache_read_input_token_cost": 1.5e-06, "max_output_tokens": 4096, "litellm_provider": "anthropic", "mode": "chat", "max_input_tokens": 200000, "supports_function_calling": true, "supports_vision": true, "supports_response_schema": true, "supports_reasoning": false},
  "claude-3-opus-latest":       {"input_cost_per_token": 1.5e-05, "output_cost_per_token": 7.5e-05, "cache_creation_input_token_cost": 1.875e-05, "cache_read_input_token_cost": 1.5e-06, "max_output_tokens": 4096, "litellm_provider": "anthropic", "mode": "chat", "max_input_tokens": 200000, "supports_function_calling": true, "supports_vision": true, "supports_response_schema": true, "supports_reasoning": false},
  "claude-3-5-sonnet-20240620": {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05, "cache_creation_input_token_cost": 3.75e-06, "cache_read_input_token_cost": 3e-07, "max_output_tokens": 8192, "litellm_provider": "anthropic", "mode": "chat", "max_input_tokens": 200000, "supports_function_calling": true, "supports_vision": true, "supports_response_schema": true, "supports_reasoning": false},
  "claude-3-5-sonnet-20241022": {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05, "cache_creation_input_token_cost": 3.75e-06, "cache_read_input_token_cost": 3e-07, "max_output_tokens": 8192, "litellm_provider": "anthropic", "mode": "chat", "max_input_tokens": 200000, "supports_function_calling": true, "supports_vision": true, "supports_response_schema": true, "supports_reasoning": false},
  "claude-3-5-sonnet-latest":   {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05, "cache_creation_input_token_cost": 3.75e-06, "cache_read_input_token_cost": 3e-07, "max_output_tokens": 8192, "litellm_provider": "anthropic", "mode": "chat", "max_input_tokens": 200000, "supports_function_calling": true, "supports_vision": true, "supports_response_schema": true, "supports_reasoning": false},
  "gemini-1.5-flash":           {"input_cost_per_token": 7.5e-08, "output_cost_per_token": 3e-07, "max_output_tokens": 8192, "litellm_provider": "gemini", "mode": "chat", "max_input_tokens": 1048576, "supports_function_calling": true, "supports_vision": true, "supports_response_schema": true, "supports_reasoning": false}
}"#;

const PRICE_FIELDS: [&str; 5] = [
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
    "output_cost_per_reasoning_token",
];

/// Reads one entry. `Ok(None)` for entries that are not token-priced chat/completion models.
fn parse_entry(name: &str, v: &Value) -> Result<Option<PartialPrice>, String> {
    let Some(obj) = v.as_object() else {
        return Err(format!("pricing: {name}: an entry must be an object"));
    };
    let mut prices = [None; 5];
    for (slot, field) in prices.iter_mut().zip(PRICE_FIELDS) {
        if let Some(x) = obj.get(field) {
            if x.is_null() {
                continue;
            }
            let f = x.as_f64().ok_or_else(|| format!("pricing: {name}: {field} must be a number"))?;
            *slot = Some(usd_f64_to_units(f, 15).ok_or_else(|| format!("pricing: {name}: {field} must be a non-negative number"))?);
        }
    }
    let max_output_tokens = ["max_output_tokens", "max_tokens"].iter().find_map(|k| obj.get(*k).and_then(Value::as_u64));
    let [input, output, cache_read, cache_creation, reasoning] = prices;
    let p = PartialPrice { input, output, cache_read, cache_creation, reasoning, max_output_tokens };
    if prices.iter().all(Option::is_none) {
        return Ok(None);
    }
    Ok(Some(p))
}

/// Parses a table in the model price JSON shape; a malformed price is an error (a typo must not
/// silently make a model free).
fn parse_table(map: &Map<String, Value>) -> Result<Vec<(String, PartialPrice)>, String> {
    let mut out = Vec::with_capacity(map.len());
    for (name, v) in map {
        if name == "sample_spec" {
            continue;
        }
        if let Some(p) = parse_entry(name, v)? {
            out.push((name.clone(), p));
        }
    }
    Ok(out)
}

/// The part of a model name that survives provider prefixes, dates and `-latest`:
/// `anthropic/claude-3-5-haiku-20241022` → `claude-3-5-haiku`, `gpt-4o-2024-08-06` → `gpt-4o`,
/// `vertex_ai/claude-3-opus@20240229` → `claude-3-opus`.
pub fn base_name(model: &str) -> &str {
    let mut m = model.rsplit('/').next().unwrap_or(model);
    if let Some((head, tail)) = m.rsplit_once('@') {
        if !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
            m = head;
        }
    }
    if let Some(head) = m.strip_suffix("-latest") {
        m = head;
    }
    let b = m.as_bytes();
    let digit = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    let dash = |i: usize| b.get(i) == Some(&b'-');
    let n = b.len();
    // -YYYYMMDD
    if n > 9 && dash(n - 9) && (n - 8..n).all(digit) {
        return m.get(..n - 9).unwrap_or(m);
    }
    // -YYYY-MM-DD
    if n > 11 && dash(n - 11) && dash(n - 6) && dash(n - 3) && [10, 9, 8, 7, 5, 4, 2, 1].iter().all(|&k| digit(n - k)) {
        return m.get(..n - 11).unwrap_or(m);
    }
    m
}

/// Names indexed for lookup: exact, then without a provider prefix, then by [`base_name`].
#[derive(Debug, Default)]
pub(crate) struct NameIndex<T> {
    exact: HashMap<String, T>,
    /// base name → (rank, value); the best-ranked entry wins whatever the insertion order.
    base: HashMap<String, ((bool, bool, String), T)>,
}

impl<T: Copy> NameIndex<T> {
    pub(crate) fn insert(&mut self, name: &str, v: T) {
        self.exact.insert(name.to_string(), v);
        let base = base_name(name);
        // Prefer the entry named exactly like the base, then unprefixed names, then the latest
        // (lexicographically greatest: dates sort) name. An equal rank is the same name inserted
        // again (a configured entry replacing a built-in one): the later one wins, as in `exact`.
        let rank = (name == base, !name.contains('/'), name.to_string());
        match self.base.get(base) {
            Some((r, _)) if *r > rank => {}
            _ => {
                self.base.insert(base.to_string(), (rank, v));
            }
        }
    }

    pub(crate) fn exact_contains(&self, model: &str) -> bool {
        self.exact.contains_key(model)
    }

    pub(crate) fn get(&self, model: &str) -> Option<T> {
        if let Some(v) = self.exact.get(model) {
            return Some(*v);
        }
        if let Some((_, last)) = model.rsplit_once('/') {
            if let Some(v) = self.exact.get(last) {
                return Some(*v);
            }
        }
        self.base.get(base_name(model)).map(|(_, v)| *v)
    }
}

/// Prices ready for lookups.
#[derive(Debug, Default)]
pub struct PriceTable {
    models: NameIndex<ModelPrice>,
    backends: HashMap<String, NameIndex<PartialPrice>>,
    aliases: HashMap<String, String>,
}

impl PriceTable {
    pub fn from_config(cfg: &PricingConfig) -> Result<PriceTable, String> {
        let mut t = PriceTable::default();
        if cfg.builtin {
            let builtin: Map<String, Value> =
                serde_json::from_str(BUILTIN_PRICES).map_err(|e| format!("built-in prices: {e}"))?;
            t.add_models(&builtin)?;
        }
        t.add_models(&cfg.models)?;
        for (backend, map) in &cfg.backends {
            let idx = t.backends.entry(backend.clone()).or_default();
            for (name, p) in parse_table(map).map_err(|e| format!("backends.{backend}.{e}"))? {
                idx.insert(&name, p);
            }
        }
        for (alias, target) in &cfg.aliases {
            if t.models.get(target).is_none() {
                return Err(format!("pricing: alias {alias} names {target}, which has no price"));
            }
            t.aliases.insert(alias.clone(), target.clone());
        }
        Ok(t)
    }

    /// A table from a model price JSON file, as-is (plus nothing else).
    pub fn from_json(json: &[u8]) -> Result<PriceTable, String> {
        let map: Map<String, Value> = serde_json::from_slice(json).map_err(|e| format!("pricing: {e}"))?;
        let mut t = PriceTable::default();
        t.add_models(&map)?;
        Ok(t)
    }

    fn add_models(&mut self, map: &Map<String, Value>) -> Result<(), String> {
        for (name, p) in parse_table(map)? {
            if let Some(full) = p.complete() {
                self.models.insert(&name, full);
            }
        }
        Ok(())
    }

    fn resolve<'a>(&'a self, model: &'a str) -> &'a str {
        self.aliases.get(model).map_or(model, String::as_str)
    }

    /// The base price of `model`: exact name, then without a provider prefix, then the same
    /// model without its date or `-latest` suffix.
    pub fn lookup(&self, model: &str) -> Option<ModelPrice> {
        self.models.get(self.resolve(model))
    }

    /// The price of `model` on `backend` (its overrides over the base price).
    pub fn lookup_on(&self, model: &str, backend: Option<&str>) -> Option<ModelPrice> {
        let model = self.resolve(model);
        let base = self.models.get(model);
        match backend.and_then(|b| self.backends.get(b)).and_then(|idx| idx.get(model)) {
            Some(o) => o.over(base),
            None => base,
        }
    }

    /// The dearest price `model` can have on any backend: what a reservation must assume before
    /// the backend is chosen.
    pub fn worst_case(&self, model: &str) -> Option<ModelPrice> {
        let model = self.resolve(model);
        let base = self.models.get(model);
        let mut worst = base;
        for idx in self.backends.values() {
            if let Some(p) = idx.get(model).and_then(|o| o.over(base)) {
                worst = Some(match worst {
                    Some(w) => w.max(p),
                    None => p,
                });
            }
        }
        worst
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::chat::{CompletionTokensDetails, PromptTokensDetails};

    /// Entries copied in the real table's format, including `sample_spec` (whose "prices" are
    /// strings in the real file's spirit: documentation, not data), nested objects, non-chat
    /// modes and provider-prefixed names.
    const SAMPLE: &str = r#"{
        "sample_spec": {
            "max_tokens": "LEGACY parameter. set to max_output_tokens if provider specifies it. IF not set to max_input_tokens, if provider specifies it.",
            "max_input_tokens": "max input tokens, if the provider specifies it. if not default to max_tokens",
            "max_output_tokens": "max output tokens, if the provider specifies it. if not default to max_tokens",
            "input_cost_per_token": 0.0000,
            "output_cost_per_token": 0.000,
            "litellm_provider": "one of https://docs.litellm.ai/docs/providers",
            "mode": "one of chat, embedding, completion, image_generation, audio_transcription, audio_speech",
            "supports_function_calling": true
        },
        "claude-3-5-haiku-20241022": {
            "cache_creation_input_token_cost": 1e-06,
            "cache_creation_input_token_cost_above_1hr": 6e-06,
            "cache_read_input_token_cost": 8e-08,
            "deprecation_date": "2025-10-01",
            "input_cost_per_token": 8e-07,
            "litellm_provider": "anthropic",
            "max_input_tokens": 200000,
            "max_output_tokens": 8192,
            "max_tokens": 8192,
            "mode": "chat",
            "output_cost_per_token": 4e-06,
            "search_context_cost_per_query": {
                "search_context_size_high": 0.01,
                "search_context_size_low": 0.01,
                "search_context_size_medium": 0.01
            },
            "supports_assistant_prefill": true,
            "supports_function_calling": true,
            "supports_pdf_input": true,
            "supported_regions": ["global", "us-west-2"]
        },
        "o1": {
            "cache_read_input_token_cost": 7.5e-06,
            "input_cost_per_token": 1.5e-05,
            "litellm_provider": "openai",
            "max_input_tokens": 200000,
            "max_output_tokens": 100000,
            "max_tokens": 100000,
            "mode": "chat",
            "output_cost_per_token": 6e-05,
            "supports_reasoning": true
        },
        "thinker": {
            "input_cost_per_token": 1e-06,
            "output_cost_per_token": 2e-06,
            "output_cost_per_reasoning_token": 3e-06,
            "mode": "chat"
        },
        "gemini/gemini-1.5-flash": {
            "input_cost_per_token": 7.5e-08,
            "input_cost_per_token_above_128k_tokens": 1.5e-07,
            "litellm_provider": "gemini",
            "max_output_tokens": 8192,
            "mode": "chat",
            "output_cost_per_token": 3e-07,
            "output_cost_per_token_above_128k_tokens": 6e-07
        },
        "dall-e-3": {
            "input_cost_per_pixel": 4.0054321e-08,
            "litellm_provider": "openai",
            "mode": "image_generation",
            "output_cost_per_pixel": 0.0
        },
        "whisper-1": {
            "input_cost_per_second": 0.0001,
            "litellm_provider": "openai",
            "mode": "audio_transcription"
        },
        "text-embedding-3-small": {
            "input_cost_per_token": 2e-08,
            "litellm_provider": "openai",
            "mode": "embedding",
            "output_cost_per_token": 0.0
        }
    }"#;

    fn usage(prompt: u64, completion: u64, cached: u64, creation: u64, reasoning: u64) -> Usage {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt.saturating_add(completion),
            prompt_tokens_details: Some(PromptTokensDetails { cached_tokens: cached, cache_creation_tokens: creation }),
            completion_tokens_details: Some(CompletionTokensDetails { reasoning_tokens: reasoning }),
        }
    }

    #[test]
    fn exact_decimal_conversion() {
        assert_eq!(usd_f64_to_units(1.5e-7, 15), Some(150_000_000));
        assert_eq!(usd_f64_to_units(7.5e-8, 15), Some(75_000_000));
        assert_eq!(usd_f64_to_units(1.875e-5, 15), Some(18_750_000_000));
        assert_eq!(usd_f64_to_units(3e-07, 15), Some(300_000_000));
        assert_eq!(usd_f64_to_units(4.0054321e-08, 15), Some(40_054_321));
        assert_eq!(usd_f64_to_units(0.0, 15), Some(0));
        assert_eq!(usd_f64_to_units(12.34, 6), Some(12_340_000));
        assert_eq!(usd_f64_to_units(0.1 + 0.2, 6), Some(300_000)); // 0.30000000000000004
        assert_eq!(usd_f64_to_units(1e-20, 15), Some(0));
        assert_eq!(usd_f64_to_units(1e300, 15), None);
        assert_eq!(usd_f64_to_units(-1.0, 6), None);
        assert_eq!(usd_f64_to_units(f64::INFINITY, 6), None);
    }

    #[test]
    fn header_amounts() {
        assert_eq!(parse_usd_micros("0.25"), Some(250_000));
        assert_eq!(parse_usd_micros(" 3 "), Some(3_000_000));
        assert_eq!(parse_usd_micros(".5"), Some(500_000));
        assert_eq!(parse_usd_micros("1."), Some(1_000_000));
        assert_eq!(parse_usd_micros("0.0000019"), Some(1), "rounded down");
        for bad in ["", ".", "-1", "1e-3", "abc", "1.2.3", "+1", "99999999999999999999999"] {
            assert_eq!(parse_usd_micros(bad), None, "{bad}");
        }
        assert_eq!(format_usd(1_234_567), "1.234567");
        assert_eq!(format_usd(2), "0.000002");
        assert_eq!(format_usd(0), "0.000000");
    }

    #[test]
    fn parses_the_real_table_format() {
        let t = PriceTable::from_json(SAMPLE.as_bytes()).unwrap();
        let h = t.lookup("claude-3-5-haiku-20241022").unwrap();
        assert_eq!(h.input, 800_000_000);
        assert_eq!(h.output, 4_000_000_000);
        assert_eq!(h.cache_creation, Some(1_000_000_000));
        assert_eq!(h.cache_read, Some(80_000_000));
        assert_eq!(h.max_output_tokens, Some(8192));
        assert!(t.lookup("sample_spec").is_none());
        assert!(t.lookup("dall-e-3").is_none(), "not priced per token");
        assert!(t.lookup("whisper-1").is_none());
        assert_eq!(t.lookup("text-embedding-3-small").unwrap().input, 20_000_000);
        // A malformed price is a configuration error, not a silent zero.
        assert!(PriceTable::from_json(br#"{"m":{"input_cost_per_token":"cheap"}}"#).is_err());
        assert!(PriceTable::from_json(br#"{"m":{"input_cost_per_token":-1}}"#).is_err());
        assert!(PriceTable::from_json(br#"{"m":3}"#).is_err());
    }

    #[test]
    fn lookup_by_prefix_and_date() {
        let t = PriceTable::from_json(SAMPLE.as_bytes()).unwrap();
        // Provider-prefixed entry, asked without prefix, and the reverse.
        assert_eq!(t.lookup("gemini-1.5-flash").unwrap().input, 75_000_000);
        assert_eq!(t.lookup("anthropic/claude-3-5-haiku-20241022").unwrap().input, 800_000_000);
        // Undated, -latest and vertex-style dates find the dated entry.
        assert!(t.lookup("claude-3-5-haiku-latest").is_some());
        assert!(t.lookup("claude-3-5-haiku").is_some());
        assert!(t.lookup("vertex_ai/claude-3-5-haiku@20241022").is_some());
        assert_eq!(t.lookup("o1-2024-12-17").unwrap().output, 60_000_000_000);
        assert!(t.lookup("claude-3-opus").is_none());
        assert_eq!(base_name("gpt-4o-2024-08-06"), "gpt-4o");
        assert_eq!(base_name("gpt-4o-mini"), "gpt-4o-mini");
        assert_eq!(base_name("claude-3-5-sonnet-20241022"), "claude-3-5-sonnet");
        assert_eq!(base_name("openrouter/anthropic/claude-3-opus-latest"), "claude-3-opus");
        assert_eq!(base_name("a-1"), "a-1");
        assert_eq!(base_name(""), "");
    }

    #[test]
    fn builtin_table_and_exact_entries_win() {
        let t = PriceTable::from_config(&PricingConfig::default()).unwrap();
        for m in ["gpt-4o-mini", "gpt-4o", "claude-3-5-haiku-latest", "claude-3-opus-20240229", "claude-3-5-sonnet", "gemini-1.5-flash"] {
            assert!(t.lookup(m).is_some(), "{m}");
        }
        // gpt-4o-2024-05-13 has its own (higher) price: the exact entry wins over gpt-4o.
        assert_eq!(t.lookup("gpt-4o-2024-05-13").unwrap().input, 5_000_000_000);
        assert_eq!(t.lookup("gpt-4o-2024-08-06").unwrap().input, 2_500_000_000);
        // An undated name resolves deterministically.
        assert_eq!(t.lookup("claude-3-5-sonnet").unwrap().output, 15_000_000_000);
    }

    #[test]
    fn a_configured_entry_replaces_the_builtin_one_for_every_lookup() {
        let cfg: PricingConfig = serde_json::from_str(
            r#"{"models":{"gpt-4o-mini":{"input_cost_per_token":1e-6,"output_cost_per_token":2e-6}}}"#,
        )
        .unwrap();
        let t = PriceTable::from_config(&cfg).unwrap();
        for name in ["gpt-4o-mini", "openai/gpt-4o-mini", "gpt-4o-mini-2030-01-01", "azure/gpt-4o-mini-2030-01-01"] {
            let p = t.lookup(name).unwrap();
            assert_eq!((p.input, p.output, p.cache_read), (1_000_000_000, 2_000_000_000, None), "{name}");
        }
        // A dated entry of the built-in table keeps its own price.
        assert_eq!(t.lookup("gpt-4o-mini-2024-07-18").unwrap().input, 150_000_000);
        assert_eq!(t.worst_case("gpt-4o-mini").unwrap().input, 1_000_000_000);
    }

    #[test]
    fn cost_with_cached_and_cache_creation_tokens() {
        let t = PriceTable::from_config(&PricingConfig::default()).unwrap();
        let haiku = t.lookup("claude-3-5-haiku-20241022").unwrap();
        // The Anthropic translation's usage: input 100, cache read 2000, cache write 300, output 40.
        let u = usage(2400, 40, 2000, 300, 0);
        // 100×0.8µ + 2000×0.08µ + 300×1µ + 40×4µ = 80 + 160 + 300 + 160 = 700 µ$
        assert_eq!(haiku.cost_femto(&u), 700 * FEMTO_PER_MICRO);
        // OpenAI: cached tokens at half price.
        let mini = t.lookup("gpt-4o-mini").unwrap();
        let u = usage(10_000, 1_000, 4_000, 0, 0);
        // 6000×0.15µ + 4000×0.075µ + 1000×0.6µ = 900 + 300 + 600 = 1800 µ$
        assert_eq!(femto_to_micros_ceil(mini.cost_femto(&u)), 1_800);
        // Rounding up: 3 tokens of gpt-4o-mini input cost 0.45 µ$ → 1 µ$.
        assert_eq!(femto_to_micros_ceil(mini.cost_femto(&usage(3, 0, 0, 0, 0))), 1);
        assert_eq!(femto_to_micros_ceil(0), 0);
    }

    #[test]
    fn reasoning_tokens_priced_apart_only_when_configured() {
        let t = PriceTable::from_json(SAMPLE.as_bytes()).unwrap();
        let u = usage(0, 100, 0, 0, 60);
        let thinker = t.lookup("thinker").unwrap();
        // 60×3µ + 40×2µ
        assert_eq!(thinker.cost_femto(&u), 260 * FEMTO_PER_MICRO);
        let o1 = t.lookup("o1").unwrap();
        assert_eq!(o1.cost_femto(&u), 100 * 60 * FEMTO_PER_MICRO);
        // Inconsistent usage (more reasoning than completion) is clamped.
        assert_eq!(thinker.cost_femto(&usage(0, 10, 0, 0, 60)), 30 * FEMTO_PER_MICRO);
        assert_eq!(thinker.cost_femto(&Usage::default()), 0);
        // Absurd counts from a broken provider saturate instead of overflowing.
        let huge = ModelPrice { input: u64::MAX, output: u64::MAX, ..Default::default() };
        assert_eq!(femto_to_micros_ceil(huge.cost_femto(&usage(u64::MAX, u64::MAX, 0, 0, 0))), u64::MAX);
    }

    #[test]
    fn backend_overrides_and_worst_case() {
        let cfg: PricingConfig = serde_json::from_str(
            r#"{"models":{"house":{"input_cost_per_token":1e-6,"output_cost_per_token":2e-6}},
                "backends":{"azure":{"gpt-4o-mini":{"input_cost_per_token":1.65e-07}},
                            "cheap":{"gpt-4o-mini":{"output_cost_per_token":1e-07}}},
                "aliases":{"fast":"gpt-4o-mini"}}"#,
        )
        .unwrap();
        let t = PriceTable::from_config(&cfg).unwrap();
        assert_eq!(t.lookup("house").unwrap().output, 2_000_000_000);
        let base = t.lookup("gpt-4o-mini").unwrap();
        let azure = t.lookup_on("gpt-4o-mini", Some("azure")).unwrap();
        assert_eq!((azure.input, azure.output), (165_000_000, base.output));
        assert_eq!(t.lookup_on("gpt-4o-mini", Some("nope")), Some(base));
        assert_eq!(t.lookup_on("gpt-4o-mini", None), Some(base));
        let w = t.worst_case("gpt-4o-mini").unwrap();
        assert_eq!((w.input, w.output), (165_000_000, base.output));
        assert_eq!(t.lookup("fast"), Some(base));
        // Worst case prices every prompt token as a cache write when that is dearer.
        let haiku = t.lookup("claude-3-5-haiku-latest").unwrap();
        assert_eq!(haiku.worst_case_femto(10, 10), 10 * 1_000_000_000 + 10 * 4_000_000_000);
        // An alias to an unknown model is a configuration error.
        let bad: PricingConfig = serde_json::from_str(r#"{"aliases":{"x":"nope"}}"#).unwrap();
        assert!(PriceTable::from_config(&bad).is_err());
        assert!(serde_json::from_str::<PricingConfig>(r#"{"typo":1}"#).is_err());
    }
}
