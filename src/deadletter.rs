//! The dead-letter file: one self-contained JSON object per line for every job that failed
//! permanently or ran out of retries. Appends are fsynced; a torn last line (a crash mid-write)
//! is skipped with a warning when reading, never fatal.
//!
//! Entries carry ids, the error text and its class — never tokens or note bodies.
//!
//! `dealsync replay` never rewrites an entry: it appends a [`Replay`] mark naming the entry
//! and the outcome. An entry is *open* until a mark says it replayed successfully; a failed
//! replay leaves it open (and the failed job usually adds a fresh entry of its own).
//! [`compact`] keeps the file bounded by dropping closed entries and their marks only.

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
    /// Why it was given up on.
    pub class: DeadClass,
    pub attempts: i64,
    pub first_at: String,
    pub last_at: String,
    /// For a notification that could not be sent: its row in the store's outbox, which
    /// `dealsync replay` puts back in the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification: Option<i64>,
}

/// Why an entry was given up on: its `class` in the file, and what `replay --class` selects.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeadClass {
    /// A permanent failure with no finer reason (HubSpot's message says what).
    Permanent,
    /// Transient failures past the retry limit.
    Exhausted,
    /// A deal stage the partner's stage map does not name.
    UnmappedStage,
    /// A comment whose parent never became a shared message on the deal.
    UnknownParent,
    /// The portal's own write-validation rules refused the write.
    PortalValidation,
    /// A notification that could not be sent.
    Notification,
    /// A class this version does not know (written by a newer one): read and kept as it is,
    /// so a downgrade neither loses nor rewrites entries.
    Other(String),
}

impl DeadClass {
    const KNOWN: [DeadClass; 6] = [
        DeadClass::Permanent,
        DeadClass::Exhausted,
        DeadClass::UnmappedStage,
        DeadClass::UnknownParent,
        DeadClass::PortalValidation,
        DeadClass::Notification,
    ];

    pub fn label(&self) -> &str {
        match self {
            DeadClass::Permanent => "permanent",
            DeadClass::Exhausted => "exhausted",
            DeadClass::UnmappedStage => "unmapped_stage",
            DeadClass::UnknownParent => "unknown_parent",
            DeadClass::PortalValidation => "portal_validation",
            DeadClass::Notification => "notification",
            DeadClass::Other(s) => s,
        }
    }

    pub fn from_label(s: &str) -> DeadClass {
        DeadClass::KNOWN
            .into_iter()
            .find(|c| c.label() == s)
            .unwrap_or_else(|| DeadClass::Other(s.to_owned()))
    }
}

impl std::fmt::Display for DeadClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

impl From<&str> for DeadClass {
    fn from(s: &str) -> DeadClass {
        DeadClass::from_label(s)
    }
}

impl PartialEq<&str> for DeadClass {
    fn eq(&self, other: &&str) -> bool {
        self.label() == *other
    }
}

impl Serialize for DeadClass {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.label())
    }
}

impl<'de> Deserialize<'de> for DeadClass {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<DeadClass, D::Error> {
        Ok(DeadClass::from_label(&String::deserialize(d)?))
    }
}

/// The deal pair an entry is about, as the store knows it (empty strings where it does not).
#[derive(Debug, Clone, Default)]
pub struct Subject {
    pub link_id: i64,
    pub partner: String,
    pub partner_deal_id: String,
    pub hubspot_deal_id: String,
}

impl Entry {
    /// A sync job given up on after `attempts` tries: the first failure at `first_failed_ms`
    /// (this one when `None`). `class` is `exhausted` or the error's permanent class.
    pub fn for_job(
        subject: Subject,
        reason: &str,
        error: String,
        class: DeadClass,
        attempts: i64,
        first_failed_ms: Option<i64>,
    ) -> Entry {
        let now = crate::time::now_ms();
        Entry::new(subject, reason.to_owned(), error, class, attempts)
            .times(first_failed_ms.unwrap_or(now), now)
    }

    /// A notification given up on: its outbox row `notification`, queued at `created_ms`.
    pub fn for_notice(
        subject: Subject,
        reason: String,
        error: String,
        attempts: i64,
        created_ms: i64,
        notification: i64,
    ) -> Entry {
        let mut e = Entry::new(subject, reason, error, DeadClass::Notification, attempts)
            .times(created_ms, crate::time::now_ms());
        e.notification = Some(notification);
        e
    }

    fn new(
        subject: Subject,
        reason: String,
        error: String,
        class: DeadClass,
        attempts: i64,
    ) -> Entry {
        Entry {
            id: uuid::Uuid::new_v4().to_string(),
            link_id: subject.link_id,
            partner: subject.partner,
            partner_deal_id: subject.partner_deal_id,
            hubspot_deal_id: subject.hubspot_deal_id,
            reason,
            error,
            class,
            attempts,
            first_at: String::new(),
            last_at: String::new(),
            notification: None,
        }
    }

