//! AWS Signature Version 4 (header form), as a pure function of its inputs — credentials, request
//! parts, payload hash and the signing time — so it can be checked against AWS's published test
//! suite and never reads a clock or the environment itself.
//!
//! The steps are AWS's: a canonical request (method, canonical URI, canonical query, canonical
//! headers, signed header names, hex SHA-256 of the payload), a string to sign
//! (`AWS4-HMAC-SHA256`, the time, the credential scope, the hex SHA-256 of the canonical request),
//! a signing key chained by HMAC-SHA256 from `"AWS4" + secret` through date, region, service and
//! `aws4_request`, and the hex HMAC of the string to sign under that key.
//!
//! URI encoding: every AWS service but S3 signs the path *double-encoded* — the path as it is sent
//! (already percent-encoded) is percent-encoded once more, so a Bedrock model id `a:b` that goes on
//! the wire as `/model/a%3Ab/converse` is signed as `/model/a%253Ab/converse`. [`Request::path`] is
//! the wire path; [`Request::double_encode_path`] selects the non-S3 rule. Paths are never
//! normalised (no `.`/`..`/`//` collapsing): the gateway builds them itself.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// Hex SHA-256 of the empty payload.
pub const EMPTY_PAYLOAD_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The parts of an HTTP request that SigV4 covers.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The path as sent on the wire (percent-encoded where needed), without the query.
    pub path: &'a str,
    /// Query parameters, *decoded* (name, value); encoded and sorted here.
    pub query: &'a [(&'a str, &'a str)],
    /// The headers to sign, names in any case. Must include `host` and `x-amz-date` (and
    /// `x-amz-security-token` when a session token is used); repeated names are joined with `,`.
    pub headers: &'a [(&'a str, &'a str)],
    /// Hex SHA-256 of the body (see [`sha256_hex`]).
    pub payload_sha256: &'a str,
    /// Percent-encode the wire path again (every service but S3).
    pub double_encode_path: bool,
}

/// Who signs, where.
#[derive(Clone, Copy)]
pub struct Key<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub region: &'a str,
    pub service: &'a str,
}

/// Every intermediate of a signature: the middle stages are what AWS's error message shows when a
/// signature does not match, and what the test suite publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub canonical_request: String,
    pub string_to_sign: String,
    /// `host;x-amz-date;…`
    pub signed_headers: String,
    /// Lower-case hex.
    pub signature: String,
    /// The `authorization` header value.
    pub authorization: String,
}

/// Signs `req` at `amz_date` (`YYYYMMDDTHHMMSSZ`, see [`amz_date`]).
pub fn sign(key: &Key<'_>, req: &Request<'_>, amz_date: &str) -> Signed {
    let (canonical_request, signed_headers) = canonical_request(req);
    let date = amz_date.get(..8).unwrap_or(amz_date);
    let scope = credential_scope(date, key.region, key.service);
    let string_to_sign = string_to_sign(amz_date, &scope, &canonical_request);
    let k = signing_key(key.secret_access_key, date, key.region, key.service);
    let signature = hex(&hmac(&k, string_to_sign.as_bytes()));
    let authorization = format!(
        "{ALGORITHM} Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        key.access_key_id
    );
    Signed { canonical_request, string_to_sign, signed_headers, signature, authorization }
}

/// The canonical request and the `SignedHeaders` list.
pub fn canonical_request(req: &Request<'_>) -> (String, String) {
    let mut out = String::with_capacity(256 + req.path.len());
    out.push_str(&req.method.to_ascii_uppercase());
    out.push('\n');
    out.push_str(&canonical_uri(req.path, req.double_encode_path));
    out.push('\n');
    out.push_str(&canonical_query(req.query));
    out.push('\n');
    let (headers, signed) = canonical_headers(req.headers);
    out.push_str(&headers);
    out.push('\n');
    out.push_str(&signed);
    out.push('\n');
    out.push_str(req.payload_sha256);
    (out, signed)
}

/// `/` for an empty path; the wire path encoded once more for `double_encode` (slashes kept);
/// otherwise the wire path as it is.
pub fn canonical_uri(path: &str, double_encode: bool) -> String {
    if path.is_empty() {
        return "/".to_string();
    }
    if double_encode {
        uri_encode(path, false)
    } else {
        path.to_string()
    }
}

