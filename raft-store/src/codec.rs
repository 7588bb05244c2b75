//! The one place where values become bytes and back.
//!
//! Two framings:
//! - *records* (anything persisted: log entries, votes, snapshots) start with a format-version byte so
//!   that files written today are recognised, or refused with a clear error, by later builds;
//! - *messages* (peer RPC bodies) are plain bincode, decoded with a size limit because they come
//!   from the network.
//!
//! Both use bincode 2 `standard()` (varint integers) through serde.

use serde::{de::DeserializeOwned, Serialize};

/// Version byte written in front of every persisted record.
pub const RECORD_FORMAT_VERSION: u8 = 1;

/// Upper bound on what a single decode may allocate. Snapshot chunks and append batches stay far
/// below it; anything larger is a corrupt or hostile input.
pub const MAX_DECODE_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("cannot encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("cannot decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("record has format version {found}, this build reads version {RECORD_FORMAT_VERSION}")]
    UnknownVersion { found: u8 },
    #[error("record is empty")]
    EmptyRecord,
    #[error("{extra} unexpected bytes after the value")]
    TrailingBytes { extra: usize },
}

/// Upper bound for decoding the whole replicated state (a snapshot body): it grows with live
/// claims (about 73 bytes each), far past [`MAX_DECODE_BYTES`], and comes only from our own disk
/// or from an authenticated peer's snapshot whose file checksum was verified.
pub const MAX_STATE_BYTES: usize = 4 << 30;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_DECODE_BYTES>()
}

/// Encodes a network message.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(bincode::serde::encode_to_vec(value, config())?)
}

/// Encodes `value` (as [`encode`] would) into `writer`, answering how many bytes it wrote. For
/// digests of values, which need the bytes but not a buffer holding them.
pub fn encode_into<T: Serialize, W: std::io::Write>(
    value: &T,
    writer: &mut W,
) -> Result<usize, CodecError> {
    Ok(bincode::serde::encode_into_std_write(
        value,
        writer,
        config(),
    )?)
}

/// Decodes a network message; refuses trailing garbage and oversized length prefixes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_body(bytes, config())
}

/// Encodes a persisted record: version byte, then the value.
pub fn encode_record<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    encode_record_with_capacity(value, 64)
}

/// [`encode_record`] into a buffer of `capacity` bytes, for large values of known size.
pub fn encode_record_with_capacity<T: Serialize>(
    value: &T,
    capacity: usize,
) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(capacity);
    out.push(RECORD_FORMAT_VERSION);
    bincode::serde::encode_into_std_write(value, &mut out, config())?;
    Ok(out)
}

/// Decodes a persisted record written by [`encode_record`].
pub fn decode_record<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_body(record_body(bytes)?, config())
}

/// [`decode_record`] for the whole replicated state, allowed up to [`MAX_STATE_BYTES`].
pub fn decode_state_record<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_body(
        record_body(bytes)?,
        bincode::config::standard().with_limit::<MAX_STATE_BYTES>(),
    )
}

fn record_body(bytes: &[u8]) -> Result<&[u8], CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::EmptyRecord),
        Some((&RECORD_FORMAT_VERSION, body)) => Ok(body),
        Some((&found, _)) => Err(CodecError::UnknownVersion { found }),
    }
}

fn decode_body<T: DeserializeOwned>(
    bytes: &[u8],
    config: impl bincode::config::Config,
) -> Result<T, CodecError> {
    let (value, read) = bincode::serde::decode_from_slice(bytes, config)?;
    if read != bytes.len() {
        return Err(CodecError::TrailingBytes {
            extra: bytes.len() - read,
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_version_check() {
        let bytes = encode_record(&(7u64, "x".to_string())).unwrap();
        assert_eq!(bytes[0], RECORD_FORMAT_VERSION);
        let back: (u64, String) = decode_record(&bytes).unwrap();
        assert_eq!(back, (7, "x".to_string()));

        let mut future = bytes.clone();
        future[0] = RECORD_FORMAT_VERSION + 1;
        assert!(matches!(
            decode_record::<(u64, String)>(&future),
            Err(CodecError::UnknownVersion { .. })
        ));
        assert!(matches!(
            decode_record::<(u64, String)>(&[]),
            Err(CodecError::EmptyRecord)
        ));
    }

    #[test]
    fn message_decode_refuses_trailing_bytes_and_huge_lengths() {
        let mut bytes = encode(&42u32).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<u32>(&bytes),
            Err(CodecError::TrailingBytes { extra: 1 })
        ));
        // A length prefix claiming ~2^60 bytes must be refused, not allocated.
        let hostile = [0xFEu8, 0, 0, 0, 0, 0, 0, 0, 0x10];
        assert!(decode::<Vec<u8>>(&hostile).is_err());
    }
}
