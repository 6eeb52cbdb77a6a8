//! dealsync: keeps shared partner deals in step between a HubSpot solutions partner's CRM
//! portal and HubSpot's own portal. See README.md for users and ARCHITECTURE.md for the map.

pub mod backoff;
pub mod cli;
pub mod config;
pub mod crm;
pub mod daemon;
pub mod deadletter;
pub mod demo;
pub mod engine;
pub mod ingest;
pub mod invite;
pub mod lifecycle;
pub mod metrics;
pub mod notify;
pub mod oauth;
pub mod probe;
pub mod project;
pub mod properties;
pub mod quotes;
pub mod register;
pub mod replay;
pub mod rules;
pub mod sandbox;
pub mod secret;
pub mod setup;
pub mod signature;
pub mod status;
pub mod store;
pub mod systemd;
pub mod team;
pub mod time;
