//! A portal's own write-validation rules (issue 15, item 6): HubSpot's 2026-09 writes enforce
//! them; the sandbox takes them through HubSpot's property-validation paths (and a control for
//! required properties), refuses a breaking write with a 400 `VALIDATION_ERROR` naming the
//! property and the rule, and fails only the breaking input of a batch. dealsync dead-letters
//! such a refusal as `portal_validation`, says what to do, and loses nothing else of the batch.

mod common;

use std::time::Duration;

use common::{assert_error, deal_prop, eventually, set_deal, wait_deal_prop};
use dealsync::store::{self, Store};
use reqwest::Method;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);
const RULES: &str = "/crm/property-validations/2026-09/0-3";

/// The details of HubSpot's "Property values were not valid: [...]" message.
fn details(message: &str) -> Vec<Value> {
    let list = message
        .strip_prefix("Property values were not valid: ")
        .unwrap_or_else(|| panic!("not HubSpot's frame: {message}"));
    serde_json::from_str(list).expect("details are JSON")
}

#[tokio::test]
async fn rules_are_set_and_read_through_hubspots_property_validation_paths() {
    let sb = common::unlimited_sandbox().await;
    let hs = common::portal(&sb, "hubspot");
    let put = hs
        .put(
            &format!("{RULES}/dealname/rule-type/MAX_LENGTH"),
            json!({"ruleArguments": ["8"], "shouldApplyNormalization": false}),
        )
        .await;
    assert_eq!(put.status, 204, "{}", put.text);
    let put = hs
        .put(
            &format!("{RULES}/amount/rule-type/MAX_NUMBER"),
            json!({"ruleArguments": ["1000"]}),
        )
        .await;
    assert_eq!(put.status, 204, "{}", put.text);

    let one = hs
        .get(&format!("{RULES}/dealname/rule-type/MAX_LENGTH"))
        .await;
    assert_eq!(one.status, 200, "{}", one.text);
    assert_eq!(
        one.body,
        json!({"ruleType": "MAX_LENGTH", "ruleArguments": ["8"], "shouldApplyNormalization": false})
    );
    let by_prop = hs.get(&format!("{RULES}/dealname")).await;
    assert_eq!(by_prop.body["results"][0]["ruleType"], "MAX_LENGTH");
    let all = hs.get(RULES).await;
    let names: Vec<&str> = all.body["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|r| r["propertyName"].as_str())
        .collect();
    assert_eq!(names, ["amount", "dealname"], "{}", all.text);
    // The v3 path of the same operations reads the same rules; other portals have none.
    let v3 = hs
        .get("/crm/v3/property-validations/deals/amount/rule-type/MAX_NUMBER")
        .await;
    assert_eq!(v3.body["ruleArguments"], json!(["1000"]));
    let pa = common::portal(&sb, "partner-a");
    assert_eq!(pa.get(RULES).await.body["results"], json!([]));

    // A rule not set is a 404; a rule type outside the spec, or one the sandbox cannot
    // enforce, is refused rather than stored and ignored; so is a property that does not exist.
    assert_error(
        &hs.get(&format!("{RULES}/dealname/rule-type/MIN_LENGTH"))
            .await,
        404,
        "OBJECT_NOT_FOUND",
    );
    for (path, body) in [
        (
            "dealname/rule-type/NOT_A_RULE",
            json!({"ruleArguments": ["1"]}),
        ),
        ("dealname/rule-type/REGEX", json!({"ruleArguments": ["^a"]})),
        (
            "dealname/rule-type/MAX_LENGTH",
            json!({"ruleArguments": ["x"]}),
        ),
        ("dealname/rule-type/MAX_LENGTH", json!({})),
    ] {
        assert_error(
            &hs.put(&format!("{RULES}/{path}"), body).await,
            400,
            "VALIDATION_ERROR",
        );
    }
    assert_error(
        &hs.put(
            &format!("{RULES}/no_such_property/rule-type/MAX_LENGTH"),
            json!({"ruleArguments": ["1"]}),
        )
        .await,
        404,
        "OBJECT_NOT_FOUND",
    );
    // A refused PUT left the stored rule alone.
    let still = hs
        .get(&format!("{RULES}/dealname/rule-type/MAX_LENGTH"))
        .await;
    assert_eq!(still.body["ruleArguments"], json!(["8"]));
}

#[tokio::test]
async fn only_2026_09_writes_enforce_the_rules_and_a_batch_fails_only_the_breaking_input() {
    let sb = common::unlimited_sandbox().await;
    let hs = common::portal(&sb, "hubspot");
    let put = hs
        .put(
            &format!("{RULES}/dealname/rule-type/MAX_LENGTH"),
            json!({"ruleArguments": ["8"]}),
        )
        .await;
    assert_eq!(put.status, 204, "{}", put.text);
    let a = hs.create_deal(json!({"dealname": "A"})).await;
    let b = hs.create_deal(json!({"dealname": "B"})).await;

    // A single write on 2026-09: 400, naming the property and the rule.
    let refused = hs
        .patch(
            &format!("/crm/objects/2026-09/deals/{a}"),
            json!({"properties": {"dealname": "far too long"}}),
        )
        .await;
    assert_error(&refused, 400, "VALIDATION_ERROR");
    let d = details(refused.body["message"].as_str().expect("message"));
    assert_eq!(d[0]["name"], "dealname");
    assert_eq!(d[0]["ruleType"], "MAX_LENGTH");
    assert_eq!(d[0]["isValid"], false);
    assert_eq!(
        refused.body["errors"][0]["context"]["propertyName"],
        json!(["dealname"])
    );
    assert_eq!(deal_prop(&hs, &a, "dealname").await.as_deref(), Some("A"));
    // A create on 2026-09 too.
    let create = hs
        .post(
            "/crm/objects/2026-09/deals",
            json!({"properties": {"dealname": "far too long"}}),
        )
        .await;
    assert_error(&create, 400, "VALIDATION_ERROR");

    // 2026-03 and the legacy v3 paths do not enforce portal rules (HubSpot starts with 2026-09).
    for (path, name) in [
        (
            format!("/crm/objects/2026-03/deals/{a}"),
            "long name 2026-03",
        ),
        (format!("/crm/v3/objects/deals/{a}"), "long name v3"),
    ] {
        let ok = hs
            .patch(&path, json!({"properties": {"dealname": name}}))
            .await;
        assert_eq!(ok.status, 200, "{path}: {}", ok.text);
    }

    // A traced batch update: the breaking input fails alone, the other is written.
    let batch = hs
        .post(
            "/crm/objects/2026-09/deals/batch/update",
            json!({"inputs": [
                {"id": a, "properties": {"dealname": "too long again"}, "objectWriteTraceId": a},
                {"id": b, "properties": {"dealname": "B2"}, "objectWriteTraceId": b},
            ]}),
        )
        .await;
    assert_eq!(batch.status, 200, "2026-09 partial failure: {}", batch.text);
    assert_eq!(batch.body["numErrors"], 1, "{}", batch.text);
    let err = &batch.body["errors"][0];
    assert_eq!(err["category"], "VALIDATION_ERROR");
    assert_eq!(err["context"]["ids"], json!([a]));
    assert_eq!(
        details(err["message"].as_str().expect("message"))[0]["ruleType"],
        "MAX_LENGTH"
    );
    assert_eq!(batch.body["results"][0]["id"], json!(b));
    assert_eq!(deal_prop(&hs, &b, "dealname").await.as_deref(), Some("B2"));
    assert_eq!(
        deal_prop(&hs, &a, "dealname").await.as_deref(),
        Some("long name v3")
    );
}

#[tokio::test]
async fn required_properties_plain_on_create_and_conditional_on_any_write() {
    let sb = common::unlimited_sandbox().await;
    let hs = common::portal(&sb, "hubspot");
    let set = hs
        .control(
            Method::PUT,
            "/required-properties/deals",
            Some(json!({"required": [
                {"propertyName": "closedate", "whenProperty": "dealstage", "whenValues": ["closedwon"]},
                {"propertyName": "amount"},
            ]})),
        )
        .await;
    assert_eq!(set.status, 204, "{}", set.text);
    let got = hs
        .control(Method::GET, "/required-properties/deals", None)
        .await;
    assert_eq!(got.body["required"][0]["whenValues"], json!(["closedwon"]));
    // A requirement on a property that does not exist is refused.
    let bad = hs
        .control(
            Method::PUT,
            "/required-properties/deals",
            Some(json!({"required": [{"propertyName": "nope"}]})),
        )
        .await;
    assert_eq!(bad.status, 404, "{}", bad.text);

    // The create form's required field.
    let refused = hs
        .post(
            "/crm/objects/2026-09/deals",
            json!({"properties": {"dealname": "No amount"}}),
        )
        .await;
    assert_error(&refused, 400, "VALIDATION_ERROR");
    let d = details(refused.body["message"].as_str().expect("message"));
    assert_eq!(
        (d[0]["name"].as_str(), d[0]["ruleType"].as_str()),
        (Some("amount"), Some("CREATE_FORM_REQUIRED"))
    );
    let created = hs
        .post(
            "/crm/objects/2026-09/deals",
            json!({"properties": {"dealname": "Priced", "amount": "10", "dealstage": "qualifiedtobuy"}}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.body["id"].as_str().expect("id").to_owned();

    // Closed won without a close date: refused; with one: written.
    let won = hs
        .patch(
            &format!("/crm/objects/2026-09/deals/{id}"),
            json!({"properties": {"dealstage": "closedwon"}}),
        )
        .await;
    assert_error(&won, 400, "VALIDATION_ERROR");
    let d = details(won.body["message"].as_str().expect("message"));
    assert_eq!(
        (d[0]["name"].as_str(), d[0]["ruleType"].as_str()),
        (Some("closedate"), Some("CONDITIONAL_REQUIRED"))
    );
    assert_eq!(
        deal_prop(&hs, &id, "dealstage").await.as_deref(),
        Some("qualifiedtobuy")
    );
    let dated = hs
        .patch(
            &format!("/crm/objects/2026-09/deals/{id}"),
            json!({"properties": {"dealstage": "closedwon", "closedate": "2026-09-30T00:00:00Z"}}),
        )
        .await;
    assert_eq!(dated.status, 200, "{}", dated.text);

    // Clearing the requirements (and a reset) lets the write through again.
    let cleared = hs
        .control(Method::DELETE, "/required-properties/deals", None)
        .await;
    assert_eq!(cleared.status, 204);
    let free = hs
        .post(
            "/crm/objects/2026-09/deals",
            json!({"properties": {"dealname": "No amount"}}),
        )
        .await;
    assert_eq!(free.status, 201, "{}", free.text);
}

/// A deal's `hs_lastmodifieddate` in ms.
async fn modified(p: &common::Portal, id: &str) -> i64 {
    deal_prop(p, id, "hs_lastmodifieddate")
        .await
        .as_deref()
        .and_then(dealsync::crm::parse_ms)
        .expect("hs_lastmodifieddate")
}

/// Waits until each named poller's cursor has reached its time (ms) and the queue is empty.
async fn settled(store: &Store, marks: Vec<(&'static str, i64)>) {
    eventually(
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
                .expect("store")
            }
        },
    )
    .await;
}

/// A linked pair, agreed on by a first sync.
async fn pair(d: &common::Duo, store: &Store, name: &str) -> (String, String, i64) {
    let props = json!({"dealname": name, "dealstage": "qualifiedtobuy"});
    let p = d.pa.create_deal(props.clone()).await;
    let h = d.hs.create_deal(props).await;
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
    eventually("first sync", WAIT, || async {
        let sh = store
            .call(move |c| store::shadows(c, &[id]))
            .await
            .expect("shadows");
        sh.get(&id)
            .is_some_and(|m| m.contains_key("dealname") && m.contains_key("dealstage"))
            .then_some(())
    })
    .await;
    (p, h, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_rule_dead_letters_one_link_and_the_rest_of_the_batch_lands() {
    let d = common::Duo::new().await;
    let mut settings = d.lifecycle_settings();
    // One worker: both jobs are claimed, read and written as one batch.
    settings.workers = 1;
    let daemon = d.start(settings.clone()).await;
    let (p1, h1, l1) = pair(&d, &daemon.store, "Won deal").await;
    let (p2, h2, _l2) = pair(&d, &daemon.store, "Renamed deal").await;
    // Nothing left over (a first sync's own writes polled back): the next batch is exactly
    // what the partner does next.
    let mut marks = Vec::new();
    for (portal, key, id) in [
        (&d.pa, "partner-a", &p1),
        (&d.pa, "partner-a", &p2),
        (&d.hs, "hubspot", &h1),
        (&d.hs, "hubspot", &h2),
    ] {
        marks.push((key, modified(portal, id).await));
    }
    settled(&daemon.store, marks).await;
    daemon.shutdown().await;

    // HubSpot's admin makes the close date required once a deal is closed won.
    let rule = d
        .hs
        .control(
            Method::PUT,
            "/required-properties/deals",
            Some(json!({"required": [
                {"propertyName": "closedate", "whenProperty": "dealstage", "whenValues": ["closedwon"]},
            ]})),
        )
        .await;
    assert_eq!(rule.status, 204, "{}", rule.text);
    // While the daemon is down the partner wins one deal (no close date: not a synced field)
    // and renames the other, so the next poll finds both and one batch writes both.
    set_deal(&d.pa, &p1, json!({"dealstage": "closedwon"})).await;
    set_deal(&d.pa, &p2, json!({"dealname": "Renamed deal 2"})).await;
    d.hs.control(Method::DELETE, "/counters", None).await;
    let daemon = d.start(settings.clone()).await;

    wait_deal_prop(&d.hs, &h2, "dealname", "Renamed deal 2").await;
    let dl = d.dir.path().join("dl.jsonl");
    let entry = eventually("the refused link is dead-lettered", WAIT, || async {
        let (entries, _) = dealsync::deadletter::read(&dl).ok()?;
        entries.into_iter().find(|e| e.link_id == l1)
    })
    .await;
    assert_eq!(entry.class, "portal_validation", "{entry:?}");
    for part in [
        "closedate",
        "CONDITIONAL_REQUIRED",
        "portal hubspot",
        &format!("deal {h1}"),
        "map the property as a field, set it on that side, or relax the rule in the portal's settings",
        "dealsync replay --class portal_validation",
    ] {
        assert!(entry.error.contains(part), "{part} missing: {}", entry.error);
    }
    // The refused write changed nothing; only that link was dead-lettered.
    assert_eq!(
        deal_prop(&d.hs, &h1, "dealstage").await.as_deref(),
        Some("qualifiedtobuy")
    );
    let (entries, _) = dealsync::deadletter::read(&dl).expect("dead letters");
    assert_eq!(entries.len(), 1, "{entries:?}");
    // One HubSpot batch update carried both changes (so the other really was in the same batch).
    let counters = d.hs.counters().await;
    assert_eq!(
        counters["endpoints"]["POST /crm/objects/2026-09/deals/batch/update"], 1,
        "{counters}"
    );

    // `dealsync status --deal` shows the failure: class, property and rule.
    let (db, dl2, h) = (d.dir.path().join("dealsync.db"), dl.clone(), h1.clone());
    let deal = tokio::task::spawn_blocking(move || {
        let c = dealsync::status::open(&db).expect("store");
        dealsync::status::deal(&c, &dl2, &h, &["dealstage".to_owned()]).expect("deal status")
    })
    .await
    .expect("status task");
    assert_eq!(deal.links[0].dead_letters[0].class, "portal_validation");
    let text = dealsync::status::render_deal(&deal);
    assert!(
        text.contains("portal_validation: closedate (rule CONDITIONAL_REQUIRED)"),
        "{text}"
    );

    // The admin relaxes the rule; replaying the class lands the stage.
    d.hs.control(Method::DELETE, "/required-properties/deals", None)
        .await;
    let file = dealsync::deadletter::read_all(&dl).expect("dead letters");
    let chosen = dealsync::replay::select(
        &file,
        &dealsync::replay::Selection::Class("portal_validation".into()),
    )
    .expect("select");
    assert_eq!(chosen.len(), 1);
    let out = dealsync::replay::replay(&daemon.engine, &dl, &chosen, |_, _| {})
        .await
        .expect("replay");
    assert!(out[0].ok, "{:?}", out[0]);
    wait_deal_prop(&d.hs, &h1, "dealstage", "closedwon").await;
    daemon.shutdown().await;
}
