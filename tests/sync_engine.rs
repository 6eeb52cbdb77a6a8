//! The sync engine end to end against the sandbox over loopback: field changes each way, the
//! conflict policies, exactly one API write per change (no echo loop), unmapped stages to the
//! dead-letter file, 429/5xx storms, restart from the cursor, more than 10,000 changed deals,
//! same-millisecond changes at page boundaries, and search index lag.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dealsync::crm::{Budget, Client, RetryPolicy};
use dealsync::daemon::{DaemonHandle, DaemonParts, PortalConn};
use dealsync::engine::{Engine, FieldKind, FieldSpec, Portals, Settings, StageMap};
use dealsync::ingest::poll::Poller;
use dealsync::rules::{ConflictPolicy, Direction, Rule};
use dealsync::sandbox::{SandboxConfig, SandboxHandle};
use dealsync::store::{self, Side, Store};
use serde_json::{json, Value};
use tokio::sync::Notify;

/// Generous: CI machines are slow, and an injected 429 pauses a portal for HubSpot's 10 s window.
const WAIT: Duration = Duration::from_secs(60);

fn field(
    name: &str,
    prop: &str,
    kind: FieldKind,
    direction: Direction,
    conflict: ConflictPolicy,
) -> FieldSpec {
    FieldSpec {
        name: name.into(),
        partner_property: prop.into(),
        hubspot_property: prop.into(),
        kind,
        rule: Rule {
            direction,
            conflict,
            unless_blank: false,
        },
    }
}

fn default_fields() -> Vec<FieldSpec> {
    use ConflictPolicy::*;
    use Direction::*;
    vec![
        field("dealname", "dealname", FieldKind::Text, Both, LatestWins),
        field("dealstage", "dealstage", FieldKind::Stage, Both, LatestWins),
        field(
            "product_interest",
            dealsync::properties::PRODUCT_INTEREST,
            FieldKind::MultiSelect,
            Both,
            LatestWins,
        ),
        field(
            "intro_note",
            dealsync::properties::INTRO_NOTE,
            FieldKind::Text,
            ToHubspot,
            PartnerWins,
        ),
        field(
            "compensation_eligible",
            dealsync::properties::COMPENSATION_ELIGIBLE,
            FieldKind::Text,
            ToPartner,
            HubspotWins,
        ),
    ]
}

/// Identity map over the default pipeline, except `contractsent`, which partners call
/// `presentationscheduled`'s neighbour `decisionmakerboughtin` is left out on purpose so a test
/// can hit an unmapped stage.
fn stage_map() -> StageMap {
    let mut m = StageMap::default();
    for s in [
        "appointmentscheduled",
        "qualifiedtobuy",
        "presentationscheduled",
        "contractsent",
        "closedwon",
        "closedlost",
    ] {
        m.to_hubspot.insert(s.into(), s.into());
        m.to_partner.insert(s.into(), s.into());
    }
    m
}

struct World {
    sb: SandboxHandle,
    hs: common::Portal,
    pa: common::Portal,
    dir: tempfile::TempDir,
}

