//! `dealsync run`: wires the store, the HubSpot clients, the pollers, the sweep and the
//! engine's workers together, and stops them cleanly.
//!
//! Shutdown (SIGTERM/SIGINT or [`DaemonHandle::shutdown`]): pollers and the sweep stop queuing,
//! workers finish the batch in hand (its writes and its store commit) and return; whatever is
//! still queued stays in the store for the next start. A batch that cannot finish within the
//! drain bound is abandoned safely: its jobs are still marked running in the store and are
//! recovered as pending on the next start, and a re-run decides from current state.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, PortalAuth, PortalConfig};
use crate::crm::{ApiVersions, Auth, Budget, Client, CrmError, RetryPolicy};
use crate::engine::{Engine, Portals, Settings};
use crate::ingest::poll::{Poller, WebhookPace};
use crate::ingest::sweep::Sweep;
use crate::ingest::webhook::{self, AppPortal, ListenError, Listener, WebhookPortal};
use crate::oauth::OAuthApp;
use crate::store::{self, Side, Store, StoreError};

/// How to reach one portal.
#[derive(Clone)]
pub struct PortalConn {
    pub name: String,
    pub base_url: String,
    pub token: String,
    pub rate_limit_per_10s: u32,
    pub search_per_s: u32,
    /// The API version each surface is called at.
    pub api: ApiVersions,
    /// The operator's OAuth app, when this portal authenticates through an install (then
    /// `token` is empty).
    pub oauth: Option<Arc<OAuthApp>>,
}

impl std::fmt::Debug for PortalConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortalConn")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// Everything the daemon runs with.
#[derive(Debug, Clone)]
pub struct DaemonParts {
    pub store_path: PathBuf,
    pub hubspot: PortalConn,
    pub partners: Vec<PortalConn>,
    pub settings: Settings,
    pub poll_interval: Duration,
    pub poll_overlap: Duration,
    pub sweep_interval: Duration,
    pub retry: RetryPolicy,
    /// How long shutdown waits for in-flight batches.
    pub drain: Duration,
    /// The webhook listener; `None` runs on polling alone.
    pub webhooks: Option<WebhookParts>,
}

impl DaemonParts {
    /// What the daemon runs with, from a validated configuration. Polling-only daemons with a
    /// `[metrics] listen` get the same listener taking no webhooks (every portal answers 404),
    /// which serves health and metrics.
    pub fn from_config(config: &Config) -> DaemonParts {
        let conn = |p: &PortalConfig| PortalConn {
            name: p.name.clone(),
            base_url: p.base_url.clone(),
            token: match &p.auth {
                PortalAuth::Static(t) => t.expose().to_owned(),
                PortalAuth::OAuth => String::new(),
            },
            oauth: matches!(p.auth, PortalAuth::OAuth)
                .then(|| config.oauth.clone())
                .flatten(),
            rate_limit_per_10s: p.rate_limit_per_10s,
            search_per_s: p.search_per_s,
            api: p.api,
        };
        DaemonParts {
            store_path: config.store_path.clone(),
            hubspot: conn(&config.hubspot),
            partners: config.partners.iter().map(|p| conn(&p.portal)).collect(),
            settings: Settings {
                fields: config.fields.clone(),
                stage_maps: config
                    .partners
                    .iter()
                    .map(|p| (p.portal.name.clone(), p.stage_maps()))
                    .collect(),
                batch_size: config.batch_size,
                workers: config.workers,
                max_attempts: config.max_attempts,
                retry_base: config.retry_base,
                retry_max: config.retry_max,
                dead_letter_path: config.dead_letter_path.clone(),
                mass_deletion: config.mass_deletion,
                messages: config.messages.clone(),
                closed_stages: Default::default(),
                registration: config
                    .partners
                    .iter()
                    .map(|p| {
                        (
                            p.portal.name.clone(),
                            crate::register::RegistrationSettings {
                                capacity: p.capacity,
                                partner_pipeline: p.default_pipeline.clone(),
                                hubspot_pipeline: config.hubspot.pipeline.clone(),
                                default_owner_id: config.default_owner_id.clone(),
                                synced: crate::register::Synced {
                                    fields: config.fields.clone(),
                                    stages: p.stage_maps(),
                                },
                            },
                        )
                    })
                    .collect(),
                notify: config.notify.clone(),
            },
            poll_interval: config.poll_interval,
            poll_overlap: config.poll_overlap,
            sweep_interval: config.sweep_interval,
            retry: crate::crm::RetryPolicy {
                timeout: config.request_timeout,
                ..Default::default()
            },
            drain: config.drain,
            webhooks: config
                .webhooks
                .as_ref()
                .map(|w| WebhookParts {
                    listen: w.listen,
                    public_url: w.public_url.clone(),
                    max_body: w.max_body,
                    secrets: std::iter::once(&config.hubspot)
                        .chain(config.partners.iter().map(|p| &p.portal))
                        .filter_map(|p| {
                            p.webhook_secret
                                .as_ref()
                                .map(|s| (p.name.clone(), s.expose().to_owned()))
                        })
                        .collect(),
                    app: AppWebhooks {
                        oauth: config.oauth.clone(),
                        portal_ids: std::iter::once(&config.hubspot)
                            .chain(config.partners.iter().map(|p| &p.portal))
                            .filter_map(|p| p.portal_id.map(|id| (p.name.clone(), id)))
                            .collect(),
                    },
                    healthy_poll_interval: w.healthy_poll_interval,
                    quiet_after: w.quiet_after,
                })
                .or_else(|| {
                    config
                        .metrics_listen
                        .map(|listen| WebhookParts::metrics_only(listen, config.poll_interval))
                }),
        }
    }
}

