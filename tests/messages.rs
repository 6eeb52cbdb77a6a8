//! Shared messages, comments and attachments end to end against the sandbox over loopback:
//! each way, threads each way, attachments added and deleted each way (the file gone on both
//! sides), edits, deletions, un-sharing, isolation between two partners of one HubSpot deal,
//! copies never duplicated when a create succeeds but its answer is lost, no echo, and the bad
//! inputs (unreadable or oversized attachments, a reply to an unknown message).

mod common;

use common::notes::{attachments, file_content, file_live, note, notes, prop, upload};

use std::collections::HashMap;
use std::time::Duration;

use dealsync::crm::RetryPolicy;
use dealsync::daemon::{DaemonHandle, DaemonParts, PortalConn, WebhookParts};
use dealsync::engine::messages::MessageSettings;
use dealsync::engine::{FieldKind, FieldSpec, Settings};
use dealsync::sandbox::SandboxHandle;
use dealsync::store::{self, Store};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

pub struct World {
    pub sb: SandboxHandle,
    pub hs: common::Portal,
    pub pa: common::Portal,
    pub pb: common::Portal,
    pub dir: tempfile::TempDir,
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_retries: 2,
        min_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        timeout: Duration::from_secs(10),
    }
}

impl World {
    async fn new() -> World {
        let sb = common::unlimited_sandbox().await;
        let w = World {
            hs: common::portal(&sb, "hubspot"),
            pa: common::portal(&sb, "partner-a"),
            pb: common::portal(&sb, "partner-b"),
            sb,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        common::setup_portals(&w.sb, &["hubspot", "partner-a", "partner-b"]).await;
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

    fn parts(&self, messages: MessageSettings, sweep: Duration, webhooks: bool) -> DaemonParts {
        DaemonParts {
            store_path: self.dir.path().join("dealsync.db"),
            hubspot: self.conn(&self.hs),
            partners: vec![self.conn(&self.pa), self.conn(&self.pb)],
            settings: Settings {
                fields: vec![FieldSpec::both_ways(
                    "dealname",
                    "dealname",
                    "dealname",
                    FieldKind::Text,
                )],
                stage_maps: HashMap::new(),
                batch_size: 100,
                workers: 2,
                max_attempts: 4,
                retry_base: Duration::from_millis(100),
                retry_max: Duration::from_millis(400),
                dead_letter_path: self.dead_letter_path(),
                mass_deletion: Default::default(),
                messages,
                closed_stages: Default::default(),
                registration: Default::default(),
                notify: Default::default(),
            },
            poll_interval: Duration::from_millis(200),
            poll_overlap: Duration::from_secs(5),
            sweep_interval: sweep,
            retry: fast_retry(),
            drain: Duration::from_secs(10),
            webhooks: webhooks.then(|| WebhookParts {
                listen: "127.0.0.1:0".parse().unwrap(),
                public_url: None,
                max_body: dealsync::ingest::webhook::DEFAULT_MAX_BODY,
                secrets: [&self.hs, &self.pa, &self.pb]
                    .iter()
                    .map(|p| (p.info.name.clone(), p.info.webhook_secret.clone()))
                    .collect(),
                app: Default::default(),
                healthy_poll_interval: Duration::from_millis(200),
                quiet_after: Duration::from_secs(600),
            }),
        }
    }

    /// A daemon that also takes the portals' webhooks (note deletions arrive only this way,
    /// or with the sweep).
    async fn start_with_webhooks(&self) -> DaemonHandle {
        let d = DaemonHandle::start(self.parts(
            MessageSettings::default(),
            Duration::from_secs(3600),
            true,
        ))
        .await
        .expect("daemon");
        let addr = d.webhook_addr.expect("listener");
        for p in [&self.hs, &self.pa, &self.pb] {
            let a = p
                .control(
                    reqwest::Method::PUT,
                    "/webhooks",
                    Some(json!({
                        "target_url": format!("http://{addr}/webhooks/{}", p.info.name),
                        "retry_base_ms": 20,
                    })),
                )
                .await;
            assert_eq!(a.status, 200, "webhook settings: {}", a.text);
        }
        d
    }

    fn dead_letter_path(&self) -> std::path::PathBuf {
        self.dir.path().join("dead-letters.jsonl")
    }

    async fn start(&self) -> DaemonHandle {
        self.start_with(MessageSettings::default(), Duration::from_secs(3600))
            .await
    }

    async fn start_with(&self, m: MessageSettings, sweep: Duration) -> DaemonHandle {
        DaemonHandle::start(self.parts(m, sweep, false))
            .await
            .expect("daemon")
    }

    /// A deal on each side, linked.
    async fn link(&self, store: &Store, partner: &common::Portal, hubspot_deal: &str) -> String {
        common::link_new_deal(store, partner, hubspot_deal).await
    }
}

async fn patch_note(p: &common::Portal, id: &str, props: Value) {
    let a = p
        .patch(
            &format!("/crm/v3/objects/notes/{id}"),
            json!({ "properties": props }),
        )
        .await;
    assert_eq!(a.status, 200, "patch note {id}: {}", a.text);
}

/// The notes of a portal copied from `origin`.
async fn copies_of(p: &common::Portal, origin: &str) -> Vec<Value> {
    notes(p)
        .await
        .into_iter()
        .filter(|n| prop(n, dealsync::properties::ORIGIN) == Some(origin))
        .collect()
}

/// Waits until exactly one copy of `origin` exists in `p` and `check` holds for it.
async fn wait_copy(
    p: &common::Portal,
    origin: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    common::eventually(
        &format!("{what} ({origin} in {})", p.info.name),
        WAIT,
        || async {
            let c = copies_of(p, origin).await;
            (c.len() == 1 && check(&c[0])).then(|| c[0].clone())
        },
    )
    .await
}

fn writes(counters: &Value) -> u64 {
    counters["writes"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_messages_and_attachments_flow_each_way_without_echo() {
    each_way_without_echo(false).await;
}

/// The same with webhooks on: note events for our own copies are echoes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_webhooks_our_copies_coming_back_are_echoes_too() {
    each_way_without_echo(true).await;
}

async fn each_way_without_echo(webhooks: bool) {
    let w = World::new().await;
    let d = if webhooks {
        w.start_with_webhooks().await
    } else {
        w.start().await
    };
    let h = w.hs.create_deal(json!({"dealname": "Shared deal"})).await;
    let p = w.link(&d.store, &w.pa, &h).await;

    // Partner → HubSpot, with an attachment.
    let f1 = upload(&w.pa, "plan.pdf", b"partner plan v1".to_vec()).await;
    let m1 = note(
        &w.pa,
        &p,
        "<p>Kick-off notes</p>",
        true,
        json!({"hs_attachment_ids": f1}),
    )
    .await;
    let c1 = wait_copy(
        &w.hs,
        &format!("partner-a:{m1}"),
        "copy with its file, on the linked deal",
        // The upsert and the association are two calls: wait for both.
        |n| {
            prop(n, "hs_note_body") == Some("<p>Kick-off notes</p>")
                && attachments(n).len() == 1
                && n["associations"]["deals"]["results"][0]["id"].as_str() == Some(h.as_str())
        },
    )
    .await;
    let copied = &attachments(&c1)[0];
    assert_ne!(copied, &f1, "a copy gets its own file");
    assert_eq!(file_content(&w.hs, copied).await, b"partner plan v1");
    assert_eq!(prop(&c1, dealsync::properties::VISIBILITY), Some("shared"));
    assert_eq!(
        c1["associations"]["deals"]["results"][0]["id"].as_str(),
        Some(h.as_str()),
        "the copy is on the linked deal: {c1}"
    );

    // HubSpot → partner, with an attachment.
    let f2 = upload(&w.hs, "quote.xlsx", b"hubspot quote".to_vec()).await;
    let m2 = note(
        &w.hs,
        &h,
        "Pricing call moved",
        true,
        json!({"hs_attachment_ids": f2}),
    )
    .await;
    let c2 = wait_copy(&w.pa, &format!("hubspot:{m2}"), "copy with its file", |n| {
        prop(n, "hs_note_body") == Some("Pricing call moved") && attachments(n).len() == 1
    })
    .await;
    assert_eq!(
        file_content(&w.pa, &attachments(&c2)[0]).await,
        b"hubspot quote"
    );

    // Both sides settle: every note poller passes the newest note, nothing queued, and then
    // nothing more is written anywhere (our copies coming back are echoes).
    let settle = || async {
        let mut newest = [0i64; 2];
        for (i, portal) in [&w.hs, &w.pa].into_iter().enumerate() {
            for n in notes(portal).await {
                let ts = n["updatedAt"].as_str().and_then(dealsync::crm::parse_ms);
                newest[i] = newest[i].max(ts.unwrap_or(0));
            }
        }
        common::eventually(
            "note pollers pass the newest note and the queue drains",
            WAIT,
            || {
                let s = d.store.clone();
                async move {
                    let (a, b, q) = s
                        .call(|c| {
                            Ok((
                                store::cursor(c, "hubspot/notes")?,
                                store::cursor(c, "partner-a/notes")?,
                                store::queue_stats(c)?.0,
                            ))
                        })
                        .await
                        .unwrap();
                    (a.unwrap_or(0) >= newest[0] && b.unwrap_or(0) >= newest[1] && q == 0)
                        .then_some(())
                }
            },
        )
        .await;
    };
    settle().await;
    let before = (
        writes(&w.hs.counters().await),
        writes(&w.pa.counters().await),
    );
    // Two more full polls on both sides.
    let polls = |s: Store| async move {
        s.call(|c| {
            let mut st =
                c.prepare("SELECT SUM(changes_seen), MAX(last_poll_ok) FROM portal_health")?;
            Ok(st.query_row([], |r| r.get::<_, Option<i64>>(1))?)
        })
        .await
        .unwrap()
        .unwrap_or(0)
    };
    let t0 = polls(d.store.clone()).await;
    common::eventually("two more polls", WAIT, || {
        let s = d.store.clone();
        async move { (polls(s).await > t0 + 400).then_some(()) }
    })
    .await;
    assert_eq!(
        before,
        (
            writes(&w.hs.counters().await),
            writes(&w.pa.counters().await)
        ),
        "no echo: nothing written once both sides agree"
    );
    assert_eq!(copies_of(&w.hs, &format!("partner-a:{m1}")).await.len(), 1);
    assert_eq!(copies_of(&w.pa, &format!("hubspot:{m2}")).await.len(), 1);
    // No copy of a copy.
    for n in notes(&w.pa).await.iter().chain(notes(&w.hs).await.iter()) {
        let origin = prop(n, dealsync::properties::ORIGIN).unwrap_or("");
        assert!(
            !origin.contains(&format!(":{}", c1["id"].as_str().unwrap()))
                && !origin.contains(&format!(":{}", c2["id"].as_str().unwrap())),
            "a copy was copied back: {n}"
        );
    }
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comment_threads_sync_each_way() {
    let w = World::new().await;
    let d = w.start().await;
    let h = w.hs.create_deal(json!({"dealname": "Shared deal"})).await;
    let p = w.link(&d.store, &w.pa, &h).await;

    // A partner message, then a HubSpot comment on its copy.
    let m = note(&w.pa, &p, "Can we start in May?", true, json!({})).await;
    let copy = wait_copy(&w.hs, &format!("partner-a:{m}"), "message copied", |_| true).await;
    let copy_id = copy["id"].as_str().unwrap().to_owned();
    let r = note(
        &w.hs,
        &h,
        "Yes, May works",
        true,
        json!({dealsync::properties::REPLY_TO: copy_id}),
    )
    .await;
    wait_copy(
        &w.pa,
        &format!("hubspot:{r}"),
        "comment copied as a reply to the original",
        |n| {
            prop(n, dealsync::properties::REPLY_TO) == Some(m.as_str())
                && prop(n, "hs_note_body") == Some("Yes, May works")
        },
    )
    .await;

    // A HubSpot message, then a partner comment on its copy, then a reply to that comment.
    let m2 = note(&w.hs, &h, "Legal review needed", true, json!({})).await;
    let c2 = wait_copy(&w.pa, &format!("hubspot:{m2}"), "message copied", |_| true).await;
    let r2 = note(
        &w.pa,
        &p,
        "Sending the contract today",
        true,
        json!({dealsync::properties::REPLY_TO: c2["id"]}),
    )
    .await;
    let rc = wait_copy(
        &w.hs,
        &format!("partner-a:{r2}"),
        "comment copied with its thread",
        |n| prop(n, dealsync::properties::REPLY_TO) == Some(m2.as_str()),
    )
    .await;
    let r3 = note(
        &w.hs,
        &h,
        "Thanks",
        true,
        json!({dealsync::properties::REPLY_TO: rc["id"]}),
    )
    .await;
    wait_copy(
        &w.pa,
        &format!("hubspot:{r3}"),
        "reply to a reply keeps the thread",
        |n| prop(n, dealsync::properties::REPLY_TO) == Some(r2.as_str()),
    )
    .await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_deletions_and_unsharing_propagate() {
    let w = World::new().await;
    // Deletions leave search and associations: webhooks (or the sweep, below) bring them.
    let d = w.start_with_webhooks().await;
    let h = w.hs.create_deal(json!({"dealname": "Shared deal"})).await;
    let p = w.link(&d.store, &w.pa, &h).await;

    let m = note(&w.pa, &p, "v1", true, json!({})).await;
    let origin = format!("partner-a:{m}");
    let c = wait_copy(&w.hs, &origin, "copied", |_| true).await;
    let cid = c["id"].as_str().unwrap().to_owned();
    // Edit the original: the copy follows.
    patch_note(&w.pa, &m, json!({"hs_note_body": "v2 from the partner"})).await;
    wait_copy(&w.hs, &origin, "edit reaches the copy", |n| {
        prop(n, "hs_note_body") == Some("v2 from the partner")
    })
    .await;
    // Edit the copy: the original follows.
    patch_note(&w.hs, &cid, json!({"hs_note_body": "v3 from HubSpot"})).await;
    common::eventually("edit of the copy reaches the original", WAIT, || async {
        let a =
            w.pa.get(&format!(
                "/crm/v3/objects/notes/{m}?properties=hs_note_body"
            ))
            .await;
        (a.body["properties"]["hs_note_body"] == "v3 from HubSpot").then_some(())
    })
    .await;

    // Un-share the original: the copy goes.
    patch_note(
        &w.pa,
        &m,
        json!({dealsync::properties::VISIBILITY: "private"}),
    )
    .await;
    common::eventually("un-shared message's copy is deleted", WAIT, || async {
        copies_of(&w.hs, &origin).await.is_empty().then_some(())
    })
    .await;
    common::wait_object(&d.store, "pair recorded as unshared", |o| {
        o.origin == origin && o.state == dealsync::store::ObjectState::Unshared
    })
    .await;
    // Shared again: a new copy, with the current text.
    patch_note(
        &w.pa,
        &m,
        json!({dealsync::properties::VISIBILITY: "shared"}),
    )
    .await;
    wait_copy(&w.hs, &origin, "re-shared message copied again", |n| {
        prop(n, "hs_note_body") == Some("v3 from HubSpot")
    })
    .await;

    // Delete a HubSpot message: its copy goes.
    let m2 = note(&w.hs, &h, "to be deleted", true, json!({})).await;
    let origin2 = format!("hubspot:{m2}");
    wait_copy(&w.pa, &origin2, "copied", |_| true).await;
    assert_eq!(
        w.hs.delete(&format!("/crm/v3/objects/notes/{m2}"))
            .await
            .status,
        204
    );
    common::eventually("deleted message's copy is deleted", WAIT, || async {
        copies_of(&w.pa, &origin2).await.is_empty().then_some(())
    })
    .await;
    // Delete a copy: the original goes (one message, seen in two CRMs).
    let c = wait_copy(&w.hs, &origin, "copy present", |_| true).await;
    assert_eq!(
        w.hs.delete(&format!(
            "/crm/v3/objects/notes/{}",
            c["id"].as_str().unwrap()
        ))
        .await
        .status,
        204
    );
    common::eventually("deleting the copy deletes the original", WAIT, || async {
        (w.pa.get(&format!("/crm/v3/objects/notes/{m}")).await.status == 404).then_some(())
    })
    .await;
    // A copy made private on its side detaches: nothing is deleted.
    let m3 = note(&w.pa, &p, "keep me", true, json!({})).await;
    let origin3 = format!("partner-a:{m3}");
    let c3 = wait_copy(&w.hs, &origin3, "copied", |_| true).await;
    let c3id = c3["id"].as_str().unwrap().to_owned();
    patch_note(
        &w.hs,
        &c3id,
        json!({dealsync::properties::VISIBILITY: "private"}),
    )
    .await;
    common::wait_object(&d.store, "pair detached", |o| {
        o.origin == origin3 && o.state == dealsync::store::ObjectState::Detached
    })
    .await;
    assert_eq!(
        w.pa.get(&format!("/crm/v3/objects/notes/{m3}"))
            .await
            .status,
        200
    );
    assert_eq!(
        w.hs.get(&format!("/crm/v3/objects/notes/{c3id}"))
            .await
            .status,
        200
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_added_and_deleted_each_way() {
    let w = World::new().await;
    let d = w.start().await;
    let h = w.hs.create_deal(json!({"dealname": "Shared deal"})).await;
    let p = w.link(&d.store, &w.pa, &h).await;
    let m = note(&w.pa, &p, "files", true, json!({})).await;
    let origin = format!("partner-a:{m}");
    let c = wait_copy(&w.hs, &origin, "copied", |_| true).await;
    let cid = c["id"].as_str().unwrap().to_owned();

    // Added on the partner's message: copied to HubSpot.
    let fa = upload(&w.pa, "a.txt", b"from the partner".to_vec()).await;
    patch_note(&w.pa, &m, json!({"hs_attachment_ids": fa})).await;
    let c = wait_copy(&w.hs, &origin, "attachment copied", |n| {
        attachments(n).len() == 1
    })
    .await;
    let fa_copy = attachments(&c)[0].clone();
    // Added on HubSpot's copy: copied to the partner's message.
    let fh = upload(&w.hs, "h.txt", b"from hubspot".to_vec()).await;
    patch_note(
        &w.hs,
        &cid,
        json!({"hs_attachment_ids": format!("{fa_copy};{fh}")}),
    )
    .await;
    let fh_copy = common::eventually("attachment copied to the partner", WAIT, || async {
        let a =
            w.pa.get(&format!(
                "/crm/v3/objects/notes/{m}?properties=hs_attachment_ids"
            ))
            .await;
        let ids = attachments(&a.body);
        (ids.len() == 2).then(|| ids.into_iter().find(|i| i != &fa).unwrap())
    })
    .await;
    assert_eq!(file_content(&w.pa, &fh_copy).await, b"from hubspot");

    // Deleted from HubSpot's message (removed and the file deleted): gone on both sides.
    patch_note(&w.hs, &cid, json!({"hs_attachment_ids": fa_copy})).await;
    assert_eq!(
        w.hs.delete(&format!("/files/v3/files/{fh}")).await.status,
        204
    );
    common::eventually("file deleted on the partner side too", WAIT, || async {
        (!file_live(&w.pa, &fh_copy).await).then_some(())
    })
    .await;
    common::eventually("and removed from the partner's message", WAIT, || async {
        let a =
            w.pa.get(&format!(
                "/crm/v3/objects/notes/{m}?properties=hs_attachment_ids"
            ))
            .await;
        (attachments(&a.body) == vec![fa.clone()]).then_some(())
    })
    .await;
    // Deleted on the partner's side: the HubSpot copy and its file go.
    patch_note(&w.pa, &m, json!({"hs_attachment_ids": ""})).await;
    assert_eq!(
        w.pa.delete(&format!("/files/v3/files/{fa}")).await.status,
        204
    );
    common::eventually("file deleted on HubSpot's side too", WAIT, || async {
        (!file_live(&w.hs, &fa_copy).await).then_some(())
    })
    .await;
    wait_copy(&w.hs, &origin, "and removed from the copy", |n| {
        attachments(n).is_empty()
    })
    .await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_messages_deleted_without_webhooks_are_found_by_the_sweep() {
    let w = World::new().await;
    let d = w
        .start_with(MessageSettings::default(), Duration::from_millis(500))
        .await;
    let h = w.hs.create_deal(json!({"dealname": "Shared deal"})).await;
    let p = w.link(&d.store, &w.pa, &h).await;
    let f = upload(&w.pa, "x.bin", vec![7u8; 1000]).await;
    let m = note(
        &w.pa,
        &p,
        "with file",
        true,
        json!({"hs_attachment_ids": f}),
    )
    .await;
    let c = wait_copy(&w.hs, &format!("partner-a:{m}"), "copied", |n| {
        attachments(n).len() == 1
    })
    .await;
    let copy = attachments(&c)[0].clone();
    // The partner deletes the file in its file manager; the message still names it.
    assert_eq!(
        w.pa.delete(&format!("/files/v3/files/{f}")).await.status,
        204
    );
    common::eventually("the copy's file is deleted", WAIT, || async {
        (!file_live(&w.hs, &copy).await).then_some(())
    })
    .await;
    wait_copy(
        &w.hs,
        &format!("partner-a:{m}"),
        "and leaves the copy",
        |n| attachments(n).is_empty(),
    )
    .await;
    // Without webhooks, a deleted message is found by the sweep too.
    assert_eq!(
        w.pa.delete(&format!("/crm/v3/objects/notes/{m}"))
            .await
            .status,
        204
    );
    common::eventually(
        "the sweep deletes the copy of a deleted message",
        WAIT,
        || async {
            copies_of(&w.hs, &format!("partner-a:{m}"))
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_between_partners_of_one_hubspot_deal() {
    let w = World::new().await;
    let d = w.start().await;
    let h =
        w.hs.create_deal(json!({"dealname": "Best partner wins"}))
            .await;
    let pa = w.link(&d.store, &w.pa, &h).await;
    w.link(&d.store, &w.pb, &h).await;

    // Partner A's message reaches HubSpot and never partner B.
    let ma = note(&w.pa, &pa, "A's pitch", true, json!({})).await;
    wait_copy(
        &w.hs,
        &format!("partner-a:{ma}"),
        "A's message reaches HubSpot",
        |_| true,
    )
    .await;
    // An untargeted HubSpot message goes nowhere and is recorded as needing a target.
    let mu = note(&w.hs, &h, "for whom?", true, json!({})).await;
    common::wait_object(&d.store, "untargeted message needs a target", |o| {
        o.origin == format!("hubspot:{mu}") && o.state == dealsync::store::ObjectState::NeedsTarget
    })
    .await;
    // A targeted one goes to its partner only.
    let mt = note(
        &w.hs,
        &h,
        "for B",
        true,
        json!({dealsync::properties::TARGET: "partner-b"}),
    )
    .await;
    wait_copy(
        &w.pb,
        &format!("hubspot:{mt}"),
        "targeted message reaches B",
        |_| true,
    )
    .await;
    // A HubSpot comment on A's message goes to A only.
    let ca = copies_of(&w.hs, &format!("partner-a:{ma}")).await;
    let rc = note(
        &w.hs,
        &h,
        "reply to A",
        true,
        json!({dealsync::properties::REPLY_TO: ca[0]["id"]}),
    )
    .await;
    wait_copy(&w.pa, &format!("hubspot:{rc}"), "comment reaches A", |_| {
        true
    })
    .await;
    // Let B's link run after all of that, then check B has only what was meant for it.
    common::eventually("queue drains", WAIT, || {
        let s = d.store.clone();
        async move { (s.call(|c| store::queue_stats(c)).await.unwrap().0 == 0).then_some(()) }
    })
    .await;
    let b_notes = notes(&w.pb).await;
    let bodies: Vec<&str> = b_notes
        .iter()
        .filter_map(|n| prop(n, "hs_note_body"))
        .collect();
    assert_eq!(
        bodies,
        vec!["for B"],
        "partner B sees only the message meant for it"
    );
    let a_bodies: Vec<String> = notes(&w.pa)
        .await
        .iter()
        .filter_map(|n| prop(n, "hs_note_body").map(str::to_owned))
        .collect();
    assert!(
        !a_bodies.iter().any(|b| b == "for B" || b == "for whom?"),
        "{a_bodies:?}"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_copied_by_a_run_that_then_failed_is_reused_not_uploaded_again() {
    let w = World::new().await;
    let d = w.start().await;
    let h = w.hs.create_deal(json!({"dealname": "Shared deal"})).await;
    let p = w.link(&d.store, &w.pa, &h).await;
    // The copy's upsert fails (every try, in the client and then in the job) after the
    // attachment went up.
    w.hs.set_faults(json!({"rate_503": 1.0, "paths": ["/crm/objects/2026-09/notes/batch/upsert"]}))
        .await;
    let f = upload(&w.pa, "terms.pdf", b"%PDF terms".to_vec()).await;
    let m = note(
        &w.pa,
        &p,
        "with terms",
        true,
        json!({"hs_attachment_ids": f}),
    )
    .await;
    let origin = format!("partner-a:{m}");
    let file = common::wait_object(
        &d.store,
        "the uploaded copy recorded despite the failure",
        |o| {
            o.kind == "file"
                && o.origin == format!("partner-a:{f}")
                && o.hubspot_object_id.is_some()
        },
    )
    .await;
    w.hs.set_faults(json!({})).await;
    common::wait_object(&d.store, "the message copied once the upsert works", |o| {
        o.origin == origin
            && o.state == dealsync::store::ObjectState::Active
            && o.hubspot_object_id.is_some()
    })
    .await;
    let copy = copies_of(&w.hs, &origin).await;
    assert_eq!(copy.len(), 1);
    assert_eq!(
        prop(&copy[0], "hs_attachment_ids"),
        file.hubspot_object_id.as_deref(),
        "the copy carries the file uploaded by the failed run"
    );
    let uploads = w.hs.counters().await["endpoints"]["POST /files/2026-03/files"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(uploads, 1, "uploaded once");
    d.shutdown().await;
}

/// Isolation over time: an untargeted HubSpot message sent while partner A was the deal's only
/// partner belongs to A's thread; partner B, linked after A was excluded (so again the deal's
/// only active partner), never gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_linked_later_never_gets_an_earlier_partners_untargeted_thread() {
    let w = World::new().await;
    let d = w.start().await;
    let h = w.hs.create_deal(json!({"dealname": "Shared deal"})).await;
    let pa_deal = w.link(&d.store, &w.pa, &h).await;
    let m = note(&w.hs, &h, "FOR-A-ONLY thread", true, json!({})).await;
    let origin = format!("hubspot:{m}");
    wait_copy(&w.pa, &origin, "partner A's copy", |_| true).await;
    let a =
        w.hs.patch(
            &format!("/crm/v3/objects/deals/{h}"),
            json!({"properties": {dealsync::properties::EXCLUDED_PARTNERS: "partner-a"}}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    common::eventually("partner A is excluded", WAIT, || {
        let (s, pd) = (d.store.clone(), pa_deal.clone());
        async move {
            let state: String = s
                .call(move |c| {
                    Ok(c.query_row(
                        "SELECT state FROM links WHERE partner_deal_id = ?1",
                        [&pd],
                        |r| r.get(0),
                    )?)
                })
                .await
                .ok()?;
            (state == "excluded").then_some(())
        }
    })
    .await;
    let pb_deal = w.link(&d.store, &w.pb, &h).await;
    let pb2 = pb_deal.clone();
    d.store
        .call(move |c| {
            let id: i64 = c.query_row(
                "SELECT id FROM links WHERE partner_deal_id = ?1",
                [&pb2],
                |r| r.get(0),
            )?;
            store::enqueue_now(c, &[id], dealsync::store::JobReason::Manual)
        })
        .await
        .unwrap();
    common::wait_object(
        &d.store,
        "partner B's link holds the message for a target",
        |o| o.origin == origin && o.state == dealsync::store::ObjectState::NeedsTarget,
    )
    .await;
    let on_b = notes(&w.pb).await;
    assert!(
        on_b.iter()
            .all(|n| !prop(n, "hs_note_body").unwrap_or("").contains("FOR-A-ONLY")),
        "partner B got partner A's thread: {on_b:?}"
    );
    d.shutdown().await;
}

/// Found by review: a file added to a message already synced, whose attach on the other side
/// fails, must not look removed to the retry (which would delete the partner's own file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_added_to_a_synced_message_survives_a_failed_attach() {
    let w = World::new().await;
    let d = w.start().await;
    let h = w.hs.create_deal(json!({"dealname": "Shared deal"})).await;
    let p = w.link(&d.store, &w.pa, &h).await;
    let m = note(&w.pa, &p, "plain", true, json!({})).await;
    let origin = format!("partner-a:{m}");
    wait_copy(&w.hs, &origin, "the copy", |_| true).await;
    w.hs.set_faults(json!({"rate_503": 1.0, "paths": ["/crm/objects/2026-09/notes/batch/update"]}))
        .await;
    let f = upload(&w.pa, "terms.pdf", b"%PDF terms".to_vec()).await;
    patch_note(&w.pa, &m, json!({"hs_attachment_ids": f})).await;
    common::eventually("the attach failed, retries included", WAIT, || async {
        let c = w.hs.counters().await;
        (c["endpoints"]["POST /crm/objects/2026-09/notes/batch/update"]
            .as_u64()
            .unwrap_or(0)
            >= 3)
            .then_some(())
    })
    .await;
    w.hs.set_faults(json!({})).await;
    wait_copy(&w.hs, &origin, "the copy with the file attached", |c| {
        prop(c, "hs_attachment_ids").is_some()
    })
    .await;
    assert!(
        file_live(&w.pa, &f).await,
        "the partner's own file is there"
    );
    let pn =
        w.pa.get(&format!(
            "/crm/v3/objects/notes/{m}?properties=hs_attachment_ids"
        ))
        .await;
    assert_eq!(
        pn.body["properties"]["hs_attachment_ids"].as_str(),
        Some(f.as_str()),
        "the partner's attachment stays: {}",
        pn.text
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_whose_create_answer_was_lost_is_not_duplicated() {
    let w = World::new().await;
    let d = w.start().await;
    let h = w.hs.create_deal(json!({"dealname": "Shared deal"})).await;
    let p = w.link(&d.store, &w.pa, &h).await;
    // Every create on HubSpot's side is applied and then answered 500: dealsync cannot know
    // its copy exists, and the job runs again (the client does not repeat a create blind).
    w.hs.set_faults(
        json!({"error_after_write": 1.0, "paths": ["/crm/objects/2026-09/notes/batch/create"]}),
    )
    .await;
    let m = note(&w.pa, &p, "written once", true, json!({})).await;
    let origin = format!("partner-a:{m}");
    common::eventually(
        "the copy was written at least once and retried",
        WAIT,
        || async {
            let c = w.hs.counters().await;
            let creates = c["endpoints"]["POST /crm/objects/2026-09/notes/batch/create"]
                .as_u64()
                .unwrap_or(0);
            let updates = c["endpoints"]["POST /crm/objects/2026-09/notes/batch/update"]
                .as_u64()
                .unwrap_or(0);
            // Made once; the next run finds it on the deal and rewrites it instead.
            (creates >= 1 && creates + updates >= 2).then_some(())
        },
    )
    .await;
    w.hs.set_faults(json!({})).await;
    common::wait_object(
        &d.store,
        "pair recorded once the answer gets through",
        |o| {
            o.origin == origin
                && o.state == dealsync::store::ObjectState::Active
                && o.hubspot_object_id.is_some()
        },
    )
    .await;
    assert_eq!(copies_of(&w.hs, &origin).await.len(), 1, "exactly one copy");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_and_oversized_attachments_are_skipped_with_a_reason() {
    let w = World::new().await;
    let d = w
        .start_with(
            MessageSettings {
                max_attachment_bytes: 1000,
                ..Default::default()
            },
            Duration::from_secs(3600),
        )
        .await;
    let h = w.hs.create_deal(json!({"dealname": "Shared deal"})).await;
    let p = w.link(&d.store, &w.pa, &h).await;
    let small = upload(&w.pa, "small.txt", b"ok".to_vec()).await;
    let big = upload(&w.pa, "big.bin", vec![1u8; 5000]).await;
    let m = note(
        &w.pa,
        &p,
        "two files",
        true,
        json!({"hs_attachment_ids": format!("{small};{big}")}),
    )
    .await;
    let c = wait_copy(
        &w.hs,
        &format!("partner-a:{m}"),
        "copied with the small file only",
        |n| attachments(n).len() == 1,
    )
    .await;
    assert_eq!(file_content(&w.hs, &attachments(&c)[0]).await, b"ok");
    let skipped = common::wait_object(&d.store, "big file recorded as skipped", |o| {
        o.origin == format!("partner-a:{big}") && o.state == dealsync::store::ObjectState::Skipped
    })
    .await;
    assert!(
        skipped
            .note
            .as_deref()
            .unwrap_or("")
            .contains("max_attachment_bytes"),
        "{skipped:?}"
    );
    // It shows in status --deal.
    let path = w.dir.path().join("dealsync.db");
    let (hh, dl) = (h.clone(), w.dead_letter_path());
    let deal = tokio::task::spawn_blocking(move || {
        let c = dealsync::status::open(&path).unwrap();
        dealsync::status::deal(&c, &dl, &hh, &["dealname".to_owned()]).unwrap()
    })
    .await
    .unwrap();
    let text = dealsync::status::render_deal(&deal);
    assert!(text.contains("skipped"), "{text}");
    assert!(text.contains("max_attachment_bytes"), "{text}");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_an_unknown_message_waits_then_dead_letters_with_the_reason() {
    let w = World::new().await;
    let d = w.start().await;
    let h = w.hs.create_deal(json!({"dealname": "Shared deal"})).await;
    let p = w.link(&d.store, &w.pa, &h).await;
    // The parent is private: it never becomes a shared message on this deal.
    let parent = note(&w.pa, &p, "internal", false, json!({})).await;
    let ok = note(&w.pa, &p, "normal message", true, json!({})).await;
    let r = note(
        &w.pa,
        &p,
        "reply",
        true,
        json!({dealsync::properties::REPLY_TO: parent}),
    )
    .await;
    // The rest of the deal's messages still sync.
    wait_copy(
        &w.hs,
        &format!("partner-a:{ok}"),
        "other messages sync meanwhile",
        |_| true,
    )
    .await;
    let entry = common::eventually("the reply is dead-lettered", WAIT, || async {
        dealsync::deadletter::read(&w.dead_letter_path())
            .ok()
            .and_then(|(e, _)| e.into_iter().find(|e| e.class == "unknown_parent"))
    })
    .await;
    assert!(
        entry.error.contains(&format!("partner-a:{r}")),
        "{}",
        entry.error
    );
    assert!(
        entry.error.contains("waits for its parent"),
        "{}",
        entry.error
    );
    assert!(
        !entry.error.contains("internal"),
        "no note text in dead letters"
    );
    assert!(copies_of(&w.hs, &format!("partner-a:{r}")).await.is_empty());
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_messages_are_copied_a_bounded_number_per_job_and_each_once() {
    let w = World::new().await;
    let d = w
        .start_with(
            MessageSettings {
                per_job: 3,
                ..Default::default()
            },
            Duration::from_secs(3600),
        )
        .await;
    let h = w.hs.create_deal(json!({"dealname": "Shared deal"})).await;
    let p = w.link(&d.store, &w.pa, &h).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(note(&w.pa, &p, &format!("message {i}"), true, json!({})).await);
    }
    // A comment on the last one, which a later run makes.
    let last = ids.last().unwrap().clone();
    let r = note(
        &w.pa,
        &p,
        "comment",
        true,
        json!({dealsync::properties::REPLY_TO: last}),
    )
    .await;
    common::eventually("every message copied", WAIT, || async {
        let all = notes(&w.hs).await;
        ids.iter()
            .chain(std::iter::once(&r))
            .all(|id| {
                all.iter()
                    .filter(|n| {
                        prop(n, dealsync::properties::ORIGIN)
                            == Some(format!("partner-a:{id}").as_str())
                    })
                    .count()
                    == 1
            })
            .then_some(())
    })
    .await;
    let all = notes(&w.hs).await;
    assert_eq!(all.len(), 11, "one copy each");
    let last_copy = copies_of(&w.hs, &format!("partner-a:{last}")).await;
    let comment = copies_of(&w.hs, &format!("partner-a:{r}")).await;
    assert_eq!(
        prop(&comment[0], dealsync::properties::REPLY_TO),
        last_copy[0]["id"].as_str()
    );
    // Several runs did it, at most 3 copies each, and none was dead-lettered. A copy belongs
    // to the first run that committed at or after its creation: runs of one link never
    // overlap, so a run's copies are made after the previous run committed.
    let runs: Vec<i64> = d
        .store
        .call(|c| {
            let mut st =
                c.prepare("SELECT at FROM job_history WHERE outcome = 'synced' ORDER BY at")?;
            let r = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
            Ok(r)
        })
        .await
        .unwrap();
    let mut per_run = vec![0usize; runs.len()];
    for n in &all {
        let created = n["createdAt"]
            .as_str()
            .and_then(dealsync::time::parse_ms)
            .expect("a copy has createdAt");
        let run = runs
            .iter()
            .position(|&at| at >= created)
            .expect("every copy was made by a run that committed");
        per_run[run] += 1;
    }
    assert_eq!(per_run.iter().sum::<usize>(), 11);
    assert!(
        per_run.iter().all(|&n| n <= 3),
        "copies per run {per_run:?} exceed per_job = 3"
    );
    assert!(
        per_run.iter().filter(|&&n| n > 0).count() >= 4,
        "11 copies at most 3 a run take at least 4 runs: {per_run:?}"
    );
    assert!(!w.dead_letter_path().exists());
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_attachment_is_skipped_with_the_reason() {
    let w = World::new().await;
    let h = w.hs.create_deal(json!({"dealname": "Shared deal"})).await;
    // Written while dealsync is not running: a message whose file is deleted before dealsync
    // gets to copy it (the message still names it).
    let p = {
        let store = Store::open(&w.dir.path().join("dealsync.db"))
            .await
            .unwrap();
        w.link(&store, &w.pa, &h).await
    };
    let gone = upload(&w.pa, "gone.txt", b"soon deleted".to_vec()).await;
    let kept = upload(&w.pa, "kept.txt", b"kept".to_vec()).await;
    let m = note(
        &w.pa,
        &p,
        "two files, one gone",
        true,
        json!({"hs_attachment_ids": format!("{gone};{kept}")}),
    )
    .await;
    assert_eq!(
        w.pa.delete(&format!("/files/v3/files/{gone}")).await.status,
        204
    );
    let d = w.start().await;
    let c = wait_copy(
        &w.hs,
        &format!("partner-a:{m}"),
        "copied without the gone file",
        |n| attachments(n).len() == 1,
    )
    .await;
    assert_eq!(file_content(&w.hs, &attachments(&c)[0]).await, b"kept");
    let o = common::wait_object(&d.store, "gone file recorded as unreadable", |o| {
        o.origin == format!("partner-a:{gone}")
            && o.state == dealsync::store::ObjectState::Unreadable
    })
    .await;
    assert!(
        o.note
            .as_deref()
            .unwrap_or("")
            .contains("unreadable in partner-a"),
        "{o:?}"
    );
    assert!(
        !w.dead_letter_path().exists(),
        "an unreadable file is not a failure"
    );
    d.shutdown().await;
}
