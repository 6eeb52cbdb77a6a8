//! The OAuth app's single webhook target (`POST /webhooks`), end to end against the sandbox
//! over loopback: one target carries the changes of HubSpot's portal and a partner's (each
//! event naming its `portalId`) and both sync with polling out of the picture; a delivery
//! mixing portals is split and each part accepted as its own path would; a delivery signed with
//! a portal's secret instead of the app's is refused and stores nothing; events for a portal id
//! nobody configured are counted in `/metrics` and queue nothing; an OAuth portal's id, learned
//! when it installs while the daemon runs, routes its events from then on; and the per-portal
//! path keeps working beside it.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dealsync::daemon::{AppWebhooks, DaemonHandle, PortalConn, WebhookParts};
use dealsync::oauth::{self, OAuthApp};
use dealsync::secret::Secret;
use dealsync::signature;
use dealsync::store::{self, Store};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);
/// Longer than any test: a poll or sweep never helps.
const NEVER: Duration = Duration::from_secs(3600);

struct World {
    duo: common::Duo,
    app: Arc<OAuthApp>,
}

impl std::ops::Deref for World {
    type Target = common::Duo;
    fn deref(&self) -> &common::Duo {
        &self.duo
    }
}

impl World {
    async fn new() -> World {
        let duo = common::Duo::new().await;
        let creds = duo.sb.oauth_app();
        let app = Arc::new(OAuthApp {
            client_id: creds.client_id,
            client_secret: Secret::new(creds.client_secret),
            // The test opens the callback on the listener itself (see `install`), so the port
            // here is only the text both ends of the exchange agree on.
            redirect_url: "http://127.0.0.1:9/oauth/callback".into(),
            authorize_url: format!("{}/oauth/authorize", duo.sb.base_url),
            token_base_url: duo.sb.base_url.clone(),
            scopes: oauth::SCOPES.iter().map(|s| s.to_string()).collect(),
        });
        // Search stops seeing changes for ten minutes: only webhooks can carry them.
        for p in [&duo.hs, &duo.pa] {
            p.set_faults(json!({"search_lag_ms": 600_000})).await;
        }
        World { duo, app }
    }

    fn portal_id(&self, name: &str) -> u64 {
        self.sb.portal(name).portal_id
    }

    /// A daemon with both portals' own paths (their secrets) and the app's target. Static
    /// portals in `by_id` are routed by their portal id; `oauth_partner` makes partner-a
    /// authenticate through its install instead of its token.
    async fn start(&self, by_id: &[&str], oauth_partner: bool) -> DaemonHandle {
        let mut partner = common::conn(&self.sb, "partner-a");
        if oauth_partner {
            partner.token = String::new();
            partner.oauth = Some(self.app.clone());
        }
        let hubspot: PortalConn = common::conn(&self.sb, "hubspot");
        let mut parts = common::parts(
            self.dir.path(),
            hubspot,
            vec![partner],
            common::settings(self.dir.path()),
        );
        parts.poll_interval = NEVER;
        parts.sweep_interval = NEVER;
        parts.webhooks = Some(WebhookParts {
            listen: "127.0.0.1:0".parse().expect("loopback"),
            public_url: None,
            max_body: dealsync::ingest::webhook::DEFAULT_MAX_BODY,
            secrets: [&self.hs, &self.pa]
                .iter()
                .map(|p| (p.info.name.clone(), p.info.webhook_secret.clone()))
                .collect(),
            app: AppWebhooks {
                oauth: Some(self.app.clone()),
                portal_ids: by_id
                    .iter()
                    .map(|n| (n.to_string(), self.portal_id(n)))
                    .collect(),
            },
            healthy_poll_interval: NEVER,
            quiet_after: Duration::from_secs(600),
        });
        DaemonHandle::start(parts).await.expect("daemon")
    }

    /// Points the sandbox app's single target at the listener (`None`: back to each
    /// portal's own target).
    async fn app_target(&self, url: Option<String>) {
        let a = reqwest::Client::new()
            .put(format!("{}/_sandbox/oauth/webhooks", self.sb.base_url))
            .json(&json!({ "target_url": url }))
            .send()
            .await
            .expect("control");
        assert_eq!(a.status(), 200, "{}", a.text().await.unwrap_or_default());
    }

    /// A deal in each portal, linked, agreed on `name`.
    async fn linked_pair(&self, store: &Store, name: &str) -> (String, String) {
        let p = self.pa.create_deal(json!({ "dealname": name })).await;
        let h = self.hs.create_deal(json!({ "dealname": name })).await;
        let (p2, h2, n) = (p.clone(), h.clone(), name.to_owned());
        store
            .call(move |c| {
                let l = store::insert_link(c, "partner-a", &p2, &h2, "channel")?;
                c.execute(
                    "INSERT INTO shadows (link_id, field, value, updated_at) VALUES (?1, 'dealname', ?2, 0)",
                    rusqlite::params![l.id, n],
                )?;
                Ok(())
            })
            .await
            .expect("link");
        (p, h)
    }

