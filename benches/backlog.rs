//! `cargo bench --bench backlog`: 10,000 linked deals, one change each on a random side,
//! synced through polling against the sandbox with HubSpot's default rate limit (100 requests
//! per 10 s per portal, search 5/s per account). `BACKLOG_CHANGES=100000` runs the large case.
//!
//! **Drained** = the moment the last change is visible on the portal it did not happen on,
//! sampled every 25 ms from the portals themselves (the sandbox's `values` control, which
//! spends no API budget), not from dealsync's store. `last_write_s` cross-checks it with the
//! sandbox's own write time of that last value.
//!
//! **Minimum calls**, per portal, for what each change strictly needs under `both` +
//! `latest_wins` (HUBSPOT-API.md §0 for the caps):
//! - seeing it: one search page per 200 modified deals — each change, and each of our writes,
//!   is a modification that portal's poller cannot filter out before it has read it;
//! - deciding it: a read of *both* sides' current values with `propertiesWithHistory`, since
//!   `latest_wins` compares per-property change times and only the history carries them, at
//!   HubSpot's cap of 50 inputs per history read — the search answer alone is not enough (the
//!   index lags, and it carries no per-property times);
//! - writing it: one batch update per 100 writes on the other portal.
//!
//! **Minimum drain**: the same calls scheduled ideally under the limits (see [`min_drain`]).
//! Last line: `{"api_calls":…,"min_api_calls":…,"drain_s":…,"min_drain_s":…,"http_429":…}`.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dealsync::crm::{Budget, Client, RetryPolicy};
use dealsync::daemon::{DaemonHandle, DaemonParts, PortalConn};
use dealsync::engine::{FieldKind, FieldSpec, Settings, StageMap};
use dealsync::rules::{ConflictPolicy, Direction, Rule};
use dealsync::sandbox::{self, SandboxConfig};
use dealsync::store::{self};
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

const N: usize = 10_000;

/// How often the watcher samples the other portals (the bound: ≤ 50 ms).
const SAMPLE: Duration = Duration::from_millis(25);

/// The number of changes: `BACKLOG_CHANGES` if set (the recorded large run uses 100,000),
/// else 1,000 under `BENCH_SMOKE`, else `N`.
fn changes() -> usize {
    match std::env::var("BACKLOG_CHANGES") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("BACKLOG_CHANGES={v} is not a number of changes")),
        Err(_) => support::size(N, 1_000),
    }
}

/// Watches the portals, not the store: a change counts as drained when its value is visible
/// on the portal it did not happen on. Each sample asks the sandbox's fault- and limit-exempt
/// `values` control for `dealname`s written since shortly before the previous sample (the
/// margin covers a write stamped before a sample but applied after it), so it costs the
/// daemon's budget nothing and the portals' locks only a scan.
struct Drain {
    /// Per portal (0 = partner, 1 = HubSpot): deal id → change index still to arrive there.
    pending: [HashMap<String, usize>; 2],
    since: i64,
    /// When the sample that saw the last value was answered.
    seen_at: Instant,
    /// The sandbox's write time of the last value to arrive (ms since the epoch).
    last_ts: i64,
}

impl Drain {
    fn new(pairs: &[(String, String)], pa_side: &[bool]) -> Self {
        let mut pending = [HashMap::new(), HashMap::new()];
        for (i, ((p, h), on_partner)) in pairs.iter().zip(pa_side).enumerate() {
            if *on_partner {
                pending[1].insert(h.clone(), i);
            } else {
                pending[0].insert(p.clone(), i);
            }
        }
        Drain {
            pending,
            since: store::now_ms() - 1_000,
            seen_at: Instant::now(),
            last_ts: 0,
        }
    }

    fn pending(&self) -> usize {
        self.pending[0].len() + self.pending[1].len()
    }

