//! Recovering a shared message's copy that was being made when dealsync stopped (the pair is
//! recorded `creating`): a copy a person deleted meanwhile stays deleted and takes its original
//! with it; a copy that never existed is made, even when dealsync removed an earlier copy of
//! the same message. A restart is the daemon stopped and a new one started over the same
//! store file, which is what a kill leaves behind as long as the `creating` row is the state.

mod common;

use std::time::Duration;

use common::notes::{note, notes, prop};
use dealsync::store::{self, Link, ObjectLink, ObjectState, Store};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// The writes of a copy: its create (with its deal association, in one call) and, once a run
/// finds it on the deal, its rewrite; under either API version.
const WRITES: [&str; 4] = [
    "/crm/v3/objects/notes/batch/create",
    "/crm/objects/2026-09/notes/batch/create",
    "/crm/v3/objects/notes/batch/update",
    "/crm/objects/2026-09/notes/batch/update",
];

/// A daemon that keeps retrying a failing job instead of dead-lettering it.
fn settings(duo: &common::Duo) -> dealsync::engine::Settings {
    let mut s = common::settings(duo.dir.path());
    s.max_attempts = 1000;
    s
}

/// A HubSpot deal and a partner deal, linked.
async fn linked(duo: &common::Duo, store: &Store) -> (Link, String, String) {
    let h = duo.hs.create_deal(json!({"dealname": "Shared deal"})).await;
    let p = duo.pa.create_deal(json!({"dealname": "Shared deal"})).await;
    let (p2, h2) = (p.clone(), h.clone());
    let link = store
        .call(move |c| store::insert_link(c, "partner-a", &p2, &h2, "channel"))
        .await
        .expect("link");
    (link, h, p)
}

async fn pair(store: &Store, link: i64, origin: &str) -> Option<ObjectLink> {
    let origin = origin.to_owned();
    store
        .call(move |c| store::object_links(c, &[link]))
        .await
        .expect("object links")
        .remove(&link)
        .into_iter()
        .flatten()
        .find(|o| o.kind == "message" && o.origin == origin)
}

/// Live notes of `p` holding `origin`.
async fn copies_of(p: &common::Portal, origin: &str) -> Vec<Value> {
    notes(p)
        .await
        .into_iter()
        .filter(|n| prop(n, dealsync::properties::ORIGIN) == Some(origin))
        .collect()
}

fn on_deal(n: &Value, deal: &str) -> bool {
    n["associations"]["deals"]["results"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|d| d["id"].as_str() == Some(deal))
}

async fn note_live(p: &common::Portal, id: &str) -> bool {
    p.get(&format!("/crm/v3/objects/notes/{id}")).await.status == 200
}

/// Waits until the pair has left `creating` and returns it.
async fn settled(store: &Store, link: i64, origin: &str) -> ObjectLink {
    common::eventually("the pair leaves creating", WAIT, || async {
        pair(store, link, origin)
            .await
            .filter(|o| o.state != ObjectState::Creating)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_deleted_while_its_pair_was_creating_stays_deleted_and_takes_the_original() {
    let duo = common::Duo::new().await;
    let d = duo.start(settings(&duo)).await;
    let (link, h, p) = linked(&duo, &d.store).await;
    // Every copy written on the partner's side is written, on its deal, then answered 500.
    duo.pa
        .set_faults(json!({"error_after_write": 1.0, "paths": WRITES}))
        .await;
    let m = note(&duo.hs, &h, "for the partner", true, json!({})).await;
    let origin = format!("hubspot:{m}");
    let copy = common::eventually("the copy is on the partner deal", WAIT, || async {
        let c = copies_of(&duo.pa, &origin).await;
        c.iter()
            .find(|n| on_deal(n, &p))
            .and_then(|n| n["id"].as_str().map(str::to_owned))
    })
    .await;
    let store = d.store.clone();
    d.shutdown().await;
    let left = pair(&store, link.id, &origin).await.expect("pair recorded");
    drop(store);
    assert_eq!(
        (left.state.label(), left.partner_object_id.as_deref()),
        ("creating", None),
        "the state a kill leaves: {left:?}"
    );

    duo.pa.set_faults(json!({})).await;
    // A partner user sees the copy on the deal and deletes it.
    let del = duo
        .pa
        .delete(&format!("/crm/v3/objects/notes/{copy}"))
        .await;
    assert_eq!(del.status, 204, "{}", del.text);
    let archived = duo
        .pa
        .get(&format!(
            "/crm/v3/objects/notes/{origin}?idProperty=dealsync_origin&archived=true"
        ))
        .await;
    assert_eq!(
        archived.body["id"].as_str(),
        Some(copy.as_str()),
        "the archived copy still holds its origin: {}",
        archived.text
    );

    let d = duo.start(settings(&duo)).await;
    let o = settled(&d.store, link.id, &origin).await;
    assert_eq!(o.state, ObjectState::Removed, "{o:?}");
    assert_eq!(o.partner_object_id.as_deref(), Some(copy.as_str()));
    assert!(
        copies_of(&duo.pa, &origin).await.is_empty(),
        "no new copy was made"
    );
    common::eventually("the HubSpot original is deleted", WAIT, || async {
        (!note_live(&duo.hs, &m).await).then_some(())
    })
    .await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reshared_message_whose_copy_was_never_made_is_copied_once() {
    let duo = common::Duo::new().await;
    let d = duo.start(settings(&duo)).await;
    let (link, h, p) = linked(&duo, &d.store).await;
    let m = note(&duo.hs, &h, "shared, then not, then again", true, json!({})).await;
    let origin = format!("hubspot:{m}");
    let first = common::eventually("the first copy is made", WAIT, || async {
        pair(&d.store, link.id, &origin)
            .await
            .filter(|o| o.state == ObjectState::Active)
            .and_then(|o| o.partner_object_id)
    })
    .await;
    // Made private: dealsync removes its copy (archived, still holding the origin).
    let a = duo
        .hs
        .patch(
            &format!("/crm/v3/objects/notes/{m}"),
            json!({"properties": {dealsync::properties::VISIBILITY: "private"}}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    common::eventually("the copy is removed", WAIT, || async {
        (!note_live(&duo.pa, &first).await).then_some(())
    })
    .await;
    let unshared = common::eventually("the pair is unshared", WAIT, || async {
        pair(&d.store, link.id, &origin)
            .await
            .filter(|o| o.state == ObjectState::Unshared)
    })
    .await;
    let store = d.store.clone();
    d.shutdown().await;

    // Shared again, and dealsync died after saying it was making the copy, before the upsert.
    let mut creating = unshared;
    creating.state = ObjectState::Creating;
    store
        .call(move |c| store::record_creating(c, &[(link.id, creating)]))
        .await
        .expect("record creating");
    drop(store);
    let a = duo
        .hs
        .patch(
            &format!("/crm/v3/objects/notes/{m}"),
            json!({"properties": {dealsync::properties::VISIBILITY: "shared"}}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);

    let d = duo.start(settings(&duo)).await;
    let o = settled(&d.store, link.id, &origin).await;
    assert_eq!(o.state, ObjectState::Active, "{o:?}");
    let copies = copies_of(&duo.pa, &origin).await;
    assert_eq!(copies.len(), 1, "one new copy");
    assert!(on_deal(&copies[0], &p));
    assert_ne!(copies[0]["id"].as_str(), Some(first.as_str()));
    assert!(note_live(&duo.hs, &m).await, "the original is kept");
    d.shutdown().await;
}
