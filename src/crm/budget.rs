//! A client-side rate budget per portal, so a healthy run never sees a 429: ordinary calls stay
//! under the rolling 10-second limit and searches under the per-second search limit. A 429
//! that still arrives pauses the whole budget for the window it names instead of letting every
//! worker hammer the portal.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// Which limit a call counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    Ordinary,
    Search,
}

struct Window {
    max: usize,
    span: Duration,
    sent: VecDeque<Instant>,
}

impl Window {
    /// How long to wait before one more call fits, after dropping calls that left the window.
    fn wait(&mut self, now: Instant) -> Option<Duration> {
        while self
            .sent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.span)
        {
            self.sent.pop_front();
        }
        if self.sent.len() < self.max {
            None
        } else {
            self.sent
                .front()
                .map(|t| (*t + self.span).saturating_duration_since(now))
        }
    }
}

struct State {
    ordinary: Window,
    search: Window,
    paused_until: Option<Instant>,
}

pub struct Budget {
    state: Mutex<State>,
    used: std::sync::atomic::AtomicU64,
}

/// Extra time added to each window: the server counts a request when it arrives, a little
/// after we counted it, so a window edge must not be cut exactly.
const EDGE_MARGIN: Duration = Duration::from_millis(300);

impl Budget {
    pub fn new(per_10s: u32, search_per_s: u32) -> Budget {
        Budget {
            state: Mutex::new(State {
                ordinary: Window {
                    max: per_10s.max(1) as usize,
                    span: Duration::from_secs(10) + EDGE_MARGIN,
                    sent: VecDeque::new(),
                },
                search: Window {
                    max: search_per_s.max(1) as usize,
                    span: Duration::from_secs(1) + EDGE_MARGIN,
                    sent: VecDeque::new(),
                },
                paused_until: None,
            }),
            used: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Waits until one call of `kind` fits the budget, then counts it.
    pub async fn acquire(&self, kind: CallKind) {
        loop {
            let wait = {
                let mut st = self.state.lock().await;
                let now = Instant::now();
                let paused = st.paused_until.filter(|u| *u > now).map(|u| u - now);
                let window = match kind {
                    CallKind::Ordinary => &mut st.ordinary,
                    CallKind::Search => &mut st.search,
                };
                match paused.or_else(|| window.wait(now)) {
                    None => {
                        window.sent.push_back(now);
                        self.used.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return;
                    }
                    Some(w) => w,
                }
            };
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }

    /// Stops all calls for `d` (after a 429).
    pub async fn pause(&self, d: Duration) {
        let mut st = self.state.lock().await;
        let until = Instant::now() + d;
        st.paused_until = Some(st.paused_until.map_or(until, |u| u.max(until)));
    }

    /// Calls counted so far (for status and metrics).
    pub fn used(&self) -> u64 {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_eleventh_call_waits_for_the_window() {
        let b = Budget::new(10, 4);
        let t0 = Instant::now();
        for _ in 0..10 {
            b.acquire(CallKind::Ordinary).await;
        }
        assert_eq!(Instant::now(), t0, "ten calls fit at once");
        b.acquire(CallKind::Ordinary).await;
        assert!(
            Instant::now() - t0 >= Duration::from_secs(10),
            "the 11th waits out the window"
        );
        // Search has its own window.
        let t1 = Instant::now();
        for _ in 0..4 {
            b.acquire(CallKind::Search).await;
        }
        assert_eq!(Instant::now(), t1);
        b.acquire(CallKind::Search).await;
        assert!(Instant::now() - t1 >= Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_call() {
        let b = Budget::new(100, 4);
        b.pause(Duration::from_secs(3)).await;
        let t0 = Instant::now();
        b.acquire(CallKind::Search).await;
        assert!(Instant::now() - t0 >= Duration::from_secs(3));
    }
}
