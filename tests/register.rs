//! Converting an existing partner deal (issue 7, item 2) against the sandbox: every refusal
//! names its condition, shows on the deal and creates nothing; a dry run writes nothing
//! anywhere; a conversion creates the HubSpot deal (owned by the lead's rep, deal type from who
//! owns the lead), links it, and a second attempt is refused as already registered. A
//! registered or invited deal starts from the other side's mapped stage, so the first sync
//! has nothing to resolve.

mod common;

use std::sync::Arc;

use dealsync::crm::{Budget, Client, RetryPolicy};
use dealsync::register::{Refusal, RegisterError, Registrar, Synced};
use dealsync::store::{self, Store};
use serde_json::{json, Value};

struct World {
    _sb: dealsync::sandbox::SandboxHandle,
    hs: common::Portal,
    pa: common::Portal,
    hs_client: Client,
    pa_client: Client,
    store: Store,
    synced: Synced,
    _dir: tempfile::TempDir,
}

/// Partner stage -> HubSpot stage. The partner's `qualifiedtobuy` is HubSpot's
/// `presentationscheduled`, so a stage copied instead of mapped shows.
const STAGE_MAP: &[(&str, &str)] = &[
    ("appointmentscheduled", "appointmentscheduled"),
    ("qualifiedtobuy", "presentationscheduled"),
    ("closedwon", "closedwon"),
    ("closedlost", "closedlost"),
];

fn stage_map() -> dealsync::engine::StageMap {
    let mut m = dealsync::engine::StageMap::default();
    for (p, h) in STAGE_MAP {
        m.to_hubspot.insert((*p).into(), (*h).into());
        m.to_partner.insert((*h).into(), (*p).into());
    }
    m
}

/// The default synced fields and [`STAGE_MAP`], as the config would give them.
fn synced() -> Synced {
    Synced {
        fields: dealsync::config::default_fields(),
        stages: stage_map(),
    }
}

impl World {
    async fn new() -> World {
        let sb = common::unlimited_sandbox().await;
        let (hs, pa) = (
            common::portal(&sb, "hubspot"),
            common::portal(&sb, "partner-a"),
        );
        let client = |p: &common::Portal| {
            Client::new(
                &p.info.name,
                &sb.base_url,
                &p.info.token,
                Arc::new(Budget::new(100, 4)),
                RetryPolicy::default(),
            )
            .unwrap()
        };
        let (hs_client, pa_client) = (client(&hs), client(&pa));
        for c in [&hs_client, &pa_client] {
            dealsync::setup::ensure(c, false, true)
                .await
                .expect("setup");
        }
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("dealsync.db")).await.unwrap();
        World {
            _sb: sb,
            hs,
            pa,
            hs_client,
            pa_client,
            store,
            synced: synced(),
            _dir: dir,
        }
    }

    fn registrar(&self, capacity: u32) -> Registrar<'_> {
        Registrar {
            store: &self.store,
            hubspot: &self.hs_client,
            partner: &self.pa_client,
            capacity,
            hubspot_pipeline: "default",
            partner_pipeline: "default",
            default_owner_id: None,
            synced: &self.synced,
        }
    }

    /// A partner deal with optionally a company (by domain) and a contact.
    async fn deal(&self, company: Option<&str>, contact: bool) -> String {
        let d = self
            .pa
            .create_deal(json!({"dealname": "Acme rollout", dealsync::properties::INTRO_NOTE: "Met at INBOUND", dealsync::properties::PRODUCT_INTEREST: "sales_hub"}))
            .await;
        if let Some(domain) = company {
            let c = create(
                &self.pa,
                "companies",
                json!({"name": "Acme", "domain": domain}),
            )
            .await;
            associate(&self.pa, &d, "companies", &c).await;
        }
        if contact {
            let email = format!("ana-{d}@acme.example");
            let c = create(&self.pa, "contacts", json!({"email": email})).await;
            associate(&self.pa, &d, "contacts", &c).await;
        }
        d
    }
}

