//! Guardrails: detectors over the text of a chat request (message contents and text parts, tool
//! results, tool-call arguments) and, optionally, of its answer; per detector an action — `block`
//! (a 400 naming the detector, never the match), `redact` (a typed placeholder such as `[EMAIL_1]`,
//! optionally restored in the answer) or `log` (counted only) — chosen per key, team and route.
//!
//! Plain Rust: the gateway filter hands over the request body and the answer (whole or SSE chunks)
//! and puts back what comes out. Off (no `guardrails` section) it is never called.

pub mod detect;
pub mod stream;

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::api::ApiError;
use detect::{Kind, BUILTINS};

/// What a detection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Block,
    Redact,
    Log,
    /// Only in `overrides`: turn a detector off for that scope.
    Off,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Block => "block",
            Action::Redact => "redact",
            Action::Log => "log",
            Action::Off => "off",
        }
    }
}

/// The `guardrails` section of the gateway configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardrailsConfig {
    /// Detector (or group: `pii`, `secrets`, `all`) → action. Named detectors win over groups.
    #[serde(default)]
    pub detectors: BTreeMap<String, Action>,
    /// Patterns of your own (regular expressions, `regex-lite` syntax).
    #[serde(default)]
    pub custom: Vec<CustomConfig>,
    /// Put the original values back where the answer repeats a placeholder of this request.
    #[serde(default)]
    pub restore: bool,
    /// Scan answers too (whole and streamed).
    #[serde(default)]
    pub answers: AnswersConfig,
    /// Settings for some keys, teams or routes; every matching entry applies, in order.
    #[serde(default)]
    pub overrides: Vec<OverrideConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomConfig {
    /// `[a-z0-9_]+`; the placeholder tag is its upper-case form.
    pub name: String,
    pub pattern: String,
    pub action: Action,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswersConfig {
    #[serde(default)]
    pub scan: bool,
    /// Actions in answers, by detector or group (default: the request's). `block` and `redact`
    /// both mask the match in an answer; `log` counts it.
    #[serde(default)]
    pub detectors: Option<BTreeMap<String, Action>>,
    /// How much streamed text is held back so a match split across chunks is still caught.
    #[serde(default = "default_window")]
    pub window_bytes: usize,
}

impl Default for AnswersConfig {
    fn default() -> Self {
        AnswersConfig { scan: false, detectors: None, window_bytes: default_window() }
    }
}

fn default_window() -> usize {
    256
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideConfig {
    /// Which requests: every listed dimension must match (`*` patterns; an empty list matches all).
    #[serde(default)]
    pub keys: Vec<String>,
    #[serde(default)]
    pub teams: Vec<String>,
    #[serde(default)]
    pub routes: Vec<String>,
    /// `false`: no guardrails at all for these requests.
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub detectors: BTreeMap<String, Action>,
    #[serde(default)]
    pub restore: Option<bool>,
    #[serde(default)]
    pub scan_answers: Option<bool>,
}

/// One detector: a built-in scanner or a configured pattern.
#[derive(Debug)]
enum Scanner {
    Builtin(Kind),
    Custom(regex_lite::Regex),
}

#[derive(Debug)]
struct Detector {
    name: String,
    /// Placeholder tag: `EMAIL`, `CREDIT_CARD`, …
    tag: String,
    scanner: Scanner,
}

/// The effective settings of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Action per detector (same index as `Guardrails::detectors`); `None`: off.
    actions: Vec<Option<Action>>,
    /// Actions in answers (the request's unless `answers.detectors` says otherwise).
    answer_actions: Vec<Option<Action>>,
    restore: bool,
    scan_answers: bool,
}

impl Settings {
    fn any(&self) -> bool {
        self.actions.iter().any(Option::is_some) || (self.scan_answers && self.answer_actions.iter().any(Option::is_some))
    }
}

#[derive(Debug)]
struct Override {
    keys: Vec<String>,
    teams: Vec<String>,
    routes: Vec<String>,
    enabled: Option<bool>,
    actions: Vec<Option<Action>>,
    restore: Option<bool>,
    scan_answers: Option<bool>,
}

/// The compiled `guardrails` section.
#[derive(Debug)]
pub struct Guardrails {
    detectors: Vec<Detector>,
    base: Settings,
    overrides: Vec<Override>,
    /// `answers.detectors`, when set.
    answer_map: Option<Vec<Option<Action>>>,
    window: usize,
}

/// One count of the access log and metrics: detector, action, where, how many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    pub detector: String,
    pub action: &'static str,
    pub direction: &'static str,
    pub count: u32,
}

