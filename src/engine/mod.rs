//! The engine: workers that take due jobs from the store's queue (a batch at a time) and run
//! each batch as a pipeline ([`Engine::run_batch`]): read both sides of every link in batches
//! → a pure plan of the whole batch (`batch`, `plan`) → write both sides in batches and
//! commit the fields → follow-up work (quote and team requests, shared messages) → settle:
//! commit the jobs, schedule retries, dead-letter what cannot succeed.
//!
//! Invariants:
//! - Jobs of one link never run concurrently: claiming marks them running in the store
//!   thread, atomically.
//! - Store updates for a job commit only after its writes succeeded; a crash in between
//!   leaves the job to run again, and the re-run sees both sides equal (no second write).
//! - Transient failures retry with exponential backoff and jitter; permanent failures and
//!   exhausted retries go to the dead-letter file, with the reason.

pub mod batch;
pub mod marking;
mod message_batch;
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
    /// Each portal's message marking (shared with the invitation poller).
    markings: Arc<messages::Markings>,
}

impl Engine {
    /// An engine over `store` and the portals' clients. `wake` is the notify pollers, the
    /// listener and the sweep poke when they queue work; the in-flight set, heartbeat, metrics
    /// and user directory start empty and are shared through the accessors below.
    pub fn new(store: Store, portals: Portals, settings: Settings, wake: Arc<Notify>) -> Engine {
        Engine {
            store,
            portals,
            wake,
            in_flight: InFlight::default(),
            heartbeat: Heartbeat::default(),
            metrics: Arc::default(),
            directory: Arc::default(),
            markings: Arc::new(messages::Markings::new(&settings.messages)),
            settings,
        }
    }

