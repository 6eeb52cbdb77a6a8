//! Webhook delivery as HubSpot does it: events from CRM changes are batched (at most 100 per
//! request), signed (v3 and v1 headers), sent with at most `max_concurrent` requests in flight,
//! retried with growing randomised delays (at most 10 retries, `attemptNumber` counting up)
//! after a non-2xx answer or no answer within the timeout, and never ordered.
//!
//! Each portal delivers to its own target signed with its own secret (a static-auth app
//! installed in that one account) — unless the OAuth app's single target is set: then every
//! portal's events go there, signed with the app's client secret, as HubSpot does for an app
//! installed in many accounts.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::data::Change;
use super::model::{iso, ObjectType, Source};
use super::{chance, Portal, PortalInfo, Shared};

/// Most events HubSpot puts in one request.
pub const MAX_EVENTS_PER_REQUEST: usize = 100;
const LOG_KEEP: usize = 2_000;

/// One subscription. `property_name: None` on a `propertyChange` subscription is a sandbox
/// shortcut for "every property" (HubSpot needs one subscription per property).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    #[serde(rename = "eventType")]
    pub event_type: String,
    #[serde(
        rename = "propertyName",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub property_name: Option<String>,
    #[serde(
        rename = "objectTypeId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub object_type_id: Option<String>,
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

/// Per-portal delivery settings (`PUT /_sandbox/portals/{name}/webhooks`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    pub target_url: Option<String>,
    pub subscriptions: Vec<Subscription>,
    pub max_concurrent: usize,
    pub timeout_ms: u64,
    /// First retry delay; later ones double (with jitter). HubSpot spreads 10 retries over
    /// about a day; the sandbox defaults to seconds so tests can watch retries happen.
    pub retry_base_ms: u64,
    pub max_retries: u32,
    pub app_id: u64,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        let sub = |t: &str, obj: Option<&str>| Subscription {
            event_type: t.into(),
            property_name: None,
            object_type_id: obj.map(str::to_owned),
            active: true,
        };
        WebhookSettings {
            target_url: None,
            subscriptions: vec![
                sub("deal.creation", None),
                sub("deal.propertyChange", None),
                sub("deal.deletion", None),
                sub("deal.restore", None),
                sub("deal.associationChange", None),
                sub("object.creation", Some("0-46")),
                sub("object.propertyChange", Some("0-46")),
                sub("object.deletion", Some("0-46")),
            ],
            max_concurrent: 10,
            timeout_ms: 5_000,
            retry_base_ms: 1_000,
            max_retries: 10,
            app_id: 1_000_001,
        }
    }
}

/// One delivery attempt, kept for `/_sandbox/portals/{name}/webhooks/deliveries`.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub at: String,
    pub event_ids: Vec<u64>,
    pub attempt_numbers: Vec<u32>,
    pub status: Option<u16>,
    pub outcome: &'static str,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct HookStats {
    pub events_created: u64,
    pub events_delivered: u64,
    pub events_dropped: u64,
    pub events_duplicated: u64,
    pub events_exhausted: u64,
    pub requests: u64,
    pub failed_requests: u64,
    pub in_flight: usize,
    pub pending: usize,
}

struct Pending {
    event: Value,
    event_id: u64,
    attempt: u32,
    due: Instant,
    /// A copy made by the duplicate fault; it is not duplicated again.
    copy: bool,
}

struct HookState {
    settings: WebhookSettings,
    pending: VecDeque<Pending>,
    next_event_id: u64,
    log: VecDeque<Delivery>,
    stats: HookStats,
}

pub struct Hooks {
    state: Mutex<HookState>,
    wake: Notify,
}

impl Hooks {
    pub fn new(target: Option<String>) -> Hooks {
        Hooks {
            state: Mutex::new(HookState {
                settings: WebhookSettings {
                    target_url: target,
                    ..WebhookSettings::default()
                },
                pending: VecDeque::new(),
                next_event_id: 1,
                log: VecDeque::new(),
                stats: HookStats::default(),
            }),
            wake: Notify::new(),
        }
    }

    pub fn settings(&self) -> WebhookSettings {
        self.state.lock().settings.clone()
    }

    pub fn set_settings(&self, s: WebhookSettings) {
        self.state.lock().settings = s;
        self.wake.notify_one();
    }

    pub fn deliveries(&self) -> (Vec<Delivery>, HookStats) {
        let st = self.state.lock();
        let mut stats = st.stats.clone();
        stats.pending = st.pending.len();
        (st.log.iter().cloned().collect(), stats)
    }

