//! Hand-written scanners for the built-in detectors. Each one walks the text's bytes once and
//! reports the byte ranges it recognises; every range starts and ends on an ASCII byte, so it is a
//! valid `str` range. No detector allocates except to push its matches.
//!
//! Near-misses are rejected by the same checks a human would make: a card number must pass Luhn,
//! an IBAN its ISO 7064 mod-97 check and its country's length, an SSN the SSA's never-issued
//! ranges, an IPv4 address octets ≤ 255, an IPv6 address the standard library's parser.

/// A built-in detector. The order is the priority when two detectors claim overlapping text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    PrivateKey,
    Jwt,
    AnthropicKey,
    OpenaiKey,
    AwsAccessKey,
    GithubToken,
    SlackToken,
    Email,
    Iban,
    CreditCard,
    UsSsn,
    IpAddress,
    Phone,
}

pub const BUILTINS: [Kind; 13] = [
    Kind::PrivateKey,
    Kind::Jwt,
    Kind::AnthropicKey,
    Kind::OpenaiKey,
    Kind::AwsAccessKey,
    Kind::GithubToken,
    Kind::SlackToken,
    Kind::Email,
    Kind::Iban,
    Kind::CreditCard,
    Kind::UsSsn,
    Kind::IpAddress,
    Kind::Phone,
];

impl Kind {
    /// The detector's name in the configuration, metrics and errors.
    pub fn name(self) -> &'static str {
        match self {
            Kind::PrivateKey => "private_key",
            Kind::Jwt => "jwt",
            Kind::AnthropicKey => "anthropic_key",
            Kind::OpenaiKey => "openai_key",
            Kind::AwsAccessKey => "aws_access_key",
            Kind::GithubToken => "github_token",
            Kind::SlackToken => "slack_token",
            Kind::Email => "email",
            Kind::Iban => "iban",
            Kind::CreditCard => "credit_card",
            Kind::UsSsn => "us_ssn",
            Kind::IpAddress => "ip_address",
            Kind::Phone => "phone",
        }
    }

    /// What a human reads in an error message.
    pub fn description(self) -> &'static str {
        match self {
            Kind::PrivateKey => "a private key",
            Kind::Jwt => "a JSON Web Token",
            Kind::AnthropicKey => "an Anthropic API key",
            Kind::OpenaiKey => "an OpenAI API key",
            Kind::AwsAccessKey => "an AWS access key id",
            Kind::GithubToken => "a GitHub token",
            Kind::SlackToken => "a Slack token",
            Kind::Email => "an e-mail address",
            Kind::Iban => "an IBAN",
            Kind::CreditCard => "a credit card number",
            Kind::UsSsn => "a US social security number",
            Kind::IpAddress => "an IP address",
            Kind::Phone => "a phone number",
        }
    }

    pub fn is_secret(self) -> bool {
        matches!(
            self,
            Kind::PrivateKey | Kind::Jwt | Kind::AnthropicKey | Kind::OpenaiKey | Kind::AwsAccessKey | Kind::GithubToken | Kind::SlackToken
        )
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        BUILTINS.iter().copied().find(|k| k.name() == name)
    }

    /// Appends the `[start, end)` byte ranges this detector finds in `text`.
    pub fn scan(self, text: &str, out: &mut Vec<(usize, usize)>) {
        let b = text.as_bytes();
        match self {
            Kind::PrivateKey => private_keys(text, out),
            Kind::Jwt => jwts(b, out),
            Kind::AnthropicKey => prefixed(b, b"sk-ant-", 20, is_token_char, out),
            Kind::OpenaiKey => openai_keys(b, out),
            Kind::AwsAccessKey => aws_keys(b, out),
            Kind::GithubToken => github_tokens(b, out),
            Kind::SlackToken => slack_tokens(b, out),
            Kind::Email => emails(b, out),
            Kind::Iban => ibans(b, out),
            Kind::CreditCard => cards(b, out),
            Kind::UsSsn => ssns(b, out),
            Kind::IpAddress => ips(text, out),
            Kind::Phone => phones(b, out),
        }
    }
}

/// The byte at `i`, or 0 past either end (0 is no detector's character).
#[inline]
fn at(b: &[u8], i: usize) -> u8 {
    b.get(i).copied().unwrap_or(0)
}

