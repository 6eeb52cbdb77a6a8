//! Typed queries. Each takes a connection and runs on the store thread (see `Store::call`).

use super::labels::{LinkState, ObjectState};
use std::collections::HashMap;

use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use serde::Serialize;

use super::StoreError;

pub use crate::time::now_ms;

/// Which portal of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Partner,
    Hubspot,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Partner => "partner",
            Side::Hubspot => "hubspot",
        }
    }
}

/// Why a job was queued. Jobs of one link coalesce, so a job carries a set ([`Reasons`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobReason {
    /// A deal poller saw the deal change.
    Poll,
    /// A webhook said the deal changed.
    Webhook,
    /// A note (a shared message) changed: the job reads the link's messages.
    Notes,
    /// A quote of the HubSpot deal changed: the job reads its quotes.
    Quotes,
    /// The reconciliation sweep: everything is read, and messages are judged afresh.
    Sweep,
    /// `dealsync replay`: like the sweep.
    Replay,
    /// An invitation made the link.
    Invitation,
    /// Queued by hand (the demo, tests) or under a label this version does not know.
    Manual,
}

impl JobReason {
    const ALL: [JobReason; 8] = [
        JobReason::Poll,
        JobReason::Webhook,
        JobReason::Notes,
        JobReason::Quotes,
        JobReason::Sweep,
        JobReason::Replay,
        JobReason::Invitation,
        JobReason::Manual,
    ];

    pub fn label(self) -> &'static str {
        match self {
            JobReason::Poll => "poll",
            JobReason::Webhook => "webhook",
            JobReason::Notes => "notes",
            JobReason::Quotes => "quotes",
            JobReason::Sweep => "sweep",
            JobReason::Replay => "replay",
            JobReason::Invitation => "invitation",
            JobReason::Manual => "manual",
        }
    }

    fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// The reasons a job was queued, stored as labels joined by `+` (`poll+notes`) in the order
/// they arrived; the store's enqueue merges a new reason into a waiting job's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reasons(u16);

impl Reasons {
    pub fn contains(self, r: JobReason) -> bool {
        self.0 & r.bit() != 0
    }

    /// Queued only because the deal itself changed: the job need not read messages or
    /// quotes (their changes queue jobs of their own, and the sweep covers the rest).
    pub fn deal_only(self) -> bool {
        let deal = JobReason::Poll.bit() | JobReason::Webhook.bit();
        self.0 != 0 && self.0 & !deal == 0
    }

    /// Reads a stored label; an unknown part counts as [`JobReason::Manual`].
    pub fn parse(s: &str) -> Reasons {
        let mut bits = 0;
        for part in s.split('+').filter(|p| !p.is_empty()) {
            let r = JobReason::ALL
                .into_iter()
                .find(|r| r.label() == part)
                .unwrap_or(JobReason::Manual);
            bits |= r.bit();
        }
        Reasons(bits)
    }

    pub fn label(self) -> String {
        let parts: Vec<&str> = JobReason::ALL
            .into_iter()
            .filter(|r| self.contains(*r))
            .map(JobReason::label)
            .collect();
        parts.join("+")
    }
}

impl From<JobReason> for Reasons {
    fn from(r: JobReason) -> Reasons {
        Reasons(r.bit())
    }
}

impl rusqlite::types::FromSql for Reasons {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        Ok(Reasons::parse(v.as_str()?))
    }
}

/// How a job ended, as `job_history` records it and `/metrics` counts it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum JobOutcome {
    /// Something was written to a portal.
    Synced,
    /// Both sides were already agreed.
    #[default]
    NoChange,
    /// The HubSpot deal closed or excluded the link.
    Link(LinkState),
    /// Nothing to do: the link is not active (`None`: it no longer exists).
    Skipped(Option<LinkState>),
    /// A deal looks deleted: the link is orphaned. The text names the deal.
    Orphaned(String),
    /// A deal looks deleted but the mass-deletion guard holds it. The text says why.
    Held(String),
    /// A failure to be tried again later.
    Retry,
    /// A failure given up on, in the dead-letter file.
    DeadLetter,
}

impl JobOutcome {
    /// The text `job_history` stores and `status` shows.
    pub fn text(&self) -> String {
        match self {
            JobOutcome::Synced => "synced".into(),
            JobOutcome::NoChange => "no change".into(),
            JobOutcome::Link(state) => format!("link {state}"),
            JobOutcome::Skipped(Some(state)) => format!("skipped: link {state}"),
            JobOutcome::Skipped(None) => "skipped: link gone".into(),
            JobOutcome::Orphaned(what) => format!("orphaned: {what}"),
            JobOutcome::Held(why) => format!("held: {why}"),
            JobOutcome::Retry => "retry".into(),
            JobOutcome::DeadLetter => "dead_letter".into(),
        }
    }

    /// The `/metrics` label: the kind, without the details.
    pub fn label(&self) -> String {
        match self {
            JobOutcome::Synced => "synced".into(),
            JobOutcome::NoChange => "no_change".into(),
            JobOutcome::Link(state) => format!("link_{state}"),
            JobOutcome::Skipped(_) => "skipped".into(),
            JobOutcome::Orphaned(_) => "orphaned".into(),
            JobOutcome::Held(_) => "held".into(),
            JobOutcome::Retry => "retry".into(),
            JobOutcome::DeadLetter => "dead_letter".into(),
        }
    }

    /// Reads a stored text back. A text this version does not write (an older version's) is
    /// kept whole as a `Held` detail: shown as it was, and not taken for a failure.
    pub fn parse(text: &str) -> JobOutcome {
        let (head, rest) = match text.split_once(": ") {
            Some((h, r)) => (h, Some(r)),
            None => (text, None),
        };
        match (head, rest) {
            ("synced", None) => JobOutcome::Synced,
            ("no change", None) => JobOutcome::NoChange,
            ("retry", None) => JobOutcome::Retry,
            ("dead_letter", None) => JobOutcome::DeadLetter,
            ("skipped", Some("link gone")) => JobOutcome::Skipped(None),
            ("skipped", Some(r)) => {
                JobOutcome::Skipped(r.strip_prefix("link ").and_then(LinkState::parse))
            }
            ("orphaned", Some(r)) => JobOutcome::Orphaned(r.to_owned()),
            ("held", Some(r)) => JobOutcome::Held(r.to_owned()),
            (h, None) => match h.strip_prefix("link ").and_then(LinkState::parse) {
                Some(state) => JobOutcome::Link(state),
                None => JobOutcome::Held(text.to_owned()),
            },
            _ => JobOutcome::Held(text.to_owned()),
        }
    }

    /// Whether the job did its work (a replay reports anything else as failed).
    pub fn succeeded(&self) -> bool {
        !matches!(self, JobOutcome::Retry | JobOutcome::DeadLetter)
    }
}

/// One link between a partner deal and a HubSpot deal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Link {
    pub id: i64,
    pub partner: String,
    pub partner_deal_id: String,
    pub hubspot_deal_id: String,
    pub deal_type: String,
    pub state: LinkState,
    /// When the link was made (ms): what was there before it is not news to anyone.
    pub created_at: i64,
}

pub const LINK_COLS: &str =
    "id, partner, partner_deal_id, hubspot_deal_id, deal_type, state, created_at";

pub fn link_row(r: &rusqlite::Row) -> rusqlite::Result<Link> {
    Ok(Link {
        id: r.get(0)?,
        partner: r.get(1)?,
        partner_deal_id: r.get(2)?,
        hubspot_deal_id: r.get(3)?,
        deal_type: r.get(4)?,
        state: r.get(5)?,
        created_at: r.get(6)?,
    })
}

