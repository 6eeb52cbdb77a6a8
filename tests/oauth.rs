//! One project app installed by OAuth (issue 15 item 3), end to end against the sandbox as
//! HubSpot's OAuth server: a partner installs the app from dealsync's install link, the
//! listener binds the install, and the daemon syncs over access tokens that expire every
//! couple of seconds; a revoked install holds the partner's work (no dead letter) until the
//! partner installs again; bad callbacks install nothing and say what to do.

mod common;

use std::sync::Arc;
use std::time::Duration;

use dealsync::daemon::{DaemonHandle, WebhookParts};
use dealsync::oauth::{self, OAuthApp};
use dealsync::sandbox::{SandboxConfig, SandboxHandle};
use dealsync::secret::Secret;
use dealsync::store::{self, InstallState, Store};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

/// A port nothing listens on right now, for a redirect URL that must be known before the
/// listener starts.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

struct World {
    sb: SandboxHandle,
    hs: common::Portal,
    pa: common::Portal,
    dir: tempfile::TempDir,
    app: Arc<OAuthApp>,
    port: u16,
    browser: reqwest::Client,
}

impl World {
    async fn new(ttl: Duration, rotate: bool) -> World {
        let sb = common::sandbox_with(SandboxConfig {
            rate_limit_per_10s: None,
            daily_limit: None,
            search_per_s: None,
            oauth_token_ttl: ttl,
            oauth_rotate_refresh: rotate,
            ..SandboxConfig::default()
        })
        .await;
        common::setup_portals(&sb, &["hubspot", "partner-a"]).await;
        let creds = sb.oauth_app();
        let port = free_port();
        let app = Arc::new(OAuthApp {
            client_id: creds.client_id,
            client_secret: Secret::new(creds.client_secret),
            redirect_url: format!("http://127.0.0.1:{port}/oauth/callback"),
            authorize_url: format!("{}/oauth/authorize", sb.base_url),
            token_base_url: sb.base_url.clone(),
            scopes: oauth::SCOPES.iter().map(|s| s.to_string()).collect(),
        });
        World {
            hs: common::portal(&sb, "hubspot"),
            pa: common::portal(&sb, "partner-a"),
            sb,
            dir: tempfile::tempdir().expect("tempdir"),
            app,
            port,
            browser: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
        }
    }

    /// A daemon where partner-a authenticates through its OAuth install (HubSpot's portal
    /// keeps a static token).
    async fn start(&self) -> DaemonHandle {
        self.start_with(dealsync::crm::ApiVersions::default(), true)
            .await
    }

    /// A daemon on `api`, with partner-a on its OAuth install or (`oauth` false) on its
    /// static token.
    async fn start_with(&self, api: dealsync::crm::ApiVersions, oauth: bool) -> DaemonHandle {
        let mut hubspot = common::conn(&self.sb, "hubspot");
        let mut partner = common::conn(&self.sb, "partner-a");
        hubspot.api = api;
        partner.api = api;
        if oauth {
            partner.token = String::new();
            partner.oauth = Some(self.app.clone());
        }
        let mut parts = common::parts(
            self.dir.path(),
            hubspot,
            vec![partner],
            common::settings(self.dir.path()),
        );
        parts.webhooks = Some(WebhookParts {
            listen: format!("127.0.0.1:{}", self.port).parse().expect("addr"),
            public_url: None,
            max_body: dealsync::ingest::webhook::DEFAULT_MAX_BODY,
            secrets: Default::default(),
            app: Default::default(),
            healthy_poll_interval: Duration::from_millis(200),
            quiet_after: Duration::from_secs(600),
        });
        DaemonHandle::start(parts).await.expect("daemon")
    }

    /// What the partner's admin sees after opening `link` and picking `portal`: the status
    /// and text of dealsync's page (after HubSpot's redirect).
    async fn install(&self, link: &str, portal: &str) -> (u16, String) {
        let approved = self
            .browser
            .get(format!("{link}&portal={portal}"))
            .send()
            .await
            .expect("authorize");
        assert_eq!(
            approved.status().as_u16(),
            302,
            "HubSpot approves and redirects"
        );
        let back = approved
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .expect("redirect location")
            .to_owned();
        assert!(back.starts_with(&self.app.redirect_url), "{back}");
        self.open(&back).await
    }

