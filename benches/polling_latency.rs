//! `cargo bench --bench polling_latency`: how long a change takes to appear on the other side
//! when only polling carries it (no webhooks), with a 2 s poll interval.
//!
//! 200 linked deals; one change every 100 ms on a random side of a different deal; a watcher
//! batch-reads the other side every 20 ms and stamps the moment each new value is visible.
//! The sandbox itself is unthrottled so the watcher does not eat the daemon's rate budget;
//! the daemon keeps HubSpot's default budget (100 calls per 10 s, search 4/s) on its own.
//! Target: p99 ≤ interval + 1 s.
//! Last line: `{"p50_ms":…,"p99_ms":…,"interval_ms":2000,"changes":200}`.

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
use serde_json::{json, Map};

const N: usize = 200;
const INTERVAL: Duration = Duration::from_secs(2);

fn main() {
    // BENCH_SMOKE (CI): 20 changes instead of 200, same code path.
    let n = support::size(N, 20);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let line = rt.block_on(async {
        let sb = sandbox::start(SandboxConfig {
            seed: Some(3),
            rate_limit_per_10s: None,
            search_per_s: None,
            daily_limit: None,
            ..SandboxConfig::default()
        })
        .await
        .unwrap();
        let base = sb.base_url.clone();
        let conn = |name: &str| {
            let p = sb.portal(name);
            PortalConn {
                name: name.into(),
                base_url: base.clone(),
                token: p.token.clone(),
                rate_limit_per_10s: 100,
                search_per_s: 5,
                api: Default::default(),
                oauth: None,
            }
        };
        // The bench's own client: unthrottled on our side too.
        let client = |c: &PortalConn| {
            Client::new(
                &c.name,
                &c.base_url,
                &c.token,
                Arc::new(Budget::new(100_000, 100_000)),
                RetryPolicy::default(),
            )
            .unwrap()
        };
        let (hs_conn, pa_conn) = (conn("hubspot"), conn("partner-a"));
        let (hs, pa) = (client(&hs_conn), client(&pa_conn));
        let (hs_ids, pa_ids) =
            tokio::join!(support::create_deals(&hs, n), support::create_deals(&pa, n));
        let dir = tempfile::tempdir().unwrap();
        let pairs: Vec<(String, String)> = pa_ids.into_iter().zip(hs_ids).collect();
        support::link_agreed(&dir.path().join("db"), &pairs).await;
        let mut stage = StageMap::default();
        stage.to_hubspot.insert("x".into(), "x".into());
        let settings = Settings {
            fields: vec![FieldSpec {
                name: "dealname".into(),
                partner_property: "dealname".into(),
                hubspot_property: "dealname".into(),
                kind: FieldKind::Text,
                rule: Rule {
                    direction: Direction::Both,
                    conflict: ConflictPolicy::LatestWins,
                    unless_blank: false,
                },
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
        let d = DaemonHandle::start(DaemonParts {
            store_path: dir.path().join("db"),
            hubspot: hs_conn,
            partners: vec![pa_conn],
            settings,
            poll_interval: INTERVAL,
            poll_overlap: Duration::from_secs(60),
            sweep_interval: Duration::from_secs(24 * 3600),
            retry: RetryPolicy::default(),
            drain: Duration::from_secs(30),
            webhooks: None,
        })
        .await
        .unwrap();
        // The creations are in the first poll's overlap; let those no-op jobs finish first.
        let t0 = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let done: i64 = d
                .store
                .call(|c| Ok(c.query_row("SELECT COUNT(*) FROM job_history", [], |r| r.get(0))?))
                .await
                .unwrap();
            let (depth, _) = d.store.call(|c| store::queue_stats(c)).await.unwrap();
            if done as usize >= n && depth == 0 {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "initial jobs did not finish"
            );
        }

        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        // Per change: (which side to watch, deal id there, expected value, when written).
        let mut pending: Vec<(bool, String, String, Instant)> = Vec::new();
        let mut latencies: Vec<f64> = Vec::new();
        let mut next = 0usize;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let start = Instant::now();
        loop {
            tick.tick().await;
            if next < n && start.elapsed() >= Duration::from_millis(100) * next as u32 {
                let (p, h) = &pairs[next];
                let value = format!("Deal {next} v2");
                let on_partner = rng.random_bool(0.5);
                let (writer, id, watch) = if on_partner {
                    (&pa, p, (false, h.clone()))
                } else {
                    (&hs, h, (true, p.clone()))
                };
                let mut props = Map::new();
                props.insert("dealname".into(), json!(value));
                writer.update("deals", id, &props).await.expect("change");
                pending.push((watch.0, watch.1, value, Instant::now()));
                next += 1;
            }
            for watch_partner in [true, false] {
                let ids: Vec<String> = pending
                    .iter()
                    .filter(|p| p.0 == watch_partner)
                    .map(|p| p.1.clone())
                    .collect();
                if ids.is_empty() {
                    continue;
                }
                let c = if watch_partner { &pa } else { &hs };
                let now = Instant::now();
                let recs = c
                    .batch_read("deals", &ids, &["dealname".to_owned()], false)
                    .await
                    .expect("watch");
                let seen: HashMap<String, String> = recs
                    .into_iter()
                    .map(|r| {
                        (
                            r.id.clone(),
                            r.get("dealname").unwrap_or_default().to_owned(),
                        )
                    })
                    .collect();
                pending.retain(|(wp, id, value, at)| {
                    if *wp == watch_partner && seen.get(id) == Some(value) {
                        latencies.push(now.duration_since(*at).as_secs_f64() * 1000.0);
                        false
                    } else {
                        true
                    }
                });
            }
            if next == n && pending.is_empty() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "{} changes never arrived",
                pending.len()
            );
        }
        d.shutdown().await;
        latencies.sort_by(f64::total_cmp);
        support::mark(json!({
            "p50_ms": support::percentile(&latencies, 0.5).round(),
            "p99_ms": support::percentile(&latencies, 0.99).round(),
            "max_ms": latencies.last().copied().unwrap_or(0.0).round(),
            "interval_ms": INTERVAL.as_millis() as u64,
            "changes": latencies.len(),
        }))
    });
    println!("{line}");
}