/// Creates a link (state `active`) and returns it. An existing link for the same partner deal
/// is returned unchanged, so registration can be retried safely.
pub fn insert_link(
    c: &Connection,
    partner: &str,
    partner_deal_id: &str,
    hubspot_deal_id: &str,
    deal_type: &str,
) -> Result<Link, StoreError> {
    let now = now_ms();
    c.execute(
        "INSERT INTO links (partner, partner_deal_id, hubspot_deal_id, deal_type, state, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, 'active', ?5, ?5)
         ON CONFLICT (partner, partner_deal_id) DO NOTHING",
        params![partner, partner_deal_id, hubspot_deal_id, deal_type, now],
    )?;
    c.query_row(
        &format!("SELECT {LINK_COLS} FROM links WHERE partner = ?1 AND partner_deal_id = ?2"),
        params![partner, partner_deal_id],
        link_row,
    )
    .map_err(Into::into)
}

pub fn link(c: &Connection, id: i64) -> Result<Option<Link>, StoreError> {
    c.query_row(
        &format!("SELECT {LINK_COLS} FROM links WHERE id = ?1"),
        [id],
        link_row,
    )
    .optional()
    .map_err(Into::into)
}

pub fn links_by_ids(c: &Connection, ids: &[i64]) -> Result<Vec<Link>, StoreError> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(500) {
        let marks = vec!["?"; chunk.len()].join(",");
        let mut st = c.prepare(&format!(
            "SELECT {LINK_COLS} FROM links WHERE id IN ({marks})"
        ))?;
        let rows = st.query_map(params_from_iter(chunk.iter()), link_row)?;
        for r in rows {
            out.push(r?);
        }
    }
    Ok(out)
}

/// Active links whose deal on `side` (of `portal`, for partners) is one of `deal_ids`, with the
/// timestamp our own last write produced there.
pub fn links_for_deals(
    c: &Connection,
    side: Side,
    portal: &str,
    deal_ids: &[String],
) -> Result<Vec<(Link, Option<i64>)>, StoreError> {
    let mut out = Vec::new();
    // `+state` keeps SQLite off the low-selectivity `links_state` index: the deal-id indexes
    // find the handful of rows directly (a scan of every active link otherwise).
    for chunk in deal_ids.chunks(500) {
        let marks = vec!["?"; chunk.len()].join(",");
        let (sql, args): (String, Vec<&str>) = match side {
            Side::Partner => (
                format!(
                    "SELECT {LINK_COLS}, partner_written_ms FROM links
                     WHERE +state = 'active' AND partner = ? AND partner_deal_id IN ({marks})"
                ),
                std::iter::once(portal)
                    .chain(chunk.iter().map(String::as_str))
                    .collect(),
            ),
            Side::Hubspot => (
                format!(
                    "SELECT {LINK_COLS}, hubspot_written_ms FROM links
                     WHERE +state = 'active' AND hubspot_deal_id IN ({marks})"
                ),
                chunk.iter().map(String::as_str).collect(),
            ),
        };
        let mut st = c.prepare(&sql)?;
        let rows = st.query_map(params_from_iter(args), |r| Ok((link_row(r)?, r.get(7)?)))?;
        for r in rows {
            out.push(r?);
        }
    }
    Ok(out)
}

/// Active links after `after_id`, in id order (the reconciliation sweep walks them).
pub fn active_links_after(
    c: &Connection,
    after_id: i64,
    limit: usize,
) -> Result<Vec<Link>, StoreError> {
    let mut st = c.prepare(&format!(
        "SELECT {LINK_COLS} FROM links WHERE state = 'active' AND id > ?1 ORDER BY id LIMIT ?2"
    ))?;
    let rows = st.query_map(params![after_id, limit as i64], link_row)?;
    rows.collect::<Result<_, _>>().map_err(Into::into)
}

pub fn set_link_state(c: &Connection, link_id: i64, state: LinkState) -> Result<(), StoreError> {
    c.execute(
        "UPDATE links SET state = ?2, updated_at = ?3 WHERE id = ?1",
        params![link_id, state, now_ms()],
    )?;
    Ok(())
}

/// Shadows of several links: link id -> field -> value.
pub fn shadows(
    c: &Connection,
    link_ids: &[i64],
) -> Result<HashMap<i64, HashMap<String, Option<String>>>, StoreError> {
    let mut out: HashMap<i64, HashMap<String, Option<String>>> = HashMap::new();
    for chunk in link_ids.chunks(500) {
        let marks = vec!["?"; chunk.len()].join(",");
        let mut st = c.prepare(&format!(
            "SELECT link_id, field, value FROM shadows WHERE link_id IN ({marks})"
        ))?;
        let rows = st.query_map(params_from_iter(chunk.iter()), |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })?;
        for r in rows {
            let (l, f, v) = r?;
            out.entry(l).or_default().insert(f, v);
        }
    }
    Ok(out)
}

/// A conflict to record.
#[derive(Debug, Clone, Serialize)]
pub struct ConflictRecord {
    pub link_id: i64,
    pub field: String,
    pub partner_value: Option<String>,
    pub hubspot_value: Option<String>,
    pub winner: String,
    pub policy: String,
}

/// Everything a finished job commits, in one transaction.
#[derive(Debug, Default)]
pub struct JobCommit {
    pub link_id: i64,
    pub shadows: Vec<(String, Option<String>)>,
    pub conflicts: Vec<ConflictRecord>,
    pub partner_written_ms: Option<i64>,
    pub hubspot_written_ms: Option<i64>,
    pub new_state: Option<LinkState>,
    pub outcome: JobOutcome,
    /// Messages and files to record (upserted by kind and origin).
    pub objects: Vec<ObjectLink>,
    /// Work left for later (a reply waiting for its parent): the job stays queued, due at
    /// this time, with this error, and counts an attempt.
    pub retry: Option<(i64, String)>,
    /// Work left that the job could not do in one run: it runs again at once.
    pub more: bool,
    /// Notifications to send (JSON, see [`crate::notify::Notice`]), written with the outcome.
    pub notices: Vec<String>,
}

/// A message or file linked across one link's two portals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ObjectLink {
    /// `message` or `file`.
    pub kind: String,
    /// The original object, `portal:id`.
    pub origin: String,
    pub partner_object_id: Option<String>,
    pub hubspot_object_id: Option<String>,
    pub state: ObjectState,
    /// Why the state is what it is, for status.
    pub note: Option<String>,
    /// For a file: the origin of its message.
    pub parent: Option<String>,
    /// For a message: the hash of the body both sides last agreed on.
    pub shadow: Option<String>,
    pub partner_ms: Option<i64>,
    pub hubspot_ms: Option<i64>,
}

const OBJECT_COLS: &str = "link_id, kind, origin, partner_object_id, hubspot_object_id, state, note, parent, shadow, partner_ms, hubspot_ms";

