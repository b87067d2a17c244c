//! Plugin configuration: the JSON in each Envoy wasm filter's `configuration`. One module serves
//! two roles, chosen by `"role"`: the gateway (downstream, before the router) and the backend
//! (upstream, once per attempt, inside a route's cluster).

use std::collections::HashMap;

use serde::Deserialize;

use crate::api::ApiError;
use crate::policy::routing::ModelRouter;

pub const DEFAULT_MAX_REQUEST_BODY_BYTES: usize = 8 * 1024 * 1024;
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// Header the gateway sets so that an Envoy route can select the model's cluster.
pub const ROUTE_HEADER: &str = "x-switchyard-route";
/// Header carrying the resolved (canonical) model name from the gateway to the backend filter.
pub const MODEL_HEADER: &str = "x-switchyard-model";
/// Header carrying the operation (`chat`, `embeddings`) from the gateway to the backend filter.
pub const OP_HEADER: &str = "x-switchyard-op";
/// Request headers the gateway sets for each capability a request needs (`vision`, `tools`,
/// `json_schema`, `reasoning`: value `true`; `context`: the context class, e.g. `16k`); Envoy's
/// header_to_metadata filter turns them into `envoy.lb` metadata so that a cluster's subset load
/// balancer only picks capable endpoints (`crate::policy::capabilities::lb_metadata`).
pub const NEEDS_HEADER_PREFIX: &str = "x-switchyard-needs-";
/// Every header with this prefix is internal: stripped from clients and from providers.
pub const INTERNAL_HEADER_PREFIX: &str = "x-switchyard-";
/// Endpoint metadata namespace read by the backend filter.
pub const METADATA_NAMESPACE: &str = "switchyard";

#[derive(Debug, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case", deny_unknown_fields)]
pub enum PluginConfig {
    Gateway(GatewayConfig),
    Backend(BackendsConfig),
    /// A pass-through filter that does nothing: the floor any wasm filter pays (`scripts/bench`).
    Noop,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Requests with a larger body are answered 413 before they are buffered further.
    #[serde(default = "default_max_body")]
    pub max_request_body_bytes: usize,
    /// Models the gateway serves, in order; the first match wins.
    pub models: Vec<ModelEntry>,
    /// Tell clients what served them (`x-switchyard-backend`, `x-switchyard-model`, `x-switchyard-attempts`).
    #[serde(default = "default_true")]
    pub expose_served_by: bool,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Virtual keys, teams, rate limits, budgets and prices (`crate::policy::Policy::new`).
    /// Absent: no authentication.
    #[serde(default)]
    pub auth: Option<crate::policy::PolicyConfig>,
    /// Limits on what a client controls in a body (counts, string lengths, JSON values).
    #[serde(default)]
    pub limits: crate::api::limits::RequestLimits,
    /// Rules on the request and meta-models (`crate::policy::rules`).
    #[serde(default)]
    pub routing: crate::policy::rules::RoutingConfig,
    /// What each model can serve, by model name (`crate::policy::capabilities`); defaults from the
    /// price table's model fields (the built-in table's too). Absent: no capability checks; `{}`:
    /// checks with the tables' defaults only.
    #[serde(default)]
    pub capabilities: Option<HashMap<String, crate::policy::capabilities::Capabilities>>,
    /// PII and secret detectors on requests (and answers) (`crate::policy::guardrails`). Absent: off.
    #[serde(default)]
    pub guardrails: Option<crate::policy::guardrails::GuardrailsConfig>,
    /// The exact answer cache (`crate::cache`). Absent: off.
    #[serde(default)]
    pub cache: Option<crate::cache::CacheConfig>,
    /// Quality sampling to an evaluation sink (`crate::cache::sample`). Absent: off.
    #[serde(default)]
    pub quality_sampling: Option<crate::cache::sample::SamplingConfig>,
}

/// Telemetry options. Per-key and per-team labels multiply the number of series: off by default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    #[serde(default)]
    pub key_labels: bool,
    /// Emit the Envoy stats at all (each request costs about a dozen hostcalls).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Publish the access-log fields as filter state (about twenty hostcalls per request; turn off
    /// when no access log or trace reads `wasm.switchyard.*`).
    #[serde(default = "default_true")]
    pub access_log_fields: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { key_labels: false, enabled: true, access_log_fields: true }
    }
}

