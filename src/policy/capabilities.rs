//! What each model can serve (tools, images, JSON schema output, context window, reasoning) and
//! whether a request needs something a candidate lacks.
//!
//! Configured in the gateway configuration's `capabilities`, keyed by model name (the name the
//! gateway routes, or the name an endpoint sends upstream: both are looked up), filled by default
//! from the price table's entries where they carry the model table's fields
//! (`supports_function_calling`, `supports_vision`, `supports_response_schema`,
//! `supports_reasoning`, `max_input_tokens`). A model absent from both is assumed able to serve
//! anything (the provider answers for itself). The backend filter checks every attempt, so an
//! incompatible candidate is skipped during failover too, before the provider sees the request.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::api::chat::{ChatRequest, Content, ContentPart, ResponseFormat};
use crate::policy::pricing::NameIndex;

/// What a model can do; `None`: not known (not a reason to skip it).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    #[serde(default)]
    pub tools: Option<bool>,
    #[serde(default)]
    pub vision: Option<bool>,
    #[serde(default)]
    pub json_schema: Option<bool>,
    /// Most prompt tokens the model takes.
    #[serde(default)]
    pub context_window: Option<u64>,
    #[serde(default)]
    pub reasoning: Option<bool>,
}

impl Capabilities {
    /// The model table's fields of a price entry.
    fn from_price_entry(entry: &Value) -> Option<Capabilities> {
        let obj = entry.as_object()?;
        let flag = |k: &str| obj.get(k).and_then(Value::as_bool);
        let c = Capabilities {
            tools: flag("supports_function_calling"),
            vision: flag("supports_vision"),
            json_schema: flag("supports_response_schema"),
            context_window: obj.get("max_input_tokens").and_then(Value::as_u64),
            reasoning: flag("supports_reasoning"),
        };
        (c != Capabilities::default()).then_some(c)
    }

    /// Configured fields over the table's.
    fn over(self, base: Capabilities) -> Capabilities {
        Capabilities {
            tools: self.tools.or(base.tools),
            vision: self.vision.or(base.vision),
            json_schema: self.json_schema.or(base.json_schema),
            context_window: self.context_window.or(base.context_window),
            reasoning: self.reasoning.or(base.reasoning),
        }
    }
}

/// What a request needs of the model that serves it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub tools: bool,
    pub vision: bool,
    pub json_schema: bool,
    pub reasoning: bool,
    pub prompt_tokens: u64,
}

impl Needs {
    /// From a parsed chat request and the gateway's prompt estimate.
    pub fn of_chat(req: &ChatRequest, prompt_tokens: u64) -> Needs {
        Needs {
            tools: req.tools.as_ref().is_some_and(|t| !t.is_empty()),
            vision: req.messages.iter().any(|m| match &m.content {
                Some(Content::Parts(parts)) => parts.iter().any(|p| matches!(p, ContentPart::ImageUrl { .. })),
                _ => false,
            }),
            json_schema: matches!(req.response_format, Some(ResponseFormat::JsonSchema { .. })),
            reasoning: req.reasoning_effort.as_deref().is_some_and(|e| e != "none"),
            prompt_tokens,
        }
    }
}

/// Context-window classes for load balancing: a prompt needs the smallest class that holds it
/// (`x-switchyard-needs-context: <name>`), and an endpoint's `envoy.lb` metadata `context` lists
/// the classes its model's window holds. The bounds are the usual windows (128k is 128,000 tokens,
/// as OpenAI's models have), so that a model is in the class of its own window.
pub const CONTEXT_CLASSES: &[(u64, &str)] =
    &[(8192, "8k"), (16384, "16k"), (32768, "32k"), (128_000, "128k"), (200_000, "200k"), (1_000_000, "1m")];

/// The context class a prompt needs; `None` up to 4096 tokens (every model is taken to hold that)
/// and beyond the largest class.
pub fn context_class(prompt_tokens: u64) -> Option<&'static str> {
    if prompt_tokens <= 4096 {
        return None;
    }
    CONTEXT_CLASSES.iter().find(|(w, _)| *w >= prompt_tokens).map(|(_, n)| *n)
}

