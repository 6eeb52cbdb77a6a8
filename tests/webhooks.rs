//! The webhook path end to end against the sandbox over loopback: signed deliveries carry a
//! change to the other side without polling; tampered, expired, unsigned, malformed, oversized
//! and misaddressed deliveries are refused without touching the inbox or the queue; duplicate
//! event ids are dropped; echoes of our own writes queue nothing; dropped and reordered
//! webhooks (sandbox faults) are healed. An event accepted just before a SIGKILL is still
//! processed after the restart: tests/crash.rs, on the real `dealsync run` process.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use dealsync::crm::RetryPolicy;
use dealsync::daemon::{DaemonHandle, DaemonParts, PortalConn, WebhookParts};
use dealsync::engine::{FieldKind, FieldSpec, Settings, StageMap};
use dealsync::ingest::webhook::{self, Listener, WebhookPortal};
use dealsync::sandbox::SandboxHandle;
use dealsync::signature;
use dealsync::store::{self, Side, Store};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

struct World {
    sb: SandboxHandle,
    hs: common::Portal,
    pa: common::Portal,
    dir: tempfile::TempDir,
}

fn fields() -> Vec<FieldSpec> {
    vec![FieldSpec::both_ways(
        "dealname",
        "dealname",
        "dealname",
        FieldKind::Text,
    )]
}

