//! The deal team (issue 7, item 8), end to end against the sandbox: each side sees the other
//! side's team on the shared deal, a partner never sees another partner's team, each side adds
//! only its own users (through `dealsync_team_add`), and adding someone from the other account
//! is refused with the reason.

mod common;

use std::time::Duration;

use common::{deal_prop, set_deal, wait_deal_prop};
use dealsync::store::{self, Store};
use dealsync::team;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// Waits for dealsync to answer a team request: the status is set and the request cleared.
async fn answered(p: &common::Portal, id: &str) -> String {
    common::eventually("the team request is answered", WAIT, || async {
        let status = deal_prop(p, id, dealsync::properties::TEAM_STATUS).await?;
        let request = deal_prop(p, id, dealsync::properties::TEAM_ADD)
            .await
            .unwrap_or_default();
        request.is_empty().then_some(status)
    })
    .await
}

async fn link(store: &Store, partner: &'static str, p: &str, h: &str) -> i64 {
    let (p, h) = (p.to_owned(), h.to_owned());
    let l = store
        .call(move |c| store::insert_link(c, partner, &p, &h, "best_partner_wins"))
        .await
        .unwrap();
    let id = l.id;
    store
        .call(move |c| store::enqueue_now(c, &[id], dealsync::store::JobReason::Manual))
        .await
        .unwrap();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_side_sees_the_other_team_and_adds_only_its_own_users() {
    let sb = common::unlimited_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let (hs, pa, pb) = (
        common::portal(&sb, "hubspot"),
        common::portal(&sb, "partner-a"),
        common::portal(&sb, "partner-b"),
    );
    common::setup_portals(&sb, &["hubspot", "partner-a", "partner-b"]).await;
    let (hs_users, a_users, b_users) = (
        common::users(&hs).await,
        common::users(&pa).await,
        common::users(&pb).await,
    );

    // A HubSpot deal worked by two partners (best partner wins), each with its own team.
    let h = hs
        .create_deal(
            json!({"dealname": "Team", "hubspot_owner_id": hs_users[0].0,
            team::COLLABORATORS: hs_users[1].0}),
        )
        .await;
    let p_a = pa
        .create_deal(json!({"dealname": "Team", "hubspot_owner_id": a_users[0].0}))
        .await;
    let p_b = pb
        .create_deal(json!({"dealname": "Team", "hubspot_owner_id": b_users[2].0}))
        .await;
    let d = dealsync::daemon::DaemonHandle::start(common::parts(
        dir.path(),
        common::conn(&sb, "hubspot"),
        vec![
            common::conn(&sb, "partner-a"),
            common::conn(&sb, "partner-b"),
        ],
        common::settings(dir.path()),
    ))
    .await
    .expect("daemon");
    link(&d.store, "partner-a", &p_a, &h).await;
    link(&d.store, "partner-b", &p_b, &h).await;

    // Each partner sees HubSpot's team, owner first.
    let hubspot_team = format!(
        "Alex Rep <{}> (owner), Blair Seller <{}>",
        hs_users[0].1, hs_users[1].1
    );
    for (p, id) in [(&pa, &p_a), (&pb, &p_b)] {
        wait_deal_prop(p, id, dealsync::properties::HUBSPOT_TEAM, &hubspot_team).await;
    }
    // HubSpot sees both partners' teams, a line each.
    let both = format!(
        "partner-a: Alex Rep <{}> (owner)\npartner-b: Casey Manager <{}> (owner)",
        a_users[0].1, b_users[2].1
    );
    wait_deal_prop(&hs, &h, dealsync::properties::PARTNER_TEAM, &both).await;
    // Partner A adds one of its own users and, by mistake, HubSpot's rep.
    set_deal(
        &pa,
        &p_a,
        json!({ dealsync::properties::TEAM_ADD: format!("{}, {}", a_users[1].1, hs_users[2].1) }),
    )
    .await;
    let status = answered(&pa, &p_a).await;
    assert!(
        status.starts_with(&format!("added Blair Seller <{}>", a_users[1].1)),
        "{status}"
    );
    assert!(
        status.contains(&format!(
            "refused {}: a user of HubSpot's account",
            hs_users[2].1
        )),
        "{status}"
    );
    assert_eq!(
        deal_prop(&pa, &p_a, team::COLLABORATORS).await.as_deref(),
        Some(a_users[1].0.as_str()),
        "only partner A's own user joined its team"
    );
    // HubSpot now sees partner A's larger team; partner B's line is untouched.
    let both = format!(
        "partner-a: Alex Rep <{}> (owner), Blair Seller <{}>\npartner-b: Casey Manager <{}> (owner)",
        a_users[0].1, a_users[1].1, b_users[2].1
    );
    wait_deal_prop(&hs, &h, dealsync::properties::PARTNER_TEAM, &both).await;

    // HubSpot's rep tries to add partner B's user, and someone nobody has.
    set_deal(
        &hs,
        &h,
        json!({ dealsync::properties::TEAM_ADD: format!("{};ghost@nowhere.example", b_users[0].1) }),
    )
    .await;
    let status = answered(&hs, &h).await;
    assert_eq!(
        status,
        format!(
            "refused {}: a user of partner-b's account; each side adds only its own users, so ask partner-b to add them on their deal; refused ghost@nowhere.example: no user with that email in this portal; add them as a user first",
            b_users[0].1
        )
    );
    assert_eq!(
        deal_prop(&hs, &h, team::COLLABORATORS).await.as_deref(),
        Some(hs_users[1].0.as_str()),
        "a refused request changes no team"
    );

    // HubSpot changes its owner in its own CRM: both partners see it.
    set_deal(&hs, &h, json!({ "hubspot_owner_id": hs_users[2].0 })).await;
    let hubspot_team = format!(
        "Casey Manager <{}> (owner), Blair Seller <{}>",
        hs_users[2].1, hs_users[1].1
    );
    for (p, id) in [(&pa, &p_a), (&pb, &p_b)] {
        wait_deal_prop(p, id, dealsync::properties::HUBSPOT_TEAM, &hubspot_team).await;
    }
    // HubSpot excludes partner B: its people leave HubSpot's view of the team.
    set_deal(
        &hs,
        &h,
        json!({ dealsync::properties::EXCLUDED_PARTNERS: "partner-b" }),
    )
    .await;
    let only_a = format!(
        "partner-a: Alex Rep <{}> (owner), Blair Seller <{}>",
        a_users[0].1, a_users[1].1
    );
    wait_deal_prop(&hs, &h, dealsync::properties::PARTNER_TEAM, &only_a).await;

    // At the end, neither partner's deal names the other partner's people anywhere.
    for (p, id, other) in [(&pa, &p_a, &b_users), (&pb, &p_b, &a_users)] {
        let all = p
            .get(&format!(
                "/crm/v3/objects/deals/{id}?properties={},{},{}",
                dealsync::properties::HUBSPOT_TEAM,
                dealsync::properties::PARTNER_TEAM,
                dealsync::properties::TEAM_STATUS
            ))
            .await;
        for (_, email) in other {
            assert!(!all.text.contains(email.as_str()), "leak: {}", all.text);
        }
    }

    d.shutdown().await;
}
