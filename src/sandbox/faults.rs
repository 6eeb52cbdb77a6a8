//! Fault injection, per portal, set through `PUT /_sandbox/portals/{name}/faults`.
//!
//! API faults are drawn before the request reaches its handler (so a refused request changes
//! nothing), except `error_after_write`, which lets the handler do its work and then answers
//! 500 — the case where a client cannot know whether its write happened.

use serde::{Deserialize, Serialize};

use super::error::ApiError;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Probability of a 429 (TEN_SECONDLY_ROLLING) answer.
    pub rate_429: f64,
    /// Probability of a 500 answer.
    pub rate_500: f64,
    /// Probability of a 503 answer.
    pub rate_503: f64,
    /// Probability of a 502 with an HTML body, as a proxy in front of HubSpot sends.
    pub rate_502_html: f64,
    /// Probability that the request hangs for `timeout_ms` and then gets a 504.
    pub rate_timeout: f64,
    /// Probability that a write is applied and then answered with a 500.
    pub error_after_write: f64,
    /// Added latency for every API call.
    pub latency_ms: u64,
    /// How long a simulated timeout hangs.
    pub timeout_ms: u64,
    /// The next N API calls fail with `burst_status` (deterministic storms for tests).
    pub burst_count: u32,
    pub burst_status: u16,
    /// Only calls whose path starts with one of these prefixes are faulted (empty: all).
    pub paths: Vec<String>,
    /// Search sees the portal as it was this many milliseconds ago (HubSpot's index lag).
    pub search_lag_ms: u64,
    /// Webhook delivery faults: probabilities per event (drop, duplicate), per batch (reorder,
    /// missing signature headers), and a delay before each delivery attempt.
    pub webhook_drop: f64,
    pub webhook_duplicate: f64,
    pub webhook_reorder: f64,
    pub webhook_missing_headers: f64,
    pub webhook_delay_ms: u64,
}

/// What the gate does to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Draw {
    None,
    Status(u16),
    Html502,
    Timeout,
    AfterWrite,
}

impl Faults {
    pub fn validate(&self) -> Result<(), ApiError> {
        let probs = [
            ("rate_429", self.rate_429),
            ("rate_500", self.rate_500),
            ("rate_503", self.rate_503),
            ("rate_502_html", self.rate_502_html),
            ("rate_timeout", self.rate_timeout),
            ("error_after_write", self.error_after_write),
            ("webhook_drop", self.webhook_drop),
            ("webhook_duplicate", self.webhook_duplicate),
            ("webhook_reorder", self.webhook_reorder),
            ("webhook_missing_headers", self.webhook_missing_headers),
        ];
        for (name, p) in probs {
            if !(0.0..=1.0).contains(&p) {
                return Err(ApiError::validation(format!(
                    "{name} must be a probability between 0 and 1, got {p}"
                )));
            }
        }
        if self.burst_count > 0 && !(400..=599).contains(&self.burst_status) {
            return Err(ApiError::validation(
                "burst_status must be an HTTP error status (400-599) when burst_count is set",
            ));
        }
        Ok(())
    }

    fn applies(&self, path: &str) -> bool {
        self.paths.is_empty() || self.paths.iter().any(|p| path.starts_with(p.as_str()))
    }

    /// Draws the fate of one request; `roll` yields uniform numbers in `[0, 1)`.
    pub fn draw(&mut self, path: &str, write: bool, mut roll: impl FnMut() -> f64) -> Draw {
        if !self.applies(path) {
            return Draw::None;
        }
        if self.burst_count > 0 {
            self.burst_count -= 1;
            return Draw::Status(self.burst_status);
        }
        let r = roll();
        let mut edge = 0.0;
        for (p, d) in [
            (self.rate_429, Draw::Status(429)),
            (self.rate_500, Draw::Status(500)),
            (self.rate_503, Draw::Status(503)),
            (self.rate_502_html, Draw::Html502),
            (self.rate_timeout, Draw::Timeout),
        ] {
            edge += p;
            if r < edge {
                return d;
            }
        }
        if write && self.error_after_write > 0.0 && roll() < self.error_after_write {
            return Draw::AfterWrite;
        }
        Draw::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_fails_exactly_n_calls() {
        let mut f = Faults {
            burst_count: 2,
            burst_status: 503,
            ..Faults::default()
        };
        assert_eq!(f.draw("/crm", false, || 0.5), Draw::Status(503));
        assert_eq!(f.draw("/crm", false, || 0.5), Draw::Status(503));
        assert_eq!(f.draw("/crm", false, || 0.5), Draw::None);
    }

    #[test]
    fn probabilities_partition_the_roll() {
        let mut f = Faults {
            rate_429: 0.25,
            rate_500: 0.25,
            ..Faults::default()
        };
        assert_eq!(f.draw("/x", false, || 0.1), Draw::Status(429));
        assert_eq!(f.draw("/x", false, || 0.3), Draw::Status(500));
        assert_eq!(f.draw("/x", false, || 0.6), Draw::None);
    }

    #[test]
    fn path_filter_and_validation() {
        let mut f = Faults {
            rate_500: 1.0,
            paths: vec!["/crm/v3/objects/deals/search".into()],
            ..Faults::default()
        };
        assert_eq!(f.draw("/crm/v3/objects/notes", false, || 0.0), Draw::None);
        assert_eq!(
            f.draw("/crm/v3/objects/deals/search", false, || 0.0),
            Draw::Status(500)
        );
        assert!(Faults {
            rate_429: 1.5,
            ..Faults::default()
        }
        .validate()
        .is_err());
    }
}