    /// Makes every waiting retry due now (tests use it instead of waiting out backoff).
    pub fn flush(&self) {
        let now = Instant::now();
        for p in self.state.lock().pending.iter_mut() {
            p.due = now;
        }
        self.wake.notify_one();
    }

    pub fn clear(&self) {
        let mut st = self.state.lock();
        st.pending.clear();
        st.log.clear();
        st.stats = HookStats::default();
    }

    /// Turns changes into events for every matching active subscription (when there is a
    /// target: the portal's, or the app's when `app_target`).
    pub fn enqueue(
        &self,
        info: &PortalInfo,
        changes: Vec<Change>,
        source: Source,
        app_target: bool,
    ) {
        let mut st = self.state.lock();
        if st.settings.target_url.is_none() && !app_target {
            return;
        }
        let now = Instant::now();
        let app_id = st.settings.app_id;
        for change in changes {
            let Some((etype, otype, object_id, at, extra)) = describe(&change) else {
                continue;
            };
            let prop = extra
                .get("propertyName")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let subs: Vec<usize> = st
                .settings
                .subscriptions
                .iter()
                .enumerate()
                .filter(|(_, s)| s.active && subscribed(s, otype, &etype, prop.as_deref()))
                .map(|(i, _)| i)
                .collect();
            for sub in subs {
                let event_id = st.next_event_id;
                st.next_event_id += 1;
                let sub_type = &st.settings.subscriptions[sub].event_type;
                let mut ev = json!({
                    "eventId": event_id,
                    "subscriptionId": 2_000_000 + sub as u64,
                    "portalId": info.portal_id,
                    "appId": app_id,
                    "occurredAt": at,
                    "subscriptionType": sub_type,
                    "objectId": object_id,
                    "changeSource": source.as_str(),
                    "sourceId": format!("sandbox:{}", source.as_str().to_lowercase()),
                });
                if sub_type.starts_with("object.") {
                    ev["objectTypeId"] = json!(otype.type_id());
                }
                if let (Some(o), Some(e)) = (ev.as_object_mut(), extra.as_object()) {
                    for (k, v) in e {
                        o.insert(k.clone(), v.clone());
                    }
                }
                st.pending.push_back(Pending {
                    event: ev,
                    event_id,
                    attempt: 0,
                    due: now,
                    copy: false,
                });
                st.stats.events_created += 1;
            }
        }
        drop(st);
        self.wake.notify_one();
    }
}

fn subscribed(s: &Subscription, otype: ObjectType, etype: &str, prop: Option<&str>) -> bool {
    let (scope, action) = s.event_type.split_once('.').unwrap_or(("", ""));
    let type_ok = match scope {
        "object" => s.object_type_id.as_deref() == Some(otype.type_id()),
        other => other == otype.singular(),
    };
    let prop_ok = action != "propertyChange"
        || s.property_name.is_none()
        || s.property_name.as_deref() == prop;
    type_ok && action == etype && prop_ok
}

/// Event kind (`creation`, …), object type, object id, time, and extra fields.
fn describe(c: &Change) -> Option<(String, ObjectType, u64, i64, Value)> {
    Some(match c {
        Change::Created { otype, id, at } => ("creation".into(), *otype, *id, *at, json!({})),
        Change::Property {
            otype,
            id,
            name,
            value,
            at,
        } => (
            "propertyChange".into(),
            *otype,
            *id,
            *at,
            json!({ "propertyName": name, "propertyValue": value }),
        ),
        Change::Archived { otype, id, at } => ("deletion".into(), *otype, *id, *at, json!({})),
        Change::Restored { otype, id, at } => ("restore".into(), *otype, *id, *at, json!({})),
        Change::Association {
            from,
            to,
            type_id,
            removed,
            primary,
            at,
        } => {
            // HubSpot sends no association events for notes: clients must poll for them.
            if from.0 == ObjectType::Notes || to.0 == ObjectType::Notes {
                return None;
            }
            (
                "associationChange".into(),
                from.0,
                from.1,
                *at,
                json!({
                    "fromObjectId": from.1,
                    "toObjectId": to.1,
                    "associationType": format!("{}_TO_{}", from.0.singular(), to.0.singular()).to_uppercase(),
                    "associationTypeId": type_id,
                    "associationRemoved": removed,
                    "isPrimaryAssociation": primary,
                }),
            )
        }
    })
}

