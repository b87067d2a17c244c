//! Rules on the request and meta-models: which configured model serves a chat request.
//!
//! The gateway configuration's `routing` holds an ordered list of rules; the first whose every
//! condition holds picks the model. A meta-model (`auto`, or any configured name) is a name clients
//! may ask for that only rules resolve, with a default when none matches. Rules apply only to names
//! the gateway knows (a configured model, alias, pattern or meta-model): an unknown name is still a
//! 404. The facts a rule can look at are computed once from the parsed request, and only those the
//! rules use (a prompt estimate, the last user message, a header) are computed at all.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::api::chat::{ChatRequest, Content, ContentPart, ResponseFormat, Role};
use crate::policy::routing::glob_match;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Names clients may ask for that rules resolve (`auto`).
    #[serde(default)]
    pub meta_models: Vec<MetaModel>,
    /// Tried in order; the first that matches picks the model.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaModel {
    pub name: String,
    /// The model that serves it when no rule matches (and, with a policy, no candidate qualifies).
    #[serde(default)]
    pub default: Option<String>,
    /// How to choose among `candidates` when no rule matches.
    #[serde(default)]
    pub policy: Option<MetaPolicy>,
    /// Configured models the policy chooses from.
    #[serde(default)]
    pub candidates: Vec<String>,
    /// Output tokens expected when the request sets no `max_tokens` (for `cheapest`; default 256).
    #[serde(default)]
    pub expected_output_tokens: Option<u64>,
    /// Share of requests `fastest` sends to a candidate other than the best (default 0.1).
    #[serde(default)]
    pub exploration: Option<f64>,
    #[serde(default)]
    pub owned_by: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MetaPolicy {
    /// Among the candidates that can serve the request, the lowest expected cost (prompt estimate
    /// and expected output at the price table's prices); unpriced candidates come last.
    Cheapest,
    /// Among the candidates that can serve the request, the best recent time to first token and
    /// error rate as measured by the gateway (`crate::policy::latency`), exploring others now and
    /// then.
    Fastest,
}

/// Output tokens `cheapest` expects of a request without `max_tokens`.
pub const DEFAULT_EXPECTED_OUTPUT_TOKENS: u64 = 256;

/// What a policy needs to know about candidates (the gateway supplies it from its capability and
/// price tables).
pub struct CandidateInfo<'a> {
    /// The model can serve this request (capabilities).
    pub compatible: &'a dyn Fn(&str) -> bool,
    /// Expected cost of `(model, prompt_tokens, output_tokens)` in any unit; `None`: unpriced.
    pub cost: &'a dyn Fn(&str, u64, u64) -> Option<u128>,
    /// Recent latency score of a model (lower is better; `crate::policy::latency`).
    pub latency: &'a dyn Fn(&str) -> f64,
    /// A uniform number in [0, 1) and a random pick, for exploration.
    pub roll: &'a dyn Fn() -> (f64, u32),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Shown in the access log (`routing_rule`); defaults to `rules[<index>]`.
    #[serde(default)]
    pub name: Option<String>,
    /// Every condition must hold; an empty `when` always matches.
    #[serde(default)]
    pub when: Conditions,
    /// A configured model or alias.
    pub model: String,
}

/// An inclusive range; either end may be absent.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Range {
    #[serde(default)]
    pub min: Option<u64>,
    #[serde(default)]
    pub max: Option<u64>,
}