impl World {
    async fn new(config: SandboxConfig) -> World {
        let sb = common::sandbox_with(config).await;
        let hs = common::portal(&sb, "hubspot");
        let pa = common::portal(&sb, "partner-a");
        let w = World {
            hs,
            pa,
            sb,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        for p in [&w.hs, &w.pa] {
            let c = w.client(p);
            dealsync::setup::ensure(&c, false, true)
                .await
                .expect("setup");
        }
        w
    }

    fn conn(&self, p: &common::Portal) -> PortalConn {
        PortalConn {
            name: p.info.name.clone(),
            base_url: self.sb.base_url.clone(),
            token: p.info.token.clone(),
            rate_limit_per_10s: 100,
            search_per_s: 5,
            api: Default::default(),
            oauth: None,
        }
    }

    fn client(&self, p: &common::Portal) -> Client {
        let c = self.conn(p);
        Client::new(
            &c.name,
            &c.base_url,
            &c.token,
            Arc::new(Budget::new(100, 4)),
            fast_retry(),
        )
        .expect("client")
    }

    fn settings(&self) -> Settings {
        Settings {
            fields: default_fields(),
            stage_maps: HashMap::from([("partner-a".to_owned(), stage_map())]),
            batch_size: 100,
            workers: 2,
            max_attempts: 6,
            retry_base: Duration::from_millis(50),
            retry_max: Duration::from_millis(500),
            dead_letter_path: self.dir.path().join("dead-letters.jsonl"),
            mass_deletion: Default::default(),
            messages: Default::default(),
            closed_stages: Default::default(),
            registration: Default::default(),
            notify: Default::default(),
        }
    }

    fn parts(&self) -> DaemonParts {
        DaemonParts {
            store_path: self.dir.path().join("dealsync.db"),
            hubspot: self.conn(&self.hs),
            partners: vec![self.conn(&self.pa)],
            settings: self.settings(),
            poll_interval: Duration::from_millis(200),
            poll_overlap: Duration::from_secs(5),
            sweep_interval: Duration::from_secs(3600),
            retry: fast_retry(),
            drain: Duration::from_secs(10),
            webhooks: None,
        }
    }

    /// An engine without pollers or workers, for deterministic single-batch tests.
    async fn engine(&self) -> Engine {
        self.engine_with(self.settings()).await
    }

    /// [`World::engine`] with other settings.
    async fn engine_with(&self, settings: Settings) -> Engine {
        Engine::new(
            Store::open(&self.dir.path().join("dealsync.db"))
                .await
                .expect("store"),
            Portals {
                hubspot: self.client(&self.hs),
                partners: HashMap::from([("partner-a".to_owned(), self.client(&self.pa))]),
            },
            settings,
            Arc::new(Notify::new()),
        )
    }

    /// Creates a deal on each side with the same values and links them.
    async fn linked_pair(&self, store: &Store, props: Value) -> (String, String, i64) {
        let p = self.pa.create_deal(props.clone()).await;
        let h = self.hs.create_deal(props).await;
        let (p2, h2) = (p.clone(), h.clone());
        let link = store
            .call(move |c| store::insert_link(c, "partner-a", &p2, &h2, "channel"))
            .await
            .expect("link");
        (p, h, link.id)
    }

    fn dead_letters(&self) -> Vec<dealsync::deadletter::Entry> {
        dealsync::deadletter::read(&self.dir.path().join("dead-letters.jsonl"))
            .expect("read")
            .0
    }
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_retries: 3,
        min_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        timeout: Duration::from_secs(5),
    }
}

async fn prop(p: &common::Portal, id: &str, name: &str) -> Option<String> {
    let a = p
        .get(&format!("/crm/v3/objects/deals/{id}?properties={name}"))
        .await;
    assert_eq!(a.status, 200, "read deal {id}: {}", a.text);
    a.body["properties"][name].as_str().map(str::to_owned)
}

/// Reads a property, or `None` when the read itself failed (a fault-injected answer).
async fn try_prop(p: &common::Portal, id: &str, name: &str) -> Option<Option<String>> {
    let a = p
        .get(&format!("/crm/v3/objects/deals/{id}?properties={name}"))
        .await;
    (a.status == 200).then(|| a.body["properties"][name].as_str().map(str::to_owned))
}

async fn wait_prop(p: &common::Portal, id: &str, name: &str, want: &str) {
    common::eventually(
        &format!("{name} of deal {id} in {} becomes {want}", p.info.name),
        WAIT,
        || async { (try_prop(p, id, name).await.flatten().as_deref() == Some(want)).then_some(()) },
    )
    .await
}