fn add_count(counts: &mut Vec<Detection>, detector: &str, action: &'static str, direction: &'static str, n: u32) {
    match counts.iter_mut().find(|d| d.detector == detector && d.action == action && d.direction == direction) {
        Some(d) => d.count += n,
        None => counts.push(Detection { detector: detector.to_string(), action, direction, count: n }),
    }
}

/// `detector:action:count` entries, comma-separated (the access-log form).
pub fn summary(counts: &[Detection], direction: &str) -> String {
    let mut s = String::new();
    for d in counts.iter().filter(|d| d.direction == direction) {
        if !s.is_empty() {
            s.push(',');
        }
        s.push_str(&d.detector);
        s.push(':');
        s.push_str(d.action);
        s.push(':');
        s.push_str(&d.count.to_string());
    }
    s
}

fn glob_any(patterns: &[String], value: Option<&str>) -> bool {
    patterns.is_empty() || value.is_some_and(|v| patterns.iter().any(|p| crate::policy::routing::glob_match(p, v)))
}

impl Guardrails {
    pub fn new(cfg: GuardrailsConfig) -> Result<Guardrails, String> {
        let mut detectors: Vec<Detector> =
            BUILTINS.iter().map(|&k| Detector { name: k.name().to_string(), tag: k.name().to_ascii_uppercase(), scanner: Scanner::Builtin(k) }).collect();
        let mut custom_actions = Vec::new();
        for c in cfg.custom {
            if c.name.is_empty() || c.name.len() > 40 || !c.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
                return Err(format!("guardrails.custom: invalid name {:?} (1-40 characters a-z, 0-9, _)", c.name));
            }
            if detectors.iter().any(|d| d.name == c.name) || is_group(&c.name) {
                return Err(format!("guardrails.custom: {:?} is already a detector", c.name));
            }
            if c.action == Action::Off {
                return Err(format!("guardrails.custom {}: action must be block, redact or log", c.name));
            }
            let re = regex_lite::RegexBuilder::new(&c.pattern)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| format!("guardrails.custom {}: invalid pattern: {e}", c.name))?;
            if re.is_match("") {
                return Err(format!("guardrails.custom {}: the pattern matches the empty string", c.name));
            }
            custom_actions.push(Some(c.action));
            detectors.push(Detector { tag: c.name.to_ascii_uppercase(), name: c.name, scanner: Scanner::Custom(re) });
        }
        let n = detectors.len();
        let mut base = vec![None; n];
        apply_map(&detectors, &cfg.detectors, &mut base, "guardrails.detectors", false)?;
        for (i, a) in custom_actions.into_iter().enumerate() {
            if let Some(slot) = base.get_mut(BUILTINS.len() + i) {
                *slot = a;
            }
        }
        let mut overrides = Vec::new();
        for (i, o) in cfg.overrides.into_iter().enumerate() {
            let mut actions = vec![None; n];
            apply_map(&detectors, &o.detectors, &mut actions, &format!("guardrails.overrides[{i}].detectors"), true)?;
            overrides.push(Override {
                keys: o.keys,
                teams: o.teams,
                routes: o.routes,
                enabled: o.enabled,
                actions,
                restore: o.restore,
                scan_answers: o.scan_answers,
            });
        }
        let answer_map = match &cfg.answers.detectors {
            Some(m) => {
                let mut a = vec![None; n];
                apply_map(&detectors, m, &mut a, "guardrails.answers.detectors", false)?;
                Some(a)
            }
            None => None,
        };
        if cfg.answers.window_bytes == 0 || cfg.answers.window_bytes > 64 * 1024 {
            return Err("guardrails.answers.window_bytes must be between 1 and 65536".into());
        }
        Ok(Guardrails {
            detectors,
            base: Settings { answer_actions: Vec::new(), actions: base, restore: cfg.restore, scan_answers: cfg.answers.scan },
            overrides,
            answer_map,
            window: cfg.answers.window_bytes,
        })
    }

    /// The settings for a request of this key, team and route; `None` when nothing is on for it.
    pub fn settings_for(&self, key_id: Option<&str>, team: Option<&str>, route: &str) -> Option<Settings> {
        let mut s: Option<Settings> = None;
        let mut enabled = true;
        for o in &self.overrides {
            if !(glob_any(&o.keys, key_id) && glob_any(&o.teams, team) && glob_any(&o.routes, Some(route))) {
                continue;
            }
            let cur = s.get_or_insert_with(|| self.base.clone());
            if let Some(e) = o.enabled {
                enabled = e;
            }
            for (slot, a) in cur.actions.iter_mut().zip(&o.actions) {
                match a {
                    Some(Action::Off) => *slot = None,
                    Some(a) => *slot = Some(*a),
                    None => {}
                }
            }
            if let Some(r) = o.restore {
                cur.restore = r;
            }
            if let Some(r) = o.scan_answers {
                cur.scan_answers = r;
            }
        }
        if !enabled {
            return None;
        }
        let mut s = s.unwrap_or_else(|| self.base.clone());
        s.answer_actions = self.answer_map.clone().unwrap_or_else(|| s.actions.clone());
        s.any().then_some(s)
    }

    /// The guard of a chat request of this key, team and route: `None` when nothing is on for it.
    pub fn check(&self, key_id: Option<&str>, team: Option<&str>, route: &str, body: &[u8]) -> Result<Option<RequestGuard>, Blocked> {
        match self.settings_for(key_id, team, route) {
            Some(s) => self.check_request(s, body).map(Some),
            None => Ok(None),
        }
    }

    /// Finds every match of the detectors `on` selects in `text`: `(start, end, detector)`,
    /// sorted, without overlaps (the earlier start wins, then the longer match, then the
    /// detector listed first).
    fn find(&self, text: &str, on: impl Fn(usize) -> bool, out: &mut Vec<(usize, usize, usize)>) {
        out.clear();
        let mut ranges = Vec::new();
        for (i, d) in self.detectors.iter().enumerate() {
            if !on(i) {
                continue;
            }
            ranges.clear();
            match &d.scanner {
                Scanner::Builtin(k) => k.scan(text, &mut ranges),
                Scanner::Custom(re) => ranges.extend(re.find_iter(text).filter(|m| !m.is_empty()).map(|m| (m.start(), m.end()))),
            }
            out.extend(ranges.iter().map(|&(s, e)| (s, e, i)));
        }
        if out.len() > 1 {
            out.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
            let mut end = 0;
            let mut first = true;
            out.retain(|&(s, e, _)| {
                if first || s >= end {
                    first = false;
                    end = e;
                    true
                } else {
                    false
                }
            });
        }
    }

    /// Scans a chat request body (the canonical OpenAI form). A `block` detection refuses it; a
    /// `redact` one rewrites it (`RequestGuard::body`). The answer's work (restoring, scanning)
    /// is in the returned guard.
    pub fn check_request(&self, settings: Settings, body: &[u8]) -> Result<RequestGuard, Blocked> {
        let mut guard = RequestGuard { settings, body: None, placeholders: Vec::new(), counts: Vec::new(), stream: None, window: self.window };
        let Ok(mut doc) = serde_json::from_slice::<Value>(body) else {
            return Ok(guard);
        };
        let mut blocked: Option<usize> = None;
        let mut changed = false;
        let mut matches = Vec::new();
        let mut next_number: Vec<u32> = vec![0; self.detectors.len()];
        // original -> index in guard.placeholders: one lookup per match, however many there are.
        let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        let actions = guard.settings.actions.clone();
        let on = |i: usize| actions.get(i).copied().flatten().is_some();
        for_each_request_text(&mut doc, &mut |text: &mut String| {
            self.find(text, on, &mut matches);
            if matches.is_empty() {
                return;
            }
            let mut out = String::with_capacity(text.len());
            let mut last = 0;
            for &(s, e, d) in &matches {
                let Some(action) = actions.get(d).copied().flatten() else { continue };
                let name = self.detectors.get(d).map_or("", |x| x.name.as_str());
                add_count(&mut guard.counts, name, action.as_str(), "request", 1);
                match action {
                    Action::Block => {
                        if blocked.is_none() {
                            blocked = Some(d);
                        }
                    }
                    Action::Redact => {
                        let original = text.get(s..e).unwrap_or_default();
                        out.push_str(text.get(last..s).unwrap_or_default());
                        let ph = match seen.get(original).and_then(|&i| guard.placeholders.get(i)) {
                            Some((p, _)) => p.clone(),
                            None => {
                                seen.insert(original.to_string(), guard.placeholders.len());
                                let n = next_number.get_mut(d).map(|c| {
                                    *c += 1;
                                    *c
                                });
                                let tag = self.detectors.get(d).map_or("REDACTED", |x| x.tag.as_str());
                                let p = format!("[{tag}_{}]", n.unwrap_or(0));
                                guard.placeholders.push((p.clone(), original.to_string()));
                                p
                            }
                        };
                        out.push_str(&ph);
                        last = e;
                    }
                    Action::Log | Action::Off => {}
                }
            }
            if last > 0 {
                out.push_str(text.get(last..).unwrap_or_default());
                *text = out;
                changed = true;
            }
        });
        if let Some(d) = blocked {
            let det = self.detectors.get(d);
            let name = det.map_or("custom", |x| x.name.as_str());
            let what = match det.map(|x| &x.scanner) {
                Some(Scanner::Builtin(k)) => k.description().to_string(),
                _ => format!("text matching the pattern `{name}`"),
            };
            let error = ApiError::new(
                400,
                "invalid_request_error",
                format!("The request was blocked by the gateway's guardrails: it contains {what} (detector `{name}`). Remove it and try again."),
            )
            .with_code("guardrail_blocked");
            return Err(Blocked { error, counts: guard.counts });
        }
        if changed {
            guard.body = serde_json::to_vec(&doc).ok();
        }
        if !guard.settings.restore {
            guard.placeholders.clear();
        }
        Ok(guard)
    }
}

