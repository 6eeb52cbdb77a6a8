//! The router and the gate every HubSpot-path request passes: bearer token (a portal's static
//! token or a live OAuth access token) -> portal, request
//! counters, fault injection, rate limits, rate-limit headers and (optionally) recording the
//! answer for conformance checks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use serde::Serialize;

use super::error::ApiError;
use super::faults::Draw;
use super::model::{ObjectType, Source};
use super::params::BodyLimit;
use super::{assoc, control, files, objects, schema, Portal, Recorded, Shared};

/// What a handler knows about the caller.
#[derive(Clone)]
pub struct Ctx {
    pub portal: Arc<Portal>,
    /// `X-Sandbox-Source` lets a test act as a person in the CRM UI (`CRM_UI`); API callers
    /// are recorded as `INTEGRATION`, as a private app's writes are.
    pub source: Source,
}

/// Per-portal request counters, read by tests and benchmarks through `/_sandbox/`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Counters {
    pub total: u64,
    pub reads: u64,
    pub writes: u64,
    pub http_429: u64,
    pub http_5xx: u64,
    pub endpoints: BTreeMap<String, u64>,
    /// Notes whose `hs_note_body` a batch read or a search answered with, by id.
    pub note_bodies: std::collections::BTreeSet<String>,
}

impl Counters {
    fn hit(&mut self, key: String, write: bool) {
        self.total += 1;
        if write {
            self.writes += 1;
        } else {
            self.reads += 1;
        }
        *self.endpoints.entry(key).or_default() += 1;
    }
}

/// `PATCH /crm/v3/objects/0-3/123` -> `PATCH /crm/v3/objects/deals/{id}`: ids collapse and
/// object type ids become names, so counters group by endpoint.
pub fn endpoint_key(method: &Method, path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 8);
    out.push_str(method.as_str());
    out.push(' ');
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    for (i, seg) in segs.iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str("{id}");
        } else if let Some(t) = ObjectType::parse(seg).filter(|_| i >= 3) {
            out.push_str(t.name());
        } else {
            out.push_str(seg);
        }
    }
    out
}

/// Whether a call changes state (for the `writes` counter).
pub fn is_write(method: &Method, path: &str) -> bool {
    *method != Method::GET && !path.ends_with("/search") && !path.ends_with("/batch/read")
}

/// The date versions the sandbox serves beside the legacy v3/v4 paths, over the same state
/// (HubSpot's 2026-03 and 2026-09 specs; see `../shared/hubspot-openapi/2026-09/README.md`).
pub const DATED_VERSIONS: [&str; 2] = ["2026-03", "2026-09"];

/// A surface's path prefixes: the legacy one, then one per date version.
fn prefixes(legacy: &str, dated: impl Fn(&str) -> String) -> Vec<String> {
    std::iter::once(legacy.to_owned())
        .chain(DATED_VERSIONS.iter().map(|v| dated(v)))
        .collect()
}

