//! The shared deal's lifecycle decided on HubSpot's side (issue 7, items 5 and 6), end to end
//! against the sandbox: a partner excluded mid-stream (nothing crosses after that, either way,
//! fields or messages), closed won and closed lost (banner, active registrations, link state,
//! the final stage still synced), and compensation eligibility flowing HubSpot → partner only.

mod common;

use std::time::Duration;

use common::notes::{note, notes, prop};
use common::{deal_prop, set_deal as set, wait_deal_prop as wait_prop};
use dealsync::daemon::DaemonHandle;
use dealsync::store::{self, Store};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

struct World(common::Duo);

impl std::ops::Deref for World {
    type Target = common::Duo;
    fn deref(&self) -> &common::Duo {
        &self.0
    }
}

impl World {
    async fn new() -> World {
        World(common::Duo::new().await)
    }

    async fn start(&self) -> DaemonHandle {
        self.0.start(self.lifecycle_settings()).await
    }

    /// A linked pair, agreed on by a first sync.
    async fn pair(&self, store: &Store) -> (String, String, i64) {
        let props = json!({"dealname": "Lifecycle", "dealstage": "qualifiedtobuy"});
        let p = self.pa.create_deal(props.clone()).await;
        let h = self.hs.create_deal(props).await;
        let (p2, h2) = (p.clone(), h.clone());
        let link = store
            .call(move |c| store::insert_link(c, "partner-a", &p2, &h2, "channel"))
            .await
            .unwrap();
        let id = link.id;
        store
            .call(move |c| store::enqueue_now(c, &[id], dealsync::store::JobReason::Manual))
            .await
            .unwrap();
        common::eventually("first sync", WAIT, || async {
            let sh = store.call(move |c| store::shadows(c, &[id])).await.unwrap();
            sh.get(&id)
                .is_some_and(|m| m.contains_key("dealname"))
                .then_some(())
        })
        .await;
        (p, h, link.id)
    }
}

async fn link_state(store: &Store, id: i64) -> String {
    store
        .call(move |c| store::link(c, id))
        .await
        .unwrap()
        .map(|l| l.state.to_string())
        .unwrap_or_default()
}

