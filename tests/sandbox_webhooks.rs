//! Integration tests for the sandbox's webhook delivery, over loopback: HubSpot's v3 (and v1)
//! signatures, the events CRM changes produce, batches of at most 100, retries with
//! `attemptNumber`, subscriptions, the delivery settings and log, the webhook faults (drop,
//! duplicate, reorder, delay, missing headers), and the `dealsync sandbox` command line.
//!
//! Every test starts its own sandbox and its own webhook receiver on 127.0.0.1:0. The receiver
//! records each request (method, full URI, headers, body) and can be scripted to fail, hang or
//! hold requests. Nothing sleeps to synchronise: tests wait with `common::eventually`, which
//! polls a condition against a deadline. Signatures are checked with the test's own composition
//! of HubSpot's algorithm (first checked against published vectors), never with
//! `dealsync::signature`.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use common::{eventually, Portal};
use dealsync::sandbox::{SandboxConfig, SandboxHandle};
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

const DEALS: &str = "/crm/v3/objects/deals";
/// Fault draws and generated credentials come from this seed, so failures can be replayed.
const SEED: u64 = 20_240_917;
/// The bound on waiting for something the sandbox normally does within milliseconds.
const WAIT: Duration = Duration::from_secs(15);
/// HubSpot's window for `X-HubSpot-Request-Timestamp`.
const FIVE_MINUTES_MS: i64 = 5 * 60 * 1000;

// ---------------------------------------------------------------------------------------------
// Signatures, computed by the test itself
// ---------------------------------------------------------------------------------------------

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `X-HubSpot-Signature-v3` as HubSpot documents it:
/// `base64(HMAC-SHA256(secret, METHOD + URI + body + timestamp))`.
fn expected_v3(secret: &str, method: &str, uri: &str, body: &[u8], timestamp: &str) -> String {
    let mut msg = Vec::with_capacity(method.len() + uri.len() + body.len() + timestamp.len());
    msg.extend_from_slice(method.as_bytes());
    msg.extend_from_slice(uri.as_bytes());
    msg.extend_from_slice(body);
    msg.extend_from_slice(timestamp.as_bytes());
    b64(&hmac_sha256(secret.as_bytes(), &msg))
}

