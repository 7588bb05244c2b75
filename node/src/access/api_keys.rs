//! API keys: the config lists each key's SHA-256 (never the key), a request presents the key as
//! `Authorization: Bearer <key>` (what the official middleware's `createAuthHeaders` sends) or
//! `X-API-Key: <key>`.
//!
//! Only digests are compared, so the comparison leaks nothing useful about a key through timing:
//! finding a digest's table slot by timing would require choosing SHA-256 preimages.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};

use super::Route;
use crate::config::AuthSettings;

/// The identity of an authenticated caller: the key's configured id.
pub type KeyId = Arc<str>;

/// Longest API key accepted in a header.
pub const MAX_API_KEY_BYTES: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("an API key is required: send Authorization: Bearer <key> or X-API-Key")]
    Missing,
    #[error("the API key is not valid")]
    Unknown,
    #[error("the API key {0:?} has been revoked")]
    Revoked(KeyId),
    #[error("the Authorization header must be `Bearer <key>`")]
    Malformed,
}

struct KeyEntry {
    id: KeyId,
    revoked: bool,
}

/// The configured keys, by digest.
pub struct ApiKeys {
    by_digest: HashMap<[u8; 32], KeyEntry>,
    required: bool,
    protect_supported: bool,
}

/// The SHA-256 of an API key, as configured (`x402ctl api-key new` prints it).
pub fn digest_of(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeys {
    /// From validated settings (the digests are 64 hex digits).
    pub fn new(settings: &AuthSettings) -> Self {
        let by_digest = settings
            .api_keys
            .iter()
            .filter_map(|k| {
                let mut digest = [0u8; 32];
                hex::decode_to_slice(k.sha256.to_ascii_lowercase(), &mut digest).ok()?;
                Some((
                    digest,
                    KeyEntry {
                        id: Arc::from(k.id.as_str()),
                        revoked: k.revoked,
                    },
                ))
            })
            .collect();
        Self {
            by_digest,
            required: settings.required,
            protect_supported: settings.protect_supported,
        }
    }

    /// The caller's key id: `Ok(None)` for an anonymous caller where keys are not required. A key
    /// that is presented must be valid even where none is required.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        route: Route,
    ) -> Result<Option<KeyId>, AuthError> {
        let required = self.required && (route != Route::Supported || self.protect_supported);
        let Some(key) = presented_key(headers)? else {
            return if required {
                Err(AuthError::Missing)
            } else {
                Ok(None)
            };
        };
        match self.by_digest.get(&digest_of(key)) {
            None => Err(AuthError::Unknown),
            Some(entry) if entry.revoked => Err(AuthError::Revoked(entry.id.clone())),
            Some(entry) => Ok(Some(entry.id.clone())),
        }
    }
}

/// The key in `Authorization: Bearer` or `X-API-Key`, if any.
fn presented_key(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let value = match (headers.get(header::AUTHORIZATION), headers.get("x-api-key")) {
        (Some(auth), _) => {
            let text = auth.to_str().map_err(|_| AuthError::Malformed)?;
            let (scheme, rest) = text.split_once(' ').ok_or(AuthError::Malformed)?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(AuthError::Malformed);
            }
            rest.trim()
        }
        (None, Some(key)) => key.to_str().map_err(|_| AuthError::Malformed)?.trim(),
        (None, None) => return Ok(None),
    };
    if value.is_empty() || value.len() > MAX_API_KEY_BYTES {
        return Err(AuthError::Malformed);
    }
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiKeySettings;
    use axum::http::HeaderValue;

    fn keys(required: bool) -> ApiKeys {
        ApiKeys::new(&AuthSettings {
            required,
            protect_supported: false,
            api_keys: vec![
                ApiKeySettings {
                    id: "shop".into(),
                    sha256: hex::encode(digest_of("good-key-0123456789")),
                    revoked: false,
                },
                ApiKeySettings {
                    id: "old".into(),
                    sha256: hex::encode(digest_of("old-key-0123456789")),
                    revoked: true,
                },
            ],
        })
    }

    fn with(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).expect("header value"));
        h
    }

    #[test]
    fn keys_are_checked_by_digest_in_either_header() {
        let k = keys(true);
        let bearer = with("authorization", "Bearer good-key-0123456789");
        assert_eq!(
            k.authenticate(&bearer, Route::Verify)
                .ok()
                .flatten()
                .as_deref(),
            Some("shop")
        );
        let x = with("x-api-key", "good-key-0123456789");
        assert_eq!(
            k.authenticate(&x, Route::Settle).ok().flatten().as_deref(),
            Some("shop")
        );
    }

    #[test]
    fn missing_wrong_and_revoked_keys_are_told_apart() {
        let k = keys(true);
        assert_eq!(
            k.authenticate(&HeaderMap::new(), Route::Verify),
            Err(AuthError::Missing)
        );
        let wrong = with("authorization", "Bearer nope");
        assert_eq!(
            k.authenticate(&wrong, Route::Verify),
            Err(AuthError::Unknown)
        );
        let revoked = with("x-api-key", "old-key-0123456789");
        assert!(matches!(
            k.authenticate(&revoked, Route::Verify),
            Err(AuthError::Revoked(_))
        ));
        let basic = with("authorization", "Basic Zm9vOmJhcg==");
        assert_eq!(
            k.authenticate(&basic, Route::Verify),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn supported_is_open_unless_protected_and_keys_are_optional_unless_required() {
        let k = keys(true);
        assert_eq!(
            k.authenticate(&HeaderMap::new(), Route::Supported),
            Ok(None)
        );
        let optional = keys(false);
        assert_eq!(
            optional.authenticate(&HeaderMap::new(), Route::Verify),
            Ok(None)
        );
        let wrong = with("x-api-key", "nope");
        assert_eq!(
            optional.authenticate(&wrong, Route::Verify),
            Err(AuthError::Unknown)
        );
    }
}
