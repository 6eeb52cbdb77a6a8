//! The dead-letter file: one self-contained JSON object per line for every job that failed
//! permanently or ran out of retries. Appends are fsynced; a torn last line (a crash mid-write)
//! is skipped with a warning when reading, never fatal.
//!
//! Entries carry ids, the error text and its class — never tokens or note bodies.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One dead-lettered job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub id: String,
    pub link_id: i64,
    pub partner: String,
    pub partner_deal_id: String,
    pub hubspot_deal_id: String,
    pub reason: String,
    pub error: String,
    /// `permanent`, `exhausted` (transient failures past the retry limit), or a finer class
    /// such as `unmapped_stage`.
    pub class: String,
    pub attempts: i64,
    pub first_at: String,
    pub last_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error(
        "cannot write the dead-letter file {path}: {source}; check free disk space and permissions"
    )]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the dead-letter file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Appends entries to the file (created owner-only if missing) and fsyncs it.
pub fn append(path: &Path, entries: &[Entry]) -> Result<(), DeadLetterError> {
    let err = |source| DeadLetterError::Write {
        path: path.to_owned(),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(err)?;
    // A torn line left by a crash must not swallow the next entry: start on a fresh line.
    let len = f.metadata().map_err(err)?.len();
    let mut buf = Vec::new();
    if len > 0 && !ends_with_newline(path) {
        buf.push(b'\n');
    }
    for e in entries {
        serde_json::to_writer(&mut buf, e).map_err(|e| err(std::io::Error::other(e)))?;
        buf.push(b'\n');
    }
    f.write_all(&buf).map_err(err)?;
    f.sync_all().map_err(err)
}

fn ends_with_newline(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return true;
    };
    if f.seek(SeekFrom::End(-1)).is_err() {
        return true;
    }
    let mut b = [0u8; 1];
    f.read_exact(&mut b).map(|_| b[0] == b'\n').unwrap_or(true)
}

/// Reads every entry. Lines that are not valid entries are returned as warnings (line number
/// and reason) and skipped.
pub fn read(path: &Path) -> Result<(Vec<Entry>, Vec<String>), DeadLetterError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(source) => {
            return Err(DeadLetterError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let mut entries = Vec::new();
    let mut warnings = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Entry>(line) {
            Ok(e) => entries.push(e),
            Err(e) => warnings.push(format!(
                "{}:{}: skipped an unreadable entry ({e}); a crash while writing leaves such a line",
                path.display(),
                i + 1
            )),
        }
    }
    Ok((entries, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> Entry {
        Entry {
            id: id.into(),
            link_id: 1,
            partner: "partner-a".into(),
            partner_deal_id: "1".into(),
            hubspot_deal_id: "2".into(),
            reason: "poll".into(),
            error: "stage x has no mapping".into(),
            class: "unmapped_stage".into(),
            attempts: 1,
            first_at: "2026-01-01T00:00:00.000Z".into(),
            last_at: "2026-01-01T00:00:00.000Z".into(),
        }
    }

    #[test]
    fn torn_line_is_skipped_and_the_next_append_survives() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dl.jsonl");
        append(&p, &[entry("a")]).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"id\":\"tor")
            .unwrap();
        append(&p, &[entry("b")]).unwrap();
        let (entries, warnings) = read(&p).unwrap();
        assert_eq!(
            entries.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains(":2:"));
    }

    #[cfg(unix)]
    #[test]
    fn file_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dl.jsonl");
        append(&p, &[entry("a")]).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
