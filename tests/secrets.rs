//! Secrets never leak: a real `dealsync run` (the binary, logging at `trace`) with tokens and
//! webhook secrets that carry a unique marker syncs a change, dead-letters a job, receives
//! signed and forged webhooks and is rate limited; then its logs, `status` (overview and
//! `--deal`, table and JSON), `/metrics`, `/readyz`, the dead-letter file and the store are
//! searched for the marker. The store and dead-letter files are owner-only.
//!
//! The same for an OAuth install (issue 15): partner-a installs by the printed link, syncs over
//! 2 s access tokens with rotated refresh tokens, gets bad and replayed callbacks and is
//! revoked; the app's client secret, the authorization code, every access token the sandbox
//! issued (`GET /_sandbox/oauth/tokens`) and every refresh token the store held are searched
//! for everywhere, the store included except `oauth_installs.refresh_token`, which keeps one by
//! design.

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
/// With 429s injected on 30% of calls, each pausing the portal for HubSpot's 10 s window, the
/// sync takes 20–40 s on a quiet machine; a loaded one (CI running beside a benchmark) has
/// passed 60 s. A bound, not a wait: the test moves on as soon as the state holds.
const RATE_LIMITED_WAIT: Duration = Duration::from_secs(180);

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
    // Two certain 429s (a burst), then a 30% chance on every call.
    hs.set_faults(json!({"rate_429": 0.3, "burst_count": 2, "burst_status": 429}))
        .await;
    common::eventually(
        "the rename arrives and the stage is dead-lettered",
        RATE_LIMITED_WAIT,
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
    // The 429 path ran: the daemon met injected rate limits (their answers and retries are
    // among what is checked for secrets below).
    let limited = hs.counters().await["http_429"].as_u64().unwrap_or(0);
    assert!(
        limited >= 2,
        "{limited} 429s answered, fewer than the burst of 2"
    );
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

/// A port nothing listens on right now: the OAuth redirect URL names the listener's address
/// before the daemon starts.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The first secret `text` holds, as (its name, an excerpt around it).
fn find_secret<'a>(text: &str, secrets: &'a [(String, String)]) -> Option<(&'a str, String)> {
    secrets.iter().find_map(|(name, value)| {
        let i = text.find(value.as_str())?;
        let (mut a, mut b) = (i.saturating_sub(60), (i + value.len() + 20).min(text.len()));
        while !text.is_char_boundary(a) {
            a -= 1;
        }
        while !text.is_char_boundary(b) {
            b += 1;
        }
        Some((name.as_str(), text[a..b].to_owned()))
    })
}

fn assert_no_secret(what: &str, text: &str, secrets: &[(String, String)]) {
    if let Some((name, around)) = find_secret(text, secrets) {
        panic!("{what} leaks the {name}: …{around}…");
    }
}

/// The text of every row of every table, except the one column `exempt` (table, column).
fn store_text(c: &rusqlite::Connection, exempt: Option<(&str, &str)>) -> String {
    use rusqlite::types::ValueRef;
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .and_then(|mut s| {
            s.query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()
        })
        .expect("tables");
    assert!(
        tables.iter().any(|t| t == "oauth_installs"),
        "the store has the OAuth tables: {tables:?}"
    );
    let mut out = String::new();
    for t in &tables {
        let mut s = c
            .prepare(&format!("SELECT * FROM \"{t}\""))
            .expect("select");
        let cols: Vec<String> = s.column_names().into_iter().map(str::to_owned).collect();
        let mut rows = s.query([]).expect("rows");
        while let Some(r) = rows.next().expect("row") {
            for (i, col) in cols.iter().enumerate() {
                if exempt == Some((t.as_str(), col.as_str())) {
                    continue;
                }
                if let ValueRef::Text(b) | ValueRef::Blob(b) = r.get_ref(i).expect("value") {
                    out.push_str(&format!("{t}.{col}: {}\n", String::from_utf8_lossy(b)));
                }
            }
        }
    }
    out
}

