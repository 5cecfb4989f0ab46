use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use ring::digest;
use tempfile::TempDir;

use super::*;
use crate::keys::MasterKey;
use crate::store::memory::MemStore;
use crate::store::{KeyValue, WriteBatch};

fn event(secret: &str, outcome: AuditOutcome) -> AuditEvent {
    AuditEvent {
        request_id: "0123456789abcdef".into(),
        actor: "runner-1".into(),
        account: "acme".into(),
        project: "etl".into(),
        secret: secret.into(),
        version: Some(3),
        operation: AuditOp::Resolve,
        outcome,
        details: BTreeMap::new(),
    }
}

fn start(store: &Arc<MemStore>) -> AuditLog {
    AuditLog::start(store.clone(), Some(AuditKey::generate()), None).unwrap()
}

fn append_many(log: &AuditLog, count: u64) {
    for index in 1..=count {
        let seq = log
            .append(event(&format!("secret-{index}"), AuditOutcome::Success))
            .unwrap();
        assert_eq!(seq, index);
    }
}

fn stored_records(store: &dyn KvStore) -> Vec<AuditRecord> {
    store
        .scan_prefix(Space::Audit, b"", None, 10_000)
        .unwrap()
        .into_iter()
        .map(|(_, value)| serde_json::from_slice(&value).unwrap())
        .collect()
}

fn put_raw(store: &dyn KvStore, space: Space, key: &[u8], value: &[u8]) {
    let mut batch = WriteBatch::default();
    batch.put(space, key, value);
    store.write(batch).unwrap();
}

fn delete_raw(store: &dyn KvStore, space: Space, key: &[u8]) {
    let mut batch = WriteBatch::default();
    batch.delete(space, key);
    store.write(batch).unwrap();
}

fn verify(store: &dyn KvStore) -> VerifyReport {
    verify_store(store, &mut |_| {}).unwrap()
}

#[test]
fn records_form_a_chain() {
    let store = Arc::new(MemStore::new());
    let log = start(&store);
    append_many(&log, 3);
    drop(log);

    let records = stored_records(store.as_ref());
    assert_eq!(records.len(), 3);
    assert_eq!(records[0].prev_hash, GENESIS_HASH);
    for (index, record) in records.iter().enumerate() {
        assert_eq!(record.seq, index as u64 + 1);
        assert_eq!(record.compute_hash().unwrap(), record.hash);
        assert_eq!(record.secret, format!("secret-{}", index + 1));
        assert_eq!(record.actor, "runner-1");
        assert_eq!(record.request_id, "0123456789abcdef");
        assert!(record.time_ms > 0);
    }
    assert_eq!(records[1].prev_hash, records[0].hash);
    assert_eq!(records[2].prev_hash, records[1].hash);

    let head = read_head(store.as_ref()).unwrap().unwrap();
    assert_eq!(head.seq, 3);
    assert_eq!(head.hash, records[2].hash);
}

#[test]
fn hash_covers_documented_bytes() {
    let mut details = BTreeMap::new();
    details.insert("source_secret".to_owned(), "db".to_owned());
    let record = AuditRecord::new(
        7,
        1_700_000_000_000,
        AuditEvent {
            request_id: "r1".into(),
            actor: "a".into(),
            account: "acme".into(),
            project: "p".into(),
            secret: "s".into(),
            version: Some(2),
            operation: AuditOp::Resolve,
            outcome: AuditOutcome::Success,
            details,
        },
        GENESIS_HASH,
    );

    let lp = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    let mut expected = Vec::new();
    lp(&mut expected, b"keygate/audit/v1");
    expected.extend_from_slice(&7u64.to_be_bytes());
    expected.extend_from_slice(&1_700_000_000_000u64.to_be_bytes());
    for field in [&b"r1"[..], b"a", b"acme", b"p", b"s"] {
        lp(&mut expected, field);
    }
    expected.push(1);
    expected.extend_from_slice(&2u32.to_be_bytes());
    lp(&mut expected, b"resolve");
    lp(&mut expected, b"success");
    expected.extend_from_slice(&1u32.to_be_bytes());
    lp(&mut expected, b"source_secret");
    lp(&mut expected, b"db");
    assert_eq!(record.canonical_bytes(), expected);

    let mut hashed = vec![0u8; 32];
    hashed.extend_from_slice(&expected);
    let digest = digest::digest(&digest::SHA256, &hashed);
    assert_eq!(record.hash, hex(digest.as_ref()));
}

#[test]
fn record_json_names_fields() {
    let record = AuditRecord::new(1, 5, event("db", AuditOutcome::NotFound), GENESIS_HASH);
    let json: serde_json::Value = serde_json::from_str(&record.to_json()).unwrap();
    assert_eq!(json["seq"], 1);
    assert_eq!(json["time_ms"], 5);
    assert_eq!(json["operation"], "resolve");
    assert_eq!(json["outcome"], "not_found");
    assert_eq!(json["version"], 3);
    assert!(json.get("details").is_none(), "empty details are left out");
}

#[test]
fn operation_and_outcome_names_match_serde() {
    for operation in AuditOp::ALL {
        let json = serde_json::to_value(operation).unwrap();
        assert_eq!(json, operation.as_str(), "{operation:?}");
    }
    for outcome in AuditOutcome::ALL {
        let json = serde_json::to_value(outcome).unwrap();
        assert_eq!(json, outcome.as_str(), "{outcome:?}");
    }
}

