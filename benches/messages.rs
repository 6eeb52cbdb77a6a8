//! `cargo bench --bench messages` (issue 5).
//!
//! 1. **Throughput and API calls.** 1,000 shared messages with two attachments each (1 KiB
//!    files) on ten linked partner deals are copied to HubSpot's portal on the polling path,
//!    under HubSpot's default limits in the sandbox (100 calls per 10 s per portal, search
//!    5/s) and dealsync's default rate budget. The data is seeded into an unlimited sandbox,
//!    saved, and loaded into the limited one, so seeding costs the daemon nothing. Reported:
//!    every API call both portals answered while the daemon ran, per message, against the
//!    minimum the API allows (per file a signed URL and an upload; per 100 notes a heads read
//!    and a create, which carries the deal association; per 50 a contents read, which asks
//!    for the body's history and HubSpot caps those at 50 inputs; per 200 a search page of the
//!    note poller; per 1,000 an association read on each side), and messages per second until
//!    every pair and file was recorded.
//!    The same again with partner-a on **tag marking** (it refuses custom note properties;
//!    its shared notes start with `#shared`), with 100 private notes beside them on the linked
//!    deals and 100 tagged notes on unlinked deals. Its minimum adds, per 100 notes, one
//!    search for the tag among the deals' notes (the `IN` filter takes 100 ids), and the
//!    contents read doubles as the body read that decides. Reported too: how many note bodies
//!    partner-a served, and how many of them were not shared messages on linked deals (the
//!    private notes' bodies must never be read; a private note without the tag is not a
//!    search candidate).
//! 2. **Memory.** The daemon runs as its own process (`dealsync run`) against the sandbox as
//!    another; after it idles, a shared message with a 50 MB attachment is written, and the
//!    daemon's peak resident memory (VmHWM) while copying it is compared with its idle VmRSS.
//!    Target: under 40 MB above idle (the file streams; it is never held whole).
//!
//! Last line: `{"api_calls_per_message":…,"min_api_calls_per_message":…,"messages_per_s":…,
//! "tag_api_calls_per_message":…,"tag_min_api_calls_per_message":…,"tag_messages_per_s":…,
//! "tag_bodies_read":…,"tag_bodies_read_outside_shared":…,"attachment_peak_rss_over_idle_mb":…}`.

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dealsync::crm::{Budget, CallKind, Client, RetryPolicy};
use dealsync::daemon::{DaemonHandle, DaemonParts, PortalConn};
use dealsync::engine::messages::MessageSettings;
use dealsync::engine::{FieldKind, FieldSpec, Settings};
use dealsync::sandbox::{self, PortalSpec, SandboxConfig};
use dealsync::store;
use serde_json::{json, Value};

const MESSAGES: usize = 1_000;
const DEALS: usize = 10;
const FILES_PER_MESSAGE: usize = 2;
const BIG_FILE: usize = 50 * 1024 * 1024;

fn client(name: &str, base: &str, token: &str) -> Client {
    Client::new(
        name,
        base,
        token,
        Arc::new(Budget::new(100, 4)),
        RetryPolicy::default(),
    )
    .expect("client")
}

