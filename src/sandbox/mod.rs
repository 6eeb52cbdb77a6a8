//! `dealsync sandbox`: a stateful emulator of the HubSpot API surface dealsync uses.
//!
//! Several portals are served on one address; the bearer token picks the portal, as on
//! HubSpot's real host. Every test, the demo and every benchmark run against it, so it answers
//! the way HubSpot does: same paths, bodies, status codes, error shapes, paging, batch and
//! search limits, rate limits and v3-signed webhooks. Test-only controls (reset, state dump,
//! fault injection, request counters) live under `/_sandbox/` and never under HubSpot's paths.
//! See `docs/sandbox.md` for the control surface.
//!
//! The sandbox must never reach anything but the webhook targets it is given; it holds all
//! state in memory (optionally persisted to a JSON file).

// Handlers return `Result<_, ApiError>`, and ApiError carries HubSpot's whole error body. It is
// built only on the error path of an in-memory emulator, so its size costs nothing that
// matters; boxing it would only add noise to every handler.
#![allow(clippy::result_large_err)]

mod assoc;
mod control;
mod data;
mod error;
mod faults;
mod features;
mod files;
mod gate;
mod inbox;
mod limits;
pub mod model;
mod oauth;
mod objects;
mod params;
mod schema;
mod search;
mod validations;
mod webhooks;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use data::Change;
pub use error::ApiError;
pub use faults::Faults;
pub use features::Features;
pub use model::{ObjectType, PortalData};
pub use oauth::{OAuthApp, OAuthInfo};
pub use webhooks::WebhookSettings;

/// What to start. `Default` gives the three default portals, HubSpot's default rate limits and
/// an ephemeral loopback port.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub listen: SocketAddr,
    pub portals: Vec<PortalSpec>,
    /// Requests per rolling 10 s per portal; `None` disables the limit (benchmarks).
    pub rate_limit_per_10s: Option<u32>,
    /// Requests per day per portal; `None` disables the limit.
    pub daily_limit: Option<u64>,
    /// Search requests per second per portal (HubSpot counts search per account); `None` disables the limit.
    pub search_per_s: Option<u32>,
    /// Where state is loaded from at start and saved to while running; `None` keeps it in memory.
    pub state_file: Option<PathBuf>,
    /// Webhook target URL per portal name.
    pub webhook_targets: Vec<(String, String)>,
    /// The OAuth app's one webhook target: when set, every portal's events go there (not to
    /// the portal's own target), signed with the app's client secret, each naming its portal's
    /// `portalId`. `PUT /_sandbox/oauth/webhooks` changes it while running.
    pub app_webhook_target: Option<String>,
    /// Seed for fault injection and generated credentials, for repeatable runs.
    pub seed: Option<u64>,
    /// Keep every API response for conformance checks ([`SandboxHandle::recorded`]).
    pub record_responses: bool,
    /// Largest JSON request body accepted (HubSpot answers 413 above its limit).
    pub max_body_bytes: usize,
    /// Largest file upload accepted.
    pub max_file_bytes: usize,
    /// Lifetime of an OAuth access token (HubSpot: 30 minutes).
    pub oauth_token_ttl: Duration,
    /// Each refresh returns a new refresh token and the old one stops working (HubSpot keeps
    /// it; this proves a client stores the rotated one).
    pub oauth_rotate_refresh: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            portals: ["hubspot", "partner-a", "partner-b"]
                .into_iter()
                .map(PortalSpec::named)
                .collect(),
            rate_limit_per_10s: Some(100),
            daily_limit: Some(250_000),
            search_per_s: Some(5),
            state_file: None,
            webhook_targets: Vec::new(),
            app_webhook_target: None,
            seed: None,
            record_responses: false,
            max_body_bytes: 3 * 1024 * 1024,
            max_file_bytes: 512 * 1024 * 1024,
            oauth_token_ttl: Duration::from_secs(1800),
            oauth_rotate_refresh: false,
        }
    }
}

/// One portal to serve. Credentials are generated when not given.
#[derive(Debug, Clone)]
pub struct PortalSpec {
    pub name: String,
    pub token: Option<String>,
    pub webhook_secret: Option<String>,
}