impl World {
    async fn new() -> World {
        let sb = common::unlimited_sandbox().await;
        let hs = common::portal(&sb, "hubspot");
        let pa = common::portal(&sb, "partner-a");
        World {
            hs,
            pa,
            sb,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn db(&self) -> std::path::PathBuf {
        self.dir.path().join("dealsync.db")
    }

    fn conn(&self, p: &common::Portal) -> PortalConn {
        PortalConn {
            name: p.info.name.clone(),
            base_url: self.sb.base_url.clone(),
            token: p.info.token.clone(),
            rate_limit_per_10s: 100,
            search_per_s: 5,
            api: Default::default(),
            oauth: None,
        }
    }

    fn secrets(&self) -> HashMap<String, String> {
        [&self.hs, &self.pa]
            .iter()
            .map(|p| (p.info.name.clone(), p.info.webhook_secret.clone()))
            .collect()
    }

    fn parts(&self, poll_interval: Duration) -> DaemonParts {
        DaemonParts {
            store_path: self.db(),
            hubspot: self.conn(&self.hs),
            partners: vec![self.conn(&self.pa)],
            settings: Settings {
                fields: fields(),
                stage_maps: HashMap::from([("partner-a".to_owned(), StageMap::default())]),
                batch_size: 100,
                workers: 2,
                max_attempts: 6,
                retry_base: Duration::from_millis(50),
                retry_max: Duration::from_millis(500),
                dead_letter_path: self.dir.path().join("dead-letters.jsonl"),
                mass_deletion: Default::default(),
                messages: Default::default(),
                closed_stages: Default::default(),
                registration: Default::default(),
                notify: Default::default(),
            },
            poll_interval,
            poll_overlap: Duration::from_secs(5),
            sweep_interval: Duration::from_secs(3600),
            retry: RetryPolicy {
                max_retries: 3,
                min_delay: Duration::from_millis(20),
                max_delay: Duration::from_millis(200),
                timeout: Duration::from_secs(5),
            },
            drain: Duration::from_secs(10),
            webhooks: Some(WebhookParts {
                listen: "127.0.0.1:0".parse().unwrap(),
                public_url: None,
                max_body: webhook::DEFAULT_MAX_BODY,
                secrets: self.secrets(),
                app: Default::default(),
                healthy_poll_interval: poll_interval,
                quiet_after: Duration::from_secs(600),
            }),
        }
    }

    /// Points both portals' webhooks at the listener, with fast sandbox retries.
    async fn target(&self, addr: SocketAddr) {
        for p in [&self.hs, &self.pa] {
            let a = p
                .control(
                    reqwest::Method::PUT,
                    "/webhooks",
                    Some(json!({
                        "target_url": format!("http://{addr}/webhooks/{}", p.info.name),
                        "retry_base_ms": 20,
                    })),
                )
                .await;
            assert_eq!(a.status, 200, "webhook settings: {}", a.text);
        }
    }

    /// The listener alone (no daemon), for partner-a's webhooks.
    async fn partner_listener(
        &self,
        store: &Store,
        cancel: &CancellationToken,
    ) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let portal = WebhookPortal {
            name: "partner-a".into(),
            side: Side::Partner,
            secret: self.pa.info.webhook_secret.clone(),
        };
        webhook::serve(
            Listener::new(store.clone(), vec![portal], fields()),
            "127.0.0.1:0".parse().unwrap(),
            cancel.clone(),
        )
        .await
        .expect("listener")
    }

    /// Search stops seeing changes for ten minutes: polling is out of the picture.
    async fn hide_from_search(&self) {
        for p in [&self.hs, &self.pa] {
            p.set_faults(json!({"search_lag_ms": 600_000})).await;
        }
    }

    async fn linked_pair(&self, store: &Store, name: &str) -> (String, String, i64) {
        let p = self.pa.create_deal(json!({ "dealname": name })).await;
        let h = self.hs.create_deal(json!({ "dealname": name })).await;
        let (p2, h2, n) = (p.clone(), h.clone(), name.to_owned());
        let link = store
            .call(move |c| {
                let l = store::insert_link(c, "partner-a", &p2, &h2, "channel")?;
                c.execute(
                    "INSERT INTO shadows (link_id, field, value, updated_at) VALUES (?1, 'dealname', ?2, 0)",
                    rusqlite::params![l.id, n],
                )?;
                Ok(l)
            })
            .await
            .expect("link");
        (p, h, link.id)
    }
}

async fn dealname(p: &common::Portal, id: &str) -> Option<String> {
    let a = p
        .get(&format!("/crm/v3/objects/deals/{id}?properties=dealname"))
        .await;
    (a.status == 200)
        .then(|| a.body["properties"]["dealname"].as_str().map(str::to_owned))
        .flatten()
}

async fn wait_name(p: &common::Portal, id: &str, want: &str) {
    common::eventually(
        &format!("dealname of {id} in {} becomes {want}", p.info.name),
        WAIT,
        || async { (dealname(p, id).await.as_deref() == Some(want)).then_some(()) },
    )
    .await
}

async fn count(store: &Store, sql: &'static str) -> i64 {
    store
        .call(move |c| Ok(c.query_row(sql, [], |r| r.get(0))?))
        .await
        .expect("count")
}

/// A hand-made delivery to the listener, signed (or not) as the test says.
struct Delivery {
    url: String,
    body: Vec<u8>,
    timestamp: i64,
    signature: Option<String>,
}

impl Delivery {
    fn signed(addr: SocketAddr, portal: &str, secret: &str, body: Vec<u8>) -> Delivery {
        let url = format!("http://{addr}/webhooks/{portal}");
        let timestamp = store::now_ms();
        let signature = Some(signature::sign_v3(secret, "POST", &url, &body, timestamp));
        Delivery {
            url,
            body,
            timestamp,
            signature,
        }
    }

