//! An ordered document tree and its YAML and JSON writers, for the rendered Envoy and Istio
//! configurations (native command line only; never in the filter).
//!
//! Keys keep the order they were built in (serde_json's maps sort them), small collections are
//! written in flow style (`{ a: 1, b: 2 }`), repeated large subtrees become YAML anchors and
//! aliases (as a hand-written Envoy file would have them), and a multi-line string becomes a
//! literal block. Every scalar that YAML could read as something else is quoted.

use std::collections::HashSet;
use std::fmt::Write;

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Node>),
    Map(Vec<(String, Node)>),
}

impl From<&str> for Node {
    fn from(s: &str) -> Node {
        Node::Str(s.to_string())
    }
}
impl From<String> for Node {
    fn from(s: String) -> Node {
        Node::Str(s)
    }
}
impl From<&String> for Node {
    fn from(s: &String) -> Node {
        Node::Str(s.clone())
    }
}
impl From<bool> for Node {
    fn from(b: bool) -> Node {
        Node::Bool(b)
    }
}
impl From<i64> for Node {
    fn from(i: i64) -> Node {
        Node::Int(i)
    }
}
impl From<u64> for Node {
    fn from(i: u64) -> Node {
        Node::Int(i64::try_from(i).unwrap_or(i64::MAX))
    }
}
impl From<u32> for Node {
    fn from(i: u32) -> Node {
        Node::Int(i64::from(i))
    }
}
impl From<u16> for Node {
    fn from(i: u16) -> Node {
        Node::Int(i64::from(i))
    }
}
impl From<usize> for Node {
    fn from(i: usize) -> Node {
        Node::Int(i64::try_from(i).unwrap_or(i64::MAX))
    }
}
impl From<Vec<Node>> for Node {
    fn from(v: Vec<Node>) -> Node {
        Node::List(v)
    }
}