#[test]
fn from_name_inverts_as_str() {
    for operation in AuditOp::ALL {
        assert_eq!(AuditOp::from_name(operation.as_str()), Some(operation));
    }
    for outcome in AuditOutcome::ALL {
        assert_eq!(AuditOutcome::from_name(outcome.as_str()), Some(outcome));
    }
    assert_eq!(AuditOp::from_name("Read_Value"), None);
    assert_eq!(AuditOutcome::from_name(""), None);
}

/// Appends records for secrets a, b, a, c, a: a and c as reads, b as a denied
/// write, and the second a with an HMAC in its details.
fn searchable_log(store: &Arc<MemStore>) {
    let log = start(store);
    let read = |secret: &str| AuditEvent {
        operation: AuditOp::ReadValue,
        ..event(secret, AuditOutcome::Success)
    };
    log.append(read("a")).unwrap();
    log.append(AuditEvent {
        operation: AuditOp::Write,
        actor: "intruder".into(),
        ..event("b", AuditOutcome::Denied)
    })
    .unwrap();
    let mut details = BTreeMap::new();
    details.insert("location_hmac".to_owned(), "ab12cd".to_owned());
    log.append(AuditEvent {
        details,
        ..read("a")
    })
    .unwrap();
    log.append(read("c")).unwrap();
    log.append(read("a")).unwrap();
}

fn search_seqs(store: &dyn KvStore, filter: &RecordFilter, from: u64) -> (Vec<u64>, SearchReport) {
    search_range(store, filter, from, u64::MAX)
}

