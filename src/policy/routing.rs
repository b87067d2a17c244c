//! Model resolution: which route serves the model a client asked for. Exact names and aliases are
//! looked up in a map; wildcard patterns are tried in configuration order after that.

use std::collections::HashMap;

use crate::config::ModelEntry;
use crate::policy::canary::Canary;
use crate::policy::deadline::Deadline;

pub struct ModelRouter {
    entries: Vec<ModelEntry>,
    /// Per entry: its first-token deadline, pre-rendered.
    deadlines: Vec<Option<Deadline>>,
    /// Per entry: its canary, validated.
    canaries: Vec<Option<Canary>>,
    exact: HashMap<String, usize>,
    patterns: Vec<usize>,
}

/// The outcome of resolving a requested model.
#[derive(Debug, PartialEq)]
pub struct Resolved<'a> {
    /// Envoy route name (`x-switchyard-route`).
    pub route: &'a str,
    /// Canonical model name: the entry's name, or the requested name when a pattern matched.
    pub model: &'a str,
    /// The route's first-token deadline, if it has one.
    pub deadline: Option<&'a Deadline>,
    /// The `*` entry that matched, if a pattern did: metrics label the model with it, never with
    /// the name a client made up (each new name would be a new stat, for good).
    pub pattern: Option<&'a str>,
    /// The route forbids floating model names (`pin_versions: "forbid"`).
    pub forbid_floating: bool,
    /// The route's canary, if it has one.
    pub canary: Option<&'a Canary>,
}

impl ModelRouter {
    pub fn new(entries: Vec<ModelEntry>) -> Result<Self, String> {
        let mut exact = HashMap::new();
        let mut patterns = Vec::new();
        let mut deadlines = Vec::with_capacity(entries.len());
        let mut canaries = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            if e.name.is_empty() {
                return Err(format!("models[{i}]: empty name"));
            }
            deadlines.push(Deadline::new(e.first_token_timeout_ms, e.hedge).map_err(|err| format!("models[{i}] ({}): {err}", e.name))?);
            canaries.push(match &e.canary {
                Some(c) => Some(Canary::new(e.route.as_deref().unwrap_or(&e.name), c.clone()).map_err(|err| format!("models[{i}] ({}): {err}", e.name))?),
                None => None,
            });
            let route = e.route.as_deref().unwrap_or(&e.name);
            if route.is_empty() || route.contains('*') {
                return Err(format!("models[{i}] ({}): a wildcard entry needs an explicit route", e.name));
            }
            if e.name.contains('*') {
                patterns.push(i);
            } else if exact.insert(e.name.clone(), i).is_some() {
                return Err(format!("model {} is configured twice", e.name));
            }
            for a in &e.aliases {
                if a.contains('*') {
                    return Err(format!("alias {a}: aliases cannot be patterns"));
                }
                if exact.insert(a.clone(), i).is_some() {
                    return Err(format!("alias {a} is configured twice"));
                }
            }
        }
        let router = ModelRouter { entries, deadlines, canaries, exact, patterns };
        for (e, c) in router.entries.iter().zip(&router.canaries) {
            if let Some(c) = c {
                let target = router.resolve(&c.cfg.model).ok_or_else(|| format!("model {}: canary {} is not a configured model", e.name, c.cfg.model))?;
                if target.model == e.name || target.canary.is_some() {
                    return Err(format!("model {}: canary {} must be another model, without a canary of its own", e.name, c.cfg.model));
                }
            }
        }
        Ok(router)
    }

    pub fn resolve<'a>(&'a self, requested: &'a str) -> Option<Resolved<'a>> {
        if let Some(&i) = self.exact.get(requested) {
            let e = self.entries.get(i)?;
            let deadline = self.deadlines.get(i).and_then(Option::as_ref);
            let forbid_floating = e.pin_versions == Some(crate::config::PinVersions::Forbid);
            let canary = self.canaries.get(i).and_then(Option::as_ref);
            return Some(Resolved { route: e.route.as_deref().unwrap_or(&e.name), model: &e.name, deadline, pattern: None, forbid_floating, canary });
        }
        let i = self.patterns.iter().copied().find(|&i| self.entries.get(i).is_some_and(|e| glob_match(&e.name, requested)))?;
        let e = self.entries.get(i)?;
        Some(Resolved {
            route: e.route.as_deref().unwrap_or(&e.name),
            model: requested,
            deadline: self.deadlines.get(i).and_then(Option::as_ref),
            pattern: Some(&e.name),
            forbid_floating: e.pin_versions == Some(crate::config::PinVersions::Forbid),
            canary: self.canaries.get(i).and_then(Option::as_ref),
        })
    }

    /// The configured entries, in order.
    pub fn entries(&self) -> &[ModelEntry] {
        &self.entries
    }

    /// Listable models: exact names and aliases, with their `owned_by`.
    pub fn listed(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().filter(|e| !e.name.contains('*')).flat_map(|e| {
            let owner = e.owned_by.as_deref().unwrap_or("switchyard");
            std::iter::once((e.name.as_str(), owner)).chain(e.aliases.iter().map(move |a| (a.as_str(), owner)))
        })
    }

    /// `owned_by` of a listable model, for `GET /v1/models/{id}`.
    pub fn owner_of(&self, id: &str) -> Option<&str> {
        self.listed().find(|(name, _)| *name == id).map(|(_, o)| o)
    }
}