fn default_true() -> bool {
    true
}

fn default_max_body() -> usize {
    DEFAULT_MAX_REQUEST_BODY_BYTES
}

/// A model clients may ask for. `name` may hold `*` wildcards (`"gpt-4o*"`); such entries route the
/// requested name as-is and are not listed by `/v1/models`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub name: String,
    /// Other names that mean this model (`"fast"`, `"gpt-4o-mini-latest"`).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Envoy route (value of `x-switchyard-route`); defaults to `name`.
    #[serde(default)]
    pub route: Option<String>,
    /// What `/v1/models` reports as `owned_by`.
    #[serde(default)]
    pub owned_by: Option<String>,
    /// First-token deadline of an attempt: a candidate that has produced no token (stream) or no
    /// answer (non-stream) by then is abandoned and the next one is tried, before any byte reached
    /// the client (`crate::policy::deadline`).
    #[serde(default)]
    pub first_token_timeout_ms: Option<u32>,
    /// On the deadline, start the next candidate without cancelling the first; the first token wins.
    #[serde(default)]
    pub hedge: bool,
    /// Model versions must be pinned on this route: `switchyard check` warns (`warn`) about, or
    /// rejects (`forbid`) floating names (`*-latest`, undated) among its candidates; with `forbid`
    /// the backend filter also refuses to send one.
    #[serde(default)]
    pub pin_versions: Option<PinVersions>,
    /// A canary model taking a share of this route's traffic, with gates and automatic rollback
    /// (`crate::policy::canary`).
    #[serde(default)]
    pub canary: Option<crate::policy::canary::CanaryConfig>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PinVersions {
    Warn,
    Forbid,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendsConfig {
    pub backends: HashMap<String, Backend>,
    /// Largest non-stream answer, in bytes, the backend filter holds to check or translate; a
    /// larger one ends the attempt with a 502 (`response_too_large`), which the route's retry
    /// policy retries on the next candidate. Streams are not held (each event has its own bound).
    #[serde(default = "default_max_response_body_bytes")]
    pub max_response_body_bytes: usize,
}

pub const DEFAULT_MAX_RESPONSE_BODY_BYTES: usize = 64 * 1024 * 1024;

fn default_max_response_body_bytes() -> usize {
    DEFAULT_MAX_RESPONSE_BODY_BYTES
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Schema {
    /// OpenAI Chat Completions and every compatible API.
    Openai,
    /// Anthropic Messages API.
    Anthropic,
    /// AWS Bedrock Runtime: Converse (chat) and InvokeModel (embeddings), SigV4 or Bedrock API keys.
    Bedrock,
    /// Google Gemini API (`generateContent`); with `vertex`, the same schema on Vertex AI.
    Gemini,
    /// Azure OpenAI: OpenAI's bodies on `/openai/deployments/{model}/…?api-version=…`, `api-key` auth.
    AzureOpenai,
    /// Cohere v2 (`/v2/chat`, `/v2/embed`).
    Cohere,
    /// Ollama's native API (`/api/chat`, `/api/embed`, NDJSON streams).
    Ollama,
}

impl Schema {
    pub fn as_str(self) -> &'static str {
        match self {
            Schema::Openai => "openai",
            Schema::Anthropic => "anthropic",
            Schema::Bedrock => "bedrock",
            Schema::Gemini => "gemini",
            Schema::AzureOpenai => "azure_openai",
            Schema::Cohere => "cohere",
            Schema::Ollama => "ollama",
        }
    }

    pub fn default_base_path(self) -> &'static str {
        match self {
            Schema::Openai | Schema::Anthropic => "/v1",
            Schema::Bedrock => "",
            Schema::Gemini => "/v1beta",
            Schema::AzureOpenai | Schema::Cohere | Schema::Ollama => "",
        }
    }
}

