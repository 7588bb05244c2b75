//! Unit tests of the storage layer: what survives a reopen, what a damaged store does, and the
//! rebuild path. openraft's conformance suite runs separately (`tests/suite.rs`).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use openraft::storage::{RaftLogReader, RaftLogStorage, RaftStateMachine};
use openraft::{EntryPayload, Membership, RaftSnapshotBuilder};
use proptest::prelude::*;

use super::*;
use crate::codec::encode_record;
use crate::state::{ClaimOutcome, Command, NonceClaim, NonceKey, Op, Response};
use crate::types::{Entry, LogId, SnapshotMeta, Vote};

fn log_id(term: u64, index: u64) -> LogId {
    openraft::testing::log_id(term, 1, index)
}

fn key(n: u64) -> NonceKey {
    let mut nonce = [0u8; 32];
    nonce[..8].copy_from_slice(&n.to_be_bytes());
    NonceKey {
        chain_id: 31337,
        asset: [1; 20],
        payer: [2; 20],
        nonce,
    }
}

fn claim_entry(term: u64, index: u64, n: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Command::single(
            1_000,
            Op::ClaimNonce(NonceClaim {
                key: key(n),
                fingerprint: [7; 32],
                valid_before: u64::MAX / 2_000,
            }),
        )),
    }
}

fn membership_entry(term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1u64])], None)),
    }
}

fn open(dir: &Path) -> (SledLogStore, StateMachineStore<FileSnapshotVault>) {
    open_sled_stores(dir, SledOptions::default()).unwrap_or_else(|e| panic!("open: {e}"))
}

/// Entries 0 (membership) and 1..=n (claims of nonces 1..=n), all in term 1.
fn entries(n: u64) -> Vec<Entry> {
    std::iter::once(membership_entry(1, 0))
        .chain((1..=n).map(|i| claim_entry(1, i, i)))
        .collect()
}

/// Raw access to the sled database of a closed store, to damage it on purpose.
fn raw_sled(dir: &Path) -> sled::Db {
    sled::open(dir.join(SLED_DIR)).expect("open sled directly")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_vote_committed_entries_and_last_purged() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, mut sm) = open(dir.path());
        log.save_vote(&Vote::new(3, 1)).await.unwrap();
        log.append_durable(entries(10)).await.unwrap();
        // Purging is only legitimate behind a snapshot (open checks this).
        sm.apply(entries(4)).await.unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        log.save_committed(Some(log_id(1, 8))).await.unwrap();
        log.purge(log_id(1, 4)).await.unwrap();
        log.truncate(log_id(1, 10)).await.unwrap();
        // A vote flush makes the unflushed purge, truncate and committed durable too.
        log.save_vote(&Vote::new(4, 1)).await.unwrap();
    }
    let (mut log, _sm) = open(dir.path());
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(4, 1)));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 8)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 4)));
    assert_eq!(state.last_log_id, Some(log_id(1, 9)));
    let got = log.try_get_log_entries(0..100).await.unwrap();
    let indexes: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, (5..=9).collect::<Vec<_>>());
    assert_eq!(got[0], claim_entry(1, 5, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_observer_sees_flushes_and_concurrent_appends_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let flushes = Arc::new(AtomicUsize::new(0));
    let counter = flushes.clone();
    let opts = SledOptions {
        flush_observer: Some(Arc::new(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
        })),
        ..SledOptions::default()
    };
    let (log, _sm) = open_sled_stores(dir.path(), opts).unwrap();
    let at_open = flushes.load(Ordering::Relaxed);
    let mut tasks = Vec::new();
    for i in 0..32u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            log.append_durable(vec![claim_entry(1, i, i)]).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let flushed = flushes.load(Ordering::Relaxed) - at_open;
    assert!(
        (1..=32).contains(&flushed),
        "{flushed} flushes for 32 appends"
    );
    let mut reader = log.clone();
    assert_eq!(reader.try_get_log_entries(..).await.unwrap().len(), 32);
}