/// A `dealsync` command beside the daemon: its exit status and stdout + stderr.
async fn cli(args: &[&str], cfg: &Path, env: &[(&str, String)]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_dealsync"))
        .args(args)
        .arg("--config")
        .arg(cfg)
        .envs(env.iter().cloned())
        .env("DEALSYNC_LOG", "trace")
        .output()
        .await
        .expect("dealsync runs");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

async fn sandbox_json(sb: &dealsync::sandbox::SandboxHandle, path: &str) -> serde_json::Value {
    reqwest::get(format!("{}{path}", sb.base_url))
        .await
        .expect("sandbox control")
        .json()
        .await
        .expect("json")
}

/// What the refresh token column holds now, and the install's state.
async fn stored_install(store: &dealsync::store::Store) -> Option<(String, String)> {
    store
        .call(|c| {
            let r = c.query_row(
                "SELECT refresh_token, state FROM oauth_installs WHERE portal = 'partner-a'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            );
            match r {
                Ok(v) => Ok(Some(v)),
                Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
        .await
        .expect("store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_oauth_secret_code_or_token_reaches_logs_status_metrics_dead_letters_or_the_store() {
    let sb = common::sandbox_with(SandboxConfig {
        rate_limit_per_10s: None,
        daily_limit: None,
        search_per_s: None,
        oauth_token_ttl: Duration::from_secs(2),
        oauth_rotate_refresh: true,
        ..SandboxConfig::default()
    })
    .await;
    let (hs, pa) = (
        common::portal(&sb, "hubspot"),
        common::portal(&sb, "partner-a"),
    );
    common::setup_portals(&sb, &["hubspot", "partner-a"]).await;
    let app = sb.oauth_app();
    let dir = tempfile::tempdir().unwrap();
    let (db, dl) = (
        dir.path().join("dealsync.db"),
        dir.path().join("dead-letters.jsonl"),
    );
    // The client secret comes as a systemd credential.
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("oauth-client-secret"), &app.client_secret).unwrap();
    let port = free_port();
    let callback = format!("http://127.0.0.1:{port}/oauth/callback");
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
auth = "oauth"
webhook_secret_env = "PA_SECRET"
[partners.stage_map]
appointmentscheduled = "appointmentscheduled"
[sync]
poll_interval_ms = 200
poll_overlap_ms = 5000
retry_base_ms = 50
[webhooks]
listen = "127.0.0.1:{port}"
[oauth]
client_id = "{client_id}"
client_secret_credential = "oauth-client-secret"
redirect_url = "{callback}"
authorize_url = "{base}/oauth/authorize"
"#,
            db = db.display(),
            dl = dl.display(),
            base = sb.base_url,
            client_id = app.client_id,
        ),
    )
    .unwrap();
    let env = [
        ("HS_TOKEN", hs.info.token.clone()),
        ("HS_SECRET", hs.info.webhook_secret.clone()),
        ("PA_SECRET", pa.info.webhook_secret.clone()),
        ("CREDENTIALS_DIRECTORY", creds.display().to_string()),
    ];
    let log_path = dir.path().join("daemon.log");
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
    let stderr = daemon.stderr.take().unwrap();
    let (up_tx, up_rx) = tokio::sync::oneshot::channel::<()>();
    let lp = log_path.clone();
    let copier = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut out = String::new();
        let mut tx = Some(up_tx);
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains("listening for webhooks") {
                if let Some(t) = tx.take() {
                    let _ = t.send(());
                }
            }
            out.push_str(&l);
            out.push('\n');
        }
        std::fs::write(lp, out).unwrap();
    });
    tokio::time::timeout(WAIT, up_rx).await.unwrap().unwrap();
    let addr = format!("127.0.0.1:{port}");
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
    let store = dealsync::store::Store::open_alongside(&db).await.unwrap();

    // Every refresh token the store holds and every access token the sandbox issued, sampled
    // while the daemon runs (rotation replaces the one, revocation forgets the other).
    let seen_refresh = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let seen_access = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let sampling = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let (store, sb_url) = (store.clone(), sb.base_url.clone());
        let (refresh, access, stop) = (seen_refresh.clone(), seen_access.clone(), sampling.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            while !stop.is_cancelled() {
                if let Some((rt, _)) = stored_install(&store).await {
                    let mut g = refresh.lock();
                    if !g.contains(&rt) {
                        g.push(rt);
                    }
                }
                let tokens: serde_json::Value = http
                    .get(format!("{sb_url}/_sandbox/oauth/tokens"))
                    .send()
                    .await
                    .expect("tokens")
                    .json()
                    .await
                    .expect("json");
                for t in tokens["access"].as_array().into_iter().flatten() {
                    let Some(v) = t["token"].as_str().filter(|_| t["portal"] == "partner-a") else {
                        continue;
                    };
                    let mut g = access.lock();
                    if !g.iter().any(|s| s == v) {
                        g.push(v.to_owned());
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // The operator prints the link; the partner's admin follows it and comes back.
    let mut seen: Vec<(String, String)> = Vec::new();
    let (ok, link, note) = cli(&["install-link", "--portal", "partner-a"], &cfg, &env).await;
    assert!(ok, "install-link: {note}");
    let link = link.trim().to_owned();
    assert!(
        link.starts_with(&format!("{}/oauth/authorize?", sb.base_url)) && !link.contains('\n'),
        "install-link prints just the link: {link}"
    );
    seen.push(("install-link".into(), format!("{link}\n{note}")));
    let browser = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let approved = browser
        .get(format!("{link}&portal=partner-a"))
        .send()
        .await
        .unwrap();
    assert_eq!(approved.status(), 302, "HubSpot approves and redirects");
    let back = approved.headers()["location"].to_str().unwrap().to_owned();
    assert!(back.starts_with(&callback), "{back}");
    let code = reqwest::Url::parse(&back)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("a code in the redirect");
    let open = |url: String| {
        let browser = browser.clone();
        async move {
            let page = browser.get(url).send().await.expect("callback");
            (
                page.status().as_u16(),
                page.text().await.unwrap_or_default(),
            )
        }
    };
    let (status, page) = open(back.clone()).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("partner-a is installed"), "{page}");
    seen.push(("the install page".into(), page));
    let (first_refresh, state) = stored_install(&store).await.expect("installed");
    assert_eq!(state, "active");
    // Error paths: a made-up state with the real code, the same callback replayed, and the
    // used code with a fresh link's state (so dealsync sends it to HubSpot, which refuses it).
    let (status, page) = open(format!("{callback}?state=made-up&code={code}")).await;
    assert_eq!(status, 400, "{page}");
    seen.push(("the bad-state page".into(), page));
    let (status, page) = open(back.clone()).await;
    assert_eq!(status, 400, "{page}");
    seen.push(("the replayed callback's page".into(), page));
    let (ok, link2, note2) = cli(&["install-link", "--portal", "partner-a"], &cfg, &env).await;
    assert!(ok, "install-link: {note2}");
    seen.push(("install-link again".into(), format!("{link2}{note2}")));
    let state2 = reqwest::Url::parse(link2.trim())
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .expect("a state in the link");
    let (status, page) = open(format!("{callback}?state={state2}&code={code}")).await;
    assert_eq!(status, 400, "HubSpot refuses a used code: {page}");
    seen.push(("the replayed code's page".into(), page));

    // Changes both ways over several token lifetimes, and one dead letter.
    let props = json!({"dealname": "Over OAuth", "dealstage": "appointmentscheduled"});
    let (p, h) = (
        pa.create_deal(props.clone()).await,
        hs.create_deal(props.clone()).await,
    );
    let (p2, h2) = (
        pa.create_deal(props.clone()).await,
        hs.create_deal(props).await,
    );
    for (pd, hd) in [(p.clone(), h.clone()), (p2.clone(), h2.clone())] {
        store
            .call(move |c| dealsync::store::insert_link(c, "partner-a", &pd, &hd, "channel"))
            .await
            .unwrap();
    }
    for i in 0..3 {
        let name = format!("Partner edit {i}");
        common::set_deal(&pa, &p, json!({ "dealname": name })).await;
        common::wait_deal_prop(&hs, &h, "dealname", &name).await;
        let name = format!("HubSpot edit {i}");
        common::set_deal(&hs, &h, json!({ "dealname": name })).await;
        common::wait_deal_prop(&pa, &p, "dealname", &name).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    common::set_deal(&pa, &p2, json!({ "dealstage": "contractsent" })).await;
    common::eventually("the unmapped stage is dead-lettered", WAIT, || async {
        std::fs::read_to_string(&dl)
            .is_ok_and(|t| t.contains("unmapped_stage"))
            .then_some(())
    })
    .await;
    common::eventually("tokens are refreshed and rotated", WAIT, || async {
        let c = sandbox_json(&sb, "/_sandbox/oauth").await;
        (c["refreshes"].as_u64().unwrap_or(0) >= 2 && seen_refresh.lock().len() >= 3).then_some(())
    })
    .await;
    assert_ne!(stored_install(&store).await.unwrap().0, first_refresh);

    // Everything an operator or a scraper can see while the install is live.
    for path in ["/metrics", "/readyz", "/healthz"] {
        let t = reqwest::get(format!("http://{addr}{path}"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        seen.push((format!("{path} (installed)"), t));
    }
    let views: [&[&str]; 5] = [
        &["status"],
        &["status", "--json"],
        &["status", "--deal", p.as_str()],
        &["status", "--json", "--deal", h.as_str()],
        &["check-config"],
    ];
    for args in views {
        let (ok, out, err) = cli(args, &cfg, &env).await;
        assert!(ok, "{args:?}: {err}");
        seen.push((format!("{args:?} (installed)"), out + &err));
    }

    // The partner uninstalls the app: the next refresh is refused and logged.
    let revoked = reqwest::Client::new()
        .post(format!(
            "{}/_sandbox/portals/partner-a/oauth/revoke",
            sb.base_url
        ))
        .send()
        .await
        .unwrap();
    assert!(revoked.status().is_success());
    common::set_deal(&hs, &h, json!({ "dealname": "While uninstalled" })).await;
    common::eventually("the install is marked revoked", WAIT, || async {
        stored_install(&store)
            .await
            .filter(|(_, s)| s == "revoked")
            .map(|_| ())
    })
    .await;
    sampling.cancel();
    sampler.await.unwrap();
    for path in ["/metrics", "/readyz"] {
        let t = reqwest::get(format!("http://{addr}{path}"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        seen.push((format!("{path} (revoked)"), t));
    }
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["status", "--deal", p.as_str()],
    ] {
        let (ok, out, err) = cli(args, &cfg, &env).await;
        assert!(ok, "{args:?}: {err}");
        seen.push((format!("{args:?} (revoked)"), out + &err));
    }

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
    drop(store);
    let log = std::fs::read_to_string(&log_path).unwrap();
    for line in [
        "OAuth install bound",
        "OAuth install refused",
        "HubSpot refused the refresh token",
    ] {
        assert!(log.contains(line), "the daemon logged {line:?}");
    }

    // The secrets, each long enough that finding it means it leaked.
    let mut refresh = seen_refresh.lock().clone();
    // The sampler looks every 100 ms: the refresh token the store kept last may have come
    // after its last look, and the store check below must know it.
    let last: Option<String> = rusqlite::Connection::open(&db).ok().and_then(|c| {
        c.query_row(
            "SELECT refresh_token FROM oauth_installs WHERE portal = 'partner-a'",
            [],
            |r| r.get(0),
        )
        .ok()
    });
    if let Some(t) = last.filter(|t| !refresh.contains(t)) {
        refresh.push(t);
    }
    let access = seen_access.lock().clone();
    assert!(refresh.len() >= 3, "rotations seen: {}", refresh.len());
    assert!(!access.is_empty(), "the daemon was issued access tokens");
    let mut secrets = vec![
        ("client secret".to_owned(), app.client_secret.clone()),
        ("authorization code".to_owned(), code.clone()),
        ("HubSpot token".to_owned(), hs.info.token.clone()),
        (
            "HubSpot webhook secret".to_owned(),
            hs.info.webhook_secret.clone(),
        ),
        (
            "partner webhook secret".to_owned(),
            pa.info.webhook_secret.clone(),
        ),
    ];
    secrets.extend(
        access
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("access token #{i}"), t.clone())),
    );
    let not_refresh = secrets.len();
    secrets.extend(
        refresh
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("refresh token #{i}"), t.clone())),
    );
    for (name, v) in &secrets {
        assert!(
            v.len() >= 16,
            "the {name} is too short to search for: {v:?}"
        );
    }
    // The search finds any of them where one is planted.
    for (name, v) in &secrets {
        let planted = format!("{log}{{\"token\":\"{v}\"}}\n");
        let found = find_secret(&planted, &secrets).map(|(n, _)| n);
        assert_eq!(found, Some(name.as_str()), "a planted {name} is found");
    }
    seen.push(("daemon log".into(), log));
    seen.push((
        "dead-letter file".into(),
        std::fs::read_to_string(&dl).unwrap(),
    ));
    for (what, text) in &seen {
        assert_no_secret(what, text, &secrets);
    }

    // The store: the refresh token column holds one by design; nothing else holds any. Raw
    // pages may keep rotated-away refresh tokens, so the files are searched for the rest.
    for f in [&db, &db.with_extension("db-wal")] {
        if let Ok(bytes) = std::fs::read(f) {
            let what = f.display().to_string();
            assert_no_secret(
                &what,
                &String::from_utf8_lossy(&bytes),
                &secrets[..not_refresh],
            );
        }
    }
    let c = rusqlite::Connection::open(&db).unwrap();
    let everything = store_text(&c, None);
    assert!(
        find_secret(&everything, &secrets).is_some(),
        "the store search reads the refresh token column when not exempted"
    );
    assert_no_secret(
        "the store (but oauth_installs.refresh_token)",
        &store_text(&c, Some(("oauth_installs", "refresh_token"))),
        &secrets,
    );
    drop(c);
    for f in [&db, &dl] {
        assert_owner_only(f);
    }
}
