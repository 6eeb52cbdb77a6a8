//! `cargo bench --bench status`: `dealsync status` (the real binary, table and `--json`)
//! against a store with 100,000 links — with shadows, 1,000 queued jobs, job history, 500
//! conflicts — and a dead-letter file of 2,000 entries. Reports the median wall time of 10
//! runs of each form, process start included. Target: under 200 ms.
//! Last line: `{"status_ms":…,"status_json_ms":…,"links":100000}`.

mod support;

use std::process::Command;
use std::time::Instant;

use dealsync::deadletter::{self, Entry};
use dealsync::store::{self, Store};
use serde_json::json;

const FULL_LINKS: usize = 100_000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // BENCH_SMOKE (CI): 2,000 links and 200 dead letters, same code path.
    let links = support::size(FULL_LINKS, 2_000);
    let dead_letters = support::size(2_000, 200);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("dealsync.db");
    let dl = dir.path().join("dead-letters.jsonl");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = Store::open(&db).await.unwrap();
        s.call(move |c| {
            let tx = c.transaction()?;
            let now = store::now_ms();
            for i in 0..links {
                let partner = if i % 3 == 0 { "partner-b" } else { "partner-a" };
                let l = store::insert_link(&tx, partner, &format!("{}", 20_000_000_000u64 + i as u64), &format!("{}", 10_000_000_000u64 + i as u64), if i % 10 == 0 { "partner_collaboration" } else { "channel" })?;
                tx.execute("INSERT INTO shadows (link_id, field, value, updated_at) VALUES (?1, 'dealname', 'x', ?2)", rusqlite::params![l.id, now])?;
                tx.execute("INSERT INTO job_history (link_id, at, outcome) VALUES (?1, ?2, 'synced')", rusqlite::params![l.id, now])?;
                if i < 1_000 {
                    store::enqueue(&tx, &[l.id], store::JobReason::Poll, now)?;
                }
                if i < 500 {
                    tx.execute("INSERT INTO conflicts (link_id, field, partner_value, hubspot_value, winner, policy, at) VALUES (?1, 'dealname', 'a', 'b', 'partner', 'latest_wins', ?2)", rusqlite::params![l.id, now])?;
                }
            }
            tx.execute("UPDATE links SET state = 'orphaned' WHERE id % 100 = 0", [])?;
            for p in ["hubspot", "partner-a", "partner-b"] {
                tx.execute("INSERT INTO cursors (portal, value_ms, updated_at) VALUES (?1, ?2, ?2)", rusqlite::params![p, now])?;
                tx.execute("INSERT INTO portal_health (portal, last_poll_ok, changes_seen) VALUES (?1, ?2, 10)", rusqlite::params![p, now])?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
        .unwrap();
    });
    let entries: Vec<Entry> = (0..dead_letters)
        .map(|i| Entry {
            id: format!("entry-{i}"),
            link_id: i as i64,
            partner: "partner-a".into(),
            partner_deal_id: format!("{}", 20_000_000_000u64 + i as u64),
            hubspot_deal_id: format!("{}", 10_000_000_000u64 + i as u64),
            reason: "poll".into(),
            error: "stage x has no mapping".into(),
            class: if i % 2 == 0 {
                "unmapped_stage"
            } else {
                "exhausted"
            }
            .into(),
            attempts: 1,
            first_at: "2026-11-26T00:00:00.000Z".into(),
            last_at: "2026-11-26T00:00:00.000Z".into(),
            notification: None,
        })
        .collect();
    deadletter::append(&dl, &entries).unwrap();
    let cfg = dir.path().join("dealsync.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\npath = \"{}\"\ndead_letter_path = \"{}\"\n[hubspot]\nbase_url = \"http://127.0.0.1:9\"\ntoken_env = \"T\"\n[[partners]]\nname = \"partner-a\"\nbase_url = \"http://127.0.0.1:9\"\ntoken_env = \"T\"\n[partners.stage_map]\na = \"a\"\n",
            db.display(),
            dl.display()
        ),
    )
    .unwrap();
    let run = |json: bool| -> f64 {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dealsync"));
        cmd.args(["status", "--config"])
            .arg(&cfg)
            .env("T", "token-not-used");
        if json {
            cmd.arg("--json");
        }
        let t0 = Instant::now();
        let out = cmd.output().expect("status");
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if json {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v["links"]["total"], links as u64);
        }
        ms
    };
    run(false); // warm the page cache
    let table: Vec<f64> = (0..10).map(|_| run(false)).collect();
    let js: Vec<f64> = (0..10).map(|_| run(true)).collect();
    eprintln!("table runs (ms): {table:?}\njson runs (ms): {js:?}");
    println!(
        "{}",
        support::mark(json!({
            "status_ms": (median(table) * 10.0).round() / 10.0,
            "status_json_ms": (median(js) * 10.0).round() / 10.0,
            "links": links,
        }))
    );
}