/// Applies entries, builds a snapshot, and checks a state machine reopened from the vault.
async fn snapshot_round_trip<V: SnapshotVault>(vault: V) {
    let mut sm = StateMachineStore::open(vault.clone()).unwrap();
    let responses = sm.apply(entries(5)).await.unwrap();
    assert!(responses[0].is_empty());
    assert_eq!(responses[1], vec![Response::Claim(ClaimOutcome::Accepted)]);
    let hash = sm.view().read(|s| s.state_hash());

    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 5)));
    assert!(snapshot.meta.snapshot_id.starts_with("1-5-"));

    let mut reopened = StateMachineStore::open(vault).unwrap();
    let (applied, membership) = reopened.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 5)));
    assert_eq!(membership.log_id(), &Some(log_id(1, 0)));
    assert_eq!(reopened.view().last_applied(), Some(log_id(1, 5)));
    assert_eq!(reopened.view().read(|s| s.state_hash()), hash);
    assert!(reopened
        .view()
        .read(|s| s.nonces().fingerprint_of(&key(3)).is_some()));
    let current = reopened.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snapshot.meta);

    // A later snapshot of the reopened machine gets a new id, not a repeat.
    let again = reopened
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_ne!(again.meta.snapshot_id, snapshot.meta.snapshot_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_in_file_vault_restores_state_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    snapshot_round_trip(FileSnapshotVault::open(dir.path().join("snaps")).unwrap()).await;
}

#[tokio::test]
async fn snapshot_in_memory_vault_restores_state_after_reopen() {
    snapshot_round_trip(MemSnapshotVault::default()).await;
}

