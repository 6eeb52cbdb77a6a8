//! Test-only controls under `/_sandbox/` (documented in docs/sandbox.md): reset, state dumps,
//! fault injection, request counters, webhook settings and delivery log, restoring archived
//! records, signed file downloads, and the OAuth app's (handlers in `oauth`). HubSpot's own paths never carry any of these.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::faults::Faults;
use super::features::Features;
use super::gate::Counters;
use super::model::{PortalData, Source};
use super::objects::reply;
use super::params::{object_type, Json, Query};
use super::webhooks::WebhookSettings;
use super::{files, oauth, Portal, Shared};

pub fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_sandbox/info", get(info))
        .route("/_sandbox/reset", post(reset))
        .route("/_sandbox/state", get(state_all))
        .route("/_sandbox/portals/{portal}/state", get(state_one))
        .route(
            "/_sandbox/portals/{portal}/values/{object_type}/{property}",
            get(values),
        )
        .route(
            "/_sandbox/portals/{portal}/faults",
            get(get_faults).put(put_faults).delete(clear_faults),
        )
        .route(
            "/_sandbox/portals/{portal}/features",
            get(get_features).put(put_features),
        )
        .route(
            "/_sandbox/portals/{portal}/counters",
            get(get_counters).delete(clear_counters),
        )
        .route(
            "/_sandbox/portals/{portal}/webhooks",
            get(get_hooks).put(put_hooks),
        )
        .route(
            "/_sandbox/portals/{portal}/webhooks/deliveries",
            get(deliveries),
        )
        .route("/_sandbox/portals/{portal}/webhooks/flush", post(flush))
        .route(
            "/_sandbox/portals/{portal}/objects/{object_type}/{object_id}/restore",
            post(restore),
        )
        .route(
            "/_sandbox/signed/{portal_id}/{file_id}",
            get(files::signed_download),
        )
        .route("/_sandbox/oauth", get(oauth::control_summary))
        .route(
            "/_sandbox/oauth/webhooks",
            get(super::webhooks::get_app_target).put(super::webhooks::put_app_target),
        )
        .route("/_sandbox/oauth/authorize", post(oauth::control_authorize))
        .route("/_sandbox/oauth/tokens", get(oauth::control_tokens))
        .route(
            "/_sandbox/oauth/subscriptions",
            get(oauth::control_get_subscriptions).put(oauth::control_put_subscriptions),
        )
        .route(
            "/_sandbox/oauth/faults",
            put(oauth::control_put_faults).delete(oauth::control_clear_faults),
        )
        .route(
            "/_sandbox/portals/{portal}/oauth/revoke",
            post(oauth::control_uninstall),
        )
}