impl Range {
    fn contains(&self, v: u64) -> bool {
        self.min.is_none_or(|m| v >= m) && self.max.is_none_or(|m| v <= m)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conditions {
    /// The requested model name (or alias, or meta-model); `*` patterns allowed.
    #[serde(default)]
    pub model: Option<Vec<String>>,
    /// The gateway's estimate of the prompt's tokens.
    #[serde(default)]
    pub prompt_tokens: Option<Range>,
    /// `max_completion_tokens` or `max_tokens`; a request without either does not match.
    #[serde(default)]
    pub max_tokens: Option<Range>,
    #[serde(default)]
    pub tools: Option<bool>,
    /// Any `image_url` part in any message.
    #[serde(default)]
    pub images: Option<bool>,
    /// `response_format` of type `json_schema`.
    #[serde(default)]
    pub json_schema: Option<bool>,
    #[serde(default)]
    pub stream: Option<bool>,
    /// Request headers (names in any case) and the values they must have (`*` patterns allowed).
    #[serde(default)]
    pub headers: Option<HashMap<String, String>>,
    /// The virtual key's id (a gateway with `auth`).
    #[serde(default)]
    pub key_id: Option<Vec<String>>,
    #[serde(default)]
    pub team: Option<Vec<String>>,
    /// Entries of the virtual key's `metadata`, equal as JSON values.
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// Case-insensitive substrings, any of which the last user message contains.
    #[serde(default)]
    pub last_user_message_contains: Option<Vec<String>>,
    /// Regular expressions (`regex-lite` syntax; `(?i)` for case-insensitive), any of which
    /// matches somewhere in the last user message's text as sent.
    #[serde(default)]
    pub last_user_message_matches: Option<Vec<String>>,
    /// `last_user_message_matches`, compiled when the table is built.
    #[serde(skip)]
    compiled: Vec<regex_lite::Regex>,
}

/// Longest regular expression a rule may have, and the most memory one may compile to: a
/// configuration mistake must not make every request slow.
const MAX_PATTERN_BYTES: usize = 1024;
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// What rules may look at, computed once per request.
#[derive(Debug, Default)]
pub struct RequestFacts<'a> {
    pub requested: &'a str,
    pub prompt_tokens: u64,
    pub max_tokens: Option<u32>,
    pub tools: bool,
    pub images: bool,
    pub json_schema: bool,
    pub stream: bool,
    /// The headers some rule names (lower-case names), as the client sent them.
    pub headers: &'a [(String, String)],
    pub key_id: Option<&'a str>,
    pub team: Option<&'a str>,
    pub metadata: Option<&'a Map<String, Value>>,
    /// The last user message's text, lower-cased (only when a rule looks for substrings).
    pub last_user_message: String,
    /// The last user message's text as sent (only when a rule has a regular expression).
    pub last_user_text: String,
}

/// The rules, validated against the configured models and indexed.
#[derive(Debug)]
pub struct RoutingTable {
    rules: Vec<Rule>,
    labels: Vec<String>,
    metas: HashMap<String, usize>,
    meta_models: Vec<MetaModel>,
    /// Lower-cased header names some rule looks at.
    header_names: Vec<String>,
    needs_prompt_tokens: bool,
    needs_last_user_message: bool,
    needs_last_user_text: bool,
}

/// The model a rule (or a meta-model's default) chose.
#[derive(Debug, PartialEq, Eq)]
pub struct Choice<'a> {
    pub model: &'a str,
    /// The rule's name, or `meta:<name>` for a meta-model's default.
    pub label: &'a str,
}