async fn create(p: &common::Portal, object: &str, props: Value) -> String {
    let a = p
        .post(
            &format!("/crm/v3/objects/{object}"),
            json!({ "properties": props }),
        )
        .await;
    assert_eq!(a.status, 201, "create {object}: {}", a.text);
    a.body["id"].as_str().unwrap().to_owned()
}

async fn associate(p: &common::Portal, deal: &str, object: &str, id: &str) {
    let a = p
        .put(
            &format!("/crm/v4/objects/deals/{deal}/associations/default/{object}/{id}"),
            json!({}),
        )
        .await;
    assert_eq!(a.status, 200, "associate: {}", a.text);
}

/// The active link of a deal on `side` (`portal` names the partner for the partner side).
async fn link_of(
    store: &Store,
    side: store::Side,
    portal: &'static str,
    deal: &str,
) -> Option<store::Link> {
    let deal = deal.to_owned();
    store
        .call(move |c| store::links_for_deals(c, side, portal, &[deal]))
        .await
        .unwrap()
        .into_iter()
        .next()
        .map(|(l, _)| l)
}

async fn status_of(p: &common::Portal, deal: &str) -> Option<String> {
    let a = p
        .get(&format!(
            "/crm/v3/objects/deals/{deal}?properties=dealsync_status"
        ))
        .await;
    a.body["properties"][dealsync::properties::DEAL_STATUS]
        .as_str()
        .map(str::to_owned)
}

