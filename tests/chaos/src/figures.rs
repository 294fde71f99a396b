//! Figures the suite prints: percentiles of measured durations.

use std::time::Duration;

/// The `percent`th percentile by the nearest-rank method; `None` for no samples.
pub fn percentile(samples: &[Duration], percent: u32) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = (sorted.len() * percent as usize).div_ceil(100).max(1);
    Some(sorted[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_secs).collect();
        assert_eq!(percentile(&samples, 50), Some(Duration::from_secs(50)));
        assert_eq!(percentile(&samples, 99), Some(Duration::from_secs(99)));
        assert_eq!(percentile(&[Duration::from_secs(3)], 99), Some(Duration::from_secs(3)));
        assert_eq!(percentile(&[], 50), None);
    }
}