/// Parameters encoded (RFC 3986 unreserved kept, everything else `%XX`, `/` too) and sorted by
/// name, then value.
pub fn canonical_query(query: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(String, String)> = query.iter().map(|(k, v)| (uri_encode(k, true), uri_encode(v, true))).collect();
    pairs.sort();
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// `name:value\n` lines (names lower-cased and sorted, values trimmed with inner runs of spaces
/// collapsed, repeated names joined with `,` in order) and the `;`-joined names.
pub fn canonical_headers(headers: &[(&str, &str)]) -> (String, String) {
    let mut merged: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let name = name.trim().to_ascii_lowercase();
        let value = collapse_spaces(value);
        match merged.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => {
                v.push(',');
                v.push_str(&value);
            }
            None => merged.push((name, value)),
        }
    }
    merged.sort_by(|a, b| a.0.cmp(&b.0));
    let mut lines = String::new();
    let mut signed = String::new();
    for (i, (n, v)) in merged.iter().enumerate() {
        lines.push_str(n);
        lines.push(':');
        lines.push_str(v);
        lines.push('\n');
        if i > 0 {
            signed.push(';');
        }
        signed.push_str(n);
    }
    (lines, signed)
}

/// Trims ASCII spaces and tabs and collapses inner runs of them into one space.
fn collapse_spaces(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for word in value.split([' ', '\t']).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// `YYYYMMDD/region/service/aws4_request`.
pub fn credential_scope(date: &str, region: &str, service: &str) -> String {
    format!("{date}/{region}/{service}/aws4_request")
}

pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!("{ALGORITHM}\n{amz_date}\n{scope}\n{}", sha256_hex(canonical_request.as_bytes()))
}

/// `kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")`.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let mut k0 = Vec::with_capacity(4 + secret.len());
    k0.extend_from_slice(b"AWS4");
    k0.extend_from_slice(secret.as_bytes());
    let k_date = hmac(&k0, date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length, so this cannot fail; no panic path either way.
    match HmacSha256::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().into()
        }
        Err(_) => [0; 32],
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0x0f) as usize] as char);
    }
    s
}

/// Percent-encodes everything but the RFC 3986 unreserved characters (`A-Z a-z 0-9 - _ . ~`), with
/// upper-case hex; `/` is kept unless `encode_slash`. This is AWS's `UriEncode()`.
pub fn uri_encode(s: &str, encode_slash: bool) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len() + 8);
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b'/' if !encode_slash => out.push('/'),
            _ => {
                out.push('%');
                out.push(DIGITS[(b >> 4) as usize] as char);
                out.push(DIGITS[(b & 0x0f) as usize] as char);
            }
        }
    }
    out
}

