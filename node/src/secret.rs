//! A string that must never reach a log line: signer keys, the cluster secret, admin tokens.

use std::fmt;

use serde::Deserialize;

/// Holds a secret. `Debug` and `Display` print `***`, so a config dump or a tracing field of the
/// whole config cannot leak it.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself. Call sites are few and easy to audit.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares in time independent of where the inputs differ, so a remote caller cannot learn
    /// the secret byte by byte from response times.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let secret = self.0.as_bytes();
        if secret.len() != candidate.len() {
            return false;
        }
        secret
            .iter()
            .zip(candidate)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Checks an `Authorization: Bearer <token>` header value against `secret`.
pub fn bearer_matches(secret: &Secret, header: Option<&[u8]>) -> bool {
    match header.and_then(|h| h.strip_prefix(b"Bearer ")) {
        Some(token) => secret.matches(token),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed_and_compared_exactly() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert!(s.matches(b"hunter2"));
        assert!(!s.matches(b"hunter3"));
        assert!(!s.matches(b"hunter"));
        assert!(bearer_matches(&s, Some(b"Bearer hunter2")));
        assert!(!bearer_matches(&s, Some(b"hunter2")));
        assert!(!bearer_matches(&s, None));
    }
}