pub fn router(shared: Arc<Shared>) -> Router {
    let mut api = Router::new();
    for p in prefixes("/crm/v3/objects", |v| format!("/crm/objects/{v}")) {
        api = api
            .route(
                &format!("{p}/{{object_type}}"),
                get(objects::list).post(objects::create),
            )
            .route(
                &format!("{p}/{{object_type}}/search"),
                post(objects::search),
            )
            .route(
                &format!("{p}/{{object_type}}/batch/{{op}}"),
                post(objects::batch),
            )
            .route(
                &format!("{p}/{{object_type}}/{{object_id}}"),
                get(objects::read)
                    .patch(objects::update)
                    .delete(objects::archive),
            );
    }
    api = association_routes(api);
    for p in prefixes("/crm/v3/properties", |v| format!("/crm/properties/{v}")) {
        api = api
            .route(
                &format!("{p}/{{object_type}}"),
                get(schema::list_properties).post(schema::create_property),
            )
            .route(
                &format!("{p}/{{object_type}}/batch/{{op}}"),
                post(schema::batch_properties),
            )
            .route(
                &format!("{p}/{{object_type}}/groups"),
                get(schema::list_groups).post(schema::create_group),
            )
            .route(
                &format!("{p}/{{object_type}}/groups/{{group}}"),
                get(schema::read_group)
                    .patch(schema::update_group)
                    .delete(schema::archive_group),
            )
            .route(
                &format!("{p}/{{object_type}}/{{name}}"),
                get(schema::read_property)
                    .patch(schema::update_property)
                    .delete(schema::archive_property),
            );
    }
    for p in prefixes("/crm/v3/pipelines", |v| format!("/crm/pipelines/{v}")) {
        api = api
            .route(
                &format!("{p}/{{object_type}}"),
                get(schema::list_pipelines).post(schema::create_pipeline),
            )
            .route(
                &format!("{p}/{{object_type}}/{{pipeline_id}}"),
                get(schema::read_pipeline)
                    .patch(schema::update_pipeline)
                    .delete(schema::archive_pipeline),
            )
            .route(
                &format!("{p}/{{object_type}}/{{pipeline_id}}/stages"),
                get(schema::list_stages).post(schema::create_stage),
            )
            .route(
                &format!("{p}/{{object_type}}/{{pipeline_id}}/stages/{{stage_id}}"),
                get(schema::read_stage).patch(schema::update_stage),
            );
    }
    for p in prefixes("/crm/v3/owners", |v| format!("/crm/owners/{v}")) {
        // HubSpot answers the list with a trailing slash too (the official Python client
        // calls `GET /crm/v3/owners/`).
        api = api
            .route(&p, get(schema::list_owners))
            .route(&format!("{p}/"), get(schema::list_owners))
            .route(&format!("{p}/{{owner_id}}"), get(schema::read_owner));
    }
    // Files: 2026-09 has no upload, read, delete or signed URL (only files-2026-03.json does),
    // so they are served at v3 and 2026-03 alone.
    for p in [
        "/files/v3/files".to_owned(),
        "/files/2026-03/files".to_owned(),
    ] {
        api = api
            .route(&p, post(files::upload))
            .route(
                &format!("{p}/{{file_id}}"),
                get(files::read).delete(files::archive),
            )
            .route(
                &format!("{p}/{{file_id}}/signed-url"),
                get(files::signed_url),
            );
    }
    api = super::validations::routes(api);
    let api = api
        .route("/files/v3/files/{file_id}/download", get(files::download))
        .route_layer(middleware::from_fn_with_state(shared.clone(), gate));

    let sandbox = control::router()
        .merge(super::inbox::router())
        .merge(super::oauth::router())
        .merge(super::validations::control_router());

    let limit = BodyLimit(shared.config.max_body_bytes);
    Router::new()
        .merge(api)
        .merge(sandbox)
        .fallback(unknown_path)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(
            move |mut req: Request, next: Next| async move {
                req.extensions_mut().insert(limit);
                next.run(req).await
            },
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_answer,
        ))
        // Multipart uploads read up to the file limit; JSON endpoints enforce their own.
        .layer(axum::extract::DefaultBodyLimit::max(
            shared.config.max_file_bytes,
        ))
        .with_state(shared)
}

/// Associations: per-record links under the objects prefix, batch calls and labels under the
/// associations prefix. The per-record listing exists at v4 and 2026-03 only (the 2026-09
/// spec has none).
fn association_routes(mut api: Router<Arc<Shared>>) -> Router<Arc<Shared>> {
    let per_record = prefixes("/crm/v4/objects", |v| format!("/crm/objects/{v}"));
    for (i, p) in per_record.iter().enumerate() {
        let rec = format!("{p}/{{object_type}}/{{object_id}}/associations");
        api = api
            .route(
                &format!("{rec}/default/{{to_type}}/{{to_id}}"),
                put(assoc::put_default),
            )
            .route(
                &format!("{rec}/{{to_type}}/{{to_id}}"),
                put(assoc::put_typed).delete(assoc::remove),
            );
        if i == 0 || DATED_VERSIONS.get(i - 1) == Some(&"2026-03") {
            api = api.route(&format!("{rec}/{{to_type}}"), get(assoc::list));
        }
    }
    for p in prefixes("/crm/v4/associations", |v| format!("/crm/associations/{v}")) {
        let pair = format!("{p}/{{from_type}}/{{to_type}}");
        api = api
            .route(&format!("{pair}/batch/{{op}}"), post(assoc::batch))
            .route(
                &format!("{pair}/batch/associate/default"),
                post(assoc::batch_default),
            )
            .route(&format!("{pair}/labels"), get(assoc::labels));
    }
    api.route(
        "/crm/associations/v4/{from_type}/{to_type}/labels",
        get(assoc::labels),
    )
}

