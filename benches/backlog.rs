//! `cargo bench --bench backlog`: 10,000 linked deals, one change each on a random side,
//! synced through polling against the sandbox with HubSpot's default rate limit (100 requests
//! per 10 s per portal, search 4/s).
//!
//! Reports total API calls made by the daemon against the batched minimum, the drain time
//! against the shortest drain any poller could achieve under the same limits (see
//! [`min_drain`]), and 429s received.
//! The minimum counts, per portal: one search page per 200 modified deals (each change and
//! each of our writes is a modification the poller must see once), one batch read per 100
//! jobs on each side, and one batch update per 100 writes.
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
    let n = support::size(N, 1_000);
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
        // One change per deal, on a random side.
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut hs_changes = Vec::new();
        let mut pa_changes = Vec::new();
        for (i, (p, h)) in pairs.iter().enumerate() {
            let mut props = Map::new();
            props.insert("dealname".into(), json!(format!("Deal {i} changed")));
            if rng.random_bool(0.5) { pa_changes.push((p.clone(), props)) } else { hs_changes.push((h.clone(), props)) }
        }
        let (np, nh) = (pa_changes.len(), hs_changes.len());
        tokio::join!(pa.batch_update("deals", &pa_changes), hs.batch_update("deals", &hs_changes));
        let before_hs = counters(&base, "hubspot").await;
        let before_pa = counters(&base, "partner-a").await;
        // Let the setup's rate windows empty (a smoke run's setup makes only a few calls).
        tokio::time::sleep(support::duration(Duration::from_secs(10), Duration::from_secs(1))).await;
        let total = |c: &Value| c["total"].as_u64().unwrap();
        let (hs0, pa0) = (total(&counters(&base, "hubspot").await), total(&counters(&base, "partner-a").await));
        let _ = (before_hs, before_pa);

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
        // Drained when every deal agrees on both sides and the queue is empty.
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (depth, _) = d.store.call(|c| store::queue_stats(c)).await.unwrap();
            let synced: i64 = d
                .store
                .call(|c| Ok(c.query_row("SELECT COUNT(*) FROM shadows WHERE value LIKE '% changed'", [], |r| r.get(0))?))
                .await
                .unwrap();
            if std::env::var_os("BACKLOG_TRACE").is_some() {
                let (a, b) = (counters(&base, "hubspot").await, counters(&base, "partner-a").await);
                eprintln!("{:6.1}s depth {depth} synced {synced} hs {} pa {}", start.elapsed().as_secs_f64(), a["endpoints"], b["endpoints"]);
            }
            if depth == 0 && synced as usize == n {
                break;
            }
            if start.elapsed() > Duration::from_secs(1800) {
                panic!("backlog did not drain in 30 minutes: {synced}/{n}");
            }
        }
        let drain_s = start.elapsed().as_secs_f64();
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
            "http_429": ch["http_429"].as_u64().unwrap() + cp["http_429"].as_u64().unwrap(),
            "changes": n,
        }))
    });
    println!("{line}");
}