/// The object links of several links: link id -> its messages and files.
/// Every link (any state) of each HubSpot deal: the ids, by HubSpot deal.
pub fn link_ids_of_hubspot_deals(
    c: &Connection,
    hubspot_deal_ids: &[String],
) -> Result<HashMap<String, Vec<i64>>, StoreError> {
    let mut out: HashMap<String, Vec<i64>> = HashMap::new();
    for chunk in hubspot_deal_ids.chunks(500) {
        let marks = vec!["?"; chunk.len()].join(",");
        let mut st = c.prepare(&format!(
            "SELECT hubspot_deal_id, id FROM links WHERE hubspot_deal_id IN ({marks})"
        ))?;
        let rows = st.query_map(params_from_iter(chunk.iter()), |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        for r in rows {
            let (h, id) = r?;
            out.entry(h).or_default().push(id);
        }
    }
    Ok(out)
}

pub fn object_links(
    c: &Connection,
    link_ids: &[i64],
) -> Result<HashMap<i64, Vec<ObjectLink>>, StoreError> {
    let mut out: HashMap<i64, Vec<ObjectLink>> = HashMap::new();
    for chunk in link_ids.chunks(500) {
        let marks = vec!["?"; chunk.len()].join(",");
        let mut st = c.prepare(&format!(
            "SELECT {OBJECT_COLS} FROM object_links WHERE link_id IN ({marks}) ORDER BY id"
        ))?;
        let rows = st.query_map(params_from_iter(chunk.iter()), |r| {
            Ok((
                r.get::<_, i64>(0)?,
                ObjectLink {
                    kind: r.get(1)?,
                    origin: r.get(2)?,
                    partner_object_id: r.get(3)?,
                    hubspot_object_id: r.get(4)?,
                    state: r.get(5)?,
                    note: r.get(6)?,
                    parent: r.get(7)?,
                    shadow: r.get(8)?,
                    partner_ms: r.get(9)?,
                    hubspot_ms: r.get(10)?,
                },
            ))
        })?;
        for r in rows {
            let (l, o) = r?;
            out.entry(l).or_default().push(o);
        }
    }
    Ok(out)
}

/// How many active links each HubSpot deal has (several: best partner wins).
pub fn active_links_per_hubspot_deal(
    c: &Connection,
    deal_ids: &[String],
) -> Result<HashMap<String, usize>, StoreError> {
    let mut out = HashMap::new();
    for chunk in deal_ids.chunks(500) {
        let marks = vec!["?"; chunk.len()].join(",");
        let mut st = c.prepare(&format!(
            "SELECT hubspot_deal_id, COUNT(*) FROM links
             WHERE hubspot_deal_id IN ({marks}) AND +state = 'active' GROUP BY hubspot_deal_id"
        ))?;
        let rows = st.query_map(params_from_iter(chunk.iter()), |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        for r in rows {
            let (id, n) = r?;
            out.insert(id, usize::try_from(n).unwrap_or(0));
        }
    }
    Ok(out)
}

/// For notes found by polling one portal: the `hs_lastmodifieddate` each had when dealsync
/// last synced it (our own write, or a change already carried over). A note found with exactly
/// that value needs no job.
pub fn object_seen_ms(
    c: &Connection,
    side: Side,
    portal: &str,
    ids: &[String],
) -> Result<HashMap<String, i64>, StoreError> {
    let (col, ms) = match side {
        Side::Partner => ("partner_object_id", "partner_ms"),
        Side::Hubspot => ("hubspot_object_id", "hubspot_ms"),
    };
    let mut out = HashMap::new();
    for chunk in ids.chunks(500) {
        let marks = vec!["?"; chunk.len()].join(",");
        let portal_filter = match side {
            Side::Partner => "AND l.partner = ?",
            Side::Hubspot => "",
        };
        let mut st = c.prepare(&format!(
            "SELECT o.{col}, o.{ms} FROM object_links o JOIN links l ON l.id = o.link_id
             WHERE o.kind = 'message' AND o.{col} IN ({marks}) AND o.{ms} IS NOT NULL {portal_filter}"
        ))?;
        let mut args: Vec<&str> = chunk.iter().map(String::as_str).collect();
        if side == Side::Partner {
            args.push(portal);
        }
        let rows = st.query_map(params_from_iter(args), |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        for r in rows {
            let (id, ms) = r?;
            out.insert(id, ms);
        }
    }
    Ok(out)
}

/// Records what a job's field writes produced — shadows, conflicts, the timestamps written —
/// without finishing the job (the message half comes next).
pub fn commit_fields(c: &mut Connection, commits: &[JobCommit]) -> Result<(), StoreError> {
    let tx = c.transaction()?;
    for j in commits {
        record_fields(&tx, j, now_ms())?;
    }
    tx.commit()?;
    Ok(())
}

fn record_fields(tx: &Connection, j: &JobCommit, now: i64) -> Result<(), StoreError> {
    let mut shadow = tx.prepare_cached(
        "INSERT INTO shadows (link_id, field, value, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (link_id, field) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
    )?;
    let mut conflict = tx.prepare_cached(
        "INSERT INTO conflicts (link_id, field, partner_value, hubspot_value, winner, policy, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let mut written = tx.prepare_cached(
        "UPDATE links SET partner_written_ms = COALESCE(?2, partner_written_ms),
                          hubspot_written_ms = COALESCE(?3, hubspot_written_ms),
                          state = COALESCE(?4, state), updated_at = ?5
         WHERE id = ?1",
    )?;
    if !j.notices.is_empty() {
        let mut notice = tx.prepare_cached(
            "INSERT INTO notifications (notice, created_at, due_at) VALUES (?1, ?2, ?2)",
        )?;
        for n in &j.notices {
            notice.execute(params![n, now])?;
        }
    }
    for (field, value) in &j.shadows {
        shadow.execute(params![j.link_id, field, value, now])?;
    }
    for k in &j.conflicts {
        conflict.execute(params![
            k.link_id,
            k.field,
            k.partner_value,
            k.hubspot_value,
            k.winner,
            k.policy,
            now
        ])?;
    }
    written.execute(params![
        j.link_id,
        j.partner_written_ms,
        j.hubspot_written_ms,
        j.new_state,
        now
    ])?;
    Ok(())
}

/// Upserts object links (by link, kind and origin).
/// Records file pairs on their own, outside a job's commit: copies a failed run made, so its
/// retry reuses them.
pub fn record_file_copies(
    c: &mut Connection,
    link_id: i64,
    files: &[ObjectLink],
) -> Result<(), StoreError> {
    let tx = c.transaction()?;
    record_objects(&tx, link_id, files, now_ms())?;
    tx.commit()?;
    Ok(())
}

fn record_objects(
    tx: &Connection,
    link_id: i64,
    objects: &[ObjectLink],
    now: i64,
) -> Result<(), StoreError> {
    let mut object = tx.prepare_cached(&format!(
        "INSERT INTO object_links ({OBJECT_COLS}, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12)
         ON CONFLICT (link_id, kind, origin) DO UPDATE SET
            partner_object_id = excluded.partner_object_id,
            hubspot_object_id = excluded.hubspot_object_id,
            state = excluded.state, note = excluded.note, parent = excluded.parent,
            shadow = excluded.shadow, partner_ms = excluded.partner_ms,
            hubspot_ms = excluded.hubspot_ms, updated_at = excluded.updated_at"
    ))?;
    for o in objects {
        object.execute(params![
            link_id,
            o.kind,
            o.origin,
            o.partner_object_id,
            o.hubspot_object_id,
            o.state,
            o.note,
            o.parent,
            o.shadow,
            o.partner_ms,
            o.hubspot_ms,
            now
        ])?;
    }
    Ok(())
}

/// Records, before copies are written, that they are being made (`creating`): after a crash
/// the next run knows a copy may exist even if it never reached the deal.
pub fn record_creating(c: &mut Connection, pairs: &[(i64, ObjectLink)]) -> Result<(), StoreError> {
    let tx = c.transaction()?;
    let now = now_ms();
    for (link_id, o) in pairs {
        record_objects(&tx, *link_id, std::slice::from_ref(o), now)?;
    }
    tx.commit()?;
    Ok(())
}

/// Commits the results of finished jobs and removes them from the queue (or re-queues those
/// that got a new change while running).
pub fn commit_jobs(c: &mut Connection, commits: &[JobCommit]) -> Result<(), StoreError> {
    let now = now_ms();
    let tx = c.transaction()?;
    {
        let mut done = tx.prepare_cached("DELETE FROM jobs WHERE link_id = ?1 AND rerun = 0")?;
        let mut again = tx.prepare_cached(
            "UPDATE jobs SET state = 'pending', rerun = 0, attempts = 0, due_at = ?2,
                             first_failed_at = NULL, last_error = NULL
             WHERE link_id = ?1",
        )?;
        let mut history = tx.prepare_cached(
            "INSERT INTO job_history (link_id, at, outcome, detail) VALUES (?1, ?2, ?3, NULL)",
        )?;
        let mut later = tx.prepare_cached(
            "UPDATE jobs SET state = 'pending', rerun = 0, attempts = attempts + 1, due_at = ?2,
                             last_error = ?3, first_failed_at = COALESCE(first_failed_at, ?4)
             WHERE link_id = ?1",
        )?;
        for j in commits {
            record_objects(&tx, j.link_id, &j.objects, now)?;
            record_fields(&tx, j, now)?;
            if let Some((due, error)) = &j.retry {
                later.execute(params![j.link_id, due, error, now])?;
            } else if j.more || done.execute([j.link_id])? == 0 {
                again.execute(params![j.link_id, now])?;
            }
            history.execute(params![j.link_id, now, j.outcome.text()])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// A job taken from the queue.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub link_id: i64,
    pub attempts: i64,
    pub reason: Reasons,
    pub enqueued_at: i64,
    pub first_failed_at: Option<i64>,
}

/// Enqueues (or coalesces into the existing) job for each link. A job already waiting out a
/// retry delay keeps it: a new change is no reason to hammer a failing portal.
pub fn enqueue(
    tx: &Connection,
    link_ids: &[i64],
    reason: JobReason,
    due_at: i64,
) -> Result<usize, StoreError> {
    let now = now_ms();
    let mut st = tx.prepare_cached(
        "INSERT INTO jobs (link_id, state, rerun, reason, enqueued_at, due_at) VALUES (?1, 'pending', 0, ?2, ?3, ?4)
         ON CONFLICT (link_id) DO UPDATE SET
            rerun = CASE WHEN jobs.state = 'running' THEN 1 ELSE jobs.rerun END,
            -- Why the job runs, every reason kept (`poll+notes`): a job queued only by deal
            -- changes skips the message and quote reads.
            reason = CASE WHEN instr('+' || jobs.reason || '+', '+' || excluded.reason || '+') > 0
                          THEN jobs.reason ELSE jobs.reason || '+' || excluded.reason END,
            due_at = CASE WHEN jobs.attempts > 0 THEN jobs.due_at ELSE MIN(jobs.due_at, excluded.due_at) END",
    )?;
    let mut n = 0;
    for id in link_ids {
        n += st.execute(params![id, reason.label(), now, due_at])?;
    }
    Ok(n)
}

pub fn enqueue_now(
    c: &mut Connection,
    link_ids: &[i64],
    reason: JobReason,
) -> Result<usize, StoreError> {
    let tx = c.transaction()?;
    let n = enqueue(&tx, link_ids, reason, now_ms())?;
    tx.commit()?;
    Ok(n)
}

/// A `RETURNING link_id, attempts, reason, enqueued_at, first_failed_at` row.
fn claimed_row(r: &rusqlite::Row) -> rusqlite::Result<ClaimedJob> {
    Ok(ClaimedJob {
        link_id: r.get(0)?,
        attempts: r.get(1)?,
        reason: r.get(2)?,
        enqueued_at: r.get(3)?,
        first_failed_at: r.get(4)?,
    })
}

/// Takes up to `limit` due jobs and marks them running.
pub fn claim_jobs(
    c: &mut Connection,
    limit: usize,
    now: i64,
) -> Result<Vec<ClaimedJob>, StoreError> {
    claim(c, limit, now, None)
}

/// Takes up to `limit` more due jobs queued by the sweep alone (first tries only), for a
/// batch that began with sweep jobs: a sweep batch as large as HubSpot's association batch
/// read reads each kind of association in one call instead of ten.
pub fn claim_sweep_jobs(
    c: &mut Connection,
    limit: usize,
    now: i64,
) -> Result<Vec<ClaimedJob>, StoreError> {
    claim(c, limit, now, Some(JobReason::Sweep))
}

/// Marks up to `limit` due jobs running, oldest due first; with `only`, jobs queued for that
/// reason alone and not yet tried.
fn claim(
    c: &mut Connection,
    limit: usize,
    now: i64,
    only: Option<JobReason>,
) -> Result<Vec<ClaimedJob>, StoreError> {
    let mut st = c.prepare_cached(
        "UPDATE jobs SET state = 'running'
         WHERE link_id IN (SELECT link_id FROM jobs WHERE state = 'pending' AND due_at <= ?1
                             AND (?3 IS NULL OR (reason = ?3 AND attempts = 0))
                           ORDER BY due_at, link_id LIMIT ?2)
         RETURNING link_id, attempts, reason, enqueued_at, first_failed_at",
    )?;
    let rows = st.query_map(
        params![now, limit as i64, only.map(JobReason::label)],
        claimed_row,
    )?;
    rows.collect::<Result<_, _>>().map_err(Into::into)
}

/// The earliest due time of a pending job, if any.
pub fn next_due(c: &Connection) -> Result<Option<i64>, StoreError> {
    c.query_row(
        "SELECT MIN(due_at) FROM jobs WHERE state = 'pending'",
        [],
        |r| r.get(0),
    )
    .map_err(Into::into)
}

/// [`next_due`] in the shape `Store::call` takes.
pub fn next_due_conn(c: &mut Connection) -> Result<Option<i64>, StoreError> {
    next_due(c)
}

/// Puts a failed job back with a delay.
pub fn retry_job(c: &Connection, link_id: i64, due_at: i64, error: &str) -> Result<(), StoreError> {
    let now = now_ms();
    c.execute(
        "UPDATE jobs SET state = 'pending', attempts = attempts + 1, due_at = ?2, last_error = ?3,
                         first_failed_at = COALESCE(first_failed_at, ?4)
         WHERE link_id = ?1",
        params![link_id, due_at, error, now],
    )?;
    c.execute(
        "INSERT INTO job_history (link_id, at, outcome, detail) VALUES (?1, ?2, ?4, ?3)",
        params![link_id, now, error, JobOutcome::Retry.text()],
    )?;
    Ok(())
}

/// Removes a job that went to the dead-letter file.
pub fn drop_job(c: &Connection, link_id: i64, error: &str) -> Result<(), StoreError> {
    c.execute("DELETE FROM jobs WHERE link_id = ?1", [link_id])?;
    c.execute(
        "INSERT INTO job_history (link_id, at, outcome, detail) VALUES (?1, ?2, ?4, ?3)",
        params![link_id, now_ms(), error, JobOutcome::DeadLetter.text()],
    )?;
    Ok(())
}

/// Jobs left `running` by a process that stopped are safe to run again: a job commits its
/// store changes only after its writes succeeded, and a re-run decides from current state.
pub fn recover_running_jobs(c: &Connection) -> Result<usize, StoreError> {
    Ok(c.execute(
        "UPDATE jobs SET state = 'pending' WHERE state = 'running'",
        [],
    )?)
}

pub fn cursor(c: &Connection, portal: &str) -> Result<Option<i64>, StoreError> {
    c.query_row(
        "SELECT value_ms FROM cursors WHERE portal = ?1",
        [portal],
        |r| r.get(0),
    )
    .optional()
    .map_err(Into::into)
}

/// Enqueues the links a poll page found and moves the portal's cursor, in one transaction, so
/// a crash never advances the cursor past work that was not queued.
pub fn poll_commit(
    c: &mut Connection,
    portal: &str,
    cursor_ms: i64,
    link_ids: &[i64],
) -> Result<(), StoreError> {
    poll_commit_for(c, portal, cursor_ms, link_ids, JobReason::Poll)
}

/// [`poll_commit`] with the jobs' reason (`poll` for deals, `notes`, `quotes`).
pub fn poll_commit_for(
    c: &mut Connection,
    portal: &str,
    cursor_ms: i64,
    link_ids: &[i64],
    reason: JobReason,
) -> Result<(), StoreError> {
    let now = now_ms();
    let tx = c.transaction()?;
    enqueue(&tx, link_ids, reason, now)?;
    tx.execute(
        "INSERT INTO cursors (portal, value_ms, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (portal) DO UPDATE SET value_ms = MAX(cursors.value_ms, excluded.value_ms), updated_at = excluded.updated_at",
        params![portal, cursor_ms, now],
    )?;
    tx.execute(
        "INSERT INTO portal_health (portal, last_poll_ok, changes_seen, last_poll_change)
         VALUES (?1, ?2, ?3, CASE WHEN ?3 > 0 THEN ?2 END)
         ON CONFLICT (portal) DO UPDATE SET last_poll_ok = excluded.last_poll_ok,
                                            changes_seen = portal_health.changes_seen + excluded.changes_seen,
                                            last_poll_change = COALESCE(excluded.last_poll_change, portal_health.last_poll_change)",
        params![portal, now, link_ids.len() as i64],
    )?;
    tx.commit()?;
    Ok(())
}

pub fn poll_failed(c: &Connection, portal: &str, error: &str) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO portal_health (portal, last_poll_error, last_poll_error_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (portal) DO UPDATE SET last_poll_error = excluded.last_poll_error,
                                            last_poll_error_at = excluded.last_poll_error_at",
        params![portal, error, now_ms()],
    )?;
    Ok(())
}

/// Queue depth and the age of the oldest pending job.
pub fn queue_stats(c: &Connection) -> Result<(i64, Option<i64>), StoreError> {
    c.query_row("SELECT COUNT(*), MIN(enqueued_at) FROM jobs", [], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .map_err(Into::into)
}

pub fn conflicts_for(c: &Connection, link_id: i64) -> Result<Vec<ConflictRecord>, StoreError> {
    let mut st = c.prepare(
        "SELECT link_id, field, partner_value, hubspot_value, winner, policy FROM conflicts WHERE link_id = ?1 ORDER BY id",
    )?;
    let rows = st.query_map([link_id], |r| {
        Ok(ConflictRecord {
            link_id: r.get(0)?,
            field: r.get(1)?,
            partner_value: r.get(2)?,
            hubspot_value: r.get(3)?,
            winner: r.get(4)?,
            policy: r.get(5)?,
        })
    })?;
    rows.collect::<Result<_, _>>().map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        for m in super::super::MIGRATIONS {
            c.execute_batch(m).unwrap();
        }
        c
    }

    #[test]
    fn job_outcomes_read_back_and_label_safely() {
        for o in [
            JobOutcome::Synced,
            JobOutcome::NoChange,
            JobOutcome::Link(LinkState::ClosedWon),
            JobOutcome::Skipped(Some(LinkState::Orphaned)),
            JobOutcome::Skipped(None),
            JobOutcome::Orphaned("HubSpot deal 1 is archived or deleted".into()),
            JobOutcome::Held("partner deal 2 looks deleted: guard".into()),
            JobOutcome::Retry,
            JobOutcome::DeadLetter,
        ] {
            assert_eq!(JobOutcome::parse(&o.text()), o, "{}", o.text());
            let label = o.label();
            assert!(
                label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{label}"
            );
        }
        assert_eq!(
            JobOutcome::Link(LinkState::Excluded).label(),
            "link_excluded"
        );
        assert_eq!(JobOutcome::NoChange.text(), "no change");
        assert!(!JobOutcome::Retry.succeeded() && JobOutcome::NoChange.succeeded());
    }

    #[test]
    fn job_reasons_read_back_as_a_set() {
        let r = Reasons::parse("notes+poll+notes");
        assert!(r.contains(JobReason::Notes) && r.contains(JobReason::Poll));
        assert!(!r.deal_only(), "a note change reads messages");
        assert_eq!(r.label(), "poll+notes");
        assert!(Reasons::parse("webhook").deal_only());
        assert!(
            !Reasons::parse("").deal_only(),
            "no reason is not a deal change"
        );
        // A label from another version (or a test's) is manual work, not an error.
        assert_eq!(Reasons::parse("demo"), JobReason::Manual.into());
    }

    #[test]
    fn link_states_round_trip_through_the_store_and_refuse_unknown_labels() {
        let c = mem();
        let l = insert_link(&c, "partner-a", "1", "2", "channel").unwrap();
        assert_eq!(l.state, LinkState::Active);
        for &state in LinkState::ALL {
            assert_eq!(LinkState::parse(state.label()), Some(state));
            set_link_state(&c, l.id, state).unwrap();
            assert_eq!(link(&c, l.id).unwrap().unwrap().state, state);
        }
        c.execute("UPDATE links SET state = 'limbo' WHERE id = ?1", [l.id])
            .unwrap();
        let e = link(&c, l.id).unwrap_err().to_string();
        assert!(e.contains("unknown link state \"limbo\""), "{e}");
    }

    #[test]
    fn the_outbox_retries_gives_up_requeues_and_forgets() {
        let mut c = mem();
        let job = JobCommit {
            link_id: 1,
            notices: vec!["{\"event\":\"x\"}".into()],
            ..Default::default()
        };
        commit_fields(&mut c, &[job]).unwrap();
        let due = due_notifications(&c, i64::MAX, 10).unwrap();
        assert_eq!(due.len(), 1);
        let mut n = due[0].clone();
        assert_eq!(
            (n.attempts, n.webhook_done, n.email_done),
            (0, false, false)
        );
        // The webhook went through, the email did not: retried later, webhook kept as done.
        n.webhook_done = true;
        notification_failed(&c, &n, 5_000, "smtp down", false).unwrap();
        assert!(due_notifications(&c, 4_999, 10).unwrap().is_empty());
        let again = &due_notifications(&c, 5_000, 10).unwrap()[0];
        assert_eq!((again.attempts, again.webhook_done), (1, true));
        assert_eq!(notification_counts(&c).unwrap().0, 1);
        // Given up: not due any more, counted dead; replay puts it back once.
        notification_failed(&c, again, 6_000, "smtp down", true).unwrap();
        assert!(due_notifications(&c, i64::MAX, 10).unwrap().is_empty());
        assert_eq!(notification_counts(&c).unwrap().1, 1);
        assert!(notification_requeue(&c, n.id).unwrap());
        assert!(!notification_requeue(&c, n.id).unwrap(), "only a dead one");
        let back = &due_notifications(&c, i64::MAX, 10).unwrap()[0];
        assert_eq!(back.attempts, 0);
        // Dead long enough: forgotten; sent: gone.
        notification_failed(&c, back, 6_000, "x", true).unwrap();
        assert_eq!(prune_dead_notifications(&c, 6_000).unwrap(), 0);
        assert_eq!(prune_dead_notifications(&c, 6_001).unwrap(), 1);
        assert_eq!(notification_counts(&c).unwrap(), (0, 0, None));
    }

    #[test]
    fn jobs_coalesce_and_rerun_after_a_change_during_the_run() {
        let mut c = mem();
        let l = insert_link(&c, "partner-a", "1", "9", "channel").unwrap();
        assert_eq!(
            insert_link(&c, "partner-a", "1", "9", "channel").unwrap(),
            l
        );
        enqueue_now(&mut c, &[l.id], JobReason::Poll).unwrap();
        enqueue_now(&mut c, &[l.id], JobReason::Webhook).unwrap();
        assert_eq!(queue_stats(&c).unwrap().0, 1, "two events, one job");
        let claimed = claim_jobs(&mut c, 10, now_ms() + 1).unwrap();
        assert_eq!(claimed.len(), 1);
        // The job carries both reasons, and is still only about the deal.
        let why = claimed[0].reason;
        assert!(why.contains(JobReason::Poll) && why.contains(JobReason::Webhook));
        assert!(why.deal_only() && !why.contains(JobReason::Notes));
        assert_eq!(why.label(), "poll+webhook");
        assert!(
            claim_jobs(&mut c, 10, now_ms() + 1).unwrap().is_empty(),
            "a running job is not claimed twice"
        );
        enqueue_now(&mut c, &[l.id], JobReason::Poll).unwrap();
        commit_jobs(
            &mut c,
            &[JobCommit {
                link_id: l.id,
                outcome: JobOutcome::Synced,
                ..Default::default()
            }],
        )
        .unwrap();
        assert_eq!(
            queue_stats(&c).unwrap().0,
            1,
            "the change during the run is kept"
        );
        assert_eq!(claim_jobs(&mut c, 10, now_ms() + 1).unwrap().len(), 1);
        commit_jobs(
            &mut c,
            &[JobCommit {
                link_id: l.id,
                outcome: JobOutcome::Synced,
                ..Default::default()
            }],
        )
        .unwrap();
        assert_eq!(queue_stats(&c).unwrap().0, 0);
    }

    #[test]
    fn retry_delay_is_kept_when_new_changes_arrive() {
        let mut c = mem();
        let l = insert_link(&c, "p", "1", "9", "channel").unwrap();
        enqueue_now(&mut c, &[l.id], JobReason::Poll).unwrap();
        claim_jobs(&mut c, 1, now_ms() + 1).unwrap();
        let later = now_ms() + 60_000;
        retry_job(&c, l.id, later, "HTTP 503").unwrap();
        enqueue_now(&mut c, &[l.id], JobReason::Poll).unwrap();
        assert!(claim_jobs(&mut c, 1, now_ms() + 1).unwrap().is_empty());
        assert_eq!(claim_jobs(&mut c, 1, later).unwrap()[0].attempts, 1);
    }

    #[test]
    fn cursor_never_moves_back_and_running_jobs_recover() {
        let mut c = mem();
        let l = insert_link(&c, "p", "1", "9", "channel").unwrap();
        poll_commit(&mut c, "p", 100, &[l.id]).unwrap();
        poll_commit(&mut c, "p", 50, &[]).unwrap();
        assert_eq!(cursor(&c, "p").unwrap(), Some(100));
        claim_jobs(&mut c, 1, now_ms() + 1).unwrap();
        assert_eq!(recover_running_jobs(&c).unwrap(), 1);
        assert_eq!(claim_jobs(&mut c, 1, now_ms() + 1).unwrap().len(), 1);
    }

    #[test]
    fn links_found_by_either_side() {
        let c = mem();
        let a = insert_link(&c, "partner-a", "1", "9", "best_partner_wins").unwrap();
        let b = insert_link(&c, "partner-b", "5", "9", "best_partner_wins").unwrap();
        let hs = links_for_deals(&c, Side::Hubspot, "hubspot", &["9".into()]).unwrap();
        assert_eq!(hs.len(), 2);
        let p = links_for_deals(&c, Side::Partner, "partner-b", &["5".into(), "1".into()]).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0.id, b.id);
        set_link_state(&c, a.id, LinkState::Orphaned).unwrap();
        assert_eq!(
            links_for_deals(&c, Side::Hubspot, "hubspot", &["9".into()])
                .unwrap()
                .len(),
            1
        );
    }
}

/// One webhook event as the inbox keeps it, with the decision the listener made about it.
#[derive(Debug, Clone)]
pub struct InboxEvent {
    pub event_id: String,
    pub subscription_type: String,
    pub object_id: Option<String>,
    pub occurred_at: Option<i64>,
    /// The deal the event is about, when it is about a deal.
    pub deal_id: Option<String>,
    /// For a property change: the synced field it touches and the value it carries. `None`
    /// for events that always need a job (creation, deletion, association changes).
    pub property: Option<(String, Option<String>)>,
    /// Whether the event can matter to sync at all (a deal event, or a change to a synced
    /// property).
    pub relevant: bool,
    /// For a note event (`object.*` on `0-46`): the note. A note dealsync already syncs queues
    /// its link (HubSpot sends no note associations, so a new note is left to the note poller).
    pub note_id: Option<String>,
}

/// `(field, value, shadows of one link)` → whether the value is the one already agreed.
pub type EchoCheck<'a> = dyn Fn(&str, Option<&str>, &HashMap<String, Option<String>>) -> bool + 'a;

/// What the inbox did with one delivery.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InboxOutcome {
    pub accepted: usize,
    pub duplicates: usize,
    pub queued: usize,
    pub echoes: usize,
    /// Deal events about deals no link knows (a registration or an invitation may be starting).
    pub unlinked: usize,
}

/// Accepts a delivery into the inbox in one transaction: drops events already accepted (same
/// portal and `eventId`), queues a job for every linked deal an event may have changed, and
/// records the portal's last webhook. `is_echo(link_id, field, value, shadows)` says whether a
/// property value is the one already agreed (our own write coming back, or old news).
pub fn inbox_accept(
    c: &mut Connection,
    portal: &str,
    side: Side,
    events: &[InboxEvent],
    is_echo: &EchoCheck<'_>,
) -> Result<InboxOutcome, StoreError> {
    let now = now_ms();
    let tx = c.transaction()?;
    let mut out = InboxOutcome::default();
    let mut fresh: Vec<&InboxEvent> = Vec::new();
    {
        let mut ins = tx.prepare_cached(
            "INSERT OR IGNORE INTO webhook_events
               (portal, event_id, received_at, subscription_type, object_id, occurred_at, outcome)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'ignored')",
        )?;
        for e in events {
            let n = ins.execute(params![
                portal,
                e.event_id,
                now,
                e.subscription_type,
                e.object_id,
                e.occurred_at
            ])?;
            if n == 0 {
                out.duplicates += 1;
            } else {
                out.accepted += 1;
                fresh.push(e);
            }
        }
    }
    let deal_ids: Vec<String> = {
        let mut v: Vec<String> = fresh
            .iter()
            .filter(|e| e.relevant)
            .filter_map(|e| e.deal_id.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let links = links_for_deals(&tx, side, portal, &deal_ids)?;
    let deal_of = |l: &Link| match side {
        Side::Partner => l.partner_deal_id.clone(),
        Side::Hubspot => l.hubspot_deal_id.clone(),
    };
    let link_ids: Vec<i64> = links.iter().map(|(l, _)| l.id).collect();
    let shadows = shadows(&tx, &link_ids)?;
    let empty = HashMap::new();
    let mut queue: Vec<i64> = Vec::new();
    {
        let mut mark = tx.prepare_cached(
            "UPDATE webhook_events SET outcome = ?3 WHERE portal = ?1 AND event_id = ?2",
        )?;
        for e in fresh.iter().filter(|e| e.relevant) {
            let Some(deal) = &e.deal_id else { continue };
            // Best partner wins: one HubSpot deal may have several links; each is judged.
            let mut outcome = "unlinked";
            for (l, _) in links.iter().filter(|(l, _)| &deal_of(l) == deal) {
                let echo = e.property.as_ref().is_some_and(|(field, value)| {
                    is_echo(
                        field,
                        value.as_deref(),
                        shadows.get(&l.id).unwrap_or(&empty),
                    )
                });
                if echo {
                    if outcome == "unlinked" {
                        outcome = "echo";
                    }
                } else {
                    outcome = "queued";
                    queue.push(l.id);
                }
            }
            if outcome == "echo" {
                out.echoes += 1;
            }
            if outcome == "unlinked" {
                out.unlinked += 1;
            }
            mark.execute(params![portal, e.event_id, outcome])?;
        }
    }
    // Note events: the links of known messages (a deletion can only be seen this way or by
    // the sweep: archived notes leave search and their associations). An event at exactly the
    // time our last sync recorded for the note is our own write.
    let mut note_queue: Vec<i64> = Vec::new();
    {
        let (col, ms_col) = match side {
            Side::Partner => ("partner_object_id", "partner_ms"),
            Side::Hubspot => ("hubspot_object_id", "hubspot_ms"),
        };
        let mut find = tx.prepare_cached(&format!(
            "SELECT o.link_id, o.{ms_col} FROM object_links o JOIN links l ON l.id = o.link_id
             WHERE o.kind = 'message' AND o.{col} = ?1 AND l.state = 'active'
               AND (?2 = 'hubspot' OR l.partner = ?3)"
        ))?;
        let mut mark = tx.prepare_cached(
            "UPDATE webhook_events SET outcome = ?3 WHERE portal = ?1 AND event_id = ?2",
        )?;
        for e in &fresh {
            let Some(note) = &e.note_id else { continue };
            let found: Vec<(i64, Option<i64>)> = find
                .query_map(params![note, side.as_str(), portal], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<Result<_, _>>()?;
            let mut outcome = "unlinked";
            for (link, ms) in found {
                let queue = &mut note_queue;
                if e.occurred_at.is_some()
                    && ms == e.occurred_at
                    && !e.subscription_type.ends_with("deletion")
                {
                    if outcome == "unlinked" {
                        outcome = "echo";
                        out.echoes += 1;
                    }
                } else {
                    outcome = "queued";
                    queue.push(link);
                }
            }
            mark.execute(params![portal, e.event_id, outcome])?;
        }
    }
    queue.sort_unstable();
    queue.dedup();
    out.queued = enqueue(&tx, &queue, JobReason::Webhook, now)?;
    note_queue.sort_unstable();
    note_queue.dedup();
    out.queued += enqueue(&tx, &note_queue, JobReason::Notes, now)?;
    tx.execute(
        "INSERT INTO portal_health (portal, last_webhook, webhook_events) VALUES (?1, ?2, ?3)
         ON CONFLICT (portal) DO UPDATE SET last_webhook = excluded.last_webhook,
                                            webhook_events = portal_health.webhook_events + excluded.webhook_events",
        params![portal, now, out.accepted as i64],
    )?;
    tx.commit()?;
    Ok(out)
}

/// Forgets inbox events older than `before_ms` (HubSpot stops retrying an event within a
/// day; the inbox keeps them longer so a late retry is still recognised).
pub fn inbox_prune(c: &Connection, before_ms: i64) -> Result<usize, StoreError> {
    Ok(c.execute(
        "DELETE FROM webhook_events WHERE received_at < ?1",
        [before_ms],
    )?)
}

/// Webhook health of one portal, for the poller's pace and for status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookHealth {
    pub last_webhook: Option<i64>,
    pub last_poll_change: Option<i64>,
}

pub fn webhook_health(c: &Connection, portal: &str) -> Result<WebhookHealth, StoreError> {
    Ok(c.query_row(
        "SELECT last_webhook, last_poll_change FROM portal_health WHERE portal = ?1",
        [portal],
        |r| {
            Ok(WebhookHealth {
                last_webhook: r.get(0)?,
                last_poll_change: r.get(1)?,
            })
        },
    )
    .optional()?
    .unwrap_or_default())
}

/// Claims jobs for specific links for a caller outside the daemon's workers (`dealsync
/// replay`): a link without a job gets a running one, a pending job is taken over, and a job
/// already running (a daemon's worker has it) is left alone — so one job never runs twice.
/// Returns the claimed jobs.
pub fn claim_links(
    c: &mut Connection,
    link_ids: &[i64],
    reason: JobReason,
) -> Result<Vec<ClaimedJob>, StoreError> {
    let now = now_ms();
    let tx = c.transaction()?;
    let mut out = Vec::new();
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO jobs (link_id, state, rerun, reason, enqueued_at, due_at)
             VALUES (?1, 'running', 0, ?2, ?3, ?3)
             ON CONFLICT (link_id) DO UPDATE SET state = 'running', reason = excluded.reason
                 WHERE jobs.state = 'pending'
             RETURNING link_id, attempts, reason, enqueued_at, first_failed_at",
        )?;
        for id in link_ids {
            let row = st
                .query_row(params![id, reason.label(), now], claimed_row)
                .optional()?;
            out.extend(row);
        }
    }
    tx.commit()?;
    Ok(out)
}

/// The newest job outcome recorded for a link at or after `since_ms`.
pub fn last_outcome(
    c: &Connection,
    link_id: i64,
    since_ms: i64,
) -> Result<Option<(JobOutcome, Option<String>)>, StoreError> {
    Ok(c.query_row(
        "SELECT outcome, detail FROM job_history WHERE link_id = ?1 AND at >= ?2
             ORDER BY id DESC LIMIT 1",
        params![link_id, since_ms],
        |r| Ok((JobOutcome::parse(&r.get::<_, String>(0)?), r.get(1)?)),
    )
    .optional()?)
}

/// The mass-deletion guard's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeletionLimits {
    /// Share of a portal's active links that may look deleted within `window_ms`.
    pub share: f64,
    /// Deletions always allowed within the window, however few links a portal has.
    pub min: i64,
    pub window_ms: i64,
}