    fn times(mut self, first_ms: i64, last_ms: i64) -> Entry {
        self.first_at = crate::time::iso(first_ms);
        self.last_at = crate::time::iso(last_ms);
        self
    }
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
    append_lines(path, entries)
}

fn append_lines<T: Serialize>(path: &Path, lines: &[T]) -> Result<(), DeadLetterError> {
    let err = |source| DeadLetterError::Write {
        path: path.to_owned(),
        source,
    };
    let mut f = open_locked(path).map_err(err)?;
    // A torn line left by a crash must not swallow the next entry: start on a fresh line.
    let len = f.metadata().map_err(err)?.len();
    let mut buf = Vec::new();
    if len > 0 && !ends_with_newline(path) {
        buf.push(b'\n');
    }
    for l in lines {
        serde_json::to_writer(&mut buf, l).map_err(|e| err(std::io::Error::other(e)))?;
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

/// `dealsync replay` compacts the file once it is larger than this.
pub const COMPACT_ABOVE_BYTES: u64 = 8 * 1024 * 1024;

/// A replay mark: entry `replayed` was re-run at `at` with `outcome`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Replay {
    pub replayed: String,
    pub at: String,
    pub ok: bool,
    pub outcome: String,
}

/// The whole file: entries in order, the newest replay mark per entry id, and unreadable lines.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFile {
    pub entries: Vec<Entry>,
    pub replays: std::collections::HashMap<String, Replay>,
    pub warnings: Vec<String>,
}

impl DeadLetterFile {
    /// Entries not yet replayed successfully.
    pub fn open(&self) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .filter(|e| !self.replays.get(&e.id).is_some_and(|r| r.ok))
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Line {
    Replay(Replay),
    Entry(Entry),
}

/// Reads entries and replay marks. Unreadable lines become warnings and are skipped.
pub fn read_all(path: &Path) -> Result<DeadLetterFile, DeadLetterError> {
    // Bytes, not a string: one line of invalid UTF-8 (a disk error, a hand edit) must cost
    // that line, not every entry in the file.
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DeadLetterFile::default()),
        Err(source) => {
            return Err(DeadLetterError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let mut out = DeadLetterFile::default();
    for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let Ok(line) = std::str::from_utf8(raw) else {
            out.warnings.push(format!(
                "{}:{}: skipped a line that is not UTF-8",
                path.display(),
                i + 1
            ));
            continue;
        };
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Line>(line) {
            Ok(Line::Entry(e)) => out.entries.push(e),
            Ok(Line::Replay(r)) => {
                out.replays.insert(r.replayed.clone(), r);
            }
            Err(_) => out.warnings.push(format!(
                "{}:{}: skipped an unreadable line; a crash while writing leaves such a line",
                path.display(),
                i + 1
            )),
        }
    }
    Ok(out)
}

/// Appends replay marks (fsynced, like entries).
pub fn mark(path: &Path, marks: &[Replay]) -> Result<(), DeadLetterError> {
    append_lines(path, marks)
}

/// Rewrites the file without entries that replayed successfully (and their marks) once it is
/// larger than `max_bytes`. Open entries are never dropped. The new file replaces the old one
/// atomically (written beside it, fsynced, renamed); appends hold the same lock, so none is
/// lost in between. Returns whether the file was rewritten.
pub fn compact(path: &Path, max_bytes: u64) -> Result<bool, DeadLetterError> {
    let err = |source| DeadLetterError::Write {
        path: path.to_owned(),
        source,
    };
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(err(e)),
    };
    if len <= max_bytes {
        return Ok(false);
    }
    let locked = open_locked(path).map_err(err)?;
    let file = read_all(path)?;
    let keep: Vec<&Entry> = file.open().collect();
    let tmp = path.with_extension("compacting");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.create(true).write(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(err)?;
        // Root running `dealsync replay` must not leave a file the daemon's user cannot
        // append to: the new file keeps the old one's owner, or compaction is skipped.
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let old = locked.metadata().map_err(err)?;
            let new = f.metadata().map_err(err)?;
            if (old.uid(), old.gid()) != (new.uid(), new.gid())
                && std::os::unix::fs::fchown(&f, Some(old.uid()), Some(old.gid())).is_err()
            {
                drop(f);
                let _ = std::fs::remove_file(&tmp);
                return Ok(false);
            }
        }
        let mut buf = Vec::new();
        for e in keep {
            serde_json::to_writer(&mut buf, e).map_err(|e| err(std::io::Error::other(e)))?;
            buf.push(b'\n');
            // Failed replays stay visible next to their entry.
            if let Some(r) = file.replays.get(&e.id) {
                serde_json::to_writer(&mut buf, r).map_err(|e| err(std::io::Error::other(e)))?;
                buf.push(b'\n');
            }
        }
        f.write_all(&buf).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent().and_then(|d| std::fs::File::open(d).ok()) {
        let _ = dir.sync_all();
    }
    drop(locked);
    Ok(true)
}

