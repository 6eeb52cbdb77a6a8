//! `dealsync demo`: the sandbox and the daemon in one process, with `config/sandbox.toml`
//! (pointed at this run's sandbox, a temporary store and a free listener port), walking
//! through what partners and reps do with a shared deal, verifying every step against the
//! portals, and ending with the status table. Nothing leaves 127.0.0.1.
//!
//! partner-a is installed the way a real partner installs dealsync: by OAuth, from an install
//! link, with the sandbox as HubSpot's OAuth server; HubSpot's portal and partner-b keep static
//! tokens. partner-b also plays a portal that refuses custom note properties, so its shared
//! messages are marked by the `#shared` tag (`marking = "auto"`). Every call goes to HubSpot's
//! date-versioned paths, which the last step checks in the sandbox's counters.
//!
//! Every step is verified, and the demo exits non-zero if one fails.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::config::Config;
use crate::crm::{Client, RetryPolicy};
use crate::daemon::{DaemonHandle, PortalConn};
use crate::oauth::OAuthApp;
use crate::sandbox::{self, SandboxConfig, SandboxHandle};
use crate::store;

/// The shipped sandbox config, compiled in so the demo runs from any directory.
const SANDBOX_TOML: &str = include_str!("../config/sandbox.toml");

/// How long one step may take before it counts as failed.
const STEP_BOUND: Duration = Duration::from_secs(20);

/// The portal the demo installs by OAuth.
const OAUTH_PORTAL: &str = "partner-a";

/// Where the demo's config finds the sandbox app's client secret.
const CLIENT_SECRET_ENV: &str = "DEALSYNC_SANDBOX_OAUTH_CLIENT_SECRET";

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo setup failed: {0}")]
    Setup(String),
    #[error("step {step} failed: {why}")]
    Step { step: usize, why: String },
}

fn setup<E: std::fmt::Display>(e: E) -> DemoError {
    DemoError::Setup(e.to_string())
}

struct Demo {
    hubspot: Client,
    partner: Client,
    step: usize,
}

impl Demo {
    fn say(&mut self, what: &str) {
        self.step += 1;
        println!("\n{}. {what}", self.step);
    }

    fn fail(&self, why: impl Into<String>) -> DemoError {
        DemoError::Step {
            step: self.step,
            why: why.into(),
        }
    }

