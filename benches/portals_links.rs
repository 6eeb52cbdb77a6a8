//! `cargo bench --bench portals_links`: one `dealsync run` with 1,000 partner portals and 100
//! links each (100,000 links whose deals exist), through one full reconciliation sweep under
//! HubSpot's default limits, then idle (issue 20 item 7, its second half; `portals` is the
//! first: the same portals without links).
//!
//! Setup: an in-process sandbox serving `hubspot` and `p0`…`p999` with HubSpot's defaults per
//! portal (100 calls per rolling 10 s, search 5/s), loaded with the limits off: 100 deals in
//! each partner portal and one HubSpot deal per link. The store links partner `pI`'s deal `j`
//! to HubSpot deal `I × 100 + j`, both named `Deal I×100+j`, with that name as the agreed
//! shadow, so nothing differs and the sweep only reads. The daemon is the real binary as its own process on its default
//! settings except, as in `footprint`, `poll_overlap_ms = 1000` and a sweep interval of three
//! times the sweep's minimum plus two idle windows, so the second pass never meets the idle
//! sampling (it starts after the deals are two overlaps old; the first pass comes one
//! interval after start, so a full run takes about 20 minutes).
//!
//! Measured: `VmRSS` before the sweep, `VmHWM` over it, and after it (queue empty, every link
//! with one no-change job) one idle minute (5 s under `BENCH_SMOKE`): the largest of `VmRSS`
//! samples 5 s apart (`idle_rss_mb`) and the CPU seconds used in it per minute. Calls: every
//! portal's counters between the deal pollers' first polls and the end of the sweep, searches
//! (the pollers') apart; the sweep's calls per portal against its minimum, each kind at
//! HubSpot's cap per call — deals with history ⌈links/50⌉, deal→notes associations
//! ⌈links/1000⌉ (HubSpot's portal: deal→quotes too), the owners directory once and the notes'
//! property list once (how the portal marks shared messages, resolved on its first message
//! job): a partner with 100 links 5, HubSpot's portal with 100,000 links 2,202, which binds:
//! ⌈(2,202 − 100) / 100⌉ × 10 s = 220 s at least.
//!
//! `PORTALS_PARTNERS` and `PORTALS_LINKS` (per partner) run it at another size (default
//! 1,000 × 100; 20 × 10 under `BENCH_SMOKE`). Last line: `{"idle_rss_mb":…,"links":…,…}`.
//! Target: < 150 MB idle.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dealsync::crm::HISTORY_BATCH;
use dealsync::sandbox::{PortalSpec, SandboxConfig};
use dealsync::store;
use serde_json::{json, Value};

/// Inputs per v4 association batch read (HubSpot's cap).
const ASSOC_CAP: usize = 1_000;

fn env_or(key: &str, full: usize, smoke: usize) -> usize {
    match std::env::var(key) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v} is not a number")),
        Err(_) => support::size(full, smoke),
    }
}

/// What one sweep pass over `links` of one portal reads at the least.
fn min_calls(links: usize, hubspot: bool) -> usize {
    let assoc_kinds = if hubspot { 2 } else { 1 };
    // The owners directory and the notes' property list (the marking), once each.
    links.div_ceil(HISTORY_BATCH) + assoc_kinds * links.div_ceil(ASSOC_CAP) + 2
}