fn search_range(
    store: &dyn KvStore,
    filter: &RecordFilter,
    from: u64,
    to: u64,
) -> (Vec<u64>, SearchReport) {
    let mut seqs = Vec::new();
    let report = search_store(store, filter, from, to, &mut |record, json| {
        let parsed: AuditRecord = serde_json::from_slice(json).unwrap();
        assert_eq!(&parsed, record, "the stored JSON is the record's");
        seqs.push(record.seq);
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    (seqs, report)
}

#[test]
fn search_matches_names_and_details() {
    let store = Arc::new(MemStore::default());
    searchable_log(&store);
    let all = RecordFilter::default();
    assert_eq!(search_seqs(&*store, &all, 1).0, [1, 2, 3, 4, 5]);

    let secret_a = RecordFilter {
        secret: Some("a".into()),
        ..RecordFilter::default()
    };
    let (seqs, report) = search_seqs(&*store, &secret_a, 1);
    assert_eq!(seqs, [1, 3, 5]);
    assert_eq!(
        report,
        SearchReport {
            scanned: 5,
            matched: 3,
            first_seq: Some(1),
            last_seq: Some(5),
            stopped: false
        }
    );

    let denied_writes = RecordFilter {
        operations: vec![AuditOp::Write],
        outcomes: vec![AuditOutcome::Denied],
        actor: Some("intruder".into()),
        ..RecordFilter::default()
    };
    assert_eq!(search_seqs(&*store, &denied_writes, 1).0, [2]);
    let reads_or_writes = RecordFilter {
        operations: vec![AuditOp::Write, AuditOp::ReadValue],
        ..RecordFilter::default()
    };
    assert_eq!(search_seqs(&*store, &reads_or_writes, 1).0, [1, 2, 3, 4, 5]);
    let denied_or_error = RecordFilter {
        outcomes: vec![AuditOutcome::Error, AuditOutcome::Denied],
        ..RecordFilter::default()
    };
    assert_eq!(search_seqs(&*store, &denied_or_error, 1).0, [2]);

    let by_hmac = RecordFilter {
        detail_value: Some("AB12CD".into()),
        ..RecordFilter::default()
    };
    assert_eq!(search_seqs(&*store, &by_hmac, 1).0, [3]);

    let other_project = RecordFilter {
        project: Some("elsewhere".into()),
        ..secret_a.clone()
    };
    assert_eq!(search_seqs(&*store, &other_project, 1).0, Vec::<u64>::new());
}

/// Stores records 1 to 4 directly, at times 1000, 2000, 3000 and 4000 ms,
/// for accounts a, b, a, b and request ids r1 to r4. The search does not
/// check the chain, so their hashes are not linked.
fn timed_records(store: &MemStore) {
    for seq in 1..=4u64 {
        let account = if seq % 2 == 1 { "a" } else { "b" };
        let record = AuditRecord::new(
            seq,
            seq * 1000,
            AuditEvent {
                request_id: format!("r{seq}"),
                account: account.into(),
                ..event("s", AuditOutcome::Success)
            },
            GENESIS_HASH,
        );
        put_raw(
            store,
            Space::Audit,
            &seq_key(seq),
            record.to_json().as_bytes(),
        );
    }
}

#[test]
fn search_matches_time_account_request() {
    let store = MemStore::default();
    timed_records(&store);
    let window = |since_ms, until_ms| RecordFilter {
        since_ms,
        until_ms,
        ..RecordFilter::default()
    };
    assert_eq!(
        search_seqs(&store, &window(Some(2000), None), 1).0,
        [2, 3, 4]
    );
    assert_eq!(search_seqs(&store, &window(None, Some(2000)), 1).0, [1]);
    assert_eq!(
        search_seqs(&store, &window(Some(2000), Some(3000)), 1).0,
        [2],
        "`since` is included and `until` excluded"
    );
    assert_eq!(
        search_seqs(&store, &window(Some(4001), None), 1).0,
        Vec::<u64>::new()
    );

    let account_b = RecordFilter {
        account: Some("b".into()),
        ..RecordFilter::default()
    };
    assert_eq!(search_seqs(&store, &account_b, 1).0, [2, 4]);
    let request_r3 = RecordFilter {
        request_id: Some("r3".into()),
        ..RecordFilter::default()
    };
    assert_eq!(search_seqs(&store, &request_r3, 1).0, [3]);
}

#[test]
fn search_stops_after_to_seq() {
    let store = MemStore::default();
    timed_records(&store);
    let all = RecordFilter::default();
    let (seqs, report) = search_range(&store, &all, 2, 3);
    assert_eq!(seqs, [2, 3]);
    assert_eq!((report.first_seq, report.last_seq), (Some(2), Some(3)));
    assert!(
        !report.stopped,
        "the range ended the search, not the caller"
    );
    assert_eq!(search_range(&store, &all, 3, 3).0, [3]);
}

#[test]
fn search_reads_past_one_page() {
    let store = Arc::new(MemStore::default());
    let log = start(&store);
    append_many(&log, 1005);
    let all = RecordFilter::default();
    let (seqs, report) = search_seqs(&*store, &all, 1);
    assert_eq!(seqs, (1..=1005).collect::<Vec<u64>>());
    assert_eq!(report.scanned, 1005);
    let (seqs, _) = search_seqs(&*store, &all, 999);
    assert_eq!(seqs, (999..=1005).collect::<Vec<u64>>());
    let secret_1001 = RecordFilter {
        secret: Some("secret-1001".into()),
        ..RecordFilter::default()
    };
    assert_eq!(search_seqs(&*store, &secret_1001, 1).0, [1001]);
}

#[test]
fn search_from_seq_and_break() {
    let store = Arc::new(MemStore::default());
    searchable_log(&store);
    let secret_a = RecordFilter {
        secret: Some("a".into()),
        ..RecordFilter::default()
    };
    let (seqs, report) = search_seqs(&*store, &secret_a, 2);
    assert_eq!(seqs, [3, 5]);
    assert_eq!(report.scanned, 4, "records 2 to 5");
    assert_eq!((report.first_seq, report.last_seq), (Some(2), Some(5)));
    assert_eq!(search_seqs(&*store, &secret_a, 0).0, [1, 3, 5]);
    assert_eq!(
        search_seqs(&*store, &secret_a, 6).1,
        SearchReport::default()
    );

    let mut first = None;
    let report = search_store(&*store, &secret_a, 1, u64::MAX, &mut |record, _| {
        first = Some(record.seq);
        std::ops::ControlFlow::Break(())
    })
    .unwrap();
    assert_eq!(first, Some(1));
    assert!(report.stopped);
    assert_eq!((report.scanned, report.matched), (1, 1));
}

#[test]
fn search_names_an_unreadable_record() {
    let store = Arc::new(MemStore::default());
    searchable_log(&store);
    put_raw(&*store, Space::Audit, &seq_key(3), b"{not json");
    let error = search_store(
        &*store,
        &RecordFilter::default(),
        1,
        u64::MAX,
        &mut |_, _| std::ops::ControlFlow::Continue(()),
    )
    .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("record 3 is not a valid audit record"),
        "{message}"
    );
    assert!(message.contains("keygate audit verify"), "{message}");
}

#[test]
fn long_fields_are_cut() {
    let mut long = event(&"n".repeat(5000), AuditOutcome::Denied);
    long.actor = "é".repeat(1000);
    long.details.insert("note".into(), "x".repeat(2000));
    let bounded = long.bounded();
    assert!(
        bounded.secret.len() <= MAX_FIELD_BYTES,
        "{}",
        bounded.secret.len()
    );
    assert!(
        bounded.secret.ends_with("...[cut, 5000 bytes]"),
        "{}",
        bounded.secret
    );
    assert!(bounded.actor.len() <= MAX_FIELD_BYTES);
    assert!(
        bounded.actor.ends_with("...[cut, 2000 bytes]"),
        "{}",
        bounded.actor
    );
    assert!(bounded.details["note"].len() <= MAX_FIELD_BYTES);
    assert_eq!(bounded.project, "etl", "short fields stay as they are");
}

#[test]
fn verify_accepts_intact_chain() {
    let store = Arc::new(MemStore::new());
    let log = start(&store);
    append_many(&log, 25);
    drop(log);

    let mut calls = Vec::new();
    let report = verify_store(store.as_ref(), &mut |progress| calls.push(progress)).unwrap();
    assert!(report.is_intact(), "{:?}", report.problem);
    assert_eq!(report.checked, 25);
    assert_eq!(report.first_seq, Some(1));
    assert_eq!(report.last.as_ref().unwrap().seq, 25);
    assert_eq!(calls.len(), 25);
    assert_eq!(
        calls.last(),
        Some(&Progress {
            checked: 25,
            total: Some(25)
        })
    );
}

#[test]
fn verify_accepts_empty_store() {
    let store = MemStore::new();
    let report = verify(&store);
    assert!(report.is_intact());
    assert_eq!(report.checked, 0);
    assert_eq!(report.last, None);
}

#[test]
fn verify_detects_changed_record() {
    let store = Arc::new(MemStore::new());
    let log = start(&store);
    append_many(&log, 5);
    drop(log);

    let mut record = stored_records(store.as_ref()).remove(1);
    record.actor = "someone-else".into();
    put_raw(
        store.as_ref(),
        Space::Audit,
        &seq_key(2),
        record.to_json().as_bytes(),
    );
    assert_eq!(
        verify(store.as_ref()).problem,
        Some(ChainProblem::Changed { seq: 2 })
    );
}

#[test]
fn verify_detects_rehashed_record() {
    let store = Arc::new(MemStore::new());
    let log = start(&store);
    append_many(&log, 5);
    drop(log);

    // A forger who recomputes the changed record's hash still breaks the
    // link from the record after it.
    let mut record = stored_records(store.as_ref()).remove(1);
    record.outcome = AuditOutcome::Denied;
    record.hash = record.compute_hash().unwrap();
    put_raw(
        store.as_ref(),
        Space::Audit,
        &seq_key(2),
        record.to_json().as_bytes(),
    );
    assert_eq!(
        verify(store.as_ref()).problem,
        Some(ChainProblem::BrokenLink { seq: 3 })
    );
}

#[test]
fn verify_detects_removed_middle_record() {
    let store = Arc::new(MemStore::new());
    let log = start(&store);
    append_many(&log, 5);
    drop(log);

    delete_raw(store.as_ref(), Space::Audit, &seq_key(3));
    let report = verify(store.as_ref());
    assert_eq!(
        report.problem,
        Some(ChainProblem::Missing {
            expected: 3,
            found: 4
        })
    );
    assert_eq!(report.last.unwrap().seq, 2);
}

#[test]
fn verify_detects_removed_tail() {
    let store = Arc::new(MemStore::new());
    let log = start(&store);
    append_many(&log, 5);
    drop(log);

    delete_raw(store.as_ref(), Space::Audit, &seq_key(5));
    delete_raw(store.as_ref(), Space::Audit, &seq_key(4));
    assert_eq!(
        verify(store.as_ref()).problem,
        Some(ChainProblem::TailMissing {
            last_seq: 3,
            head_seq: 5
        })
    );
}

#[test]
fn verify_detects_every_record_removed() {
    let store = Arc::new(MemStore::new());
    let log = start(&store);
    append_many(&log, 2);
    drop(log);

    delete_raw(store.as_ref(), Space::Audit, &seq_key(1));
    delete_raw(store.as_ref(), Space::Audit, &seq_key(2));
    assert_eq!(
        verify(store.as_ref()).problem,
        Some(ChainProblem::TailMissing {
            last_seq: 0,
            head_seq: 2
        })
    );
}

#[test]
fn verify_detects_removed_head() {
    let store = Arc::new(MemStore::new());
    let log = start(&store);
    append_many(&log, 2);
    drop(log);

    delete_raw(store.as_ref(), Space::Meta, HEAD_KEY);
    assert_eq!(
        verify(store.as_ref()).problem,
        Some(ChainProblem::HeadMissing { last_seq: 2 })
    );
}

#[test]
fn verify_detects_changed_head() {
    let store = Arc::new(MemStore::new());
    let log = start(&store);
    append_many(&log, 2);
    drop(log);

    let records = stored_records(store.as_ref());
    let forged = ChainHead {
        seq: 2,
        hash: records[0].hash.clone(),
    };
    put_raw(store.as_ref(), Space::Meta, HEAD_KEY, &head_value(&forged));
    assert_eq!(
        verify(store.as_ref()).problem,
        Some(ChainProblem::HeadMismatch { seq: 2 })
    );
}

#[test]
fn verify_detects_reordered_records() {
    let store = Arc::new(MemStore::new());
    let log = start(&store);
    append_many(&log, 4);
    drop(log);

    let second = store.get(Space::Audit, &seq_key(2)).unwrap().unwrap();
    let third = store.get(Space::Audit, &seq_key(3)).unwrap().unwrap();
    put_raw(store.as_ref(), Space::Audit, &seq_key(2), &third);
    put_raw(store.as_ref(), Space::Audit, &seq_key(3), &second);
    assert_eq!(
        verify(store.as_ref()).problem,
        Some(ChainProblem::Moved {
            key_seq: 2,
            record_seq: 3
        })
    );
}

#[test]
fn verify_detects_renumbered_records() {
    let store = Arc::new(MemStore::new());
    let log = start(&store);
    append_many(&log, 4);
    drop(log);

    // Swapped and renumbered so each key matches its record's seq.
    let mut records = stored_records(store.as_ref());
    records.swap(1, 2);
    records[1].seq = 2;
    records[2].seq = 3;
    for record in &records[1..3] {
        put_raw(
            store.as_ref(),
            Space::Audit,
            &seq_key(record.seq),
            record.to_json().as_bytes(),
        );
    }
    assert_eq!(
        verify(store.as_ref()).problem,
        Some(ChainProblem::Changed { seq: 2 })
    );
}

#[test]
fn verify_detects_record_after_head() {
    let store = Arc::new(MemStore::new());
    let log = start(&store);
    append_many(&log, 2);
    drop(log);

    let extra = AuditRecord::new(
        3,
        1,
        event("planted", AuditOutcome::Success),
        &stored_records(store.as_ref())[1].hash,
    );
    put_raw(
        store.as_ref(),
        Space::Audit,
        &seq_key(3),
        extra.to_json().as_bytes(),
    );
    assert_eq!(
        verify(store.as_ref()).problem,
        Some(ChainProblem::BeyondHead {
            seq: 3,
            head_seq: 2
        })
    );
}

#[test]
fn verify_rejects_added_json_field() {
    let store = Arc::new(MemStore::new());
    let log = start(&store);
    append_many(&log, 2);
    drop(log);

    let value = store.get(Space::Audit, &seq_key(1)).unwrap().unwrap();
    let mut json: serde_json::Value = serde_json::from_slice(&value).unwrap();
    json["note"] = "approved".into();
    put_raw(
        store.as_ref(),
        Space::Audit,
        &seq_key(1),
        json.to_string().as_bytes(),
    );
    match verify(store.as_ref()).problem {
        Some(ChainProblem::Unreadable { seq: 1, reason }) => {
            assert!(reason.contains("note"), "{reason}")
        }
        other => panic!("expected Unreadable for record 1, got {other:?}"),
    }
}

#[test]
fn start_continues_existing_chain() {
    let store = Arc::new(MemStore::new());
    let log = start(&store);
    append_many(&log, 2);
    drop(log);

    let log = start(&store);
    assert_eq!(log.append(event("next", AuditOutcome::Success)).unwrap(), 3);
    drop(log);
    let report = verify(store.as_ref());
    assert!(report.is_intact(), "{:?}", report.problem);
    assert_eq!(report.checked, 3);
}

#[test]
fn start_refuses_records_without_head() {
    let store = Arc::new(MemStore::new());
    let log = start(&store);
    append_many(&log, 2);
    drop(log);

    delete_raw(store.as_ref(), Space::Meta, HEAD_KEY);
    let error = AuditLog::start(store.clone(), Some(AuditKey::generate()), None).unwrap_err();
    assert!(
        matches!(error, AuditError::Inconsistent { .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("keygate audit verify"),
        "{error}"
    );
}

#[test]
fn start_refuses_records_after_head() {
    let store = Arc::new(MemStore::new());
    let log = start(&store);
    append_many(&log, 2);
    drop(log);

    let old_head = ChainHead {
        seq: 1,
        hash: stored_records(store.as_ref())[0].hash.clone(),
    };
    put_raw(
        store.as_ref(),
        Space::Meta,
        HEAD_KEY,
        &head_value(&old_head),
    );
    let error = AuditLog::start(store.clone(), Some(AuditKey::generate()), None).unwrap_err();
    assert!(error.to_string().contains("record 2 exists"), "{error}");
}

#[test]
fn concurrent_appends_get_distinct_seqs() {
    let store = Arc::new(MemStore::new());
    let log = Arc::new(start(&store));
    let threads: Vec<_> = (0..8)
        .map(|thread| {
            let log = log.clone();
            std::thread::spawn(move || {
                (0..50)
                    .map(|index| {
                        log.append(event(&format!("t{thread}-{index}"), AuditOutcome::Success))
                            .unwrap()
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut seqs: Vec<u64> = threads
        .into_iter()
        .flat_map(|thread| thread.join().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=400).collect::<Vec<u64>>());
    drop(log);
    let report = verify(store.as_ref());
    assert!(report.is_intact(), "{:?}", report.problem);
    assert_eq!(report.checked, 400);
}

/// A store whose writes wait for the test: each write reports that it
/// started, then waits until the test allows it to finish.
struct GateStore {
    inner: MemStore,
    started: Mutex<mpsc::Sender<()>>,
    proceed: Mutex<mpsc::Receiver<()>>,
}

impl KvStore for GateStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(space, key)
    }

    fn scan_prefix(
        &self,
        space: Space,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        self.inner.scan_prefix(space, prefix, start_after, limit)
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.started.lock().unwrap().send(()).unwrap();
        self.proceed.lock().unwrap().recv().unwrap();
        self.inner.write(batch)
    }
}

#[test]
fn queued_events_share_one_batch() {
    let (started_tx, started_rx) = mpsc::channel();
    let (proceed_tx, proceed_rx) = mpsc::channel();
    let store = Arc::new(GateStore {
        inner: MemStore::new(),
        started: Mutex::new(started_tx),
        proceed: Mutex::new(proceed_rx),
    });
    let batches = Arc::new(Mutex::new(Vec::new()));
    let seen = batches.clone();
    let log = AuditLog::start_with(
        store.clone(),
        Some(AuditKey::generate()),
        AuditOptions {
            on_batch: Some(Box::new(move |outcome| {
                seen.lock().unwrap().push(outcome.clone())
            })),
            ..AuditOptions::default()
        },
    )
    .unwrap();

    let (done_tx, done_rx) = mpsc::channel();
    let submit = |name: &str| {
        let done = done_tx.clone();
        log.submit(event(name, AuditOutcome::Success), move |result| {
            done.send(result.unwrap()).unwrap()
        });
    };
    submit("first");
    started_rx.recv().unwrap();
    // The writer is inside the first batch's write, so these five queue up.
    for index in 0..5 {
        submit(&format!("queued-{index}"));
    }
    proceed_tx.send(()).unwrap();
    started_rx.recv().unwrap();
    proceed_tx.send(()).unwrap();

    let mut seqs: Vec<u64> = (0..6).map(|_| done_rx.recv().unwrap()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
    drop(log);
    assert_eq!(
        *batches.lock().unwrap(),
        vec![
            BatchOutcome::Written { records: 1 },
            BatchOutcome::Written { records: 5 }
        ]
    );
}

/// A store whose writes fail while `failing` is set.
#[derive(Default)]
struct FlakyStore {
    inner: MemStore,
    failing: AtomicBool,
}

impl KvStore for FlakyStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(space, key)
    }

    fn scan_prefix(
        &self,
        space: Space,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        self.inner.scan_prefix(space, prefix, start_after, limit)
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Operation {
                store: "flaky test store".into(),
                operation: "write",
                space: None,
                message: "disk on fire".into(),
                retryable: false,
            });
        }
        self.inner.write(batch)
    }
}

#[test]
fn failed_write_fails_append_and_sets_flag() {
    let store = Arc::new(FlakyStore::default());
    let batches = Arc::new(Mutex::new(Vec::new()));
    let seen = batches.clone();
    let log = AuditLog::start_with(
        store.clone(),
        Some(AuditKey::generate()),
        AuditOptions {
            on_batch: Some(Box::new(move |outcome| {
                seen.lock().unwrap().push(outcome.clone())
            })),
            ..AuditOptions::default()
        },
    )
    .unwrap();
    assert_eq!(log.append(event("a", AuditOutcome::Success)).unwrap(), 1);
    assert_eq!(log.failure(), None);

    store.failing.store(true, Ordering::SeqCst);
    let error = log.append(event("b", AuditOutcome::Success)).unwrap_err();
    assert!(matches!(error, AuditError::Unavailable { .. }), "{error:?}");
    assert!(error.to_string().contains("disk on fire"), "{error}");
    let failure = log.failure().expect("the failure is reported");
    assert!(failure.contains("disk on fire"), "{failure}");

    store.failing.store(false, Ordering::SeqCst);
    assert_eq!(
        log.append(event("c", AuditOutcome::Success)).unwrap(),
        2,
        "the failed event used no sequence number"
    );
    assert_eq!(log.failure(), None, "a successful batch clears the failure");
    drop(log);

    let report = verify(store.as_ref());
    assert!(report.is_intact(), "{:?}", report.problem);
    let names: Vec<String> = stored_records(store.as_ref())
        .into_iter()
        .map(|record| record.secret)
        .collect();
    assert_eq!(names, vec!["a", "c"]);
    let outcomes = batches.lock().unwrap().clone();
    assert_eq!(outcomes.len(), 3);
    assert!(matches!(
        outcomes[1],
        BatchOutcome::Failed { records: 1, .. }
    ));
}

#[test]
fn drop_releases_store() {
    let store = Arc::new(MemStore::new());
    let log = start(&store);
    append_many(&log, 1);
    drop(log);
    assert_eq!(Arc::strong_count(&store), 1, "the writer thread has exited");
}

#[test]
fn hmac_is_stable_per_key() {
    let store: Arc<dyn KvStore> = Arc::new(MemStore::new());
    let vault = Vault::new(store.clone(), MasterKey::generate());
    let first = AuditKey::load_or_create(&vault).unwrap();
    let again = AuditKey::load_or_create(&vault).unwrap();
    let first = AuditLog::start(store.clone(), Some(first), None).unwrap();
    let again = AuditLog::start(Arc::new(MemStore::new()), Some(again), None).unwrap();

    let hmac = first.hmac("idempotency-key-42").unwrap();
    assert_eq!(hmac.len(), 64);
    assert!(hmac.bytes().all(|b| b.is_ascii_hexdigit()), "{hmac}");
    assert_eq!(hmac, first.hmac("idempotency-key-42").unwrap());
    assert_eq!(
        hmac,
        again.hmac("idempotency-key-42").unwrap(),
        "the key is kept in the vault"
    );
    assert_ne!(hmac, first.hmac("idempotency-key-43").unwrap());
}

#[test]
fn hmac_differs_across_keys() {
    let one = AuditLog::start(Arc::new(MemStore::new()), Some(AuditKey::generate()), None).unwrap();
    let two = AuditLog::start(Arc::new(MemStore::new()), Some(AuditKey::generate()), None).unwrap();
    assert_ne!(
        one.hmac("same input").unwrap(),
        two.hmac("same input").unwrap()
    );
}

#[test]
fn hmac_key_is_stored_sealed() {
    let store: Arc<dyn KvStore> = Arc::new(MemStore::new());
    let vault = Vault::new(store.clone(), MasterKey::generate());
    let key = AuditKey::load_or_create(&vault).unwrap();
    let stored = store
        .get(Space::Meta, format!("system/{HMAC_KEY_NAME}").as_bytes())
        .unwrap()
        .expect("the key is stored as a system secret");
    assert!(
        !stored.windows(32).any(|window| window == &key.0[..]),
        "the stored key is sealed"
    );
    assert_eq!(format!("{key:?}"), "AuditKey(REDACTED)");
}

fn start_with_file(store: &Arc<MemStore>, path: &Path) -> AuditLog {
    AuditLog::start(
        store.clone(),
        Some(AuditKey::generate()),
        Some(path.to_owned()),
    )
    .unwrap()
}

fn file_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn verify_path(path: &Path) -> VerifyReport {
    verify_file(path, &mut |_| {}).unwrap()
}

#[test]
fn file_gets_same_records() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("audit.jsonl");
    let store = Arc::new(MemStore::new());
    let log = start_with_file(&store, &path);
    append_many(&log, 4);
    drop(log);

    let stored: Vec<String> = stored_records(store.as_ref())
        .iter()
        .map(AuditRecord::to_json)
        .collect();
    assert_eq!(file_lines(&path), stored);
    let mut calls = 0;
    let report = verify_file(&path, &mut |_| calls += 1).unwrap();
    assert!(report.is_intact(), "{:?}", report.problem);
    assert_eq!(report.checked, 4);
    assert_eq!(report.first_seq, Some(1));
    assert_eq!(calls, 4);
}

#[test]
fn file_verify_detects_changed_line() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("audit.jsonl");
    let store = Arc::new(MemStore::new());
    let log = start_with_file(&store, &path);
    append_many(&log, 4);
    drop(log);

    let mut lines = file_lines(&path);
    lines[2] = lines[2].replace("\"success\"", "\"denied\"");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    assert_eq!(
        verify_path(&path).problem,
        Some(ChainProblem::Changed { seq: 3 })
    );
}

#[test]
fn file_verify_detects_removed_line() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("audit.jsonl");
    let store = Arc::new(MemStore::new());
    let log = start_with_file(&store, &path);
    append_many(&log, 4);
    drop(log);

    let mut lines = file_lines(&path);
    lines.remove(1);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    assert_eq!(
        verify_path(&path).problem,
        Some(ChainProblem::Missing {
            expected: 2,
            found: 3
        })
    );
}

