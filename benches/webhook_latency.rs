//! `cargo bench --bench webhook_latency`: how long a change takes to appear on the other side
//! when webhooks carry it (polling is blinded), under HubSpot's default limits.
//!
//! **Limits.** The sandbox enforces HubSpot's defaults per portal: 100 calls per rolling 10 s,
//! search 5/s, 250,000 a day (`SandboxConfig::default()`). The daemon runs on its own defaults:
//! its parts come from a minimal configuration file through `Config::daemon_parts`, so the
//! rate budget (100 per 10 s, search 5/s), 4 workers, batches of 100, the poll interval (30 s;
//! 5 min while webhooks are healthy) and the retry settings are what `dealsync run` uses.
//! Only two things are set: the synced fields (`dealname` alone) and the sweep interval (a
//! day: the sweep's cost is the footprint bench's subject, not a change's). Webhooks are
//! batched as the sandbox does by default, which copies HubSpot: at most 100 events per
//! request, at most 10 requests in flight per portal, signed v3. The changes are made as a
//! person in the CRM makes them (`X-Sandbox-Source: CRM_UI`), which spends none of the portal's
//! API limit and is left out of its request counters, as HubSpot counts UI edits against no
//! API limit; the watcher reads the sandbox's budget-free `values` control. So every counted
//! call and every 429 is the daemon's own. The `search_lag_ms` fault (10 minutes) hides the
//! changes from search, so only webhooks carry them.
//!
//! **Loads.** Linked deals (partner-a ↔ hubspot) with agreed shadows; each change sets one
//! deal's `dealname` on a random side (seeded), a different deal per change within a phase,
//! issued concurrently at Poisson times so the pace holds when a PATCH takes 50 ms:
//! - *sustained*: a mean gap of 250 ms (4 changes/s). Acting on each change alone costs
//!   1.5 calls per change per portal (below), 6 calls/s of the 10/s the budget allows: the
//!   budget allows it, Poisson peaks included. Run twice: with no added API latency (keys
//!   without suffix) and with the `latency_ms: 50` fault on every portal (`_50ms_api`).
//! - *burst*: a mean gap of 5 ms (200 changes/s) at 50 ms API latency (`_burst_50ms_api`).
//!   Acting on each change alone would need 300 calls/s per portal, 30 times the budget: the
//!   engine must batch, and its tail shows how it spends the budget. The burst starts once
//!   the sustained phase's calls have left the rolling window (a 10.5 s wait), on a full
//!   budget, so its figures do not depend on the phase before it.
//!
//! **Latency** of a change = the sandbox's write time of the value on the other side minus
//! its write time of the change itself (the PATCH answer's `updatedAt`): both stamped by the
//! sandbox on the wall clock, in whole ms, so a figure is exact to ±1 ms and no watcher period
//! or watcher read latency enters it. A watcher samples both portals' `values` control every
//! 10 ms only to learn *that* a value arrived; `observed_*` (cross-check) is the latency to the
//! sample that showed it, stamped when that answer arrived. The split at the moment the
//! listener accepted the change's webhook (`webhook_events.received_at`): `delivery_*` =
//! change → webhook accepted (sandbox dispatcher, HTTP, signature, inbox transaction),
//! `engine_*` = accepted → other side written (wake-up, claim, reads, write).
//!
//! **Strict latency** (`strict_ms`): what the calls one change strictly needs take at 50 ms
//! API latency — a read of both sides with history (sent together, so one round trip) and then
//! a batch update of the other side: the median round trip of a one-input history batch read
//! plus that of a one-input batch update, measured on the otherwise idle `partner-b` portal
//! with the same fault. Webhook delivery, the store and queueing are the rest of the budget:
//! target `p99_ms_50ms_api ≤ 1.3 × strict_ms` (`p99_over_strict_50ms_api`).
//!
//! **Minimum calls.** A change strictly needs, under `both` + `latest_wins`: a read of both
//! sides with `propertiesWithHistory` (latest_wins compares per-property change times, which
//! only the history carries; HubSpot caps such reads at 50 inputs) and one batch update of the
//! other side (100 inputs a call). The changes that can share those calls without waiting are
//! the ones HubSpot delivered together: a delivery of `k` changes from one portal strictly
//! needs `ceil(k/50)` history reads on each portal plus `ceil(k/100)` batch updates on the
//! other: `2·ceil(k/50) + ceil(k/100)` calls, 3 for a delivery of one change. The minimum of a
//! phase (`min_api_calls*`) is that sum over the deliveries the listener accepted (the
//! sandbox's delivery log joined with the inbox's event ids; a change is counted in the first
//! accepted delivery that carried it, echoes of our own writes need no call). `api_calls*` is
//! every call the daemon made in the phase (the sandbox's counters of both portals, polls and
//! user listings included). Targets, for the sustained load: `api_calls ≤ 1.2 ×
//! min_api_calls` (`calls_over_min*`), no 429 (every load). A burst lets the engine merge
//! deliveries, so it goes below that minimum; `floor_api_calls*` is the bound no schedule
//! beats, every change in full batches regardless of latency: per portal `ceil(n/50)` history
//! reads plus `ceil(m/100)` updates for the `m` changes made on the other portal
//! (`calls_over_floor*`).
//!
//! Last line: `{"p50_ms":…,"p99_ms":…,"p50_ms_50ms_api":…,"p99_ms_50ms_api":…,"strict_ms":…,
//! "p99_over_strict_50ms_api":…,"api_calls_50ms_api":…,"min_api_calls_50ms_api":…,
//! "http_429_50ms_api":…,…,"p99_ms_burst_50ms_api":…,…}`.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dealsync::config::Config;
use dealsync::crm::{Budget, Client, RetryPolicy};
use dealsync::daemon::DaemonHandle;
use dealsync::engine::{FieldKind, FieldSpec, StageMap};
use dealsync::sandbox::{SandboxConfig, SandboxHandle};
use dealsync::store;
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

