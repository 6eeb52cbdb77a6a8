//! The real-time path: HubSpot webhooks v3 for every configured portal, verified and written to
//! the durable inbox before the answer goes out.
//!
//! Each portal posts to `POST /webhooks/{portal}` (the portal's name in the config). A request
//! is accepted only when its `X-HubSpot-Signature-v3` matches that portal's secret over the
//! method, the full URL HubSpot called, the body and the timestamp, within HubSpot's
//! five-minute window (see [`crate::signature`]). Refusals never touch the store:
//! missing/bad/stale signature → 401, unknown portal → 404, body over the limit → 413,
//! a body that is not a JSON array of events → 400. Accepted events go through
//! [`store::inbox_accept`] in one transaction (duplicates by `eventId` dropped, jobs queued for
//! linked deals, echoes of agreed values skipped), and only then is 204 sent; if the store
//! cannot take them the answer is 503 so HubSpot retries. A crash after the 2xx loses nothing:
//! the jobs are already in the queue.
//!
//! An event only ever *triggers* a job; the job re-reads both sides and decides from the
//! shadow, so reordered, duplicated or dropped events are harmless (dropped ones are healed by
//! polling and the sweep).
//!
//! The full URL for the signature is `public_url` + the request's path and query when
//! `public_url` is configured (behind a reverse proxy it must be the URL configured in the
//! HubSpot app), otherwise `http://{Host}` + path and query.
//!
//! An OAuth app installed in many portals has one target URL and signs every delivery with its
//! client secret; each event names the `portalId` it is about. That target is `POST /webhooks`
//! (served only with an `[oauth]` app): the delivery is verified with the app's client secret,
//! then split by `portalId` — an OAuth portal's id is the `hub_id` its install bound (read from
//! the store per delivery, since installs change while running), a static-token portal's the
//! `portal_id` of its config — and each part is accepted exactly as `/webhooks/{portal}`
//! accepts it. Events for a portal id no configured portal has are counted
//! (`dealsync_webhook_events_unrouted_total`) and dropped, never queued, and the delivery
//! still gets its 204: retrying cannot route them, and HubSpot would retry for a day.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::engine::{plan, Engine, FieldSpec, InFlight, StageMap};
use crate::oauth::{self, OAuthApp, OAuthError};
use crate::signature;
use crate::store::{self, InboxEvent, Side, Store};

/// HubSpot sends at most 100 events per request; a megabyte is far above any real delivery.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

/// One portal the listener accepts deliveries for.
#[derive(Clone)]
pub struct WebhookPortal {
    pub name: String,
    pub side: Side,
    pub secret: String,
}

impl std::fmt::Debug for WebhookPortal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookPortal")
            .field("name", &self.name)
            .field("side", &self.side)
            .finish_non_exhaustive()
    }
}

/// One configured portal, as the app's single target routes to it.
#[derive(Debug, Clone)]
pub struct AppPortal {
    pub name: String,
    pub side: Side,
    /// The HubSpot portal id from the config (static-token portals); `None` leaves it to the
    /// portal's OAuth install, if any.
    pub portal_id: Option<u64>,
}

/// What the listener needs.
#[derive(Clone)]
pub struct Listener {
    pub store: Store,
    pub portals: Vec<WebhookPortal>,
    pub fields: Vec<FieldSpec>,
    /// Stage maps per partner, for judging partner-side stage echoes.
    pub stage_maps: HashMap<String, StageMap>,
    pub public_url: Option<String>,
    pub max_body: usize,
    /// Woken when jobs were queued.
    pub wake: Arc<Notify>,
    /// The engine's writes in flight (see [`InFlight`]).
    pub in_flight: InFlight,
    /// The running engine, for `/metrics` and `/readyz` (absent when the listener runs alone).
    pub engine: Option<Arc<Engine>>,
    /// Per portal: woken when an event is about a deal no link knows, so that portal's deal
    /// poller looks at once (registrations and invitations start on unlinked deals).
    pub nudges: HashMap<String, Arc<Notify>>,
    /// The OAuth app whose redirect this listener serves (installs land here) and whose
    /// client secret signs deliveries to `POST /webhooks`.
    pub oauth: Option<Arc<OAuthApp>>,
    /// Every configured portal, for routing `POST /webhooks` events by `portalId`.
    pub app_portals: Vec<AppPortal>,
}