impl Default for DeletionLimits {
    fn default() -> Self {
        DeletionLimits {
            share: 0.2,
            min: 10,
            window_ms: 15 * 60 * 1000,
        }
    }
}

/// Asks the guard whether `link_ids` (whose deals look deleted in `portal`) may be acted on.
/// Allowed ones are recorded; when they would push the portal past its limit the guard trips
/// instead (nothing of this batch is allowed) and stays tripped until [`resume_portal`].
/// `partner` is `None` for HubSpot's portal (all links count), else the partner's name.
pub fn guard_deletions(
    c: &mut Connection,
    portal: &str,
    partner: Option<&str>,
    link_ids: &[i64],
    limits: DeletionLimits,
) -> Result<bool, StoreError> {
    let now = now_ms();
    let tx = c.transaction()?;
    let guard: Option<Option<i64>> = tx
        .query_row(
            "SELECT released_at FROM deletion_guards WHERE portal = ?1",
            [portal],
            |r| r.get(0),
        )
        .optional()?;
    match guard {
        // Tripped and not released: hold.
        Some(None) => return Ok(false),
        // Released by an operator within the window: let deletions through.
        Some(Some(at)) if now - at < limits.window_ms => {
            record_deletions(&tx, portal, link_ids, now)?;
            tx.commit()?;
            return Ok(true);
        }
        // Released long enough ago: the guard is armed again.
        Some(Some(_)) => {
            tx.execute("DELETE FROM deletion_guards WHERE portal = ?1", [portal])?;
        }
        None => {}
    }
    let active: i64 = match partner {
        Some(p) => tx.query_row(
            "SELECT COUNT(*) FROM links WHERE state = 'active' AND partner = ?1",
            [p],
            |r| r.get(0),
        )?,
        None => tx.query_row(
            "SELECT COUNT(*) FROM links WHERE state = 'active'",
            [],
            |r| r.get(0),
        )?,
    };
    let recent: i64 = tx.query_row(
        "SELECT COUNT(*) FROM deletion_events WHERE portal = ?1 AND at > ?2",
        params![portal, now - limits.window_ms],
        |r| r.get(0),
    )?;
    let limit = limits.min.max((limits.share * active as f64).ceil() as i64);
    let n = link_ids.len() as i64;
    if recent + n > limit {
        tx.execute(
            "INSERT INTO deletion_guards (portal, tripped_at, detail) VALUES (?1, ?2, ?3)",
            params![
                portal,
                now,
                format!(
                    "{} of {active} active links looked deleted within {} min (limit {limit}); check the portal and its token, then run `dealsync resume --portal {portal}`",
                    recent + n,
                    limits.window_ms / 60_000
                )
            ],
        )?;
        tx.commit()?;
        return Ok(false);
    }
    record_deletions(&tx, portal, link_ids, now)?;
    tx.execute(
        "DELETE FROM deletion_events WHERE at < ?1",
        [now - limits.window_ms],
    )?;
    tx.commit()?;
    Ok(true)
}

