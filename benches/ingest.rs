//! `cargo bench --bench ingest`: how many webhook events per second the whole daemon accepts
//! and commits, and how fast it acknowledges a delivery, while its workers, pollers and the
//! sandbox behind them run, read and write.
//!
//! Setup: an in-process sandbox serving `hubspot` and `partner-a` with HubSpot's default
//! limits (100 calls per rolling 10 s per portal, search 5/s), each holding `links` deals
//! (2,000; loaded with the limits off, [`support::sandbox_with_deals`]); the store links them
//! with agreed shadows (`Deal i`), and then every partner deal is renamed as a person would
//! (`X-Sandbox-Source: CRM_UI`, which spends no API budget), so the daemon has real work: each
//! link's job reads both deals and writes the new name to HubSpot. The daemon is
//! `DaemonHandle::start` on the parts `dealsync run` builds from a minimal configuration: its
//! default budget, workers, batches and poll interval, the sweep off, and a `[webhooks]`
//! listener with partner-a's webhook secret. It starts polling and syncing at once, so the
//! deliveries below arrive while jobs run and write and the listener's in-flight wait
//! (`settle`) and the store's single writer are shared with the workers.
//!
//! Deliveries: 10–100 `deal.propertyChange` events each (size uniform, seeded), about random
//! linked partner deals, each with a globally unique `eventId` and a value that differs from
//! the shadow, signed with `X-HubSpot-Signature-v3` over `POST` +
//! `http://ADDR/webhooks/partner-a` + body + timestamp exactly as HubSpot signs. Every answer
//! must be 204; anything else aborts the bench. At the end the inbox must hold exactly one row
//! per event sent. Ack latency = from sending a request to having its whole answer.
//!
//! Rates are measured, never offered: `events_per_s` and `paced_events_per_s` are the inbox
//! rows the daemon committed (their `received_at`, stamped in the accepting transaction)
//! inside the phase's interval, divided by its length.
//!
//! 1. Saturation (`events_per_s`, `ack_*`): 12 concurrent senders over loopback (HubSpot's
//!    default is 10 concurrent deliveries per app), each on its own keep-alive connection,
//!    posting back to back. After a 1 s warm-up the window is 10 s. In a closed loop the ack
//!    latency is mostly queueing (about `senders / deliveries per second`).
//! 2. Paced (`paced_*`): deliveries offered open loop as a Poisson process at 2,000 events/s
//!    (`offered_paced_events_per_s`, about 36 deliveries/s) for 5 s, each on its own task: the
//!    ack latency a delivery sees at the target rate. The interval runs from the first send to
//!    the last answer.
//!
//! Beside them: the jobs the workers finished during both phases (`jobs_done`, of which
//! `jobs_synced` wrote), the API calls the daemon made and the 429s it got (sandbox counters).
//! Everything shares one process and the 2 cores: senders, listener, workers, sandbox.
//!
//! `INGEST_CLIENTS` and `INGEST_LINKS` override the senders and links (diagnostics only).
//! Targets: ack p99 < 20 ms paced at 2,000 events/s; saturated throughput reported.
//! Last line: `{"events_per_s":…,"ack_p99_ms":…,"paced_events_per_s":…,"paced_ack_p99_ms":…,…}`.

