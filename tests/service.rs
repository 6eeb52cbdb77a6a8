//! `dealsync run` as systemd runs it: the real binary with `NOTIFY_SOCKET` set reports
//! READY=1 once it is up, and SIGTERM during a busy run says STOPPING=1, drains and exits 0;
//! after a restart every change arrives, each link was synced exactly once, nothing was lost.

#![cfg(unix)]

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dealsync::store::{self, Store};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

const N: usize = 400;
const WAIT: Duration = Duration::from_secs(120);

fn config(dir: &Path, base: &str) -> PathBuf {
    let path = dir.join("dealsync.toml");
    let text = format!(
        r#"[store]
path = "{db}"
dead_letter_path = "{dl}"

[hubspot]
base_url = "{base}"
token_env = "HS_TOKEN"
# Slow enough that a run of {N} changes is still busy when SIGTERM comes.
rate_limit_per_10s = 20

[[partners]]
name = "partner-a"
base_url = "{base}"
token_env = "PA_TOKEN"
rate_limit_per_10s = 20

[partners.stage_map]
appointmentscheduled = "appointmentscheduled"

[sync]
poll_interval_ms = 300
poll_overlap_ms = 5000
batch_size = 20
workers = 2
drain_ms = 20000

[fields.dealname]
partner_property = "dealname"
hubspot_property = "dealname"
"#,
        db = dir.join("dealsync.db").display(),
        dl = dir.join("dead-letters.jsonl").display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn spawn(cfg: &Path, notify: Option<&Path>, hs: &common::Portal, pa: &common::Portal) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dealsync"));
    c.args(["run", "--config"])
        .arg(cfg)
        .env("HS_TOKEN", &hs.info.token)
        .env("PA_TOKEN", &pa.info.token)
        .env("DEALSYNC_LOG", "warn")
        .kill_on_drop(true);
    match notify {
        Some(p) => c.env("NOTIFY_SOCKET", p),
        None => c.env_remove("NOTIFY_SOCKET"),
    };
    c.spawn().expect("start dealsync run")
}

/// Waits (bounded, without blocking the runtime) for a datagram containing `what`.
async fn expect_datagram(sock: &UnixDatagram, what: &str) -> String {
    common::eventually(&format!("systemd notification {what}"), WAIT, || async {
        let mut buf = [0u8; 512];
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                msg.contains(what).then_some(msg)
            }
            Err(_) => None,
        }
    })
    .await
}

async fn synced_links(db: &Path) -> i64 {
    let db = db.to_owned();
    tokio::task::spawn_blocking(move || {
        let c = store::open_read_only(&db).ok()?;
        c.query_row(
            "SELECT COUNT(*) FROM job_history WHERE outcome = 'synced'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .ok()
    })
    .await
    .unwrap()
    .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_drains_exits_zero_and_the_restart_finishes_without_repeats() {
    let sb = common::unlimited_sandbox().await;
    let (hs, pa) = (
        common::portal(&sb, "hubspot"),
        common::portal(&sb, "partner-a"),
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &sb.base_url);
    let db = dir.path().join("dealsync.db");

    // N linked deals, agreed ("Deal i" on both sides, and in the shadow), then renamed on the
    // partner side.
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for chunk in 0..N / 100 {
        let batch: Vec<String> = (0..100)
            .map(|i| format!("Deal {}", chunk * 100 + i))
            .collect();
        let body = json!({"inputs": batch.iter().map(|n| json!({"properties": {"dealname": n}})).collect::<Vec<_>>()});
        let by_name = |a: &common::Answer| -> std::collections::HashMap<String, String> {
            assert_eq!(a.status, 201, "{}", a.text);
            a.body["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r["properties"]["dealname"].as_str().unwrap().to_owned(),
                        r["id"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        };
        let p = by_name(
            &pa.post("/crm/v3/objects/deals/batch/create", body.clone())
                .await,
        );
        let h = by_name(&hs.post("/crm/v3/objects/deals/batch/create", body).await);
        for n in batch {
            pairs.push((p[&n].clone(), h[&n].clone()));
            names.push(n);
        }
    }
    let store = Store::open(&db).await.unwrap();
    let (p2, n2) = (pairs.clone(), names.clone());
    store
        .call(move |c| {
            let tx = c.transaction()?;
            for ((p, h), name) in p2.iter().zip(&n2) {
                let l = store::insert_link(&tx, "partner-a", p, h, "channel")?;
                tx.execute(
                    "INSERT INTO shadows (link_id, field, value, updated_at) VALUES (?1, 'dealname', ?2, 0)",
                    rusqlite::params![l.id, name],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
        .unwrap();
    drop(store);
    for chunk in pairs.chunks(100) {
        let inputs: Vec<Value> = chunk
            .iter()
            .map(|(p, _)| json!({"id": p, "properties": {"dealname": format!("Renamed {p}")}}))
            .collect();
        let a = pa
            .post(
                "/crm/v3/objects/deals/batch/update",
                json!({ "inputs": inputs }),
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.text);
    }

    // First life, under a fake systemd.
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_nonblocking(true).unwrap();
    let mut daemon = spawn(&cfg, Some(&sock_path), &hs, &pa);
    let ready = expect_datagram(&sock, "READY=1").await;
    assert!(ready.contains("STATUS="), "{ready}");
    common::eventually("the daemon is busy syncing", WAIT, || async {
        (synced_links(&db).await > 0).then_some(())
    })
    .await;
    let before = synced_links(&db).await;
    assert!(
        (before as usize) < N,
        "SIGTERM must come mid-run (synced {before} of {N})"
    );
    let pid = daemon.id().expect("pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    expect_datagram(&sock, "STOPPING=1").await;
    let status = tokio::time::timeout(WAIT, daemon.wait())
        .await
        .expect("exits within the drain bound")
        .unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0");
    let after_first = synced_links(&db).await;
    assert!((after_first as usize) < N, "the first life did not finish");

    // Second life: finishes the rest.
    let mut daemon = spawn(&cfg, None, &hs, &pa);
    common::eventually("every link is synced", WAIT, || async {
        (synced_links(&db).await as usize == N).then_some(())
    })
    .await;
    let _ = daemon.start_kill();
    let _ = daemon.wait().await;

    // Nothing lost: HubSpot has every new name. Nothing twice: each link synced exactly once.
    for (p, h) in &pairs {
        let a = hs
            .get(&format!("/crm/v3/objects/deals/{h}?properties=dealname"))
            .await;
        assert_eq!(a.body["properties"]["dealname"], format!("Renamed {p}"));
    }
    let db2 = db.clone();
    let repeats: i64 = tokio::task::spawn_blocking(move || {
        let c = store::open_read_only(&db2).unwrap();
        c.query_row(
            "SELECT COUNT(*) FROM (SELECT link_id FROM job_history WHERE outcome = 'synced'
                                   GROUP BY link_id HAVING COUNT(*) > 1)",
            [],
            |r| r.get(0),
        )
        .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(repeats, 0, "no link was synced twice");
}