    async fn open(&self, url: &str) -> (u16, String) {
        let page = self.browser.get(url).send().await.expect("callback");
        let status = page.status().as_u16();
        (status, page.text().await.unwrap_or_default())
    }

    async fn oauth_counters(&self) -> Value {
        reqwest::get(format!("{}/_sandbox/oauth", self.sb.base_url))
            .await
            .expect("counters")
            .json()
            .await
            .expect("json")
    }

    /// A linked deal pair, first synced.
    async fn pair(&self, store: &Store) -> (String, String) {
        let props = json!({ "dealname": "Over OAuth" });
        let p = self.pa.create_deal(props.clone()).await;
        let h = self.hs.create_deal(props).await;
        let (p2, h2) = (p.clone(), h.clone());
        let link = store
            .call(move |c| store::insert_link(c, "partner-a", &p2, &h2, "channel"))
            .await
            .expect("link");
        let id = link.id;
        store
            .call(move |c| store::enqueue_now(c, &[id], dealsync::store::JobReason::Manual))
            .await
            .expect("enqueue");
        common::eventually("the first sync", WAIT, || async {
            let sh = store.call(move |c| store::shadows(c, &[id])).await.ok()?;
            sh.get(&id)
                .is_some_and(|m| m.contains_key("dealname"))
                .then_some(())
        })
        .await;
        (p, h)
    }
}

async fn install_state(store: &Store) -> Option<(u64, InstallState, String)> {
    store
        .call(|c| store::install(c, "partner-a"))
        .await
        .expect("store")
        .map(|i| (i.hub_id, i.state, i.refresh_token))
}

#[tokio::test]
async fn a_partner_installs_by_link_and_syncs_over_expiring_tokens() {
    let w = World::new(Duration::from_secs(2), true).await;
    let d = w.start().await;
    let link = oauth::install_link(&w.app, &d.store, "partner-a")
        .await
        .expect("link");
    assert!(link.contains("code_challenge_method=S256"), "{link}");
    let (status, page) = w.install(&link, "partner-a").await;
    assert_eq!(status, 200, "{page}");
    let hub_id = w.sb.portal("partner-a").portal_id;
    assert!(
        page.contains(&format!("partner-a is installed (HubSpot portal {hub_id})")),
        "{page}"
    );
    let (bound, state, first_refresh) = install_state(&d.store).await.expect("install kept");
    assert_eq!((bound, state), (hub_id, InstallState::Active));

    // Changes flow both ways for longer than several token lifetimes.
    let (p, h) = w.pair(&d.store).await;
    for i in 0..4 {
        let name = format!("Partner edit {i}");
        common::set_deal(&w.pa, &p, json!({ "dealname": name })).await;
        common::wait_deal_prop(&w.hs, &h, "dealname", &name).await;
        let name = format!("HubSpot edit {i}");
        common::set_deal(&w.hs, &h, json!({ "dealname": name })).await;
        common::wait_deal_prop(&w.pa, &p, "dealname", &name).await;
    }
    let c = w.oauth_counters().await;
    assert_eq!(c["exchanges"], 1, "{c}");
    assert!(
        c["refreshes"].as_u64().unwrap_or(0) >= 2,
        "tokens were refreshed: {c}"
    );
    // Rotation is on: the refresh token the store holds now is not the first one, and it
    // still works (the daemon persisted each rotation before using its access token).
    let (_, state, now_refresh) = install_state(&d.store).await.expect("install");
    assert_eq!(state, InstallState::Active);
    assert_ne!(
        now_refresh, first_refresh,
        "the rotated refresh token was persisted"
    );
    let dl = w.dir.path().join("dl.jsonl");
    d.shutdown().await;
    let dead = dealsync::deadletter::read_all(&dl)
        .map(|f| f.entries.len())
        .unwrap_or(0);
    assert_eq!(dead, 0, "no job failed over token expiry");
}