async fn run_once(engine: &Engine, link: i64) {
    engine
        .store()
        .call(move |c| store::enqueue_now(c, &[link], dealsync::store::JobReason::Manual))
        .await
        .expect("enqueue");
    let jobs = engine
        .store()
        .call(|c| store::claim_jobs(c, 100, store::now_ms() + 1))
        .await
        .expect("claim");
    assert!(!jobs.is_empty());
    engine.run_batch(jobs).await.expect("batch");
}

fn writes(counters: &Value) -> u64 {
    counters["writes"].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn changes_flow_each_way_with_one_write_and_no_echo() {
    let w = World::new(SandboxConfig::default()).await;
    let d = DaemonHandle::start(w.parts()).await.expect("daemon");
    let (p, h, link) = w
        .linked_pair(
            &d.store,
            json!({"dealname": "Acme rollout", "dealstage": "qualifiedtobuy"}),
        )
        .await;
    d.store
        .call(move |c| store::enqueue_now(c, &[link], dealsync::store::JobReason::Manual))
        .await
        .unwrap();
    // The first sync agrees on the shared values and records shadows.
    common::eventually("first sync records shadows", WAIT, || {
        let s = d.store.clone();
        async move {
            let sh = s.call(move |c| store::shadows(c, &[link])).await.unwrap();
            (sh.get(&link)
                .is_some_and(|m| m.get("dealname") == Some(&Some("Acme rollout".into()))))
            .then_some(())
        }
    })
    .await;

    let before_hs = writes(&w.hs.counters().await);
    let before_pa = writes(&w.pa.counters().await);
    // Partner renames the deal and adds product interest.
    let a = w
        .pa
        .patch(&format!("/crm/v3/objects/deals/{p}"), json!({"properties": {"dealname": "Acme rollout EU", dealsync::properties::PRODUCT_INTEREST: "sales_hub;marketing_hub"}}))
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    wait_prop(&w.hs, &h, "dealname", "Acme rollout EU").await;
    wait_prop(
        &w.hs,
        &h,
        dealsync::properties::PRODUCT_INTEREST,
        "marketing_hub;sales_hub",
    )
    .await;
    // HubSpot's rep moves the stage.
    let a =
        w.hs.patch(
            &format!("/crm/v3/objects/deals/{h}"),
            json!({"properties": {"dealstage": "contractsent"}}),
        )
        .await;
    assert_eq!(a.status, 200);
    wait_prop(&w.pa, &p, "dealstage", "contractsent").await;

    // Let both pollers see our own writes come back (the echo) and the queue drain.
    let cursor_past = |portal: &'static str, min: i64| {
        let s = d.store.clone();
        async move {
            let c = s
                .call(move |c| store::cursor(c, portal))
                .await
                .unwrap()
                .unwrap_or(0);
            let (depth, _) = s.call(|c| store::queue_stats(c)).await.unwrap();
            (c >= min && depth == 0).then_some(())
        }
    };
    let hs_mod =
        dealsync::crm::parse_ms(&prop(&w.hs, &h, "hs_lastmodifieddate").await.unwrap()).unwrap();
    let pa_mod =
        dealsync::crm::parse_ms(&prop(&w.pa, &p, "hs_lastmodifieddate").await.unwrap()).unwrap();
    common::eventually("pollers pass the echoes", WAIT, || {
        cursor_past("hubspot", hs_mod)
    })
    .await;
    common::eventually("pollers pass the echoes", WAIT, || {
        cursor_past("partner-a", pa_mod)
    })
    .await;
    // A few more poll rounds: nothing new may be written.
    let polls = |portal: &'static str| {
        let s = d.store.clone();
        async move {
            s.call(move |c| {
                Ok(c.query_row(
                    "SELECT last_poll_ok FROM portal_health WHERE portal = ?1",
                    [portal],
                    |r| r.get::<_, Option<i64>>(0),
                )?)
            })
            .await
            .unwrap()
            .unwrap_or(0)
        }
    };
    let t = store::now_ms() + 600;
    common::eventually("two more poll rounds", WAIT, || async {
        (polls("hubspot").await > t && polls("partner-a").await > t).then_some(())
    })
    .await;

    // Exactly one batch update each way: the partner change went to HubSpot in one write, the
    // HubSpot stage change to the partner in one write; the echoes wrote nothing.
    assert_eq!(
        writes(&w.hs.counters().await) - before_hs,
        2,
        "HubSpot: our own PATCH + one sync write"
    );
    assert_eq!(
        writes(&w.pa.counters().await) - before_pa,
        2,
        "partner: our own PATCH + one sync write"
    );
    d.shutdown().await;
    assert!(w.dead_letters().is_empty());
}