/// Changes per sustained phase: 600, or 12 under `BENCH_SMOKE` (CI), same code path.
fn sustained_n() -> usize {
    support::size(600, 12)
}
/// Changes in the burst: 1,000, or 150 under `BENCH_SMOKE`.
fn burst_n() -> usize {
    support::size(1_000, 150)
}
const SUSTAINED_GAP_MS: f64 = 250.0;
const BURST_GAP_MS: f64 = 5.0;
const WATCH_EVERY: Duration = Duration::from_millis(10);
const PHASE_TIMEOUT: Duration = Duration::from_secs(300);
const SLOW_MS: u64 = 50;
const PROBES: usize = 15;
const PORTALS: [&str; 2] = ["hubspot", "partner-a"];

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// p50, p99 and max of `v` (sorted in place), rounded to 0.1 ms.
fn summary(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (
        round1(support::percentile(v, 0.5)),
        round1(support::percentile(v, 0.99)),
        round1(v.last().copied().unwrap_or(f64::NAN)),
    )
}

async fn get_json(http: &reqwest::Client, url: String) -> Value {
    let r = http.get(&url).send().await.expect("sandbox control");
    assert!(r.status().is_success(), "GET {url}: {}", r.status());
    r.json().await.expect("control json")
}

async fn put(http: &reqwest::Client, base: &str, portal: &str, rest: &str, body: Value) {
    let r = http
        .put(format!("{base}/_sandbox/portals/{portal}{rest}"))
        .json(&body)
        .send()
        .await
        .expect("sandbox control");
    let status = r.status();
    assert!(
        status.is_success(),
        "PUT {rest} on {portal}: {status} {}",
        r.text().await.unwrap_or_default()
    );
}

async fn counters(http: &reqwest::Client, base: &str, portal: &str) -> (u64, u64) {
    let v = get_json(http, format!("{base}/_sandbox/portals/{portal}/counters")).await;
    (
        v["total"].as_u64().expect("total"),
        v["http_429"].as_u64().expect("http_429"),
    )
}

fn iso_ms(v: &Value) -> i64 {
    let s = v.as_str().expect("updatedAt");
    chrono::DateTime::parse_from_rfc3339(s)
        .expect("ISO time")
        .timestamp_millis()
}

