//! `cargo bench --bench footprint`: the memory of `dealsync run` with 100,000 links whose
//! deals exist on both portals, through and after a full reconciliation sweep that reads every
//! one of them under HubSpot's default limits.
//!
//! Setup: an in-process sandbox serving `hubspot` and `partner-a`, 100,000 deals on each
//! (`Deal 0`…), loaded with the limits off ([`support::sandbox_with_deals`]) and then served
//! with HubSpot's defaults: 100 calls per rolling 10 s per portal, search 5/s, 250,000 a day.
//! The store holds 100,000 links pairing deal `i` of each side, with `dealname = Deal i` as
//! the agreed shadow (as after a first sync): nothing differs, so the sweep only reads.
//!
//! The daemon is the real binary as its own process (`dealsync run`), on its default settings
//! (budget 100 / 10 s and search 5/s per portal, 4 workers, batch 100, the default fields,
//! messages and quotes on) except two `[sync]` keys:
//! - `sweep_interval_ms`: the sweep's first pass starts one interval after start and queues
//!   its batches spread over half an interval; the second pass begins 1.5 intervals after the
//!   first. The interval is set to three times the sweep's shortest possible duration (below;
//!   at least 3 s): long enough that queuing never paces the sweep and that the second pass
//!   comes after the idle samples even when the sweep takes three times its minimum (a first
//!   full run at twice the minimum saw the second pass start while idle was sampled), short
//!   enough not to wait the default 15 minutes.
//! - `poll_overlap_ms = 1000`: the deals were just loaded; with the default 60 s overlap the
//!   first polls would find all 200,000 as recent changes and queue them before the sweep.
//!   The daemon starts after the last deal is more than 2 s old: a poll reaches back one
//!   overlap from its cursor, and a portal's first cursor is its first poll's start minus
//!   the overlap, so the first wide poll looks two overlaps back. (A run that waited only one
//!   overlap had its second polls queue every deal made in the last second of loading — all
//!   of them at 5,000 links — and the sweep read those links twice.)
//!
//! Measured: the sweep starts when its first jobs appear in the store (their `enqueued_at`,
//! or the first `job_history` commit if a batch was queued and done between two looks) and
//! ends with the last `job_history` commit once every link has one since the daemon went
//! quiet and the queue is empty (polled every 100 ms from a read-only connection; the times
//! are the store's, not the polls'). Every link must have run exactly one job, with no
//! change, in that time. (Earlier runs dated the start from the first job *seen* queued and
//! counted coverage from there: a batch done before the first look was never counted, and
//! the bench waited for the second pass — the "> 990 s" of 2026-12-04.) API calls are the sandbox's per-endpoint counters between a
//! snapshot taken once the deal pollers have polled and one after the sweep; searches are the
//! pollers' and reported apart. Memory, from `/proc/PID/status`: `VmRSS` once before the sweep
//! (idle), `VmHWM` (the peak over the process's life) after it, and `VmRSS` sampled 5 times
//! 2 s apart after it (`idle_rss_mb` is the largest sample). The queue must stay empty while
//! sampling (no second pass), and the sweep must write nothing.
//!
//! The minimum (`sweep_min_api_calls`): what one pass over N links strictly reads, each kind at
//! HubSpot's cap per call —
//! - deals, with property histories (the engine's `latest_wins` decides on them; HubSpot takes
//!   at most 50 inputs when `propertiesWithHistory` is asked, `crm::HISTORY_BATCH`):
//!   ⌈N/50⌉ per side;
//! - associations (v4 batch read, ≤ 1,000 inputs): deal→notes on each side (messages are on)
//!   and deal→quotes on HubSpot: ⌈N/1000⌉ each, three in all;
//! - the owners directory (deal teams), one page per side;
//! - the notes' property list, once per side after start: how the portal marks shared messages
//!   (`engine::messages::Markings`, resolved on the first message job);
//! - nothing else: no note or quote exists, so none is read; a plain batch read (≤ 100) would
//!   only be needed for those.
//!
//! For N = 100,000: 2 × 2,000 + 3 × 100 + 4 = 4,304 (HubSpot 2,202, partner 2,102).
//! `sweep_min_s`: the busier portal's minimum calls under its rolling limit with zero latency:
//! the first 100 at once, then 100 per 10 s: ⌈(2,202 − 100) / 100⌉ × 10 s = 220 s.
//!
//! `FOOTPRINT_LINKS=1000` runs it at another size (default 100,000; 1,000 under `BENCH_SMOKE`).
//! Last line: `{"idle_rss_mb":…,"peak_rss_mb":…,"sweep_s":…,"sweep_api_calls":…,…}`.
//! Target: idle under 60 MB.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use dealsync::crm::HISTORY_BATCH;
use dealsync::sandbox::{PortalSpec, SandboxConfig};
use dealsync::store;
use serde_json::{json, Value};

