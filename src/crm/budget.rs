//! A client-side rate budget per portal, so a healthy run never sees a 429: ordinary calls stay
//! under the rolling 10-second limit and searches under the per-second search limit. A 429
//! that still arrives pauses the whole budget for the window it names instead of letting every
//! worker hammer the portal.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Which limit a call counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    Ordinary,
    Search,
}

/// One rolling window. A call occupies a place from when it is sent; once its answer has
/// arrived the place is dated by that arrival. HubSpot counts a request when it reaches the
/// server, which is after we sent it and before we heard back, so a new call sent `span`
/// after the answer to the call it replaces can never land inside the server's window — no
/// guessed safety margin is needed, and the budget runs at the full limit.
struct Window {
    max: usize,
    span: Duration,
    /// Answer times of finished calls still inside the window, oldest first.
    done: VecDeque<Instant>,
    in_flight: usize,
}

/// The longest pause a 429 can impose (HubSpot's longest window is its daily limit).
const MAX_PAUSE: Duration = Duration::from_secs(24 * 3600);

/// How long to look again when every place is held by a call still in flight.
const IN_FLIGHT_RECHECK: Duration = Duration::from_millis(5);

/// Timer granularity: a window edge is not cut exactly.
const EDGE_MARGIN: Duration = Duration::from_millis(20);

impl Window {
    fn new(max: u32, span: Duration) -> Window {
        Window {
            max: max.max(1) as usize,
            span: span + EDGE_MARGIN,
            done: VecDeque::new(),
            in_flight: 0,
        }
    }

    /// How long to wait before one more call fits, after dropping calls that left the window.
    fn wait(&mut self, now: Instant) -> Option<Duration> {
        while self
            .done
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.span)
        {
            self.done.pop_front();
        }
        if self.done.len() + self.in_flight < self.max {
            None
        } else {
            Some(self.done.front().map_or(IN_FLIGHT_RECHECK, |t| {
                (*t + self.span).saturating_duration_since(now)
            }))
        }
    }
}

struct State {
    ordinary: Window,
    search: Window,
    paused_until: Option<Instant>,
}

impl State {
    fn window(&mut self, kind: CallKind) -> &mut Window {
        match kind {
            CallKind::Ordinary => &mut self.ordinary,
            CallKind::Search => &mut self.search,
        }
    }
}

pub struct Budget {
    // A std mutex: every critical section is a few instructions and never awaits, and the
    // slot's `Drop` must be able to take it.
    state: Mutex<State>,
    used: AtomicU64,
    rate_limited: AtomicU64,
}

/// A place in the budget, held while a call is in flight; dropping it (once the answer's
/// status line has arrived, or the call failed) dates the place.
#[must_use = "hold the slot until the call has been answered"]
pub struct Slot {
    budget: Arc<Budget>,
    kind: CallKind,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = self.budget.lock();
        let now = Instant::now();
        let w = st.window(self.kind);
        w.in_flight = w.in_flight.saturating_sub(1);
        w.done.push_back(now);
    }
}

impl Budget {
    pub fn new(per_10s: u32, search_per_s: u32) -> Budget {
        Budget {
            state: Mutex::new(State {
                ordinary: Window::new(per_10s, Duration::from_secs(10)),
                search: Window::new(search_per_s, Duration::from_secs(1)),
                paused_until: None,
            }),
            used: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the counters inconsistent in a way
        // worse than a slightly wrong pace, so a poisoned lock is simply used.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until one call of `kind` fits the budget, then holds a place for it.
    pub async fn acquire(self: &Arc<Self>, kind: CallKind) -> Slot {
        loop {
            let wait = {
                let mut st = self.lock();
                let now = Instant::now();
                let paused = st.paused_until.filter(|u| *u > now).map(|u| u - now);
                let window = st.window(kind);
                match paused.or_else(|| window.wait(now)) {
                    None => {
                        window.in_flight += 1;
                        self.used.fetch_add(1, Ordering::Relaxed);
                        return Slot {
                            budget: self.clone(),
                            kind,
                        };
                    }
                    Some(w) => w,
                }
            };
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }

    /// Stops all calls for `d` (after a 429).
    pub fn pause(&self, d: Duration) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
        let mut st = self.lock();
        // A portal asking for an absurd pause gets at most a day of it.
        let until = Instant::now() + d.min(MAX_PAUSE);
        st.paused_until = Some(st.paused_until.map_or(until, |u| u.max(until)));
    }

    /// 429 answers received (for metrics).
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }

    /// Calls counted so far (for status and metrics).
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_eleventh_call_waits_for_the_window() {
        let b = Arc::new(Budget::new(10, 4));
        let t0 = Instant::now();
        for _ in 0..10 {
            drop(b.acquire(CallKind::Ordinary).await);
        }
        assert_eq!(Instant::now(), t0, "ten calls fit at once");
        drop(b.acquire(CallKind::Ordinary).await);
        assert!(
            Instant::now() - t0 >= Duration::from_secs(10),
            "the 11th waits out the window"
        );
        // Search has its own window.
        let t1 = Instant::now();
        for _ in 0..4 {
            drop(b.acquire(CallKind::Search).await);
        }
        assert_eq!(Instant::now(), t1);
        drop(b.acquire(CallKind::Search).await);
        assert!(Instant::now() - t1 >= Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_call() {
        let b = Arc::new(Budget::new(100, 4));
        b.pause(Duration::from_secs(3));
        let t0 = Instant::now();
        drop(b.acquire(CallKind::Search).await);
        assert!(Instant::now() - t0 >= Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_place_is_dated_by_the_answer_not_the_request() {
        let b = Arc::new(Budget::new(2, 4));
        let t0 = Instant::now();
        let slow = b.acquire(CallKind::Ordinary).await;
        drop(b.acquire(CallKind::Ordinary).await);
        // The slow call is answered 4 s after it was sent.
        let b2 = b.clone();
        let third = tokio::spawn(async move {
            drop(b2.acquire(CallKind::Ordinary).await);
            Instant::now()
        });
        tokio::time::sleep(Duration::from_secs(4)).await;
        drop(slow);
        let at = third.await.unwrap();
        // The fast call's place frees first, 10 s after t0; the slow one's at 14 s.
        assert!(at - t0 >= Duration::from_secs(10), "{:?}", at - t0);
        let t1 = Instant::now();
        drop(b.acquire(CallKind::Ordinary).await);
        assert!(
            Instant::now() - t0 >= Duration::from_secs(14),
            "{:?}",
            t1 - t0
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_absurd_retry_after_is_capped_not_an_overflow() {
        let b = Arc::new(Budget::new(100, 4));
        b.pause(Duration::MAX);
        b.pause(Duration::from_secs(u64::MAX));
        let t0 = Instant::now();
        drop(b.acquire(CallKind::Ordinary).await);
        assert!(Instant::now() - t0 <= MAX_PAUSE + Duration::from_secs(1));
    }
}
