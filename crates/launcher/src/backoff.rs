//! Exponential backoff with jitter, for reconnecting to the server and retrying uploads.

use std::time::Duration;

/// Delays of 0.5 s, 1 s, 2 s, ... up to `max`, each with up to 20% random jitter so that
/// launchers cut off together do not return together.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(max: Duration) -> Self {
        Self { next: Duration::from_millis(500), max }
    }

    pub(crate) fn reset(&mut self) {
        self.next = Duration::from_millis(500);
    }

    /// The delay to wait now; later calls return longer delays.
    pub(crate) fn delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base + base.mul_f64(jitter_fraction() * 0.2)
    }
}

/// A retry delay as people read it: to the tenth of a second.
pub(crate) fn shown(delay: Duration) -> String {
    format!("{:.1}s", delay.as_secs_f64())
}

/// A value in [0, 1) that differs between launchers and attempts. Jitter needs spread,
/// not unpredictability, so the clock's sub-second part is enough.
fn jitter_fraction() -> f64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    f64::from(nanos % 1000) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_maximum_and_reset() {
        let mut backoff = Backoff::new(Duration::from_secs(4));
        let delays: Vec<_> = (0..6).map(|_| backoff.delay()).collect();
        for (delay, base) in delays.iter().zip([500, 1000, 2000, 4000, 4000, 4000]) {
            let base = Duration::from_millis(base);
            assert!(*delay >= base && *delay <= base.mul_f64(1.2), "{delay:?} for {base:?}");
        }
        backoff.reset();
        assert!(backoff.delay() < Duration::from_millis(601));
    }
}
