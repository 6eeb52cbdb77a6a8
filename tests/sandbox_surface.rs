//! Integration tests for the sandbox's surface beyond CRM objects, over loopback: several
//! portals behind one address, associations v4, properties and groups, pipelines, owners,
//! files, rate limits, fault injection and the `/_sandbox/` test controls (counters, reset,
//! state dump, restore, persistence with a state file).
//!
//! Each test starts its own sandbox on 127.0.0.1:0. Nothing sleeps to synchronise: waiting is
//! done with `common::eventually`, which polls a condition against a deadline.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use common::{assert_error, eventually, Answer, Portal};
use dealsync::sandbox::{SandboxConfig, SandboxHandle};
use reqwest::Method;
use serde_json::{json, Value};

const DEALS: &str = "/crm/v3/objects/deals";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A portal on a fresh sandbox without rate limits.
async fn unlimited(name: &str) -> (SandboxHandle, Portal) {
    let sb = common::unlimited_sandbox().await;
    let p = common::portal(&sb, name);
    (sb, p)
}

/// An id given as a JSON string or number, as text.
fn id_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("expected an id (string or number), got {other}"),
    }
}

/// Creates a record of any type and returns its id.
async fn create(p: &Portal, t: &str, props: Value) -> String {
    let a = p
        .post(
            &format!("/crm/v3/objects/{t}"),
            json!({ "properties": props }),
        )
        .await;
    assert_eq!(a.status, 201, "create {t}: {}", a.text);
    id_text(&a.body["id"])
}

async fn contact(p: &Portal, email: &str) -> String {
    create(p, "contacts", json!({ "email": email, "firstname": "Pat" })).await
}

async fn company(p: &Portal, name: &str) -> String {
    create(p, "companies", json!({ "name": name })).await
}

async fn note(p: &Portal, body: &str) -> String {
    create(
        p,
        "notes",
        json!({ "hs_timestamp": "2024-05-01T10:00:00.000Z", "hs_note_body": body }),
    )
    .await
}

/// `GET /crm/v4/objects/{t}/{id}/associations/{to}`: the answer, checked to be a 200.
async fn assoc_list(p: &Portal, t: &str, id: &str, to: &str) -> Value {
    let a = p
        .get(&format!("/crm/v4/objects/{t}/{id}/associations/{to}"))
        .await;
    assert_eq!(a.status, 200, "list {t}/{id} -> {to}: {}", a.text);
    a.body
}

/// The linked ids and their type ids from a v4 association listing (or a batch-read `to`).
fn links(rows: &Value) -> Vec<(String, BTreeSet<i64>)> {
    rows.as_array()
        .unwrap_or_else(|| panic!("expected an array of associations, got {rows}"))
        .iter()
        .map(|r| {
            let types = r["associationTypes"]
                .as_array()
                .unwrap_or_else(|| panic!("associationTypes missing in {r}"))
                .iter()
                .map(|t| {
                    assert_eq!(t["category"], "HUBSPOT_DEFINED", "category in {t}");
                    t["typeId"]
                        .as_i64()
                        .unwrap_or_else(|| panic!("typeId is not an integer in {t}"))
                })
                .collect();
            (id_text(&r["toObjectId"]), types)
        })
        .collect()
}

fn types(ids: &[i64]) -> BTreeSet<i64> {
    ids.iter().copied().collect()
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

/// Names of the `X-HubSpot-RateLimit-*` headers an answer carries.
fn rate_limit_headers(a: &Answer) -> Vec<String> {
    a.headers
        .keys()
        .map(|k| k.as_str().to_ascii_lowercase())
        .filter(|k| k.starts_with("x-hubspot-ratelimit"))
        .collect()
}

/// Asserts HubSpot's 429 body for the given policy.
fn assert_rate_limited(a: &Answer, policy: &str) {
    assert_eq!(a.status, 429, "expected a 429: {}", a.text);
    assert_eq!(a.body["status"], "error", "{}", a.text);
    assert_eq!(a.body["errorType"], "RATE_LIMIT", "{}", a.text);
    assert_eq!(a.body["policyName"], policy, "{}", a.text);
    assert!(
        a.body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message: {}",
        a.text
    );
    assert!(
        a.body["category"].as_str().is_some_and(|m| !m.is_empty()),
        "category: {}",
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

/// A minimal search body.
fn search_body() -> Value {
    json!({ "filterGroups": [], "limit": 1 })
}

/// Uploads a file through Files v3's multipart form; `options` is the raw `options` part.
async fn upload(p: &Portal, file_name: &str, content: &[u8], options: Option<&str>) -> Answer {
    let mut form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(content.to_vec())
                .file_name("upload.bin")
                .mime_str("application/octet-stream")
                .expect("mime"),
        )
        .text("fileName", file_name.to_owned())
        .text("folderPath", "/dealsync/attachments");
    if let Some(o) = options {
        form = form.text("options", o.to_owned());
    }
    p.send(p.req(Method::POST, "/files/v3/files").multipart(form))
        .await
}

/// Bytes that are not valid UTF-8, so a lossy round trip would show.
fn binary_content(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 7 + 3) % 256) as u8).collect()
}

/// A GET without any token; returns status, headers and raw bytes.
async fn get_without_token(p: &Portal, url: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let resp = p
        .http
        .get(url)
        .send()
        .await
        .expect("request reaches the sandbox");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("body").to_vec();
    (status, headers, bytes)
}

/// A custom enumeration property on deals; returns the answer.
async fn create_enum_property(p: &Portal, name: &str, field_type: &str, values: &[&str]) -> Answer {
    let options: Vec<Value> = values
        .iter()
        .enumerate()
        .map(|(i, v)| json!({ "label": v.to_uppercase(), "value": v, "hidden": false, "displayOrder": i }))
        .collect();
    p.post(
        "/crm/v3/properties/deals",
        json!({
            "name": name,
            "label": name.replace('_', " "),
            "type": "enumeration",
            "fieldType": field_type,
            "groupName": "dealinformation",
            "options": options,
        }),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Several portals
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn startup_facts_list_three_portals_with_distinct_credentials() {
    let sb = common::sandbox().await;
    let s = sb.startup();
    assert_eq!(s.base_url, sb.base_url);
    assert!(
        s.base_url.starts_with("http://127.0.0.1:"),
        "loopback only: {}",
        s.base_url
    );
    let names: Vec<&str> = s.portals.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["hubspot", "partner-a", "partner-b"]);
    let tokens: HashSet<&str> = s.portals.iter().map(|p| p.token.as_str()).collect();
    let secrets: HashSet<&str> = s
        .portals
        .iter()
        .map(|p| p.webhook_secret.as_str())
        .collect();
    let ids: HashSet<u64> = s.portals.iter().map(|p| p.portal_id).collect();
    assert_eq!(tokens.len(), 3, "tokens must differ: {:?}", s.portals);
    assert_eq!(
        secrets.len(),
        3,
        "webhook secrets must differ: {:?}",
        s.portals
    );
    assert_eq!(ids.len(), 3, "portal ids must differ: {:?}", s.portals);
    for p in &s.portals {
        assert!(!p.token.is_empty() && !p.webhook_secret.is_empty(), "{p:?}");
        assert!(p.portal_id > 0, "{p:?}");
        assert_eq!(sb.portal(&p.name), p);
    }
    // The startup facts serialise to the one JSON line `dealsync sandbox` prints.
    let line = serde_json::to_string(&s).expect("startup serialises");
    assert!(!line.contains('\n'));
    let back: Value = serde_json::from_str(&line).expect("valid JSON");
    assert_eq!(back["portals"].as_array().map(Vec::len), Some(3));

    // `/_sandbox/info` tells the same facts.
    let p = common::portal(&sb, "hubspot");
    let info = p
        .send(p.http.get(format!("{}/_sandbox/info", sb.base_url)))
        .await;
    assert_eq!(info.status, 200, "{}", info.text);
    assert_eq!(info.body["base_url"], json!(sb.base_url));
    assert_eq!(
        info.body["portals"],
        serde_json::to_value(&s.portals).expect("portals serialise")
    );
}

#[tokio::test]
async fn the_bearer_token_selects_the_portal() {
    let sb = common::unlimited_sandbox().await;
    let a = common::portal(&sb, "partner-a");
    let b = common::portal(&sb, "partner-b");
    let hs = common::portal(&sb, "hubspot");

    let in_a = a.create_deal(json!({ "dealname": "Only in A" })).await;
    let in_hs = hs
        .create_deal(json!({ "dealname": "Only in HubSpot" }))
        .await;
    assert_ne!(in_a, in_hs, "ids of different portals must differ");

    let got = a.get(&format!("{DEALS}/{in_a}")).await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.body["properties"]["dealname"], "Only in A");

    for (other, id) in [(&hs, &in_a), (&b, &in_a), (&a, &in_hs)] {
        let miss = other.get(&format!("{DEALS}/{id}")).await;
        assert_error(&miss, 404, "OBJECT_NOT_FOUND");
        let patch = other
            .patch(
                &format!("{DEALS}/{id}"),
                json!({ "properties": { "dealname": "x" } }),
            )
            .await;
        assert_error(&patch, 404, "OBJECT_NOT_FOUND");
    }
    let list_b = b.get(DEALS).await;
    assert_eq!(list_b.status, 200, "{}", list_b.text);
    assert_eq!(list_b.body["results"], json!([]), "partner-b sees no deals");
    let list_hs = hs.get(DEALS).await;
    let ids: Vec<String> = list_hs.body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| id_text(&r["id"]))
        .collect();
    assert_eq!(ids, [in_hs.as_str()]);

    // The PATCH through the wrong portal changed nothing.
    let still = a.get(&format!("{DEALS}/{in_a}")).await;
    assert_eq!(still.body["properties"]["dealname"], "Only in A");

    // No token or an unknown token is a 401 with HubSpot's body.
    let none = a.send(a.http.get(a.url(DEALS))).await;
    assert_error(&none, 401, "INVALID_AUTHENTICATION");
    let unknown = a
        .send(a.http.get(a.url(DEALS)).bearer_auth("pat-not-a-real-token"))
        .await;
    assert_error(&unknown, 401, "INVALID_AUTHENTICATION");
    assert!(
        unknown.body["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Authentication credentials not found")),
        "{}",
        unknown.text
    );
}

// ---------------------------------------------------------------------------------------------
// Associations v4
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn default_links_carry_hubspot_type_ids_in_both_directions() {
    let (_sb, p) = unlimited("partner-a").await;
    let deal = p.create_deal(json!({ "dealname": "Linked" })).await;
    let con = contact(&p, "linked@example.com").await;
    let com = company(&p, "Linked Inc").await;
    let nt = note(&p, "<p>linked</p>").await;

    for (to, id, forward, backward) in [
        ("contacts", &con, 3, 4),
        ("companies", &com, 341, 342),
        ("notes", &nt, 213, 214),
    ] {
        let a = p
            .put(
                &format!("/crm/v4/objects/deals/{deal}/associations/default/{to}/{id}"),
                Value::Null,
            )
            .await;
        assert_eq!(a.status, 200, "default link deal -> {to}: {}", a.text);
        assert_eq!(a.body["status"], "COMPLETE", "{}", a.text);
        let spec = &a.body["results"][0]["associationSpec"];
        assert_eq!(spec["associationCategory"], "HUBSPOT_DEFINED", "{}", a.text);
        assert_eq!(spec["associationTypeId"], forward, "{}", a.text);

        let from_deal = assoc_list(&p, "deals", &deal, to).await;
        assert_eq!(
            links(&from_deal["results"]),
            [(id.clone(), types(&[forward]))],
            "deal -> {to}: {from_deal}"
        );
        let back = assoc_list(&p, to, id, "deals").await;
        assert_eq!(
            links(&back["results"]),
            [(deal.clone(), types(&[backward]))],
            "{to} -> deal: {back}"
        );
    }

    // Type ids work in place of names, and a second default PUT changes nothing.
    let again = p
        .put(
            &format!("/crm/v4/objects/0-3/{deal}/associations/default/0-1/{con}"),
            Value::Null,
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.text);
    let from_deal = assoc_list(&p, "deals", &deal, "contacts").await;
    assert_eq!(links(&from_deal["results"]), [(con.clone(), types(&[3]))]);
}

