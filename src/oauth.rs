//! OAuth 2.0 for the operator's project app, installed in its own portal and in every
//! partner's. HubSpot requires OAuth for an app installed in more than one account (docs
//! "Authentication overview"); the flow is the authorization code grant with PKCE
//! (S256), refresh tokens, and `POST /oauth/2026-09/token` (form-encoded; spec
//! `oauth.json` of 2026-09; the answer carries `hub_id` and `scopes` since 2025-08, changelog
//! "Additional details returned when generating OAuth access tokens").
//!
//! What this module owns:
//! * [`install_link`]: the URL a portal's admin opens to install the app, with a fresh
//!   `state` and PKCE verifier (kept in the store until the callback uses them);
//! * [`complete_install`]: the callback's work: take the state, exchange the code, learn the
//!   portal id (the token answer's `hub_id`, checked by introspection), bind it;
//! * [`Session`]: one portal's access token, refreshed before it expires and once on a 401;
//!   a rotated refresh token is persisted before its access token is used; a refused refresh
//!   marks the install revoked and holds the portal's work.
//!
//! It never logs, prints or returns a token, code, verifier or client secret.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rand::Rng;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::crm::CrmError;
use crate::secret::Secret;
use crate::store::{self, BindError, InstallState, Store, StoreError};

/// The scopes dealsync's calls need: CRM objects it reads and writes (deals, notes through
/// `crm.objects.deals`, companies and contacts for registrations, quotes), their schemas
/// (custom properties, pipelines), owners (deal teams) and files (shared attachments).
pub const SCOPES: &[&str] = &[
    "oauth",
    "crm.objects.deals.read",
    "crm.objects.deals.write",
    "crm.objects.companies.read",
    "crm.objects.contacts.read",
    "crm.objects.quotes.read",
    "crm.objects.owners.read",
    "crm.schemas.deals.read",
    "crm.schemas.deals.write",
    "files",
];

/// Refresh this long (at most) before HubSpot says the access token expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// The operator's app, as configured under `[oauth]`.
#[derive(Debug, Clone)]
pub struct OAuthApp {
    pub client_id: String,
    pub client_secret: Secret,
    /// Where HubSpot sends the admin back: served by dealsync's listener.
    pub redirect_url: String,
    /// HubSpot's install page (`https://app.hubspot.com/oauth/authorize`; the sandbox's own
    /// when rehearsing).
    pub authorize_url: String,
    /// The API host whose `/oauth/2026-09/token` issues tokens.
    pub token_base_url: String,
    pub scopes: Vec<String>,
}

impl OAuthApp {
    fn token_url(&self, tail: &str) -> String {
        format!(
            "{}/oauth/2026-09/token{tail}",
            self.token_base_url.trim_end_matches('/')
        )
    }

    /// The path of `redirect_url`, which the listener serves.
    pub fn callback_path(&self) -> String {
        reqwest::Url::parse(&self.redirect_url)
            .map(|u| u.path().to_owned())
            .unwrap_or_else(|_| "/oauth/callback".into())
    }
}

/// OAuth failures, classified like every HubSpot error.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// HubSpot refused the grant (an unknown, used or revoked code or refresh token, a bad
    /// client): asking again will not help.
    #[error("{portal}: HubSpot's token endpoint refused the request ({code}): {message}")]
    Refused {
        portal: String,
        code: String,
        message: String,
    },
    /// A 5xx, a timeout, a body that is not a token answer: try again later.
    #[error("{portal}: HubSpot's token endpoint failed: {detail}")]
    Unavailable { portal: String, detail: String },
    #[error("{portal}: {why}")]
    Install { portal: String, why: String },
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the token endpoint answered.
#[derive(Clone)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: Duration,
    pub hub_id: Option<u64>,
    pub scopes: Vec<String>,
}