impl Listener {
    /// A listener for `portals` with the defaults: no public URL (the Host header is used),
    /// HubSpot-sized body limit, no stage maps, no engine behind it (no `/metrics`). The
    /// daemon fills in the rest; tests and benchmarks override what they need.
    pub fn new(store: Store, portals: Vec<WebhookPortal>, fields: Vec<FieldSpec>) -> Listener {
        Listener {
            store,
            portals,
            fields,
            stage_maps: HashMap::new(),
            public_url: None,
            max_body: DEFAULT_MAX_BODY,
            wake: Arc::new(Notify::new()),
            in_flight: InFlight::default(),
            engine: None,
            nudges: HashMap::new(),
            oauth: None,
            app_portals: Vec::new(),
        }
    }
}

/// How long a delivery waits for the engine to commit a write to a deal it mentions.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "cannot listen for webhooks on {addr}: {source}; pick a free address in webhooks.listen"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Why a delivery's body was refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("the body must be a JSON array of webhook events")]
    NotArray,
    #[error(
        "event {index} is not an object with a string or number eventId and a subscriptionType"
    )]
    BadEvent { index: usize },
    #[error("a delivery carries at most 100 events; this one has {0}")]
    TooMany(usize),
    #[error("event {index} has no numeric portalId, so it cannot be routed to a portal")]
    NoPortal { index: usize },
}

fn text(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Parses a delivery into inbox events, deciding for each what it is about. For partner
/// portals property names are the partner's, for HubSpot's portal HubSpot's.
pub fn parse_events(
    body: &[u8],
    side: Side,
    fields: &[FieldSpec],
) -> Result<Vec<InboxEvent>, PayloadError> {
    parse_array(body)?
        .iter()
        .enumerate()
        .map(|(index, e)| parse_event(index, e, side, fields))
        .collect()
}

/// A delivery's body as its events, not yet looked at.
fn parse_array(body: &[u8]) -> Result<Vec<Value>, PayloadError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| PayloadError::NotJson(e.to_string()))?;
    let Value::Array(items) = v else {
        return Err(PayloadError::NotArray);
    };
    if items.len() > 100 {
        return Err(PayloadError::TooMany(items.len()));
    }
    Ok(items)
}

/// Event `index` of a delivery, read as `side`'s.
fn parse_event(
    index: usize,
    e: &Value,
    side: Side,
    fields: &[FieldSpec],
) -> Result<InboxEvent, PayloadError> {
    let bad = || PayloadError::BadEvent { index };
    if !e.is_object() {
        return Err(bad());
    }
    let event_id = text(e, "eventId")
        .filter(|id| !id.is_empty())
        .ok_or_else(bad)?;
    let subscription_type = e
        .get("subscriptionType")
        .and_then(Value::as_str)
        .ok_or_else(bad)?
        .to_owned();
    let object_id = text(e, "objectId");
    let occurred_at = e.get("occurredAt").and_then(Value::as_i64);
    let (deal_id, property, relevant) = classify(e, &subscription_type, side, fields);
    let note_id = (subscription_type.starts_with("object.")
        && e.get("objectTypeId").and_then(Value::as_str) == Some("0-46"))
    .then(|| object_id.clone())
    .flatten();
    Ok(InboxEvent {
        note_id,
        event_id,
        subscription_type,
        object_id,
        occurred_at,
        deal_id,
        property,
        relevant,
    })
}

