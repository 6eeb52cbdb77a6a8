//! HubSpot's date-versioned API (issue 15 items 1, 2 and 7): the sandbox serves the 2026-03 and
//! 2026-09 paths beside the legacy v3/v4 ones over the same state, with HubSpot's current
//! limits; the daemon calls only dated paths by default and only v3/v4 paths on `legacy`; and
//! a bad version setting is refused naming its key.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use dealsync::config::Config;
use dealsync::crm::{ApiVersion, ApiVersions};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn dated_and_legacy_paths_share_one_state() {
    let sb = common::sandbox().await;
    let p = common::portal(&sb, "partner-a");

    let made = p
        .post(
            "/crm/objects/2026-09/deals",
            json!({ "properties": { "dealname": "Dated" } }),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.text);
    let id = made.body["id"].as_str().expect("id").to_owned();
    for path in [
        format!("/crm/v3/objects/deals/{id}?properties=dealname"),
        format!("/crm/objects/2026-03/deals/{id}?properties=dealname"),
        format!("/crm/objects/2026-09/0-3/{id}?properties=dealname"),
    ] {
        let a = p.get(&path).await;
        assert_eq!(a.status, 200, "{path}: {}", a.text);
        assert_eq!(a.body["properties"]["dealname"], "Dated", "{path}");
    }

    let note = p
        .post(
            "/crm/v3/objects/notes",
            json!({ "properties": { "hs_timestamp": "1700000000000", "hs_note_body": "x" } }),
        )
        .await;
    let note = note.body["id"].as_str().expect("note id").to_owned();
    let linked = p
        .post(
            "/crm/associations/2026-09/notes/deals/batch/associate/default",
            json!({ "inputs": [{ "from": { "id": note }, "to": { "id": id } }] }),
        )
        .await;
    assert!(linked.status < 300, "{}", linked.text);
    let read = p
        .post(
            "/crm/v4/associations/deals/notes/batch/read",
            json!({ "inputs": [{ "id": id }] }),
        )
        .await;
    assert_eq!(
        read.body["results"][0]["to"][0]["toObjectId"]
            .to_string()
            .trim_matches('"'),
        note,
        "{}",
        read.text
    );

    // Per-record listing: at v4 and 2026-03; HubSpot's 2026-09 spec has none.
    let listing = format!("/crm/objects/2026-03/deals/{id}/associations/notes");
    assert_eq!(p.get(&listing).await.status, 200);
    let absent = p
        .get(&format!(
            "/crm/objects/2026-09/deals/{id}/associations/notes"
        ))
        .await;
    assert_eq!(absent.status, 404, "{}", absent.text);

    for path in [
        "/crm/owners/2026-09",
        "/crm/v3/owners/",
        "/crm/owners/2026-09/",
        "/crm/pipelines/2026-09/deals/default",
        "/crm/properties/2026-09/deals/dealname",
    ] {
        let a = p.get(path).await;
        assert_eq!(a.status, 200, "{path}: {}", a.text);
    }
    assert!(!p.get("/crm/v3/owners/").await.body["results"]
        .as_array()
        .expect("owners")
        .is_empty());

    // Unknown versions and the 2026-09 files gap answer like a missing path.
    for path in ["/crm/objects/2025-01/deals", "/files/2026-09/files/1"] {
        let a = p.get(path).await;
        assert_eq!(a.status, 404, "{path}: {}", a.text);
    }
}

#[tokio::test]
async fn history_reads_take_at_most_fifty_inputs() {
    let sb = common::unlimited_sandbox().await;
    let p = common::portal(&sb, "partner-a");
    let ids: Vec<Value> = (0..51)
        .map(|i| json!({ "id": (1000 + i).to_string() }))
        .collect();
    let body = |n: usize| {
        json!({
            "inputs": ids[..n],
            "properties": ["dealname"],
            "propertiesWithHistory": ["dealname"],
        })
    };
    let over = p
        .post("/crm/objects/2026-09/deals/batch/read", body(51))
        .await;
    common::assert_error(&over, 400, "VALIDATION_ERROR");
    assert!(
        over.text.contains("property histories is 50"),
        "{}",
        over.text
    );
    let at = p
        .post("/crm/objects/2026-09/deals/batch/read", body(50))
        .await;
    assert_ne!(at.status, 400, "{}", at.text);
    // Without histories the ordinary cap of 100 applies.
    let plain = p
        .post(
            "/crm/objects/2026-09/deals/batch/read",
            json!({ "inputs": ids, "properties": ["dealname"] }),
        )
        .await;
    assert_ne!(plain.status, 400, "{}", plain.text);
}

/// Endpoint -> calls, from the sandbox's counters.
async fn endpoints(p: &common::Portal) -> HashMap<String, u64> {
    let c = p.counters().await;
    c["endpoints"]
        .as_object()
        .expect("endpoints")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect()
}