/// The byte before `i`, or 0 at the start.
#[inline]
fn before(b: &[u8], i: usize) -> u8 {
    if i == 0 {
        0
    } else {
        at(b, i - 1)
    }
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

fn is_b64url(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

/// Every occurrence of `needle` in `b`.
fn occurrences<'a>(b: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    memchr::memmem::find_iter(b, needle)
}

/// Runs of `body` characters of at least `min` after `prefix`, not preceded by a token character.
fn prefixed(b: &[u8], prefix: &[u8], min: usize, body: fn(u8) -> bool, out: &mut Vec<(usize, usize)>) {
    let mut next = 0;
    for s in occurrences(b, prefix) {
        if s < next || is_token_char(before(b, s)) {
            continue;
        }
        let mut e = s + prefix.len();
        while body(at(b, e)) {
            e += 1;
        }
        if e - s - prefix.len() >= min {
            out.push((s, e));
            next = e;
        }
    }
}

fn openai_keys(b: &[u8], out: &mut Vec<(usize, usize)>) {
    let mut found = Vec::new();
    prefixed(b, b"sk-", 20, is_token_char, &mut found);
    // `sk-ant-…` is Anthropic's.
    out.extend(found.into_iter().filter(|&(s, _)| !b.get(s..).is_some_and(|t| t.starts_with(b"sk-ant-"))));
}

/// AWS access key ids: a four-letter type prefix and 16 upper-case letters or digits.
fn aws_keys(b: &[u8], out: &mut Vec<(usize, usize)>) {
    const PREFIXES: [&[u8; 4]; 4] = [b"AKIA", b"ASIA", b"ABIA", b"ACCA"];
    let mut i = 0;
    while let Some(p) = memchr::memchr(b'A', b.get(i..).unwrap_or_default()) {
        let s = i + p;
        i = s + 1;
        if b.get(s..s + 4).is_some_and(|w| PREFIXES.iter().any(|p| p.as_slice() == w)) && !is_word(before(b, s)) {
            let body = b.get(s + 4..s + 20).unwrap_or_default();
            if body.len() == 16 && body.iter().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()) && !is_word(at(b, s + 20)) {
                out.push((s, s + 20));
                i = s + 20;
            }
        }
    }
}

fn github_tokens(b: &[u8], out: &mut Vec<(usize, usize)>) {
    for p in [b"ghp_", b"gho_", b"ghu_", b"ghs_", b"ghr_"] {
        prefixed(b, p, 36, |c| c.is_ascii_alphanumeric(), out);
    }
    prefixed(b, b"github_pat_", 22, is_word, out);
}

fn slack_tokens(b: &[u8], out: &mut Vec<(usize, usize)>) {
    for p in [b"xoxb-", b"xoxp-", b"xoxa-", b"xoxo-", b"xoxr-", b"xoxs-", b"xoxe-"] {
        prefixed(b, p, 10, |c| c.is_ascii_alphanumeric() || c == b'-', out);
    }
}

/// `-----BEGIN … PRIVATE KEY-----` to its `-----END … PRIVATE KEY-----` (or the end of the text,
/// when the block was cut).
fn private_keys(text: &str, out: &mut Vec<(usize, usize)>) {
    let b = text.as_bytes();
    let mut from = 0;
    while let Some(p) = memchr::memmem::find(b.get(from..).unwrap_or_default(), b"-----BEGIN ") {
        let s = from + p;
        let head_end = match memchr::memmem::find(b.get(s + 11..).unwrap_or_default(), b"-----") {
            Some(q) => s + 11 + q,
            None => break,
        };
        let label = b.get(s + 11..head_end).unwrap_or_default();
        if label.len() > 40 || !label.ends_with(b"PRIVATE KEY") {
            from = head_end;
            continue;
        }
        let end = match memchr::memmem::find(b.get(head_end..).unwrap_or_default(), b"-----END ") {
            Some(q) => {
                let e = head_end + q + 9;
                match memchr::memmem::find(b.get(e..).unwrap_or_default(), b"-----") {
                    Some(r) => e + r + 5,
                    None => b.len(),
                }
            }
            None => b.len(),
        };
        out.push((s, end));
        from = end;
    }
}

