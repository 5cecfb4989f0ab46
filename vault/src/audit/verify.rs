//! Verification of the hash chain, in the store and in a JSON-lines file.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use super::record::{AuditRecord, ChainHead, GENESIS_HASH};
use super::{read_head, seq_from_key, AuditError};
use crate::store::{KvStore, Space};

/// Records read from the store per scan.
const PAGE_SIZE: usize = 1000;

/// How far a verification has come, passed to the progress callback after
/// each record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Records checked so far.
    pub checked: u64,
    /// Records to check, when known in advance: the chain head's sequence
    /// number for the store, unknown for a file.
    pub total: Option<u64>,
}

/// The result of a verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records checked, up to and including the first bad one.
    pub checked: u64,
    /// Sequence number of the first record; a file may start after record 1.
    pub first_seq: Option<u64>,
    /// The last good record's sequence number and hash.
    pub last: Option<ChainHead>,
    /// The first problem found; `None` when the chain is intact.
    pub problem: Option<ChainProblem>,
}

impl VerifyReport {
    pub fn is_intact(&self) -> bool {
        self.problem.is_none()
    }
}

/// The first thing wrong with a chain. Each names the record where the
/// chain stops being trustworthy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainProblem {
    #[error("record {seq} is unreadable: {reason}")]
    Unreadable { seq: u64, reason: String },

    #[error("record {seq} was changed: its hash does not match its contents")]
    Changed { seq: u64 },

    #[error("record {seq} does not link to the record before it: its prev_hash is not that record's hash (a record before it was changed, removed or reordered)")]
    BrokenLink { seq: u64 },

    #[error("record {expected} is missing: the next record found is {found}")]
    Missing { expected: u64, found: u64 },

    #[error("record {found} appears where record {expected} belongs: records were reordered or repeated")]
    OutOfOrder { expected: u64, found: u64 },

    #[error("the store entry for record {key_seq} holds record {record_seq}: records were moved or reordered")]
    Moved { key_seq: u64, record_seq: u64 },

    #[error("records after {last_seq} are missing: the chain head names record {head_seq}")]
    TailMissing { last_seq: u64, head_seq: u64 },

    #[error("record {seq} does not match the chain head, which names it with another hash")]
    HeadMismatch { seq: u64 },

    #[error("record {seq} comes after the chain head, which names record {head_seq}: records were added outside keygate")]
    BeyondHead { seq: u64, head_seq: u64 },

    #[error("the chain head is missing, but records exist up to record {last_seq}")]
    HeadMissing { last_seq: u64 },
}

/// Checks one record after another against the previous one.
struct ChainChecker {
    /// Sequence number the next record must have; `None` before the first
    /// record of a file, which may start anywhere.
    expected_seq: Option<u64>,
    prev_hash: String,
    report: VerifyReport,
}

impl ChainChecker {
    fn new(expected_seq: Option<u64>) -> ChainChecker {
        ChainChecker {
            expected_seq,
            prev_hash: GENESIS_HASH.to_owned(),
            report: VerifyReport {
                checked: 0,
                first_seq: None,
                last: None,
                problem: None,
            },
        }
    }

    /// Checks `record`; returns false once a problem is recorded.
    fn check(&mut self, record: &AuditRecord) -> bool {
        self.report.checked += 1;
        let problem = self.find_problem(record);
        if problem.is_some() {
            self.report.problem = problem;
            return false;
        }
        self.report.first_seq.get_or_insert(record.seq);
        self.expected_seq = Some(record.seq + 1);
        self.prev_hash = record.hash.clone();
        self.report.last = Some(ChainHead {
            seq: record.seq,
            hash: record.hash.clone(),
        });
        true
    }

    fn find_problem(&self, record: &AuditRecord) -> Option<ChainProblem> {
        let seq = record.seq;
        match self.expected_seq {
            Some(expected) if seq > expected => {
                return Some(ChainProblem::Missing {
                    expected,
                    found: seq,
                })
            }
            Some(expected) if seq < expected => {
                return Some(ChainProblem::OutOfOrder {
                    expected,
                    found: seq,
                })
            }
            _ => {}
        }
        match record.compute_hash() {
            Ok(hash) if hash == record.hash => {}
            Ok(_) => return Some(ChainProblem::Changed { seq }),
            Err(reason) => {
                return Some(ChainProblem::Unreadable {
                    seq,
                    reason: format!("prev_hash: {reason}"),
                })
            }
        }
        // The first record of a file that starts after record 1 links to a
        // record the file does not have, so its link cannot be checked.
        let link_known = self.expected_seq.is_some() || seq == 1;
        if link_known && record.prev_hash != self.prev_hash {
            return Some(ChainProblem::BrokenLink { seq });
        }
        None
    }