#[tokio::test]
async fn a_revoked_install_holds_the_partners_work_until_it_is_installed_again() {
    let w = World::new(Duration::from_secs(1800), false).await;
    let d = w.start().await;
    let link = oauth::install_link(&w.app, &d.store, "partner-a")
        .await
        .expect("link");
    assert_eq!(w.install(&link, "partner-a").await.0, 200);
    let (p, h) = w.pair(&d.store).await;
    common::wait_deal_prop(&w.pa, &p, "dealname", "Over OAuth").await;

    // The partner uninstalls the app; HubSpot's portal keeps changing the deal.
    let revoked = reqwest::Client::new()
        .post(format!(
            "{}/_sandbox/portals/partner-a/oauth/revoke",
            w.sb.base_url
        ))
        .send()
        .await
        .expect("revoke");
    assert!(revoked.status().is_success());
    common::set_deal(&w.hs, &h, json!({ "dealname": "While uninstalled" })).await;
    common::eventually("the install is marked revoked", WAIT, || async {
        matches!(
            install_state(&d.store).await,
            Some((_, InstallState::Revoked, _))
        )
        .then_some(())
    })
    .await;
    let dl = w.dir.path().join("dl.jsonl");
    let dead = dealsync::deadletter::read_all(&dl)
        .map(|f| f.entries.len())
        .unwrap_or(0);
    assert_eq!(dead, 0, "held, not dead-lettered");
    // The operator sees it, and what to do, in status and metrics.
    let status = common::overview(w.dir.path()).await;
    let pa = status
        .portals
        .iter()
        .find(|p| p.name == "partner-a")
        .expect("partner-a in status");
    assert_eq!(pa.auth.as_deref(), Some("auth_revoked"));
    let table = dealsync::status::render(&status);
    assert!(
        table.contains("dealsync install-link --portal partner-a"),
        "{table}"
    );
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", w.port))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("dealsync_auth_revoked{portal=\"partner-a\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dealsync_auth_revoked{portal=\"hubspot\"} 0"),
        "{metrics}"
    );
    assert_eq!(
        common::deal_prop(&w.pa, &p, "dealname").await.as_deref(),
        Some("Over OAuth")
    );

    // Installing again releases the held change.
    let link = oauth::install_link(&w.app, &d.store, "partner-a")
        .await
        .expect("link");
    assert_eq!(w.install(&link, "partner-a").await.0, 200);
    common::wait_deal_prop(&w.pa, &p, "dealname", "While uninstalled").await;
    d.shutdown().await;
    let dead = dealsync::deadletter::read_all(&dl)
        .map(|f| f.entries.len())
        .unwrap_or(0);
    assert_eq!(dead, 0);
}