/// One provider endpoint as the backend filter sees it; endpoints name it in their metadata
/// (`filter_metadata.switchyard.backend`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub schema: Schema,
    /// Path prefix before the schema's own path (`/v1` for `api.openai.com`).
    #[serde(default)]
    pub base_path: Option<String>,
    /// Model name sent to the provider. Endpoint metadata `model` overrides it; without either the
    /// gateway's resolved model name is sent.
    #[serde(default)]
    pub model: Option<String>,
    /// `:authority` sent upstream (the provider's host name), when Envoy's cluster does not set it.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub credential: Option<Credential>,
    /// Anthropic: `anthropic-version` header.
    #[serde(default)]
    pub anthropic_version: Option<String>,
    /// Anthropic: `max_tokens` when the client sets none (Anthropic requires it).
    #[serde(default)]
    pub default_max_tokens: Option<u32>,
    /// Extra headers sent on every request to this backend.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Bedrock: where the AWS SigV4 credentials and region come from. Optional: without it a
    /// Bedrock backend still reads the standard `AWS_*` variables and takes the region from `host`.
    #[serde(default)]
    pub aws: Option<AwsConfig>,
    /// Gemini: serve through Vertex AI (`/v1/projects/{project}/locations/{location}/publishers/google/models/…`,
    /// the credential as `authorization: Bearer …`); needs `host` (`{location}-aiplatform.googleapis.com`).
    #[serde(default)]
    pub vertex: Option<VertexConfig>,
    /// OpenAI schema: a known OpenAI-compatible provider (`mistral`, `deepseek`, `qwen`, `groq`, `xai`,
    /// `together`, `fireworks`, `openrouter`, `vllm`, `ollama`) supplying `host`, `base_path` and the
    /// credential variable when those are unset, and the provider's request/answer adjustments.
    #[serde(default)]
    pub preset: Option<crate::providers::presets::Preset>,
    /// Azure OpenAI: the `api-version` query parameter (default `2024-10-21`).
    #[serde(default)]
    pub api_version: Option<String>,
}

/// The Vertex AI project and location of a Gemini backend.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VertexConfig {
    pub project: String,
    /// A region (`us-central1`) or `global`.
    pub location: String,
}

impl VertexConfig {
    /// Vertex AI's endpoint for the location: `{location}-aiplatform.googleapis.com`, or
    /// `aiplatform.googleapis.com` for `global`.
    pub fn endpoint_host(&self) -> String {
        if self.location == "global" {
            "aiplatform.googleapis.com".to_string()
        } else {
            format!("{}-aiplatform.googleapis.com", self.location)
        }
    }
}

/// AWS signing settings of a Bedrock backend. The keys are read once, at configuration time, from
/// environment variables passed into the VM (`vm_config.environment_variables.host_env_keys`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// Signing region; defaults to the one in `host` (`bedrock-runtime.<region>.amazonaws.com`).
    #[serde(default)]
    pub region: Option<String>,
    /// Who signs: the filter (its own SigV4 with keys from the environment, the default) or Envoy
    /// (`envoy.filters.http.aws_request_signing`, an upstream filter after this one, with Envoy's
    /// credential providers): then the filter reads no AWS keys and sends no credential.
    #[serde(default)]
    pub signer: AwsSigner,
    #[serde(default = "default_access_key_id_env")]
    pub access_key_id_env: String,
    #[serde(default = "default_secret_access_key_env")]
    pub secret_access_key_env: String,
    #[serde(default = "default_session_token_env")]
    pub session_token_env: String,
}

fn default_access_key_id_env() -> String {
    "AWS_ACCESS_KEY_ID".to_string()
}

fn default_secret_access_key_env() -> String {
    "AWS_SECRET_ACCESS_KEY".to_string()
}

fn default_session_token_env() -> String {
    "AWS_SESSION_TOKEN".to_string()
}

/// Who signs a Bedrock backend's requests.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AwsSigner {
    /// The backend filter, with keys read once from the environment.
    #[default]
    Filter,
    /// Envoy's AWS request signing filter, after the backend filter (rendered by `switchyard render`).
    Envoy,
}

impl Default for AwsConfig {
    fn default() -> Self {
        AwsConfig {
            region: None,
            signer: AwsSigner::Filter,
            access_key_id_env: default_access_key_id_env(),
            secret_access_key_env: default_secret_access_key_env(),
            session_token_env: default_session_token_env(),
        }
    }
}

