//! Ingestion: everything that notices changes and turns them into queued jobs. Polling is
//! here now; the webhook listener joins it (issue 6). Both feed the same durable queue in the
//! store, where events for one link coalesce into one job.

pub mod poll;
pub mod sweep;
