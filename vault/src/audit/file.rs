//! The optional JSON-lines copy of the audit log: one record per line,
//! appended and synced after the store has taken the same records.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::record::{AuditRecord, ChainHead};
use super::AuditError;
use crate::store::KvStore;

/// Maximum number of bytes read from the end of a file to find its last line.
/// A record takes a few KiB at most, because each text field is cut to 1 KiB.
const MAX_TAIL_BYTES: u64 = 1024 * 1024;

/// An open JSON-lines file that records are appended to.
pub(crate) struct JsonLinesFile {
    file: File,
    path: PathBuf,
    /// True for a regular file. Pipes and character devices (such as
    /// `/dev/stdout`) are written to but never read, truncated or synced.
    regular: bool,
    /// Length of the file up to the last complete, synced line.
    synced_len: u64,
    /// Lines whose records the store has but this file does not yet: a failed
    /// append keeps them here, and the next append writes them first.
    pending: Vec<u8>,
}

impl JsonLinesFile {
    /// Opens or creates the file, cuts an incomplete last line left by a
    /// crash, and appends the records of the store that the file lacks, so
    /// that it ends at `head`. An empty or new file starts with the next record.
    pub(crate) fn open(
        path: &Path,
        store: &dyn KvStore,
        head: &ChainHead,
    ) -> Result<JsonLinesFile, AuditError> {
        let open_error = |source: io::Error| AuditError::FileOpen {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(open_error)?;
        let metadata = file.metadata().map_err(open_error)?;
        let mut sink = JsonLinesFile {
            file,
            path: path.to_owned(),
            regular: metadata.is_file(),
            synced_len: metadata.len(),
            pending: Vec::new(),
        };
        if sink.regular && sink.synced_len > 0 {
            sink.catch_up(store, head)?;
        }
        Ok(sink)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Returns true while records that the store has are missing from the file.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes the lines of earlier failed appends, if any.
    pub(crate) fn flush_pending(&mut self) -> Result<(), AuditError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let lines = std::mem::take(&mut self.pending);
        self.append_bytes(lines)
    }

    /// Appends `records`, one JSON line each, and syncs the file. On failure
    /// the lines are kept and written first by the next call.
    pub(crate) fn append(&mut self, records: &[AuditRecord]) -> Result<(), AuditError> {
        let mut lines = std::mem::take(&mut self.pending);
        for record in records {
            lines.extend_from_slice(record.to_json().as_bytes());
            lines.push(b'\n');
        }
        self.append_bytes(lines)
    }

    fn append_bytes(&mut self, lines: Vec<u8>) -> Result<(), AuditError> {
        match self.write_and_sync(&lines) {
            Ok(()) => {
                self.synced_len += lines.len() as u64;
                Ok(())
            }
            Err(source) => {
                // A partial line would corrupt the file, so a regular file is
                // cut back to its last complete line before the lines are kept
                // for the next attempt.
                let cut_back = if self.regular {
                    self.file.set_len(self.synced_len)
                } else {
                    Ok(())
                };
                self.pending = lines;
                let message = match cut_back {
                    Ok(()) => source.to_string(),
                    Err(truncate) => format!(
                        "{source}; cutting the file back to {} bytes failed too: {truncate}",
                        self.synced_len
                    ),
                };
                Err(AuditError::FileWrite {
                    path: self.path.clone(),
                    message,
                })
            }
        }
    }

    fn write_and_sync(&mut self, lines: &[u8]) -> io::Result<()> {
        self.file.write_all(lines)?;
        self.file.flush()?;
        if self.regular {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Cuts an incomplete last line, then appends the store's records after
    /// the file's last one.
    fn catch_up(&mut self, store: &dyn KvStore, head: &ChainHead) -> Result<(), AuditError> {
        let (complete_len, last_line) = self.read_last_line()?;
        if complete_len < self.synced_len {
            tracing::warn!(
                path = %self.path.display(),
                removed_bytes = self.synced_len - complete_len,
                "cut an incomplete last line from the audit file, left by an interrupted write"
            );
            self.file
                .set_len(complete_len)
                .map_err(|source| self.read_error(source))?;
            self.synced_len = complete_len;
        }
        let Some(line) = last_line else {
            return Ok(());
        };
        let last: AuditRecord =
            serde_json::from_slice(&line).map_err(|e| AuditError::FileInconsistent {
                path: self.path.clone(),
                reason: format!("its last line is not an audit record ({e})"),
            })?;
        if last.seq > head.seq {
            return Err(AuditError::FileInconsistent {
                path: self.path.clone(),
                reason: format!(
                    "it ends at record {} but the store's audit log ends at record {}; the store lost records or was restored from an older copy. Move the file aside to start a new one, and keep it as evidence",
                    last.seq, head.seq
                ),
            });
        }
        let stored = super::read_record(store, last.seq)?;
        if stored.as_ref().map(|r| &r.hash) != Some(&last.hash) {
            return Err(AuditError::FileInconsistent {
                path: self.path.clone(),
                reason: format!(
                    "its record {} differs from the store's record {}; run `keygate audit verify` on both, then move the file aside to start a new one",
                    last.seq, last.seq
                ),
            });
        }
        let missing = super::read_records_after(store, last.seq)?;
        if !missing.is_empty() {
            tracing::info!(
                path = %self.path.display(),
                from_seq = last.seq + 1,
                records = missing.len(),
                "appending audit records that the file lacks"
            );
            self.append(&missing)?;
        }
        Ok(())
    }

    /// Returns the length of the file up to its last newline and the last
    /// complete line, if there is one.
    fn read_last_line(&mut self) -> Result<(u64, Option<Vec<u8>>), AuditError> {
        let len = self.synced_len;
        let start = len.saturating_sub(MAX_TAIL_BYTES);
        let mut tail = Vec::with_capacity((len - start) as usize);
        self.file
            .seek(SeekFrom::Start(start))
            .and_then(|_| (&mut self.file).take(len - start).read_to_end(&mut tail))
            .map_err(|source| self.read_error(source))?;
        let Some(last_newline) = tail.iter().rposition(|byte| *byte == b'\n') else {
            if start == 0 {
                // No complete line at all: the whole file is one interrupted write.
                return Ok((0, None));
            }
            return Err(AuditError::FileInconsistent {
                path: self.path.clone(),
                reason: format!("its last {MAX_TAIL_BYTES} bytes contain no line break"),
            });
        };
        let complete_len = start + last_newline as u64 + 1;
        let line_start = tail[..last_newline]
            .iter()
            .rposition(|byte| *byte == b'\n')
            .map_or(0, |index| index + 1);
        if line_start == 0 && start > 0 {
            return Err(AuditError::FileInconsistent {
                path: self.path.clone(),
                reason: format!("its last line is longer than {MAX_TAIL_BYTES} bytes"),
            });
        }
        Ok((complete_len, Some(tail[line_start..last_newline].to_vec())))
    }

    fn read_error(&self, source: io::Error) -> AuditError {
        AuditError::FileRead {
            path: self.path.clone(),
            source,
        }
    }
}