/// AWS credentials for SigV4, read once at configuration time. `Debug` never shows the secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    pub region: String,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &"<redacted>")
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .field("region", &self.region)
            .finish()
    }
}

/// Where the provider credential comes from: an environment variable passed into the VM by
/// `vm_config.environment_variables.host_env_keys`, so keys never sit in envoy.yaml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub env: String,
    /// Header to carry it; by schema `authorization` (OpenAI) or `x-api-key` (Anthropic).
    #[serde(default)]
    pub header: Option<String>,
    /// Prefix before the secret; `"Bearer "` for `authorization`, nothing otherwise.
    #[serde(default)]
    pub prefix: Option<String>,
}

impl Backend {
    pub fn credential_header(&self) -> &str {
        match self.credential.as_ref().and_then(|c| c.header.as_deref()) {
            Some(h) => h,
            None => match self.schema {
                Schema::Openai => "authorization",
                Schema::Anthropic => "x-api-key",
                // A Bedrock API key, sent as a bearer token when no AWS keys are configured.
                Schema::Bedrock => "authorization",
                // Vertex AI takes an OAuth access token; the Gemini API an API key.
                Schema::Gemini if self.vertex.is_some() => "authorization",
                Schema::Gemini => "x-goog-api-key",
                Schema::AzureOpenai => "api-key",
                // Cohere always; Ollama only behind ollama.com or an authenticating proxy.
                Schema::Cohere | Schema::Ollama => "authorization",
            },
        }
    }

    pub fn credential_prefix(&self) -> &str {
        match self.credential.as_ref().and_then(|c| c.prefix.as_deref()) {
            Some(p) => p,
            None if self.credential_header().eq_ignore_ascii_case("authorization") => "Bearer ",
            None => "",
        }
    }

    /// Path prefix before the schema's own paths, without a trailing slash.
    pub fn base_path(&self) -> &str {
        let default = if self.vertex.is_some() { "/v1" } else { self.schema.default_base_path() };
        self.base_path.as_deref().unwrap_or(default).trim_end_matches('/')
    }

    /// The AWS signing region: `aws.region`, else the one in a `bedrock-runtime[-fips].<region>.amazonaws.com[.cn]` host.
    pub fn aws_region(&self) -> Option<String> {
        if let Some(r) = self.aws.as_ref().and_then(|a| a.region.as_deref()).filter(|r| !r.is_empty()) {
            return Some(r.to_string());
        }
        let host = self.host.as_deref()?;
        let host = host.split(':').next().unwrap_or(host);
        let mut labels = host.split('.');
        let service = labels.next()?;
        let region = labels.next()?;
        let is_bedrock = service == "bedrock-runtime" || service == "bedrock-runtime-fips";
        if is_bedrock && !region.is_empty() && labels.next() == Some("amazonaws") {
            Some(region.to_string())
        } else {
            None
        }
    }

    /// Envoy's AWS request signing filter signs this backend's requests (`aws.signer: envoy`).
    pub fn envoy_signs(&self) -> bool {
        self.schema == Schema::Bedrock && self.aws.as_ref().is_some_and(|a| a.signer == AwsSigner::Envoy)
    }

    /// Bedrock's AWS credentials from the environment (`getenv` is `std::env::var` in the filter,
    /// read once at configuration time). `Ok(None)`: not Bedrock, or no AWS keys set (requests then
    /// go with the `credential` as a bearer token, or unauthenticated). `Err`: half-configured keys
    /// or no region, which the caller reports.
    pub fn load_aws_credentials(&self, getenv: impl Fn(&str) -> Option<String>) -> Result<Option<AwsCredentials>, String> {
        if self.schema != Schema::Bedrock {
            return Ok(None);
        }
        let defaults = AwsConfig::default();
        let cfg = self.aws.as_ref().unwrap_or(&defaults);
        if cfg.signer == AwsSigner::Envoy {
            // Envoy signs after this filter: no keys here, whatever the environment holds.
            return Ok(None);
        }
        let get = |name: &str| getenv(name).filter(|v| !v.trim().is_empty());
        let (id, secret) = match (get(&cfg.access_key_id_env), get(&cfg.secret_access_key_env)) {
            (None, None) => return Ok(None),
            (Some(id), Some(secret)) => (id, secret),
            (Some(_), None) => {
                return Err(format!("{} is set but {} is not", cfg.access_key_id_env, cfg.secret_access_key_env))
            }
            (None, Some(_)) => {
                return Err(format!("{} is set but {} is not", cfg.secret_access_key_env, cfg.access_key_id_env))
            }
        };
        let Some(region) = self.aws_region() else {
            return Err("AWS keys are set but no region is known: set aws.region or a bedrock-runtime.<region>.amazonaws.com host".into());
        };
        Ok(Some(AwsCredentials {
            access_key_id: id.trim().to_string(),
            secret_access_key: secret.trim().to_string(),
            session_token: get(&cfg.session_token_env).map(|t| t.trim().to_string()),
            region,
        }))
    }

