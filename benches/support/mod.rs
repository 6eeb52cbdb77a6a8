//! Set-up shared by the benchmarks that run the daemon against the sandbox (a module, not a
//! benchmark: cargo only discovers `benches/*.rs` and `benches/*/main.rs`).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dealsync::crm::{CallKind, Client};
use dealsync::store::{self, Store};
use serde_json::{json, Value};

/// Whether `BENCH_SMOKE` is set (to anything but empty or `0`): the CI smoke run
/// (`.ci/bench-smoke`), where every bench runs its normal code path at a reduced size and
/// marks its JSON with `"smoke": true`.
pub fn smoke() -> bool {
    std::env::var_os("BENCH_SMOKE").is_some_and(|v| !v.is_empty() && v != "0")
}

/// `smoke` under `BENCH_SMOKE`, else `full` (the size the recorded numbers use).
pub fn size(full: usize, smoke: usize) -> usize {
    if self::smoke() {
        smoke
    } else {
        full
    }
}

/// `size` for durations.
pub fn duration(full: Duration, smoke: Duration) -> Duration {
    if self::smoke() {
        smoke
    } else {
        full
    }
}

/// The bench's result object, with `"smoke": true` added under `BENCH_SMOKE`.
pub fn mark(mut v: Value) -> Value {
    if let (true, Some(m)) = (smoke(), v.as_object_mut()) {
        m.insert("smoke".into(), Value::Bool(true));
    }
    v
}

/// Creates `n` deals named `Deal 0`…`Deal n-1`, 100 per batch call; their ids in order.
pub async fn create_deals(c: &Client, n: usize) -> Vec<String> {
    create_named_deals(c, 0..n).await
}