mod support;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dealsync::config::Config;
use dealsync::daemon::{DaemonHandle, DaemonParts};
use dealsync::engine::{FieldKind, FieldSpec};
use dealsync::sandbox::{PortalSpec, SandboxConfig, SandboxHandle};
use dealsync::signature;
use dealsync::store::{self, Store};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const CLIENTS: usize = 12;
const DEFAULT_LINKS: usize = 2_000;
const WARMUP: Duration = Duration::from_secs(1);
const WINDOW: Duration = Duration::from_secs(10);
/// Under `BENCH_SMOKE` (CI) the phases are shorter (warm-up 0.5 s, window 2 s, paced 1 s) and
/// there are 200 links; the code path is the same.
fn smoke_or(full: Duration, smoke_ms: u64) -> Duration {
    support::duration(full, Duration::from_millis(smoke_ms))
}
const PACED_EVENTS_PER_S: f64 = 2_000.0;
const PACED: Duration = Duration::from_secs(5);
/// The linked partner deals' ids, and partner-a's webhook secret (the sandbox's).
static DEALS: OnceLock<Vec<String>> = OnceLock::new();
static SECRET: OnceLock<String> = OnceLock::new();
const PORTAL: &str = "partner-a";

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A delivery body of `n` property-change events with fresh event ids.
fn body(rng: &mut impl Rng, next_event: &AtomicU64, n: usize) -> Vec<u8> {
    let first = next_event.fetch_add(n as u64, Ordering::Relaxed);
    let now = store::now_ms();
    let mut s = String::with_capacity(n * 330);
    s.push('[');
    for k in 0..n {
        if k > 0 {
            s.push(',');
        }
        let deals = DEALS.get().expect("deals set");
        let deal = &deals[rng.random_range(0..deals.len())];
        let value: u32 = rng.random();
        let _ = write!(
            s,
            concat!(
                r#"{{"eventId":{},"subscriptionId":2000001,"portalId":40000002,"#,
                r#""appId":1000001,"occurredAt":{},"subscriptionType":"deal.propertyChange","#,
                r#""attemptNumber":0,"objectId":{},"propertyName":"dealname","#,
                r#""propertyValue":"Bench value {}","changeSource":"CRM_UI","#,
                r#""sourceId":"userId:1"}}"#
            ),
            first + k as u64,
            now,
            deal,
            value,
        );
    }
    s.push(']');
    s.into_bytes()
}

/// Sends one delivery of 10–100 fresh events; returns its event count and when it was sent
/// and answered. Any answer but 204 aborts the bench.
async fn deliver(
    http: &reqwest::Client,
    url: &str,
    rng: &mut impl Rng,
    next_event: &AtomicU64,
) -> (u64, Instant, Instant) {
    let n = rng.random_range(10..=100);
    let b = body(rng, next_event, n);
    let ts = store::now_ms();
    let sig = signature::sign_v3(SECRET.get().expect("secret set"), "POST", url, &b, ts);
    let sent = Instant::now();
    let r = http
        .post(url)
        .header("content-type", "application/json")
        .header("X-HubSpot-Request-Timestamp", ts.to_string())
        .header("X-HubSpot-Signature-v3", sig)
        .body(b)
        .send()
        .await
        .expect("delivery");
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    let done = Instant::now();
    assert_eq!(
        status.as_u16(),
        204,
        "the listener refused a valid delivery of {n} events: {status} {text}"
    );
    (n as u64, sent, done)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What the senders saw: events accepted and ack latencies (ms) of the deliveries that were
/// sent and answered inside the window.
#[derive(Default)]
struct Sent {
    events: u64,
    acks_ms: Vec<f64>,
}

/// One closed-loop sender: posts back to back until the window ends.
async fn sender(
    url: String,
    seed: u64,
    next_event: Arc<AtomicU64>,
    window_start: Instant,
    window_end: Instant,
) -> Sent {
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .build()
        .expect("http client");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Sent::default();
    while Instant::now() < window_end {
        let (n, sent, done) = deliver(&http, &url, &mut rng, &next_event).await;
        if sent >= window_start && done <= window_end {
            out.events += n;
            out.acks_ms.push(ms(done - sent));
        }
    }
    out
}

/// Open-loop load: deliveries start as a Poisson process offering `events_per_s` (the mean
/// delivery carries 55 events), each on its own task, for `length`.
async fn paced(
    url: String,
    next_event: Arc<AtomicU64>,
    events_per_s: f64,
    length: Duration,
) -> Sent {
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let per_s = events_per_s / 55.0;
    let start = tokio::time::Instant::now();
    let mut at = 0.0;
    let mut set = tokio::task::JoinSet::new();
    loop {
        let u: f64 = rng.random();
        at += -(1.0 - u).ln() / per_s;
        if at >= length.as_secs_f64() {
            break;
        }
        tokio::time::sleep_until(start + Duration::from_secs_f64(at)).await;
        let (http, url, next_event) = (http.clone(), url.clone(), next_event.clone());
        let mut task_rng = rand::rngs::StdRng::seed_from_u64(rng.random());
        set.spawn(async move { deliver(&http, &url, &mut task_rng, &next_event).await });
    }
    let mut out = Sent::default();
    while let Some(r) = set.join_next().await {
        let (n, sent, done) = r.expect("paced delivery");
        out.events += n;
        out.acks_ms.push(ms(done - sent));
    }
    out
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Inbox rows the daemon committed with `received_at` in `[from, to]` (epoch ms).
async fn accepted(store: &Store, from: i64, to: i64) -> i64 {
    store
        .call(move |c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM webhook_events WHERE received_at BETWEEN ?1 AND ?2",
                [from, to],
                |r| r.get(0),
            )?)
        })
        .await
        .expect("inbox count")
}