/// Opens the file for appending (created owner-only) under an exclusive lock. The daemon
/// appends while `dealsync replay` marks and compacts, in another process; compaction
/// replaces the file, so after taking the lock we check that the locked file is still the
/// one at `path`, and start over if it was replaced meanwhile.
fn open_locked(path: &Path) -> std::io::Result<std::fs::File> {
    loop {
        let mut opts = std::fs::OpenOptions::new();
        opts.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let f = opts.open(path)?;
        f.lock()?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let held = f.metadata()?;
            match std::fs::metadata(path) {
                Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => return Ok(f),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        #[cfg(not(unix))]
        return Ok(f);
    }
}

/// Reads every entry. Lines that are not valid entries are returned as warnings (line number
/// and reason) and skipped; replay marks are not entries and are left out.
pub fn read(path: &Path) -> Result<(Vec<Entry>, Vec<String>), DeadLetterError> {
    let f = read_all(path)?;
    Ok((f.entries, f.warnings))
}

#[cfg(test)]
mod tests {
    #[test]
    fn classes_read_and_write_as_their_labels_and_unknown_ones_survive() {
        for c in DeadClass::KNOWN {
            let text = serde_json::to_string(&c).unwrap();
            assert_eq!(text, format!("\"{}\"", c.label()));
            assert_eq!(serde_json::from_str::<DeadClass>(&text).unwrap(), c);
        }
        // A class a newer version wrote: kept, and written back as it was.
        let future: DeadClass = serde_json::from_str("\"quota_exceeded\"").unwrap();
        assert_eq!(future, DeadClass::Other("quota_exceeded".into()));
        assert_eq!(
            serde_json::to_string(&future).unwrap(),
            "\"quota_exceeded\""
        );
        assert!(DeadClass::UnmappedStage == "unmapped_stage");
    }

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
            class: DeadClass::UnmappedStage,
            attempts: 1,
            first_at: "2026-01-01T00:00:00.000Z".into(),
            last_at: "2026-01-01T00:00:00.000Z".into(),
            notification: None,
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

    fn mark_of(id: &str, ok: bool) -> Replay {
        Replay {
            replayed: id.into(),
            at: "2026-01-02T00:00:00.000Z".into(),
            ok,
            outcome: if ok {
                "synced".into()
            } else {
                "dead_letter: still broken".into()
            },
        }
    }

    #[test]
    fn compaction_drops_only_successfully_replayed_entries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dl.jsonl");
        append(
            &p,
            &[entry("fixed"), entry("still-open"), entry("failed-replay")],
        )
        .unwrap();
        mark(
            &p,
            &[mark_of("fixed", true), mark_of("failed-replay", false)],
        )
        .unwrap();
        assert!(
            !compact(&p, u64::MAX).unwrap(),
            "under the bound nothing happens"
        );
        assert!(compact(&p, 10).unwrap());
        let f = read_all(&p).unwrap();
        let ids: Vec<&str> = f.entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["still-open", "failed-replay"]);
        assert!(
            !f.replays["failed-replay"].ok,
            "a failed replay stays visible"
        );
        assert!(!f.replays.contains_key("fixed"));
        assert_eq!(f.open().count(), 2);
        // Appends after compaction land in the new file.
        append(&p, &[entry("later")]).unwrap();
        assert_eq!(read_all(&p).unwrap().entries.len(), 3);
        assert!(!p.with_extension("compacting").exists());
    }

    #[test]
    fn appends_from_many_threads_during_compaction_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dl.jsonl");
        append(&p, &[entry("old")]).unwrap();
        mark(&p, &[mark_of("old", true)]).unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let p = p.clone();
                s.spawn(move || {
                    for i in 0..50 {
                        append(&p, &[entry(&format!("t{t}-{i}"))]).unwrap();
                    }
                });
            }
            let p = p.clone();
            s.spawn(move || {
                for _ in 0..20 {
                    compact(&p, 0).unwrap();
                }
            });
        });
        let f = read_all(&p).unwrap();
        assert!(f.warnings.is_empty(), "{:?}", f.warnings);
        assert_eq!(f.entries.len(), 200, "every append survives compaction");
        assert!(!f.entries.iter().any(|e| e.id == "old"));
    }

    #[test]
    fn a_line_of_invalid_utf8_costs_only_that_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dl.jsonl");
        append(&p, &[entry("a")]).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"id\":\"\xff\xfe\"}\n")
            .unwrap();
        append(&p, &[entry("b")]).unwrap();
        let f = read_all(&p).unwrap();
        let ids: Vec<&str> = f.entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(f.warnings.len(), 1);
        assert!(f.warnings[0].contains("not UTF-8"), "{:?}", f.warnings);
    }
}
