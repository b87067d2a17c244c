//! The exact cache's key: a canonical form of a chat request, hashed with its scope.
//!
//! Two requests share a key when a provider would see the same question: same resolved model, same
//! messages, tools and sampling parameters. What only shapes the delivery (`stream`,
//! `stream_options`) or identifies the caller (`user`, `metadata`, `store`) is left out, object keys
//! are sorted, numbers are written one way (`1`, `1.0` and `1e0` are one number) and parameters at
//! their documented default (`n: 1`, `top_p: 1`, penalties `0`) count as absent.

use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

/// Fields that never change an answer's content.
const IGNORED: &[&str] = &["stream", "stream_options", "user", "metadata", "store"];

/// Why a request is not looked up in the cache (it goes upstream, `x-switchyard-cache: bypass`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Not a JSON object (the gateway's own parse would have refused it already).
    Unparsable,
    /// `temperature` absent (providers default to sampling) or above 0, and sampled answers are not
    /// cached by the configuration.
    Sampled,
}

/// Who may share an entry: a virtual key, a team, or everyone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Key(String),
    Team(String),
    Global,
}

impl Scope {
    fn tag(&self) -> Vec<u8> {
        // Length-prefixed so that no key id can pose as another scope's tag.
        let (kind, id) = match self {
            Scope::Key(k) => (b'k', k.as_str()),
            Scope::Team(t) => (b't', t.as_str()),
            Scope::Global => (b'g', ""),
        };
        let mut v = Vec::with_capacity(id.len() + 9);
        v.push(kind);
        v.extend_from_slice(&(id.len() as u64).to_le_bytes());
        v.extend_from_slice(id.as_bytes());
        v
    }
}

/// The canonical bytes of a chat request body, its model replaced by the resolved one.
pub fn canonical_request(body: &[u8], resolved_model: &str, cache_sampled: bool) -> Result<Vec<u8>, Skip> {
    let obj = prepare(body, resolved_model, cache_sampled)?;
    let mut out = Vec::with_capacity(body.len());
    write_canonical(&Value::Object(obj), &mut out);
    Ok(out)
}

/// For the semantic cache: the canonical request with the text of its last user message taken
/// out (what must match exactly: model, history, system prompt, tools, parameters), and that text
/// (what may be paraphrased). `None` when the last message is not a user message with text.
pub fn semantic_parts(body: &[u8], resolved_model: &str, cache_sampled: bool) -> Option<(Vec<u8>, String)> {
    let mut obj = prepare(body, resolved_model, cache_sampled).ok()?;
    let last = obj.get_mut("messages")?.as_array_mut()?.last_mut()?.as_object_mut()?;
    if last.get("role").and_then(Value::as_str) != Some("user") {
        return None;
    }
    let text = match last.get("content")? {
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            // Text parts only; a message with anything else (an image) is not paraphrasable.
            let mut t = String::new();
            for p in parts {
                if p.get("type").and_then(Value::as_str) != Some("text") {
                    return None;
                }
                if !t.is_empty() {
                    t.push('\n');
                }
                t.push_str(p.get("text").and_then(Value::as_str)?);
            }
            t
        }
        _ => return None,
    };
    if text.trim().is_empty() {
        return None;
    }
    last.insert("content".to_string(), Value::Null);
    let mut out = Vec::with_capacity(body.len());
    write_canonical(&Value::Object(obj), &mut out);
    Some((out, text))
}

fn prepare(body: &[u8], resolved_model: &str, cache_sampled: bool) -> Result<Map<String, Value>, Skip> {
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(body) else {
        return Err(Skip::Unparsable);
    };
    let deterministic = matches!(obj.get("temperature").and_then(Value::as_f64), Some(t) if t <= 0.0);
    if !deterministic && !cache_sampled {
        return Err(Skip::Sampled);
    }
    for f in IGNORED {
        obj.remove(*f);
    }
    for (field, default) in [("n", 1.0), ("top_p", 1.0), ("frequency_penalty", 0.0), ("presence_penalty", 0.0)] {
        if obj.get(field).and_then(Value::as_f64) == Some(default) {
            obj.remove(field);
        }
    }
    obj.insert("model".to_string(), Value::String(resolved_model.to_string()));
    Ok(obj)
}

/// The semantic partition: a scope's requests that differ at most in their last user message.
pub fn partition_key(scope: &Scope, without_last: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"switchyard-semantic-v1\0");
    h.update(scope.tag());
    h.update(without_last);
    h.finalize().into()
}

/// The entry's key: SHA-256 over a version, the scope and the canonical request.
pub fn cache_key(scope: &Scope, canonical: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"switchyard-cache-v1\0");
    h.update(scope.tag());
    h.update(canonical);
    h.finalize().into()
}

fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => write_number(n, out),
        Value::String(s) => write_string(s, out),
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(x, out);
            }
            out.push(b']');
        }
        Value::Object(m) => write_object(m, out),
    }
}

fn write_object(m: &Map<String, Value>, out: &mut Vec<u8>) {
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort_unstable();
    out.push(b'{');
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(k, out);
        out.push(b':');
        if let Some(x) = m.get(k) {
            write_canonical(x, out);
        }
    }
    out.push(b'}');
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    // serde_json's string escaping is deterministic; a string always serialises.
    match serde_json::to_vec(s) {
        Ok(v) => out.extend_from_slice(&v),
        Err(_) => out.extend_from_slice(b"\"\""),
    }
}

