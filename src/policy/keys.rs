//! Virtual keys: what clients present instead of provider credentials.
//!
//! A key arrives as `Authorization: Bearer KEY` or `x-api-key: KEY`. The configuration stores only
//! the SHA-256 of each key (hex), never the key: `switchyard new-key` prints a fresh key with its
//! hash, `switchyard hash-key` hashes an existing one.
//!
//! **Lookup by hash.** The presented key is hashed and the hash looked up in a map; the matching
//! entry's hash is then compared in constant time ([`ct_eq`]). Hashing first is what makes the map
//! safe: its probing time depends on SHA-256(presented key), which the client can compute itself,
//! so timing reveals nothing the client does not know. At most it could tell a client how many
//! leading bytes of its *own* hash match a stored *hash*, and a stored hash is not a credential
//! (the gateway accepts keys, not hashes) and cannot be inverted to one: generated keys carry 256
//! random bits. Nothing secret is compared with an early exit.
//!
//! **Limits on input.** A header longer than [`MAX_KEY_HEADER_LEN`] is refused before anything is
//! hashed, so an attacker cannot make the gateway hash megabytes per request.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::budget::{Budget, BudgetConfig};
use super::limits::LimitsConfig;
use super::routing::glob_match;
use crate::api::ApiError;

/// Longest key accepted (generated keys are 49 bytes).
pub const MAX_KEY_LEN: usize = 256;
/// Longest `authorization` / `x-api-key` header value looked at.
pub const MAX_KEY_HEADER_LEN: usize = MAX_KEY_LEN + 32;
/// Longest provider credential accepted in the bring-your-own-key header.
pub const MAX_BYOK_LEN: usize = 4096;
/// Prefix of generated keys.
pub const KEY_PREFIX: &str = "sk-sy-";
/// Default header carrying a client's own provider credential. Its `x-switchyard-` prefix makes
/// the gateway strip it from everything it forwards.
pub const DEFAULT_BYOK_HEADER: &str = "x-switchyard-provider-key";

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// One entry of `keys`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Stable name of the key, used in logs, metrics and shared-data state (not secret).
    pub id: String,
    /// Team whose limits and budget also apply; it must be listed in `teams`.
    #[serde(default)]
    pub team: Option<String>,
    /// Hex SHA-256 of the key.
    pub sha256: String,
    /// Models the key may use: names or `*` patterns, matched against the requested name and the
    /// resolved one. Absent: every model.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// A disabled key is refused (401) but kept, with its state.
    #[serde(default)]
    pub disabled: bool,
    /// Unix time (seconds) from which the key is refused.
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// The key may pass its own provider credential in the bring-your-own-key header.
    #[serde(default)]
    pub byok: bool,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub budget: Option<BudgetConfig>,
    /// Free-form labels for logs and metrics.
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

/// One entry of `teams`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamConfig {
    pub id: String,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub budget: Option<BudgetConfig>,
}

/// A key, validated.
#[derive(Debug)]
pub struct KeyRecord {
    pub id: String,
    pub team: Option<String>,
    pub hash: [u8; 32],
    pub models: Option<Vec<String>>,
    pub disabled: bool,
    pub expires_at: Option<u64>,
    pub byok: bool,
    pub limits: LimitsConfig,
    pub budget: Option<Budget>,
    pub metadata: Map<String, Value>,
}

/// A team, validated.
#[derive(Debug)]
pub struct TeamRecord {
    pub id: String,
    pub limits: LimitsConfig,
    pub budget: Option<Budget>,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
}

impl TeamConfig {
    pub fn compile(&self) -> Result<TeamRecord, String> {
        if !valid_id(&self.id) {
            return Err(format!("teams: invalid id {:?} (1-128 visible ASCII characters)", self.id));
        }
        let what = format!("team {}", self.id);
        self.limits.validate(&what)?;
        let budget = self.budget.as_ref().map(|b| b.compile(&what)).transpose()?;
        Ok(TeamRecord { id: self.id.clone(), limits: self.limits.clone(), budget })
    }
}

