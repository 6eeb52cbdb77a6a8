//! The leak test with every portal on tag marking (issue 17): each portal refuses custom note
//! properties, so shared messages are notes whose text starts with `#shared`. Private notes
//! carry a unique marker: plain ones, one that mentions the tag later in its text (a search
//! candidate, read and dropped), a private attachment, and a shared message that is copied and
//! then loses its tag and gains the marker. Each partner shares a message with its own marker,
//! which must reach HubSpot and never the competing partner; HubSpot's contested deal names
//! its partner with `@partner-a`. Then every other portal's whole state and files, the store
//! (and WAL), the dead letters and the trace-level log are searched for the markers, and the
//! sandbox's count of served note bodies shows the plain private notes were never fetched.
//!
//! One test per binary: it installs the process-wide log capture.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::notes::{
    bodies_served, notes, origin, plain_note as write, refuse_note_properties, upload,
};
use common::scan::{
    assert_absent, assert_local_clean, assert_portal_clean, state, Capture, LeakDeals,
};
use common::Portal;
use dealsync::daemon::DaemonHandle;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn private(portal: &str) -> String {
    format!("PRIVTAGMARK-{portal}-z4")
}

fn shared_by(portal: &str) -> String {
    format!("SHAREDTAGMARK-{portal}-w9")
}

async fn has_copy(p: &Portal, from: &str) -> bool {
    notes(p)
        .await
        .iter()
        .any(|n| origin(n).as_deref() == Some(from))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tag_marking_no_private_note_or_other_partners_message_leaks_anywhere() {
    let logs = Capture::install();
    let sb = common::unlimited_sandbox().await;
    let names = ["hubspot", "partner-a", "partner-b"];
    for n in names {
        refuse_note_properties(&sb, n);
    }
    common::setup_portals(&sb, &names).await;
    let portals: HashMap<&str, Portal> =
        names.iter().map(|n| (*n, common::portal(&sb, n))).collect();
    let (hs, pa, pb) = (
        &portals["hubspot"],
        &portals["partner-a"],
        &portals["partner-b"],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut settings = common::settings(dir.path());
    settings.messages.search_settle = Duration::from_millis(300);
    let mut parts = common::parts(
        dir.path(),
        common::conn(&sb, "hubspot"),
        vec![
            common::conn(&sb, "partner-a"),
            common::conn(&sb, "partner-b"),
        ],
        settings,
    );
    parts.sweep_interval = Duration::from_secs(2);
    let dead = dir.path().join("dl.jsonl");
    let d = DaemonHandle::start(parts).await.expect("daemon");

    // H1: two partners; H2: partner-a only.
    let LeakDeals { h1, h2, a1, a2, b1 } = LeakDeals::create(&d.store, hs, pa, pb).await;
    let deals: [(&Portal, &str); 5] = [(hs, &h1), (hs, &h2), (pa, &a1), (pa, &a2), (pb, &b1)];
    let mut never_read: Vec<(&Portal, String)> = Vec::new();
    let mut expected: Vec<(String, &Portal)> = Vec::new();
    for (i, (p, deal)) in deals.iter().enumerate() {
        let name = p.info.name.as_str();
        let marker = private(name);
        let plain = write(
            p,
            deal,
            &format!("<p>{marker} pricing floor {i}</p>"),
            json!({}),
        )
        .await;
        never_read.push((p, plain));
        write(
            p,
            deal,
            &format!("<p>{marker} is not #shared {i}</p>"),
            json!({}),
        )
        .await;
        let f = upload(
            p,
            &format!("{marker}-{i}.txt"),
            format!("{marker} file body {i}").into_bytes(),
        )
        .await;
        let filed = write(
            p,
            deal,
            "<p>internal file</p>",
            json!({"hs_attachment_ids": f}),
        )
        .await;
        never_read.push((p, filed));
        let body = match name {
            "hubspot" if *deal == h1.as_str() => {
                format!("<p>#shared @partner-a hubspot update {i}</p>")
            }
            "hubspot" => format!("<p>#shared hubspot update {i}</p>"),
            _ => format!("<p>#shared {} update {i}</p>", shared_by(name)),
        };
        let m = write(p, deal, &body, json!({})).await;
        if name == "hubspot" {
            expected.push((format!("hubspot:{m}"), pa));
        } else {
            expected.push((format!("{name}:{m}"), hs));
        }
    }
    // A shared message that is copied, then loses its tag and gains a marker.
    let gone = write(pa, &a2, "<p>#shared soon private</p>", json!({})).await;
    let gone_origin = format!("partner-a:{gone}");
    common::eventually(
        "the message is copied before it turns private",
        WAIT,
        || async { has_copy(hs, &gone_origin).await.then_some(()) },
    )
    .await;
    let a = pa
        .patch(
            &format!("/crm/v3/objects/notes/{gone}"),
            json!({"properties": {"hs_note_body": format!("<p>{} now private</p>", private("partner-a"))}}),
        )
        .await;
    assert_eq!(a.status, 200);

    common::eventually(
        "shared messages copied, the un-shared copy removed",
        WAIT,
        || async {
            for (from, p) in &expected {
                if !has_copy(p, from).await {
                    return None;
                }
            }
            (!has_copy(hs, &gone_origin).await).then_some(())
        },
    )
    .await;
    d.shutdown().await;

    for (p, id) in &never_read {
        assert!(
            !bodies_served(p).await.contains(id),
            "the body of private note {id} in {} was fetched",
            p.info.name
        );
    }
    let mut scanned = 0;
    for owner in names {
        for other in names.iter().filter(|n| **n != owner) {
            let p = &portals[other];
            scanned += assert_portal_clean(p, &private(owner)).await;
            if owner != "hubspot" && *other != "hubspot" {
                assert_absent(
                    &format!("{other}'s portal"),
                    &state(p).await.to_string(),
                    &shared_by(owner),
                );
            }
        }
        assert!(
            state(&portals[owner])
                .await
                .to_string()
                .contains(&private(owner)),
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