fn writes(c: &Value) -> u64 {
    c["writes"].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn each_refusal_names_its_condition_shows_on_the_deal_and_creates_nothing() {
    let w = World::new().await;
    let hs_writes = writes(&w.hs.counters().await);
    for (company, contact, want) in [
        (None, false, Refusal::NoCompanyNoContact),
        (None, true, Refusal::NoCompany),
        (Some("acme.example"), false, Refusal::NoContact),
    ] {
        let d = w.deal(company, contact).await;
        match w.registrar(10).convert(&d, false).await {
            Err(RegisterError::Refused(r)) => assert_eq!(r, want),
            other => panic!("expected {want:?}, got {other:?}"),
        }
        let shown = status_of(&w.pa, &d).await.unwrap_or_default();
        assert!(
            shown.starts_with("registration refused: ") && shown.contains(&want.to_string()),
            "{shown}"
        );
    }
    // At capacity: an active registration already counts.
    let d = w.deal(Some("acme.example"), true).await;
    w.store
        .call(|c| store::insert_link(c, "partner-a", "1", "2", "channel"))
        .await
        .unwrap();
    match w.registrar(1).convert(&d, false).await {
        Err(RegisterError::Refused(Refusal::AtCapacity { capacity: 1, .. })) => {}
        other => panic!("expected at capacity, got {other:?}"),
    }
    assert_eq!(
        writes(&w.hs.counters().await),
        hs_writes,
        "nothing created in HubSpot"
    );
}

#[tokio::test]
async fn a_dry_run_writes_nothing_anywhere() {
    let w = World::new().await;
    let d = w.deal(Some("acme.example"), true).await;
    let before = (
        writes(&w.hs.counters().await),
        writes(&w.pa.counters().await),
    );
    let r = w.registrar(10).convert(&d, true).await.expect("dry run");
    assert!(r.dry_run && r.hubspot_deal_id.is_none());
    assert_eq!(r.deal_type, "channel");
    assert_eq!(
        before,
        (
            writes(&w.hs.counters().await),
            writes(&w.pa.counters().await)
        ),
        "a dry run writes nothing"
    );
    // A refused dry run does not mark the deal either.
    let bare = w.deal(None, false).await;
    let before = writes(&w.pa.counters().await);
    assert!(w.registrar(10).convert(&bare, true).await.is_err());
    assert_eq!(writes(&w.pa.counters().await), before);
    assert_eq!(status_of(&w.pa, &bare).await, None);
}

#[tokio::test]
async fn a_conversion_creates_the_hubspot_deal_with_the_leads_rep_and_links_it_once() {
    let w = World::new().await;
    // In HubSpot's portal the lead's company is owned by a sales rep.
    let owner = common::users(&w.hs).await.remove(0).0;
    create(
        &w.hs,
        "companies",
        json!({"name": "Acme", "domain": "acme.example", "hubspot_owner_id": owner}),
    )
    .await;
    let d = w.deal(Some("acme.example"), true).await;
    let r = w
        .registrar(10)
        .convert(&d, false)
        .await
        .expect("registered");
    assert_eq!(r.deal_type, "partner_collaboration");
    assert_eq!(r.owner_id.as_deref(), Some(owner.as_str()));
    let h = r.hubspot_deal_id.clone().unwrap();
    let a = w
        .hs
        .get(&format!("/crm/v3/objects/deals/{h}?properties=dealname,hubspot_owner_id,dealsync_intro_note,dealsync_product_interest,pipeline,dealstage,dealsync_registration"))
        .await;
    let p = &a.body["properties"];
    assert_eq!(p["dealname"], "Acme rollout");
    assert_eq!(p["hubspot_owner_id"], owner.as_str());
    assert_eq!(p[dealsync::properties::INTRO_NOTE], "Met at INBOUND");
    assert_eq!(p[dealsync::properties::PRODUCT_INTEREST], "sales_hub");
    assert_eq!(p["pipeline"], "default");
    assert!(p["dealstage"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(
        p[dealsync::properties::REGISTRATION],
        format!("partner-a:{d}").as_str()
    );
    let d2 = d.clone();
    let links = w
        .store
        .call(move |c| store::links_for_deals(c, store::Side::Partner, "partner-a", &[d2]))
        .await
        .unwrap();
    assert_eq!(links.len(), 1);
    assert_eq!(links[0].0.hubspot_deal_id, h);
    assert_eq!(links[0].0.deal_type, "partner_collaboration");
    assert_eq!(status_of(&w.pa, &d).await.as_deref(), Some("active"));
    // Registering again is refused, and creates nothing.
    match w.registrar(10).convert(&d, false).await {
        Err(RegisterError::Refused(Refusal::AlreadyRegistered { hubspot_deal, .. })) => {
            assert_eq!(hubspot_deal, h)
        }
        other => panic!("expected already registered, got {other:?}"),
    }
}

#[tokio::test]
async fn a_lead_assigned_to_another_partner_makes_a_best_partner_wins_deal() {
    let w = World::new().await;
    create(
        &w.hs,
        "companies",
        json!({"name": "Acme", "domain": "acme.example", dealsync::properties::COMPANY_PARTNER: "partner-b"}),
    )
    .await;
    let d = w.deal(Some("acme.example"), true).await;
    let r = w
        .registrar(10)
        .convert(&d, false)
        .await
        .expect("registered");
    assert_eq!(r.deal_type, "best_partner_wins");
    assert_eq!(r.owner_id, None);
}

#[tokio::test]
async fn a_new_lead_from_a_company_or_a_contact_becomes_a_linked_shared_deal() {
    let w = World::new().await;
    let owner = common::users(&w.hs).await.remove(1).0;
    create(
        &w.hs,
        "companies",
        json!({"name": "Globex", "domain": "globex.example", "hubspot_owner_id": owner}),
    )
    .await;
    let company = create(
        &w.pa,
        "companies",
        json!({"name": "Globex", "domain": "globex.example"}),
    )
    .await;
    let lead = dealsync::register::NewLead {
        company: Some(company.clone()),
        name: "Globex — Service Hub".into(),
        products: vec!["service_hub".into(), "sales_hub".into()],
        intro: Some("Referred by their CTO".into()),
        pain: Some("Ticket backlog".into()),
        next_steps: Some("Demo next week".into()),
        ..Default::default()
    };
    let r = w
        .registrar(10)
        .register_new(&lead, false)
        .await
        .expect("registered");
    assert_eq!(r.deal_type, "partner_collaboration");
    assert_eq!(r.owner_id.as_deref(), Some(owner.as_str()));
    let a = w
        .pa
        .get(&format!(
            "/crm/v3/objects/deals/{}?properties=dealname,pipeline,dealstage,dealsync_product_interest,dealsync_specific_pain&associations=companies",
            r.partner_deal_id
        ))
        .await;
    assert_eq!(a.body["properties"]["dealname"], "Globex — Service Hub");
    assert_eq!(a.body["properties"]["pipeline"], "default");
    assert_eq!(
        a.body["properties"][dealsync::properties::SPECIFIC_PAIN],
        "Ticket backlog"
    );
    assert_eq!(
        a.body["associations"]["companies"]["results"][0]["id"].as_str(),
        Some(company.as_str())
    );
    let h = r.hubspot_deal_id.unwrap();
    let a =
        w.hs.get(&format!(
            "/crm/v3/objects/deals/{h}?properties=dealname,dealsync_next_steps,hubspot_owner_id"
        ))
        .await;
    assert_eq!(
        a.body["properties"][dealsync::properties::NEXT_STEPS],
        "Demo next week"
    );
    assert_eq!(a.body["properties"]["hubspot_owner_id"], owner.as_str());

    // From a contact alone: no company to match, so a channel deal.
    let contact = create(&w.pa, "contacts", json!({"email": "lead@initech.example"})).await;
    let lead = dealsync::register::NewLead {
        contact: Some(contact),
        name: "Initech".into(),
        ..Default::default()
    };
    let r = w
        .registrar(10)
        .register_new(&lead, false)
        .await
        .expect("registered");
    assert_eq!(r.deal_type, "channel");
    assert!(r.hubspot_deal_id.is_some());
    // At capacity (two active now), a new lead is refused and nothing is created.
    let before = writes(&w.pa.counters().await);
    match w.registrar(2).register_new(&lead, false).await {
        Err(RegisterError::Refused(Refusal::AtCapacity { capacity: 2, .. })) => {}
        other => panic!("expected at capacity, got {other:?}"),
    }
    assert_eq!(writes(&w.pa.counters().await), before, "nothing created");
}

/// A config for the CLI with its store in `dir` (where [`daemon`] keeps its own) and
/// [`STAGE_MAP`].
fn write_config(w: &World, dir: &std::path::Path) -> std::path::PathBuf {
    let cfg = dir.join("dealsync.toml");
    let stage_map: String = STAGE_MAP
        .iter()
        .map(|(p, h)| format!("{p} = \"{h}\"\n"))
        .collect();
    std::fs::write(
        &cfg,
        format!(
            "[store]\npath = \"{}\"\ndead_letter_path = \"{}\"\n[hubspot]\nbase_url = \"{base}\"\ntoken_env = \"HS_TOKEN\"\n[[partners]]\nname = \"partner-a\"\nbase_url = \"{base}\"\ntoken_env = \"PA_TOKEN\"\n[partners.stage_map]\n{stage_map}",
            dir.join("dealsync.db").display(),
            dir.join("dl.jsonl").display(),
            base = w.hs.base,
        ),
    )
    .unwrap();
    cfg
}

/// Runs `dealsync register --deal` against the World's portals.
async fn register_cli(
    w: &World,
    cfg: &std::path::Path,
    deal: &str,
    dry_run: bool,
) -> std::process::Output {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_dealsync"));
    c.args(["register", "--config"])
        .arg(cfg)
        .args(["--partner", "partner-a", "--deal", deal])
        .env("HS_TOKEN", &w.hs.info.token)
        .env("PA_TOKEN", &w.pa.info.token)
        .env("DEALSYNC_LOG", "warn");
    if dry_run {
        c.arg("--dry-run");
    }
    c.output().await.expect("the dealsync binary runs")
}

/// The CLI: a refusal exits 65 naming the condition; a dry run exits 0 and writes nothing.
#[tokio::test]
async fn the_cli_exits_65_on_a_refusal_and_writes_nothing_on_a_dry_run() {
    let w = World::new().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&w, dir.path());
    let bare = w.deal(Some("acme.example"), false).await;
    let out = register_cli(&w, &cfg, &bare, false).await;
    assert_eq!(out.status.code(), Some(65), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no associated contact"), "{err}");
    let ok = w.deal(Some("acme.example"), true).await;
    let before = (
        writes(&w.hs.counters().await),
        writes(&w.pa.counters().await),
    );
    let out = register_cli(&w, &cfg, &ok, true).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("would register"));
    assert_eq!(
        before,
        (
            writes(&w.hs.counters().await),
            writes(&w.pa.counters().await)
        ),
        "a dry run writes nothing"
    );
}

/// From inside the partner's CRM: marking a deal with `dealsync_register` registers it (or
/// shows the refusal on it), and dealsync clears the mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marking_a_deal_in_the_partner_crm_registers_it_or_shows_why_not() {
    use std::time::Duration;
    let w = World::new().await;
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(&w, dir.path()).await;
    let wait = Duration::from_secs(60);
    let flag = |deal: String| {
        let pa = w.pa.clone();
        async move {
            let a = pa
                .get(&format!(
                    "/crm/v3/objects/deals/{deal}?properties=dealsync_register,dealsync_status"
                ))
                .await;
            (
                a.body["properties"][dealsync::properties::REGISTER]
                    .as_str()
                    .map(str::to_owned),
                a.body["properties"][dealsync::properties::DEAL_STATUS]
                    .as_str()
                    .map(str::to_owned),
            )
        }
    };
    // Refused: no contact. The reason shows on the deal and the mark is cleared.
    let bare = w.deal(Some("acme.example"), false).await;
    common::set_deal(
        &w.pa,
        &bare,
        json!({dealsync::properties::REGISTER: "true"}),
    )
    .await;
    let status = common::eventually("the refusal shows on the deal", wait, || async {
        let (mark, status) = flag(bare.clone()).await;
        (mark.as_deref() == Some("false"))
            .then_some(status)
            .flatten()
    })
    .await;
    assert!(status.contains("no associated contact"), "{status}");
    // `dealsync status` lists it with the reason.
    let st = common::overview(dir.path()).await;
    assert_eq!(
        st.registrations_refused.len(),
        1,
        "{:?}",
        st.registrations_refused
    );
    assert_eq!(st.registrations_refused[0].partner_deal_id, bare);
    assert!(st.registrations_refused[0]
        .reason
        .contains("no associated contact"));
    let table = dealsync::status::render(&st);
    assert!(
        table.contains(&format!("refused: partner-a deal {bare}: ")),
        "{table}"
    );
    assert!(table.lines().all(|l| l.chars().count() <= 80), "{table}");
    assert!(
        link_of(&d.store, store::Side::Partner, "partner-a", &bare)
            .await
            .is_none(),
        "the refused deal is not linked"
    );
    // Fixed (a contact added) and marked again: registered, and gone from the refusals.
    let contact = create(&w.pa, "contacts", json!({"email": "fixed@acme.example"})).await;
    associate(&w.pa, &bare, "contacts", &contact).await;
    common::set_deal(
        &w.pa,
        &bare,
        json!({dealsync::properties::REGISTER: "true"}),
    )
    .await;
    common::eventually("the fixed deal is registered", wait, || {
        link_of(&d.store, store::Side::Partner, "partner-a", &bare)
    })
    .await;
    // The refusal is forgotten just after the link is stored.
    common::eventually("the refusal leaves status", wait, || async {
        common::overview(dir.path())
            .await
            .registrations_refused
            .is_empty()
            .then_some(())
    })
    .await;
    // Accepted: linked, the HubSpot deal exists, the mark cleared, the deal shows active.
    let ok = w.deal(Some("acme.example"), true).await;
    common::set_deal(&w.pa, &ok, json!({dealsync::properties::REGISTER: "true"})).await;
    let link = common::eventually("the marked deal is registered and linked", wait, || {
        link_of(&d.store, store::Side::Partner, "partner-a", &ok)
    })
    .await;
    assert_eq!(
        w.hs.get(&format!("/crm/v3/objects/deals/{}", link.hubspot_deal_id))
            .await
            .status,
        200
    );
    common::eventually(
        "the mark is cleared and the deal shows active",
        wait,
        || async {
            let (mark, status) = flag(ok.clone()).await;
            (mark.as_deref() == Some("false") && status.as_deref() == Some("active")).then_some(())
        },
    )
    .await;
    d.shutdown().await;
}

#[tokio::test]
async fn a_lead_nobody_owns_goes_to_the_configured_default_rep() {
    let w = World::new().await;
    let owner = common::users(&w.hs).await.remove(2).0;
    let d = w.deal(Some("nobody.example"), true).await;
    let mut registrar = w.registrar(10);
    registrar.default_owner_id = Some(&owner);
    let r = registrar.convert(&d, false).await.expect("registered");
    assert_eq!(r.deal_type, "channel");
    assert_eq!(r.owner_id.as_deref(), Some(owner.as_str()));
    let h = r.hubspot_deal_id.unwrap();
    let a =
        w.hs.get(&format!(
            "/crm/v3/objects/deals/{h}?properties=hubspot_owner_id"
        ))
        .await;
    assert_eq!(a.body["properties"]["hubspot_owner_id"], owner.as_str());
}

/// A daemon that registers partner-a deals marked in its CRM and acts on HubSpot deals that
/// add a partner.
async fn daemon(w: &World, dir: &std::path::Path) -> dealsync::daemon::DaemonHandle {
    use std::collections::HashMap;
    let mut settings = common::settings(dir);
    settings.fields = dealsync::config::default_fields();
    settings.stage_maps = HashMap::from([("partner-a".to_owned(), stage_map())]);
    settings.registration = HashMap::from([(
        "partner-a".to_owned(),
        dealsync::register::RegistrationSettings {
            capacity: 10,
            partner_pipeline: "default".into(),
            hubspot_pipeline: "default".into(),
            default_owner_id: None,
            synced: synced(),
        },
    )]);
    // Notifications to the sandbox's catcher.
    settings.notify = dealsync::notify::NotifySettings {
        webhook: Some(dealsync::notify::WebhookTarget {
            url: format!("{}/_sandbox/inbox", w._sb.base_url),
            secret: dealsync::secret::Secret::new("register-test"),
        }),
        ..Default::default()
    };
    dealsync::daemon::DaemonHandle::start(common::parts(
        dir,
        common::conn(&w._sb, "hubspot"),
        vec![common::conn(&w._sb, "partner-a")],
        settings,
    ))
    .await
    .expect("daemon")
}

/// HubSpot adds a partner to a HubSpot deal: nothing happens until the partner, its owner, a
/// welcome note and the availability confirmation are all there (the deal says what is
/// missing); then the partner deal is created, owned by that user, linked, and the welcome
/// note arrives as its first shared message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_added_on_hubspots_side_gets_the_deal_once_everything_is_there() {
    use common::notes::{notes, prop};
    use std::time::Duration;
    let w = World::new().await;
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(&w, dir.path()).await;
    let wait = Duration::from_secs(60);
    let h = w
        .hs
        .create_deal(json!({"dealname": "Inbound: Initech", dealsync::properties::ADD_PARTNER: "partner-a", dealsync::properties::WELCOME_NOTE: "Welcome aboard — Initech wants Service Hub."}))
        .await;
    let status = common::eventually("the HubSpot deal says what is missing", wait, || async {
        let a =
            w.hs.get(&format!(
                "/crm/v3/objects/deals/{h}?properties=dealsync_status"
            ))
            .await;
        a.body["properties"][dealsync::properties::DEAL_STATUS]
            .as_str()
            .map(str::to_owned)
    })
    .await;
    assert!(status.starts_with("waiting for: "), "{status}");
    assert!(
        status.contains("partner user") && status.contains("availability"),
        "{status}"
    );
    assert!(!status.contains("welcome"), "{status}");
    assert!(
        link_of(&d.store, store::Side::Hubspot, "hubspot", &h)
            .await
            .is_none(),
        "nothing is created before everything is there"
    );
    // `dealsync status` lists the invitation and what it lacks.
    let st = common::overview(dir.path()).await;
    assert_eq!(
        st.invitations_waiting.len(),
        1,
        "{:?}",
        st.invitations_waiting
    );
    assert_eq!(st.invitations_waiting[0].hubspot_deal_id, h);
    assert!(st.invitations_waiting[0].missing.contains("availability"));
    let table = dealsync::status::render(&st);
    assert!(
        table.contains(&format!("waiting: deal {h} for partner-a")),
        "{table}"
    );
    assert!(table.lines().all(|l| l.chars().count() <= 80), "{table}");

    let (owner_id, email) = common::users(&w.pa).await.remove(0);
    common::set_deal(
        &w.hs,
        &h,
        json!({dealsync::properties::PARTNER_OWNER: email, dealsync::properties::AVAILABILITY_CONFIRMED: "true"}),
    )
    .await;
    let link = common::eventually("the partner deal is created and linked", wait, || {
        link_of(&d.store, store::Side::Hubspot, "hubspot", &h)
    })
    .await;
    assert_eq!(link.partner, "partner-a");
    assert!(
        common::overview(dir.path())
            .await
            .invitations_waiting
            .is_empty(),
        "a complete invitation is no longer listed"
    );
    let a = w
        .pa
        .get(&format!("/crm/v3/objects/deals/{}?properties=dealname,hubspot_owner_id,pipeline,dealsync_status", link.partner_deal_id))
        .await;
    assert_eq!(a.body["properties"]["dealname"], "Inbound: Initech");
    assert_eq!(a.body["properties"]["hubspot_owner_id"], owner_id.as_str());
    assert_eq!(a.body["properties"]["pipeline"], "default");
    assert_eq!(
        a.body["properties"][dealsync::properties::DEAL_STATUS],
        "active"
    );
    common::eventually(
        "the welcome note arrives as a shared message",
        wait,
        || async {
            notes(&w.pa)
                .await
                .iter()
                .any(|n| {
                    prop(n, "hs_note_body") == Some("Welcome aboard — Initech wants Service Hub.")
                        && prop(n, dealsync::properties::ORIGIN)
                            .is_some_and(|o| o.starts_with("hubspot:"))
                })
                .then_some(())
        },
    )
    .await;
    // The partner's deal team hears of it: HubSpot shared a message (the welcome note).
    let partner_deal = link.partner_deal_id.clone();
    common::eventually("the partner is told of the welcome note", wait, || async {
        let inbox = w.hs.get("/_sandbox/inbox").await;
        inbox.body["results"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| {
                d["body"]["event"] == "message_shared"
                    && d["body"]["side"] == "partner"
                    && d["body"]["deal_id"] == partner_deal.as_str()
            })
            .map(|d| {
                assert!(
                    d["body"]["recipients"][0]["email"] == email.as_str(),
                    "the partner deal's owner: {d}"
                )
            })
    })
    .await;
    d.shutdown().await;
}

