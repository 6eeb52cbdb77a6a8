//! HubSpot's rate limits as a portal sees them: a rolling 10-second window and a daily count
//! for ordinary calls (answered with `X-HubSpot-RateLimit-*` headers), and a separate
//! per-second limit for search, whose answers carry no rate-limit headers at all.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::error::ApiError;

const WINDOW: Duration = Duration::from_secs(10);

pub struct Limits {
    per_10s: Option<u32>,
    daily: Option<u64>,
    search_per_s: Option<u32>,
    window: VecDeque<Instant>,
    search_window: VecDeque<Instant>,
    day: i64,
    day_count: u64,
}

/// Header values for an admitted ordinary call.
pub struct RateHeaders {
    pub max: u32,
    pub remaining: u32,
    pub daily: Option<(u64, u64)>,
}

impl Limits {
    pub fn new(per_10s: Option<u32>, daily: Option<u64>, search_per_s: Option<u32>) -> Self {
        Limits {
            per_10s: per_10s.filter(|n| *n > 0),
            daily: daily.filter(|n| *n > 0),
            search_per_s: search_per_s.filter(|n| *n > 0),
            window: VecDeque::new(),
            search_window: VecDeque::new(),
            day: 0,
            day_count: 0,
        }
    }

    /// Admits or refuses one request. Refused requests are not counted, so a client that
    /// backs off recovers as soon as the window moves.
    pub fn admit(
        &mut self,
        search: bool,
        now: Instant,
        day: i64,
    ) -> Result<Option<RateHeaders>, ApiError> {
        if day != self.day {
            self.day = day;
            self.day_count = 0;
        }
        if let Some(max) = self.daily {
            if self.day_count >= max {
                return Err(ApiError::rate_limited(
                    "DAILY",
                    "You have reached your daily limit.",
                ));
            }
        }
        if search {
            if let Some(max) = self.search_per_s {
                while self
                    .search_window
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
                {
                    self.search_window.pop_front();
                }
                if self.search_window.len() >= max as usize {
                    return Err(ApiError::rate_limited(
                        "SECONDLY",
                        "You have reached your secondly limit.",
                    ));
                }
                self.search_window.push_back(now);
            }
            self.day_count += 1;
            return Ok(None);
        }
        let Some(max) = self.per_10s else {
            self.day_count += 1;
            return Ok(None);
        };
        while self
            .window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            self.window.pop_front();
        }
        if self.window.len() >= max as usize {
            return Err(ApiError::rate_limited(
                "TEN_SECONDLY_ROLLING",
                "You have reached your ten_secondly_rolling limit.",
            ));
        }
        self.window.push_back(now);
        self.day_count += 1;
        Ok(Some(RateHeaders {
            max,
            remaining: max - self.window.len() as u32,
            daily: self.daily.map(|d| (d, d - self.day_count)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_window_refuses_the_101st_and_recovers() {
        let mut l = Limits::new(Some(100), None, None);
        let t0 = Instant::now();
        for i in 0..100 {
            let h = l.admit(false, t0, 0).unwrap().unwrap();
            assert_eq!(h.remaining, 99 - i);
        }
        let e = l.admit(false, t0, 0).err().unwrap();
        assert_eq!(e.status.as_u16(), 429);
        assert_eq!(e.body()["policyName"], "TEN_SECONDLY_ROLLING");
        assert!(l.admit(false, t0 + WINDOW, 0).is_ok());
    }

    #[test]
    fn search_has_its_own_limit_and_no_headers() {
        let mut l = Limits::new(Some(100), None, Some(4));
        let t0 = Instant::now();
        for _ in 0..4 {
            assert!(l.admit(true, t0, 0).unwrap().is_none());
        }
        assert_eq!(
            l.admit(true, t0, 0).err().unwrap().body()["policyName"],
            "SECONDLY"
        );
        // Ordinary calls are unaffected by the search limit.
        assert!(l.admit(false, t0, 0).unwrap().is_some());
    }

    #[test]
    fn daily_limit_resets_on_a_new_day() {
        let mut l = Limits::new(None, Some(2), None);
        let t0 = Instant::now();
        assert!(l.admit(false, t0, 1).is_ok());
        assert!(l.admit(false, t0, 1).is_ok());
        assert_eq!(
            l.admit(false, t0, 1).err().unwrap().body()["policyName"],
            "DAILY"
        );
        assert!(l.admit(false, t0, 2).is_ok());
    }
}
