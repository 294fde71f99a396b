//! Points in time as whole milliseconds since the Unix epoch: the representation the
//! store keeps and the scheduler orders by. The domain never reads the clock itself.

use std::time::Duration;

/// Milliseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const fn from_unix_millis(millis: i64) -> Self {
        Self(millis)
    }

    pub const fn unix_millis(self) -> i64 {
        self.0
    }

    /// This instant moved forward by `duration`, saturating at the end of time.
    pub fn plus(self, duration: Duration) -> Self {
        let millis = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        Self(self.0.saturating_add(millis))
    }

    /// How long after `earlier` this instant is; zero when it is not after it.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_wrapping() {
        let t = Timestamp::from_unix_millis(1_000);
        assert_eq!(t.plus(Duration::from_secs(2)).unix_millis(), 3_000);
        assert_eq!(t.since(Timestamp::from_unix_millis(5_000)), Duration::ZERO);
        assert_eq!(
            Timestamp::from_unix_millis(i64::MAX - 1).plus(Duration::from_secs(1)),
            Timestamp::from_unix_millis(i64::MAX)
        );
    }
}