/// The webhook listener's settings.
#[derive(Clone)]
pub struct WebhookParts {
    pub listen: SocketAddr,
    /// The URL HubSpot calls, up to the path (`https://dealsync.example.com`); `None` takes it
    /// from the request's Host header.
    pub public_url: Option<String>,
    pub max_body: usize,
    /// Portal name → webhook secret. Portals without a secret take no webhooks at
    /// `/webhooks/{portal}`.
    pub secrets: HashMap<String, String>,
    /// The OAuth app's single target, `POST /webhooks`.
    pub app: AppWebhooks,
    /// Poll interval for a portal whose webhooks are healthy (polling is then the safety net).
    pub healthy_poll_interval: Duration,
    /// A portal's webhooks count as quiet when polling finds a change more than this long
    /// after the portal's last webhook; its polling then returns to the normal interval.
    pub quiet_after: Duration,
}

impl WebhookParts {
    /// A listener that takes no webhooks (every portal's path answers 404) and serves health,
    /// readiness and metrics: a polling-only daemon's `[metrics] listen`.
    pub fn metrics_only(listen: SocketAddr, poll_interval: Duration) -> WebhookParts {
        WebhookParts {
            listen,
            public_url: None,
            max_body: webhook::DEFAULT_MAX_BODY,
            secrets: HashMap::new(),
            app: AppWebhooks::default(),
            healthy_poll_interval: poll_interval,
            quiet_after: Duration::from_secs(600),
        }
    }
}

/// The OAuth app's single webhook target (`POST /webhooks`): served when there is an app,
/// which signs every delivery with its client secret.
#[derive(Debug, Clone, Default)]
pub struct AppWebhooks {
    /// The app; when `None`, the app of the OAuth portals (if any) is used.
    pub oauth: Option<Arc<OAuthApp>>,
    /// Portal name → HubSpot portal id, for static-token portals whose events come through
    /// the app's target; OAuth portals' ids are learned at install and need no entry.
    pub portal_ids: HashMap<String, u64>,
}