/// The endpoints called between two snapshots.
fn called(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> Vec<String> {
    after
        .iter()
        .filter(|(k, n)| before.get(*k).copied().unwrap_or(0) < **n)
        .map(|(k, _)| k.clone())
        .collect()
}

fn is_legacy(endpoint: &str) -> bool {
    ["/crm/v3/", "/crm/v4/", "/files/v3/"]
        .iter()
        .any(|p| endpoint.contains(p))
}

/// One change synced by a daemon whose portals use `api`; returns the endpoints it called.
async fn sync_one_change(api: ApiVersions) -> Vec<String> {
    let duo = common::Duo::new().await;
    let props = json!({ "dealname": "Versioned", "dealstage": "qualifiedtobuy" });
    let pd = duo.pa.create_deal(props.clone()).await;
    let hd = duo.hs.create_deal(props).await;
    let store = dealsync::store::Store::open(&duo.dir.path().join("dealsync.db"))
        .await
        .expect("store");
    let (p2, h2) = (pd.clone(), hd.clone());
    store
        .call(move |c| dealsync::store::insert_link(c, "partner-a", &p2, &h2, "channel"))
        .await
        .expect("link");
    let before = (endpoints(&duo.hs).await, endpoints(&duo.pa).await);
    let mut hubspot = common::conn(&duo.sb, "hubspot");
    let mut partner = common::conn(&duo.sb, "partner-a");
    hubspot.api = api;
    partner.api = api;
    let daemon = dealsync::daemon::DaemonHandle::start(common::parts(
        duo.dir.path(),
        hubspot,
        vec![partner],
        duo.lifecycle_settings(),
    ))
    .await
    .expect("daemon");
    // The test acts as a person through 2026-03 paths, which neither mode of the daemon uses,
    // so its own calls can be told apart in the counters.
    let edit = duo
        .pa
        .patch(
            &format!("{PERSON}/{pd}"),
            json!({ "properties": { "dealname": "Renamed by the partner" } }),
        )
        .await;
    assert_eq!(edit.status, 200, "{}", edit.text);
    common::eventually("the rename reaches HubSpot", WAIT, || async {
        let a = duo
            .hs
            .get(&format!("{PERSON}/{hd}?properties=dealname"))
            .await;
        (a.body["properties"]["dealname"] == "Renamed by the partner").then_some(())
    })
    .await;
    daemon.shutdown().await;
    let mut out = called(&before.0, &endpoints(&duo.hs).await);
    out.extend(called(&before.1, &endpoints(&duo.pa).await));
    out.retain(|e| !e.contains(PERSON));
    out
}

/// Where the test's own reads and edits go.
const PERSON: &str = "/crm/objects/2026-03/deals";

#[tokio::test]
async fn the_daemon_calls_dated_paths_by_default_and_v3_v4_on_legacy() {
    let dated = sync_one_change(ApiVersions::default()).await;
    assert!(
        dated
            .iter()
            .any(|e| e.contains("/crm/objects/2026-09/deals")),
        "{dated:?}"
    );
    let legacy_calls: Vec<&String> = dated.iter().filter(|e| is_legacy(e)).collect();
    assert!(
        legacy_calls.is_empty(),
        "legacy paths on 2026-09: {legacy_calls:?}"
    );

    let legacy = sync_one_change(ApiVersions::all(ApiVersion::Legacy)).await;
    assert!(
        legacy.iter().any(|e| e.contains("/crm/v3/objects/deals")),
        "{legacy:?}"
    );
    let dated_calls: Vec<&String> = legacy.iter().filter(|e| !is_legacy(e)).collect();
    assert!(
        dated_calls.is_empty(),
        "dated paths on legacy: {dated_calls:?}"
    );
}

const MINIMAL: &str = r#"
[store]
path = "/tmp/x.db"
dead_letter_path = "/tmp/x.jsonl"
[hubspot]
base_url = "http://127.0.0.1:1"
token_env = "HS"
[[partners]]
name = "p"
base_url = "http://127.0.0.1:1"
token_env = "PT"
[partners.stage_map]
a = "b"
"#;

fn load(extra_hubspot: &str, extra_partner: &str) -> Result<Config, String> {
    let text = MINIMAL
        .replace(
            "token_env = \"HS\"\n",
            &format!("token_env = \"HS\"\n{extra_hubspot}\n"),
        )
        .replace(
            "token_env = \"PT\"\n",
            &format!("token_env = \"PT\"\n{extra_partner}\n"),
        );
    let env = HashMap::from([
        ("HS".to_owned(), "t".to_owned()),
        ("PT".to_owned(), "t".to_owned()),
    ]);
    Config::from_toml_str(&text, &env).map_err(|e| e.to_string())
}

#[test]
fn versions_are_configured_per_portal_and_per_surface() {
    let c = load("", "").expect("defaults load");
    assert_eq!(c.hubspot.api, ApiVersions::default());
    assert_eq!(c.hubspot.api.files, ApiVersion::V2026_03);

    let c = load(
        "api_version = \"legacy\"",
        "api_versions = { associations = \"2026-03\" }",
    )
    .expect("loads");
    assert_eq!(c.hubspot.api, ApiVersions::all(ApiVersion::Legacy));
    let partner = &c.partners[0].portal.api;
    assert_eq!(partner.associations, ApiVersion::V2026_03);
    assert_eq!(partner.objects, ApiVersion::V2026_09);
}

#[test]
fn a_bad_version_names_its_key_and_the_choices() {
    let e = load("api_version = \"v3\"", "").expect_err("refused");
    assert!(e.contains("hubspot.api_version"), "{e}");
    assert!(e.contains("2026-09") && e.contains("legacy"), "{e}");

    let e = load("", "api_versions = { files = \"2026-09\" }").expect_err("refused");
    assert!(e.contains("partners[0].api_versions.files"), "{e}");
    assert!(e.contains("2026-03"), "{e}");

    let e = load("", "api_versions = { deals = \"2026-09\" }").expect_err("refused");
    assert!(e.contains("unknown API surface"), "{e}");
}
