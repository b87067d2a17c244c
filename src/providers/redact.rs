//! Credentials out of provider answers. Some providers quote the credential they were sent in an
//! authentication error ("Invalid API key: sk-…"); the gateway translates error bodies into
//! OpenAI's shape, message included, so without this the gateway's own key would reach the client.
//! Runs on error answers only: a successful answer costs nothing.

use std::borrow::Cow;

/// What replaces a credential in a provider's answer.
pub const REDACTED: &str = "[redacted]";

/// Shortest secret looked for: shorter ones (a mistake, or a test's `""`) would redact ordinary text.
pub const MIN_SECRET_LEN: usize = 8;

/// `body` with every occurrence of each secret, as it is and as JSON would escape it (`/` as `\/`,
/// `"` and `\` escaped), replaced by [`REDACTED`]. Borrowed when there was nothing to replace.
pub fn scrub<'a>(body: &'a [u8], secrets: &[&str]) -> Cow<'a, [u8]> {
    let mut out = Cow::Borrowed(body);
    for secret in secrets.iter().filter(|s| s.len() >= MIN_SECRET_LEN) {
        if let Some(replaced) = replace_all(&out, secret.as_bytes()) {
            out = Cow::Owned(replaced);
        }
        let escaped = json_escaped(secret);
        if escaped != *secret {
            if let Some(replaced) = replace_all(&out, escaped.as_bytes()) {
                out = Cow::Owned(replaced);
            }
        }
    }
    out
}

fn replace_all(haystack: &[u8], needle: &[u8]) -> Option<Vec<u8>> {
    // A plain search: error bodies are small and this runs on errors only (memchr's memmem would
    // add kilobytes to the module for nothing).
    let mut next = Some(find(haystack, needle, 0)?);
    let mut out = Vec::with_capacity(haystack.len());
    let mut at = 0;
    while let Some(i) = next {
        out.extend_from_slice(haystack.get(at..i).unwrap_or_default());
        out.extend_from_slice(REDACTED.as_bytes());
        at = i + needle.len();
        next = find(haystack, needle, at);
    }
    out.extend_from_slice(haystack.get(at..).unwrap_or_default());
    Some(out)
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|p| p + from)
}

/// The secret as it appears inside a JSON string written with `/` escaped (as PHP and some Java
/// libraries write it) and `"` / `\` escaped (as every JSON writer does).
fn json_escaped(secret: &str) -> String {
    let mut s = String::with_capacity(secret.len() + 4);
    for c in secret.chars() {
        match c {
            '/' => s.push_str("\\/"),
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(body: &str, secrets: &[&str]) -> String {
        String::from_utf8(scrub(body.as_bytes(), secrets).into_owned()).unwrap()
    }

    #[test]
    fn replaces_every_occurrence_of_every_secret() {
        let key = "sk-canary-0123456789";
        assert_eq!(
            s(&format!(r#"{{"error":{{"message":"Invalid key {key}; got {key}."}}}}"#), &[key]),
            r#"{"error":{"message":"Invalid key [redacted]; got [redacted]."}}"#
        );
        // Several secrets (an AWS key pair), one of them JSON-escaped with its slashes.
        let id = "AKIDCANARY12345";
        let secret = "wJal/rXUtn+FEMI/K7MDENG";
        let body = format!(r#"{{"message":"key {id} secret wJal\/rXUtn+FEMI\/K7MDENG and {secret}"}}"#);
        assert_eq!(s(&body, &[id, secret]), r#"{"message":"key [redacted] secret [redacted] and [redacted]"}"#);
        // Overlapping occurrences cannot leave a piece behind.
        assert_eq!(s("aaaaaaaaaaaa", &["aaaaaaaa"]), "[redacted]aaaa");
        assert!(!s("xaaaaaaaaaaaaaaaay", &["aaaaaaaa"]).contains("aaaaaaaa"));
    }

    #[test]
    fn nothing_to_replace_borrows() {
        assert!(matches!(scrub(b"{\"error\":\"bad\"}", &["sk-canary-0123456789"]), Cow::Borrowed(_)));
        // Short or empty secrets are not looked for: they would redact ordinary words.
        assert!(matches!(scrub(b"the key", &["", "key"]), Cow::Borrowed(_)));
        assert_eq!(s("", &["sk-canary-0123456789"]), "");
    }

    #[test]
    fn quotes_and_backslashes_in_a_secret() {
        let secret = r#"ab"cd\efgh"#;
        assert_eq!(s(r#"{"m":"ab\"cd\\efgh"}"#, &[secret]), r#"{"m":"[redacted]"}"#);
    }
}
