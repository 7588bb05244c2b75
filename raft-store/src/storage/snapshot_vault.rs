//! Where the state machine's latest snapshot is kept, and the snapshot file format.
//!
//! The state machine lives in memory; its durability comes from the latest snapshot plus the
//! Raft log. A [`SnapshotVault`] holds exactly one snapshot and replaces it atomically, so a
//! crash at any moment leaves either the old or the new snapshot, never a torn one.
//!
//! The same self-describing file format ([`encode_snapshot_file`]) is used on disk and for
//! `GET /admin/snapshot`, so a file taken from a healthy peer can rebuild a broken node:
//!
//! ```text
//! magic "X402SNAP" (8 bytes) | header length (u32, big-endian) | header | data | SHA-256
//! header  = encode_record(SnapshotFileHeader { meta, data_len })
//! data    = ClusterState::to_bytes() output
//! SHA-256 = digest of every byte before it, so any damage anywhere in the file is detected
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use bincode::error::DecodeError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec::{self, CodecError};
use crate::types::SnapshotMeta;

/// First bytes of every snapshot file; tells a snapshot apart from any other file handed to
/// `x402-node rebuild` by mistake.
pub const SNAPSHOT_FILE_MAGIC: [u8; 8] = *b"X402SNAP";

/// Largest header a snapshot file may declare. The header is the metadata only (log id,
/// membership, id): a few hundred bytes in practice. Anything bigger is a corrupt length field,
/// refused before it is used to slice the input.
pub const MAX_SNAPSHOT_HEADER_BYTES: u32 = 1 << 20;

/// Name of the current snapshot inside a [`FileSnapshotVault`] directory.
const CURRENT_FILE: &str = "current.snap";
/// Where a new snapshot is written before it atomically replaces [`CURRENT_FILE`].
const TMP_FILE: &str = "current.snap.tmp";

/// Size of the fixed prefix: magic plus header length.
const PREFIX_LEN: usize = SNAPSHOT_FILE_MAGIC.len() + 4;
/// Size of the SHA-256 that ends the file.
const DIGEST_LEN: usize = 32;

/// Holds the latest snapshot of the state machine.
pub trait SnapshotVault: Clone + Send + Sync + 'static {
    /// Atomically and durably replace the stored snapshot (tmp file + fsync + rename + fsync dir
    /// for files).
    fn save(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()>;
    /// The stored snapshot, if any.
    fn load(&self) -> io::Result<Option<(SnapshotMeta, Vec<u8>)>>;
    /// The stored snapshot as one self-describing file ([`encode_snapshot_file`] format), for
    /// `GET /admin/snapshot`.
    fn load_file(&self) -> io::Result<Option<Vec<u8>>>;
}

/// The metadata in front of the snapshot data.
#[derive(Serialize, Deserialize)]
struct SnapshotFileHeader {
    meta: SnapshotMeta,
    data_len: u64,
}

/// Encodes a snapshot as one self-describing file (see the module documentation).
pub fn encode_snapshot_file(meta: &SnapshotMeta, data: &[u8]) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(PREFIX_LEN + 1024 + data.len() + DIGEST_LEN);
    write_snapshot_file(&mut out, meta, data).map_err(|e| match e {
        WriteError::Codec(e) => e,
        // Writing into a Vec cannot fail.
        WriteError::Io(e) => {
            CodecError::Encode(bincode::error::EncodeError::Io { inner: e, index: 0 })
        }
    })?;
    Ok(out)
}

enum WriteError {
    Codec(CodecError),
    Io(io::Error),
}

/// Writes the [`encode_snapshot_file`] format to `out` piece by piece, hashing as it goes, so a
/// large snapshot is never copied into one more buffer just to be written.
fn write_snapshot_file(
    out: &mut impl Write,
    meta: &SnapshotMeta,
    data: &[u8],
) -> Result<(), WriteError> {
    let header = codec::encode_record(&SnapshotFileHeader {
        meta: meta.clone(),
        data_len: data.len() as u64,
    })
    .map_err(WriteError::Codec)?;
    let header_len = u32::try_from(header.len())
        .ok()
        .filter(|len| *len <= MAX_SNAPSHOT_HEADER_BYTES)
        .ok_or(WriteError::Codec(CodecError::Encode(
            bincode::error::EncodeError::Other("snapshot header exceeds MAX_SNAPSHOT_HEADER_BYTES"),
        )))?;
    let mut digest = Sha256::new();
    for piece in [
        &SNAPSHOT_FILE_MAGIC[..],
        &header_len.to_be_bytes()[..],
        &header[..],
        data,
    ] {
        digest.update(piece);
        out.write_all(piece).map_err(WriteError::Io)?;
    }
    let digest: [u8; DIGEST_LEN] = digest.finalize().into();
    out.write_all(&digest).map_err(WriteError::Io)
}

