//! `dealsync status`: what the daemon is doing and what needs an operator, read from the store
//! (read-only, so it works while the daemon runs and without it) and the dead-letter file.
//!
//! The JSON form (`--json`) is a stable interface: fields are only ever added, and
//! `format` is bumped if one ever changes meaning. Times are ISO-8601 UTC strings; ages are
//! seconds. Nothing here carries a secret or a note body: shadows hold deal field values only,
//! dead letters hold ids and error texts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::deadletter;
use crate::ingest::poll::webhooks_healthy;
use crate::store::{self, StoreError, WebhookHealth};

/// Version of the JSON shape.
pub const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("no store at {0}: has the daemon run yet with this config? (store.path)")]
    NoStore(PathBuf),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("store query failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    DeadLetters(#[from] deadletter::DeadLetterError),
    #[error("the store at {path} is at schema version {found}; this dealsync expects {want}: start the daemon once (it migrates on start), or use the matching dealsync version")]
    Schema {
        path: PathBuf,
        found: i64,
        want: i64,
    },
}

/// The whole picture.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub format: u32,
    pub generated_at: String,
    pub links: Links,
    pub queue: Queue,
    pub portals: Vec<PortalStatus>,
    pub dead_letters: DeadLetters,
    pub conflicts: Conflicts,
    pub messages: Messages,
    /// Partners added on HubSpot's side whose invitation is incomplete: what is missing.
    pub invitations_waiting: Vec<InvitationStatus>,
    /// The notification outbox.
    pub notifications: Notifications,
    /// Registrations started in a partner's CRM and refused, newest first, with the reason.
    pub registrations_refused: Vec<RefusalStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RefusalStatus {
    pub partner: String,
    pub partner_deal_id: String,
    pub reason: String,
    pub at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Notifications {
    /// Waiting to be sent (or retried).
    pub pending: i64,
    /// Gave up on; each is in the dead-letter file as class `notification`.
    pub dead: i64,
    pub oldest_pending: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InvitationStatus {
    pub hubspot_deal_id: String,
    pub partner: Option<String>,
    pub missing: String,
}

/// Shared messages and their files, by state.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Messages {
    pub by_state: BTreeMap<String, i64>,
    pub files_by_state: BTreeMap<String, i64>,
    /// HubSpot-side messages on deals with several partners that name none (SPEC §1.2):
    /// `(HubSpot deal, note id)`, newest first, at most 20.
    pub needing_target: Vec<NeedsTarget>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NeedsTarget {
    pub hubspot_deal_id: String,
    pub note_id: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Links {
    pub total: i64,
    pub by_state: BTreeMap<String, i64>,
    pub by_deal_type: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Queue {
    pub depth: i64,
    pub running: i64,
    /// Jobs waiting to retry after a transient failure.
    pub retrying: i64,
    pub oldest_age_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PortalStatus {
    pub name: String,
    pub cursor: Option<String>,
    pub last_poll_ok: Option<String>,
    pub last_poll_error: Option<String>,
    pub last_poll_error_at: Option<String>,
    pub last_webhook: Option<String>,
    /// `healthy`, `quiet` (polling found changes webhooks did not announce) or `none`.
    pub webhooks: String,
    pub changes_seen: i64,
    pub webhook_events: i64,
    /// Set when the mass-deletion guard holds this portal (why, and what to do).
    pub deletion_guard: Option<String>,
    /// `oauth` (installed), `auth_revoked` (HubSpot refused its install: work waits), or
    /// absent for a static token.
    pub auth: Option<String>,
    /// The HubSpot portal id an OAuth install is bound to.
    pub hub_id: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct DeadLetters {
    pub path: String,
    pub total: usize,
    /// Entries not (successfully) replayed yet.
    pub open: usize,
    pub by_class: Vec<DeadLetterClass>,
    /// Unreadable lines (a crash mid-write leaves one); never fatal.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterClass {
    pub class: String,
    pub open: usize,
    pub newest: deadletter::Entry,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Conflicts {
    pub total: i64,
    pub recent: Vec<ConflictStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConflictStatus {
    pub link_id: i64,
    pub partner: String,
    pub partner_deal_id: String,
    pub hubspot_deal_id: String,
    pub field: String,
    pub winner: String,
    pub policy: String,
    pub at: String,
}

/// One deal's whole picture (`--deal ID`, a partner or HubSpot deal id).
#[derive(Debug, Clone, Serialize)]
pub struct DealStatus {
    pub format: u32,
    pub deal_id: String,
    pub links: Vec<LinkStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LinkStatus {
    pub link_id: i64,
    pub partner: String,
    pub partner_deal_id: String,
    pub hubspot_deal_id: String,
    pub deal_type: String,
    pub state: crate::store::LinkState,
    pub fields: Vec<FieldStatus>,
    pub job: Option<JobStatus>,
    pub history: Vec<HistoryEntry>,
    pub conflicts: Vec<ConflictStatus>,
    pub object_links: Vec<ObjectLinkStatus>,
    pub dead_letters: Vec<deadletter::Entry>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FieldStatus {
    pub field: String,
    /// The last value both sides agreed on (`null` = blank, or never agreed: see `agreed_at`).
    pub shadow: Option<String>,
    pub agreed_at: Option<String>,
    /// Current values, when the caller read the portals (see [`DealStatus`] in `cli`).
    pub partner_value: Option<String>,
    pub hubspot_value: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    pub state: String,
    pub reason: String,
    pub attempts: i64,
    pub due_at: String,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    pub at: String,
    pub outcome: String,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ObjectLinkStatus {
    pub kind: String,
    pub origin: String,
    pub partner_object_id: Option<String>,
    pub hubspot_object_id: Option<String>,
    pub state: String,
    /// Why the state is what it is (a skipped file, a message needing a target, …).
    pub note: Option<String>,
    /// For a file: the origin of the message it belongs to.
    pub parent: Option<String>,
}

use crate::time::iso;

/// Opens the store read-only after checking its schema version.
pub fn open(path: &Path) -> Result<Connection, StatusError> {
    if !path.exists() {
        return Err(StatusError::NoStore(path.to_owned()));
    }
    let c = store::open_read_only(path)?;
    let found: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let want = store::SCHEMA_VERSION;
    if found != want {
        return Err(StatusError::Schema {
            path: path.to_owned(),
            found,
            want,
        });
    }
    Ok(c)
}

fn counts(c: &Connection, sql: &str) -> Result<BTreeMap<String, i64>, StatusError> {
    let mut st = c.prepare(sql)?;
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Gathers the overview. `quiet_after` is the configured webhook quiet threshold (webhook
/// health reads `none` for portals that never sent one).
pub fn overview(
    c: &Connection,
    dead_letter_path: &Path,
    quiet_after: Duration,
    now_ms: i64,
) -> Result<Status, StatusError> {
    let by_state = counts(c, "SELECT state, COUNT(*) FROM links GROUP BY state")?;
    let by_deal_type = counts(
        c,
        "SELECT deal_type, COUNT(*) FROM links GROUP BY deal_type",
    )?;
    let links = Links {
        total: by_state.values().sum(),
        by_state,
        by_deal_type,
    };
    let messages = {
        // One row per HubSpot message, however many links recorded it.
        let mut st = c.prepare(
            "SELECT DISTINCT l.hubspot_deal_id, o.hubspot_object_id FROM object_links o
             JOIN links l ON l.id = o.link_id
             WHERE o.kind = 'message' AND o.state = 'needs_target' ORDER BY o.updated_at DESC LIMIT 20",
        )?;
        let needing_target = st
            .query_map([], |r| {
                Ok(NeedsTarget {
                    hubspot_deal_id: r.get(0)?,
                    note_id: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Messages {
            by_state: counts(
                c,
                "SELECT state, COUNT(*) FROM object_links WHERE kind = 'message' GROUP BY state",
            )?,
            files_by_state: counts(
                c,
                "SELECT state, COUNT(*) FROM object_links WHERE kind = 'file' GROUP BY state",
            )?,
            needing_target,
        }
    };
    let queue = c.query_row(
        "SELECT COUNT(*), COALESCE(SUM(state = 'running'), 0), COALESCE(SUM(attempts > 0 AND state = 'pending'), 0), MIN(enqueued_at) FROM jobs",
        [],
        |r| {
            Ok(Queue {
                depth: r.get(0)?,
                running: r.get(1)?,
                retrying: r.get(2)?,
                oldest_age_s: r
                    .get::<_, Option<i64>>(3)?
                    .map(|t| ((now_ms - t).max(0) as f64) / 1000.0),
            })
        },
    )?;
    let mut portals = Vec::new();
    {
        let mut st = c.prepare(
            "SELECT h.portal, c.value_ms, h.last_poll_ok, h.last_poll_error, h.last_poll_error_at,
                    h.last_webhook, h.last_poll_change, h.changes_seen, h.webhook_events
             FROM portal_health h LEFT JOIN cursors c ON c.portal = h.portal
             UNION
             SELECT c.portal, c.value_ms, NULL, NULL, NULL, NULL, NULL, 0, 0
             FROM cursors c WHERE c.portal NOT IN (SELECT portal FROM portal_health)
             ORDER BY 1",
        )?;
        let rows = st.query_map([], |r| {
            let health = WebhookHealth {
                last_webhook: r.get(5)?,
                last_poll_change: r.get(6)?,
            };
            Ok(PortalStatus {
                name: r.get(0)?,
                cursor: r.get::<_, Option<i64>>(1)?.map(iso),
                last_poll_ok: r.get::<_, Option<i64>>(2)?.map(iso),
                last_poll_error: r.get(3)?,
                last_poll_error_at: r.get::<_, Option<i64>>(4)?.map(iso),
                last_webhook: health.last_webhook.map(iso),
                webhooks: if health.last_webhook.is_none() {
                    "none".into()
                } else if webhooks_healthy(&health, quiet_after) {
                    "healthy".into()
                } else {
                    "quiet".into()
                },
                changes_seen: r.get(7)?,
                webhook_events: r.get(8)?,
                deletion_guard: None,
                auth: None,
                hub_id: None,
            })
        })?;
        for r in rows {
            portals.push(r?);
        }
    }
    for (portal, at, detail) in store::deletion_guards(c)? {
        let text = format!("tripped {}: {detail}", iso(at));
        match portals.iter_mut().find(|p| p.name == portal) {
            Some(p) => p.deletion_guard = Some(text),
            None => portals.push(PortalStatus {
                name: portal,
                cursor: None,
                last_poll_ok: None,
                last_poll_error: None,
                last_poll_error_at: None,
                last_webhook: None,
                webhooks: "none".into(),
                changes_seen: 0,
                webhook_events: 0,
                deletion_guard: Some(text),
                auth: None,
                hub_id: None,
            }),
        }
    }
    for i in store::installs(c)? {
        let auth = match i.state {
            store::InstallState::Active => "oauth",
            store::InstallState::Revoked => "auth_revoked",
        };
        if let Some(p) = portals.iter_mut().find(|p| p.name == i.portal) {
            p.auth = Some(auth.into());
            p.hub_id = Some(i.hub_id);
        }
    }
    let conflicts = Conflicts {
        total: c.query_row("SELECT COUNT(*) FROM conflicts", [], |r| r.get(0))?,
        recent: conflicts_where(c, "1 = 1", params![], 10)?,
    };
    let invitations_waiting = {
        let mut st = c.prepare(
            "SELECT hubspot_deal_id, partner, missing FROM invitations ORDER BY updated_at DESC LIMIT 20",
        )?;
        let rows = st.query_map([], |r| {
            Ok(InvitationStatus {
                hubspot_deal_id: r.get(0)?,
                partner: r.get(1)?,
                missing: r.get(2)?,
            })
        })?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    let registrations_refused = {
        let mut st = c.prepare(
            "SELECT partner, partner_deal_id, reason, at FROM refusals ORDER BY at DESC LIMIT 20",
        )?;
        let rows = st.query_map([], |r| {
            Ok(RefusalStatus {
                partner: r.get(0)?,
                partner_deal_id: r.get(1)?,
                reason: r.get(2)?,
                at: iso(r.get(3)?),
            })
        })?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    let (pending, dead, oldest) = crate::store::notification_counts(c)?;
    Ok(Status {
        invitations_waiting,
        registrations_refused,
        notifications: Notifications {
            pending,
            dead,
            oldest_pending: oldest.map(iso),
        },
        format: FORMAT,
        generated_at: iso(now_ms),
        links,
        queue,
        portals,
        dead_letters: dead_letters(dead_letter_path)?,
        conflicts,
        messages,
    })
}

fn conflicts_where(
    c: &Connection,
    filter: &str,
    args: &[&dyn rusqlite::ToSql],
    limit: usize,
) -> Result<Vec<ConflictStatus>, StatusError> {
    let mut st = c.prepare(&format!(
        "SELECT k.link_id, l.partner, l.partner_deal_id, l.hubspot_deal_id, k.field, k.winner, k.policy, k.at
         FROM conflicts k JOIN links l ON l.id = k.link_id
         WHERE {filter} ORDER BY k.id DESC LIMIT {limit}"
    ))?;
    let rows = st.query_map(args, |r| {
        Ok(ConflictStatus {
            link_id: r.get(0)?,
            partner: r.get(1)?,
            partner_deal_id: r.get(2)?,
            hubspot_deal_id: r.get(3)?,
            field: r.get(4)?,
            winner: r.get(5)?,
            policy: r.get(6)?,
            at: iso(r.get(7)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Dead letters grouped by class, open (not successfully replayed) ones counted.
pub fn dead_letters(path: &Path) -> Result<DeadLetters, StatusError> {
    let file = deadletter::read_all(path)?;
    let open: Vec<&deadletter::Entry> = file.open().collect();
    let mut by_class: BTreeMap<&str, (usize, &deadletter::Entry)> = BTreeMap::new();
    for e in &open {
        let slot = by_class.entry(e.class.label()).or_insert((0, e));
        slot.0 += 1;
        if e.last_at >= slot.1.last_at {
            slot.1 = e;
        }
    }
    Ok(DeadLetters {
        path: path.display().to_string(),
        total: file.entries.len(),
        open: open.len(),
        by_class: by_class
            .into_iter()
            .map(|(class, (n, e))| DeadLetterClass {
                class: class.to_owned(),
                open: n,
                newest: e.clone(),
            })
            .collect(),
        warnings: file.warnings,
    })
}

/// One deal's links with shadows, job, history, conflicts, object links and dead letters.
/// `fields` are the configured field names: each is listed, agreed on yet or not. Current
/// portal values are filled in by the caller (they need the network).
pub fn deal(
    c: &Connection,
    dead_letter_path: &Path,
    deal_id: &str,
    fields: &[String],
) -> Result<DealStatus, StatusError> {
    let mut st = c.prepare(&format!(
        "SELECT {} FROM links WHERE partner_deal_id = ?1 OR hubspot_deal_id = ?1 ORDER BY id",
        store::LINK_COLS
    ))?;
    let links: Vec<store::Link> = st
        .query_map([deal_id], store::link_row)?
        .collect::<Result<_, _>>()?;
    let dl = deadletter::read_all(dead_letter_path)?;
    let mut out = Vec::new();
    for l in links {
        let fields = {
            let mut st = c.prepare(
                "SELECT field, value, updated_at FROM shadows WHERE link_id = ?1 ORDER BY field",
            )?;
            let rows = st.query_map([l.id], |r| {
                Ok(FieldStatus {
                    field: r.get(0)?,
                    shadow: r.get(1)?,
                    agreed_at: r.get::<_, Option<i64>>(2)?.filter(|t| *t > 0).map(iso),
                    partner_value: None,
                    hubspot_value: None,
                })
            })?;
            let mut v = rows.collect::<Result<Vec<_>, _>>()?;
            for f in fields {
                if !v.iter().any(|x| &x.field == f) {
                    v.push(FieldStatus {
                        field: f.clone(),
                        shadow: None,
                        agreed_at: None,
                        partner_value: None,
                        hubspot_value: None,
                    });
                }
            }
            v.sort_by(|a, b| a.field.cmp(&b.field));
            v
        };
        let job = c
            .query_row(
                "SELECT state, reason, attempts, due_at, last_error FROM jobs WHERE link_id = ?1",
                [l.id],
                |r| {
                    Ok(JobStatus {
                        state: r.get(0)?,
                        reason: r.get(1)?,
                        attempts: r.get(2)?,
                        due_at: iso(r.get(3)?),
                        last_error: r.get(4)?,
                    })
                },
            )
            .optional()?;
        let history = {
            let mut st = c.prepare(
                "SELECT at, outcome, detail FROM job_history WHERE link_id = ?1 ORDER BY id DESC LIMIT 20",
            )?;
            let rows = st.query_map([l.id], |r| {
                Ok(HistoryEntry {
                    at: iso(r.get(0)?),
                    outcome: r.get(1)?,
                    detail: r.get(2)?,
                })
            })?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        let object_links = {
            let mut st = c.prepare(
                "SELECT kind, origin, partner_object_id, hubspot_object_id, state, note, parent
                 FROM object_links WHERE link_id = ?1 ORDER BY id",
            )?;
            let rows = st.query_map([l.id], |r| {
                Ok(ObjectLinkStatus {
                    kind: r.get(0)?,
                    origin: r.get(1)?,
                    partner_object_id: r.get(2)?,
                    hubspot_object_id: r.get(3)?,
                    state: r.get(4)?,
                    note: r.get(5)?,
                    parent: r.get(6)?,
                })
            })?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        out.push(LinkStatus {
            conflicts: conflicts_where(c, "k.link_id = ?1", params![l.id], 20)?,
            dead_letters: dl
                .entries
                .iter()
                .filter(|e| e.link_id == l.id)
                .cloned()
                .collect(),
            link_id: l.id,
            partner: l.partner,
            partner_deal_id: l.partner_deal_id,
            hubspot_deal_id: l.hubspot_deal_id,
            deal_type: l.deal_type,
            state: l.state,
            fields,
            job,
            history,
            object_links,
        });
    }
    Ok(DealStatus {
        format: FORMAT,
        deal_id: deal_id.to_owned(),
        links: out,
    })
}

/// Shortens `s` to `n` characters, marking the cut.
fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

fn or_dash(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "-".into())
}

/// `2026-11-26T10:00:00.000Z` → `11-26 10:00:00`, to fit 80 columns.
fn short_time(s: &Option<String>) -> String {
    match s {
        Some(t) if t.len() >= 19 => format!("{} {}", &t[5..10], &t[11..19]),
        Some(t) => t.clone(),
        None => "-".into(),
    }
}

/// The overview as a table that fits an 80-column terminal.
pub fn render(s: &Status) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let kv = |m: &BTreeMap<String, i64>| {
        if m.is_empty() {
            "none".to_owned()
        } else {
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let _ = writeln!(o, "dealsync status at {}", s.generated_at);
    let _ = writeln!(o, "\nLINKS     {} total", s.links.total);
    let _ = writeln!(o, "  by state      {}", cut(&kv(&s.links.by_state), 62));
    let _ = writeln!(o, "  by deal type  {}", cut(&kv(&s.links.by_deal_type), 62));
    let _ = writeln!(o, "\nMESSAGES  {}", cut(&kv(&s.messages.by_state), 68));
    let _ = writeln!(
        o,
        "  files         {}",
        cut(&kv(&s.messages.files_by_state), 62)
    );
    for n in &s.messages.needing_target {
        let _ = writeln!(
            o,
            "  needs a target: note {} on HubSpot deal {} (set dealsync_target)",
            cut(&n.note_id, 12),
            cut(&n.hubspot_deal_id, 12)
        );
    }
    if !s.registrations_refused.is_empty() || !s.invitations_waiting.is_empty() {
        let _ = writeln!(
            o,
            "\nREGISTER  {} refused (latest), {} invitations waiting",
            s.registrations_refused.len(),
            s.invitations_waiting.len()
        );
    }
    for r in &s.registrations_refused {
        let _ = writeln!(
            o,
            "  refused: {} deal {}: {}",
            cut(&r.partner, 12),
            cut(&r.partner_deal_id, 12),
            cut(&r.reason, 36)
        );
    }
    for i in &s.invitations_waiting {
        let _ = writeln!(
            o,
            "  waiting: deal {} for {}: {}",
            cut(&i.hubspot_deal_id, 12),
            cut(i.partner.as_deref().unwrap_or("?"), 12),
            cut(&i.missing, 30)
        );
    }
    if s.notifications.pending + s.notifications.dead > 0 {
        let _ = writeln!(
            o,
            "\nNOTIFY    {} waiting (oldest {}), {} given up (dead letters)",
            s.notifications.pending,
            short_time(&s.notifications.oldest_pending),
            s.notifications.dead
        );
    }
    let _ = writeln!(
        o,
        "\nQUEUE     {} jobs ({} running, {} retrying), oldest {}",
        s.queue.depth,
        s.queue.running,
        s.queue.retrying,
        s.queue
            .oldest_age_s
            .map_or("-".into(), |a| format!("{a:.0} s ago"))
    );
    let _ = writeln!(o, "\nPORTALS");
    let _ = writeln!(
        o,
        "  {:<16} {:<15} {:<15} {:<8} last error",
        "portal", "cursor", "last poll ok", "webhooks"
    );
    for p in &s.portals {
        let _ = writeln!(
            o,
            "  {:<16} {:<15} {:<15} {:<8} {}",
            cut(&p.name, 16),
            short_time(&p.cursor),
            short_time(&p.last_poll_ok),
            p.webhooks,
            cut(&or_dash(&p.last_poll_error), 20)
        );
    }
    for p in s
        .portals
        .iter()
        .filter(|p| p.auth.as_deref() == Some("auth_revoked"))
    {
        let _ = writeln!(
            o,
            "  ! {}: OAuth install revoked; its work waits",
            cut(&p.name, 20)
        );
        let _ = writeln!(
            o,
            "    send the link again: dealsync install-link --portal {}",
            cut(&p.name, 20)
        );
    }
    for p in &s.portals {
        if let Some(g) = &p.deletion_guard {
            let _ = writeln!(
                o,
                "  ! {}: mass-deletion guard holds deletions",
                cut(&p.name, 20)
            );
            for chunk in g.chars().collect::<Vec<_>>().chunks(74) {
                let _ = writeln!(o, "    {}", chunk.iter().collect::<String>());
            }
        }
    }
    let _ = writeln!(
        o,
        "\nDEAD LETTERS  {} open of {} ({})",
        s.dead_letters.open,
        s.dead_letters.total,
        cut(&s.dead_letters.path, 40)
    );
    for c in &s.dead_letters.by_class {
        let _ = writeln!(
            o,
            "  {:<16} {:>5}  newest {} link {}: {}",
            cut(&c.class, 16),
            c.open,
            short_time(&Some(c.newest.last_at.clone())),
            c.newest.link_id,
            cut(&c.newest.error, 22)
        );
    }
    for w in &s.dead_letters.warnings {
        let _ = writeln!(o, "  warning: {}", cut(w, 68));
    }
    if s.dead_letters.open > 0 {
        let _ = writeln!(
            o,
            "  fix the cause, then: dealsync replay --all (or --class, --id)"
        );
    }
    let _ = writeln!(o, "\nCONFLICTS {} recorded", s.conflicts.total);
    for c in &s.conflicts.recent {
        let _ = writeln!(
            o,
            "  {} link {:<6} {:<18} {} wins ({})",
            short_time(&Some(c.at.clone())),
            c.link_id,
            cut(&c.field, 18),
            c.winner,
            cut(&c.policy, 12)
        );
    }
    o
}

/// One deal's picture as text.
pub fn render_deal(d: &DealStatus) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    if d.links.is_empty() {
        let _ = writeln!(o, "no link has deal {} on either side", d.deal_id);
        return o;
    }
    for l in &d.links {
        let _ = writeln!(
            o,
            "LINK {}  {} deal {} <-> HubSpot deal {}",
            l.link_id, l.partner, l.partner_deal_id, l.hubspot_deal_id
        );
        let _ = writeln!(o, "  type {}, state {}", l.deal_type, l.state);
        let _ = writeln!(
            o,
            "  {:<20} {:<18} {:<18} hubspot now",
            "field", "agreed", "partner now"
        );
        for f in &l.fields {
            let _ = writeln!(
                o,
                "  {:<20} {:<18} {:<18} {:<18}",
                cut(&f.field, 20),
                cut(&or_dash(&f.shadow), 18),
                cut(&or_dash(&f.partner_value), 18),
                cut(&or_dash(&f.hubspot_value), 18)
            );
        }
        match &l.job {
            Some(j) => {
                let _ = writeln!(
                    o,
                    "  job: {} ({}), attempts {}, due {}{}",
                    j.state,
                    j.reason,
                    j.attempts,
                    short_time(&Some(j.due_at.clone())),
                    j.last_error
                        .as_ref()
                        .map_or(String::new(), |e| format!(", last error: {}", cut(e, 30)))
                );
            }
            None => {
                let _ = writeln!(o, "  job: none queued");
            }
        }
        for ol in &l.object_links {
            let _ = writeln!(
                o,
                "  {} {} partner {} hubspot {} ({})",
                ol.kind,
                cut(&ol.origin, 20),
                or_dash(&ol.partner_object_id),
                or_dash(&ol.hubspot_object_id),
                ol.state
            );
            if let Some(n) = &ol.note {
                let _ = writeln!(o, "    {}", cut(n, 74));
            }
        }
        for c in &l.conflicts {
            let _ = writeln!(
                o,
                "  conflict {} {}: {} wins ({})",
                short_time(&Some(c.at.clone())),
                cut(&c.field, 20),
                c.winner,
                c.policy
            );
        }
        for e in &l.dead_letters {
            let _ = writeln!(
                o,
                "  dead letter {} {}: {}",
                cut(&e.id, 8),
                e.class,
                cut(&e.error, 40)
            );
        }
        if !l.history.is_empty() {
            let _ = writeln!(o, "  history (newest first):");
            for h in &l.history {
                let _ = writeln!(
                    o,
                    "    {} {}{}",
                    short_time(&Some(h.at.clone())),
                    cut(&h.outcome, 30),
                    h.detail
                        .as_ref()
                        .map_or(String::new(), |d| format!(": {}", cut(d, 30)))
                );
            }
        }
    }
    o
}