impl PortalSpec {
    pub fn named(name: &str) -> Self {
        PortalSpec {
            name: name.to_owned(),
            token: None,
            webhook_secret: None,
        }
    }
}

/// The facts a client needs about one served portal (printed on start).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortalInfo {
    pub name: String,
    pub portal_id: u64,
    pub token: String,
    pub webhook_secret: String,
}

/// The one JSON line `dealsync sandbox` prints on stdout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Startup {
    pub base_url: String,
    pub portals: Vec<PortalInfo>,
    /// The OAuth app every portal can install.
    pub oauth: OAuthInfo,
}

/// One API answer kept for conformance checks.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub status: u16,
    pub body: Option<serde_json::Value>,
}

/// Errors starting the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read sandbox state file {path}: {source}")]
    StateRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sandbox state file {path} is not valid sandbox state ({source}); move it away to start fresh")]
    StateParse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("invalid sandbox configuration: {0}")]
    Config(String),
}

/// One portal's live state. Each part has its own short-held lock; no lock is held across an
/// `.await`.
pub(crate) struct Portal {
    pub info: PortalInfo,
    pub ordinal: u64,
    pub data: Mutex<PortalData>,
    pub limits: Mutex<limits::Limits>,
    pub faults: Mutex<Faults>,
    /// Which note features this portal offers (all, unless a test turns them off).
    pub features: Mutex<Features>,
    pub counters: Mutex<gate::Counters>,
    pub hooks: webhooks::Hooks,
    /// The portal's own write-validation rules (enforced on 2026-09 writes).
    pub validations: Mutex<validations::Rules>,
}

/// State shared by every handler.
pub(crate) struct Shared {
    pub portals: Vec<Arc<Portal>>,
    pub by_token: HashMap<String, usize>,
    pub config: SandboxConfig,
    pub base_url: String,
    clock: AtomicI64,
    pub rng: Mutex<StdRng>,
    pub recorder: Option<Mutex<Vec<Recorded>>>,
    pub http: reqwest::Client,
    /// Bumped on every mutation; the state saver writes when it moves.
    pub version: AtomicI64,
    /// Outbound notifications dealsync sent to `/_sandbox/inbox`.
    pub inbox: Mutex<inbox::Inbox>,
    /// The OAuth app, its codes and tokens.
    pub oauth: oauth::OAuth,
    /// The app's webhook target (see [`SandboxConfig::app_webhook_target`]).
    pub app_target: Mutex<Option<String>>,
}

impl Shared {
    /// Milliseconds since the epoch, never going backwards: writes in one batch share one
    /// instant and later writes never sort before earlier ones.
    pub fn now_ms(&self) -> i64 {
        let wall = chrono::Utc::now().timestamp_millis();
        let prev = self.clock.fetch_max(wall, Ordering::SeqCst);
        prev.max(wall)
    }

    pub fn portal_by_token(&self, token: &str) -> Option<&Arc<Portal>> {
        self.by_token.get(token).map(|i| &self.portals[*i])
    }

    pub fn portal_by_name(&self, name: &str) -> Option<&Arc<Portal>> {
        self.portals.iter().find(|p| p.info.name == name)
    }

    pub fn touched(&self) {
        self.version.fetch_add(1, Ordering::Relaxed);
    }

    /// Hands changes to the webhook dispatcher and marks state dirty.
    pub fn publish(&self, portal: &Portal, changes: Vec<Change>, source: model::Source) {
        self.touched();
        if !changes.is_empty() {
            let app_target = self.app_target.lock().is_some();
            portal
                .hooks
                .enqueue(&portal.info, changes, source, app_target);
        }
    }
}