async fn upload(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    name: String,
    bytes: Vec<u8>,
) -> String {
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name(name.clone()),
        )
        .text("fileName", name)
        .text("folderPath", "/bench")
        .text("options", r#"{"access":"PRIVATE"}"#);
    let v: Value = http
        .post(format!("{base}/files/v3/files"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("upload answer");
    v["id"].as_str().expect("file id").to_owned()
}

/// How the seeded notes are marked.
#[derive(Clone, Copy, PartialEq)]
enum Mark {
    /// `dealsync_visibility = shared`.
    Property,
    /// The text starts with `#shared`.
    Tag,
    /// Neither: a private note.
    Private,
}

/// Creates notes on deals, 100 per batch call, each with its attachment ids; their ids.
async fn create_notes(c: &Client, notes: &[(String, String)], mark: Mark) -> Vec<String> {
    let mut ids = Vec::new();
    for chunk in notes.chunks(100) {
        let inputs: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(i, (deal, files))| {
                let mut props = json!({
                    "hs_note_body": match mark {
                        Mark::Tag => format!("<p>#shared Shared update {i}</p>"),
                        Mark::Property => format!("<p>Shared update {i}</p>"),
                        Mark::Private => format!("<p>Internal {i}</p>"),
                    },
                    "hs_timestamp": "2026-11-26T10:00:00.000Z",
                    "hs_attachment_ids": files,
                });
                if mark == Mark::Property {
                    props[dealsync::properties::VISIBILITY] = json!("shared");
                }
                json!({
                    "properties": props,
                    "associations": [{ "to": { "id": deal }, "types": [{ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 214 }] }],
                })
            })
            .collect();
        let v = c
            .call(
                reqwest::Method::POST,
                "/crm/v3/objects/notes/batch/create",
                Some(&json!({ "inputs": inputs })),
                CallKind::Ordinary,
            )
            .await
            .expect("batch create notes");
        ids.extend(
            v["results"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["id"].as_str().map(str::to_owned)),
        );
    }
    ids
}

/// The note ids whose bodies a portal served (batch reads and searches).
async fn bodies_served(http: &reqwest::Client, base: &str, portal: &str) -> Vec<String> {
    let v: Value = http
        .get(format!("{base}/_sandbox/portals/{portal}/counters"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["note_bodies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i.as_str().map(str::to_owned))
        .collect()
}

/// One throughput run's figures.
struct Run {
    per_message: f64,
    min: f64,
    rate: f64,
    /// Note bodies partner-a served, and how many were not shared messages on linked deals.
    bodies: usize,
    bodies_outside: usize,
}

fn counted(
    sb: &sandbox::SandboxHandle,
    base: &str,
    http: &reqwest::Client,
) -> impl std::future::Future<Output = u64> {
    let names: Vec<String> = sb.portals.iter().map(|p| p.name.clone()).collect();
    let (base, http) = (base.to_owned(), http.clone());
    async move {
        let mut total = 0;
        for n in names {
            let v: Value = http
                .get(format!("{base}/_sandbox/portals/{n}/counters"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            total += v["total"].as_u64().unwrap_or(0);
        }
        total
    }
}

async fn throughput(tag: bool) -> Run {
    // BENCH_SMOKE (CI): 20 messages instead of 1,000, same code path.
    let messages = support::size(MESSAGES, 20);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("sandbox.json");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    // Seed, unlimited.
    let sb = sandbox::start(SandboxConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        portals: vec![PortalSpec::named("hubspot"), PortalSpec::named("partner-a")],
        rate_limit_per_10s: None,
        daily_limit: None,
        search_per_s: None,
        state_file: Some(state.clone()),
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let (hs_info, pa_info) = (sb.portal("hubspot").clone(), sb.portal("partner-a").clone());
    let hs = client("hubspot", &sb.base_url, &hs_info.token);
    let pa = client("partner-a", &sb.base_url, &pa_info.token);
    if tag {
        sb.set_features("partner-a", sandbox::Features::without_note_features());
    }
    dealsync::setup::ensure(&hs, false, true).await.unwrap();
    dealsync::setup::ensure(&pa, false, !tag).await.unwrap();
    let p_deals = support::create_deals(&pa, DEALS).await;
    let h_deals = support::create_deals(&hs, DEALS).await;
    let mut notes = Vec::new();
    for i in 0..messages {
        let mut ids = Vec::new();
        for f in 0..FILES_PER_MESSAGE {
            ids.push(
                upload(
                    &http,
                    &sb.base_url,
                    &pa_info.token,
                    format!("m{i}-f{f}.txt"),
                    vec![b'x'; 1024],
                )
                .await,
            );
        }
        notes.push((p_deals[i % DEALS].clone(), ids.join(";")));
    }
    let mark = if tag { Mark::Tag } else { Mark::Property };
    let shared: std::collections::HashSet<String> =
        create_notes(&pa, &notes, mark).await.into_iter().collect();
    if tag {
        // Private notes beside them, and tagged notes on deals no link names.
        let private: Vec<(String, String)> = (0..messages / 10)
            .map(|i| (p_deals[i % DEALS].clone(), String::new()))
            .collect();
        create_notes(&pa, &private, Mark::Private).await;
        let unlinked = support::create_deals(&pa, 1).await;
        let elsewhere: Vec<(String, String)> = (0..messages / 10)
            .map(|_| (unlinked[0].clone(), String::new()))
            .collect();
        create_notes(&pa, &elsewhere, Mark::Tag).await;
    }
    sb.shutdown().await;

    // Run, under HubSpot's default limits.
    let sb = sandbox::start(SandboxConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        portals: vec![PortalSpec::named("hubspot"), PortalSpec::named("partner-a")],
        state_file: Some(state),
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    if tag {
        sb.set_features("partner-a", sandbox::Features::without_note_features());
    }
    let db = dir.path().join("dealsync.db");
    let pairs: Vec<(String, String)> = p_deals.into_iter().zip(h_deals).collect();
    support::link_agreed(&db, &pairs).await;
    let conn = |name: &str, token: &str| PortalConn {
        name: name.into(),
        base_url: sb.base_url.clone(),
        token: token.into(),
        rate_limit_per_10s: 100,
        search_per_s: 5,
        api: Default::default(),
        oauth: None,
    };
    let before = counted(&sb, &sb.base_url, &http).await;
    let started = Instant::now();
    let d = DaemonHandle::start(DaemonParts {
        store_path: db.clone(),
        hubspot: conn("hubspot", &hs_info.token),
        partners: vec![conn("partner-a", &pa_info.token)],
        settings: Settings {
            fields: vec![FieldSpec::both_ways(
                "dealname",
                "dealname",
                "dealname",
                FieldKind::Text,
            )],
            stage_maps: HashMap::new(),
            batch_size: 100,
            workers: 4,
            max_attempts: 8,
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
            dead_letter_path: dir.path().join("dl.jsonl"),
            mass_deletion: Default::default(),
            messages: MessageSettings::default(),
            closed_stages: Default::default(),
            registration: Default::default(),
            notify: Default::default(),
        },
        poll_interval: Duration::from_secs(2),
        poll_overlap: Duration::from_secs(600),
        sweep_interval: Duration::from_secs(86_400),
        retry: RetryPolicy::default(),
        drain: Duration::from_secs(20),
        webhooks: None,
    })
    .await
    .unwrap();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (m, f) = d
            .store
            .call(|c| {
                let n = |kind: &str| -> rusqlite::Result<i64> {
                    c.query_row(
                        "SELECT COUNT(*) FROM object_links WHERE kind = ?1 AND state = 'active'",
                        [kind],
                        |r| r.get(0),
                    )
                };
                Ok((n("message")?, n("file")?))
            })
            .await
            .unwrap();
        if m as usize == messages && f as usize == messages * FILES_PER_MESSAGE {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "copying stalled at {m} messages, {f} files"
        );
    }
    let elapsed = started.elapsed().as_secs_f64();
    d.shutdown().await;
    let calls = counted(&sb, &sb.base_url, &http).await - before;
    let n = messages as f64;
    let ceil = |a: usize, b: usize| a.div_ceil(b) as f64;
    // Per 100 notes: the heads read and the create (plus, under tag marking, the search for
    // the tag among the deals' notes, private ones included). The contents read asks for the
    // body's history: HubSpot caps such reads at 50 inputs.
    let notes_on_deals = if tag {
        messages + messages / 10
    } else {
        messages
    };
    let per_hundred = if tag {
        ceil(notes_on_deals, 100) * 2.0 + ceil(messages, 100)
    } else {
        2.0 * ceil(messages, 100)
    };
    let min = (2 * FILES_PER_MESSAGE) as f64
        + (per_hundred
            + ceil(messages, dealsync::crm::HISTORY_BATCH)
            + ceil(notes_on_deals, 200)
            + 2.0 * ceil(messages, 1000))
            / n;
    let served = bodies_served(&http, &sb.base_url, "partner-a").await;
    let outside = served.iter().filter(|id| !shared.contains(*id)).count();
    eprintln!(
        "throughput ({}): {messages} messages, {calls} calls in {elapsed:.1} s; partner-a served {} bodies, {outside} not of shared messages on linked deals",
        if tag { "tag marking" } else { "property marking" },
        served.len()
    );
    Run {
        per_message: calls as f64 / n,
        min,
        rate: n / elapsed,
        bodies: served.len(),
        bodies_outside: outside,
    }
}

fn status_kb(pid: u32, key: &str) -> f64 {
    support::status_mb(pid, key) * 1024.0
}

async fn memory() -> f64 {
    let bin = env!("CARGO_BIN_EXE_dealsync");
    let (_sb, base, tokens) = support::spawn_sandbox("hubspot,partner-a");
    let token = |i: usize| tokens[i].clone();
    let (hs, pa) = (
        client("hubspot", &base, &token(0)),
        client("partner-a", &base, &token(1)),
    );
    for c in [&hs, &pa] {
        dealsync::setup::ensure(c, false, true).await.unwrap();
    }
    let p = support::create_deals(&pa, 1).await;
    let h = support::create_deals(&hs, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("dealsync.db");
    support::link_agreed(&db, &[(p[0].clone(), h[0].clone())]).await;
    let config = format!(
        "[store]\npath = \"{}\"\ndead_letter_path = \"{}\"\n[hubspot]\nbase_url = \"{base}\"\ntoken_env = \"HS_TOKEN\"\n[[partners]]\nname = \"partner-a\"\nbase_url = \"{base}\"\ntoken_env = \"PA_TOKEN\"\n[partners.stage_map]\nqualifiedtobuy = \"qualifiedtobuy\"\n[sync]\npoll_interval_ms = 500\nsweep_interval_ms = 86400000\n",
        db.display(),
        dir.path().join("dl.jsonl").display()
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
    // Idle: both deal pollers have polled again well after start, i.e. a few rounds.
    let after = store::now_ms() + 3_000;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !support::deal_pollers_polled_since(&db, &["hubspot", "partner-a"], after) {
        daemon.assert_running();
        assert!(Instant::now() < deadline, "daemon did not poll");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let idle = status_kb(daemon.id(), "VmRSS:");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let f = upload(
        &http,
        &base,
        &token(1),
        "big.bin".into(),
        // BENCH_SMOKE (CI): 5 MB; still well above what a buffered copy would show.
        vec![0x5a; support::size(BIG_FILE, 5 * 1024 * 1024)],
    )
    .await;
    create_notes(&pa, &[(p[0].clone(), f)], Mark::Property).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let conn = store::open_read_only(&db).unwrap();
        let done: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM object_links WHERE kind = 'file' AND state = 'active'",
                [],
                |r| r.get(0),
            )
            .unwrap_or(0);
        if done == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the big file was not copied");
    }
    let peak = status_kb(daemon.id(), "VmHWM:");
    eprintln!(
        "memory: idle {:.1} MB, peak {:.1} MB",
        idle / 1024.0,
        peak / 1024.0
    );
    (peak - idle) / 1024.0
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let property = rt.block_on(throughput(false));
    let tag = rt.block_on(throughput(true));
    let over_idle = rt.block_on(memory());
    let r = |x: f64| (x * 100.0).round() / 100.0;
    println!(
        "{}",
        support::mark(json!({
            "api_calls_per_message": r(property.per_message),
            "min_api_calls_per_message": r(property.min),
            "messages_per_s": r(property.rate),
            "tag_api_calls_per_message": r(tag.per_message),
            "tag_min_api_calls_per_message": r(tag.min),
            "tag_messages_per_s": r(tag.rate),
            "tag_bodies_read": tag.bodies,
            "tag_bodies_read_outside_shared": tag.bodies_outside,
            "attachment_peak_rss_over_idle_mb": r(over_idle),
        }))
    );
}