    /// Schema-specific checks of a backend entry.
    fn validate(&self) -> Result<(), String> {
        if self.preset.is_some() && self.schema != Schema::Openai {
            return Err("`preset` only applies to the openai schema".into());
        }
        if self.api_version.is_some() && self.schema != Schema::AzureOpenai {
            return Err("`api_version` only applies to the azure_openai schema".into());
        }
        if self.aws.is_some() && self.schema != Schema::Bedrock {
            return Err("`aws` only applies to the bedrock schema".into());
        }
        if let Some(v) = &self.vertex {
            if self.schema != Schema::Gemini {
                return Err("`vertex` only applies to the gemini schema".into());
            }
            let ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok(&v.project) || !ok(&v.location) {
                return Err("vertex.project and vertex.location must be non-empty and use only letters, digits, '-' and '_'".into());
            }
            if self.host.as_deref().is_none_or(str::is_empty) {
                return Err(format!("a vertex backend needs `host` (the regional endpoint, e.g. {})", v.endpoint_host()));
            }
        }
        if self.schema == Schema::Bedrock {
            if self.host.as_deref().is_none_or(str::is_empty) {
                return Err("a bedrock backend needs `host` (e.g. bedrock-runtime.us-east-1.amazonaws.com): requests are signed for it".into());
            }
            if self.aws.is_some() && self.aws_region().is_none() {
                return Err("aws.region is not set and the host does not name a region".into());
            }
            if self.envoy_signs() && self.credential.is_some() {
                return Err("with aws.signer: envoy, Envoy signs every request (its `authorization`): remove `credential` (a Bedrock API key), or sign in the filter".into());
            }
        }
        Ok(())
    }
}

/// The gateway's configuration, validated and indexed for per-request use.
pub struct Gateway {
    pub max_request_body_bytes: usize,
    pub limits: crate::api::limits::RequestLimits,
    pub expose_served_by: bool,
    pub label_options: crate::telemetry::LabelOptions,
    pub emit_metrics: bool,
    pub publish_log_fields: bool,
    /// Virtual keys, limits and budgets; `None` when the gateway is open.
    pub policy: Option<crate::policy::Policy>,
    pub router: ModelRouter,
    /// Routing rules and meta-models; `None` when none are configured.
    pub routing: Option<crate::policy::rules::RoutingTable>,
    /// Models whose latency `fastest` measures (canonical names of its candidates).
    pub latency_tracked: Vec<String>,
    /// Prices for routing policies (`cheapest`) when the gateway has no `auth` (the built-in table).
    pub routing_prices: Option<crate::policy::pricing::PriceTable>,
    /// Model capabilities, shared with every backend attempt of a request; `None`: no checks.
    pub capabilities: Option<std::rc::Rc<crate::policy::capabilities::CapabilityTable>>,
    /// Guardrails; `None` when not configured (nothing is scanned).
    pub guardrails: Option<crate::policy::guardrails::Guardrails>,
    /// The exact answer cache; `None`: off.
    pub cache: Option<crate::cache::Cache>,
    /// Quality sampling; `None`: off.
    pub sampling: Option<crate::cache::sample::SamplingConfig>,
}