/// A change still to arrive on the other side.
struct Pending {
    value: String,
    /// The sandbox's write time of the change (ms since the epoch).
    changed_ms: i64,
}

/// Per watched portal (0 = partner, 1 = HubSpot): deal id there → (the changed deal's id, the
/// change).
type Watched = [HashMap<String, (String, Pending)>; 2];

/// One change that arrived.
struct Sample {
    /// Whether the change was made on the partner side.
    on_partner: bool,
    changed_id: String,
    changed_ms: i64,
    /// The sandbox's write time of the value on the other side.
    written_ms: i64,
    /// When the watcher's answer showing it arrived (ms since the epoch).
    seen_ms: f64,
}

struct World {
    base: String,
    http: reqwest::Client,
    tokens: HashMap<&'static str, String>,
    /// (partner deal id, HubSpot deal id) per linked deal.
    pairs: Vec<(String, String)>,
}

struct Load {
    suffix: &'static str,
    changes: usize,
    mean_gap_ms: f64,
    seed: u64,
}

/// Runs one load and returns its samples and when it started (ms since the epoch).
async fn phase(w: &Arc<World>, load: &Load, tag: &str) -> (Vec<Sample>, i64, f64) {
    let n = load.changes;
    let mut rng = rand::rngs::StdRng::seed_from_u64(load.seed);
    let mut schedule: Vec<(usize, bool, f64)> = Vec::with_capacity(n);
    let mut t = 0.0;
    for i in 0..n {
        schedule.push((i, rng.random_bool(0.5), t));
        let u: f64 = rng.random();
        t -= load.mean_gap_ms * (1.0 - u).ln();
    }
    let pending: Arc<Mutex<Watched>> = Arc::new(Mutex::new([HashMap::new(), HashMap::new()]));
    let phase_start = store::now_ms();
    let started = Instant::now();
    let generator = {
        let (w, pending, tag) = (w.clone(), pending.clone(), tag.to_owned());
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for (i, on_partner, at) in schedule {
                tokio::time::sleep_until(start + Duration::from_secs_f64(at / 1000.0)).await;
                let (w, pending) = (w.clone(), pending.clone());
                let value = format!("Deal {i} {tag}");
                set.spawn(async move {
                    let (p, h) = &w.pairs[i];
                    let (id, watch, portal, side) = if on_partner {
                        (p, h, "partner-a", 1)
                    } else {
                        (h, p, "hubspot", 0)
                    };
                    let r = w
                        .http
                        .patch(format!("{}/crm/objects/2026-09/deals/{id}", w.base))
                        .bearer_auth(&w.tokens[portal])
                        .header("x-sandbox-source", "CRM_UI")
                        .json(&json!({"properties": {"dealname": value}}))
                        .send()
                        .await
                        .expect("change");
                    let status = r.status();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    assert_eq!(status.as_u16(), 200, "PATCH deal {id}: {body}");
                    let changed_ms = iso_ms(&body["updatedAt"]);
                    pending.lock()[side]
                        .insert(watch.clone(), (id.clone(), Pending { value, changed_ms }));
                });
            }
            while let Some(r) = set.join_next().await {
                r.expect("change task");
            }
        })
    };

    let mut samples: Vec<Sample> = Vec::with_capacity(n);
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round = 0u64;
    while samples.len() < n {
        tick.tick().await;
        round += 1;
        assert!(
            started.elapsed() < PHASE_TIMEOUT,
            "phase {tag}: only {} of {n} changes arrived within {PHASE_TIMEOUT:?}",
            samples.len()
        );
        // Values written in the last 2 s, and every 100th sample all of the phase's, so a
        // value written before its change's PATCH answer came back is never missed.
        let asked = store::now_ms();
        let since = if round.is_multiple_of(100) {
            phase_start
        } else {
            (asked - 2_000).max(phase_start)
        };
        let read = |portal: &'static str| {
            let url = format!(
                "{}/_sandbox/portals/{portal}/values/deals/dealname?since={since}",
                w.base
            );
            let http = w.http.clone();
            async move {
                let v = get_json(&http, url).await;
                (v, support_wall_ms())
            }
        };
        let ((pa, pa_seen), (hs, hs_seen)) = tokio::join!(read("partner-a"), read("hubspot"));
        let mut p = pending.lock();
        for (side, v, seen) in [(0usize, pa, pa_seen), (1, hs, hs_seen)] {
            for e in v["values"].as_array().expect("values") {
                let id = e["id"].as_str().expect("id");
                let arrived = p[side]
                    .get(id)
                    .is_some_and(|(_, c)| e["value"].as_str() == Some(c.value.as_str()));
                if arrived {
                    let (changed_id, c) = p[side].remove(id).expect("pending");
                    samples.push(Sample {
                        on_partner: side == 1,
                        changed_id,
                        changed_ms: c.changed_ms,
                        written_ms: e["ts"].as_i64().expect("ts"),
                        seen_ms: seen,
                    });
                }
            }
        }
    }
    generator.await.expect("generator");
    (samples, phase_start, started.elapsed().as_secs_f64())
}