#[test]
fn file_verify_detects_reordered_lines() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("audit.jsonl");
    let store = Arc::new(MemStore::new());
    let log = start_with_file(&store, &path);
    append_many(&log, 4);
    drop(log);

    let mut lines = file_lines(&path);
    lines.swap(0, 1);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    // Record 2 comes first; its link to record 1 cannot be checked until the
    // next line, which goes back to record 1.
    assert_eq!(
        verify_path(&path).problem,
        Some(ChainProblem::OutOfOrder {
            expected: 3,
            found: 1
        })
    );
}

#[test]
fn file_verify_reports_unreadable_line() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("audit.jsonl");
    let store = Arc::new(MemStore::new());
    let log = start_with_file(&store, &path);
    append_many(&log, 2);
    drop(log);

    let mut lines = file_lines(&path);
    lines[1] = "{not json".into();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    match verify_path(&path).problem {
        Some(ChainProblem::Unreadable { seq: 2, reason }) => {
            assert!(reason.contains("line 2"), "{reason}")
        }
        other => panic!("expected Unreadable for record 2, got {other:?}"),
    }
}

#[test]
fn file_added_later_starts_at_next_record() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("audit.jsonl");
    let store = Arc::new(MemStore::new());
    let log = start(&store);
    append_many(&log, 3);
    drop(log);

    let log = start_with_file(&store, &path);
    assert_eq!(
        log.append(event("later", AuditOutcome::Success)).unwrap(),
        4
    );
    drop(log);
    let report = verify_path(&path);
    assert!(report.is_intact(), "{:?}", report.problem);
    assert_eq!(report.first_seq, Some(4));
    assert_eq!(report.checked, 1);
}