impl PluginConfig {
    pub fn parse(bytes: &[u8]) -> Result<PluginConfig, String> {
        let mut cfg: PluginConfig = serde_json::from_slice(bytes).map_err(|e| format!("invalid plugin configuration: {e}"))?;
        if let PluginConfig::Backend(b) = &mut cfg {
            if b.max_response_body_bytes == 0 {
                return Err("max_response_body_bytes must be positive".into());
            }
            for (name, backend) in &mut b.backends {
                backend.validate().map_err(|e| format!("backend {name}: {e}"))?;
                if let Some(bp) = &backend.base_path {
                    // Empty is allowed: several schemas' paths start at the host's root.
                    if !bp.is_empty() && !bp.starts_with('/') {
                        return Err(format!("backend {name}: base_path must start with '/'"));
                    }
                }
                crate::providers::presets::apply_defaults(backend);
            }
        }
        Ok(cfg)
    }
}

impl Gateway {
    pub fn new(cfg: GatewayConfig) -> Result<Gateway, String> {
        if cfg.max_request_body_bytes == 0 {
            return Err("max_request_body_bytes must be positive".into());
        }
        cfg.limits.validate()?;
        let cache = cfg.cache.map(crate::cache::Cache::new).transpose()?;
        if let Some(s) = &cfg.quality_sampling {
            s.validate()?;
        }
        let builtin_prices = match &cfg.auth {
            Some(a) if !a.pricing.builtin => None,
            _ if cfg.capabilities.is_some() => Some(crate::policy::capabilities::CapabilityTable::builtin_entries()),
            _ => None,
        };
        let price_tables: Vec<&serde_json::Map<String, serde_json::Value>> =
            builtin_prices.iter().chain(cfg.auth.as_ref().map(|a| &a.pricing.models)).collect();
        let capabilities = crate::policy::capabilities::CapabilityTable::new(cfg.capabilities, &price_tables)?.map(std::rc::Rc::new);
        let policy = match cfg.auth {
            Some(p) => Some(crate::policy::Policy::new(p).map_err(|e| format!("auth: {e}"))?),
            None => None,
        };
        let guardrails = match cfg.guardrails {
            Some(g) => Some(crate::policy::guardrails::Guardrails::new(g)?),
            None => None,
        };
        Ok(Gateway {
            guardrails,
            max_request_body_bytes: cfg.max_request_body_bytes,
            limits: cfg.limits,
            expose_served_by: cfg.expose_served_by,
            label_options: crate::telemetry::LabelOptions { key_labels: cfg.metrics.key_labels },
            emit_metrics: cfg.metrics.enabled,
            publish_log_fields: cfg.metrics.access_log_fields,
            routing: None,
            routing_prices: None,
            latency_tracked: Vec::new(),
            capabilities,
            cache,
            sampling: cfg.quality_sampling,
            router: ModelRouter::new(cfg.models)?,
            policy,
        })
        .and_then(|mut g| {
            g.routing = crate::policy::rules::RoutingTable::new(cfg.routing, |m| g.router.resolve(m).is_some())?;
            if let Some(rt) = &g.routing {
                for c in rt.latency_candidates() {
                    let canonical = g.router.resolve(c).map_or(c, |r| r.model).to_string();
                    if !g.latency_tracked.contains(&canonical) {
                        g.latency_tracked.push(canonical);
                    }
                }
            }
            if g.policy.is_none() && g.routing.as_ref().is_some_and(|r| r.uses_cost()) {
                let builtin = crate::policy::pricing::PricingConfig::default();
                g.routing_prices = Some(crate::policy::pricing::PriceTable::from_config(&builtin)?);
            }
            Ok(g)
        })
    }