/// The `portalId` an event is about (HubSpot sends a number; a numeric string is taken too).
fn portal_id_of(e: &Value) -> Option<u64> {
    match e.get("portalId")? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

type Classified = (Option<String>, Option<(String, Option<String>)>, bool);

/// Which deal an event is about, which synced field it changes (if it is a property change)
/// and whether it can matter to sync.
fn classify(e: &Value, kind: &str, side: Side, fields: &[FieldSpec]) -> Classified {
    let is_deal_object = kind.starts_with("deal.")
        || (kind.starts_with("object.")
            && e.get("objectTypeId").and_then(Value::as_str) == Some("0-3"));
    if !is_deal_object {
        // Notes, contacts, …: not part of field sync.
        return (None, None, false);
    }
    let verb = kind.rsplit('.').next().unwrap_or("");
    if verb == "associationChange" {
        let deal = if e
            .get("associationType")
            .and_then(Value::as_str)
            .is_some_and(|t| t.starts_with("DEAL_TO"))
        {
            text(e, "fromObjectId")
        } else {
            text(e, "toObjectId")
        };
        return (deal, None, true);
    }
    let deal = text(e, "objectId");
    if verb != "propertyChange" {
        return (deal, None, true);
    }
    let Some(prop) = e.get("propertyName").and_then(Value::as_str) else {
        return (deal, None, true);
    };
    let field = fields.iter().find(|f| match side {
        Side::Partner => f.partner_property == prop,
        Side::Hubspot => f.hubspot_property == prop,
    });
    match field {
        // HubSpot's side deciding the lifecycle (an exclusion, a close, a partner added), or a
        // partner marking a deal for registration: always looked at.
        None if side == Side::Hubspot
            && (prop == crate::properties::EXCLUDED_PARTNERS
                || prop == "dealstage"
                || crate::invite::props().iter().any(|p| p == prop)) =>
        {
            (deal, None, true)
        }
        None if side == Side::Partner
            && (prop == crate::properties::REGISTER
                || prop == crate::properties::QUOTE_REQUEST) =>
        {
            (deal, None, true)
        }
        // Either side's deal team.
        None if crate::team::watched().contains(&prop) => (deal, None, true),
        // A property dealsync does not sync changes nothing it must carry over.
        None => (deal, None, false),
        Some(f) => {
            let value = e
                .get("propertyValue")
                .and_then(|v| match v {
                    Value::Null => None,
                    Value::String(s) => Some(s.clone()),
                    other => Some(other.to_string()),
                })
                .filter(|s| !s.is_empty());
            (deal, Some((f.name.clone(), value)), true)
        }
    }
}

struct Shared {
    listener: Listener,
    portals: HashMap<String, WebhookPortal>,
    /// For HubSpot's token endpoint (OAuth installs).
    http: reqwest::Client,
}

/// Binds the listener and serves until `cancel`. Returns the bound address (useful with port 0)
/// and the serving task.
pub async fn serve(
    listener: Listener,
    addr: SocketAddr,
    cancel: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ListenError> {
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError::Bind { addr, source })?;
    let bound = tcp
        .local_addr()
        .map_err(|source| ListenError::Bind { addr, source })?;
    let max_body = listener.max_body;
    let shared = Arc::new(Shared {
        portals: listener
            .portals
            .iter()
            .map(|p| (p.name.clone(), p.clone()))
            .collect(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default(),
        listener,
    });
    let mut app = Router::new();
    if let Some(o) = &shared.listener.oauth {
        app = app.route(&o.callback_path(), get(oauth_callback));
    }
    let app = app
        .route("/webhooks", post(receive_app))
        .route("/webhooks/{portal}", post(receive))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(shared);
    let task = tokio::spawn(async move {
        let served = axum::serve(tcp, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "webhook listener stopped");
        }
    });
    tracing::info!(%bound, "listening for webhooks");
    Ok((bound, task))
}

/// HubSpot sends the admin who installed the app back here with `code` and `state` (or
/// `error`). The answer is a page a person reads: what happened and what to do.
async fn oauth_callback(
    State(s): State<Arc<Shared>>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let Some(app) = &s.listener.oauth else {
        return refuse(StatusCode::NOT_FOUND, "no OAuth app is configured".into());
    };
    if let Some(e) = q.get("error") {
        let detail = q.get("error_description").map(String::as_str).unwrap_or("");
        return page(
            StatusCode::BAD_REQUEST,
            format!("HubSpot did not install the app ({e}: {detail}). Ask the operator for a new install link."),
        );
    }
    let (Some(state), Some(code)) = (q.get("state"), q.get("code")) else {
        return page(
            StatusCode::BAD_REQUEST,
            "This page needs the code and state HubSpot adds when it sends you back; open the install link again.".into(),
        );
    };
    let store = &s.listener.store;
    match oauth::complete_install(app, &s.http, store, state, code).await {
        Ok(i) => {
            if let Some(n) = s.listener.nudges.get(&i.portal) {
                n.notify_one();
            }
            page(
                StatusCode::OK,
                format!(
                    "dealsync: {} is installed (HubSpot portal {}). You can close this page.",
                    i.portal, i.hub_id
                ),
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "OAuth install refused");
            let status = match e {
                OAuthError::Unavailable { .. } => StatusCode::BAD_GATEWAY,
                OAuthError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
                OAuthError::Bind(_) => StatusCode::CONFLICT,
                _ => StatusCode::BAD_REQUEST,
            };
            page(status, format!("The install did not complete: {e}"))
        }
    }
}

fn page(status: StatusCode, text: String) -> Response {
    (
        status,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn healthz(State(s): State<Arc<Shared>>) -> Response {
    match s.listener.store.call(|c| store::queue_stats(c)).await {
        Ok((depth, oldest)) => {
            Json(json!({"status": "ok", "queue_depth": depth, "oldest_job_ms": oldest}))
                .into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "store unavailable", "error": e.to_string()})),
        )
            .into_response(),
    }
}

