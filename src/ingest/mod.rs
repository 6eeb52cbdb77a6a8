//! Ingestion: everything that notices changes and turns them into queued jobs — polling,
//! the reconciliation sweep and the webhook listener. All feed the same durable queue in the
//! store, where work for one link coalesces into one job.

pub mod poll;
pub mod sweep;
pub mod webhook;