fn is_group(name: &str) -> bool {
    matches!(name, "pii" | "secrets" | "all")
}

/// Applies a detector → action map: groups first, then named detectors.
fn apply_map(detectors: &[Detector], map: &BTreeMap<String, Action>, out: &mut [Option<Action>], what: &str, allow_off: bool) -> Result<(), String> {
    for (name, &a) in map {
        if a == Action::Off && !allow_off {
            return Err(format!("{what}.{name}: `off` is only for overrides (leave the detector out)"));
        }
        if !is_group(name) && !detectors.iter().any(|d| &d.name == name) {
            let known: Vec<&str> = detectors.iter().map(|d| d.name.as_str()).collect();
            return Err(format!("{what}: unknown detector {name:?} (known: {}, and the groups pii, secrets, all)", known.join(", ")));
        }
    }
    for group in ["all", "pii", "secrets"] {
        if let Some(&a) = map.get(group) {
            for (slot, d) in out.iter_mut().zip(detectors) {
                let member = match &d.scanner {
                    Scanner::Builtin(k) => group == "all" || (group == "secrets") == k.is_secret(),
                    Scanner::Custom(_) => false,
                };
                if member {
                    *slot = Some(a);
                }
            }
        }
    }
    for (slot, d) in out.iter_mut().zip(detectors) {
        if let Some(&a) = map.get(&d.name) {
            *slot = Some(a);
        }
    }
    Ok(())
}