/// The legacy `X-HubSpot-Signature` (v1): `hex(SHA-256(secret + body))`.
fn expected_v1(secret: &str, body: &[u8]) -> String {
    let mut msg = secret.as_bytes().to_vec();
    msg.extend_from_slice(body);
    hex(&sha256(&msg))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

// ---------------------------------------------------------------------------------------------
// The webhook receiver
// ---------------------------------------------------------------------------------------------

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Hit {
    method: String,
    /// The full URL the request was made to, rebuilt as a HubSpot receiver does for v3:
    /// `http://` + `Host` + path and query as received.
    uri: String,
    headers: HeaderMap,
    body: Vec<u8>,
    /// The status the receiver answered with.
    answered: u16,
    at: Instant,
    received_ms: i64,
}

impl Hit {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The events in the body (a JSON array).
    fn events(&self) -> Vec<Value> {
        match serde_json::from_slice(&self.body) {
            Ok(Value::Array(events)) => events,
            other => panic!(
                "webhook body must be a JSON array of events, got {other:?}: {}",
                String::from_utf8_lossy(&self.body)
            ),
        }
    }

    fn event_ids(&self) -> Vec<u64> {
        self.events().iter().map(event_id).collect()
    }
}

/// What the receiver does with the next requests.
#[derive(Default)]
struct Script {
    /// Statuses for the next requests, in order; then `always`, or 200.
    answers: VecDeque<u16>,
    always: Option<u16>,
    /// Wait this long before answering this many requests (a receiver slower than the
    /// sandbox's timeout).
    hang_next: usize,
    hang_for: Duration,
}

struct RxState {
    hits: Mutex<Vec<Hit>>,
    script: Mutex<Script>,
    /// While true, requests are held open (after being recorded) until it turns false.
    hold: tokio::sync::watch::Sender<bool>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// Counts a request in flight while it lives, even if the connection is dropped mid-answer.
struct InFlight<'a>(&'a RxState);

impl<'a> InFlight<'a> {
    fn enter(st: &'a RxState) -> Self {
        let n = st.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        st.max_in_flight.fetch_max(n, Ordering::SeqCst);
        InFlight(st)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A webhook target on 127.0.0.1:0 that records everything it is sent.
struct Receiver {
    base: String,
    st: Arc<RxState>,
}

impl Receiver {
    async fn start() -> Receiver {
        let st = Arc::new(RxState {
            hits: Mutex::new(Vec::new()),
            script: Mutex::new(Script::default()),
            hold: tokio::sync::watch::channel(false).0,
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let app = axum::Router::new().fallback(record).with_state(st.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("receiver binds on loopback");
        let addr = listener.local_addr().expect("receiver address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            base: format!("http://{addr}"),
            st,
        }
    }

    /// A URL on this receiver (`path` starts with `/`).
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn hits(&self) -> Vec<Hit> {
        self.st.hits.lock().expect("hits lock").clone()
    }

    /// Every event received, in arrival order.
    fn events(&self) -> Vec<Value> {
        self.hits().iter().flat_map(Hit::events).collect()
    }

    /// Answers the next requests with these statuses, in order, then 200.
    fn answer_next(&self, statuses: &[u16]) {
        let mut s = self.st.script.lock().expect("script lock");
        s.answers = statuses.iter().copied().collect();
    }

    /// Answers every request with this status.
    fn always_answer(&self, status: u16) {
        self.st.script.lock().expect("script lock").always = Some(status);
    }

    fn hang_next(&self, n: usize, hang_for: Duration) {
        let mut s = self.st.script.lock().expect("script lock");
        s.hang_next = n;
        s.hang_for = hang_for;
    }

    fn hold(&self, on: bool) {
        self.st.hold.send_replace(on);
    }

    fn in_flight(&self) -> usize {
        self.st.in_flight.load(Ordering::SeqCst)
    }

    fn max_in_flight(&self) -> usize {
        self.st.max_in_flight.load(Ordering::SeqCst)
    }

    /// Waits until events matching `pred` have arrived `n` times in all, and returns them.
    async fn wait_events(&self, what: &str, n: usize, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        eventually(what, WAIT, || {
            let found: Vec<Value> = self.events().into_iter().filter(|e| pred(e)).collect();
            async move { (found.len() >= n).then_some(found) }
        })
        .await
    }
}

async fn record(State(st): State<Arc<RxState>>, req: Request) -> StatusCode {
    let at = Instant::now();
    let received_ms = now_ms();
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    let host = parts
        .headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let (status, pause) = {
        let mut s = st.script.lock().expect("script lock");
        let status = s.answers.pop_front().or(s.always).unwrap_or(200);
        let pause = if s.hang_next > 0 {
            s.hang_next -= 1;
            Some(s.hang_for)
        } else {
            None
        };
        (status, pause)
    };
    let _guard = InFlight::enter(&st);
    st.hits.lock().expect("hits lock").push(Hit {
        method: parts.method.to_string(),
        uri: format!("http://{host}{}", parts.uri),
        headers: parts.headers,
        body,
        answered: status,
        at,
        received_ms,
    });
    if let Some(p) = pause {
        // A slow receiver is the behaviour under test here, not a way to synchronise.
        tokio::time::sleep(p).await;
    }
    let mut hold = st.hold.subscribe();
    let _ = hold.wait_for(|held| !*held).await;
    StatusCode::from_u16(status).expect("valid status")
}

// ---------------------------------------------------------------------------------------------
// Sandbox helpers
// ---------------------------------------------------------------------------------------------

fn config() -> SandboxConfig {
    SandboxConfig {
        rate_limit_per_10s: None,
        daily_limit: None,
        search_per_s: None,
        seed: Some(SEED),
        ..SandboxConfig::default()
    }
}

/// The path (with a query, so the signed URI is more than scheme, host and path) the sandbox
/// posts a portal's events to.
fn hook_path(portal: &str) -> String {
    format!("/hubspot/webhooks?portal={portal}&v=3")
}

/// Replaces a portal's webhook settings; fields left out take their defaults.
async fn put_hooks(p: &Portal, settings: Value) -> Value {
    let a = p
        .control(Method::PUT, "/webhooks", Some(settings.clone()))
        .await;
    assert_eq!(a.status, 200, "PUT webhooks {settings}: {}", a.text);
    a.body
}

/// A fresh sandbox whose portal `name` sends its events to a fresh receiver, with `extra`
/// merged into the webhook settings.
async fn hooked(name: &str, extra: Value) -> (SandboxHandle, Portal, Receiver) {
    let sb = common::sandbox_with(config()).await;
    let p = common::portal(&sb, name);
    let rx = Receiver::start().await;
    let mut settings = json!({ "target_url": rx.url(&hook_path(name)) });
    if let (Some(s), Some(e)) = (settings.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    put_hooks(&p, settings).await;
    (sb, p, rx)
}

/// `GET …/webhooks/deliveries`: `{stats, deliveries}`.
async fn deliveries(p: &Portal) -> Value {
    let a = p.control(Method::GET, "/webhooks/deliveries", None).await;
    assert_eq!(a.status, 200, "deliveries: {}", a.text);
    a.body
}

/// Waits until every event the sandbox made (and every injected copy) has met its fate —
/// delivered, dropped or given up — and `done` holds for the stats; returns the log.
async fn settled(p: &Portal, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let n = |s: &Value, k: &str| s[k].as_u64().unwrap_or_else(|| panic!("stats.{k}: {s}"));
    eventually(what, WAIT, || async {
        let d = deliveries(p).await;
        let s = &d["stats"];
        // `pending` and `in_flight` alone can both read 0 while the dispatcher holds a batch
        // it has taken from the queue but not yet handed to a sender.
        let fated = n(s, "events_delivered") + n(s, "events_dropped") + n(s, "events_exhausted");
        let made = n(s, "events_created") + n(s, "events_duplicated");
        (n(s, "pending") == 0 && n(s, "in_flight") == 0 && fated == made && done(s)).then_some(d)
    })
    .await
}

fn event_id(e: &Value) -> u64 {
    e["eventId"]
        .as_u64()
        .unwrap_or_else(|| panic!("eventId must be a number: {e}"))
}

fn num_id(id: &str) -> u64 {
    id.parse().expect("object ids are numeric")
}

fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["subscriptionType"] == t)
        .collect()
}

/// Creates `n` deals with batch calls of at most 100 and returns their ids.
async fn create_deals(p: &Portal, n: usize, tag: &str) -> Vec<u64> {
    let mut ids = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let take = (n - i).min(100);
        let inputs: Vec<Value> = (i..i + take)
            .map(|k| json!({ "properties": { "dealname": format!("{tag} {k}"), "amount": "10" } }))
            .collect();
        let a = p
            .post(
                &format!("{DEALS}/batch/create"),
                json!({ "inputs": inputs }),
            )
            .await;
        assert_eq!(a.status, 201, "batch create: {}", a.text);
        for r in a.body["results"].as_array().expect("results") {
            ids.push(num_id(r["id"].as_str().expect("string id")));
        }
        i += take;
    }
    assert_eq!(ids.len(), n);
    ids
}

/// Asserts that a request is a HubSpot-signed webhook POST for a portal with this secret.
fn assert_signed(hit: &Hit, secret: &str) {
    assert_eq!(hit.method, "POST", "webhooks are POSTs");
    assert_eq!(
        hit.header("content-type"),
        Some("application/json"),
        "{:?}",
        hit.headers
    );
    let ts = hit
        .header("x-hubspot-request-timestamp")
        .unwrap_or_else(|| panic!("X-HubSpot-Request-Timestamp missing: {:?}", hit.headers));
    let ts_ms: i64 = ts.parse().expect("timestamp is milliseconds");
    assert!(
        (hit.received_ms - ts_ms).abs() <= FIVE_MINUTES_MS,
        "timestamp {ts_ms} is not within 5 minutes of {}",
        hit.received_ms
    );
    let v3 = hit
        .header("x-hubspot-signature-v3")
        .unwrap_or_else(|| panic!("X-HubSpot-Signature-v3 missing: {:?}", hit.headers));
    assert_eq!(
        v3,
        expected_v3(secret, &hit.method, &hit.uri, &hit.body, ts),
        "v3 signature over POST + {} + body + {ts}",
        hit.uri
    );
    assert_eq!(hit.header("x-hubspot-signature-version"), Some("v1"));
    assert_eq!(
        hit.header("x-hubspot-signature"),
        Some(expected_v1(secret, &hit.body).as_str()),
        "v1 signature"
    );
}

// ---------------------------------------------------------------------------------------------
// The test's own signature code
// ---------------------------------------------------------------------------------------------

#[test]
fn signature_building_blocks_match_published_vectors() {
    // FIPS 180-2 / NIST examples.
    assert_eq!(
        hex(&sha256(b"abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        hex(&sha256(b"")),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    // RFC 4231 test cases 1, 2 and 6 (a key longer than the block size).
    assert_eq!(
        hex(&hmac_sha256(&[0x0b; 20], b"Hi There")),
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
    );
    assert_eq!(
        hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    assert_eq!(
        hex(&hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First"
        )),
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    );
    // RFC 4648 §10.
    for (plain, encoded) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(b64(plain.as_bytes()), encoded, "base64 of {plain:?}");
    }
    // HubSpot's published example (see HUBSPOT-API.md §4).
    let secret = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy";
    let body = b"{'example_field':'example_value'}";
    assert_eq!(
        expected_v3(
            secret,
            "POST",
            "https://www.example.com/webhook_uri",
            body,
            "1693657560000"
        ),
        "K36dawei4A+QBNolUOqo7s91KQDWQ5MXZ/QufNYuk/Y="
    );
    assert_eq!(
        expected_v1(secret, body),
        "69fc6631a867edd4f9e9e627fc5c1148e3fbdd8b21837b6d2b8901c1fa57f750"
    );
}

// ---------------------------------------------------------------------------------------------
// Signatures on deliveries
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_delivery_is_signed_v3_over_method_full_uri_body_and_timestamp() {
    // Two portals post to the same receiver on different URLs: each request must verify with
    // its own portal's secret and carry its own portal id.
    let sb = common::sandbox_with(config()).await;
    let rx = Receiver::start().await;
    let a = common::portal(&sb, "partner-a");
    let h = common::portal(&sb, "hubspot");
    put_hooks(&a, json!({ "target_url": rx.url(&hook_path("partner-a")) })).await;
    put_hooks(&h, json!({ "target_url": rx.url(&hook_path("hubspot")) })).await;
    assert_ne!(a.info.webhook_secret, h.info.webhook_secret);

    for p in [&a, &h] {
        let deal = p.create_deal(json!({ "dealname": "Signed" })).await;
        let w = p
            .patch(
                &format!("{DEALS}/{deal}"),
                json!({ "properties": { "amount": "12.50" } }),
            )
            .await;
        assert_eq!(w.status, 200, "{}", w.text);
        let d = p.delete(&format!("{DEALS}/{deal}")).await;
        assert_eq!(d.status, 204, "{}", d.text);
    }
    let per_portal = 3;
    eventually("three events per portal arrive", WAIT, || async {
        (rx.events().len() >= 2 * per_portal).then_some(())
    })
    .await;

    let hits = rx.hits();
    let mut seen = BTreeMap::new();
    for hit in &hits {
        let (p, other) = if hit.uri.ends_with(&hook_path("partner-a")) {
            (&a, &h)
        } else {
            (&h, &a)
        };
        assert_eq!(hit.uri, rx.url(&hook_path(&p.info.name)));
        assert_signed(hit, &p.info.webhook_secret);
        // The other portal's secret does not verify it.
        let ts = hit
            .header("x-hubspot-request-timestamp")
            .expect("timestamp");
        assert_ne!(
            hit.header("x-hubspot-signature-v3"),
            Some(expected_v3(&other.info.webhook_secret, "POST", &hit.uri, &hit.body, ts).as_str())
        );
        for e in hit.events() {
            assert_eq!(e["portalId"], json!(p.info.portal_id), "{e}");
            *seen.entry(p.info.name.clone()).or_insert(0) += 1;
        }
    }
    assert_eq!(
        seen,
        BTreeMap::from([("hubspot".to_owned(), 3), ("partner-a".to_owned(), 3)])
    );
}

#[tokio::test]
async fn missing_headers_fault_strips_every_signature_header() {
    let (_sb, p, rx) = hooked("partner-a", json!({})).await;
    p.set_faults(json!({ "webhook_missing_headers": 1.0 }))
        .await;
    let deal = num_id(&p.create_deal(json!({ "dealname": "Unsigned" })).await);
    rx.wait_events("the creation event", 1, |e| e["objectId"] == deal)
        .await;
    for hit in rx.hits() {
        for h in [
            "x-hubspot-signature-v3",
            "x-hubspot-request-timestamp",
            "x-hubspot-signature",
            "x-hubspot-signature-version",
        ] {
            assert!(
                hit.header(h).is_none(),
                "{h} should be missing: {:?}",
                hit.headers
            );
        }
        assert_eq!(hit.method, "POST");
    }

    // Cleared faults sign again.
    let clear = p.control(Method::DELETE, "/faults", None).await;
    assert_eq!(clear.status, 204, "{}", clear.text);
    let next = num_id(&p.create_deal(json!({ "dealname": "Signed again" })).await);
    rx.wait_events("the second creation event", 1, |e| e["objectId"] == next)
        .await;
    let hit = rx
        .hits()
        .into_iter()
        .find(|h| h.events().iter().any(|e| e["objectId"] == next))
        .expect("hit with the second event");
    assert_signed(&hit, &p.info.webhook_secret);
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn deal_changes_become_events_with_hubspots_fields() {
    let (_sb, p, rx) = hooked("partner-b", json!({ "app_id": 7_654_321 })).await;
    let before = now_ms();
    let created = p
        .post(
            DEALS,
            json!({ "properties": { "dealname": "Evented", "amount": "100" } }),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let deal_text = created.body["id"].as_str().expect("id").to_owned();
    let deal = num_id(&deal_text);
    let created_at = chrono::DateTime::parse_from_rfc3339(
        created.body["createdAt"].as_str().expect("createdAt"),
    )
    .expect("ISO createdAt")
    .timestamp_millis();
    let w = p
        .patch(
            &format!("{DEALS}/{deal_text}"),
            json!({ "properties": { "amount": "250" } }),
        )
        .await;
    assert_eq!(w.status, 200, "{}", w.text);
    // A person changes the name in the CRM.
    let ui = p
        .send(
            p.req(Method::PATCH, &format!("{DEALS}/{deal_text}"))
                .header("X-Sandbox-Source", "CRM_UI")
                .json(&json!({ "properties": { "dealname": "Renamed in the UI" } })),
        )
        .await;
    assert_eq!(ui.status, 200, "{}", ui.text);
    let d = p.delete(&format!("{DEALS}/{deal_text}")).await;
    assert_eq!(d.status, 204, "{}", d.text);
    let r = p
        .control(
            Method::POST,
            &format!("/objects/deals/{deal_text}/restore"),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let after = now_ms();

    let events = rx
        .wait_events("five events for the deal", 5, |_| true)
        .await;
    assert_eq!(events.len(), 5, "{events:#?}");
    let types: BTreeSet<&str> = events
        .iter()
        .map(|e| e["subscriptionType"].as_str().expect("subscriptionType"))
        .collect();
    assert_eq!(
        types,
        BTreeSet::from([
            "deal.creation",
            "deal.propertyChange",
            "deal.deletion",
            "deal.restore"
        ])
    );
    let mut ids = HashSet::new();
    for e in &events {
        assert!(
            ids.insert(event_id(e)),
            "eventIds are distinct: {events:#?}"
        );
        assert!(e["subscriptionId"].as_u64().is_some(), "{e}");
        assert_eq!(e["portalId"], json!(p.info.portal_id), "{e}");
        assert_eq!(e["appId"], json!(7_654_321), "{e}");
        assert_eq!(e["objectId"], json!(deal), "{e}");
        assert_eq!(e["attemptNumber"], 0, "{e}");
        let at = e["occurredAt"].as_i64().expect("occurredAt in ms");
        assert!(
            (before..=after).contains(&at),
            "occurredAt {at} outside [{before}, {after}]"
        );
        let source = e["changeSource"].as_str().expect("changeSource");
        // The UI rename and the recycle-bin restore are a person's doing.
        if e["propertyName"] == "dealname" || e["subscriptionType"] == "deal.restore" {
            assert_eq!(source, "CRM_UI", "{e}");
        } else {
            assert_eq!(source, "INTEGRATION", "{e}");
        }
    }
    let creation = of_type(&events, "deal.creation");
    assert_eq!(creation.len(), 1);
    assert_eq!(creation[0]["occurredAt"], json!(created_at));
    assert!(creation[0].get("propertyName").is_none(), "{}", creation[0]);

    let changes = of_type(&events, "deal.propertyChange");
    let by_prop: BTreeMap<&str, &Value> = changes
        .iter()
        .map(|e| {
            (
                e["propertyName"].as_str().expect("propertyName"),
                &e["propertyValue"],
            )
        })
        .collect();
    assert_eq!(
        by_prop,
        BTreeMap::from([
            ("amount", &json!("250")),
            ("dealname", &json!("Renamed in the UI"))
        ])
    );
    // One subscription id per subscription.
    assert_eq!(changes[0]["subscriptionId"], changes[1]["subscriptionId"]);
    assert_ne!(changes[0]["subscriptionId"], creation[0]["subscriptionId"]);
    assert_eq!(of_type(&events, "deal.deletion").len(), 1);
    assert_eq!(of_type(&events, "deal.restore").len(), 1);
    // Deal events name no objectTypeId (only the generic `object.*` ones do).
    assert!(events.iter().all(|e| e.get("objectTypeId").is_none()));

    // A PATCH that changes nothing emits nothing.
    let created_before = deliveries(&p).await["stats"]["events_created"].clone();
    let same = p
        .patch(
            &format!("{DEALS}/{deal_text}"),
            json!({ "properties": { "amount": "250" } }),
        )
        .await;
    assert_eq!(same.status, 200, "{}", same.text);
    assert_eq!(
        deliveries(&p).await["stats"]["events_created"],
        created_before
    );
}

#[tokio::test]
async fn association_events_name_both_ends_and_notes_send_none() {
    let (_sb, p, rx) = hooked("partner-a", json!({})).await;
    let deal = p.create_deal(json!({ "dealname": "Linked" })).await;
    let con = p
        .post(
            "/crm/v3/objects/contacts",
            json!({ "properties": { "email": "linked@example.com" } }),
        )
        .await;
    assert_eq!(con.status, 201, "{}", con.text);
    let con = con.body["id"].as_str().expect("id").to_owned();
    let note = p
        .post(
            "/crm/v3/objects/notes",
            json!({ "properties": { "hs_note_body": "hi", "hs_timestamp": "2024-01-01T00:00:00.000Z" } }),
        )
        .await;
    assert_eq!(note.status, 201, "{}", note.text);
    let note = note.body["id"].as_str().expect("id").to_owned();

    for to in [format!("contacts/{con}"), format!("notes/{note}")] {
        let a = p
            .put(
                &format!("/crm/v4/objects/deals/{deal}/associations/default/{to}"),
                Value::Null,
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.text);
    }
    let un = p
        .delete(&format!(
            "/crm/v4/objects/deals/{deal}/associations/contacts/{con}"
        ))
        .await;
    assert_eq!(un.status, 204, "{}", un.text);

    let d = settled(&p, "all association events sent", |s| {
        s["events_created"].as_u64() >= Some(1)
    })
    .await;
    let events = rx.events();
    assert_eq!(
        d["stats"]["events_delivered"],
        json!(events.len()),
        "{events:#?}"
    );
    let assoc = of_type(&events, "deal.associationChange");
    assert_eq!(assoc.len(), 2, "one link, one unlink: {events:#?}");
    for e in &assoc {
        assert_eq!(e["objectId"], json!(num_id(&deal)), "{e}");
        assert_eq!(e["fromObjectId"], json!(num_id(&deal)), "{e}");
        assert_eq!(e["toObjectId"], json!(num_id(&con)), "{e}");
        assert_eq!(e["associationType"], "DEAL_TO_CONTACT", "{e}");
        assert_eq!(e["associationTypeId"], 3, "{e}");
        assert_eq!(e["isPrimaryAssociation"], false, "{e}");
    }
    let removed: Vec<&Value> = assoc.iter().map(|e| &e["associationRemoved"]).collect();
    assert!(
        removed.contains(&&json!(false)) && removed.contains(&&json!(true)),
        "{assoc:#?}"
    );
    // Nothing about the note, from either side, as on HubSpot.
    let note_id = json!(num_id(&note));
    assert!(
        events
            .iter()
            .all(|e| e["toObjectId"] != note_id && e["fromObjectId"] != note_id),
        "{events:#?}"
    );
    // The note itself is announced through the generic object subscription.
    let notes = of_type(&events, "object.creation");
    assert_eq!(notes.len(), 1, "{events:#?}");
    assert_eq!(notes[0]["objectId"], note_id);
    assert_eq!(notes[0]["objectTypeId"], "0-46");
}

// ---------------------------------------------------------------------------------------------
// Batches and concurrency
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn many_changes_go_in_batches_of_at_most_100_and_all_arrive() {
    let (_sb, p, rx) = hooked("partner-a", json!({})).await;
    let ids = create_deals(&p, 250, "Bulk").await;
    let events = rx.wait_events("250 creation events", 250, |_| true).await;
    settled(&p, "everything sent", |s| s["events_delivered"] == 250).await;

    let hits = rx.hits();
    assert!(hits.len() >= 3, "250 events need at least 3 requests");
    for hit in &hits {
        let n = hit.events().len();
        assert!((1..=100).contains(&n), "a request carried {n} events");
        assert_signed(hit, &p.info.webhook_secret);
    }
    let event_ids: HashSet<u64> = events.iter().map(event_id).collect();
    assert_eq!(events.len(), 250, "each change exactly once");
    assert_eq!(event_ids.len(), 250, "eventIds are unique");
    let objects: BTreeSet<u64> = events
        .iter()
        .map(|e| e["objectId"].as_u64().expect("objectId"))
        .collect();
    assert_eq!(objects, ids.iter().copied().collect::<BTreeSet<u64>>());
    assert!(events
        .iter()
        .all(|e| e["subscriptionType"] == "deal.creation"));

    // The delivery log agrees with what arrived.
    let d = deliveries(&p).await;
    let logged: Vec<u64> = d["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .inspect(|entry| {
            assert_eq!(entry["outcome"], "delivered", "{entry}");
            assert_eq!(entry["status"], 200, "{entry}");
        })
        .flat_map(|entry| {
            entry["event_ids"]
                .as_array()
                .expect("event_ids")
                .iter()
                .map(|v| v.as_u64().expect("id"))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(logged.iter().copied().collect::<HashSet<u64>>(), event_ids);
    assert_eq!(logged.len(), 250);
    assert_eq!(d["stats"]["requests"], json!(hits.len()));
    assert_eq!(d["stats"]["failed_requests"], 0);
}

#[tokio::test]
async fn at_most_max_concurrent_requests_are_in_flight() {
    let (_sb, p, rx) = hooked(
        "partner-a",
        json!({ "max_concurrent": 2, "timeout_ms": 30_000 }),
    )
    .await;
    rx.hold(true);
    create_deals(&p, 600, "Concurrent").await;
    // Two requests are held open by the receiver, and the dispatcher, blocked on its limit,
    // has stopped taking batches: the third batch waits for a slot, three are still queued.
    eventually("two requests held, the rest waiting", WAIT, || async {
        let s = deliveries(&p).await["stats"].clone();
        (rx.in_flight() == 2 && s["in_flight"] == 2 && s["pending"] == 300).then_some(())
    })
    .await;
    assert_eq!(rx.max_in_flight(), 2);
    rx.hold(false);
    settled(&p, "all 600 delivered", |s| s["events_delivered"] == 600).await;
    assert_eq!(rx.max_in_flight(), 2, "never more than max_concurrent");
    let ids: HashSet<u64> = rx.events().iter().map(event_id).collect();
    assert_eq!(ids.len(), 600);
    assert!(rx.hits().iter().all(|h| h.events().len() <= 100));
}

// ---------------------------------------------------------------------------------------------
// Retries
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn failed_requests_are_retried_with_attempt_numbers_counting_up() {
    let base_ms = 40;
    let (_sb, p, rx) = hooked("partner-a", json!({ "retry_base_ms": base_ms })).await;
    rx.answer_next(&[500, 503]);
    let deal = num_id(&p.create_deal(json!({ "dealname": "Retried" })).await);
    rx.wait_events("the event, three times", 3, |e| e["objectId"] == deal)
        .await;
    let d = settled(&p, "delivered after two retries", |s| {
        s["events_delivered"] == 1
    })
    .await;

    let hits = rx.hits();
    assert_eq!(hits.len(), 3, "exactly three attempts");
    assert_eq!(
        hits.iter().map(|h| h.answered).collect::<Vec<_>>(),
        [500, 503, 200]
    );
    let first = &hits[0].events()[0];
    for (n, hit) in hits.iter().enumerate() {
        // Each attempt is freshly signed and carries the same event.
        assert_signed(hit, &p.info.webhook_secret);
        let events = hit.events();
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(e["attemptNumber"], json!(n), "{e}");
        for field in ["eventId", "subscriptionId", "occurredAt", "objectId"] {
            assert_eq!(e[field], first[field], "{field} stays the same on a retry");
        }
    }
    // Delays double from retry_base_ms, with jitter of ±50%.
    let gap1 = hits[1].at - hits[0].at;
    let gap2 = hits[2].at - hits[1].at;
    assert!(
        gap1 >= Duration::from_millis(base_ms / 2),
        "first retry after {gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_millis(base_ms),
        "second retry after {gap2:?}"
    );

    let log = d["deliveries"].as_array().expect("deliveries");
    let rows: Vec<(Value, Value, Value)> = log
        .iter()
        .map(|l| {
            (
                l["outcome"].clone(),
                l["status"].clone(),
                l["attempt_numbers"].clone(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (json!("retry"), json!(500), json!([0])),
            (json!("retry"), json!(503), json!([1])),
            (json!("delivered"), json!(200), json!([2])),
        ]
    );
    assert_eq!(d["stats"]["failed_requests"], 2);
    assert_eq!(d["stats"]["requests"], 3);
    assert_eq!(d["stats"]["events_exhausted"], 0);
}

#[tokio::test]
async fn flush_makes_a_waiting_retry_due_now() {
    // A minute's backoff: only the flush control can bring the retry within the test's bound.
    let (_sb, p, rx) = hooked("partner-a", json!({ "retry_base_ms": 60_000 })).await;
    rx.answer_next(&[503]);
    let deal = num_id(&p.create_deal(json!({ "dealname": "Flushed" })).await);
    eventually("the failed attempt is logged as a retry", WAIT, || async {
        let d = deliveries(&p).await;
        (d["stats"]["pending"] == 1 && d["deliveries"][0]["outcome"] == "retry").then_some(())
    })
    .await;
    assert_eq!(rx.hits().len(), 1);
    let started = Instant::now();
    let f = p.control(Method::POST, "/webhooks/flush", None).await;
    assert_eq!(f.status, 204, "{}", f.text);
    let got = rx
        .wait_events("the retried event", 2, |e| e["objectId"] == deal)
        .await;
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(got[1]["attemptNumber"], 1);
    assert_eq!(got[1]["eventId"], got[0]["eventId"]);
}

#[tokio::test]
async fn retries_stop_after_max_retries() {
    let (_sb, p, rx) = hooked("partner-a", json!({ "retry_base_ms": 5, "max_retries": 2 })).await;
    rx.always_answer(500);
    p.create_deal(json!({ "dealname": "Never accepted" })).await;
    let d = settled(&p, "the event is given up", |s| s["events_exhausted"] == 1).await;
    let attempts: Vec<Value> = rx
        .events()
        .iter()
        .map(|e| e["attemptNumber"].clone())
        .collect();
    assert_eq!(
        attempts,
        [json!(0), json!(1), json!(2)],
        "first try plus two retries"
    );
    let outcomes: Vec<&Value> = d["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .map(|l| &l["outcome"])
        .collect();
    assert_eq!(
        outcomes,
        [&json!("retry"), &json!("retry"), &json!("exhausted")]
    );
    assert_eq!(d["stats"]["events_delivered"], 0);
    assert_eq!(d["stats"]["failed_requests"], 3);
}

#[tokio::test]
async fn no_answer_within_the_timeout_is_retried() {
    let (_sb, p, rx) = hooked(
        "partner-a",
        json!({ "timeout_ms": 200, "retry_base_ms": 10 }),
    )
    .await;
    rx.hang_next(1, Duration::from_secs(3));
    let deal = num_id(&p.create_deal(json!({ "dealname": "Slow receiver" })).await);
    let got = rx
        .wait_events("the event, twice", 2, |e| e["objectId"] == deal)
        .await;
    assert_eq!(got[0]["attemptNumber"], 0);
    assert_eq!(got[1]["attemptNumber"], 1);
    let d = settled(&p, "delivered on the retry", |s| s["events_delivered"] == 1).await;
    let first = &d["deliveries"][0];
    assert_eq!(first["outcome"], "retry", "{first}");
    assert_eq!(first["status"], Value::Null, "{first}");
    assert_eq!(first["error"], "timed out", "{first}");
}

#[tokio::test]
async fn a_target_that_refuses_connections_is_logged_and_given_up() {
    let sb = common::sandbox_with(config()).await;
    let p = common::portal(&sb, "partner-a");
    // A port bound but not listening: connections to it are refused, and no other test can
    // take it meanwhile.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("loopback"))
        .expect("bind");
    let closed = socket.local_addr().expect("addr");
    put_hooks(
        &p,
        json!({ "target_url": format!("http://{closed}/hook"), "max_retries": 0 }),
    )
    .await;
    p.create_deal(json!({ "dealname": "Nowhere" })).await;
    let d = settled(&p, "the event is given up", |s| s["events_exhausted"] == 1).await;
    let entry = &d["deliveries"][0];
    assert_eq!(entry["outcome"], "exhausted", "{entry}");
    assert_eq!(entry["error"], "connection failed", "{entry}");
    assert_eq!(entry["status"], Value::Null, "{entry}");
}

// ---------------------------------------------------------------------------------------------
// Settings and subscriptions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn webhook_settings_have_hubspot_defaults_validate_and_survive_reset() {
    let sb = common::sandbox_with(config()).await;
    let p = common::portal(&sb, "hubspot");
    let got = p.control(Method::GET, "/webhooks", None).await;
    assert_eq!(got.status, 200, "{}", got.text);
    let s = &got.body;
    assert_eq!(s["target_url"], Value::Null);
    assert_eq!(s["max_concurrent"], 10);
    assert_eq!(s["timeout_ms"], 5_000);
    assert_eq!(s["max_retries"], 10);
    let types: BTreeSet<&str> = s["subscriptions"]
        .as_array()
        .expect("subscriptions")
        .iter()
        .map(|x| x["eventType"].as_str().expect("eventType"))
        .collect();
    for t in [
        "deal.creation",
        "deal.propertyChange",
        "deal.deletion",
        "deal.restore",
        "deal.associationChange",
    ] {
        assert!(
            types.contains(t),
            "default subscriptions lack {t}: {types:?}"
        );
    }

    // Without a target nothing is queued.
    p.create_deal(json!({ "dealname": "Unheard" })).await;
    let d = deliveries(&p).await;
    assert_eq!(d["stats"]["events_created"], 0, "{d}");

    for bad in [
        json!({ "target_url": "ftp://127.0.0.1/x" }),
        json!({ "target_url": "not a url" }),
        json!({ "max_concurrent": 0 }),
        json!({ "max_concurrent": 101 }),
        json!({ "no_such_setting": true }),
    ] {
        let a = p.control(Method::PUT, "/webhooks", Some(bad.clone())).await;
        assert_eq!(a.status, 400, "{bad} must be refused: {}", a.text);
    }
    let unknown = p
        .send(
            p.http
                .get(format!("{}/_sandbox/portals/nope/webhooks", sb.base_url)),
        )
        .await;
    assert_eq!(unknown.status, 404, "{}", unknown.text);

    // Settings are replaced as a whole and kept across a reset; the log is cleared.
    let rx = Receiver::start().await;
    let target = rx.url(&hook_path("hubspot"));
    let put = put_hooks(&p, json!({ "target_url": target, "max_retries": 3 })).await;
    assert_eq!(put["max_retries"], 3);
    assert_eq!(put["max_concurrent"], 10, "omitted fields take defaults");
    let deal = num_id(&p.create_deal(json!({ "dealname": "Heard" })).await);
    rx.wait_events("the creation", 1, |e| e["objectId"] == deal)
        .await;
    settled(&p, "delivered", |s| s["events_delivered"] == 1).await;
    let reset = p
        .send(
            p.http
                .post(format!("{}/_sandbox/reset?portal=hubspot", sb.base_url)),
        )
        .await;
    assert_eq!(reset.status, 204, "{}", reset.text);
    let after = p.control(Method::GET, "/webhooks", None).await.body;
    assert_eq!(after["target_url"], json!(target));
    assert_eq!(after["max_retries"], 3);
    let d = deliveries(&p).await;
    assert_eq!(d["deliveries"], json!([]));
    assert_eq!(d["stats"]["events_created"], 0);
}

#[tokio::test]
async fn only_subscribed_event_types_and_properties_are_delivered() {
    let (_sb, p, rx) = hooked(
        "partner-a",
        json!({ "subscriptions": [
            { "eventType": "deal.creation" },
            { "eventType": "deal.propertyChange", "propertyName": "amount" },
            { "eventType": "deal.deletion", "active": false },
        ] }),
    )
    .await;
    let deal = p.create_deal(json!({ "dealname": "Filtered" })).await;
    let w = p
        .patch(
            &format!("{DEALS}/{deal}"),
            json!({ "properties": { "dealname": "Renamed", "amount": "5" } }),
        )
        .await;
    assert_eq!(w.status, 200, "{}", w.text);
    let d = p.delete(&format!("{DEALS}/{deal}")).await;
    assert_eq!(d.status, 204, "{}", d.text);
    let r = p
        .control(
            Method::POST,
            &format!("/objects/deals/{deal}/restore"),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);

    let d = settled(&p, "subscribed events sent", |s| s["events_created"] == 2).await;
    assert_eq!(d["stats"]["events_delivered"], 2, "{d}");
    let events = rx.events();
    let got: BTreeSet<(&str, Option<&str>)> = events
        .iter()
        .map(|e| {
            (
                e["subscriptionType"].as_str().expect("type"),
                e["propertyName"].as_str(),
            )
        })
        .collect();
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(
        got,
        BTreeSet::from([
            ("deal.creation", None),
            ("deal.propertyChange", Some("amount"))
        ]),
        "{events:#?}"
    );
}

#[tokio::test]
async fn a_target_given_at_start_receives_events() {
    let rx = Receiver::start().await;
    let sb = common::sandbox_with(SandboxConfig {
        webhook_targets: vec![("partner-b".into(), rx.url(&hook_path("partner-b")))],
        ..config()
    })
    .await;
    let b = common::portal(&sb, "partner-b");
    let a = common::portal(&sb, "partner-a");
    let settings = b.control(Method::GET, "/webhooks", None).await.body;
    assert_eq!(
        settings["target_url"],
        json!(rx.url(&hook_path("partner-b")))
    );
    a.create_deal(json!({ "dealname": "Not configured" })).await;
    let deal = num_id(&b.create_deal(json!({ "dealname": "Configured" })).await);
    let got = rx
        .wait_events("partner-b's creation", 1, |e| e["objectId"] == deal)
        .await;
    assert_eq!(got[0]["portalId"], json!(b.info.portal_id));
    assert!(rx
        .events()
        .iter()
        .all(|e| e["portalId"] == json!(b.info.portal_id)));
    assert_eq!(deliveries(&a).await["stats"]["events_created"], 0);
    for hit in rx.hits() {
        assert_signed(&hit, &b.info.webhook_secret);
    }

    // A target for a portal that is not served is refused at start.
    let err = dealsync::sandbox::start(SandboxConfig {
        webhook_targets: vec![("nobody".into(), rx.url("/x"))],
        ..config()
    })
    .await
    .err()
    .expect("unknown portal refused");
    assert!(err.to_string().contains("nobody"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Webhook faults
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn dropped_events_never_arrive_and_the_rest_do() {
    let (_sb, p, rx) = hooked("partner-a", json!({})).await;
    p.set_faults(json!({ "webhook_drop": 0.5 })).await;
    create_deals(&p, 100, "Lossy").await;
    let d = settled(&p, "every event delivered or dropped", |s| {
        s["events_created"] == 100
    })
    .await;
    let dropped: HashSet<u64> = d["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .filter(|l| l["outcome"] == "dropped")
        .flat_map(|l| l["event_ids"].as_array().expect("ids").clone())
        .map(|v| v.as_u64().expect("id"))
        .collect();
    let received: Vec<u64> = rx.events().iter().map(event_id).collect();
    let received_set: HashSet<u64> = received.iter().copied().collect();
    assert_eq!(received.len(), received_set.len(), "nothing twice");
    assert!(
        !dropped.is_empty() && !received_set.is_empty(),
        "at 0.5, some are dropped and some arrive"
    );
    assert_eq!(json!(dropped.len()), d["stats"]["events_dropped"]);
    assert!(
        dropped.is_disjoint(&received_set),
        "a dropped event arrived"
    );
    assert_eq!(dropped.len() + received_set.len(), 100);

    // Nothing is left to send: after a flush and a later delivery, still no dropped event.
    let f = p.control(Method::POST, "/webhooks/flush", None).await;
    assert_eq!(f.status, 204, "{}", f.text);
    let clear = p.control(Method::DELETE, "/faults", None).await;
    assert_eq!(clear.status, 204, "{}", clear.text);
    let after_clear = num_id(&p.create_deal(json!({ "dealname": "Clear" })).await);
    rx.wait_events("an event after clearing faults", 1, |e| {
        e["objectId"] == after_clear
    })
    .await;
    assert!(rx.events().iter().all(|e| !dropped.contains(&event_id(e))));
}

#[tokio::test]
async fn duplicated_events_arrive_twice_with_the_same_event_id() {
    let (_sb, p, rx) = hooked("partner-a", json!({})).await;
    p.set_faults(json!({ "webhook_duplicate": 1.0 })).await;
    let deal = num_id(&p.create_deal(json!({ "dealname": "Twice" })).await);
    rx.wait_events("the first copy", 1, |e| e["objectId"] == deal)
        .await;
    // The copy is queued when the original is sent. With the fault off, the copy itself is
    // not copied again; the flush sends it now.
    let clear = p.control(Method::DELETE, "/faults", None).await;
    assert_eq!(clear.status, 204, "{}", clear.text);
    let f = p.control(Method::POST, "/webhooks/flush", None).await;
    assert_eq!(f.status, 204, "{}", f.text);
    rx.wait_events("the second copy", 2, |e| e["objectId"] == deal)
        .await;
    let d = settled(&p, "nothing left to send", |_| true).await;
    let copies = rx.events();
    assert!(copies.len() >= 2, "{copies:#?}");
    for c in &copies {
        assert_eq!(c, &copies[0], "every copy is the same event, same eventId");
    }
    assert_eq!(d["stats"]["events_created"], 1);
    assert_eq!(d["stats"]["events_duplicated"], json!(copies.len() - 1));
    assert_eq!(d["stats"]["events_delivered"], json!(copies.len()));
    for hit in rx.hits() {
        assert_signed(&hit, &p.info.webhook_secret);
    }
}

#[tokio::test]
async fn reordered_batches_do_not_follow_occurrence_order() {
    let (_sb, p, rx) = hooked("partner-a", json!({})).await;
    p.set_faults(json!({ "webhook_reorder": 1.0 })).await;
    // One batch create: 50 events queued at once, sent in one request.
    create_deals(&p, 50, "Shuffled").await;
    rx.wait_events("50 events", 50, |_| true).await;
    let hits = rx.hits();
    assert_eq!(hits.len(), 1, "one request");
    let ids = hits[0].event_ids();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_ne!(
        ids, sorted,
        "events in occurrence order despite webhook_reorder"
    );
    assert_eq!(
        sorted.iter().copied().collect::<HashSet<u64>>().len(),
        50,
        "every event once"
    );
    assert_signed(&hits[0], &p.info.webhook_secret);
}

#[tokio::test]
async fn delay_fault_holds_each_delivery_back() {
    let (_sb, p, rx) = hooked("partner-a", json!({})).await;
    let delay = Duration::from_millis(400);
    p.set_faults(json!({ "webhook_delay_ms": delay.as_millis() as u64 }))
        .await;
    let before = Instant::now();
    let deal = num_id(&p.create_deal(json!({ "dealname": "Late" })).await);
    rx.wait_events("the delayed event", 1, |e| e["objectId"] == deal)
        .await;
    let hit = &rx.hits()[0];
    assert!(
        hit.at - before >= delay,
        "arrived after {:?}, before the {delay:?} delay",
        hit.at - before
    );
}

// ---------------------------------------------------------------------------------------------
// The command line
// ---------------------------------------------------------------------------------------------

fn dealsync() -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_dealsync"));
    c.env("DEALSYNC_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// Runs a command that should end on its own; returns (exit code, stdout, stderr).
async fn run_to_end(args: &[&str]) -> (Option<i32>, String, String) {
    let child = dealsync().args(args).spawn().expect("dealsync starts");
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("dealsync {args:?} did not exit"))
        .expect("output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn cli_sandbox_prints_one_json_line_serves_and_stops_on_sigterm() {
    let rx = Receiver::start().await;
    let target = format!("hubspot={}", rx.url(&hook_path("hubspot")));
    let mut child = dealsync()
        .args([
            "sandbox",
            "--listen",
            "127.0.0.1:0",
            "--webhook-target",
            &target,
        ])
        .spawn()
        .expect("dealsync sandbox starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    tokio::time::timeout(WAIT, stdout.read_line(&mut line))
        .await
        .expect("the startup line within the bound")
        .expect("read stdout");
    assert!(line.ends_with('\n'), "one whole line: {line:?}");
    let startup: Value = serde_json::from_str(line.trim_end()).expect("the line is JSON");
    let base = startup["base_url"].as_str().expect("base_url");
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    let portals = startup["portals"].as_array().expect("portals");
    let names: Vec<&str> = portals
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["hubspot", "partner-a", "partner-b"]);
    for p in portals {
        assert!(p["portal_id"].as_u64().is_some_and(|id| id > 0), "{p}");
        assert!(p["token"].as_str().is_some_and(|t| !t.is_empty()), "{p}");
        assert!(
            p["webhook_secret"].as_str().is_some_and(|s| !s.is_empty()),
            "{p}"
        );
    }

    // It serves: a deal created with the printed token is announced, signed with the printed
    // secret.
    let hubspot = &portals[0];
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let created = http
        .post(format!("{base}{DEALS}"))
        .bearer_auth(hubspot["token"].as_str().expect("token"))
        .json(&json!({ "properties": { "dealname": "From the CLI" } }))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status().as_u16(), 201);
    let body: Value = created.json().await.expect("json");
    let deal = num_id(body["id"].as_str().expect("id"));
    rx.wait_events("the CLI sandbox's webhook", 1, |e| e["objectId"] == deal)
        .await;
    for hit in rx.hits() {
        assert_signed(&hit, hubspot["webhook_secret"].as_str().expect("secret"));
        assert!(hit
            .events()
            .iter()
            .all(|e| e["portalId"] == hubspot["portal_id"]));
    }

    // SIGTERM stops it cleanly, and nothing more was printed on stdout.
    let pid = child.id().expect("running");
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(term.success());
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("status");
    let mut rest = String::new();
    stdout
        .read_to_string(&mut rest)
        .await
        .expect("rest of stdout");
    assert_eq!(rest, "", "stdout has exactly one line");
    assert_eq!(status.code(), Some(0), "clean exit on SIGTERM");
}

#[tokio::test]
async fn cli_sandbox_refuses_a_portal_listed_twice() {
    let (code, stdout, stderr) =
        run_to_end(&["sandbox", "--listen", "127.0.0.1:0", "--portals", "a,a"]).await;
    assert_eq!(code, Some(78), "EX_CONFIG; stderr: {stderr}");
    assert_eq!(stdout, "", "no startup line on failure");
    assert!(
        stderr.contains("portal a is listed twice"),
        "a clear message: {stderr}"
    );
}

#[tokio::test]
async fn cli_sandbox_refuses_bad_webhook_targets() {
    // Malformed values are usage errors (clap: exit 2) naming the expected form.
    for (arg, says) in [
        ("nonsense", "expected PORTAL=URL"),
        ("hubspot=not a url", "is not a URL"),
        ("hubspot=ftp://127.0.0.1/x", "must be an http or https URL"),
    ] {
        let (code, stdout, stderr) = run_to_end(&[
            "sandbox",
            "--listen",
            "127.0.0.1:0",
            "--webhook-target",
            arg,
        ])
        .await;
        assert_eq!(code, Some(2), "--webhook-target {arg}: {stderr}");
        assert_eq!(stdout, "");
        assert!(stderr.contains("--webhook-target"), "{stderr}");
        assert!(stderr.contains(says), "--webhook-target {arg}: {stderr}");
    }
    // A well-formed target for a portal that is not served is a configuration error.
    let (code, stdout, stderr) = run_to_end(&[
        "sandbox",
        "--listen",
        "127.0.0.1:0",
        "--webhook-target",
        "nobody=http://127.0.0.1:9/hook",
    ])
    .await;
    assert_eq!(code, Some(78), "{stderr}");
    assert_eq!(stdout, "");
    assert!(stderr.contains("nobody"), "{stderr}");
}
