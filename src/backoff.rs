//! The one retry schedule: a wait that doubles from `base` with each attempt, capped at `max`,
//! and jittered so retries of many jobs (or events) that failed together do not come back
//! together. The engine's job retries, the notification outbox and the sandbox's webhook
//! redeliveries all use it; HTTP-level retries inside one call go through `backon` in `crm`.
//!
//! Pure: the random draw is passed in ([`Backoff::delay`]), so the schedule is tested without
//! randomness and the sandbox can use its seeded generator.

use std::time::Duration;

/// How a delay is spread around the doubled, capped wait `w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Exactly `w`: a schedule an operator can predict (notifications).
    None,
    /// In `[w/2, w)`: never past the cap (engine jobs).
    Down,
    /// In `[w/2, 3w/2)`: around `w`, as HubSpot spreads webhook retries (the sandbox).
    Around,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    pub jitter: Jitter,
}

impl Backoff {
    /// The wait before attempt `attempts + 1` without jitter: `base × 2^attempts`, at most
    /// `max`. Negative or huge attempt counts (from a store or a replay) saturate.
    pub fn ceiling(&self, attempts: i64) -> Duration {
        let factor = 2u32.saturating_pow(attempts.clamp(0, 31) as u32);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The jittered wait for a random `draw` in `[0, 1)` (clamped there).
    pub fn delay(&self, attempts: i64, draw: f64) -> Duration {
        let w = self.ceiling(attempts);
        let draw = if draw.is_finite() {
            draw.clamp(0.0, 1.0)
        } else {
            0.0
        };
        match self.jitter {
            Jitter::None => w,
            Jitter::Down => scale(w, 0.5 + draw / 2.0),
            Jitter::Around => scale(w, 0.5 + draw),
        }
    }

    /// [`Backoff::delay`] with a draw from the thread's generator.
    pub fn delay_now(&self, attempts: i64) -> Duration {
        self.delay(attempts, rand::random::<f64>())
    }
}

/// `w × f` to the millisecond, saturating where `Duration::mul_f64` would panic.
fn scale(w: Duration, f: f64) -> Duration {
    let ms = (w.as_millis() as f64 * f).floor();
    if ms < u64::MAX as f64 {
        Duration::from_millis(ms as u64)
    } else {
        Duration::MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_from_the_base_up_to_the_cap() {
        let b = Backoff {
            base: ms(1000),
            max: ms(10_000),
            jitter: Jitter::None,
        };
        let got: Vec<u64> = (0..6).map(|a| b.ceiling(a).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 10, 10]);
        assert_eq!(b.ceiling(i64::MAX), ms(10_000));
        assert_eq!(b.ceiling(-5), ms(1000));
        assert_eq!(b.delay(3, 0.99), ms(8000));
    }

    #[test]
    fn jitter_stays_in_its_band() {
        let down = Backoff {
            base: ms(100),
            max: ms(1000),
            jitter: Jitter::Down,
        };
        assert_eq!(down.delay(2, 0.0), ms(200));
        assert_eq!(down.delay(2, 0.5), ms(300));
        assert!(down.delay(9, 0.999_999) < ms(1000));
        let around = Backoff {
            jitter: Jitter::Around,
            ..down
        };
        assert_eq!(around.delay(1, 0.0), ms(100));
        assert_eq!(around.delay(1, 1.0), ms(300));
        // A draw outside [0, 1) (or NaN) cannot push a wait out of its band.
        assert_eq!(around.delay(1, 7.0), ms(300));
        assert_eq!(around.delay(1, f64::NAN), ms(100));
        for a in 0..40 {
            let d = down.delay_now(a);
            assert!(d >= down.ceiling(a) / 2 && d <= down.ceiling(a), "{d:?}");
        }
    }

    #[test]
    fn a_huge_base_saturates_instead_of_overflowing() {
        let b = Backoff {
            base: Duration::MAX,
            max: Duration::MAX,
            jitter: Jitter::None,
        };
        assert_eq!(b.ceiling(30), Duration::MAX);
        let around = Backoff {
            jitter: Jitter::Around,
            ..b
        };
        assert_eq!(around.delay(30, 0.9), Duration::MAX);
    }
}