/// A map from `(key, value)` pairs: `map([("a", 1.into()), …])`.
pub fn map<const N: usize>(pairs: [(&str, Node); N]) -> Node {
    Node::Map(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// A list of strings.
pub fn strs<S: AsRef<str>>(items: &[S]) -> Node {
    Node::List(items.iter().map(|s| Node::Str(s.as_ref().to_string())).collect())
}

impl Node {
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        match self {
            Node::Map(m) => m.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Sets `key` (replacing its value in place, or appending it).
    pub fn set(&mut self, key: &str, value: Node) {
        if let Node::Map(m) = self {
            match m.iter_mut().find(|(k, _)| k == key) {
                Some((_, v)) => *v = value,
                None => m.push((key.to_string(), value)),
            }
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<Node> {
        match self {
            Node::Map(m) => m.iter().position(|(k, _)| k == key).map(|i| m.remove(i).1),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    /// From a parsed YAML document (keeps the order of its mappings).
    pub fn from_yaml(v: &serde_yaml::Value) -> Result<Node, String> {
        Ok(match v {
            serde_yaml::Value::Null => Node::Null,
            serde_yaml::Value::Bool(b) => Node::Bool(*b),
            serde_yaml::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => Node::Int(i),
                (None, Some(f)) => Node::Float(f),
                _ => return Err(format!("number {n} is out of range")),
            },
            serde_yaml::Value::String(s) => Node::Str(s.clone()),
            serde_yaml::Value::Sequence(s) => Node::List(s.iter().map(Node::from_yaml).collect::<Result<_, _>>()?),
            serde_yaml::Value::Mapping(m) => {
                let mut out = Vec::with_capacity(m.len());
                for (k, v) in m {
                    let key = match k {
                        serde_yaml::Value::String(s) => s.clone(),
                        other => return Err(format!("a mapping key must be a string, not {other:?}")),
                    };
                    out.push((key, Node::from_yaml(v)?));
                }
                Node::Map(out)
            }
            serde_yaml::Value::Tagged(t) => return Err(format!("YAML tags ({}) are not supported", t.tag)),
        })
    }

    /// As serde_json data (keys sorted), for checks that read the document.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(*b),
            Node::Int(i) => Value::from(*i),
            Node::Float(f) => serde_json::Number::from_f64(*f).map(Value::Number).unwrap_or(Value::Null),
            Node::Str(s) => Value::String(s.clone()),
            Node::List(l) => Value::Array(l.iter().map(Node::to_json).collect()),
            Node::Map(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// JSON

/// Compact JSON with `", "` and `": "` separators, keys in order.
pub fn json_compact(n: &Node, out: &mut String) {
    match n {
        Node::Null => out.push_str("null"),
        Node::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Node::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Node::Float(f) => out.push_str(&serde_json::Number::from_f64(*f).map(|n| n.to_string()).unwrap_or_else(|| "null".into())),
        Node::Str(s) => out.push_str(&json_string(s)),
        Node::List(l) => {
            out.push('[');
            for (i, v) in l.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                json_compact(v, out);
            }
            out.push(']');
        }
        Node::Map(m) => {
            out.push('{');
            for (i, (k, v)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&json_string(k));
                out.push_str(": ");
                json_compact(v, out);
            }
            out.push('}');
        }
    }
}

/// A plugin configuration as people write it: one line per top-level field, and one line per
/// element of a top-level list or map (`"models": [` then one model per line).
pub fn json_plugin(n: &Node) -> String {
    let mut out = String::new();
    let Node::Map(m) = n else {
        json_compact(n, &mut out);
        out.push('\n');
        return out;
    };
    out.push_str("{\n");
    for (i, (k, v)) in m.iter().enumerate() {
        out.push_str("  ");
        out.push_str(&json_string(k));
        out.push_str(": ");
        match v {
            Node::List(l) if !l.is_empty() && l.iter().any(|e| matches!(e, Node::Map(_) | Node::List(_))) => {
                out.push_str("[\n");
                for (j, e) in l.iter().enumerate() {
                    out.push_str("    ");
                    json_compact(e, &mut out);
                    out.push_str(if j + 1 < l.len() { ",\n" } else { "\n" });
                }
                out.push_str("  ]");
            }
            Node::Map(mm) if !mm.is_empty() && mm.iter().any(|(_, e)| matches!(e, Node::Map(_) | Node::List(_))) => {
                out.push_str("{\n");
                for (j, (kk, e)) in mm.iter().enumerate() {
                    out.push_str("    ");
                    out.push_str(&json_string(kk));
                    out.push_str(": ");
                    json_compact(e, &mut out);
                    out.push_str(if j + 1 < mm.len() { ",\n" } else { "\n" });
                }
                out.push_str("  }");
            }
            _ => json_compact(v, &mut out),
        }
        out.push_str(if i + 1 < m.len() { ",\n" } else { "\n" });
    }
    out.push_str("}\n");
    out
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

// ------------------------------------------------------------------------------------------------
// YAML

/// Subtrees at least this long (as compact JSON) that occur more than once become anchors.
const ANCHOR_MIN: usize = 160;
/// Collections whose flow form fits this many characters are written in flow style.
const FLOW_MAX: usize = 110;

/// The document as YAML, after `header` (comment lines, each starting with `#`).
pub fn to_yaml(doc: &Node, header: &str) -> String {
    let mut w = Writer { out: String::new(), anchors: Vec::new(), defined: Vec::new(), repeated: HashSet::new() };
    let mut seen = HashSet::new();
    find_repeats(doc, &mut seen, &mut w.repeated);
    w.out.push_str(header);
    if let Node::Map(m) = doc {
        w.map_entries(m, 0);
    } else {
        w.value_after_key(doc, 0);
    }
    w.out
}

fn canon(n: &Node) -> String {
    let mut s = String::new();
    json_compact(n, &mut s);
    s
}

/// Walks in document order: a large subtree seen before is repeated (an alias will stand for it,
/// so its inside is not walked again).
fn find_repeats(n: &Node, seen: &mut HashSet<String>, repeated: &mut HashSet<String>) {
    let children: Vec<&Node> = match n {
        Node::Map(m) => m.iter().map(|(_, v)| v).collect(),
        Node::List(l) => l.iter().collect(),
        _ => return,
    };
    for c in children {
        if matches!(c, Node::Map(_) | Node::List(_)) {
            let key = canon(c);
            if key.len() >= ANCHOR_MIN {
                if seen.contains(&key) {
                    repeated.insert(key);
                    continue;
                }
                seen.insert(key);
            }
        }
        find_repeats(c, seen, repeated);
    }
}

struct Writer {
    out: String,
    /// (canonical JSON, anchor name) of the anchors defined so far.
    anchors: Vec<(String, String)>,
    defined: Vec<String>,
    repeated: HashSet<String>,
}

impl Writer {
    fn indent(&mut self, n: usize) {
        for _ in 0..n {
            self.out.push(' ');
        }
    }

    fn map_entries(&mut self, m: &[(String, Node)], indent: usize) {
        for (i, (k, v)) in m.iter().enumerate() {
            if i > 0 {
                self.indent(indent);
            }
            self.out.push_str(&scalar_str(k));
            self.out.push(':');
            self.keyed_value(k, v, indent);
        }
    }

    /// After `key:` — an alias, an anchor, a scalar, a flow collection or a block.
    fn keyed_value(&mut self, key: &str, v: &Node, indent: usize) {
        if matches!(v, Node::Map(_) | Node::List(_)) {
            let c = canon(v);
            if self.repeated.contains(&c) {
                if let Some((_, name)) = self.anchors.iter().find(|(k, _)| *k == c) {
                    let _ = writeln!(self.out, " *{name}");
                    return;
                }
                let name = self.anchor_name(key);
                let _ = write!(self.out, " &{name}");
                self.anchors.push((c, name));
            }
        }
        self.value_after_key(v, indent);
    }

    fn anchor_name(&mut self, key: &str) -> String {
        let base: String = key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
        let base = if base.is_empty() { "anchor".to_string() } else { base };
        let mut name = base.clone();
        let mut i = 2;
        while self.defined.contains(&name) {
            name = format!("{base}_{i}");
            i += 1;
        }
        self.defined.push(name.clone());
        name
    }

    fn value_after_key(&mut self, v: &Node, indent: usize) {
        match v {
            Node::Map(m) if m.is_empty() => self.out.push_str(" {}\n"),
            Node::List(l) if l.is_empty() => self.out.push_str(" []\n"),
            Node::Map(_) | Node::List(_) => {
                if let Some(flow) = flow(v) {
                    if indent + flow.len() <= FLOW_MAX + 20 {
                        self.out.push(' ');
                        self.out.push_str(&flow);
                        self.out.push('\n');
                        return;
                    }
                }
                self.out.push('\n');
                match v {
                    Node::Map(m) => {
                        self.indent(indent + 2);
                        self.map_entries(m, indent + 2);
                    }
                    Node::List(l) => self.list_items(l, indent),
                    _ => {}
                }
            }
            Node::Str(s) if literal_ok(s) => {
                self.out.push_str(" |\n");
                for line in s.trim_end_matches('\n').split('\n') {
                    if !line.is_empty() {
                        self.indent(indent + 2);
                        self.out.push_str(line);
                    }
                    self.out.push('\n');
                }
            }
            scalar => {
                self.out.push(' ');
                self.out.push_str(&scalar_text(scalar));
                self.out.push('\n');
            }
        }
    }

    /// A block sequence at the same indentation as its key (`key:\n- a`).
    fn list_items(&mut self, l: &[Node], indent: usize) {
        for item in l {
            self.indent(indent);
            self.out.push('-');
            match item {
                Node::Map(m) if !m.is_empty() && flow(item).is_none_or(|f| indent + f.len() > FLOW_MAX) => {
                    self.out.push(' ');
                    self.map_entries(m, indent + 2);
                }
                Node::List(_) if flow(item).is_none_or(|f| indent + f.len() > FLOW_MAX) => {
                    // A nested block list: rare in Envoy configuration; written as flow JSON.
                    self.out.push(' ');
                    let mut s = String::new();
                    json_compact(item, &mut s);
                    self.out.push_str(&s);
                    self.out.push('\n');
                }
                other => self.value_after_key(other, indent),
            }
        }
    }
}

/// The flow form of a collection of scalars and small collections, or None.
fn flow(n: &Node) -> Option<String> {
    fn go(n: &Node, depth: usize, out: &mut String) -> bool {
        if depth > 5 || out.len() > FLOW_MAX {
            return false;
        }
        match n {
            Node::Map(m) => {
                if m.is_empty() {
                    out.push_str("{}");
                    return true;
                }
                out.push_str("{ ");
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    out.push_str(&scalar_str(k));
                    out.push_str(": ");
                    if !go(v, depth + 1, out) {
                        return false;
                    }
                }
                out.push_str(" }");
                true
            }
            Node::List(l) => {
                out.push('[');
                for (i, v) in l.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    if !go(v, depth + 1, out) {
                        return false;
                    }
                }
                out.push(']');
                true
            }
            Node::Str(s) if s.contains('\n') => false,
            scalar => {
                out.push_str(&scalar_text(scalar));
                true
            }
        }
    }
    let mut out = String::new();
    (go(n, 0, &mut out) && out.len() <= FLOW_MAX).then_some(out)
}

fn literal_ok(s: &str) -> bool {
    s.contains('\n')
        && s.ends_with('\n')
        && !s.ends_with("\n\n")
        && !s.starts_with([' ', '\n'])
        && s.chars().all(|c| c == '\n' || (!c.is_control() && c != '\u{feff}'))
        && s.split('\n').all(|l| !l.ends_with(' '))
}

fn scalar_text(n: &Node) -> String {
    match n {
        Node::Null => "null".into(),
        Node::Bool(b) => b.to_string(),
        Node::Int(i) => i.to_string(),
        Node::Float(f) => serde_json::Number::from_f64(*f).map(|n| n.to_string()).unwrap_or_else(|| ".nan".into()),
        Node::Str(s) => scalar_str(s),
        Node::List(_) | Node::Map(_) => canon(n),
    }
}

/// A string as a plain scalar when nothing could read it as something else, else JSON-quoted
/// (a JSON string is a YAML double-quoted scalar).
pub fn scalar_str(s: &str) -> String {
    if plain_ok(s) {
        s.to_string()
    } else {
        json_string(s)
    }
}

fn plain_ok(s: &str) -> bool {
    const RESERVED: &[&str] = &["true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"];
    let Some(first) = s.chars().next() else { return false };
    if !(first.is_ascii_alphanumeric() || first == '/' || first == '_') {
        return false;
    }
    if !s.chars().all(|c| c.is_ascii_alphanumeric() || "_./@-+".contains(c)) {
        return false;
    }
    if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(s)) {
        return false;
    }
    if s.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    // Numbers of any YAML version (1_000, 0x1f, 1e5, .5, dates and times).
    if s.parse::<f64>().is_ok() || s.chars().all(|c| c.is_ascii_digit() || "_.:+-".contains(c)) {
        return false;
    }
    let lower = s.to_ascii_lowercase();
    if first.is_ascii_digit() && (lower.starts_with("0x") || lower.starts_with("0o") || lower.starts_with("0b")) {
        return false;
    }
    if first.is_ascii_digit() && lower.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.' || c == '_').starts_with('e') {
        let rest = lower.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.' || c == '_');
        if rest[1..].trim_start_matches(['+', '-']).chars().all(|c| c.is_ascii_digit()) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(n: &Node) {
        let text = to_yaml(n, "# header\n");
        let back: serde_yaml::Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(Node::from_yaml(&back).unwrap().to_json(), n.to_json(), "{text}");
    }

    #[test]
    fn scalars_that_yaml_would_read_otherwise_are_quoted() {
        for s in ["true", "No", "on", "null", "~", "1", "1.5", "1e5", "1_000", "0x1f", "2024-01-01", "12:30", "", " a", "a: b",
            "a#b", "-a", ".5", "*x", "&x", "!x", "[a]", "{a}", "a,b", "%x", "@x", "`x", "'x", "\"x", "inf", "NaN"] {
            assert!(!plain_ok(s), "{s:?} must be quoted");
            roundtrip(&map([("k", Node::Str(s.into())), (s, Node::Int(1))]));
        }
        for s in ["gpt-4o-mini", "600s", "127.0.0.1", "/dev/stdout", "target/wasm32-wasip1/release/switchyard.wasm", "a_b", "1m"] {
            assert!(plain_ok(s), "{s:?} may be plain");
        }
    }

    #[test]
    fn documents_read_back_as_written() {
        let big = map([
            ("name", "x".into()),
            ("list", Node::List((0..20).map(|i| map([("i", Node::Int(i)), ("s", Node::Str(format!("value number {i}")))])).collect())),
        ]);
        let doc = map([
            ("a", big.clone()),
            ("b", big.clone()),
            ("c", Node::List(vec![big.clone(), map([("inner", big)])])),
            ("text", "{\n  \"role\": \"gateway\",\n  \"x\": [1, 2]\n}\n".into()),
            ("odd", "line\n  trailing \n".into()),
            ("flow", map([("x", Node::Int(1)), ("y", Node::Bool(true)), ("z", Node::Float(0.05)), ("n", Node::Null)])),
            ("empty", Node::Map(vec![])),
            ("nested", Node::List(vec![Node::List(vec![Node::Int(1)]), Node::List((0..40i64).map(Node::Int).collect())])),
        ]);
        let text = to_yaml(&doc, "");
        assert!(text.contains("a: &a") && text.contains("b: *a"), "{text}");
        assert!(text.contains("text: |\n"), "{text}");
        roundtrip(&doc);
    }

    #[test]
    fn plugin_json_has_one_line_per_model() {
        let n = map([
            ("role", "gateway".into()),
            ("models", Node::List(vec![map([("name", "a".into()), ("aliases", strs(&["b"]))]), map([("name", "c".into())])])),
        ]);
        let s = json_plugin(&n);
        assert_eq!(s, "{\n  \"role\": \"gateway\",\n  \"models\": [\n    {\"name\": \"a\", \"aliases\": [\"b\"]},\n    {\"name\": \"c\"}\n  ]\n}\n");
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v, n.to_json());
    }
}
