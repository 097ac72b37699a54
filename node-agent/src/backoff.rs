//! Exponential backoff for retries (etcd, netlink), capped, with a little
//! jitter so that many agents do not retry in lockstep.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            current: initial,
        }
    }

    /// The next delay: doubles each time up to `max`, plus up to 10 % jitter.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        let jitter_ns = base.as_nanos() as u64 / 10;
        let jitter = if jitter_ns == 0 {
            0
        } else {
            random_u64() % jitter_ns
        };
        base + Duration::from_nanos(jitter)
    }

    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let d: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        let floor = [100, 200, 400, 800, 1000, 1000];
        for (got, want) in d.iter().zip(floor) {
            let want = Duration::from_millis(want);
            assert!(
                *got >= want && *got <= want + want / 10,
                "{got:?} vs {want:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(111));
    }
}