/// `eyJ….eyJ….sig`: a JWS compact serialisation whose header and payload are JSON objects.
fn jwts(b: &[u8], out: &mut Vec<(usize, usize)>) {
    let mut next = 0;
    for s in occurrences(b, b"eyJ") {
        if s < next || is_b64url(before(b, s)) {
            continue;
        }
        let mut e = s;
        while is_b64url(at(b, e)) {
            e += 1;
        }
        if e - s < 10 || at(b, e) != b'.' || b.get(e + 1..e + 4) != Some(b"eyJ".as_slice()) {
            continue;
        }
        let mut f = e + 1;
        while is_b64url(at(b, f)) {
            f += 1;
        }
        if at(b, f) != b'.' {
            continue;
        }
        let mut g = f + 1;
        while is_b64url(at(b, g)) {
            g += 1;
        }
        out.push((s, g));
        next = g;
    }
}

fn is_local_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn is_domain_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'.' || c == b'-'
}

/// `local@domain.tld`: a local part of the usual characters, a domain of at least two labels
/// and a top-level label of two or more letters.
fn emails(b: &[u8], out: &mut Vec<(usize, usize)>) {
    let mut next = 0;
    for at_pos in memchr::memchr_iter(b'@', b) {
        if at_pos < next {
            continue;
        }
        let mut s = at_pos;
        while s > next && s > 0 && is_local_char(before(b, s)) && at_pos - s < 64 {
            s -= 1;
        }
        while at(b, s) == b'.' && s < at_pos {
            s += 1;
        }
        if s == at_pos {
            continue;
        }
        let mut e = at_pos + 1;
        while is_domain_char(at(b, e)) && e - at_pos < 255 {
            e += 1;
        }
        while e > at_pos + 1 && matches!(before(b, e), b'.' | b'-') {
            e -= 1;
        }
        let domain = b.get(at_pos + 1..e).unwrap_or_default();
        let Some(dot) = domain.iter().rposition(|&c| c == b'.') else { continue };
        let tld = domain.get(dot + 1..).unwrap_or_default();
        if dot == 0 || tld.len() < 2 || !tld.iter().all(u8::is_ascii_alphabetic) || domain.windows(2).any(|w| w == b"..") {
            continue;
        }
        out.push((s, e));
        next = e;
    }
}

/// Digits with optional single spaces or hyphens between them, starting at `s`; returns the end
/// (after the last digit) and the digits.
fn digit_run(b: &[u8], s: usize, seps: &[u8], max_digits: usize, digits: &mut Vec<u8>) -> usize {
    digits.clear();
    let mut e = s;
    let mut i = s;
    loop {
        let c = at(b, i);
        if c.is_ascii_digit() {
            digits.push(c - b'0');
            i += 1;
            e = i;
            if digits.len() > max_digits {
                return e;
            }
        } else if seps.contains(&c) && at(b, i + 1).is_ascii_digit() && i > s {
            i += 1;
        } else {
            return e;
        }
    }
}

pub fn luhn_ok(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &d) in digits.iter().rev().enumerate() {
        let d = u32::from(d);
        sum += if i % 2 == 1 {
            let x = d * 2;
            if x > 9 {
                x - 9
            } else {
                x
            }
        } else {
            d
        };
    }
    sum % 10 == 0
}

/// 13 to 19 digits (spaces or hyphens between groups allowed) that pass Luhn, starting with a
/// major network's first digit (2–6).
fn cards(b: &[u8], out: &mut Vec<(usize, usize)>) {
    let mut digits = Vec::with_capacity(20);
    let mut i = 0;
    while i < b.len() {
        let c = at(b, i);
        if !c.is_ascii_digit() || is_word(before(b, i)) {
            i += 1;
            continue;
        }
        let e = digit_run(b, i, b" -", 19, &mut digits);
        let ok = (13..=19).contains(&digits.len())
            && (2..=6).contains(&digits.first().copied().unwrap_or(0))
            && !is_word(at(b, e))
            && luhn_ok(&digits);
        if ok {
            out.push((i, e));
        }
        i = e.max(i + 1);
    }
}

/// `AAA-GG-SSSS` (or with spaces), outside the never-issued ranges (area 000, 666, 900–999; group
/// 00; serial 0000).
fn ssns(b: &[u8], out: &mut Vec<(usize, usize)>) {
    let mut i = 0;
    while i + 11 <= b.len() {
        let w = b.get(i..i + 11).unwrap_or_default();
        let sep = at(w, 3);
        let shape = (sep == b'-' || sep == b' ')
            && at(w, 6) == sep
            && w.iter().enumerate().all(|(k, c)| k == 3 || k == 6 || c.is_ascii_digit());
        if shape && !is_word(before(b, i)) && !is_word(at(b, i + 11)) && !matches!(at(b, i + 11), b'-') && before(b, i) != b'-' {
            let num = |r: std::ops::Range<usize>| w.get(r).unwrap_or_default().iter().fold(0u32, |a, c| a * 10 + u32::from(c - b'0'));
            let (area, group, serial) = (num(0..3), num(4..6), num(7..11));
            if area != 0 && area != 666 && area < 900 && group != 0 && serial != 0 {
                out.push((i, i + 11));
                i += 11;
                continue;
            }
        }
        i += 1;
    }
}