/// Keys of the subset load balancer (endpoint metadata `envoy.lb`), one per capability: the
/// booleans are `"true"` or `"false"`, `context` the list of context classes the model holds
/// (with the cluster's `list_as_any: true`).
pub const LB_KEYS: [&str; 5] = ["context", "json_schema", "reasoning", "tools", "vision"];

impl Needs {
    /// What the gateway tells Envoy's subset load balancer: (key, value) for each need, sent as
    /// `x-switchyard-needs-<key>: <value>`. A request that needs nothing sends nothing.
    pub fn lb_values(&self) -> impl Iterator<Item = (&'static str, &'static str)> {
        let flags = [("vision", self.vision), ("tools", self.tools), ("json_schema", self.json_schema), ("reasoning", self.reasoning)];
        flags
            .into_iter()
            .filter(|(_, need)| *need)
            .map(|(k, _)| (k, "true"))
            .chain(context_class(self.prompt_tokens).map(|c| ("context", c)))
    }
}

/// The `envoy.lb` endpoint metadata of a model with capabilities `c` (`None`: not described, so
/// able to serve anything, like an unknown capability).
pub fn lb_metadata(c: Option<Capabilities>) -> Value {
    let c = c.unwrap_or_default();
    let flag = |v: Option<bool>| Value::from(if v == Some(false) { "false" } else { "true" });
    let window = c.context_window.unwrap_or(u64::MAX);
    let classes: Vec<Value> = CONTEXT_CLASSES.iter().filter(|(w, _)| *w <= window).map(|(_, n)| Value::from(*n)).collect();
    let mut m = Map::new();
    m.insert("context".into(), Value::Array(classes));
    m.insert("json_schema".into(), flag(c.json_schema));
    m.insert("reasoning".into(), flag(c.reasoning));
    m.insert("tools".into(), flag(c.tools));
    m.insert("vision".into(), flag(c.vision));
    Value::Object(m)
}

/// Every selector the subset load balancer needs: one per combination of needs a request can
/// have (each non-empty subset of [`LB_KEYS`], 31), since Envoy picks the subset whose keys are
/// exactly the request's.
pub fn subset_selectors() -> Vec<Vec<&'static str>> {
    (1u32..(1 << LB_KEYS.len()))
        .map(|mask| LB_KEYS.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, k)| *k).collect())
        .collect()
}

/// The first thing a model lacks for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    Tools,
    Vision,
    JsonSchema,
    Reasoning,
    Context { window: u64, prompt_tokens: u64 },
}

impl Missing {
    /// What the client is told (and the `param` it concerns).
    pub fn describe(&self, model: &str) -> (String, &'static str) {
        match self {
            Missing::Tools => (format!("The model `{model}` does not support tools."), "tools"),
            Missing::Vision => (format!("The model `{model}` does not accept images."), "messages"),
            Missing::JsonSchema => (format!("The model `{model}` does not support JSON schema output."), "response_format"),
            Missing::Reasoning => (format!("The model `{model}` does not support reasoning_effort."), "reasoning_effort"),
            Missing::Context { window, prompt_tokens } => (
                format!("The prompt (about {prompt_tokens} tokens) is longer than the context window of `{model}` ({window} tokens)."),
                "messages",
            ),
        }
    }
}

/// Capabilities by model name, looked up like prices: the exact name, then without a provider
/// prefix, then by the name without its date or `-latest` (`crate::policy::pricing::base_name`).
#[derive(Debug, Default)]
pub struct CapabilityTable {
    by_model: NameIndex<Capabilities>,
}