impl RoutingTable {
    /// `None` when nothing is configured (no cost on the request path). `resolves` says whether a
    /// name is a configured model or alias (rule targets and defaults must be).
    pub fn new(cfg: RoutingConfig, resolves: impl Fn(&str) -> bool) -> Result<Option<RoutingTable>, String> {
        if cfg.rules.is_empty() && cfg.meta_models.is_empty() {
            return Ok(None);
        }
        let mut metas = HashMap::new();
        let mut labels = Vec::with_capacity(cfg.rules.len() + cfg.meta_models.len());
        for (i, m) in cfg.meta_models.iter().enumerate() {
            if m.name.is_empty() || m.name.contains('*') {
                return Err(format!("routing.meta_models[{i}]: a meta-model needs a plain name"));
            }
            if resolves(&m.name) {
                return Err(format!("routing.meta_models[{i}] ({}): already a configured model or alias", m.name));
            }
            match (&m.default, m.policy) {
                (None, None) => return Err(format!("routing.meta_models[{i}] ({}): needs a default or a policy", m.name)),
                (Some(d), _) if !resolves(d) => {
                    return Err(format!("routing.meta_models[{i}] ({}): default {d} is not a configured model", m.name))
                }
                _ => {}
            }
            if m.exploration.is_some_and(|e| !(0.0..=1.0).contains(&e)) {
                return Err(format!("routing.meta_models[{i}] ({}): exploration must be between 0 and 1", m.name));
            }
            if m.policy.is_some() && m.candidates.is_empty() {
                return Err(format!("routing.meta_models[{i}] ({}): a policy needs candidates", m.name));
            }
            if let Some(c) = m.candidates.iter().find(|c| !resolves(c)) {
                return Err(format!("routing.meta_models[{i}] ({}): candidate {c} is not a configured model", m.name));
            }
            if metas.insert(m.name.clone(), i).is_some() {
                return Err(format!("meta-model {} is configured twice", m.name));
            }
        }
        let mut header_names: Vec<String> = Vec::new();
        let (mut needs_prompt_tokens, mut needs_last_user_message, mut needs_last_user_text) = (false, false, false);
        let mut rules = cfg.rules;
        for (i, r) in rules.iter_mut().enumerate() {
            let label = r.name.clone().unwrap_or_else(|| format!("rules[{i}]"));
            if !resolves(&r.model) {
                return Err(format!("routing {label}: model {} is not a configured model or alias", r.model));
            }
            let w = &mut r.when;
            for range in [w.prompt_tokens, w.max_tokens].iter().flatten() {
                if let (Some(a), Some(b)) = (range.min, range.max) {
                    if a > b {
                        return Err(format!("routing {label}: a range with min {a} above max {b}"));
                    }
                }
            }
            if let Some(h) = w.headers.take() {
                let mut lower = HashMap::with_capacity(h.len());
                for (k, v) in h {
                    let k = k.to_ascii_lowercase();
                    if k.is_empty() || k.starts_with(crate::config::INTERNAL_HEADER_PREFIX) {
                        return Err(format!("routing {label}: header {k:?} cannot be matched (internal headers are removed first)"));
                    }
                    if !header_names.contains(&k) {
                        header_names.push(k.clone());
                    }
                    lower.insert(k, v);
                }
                w.headers = Some(lower);
            }
            if let Some(words) = w.last_user_message_contains.as_mut() {
                if words.is_empty() || words.iter().any(String::is_empty) {
                    return Err(format!("routing {label}: last_user_message_contains needs non-empty strings"));
                }
                for s in words.iter_mut() {
                    *s = s.to_lowercase();
                }
                needs_last_user_message = true;
            }
            if let Some(patterns) = w.last_user_message_matches.as_ref() {
                if patterns.is_empty() {
                    return Err(format!("routing {label}: last_user_message_matches needs at least one pattern"));
                }
                for p in patterns {
                    if p.is_empty() || p.len() > MAX_PATTERN_BYTES {
                        return Err(format!("routing {label}: a last_user_message_matches pattern must have 1 to {MAX_PATTERN_BYTES} bytes"));
                    }
                    let re = regex_lite::RegexBuilder::new(p)
                        .size_limit(REGEX_SIZE_LIMIT)
                        .build()
                        .map_err(|e| format!("routing {label}: last_user_message_matches {p:?}: {e}"))?;
                    w.compiled.push(re);
                }
                needs_last_user_text = true;
            }
            needs_prompt_tokens |= w.prompt_tokens.is_some();
            labels.push(label);
        }
        for m in &cfg.meta_models {
            labels.push(format!("meta:{}", m.name));
            needs_prompt_tokens |= m.policy == Some(MetaPolicy::Cheapest);
        }
        Ok(Some(RoutingTable {
            rules,
            labels,
            metas,
            meta_models: cfg.meta_models,
            header_names,
            needs_prompt_tokens,
            needs_last_user_message,
            needs_last_user_text,
        }))
    }

    pub fn is_meta(&self, name: &str) -> bool {
        self.metas.contains_key(name)
    }

    /// Meta-models with their `owned_by`, for `/v1/models`.
    pub fn listed(&self) -> impl Iterator<Item = (&str, &str)> {
        self.meta_models.iter().map(|m| (m.name.as_str(), m.owned_by.as_deref().unwrap_or("switchyard")))
    }

    /// Header names (lower case) the rules look at: the gateway keeps only these.
    pub fn header_names(&self) -> &[String] {
        &self.header_names
    }

    pub fn needs_prompt_tokens(&self) -> bool {
        self.needs_prompt_tokens
    }

