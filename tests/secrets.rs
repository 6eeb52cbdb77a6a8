//! Secrets never leak: a real `dealsync run` (the binary, logging at `trace`) with tokens and
//! webhook secrets that carry a unique marker syncs a change, dead-letters a job, receives
//! signed and forged webhooks and is rate limited; then its logs, `status` (overview and
//! `--deal`, table and JSON), `/metrics`, `/readyz`, the dead-letter file and the store are
//! searched for the marker. The store and dead-letter files are owner-only.

#![cfg(unix)]

mod common;

use std::path::Path;
use std::time::Duration;

use dealsync::sandbox::{PortalSpec, SandboxConfig};
use serde_json::json;
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

const MARKER: &str = "LEAKMARK9c41";
const WAIT: Duration = Duration::from_secs(60);

fn spec(name: &str) -> PortalSpec {
    PortalSpec {
        name: name.into(),
        token: Some(format!("pat-{MARKER}-{name}-token")),
        webhook_secret: Some(format!("{MARKER}-{name}-secret")),
    }
}

fn assert_clean(what: &str, text: &str) {
    assert!(
        !text.contains(MARKER),
        "{what} leaks a secret: …{}…",
        text.find(MARKER)
            .map(|i| &text[i.saturating_sub(60)..(i + 40).min(text.len())])
            .unwrap_or("")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_status_metrics_dead_letters_or_the_store() {
    let sb = common::sandbox_with(SandboxConfig {
        portals: vec![spec("hubspot"), spec("partner-a")],
        ..SandboxConfig::default()
    })
    .await;
    let (hs, pa) = (
        common::portal(&sb, "hubspot"),
        common::portal(&sb, "partner-a"),
    );
    assert!(hs.info.token.contains(MARKER), "the marker is in the token");
    common::setup_portals(&sb, &["hubspot", "partner-a"]).await;
    let dir = tempfile::tempdir().unwrap();
    let (db, dl) = (
        dir.path().join("dealsync.db"),
        dir.path().join("dead-letters.jsonl"),
    );
    let cfg = dir.path().join("dealsync.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[store]
path = "{db}"
dead_letter_path = "{dl}"
[hubspot]
base_url = "{base}"
token_env = "HS_TOKEN"
webhook_secret_env = "HS_SECRET"
[[partners]]
name = "partner-a"
base_url = "{base}"
token_env = "PA_TOKEN"
webhook_secret_env = "PA_SECRET"
[partners.stage_map]
appointmentscheduled = "appointmentscheduled"
[sync]
poll_interval_ms = 200
poll_overlap_ms = 5000
retry_base_ms = 50
[webhooks]
listen = "127.0.0.1:0"
[notifications]
webhook_url = "{base}/_sandbox/no-receiver/{MARKER}-url-token"
webhook_secret_env = "NOTIFY_SECRET"
retry_base_ms = 50
"#,
            db = db.display(),
            dl = dl.display(),
            base = sb.base_url
        ),
    )
    .unwrap();
    let log_path = dir.path().join("daemon.log");
    let env = [
        ("HS_TOKEN", hs.info.token.clone()),
        ("PA_TOKEN", pa.info.token.clone()),
        ("HS_SECRET", hs.info.webhook_secret.clone()),
        ("PA_SECRET", pa.info.webhook_secret.clone()),
        ("NOTIFY_SECRET", format!("{MARKER}-notify-secret")),
    ];
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_dealsync"))
        .args(["run", "--config"])
        .arg(&cfg)
        .envs(env.iter().cloned())
        .env("DEALSYNC_LOG", "trace")
        .env("DEALSYNC_LOG_FORMAT", "json")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Copy the log to a file while finding the listener's address in it.
    let stderr = daemon.stderr.take().unwrap();
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel::<String>();
    let lp = log_path.clone();
    let copier = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut out = String::new();
        let mut tx = Some(addr_tx);
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains("listening for webhooks") {
                if let (Some(t), Ok(v)) = (tx.take(), serde_json::from_str::<serde_json::Value>(&l))
                {
                    let _ = t.send(v["fields"]["bound"].as_str().unwrap_or("").to_owned());
                }
            }
            out.push_str(&l);
            out.push('\n');
        }
        std::fs::write(lp, out).unwrap();
    });
    let addr = tokio::time::timeout(WAIT, addr_rx).await.unwrap().unwrap();
    for p in [&hs, &pa] {
        let a = p
            .control(
                reqwest::Method::PUT,
                "/webhooks",
                Some(json!({"target_url": format!("http://{addr}/webhooks/{}", p.info.name)})),
            )
            .await;
        assert_eq!(a.status, 200);
    }

    // Activity: a synced change, a dead letter, a forged webhook, rate limiting.
    let store = dealsync::store::Store::open_alongside(&db).await.unwrap();
    let mut deals = Vec::new();
    for (name, stage) in [
        ("Fine", "appointmentscheduled"),
        ("Unmapped", "appointmentscheduled"),
    ] {
        let props = json!({"dealname": name, "dealstage": stage});
        let p = pa.create_deal(props.clone()).await;
        let h = hs.create_deal(props).await;
        let (p2, h2) = (p.clone(), h.clone());
        store
            .call(move |c| dealsync::store::insert_link(c, "partner-a", &p2, &h2, "channel"))
            .await
            .unwrap();
        deals.push((p, h));
    }
    pa.patch(
        &format!("/crm/v3/objects/deals/{}", deals[0].0),
        json!({"properties": {"dealname": "Fine, renamed"}}),
    )
    .await;
    pa.patch(
        &format!("/crm/v3/objects/deals/{}", deals[1].0),
        json!({"properties": {"dealstage": "contractsent"}}),
    )
    .await;
    let forged = reqwest::Client::new()
        .post(format!("http://{addr}/webhooks/partner-a"))
        .header("X-HubSpot-Signature-v3", "AAAA")
        .header(
            "X-HubSpot-Request-Timestamp",
            dealsync::store::now_ms().to_string(),
        )
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    hs.set_faults(json!({"rate_429": 0.3})).await;
    common::eventually(
        "the rename arrives and the stage is dead-lettered",
        WAIT,
        || async {
            let a = hs
                .get(&format!(
                    "/crm/v3/objects/deals/{}?properties=dealname",
                    deals[0].1
                ))
                .await;
            let renamed = a.body["properties"]["dealname"] == "Fine, renamed";
            let dead = std::fs::read_to_string(&dl).is_ok_and(|t| t.contains("unmapped_stage"));
            (renamed && dead).then_some(())
        },
    )
    .await;
    hs.control(reqwest::Method::DELETE, "/faults", None).await;
    // A shared message: its notification goes to a receiver that refuses it (a URL holding
    // a token of the receiver's) and is dead-lettered.
    common::notes::note(&pa, &deals[0].0, "shared", true, json!({})).await;
    common::eventually("the notification is dead-lettered", WAIT, || async {
        std::fs::read_to_string(&dl)
            .is_ok_and(|t| t.contains("\"class\":\"notification\""))
            .then_some(())
    })
    .await;

    // Everything an operator or a scraper can see.
    let mut seen: Vec<(String, String)> = Vec::new();
    for path in ["/metrics", "/readyz", "/healthz"] {
        let t = reqwest::get(format!("http://{addr}{path}"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        seen.push((path.to_owned(), t));
    }
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["status", "--deal", deals[1].1.as_str()],
        vec!["status", "--json", "--deal", deals[0].0.as_str()],
        vec!["replay", "--all", "--dry-run"],
        vec!["check-config"],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_dealsync"))
            .args(&args)
            .arg("--config")
            .arg(&cfg)
            .envs(env.iter().cloned())
            .env("DEALSYNC_LOG", "trace")
            .output()
            .await
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        seen.push((
            format!("{args:?}"),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ));
    }
    // The daemon's own log, after a clean stop.
    let pid = daemon.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let st = tokio::time::timeout(WAIT, daemon.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.code(), Some(0));
    copier.await.unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.lines().count() > 20,
        "trace logging produced a real log"
    );
    assert!(
        log.contains("webhook refused"),
        "the forged webhook was logged"
    );
    seen.push(("daemon log".into(), log));
    seen.push((
        "dead-letter file".into(),
        std::fs::read_to_string(&dl).unwrap(),
    ));
    drop(store);
    for f in [&db, &db.with_extension("db-wal")] {
        if let Ok(bytes) = std::fs::read(f) {
            seen.push((
                f.display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
    }
    for (what, text) in &seen {
        assert_clean(what, text);
    }
    for f in [&db, &dl] {
        assert_owner_only(f);
    }
}

fn assert_owner_only(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} is {mode:o}", p.display());
}