    /// One sample of both portals; true once every change is visible on its other side.
    async fn sample(&mut self, base: &str) -> bool {
        let asked = store::now_ms();
        for (side, portal) in [(0, "partner-a"), (1, "hubspot")] {
            if self.pending[side].is_empty() {
                continue;
            }
            let url = format!(
                "{base}/_sandbox/portals/{portal}/values/deals/dealname?since={}",
                self.since
            );
            let v: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
            for e in v["values"].as_array().unwrap() {
                let (id, value) = (e["id"].as_str().unwrap(), e["value"].as_str().unwrap());
                if let Some(i) = self.pending[side].get(id).copied() {
                    if value == format!("Deal {i} changed") {
                        self.pending[side].remove(id);
                        self.last_ts = self.last_ts.max(e["ts"].as_i64().unwrap());
                    }
                }
            }
        }
        self.since = asked - 1_000;
        self.seen_at = Instant::now();
        self.pending() == 0
    }
}

/// Inputs per batch read with `propertiesWithHistory` (HubSpot's cap, HUBSPOT-API.md §0).
const HISTORY_READ: usize = dealsync::crm::HISTORY_BATCH;

fn div(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}

async fn counters(base: &str, portal: &str) -> Value {
    reqwest::get(format!("{base}/_sandbox/portals/{portal}/counters"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The shortest possible drain under HubSpot's limits, by an idealised schedule with zero
/// latency: each portal's changes are found by search pages of 200 at exactly 5 pages/s
/// (HubSpot: 5 searches/s per account); every 50 jobs cost one batch read (with histories:
/// HubSpot's cap) on each portal the moment their page arrives, every 100 one batch update on
/// the other portal; each portal's calls then go out as early as its rolling limit of 100 per
/// 10 s allows (greedy is optimal for a rolling window). The drain ends with the last call. Dropping the read-before-write ordering only makes this bound lower.
fn min_drain(changes_partner: usize, changes_hubspot: usize) -> f64 {
    // Ready times of the ordinary calls, per portal (0 = partner, 1 = HubSpot).
    let mut ready: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for (side, n) in [(0usize, changes_partner), (1, changes_hubspot)] {
        for page in 0..div(n, 200) {
            let t = (page / 5) as f64;
            let jobs = 200.min(n - page * 200);
            // Reads ask for property histories (latest_wins needs them), which HubSpot caps
            // at 50 inputs a call; writes take 100.
            for _ in 0..div(jobs, HISTORY_READ) {
                ready[0].push(t); // read, partner
                ready[1].push(t); // read, HubSpot
            }
            for _ in 0..div(jobs, 100) {
                ready[1 - side].push(t); // write, the other side
            }
        }
    }
    let mut last: f64 = 0.0;
    for mut calls in ready {
        calls.sort_by(f64::total_cmp);
        let mut at: Vec<f64> = Vec::with_capacity(calls.len());
        for (i, r) in calls.iter().enumerate() {
            let t = if i >= 100 {
                r.max(at[i - 100] + 10.0)
            } else {
                *r
            };
            at.push(t);
        }
        last = last.max(at.last().copied().unwrap_or(0.0));
    }
    last
}

fn main() {
    if std::env::var_os("BACKLOG_TRACE").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter("dealsync::ingest=trace")
            .with_writer(std::io::stderr)
            .init();
    }
    // BENCH_SMOKE (CI): 1,000 changes and a 4 s overlap instead of 60 s, same code path.
    let n = changes();
    let overlap = support::duration(Duration::from_secs(60), Duration::from_secs(4));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let line = rt.block_on(async {
        let sb = sandbox::start(SandboxConfig { seed: Some(1), ..SandboxConfig::default() }).await.unwrap();
        let base = sb.base_url.clone();
        let conn = |name: &str| {
            let p = sb.portal(name);
            PortalConn { name: name.into(), base_url: base.clone(), token: p.token.clone(), rate_limit_per_10s: 100, search_per_s: 5, api: Default::default(), oauth: None }
        };
        let client = |c: &PortalConn| Client::new(&c.name, &c.base_url, &c.token, Arc::new(Budget::new(100, 4)), RetryPolicy::default()).unwrap();
        let (hs_conn, pa_conn) = (conn("hubspot"), conn("partner-a"));
        let (hs, pa) = (client(&hs_conn), client(&pa_conn));
        eprintln!("creating {n} deals on each side (rate-limited, takes a while)");
        let (hs_ids, pa_ids) = tokio::join!(support::create_deals(&hs, n), support::create_deals(&pa, n));
        let created = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        let pairs: Vec<(String, String)> = pa_ids.into_iter().zip(hs_ids).collect();
        support::link_agreed(&dir.path().join("db"), &pairs).await;
        // The creations are history, not backlog: wait until they are older than the poll
        // overlap (60 s), as for a daemon that had been running when the changes came.
        tokio::time::sleep((overlap + Duration::from_secs(1)).saturating_sub(created.elapsed())).await;
        // A daemon that had been running has polled both portals up to now: its cursors say so.
        // (Without them a fresh store's first poll reaches back one overlap from its start, and
        // at 100,000 changes — 50 s of updates under the limits, then 10 s of quiet — the
        // earliest 8% were older than that: history to the daemon, left to the sweep.)
        support::set_deal_cursors(&dir.path().join("db"), &["hubspot", "partner-a"], store::now_ms()).await;
        // One change per deal, on a random side.
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut hs_changes = Vec::new();
        let mut pa_changes = Vec::new();
        let mut pa_side = Vec::with_capacity(n);
        for (i, (p, h)) in pairs.iter().enumerate() {
            let mut props = Map::new();
            props.insert("dealname".into(), json!(format!("Deal {i} changed")));
            let on_partner = rng.random_bool(0.5);
            pa_side.push(on_partner);
            if on_partner { pa_changes.push((p.clone(), props)) } else { hs_changes.push((h.clone(), props)) }
        }
        let (np, nh) = (pa_changes.len(), hs_changes.len());
        tokio::join!(pa.batch_update("deals", &pa_changes), hs.batch_update("deals", &hs_changes));
        // Let the setup's rate windows empty (a smoke run's setup makes only a few calls).
        tokio::time::sleep(support::duration(Duration::from_secs(10), Duration::from_secs(1))).await;
        let total = |c: &Value| c["total"].as_u64().unwrap();
        let (hs0, pa0) = (total(&counters(&base, "hubspot").await), total(&counters(&base, "partner-a").await));

        let mut stage = StageMap::default();
        stage.to_hubspot.insert("x".into(), "x".into());
        let settings = Settings {
            fields: vec![FieldSpec {
                name: "dealname".into(),
                partner_property: "dealname".into(),
                hubspot_property: "dealname".into(),
                kind: FieldKind::Text,
                rule: Rule { direction: Direction::Both, conflict: ConflictPolicy::LatestWins, unless_blank: false },
            }],
            stage_maps: HashMap::from([("partner-a".into(), stage)]),
            batch_size: 100,
            workers: 2,
            max_attempts: 8,
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
            dead_letter_path: dir.path().join("dl.jsonl"),
            mass_deletion: Default::default(),
            messages: Default::default(),
            closed_stages: Default::default(),
            registration: Default::default(),
            notify: Default::default(),
        };
        let start = Instant::now();
        let start_ms = store::now_ms();
        // The cursor starts before the changes: the changes are the backlog.
        let d = DaemonHandle::start(DaemonParts {
            store_path: dir.path().join("db"),
            hubspot: hs_conn,
            partners: vec![pa_conn],
            settings,
            poll_interval: Duration::from_secs(2),
            poll_overlap: overlap, // the configured default (60 s) unless a smoke run
            sweep_interval: Duration::from_secs(24 * 3600),
            retry: RetryPolicy::default(),
            drain: Duration::from_secs(30),
            webhooks: None,
        })
        .await
        .unwrap();
        // Drained when the last change is visible on the other portal (see `Drain`).
        let mut watch = Drain::new(&pairs, &pa_side);
        while !watch.sample(&base).await {
            tokio::time::sleep(SAMPLE).await;
            if std::env::var_os("BACKLOG_TRACE").is_some() {
                let (a, b) = (counters(&base, "hubspot").await, counters(&base, "partner-a").await);
                eprintln!("{:6.1}s pending {} hs {} pa {}", start.elapsed().as_secs_f64(), watch.pending(), a["endpoints"], b["endpoints"]);
            }
            if start.elapsed() > Duration::from_secs(3600) {
                panic!("backlog did not drain in an hour: {} changes not visible on the other side", watch.pending());
            }
        }
        let drain_s = watch.seen_at.duration_since(start).as_secs_f64();
        // Cross-check: the sandbox's own write time of the last value, against the wall clock
        // at the start (both in ms since the epoch, same clock).
        let last_write_s = (watch.last_ts - start_ms) as f64 / 1000.0;
        let (depth, _) = d.store.call(|c| store::queue_stats(c)).await.unwrap();
        if std::env::var_os("BACKLOG_TRACE").is_some() {
            let h: Vec<(String, i64)> = d
                .store
                .call(|c| {
                    let mut st = c.prepare("SELECT outcome, COUNT(*) FROM job_history GROUP BY outcome")?;
                    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<Vec<_>, _>>()?;
                    Ok(rows)
                })
                .await
                .unwrap();
            eprintln!("job outcomes: {h:?}");
        }
        // Count the calls once the pollers have also read our own writes back (two polls
        // completed after the drain on each portal: the second one started after it).
        let drained_ms = store::now_ms();
        let mut polls: HashMap<String, (i64, u32)> = HashMap::new();
        while polls.len() < 2 || polls.values().any(|(_, n)| *n < 2) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let health: Vec<(String, i64)> = d
                .store
                .call(|c| {
                    let mut st = c.prepare("SELECT portal, last_poll_ok FROM portal_health WHERE last_poll_ok IS NOT NULL")?;
                    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<Vec<_>, _>>()?;
                    Ok(rows)
                })
                .await
                .unwrap();
            for (portal, at) in health {
                let e = polls.entry(portal).or_insert((drained_ms, 0));
                if at > e.0 {
                    *e = (at, e.1 + 1);
                }
            }
        }
        let (ch, cp) = (counters(&base, "hubspot").await, counters(&base, "partner-a").await);
        d.shutdown().await;
        eprintln!("hubspot endpoints: {}\npartner endpoints: {}", ch["endpoints"], cp["endpoints"]);
        let calls_hs = total(&ch) - hs0;
        let calls_pa = total(&cp) - pa0;
        // Per portal: searches see each change and each of our writes once; reads (with
        // history) per 50 jobs; writes per 100.
        let jobs = div(n, HISTORY_READ);
        let min_hs = div(nh + np, 200) + jobs + div(np, 100);
        let min_pa = div(np + nh, 200) + jobs + div(nh, 100);
        let min_drain_s = min_drain(np, nh);
        support::mark(json!({
            "api_calls": calls_hs + calls_pa,
            "min_api_calls": min_hs + min_pa,
            "api_calls_hubspot": calls_hs,
            "api_calls_partner": calls_pa,
            "drain_s": (drain_s * 100.0).round() / 100.0,
            "min_drain_s": min_drain_s,
            "last_write_s": (last_write_s * 100.0).round() / 100.0,
            "queue_depth_at_drain": depth,
            "sample_ms": SAMPLE.as_millis() as u64,
            "http_429": ch["http_429"].as_u64().unwrap() + cp["http_429"].as_u64().unwrap(),
            "changes": n,
        }))
    });
    println!("{line}");
}
