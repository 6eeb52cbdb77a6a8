//! Token soak (issue 15): partner-a installed by OAuth with access tokens that expire every
//! `TOKEN_SOAK_TTL_S` seconds (default 2), rotated refresh tokens, HubSpot's default rate limits
//! on (100 calls / 10 s per portal, search 5/s), and a change every half second alternating
//! sides for `TOKEN_SOAK_S` seconds (default 20). Every change must land; the run reports the
//! refreshes against run time / token lifetime, jobs that failed (retried or dead-lettered),
//! dead letters and 401s.
//!
//! Under `BENCH_SMOKE` (CI) the run lasts 6 s unless `TOKEN_SOAK_S` says otherwise.
//!
//! Prints one JSON object as its last line.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use dealsync::daemon::{DaemonHandle, DaemonParts, PortalConn, WebhookParts};
use dealsync::oauth::{self, OAuthApp};
use dealsync::sandbox::{self, SandboxConfig};
use dealsync::secret::Secret;
use dealsync::store;
use serde_json::{json, Value};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn conn(sb: &sandbox::SandboxHandle, name: &str) -> PortalConn {
    PortalConn {
        name: name.into(),
        base_url: sb.base_url.clone(),
        token: sb.portal(name).token.clone(),
        rate_limit_per_10s: 100,
        search_per_s: 5,
        api: Default::default(),
        oauth: None,
    }
}

async fn get(http: &reqwest::Client, url: &str) -> Value {
    http.get(url)
        .send()
        .await
        .expect("sandbox answers")
        .json()
        .await
        .unwrap_or(Value::Null)
}

