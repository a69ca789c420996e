//! Bounded retries with exponential backoff, for the network calls of
//! keyless signing (token endpoint, Fulcio, Rekor).

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backon::Retryable;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Total tries, including the first.
    pub attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for Retry {
    /// Three tries, 1 s then 2 s apart: a brief outage passes, a dead service
    /// fails within seconds (plus the HTTP timeouts).
    fn default() -> Self {
        Self {
            attempts: 3,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(8),
        }
    }
}

impl Retry {
    /// Exact integer doubling. backon's `ExponentialBuilder` multiplies in f32
    /// seconds (100 ms becomes 200.000003 ms), so it is given this schedule.
    pub fn backoff(&self, after_attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(after_attempt.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// Runs `op` until it succeeds, fails permanently, or the tries run out.
    /// Returns the last error with the number of tries made.
    pub async fn run<T, E, F, Fut>(
        &self,
        what: &str,
        is_transient: impl Fn(&E) -> bool,
        mut op: F,
    ) -> Result<T, (E, u32)>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let attempts = self.attempts.max(1);
        let retry = *self;
        let delays = (1..attempts).map(move |after| retry.backoff(after));
        // Atomic, not Cell: the future stays Send.
        let tries = AtomicU32::new(0);
        (|| {
            tries.fetch_add(1, Ordering::Relaxed);
            op()
        })
        .retry(delays)
        .when(is_transient)
        .notify(|e, wait| {
            let attempt = tries.load(Ordering::Relaxed);
            tracing::warn!("{what} failed (try {attempt}/{attempts}): {e}; retrying in {wait:?}");
        })
        .await
        .map_err(|e| (e, tries.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_bound() {
        let r = Retry {
            attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
        };
        assert_eq!(r.backoff(1), Duration::from_millis(100));
        assert_eq!(r.backoff(2), Duration::from_millis(200));
        assert_eq!(r.backoff(3), Duration::from_millis(350));
        assert_eq!(r.backoff(40), Duration::from_millis(350));
    }

    #[tokio::test]
    async fn retries_transient_errors_only_and_stops_at_the_bound() {
        let r = Retry {
            attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        };
        let calls = AtomicU32::new(0);
        let out: Result<(), (String, u32)> = r
            .run(
                "op",
                |_: &String| true,
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err("down".to_string())
                },
            )
            .await;
        assert_eq!(out, Err(("down".to_string(), 3)));
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        calls.store(0, Ordering::SeqCst);
        let out: Result<(), (String, u32)> = r
            .run(
                "op",
                |_: &String| false,
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err("denied".to_string())
                },
            )
            .await;
        assert_eq!(out, Err(("denied".to_string(), 1)));

        calls.store(0, Ordering::SeqCst);
        let out = r
            .run(
                "op",
                |_: &String| true,
                || async {
                    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        Err("blip".to_string())
                    } else {
                        Ok(7)
                    }
                },
            )
            .await;
        assert_eq!(out, Ok(7));
    }
}
