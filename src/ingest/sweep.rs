//! The reconciliation sweep: re-reads every active link on an interval so anything both
//! webhooks and polling missed (deletions included) is healed. It queues links a batch at a
//! time, spread over the interval, through the same queue and engine path as every other
//! change — a link that needs nothing costs two batched reads and no writes. A step queues
//! as many links as HubSpot's association batch read takes (1,000), and the engine runs such
//! a batch as one, so the sweep's association reads are at HubSpot's cap, not the engine's
//! usual batch of 100 (`benches/footprint.rs` measures it).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store::{self, Store, StoreError};

pub struct Sweep {
    pub store: Store,
    pub interval: Duration,
    pub batch: usize,
    pub wake: Arc<Notify>,
}

impl Sweep {
    /// Queues one pass over every active link. Returns how many were queued.
    pub async fn pass(
        &self,
        pace: Option<Duration>,
        cancel: &CancellationToken,
    ) -> Result<usize, StoreError> {
        let mut after = 0i64;
        let mut total = 0;
        loop {
            let batch = self.batch;
            let links = self
                .store
                .call(move |c| store::active_links_after(c, after, batch))
                .await?;
            let Some(last) = links.last() else { break };
            after = last.id;
            let ids: Vec<i64> = links.iter().map(|l| l.id).collect();
            total += ids.len();
            self.store
                .call(move |c| store::enqueue_now(c, &ids, store::JobReason::Sweep))
                .await?;
            self.wake.notify_waiters();
            if let Some(p) = pace {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(p) => {}
                }
            }
        }
        Ok(total)
    }

    /// Sweeps every `interval` until cancelled, spreading each pass over the interval.
    pub async fn run(self, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
            let count = self
                .store
                .call(|c| {
                    Ok(c.query_row(
                        "SELECT COUNT(*) FROM links WHERE state = 'active'",
                        [],
                        |r| r.get::<_, i64>(0),
                    )?)
                })
                .await
                .unwrap_or(0)
                .max(1) as u32;
            let batches = count.div_ceil(self.batch.max(1) as u32).max(1);
            let pace = (self.interval / 2 / batches).min(Duration::from_secs(60));
            match self.pass(Some(pace), &cancel).await {
                Ok(n) => tracing::info!(links = n, "reconciliation sweep queued links"),
                Err(e) => {
                    tracing::warn!(error = %e, "reconciliation sweep failed; next interval retries")
                }
            }
        }
    }
}
