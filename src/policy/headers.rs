//! Which headers cross which boundary: client → gateway → provider, and provider → client. The
//! filter asks these questions; the answers live here so they can be tested without Envoy.
//!
//! - `x-switchyard-*` (and a bring-your-own-key header of any name) is the gateway's: a client's is
//!   removed before anything reads it, a provider never sees one, and a client sees only those the
//!   gateway itself set.
//! - A client's credentials, and headers that choose which of the gateway's provider accounts pays,
//!   never reach a provider.
//! - What a provider says about its own account never reaches a client.

use crate::config::INTERNAL_HEADER_PREFIX;

/// Client headers that carry credentials, or choose which of the gateway's provider accounts pays
/// (OpenAI organisation and project, Google quota project).
pub const CLIENT_CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "cookie",
    "proxy-authorization",
    "x-amz-security-token",
    "ocp-apim-subscription-key",
    "openai-organization",
    "openai-project",
    "x-goog-user-project",
];

/// A SigV4 signature's own headers besides `authorization` and `x-amz-security-token`: a client's,
/// or those Envoy's AWS signer added to an earlier attempt (retries share one header map), are
/// removed; the attempt's signer (the filter's or Envoy's) sets them again.
pub const SIGNATURE_HEADERS: &[&str] = &["x-amz-date", "x-amz-content-sha256"];

/// Provider response headers about the gateway's provider account.
pub const PROVIDER_ACCOUNT_HEADERS: &[&str] = &["openai-organization", "openai-project", "anthropic-organization-id", "set-cookie"];

/// A request header the gateway removes from what a client sent (names are lower case, as Envoy
/// hands them over).
pub fn is_internal(name: &str, byok_header: Option<&str>) -> bool {
    name.starts_with(INTERNAL_HEADER_PREFIX) || byok_header == Some(name)
}

/// A request header the backend removes before the provider sees the request.
pub fn withheld_from_provider(name: &str) -> bool {
    name.starts_with(INTERNAL_HEADER_PREFIX) || CLIENT_CREDENTIAL_HEADERS.contains(&name) || SIGNATURE_HEADERS.contains(&name)
}

/// A provider's response header the gateway removes before the client sees the answer (it then
/// sets its own `x-switchyard-*`). With virtual keys (`keyed`), a client's limits are the gateway's:
/// the provider's `x-ratelimit-*` (its account's quotas) would pass for them where the key has no
/// limit of that kind.
pub fn withheld_from_client(name: &str, keyed: bool) -> bool {
    name.starts_with(INTERNAL_HEADER_PREFIX)
        || PROVIDER_ACCOUNT_HEADERS.contains(&name)
        || (keyed && name.starts_with("x-ratelimit-"))
}

/// Longest client `x-request-id` kept: it keys the request's shared state and goes into the access
/// log, trace spans and every upstream request; a longer one (up to Envoy's 60 KiB of headers) is
/// replaced by one the gateway makes.
pub const MAX_REQUEST_ID_LEN: usize = 200;

/// Whether a client's `x-request-id` is kept (else the gateway makes one).
pub fn usable_request_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN
}

/// Whether an attempt to `backend` may carry the client's own provider credential: only the
/// backend of the request's first attempt may (the credential is for that provider).
pub fn byok_allowed(first_backend: Option<&str>, backend: &str) -> bool {
    first_backend.is_none_or(|first| first == backend)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_request_headers() {
        for name in ["x-switchyard-route", "x-switchyard-model", "x-switchyard-op", "x-switchyard-provider-key", "x-switchyard-max-cost", "x-switchyard-"] {
            assert!(is_internal(name, None), "{name}");
        }
        assert!(is_internal("x-provider-key", Some("x-provider-key")));
        assert!(!is_internal("x-provider-key", None));
        for name in ["x-request-id", "authorization", "x-switchyard", "x-switchyardroute", "content-type"] {
            assert!(!is_internal(name, Some("x-provider-key")), "{name}");
        }
    }

    #[test]
    fn provider_sees_no_client_credential_nor_account_choice() {
        for name in CLIENT_CREDENTIAL_HEADERS.iter().chain(SIGNATURE_HEADERS).chain(&["x-switchyard-route", "x-switchyard-provider-key"]) {
            assert!(withheld_from_provider(name), "{name}");
        }
        for name in ["content-type", "x-request-id", "anthropic-version", "x-mock-openai", "user-agent", "accept"] {
            assert!(!withheld_from_provider(name), "{name}");
        }
    }

    #[test]
    fn client_sees_no_provider_account_nor_foreign_switchyard_header() {
        for keyed in [false, true] {
            for name in ["x-switchyard-cost", "x-switchyard-budget-remaining", "x-switchyard-backend", "openai-organization", "set-cookie", "anthropic-organization-id"] {
                assert!(withheld_from_client(name, keyed), "{name}");
            }
            for name in ["content-type", "retry-after", "x-request-id", "openai-processing-ms"] {
                assert!(!withheld_from_client(name, keyed), "{name}");
            }
        }
        // The provider's quotas: passed on by an open gateway, never next to a key's own limits.
        for name in ["x-ratelimit-remaining-requests", "x-ratelimit-limit-tokens", "x-ratelimit-reset-tokens"] {
            assert!(!withheld_from_client(name, false) && withheld_from_client(name, true), "{name}");
        }
    }

    #[test]
    fn request_ids_kept_and_replaced() {
        assert!(usable_request_id("9f1c1d2e-7c1b-4c55-9d1e-2f8f1a0b3c4d"));
        assert!(usable_request_id(&"a".repeat(MAX_REQUEST_ID_LEN)));
        assert!(!usable_request_id(&"a".repeat(MAX_REQUEST_ID_LEN + 1)));
        assert!(!usable_request_id(""));
    }

    #[test]
    fn byok_goes_to_the_first_backend_only() {
        assert!(byok_allowed(None, "openai"), "the first attempt");
        assert!(byok_allowed(Some("openai"), "openai"), "a retry on the same backend");
        assert!(!byok_allowed(Some("openai"), "anthropic"), "a failover");
        assert!(!byok_allowed(Some("openai"), "openai-eu"));
    }
}
