//! Integration tests for the sandbox's CRM v3 objects API over loopback: create, read, update
//! and archive for every object type, validation, archive semantics, list paging, unique
//! properties with `idProperty`, the five batch calls, search (operators, limits, paging, the
//! 10,000-result cap, index lag) and bad input.
//!
//! Each test starts its own sandbox on 127.0.0.1:0. Nothing sleeps to synchronise: waiting is
//! done with `common::eventually`, which polls a condition against a deadline.

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use common::{assert_error, eventually, Answer, Portal};
use reqwest::Method;
use serde_json::{json, Value};

const DEAL: &str = "/crm/v3/objects/deals";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A portal on a fresh sandbox without rate limits (these tests make many calls; rate limits
/// are covered elsewhere).
async fn portal() -> (dealsync::sandbox::SandboxHandle, Portal) {
    let sb = common::unlimited_sandbox().await;
    let p = common::portal(&sb, "partner-a");
    (sb, p)
}

/// Parses HubSpot's ISO-8601 date-time with milliseconds (`2019-10-30T03:30:17.883Z`).
fn iso_ms(s: &Value) -> i64 {
    let s = s
        .as_str()
        .unwrap_or_else(|| panic!("expected an ISO date-time string, got {s}"));
    assert_eq!(s.len(), 24, "not ISO-8601 with milliseconds in UTC: {s}");
    assert!(
        s.ends_with('Z') && s.as_bytes()[19] == b'.',
        "not ISO-8601 with ms: {s}"
    );
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s} is not RFC 3339: {e}"))
        .timestamp_millis()
}

/// Waits (bounded) until the wall clock is past `ms`, so that the next write cannot share the
/// millisecond of an earlier one.
async fn clock_past(ms: i64) {
    eventually(
        "the clock moves past the last write",
        Duration::from_secs(2),
        || async move { (chrono::Utc::now().timestamp_millis() > ms).then_some(()) },
    )
    .await;
}

fn ids(results: &Value) -> Vec<String> {
    results
        .as_array()
        .unwrap_or_else(|| panic!("expected an array of results, got {results}"))
        .iter()
        .map(|r| r["id"].as_str().expect("id is a string").to_owned())
        .collect()
}

