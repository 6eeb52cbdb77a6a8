//! HubSpot's OAuth 2.0 server for one app installed in many portals: authorization codes with
//! PKCE (S256 only), the token endpoint (code exchange and refresh), introspection, revocation
//! and a portal uninstalling the app. A live access token is accepted by the gate like the
//! portal's static token.
//!
//! `portal=NAME` on `/oauth/authorize` stands in for the person choosing an account in
//! HubSpot's UI; the sandbox approves at once and redirects with the code.
//!
//! Tokens, secrets and codes are never logged. The state lives in memory only (a sandbox state
//! file does not keep it), behind one short-held lock that never spans an `.await`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use parking_lot::Mutex;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::{ApiError, ApiResult};
use super::objects::reply;
use super::params::{Json, Query};
use super::{Portal, Shared};

/// How long an authorization code can be exchanged (HubSpot: 10 minutes).
pub const CODE_TTL: Duration = Duration::from_secs(600);
/// Largest form body the token endpoints read.
const MAX_FORM_BYTES: usize = 64 * 1024;
/// Expired access tokens are forgotten this long after expiry, so a long run stays small
/// while a client still gets "expired" rather than "invalid" for a while.
const FORGET_EXPIRED_MS: i64 = 3_600_000;

/// The app's credentials, as a developer copies them from HubSpot's app settings.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthApp {
    pub client_id: String,
    pub client_secret: String,
    /// The app's id in its developer account (the app webhooks API's `{appId}`).
    #[serde(default)]
    pub app_id: String,
    /// The developer account's API key (`hapikey`), which the app webhooks API takes.
    #[serde(default)]
    pub developer_key: String,
}

impl std::fmt::Debug for OAuthApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthApp")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("app_id", &self.app_id)
            .field("developer_key", &"[redacted]")
            .finish()
    }
}

/// The OAuth facts in the startup line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthInfo {
    pub client_id: String,
    pub client_secret: String,
    pub authorize_url: String,
}

/// The next token calls fail this way (`PUT /_sandbox/oauth/faults`); status faults come
/// before garbage ones.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFaults {
    /// Status of the failing answers (400–599), with an HTML body for 5xx, an empty one else.
    #[serde(default)]
    pub status: Option<u16>,
    /// How many calls get `status` (1 when only `status` is given).
    #[serde(default)]
    pub count: Option<u32>,
    /// How many calls then get a 200 whose body is not JSON.
    #[serde(default)]
    pub garbage: u32,
}

#[derive(Debug, Default, Clone, Serialize)]
struct Counts {
    exchanges: u64,
    refreshes: u64,
    introspections: u64,
    failed: u64,
    faulted: u64,
}

/// What an authorization code was issued for; an exchange must match all of it.
struct Code {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    portal: usize,
    scopes: Vec<String>,
    expires_ms: i64,
}

struct Refresh {
    portal: usize,
    scopes: Vec<String>,
}

struct Access {
    portal: usize,
    scopes: Vec<String>,
    /// The refresh token it was issued from: revoking that one kills this one.
    refresh: String,
    expires_ms: i64,
}

#[derive(Clone, Serialize)]
struct Install {
    portal: String,
    hub_id: u64,
    revoked: bool,
    scopes: Vec<String>,
}

struct Grants {
    rng: StdRng,
    codes: HashMap<String, Code>,
    refresh: HashMap<String, Refresh>,
    access: HashMap<String, Access>,
    /// By portal index, so the listing follows the configured order.
    installs: BTreeMap<usize, Install>,
    faults: TokenFaults,
    counts: Counts,
}

/// The OAuth server's state, one per sandbox.
pub(crate) struct OAuth {
    pub app: OAuthApp,
    ttl: Duration,
    rotate: bool,
    grants: Mutex<Grants>,
    /// The app's webhook subscriptions, as the app webhooks API lists them (set through
    /// `PUT /_sandbox/oauth/subscriptions`; none at start).
    subscriptions: Mutex<Vec<Value>>,
}