    async fn send(&self) -> (u16, String) {
        let mut rb = reqwest::Client::new()
            .post(&self.url)
            .header("content-type", "application/json")
            .header("X-HubSpot-Request-Timestamp", self.timestamp.to_string())
            .body(self.body.clone());
        if let Some(s) = &self.signature {
            rb = rb.header("X-HubSpot-Signature-v3", s);
        }
        let r = rb.send().await.expect("deliver");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }
}

fn events(deal: &str, ids: &[u64], value: &str) -> Vec<u8> {
    let v: Vec<Value> = ids
        .iter()
        .map(|id| {
            json!({
                "eventId": id, "subscriptionId": 1, "portalId": 1, "appId": 1,
                "occurredAt": store::now_ms(), "subscriptionType": "deal.propertyChange",
                "attemptNumber": 0, "objectId": deal.parse::<u64>().unwrap(),
                "propertyName": "dealname", "propertyValue": value, "changeSource": "CRM_UI"
            })
        })
        .collect();
    serde_json::to_vec(&v).unwrap()
}

#[tokio::test]
async fn a_signed_webhook_carries_a_change_without_polling_and_its_echo_queues_nothing() {
    let w = World::new().await;
    w.hide_from_search().await;
    let d = DaemonHandle::start(w.parts(Duration::from_secs(3600)))
        .await
        .expect("daemon");
    let addr = d.webhook_addr.expect("listener bound");
    let (p, h, _) = w.linked_pair(&d.store, "Webhook deal").await;
    w.target(addr).await;
    let writes_before = w.hs.counters().await["writes"].as_u64().unwrap();
    w.pa.patch(
        &format!("/crm/v3/objects/deals/{p}"),
        json!({"properties": {"dealname": "Renamed by partner"}}),
    )
    .await;
    wait_name(&w.hs, &h, "Renamed by partner").await;
    // Our write to HubSpot comes back as a webhook too: recognised as an echo, no job.
    common::eventually("the echo of our write is in the inbox", WAIT, || async {
        (count(
            &d.store,
            "SELECT COUNT(*) FROM webhook_events WHERE portal = 'hubspot' AND outcome = 'echo'",
        )
        .await
            >= 1)
            .then_some(())
    })
    .await;
    assert_eq!(
        count(&d.store, "SELECT COUNT(*) FROM jobs").await,
        0,
        "no job left over"
    );
    let hist = count(&d.store, "SELECT COUNT(*) FROM job_history").await;
    assert_eq!(hist, 1, "exactly one job ran: the partner's change");
    assert_eq!(
        w.hs.counters().await["writes"].as_u64().unwrap() - writes_before,
        1,
        "one write to HubSpot"
    );

    // /metrics on the same listener parses as Prometheus text and counts what happened.
    let resp = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let samples = parse_prometheus(&resp.text().await.unwrap());
    assert_eq!(samples["dealsync_jobs_total{outcome=\"synced\"}"], 1.0);
    assert_eq!(samples["dealsync_propagation_seconds_count"], 1.0);
    assert_eq!(
        samples["dealsync_propagation_seconds_bucket{le=\"+Inf\"}"],
        1.0
    );
    assert!(samples["dealsync_api_calls_total{portal=\"hubspot\"}"] >= 2.0);
    assert_eq!(
        samples["dealsync_rate_limited_total{portal=\"partner-a\"}"],
        0.0
    );
    assert_eq!(samples["dealsync_queue_depth"], 0.0);
    assert_eq!(samples["dealsync_notifications{state=\"dead\"}"], 0.0);
    assert_eq!(samples["dealsync_dead_letters_total"], 0.0);
    // /readyz: the store answers and both portals' polls succeed (search is only lagging).
    common::eventually("readyz", WAIT, || async {
        let r = reqwest::get(format!("http://{addr}/readyz")).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    d.shutdown().await;
}

/// Parses Prometheus' text format strictly enough to catch malformed output: every sample
/// belongs to a family declared by `# HELP` and `# TYPE` lines before it, names and labels
/// are well formed, values are numbers, and histogram buckets never decrease.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut declared: HashMap<String, String> = HashMap::new();
    let mut helped = std::collections::HashSet::new();
    let mut samples = HashMap::new();
    let mut last_bucket: Option<(String, f64)> = None;
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.insert(rest.split(' ').next().unwrap().to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (n, t) = (it.next().unwrap(), it.next().unwrap());
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                "{line}"
            );
            assert!(helped.contains(n), "TYPE before HELP: {line}");
            declared.insert(n.to_owned(), t.to_owned());
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        let name = series.split('{').next().unwrap();
        assert!(name_ok(name), "metric name {name}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                for pair in labels[1..labels.len() - 1].split("\",") {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    assert!(name_ok(k), "label {k}");
                    assert!(v.starts_with('"'), "{line}");
                }
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suf| {
                name.strip_suffix(suf)
                    .filter(|f| declared.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(
            declared.contains_key(family),
            "undeclared family for {line}"
        );
        if name.ends_with("_bucket") {
            if let Some((f, prev)) = &last_bucket {
                if f == family {
                    assert!(value >= *prev, "buckets decrease at {line}");
                }
            }
            last_bucket = Some((family.to_owned(), value));
        }
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "duplicate {series}"
        );
    }
    samples
}

#[tokio::test]
async fn bad_deliveries_are_refused_and_touch_nothing() {
    let w = World::new().await;
    let d = DaemonHandle::start(w.parts(Duration::from_secs(3600)))
        .await
        .expect("daemon");
    let addr = d.webhook_addr.expect("listener bound");
    let (p, _, _) = w.linked_pair(&d.store, "Guarded").await;
    let secret = w.pa.info.webhook_secret.clone();
    let body = events(&p, &[1], "Forged");

    // Tampered: signed over one body, another sent.
    let mut tampered = Delivery::signed(addr, "partner-a", &secret, body.clone());
    tampered.body = events(&p, &[1], "Forged differently");
    let (s, t) = tampered.send().await;
    assert_eq!(s, 401, "{t}");
    assert!(t.contains("signature does not match"), "{t}");

    // Signed with the other portal's secret.
    let wrong = Delivery::signed(addr, "partner-a", &w.hs.info.webhook_secret, body.clone());
    assert_eq!(wrong.send().await.0, 401);

    // Expired: correctly signed six minutes ago.
    let mut old = Delivery::signed(addr, "partner-a", &secret, body.clone());
    old.timestamp -= 6 * 60 * 1000;
    old.signature = Some(signature::sign_v3(
        &secret,
        "POST",
        &old.url,
        &old.body,
        old.timestamp,
    ));
    let (s, t) = old.send().await;
    assert_eq!(s, 401, "{t}");
    assert!(t.contains("5-minute window"), "{t}");

    // Unsigned.
    let mut unsigned = Delivery::signed(addr, "partner-a", &secret, body.clone());
    unsigned.signature = None;
    let (s, t) = unsigned.send().await;
    assert_eq!(s, 401, "{t}");
    assert!(t.contains("missing"), "{t}");

    // Malformed JSON and the wrong shape, correctly signed.
    for bad in [
        b"[{\"eventId\": 1,".to_vec(),
        b"{\"eventId\": 1}".to_vec(),
        b"[{\"subscriptionType\": \"deal.creation\"}]".to_vec(),
    ] {
        let (s, t) = Delivery::signed(addr, "partner-a", &secret, bad)
            .send()
            .await;
        assert_eq!(s, 400, "{t}");
    }

    // Oversized.
    let huge = vec![b' '; webhook::DEFAULT_MAX_BODY + 1];
    let (s, _) = Delivery::signed(addr, "partner-a", &secret, huge)
        .send()
        .await;
    assert_eq!(s, 413);

    // A portal the listener does not serve.
    let (s, t) = Delivery::signed(addr, "partner-z", &secret, body.clone())
        .send()
        .await;
    assert_eq!(s, 404, "{t}");

    assert_eq!(
        count(&d.store, "SELECT COUNT(*) FROM webhook_events").await,
        0
    );
    assert_eq!(count(&d.store, "SELECT COUNT(*) FROM jobs").await, 0);

    // The same delivery, properly signed, is accepted.
    let (s, t) = Delivery::signed(addr, "partner-a", &secret, body)
        .send()
        .await;
    assert_eq!(s, 204, "{t}");
    assert_eq!(
        count(&d.store, "SELECT COUNT(*) FROM webhook_events").await,
        1
    );
    // /healthz answers on the same address.
    let h: Value = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .expect("healthz")
        .json()
        .await
        .expect("json");
    assert_eq!(h["status"], "ok");
    d.shutdown().await;
}

#[tokio::test]
async fn duplicate_event_ids_are_dropped() {
    let w = World::new().await;
    let store = Store::open(&w.db()).await.expect("store");
    let cancel = CancellationToken::new();
    let (addr, task) = w.partner_listener(&store, &cancel).await;
    let (p, _, _) = w.linked_pair(&store, "Dup").await;
    let secret = w.pa.info.webhook_secret.clone();
    let first = Delivery::signed(addr, "partner-a", &secret, events(&p, &[7, 8], "A"));
    assert_eq!(first.send().await.0, 204);
    // HubSpot's retry of the same events, and a batch overlapping it.
    assert_eq!(first.send().await.0, 204);
    let overlap = Delivery::signed(addr, "partner-a", &secret, events(&p, &[8, 9], "A"));
    assert_eq!(overlap.send().await.0, 204);
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM webhook_events").await,
        3,
        "events 7, 8 and 9 once each"
    );
    assert_eq!(
        count(
            &store,
            "SELECT webhook_events FROM portal_health WHERE portal = 'partner-a'"
        )
        .await,
        3
    );
    // All of them are about one deal: one job.
    assert_eq!(count(&store, "SELECT COUNT(*) FROM jobs").await, 1);
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn dropped_webhooks_are_healed_by_polling_and_reordered_ones_are_harmless() {
    let w = World::new().await;
    // Every partner webhook is dropped; HubSpot's are shuffled within each batch.
    w.pa.set_faults(json!({"webhook_drop": 1.0})).await;
    w.hs.set_faults(json!({"webhook_reorder": 1.0})).await;
    let d = DaemonHandle::start(w.parts(Duration::from_millis(300)))
        .await
        .expect("daemon");
    let addr = d.webhook_addr.expect("listener bound");
    w.target(addr).await;
    let mut pairs = Vec::new();
    for i in 0..5 {
        pairs.push(w.linked_pair(&d.store, &format!("Deal {i}")).await);
    }
    for (i, (p, h, _)) in pairs.iter().enumerate() {
        w.pa.patch(
            &format!("/crm/v3/objects/deals/{p}"),
            json!({"properties": {"dealname": format!("Partner {i}")}}),
        )
        .await;
        // Several HubSpot edits in a row: whatever order their events arrive in, the last
        // value wins because jobs read current state.
        for v in 1..=3 {
            w.hs.patch(
                &format!("/crm/v3/objects/deals/{h}"),
                json!({"properties": {"amount": format!("{v}")}}),
            )
            .await;
        }
    }
    for (i, (_, h, _)) in pairs.iter().enumerate() {
        wait_name(&w.hs, h, &format!("Partner {i}")).await;
    }
    let dropped =
        w.pa.control(reqwest::Method::GET, "/webhooks/deliveries", None)
            .await;
    assert!(
        dropped.body["stats"]["events_dropped"].as_u64() >= Some(5),
        "{}",
        dropped.text
    );
    assert_eq!(
        count(
            &d.store,
            "SELECT COUNT(*) FROM webhook_events WHERE portal = 'partner-a'"
        )
        .await,
        0,
        "no partner webhook arrived: polling carried every partner change"
    );
    d.shutdown().await;
}

/// Polling only, with `[metrics] listen`: the listener serves health and metrics and takes no
/// webhooks.
#[tokio::test]
async fn without_webhooks_the_listener_serves_health_and_metrics_only() {
    let w = World::new().await;
    let mut parts = w.parts(Duration::from_millis(200));
    if let Some(l) = parts.webhooks.as_mut() {
        l.secrets.clear();
    }
    let d = DaemonHandle::start(parts).await.unwrap();
    let addr = d.webhook_addr.unwrap();
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let samples = parse_prometheus(&metrics.text().await.unwrap());
    assert_eq!(samples["dealsync_queue_depth"], 0.0);
    common::eventually("readyz once both portals were polled", WAIT, || async {
        let r = reqwest::get(format!("http://{addr}/readyz")).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    let posted = reqwest::Client::new()
        .post(format!("http://{addr}/webhooks/hubspot"))
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 404, "no portal takes webhooks here");
    d.shutdown().await;
}
