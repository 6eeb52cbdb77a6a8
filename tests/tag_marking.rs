//! Shared messages with a portal that refuses custom note properties (issue 17): the sandbox
//! plays such a portal (`/features`), `marking = "auto"` falls back to tags there, and:
//! messages (with an attachment, and a comment) flow each way (tag portal ↔ property portal,
//! and tag ↔ tag) without echo, edits and un-sharing propagate, a HubSpot message names its partner with `@name` on a deal with
//! several partners, a private note without the tag is never fetched (the sandbox counts the
//! bodies it serves), a copy whose create answer was lost is found by its footer's `ref:` and
//! not made twice (also while search still lags), and the bad inputs: the tag anywhere but
//! the start, a body that is only the tag, odd HTML, a message too long to carry the tag.

mod common;

use std::time::Duration;

use common::notes::{
    bodies_served, notes, origin, plain_note as write, prop, refuse_note_properties,
};
use common::Portal;
use dealsync::daemon::DaemonHandle;
use dealsync::engine::messages::MessageSettings;
use dealsync::sandbox::SandboxHandle;
use dealsync::store::{self, ObjectState, Store};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

struct World {
    sb: SandboxHandle,
    hs: Portal,
    pa: Portal,
    pb: Portal,
    dir: tempfile::TempDir,
}