#[test]
fn file_catches_up_at_start() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("audit.jsonl");
    let store = Arc::new(MemStore::new());
    let log = start_with_file(&store, &path);
    append_many(&log, 4);
    drop(log);

    // As after a crash between the store write and the file append: the
    // last two lines are missing and a third is half written.
    let lines = file_lines(&path);
    let mut text = lines[..2].join("\n") + "\n";
    text.push_str(&lines[2][..20]);
    std::fs::write(&path, text).unwrap();

    let log = start_with_file(&store, &path);
    assert_eq!(file_lines(&path), lines, "the file ends at record 4 again");
    assert_eq!(
        log.append(event("fifth", AuditOutcome::Success)).unwrap(),
        5
    );
    drop(log);
    let report = verify_path(&path);
    assert!(report.is_intact(), "{:?}", report.problem);
    assert_eq!(report.checked, 5);
}

#[test]
fn file_ahead_of_store_is_refused() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("audit.jsonl");
    let store = Arc::new(MemStore::new());
    let log = start_with_file(&store, &path);
    append_many(&log, 3);
    drop(log);

    let older_store = Arc::new(MemStore::new());
    let log = start(&older_store);
    append_many(&log, 1);
    drop(log);
    let error =
        AuditLog::start(older_store, Some(AuditKey::generate()), Some(path.clone())).unwrap_err();
    assert!(
        matches!(error, AuditError::FileInconsistent { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("ends at record 3"), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
}

#[test]
fn file_from_other_chain_is_refused() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("audit.jsonl");
    let store = Arc::new(MemStore::new());
    let log = start_with_file(&store, &path);
    append_many(&log, 2);
    drop(log);

    // Other secrets than append_many's, so the chains differ even when both
    // are written within the same millisecond.
    let other = Arc::new(MemStore::new());
    let log = start(&other);
    for n in 0..3 {
        log.append(event(&format!("other-{n}"), AuditOutcome::Success))
            .unwrap();
    }
    drop(log);
    let error = AuditLog::start(other, Some(AuditKey::generate()), Some(path)).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("differs from the store's record 2"),
        "{error}"
    );
}

