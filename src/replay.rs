//! `dealsync replay`: re-runs dead-lettered jobs through the engine and marks each entry with
//! its outcome.
//!
//! Replay decides from current state like any job — the dead letter only says which link to
//! look at — so replaying an entry whose cause was fixed (a stage map, a property) syncs the
//! link, and replaying one that still fails records why, again. It runs beside a live daemon:
//! it opens the store without recovering the daemon's running jobs, and claims each link's job
//! atomically ([`store::claim_links`]); a link whose job a daemon worker holds right now is
//! skipped with that reason, so no job runs twice.

use std::collections::BTreeMap;
use std::path::Path;

use crate::deadletter::{self, DeadLetterFile, Entry, Replay};
use crate::engine::{Engine, EngineError};
use crate::store::{self, StoreError};

/// How often, and how far apart, replay tries again to claim a link a daemon worker holds.
const HELD_RETRIES: usize = 10;
const HELD_PAUSE: std::time::Duration = std::time::Duration::from_millis(300);

/// Which entries to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every open entry (not yet replayed successfully).
    All,
    /// These entries, open or not.
    Ids(Vec<String>),
    /// Open entries of one class.
    Class(crate::deadletter::DeadClass),
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    DeadLetter(#[from] deadletter::DeadLetterError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("no dead-letter entry has id {0}; `dealsync status` lists them")]
    UnknownId(String),
}

/// The entries a selection names, in file order.
pub fn select(file: &DeadLetterFile, sel: &Selection) -> Result<Vec<Entry>, ReplayError> {
    match sel {
        Selection::All => Ok(file.open().cloned().collect()),
        Selection::Class(c) => Ok(file.open().filter(|e| e.class == *c).cloned().collect()),
        Selection::Ids(ids) => ids
            .iter()
            .map(|id| {
                file.entries
                    .iter()
                    .find(|e| &e.id == id)
                    .cloned()
                    .ok_or_else(|| ReplayError::UnknownId(id.clone()))
            })
            .collect(),
    }
}

/// What happened to one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub entry_id: String,
    pub link_id: i64,
    pub ok: bool,
    pub outcome: String,
}

/// Whether a job outcome (from the job history) means the link is in step again.
/// Replays `entries` (one job per link, several entries of one link share it), marks every
/// entry in the dead-letter file, and returns the outcomes. `progress(done, total)` is called
/// after each batch.
pub async fn replay(
    engine: &Engine,
    dead_letter_path: &Path,
    entries: &[Entry],
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<Outcome>, ReplayError> {
    let mut by_link: BTreeMap<i64, Vec<&Entry>> = BTreeMap::new();
    // A notification is not a job: replaying it puts it back in the outbox.
    let mut notified = Vec::new();
    for e in entries {
        match e.notification {
            Some(id) => {
                let requeued = engine
                    .store()
                    .call(move |c| store::notification_requeue(c, id))
                    .await?;
                notified.push((e, requeued));
            }
            None => by_link.entry(e.link_id).or_default().push(e),
        }
    }
    let links: Vec<i64> = by_link.keys().copied().collect();
    let total = links.len();
    let mut results: BTreeMap<i64, (bool, String)> = BTreeMap::new();
    let mut done = 0;
    for chunk in links.chunks(engine.settings().batch_size.max(1)) {
        let started = store::now_ms();
        // A daemon worker holding a link finishes within seconds; wait for it a little
        // rather than give up at once.
        let mut claimed = Vec::new();
        for attempt in 0..=HELD_RETRIES {
            let ids: Vec<i64> = chunk
                .iter()
                .copied()
                .filter(|id| !claimed.iter().any(|j: &store::ClaimedJob| j.link_id == *id))
                .collect();
            if ids.is_empty() {
                break;
            }
            if attempt > 0 {
                tokio::time::sleep(HELD_PAUSE).await;
            }
            claimed.extend(
                engine
                    .store()
                    .call(move |c| store::claim_links(c, &ids, store::JobReason::Replay))
                    .await?,
            );
        }
        for id in chunk {
            if !claimed.iter().any(|j| j.link_id == *id) {
                results.insert(
                    *id,
                    (
                        false,
                        "skipped: a running daemon is working on this link right now (or a stopped one left it running; it resumes on the next start); replay again later".into(),
                    ),
                );
            }
        }
        let claimed_ids: Vec<i64> = claimed.iter().map(|j| j.link_id).collect();
        if !claimed.is_empty() {
            engine.run_batch(claimed).await?;
        }
        for id in claimed_ids {
            let o = engine
                .store()
                .call(move |c| store::last_outcome(c, id, started))
                .await?;
            let r = match o {
                Some((outcome, detail)) => {
                    let ok = outcome.succeeded();
                    let text = match detail {
                        Some(d) if !ok => format!("{}: {d}", outcome.text()),
                        _ => outcome.text(),
                    };
                    (ok, text)
                }
                None => (false, "no outcome recorded".into()),
            };
            results.insert(id, r);
        }
        done += chunk.len();
        progress(done, total);
    }
    let now = crate::time::iso(store::now_ms());
    let mut marks = Vec::new();
    let mut out = Vec::new();
    for (e, ok) in notified {
        let text = if ok {
            "notification queued again; the daemon sends it (with [notifications] configured)"
        } else {
            "the notification is no longer in the store (sent or replayed already, or given up more than 30 days ago)"
        };
        marks.push(Replay {
            replayed: e.id.clone(),
            at: now.clone(),
            ok,
            outcome: text.into(),
        });
        out.push(Outcome {
            entry_id: e.id.clone(),
            link_id: e.link_id,
            ok,
            outcome: text.into(),
        });
    }
    for (link, es) in by_link {
        let (ok, text) = results
            .get(&link)
            .cloned()
            .unwrap_or((false, "not run".into()));
        for e in es {
            marks.push(Replay {
                replayed: e.id.clone(),
                at: now.clone(),
                ok,
                outcome: text.clone(),
            });
            out.push(Outcome {
                entry_id: e.id.clone(),
                link_id: link,
                ok,
                outcome: text.clone(),
            });
        }
    }
    let path = dead_letter_path.to_owned();
    tokio::task::spawn_blocking(move || deadletter::mark(&path, &marks))
        .await
        .map_err(|e| StoreError::Corrupt(format!("dead-letter writer failed: {e}")))??;
    Ok(out)
}