#[tokio::test]
async fn one_way_fields_flow_only_their_way() {
    let w = World::new(SandboxConfig::default()).await;
    let e = w.engine().await;
    let (p, h, link) = w
        .linked_pair(
            e.store(),
            json!({"dealname": "Globex", "dealstage": "qualifiedtobuy"}),
        )
        .await;
    run_once(&e, link).await;
    w.pa.patch(
        &format!("/crm/v3/objects/deals/{p}"),
        json!({"properties": {dealsync::properties::INTRO_NOTE: "Met at summit"}}),
    )
    .await;
    w.hs.patch(
        &format!("/crm/v3/objects/deals/{h}"),
        json!({"properties": {dealsync::properties::COMPENSATION_ELIGIBLE: "true"}}),
    )
    .await;
    run_once(&e, link).await;
    assert_eq!(
        prop(&w.hs, &h, dealsync::properties::INTRO_NOTE)
            .await
            .as_deref(),
        Some("Met at summit")
    );
    assert_eq!(
        prop(&w.pa, &p, dealsync::properties::COMPENSATION_ELIGIBLE)
            .await
            .as_deref(),
        Some("true")
    );
    // The reverse directions do not flow.
    w.hs.patch(
        &format!("/crm/v3/objects/deals/{h}"),
        json!({"properties": {dealsync::properties::INTRO_NOTE: "HubSpot's own note"}}),
    )
    .await;
    w.pa.patch(
        &format!("/crm/v3/objects/deals/{p}"),
        json!({"properties": {dealsync::properties::COMPENSATION_ELIGIBLE: "false"}}),
    )
    .await;
    run_once(&e, link).await;
    assert_eq!(
        prop(&w.pa, &p, dealsync::properties::INTRO_NOTE)
            .await
            .as_deref(),
        Some("Met at summit")
    );
    assert_eq!(
        prop(&w.hs, &h, dealsync::properties::COMPENSATION_ELIGIBLE)
            .await
            .as_deref(),
        Some("true")
    );
}

#[tokio::test]
async fn each_conflict_policy_picks_its_winner_and_records_the_conflict() {
    let w = World::new(SandboxConfig::default()).await;
    for (policy, expect) in [
        (ConflictPolicy::HubspotWins, "from hubspot"),
        (ConflictPolicy::PartnerWins, "from partner"),
        // latest_wins: the HubSpot edit is made second, so it is the latest.
        (ConflictPolicy::LatestWins, "from hubspot"),
    ] {
        let e = w
            .engine_with(Settings {
                fields: vec![field(
                    "dealname",
                    "dealname",
                    FieldKind::Text,
                    Direction::Both,
                    policy,
                )],
                ..w.settings()
            })
            .await;
        let (p, h, link) = w
            .linked_pair(e.store(), json!({"dealname": "Initech"}))
            .await;
        run_once(&e, link).await;
        w.pa.patch(
            &format!("/crm/v3/objects/deals/{p}"),
            json!({"properties": {"dealname": "from partner"}}),
        )
        .await;
        // Make sure the second edit is strictly later.
        let first = dealsync::crm::parse_ms(&prop(&w.pa, &p, "hs_lastmodifieddate").await.unwrap())
            .unwrap();
        common::eventually("the clock moves", WAIT, || async {
            (store::now_ms() > first).then_some(())
        })
        .await;
        w.hs.patch(
            &format!("/crm/v3/objects/deals/{h}"),
            json!({"properties": {"dealname": "from hubspot"}}),
        )
        .await;
        run_once(&e, link).await;
        assert_eq!(
            prop(&w.pa, &p, "dealname").await.as_deref(),
            Some(expect),
            "{policy:?}"
        );
        assert_eq!(
            prop(&w.hs, &h, "dealname").await.as_deref(),
            Some(expect),
            "{policy:?}"
        );
        let conflicts = e
            .store()
            .call(move |c| store::conflicts_for(c, link))
            .await
            .unwrap();
        assert_eq!(conflicts.len(), 1, "{policy:?}: one conflict recorded");
        assert_eq!(conflicts[0].partner_value.as_deref(), Some("from partner"));
        assert_eq!(conflicts[0].hubspot_value.as_deref(), Some("from hubspot"));
    }
}