    /// Waits until `prop` of deal `id` reads `want` on `side`; prints how long it took.
    async fn until(
        &self,
        on_hubspot: bool,
        id: &str,
        prop: &str,
        want: &str,
    ) -> Result<(), DemoError> {
        let (c, name) = if on_hubspot {
            (&self.hubspot, "HubSpot")
        } else {
            (&self.partner, "the partner's CRM")
        };
        let t0 = Instant::now();
        loop {
            let got = c
                .get("deals", id, &[prop.to_owned()])
                .await
                .ok()
                .flatten()
                .and_then(|r| r.get(prop).map(str::to_owned));
            if got.as_deref() == Some(want) {
                println!(
                    "   ✔ {name} shows {prop} = {want:?} after {} ms",
                    t0.elapsed().as_millis()
                );
                return Ok(());
            }
            if t0.elapsed() > STEP_BOUND {
                return Err(self.fail(format!(
                    "{name} still shows {prop} = {got:?}, not {want:?}, after {STEP_BOUND:?}"
                )));
            }
            // Gently: the demo's own reads share the portals' rate limits with the daemon.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until `prop` of deal `id` contains `needle`; its value.
    async fn until_contains(
        &self,
        on_hubspot: bool,
        id: &str,
        prop: &str,
        needle: &str,
    ) -> Result<String, DemoError> {
        let t0 = Instant::now();
        loop {
            let got = self
                .client(on_hubspot)
                .get("deals", id, &[prop.to_owned()])
                .await
                .ok()
                .flatten()
                .and_then(|r| r.get(prop).map(str::to_owned));
            if let Some(v) = got.filter(|v| v.contains(needle)) {
                return Ok(v);
            }
            if t0.elapsed() > STEP_BOUND {
                return Err(self.fail(format!(
                    "{prop} of deal {id} does not mention {needle:?} after {STEP_BOUND:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits for the sandbox's catcher to hold a notification of `event` to `side`, checks its
    /// signature, and describes it.
    async fn notification(
        &self,
        http: &reqwest::Client,
        base: &str,
        secret: &str,
        event: &str,
        side: &str,
    ) -> Result<String, DemoError> {
        let t0 = Instant::now();
        loop {
            let inbox: Value = match http.get(format!("{base}/_sandbox/inbox")).send().await {
                Ok(r) => r.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            let found = inbox["results"]
                .as_array()
                .into_iter()
                .flatten()
                // partner-a's deal: the inbound deal's messages are notified too.
                .find(|d| {
                    d["body"]["event"] == event
                        && d["body"]["side"] == side
                        && d["body"]["summary"].as_str().is_some_and(|s| {
                            s.starts_with("partner-a") || s.ends_with("in partner-a)")
                        })
                });
            if let Some(d) = found {
                let text = |k: &str| d[k].as_str().unwrap_or("");
                if !crate::notify::verify(
                    secret,
                    text("timestamp"),
                    text("raw").as_bytes(),
                    text("signature"),
                ) {
                    return Err(self.fail("the notification's signature does not verify"));
                }
                let to: Vec<&str> = d["body"]["recipients"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r["email"].as_str())
                    .collect();
                return Ok(format!(
                    "\"{}\", signed, to {}",
                    d["body"]["summary"].as_str().unwrap_or(""),
                    to.join(", ")
                ));
            }
            if t0.elapsed() > STEP_BOUND {
                return Err(self.fail(format!(
                    "no {event} notification to {side} after {STEP_BOUND:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn client(&self, on_hubspot: bool) -> &Client {
        if on_hubspot {
            &self.hubspot
        } else {
            &self.partner
        }
    }

    /// Writes a note on a deal, with a file attached when `file` is given; its id.
    async fn note(
        &self,
        on_hubspot: bool,
        deal: &str,
        body: &str,
        extra: Value,
        file: Option<(&str, &[u8])>,
    ) -> Result<String, DemoError> {
        let c = self.client(on_hubspot);
        let mut props = Map::new();
        props.insert("hs_note_body".into(), json!(body));
        props.insert(
            "hs_timestamp".into(),
            json!(sandbox::model::iso(store::now_ms())),
        );
        if let Some((name, content)) = file {
            let id = c
                .upload_file(name, content.to_vec(), "/demo")
                .await
                .map_err(|e| self.fail(e.to_string()))?;
            props.insert("hs_attachment_ids".into(), json!(id));
        }
        props.extend(extra.as_object().cloned().unwrap_or_default());
        let assoc = crate::crm::to_deal(deal, crate::crm::NOTE_TO_DEAL);
        c.create("notes", &props, assoc)
            .await
            .map(|r| r.id)
            .map_err(|e| self.fail(e.to_string()))
    }

    /// The notes on a deal, with what the demo checks.
    async fn notes(&self, on_hubspot: bool, deal: &str) -> Vec<crate::crm::Record> {
        let c = self.client(on_hubspot);
        let ids = match c.associations("deals", "notes", &[deal.to_owned()]).await {
            Ok(m) => m.into_values().flatten().collect::<Vec<_>>(),
            Err(_) => return Vec::new(),
        };
        c.batch_read(
            "notes",
            &ids,
            &crate::engine::messages::content_props(),
            false,
        )
        .await
        .unwrap_or_default()
    }

    /// Waits for the copy of `origin` on a deal, with `files` attachments; returns it.
    async fn until_copy(
        &self,
        on_hubspot: bool,
        deal: &str,
        origin: &str,
        files: usize,
    ) -> Result<crate::crm::Record, DemoError> {
        let name = if on_hubspot {
            "HubSpot"
        } else {
            "the partner's CRM"
        };
        let t0 = Instant::now();
        loop {
            let found = self.notes(on_hubspot, deal).await.into_iter().find(|n| {
                n.get(crate::properties::ORIGIN) == Some(origin)
                    && n.get("hs_attachment_ids")
                        .map_or(0, |a| crate::engine::messages::split_ids(a).len())
                        == files
            });
            if let Some(n) = found {
                println!(
                    "   ✔ {name} shows the message (note {}, {files} file(s) copied) after {} ms",
                    n.id,
                    t0.elapsed().as_millis()
                );
                return Ok(n);
            }
            if t0.elapsed() > STEP_BOUND {
                return Err(self.fail(format!(
                    "{name} has no copy of {origin} with {files} file(s) after {STEP_BOUND:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn set(
        &self,
        on_hubspot: bool,
        id: &str,
        prop: &str,
        value: &str,
    ) -> Result<(), DemoError> {
        let c = if on_hubspot {
            &self.hubspot
        } else {
            &self.partner
        };
        let mut m = Map::new();
        m.insert(prop.into(), json!(value));
        c.update("deals", id, &m)
            .await
            .map(|_| ())
            .map_err(|e| self.fail(e.to_string()))
    }
}

/// Runs the demo; `Ok` only if every step was verified.
/// The demo's partner whose portal refuses custom note properties (tag marking).
const TAG_PORTAL: &str = "partner-b";

pub async fn run() -> Result<(), DemoError> {
    let started = Instant::now();
    let sb = sandbox::start(SandboxConfig {
        listen: "127.0.0.1:0".parse().map_err(setup)?,
        seed: Some(2026),
        // The demo's own calls stand for people working in their CRMs, whose clicks do not
        // count against the app's API limits; the daemon keeps to its configured budget.
        rate_limit_per_10s: Some(1_000),
        ..SandboxConfig::default()
    })
    .await
    .map_err(setup)?;
    let dir = tempfile_dir()?;
    let mut env = HashMap::new();
    for p in &sb.portals {
        let n = p.name.to_uppercase().replace('-', "_");
        env.insert(format!("DEALSYNC_SANDBOX_{n}_TOKEN"), p.token.clone());
        env.insert(
            format!("DEALSYNC_SANDBOX_{n}_WEBHOOK_SECRET"),
            p.webhook_secret.clone(),
        );
    }
    env.insert(CLIENT_SECRET_ENV.into(), sb.oauth_app().client_secret);
    // Notifications are signed with a secret of this run's own.
    let notify_secret = uuid::Uuid::new_v4().to_string();
    env.insert(
        "DEALSYNC_SANDBOX_NOTIFY_SECRET".into(),
        notify_secret.clone(),
    );
    let db = dir.join("dealsync.db");
    let dl = dir.join("dead-letters.jsonl");
    // The OAuth redirect URL names the listener's port, so the port is chosen up front.
    let port = free_port()?;
    let text = |fixed: bool| demo_toml(&sb, port, &db, &dl, fixed);
    let config = Config::from_toml_str(&text(false)?, &env).map_err(setup)?;
    let parts = crate::daemon::DaemonParts::from_config(&config);
    let client = |c: &PortalConn| c.client(RetryPolicy::default(), None).map_err(setup);
    let hubspot = client(&parts.hubspot)?;
    let partner = client(&person(&parts, &sb)?)?;
    let partner_b = client(
        parts
            .partners
            .iter()
            .find(|p| p.name == "partner-b")
            .ok_or_else(|| setup("config/sandbox.toml has no partner-b"))?,
    )?;
    println!(
        "dealsync demo — sandbox at {} (nothing leaves this machine)",
        sb.base_url
    );
    // partner-b plays a portal that refuses custom note properties: with `marking = "auto"`
    // its shared messages are marked by the `#shared` tag, and setup makes no note property.
    sb.set_features(TAG_PORTAL, sandbox::Features::without_note_features());
    // An OAuth portal is set up once it is installed (step 1).
    for c in std::iter::once(&parts.hubspot)
        .chain(parts.partners.iter())
        .filter(|c| c.oauth.is_none())
    {
        crate::setup::ensure(&client(c)?, false, c.name != TAG_PORTAL)
            .await
            .map_err(setup)?;
    }
    let d = DaemonHandle::start(parts.clone()).await.map_err(setup)?;
    let hook = d
        .webhook_addr
        .ok_or_else(|| setup("the webhook listener did not start"))?;
    let http = reqwest::Client::new();
    point_webhooks(&http, &sb, hook).await.map_err(setup)?;
    println!(
        "daemon running: partner-a (OAuth, not installed yet) and partner-b ↔ hubspot, webhooks and the OAuth callback on {hook}"
    );
    let mut demo = Demo {
        hubspot,
        partner,
        step: 0,
    };
    let app = config
        .oauth
        .clone()
        .ok_or_else(|| setup("the demo's config has no [oauth] app"))?;
    install_by_link(&mut demo, &d, &sb, &app).await?;
    let (daemon_hubspot, daemon_partner) = (
        d.engine.portals().hubspot.clone(),
        daemon_client(&demo, &d, OAUTH_PORTAL)?,
    );

    demo.say(
        "The partner registers an existing deal: refused until it has a contact, then accepted",
    );
    let props = |v: Value| -> Map<String, Value> { v.as_object().cloned().unwrap_or_default() };
    let fail = |e: &dyn std::fmt::Display| demo.fail(e.to_string());
    let p = demo
        .partner
        .create(
            "deals",
            &props(
                json!({"dealname": "Acme — Sales Hub rollout", "dealstage": "appointmentscheduled",
                "pipeline": "default", crate::properties::INTRO_NOTE: "Met their COO at INBOUND",
                crate::properties::PRODUCT_INTEREST: "sales_hub"}),
            ),
            json!([]),
        )
        .await
        .map_err(|e| fail(&e))?
        .id;
    let company = demo
        .partner
        .create(
            "companies",
            &props(json!({"name": "Acme", "domain": "acme.example"})),
            json!([]),
        )
        .await
        .map_err(|e| fail(&e))?
        .id;
    demo.partner
        .associate_default("deals", "companies", &[(p.clone(), company)])
        .await
        .map_err(|e| fail(&e))?;
    let partner_config = config
        .partner("partner-a")
        .ok_or_else(|| setup("config/sandbox.toml has no partner-a"))?;
    let synced = parts.settings.registration.get("partner-a");
    let registrar = crate::register::Registrar {
        synced: &synced.map(|r| r.synced.clone()).unwrap_or_default(),
        store: &d.store,
        // dealsync registers with its own clients: partner-a's is the OAuth install's.
        hubspot: &daemon_hubspot,
        partner: &daemon_partner,
        capacity: partner_config.capacity,
        hubspot_pipeline: &config.hubspot.pipeline,
        partner_pipeline: &partner_config.default_pipeline,
        default_owner_id: config.default_owner_id.as_deref(),
    };
    match registrar.convert(&p, false).await {
        Err(crate::register::RegisterError::Refused(why)) => {
            println!("   ✔ refused, and the deal says why: {why}")
        }
        other => return Err(demo.fail(format!("expected a refusal, got {other:?}"))),
    }
    let contact = demo
        .partner
        .create(
            "contacts",
            &props(json!({"email": "coo@acme.example"})),
            json!([]),
        )
        .await
        .map_err(|e| fail(&e))?
        .id;
    demo.partner
        .associate_default("deals", "contacts", &[(p.clone(), contact)])
        .await
        .map_err(|e| fail(&e))?;
    let reg = registrar.convert(&p, false).await.map_err(|e| fail(&e))?;
    let h = reg
        .hubspot_deal_id
        .clone()
        .ok_or_else(|| demo.fail("registration created no HubSpot deal"))?;
    let (p2, h2) = (p.clone(), h.clone());
    let link = d
        .store
        .call(move |c| store::links_for_deals(c, store::Side::Partner, "partner-a", &[p2]))
        .await
        .map_err(|e| fail(&e))?
        .into_iter()
        .map(|(l, _)| l)
        .find(|l| l.hubspot_deal_id == h2)
        .ok_or_else(|| demo.fail("the registration stored no link"))?;
    println!(
        "   ✔ registered: partner deal {p} ↔ HubSpot deal {h} ({}, link {})",
        reg.deal_type, link.id
    );
    demo.until(
        true,
        &h,
        crate::properties::INTRO_NOTE,
        "Met their COO at INBOUND",
    )
    .await?;
    // The first sync records what both sides agree on (the shadow) before anyone edits.
    d.store
        .call(move |c| store::enqueue_now(c, &[link.id], store::JobReason::Manual))
        .await
        .map_err(|e| demo.fail(e.to_string()))?;
    let t0 = Instant::now();
    loop {
        let id = link.id;
        let agreed: i64 = d
            .store
            .call(move |c| {
                Ok(c.query_row(
                    "SELECT COUNT(*) FROM shadows WHERE link_id = ?1",
                    [id],
                    |r| r.get(0),
                )?)
            })
            .await
            .map_err(|e| demo.fail(e.to_string()))?;
        if agreed > 0 {
            println!("   ✔ first sync: both sides agree on {agreed} fields");
            break;
        }
        if t0.elapsed() > STEP_BOUND {
            return Err(demo.fail("the first sync did not run"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    demo.say("A HubSpot rep adds partner-b to an inbound deal: nothing happens until the availability is confirmed");
    let owners = crate::crm::Client::call(
        &partner_b,
        reqwest::Method::GET,
        &partner_b.path(crate::crm::Op::Owners),
        None,
        crate::crm::CallKind::Ordinary,
    )
    .await
    .map_err(|e| demo.fail(e.to_string()))?;
    let email = owners
        .pointer("/results/0/email")
        .and_then(Value::as_str)
        .ok_or_else(|| demo.fail("partner-b has no users"))?
        .to_owned();
    let inbound = demo
        .hubspot
        .create(
            "deals",
            &props(
                json!({"dealname": "Inbound: Globex service desk", "pipeline": "default",
                crate::properties::ADD_PARTNER: "partner-b", crate::properties::PARTNER_OWNER: email,
                crate::properties::WELCOME_NOTE: "Welcome! Globex asked for a Service Hub partner."}),
            ),
            json!([]),
        )
        .await
        .map_err(|e| demo.fail(e.to_string()))?
        .id;
    demo.until(
        true,
        &inbound,
        crate::properties::DEAL_STATUS,
        "waiting for: the confirmation that the partner's availability was checked",
    )
    .await?;
    demo.set(
        true,
        &inbound,
        crate::properties::AVAILABILITY_CONFIRMED,
        "true",
    )
    .await?;
    let t0 = Instant::now();
    let added = loop {
        let id = inbound.clone();
        let found = d
            .store
            .call(move |c| store::links_for_deals(c, store::Side::Hubspot, "hubspot", &[id]))
            .await
            .map_err(|e| demo.fail(e.to_string()))?;
        if let Some((l, _)) = found.into_iter().find(|(l, _)| l.partner == "partner-b") {
            break l;
        }
        if t0.elapsed() > STEP_BOUND {
            return Err(demo.fail("partner-b's deal was not created"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "   ✔ partner-b's deal {} created and linked after {} ms, owned by {email}",
        added.partner_deal_id,
        t0.elapsed().as_millis()
    );
    let t0 = Instant::now();
    loop {
        let ids = partner_b
            .associations(
                "deals",
                "notes",
                std::slice::from_ref(&added.partner_deal_id),
            )
            .await
            .map(|m| m.into_values().flatten().collect::<Vec<_>>())
            .unwrap_or_default();
        let welcome = partner_b
            .batch_read("notes", &ids, &["hs_note_body".to_owned()], false)
            .await
            .unwrap_or_default()
            .iter()
            .any(|n| {
                n.get("hs_note_body").is_some_and(|b| {
                    let p = crate::engine::marking::parse(b, &Default::default());
                    p.shared && p.text.starts_with("Welcome!")
                })
            });
        if welcome {
            println!(
                "   ✔ the welcome note is its first shared message, after {} ms; {TAG_PORTAL} refuses custom note properties, so it arrives as a note starting with #shared",
                t0.elapsed().as_millis()
            );
            break;
        }
        if t0.elapsed() > STEP_BOUND {
            return Err(demo.fail("the welcome note did not reach partner-b"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    demo.say("partner-b answers with a note that starts with #shared (tag marking); its private note stays put");
    let written = |body: &str| {
        let mut n = Map::new();
        n.insert("hs_note_body".into(), json!(body));
        n.insert(
            "hs_timestamp".into(),
            json!(sandbox::model::iso(store::now_ms())),
        );
        n
    };
    let on_b = crate::crm::to_deal(&added.partner_deal_id, crate::crm::NOTE_TO_DEAL);
    partner_b
        .create(
            "notes",
            &written("<p>Our margin floor is 12%.</p>"),
            on_b.clone(),
        )
        .await
        .map_err(|e| demo.fail(e.to_string()))?;
    let answer = partner_b
        .create(
            "notes",
            &written("<p>#shared Thanks! We can start on Monday.</p>"),
            on_b,
        )
        .await
        .map_err(|e| demo.fail(e.to_string()))?
        .id;
    let copy_b = demo
        .until_copy(true, &inbound, &format!("{TAG_PORTAL}:{answer}"), 0)
        .await?;
    if copy_b.get("hs_note_body") != Some("<p>Thanks! We can start on Monday.</p>") {
        return Err(demo.fail("the tagged answer reached HubSpot with its tag, or changed"));
    }
    let on_hubspot = demo.notes(true, &inbound).await;
    if on_hubspot.iter().any(|n| {
        n.get("hs_note_body")
            .is_some_and(|b| b.contains("margin floor"))
    }) {
        return Err(demo.fail("partner-b's private note reached HubSpot"));
    }
    println!("   ✔ HubSpot's rep reads it without the tag; the private note was never read");

    demo.say("The partner renames the deal in their CRM");
    demo.set(false, &p, "dealname", "Acme — Sales Hub + Service Hub")
        .await?;
    demo.until(true, &h, "dealname", "Acme — Sales Hub + Service Hub")
        .await?;

    demo.say("The HubSpot rep records product interest");
    demo.set(
        true,
        &h,
        crate::properties::PRODUCT_INTEREST,
        "sales_hub;service_hub",
    )
    .await?;
    demo.until(
        false,
        &p,
        crate::properties::PRODUCT_INTEREST,
        "sales_hub;service_hub",
    )
    .await?;

    demo.say("The partner moves the deal to a later stage");
    demo.set(false, &p, "dealstage", "presentationscheduled")
        .await?;
    demo.until(true, &h, "dealstage", "presentationscheduled")
        .await?;

    demo.say("The partner shares a message with an attachment (dealsync_visibility = shared)");
    let m = demo
        .note(
            false,
            &p,
            "<p>Kick-off agenda attached.</p>",
            json!({ crate::properties::VISIBILITY: "shared" }),
            Some(("agenda.pdf", b"%PDF-1.4 kick-off agenda")),
        )
        .await?;
    let copy = demo
        .until_copy(true, &h, &format!("partner-a:{m}"), 1)
        .await?;

    demo.say("The HubSpot rep comments on it with a file of their own");
    let r = demo
        .note(
            true,
            &h,
            "<p>Thanks — pricing sheet attached.</p>",
            json!({ crate::properties::VISIBILITY: "shared", crate::properties::REPLY_TO: copy.id }),
            Some(("pricing.xlsx", b"tier,price\nstarter,20")),
        )
        .await?;
    let reply = demo
        .until_copy(false, &p, &format!("hubspot:{r}"), 1)
        .await?;
    if reply.get(crate::properties::REPLY_TO) != Some(m.as_str()) {
        return Err(demo.fail("the comment lost its thread on the partner's side"));
    }
    println!("   ✔ it is a reply to the partner's original message {m}");

    demo.say("Each receiving side is told: a signed webhook (caught by the sandbox) to the deal team and the partner lead");
    for (event, side) in [("message_shared", "hubspot"), ("comment_added", "partner")] {
        let got = demo
            .notification(&http, &sb.base_url, &notify_secret, event, side)
            .await?;
        println!("   ✔ {event} → {side}: {got}");
    }

    demo.say("The partner adds a colleague to the deal team; adding HubSpot's rep is refused");
    let (partner_users, hubspot_users) = (
        demo.partner
            .owners()
            .await
            .map_err(|e| demo.fail(e.to_string()))?,
        demo.hubspot
            .owners()
            .await
            .map_err(|e| demo.fail(e.to_string()))?,
    );
    let (Some(colleague), Some(rep)) = (partner_users.get(1), hubspot_users.first()) else {
        return Err(demo.fail("the sandbox portals have no users"));
    };
    demo.set(
        false,
        &p,
        crate::properties::TEAM_ADD,
        &format!("{}, {}", colleague.email, rep.email),
    )
    .await?;
    let answer = demo
        .until_contains(false, &p, crate::properties::TEAM_STATUS, "refused")
        .await?;
    if !answer.contains("added") || !answer.contains("refused") {
        return Err(demo.fail(format!("unexpected team answer: {answer}")));
    }
    println!("   ✔ the deal says: {answer}");
    let line = demo
        .until_contains(true, &h, crate::properties::PARTNER_TEAM, &colleague.email)
        .await?;
    if !line.contains(&colleague.email) || line.contains(&rep.email) {
        return Err(demo.fail(format!("HubSpot shows the partner team as {line:?}")));
    }
    println!("   ✔ HubSpot sees the partner's team: {line}");

    demo.say("The rep writes a private note: it stays in HubSpot");
    let secret = "Internal: floor price 18/seat";
    let private = demo.note(true, &h, secret, json!({}), None).await?;
    // Wait until HubSpot's note poller has passed the note and the queue is empty, then
    // look on the partner's side.
    let written = demo
        .hubspot
        .get("notes", &private, &["hs_lastmodifieddate".to_owned()])
        .await
        .ok()
        .flatten()
        .and_then(|r| r.last_modified_ms())
        .ok_or_else(|| demo.fail("cannot read the private note back"))?;
    let t0 = Instant::now();
    loop {
        let (cursor, depth) = d
            .store
            .call(|c| Ok((store::cursor(c, "hubspot/notes")?, store::queue_stats(c)?.0)))
            .await
            .map_err(|e| demo.fail(e.to_string()))?;
        if cursor.is_some_and(|c| c >= written) && depth == 0 {
            break;
        }
        if t0.elapsed() > STEP_BOUND {
            return Err(demo.fail("HubSpot's notes were not polled past the private note"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if demo
        .notes(false, &p)
        .await
        .iter()
        .any(|n| n.get("hs_note_body").is_some_and(|b| b.contains(secret)))
    {
        return Err(demo.fail("the private note reached the partner"));
    }
    println!("   ✔ polled and passed over; the partner's deal has no trace of it");

    demo.say("The partner uses a stage the stage map does not know: the job is dead-lettered, not guessed");
    demo.set(false, &p, "dealstage", "decisionmakerboughtin")
        .await?;
    let t0 = Instant::now();
    let entry = loop {
        let f = crate::deadletter::read_all(&dl).map_err(|e| demo.fail(e.to_string()))?;
        if let Some(e) = f.open().find(|e| e.link_id == link.id).cloned() {
            break e;
        }
        if t0.elapsed() > STEP_BOUND {
            return Err(demo.fail("no dead letter appeared for the unmapped stage"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "   ✔ dead letter {} ({}): {}",
        entry.id, entry.class, entry.error
    );

    demo.say(
        "The operator adds the stage to the map, restarts the daemon and replays the dead letters",
    );
    let fixed = Config::from_toml_str(&text(true)?, &env).map_err(|e| demo.fail(e.to_string()))?;
    d.shutdown().await;
    let d = DaemonHandle::start(crate::daemon::DaemonParts::from_config(&fixed))
        .await
        .map_err(|e| demo.fail(e.to_string()))?;
    let hook = d
        .webhook_addr
        .ok_or_else(|| demo.fail("the webhook listener did not restart"))?;
    point_webhooks(&http, &sb, hook)
        .await
        .map_err(|e| demo.fail(e.to_string()))?;
    // Every open entry of that class (the old daemon may have dead-lettered the link more
    // than once before it stopped), replayed through the restarted daemon's engine.
    let file = crate::deadletter::read_all(&dl).map_err(|e| demo.fail(e.to_string()))?;
    let entries =
        crate::replay::select(&file, &crate::replay::Selection::Class(entry.class.clone()))
            .map_err(|e| demo.fail(e.to_string()))?;
    let outcomes = crate::replay::replay(&d.engine, &dl, &entries, |_, _| {})
        .await
        .map_err(|e| demo.fail(e.to_string()))?;
    if outcomes.is_empty() || outcomes.iter().any(|o| !o.ok) {
        return Err(demo.fail(format!("replay did not succeed: {outcomes:?}")));
    }
    for o in &outcomes {
        println!("   ✔ replayed {}: {}", o.entry_id, o.outcome);
    }
    demo.until(true, &h, "dealstage", "decisionmakerboughtin")
        .await?;

    demo.say("partner-a worked over its OAuth install, and every call used HubSpot's date-versioned paths");
    verify_oauth(&demo, &d, &fixed, &http, &sb.base_url).await?;
    verify_paths(&demo, &http, &sb).await?;

    let status = {
        let (db, dl) = (db.clone(), dl.clone());
        tokio::task::spawn_blocking(move || {
            let c = crate::status::open(&db)?;
            crate::status::overview(&c, &dl, Duration::from_secs(600), store::now_ms())
        })
        .await
        .map_err(setup)?
        .map_err(setup)?
    };
    println!("\n{}", crate::status::render(&status));
    d.shutdown().await;
    sb.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "demo finished: {} steps verified in {:.1} s",
        demo.step,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Tells every sandbox portal to deliver its webhooks to the daemon's listener.
async fn point_webhooks(
    http: &reqwest::Client,
    sb: &sandbox::SandboxHandle,
    hook: std::net::SocketAddr,
) -> Result<(), reqwest::Error> {
    for p in &sb.portals {
        http.put(format!(
            "{}/_sandbox/portals/{}/webhooks",
            sb.base_url, p.name
        ))
        .json(&json!({ "target_url": format!("http://{hook}/webhooks/{}", p.name) }))
        .send()
        .await?
        .error_for_status()?;
    }
    Ok(())
}

/// The shipped sandbox config pointed at this run: its sandbox, store and dead-letter file,
/// the listener on `port`, and partner-a authenticating through the sandbox app's install
/// instead of a token. partner-a's stage map leaves `decisionmakerboughtin` out unless `fixed`,
/// so one step can show a dead letter and its replay once the map is fixed.
fn demo_toml(
    sb: &SandboxHandle,
    port: u16,
    db: &Path,
    dl: &Path,
    fixed: bool,
) -> Result<String, DemoError> {
    let token = "token_env = \"DEALSYNC_SANDBOX_PARTNER_A_TOKEN\"\n";
    let listen = format!("listen = \"127.0.0.1:{port}\"");
    let mut t = SANDBOX_TOML
        .replace("http://127.0.0.1:8990", &sb.base_url)
        .replace("/tmp/dealsync-sandbox.db", &db.display().to_string())
        .replace(
            "/tmp/dealsync-sandbox-dead-letters.jsonl",
            &dl.display().to_string(),
        )
        .replace("listen = \"127.0.0.1:8991\"", &listen)
        .replacen(token, "auth = \"oauth\"\n", 1);
    if !SANDBOX_TOML.contains(token) || !t.contains(&listen) {
        return Err(setup(
            "config/sandbox.toml no longer has partner-a's token_env or the listener's address for the demo to replace",
        ));
    }
    if !fixed {
        t = t.replacen("decisionmakerboughtin = \"decisionmakerboughtin\"\n", "", 1);
    }
    t.push_str(&format!(
        "\n[oauth]\nclient_id = \"{}\"\nclient_secret_env = \"{CLIENT_SECRET_ENV}\"\n\
         redirect_url = \"http://127.0.0.1:{port}/oauth/callback\"\n\
         authorize_url = \"{}/oauth/authorize\"\n",
        sb.oauth_app().client_id,
        sb.base_url
    ));
    Ok(t)
}

/// A loopback port nothing listens on right now: the OAuth redirect URL must name the
/// listener's port before the listener starts.
fn free_port() -> Result<u16, DemoError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(setup)
}

/// partner-a's people working in their CRM: its connection with the sandbox portal's own
/// token (standing for their logins), not dealsync's install.
fn person(parts: &crate::daemon::DaemonParts, sb: &SandboxHandle) -> Result<PortalConn, DemoError> {
    let mut c = parts
        .partners
        .iter()
        .find(|p| p.name == OAUTH_PORTAL)
        .cloned()
        .ok_or_else(|| setup("config/sandbox.toml has no partner-a"))?;
    c.token = sb
        .portals
        .iter()
        .find(|p| p.name == OAUTH_PORTAL)
        .map(|p| p.token.clone())
        .ok_or_else(|| setup("the sandbox has no partner-a"))?;
    c.oauth = None;
    Ok(c)
}

/// The daemon's own client for a partner portal.
fn daemon_client(demo: &Demo, d: &DaemonHandle, name: &str) -> Result<Client, DemoError> {
    d.engine
        .portals()
        .partners
        .get(name)
        .cloned()
        .ok_or_else(|| demo.fail(format!("the daemon has no client for {name}")))
}

/// Step: partner-a's admin opens dealsync's install link, picks partner-a at HubSpot and is
/// sent back to the daemon's callback, verified on the page and in the store; then dealsync
/// creates its properties in partner-a over the install, and partner-a's poller, which waited
/// for the install, polls.
async fn install_by_link(
    demo: &mut Demo,
    d: &DaemonHandle,
    sb: &SandboxHandle,
    app: &OAuthApp,
) -> Result<(), DemoError> {
    demo.say("partner-a installs dealsync's app from its install link (OAuth). HubSpot's portal keeps its static token; partner-b rehearses with a static token, as a single-portal app would");
    let started = store::now_ms();
    let (status, text) = open_install_link(demo, d, app).await?;
    let hub_id = sb
        .portals
        .iter()
        .find(|p| p.name == OAUTH_PORTAL)
        .map(|p| p.portal_id)
        .ok_or_else(|| demo.fail("the sandbox has no partner-a"))?;
    let said = format!("{OAUTH_PORTAL} is installed (HubSpot portal {hub_id})");
    if !status.is_success() || !text.contains(&said) {
        return Err(demo.fail(format!(
            "dealsync's page answered {status}: {}",
            text.trim()
        )));
    }
    let install = d
        .store
        .call(|c| store::install(c, OAUTH_PORTAL))
        .await
        .map_err(|e| demo.fail(e.to_string()))?;
    match install {
        Some(i) if i.hub_id == hub_id && i.state == store::InstallState::Active => {}
        other => {
            return Err(demo.fail(format!(
                "the store holds {:?} for partner-a, not an active install of portal {hub_id}",
                other.map(|i| (i.hub_id, i.state))
            )))
        }
    }
    println!("   ✔ the page says \"{said}\"; the store binds partner-a to portal {hub_id}");
    let client = daemon_client(demo, d, OAUTH_PORTAL)?;
    if client.oauth().is_none() {
        return Err(demo.fail("the daemon's partner-a client does not use the install"));
    }
    let actions = crate::setup::ensure(&client, false, true)
        .await
        .map_err(|e| demo.fail(e.to_string()))?;
    println!(
        "   ✔ dealsync set up its properties in partner-a over the install ({} created)",
        actions.len()
    );
    until_polled(demo, d, started).await
}

/// Opens the install link as partner-a's admin, picking partner-a, and follows HubSpot's
/// redirect to dealsync's callback; the status and text of dealsync's page.
async fn open_install_link(
    demo: &Demo,
    d: &DaemonHandle,
    app: &OAuthApp,
) -> Result<(reqwest::StatusCode, String), DemoError> {
    let fail = |e: &dyn std::fmt::Display| demo.fail(e.to_string());
    let link = crate::oauth::install_link(app, &d.store, OAUTH_PORTAL)
        .await
        .map_err(|e| fail(&e))?;
    // A browser that shows each redirect instead of following it.
    let browser = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| fail(&e))?;
    let approved = browser
        .get(format!("{link}&portal={OAUTH_PORTAL}"))
        .send()
        .await
        .map_err(|e| fail(&e))?;
    let back = approved
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if approved.status() != reqwest::StatusCode::FOUND || !back.starts_with(&app.redirect_url) {
        return Err(demo.fail(format!(
            "HubSpot answered the install link with {} instead of a redirect to {}",
            approved.status(),
            app.redirect_url
        )));
    }
    println!(
        "   ✔ partner-a's admin picked partner-a; HubSpot sent them back to {} with a code",
        app.redirect_url
    );
    let page = browser.get(&back).send().await.map_err(|e| fail(&e))?;
    let status = page.status();
    Ok((status, page.text().await.unwrap_or_default()))
}

/// Waits until partner-a's deal poller has polled successfully since `since_ms`.
async fn until_polled(demo: &Demo, d: &DaemonHandle, since_ms: i64) -> Result<(), DemoError> {
    let t0 = Instant::now();
    loop {
        let ok: Option<i64> = d
            .store
            .call(|c| {
                Ok(c.query_row(
                    "SELECT MAX(last_poll_ok) FROM portal_health WHERE portal = ?1",
                    [OAUTH_PORTAL],
                    |r| r.get(0),
                )?)
            })
            .await
            .map_err(|e| demo.fail(e.to_string()))?;
        if ok.is_some_and(|t| t >= since_ms) {
            println!(
                "   ✔ partner-a's poller, which waited for the install, polls over it after {} ms (status keeps the wait as its last error)",
                t0.elapsed().as_millis()
            );
            return Ok(());
        }
        if t0.elapsed() > STEP_BOUND {
            return Err(demo.fail("partner-a's poller did not poll over the install"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// partner-a's daemon calls authenticated through the install: the config gives the daemon
/// no token for it, its client holds the OAuth session, and the sandbox exchanged one code
/// and refused nothing.
async fn verify_oauth(
    demo: &Demo,
    d: &DaemonHandle,
    config: &Config,
    http: &reqwest::Client,
    base: &str,
) -> Result<(), DemoError> {
    let parts = crate::daemon::DaemonParts::from_config(config);
    let tokenless = parts
        .partners
        .iter()
        .find(|p| p.name == OAUTH_PORTAL)
        .is_some_and(|c| c.token.is_empty() && c.oauth.is_some());
    if !tokenless || daemon_client(demo, d, OAUTH_PORTAL)?.oauth().is_none() {
        return Err(demo.fail("the daemon reaches partner-a with a static token"));
    }
    let c: Value = async {
        http.get(format!("{base}/_sandbox/oauth"))
            .send()
            .await?
            .json()
            .await
    }
    .await
    .map_err(|e: reqwest::Error| demo.fail(e.to_string()))?;
    let active = c["installs"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|i| i["portal"] == OAUTH_PORTAL && i["revoked"] == false);
    if c["exchanges"] != 1 || c["failed"] != 0 || !active {
        return Err(demo.fail(format!("the sandbox's OAuth counters say {c}")));
    }
    println!(
        "   ✔ the daemon holds no token for partner-a, only its install: 1 code exchanged, {} token refresh(es), nothing refused",
        c["refreshes"]
    );
    Ok(())
}

/// Every API call of this run, the daemon's and the demo's own, from the sandbox's per-portal
/// counters: CRM calls on 2026-09 paths, files on 2026-03, none on a v3 or v4 path.
async fn verify_paths(
    demo: &Demo,
    http: &reqwest::Client,
    sb: &SandboxHandle,
) -> Result<(), DemoError> {
    let (mut total, mut files) = (0, 0);
    for p in &sb.portals {
        let url = format!("{}/_sandbox/portals/{}/counters", sb.base_url, p.name);
        let c: Value = async { http.get(url).send().await?.error_for_status()?.json().await }
            .await
            .map_err(|e: reqwest::Error| demo.fail(e.to_string()))?;
        for (key, n) in c["endpoints"].as_object().into_iter().flatten() {
            let n = n.as_u64().unwrap_or(0);
            let path = key.split_once(' ').map_or(key.as_str(), |(_, p)| p);
            let segs: Vec<&str> = path.split('/').collect();
            let (crm, file) = (
                segs.get(1) == Some(&"crm") && segs.get(3) == Some(&"2026-09"),
                segs.get(1) == Some(&"files") && segs.get(2) == Some(&"2026-03"),
            );
            if !crm && !file {
                return Err(demo.fail(format!(
                    "{n} call(s) to {key} in {} are not on HubSpot's 2026-09 paths (files 2026-03)",
                    p.name
                )));
            }
            total += n;
            files += if file { n } else { 0 };
        }
    }
    if files == 0 {
        return Err(demo.fail("the sandbox counted no file calls"));
    }
    println!("   ✔ all {total} API calls used HubSpot's 2026-09 paths (files 2026-03); none went to /crm/v3/, /crm/v4/ or /files/v3/");
    Ok(())
}

/// A private temporary directory for the demo's store (std has no tempdir; the crate's
/// `tempfile` is a dev-dependency only).
fn tempfile_dir() -> Result<std::path::PathBuf, DemoError> {
    let dir = std::env::temp_dir().join(format!(
        "dealsync-demo-{}-{}",
        std::process::id(),
        store::now_ms()
    ));
    std::fs::create_dir_all(&dir).map_err(setup)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    }
    Ok(dir)
}
