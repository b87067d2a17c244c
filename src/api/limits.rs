//! Limits on what a client controls in a request body: counts of messages, tools, images, stop
//! sequences, embedding inputs and JSON values, and the lengths of the strings the gateway or a
//! provider keeps (`model`, `user`, image URLs). They bound the memory and CPU one request can take
//! inside the VM (whose memory never shrinks: wasm linear memory only grows).
//!
//! Every check is a comparison on something the parse already produced, except the count of JSON
//! values and the nesting depth, which need a scan of the bytes; that scan runs only for bodies
//! large enough to hold more values than the limit (a JSON value takes at least two bytes), or when
//! `max_json_depth` is set below what serde_json's own recursion limit allows (127 levels; deeper
//! documents are a 400 before anything recurses further), so ordinary requests never pay for it.

use serde::Deserialize;

use super::error::ApiError;

/// The gateway's `limits` object. Absent fields take the defaults below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RequestLimits {
    /// Entries of `messages` (OpenAI's own limit is 2048).
    pub max_messages: usize,
    /// Entries of `tools` (OpenAI's own limit is 128).
    pub max_tools: usize,
    /// Bytes of one tool's `parameters` schema, as compact JSON. Off (`null`) by default: measuring
    /// costs a serialisation per tool, and the body limit bounds it already.
    pub max_tool_schema_bytes: Option<usize>,
    /// `image_url` parts in all messages together.
    pub max_images: usize,
    /// Length of one `image_url.url` (a data URL holds the image: 5 MiB of base64 is about 3.9 MB,
    /// above what Anthropic (5 MB) and Bedrock (3.75 MB) take per image).
    pub max_image_url_bytes: usize,
    /// Length of `model`.
    pub max_model_bytes: usize,
    /// Length of `user`.
    pub max_user_bytes: usize,
    /// Entries of `stop`.
    pub max_stop_sequences: usize,
    /// `n`, the number of choices (each one is reserved against budgets).
    pub max_n: u32,
    /// Entries of an embeddings `input` array.
    pub max_embedding_inputs: usize,
    /// JSON values in the whole body: strings (object keys included), numbers, literals, arrays and
    /// objects. Bounds the memory a body can expand into once parsed (a one-entry object costs
    /// hundreds of bytes of tree for 8 bytes of text).
    pub max_json_values: usize,
    /// Nesting of arrays and objects (the body's own object is level 1). 127 is what serde_json's
    /// recursion limit allows, enforced by the parse itself at no cost; a lower limit scans every body.
    pub max_json_depth: usize,
}

pub const DEFAULT_LIMITS: RequestLimits = RequestLimits {
    max_messages: 2048,
    max_tools: 128,
    max_tool_schema_bytes: None,
    max_images: 500,
    max_image_url_bytes: 5 * 1024 * 1024,
    max_model_bytes: 256,
    max_user_bytes: 256,
    max_stop_sequences: 16,
    max_n: 128,
    max_embedding_inputs: 2048,
    max_json_values: 100_000,
    max_json_depth: SERDE_JSON_DEPTH,
};

/// The deepest nesting serde_json parses (its recursion limit of 128 refuses the 128th level): deeper
/// documents fail to parse, a 400.
pub const SERDE_JSON_DEPTH: usize = 127;

impl Default for RequestLimits {
    fn default() -> Self {
        DEFAULT_LIMITS
    }
}

impl RequestLimits {
    /// No limit at all: what the backend role parses with (the gateway has checked the body).
    pub const UNLIMITED: RequestLimits = RequestLimits {
        max_messages: usize::MAX,
        max_tools: usize::MAX,
        max_tool_schema_bytes: None,
        max_images: usize::MAX,
        max_image_url_bytes: usize::MAX,
        max_model_bytes: usize::MAX,
        max_user_bytes: usize::MAX,
        max_stop_sequences: usize::MAX,
        max_n: u32::MAX,
        max_embedding_inputs: usize::MAX,
        max_json_values: usize::MAX,
        max_json_depth: SERDE_JSON_DEPTH,
    };