/// A running sandbox. Dropping the handle does not stop it; call [`SandboxHandle::shutdown`].
pub struct SandboxHandle {
    pub base_url: String,
    pub addr: SocketAddr,
    pub portals: Vec<PortalInfo>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SandboxHandle {
    /// The facts printed on start.
    pub fn startup(&self) -> Startup {
        Startup {
            base_url: self.base_url.clone(),
            portals: self.portals.clone(),
            oauth: self.shared.oauth.info(&self.base_url),
        }
    }

    /// The OAuth app's credentials (also in [`SandboxHandle::startup`]).
    pub fn oauth_app(&self) -> OAuthApp {
        self.shared.oauth.app.clone()
    }

    /// The portal with this name. Panics only on a name the caller configured itself.
    pub fn portal(&self, name: &str) -> &PortalInfo {
        self.portals
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no sandbox portal named {name}"))
    }

    /// Sets which note features a portal offers, as `PUT /_sandbox/portals/{name}/features`
    /// does. Panics only on a name the caller configured itself.
    pub fn set_features(&self, name: &str, features: Features) {
        let p = self
            .shared
            .portal_by_name(name)
            .unwrap_or_else(|| panic!("no sandbox portal named {name}"));
        *p.features.lock() = features;
    }

    /// Responses kept when `record_responses` is on.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.shared
            .recorder
            .as_ref()
            .map(|r| r.lock().clone())
            .unwrap_or_default()
    }

