//! `cargo bench --bench sandbox`: sandbox throughput and memory.
//!
//! Starts the real `dealsync sandbox` binary (rate limits off) as its own process on loopback,
//! drives it with concurrent simple requests for a fixed time, then loads 100,000 deals
//! through batch create and reads the sandbox process's resident memory from /proc.
//! The last line printed is one JSON object:
//! `{"requests_per_s":…,"rss_mb_100k_deals":…,…}`.
//! Targets (issue: sandbox): at least 5,000 requests/s on 2 cores; under 300 MB for 100,000 deals.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const CONCURRENCY: usize = 32;
const RUN_FOR: Duration = Duration::from_secs(5);
const DEALS: usize = 100_000;

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    kb / 1024.0
}

fn main() {
    // BENCH_SMOKE (CI): 1 s of reads and 2,000 deals, same code path.
    let run_for = support::duration(RUN_FOR, Duration::from_secs(1));
    let deals = support::size(DEALS, 2_000);
    let (child, base, tokens) = support::spawn_sandbox("hubspot");
    let pid = child.id();
    let token = tokens[0].clone();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = rt.block_on(async move {
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let idle_mb = rss_mb(pid);

        // Throughput: concurrent reads of one deal.
        let created: Value = http
            .post(format!("{base}/crm/v3/objects/deals"))
            .bearer_auth(&token)
            .json(&json!({"properties": {"dealname": "bench", "amount": "1"}}))
            .send()
            .await
            .expect("create")
            .json()
            .await
            .expect("json");
        let id = created["id"].as_str().expect("id").to_owned();
        let url = format!("{base}/crm/v3/objects/deals/{id}");
        let done = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..CONCURRENCY {
            let (http, url, token, done, failed) = (
                http.clone(),
                url.clone(),
                token.clone(),
                done.clone(),
                failed.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while start.elapsed() < run_for {
                    match http.get(&url).bearer_auth(&token).send().await {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await.expect("worker");
        }
        let secs = start.elapsed().as_secs_f64();
        let requests_per_s = done.load(Ordering::Relaxed) as f64 / secs;

        // Memory: 100,000 deals through batch create (100 per call, 4 calls in flight).
        let load_start = Instant::now();
        let batches: Vec<usize> = (0..deals / 100).collect();
        for chunk in batches.chunks(4) {
            let mut calls = Vec::new();
            for b in chunk {
                let inputs: Vec<Value> = (0..100)
                    .map(|i| {
                        json!({"properties": {
                            "dealname": format!("Deal {}", b * 100 + i),
                            "amount": format!("{}", (b * 100 + i) % 9973),
                            "dealstage": "qualifiedtobuy",
                            "description": "Registered through the partner program",
                        }})
                    })
                    .collect();
                let http = http.clone();
                let (base, token) = (base.clone(), token.clone());
                calls.push(tokio::spawn(async move {
                    let r = http
                        .post(format!("{base}/crm/v3/objects/deals/batch/create"))
                        .bearer_auth(&token)
                        .json(&json!({ "inputs": inputs }))
                        .send()
                        .await
                        .expect("batch create");
                    assert_eq!(r.status().as_u16(), 201, "batch create failed");
                }));
            }
            for c in calls {
                c.await.expect("batch");
            }
        }
        let load_s = load_start.elapsed().as_secs_f64();
        let rss = rss_mb(pid);
        support::mark(json!({
            "requests_per_s": (requests_per_s * 10.0).round() / 10.0,
            "failed_requests": failed.load(Ordering::Relaxed),
            "concurrency": CONCURRENCY,
            "rss_mb_idle": (idle_mb * 10.0).round() / 10.0,
            "rss_mb_100k_deals": (rss * 10.0).round() / 10.0,
            "deals": deals,
            "load_100k_s": (load_s * 100.0).round() / 100.0,
        }))
    });
    drop(child);
    println!("{result}");
}