#[tokio::test]
async fn typed_link_adds_a_type_and_delete_removes_every_type() {
    let (_sb, p) = unlimited("partner-a").await;
    let deal = p.create_deal(json!({ "dealname": "Typed" })).await;
    let con = contact(&p, "typed@example.com").await;
    let com = company(&p, "Typed Inc").await;

    let a = p
        .put(
            &format!("/crm/v4/objects/deals/{deal}/associations/contacts/{con}"),
            json!([{ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 3 }]),
        )
        .await;
    assert_eq!(a.status, 201, "typed link: {}", a.text);
    assert_eq!(id_text(&a.body["fromObjectId"]), deal, "{}", a.text);
    assert_eq!(id_text(&a.body["toObjectId"]), con, "{}", a.text);
    assert_eq!(a.body["fromObjectTypeId"], "0-3", "{}", a.text);
    assert_eq!(a.body["toObjectTypeId"], "0-1", "{}", a.text);
    assert!(a.body["labels"].is_array(), "{}", a.text);
    assert_eq!(
        links(&assoc_list(&p, "deals", &deal, "contacts").await["results"]),
        [(con.clone(), types(&[3]))]
    );
    assert_eq!(
        links(&assoc_list(&p, "contacts", &con, "deals").await["results"]),
        [(deal.clone(), types(&[4]))]
    );

    // Deal -> company: the unlabelled type and the Primary one side by side.
    let a = p
        .put(
            &format!("/crm/v4/objects/deals/{deal}/associations/companies/{com}"),
            json!([
                { "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 341 },
                { "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 5 }
            ]),
        )
        .await;
    assert_eq!(a.status, 201, "typed link with two types: {}", a.text);
    assert_eq!(a.body["labels"], json!(["Primary"]), "{}", a.text);
    assert_eq!(
        links(&assoc_list(&p, "deals", &deal, "companies").await["results"]),
        [(com.clone(), types(&[5, 341]))]
    );
    assert_eq!(
        links(&assoc_list(&p, "companies", &com, "deals").await["results"]),
        [(deal.clone(), types(&[6, 342]))]
    );

    // DELETE removes all types between the pair, in both directions.
    let del = p
        .delete(&format!(
            "/crm/v4/objects/deals/{deal}/associations/companies/{com}"
        ))
        .await;
    assert_eq!(del.status, 204, "{}", del.text);
    assert!(del.text.is_empty(), "204 has no body: {}", del.text);
    assert_eq!(
        assoc_list(&p, "deals", &deal, "companies").await["results"],
        json!([])
    );
    assert_eq!(
        assoc_list(&p, "companies", &com, "deals").await["results"],
        json!([])
    );
    // The contact link is untouched.
    assert_eq!(
        links(&assoc_list(&p, "deals", &deal, "contacts").await["results"]),
        [(con.clone(), types(&[3]))]
    );
    let del = p
        .delete(&format!(
            "/crm/v4/objects/contacts/{con}/associations/deals/{deal}"
        ))
        .await;
    assert_eq!(del.status, 204, "unlink from the other side: {}", del.text);
    assert_eq!(
        assoc_list(&p, "deals", &deal, "contacts").await["results"],
        json!([])
    );
}

#[tokio::test]
async fn invalid_association_types_are_400s_and_change_nothing() {
    let (_sb, p) = unlimited("partner-a").await;
    let deal = p.create_deal(json!({ "dealname": "Strict" })).await;
    let con = contact(&p, "strict@example.com").await;
    let path = format!("/crm/v4/objects/deals/{deal}/associations/contacts/{con}");

    for (why, body) in [
        (
            "unknown type id",
            json!([{ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 99999 }]),
        ),
        (
            "contact->deal id used for deal->contact",
            json!([{ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 4 }]),
        ),
        (
            "deal->company id used for deal->contact",
            json!([{ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 341 }]),
        ),
        (
            "unknown category",
            json!([{ "associationCategory": "MADE_UP", "associationTypeId": 3 }]),
        ),
        ("no types", json!([])),
    ] {
        let a = p.put(&path, body).await;
        assert_eq!(a.status, 400, "{why}: {}", a.text);
        assert_error(&a, 400, "VALIDATION_ERROR");
    }
    let batch = p
        .post(
            "/crm/v4/associations/deals/contacts/batch/create",
            json!({ "inputs": [{
                "from": { "id": deal }, "to": { "id": con },
                "types": [{ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 99999 }]
            }] }),
        )
        .await;
    assert!(
        batch.status == 400 || batch.status == 207,
        "batch create with a bad type: {}",
        batch.text
    );
    if batch.status == 207 {
        assert_eq!(batch.body["numErrors"], 1, "{}", batch.text);
        assert_eq!(batch.body["results"], json!([]), "{}", batch.text);
    }
    assert_eq!(
        assoc_list(&p, "deals", &deal, "contacts").await["results"],
        json!([]),
        "nothing was linked"
    );
}

#[tokio::test]
async fn association_list_pages_with_limit_and_after() {
    let (_sb, p) = unlimited("partner-a").await;
    let deal = p.create_deal(json!({ "dealname": "Many contacts" })).await;
    let mut contacts = Vec::new();
    for i in 0..5 {
        let c = contact(&p, &format!("page{i}@example.com")).await;
        let a = p
            .put(
                &format!("/crm/v4/objects/deals/{deal}/associations/default/contacts/{c}"),
                Value::Null,
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.text);
        contacts.push(c);
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let mut path = format!("/crm/v4/objects/deals/{deal}/associations/contacts?limit=2");
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let a = p.get(&path).await;
        assert_eq!(a.status, 200, "{}", a.text);
        let page = links(&a.body["results"]);
        assert!(page.len() <= 2, "limit=2 gave {}", page.len());
        seen.extend(page.into_iter().map(|(id, _)| id));
        match a.body["paging"]["next"]["after"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    let mut expected = contacts.clone();
    expected.sort();
    let mut got = seen.clone();
    got.sort();
    assert_eq!(got, expected, "each contact exactly once over the pages");
    let too_many = p
        .get(&format!(
            "/crm/v4/objects/deals/{deal}/associations/contacts?limit=501"
        ))
        .await;
    assert_error(&too_many, 400, "VALIDATION_ERROR");
}

#[tokio::test]
async fn batch_create_read_archive_and_associate_default() {
    let (_sb, p) = unlimited("partner-a").await;
    let d1 = p.create_deal(json!({ "dealname": "Batch 1" })).await;
    let d2 = p.create_deal(json!({ "dealname": "Batch 2" })).await;
    let c1 = contact(&p, "b1@example.com").await;
    let c2 = contact(&p, "b2@example.com").await;
    let com = company(&p, "Batch Inc").await;

    let typed = |from: &str, to: &str| {
        json!({
            "from": { "id": from }, "to": { "id": to },
            "types": [{ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 3 }]
        })
    };
    let a = p
        .post(
            "/crm/v4/associations/deals/contacts/batch/create",
            json!({ "inputs": [typed(&d1, &c1), typed(&d1, &c2), typed(&d2, &c1)] }),
        )
        .await;
    assert_eq!(a.status, 201, "batch create: {}", a.text);
    assert_eq!(a.body["status"], "COMPLETE", "{}", a.text);
    assert_eq!(
        a.body["results"].as_array().map(Vec::len),
        Some(3),
        "{}",
        a.text
    );
    assert!(a.body["startedAt"].is_string() && a.body["completedAt"].is_string());

    // Batch read: one entry per from-id with every linked id and its type.
    let r = p
        .post(
            "/crm/v4/associations/deals/contacts/batch/read",
            json!({ "inputs": [{ "id": d1 }, { "id": d2 }] }),
        )
        .await;
    assert_eq!(r.status, 200, "batch read: {}", r.text);
    let mut by_from = std::collections::BTreeMap::new();
    for row in r.body["results"].as_array().expect("results") {
        let mut to = links(&row["to"]);
        to.sort();
        by_from.insert(id_text(&row["from"]["id"]), to);
    }
    let mut d1_expected = vec![(c1.clone(), types(&[3])), (c2.clone(), types(&[3]))];
    d1_expected.sort();
    assert_eq!(by_from.get(&d1), Some(&d1_expected), "{}", r.text);
    assert_eq!(
        by_from.get(&d2),
        Some(&vec![(c1.clone(), types(&[3]))]),
        "{}",
        r.text
    );

    // Reverse direction through batch read gives the contact->deal type id.
    let r = p
        .post(
            "/crm/v4/associations/contacts/deals/batch/read",
            json!({ "inputs": [{ "id": c1 }] }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut to = links(&r.body["results"][0]["to"]);
    to.sort();
    let mut c1_expected = vec![(d1.clone(), types(&[4])), (d2.clone(), types(&[4]))];
    c1_expected.sort();
    assert_eq!(to, c1_expected, "{}", r.text);

    // Batch archive removes the listed pairs only.
    let a = p
        .post(
            "/crm/v4/associations/deals/contacts/batch/archive",
            json!({ "inputs": [{ "from": { "id": d1 }, "to": [{ "id": c1 }, { "id": c2 }] }] }),
        )
        .await;
    assert_eq!(a.status, 204, "batch archive: {}", a.text);
    assert_eq!(
        assoc_list(&p, "deals", &d1, "contacts").await["results"],
        json!([])
    );
    assert_eq!(
        links(&assoc_list(&p, "deals", &d2, "contacts").await["results"]),
        [(c1.clone(), types(&[3]))]
    );

    // Batch associate/default uses the default type per direction.
    let a = p
        .post(
            "/crm/v4/associations/deals/companies/batch/associate/default",
            json!({ "inputs": [
                { "from": { "id": d1 }, "to": { "id": com } },
                { "from": { "id": d2 }, "to": { "id": com } }
            ] }),
        )
        .await;
    assert_eq!(a.status, 200, "batch associate default: {}", a.text);
    let results = a.body["results"].as_array().expect("results");
    assert_eq!(results.len(), 2, "{}", a.text);
    for r in results {
        assert_eq!(r["associationSpec"]["associationTypeId"], 341, "{}", a.text);
        assert_eq!(
            r["associationSpec"]["associationCategory"],
            "HUBSPOT_DEFINED"
        );
    }
    let mut back = links(&assoc_list(&p, "companies", &com, "deals").await["results"]);
    back.sort();
    let mut expected = vec![(d1.clone(), types(&[342])), (d2.clone(), types(&[342]))];
    expected.sort();
    assert_eq!(back, expected);
}

#[tokio::test]
async fn batch_read_takes_at_most_1000_inputs() {
    let (_sb, p) = unlimited("partner-a").await;
    let deal = p.create_deal(json!({ "dealname": "Read many" })).await;
    let con = contact(&p, "many@example.com").await;
    let a = p
        .put(
            &format!("/crm/v4/objects/deals/{deal}/associations/default/contacts/{con}"),
            Value::Null,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);

    // 1,000 inputs: the real deal and 999 ids that do not exist.
    let mut inputs = vec![json!({ "id": deal })];
    inputs.extend((1..1000u64).map(|i| json!({ "id": (900_000_000 + i).to_string() })));
    assert_eq!(inputs.len(), 1000);
    let ok = p
        .post(
            "/crm/v4/associations/deals/contacts/batch/read",
            json!({ "inputs": inputs }),
        )
        .await;
    assert!(
        ok.status == 200 || ok.status == 207,
        "1,000 inputs are allowed: {} {}",
        ok.status,
        &ok.text[..ok.text.len().min(300)]
    );
    let found: Vec<String> = ok.body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| id_text(&r["from"]["id"]))
        .collect();
    assert_eq!(found, [deal.as_str()]);

    inputs.push(json!({ "id": "900999999" }));
    assert_eq!(inputs.len(), 1001);
    let too_many = p
        .post(
            "/crm/v4/associations/deals/contacts/batch/read",
            json!({ "inputs": inputs }),
        )
        .await;
    assert_error(&too_many, 400, "VALIDATION_ERROR");
}

#[tokio::test]
async fn archiving_an_object_drops_its_associations() {
    let (_sb, p) = unlimited("partner-a").await;
    let deal = p.create_deal(json!({ "dealname": "Hub" })).await;
    let con = contact(&p, "dropped@example.com").await;
    let com = company(&p, "Dropped Inc").await;
    let nt = note(&p, "<p>dropped</p>").await;
    for (to, id) in [("contacts", &con), ("companies", &com), ("notes", &nt)] {
        let a = p
            .put(
                &format!("/crm/v4/objects/deals/{deal}/associations/default/{to}/{id}"),
                Value::Null,
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.text);
    }

    // Archiving the contact removes its link from the deal's side too.
    let del = p.delete(&format!("/crm/v3/objects/contacts/{con}")).await;
    assert_eq!(del.status, 204, "{}", del.text);
    assert_eq!(
        assoc_list(&p, "deals", &deal, "contacts").await["results"],
        json!([])
    );
    let gone = p
        .get(&format!(
            "/crm/v4/objects/contacts/{con}/associations/deals"
        ))
        .await;
    assert_error(&gone, 404, "OBJECT_NOT_FOUND");

    // Archiving the deal removes its links from the company's and the note's side.
    let del = p.delete(&format!("{DEALS}/{deal}")).await;
    assert_eq!(del.status, 204, "{}", del.text);
    assert_eq!(
        assoc_list(&p, "companies", &com, "deals").await["results"],
        json!([])
    );
    assert_eq!(
        assoc_list(&p, "notes", &nt, "deals").await["results"],
        json!([])
    );
    let batch = p
        .post(
            "/crm/v4/associations/companies/deals/batch/read",
            json!({ "inputs": [{ "id": com }] }),
        )
        .await;
    let linked: Vec<Value> = batch.body["results"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .flat_map(|r| r["to"].as_array().cloned().unwrap_or_default())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        linked.is_empty(),
        "batch read still links the archived deal: {}",
        batch.text
    );

    // An archived object cannot be linked again.
    let relink = p
        .put(
            &format!("/crm/v4/objects/companies/{com}/associations/default/deals/{deal}"),
            Value::Null,
        )
        .await;
    assert!(
        relink.status == 404 || relink.status == 400,
        "linking an archived deal: {}",
        relink.text
    );
    assert_eq!(
        assoc_list(&p, "companies", &com, "deals").await["results"],
        json!([])
    );
}

#[tokio::test]
async fn labels_endpoint_lists_hubspot_defined_types_per_direction() {
    let (_sb, p) = unlimited("partner-a").await;
    let a = p.get("/crm/associations/v4/deals/companies/labels").await;
    assert_eq!(a.status, 200, "{}", a.text);
    let rows = a.body["results"].as_array().expect("results");
    let ids: BTreeSet<i64> = rows.iter().filter_map(|r| r["typeId"].as_i64()).collect();
    assert!(
        ids.contains(&341) && ids.contains(&5),
        "deal->company types: {}",
        a.text
    );
    assert!(
        !ids.contains(&342),
        "reverse direction type listed: {}",
        a.text
    );
    for r in rows {
        assert_eq!(r["category"], "HUBSPOT_DEFINED", "{}", a.text);
    }
    let primary = rows
        .iter()
        .find(|r| r["typeId"] == 5)
        .expect("primary type");
    assert_eq!(primary["label"], "Primary", "{}", a.text);

    let back = p.get("/crm/associations/v4/companies/deals/labels").await;
    assert_eq!(back.status, 200, "{}", back.text);
    let ids: BTreeSet<i64> = back.body["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|r| r["typeId"].as_i64())
        .collect();
    assert!(
        ids.contains(&342) && ids.contains(&6),
        "company->deal types: {}",
        back.text
    );

    for (from, to, id) in [
        ("deals", "contacts", 3),
        ("contacts", "deals", 4),
        ("deals", "notes", 213),
        ("notes", "deals", 214),
    ] {
        let a = p
            .get(&format!("/crm/associations/v4/{from}/{to}/labels"))
            .await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert!(
            a.body["results"]
                .as_array()
                .expect("results")
                .iter()
                .any(|r| r["typeId"] == id),
            "{from}->{to} lacks {id}: {}",
            a.text
        );
    }
}

/// Companies associate with companies through HubSpot's parent (14) and child (13) types, each
/// seen from the other side as its inverse; there is no unlabeled default, and a company
/// cannot be its own parent.
#[tokio::test]
async fn companies_link_as_parent_and_child() {
    let (_sb, p) = unlimited("partner-a").await;
    let labels = p
        .get("/crm/associations/v4/companies/companies/labels")
        .await;
    assert_eq!(labels.status, 200, "{}", labels.text);
    let rows: BTreeSet<(i64, String)> = labels.body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            (
                r["typeId"].as_i64().expect("typeId"),
                r["label"].to_string(),
            )
        })
        .collect();
    let want: BTreeSet<(i64, String)> = [(13, "\"Child Company\""), (14, "\"Parent Company\"")]
        .into_iter()
        .map(|(id, l)| (id, l.to_owned()))
        .collect();
    assert_eq!(rows, want, "{}", labels.text);

    let parent = company(&p, "Holding Inc").await;
    let child = company(&p, "Subsidiary Ltd").await;
    let a = p
        .put(
            &format!("/crm/v4/objects/companies/{parent}/associations/companies/{child}"),
            json!([{ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 13 }]),
        )
        .await;
    assert_eq!(a.status, 201, "parent -> child: {}", a.text);
    assert_eq!(a.body["labels"], json!(["Child Company"]), "{}", a.text);
    assert_eq!(
        links(&assoc_list(&p, "companies", &parent, "companies").await["results"]),
        [(child.clone(), types(&[13]))]
    );
    assert_eq!(
        links(&assoc_list(&p, "companies", &child, "companies").await["results"]),
        [(parent.clone(), types(&[14]))]
    );

    let default = p
        .put(
            &format!("/crm/v4/objects/companies/{parent}/associations/default/companies/{child}"),
            Value::Null,
        )
        .await;
    assert_error(&default, 400, "VALIDATION_ERROR");
    assert!(
        default.text.contains("13"),
        "names the types: {}",
        default.text
    );
    let own = p
        .put(
            &format!("/crm/v4/objects/companies/{parent}/associations/companies/{parent}"),
            json!([{ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 14 }]),
        )
        .await;
    assert_error(&own, 400, "VALIDATION_ERROR");
    assert_eq!(
        links(&assoc_list(&p, "companies", &parent, "companies").await["results"]),
        [(child, types(&[13]))],
        "refusals changed nothing"
    );
}

#[tokio::test]
async fn v3_create_with_associations_links_the_new_record() {
    let (_sb, p) = unlimited("partner-a").await;
    let con = contact(&p, "v3@example.com").await;
    let com = company(&p, "V3 Inc").await;
    let a = p
        .post(
            DEALS,
            json!({
                "properties": { "dealname": "Created linked" },
                "associations": [
                    { "to": { "id": con }, "types": [{ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 3 }] },
                    { "to": { "id": com }, "types": [{ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 5 }] }
                ]
            }),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    let deal = id_text(&a.body["id"]);
    assert_eq!(
        links(&assoc_list(&p, "deals", &deal, "contacts").await["results"]),
        [(con.clone(), types(&[3]))]
    );
    assert_eq!(
        links(&assoc_list(&p, "contacts", &con, "deals").await["results"]),
        [(deal.clone(), types(&[4]))]
    );
    assert_eq!(
        links(&assoc_list(&p, "companies", &com, "deals").await["results"]),
        [(deal.clone(), types(&[6]))]
    );
    let read = p
        .get(&format!("{DEALS}/{deal}?associations=contacts"))
        .await;
    assert_eq!(read.status, 200, "{}", read.text);
    let listed: Vec<String> = read.body["associations"]["contacts"]["results"]
        .as_array()
        .unwrap_or_else(|| panic!("associations.contacts missing: {}", read.text))
        .iter()
        .map(|r| id_text(&r["id"]))
        .collect();
    assert_eq!(listed, [con.as_str()]);

    // A note created with a link to the deal (note -> deal is 214) shows as 213 from the deal.
    let a = p
        .post(
            "/crm/v3/objects/notes",
            json!({
                "properties": { "hs_timestamp": "1714557600000", "hs_note_body": "<p>hi</p>" },
                "associations": [{ "to": { "id": deal }, "types": [{ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 214 }] }]
            }),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    let nt = id_text(&a.body["id"]);
    assert_eq!(
        links(&assoc_list(&p, "deals", &deal, "notes").await["results"]),
        [(nt, types(&[213]))]
    );

    // A link to a record that does not exist fails the create, and nothing is created.
    let before = p.get(DEALS).await.body["results"].as_array().map(Vec::len);
    let bad = p
        .post(
            DEALS,
            json!({
                "properties": { "dealname": "Dangling" },
                "associations": [{ "to": { "id": "987654321" }, "types": [{ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 3 }] }]
            }),
        )
        .await;
    assert!(
        bad.status == 400 || bad.status == 404,
        "link to a missing contact: {}",
        bad.text
    );
    let after = p.get(DEALS).await.body["results"].as_array().map(Vec::len);
    assert_eq!(before, after, "the failed create left a deal behind");
}

// ---------------------------------------------------------------------------------------------
// Properties and groups
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn property_create_read_update_archive() {
    let (_sb, p) = unlimited("partner-a").await;
    let list = p.get("/crm/v3/properties/deals").await;
    assert_eq!(list.status, 200, "{}", list.text);
    let dealname = list.body["results"]
        .as_array()
        .expect("results")
        .iter()
        .find(|r| r["name"] == "dealname")
        .unwrap_or_else(|| panic!("dealname not listed: {}", list.text));
    assert_eq!(dealname["type"], "string");
    assert_eq!(dealname["fieldType"], "text");

    let a = create_enum_property(&p, "partner_tier", "select", &["gold", "silver"]).await;
    assert_eq!(a.status, 201, "create: {}", a.text);
    assert_eq!(a.body["name"], "partner_tier");
    assert_eq!(a.body["type"], "enumeration");
    assert_eq!(a.body["fieldType"], "select");
    assert_eq!(a.body["groupName"], "dealinformation");
    let values: Vec<&str> = a.body["options"]
        .as_array()
        .expect("options")
        .iter()
        .filter_map(|o| o["value"].as_str())
        .collect();
    assert_eq!(values, ["gold", "silver"]);

    let read = p.get("/crm/v3/properties/deals/partner_tier").await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(read.body["name"], "partner_tier");
    assert_eq!(read.body["options"], a.body["options"]);
    let list = p.get("/crm/v3/properties/deals").await;
    assert!(
        list.body["results"]
            .as_array()
            .expect("results")
            .iter()
            .any(|r| r["name"] == "partner_tier"),
        "new property not listed"
    );

    // A taken name is a 409.
    let dup = create_enum_property(&p, "partner_tier", "select", &["x"]).await;
    assert_error(&dup, 409, "CONFLICT");
    let dup_builtin = p
        .post(
            "/crm/v3/properties/deals",
            json!({ "name": "dealname", "label": "Again", "type": "string", "fieldType": "text", "groupName": "dealinformation" }),
        )
        .await;
    assert_error(&dup_builtin, 409, "CONFLICT");

    // The value is checked against the options; PATCH replaces the options.
    let bronze = p
        .post(
            DEALS,
            json!({ "properties": { "dealname": "Tiered", "partner_tier": "bronze" } }),
        )
        .await;
    assert_error(&bronze, 400, "VALIDATION_ERROR");
    assert!(
        error_codes(&bronze).contains(&"INVALID_OPTION".to_owned()),
        "{}",
        bronze.text
    );

    let patched = p
        .patch(
            "/crm/v3/properties/deals/partner_tier",
            json!({
                "label": "Partner tier (new)",
                "options": [
                    { "label": "Gold", "value": "gold", "hidden": false, "displayOrder": 0 },
                    { "label": "Bronze", "value": "bronze", "hidden": false, "displayOrder": 1 }
                ]
            }),
        )
        .await;
    assert_eq!(patched.status, 200, "patch: {}", patched.text);
    assert_eq!(patched.body["label"], "Partner tier (new)");
    let values: Vec<&str> = patched.body["options"]
        .as_array()
        .expect("options")
        .iter()
        .filter_map(|o| o["value"].as_str())
        .collect();
    assert_eq!(values, ["gold", "bronze"]);
    let read = p.get("/crm/v3/properties/deals/partner_tier").await;
    assert_eq!(read.body["options"], patched.body["options"]);
    let deal = p
        .create_deal(json!({ "dealname": "Tiered", "partner_tier": "bronze" }))
        .await;
    let silver = p
        .patch(
            &format!("{DEALS}/{deal}"),
            json!({ "properties": { "partner_tier": "silver" } }),
        )
        .await;
    assert_error(&silver, 400, "VALIDATION_ERROR");
    assert!(
        error_codes(&silver).contains(&"INVALID_OPTION".to_owned()),
        "{}",
        silver.text
    );

    // Archive: gone from reads and the default list, listed with archived=true, and no longer
    // writable on records.
    let del = p.delete("/crm/v3/properties/deals/partner_tier").await;
    assert_eq!(del.status, 204, "archive: {}", del.text);
    let gone = p.get("/crm/v3/properties/deals/partner_tier").await;
    assert_error(&gone, 404, "OBJECT_NOT_FOUND");
    let live = p.get("/crm/v3/properties/deals").await;
    assert!(
        !live.body["results"]
            .as_array()
            .expect("results")
            .iter()
            .any(|r| r["name"] == "partner_tier"),
        "archived property still listed"
    );
    let archived = p.get("/crm/v3/properties/deals?archived=true").await;
    assert_eq!(archived.status, 200, "{}", archived.text);
    assert!(
        archived.body["results"]
            .as_array()
            .expect("results")
            .iter()
            .any(|r| r["name"] == "partner_tier" && r["archived"] == true),
        "archived property not listed with archived=true: {}",
        archived.text
    );
    let write = p
        .patch(
            &format!("{DEALS}/{deal}"),
            json!({ "properties": { "partner_tier": "gold" } }),
        )
        .await;
    assert_error(&write, 400, "VALIDATION_ERROR");
    assert!(
        error_codes(&write).contains(&"PROPERTY_DOESNT_EXIST".to_owned()),
        "{}",
        write.text
    );
}

#[tokio::test]
async fn property_definitions_are_validated() {
    let (_sb, p) = unlimited("partner-a").await;
    let base = |name: &str, ptype: &str, field_type: &str| json!({ "name": name, "label": "L", "type": ptype, "fieldType": field_type, "groupName": "dealinformation" });
    for (why, body) in [
        ("string with select", base("bad_pair_1", "string", "select")),
        ("number with text", base("bad_pair_2", "number", "text")),
        ("bool with checkbox", base("bad_pair_3", "bool", "checkbox")),
        (
            "datetime with number",
            base("bad_pair_4", "datetime", "number"),
        ),
        ("unknown type", base("bad_pair_5", "money", "number")),
        (
            "enumeration select without options",
            base("no_options_1", "enumeration", "select"),
        ),
        (
            "enumeration checkbox without options",
            base("no_options_2", "enumeration", "checkbox"),
        ),
        ("enumeration radio with empty options", {
            let mut b = base("no_options_3", "enumeration", "radio");
            b["options"] = json!([]);
            b
        }),
        ("unknown group", {
            let mut b = base("no_group", "string", "text");
            b["groupName"] = json!("no_such_group");
            b
        }),
        ("invalid name", base("Bad Name", "string", "text")),
    ] {
        let a = p.post("/crm/v3/properties/deals", body).await;
        assert_eq!(a.status, 400, "{why}: {}", a.text);
        assert_error(&a, 400, "VALIDATION_ERROR");
    }
    // None of them was created.
    let list = p.get("/crm/v3/properties/deals").await;
    for r in list.body["results"].as_array().expect("results") {
        let n = r["name"].as_str().unwrap_or_default();
        assert!(
            !(n.starts_with("bad_pair") || n.starts_with("no_options") || n == "no_group"),
            "refused property {n} exists"
        );
    }
    // Every documented pair is accepted.
    for (i, (t, ft)) in [
        ("string", "text"),
        ("string", "textarea"),
        ("string", "html"),
        ("string", "phonenumber"),
        ("string", "file"),
        ("number", "number"),
        ("date", "date"),
        ("datetime", "date"),
        ("bool", "booleancheckbox"),
    ]
    .into_iter()
    .enumerate()
    {
        let a = p
            .post(
                "/crm/v3/properties/deals",
                base(&format!("good_pair_{i}"), t, ft),
            )
            .await;
        assert_eq!(a.status, 201, "{t}/{ft}: {}", a.text);
    }
    for (i, ft) in ["select", "radio", "checkbox"].into_iter().enumerate() {
        let a = create_enum_property(&p, &format!("good_enum_{i}"), ft, &["a", "b"]).await;
        assert_eq!(a.status, 201, "enumeration/{ft}: {}", a.text);
    }
}

#[tokio::test]
async fn multi_select_values_are_joined_by_semicolons() {
    let (_sb, p) = unlimited("partner-a").await;
    let a =
        create_enum_property(&p, "partner_regions", "checkbox", &["emea", "apac", "amer"]).await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.body["fieldType"], "checkbox");

    let created = p
        .post(
            DEALS,
            json!({ "properties": { "dealname": "Global", "partner_regions": "emea;apac" } }),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let deal = id_text(&created.body["id"]);
    let read = p
        .get(&format!("{DEALS}/{deal}?properties=partner_regions"))
        .await;
    assert_eq!(
        read.body["properties"]["partner_regions"], "emea;apac",
        "{}",
        read.text
    );

    let all = p
        .patch(
            &format!("{DEALS}/{deal}"),
            json!({ "properties": { "partner_regions": "emea;apac;amer" } }),
        )
        .await;
    assert_eq!(all.status, 200, "{}", all.text);
    assert_eq!(all.body["properties"]["partner_regions"], "emea;apac;amer");

    for bad in ["emea;mars", "mars", "EMEA"] {
        let a = p
            .patch(
                &format!("{DEALS}/{deal}"),
                json!({ "properties": { "partner_regions": bad } }),
            )
            .await;
        assert_error(&a, 400, "VALIDATION_ERROR");
        assert!(
            error_codes(&a).contains(&"INVALID_OPTION".to_owned()),
            "{bad}: {}",
            a.text
        );
        let msg = a.body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains("was not one of the allowed options"),
            "{bad}: {}",
            a.text
        );
    }
    let read = p
        .get(&format!("{DEALS}/{deal}?properties=partner_regions"))
        .await;
    assert_eq!(
        read.body["properties"]["partner_regions"], "emea;apac;amer",
        "refused writes changed the value"
    );

    // A single-select property takes one value: "a;b" is not an option there.
    let a = create_enum_property(&p, "partner_single", "select", &["emea", "apac"]).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let joined = p
        .patch(
            &format!("{DEALS}/{deal}"),
            json!({ "properties": { "partner_single": "emea;apac" } }),
        )
        .await;
    assert_error(&joined, 400, "VALIDATION_ERROR");
    assert!(
        error_codes(&joined).contains(&"INVALID_OPTION".to_owned()),
        "{}",
        joined.text
    );
}

#[tokio::test]
async fn property_groups_create_read_patch_and_conflict() {
    let (_sb, p) = unlimited("partner-a").await;
    let a = p
        .post(
            "/crm/v3/properties/deals/groups",
            json!({ "name": "partner_sync", "label": "Partner sync", "displayOrder": 3 }),
        )
        .await;
    assert_eq!(a.status, 201, "create group: {}", a.text);
    assert_eq!(a.body["name"], "partner_sync");
    assert_eq!(a.body["label"], "Partner sync");
    assert_eq!(a.body["displayOrder"], 3);

    let read = p.get("/crm/v3/properties/deals/groups/partner_sync").await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(read.body["label"], "Partner sync");
    let list = p.get("/crm/v3/properties/deals/groups").await;
    assert_eq!(list.status, 200, "{}", list.text);
    assert!(
        list.body["results"]
            .as_array()
            .expect("results")
            .iter()
            .any(|g| g["name"] == "partner_sync"),
        "{}",
        list.text
    );

    let dup = p
        .post(
            "/crm/v3/properties/deals/groups",
            json!({ "name": "partner_sync", "label": "Again" }),
        )
        .await;
    assert_error(&dup, 409, "CONFLICT");

    let patched = p
        .patch(
            "/crm/v3/properties/deals/groups/partner_sync",
            json!({ "label": "Partner sync (renamed)", "displayOrder": 7 }),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    assert_eq!(patched.body["label"], "Partner sync (renamed)");
    assert_eq!(patched.body["displayOrder"], 7);
    let read = p.get("/crm/v3/properties/deals/groups/partner_sync").await;
    assert_eq!(read.body["label"], "Partner sync (renamed)");

    // Properties can live in the new group.
    let prop = p
        .post(
            "/crm/v3/properties/deals",
            json!({ "name": "partner_ref", "label": "Ref", "type": "string", "fieldType": "text", "groupName": "partner_sync" }),
        )
        .await;
    assert_eq!(prop.status, 201, "{}", prop.text);
    assert_eq!(prop.body["groupName"], "partner_sync");

    let missing = p.get("/crm/v3/properties/deals/groups/no_such_group").await;
    assert_error(&missing, 404, "OBJECT_NOT_FOUND");
    let no_label = p
        .post(
            "/crm/v3/properties/deals/groups",
            json!({ "name": "nolabel" }),
        )
        .await;
    assert_error(&no_label, 400, "VALIDATION_ERROR");
}

/// An archived group is gone (its GET is a 404 and it is not listed), so a property can
/// neither be created in it nor moved into it.
#[tokio::test]
async fn properties_cannot_use_an_archived_group() {
    let (_sb, p) = unlimited("partner-a").await;
    let a = p
        .post(
            "/crm/v3/properties/deals/groups",
            json!({ "name": "short_lived", "label": "Short lived" }),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    let del = p
        .delete("/crm/v3/properties/deals/groups/short_lived")
        .await;
    assert_eq!(del.status, 204, "{}", del.text);
    let gone = p.get("/crm/v3/properties/deals/groups/short_lived").await;
    assert_error(&gone, 404, "OBJECT_NOT_FOUND");
    let listed = p.get("/crm/v3/properties/deals/groups").await;
    assert!(
        !listed.body["results"]
            .as_array()
            .expect("results")
            .iter()
            .any(|g| g["name"] == "short_lived"),
        "{}",
        listed.text
    );
    let kept = p
        .post(
            "/crm/v3/properties/deals",
            json!({ "name": "kept_prop", "label": "Kept", "type": "string", "fieldType": "text", "groupName": "dealinformation" }),
        )
        .await;
    assert_eq!(kept.status, 201, "{}", kept.text);

    let mut problems = Vec::new();
    let created = p
        .post(
            "/crm/v3/properties/deals",
            json!({ "name": "orphan_prop", "label": "Orphan", "type": "string", "fieldType": "text", "groupName": "short_lived" }),
        )
        .await;
    if created.status != 400 {
        problems.push(format!(
            "create in the archived group answered {}: {}",
            created.status, created.text
        ));
    }
    let read = p.get("/crm/v3/properties/deals/orphan_prop").await;
    if read.status != 404 {
        problems.push(format!(
            "a property exists in the archived group: {}",
            read.text
        ));
    }
    let moved = p
        .patch(
            "/crm/v3/properties/deals/kept_prop",
            json!({ "groupName": "short_lived" }),
        )
        .await;
    if moved.status != 400 {
        problems.push(format!(
            "moving into the archived group answered {}: {}",
            moved.status, moved.text
        ));
    }
    let read = p.get("/crm/v3/properties/deals/kept_prop").await;
    if read.body["groupName"] != "dealinformation" {
        problems.push(format!(
            "kept_prop moved into the archived group: {}",
            read.text
        ));
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// A create whose `associations` cannot be applied fails as a whole: no record is left behind
/// (single create, and a batch create without trace ids, which is all or nothing).
#[tokio::test]
async fn create_with_an_association_that_cannot_be_applied_leaves_no_record() {
    let (_sb, p) = unlimited("partner-a").await;
    let con = contact(&p, "atomic@example.com").await;
    let com = company(&p, "Atomic Inc").await;
    let mut problems = Vec::new();
    for (why, to, types) in [
        (
            "USER_DEFINED category with a HubSpot-defined id",
            &con,
            json!([{ "associationCategory": "USER_DEFINED", "associationTypeId": 3 }]),
        ),
        (
            "deal->contact type on a company",
            &com,
            json!([
                { "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 3 },
                { "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 341 }
            ]),
        ),
    ] {
        let a = p
            .post(
                DEALS,
                json!({
                    "properties": { "dealname": format!("Phantom: {why}") },
                    "associations": [{ "to": { "id": to }, "types": types }]
                }),
            )
            .await;
        if !(400..500).contains(&a.status) {
            problems.push(format!(
                "{why}: expected a 4xx, got {}: {}",
                a.status, a.text
            ));
        }
    }
    let batch = p
        .post(
            &format!("{DEALS}/batch/create"),
            json!({ "inputs": [
                { "properties": { "dealname": "Batch good" } },
                { "properties": { "dealname": "Batch bad" },
                  "associations": [{ "to": { "id": con }, "types": [{ "associationCategory": "USER_DEFINED", "associationTypeId": 3 }] }] }
            ] }),
        )
        .await;
    if !(400..500).contains(&batch.status) {
        problems.push(format!(
            "batch create without trace ids is all or nothing: expected a 4xx, got {}: {}",
            batch.status, batch.text
        ));
    }
    let list = p.get(DEALS).await;
    let names: Vec<String> = list.body["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|r| r["properties"]["dealname"].as_str().map(str::to_owned))
        .collect();
    if !names.is_empty() {
        problems.push(format!("refused creates left deals behind: {names:?}"));
    }
    assert_eq!(
        assoc_list(&p, "contacts", &con, "deals").await["results"],
        json!([])
    );
    assert!(problems.is_empty(), "{problems:#?}");
}

// ---------------------------------------------------------------------------------------------
// Pipelines
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn default_deal_pipeline_has_stages_with_probabilities() {
    let (_sb, p) = unlimited("partner-a").await;
    let a = p.get("/crm/v3/pipelines/deals").await;
    assert_eq!(a.status, 200, "{}", a.text);
    let pipe = a.body["results"]
        .as_array()
        .expect("results")
        .iter()
        .find(|r| r["id"] == "default")
        .unwrap_or_else(|| panic!("no default pipeline: {}", a.text))
        .clone();
    assert_eq!(pipe["archived"], false);
    assert!(
        pipe["label"].is_string() && pipe["displayOrder"].is_number(),
        "{pipe}"
    );
    let stages = pipe["stages"].as_array().expect("stages");
    assert!(stages.len() >= 2, "{pipe}");
    for s in stages {
        let prob = s["metadata"]["probability"]
            .as_str()
            .unwrap_or_else(|| panic!("stage without a probability string: {s}"));
        let prob: f64 = prob
            .parse()
            .unwrap_or_else(|_| panic!("probability {prob} is not a number"));
        assert!((0.0..=1.0).contains(&prob), "probability out of range: {s}");
        assert!(s["id"].is_string() && s["label"].is_string() && s["displayOrder"].is_number());
    }
    let stage = |id: &str| {
        stages
            .iter()
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("no stage {id}: {pipe}"))
            .clone()
    };
    let won = stage("closedwon");
    let lost = stage("closedlost");
    assert_eq!(
        won["metadata"]["probability"]
            .as_str()
            .map(|s| s.parse::<f64>().ok()),
        Some(Some(1.0))
    );
    assert_eq!(
        lost["metadata"]["probability"]
            .as_str()
            .map(|s| s.parse::<f64>().ok()),
        Some(Some(0.0))
    );
    assert_eq!(won["metadata"]["isClosed"], "true");
    assert_eq!(lost["metadata"]["isClosed"], "true");
    assert_eq!(
        stage("appointmentscheduled")["metadata"]["isClosed"],
        "false"
    );

    let one = p.get("/crm/v3/pipelines/deals/default").await;
    assert_eq!(one.status, 200, "{}", one.text);
    assert_eq!(one.body["stages"], pipe["stages"]);
    let missing = p.get("/crm/v3/pipelines/deals/nope").await;
    assert_error(&missing, 404, "OBJECT_NOT_FOUND");

    // A deal without a pipeline lands in the default one.
    let deal = p
        .create_deal(json!({ "dealname": "Default", "dealstage": "qualifiedtobuy" }))
        .await;
    let read = p
        .get(&format!("{DEALS}/{deal}?properties=pipeline,dealstage"))
        .await;
    assert_eq!(read.body["properties"]["pipeline"], "default");
    assert_eq!(read.body["properties"]["dealstage"], "qualifiedtobuy");
}

#[tokio::test]
async fn new_pipeline_stages_need_probability_and_bind_deal_stages() {
    let (_sb, p) = unlimited("partner-a").await;
    let missing = p
        .post(
            "/crm/v3/pipelines/deals",
            json!({ "label": "No probability", "displayOrder": 1, "stages": [
                { "label": "Start", "displayOrder": 0, "metadata": {} }
            ] }),
        )
        .await;
    assert_error(&missing, 400, "VALIDATION_ERROR");
    let no_meta = p
        .post(
            "/crm/v3/pipelines/deals",
            json!({ "label": "No metadata", "displayOrder": 1, "stages": [{ "label": "Start", "displayOrder": 0 }] }),
        )
        .await;
    assert_error(&no_meta, 400, "VALIDATION_ERROR");
    let out_of_range = p
        .post(
            "/crm/v3/pipelines/deals",
            json!({ "label": "Bad probability", "displayOrder": 1, "stages": [
                { "label": "Start", "displayOrder": 0, "metadata": { "probability": "1.5" } }
            ] }),
        )
        .await;
    assert_error(&out_of_range, 400, "VALIDATION_ERROR");
    let list = p.get("/crm/v3/pipelines/deals").await;
    assert_eq!(
        list.body["results"].as_array().map(Vec::len),
        Some(1),
        "refused pipelines were created: {}",
        list.text
    );

    let a = p
        .post(
            "/crm/v3/pipelines/deals",
            json!({ "label": "Partner pipeline", "displayOrder": 1, "stages": [
                { "label": "Registered", "displayOrder": 0, "metadata": { "probability": "0.1" } },
                { "label": "Accepted", "displayOrder": 1, "metadata": { "probability": "0.5" } },
                { "label": "Won", "displayOrder": 2, "metadata": { "probability": "1.0", "isClosed": "true" } }
            ] }),
        )
        .await;
    assert_eq!(a.status, 201, "create pipeline: {}", a.text);
    let pid = id_text(&a.body["id"]);
    assert_ne!(pid, "default");
    let stage_ids: Vec<String> = a.body["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| id_text(&s["id"]))
        .collect();
    assert_eq!(stage_ids.len(), 3, "{}", a.text);
    assert_eq!(a.body["stages"][0]["metadata"]["probability"], "0.1");
    let read = p.get(&format!("/crm/v3/pipelines/deals/{pid}")).await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(read.body["label"], "Partner pipeline");

    // A deal in the new pipeline takes its stages ...
    let deal = p
        .create_deal(json!({ "dealname": "In new", "pipeline": pid, "dealstage": stage_ids[0] }))
        .await;
    let moved = p
        .patch(
            &format!("{DEALS}/{deal}"),
            json!({ "properties": { "dealstage": stage_ids[2] } }),
        )
        .await;
    assert_eq!(moved.status, 200, "{}", moved.text);
    assert_eq!(moved.body["properties"]["dealstage"], json!(stage_ids[2]));

    // ... and refuses the default pipeline's.
    let wrong = p
        .post(
            DEALS,
            json!({ "properties": { "dealname": "Wrong", "pipeline": pid, "dealstage": "appointmentscheduled" } }),
        )
        .await;
    assert_error(&wrong, 400, "VALIDATION_ERROR");
    assert!(
        error_codes(&wrong).contains(&"INVALID_OPTION".to_owned()),
        "{}",
        wrong.text
    );
    let wrong = p
        .patch(
            &format!("{DEALS}/{deal}"),
            json!({ "properties": { "dealstage": "closedwon" } }),
        )
        .await;
    assert_error(&wrong, 400, "VALIDATION_ERROR");
    let read = p
        .get(&format!("{DEALS}/{deal}?properties=dealstage,pipeline"))
        .await;
    assert_eq!(read.body["properties"]["dealstage"], json!(stage_ids[2]));
    assert_eq!(read.body["properties"]["pipeline"], json!(pid));

    // A deal in the default pipeline refuses the new pipeline's stages.
    let other = p
        .post(
            DEALS,
            json!({ "properties": { "dealname": "Default", "pipeline": "default", "dealstage": stage_ids[0] } }),
        )
        .await;
    assert_error(&other, 400, "VALIDATION_ERROR");
    let implicit = p
        .post(
            DEALS,
            json!({ "properties": { "dealname": "Implicit", "dealstage": stage_ids[0] } }),
        )
        .await;
    assert_error(&implicit, 400, "VALIDATION_ERROR");

    // Adding a stage also needs a probability.
    let stage = p
        .post(
            &format!("/crm/v3/pipelines/deals/{pid}/stages"),
            json!({ "label": "Lost", "displayOrder": 3, "metadata": { "isClosed": "true" } }),
        )
        .await;
    assert_error(&stage, 400, "VALIDATION_ERROR");
    let stage = p
        .post(
            &format!("/crm/v3/pipelines/deals/{pid}/stages"),
            json!({ "label": "Lost", "displayOrder": 3, "metadata": { "isClosed": "true", "probability": "0.0" } }),
        )
        .await;
    assert_eq!(stage.status, 201, "{}", stage.text);
    let lost = id_text(&stage.body["id"]);
    let to_lost = p
        .patch(
            &format!("{DEALS}/{deal}"),
            json!({ "properties": { "dealstage": lost } }),
        )
        .await;
    assert_eq!(to_lost.status, 200, "{}", to_lost.text);
}

/// Two pipelines created back to back, with stage ids left to the server, both succeed and
/// get distinct stage ids.
#[tokio::test]
async fn pipelines_created_back_to_back_get_distinct_generated_stage_ids() {
    let (_sb, p) = unlimited("partner-a").await;
    let stages: Vec<Value> = (0..30)
        .map(|i| json!({ "label": format!("Stage {i}"), "displayOrder": i, "metadata": { "probability": "0.5" } }))
        .collect();
    let mut all = HashSet::new();
    for label in ["First", "Second"] {
        let a = p
            .post(
                "/crm/v3/pipelines/deals",
                json!({ "label": label, "displayOrder": 1, "stages": stages }),
            )
            .await;
        assert_eq!(a.status, 201, "pipeline {label}: {}", a.text);
        for s in a.body["stages"].as_array().expect("stages") {
            assert!(all.insert(id_text(&s["id"])), "stage id reused: {s}");
        }
    }
    assert_eq!(all.len(), 60);
}

// ---------------------------------------------------------------------------------------------
// Owners
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn owners_list_page_filter_and_read() {
    let (_sb, p) = unlimited("partner-a").await;
    let all = p.get("/crm/v3/owners").await;
    assert_eq!(all.status, 200, "{}", all.text);
    let owners = all.body["results"].as_array().expect("results").clone();
    assert!(owners.len() >= 2, "seeded owners: {}", all.text);
    for o in &owners {
        for k in ["id", "email", "firstName", "lastName"] {
            assert!(o[k].is_string(), "owner field {k}: {o}");
        }
        assert!(o["userId"].is_number(), "{o}");
        assert!(o["teams"].is_array(), "{o}");
        assert_eq!(o["archived"], false, "{o}");
    }
    assert!(all.body["paging"].is_null(), "one page only: {}", all.text);

    // Paging with limit=1 walks every owner once.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..owners.len() + 2 {
        let mut path = "/crm/v3/owners?limit=1".to_owned();
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let a = p.get(&path).await;
        assert_eq!(a.status, 200, "{}", a.text);
        let page = a.body["results"].as_array().expect("results");
        assert_eq!(page.len(), 1, "{}", a.text);
        seen.push(id_text(&page[0]["id"]));
        match a.body["paging"]["next"]["after"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    let ids: Vec<String> = owners.iter().map(|o| id_text(&o["id"])).collect();
    assert_eq!(seen, ids);

    // Email filter.
    let target = &owners[1];
    let email = target["email"].as_str().expect("email");
    let by_email = p
        .get(&format!(
            "/crm/v3/owners?email={}",
            email.replace('@', "%40")
        ))
        .await;
    assert_eq!(by_email.status, 200, "{}", by_email.text);
    assert_eq!(
        by_email.body["results"],
        json!([target]),
        "{}",
        by_email.text
    );
    let nobody = p.get("/crm/v3/owners?email=nobody%40example.com").await;
    assert_eq!(nobody.body["results"], json!([]), "{}", nobody.text);

    // Read by id and by userId.
    let id = id_text(&target["id"]);
    let one = p.get(&format!("/crm/v3/owners/{id}")).await;
    assert_eq!(one.status, 200, "{}", one.text);
    assert_eq!(one.body["email"], json!(email));
    let user_id = target["userId"].to_string();
    let by_user = p
        .get(&format!("/crm/v3/owners/{user_id}?idProperty=userId"))
        .await;
    assert_eq!(by_user.status, 200, "{}", by_user.text);
    assert_eq!(id_text(&by_user.body["id"]), id);
    let unknown = p.get("/crm/v3/owners/424242").await;
    assert_error(&unknown, 404, "OBJECT_NOT_FOUND");
}

#[tokio::test]
async fn hubspot_owner_id_must_name_an_owner_of_the_portal() {
    let sb = common::unlimited_sandbox().await;
    let p = common::portal(&sb, "partner-a");
    let hs = common::portal(&sb, "hubspot");
    let owners = p.get("/crm/v3/owners").await;
    let owner = id_text(&owners.body["results"][0]["id"]);
    let deal = p
        .create_deal(json!({ "dealname": "Owned", "hubspot_owner_id": owner }))
        .await;
    let read = p
        .get(&format!("{DEALS}/{deal}?properties=hubspot_owner_id"))
        .await;
    assert_eq!(read.body["properties"]["hubspot_owner_id"], json!(owner));

    let bad = p
        .post(
            DEALS,
            json!({ "properties": { "dealname": "Bad owner", "hubspot_owner_id": "999999" } }),
        )
        .await;
    assert_error(&bad, 400, "VALIDATION_ERROR");
    let named: Vec<String> = bad.body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .flat_map(|e| {
            e["context"]["propertyName"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    assert_eq!(named, ["hubspot_owner_id"], "{}", bad.text);

    // An owner of another portal is not an owner here.
    let foreign = id_text(&hs.get("/crm/v3/owners").await.body["results"][0]["id"]);
    assert_ne!(foreign, owner);
    let patch = p
        .patch(
            &format!("{DEALS}/{deal}"),
            json!({ "properties": { "hubspot_owner_id": foreign } }),
        )
        .await;
    assert_error(&patch, 400, "VALIDATION_ERROR");
    let read = p
        .get(&format!("{DEALS}/{deal}?properties=hubspot_owner_id"))
        .await;
    assert_eq!(read.body["properties"]["hubspot_owner_id"], json!(owner));
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn file_upload_metadata_signed_url_and_download() {
    let (sb, p) = unlimited("partner-a").await;
    let content = binary_content(5000);
    let up = upload(&p, "report.pdf", &content, Some(r#"{"access":"PRIVATE"}"#)).await;
    assert_eq!(up.status, 201, "upload: {}", up.text);
    let id = id_text(&up.body["id"]);
    assert_eq!(up.body["name"], "report", "{}", up.text);
    assert_eq!(up.body["extension"], "pdf", "{}", up.text);
    assert_eq!(up.body["size"], content.len(), "{}", up.text);
    assert_eq!(up.body["access"], "PRIVATE", "{}", up.text);
    assert_eq!(up.body["archived"], false, "{}", up.text);
    assert!(up.body["createdAt"].is_string(), "{}", up.text);
    assert!(
        up.body["path"]
            .as_str()
            .is_some_and(|s| s.starts_with("/dealsync/attachments")),
        "{}",
        up.text
    );

    let meta = p.get(&format!("/files/v3/files/{id}")).await;
    assert_eq!(meta.status, 200, "{}", meta.text);
    for k in ["id", "name", "extension", "size", "access", "path"] {
        assert_eq!(meta.body[k], up.body[k], "metadata field {k}");
    }

    // The signed URL needs no token and gives the exact bytes.
    let signed = p.get(&format!("/files/v3/files/{id}/signed-url")).await;
    assert_eq!(signed.status, 200, "{}", signed.text);
    let url = signed.body["url"].as_str().expect("url").to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(signed.body["expiresAt"].is_string(), "{}", signed.text);
    let (status, _, bytes) = get_without_token(&p, &url).await;
    assert_eq!(status, 200, "signed download");
    assert_eq!(bytes, content, "signed download bytes differ");

    // Tampering with the signature, the expiry or the file id is refused.
    let parsed = reqwest::Url::parse(&url).expect("url parses");
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let sig = pairs
        .iter()
        .find(|(k, _)| k == "sig")
        .map(|(_, v)| v.clone())
        .expect("sig");
    let expires = pairs
        .iter()
        .find(|(k, _)| k == "expires")
        .map(|(_, v)| v.clone())
        .expect("expires");
    let flipped = {
        let mut s: Vec<char> = sig.chars().collect();
        let last = s.len() - 1;
        s[last] = if s[last] == 'A' { 'B' } else { 'A' };
        s.into_iter().collect::<String>()
    };
    let base = url.split('?').next().expect("path").to_owned();
    let later: i64 = expires.parse::<i64>().expect("expires is ms") + 60_000;
    for (why, bad) in [
        (
            "flipped signature",
            format!("{base}?expires={expires}&sig={flipped}"),
        ),
        ("no signature", format!("{base}?expires={expires}")),
        (
            "extended expiry",
            format!("{base}?expires={later}&sig={sig}"),
        ),
    ] {
        let (status, _, bytes) = get_without_token(&p, &bad).await;
        assert_eq!(status, 403, "{why}");
        assert_ne!(bytes, content, "{why} leaked the file");
    }

    // Download through the API needs the token.
    let (status, _, bytes) =
        get_without_token(&p, &p.url(&format!("/files/v3/files/{id}/download"))).await;
    assert_eq!(status, 401, "download without a token");
    assert_ne!(bytes, content);
    let resp = p
        .req(Method::GET, &format!("/files/v3/files/{id}/download"))
        .send()
        .await
        .expect("download");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.bytes().await.expect("bytes").to_vec(), content);

    // Another portal cannot see the file.
    let other = common::portal(&sb, "partner-b");
    let foreign = other.get(&format!("/files/v3/files/{id}")).await;
    assert_error(&foreign, 404, "OBJECT_NOT_FOUND");

    // Delete: 204, then the metadata, the download and the old signed URL are gone.
    let del = p.delete(&format!("/files/v3/files/{id}")).await;
    assert_eq!(del.status, 204, "{}", del.text);
    let meta = p.get(&format!("/files/v3/files/{id}")).await;
    assert_error(&meta, 404, "OBJECT_NOT_FOUND");
    let dl = p.get(&format!("/files/v3/files/{id}/download")).await;
    assert_eq!(dl.status, 404, "{}", dl.text);
    let fresh = p.get(&format!("/files/v3/files/{id}/signed-url")).await;
    assert_eq!(fresh.status, 404, "{}", fresh.text);
    let (status, _, bytes) = get_without_token(&p, &url).await;
    assert!(
        status == 403 || status == 404,
        "old signed URL after delete: {status}"
    );
    assert_ne!(bytes, content, "deleted file still downloadable");
}

#[tokio::test]
async fn file_upload_requires_options_access_and_a_folder() {
    let (_sb, p) = unlimited("partner-a").await;
    for (why, options) in [
        ("options without access", Some("{}")),
        ("options missing", None),
        ("options not JSON", Some("access=PRIVATE")),
        ("unknown access", Some(r#"{"access":"SECRET"}"#)),
    ] {
        let a = upload(&p, "x.txt", b"hello", options).await;
        assert_eq!(a.status, 400, "{why}: {}", a.text);
        assert_error(&a, 400, "VALIDATION_ERROR");
    }
    // Neither folderPath nor folderId.
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"hello".to_vec()).file_name("x.txt"),
        )
        .text("options", r#"{"access":"PRIVATE"}"#);
    let a = p
        .send(p.req(Method::POST, "/files/v3/files").multipart(form))
        .await;
    assert_error(&a, 400, "VALIDATION_ERROR");
    // No file part.
    let form = reqwest::multipart::Form::new()
        .text("folderPath", "/x")
        .text("options", r#"{"access":"PRIVATE"}"#);
    let a = p
        .send(p.req(Method::POST, "/files/v3/files").multipart(form))
        .await;
    assert_error(&a, 400, "VALIDATION_ERROR");
    // Nothing was stored by the refused uploads.
    let state = p.control(Method::GET, "/state", None).await;
    assert_eq!(state.status, 200, "{}", state.text);
    assert_eq!(state.body["data"]["files"], json!({}), "{}", state.text);
}

#[tokio::test]
async fn signed_urls_expire() {
    let (_sb, p) = unlimited("partner-a").await;
    let content = binary_content(64);
    let up = upload(&p, "short.bin", &content, Some(r#"{"access":"PRIVATE"}"#)).await;
    assert_eq!(up.status, 201, "{}", up.text);
    let id = id_text(&up.body["id"]);
    let bad = p
        .get(&format!(
            "/files/v3/files/{id}/signed-url?expirationSeconds=0"
        ))
        .await;
    assert_error(&bad, 400, "VALIDATION_ERROR");
    let signed = p
        .get(&format!(
            "/files/v3/files/{id}/signed-url?expirationSeconds=1"
        ))
        .await;
    assert_eq!(signed.status, 200, "{}", signed.text);
    let url = signed.body["url"].as_str().expect("url").to_owned();
    let (status, _, bytes) = get_without_token(&p, &url).await;
    assert_eq!((status, bytes), (200, content.clone()), "fresh signed URL");
    let p2 = p.clone();
    eventually("the signed URL expires", Duration::from_secs(5), || {
        let (p, url) = (p2.clone(), url.clone());
        async move {
            let (status, _, _) = get_without_token(&p, &url).await;
            (status == 403).then_some(())
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Rate limits
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn ten_second_window_headers_and_the_101st_call() {
    let sb = common::sandbox().await;
    let p = common::portal(&sb, "partner-a");
    let other = common::portal(&sb, "partner-b");

    let first = p.get("/crm/v3/objects/deals?limit=1").await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.header("X-HubSpot-RateLimit-Max"), Some("100"));
    assert_eq!(first.header("X-HubSpot-RateLimit-Remaining"), Some("99"));
    assert_eq!(
        first.header("X-HubSpot-RateLimit-Interval-Milliseconds"),
        Some("10000")
    );
    assert_eq!(first.header("X-HubSpot-RateLimit-Daily"), Some("250000"));
    assert_eq!(
        first.header("X-HubSpot-RateLimit-Daily-Remaining"),
        Some("249999")
    );

    let started = Instant::now();
    // Writes and errors count too, and carry the headers.
    let created = p
        .post(DEALS, json!({ "properties": { "dealname": "Counted" } }))
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.header("X-HubSpot-RateLimit-Remaining"), Some("98"));
    let missing = p.get(&format!("{DEALS}/1")).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("X-HubSpot-RateLimit-Remaining"), Some("97"));
    assert_eq!(
        missing.header("X-HubSpot-RateLimit-Daily-Remaining"),
        Some("249997")
    );
    for i in 4..=100u32 {
        let a = p.get("/crm/v3/owners").await;
        assert_eq!(a.status, 200, "call {i}: {}", a.text);
        let expected = (100 - i).to_string();
        assert_eq!(
            a.header("X-HubSpot-RateLimit-Remaining"),
            Some(expected.as_str()),
            "call {i}"
        );
    }
    let refused = p.get("/crm/v3/owners").await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(9),
        "precondition: 101 calls within the 10 s window took {elapsed:?}"
    );
    assert_rate_limited(&refused, "TEN_SECONDLY_ROLLING");
    assert_eq!(
        refused.body["message"],
        "You have reached your ten_secondly_rolling limit."
    );
    // A refused call is not counted: the next one is refused as well, not a 200.
    let again = p.get("/crm/v3/owners").await;
    assert_rate_limited(&again, "TEN_SECONDLY_ROLLING");

    // Another portal has its own window.
    let elsewhere = other.get("/crm/v3/owners").await;
    assert_eq!(elsewhere.status, 200, "{}", elsewhere.text);
    assert_eq!(
        elsewhere.header("X-HubSpot-RateLimit-Remaining"),
        Some("99")
    );

    let c = p.counters().await;
    assert_eq!(c["http_429"], 2, "{c}");
    assert_eq!(c["total"], 102, "{c}");
}

#[tokio::test]
async fn search_has_its_own_secondly_limit_and_no_rate_limit_headers() {
    let sb = common::sandbox().await;
    let p = common::portal(&sb, "partner-a");
    let started = Instant::now();
    // HubSpot: 5 searches per second per account.
    for i in 1..=5 {
        let a = p.post(&format!("{DEALS}/search"), search_body()).await;
        assert_eq!(a.status, 200, "search {i}: {}", a.text);
        assert!(
            rate_limit_headers(&a).is_empty(),
            "search answer carries {:?}",
            rate_limit_headers(&a)
        );
        assert!(a.header("Retry-After").is_none());
    }
    let sixth = p.post(&format!("{DEALS}/search"), search_body()).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(900),
        "precondition: six searches within one second took {elapsed:?}"
    );
    assert_rate_limited(&sixth, "SECONDLY");
    assert!(
        rate_limit_headers(&sixth).is_empty(),
        "{:?}",
        rate_limit_headers(&sixth)
    );
    assert!(sixth.header("Retry-After").is_none());

    // Ordinary calls are not held back by the search limit.
    let ordinary = p.get("/crm/v3/owners").await;
    assert_eq!(ordinary.status, 200, "{}", ordinary.text);
    assert!(ordinary.header("X-HubSpot-RateLimit-Remaining").is_some());

    let c = p.counters().await;
    assert_eq!(c["http_429"], 1, "{c}");

    // Once the second has passed, search answers again.
    let p2 = p.clone();
    eventually("search is admitted again", Duration::from_secs(5), || {
        let p = p2.clone();
        async move {
            let a = p.post(&format!("{DEALS}/search"), search_body()).await;
            (a.status == 200).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn daily_limit_refuses_with_policy_daily() {
    let sb = common::sandbox_with(SandboxConfig {
        daily_limit: Some(3),
        ..SandboxConfig::default()
    })
    .await;
    let p = common::portal(&sb, "partner-a");
    for (i, left) in ["2", "1", "0"].into_iter().enumerate() {
        let a = p.get("/crm/v3/owners").await;
        assert_eq!(a.status, 200, "call {}: {}", i + 1, a.text);
        assert_eq!(a.header("X-HubSpot-RateLimit-Daily"), Some("3"));
        assert_eq!(a.header("X-HubSpot-RateLimit-Daily-Remaining"), Some(left));
    }
    let refused = p.get("/crm/v3/owners").await;
    assert_rate_limited(&refused, "DAILY");
    assert_eq!(
        refused.body["message"],
        "You have reached your daily limit."
    );
    let search = p.post(&format!("{DEALS}/search"), search_body()).await;
    assert_rate_limited(&search, "DAILY");
    let write = p
        .post(DEALS, json!({ "properties": { "dealname": "Too late" } }))
        .await;
    assert_rate_limited(&write, "DAILY");

    // The daily count is per portal.
    let other = common::portal(&sb, "partner-b");
    let a = other.get("/crm/v3/owners").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("X-HubSpot-RateLimit-Daily-Remaining"), Some("2"));

    let c = p.counters().await;
    assert_eq!(c["http_429"], 3, "{c}");
    let state = p.control(Method::GET, "/state", None).await;
    assert_eq!(
        state.body["data"]["objects"]["deals"],
        json!({}),
        "the refused write created a deal"
    );
}

// ---------------------------------------------------------------------------------------------
// Fault injection
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn injected_429_500_and_503_answer_with_error_bodies_and_change_nothing() {
    let (_sb, p) = unlimited("partner-a").await;
    for (field, status) in [("rate_429", 429u16), ("rate_500", 500), ("rate_503", 503)] {
        p.set_faults(json!({ field: 1.0 })).await;
        let a = p
            .post(
                DEALS,
                json!({ "properties": { "dealname": format!("faulted {field}") } }),
            )
            .await;
        assert_eq!(a.status, status, "{field}: {}", a.text);
        assert_eq!(a.body["status"], "error", "{field}: {}", a.text);
        assert!(a.body["correlationId"].is_string(), "{field}: {}", a.text);
        if status == 429 {
            assert_rate_limited(&a, "TEN_SECONDLY_ROLLING");
        }
        let read = p.get(DEALS).await;
        assert_eq!(
            read.status, status,
            "{field} applies to reads too: {}",
            read.text
        );
    }
    let del = p.control(Method::DELETE, "/faults", None).await;
    assert_eq!(del.status, 204, "{}", del.text);
    let list = p.get(DEALS).await;
    assert_eq!(list.status, 200, "{}", list.text);
    assert_eq!(
        list.body["results"],
        json!([]),
        "an injected failure created a deal"
    );
    let c = p.counters().await;
    assert_eq!(c["http_429"], 2, "{c}");
    assert_eq!(c["http_5xx"], 4, "{c}");
}

#[tokio::test]
async fn injected_502_is_an_html_page() {
    let (_sb, p) = unlimited("partner-a").await;
    p.set_faults(json!({ "rate_502_html": 1.0 })).await;
    let a = p.get(DEALS).await;
    assert_eq!(a.status, 502);
    assert!(
        a.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "content-type: {:?}",
        a.header("content-type")
    );
    assert!(a.text.to_ascii_lowercase().contains("<html"), "{}", a.text);
    assert!(a.body.is_null(), "the body is not JSON: {}", a.text);
}

#[tokio::test]
async fn injected_timeout_answers_504_after_the_delay() {
    let (_sb, p) = unlimited("partner-a").await;
    p.set_faults(json!({ "rate_timeout": 1.0, "timeout_ms": 300 }))
        .await;
    let t0 = Instant::now();
    let a = p.get(DEALS).await;
    let el = t0.elapsed();
    assert_eq!(a.status, 504, "{}", a.text);
    assert!(el >= Duration::from_millis(300), "answered after {el:?}");
    assert!(el < Duration::from_secs(5), "answered after {el:?}");
}

#[tokio::test]
async fn error_after_write_applies_the_change_and_answers_500() {
    let (_sb, p) = unlimited("partner-a").await;
    let deal = p.create_deal(json!({ "dealname": "Before" })).await;
    p.set_faults(json!({ "error_after_write": 1.0 })).await;
    let a = p
        .patch(
            &format!("{DEALS}/{deal}"),
            json!({ "properties": { "dealname": "After" } }),
        )
        .await;
    assert_eq!(a.status, 500, "{}", a.text);
    // Reads are not writes: they still answer, and show the change.
    let read = p.get(&format!("{DEALS}/{deal}")).await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(read.body["properties"]["dealname"], "After");
    // A create answered 500 still created the record.
    let created = p
        .post(
            DEALS,
            json!({ "properties": { "dealname": "Created anyway" } }),
        )
        .await;
    assert_eq!(created.status, 500, "{}", created.text);
    let list = p.get(DEALS).await;
    let names: BTreeSet<String> = list.body["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|r| r["properties"]["dealname"].as_str().map(str::to_owned))
        .collect();
    assert!(names.contains("Created anyway"), "{}", list.text);
    let c = p.counters().await;
    assert_eq!(c["http_5xx"], 2, "{c}");
}

#[tokio::test]
async fn burst_fails_exactly_n_calls_then_succeeds() {
    let (_sb, p) = unlimited("partner-a").await;
    p.set_faults(json!({ "burst_count": 3, "burst_status": 503 }))
        .await;
    for i in 1..=3 {
        let a = p.get(DEALS).await;
        assert_eq!(a.status, 503, "call {i}: {}", a.text);
    }
    for i in 4..=6 {
        let a = p.get(DEALS).await;
        assert_eq!(a.status, 200, "call {i}: {}", a.text);
    }
    let f = p.control(Method::GET, "/faults", None).await;
    assert_eq!(f.body["burst_count"], 0, "{}", f.text);

    // A 429 burst, limited to one path: other paths do not use up the burst.
    p.set_faults(
        json!({ "burst_count": 2, "burst_status": 429, "paths": ["/crm/v3/objects/deals"] }),
    )
    .await;
    let owners = p.get("/crm/v3/owners").await;
    assert_eq!(owners.status, 200, "{}", owners.text);
    for i in 1..=2 {
        let a = p.get(DEALS).await;
        assert_eq!(a.status, 429, "call {i}: {}", a.text);
    }
    let a = p.get(DEALS).await;
    assert_eq!(a.status, 200, "{}", a.text);
}

#[tokio::test]
async fn latency_delays_every_call() {
    let (_sb, p) = unlimited("partner-a").await;
    p.set_faults(json!({ "latency_ms": 250 })).await;
    for path in [DEALS, "/crm/v3/owners"] {
        let t0 = Instant::now();
        let a = p.get(path).await;
        let el = t0.elapsed();
        assert_eq!(a.status, 200, "{}", a.text);
        assert!(
            el >= Duration::from_millis(250),
            "{path} answered after {el:?}"
        );
    }
    let del = p.control(Method::DELETE, "/faults", None).await;
    assert_eq!(del.status, 204);
    let f = p.control(Method::GET, "/faults", None).await;
    assert_eq!(f.body["latency_ms"], 0, "{}", f.text);
}

#[tokio::test]
async fn faults_apply_only_to_the_listed_paths_and_portal() {
    let sb = common::unlimited_sandbox().await;
    let p = common::portal(&sb, "partner-a");
    let other = common::portal(&sb, "partner-b");
    p.set_faults(json!({ "rate_500": 1.0, "paths": ["/crm/v3/objects/deals"] }))
        .await;
    assert_eq!(p.get(DEALS).await.status, 500);
    assert_eq!(
        p.post(&format!("{DEALS}/search"), search_body())
            .await
            .status,
        500
    );
    assert_eq!(p.get("/crm/v3/owners").await.status, 200);
    assert_eq!(p.get("/crm/v3/objects/contacts").await.status, 200);
    assert_eq!(
        other.get(DEALS).await.status,
        200,
        "faults leaked to another portal"
    );
    let f = p.control(Method::GET, "/faults", None).await;
    assert_eq!(f.status, 200, "{}", f.text);
    assert_eq!(f.body["rate_500"], 1.0);
    assert_eq!(f.body["paths"], json!(["/crm/v3/objects/deals"]));
}

#[tokio::test]
async fn invalid_fault_settings_are_refused_and_delete_clears() {
    let (_sb, p) = unlimited("partner-a").await;
    p.set_faults(json!({ "latency_ms": 1 })).await;
    for (why, body) in [
        ("probability above 1", json!({ "rate_500": 1.5 })),
        ("negative probability", json!({ "rate_429": -0.1 })),
        (
            "error_after_write above 1",
            json!({ "error_after_write": 2.0 }),
        ),
        (
            "burst without an error status",
            json!({ "burst_count": 2, "burst_status": 200 }),
        ),
        ("unknown field", json!({ "rate_999": 0.5 })),
    ] {
        let a = p.control(Method::PUT, "/faults", Some(body)).await;
        assert_eq!(a.status, 400, "{why}: {}", a.text);
        assert_error(&a, 400, "VALIDATION_ERROR");
    }
    // The refused settings did not replace the previous ones.
    let f = p.control(Method::GET, "/faults", None).await;
    assert_eq!(f.body["latency_ms"], 1, "{}", f.text);
    assert_eq!(f.body["rate_500"], 0.0, "{}", f.text);

    p.set_faults(json!({ "rate_500": 1.0 })).await;
    assert_eq!(p.get(DEALS).await.status, 500);
    let del = p.control(Method::DELETE, "/faults", None).await;
    assert_eq!(del.status, 204, "{}", del.text);
    let f = p.control(Method::GET, "/faults", None).await;
    assert_eq!(f.body["rate_500"], 0.0, "{}", f.text);
    assert_eq!(f.body["latency_ms"], 0, "{}", f.text);
    for _ in 0..5 {
        assert_eq!(p.get(DEALS).await.status, 200);
    }
    let unknown = p
        .send(
            p.http
                .put(format!("{}/_sandbox/portals/nope/faults", p.base))
                .json(&json!({})),
        )
        .await;
    assert_eq!(unknown.status, 404, "{}", unknown.text);
}

// ---------------------------------------------------------------------------------------------
// Controls
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn counters_group_calls_by_endpoint_and_reset_on_delete() {
    let (_sb, p) = unlimited("partner-a").await;
    let d1 = p.create_deal(json!({ "dealname": "C1" })).await;
    let d2 = p.create_deal(json!({ "dealname": "C2" })).await;
    for (path, id) in [(DEALS, &d1), ("/crm/v3/objects/0-3", &d2), (DEALS, &d2)] {
        let a = p
            .patch(
                &format!("{path}/{id}"),
                json!({ "properties": { "amount": "10" } }),
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.text);
    }
    assert_eq!(p.get(&format!("{DEALS}/{d1}")).await.status, 200);
    assert_eq!(
        p.post(&format!("{DEALS}/search"), search_body())
            .await
            .status,
        200
    );
    assert_eq!(
        p.post(
            &format!("{DEALS}/batch/read"),
            json!({ "inputs": [{ "id": d1 }] })
        )
        .await
        .status,
        200
    );

    let c = p.counters().await;
    let ep = &c["endpoints"];
    assert_eq!(ep["POST /crm/v3/objects/deals"], 2, "{c}");
    assert_eq!(ep["PATCH /crm/v3/objects/deals/{id}"], 3, "{c}");
    assert_eq!(ep["GET /crm/v3/objects/deals/{id}"], 1, "{c}");
    assert_eq!(ep["POST /crm/v3/objects/deals/search"], 1, "{c}");
    assert_eq!(ep["POST /crm/v3/objects/deals/batch/read"], 1, "{c}");
    assert_eq!(c["writes"], 5, "2 creates + 3 patches: {c}");
    assert_eq!(c["reads"], 3, "read + search + batch read: {c}");
    assert_eq!(c["total"], 8, "{c}");
    assert_eq!(c["http_429"], 0, "{c}");
    assert_eq!(c["http_5xx"], 0, "{c}");

    // Control calls are not API calls and are not counted.
    let c2 = p.counters().await;
    assert_eq!(c2["total"], 8, "{c2}");

    let del = p.control(Method::DELETE, "/counters", None).await;
    assert_eq!(del.status, 204, "{}", del.text);
    let c = p.counters().await;
    assert_eq!(c["total"], 0, "{c}");
    assert_eq!(c["writes"], 0, "{c}");
    assert_eq!(c["reads"], 0, "{c}");
    assert_eq!(c["endpoints"], json!({}), "{c}");
}

#[tokio::test]
async fn reset_brings_back_seed_data() {
    let sb = common::unlimited_sandbox().await;
    let p = common::portal(&sb, "partner-a");
    let b = common::portal(&sb, "partner-b");
    let deal = p.create_deal(json!({ "dealname": "Wiped" })).await;
    let kept = b.create_deal(json!({ "dealname": "Kept" })).await;
    let prop = create_enum_property(&p, "wiped_prop", "select", &["x"]).await;
    assert_eq!(prop.status, 201, "{}", prop.text);
    let pipe = p
        .post(
            "/crm/v3/pipelines/deals",
            json!({ "label": "Wiped", "displayOrder": 1, "stages": [{ "label": "S", "displayOrder": 0, "metadata": { "probability": "0.5" } }] }),
        )
        .await;
    assert_eq!(pipe.status, 201, "{}", pipe.text);
    let up = upload(&p, "wiped.txt", b"bye", Some(r#"{"access":"PRIVATE"}"#)).await;
    assert_eq!(up.status, 201, "{}", up.text);
    let file = id_text(&up.body["id"]);
    // Owners are identified by id, email and user id (a reseed stamps a new createdAt).
    let owner_keys = |a: &Answer| -> Vec<(String, String, String)> {
        a.body["results"]
            .as_array()
            .expect("owners")
            .iter()
            .map(|o| {
                (
                    id_text(&o["id"]),
                    o["email"].to_string(),
                    o["userId"].to_string(),
                )
            })
            .collect()
    };
    let owners_before = owner_keys(&p.get("/crm/v3/owners").await);
    assert!(!owners_before.is_empty());
    p.set_faults(json!({ "latency_ms": 1 })).await;

    // Reset one portal only.
    let a = p
        .send(
            p.http
                .post(format!("{}/_sandbox/reset?portal=partner-a", p.base)),
        )
        .await;
    assert_eq!(a.status, 204, "{}", a.text);
    assert_error(
        &p.get(&format!("{DEALS}/{deal}")).await,
        404,
        "OBJECT_NOT_FOUND",
    );
    assert_eq!(p.get(DEALS).await.body["results"], json!([]));
    assert_error(
        &p.get("/crm/v3/properties/deals/wiped_prop").await,
        404,
        "OBJECT_NOT_FOUND",
    );
    assert_error(
        &p.get(&format!("/files/v3/files/{file}")).await,
        404,
        "OBJECT_NOT_FOUND",
    );
    let pipes = p.get("/crm/v3/pipelines/deals").await;
    let ids: Vec<String> = pipes.body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| id_text(&r["id"]))
        .collect();
    assert_eq!(ids, ["default"], "{}", pipes.text);
    assert_eq!(owner_keys(&p.get("/crm/v3/owners").await), owners_before);
    assert_eq!(p.get("/crm/v3/properties/deals/dealname").await.status, 200);
    // The other portal was left alone; credentials and faults stay.
    assert_eq!(b.get(&format!("{DEALS}/{kept}")).await.status, 200);
    let f = p.control(Method::GET, "/faults", None).await;
    assert_eq!(
        f.body["latency_ms"], 1,
        "faults are kept by reset: {}",
        f.text
    );

    // Reset everything.
    let a = p
        .send(p.http.post(format!("{}/_sandbox/reset", p.base)))
        .await;
    assert_eq!(a.status, 204, "{}", a.text);
    assert_error(
        &b.get(&format!("{DEALS}/{kept}")).await,
        404,
        "OBJECT_NOT_FOUND",
    );
    let c = b.counters().await;
    assert_eq!(c["total"], 1, "counters are cleared by reset: {c}");
    // The sandbox still works after a reset.
    let again = p.create_deal(json!({ "dealname": "After reset" })).await;
    assert_eq!(p.get(&format!("{DEALS}/{again}")).await.status, 200);
}

#[tokio::test]
async fn state_dump_shows_objects_and_file_sizes() {
    let (sb, p) = unlimited("partner-a").await;
    let deal = p
        .create_deal(json!({ "dealname": "Dumped", "amount": "12" }))
        .await;
    let con = contact(&p, "dumped@example.com").await;
    let a = p
        .put(
            &format!("/crm/v4/objects/deals/{deal}/associations/default/contacts/{con}"),
            Value::Null,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let content = binary_content(321);
    let up = upload(&p, "dump.bin", &content, Some(r#"{"access":"PRIVATE"}"#)).await;
    assert_eq!(up.status, 201, "{}", up.text);
    let file = id_text(&up.body["id"]);

    let all = p
        .send(p.http.get(format!("{}/_sandbox/state", sb.base_url)))
        .await;
    assert_eq!(all.status, 200, "{}", all.text);
    let portals = all.body["portals"].as_array().expect("portals");
    let names: Vec<&str> = portals.iter().filter_map(|x| x["name"].as_str()).collect();
    assert_eq!(names, ["hubspot", "partner-a", "partner-b"]);
    let mine = portals
        .iter()
        .find(|x| x["name"] == "partner-a")
        .expect("partner-a");
    assert_eq!(mine["portal_id"], json!(p.info.portal_id));
    let dumped = &mine["data"]["objects"]["deals"][&deal];
    assert!(
        dumped.is_object(),
        "deal {deal} missing from the dump: {mine}"
    );
    assert!(
        dumped.to_string().contains("Dumped"),
        "deal values missing from the dump: {dumped}"
    );
    assert!(
        mine["data"]["objects"]["contacts"][&con].is_object(),
        "{mine}"
    );
    let f = &mine["data"]["files"][&file];
    assert_eq!(f["size"], content.len(), "{f}");
    assert!(f.get("content").is_none(), "file content is left out: {f}");
    let hs = portals
        .iter()
        .find(|x| x["name"] == "hubspot")
        .expect("hubspot");
    assert_eq!(hs["data"]["objects"]["deals"], json!({}), "{hs}");

    let one = p.control(Method::GET, "/state", None).await;
    assert_eq!(one.status, 200, "{}", one.text);
    assert_eq!(one.body, *mine);
    let unknown = p
        .send(
            p.http
                .get(format!("{}/_sandbox/portals/nope/state", sb.base_url)),
        )
        .await;
    assert_eq!(unknown.status, 404, "{}", unknown.text);
}

#[tokio::test]
async fn restore_brings_back_an_archived_deal() {
    let (_sb, p) = unlimited("partner-a").await;
    let deal = p
        .create_deal(json!({ "dealname": "Recycled", "amount": "99" }))
        .await;
    let del = p.delete(&format!("{DEALS}/{deal}")).await;
    assert_eq!(del.status, 204);
    assert_error(
        &p.get(&format!("{DEALS}/{deal}")).await,
        404,
        "OBJECT_NOT_FOUND",
    );
    let archived = p.get(&format!("{DEALS}/{deal}?archived=true")).await;
    assert_eq!(archived.status, 200, "{}", archived.text);
    assert_eq!(archived.body["archived"], true);

    let r = p
        .control(
            Method::POST,
            &format!("/objects/deals/{deal}/restore"),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let back = p
        .get(&format!("{DEALS}/{deal}?properties=dealname,amount"))
        .await;
    assert_eq!(back.status, 200, "{}", back.text);
    assert_eq!(back.body["archived"], false);
    assert!(
        matches!(back.body.get("archivedAt"), None | Some(Value::Null)),
        "{}",
        back.text
    );
    assert_eq!(back.body["properties"]["dealname"], "Recycled");
    assert_eq!(back.body["properties"]["amount"], "99");
    let list = p.get(DEALS).await;
    let ids: Vec<String> = list.body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| id_text(&r["id"]))
        .collect();
    assert_eq!(ids, [deal.as_str()]);
    let archived_list = p.get(&format!("{DEALS}?archived=true")).await;
    assert_eq!(archived_list.body["results"], json!([]));
    // It can be written again.
    let w = p
        .patch(
            &format!("{DEALS}/{deal}"),
            json!({ "properties": { "amount": "100" } }),
        )
        .await;
    assert_eq!(w.status, 200, "{}", w.text);

    // Restoring a live deal changes nothing; an unknown deal is a 404.
    let r = p
        .control(
            Method::POST,
            &format!("/objects/deals/{deal}/restore"),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = p
        .control(Method::POST, "/objects/deals/123456789/restore", None)
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
}

#[tokio::test]
async fn state_file_keeps_data_and_credentials_across_restarts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("sandbox-state.json");
    let config = || SandboxConfig {
        state_file: Some(path.clone()),
        ..SandboxConfig::default()
    };

    let sb = common::sandbox_with(config()).await;
    let before = sb.startup();
    let p = common::portal(&sb, "partner-a");
    let deal = p
        .create_deal(json!({ "dealname": "Persisted", "amount": "42" }))
        .await;
    let con = contact(&p, "persisted@example.com").await;
    let a = p
        .put(
            &format!("/crm/v4/objects/deals/{deal}/associations/default/contacts/{con}"),
            Value::Null,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let content = binary_content(777);
    let up = upload(&p, "kept.bin", &content, Some(r#"{"access":"PRIVATE"}"#)).await;
    assert_eq!(up.status, 201, "{}", up.text);
    let file = id_text(&up.body["id"]);
    sb.shutdown().await;
    assert!(path.exists(), "state file written on shutdown");

    let sb = common::sandbox_with(config()).await;
    let after = sb.startup();
    assert_eq!(
        after.portals, before.portals,
        "tokens, secrets and portal ids survive"
    );
    let p = common::portal(&sb, "partner-a");
    let read = p
        .get(&format!("{DEALS}/{deal}?properties=dealname,amount"))
        .await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(read.body["properties"]["dealname"], "Persisted");
    assert_eq!(read.body["properties"]["amount"], "42");
    assert_eq!(
        links(&assoc_list(&p, "deals", &deal, "contacts").await["results"]),
        [(con.clone(), types(&[3]))]
    );
    let resp = p
        .req(Method::GET, &format!("/files/v3/files/{file}/download"))
        .send()
        .await
        .expect("download");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.bytes().await.expect("bytes").to_vec(), content);
    // The unique-value index is rebuilt: the contact's email is still taken.
    let dup = p
        .post(
            "/crm/v3/objects/contacts",
            json!({ "properties": { "email": "persisted@example.com" } }),
        )
        .await;
    assert_error(&dup, 409, "CONFLICT");
    // New ids do not reuse old ones.
    let newer = p.create_deal(json!({ "dealname": "Newer" })).await;
    assert_ne!(newer, deal);
    sb.shutdown().await;
}

/// HubSpot's PATCH takes `archived` only to restore an archived pipeline: on a live one (even
/// the default) it is a 400 and archives nothing; `archived: false` on an archived one restores
/// it.
#[tokio::test]
async fn pipeline_patch_takes_archived_only_to_restore() {
    let (_sb, p) = unlimited("partner-a").await;
    for archived in [true, false] {
        let a = p
            .patch(
                "/crm/v3/pipelines/deals/default",
                json!({ "archived": archived }),
            )
            .await;
        assert_error(&a, 400, "VALIDATION_ERROR");
        assert!(a.text.contains("restore"), "says why: {}", a.text);
    }
    let still = p.get("/crm/v3/pipelines/deals/default").await;
    assert_eq!(
        still.status, 200,
        "default pipeline still live: {}",
        still.text
    );

    let made = p
        .post(
            "/crm/v3/pipelines/deals",
            json!({ "label": "Seasonal", "stages": [
                { "label": "Open", "metadata": { "probability": "0.5" } }
            ] }),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.text);
    let pid = id_text(&made.body["id"]);
    let path = format!("/crm/v3/pipelines/deals/{pid}");
    let gone = p.delete(&path).await;
    assert_eq!(gone.status, 204, "{}", gone.text);
    assert_error(
        &p.patch(&path, json!({ "archived": true })).await,
        400,
        "VALIDATION_ERROR",
    );
    let back = p.patch(&path, json!({ "archived": false })).await;
    assert_eq!(back.status, 200, "restore: {}", back.text);
    assert_eq!(back.body["archived"], false, "{}", back.text);
    let read = p.get(&path).await;
    assert_eq!(read.status, 200, "restored pipeline reads: {}", read.text);
}

#[tokio::test]
async fn values_control_lists_live_values_written_since_a_time() {
    let (_sb, p) = unlimited("partner-a").await;
    let old = p.create_deal(json!({ "dealname": "Old" })).await;
    let gone = p.create_deal(json!({ "dealname": "Gone" })).await;
    assert_eq!(p.delete(&format!("{DEALS}/{gone}")).await.status, 204);
    let all = p.control(Method::GET, "/values/deals/dealname", None).await;
    assert_eq!(all.status, 200, "{}", all.text);
    let rows = all.body["values"].as_array().expect("values");
    assert_eq!(rows.len(), 1, "archived deals are left out: {}", all.text);
    assert_eq!(
        (rows[0]["id"].as_str(), rows[0]["value"].as_str()),
        (Some(old.as_str()), Some("Old"))
    );
    let written = rows[0]["ts"].as_i64().expect("ts");

    let w = p
        .patch(
            &format!("{DEALS}/{old}"),
            json!({ "properties": { "dealname": "New" } }),
        )
        .await;
    assert_eq!(w.status, 200, "{}", w.text);
    let since = p
        .control(
            Method::GET,
            &format!("/values/deals/dealname?since={}", written + 1),
            None,
        )
        .await;
    let rows = since.body["values"].as_array().expect("values");
    assert_eq!(rows.len(), 1, "{}", since.text);
    assert_eq!(rows[0]["value"], "New");
    assert!(rows[0]["ts"].as_i64().expect("ts") > written);
    let later = rows[0]["ts"].as_i64().unwrap() + 1;
    let none = p
        .control(
            Method::GET,
            &format!("/values/deals/dealname?since={later}"),
            None,
        )
        .await;
    assert_eq!(none.body["values"], json!([]), "{}", none.text);

    let bad = p
        .control(Method::GET, "/values/deals/dealname?since=soon", None)
        .await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    let unknown = p
        .control(Method::GET, "/values/widgets/dealname", None)
        .await;
    // As HubSpot answers an object type it cannot infer.
    assert_eq!(unknown.status, 400, "{}", unknown.text);
}