impl std::fmt::Debug for WebhookParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookParts")
            .field("listen", &self.listen)
            .field("public_url", &self.public_url)
            .field("portals", &self.secrets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crm(#[from] CrmError),
    #[error(transparent)]
    Listen(#[from] ListenError),
}

/// A running daemon.
pub struct DaemonHandle {
    pub store: Store,
    pub engine: Arc<Engine>,
    /// Where the webhook listener is bound, when there is one.
    pub webhook_addr: Option<SocketAddr>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    drain: Duration,
}

/// The HTTP client for HubSpot's token endpoint: the process's shared one (its default
/// timeout, 30 s, bounds a token call).
fn oauth_http() -> Result<reqwest::Client, CrmError> {
    crate::crm::shared_http().map_err(|detail| CrmError::Connect {
        portal: "oauth".into(),
        call: "client setup".into(),
        detail,
    })
}

impl PortalConn {
    /// A client for this portal with its own rate budget. An OAuth portal needs the store
    /// its install is kept in.
    pub fn client(&self, retry: RetryPolicy, store: Option<&Store>) -> Result<Client, CrmError> {
        let client = Client::new(
            &self.name,
            &self.base_url,
            &self.token,
            Arc::new(Budget::new(self.rate_limit_per_10s, self.search_per_s)),
            retry,
        )?
        .with_versions(self.api);
        let Some(app) = &self.oauth else {
            return Ok(client);
        };
        let store = store.ok_or_else(|| CrmError::AuthRevoked {
            portal: self.name.clone(),
            detail: format!("{} authenticates through its OAuth install, which only the daemon reads; run this while `dealsync run` is set up for it", self.name),
        })?;
        let session =
            crate::oauth::Session::new(&self.name, app.clone(), oauth_http()?, store.clone());
        Ok(client.with_auth(Auth::OAuth(Arc::new(session))))
    }
}

impl DaemonHandle {
    /// Opens the store and starts pollers, sweep and workers.
    pub async fn start(parts: DaemonParts) -> Result<DaemonHandle, DaemonError> {
        let store = Store::open(&parts.store_path).await?;
        let hubspot = parts.hubspot.client(parts.retry, Some(&store))?;
        let mut partners = HashMap::new();
        for p in &parts.partners {
            partners.insert(p.name.clone(), p.client(parts.retry, Some(&store))?);
        }
        let wake = Arc::new(Notify::new());
        let engine = Arc::new(Engine::new(
            store.clone(),
            Portals {
                hubspot: hubspot.clone(),
                partners: partners.clone(),
            },
            parts.settings.clone(),
            wake.clone(),
        ));
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut webhook_addr = None;
        // Per portal, a poke for its deal poller from the listener (unlinked deals, where
        // registrations and invitations start); used only when those are on.
        let nudges: HashMap<String, Arc<Notify>> = if parts.settings.registration.is_empty() {
            HashMap::new()
        } else {
            std::iter::once(parts.hubspot.name.clone())
                .chain(parts.partners.iter().map(|p| p.name.clone()))
                .map(|n| (n, Arc::new(Notify::new())))
                .collect()
        };
        // The app whose redirect the listener serves and whose client secret signs
        // `POST /webhooks`.
        let app = parts
            .webhooks
            .as_ref()
            .and_then(|w| w.app.oauth.clone())
            .or_else(|| parts.hubspot.oauth.clone())
            .or_else(|| parts.partners.iter().find_map(|p| p.oauth.clone()));
        if let Some(w) = &parts.webhooks {
            let side_of = |name: &str| {
                if name == parts.hubspot.name {
                    Side::Hubspot
                } else {
                    Side::Partner
                }
            };
            let listener = Listener {
                store: store.clone(),
                portals: w
                    .secrets
                    .iter()
                    .map(|(name, secret)| WebhookPortal {
                        name: name.clone(),
                        side: side_of(name),
                        secret: secret.clone(),
                    })
                    .collect(),
                fields: parts.settings.fields.clone(),
                stage_maps: parts.settings.stage_maps.clone(),
                public_url: w.public_url.clone(),
                max_body: w.max_body,
                wake: wake.clone(),
                in_flight: engine.in_flight().clone(),
                engine: Some(engine.clone()),
                nudges: nudges.clone(),
                oauth: app.clone(),
                app_portals: std::iter::once(&parts.hubspot)
                    .chain(&parts.partners)
                    .map(|p| AppPortal {
                        name: p.name.clone(),
                        side: side_of(&p.name),
                        portal_id: w.app.portal_ids.get(&p.name).copied(),
                    })
                    .collect(),
            };
            let (addr, task) = webhook::serve(listener, w.listen, cancel.clone()).await?;
            webhook_addr = Some(addr);
            tasks.spawn(async move {
                let _ = task.await;
            });
            // Forget old event ids now and then; HubSpot stops retrying long before.
            let (st, c) = (store.clone(), cancel.clone());
            tasks.spawn(async move {
                loop {
                    let before = store::now_ms() - webhook::INBOX_KEEP.as_millis() as i64;
                    if let Err(e) = st.call(move |c| store::inbox_prune(c, before)).await {
                        tracing::warn!(error = %e, "cannot prune the webhook inbox");
                    }
                    tokio::select! {
                        _ = c.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
                    }
                }
            });
        }
        let base = |name: &str, side, c: Client| {
            Poller::new(
                name,
                side,
                c,
                store.clone(),
                parts.poll_interval,
                parts.poll_overlap,
                wake.clone(),
            )
        };
        // Per portal: set while its deal poller scans (see `Poller::with_scan_flag`).
        let scans: HashMap<String, Arc<std::sync::atomic::AtomicBool>> =
            std::iter::once(parts.hubspot.name.clone())
                .chain(parts.partners.iter().map(|p| p.name.clone()))
                .map(|n| (n, Arc::new(std::sync::atomic::AtomicBool::new(false))))
                .collect();
        let flagged = |p: Poller, name: &str, owner: bool| match scans.get(name) {
            Some(f) => p.with_scan_flag(f.clone(), owner),
            None => p,
        };
        let poller = |name: &str, side, c: Client| {
            let mut p = flagged(
                base(name, side, c).with_in_flight(engine.in_flight().clone()),
                name,
                true,
            );
            if let Some(n) = nudges.get(name) {
                p = p.with_nudge(n.clone());
            }
            // Webhooks reach a portal at its own path (a secret) or through the app's target
            // (an OAuth install, or a configured portal id).
            let app_routed = |w: &WebhookParts| {
                app.is_some()
                    && (w.app.portal_ids.contains_key(name)
                        || std::iter::once(&parts.hubspot)
                            .chain(&parts.partners)
                            .any(|c| c.name == name && c.oauth.is_some()))
            };
            match &parts.webhooks {
                Some(w) if w.secrets.contains_key(name) || app_routed(w) => {
                    p.with_webhook_pace(WebhookPace {
                        healthy_interval: w.healthy_poll_interval,
                        quiet_after: w.quiet_after,
                    })
                }
                _ => p,
            }
        };
        // Notes (shared messages) are polled on their own cursor at the normal interval:
        // webhooks carry no note associations, so they cannot stand in for this poll.
        let note_poller =
            |name: &str, side, c: Client| flagged(base(name, side, c).for_notes(), name, false);
        if parts.settings.messages.enabled {
            tasks.spawn(
                note_poller(&parts.hubspot.name, Side::Hubspot, hubspot.clone())
                    .run(cancel.clone()),
            );
            for (name, c) in &partners {
                tasks.spawn(note_poller(name, Side::Partner, c.clone()).run(cancel.clone()));
            }
        }
        // Quotes live on HubSpot's side; a changed quote refreshes the partner deals that show it.
        tasks.spawn(
            flagged(
                base(&parts.hubspot.name, Side::Hubspot, hubspot.clone()).for_associated("quotes"),
                &parts.hubspot.name,
                false,
            )
            .run(cancel.clone()),
        );
        let mut hubspot_poller = poller(&parts.hubspot.name, Side::Hubspot, hubspot.clone());
        if !parts.settings.registration.is_empty() {
            let invited: HashMap<String, (Client, crate::register::RegistrationSettings)> = parts
                .settings
                .registration
                .iter()
                .filter_map(|(name, s)| {
                    partners
                        .get(name)
                        .map(|c| (name.clone(), (c.clone(), s.clone())))
                })
                .collect();
            hubspot_poller = hubspot_poller.with_invitations(crate::ingest::poll::Invitations {
                partners: Arc::new(invited),
                markings: engine.markings().clone(),
            });
        }
        tasks.spawn(hubspot_poller.run(cancel.clone()));
        for (name, c) in partners {
            let mut p = poller(&name, Side::Partner, c);
            if let Some(settings) = parts.settings.registration.get(&name) {
                p = p.with_enrolment(crate::ingest::poll::Enrolment {
                    hubspot: hubspot.clone(),
                    settings: settings.clone(),
                });
            }
            tasks.spawn(p.run(cancel.clone()));
        }
        tasks.spawn(
            Sweep {
                store: store.clone(),
                interval: parts.sweep_interval,
                // As many links as one association batch read takes: the engine runs a full
                // batch of sweep jobs as one (see `Engine::worker`).
                batch: crate::crm::ASSOC_BATCH,
                wake: wake.clone(),
            }
            .run(cancel.clone()),
        );
        if parts.settings.notify.enabled() {
            tasks.spawn(
                crate::notify::Notifier {
                    store: store.clone(),
                    settings: parts.settings.notify.clone(),
                    hubspot: hubspot.clone(),
                    partners: engine.portals().partners.clone(),
                    directory: engine.directory().clone(),
                    dead_letter_path: parts.settings.dead_letter_path.clone(),
                }
                .run(cancel.clone()),
            );
        }
        for _ in 0..parts.settings.workers.max(1) {
            tasks.spawn(engine.clone().worker(cancel.clone()));
        }
        tracing::info!(
            partners = parts.partners.len(),
            workers = parts.settings.workers,
            "dealsync running"
        );
        Ok(DaemonHandle {
            store,
            engine,
            webhook_addr,
            cancel,
            tasks,
            drain: parts.drain,
        })
    }

    /// Asks every task to stop and waits for them (at most the drain bound).
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        let drained = tokio::time::timeout(self.drain, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(drain_ms = self.drain.as_millis() as u64, "shutdown bound reached; abandoning in-flight work (it is re-run on the next start)");
            self.tasks.abort_all();
        }
    }

    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}