/// PKCE: the S256 challenge of a verifier (RFC 7636 §4.2).
pub fn challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn random_token(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill(&mut b[..]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A link that installs the app in `portal`'s account. The state and verifier it was made
/// with are recorded in the store; the link works once, within a week.
pub async fn install_link(
    app: &OAuthApp,
    store: &Store,
    portal: &str,
) -> Result<String, OAuthError> {
    let state = random_token(24);
    let verifier = random_token(48);
    let url = authorize_url(app, &state, &challenge(&verifier));
    let (p, s) = (portal.to_owned(), state);
    store
        .call(move |c| store::add_pending(c, &s, &p, &verifier))
        .await?;
    Ok(url)
}

fn authorize_url(app: &OAuthApp, state: &str, challenge: &str) -> String {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("client_id", &app.client_id)
        .append_pair("redirect_uri", &app.redirect_url)
        .append_pair("scope", &app.scopes.join(" "))
        .append_pair("state", state)
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", "S256")
        .finish();
    format!("{}?{query}", app.authorize_url)
}

/// A finished install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub portal: String,
    pub hub_id: u64,
}

/// The callback: `state` names the install link, `code` is HubSpot's authorization code.
/// Nothing is recorded unless every step succeeds; a refused state leaves the link unusable
/// (a replayed callback must not install anything).
pub async fn complete_install(
    app: &OAuthApp,
    http: &reqwest::Client,
    store: &Store,
    state: &str,
    code: &str,
) -> Result<Installed, OAuthError> {
    let s = state.to_owned();
    let (portal, verifier) = store
        .call(move |c| store::take_pending(c, &s))
        .await?
        .ok_or_else(|| OAuthError::Install {
            portal: "install".into(),
            why: "this install link is unknown, already used or expired; ask the operator for a new one (dealsync install-link)".into(),
        })?;
    let exchanged = async {
        let tokens = post_token(
            app,
            http,
            &portal,
            &[
                ("grant_type", "authorization_code"),
                ("redirect_uri", &app.redirect_url),
                ("code", code),
                ("code_verifier", &verifier),
            ],
        )
        .await?;
        let hub_id = match tokens.hub_id {
            Some(h) => h,
            None => introspect(app, http, &portal, &tokens.access_token).await?,
        };
        Ok::<_, OAuthError>((tokens, hub_id))
    }
    .await;
    let (tokens, hub_id) = match exchanged {
        Ok(t) => t,
        // HubSpot failed, not the admin: the same link (and code) may be tried again.
        Err(e @ OAuthError::Unavailable { .. }) => {
            let (s, p, v) = (state.to_owned(), portal.clone(), verifier);
            store
                .call(move |c| store::add_pending(c, &s, &p, &v))
                .await?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let (p, refresh, scopes) = (
        portal.clone(),
        tokens.refresh_token,
        tokens.scopes.join(" "),
    );
    store
        .call(move |c| Ok(store::bind_install(c, &p, hub_id, &refresh, &scopes)))
        .await??;
    tracing::info!(portal = %portal, hub_id, "OAuth install bound");
    Ok(Installed { portal, hub_id })
}

/// The portal id an access token belongs to (`/token/introspect`).
async fn introspect(
    app: &OAuthApp,
    http: &reqwest::Client,
    portal: &str,
    token: &str,
) -> Result<u64, OAuthError> {
    let v = post_form(
        app,
        http,
        portal,
        &app.token_url("/introspect"),
        &[("token", token), ("token_type_hint", "access_token")],
    )
    .await?;
    let active = v.get("active").and_then(Value::as_bool) == Some(true);
    v.get("hub_id")
        .and_then(Value::as_u64)
        .filter(|_| active)
        .ok_or_else(|| OAuthError::Unavailable {
            portal: portal.to_owned(),
            detail: "introspection did not name the token's portal".into(),
        })
}

async fn post_token(
    app: &OAuthApp,
    http: &reqwest::Client,
    portal: &str,
    form: &[(&str, &str)],
) -> Result<Tokens, OAuthError> {
    let v = post_form(app, http, portal, &app.token_url(""), form).await?;
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let broken = |what: &str| OAuthError::Unavailable {
        portal: portal.to_owned(),
        detail: format!("the token answer has no {what}"),
    };
    Ok(Tokens {
        access_token: text("access_token").ok_or_else(|| broken("access_token"))?,
        refresh_token: text("refresh_token").ok_or_else(|| broken("refresh_token"))?,
        expires_in: Duration::from_secs(
            v.get("expires_in")
                .and_then(Value::as_u64)
                .ok_or_else(|| broken("expires_in"))?
                .min(86_400),
        ),
        hub_id: v.get("hub_id").and_then(Value::as_u64),
        scopes: v
            .get("scopes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect(),
    })
}

/// One form POST to the token endpoint family, with the app's credentials added.
async fn post_form(
    app: &OAuthApp,
    http: &reqwest::Client,
    portal: &str,
    url: &str,
    form: &[(&str, &str)],
) -> Result<Value, OAuthError> {
    let mut fields: Vec<(&str, &str)> = vec![
        ("client_id", &app.client_id),
        ("client_secret", app.client_secret.expose()),
    ];
    fields.extend_from_slice(form);
    let unavailable = |detail: String| OAuthError::Unavailable {
        portal: portal.to_owned(),
        detail,
    };
    // The error text of a send failure can carry the URL, never the form: safe to show.
    let resp = http
        .post(url)
        .form(&fields)
        .send()
        .await
        .map_err(|e| unavailable(format!("no answer ({})", e.without_url())))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| unavailable(format!("answer cut short ({})", e.without_url())))?;
    let body: Option<Value> = serde_json::from_slice(&bytes).ok();
    match (status, body) {
        (200..=299, Some(v)) if v.is_object() => Ok(v),
        (200..=299, _) => Err(unavailable(format!(
            "HTTP {status} with a body that is not JSON"
        ))),
        (400..=499, Some(v)) if status != 429 => {
            let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
            Err(OAuthError::Refused {
                portal: portal.to_owned(),
                code: text("status")
                    .filter(|s| s != "error")
                    .or_else(|| text("category"))
                    .or_else(|| text("error"))
                    .unwrap_or_else(|| format!("HTTP {status}")),
                message: text("message")
                    .or_else(|| text("error_description"))
                    .unwrap_or_default(),
            })
        }
        _ => Err(unavailable(format!("HTTP {status}"))),
    }
}

/// A cached access token.
struct Access {
    token: String,
    refresh_at: Instant,
}

/// One portal's OAuth credentials in use: the access token the client sends.
pub struct Session {
    portal: String,
    app: Arc<OAuthApp>,
    http: reqwest::Client,
    store: Store,
    access: tokio::sync::Mutex<Option<Access>>,
    refreshes: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("portal", &self.portal)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub fn new(portal: &str, app: Arc<OAuthApp>, http: reqwest::Client, store: Store) -> Session {
        Session {
            portal: portal.to_owned(),
            app,
            http,
            store,
            access: tokio::sync::Mutex::new(None),
            refreshes: Default::default(),
        }
    }

    /// Access tokens obtained so far (for metrics and the token soak).
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The access token to send, refreshed first when it is (nearly) expired. Callers that
    /// wait here while another refreshes get the new token: one refresh per expiry.
    pub async fn access_token(&self) -> Result<String, CrmError> {
        let mut access = self.access.lock().await;
        if let Some(a) = access.as_ref().filter(|a| Instant::now() < a.refresh_at) {
            return Ok(a.token.clone());
        }
        let fresh = self.refresh().await.map_err(|e| self.crm_error(e))?;
        let token = fresh.token.clone();
        *access = Some(fresh);
        Ok(token)
    }

    /// Forgets `token` after HubSpot refused it (401), so the next call refreshes.
    pub async fn invalidate(&self, token: &str) {
        let mut access = self.access.lock().await;
        if access.as_ref().is_some_and(|a| a.token == token) {
            *access = None;
        }
    }

    async fn refresh(&self) -> Result<Access, OAuthError> {
        let p = self.portal.clone();
        let install = self.store.call(move |c| store::install(c, &p)).await?;
        let install = match install {
            Some(i) if i.state == InstallState::Active => i,
            _ => return Err(self.not_installed()),
        };
        let answer = post_token(
            &self.app,
            &self.http,
            &self.portal,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &install.refresh_token),
            ],
        )
        .await;
        let tokens = match answer {
            Ok(t) => t,
            Err(OAuthError::Refused { code, message, .. }) => {
                let p = self.portal.clone();
                self.store
                    .call(move |c| store::revoke_install(c, &p))
                    .await?;
                tracing::error!(portal = %self.portal, %code, %message, "HubSpot refused the refresh token; the install is revoked");
                return Err(self.not_installed());
            }
            Err(e) => return Err(e),
        };
        if tokens.refresh_token != install.refresh_token {
            // Persist first: if we crash after using the new access token, the old refresh
            // token may already be dead.
            let (p, t) = (self.portal.clone(), tokens.refresh_token.clone());
            self.store
                .call(move |c| store::set_refresh_token(c, &p, &t))
                .await?;
        }
        self.refreshes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Refresh a minute early, or a tenth of the lifetime early for short-lived tokens.
        let lifetime = tokens
            .expires_in
            .saturating_sub(REFRESH_MARGIN.min(tokens.expires_in / 10));
        Ok(Access {
            token: tokens.access_token,
            refresh_at: Instant::now() + lifetime,
        })
    }

    fn not_installed(&self) -> OAuthError {
        OAuthError::Install {
            portal: self.portal.clone(),
            why: format!(
                "the app is not installed (or its install was revoked) in this portal; its work waits. Send the install link again: dealsync install-link --portal {}",
                self.portal
            ),
        }
    }

    fn crm_error(&self, e: OAuthError) -> CrmError {
        match e {
            OAuthError::Unavailable { detail, .. } => CrmError::Connect {
                portal: self.portal.clone(),
                call: "POST /oauth/2026-09/token".into(),
                detail,
            },
            OAuthError::Store(e) => CrmError::Connect {
                portal: self.portal.clone(),
                call: "reading the install".into(),
                detail: e.to_string(),
            },
            other => CrmError::AuthRevoked {
                portal: self.portal.clone(),
                detail: other.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_challenge_matches_rfc_7636_appendix_b() {
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn the_install_link_asks_for_pkce_and_the_configured_scopes() {
        let app = OAuthApp {
            client_id: "cid".into(),
            client_secret: Secret::new("s"),
            redirect_url: "https://dealsync.example/oauth/callback".into(),
            authorize_url: "https://app.hubspot.com/oauth/authorize".into(),
            token_base_url: "https://api.hubapi.com".into(),
            scopes: vec!["oauth".into(), "files".into()],
        };
        let url = reqwest::Url::parse(&authorize_url(&app, "st", "ch")).unwrap();
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(q["client_id"], "cid");
        assert_eq!(q["redirect_uri"], app.redirect_url);
        assert_eq!(q["scope"], "oauth files");
        assert_eq!(q["state"], "st");
        assert_eq!(q["code_challenge"], "ch");
        assert_eq!(q["code_challenge_method"], "S256");
        assert!(
            !q.contains_key("client_secret"),
            "the secret never goes in a link"
        );
        assert_eq!(app.callback_path(), "/oauth/callback");
    }
}
