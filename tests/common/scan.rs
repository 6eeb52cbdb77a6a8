//! The leak tests' search: a log capture, and scans of what dealsync could have put a private
//! marker in (another portal's whole state and files, the store, the dead letters, the log).

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::Portal;

/// Captures the process's log (install once per test binary).
#[derive(Clone, Default)]
pub struct Capture(pub Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Installs this capture for dealsync's trace-level log (the sandbox's own left out).
    pub fn install() -> Capture {
        let logs = Capture::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "dealsync=trace,dealsync::sandbox=off",
            ))
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .init();
        logs
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

pub fn assert_absent(what: &str, text: &str, marker: &str) {
    if let Some(i) = text.find(marker) {
        let around: String = text[i..].chars().take(80).collect();
        panic!("{what} contains {marker}: …{around}…");
    }
}

/// A portal's whole state: live and archived records with their history, file names.
pub async fn state(p: &Portal) -> Value {
    let a = p
        .http
        .get(format!("{}/_sandbox/portals/{}/state", p.base, p.info.name))
        .send()
        .await
        .unwrap();
    a.json::<Value>().await.unwrap()
}

/// Asserts `marker` is in neither `p`'s state nor any of its files' content; returns how
/// many files were read.
pub async fn assert_portal_clean(p: &Portal, marker: &str) -> usize {
    let dump = state(p).await;
    let what = format!("{}'s portal (records, history, file names)", p.info.name);
    assert_absent(&what, &dump.to_string(), marker);
    let mut scanned = 0;
    for id in dump["data"]["files"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(id, _)| id)
    {
        let r = p
            .http
            .get(p.url(&format!("/files/v3/files/{id}/download")))
            .bearer_auth(&p.info.token)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            let body = String::from_utf8_lossy(&r.bytes().await.unwrap()).into_owned();
            assert_absent(&format!("file {id} in {}", p.info.name), &body, marker);
            scanned += 1;
        }
    }
    scanned
}

/// Asserts none of `markers` is in the store (with its WAL), the dead-letter file or the log.
pub fn assert_local_clean(
    dir: &std::path::Path,
    dead: &std::path::Path,
    logs: &Capture,
    markers: &[String],
) {
    let mut files = vec![("store", std::fs::read(dir.join("dealsync.db")).unwrap())];
    for extra in ["dealsync.db-wal", "dealsync.db-shm"] {
        if let Ok(b) = std::fs::read(dir.join(extra)) {
            files.push((extra, b));
        }
    }
    files.push(("dead-letter file", std::fs::read(dead).unwrap_or_default()));
    let log = logs.text();
    assert!(
        log.lines().count() > 50,
        "trace logging captured a real log"
    );
    files.push(("dealsync's log", log.into_bytes()));
    for (what, bytes) in files {
        let text = String::from_utf8_lossy(&bytes);
        for m in markers {
            assert_absent(what, &text, m);
        }
    }
}

/// The leak tests' deals: H1 (HubSpot) contested by partner-a (A1) and partner-b (B1), best
/// partner wins; H2 (HubSpot) linked to A2 only.
pub struct LeakDeals {
    pub h1: String,
    pub h2: String,
    pub a1: String,
    pub a2: String,
    pub b1: String,
}

impl LeakDeals {
    pub async fn create(
        store: &dealsync::store::Store,
        hs: &Portal,
        pa: &Portal,
        pb: &Portal,
    ) -> LeakDeals {
        let deal = |p: &Portal, name: &str| {
            let (p, name) = (p.clone(), name.to_owned());
            async move { p.create_deal(serde_json::json!({ "dealname": name })).await }
        };
        let d = LeakDeals {
            h1: deal(hs, "Contested").await,
            h2: deal(hs, "Solo").await,
            a1: deal(pa, "Contested").await,
            a2: deal(pa, "Solo").await,
            b1: deal(pb, "Contested").await,
        };
        for (partner, pd, hd) in [
            ("partner-a", &d.a1, &d.h1),
            ("partner-a", &d.a2, &d.h2),
            ("partner-b", &d.b1, &d.h1),
        ] {
            let (p, pd, hd) = (partner.to_owned(), pd.clone(), hd.clone());
            store
                .call(move |c| dealsync::store::insert_link(c, &p, &pd, &hd, "best_partner_wins"))
                .await
                .unwrap();
        }
        d
    }
}
