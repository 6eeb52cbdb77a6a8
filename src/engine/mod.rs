//! The engine: workers that take due jobs from the store's queue (a batch at a time), read
//! both sides of every link in batches, decide per field (`plan`), write both sides in
//! batches, then commit shadows and finish the jobs in one transaction.
//!
//! Invariants:
//! - Jobs of one link never run concurrently: claiming marks them running in the store
//!   thread, atomically.
//! - Store updates for a job commit only after its writes succeeded; a crash in between
//!   leaves the job to run again, and the re-run sees both sides equal (no second write).
//! - Transient failures retry with exponential backoff and jitter; permanent failures and
//!   exhausted retries go to the dead-letter file, with the reason.

pub mod messages;
pub mod plan;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::crm::{Client, CrmError, ErrorClass, Owner, Record};
use crate::deadletter;
use crate::lifecycle::{self, Lifecycle};
use crate::store::{self, ClaimedJob, JobCommit, Link, Side, Store, StoreError};
use crate::team;
pub use plan::{FieldKind, FieldSpec, LinkPlan, PlanError, StageMap};

/// What the engine needs to know, distilled from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub fields: Vec<FieldSpec>,
    pub stage_maps: HashMap<String, StageMap>,
    pub batch_size: usize,
    pub workers: usize,
    pub max_attempts: i64,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub dead_letter_path: PathBuf,
    /// Limits of the mass-deletion guard.
    pub mass_deletion: store::DeletionLimits,
    /// Shared messages and attachments.
    pub messages: messages::MessageSettings,
    /// HubSpot stages that close a deal won or lost.
    pub closed_stages: lifecycle::ClosedStages,
    /// Per partner: registrations started from its CRM (`dealsync_register`); a partner not
    /// here registers only through the CLI.
    pub registration: HashMap<String, crate::register::RegistrationSettings>,
    /// Notifications to the receiving side (off when neither webhook nor SMTP is set).
    pub notify: crate::notify::NotifySettings,
}