/// Waits until each named poller's cursor has reached its time (ms) and the queue is empty.
async fn settled(store: &Store, marks: Vec<(&'static str, i64)>) {
    common::eventually(
        "the pollers pass the changes and the queue drains",
        WAIT,
        || {
            let (s, marks) = (store.clone(), marks.clone());
            async move {
                s.call(move |c| {
                    for (key, ms) in &marks {
                        if store::cursor(c, key)?.unwrap_or(0) < *ms {
                            return Ok(None);
                        }
                    }
                    Ok((store::queue_stats(c)?.0 == 0).then_some(()))
                })
                .await
                .unwrap()
            }
        },
    )
    .await;
}

/// An object's `hs_lastmodifieddate` in ms.
async fn modified(p: &common::Portal, object: &str, id: &str) -> i64 {
    let a = p
        .get(&format!(
            "/crm/v3/objects/{object}/{id}?properties=hs_lastmodifieddate"
        ))
        .await;
    a.body["properties"]["hs_lastmodifieddate"]
        .as_str()
        .and_then(dealsync::crm::parse_ms)
        .expect("hs_lastmodifieddate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_excluded_partner_stops_syncing_both_ways_at_once() {
    let w = World::new().await;
    let d = w.start().await;
    let (p, h, link) = w.pair(&d.store).await;
    // Still syncing before the exclusion.
    set(&w.pa, &p, json!({"dealname": "Before exclusion"})).await;
    wait_prop(&w.hs, &h, "dealname", "Before exclusion").await;

    set(
        &w.hs,
        &h,
        json!({dealsync::properties::EXCLUDED_PARTNERS: "partner-b;partner-a"}),
    )
    .await;
    wait_prop(&w.pa, &p, dealsync::properties::DEAL_STATUS, "excluded").await;
    wait_prop(&w.pa, &p, dealsync::properties::ACTIVE_REGISTRATIONS, "0").await;
    assert_eq!(link_state(&d.store, link).await, "excluded");

    // Changes after the exclusion, on both sides, fields and messages: none crosses.
    set(&w.pa, &p, json!({"dealname": "Partner after exclusion"})).await;
    set(
        &w.hs,
        &h,
        json!({dealsync::properties::PRODUCT_INTEREST: "sales_hub"}),
    )
    .await;
    let n = note(&w.pa, &p, "shared after exclusion", true, json!({})).await;
    let marks = vec![
        ("partner-a", modified(&w.pa, "deals", &p).await),
        ("hubspot", modified(&w.hs, "deals", &h).await),
        ("partner-a/notes", modified(&w.pa, "notes", &n).await),
    ];
    settled(&d.store, marks).await;
    assert_eq!(
        deal_prop(&w.hs, &h, "dealname").await.as_deref(),
        Some("Before exclusion")
    );
    assert_eq!(
        deal_prop(&w.pa, &p, dealsync::properties::PRODUCT_INTEREST).await,
        None
    );
    assert!(
        !notes(&w.hs)
            .await
            .iter()
            .any(|n| prop(n, "hs_note_body") == Some("shared after exclusion")),
        "a message crossed after the exclusion"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_won_and_closed_lost_set_the_partner_banner() {
    let w = World::new().await;
    let d = w.start().await;
    let (p1, h1, l1) = w.pair(&d.store).await;
    let (p2, h2, l2) = w.pair(&d.store).await;

    set(&w.hs, &h1, json!({"dealstage": "closedwon"})).await;
    wait_prop(&w.pa, &p1, "dealstage", "closedwon").await;
    wait_prop(
        &w.pa,
        &p1,
        dealsync::properties::DEAL_STATUS,
        "customer purchased",
    )
    .await;
    wait_prop(&w.pa, &p1, dealsync::properties::ACTIVE_REGISTRATIONS, "1").await;
    assert_eq!(link_state(&d.store, l1).await, "closed_won");

    set(&w.hs, &h2, json!({"dealstage": "closedlost"})).await;
    wait_prop(&w.pa, &p2, "dealstage", "closedlost").await;
    wait_prop(&w.pa, &p2, dealsync::properties::DEAL_STATUS, "deal lost").await;
    wait_prop(&w.pa, &p2, dealsync::properties::ACTIVE_REGISTRATIONS, "0").await;
    assert_eq!(link_state(&d.store, l2).await, "closed_lost");
    // Status counts links by state.
    let (path, dl) = (
        w.dir.path().join("dealsync.db"),
        w.dir.path().join("dead-letters.jsonl"),
    );
    let status = tokio::task::spawn_blocking(move || {
        let c = dealsync::status::open(&path).unwrap();
        dealsync::status::overview(&c, &dl, Duration::from_secs(600), store::now_ms()).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(status.links.by_state.get("closed_won"), Some(&1));
    assert_eq!(status.links.by_state.get("closed_lost"), Some(&1));
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compensation_eligibility_flows_from_hubspot_to_the_partner_only() {
    let w = World::new().await;
    let d = w.start().await;
    let (p, h, _) = w.pair(&d.store).await;
    set(
        &w.hs,
        &h,
        json!({dealsync::properties::COMPENSATION_ELIGIBLE: "true"}),
    )
    .await;
    wait_prop(
        &w.pa,
        &p,
        dealsync::properties::COMPENSATION_ELIGIBLE,
        "true",
    )
    .await;
    // The partner cannot change it on HubSpot's side: its edit stays on its side.
    set(
        &w.pa,
        &p,
        json!({dealsync::properties::COMPENSATION_ELIGIBLE: "false"}),
    )
    .await;
    set(&w.pa, &p, json!({"dealname": "marker edit"})).await;
    wait_prop(&w.hs, &h, "dealname", "marker edit").await;
    assert_eq!(
        deal_prop(&w.hs, &h, dealsync::properties::COMPENSATION_ELIGIBLE)
            .await
            .as_deref(),
        Some("true")
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotes_on_the_hubspot_deal_appear_on_the_partner_deal_and_stay_current() {
    let w = World::new().await;
    let d = w.start().await;
    let (p, h, _) = w.pair(&d.store).await;
    let a = w
        .hs
        .post(
            "/crm/v3/objects/quotes",
            json!({
                "properties": {
                    "hs_title": "Sales Hub Pro",
                    "hs_expiration_date": "2026-12-31T00:00:00.000Z",
                    "hs_status": "PENDING_APPROVAL",
                    "hs_quote_amount": "12000",
                    "hs_currency": "EUR",
                    "hs_quote_link": "https://quotes.example.com/q/1",
                },
                "associations": [{ "to": { "id": h }, "types": [{ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 64 }] }],
            }),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    let q = a.body["id"].as_str().unwrap().to_owned();
    wait_prop(
        &w.pa,
        &p,
        dealsync::properties::QUOTES,
        "Sales Hub Pro | 12000 EUR | PENDING_APPROVAL | https://quotes.example.com/q/1",
    )
    .await;
    // The rep gets it approved: the partner sees the new status (the quote changed, not the
    // deal, so this comes through the quotes poller).
    let a =
        w.hs.patch(
            &format!("/crm/v3/objects/quotes/{q}"),
            json!({"properties": {"hs_status": "APPROVED"}}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    wait_prop(
        &w.pa,
        &p,
        dealsync::properties::QUOTES,
        "Sales Hub Pro | 12000 EUR | APPROVED | https://quotes.example.com/q/1",
    )
    .await;
    // Quotes flow one way: the HubSpot deal has no such property written.
    assert_eq!(
        deal_prop(&w.hs, &h, dealsync::properties::QUOTES).await,
        None
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quote_request_becomes_a_shared_message_and_a_task_for_the_deal_owner() {
    let w = World::new().await;
    let d = w.start().await;
    let (p, h, _) = w.pair(&d.store).await;
    let owner = common::users(&w.hs).await.remove(0).0;
    set(&w.hs, &h, json!({"hubspot_owner_id": owner})).await;
    set(
        &w.pa,
        &p,
        json!({dealsync::properties::QUOTE_REQUEST: "50 seats of Sales Hub Pro, annual"}),
    )
    .await;
    // The request is handled and cleared on the partner deal.
    common::eventually("the request is cleared", WAIT, || async {
        (deal_prop(&w.pa, &p, dealsync::properties::QUOTE_REQUEST)
            .await
            .is_none()
            && deal_prop(&w.pa, &p, dealsync::properties::DEAL_STATUS)
                .await
                .is_none())
        .then_some(())
    })
    .await;
    // One task on the HubSpot deal, for its owner.
    let a =
        w.hs.get(&format!("/crm/v4/objects/deals/{h}/associations/tasks"))
            .await;
    let tasks: Vec<String> = a.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            t["toObjectId"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| t["toObjectId"].to_string())
        })
        .collect();
    assert_eq!(tasks.len(), 1, "{}", a.text);
    let t =
        w.hs.get(&format!(
            "/crm/v3/objects/tasks/{}?properties=hs_task_subject,hs_task_body,hubspot_owner_id",
            tasks[0]
        ))
        .await;
    assert_eq!(
        t.body["properties"]["hs_task_subject"],
        "Quote requested by partner-a"
    );
    assert_eq!(
        t.body["properties"]["hs_task_body"],
        "50 seats of Sales Hub Pro, annual"
    );
    assert_eq!(t.body["properties"]["hubspot_owner_id"], owner.as_str());
    // A shared message on both sides.
    let want = "Quote request from partner-a: 50 seats of Sales Hub Pro, annual";
    common::eventually(
        "the request shows as a shared message on both sides",
        WAIT,
        || async {
            let on_hs = notes(&w.hs)
                .await
                .iter()
                .any(|n| prop(n, "hs_note_body") == Some(want));
            let on_pa = notes(&w.pa)
                .await
                .iter()
                .any(|n| prop(n, "hs_note_body") == Some(want));
            (on_hs && on_pa).then_some(())
        },
    )
    .await;
    d.shutdown().await;
}
