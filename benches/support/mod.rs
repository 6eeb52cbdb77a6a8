//! Set-up shared by the benchmarks that run the daemon against the sandbox (a module, not a
//! benchmark: cargo only discovers `benches/*.rs` and `benches/*/main.rs`).
#![allow(dead_code)]

use std::path::Path;

use dealsync::crm::{CallKind, Client};
use dealsync::store::{self, Store};
use serde_json::{json, Value};

/// Creates `n` deals named `Deal 0`…`Deal n-1`, 100 per batch call; their ids in order.
pub async fn create_deals(c: &Client, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for start in (0..n).step_by(100) {
        let inputs: Vec<Value> = (start..(start + 100).min(n))
            .map(|i| json!({"properties": {"dealname": format!("Deal {i}")}}))
            .collect();
        let v = c
            .call(
                reqwest::Method::POST,
                "/crm/v3/objects/deals/batch/create",
                Some(&json!({ "inputs": inputs })),
                CallKind::Ordinary,
            )
            .await
            .expect("batch create");
        ids.extend(
            v["results"]
                .as_array()
                .expect("results")
                .iter()
                .map(|r| r["id"].as_str().expect("id").to_owned()),
        );
    }
    ids
}

/// Links the i-th (partner, HubSpot) pair with `Deal i` as the agreed `dealname`, as after a
/// first sync, in the store at `db`.
pub async fn link_agreed(db: &Path, pairs: &[(String, String)]) {
    let store = Store::open(db).await.expect("store");
    let pairs = pairs.to_vec();
    store
        .call(move |c| {
            let tx = c.transaction()?;
            for (i, (p, h)) in pairs.iter().enumerate() {
                let l = store::insert_link(&tx, "partner-a", p, h, "channel")?;
                tx.execute(
                    "INSERT INTO shadows (link_id, field, value, updated_at) VALUES (?1, 'dealname', ?2, 0)",
                    rusqlite::params![l.id, format!("Deal {i}")],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
        .expect("links");
}

/// The `p` quantile of sorted values (NaN when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