fn record_deletions(
    tx: &Connection,
    portal: &str,
    link_ids: &[i64],
    now: i64,
) -> Result<(), StoreError> {
    let mut st =
        tx.prepare_cached("INSERT INTO deletion_events (portal, link_id, at) VALUES (?1, ?2, ?3)")?;
    for id in link_ids {
        st.execute(params![portal, id, now])?;
    }
    Ok(())
}

/// Releases a tripped guard: deletions in that portal go through for one window, then the
/// guard is armed again. Returns whether the guard was holding the portal.
pub fn resume_portal(c: &mut Connection, portal: &str) -> Result<bool, StoreError> {
    let tx = c.transaction()?;
    let n = tx.execute(
        "UPDATE deletion_guards SET released_at = ?2 WHERE portal = ?1 AND released_at IS NULL",
        params![portal, now_ms()],
    )?;
    tx.execute("DELETE FROM deletion_events WHERE portal = ?1", [portal])?;
    tx.commit()?;
    Ok(n > 0)
}

/// Guards holding a portal now: (portal, tripped_at, detail).
pub fn deletion_guards(c: &Connection) -> Result<Vec<(String, i64, String)>, StoreError> {
    let mut st = c.prepare(
        "SELECT portal, tripped_at, detail FROM deletion_guards WHERE released_at IS NULL ORDER BY portal",
    )?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Records (or, with `missing` empty, forgets) an incomplete invitation on a HubSpot deal.
pub fn record_invitation(
    c: &Connection,
    hubspot_deal_id: &str,
    partner: Option<&str>,
    missing: &[String],
) -> Result<(), StoreError> {
    if missing.is_empty() {
        c.execute(
            "DELETE FROM invitations WHERE hubspot_deal_id = ?1",
            [hubspot_deal_id],
        )?;
    } else {
        c.execute(
            "INSERT INTO invitations (hubspot_deal_id, partner, missing, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (hubspot_deal_id) DO UPDATE SET partner = excluded.partner,
                missing = excluded.missing, updated_at = excluded.updated_at",
            params![hubspot_deal_id, partner, missing.join(", "), now_ms()],
        )?;
    }
    Ok(())
}

/// Records why a registration started in the partner's CRM was refused, or (with `None`)
/// forgets it once the deal registers.
pub fn record_refusal(
    c: &Connection,
    partner: &str,
    partner_deal_id: &str,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    match reason {
        None => c.execute(
            "DELETE FROM refusals WHERE partner = ?1 AND partner_deal_id = ?2",
            params![partner, partner_deal_id],
        )?,
        Some(r) => c.execute(
            "INSERT INTO refusals (partner, partner_deal_id, reason, at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (partner, partner_deal_id) DO UPDATE SET reason = excluded.reason, at = excluded.at",
            params![partner, partner_deal_id, r, now_ms()],
        )?,
    };
    Ok(())
}

/// A notification waiting in the outbox.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub id: i64,
    pub notice: String,
    pub created_at: i64,
    pub attempts: i64,
    pub webhook_done: bool,
    pub email_done: bool,
}