impl CapabilityTable {
    /// `configured` over the price tables' entries (`price_tables`, in order: the built-in table,
    /// then the configured one). `None` when the gateway configuration has no `capabilities`: no
    /// capability check costs anything then. An empty `capabilities` object turns the checks on
    /// with the tables' defaults.
    pub fn new(configured: Option<HashMap<String, Capabilities>>, price_tables: &[&Map<String, Value>]) -> Result<Option<CapabilityTable>, String> {
        let Some(configured) = configured else { return Ok(None) };
        let mut by_model: NameIndex<Capabilities> = NameIndex::default();
        for table in price_tables {
            for (name, entry) in table.iter() {
                if let Some(c) = Capabilities::from_price_entry(entry) {
                    // A later table's entry completes (and overrides) an earlier one's fields.
                    let base = by_model.get(name).filter(|_| by_model.exact_contains(name)).unwrap_or_default();
                    by_model.insert(name, c.over(base));
                }
            }
        }
        let mut names: Vec<_> = configured.into_iter().collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, c) in names {
            if name.is_empty() {
                return Err("capabilities: empty model name".into());
            }
            if c.context_window == Some(0) {
                return Err(format!("capabilities: {name}: context_window must be positive"));
            }
            let base = by_model.get(&name).unwrap_or_default();
            by_model.insert(&name, c.over(base));
        }
        Ok(Some(CapabilityTable { by_model }))
    }

    /// The built-in price table's entries (capability fields included), when the configuration
    /// starts from it.
    pub fn builtin_entries() -> Map<String, Value> {
        serde_json::from_str(crate::policy::pricing::BUILTIN_PRICES).unwrap_or_default()
    }

    pub fn get(&self, model: &str) -> Option<Capabilities> {
        self.by_model.get(model)
    }

    /// What `model` lacks for `needs`, if anything (unknown models and unknown fields lack nothing).
    pub fn missing(&self, model: &str, needs: &Needs) -> Option<Missing> {
        let c = self.by_model.get(model)?;
        let lacks = |need: bool, has: Option<bool>| need && has == Some(false);
        if lacks(needs.vision, c.vision) {
            return Some(Missing::Vision);
        }
        if lacks(needs.tools, c.tools) {
            return Some(Missing::Tools);
        }
        if lacks(needs.json_schema, c.json_schema) {
            return Some(Missing::JsonSchema);
        }
        if lacks(needs.reasoning, c.reasoning) {
            return Some(Missing::Reasoning);
        }
        match c.context_window {
            Some(window) if needs.prompt_tokens > window => Some(Missing::Context { window, prompt_tokens: needs.prompt_tokens }),
            _ => None,
        }
    }

    /// Capabilities `fallback` lacks that `primary` has (for `switchyard check`).
    pub fn regressions(&self, primary: &str, fallback: &str) -> Vec<&'static str> {
        let (Some(p), Some(f)) = (self.by_model.get(primary), self.by_model.get(fallback)) else { return Vec::new() };
        let mut out = Vec::new();
        for (name, a, b) in [
            ("tools", p.tools, f.tools),
            ("vision", p.vision, f.vision),
            ("json_schema", p.json_schema, f.json_schema),
            ("reasoning", p.reasoning, f.reasoning),
        ] {
            if a == Some(true) && b == Some(false) {
                out.push(name);
            }
        }
        if let (Some(a), Some(b)) = (p.context_window, f.context_window) {
            if b < a {
                out.push("context_window");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::chat::parse_chat_request;

    fn table(cfg: &str, prices: &str) -> CapabilityTable {
        let configured: HashMap<String, Capabilities> = serde_json::from_str(cfg).unwrap();
        let prices: Map<String, Value> = serde_json::from_str(prices).unwrap();
        CapabilityTable::new(Some(configured), &[&prices]).unwrap().unwrap()
    }

    fn needs(body: &str, prompt: u64) -> Needs {
        Needs::of_chat(&parse_chat_request(body.as_bytes()).unwrap(), prompt)
    }

    const PRICES: &str = r#"{
        "gpt-4o-mini": {"input_cost_per_token": 1.5e-7, "output_cost_per_token": 6e-7, "max_input_tokens": 128000,
                        "supports_function_calling": true, "supports_vision": true, "supports_response_schema": true},
        "text-only": {"input_cost_per_token": 1e-7, "output_cost_per_token": 1e-7, "supports_vision": false, "max_input_tokens": 8192},
        "no-fields": {"input_cost_per_token": 1e-7, "output_cost_per_token": 1e-7}
    }"#;

    #[test]
    fn defaults_come_from_the_price_table_and_configuration_overrides_them() {
        let t = table(r#"{"text-only": {"tools": false}, "o1": {"reasoning": true, "vision": false}}"#, PRICES);
        assert_eq!(t.get("gpt-4o-mini").unwrap().context_window, Some(128000));
        let c = t.get("text-only").unwrap();
        assert_eq!((c.vision, c.tools, c.context_window), (Some(false), Some(false), Some(8192)));
        assert!(t.get("no-fields").is_none());
        assert_eq!(t.get("o1").unwrap().reasoning, Some(true));
        // No `capabilities` in the configuration: no table, whatever the prices say.
        assert!(CapabilityTable::new(None, &[&serde_json::from_str(PRICES).unwrap()]).unwrap().is_none());
        // An empty one: the prices' defaults only.
        let t = CapabilityTable::new(Some(HashMap::new()), &[&serde_json::from_str(PRICES).unwrap()]).unwrap().unwrap();
        assert_eq!(t.get("text-only").unwrap().vision, Some(false));
    }

    #[test]
    fn the_builtin_table_describes_its_models() {
        let builtin = CapabilityTable::builtin_entries();
        let t = CapabilityTable::new(Some(HashMap::new()), &[&builtin]).unwrap().unwrap();
        let full = |w| Capabilities { tools: Some(true), vision: Some(true), json_schema: Some(true), context_window: Some(w), reasoning: Some(false) };
        assert_eq!(t.get("gpt-4o-mini"), Some(full(128000)));
        assert_eq!(t.get("claude-3-5-haiku-latest"), Some(full(200000)));
        assert_eq!(t.get("gemini-1.5-flash"), Some(full(1048576)));
        // Structured Outputs came with gpt-4o-2024-08-06: the May model has no json_schema.
        assert_eq!(t.get("gpt-4o-2024-05-13").unwrap().json_schema, Some(false));
        // Looked up like prices: a provider prefix, a date the table does not list.
        assert_eq!(t.get("openai/gpt-4o-mini"), Some(full(128000)));
        assert_eq!(t.get("claude-3-5-sonnet-20991231").unwrap().context_window, Some(200000));
        // Every entry of the built-in price table carries all five fields.
        for (name, _) in builtin.iter() {
            let c = t.get(name).unwrap_or_else(|| panic!("{name}: no capabilities"));
            assert!(c.tools.is_some() && c.vision.is_some() && c.json_schema.is_some() && c.reasoning.is_some() && c.context_window.is_some(), "{name}: {c:?}");
        }
        // A request with reasoning_effort or a prompt over the window is refused by the defaults.
        let think = needs(r#"{"model":"m","reasoning_effort":"high","messages":[{"role":"user","content":"hi"}]}"#, 1);
        assert_eq!(t.missing("gpt-4o-mini", &think), Some(Missing::Reasoning));
        let long = needs(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#, 150_000);
        assert_eq!(t.missing("gpt-4o-mini", &long), Some(Missing::Context { window: 128000, prompt_tokens: 150_000 }));
        assert_eq!(t.missing("claude-3-5-haiku-latest", &long), None);
        // Configured fields win over the built-in ones; unset ones keep the table's.
        let over: HashMap<String, Capabilities> = serde_json::from_str(r#"{"gpt-4o-mini": {"reasoning": true}}"#).unwrap();
        let t = CapabilityTable::new(Some(over), &[&builtin]).unwrap().unwrap();
        assert_eq!(t.get("gpt-4o-mini"), Some(Capabilities { reasoning: Some(true), ..full(128000) }));
    }

    #[test]
    fn load_balancer_values_metadata_and_selectors() {
        let image = needs(
            r#"{"model":"m","tools":[{"type":"function","function":{"name":"f"}}],"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AA"}}]}]}"#,
            20_000,
        );
        assert_eq!(image.lb_values().collect::<Vec<_>>(), vec![("vision", "true"), ("tools", "true"), ("context", "32k")]);
        assert_eq!(needs(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#, 10).lb_values().count(), 0);
        let text_only = Capabilities { vision: Some(false), tools: Some(true), context_window: Some(128000), ..Default::default() };
        assert_eq!(
            lb_metadata(Some(text_only)),
            serde_json::json!({"context": ["8k", "16k", "32k", "128k"], "json_schema": "true", "reasoning": "true", "tools": "true", "vision": "false"})
        );
        assert_eq!(lb_metadata(None)["context"].as_array().map(Vec::len), Some(CONTEXT_CLASSES.len()));
        let sel = subset_selectors();
        assert_eq!(sel.len(), 31);
        // Every combination of keys a request can send has its selector, each once.
        let mut seen = std::collections::HashSet::new();
        for s in &sel {
            assert!(s.windows(2).all(|w| w[0] < w[1]), "{s:?} sorted");
            assert!(seen.insert(s.clone()));
        }
        let mut keys: Vec<&str> = image.lb_values().map(|(k, _)| k).collect();
        keys.sort_unstable();
        assert!(sel.contains(&keys));
    }

    #[test]
    fn incompatible_candidates_are_named_with_what_they_lack() {
        let t = table(r#"{"text-only": {"tools": false}, "o1": {"reasoning": true, "vision": false}}"#, PRICES);
        let image = needs(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AA"}}]}]}"#,
            10,
        );
        assert_eq!(t.missing("text-only", &image), Some(Missing::Vision));
        assert_eq!(t.missing("gpt-4o-mini", &image), None);
        assert_eq!(t.missing("unknown-model", &image), None, "unknown: not skipped");
        let tools = needs(r#"{"model":"m","tools":[{"type":"function","function":{"name":"f"}}],"messages":[{"role":"user","content":"hi"}]}"#, 10);
        assert_eq!(t.missing("text-only", &tools), Some(Missing::Tools));
        let long = needs(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#, 9000);
        assert_eq!(t.missing("text-only", &long), Some(Missing::Context { window: 8192, prompt_tokens: 9000 }));
        assert_eq!(t.missing("text-only", &needs(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#, 8192)), None);
        let schema = needs(r#"{"model":"m","response_format":{"type":"json_schema","json_schema":{"name":"n"}},"messages":[{"role":"user","content":"hi"}]}"#, 1);
        assert_eq!(t.missing("gpt-4o-mini", &schema), None);
        let think = needs(r#"{"model":"m","reasoning_effort":"high","messages":[{"role":"user","content":"hi"}]}"#, 1);
        assert_eq!(t.missing("o1", &think), None);
        let t2 = table(r#"{"plain": {"reasoning": false}}"#, "{}");
        assert_eq!(t2.missing("plain", &think), Some(Missing::Reasoning));
        let (msg, param) = Missing::Vision.describe("text-only");
        assert!(msg.contains("text-only") && msg.contains("images") && param == "messages");
    }

    #[test]
    fn context_classes() {
        assert_eq!(context_class(100), None);
        assert_eq!(context_class(4096), None);
        assert_eq!(context_class(4097), Some("8k"));
        assert_eq!(context_class(8192), Some("8k"));
        assert_eq!(context_class(13507), Some("16k"));
        assert_eq!(context_class(150_000), Some("200k"));
        assert_eq!(context_class(2_000_000), None);
    }

    #[test]
    fn regressions_compare_a_fallback_with_its_primary() {
        let t = table(r#"{"text-only": {"tools": false}}"#, PRICES);
        assert_eq!(t.regressions("gpt-4o-mini", "text-only"), vec!["tools", "vision", "context_window"]);
        assert!(t.regressions("text-only", "gpt-4o-mini").is_empty());
        assert!(t.regressions("gpt-4o-mini", "unknown").is_empty());
    }
}