#[tokio::test]
async fn bad_callbacks_install_nothing_and_say_what_to_do() {
    let w = World::new(Duration::from_secs(1800), false).await;
    let d = w.start().await;
    let cb = &w.app.redirect_url;

    let (status, page) = w.open(&format!("{cb}?state=made-up&code=x")).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("unknown, already used or expired"), "{page}");
    let (status, page) = w.open(cb).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("open the install link again"), "{page}");
    let (status, page) = w
        .open(&format!("{cb}?error=access_denied&error_description=no"))
        .await;
    assert_eq!(status, 400, "{page}");
    assert!(install_state(&d.store).await.is_none(), "nothing installed");

    // HubSpot's token endpoint fails: the admin may simply try again.
    let link = oauth::install_link(&w.app, &d.store, "partner-a")
        .await
        .expect("link");
    let approved = w
        .browser
        .get(format!("{link}&portal=partner-a"))
        .send()
        .await
        .expect("authorize");
    let back = approved.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let faults = reqwest::Client::new()
        .put(format!("{}/_sandbox/oauth/faults", w.sb.base_url))
        .json(&json!({ "status": 503, "count": 1, "garbage": 1 }))
        .send()
        .await
        .expect("faults");
    assert!(faults.status().is_success());
    // A 5xx, then a 200 whose body is not JSON: neither installs, neither uses up the link.
    for what in ["a 503", "garbage"] {
        let (status, page) = w.open(&back).await;
        assert_eq!(status, 502, "{what}: {page}");
        assert!(page.contains("token endpoint failed"), "{what}: {page}");
        assert!(install_state(&d.store).await.is_none(), "{what}");
    }
    let (status, page) = w.open(&back).await;
    assert_eq!(
        status, 200,
        "the same callback works once HubSpot answers: {page}"
    );
    // ... and a replay of it installs nothing more.
    let (status, page) = w.open(&back).await;
    assert_eq!(status, 400, "{page}");

    // An install from an account already bound to another portal is refused.
    let link = oauth::install_link(&w.app, &d.store, "hubspot")
        .await
        .expect("link");
    let (status, page) = w.install(&link, "partner-a").await;
    assert_eq!(status, 409, "{page}");
    assert!(page.contains("already installed as partner-a"), "{page}");
    d.shutdown().await;
}

/// Migration (issue 15 item 8): a deployment on the legacy paths with a static token moves to
/// 2026-09 and OAuth; its link, shadows, cursors and a job queued while it was down survive,
/// and the first sync afterwards records no conflict.
#[tokio::test]
async fn moving_from_legacy_tokens_to_dated_oauth_keeps_links_shadows_cursors_and_jobs() {
    let w = World::new(Duration::from_secs(1800), false).await;
    let legacy = dealsync::crm::ApiVersions::all(dealsync::crm::ApiVersion::Legacy);
    let d = w.start_with(legacy, false).await;
    let (p, h) = w.pair(&d.store).await;
    common::wait_deal_prop(&w.pa, &p, "dealname", "Over OAuth").await;
    common::set_deal(&w.pa, &p, json!({ "dealname": "Before the move" })).await;
    common::wait_deal_prop(&w.hs, &h, "dealname", "Before the move").await;
    let before = snapshot(&d.store).await;
    assert_eq!(before.2, 0, "no conflict before the move");
    d.shutdown().await;

    // While dealsync is down for the upgrade, a change is queued for the link.
    let store = Store::open(&w.dir.path().join("dealsync.db"))
        .await
        .expect("store");
    let link_id = before.0;
    store
        .call(move |c| store::enqueue_now(c, &[link_id], dealsync::store::JobReason::Manual))
        .await
        .expect("enqueue");
    drop(store);
    common::set_deal(&w.hs, &h, json!({ "dealname": "During the move" })).await;

    let d = w.start().await;
    let link = oauth::install_link(&w.app, &d.store, "partner-a")
        .await
        .expect("link");
    assert_eq!(w.install(&link, "partner-a").await.0, 200);
    common::wait_deal_prop(&w.pa, &p, "dealname", "During the move").await;
    let after = snapshot(&d.store).await;
    assert_eq!(after.0, before.0, "the same link");
    assert!(
        after.1 >= before.1,
        "cursors never move back: {before:?} -> {after:?}"
    );
    let conflicts = d
        .store
        .call(move |c| store::conflicts_for(c, link_id))
        .await
        .expect("conflicts");
    assert_eq!(
        after.2, 0,
        "no conflict: the shadows carried over: {conflicts:?}"
    );
    d.shutdown().await;
}

/// (link id, partner-a's cursor, conflicts recorded) of the only link.
async fn snapshot(store: &Store) -> (i64, i64, usize) {
    store
        .call(|c| {
            let id: i64 = c.query_row("SELECT id FROM links", [], |r| r.get(0))?;
            let cursor = store::cursor(c, "partner-a")?.unwrap_or(0);
            let conflicts = store::conflicts_for(c, id)?.len();
            Ok((id, cursor, conflicts))
        })
        .await
        .expect("snapshot")
}