/// A refused request: the error for the client and what was found.
#[derive(Debug)]
pub struct Blocked {
    pub error: ApiError,
    pub counts: Vec<Detection>,
}

/// Every text of a chat request a person or a tool wrote: message `content` (a string or its
/// `text` parts, tool results included), `tool_calls[].function.arguments` and the legacy
/// `function_call.arguments`.
fn for_each_request_text(doc: &mut Value, f: &mut dyn FnMut(&mut String)) {
    let Some(messages) = doc.get_mut("messages").and_then(Value::as_array_mut) else { return };
    for m in messages {
        match m.get_mut("content") {
            Some(Value::String(s)) => f(s),
            Some(Value::Array(parts)) => {
                for p in parts {
                    if let Some(Value::String(s)) = p.get_mut("text") {
                        f(s);
                    }
                }
            }
            _ => {}
        }
        if let Some(calls) = m.get_mut("tool_calls").and_then(Value::as_array_mut) {
            for c in calls {
                if let Some(Value::String(s)) = c.get_mut("function").and_then(|f| f.get_mut("arguments")) {
                    f(s);
                }
            }
        }
        if let Some(Value::String(s)) = m.get_mut("function_call").and_then(|f| f.get_mut("arguments")) {
            f(s);
        }
    }
}

/// The answer side of one request: placeholders to restore, answer scanning, counts.
#[derive(Debug)]
pub struct RequestGuard {
    settings: Settings,
    /// The rewritten request body, when something was redacted (taken by the filter).
    pub body: Option<Vec<u8>>,
    /// `(placeholder, original)`, only when restoring.
    placeholders: Vec<(String, String)>,
    pub counts: Vec<Detection>,
    stream: Option<Box<stream::StreamGuard>>,
    window: usize,
}