impl KeyConfig {
    pub fn compile(&self) -> Result<KeyRecord, String> {
        if !valid_id(&self.id) {
            return Err(format!("keys: invalid id {:?} (1-128 visible ASCII characters)", self.id));
        }
        let what = format!("key {}", self.id);
        let hash = parse_hex_hash(&self.sha256)
            .ok_or_else(|| format!("{what}: sha256 must be 64 hex digits (use `switchyard hash-key`)"))?;
        if let Some(models) = &self.models {
            if models.is_empty() {
                return Err(format!("{what}: models is empty, so the key could use nothing (omit it to allow every model)"));
            }
            if models.iter().any(String::is_empty) {
                return Err(format!("{what}: empty model name"));
            }
        }
        self.limits.validate(&what)?;
        let budget = self.budget.as_ref().map(|b| b.compile(&what)).transpose()?;
        Ok(KeyRecord {
            id: self.id.clone(),
            team: self.team.clone(),
            hash,
            models: self.models.clone(),
            disabled: self.disabled,
            expires_at: self.expires_at,
            byok: self.byok,
            limits: self.limits.clone(),
            budget,
            metadata: self.metadata.clone(),
        })
    }
}

impl KeyRecord {
    /// Whether the key may use the model asked for as `requested` and resolved to `resolved`.
    pub fn allows_model(&self, requested: &str, resolved: &str) -> bool {
        match &self.models {
            None => true,
            Some(patterns) => patterns.iter().any(|p| glob_match(p, requested) || glob_match(p, resolved)),
        }
    }
}

/// Keys indexed by the SHA-256 of the key.
#[derive(Debug, Default)]
pub struct KeyRing {
    by_hash: HashMap<[u8; 32], Arc<KeyRecord>>,
}

impl KeyRing {
    pub fn new(records: Vec<KeyRecord>) -> Result<KeyRing, String> {
        let mut by_hash = HashMap::with_capacity(records.len());
        let mut ids = std::collections::HashSet::new();
        for r in records {
            if !ids.insert(r.id.clone()) {
                return Err(format!("key {} is configured twice", r.id));
            }
            let id = r.id.clone();
            if by_hash.insert(r.hash, Arc::new(r)).is_some() {
                return Err(format!("key {id}: another key has the same sha256"));
            }
        }
        Ok(KeyRing { by_hash })
    }

    /// The record of `key`, if configured.
    pub fn find(&self, key: &str) -> Option<&Arc<KeyRecord>> {
        let h = hash_key_bytes(key);
        self.by_hash.get(&h).filter(|r| ct_eq(&r.hash, &h))
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<KeyRecord>> {
        self.by_hash.values()
    }
}

// ---------------------------------------------------------------------------------------------
// Hashing, comparison, generation
// ---------------------------------------------------------------------------------------------

pub fn hash_key_bytes(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Lower-case hex SHA-256 of a key: what goes in the configuration's `sha256`.
pub fn hash_key(key: &str) -> String {
    hex(&hash_key_bytes(key))
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from_digit((b >> 4) as u32, 16).unwrap_or('0'));
        s.push(char::from_digit((b & 0xF) as u32, 16).unwrap_or('0'));
    }
    s
}

/// 64 hex digits (either case) to 32 bytes.
pub fn parse_hex_hash(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let nibble = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        let hi = nibble(*pair.first()?)?;
        let lo = nibble(*pair.get(1)?)?;
        *o = (hi << 4) | lo;
    }
    Some(out)
}

/// Equality in time independent of where the inputs differ: every byte is visited and the
/// differences are OR-ed together, with no early exit. (Lengths are not secret: unequal lengths
/// return at once.)
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    // Keep the optimiser from turning the loop back into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

/// A new key from 32 random bytes: `sk-sy-` and 43 URL-safe base64 characters (256 bits).
pub fn generate_key(random: &[u8; 32]) -> String {
    format!("{KEY_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random))
}

// ---------------------------------------------------------------------------------------------
// Extraction from request headers
// ---------------------------------------------------------------------------------------------

/// Why the key could not be taken from the headers. All are 401s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    Missing,
    Empty,
    NotBearer,
    /// `authorization` and `x-api-key` (or repeated headers) carry different keys.
    Ambiguous,
    TooLong,
    InvalidCharacters,
    Unknown,
    Disabled,
    Expired,
}