/// Ready when the store answers and every portal's last poll succeeded (after its last
/// failure, if any): the daemon can both read and reach what it syncs.
async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    let Some(engine) = &s.listener.engine else {
        return refuse(
            StatusCode::NOT_FOUND,
            "no engine runs behind this listener".into(),
        );
    };
    let mut names = vec![engine.portals().hubspot.portal().to_owned()];
    names.extend(engine.portals().partners.keys().cloned());
    names.sort();
    let health = s
        .listener
        .store
        .call(move |c| {
            let mut out = Vec::new();
            for n in names {
                let row: Option<(Option<i64>, Option<i64>, Option<String>)> = c
                    .query_row(
                        "SELECT last_poll_ok, last_poll_error_at, last_poll_error FROM portal_health WHERE portal = ?1",
                        [&n],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .ok();
                out.push((n, row));
            }
            Ok(out)
        })
        .await;
    let Ok(health) = health else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the store is unavailable".into(),
        );
    };
    let mut ready = true;
    let portals: Vec<Value> = health
        .into_iter()
        .map(|(name, row)| {
            let (ok, err_at, err) = row.unwrap_or((None, None, None));
            let reachable = ok.is_some_and(|ok| err_at.is_none_or(|e| e <= ok));
            ready &= reachable;
            json!({"portal": name, "reachable": reachable, "last_error": if reachable { None } else { err }})
        })
        .collect();
    let body = Json(json!({"ready": ready, "portals": portals}));
    if ready {
        body.into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let Some(engine) = &s.listener.engine else {
        return refuse(
            StatusCode::NOT_FOUND,
            "no engine runs behind this listener".into(),
        );
    };
    let read = s
        .listener
        .store
        .call(|c| {
            let guarded: Vec<String> = store::deletion_guards(c)?
                .into_iter()
                .map(|(p, _, _)| p)
                .collect();
            let revoked: Vec<String> = store::installs(c)?
                .into_iter()
                .filter(|i| i.state == store::InstallState::Revoked)
                .map(|i| i.portal)
                .collect();
            Ok((
                store::queue_stats(c)?,
                (guarded, revoked),
                store::notification_counts(c)?,
            ))
        })
        .await;
    let ((depth, oldest), (guarded, auth_revoked), (pending, dead, _)) = match read {
        Ok(q) => q,
        Err(e) => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the store is unavailable: {e}"),
            )
        }
    };
    let mut portals: Vec<(String, u64, u64)> = std::iter::once(&engine.portals().hubspot)
        .chain(engine.portals().partners.values())
        .map(|c| {
            (
                c.portal().to_owned(),
                c.budget().used(),
                c.budget().rate_limited(),
            )
        })
        .collect();
    portals.sort();
    let scrape = crate::metrics::Scrape {
        queue_depth: depth,
        oldest_job_age_s: oldest.map_or(0.0, |t| (store::now_ms() - t).max(0) as f64 / 1000.0),
        portals,
        guarded,
        auth_revoked,
        notifications_pending: pending,
        notifications_dead: dead,
    };
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::metrics::render(engine.metrics(), &scrape),
    )
        .into_response()
}