#[tokio::test]
async fn install_snapshot_replaces_state_and_refuses_garbage() {
    let mut leader = StateMachineStore::open(MemSnapshotVault::default()).unwrap();
    leader.apply(entries(3)).await.unwrap();
    let snapshot = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();

    let mut follower = StateMachineStore::open(MemSnapshotVault::default()).unwrap();
    follower.apply(vec![claim_entry(1, 0, 99)]).await.unwrap();
    let before = follower.view().read(|s| s.state_hash());

    let garbage = Box::new(std::io::Cursor::new(vec![1, 2, 3]));
    assert!(follower
        .install_snapshot(&snapshot.meta, garbage)
        .await
        .is_err());
    assert_eq!(follower.view().read(|s| s.state_hash()), before);
    assert!(follower.vault().load().unwrap().is_none());

    follower
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    assert_eq!(follower.view().last_applied(), Some(log_id(1, 3)));
    assert!(follower
        .view()
        .read(|s| s.nonces().fingerprint_of(&key(99)).is_none()));
    assert_eq!(
        follower.view().read(|s| s.state_hash()),
        leader.view().read(|s| s.state_hash())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_log_record_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (log, _sm) = open(dir.path());
        log.append_durable(entries(3)).await.unwrap();
    }
    {
        let db = raw_sled(dir.path());
        let tree = db.open_tree(log_sled::LOG_TREE).unwrap();
        let mut bad = encode_record(&claim_entry(1, 2, 2)).unwrap();
        let last = bad.len() - 1;
        bad.truncate(last);
        tree.insert(2u64.to_be_bytes(), bad).unwrap();
        db.flush().unwrap();
    }
    match open_sled_stores(dir.path(), SledOptions::default()) {
        Err(OpenError::Corrupt { reason, .. }) => assert!(reason.contains("index 2"), "{reason}"),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a corrupt store opened"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_record_version_in_meta_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    {
        let db = raw_sled(dir.path());
        let meta = db.open_tree(log_sled::META_TREE).unwrap();
        meta.insert(b"vote", vec![99u8, 1, 2]).unwrap();
        db.flush().unwrap();
    }
    let err = open_sled_stores(dir.path(), SledOptions::default())
        .err()
        .expect("must not open");
    let text = err.to_string();
    assert!(text.contains("format version 99"), "{text}");
    assert!(text.contains("x402-node rebuild"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hole_in_log_is_refused_and_interrupted_purge_is_finished() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (log, _sm) = open(dir.path());
        let mut e = entries(6);
        e.remove(3);
        log.append_durable(e).await.unwrap();
    }
    assert!(matches!(
        open_sled_stores(dir.path(), SledOptions::default()),
        Err(OpenError::Corrupt { .. })
    ));

    let dir = tempfile::tempdir().unwrap();
    {
        let (log, sm) = open(dir.path());
        log.append_durable(entries(6)).await.unwrap();
        // A snapshot covering index 4, so purging up to 4 is legitimate.
        let mut sm = sm;
        sm.apply(entries(4)).await.unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
    }
    {
        // A crash after `purge` wrote last_purged but before its deletes reached disk.
        let db = raw_sled(dir.path());
        let meta = db.open_tree(log_sled::META_TREE).unwrap();
        meta.insert(
            log_sled::KEY_LAST_PURGED,
            encode_record(&log_id(1, 4)).unwrap(),
        )
        .unwrap();
        db.flush().unwrap();
    }
    let (mut log, _sm) = open(dir.path());
    let indexes: Vec<u64> = log
        .try_get_log_entries(..)
        .await
        .unwrap()
        .iter()
        .map(|e| e.log_id.index)
        .collect();
    assert_eq!(indexes, vec![5, 6]);
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 4)));
    assert_eq!(state.last_log_id, Some(log_id(1, 6)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_purged_beyond_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _sm) = open(dir.path());
        log.append_durable(entries(6)).await.unwrap();
        log.purge(log_id(1, 3)).await.unwrap();
        log.save_vote(&Vote::new(1, 1)).await.unwrap();
    }
    match open_sled_stores(dir.path(), SledOptions::default()) {
        Err(OpenError::Corrupt { reason, .. }) => {
            assert!(reason.contains("snapshot only covers"), "{reason}")
        }
        other => panic!("expected Corrupt, got {:?}", other.err()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_open_of_a_store_in_use_reports_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    match open_sled_stores(dir.path(), SledOptions::default()) {
        Err(OpenError::Locked { .. }) => {}
        other => panic!("expected Locked, got {:?}", other.err()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_snapshot_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_log, mut sm) = open(dir.path());
        sm.apply(entries(3)).await.unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
    }
    let file = dir.path().join(SNAPSHOT_DIR).join("current.snap");
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&file, bytes).unwrap();
    match open_sled_stores(dir.path(), SledOptions::default()) {
        Err(OpenError::Snapshot { reason, .. }) => assert!(reason.contains("SHA-256"), "{reason}"),
        other => panic!("expected Snapshot, got {:?}", other.err()),
    }
}

fn sample_meta() -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: Some(log_id(2, 40)),
        last_membership: crate::types::StoredMembership::new(
            Some(log_id(1, 0)),
            Membership::new(vec![BTreeSet::from([1u64, 2, 3])], None),
        ),
        snapshot_id: "2-40-1".to_string(),
    }
}

#[test]
fn snapshot_file_round_trips_and_refuses_truncation() {
    let data = b"state bytes".to_vec();
    let file = encode_snapshot_file(&sample_meta(), &data).unwrap();
    assert_eq!(&file[..8], &SNAPSHOT_FILE_MAGIC);
    let (meta, back) = decode_snapshot_file(&file).unwrap();
    assert_eq!(meta, sample_meta());
    assert_eq!(back, data);
    for cut in 0..file.len() {
        assert!(decode_snapshot_file(&file[..cut]).is_err(), "cut at {cut}");
    }
    let mut longer = file.clone();
    longer.push(0);
    assert!(decode_snapshot_file(&longer).is_err());
}