/// The `errors[].code` values of an error body.
fn error_codes(a: &Answer) -> Vec<String> {
    a.body["errors"]
        .as_array()
        .map(|es| {
            es.iter()
                .filter_map(|e| e["code"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The property names named in `errors[].context.propertyName` of an error body.
fn error_properties(a: &Answer) -> Vec<String> {
    a.body["errors"]
        .as_array()
        .map(|es| {
            es.iter()
                .flat_map(|e| {
                    e["context"]["propertyName"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn assert_all_values_are_strings(obj: &Value) {
    let props = obj["properties"].as_object().expect("properties object");
    for (k, v) in props {
        assert!(
            v.is_string() || v.is_null(),
            "property {k} is not a string or null: {v} in {obj}"
        );
    }
}

async fn search(p: &Portal, t: &str, body: Value) -> Answer {
    p.post(&format!("/crm/v3/objects/{t}/search"), body).await
}

/// Walks a list endpoint with `limit=100` and returns every id, in order.
async fn list_all(p: &Portal, t: &str, extra: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..1000 {
        let mut path = format!("/crm/v3/objects/{t}?limit=100{extra}");
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let a = p.get(&path).await;
        assert_eq!(a.status, 200, "list: {}", a.text);
        out.extend(ids(&a.body["results"]));
        match a.body["paging"]["next"]["after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return out,
        }
    }
    panic!("list paging did not end");
}

/// Creates deals through batch create, 100 per call; returns their ids in input order.
async fn batch_create_deals(p: &Portal, n: usize, prefix: &str) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let end = (i + 100).min(n);
        let inputs: Vec<Value> = (i..end)
            .map(|k| json!({ "properties": { "dealname": format!("{prefix} {k}"), "amount": format!("{k}") } }))
            .collect();
        let a = p
            .post(&format!("{DEAL}/batch/create"), json!({ "inputs": inputs }))
            .await;
        assert_eq!(a.status, 201, "batch create: {}", a.text);
        let got = ids(&a.body["results"]);
        assert_eq!(got.len(), end - i, "batch create result count");
        out.extend(got);
        i = end;
    }
    out
}

/// Creates a string property with unique values on `t` (group must exist for the type).
async fn create_unique_property(p: &Portal, t: &str, group: &str, name: &str) {
    let a = p
        .post(
            &format!("/crm/v3/properties/{t}"),
            json!({
                "name": name,
                "label": "Partner reference",
                "type": "string",
                "fieldType": "text",
                "groupName": group,
                "hasUniqueValue": true,
            }),
        )
        .await;
    assert_eq!(a.status, 201, "create unique property: {}", a.text);
    assert_eq!(a.body["hasUniqueValue"], true, "{}", a.text);
}

/// Uploads a file with the multipart form HubSpot's Files v3 API takes; returns its id.
async fn upload_file(p: &Portal, name: &str, content: &[u8]) -> String {
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(content.to_vec())
                .file_name(name.to_owned())
                .mime_str("text/plain")
                .expect("mime"),
        )
        .text("folderPath", "/dealsync-tests")
        .text("options", r#"{"access":"PRIVATE"}"#);
    let a = p
        .send(p.req(Method::POST, "/files/v3/files").multipart(form))
        .await;
    assert_eq!(a.status, 201, "upload: {}", a.text);
    assert_eq!(a.body["access"], "PRIVATE", "{}", a.text);
    a.body["id"].as_str().expect("file id").to_owned()
}

/// A search filter.
fn f(prop: &str, op: &str, value: Value) -> Value {
    let mut v = json!({ "propertyName": prop, "operator": op });
    match op {
        "IN" | "NOT_IN" => v["values"] = value,
        "BETWEEN" => {
            v["value"] = value[0].clone();
            v["highValue"] = value[1].clone();
        }
        "HAS_PROPERTY" | "NOT_HAS_PROPERTY" => {}
        _ => v["value"] = value,
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Create / read / update / archive
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn crud_round_trip_for_every_object_type() {
    let (_sb, p) = portal().await;
    // (type, created-date property, last-modified property, create props, update props)
    let cases: Vec<(&str, &str, &str, Value, Value)> = vec![
        (
            "deals",
            "createdate",
            "hs_lastmodifieddate",
            json!({ "dealname": "CRUD deal", "amount": 1500, "dealstage": "appointmentscheduled",
                    "closedate": "1704067200000" }),
            json!({ "amount": "2500.5" }),
        ),
        (
            "contacts",
            "createdate",
            "lastmodifieddate",
            json!({ "email": "crud@example.com", "firstname": "Ada", "lastname": "Lovelace" }),
            json!({ "firstname": "Augusta" }),
        ),
        (
            "companies",
            "createdate",
            "hs_lastmodifieddate",
            json!({ "name": "Crud Co", "domain": "crud.example" }),
            json!({ "name": "Crud Company" }),
        ),
        (
            "notes",
            "hs_createdate",
            "hs_lastmodifieddate",
            json!({ "hs_note_body": "<p>hello</p>", "hs_timestamp": "2024-05-01T10:00:00.000Z" }),
            json!({ "hs_note_body": "<p>edited</p>" }),
        ),
        (
            "tasks",
            "hs_createdate",
            "hs_lastmodifieddate",
            json!({ "hs_task_subject": "Call back", "hs_timestamp": "1714557600000",
                    "hs_task_status": "NOT_STARTED" }),
            json!({ "hs_task_status": "COMPLETED" }),
        ),
        (
            "quotes",
            "hs_createdate",
            "hs_lastmodifieddate",
            json!({ "hs_title": "Quote 1", "hs_expiration_date": "2030-01-31T00:00:00.000Z" }),
            json!({ "hs_title": "Quote 1 (rev 2)" }),
        ),
    ];
    for (t, created_prop, modified_prop, create, update) in cases {
        let base = format!("/crm/v3/objects/{t}");
        let c = p.post(&base, json!({ "properties": create })).await;
        assert_eq!(c.status, 201, "{t} create: {}", c.text);
        let id = c.body["id"].as_str().expect("id").to_owned();
        assert!(id.parse::<u64>().is_ok(), "{t}: id {id} is numeric text");
        assert_all_values_are_strings(&c.body);
        assert_eq!(c.body["archived"], false, "{t}: {}", c.text);
        let created = iso_ms(&c.body["createdAt"]);
        let updated = iso_ms(&c.body["updatedAt"]);
        assert_eq!(
            created, updated,
            "{t}: a new record's createdAt equals updatedAt"
        );
        clock_past(updated).await;

        let r = p.get(&format!("{base}/{id}")).await;
        assert_eq!(r.status, 200, "{t} read: {}", r.text);
        assert_all_values_are_strings(&r.body);
        let props = &r.body["properties"];
        assert_eq!(
            props["hs_object_id"],
            id.as_str(),
            "{t}: hs_object_id equals id: {}",
            r.text
        );
        assert_eq!(
            iso_ms(&props[created_prop]),
            created,
            "{t}: {created_prop} equals createdAt"
        );
        assert_eq!(
            iso_ms(&props[modified_prop]),
            updated,
            "{t}: {modified_prop} equals updatedAt"
        );
        // Every written property reads back as a string; hs_object_id, hs_createdate and
        // hs_lastmodifieddate exist on every type.
        let names: Vec<&str> = create
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let r2 = p
            .get(&format!(
                "{base}/{id}?properties={},hs_object_id,hs_createdate,hs_lastmodifieddate",
                names.join(",")
            ))
            .await;
        assert_eq!(r2.status, 200, "{t}: {}", r2.text);
        assert_all_values_are_strings(&r2.body);
        for (k, v) in create.as_object().expect("object") {
            let got = &r2.body["properties"][k.as_str()];
            assert!(
                got.is_string(),
                "{t}: {k} is returned as a string: {}",
                r2.text
            );
            if v.is_string() && !k.contains("date") && !k.contains("timestamp") {
                assert_eq!(got, v, "{t}: {k} round-trips");
            }
        }
        assert_eq!(r2.body["properties"]["hs_object_id"], id.as_str());
        assert_eq!(
            iso_ms(&r2.body["properties"]["hs_createdate"]),
            created,
            "{t}: {}",
            r2.text
        );
        assert_eq!(
            iso_ms(&r2.body["properties"]["hs_lastmodifieddate"]),
            updated,
            "{t}: {}",
            r2.text
        );

        let u = p
            .patch(&format!("{base}/{id}"), json!({ "properties": update }))
            .await;
        assert_eq!(u.status, 200, "{t} update: {}", u.text);
        assert_all_values_are_strings(&u.body);
        for (k, v) in update.as_object().expect("object") {
            assert_eq!(
                &u.body["properties"][k.as_str()],
                v,
                "{t}: {k} updated: {}",
                u.text
            );
        }
        assert_eq!(
            iso_ms(&u.body["createdAt"]),
            created,
            "{t}: createdAt is kept"
        );
        let bumped = iso_ms(&u.body["updatedAt"]);
        assert!(
            bumped > updated,
            "{t}: update bumps updatedAt ({bumped} > {updated})"
        );
        let upd: Vec<&str> = update
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let r = p
            .get(&format!(
                "{base}/{id}?properties={},{created_prop},{modified_prop}",
                upd.join(",")
            ))
            .await;
        assert_eq!(
            iso_ms(&r.body["properties"][modified_prop]),
            bumped,
            "{t}: {}",
            r.text
        );
        assert_eq!(
            iso_ms(&r.body["properties"][created_prop]),
            created,
            "{t}: {}",
            r.text
        );
        for (k, v) in update.as_object().expect("object") {
            assert_eq!(
                &r.body["properties"][k.as_str()],
                v,
                "{t}: {k} reads back: {}",
                r.text
            );
        }

        let d = p.delete(&format!("{base}/{id}")).await;
        assert_eq!(d.status, 204, "{t} archive: {}", d.text);
        assert!(d.text.is_empty(), "{t}: 204 has no body");
        assert_error(
            &p.get(&format!("{base}/{id}")).await,
            404,
            "OBJECT_NOT_FOUND",
        );
    }
}

#[tokio::test]
async fn numbers_and_datetimes_come_back_as_strings() {
    let (_sb, p) = portal().await;
    let c = p
        .post(DEAL, json!({ "properties": { "dealname": "Typed", "amount": 1234.5, "closedate": 1704067200000i64 } }))
        .await;
    assert_eq!(c.status, 201, "{}", c.text);
    assert_eq!(c.body["properties"]["amount"], "1234.5", "{}", c.text);
    // Date-times are ISO-8601 with milliseconds, whatever form they were written in.
    assert_eq!(
        c.body["properties"]["closedate"], "2024-01-01T00:00:00.000Z",
        "{}",
        c.text
    );
    let id = c.body["id"].as_str().expect("id");
    let r = p
        .get(&format!("{DEAL}/{id}?properties=amount,closedate,pipeline"))
        .await;
    assert_eq!(r.body["properties"]["amount"], "1234.5");
    assert_eq!(
        r.body["properties"]["closedate"],
        "2024-01-01T00:00:00.000Z"
    );
    // A deal created without a pipeline lands in the default one.
    assert_eq!(r.body["properties"]["pipeline"], "default", "{}", r.text);
    assert_all_values_are_strings(&r.body);
}

#[tokio::test]
async fn type_id_0_3_is_the_same_as_deals() {
    let (_sb, p) = portal().await;
    // Create through the type id, read through the name.
    let c = p
        .post(
            "/crm/v3/objects/0-3",
            json!({ "properties": { "dealname": "By type id" } }),
        )
        .await;
    assert_eq!(c.status, 201, "{}", c.text);
    let a = c.body["id"].as_str().expect("id").to_owned();
    let r = p.get(&format!("{DEAL}/{a}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["properties"]["dealname"], "By type id");

    // Create through the name, then use every other call through the type id.
    let b = p.create_deal(json!({ "dealname": "By name" })).await;
    let r = p.get(&format!("/crm/v3/objects/0-3/{b}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["properties"]["dealname"], "By name");
    let u = p
        .patch(
            &format!("/crm/v3/objects/0-3/{b}"),
            json!({ "properties": { "amount": "7" } }),
        )
        .await;
    assert_eq!(u.status, 200, "{}", u.text);
    assert_eq!(
        p.get(&format!("{DEAL}/{b}")).await.body["properties"]["amount"],
        "7"
    );
    let mut listed = list_all(&p, "0-3", "").await;
    listed.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(listed, want);
    let s = search(
        &p,
        "0-3",
        json!({ "filterGroups": [{ "filters": [f("amount", "EQ", json!("7"))] }] }),
    )
    .await;
    assert_eq!(s.status, 200, "{}", s.text);
    assert_eq!(ids(&s.body["results"]), vec![b.clone()]);
    let br = p
        .post(
            "/crm/v3/objects/0-3/batch/read",
            json!({ "inputs": [{ "id": a }, { "id": b }], "properties": ["dealname"] }),
        )
        .await;
    assert_eq!(br.status, 200, "{}", br.text);
    assert_eq!(br.body["results"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        p.delete(&format!("/crm/v3/objects/0-3/{b}")).await.status,
        204
    );
    assert_error(
        &p.get(&format!("{DEAL}/{b}")).await,
        404,
        "OBJECT_NOT_FOUND",
    );
}

#[tokio::test]
async fn update_bumps_timestamps_and_appends_history_newest_first() {
    let (_sb, p) = portal().await;
    let c = p
        .post(
            DEAL,
            json!({ "properties": { "dealname": "v1", "amount": "10" } }),
        )
        .await;
    assert_eq!(c.status, 201, "{}", c.text);
    let id = c.body["id"].as_str().expect("id").to_owned();
    let created = iso_ms(&c.body["createdAt"]);
    let mut last = created;
    for (name, source) in [("v2", None), ("v3", Some("CRM_UI"))] {
        clock_past(last).await;
        let mut rb = p.req(Method::PATCH, &format!("{DEAL}/{id}"));
        if let Some(s) = source {
            rb = rb.header("X-Sandbox-Source", s);
        }
        let u = p
            .send(rb.json(&json!({ "properties": { "dealname": name } })))
            .await;
        assert_eq!(u.status, 200, "{}", u.text);
        let updated = iso_ms(&u.body["updatedAt"]);
        assert!(
            updated > last,
            "updatedAt moves forward: {updated} > {last}"
        );
        assert_eq!(
            iso_ms(&u.body["properties"]["hs_lastmodifieddate"]),
            updated,
            "{}",
            u.text
        );
        assert_eq!(iso_ms(&u.body["createdAt"]), created, "createdAt is kept");
        last = updated;
    }
    let r = p
        .get(&format!(
            "{DEAL}/{id}?propertiesWithHistory=dealname,amount"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(iso_ms(&r.body["updatedAt"]), last);
    assert_eq!(iso_ms(&r.body["properties"]["createdate"]), created);
    let h = r.body["propertiesWithHistory"]["dealname"]
        .as_array()
        .expect("history")
        .clone();
    let values: Vec<&str> = h
        .iter()
        .map(|e| e["value"].as_str().expect("value"))
        .collect();
    assert_eq!(values, vec!["v3", "v2", "v1"], "newest first: {}", r.text);
    let stamps: Vec<i64> = h.iter().map(|e| iso_ms(&e["timestamp"])).collect();
    assert!(
        stamps.windows(2).all(|w| w[0] > w[1]),
        "timestamps newest first: {stamps:?}"
    );
    assert_eq!(stamps[0], last);
    assert_eq!(stamps[2], created);
    let sources: Vec<&str> = h
        .iter()
        .map(|e| e["sourceType"].as_str().expect("sourceType"))
        .collect();
    assert_eq!(
        sources,
        vec!["CRM_UI", "INTEGRATION", "INTEGRATION"],
        "{}",
        r.text
    );
    // amount was never changed: one entry.
    let amount = r.body["propertiesWithHistory"]["amount"]
        .as_array()
        .expect("history");
    assert_eq!(amount.len(), 1, "{}", r.text);
    assert_eq!(amount[0]["value"], "10");
}

#[tokio::test]
async fn identical_patch_leaves_last_modified_and_history_alone() {
    let (_sb, p) = portal().await;
    let c = p
        .post(DEAL, json!({ "properties": { "dealname": "Same", "amount": "100", "closedate": "2024-01-01T00:00:00.000Z" } }))
        .await;
    assert_eq!(c.status, 201, "{}", c.text);
    let id = c.body["id"].as_str().expect("id").to_owned();
    let before = iso_ms(&c.body["updatedAt"]);
    clock_past(before).await;
    // The same values again, the date-time in its epoch-ms form.
    let u = p
        .patch(
            &format!("{DEAL}/{id}"),
            json!({ "properties": { "dealname": "Same", "amount": "100", "closedate": "1704067200000" } }),
        )
        .await;
    assert_eq!(u.status, 200, "{}", u.text);
    assert_eq!(
        iso_ms(&u.body["updatedAt"]),
        before,
        "no-op PATCH keeps updatedAt: {}",
        u.text
    );
    let r = p
        .get(&format!("{DEAL}/{id}?propertiesWithHistory=dealname"))
        .await;
    assert_eq!(
        iso_ms(&r.body["properties"]["hs_lastmodifieddate"]),
        before,
        "{}",
        r.text
    );
    assert_eq!(iso_ms(&r.body["updatedAt"]), before);
    assert_eq!(
        r.body["propertiesWithHistory"]["dealname"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn empty_string_clears_a_value() {
    let (_sb, p) = portal().await;
    let id = p
        .create_deal(json!({ "dealname": "Clear me", "description": "something", "amount": "5" }))
        .await;
    let u = p
        .patch(
            &format!("{DEAL}/{id}"),
            json!({ "properties": { "description": "", "amount": "" } }),
        )
        .await;
    assert_eq!(u.status, 200, "{}", u.text);
    assert!(u.body["properties"]["description"].is_null(), "{}", u.text);
    let r = p
        .get(&format!(
            "{DEAL}/{id}?properties=description,amount,dealname&propertiesWithHistory=description"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.body["properties"]["description"].is_null(),
        "cleared: {}",
        r.text
    );
    assert!(
        r.body["properties"]["amount"].is_null(),
        "cleared: {}",
        r.text
    );
    assert_eq!(
        r.body["properties"]["dealname"], "Clear me",
        "other values stay: {}",
        r.text
    );
    assert_eq!(
        r.body["propertiesWithHistory"]["description"][0]["value"], "",
        "{}",
        r.text
    );
    let s = search(
        &p,
        "deals",
        json!({ "filterGroups": [{ "filters": [f("description", "NOT_HAS_PROPERTY", Value::Null)] }] }),
    )
    .await;
    assert_eq!(s.status, 200, "{}", s.text);
    assert_eq!(ids(&s.body["results"]), vec![id]);
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn invalid_property_values_are_400s() {
    let (_sb, p) = portal().await;
    // Unknown property.
    let a = p
        .post(
            DEAL,
            json!({ "properties": { "dealname": "x", "foo": "bar" } }),
        )
        .await;
    assert_error(&a, 400, "VALIDATION_ERROR");
    assert!(
        a.body["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Property values were not valid")),
        "{}",
        a.text
    );
    assert_eq!(error_codes(&a), vec!["PROPERTY_DOESNT_EXIST"], "{}", a.text);
    assert_eq!(error_properties(&a), vec!["foo"], "{}", a.text);
    assert_eq!(
        a.body["errors"][0]["message"], "Property \"foo\" does not exist",
        "{}",
        a.text
    );
    // Not one of the enumeration's options.
    let a = p
        .post(
            DEAL,
            json!({ "properties": { "dealname": "x", "dealtype": "bogus" } }),
        )
        .await;
    assert_error(&a, 400, "VALIDATION_ERROR");
    assert_eq!(error_codes(&a), vec!["INVALID_OPTION"], "{}", a.text);
    assert!(
        a.text.contains("was not one of the allowed options"),
        "{}",
        a.text
    );
    let a = p
        .post(
            "/crm/v3/objects/tasks",
            json!({ "properties": { "hs_timestamp": "1700000000000", "hs_task_status": "DONE" } }),
        )
        .await;
    assert_error(&a, 400, "VALIDATION_ERROR");
    assert_eq!(error_codes(&a), vec!["INVALID_OPTION"], "{}", a.text);
    // Not a number.
    let a = p
        .post(
            DEAL,
            json!({ "properties": { "dealname": "x", "amount": "12abc" } }),
        )
        .await;
    assert_error(&a, 400, "VALIDATION_ERROR");
    assert_eq!(error_properties(&a), vec!["amount"], "{}", a.text);
    // Read-only properties.
    for ro in ["hs_object_id", "hs_lastmodifieddate"] {
        let a = p
            .post(
                DEAL,
                json!({ "properties": { "dealname": "x", ro: "1700000000000" } }),
            )
            .await;
        assert_error(&a, 400, "VALIDATION_ERROR");
        assert_eq!(error_properties(&a), vec![ro], "{}", a.text);
    }
    // None of the refused creates left a record behind.
    assert!(list_all(&p, "deals", "").await.is_empty());

    // The same rules on PATCH, which leaves the record as it was.
    let id = p
        .create_deal(json!({ "dealname": "keep", "amount": "1", "dealtype": "newbusiness" }))
        .await;
    let before = p.get(&format!("{DEAL}/{id}")).await.body;
    for (props, code) in [
        (
            json!({ "amount": "2", "nope": "x" }),
            Some("PROPERTY_DOESNT_EXIST"),
        ),
        (
            json!({ "amount": "2", "dealtype": "oldbusiness" }),
            Some("INVALID_OPTION"),
        ),
        (json!({ "amount": "two" }), None),
        (json!({ "amount": "2", "hs_object_id": "5" }), None),
    ] {
        let a = p
            .patch(&format!("{DEAL}/{id}"), json!({ "properties": props }))
            .await;
        assert_error(&a, 400, "VALIDATION_ERROR");
        if let Some(code) = code {
            assert!(
                error_codes(&a).contains(&code.to_owned()),
                "{code}: {}",
                a.text
            );
        }
    }
    let after = p.get(&format!("{DEAL}/{id}")).await.body;
    assert_eq!(before, after, "refused PATCHes change nothing");
}

#[tokio::test]
async fn dealstage_must_belong_to_the_deals_pipeline() {
    let (_sb, p) = portal().await;
    let pl = p
        .post(
            "/crm/v3/pipelines/deals",
            json!({
                "label": "Partner pipeline",
                "displayOrder": 1,
                "stages": [
                    { "label": "Registered", "displayOrder": 0, "metadata": { "probability": "0.1" } },
                    { "label": "Won", "displayOrder": 1, "metadata": { "probability": "1.0", "isClosed": "true" } },
                ],
            }),
        )
        .await;
    assert_eq!(pl.status, 201, "{}", pl.text);
    let pipeline = pl.body["id"].as_str().expect("pipeline id").to_owned();
    let stages: Vec<String> = pl.body["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| s["id"].as_str().expect("stage id").to_owned())
        .collect();
    let (registered, won) = (stages[0].clone(), stages[1].clone());

    // A stage of another pipeline, or an unknown stage, is refused in the default pipeline.
    for stage in [registered.as_str(), "nosuchstage"] {
        let a = p
            .post(
                DEAL,
                json!({ "properties": { "dealname": "x", "dealstage": stage } }),
            )
            .await;
        assert_error(&a, 400, "VALIDATION_ERROR");
        assert_eq!(error_properties(&a), vec!["dealstage"], "{}", a.text);
        let a = p
            .post(DEAL, json!({ "properties": { "dealname": "x", "pipeline": "default", "dealstage": stage } }))
            .await;
        assert_error(&a, 400, "VALIDATION_ERROR");
    }
    let a = p
        .post(DEAL, json!({ "properties": { "dealname": "x", "pipeline": pipeline, "dealstage": "closedwon" } }))
        .await;
    assert_error(&a, 400, "VALIDATION_ERROR");
    assert!(list_all(&p, "deals", "").await.is_empty());

    let d = p
        .create_deal(json!({ "dealname": "default deal", "dealstage": "appointmentscheduled" }))
        .await;
    let q = p
        .create_deal(
            json!({ "dealname": "partner deal", "pipeline": pipeline, "dealstage": registered }),
        )
        .await;
    // PATCH a stage outside the deal's current pipeline.
    assert_error(
        &p.patch(
            &format!("{DEAL}/{d}"),
            json!({ "properties": { "dealstage": won } }),
        )
        .await,
        400,
        "VALIDATION_ERROR",
    );
    assert_error(
        &p.patch(
            &format!("{DEAL}/{q}"),
            json!({ "properties": { "dealstage": "closedwon" } }),
        )
        .await,
        400,
        "VALIDATION_ERROR",
    );
    // Moving to another pipeline while keeping a stage that does not exist there.
    assert_error(
        &p.patch(
            &format!("{DEAL}/{q}"),
            json!({ "properties": { "pipeline": "default" } }),
        )
        .await,
        400,
        "VALIDATION_ERROR",
    );
    // Inside the pipeline, and pipeline + stage moved together, are fine.
    let a = p
        .patch(
            &format!("{DEAL}/{q}"),
            json!({ "properties": { "dealstage": won } }),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let a = p
        .patch(
            &format!("{DEAL}/{q}"),
            json!({ "properties": { "pipeline": "default", "dealstage": "closedwon" } }),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let r = p.get(&format!("{DEAL}/{q}")).await;
    assert_eq!(r.body["properties"]["pipeline"], "default");
    assert_eq!(r.body["properties"]["dealstage"], "closedwon");
}

#[tokio::test]
async fn notes_require_hs_timestamp() {
    let (_sb, p) = portal().await;
    let a = p
        .post(
            "/crm/v3/objects/notes",
            json!({ "properties": { "hs_note_body": "no time" } }),
        )
        .await;
    assert_error(&a, 400, "VALIDATION_ERROR");
    assert!(
        a.text.contains("hs_timestamp"),
        "the error names hs_timestamp: {}",
        a.text
    );
    let a = p
        .post(
            "/crm/v3/objects/notes",
            json!({ "properties": { "hs_note_body": "empty time", "hs_timestamp": "" } }),
        )
        .await;
    assert_error(&a, 400, "VALIDATION_ERROR");
    assert!(list_all(&p, "notes", "").await.is_empty());
    // hs_note_body holds at most 65,536 characters.
    let body = |n: usize| json!({ "properties": { "hs_note_body": "é".repeat(n), "hs_timestamp": "1714557600000" } });
    assert_error(
        &p.post("/crm/v3/objects/notes", body(65_537)).await,
        400,
        "VALIDATION_ERROR",
    );
    let a = p.post("/crm/v3/objects/notes", body(65_536)).await;
    assert_eq!(a.status, 201, "{}", &a.text[..a.text.len().min(300)]);
    // Epoch milliseconds and ISO are both accepted.
    for ts in ["1714557600000", "2024-05-01T10:00:00.000Z"] {
        let a = p
            .post(
                "/crm/v3/objects/notes",
                json!({ "properties": { "hs_note_body": "timed", "hs_timestamp": ts } }),
            )
            .await;
        assert_eq!(a.status, 201, "{}", a.text);
        assert_eq!(
            a.body["properties"]["hs_timestamp"], "2024-05-01T10:00:00.000Z",
            "{}",
            a.text
        );
    }
}

#[tokio::test]
async fn note_attachments_must_be_existing_files() {
    let (_sb, p) = portal().await;
    let f1 = upload_file(&p, "contract.txt", b"signed").await;
    let f2 = upload_file(&p, "terms.txt", b"terms").await;
    let note = |ids: String| json!({ "properties": { "hs_note_body": "see attached", "hs_timestamp": "1714557600000", "hs_attachment_ids": ids } });

    let a = p.post("/crm/v3/objects/notes", note(f1.clone())).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let a = p
        .post("/crm/v3/objects/notes", note(format!("{f1};{f2}")))
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(
        a.body["properties"]["hs_attachment_ids"],
        format!("{f1};{f2}")
    );
    let note_id = a.body["id"].as_str().expect("id").to_owned();

    for bad in [format!("{f1};999999999"), "not-a-file".to_owned()] {
        let a = p.post("/crm/v3/objects/notes", note(bad.clone())).await;
        assert_error(&a, 400, "VALIDATION_ERROR");
        assert_eq!(
            error_properties(&a),
            vec!["hs_attachment_ids"],
            "{bad}: {}",
            a.text
        );
        let a = p
            .patch(
                &format!("/crm/v3/objects/notes/{note_id}"),
                json!({ "properties": { "hs_attachment_ids": bad } }),
            )
            .await;
        assert_error(&a, 400, "VALIDATION_ERROR");
    }
    // A deleted file can no longer be attached.
    assert_eq!(p.delete(&format!("/files/v3/files/{f2}")).await.status, 204);
    assert_error(
        &p.post("/crm/v3/objects/notes", note(f2.clone())).await,
        400,
        "VALIDATION_ERROR",
    );
    assert_eq!(list_all(&p, "notes", "").await.len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Archive
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn archive_hides_the_record_from_reads_lists_and_search() {
    let (_sb, p) = portal().await;
    let keep1 = p.create_deal(json!({ "dealname": "keep one" })).await;
    let keep2 = p.create_deal(json!({ "dealname": "keep two" })).await;
    let gone = p.create_deal(json!({ "dealname": "archive me" })).await;
    let before = search(&p, "deals", json!({})).await;
    assert_eq!(before.body["total"], 3, "{}", before.text);

    let d = p.delete(&format!("{DEAL}/{gone}")).await;
    assert_eq!(d.status, 204, "{}", d.text);

    let a = p.get(&format!("{DEAL}/{gone}")).await;
    assert_error(&a, 404, "OBJECT_NOT_FOUND");
    let a = p.get(&format!("{DEAL}/{gone}?archived=true")).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["archived"], true, "{}", a.text);
    assert_eq!(a.body["properties"]["dealname"], "archive me");
    let archived_at = iso_ms(&a.body["archivedAt"]);
    assert!(archived_at >= iso_ms(&a.body["createdAt"]));

    let mut live = list_all(&p, "deals", "").await;
    live.sort();
    let mut want = vec![keep1.clone(), keep2.clone()];
    want.sort();
    assert_eq!(live, want, "the live list no longer has it");
    assert_eq!(
        list_all(&p, "deals", "&archived=true").await,
        vec![gone.clone()],
        "archived=true lists only archived"
    );

    let s = search(&p, "deals", json!({})).await;
    assert_eq!(s.status, 200, "{}", s.text);
    assert_eq!(s.body["total"], 2, "{}", s.text);
    assert!(!ids(&s.body["results"]).contains(&gone));
    let s = search(
        &p,
        "deals",
        json!({ "filterGroups": [{ "filters": [f("hs_object_id", "EQ", json!(gone))] }] }),
    )
    .await;
    assert_eq!(s.body["total"], 0, "{}", s.text);
    let s = search(&p, "deals", json!({ "query": "archive" })).await;
    assert_eq!(s.body["total"], 0, "{}", s.text);

    // An archived record cannot be updated.
    let a = p
        .patch(
            &format!("{DEAL}/{gone}"),
            json!({ "properties": { "dealname": "back?" } }),
        )
        .await;
    assert_error(&a, 404, "OBJECT_NOT_FOUND");
    // A missing record is a HubSpot 404 too.
    assert_error(
        &p.get(&format!("{DEAL}/987654321")).await,
        404,
        "OBJECT_NOT_FOUND",
    );
}

// ---------------------------------------------------------------------------------------------
// List paging
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn list_limits_and_after_cursor() {
    let (_sb, p) = portal().await;
    let created: BTreeSet<String> = batch_create_deals(&p, 123, "list")
        .await
        .into_iter()
        .collect();

    let a = p.get(DEAL).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(
        a.body["results"].as_array().map(Vec::len),
        Some(10),
        "default limit is 10"
    );
    assert!(a.body["paging"]["next"]["after"].is_string(), "{}", a.text);

    let a = p.get(&format!("{DEAL}?limit=100")).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["results"].as_array().map(Vec::len), Some(100));
    assert_error(
        &p.get(&format!("{DEAL}?limit=101")).await,
        400,
        "VALIDATION_ERROR",
    );
    assert_error(
        &p.get(&format!("{DEAL}?limit=0")).await,
        400,
        "VALIDATION_ERROR",
    );

    let a = p
        .get(&format!("{DEAL}?limit=50&propertiesWithHistory=dealname"))
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["results"].as_array().map(Vec::len), Some(50));
    assert!(
        a.body["results"][0]["propertiesWithHistory"]["dealname"].is_array(),
        "{}",
        a.text
    );
    assert_error(
        &p.get(&format!("{DEAL}?limit=51&propertiesWithHistory=dealname"))
            .await,
        400,
        "VALIDATION_ERROR",
    );

    // `after` walks every record exactly once.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &after {
            Some(c) => format!("{DEAL}?limit=7&properties=dealname&after={c}"),
            None => format!("{DEAL}?limit=7&properties=dealname"),
        };
        let a = p.get(&path).await;
        assert_eq!(a.status, 200, "{}", a.text);
        pages += 1;
        let page = ids(&a.body["results"]);
        assert!(
            !page.is_empty() && page.len() <= 7,
            "page size: {}",
            page.len()
        );
        seen.extend(page);
        match a.body["paging"]["next"]["after"].as_str() {
            Some(c) => after = Some(c.to_owned()),
            None => break,
        }
        assert!(pages < 100, "paging does not end");
    }
    assert_eq!(pages, 18, "123 records in pages of 7");
    assert_eq!(seen.len(), 123, "no record twice");
    assert_eq!(
        seen.iter().cloned().collect::<BTreeSet<_>>(),
        created,
        "every record once"
    );

    // Unknown names in properties/associations are ignored.
    let a = p
        .get(&format!(
            "{DEAL}?limit=1&properties=dealname,nosuchprop&associations=nosuchtype"
        ))
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(
        a.body["results"][0]["properties"]
            .get("nosuchprop")
            .is_none(),
        "{}",
        a.text
    );
}

#[tokio::test]
async fn read_with_associations_lists_notes() {
    let (_sb, p) = portal().await;
    let deal = p.create_deal(json!({ "dealname": "with notes" })).await;
    let other = p.create_deal(json!({ "dealname": "without notes" })).await;
    let mut notes = BTreeSet::new();
    for body in ["first", "second"] {
        let a = p
            .post(
                "/crm/v3/objects/notes",
                json!({
                    "properties": { "hs_note_body": body, "hs_timestamp": "1714557600000" },
                    "associations": [{ "to": { "id": deal },
                        "types": [{ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 214 }] }],
                }),
            )
            .await;
        assert_eq!(a.status, 201, "{}", a.text);
        notes.insert(a.body["id"].as_str().expect("id").to_owned());
    }
    let r = p.get(&format!("{DEAL}/{deal}?associations=notes")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let results = r.body["associations"]["notes"]["results"]
        .as_array()
        .expect("associations.notes.results");
    let got: BTreeSet<String> = results
        .iter()
        .map(|x| x["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(got, notes, "{}", r.text);
    assert!(
        results.iter().all(|x| x["type"] == "deal_to_note"),
        "{}",
        r.text
    );
    // Without the parameter there is no associations key; a deal without notes has none.
    assert!(p
        .get(&format!("{DEAL}/{deal}"))
        .await
        .body
        .get("associations")
        .is_none());
    let r = p.get(&format!("{DEAL}/{other}?associations=notes")).await;
    assert_eq!(r.status, 200);
    assert!(
        r.body["associations"]["notes"]["results"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{}",
        r.text
    );
    // The list call takes the same parameter.
    let l = p.get(&format!("{DEAL}?associations=notes")).await;
    let listed = l.body["results"].as_array().expect("results");
    let with = listed
        .iter()
        .find(|x| x["id"] == deal.as_str())
        .expect("deal listed");
    assert_eq!(
        with["associations"]["notes"]["results"]
            .as_array()
            .map(Vec::len),
        Some(2),
        "{}",
        l.text
    );
}

// ---------------------------------------------------------------------------------------------
// Unique values and idProperty
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unique_property_works_as_id_property_and_refuses_duplicates() {
    let (_sb, p) = portal().await;
    create_unique_property(&p, "deals", "dealinformation", "partner_ref").await;
    // A taken property name is a 409.
    let again = p
        .post(
            "/crm/v3/properties/deals",
            json!({ "name": "partner_ref", "label": "x", "type": "string", "fieldType": "text", "groupName": "dealinformation" }),
        )
        .await;
    assert_error(&again, 409, "CONFLICT");

    let a = p
        .create_deal(json!({ "dealname": "A", "partner_ref": "REF-1" }))
        .await;
    let r = p
        .get(&format!(
            "{DEAL}/REF-1?idProperty=partner_ref&properties=dealname,partner_ref"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["id"], a.as_str());
    assert_eq!(r.body["properties"]["partner_ref"], "REF-1");

    let u = p
        .patch(
            &format!("{DEAL}/REF-1?idProperty=partner_ref"),
            json!({ "properties": { "amount": "42" } }),
        )
        .await;
    assert_eq!(u.status, 200, "{}", u.text);
    assert_eq!(u.body["id"], a.as_str());
    assert_eq!(
        p.get(&format!("{DEAL}/{a}")).await.body["properties"]["amount"],
        "42"
    );

    assert_error(
        &p.get(&format!("{DEAL}/REF-404?idProperty=partner_ref"))
            .await,
        404,
        "OBJECT_NOT_FOUND",
    );
    assert_error(
        &p.patch(
            &format!("{DEAL}/REF-404?idProperty=partner_ref"),
            json!({ "properties": { "amount": "1" } }),
        )
        .await,
        404,
        "OBJECT_NOT_FOUND",
    );
    // A property without unique values cannot be an idProperty.
    let r = p.get(&format!("{DEAL}/A?idProperty=dealname")).await;
    assert_error(&r, 400, "VALIDATION_ERROR");

    // Duplicates: on create, and on a PATCH that would take another record's value.
    let dup = p
        .post(
            DEAL,
            json!({ "properties": { "dealname": "B", "partner_ref": "REF-1" } }),
        )
        .await;
    assert_error(&dup, 409, "CONFLICT");
    let b = p
        .create_deal(json!({ "dealname": "B", "partner_ref": "REF-2" }))
        .await;
    let dup = p
        .patch(
            &format!("{DEAL}/{b}"),
            json!({ "properties": { "partner_ref": "REF-1" } }),
        )
        .await;
    assert_error(&dup, 409, "CONFLICT");
    assert_eq!(
        p.get(&format!("{DEAL}/{b}?properties=partner_ref"))
            .await
            .body["properties"]["partner_ref"],
        "REF-2"
    );
    assert_eq!(list_all(&p, "deals", "").await.len(), 2);
    // idProperty in batch read and batch update.
    let br = p
        .post(
            &format!("{DEAL}/batch/read"),
            json!({ "idProperty": "partner_ref", "inputs": [{ "id": "REF-1" }, { "id": "REF-2" }], "properties": ["partner_ref"] }),
        )
        .await;
    assert_eq!(br.status, 200, "{}", br.text);
    let mut got = ids(&br.body["results"]);
    got.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(got, want, "{}", br.text);
    let bu = p
        .post(
            &format!("{DEAL}/batch/update"),
            json!({ "inputs": [{ "id": "REF-2", "idProperty": "partner_ref", "properties": { "amount": "77" } }] }),
        )
        .await;
    assert_eq!(bu.status, 200, "{}", bu.text);
    assert_eq!(bu.body["results"][0]["id"], b.as_str(), "{}", bu.text);
    assert_eq!(
        p.get(&format!("{DEAL}/{b}")).await.body["properties"]["amount"],
        "77"
    );
    // Writing a record's own value back is not a duplicate.
    let same = p
        .patch(
            &format!("{DEAL}/{a}"),
            json!({ "properties": { "partner_ref": "REF-1" } }),
        )
        .await;
    assert_eq!(same.status, 200, "{}", same.text);
    // Once archived, the value is free again.
    assert_eq!(p.delete(&format!("{DEAL}/{a}")).await.status, 204);
    let c = p
        .post(
            DEAL,
            json!({ "properties": { "dealname": "C", "partner_ref": "REF-1" } }),
        )
        .await;
    assert_eq!(c.status, 201, "{}", c.text);
}

#[tokio::test]
async fn duplicate_contact_email_is_a_409_naming_the_existing_id() {
    let (_sb, p) = portal().await;
    let c = p
        .post(
            "/crm/v3/objects/contacts",
            json!({ "properties": { "email": "dup@example.com", "firstname": "A" } }),
        )
        .await;
    assert_eq!(c.status, 201, "{}", c.text);
    let id = c.body["id"].as_str().expect("id").to_owned();
    let d = p
        .post(
            "/crm/v3/objects/contacts",
            json!({ "properties": { "email": "dup@example.com", "firstname": "B" } }),
        )
        .await;
    assert_error(&d, 409, "CONFLICT");
    assert_eq!(
        d.body["message"],
        format!("Contact already exists. Existing ID: {id}"),
        "{}",
        d.text
    );
    assert_eq!(list_all(&p, "contacts", "").await, vec![id.clone()]);
    // email is an idProperty for contacts.
    let r = p
        .get("/crm/v3/objects/contacts/dup@example.com?idProperty=email")
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["id"], id.as_str());
}

// ---------------------------------------------------------------------------------------------
// Batches
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn batch_calls_take_at_most_100_inputs() {
    let (_sb, p) = portal().await;
    let existing = batch_create_deals(&p, 100, "limit").await;
    create_unique_property(&p, "deals", "dealinformation", "partner_ref").await;
    let id_inputs: Vec<Value> = existing
        .iter()
        .map(|id| json!({ "id": id }))
        .chain([json!({ "id": "1" })])
        .collect();
    assert_eq!(id_inputs.len(), 101);
    let bodies = [
        (
            "read",
            json!({ "inputs": id_inputs, "properties": ["dealname"] }),
        ),
        (
            "create",
            json!({ "inputs": (0..101).map(|i| json!({ "properties": { "dealname": format!("over {i}") } })).collect::<Vec<_>>() }),
        ),
        (
            "update",
            json!({ "inputs": existing.iter().chain([&"1".to_owned()]).map(|id| json!({ "id": id, "properties": { "amount": "9" } })).collect::<Vec<_>>() }),
        ),
        (
            "upsert",
            json!({ "inputs": (0..101).map(|i| json!({ "id": format!("U-{i}"), "idProperty": "partner_ref", "properties": { "dealname": "u" } })).collect::<Vec<_>>() }),
        ),
        ("archive", json!({ "inputs": id_inputs })),
    ];
    for (op, body) in bodies {
        let a = p.post(&format!("{DEAL}/batch/{op}"), body).await;
        assert_error(&a, 400, "VALIDATION_ERROR");
    }
    // Nothing was created, changed or archived.
    let all = list_all(&p, "deals", "").await;
    assert_eq!(all.len(), 100);
    let s = search(
        &p,
        "deals",
        json!({ "filterGroups": [{ "filters": [f("amount", "EQ", json!("9"))] }] }),
    )
    .await;
    assert_eq!(
        s.body["total"], 1,
        "only the deal created with amount 9: {}",
        s.text
    );
}

#[tokio::test]
async fn batch_read_reports_missing_ids_with_207() {
    let (_sb, p) = portal().await;
    let a = p
        .create_deal(json!({ "dealname": "A", "amount": "1" }))
        .await;
    let b = p
        .create_deal(json!({ "dealname": "B", "amount": "2" }))
        .await;
    let r = p
        .post(
            &format!("{DEAL}/batch/read"),
            json!({ "inputs": [{ "id": a }, { "id": b }], "properties": ["dealname"], "propertiesWithHistory": ["amount"] }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "COMPLETE");
    assert!(r.body.get("numErrors").is_none(), "{}", r.text);
    let results = r.body["results"].as_array().expect("results");
    assert_eq!(results.len(), 2);
    assert!(
        results
            .iter()
            .all(|x| x["properties"]["dealname"].is_string()),
        "{}",
        r.text
    );
    assert!(
        results
            .iter()
            .all(|x| x["propertiesWithHistory"]["amount"].is_array()),
        "{}",
        r.text
    );
    iso_ms(&r.body["startedAt"]);
    iso_ms(&r.body["completedAt"]);

    let r = p
        .post(
            &format!("{DEAL}/batch/read"),
            json!({ "inputs": [{ "id": a }, { "id": "999999" }, { "id": b }], "properties": ["dealname"] }),
        )
        .await;
    assert_eq!(r.status, 207, "{}", r.text);
    let mut got = ids(&r.body["results"]);
    got.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(r.body["numErrors"], 1, "{}", r.text);
    let e = &r.body["errors"][0];
    assert_eq!(e["status"], "error", "{}", r.text);
    assert_eq!(e["category"], "OBJECT_NOT_FOUND", "{}", r.text);
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(e["context"]["ids"], json!(["999999"]), "{}", r.text);
}

#[tokio::test]
async fn batch_create_without_trace_ids_is_all_or_nothing() {
    let (_sb, p) = portal().await;
    let a = p
        .post(
            &format!("{DEAL}/batch/create"),
            json!({ "inputs": [
                { "properties": { "dealname": "ok 1" } },
                { "properties": { "dealname": "bad", "foo": "bar" } },
                { "properties": { "dealname": "ok 2" } },
            ] }),
        )
        .await;
    assert_error(&a, 400, "VALIDATION_ERROR");
    assert!(
        error_codes(&a).contains(&"PROPERTY_DOESNT_EXIST".to_owned()),
        "{}",
        a.text
    );
    assert!(
        list_all(&p, "deals", "").await.is_empty(),
        "nothing was created"
    );

    // Trace ids that are not all distinct do not allow partial success either.
    let a = p
        .post(
            &format!("{DEAL}/batch/create"),
            json!({ "inputs": [
                { "properties": { "dealname": "ok 1" }, "objectWriteTraceId": "same" },
                { "properties": { "amount": "x" }, "objectWriteTraceId": "same" },
            ] }),
        )
        .await;
    assert_error(&a, 400, "VALIDATION_ERROR");
    assert!(
        list_all(&p, "deals", "").await.is_empty(),
        "nothing was created"
    );

    // All good inputs: 201 with every record.
    let a = p
        .post(
            &format!("{DEAL}/batch/create"),
            json!({ "inputs": [{ "properties": { "dealname": "ok 1" } }, { "properties": { "dealname": "ok 2" } }] }),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.body["status"], "COMPLETE");
    assert_eq!(a.body["results"].as_array().map(Vec::len), Some(2));
    assert!(a.body["results"]
        .as_array()
        .expect("results")
        .iter()
        .all(|r| r["properties"]["dealname"].is_string()));
}

#[tokio::test]
async fn batch_create_with_unique_trace_ids_reports_partial_failure_with_207() {
    let (_sb, p) = portal().await;
    let a = p
        .post(
            &format!("{DEAL}/batch/create"),
            json!({ "inputs": [
                { "properties": { "dealname": "t1" }, "objectWriteTraceId": "trace-1" },
                { "properties": { "dealname": "t2", "dealtype": "bogus" }, "objectWriteTraceId": "trace-2" },
                { "properties": { "dealname": "t3" }, "objectWriteTraceId": "trace-3" },
            ] }),
        )
        .await;
    assert_eq!(a.status, 207, "{}", a.text);
    assert_eq!(a.body["numErrors"], 1, "{}", a.text);
    let results = a.body["results"].as_array().expect("results");
    let traces: BTreeSet<&str> = results
        .iter()
        .map(|r| r["objectWriteTraceId"].as_str().expect("trace id echoed"))
        .collect();
    assert_eq!(traces, BTreeSet::from(["trace-1", "trace-3"]), "{}", a.text);
    let e = &a.body["errors"][0];
    assert_eq!(e["status"], "error");
    assert_eq!(e["category"], "VALIDATION_ERROR", "{}", a.text);
    assert_eq!(
        e["context"]["objectWriteTraceId"],
        json!(["trace-2"]),
        "{}",
        a.text
    );
    let mut names: Vec<String> = Vec::new();
    for id in list_all(&p, "deals", "").await {
        names.push(
            p.get(&format!("{DEAL}/{id}")).await.body["properties"]["dealname"]
                .as_str()
                .expect("name")
                .to_owned(),
        );
    }
    names.sort();
    assert_eq!(names, vec!["t1", "t3"], "the good inputs were created");
}

#[tokio::test]
async fn batch_update_applies_values_and_rejects_duplicate_ids() {
    let (_sb, p) = portal().await;
    let a = p
        .create_deal(json!({ "dealname": "A", "amount": "1" }))
        .await;
    let b = p
        .create_deal(json!({ "dealname": "B", "amount": "2" }))
        .await;
    let dup = p
        .post(
            &format!("{DEAL}/batch/update"),
            json!({ "inputs": [
                { "id": a, "properties": { "amount": "10" } },
                { "id": b, "properties": { "amount": "20" } },
                { "id": a, "properties": { "amount": "11" } },
            ] }),
        )
        .await;
    assert_error(&dup, 400, "VALIDATION_ERROR");
    assert_eq!(
        p.get(&format!("{DEAL}/{a}")).await.body["properties"]["amount"],
        "1",
        "unchanged"
    );
    assert_eq!(
        p.get(&format!("{DEAL}/{b}")).await.body["properties"]["amount"],
        "2",
        "unchanged"
    );

    let ok = p
        .post(
            &format!("{DEAL}/batch/update"),
            json!({ "inputs": [
                { "id": a, "properties": { "amount": "10" } },
                { "id": b, "properties": { "amount": "20", "dealname": "B2" } },
            ] }),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.body["status"], "COMPLETE");
    let results = ok.body["results"].as_array().expect("results");
    assert_eq!(results.len(), 2);
    // Writes in one batch share one instant.
    let stamps: HashSet<&Value> = results.iter().map(|r| &r["updatedAt"]).collect();
    assert_eq!(stamps.len(), 1, "{}", ok.text);
    assert_eq!(
        p.get(&format!("{DEAL}/{a}")).await.body["properties"]["amount"],
        "10"
    );
    let rb = p.get(&format!("{DEAL}/{b}")).await;
    assert_eq!(rb.body["properties"]["amount"], "20");
    assert_eq!(rb.body["properties"]["dealname"], "B2");

    // A bad value in one input fails the whole call (no trace ids).
    let bad = p
        .post(
            &format!("{DEAL}/batch/update"),
            json!({ "inputs": [
                { "id": a, "properties": { "amount": "30" } },
                { "id": b, "properties": { "amount": "thirty" } },
            ] }),
        )
        .await;
    assert_error(&bad, 400, "VALIDATION_ERROR");
    assert_eq!(
        p.get(&format!("{DEAL}/{a}")).await.body["properties"]["amount"],
        "10",
        "unchanged"
    );
}

#[tokio::test]
async fn batch_upsert_sets_new_and_uses_the_id_property() {
    let (_sb, p) = portal().await;
    create_unique_property(&p, "deals", "dealinformation", "partner_ref").await;
    let existing = p
        .create_deal(json!({ "dealname": "Existing", "partner_ref": "REF-A" }))
        .await;
    let body = json!({ "inputs": [
        { "id": "REF-A", "idProperty": "partner_ref", "properties": { "dealname": "Existing v2" } },
        { "id": "REF-B", "idProperty": "partner_ref", "properties": { "dealname": "Brand new" } },
    ] });
    let a = p.post(&format!("{DEAL}/batch/upsert"), body.clone()).await;
    assert!(a.status == 200 || a.status == 201, "{}", a.text);
    let results = a.body["results"].as_array().expect("results");
    assert_eq!(results.len(), 2, "{}", a.text);
    let by_ref: HashMap<String, &Value> = results
        .iter()
        .map(|r| {
            let id = r["id"].as_str().expect("id");
            let rr = if id == existing { "REF-A" } else { "REF-B" };
            (rr.to_owned(), r)
        })
        .collect();
    assert_eq!(by_ref["REF-A"]["new"], false, "{}", a.text);
    assert_eq!(by_ref["REF-B"]["new"], true, "{}", a.text);
    assert_ne!(by_ref["REF-B"]["id"], existing.as_str());
    let r = p
        .get(&format!(
            "{DEAL}/REF-B?idProperty=partner_ref&properties=dealname,partner_ref"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["properties"]["dealname"], "Brand new");
    assert_eq!(r.body["properties"]["partner_ref"], "REF-B");
    assert_eq!(
        p.get(&format!("{DEAL}/{existing}")).await.body["properties"]["dealname"],
        "Existing v2"
    );

    // The same call again creates nothing.
    let a = p.post(&format!("{DEAL}/batch/upsert"), body).await;
    assert!(a.status == 200 || a.status == 201, "{}", a.text);
    assert!(
        a.body["results"]
            .as_array()
            .expect("results")
            .iter()
            .all(|r| r["new"] == false),
        "{}",
        a.text
    );
    assert_eq!(list_all(&p, "deals", "").await.len(), 2);
}

#[tokio::test]
async fn batch_archive_answers_204_and_archives() {
    let (_sb, p) = portal().await;
    let ids_ = batch_create_deals(&p, 3, "arch").await;
    let a = p
        .post(
            &format!("{DEAL}/batch/archive"),
            json!({ "inputs": [{ "id": ids_[0] }, { "id": ids_[1] }] }),
        )
        .await;
    assert_eq!(a.status, 204, "{}", a.text);
    assert!(a.text.is_empty());
    assert_eq!(list_all(&p, "deals", "").await, vec![ids_[2].clone()]);
    let mut archived = list_all(&p, "deals", "&archived=true").await;
    archived.sort();
    let mut want = vec![ids_[0].clone(), ids_[1].clone()];
    want.sort();
    assert_eq!(archived, want);
    let r = p
        .post(
            &format!("{DEAL}/batch/read"),
            json!({ "inputs": [{ "id": ids_[0] }, { "id": ids_[2] }] }),
        )
        .await;
    assert_eq!(r.status, 207, "{}", r.text);
    assert_eq!(r.body["numErrors"], 1);
    let r = p
        .post(
            &format!("{DEAL}/batch/read?archived=true"),
            json!({ "inputs": [{ "id": ids_[0] }, { "id": ids_[1] }] }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.body["results"]
        .as_array()
        .expect("results")
        .iter()
        .all(|x| x["archived"] == true));
}

/// Two inputs of one batch update may not end up holding the same unique value: without
/// trace ids the call is all or nothing, so it must fail as a whole and change nothing.
#[tokio::test]
async fn batch_update_without_trace_ids_refuses_in_batch_unique_duplicates_atomically() {
    let (_sb, p) = portal().await;
    create_unique_property(&p, "deals", "dealinformation", "partner_ref").await;
    let a = p
        .create_deal(json!({ "dealname": "A", "partner_ref": "REF-A" }))
        .await;
    let b = p
        .create_deal(json!({ "dealname": "B", "partner_ref": "REF-B" }))
        .await;
    let r = p
        .post(
            &format!("{DEAL}/batch/update"),
            json!({ "inputs": [
                { "id": a, "properties": { "partner_ref": "REF-X", "amount": "1" } },
                { "id": b, "properties": { "partner_ref": "REF-X", "amount": "2" } },
            ] }),
        )
        .await;
    assert!(
        r.status == 400 || r.status == 409,
        "one bad input fails the whole call: {} {}",
        r.status,
        r.text
    );
    let ra = p
        .get(&format!("{DEAL}/{a}?properties=partner_ref,amount"))
        .await;
    let rb = p
        .get(&format!("{DEAL}/{b}?properties=partner_ref,amount"))
        .await;
    assert_eq!(
        ra.body["properties"]["partner_ref"], "REF-A",
        "A unchanged: {}",
        ra.text
    );
    assert!(
        ra.body["properties"]["amount"].is_null(),
        "A unchanged: {}",
        ra.text
    );
    assert_eq!(
        rb.body["properties"]["partner_ref"], "REF-B",
        "B unchanged: {}",
        rb.text
    );
}

/// Batch create without trace ids is all or nothing also when two inputs carry the same unique
/// value, whatever JSON type it is written as (`"42"` and `42` are the same stored value).
#[tokio::test]
async fn batch_create_without_trace_ids_refuses_in_batch_unique_duplicates_atomically() {
    let (_sb, p) = portal().await;
    create_unique_property(&p, "deals", "dealinformation", "partner_ref").await;
    let r = p
        .post(
            &format!("{DEAL}/batch/create"),
            json!({ "inputs": [
                { "properties": { "dealname": "A", "partner_ref": "42" } },
                { "properties": { "dealname": "B", "partner_ref": 42 } },
            ] }),
        )
        .await;
    assert!(
        r.status == 400 || r.status == 409,
        "one bad input fails the whole call: {} {}",
        r.status,
        r.text
    );
    assert!(
        list_all(&p, "deals", "").await.is_empty(),
        "nothing was created"
    );
}

// ---------------------------------------------------------------------------------------------
// Search
// ---------------------------------------------------------------------------------------------

/// Four deals with known values for the operator tests; returns name -> id.
async fn operator_fixture(p: &Portal) -> HashMap<&'static str, String> {
    let rows = [
        (
            "Alpha Widgets",
            "100",
            "1704067200000",
            "newbusiness",
            Some("red box"),
        ),
        (
            "Beta Gadgets",
            "250",
            "1706745600000",
            "existingbusiness",
            Some("blue box"),
        ),
        ("Gamma Widgets", "500", "1709251200000", "newbusiness", None),
        (
            "Delta Tools",
            "1000",
            "1711929600000",
            "existingbusiness",
            None,
        ),
    ];
    let mut out = HashMap::new();
    for (name, amount, close, kind, desc) in rows {
        let mut props =
            json!({ "dealname": name, "amount": amount, "closedate": close, "dealtype": kind });
        if let Some(d) = desc {
            props["description"] = json!(d);
        }
        out.insert(name, p.create_deal(props).await);
    }
    out
}

/// Runs a search and returns the matching deal names (checking `total` agrees).
async fn names(p: &Portal, groups: Value) -> BTreeSet<String> {
    let a = search(
        p,
        "deals",
        json!({ "filterGroups": groups, "properties": ["dealname"], "limit": 100 }),
    )
    .await;
    assert_eq!(a.status, 200, "search {groups}: {}", a.text);
    let results = a.body["results"].as_array().expect("results");
    assert_eq!(a.body["total"], results.len(), "total: {}", a.text);
    results
        .iter()
        .map(|r| {
            r["properties"]["dealname"]
                .as_str()
                .expect("dealname")
                .to_owned()
        })
        .collect()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn search_supports_all_13_operators() {
    let (_sb, p) = portal().await;
    operator_fixture(&p).await;
    let one = |filter: Value| json!([{ "filters": [filter] }]);
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (f("amount", "EQ", json!("250")), vec!["Beta Gadgets"]),
        (
            f("amount", "NEQ", json!("250")),
            vec!["Alpha Widgets", "Gamma Widgets", "Delta Tools"],
        ),
        (
            f("amount", "LT", json!("500")),
            vec!["Alpha Widgets", "Beta Gadgets"],
        ),
        (
            f("amount", "LTE", json!("500")),
            vec!["Alpha Widgets", "Beta Gadgets", "Gamma Widgets"],
        ),
        (
            f("amount", "GT", json!("250")),
            vec!["Gamma Widgets", "Delta Tools"],
        ),
        (
            f("amount", "GTE", json!("250")),
            vec!["Beta Gadgets", "Gamma Widgets", "Delta Tools"],
        ),
        // Numbers compare as numbers, not as text ("1000" < "99" as text).
        (
            f("amount", "GT", json!("99")),
            vec![
                "Alpha Widgets",
                "Beta Gadgets",
                "Gamma Widgets",
                "Delta Tools",
            ],
        ),
        (
            f("amount", "BETWEEN", json!(["250", "500"])),
            vec!["Beta Gadgets", "Gamma Widgets"],
        ),
        (
            f("dealtype", "IN", json!(["newbusiness"])),
            vec!["Alpha Widgets", "Gamma Widgets"],
        ),
        (
            f("amount", "IN", json!(["100", "1000"])),
            vec!["Alpha Widgets", "Delta Tools"],
        ),
        (
            f("amount", "NOT_IN", json!(["100", "1000"])),
            vec!["Beta Gadgets", "Gamma Widgets"],
        ),
        (
            f("description", "HAS_PROPERTY", Value::Null),
            vec!["Alpha Widgets", "Beta Gadgets"],
        ),
        (
            f("description", "NOT_HAS_PROPERTY", Value::Null),
            vec!["Gamma Widgets", "Delta Tools"],
        ),
        (
            f("dealname", "CONTAINS_TOKEN", json!("widgets")),
            vec!["Alpha Widgets", "Gamma Widgets"],
        ),
        (
            f("dealname", "NOT_CONTAINS_TOKEN", json!("widgets")),
            vec!["Beta Gadgets", "Delta Tools"],
        ),
        (
            f("dealname", "EQ", json!("Delta Tools")),
            vec!["Delta Tools"],
        ),
        // Date-times are filtered with epoch-millisecond strings.
        (
            f("closedate", "GTE", json!("1706745600000")),
            vec!["Beta Gadgets", "Gamma Widgets", "Delta Tools"],
        ),
        (
            f("closedate", "LT", json!("1706745600000")),
            vec!["Alpha Widgets"],
        ),
        (
            f("closedate", "EQ", json!("1709251200000")),
            vec!["Gamma Widgets"],
        ),
        (
            f(
                "closedate",
                "BETWEEN",
                json!(["1706745600000", "1709251200000"]),
            ),
            vec!["Beta Gadgets", "Gamma Widgets"],
        ),
    ];
    let mut ops = BTreeSet::new();
    for (filter, want) in cases {
        ops.insert(filter["operator"].as_str().expect("op").to_owned());
        assert_eq!(
            names(&p, one(filter.clone())).await,
            set(&want),
            "filter {filter}"
        );
    }
    assert_eq!(ops.len(), 13, "every operator was exercised: {ops:?}");
    // An unknown operator is a 400.
    let a = search(
        &p,
        "deals",
        json!({ "filterGroups": one(f("amount", "LIKE", json!("1"))) }),
    )
    .await;
    assert_error(&a, 400, "VALIDATION_ERROR");
}

#[tokio::test]
async fn search_ands_filters_within_a_group_and_ors_groups() {
    let (_sb, p) = portal().await;
    operator_fixture(&p).await;
    let and = json!([{ "filters": [f("amount", "GTE", json!("500")), f("dealtype", "EQ", json!("newbusiness"))] }]);
    assert_eq!(names(&p, and).await, set(&["Gamma Widgets"]));
    let or = json!([
        { "filters": [f("amount", "EQ", json!("100"))] },
        { "filters": [f("amount", "EQ", json!("1000"))] },
    ]);
    assert_eq!(names(&p, or).await, set(&["Alpha Widgets", "Delta Tools"]));
    let both = json!([
        { "filters": [f("dealtype", "EQ", json!("newbusiness")), f("amount", "GT", json!("100"))] },
        { "filters": [f("dealname", "CONTAINS_TOKEN", json!("tools")), f("closedate", "GT", json!("1711929600000"))] },
        { "filters": [f("dealname", "CONTAINS_TOKEN", json!("gadgets"))] },
    ]);
    assert_eq!(
        names(&p, both).await,
        set(&["Gamma Widgets", "Beta Gadgets"])
    );
    // No filters: everything.
    assert_eq!(names(&p, json!([])).await.len(), 4);
}

#[tokio::test]
async fn search_enforces_filter_and_page_limits() {
    let (_sb, p) = portal().await;
    batch_create_deals(&p, 12, "limits").await;
    let group = |n: usize| json!({ "filters": (0..n).map(|_| f("amount", "GTE", json!("0"))).collect::<Vec<_>>() });
    let ok = |groups: Vec<Value>| json!({ "filterGroups": groups, "limit": 1 });
    // At the limits.
    for body in [
        ok(vec![group(1); 5]),
        ok(vec![group(10)]),
        ok(vec![group(5); 5]),
        ok(vec![group(10), group(10), group(5)]),
    ] {
        let a = search(&p, "deals", body.clone()).await;
        assert_eq!(a.status, 200, "{body}: {}", a.text);
        assert_eq!(a.body["total"], 12);
    }
    // Over them: 6 groups, 11 filters in one group, 26 in all.
    for body in [
        ok(vec![group(1); 6]),
        ok(vec![group(11)]),
        ok(vec![group(10), group(10), group(6)]),
    ] {
        assert_error(&search(&p, "deals", body).await, 400, "VALIDATION_ERROR");
    }
    // Page size: default 10, at most 200.
    let a = search(&p, "deals", json!({})).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["total"], 12);
    assert_eq!(a.body["results"].as_array().map(Vec::len), Some(10));
    assert!(a.body["paging"]["next"]["after"].is_string(), "{}", a.text);
    let a = search(&p, "deals", json!({ "limit": 200 })).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["results"].as_array().map(Vec::len), Some(12));
    assert!(a.body.get("paging").is_none(), "no next page: {}", a.text);
    assert_error(
        &search(&p, "deals", json!({ "limit": 201 })).await,
        400,
        "VALIDATION_ERROR",
    );
}

#[tokio::test]
async fn search_paging_sorted_by_last_modified_returns_each_record_once() {
    let (_sb, p) = portal().await;
    let all = batch_create_deals(&p, 150, "paging").await;
    // One batch update of 100 deals: all of them share one hs_lastmodifieddate.
    let inputs: Vec<Value> = all[20..120]
        .iter()
        .map(|id| json!({ "id": id, "properties": { "description": "touched" } }))
        .collect();
    let u = p
        .post(&format!("{DEAL}/batch/update"), json!({ "inputs": inputs }))
        .await;
    assert_eq!(u.status, 200, "{}", u.text);

    let mut seen: Vec<String> = Vec::new();
    let mut stamps: Vec<i64> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut body = json!({
            "sorts": [{ "propertyName": "hs_lastmodifieddate", "direction": "ASCENDING" }],
            "properties": ["hs_lastmodifieddate"],
            "limit": 7,
        });
        if let Some(a) = &after {
            body["after"] = json!(a);
        }
        let a = search(&p, "deals", body).await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(a.body["total"], 150);
        for r in a.body["results"].as_array().expect("results") {
            seen.push(r["id"].as_str().expect("id").to_owned());
            stamps.push(iso_ms(&r["properties"]["hs_lastmodifieddate"]));
        }
        match a.body["paging"]["next"]["after"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
        assert!(seen.len() <= 150, "paging runs past the end");
    }
    assert!(
        stamps.windows(2).all(|w| w[0] <= w[1]),
        "ascending by hs_lastmodifieddate"
    );
    let mut counts: HashMap<&String, usize> = HashMap::new();
    for id in &seen {
        *counts.entry(id).or_default() += 1;
    }
    assert!(counts.values().all(|c| *c == 1), "a record came back twice");
    assert_eq!(seen.len(), 150, "every record once");
    assert_eq!(
        seen.iter().cloned().collect::<BTreeSet<_>>(),
        all.iter().cloned().collect::<BTreeSet<_>>()
    );
    // The scenario really had 100 records in one millisecond.
    let mut per_stamp: HashMap<i64, usize> = HashMap::new();
    for s in &stamps {
        *per_stamp.entry(*s).or_default() += 1;
    }
    assert!(
        per_stamp.values().any(|n| *n >= 100),
        "100 records share one timestamp: {per_stamp:?}"
    );
}

#[tokio::test]
async fn search_caps_paging_at_10000_results_and_narrowing_recovers() {
    let (_sb, p) = portal().await;
    const N: usize = 10_050;
    let all: BTreeSet<String> = batch_create_deals(&p, N, "big").await.into_iter().collect();
    assert_eq!(all.len(), N);
    let page = |after: Option<String>, filters: Vec<Value>| {
        let mut body = json!({
            "sorts": [{ "propertyName": "hs_lastmodifieddate", "direction": "ASCENDING" }],
            "properties": ["hs_lastmodifieddate"],
            "limit": 200,
        });
        if !filters.is_empty() {
            body["filterGroups"] = json!([{ "filters": filters }]);
        }
        if let Some(a) = after {
            body["after"] = json!(a);
        }
        body
    };
    let mut seen: Vec<String> = Vec::new();
    let mut last_stamp = 0;
    let mut after: Option<String> = None;
    let refused = loop {
        let a = search(&p, "deals", page(after.clone(), vec![])).await;
        if a.status != 200 {
            break a;
        }
        assert_eq!(a.body["total"], N, "total counts every match");
        for r in a.body["results"].as_array().expect("results") {
            seen.push(r["id"].as_str().expect("id").to_owned());
            last_stamp = iso_ms(&r["properties"]["hs_lastmodifieddate"]);
        }
        after = Some(
            a.body["paging"]["next"]["after"]
                .as_str()
                .expect("a next page past 10,000")
                .to_owned(),
        );
        assert!(seen.len() <= 10_000, "served more than 10,000 results");
    };
    assert_error(&refused, 400, "VALIDATION_ERROR");
    assert_eq!(seen.len(), 10_000, "exactly 10,000 results before the cap");
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        10_000,
        "no duplicates"
    );

    // Narrow with hs_lastmodifieddate GTE the last value seen and start again from the top.
    let narrowed = vec![f(
        "hs_lastmodifieddate",
        "GTE",
        json!(last_stamp.to_string()),
    )];
    let mut after: Option<String> = None;
    let mut rest = 0;
    loop {
        let a = search(&p, "deals", page(after.clone(), narrowed.clone())).await;
        assert_eq!(a.status, 200, "{}", a.text);
        let total = a.body["total"].as_u64().expect("total");
        assert!(
            total < 10_000,
            "the narrowed search fits under the cap: {total}"
        );
        for r in a.body["results"].as_array().expect("results") {
            assert!(iso_ms(&r["properties"]["hs_lastmodifieddate"]) >= last_stamp);
            seen.push(r["id"].as_str().expect("id").to_owned());
            rest += 1;
        }
        match a.body["paging"]["next"]["after"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    assert!(
        rest >= N - 10_000,
        "the narrowed search returns the rest: {rest}"
    );
    assert_eq!(
        seen.into_iter().collect::<BTreeSet<_>>(),
        all,
        "every record was seen"
    );
}

#[tokio::test]
async fn search_lag_hides_new_and_changed_records_until_it_passes() {
    let (_sb, p) = portal().await;
    p.set_faults(json!({ "search_lag_ms": 1500 })).await;
    let id = p
        .create_deal(json!({ "dealname": "Lagging", "amount": "1" }))
        .await;
    // Read-your-writes by id works at once ...
    assert_eq!(p.get(&format!("{DEAL}/{id}")).await.status, 200);
    // ... while search does not see the record yet.
    let by_id = json!({ "filterGroups": [{ "filters": [f("hs_object_id", "EQ", json!(id))] }], "properties": ["amount"] });
    let a = search(&p, "deals", by_id.clone()).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(
        a.body["total"], 0,
        "a new record is invisible during the lag: {}",
        a.text
    );
    eventually(
        "the new deal shows up in search",
        Duration::from_secs(10),
        || {
            let (p, body) = (p.clone(), by_id.clone());
            async move {
                let a = search(&p, "deals", body).await;
                (a.status == 200 && a.body["total"] == 1).then_some(())
            }
        },
    )
    .await;

    // A change is stale in search during the lag.
    let u = p
        .patch(
            &format!("{DEAL}/{id}"),
            json!({ "properties": { "amount": "2" } }),
        )
        .await;
    assert_eq!(u.status, 200, "{}", u.text);
    let a = search(&p, "deals", by_id.clone()).await;
    let stale = &a.body["results"][0];
    assert_eq!(
        stale["properties"]["amount"], "1",
        "stale value during the lag: {}",
        a.text
    );
    assert!(
        iso_ms(&stale["properties"]["hs_lastmodifieddate"]) < iso_ms(&u.body["updatedAt"]),
        "{}",
        a.text
    );
    let new_amount = json!({ "filterGroups": [{ "filters": [f("amount", "EQ", json!("2"))] }] });
    assert_eq!(
        search(&p, "deals", new_amount.clone()).await.body["total"],
        0
    );
    eventually(
        "the change shows up in search",
        Duration::from_secs(10),
        || {
            let (p, body) = (p.clone(), new_amount.clone());
            async move {
                let a = search(&p, "deals", body).await;
                (a.status == 200 && a.body["total"] == 1).then_some(())
            }
        },
    )
    .await;
}

/// A lagging search shows a record as it was at an earlier instant, as a whole: `updatedAt` and
/// `hs_lastmodifieddate` are set to one instant by every write (HUBSPOT-API.md §5), so a
/// result must not pair the new `updatedAt` with the old values and `hs_lastmodifieddate`.
#[tokio::test]
async fn search_during_lag_shows_updated_at_consistent_with_hs_lastmodifieddate() {
    let (_sb, p) = portal().await;
    let id = p
        .create_deal(json!({ "dealname": "Consistent", "amount": "1" }))
        .await;
    p.set_faults(json!({ "search_lag_ms": 1500 })).await;
    let by_id = json!({ "filterGroups": [{ "filters": [f("hs_object_id", "EQ", json!(id))] }], "properties": ["amount"] });
    // Wait until the create itself is inside the lagged view.
    eventually(
        "the deal is visible to the lagging search",
        Duration::from_secs(10),
        || {
            let (p, body) = (p.clone(), by_id.clone());
            async move { (search(&p, "deals", body).await.body["total"] == 1).then_some(()) }
        },
    )
    .await;
    let u = p
        .patch(
            &format!("{DEAL}/{id}"),
            json!({ "properties": { "amount": "2" } }),
        )
        .await;
    assert_eq!(u.status, 200, "{}", u.text);
    let a = search(&p, "deals", by_id).await;
    let r = &a.body["results"][0];
    assert_eq!(
        r["properties"]["amount"], "1",
        "still the stale entry: {}",
        a.text
    );
    assert_eq!(
        iso_ms(&r["updatedAt"]),
        iso_ms(&r["properties"]["hs_lastmodifieddate"]),
        "updatedAt agrees with hs_lastmodifieddate in a search result: {}",
        a.text
    );
}

/// Search never returns archived records. During index lag a just-archived record may still be
/// returned (stale), but then as it was before the archive, not flagged `archived: true`.
#[tokio::test]
async fn search_during_lag_never_returns_records_flagged_archived() {
    let (_sb, p) = portal().await;
    let id = p.create_deal(json!({ "dealname": "Soon gone" })).await;
    p.set_faults(json!({ "search_lag_ms": 1500 })).await;
    let by_id = json!({ "filterGroups": [{ "filters": [f("hs_object_id", "EQ", json!(id))] }] });
    eventually(
        "the deal is visible to the lagging search",
        Duration::from_secs(10),
        || {
            let (p, body) = (p.clone(), by_id.clone());
            async move { (search(&p, "deals", body).await.body["total"] == 1).then_some(()) }
        },
    )
    .await;
    assert_eq!(p.delete(&format!("{DEAL}/{id}")).await.status, 204);
    let a = search(&p, "deals", by_id.clone()).await;
    assert_eq!(a.status, 200, "{}", a.text);
    for r in a.body["results"].as_array().expect("results") {
        assert_eq!(
            r["archived"], false,
            "a search result is never an archived record: {}",
            a.text
        );
        assert!(r.get("archivedAt").is_none(), "{}", a.text);
    }
    eventually(
        "the archived deal leaves search",
        Duration::from_secs(10),
        || {
            let (p, body) = (p.clone(), by_id.clone());
            async move { (search(&p, "deals", body).await.body["total"] == 0).then_some(()) }
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

async fn still_answers(p: &Portal) {
    let a = p.get(&format!("{DEAL}?limit=1")).await;
    assert_eq!(a.status, 200, "the server still answers: {}", a.text);
    let c = p
        .post(
            DEAL,
            json!({ "properties": { "dealname": "after the bad input" } }),
        )
        .await;
    assert_eq!(c.status, 201, "and still writes: {}", c.text);
}

#[tokio::test]
async fn malformed_wrongly_typed_and_empty_bodies_are_400s() {
    let (_sb, p) = portal().await;
    let raw = |method: Method, path: &str, body: &'static str| {
        p.req(method, path)
            .header("content-type", "application/json")
            .body(body)
    };
    let cases = [
        (
            Method::POST,
            DEAL.to_owned(),
            "{\"properties\": {\"dealname\": ",
        ),
        (Method::POST, DEAL.to_owned(), "not json at all"),
        (
            Method::POST,
            DEAL.to_owned(),
            "{\"properties\": \"dealname\"}",
        ),
        (Method::POST, DEAL.to_owned(), "[1, 2, 3]"),
        (
            Method::POST,
            DEAL.to_owned(),
            "{\"properties\": {\"dealname\": {\"nested\": true}}}",
        ),
        (Method::POST, DEAL.to_owned(), ""),
        (
            Method::POST,
            format!("{DEAL}/batch/create"),
            "{\"inputs\": \"all of them\"}",
        ),
        (Method::POST, format!("{DEAL}/batch/read"), ""),
        (
            Method::POST,
            format!("{DEAL}/search"),
            "{\"limit\": \"ten\"}",
        ),
        (
            Method::POST,
            format!("{DEAL}/search"),
            "{\"filterGroups\": {\"filters\": []}}",
        ),
        (
            Method::POST,
            format!("{DEAL}/search"),
            "{\"filterGroups\": [",
        ),
    ];
    for (method, path, body) in cases {
        let a = p.send(raw(method.clone(), &path, body)).await;
        assert_error(&a, 400, "VALIDATION_ERROR");
        assert!(
            a.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{method} {path} {body:?}: JSON error body"
        );
    }
    let id = p.create_deal(json!({ "dealname": "target" })).await;
    for body in ["{\"properties\": 5}", "{broken", ""] {
        let a = p
            .send(raw(Method::PATCH, &format!("{DEAL}/{id}"), body))
            .await;
        assert_error(&a, 400, "VALIDATION_ERROR");
    }
    assert_eq!(
        p.get(&format!("{DEAL}/{id}")).await.body["properties"]["dealname"],
        "target"
    );
    assert_eq!(
        list_all(&p, "deals", "").await.len(),
        1,
        "no bad request created anything"
    );
    still_answers(&p).await;
}

#[tokio::test]
async fn oversized_body_is_a_413() {
    let (_sb, p) = portal().await;
    let huge = "x".repeat(3 * 1024 * 1024 + 1024);
    let body = json!({ "properties": { "dealname": huge } }).to_string();
    assert!(body.len() > 3 * 1024 * 1024);
    let a = p
        .send(
            p.req(Method::POST, DEAL)
                .header("content-type", "application/json")
                .body(body),
        )
        .await;
    assert_eq!(a.status, 413, "{}", &a.text[..a.text.len().min(300)]);
    assert_eq!(a.body["status"], "error", "{}", a.text);
    assert!(
        a.body["message"].is_string()
            && a.body["correlationId"].is_string()
            && a.body["category"].is_string()
    );
    assert!(list_all(&p, "deals", "").await.is_empty());
    still_answers(&p).await;
}

#[tokio::test]
async fn unknown_path_is_404_and_wrong_method_is_405() {
    let (_sb, p) = portal().await;
    for path in [
        "/crm/v3/nothing-here",
        "/crm/v9/objects/deals",
        "/totally/unknown",
    ] {
        let a = p.get(path).await;
        assert_error(&a, 404, "OBJECT_NOT_FOUND");
    }
    let id = p.create_deal(json!({ "dealname": "method" })).await;
    for (method, path) in [
        (Method::PUT, DEAL.to_owned()),
        (Method::DELETE, DEAL.to_owned()),
        (Method::PUT, format!("{DEAL}/{id}")),
        (Method::POST, format!("{DEAL}/{id}")),
    ] {
        let a = p.send(p.req(method.clone(), &path).json(&json!({}))).await;
        assert_eq!(a.status, 405, "{method} {path}: {}", a.text);
        assert_eq!(a.body["status"], "error", "{method} {path}: {}", a.text);
        assert!(
            a.body["message"].is_string()
                && a.body["correlationId"].is_string()
                && a.body["category"].is_string()
        );
    }
    assert_eq!(
        p.get(&format!("{DEAL}/{id}")).await.status,
        200,
        "nothing happened to the deal"
    );
    still_answers(&p).await;
}

#[tokio::test]
async fn missing_or_unknown_token_is_401() {
    let sb = common::sandbox().await;
    let p = common::portal(&sb, "partner-a");
    let url = p.url(DEAL);
    let attempts = [
        p.http.get(&url),
        p.http.get(&url).bearer_auth("pat-na1-not-a-real-token"),
        p.http
            .get(&url)
            .header("authorization", format!("Basic {}", p.info.token)),
        p.http
            .post(&url)
            .json(&json!({ "properties": { "dealname": "sneaky" } })),
        p.http
            .post(format!("{url}/search"))
            .bearer_auth("wrong")
            .json(&json!({})),
    ];
    for rb in attempts {
        let a = p.send(rb).await;
        assert_error(&a, 401, "INVALID_AUTHENTICATION");
    }
    // Another portal's token reaches another portal, never this one's data.
    let other = common::portal(&sb, "partner-b");
    let id = p.create_deal(json!({ "dealname": "mine" })).await;
    assert_error(
        &other.get(&format!("{DEAL}/{id}")).await,
        404,
        "OBJECT_NOT_FOUND",
    );
    assert_eq!(
        list_all(&p, "deals", "").await,
        vec![id],
        "the unauthenticated create did nothing"
    );
    still_answers(&p).await;
}