/// The longest placeholder the answer side looks for (`[` + tag of up to 40 + `_` + number + `]`).
pub const MAX_PLACEHOLDER: usize = 56;

impl RequestGuard {
    /// Whether the answer needs to pass through the guard.
    pub fn wants_answer(&self) -> bool {
        (self.settings.scan_answers && self.settings.answer_actions.iter().any(Option::is_some)) || !self.placeholders.is_empty()
    }

    /// Rewrites a whole (OpenAI-shaped) answer: scanned, then placeholders restored. `None` when
    /// nothing changed.
    pub fn answer_body(&mut self, g: &Guardrails, body: &[u8]) -> Option<Vec<u8>> {
        if !self.wants_answer() {
            return None;
        }
        let mut doc = serde_json::from_slice::<Value>(body).ok()?;
        let mut changed = false;
        let choices = doc.get_mut("choices").and_then(Value::as_array_mut)?;
        for c in choices {
            let Some(msg) = c.get_mut("message") else { continue };
            if let Some(Value::String(s)) = msg.get_mut("content") {
                changed |= self.answer_text(g, s, false);
            }
            if let Some(calls) = msg.get_mut("tool_calls").and_then(Value::as_array_mut) {
                for call in calls {
                    if let Some(Value::String(s)) = call.get_mut("function").and_then(|f| f.get_mut("arguments")) {
                        changed |= self.answer_text(g, s, true);
                    }
                }
            }
        }
        if changed {
            serde_json::to_vec(&doc).ok()
        } else {
            None
        }
    }

    /// Scans and restores one whole text of the answer; `json` when it is JSON text (tool
    /// arguments), where restored values are escaped.
    fn answer_text(&mut self, g: &Guardrails, s: &mut String, json: bool) -> bool {
        let mut changed = false;
        if self.scanning() {
            let (masked, n) = self.scan_answer(g, s);
            if n > 0 {
                *s = masked;
                changed = true;
            }
        }
        if !self.placeholders.is_empty() {
            if let Some(r) = restore(s, &self.placeholders, json) {
                *s = r;
                changed = true;
            }
        }
        changed
    }

    /// Masks what the detectors find in answer text (`block` and `redact` both mask: an answer
    /// is never refused) and counts it. Returns the new text and how many were masked.
    fn scan_answer(&mut self, g: &Guardrails, text: &str) -> (String, usize) {
        let mut matches = Vec::new();
        let actions = &self.settings.answer_actions;
        g.find(text, |i| actions.get(i).copied().flatten().is_some(), &mut matches);
        let masked = matches.iter().filter(|&&(_, _, d)| matches!(actions.get(d).copied().flatten(), Some(Action::Block | Action::Redact))).count();
        (self.mask(g, text, &matches), masked)
    }

    /// Counts `matches` (sorted, not overlapping) and returns `text` with the masked ones replaced.
    fn mask(&mut self, g: &Guardrails, text: &str, matches: &[(usize, usize, usize)]) -> String {
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for &(s, e, d) in matches {
            let Some(action) = self.settings.answer_actions.get(d).copied().flatten() else { continue };
            let det = g.detectors.get(d);
            let name = det.map_or("", |x| x.name.as_str());
            match action {
                Action::Log | Action::Off => add_count(&mut self.counts, name, "log", "answer", 1),
                Action::Block | Action::Redact => {
                    add_count(&mut self.counts, name, "redact", "answer", 1);
                    out.push_str(text.get(last..s).unwrap_or_default());
                    out.push_str("[REDACTED_");
                    out.push_str(det.map_or("", |x| x.tag.as_str()));
                    out.push(']');
                    last = e;
                }
            }
        }
        out.push_str(text.get(last..).unwrap_or_default());
        out
    }

