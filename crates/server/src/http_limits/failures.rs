//! Counting failed authentications per subject (a source address, a pool) in leaky
//! buckets: each failure adds one, the bucket drains at the allowed rate, and a full
//! bucket refuses further attempts until it has drained by one. Successes are never
//! counted, so a busy client that authenticates well is never slowed down.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Buckets kept before the empty ones are forgotten.
const MAX_SUBJECTS: usize = 100_000;

/// Whose failures a bucket counts. IPv6 addresses count by their /64: one host usually
/// holds a whole /64 and could otherwise try from a fresh address every time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Address {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

impl From<IpAddr> for Address {
    fn from(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::V4(v4.octets()),
            IpAddr::V6(v6) => {
                let octets = v6.octets();
                let mut prefix = [0; 8];
                prefix.copy_from_slice(&octets[..8]);
                Self::V6Prefix(prefix)
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    level: f64,
    at: Instant,
}

/// At most `per_minute` failures a minute per subject, in bursts of up to `per_minute`.
#[derive(Debug)]
pub(crate) struct Limiter<K> {
    capacity: f64,
    /// Failures drained per second.
    rate: f64,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Copy> Limiter<K> {
    pub(crate) fn per_minute(per_minute: u32) -> Self {
        let capacity = f64::from(per_minute.max(1));
        Self { capacity, rate: capacity / 60.0, buckets: Mutex::default() }
    }

    fn level(&self, bucket: &Bucket, now: Instant) -> f64 {
        let drained = now.saturating_duration_since(bucket.at).as_secs_f64() * self.rate;
        (bucket.level - drained).max(0.0)
    }

    /// `Err(wait)` when the subject has failed too often: how long until it may try again.
    pub(crate) fn admit(&self, subject: K, now: Instant) -> Result<(), Duration> {
        let buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(bucket) = buckets.get(&subject) else { return Ok(()) };
        let over = self.level(bucket, now) + 1.0 - self.capacity;
        if over <= 0.0 {
            return Ok(());
        }
        Err(Duration::from_secs_f64(over / self.rate))
    }

    /// Counts one failure. Attempts that were in flight together when the limit was
    /// reached may overfill the bucket; it is capped at twice its size so that they
    /// cannot lock the subject out for long.
    pub(crate) fn record(&self, subject: K, now: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_SUBJECTS && !buckets.contains_key(&subject) {
            buckets.retain(|_, bucket| self.level(bucket, now) > 0.0);
            if buckets.len() >= MAX_SUBJECTS {
                // Many subjects at once: forget those not yet refused, keep the refused.
                buckets.retain(|_, bucket| self.level(bucket, now) + 1.0 > self.capacity);
            }
        }
        let level = buckets.get(&subject).map_or(0.0, |bucket| self.level(bucket, now));
        let level = (level + 1.0).min(self.capacity * 2.0);
        buckets.insert(subject, Bucket { level, at: now });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_is_refused_after_its_allowance_and_admitted_again_as_it_drains() {
        let limiter = Limiter::per_minute(6);
        let start = Instant::now();
        for _ in 0..6 {
            assert_eq!(limiter.admit("a", start), Ok(()));
            limiter.record("a", start);
        }
        let wait = limiter.admit("a", start).unwrap_err();
        assert_eq!(wait.as_secs_f64().round(), 10.0, "one failure drains every 10 s: {wait:?}");
        assert_eq!(limiter.admit("b", start), Ok(()), "another subject is not affected");
        assert!(limiter.admit("a", start + Duration::from_secs(9)).is_err());
        assert_eq!(limiter.admit("a", start + Duration::from_secs(10)), Ok(()));
        limiter.record("a", start + Duration::from_secs(10));
        assert!(limiter.admit("a", start + Duration::from_secs(10)).is_err());
    }

    #[test]
    fn failures_in_flight_together_cannot_lock_a_subject_out_for_long() {
        let limiter = Limiter::per_minute(10);
        let start = Instant::now();
        for _ in 0..1000 {
            limiter.record("a", start);
        }
        let wait = limiter.admit("a", start).unwrap_err();
        assert!(wait <= Duration::from_secs(66), "{wait:?}");
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_prefix_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Address::from(a), Address::from(b));
        assert_ne!(Address::from(a), Address::from(c));
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert_eq!(Address::from(mapped), Address::V4([127, 0, 0, 2]));
    }

    #[test]
    fn the_table_forgets_drained_subjects_when_it_is_full() {
        let limiter = Limiter::per_minute(60);
        let start = Instant::now();
        for n in 0..MAX_SUBJECTS as u32 {
            limiter.record(n, start);
        }
        let later = start + Duration::from_secs(2);
        limiter.record(u32::MAX, later);
        let buckets = limiter.buckets.lock().unwrap();
        assert_eq!(buckets.len(), 1, "every earlier subject had drained");
    }
}