fn portal<'a>(shared: &'a Shared, name: &str) -> ApiResult<&'a Arc<Portal>> {
    shared.portal_by_name(name).ok_or_else(|| {
        ApiError::not_found(format!(
            "no sandbox portal named {name}; served: {}",
            shared
                .portals
                .iter()
                .map(|p| p.info.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

async fn info(State(shared): State<Arc<Shared>>) -> Response {
    reply(
        StatusCode::OK,
        json!({
            "base_url": shared.base_url,
            "portals": shared.portals.iter().map(|p| &p.info).collect::<Vec<_>>(),
            "oauth": shared.oauth.info(&shared.base_url),
        }),
    )
}

/// `POST /_sandbox/reset[?portal=NAME]`: back to a freshly seeded portal; credentials, fault
/// settings and webhook settings stay, counters and pending webhooks are cleared.
async fn reset(State(shared): State<Arc<Shared>>, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let q = Query::parse(q.as_deref());
    let targets: Vec<&Arc<Portal>> = match q.get("portal") {
        Some(name) => vec![portal(&shared, name)?],
        None => shared.portals.iter().collect(),
    };
    let now = shared.now_ms();
    for p in targets {
        let mut fresh = PortalData::seeded(&p.info.name, p.ordinal, now);
        fresh.rebuild_indexes();
        *p.data.lock() = fresh;
        *p.counters.lock() = Counters::default();
        p.hooks.clear();
        p.validations.lock().clear();
    }
    shared.touched();
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn dump(p: &Portal) -> Value {
    let data = p.data.lock();
    let mut v = serde_json::to_value(&*data).unwrap_or(Value::Null);
    // File contents can be large; the dump shows their size instead.
    if let Some(files) = v.get_mut("files").and_then(Value::as_object_mut) {
        for (id, f) in files.iter_mut() {
            let size = id
                .parse::<u64>()
                .ok()
                .and_then(|i| data.files.get(&i))
                .map_or(0, |f| f.content.len());
            if let Some(o) = f.as_object_mut() {
                o.remove("content");
                o.insert("size".into(), json!(size));
            }
        }
    }
    json!({ "name": p.info.name, "portal_id": p.info.portal_id, "data": v })
}

async fn state_all(State(shared): State<Arc<Shared>>) -> Response {
    reply(
        StatusCode::OK,
        json!({ "portals": shared.portals.iter().map(|p| dump(p)).collect::<Vec<_>>() }),
    )
}

async fn state_one(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    Ok(reply(StatusCode::OK, dump(portal(&shared, &name)?)))
}

async fn get_faults(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let p = portal(&shared, &name)?;
    let f = p.faults.lock().clone();
    Ok(reply(
        StatusCode::OK,
        serde_json::to_value(f).unwrap_or(Value::Null),
    ))
}

/// Replaces the portal's fault settings (fields left out are off).
async fn put_faults(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Json(f): Json<Faults>,
) -> ApiResult<Response> {
    let p = portal(&shared, &name)?;
    f.validate()?;
    *p.faults.lock() = f.clone();
    Ok(reply(
        StatusCode::OK,
        serde_json::to_value(f).unwrap_or(Value::Null),
    ))
}

async fn get_features(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let f = *portal(&shared, &name)?.features.lock();
    Ok(reply(StatusCode::OK, json!(f)))
}

/// Replaces which note features the portal offers (fields left out are on). Properties and
/// records that exist stay: this changes what the portal accepts from now on.
async fn put_features(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Json(f): Json<Features>,
) -> ApiResult<Response> {
    *portal(&shared, &name)?.features.lock() = f;
    Ok(reply(StatusCode::OK, json!(f)))
}

async fn clear_faults(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    *portal(&shared, &name)?.faults.lock() = Faults::default();
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_counters(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let c = portal(&shared, &name)?.counters.lock().clone();
    Ok(reply(
        StatusCode::OK,
        serde_json::to_value(c).unwrap_or(Value::Null),
    ))
}

async fn clear_counters(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    *portal(&shared, &name)?.counters.lock() = Counters::default();
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_hooks(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let s = portal(&shared, &name)?.hooks.settings();
    Ok(reply(
        StatusCode::OK,
        serde_json::to_value(s).unwrap_or(Value::Null),
    ))
}

async fn put_hooks(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Json(s): Json<WebhookSettings>,
) -> ApiResult<Response> {
    let p = portal(&shared, &name)?;
    if let Some(url) = &s.target_url {
        let ok = reqwest::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
        if !ok {
            return Err(ApiError::validation(format!(
                "target_url {url} is not an http(s) URL"
            )));
        }
    }
    if s.max_concurrent == 0 || s.max_concurrent > 100 {
        return Err(ApiError::validation(
            "max_concurrent must be between 1 and 100",
        ));
    }
    p.hooks.set_settings(s.clone());
    Ok(reply(
        StatusCode::OK,
        serde_json::to_value(s).unwrap_or(Value::Null),
    ))
}

async fn deliveries(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let (log, stats) = portal(&shared, &name)?.hooks.deliveries();
    Ok(reply(
        StatusCode::OK,
        json!({ "stats": stats, "deliveries": log }),
    ))
}

async fn flush(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> ApiResult<Response> {
    portal(&shared, &name)?.hooks.flush();
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /_sandbox/portals/{name}/values/{type}/{property}`: every live record's current value
/// of one stored property and the moment it was written, `{"values":[{"id","value","ts"}]}`;
/// `?since=MS` keeps only values written at or after `MS`. Exempt from faults and limits like every control. Benchmarks sample it every few
/// milliseconds to see *when* a value became visible without spending the portal's API
/// budget or serialising the whole portal under its lock, as the state dump would.
async fn values(
    State(shared): State<Arc<Shared>>,
    Path((name, t, property)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let p = portal(&shared, &name)?;
    let t = object_type(&t)?;
    let q = Query::parse(q.as_deref());
    let since = match q.get("since") {
        None => i64::MIN,
        Some(v) => v
            .parse()
            .map_err(|_| ApiError::validation(format!("since={v} is not a time in ms")))?,
    };
    let data = p.data.lock();
    let values: Vec<Value> = data
        .objects
        .get(&t)
        .into_iter()
        .flat_map(|m| m.values())
        .filter(|o| !o.is_archived())
        .filter_map(|o| {
            let h = o.props.get(property.as_str())?.last()?;
            (h.ts >= since).then_some(())?;
            Some(json!({"id": o.id.to_string(), "value": h.value, "ts": h.ts}))
        })
        .collect();
    drop(data);
    Ok(reply(StatusCode::OK, json!({ "values": values })))
}

/// Restores an archived record, as a person would from HubSpot's recycle bin; emits
/// `deal.restore` for deals.
async fn restore(
    State(shared): State<Arc<Shared>>,
    Path((name, t, id)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let p = portal(&shared, &name)?;
    let t = object_type(&t)?;
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::not_found(format!("{id} is not an object id")))?;
    let now = shared.now_ms();
    let mut changes = Vec::new();
    p.data.lock().restore(t, id, now, &mut changes)?;
    shared.publish(p, changes, Source::CrmUi);
    Ok(StatusCode::NO_CONTENT.into_response())
}