/// Pending notifications due by `now`, oldest first.
pub fn due_notifications(
    c: &Connection,
    now: i64,
    limit: usize,
) -> Result<Vec<Outgoing>, StoreError> {
    let mut st = c.prepare_cached(
        "SELECT id, notice, created_at, attempts, webhook_done, email_done FROM notifications
         WHERE state = 'pending' AND due_at <= ?1 ORDER BY due_at, id LIMIT ?2",
    )?;
    let rows = st.query_map(params![now, limit as i64], |r| {
        Ok(Outgoing {
            id: r.get(0)?,
            notice: r.get(1)?,
            created_at: r.get(2)?,
            attempts: r.get(3)?,
            webhook_done: r.get(4)?,
            email_done: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every channel took it: the notification is done.
pub fn notification_sent(c: &Connection, id: i64) -> Result<(), StoreError> {
    c.execute("DELETE FROM notifications WHERE id = ?1", [id])?;
    Ok(())
}

/// A failed attempt: what went through is kept, the rest is tried again at `due`, or never
/// again when `dead`.
pub fn notification_failed(
    c: &Connection,
    n: &Outgoing,
    due: i64,
    error: &str,
    dead: bool,
) -> Result<(), StoreError> {
    c.execute(
        "UPDATE notifications SET attempts = attempts + 1, due_at = ?2, last_error = ?3,
                webhook_done = ?4, email_done = ?5, state = ?6 WHERE id = ?1",
        params![
            n.id,
            due,
            error,
            n.webhook_done,
            n.email_done,
            if dead { "dead" } else { "pending" }
        ],
    )?;
    Ok(())
}

/// Puts a dead notification back in the queue (`dealsync replay`); false when it is not
/// there or not dead.
pub fn notification_requeue(c: &Connection, id: i64) -> Result<bool, StoreError> {
    let n = c.execute(
        "UPDATE notifications SET state = 'pending', attempts = 0, due_at = ?2
         WHERE id = ?1 AND state = 'dead'",
        params![id, now_ms()],
    )?;
    Ok(n == 1)
}

/// Forgets dead notifications given up before `before` (ms); they stay in the dead-letter
/// file, but `dealsync replay` can no longer send them. Returns how many went.
pub fn prune_dead_notifications(c: &Connection, before: i64) -> Result<usize, StoreError> {
    Ok(c.execute(
        "DELETE FROM notifications WHERE state = 'dead' AND due_at < ?1",
        [before],
    )?)
}

/// Notifications by state (`pending`, `dead`), with the oldest pending one's creation time.
pub fn notification_counts(c: &Connection) -> Result<(i64, i64, Option<i64>), StoreError> {
    Ok(c.query_row(
        "SELECT COALESCE(SUM(state = 'pending'), 0), COALESCE(SUM(state = 'dead'), 0),
                MIN(CASE WHEN state = 'pending' THEN created_at END)
         FROM notifications",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?)
}
