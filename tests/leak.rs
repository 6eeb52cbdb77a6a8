//! The leak test (issue 5): private notes carrying unique markers are written on every portal,
//! on deals linked to one partner and on a HubSpot deal linked to two — plain private notes,
//! notes without any visibility, private comments on shared messages, private attachments, a
//! shared message made private and then edited, a comment whose parent is private (it
//! dead-letters). Each partner also shares messages with its own marker, which must reach
//! HubSpot and never the competing partner. After the scenario, every object of every other
//! portal (the sandbox's full state dump: live and archived records with their property
//! history, file names), the content of every file there, the SQLite store (and its WAL), the
//! dead-letter file and dealsync's own trace-level log are searched for the markers.
//!
//! One test per binary: it installs the process-wide log capture.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::notes::{note, notes, prop, upload};
use common::scan::{
    assert_absent, assert_local_clean, assert_portal_clean, state, Capture, LeakDeals,
};
use dealsync::crm::{Budget, Client, RetryPolicy};
use dealsync::daemon::{DaemonHandle, DaemonParts, PortalConn, WebhookParts};
use dealsync::engine::{FieldKind, FieldSpec, Settings};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// Private marker of a portal: it may appear in that portal and nowhere else.
fn private(portal: &str) -> String {
    format!("PRIVMARK-{portal}-q7")
}