fn uuid_from(rng: &mut StdRng) -> String {
    uuid::Builder::from_random_bytes(rng.random())
        .into_uuid()
        .to_string()
}

impl OAuth {
    /// Credentials come from their own generator, so turning OAuth on changes no other seeded
    /// value (portal tokens, fault draws).
    pub fn new(seed: Option<u64>, ttl: Duration, rotate: bool) -> OAuth {
        let mut rng = match seed {
            Some(s) => StdRng::seed_from_u64(s ^ 0x0a07_4a11_5eed_0001),
            None => StdRng::from_os_rng(),
        };
        let client_id = uuid_from(&mut rng);
        let client_secret = uuid_from(&mut rng);
        let app = OAuthApp {
            client_id,
            client_secret,
            app_id: rng.random_range(1_000_000..10_000_000u64).to_string(),
            developer_key: uuid_from(&mut rng),
        };
        OAuth {
            app,
            ttl,
            rotate,
            grants: Mutex::new(Grants {
                rng,
                codes: HashMap::new(),
                refresh: HashMap::new(),
                access: HashMap::new(),
                installs: BTreeMap::new(),
                faults: TokenFaults::default(),
                counts: Counts::default(),
            }),
            subscriptions: Mutex::new(Vec::new()),
        }
    }

    pub fn info(&self, base_url: &str) -> OAuthInfo {
        OAuthInfo {
            client_id: self.app.client_id.clone(),
            client_secret: self.app.client_secret.clone(),
            authorize_url: format!("{base_url}/oauth/authorize"),
        }
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    /// The portal index a live access token acts for; `Ok(None)` when it is no OAuth token
    /// the sandbox knows (revoked ones are forgotten, so they read as unknown).
    fn access_portal(&self, token: &str, now_ms: i64) -> ApiResult<Option<usize>> {
        let g = self.grants.lock();
        let Some(a) = g.access.get(token) else {
            return Ok(None);
        };
        if now_ms < a.expires_ms {
            return Ok(Some(a.portal));
        }
        let ago = (now_ms - a.expires_ms + 999) / 1000;
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "EXPIRED_AUTHENTICATION",
            format!("The OAuth token used to make this call expired {ago} second(s) ago."),
        ))
    }
}

/// The portal a bearer token acts for: a portal's static token, or a live OAuth access token.
pub(crate) fn caller(shared: &Shared, token: &str) -> ApiResult<Arc<Portal>> {
    if let Some(p) = shared.portal_by_token(token) {
        return Ok(p.clone());
    }
    match shared.oauth.access_portal(token, shared.now_ms())? {
        Some(i) => Ok(shared.portals[i].clone()),
        None => Err(ApiError::unauthorized()),
    }
}

/// An OAuth refusal in HubSpot's OAuth shape: `status` and `category` both carry the code.
#[derive(Debug)]
struct OAuthError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

fn refuse(code: &'static str, message: impl Into<String>) -> OAuthError {
    OAuthError {
        status: StatusCode::BAD_REQUEST,
        code,
        message: message.into(),
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = json!({
            "status": self.code,
            "message": self.message,
            "correlationId": uuid::Uuid::new_v4().to_string(),
            "category": self.code,
        });
        (self.status, axum::Json(body)).into_response()
    }
}

/// HubSpot's OAuth paths (outside the gate: they take no bearer token).
pub fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/oauth/authorize", get(authorize))
        .route("/oauth/2026-09/token", post(token))
        .route("/oauth/2026-09/token/introspect", post(introspect))
        .route("/oauth/2026-09/token/revoke", post(revoke))
        .route(
            "/app-webhooks/2026-09/{app_id}/subscriptions",
            get(app_subscriptions),
        )
}