#[test]
fn unopenable_file_fails_start() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("missing-folder/audit.jsonl");
    let error = AuditLog::start(
        Arc::new(MemStore::new()),
        Some(AuditKey::generate()),
        Some(path.clone()),
    )
    .unwrap_err();
    assert!(matches!(error, AuditError::FileOpen { .. }), "{error:?}");
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn failing_file_fails_append() {
    // Every write to /dev/full fails with "no space left on device".
    let store = Arc::new(MemStore::new());
    let log = AuditLog::start(
        store.clone(),
        Some(AuditKey::generate()),
        Some("/dev/full".into()),
    )
    .unwrap();
    let error = log.append(event("a", AuditOutcome::Success)).unwrap_err();
    assert!(error.to_string().contains("/dev/full"), "{error}");
    let failure = log.failure().expect("the failure is reported");
    assert!(failure.contains("/dev/full"), "{failure}");

    // The store took the first batch; the second is refused before the
    // store is written, because the file still lacks the first.
    assert!(log.append(event("b", AuditOutcome::Success)).is_err());
    drop(log);
    let records = stored_records(store.as_ref());
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].secret, "a");
}

#[test]
fn hmac_waits_for_key() {
    let log = AuditLog::start(Arc::new(MemStore::new()), None, None).unwrap();
    assert!(matches!(log.hmac("x"), Err(AuditError::KeyUnavailable)));
    assert_eq!(
        log.append(event("a", AuditOutcome::Sealed)).unwrap(),
        1,
        "records are written without the key"
    );
    log.set_hmac_key(AuditKey::generate());
    assert_eq!(log.hmac("x").unwrap().len(), 64);
}