/// Marker of what a partner shares: it may reach HubSpot, never the other partner.
fn shared_by(portal: &str) -> String {
    format!("SHAREDMARK-{portal}-k2")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_private_note_or_other_partners_message_leaks_anywhere() {
    let logs = Capture::install();

    let sb = common::unlimited_sandbox().await;
    let names = ["hubspot", "partner-a", "partner-b"];
    let portals: HashMap<&str, common::Portal> =
        names.iter().map(|n| (*n, common::portal(&sb, n))).collect();
    let (hs, pa, pb) = (
        &portals["hubspot"],
        &portals["partner-a"],
        &portals["partner-b"],
    );
    let retry = RetryPolicy {
        max_retries: 2,
        min_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        timeout: Duration::from_secs(10),
    };
    let conn = |p: &common::Portal| PortalConn {
        name: p.info.name.clone(),
        base_url: sb.base_url.clone(),
        token: p.info.token.clone(),
        rate_limit_per_10s: 100,
        search_per_s: 5,
        api: Default::default(),
        oauth: None,
    };
    for p in portals.values() {
        let c = conn(p);
        let client = Client::new(
            &c.name,
            &c.base_url,
            &c.token,
            Arc::new(Budget::new(100, 4)),
            retry,
        )
        .unwrap();
        dealsync::setup::ensure(&client, false, true)
            .await
            .expect("setup");
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("dealsync.db");
    let dead = dir.path().join("dead-letters.jsonl");
    let d = DaemonHandle::start(DaemonParts {
        store_path: db.clone(),
        hubspot: conn(hs),
        partners: vec![conn(pa), conn(pb)],
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
            max_attempts: 3,
            retry_base: Duration::from_millis(50),
            retry_max: Duration::from_millis(200),
            dead_letter_path: dead.clone(),
            mass_deletion: Default::default(),
            messages: Default::default(),
            closed_stages: Default::default(),
            registration: Default::default(),
            notify: Default::default(),
        },
        poll_interval: Duration::from_millis(200),
        poll_overlap: Duration::from_secs(5),
        sweep_interval: Duration::from_secs(2),
        retry,
        drain: Duration::from_secs(10),
        webhooks: Some(WebhookParts {
            listen: "127.0.0.1:0".parse().unwrap(),
            public_url: None,
            max_body: dealsync::ingest::webhook::DEFAULT_MAX_BODY,
            secrets: portals
                .values()
                .map(|p| (p.info.name.clone(), p.info.webhook_secret.clone()))
                .collect(),
            app: Default::default(),
            healthy_poll_interval: Duration::from_millis(200),
            quiet_after: Duration::from_secs(600),
        }),
    })
    .await
    .expect("daemon");
    // Webhooks carry note bodies (property values): they must not leak through the listener.
    let addr = d.webhook_addr.expect("listener");
    for p in portals.values() {
        let a = p
            .control(
                reqwest::Method::PUT,
                "/webhooks",
                Some(json!({ "target_url": format!("http://{addr}/webhooks/{}", p.info.name) })),
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.text);
    }

    // H1: best partner wins (partner-a and partner-b); H2: partner-a only.
    let LeakDeals { h1, h2, a1, a2, b1 } = LeakDeals::create(&d.store, hs, pa, pb).await;
    let deals: [(&common::Portal, &str); 5] =
        [(hs, &h1), (hs, &h2), (pa, &a1), (pa, &a2), (pb, &b1)];

    let mut expected_copies: Vec<(String, &common::Portal)> = Vec::new();
    for (i, (p, deal)) in deals.iter().enumerate() {
        let name = p.info.name.as_str();
        let marker = private(name);
        // A plain private note, and one without any visibility property.
        note(
            p,
            deal,
            &format!("<p>{marker} pricing floor {i}</p>"),
            false,
            json!({}),
        )
        .await;
        let loose = note(p, deal, "placeholder", true, json!({})).await;
        let a = p
            .patch(
                &format!("/crm/v3/objects/notes/{loose}"),
                json!({"properties": {dealsync::properties::VISIBILITY: "", "hs_note_body": format!("{marker} no visibility {i}")}}),
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.text);
        // A shared message (targeted on HubSpot's contested deal), and a private comment on it.
        let body = if name == "hubspot" {
            format!("hubspot update {i}")
        } else {
            format!("{} update {i}", shared_by(name))
        };
        let target = if *deal == h1.as_str() {
            json!({dealsync::properties::TARGET: "partner-a"})
        } else {
            json!({})
        };
        let m = note(p, deal, &body, true, target).await;
        if name == "hubspot" {
            expected_copies.push((format!("hubspot:{m}"), pa));
        } else {
            expected_copies.push((format!("{name}:{m}"), hs));
        }
        note(
            p,
            deal,
            &format!("{marker} private reply {i}"),
            false,
            json!({dealsync::properties::REPLY_TO: m}),
        )
        .await;
        // A private attachment on a private note (its name and content carry the marker).
        let f = upload(
            p,
            &format!("{marker}-{i}.txt"),
            format!("{marker} file body {i}").into_bytes(),
        )
        .await;
        note(
            p,
            deal,
            "internal file",
            false,
            json!({"hs_attachment_ids": f}),
        )
        .await;
        // A shared comment whose parent is private: it waits, then dead-letters.
        let parent = note(
            p,
            deal,
            &format!("{marker} private parent {i}"),
            false,
            json!({}),
        )
        .await;
        note(
            p,
            deal,
            "shared reply to a private parent",
            true,
            json!({dealsync::properties::REPLY_TO: parent}),
        )
        .await;
    }
    // A shared message that is copied, then made private and edited with a marker.
    let gone = note(pa, &a2, "soon private", true, json!({})).await;
    let origin = format!("partner-a:{gone}");
    common::eventually(
        "the message is copied before it turns private",
        WAIT,
        || async {
            notes(hs)
                .await
                .iter()
                .any(|n| prop(n, dealsync::properties::ORIGIN) == Some(origin.as_str()))
                .then_some(())
        },
    )
    .await;
    let a = pa
        .patch(
            &format!("/crm/v3/objects/notes/{gone}"),
            json!({"properties": {dealsync::properties::VISIBILITY: "private"}}),
        )
        .await;
    assert_eq!(a.status, 200);
    let a = pa
        .patch(
            &format!("/crm/v3/objects/notes/{gone}"),
            json!({"properties": {"hs_note_body": format!("{} now private", private("partner-a"))}}),
        )
        .await;
    assert_eq!(a.status, 200);

    // Positive controls: the shared messages arrived, the copy of the un-shared one is gone,
    // the replies to private parents were dead-lettered, the queue is empty.
    common::eventually(
        "shared messages copied, un-shared copy removed, dead letters written",
        WAIT,
        || async {
            for (origin, p) in &expected_copies {
                if !notes(p)
                    .await
                    .iter()
                    .any(|n| prop(n, dealsync::properties::ORIGIN) == Some(origin.as_str()))
                {
                    return None;
                }
            }
            if notes(hs)
                .await
                .iter()
                .any(|n| prop(n, dealsync::properties::ORIGIN) == Some(origin.as_str()))
            {
                return None;
            }
            let dl = dealsync::deadletter::read(&dead).ok()?.0;
            let parked = dl.iter().filter(|e| e.class == "unknown_parent").count();
            (parked >= deals.len()).then_some(())
        },
    )
    .await;
    d.shutdown().await;

    // Scan.
    let mut scanned = 0;
    for owner in names {
        for other in names.iter().filter(|n| **n != owner) {
            let p = &portals[other];
            scanned += assert_portal_clean(p, &private(owner)).await;
            // Partners never see each other's shared messages.
            if owner != "hubspot" && *other != "hubspot" {
                assert_absent(
                    &format!("{other}'s portal"),
                    &state(p).await.to_string(),
                    &shared_by(owner),
                );
            }
        }
        // Sanity: the marker is really there in its own portal, so the scans above could fail.
        let own = state(&portals[owner]).await.to_string();
        assert!(
            own.contains(&private(owner)),
            "{owner}'s own dump holds its marker"
        );
    }
    assert!(scanned > 0, "files were scanned");
    let hub = state(hs).await.to_string();
    assert!(
        hub.contains(&shared_by("partner-a")) && hub.contains(&shared_by("partner-b")),
        "shared messages reached HubSpot"
    );
    let markers: Vec<String> = names.iter().map(|n| private(n)).collect();
    assert_local_clean(dir.path(), &dead, &logs, &markers);
}