impl KeyError {
    pub fn message(self) -> &'static str {
        match self {
            KeyError::Missing => "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or in an x-api-key header.",
            KeyError::Empty => "The API key provided is empty.",
            KeyError::NotBearer => "Unsupported authorization scheme: use `Authorization: Bearer YOUR_KEY` or an x-api-key header.",
            KeyError::Ambiguous => "Conflicting API keys: the request carries different keys (Authorization and x-api-key, or repeated headers).",
            KeyError::TooLong => "The API key provided is too long.",
            KeyError::InvalidCharacters => "The API key provided contains invalid characters.",
            KeyError::Unknown => "Incorrect API key provided.",
            KeyError::Disabled => "The API key provided has been disabled.",
            KeyError::Expired => "The API key provided has expired.",
        }
    }

    /// 401 `invalid_request_error` / `invalid_api_key`, as OpenAI answers a bad key.
    pub fn to_api_error(self) -> ApiError {
        ApiError::new(401, "invalid_request_error", self.message()).with_code("invalid_api_key")
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> ApiError {
        e.to_api_error()
    }
}

fn check_key(key: &str) -> Result<&str, KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong);
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(KeyError::InvalidCharacters);
    }
    Ok(key)
}

fn from_authorization(value: &str) -> Result<&str, KeyError> {
    if value.len() > MAX_KEY_HEADER_LEN {
        return Err(KeyError::TooLong);
    }
    let v = value.trim();
    if v.is_empty() {
        return Err(KeyError::Empty);
    }
    let (scheme, rest) = v.split_once([' ', '\t']).unwrap_or((v, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(KeyError::NotBearer);
    }
    check_key(rest.trim())
}

fn from_api_key(value: &str) -> Result<&str, KeyError> {
    if value.len() > MAX_KEY_HEADER_LEN {
        return Err(KeyError::TooLong);
    }
    check_key(value.trim())
}

/// The key a request carries, from every `authorization` and `x-api-key` header (names compared
/// case-insensitively). Several headers are fine when they agree.
pub fn extract_key(headers: &[(String, String)]) -> Result<&str, KeyError> {
    let mut found: Option<&str> = None;
    for (name, value) in headers {
        let keys: Vec<&str> = if name.eq_ignore_ascii_case("authorization") {
            match joined_bearers(value) {
                Some(parts) => parts.map(from_authorization).collect::<Result<_, _>>()?,
                None => vec![from_authorization(value)?],
            }
        } else if name.eq_ignore_ascii_case("x-api-key") {
            vec![from_api_key(value)?]
        } else {
            continue;
        };
        for key in keys {
            match found {
                // The client's own two values: comparing them leaks nothing.
                Some(k) if k != key => return Err(KeyError::Ambiguous),
                _ => found = Some(key),
            }
        }
    }
    found.ok_or(KeyError::Missing)
}

/// Envoy joins repeated `authorization` headers into one value, separated by commas (RFC 9110
/// §5.3). A Bearer token cannot contain a comma (RFC 6750's token68), so a value made only of
/// comma-separated `Bearer …` parts is several headers: their keys must agree like any others.
fn joined_bearers(value: &str) -> Option<std::str::Split<'_, char>> {
    let is_bearer = |p: &str| {
        let b = p.trim_start().as_bytes();
        b.get(..6).is_some_and(|s| s.eq_ignore_ascii_case(b"bearer")) && matches!(b.get(6), Some(b' ' | b'\t'))
    };
    (value.len() <= 4 * MAX_KEY_HEADER_LEN && value.contains(',') && value.split(',').all(is_bearer))
        .then(|| value.split(','))
}