/// `*` matches any run of characters (including none); everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, aliases: &[&str], route: Option<&str>) -> ModelEntry {
        ModelEntry {
            name: name.into(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            route: route.map(Into::into),
            owned_by: None,
            first_token_timeout_ms: None,
            hedge: false,
            pin_versions: None,
            canary: None,
        }
    }

    #[test]
    fn exact_alias_and_pattern() {
        let r = ModelRouter::new(vec![
            entry("gpt-4o-mini", &["fast"], None),
            entry("claude-*", &[], Some("anthropic")),
            entry("*", &[], Some("catch-all")),
        ])
        .unwrap();
        assert_eq!(r.resolve("gpt-4o-mini"), Some(Resolved { route: "gpt-4o-mini", model: "gpt-4o-mini", deadline: None, pattern: None, forbid_floating: false, canary: None }));
        assert_eq!(r.resolve("fast"), Some(Resolved { route: "gpt-4o-mini", model: "gpt-4o-mini", deadline: None, pattern: None, forbid_floating: false, canary: None }));
        assert_eq!(r.resolve("claude-3-haiku"), Some(Resolved { route: "anthropic", model: "claude-3-haiku", deadline: None, pattern: Some("claude-*"), forbid_floating: false, canary: None }));
        assert_eq!(r.resolve("llama").unwrap().route, "catch-all");
        let listed: Vec<_> = r.listed().map(|(n, _)| n).collect();
        assert_eq!(listed, vec!["gpt-4o-mini", "fast"]);
        assert_eq!(r.owner_of("fast"), Some("switchyard"));
        assert_eq!(r.owner_of("claude-*"), None);
    }

    #[test]
    fn unknown_model_is_none() {
        let r = ModelRouter::new(vec![entry("a", &[], None)]).unwrap();
        assert_eq!(r.resolve("b"), None);
        assert_eq!(r.resolve(""), None);
    }

    #[test]
    fn configuration_mistakes_are_errors() {
        assert!(ModelRouter::new(vec![entry("a", &[], None), entry("a", &[], None)]).is_err());
        assert!(ModelRouter::new(vec![entry("a", &["b"], None), entry("b", &[], None)]).is_err());
        assert!(ModelRouter::new(vec![entry("a*", &[], None)]).is_err());
    }

    #[test]
    fn deadlines_follow_their_entry() {
        let mut slow = entry("slow", &["s"], None);
        slow.first_token_timeout_ms = Some(2000);
        slow.hedge = true;
        let mut pat = entry("big-*", &[], Some("big"));
        pat.first_token_timeout_ms = Some(700);
        let r = ModelRouter::new(vec![entry("a", &[], None), slow, pat]).unwrap();
        assert_eq!(r.resolve("a").unwrap().deadline, None);
        let d = r.resolve("s").unwrap().deadline.unwrap();
        assert_eq!((d.timeout_ms, d.hedge, d.header_value.as_str()), (2000, true, "2000"));
        assert_eq!(r.resolve("big-1").unwrap().deadline.map(|d| d.timeout_ms), Some(700));
        let mut bad = entry("h", &[], None);
        bad.hedge = true;
        assert!(ModelRouter::new(vec![bad]).err().is_some_and(|e| e.contains("first_token_timeout_ms")));
    }

    #[test]
    fn glob() {
        assert!(glob_match("gpt-*", "gpt-4o"));
        assert!(glob_match("*-mini", "gpt-4o-mini"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("gpt-*", "claude"));
    }
}