impl World {
    /// Three portals; the named ones refuse custom note properties (tag marking).
    async fn new(tag_portals: &[&str]) -> World {
        let sb = common::unlimited_sandbox().await;
        for name in tag_portals {
            refuse_note_properties(&sb, name);
        }
        common::setup_portals(&sb, &["hubspot", "partner-a", "partner-b"]).await;
        World {
            hs: common::portal(&sb, "hubspot"),
            pa: common::portal(&sb, "partner-a"),
            pb: common::portal(&sb, "partner-b"),
            sb,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    async fn start_with(&self, messages: MessageSettings) -> DaemonHandle {
        let mut settings = common::settings(self.dir.path());
        settings.messages = messages;
        // Waiting for search to settle counts attempts; a lost answer must not exhaust them.
        settings.max_attempts = 20;
        DaemonHandle::start(common::parts(
            self.dir.path(),
            common::conn(&self.sb, "hubspot"),
            vec![
                common::conn(&self.sb, "partner-a"),
                common::conn(&self.sb, "partner-b"),
            ],
            settings,
        ))
        .await
        .expect("daemon")
    }

    /// The sandbox's search has no lag unless a test sets one, so notes need not settle long.
    async fn start(&self) -> DaemonHandle {
        self.start_with(MessageSettings {
            search_settle: Duration::from_millis(300),
            ..Default::default()
        })
        .await
    }

    /// A partner deal linked to `hubspot_deal`.
    async fn link(&self, store: &Store, partner: &Portal, hubspot_deal: &str) -> String {
        common::link_new_deal(store, partner, hubspot_deal).await
    }
}

async fn edit(p: &Portal, id: &str, props: Value) {
    let a = p
        .patch(
            &format!("/crm/v3/objects/notes/{id}"),
            json!({ "properties": props }),
        )
        .await;
    assert_eq!(a.status, 200, "patch note {id}: {}", a.text);
}

/// The live notes of `p` that name `from` as their origin.
async fn copies(p: &Portal, from: &str) -> Vec<Value> {
    notes(p)
        .await
        .into_iter()
        .filter(|n| origin(n).as_deref() == Some(from))
        .collect()
}

async fn one_copy(p: &Portal, from: &str, what: &str, check: impl Fn(&str) -> bool) -> Value {
    common::eventually(
        &format!("{what} ({from} in {})", p.info.name),
        WAIT,
        || async {
            let c = copies(p, from).await;
            (c.len() == 1 && check(prop(&c[0], "hs_note_body").unwrap_or_default()))
                .then(|| c[0].clone())
        },
    )
    .await
}

/// Every job done: nothing queued or running.
async fn drained(store: &Store) {
    common::eventually("the queue drains", WAIT, || {
        let s = store.clone();
        async move {
            let q = s
                .call(|c| Ok(store::queue_stats(c)?.0))
                .await
                .expect("queue");
            (q == 0).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_portal_and_a_property_portal_share_each_way_and_private_notes_are_never_read() {
    let w = World::new(&["partner-a"]).await;
    let d = w.start().await;
    let h = w.hs.create_deal(json!({"dealname": "Shared deal"})).await;
    let p = w.link(&d.store, &w.pa, &h).await;

    let private = write(&w.pa, &p, "<p>Margin is thin, PRIVTAG-1</p>", json!({})).await;
    let mention = write(
        &w.pa,
        &p,
        "<p>We never said #shared here, PRIVTAG-2</p>",
        json!({}),
    )
    .await;
    let f1 = common::notes::upload(&w.pa, "plan.pdf", b"partner plan".to_vec()).await;
    let m1 = write(
        &w.pa,
        &p,
        "<p>#Shared Kick-off on Monday</p>",
        json!({ "hs_attachment_ids": f1 }),
    )
    .await;
    let c1 = one_copy(
        &w.hs,
        &format!("partner-a:{m1}"),
        "the copy, without the tag",
        |b| b == "<p>Kick-off on Monday</p>",
    )
    .await;
    assert_eq!(prop(&c1, dealsync::properties::VISIBILITY), Some("shared"));
    let files = common::notes::attachments(&c1);
    assert_eq!(files.len(), 1, "the attachment came along: {c1}");
    assert_eq!(
        common::notes::file_content(&w.hs, &files[0]).await,
        b"partner plan"
    );

    let m2 = common::notes::note(&w.hs, &h, "<p>Pricing call moved</p>", true, json!({})).await;
    let c2 = one_copy(
        &w.pa,
        &format!("hubspot:{m2}"),
        "the copy, tagged with a footer",
        |b| b.starts_with("<p>#shared Pricing call moved</p>") && b.contains("ref:hubspot:"),
    )
    .await;
    let c2_body = prop(&c2, "hs_note_body").unwrap_or_default().to_owned();
    assert!(
        c2_body.contains("To answer, write a note that starts with #shared"),
        "the footer says how to answer: {c2_body}"
    );
    // A comment on HubSpot's side arrives as a message whose footer says it is a reply.
    let r2 = common::notes::note(
        &w.hs,
        &h,
        "<p>Agenda attached later</p>",
        true,
        json!({ dealsync::properties::REPLY_TO: m2 }),
    )
    .await;
    one_copy(
        &w.pa,
        &format!("hubspot:{r2}"),
        "the comment, said to be a reply",
        |b| {
            b.starts_with("<p>#shared Agenda attached later</p>")
                && b.contains("in reply to an earlier message")
        },
    )
    .await;
    drained(&d.store).await;
    let before = (
        w.hs.counters().await["writes"].clone(),
        w.pa.counters().await["writes"].clone(),
    );

    // An edit of the tag portal's copy flows back without the tag and footer.
    edit(
        &w.pa,
        c2["id"].as_str().unwrap(),
        json!({ "hs_note_body": c2_body.replace("Pricing call moved", "Pricing call moved to Friday") }),
    )
    .await;
    common::eventually("the original takes the copy's edit", WAIT, || async {
        let n =
            w.hs.get(&format!(
                "/crm/v3/objects/notes/{m2}?properties=hs_note_body"
            ))
            .await;
        (prop(&n.body, "hs_note_body") == Some("<p>Pricing call moved to Friday</p>")).then_some(())
    })
    .await;
    // An edit of the property portal's copy reaches the tag portal's original, tag kept.
    edit(
        &w.hs,
        c1["id"].as_str().unwrap(),
        json!({ "hs_note_body": "<p>Kick-off on Tuesday</p>" }),
    )
    .await;
    common::eventually(
        "the tagged original takes the edit, still shared",
        WAIT,
        || async {
            let n =
                w.pa.get(&format!(
                    "/crm/v3/objects/notes/{m1}?properties=hs_note_body"
                ))
                .await;
            (prop(&n.body, "hs_note_body") == Some("<p>#shared Kick-off on Tuesday</p>"))
                .then_some(())
        },
    )
    .await;
    drained(&d.store).await;

    // No echo: a few more rounds of polling write nothing anywhere.
    let after = (
        w.hs.counters().await["writes"].clone(),
        w.pa.counters().await["writes"].clone(),
    );
    let polls = w.pa.counters().await["total"].as_u64().unwrap_or(0);
    common::eventually("more polls", WAIT, || async {
        (w.pa.counters().await["total"].as_u64().unwrap_or(0) > polls + 20).then_some(())
    })
    .await;
    drained(&d.store).await;
    assert_eq!(
        after,
        (
            w.hs.counters().await["writes"].clone(),
            w.pa.counters().await["writes"].clone()
        ),
        "nothing written once both sides agree (before the edits: {before:?})"
    );

    // The private note was never fetched; the one that only mentions the tag was a search
    // candidate, read and dropped; neither reached HubSpot's portal.
    let served = bodies_served(&w.pa).await;
    // /metrics counts the bodies read to decide: every one the sandbox served, at least.
    let metrics = dealsync::metrics::render(d.engine.metrics(), &Default::default());
    let counted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("dealsync_note_bodies_read_total "))
        .and_then(|v| v.parse().ok())
        .expect("the metric is rendered");
    assert!(
        counted as usize >= served.len() && counted > 0,
        "{counted} for {served:?}"
    );
    assert!(
        !served.contains(&private),
        "a private note's body was read: {served:?}"
    );
    assert!(
        served.contains(&mention),
        "the mention is a candidate: {served:?}"
    );
    let hs_text = serde_json::to_string(&notes(&w.hs).await).unwrap();
    assert!(
        !hs_text.contains("PRIVTAG"),
        "a private note leaked: {hs_text}"
    );
    assert_eq!(copies(&w.hs, &format!("partner-a:{m1}")).await.len(), 1);
    assert_eq!(copies(&w.pa, &format!("hubspot:{m2}")).await.len(), 1);

    // Taking the tag off the original unshares it: its copy goes.
    edit(
        &w.pa,
        &m1,
        json!({ "hs_note_body": "<p>Kick-off on Tuesday</p>" }),
    )
    .await;
    common::eventually("the unshared message's copy is deleted", WAIT, || async {
        copies(&w.hs, &format!("partner-a:{m1}"))
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    // Deleting the property portal's original deletes the tagged copy.
    let del = w.hs.delete(&format!("/crm/v3/objects/notes/{m2}")).await;
    assert_eq!(del.status, 204);
    d.store
        .call(|c| {
            let ids: Vec<i64> = c
                .prepare("SELECT id FROM links")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            store::enqueue_now(c, &ids, store::JobReason::Sweep)
        })
        .await
        .unwrap();
    common::eventually("the deleted original's copy is deleted", WAIT, || async {
        copies(&w.pa, &format!("hubspot:{m2}"))
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_portal_on_tags_a_hubspot_message_names_its_partner() {
    let w = World::new(&["hubspot", "partner-a", "partner-b"]).await;
    let d = w.start().await;
    let h = w.hs.create_deal(json!({"dealname": "Two partners"})).await;
    w.link(&d.store, &w.pa, &h).await;
    let pb = w.link(&d.store, &w.pb, &h).await;

    let for_a = write(&w.hs, &h, "<p>#shared @partner-a Only for A</p>", json!({})).await;
    let untargeted = write(&w.hs, &h, "<p>#shared For whom?</p>", json!({})).await;
    let from_b = write(&w.pb, &pb, "#shared Hello from B", json!({})).await;

    one_copy(
        &w.pa,
        &format!("hubspot:{for_a}"),
        "A gets its message",
        |b| b.starts_with("<p>#shared Only for A</p>"),
    )
    .await;
    let on_hs = one_copy(
        &w.hs,
        &format!("partner-b:{from_b}"),
        "B's message on HubSpot's deal",
        |b| b.starts_with("#shared Hello from B") && b.contains("from partner-b"),
    )
    .await;
    common::wait_object(&d.store, "the untargeted message waits for a target", |o| {
        o.origin == format!("hubspot:{untargeted}") && o.state == ObjectState::NeedsTarget
    })
    .await;
    drained(&d.store).await;
    let on_b = notes(&w.pb).await;
    assert!(
        on_b.iter()
            .all(|n| origin(n).as_deref() != Some(&format!("hubspot:{for_a}"))),
        "B never gets A's message"
    );
    let on_a = notes(&w.pa).await;
    assert!(
        on_a.iter().all(|n| !prop(n, "hs_note_body")
            .unwrap_or_default()
            .contains("Hello from B")
            && !prop(n, "hs_note_body")
                .unwrap_or_default()
                .contains("For whom")),
        "A gets neither B's message nor the untargeted one: {on_a:?}"
    );
    assert!(
        on_a.iter().all(|n| origin(n).as_deref()
            != Some(&format!(
                "hubspot:{}",
                on_hs["id"].as_str().unwrap_or_default()
            ))),
        "B's message is never copied on from HubSpot to A"
    );

    // Naming the partner sends it.
    edit(
        &w.hs,
        &untargeted,
        json!({ "hs_note_body": "<p>#shared @partner-b For whom?</p>" }),
    )
    .await;
    one_copy(
        &w.pb,
        &format!("hubspot:{untargeted}"),
        "named, it goes to B",
        |b| b.starts_with("<p>#shared For whom?</p>"),
    )
    .await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_whose_create_answer_was_lost_is_found_by_its_ref_even_while_search_lags() {
    let w = World::new(&["partner-a"]).await;
    // Search shows the portal as it was 1.5 s ago: the copy is not a candidate at first.
    w.pa.set_faults(json!({
        "error_after_write": 1.0,
        "search_lag_ms": 1500,
        "paths": ["/crm/objects/2026-09/notes/batch/create"],
    }))
    .await;
    let d = w
        .start_with(MessageSettings {
            search_settle: Duration::from_secs(3),
            ..Default::default()
        })
        .await;
    let h = w.hs.create_deal(json!({"dealname": "Shared deal"})).await;
    let p = w.link(&d.store, &w.pa, &h).await;
    let m = common::notes::note(&w.hs, &h, "written once", true, json!({})).await;
    let from = format!("hubspot:{m}");
    common::eventually("the copy was created and its answer lost", WAIT, || async {
        let c = w.pa.counters().await;
        (c["endpoints"]["POST /crm/objects/2026-09/notes/batch/create"].as_u64() >= Some(1))
            .then_some(())
    })
    .await;
    w.pa.set_faults(json!({ "search_lag_ms": 1500 })).await;
    let pair = common::wait_object(&d.store, "the pair is recorded once found", |o| {
        o.origin == from && o.state == ObjectState::Active
    })
    .await;
    let found = copies(&w.pa, &from).await;
    assert_eq!(found.len(), 1, "exactly one copy: {found:?}");
    assert_eq!(pair.partner_object_id.as_deref(), found[0]["id"].as_str());
    let on_deal = found[0]["associations"]["deals"]["results"][0]["id"].as_str();
    assert_eq!(on_deal, Some(p.as_str()), "created on its deal");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_bodies_in_a_tag_portal() {
    let w = World::new(&["partner-a"]).await;
    let d = w.start().await;
    let h = w.hs.create_deal(json!({"dealname": "Shared deal"})).await;
    let p = w.link(&d.store, &w.pa, &h).await;

    let only = write(&w.pa, &p, "#shared", json!({})).await;
    let html = write(
        &w.pa,
        &p,
        "<div><span>&nbsp;#SHARED</span> styled</div>",
        json!({}),
    )
    .await;
    let late = write(
        &w.pa,
        &p,
        "<p>intro</p><p>#shared not first PRIVTAG-3</p>",
        json!({}),
    )
    .await;
    one_copy(
        &w.hs,
        &format!("partner-a:{only}"),
        "a body that is only the tag: an empty message",
        |b| b.is_empty(),
    )
    .await;
    one_copy(
        &w.hs,
        &format!("partner-a:{html}"),
        "the tag in odd HTML",
        |b| b == "<div><span>&nbsp;</span> styled</div>",
    )
    .await;
    // A message too long to carry the tag and footer into the tag portal is held, with why.
    let long = format!("<p>{}</p>", "x".repeat(65_500));
    let big = common::notes::note(&w.hs, &h, &long, true, json!({})).await;
    let held = common::wait_object(&d.store, "the long message is held with the reason", |o| {
        o.origin == format!("hubspot:{big}") && o.state == ObjectState::Skipped
    })
    .await;
    assert!(
        held.note
            .as_deref()
            .unwrap_or_default()
            .contains("too long"),
        "{held:?}"
    );
    drained(&d.store).await;
    assert!(copies(&w.pa, &format!("hubspot:{big}")).await.is_empty());
    assert!(
        copies(&w.hs, &format!("partner-a:{late}")).await.is_empty(),
        "the tag must come first"
    );
    let hs_text = serde_json::to_string(&notes(&w.hs).await).unwrap();
    assert!(!hs_text.contains("PRIVTAG"), "a private note leaked");
    d.shutdown().await;
}
