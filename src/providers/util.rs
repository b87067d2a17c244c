//! Small pieces shared by the provider translators (Anthropic, Bedrock, Cohere, Gemini, Ollama and
//! the OpenAI-compatible ones): borrowed JSON strings, lenient numbers and objects, data URLs, the
//! OpenAI chunk writers and the stream-ending events.
//!
//! Everything here runs on untrusted bytes: no `unwrap`, no indexing on input.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::api::chat::{ChatCompletionChunk, ChunkChoice, Delta, Usage};
use crate::api::ApiError;
use crate::stream::sse::{write_json_event, write_raw_event, DONE};

/// A string that borrows from the event's JSON text when it has no escapes.
pub(crate) struct Str<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(PhantomData))
    }
}

/// The text of an optional borrowed string.
pub(crate) fn s<'x>(v: &'x Option<Str<'_>>) -> Option<&'x str> {
    v.as_ref().map(|x| x.0.as_ref())
}

/// A JSON number that providers document as `number` but mean as a count (Cohere sends `37.0`).
/// Negative, fractional-overflowing, NaN or infinite values become 0 / saturate; never panics.
#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq)]
#[serde(transparent)]
pub(crate) struct Count(pub f64);

impl Count {
    pub fn get(self) -> u64 {
        if self.0.is_finite() && self.0 > 0.0 {
            // `as` saturates for floats.
            self.0.round() as u64
        } else {
            0
        }
    }
}

/// `deserialize_with` for a field that is an object in some events and something else (an empty
/// array, `null`) in others: the object is parsed as `T`, anything else becomes `None`.
pub(crate) fn object_or_none<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object, or anything else to ignore")
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Option<T>, A::Error> {
            T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Some)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<T>, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Option<T>, D2::Error> {
            d.deserialize_any(self)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Option<T>, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V(PhantomData))
}

/// Parses a JSON body into `T`, or a 502 naming the provider when it is not what was expected.
pub(crate) fn parse_upstream<T: DeserializeOwned>(provider: &str, body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::gateway(502, format!("The {provider} backend returned a response the gateway could not read: {e}."))
    })
}

/// The base64 payload of a `data:<media type>;base64,<data>` URL.
pub(crate) struct DataUrl<'a> {
    pub data: &'a str,
}

/// `Ok(Some)` for a base64 data URL, `Ok(None)` for anything that is not a data URL at all,
/// `Err(reason)` for a malformed data URL.
pub(crate) fn parse_data_url(url: &str) -> Result<Option<DataUrl<'_>>, &'static str> {
    let Some(rest) = strip_prefix_ignore_case(url, "data:") else { return Ok(None) };
    let (meta, data) = rest.split_once(',').ok_or("a data URL needs a ',' before its data.")?;
    let mut params = meta.split(';');
    let media_type = params.next().unwrap_or("").trim();
    if !params.any(|p| p.trim().eq_ignore_ascii_case("base64")) {
        return Err("only base64-encoded data URLs are supported.");
    }
    if media_type.is_empty() {
        return Err("the data URL has no media type.");
    }
    if data.is_empty() {
        return Err("the data URL has no data.");
    }
    Ok(Some(DataUrl { data }))
}

pub(crate) fn is_http_url(url: &str) -> bool {
    strip_prefix_ignore_case(url, "https://").is_some() || strip_prefix_ignore_case(url, "http://").is_some()
}

pub(crate) fn strip_prefix_ignore_case<'s>(s: &'s str, prefix: &str) -> Option<&'s str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

/// 400 naming a content part this backend cannot take.
pub(crate) fn unsupported_part(backend: &str, i: usize, j: usize, kind: &str) -> ApiError {
    ApiError::invalid_param(
        format!("messages[{i}].content[{j}]"),
        format!("Content part type '{kind}' in messages[{i}].content[{j}] is not supported by the {backend} backend."),
    )
}

/// 400 for `n` > 1 on a backend that returns one choice.
pub(crate) fn check_single_choice(backend: &str, n: Option<u32>) -> Result<(), ApiError> {
    match n {
        Some(n) if n > 1 => Err(ApiError::invalid_param(
            "n",
            format!("`n` = {n} is not supported: the {backend} backend returns one choice per request."),
        )),
        _ => Ok(()),
    }
}

/// Where a translated OpenAI stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Open,
    /// The upstream's end marker was seen: `[DONE]` written.
    Done,
    /// An error event was written; nothing more may follow.
    Failed,
}

/// Writes one `chat.completion.chunk` event with a single choice.
pub(crate) fn write_chunk(out: &mut Vec<u8>, id: &str, model: &str, created: u64, index: u32, delta: Delta<'_>, finish_reason: Option<&str>) {
    let chunk = ChatCompletionChunk {
        id,
        object: "chat.completion.chunk",
        created,
        model,
        choices: vec![ChunkChoice { index, delta, finish_reason, logprobs: None }],
        usage: None,
    };
    write_json_event(out, &chunk);
}

/// Writes OpenAI `chat.completion.chunk` events for one choice (index 0).
pub(crate) struct ChunkWriter {
    pub id: String,
    pub model: String,
    pub created: u64,
}

impl ChunkWriter {
    pub fn chunk(&self, out: &mut Vec<u8>, delta: Delta<'_>, finish_reason: Option<&str>) {
        write_chunk(out, &self.id, &self.model, self.created, 0, delta, finish_reason);
    }