const LINKS: usize = 100_000;
/// Inputs per v4 association batch read (HubSpot's cap, HUBSPOT-API.md §2).
const ASSOC_CAP: usize = 1_000;
/// HubSpot's default burst limit per portal (calls per rolling 10 s).
const PER_10S: usize = 100;

/// The store's size: `FOOTPRINT_LINKS` if set (to try the benchmark quickly), else 1,000 under
/// `BENCH_SMOKE`, else `LINKS`.
fn links() -> usize {
    match std::env::var("FOOTPRINT_LINKS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("FOOTPRINT_LINKS={v} is not a number of links")),
        Err(_) => support::size(LINKS, 1_000),
    }
}

/// The minimum calls of one sweep over `n` links: (HubSpot, partner).
fn min_calls(n: usize) -> (usize, usize) {
    let deals = n.div_ceil(HISTORY_BATCH);
    let assoc = n.div_ceil(ASSOC_CAP);
    // The owners directory and the notes' property list (the marking), once each.
    (deals + 2 * assoc + 2, deals + assoc + 2)
}

/// The shortest time `calls` take under a rolling limit of 100 per 10 s, zero latency.
fn min_seconds(calls: usize) -> f64 {
    (calls.saturating_sub(PER_10S)).div_ceil(PER_10S) as f64 * 10.0
}

