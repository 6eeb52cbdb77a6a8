//! In-process counters for `/metrics`, rendered in Prometheus' text exposition format
//! (version 0.0.4). Counters live in atomics updated by the engine; gauges (queue depth) and
//! per-portal call counts are read when scraped. Labels carry portal names and outcome
//! classes only — never deal values, note bodies or secrets.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds (seconds) of the propagation-latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];

/// The engine's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Finished jobs by outcome class (`synced`, `no_change`, `retry`, `dead_letter`, …).
    jobs: Mutex<BTreeMap<String, u64>>,
    /// From a job's enqueueing (the change noticed) to its commit (written on the other side).
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    /// Sum in microseconds, to keep it an integer atomic.
    latency_sum_us: AtomicU64,
    dead_letters: AtomicU64,
    conflicts: AtomicU64,
    /// Events at the app's webhook target for a portal id no configured portal has.
    webhook_unrouted: AtomicU64,
    /// Note bodies read to decide whether a note is shared (tag marking).
    bodies_read: AtomicU64,
}

impl Metrics {
    pub fn job(&self, outcome: &crate::store::JobOutcome) {
        let mut m = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(outcome.label()).or_default() += 1;
    }

    pub fn propagated(&self, seconds: f64) {
        let s = seconds.max(0.0);
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            if s <= *le {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add((s * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn dead_lettered(&self, n: u64) {
        self.dead_letters.fetch_add(n, Ordering::Relaxed);
    }

    pub fn conflicted(&self, n: u64) {
        self.conflicts.fetch_add(n, Ordering::Relaxed);
    }

    pub fn webhook_unrouted(&self, n: u64) {
        self.webhook_unrouted.fetch_add(n, Ordering::Relaxed);
    }

    pub fn bodies_read(&self, n: u64) {
        self.bodies_read.fetch_add(n, Ordering::Relaxed);
    }
}

/// Values read at scrape time.
#[derive(Debug, Default, Clone)]
pub struct Scrape {
    pub queue_depth: i64,
    pub oldest_job_age_s: f64,
    /// Per portal: (API calls made, 429s received).
    pub portals: Vec<(String, u64, u64)>,
    /// Portals the mass-deletion guard holds.
    pub guarded: Vec<String>,
    /// Portals whose OAuth install HubSpot refused (their work is held).
    pub auth_revoked: Vec<String>,
    /// Notifications waiting to go out, and given up on (dead-lettered).
    pub notifications_pending: i64,
    pub notifications_dead: i64,
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

/// Renders everything in the Prometheus text format.
pub fn render(m: &Metrics, s: &Scrape) -> String {
    let mut o = String::new();
    family(
        &mut o,
        "dealsync_jobs_total",
        "counter",
        "Finished sync jobs by outcome.",
    );
    let jobs = m.jobs.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for (k, v) in &jobs {
        let _ = writeln!(o, "dealsync_jobs_total{{outcome=\"{}\"}} {v}", escape(k));
    }
    family(
        &mut o,
        "dealsync_propagation_seconds",
        "histogram",
        "From a change being noticed to its write on the other side committed.",
    );
    for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
        let _ = writeln!(
            o,
            "dealsync_propagation_seconds_bucket{{le=\"{le}\"}} {}",
            m.latency_buckets[i].load(Ordering::Relaxed)
        );
    }
    let count = m.latency_count.load(Ordering::Relaxed);
    let _ = writeln!(
        o,
        "dealsync_propagation_seconds_bucket{{le=\"+Inf\"}} {count}"
    );
    let _ = writeln!(
        o,
        "dealsync_propagation_seconds_sum {}",
        m.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
    );
    let _ = writeln!(o, "dealsync_propagation_seconds_count {count}");
    family(
        &mut o,
        "dealsync_dead_letters_total",
        "counter",
        "Jobs written to the dead-letter file.",
    );
    let _ = writeln!(
        o,
        "dealsync_dead_letters_total {}",
        m.dead_letters.load(Ordering::Relaxed)
    );
    family(
        &mut o,
        "dealsync_conflicts_total",
        "counter",
        "Fields both sides changed differently (resolved by policy, recorded).",
    );
    let _ = writeln!(
        o,
        "dealsync_conflicts_total {}",
        m.conflicts.load(Ordering::Relaxed)
    );
    family(
        &mut o,
        "dealsync_webhook_events_unrouted_total",
        "counter",
        "Events at the app's webhook target for a portal id no configured portal has (dropped).",
    );
    let _ = writeln!(
        o,
        "dealsync_webhook_events_unrouted_total {}",
        m.webhook_unrouted.load(Ordering::Relaxed)
    );
    family(
        &mut o,
        "dealsync_note_bodies_read_total",
        "counter",
        "Note bodies read to see whether a note starts with the tag (tag marking): the notes HubSpot's search returned for the tag, and pairs' notes that changed.",
    );
    let _ = writeln!(
        o,
        "dealsync_note_bodies_read_total {}",
        m.bodies_read.load(Ordering::Relaxed)
    );
    family(
        &mut o,
        "dealsync_queue_depth",
        "gauge",
        "Jobs waiting or running.",
    );
    let _ = writeln!(o, "dealsync_queue_depth {}", s.queue_depth);
    family(
        &mut o,
        "dealsync_oldest_job_age_seconds",
        "gauge",
        "Age of the oldest queued job.",
    );
    let _ = writeln!(o, "dealsync_oldest_job_age_seconds {}", s.oldest_job_age_s);
    family(
        &mut o,
        "dealsync_notifications",
        "gauge",
        "Notifications in the outbox by state (pending: waiting or retrying; dead: given up).",
    );
    let _ = writeln!(
        o,
        "dealsync_notifications{{state=\"pending\"}} {}",
        s.notifications_pending
    );
    let _ = writeln!(
        o,
        "dealsync_notifications{{state=\"dead\"}} {}",
        s.notifications_dead
    );
    family(
        &mut o,
        "dealsync_api_calls_total",
        "counter",
        "HubSpot API calls made, per portal.",
    );
    for (p, calls, _) in &s.portals {
        let _ = writeln!(
            o,
            "dealsync_api_calls_total{{portal=\"{}\"}} {calls}",
            escape(p)
        );
    }
    family(
        &mut o,
        "dealsync_rate_limited_total",
        "counter",
        "HTTP 429 answers received, per portal.",
    );
    for (p, _, limited) in &s.portals {
        let _ = writeln!(
            o,
            "dealsync_rate_limited_total{{portal=\"{}\"}} {limited}",
            escape(p)
        );
    }
    family(
        &mut o,
        "dealsync_mass_deletion_guard",
        "gauge",
        "1 while the mass-deletion guard holds a portal (see `dealsync status`).",
    );
    for (p, _, _) in &s.portals {
        let _ = writeln!(
            o,
            "dealsync_mass_deletion_guard{{portal=\"{}\"}} {}",
            escape(p),
            u8::from(s.guarded.contains(p))
        );
    }
    family(
        &mut o,
        "dealsync_auth_revoked",
        "gauge",
        "1 while a portal's OAuth install is revoked and its work waits (send its install link again).",
    );
    for (p, _, _) in &s.portals {
        let _ = writeln!(
            o,
            "dealsync_auth_revoked{{portal=\"{}\"}} {}",
            escape(p),
            u8::from(s.auth_revoked.contains(p))
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn note_bodies_read_are_counted_on_metrics() {
        let m = Metrics::default();
        m.bodies_read(3);
        m.bodies_read(2);
        let text = render(&m, &Scrape::default());
        assert!(text.contains("dealsync_note_bodies_read_total 5"), "{text}");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.propagated(0.07);
        m.propagated(3.0);
        let text = render(&m, &Scrape::default());
        assert!(text.contains("dealsync_propagation_seconds_bucket{le=\"0.05\"} 0"));
        assert!(text.contains("dealsync_propagation_seconds_bucket{le=\"0.1\"} 1"));
        assert!(text.contains("dealsync_propagation_seconds_bucket{le=\"5\"} 2"));
        assert!(text.contains("dealsync_propagation_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("dealsync_propagation_seconds_count 2"));
    }
}
