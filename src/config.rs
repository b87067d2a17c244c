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
}

/// Metric options. Per-key and per-team labels multiply the number of series: off by default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    #[serde(default)]
    pub key_labels: bool,
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendsConfig {
    pub backends: HashMap<String, Backend>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Schema {
    /// OpenAI Chat Completions and every compatible API.
    Openai,
    /// Anthropic Messages API.
    Anthropic,
}

impl Schema {
    pub fn as_str(self) -> &'static str {
        match self {
            Schema::Openai => "openai",
            Schema::Anthropic => "anthropic",
        }
    }

    pub fn default_base_path(self) -> &'static str {
        match self {
            Schema::Openai | Schema::Anthropic => "/v1",
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
        self.base_path.as_deref().unwrap_or_else(|| self.schema.default_base_path()).trim_end_matches('/')
    }
}

/// The gateway's configuration, validated and indexed for per-request use.
pub struct Gateway {
    pub max_request_body_bytes: usize,
    pub expose_served_by: bool,
    pub label_options: crate::telemetry::LabelOptions,
    pub router: ModelRouter,
}

impl PluginConfig {
    pub fn parse(bytes: &[u8]) -> Result<PluginConfig, String> {
        let cfg: PluginConfig = serde_json::from_slice(bytes).map_err(|e| format!("invalid plugin configuration: {e}"))?;
        if let PluginConfig::Backend(b) = &cfg {
            for (name, backend) in &b.backends {
                if let Some(bp) = &backend.base_path {
                    if !bp.starts_with('/') {
                        return Err(format!("backend {name}: base_path must start with '/'"));
                    }
                }
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
        Ok(Gateway { max_request_body_bytes: cfg.max_request_body_bytes, expose_served_by: cfg.expose_served_by,
            label_options: crate::telemetry::LabelOptions { key_labels: cfg.metrics.key_labels },
            router: ModelRouter::new(cfg.models)? })
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
