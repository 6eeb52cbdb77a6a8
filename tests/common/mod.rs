//! Shared helpers for integration tests: start a sandbox in-process on 127.0.0.1:0, talk to
//! one of its portals, and wait on conditions with a deadline instead of sleeping.
#![allow(dead_code)]

pub mod notes;
pub mod scan;

use std::future::Future;
use std::time::{Duration, Instant};

use dealsync::sandbox::{self, PortalInfo, SandboxConfig, SandboxHandle};
use serde_json::Value;

/// Starts a sandbox with the default portals and HubSpot's default limits.
pub async fn sandbox() -> SandboxHandle {
    sandbox_with(SandboxConfig::default()).await
}

/// Starts a sandbox with the given configuration (the listen address is forced to loopback).
pub async fn sandbox_with(mut config: SandboxConfig) -> SandboxHandle {
    config.listen = "127.0.0.1:0".parse().expect("loopback address");
    sandbox::start(config).await.expect("sandbox starts")
}

/// A sandbox without rate limits, for tests that make many calls.
pub async fn unlimited_sandbox() -> SandboxHandle {
    sandbox_with(SandboxConfig {
        rate_limit_per_10s: None,
        daily_limit: None,
        search_per_s: None,
        ..SandboxConfig::default()
    })
    .await
}

/// A client for one portal of a sandbox.
#[derive(Clone)]
pub struct Portal {
    pub base: String,
    pub info: PortalInfo,
    pub http: reqwest::Client,
}

pub fn portal(sb: &SandboxHandle, name: &str) -> Portal {
    Portal {
        base: sb.base_url.clone(),
        info: sb.portal(name).clone(),
        http: reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client"),
    }
}

/// One answer: status, headers and the JSON body (`Value::Null` when empty or not JSON).
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn answer(resp: reqwest::Response) -> Answer {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
        text,
    }
}