/// A store whose writes panic, as a bug in a store could.
#[derive(Default)]
struct PanickingStore {
    inner: MemStore,
}

impl KvStore for PanickingStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(space, key)
    }

    fn scan_prefix(
        &self,
        space: Space,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        self.inner.scan_prefix(space, prefix, start_after, limit)
    }

    fn write(&self, _batch: WriteBatch) -> Result<(), StoreError> {
        panic!("store bug");
    }
}

#[test]
fn store_panic_fails_batch() {
    let log = AuditLog::start(Arc::new(PanickingStore::default()), None, None).unwrap();
    for name in ["a", "b"] {
        let error = log.append(event(name, AuditOutcome::Success)).unwrap_err();
        assert!(
            matches!(error, AuditError::Unavailable { .. }),
            "the writer goes on after the panic: {error:?}"
        );
        assert!(error.to_string().contains("store bug"), "{error}");
    }
    let failure = log.failure().expect("the failure is reported");
    assert!(failure.contains("panicked"), "{failure}");
}

#[test]
fn unsynced_reads_append_inline_and_chain_with_changes() {
    let store = Arc::new(MemStore::new());
    let log = AuditLog::start_with(
        store.clone(),
        Some(AuditKey::generate()),
        AuditOptions {
            sync_reads: false,
            ..AuditOptions::default()
        },
    )
    .unwrap();
    assert!(log.appends_inline(AuditOp::Resolve));
    assert!(!log.appends_inline(AuditOp::Write));

    assert_eq!(
        log.append_read(event("a", AuditOutcome::Success)).unwrap(),
        1
    );
    let mut change = event("a", AuditOutcome::Started);
    change.operation = AuditOp::Write;
    assert_eq!(log.append(change).unwrap(), 2);
    assert_eq!(
        log.append_read(event("b", AuditOutcome::Denied)).unwrap(),
        3
    );

    let records = stored_records(store.as_ref());
    assert_eq!(records.len(), 3);
    assert_eq!(records[1].prev_hash, records[0].hash);
    assert_eq!(records[2].prev_hash, records[1].hash);
    let report = verify(store.as_ref());
    assert_eq!(report.checked, 3);
    assert!(report.problem.is_none(), "{:?}", report.problem);
}