/// Creates deals named `Deal i` for each `i` of `names`, 100 per batch call; their ids in order.
pub async fn create_named_deals(c: &Client, names: std::ops::Range<usize>) -> Vec<String> {
    let (first, n) = (names.start, names.end);
    let mut ids = Vec::with_capacity(n.saturating_sub(first));
    for start in (first..n).step_by(100) {
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

/// A child process that is killed and reaped when dropped, so a benchmark that panics (a
/// failed assertion, a timeout) leaves no sandbox or daemon running behind it.
pub struct Reaped {
    child: Child,
    what: &'static str,
}

impl Reaped {
    /// Spawns `cmd`; `what` names the process in panics.
    pub fn spawn(cmd: &mut Command, what: &'static str) -> Reaped {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {what}: {e}"));
        Reaped { child, what }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Panics if the process has already exited: a wait on it would only time out.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited early: {status}", self.what);
        }
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `done` every 100 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether the deal poller of every portal in `portals` (its `portal_health` row is keyed by
/// the portal's name; other pollers use `portal/notes` and the like) has polled successfully
/// after `after_ms`. Counting rows instead breaks whenever a new poller lands.
pub fn deal_pollers_polled_since(db: &Path, portals: &[&str], after_ms: i64) -> bool {
    let Ok(conn) = store::open_read_only(db) else {
        return false; // the daemon has not created the store yet
    };
    portals.iter().all(|p| {
        conn.query_row(
            "SELECT last_poll_ok FROM portal_health WHERE portal = ?1",
            [p],
            |r| r.get::<_, Option<i64>>(0),
        )
        .ok()
        .flatten()
        .is_some_and(|t| t > after_ms)
    })
}

/// Starts the real `dealsync sandbox` binary (rate limits off) as its own process, for
/// benchmarks that measure another process's memory; the child, its base URL and the portals'
/// tokens in order.
pub fn spawn_sandbox(portals: &str) -> (Reaped, String, Vec<String>) {
    let off = [
        "--rate-limit",
        "0",
        "--search-rate-limit",
        "0",
        "--daily-limit",
        "0",
    ];
    spawn_sandbox_args(portals, &off)
}

/// [`spawn_sandbox`] with HubSpot's default limits on every portal.
pub fn spawn_sandbox_limited(portals: &str) -> (Reaped, String, Vec<String>) {
    spawn_sandbox_args(portals, &[])
}

fn spawn_sandbox_args(portals: &str, extra: &[&str]) -> (Reaped, String, Vec<String>) {
    let mut child = Reaped::spawn(
        Command::new(env!("CARGO_BIN_EXE_dealsync"))
            .args(["sandbox", "--listen", "127.0.0.1:0", "--portals", portals])
            .args(extra)
            .env("DEALSYNC_LOG", "warn")
            .stdout(Stdio::piped()),
        "sandbox",
    );
    let mut line = String::new();
    BufReader::new(child.child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("startup line");
    let startup: Value = serde_json::from_str(&line).expect("startup JSON");
    let base = startup["base_url"].as_str().expect("base_url").to_owned();
    let tokens = startup["portals"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| p["token"].as_str().expect("token").to_owned())
        .collect();
    (child, base, tokens)
}

/// One portal's request counters from the sandbox's control path (`total`, `writes`,
/// `http_429`, per-endpoint `endpoints`); reading them spends no API budget.
pub async fn counters(base: &str, portal: &str) -> Value {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client")
        .get(format!("{base}/_sandbox/portals/{portal}/counters"))
        .send()
        .await
        .expect("counters")
        .json()
        .await
        .expect("counters JSON")
}

/// Starts an in-process sandbox whose portals (`config.portals`, in order) already hold `n`
/// deals each, named `Deal 0`…`Deal n-1`; returns it and each portal's deal ids in order.
///
/// The deals are loaded with every limit off: a first sandbox on a state file in `dir` takes
/// them through batch create (100 per call) and saves them on shutdown; the returned sandbox
/// starts from that file (same tokens and secrets) with `config`'s own rate limits, whose
/// windows are then empty. Setup calls never spend the budget a bench measures.
pub async fn sandbox_with_deals(
    dir: &Path,
    config: dealsync::sandbox::SandboxConfig,
    n: usize,
) -> (dealsync::sandbox::SandboxHandle, Vec<Vec<String>>) {
    let names = vec![0..n; config.portals.len()];
    sandbox_with_deal_counts(dir, config, &names).await
}

/// A `/proc/PID/status` field in MB (`VmRSS`, `VmHWM`); NaN if unreadable.
pub fn status_mb(pid: u32, field: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
        / 1024.0
}

/// `x` to one decimal, as the benches report MB and seconds.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Sets the deal pollers' cursors of `portals` to `at_ms`, as a daemon that had polled them
/// then would have left them.
pub async fn set_deal_cursors(db: &Path, portals: &[&str], at_ms: i64) {
    let store = Store::open(db).await.expect("store");
    let portals: Vec<String> = portals.iter().map(|p| (*p).to_owned()).collect();
    store
        .call(move |c| {
            for p in &portals {
                c.execute(
                    "INSERT OR REPLACE INTO cursors (portal, value_ms, updated_at) VALUES (?1, ?2, ?2)",
                    rusqlite::params![p, at_ms],
                )?;
            }
            Ok(())
        })
        .await
        .expect("cursors");
}

/// Like [`sandbox_with_deals`], with deals `Deal i` for each `i` of `names[p]` in the p-th
/// portal of `config`.
pub async fn sandbox_with_deal_counts(
    dir: &Path,
    config: dealsync::sandbox::SandboxConfig,
    names: &[std::ops::Range<usize>],
) -> (dealsync::sandbox::SandboxHandle, Vec<Vec<String>>) {
    use dealsync::crm::{Budget, RetryPolicy};
    use dealsync::sandbox::{self, SandboxConfig};
    use std::sync::Arc;
    let state = dir.join("sandbox-state.json");
    let loader = sandbox::start(SandboxConfig {
        rate_limit_per_10s: None,
        daily_limit: None,
        search_per_s: None,
        state_file: Some(state.clone()),
        webhook_targets: Vec::new(),
        app_webhook_target: None,
        ..config.clone()
    })
    .await
    .expect("loading sandbox");
    let clients: Vec<Client> = loader
        .portals
        .iter()
        .map(|p| {
            Client::new(
                &p.name,
                &loader.base_url,
                &p.token,
                Arc::new(Budget::new(1_000_000, 1_000_000)),
                RetryPolicy::default(),
            )
            .expect("client")
        })
        .collect();
    let mut ids = Vec::with_capacity(clients.len());
    // A few portals at a time: a thousand at once would open a thousand connections.
    for (chunk, names) in clients.chunks(16).zip(names.chunks(16)) {
        ids.extend(
            futures_util::future::join_all(
                chunk
                    .iter()
                    .zip(names)
                    .map(|(c, r)| create_named_deals(c, r.clone())),
            )
            .await,
        );
    }
    loader.shutdown().await; // saves the state file
    let sb = sandbox::start(SandboxConfig {
        state_file: Some(state),
        ..config
    })
    .await
    .expect("sandbox");
    (sb, ids)
}

/// Links each (partner, partner deal, HubSpot deal, agreed `dealname`) in the store at `db`,
/// as after a first sync.
pub async fn link_agreed_named(db: &Path, links: &[(String, String, String, String)]) {
    let store = Store::open(db).await.expect("store");
    let links = links.to_vec();
    store
        .call(move |c| {
            let tx = c.transaction()?;
            for (partner, p, h, name) in &links {
                let l = store::insert_link(&tx, partner, p, h, "channel")?;
                tx.execute(
                    "INSERT INTO shadows (link_id, field, value, updated_at) VALUES (?1, 'dealname', ?2, 0)",
                    rusqlite::params![l.id, name],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
        .expect("links");
}

/// Per endpoint, how many more calls `after` counts than `before` (sandbox counters).
pub fn diff(before: &Value, after: &Value) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    if let Some(a) = after["endpoints"].as_object() {
        for (k, v) in a {
            let n = v.as_u64().unwrap_or(0) - before["endpoints"][k].as_u64().unwrap_or(0);
            if n > 0 {
                out.insert(k.clone(), n);
            }
        }
    }
    out
}

/// One look at the queue: (jobs, earliest `enqueued_at`).
pub fn queue(db: &Path) -> (i64, Option<i64>) {
    let Ok(c) = store::open_read_only(db) else {
        return (0, None);
    };
    c.query_row("SELECT COUNT(*), MIN(enqueued_at) FROM jobs", [], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .unwrap_or((0, None))
}

/// Links with a `job_history` row at or after `since`, and the earliest and latest such
/// row's time.
pub fn covered(db: &Path, since: i64) -> (i64, Option<i64>, Option<i64>) {
    let c = store::open_read_only(db).expect("store");
    c.query_row(
        "SELECT COUNT(DISTINCT link_id), MIN(at), MAX(at) FROM job_history WHERE at >= ?1",
        [since],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .expect("job_history")
}

/// `job_history` rows at or after `since`, counted by outcome.
pub fn outcomes(db: &Path, since: i64) -> std::collections::BTreeMap<String, i64> {
    let c = store::open_read_only(db).expect("store");
    let mut st = c
        .prepare("SELECT outcome, COUNT(*) FROM job_history WHERE at >= ?1 GROUP BY outcome")
        .expect("job_history");
    st.query_map([since], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("job_history")
        .collect::<Result<_, _>>()
        .expect("job_history")
}

/// User plus system CPU seconds the process has used (`/proc/PID/stat` fields 14 and 15, in
/// clock ticks of 1/100 s on Linux).
pub fn cpu_s(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces; count from the closing parenthesis.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// A `dealsync.toml` in `dir` for the sandbox at `base`: HubSpot's portal and `n` partners
/// `p0`… (tokens from `HS_TOKEN`, `P0_TOKEN`…), the store in `dir`, then `extra`.
pub fn partners_config(dir: &Path, base: &str, n: usize, extra: &str) -> std::path::PathBuf {
    let mut text = format!(
        "[store]\npath = \"{}\"\ndead_letter_path = \"{}\"\n[hubspot]\nbase_url = \"{base}\"\ntoken_env = \"HS_TOKEN\"\n",
        dir.join("dealsync.db").display(),
        dir.join("dl.jsonl").display(),
    );
    for i in 0..n {
        text.push_str(&format!(
            "[[partners]]\nname = \"p{i}\"\nbase_url = \"{base}\"\ntoken_env = \"P{i}_TOKEN\"\n[partners.stage_map]\nqualifiedtobuy = \"qualifiedtobuy\"\n"
        ));
    }
    text.push_str(extra);
    let path = dir.join("dealsync.toml");
    std::fs::write(&path, text).unwrap();
    path
}