/// `GET /app-webhooks/2026-09/{appId}/subscriptions?hapikey=…`: the app's webhook
/// subscriptions (`webhooks.json`, `SubscriptionListResponse`). Only the developer key opens
/// it; an unknown app is a 404.
async fn app_subscriptions(
    State(shared): State<Arc<Shared>>,
    Path(app_id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let app = &shared.oauth.app;
    let query = Query::parse(q.as_deref());
    let key = query.get("hapikey").unwrap_or_default();
    if !bool::from(key.as_bytes().ct_eq(app.developer_key.as_bytes())) || key.is_empty() {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "INVALID_AUTHENTICATION",
            "The developer API key provided is invalid. View or manage your API key here: https://app.hubspot.com/l/api-key/",
        )
        .into_response();
    }
    if app_id != app.app_id {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "OBJECT_NOT_FOUND",
            format!("No app with id {app_id} in this developer account"),
        )
        .into_response();
    }
    let results = shared.oauth.subscriptions.lock().clone();
    reply(StatusCode::OK, json!({ "results": results }))
}

/// `PUT /_sandbox/oauth/subscriptions` `{results: [...]}`: sets the app's webhook
/// subscriptions (each `{eventType, propertyName?, objectTypeId?, active}`); ids and times are
/// filled in. `GET` lists them.
pub async fn control_put_subscriptions(
    State(shared): State<Arc<Shared>>,
    Json(body): Json<Value>,
) -> Response {
    let mut list: Vec<Value> = body["results"].as_array().cloned().unwrap_or_default();
    for (i, s) in list.iter_mut().enumerate() {
        s["id"] = json!((i + 1).to_string());
        s["createdAt"] = json!(shared.now_ms().to_string());
        if s.get("active").is_none() {
            s["active"] = json!(true);
        }
    }
    *shared.oauth.subscriptions.lock() = list.clone();
    reply(StatusCode::OK, json!({ "results": list }))
}

pub async fn control_get_subscriptions(State(shared): State<Arc<Shared>>) -> Response {
    let list = shared.oauth.subscriptions.lock().clone();
    reply(StatusCode::OK, json!({ "results": list }))
}

/// What a person approves on HubSpot's consent screen.
#[derive(Debug, Default, Deserialize)]
pub struct AuthorizeRequest {
    pub portal: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
}

impl AuthorizeRequest {
    fn from_query(q: &Query) -> AuthorizeRequest {
        let get = |k: &str| q.get(k).map(str::to_owned);
        AuthorizeRequest {
            portal: get("portal"),
            client_id: get("client_id"),
            redirect_uri: get("redirect_uri"),
            scope: get("scope"),
            state: get("state"),
            code_challenge: get("code_challenge"),
            code_challenge_method: get("code_challenge_method"),
        }
    }
}

/// `GET /oauth/authorize`: approves at once and redirects with the code.
async fn authorize(State(shared): State<Arc<Shared>>, RawQuery(q): RawQuery) -> Response {
    let req = AuthorizeRequest::from_query(&Query::parse(q.as_deref()));
    match grant_code(&shared, &req) {
        Ok((_, location)) => match HeaderValue::from_str(&location) {
            Ok(v) => (StatusCode::FOUND, [(header::LOCATION, v)]).into_response(),
            Err(_) => refused(
                &shared,
                refuse(
                    "BAD_REDIRECT_URI",
                    "redirect_uri is not a valid header value",
                ),
            ),
        },
        Err(e) => refused(&shared, e),
    }
}

/// `POST /_sandbox/oauth/authorize`: the same approval for tests that don't follow
/// redirects; `code_challenge_method` defaults to S256.
pub async fn control_authorize(
    State(shared): State<Arc<Shared>>,
    Json(mut req): Json<AuthorizeRequest>,
) -> Response {
    req.code_challenge_method
        .get_or_insert_with(|| "S256".into());
    match grant_code(&shared, &req) {
        Ok((code, location)) => reply(
            StatusCode::OK,
            json!({ "code": code, "location": location }),
        ),
        Err(e) => refused(&shared, e),
    }
}

fn refused(shared: &Shared, e: OAuthError) -> Response {
    shared.oauth.grants.lock().counts.failed += 1;
    e.into_response()
}

fn required<'a>(
    v: &'a Option<String>,
    code: &'static str,
    name: &str,
) -> Result<&'a str, OAuthError> {
    v.as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| refuse(code, format!("{name} is required")))
}