    /// Configuration check: a limit of zero would refuse every request that has the field at all,
    /// except for tools and images, where zero means "none allowed".
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_messages", self.max_messages),
            ("max_image_url_bytes", self.max_image_url_bytes),
            ("max_model_bytes", self.max_model_bytes),
            ("max_user_bytes", self.max_user_bytes),
            ("max_stop_sequences", self.max_stop_sequences),
            ("max_n", self.max_n as usize),
            ("max_embedding_inputs", self.max_embedding_inputs),
            ("max_json_values", self.max_json_values),
            ("max_tool_schema_bytes", self.max_tool_schema_bytes.unwrap_or(1)),
        ];
        match positive.iter().find(|(_, v)| *v == 0) {
            Some((name, _)) => Err(format!("limits.{name} must be positive")),
            None if self.max_json_depth == 0 || self.max_json_depth > SERDE_JSON_DEPTH => {
                Err(format!("limits.max_json_depth must be between 1 and {SERDE_JSON_DEPTH} (serde_json's recursion limit)"))
            }
            None => Ok(()),
        }
    }

    /// The body as bytes, before it is parsed: too many JSON values is a 413, nesting deeper than
    /// a lowered `max_json_depth` a 400.
    pub fn check_body(&self, body: &[u8]) -> Result<(), ApiError> {
        let depth = if self.max_json_depth < SERDE_JSON_DEPTH { self.max_json_depth } else { usize::MAX };
        match json_shape(body, self.max_json_values, depth) {
            Shape::Within => Ok(()),
            Shape::TooManyValues => Err(ApiError::new(
                413,
                "invalid_request_error",
                format!("The request body holds more than {} JSON values (the gateway's limit).", self.max_json_values),
            )
            .with_code("request_too_large")),
            Shape::TooDeep => Err(ApiError::invalid_request(format!(
                "The request body nests arrays and objects deeper than {} levels (the gateway's limit).",
                self.max_json_depth
            ))
            .with_code("json_too_deep")),
        }
    }

    pub fn check_len(&self, param: &str, len: usize, max: usize) -> Result<(), ApiError> {
        if len > max {
            return Err(array_too_long(param, max, len));
        }
        Ok(())
    }

    pub fn check_string(&self, param: &str, s: Option<&str>, max: usize) -> Result<(), ApiError> {
        match s {
            Some(s) if s.len() > max => Err(ApiError::invalid_param(
                param,
                format!(
                    "Invalid '{param}': string too long. Expected a string with maximum length {max}, but got a string with length {} instead.",
                    s.len()
                ),
            )
            .with_code("string_above_max_length")),
            _ => Ok(()),
        }
    }

    pub fn check_n(&self, n: Option<u32>) -> Result<(), ApiError> {
        match n {
            Some(n) if n > self.max_n => Err(ApiError::invalid_param(
                "n",
                format!("Invalid 'n': integer above maximum value. Expected a value <= {}, but got {n} instead.", self.max_n),
            )
            .with_code("integer_above_max_value")),
            _ => Ok(()),
        }
    }

    /// One tool's `parameters`, measured as compact JSON without building the text.
    pub fn check_tool_schema(&self, index: usize, schema: Option<&serde_json::Value>) -> Result<(), ApiError> {
        let (Some(max), Some(schema)) = (self.max_tool_schema_bytes, schema) else { return Ok(()) };
        let mut counter = ByteCounter { bytes: 0, max };
        if serde_json::to_writer(&mut counter, schema).is_ok() {
            return Ok(());
        }
        let param = format!("tools[{index}].function.parameters");
        Err(ApiError::invalid_param(
            param.clone(),
            format!("Invalid '{param}': the schema is larger than the gateway's limit of {max} bytes."),
        )
        .with_code("schema_too_large"))
    }

    pub fn too_many_images(&self, got: usize) -> ApiError {
        ApiError::invalid_param(
            "messages",
            format!("Invalid 'messages': too many images. Expected at most {} image_url parts, but got {got} or more instead.", self.max_images),
        )
        .with_code("too_many_images")
    }
}

