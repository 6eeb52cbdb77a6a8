//! `dealsync probe` and the probe `setup` runs first (issue 17 item 1), as an operator runs
//! them: the real binary against the sandbox on 127.0.0.1, once as a portal with every note
//! feature and once as one without (`/_sandbox/portals/{name}/features`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::Portal;
use dealsync::sandbox::SandboxHandle;
use serde_json::{json, Value};

const CONFIG_EXIT: i32 = 78;

fn config(dir: &Path, base: &str, extra: &str, hubspot_rate: u32) -> PathBuf {
    let path = dir.join("dealsync.toml");
    std::fs::write(
        &path,
        format!(
            r#"[store]
path = "{db}"
dead_letter_path = "{dl}"
[hubspot]
base_url = "{base}"
token_env = "HS_TOKEN"
webhook_secret_env = "HS_SECRET"
rate_limit_per_10s = {hubspot_rate}
[[partners]]
name = "partner-a"
base_url = "{base}"
token_env = "PA_TOKEN"
[partners.stage_map]
qualifiedtobuy = "qualifiedtobuy"
{extra}
"#,
            db = dir.join("dealsync.db").display(),
            dl = dir.join("dl.jsonl").display(),
        ),
    )
    .unwrap();
    path
}

async fn dealsync(sb: &SandboxHandle, args: &[&str]) -> Output {
    dealsync_with(sb, args, &sb.oauth_app().developer_key).await
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// What the probe may leave behind: nothing live. Notes it wrote are archived, temporary
/// properties archived, files deleted. Returns how many probe files the portal has seen.
async fn assert_nothing_left(p: &Portal) -> usize {
    let state = p.control(reqwest::Method::GET, "/state", None).await.body;
    let files: Vec<&Value> = state["data"]["files"]
        .as_object()
        .expect("the state lists files")
        .values()
        .filter(|f| {
            f["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("dealsync-probe"))
        })
        .collect();
    assert!(
        files.iter().all(|f| !f["archived_ms"].is_null()),
        "probe files left live: {files:?}"
    );
    let notes = p.get("/crm/v3/objects/notes?limit=100").await;
    let live: Vec<&Value> = notes.body["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| {
            n["properties"]["hs_note_body"]
                .as_str()
                .is_some_and(|b| b.contains("dealsync probe"))
        })
        .collect();
    assert!(live.is_empty(), "probe notes left live: {live:?}");
    let props = p.get("/crm/v3/properties/notes").await.body.to_string()
        + &p.get("/crm/v3/properties/deals").await.body.to_string();
    assert!(
        !props.contains("dealsync_probe_"),
        "a temporary property is still live"
    );
    files.len()
}

fn checks(json: &Value) -> Vec<(String, String, String, bool)> {
    json["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| {
            (
                c["portal"].as_str().unwrap_or_default().to_owned(),
                c["capability"].as_str().unwrap_or_default().to_owned(),
                c["verdict"].as_str().unwrap_or_default().to_owned(),
                c["required"].as_bool().unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_portal_with_every_feature_is_ready_and_the_probe_leaves_nothing_live() {
    let sb = common::sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &sb.base_url, "", 100);
    let cfg = cfg.to_str().unwrap();

    let o = dealsync(&sb, &["probe", "--config", cfg, "--json"]).await;
    let out = stdout(&o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let json: Value = serde_json::from_str(&out).expect("probe --json prints JSON");
    assert_eq!(json["ready"], true);
    let all = checks(&json);
    for (portal, cap, verdict, required) in &all {
        if *required {
            assert_eq!(verdict, "ok", "{portal} {cap}");
        }
    }
    for cap in [
        "note_properties",
        "unique_note_property",
        "note_upsert",
        "files",
        "rate_limits",
    ] {
        for portal in ["hubspot", "partner-a"] {
            assert!(
                all.iter()
                    .any(|c| c.0 == portal && c.1 == cap && c.2 == "ok"),
                "{portal} {cap}: {all:?}"
            );
        }
    }
    assert!(all.iter().any(|c| c.0 == "hubspot" && c.1 == "read_quotes"));
    assert!(!all
        .iter()
        .any(|c| c.0 == "partner-a" && c.1 == "read_quotes"));
    for name in ["hubspot", "partner-a"] {
        let files = assert_nothing_left(&common::portal(&sb, name)).await;
        assert_eq!(
            files, 1,
            "{name}: the file check uploaded one file (and deleted it)"
        );
    }

    // Setup probes first, then creates what dealsync needs.
    let o = dealsync(&sb, &["setup", "--config", cfg]).await;
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let pa = common::portal(&sb, "partner-a");
    let origin = pa
        .get(&format!(
            "/crm/v3/properties/notes/{}",
            dealsync::properties::ORIGIN
        ))
        .await;
    assert_eq!(origin.status, 200);

    // Once dealsync's note properties exist, the probe checks them instead of creating.
    let before = pa.counters().await["writes"].as_u64().unwrap_or(0);
    let o = dealsync(&sb, &["probe", "--config", cfg, "--portal", "partner-a"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("dealsync's note properties exist"),
        "{}",
        stdout(&o)
    );
    let writes = pa.counters().await["writes"].as_u64().unwrap_or(0) - before;
    // A note created and archived, one upserted and archived, a file uploaded and deleted.
    assert!(writes <= 6, "{writes} writes");
    assert!(
        !stdout(&o).contains("hubspot |"),
        "--portal probes one portal"
    );
}

#[tokio::test]
async fn a_portal_without_note_features_falls_back_to_tags_unless_property_marking_is_asked_for() {
    let sb = common::sandbox().await;
    let pa = common::portal(&sb, "partner-a");
    let set = pa
        .control(
            reqwest::Method::PUT,
            "/features",
            Some(json!({ "note_properties": false, "note_unique_properties": false, "note_upsert": false })),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.text);
    let dir = tempfile::tempdir().unwrap();
    let row = |table: &str, cap: &str| {
        table
            .lines()
            .find(|l| l.starts_with("partner-a") && l.contains(cap))
            .unwrap_or_else(|| panic!("no {cap} row: {table}"))
            .to_owned()
    };

    // Property marking asked for: the portal cannot run it, and setup stops with the table.
    let cfg = config(
        dir.path(),
        &sb.base_url,
        "[messages]\nmarking = \"property\"",
        100,
    );
    let cfg = cfg.to_str().unwrap();
    let o = dealsync(&sb, &["probe", "--config", cfg]).await;
    let table = stdout(&o);
    assert_eq!(o.status.code(), Some(CONFIG_EXIT), "{table}");
    assert!(
        row(&table, "custom note properties").contains("| missing"),
        "{table}"
    );
    assert!(
        row(&table, "unique-value note property").contains("missing (optional)"),
        "{table}"
    );
    assert!(
        row(&table, "batch upsert of notes").contains("unchecked (optional)"),
        "{table}"
    );
    assert!(
        row(&table, "custom note properties").contains("marking = \"auto\""),
        "the row says what to do: {table}"
    );
    assert!(
        table
            .lines()
            .filter(|l| l.starts_with("hubspot "))
            .all(|l| !l.contains("| missing")),
        "HubSpot's portal has every feature: {table}"
    );
    let o = dealsync(&sb, &["setup", "--config", cfg]).await;
    assert_eq!(o.status.code(), Some(CONFIG_EXIT));
    assert!(
        stdout(&o).contains("custom note properties"),
        "setup prints the table"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("setup created nothing"));
    for name in ["hubspot", "partner-a"] {
        let p = common::portal(&sb, name);
        let a = p
            .get(&format!(
                "/crm/v3/properties/deals/{}",
                dealsync::properties::INTRO_NOTE
            ))
            .await;
        assert_eq!(a.status, 404, "{name}: setup created nothing");
        assert_nothing_left(&p).await;
    }

    // The default, auto: the portal's messages are marked by tag, and setup goes ahead.
    let cfg = config(dir.path(), &sb.base_url, "", 100);
    let cfg = cfg.to_str().unwrap();
    let o = dealsync(&sb, &["probe", "--config", cfg]).await;
    let table = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{table}");
    assert!(
        row(&table, "custom note properties").contains("missing (optional)"),
        "{table}"
    );
    assert!(
        row(&table, "shared message marking").contains("tag: the portal refuses custom note properties, so notes whose text starts with #shared are shared"),
        "{table}"
    );
    let o = dealsync(&sb, &["setup", "--config", cfg]).await;
    let said = stdout(&o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{said}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(said.contains("partner-a: shared messages: tag"), "{said}");
    assert!(
        said.contains("hubspot: shared messages: property"),
        "{said}"
    );
    let note_prop = |p: &Portal| {
        let p = p.clone();
        async move {
            p.get(&format!(
                "/crm/v3/properties/notes/{}",
                dealsync::properties::ORIGIN
            ))
            .await
            .status
        }
    };
    assert_eq!(
        note_prop(&pa).await,
        404,
        "no note property is tried on partner-a"
    );
    assert_eq!(note_prop(&common::portal(&sb, "hubspot")).await, 200);
    let intro = pa
        .get(&format!(
            "/crm/v3/properties/deals/{}",
            dealsync::properties::INTRO_NOTE
        ))
        .await;
    assert_eq!(intro.status, 200, "deal properties are made");

    // Without shared messages the note features are not needed at all.
    let cfg = config(dir.path(), &sb.base_url, "[messages]\nenabled = false", 100);
    let o = dealsync(&sb, &["probe", "--config", cfg.to_str().unwrap()]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}

#[tokio::test]
async fn a_missing_scope_and_a_budget_above_the_limit_are_named() {
    let sb = common::sandbox().await;
    let hs = common::portal(&sb, "hubspot");
    hs.set_faults(json!({
        "burst_count": 10, "burst_status": 403,
        "paths": ["/crm/objects/2026-09/quotes"],
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &sb.base_url, "", 190);
    let o = dealsync(
        &sb,
        &[
            "probe",
            "--config",
            cfg.to_str().unwrap(),
            "--portal",
            "hubspot",
            "--json",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(CONFIG_EXIT), "{}", stdout(&o));
    let json: Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    assert_eq!(json["ready"], false);
    let find = |cap: &str| {
        json["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["capability"] == cap)
            .cloned()
            .unwrap_or_else(|| panic!("no {cap}"))
    };
    let quotes = find("read_quotes");
    assert_eq!(quotes["verdict"], "missing");
    assert!(
        quotes["seen"].as_str().unwrap().contains("MISSING_SCOPES"),
        "HubSpot's words: {quotes}"
    );
    let limits = find("rate_limits");
    assert_eq!(limits["verdict"], "missing", "{limits}");
    assert!(
        limits["seen"]
            .as_str()
            .unwrap()
            .contains("100 calls / 10 s"),
        "{limits}"
    );
    assert_eq!(find("read_deals")["verdict"], "ok");
    assert!(
        !stdout(&o).contains(&sb.portal("hubspot").token),
        "no token in the probe's output"
    );
}

#[tokio::test]
async fn an_unknown_portal_and_an_unreachable_one_say_what_to_do() {
    let sb = common::sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &sb.base_url, "", 100);
    let o = dealsync(
        &sb,
        &[
            "probe",
            "--config",
            cfg.to_str().unwrap(),
            "--portal",
            "nobody",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(64));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no portal named nobody"), "{err}");

    // Nothing listens on port 1: every check is unknown, and the exit says try again.
    let cfg = config(
        dir.path(),
        "http://127.0.0.1:1",
        "[sync]\nrequest_timeout_ms = 2000\nretry_max_ms = 100\nretry_base_ms = 50",
        100,
    );
    let o = dealsync(&sb, &["probe", "--config", cfg.to_str().unwrap()]).await;
    let table = stdout(&o);
    assert_eq!(o.status.code(), Some(69), "{table}");
    assert!(
        table.lines().skip(1).all(|l| !l.contains("| ok ")),
        "nothing is ok when nothing answers: {table}"
    );
    assert!(
        table.contains("token accepted") && table.contains("unchecked"),
        "{table}"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("try again"));
}

#[tokio::test]
async fn the_apps_webhook_subscriptions_are_read_with_the_developer_key_and_compared() {
    let sb = common::sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let app = sb.oauth_app();
    let extra = format!(
        "[webhooks]\nlisten = \"127.0.0.1:0\"\npublic_url = \"https://dealsync.example.com\"\n[app]\nid = \"{}\"\ndeveloper_key_env = \"DEV_KEY\"\n",
        app.app_id
    );
    let cfg = config(dir.path(), &sb.base_url, &extra, 100);
    let env: std::collections::HashMap<String, String> = [
        ("HS_TOKEN", sb.portal("hubspot").token.clone()),
        ("PA_TOKEN", sb.portal("partner-a").token.clone()),
        ("HS_SECRET", sb.portal("hubspot").webhook_secret.clone()),
        ("DEV_KEY", app.developer_key.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let config = dealsync::config::Config::load_with(&cfg, &env).expect("config");
    let wanted = dealsync::project::subscriptions(&config);
    assert!(wanted.len() > 8, "{wanted:?}");
    let as_listed = |s: &dealsync::project::Subscription, active: bool| {
        let mut v = json!({ "eventType": s.event_type, "active": active });
        if let Some(p) = &s.property {
            v["propertyName"] = json!(p);
        }
        if let Some(t) = s.object_type_id {
            v["objectTypeId"] = json!(t);
        }
        v
    };
    let hs = common::portal(&sb, "hubspot");
    let set = |list: Vec<Value>| {
        let hs = hs.clone();
        async move {
            let a = hs
                .http
                .put(format!("{}/_sandbox/oauth/subscriptions", hs.base))
                .json(&json!({ "results": list }))
                .send()
                .await
                .unwrap();
            assert!(a.status().is_success());
        }
    };
    let row = |o: &Output| -> Value {
        let json: Value = serde_json::from_str(&stdout(o)).expect("JSON");
        json["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["capability"] == "webhook_subscriptions")
            .cloned()
            .expect("a webhook subscriptions row")
    };
    let cfg = cfg.to_str().unwrap();

    // One missing, one paused: named, and optional (the exit stays 0: polling still works).
    let mut listed: Vec<Value> = wanted[1..].iter().map(|s| as_listed(s, true)).collect();
    listed[0]["active"] = json!(false);
    set(listed).await;
    let o = dealsync(&sb, &["probe", "--config", cfg, "--json"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let r = row(&o);
    assert_eq!(r["verdict"], "missing", "{r}");
    assert_eq!(r["required"], false);
    assert_eq!(r["portal"], format!("app {}", app.app_id));
    let seen = r["seen"].as_str().unwrap();
    assert!(
        seen.contains(&format!("missing: {}", wanted[0].label())),
        "{seen}"
    );
    assert!(
        seen.contains(&format!("paused: {}", wanted[1].label())),
        "{seen}"
    );
    assert!(
        !stdout(&o).contains(&app.developer_key),
        "no developer key in the output"
    );

    // All there and active.
    set(wanted.iter().map(|s| as_listed(s, true)).collect()).await;
    let o = dealsync(&sb, &["probe", "--config", cfg, "--json"]).await;
    assert_eq!(row(&o)["verdict"], "ok", "{}", stdout(&o));

    // A wrong key is refused, and says so without the key.
    let bad = dealsync_with(&sb, &["probe", "--config", cfg, "--json"], "not-the-key").await;
    let r = row(&bad);
    assert_eq!(r["verdict"], "missing", "{r}");
    assert!(r["seen"].as_str().unwrap().contains("401"), "{r}");
    assert!(!stdout(&bad).contains("not-the-key"));
}

async fn dealsync_with(sb: &SandboxHandle, args: &[&str], dev_key: &str) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_dealsync"));
    cmd.args(args)
        .env("HS_TOKEN", &sb.portal("hubspot").token)
        .env("PA_TOKEN", &sb.portal("partner-a").token)
        .env("HS_SECRET", &sb.portal("hubspot").webhook_secret)
        .env("DEV_KEY", dev_key)
        .env("DEALSYNC_LOG", "warn");
    cmd.output().await.expect("run dealsync")
}