fn refuse(status: StatusCode, message: String) -> Response {
    (status, Json(json!({"status": "error", "message": message}))).into_response()
}

/// The URL HubSpot called, as it signed it (see the module doc).
fn called_url(l: &Listener, uri: &Uri, headers: &HeaderMap) -> String {
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    match &l.public_url {
        Some(base) => format!("{}{path}", base.trim_end_matches('/')),
        None => {
            let host = headers
                .get(axum::http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            format!("http://{host}{path}")
        }
    }
}

/// Checks a delivery's v3 signature with `secret` over the URL it was sent to.
fn verify(
    l: &Listener,
    secret: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), signature::SignatureError> {
    let full = called_url(l, uri, headers);
    let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    signature::verify_v3(
        secret,
        "POST",
        &signature::decode_uri_for_signature(&full),
        body,
        header("x-hubspot-request-timestamp"),
        header("x-hubspot-signature-v3"),
        store::now_ms(),
    )
}

async fn receive(
    State(s): State<Arc<Shared>>,
    Path(portal): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(p) = s.portals.get(&portal) else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("no portal named {portal:?} takes webhooks here"),
        );
    };
    if let Err(e) = verify(&s.listener, &p.secret, &uri, &headers, &body) {
        tracing::warn!(portal = %p.name, error = %e, "webhook refused");
        return refuse(StatusCode::UNAUTHORIZED, e.to_string());
    }
    let events = match parse_events(&body, p.side, &s.listener.fields) {
        Ok(ev) => ev,
        Err(e) => {
            tracing::warn!(portal = %p.name, error = %e, "webhook body refused");
            return refuse(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    match accept(&s.listener, &p.name, p.side, events).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => unavailable(&p.name, &e),
    }
}

fn unavailable(portal: &str, e: &store::StoreError) -> Response {
    tracing::error!(portal = %portal, error = %e, "cannot store webhook events; HubSpot will retry");
    refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        "the event store is unavailable; retry later".into(),
    )
}