    pub fn needs_last_user_message(&self) -> bool {
        self.needs_last_user_message
    }

    /// Some rule has a regular expression over the last user message (its text as sent).
    pub fn needs_last_user_text(&self) -> bool {
        self.needs_last_user_text
    }

    /// Candidates of `fastest` meta-models (their latency is measured).
    pub fn latency_candidates(&self) -> impl Iterator<Item = &str> {
        self.meta_models.iter().filter(|m| m.policy == Some(MetaPolicy::Fastest)).flat_map(|m| m.candidates.iter().map(String::as_str))
    }

    /// Some meta-model chooses by cost (the gateway then needs a price table).
    pub fn uses_cost(&self) -> bool {
        self.meta_models.iter().any(|m| m.policy == Some(MetaPolicy::Cheapest))
    }

    /// The first matching rule's model, else the meta-model's policy or default, else `None` (the
    /// requested name is served as it is).
    pub fn choose(&self, facts: &RequestFacts, info: &CandidateInfo) -> Option<Choice<'_>> {
        for (i, r) in self.rules.iter().enumerate() {
            if r.when.matches(facts) {
                return Some(Choice { model: &r.model, label: self.labels.get(i).map_or("", String::as_str) });
            }
        }
        let &i = self.metas.get(facts.requested)?;
        let m = self.meta_models.get(i)?;
        let label = self.labels.get(self.rules.len() + i).map_or("", String::as_str);
        let by_policy = match m.policy {
            Some(MetaPolicy::Cheapest) => {
                let out = facts.max_tokens.map(u64::from).unwrap_or(m.expected_output_tokens.unwrap_or(DEFAULT_EXPECTED_OUTPUT_TOKENS));
                // The first of equals wins: candidates are listed in the operator's preference order.
                m.candidates
                    .iter()
                    .filter(|c| (info.compatible)(c))
                    .min_by_key(|c| (info.cost)(c, facts.prompt_tokens, out).unwrap_or(u128::MAX))
            }
            Some(MetaPolicy::Fastest) => {
                let ok: Vec<&String> = m.candidates.iter().filter(|c| (info.compatible)(c)).collect();
                let scores: Vec<f64> = ok.iter().map(|c| (info.latency)(c)).collect();
                let (roll, pick) = if ok.len() > 1 { (info.roll)() } else { (1.0, 0) };
                crate::policy::latency::choose(&scores, m.exploration.unwrap_or(crate::policy::latency::DEFAULT_EXPLORATION), roll, pick)
                    .and_then(|i| ok.get(i).copied())
            }
            None => None,
        };
        let model = by_policy.or(m.default.as_ref()).or(m.candidates.first())?;
        Some(Choice { model, label })
    }
}

impl Conditions {
    pub fn matches(&self, f: &RequestFacts) -> bool {
        let any_glob = |pats: &Vec<String>, v: &str| pats.iter().any(|p| glob_match(p, v));
        self.model.as_ref().is_none_or(|m| any_glob(m, f.requested))
            && self.prompt_tokens.is_none_or(|r| r.contains(f.prompt_tokens))
            && self.max_tokens.is_none_or(|r| f.max_tokens.is_some_and(|m| r.contains(u64::from(m))))
            && self.tools.is_none_or(|b| b == f.tools)
            && self.images.is_none_or(|b| b == f.images)
            && self.json_schema.is_none_or(|b| b == f.json_schema)
            && self.stream.is_none_or(|b| b == f.stream)
            && self.headers.as_ref().is_none_or(|hs| {
                hs.iter().all(|(name, want)| f.headers.iter().any(|(n, v)| n == name && glob_match(want, v)))
            })
            && self.key_id.as_ref().is_none_or(|ids| f.key_id.is_some_and(|k| any_glob(ids, k)))
            && self.team.as_ref().is_none_or(|ts| f.team.is_some_and(|t| any_glob(ts, t)))
            && self.metadata.as_ref().is_none_or(|want| {
                f.metadata.is_some_and(|have| want.iter().all(|(k, v)| have.get(k) == Some(v)))
            })
            && self.last_user_message_contains.as_ref().is_none_or(|words| words.iter().any(|w| f.last_user_message.contains(w.as_str())))
            && (self.last_user_message_matches.is_none() || self.compiled.iter().any(|re| re.is_match(&f.last_user_text)))
    }
}