/// The portals' clients.
#[derive(Clone)]
pub struct Portals {
    pub hubspot: Client,
    pub partners: HashMap<String, Client>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    DeadLetter(#[from] deadletter::DeadLetterError),
}

/// Shared by the workers.
pub struct Engine {
    store: Store,
    portals: Portals,
    settings: Settings,
    wake: Arc<Notify>,
    in_flight: InFlight,
    /// Bumped by every worker round and batch phase; the systemd watchdog only pets while it
    /// moves, so a stuck worker loop gets the daemon restarted.
    heartbeat: Heartbeat,
    /// Counters for `/metrics`.
    metrics: Arc<crate::metrics::Metrics>,
    /// Each portal's users, for the deal team (see [`crate::team`]).
    directory: Arc<crate::team::Directory>,
}

impl Engine {
    /// An engine over `store` and the portals' clients. `wake` is the notify pollers, the
    /// listener and the sweep poke when they queue work; the in-flight set, heartbeat, metrics
    /// and user directory start empty and are shared through the accessors below.
    pub fn new(store: Store, portals: Portals, settings: Settings, wake: Arc<Notify>) -> Engine {
        Engine {
            store,
            portals,
            settings,
            wake,
            in_flight: InFlight::default(),
            heartbeat: Heartbeat::default(),
            metrics: Arc::default(),
            directory: Arc::default(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn portals(&self) -> &Portals {
        &self.portals
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The links whose writes are on their way, shared with both ingest paths (echo skip).
    pub fn in_flight(&self) -> &InFlight {
        &self.in_flight
    }

    pub fn heartbeat(&self) -> &Heartbeat {
        &self.heartbeat
    }

    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    pub fn directory(&self) -> &Arc<crate::team::Directory> {
        &self.directory
    }
}

/// A counter of worker progress (see [`Engine::heartbeat`]).
#[derive(Debug, Default, Clone)]
pub struct Heartbeat(Arc<std::sync::atomic::AtomicU64>);

impl Heartbeat {
    pub fn beat(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Links whose writes are on their way to a portal and whose outcome (the timestamp each write
/// produced) is not committed to the store yet. The poller consults it so that it does not
/// mistake our own write, seen mid-flight, for somebody else's change.
#[derive(Debug, Default, Clone)]
pub struct InFlight(Arc<InFlightState>);

#[derive(Debug, Default)]
struct InFlightState {
    links: std::sync::Mutex<HashSet<i64>>,
    /// Counts finished batches, so a reader can tell whether one finished while it looked.
    finished: std::sync::atomic::AtomicU64,
}

impl InFlight {
    pub fn contains(&self, link_id: i64) -> bool {
        self.0.links.lock().is_ok_and(|s| s.contains(&link_id))
    }

    /// Whether no write is in flight at all (lets callers skip looking links up).
    pub fn is_empty(&self) -> bool {
        self.0.links.lock().is_ok_and(|s| s.is_empty())
    }

    /// Changes whenever a batch's writes finish and leave the set.
    pub fn generation(&self) -> u64 {
        self.0.finished.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Marks `ids` in flight until the returned guard drops.
    fn mark(&self, ids: Vec<i64>) -> InFlightGuard {
        if let Ok(mut s) = self.0.links.lock() {
            s.extend(ids.iter().copied());
        }
        InFlightGuard {
            set: self.clone(),
            ids,
        }
    }
}

struct InFlightGuard {
    set: InFlight,
    ids: Vec<i64>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if let Ok(mut s) = self.set.0.links.lock() {
            for id in &self.ids {
                s.remove(id);
            }
        }
        self.set
            .0
            .finished
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// How one job ended.
enum Outcome {
    Done(JobCommit),
    Failed {
        error: String,
        class: ErrorClass,
        fine_class: &'static str,
    },
}

impl Engine {
    fn hubspot_props(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .settings
            .fields
            .iter()
            .map(|f| f.hubspot_property.clone())
            .collect();
        v.push("hs_lastmodifieddate".into());
        // What the lifecycle is decided from, and who gets quote-request tasks.
        v.push(crate::properties::EXCLUDED_PARTNERS.into());
        v.push("hubspot_owner_id".into());
        v.extend(
            [
                team::COLLABORATORS,
                crate::properties::PARTNER_TEAM,
                crate::properties::TEAM_ADD,
            ]
            .into_iter()
            .map(String::from),
        );
        if !v.iter().any(|p| p == "dealstage") {
            v.push("dealstage".into());
        }
        v
    }

    fn partner_props(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .settings
            .fields
            .iter()
            .map(|f| f.partner_property.clone())
            .collect();
        v.push("hs_lastmodifieddate".into());
        v.extend([
            crate::properties::DEAL_STATUS.into(),
            crate::properties::ACTIVE_REGISTRATIONS.into(),
            crate::properties::QUOTES.into(),
            crate::properties::QUOTE_REQUEST.into(),
        ]);
        v.extend(
            [
                "hubspot_owner_id",
                team::COLLABORATORS,
                crate::properties::HUBSPOT_TEAM,
                crate::properties::TEAM_ADD,
            ]
            .into_iter()
            .map(String::from),
        );
        v
    }

    /// Runs a worker until cancelled. Finishes the batch in hand before returning.
    pub async fn worker(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            if cancel.is_cancelled() {
                return;
            }
            self.heartbeat.beat();
            // Registered before looking at the queue, so a wake-up that comes while we look
            // is not lost (`notify_waiters` only reaches registered waiters).
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let limit = self.settings.batch_size;
            let claimed = self
                .store
                .call(move |c| store::claim_jobs(c, limit, store::now_ms()))
                .await;
            match claimed {
                Ok(jobs) if !jobs.is_empty() => {
                    let held: Vec<(i64, i64)> =
                        jobs.iter().map(|j| (j.link_id, j.attempts)).collect();
                    if let Err(e) = self.run_batch(jobs).await {
                        tracing::error!(error = %e, "engine batch failed; jobs will be retried");
                        self.release(held, &e.to_string()).await;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "cannot claim jobs"),
            }
            let next = self.store.call(store::next_due_conn).await.ok().flatten();
            let wait = next
                .map(|due| Duration::from_millis((due - store::now_ms()).clamp(1, 1_000) as u64))
                .unwrap_or(Duration::from_secs(1));
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = notified => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Puts the jobs of a batch that failed as a whole (the store or the dead-letter file could
    /// not be written — a full disk, say) back in the queue with a delay, so they run again
    /// without a restart. If the store cannot take even that, they stay marked running and the
    /// next start recovers them.
    async fn release(&self, held: Vec<(i64, i64)>, error: &str) {
        let due: Vec<(i64, i64)> = held
            .into_iter()
            .map(|(id, attempts)| {
                (
                    id,
                    store::now_ms() + self.backoff(attempts).as_millis() as i64,
                )
            })
            .collect();
        let error = error.to_owned();
        let released = self
            .store
            .call(move |c| {
                for (id, at) in &due {
                    store::retry_job(c, *id, *at, &error)?;
                }
                Ok(())
            })
            .await;
        if let Err(e) = released {
            tracing::error!(error = %e, "cannot put failed jobs back; they run again after a restart");
        }
    }

    /// Reads, decides, writes and commits one batch of jobs.
    pub async fn run_batch(&self, jobs: Vec<ClaimedJob>) -> Result<(), EngineError> {
        let ids: Vec<i64> = jobs.iter().map(|j| j.link_id).collect();
        let ids2 = ids.clone();
        let (links, shadows) = self
            .store
            .call(move |c| Ok((store::links_by_ids(c, &ids2)?, store::shadows(c, &ids2)?)))
            .await?;
        let by_id: HashMap<i64, &ClaimedJob> = jobs.iter().map(|j| (j.link_id, j)).collect();
        let mut outcomes: HashMap<i64, Outcome> = HashMap::new();
        let active: Vec<&Link> = links.iter().filter(|l| l.state == "active").collect();
        for l in links.iter().filter(|l| l.state != "active") {
            outcomes.insert(
                l.id,
                Outcome::Done(JobCommit {
                    link_id: l.id,
                    outcome: format!("skipped: link {}", l.state),
                    ..Default::default()
                }),
            );
        }
        for id in &ids {
            if !links.iter().any(|l| l.id == *id) {
                outcomes.insert(
                    *id,
                    Outcome::Done(JobCommit {
                        link_id: *id,
                        outcome: "skipped: link gone".into(),
                        ..Default::default()
                    }),
                );
            }
        }

        // Read both sides, batched per portal.
        let hs_ids: Vec<String> = unique(active.iter().map(|l| l.hubspot_deal_id.clone()));
        // Both portals (and every partner) are read at once: a batch costs one round trip.
        let (hs_props, p_props) = (self.hubspot_props(), self.partner_props());
        let hs_fut = self
            .portals
            .hubspot
            .batch_read("deals", &hs_ids, &hs_props, true);
        let partner_futs = unique(active.iter().map(|l| l.partner.clone())).into_iter().map(|partner| {
            let deal_ids: Vec<String> = unique(
                active
                    .iter()
                    .filter(|l| l.partner == partner)
                    .map(|l| l.partner_deal_id.clone()),
            );
            let client = self.portals.partners.get(&partner);
            let props = &p_props;
            async move {
                let read = match client {
                    Some(client) => client
                        .batch_read("deals", &deal_ids, props, true)
                        .await
                        .map(|rs| rs.into_iter().map(|r| (r.id.clone(), r)).collect()),
                    None => Err(CrmError::Http {
                        portal: partner.clone(),
                        call: "configuration".into(),
                        status: 400,
                        category: "NOT_CONFIGURED".into(),
                        message: format!("partner {partner} has links but is not in the configuration; add it back or remove its links"),
                        retry_after: None,
                    }),
                };
                (partner, read)
            }
        });
        // Quotes are read alongside, not between the reads and the writes: every call in that
        // window (retried under faults) widens HubSpot's lost-update race.
        // Quotes only for jobs not queued by deal changes alone (quote changes queue their own).
        let quote_ids: Vec<String> = unique(
            active
                .iter()
                .filter(|l| by_id.get(&l.id).is_some_and(|j| !deal_only(&j.reason)))
                .map(|l| l.hubspot_deal_id.clone()),
        );
        let quotes_fut = async {
            if quote_ids.is_empty() {
                Ok(HashMap::new())
            } else {
                self.quote_summaries(&quote_ids).await
            }
        };
        let (hs_read, partner_list, quotes_read, dirs) = tokio::join!(
            hs_fut,
            futures_util::future::join_all(partner_futs),
            quotes_fut,
            self.directories(&active)
        );
        let partner_reads: HashMap<String, Result<HashMap<String, Record>, CrmError>> =
            partner_list.into_iter().collect();
        let hs: HashMap<String, Record> = match hs_read {
            Ok(rs) => rs.into_iter().map(|r| (r.id.clone(), r)).collect(),
            Err(e) => {
                for l in &active {
                    outcomes.insert(l.id, failed(&e));
                }
                HashMap::new()
            }
        };

        // The quotes of every HubSpot deal, for the partner side.
        let quotes = match quotes_read {
            Ok(q) => q,
            Err(e) => {
                for l in &active {
                    outcomes.entry(l.id).or_insert_with(|| failed(&e));
                }
                HashMap::new()
            }
        };

        self.heartbeat.beat();
        // Decide.
        let empty = HashMap::new();
        let mut gone: HashMap<String, Vec<&Link>> = HashMap::new();
        let mut plans: Vec<(&Link, LinkPlan)> = Vec::new();
        // Links the HubSpot deal excludes or closes in this job.
        let mut lives: HashMap<i64, Lifecycle> = HashMap::new();
        for l in &active {
            if outcomes.contains_key(&l.id) {
                continue;
            }
            let p = match partner_reads.get(&l.partner) {
                Some(Ok(m)) => m.get(&l.partner_deal_id),
                Some(Err(e)) => {
                    outcomes.insert(l.id, failed(e));
                    continue;
                }
                None => None,
            };
            let h = hs.get(&l.hubspot_deal_id);
            let (Some(p), Some(h)) = (p, h) else {
                // Deletion does not propagate: the link is orphaned and shown in status —
                // unless the mass-deletion guard holds the portal (below).
                let portal = if p.is_none() {
                    l.partner.clone()
                } else {
                    self.portals.hubspot.portal().to_owned()
                };
                gone.entry(portal).or_default().push(l);
                continue;
            };
            let life = lifecycle::decide(h, &l.partner, &self.settings.closed_stages);
            if life != Lifecycle::Active {
                lives.insert(l.id, life);
            }
            let stages = self
                .settings
                .stage_maps
                .get(&l.partner)
                .cloned()
                .unwrap_or_default();
            let planned = if life.syncs_fields() {
                plan::plan_link(
                    l,
                    &self.settings.fields,
                    &stages,
                    shadows.get(&l.id).unwrap_or(&empty),
                    p,
                    h,
                )
            } else {
                // Excluded: nothing crosses any more, either way.
                Ok(LinkPlan::default())
            };
            match planned.map(|mut plan| {
                if life.syncs_fields() {
                    self.plan_team(l, p, h, &dirs, &mut plan);
                    // HubSpot's quotes, shown on the partner deal (only a difference is written).
                    if let Some(want) = quotes.get(&l.hubspot_deal_id) {
                        if p.get(crate::properties::QUOTES).unwrap_or("") != want {
                            plan.partner_writes.insert(
                                crate::properties::QUOTES.into(),
                                Value::String(want.clone()),
                            );
                        }
                    }
                }
                if life == Lifecycle::Excluded {
                    // An excluded partner's people leave HubSpot's view of the deal team.
                    let shown = h.get(crate::properties::PARTNER_TEAM).unwrap_or("");
                    if !team::partner_line(shown, &l.partner).is_empty() {
                        plan.hubspot_writes.insert(
                            crate::properties::PARTNER_TEAM.into(),
                            Value::String(team::with_partner_line(shown, &l.partner, "")),
                        );
                    }
                }
                if life != Lifecycle::Active {
                    // The partner deal shows what happened (only what differs is written).
                    let (banner, registrations) = life.partner_view();
                    for (prop, value) in [
                        (crate::properties::DEAL_STATUS, banner),
                        (crate::properties::ACTIVE_REGISTRATIONS, registrations),
                    ] {
                        if p.get(prop) != Some(value) {
                            plan.partner_writes
                                .insert(prop.into(), Value::String(value.into()));
                        }
                    }
                }
                plan
            }) {
                Ok(plan) => plans.push((l, plan)),
                Err(e) => {
                    outcomes.insert(
                        l.id,
                        Outcome::Failed {
                            error: e.to_string(),
                            class: ErrorClass::Permanent,
                            fine_class: "unmapped_stage",
                        },
                    );
                }
            }
        }

        self.judge_deletions(gone, &mut outcomes).await?;

        // Write, batched per portal. Two links of one HubSpot deal (best partner wins) merge.
        let mut hs_updates: HashMap<String, Map<String, Value>> = HashMap::new();
        let mut p_updates: HashMap<String, HashMap<String, Map<String, Value>>> = HashMap::new();
        for (l, plan) in &plans {
            if !plan.hubspot_writes.is_empty() {
                let update = hs_updates.entry(l.hubspot_deal_id.clone()).or_default();
                for (k, v) in &plan.hubspot_writes {
                    // Each link owns one line of the partner-team text.
                    if let (true, Some(Value::String(before)), Value::String(mine)) =
                        (k == crate::properties::PARTNER_TEAM, update.get(k), v)
                    {
                        let line = team::partner_line(mine, &l.partner);
                        let merged = team::with_partner_line(before, &l.partner, &line);
                        update.insert(k.clone(), Value::String(merged));
                    } else {
                        update.insert(k.clone(), v.clone());
                    }
                }
            }
            if !plan.partner_writes.is_empty() {
                p_updates
                    .entry(l.partner.clone())
                    .or_default()
                    .entry(l.partner_deal_id.clone())
                    .or_default()
                    .extend(plan.partner_writes.clone());
            }
        }
        // Held until the outcomes (and the timestamps our writes produced) are committed.
        let in_flight = self.in_flight.mark(
            plans
                .iter()
                .filter(|(_, p)| !p.hubspot_writes.is_empty() || !p.partner_writes.is_empty())
                .map(|(l, _)| l.id)
                .collect(),
        );
        // Writes to every portal go out at once, too.
        let partner_writes = p_updates.into_iter().filter_map(|(partner, updates)| {
            self.portals
                .partners
                .get(&partner)
                .map(|client| async move { (partner, self.write(client, updates).await) })
        });
        let (hs_result, p_list) = tokio::join!(
            self.write(&self.portals.hubspot, hs_updates),
            futures_util::future::join_all(partner_writes)
        );
        let p_results: HashMap<String, _> = p_list.into_iter().collect();

        self.heartbeat.beat();
        let mut fields_done: Vec<&Link> = Vec::new();
        for (l, plan) in plans {
            let hs_w = hs_result.get(&l.hubspot_deal_id);
            let p_w = p_results
                .get(&l.partner)
                .and_then(|m| m.get(&l.partner_deal_id));
            let err = [hs_w, p_w]
                .into_iter()
                .flatten()
                .find_map(|r| r.as_ref().err());
            if let Some(e) = err {
                outcomes.insert(l.id, failed(e));
                continue;
            }
            let ms = |w: Option<&Result<Option<i64>, CrmError>>| {
                w.and_then(|r| r.as_ref().ok().copied().flatten())
            };
            let wrote = !plan.hubspot_writes.is_empty() || !plan.partner_writes.is_empty();
            let new_state = lives.get(&l.id).map(|life| life.link_state().to_owned());
            let notices = if self.settings.notify.enabled() {
                let agreed = shadows.get(&l.id).unwrap_or(&empty);
                self.field_notices(l, &plan, lives.get(&l.id).copied(), agreed)
            } else {
                Vec::new()
            };
            fields_done.push(l);
            outcomes.insert(
                l.id,
                Outcome::Done(JobCommit {
                    link_id: l.id,
                    shadows: plan.shadows,
                    conflicts: plan.conflicts,
                    partner_written_ms: ms(p_w),
                    hubspot_written_ms: ms(hs_w),
                    outcome: match &new_state {
                        Some(state) => format!("link {state}"),
                        None if wrote => "synced".into(),
                        None => "no change".into(),
                    },
                    new_state,
                    notices,
                    ..Default::default()
                }),
            );
        }

        // The fields' outcome is committed now, before the messages: their writes and their
        // shadows must be as close together as possible. A change someone makes between our
        // write and this commit, back to the old agreed value, would look like no change after
        // a crash and be overwritten; the message half can take seconds (file copies), so it
        // must not sit inside that window.
        let mut field_conflicts = 0;
        if !fields_done.is_empty() {
            let mut early = Vec::new();
            for l in &fields_done {
                if let Some(Outcome::Done(c)) = outcomes.get_mut(&l.id) {
                    field_conflicts += c.conflicts.len();
                    early.push(JobCommit {
                        link_id: c.link_id,
                        shadows: std::mem::take(&mut c.shadows),
                        conflicts: std::mem::take(&mut c.conflicts),
                        partner_written_ms: c.partner_written_ms.take(),
                        hubspot_written_ms: c.hubspot_written_ms.take(),
                        new_state: c.new_state.clone(),
                        notices: std::mem::take(&mut c.notices),
                        ..Default::default()
                    });
                }
            }
            self.store
                .call(move |c| store::commit_fields(c, &early))
                .await?;
        }
        drop(in_flight);

        // Messages, for the links whose fields went through and that stay active.
        fields_done.retain(|l| !lives.contains_key(&l.id));
        // Quote requests the partners wrote on their deals.
        for l in &fields_done {
            let request = partner_reads
                .get(&l.partner)
                .and_then(|r| r.as_ref().ok())
                .and_then(|m| m.get(&l.partner_deal_id))
                .and_then(|r| r.get(crate::properties::QUOTE_REQUEST))
                .map(str::to_owned);
            let Some(text) = request else { continue };
            let owner = hs
                .get(&l.hubspot_deal_id)
                .and_then(|r| r.get("hubspot_owner_id"))
                .map(str::to_owned);
            if let Err(e) = self.quote_request(l, &text, owner.as_deref()).await {
                outcomes.insert(l.id, failed(&e));
            }
        }
        // Team additions people asked for on either deal.
        let mut asked: HashSet<String> = HashSet::new();
        for l in &fields_done {
            let p = partner_reads
                .get(&l.partner)
                .and_then(|r| r.as_ref().ok())
                .and_then(|m| m.get(&l.partner_deal_id));
            let h = hs.get(&l.hubspot_deal_id);
            let (Some(p), Some(h)) = (p, h) else { continue };
            // A HubSpot deal with several links answers its request once per batch (two
            // workers answering it at once write the same result).
            let h = asked.insert(l.hubspot_deal_id.clone()).then_some(h);
            if !self.team_requests(l, p, h, &dirs).await {
                continue;
            }
            // Not answered for a passing reason: the job comes back for it (without failing).
            let job = by_id[&l.id];
            if let Some(Outcome::Done(c)) = outcomes.get_mut(&l.id) {
                if c.retry.is_none() && job.attempts + 1 < self.settings.max_attempts {
                    let due = store::now_ms() + self.backoff(job.attempts).as_millis() as i64;
                    c.retry = Some((due, "a deal team request waits for its portal".into()));
                }
            }
        }
        // Messages only for jobs not queued by deal changes alone: note changes queue their own
        // (note pollers, note webhooks), and the sweep covers the rest.
        let message_links: Vec<&Link> = fields_done
            .iter()
            .copied()
            .filter(|l| by_id.get(&l.id).is_some_and(|j| !deal_only(&j.reason)))
            .collect();
        // File copies made by message runs that then failed (see `MessageError::files`).
        let mut partial_files: Vec<(i64, Vec<store::ObjectLink>)> = Vec::new();
        if self.settings.messages.enabled && !message_links.is_empty() {
            self.heartbeat.beat();
            let results = self.sync_messages(&message_links, &by_id).await?;
            for (id, r) in results {
                match r {
                    Ok(m) => {
                        let Some(Outcome::Done(c)) = outcomes.get_mut(&id) else {
                            continue;
                        };
                        c.objects = m.objects;
                        c.conflicts.extend(m.conflicts);
                        if self.settings.notify.enabled() {
                            if let Some(l) = links.iter().find(|l| l.id == id) {
                                c.notices.extend(self.message_notices(l, &m.arrivals));
                            }
                        }
                        if m.written > 0 {
                            c.outcome = "synced".into();
                        }
                        c.more = m.more;
                        if let Some(why) = m.waiting {
                            let job = by_id[&id];
                            if job.attempts + 1 >= self.settings.max_attempts {
                                outcomes.insert(
                                    id,
                                    Outcome::Failed {
                                        error: why,
                                        class: ErrorClass::Permanent,
                                        fine_class: "unknown_parent",
                                    },
                                );
                            } else {
                                let due =
                                    store::now_ms() + self.backoff(job.attempts).as_millis() as i64;
                                c.retry = Some((due, why));
                            }
                        }
                    }
                    Err(e) => {
                        if !e.files.is_empty() {
                            partial_files.push((id, e.files));
                        }
                        outcomes.insert(
                            id,
                            Outcome::Failed {
                                error: e.error,
                                class: e.class,
                                fine_class: "permanent",
                            },
                        );
                    }
                }
            }
        }

        // Commit successes together; schedule or dead-letter failures.
        let mut commits = Vec::new();
        let mut retries = Vec::new();
        let mut dead = Vec::new();
        for (id, o) in outcomes {
            match o {
                Outcome::Done(c) => commits.push(c),
                Outcome::Failed {
                    error,
                    class,
                    fine_class,
                } => {
                    let job = by_id[&id];
                    let exhausted = job.attempts + 1 >= self.settings.max_attempts;
                    if class == ErrorClass::Held {
                        // A portal waiting for its install: keep the job, look again later.
                        retries.push((id, store::now_ms() + HELD_RETRY_MS, error));
                    } else if class == ErrorClass::Transient && !exhausted {
                        retries.push((
                            id,
                            store::now_ms() + self.backoff(job.attempts).as_millis() as i64,
                            error,
                        ));
                    } else {
                        let subject = links
                            .iter()
                            .find(|l| l.id == id)
                            .map(|l| deadletter::Subject {
                                link_id: id,
                                partner: l.partner.clone(),
                                partner_deal_id: l.partner_deal_id.clone(),
                                hubspot_deal_id: l.hubspot_deal_id.clone(),
                            })
                            .unwrap_or(deadletter::Subject {
                                link_id: id,
                                ..Default::default()
                            });
                        let class = if class == ErrorClass::Transient {
                            "exhausted"
                        } else {
                            fine_class
                        };
                        dead.push(deadletter::Entry::for_job(
                            subject,
                            &job.reason,
                            error,
                            class,
                            job.attempts + 1,
                            job.first_failed_at,
                        ));
                    }
                }
            }
        }
        if !dead.is_empty() {
            let path = self.settings.dead_letter_path.clone();
            let entries = dead.clone();
            tokio::task::spawn_blocking(move || deadletter::append(&path, &entries))
                .await
                .map_err(|e| StoreError::Corrupt(format!("dead-letter writer failed: {e}")))??;
            for d in &dead {
                tracing::error!(link = d.link_id, partner = %d.partner, class = %d.class, error = %d.error, "job dead-lettered");
            }
        }
        // What the metrics will say once the commit succeeds.
        let now = store::now_ms();
        let synced_ages: Vec<f64> = commits
            .iter()
            .filter(|c| c.outcome == "synced")
            .filter_map(|c| by_id.get(&c.link_id))
            .map(|j| (now - j.enqueued_at).max(0) as f64 / 1000.0)
            .collect();
        let outcomes: Vec<String> = commits.iter().map(|c| c.outcome.clone()).collect();
        let conflicts: usize =
            field_conflicts + commits.iter().map(|c| c.conflicts.len()).sum::<usize>();
        let (n_retries, n_dead) = (retries.len(), dead.len());
        self.store
            .call(move |c| {
                for (id, files) in &partial_files {
                    store::record_file_copies(c, *id, files)?;
                }
                store::commit_jobs(c, &commits)?;
                for (id, due, err) in &retries {
                    store::retry_job(c, *id, *due, err)?;
                }
                for d in &dead {
                    store::drop_job(c, d.link_id, &d.error)?;
                }
                Ok(())
            })
            .await?;
        for o in &outcomes {
            self.metrics.job(o);
        }
        for _ in 0..n_retries {
            self.metrics.job("retry");
        }
        for _ in 0..n_dead {
            self.metrics.job("dead_letter");
        }
        self.metrics.dead_lettered(n_dead as u64);
        self.metrics.conflicted(conflicts as u64);
        for age in synced_ages {
            self.metrics.propagated(age);
        }
        Ok(())
    }

    /// Orphans links whose deal looks deleted, unless that would take a portal past the
    /// mass-deletion limit: then the guard trips and the portal's links are held (left active,
    /// job finished) until an operator runs `dealsync resume --portal P`.
    async fn judge_deletions(
        &self,
        gone: HashMap<String, Vec<&Link>>,
        outcomes: &mut HashMap<i64, Outcome>,
    ) -> Result<(), EngineError> {
        let hubspot = self.portals.hubspot.portal().to_owned();
        for (portal, links) in gone {
            let ids: Vec<i64> = links.iter().map(|l| l.id).collect();
            let partner = (portal != hubspot).then(|| portal.clone());
            let (p2, limits) = (portal.clone(), self.settings.mass_deletion);
            let allowed = self
                .store
                .call(move |c| store::guard_deletions(c, &p2, partner.as_deref(), &ids, limits))
                .await?;
            if !allowed {
                tracing::error!(portal = %portal, links = links.len(), "mass-deletion guard: deals look deleted in bulk; holding destructive changes for this portal until `dealsync resume --portal {portal}`");
            }
            for l in links {
                let what = if portal == hubspot {
                    format!("HubSpot deal {}", l.hubspot_deal_id)
                } else {
                    format!("partner deal {} in {}", l.partner_deal_id, l.partner)
                };
                let commit = if allowed {
                    tracing::warn!(link = l.id, "{what} is archived or deleted; link orphaned");
                    JobCommit {
                        link_id: l.id,
                        new_state: Some("orphaned".into()),
                        outcome: format!("orphaned: {what} is archived or deleted"),
                        ..Default::default()
                    }
                } else {
                    JobCommit {
                        link_id: l.id,
                        outcome: format!("held: {what} looks deleted, but the mass-deletion guard for {portal} is tripped"),
                        ..Default::default()
                    }
                };
                outcomes.insert(l.id, Outcome::Done(commit));
            }
        }
        Ok(())
    }

    /// A partner's quote request: a shared message on the HubSpot deal (targeted at the partner,
    /// so message sync shows it on the partner's side too) and a task for the HubSpot deal's
    /// owner, then the request field is cleared. The task is written by upsert on a key of the
    /// request, and the message only when that task is new, so a retry does not repeat either
    /// (a crash between the message and the task can leave a second message).
    async fn quote_request(
        &self,
        l: &Link,
        text: &str,
        owner: Option<&str>,
    ) -> Result<(), CrmError> {
        let hs = &self.portals.hubspot;
        let key = crate::quotes::request_key(&l.partner, &l.partner_deal_id, text);
        let known = hs
            .get_by("tasks", &key, crate::properties::REQUEST_KEY, &[])
            .await?
            .is_some();
        let to_deal = |type_id: u32| serde_json::json!([{ "to": { "id": l.hubspot_deal_id }, "types": [{ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id }] }]);
        if !known {
            let mut note = Map::new();
            note.insert(
                "hs_note_body".into(),
                Value::String(format!("Quote request from {}: {text}", l.partner)),
            );
            note.insert(
                "hs_timestamp".into(),
                Value::String(crate::time::iso(store::now_ms())),
            );
            note.insert(crate::properties::VISIBILITY.into(), "shared".into());
            note.insert(crate::properties::TARGET.into(), l.partner.clone().into());
            hs.create("notes", &note, to_deal(214)).await?;
            let mut task = Map::new();
            task.insert(
                "hs_task_subject".into(),
                Value::String(format!("Quote requested by {}", l.partner)),
            );
            task.insert("hs_task_body".into(), Value::String(text.to_owned()));
            task.insert(
                "hs_timestamp".into(),
                Value::String(crate::time::iso(store::now_ms())),
            );
            task.insert("hs_task_status".into(), "NOT_STARTED".into());
            if let Some(o) = owner {
                task.insert("hubspot_owner_id".into(), o.into());
            }
            let made = hs
                .batch_upsert(
                    "tasks",
                    crate::properties::REQUEST_KEY,
                    &[(key.clone(), task)],
                )
                .await?;
            if let Some(t) = made.first() {
                hs.associate_default(
                    "tasks",
                    "deals",
                    &[(t.id.clone(), l.hubspot_deal_id.clone())],
                )
                .await?;
            }
            tracing::info!(link = l.id, partner = %l.partner, "quote request sent to the HubSpot deal's owner");
        }
        let mut clear = Map::new();
        clear.insert(crate::properties::QUOTE_REQUEST.into(), "".into());
        let partner = self
            .portals
            .partners
            .get(&l.partner)
            .ok_or_else(|| CrmError::Http {
                portal: l.partner.clone(),
                call: "configuration".into(),
                status: 400,
                category: "NOT_CONFIGURED".into(),
                message: format!("partner {} is not in the configuration", l.partner),
                retry_after: None,
            })?;
        partner.update("deals", &l.partner_deal_id, &clear).await?;
        Ok(())
    }

    /// What the receiving sides hear about a link's field outcome: a status banner the
    /// partner deal now shows, or else a stage carried over to either side. The first sync's
    /// stage (both sides agreeing for the first time, `agreed` holding no stage yet) is not
    /// news: the deal was just created there.
    fn field_notices(
        &self,
        l: &Link,
        plan: &LinkPlan,
        life: Option<Lifecycle>,
        agreed: &HashMap<String, Option<String>>,
    ) -> Vec<String> {
        use crate::notify::{Event, Notice};
        let mut out = Vec::new();
        let stage = self
            .settings
            .fields
            .iter()
            .find(|f| f.kind == plan::FieldKind::Stage);
        if let Some(life) = life {
            let banner = life.partner_view().0.to_owned();
            out.push(Notice::new(
                Event::StatusChanged,
                l,
                Side::Partner,
                &l.partner,
                None,
                Some(banner),
            ));
        }
        let Some(stage) = stage.filter(|f| life.is_none() && agreed.contains_key(&f.name)) else {
            return out.iter().map(Notice::to_json).collect();
        };
        for (side, writes, portal, prop) in [
            (
                Side::Partner,
                &plan.partner_writes,
                l.partner.as_str(),
                &stage.partner_property,
            ),
            (
                Side::Hubspot,
                &plan.hubspot_writes,
                self.portals.hubspot.portal(),
                &stage.hubspot_property,
            ),
        ] {
            if let Some(stage) = writes.get(prop).and_then(Value::as_str) {
                out.push(Notice::new(
                    Event::StageChanged,
                    l,
                    side,
                    portal,
                    None,
                    Some(stage.to_owned()),
                ));
            }
        }
        out.iter().map(Notice::to_json).collect()
    }

    /// What the receiving sides hear about copies that arrived. Messages last changed before
    /// the link existed (a converted deal's history) are copied but not announced one by one.
    fn message_notices(&self, l: &Link, arrivals: &[messages::Arrival]) -> Vec<String> {
        use crate::notify::{Event, Notice};
        arrivals
            .iter()
            .filter(|a| a.original_ms.is_none_or(|ms| ms >= l.created_at))
            .map(
                |messages::Arrival {
                     side, comment, id, ..
                 }| {
                    let event = if *comment {
                        Event::CommentAdded
                    } else {
                        Event::MessageShared
                    };
                    let portal = match side {
                        Side::Partner => l.partner.as_str(),
                        Side::Hubspot => self.portals.hubspot.portal(),
                    };
                    Notice::new(event, l, *side, portal, Some(id.clone()), None).to_json()
                },
            )
            .collect()
    }

    /// Each involved portal's users, from the directory. A portal whose listing fails is left
    /// out: its team display waits for a later job, the sync does not.
    async fn directories(&self, links: &[&Link]) -> HashMap<String, Arc<Vec<Owner>>> {
        if links.is_empty() {
            return HashMap::new();
        }
        let partners = unique(links.iter().map(|l| l.partner.clone()));
        let clients = std::iter::once(&self.portals.hubspot)
            .chain(partners.iter().filter_map(|p| self.portals.partners.get(p)));
        let lists = futures_util::future::join_all(
            clients.map(|c| async move { (c.portal().to_owned(), self.directory.owners(c).await) }),
        )
        .await;
        lists
            .into_iter()
            .filter_map(|(portal, r)| match r {
                Ok(list) => Some((portal, list)),
                Err(e) => {
                    tracing::warn!(portal = %portal, error = %e, "cannot list the portal's users; deal teams are shown later");
                    None
                }
            })
            .collect()
    }

    /// Shows each side the other side's team (only what differs is written).
    fn plan_team(
        &self,
        l: &Link,
        p: &Record,
        h: &Record,
        dirs: &HashMap<String, Arc<Vec<Owner>>>,
        plan: &mut LinkPlan,
    ) {
        let (Some(hd), Some(pd)) = (
            dirs.get(self.portals.hubspot.portal()),
            dirs.get(&l.partner),
        ) else {
            return;
        };
        let hubspot_team = team::describe(h, hd);
        if p.get(crate::properties::HUBSPOT_TEAM).unwrap_or("") != hubspot_team {
            plan.partner_writes.insert(
                crate::properties::HUBSPOT_TEAM.into(),
                Value::String(hubspot_team),
            );
        }
        let line = team::describe(p, pd);
        let shown = h.get(crate::properties::PARTNER_TEAM).unwrap_or("");
        if team::partner_line(shown, &l.partner) != line {
            plan.hubspot_writes.insert(
                crate::properties::PARTNER_TEAM.into(),
                Value::String(team::with_partner_line(shown, &l.partner, &line)),
            );
        }
    }

    /// Answers `dealsync_team_add` on the partner deal and (when `h` is given) on the HubSpot
    /// deal: own users join, anyone else is refused with the reason. Never fails the job: a
    /// request that cannot be answered now stays set, and `true` asks for the job to come
    /// back for it; one whose write the portal refuses is cleared with the reason in
    /// `dealsync_team_status`.
    async fn team_requests(
        &self,
        l: &Link,
        p: &Record,
        h: Option<&Record>,
        dirs: &HashMap<String, Arc<Vec<Owner>>>,
    ) -> bool {
        let asked =
            |d: Option<&Record>| d.is_some_and(|d| d.get(crate::properties::TEAM_ADD).is_some());
        if !asked(Some(p)) && !asked(h) {
            return false;
        }
        let hs_portal = self.portals.hubspot.portal();
        let (Some(hd), Some(pd)) = (dirs.get(hs_portal), dirs.get(&l.partner)) else {
            return true;
        };
        // On HubSpot's side, the other accounts are every partner linked to the deal.
        let mut partner_dirs: Vec<(String, Arc<Vec<Owner>>)> = Vec::new();
        if h.is_some_and(|h| h.get(crate::properties::TEAM_ADD).is_some()) {
            let id = l.hubspot_deal_id.clone();
            let linked = self
                .store
                .call(move |c| store::links_for_deals(c, Side::Hubspot, "", &[id]))
                .await;
            let linked = match linked {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(link = l.id, error = %e, "cannot read the deal's links; its team request waits");
                    return true;
                }
            };
            for partner in unique(linked.into_iter().map(|(x, _)| x.partner)) {
                let Some(client) = self.portals.partners.get(&partner) else {
                    continue;
                };
                match self.directory.owners(client).await {
                    Ok(d) => partner_dirs.push((partner, d)),
                    Err(e) => {
                        tracing::warn!(portal = %partner, error = %e, "cannot list the partner's users; the team request waits");
                        return true;
                    }
                }
            }
        }
        let sides = [
            (
                Some(p),
                self.portals.partners.get(&l.partner),
                &l.partner_deal_id,
                pd,
                vec![("HubSpot", hd.as_slice())],
            ),
            (
                h,
                Some(&self.portals.hubspot),
                &l.hubspot_deal_id,
                hd,
                partner_dirs
                    .iter()
                    .map(|(n, d)| (n.as_str(), d.as_slice()))
                    .collect(),
            ),
        ];
        let mut again = false;
        for (deal, client, id, own, others) in sides {
            let (Some(deal), Some(client)) = (deal, client) else {
                continue;
            };
            let Some(request) = deal
                .get(crate::properties::TEAM_ADD)
                .filter(|r| !r.trim().is_empty())
            else {
                continue;
            };
            let additions = team::decide_additions(request, &team::members(deal), own, &others);
            let (collaborators, status) = team::apply_additions(deal, &additions);
            let mut props = Map::new();
            props.insert(crate::properties::TEAM_ADD.into(), "".into());
            props.insert(crate::properties::TEAM_STATUS.into(), Value::String(status));
            if let Some(c) = collaborators {
                props.insert(team::COLLABORATORS.into(), Value::String(c));
            }
            match client.update("deals", id, &props).await {
                Ok(_) => {
                    tracing::info!(link = l.id, portal = %client.portal(), "deal team request answered")
                }
                Err(e) if e.is_transient() => {
                    again = true;
                    tracing::warn!(link = l.id, portal = %client.portal(), error = %e, "cannot answer the deal team request now; the job comes back for it")
                }
                Err(e) => {
                    tracing::warn!(link = l.id, portal = %client.portal(), error = %e, "the portal refused the deal team change");
                    let mut refused = Map::new();
                    refused.insert(crate::properties::TEAM_ADD.into(), "".into());
                    refused.insert(
                        crate::properties::TEAM_STATUS.into(),
                        Value::String(format!("could not change the deal team: {e}")),
                    );
                    if let Err(e) = client.update("deals", id, &refused).await {
                        tracing::warn!(link = l.id, error = %e, "cannot write the deal team refusal");
                    }
                }
            }
        }
        again
    }

    /// Per HubSpot deal with quotes, the partner-facing summary (see [`crate::quotes`]).
    async fn quote_summaries(
        &self,
        deal_ids: &[String],
    ) -> Result<HashMap<String, String>, CrmError> {
        let c = &self.portals.hubspot;
        let mut assoc = c.associations("deals", "quotes", deal_ids).await?;
        // Every deal read gets an entry ("" without quotes): a deal missing from the map was
        // not read at all, and its partner deal is left as it is.
        for d in deal_ids {
            assoc.entry(d.clone()).or_default();
        }
        let ids = unique(assoc.values().flatten().cloned());
        if ids.is_empty() {
            return Ok(assoc.into_keys().map(|d| (d, String::new())).collect());
        }
        let read: HashMap<String, Record> = c
            .batch_read("quotes", &ids, &crate::quotes::props(), false)
            .await?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        Ok(assoc
            .into_iter()
            .map(|(deal, qs)| {
                let records: Vec<Record> = qs.iter().filter_map(|q| read.get(q).cloned()).collect();
                (deal, crate::quotes::summary(&records))
            })
            .collect())
    }

    /// The message half of a batch (see [`messages`]): reads what decides for every link at
    /// once, then contents of shared notes only, then writes per link.
    async fn sync_messages(
        &self,
        links: &[&Link],
        jobs: &HashMap<i64, &ClaimedJob>,
    ) -> Result<HashMap<i64, Result<messages::MessageOutcome, messages::MessageError>>, EngineError>
    {
        use messages::{Content, NoteHead};
        let mut results = HashMap::new();
        let hubspot_portal = self.portals.hubspot.portal().to_owned();
        // Step 1: every deal's notes and their deciding properties, per portal.
        let mut by_portal: HashMap<String, (Client, Vec<String>)> = HashMap::new();
        for l in links {
            by_portal
                .entry(hubspot_portal.clone())
                .or_insert_with(|| (self.portals.hubspot.clone(), Vec::new()))
                .1
                .push(l.hubspot_deal_id.clone());
            if let Some(c) = self.portals.partners.get(&l.partner) {
                by_portal
                    .entry(l.partner.clone())
                    .or_insert_with(|| (c.clone(), Vec::new()))
                    .1
                    .push(l.partner_deal_id.clone());
            }
        }
        type Heads = (HashMap<String, Vec<String>>, HashMap<String, NoteHead>);
        let reads = by_portal
            .iter()
            .map(|(portal, (client, deals))| async move {
                let deals = unique(deals.iter().cloned());
                let r: Result<Heads, CrmError> = async {
                    let assoc = client.associations("deals", "notes", &deals).await?;
                    let ids = unique(assoc.values().flatten().cloned());
                    let heads = client
                        .batch_read("notes", &ids, &messages::decide_props(), false)
                        .await?
                        .iter()
                        .map(|r| (r.id.clone(), NoteHead::from_record(r)))
                        .collect();
                    Ok((assoc, heads))
                }
                .await;
                (portal.clone(), r)
            });
        let heads: HashMap<String, Result<Heads, CrmError>> = futures_util::future::join_all(reads)
            .await
            .into_iter()
            .collect();
        let ids: Vec<i64> = links.iter().map(|l| l.id).collect();
        let hs_deals = unique(links.iter().map(|l| l.hubspot_deal_id.clone()));
        // The HubSpot deals' other links too: what they share is not this link's (isolation).
        let (recorded, counts, siblings) = self
            .store
            .call(move |c| {
                let siblings = store::link_ids_of_hubspot_deals(c, &hs_deals)?;
                let mut all: Vec<i64> = ids;
                all.extend(siblings.values().flatten().copied());
                all.sort_unstable();
                all.dedup();
                Ok((
                    store::object_links(c, &all)?,
                    store::active_links_per_hubspot_deal(c, &hs_deals)?,
                    siblings,
                ))
            })
            .await?;

        // Step 2: intents per link, and which contents to read.
        let notes_of = |portal: &str, deal: &str| -> Result<HashMap<String, NoteHead>, CrmError> {
            match heads.get(portal) {
                Some(Ok((assoc, heads))) => Ok(assoc
                    .get(deal)
                    .into_iter()
                    .flatten()
                    .filter_map(|id| heads.get(id).map(|h| (id.clone(), h.clone())))
                    .collect()),
                Some(Err(e)) => Err(e.clone()),
                None => Ok(HashMap::new()),
            }
        };
        let empty = Vec::new();
        let mut work = Vec::new();
        let mut wanted: HashMap<String, Vec<String>> = HashMap::new();
        for l in links {
            let notes = notes_of(&l.partner, &l.partner_deal_id)
                .and_then(|p| Ok((p, notes_of(&hubspot_portal, &l.hubspot_deal_id)?)));
            let (p, h) = match notes {
                Ok(v) => v,
                Err(e) => {
                    results.insert(l.id, Err(e.into()));
                    continue;
                }
            };
            let force = jobs
                .get(&l.id)
                .is_some_and(|j| j.reason.contains("sweep") || j.reason.contains("replay"));
            let pairs = recorded.get(&l.id).unwrap_or(&empty);
            let deal = messages::DealContext::new(
                l.id,
                counts.get(&l.hubspot_deal_id).copied().unwrap_or(1),
                &hubspot_portal,
                siblings
                    .get(&l.hubspot_deal_id)
                    .into_iter()
                    .flatten()
                    .flat_map(|id| recorded.get(id).into_iter().flatten().map(|o| (*id, o))),
            );
            let intents = messages::intend(l, &hubspot_portal, &deal, &p, &h, pairs);
            for i in &intents {
                let mut want = |side: Side, id: Option<&str>| {
                    let (portal, notes) = match side {
                        Side::Partner => (&l.partner, &p),
                        Side::Hubspot => (&hubspot_portal, &h),
                    };
                    // Contents of shared notes only.
                    if let Some(id) = id.filter(|id| notes.get(*id).is_some_and(|n| n.shared)) {
                        wanted
                            .entry(portal.clone())
                            .or_default()
                            .push(id.to_owned());
                    }
                };
                match i {
                    messages::Intent::Create { pair, from } => {
                        want(*from, messages::id_on(pair, *from));
                    }
                    messages::Intent::Sync { pair, .. } => {
                        let (pid, hid) = (
                            messages::id_on(pair, Side::Partner),
                            messages::id_on(pair, Side::Hubspot),
                        );
                        let (Some(pn), Some(hn)) =
                            (pid.and_then(|i| p.get(i)), hid.and_then(|i| h.get(i)))
                        else {
                            continue;
                        };
                        if messages::changed(pair, pn, hn, force) {
                            want(Side::Partner, pid);
                            want(Side::Hubspot, hid);
                        }
                    }
                    _ => {}
                }
            }
            work.push((*l, p, h, intents, force));
        }

        // Step 3: contents, per portal.
        let reads = wanted.into_iter().map(|(portal, ids)| {
            let client = if portal == hubspot_portal {
                Some(self.portals.hubspot.clone())
            } else {
                self.portals.partners.get(&portal).cloned()
            };
            async move {
                let r = match client {
                    Some(c) => c
                        .batch_read_with_history(
                            "notes",
                            &unique(ids.into_iter()),
                            &messages::content_props(),
                            // When the body itself changed, for latest_wins.
                            &["hs_note_body".to_owned()],
                        )
                        .await
                        .map(|rs| {
                            rs.iter()
                                .map(|r| (r.id.clone(), Content::from_record(r)))
                                .collect::<HashMap<_, _>>()
                        }),
                    None => Ok(HashMap::new()),
                };
                (portal, r)
            }
        });
        let contents: HashMap<String, Result<HashMap<String, Content>, CrmError>> =
            futures_util::future::join_all(reads)
                .await
                .into_iter()
                .collect();
        let no_contents = HashMap::new();
        let contents_of = |portal: &str| match contents.get(portal) {
            Some(Ok(m)) => Ok(m),
            Some(Err(e)) => Err(e.clone()),
            None => Ok(&no_contents),
        };

        // Step 4: say which copies are about to be made, then write, per link (in parallel).
        let creating: Vec<(i64, store::ObjectLink)> = work
            .iter()
            .flat_map(|(l, _, _, intents, _)| {
                intents.iter().filter_map(|i| match i {
                    messages::Intent::Create { pair, .. } if pair.state != "creating" => {
                        let mut p = pair.clone();
                        p.state = "creating".into();
                        Some((l.id, p))
                    }
                    _ => None,
                })
            })
            .collect();
        if !creating.is_empty() {
            self.store
                .call(move |c| store::record_creating(c, &creating))
                .await?;
        }
        let runs = work.iter().filter_map(|(l, p, h, intents, force)| {
            let client = self.portals.partners.get(&l.partner)?;
            let (pc, hc) = match (contents_of(&l.partner), contents_of(&hubspot_portal)) {
                (Ok(pc), Ok(hc)) => (pc, hc),
                (Err(e), _) | (_, Err(e)) => {
                    let e: messages::MessageError = e.into();
                    return Some(futures_util::future::Either::Left(
                        async move { (l.id, Err(e)) },
                    ));
                }
            };
            let partner = messages::SideView {
                portal: &l.partner,
                client,
                deal_id: &l.partner_deal_id,
                heads: p,
                contents: pc,
            };
            let hubspot = messages::SideView {
                portal: &hubspot_portal,
                client: &self.portals.hubspot,
                deal_id: &l.hubspot_deal_id,
                heads: h,
                contents: hc,
            };
            let pairs = recorded.get(&l.id).unwrap_or(&empty);
            let settings = &self.settings.messages;
            Some(futures_util::future::Either::Right(async move {
                let r = messages::execute(
                    l,
                    settings,
                    partner,
                    hubspot,
                    intents.clone(),
                    pairs,
                    *force,
                )
                .await;
                (l.id, r)
            }))
        });
        results.extend(futures_util::future::join_all(runs).await);
        Ok(results)
    }

    /// Batch-updates one portal; per deal id the new `hs_lastmodifieddate` or the error.
    async fn write(
        &self,
        client: &Client,
        updates: HashMap<String, Map<String, Value>>,
    ) -> HashMap<String, Result<Option<i64>, CrmError>> {
        let mut out = HashMap::new();
        if updates.is_empty() {
            return out;
        }
        let list: Vec<(String, Map<String, Value>)> = updates.into_iter().collect();
        let result = client.batch_update("deals", &list).await;
        for r in result.written {
            out.insert(r.id.clone(), Ok(r.last_modified_ms()));
        }
        for (id, e) in result.failed {
            out.insert(id, Err(e));
        }
        out
    }

    fn backoff(&self, attempts: i64) -> Duration {
        crate::backoff::Backoff {
            base: self.settings.retry_base,
            max: self.settings.retry_max,
            jitter: crate::backoff::Jitter::Down,
        }
        .delay_now(attempts)
    }
}

/// How often a job held by a missing or revoked OAuth install is looked at again.
const HELD_RETRY_MS: i64 = 30_000;

fn failed(e: &CrmError) -> Outcome {
    Outcome::Failed {
        error: e.report(),
        class: e.class(),
        fine_class: e.fine_class(),
    }
}

/// Whether a job was queued only because deals changed (`poll`, `webhook`, or both
/// coalesced): it needs no message or quote reads.
fn deal_only(reason: &str) -> bool {
    reason.split('+').all(|r| r == "poll" || r == "webhook")
}

fn unique(it: impl Iterator<Item = String>) -> Vec<String> {
    let mut seen = HashSet::new();
    it.filter(|s| seen.insert(s.clone())).collect()
}
