//! The poller: CRM search on `hs_lastmodifieddate` from the persisted cursor minus an overlap,
//! ascending, paged.
//!
//! Correctness at the edges:
//! - **Overlap.** Search is eventually consistent; a record modified before the cursor may
//!   appear late, by at most the configured `overlap / 2`. Most polls read only from the
//!   cursor on (cheap: new changes only); at least every `overlap / 2` a poll starts `overlap`
//!   before the cursor instead. A record modified at `T` is searchable by `T + overlap/2`, and
//!   the next wide poll starts no later than that and reaches back to before `T`, so nothing
//!   late is missed, while a backlog inside the overlap is not re-read on every poll. A per-deal
//!   memory of the last timestamp seen keeps re-read records from queuing the same change twice.
//! - **Keyset paging.** Search's `after` is an offset into a result set that moves while we
//!   page: every deal modified meanwhile (our own writes included) jumps to the end, and the
//!   records behind it shift down past the offset, unseen. So every page is a fresh query from
//!   the last record seen with a strict `(timestamp, id)` lower bound — `ts > last OR
//!   (ts = last AND id > last_id)` — which also keeps a run of changes in the same millisecond
//!   at a page boundary from being skipped or repeated, and never comes near search's
//!   10,000-result cap.
//! - **Crash safety.** Queued jobs and the cursor commit in one transaction per page.
//! - **Echoes.** A deal whose `hs_lastmodifieddate` equals the one our own last write produced
//!   needs no job (the shadow would say "nothing to do" anyway; this saves two reads). A deal
//!   seen while the engine's write to it is still on its way ([`InFlight`]) cannot be judged
//!   yet — the timestamp the write produced is not in the store — so it is set aside and
//!   judged at the next poll. (Set-aside deals live in memory: after a crash the first poll is
//!   a wide one and sees them again.) A change a person makes in the instant between our read
//!   and our write of the same deal is hidden behind our write's timestamp in search; webhooks
//!   and the sweep pick it up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::crm::{Client, CrmError, SEARCH_PAGE};
use crate::engine::InFlight;
use crate::store::{self, Link, Side, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Crm(#[from] CrmError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one poll did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PollStats {
    pub records: usize,
    pub queued: usize,
    pub echoes: usize,
    /// Search pages read.
    pub pages: usize,
}

pub struct Poller {
    /// The portal name (for partners, as in links).
    pub portal: String,
    /// What is polled: `deals`, or `notes` (shared messages; see [`Poller::for_notes`]).
    pub object: &'static str,
    /// The cursor's and portal health's key: the portal name for deals, `portal/notes`.
    pub key: String,
    pub side: Side,
    pub client: Client,
    pub store: Store,
    pub interval: Duration,
    pub overlap: Duration,
    pub wake: Arc<Notify>,
    seen: HashMap<String, i64>,
    /// When the last poll reaching back `overlap` started.
    last_wide: Option<Instant>,
    /// Links the engine is writing right now; shared with the engine.
    pub in_flight: InFlight,
    /// Deals seen while our write to them was in flight: (deal id, timestamp seen).
    deferred: Vec<(String, i64)>,
    /// Set when the portal also sends webhooks.
    pace: Option<WebhookPace>,
    /// Whether the last pace decision found the portal's webhooks healthy (for logging changes).
    webhooks_healthy: Option<bool>,
    /// For a partner's deal poller: registrations started in its CRM (`dealsync_register`).
    enrolment: Option<Enrolment>,
    /// For HubSpot's deal poller: partners added to HubSpot deals (see [`crate::invite`]).
    invitations: Option<Invitations>,
    /// Woken by the webhook listener when an event concerns an unlinked deal: poll now.
    nudge: Option<Arc<Notify>>,
    /// Set while the portal's deal poller scans; its note and quote pollers skip a round then,
    /// leaving the portal's search budget to the deal backlog.
    scanning: Option<(Arc<std::sync::atomic::AtomicBool>, bool)>,
}

/// What HubSpot's deal poller needs to act on partners added to HubSpot deals.
#[derive(Clone)]
pub struct Invitations {
    pub partners: std::sync::Arc<HashMap<String, (Client, crate::register::RegistrationSettings)>>,
    /// How the welcome note is marked as a shared message.
    pub markings: Arc<crate::engine::messages::Markings>,
}

/// What a partner's deal poller needs to register deals marked in the partner's CRM.
#[derive(Clone)]
pub struct Enrolment {
    pub hubspot: Client,
    pub settings: crate::register::RegistrationSettings,
}

/// How polling paces itself for a portal that also sends webhooks: while they are healthy,
/// polling is only the safety net and runs at `healthy_interval`; when polling finds a change
/// more than `quiet_after` after the portal's last webhook, the webhooks are quiet and polling
/// returns to its normal interval.
#[derive(Debug, Clone, Copy)]
pub struct WebhookPace {
    pub healthy_interval: Duration,
    pub quiet_after: Duration,
}

/// Whether a portal's webhooks are healthy: one has arrived, and polling has found no change
/// more than `quiet_after` after the last one.
pub fn webhooks_healthy(h: &store::WebhookHealth, quiet_after: Duration) -> bool {
    h.last_webhook.is_some_and(|w| {
        h.last_poll_change.is_none_or(|c| {
            c <= w.saturating_add(i64::try_from(quiet_after.as_millis()).unwrap_or(i64::MAX))
        })
    })
}

impl Poller {
    pub fn new(
        portal: &str,
        side: Side,
        client: Client,
        store: Store,
        interval: Duration,
        overlap: Duration,
        wake: Arc<Notify>,
    ) -> Poller {
        Poller {
            portal: portal.to_owned(),
            object: "deals",
            key: portal.to_owned(),
            side,
            client,
            store,
            interval,
            overlap,
            wake,
            seen: HashMap::new(),
            last_wide: None,
            in_flight: InFlight::default(),
            deferred: Vec::new(),
            pace: None,
            webhooks_healthy: None,
            enrolment: None,
            invitations: None,
            nudge: None,
            scanning: None,
        }
    }

    /// Shares a "deal scan in progress" flag: the deal poller (`owner`) sets it while it
    /// scans; the portal's other pollers skip their round while it is set.
    pub fn with_scan_flag(
        mut self,
        flag: Arc<std::sync::atomic::AtomicBool>,
        owner: bool,
    ) -> Poller {
        self.scanning = Some((flag, owner));
        self
    }

    /// Polls at once when `nudge` is notified (see [`crate::ingest::webhook::Listener::nudges`]).
    pub fn with_nudge(mut self, nudge: Arc<Notify>) -> Poller {
        self.nudge = Some(nudge);
        self
    }

    /// Acts on HubSpot deals that name a partner to add (HubSpot's deal poller only).
    pub fn with_invitations(mut self, invitations: Invitations) -> Poller {
        self.invitations = Some(invitations);
        self
    }

    /// The properties a search page carries.
    fn search_props(&self) -> Vec<String> {
        let mut v = vec!["hs_lastmodifieddate".to_owned()];
        if self.enrolment.is_some() {
            v.push(crate::properties::REGISTER.into());
        }
        if self.invitations.is_some() {
            v.extend(crate::invite::props());
            v.push(crate::properties::DEAL_STATUS.into());
        }
        v
    }

    /// Registers unlinked deals the partner marks with `dealsync_register` (partner deal
    /// pollers only): the same as `dealsync register --deal`, with a refusal shown on the deal.
    pub fn with_enrolment(mut self, enrolment: Enrolment) -> Poller {
        self.enrolment = Some(enrolment);
        self
    }

    /// Registers the deals marked for registration, then clears the mark (so a refused deal
    /// is not retried on every poll: the partner fixes it and marks it again).
    async fn enroll(&self, deals: Vec<String>) {
        let Some(e) = &self.enrolment else { return };
        let registrar = crate::register::Registrar {
            store: &self.store,
            hubspot: &e.hubspot,
            partner: &self.client,
            capacity: e.settings.capacity,
            hubspot_pipeline: &e.settings.hubspot_pipeline,
            partner_pipeline: &e.settings.partner_pipeline,
            default_owner_id: e.settings.default_owner_id.as_deref(),
            synced: &e.settings.synced,
        };
        for deal in deals {
            let converted = registrar.convert(&deal, false).await;
            let refusal = match &converted {
                Ok(_) => Some(None),
                Err(crate::register::RegisterError::Refused(why)) => Some(Some(why.to_string())),
                Err(_) => None,
            };
            if let Some(reason) = refusal {
                let (partner, d) = (self.portal.clone(), deal.clone());
                let recorded = self
                    .store
                    .call(move |c| store::record_refusal(c, &partner, &d, reason.as_deref()))
                    .await;
                if let Err(e) = recorded {
                    tracing::warn!(partner = %self.portal, deal = %deal, error = %e, "cannot record the registration's outcome for status");
                }
            }
            match converted {
                Ok(r) => {
                    tracing::info!(partner = %self.portal, deal = %deal, hubspot_deal = ?r.hubspot_deal_id, deal_type = %r.deal_type, "registered from the partner's CRM")
                }
                Err(crate::register::RegisterError::Refused(why)) => {
                    tracing::info!(partner = %self.portal, deal = %deal, reason = %why, "registration from the partner's CRM refused");
                }
                Err(e) => {
                    tracing::warn!(partner = %self.portal, deal = %deal, error = %e, "registration from the partner's CRM failed; it is tried again when the deal changes");
                    continue;
                }
            }
            let mut clear = serde_json::Map::new();
            clear.insert(crate::properties::REGISTER.into(), json!("false"));
            if let Err(e) = self.client.update("deals", &deal, &clear).await {
                tracing::warn!(partner = %self.portal, deal = %deal, error = %e, "cannot clear dealsync_register");
            }
        }
    }

    /// Polls the portal's notes instead of its deals: a changed note queues the jobs of the
    /// linked deals it is associated with (HubSpot sends no association events for notes, so
    /// polling is how messages are found). A note whose `hs_lastmodifieddate` is the one the
    /// last sync of its message recorded (our own write, or a change already carried) is an
    /// echo and queues nothing.
    pub fn for_notes(self) -> Poller {
        self.for_associated("notes")
    }

    /// Polls objects associated with deals (`notes`, `quotes`): a change queues the linked
    /// deals' jobs. The cursor is `portal/object`.
    pub fn for_associated(mut self, object: &'static str) -> Poller {
        self.object = object;
        self.key = format!("{}/{object}", self.portal);
        self
    }

    /// Paces polling by the portal's webhook health.
    pub fn with_webhook_pace(mut self, pace: WebhookPace) -> Poller {
        self.pace = Some(pace);
        self
    }

    /// The wait before the next poll.
    async fn next_interval(&mut self) -> Duration {
        let Some(pace) = self.pace else {
            return self.interval;
        };
        let portal = self.portal.clone();
        let health = match self
            .store
            .call(move |c| store::webhook_health(c, &portal))
            .await
        {
            Ok(h) => h,
            Err(_) => return self.interval,
        };
        let healthy = webhooks_healthy(&health, pace.quiet_after);
        if self.webhooks_healthy != Some(healthy) {
            if healthy {
                tracing::info!(portal = %self.portal, interval_ms = pace.healthy_interval.as_millis() as u64, "webhooks healthy; polling slows to a safety net");
            } else if self.webhooks_healthy.is_some() {
                tracing::warn!(portal = %self.portal, quiet_after_ms = pace.quiet_after.as_millis() as u64, "webhooks quiet while polling finds changes; polling at the normal interval");
            }
            self.webhooks_healthy = Some(healthy);
        }
        if healthy {
            pace.healthy_interval
        } else {
            self.interval
        }
    }

    /// Shares the engine's record of writes in flight (without it every echo seen
    /// mid-write costs a job).
    pub fn with_in_flight(mut self, in_flight: InFlight) -> Poller {
        self.in_flight = in_flight;
        self
    }

    /// Splits looked-up links into jobs to queue and deals to judge later; counts echoes.
    /// `generation` is the in-flight generation taken before the links were looked up: if a
    /// write finished since, a link's `written` may predate it, so a mismatch is judged later.
    fn judge(
        &mut self,
        links: &[(Link, Option<i64>)],
        ts_of: &HashMap<String, i64>,
        generation: u64,
        stats: &mut PollStats,
    ) -> Vec<i64> {
        let raced = self.in_flight.generation() != generation;
        let mut queue = Vec::new();
        for (link, written) in links {
            let deal = match self.side {
                Side::Partner => &link.partner_deal_id,
                Side::Hubspot => &link.hubspot_deal_id,
            };
            let Some(ts) = ts_of.get(deal).copied() else {
                continue;
            };
            if *written == Some(ts) {
                stats.echoes += 1;
            } else if raced || self.in_flight.contains(link.id) {
                self.deferred.push((deal.clone(), ts));
            } else {
                queue.push(link.id);
            }
        }
        queue
    }

    async fn lookup(&self, ids: Vec<String>) -> Result<Vec<(Link, Option<i64>)>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let (side, portal) = (self.side, self.portal.clone());
        self.store
            .call(move |c| store::links_for_deals(c, side, &portal, &ids))
            .await
    }

    /// The links whose deals changed notes belong to, echoes left out.
    async fn note_jobs(
        &self,
        fresh: &[(String, i64)],
        stats: &mut PollStats,
    ) -> Result<Vec<i64>, PollError> {
        if fresh.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = fresh.iter().map(|(id, _)| id.clone()).collect();
        let (side, portal) = (self.side, self.portal.clone());
        let seen = if self.object == "notes" {
            self.store
                .call(move |c| store::object_seen_ms(c, side, &portal, &ids))
                .await?
        } else {
            HashMap::new()
        };
        let changed: Vec<String> = fresh
            .iter()
            .filter(|(id, ts)| {
                let echo = seen.get(id) == Some(ts);
                if echo {
                    stats.echoes += 1;
                }
                !echo
            })
            .map(|(id, _)| id.clone())
            .collect();
        if changed.is_empty() {
            return Ok(Vec::new());
        }
        let deals: Vec<String> = {
            let assoc = self
                .client
                .associations(self.object, "deals", &changed)
                .await?;
            let mut d: Vec<String> = assoc.into_values().flatten().collect();
            d.sort();
            d.dedup();
            d
        };
        let links = self.lookup(deals).await?;
        Ok(links.into_iter().map(|(l, _)| l.id).collect())
    }

    /// Judges the deals set aside by earlier polls whose writes have since finished.
    async fn judge_deferred(&mut self, stats: &mut PollStats) -> Result<(), StoreError> {
        if self.deferred.is_empty() {
            return Ok(());
        }
        let ts_of: HashMap<String, i64> = std::mem::take(&mut self.deferred).into_iter().collect();
        let generation = self.in_flight.generation();
        let links = self.lookup(ts_of.keys().cloned().collect()).await?;
        let queue = self.judge(&links, &ts_of, generation, stats);
        if !queue.is_empty() {
            stats.queued += queue.len();
            self.store
                .call(move |c| store::enqueue_now(c, &queue, store::JobReason::Poll))
                .await?;
            self.wake.notify_waiters();
        }
        Ok(())
    }

    /// Polls every `interval` until cancelled. Failures are recorded in portal health and
    /// retried at the next tick; they never stop the loop.
    pub async fn run(mut self, cancel: CancellationToken) {
        use std::sync::atomic::Ordering;
        loop {
            let yielding = self
                .scanning
                .as_ref()
                .is_some_and(|(f, owner)| !owner && f.load(Ordering::Relaxed));
            if yielding {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(self.interval) => {}
                }
                continue;
            }
            if let Some((f, true)) = &self.scanning {
                f.store(true, Ordering::Relaxed);
            }
            let span = tracing::info_span!("poll", portal = %self.portal);
            match tracing::Instrument::instrument(self.poll_once(), span).await {
                Ok(s) if s.queued > 0 => {
                    tracing::debug!(portal = %self.portal, queued = s.queued, records = s.records, "poll queued work")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(portal = %self.portal, error = %e, "poll failed; retrying next interval");
                    let (store, portal, msg) =
                        (self.store.clone(), self.key.clone(), e.to_string());
                    let _ = store
                        .call(move |c| store::poll_failed(c, &portal, &msg))
                        .await;
                }
            }
            if let Some((f, true)) = &self.scanning {
                f.store(false, Ordering::Relaxed);
            }
            let wait = self.next_interval().await;
            let nudged = async {
                match &self.nudge {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = nudged => {}
            }
        }
    }

    fn query(lower_ms: i64, lower_id: Option<&str>, props: &[String]) -> Value {
        let ts = |op: &str| json!({ "propertyName": "hs_lastmodifieddate", "operator": op, "value": lower_ms.to_string() });
        let groups = match lower_id {
            None => json!([{ "filters": [ts("GTE")] }]),
            Some(id) => json!([
                { "filters": [ts("GT")] },
                { "filters": [ts("EQ"), { "propertyName": "hs_object_id", "operator": "GT", "value": id }] },
            ]),
        };
        json!({
            "filterGroups": groups,
            "sorts": [{ "propertyName": "hs_lastmodifieddate", "direction": "ASCENDING" }],
            "properties": props,
            "limit": SEARCH_PAGE,
        })
    }

    /// One scan from the cursor (minus overlap) to the newest change.
    pub async fn poll_once(&mut self) -> Result<PollStats, PollError> {
        let portal = self.key.clone();
        let cursor = self.store.call(move |c| store::cursor(c, &portal)).await?;
        let overlap = self.overlap.as_millis() as i64;
        let wide = self
            .last_wide
            .is_none_or(|t| t.elapsed() >= self.overlap / 2);
        let floor = cursor.unwrap_or_else(store::now_ms) - overlap;
        let since = match cursor {
            Some(c) if !wide => c,
            _ => floor,
        };
        let started = Instant::now();
        let mut stats = PollStats::default();
        self.judge_deferred(&mut stats).await?;
        self.seen.retain(|_, ts| *ts >= floor);
        let mut lower: (i64, Option<String>) = (since, None);
        loop {
            let page = self
                .client
                .search(
                    self.object,
                    &Self::query(lower.0, lower.1.as_deref(), &self.search_props()),
                )
                .await?;
            stats.records += page.records.len();
            stats.pages += 1;
            let mut fresh: Vec<(String, i64)> = Vec::new();
            let mut max_ts = cursor.unwrap_or(since);
            for r in &page.records {
                let Some(ts) = r.last_modified_ms() else {
                    continue;
                };
                max_ts = max_ts.max(ts);
                if self.seen.get(&r.id) != Some(&ts) {
                    fresh.push((r.id.clone(), ts));
                }
            }
            let queue = if self.object != "deals" {
                self.note_jobs(&fresh, &mut stats).await?
            } else {
                let generation = self.in_flight.generation();
                let links = self
                    .lookup(fresh.iter().map(|(id, _)| id.clone()).collect())
                    .await?;
                if self.enrolment.is_some() {
                    // Unlinked deals the partner marked for registration.
                    let fresh_ids: std::collections::HashSet<&str> =
                        fresh.iter().map(|(id, _)| id.as_str()).collect();
                    let marked: Vec<String> = page
                        .records
                        .iter()
                        .filter(|r| fresh_ids.contains(r.id.as_str()))
                        .filter(|r| r.get(crate::properties::REGISTER) == Some("true"))
                        .filter(|r| !links.iter().any(|(l, _)| l.partner_deal_id == r.id))
                        .map(|r| r.id.clone())
                        .collect();
                    if !marked.is_empty() {
                        self.enroll(marked).await;
                    }
                }
                if let Some(inv) = &self.invitations {
                    // Unlinked HubSpot deals that name a partner to add.
                    let fresh_ids: std::collections::HashSet<&str> =
                        fresh.iter().map(|(id, _)| id.as_str()).collect();
                    for r in page.records.iter().filter(|r| {
                        fresh_ids.contains(r.id.as_str())
                            && r.get(crate::properties::ADD_PARTNER).is_some()
                            && !links.iter().any(|(l, _)| l.hubspot_deal_id == r.id)
                    }) {
                        match crate::invite::invite(
                            &self.store,
                            &self.client,
                            &inv.markings,
                            &inv.partners,
                            r,
                        )
                        .await
                        {
                            Ok(outcome) => {
                                tracing::info!(deal = %r.id, outcome = ?outcome, "partner added on HubSpot's side")
                            }
                            Err(e) => {
                                tracing::warn!(deal = %r.id, error = %e, "cannot add the partner yet; tried again when the deal changes")
                            }
                        }
                    }
                }
                let ts_of: HashMap<String, i64> = fresh.iter().cloned().collect();
                self.judge(&links, &ts_of, generation, &mut stats)
            };
            tracing::trace!(
                records = page.records.len(),
                first = page.records.first().and_then(|r| r.last_modified_ms()),
                last = page.records.last().and_then(|r| r.last_modified_ms()),
                queued = queue.len(),
                deferred = self.deferred.len(),
                "search page"
            );
            stats.queued += queue.len();
            let portal = self.key.clone();
            let n = queue.len();
            // Deal changes queue `poll`; notes and quotes say so, for the job to read them.
            let reason = match self.object {
                "notes" => store::JobReason::Notes,
                "quotes" => store::JobReason::Quotes,
                _ => store::JobReason::Poll,
            };
            self.store
                .call(move |c| store::poll_commit_for(c, &portal, max_ts, &queue, reason))
                .await?;
            if n > 0 {
                self.wake.notify_waiters();
            }
            for (id, ts) in fresh {
                self.seen.insert(id, ts);
            }
            if page.next_after.is_none() {
                break;
            }
            // The next page starts strictly after the last record of this one.
            let Some((ts, id)) = page
                .records
                .last()
                .and_then(|r| Some((r.last_modified_ms()?, r.id.clone())))
            else {
                break;
            };
            lower = (ts, Some(id));
        }
        // Most deals set aside during the scan can be judged now.
        self.judge_deferred(&mut stats).await?;
        // Only a completed wide scan counts: a failed one is retried wide at the next poll.
        if wide {
            self.last_wide = Some(started);
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_health_follows_polling_findings() {
        let quiet = Duration::from_secs(600);
        let h = |w: Option<i64>, c: Option<i64>| store::WebhookHealth {
            last_webhook: w,
            last_poll_change: c,
        };
        // No webhook ever: not healthy (polling keeps its normal pace).
        assert!(!webhooks_healthy(&h(None, None), quiet));
        assert!(!webhooks_healthy(&h(None, Some(5)), quiet));
        // Webhooks arriving, polling finds nothing new or only what came with them.
        assert!(webhooks_healthy(&h(Some(1_000), None), quiet));
        assert!(webhooks_healthy(
            &h(Some(1_000), Some(1_000 + 600_000)),
            quiet
        ));
        // Polling found a change well after the last webhook: quiet.
        assert!(!webhooks_healthy(
            &h(Some(1_000), Some(1_000 + 600_001)),
            quiet
        ));
        // A webhook after that makes them healthy again.
        assert!(webhooks_healthy(&h(Some(700_000), Some(601_001)), quiet));
    }

    #[test]
    fn an_absurd_quiet_window_does_not_overflow() {
        let h = store::WebhookHealth {
            last_webhook: Some(i64::MAX - 5),
            last_poll_change: Some(i64::MAX),
        };
        assert!(webhooks_healthy(&h, Duration::MAX));
    }
}