    /// Installs the app in partner-a by its link, as the partner's admin would; the callback
    /// is opened on the daemon's listener.
    async fn install(&self, d: &DaemonHandle) {
        let link = oauth::install_link(&self.app, &d.store, "partner-a")
            .await
            .expect("link");
        let browser = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let approved = browser
            .get(format!("{link}&portal=partner-a"))
            .send()
            .await
            .expect("authorize");
        assert_eq!(approved.status(), 302, "HubSpot approves and redirects");
        let back = approved
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .and_then(|l| reqwest::Url::parse(l).ok())
            .expect("redirect location");
        let addr = d.webhook_addr.expect("listener");
        let page = browser
            .get(format!(
                "http://{addr}{}?{}",
                back.path(),
                back.query().unwrap_or("")
            ))
            .send()
            .await
            .expect("callback");
        let status = page.status();
        assert_eq!(status, 200, "{}", page.text().await.unwrap_or_default());
    }
}

async fn count(store: &Store, sql: &'static str) -> i64 {
    store
        .call(move |c| Ok(c.query_row(sql, [], |r| r.get(0))?))
        .await
        .expect("count")
}

/// Jobs queued or already run.
async fn jobs(store: &Store) -> i64 {
    count(store, "SELECT COUNT(*) FROM jobs").await
        + count(store, "SELECT COUNT(*) FROM job_history").await
}

/// A `dealname` change of `deal` as HubSpot sends it for `portal_id`.
fn event(event_id: u64, portal_id: u64, deal: &str, value: &str) -> Value {
    json!({
        "eventId": event_id, "subscriptionId": 1, "portalId": portal_id, "appId": 1,
        "occurredAt": store::now_ms(), "subscriptionType": "deal.propertyChange",
        "attemptNumber": 0, "objectId": deal.parse::<u64>().expect("deal id"),
        "propertyName": "dealname", "propertyValue": value, "changeSource": "CRM_UI"
    })
}