#[tokio::test]
async fn an_unmapped_stage_goes_to_the_dead_letter_file_naming_the_stage() {
    let w = World::new(SandboxConfig::default()).await;
    let e = w.engine().await;
    let (p, _h, link) = w
        .linked_pair(
            e.store(),
            json!({"dealname": "Umbrella", "dealstage": "qualifiedtobuy"}),
        )
        .await;
    run_once(&e, link).await;
    w.pa.patch(
        &format!("/crm/v3/objects/deals/{p}"),
        json!({"properties": {"dealstage": "decisionmakerboughtin"}}),
    )
    .await;
    run_once(&e, link).await;
    let dl = w.dead_letters();
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].class, "unmapped_stage");
    assert!(
        dl[0].error.contains("decisionmakerboughtin"),
        "{}",
        dl[0].error
    );
    assert!(
        dl[0].error.contains("stage_map"),
        "says what to do: {}",
        dl[0].error
    );
    assert_eq!(
        e.store().call(|c| store::queue_stats(c)).await.unwrap().0,
        0,
        "the job left the queue"
    );
}

#[tokio::test]
async fn a_429_and_5xx_storm_converges_with_nothing_lost() {
    let w = World::new(SandboxConfig {
        // Only injected faults: the test's own reads must not eat the portals' real budget.
        rate_limit_per_10s: None,
        ..SandboxConfig::default()
    })
    .await;
    let d = DaemonHandle::start(w.parts()).await.expect("daemon");
    let mut pairs = Vec::new();
    for i in 0..10 {
        pairs.push(
            w.linked_pair(&d.store, json!({"dealname": format!("Storm {i}")}))
                .await,
        );
    }
    let ids: Vec<i64> = pairs.iter().map(|x| x.2).collect();
    d.store
        .call(move |c| store::enqueue_now(c, &ids, dealsync::store::JobReason::Manual))
        .await
        .unwrap();
    let storm = json!({"rate_429": 0.1, "rate_500": 0.1, "rate_503": 0.1, "rate_502_html": 0.05});
    w.hs.set_faults(storm.clone()).await;
    w.pa.set_faults(storm).await;
    for (i, (p, _, _)) in pairs.iter().enumerate() {
        // The test's own edits bypass the storm by retrying until accepted.
        common::eventually("edit accepted", WAIT, || async {
            let a =
                w.pa.patch(
                    &format!("/crm/v3/objects/deals/{p}"),
                    json!({"properties": {"dealname": format!("Storm {i} renamed")}}),
                )
                .await;
            (a.status == 200).then_some(())
        })
        .await;
    }
    for (i, (_, h, _)) in pairs.iter().enumerate() {
        wait_prop(&w.hs, h, "dealname", &format!("Storm {i} renamed")).await;
    }
    let c = w.hs.counters().await;
    assert!(
        c["http_429"].as_u64().unwrap() + c["http_5xx"].as_u64().unwrap() > 0,
        "the storm happened: {c}"
    );
    d.shutdown().await;
    assert!(
        w.dead_letters().is_empty(),
        "transient faults never dead-letter: {:?}",
        w.dead_letters()
    );
}