async fn deal_name(http: &reqwest::Client, base: &str, token: &str, id: &str) -> String {
    let v: Value = http
        .get(format!(
            "{base}/crm/objects/2026-09/deals/{id}?properties=dealname"
        ))
        .bearer_auth(token)
        .send()
        .await
        .expect("read")
        .json()
        .await
        .unwrap_or(Value::Null);
    v["properties"]["dealname"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

async fn set_name(http: &reqwest::Client, base: &str, token: &str, id: &str, name: &str) {
    let r = http
        .patch(format!("{base}/crm/objects/2026-09/deals/{id}"))
        .bearer_auth(token)
        .header("X-Sandbox-Source", "CRM_UI")
        .json(&json!({ "properties": { "dealname": name } }))
        .send()
        .await
        .expect("edit");
    assert!(r.status().is_success(), "edit answered {}", r.status());
}

async fn create_deal(http: &reqwest::Client, base: &str, token: &str) -> String {
    let v: Value = http
        .post(format!("{base}/crm/objects/2026-09/deals"))
        .bearer_auth(token)
        .json(&json!({ "properties": { "dealname": "Soak" } }))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    v["id"].as_str().expect("id").to_owned()
}

#[tokio::main]
async fn main() {
    let ttl = env_u64("TOKEN_SOAK_TTL_S", 2);
    let run = Duration::from_secs(env_u64("TOKEN_SOAK_S", support::size(20, 6) as u64));
    let sb = sandbox::start(SandboxConfig {
        oauth_token_ttl: Duration::from_secs(ttl),
        oauth_rotate_refresh: true,
        ..SandboxConfig::default()
    })
    .await
    .expect("sandbox");
    for name in ["hubspot", "partner-a"] {
        let c = conn(&sb, name)
            .client(dealsync::crm::RetryPolicy::default(), None)
            .expect("client");
        dealsync::setup::ensure(&c, false, true)
            .await
            .expect("setup");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let creds = sb.oauth_app();
    let app = Arc::new(OAuthApp {
        client_id: creds.client_id,
        client_secret: Secret::new(creds.client_secret),
        redirect_url: format!("http://127.0.0.1:{port}/oauth/callback"),
        authorize_url: format!("{}/oauth/authorize", sb.base_url),
        token_base_url: sb.base_url.clone(),
        scopes: oauth::SCOPES.iter().map(|s| s.to_string()).collect(),
    });
    let mut partner = conn(&sb, "partner-a");
    partner.token = String::new();
    partner.oauth = Some(app.clone());
    // The daemon's defaults, `dealname` both ways.
    let settings = dealsync::engine::Settings {
        fields: vec![dealsync::engine::FieldSpec::both_ways(
            "dealname",
            "dealname",
            "dealname",
            dealsync::engine::FieldKind::Text,
        )],
        stage_maps: Default::default(),
        batch_size: 100,
        workers: 4,
        max_attempts: 8,
        retry_base: Duration::from_millis(500),
        retry_max: Duration::from_secs(60),
        dead_letter_path: dir.path().join("dl.jsonl"),
        mass_deletion: Default::default(),
        messages: Default::default(),
        closed_stages: Default::default(),
        registration: Default::default(),
        notify: Default::default(),
    };
    let d = DaemonHandle::start(DaemonParts {
        store_path: dir.path().join("dealsync.db"),
        hubspot: conn(&sb, "hubspot"),
        partners: vec![partner],
        settings,
        poll_interval: Duration::from_millis(500),
        poll_overlap: Duration::from_secs(5),
        sweep_interval: Duration::from_secs(3600),
        retry: dealsync::crm::RetryPolicy::default(),
        drain: Duration::from_secs(10),
        webhooks: Some(WebhookParts {
            listen: format!("127.0.0.1:{port}").parse().expect("addr"),
            public_url: None,
            max_body: dealsync::ingest::webhook::DEFAULT_MAX_BODY,
            secrets: Default::default(),
            app: Default::default(),
            healthy_poll_interval: Duration::from_millis(500),
            quiet_after: Duration::from_secs(600),
        }),
    })
    .await
    .expect("daemon");

    // partner-a's admin installs the app.
    let browser = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let link = oauth::install_link(&app, &d.store, "partner-a")
        .await
        .expect("link");
    let approved = browser
        .get(format!("{link}&portal=partner-a"))
        .send()
        .await
        .expect("authorize");
    let back = approved.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let page = browser.get(&back).send().await.expect("callback");
    assert_eq!(page.status().as_u16(), 200, "installed");

    let http = reqwest::Client::builder().no_proxy().build().expect("http");
    let base = sb.base_url.clone();
    let (hs_token, pa_token) = (
        sb.portal("hubspot").token.clone(),
        sb.portal("partner-a").token.clone(),
    );
    let pd = create_deal(&http, &base, &pa_token).await;
    let hd = create_deal(&http, &base, &hs_token).await;
    let (p2, h2) = (pd.clone(), hd.clone());
    d.store
        .call(move |c| {
            let l = store::insert_link(c, "partner-a", &p2, &h2, "channel")?;
            store::enqueue_now(c, &[l.id], dealsync::store::JobReason::Manual)
        })
        .await
        .expect("link");

    let started = Instant::now();
    let (mut changes, mut synced) = (0u64, 0u64);
    while started.elapsed() < run {
        let name = format!("Soak {changes}");
        let (from, to, from_id, to_id) = if changes % 2 == 0 {
            (&pa_token, &hs_token, &pd, &hd)
        } else {
            (&hs_token, &pa_token, &hd, &pd)
        };
        set_name(&http, &base, from, from_id, &name).await;
        changes += 1;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if deal_name(&http, &base, to, to_id).await == name {
                synced += 1;
                break;
            }
            // The bench's own reads count against the portal's 100 calls / 10 s like the
            // daemon's: look once a second, so the daemon keeps nine tenths of the budget.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let run_s = started.elapsed().as_secs_f64();
    let counters = get(&http, &format!("{base}/_sandbox/oauth")).await;
    let metrics = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    let failed: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("dealsync_jobs_total{outcome=\"retry")
                || l.starts_with("dealsync_jobs_total{outcome=\"dead_letter")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    let pa_counters = get(
        &http,
        &format!("{base}/_sandbox/portals/partner-a/counters"),
    )
    .await;
    d.shutdown().await;
    let dead = dealsync::deadletter::read_all(&dir.path().join("dl.jsonl"))
        .map(|f| f.entries.len())
        .unwrap_or(0);
    let refreshes = counters["refreshes"].as_u64().unwrap_or(0);
    let expected = run_s / ttl as f64;
    let out = json!({
        "bench": "token_soak",
        "run_s": (run_s * 10.0).round() / 10.0,
        "token_ttl_s": ttl,
        "changes": changes,
        "synced": synced,
        "refreshes": refreshes,
        "expected_refreshes": (expected * 10.0).round() / 10.0,
        "refresh_ratio": if expected > 0.0 { ((refreshes as f64 / expected) * 100.0).round() / 100.0 } else { 0.0 },
        "failed_jobs": failed,
        "dead_letters": dead,
        "partner_http_429": pa_counters["http_429"].as_u64().unwrap_or(0),
    });
    println!("{}", support::mark(out));
}