/// Posts `events` to `path` on the listener, signed with `secret`; the status and body.
async fn deliver(addr: SocketAddr, path: &str, secret: &str, events: &[Value]) -> (u16, String) {
    let url = format!("http://{addr}{path}");
    let body = serde_json::to_vec(events).expect("json");
    let ts = store::now_ms();
    let r = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .header("X-HubSpot-Request-Timestamp", ts.to_string())
        .header(
            "X-HubSpot-Signature-v3",
            signature::sign_v3(secret, "POST", &url, &body, ts),
        )
        .body(body)
        .send()
        .await
        .expect("deliver");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// The value of an unlabelled sample in `/metrics`.
async fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// What the sandbox delivered for a portal: (requests answered 2xx, all requests).
async fn deliveries(p: &common::Portal) -> (u64, u64) {
    let a = p
        .control(reqwest::Method::GET, "/webhooks/deliveries", None)
        .await;
    let ok = a.body["deliveries"].as_array().map_or(0, |d| {
        d.iter().filter(|d| d["outcome"] == "delivered").count()
    });
    (ok as u64, a.body["stats"]["requests"].as_u64().unwrap_or(0))
}

#[tokio::test]
async fn one_app_target_carries_both_portals_changes() {
    let w = World::new().await;
    let d = w.start(&["hubspot", "partner-a"], false).await;
    let addr = d.webhook_addr.expect("listener");
    let (p1, h1) = w.linked_pair(&d.store, "Partner side").await;
    let (p2, h2) = w.linked_pair(&d.store, "HubSpot side").await;
    w.app_target(Some(format!("http://{addr}/webhooks"))).await;

    common::set_deal(&w.pa, &p1, json!({"dealname": "Renamed by partner"})).await;
    common::set_deal(&w.hs, &h2, json!({"dealname": "Renamed in HubSpot"})).await;
    common::wait_deal_prop(&w.hs, &h1, "dealname", "Renamed by partner").await;
    common::wait_deal_prop(&w.pa, &p2, "dealname", "Renamed in HubSpot").await;

    // Both came through the app's target: each portal's events are in its own inbox, and
    // the sandbox delivered them (to the one URL) with success.
    for portal in ["hubspot", "partner-a"] {
        let n = d
            .store
            .call(move |c| {
                Ok(c.query_row(
                    "SELECT COUNT(*) FROM webhook_events WHERE portal = ?1",
                    [portal],
                    |r| r.get::<_, i64>(0),
                )?)
            })
            .await
            .expect("count");
        assert!(n >= 1, "{portal}'s events reached its inbox");
    }
    for p in [&w.hs, &w.pa] {
        let (ok, all) = deliveries(p).await;
        assert!(
            ok >= 1 && ok == all,
            "{}: {ok} of {all} delivered",
            p.info.name
        );
    }
    assert_eq!(
        metric(addr, "dealsync_webhook_events_unrouted_total").await,
        Some(0.0)
    );

    // Back to the per-portal path: the sandbox's own targets, signed with each portal's secret.
    w.app_target(None).await;
    let a =
        w.pa.control(
            reqwest::Method::PUT,
            "/webhooks",
            Some(json!({ "target_url": format!("http://{addr}/webhooks/partner-a") })),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    common::set_deal(&w.pa, &p1, json!({"dealname": "Own path again"})).await;
    common::wait_deal_prop(&w.hs, &h1, "dealname", "Own path again").await;
    d.shutdown().await;
}

#[tokio::test]
async fn a_mixed_delivery_is_split_and_unknown_portals_are_counted_and_dropped() {
    let w = World::new().await;
    let d = w.start(&["hubspot", "partner-a"], false).await;
    let addr = d.webhook_addr.expect("listener");
    let (p, h) = w.linked_pair(&d.store, "Mixed").await;
    let secret = w.app.client_secret.expose().to_owned();
    let (hs_id, pa_id) = (w.portal_id("hubspot"), w.portal_id("partner-a"));
    let nobody = 999_999_999;
    assert!(nobody != hs_id && nobody != pa_id);

    // Signed with a portal's secret, not the app's: refused, nothing stored.
    let (status, body) = deliver(
        addr,
        "/webhooks",
        &w.pa.info.webhook_secret,
        &[event(1, pa_id, &p, "Forged")],
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        count(&d.store, "SELECT COUNT(*) FROM webhook_events").await,
        0
    );
    assert_eq!(jobs(&d.store).await, 0);

    // Only a portal nobody configured (about a deal id that is linked in partner-a, so
    // routing it there would queue a job): counted, dropped, still 204.
    let (status, body) = deliver(
        addr,
        "/webhooks",
        &secret,
        &[event(2, nobody, &p, "Stray"), event(3, nobody, &p, "Stray")],
    )
    .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(
        count(&d.store, "SELECT COUNT(*) FROM webhook_events").await,
        0
    );
    assert_eq!(jobs(&d.store).await, 0);
    assert_eq!(
        metric(addr, "dealsync_webhook_events_unrouted_total").await,
        Some(2.0)
    );

    // One delivery, three portals: each known part lands in its portal's inbox.
    let (status, body) = deliver(
        addr,
        "/webhooks",
        &secret,
        &[
            event(10, pa_id, &p, "Mixed from partner"),
            event(11, nobody, &p, "Stray"),
            event(12, hs_id, &h, "Mixed from HubSpot"),
        ],
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let inbox = d
        .store
        .call(|c| {
            let mut st =
                c.prepare("SELECT portal, event_id FROM webhook_events ORDER BY event_id")?;
            let rows =
                st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
        .expect("inbox");
    assert_eq!(
        inbox,
        vec![
            ("partner-a".to_owned(), "10".to_owned()),
            ("hubspot".to_owned(), "12".to_owned()),
        ]
    );
    assert_eq!(
        metric(addr, "dealsync_webhook_events_unrouted_total").await,
        Some(3.0)
    );
    // Both parts queue the link: the inbox dedupes per link, so at least one job.
    common::eventually("the link's job ran", WAIT, || async {
        (count(&d.store, "SELECT COUNT(*) FROM job_history").await >= 1).then_some(())
    })
    .await;

    // A retry of the same delivery is dropped as duplicates, like on the portal's own path.
    let before = count(&d.store, "SELECT COUNT(*) FROM webhook_events").await;
    let (status, _) = deliver(
        addr,
        "/webhooks",
        &secret,
        &[event(10, pa_id, &p, "Mixed from partner")],
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(
        count(&d.store, "SELECT COUNT(*) FROM webhook_events").await,
        before
    );

    // The per-portal path, beside it, is unchanged: its own secret, its own portal.
    let (status, body) = deliver(
        addr,
        "/webhooks/partner-a",
        &w.pa.info.webhook_secret,
        &[event(20, 1, &p, "Own path")],
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let (status, _) = deliver(
        addr,
        "/webhooks/partner-a",
        &secret,
        &[event(21, 1, &p, "Own path")],
    )
    .await;
    assert_eq!(
        status, 401,
        "the app's secret does not sign a portal's own path"
    );
    d.shutdown().await;
}

#[tokio::test]
async fn an_oauth_portal_is_routed_by_the_id_its_install_learned() {
    let w = World::new().await;
    // HubSpot's portal by its configured id; partner-a only through its install.
    let d = w.start(&["hubspot"], true).await;
    let addr = d.webhook_addr.expect("listener");
    let (p, h) = w.linked_pair(&d.store, "Before install").await;
    w.app_target(Some(format!("http://{addr}/webhooks"))).await;

    // Not installed yet: partner-a's id routes nowhere.
    common::set_deal(&w.pa, &p, json!({"dealname": "Too early"})).await;
    common::eventually(
        "the uninstalled portal's event is counted",
        WAIT,
        || async {
            (metric(addr, "dealsync_webhook_events_unrouted_total").await >= Some(1.0))
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        count(
            &d.store,
            "SELECT COUNT(*) FROM webhook_events WHERE portal = 'partner-a'"
        )
        .await,
        0
    );

    // Installed while running: the next change is routed by the learned hub id and syncs.
    w.install(&d).await;
    common::set_deal(&w.pa, &p, json!({"dealname": "After install"})).await;
    common::wait_deal_prop(&w.hs, &h, "dealname", "After install").await;
    assert!(
        count(
            &d.store,
            "SELECT COUNT(*) FROM webhook_events WHERE portal = 'partner-a'"
        )
        .await
            >= 1
    );
    d.shutdown().await;
}

/// The config side: `portal_id` on static portals reaches the app target's routing, an OAuth
/// portal's budget defaults to HubSpot's 110 per 10 s per install, and ambiguous ids are
/// refused naming the key.
mod config {
    use std::collections::HashMap;

    use dealsync::config::Config;

    const BASE: &str = r#"
[store]
path = "/tmp/x.db"
dead_letter_path = "/tmp/x.jsonl"
[hubspot]
base_url = "http://127.0.0.1:1"
token_env = "HS"
HUBSPOT_EXTRA
[[partners]]
name = "p"
base_url = "http://127.0.0.1:1"
PARTNER_EXTRA
[partners.stage_map]
a = "b"
[oauth]
client_id = "cid"
client_secret_env = "CS"
redirect_url = "https://sync.example.com/oauth/callback"
[webhooks]
listen = "127.0.0.1:0"
public_url = "https://sync.example.com"
"#;

    fn load(hubspot: &str, partner: &str) -> Result<Config, String> {
        let text = BASE
            .replace("HUBSPOT_EXTRA", hubspot)
            .replace("PARTNER_EXTRA", partner);
        let env = HashMap::from([
            ("HS".to_owned(), "hs-token".to_owned()),
            ("PT".to_owned(), "pt-token".to_owned()),
            ("CS".to_owned(), "client-secret-value".to_owned()),
        ]);
        Config::from_toml_str(&text, &env).map_err(|e| e.to_string())
    }

    #[test]
    fn static_portal_ids_route_the_app_target_and_oauth_budgets_default_to_110() {
        let c = load("portal_id = 42", "auth = \"oauth\"").expect("loads");
        assert_eq!(c.hubspot.portal_id, Some(42));
        assert_eq!(
            c.hubspot.rate_limit_per_10s, 100,
            "a static token keeps 100"
        );
        assert_eq!(c.partners[0].portal.rate_limit_per_10s, 110);
        let w = dealsync::daemon::DaemonParts::from_config(&c)
            .webhooks
            .expect("listener");
        assert_eq!(
            w.app.portal_ids,
            HashMap::from([("hubspot".to_owned(), 42)])
        );
        assert!(w.app.oauth.is_some(), "the app signs POST /webhooks");

        // An explicit budget wins over the OAuth default.
        let c = load("", "auth = \"oauth\"\nrate_limit_per_10s = 50").expect("loads");
        assert_eq!(c.partners[0].portal.rate_limit_per_10s, 50);
    }

    #[test]
    fn ambiguous_or_misplaced_portal_ids_are_refused_naming_the_key() {
        let e = load("portal_id = 7", "token_env = \"PT\"\nportal_id = 7").unwrap_err();
        assert!(
            e.contains("partners[0].portal_id") && e.contains("hubspot"),
            "{e}"
        );
        let e = load("", "auth = \"oauth\"\nportal_id = 7").unwrap_err();
        assert!(
            e.contains("partners[0].portal_id") && e.contains("install"),
            "{e}"
        );
        let e = load("portal_id = 0", "auth = \"oauth\"").unwrap_err();
        assert!(e.contains("hubspot.portal_id"), "{e}");
    }
}
