//! Best partner wins with three partners (issue 7 item 4): one HubSpot deal linked to three
//! partners' deals; each partner shares a message carrying its own marker. Every marker reaches
//! HubSpot, and no partner's portal ever holds another partner's marker (its whole state,
//! history included, is searched).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::notes::{note, notes, plain_note, prop};
use dealsync::daemon::DaemonHandle;
use dealsync::sandbox::{PortalSpec, SandboxConfig};
use dealsync::store;
use serde_json::json;

const PARTNERS: [&str; 3] = ["partner-a", "partner-b", "partner-c"];

fn marker(partner: &str) -> String {
    format!("BPWMARK-{partner}-z9")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_partners_each_reach_hubspot_and_never_each_other() {
    isolation(false).await;
}

/// The same with every portal refusing custom note properties (tag marking).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tag_marking_three_partners_each_reach_hubspot_and_never_each_other() {
    isolation(true).await;
}

async fn isolation(tag: bool) {
    let sb = common::sandbox_with(SandboxConfig {
        portals: std::iter::once("hubspot")
            .chain(PARTNERS)
            .map(PortalSpec::named)
            .collect(),
        rate_limit_per_10s: None,
        daily_limit: None,
        search_per_s: None,
        ..SandboxConfig::default()
    })
    .await;
    let portal = |n: &str| common::portal(&sb, n);
    let conn = |n: &str| common::conn(&sb, n);
    let all: Vec<&str> = std::iter::once("hubspot").chain(PARTNERS).collect();
    if tag {
        for n in &all {
            common::notes::refuse_note_properties(&sb, n);
        }
    }
    common::setup_portals(&sb, &all).await;
    let dir = tempfile::tempdir().unwrap();
    let d = DaemonHandle::start(common::parts(
        dir.path(),
        conn("hubspot"),
        PARTNERS.iter().map(|p| conn(p)).collect(),
        common::settings(dir.path()),
    ))
    .await
    .expect("daemon");
    let hs = portal("hubspot");
    let h = hs.create_deal(json!({"dealname": "Contested"})).await;
    let mut deals: HashMap<&str, String> = HashMap::new();
    for p in PARTNERS {
        let pd = portal(p)
            .create_deal(json!({"dealname": "Contested"}))
            .await;
        let (p2, pd2, h2) = (p.to_owned(), pd.clone(), h.clone());
        d.store
            .call(move |c| store::insert_link(c, &p2, &pd2, &h2, "best_partner_wins"))
            .await
            .unwrap();
        deals.insert(p, pd);
    }
    // Each partner shares a message with its marker on its deal.
    for p in PARTNERS {
        let text = format!("{} pitch", marker(p));
        if tag {
            plain_note(&portal(p), &deals[p], &format!("#shared {text}"), json!({})).await;
        } else {
            note(&portal(p), &deals[p], &text, true, json!({})).await;
        }
    }
    common::eventually(
        "every partner's message reaches HubSpot",
        Duration::from_secs(60),
        || async {
            let all = notes(&hs).await;
            PARTNERS
                .iter()
                .all(|p| {
                    all.iter()
                        .any(|n| prop(n, "hs_note_body").is_some_and(|b| b.contains(&marker(p))))
                })
                .then_some(())
        },
    )
    .await;
    // Let every link's job run after all three copies exist, then look everywhere.
    common::eventually("queue drains", Duration::from_secs(60), || {
        let s = d.store.clone();
        async move { (s.call(|c| store::queue_stats(c)).await.unwrap().0 == 0).then_some(()) }
    })
    .await;
    d.shutdown().await;
    for p in PARTNERS {
        let pp = portal(p);
        let state = pp
            .http
            .get(format!("{}/_sandbox/portals/{p}/state", pp.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(state.contains(&marker(p)), "{p} holds its own message");
        for other in PARTNERS.iter().filter(|o| **o != p) {
            assert!(
                !state.contains(&marker(other)),
                "{p}'s portal holds {other}'s message"
            );
        }
    }
}