/// Checks an approval and issues its code; returns the code and the redirect location.
fn grant_code(shared: &Shared, req: &AuthorizeRequest) -> Result<(String, String), OAuthError> {
    let oauth = &shared.oauth;
    let client_id = required(&req.client_id, "BAD_CLIENT_ID", "client_id")?;
    if client_id != oauth.app.client_id {
        return Err(refuse(
            "BAD_CLIENT_ID",
            "client_id is not this sandbox's app",
        ));
    }
    let redirect_uri = required(&req.redirect_uri, "BAD_REDIRECT_URI", "redirect_uri")?;
    let mut location = redirect_target(redirect_uri)?;
    let scopes = split_scopes(required(&req.scope, "BAD_SCOPE", "scope")?);
    let name = required(
        &req.portal,
        "BAD_PORTAL",
        "portal (the account to install in)",
    )?;
    let portal = shared
        .portals
        .iter()
        .position(|p| p.info.name == name || p.info.portal_id.to_string() == name)
        .ok_or_else(|| refuse("BAD_PORTAL", format!("no sandbox portal named {name}")))?;
    let challenge = required(&req.code_challenge, "BAD_CODE_CHALLENGE", "code_challenge")?;
    if req.code_challenge_method.as_deref() != Some("S256") {
        return Err(refuse(
            "BAD_CODE_CHALLENGE",
            "code_challenge_method must be S256",
        ));
    }
    let now = shared.now_ms();
    let code = {
        let mut g = oauth.grants.lock();
        let code = super::random_token(&mut g.rng, "oauth-code");
        g.codes.retain(|_, c| c.expires_ms > now);
        g.codes.insert(
            code.clone(),
            Code {
                client_id: client_id.to_owned(),
                redirect_uri: redirect_uri.to_owned(),
                challenge: challenge.to_owned(),
                portal,
                scopes,
                expires_ms: now + CODE_TTL.as_millis() as i64,
            },
        );
        code
    };
    {
        let mut q = location.query_pairs_mut();
        q.append_pair("code", &code);
        if let Some(s) = &req.state {
            q.append_pair("state", s);
        }
    }
    Ok((code, location.to_string()))
}