/// `YYYYMMDDTHHMMSSZ` (UTC) for a Unix time in seconds.
pub fn amz_date(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", rem / 3600, (rem % 3600) / 60, rem % 60)
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    //! The vectors are AWS's Signature Version 4 test suite (`aws-sig-v4-test-suite`, shipped today
    //! as `tests/aws-signing-test-suite/v4` in awslabs/aws-c-auth): fixed context access key
    //! `AKIDEXAMPLE`, secret `wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY`, region `us-east-1`,
    //! service `service`, time `20150830T123600Z`. Each case checks all three published stages
    //! (canonical request, string to sign, signature), then the `authorization` header. The IAM
    //! `ListUsers` example is the one in AWS's "Create a signed AWS API request" documentation.

    use super::*;

    const AKID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const DATE: &str = "20150830T123600Z";
    const HOST: &str = "example.amazonaws.com";

    fn suite_key() -> Key<'static> {
        Key { access_key_id: AKID, secret_access_key: SECRET, region: "us-east-1", service: "service" }
    }

    struct Vector<'a> {
        name: &'a str,
        method: &'a str,
        path: &'a str,
        double_encode: bool,
        query: &'a [(&'a str, &'a str)],
        headers: &'a [(&'a str, &'a str)],
        body: &'a [u8],
        canonical_request: &'a str,
        string_to_sign: &'a str,
        signature: &'a str,
    }

    fn check(key: &Key<'_>, v: &Vector<'_>) {
        let payload = sha256_hex(v.body);
        let req = Request {
            method: v.method,
            path: v.path,
            query: v.query,
            headers: v.headers,
            payload_sha256: &payload,
            double_encode_path: v.double_encode,
        };
        let s = sign(key, &req, DATE);
        assert_eq!(s.canonical_request, v.canonical_request, "{}: canonical request", v.name);
        assert_eq!(s.string_to_sign, v.string_to_sign, "{}: string to sign", v.name);
        assert_eq!(s.signature, v.signature, "{}: signature", v.name);
        let want = format!(
            "AWS4-HMAC-SHA256 Credential={}/{}/{}/{}/aws4_request, SignedHeaders={}, Signature={}",
            key.access_key_id,
            &DATE[..8],
            key.region,
            key.service,
            s.signed_headers,
            v.signature
        );
        assert_eq!(s.authorization, want, "{}: authorization", v.name);
    }

    const STS_TOKEN: &str = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";

    #[test]
    fn aws_test_suite_vectors() {
        let vanilla = [("Host", HOST), ("X-Amz-Date", DATE)];
        let vectors = [
            Vector {
                name: "get-vanilla",
                method: "GET",
                path: "/",
                double_encode: true,
                query: &[],
                headers: &vanilla,
                body: b"",
                canonical_request: "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                string_to_sign: "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\nbb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63",
                signature: "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            },
            Vector {
                name: "post-vanilla",
                method: "POST",
                path: "/",
                double_encode: true,
                query: &[],
                headers: &vanilla,
                body: b"",
                canonical_request: "POST\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                string_to_sign: "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n553f88c9e4d10fc9e109e2aeb65f030801b70c2f6468faca261d401ae622fc87",
                signature: "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            },
            Vector {
                name: "get-vanilla-query-order-key-case",
                method: "GET",
                path: "/",
                double_encode: true,
                query: &[("Param2", "value2"), ("Param1", "value1")],
                headers: &vanilla,
                body: b"",
                canonical_request: "GET\n/\nParam1=value1&Param2=value2\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                string_to_sign: "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n816cd5b414d056048ba4f7c5386d6e0533120fb1fcfa93762cf0fc39e2cf19e0",
                signature: "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
            },
            Vector {
                // The original suite's form: content-type signed, body `Param1=value1`.
                name: "post-x-www-form-urlencoded",
                method: "POST",
                path: "/",
                double_encode: true,
                query: &[],
                headers: &[("Content-Type", "application/x-www-form-urlencoded"), ("Host", HOST), ("X-Amz-Date", DATE)],
                body: b"Param1=value1",
                canonical_request: "POST\n/\n\ncontent-type:application/x-www-form-urlencoded\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\ncontent-type;host;x-amz-date\n9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e",
                string_to_sign: "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n42a5e5bb34198acb3e84da4f085bb7927f2bc277ca766e6d19c73c2154021281",
                signature: "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
            },
            Vector {
                // aws-c-auth's revision of the same case: content-length and x-amz-content-sha256 signed too.
                name: "post-x-www-form-urlencoded (aws-c-auth)",
                method: "POST",
                path: "/",
                double_encode: true,
                query: &[],
                headers: &[
                    ("Content-Type", "application/x-www-form-urlencoded"),
                    ("Host", HOST),
                    ("Content-Length", "13"),
                    ("X-Amz-Date", DATE),
                    ("X-Amz-Content-Sha256", "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e"),
                ],
                body: b"Param1=value1",
                canonical_request: "POST\n/\n\ncontent-length:13\ncontent-type:application/x-www-form-urlencoded\nhost:example.amazonaws.com\nx-amz-content-sha256:9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e\nx-amz-date:20150830T123600Z\n\ncontent-length;content-type;host;x-amz-content-sha256;x-amz-date\n9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e",
                string_to_sign: "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\nb1edd1d03544c25390e32085d55b57acc9a3961bb59415ff86c45c3d89d16cfb",
                signature: "d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b",
            },
            Vector {
                name: "post-sts-header-before",
                method: "POST",
                path: "/",
                double_encode: true,
                query: &[],
                headers: &[("Host", HOST), ("X-Amz-Date", DATE), ("X-Amz-Security-Token", STS_TOKEN)],
                body: b"",
                canonical_request: &format!(
                    "POST\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\nx-amz-security-token:{STS_TOKEN}\n\nhost;x-amz-date;x-amz-security-token\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                ),
                string_to_sign: "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\nc237e1b440d4c63c32ca95b5b99481081cb7b13c7e40434868e71567c1a882f6",
                signature: "85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead",
            },
            Vector {
                name: "get-header-value-trim",
                method: "GET",
                path: "/",
                double_encode: true,
                query: &[],
                headers: &[("Host", HOST), ("My-Header1", " value1"), ("My-Header2", " \"a   b   c\""), ("X-Amz-Date", DATE)],
                body: b"",
                canonical_request: "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value1\nmy-header2:\"a b c\"\nx-amz-date:20150830T123600Z\n\nhost;my-header1;my-header2;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                string_to_sign: "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\na726db9b0df21c14f559d0a978e563112acb1b9e05476f0a6a1c7d68f28605c7",
                signature: "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
            },
            Vector {
                name: "get-header-key-duplicate",
                method: "GET",
                path: "/",
                double_encode: true,
                query: &[],
                headers: &[("Host", HOST), ("My-Header1", "value2"), ("My-Header1", "value2"), ("My-Header1", "value1"), ("X-Amz-Date", DATE)],
                body: b"",
                canonical_request: "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value2,value2,value1\nx-amz-date:20150830T123600Z\n\nhost;my-header1;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                string_to_sign: "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\ndc7f04a3abfde8d472b0ab1a418b741b7c67174dad1551b4117b15527fbe966c",
                signature: "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea",
            },
            Vector {
                // Unreserved characters survive the second encoding untouched.
                name: "get-unreserved",
                method: "GET",
                path: "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                double_encode: true,
                query: &[],
                headers: &vanilla,
                body: b"",
                canonical_request: "GET\n/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                string_to_sign: "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n6a968768eefaa713e2a6b16b589a8ea192661f098f37349f4e2c0082757446f9",
                signature: "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f",
            },
            Vector {
                // The suite encodes its raw path once: the wire form `/%E1%88%B4`, signed as is.
                name: "get-utf8",
                method: "GET",
                path: "/%E1%88%B4",
                double_encode: false,
                query: &[],
                headers: &vanilla,
                body: b"",
                canonical_request: "GET\n/%E1%88%B4\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                string_to_sign: "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n2a0a97d02205e45ce2e994789806b19270cfbbb0921b278ccf58f5249ac42102",
                signature: "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85",
            },
            Vector {
                name: "get-vanilla-utf8-query",
                method: "GET",
                path: "/",
                double_encode: true,
                query: &[("\u{1234}", "bar")],
                headers: &vanilla,
                body: b"",
                canonical_request: "GET\n/\n%E1%88%B4=bar\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                string_to_sign: "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\neb30c5bed55734080471a834cc727ae56beb50e5f39d1bff6d0d38cb192a7073",
                signature: "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04",
            },
            Vector {
                // No normalisation: empty segments stay.
                name: "get-slashes-unnormalized",
                method: "GET",
                path: "//example//",
                double_encode: true,
                query: &[],
                headers: &vanilla,
                body: b"",
                canonical_request: "GET\n//example//\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                string_to_sign: "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n528ec3105ee1f34ab014bb0a1a45da0ed2742a4fea3555149e5b4d5d201eb240",
                signature: "87cca117541a147f6df867677d98a7d80dff226d2bfca9e4ffa899665623c7e5",
            },
        ];
        for v in &vectors {
            check(&suite_key(), v);
        }
    }

    #[test]
    fn aws_documentation_iam_example() {
        // GET https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08
        let key = Key { access_key_id: AKID, secret_access_key: SECRET, region: "us-east-1", service: "iam" };
        assert_eq!(
            hex(&signing_key(SECRET, "20150830", "us-east-1", "iam")),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
        let req = Request {
            method: "GET",
            path: "/",
            query: &[("Action", "ListUsers"), ("Version", "2010-05-08")],
            headers: &[
                ("Content-Type", "application/x-www-form-urlencoded; charset=utf-8"),
                ("Host", "iam.amazonaws.com"),
                ("X-Amz-Date", DATE),
            ],
            payload_sha256: EMPTY_PAYLOAD_SHA256,
            double_encode_path: true,
        };
        let s = sign(&key, &req, DATE);
        assert_eq!(
            s.canonical_request,
            "GET\n/\nAction=ListUsers&Version=2010-05-08\ncontent-type:application/x-www-form-urlencoded; charset=utf-8\nhost:iam.amazonaws.com\nx-amz-date:20150830T123600Z\n\ncontent-type;host;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(sha256_hex(s.canonical_request.as_bytes()), "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59");
        assert_eq!(
            s.string_to_sign,
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/iam/aws4_request\nf536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
        );
        assert_eq!(
            s.authorization,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
        // The older documented signing-key example (2012-02-15).
        assert_eq!(
            hex(&signing_key(SECRET, "20120215", "us-east-1", "iam")),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }

    #[test]
    fn double_encoding_of_the_wire_path() {
        // Bedrock model ids carry `:` (and ARNs `/`), sent as %3A / %2F and signed as %253A / %252F.
        assert_eq!(canonical_uri("/model/us.amazon.nova-micro-v1%3A0/converse", true), "/model/us.amazon.nova-micro-v1%253A0/converse");
        assert_eq!(canonical_uri("/model/us.amazon.nova-micro-v1%3A0/converse", false), "/model/us.amazon.nova-micro-v1%3A0/converse");
        assert_eq!(
            canonical_uri("/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123%3Ainference-profile%2Fx/converse", true),
            "/model/arn%253Aaws%253Abedrock%253Aus-east-1%253A123%253Ainference-profile%252Fx/converse"
        );
        assert_eq!(canonical_uri("", true), "/");
        assert_eq!(uri_encode("a b+c/d:é", true), "a%20b%2Bc%2Fd%3A%C3%A9");
        assert_eq!(uri_encode("a b+c/d", false), "a%20b%2Bc/d");
    }

    #[test]
    fn every_input_changes_the_signature() {
        let base_headers = [("host", HOST), ("x-amz-date", DATE), ("content-type", "application/json")];
        let body_hash = sha256_hex(b"{}");
        let req = Request {
            method: "POST",
            path: "/model/m%3A0/converse",
            query: &[],
            headers: &base_headers,
            payload_sha256: &body_hash,
            double_encode_path: true,
        };
        let base = sign(&suite_key(), &req, DATE).signature;
        let other_body = sha256_hex(b"{ }");
        let variants = [
            sign(&suite_key(), &Request { payload_sha256: &other_body, ..req }, DATE),
            sign(&suite_key(), &Request { path: "/model/m%3A1/converse", ..req }, DATE),
            sign(&suite_key(), &Request { method: "PUT", ..req }, DATE),
            sign(&suite_key(), &Request { double_encode_path: false, ..req }, DATE),
            sign(&suite_key(), &Request { headers: &[("host", "other.example.com"), ("x-amz-date", DATE), ("content-type", "application/json")], ..req }, DATE),
            sign(&suite_key(), &req, "20150830T123601Z"),
            sign(&Key { region: "us-west-2", ..suite_key() }, &req, DATE),
            sign(&Key { service: "bedrock", ..suite_key() }, &req, DATE),
            sign(&Key { secret_access_key: "x", ..suite_key() }, &req, DATE),
        ];
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(v.signature, base, "variant {i}");
        }
        // The access key id is not part of the signature, only of the header.
        let other_id = sign(&Key { access_key_id: "AKIDOTHER", ..suite_key() }, &req, DATE);
        assert_eq!(other_id.signature, base);
        assert!(other_id.authorization.contains("Credential=AKIDOTHER/20150830/us-east-1/service/aws4_request"));
    }

    #[test]
    fn amz_date_formats_unix_time() {
        assert_eq!(amz_date(1_440_938_160), "20150830T123600Z");
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(951_782_400), "20000229T000000Z");
        assert_eq!(amz_date(1_709_251_199), "20240229T235959Z");
        assert_eq!(amz_date(4_102_444_800), "21000101T000000Z");
    }
}