/// Decodes and verifies a file written by [`encode_snapshot_file`]: the trailing SHA-256, the
/// magic and the lengths must all match, so a truncated or bit-flipped file is refused.
pub fn decode_snapshot_file(file: &[u8]) -> Result<(SnapshotMeta, Vec<u8>), CodecError> {
    let unexpected_end = |needed: usize| {
        CodecError::Decode(DecodeError::UnexpectedEnd {
            additional: needed.saturating_sub(file.len()),
        })
    };
    if file.len() < PREFIX_LEN + DIGEST_LEN {
        return Err(unexpected_end(PREFIX_LEN + DIGEST_LEN));
    }
    let (magic, _) = file.split_at(SNAPSHOT_FILE_MAGIC.len());
    if magic != SNAPSHOT_FILE_MAGIC {
        return Err(CodecError::Decode(DecodeError::Other(
            "not an x402 snapshot file (bad magic)",
        )));
    }
    // Checked first, so nothing below ever parses damaged bytes.
    let (body, digest) = file.split_at(file.len() - DIGEST_LEN);
    if Sha256::digest(body).as_slice() != digest {
        return Err(CodecError::Decode(DecodeError::Other(
            "snapshot file does not match its SHA-256 (truncated or corrupt)",
        )));
    }
    let rest = &body[SNAPSHOT_FILE_MAGIC.len()..];
    let (len_bytes, rest) = rest.split_at(4);
    let mut len_array = [0u8; 4];
    len_array.copy_from_slice(len_bytes);
    let header_len = u32::from_be_bytes(len_array);
    if header_len > MAX_SNAPSHOT_HEADER_BYTES {
        return Err(CodecError::Decode(DecodeError::LimitExceeded));
    }
    let header_len = header_len as usize;
    if rest.len() < header_len {
        return Err(unexpected_end(file.len() + header_len - rest.len()));
    }
    let (header_bytes, data) = rest.split_at(header_len);
    let header: SnapshotFileHeader = codec::decode_record(header_bytes)?;
    let declared = usize::try_from(header.data_len)
        .map_err(|_| CodecError::Decode(DecodeError::OutsideUsizeRange(header.data_len)))?;
    if data.len() < declared {
        return Err(unexpected_end(file.len() + declared - data.len()));
    }
    if data.len() > declared {
        return Err(CodecError::TrailingBytes {
            extra: data.len() - declared,
        });
    }
    Ok((header.meta, data.to_vec()))
}

/// Turns a codec failure on stored bytes into an I/O error that names the file.
fn invalid_data(path: &Path, err: CodecError) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("snapshot file {} is unreadable: {err}", path.display()),
    )
}

/// A vault in a directory: one file, replaced by write-to-temp, fsync, rename, fsync directory.
#[derive(Clone, Debug)]
pub struct FileSnapshotVault {
    dir: Arc<PathBuf>,
    /// Serialises writers so two saves never share the temporary file.
    write_lock: Arc<Mutex<()>>,
}

impl FileSnapshotVault {
    /// Opens (creating if needed) the vault directory. A temporary file left by a crash during a
    /// save is removed: the previous snapshot is still the current one.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        let existed = dir.exists();
        fs::create_dir_all(&dir)?;
        if !existed {
            // Make the new directory's own entry durable, or a crash could forget it together
            // with every snapshot saved in it.
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        match fs::remove_file(dir.join(TMP_FILE)) {
            Ok(()) => sync_dir(&dir)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Self {
            dir: Arc::new(dir),
            write_lock: Arc::default(),
        })
    }

    /// The directory holding the snapshot.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn current_path(&self) -> PathBuf {
        self.dir.join(CURRENT_FILE)
    }

    /// The raw bytes of the current file, if there is one.
    fn read_current(&self) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.current_path()) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl SnapshotVault for FileSnapshotVault {
    fn save(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let tmp = self.dir.join(TMP_FILE);
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            let mut writer = io::BufWriter::with_capacity(1 << 20, &mut f);
            write_snapshot_file(&mut writer, meta, data).map_err(|e| match e {
                WriteError::Codec(e) => io::Error::new(io::ErrorKind::InvalidInput, e),
                WriteError::Io(e) => e,
            })?;
            writer.flush()?;
            drop(writer);
            // Data and size must be on disk before the rename makes the file current.
            f.sync_all()?;
        }
        fs::rename(&tmp, self.current_path())?;
        // The rename itself is only durable once the directory is synced.
        sync_dir(&self.dir)
    }

    fn load(&self) -> io::Result<Option<(SnapshotMeta, Vec<u8>)>> {
        match self.read_current()? {
            None => Ok(None),
            Some(bytes) => decode_snapshot_file(&bytes)
                .map(Some)
                .map_err(|e| invalid_data(&self.current_path(), e)),
        }
    }

    fn load_file(&self) -> io::Result<Option<Vec<u8>>> {
        match self.read_current()? {
            None => Ok(None),
            Some(bytes) => {
                // Verify before handing out: a corrupt file must not rebuild a peer.
                decode_snapshot_file(&bytes).map_err(|e| invalid_data(&self.current_path(), e))?;
                Ok(Some(bytes))
            }
        }
    }
}

/// fsyncs a directory, making renames and creations inside it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A stored snapshot: its metadata and the state bytes.
type StoredSnapshot = (SnapshotMeta, Vec<u8>);

/// A vault in memory, for simulations. Clones share the snapshot, so a clone kept outside a
/// simulated host survives the host's crash like a disk would.
#[derive(Clone, Debug, Default)]
pub struct MemSnapshotVault {
    slot: Arc<Mutex<Option<StoredSnapshot>>>,
}

impl MemSnapshotVault {
    pub fn new() -> Self {
        Self::default()
    }
}

impl SnapshotVault for MemSnapshotVault {
    fn save(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        // The slot is replaced in one assignment, so a poisoned lock cannot hold a torn value.
        *self.slot.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((meta.clone(), data.to_vec()));
        Ok(())
    }

    fn load(&self) -> io::Result<Option<(SnapshotMeta, Vec<u8>)>> {
        Ok(self
            .slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone())
    }

    fn load_file(&self) -> io::Result<Option<Vec<u8>>> {
        let slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.as_ref() {
            None => Ok(None),
            Some((meta, data)) => encode_snapshot_file(meta, data)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }
}