    pub fn check_body_size(&self, size: usize) -> Result<(), ApiError> {
        if size > self.max_request_body_bytes {
            Err(ApiError::body_too_large(self.max_request_body_bytes))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bedrock(json: &str) -> Backend {
        let cfg = format!(r#"{{"role":"backend","backends":{{"b":{json}}}}}"#);
        match PluginConfig::parse(cfg.as_bytes()) {
            Ok(PluginConfig::Backend(mut b)) => b.backends.remove("b").expect("backend b"),
            other => panic!("{json}: {other:?}"),
        }
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn bedrock_backend_defaults_and_credentials() {
        let b = bedrock(r#"{"schema":"bedrock","host":"bedrock-runtime.eu-west-3.amazonaws.com"}"#);
        assert_eq!(b.base_path(), "");
        assert_eq!(b.credential_header(), "authorization");
        assert_eq!(b.credential_prefix(), "Bearer ");
        assert_eq!(b.aws_region().as_deref(), Some("eu-west-3"));
        // Standard variable names by default; the session token is optional.
        let c = b
            .load_aws_credentials(env(&[("AWS_ACCESS_KEY_ID", "AKID"), ("AWS_SECRET_ACCESS_KEY", " secret\n")]))
            .unwrap()
            .unwrap();
        assert_eq!((c.access_key_id.as_str(), c.secret_access_key.as_str(), c.region.as_str()), ("AKID", "secret", "eu-west-3"));
        assert_eq!(c.session_token, None);
        let c = b
            .load_aws_credentials(env(&[("AWS_ACCESS_KEY_ID", "AKIDQQ"), ("AWS_SECRET_ACCESS_KEY", "zzsecretzz"), ("AWS_SESSION_TOKEN", "zztokenzz")]))
            .unwrap()
            .unwrap();
        assert_eq!(c.session_token.as_deref(), Some("zztokenzz"));
        // Debug never shows the secrets.
        let shown = format!("{c:?}");
        assert!(!shown.contains("AKIDQQ") && !shown.contains("zzsecretzz") && !shown.contains("zztokenzz"), "{shown}");
        assert!(shown.contains("eu-west-3"), "{shown}");
        // No keys: no SigV4 (a bearer `credential` may still be used).
        assert_eq!(b.load_aws_credentials(env(&[("AWS_ACCESS_KEY_ID", "")])), Ok(None));
        // Half a key pair is an error the filter reports.
        assert!(b.load_aws_credentials(env(&[("AWS_ACCESS_KEY_ID", "AKID")])).unwrap_err().contains("AWS_SECRET_ACCESS_KEY"));
        assert!(b.load_aws_credentials(env(&[("AWS_SECRET_ACCESS_KEY", "s")])).unwrap_err().contains("AWS_ACCESS_KEY_ID"));
    }

    #[test]
    fn bedrock_signed_by_envoy_reads_no_keys_and_sends_no_credential() {
        let b = bedrock(r#"{"schema":"bedrock","host":"bedrock-runtime.us-east-1.amazonaws.com","aws":{"signer":"envoy"}}"#);
        assert!(b.envoy_signs());
        // Keys in the environment (another backend's) are not this backend's: Envoy signs after the filter.
        assert_eq!(b.load_aws_credentials(env(&[("AWS_ACCESS_KEY_ID", "AKID"), ("AWS_SECRET_ACCESS_KEY", "s")])), Ok(None));
        let own = bedrock(r#"{"schema":"bedrock","host":"bedrock-runtime.us-east-1.amazonaws.com","aws":{"signer":"filter"}}"#);
        assert!(!own.envoy_signs());
        assert!(own.load_aws_credentials(env(&[("AWS_ACCESS_KEY_ID", "AKID"), ("AWS_SECRET_ACCESS_KEY", "s")])).unwrap().is_some());
        let both = r#"{"role":"backend","backends":{"b":{"schema":"bedrock","host":"bedrock-runtime.us-east-1.amazonaws.com","credential":{"env":"AWS_BEARER_TOKEN_BEDROCK"},"aws":{"signer":"envoy"}}}}"#;
        let e = PluginConfig::parse(both.as_bytes()).err().expect("a bearer credential with Envoy signing is refused");
        assert!(e.contains("remove `credential`"), "{e}");
        assert!(PluginConfig::parse(br#"{"role":"backend","backends":{"b":{"schema":"bedrock","host":"h","aws":{"signer":"sdk"}}}}"#).is_err());
    }

    #[test]
    fn bedrock_aws_section_overrides_names_and_region() {
        let b = bedrock(
            r#"{"schema":"bedrock","host":"bedrock.internal:8443","credential":{"env":"AWS_BEARER_TOKEN_BEDROCK"},
                "aws":{"region":"ap-south-1","access_key_id_env":"K","secret_access_key_env":"S","session_token_env":"T"}}"#,
        );
        let c = b.load_aws_credentials(env(&[("K", "id"), ("S", "sec"), ("T", "tok"), ("AWS_ACCESS_KEY_ID", "other")])).unwrap().unwrap();
        assert_eq!(c, AwsCredentials { access_key_id: "id".into(), secret_access_key: "sec".into(), session_token: Some("tok".into()), region: "ap-south-1".into() });
        // Other schemas never load AWS keys.
        let o = bedrock(r#"{"schema":"openai"}"#);
        assert_eq!(o.load_aws_credentials(env(&[("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")])), Ok(None));
        // A host that names no region and no aws.region: keys cannot be used.
        let m = bedrock(r#"{"schema":"bedrock","host":"127.0.0.1:18003"}"#);
        assert_eq!(m.aws_region(), None);
        assert!(m.load_aws_credentials(env(&[("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")])).is_err());
        assert_eq!(m.load_aws_credentials(env(&[])), Ok(None));
        assert_eq!(bedrock(r#"{"schema":"bedrock","host":"bedrock-runtime-fips.us-gov-west-1.amazonaws.com"}"#).aws_region().as_deref(), Some("us-gov-west-1"));
        assert_eq!(bedrock(r#"{"schema":"bedrock","host":"bedrock-runtime.cn-north-1.amazonaws.com.cn"}"#).aws_region().as_deref(), Some("cn-north-1"));
    }

    #[test]
    fn bedrock_backend_mistakes_are_rejected() {
        for bad in [
            r#"{"schema":"bedrock"}"#,
            r#"{"schema":"bedrock","host":""}"#,
            r#"{"schema":"bedrock","host":"127.0.0.1:1","aws":{}}"#,
            r#"{"schema":"openai","aws":{"region":"us-east-1"}}"#,
            r#"{"schema":"bedrock","host":"h","aws":{"region":"x","typo":1}}"#,
        ] {
            let cfg = format!(r#"{{"role":"backend","backends":{{"b":{bad}}}}}"#);
            assert!(PluginConfig::parse(cfg.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_both_roles() {
        let g = PluginConfig::parse(br#"{"role":"gateway","models":[{"name":"gpt-4o-mini","aliases":["fast"]}]}"#).unwrap();
        assert!(matches!(g, PluginConfig::Gateway(ref c) if c.max_request_body_bytes == DEFAULT_MAX_REQUEST_BODY_BYTES));
        let b = PluginConfig::parse(
            br#"{"role":"backend","backends":{"a":{"schema":"anthropic","credential":{"env":"ANTHROPIC_API_KEY"}},"o":{"schema":"openai","base_path":"/openai/v1"}}}"#,
        )
        .unwrap();
        let PluginConfig::Backend(b) = b else { panic!("backend expected") };
        assert_eq!(b.backends["a"].credential_header(), "x-api-key");
        assert_eq!(b.backends["a"].credential_prefix(), "");
        assert_eq!(b.backends["a"].base_path(), "/v1");
        assert_eq!(b.backends["o"].credential_header(), "authorization");
        assert_eq!(b.backends["o"].credential_prefix(), "Bearer ");
        assert_eq!(b.backends["o"].base_path(), "/openai/v1");
        assert_eq!(b.max_response_body_bytes, DEFAULT_MAX_RESPONSE_BODY_BYTES);
        let b = PluginConfig::parse(br#"{"role":"backend","backends":{},"max_response_body_bytes":1024}"#).unwrap();
        assert!(matches!(b, PluginConfig::Backend(ref c) if c.max_response_body_bytes == 1024));
        assert!(PluginConfig::parse(br#"{"role":"backend","backends":{},"max_response_body_bytes":0}"#).is_err());
    }

    #[test]
    fn parses_noop_role() {
        assert!(matches!(PluginConfig::parse(br#"{"role":"noop"}"#), Ok(PluginConfig::Noop)));
    }

    #[test]
    fn rejects_mistakes_loudly() {
        assert!(PluginConfig::parse(b"{}").is_err());
        assert!(PluginConfig::parse(br#"{"role":"gateway","models":[],"typo":1}"#).is_err());
        assert!(PluginConfig::parse(br#"{"role":"backend","backends":{"x":{"schema":"nope"}}}"#).is_err());
        assert!(PluginConfig::parse(br#"{"role":"backend","backends":{"x":{"schema":"openai","base_path":"v1"}}}"#).is_err());
    }
}