/// The per-portal delivery loop.
pub async fn dispatch(shared: Arc<Shared>, portal: Arc<Portal>, cancel: CancellationToken) {
    let mut permits: Option<(usize, Arc<Semaphore>)> = None;
    loop {
        let app_target = shared.app_target.lock().clone();
        let app_signed = app_target.is_some();
        let (batch, wait, settings) = {
            let mut st = portal.hooks.state.lock();
            let mut settings = st.settings.clone();
            if app_target.is_some() {
                settings.target_url = app_target;
            }
            let now = Instant::now();
            let mut batch = Vec::new();
            let mut keep = VecDeque::with_capacity(st.pending.len());
            let mut next_due: Option<Instant> = None;
            while let Some(p) = st.pending.pop_front() {
                if p.due <= now
                    && batch.len() < MAX_EVENTS_PER_REQUEST
                    && settings.target_url.is_some()
                {
                    batch.push(p);
                } else {
                    next_due = Some(next_due.map_or(p.due, |d: Instant| d.min(p.due)));
                    keep.push_back(p);
                }
            }
            st.pending = keep;
            let wait = if st.pending.iter().any(|p| p.due <= now) {
                Duration::ZERO
            } else {
                next_due.map_or(Duration::from_secs(3600), |d| {
                    d.saturating_duration_since(now)
                })
            };
            (batch, wait, settings)
        };
        if batch.is_empty() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = portal.hooks.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        let sem = match &permits {
            Some((n, s)) if *n == settings.max_concurrent.max(1) => s.clone(),
            _ => {
                let s = Arc::new(Semaphore::new(settings.max_concurrent.max(1)));
                permits = Some((settings.max_concurrent.max(1), s.clone()));
                s
            }
        };
        let permit = tokio::select! {
            _ = cancel.cancelled() => return,
            p = sem.acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let (shared, portal) = (shared.clone(), portal.clone());
        tokio::spawn(async move {
            send(&shared, &portal, batch, &settings, app_signed).await;
            drop(permit);
        });
    }
}

async fn send(
    shared: &Shared,
    portal: &Portal,
    batch: Vec<Pending>,
    settings: &WebhookSettings,
    app_signed: bool,
) {
    let faults = portal.faults.lock().clone();
    let mut events = Vec::with_capacity(batch.len());
    let mut copies = false;
    {
        let mut st = portal.hooks.state.lock();
        st.stats.in_flight += 1;
        for p in batch {
            if faults.webhook_drop > 0.0 && chance(shared) < faults.webhook_drop {
                st.stats.events_dropped += 1;
                push_log(
                    &mut st,
                    Delivery {
                        at: iso(shared.now_ms()),
                        event_ids: vec![p.event_id],
                        attempt_numbers: vec![p.attempt],
                        status: None,
                        outcome: "dropped",
                        error: Some("dropped by fault injection".into()),
                    },
                );
                continue;
            }
            if !p.copy
                && faults.webhook_duplicate > 0.0
                && chance(shared) < faults.webhook_duplicate
            {
                st.stats.events_duplicated += 1;
                st.pending.push_back(Pending {
                    event: p.event.clone(),
                    event_id: p.event_id,
                    attempt: p.attempt,
                    due: Instant::now() + Duration::from_millis(20),
                    copy: true,
                });
                copies = true;
            }
            events.push(p);
        }
    }
    if copies {
        // The dispatcher may be asleep until the next change; the copy is due in 20 ms.
        portal.hooks.wake.notify_one();
    }
    if faults.webhook_reorder > 0.0 && chance(shared) < faults.webhook_reorder {
        let seed: u64 = rand::Rng::random(&mut *shared.rng.lock());
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
        events.shuffle(&mut rng);
    }
    if faults.webhook_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.webhook_delay_ms)).await;
    }
    if events.is_empty() {
        portal.hooks.state.lock().stats.in_flight -= 1;
        return;
    }
    let Some(target) = settings.target_url.clone() else {
        let mut st = portal.hooks.state.lock();
        st.stats.in_flight -= 1;
        st.pending.extend(events);
        return;
    };
    let body_json: Vec<Value> = events
        .iter()
        .map(|p| {
            let mut e = p.event.clone();
            e["attemptNumber"] = json!(p.attempt);
            e
        })
        .collect();
    let body = serde_json::to_vec(&body_json).unwrap_or_default();
    // Send to the URL as parsed (no fragment) and sign exactly that URL, decoded the way
    // HubSpot decodes it, so a receiver rebuilding the URL it was called on can verify.
    let url = match reqwest::Url::parse(&target) {
        Ok(mut u) => {
            u.set_fragment(None);
            u
        }
        Err(_) => {
            let mut st = portal.hooks.state.lock();
            st.stats.in_flight -= 1;
            st.stats.events_exhausted += events.len() as u64;
            return;
        }
    };
    let signed_uri = crate::signature::decode_uri_for_signature(url.as_str());
    let ts = chrono::Utc::now().timestamp_millis();
    let secret = if app_signed {
        &shared.oauth.app.client_secret
    } else {
        &portal.info.webhook_secret
    };
    let mut req = shared
        .http
        .post(url)
        .timeout(Duration::from_millis(settings.timeout_ms.max(1)))
        .header("content-type", "application/json");
    let strip =
        faults.webhook_missing_headers > 0.0 && chance(shared) < faults.webhook_missing_headers;
    if !strip {
        req = req
            .header(
                "X-HubSpot-Signature",
                crate::signature::sign_v1(secret, &body),
            )
            .header("X-HubSpot-Signature-Version", "v1")
            .header(
                "X-HubSpot-Signature-v3",
                crate::signature::sign_v3(secret, "POST", &signed_uri, &body, ts),
            )
            .header("X-HubSpot-Request-Timestamp", ts.to_string());
    }
    let result = req.body(body).send().await;
    let (status, error) = match result {
        Ok(r) => (Some(r.status().as_u16()), None),
        Err(e) => (
            None,
            Some(if e.is_timeout() {
                "timed out".to_owned()
            } else {
                "connection failed".to_owned()
            }),
        ),
    };
    let ok = status.is_some_and(|s| (200..300).contains(&s));
    let ids: Vec<u64> = events.iter().map(|p| p.event_id).collect();
    let attempts: Vec<u32> = events.iter().map(|p| p.attempt).collect();
    let mut st = portal.hooks.state.lock();
    st.stats.in_flight -= 1;
    st.stats.requests += 1;
    if ok {
        st.stats.events_delivered += events.len() as u64;
        push_log(
            &mut st,
            Delivery {
                at: iso(shared.now_ms()),
                event_ids: ids,
                attempt_numbers: attempts,
                status,
                outcome: "delivered",
                error,
            },
        );
        return;
    }
    st.stats.failed_requests += 1;
    let mut exhausted = 0;
    for mut p in events {
        if p.attempt >= settings.max_retries {
            exhausted += 1;
            continue;
        }
        let base = Duration::from_millis(settings.retry_base_ms.max(1));
        let schedule = crate::backoff::Backoff {
            base,
            max: base.saturating_mul(1 << 16),
            jitter: crate::backoff::Jitter::Around,
        };
        p.due = Instant::now() + schedule.delay(i64::from(p.attempt), chance(shared));
        p.attempt += 1;
        st.pending.push_back(p);
    }
    st.stats.events_exhausted += exhausted;
    push_log(
        &mut st,
        Delivery {
            at: iso(shared.now_ms()),
            event_ids: ids,
            attempt_numbers: attempts,
            status,
            outcome: if exhausted > 0 { "exhausted" } else { "retry" },
            error,
        },
    );
    drop(st);
    portal.hooks.wake.notify_one();
}