async fn count(store: &Store, sql: &'static str) -> i64 {
    store
        .call(move |c| Ok(c.query_row(sql, [], |r| r.get(0))?))
        .await
        .expect("count")
}

/// Renames every partner deal as a person would (no API budget spent), 100 per call, so each
/// link's job has a write to make.
async fn rename_partner_deals(sb: &SandboxHandle, ids: &[String]) {
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client");
    let token = &sb.portal(PORTAL).token;
    for (n, chunk) in ids.chunks(100).enumerate() {
        let inputs: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(k, id)| json!({"id": id, "properties": {"dealname": format!("Renamed {}", n * 100 + k)}}))
            .collect();
        let r = http
            .post(format!(
                "{}/crm/objects/2026-09/deals/batch/update",
                sb.base_url
            ))
            .bearer_auth(token)
            .header("x-sandbox-source", "CRM_UI")
            .json(&json!({ "inputs": inputs }))
            .send()
            .await
            .expect("rename");
        assert!(r.status().is_success(), "rename: {}", r.status());
    }
}

/// The parts `dealsync run` builds from a minimal configuration: defaults but the sweep (off)
/// and a webhook listener on a free loopback port with partner-a's secret.
fn daemon_parts(sb: &SandboxHandle, dir: &std::path::Path) -> DaemonParts {
    let text = format!(
        r#"
[store]
path = "{db}"
dead_letter_path = "{dl}"
[hubspot]
base_url = "{base}"
token_env = "HS_TOKEN"
[[partners]]
name = "{PORTAL}"
base_url = "{base}"
token_env = "PA_TOKEN"
webhook_secret_env = "PA_SECRET"
[partners.stage_map]
x = "x"
[sync]
sweep_interval_ms = 86400000
[webhooks]
listen = "127.0.0.1:0"
"#,
        db = dir.join("db").display(),
        dl = dir.join("dl.jsonl").display(),
        base = sb.base_url,
    );
    let env: HashMap<String, String> = [
        ("HS_TOKEN", sb.portal("hubspot").token.clone()),
        ("PA_TOKEN", sb.portal(PORTAL).token.clone()),
        ("PA_SECRET", sb.portal(PORTAL).webhook_secret.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut parts =
        DaemonParts::from_config(&Config::from_toml_str(&text, &env).expect("bench configuration"));
    parts.settings.fields = vec![FieldSpec::both_ways(
        "dealname",
        "dealname",
        "dealname",
        FieldKind::Text,
    )];
    parts
}

/// Calls and 429s both portals answered so far.
async fn api_counters(sb: &SandboxHandle) -> (u64, u64) {
    let (mut calls, mut limited) = (0, 0);
    for portal in ["hubspot", PORTAL] {
        let v = support::counters(&sb.base_url, portal).await;
        calls += v["total"].as_u64().expect("total");
        limited += v["http_429"].as_u64().unwrap_or(0);
    }
    (calls, limited)
}

/// Closed-loop senders for the window; what they sent and saw.
async fn saturate(
    url: &str,
    clients: usize,
    next_event: &Arc<AtomicU64>,
    warmup: Duration,
    window: Duration,
) -> (Sent, Instant, Instant) {
    let window_start = Instant::now() + warmup;
    let window_end = window_start + window;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..clients {
        set.spawn(sender(
            url.to_owned(),
            100 + i as u64,
            next_event.clone(),
            window_start,
            window_end,
        ));
    }
    let mut closed = Sent::default();
    while let Some(r) = set.join_next().await {
        let s = r.expect("sender");
        closed.events += s.events;
        closed.acks_ms.extend(s.acks_ms);
    }
    (closed, window_start, window_end)
}

/// Epoch ms at `at`, given one reading of both clocks.
fn epoch_ms(at: Instant, now: Instant, now_ms: i64) -> i64 {
    if at >= now {
        now_ms + (at - now).as_millis() as i64
    } else {
        now_ms - (now - at).as_millis() as i64
    }
}

fn main() {
    let clients = env_or("INGEST_CLIENTS", CLIENTS);
    let links = env_or("INGEST_LINKS", support::size(DEFAULT_LINKS, 200));
    let (warmup, window, paced_for) = (
        smoke_or(WARMUP, 500),
        smoke_or(WINDOW, 2_000),
        smoke_or(PACED, 1_000),
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let line = rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = SandboxConfig {
            portals: vec![PortalSpec::named("hubspot"), PortalSpec::named(PORTAL)],
            seed: Some(6),
            ..SandboxConfig::default()
        };
        let (sb, mut ids) = support::sandbox_with_deals(dir.path(), config, links).await;
        let (partner, hubspot) = (ids.pop().expect("partner ids"), ids.pop().expect("hubspot ids"));
        let pairs: Vec<(String, String)> = partner.iter().cloned().zip(hubspot).collect();
        support::link_agreed(&dir.path().join("db"), &pairs).await;
        rename_partner_deals(&sb, &partner).await;
        DEALS.set(partner).expect("deals once");
        SECRET.set(sb.portal(PORTAL).webhook_secret.clone()).expect("secret once");

        let (calls_before, limited_before) = api_counters(&sb).await;
        let d = DaemonHandle::start(daemon_parts(&sb, dir.path())).await.expect("daemon");
        let url = format!("http://{}/webhooks/{PORTAL}", d.webhook_addr.expect("listener"));
        let started_ms = store::now_ms();

        let next_event = Arc::new(AtomicU64::new(1));
        let (mut closed, window_start, window_end) =
            saturate(&url, clients, &next_event, warmup, window).await;
        let (now, now_ms) = (Instant::now(), store::now_ms());
        let closed_accepted = accepted(
            &d.store,
            epoch_ms(window_start, now, now_ms),
            epoch_ms(window_end, now, now_ms),
        )
        .await;

        let paced_start = Instant::now();
        let paced_from_ms = store::now_ms();
        let mut open = paced(url, next_event.clone(), PACED_EVENTS_PER_S, paced_for).await;
        let paced_s = paced_start.elapsed().as_secs_f64();
        let paced_accepted = accepted(&d.store, paced_from_ms, store::now_ms()).await;

        let (calls_after, limited_after) = api_counters(&sb).await;
        let sent_events = next_event.load(Ordering::Relaxed) - 1;
        let inbox = count(&d.store, "SELECT COUNT(*) FROM webhook_events").await;
        let (done, synced) = d
            .store
            .call(move |c| {
                Ok(c.query_row(
                    "SELECT COUNT(*), COALESCE(SUM(outcome = 'synced'), 0) FROM job_history WHERE at >= ?1",
                    [started_ms],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
                )?)
            })
            .await
            .expect("job history");
        d.shutdown().await;
        // Every event of every delivery (all answered 204) is in the inbox, exactly once.
        assert_eq!(inbox as u64, sent_events, "inbox rows vs events sent");
        assert!(synced > 0, "no job wrote while the deliveries arrived");
        closed.acks_ms.sort_by(f64::total_cmp);
        open.acks_ms.sort_by(f64::total_cmp);
        let deliveries = closed.acks_ms.len();
        eprintln!(
            "closed loop: {clients} senders, {links} links: {deliveries} deliveries answered in the window, \
             {closed_accepted} events committed in it; paced: {} deliveries, {} events sent, \
             {paced_accepted} committed in {paced_s:.2} s; {done} jobs done ({synced} wrote)",
            open.acks_ms.len(),
            open.events,
        );
        support::mark(json!({
            "events_per_s": (closed_accepted as f64 / window.as_secs_f64()).round(),
            "deliveries_per_s": round2(deliveries as f64 / window.as_secs_f64()),
            "ack_p50_ms": round2(support::percentile(&closed.acks_ms, 0.5)),
            "ack_p99_ms": round2(support::percentile(&closed.acks_ms, 0.99)),
            "ack_max_ms": round2(closed.acks_ms.last().copied().unwrap_or(f64::NAN)),
            "paced_events_per_s": (paced_accepted as f64 / paced_s).round(),
            "offered_paced_events_per_s": PACED_EVENTS_PER_S,
            "paced_ack_p50_ms": round2(support::percentile(&open.acks_ms, 0.5)),
            "paced_ack_p99_ms": round2(support::percentile(&open.acks_ms, 0.99)),
            "paced_ack_max_ms": round2(open.acks_ms.last().copied().unwrap_or(f64::NAN)),
            "jobs_done": done,
            "jobs_synced": synced,
            "api_calls": calls_after - calls_before,
            "http_429": limited_after - limited_before,
            "clients": clients,
            "links": links,
            "window_s": window.as_secs_f64(),
        }))
    });
    println!("{line}");
}
