//! `cargo bench --bench footprint`: resident memory of an idle `dealsync run` with 100,000
//! links in its store. The sandbox and the daemon run as separate processes of the real
//! binary; the daemon polls both portals (nothing changes) and its VmRSS is read from /proc
//! after several idle poll rounds. Target: under 60 MB.
//! Last line: `{"idle_rss_mb":…,"links":100000}`.

#[path = "support/mod.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use dealsync::store::{self, Store};
use serde_json::json;

const LINKS: usize = 100_000;

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
    let (mut sb, base, tokens) = support::spawn_sandbox("hubspot,partner-a");
    let base = base.as_str();
    let token = |i: usize| tokens[i].clone();

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("dealsync.db");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::open(&db).await.unwrap();
        store
            .call(|c| {
                let tx = c.transaction()?;
                for i in 0..LINKS {
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
    let mut daemon = Command::new(bin)
        .args(["run", "--config", cfg.to_str().unwrap()])
        .env("HS_TOKEN", token(0))
        .env("PA_TOKEN", token(1))
        .env("DEALSYNC_LOG", "warn")
        .spawn()
        .expect("daemon");
    // Idle: wait for several poll rounds on both portals (cursor rows and health advance).
    let t0 = Instant::now();
    let start_ms = store::now_ms();
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let conn = store::open_read_only(&db).unwrap();
        let polled: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM portal_health WHERE last_poll_ok > ?1",
                [start_ms + 3_000],
                |r| r.get(0),
            )
            .unwrap_or(0);
        if polled == 2 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "daemon did not poll"
        );
    }
    let rss = rss_mb(daemon.id());
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = sb.kill();
    let _ = sb.wait();
    println!(
        "{}",
        json!({ "idle_rss_mb": (rss * 10.0).round() / 10.0, "links": LINKS })
    );
}