proptest! {
    // Failures are printed with their seed; writing regression files is left to the suites
    // that own a proptest-regressions directory.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    /// Any single corrupted byte is detected (magic, lengths, header or checksummed data),
    /// and decoding never panics.
    #[test]
    fn snapshot_file_detects_any_flipped_byte(pos in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let file = encode_snapshot_file(&sample_meta(), &[5u8; 300]).unwrap();
        let mut bad = file.clone();
        let i = pos.index(bad.len());
        bad[i] ^= flip;
        prop_assert!(decode_snapshot_file(&bad).is_err());
    }

    /// Arbitrary bytes never panic the decoder.
    #[test]
    fn snapshot_file_decoder_survives_garbage(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_snapshot_file(&bytes);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_from_snapshot_yields_a_store_matching_the_snapshot() {
    // A healthy "peer" with a snapshot at index 5.
    let peer = tempfile::tempdir().unwrap();
    let (file, hash, meta) = {
        let (_log, mut sm) = open(peer.path());
        sm.apply(entries(5)).await.unwrap();
        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let file = sm.vault().load_file().unwrap().unwrap();
        (file, sm.view().read(|s| s.state_hash()), snap.meta)
    };

    // A "broken" node directory with content that must be kept aside, not deleted.
    let root = tempfile::tempdir().unwrap();
    let data_dir = root.path().join("node-2");
    {
        let (log, _sm) = open(&data_dir);
        log.append_durable(entries(2)).await.unwrap();
    }
    std::fs::write(data_dir.join("marker"), b"old").unwrap();

    assert!(matches!(
        rebuild_from_snapshot(&data_dir, b"not a snapshot", Vote::new(7, 2)),
        Err(OpenError::InvalidSnapshotFile(_))
    ));
    assert!(
        data_dir.join("marker").exists(),
        "a refused rebuild changed nothing"
    );

    let moved = rebuild_from_snapshot(&data_dir, &file, Vote::new(7, 2)).unwrap();
    assert!(moved
        .to_string_lossy()
        .starts_with(&format!("{}.broken-", data_dir.display())));
    assert_eq!(std::fs::read(moved.join("marker")).unwrap(), b"old");
    assert!(!data_dir.join("marker").exists());

    let (mut log, mut sm) = open(&data_dir);
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, meta.last_log_id);
    assert_eq!(state.last_log_id, meta.last_log_id);
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(7, 2)));
    assert!(log.try_get_log_entries(..).await.unwrap().is_empty());
    let (applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, meta.last_log_id);
    assert_eq!(membership, meta.last_membership);
    assert_eq!(sm.view().read(|s| s.state_hash()), hash);
    drop((log, sm));

    // Rebuilding a directory that does not exist yet works too and moves nothing.
    let fresh = root.path().join("node-3");
    let moved = rebuild_from_snapshot(&fresh, &file, Vote::new(7, 3)).unwrap();
    assert_eq!(moved, std::path::PathBuf::new());
    let (_log, sm) = open(&fresh);
    assert_eq!(sm.view().last_applied(), meta.last_log_id);
}

#[tokio::test]
async fn mem_log_store_clones_share_one_disk() {
    let mut a = MemLogStore::default();
    let mut b = a.clone();
    a.append_durable(entries(3)).await.unwrap();
    a.save_vote(&Vote::new(2, 1)).await.unwrap();
    a.purge(log_id(1, 1)).await.unwrap();
    assert_eq!(b.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
    let state = b.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1)));
    assert_eq!(state.last_log_id, Some(log_id(1, 3)));
    assert_eq!(b.try_get_log_entries(..).await.unwrap().len(), 2);
    #[allow(clippy::reversed_empty_ranges)]
    let inverted = 3..2;
    assert!(b.try_get_log_entries(inverted).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_inverted_range_reads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _sm) = open(dir.path());
    log.append_durable(entries(5)).await.unwrap();
    #[allow(clippy::reversed_empty_ranges)]
    let inverted = 4..2;
    assert!(log.try_get_log_entries(inverted).await.unwrap().is_empty());
    assert_eq!(log.try_get_log_entries(2..4).await.unwrap().len(), 2);
}