/// The OAuth app's single target: one delivery may carry events of every portal that
/// installed the app (or names its id in the config). Verified with the app's client secret,
/// split by `portalId`, each part accepted as `/webhooks/{portal}` would; events of portals
/// nobody configured are counted and dropped. The body is checked whole before anything is
/// stored, so a malformed delivery stores nothing.
async fn receive_app(
    State(s): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(app) = &s.listener.oauth else {
        return refuse(
            StatusCode::NOT_FOUND,
            "no OAuth app is configured here; a portal's webhooks go to /webhooks/{portal}".into(),
        );
    };
    if let Err(e) = verify(
        &s.listener,
        app.client_secret.expose(),
        &uri,
        &headers,
        &body,
    ) {
        tracing::warn!(error = %e, "app webhook refused");
        return refuse(StatusCode::UNAUTHORIZED, e.to_string());
    }
    let items = match parse_array(&body) {
        Ok(items) => items,
        Err(e) => {
            tracing::warn!(error = %e, "app webhook body refused");
            return refuse(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    let mut ids = Vec::with_capacity(items.len());
    for (index, e) in items.iter().enumerate() {
        match portal_id_of(e) {
            Some(id) => ids.push(id),
            None => {
                let e = PayloadError::NoPortal { index };
                tracing::warn!(error = %e, "app webhook body refused");
                return refuse(StatusCode::BAD_REQUEST, e.to_string());
            }
        }
    }
    let routes = match routes(&s.listener, &ids).await {
        Ok(r) => r,
        Err(e) => return unavailable("app", &e),
    };
    // Per portal, its events in delivery order; the portals in first-seen order.
    let mut parts: Vec<(&AppPortal, Vec<InboxEvent>)> = Vec::new();
    let mut unrouted: Vec<u64> = Vec::new();
    for (index, (e, id)) in items.iter().zip(&ids).enumerate() {
        let Some(p) = routes.get(id) else {
            unrouted.push(*id);
            continue;
        };
        let ev = match parse_event(index, e, p.side, &s.listener.fields) {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(portal = %p.name, error = %e, "app webhook body refused");
                return refuse(StatusCode::BAD_REQUEST, e.to_string());
            }
        };
        match parts.iter_mut().find(|(q, _)| q.name == p.name) {
            Some((_, v)) => v.push(ev),
            None => parts.push((p, vec![ev])),
        }
    }
    if !unrouted.is_empty() {
        if let Some(engine) = &s.listener.engine {
            engine.metrics().webhook_unrouted(unrouted.len() as u64);
        }
        unrouted.sort_unstable();
        unrouted.dedup();
        tracing::warn!(events = unrouted.len(), portal_ids = ?unrouted, "app webhook events for portals nobody configured dropped; set portal_id on a static-token portal or install the app in the OAuth portal");
    }
    // A store failure after some parts were accepted still answers 503: HubSpot's retry
    // brings the whole delivery back, and the accepted parts are dropped as duplicates then.
    for (p, events) in parts {
        if let Err(e) = accept(&s.listener, &p.name, p.side, events).await {
            return unavailable(&p.name, &e);
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

/// Portal id → configured portal for the ids of one delivery: config ids first, then the
/// store's installs, read only when an id is not in the config (installs change at runtime:
/// an install that completes, or a re-install from another account, counts at once).
async fn routes(l: &Listener, ids: &[u64]) -> Result<HashMap<u64, AppPortal>, store::StoreError> {
    let mut out: HashMap<u64, AppPortal> = l
        .app_portals
        .iter()
        .filter_map(|p| p.portal_id.map(|id| (id, p.clone())))
        .collect();
    if ids.iter().all(|id| out.contains_key(id)) {
        return Ok(out);
    }
    let installs = l.store.call(|c| store::installs(c)).await?;
    for i in installs {
        // An install left behind by a portal since removed from the config routes nowhere.
        if let Some(p) = l.app_portals.iter().find(|p| p.name == i.portal) {
            out.entry(i.hub_id).or_insert_with(|| p.clone());
        }
    }
    Ok(out)
}

/// Accepts one portal's events: waits for in-flight writes they mention, then dedupes,
/// judges echoes and queues jobs in one store transaction; wakes the workers when jobs were
/// queued and the portal's deal poller when an event is about an unlinked deal.
async fn accept(
    l: &Listener,
    name: &str,
    side: Side,
    events: Vec<InboxEvent>,
) -> Result<(), store::StoreError> {
    settle(l, name, side, &events).await;
    let fields = l.fields.clone();
    let stages = l.stage_maps.get(name).cloned().unwrap_or_default();
    let portal = name.to_owned();
    let o = l
        .store
        .call(move |c| {
            let is_echo =
                |field: &str, value: Option<&str>, shadows: &HashMap<String, Option<String>>| {
                    fields
                        .iter()
                        .find(|f| f.name == field)
                        .is_some_and(|f| plan::is_echo(f, &stages, side, value, shadows.get(field)))
                };
            store::inbox_accept(c, &portal, side, &events, &is_echo)
        })
        .await?;
    if o.queued > 0 {
        l.wake.notify_waiters();
    }
    if o.unlinked > 0 {
        if let Some(n) = l.nudges.get(name) {
            n.notify_one();
        }
    }
    tracing::debug!(portal = %name, accepted = o.accepted, duplicates = o.duplicates, queued = o.queued, echoes = o.echoes, "webhook accepted");
    Ok(())
}

/// The webhook for our own write often arrives before the engine has committed the shadow
/// that would mark it as an echo; judged then, it would queue a needless job. So a delivery
/// mentioning a deal whose write is in flight waits (briefly, bounded) for the commit. A
/// failure to look links up is not fatal here: the inbox transaction judges again anyway.
async fn settle(l: &Listener, portal: &str, side: Side, events: &[InboxEvent]) {
    let deals: Vec<String> = events
        .iter()
        .filter(|e| e.relevant)
        .filter_map(|e| e.deal_id.clone())
        .collect();
    if deals.is_empty() || l.in_flight.is_empty() {
        return;
    }
    let portal = portal.to_owned();
    let Ok(links) = l
        .store
        .call(move |c| store::links_for_deals(c, side, &portal, &deals))
        .await
    else {
        return;
    };
    let deadline = tokio::time::Instant::now() + IN_FLIGHT_WAIT;
    while links.iter().any(|(link, _)| l.in_flight.contains(link.id))
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// How long the inbox remembers event ids (HubSpot retries for about a day).
pub const INBOX_KEEP: Duration = Duration::from_secs(3 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::FieldKind;

    fn fields() -> Vec<FieldSpec> {
        let f = FieldSpec::both_ways;
        vec![
            f("dealname", "dealname", "dealname", FieldKind::Text),
            f(
                "products",
                "p_products",
                "h_products",
                FieldKind::MultiSelect,
            ),
            f("dealstage", "dealstage", "dealstage", FieldKind::Stage),
        ]
    }

    fn parse(v: Value, side: Side) -> Result<Vec<InboxEvent>, PayloadError> {
        parse_events(&serde_json::to_vec(&v).unwrap(), side, &fields())
    }

    #[test]
    fn events_are_classified_by_what_they_touch() {
        let ev = parse(
            json!([
                {"eventId": 1, "subscriptionType": "deal.propertyChange", "objectId": 11, "propertyName": "p_products", "propertyValue": "b;a"},
                {"eventId": "2", "subscriptionType": "deal.propertyChange", "objectId": 12, "propertyName": "h_products", "propertyValue": "x"},
                {"eventId": 3, "subscriptionType": "deal.creation", "objectId": 13},
                {"eventId": 4, "subscriptionType": "deal.associationChange", "fromObjectId": 14, "toObjectId": 99, "associationType": "DEAL_TO_CONTACT"},
                {"eventId": 5, "subscriptionType": "deal.associationChange", "fromObjectId": 98, "toObjectId": 15, "associationType": "CONTACT_TO_DEAL"},
                {"eventId": 6, "subscriptionType": "object.propertyChange", "objectTypeId": "0-46", "objectId": 16, "propertyName": "hs_note_body", "propertyValue": "private"},
                {"eventId": 7, "subscriptionType": "object.propertyChange", "objectTypeId": "0-3", "objectId": 17, "propertyName": "dealname", "propertyValue": ""},
            ]),
            Side::Partner,
        )
        .unwrap();
        type Seen<'a> = (Option<&'a str>, Option<(&'a str, Option<&'a str>)>, bool);
        let got: Vec<Seen> = ev
            .iter()
            .map(|e| {
                (
                    e.deal_id.as_deref(),
                    e.property.as_ref().map(|(f, v)| (f.as_str(), v.as_deref())),
                    e.relevant,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (Some("11"), Some(("products", Some("b;a"))), true),
                // HubSpot's property name means nothing on the partner side.
                (Some("12"), None, false),
                (Some("13"), None, true),
                (Some("14"), None, true),
                (Some("15"), None, true),
                // Notes are not field sync; their values are not kept.
                (None, None, false),
                // A blank value is "no value".
                (Some("17"), Some(("dealname", None)), true),
            ]
        );
        assert_eq!(ev[1].event_id, "2");
    }

    #[test]
    fn malformed_bodies_are_refused_with_a_reason() {
        assert!(matches!(
            parse_events(b"{", Side::Hubspot, &fields()),
            Err(PayloadError::NotJson(_))
        ));
        assert_eq!(
            parse(json!({"a": 1}), Side::Hubspot).unwrap_err(),
            PayloadError::NotArray
        );
        assert_eq!(
            parse(
                json!([{"eventId": 1, "subscriptionType": "deal.creation"}, 5]),
                Side::Hubspot
            )
            .unwrap_err(),
            PayloadError::BadEvent { index: 1 }
        );
        assert_eq!(
            parse(
                json!([{"eventId": [1], "subscriptionType": "deal.creation"}]),
                Side::Hubspot
            )
            .unwrap_err(),
            PayloadError::BadEvent { index: 0 }
        );
        let many: Vec<Value> = (0..101)
            .map(|i| json!({"eventId": i, "subscriptionType": "deal.creation"}))
            .collect();
        assert_eq!(
            parse(Value::Array(many), Side::Hubspot).unwrap_err(),
            PayloadError::TooMany(101)
        );
    }

    #[test]
    fn echoes_compare_like_the_planner() {
        let f = fields();
        let mut stages = StageMap::default();
        stages.to_hubspot.insert("p_won".into(), "closedwon".into());
        let agreed = |v: &str| Some(v.to_owned());
        // Text: exact; blank equals a blank shadow; no shadow is never an echo.
        assert!(plan::is_echo(
            &f[0],
            &stages,
            Side::Hubspot,
            Some("A"),
            Some(&agreed("A"))
        ));
        assert!(!plan::is_echo(
            &f[0],
            &stages,
            Side::Hubspot,
            Some("a"),
            Some(&agreed("A"))
        ));
        assert!(plan::is_echo(
            &f[0],
            &stages,
            Side::Hubspot,
            None,
            Some(&None)
        ));
        assert!(!plan::is_echo(
            &f[0],
            &stages,
            Side::Hubspot,
            Some("A"),
            None
        ));
        // Multi-select: order-insensitive.
        assert!(plan::is_echo(
            &f[1],
            &stages,
            Side::Partner,
            Some("b;a"),
            Some(&agreed("a;b"))
        ));
        // Stage: partner stages are compared in HubSpot's space; unmapped is never an echo.
        assert!(plan::is_echo(
            &f[2],
            &stages,
            Side::Partner,
            Some("p_won"),
            Some(&agreed("closedwon"))
        ));
        assert!(plan::is_echo(
            &f[2],
            &stages,
            Side::Hubspot,
            Some("closedwon"),
            Some(&agreed("closedwon"))
        ));
        assert!(!plan::is_echo(
            &f[2],
            &stages,
            Side::Partner,
            Some("p_lost"),
            Some(&agreed("closedwon"))
        ));
    }
}