fn main() {
    let bin = env!("CARGO_BIN_EXE_dealsync");
    let n = links();
    let (min_hs, min_pa) = min_calls(n);
    let min_s = min_seconds(min_hs.max(min_pa));
    let interval = Duration::from_secs_f64((3.0 * min_s).max(3.0));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("dealsync.db");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let setup = Instant::now();
    let (sb, ids) = rt.block_on(async {
        let config = SandboxConfig {
            portals: vec![PortalSpec::named("hubspot"), PortalSpec::named("partner-a")],
            seed: Some(4),
            ..SandboxConfig::default()
        };
        let (sb, mut ids) = support::sandbox_with_deals(dir.path(), config, n).await;
        let pa = ids.pop().expect("partner ids");
        let hs = ids.pop().expect("hubspot ids");
        let pairs: Vec<(String, String)> = pa.into_iter().zip(hs).collect();
        support::link_agreed(&db, &pairs).await;
        (sb, pairs.len())
    });
    assert_eq!(ids, n);
    let loaded_ms = store::now_ms();
    eprintln!(
        "{n} deals per portal and {n} links in {:.1} s; sweep interval {:.0} s",
        setup.elapsed().as_secs_f64(),
        interval.as_secs_f64()
    );
    let base = sb.base_url.clone();
    let config = format!(
        r#"[store]
path = "{db}"
dead_letter_path = "{dl}"
[hubspot]
base_url = "{base}"
token_env = "HS_TOKEN"
[[partners]]
name = "partner-a"
base_url = "{base}"
token_env = "PA_TOKEN"
[partners.stage_map]
qualifiedtobuy = "qualifiedtobuy"
[sync]
poll_overlap_ms = 1000
sweep_interval_ms = {sweep}
"#,
        db = db.display(),
        dl = dir.path().join("dl.jsonl").display(),
        sweep = interval.as_millis(),
    );
    let cfg = dir.path().join("dealsync.toml");
    std::fs::write(&cfg, config).unwrap();
    // The deals must be older than two poll overlaps when the first polls look back.
    support::wait_for(
        "the deals are older than two poll overlaps",
        Duration::from_secs(5),
        || store::now_ms() > loaded_ms + 2_100,
    );
    let mut daemon = support::Reaped::spawn(
        Command::new(bin)
            .args(["run", "--config", cfg.to_str().unwrap()])
            .env("HS_TOKEN", &sb.portal("hubspot").token)
            .env("PA_TOKEN", &sb.portal("partner-a").token)
            // `BENCH_LOG=dealsync=debug` shows every call the daemon makes.
            .env(
                "DEALSYNC_LOG",
                std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            ),
        "daemon",
    );
    let pid = daemon.id();
    let started_ms = store::now_ms();
    support::wait_for(
        "every portal's deal poller polled",
        Duration::from_secs(60),
        || {
            daemon.assert_running();
            support::deal_pollers_polled_since(&db, &["hubspot", "partner-a"], started_ms)
        },
    );
    let before = [
        rt.block_on(support::counters(&base, "hubspot")),
        rt.block_on(support::counters(&base, "partner-a")),
    ];
    let (jobs, _) = support::queue(&db);
    assert_eq!(
        jobs, 0,
        "the pollers queued jobs before the sweep: nothing changed"
    );
    let rss_before = support::status_mb(pid, "VmRSS:");
    // Nothing runs from here until the sweep (checked below: one job per link since then).
    let quiet_from = store::now_ms();

    // The sweep: its first pass comes one interval after start.
    let mut queued_first: Option<i64> = None;
    let bound = interval * 2 + Duration::from_secs_f64(min_s * 4.0 + 120.0);
    let (mut first_done, mut end) = (None, None);
    support::wait_for("the sweep has read every link", bound, || {
        daemon.assert_running();
        let (jobs, first) = support::queue(&db);
        if let Some(f) = first {
            queued_first = Some(queued_first.map_or(f, |s| s.min(f)));
        }
        if jobs > 0 {
            return false;
        }
        let (links, first, last) = support::covered(&db, quiet_from);
        (first_done, end) = (first, last);
        links as usize >= n
    });
    // A first batch can be queued and done between two looks at the queue: then its commit
    // is the earliest trace of the sweep.
    let start = match (queued_first, first_done) {
        (Some(q), Some(d)) => q.min(d),
        (q, d) => q.or(d).expect("sweep start"),
    };
    let end = end.expect("sweep end");
    let done = support::outcomes(&db, quiet_from);
    assert_eq!(
        done,
        BTreeMap::from([(store::JobOutcome::NoChange.text().to_string(), n as i64)]),
        "every link runs exactly one job in the sweep, and nothing differed"
    );
    let after = [
        rt.block_on(support::counters(&base, "hubspot")),
        rt.block_on(support::counters(&base, "partner-a")),
    ];
    let peak = support::status_mb(pid, "VmHWM:");

    // Idle after the sweep: several samples, nothing queued meanwhile.
    let (samples, gap) = (
        support::size(5, 3),
        support::duration(Duration::from_secs(2), Duration::from_millis(500)),
    );
    let mut idle = Vec::new();
    for i in 0..samples {
        if i > 0 {
            std::thread::sleep(gap);
        }
        daemon.assert_running();
        idle.push(support::round1(support::status_mb(pid, "VmRSS:")));
    }
    let (jobs, _) = support::queue(&db);
    let (_, _, last) = support::covered(&db, quiet_from);
    assert!(
        jobs == 0 && last == Some(end),
        "the daemon worked while idle was sampled ({jobs} jobs queued): the sweep interval is too short"
    );
    let peak_after = support::status_mb(pid, "VmHWM:");

    let mut calls = BTreeMap::new();
    let (mut sweep_calls, mut poll_calls, mut writes, mut http_429) = ([0u64; 2], 0u64, 0u64, 0u64);
    for (i, portal) in ["hubspot", "partner-a"].iter().enumerate() {
        for (k, v) in support::diff(&before[i], &after[i]) {
            if k.ends_with("/search") {
                poll_calls += v;
            } else {
                sweep_calls[i] += v;
            }
            calls.insert(format!("{portal} {k}"), v);
        }
        let u = |c: &Value, f: &str| c[f].as_u64().unwrap_or(0);
        writes += u(&after[i], "writes") - u(&before[i], "writes");
        http_429 += u(&after[i], "http_429") - u(&before[i], "http_429");
    }
    eprintln!("calls during the sweep, by endpoint: {calls:#?}");
    assert_eq!(writes, 0, "the sweep wrote: nothing differed");
    let total = sweep_calls[0] + sweep_calls[1];
    let min = min_hs + min_pa;
    let line = support::mark(json!({
        "idle_rss_mb": idle.iter().copied().fold(f64::NAN, f64::max),
        "idle_rss_samples_mb": idle,
        "rss_before_sweep_mb": support::round1(rss_before),
        "peak_rss_mb": support::round1(peak.max(peak_after)),
        "links": n,
        "sweep_s": support::round1((end - start) as f64 / 1000.0),
        "sweep_min_s": min_s,
        "sweep_interval_s": support::round1(interval.as_secs_f64()),
        "sweep_api_calls": total,
        "sweep_api_calls_hubspot": sweep_calls[0],
        "sweep_api_calls_partner": sweep_calls[1],
        "sweep_min_api_calls": min,
        "sweep_min_api_calls_hubspot": min_hs,
        "sweep_min_api_calls_partner": min_pa,
        "calls_vs_min": (total as f64 / min as f64 * 100.0).round() / 100.0,
        "poll_search_calls": poll_calls,
        "http_429": http_429,
    }));
    drop(daemon);
    drop(sb); // stops with the runtime, unsaved: nothing changed
    println!("{line}");
}