fn main() {
    let n = env_or("PORTALS_PARTNERS", 1_000, 20);
    let k = env_or("PORTALS_LINKS", 100, 10);
    let total = n * k;
    let min_hs = min_calls(total, true);
    let min_s = (min_hs.saturating_sub(100)).div_ceil(100) as f64 * 10.0;
    let window = support::duration(Duration::from_secs(60), Duration::from_secs(5));
    // The second pass comes 1.5 intervals after the first: after the sweep and the idle
    // minute even if the sweep takes three times its minimum.
    let interval = Duration::from_secs_f64((3.0 * min_s).max(3.0)) + window * 2;
    let names: Vec<String> = std::iter::once("hubspot".to_owned())
        .chain((0..n).map(|i| format!("p{i}")))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("dealsync.db");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let setup = Instant::now();
    let sb = rt.block_on(async {
        let config = SandboxConfig {
            portals: names.iter().map(|p| PortalSpec::named(p)).collect(),
            seed: Some(20),
            ..SandboxConfig::default()
        };
        // Partner pI's deals are named like their HubSpot counterparts: `Deal I×k+j`.
        let names: Vec<std::ops::Range<usize>> = std::iter::once(0..total)
            .chain((0..n).map(|i| i * k..(i + 1) * k))
            .collect();
        let (sb, ids) = support::sandbox_with_deal_counts(dir.path(), config, &names).await;
        let mut links = Vec::with_capacity(total);
        for (i, partner_ids) in ids[1..].iter().enumerate() {
            for (j, p) in partner_ids.iter().enumerate() {
                let h = ids[0][i * k + j].clone();
                links.push((format!("p{i}"), p.clone(), h, format!("Deal {}", i * k + j)));
            }
        }
        support::link_agreed_named(&db, &links).await;
        sb
    });
    let loaded_ms = store::now_ms();
    eprintln!(
        "{n} partners × {k} links loaded in {:.1} s; sweep interval {:.0} s",
        setup.elapsed().as_secs_f64(),
        interval.as_secs_f64()
    );
    let base = sb.base_url.clone();
    let cfg = support::partners_config(
        dir.path(),
        &base,
        n,
        &format!(
            "[sync]\npoll_overlap_ms = 1000\nsweep_interval_ms = {}\n",
            interval.as_millis()
        ),
    );
    support::wait_for(
        "the deals are older than two poll overlaps",
        Duration::from_secs(5),
        || store::now_ms() > loaded_ms + 2_100,
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dealsync"));
    cmd.args(["run", "--config", cfg.to_str().unwrap()])
        .env("HS_TOKEN", &sb.portal("hubspot").token)
        .env(
            "DEALSYNC_LOG",
            std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null());
    for i in 0..n {
        cmd.env(format!("P{i}_TOKEN"), &sb.portal(&format!("p{i}")).token);
    }
    let mut daemon = support::Reaped::spawn(&mut cmd, "daemon");
    let pid = daemon.id();
    let started_ms = store::now_ms();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    support::wait_for(
        "every portal's deal poller polled",
        Duration::from_secs(300),
        || {
            daemon.assert_running();
            support::deal_pollers_polled_since(&db, &refs, started_ms)
        },
    );
    let snapshot = || -> Vec<Value> {
        rt.block_on(futures_util::future::join_all(
            names.iter().map(|p| support::counters(&base, p)),
        ))
    };
    let before = snapshot();
    assert_eq!(
        support::queue(&db).0,
        0,
        "the pollers queued jobs: nothing changed"
    );
    let rss_before = support::status_mb(pid, "VmRSS:");
    let quiet_from = store::now_ms();

    let bound = interval * 2 + Duration::from_secs_f64(min_s * 4.0 + 300.0);
    let (mut queued_first, mut first_done, mut end): (Option<i64>, _, _) = (None, None, None);
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
        links as usize >= total
    });
    // A first batch can be queued and done between two looks: then its commit is the
    // earliest trace of the sweep.
    let start = match (queued_first, first_done) {
        (Some(q), Some(d)) => Some(q.min(d)),
        (q, d) => q.or(d),
    };
    let sweep_done = Instant::now();
    let outcomes = support::outcomes(&db, quiet_from);
    assert_eq!(
        outcomes,
        BTreeMap::from([(store::JobOutcome::NoChange.text().to_string(), total as i64)]),
        "every link runs exactly one job in the sweep, and nothing differed"
    );
    let after = snapshot();
    let peak = support::status_mb(pid, "VmHWM:");

    // Idle after the sweep.
    let cpu0 = support::cpu_s(pid);
    let t0 = Instant::now();
    let mut samples = Vec::new();
    while t0.elapsed() < window {
        std::thread::sleep(Duration::from_secs(5).min(window.saturating_sub(t0.elapsed())));
        daemon.assert_running();
        samples.push(support::round1(support::status_mb(pid, "VmRSS:")));
    }
    let cpu = (support::cpu_s(pid) - cpu0) / (t0.elapsed().as_secs_f64() / 60.0);
    let (jobs, _) = support::queue(&db);
    let (_, _, last) = support::covered(&db, quiet_from);
    assert!(
        jobs == 0 && last == end,
        "the daemon worked while idle was sampled ({jobs} jobs queued)"
    );

    // Calls in the sweep per portal, searches (the pollers') apart.
    let mut sweep = Vec::with_capacity(names.len());
    let (mut writes, mut http_429) = (0u64, 0u64);
    for (b, a) in before.iter().zip(&after) {
        let calls: u64 = support::diff(b, a)
            .iter()
            .filter(|(k, _)| !k.ends_with("/search"))
            .map(|(_, v)| v)
            .sum();
        sweep.push(calls);
        let u = |c: &Value, f: &str| c[f].as_u64().unwrap_or(0);
        writes += u(a, "writes") - u(b, "writes");
        http_429 += u(a, "http_429") - u(b, "http_429");
    }
    assert_eq!(writes, 0, "the sweep wrote: nothing differed");
    let p0_calls = support::diff(&before[1], &after[1]);
    let partners = &sweep[1..];
    let partner_max = partners.iter().copied().max().unwrap_or(0);
    let partner_mean = partners.iter().sum::<u64>() as f64 / n as f64;
    let min_partner = min_calls(k, false);
    let line = support::mark(json!({
        "idle_rss_mb": samples.iter().copied().fold(f64::NAN, f64::max),
        "idle_rss_samples_mb": samples,
        "rss_before_sweep_mb": support::round1(rss_before),
        "peak_rss_mb": support::round1(peak),
        "partners": n,
        "links": total,
        "idle_cpu_s_per_min": (cpu * 100.0).round() / 100.0,
        "sweep_s": start.zip(end).map(|(s, e)| support::round1((e - s) as f64 / 1000.0)),
        "sweep_min_s": min_s,
        "hubspot_sweep_calls": sweep[0],
        "hubspot_sweep_min_calls": min_hs,
        "partner_sweep_calls_mean": support::round1(partner_mean),
        "partner_sweep_calls_max": partner_max,
        "partner_sweep_min_calls": min_partner,
        "p0_sweep_calls_by_endpoint": p0_calls,
        "http_429": http_429,
        "idle_s_after_sweep": support::round1(sweep_done.elapsed().as_secs_f64()),
    }));
    drop(daemon);
    drop(sb);
    println!("{line}");
}
