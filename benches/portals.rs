//! `cargo bench --bench portals`: how far one `dealsync run` goes in partner portals before
//! it needs a second machine (issue 20 item 7) — the daemon's idle memory and CPU with
//! 1,000 partner portals and no links, as an operator would try it against a sandbox of
//! 1,001 portals.
//!
//! Setup: the real `dealsync sandbox` as its own process serving `hubspot` and `p0`…`p999`
//! with HubSpot's default limits per portal (100 calls / 10 s, search 5/s), and the real
//! `dealsync run` on its default settings (pollers for deals, notes and quotes, the sweep,
//! 4 workers) with a config naming every partner (each its own token). Nothing is linked, so
//! after start the daemon only polls.
//!
//! Measured, from `/proc/PID/status` and `/proc/PID/stat`: `VmRSS` once every portal's deal
//! poller has polled (the store's `portal_health`), then over one idle minute (15 s under
//! `BENCH_SMOKE`) the largest of samples taken every 5 s (`idle_rss_mb`), `VmHWM`, and the CPU
//! time the process used in that minute (`cpu_s_per_min`). Calls: the sandbox's counters of
//! one partner and of HubSpot's portal over the idle minute, beside what the pollers are
//! scheduled to make at their default intervals (one search per poller per 30 s; a note or
//! quote poller skips a round that meets its deal poller's scan, so fewer is normal). The
//! idle minimum of a portal with no links is its deal poller alone: 2 calls a minute.
//!
//! `portals_links` is the same with 100 links per partner, after a sweep.
//!
//! `PORTALS_PARTNERS=100` runs it at another size (default 1,000; 20 under `BENCH_SMOKE`).
//! Last line: `{"idle_rss_mb":…,"partners":…,"cpu_s_per_min":…,…}`. Target: < 60 MB idle.

#[path = "support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dealsync::store;
use serde_json::json;

const PARTNERS: usize = 1_000;

fn partners() -> usize {
    match std::env::var("PORTALS_PARTNERS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("PORTALS_PARTNERS={v} is not a number of portals")),
        Err(_) => support::size(PARTNERS, 20),
    }
}

fn main() {
    let n = partners();
    let names: Vec<String> = std::iter::once("hubspot".to_owned())
        .chain((0..n).map(|i| format!("p{i}")))
        .collect();
    let (_sandbox, base, tokens) = support::spawn_sandbox_limited(&names.join(","));
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::partners_config(dir.path(), &base, n, "");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dealsync"));
    cmd.args(["run", "--config", cfg.to_str().unwrap()])
        .env("HS_TOKEN", &tokens[0])
        .env("DEALSYNC_LOG", "warn")
        .stdout(Stdio::null());
    for (i, t) in tokens[1..].iter().enumerate() {
        cmd.env(format!("P{i}_TOKEN"), t);
    }
    let started = Instant::now();
    let started_ms = store::now_ms();
    let mut daemon = support::Reaped::spawn(&mut cmd, "daemon");
    let pid = daemon.id();
    let db = dir.path().join("dealsync.db");
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    support::wait_for(
        "every portal's deal poller polled",
        Duration::from_secs(300),
        || {
            daemon.assert_running();
            support::deal_pollers_polled_since(&db, &refs, started_ms)
        },
    );
    let polled_s = started.elapsed().as_secs_f64();
    let rss_polled = support::status_mb(pid, "VmRSS:");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let count = |portal: &str| {
        rt.block_on(support::counters(&base, portal))["total"]
            .as_u64()
            .unwrap_or(0)
    };
    let (hs0, p0) = (count("hubspot"), count("p0"));
    let window = support::duration(Duration::from_secs(60), Duration::from_secs(15));
    let cpu0 = support::cpu_s(pid);
    let t0 = Instant::now();
    let mut samples = Vec::new();
    while t0.elapsed() < window {
        std::thread::sleep(Duration::from_secs(5).min(window.saturating_sub(t0.elapsed())));
        daemon.assert_running();
        samples.push(support::round1(support::status_mb(pid, "VmRSS:")));
    }
    let minutes = t0.elapsed().as_secs_f64() / 60.0;
    let cpu = (support::cpu_s(pid) - cpu0) / minutes;
    let (hs1, p1) = (count("hubspot"), count("p0"));
    // Scheduled: each poller's one search per 30 s interval (deals and notes everywhere,
    // quotes on HubSpot's portal). A note or quote poller skips its round while the portal's
    // deal poller scans (`ingest::poll`), so fewer calls than scheduled is expected.
    let per_min = |pollers: f64| pollers * 2.0;
    let line = support::mark(json!({
        "idle_rss_mb": samples.iter().copied().fold(f64::NAN, f64::max),
        "idle_rss_samples_mb": samples,
        "rss_after_first_polls_mb": support::round1(rss_polled),
        "peak_rss_mb": support::round1(support::status_mb(pid, "VmHWM:")),
        "partners": n,
        "first_polls_s": support::round1(polled_s),
        "cpu_s_per_min": (cpu * 100.0).round() / 100.0,
        "partner_calls_per_min": support::round1((p1 - p0) as f64 / minutes),
        "partner_scheduled_calls_per_min": per_min(2.0),
        "hubspot_calls_per_min": support::round1((hs1 - hs0) as f64 / minutes),
        "hubspot_scheduled_calls_per_min": per_min(3.0),
    }));
    drop(daemon);
    println!("{line}");
}