/// Why `url` cannot be a webhook target, if it cannot.
pub fn check_target(url: &str) -> Result<(), String> {
    let ok = reqwest::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
    if ok {
        Ok(())
    } else {
        Err(format!("target_url {url} is not an http(s) URL"))
    }
}

/// `PUT /_sandbox/oauth/webhooks` body: the app's target, or `null` to go back to each
/// portal's own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppTarget {
    pub target_url: Option<String>,
}

/// `GET /_sandbox/oauth/webhooks`.
pub async fn get_app_target(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
) -> axum::response::Response {
    let t = shared.app_target.lock().clone();
    super::objects::reply(axum::http::StatusCode::OK, json!({ "target_url": t }))
}

/// `PUT /_sandbox/oauth/webhooks`: every portal delivers to `target_url` from now on (events
/// already waiting included), signed with the app's client secret.
pub async fn put_app_target(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    super::params::Json(t): super::params::Json<AppTarget>,
) -> super::error::ApiResult<axum::response::Response> {
    if let Some(url) = &t.target_url {
        check_target(url).map_err(super::error::ApiError::validation)?;
    }
    *shared.app_target.lock() = t.target_url.clone();
    for p in &shared.portals {
        p.hooks.wake.notify_one();
    }
    Ok(super::objects::reply(
        axum::http::StatusCode::OK,
        json!({ "target_url": t.target_url }),
    ))
}

fn push_log(st: &mut HookState, d: Delivery) {
    if st.log.len() >= LOG_KEEP {
        st.log.pop_front();
    }
    st.log.push_back(d);
}