#[tokio::test]
async fn restart_resumes_from_the_persisted_cursor() {
    let w = World::new(SandboxConfig::default()).await;
    let d = DaemonHandle::start(w.parts()).await.expect("daemon");
    let (p, h, link) = w.linked_pair(&d.store, json!({"dealname": "Hooli"})).await;
    d.store
        .call(move |c| store::enqueue_now(c, &[link], dealsync::store::JobReason::Manual))
        .await
        .unwrap();
    common::eventually("a partner cursor is stored", WAIT, || {
        let s = d.store.clone();
        async move { s.call(|c| store::cursor(c, "partner-a")).await.unwrap() }
    })
    .await;
    d.shutdown().await;
    // A change while the daemon is down.
    w.pa.patch(
        &format!("/crm/v3/objects/deals/{p}"),
        json!({"properties": {"dealname": "Hooli XYZ"}}),
    )
    .await;
    let d = DaemonHandle::start(w.parts()).await.expect("daemon again");
    wait_prop(&w.hs, &h, "dealname", "Hooli XYZ").await;
    d.shutdown().await;
}

/// More than 10,000 modified deals, created in batches that share a millisecond so runs of
/// equal timestamps straddle both page boundaries and the 10,000-result restart.
#[tokio::test]
async fn polling_finds_every_change_past_the_search_cap_and_at_page_boundaries() {
    let w = World::new(SandboxConfig {
        rate_limit_per_10s: None,
        daily_limit: None,
        search_per_s: None,
        ..SandboxConfig::default()
    })
    .await;
    let store = Store::open(&w.dir.path().join("dealsync.db"))
        .await
        .unwrap();
    // 50 first, so every later batch of 100 (one shared millisecond each) straddles a
    // 200-result page boundary and the 10,000 restart point.
    let mut ids = Vec::new();
    for (count, batches) in [(50usize, 1usize), (100, 101)] {
        for _ in 0..batches {
            let inputs: Vec<Value> = (0..count)
                .map(|i| json!({"properties": {"dealname": format!("Bulk {i}")}}))
                .collect();
            let a =
                w.pa.post(
                    "/crm/v3/objects/deals/batch/create",
                    json!({"inputs": inputs}),
                )
                .await;
            assert_eq!(a.status, 201, "{}", a.text);
            ids.extend(
                a.body["results"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["id"].as_str().unwrap().to_owned()),
            );
        }
    }
    assert_eq!(ids.len(), 10_150);
    let ids2 = ids.clone();
    store
        .call(move |c| {
            let tx = c.transaction()?;
            for (i, id) in ids2.iter().enumerate() {
                store::insert_link(&tx, "partner-a", id, &format!("hs-{i}"), "channel")?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
        .unwrap();
    let mut poller = Poller::new(
        "partner-a",
        Side::Partner,
        w.client(&w.pa),
        store.clone(),
        Duration::from_secs(1),
        Duration::from_secs(120),
        Arc::new(Notify::new()),
    );
    let stats = poller.poll_once().await.expect("poll");
    assert!(
        stats.pages > 10_000 / 200,
        "the scan went past search's 10,000-result cap: {stats:?}"
    );
    assert_eq!(
        stats.queued, 10_150,
        "every linked deal is queued exactly once: {stats:?}"
    );
    assert_eq!(
        store.call(|c| store::queue_stats(c)).await.unwrap().0,
        10_150
    );
    // A second poll over the same window queues nothing new.
    let again = poller.poll_once().await.expect("poll again");
    assert_eq!(again.queued, 0, "{again:?}");
}

#[tokio::test]
async fn search_index_lag_is_covered_by_the_overlap() {
    // Unthrottled: this test's own reads while it waits must not eat the portal's rate limit
    // (on a slow machine they starved the daemon into 429 pauses).
    let w = World::new(SandboxConfig {
        rate_limit_per_10s: None,
        daily_limit: None,
        search_per_s: None,
        ..SandboxConfig::default()
    })
    .await;
    w.pa.set_faults(json!({"search_lag_ms": 1500})).await;
    let d = DaemonHandle::start(w.parts()).await.expect("daemon");
    let (p, h, link) = w
        .linked_pair(&d.store, json!({"dealname": "Lagging"}))
        .await;
    d.store
        .call(move |c| store::enqueue_now(c, &[link], dealsync::store::JobReason::Manual))
        .await
        .unwrap();
    // The first sync has agreed on the values before the change: only polling, through the
    // lagging index, can find the change.
    common::eventually("the first sync", WAIT, || async {
        let n: i64 = d
            .store
            .call(|c| Ok(c.query_row("SELECT COUNT(*) FROM job_history", [], |r| r.get(0))?))
            .await
            .unwrap();
        (n >= 1).then_some(())
    })
    .await;
    w.pa.patch(
        &format!("/crm/v3/objects/deals/{p}"),
        json!({"properties": {"dealname": "Lagging but found"}}),
    )
    .await;
    wait_prop(&w.hs, &h, "dealname", "Lagging but found").await;
    d.shutdown().await;
}

/// A full disk under the dead-letter file (`/dev/full` answers every write with ENOSPC): the
/// job is not lost and not stuck — it goes back to the queue with the reason, which names the
/// file and says what to do — and the store stays readable.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_dead_letter_file_keeps_the_job_and_says_why() {
    use rusqlite::OptionalExtension;
    let w = World::new(SandboxConfig::default()).await;
    // The dead-letter file cannot be written; the first sync needs none.
    let e = w
        .engine_with(Settings {
            dead_letter_path: "/dev/full".into(),
            ..w.settings()
        })
        .await;
    let (p, _h, link) = w
        .linked_pair(
            e.store(),
            json!({"dealname": "Full disk", "dealstage": "qualifiedtobuy"}),
        )
        .await;
    run_once(&e, link).await;
    let e = Arc::new(e);
    // An unmapped stage: the job must be dead-lettered, and the file cannot be written.
    w.pa.patch(
        &format!("/crm/v3/objects/deals/{p}"),
        json!({"properties": {"dealstage": "decisionmakerboughtin"}}),
    )
    .await;
    e.store()
        .call(move |c| store::enqueue_now(c, &[link], dealsync::store::JobReason::Manual))
        .await
        .unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn(e.clone().worker(cancel.clone()));
    let error = common::eventually("the job is put back with the reason", WAIT, || {
        let s = e.store().clone();
        async move {
            s.call(move |c| {
                Ok(c.query_row(
                    "SELECT last_error FROM jobs WHERE link_id = ?1",
                    [link],
                    |r| r.get::<_, Option<String>>(0),
                )
                .optional()?)
            })
            .await
            .unwrap()
            .flatten()
            .filter(|e| e.contains("No space left"))
        }
    })
    .await;
    cancel.cancel();
    worker.await.unwrap();
    assert!(error.contains("/dev/full"), "names the file: {error}");
    assert!(
        error.contains("check free disk space"),
        "says what to do: {error}"
    );
    assert_eq!(
        e.store().call(|c| store::queue_stats(c)).await.unwrap().0,
        1,
        "the job is still queued"
    );
    let db = w.dir.path().join("dealsync.db");
    let status = tokio::task::spawn_blocking(move || {
        let c = dealsync::status::open(&db).unwrap();
        dealsync::status::overview(
            &c,
            std::path::Path::new("/dev/null"),
            Duration::from_secs(600),
            store::now_ms(),
        )
        .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(status.links.total, 1, "the store is intact");
}