    fn fail(&mut self, problem: ChainProblem) -> VerifyReport {
        self.report.problem = Some(problem);
        self.report.clone()
    }
}

/// Verifies the audit log in `store`: sequence numbers from 1 without gaps,
/// each record's hash, each link to the previous record, and the chain head.
/// Calls `progress` after each record.
///
/// Returns an error only when the store cannot be read; a broken chain is a
/// [`VerifyReport`] with a problem.
pub fn verify_store(
    store: &dyn KvStore,
    progress: &mut dyn FnMut(Progress),
) -> Result<VerifyReport, AuditError> {
    let head = read_head(store)?;
    let total = head.as_ref().map(|head| head.seq);
    let mut checker = ChainChecker::new(Some(1));
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.scan_prefix(Space::Audit, b"", after.as_deref(), PAGE_SIZE)?;
        let Some((last_key, _)) = page.last() else {
            break;
        };
        after = Some(last_key.clone());
        for (key, value) in page {
            let expected = checker.expected_seq.unwrap_or(1);
            let Some(key_seq) = seq_from_key(&key) else {
                return Ok(checker.fail(ChainProblem::Unreadable {
                    seq: expected,
                    reason: format!(
                        "the store has a {}-byte key in the audit space, not an 8-byte sequence number",
                        key.len()
                    ),
                }));
            };
            if let Some(head) = &head {
                if key_seq > head.seq {
                    return Ok(checker.fail(ChainProblem::BeyondHead {
                        seq: key_seq,
                        head_seq: head.seq,
                    }));
                }
            }
            let record: AuditRecord = match serde_json::from_slice(&value) {
                Ok(record) => record,
                Err(e) => {
                    return Ok(checker.fail(ChainProblem::Unreadable {
                        seq: key_seq,
                        reason: format!("not a valid audit record: {e}"),
                    }))
                }
            };
            if record.seq != key_seq {
                return Ok(checker.fail(ChainProblem::Moved {
                    key_seq,
                    record_seq: record.seq,
                }));
            }
            if !checker.check(&record) {
                return Ok(checker.report);
            }
            progress(Progress {
                checked: checker.report.checked,
                total,
            });
        }
    }
    let last = checker.report.last.clone();
    let problem = match (&head, &last) {
        (None, None) => None,
        (None, Some(last)) => Some(ChainProblem::HeadMissing { last_seq: last.seq }),
        (Some(head), None) if head.seq > 0 => Some(ChainProblem::TailMissing {
            last_seq: 0,
            head_seq: head.seq,
        }),
        (Some(_), None) => None,
        (Some(head), Some(last)) if head.seq > last.seq => Some(ChainProblem::TailMissing {
            last_seq: last.seq,
            head_seq: head.seq,
        }),
        (Some(head), Some(last)) if head.hash != last.hash => {
            Some(ChainProblem::HeadMismatch { seq: last.seq })
        }
        (Some(_), Some(_)) => None,
    };
    checker.report.problem = problem;
    Ok(checker.report)
}

/// Verifies a JSON-lines audit file: each line a record, sequence numbers
/// without gaps from the first line on, each hash and each link. The first
/// record may have any sequence number, because a file starts with the first
/// record written after it was configured. Calls `progress` after each record.
///
/// Returns an error only when the file cannot be read.
pub fn verify_file(
    path: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<VerifyReport, AuditError> {
    let read_error = |source| AuditError::FileRead {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    let mut checker = ChainChecker::new(None);
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(read_error)?;
        let record: AuditRecord = match serde_json::from_str(&line) {
            Ok(record) => record,
            Err(e) => {
                let seq = checker.expected_seq.unwrap_or(1);
                return Ok(checker.fail(ChainProblem::Unreadable {
                    seq,
                    reason: format!("line {} is not a valid audit record: {e}", index + 1),
                }));
            }
        };
        if !checker.check(&record) {
            return Ok(checker.report);
        }
        progress(Progress {
            checked: checker.report.checked,
            total: None,
        });
    }
    Ok(checker.report)
}