    /// Each portal's message marking.
    pub fn markings(&self) -> &Arc<messages::Markings> {
        &self.markings
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
        fine_class: deadletter::DeadClass,
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
                .call(move |c| {
                    let now = store::now_ms();
                    let mut jobs = store::claim_jobs(c, limit, now)?;
                    let sweep = store::Reasons::from(store::JobReason::Sweep);
                    // A full batch of sweep jobs grows to HubSpot's association read cap: the
                    // sweep reads every link's associations, ten times fewer calls this way.
                    if jobs.len() == limit && jobs.iter().all(|j| j.reason == sweep) {
                        let more = crate::crm::ASSOC_BATCH.saturating_sub(limit);
                        jobs.extend(store::claim_sweep_jobs(c, more, now)?);
                    }
                    Ok(jobs)
                })
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

    /// Runs one batch of claimed jobs, step by step: read, plan (pure), write and commit the
    /// fields, follow-up work, settle. Every job ends in exactly one outcome: committed,
    /// retried later or dead-lettered.
    pub async fn run_batch(&self, jobs: Vec<ClaimedJob>) -> Result<(), EngineError> {
        let by_id: HashMap<i64, &ClaimedJob> = jobs.iter().map(|j| (j.link_id, j)).collect();
        let ids: Vec<i64> = jobs.iter().map(|j| j.link_id).collect();
        let ids2 = ids.clone();
        let (links, shadows) = self
            .store
            .call(move |c| Ok((store::links_by_ids(c, &ids2)?, store::shadows(c, &ids2)?)))
            .await?;
        let mut outcomes = skipped(&ids, &links);
        let active: Vec<&Link> = links
            .iter()
            .filter(|l| l.state == store::LinkState::Active)
            .collect();

        let read = self.read_batch(&active, &by_id, &mut outcomes).await;
        self.heartbeat.beat();
        let readable: Vec<&Link> = active
            .iter()
            .copied()
            .filter(|l| !outcomes.contains_key(&l.id))
            .collect();
        let planned = batch::plan_batch(&readable, &read.view(self, &shadows), &self.settings);
        for (id, f) in planned.failed {
            outcomes.insert(
                id,
                match f {
                    batch::Failure::Read(e) => failed(e),
                    batch::Failure::Plan(e) => Outcome::Failed {
                        error: e.to_string(),
                        class: ErrorClass::Permanent,
                        fine_class: deadletter::DeadClass::UnmappedStage,
                    },
                },
            );
        }
        self.judge_deletions(planned.gone, &mut outcomes).await?;

        let (mut fields_done, field_conflicts) = self
            .write_fields(planned.plans, &planned.lives, &shadows, &mut outcomes)
            .await?;
        // Follow-up work only for links whose fields went through and that stay active.
        fields_done.retain(|l| !planned.lives.contains_key(&l.id));
        self.requests(&fields_done, &read, &by_id, &mut outcomes)
            .await;
        let partial_files = self
            .messages_step(&fields_done, &links, &by_id, &mut outcomes)
            .await?;
        self.settle(outcomes, &links, &by_id, partial_files, field_conflicts)
            .await
    }

    /// Reads the batch's deals on every portal at once (one round trip), with HubSpot's
    /// quotes and the portals' users alongside: every call between the reads and the writes
    /// (retried under faults) would widen HubSpot's lost-update race. A failed HubSpot or
    /// quote read fails every link; a failed partner read fails that partner's links (in the
    /// plan).
    async fn read_batch(
        &self,
        active: &[&Link],
        by_id: &HashMap<i64, &ClaimedJob>,
        outcomes: &mut HashMap<i64, Outcome>,
    ) -> BatchRead {
        let hs_ids: Vec<String> = unique(active.iter().map(|l| l.hubspot_deal_id.clone()));
        let hs_props = self.hubspot_props();
        let hs_fut = self
            .portals
            .hubspot
            .batch_read("deals", &hs_ids, &hs_props, true);
        // Quotes only for jobs not queued by deal changes alone (quote changes queue their own).
        let quote_ids: Vec<String> = unique(
            active
                .iter()
                .filter(|l| by_id.get(&l.id).is_some_and(|j| !j.reason.deal_only()))
                .map(|l| l.hubspot_deal_id.clone()),
        );
        let quotes_fut = async {
            if quote_ids.is_empty() {
                Ok(HashMap::new())
            } else {
                self.quote_summaries(&quote_ids).await
            }
        };
        let (hs_read, partners, quotes_read, dirs) = tokio::join!(
            hs_fut,
            self.read_partners(active),
            quotes_fut,
            self.directories(active)
        );
        let hubspot = match hs_read {
            Ok(rs) => rs.into_iter().map(|r| (r.id.clone(), r)).collect(),
            Err(e) => {
                for l in active {
                    outcomes.insert(l.id, failed(&e));
                }
                HashMap::new()
            }
        };
        let quotes = quotes_read.unwrap_or_else(|e| {
            for l in active {
                outcomes.entry(l.id).or_insert_with(|| failed(&e));
            }
            HashMap::new()
        });
        BatchRead {
            hubspot,
            partners,
            quotes,
            dirs,
        }
    }

    /// Every partner's deals of the batch, read at once.
    async fn read_partners(&self, active: &[&Link]) -> HashMap<String, PartnerRead> {
        let props = self.partner_props();
        let reads = unique(active.iter().map(|l| l.partner.clone()))
            .into_iter()
            .map(|partner| {
                let deal_ids: Vec<String> = unique(
                    active
                        .iter()
                        .filter(|l| l.partner == partner)
                        .map(|l| l.partner_deal_id.clone()),
                );
                let client = self.portals.partners.get(&partner);
                let props = &props;
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
        futures_util::future::join_all(reads)
            .await
            .into_iter()
            .collect()
    }

    /// Writes the planned fields (both portals at once), records each link's outcome, and
    /// commits the fields' shadows right away. Returns the links whose fields went through and
    /// the number of field conflicts committed.
    ///
    /// The early commit keeps our writes and their shadows as close together as possible: a
    /// change someone makes between our write and this commit, back to the old agreed value,
    /// would look like no change after a crash and be overwritten; the message half can take
    /// seconds (file copies), so it must not sit inside that window.
    async fn write_fields<'l>(
        &self,
        plans: Vec<(&'l Link, LinkPlan)>,
        lives: &HashMap<i64, Lifecycle>,
        shadows: &HashMap<i64, HashMap<String, Option<String>>>,
        outcomes: &mut HashMap<i64, Outcome>,
    ) -> Result<(Vec<&'l Link>, usize), EngineError> {
        let updates = batch::merge_writes(&plans);
        // Held until the outcomes (and the timestamps our writes produced) are committed, so
        // the ingest paths judge these deals after the commit (echoes cost no job).
        let in_flight = self.in_flight.mark(
            plans
                .iter()
                .filter(|(_, p)| !p.hubspot_writes.is_empty() || !p.partner_writes.is_empty())
                .map(|(l, _)| l.id)
                .collect(),
        );
        let partner_writes = updates.partners.into_iter().filter_map(|(partner, u)| {
            self.portals
                .partners
                .get(&partner)
                .map(|client| async move { (partner, self.write(client, u).await) })
        });
        let (hs_result, p_list) = tokio::join!(
            self.write(&self.portals.hubspot, updates.hubspot),
            futures_util::future::join_all(partner_writes)
        );
        let p_results: HashMap<String, _> = p_list.into_iter().collect();
        self.heartbeat.beat();

        let no_shadows = HashMap::new();
        let mut done = Vec::new();
        let mut early = Vec::new();
        for (l, plan) in plans {
            let hs_w = hs_result.get(&l.hubspot_deal_id);
            let p_w = p_results
                .get(&l.partner)
                .and_then(|m| m.get(&l.partner_deal_id));
            if let Some(e) = [hs_w, p_w]
                .into_iter()
                .flatten()
                .find_map(|r| r.as_ref().err())
            {
                outcomes.insert(l.id, failed(e));
                continue;
            }
            let life = lives.get(&l.id).copied();
            let notices = if self.settings.notify.enabled() {
                let agreed = shadows.get(&l.id).unwrap_or(&no_shadows);
                self.field_notices(l, &plan, life, agreed)
            } else {
                Vec::new()
            };
            let (commit, outcome) = field_commit(l, plan, life, ms(hs_w), ms(p_w), notices);
            early.push(commit);
            outcomes.insert(l.id, Outcome::Done(outcome));
            done.push(l);
        }
        let conflicts = early.iter().map(|c| c.conflicts.len()).sum();
        if !early.is_empty() {
            self.store
                .call(move |c| store::commit_fields(c, &early))
                .await?;
        }
        drop(in_flight);
        Ok((done, conflicts))
    }

    /// Quote requests and deal-team additions people asked for on the deals. Neither fails
    /// the fields: a request that cannot be answered now brings the job back later.
    async fn requests(
        &self,
        links: &[&Link],
        read: &BatchRead,
        by_id: &HashMap<i64, &ClaimedJob>,
        outcomes: &mut HashMap<i64, Outcome>,
    ) {
        for l in links {
            let Some(text) = read
                .partner(l)
                .and_then(|r| r.get(crate::properties::QUOTE_REQUEST))
            else {
                continue;
            };
            let owner = read
                .hubspot
                .get(&l.hubspot_deal_id)
                .and_then(|r| r.get("hubspot_owner_id"));
            if let Err(e) = self.quote_request(l, text, owner).await {
                outcomes.insert(l.id, failed(&e));
            }
        }
        let mut asked: HashSet<String> = HashSet::new();
        for l in links {
            let (Some(p), Some(h)) = (read.partner(l), read.hubspot.get(&l.hubspot_deal_id)) else {
                continue;
            };
            // A HubSpot deal with several links answers its request once per batch (two
            // workers answering it at once write the same result).
            let h = asked.insert(l.hubspot_deal_id.clone()).then_some(h);
            if !self.team_requests(l, p, h, &read.dirs).await {
                continue;
            }
            let job = by_id[&l.id];
            if let Some(Outcome::Done(c)) = outcomes.get_mut(&l.id) {
                if c.retry.is_none() && job.attempts + 1 < self.settings.max_attempts {
                    let due = store::now_ms() + self.backoff(job.attempts).as_millis() as i64;
                    c.retry = Some((due, "a deal team request waits for its portal".into()));
                }
            }
        }
    }

    /// Shared messages of the links whose jobs were not queued by deal changes alone (note
    /// changes queue their own jobs, and the sweep covers the rest). Returns the file copies
    /// made by message runs that then failed (see `MessageError::files`), to record with the
    /// settlement.
    async fn messages_step(
        &self,
        done: &[&Link],
        links: &[Link],
        by_id: &HashMap<i64, &ClaimedJob>,
        outcomes: &mut HashMap<i64, Outcome>,
    ) -> Result<Vec<(i64, Vec<store::ObjectLink>)>, EngineError> {
        let message_links: Vec<&Link> = done
            .iter()
            .copied()
            .filter(|l| by_id.get(&l.id).is_some_and(|j| !j.reason.deal_only()))
            .collect();
        let mut partial_files = Vec::new();
        if !self.settings.messages.enabled || message_links.is_empty() {
            return Ok(partial_files);
        }
        self.heartbeat.beat();
        for (id, r) in self.sync_messages(&message_links, by_id).await? {
            let m = match r {
                Ok(m) => m,
                Err(e) => {
                    if !e.files.is_empty() {
                        partial_files.push((id, e.files));
                    }
                    outcomes.insert(
                        id,
                        Outcome::Failed {
                            error: e.error,
                            class: e.class,
                            fine_class: deadletter::DeadClass::Permanent,
                        },
                    );
                    continue;
                }
            };
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
                c.outcome = store::JobOutcome::Synced;
            }
            c.more = m.more;
            if let Some(at) = m.recheck_at {
                c.retry = Some((
                    at,
                    "a note on the deal changed too recently for HubSpot's search to show whether it starts with the tag; it is looked at again".into(),
                ));
            }
            let Some(why) = m.waiting else { continue };
            let job = by_id[&id];
            if job.attempts + 1 >= self.settings.max_attempts {
                outcomes.insert(
                    id,
                    Outcome::Failed {
                        error: why,
                        class: ErrorClass::Permanent,
                        fine_class: deadletter::DeadClass::UnknownParent,
                    },
                );
            } else {
                let due = store::now_ms() + self.backoff(job.attempts).as_millis() as i64;
                c.retry = Some((due, why));
            }
        }
        Ok(partial_files)
    }

    /// Ends every job: successes commit together, transient failures retry with backoff (a
    /// held portal's after [`HELD_RETRY_MS`]), the rest are dead-lettered (the file first,
    /// so a crash between the two leaves a job to run again, never a lost failure).
    async fn settle(
        &self,
        outcomes: HashMap<i64, Outcome>,
        links: &[Link],
        by_id: &HashMap<i64, &ClaimedJob>,
        partial_files: Vec<(i64, Vec<store::ObjectLink>)>,
        field_conflicts: usize,
    ) -> Result<(), EngineError> {
        let mut commits = Vec::new();
        let mut retries = Vec::new();
        let mut dead = Vec::new();
        for (id, o) in outcomes {
            let (error, class, fine_class) = match o {
                Outcome::Done(c) => {
                    commits.push(c);
                    continue;
                }
                Outcome::Failed {
                    error,
                    class,
                    fine_class,
                } => (error, class, fine_class),
            };
            let job = by_id[&id];
            let exhausted = job.attempts + 1 >= self.settings.max_attempts;
            match class {
                ErrorClass::Held => retries.push((id, store::now_ms() + HELD_RETRY_MS, error)),
                ErrorClass::Transient if !exhausted => {
                    let due = store::now_ms() + self.backoff(job.attempts).as_millis() as i64;
                    retries.push((id, due, error));
                }
                _ => {
                    let class = if class == ErrorClass::Transient {
                        deadletter::DeadClass::Exhausted
                    } else {
                        fine_class
                    };
                    dead.push(deadletter::Entry::for_job(
                        subject(links, id),
                        &job.reason.label(),
                        error,
                        class,
                        job.attempts + 1,
                        job.first_failed_at,
                    ));
                }
            }
        }
        self.dead_letter(&dead).await?;
        // What the metrics will say once the commit succeeds.
        let now = store::now_ms();
        let synced_ages: Vec<f64> = commits
            .iter()
            .filter(|c| c.outcome == store::JobOutcome::Synced)
            .filter_map(|c| by_id.get(&c.link_id))
            .map(|j| (now - j.enqueued_at).max(0) as f64 / 1000.0)
            .collect();
        let outcomes: Vec<store::JobOutcome> = commits.iter().map(|c| c.outcome.clone()).collect();
        let conflicts = field_conflicts + commits.iter().map(|c| c.conflicts.len()).sum::<usize>();
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
            self.metrics.job(&store::JobOutcome::Retry);
        }
        for _ in 0..n_dead {
            self.metrics.job(&store::JobOutcome::DeadLetter);
        }
        self.metrics.dead_lettered(n_dead as u64);
        self.metrics.conflicted(conflicts as u64);
        for age in synced_ages {
            self.metrics.propagated(age);
        }
        Ok(())
    }

    /// Appends entries to the dead-letter file (fsynced) off the runtime's threads.
    async fn dead_letter(&self, dead: &[deadletter::Entry]) -> Result<(), EngineError> {
        if dead.is_empty() {
            return Ok(());
        }
        let path = self.settings.dead_letter_path.clone();
        let entries = dead.to_vec();
        tokio::task::spawn_blocking(move || deadletter::append(&path, &entries))
            .await
            .map_err(|e| StoreError::Corrupt(format!("dead-letter writer failed: {e}")))??;
        for d in dead {
            tracing::error!(link = d.link_id, partner = %d.partner, class = %d.class, error = %d.error, "job dead-lettered");
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
                        new_state: Some(store::LinkState::Orphaned),
                        outcome: store::JobOutcome::Orphaned(format!(
                            "{what} is archived or deleted"
                        )),
                        ..Default::default()
                    }
                } else {
                    JobCommit {
                        link_id: l.id,
                        outcome: store::JobOutcome::Held(format!("{what} looks deleted, but the mass-deletion guard for {portal} is tripped")),
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
        if !known {
            let note = self
                .markings
                .shared_note(
                    hs,
                    &format!("Quote request from {}: {text}", l.partner),
                    &l.partner,
                )
                .await?;
            hs.create(
                "notes",
                &note,
                crate::crm::to_deal(&l.hubspot_deal_id, crate::crm::NOTE_TO_DEAL),
            )
            .await?;
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

/// One partner's deals of a batch, or why they could not be read.
type PartnerRead = Result<HashMap<String, Record>, CrmError>;

/// What [`Engine::read_batch`] read.
struct BatchRead {
    hubspot: HashMap<String, Record>,
    partners: HashMap<String, PartnerRead>,
    quotes: HashMap<String, String>,
    dirs: HashMap<String, Arc<Vec<Owner>>>,
}

impl BatchRead {
    fn view<'a>(
        &'a self,
        engine: &'a Engine,
        shadows: &'a HashMap<i64, HashMap<String, Option<String>>>,
    ) -> batch::Reads<'a> {
        batch::Reads {
            hubspot_portal: engine.portals.hubspot.portal(),
            hubspot: &self.hubspot,
            partners: &self.partners,
            quotes: &self.quotes,
            dirs: &self.dirs,
            shadows,
        }
    }

    /// The link's partner deal, if it was read.
    fn partner(&self, l: &Link) -> Option<&Record> {
        self.partners
            .get(&l.partner)
            .and_then(|r| r.as_ref().ok())
            .and_then(|m| m.get(&l.partner_deal_id))
    }
}

/// Outcomes of the jobs whose link is not active (or no longer exists): nothing to do.
fn skipped(ids: &[i64], links: &[Link]) -> HashMap<i64, Outcome> {
    let mut out = HashMap::new();
    for id in ids {
        let outcome = match links.iter().find(|l| l.id == *id) {
            None => store::JobOutcome::Skipped(None),
            Some(l) if l.state != store::LinkState::Active => {
                store::JobOutcome::Skipped(Some(l.state))
            }
            Some(_) => continue,
        };
        out.insert(
            *id,
            Outcome::Done(JobCommit {
                link_id: *id,
                outcome,
                ..Default::default()
            }),
        );
    }
    out
}

/// The last-modified time a successful write reported.
fn ms(w: Option<&Result<Option<i64>, CrmError>>) -> Option<i64> {
    w.and_then(|r| r.as_ref().ok().copied().flatten())
}

/// A link whose field writes succeeded: what commits now (shadows, conflicts, write times,
/// the new link state, notices) and the job's outcome, which commits at the end.
fn field_commit(
    l: &Link,
    plan: LinkPlan,
    life: Option<Lifecycle>,
    hubspot_written_ms: Option<i64>,
    partner_written_ms: Option<i64>,
    notices: Vec<String>,
) -> (JobCommit, JobCommit) {
    let wrote = !plan.hubspot_writes.is_empty() || !plan.partner_writes.is_empty();
    let new_state = life.map(Lifecycle::link_state);
    let outcome = match new_state {
        Some(state) => store::JobOutcome::Link(state),
        None if wrote => store::JobOutcome::Synced,
        None => store::JobOutcome::NoChange,
    };
    let now = JobCommit {
        link_id: l.id,
        shadows: plan.shadows,
        conflicts: plan.conflicts,
        partner_written_ms,
        hubspot_written_ms,
        new_state,
        notices,
        ..Default::default()
    };
    let end = JobCommit {
        link_id: l.id,
        outcome,
        new_state,
        ..Default::default()
    };
    (now, end)
}

/// Who a dead letter is about: the link's deals, or only its id if it is gone.
fn subject(links: &[Link], id: i64) -> deadletter::Subject {
    match links.iter().find(|l| l.id == id) {
        Some(l) => deadletter::Subject {
            link_id: id,
            partner: l.partner.clone(),
            partner_deal_id: l.partner_deal_id.clone(),
            hubspot_deal_id: l.hubspot_deal_id.clone(),
        },
        None => deadletter::Subject {
            link_id: id,
            ..Default::default()
        },
    }
}

fn failed(e: &CrmError) -> Outcome {
    Outcome::Failed {
        error: e.report(),
        class: e.class(),
        fine_class: deadletter::DeadClass::from_label(e.fine_class()),
    }
}

fn unique(it: impl Iterator<Item = String>) -> Vec<String> {
    let mut seen = HashSet::new();
    it.filter(|s| seen.insert(s.clone())).collect()
}
