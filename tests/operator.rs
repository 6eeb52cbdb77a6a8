//! The operator surface through the real binary: `dealsync status` (table and JSON, overview
//! and `--deal`) while the daemon runs, on a store and dead-letter file produced by a real run
//! with injected faults; `dealsync replay` of a dead letter whose cause was fixed; a torn
//! dead-letter line; and replay never running a job the daemon holds.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::Command;

use dealsync::config::Config;
use dealsync::daemon::DaemonHandle;
use dealsync::sandbox::SandboxHandle;
use dealsync::store::{self, Store};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

struct World {
    sb: SandboxHandle,
    hs: common::Portal,
    pa: common::Portal,
    dir: tempfile::TempDir,
}

impl World {
    async fn new() -> World {
        let sb = common::sandbox().await;
        let hs = common::portal(&sb, "hubspot");
        let pa = common::portal(&sb, "partner-a");
        World {
            hs,
            pa,
            sb,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("dealsync.db")
    }

    fn dead_letters(&self) -> PathBuf {
        self.dir.path().join("dead-letters.jsonl")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("dealsync.toml")
    }

    /// Writes the config; `decisionmakerboughtin` is mapped only when `fixed`.
    fn write_config(&self, fixed: bool) {
        self.write_config_with(fixed, "");
    }

    /// [`World::write_config`] with more `[sync]` lines.
    fn write_config_with(&self, fixed: bool, sync: &str) {
        let extra = if fixed {
            "decisionmakerboughtin = \"decisionmakerboughtin\"\n"
        } else {
            ""
        };
        let text = format!(
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
appointmentscheduled = "appointmentscheduled"
qualifiedtobuy = "qualifiedtobuy"
contractsent = "contractsent"
{extra}
[sync]
poll_interval_ms = 200
poll_overlap_ms = 5000
retry_base_ms = 50
retry_max_ms = 500
max_attempts = 8
{sync}
[fields.dealname]
partner_property = "dealname"
hubspot_property = "dealname"

[fields.dealstage]
partner_property = "dealstage"
hubspot_property = "dealstage"
kind = "stage"
"#,
            db = self.db().display(),
            dl = self.dead_letters().display(),
            base = self.sb.base_url,
        );
        std::fs::write(self.config_path(), text).expect("write config");
    }

    fn env(&self) -> HashMap<String, String> {
        HashMap::from([
            ("HS_TOKEN".to_owned(), self.hs.info.token.clone()),
            ("PA_TOKEN".to_owned(), self.pa.info.token.clone()),
        ])
    }

    fn config(&self) -> Config {
        Config::load_with(&self.config_path(), &self.env()).expect("config")
    }

    /// Runs the real binary with the tokens in its environment. Async: the sandbox it talks
    /// to runs on this test's runtime.
    async fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_dealsync"))
            .args(args)
            .arg("--config")
            .arg(self.config_path())
            .envs(self.env())
            .env("DEALSYNC_LOG", "warn")
            .output()
            .await
            .expect("run dealsync")
    }

    async fn linked_pair(&self, store: &Store, name: &str) -> (String, String, i64) {
        let props = json!({"dealname": name, "dealstage": "appointmentscheduled"});
        let p = self.pa.create_deal(props.clone()).await;
        let h = self.hs.create_deal(props).await;
        let (p2, h2) = (p.clone(), h.clone());
        let link = store
            .call(move |c| store::insert_link(c, "partner-a", &p2, &h2, "channel"))
            .await
            .expect("link");
        (p, h, link.id)
    }
}

async fn prop(p: &common::Portal, id: &str, name: &str) -> Option<String> {
    let a = p
        .get(&format!("/crm/v3/objects/deals/{id}?properties={name}"))
        .await;
    (a.status == 200)
        .then(|| a.body["properties"][name].as_str().map(str::to_owned))
        .flatten()
}

