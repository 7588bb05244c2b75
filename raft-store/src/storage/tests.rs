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
    let old_mark = read_store_mark(&data_dir).unwrap().unwrap();
    std::fs::write(data_dir.join("marker"), b"old").unwrap();

    assert!(matches!(
        rebuild_from_snapshot(&data_dir, b"not a snapshot", Vote::new(7, 2), CLUSTER),
        Err(OpenError::InvalidSnapshotFile(_))
    ));
    assert!(
        data_dir.join("marker").exists(),
        "a refused rebuild changed nothing"
    );

    let moved = rebuild_from_snapshot(&data_dir, &file, Vote::new(7, 2), CLUSTER).unwrap();
    assert!(moved
        .to_string_lossy()
        .starts_with(&format!("{}.broken-", data_dir.display())));
    assert_eq!(std::fs::read(moved.join("marker")).unwrap(), b"old");
    assert!(!data_dir.join("marker").exists());

    // A new store: a new id, and a mark consistent with the snapshot.
    let mark = read_store_mark(&data_dir).unwrap().unwrap();
    assert_ne!(mark.store_id, old_mark.store_id);
    assert_eq!(mark.vote, Some(Vote::new(7, 2)));
    assert_eq!(mark.committed, meta.last_log_id);
    assert_eq!(read_store_mark(&moved).unwrap(), Some(old_mark));

    let (mut log, mut sm) = open(&data_dir);
    assert_eq!(log.store_id(), Some(mark.store_id));
    assert_eq!(
        log.cluster_id(),
        Some(CLUSTER),
        "the rebuilt store joined the cluster"
    );
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
    let moved = rebuild_from_snapshot(&fresh, &file, Vote::new(7, 3), CLUSTER).unwrap();
    assert_eq!(moved, std::path::PathBuf::new());
    let (_log, sm) = open(&fresh);
    assert_eq!(sm.view().last_applied(), meta.last_log_id);
}

const CLUSTER: ClusterId = ClusterId([7; 16]);

#[tokio::test]
async fn a_sled_store_keeps_the_one_cluster_id_it_adopted() {
    let root = tempfile::tempdir().unwrap();
    {
        let (log, _sm) = open(root.path());
        assert_eq!(log.cluster_id(), None, "a new store belongs to no cluster");
        log.adopt_cluster_id(CLUSTER).await.unwrap();
        log.adopt_cluster_id(CLUSTER).await.unwrap();
        let other = ClusterId([8; 16]);
        assert!(matches!(
            log.adopt_cluster_id(other).await,
            Err(AdoptError::OtherCluster { held, offered }) if held == CLUSTER && offered == other
        ));
        assert_eq!(log.cluster_id(), Some(CLUSTER));
    }
    let (log, _sm) = open(root.path());
    assert_eq!(log.cluster_id(), Some(CLUSTER), "durable across a reopen");
}

#[tokio::test]
async fn a_memory_store_keeps_the_one_cluster_id_it_adopted() {
    let a = MemLogStore::default();
    let b = a.clone();
    a.adopt_cluster_id(CLUSTER).await.unwrap();
    assert_eq!(b.cluster_id(), Some(CLUSTER));
    assert!(b.adopt_cluster_id(ClusterId([9; 16])).await.is_err());
    assert_eq!(a.cluster_id(), Some(CLUSTER));
}

