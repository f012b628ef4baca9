//! When to try again: exponential backoff with full jitter, stretched by Retry-After.

use std::time::Duration;

use rand::Rng;

/// Delay before attempt `attempt + 1` (0-based `attempt` just failed).
pub fn delay(
    attempt: u32,
    base: Duration,
    cap: Duration,
    retry_after: Option<Duration>,
) -> Duration {
    let exp = base.saturating_mul(2u32.saturating_pow(attempt.min(30)));
    let ceiling = exp.min(cap);
    // Full jitter (a uniform draw below the ceiling) spreads a crowd of retries out.
    let jittered = Duration::from_millis(rand::rng().random_range(0..=ceiling.as_millis() as u64));
    // Ameyo's own Retry-After is a floor, clamped so a bad header cannot park a user.
    match retry_after {
        Some(after) => jittered.max(after.min(cap)),
        None => jittered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_honours_retry_after() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(10);
        for attempt in 0..40 {
            let d = delay(attempt, base, cap, None);
            assert!(d <= cap);
            assert!(d <= base * 2u32.saturating_pow(attempt.min(30)));
        }
        let d = delay(0, base, cap, Some(Duration::from_secs(3)));
        assert!(d >= Duration::from_secs(3));
        let d = delay(0, base, cap, Some(Duration::from_secs(3600)));
        assert_eq!(d, cap);
        // jitter: not every draw is the same
        let draws: std::collections::HashSet<_> =
            (0..50).map(|_| delay(10, base, cap, None)).collect();
        assert!(draws.len() > 1);
    }
}