/// Facts of a chat request that need no estimate: tools, images, JSON schema, stream, max tokens.
pub fn chat_facts<'a>(req: &'a ChatRequest) -> RequestFacts<'a> {
    let images = req.messages.iter().any(|m| match &m.content {
        Some(Content::Parts(parts)) => parts.iter().any(|p| matches!(p, ContentPart::ImageUrl { .. })),
        _ => false,
    });
    RequestFacts {
        requested: &req.model,
        max_tokens: req.output_token_limit(),
        tools: req.tools.as_ref().is_some_and(|t| !t.is_empty()),
        images,
        json_schema: matches!(req.response_format, Some(ResponseFormat::JsonSchema { .. })),
        stream: req.is_stream(),
        ..Default::default()
    }
}

/// The text of the last user message, lower-cased.
pub fn last_user_message(req: &ChatRequest) -> String {
    last_user_text(req).to_lowercase()
}

/// The text of the last user message, as sent.
pub fn last_user_text(req: &ChatRequest) -> String {
    req.messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .and_then(|m| m.content.as_ref())
        .map(|c| c.joined_text())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::chat::parse_chat_request;

    fn table(json: &str) -> Result<Option<RoutingTable>, String> {
        let cfg: RoutingConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
        RoutingTable::new(cfg, |m| ["small", "mid", "frontier", "vision", "fast"].contains(&m))
    }

    fn req(body: &str) -> ChatRequest {
        parse_chat_request(body.as_bytes()).expect("valid request")
    }

    const RULES: &str = r#"{
        "meta_models": [{"name": "auto", "default": "mid"}],
        "rules": [
          {"name": "summaries", "when": {"model": ["auto"], "last_user_message_contains": ["summarize", "tl;dr"]}, "model": "small"},
          {"name": "task-header", "when": {"headers": {"X-Task": "classif*"}}, "model": "small"},
          {"name": "images", "when": {"images": true}, "model": "vision"},
          {"name": "research", "when": {"team": ["research"], "model": ["auto"]}, "model": "frontier"},
          {"name": "long", "when": {"model": ["auto"], "prompt_tokens": {"min": 2000}}, "model": "frontier"},
          {"name": "short-answers", "when": {"model": ["auto"], "max_tokens": {"max": 64}, "tools": false}, "model": "fast"}
        ]}"#;

    const ANY: CandidateInfo = CandidateInfo { compatible: &|_| true, cost: &|_, _, _| None, latency: &|_| 0.0, roll: &|| (0.5, 0) };

    fn choose<'a>(t: &'a RoutingTable, f: &RequestFacts) -> Option<&'a str> {
        t.choose(f, &ANY).map(|c| c.label)
    }

    #[test]
    fn regular_expressions_over_the_last_user_message() {
        let t = table(
            r#"{"meta_models": [{"name": "auto", "default": "mid"}],
                "rules": [
                  {"name": "ticket", "when": {"model": ["auto"], "last_user_message_matches": ["\\b[A-Z]{2,5}-\\d+\\b"]}, "model": "small"},
                  {"name": "translate", "when": {"last_user_message_matches": ["(?i)^translate( this)? (in)?to \\w+", "(?i)\\bauf deutsch\\b"]}, "model": "fast"},
                  {"name": "both", "when": {"last_user_message_contains": ["urgent"], "last_user_message_matches": ["\\d{3}"]}, "model": "frontier"}
                ]}"#,
        )
        .unwrap()
        .unwrap();
        assert!(t.needs_last_user_text() && t.needs_last_user_message());
        let facts = |model: &'static str, body: &str| {
            let r = req(&format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"earlier JIRA-1"}},{{"role":"assistant","content":"ok"}},{{"role":"user","content":{}}}]}}"#, serde_json::to_string(body).unwrap()));
            let text = last_user_text(&r);
            (r, text)
        };
        let run = |model: &'static str, body: &str| {
            let (r, text) = facts(model, body);
            let mut f = chat_facts(&r);
            f.last_user_message = text.to_lowercase();
            f.last_user_text = text;
            choose(&t, &f).map(str::to_string)
        };
        // Case-sensitive unless the pattern says otherwise; only the last user message is read.
        assert_eq!(run("auto", "Please look at OPS-4521 today").as_deref(), Some("ticket"));
        assert_eq!(run("auto", "please look at ops-4521 today").as_deref(), Some("meta:auto"));
        assert_eq!(run("auto", "Translate this into French: bonjour").as_deref(), Some("translate"));
        assert_eq!(run("auto", "Das bitte AUF DEUTSCH").as_deref(), Some("translate"));
        assert_eq!(run("auto", "Can you translate this into French?").as_deref(), Some("meta:auto"), "anchored at the start");
        // Every condition of a rule must hold: a substring and a pattern.
        assert_eq!(run("mid", "URGENT: call 555 now").as_deref(), Some("both"));
        assert_eq!(run("mid", "urgent: call me now").as_deref(), None);
        // Bad patterns are configuration errors, named.
        let bad = table(r#"{"rules":[{"name":"r","when":{"last_user_message_matches":["(unclosed"]},"model":"small"}]}"#).unwrap_err();
        assert!(bad.contains("routing r: last_user_message_matches") && bad.contains("(unclosed"), "{bad}");
        assert!(table(r#"{"rules":[{"when":{"last_user_message_matches":[]},"model":"small"}]}"#).is_err());
        let long = format!(r#"{{"rules":[{{"when":{{"last_user_message_matches":["{}"]}},"model":"small"}}]}}"#, "a".repeat(2000));
        assert!(table(&long).is_err());
        // A pattern that would compile to a huge program is refused.
        assert!(table(r#"{"rules":[{"when":{"last_user_message_matches":["(\\w{100}){100}"]},"model":"small"}]}"#).is_err());
        // A rule table without patterns does not ask for the text.
        assert!(!table(RULES).unwrap().unwrap().needs_last_user_text());
    }

    #[test]
    fn first_matching_rule_wins_and_meta_default_otherwise() {
        let t = table(RULES).unwrap().unwrap();
        let r = req(r#"{"model":"auto","messages":[{"role":"user","content":"Please SUMMARIZE this text"}]}"#);
        let mut f = chat_facts(&r);
        f.last_user_message = last_user_message(&r);
        assert_eq!(t.choose(&f, &ANY), Some(Choice { model: "small", label: "summaries" }));
        // The same words for another requested model: that rule does not apply.
        f.requested = "mid";
        assert_eq!(choose(&t, &f), None);
        // Nothing matches `auto`: its default.
        let r = req(r#"{"model":"auto","messages":[{"role":"user","content":"Hello"}]}"#);
        let mut f = chat_facts(&r);
        f.last_user_message = last_user_message(&r);
        assert_eq!(t.choose(&f, &ANY), Some(Choice { model: "mid", label: "meta:auto" }));
    }

    #[test]
    fn only_the_last_user_message_counts() {
        let r = req(r#"{"model":"auto","messages":[{"role":"user","content":"summarize"},{"role":"assistant","content":"ok"},
                     {"role":"user","content":[{"type":"text","text":"now translate"}]}]}"#);
        assert_eq!(last_user_message(&r), "now translate");
    }

    #[test]
    fn headers_images_team_tokens_and_max_tokens() {
        let t = table(RULES).unwrap().unwrap();
        assert_eq!(t.header_names(), ["x-task"]);
        assert!(t.needs_prompt_tokens() && t.needs_last_user_message());
        let r = req(r#"{"model":"mid","messages":[{"role":"user","content":"Hi"}]}"#);
        let headers = vec![("x-task".to_string(), "classification".to_string())];
        let mut f = chat_facts(&r);
        f.headers = &headers;
        assert_eq!(choose(&t, &f), Some("task-header"));
        let other = vec![("x-task".to_string(), "summarize".to_string())];
        f.headers = &other;
        assert_eq!(choose(&t, &f), None);

        let r = req(r#"{"model":"mid","messages":[{"role":"user","content":[{"type":"text","text":"what is this"},
                     {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}]}"#);
        assert_eq!(choose(&t, &chat_facts(&r)), Some("images"));

        let r = req(r#"{"model":"auto","messages":[{"role":"user","content":"Hi"}]}"#);
        let mut f = chat_facts(&r);
        f.team = Some("research");
        assert_eq!(choose(&t, &f), Some("research"));
        f.team = Some("apps");
        f.prompt_tokens = 2500;
        assert_eq!(choose(&t, &f), Some("long"));
        f.prompt_tokens = 10;
        assert_eq!(choose(&t, &f), Some("meta:auto"), "no max_tokens: the range does not match");
        let r = req(r#"{"model":"auto","max_tokens":32,"messages":[{"role":"user","content":"Hi"}]}"#);
        assert_eq!(choose(&t, &chat_facts(&r)), Some("short-answers"));
        let r = req(r#"{"model":"auto","max_completion_tokens":65,"messages":[{"role":"user","content":"Hi"}]}"#);
        assert_eq!(choose(&t, &chat_facts(&r)), Some("meta:auto"));
        let r = req(r#"{"model":"auto","max_tokens":32,"tools":[{"type":"function","function":{"name":"f"}}],"messages":[{"role":"user","content":"Hi"}]}"#);
        assert_eq!(choose(&t, &chat_facts(&r)), Some("meta:auto"), "tools: false excludes it");
    }

    #[test]
    fn key_metadata_stream_and_json_schema() {
        let t = table(
            r#"{"rules":[{"when":{"metadata":{"tier":"gold"},"stream":true},"model":"frontier"},
                          {"when":{"json_schema":true,"key_id":["batch-*"]},"model":"small"}]}"#,
        )
        .unwrap()
        .unwrap();
        let r = req(r#"{"model":"mid","stream":true,"messages":[{"role":"user","content":"Hi"}]}"#);
        let gold: Map<String, Value> = serde_json::from_str(r#"{"tier":"gold","owner":"x"}"#).unwrap();
        let mut f = chat_facts(&r);
        assert_eq!(choose(&t, &f), None, "no key, no metadata");
        f.metadata = Some(&gold);
        assert_eq!(choose(&t, &f), Some("rules[0]"));
        let r = req(r#"{"model":"mid","response_format":{"type":"json_schema","json_schema":{"name":"n","schema":{}}},"messages":[{"role":"user","content":"Hi"}]}"#);
        let mut f = chat_facts(&r);
        f.key_id = Some("batch-7");
        assert_eq!(choose(&t, &f), Some("rules[1]"));
        f.key_id = Some("web");
        assert_eq!(choose(&t, &f), None);
    }

    #[test]
    fn cheapest_compatible_candidate() {
        let t = table(
            r#"{"meta_models":[{"name":"cheap","policy":"cheapest","candidates":["frontier","mid","small","vision"]},
                                {"name":"pick","policy":"cheapest","candidates":["mid"],"default":"small"}]}"#,
        )
        .unwrap()
        .unwrap();
        assert!(t.uses_cost() && t.needs_prompt_tokens());
        // Per-token prices: input, output (femto-anything); `vision` is unpriced.
        let price = |m: &str| match m {
            "frontier" => Some((30u128, 60u128)),
            "mid" => Some((3, 12)),
            "small" => Some((1, 40)),
            _ => None,
        };
        let cost = |m: &str, p: u64, o: u64| price(m).map(|(i, out)| i * u128::from(p) + out * u128::from(o));
        let all = CandidateInfo { compatible: &|_| true, cost: &cost, ..ANY };
        let mut f = RequestFacts { requested: "cheap", prompt_tokens: 1000, ..Default::default() };
        // 1000 prompt + 256 expected output: frontier 45360, mid 3000+3072=6072, small 1000+10240=11240.
        assert_eq!(t.choose(&f, &all).map(|c| c.model), Some("mid"));
        // Short answers make the model with cheap output dearer: max_tokens 10 → small 1400 < mid 3120.
        f.max_tokens = Some(10);
        assert_eq!(t.choose(&f, &all).map(|c| c.model), Some("small"));
        // Capabilities first: without `small`, the next cheapest compatible one.
        let no_small = CandidateInfo { compatible: &|m| m != "small", cost: &cost, ..ANY };
        assert_eq!(t.choose(&f, &no_small).map(|c| c.model), Some("mid"));
        // Unpriced comes last but still serves when nothing else can.
        let only_vision = CandidateInfo { compatible: &|m| m == "vision", cost: &cost, ..ANY };
        assert_eq!(t.choose(&f, &only_vision).map(|c| c.model), Some("vision"));
        // No compatible candidate: the default (else the first candidate, whose backend refuses).
        let none = CandidateInfo { compatible: &|_| false, cost: &cost, ..ANY };
        f.requested = "pick";
        assert_eq!(t.choose(&f, &none).map(|c| c.model), Some("small"));
        f.requested = "cheap";
        assert_eq!(t.choose(&f, &none).map(|c| c.model), Some("frontier"));
        assert!(table(r#"{"meta_models":[{"name":"x","policy":"cheapest"}]}"#).is_err());
        assert!(table(r#"{"meta_models":[{"name":"x"}]}"#).is_err());
        assert!(table(r#"{"meta_models":[{"name":"x","policy":"cheapest","candidates":["nope"]}]}"#).is_err());
        assert!(table(r#"{"meta_models":[{"name":"x","policy":"slowest","candidates":["mid"]}]}"#).is_err());
        assert!(table(r#"{"meta_models":[{"name":"x","policy":"fastest","candidates":["mid"],"exploration":1.5}]}"#).is_err());
    }

    #[test]
    fn fastest_compatible_candidate_with_exploration() {
        let t = table(r#"{"meta_models":[{"name":"quick","policy":"fastest","candidates":["mid","small","frontier"],"exploration":0.2}]}"#)
            .unwrap()
            .unwrap();
        assert_eq!(t.latency_candidates().collect::<Vec<_>>(), ["mid", "small", "frontier"]);
        let latency = |m: &str| match m {
            "mid" => 400.0,
            "small" => 90.0,
            _ => 150.0,
        };
        let f = RequestFacts { requested: "quick", ..Default::default() };
        let steady = CandidateInfo { latency: &latency, roll: &|| (0.5, 0), ..ANY };
        assert_eq!(t.choose(&f, &steady).map(|c| c.model), Some("small"));
        // Exploring (roll below 0.2): another candidate.
        let explore = CandidateInfo { latency: &latency, roll: &|| (0.1, 1), ..ANY };
        assert_eq!(t.choose(&f, &explore).map(|c| c.model), Some("frontier"));
        // The fastest cannot serve the request: the next best.
        let no_small = CandidateInfo { compatible: &|m| m != "small", latency: &latency, roll: &|| (0.5, 0), ..ANY };
        assert_eq!(t.choose(&f, &no_small).map(|c| c.model), Some("frontier"));
    }

    #[test]
    fn nothing_configured_costs_nothing_and_mistakes_are_errors() {
        assert!(table("{}").unwrap().is_none());
        assert!(table(r#"{"rules":[{"model":"nope"}]}"#).unwrap_err().contains("nope"));
        assert!(table(r#"{"meta_models":[{"name":"auto","default":"nope"}]}"#).is_err());
        assert!(table(r#"{"meta_models":[{"name":"mid","default":"small"}]}"#).is_err(), "shadows a model");
        assert!(table(r#"{"meta_models":[{"name":"a*","default":"small"}]}"#).is_err());
        assert!(table(r#"{"rules":[{"when":{"prompt_tokens":{"min":5,"max":1}},"model":"small"}]}"#).is_err());
        assert!(table(r#"{"rules":[{"when":{"headers":{"x-switchyard-route":"x"}},"model":"small"}]}"#).is_err());
        assert!(table(r#"{"rules":[{"when":{"last_user_message_contains":[]},"model":"small"}]}"#).is_err());
        assert!(table(r#"{"rules":[{"when":{"typo":1},"model":"small"}]}"#).is_err());
        // An empty `when` always matches.
        let t = table(r#"{"rules":[{"model":"small"}]}"#).unwrap().unwrap();
        assert_eq!(t.choose(&RequestFacts { requested: "mid", ..Default::default() }, &ANY).map(|c| c.model), Some("small"));
    }
}