#[test]
fn cluster_ids_read_back_from_their_text() {
    let id = ClusterId([0xab; 16]);
    assert_eq!(id.to_string().parse::<ClusterId>().unwrap(), id);
    assert!("abc".parse::<ClusterId>().is_err());
    assert!("zz".repeat(16).parse::<ClusterId>().is_err());
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

// ---------------------------------------------------------------------------------------------
// The store mark: a sled that lost data must refuse to open, never open silently with less.

/// Term of the histories written by [`write_history`].
const HISTORY_TERM: u64 = 5;
/// Entries in the histories of the tests that damage sled's contents on purpose.
const HISTORY_LAST: u64 = 1_000;

/// A real write history: a vote, entries `0..=last` appended `batch` at a time (index 0 is a
/// membership entry) with `committed` following each append, the vote committed, then a clean
/// close. Returns the mark it must leave.
async fn write_history(dir: &Path, last: u64, batch: u64) -> StoreMark {
    let (mut log, _sm) = open(dir);
    log.save_vote(&Vote::new(HISTORY_TERM, 1)).await.unwrap();
    log.append_durable(vec![membership_entry(HISTORY_TERM, 0)])
        .await
        .unwrap();
    let mut first = 1;
    while first <= last {
        let end = (first + batch - 1).min(last);
        let entries = (first..=end)
            .map(|i| claim_entry(HISTORY_TERM, i, i))
            .collect();
        log.append_durable(entries).await.unwrap();
        log.save_committed(Some(log_id(HISTORY_TERM, end)))
            .await
            .unwrap();
        first = end + 1;
    }
    log.save_vote(&Vote::new_committed(HISTORY_TERM, 1))
        .await
        .unwrap();
    let store_id = log.store_id().expect("a new store has an id");
    drop(log);
    let mark = read_store_mark(dir).unwrap().expect("a mark");
    let expected = StoreMark {
        store_id,
        vote: Some(Vote::new_committed(HISTORY_TERM, 1)),
        committed: Some(log_id(HISTORY_TERM, last)),
    };
    assert_eq!(
        mark, expected,
        "a clean close leaves a mark as current as sled"
    );
    expected
}

/// What a damaged store did when opened.
enum Damaged {
    /// It refused, twice, naming the rebuild.
    Refused(OpenError),
    /// It opened with everything its mark says it had, and every entry reads back intact.
    Intact,
}

/// Opens a damaged store: it must either refuse (see [`expect_refusal`]) or hold everything
/// the mark says. Opening silently with less fails the test.
async fn open_damaged(dir: &Path, mark: &StoreMark, case: &str) -> Damaged {
    match open_sled_stores(dir, SledOptions::default()) {
        Err(_) => Damaged::Refused(expect_refusal(dir, case)),
        Ok((mut log, _sm)) => {
            let vote = log.read_vote().await.unwrap();
            assert!(vote >= mark.vote, "{case}: opened with vote {vote:?}");
            let last = mark.committed.unwrap().index;
            let got = log.try_get_log_entries(..).await.unwrap();
            assert_eq!(
                got.len() as u64,
                last + 1,
                "{case}: opened with a short log"
            );
            assert_eq!(got[0], membership_entry(HISTORY_TERM, 0), "{case}");
            for entry in &got[1..] {
                let i = entry.log_id.index;
                assert_eq!(*entry, claim_entry(HISTORY_TERM, i, i), "{case}");
            }
            Damaged::Intact
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Opens `dir` twice: both must refuse (a refused open must not "repair" the evidence away),
/// the mark must be unchanged, and the error must send the operator to `x402-node rebuild`.
fn expect_refusal(dir: &Path, case: &str) -> OpenError {
    let mark_before = std::fs::read(dir.join(MARK_FILE)).ok();
    let mut first = None;
    for attempt in 0..2 {
        match open_sled_stores(dir, SledOptions::default()) {
            Ok((log, _sm)) => {
                let vote = log.vote().unwrap();
                let end = log.log_end().unwrap();
                panic!("{case}: opened silently (attempt {attempt}) with vote {vote:?}, log end {end:?}")
            }
            Err(e) => {
                let text = e.to_string();
                assert!(text.contains("x402-node rebuild"), "{case}: {text}");
                assert!(text.contains(&dir.display().to_string()), "{case}: {text}");
                first.get_or_insert(e);
            }
        }
    }
    assert_eq!(
        std::fs::read(dir.join(MARK_FILE)).ok(),
        mark_before,
        "{case}: a refused open changed the mark"
    );
    first.unwrap()
}

fn damage_db(dir: &Path, offset_from_len: impl Fn(u64) -> u64, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let db = dir.join(SLED_DIR).join("db");
    let mut file = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    let len = file.metadata().unwrap().len();
    file.seek(SeekFrom::Start(offset_from_len(len))).unwrap();
    file.write_all(bytes).unwrap();
    file.sync_all().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_mark_lifecycle_reopens_many_times() {
    let dir = tempfile::tempdir().unwrap();
    let mut store_id = None;
    let mut next = 0u64;
    let mut expected_vote = None;
    for round in 1..=12u64 {
        let (mut log, mut sm) = open(dir.path());
        let mark = read_store_mark(dir.path())
            .unwrap()
            .expect("a mark after open");
        assert_eq!(*store_id.get_or_insert(mark.store_id), mark.store_id);
        assert_eq!(log.store_id(), Some(mark.store_id));
        // The previous round closed cleanly: the mark holds its last vote and committed.
        assert_eq!(mark.vote, expected_vote, "round {round}");
        assert_eq!(
            mark.committed,
            next.checked_sub(1).map(|i| log_id(i / 40 + 1, i))
        );

        let batch: Vec<Entry> = (next..next + 40)
            .map(|i| claim_entry(round, i, i))
            .collect();
        log.append_durable(batch.clone()).await.unwrap();
        next += 40;
        log.save_vote(&Vote::new(round, 1)).await.unwrap();
        log.save_committed(Some(log_id(round, next - 1)))
            .await
            .unwrap();
        if round % 4 == 0 {
            // Snapshot and purge now and then: the mark's committed index may then only be
            // reached through the purge point.
            sm.apply(batch).await.unwrap();
            sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            log.purge(log_id(round, next - 1)).await.unwrap();
        } else {
            sm.apply(batch).await.unwrap();
        }
        if round % 3 == 0 {
            // No flush after `committed` (and the purge): the close itself must flush them
            // before the mark may claim them.
            expected_vote = Some(Vote::new(round, 1));
        } else {
            log.save_vote(&Vote::new_committed(round, 1)).await.unwrap();
            expected_vote = Some(Vote::new_committed(round, 1));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_mark_follows_flushes_and_never_claims_unflushed_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _sm) = open(dir.path());
    let id = log.store_id().unwrap();
    let fresh = read_store_mark(dir.path()).unwrap().unwrap();
    assert_eq!(
        (fresh.store_id, fresh.vote, fresh.committed),
        (id, None, None)
    );

    log.append_durable(entries(10)).await.unwrap();
    // A vote is in the mark as soon as save_vote returns.
    log.save_vote(&Vote::new(2, 1)).await.unwrap();
    let mark = read_store_mark(dir.path()).unwrap().unwrap();
    assert_eq!(mark.vote, Some(Vote::new(2, 1)));

    // `committed` is not flushed on its own, so the mark must not claim it yet, however long
    // we wait.
    log.save_committed(Some(log_id(1, 8))).await.unwrap();
    tokio::time::sleep(MARK_INTERVAL * 2).await;
    assert_eq!(
        read_store_mark(dir.path()).unwrap().unwrap().committed,
        None
    );

    // The next flush covers it; once MARK_INTERVAL has passed the flusher rewrites the mark
    // (right after answering, so poll briefly).
    log.append_durable(vec![claim_entry(1, 11, 11)])
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let mark = read_store_mark(dir.path()).unwrap().unwrap();
        if mark.committed == Some(log_id(1, 8)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "mark stuck at {mark:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // A vote flush brings everything recorded so far along at once.
    log.save_committed(Some(log_id(1, 11))).await.unwrap();
    log.save_vote(&Vote::new(3, 1)).await.unwrap();
    let mark = read_store_mark(dir.path()).unwrap().unwrap();
    assert_eq!(
        (mark.vote, mark.committed),
        (Some(Vote::new(3, 1)), Some(log_id(1, 11)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_sled_db_refuses_to_open_instead_of_opening_with_less() {
    // What sled 0.34 does with a damaged `db` depends on how the history was laid out: with one
    // segment it opens an empty (first page damaged) or truncated (garbage in the middle) store
    // without a word; with several it may open everything, or panic. Whatever it does, the
    // store must never open with less than its mark says.
    let root = tempfile::tempdir().unwrap();
    // (entries, entries per append, whether sled is known to lose data silently there)
    for (last, batch, sled_loses_silently) in [(50, 1, true), (1000, 1, true), (3000, 100, false)] {
        let history = root.path().join(format!("{last}-by-{batch}"));
        let pristine = history.join("pristine");
        let mark = write_history(&pristine, last, batch).await;
        let case_dir = |name: &str| {
            let dir = history.join(name);
            copy_dir(&pristine, &dir);
            dir
        };

        // The copy itself opens fine, with everything.
        assert!(matches!(
            open_damaged(&case_dir("copy"), &mark, "undamaged copy").await,
            Damaged::Intact
        ));

        // The first page of `db` overwritten.
        let case = format!("{last} entries by {batch}, first 4 KiB of db overwritten");
        let dir = case_dir("first-page");
        damage_db(&dir, |_| 0, &[0xab; 4096]);
        match open_damaged(&dir, &mark, &case).await {
            Damaged::Refused(e) => {
                eprintln!("{case}: refused: {e}");
                if sled_loses_silently {
                    // Only the mark catches this: sled itself opens an empty store.
                    assert!(
                        matches!(&e, OpenError::DataLost { reason, .. } if reason.contains("no store id")),
                        "{case}: {e}"
                    );
                }
            }
            Damaged::Intact => {
                eprintln!("{case}: opened with everything");
                assert!(
                    !sled_loses_silently,
                    "{case}: sled kept everything after all?"
                );
            }
        }

        // 64 KiB of garbage in the middle of `db`.
        let case = format!("{last} entries by {batch}, 64 KiB of garbage in the middle of db");
        let dir = case_dir("middle");
        damage_db(&dir, |len| len / 2, &[0x5a; 64 << 10]);
        match open_damaged(&dir, &mark, &case).await {
            Damaged::Refused(e) => {
                eprintln!("{case}: refused: {e}");
                if sled_loses_silently {
                    // sled opens the log (and meta) cut short: only the mark catches it.
                    assert!(
                        matches!(&e, OpenError::DataLost { reason, .. } if reason.contains("were committed")),
                        "{case}: {e}"
                    );
                }
            }
            Damaged::Intact => eprintln!("{case}: opened with everything"),
        }

        // `db` truncated to nothing: sled opens an empty store.
        let dir = case_dir("truncated");
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(SLED_DIR).join("db"))
            .unwrap()
            .set_len(0)
            .unwrap();
        let e = expect_refusal(&dir, "db truncated to 0");
        assert!(
            matches!(&e, OpenError::DataLost { reason, .. } if reason.contains("no store id")),
            "{e}"
        );

        // The whole sled directory gone, the mark kept: refused, and nothing is re-created.
        let dir = case_dir("no-sled");
        std::fs::remove_dir_all(dir.join(SLED_DIR)).unwrap();
        let e = expect_refusal(&dir, "sled directory deleted");
        assert!(
            matches!(&e, OpenError::DataLost { reason, .. } if reason.contains("missing")),
            "{e}"
        );
        assert!(!dir.join(SLED_DIR).exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_vote_or_committed_entries_are_named_in_the_refusal() {
    let root = tempfile::tempdir().unwrap();
    let pristine = root.path().join("pristine");
    write_history(&pristine, HISTORY_LAST, 100).await;

    // sled lost its vote (what a truncated recovery can do): "the node could vote twice".
    let dir = root.path().join("no-vote");
    copy_dir(&pristine, &dir);
    {
        let db = raw_sled(&dir);
        db.open_tree(log_sled::META_TREE)
            .unwrap()
            .remove(b"vote")
            .unwrap();
        db.flush().unwrap();
    }
    let e = expect_refusal(&dir, "vote removed");
    let text = e.to_string();
    assert!(
        text.contains("vote of term 5") && text.contains("store has none"),
        "{text}"
    );

    // An older vote is no better.
    let dir = root.path().join("old-vote");
    copy_dir(&pristine, &dir);
    {
        let db = raw_sled(&dir);
        db.open_tree(log_sled::META_TREE)
            .unwrap()
            .insert(b"vote", encode_record(&Vote::new(4, 1)).unwrap())
            .unwrap();
        db.flush().unwrap();
    }
    let text = expect_refusal(&dir, "older vote").to_string();
    assert!(text.contains("only term 4"), "{text}");

    // The log cut short after 445 while 3000 were committed.
    let dir = root.path().join("short-log");
    copy_dir(&pristine, &dir);
    {
        let db = raw_sled(&dir);
        let tree = db.open_tree(log_sled::LOG_TREE).unwrap();
        for i in 446..=HISTORY_LAST {
            tree.remove(i.to_be_bytes()).unwrap();
        }
        db.flush().unwrap();
    }
    let text = expect_refusal(&dir, "log cut short").to_string();
    assert!(
        text.contains(&format!(
            "log ends at 445 but {HISTORY_LAST} were committed"
        )),
        "{text}"
    );

    // Another store's sled directory under this mark.
    let dir = root.path().join("swapped");
    copy_dir(&pristine, &dir);
    let other = root.path().join("other");
    write_history(&other, 20, 5).await;
    std::fs::remove_dir_all(dir.join(SLED_DIR)).unwrap();
    copy_dir(&other.join(SLED_DIR), &dir.join(SLED_DIR));
    let text = expect_refusal(&dir, "sled of another store").to_string();
    assert!(text.contains("another store"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_or_missing_mark() {
    let root = tempfile::tempdir().unwrap();
    let pristine = root.path().join("pristine");
    let mark = write_history(&pristine, HISTORY_LAST, 100).await;
    let mark_bytes = std::fs::read(pristine.join(MARK_FILE)).unwrap();

    // Any damage to the mark: refused (it can no longer vouch for the store).
    for (name, bytes) in [
        ("flipped", {
            let mut b = mark_bytes.clone();
            b[3] ^= 0x01;
            b
        }),
        ("garbage", b"not a mark at all".to_vec()),
        ("empty", Vec::new()),
        ("future-version", {
            let mut b = mark_bytes.clone();
            b[0] = 99;
            b
        }),
    ] {
        let dir = root.path().join(name);
        copy_dir(&pristine, &dir);
        std::fs::write(dir.join(MARK_FILE), bytes).unwrap();
        let e = expect_refusal(&dir, name);
        assert!(matches!(e, OpenError::BadMark { .. }), "{name}: {e}");
    }

    // A missing mark with an intact sled (a crash between the two writes that create a store):
    // the mark is written again from sled and the store opens.
    let dir = root.path().join("no-mark");
    copy_dir(&pristine, &dir);
    std::fs::remove_file(dir.join(MARK_FILE)).unwrap();
    drop(open(&dir));
    assert_eq!(read_store_mark(&dir).unwrap(), Some(mark));

    // A store with data but neither a store id nor a mark (e.g. sled lost its first segment
    // and the mark is gone too): never taken for a new store.
    let dir = root.path().join("anonymous");
    copy_dir(&pristine, &dir);
    std::fs::remove_file(dir.join(MARK_FILE)).unwrap();
    {
        let db = raw_sled(&dir);
        db.open_tree(log_sled::META_TREE)
            .unwrap()
            .remove(log_sled::KEY_STORE_ID)
            .unwrap();
        db.flush().unwrap();
    }
    let text = expect_refusal(&dir, "no store id, no mark").to_string();
    assert!(text.contains("no store id"), "{text}");
    assert!(!dir.join(MARK_FILE).exists());
}