fn write_number(n: &Number, out: &mut Vec<u8>) {
    if let Some(i) = n.as_i64() {
        out.extend_from_slice(i.to_string().as_bytes());
    } else if let Some(u) = n.as_u64() {
        out.extend_from_slice(u.to_string().as_bytes());
    } else if let Some(f) = n.as_f64() {
        if f.fract() == 0.0 && f.abs() < 9.0e15 {
            out.extend_from_slice((f as i64).to_string().as_bytes());
        } else {
            out.extend_from_slice(format!("{f:?}").as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(body: &str) -> Vec<u8> {
        canonical_request(body.as_bytes(), "gpt-4o-mini", false).expect("cacheable")
    }

    #[test]
    fn same_question_same_key_whatever_the_delivery() {
        let a = canon(r#"{"model":"fast","temperature":0,"messages":[{"role":"user","content":"Hi"}]}"#);
        let b = canon(
            r#"{ "messages": [ {"content":"Hi", "role":"user"} ], "temperature": 0.0, "stream": true,
                "stream_options": {"include_usage": true}, "user": "u1", "model": "gpt-4o-mini", "n": 1, "top_p": 1.0 }"#,
        );
        assert_eq!(String::from_utf8_lossy(&a), String::from_utf8_lossy(&b));
        assert_eq!(
            String::from_utf8_lossy(&a),
            r#"{"messages":[{"content":"Hi","role":"user"}],"model":"gpt-4o-mini","temperature":0}"#
        );
    }

    #[test]
    fn anything_that_changes_the_answer_changes_the_key() {
        let base = r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"Hi"}]}"#;
        let variants = [
            r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"Hi!"}]}"#,
            r#"{"model":"m","temperature":0,"messages":[{"role":"system","content":"Hi"}]}"#,
            r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"Hi"}],"max_tokens":5}"#,
            r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"Hi"}],"n":2}"#,
            r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"Hi"}],"seed":1}"#,
            r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"Hi"}],"response_format":{"type":"json_object"}}"#,
            r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"Hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}"#,
            r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"Hi"}],"tool_choice":"required"}"#,
            r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"Hi"}],"top_p":0.5}"#,
            r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"Hi"},{"role":"user","content":"Hi"}]}"#,
        ];
        let k0 = cache_key(&Scope::Global, &canon(base));
        for v in variants {
            assert_ne!(cache_key(&Scope::Global, &canon(v)), k0, "{v}");
        }
        // Another resolved model is another question.
        let other = canonical_request(base.as_bytes(), "claude-haiku", false).unwrap();
        assert_ne!(cache_key(&Scope::Global, &other), k0);
    }

    #[test]
    fn scopes_never_share_a_key() {
        let c = canon(r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"Hi"}]}"#);
        let keys = [
            cache_key(&Scope::Key("a".into()), &c),
            cache_key(&Scope::Key("b".into()), &c),
            cache_key(&Scope::Team("a".into()), &c),
            cache_key(&Scope::Team("b".into()), &c),
            cache_key(&Scope::Global, &c),
        ];
        for i in 0..keys.len() {
            for j in 0..i {
                assert_ne!(keys[i], keys[j], "{i} {j}");
            }
        }
        // Same scope, same request: same key.
        assert_eq!(cache_key(&Scope::Key("a".into()), &c), keys[0]);
    }

    #[test]
    fn sampled_requests_are_cached_only_when_configured() {
        for body in [
            r#"{"model":"m","messages":[]}"#,
            r#"{"model":"m","temperature":0.7,"messages":[]}"#,
            r#"{"model":"m","temperature":"0","messages":[]}"#,
        ] {
            assert_eq!(canonical_request(body.as_bytes(), "m", false), Err(Skip::Sampled), "{body}");
            assert!(canonical_request(body.as_bytes(), "m", true).is_ok(), "{body}");
        }
        assert_eq!(canonical_request(b"[1]", "m", true), Err(Skip::Unparsable));
        assert_eq!(canonical_request(b"{", "m", true), Err(Skip::Unparsable));
    }

    #[test]
    fn semantic_parts_split_the_last_user_message_from_the_rest() {
        let a = r#"{"model":"m","temperature":0,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"What is the capital of France?"}]}"#;
        let b = r#"{"model":"m","temperature":0,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Which city is France's capital?"}]}]}"#;
        let (pa, ta) = semantic_parts(a.as_bytes(), "gpt", false).unwrap();
        let (pb, tb) = semantic_parts(b.as_bytes(), "gpt", false).unwrap();
        assert_eq!(pa, pb, "same partition: only the question differs");
        assert_eq!((ta.as_str(), tb.as_str()), ("What is the capital of France?", "Which city is France's capital?"));
        // Another system prompt, model or scope: another partition.
        let c = a.replace("Be brief.", "Be verbose.");
        assert_ne!(semantic_parts(c.as_bytes(), "gpt", false).unwrap().0, pa);
        assert_ne!(semantic_parts(a.as_bytes(), "other", false).unwrap().0, pa);
        assert_ne!(partition_key(&Scope::Key("a".into()), &pa), partition_key(&Scope::Key("b".into()), &pa));
        // Not a user question with text: no semantic lookup.
        for body in [
            r#"{"model":"m","temperature":0,"messages":[{"role":"assistant","content":"Hi"}]}"#,
            r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#,
            r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"  "}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"Hi"}]}"#,
        ] {
            assert!(semantic_parts(body.as_bytes(), "m", false).is_none(), "{body}");
        }
    }

    #[test]
    fn numbers_and_unicode_are_written_one_way() {
        let a = canon(r#"{"model":"m","temperature":0,"max_tokens":10,"messages":[{"role":"user","content":"\u00e9\n"}],"x":1.5e0}"#);
        let b = canon(r#"{"model":"m","temperature":-0.0,"max_tokens":1e1,"messages":[{"role":"user","content":"é\u000a"}],"x":1.50}"#);
        assert_eq!(String::from_utf8_lossy(&a), String::from_utf8_lossy(&b));
    }
}