/// The status a date-versioned path answers with. HubSpot's 2026-03 and 2026-09 specs document
/// a batch call's partial failure in the ordinary success status, its body carrying `errors`
/// and `numErrors` (the v3/v4 207 Multi-Status is not documented there), and association and
/// property batch creates as 200 rather than 201. Handlers answer as v3/v4 do; a dated path
/// gets its version's status here, in one place.
fn dated_status(path: &str, status: StatusCode) -> StatusCode {
    let dated = path.split('/').any(|seg| DATED_VERSIONS.contains(&seg));
    let object_create = path.starts_with("/crm/objects/") && path.ends_with("/batch/create");
    match status {
        _ if !dated => status,
        StatusCode::MULTI_STATUS if object_create => StatusCode::CREATED,
        StatusCode::MULTI_STATUS => StatusCode::OK,
        StatusCode::CREATED if path.ends_with("/batch/create") && !object_create => StatusCode::OK,
        s => s,
    }
}

async fn unknown_path(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "OBJECT_NOT_FOUND",
        format!("No route for {} {}: the sandbox serves the HubSpot API paths listed in docs/sandbox.md", req.method(), req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "VALIDATION_ERROR",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

fn panic_answer(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a sandbox handler panicked; answering 500");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "INTERNAL_ERROR",
        "internal error in the sandbox (a bug: please report it)",
    )
    .into_response()
}

fn bearer(req: &Request) -> Option<&str> {
    let v = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn gate(State(shared): State<Arc<Shared>>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let caller = bearer(&req)
        .ok_or_else(ApiError::unauthorized)
        .and_then(|t| super::oauth::caller(&shared, t));
    let portal = match caller {
        Ok(p) => p,
        Err(e) => return finish(&shared, &method, &path, query, e.into_response()).await,
    };
    let write = is_write(&method, &path);
    let source = req
        .headers()
        .get("x-sandbox-source")
        .and_then(|v| v.to_str().ok())
        .and_then(Source::parse)
        .unwrap_or(Source::Integration);
    // A person's clicks in the CRM are not the app's API calls: HubSpot counts them against no
    // API limit, so a test acting as a person (`CRM_UI`) spends none of the portal's limits and
    // is left out of the request counts (limits and counts stay the integration's own).
    let person = source == Source::CrmUi;
    if !person {
        portal
            .counters
            .lock()
            .hit(endpoint_key(&method, &path), write);
    }

    let (draw, latency, hang) = {
        let mut f = portal.faults.lock();
        let draw = f.draw(&path, write, || super::chance(&shared));
        (draw, f.latency_ms, f.timeout_ms.max(1))
    };
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let injected = match draw {
        Draw::Status(429) => Some(
            ApiError::rate_limited("TEN_SECONDLY_ROLLING", "You have reached your ten_secondly_rolling limit.")
                .into_response(),
        ),
        // HubSpot's own answer to a call outside the app's scopes (its API clients' issues
        // quote it, e.g. HubSpot/hubspot-api-nodejs#268).
        Draw::Status(403) => Some(
            ApiError::new(
                StatusCode::FORBIDDEN,
                "MISSING_SCOPES",
                "This app hasn't been granted all required scopes to make this call. Read more about required scopes here: https://developers.hubspot.com/scopes.",
            )
            .into_response(),
        ),
        Draw::Status(s) => Some(
            ApiError::new(
                StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "INTERNAL_ERROR",
                "internal error (injected by the sandbox)",
            )
            .into_response(),
        ),
        Draw::Html502 => Some(
            (
                StatusCode::BAD_GATEWAY,
                [(axum::http::header::CONTENT_TYPE, "text/html")],
                "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>",
            )
                .into_response(),
        ),
        Draw::Timeout => {
            tokio::time::sleep(Duration::from_millis(hang)).await;
            Some(
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "INTERNAL_ERROR", "gateway timeout (injected by the sandbox)")
                    .into_response(),
            )
        }
        Draw::None | Draw::AfterWrite => None,
    };
    if let Some(resp) = injected {
        return finish_counted(&shared, &portal, &method, &path, query, resp).await;
    }

    let search = method == Method::POST && path.ends_with("/search");
    let day = chrono::Utc::now().timestamp().div_euclid(86_400);
    let admitted = if person {
        Ok(None)
    } else {
        portal.limits.lock().admit(search, Instant::now(), day)
    };
    let headers = match admitted {
        Ok(h) => h,
        Err(e) => {
            return finish_counted(&shared, &portal, &method, &path, query, e.into_response()).await
        }
    };

    req.extensions_mut().insert(Ctx {
        portal: portal.clone(),
        source,
    });
    let mut resp = next.run(req).await;
    *resp.status_mut() = dated_status(&path, resp.status());
    if draw == Draw::AfterWrite {
        resp = ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "internal error after the write was applied (injected by the sandbox)",
        )
        .into_response();
    }
    if let Some(h) = headers {
        let hs = resp.headers_mut();
        let mut set = |k: &'static str, v: String| {
            if let Ok(v) = HeaderValue::from_str(&v) {
                hs.insert(k, v);
            }
        };
        set("x-hubspot-ratelimit-max", h.max.to_string());
        set("x-hubspot-ratelimit-remaining", h.remaining.to_string());
        set("x-hubspot-ratelimit-interval-milliseconds", "10000".into());
        set(
            "x-hubspot-ratelimit-secondly",
            (h.max / 10).max(1).to_string(),
        );
        set(
            "x-hubspot-ratelimit-secondly-remaining",
            (h.remaining / 10).to_string(),
        );
        if let Some((max, rem)) = h.daily {
            set("x-hubspot-ratelimit-daily", max.to_string());
            set("x-hubspot-ratelimit-daily-remaining", rem.to_string());
        }
    }
    finish_counted(&shared, &portal, &method, &path, query, resp).await
}