    /// The finishing chunk (empty delta), the usage-only chunk (`choices: []`) and `data: [DONE]`.
    pub fn finish(&self, out: &mut Vec<u8>, finish_reason: &str, usage: &Usage) {
        self.chunk(out, Delta::default(), Some(finish_reason));
        write_usage_and_done(out, &self.id, &self.model, self.created, usage);
    }
}

/// The usage-only chunk (`choices: []`) and `data: [DONE]` that end a translated stream.
pub(crate) fn write_usage_and_done(out: &mut Vec<u8>, id: &str, model: &str, created: u64, usage: &Usage) {
    let last = ChatCompletionChunk {
        id,
        object: "chat.completion.chunk",
        created,
        model,
        choices: Vec::new(),
        usage: Some(usage),
    };
    write_json_event(out, &last);
    out.extend_from_slice(DONE);
}

/// Writes an OpenAI error event (`data: {"error":{…}}`), which the OpenAI SDKs raise.
pub(crate) fn write_error_event(out: &mut Vec<u8>, err: &ApiError) {
    write_raw_event(out, &err.to_json());
}

pub(crate) fn truncated() -> ApiError {
    ApiError::new(502, "api_error", "upstream stream ended before completion").with_code("stream_truncated")
}

pub(crate) fn overflow() -> ApiError {
    ApiError::new(502, "api_error", "An upstream stream event exceeded the gateway's size limit.").with_code("stream_overflow")
}

/// Most tool calls one streamed answer may carry. The stream translators remember each call (its
/// upstream block index and OpenAI index) and look them up per delta, so an upstream that opened
/// calls without end would grow memory and make every delta slower.
pub(crate) const MAX_STREAM_TOOL_CALLS: usize = 1024;

/// The stream error for an answer past [`MAX_STREAM_TOOL_CALLS`].
pub(crate) fn too_many(what: &str, limit: usize) -> ApiError {
    ApiError::new(502, "api_error", format!("The upstream stream opened more than {limit} {what}, the gateway's limit."))
        .with_code("stream_overflow")
}

pub(crate) fn unreadable_event(provider: &str, e: &serde_json::Error) -> ApiError {
    ApiError::new(502, "api_error", format!("The {provider} backend sent an unreadable stream event: {e}."))
        .with_code("invalid_upstream_event")
}

/// Usage in OpenAI's shape from prompt and completion counts.
pub(crate) fn usage(prompt: u64, completion: u64) -> Usage {
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt.saturating_add(completion),
        prompt_tokens_details: None,
        completion_tokens_details: None,
    }
}

/// Percent-encodes everything outside RFC 3986's unreserved set, for a path segment or a query
/// value built from configuration or model names.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(borrow, default, deserialize_with = "object_or_none")]
        obj: Option<Inner<'a>>,
    }

    #[derive(Deserialize)]
    struct Inner<'a> {
        #[serde(borrow)]
        text: Option<Str<'a>>,
    }

    #[test]
    fn object_or_none_accepts_anything() {
        for (v, want) in [
            (json!({"obj":{"text":"hi"}}), Some("hi")),
            (json!({"obj":[]}), None),
            (json!({"obj":[1,{"a":2}]}), None),
            (json!({"obj":null}), None),
            (json!({"obj":"x"}), None),
            (json!({"obj":3.5}), None),
            (json!({"obj":true}), None),
            (json!({}), None),
        ] {
            let text = v.to_string();
            let p: Probe = serde_json::from_str(&text).unwrap();
            assert_eq!(p.obj.as_ref().and_then(|o| s(&o.text)), want, "{v}");
        }
        // An object of the wrong shape is still an error.
        assert!(serde_json::from_str::<Probe>(r#"{"obj":{"text":5}}"#).is_err());
    }

    #[test]
    fn str_borrows_when_it_can() {
        let p: Inner = serde_json::from_str(r#"{"text":"plain"}"#).unwrap();
        assert!(matches!(p.text.unwrap().0, Cow::Borrowed("plain")));
        let p: Inner = serde_json::from_str(r#"{"text":"a\nb"}"#).unwrap();
        assert_eq!(p.text.unwrap().0, "a\nb");
    }

    #[test]
    fn counts_are_lenient() {
        for (v, want) in [("37.0", 37), ("12", 12), ("-3", 0), ("1e300", u64::MAX), ("0.4", 0), ("2.5", 3)] {
            let c: Count = serde_json::from_str(v).unwrap();
            assert_eq!(c.get(), want, "{v}");
        }
        assert_eq!(Count(f64::NAN).get(), 0);
    }

    #[test]
    fn data_urls() {
        let d = parse_data_url("data:image/png;base64,AAAA").unwrap().unwrap();
        assert_eq!(d.data, "AAAA");
        let d = parse_data_url("DATA:image/webp;BASE64,UklG").unwrap().unwrap();
        assert_eq!(d.data, "UklG");
        assert!(parse_data_url("https://x/y.png").unwrap().is_none());
        for bad in ["data:image/png,abc", "data:;base64,abc", "data:image/png;base64", "data:image/png;base64,"] {
            assert!(parse_data_url(bad).is_err(), "{bad}");
        }
        assert!(is_http_url("HTTPS://x"));
        assert!(!is_http_url("ftp://x"));
        assert!(!is_http_url("é"));
    }

    #[test]
    fn percent_encoding() {
        assert_eq!(percent_encode("gpt-4o_mini.v2~x"), "gpt-4o_mini.v2~x");
        assert_eq!(percent_encode("a/b c?d&e=f#é"), "a%2Fb%20c%3Fd%26e%3Df%23%C3%A9");
    }
}
