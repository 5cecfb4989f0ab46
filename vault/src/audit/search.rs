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
    pub operation: Option<AuditOp>,
    pub outcome: Option<AuditOutcome>,
    /// A value that one of the record's details must have, such as the HMAC
    /// of a sensitive string. Compared without regard to ASCII case, because
    /// HMACs are hex.
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
            && self.operation.is_none_or(|op| op == record.operation)
            && self.outcome.is_none_or(|outcome| outcome == record.outcome)
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
    /// Sequence number of the first record read.
    pub first_seq: Option<u64>,
    /// Sequence number of the last record read.
    pub last_seq: Option<u64>,
    /// Whether `on_match` stopped the search before the end of the log.
    pub stopped: bool,
}

/// Reads the records of `store` in sequence order, from record `from_seq`
/// on, and calls `on_match` with each record that `filter` matches and the
/// record's stored JSON. The search ends at the last record, or when
/// `on_match` returns [`ControlFlow::Break`].
///
/// This does not check the hash chain; [`super::verify_store`] does. A record
/// that is not valid JSON of a record ends the search with
/// [`AuditError::Inconsistent`], naming its key.
pub fn search_store(
    store: &dyn KvStore,
    filter: &RecordFilter,
    from_seq: u64,
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
            let record: AuditRecord = serde_json::from_slice(&value).map_err(|e| {
                let place = match seq_from_key(&key) {
                    Some(seq) => format!("record {seq}"),
                    None => format!("the value under key {}", hex(&key)),
                };
                AuditError::Inconsistent {
                    reason: format!("{place} is not a valid audit record: {e}"),
                }
            })?;
            report.scanned += 1;
            report.first_seq.get_or_insert(record.seq);
            report.last_seq = Some(record.seq);
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