async fn finish_counted(
    shared: &Shared,
    portal: &Portal,
    method: &Method,
    path: &str,
    query: Option<String>,
    resp: Response,
) -> Response {
    {
        let mut c = portal.counters.lock();
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            c.http_429 += 1;
        } else if resp.status().is_server_error() {
            c.http_5xx += 1;
        }
    }
    finish(shared, method, path, query, resp).await
}

/// Records the answer when recording is on; otherwise passes it through untouched.
async fn finish(
    shared: &Shared,
    method: &Method,
    path: &str,
    query: Option<String>,
    resp: Response,
) -> Response {
    let Some(rec) = &shared.recorder else {
        return resp;
    };
    let (parts, body) = resp.into_parts();
    let is_json = parts
        .headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        rec.lock().push(Recorded {
            method: method.to_string(),
            path: path.to_owned(),
            query,
            status: parts.status.as_u16(),
            body: None,
        });
        return Response::from_parts(parts, body);
    }
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    rec.lock().push(Recorded {
        method: method.to_string(),
        path: path.to_owned(),
        query,
        status: parts.status.as_u16(),
        body: serde_json::from_slice(&bytes).ok(),
    });
    Response::from_parts(parts, Body::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_keys_group_ids_and_type_ids() {
        assert_eq!(
            endpoint_key(&Method::PATCH, "/crm/v3/objects/0-3/12345"),
            "PATCH /crm/v3/objects/deals/{id}"
        );
        assert_eq!(
            endpoint_key(
                &Method::PUT,
                "/crm/v4/objects/deals/1/associations/default/notes/2"
            ),
            "PUT /crm/v4/objects/deals/{id}/associations/default/notes/{id}"
        );
        assert_eq!(
            endpoint_key(&Method::POST, "/crm/v3/objects/deals/batch/update"),
            "POST /crm/v3/objects/deals/batch/update"
        );
        assert!(!is_write(&Method::POST, "/crm/v3/objects/deals/search"));
        assert!(is_write(
            &Method::POST,
            "/crm/v3/objects/deals/batch/update"
        ));
    }
}
