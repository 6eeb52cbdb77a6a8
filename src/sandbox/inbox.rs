//! A catcher for dealsync's outbound notifications (`/_sandbox/inbox`), so the demo and the
//! tests can point `[notifications] webhook_url` at the sandbox instead of anywhere real.
//! It keeps every request's signature headers and JSON body, and can be told to answer the
//! next N deliveries with 503 to exercise retries.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::objects::reply;
use super::params::Json;
use super::Shared;

/// What the catcher has seen, and how many deliveries it still refuses.
#[derive(Debug, Default)]
pub struct Inbox {
    pub received: std::collections::VecDeque<Value>,
    pub fail_next: u64,
}

/// Deliveries kept; older ones are dropped first.
const KEEP: usize = 10_000;

pub fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_sandbox/inbox", get(list).post(receive).delete(clear))
        .route("/_sandbox/inbox/fail", put(fail))
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let mut inbox = shared.inbox.lock();
    if inbox.fail_next > 0 {
        inbox.fail_next -= 1;
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "error", "message": "the sandbox inbox was told to refuse this delivery"}),
        );
    }
    let header = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let entry = json!({
        "signature": header("x-dealsync-signature"),
        "timestamp": header("x-dealsync-timestamp"),
        "delivery": header("x-dealsync-delivery"),
        "raw": String::from_utf8_lossy(&body),
        "body": serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
    });
    if inbox.received.len() >= KEEP {
        inbox.received.pop_front();
    }
    inbox.received.push_back(entry);
    StatusCode::NO_CONTENT.into_response()
}

async fn list(State(shared): State<Arc<Shared>>) -> Response {
    let inbox = shared.inbox.lock();
    reply(
        StatusCode::OK,
        json!({"results": inbox.received, "fail_next": inbox.fail_next}),
    )
}

async fn clear(State(shared): State<Arc<Shared>>) -> Response {
    *shared.inbox.lock() = Inbox::default();
    StatusCode::NO_CONTENT.into_response()
}

/// `PUT /_sandbox/inbox/fail {"next": N}`: answer the next N deliveries with 503.
async fn fail(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> ApiResult<Response> {
    let n = body
        .get("next")
        .and_then(Value::as_u64)
        .ok_or_else(|| ApiError::validation("send {\"next\": N} with N a whole number"))?;
    shared.inbox.lock().fail_next = n;
    Ok(reply(StatusCode::OK, json!({"fail_next": n})))
}