/// Length of each country's IBAN (ISO 13616 registry).
const IBAN_LENGTHS: &[(&[u8; 2], u8)] = &[
    (b"AD", 24), (b"AE", 23), (b"AL", 28), (b"AT", 20), (b"AZ", 28), (b"BA", 20), (b"BE", 16), (b"BG", 22),
    (b"BH", 22), (b"BR", 29), (b"BY", 28), (b"CH", 21), (b"CR", 22), (b"CY", 28), (b"CZ", 24), (b"DE", 22),
    (b"DK", 18), (b"DO", 28), (b"EE", 20), (b"EG", 29), (b"ES", 24), (b"FI", 18), (b"FO", 18), (b"FR", 27),
    (b"GB", 22), (b"GE", 22), (b"GI", 23), (b"GL", 18), (b"GR", 27), (b"GT", 28), (b"HR", 21), (b"HU", 28),
    (b"IE", 22), (b"IL", 23), (b"IQ", 23), (b"IS", 26), (b"IT", 27), (b"JO", 30), (b"KW", 30), (b"KZ", 20),
    (b"LB", 28), (b"LC", 32), (b"LI", 21), (b"LT", 20), (b"LU", 20), (b"LV", 21), (b"MC", 27), (b"MD", 24),
    (b"ME", 22), (b"MK", 19), (b"MR", 27), (b"MT", 31), (b"MU", 30), (b"NL", 18), (b"NO", 15), (b"PK", 24),
    (b"PL", 28), (b"PS", 29), (b"PT", 25), (b"QA", 29), (b"RO", 24), (b"RS", 22), (b"SA", 24), (b"SC", 31),
    (b"SE", 24), (b"SI", 19), (b"SK", 24), (b"SM", 27), (b"ST", 25), (b"SV", 28), (b"TL", 23), (b"TN", 24),
    (b"TR", 26), (b"UA", 29), (b"VA", 22), (b"VG", 24), (b"XK", 20),
];

/// ISO 7064 MOD 97-10 over the IBAN with its first four characters moved to the end.
pub fn iban_ok(chars: &[u8]) -> bool {
    if chars.len() < 5 {
        return false;
    }
    let mut rem = 0u32;
    for &c in chars.iter().skip(4).chain(chars.iter().take(4)) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 { (rem * 100 + v) % 97 } else { (rem * 10 + v) % 97 };
    }
    rem == 1
}

/// A country code, two check digits and the country's length of upper-case letters and digits,
/// compact or in groups of four separated by single spaces, whose mod-97 check holds.
fn ibans(b: &[u8], out: &mut Vec<(usize, usize)>) {
    let mut chars = Vec::with_capacity(34);
    let mut i = 0;
    while i + 15 <= b.len() {
        let c0 = at(b, i);
        if !c0.is_ascii_uppercase() || is_word(before(b, i)) {
            i += 1;
            continue;
        }
        let cc = [c0, at(b, i + 1)];
        let Some(&(_, len)) = IBAN_LENGTHS.iter().find(|(c, _)| **c == cc) else {
            i += 1;
            continue;
        };
        if !at(b, i + 2).is_ascii_digit() || !at(b, i + 3).is_ascii_digit() {
            i += 1;
            continue;
        }
        chars.clear();
        let mut j = i;
        let mut spaced = false;
        while chars.len() < usize::from(len) {
            let c = at(b, j);
            if c.is_ascii_uppercase() || c.is_ascii_digit() {
                chars.push(c);
                j += 1;
            } else if c == b' ' && chars.len() % 4 == 0 && (chars.len() == 4 && !spaced || spaced) && (at(b, j + 1).is_ascii_alphanumeric()) {
                spaced = true;
                j += 1;
            } else {
                break;
            }
        }
        if chars.len() == usize::from(len) && !is_word(at(b, j)) && iban_ok(&chars) {
            out.push((i, j));
            i = j;
        } else {
            i += 1;
        }
    }
}