/// Waits for a link's first sync (its `dealstage` shadow), then checks that it found nothing to
/// resolve: no conflict recorded and each side still at the stage it started from.
async fn first_sync_agrees(
    w: &World,
    store: &Store,
    link: &store::Link,
    partner_stage: &str,
    hubspot_stage: &str,
) {
    let id = link.id;
    let shadow = common::eventually(
        "the link's first sync records a stage",
        std::time::Duration::from_secs(60),
        || async {
            store
                .call(move |c| store::shadows(c, &[id]))
                .await
                .unwrap()
                .remove(&id)?
                .remove("dealstage")
        },
    )
    .await;
    let conflicts = store
        .call(move |c| store::conflicts_for(c, id))
        .await
        .unwrap();
    assert!(
        conflicts.is_empty(),
        "the first sync had to resolve {conflicts:?}"
    );
    assert_eq!(shadow.as_deref(), Some(hubspot_stage));
    let (p, h) = (&link.partner_deal_id, &link.hubspot_deal_id);
    assert_eq!(
        common::deal_prop(&w.pa, p, "dealstage").await.as_deref(),
        Some(partner_stage),
        "the partner deal's stage"
    );
    assert_eq!(
        common::deal_prop(&w.hs, h, "dealstage").await.as_deref(),
        Some(hubspot_stage),
        "the HubSpot deal's stage"
    );
}