fn array_too_long(param: &str, max: usize, got: usize) -> ApiError {
    ApiError::invalid_param(
        param,
        format!("Invalid '{param}': array too long. Expected an array with maximum length {max}, but got an array with length {got} instead."),
    )
    .with_code("array_above_max_length")
}

/// A writer that only counts, and fails once past `max` (so a huge schema is not walked whole).
struct ByteCounter {
    bytes: usize,
    max: usize,
}

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes = self.bytes.saturating_add(buf.len());
        if self.bytes > self.max {
            return Err(std::io::Error::other("over the limit"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether the JSON text `body` holds more than `limit` values: strings (object keys included),
/// numbers, literals, arrays and objects. Nothing is built; malformed text is the parser's business.
pub fn json_values_exceed(body: &[u8], limit: usize) -> bool {
    json_shape(body, limit, usize::MAX) == Shape::TooManyValues
}

/// What [`json_shape`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Within,
    TooManyValues,
    TooDeep,
}

/// Counts the values of the JSON text `body` (see [`json_values_exceed`]) and the nesting of its
/// arrays and objects, stopping at the first limit passed. Each value takes at least one byte and
/// is followed by a delimiter or a closing bracket, so a text of `n` bytes holds at most
/// `(n + 1) / 2` values and nests at most `n / 2` deep: short bodies are not even looked at.
pub fn json_shape(body: &[u8], max_values: usize, max_depth: usize) -> Shape {
    if body.len().div_ceil(2) <= max_values && body.len() / 2 <= max_depth {
        return Shape::Within;
    }
    let mut count = 0usize;
    let mut depth = 0usize;
    let mut i = 0usize;
    while let Some(&b) = body.get(i) {
        match b {
            b'"' => {
                count += 1;
                i = string_end(body, i + 1);
            }
            b'{' | b'[' => {
                count += 1;
                depth += 1;
                if depth > max_depth {
                    return Shape::TooDeep;
                }
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
                count += 1;
                i += 1;
                while matches!(body.get(i), Some(c) if c.is_ascii_alphanumeric() || matches!(c, b'.' | b'+' | b'-')) {
                    i += 1;
                }
            }
            _ => i += 1,
        }
        if count > max_values {
            return Shape::TooManyValues;
        }
    }
    Shape::Within
}

/// Index just past the closing quote of the string whose contents start at `i` (or the end).
fn string_end(body: &[u8], mut i: usize) -> usize {
    loop {
        let rest = body.get(i..).unwrap_or_default();
        match memchr::memchr2(b'"', b'\\', rest) {
            None => return body.len(),
            Some(off) if rest.get(off) == Some(&b'\\') => i += off + 2,
            Some(off) => return i + off + 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(text: &str) -> usize {
        // The smallest limit the text does not exceed.
        (0..=text.len()).find(|&l| !json_values_exceed(text.as_bytes(), l)).unwrap()
    }

    #[test]
    fn counts_every_kind_of_value_once() {
        assert_eq!(count("0"), 1);
        assert_eq!(count(r#""a""#), 1);
        assert_eq!(count("[]"), 1);
        assert_eq!(count("[0,1,2]"), 4);
        assert_eq!(count(r#"{"a":0}"#), 3);
        assert_eq!(count(r#"{"a":[true,false,null],"b":{"c":-1.5e+3}}"#), 10);
        // Brackets, commas and colons inside strings are text, escaped quotes do not end them.
        assert_eq!(count(r#"["[{,:}]", "a\"b,[", "\\", "x"]"#), 5);
        assert_eq!(count(r#"{"k\\":"v\"\\\"","z":"\u0022"}"#), 5);
        // Whitespace anywhere.
        assert_eq!(count(" [ 1 ,\n 2 ] "), 3);
        // Malformed text does not panic and does not loop: an unterminated string ends the count.
        assert_eq!(count(r#"["abc"#), 2);
        assert_eq!(count(r#"["abc\"#), 2);
        assert_eq!(count("\\\\\\"), 0);
    }

    /// Values and depth of a parsed document, the way `json_shape` counts them.
    fn reference(v: &serde_json::Value) -> (usize, usize) {
        match v {
            serde_json::Value::Array(a) => a.iter().map(reference).fold((1, 1), |(n, d), (cn, cd)| (n + cn, d.max(cd + 1))),
            serde_json::Value::Object(o) => o.values().map(reference).fold((1, 1), |(n, d), (cn, cd)| (n + 1 + cn, d.max(cd + 1))),
            _ => (1, 0),
        }
    }

    #[test]
    fn the_scan_agrees_with_the_parser_on_generated_documents() {
        // A small deterministic generator: nested arrays and objects, keys and strings with
        // brackets, quotes, backslashes and escapes, numbers in every notation.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        fn gen(rnd: &mut dyn FnMut(u64) -> u64, depth: u32) -> serde_json::Value {
            use serde_json::json;
            let texts = ["", "a", "[{", "}]", "q\"uote", "back\\slash", "\u{e9}t\u{e9} \u{1}", ",:", "\n\t"];
            match if depth > 6 { rnd(5) } else { rnd(7) } {
                0 => json!(null),
                1 => json!(rnd(2) == 0),
                2 => json!(-(rnd(1000) as i64) * 7),
                3 => json!(rnd(1000) as f64 / 8.0 + 1e21),
                4 => json!(texts[rnd(texts.len() as u64) as usize]),
                5 => serde_json::Value::Array((0..rnd(4)).map(|_| gen(rnd, depth + 1)).collect()),
                _ => serde_json::Value::Object((0..rnd(4)).map(|i| (format!("{}{i}", texts[rnd(texts.len() as u64) as usize]), gen(rnd, depth + 1))).collect()),
            }
        }
        for _ in 0..2000 {
            let v = gen(&mut rnd, 0);
            let (values, depth) = reference(&v);
            for text in [serde_json::to_string(&v).unwrap(), serde_json::to_string_pretty(&v).unwrap()] {
                let b = text.as_bytes();
                assert_eq!(json_shape(b, values, depth.max(1)), Shape::Within, "{text}");
                if values > 1 {
                    assert_eq!(json_shape(b, values - 1, usize::MAX), Shape::TooManyValues, "{text}");
                }
                if depth > 1 {
                    assert_eq!(json_shape(b, usize::MAX, depth - 1), Shape::TooDeep, "{text}");
                }
            }
        }
    }

    #[test]
    fn short_bodies_are_not_scanned_and_the_bound_holds() {
        // The densest texts: n bytes, (n + 1) / 2 values. The shortcut must never hide a value.
        for text in ["0", "[0]", "[0,0]", "[[[[0]]]]", r#"{"":0}"#, "[0,0,0,0,0,0,0]", r#"[{"":0},{"":0}]"#] {
            let n = count(text);
            assert!(n <= text.len().div_ceil(2), "{text}: {n}");
            assert!(json_values_exceed(text.as_bytes(), n - 1), "{text}");
            assert!(!json_values_exceed(text.as_bytes(), n), "{text}");
        }
        // Not scanned: even malformed bytes are not looked at below the bound.
        assert!(!json_values_exceed(&[b'0'; 200], 100));
        assert!(json_values_exceed(b"[0,0,0,0,0,0,0,0,0,0]", 10));
    }

    #[test]
    fn big_bodies_over_the_limit_are_413() {
        let l = RequestLimits { max_json_values: 1000, ..DEFAULT_LIMITS };
        let mut body = String::from(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"metadata":["#);
        body.push_str(&vec![r#"{"a":0}"#; 400].join(","));
        body.push_str("]}");
        let e = l.check_body(body.as_bytes()).unwrap_err();
        assert_eq!((e.status, e.code.as_deref()), (413, Some("request_too_large")));
        assert!(e.message.contains("1000"), "{}", e.message);
        // A long string is one value, however big.
        let big = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#, "x,[{".repeat(100_000));
        assert_eq!(l.check_body(big.as_bytes()), Ok(()));
    }

    #[test]
    fn tool_schema_size() {
        let schema = serde_json::json!({"type": "object", "properties": {"a": {"type": "string"}}});
        let exact = serde_json::to_vec(&schema).unwrap().len();
        let l = RequestLimits { max_tool_schema_bytes: Some(exact), ..DEFAULT_LIMITS };
        assert_eq!(l.check_tool_schema(0, Some(&schema)), Ok(()));
        let l = RequestLimits { max_tool_schema_bytes: Some(exact - 1), ..DEFAULT_LIMITS };
        let e = l.check_tool_schema(3, Some(&schema)).unwrap_err();
        assert_eq!((e.status, e.param.as_deref(), e.code.as_deref()), (400, Some("tools[3].function.parameters"), Some("schema_too_large")));
        assert_eq!(DEFAULT_LIMITS.check_tool_schema(0, Some(&schema)), Ok(()), "off by default");
    }

    fn chat(body: serde_json::Value, l: &RequestLimits) -> Result<crate::api::chat::ChatRequest, ApiError> {
        crate::api::chat::parse_chat_request_with(body.to_string().as_bytes(), l)
    }

    fn refused(r: Result<impl std::fmt::Debug, ApiError>) -> (u16, String, String) {
        let e = r.unwrap_err();
        (e.status, e.param.unwrap_or_default(), e.code.unwrap_or_default())
    }

    #[test]
    fn chat_limits_name_the_param_and_the_limit() {
        use serde_json::json;
        let l = RequestLimits {
            max_messages: 2, max_tools: 1, max_images: 2, max_image_url_bytes: 30, max_model_bytes: 5,
            max_user_bytes: 3, max_stop_sequences: 2, max_n: 4, ..DEFAULT_LIMITS
        };
        let hi = json!({"role": "user", "content": "hi"});
        let img = |url: &str| json!({"type": "image_url", "image_url": {"url": url}});
        let ok = json!({"model": "abcde", "messages": [hi, hi], "n": 4, "user": "abc", "stop": ["a", "b"],
                        "tools": [{"type": "function", "function": {"name": "f"}}],
                        "messages": [{"role": "user", "content": [img("data:image/png;base64,AAAA"), img("https://x/y.png")]}]});
        assert!(chat(ok.clone(), &l).is_ok());
        let with = |k: &str, v: serde_json::Value| {
            let mut b = ok.clone();
            b[k] = v;
            b
        };
        let e = chat(with("messages", json!([hi, hi, hi])), &l).unwrap_err();
        assert_eq!((e.status, e.param.as_deref(), e.code.as_deref()), (400, Some("messages"), Some("array_above_max_length")));
        assert!(e.message.contains("maximum length 2") && e.message.contains("length 3"), "{}", e.message);
        assert_eq!(refused(chat(with("model", json!("abcdef")), &l)), (400, "model".into(), "string_above_max_length".into()));
        assert_eq!(refused(chat(with("user", json!("abcd")), &l)), (400, "user".into(), "string_above_max_length".into()));
        assert_eq!(refused(chat(with("n", json!(5)), &l)), (400, "n".into(), "integer_above_max_value".into()));
        assert_eq!(refused(chat(with("stop", json!(["a", "b", "c"])), &l)), (400, "stop".into(), "array_above_max_length".into()));
        assert!(chat(with("stop", json!("a single stop string")), &l).is_ok());
        let two = json!([{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "g"}}]);
        assert_eq!(refused(chat(with("tools", two), &l)), (400, "tools".into(), "array_above_max_length".into()));
        let three = json!([{"role": "user", "content": [img("a"), img("b")]}, {"role": "user", "content": [{"type": "text", "text": "x"}, img("c")]}]);
        let e = chat(with("messages", three), &l).unwrap_err();
        assert_eq!((e.param.as_deref(), e.code.as_deref()), (Some("messages"), Some("too_many_images")));
        assert!(e.message.contains("at most 2"), "{}", e.message);
        let long = json!([{"role": "user", "content": [{"type": "text", "text": "x"}, img(&format!("data:image/png;base64,{}", "A".repeat(10)))]}]);
        assert_eq!(refused(chat(with("messages", long), &l)), (400, "messages[0].content[1].image_url.url".into(), "string_above_max_length".into()));
        // Unlimited (the backend's re-parse) takes all of it.
        let big = json!({"model": "m".repeat(1000), "messages": vec![hi.clone(); 5000], "n": 1000, "user": "u".repeat(1000)});
        assert!(crate::api::chat::parse_chat_request(big.to_string().as_bytes()).is_ok());
        assert_eq!(refused(chat(big, &DEFAULT_LIMITS)), (400, "model".into(), "string_above_max_length".into()));
    }

    #[test]
    fn embeddings_limits() {
        use crate::api::embeddings::{parse_embeddings_request, parse_embeddings_request_with};
        let l = RequestLimits { max_embedding_inputs: 3, max_model_bytes: 4, ..DEFAULT_LIMITS };
        let p = |s: &str| parse_embeddings_request_with(s.as_bytes(), &l);
        assert!(p(r#"{"model":"e","input":["a","b","c"]}"#).is_ok());
        assert_eq!(refused(p(r#"{"model":"e","input":["a","b","c","d"]}"#)), (400, "input".into(), "array_above_max_length".into()));
        assert_eq!(refused(p(r#"{"model":"e","input":[[1],[2],[3],[4]]}"#)), (400, "input".into(), "array_above_max_length".into()));
        assert!(p(r#"{"model":"e","input":[1,2,3,4,5,6]}"#).is_ok(), "one tokenised input");
        assert_eq!(refused(p(r#"{"model":"embed","input":"a"}"#)), (400, "model".into(), "string_above_max_length".into()));
        assert!(parse_embeddings_request(r#"{"model":"embed","input":["a","b","c","d"]}"#.as_bytes()).is_ok());
    }

    #[test]
    fn deep_nesting_is_a_400_not_a_crash() {
        for depth in [129, 1000, 50_000] {
            let deep = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],"metadata":{}{}}}"#, "[".repeat(depth), "]".repeat(depth));
            let e = crate::api::chat::parse_chat_request_with(deep.as_bytes(), &DEFAULT_LIMITS).unwrap_err();
            assert_eq!(e.status, 400, "{depth}");
            assert!(e.message.contains("recursion limit"), "{}", e.message);
        }
        // Deeper still, the brackets alone are more values than the limit: refused before parsing.
        let deeper = format!(r#"{{"model":"m","messages":[],"metadata":{}{}}}"#, "[".repeat(200_000), "]".repeat(200_000));
        assert_eq!(crate::api::chat::parse_chat_request_with(deeper.as_bytes(), &DEFAULT_LIMITS).unwrap_err().status, 413);
        // Below serde_json's limit of 128 (the metadata sits at depth 1) it parses.
        let ok = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],"metadata":{}{}}}"#, "[".repeat(126), "]".repeat(126));
        assert!(crate::api::chat::parse_chat_request_with(ok.as_bytes(), &DEFAULT_LIMITS).is_ok());
    }

    #[test]
    fn a_lowered_depth_limit_scans_every_body() {
        let l = RequestLimits { max_json_depth: 4, ..DEFAULT_LIMITS };
        let body = |depth: usize| format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],"metadata":{}{}}}"#, "[".repeat(depth), "]".repeat(depth));
        // The body is level 1, metadata's arrays 2, 3, 4…; brackets inside strings do not count.
        assert_eq!(l.check_body(body(3).as_bytes()), Ok(()));
        let e = l.check_body(body(4).as_bytes()).unwrap_err();
        assert_eq!((e.status, e.code.as_deref()), (400, Some("json_too_deep")));
        assert!(e.message.contains("4 levels"), "{}", e.message);
        assert_eq!(l.check_body(br#"{"a":"[[[[[[[[[[{{{{{{"}"#), Ok(()));
        assert_eq!(json_shape(br#"[[],[[]],[]]"#, 100, 3), Shape::Within);
        assert_eq!(json_shape(br#"[[],[[[]]],[]]"#, 100, 3), Shape::TooDeep);
        // The default (serde_json's own limit) scans nothing: the parse refuses deeper bodies.
        assert_eq!(DEFAULT_LIMITS.check_body(body(500).as_bytes()), Ok(()));
        // What serde_json itself accepts: 127 levels, not 128.
        let at = |d: usize| format!("{}{}", "[".repeat(d), "]".repeat(d));
        assert!(serde_json::from_str::<serde_json::Value>(&at(SERDE_JSON_DEPTH)).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&at(SERDE_JSON_DEPTH + 1)).is_err());
        assert!(RequestLimits { max_json_depth: 129, ..DEFAULT_LIMITS }.validate().is_err());
        assert!(RequestLimits { max_json_depth: 0, ..DEFAULT_LIMITS }.validate().is_err());
    }

    #[test]
    fn the_gateway_configuration_carries_and_checks_limits() {
        use crate::config::{Gateway, PluginConfig};
        let gateway = |limits: &str| {
            let json = format!(r#"{{"role":"gateway","models":[{{"name":"m"}}]{limits}}}"#);
            match PluginConfig::parse(json.as_bytes()) {
                Ok(PluginConfig::Gateway(g)) => Gateway::new(g).map(|g| g.limits),
                Ok(_) => Err("not a gateway".into()),
                Err(e) => Err(e),
            }
        };
        assert_eq!(gateway(""), Ok(DEFAULT_LIMITS));
        assert_eq!(gateway(r#","limits":{"max_tools":4,"max_json_depth":20}"#), Ok(RequestLimits { max_tools: 4, max_json_depth: 20, ..DEFAULT_LIMITS }));
        assert!(gateway(r#","limits":{"max_messages":0}"#).unwrap_err().contains("max_messages"));
        assert!(gateway(r#","limits":{"max_json_depth":500}"#).unwrap_err().contains("max_json_depth"));
        assert!(gateway(r#","limits":{"max_tokens":5}"#).is_err(), "an unknown limit is a mistake");
    }

    #[test]
    fn configuration() {
        let l: RequestLimits = serde_json::from_str(r#"{"max_messages": 10}"#).unwrap();
        assert_eq!(l, RequestLimits { max_messages: 10, ..DEFAULT_LIMITS });
        assert!(serde_json::from_str::<RequestLimits>(r#"{"max_mesages": 10}"#).is_err(), "typos are refused");
        assert!(RequestLimits { max_messages: 0, ..DEFAULT_LIMITS }.validate().unwrap_err().contains("max_messages"));
        assert!(RequestLimits { max_tool_schema_bytes: Some(0), ..DEFAULT_LIMITS }.validate().is_err());
        assert_eq!(RequestLimits { max_tools: 0, max_images: 0, ..DEFAULT_LIMITS }.validate(), Ok(()));
        assert_eq!(DEFAULT_LIMITS.validate(), Ok(()));
    }
}