fn redirect_target(uri: &str) -> Result<reqwest::Url, OAuthError> {
    let url = reqwest::Url::parse(uri).map_err(|e| {
        refuse(
            "BAD_REDIRECT_URI",
            format!("redirect_uri is not a URL: {e}"),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.fragment().is_some() {
        return Err(refuse(
            "BAD_REDIRECT_URI",
            "redirect_uri must be an http(s) URL without a fragment",
        ));
    }
    Ok(url)
}

fn split_scopes(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

/// A form body's fields (the first of a repeated key wins).
struct Form(HashMap<String, String>);

impl Form {
    async fn read(req: Request) -> Result<Form, OAuthError> {
        let bytes = axum::body::to_bytes(req.into_body(), MAX_FORM_BYTES)
            .await
            .map_err(|_| {
                refuse(
                    "BAD_REQUEST",
                    format!("the form body is over {MAX_FORM_BYTES} bytes"),
                )
            })?;
        let mut map = HashMap::new();
        for (k, v) in form_urlencoded::parse(&bytes) {
            map.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
        Ok(Form(map))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The client credentials every token call carries.
    fn client(&self, app: &OAuthApp) -> Result<(), OAuthError> {
        let id = self.get("client_id").unwrap_or_default();
        if id != app.client_id {
            return Err(refuse("BAD_CLIENT_ID", "missing or unknown client_id"));
        }
        let secret = self.get("client_secret").unwrap_or_default();
        if !bool::from(secret.as_bytes().ct_eq(app.client_secret.as_bytes())) {
            return Err(refuse(
                "BAD_CLIENT_SECRET",
                "missing or wrong client_secret",
            ));
        }
        Ok(())
    }
}

/// `POST /oauth/2026-09/token`: injected faults first (they change nothing), then the grant.
async fn token(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    if let Some(resp) = draw_fault(&shared) {
        return resp;
    }
    let answer = match Form::read(req).await {
        Ok(form) => grant(&shared, &form),
        Err(e) => Err(e),
    };
    match answer {
        Ok(body) => reply(StatusCode::OK, body),
        Err(e) => refused(&shared, e),
    }
}

fn draw_fault(shared: &Shared) -> Option<Response> {
    let mut g = shared.oauth.grants.lock();
    let f = &mut g.faults;
    let resp = if let (Some(status), Some(n @ 1..)) = (f.status, f.count) {
        f.count = Some(n - 1);
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let body = if status.is_server_error() {
            format!(
                "<html><head><title>{status}</title></head><body><h1>{status}</h1></body></html>"
            )
        } else {
            String::new()
        };
        (status, [(header::CONTENT_TYPE, "text/html")], body).into_response()
    } else if f.garbage > 0 {
        f.garbage -= 1;
        // Labelled JSON so a client must parse to notice, as behind a misbehaving proxy.
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "upstream connect error or disconnect/reset before headers",
        )
            .into_response()
    } else {
        return None;
    };
    g.counts.faulted += 1;
    Some(resp)
}

fn grant(shared: &Shared, form: &Form) -> Result<Value, OAuthError> {
    let oauth = &shared.oauth;
    let grant_type = form.get("grant_type");
    if !matches!(grant_type, Some("authorization_code" | "refresh_token")) {
        return Err(refuse(
            "BAD_GRANT_TYPE",
            "grant_type must be authorization_code or refresh_token",
        ));
    }
    form.client(&oauth.app)?;
    let now = shared.now_ms();
    let mut g = oauth.grants.lock();
    let issued = if grant_type == Some("authorization_code") {
        let issued = exchange(&mut g, form, now)?;
        let p = &shared.portals[issued.portal].info;
        g.installs.insert(
            issued.portal,
            Install {
                portal: p.name.clone(),
                hub_id: p.portal_id,
                revoked: false,
                scopes: issued.scopes.clone(),
            },
        );
        g.counts.exchanges += 1;
        issued
    } else {
        let issued = refresh(&mut g, form, oauth.rotate)?;
        g.counts.refreshes += 1;
        issued
    };
    let access = issue_access(&mut g, &issued, now + oauth.ttl_ms(), now);
    drop(g);
    Ok(json!({
        "token_type": "bearer",
        "access_token": access,
        "refresh_token": issued.refresh,
        "expires_in": oauth.ttl.as_secs(),
        "hub_id": shared.portals[issued.portal].info.portal_id,
        "scopes": issued.scopes,
    }))
}

/// The refresh token a grant leaves the client with, and what it covers.
struct Issued {
    portal: usize,
    scopes: Vec<String>,
    refresh: String,
}

/// A code is used up by any exchange attempt, good or bad, so a leaked code cannot be tried
/// against many verifiers.
fn exchange(g: &mut Grants, form: &Form, now: i64) -> Result<Issued, OAuthError> {
    let code = form
        .get("code")
        .and_then(|c| g.codes.remove(c))
        .filter(|c| c.expires_ms > now && form.get("client_id") == Some(c.client_id.as_str()))
        .ok_or_else(|| {
            refuse(
                "BAD_AUTH_CODE",
                "missing, unknown, expired or already used code",
            )
        })?;
    if form.get("redirect_uri") != Some(code.redirect_uri.as_str()) {
        return Err(refuse(
            "BAD_REDIRECT_URI",
            "redirect_uri does not match the one the code was issued for",
        ));
    }
    let verifier = form.get("code_verifier").unwrap_or_default();
    let digest = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier));
    if !bool::from(digest.as_bytes().ct_eq(code.challenge.as_bytes())) {
        return Err(refuse(
            "BAD_CODE_VERIFIER",
            "code_verifier does not match the code_challenge",
        ));
    }
    let refresh = super::random_token(&mut g.rng, "oauth-rt");
    g.refresh.insert(
        refresh.clone(),
        Refresh {
            portal: code.portal,
            scopes: code.scopes.clone(),
        },
    );
    Ok(Issued {
        portal: code.portal,
        scopes: code.scopes,
        refresh,
    })
}

/// With rotation, the old refresh token is gone and the access tokens it issued now hang off
/// the new one (revoking the new one still kills them).
fn refresh(g: &mut Grants, form: &Form, rotate: bool) -> Result<Issued, OAuthError> {
    let old = form.get("refresh_token").unwrap_or_default();
    let Some(r) = g.refresh.get(old) else {
        return Err(refuse(
            "BAD_REFRESH_TOKEN",
            "missing, unknown or revoked refresh token",
        ));
    };
    let (portal, scopes) = (r.portal, r.scopes.clone());
    if !rotate {
        return Ok(Issued {
            portal,
            scopes,
            refresh: old.to_owned(),
        });
    }
    let new = super::random_token(&mut g.rng, "oauth-rt");
    if let Some(r) = g.refresh.remove(old) {
        g.refresh.insert(new.clone(), r);
    }
    for a in g.access.values_mut().filter(|a| a.refresh == old) {
        a.refresh = new.clone();
    }
    Ok(Issued {
        portal,
        scopes,
        refresh: new,
    })
}

fn issue_access(g: &mut Grants, issued: &Issued, expires_ms: i64, now: i64) -> String {
    g.access
        .retain(|_, a| a.expires_ms + FORGET_EXPIRED_MS > now);
    let token = super::random_token(&mut g.rng, "oauth-at");
    g.access.insert(
        token.clone(),
        Access {
            portal: issued.portal,
            scopes: issued.scopes.clone(),
            refresh: issued.refresh.clone(),
            expires_ms,
        },
    );
    token
}

/// `POST /oauth/2026-09/token/introspect`: what a token is, or `{"active": false}`.
async fn introspect(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let answer = match Form::read(req).await {
        Ok(form) => form
            .client(&shared.oauth.app)
            .map(|()| describe(&shared, &form)),
        Err(e) => Err(e),
    };
    match answer {
        Ok(body) => {
            shared.oauth.grants.lock().counts.introspections += 1;
            reply(StatusCode::OK, body)
        }
        Err(e) => refused(&shared, e),
    }
}

fn describe(shared: &Shared, form: &Form) -> Value {
    let token = form.get("token").unwrap_or_default();
    let now = shared.now_ms();
    let hub = |i: usize| shared.portals[i].info.portal_id;
    let client_id = &shared.oauth.app.client_id;
    let g = shared.oauth.grants.lock();
    if let Some(a) = g.access.get(token).filter(|a| a.expires_ms > now) {
        return json!({
            "active": true,
            "hub_id": hub(a.portal),
            "client_id": client_id,
            "scope": a.scopes.join(" "),
            "token_type": "access_token",
            "exp": a.expires_ms / 1000,
        });
    }
    if let Some(r) = g.refresh.get(token) {
        return json!({
            "active": true,
            "hub_id": hub(r.portal),
            "client_id": client_id,
            "scope": r.scopes.join(" "),
            "token_type": "refresh_token",
        });
    }
    json!({ "active": false })
}

/// `POST /oauth/2026-09/token/revoke`: an unknown token is no error (RFC 7009).
async fn revoke(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let form = match Form::read(req).await {
        Ok(form) => form,
        Err(e) => return refused(&shared, e),
    };
    if let Err(e) = form.client(&shared.oauth.app) {
        return refused(&shared, e);
    }
    let token = form.get("token").unwrap_or_default();
    let mut g = shared.oauth.grants.lock();
    if g.refresh.remove(token).is_some() {
        g.access.retain(|_, a| a.refresh != token);
    } else {
        g.access.remove(token);
    }
    drop(g);
    reply(StatusCode::OK, json!({}))
}

/// `POST /_sandbox/portals/{portal}/oauth/revoke`: the portal uninstalls the app; every token
/// and pending code of it stops working.
pub async fn control_uninstall(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let portal = shared
        .portals
        .iter()
        .position(|p| p.info.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no sandbox portal named {name}")))?;
    let mut g = shared.oauth.grants.lock();
    let before = g.refresh.len() + g.access.len();
    g.refresh.retain(|_, r| r.portal != portal);
    g.access.retain(|_, a| a.portal != portal);
    g.codes.retain(|_, c| c.portal != portal);
    let revoked = before - g.refresh.len() - g.access.len();
    if let Some(i) = g.installs.get_mut(&portal) {
        i.revoked = true;
    }
    drop(g);
    Ok(reply(
        StatusCode::OK,
        json!({ "portal": name, "revoked_tokens": revoked }),
    ))
}

/// `GET /_sandbox/oauth`: counters and installs, never a secret or token.
pub async fn control_summary(State(shared): State<Arc<Shared>>) -> Response {
    let g = shared.oauth.grants.lock();
    let c = &g.counts;
    let body = json!({
        "client_id": shared.oauth.app.client_id,
        "exchanges": c.exchanges,
        "refreshes": c.refreshes,
        "introspections": c.introspections,
        "failed": c.failed,
        "faulted": c.faulted,
        "installs": g.installs.values().collect::<Vec<_>>(),
    });
    drop(g);
    reply(StatusCode::OK, body)
}

/// `GET /_sandbox/oauth/tokens`: TEST ONLY, the one control that shows secrets. Every access
/// token still remembered (live, and expired ones until they are forgotten) and every live
/// refresh token, with the portal each acts for, so a leak test can search a client's
/// output for the tokens it was actually given. Rotated-away and revoked tokens are gone.
pub async fn control_tokens(State(shared): State<Arc<Shared>>) -> Response {
    let name = |i: usize| shared.portals[i].info.name.clone();
    let g = shared.oauth.grants.lock();
    let access: Vec<Value> = g
        .access
        .iter()
        .map(|(t, a)| json!({ "token": t, "portal": name(a.portal), "expires_ms": a.expires_ms }))
        .collect();
    let refresh: Vec<Value> = g
        .refresh
        .iter()
        .map(|(t, r)| json!({ "token": t, "portal": name(r.portal) }))
        .collect();
    drop(g);
    reply(
        StatusCode::OK,
        json!({ "access": access, "refresh": refresh }),
    )
}

/// `PUT /_sandbox/oauth/faults`: replaces the pending token faults.
pub async fn control_put_faults(
    State(shared): State<Arc<Shared>>,
    Json(mut f): Json<TokenFaults>,
) -> ApiResult<Response> {
    if let Some(s) = f.status {
        if !(400..=599).contains(&s) {
            return Err(ApiError::validation(format!(
                "status must be between 400 and 599, got {s}"
            )));
        }
        f.count.get_or_insert(1);
    }
    shared.oauth.grants.lock().faults = f.clone();
    Ok(reply(
        StatusCode::OK,
        serde_json::to_value(f).unwrap_or(Value::Null),
    ))
}

/// `DELETE /_sandbox/oauth/faults`.
pub async fn control_clear_faults(State(shared): State<Arc<Shared>>) -> Response {
    shared.oauth.grants.lock().faults = TokenFaults::default();
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_credentials_repeat_and_differ_by_seed() {
        let ttl = Duration::from_secs(1800);
        let a = OAuth::new(Some(7), ttl, false).app;
        assert_eq!(a, OAuth::new(Some(7), ttl, false).app);
        assert_ne!(a, OAuth::new(Some(8), ttl, false).app);
        assert_ne!(a.client_id, a.client_secret);
        assert!(!format!("{a:?}").contains(&a.client_secret));
    }

    #[test]
    fn redirect_targets_keep_their_query_and_refuse_fragments() {
        let mut u = redirect_target("http://127.0.0.1:9/cb?x=1").expect("valid");
        u.query_pairs_mut().append_pair("state", "a b&c");
        assert_eq!(u.as_str(), "http://127.0.0.1:9/cb?x=1&state=a+b%26c");
        assert!(redirect_target("http://127.0.0.1:9/cb#frag").is_err());
        assert!(redirect_target("ftp://127.0.0.1/cb").is_err());
    }
}