    /// Stops serving, saves state if a state file is configured, and waits for the tasks.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Resolves when the sandbox has been told to stop (used by `dealsync sandbox`).
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

#[derive(Serialize, Deserialize)]
struct SavedPortal {
    info: PortalInfo,
    data: PortalData,
}

fn random_token(rng: &mut StdRng, prefix: &str) -> String {
    let a: u128 = rng.random();
    let s = format!("{a:032x}");
    format!(
        "{prefix}-{}-{}-{}-{}-{}",
        &s[0..8],
        &s[8..12],
        &s[12..16],
        &s[16..20],
        &s[20..32]
    )
}

/// Starts the sandbox on the configured address and returns once it is accepting requests.
pub async fn start(config: SandboxConfig) -> Result<SandboxHandle, SandboxError> {
    if config.portals.is_empty() {
        return Err(SandboxError::Config("at least one portal is needed".into()));
    }
    if config.oauth_token_ttl < Duration::from_secs(1) {
        return Err(SandboxError::Config(
            "oauth_token_ttl must be at least one second".into(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for p in &config.portals {
        if p.name.is_empty()
            || !p
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(SandboxError::Config(format!(
                "portal name {:?} must be non-empty and use only letters, digits, '-' and '_'",
                p.name
            )));
        }
        if !seen.insert(p.name.clone()) {
            return Err(SandboxError::Config(format!(
                "portal {} is listed twice",
                p.name
            )));
        }
    }
    let mut rng = match config.seed {
        Some(s) => StdRng::seed_from_u64(s),
        None => StdRng::from_os_rng(),
    };
    let mut saved: HashMap<String, SavedPortal> = HashMap::new();
    if let Some(path) = &config.state_file {
        match std::fs::read(path) {
            Ok(bytes) => {
                let list: Vec<SavedPortal> =
                    serde_json::from_slice(&bytes).map_err(|source| SandboxError::StateParse {
                        path: path.clone(),
                        source,
                    })?;
                saved = list.into_iter().map(|s| (s.info.name.clone(), s)).collect();
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SandboxError::StateRead {
                    path: path.clone(),
                    source,
                })
            }
        }
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| SandboxError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| SandboxError::Bind {
        addr: config.listen,
        source,
    })?;
    let base_url = format!("http://{addr}");
    let now = chrono::Utc::now().timestamp_millis();
    let mut portals = Vec::new();
    let mut by_token = HashMap::new();
    for (i, spec) in config.portals.iter().enumerate() {
        let ordinal = i as u64;
        let (info, data) = match saved.remove(&spec.name) {
            Some(mut s) => {
                if let Some(t) = &spec.token {
                    s.info.token = t.clone();
                }
                if let Some(w) = &spec.webhook_secret {
                    s.info.webhook_secret = w.clone();
                }
                s.data.rebuild_indexes();
                (s.info, s.data)
            }
            None => {
                let mut data = PortalData::seeded(&spec.name, ordinal, now);
                data.rebuild_indexes();
                let info = PortalInfo {
                    name: spec.name.clone(),
                    portal_id: 40_000_001 + ordinal,
                    token: spec
                        .token
                        .clone()
                        .unwrap_or_else(|| random_token(&mut rng, "pat-sandbox")),
                    webhook_secret: spec
                        .webhook_secret
                        .clone()
                        .unwrap_or_else(|| random_token(&mut rng, "whsec")),
                };
                (info, data)
            }
        };
        if by_token.insert(info.token.clone(), i).is_some() {
            return Err(SandboxError::Config(format!(
                "portal {} reuses another portal's token; each portal needs its own",
                info.name
            )));
        }
        let target = config
            .webhook_targets
            .iter()
            .find(|(n, _)| *n == info.name)
            .map(|(_, u)| u.clone());
        portals.push(Arc::new(Portal {
            ordinal,
            data: Mutex::new(data),
            limits: Mutex::new(limits::Limits::new(
                config.rate_limit_per_10s,
                config.daily_limit,
                config.search_per_s,
            )),
            faults: Mutex::new(Faults::default()),
            features: Mutex::new(Features::default()),
            counters: Mutex::new(gate::Counters::default()),
            hooks: webhooks::Hooks::new(target),
            validations: Mutex::new(validations::Rules::default()),
            info,
        }));
    }
    if let Some(url) = &config.app_webhook_target {
        webhooks::check_target(url).map_err(SandboxError::Config)?;
    }
    for (name, _) in &config.webhook_targets {
        if !portals.iter().any(|p| &p.info.name == name) {
            return Err(SandboxError::Config(format!(
                "--webhook-target names portal {name}, which is not served"
            )));
        }
    }
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| SandboxError::Config(format!("cannot build the webhook HTTP client: {e}")))?;
    let seed: u64 = rng.random();
    let shared = Arc::new(Shared {
        by_token,
        base_url: base_url.clone(),
        clock: AtomicI64::new(now),
        rng: Mutex::new(StdRng::seed_from_u64(seed)),
        recorder: config.record_responses.then(|| Mutex::new(Vec::new())),
        http,
        version: AtomicI64::new(0),
        inbox: Mutex::new(Default::default()),
        oauth: oauth::OAuth::new(
            config.seed,
            config.oauth_token_ttl,
            config.oauth_rotate_refresh,
        ),
        portals,
        app_target: Mutex::new(config.app_webhook_target.clone()),
        config,
    });
    let cancel = CancellationToken::new();
    let app = gate::router(shared.clone());
    let mut tasks = Vec::new();
    {
        let cancel = cancel.clone();
        tasks.push(tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "sandbox server stopped");
            }
        }));
    }
    for p in &shared.portals {
        tasks.push(tokio::spawn(webhooks::dispatch(
            shared.clone(),
            p.clone(),
            cancel.clone(),
        )));
    }
    if shared.config.state_file.is_some() {
        tasks.push(tokio::spawn(save_loop(shared.clone(), cancel.clone())));
    }
    let portals = shared.portals.iter().map(|p| p.info.clone()).collect();
    Ok(SandboxHandle {
        base_url,
        addr,
        portals,
        shared,
        cancel,
        tasks,
    })
}

async fn save_loop(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut saved_version = -1;
    loop {
        let stop = tokio::select! {
            _ = cancel.cancelled() => true,
            _ = tokio::time::sleep(Duration::from_secs(1)) => false,
        };
        let v = shared.version.load(Ordering::Relaxed);
        if v != saved_version {
            let s = shared.clone();
            match tokio::task::spawn_blocking(move || save_state(&s)).await {
                Ok(Ok(())) => saved_version = v,
                Ok(Err(e)) => tracing::error!(error = %e, "cannot save sandbox state"),
                Err(e) => tracing::error!(error = %e, "sandbox state saver failed"),
            }
        }
        if stop {
            return;
        }
    }
}

fn save_state(shared: &Shared) -> std::io::Result<()> {
    let Some(path) = &shared.config.state_file else {
        return Ok(());
    };
    let list: Vec<SavedPortal> = shared
        .portals
        .iter()
        .map(|p| SavedPortal {
            info: p.info.clone(),
            data: p.data.lock().clone(),
        })
        .collect();
    let bytes = serde_json::to_vec(&list).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// A random draw in `[0, 1)` from the sandbox's seeded generator.
pub(crate) fn chance(shared: &Shared) -> f64 {
    shared.rng.lock().random::<f64>()
}
