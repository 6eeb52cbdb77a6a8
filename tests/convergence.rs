//! Convergence (proptest): random interleavings of edits on both sides of a few linked deals
//! and random job runs (events delivered late, early, twice or never) drive the real engine
//! against the sandbox. The oracle is not the engine's rule but the edit log: after every run
//! of a deal's job, both sides hold the value of that deal's last edit by time; at the end one
//! more round brings every deal there with the shadow equal to it, and a further round writes
//! nothing.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dealsync::crm::{Budget, Client, RetryPolicy};
use dealsync::engine::{Engine, Portals, Settings, StageMap};
use dealsync::store::{self, Store};
use proptest::prelude::*;
use serde_json::json;

const DEALS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    /// Someone edits a deal on one side.
    Edit {
        deal: usize,
        partner: bool,
        value: u8,
    },
    /// A job for one deal runs (a poll or webhook delivered, perhaps late or twice).
    Run { deal: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..DEALS, any::<bool>(), 0u8..4).prop_map(|(deal, partner, value)| Op::Edit { deal, partner, value }),
        2 => (0..DEALS).prop_map(|deal| Op::Run { deal }),
    ]
}

/// The edit log of one deal, kept apart from the engine: it knows nothing of shadows, sides or
/// conflict policies, only the value of the last real edit a person made, on either side. Under
/// `both` / `latest_wins` that is what a sync must leave on both sides. An edit that writes the
/// value its side already shows (an engine write may have put it there) is no change, as in
/// HubSpot, and is not logged.
#[derive(Debug, Clone)]
struct EditLog {
    last: String,
}

fn settings(dir: &std::path::Path) -> Settings {
    // One worker and quick retries; the rest as every daemon test has it.
    let mut s = common::settings(dir);
    s.stage_maps = HashMap::from([("partner-a".to_owned(), StageMap::default())]);
    s.workers = 1;
    s.max_attempts = 3;
    s.retry_base = Duration::from_millis(10);
    s.retry_max = Duration::from_millis(50);
    s
}

async fn dealname(p: &common::Portal, id: &str) -> String {
    let a = p
        .get(&format!("/crm/v3/objects/deals/{id}?properties=dealname"))
        .await;
    a.body["properties"]["dealname"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn run(engine: &Engine, links: &[i64]) {
    let ids = links.to_vec();
    engine
        .store()
        .call(move |c| store::enqueue_now(c, &ids, dealsync::store::JobReason::Manual))
        .await
        .unwrap();
    let jobs = engine
        .store()
        .call(|c| store::claim_jobs(c, 100, store::now_ms() + 1))
        .await
        .unwrap();
    engine.run_batch(jobs).await.unwrap();
}

async fn scenario(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let sb = common::unlimited_sandbox().await;
    let (hs, pa) = (
        common::portal(&sb, "hubspot"),
        common::portal(&sb, "partner-a"),
    );
    let dir = tempfile::tempdir().unwrap();
    let client = |p: &common::Portal| {
        Client::new(
            &p.info.name,
            &sb.base_url,
            &p.info.token,
            Arc::new(Budget::new(10_000, 1_000)),
            RetryPolicy::default(),
        )
        .unwrap()
    };
    let engine = Engine::new(
        Store::open(&dir.path().join("db")).await.unwrap(),
        Portals {
            hubspot: client(&hs),
            partners: HashMap::from([("partner-a".to_owned(), client(&pa))]),
        },
        settings(dir.path()),
        Default::default(),
    );
    let mut deals = Vec::new();
    let mut logs = Vec::new();
    for i in 0..DEALS {
        let name = format!("start {i}");
        let p = pa.create_deal(json!({ "dealname": name })).await;
        let h = hs.create_deal(json!({ "dealname": name })).await;
        let (p2, h2, n2) = (p.clone(), h.clone(), name.clone());
        let link = engine
            .store()
            .call(move |c| {
                let l = store::insert_link(c, "partner-a", &p2, &h2, "channel")?;
                c.execute(
                    "INSERT INTO shadows (link_id, field, value, updated_at) VALUES (?1, 'dealname', ?2, 0)",
                    rusqlite::params![l.id, n2],
                )?;
                Ok(l.id)
            })
            .await
            .unwrap();
        deals.push((p, h, link));
        logs.push(EditLog { last: name });
    }
    for (n, op) in ops.iter().enumerate() {
        match op {
            Op::Edit {
                deal,
                partner,
                value,
            } => {
                let v = format!(
                    "v{value} by {}",
                    if *partner { "partner" } else { "hubspot" }
                );
                let (who, id) = if *partner {
                    (&pa, &deals[*deal].0)
                } else {
                    (&hs, &deals[*deal].1)
                };
                let changes = dealname(who, id).await != v;
                // Edits get distinct change times (the sandbox stamps milliseconds), so
                // "last" is well defined.
                tokio::time::sleep(Duration::from_millis(2)).await;
                let a = who
                    .patch(
                        &format!("/crm/v3/objects/deals/{id}"),
                        json!({"properties": {"dealname": v}}),
                    )
                    .await;
                prop_assert_eq!(a.status, 200);
                if changes {
                    logs[*deal].last = v;
                }
            }
            Op::Run { deal } => {
                let (p, h, link) = &deals[*deal];
                run(&engine, &[*link]).await;
                let want = &logs[*deal].last;
                prop_assert_eq!(
                    &dealname(&pa, p).await,
                    want,
                    "op {}: deal {} partner side",
                    n,
                    deal
                );
                prop_assert_eq!(
                    &dealname(&hs, h).await,
                    want,
                    "op {}: deal {} HubSpot side",
                    n,
                    deal
                );
            }
        }
    }
    // One more round for everything, then the check, then a round that must write nothing.
    let all: Vec<i64> = deals.iter().map(|d| d.2).collect();
    run(&engine, &all).await;
    for (i, (p, h, link)) in deals.iter().enumerate() {
        let want = &logs[i].last;
        prop_assert_eq!(&dealname(&pa, p).await, want, "deal {} partner side", i);
        prop_assert_eq!(&dealname(&hs, h).await, want, "deal {} HubSpot side", i);
        let link = *link;
        let shadow: Option<String> = engine
            .store()
            .call(move |c| {
                Ok(c.query_row(
                    "SELECT value FROM shadows WHERE link_id = ?1 AND field = 'dealname'",
                    [link],
                    |r| r.get(0),
                )?)
            })
            .await
            .unwrap();
        prop_assert_eq!(shadow.as_deref(), Some(want.as_str()), "deal {} shadow", i);
    }
    let writes = |c: serde_json::Value| c["writes"].as_u64().unwrap_or(0);
    let before = (writes(hs.counters().await), writes(pa.counters().await));
    run(&engine, &all).await;
    let after = (writes(hs.counters().await), writes(pa.counters().await));
    prop_assert_eq!(before, after, "a converged round writes nothing");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_interleavings_converge_to_what_the_rules_say(ops in prop::collection::vec(op(), 1..25)) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(scenario(ops))?;
    }
}