/// A provider credential supplied by the client. Never printed: `Debug` shows `Secret(***)`,
/// and there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    /// The credential, to put in the upstream request (and nowhere else).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The bring-your-own-key credential in header `header`, checked against what the key may do.
pub fn extract_byok(headers: &[(String, String)], header: &str, key: &KeyRecord) -> Result<Option<Secret>, ApiError> {
    let mut found: Option<&str> = None;
    for (name, value) in headers {
        if !name.eq_ignore_ascii_case(header) {
            continue;
        }
        if value.len() > MAX_BYOK_LEN {
            return Err(ApiError::invalid_request(format!("The {header} header is too long.")).with_code("invalid_provider_key"));
        }
        let v = value.trim();
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Err(ApiError::invalid_request(format!("The {header} header must hold a provider credential.")).with_code("invalid_provider_key"));
        }
        match found {
            Some(f) if f != v => {
                return Err(ApiError::invalid_request(format!("Conflicting {header} headers.")).with_code("invalid_provider_key"))
            }
            _ => found = Some(v),
        }
    }
    match found {
        None => Ok(None),
        Some(_) if !key.byok => Err(ApiError::new(
            403,
            "permission_error",
            format!("The API key `{}` may not supply its own provider credential ({header}).", key.id),
        )
        .with_code("byok_not_allowed")),
        Some(v) => Ok(Some(Secret(v.to_string()))),
    }
}