impl Portal {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A request with this portal's bearer token.
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.info.token)
    }

    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Answer {
        answer(rb.send().await.expect("request reaches the sandbox")).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.req(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(self.req(reqwest::Method::POST, path).json(&body))
            .await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Answer {
        self.send(self.req(reqwest::Method::PATCH, path).json(&body))
            .await
    }

    pub async fn put(&self, path: &str, body: Value) -> Answer {
        self.send(self.req(reqwest::Method::PUT, path).json(&body))
            .await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.send(self.req(reqwest::Method::DELETE, path)).await
    }

    /// Creates a deal and returns its id.
    pub async fn create_deal(&self, props: Value) -> String {
        let a = self
            .post(
                "/crm/v3/objects/deals",
                serde_json::json!({ "properties": props }),
            )
            .await;
        assert_eq!(a.status, 201, "create deal: {}", a.text);
        a.body["id"].as_str().expect("id").to_owned()
    }

    /// A sandbox control call (no token) under `/_sandbox/portals/{name}/…`.
    pub async fn control(
        &self,
        method: reqwest::Method,
        rest: &str,
        body: Option<Value>,
    ) -> Answer {
        let mut rb = self.http.request(
            method,
            format!("{}/_sandbox/portals/{}{}", self.base, self.info.name, rest),
        );
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        answer(rb.send().await.expect("control call")).await
    }

    pub async fn counters(&self) -> Value {
        self.control(reqwest::Method::GET, "/counters", None)
            .await
            .body
    }

    pub async fn set_faults(&self, faults: Value) {
        let a = self
            .control(reqwest::Method::PUT, "/faults", Some(faults))
            .await;
        assert_eq!(a.status, 200, "set faults: {}", a.text);
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`. The pause
/// grows to 250 ms, so a long wait costs at most 4 checks a second: a check that reads a
/// rate-limited sandbox portal leaves most of the portal's 100 calls per 10 s to the daemon
/// under test (on a slow machine a faster loop starved it into 429 pauses).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// Asserts that a body is HubSpot's error shape with the given category.
pub fn assert_error(a: &Answer, status: u16, category: &str) {
    assert_eq!(a.status, status, "unexpected status; body: {}", a.text);
    assert_eq!(a.body["status"], "error", "error body: {}", a.text);
    assert_eq!(a.body["category"], category, "error body: {}", a.text);
    assert!(
        a.body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message: {}",
        a.text
    );
    assert!(
        a.body["correlationId"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "correlationId: {}",
        a.text
    );
}

/// A portal of a sandbox as the daemon connects to it (HubSpot's default budget).
pub fn conn(sb: &SandboxHandle, name: &str) -> dealsync::daemon::PortalConn {
    dealsync::daemon::PortalConn {
        name: name.to_owned(),
        base_url: sb.base_url.clone(),
        token: sb.portal(name).token.clone(),
        rate_limit_per_10s: 100,
        search_per_s: 5,
        api: Default::default(),
        oauth: None,
    }
}

/// Engine settings for daemon tests: `dealname` both ways, fast retries, dead letters in
/// `dir`, everything else at its default. Tests change what they need.
pub fn settings(dir: &std::path::Path) -> dealsync::engine::Settings {
    dealsync::engine::Settings {
        fields: vec![dealsync::engine::FieldSpec::both_ways(
            "dealname",
            "dealname",
            "dealname",
            dealsync::engine::FieldKind::Text,
        )],
        stage_maps: Default::default(),
        batch_size: 100,
        workers: 2,
        max_attempts: 4,
        retry_base: Duration::from_millis(50),
        retry_max: Duration::from_millis(400),
        dead_letter_path: dir.join("dl.jsonl"),
        mass_deletion: Default::default(),
        messages: Default::default(),
        closed_stages: Default::default(),
        registration: Default::default(),
        notify: Default::default(),
    }
}

/// Daemon parts for tests: the store in `dir`, polling every 200 ms, no sweep to speak of,
/// no webhooks. Tests change what they need.
pub fn parts(
    dir: &std::path::Path,
    hubspot: dealsync::daemon::PortalConn,
    partners: Vec<dealsync::daemon::PortalConn>,
    settings: dealsync::engine::Settings,
) -> dealsync::daemon::DaemonParts {
    dealsync::daemon::DaemonParts {
        store_path: dir.join("dealsync.db"),
        hubspot,
        partners,
        settings,
        poll_interval: Duration::from_millis(200),
        poll_overlap: Duration::from_secs(5),
        sweep_interval: Duration::from_secs(3600),
        retry: dealsync::crm::RetryPolicy {
            max_retries: 2,
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            timeout: Duration::from_secs(10),
        },
        drain: Duration::from_secs(10),
        webhooks: None,
    }
}

/// A deal property as the portal has it now.
pub async fn deal_prop(p: &Portal, id: &str, name: &str) -> Option<String> {
    let a = p
        .get(&format!("/crm/v3/objects/deals/{id}?properties={name}"))
        .await;
    a.body["properties"][name].as_str().map(str::to_owned)
}

/// Sets deal properties, as a person would in the CRM.
pub async fn set_deal(p: &Portal, id: &str, props: serde_json::Value) {
    let a = p
        .patch(
            &format!("/crm/v3/objects/deals/{id}"),
            serde_json::json!({ "properties": props }),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
}

/// Waits until a deal property has the wanted value.
pub async fn wait_deal_prop(p: &Portal, id: &str, name: &str, want: &str) {
    eventually(
        &format!("{name} of {id} in {} becomes {want}", p.info.name),
        Duration::from_secs(60),
        || async { (deal_prop(p, id, name).await.as_deref() == Some(want)).then_some(()) },
    )
    .await;
}

/// Runs `dealsync setup` (its properties and groups) in each named portal of a sandbox, as
/// `marking = "auto"` does: note properties only where the portal takes them.
pub async fn setup_portals(sb: &SandboxHandle, names: &[&str]) {
    for name in names {
        let features = portal(sb, name)
            .control(reqwest::Method::GET, "/features", None)
            .await;
        let notes = features.body["note_properties"] != false;
        let p = sb.portal(name);
        let c = dealsync::crm::Client::new(
            name,
            &sb.base_url,
            &p.token,
            std::sync::Arc::new(dealsync::crm::Budget::new(100, 4)),
            dealsync::crm::RetryPolicy::default(),
        )
        .expect("client");
        dealsync::setup::ensure(&c, false, notes)
            .await
            .expect("setup");
    }
}

/// `dealsync status` as the operator sees it, for a daemon whose store and dead letters are in
/// `dir` (as [`parts`] and [`settings`] put them).
pub async fn overview(dir: &std::path::Path) -> dealsync::status::Status {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let c = dealsync::status::open(&dir.join("dealsync.db")).expect("status opens the store");
        dealsync::status::overview(
            &c,
            &dir.join("dl.jsonl"),
            Duration::from_secs(600),
            dealsync::store::now_ms(),
        )
        .expect("status")
    })
    .await
    .expect("status task")
}

/// HubSpot's portal and partner-a in an unthrottled sandbox, with dealsync's properties set up,
/// and a temporary directory for the store: what most daemon tests start from. A test's own
/// world wraps it (and derefs to it) to add its steps.
pub struct Duo {
    pub sb: SandboxHandle,
    pub hs: Portal,
    pub pa: Portal,
    pub dir: tempfile::TempDir,
}

impl Duo {
    pub async fn new() -> Duo {
        let sb = unlimited_sandbox().await;
        let d = Duo {
            hs: portal(&sb, "hubspot"),
            pa: portal(&sb, "partner-a"),
            sb,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        setup_portals(&d.sb, &["hubspot", "partner-a"]).await;
        d
    }
}

impl Duo {
    /// Daemon settings with the built-in fields and partner-a's stages mapped one to one.
    pub fn lifecycle_settings(&self) -> dealsync::engine::Settings {
        let mut stages = dealsync::engine::StageMap::default();
        for s in [
            "appointmentscheduled",
            "qualifiedtobuy",
            "closedwon",
            "closedlost",
        ] {
            stages.to_hubspot.insert(s.into(), s.into());
            stages.to_partner.insert(s.into(), s.into());
        }
        let mut settings = settings(self.dir.path());
        settings.fields = dealsync::config::default_fields();
        settings.stage_maps = std::collections::HashMap::from([("partner-a".to_owned(), stages)]);
        settings
    }

    /// A daemon for hubspot ↔ partner-a with `settings`.
    pub async fn start(
        &self,
        settings: dealsync::engine::Settings,
    ) -> dealsync::daemon::DaemonHandle {
        dealsync::daemon::DaemonHandle::start(parts(
            self.dir.path(),
            conn(&self.sb, "hubspot"),
            vec![conn(&self.sb, "partner-a")],
            settings,
        ))
        .await
        .expect("daemon")
    }
}

/// A sandbox portal's users (owners), as (id, email), in the portal's order.
pub async fn users(p: &Portal) -> Vec<(String, String)> {
    let a = p.get("/crm/v3/owners").await;
    a.body["results"]
        .as_array()
        .expect("owners")
        .iter()
        .map(|o| {
            (
                o["id"].as_str().expect("owner id").to_owned(),
                o["email"].as_str().expect("owner email").to_owned(),
            )
        })
        .collect()
}

/// A partner deal named "Shared deal" in `partner`, linked in `store` to `hubspot_deal`;
/// its id.
pub async fn link_new_deal(
    store: &dealsync::store::Store,
    partner: &Portal,
    hubspot_deal: &str,
) -> String {
    let p = partner
        .create_deal(serde_json::json!({"dealname": "Shared deal"}))
        .await;
    let (p2, h2, name) = (
        p.clone(),
        hubspot_deal.to_owned(),
        partner.info.name.clone(),
    );
    store
        .call(move |c| dealsync::store::insert_link(c, &name, &p2, &h2, "channel"))
        .await
        .expect("link");
    p
}

/// Every object link (message and file pairs) of every link in `store`.
pub async fn object_links(store: &dealsync::store::Store) -> Vec<dealsync::store::ObjectLink> {
    store
        .call(|c| {
            let ids: Vec<i64> = c
                .prepare("SELECT id FROM links")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            dealsync::store::object_links(c, &ids)
        })
        .await
        .expect("object links")
        .into_values()
        .flatten()
        .collect()
}

/// Waits (up to 60 s) for an object link for which `check` holds; returns it.
pub async fn wait_object(
    store: &dealsync::store::Store,
    what: &str,
    check: impl Fn(&dealsync::store::ObjectLink) -> bool,
) -> dealsync::store::ObjectLink {
    eventually(what, Duration::from_secs(60), || async {
        object_links(store).await.into_iter().find(|o| check(o))
    })
    .await
}