async fn wait_prop(p: &common::Portal, id: &str, name: &str, want: &str) {
    common::eventually(
        &format!("{name} of {id} in {} becomes {want}", p.info.name),
        WAIT,
        || async { (prop(p, id, name).await.as_deref() == Some(want)).then_some(()) },
    )
    .await
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json_of(o: &std::process::Output) -> Value {
    assert!(
        o.status.success(),
        "exit {:?}: {}{}",
        o.status,
        stdout(o),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("status --json is JSON")
}

fn append_torn_line(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open dead letters");
    f.write_all(b"{\"id\":\"torn-by-a-cra").expect("write");
}

#[tokio::test]
async fn status_and_replay_after_a_real_run_with_faults() {
    let w = World::new().await;
    w.write_config(false);
    let d = DaemonHandle::start(dealsync::daemon::DaemonParts::from_config(&w.config()))
        .await
        .expect("daemon");
    let (p1, h1, _) = w.linked_pair(&d.store, "Healthy deal").await;
    let (p2, h2, link2) = w.linked_pair(&d.store, "Stuck deal").await;
    w.pa.patch(
        &format!("/crm/v3/objects/deals/{p1}"),
        json!({"properties": {"dealname": "Healthy deal, renamed"}}),
    )
    .await;
    w.pa.patch(
        &format!("/crm/v3/objects/deals/{p2}"),
        json!({"properties": {"dealstage": "decisionmakerboughtin"}}),
    )
    .await;
    // Transient faults on both portals while the daemon works: retried, never dead-lettered.
    for p in [&w.pa, &w.hs] {
        p.set_faults(json!({"rate_500": 0.1, "rate_503": 0.1}))
            .await;
    }
    wait_prop(&w.hs, &h1, "dealname", "Healthy deal, renamed").await;
    common::eventually("the unmapped stage is dead-lettered", WAIT, || async {
        let f = dealsync::deadletter::read_all(&w.dead_letters()).ok()?;
        (f.entries.iter().any(|e| e.class == "unmapped_stage")).then_some(())
    })
    .await;
    for p in [&w.pa, &w.hs] {
        let a = p.control(reqwest::Method::DELETE, "/faults", None).await;
        assert!(a.status < 300, "clear faults: {}", a.text);
    }

    // Status while the daemon runs: JSON overview.
    let s = json_of(&w.cli(&["status", "--json"]).await);
    assert_eq!(s["format"], 1);
    assert_eq!(s["links"]["total"], 2);
    assert_eq!(s["links"]["by_state"]["active"], 2);
    assert_eq!(s["links"]["by_deal_type"]["channel"], 2);
    assert_eq!(s["dead_letters"]["open"], 1, "{s}");
    assert_eq!(s["dead_letters"]["by_class"][0]["class"], "unmapped_stage");
    assert_eq!(s["dead_letters"]["by_class"][0]["newest"]["link_id"], link2);
    assert!(
        s["dead_letters"]["by_class"][0]["newest"]["error"]
            .as_str()
            .unwrap()
            .contains("decisionmakerboughtin"),
        "{s}"
    );
    let portals: Vec<&str> = s["portals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        portals.contains(&"hubspot") && portals.contains(&"partner-a"),
        "{s}"
    );
    // The table fits 80 columns and names what to do.
    let table = w.cli(&["status"]).await;
    assert!(table.status.success());
    let text = stdout(&table);
    for line in text.lines() {
        assert!(line.chars().count() <= 80, "too wide: {line:?}");
    }
    assert!(text.contains("unmapped_stage"), "{text}");
    assert!(text.contains("dealsync replay"), "{text}");

    // One deal's picture, with current values read from both portals.
    let deal = json_of(&w.cli(&["status", "--json", "--deal", &h2]).await);
    let link = &deal["links"][0];
    assert_eq!(link["partner_deal_id"], p2.as_str());
    let stage = link["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["field"] == "dealstage")
        .expect("dealstage field");
    assert_eq!(stage["partner_value"], "decisionmakerboughtin");
    assert_eq!(stage["hubspot_value"], "appointmentscheduled");
    assert_eq!(link["dead_letters"][0]["class"], "unmapped_stage");
    assert!(
        link["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["outcome"] == "dead_letter"),
        "{link}"
    );
    let deal_table = stdout(&w.cli(&["status", "--deal", &p2, "--offline"]).await);
    assert!(
        deal_table.contains(&format!("LINK {link2}")),
        "{deal_table}"
    );

    // A crash mid-append leaves a torn line: status and replay warn and go on.
    append_torn_line(&w.dead_letters());
    let s = json_of(&w.cli(&["status", "--json"]).await);
    assert_eq!(s["dead_letters"]["warnings"].as_array().unwrap().len(), 1);
    assert_eq!(s["dead_letters"]["open"], 1);

    // Replaying before the fix fails again, says so, and leaves the entry open.
    let dry = w.cli(&["replay", "--all", "--dry-run"]).await;
    assert!(dry.status.success());
    assert!(stdout(&dry).contains("would replay"), "{}", stdout(&dry));
    let failed = w.cli(&["replay", "--all"]).await;
    assert_eq!(failed.status.code(), Some(69), "{}", stdout(&failed));
    assert!(stdout(&failed).contains("FAILED"), "{}", stdout(&failed));
    assert!(
        stdout(&failed).contains("decisionmakerboughtin"),
        "{}",
        stdout(&failed)
    );
    let f = dealsync::deadletter::read_all(&w.dead_letters()).unwrap();
    assert!(!f.replays.is_empty(), "the failed replay is marked");
    assert!(f.replays.values().all(|m| !m.ok));
    assert!(
        f.open().count() >= 2,
        "the entry stays open, and the re-run's own failure is a new entry"
    );

    // Fix the map and restart the daemon with it (it has no hot reload), then replay.
    w.write_config(true);
    d.shutdown().await;
    let d = DaemonHandle::start(dealsync::daemon::DaemonParts::from_config(&w.config()))
        .await
        .expect("daemon restarts");
    let open_before = dealsync::deadletter::read_all(&w.dead_letters())
        .unwrap()
        .open()
        .count();
    let r = w.cli(&["replay", "--class", "unmapped_stage"]).await;
    assert!(
        r.status.success(),
        "{}{}",
        stdout(&r),
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(
        stdout(&r).contains(&format!("{open_before} replayed, 0 failed")),
        "{}",
        stdout(&r)
    );
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("unreadable line"),
        "the torn line is reported"
    );
    wait_prop(&w.hs, &h2, "dealstage", "decisionmakerboughtin").await;
    let f = dealsync::deadletter::read_all(&w.dead_letters()).unwrap();
    assert!(f.open().count() == 0, "{:?}", f.replays);
    let s = json_of(&w.cli(&["status", "--json"]).await);
    assert_eq!(s["dead_letters"]["open"], 0);
    assert_eq!(s["dead_letters"]["total"], f.entries.len());
    // Nothing left to replay.
    let again = w.cli(&["replay", "--all"]).await;
    assert!(again.status.success());
    assert!(stdout(&again).contains("nothing to replay"));
    // An unknown id is a usage error naming the id.
    let bad = w.cli(&["replay", "--id", "no-such-entry"]).await;
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no-such-entry"));
    d.shutdown().await;
}

#[tokio::test]
async fn replay_leaves_a_job_the_daemon_holds_alone() {
    let w = World::new().await;
    let store = Store::open(&w.db()).await.expect("store");
    let (_, _, link) = w.linked_pair(&store, "Held").await;
    store
        .call(move |c| store::enqueue_now(c, &[link], dealsync::store::JobReason::Poll))
        .await
        .unwrap();
    // A daemon worker claims it…
    let held = store
        .call(|c| store::claim_jobs(c, 10, store::now_ms() + 1))
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    // …so replay cannot; a link with no job (or a pending one) can be claimed.
    let (_, _, other) = w.linked_pair(&store, "Free").await;
    let claimed = store
        .call(move |c| store::claim_links(c, &[link, other], store::JobReason::Replay))
        .await
        .unwrap();
    let ids: Vec<i64> = claimed.iter().map(|j| j.link_id).collect();
    assert_eq!(ids, vec![other]);
    // Claiming again finds it running too.
    let again = store
        .call(move |c| store::claim_links(c, &[other], store::JobReason::Replay))
        .await
        .unwrap();
    assert!(again.is_empty());
}

#[tokio::test]
async fn status_without_a_store_says_what_to_do() {
    let w = World::new().await;
    w.write_config(false);
    let o = w.cli(&["status"]).await;
    assert_eq!(o.status.code(), Some(69));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no store at"), "{err}");
    assert!(err.contains("has the daemon run yet"), "{err}");
}

#[tokio::test]
async fn mass_deletion_guard_holds_bulk_deletions_until_resume() {
    let w = World::new().await;
    // Deletions never show in search: the reconciliation sweep finds them, here every 300 ms.
    w.write_config_with(true, "sweep_interval_ms = 300");
    let d = DaemonHandle::start(dealsync::daemon::DaemonParts::from_config(&w.config()))
        .await
        .expect("daemon");
    let mut pairs = Vec::new();
    for i in 0..12 {
        pairs.push(w.linked_pair(&d.store, &format!("Deal {i}")).await);
    }
    let state = |id: i64| {
        let st = d.store.clone();
        async move {
            st.call(move |c| {
                Ok(
                    c.query_row("SELECT state FROM links WHERE id = ?1", [id], |r| {
                        r.get::<_, String>(0)
                    })?,
                )
            })
            .await
            .unwrap()
        }
    };
    // One deal deleted: within the limit (max(10, 20% of 12)), the sweep orphans its link.
    let a =
        w.pa.delete(&format!("/crm/v3/objects/deals/{}", pairs[0].0))
            .await;
    assert_eq!(a.status, 204);
    let first = pairs[0].2;
    common::eventually(
        "the sweep orphans a single deleted deal's link",
        WAIT,
        || async { (state(first).await == "orphaned").then_some(()) },
    )
    .await;
    // Then 10 more in one call (a wiped portal looks like this): past the limit, so the guard
    // trips when the sweep sees them, and every one of them is held, links still active.
    let bulk: Vec<i64> = pairs[1..11].iter().map(|p| p.2).collect();
    let inputs: Vec<_> = pairs[1..11].iter().map(|p| json!({"id": p.0})).collect();
    let a =
        w.pa.post(
            "/crm/v3/objects/deals/batch/archive",
            json!({ "inputs": inputs }),
        )
        .await;
    assert_eq!(a.status, 204, "{}", a.text);
    common::eventually("the sweep trips the guard", WAIT, || async {
        let s = json_of(&w.cli(&["status", "--json"]).await);
        s["portals"]
            .as_array()?
            .iter()
            .any(|p| p["name"] == "partner-a" && p["deletion_guard"].is_string())
            .then_some(())
    })
    .await;
    // Later passes keep holding them.
    let held = || {
        let st = d.store.clone();
        let b = bulk.clone();
        async move {
            st.call(move |c| {
                Ok(c.query_row(
                    &format!(
                        "SELECT COUNT(*) FROM job_history WHERE link_id = {} AND outcome LIKE 'held:%'",
                        b[0]
                    ),
                    [],
                    |r| r.get::<_, i64>(0),
                )?)
            })
            .await
            .unwrap()
        }
    };
    common::eventually("two sweeps held the bulk deletions", WAIT, || async {
        (held().await >= 2).then_some(())
    })
    .await;
    for id in &bulk {
        assert_eq!(state(*id).await, "active", "link {id} held");
    }
    let s = json_of(&w.cli(&["status", "--json"]).await);
    let guard = s["portals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "partner-a")
        .and_then(|p| p["deletion_guard"].as_str())
        .expect("status shows the guard")
        .to_owned();
    assert!(
        guard.contains("dealsync resume --portal partner-a"),
        "{guard}"
    );
    let table = stdout(&w.cli(&["status"]).await);
    assert!(
        table.contains("mass-deletion guard holds deletions"),
        "{table}"
    );
    // The operator checks the portal and releases it: the held deletions go through.
    let r = w.cli(&["resume", "--portal", "partner-a"]).await;
    assert!(r.status.success());
    assert!(stdout(&r).contains("released"), "{}", stdout(&r));
    // The next sweep lets them through.
    for id in &bulk {
        let id = *id;
        common::eventually("released deletions orphan their links", WAIT, || async {
            (state(id).await == "orphaned").then_some(())
        })
        .await;
    }
    let s = json_of(&w.cli(&["status", "--json"]).await);
    assert!(s["portals"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["deletion_guard"].is_null()));
    // The untouched link is still active.
    assert_eq!(state(pairs[11].2).await, "active");
    d.shutdown().await;
}