fn support_wall_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
        * 1000.0
}

/// Waits until the daemon's queue is empty and neither portal has webhooks pending or in
/// flight (the echoes of the daemon's writes included), stably for half a second.
async fn quiesce(w: &World, d: &DaemonHandle) {
    let t0 = Instant::now();
    let mut quiet_since: Option<Instant> = None;
    loop {
        let (depth, _) = d
            .store
            .call(|c| store::queue_stats(c))
            .await
            .expect("queue stats");
        let mut busy = depth > 0;
        for portal in PORTALS {
            let v = get_json(
                &w.http,
                format!("{}/_sandbox/portals/{portal}/webhooks/deliveries", w.base),
            )
            .await;
            let s = &v["stats"];
            busy |= s["pending"].as_u64() != Some(0) || s["in_flight"].as_u64() != Some(0);
        }
        if busy {
            quiet_since = None;
        } else if quiet_since.get_or_insert_with(Instant::now).elapsed()
            >= Duration::from_millis(500)
        {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the daemon did not settle"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Calls strictly needed by the changes of one phase as HubSpot delivered them (see the
/// module docs): per accepted delivery of `k` of the phase's changes, `2·ceil(k/50) +
/// ceil(k/100)`. Also returns the mean number of changes per such delivery.
async fn delivered_minimum(
    w: &World,
    d: &DaemonHandle,
    phase_start: i64,
    samples: &[Sample],
) -> (u64, f64) {
    // (portal, event id) → deal id, for the events the listener took in this phase.
    let events: HashMap<(String, String), String> = d
        .store
        .call(move |c| {
            let mut st = c.prepare(
                "SELECT portal, event_id, object_id FROM webhook_events
                 WHERE received_at >= ?1 AND object_id IS NOT NULL",
            )?;
            let rows = st
                .query_map([phase_start], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?
                .collect::<Result<HashMap<_, _>, _>>()?;
            Ok(rows)
        })
        .await
        .expect("inbox events");
    let mut min = 0u64;
    let (mut deliveries, mut carried) = (0u64, 0u64);
    for (portal, on_partner) in [("hubspot", false), ("partner-a", true)] {
        let mut changed: HashSet<&str> = samples
            .iter()
            .filter(|s| s.on_partner == on_partner)
            .map(|s| s.changed_id.as_str())
            .collect();
        let log = get_json(
            &w.http,
            format!("{}/_sandbox/portals/{portal}/webhooks/deliveries", w.base),
        )
        .await;
        for del in log["deliveries"].as_array().expect("deliveries") {
            if !del["status"]
                .as_u64()
                .is_some_and(|s| (200..300).contains(&s))
            {
                continue;
            }
            let mut k = 0u64;
            for id in del["event_ids"].as_array().into_iter().flatten() {
                let key = (
                    portal.to_owned(),
                    id.as_u64().expect("event id").to_string(),
                );
                if let Some(deal) = events.get(&key) {
                    k += u64::from(changed.remove(deal.as_str()));
                }
            }
            if k > 0 {
                min += 2 * k.div_ceil(50) + k.div_ceil(100);
                deliveries += 1;
                carried += k;
            }
        }
        assert!(
            changed.is_empty(),
            "{portal}: {} changes in no accepted delivery (log too short?)",
            changed.len()
        );
    }
    (min, carried as f64 / deliveries.max(1) as f64)
}

/// Median round trips (ms) of a one-input history batch read and a one-input batch update on
/// `partner-b`, under the same latency fault as the measured portals.
async fn strict_latency(sb: &SandboxHandle, http: &reqwest::Client, ids: &[String]) -> (f64, f64) {
    let base = &sb.base_url;
    put(
        http,
        base,
        "partner-b",
        "/faults",
        json!({"latency_ms": SLOW_MS}),
    )
    .await;
    let c = Client::new(
        "partner-b",
        base,
        &sb.portal("partner-b").token,
        Arc::new(Budget::new(100, 5)),
        RetryPolicy::default(),
    )
    .expect("client");
    let (mut reads, mut writes) = (Vec::new(), Vec::new());
    for (i, id) in ids.iter().take(PROBES).enumerate() {
        let t = Instant::now();
        c.batch_read(
            "deals",
            std::slice::from_ref(id),
            &["dealname".into()],
            true,
        )
        .await
        .expect("probe read");
        reads.push(t.elapsed().as_secs_f64() * 1000.0);
        let mut props = Map::new();
        props.insert("dealname".into(), json!(format!("Probe {i}")));
        let t = Instant::now();
        let out = c.batch_update("deals", &[(id.clone(), props)]).await;
        assert!(out.failed.is_empty(), "probe write failed");
        writes.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    reads.sort_by(f64::total_cmp);
    writes.sort_by(f64::total_cmp);
    (
        support::percentile(&reads, 0.5),
        support::percentile(&writes, 0.5),
    )
}

/// The daemon's parts from a minimal configuration file: every default as `dealsync run`
/// has it, the fields and the sweep interval set (module docs).
fn daemon_parts(sb: &SandboxHandle, dir: &std::path::Path) -> dealsync::daemon::DaemonParts {
    let text = format!(
        r#"
[store]
path = "{db}"
dead_letter_path = "{dl}"
[hubspot]
base_url = "{base}"
token_env = "HS_TOKEN"
webhook_secret_env = "HS_SECRET"
[[partners]]
name = "partner-a"
base_url = "{base}"
token_env = "PA_TOKEN"
webhook_secret_env = "PA_SECRET"
[partners.stage_map]
x = "x"
[webhooks]
listen = "127.0.0.1:0"
[sync]
sweep_interval_ms = 86400000
"#,
        db = dir.join("db").display(),
        dl = dir.join("dl.jsonl").display(),
        base = sb.base_url,
    );
    let env: HashMap<String, String> = [
        ("HS_TOKEN", sb.portal("hubspot").token.clone()),
        ("HS_SECRET", sb.portal("hubspot").webhook_secret.clone()),
        ("PA_TOKEN", sb.portal("partner-a").token.clone()),
        ("PA_SECRET", sb.portal("partner-a").webhook_secret.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let config = Config::from_toml_str(&text, &env).expect("bench configuration");
    let mut parts = dealsync::daemon::DaemonParts::from_config(&config);
    parts.settings.fields = vec![FieldSpec::both_ways(
        "dealname",
        "dealname",
        "dealname",
        FieldKind::Text,
    )];
    let mut stage = StageMap::default();
    stage.to_hubspot.insert("x".into(), "x".into());
    parts.settings.stage_maps = HashMap::from([("partner-a".into(), stage)]);
    parts
}

async fn report(
    w: &World,
    d: &DaemonHandle,
    load: &Load,
    samples: &[Sample],
    phase_start: i64,
    wall_s: f64,
    before: [(u64, u64); 2],
) -> Map<String, Value> {
    let sfx = load.suffix;
    let received: HashMap<(String, String), i64> = d
        .store
        .call(move |c| {
            let mut st = c.prepare(
                "SELECT portal, object_id, MIN(received_at) FROM webhook_events
                 WHERE outcome = 'queued' AND received_at >= ?1 GROUP BY portal, object_id",
            )?;
            let rows = st
                .query_map([phase_start], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?
                .collect::<Result<HashMap<_, _>, _>>()?;
            Ok(rows)
        })
        .await
        .expect("inbox times");
    let (mut latency, mut observed, mut delivery, mut engine) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for s in samples {
        latency.push((s.written_ms - s.changed_ms) as f64);
        observed.push(s.seen_ms - s.changed_ms as f64);
        let portal = if s.on_partner { "partner-a" } else { "hubspot" };
        if let Some(r) = received.get(&(portal.to_owned(), s.changed_id.clone())) {
            delivery.push((r - s.changed_ms) as f64);
            engine.push((s.written_ms - r) as f64);
        }
    }
    if delivery.len() != samples.len() {
        eprintln!(
            "{sfx}: {} of {} changes have no queued webhook event in the inbox",
            samples.len() - delivery.len(),
            samples.len()
        );
    }
    let (mut calls, mut rejected) = (0, 0);
    for (i, portal) in PORTALS.iter().enumerate() {
        let (total, r429) = counters(&w.http, &w.base, portal).await;
        calls += total - before[i].0;
        rejected += r429 - before[i].1;
    }
    let (min, per_delivery) = delivered_minimum(w, d, phase_start, samples).await;
    let on_pa = samples.iter().filter(|s| s.on_partner).count();
    let n = samples.len();
    let floor = (2 * n.div_ceil(50) + on_pa.div_ceil(100) + (n - on_pa).div_ceil(100)) as u64;
    let drain_s = samples.iter().map(|s| s.written_ms).max().unwrap_or(0)
        - samples.iter().map(|s| s.changed_ms).min().unwrap_or(0);
    eprintln!(
        "phase{sfx}: {wall_s:.1} s, {n} changes, {calls} calls (min {min}, floor {floor}), \
         {rejected} × 429, {per_delivery:.2} changes per delivery"
    );
    let mut m = Map::new();
    for (name, v) in [
        ("", &mut latency),
        ("observed_", &mut observed),
        ("delivery_", &mut delivery),
        ("engine_", &mut engine),
    ] {
        let (p50, p99, max) = summary(v);
        eprintln!("  {name:<9} p50 {p50:7.1} ms  p99 {p99:7.1} ms  max {max:7.1} ms");
        m.insert(format!("{name}p50_ms{sfx}"), json!(p50));
        m.insert(format!("{name}p99_ms{sfx}"), json!(p99));
        m.insert(format!("{name}max_ms{sfx}"), json!(max));
    }
    m.insert(format!("api_calls{sfx}"), json!(calls));
    m.insert(format!("min_api_calls{sfx}"), json!(min));
    m.insert(format!("floor_api_calls{sfx}"), json!(floor));
    m.insert(
        format!("api_calls_per_change{sfx}"),
        json!(round3(calls as f64 / n as f64)),
    );
    m.insert(
        format!("min_api_calls_per_change{sfx}"),
        json!(round3(min as f64 / n as f64)),
    );
    m.insert(
        format!("changes_per_delivery{sfx}"),
        json!(round3(per_delivery)),
    );
    m.insert(format!("http_429{sfx}"), json!(rejected));
    m.insert(
        format!("drain_s{sfx}"),
        json!((drain_s as f64 / 10.0).round() / 100.0),
    );
    m
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let line = rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let links = sustained_n().max(burst_n());
        // HubSpot's default limits (100 per 10 s, search 5/s, 250,000 a day), deals loaded
        // without spending them.
        let (sb, ids) = support::sandbox_with_deals(
            dir.path(),
            SandboxConfig {
                seed: Some(5),
                ..SandboxConfig::default()
            },
            links,
        )
        .await;
        let base = sb.base_url.clone();
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("http client");
        let names: Vec<String> = sb.portals.iter().map(|p| p.name.clone()).collect();
        let deals = |name: &str| ids[names.iter().position(|n| n == name).expect(name)].clone();
        let pairs: Vec<(String, String)> = deals("partner-a")
            .into_iter()
            .zip(deals("hubspot"))
            .collect();
        support::link_agreed(&dir.path().join("db"), &pairs).await;
        let blind = json!({"search_lag_ms": 600_000});
        for portal in PORTALS {
            put(&http, &base, portal, "/faults", blind.clone()).await;
        }

        let parts = daemon_parts(&sb, dir.path());
        let budget = (
            parts.hubspot.rate_limit_per_10s,
            parts.hubspot.search_per_s,
            parts.settings.workers,
            parts.settings.batch_size,
        );
        let d = DaemonHandle::start(parts).await.expect("daemon");
        let addr = d.webhook_addr.expect("listener bound");
        for portal in PORTALS {
            let target = json!({"target_url": format!("http://{addr}/webhooks/{portal}")});
            put(&http, &base, portal, "/webhooks", target).await;
        }
        let w = Arc::new(World {
            base: base.clone(),
            http: http.clone(),
            tokens: PORTALS
                .iter()
                .map(|p| (*p, sb.portal(p).token.clone()))
                .collect(),
            pairs,
        });

        let loads = [
            Load {
                suffix: "",
                changes: sustained_n(),
                mean_gap_ms: SUSTAINED_GAP_MS,
                seed: 11,
            },
            Load {
                suffix: "_50ms_api",
                changes: sustained_n(),
                mean_gap_ms: SUSTAINED_GAP_MS,
                seed: 12,
            },
            Load {
                suffix: "_burst_50ms_api",
                changes: burst_n(),
                mean_gap_ms: BURST_GAP_MS,
                seed: 13,
            },
        ];
        let mut out = Map::new();
        let mut strict = 0.0;
        for (i, load) in loads.iter().enumerate() {
            if i == 1 {
                let (read, write) = strict_latency(&sb, &http, &deals("partner-b")).await;
                strict = read + write;
                eprintln!("strict: read {read:.1} ms + write {write:.1} ms = {strict:.1} ms");
                out.insert("strict_read_ms".into(), json!(round1(read)));
                out.insert("strict_write_ms".into(), json!(round1(write)));
                out.insert("strict_ms".into(), json!(round1(strict)));
                let slow = json!({"search_lag_ms": 600_000, "latency_ms": SLOW_MS});
                for portal in PORTALS {
                    put(&http, &base, portal, "/faults", slow.clone()).await;
                }
            }
            if i == 2 {
                // The burst starts on a full budget: the sustained phase's calls (about 60
                // per portal in the last 10 s) leave the rolling window first.
                tokio::time::sleep(Duration::from_millis(10_500)).await;
            }
            let mut before = [(0, 0); 2];
            for (j, portal) in PORTALS.iter().enumerate() {
                before[j] = counters(&http, &base, portal).await;
            }
            let (samples, start, wall_s) = phase(&w, load, &format!("p{i}")).await;
            quiesce(&w, &d).await;
            out.extend(report(&w, &d, load, &samples, start, wall_s, before).await);
        }
        let dead = std::fs::read_to_string(dir.path().join("dl.jsonl")).unwrap_or_default();
        assert!(dead.is_empty(), "dead letters: {dead}");
        d.shutdown().await;

        let num = |m: &Map<String, Value>, k: &str| m[k].as_f64().unwrap_or(f64::NAN);
        let p99_over_strict = round3(num(&out, "p99_ms_50ms_api") / strict);
        out.insert("p99_over_strict_50ms_api".into(), json!(p99_over_strict));
        for sfx in ["", "_50ms_api", "_burst_50ms_api"] {
            for (name, min) in [("min", "min_api_calls"), ("floor", "floor_api_calls")] {
                let r = round3(
                    num(&out, &format!("api_calls{sfx}")) / num(&out, &format!("{min}{sfx}")),
                );
                out.insert(format!("calls_over_{name}{sfx}"), json!(r));
            }
        }
        out.insert("changes".into(), json!(sustained_n()));
        out.insert("mean_gap_ms".into(), json!(SUSTAINED_GAP_MS));
        out.insert("burst_changes".into(), json!(burst_n()));
        out.insert("burst_mean_gap_ms".into(), json!(BURST_GAP_MS));
        out.insert("workers".into(), json!(budget.2));
        out.insert("batch_size".into(), json!(budget.3));
        out.insert("rate_limit_per_10s".into(), json!(budget.0));
        out.insert("search_per_s".into(), json!(budget.1));
        support::mark(Value::Object(out))
    });
    println!("{line}");
}