/// 403 for a model the key may not use.
pub fn model_not_allowed(key_id: &str, model: &str) -> ApiError {
    ApiError::new(403, "permission_error", format!("The API key `{key_id}` is not allowed to use the model `{model}`."))
        .with_param("model")
        .with_code("model_not_allowed")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    fn record(cfg: &str) -> KeyRecord {
        serde_json::from_str::<KeyConfig>(cfg).unwrap().compile().unwrap()
    }

    #[test]
    fn sha256_hex_matches_known_vector() {
        assert_eq!(hash_key("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(parse_hex_hash(&hash_key("abc")), Some(hash_key_bytes("abc")));
        assert_eq!(parse_hex_hash(&hash_key("abc").to_uppercase()), Some(hash_key_bytes("abc")));
        assert_eq!(parse_hex_hash("abc"), None);
        assert_eq!(parse_hex_hash(&"g".repeat(64)), None);
        assert_eq!(parse_hex_hash(&"é".repeat(32)), None);
    }

    #[test]
    fn constant_time_compare_is_correct() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"same", b"same"));
        assert!(!ct_eq(b"same", b"samf"));
        assert!(!ct_eq(b"xame", b"same"));
        assert!(!ct_eq(b"same", b"same!"));
        let a = hash_key_bytes("k1");
        for i in 0..32 {
            for bit in 0..8 {
                let mut b = a;
                b[i] ^= 1 << bit;
                assert!(!ct_eq(&a, &b));
            }
        }
        assert!(ct_eq(&a, &hash_key_bytes("k1")));
    }

    #[test]
    fn generated_keys() {
        let k = generate_key(&[7u8; 32]);
        assert!(k.starts_with("sk-sy-"));
        assert_eq!(k.len(), 6 + 43);
        assert!(k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(generate_key(&[8u8; 32]), k);
        assert_eq!(extract_key(&h(&[("authorization", &format!("Bearer {k}"))])), Ok(k.as_str()));
    }

    #[test]
    fn extraction_from_either_header() {
        assert_eq!(extract_key(&h(&[("authorization", "Bearer sk-1")])), Ok("sk-1"));
        assert_eq!(extract_key(&h(&[("Authorization", "bearer   sk-1  ")])), Ok("sk-1"));
        assert_eq!(extract_key(&h(&[("x-api-key", "sk-1")])), Ok("sk-1"));
        assert_eq!(extract_key(&h(&[("X-Api-Key", " sk-1 "), ("authorization", "Bearer sk-1")])), Ok("sk-1"));
        assert_eq!(extract_key(&h(&[(":path", "/v1/chat/completions"), ("x-other", "Bearer no")])), Err(KeyError::Missing));
        assert_eq!(extract_key(&[]), Err(KeyError::Missing));
    }

    #[test]
    fn extraction_edge_cases() {
        assert_eq!(extract_key(&h(&[("authorization", "")])), Err(KeyError::Empty));
        assert_eq!(extract_key(&h(&[("authorization", "Bearer")])), Err(KeyError::Empty));
        assert_eq!(extract_key(&h(&[("authorization", "Bearer   ")])), Err(KeyError::Empty));
        assert_eq!(extract_key(&h(&[("x-api-key", "")])), Err(KeyError::Empty));
        assert_eq!(extract_key(&h(&[("authorization", "Basic dXNlcjpwYXNz")])), Err(KeyError::NotBearer));
        assert_eq!(extract_key(&h(&[("authorization", "sk-raw-key")])), Err(KeyError::NotBearer));
        assert_eq!(
            extract_key(&h(&[("authorization", "Bearer sk-1"), ("x-api-key", "sk-2")])),
            Err(KeyError::Ambiguous)
        );
        assert_eq!(
            extract_key(&h(&[("authorization", "Bearer sk-1"), ("authorization", "Bearer sk-2")])),
            Err(KeyError::Ambiguous)
        );
        // Repeated headers as Envoy hands them over: joined with commas.
        assert_eq!(extract_key(&h(&[("authorization", "Bearer sk-1,Bearer sk-2")])), Err(KeyError::Ambiguous));
        assert_eq!(extract_key(&h(&[("authorization", "Bearer sk-1, bearer sk-1")])), Ok("sk-1"));
        assert_eq!(
            extract_key(&h(&[("authorization", "Bearer sk-1,Bearer sk-1"), ("x-api-key", "sk-2")])),
            Err(KeyError::Ambiguous)
        );
        assert_eq!(extract_key(&h(&[("authorization", "Bearer sk-1,Bearer ")])), Err(KeyError::Empty));
        // A comma that does not separate Bearer credentials is part of one (invalid) value.
        assert_eq!(extract_key(&h(&[("authorization", "Bearer sk-1,sk-2")])), Ok("sk-1,sk-2"));
        assert_eq!(extract_key(&h(&[("authorization", "Bearer sk-1,Basic eA==")])), Err(KeyError::InvalidCharacters));
        assert_eq!(extract_key(&h(&[("authorization", "Bearer é,Bearer x")])), Err(KeyError::InvalidCharacters));
        assert_eq!(extract_key(&h(&[("authorization", "Bearer sk 1")])), Err(KeyError::InvalidCharacters));
        assert_eq!(extract_key(&h(&[("x-api-key", "sk-\u{7f}")])), Err(KeyError::InvalidCharacters));
        assert_eq!(extract_key(&h(&[("x-api-key", "clé")])), Err(KeyError::InvalidCharacters));
        // Enormous headers are refused before any hashing.
        let huge = format!("Bearer {}", "a".repeat(1 << 20));
        assert_eq!(extract_key(&h(&[("authorization", &huge)])), Err(KeyError::TooLong));
        assert_eq!(extract_key(&h(&[("x-api-key", &"a".repeat(MAX_KEY_LEN + 1))])), Err(KeyError::TooLong));
        assert_eq!(extract_key(&h(&[("x-api-key", &"a".repeat(MAX_KEY_LEN))])).map(str::len), Ok(MAX_KEY_LEN));
    }

    #[test]
    fn ring_finds_only_real_keys() {
        let r1 = record(&format!(r#"{{"id":"k1","sha256":"{}"}}"#, hash_key("sk-sy-one")));
        let r2 = record(&format!(r#"{{"id":"k2","sha256":"{}"}}"#, hash_key("sk-sy-two").to_uppercase()));
        let ring = KeyRing::new(vec![r1, r2]).unwrap();
        assert_eq!(ring.find("sk-sy-one").map(|r| r.id.as_str()), Some("k1"));
        assert_eq!(ring.find("sk-sy-two").map(|r| r.id.as_str()), Some("k2"));
        // Forged keys: near misses, the hash itself, case changes.
        assert!(ring.find("sk-sy-on").is_none());
        assert!(ring.find("sk-sy-one ").is_none());
        assert!(ring.find("SK-SY-ONE").is_none());
        assert!(ring.find(&hash_key("sk-sy-one")).is_none());
        assert_eq!(ring.len(), 2);
        // Duplicate ids or hashes are configuration errors.
        let dup = || record(&format!(r#"{{"id":"k1","sha256":"{}"}}"#, hash_key("x")));
        assert!(KeyRing::new(vec![dup(), dup()]).is_err());
        let same_hash = record(&format!(r#"{{"id":"k9","sha256":"{}"}}"#, hash_key("x")));
        assert!(KeyRing::new(vec![dup(), same_hash]).is_err());
    }

    #[test]
    fn key_config_validation() {
        let ok = format!(
            r#"{{"id":"k","team":"t","sha256":"{}","models":["gpt-4o*","claude-haiku"],"disabled":false,
                "expires_at":1900000000,"byok":true,"limits":{{"rpm":10,"tpm":1000,"max_concurrent":2}},
                "budget":{{"amount_usd":5,"window":"monthly"}},"metadata":{{"owner":"alice"}}}}"#,
            hash_key("x")
        );
        let r = record(&ok);
        assert_eq!(r.budget.unwrap().amount_micros, 5_000_000);
        assert_eq!(r.metadata["owner"], "alice");
        assert!(r.allows_model("gpt-4o-mini", "gpt-4o-mini"));
        assert!(r.allows_model("fast", "gpt-4o-mini"), "resolved name matches");
        assert!(r.allows_model("claude-haiku", "claude-haiku"));
        assert!(!r.allows_model("claude-3-opus", "claude-3-opus"));
        let bad = |s: &str| serde_json::from_str::<KeyConfig>(s).map_err(|e| e.to_string()).and_then(|c| c.compile());
        assert!(bad(r#"{"id":"k","sha256":"nothex"}"#).is_err());
        assert!(bad(&format!(r#"{{"id":"k","sha256":"{}","models":[]}}"#, hash_key("x"))).is_err());
        assert!(bad(&format!(r#"{{"id":"k","sha256":"{}","limits":{{"rpm":0}}}}"#, hash_key("x"))).is_err());
        assert!(bad(&format!(r#"{{"id":"","sha256":"{}"}}"#, hash_key("x"))).is_err());
        assert!(bad(&format!(r#"{{"id":"k","sha256":"{}","key":"plaintext"}}"#, hash_key("x"))).is_err());
        assert!(bad(&format!(r#"{{"id":"k","sha256":"{}","budget":{{"amount_usd":1,"window":"weekly"}}}}"#, hash_key("x"))).is_err());
    }

    #[test]
    fn byok_header() {
        let allowed = record(&format!(r#"{{"id":"k","sha256":"{}","byok":true}}"#, hash_key("x")));
        let denied = record(&format!(r#"{{"id":"k","sha256":"{}"}}"#, hash_key("x")));
        let hd = h(&[("x-switchyard-provider-key", " sk-provider-secret ")]);
        let s = extract_byok(&hd, DEFAULT_BYOK_HEADER, &allowed).unwrap().unwrap();
        assert_eq!(s.expose(), "sk-provider-secret");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        let e = extract_byok(&hd, DEFAULT_BYOK_HEADER, &denied).unwrap_err();
        assert_eq!((e.status, e.code.as_deref()), (403, Some("byok_not_allowed")));
        assert!(!e.message.contains("secret"));
        assert_eq!(extract_byok(&h(&[]), DEFAULT_BYOK_HEADER, &denied), Ok(None));
        assert_eq!(extract_byok(&h(&[("x-switchyard-provider-key", "")]), DEFAULT_BYOK_HEADER, &allowed).unwrap_err().status, 400);
        let huge = "a".repeat(MAX_BYOK_LEN + 1);
        assert_eq!(extract_byok(&h(&[("x-switchyard-provider-key", &huge)]), DEFAULT_BYOK_HEADER, &allowed).unwrap_err().status, 400);
    }

    #[test]
    fn errors_are_openai_shaped() {
        let e = KeyError::Unknown.to_api_error();
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(e.status, 401);
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "invalid_api_key");
        assert_ne!(KeyError::Disabled.message(), KeyError::Expired.message());
        let e = model_not_allowed("k", "gpt-4o");
        assert_eq!((e.status, e.kind, e.code.as_deref(), e.param.as_deref()), (403, "permission_error", Some("model_not_allowed"), Some("model")));
    }
}
