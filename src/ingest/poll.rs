//! The poller: CRM search on `hs_lastmodifieddate` from the persisted cursor minus an overlap,
//! ascending, paged.
//!
//! Correctness at the edges:
//! - **Overlap.** Search is eventually consistent; a record modified before the cursor may
//!   appear late. Every poll starts `overlap` before the cursor, and a per-deal memory of the
//!   last timestamp seen keeps the overlap from queuing the same change twice.
//! - **Equal timestamps and the 10,000 cap.** HubSpot refuses to page past 10,000 results. When
//!   a scan gets there it restarts from the last record seen with a strict `(timestamp, id)`
//!   lower bound — `ts > last OR (ts = last AND id > last_id)` — so a run of changes in the
//!   same millisecond that straddles the restart is neither skipped nor repeated.
//! - **Crash safety.** Queued jobs and the cursor commit in one transaction per page.
//! - **Echoes.** A deal whose `hs_lastmodifieddate` equals the one our own last write produced
//!   needs no job (the shadow would say "nothing to do" anyway; this saves two reads).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::crm::{Client, CrmError, SEARCH_PAGE};
use crate::store::{self, Side, Store, StoreError};

/// HubSpot's search paging limit.
pub const SEARCH_CAP: usize = 10_000;

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
    pub restarts: usize,
}

pub struct Poller {
    /// Cursor key and, for partners, the portal name in links.
    pub portal: String,
    pub side: Side,
    pub client: Client,
    pub store: Store,
    pub interval: Duration,
    pub overlap: Duration,
    pub wake: Arc<Notify>,
    seen: HashMap<String, i64>,
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
            side,
            client,
            store,
            interval,
            overlap,
            wake,
            seen: HashMap::new(),
        }
    }

    /// Polls every `interval` until cancelled. Failures are recorded in portal health and
    /// retried at the next tick; they never stop the loop.
    pub async fn run(mut self, cancel: CancellationToken) {
        loop {
            let span = tracing::info_span!("poll", portal = %self.portal);
            match tracing::Instrument::instrument(self.poll_once(), span).await {
                Ok(s) if s.queued > 0 => {
                    tracing::debug!(portal = %self.portal, queued = s.queued, records = s.records, "poll queued work")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(portal = %self.portal, error = %e, "poll failed; retrying next interval");
                    let (store, portal, msg) =
                        (self.store.clone(), self.portal.clone(), e.to_string());
                    let _ = store
                        .call(move |c| store::poll_failed(c, &portal, &msg))
                        .await;
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    fn query(lower_ms: i64, lower_id: Option<&str>, after: Option<&str>) -> Value {
        let ts = |op: &str| json!({ "propertyName": "hs_lastmodifieddate", "operator": op, "value": lower_ms.to_string() });
        let groups = match lower_id {
            None => json!([{ "filters": [ts("GTE")] }]),
            Some(id) => json!([
                { "filters": [ts("GT")] },
                { "filters": [ts("EQ"), { "propertyName": "hs_object_id", "operator": "GT", "value": id }] },
            ]),
        };
        let mut body = json!({
            "filterGroups": groups,
            "sorts": [{ "propertyName": "hs_lastmodifieddate", "direction": "ASCENDING" }],
            "properties": ["hs_lastmodifieddate"],
            "limit": SEARCH_PAGE,
        });
        if let Some(a) = after {
            body["after"] = json!(a);
        }
        body
    }

    /// One scan from the cursor (minus overlap) to the newest change.
    pub async fn poll_once(&mut self) -> Result<PollStats, PollError> {
        let portal = self.portal.clone();
        let cursor = self.store.call(move |c| store::cursor(c, &portal)).await?;
        let overlap = self.overlap.as_millis() as i64;
        let since = cursor.unwrap_or_else(store::now_ms) - overlap;
        self.seen.retain(|_, ts| *ts >= since);
        let mut stats = PollStats::default();
        let mut lower: (i64, Option<String>) = (since, None);
        let mut after: Option<String> = None;
        loop {
            let page = self
                .client
                .search(
                    "deals",
                    &Self::query(lower.0, lower.1.as_deref(), after.as_deref()),
                )
                .await?;
            stats.records += page.records.len();
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
            let ids: Vec<String> = fresh.iter().map(|(id, _)| id.clone()).collect();
            let (side, portal) = (self.side, self.portal.clone());
            let links = if ids.is_empty() {
                Vec::new()
            } else {
                self.store
                    .call(move |c| store::links_for_deals(c, side, &portal, &ids))
                    .await?
            };
            let ts_of: HashMap<&str, i64> =
                fresh.iter().map(|(id, ts)| (id.as_str(), *ts)).collect();
            let mut queue = Vec::new();
            for (link, written) in &links {
                let deal = match self.side {
                    Side::Partner => &link.partner_deal_id,
                    Side::Hubspot => &link.hubspot_deal_id,
                };
                if written.is_some() && ts_of.get(deal.as_str()).copied() == *written {
                    stats.echoes += 1;
                } else {
                    queue.push(link.id);
                }
            }
            stats.queued += queue.len();
            let portal = self.portal.clone();
            let n = queue.len();
            self.store
                .call(move |c| store::poll_commit(c, &portal, max_ts, &queue))
                .await?;
            if n > 0 {
                self.wake.notify_waiters();
            }
            for (id, ts) in fresh {
                self.seen.insert(id, ts);
            }
            match page.next_after {
                None => break,
                Some(a) => {
                    let offset: usize = a.parse().unwrap_or(0);
                    if offset + SEARCH_PAGE > SEARCH_CAP {
                        // Restart from the last record with a strict (timestamp, id) bound.
                        let Some(last) = page.records.last() else {
                            break;
                        };
                        let Some(ts) = last.last_modified_ms() else {
                            break;
                        };
                        lower = (ts, Some(last.id.clone()));
                        after = None;
                        stats.restarts += 1;
                    } else {
                        after = Some(a);
                    }
                }
            }
        }
        Ok(stats)
    }
}
