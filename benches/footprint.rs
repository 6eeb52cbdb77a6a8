//! `cargo bench --bench footprint`: resident memory of an idle `dealsync run` with 100,000
//! links in its store. The sandbox and the daemon run as separate processes of the real
//! binary; the daemon polls both portals (nothing changes) and its VmRSS is read from /proc
//! after several idle poll rounds. Target: under 60 MB.
//! `FOOTPRINT_LINKS=1000` runs it at a smaller size (default 100,000).
//! Last line: `{"idle_rss_mb":…,"links":100000}`.

#[path = "support/mod.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

use dealsync::store::{self, Store};
use serde_json::json;

const LINKS: usize = 100_000;

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

fn rss_mb(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
        / 1024.0
}

fn main() {
    let bin = env!("CARGO_BIN_EXE_dealsync");
    let links = links();
    let (_sb, base, tokens) = support::spawn_sandbox("hubspot,partner-a");
    let base = base.as_str();
    let token = |i: usize| tokens[i].clone();

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("dealsync.db");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::open(&db).await.unwrap();
        store
            .call(move |c| {
                let tx = c.transaction()?;
                for i in 0..links {
                    let l = store::insert_link(&tx, "partner-a", &format!("{}", 20_000_000_000u64 + i as u64), &format!("{}", 10_000_000_000u64 + i as u64), "channel")?;
                    tx.execute("INSERT INTO shadows (link_id, field, value, updated_at) VALUES (?1, 'dealname', 'x', 0)", [l.id])?;
                }
                tx.commit()?;
                Ok(())
            })
            .await
            .unwrap();
    });
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
poll_interval_ms = 500
sweep_interval_ms = 86400000
"#,
        db = db.display(),
        dl = dir.path().join("dl.jsonl").display()
    );
    let cfg = dir.path().join("dealsync.toml");
    std::fs::write(&cfg, config).unwrap();
    let mut daemon = support::Reaped::spawn(
        Command::new(bin)
            .args(["run", "--config", cfg.to_str().unwrap()])
            .env("HS_TOKEN", token(0))
            .env("PA_TOKEN", token(1))
            .env("DEALSYNC_LOG", "warn"),
        "daemon",
    );
    // Idle: both deal pollers have polled again well after start, i.e. several rounds.
    let after = store::now_ms() + 3_000;
    support::wait_for(
        "every portal's deal poller polled 3 s after start",
        Duration::from_secs(120),
        || {
            daemon.assert_running();
            support::deal_pollers_polled_since(&db, &["hubspot", "partner-a"], after)
        },
    );
    let rss = rss_mb(daemon.id());
    println!(
        "{}",
        support::mark(json!({ "idle_rss_mb": (rss * 10.0).round() / 10.0, "links": links }))
    );
}