#[test]
fn appended_reads_chain_in_order() {
    let store = Arc::new(MemStore::new());
    let log = AuditLog::start_with(
        store.clone(),
        None,
        AuditOptions {
            sync_reads: false,
            ..AuditOptions::default()
        },
    )
    .unwrap();
    assert_eq!(
        log.append_read(event("a", AuditOutcome::Success)).unwrap(),
        1
    );
    let together = ["b", "c", "d"].map(|name| event(name, AuditOutcome::Success));
    assert_eq!(log.append_reads(together.to_vec()).unwrap(), 2);
    assert_eq!(
        log.append_reads(Vec::new()).unwrap(),
        5,
        "nothing is written"
    );
    assert_eq!(
        log.append_read(event("e", AuditOutcome::Denied)).unwrap(),
        5
    );

    let records = stored_records(store.as_ref());
    let names: Vec<&str> = records.iter().map(|r| r.secret.as_str()).collect();
    assert_eq!(names, ["a", "b", "c", "d", "e"]);
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    let report = verify(store.as_ref());
    assert_eq!(report.checked, 5);
    assert!(report.problem.is_none(), "{:?}", report.problem);
    let head = read_head(store.as_ref()).unwrap().unwrap();
    assert_eq!(
        (head.seq, head.hash.as_str()),
        (5, records[4].hash.as_str())
    );
}

#[test]
fn synced_reads_and_files_never_append_inline() {
    let store = Arc::new(MemStore::new());
    let synced = start(&store);
    assert!(
        !synced.appends_inline(AuditOp::Resolve),
        "sync_reads defaults to true"
    );
    drop(synced);

    let dir = tempfile::TempDir::new().unwrap();
    let with_file = AuditLog::start_with(
        store,
        None,
        AuditOptions {
            sync_reads: false,
            file: Some(dir.path().join("audit.jsonl")),
            ..AuditOptions::default()
        },
    )
    .unwrap();
    assert!(
        !with_file.appends_inline(AuditOp::Resolve),
        "the file copy is written by the writer thread"
    );
}
