//! Searching the stored audit log for the records that match a filter.

use std::ops::ControlFlow;

use super::{seq_from_key, seq_key, AuditError, AuditOp, AuditOutcome, AuditRecord};
use crate::error::hex;
use crate::store::{KvStore, Space};

/// Records read from the store at a time.
const PAGE_SIZE: usize = 1000;

/// Conditions that a record must all meet. A condition left `None` holds for
/// every record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordFilter {
    /// Earliest `time_ms`, included.
    pub since_ms: Option<u64>,
    /// Latest `time_ms`, excluded.
    pub until_ms: Option<u64>,
    pub request_id: Option<String>,
    pub actor: Option<String>,
    pub account: Option<String>,
    pub project: Option<String>,
    pub secret: Option<String>,
    /// Operations of which the record's must be one; empty for any.
    pub operations: Vec<AuditOp>,
    /// Outcomes of which the record's must be one; empty for any.
    pub outcomes: Vec<AuditOutcome>,
    /// A value that one of the record's details must have, such as the HMAC
    /// of a sensitive string. It is compared without regard to ASCII case, so
    /// a hex HMAC matches in either case.
    pub detail_value: Option<String>,
}

impl RecordFilter {
    /// Returns whether `record` meets every condition.
    pub fn matches(&self, record: &AuditRecord) -> bool {
        let text = |wanted: &Option<String>, actual: &str| {
            wanted.as_deref().is_none_or(|wanted| wanted == actual)
        };
        self.since_ms.is_none_or(|since| record.time_ms >= since)
            && self.until_ms.is_none_or(|until| record.time_ms < until)
            && text(&self.request_id, &record.request_id)
            && text(&self.actor, &record.actor)
            && text(&self.account, &record.account)
            && text(&self.project, &record.project)
            && text(&self.secret, &record.secret)
            && (self.operations.is_empty() || self.operations.contains(&record.operation))
            && (self.outcomes.is_empty() || self.outcomes.contains(&record.outcome))
            && self.detail_value.as_deref().is_none_or(|wanted| {
                record
                    .details
                    .values()
                    .any(|value| value.eq_ignore_ascii_case(wanted))
            })
    }
}

/// The counts and sequence numbers of one search.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SearchReport {
    /// Records read, matching or not.
    pub scanned: u64,
    pub matched: u64,
    /// Sequence number in the key of the first record read.
    pub first_seq: Option<u64>,
    /// Sequence number in the key of the last record read. The search can
    /// continue after it, also when a record's own `seq` differs from its key.
    pub last_seq: Option<u64>,
    /// Whether `on_match` ended the search.
    pub stopped: bool,
}

/// Reads the records of `store` in sequence order, from record `from_seq`
/// on, and calls `on_match` with each record that `filter` matches and the
/// record's stored JSON. The search ends after record `to_seq`, at the last
/// record, or when `on_match` returns [`ControlFlow::Break`].
///
/// The search does not check the hash chain, which [`super::verify_store`]
/// does. A value that is not a valid record ends the search with
/// [`AuditError::Inconsistent`], naming its key.
pub fn search_store(
    store: &dyn KvStore,
    filter: &RecordFilter,
    from_seq: u64,
    to_seq: u64,
    on_match: &mut dyn FnMut(&AuditRecord, &[u8]) -> ControlFlow<()>,
) -> Result<SearchReport, AuditError> {
    let mut report = SearchReport::default();
    // Keys are big-endian sequence numbers, so starting after the key of
    // `from_seq - 1` starts at `from_seq`.
    let mut after = from_seq.checked_sub(1).map(|seq| seq_key(seq).to_vec());
    loop {
        let page = store.scan_prefix(Space::Audit, b"", after.as_deref(), PAGE_SIZE)?;
        let Some((last_key, _)) = page.last() else {
            return Ok(report);
        };
        after = Some(last_key.clone());
        for (key, value) in page {
            let Some(key_seq) = seq_from_key(&key) else {
                return Err(AuditError::Inconsistent {
                    reason: format!(
                        "the audit space has the {}-byte key {}, not an 8-byte sequence number",
                        key.len(),
                        hex(&key)
                    ),
                });
            };
            if key_seq > to_seq {
                return Ok(report);
            }
            let record: AuditRecord =
                serde_json::from_slice(&value).map_err(|e| AuditError::Inconsistent {
                    reason: format!("record {key_seq} is not a valid audit record: {e}"),
                })?;
            report.scanned += 1;
            report.first_seq.get_or_insert(key_seq);
            report.last_seq = Some(key_seq);
            if filter.matches(&record) {
                report.matched += 1;
                if on_match(&record, &value).is_break() {
                    report.stopped = true;
                    return Ok(report);
                }
            }
        }
    }
}