/// IPv4 dotted quads (octets 0–255, no leading zeros) and IPv6 addresses (what the standard
/// library parses, with at least two colons), not inside a longer word or number.
fn ips(text: &str, out: &mut Vec<(usize, usize)>) {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = at(b, i);
        let p = before(b, i);
        let starts = (c.is_ascii_hexdigit() || c == b':') && !(is_word(p) || p == b'.' || p == b':');
        if !starts {
            i += 1;
            continue;
        }
        let mut e = i;
        while at(b, e).is_ascii_hexdigit() || matches!(at(b, e), b':' | b'.') {
            e += 1;
        }
        // A sentence may end right after an address.
        let mut end = e;
        while end > i && matches!(before(b, end), b'.' | b':') && !(before(b, end) == b':' && end >= 2 && at(b, end - 2) == b':') {
            end -= 1;
        }
        let cand = text.get(i..end).unwrap_or_default();
        let tail_ok = !is_word(at(b, e));
        if tail_ok && cand.contains(':') && cand.bytes().filter(|&c| c == b':').count() >= 2 && cand.bytes().any(|c| c.is_ascii_hexdigit()) {
            if cand.parse::<std::net::Ipv6Addr>().is_ok() {
                out.push((i, end));
                i = e;
                continue;
            }
        } else if tail_ok && ipv4_ok(cand) {
            out.push((i, end));
            i = e;
            continue;
        }
        i = e.max(i + 1);
    }
}

fn ipv4_ok(s: &str) -> bool {
    let mut n = 0;
    for part in s.split('.') {
        n += 1;
        if n > 4 || part.is_empty() || part.len() > 3 || !part.bytes().all(|c| c.is_ascii_digit()) || (part.len() > 1 && part.starts_with('0')) {
            return false;
        }
        if part.parse::<u16>().map_or(true, |v| v > 255) {
            return false;
        }
    }
    n == 4
}

/// After a separator at `j`: a digit, or `(`/`)`/space then a digit.
fn phone_group_follows(b: &[u8], j: usize) -> bool {
    let n = at(b, j + 1);
    n.is_ascii_digit() || (matches!(n, b'(' | b' ') && at(b, j + 2).is_ascii_digit())
}