/// `dealsync register` on a partner deal at `qualifiedtobuy`: the HubSpot deal starts at that
/// stage's mapping, so the first sync agrees and the partner's pipeline is not rewound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_registers_a_deal_at_its_mapped_stage_and_the_first_sync_keeps_it() {
    let w = World::new().await;
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(&w, dir.path()).await;
    let cfg = write_config(&w, dir.path());
    let deal = w.deal(Some("acme.example"), true).await;
    common::set_deal(&w.pa, &deal, json!({"dealstage": "qualifiedtobuy"})).await;
    let out = register_cli(&w, &cfg, &deal, false).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let link = common::eventually(
        "the registered deal is linked",
        std::time::Duration::from_secs(60),
        || link_of(&d.store, store::Side::Partner, "partner-a", &deal),
    )
    .await;
    first_sync_agrees(
        &w,
        &d.store,
        &link,
        "qualifiedtobuy",
        "presentationscheduled",
    )
    .await;
    d.shutdown().await;
}

/// The same registration from the partner's CRM (`dealsync_register`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deal_marked_in_the_partner_crm_keeps_its_stage_through_the_first_sync() {
    let w = World::new().await;
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(&w, dir.path()).await;
    let deal = w.deal(Some("acme.example"), true).await;
    common::set_deal(
        &w.pa,
        &deal,
        json!({"dealstage": "qualifiedtobuy", dealsync::properties::REGISTER: "true"}),
    )
    .await;
    let link = common::eventually(
        "the marked deal is linked",
        std::time::Duration::from_secs(60),
        || link_of(&d.store, store::Side::Partner, "partner-a", &deal),
    )
    .await;
    first_sync_agrees(
        &w,
        &d.store,
        &link,
        "qualifiedtobuy",
        "presentationscheduled",
    )
    .await;
    d.shutdown().await;
}

/// A partner invited to a HubSpot deal at `presentationscheduled` gets its deal at that stage's
/// partner mapping, so the first sync agrees and HubSpot's deal keeps its stage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invited_partner_deal_starts_at_hubspots_mapped_stage() {
    let w = World::new().await;
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(&w, dir.path()).await;
    let (_, email) = common::users(&w.pa).await.remove(0);
    let h =
        w.hs.create_deal(json!({
            "dealname": "Inbound: Initech",
            "dealstage": "presentationscheduled",
            dealsync::properties::ADD_PARTNER: "partner-a",
            dealsync::properties::PARTNER_OWNER: email,
            dealsync::properties::WELCOME_NOTE: "Welcome aboard.",
            dealsync::properties::AVAILABILITY_CONFIRMED: "true",
        }))
        .await;
    let link = common::eventually(
        "the partner deal is created and linked",
        std::time::Duration::from_secs(60),
        || link_of(&d.store, store::Side::Hubspot, "hubspot", &h),
    )
    .await;
    first_sync_agrees(
        &w,
        &d.store,
        &link,
        "qualifiedtobuy",
        "presentationscheduled",
    )
    .await;
    d.shutdown().await;
}