    /// Passes an OpenAI SSE stream (what the gateway is about to send) through the guard.
    pub fn stream_push(&mut self, g: &Guardrails, input: &[u8], out: &mut Vec<u8>) {
        let mut st = self.stream.take().unwrap_or_else(|| Box::new(stream::StreamGuard::new(self.window)));
        st.push(self, g, input, out);
        self.stream = Some(st);
    }

    /// The end of the stream: whatever is still held back goes out.
    pub fn stream_finish(&mut self, g: &Guardrails, out: &mut Vec<u8>) {
        if let Some(mut st) = self.stream.take() {
            st.finish(self, g, out);
        }
    }

    /// Whether answers are scanned.
    fn scanning(&self) -> bool {
        self.settings.scan_answers && self.settings.answer_actions.iter().any(Option::is_some)
    }

    /// Whether restoring is on with something to restore.
    fn restoring(&self) -> bool {
        !self.placeholders.is_empty()
    }
}

/// Replaces every known placeholder in `text`; `None` when there is none. In JSON text the
/// original is escaped as a JSON string's content.
pub fn restore(text: &str, placeholders: &[(String, String)], json: bool) -> Option<String> {
    // placeholder -> original, so an answer with many brackets costs one lookup per bracket.
    let index: std::collections::HashMap<&str, &str> = placeholders.iter().map(|(p, o)| (p.as_str(), o.as_str())).collect();
    let b = text.as_bytes();
    let mut out: Option<String> = None;
    let mut last = 0;
    for open in memchr::memchr_iter(b'[', b) {
        if open < last {
            continue;
        }
        let tail = b.get(open..).unwrap_or_default();
        let Some(close) = tail.iter().take(MAX_PLACEHOLDER).position(|&c| c == b']') else { continue };
        let cand = text.get(open..open + close + 1).unwrap_or_default();
        if let Some(&original) = index.get(cand) {
            let o = out.get_or_insert_with(|| String::with_capacity(text.len() + 32));
            o.push_str(text.get(last..open).unwrap_or_default());
            if json {
                let quoted = serde_json::to_string(original).unwrap_or_default();
                o.push_str(quoted.get(1..quoted.len().saturating_sub(1)).unwrap_or_default());
            } else {
                o.push_str(original);
            }
            last = open + close + 1;
        }
    }
    let mut o = out?;
    o.push_str(text.get(last..).unwrap_or_default());
    Some(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guardrails(json: &str) -> Guardrails {
        Guardrails::new(serde_json::from_str(json).unwrap()).unwrap()
    }

    fn body(content: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"model": "m", "messages": [{"role": "user", "content": content}]})).unwrap()
    }

    fn sent_content(guard: &RequestGuard) -> String {
        let v: Value = serde_json::from_slice(guard.body.as_ref().unwrap()).unwrap();
        v["messages"][0]["content"].as_str().unwrap().to_string()
    }

    #[test]
    fn redacts_with_typed_numbered_placeholders() {
        let g = guardrails(r#"{"detectors": {"email": "redact", "phone": "redact"}, "restore": true}"#);
        let s = g.settings_for(None, None, "r").unwrap();
        let guard = g.check_request(s, &body("Mail a@x.io, b@y.io or a@x.io; call +1 415 555 2671")).unwrap();
        assert_eq!(sent_content(&guard), "Mail [EMAIL_1], [EMAIL_2] or [EMAIL_1]; call [PHONE_1]");
        assert_eq!(guard.counts, vec![
            Detection { detector: "email".into(), action: "redact", direction: "request", count: 3 },
            Detection { detector: "phone".into(), action: "redact", direction: "request", count: 1 },
        ]);
        assert!(guard.wants_answer());
    }

    #[test]
    fn covers_parts_tool_results_and_tool_arguments() {
        let g = guardrails(r#"{"detectors": {"email": "redact"}}"#);
        let s = g.settings_for(None, None, "r").unwrap();
        let req = serde_json::json!({"model": "m", "messages": [
            {"role": "user", "content": [{"type": "text", "text": "to a@x.io"}, {"type": "image_url", "image_url": {"url": "https://a@x.io/i.png"}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "send", "arguments": "{\"to\":\"b@x.io\"}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": "sent to b@x.io"}
        ]});
        let guard = g.check_request(s, &serde_json::to_vec(&req).unwrap()).unwrap();
        let v: Value = serde_json::from_slice(guard.body.as_ref().unwrap()).unwrap();
        assert_eq!(v["messages"][0]["content"][0]["text"], "to [EMAIL_1]");
        // An image URL is not text a person wrote: left alone.
        assert_eq!(v["messages"][0]["content"][1]["image_url"]["url"], "https://a@x.io/i.png");
        assert_eq!(v["messages"][1]["tool_calls"][0]["function"]["arguments"], "{\"to\":\"[EMAIL_2]\"}");
        assert_eq!(v["messages"][2]["content"], "sent to [EMAIL_2]");
        // Without `restore`, nothing is kept for the answer.
        assert!(!guard.wants_answer());
    }

    #[test]
    fn block_names_the_detector_never_the_match() {
        let g = guardrails(r#"{"detectors": {"secrets": "block", "email": "redact"}}"#);
        let s = g.settings_for(None, None, "r").unwrap();
        let err = g.check_request(s, &body("my key AKIAIOSFODNN7EXAMPLE, mail a@x.io")).unwrap_err();
        let json = String::from_utf8(err.error.to_json()).unwrap();
        assert_eq!(err.error.status, 400);
        assert!(json.contains("aws_access_key"), "{json}");
        assert!(!json.contains("AKIAIOSFODNN7EXAMPLE") && !json.contains("a@x.io"), "{json}");
        assert!(err.counts.iter().any(|d| d.detector == "aws_access_key" && d.action == "block"));
    }

    #[test]
    fn log_only_counts_and_leaves_the_body() {
        let g = guardrails(r#"{"detectors": {"ip_address": "log"}}"#);
        let s = g.settings_for(None, None, "r").unwrap();
        let guard = g.check_request(s, &body("from 10.1.2.3 and 10.1.2.4")).unwrap();
        assert!(guard.body.is_none());
        assert_eq!(summary(&guard.counts, "request"), "ip_address:log:2");
    }

    #[test]
    fn custom_patterns_and_config_mistakes() {
        let g = guardrails(r#"{"custom": [{"name": "employee_id", "pattern": "EMP-[0-9]{6}", "action": "redact"}]}"#);
        let s = g.settings_for(None, None, "r").unwrap();
        let guard = g.check_request(s, &body("ask EMP-123456 not EMP-12345")).unwrap();
        assert_eq!(sent_content(&guard), "ask [EMPLOYEE_ID_1] not EMP-12345");
        for bad in [
            r#"{"detectors": {"emial": "redact"}}"#,
            r#"{"detectors": {"email": "off"}}"#,
            r#"{"custom": [{"name": "x", "pattern": "(", "action": "log"}]}"#,
            r#"{"custom": [{"name": "x", "pattern": "a*", "action": "log"}]}"#,
            r#"{"custom": [{"name": "email", "pattern": "a", "action": "log"}]}"#,
            r#"{"custom": [{"name": "Bad Name", "pattern": "a", "action": "log"}]}"#,
            r#"{"answers": {"scan": true, "window_bytes": 0}}"#,
        ] {
            assert!(Guardrails::new(serde_json::from_str(bad).unwrap()).is_err(), "{bad}");
        }
    }

    #[test]
    fn overrides_by_key_team_and_route() {
        let g = guardrails(
            r#"{"detectors": {"pii": "redact"},
                "overrides": [
                  {"teams": ["research"], "detectors": {"email": "log"}},
                  {"keys": ["trusted-*"], "enabled": false},
                  {"routes": ["secure-*"], "detectors": {"secrets": "block"}, "restore": true}
                ]}"#,
        );
        let email = |s: &Settings| s.actions[BUILTINS.iter().position(|k| *k == Kind::Email).unwrap()];
        let aws = |s: &Settings| s.actions[BUILTINS.iter().position(|k| *k == Kind::AwsAccessKey).unwrap()];
        let base = g.settings_for(Some("k"), None, "chat").unwrap();
        assert_eq!((email(&base), aws(&base), base.restore), (Some(Action::Redact), None, false));
        let research = g.settings_for(Some("k"), Some("research"), "chat").unwrap();
        assert_eq!(email(&research), Some(Action::Log));
        assert!(g.settings_for(Some("trusted-1"), Some("research"), "chat").is_none());
        let secure = g.settings_for(Some("k"), Some("research"), "secure-chat").unwrap();
        assert_eq!((email(&secure), aws(&secure), secure.restore), (Some(Action::Log), Some(Action::Block), true));
        // Nothing configured at all: off.
        assert!(guardrails("{}").settings_for(None, None, "r").is_none());
    }

    #[test]
    fn restores_placeholders_in_whole_answers() {
        let g = guardrails(r#"{"detectors": {"email": "redact"}, "restore": true}"#);
        let s = g.settings_for(None, None, "r").unwrap();
        let mut guard = g.check_request(s, &body("write to a\"q@x.io")).unwrap();
        assert_eq!(sent_content(&guard), "write to a\"[EMAIL_1]");
        let answer = serde_json::json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "Sure, [EMAIL_1] and [EMAIL_9] [x]",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "send", "arguments": "{\"to\":\"[EMAIL_1]\"}"}}]}}]});
        let out = guard.answer_body(&g, &serde_json::to_vec(&answer).unwrap()).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        // The e-mail was `q@x.io` (the quote is not part of it).
        assert_eq!(v["choices"][0]["message"]["content"], "Sure, q@x.io and [EMAIL_9] [x]");
        assert_eq!(v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], "{\"to\":\"q@x.io\"}");
        assert_eq!(restore("x \"[A_1]\"", &[("[A_1]".into(), "a\"b".into())], true).unwrap(), "x \"a\\\"b\"");
    }

    #[test]
    fn scans_whole_answers() {
        let g = guardrails(r#"{"detectors": {"secrets": "block", "ip_address": "log"}, "answers": {"scan": true}}"#);
        let s = g.settings_for(None, None, "r").unwrap();
        let mut guard = g.check_request(s, &body("hello")).unwrap();
        assert!(guard.counts.is_empty() && guard.wants_answer());
        let answer = serde_json::json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "use AKIAIOSFODNN7EXAMPLE on 10.0.0.1"}}]});
        let out = guard.answer_body(&g, &serde_json::to_vec(&answer).unwrap()).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "use [REDACTED_AWS_ACCESS_KEY] on 10.0.0.1");
        assert_eq!(summary(&guard.counts, "answer"), "aws_access_key:redact:1,ip_address:log:1");
    }

    #[test]
    fn answers_may_have_their_own_actions() {
        let g = guardrails(
            r#"{"detectors": {"secrets": "block"}, "answers": {"scan": true, "detectors": {"secrets": "redact"}},
                "overrides": [{"keys": ["lenient"], "detectors": {"secrets": "log"}}]}"#,
        );
        let mut guard = g.check(Some("lenient"), None, "r", &body("keep AKIAIOSFODNN7EXAMPLE")).unwrap().unwrap();
        assert!(guard.body.is_none());
        assert_eq!(summary(&guard.counts, "request"), "aws_access_key:log:1");
        let answer = serde_json::json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "keep AKIAIOSFODNN7EXAMPLE"}}]});
        let out = guard.answer_body(&g, &serde_json::to_vec(&answer).unwrap()).unwrap();
        assert!(String::from_utf8(out).unwrap().contains("keep [REDACTED_AWS_ACCESS_KEY]"));
        assert!(g.check(Some("other"), None, "r", &body("keep AKIAIOSFODNN7EXAMPLE")).is_err());
    }

    #[test]
    fn overlapping_detectors_keep_one_match() {
        let g = guardrails(r#"{"detectors": {"all": "redact"}}"#);
        let s = g.settings_for(None, None, "r").unwrap();
        // A card number is not also a phone number; an IP is not a phone number.
        let guard = g.check_request(s, &body("4111 1111 1111 1111 / 192.168.100.200")).unwrap();
        assert_eq!(sent_content(&guard), "[CREDIT_CARD_1] / [IP_ADDRESS_1]");
    }
}