/// Phone numbers: `+` and 8–15 digits (E.164), or 10 digits in the North American form
/// (area code and exchange starting 2–9), with optional single spaces, hyphens, dots and
/// parentheses between groups. Bare digit runs other than these, dates and IPv4 addresses are not
/// phone numbers.
fn phones(b: &[u8], out: &mut Vec<(usize, usize)>) {
    let mut digits = Vec::with_capacity(16);
    let mut i = 0;
    while i < b.len() {
        let c = at(b, i);
        let p = before(b, i);
        if !(c == b'+' || c == b'(' || c.is_ascii_digit()) || is_word(p) || matches!(p, b'+' | b'.' | b'-' | b'/' | b':' | b',') {
            i += 1;
            continue;
        }
        let plus = c == b'+';
        let mut j = if plus { i + 1 } else { i };
        digits.clear();
        let mut seps = 0;
        let mut e = j;
        let mut last_sep = 0u8;
        let mut sep_kinds = 0u8;
        loop {
            let d = at(b, j);
            if d.is_ascii_digit() {
                digits.push(d - b'0');
                j += 1;
                e = j;
                if digits.len() > 15 {
                    break;
                }
            } else if matches!(d, b' ' | b'-' | b'.' | b'(' | b')') && j > i && j - e <= 1 && phone_group_follows(b, j) {
                // One separator between groups (a ") " pair counts as one).
                if d != b'(' && d != b')' && d != last_sep {
                    sep_kinds += 1;
                    last_sep = d;
                }
                seps += 1;
                j += 1;
                if d == b')' && at(b, j) == b' ' {
                    j += 1;
                }
            } else if d == b'(' && j == i {
                j += 1;
            } else {
                break;
            }
        }
        let n = digits.len();
        let first = digits.first().copied().unwrap_or(0);
        let nanp = |ds: &[u8]| ds.len() == 10 && ds.first().copied().unwrap_or(0) >= 2 && ds.get(3).copied().unwrap_or(0) >= 2;
        let ok = !is_word(at(b, e))
            && !(at(b, e) == b'.' && at(b, e + 1).is_ascii_digit())
            && at(b, e) != b'-'
            && sep_kinds <= 1
            && if plus {
                (8..=15).contains(&n) && first != 0
            } else {
                nanp(&digits) || (n == 11 && first == 1 && nanp(digits.get(1..).unwrap_or_default()) && seps > 0)
            }
            && !(last_sep == b'.' && seps == 3 && n <= 12);
        if ok {
            out.push((i, e));
            i = e;
        } else {
            i = e.max(i + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(kind: Kind, text: &str) -> Vec<&str> {
        let mut v = Vec::new();
        kind.scan(text, &mut v);
        v.into_iter().map(|(s, e)| &text[s..e]).collect()
    }

    #[test]
    fn emails_true_positives_and_near_misses() {
        assert_eq!(found(Kind::Email, "mail alice.smith+tag@mail.example.co.uk, please."), ["alice.smith+tag@mail.example.co.uk"]);
        assert_eq!(found(Kind::Email, "<bob@example.com>"), ["bob@example.com"]);
        assert_eq!(found(Kind::Email, "a@b.c x@localhost @handle user@ example@domain.c0m"), Vec::<&str>::new());
        assert_eq!(found(Kind::Email, "end with dot: carol@example.org."), ["carol@example.org"]);
        assert_eq!(found(Kind::Email, "two a@ex.io and b@ex.io"), ["a@ex.io", "b@ex.io"]);
    }

    #[test]
    fn cards_need_luhn() {
        assert_eq!(found(Kind::CreditCard, "card 4111 1111 1111 1111 exp"), ["4111 1111 1111 1111"]);
        assert_eq!(found(Kind::CreditCard, "card 4111-1111-1111-1111"), ["4111-1111-1111-1111"]);
        assert_eq!(found(Kind::CreditCard, "amex 378282246310005."), ["378282246310005"]);
        assert_eq!(found(Kind::CreditCard, "5555555555554444"), ["5555555555554444"]);
        // One digit off: Luhn fails.
        assert!(found(Kind::CreditCard, "card 4111 1111 1111 1112").is_empty());
        // Too short, too long, inside a word, wrong first digit.
        assert!(found(Kind::CreditCard, "411111111111 41111111111111111111 x4111111111111111 0000000000000000").is_empty());
    }

    #[test]
    fn ibans_need_their_checksum_and_length() {
        assert_eq!(found(Kind::Iban, "pay DE89 3704 0044 0532 0130 00 today"), ["DE89 3704 0044 0532 0130 00"]);
        assert_eq!(found(Kind::Iban, "GB82WEST12345698765432"), ["GB82WEST12345698765432"]);
        assert_eq!(found(Kind::Iban, "(FR1420041010050500013M02606)"), ["FR1420041010050500013M02606"]);
        // Check digits wrong.
        assert!(found(Kind::Iban, "DE88 3704 0044 0532 0130 00").is_empty());
        assert!(found(Kind::Iban, "GB83WEST12345698765432").is_empty());
        // Wrong length for the country, unknown country.
        assert!(found(Kind::Iban, "DE89370400440532013").is_empty());
        assert!(found(Kind::Iban, "ZZ89370400440532013000").is_empty());
    }

    #[test]
    fn ssns_outside_never_issued_ranges() {
        assert_eq!(found(Kind::UsSsn, "SSN: 123-45-6789."), ["123-45-6789"]);
        assert_eq!(found(Kind::UsSsn, "ssn 536 22 1234"), ["536 22 1234"]);
        assert!(found(Kind::UsSsn, "000-12-3456 666-12-3456 912-12-3456 123-00-4567 123-45-0000").is_empty());
        assert!(found(Kind::UsSsn, "call 555-123-4567 or ref 12-123-45-6789-1 or 123-45-67890").is_empty());
    }

    #[test]
    fn ip_addresses_v4_and_v6() {
        assert_eq!(found(Kind::IpAddress, "from 192.168.1.20, then 10.0.0.1."), ["192.168.1.20", "10.0.0.1"]);
        assert_eq!(found(Kind::IpAddress, "v6 2001:db8::8a2e:370:7334 and ::1 and fe80::1%eth0"), ["2001:db8::8a2e:370:7334", "::1", "fe80::1"]);
        assert!(found(Kind::IpAddress, "256.1.1.1 1.2.3 01.2.3.4 version 1.2.3.4.5 at 12:30:45 std::vector Foo::Bar").is_empty());
    }

    #[test]
    fn phones_formats_and_near_misses() {
        assert_eq!(found(Kind::Phone, "call +1 415 555 2671 now"), ["+1 415 555 2671"]);
        assert_eq!(found(Kind::Phone, "call (415) 555-2671."), ["(415) 555-2671"]);
        assert_eq!(found(Kind::Phone, "call 415-555-2671"), ["415-555-2671"]);
        assert_eq!(found(Kind::Phone, "ruf +49 30 901820 an"), ["+49 30 901820"]);
        assert_eq!(found(Kind::Phone, "+447911123456"), ["+447911123456"]);
        // A Unix time, a date, an IPv4 address, a short number, an order id.
        assert!(found(Kind::Phone, "ts 1700000000 on 2024-01-15 at 192.168.100.200 code 12345 order 0123456789").is_empty());
    }

    #[test]
    fn secrets() {
        let openai = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789";
        let ant = "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789";
        assert_eq!(found(Kind::OpenaiKey, &format!("key={openai} and {ant}")), [openai]);
        assert_eq!(found(Kind::AnthropicKey, &format!("key={openai} and {ant}")), [ant]);
        assert!(found(Kind::OpenaiKey, "sk-short task-management-is-a-long-word-here").is_empty());
        assert_eq!(found(Kind::AwsAccessKey, "aws_access_key_id = AKIAIOSFODNN7EXAMPLE\n"), ["AKIAIOSFODNN7EXAMPLE"]);
        assert!(found(Kind::AwsAccessKey, "AKIAIOSFODNN7EXAMPL AKIAIOSFODNN7EXAMPLE1 AKIDEXAMPLE xAKIAIOSFODNN7EXAMPLE").is_empty());
        let gh = "ghp_1234567890abcdefghijABCDEFGHIJ123456";
        assert_eq!(found(Kind::GithubToken, &format!("token {gh}")), [gh]);
        assert!(found(Kind::GithubToken, "ghp_tooShort").is_empty());
        assert_eq!(found(Kind::GithubToken, "github_pat_11ABCDEFG0123456789_abcdefghijklmnop"), ["github_pat_11ABCDEFG0123456789_abcdefghijklmnop"]);
        assert_eq!(found(Kind::SlackToken, "xoxb-123456789012-1234567890123-AbCdEf"), ["xoxb-123456789012-1234567890123-AbCdEf"]);
        assert!(found(Kind::SlackToken, "xoxb-short").is_empty());
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert_eq!(found(Kind::Jwt, &format!("Bearer {jwt}.")), [jwt]);
        assert!(found(Kind::Jwt, "eyJhbGciOiJIUzI1NiJ9 alone, eyJhbGciOiJIUzI1NiJ9.notjson.sig").is_empty());
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----";
        assert_eq!(found(Kind::PrivateKey, &format!("key:\n{pem}\nthanks")), [pem]);
        assert_eq!(found(Kind::PrivateKey, "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn"), ["-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn"]);
        assert!(found(Kind::PrivateKey, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----").is_empty());
    }

    #[test]
    fn scanners_survive_random_text() {
        // Characters every scanner reacts to, plus multi-byte ones; deterministic cases.
        let alphabet: Vec<char> = "0123456789AKIDEGBFRZxobpsk-_.@:+() /\n\t=eyJ[]é€😀aq".chars().collect();
        let mut seed = 1u64;
        for _ in 0..3000 {
            let mut t = String::new();
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let len = (seed >> 58) as usize;
            for _ in 0..len * 3 {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                t.push(alphabet[(seed >> 33) as usize % alphabet.len()]);
            }
            for k in BUILTINS {
                let mut v = Vec::new();
                k.scan(&t, &mut v);
                for (s, e) in v {
                    assert!(s < e && t.get(s..e).is_some(), "{k:?} {t:?} {s}..{e}");
                }
            }
        }
    }

    #[test]
    fn scanners_survive_any_text() {
        let texts = ["", "@", "sk-", "-----BEGIN ", "eyJ", "+", "(", "::", "1.", "DE89", "AKIA", "é@é.é", "4\u{1F600}111"];
        for t in texts {
            for k in BUILTINS {
                let mut v = Vec::new();
                k.scan(t, &mut v);
                for (s, e) in v {
                    assert!(t.get(s..e).is_some(), "{k:?} {t:?}");
                }
            }
        }
    }
}
