//! `x402ctl api-key`: making API keys for the nodes' `[auth]` section. Nodes store only a key's
//! SHA-256, so the key itself exists only in this command's output and with its client.

use sha2::{Digest, Sha256};

use super::CtlError;

/// The lower-case hex SHA-256 of `key`, as `[[auth.api_keys]] sha256` expects it.
pub fn digest_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new random key (32 bytes, hex, prefixed `x402_`) and its config entry.
pub(super) fn new(id: &str) -> String {
    let key = format!("x402_{}", hex::encode(rand::random::<[u8; 32]>()));
    format!(
        "# Give this key to the client (Authorization: Bearer <key>); it is not stored anywhere.\n\
         # key: {key}\n\
         [[auth.api_keys]]\n\
         id = {id:?}\n\
         sha256 = \"{}\"\n",
        digest_hex(&key)
    )
}

/// The digest of the key on standard input (one line; surrounding whitespace ignored).
pub(super) fn hash_stdin() -> Result<String, CtlError> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| CtlError::Usage(format!("cannot read the key from standard input: {e}")))?;
    let key = line.trim();
    if key.is_empty() {
        return Err(CtlError::Usage("no key on standard input".into()));
    }
    Ok(format!("{}\n", digest_hex(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_comes_with_its_own_digest() {
        let out = new("shop");
        let key = out
            .lines()
            .find_map(|l| l.strip_prefix("# key: "))
            .expect("key line");
        assert!(out.contains(&format!("sha256 = \"{}\"", digest_hex(key))));
        assert!(out.contains("id = \"shop\""));
        assert_ne!(new("shop"), out, "keys are random");
    }
}
