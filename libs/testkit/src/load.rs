//! Load for the benchmark binaries: `concurrency` tasks calling as fast as they can for a
//! warm-up and then a measured window, every call checked by the caller's closure; the rate
//! and latency percentiles of the measured calls.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

/// The outcome of one concurrency level.
#[derive(Debug, Default)]
pub struct Level {
    pub concurrency: usize,
    /// Calls started in the measured window.
    pub calls: u64,
    /// Latency of every correct measured call, sorted.
    pub latencies: Vec<Duration>,
    /// From the start of measurement to the end of its last call.
    pub elapsed: Duration,
    /// Failed or wrong calls, warm-up included: every call must succeed.
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Level {
    /// Measured calls per second.
    pub fn rate(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// Nearest-rank percentile `p` (0-1] of the latencies, in milliseconds.
    pub fn ms(&self, p: f64) -> f64 {
        percentile(&self.latencies, p).as_secs_f64() * 1000.0
    }
}

/// Nearest-rank percentile of sorted latencies (zero when there are none).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs `concurrency` tasks; task `i` makes its `n`-th call with `call(i, n)`, which answers
/// `Err` with a description when the call failed or its answer was wrong.
pub async fn run<F, Fut>(concurrency: usize, warmup: Duration, window: Duration, call: F) -> Level
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + warmup;
    let until = measure_from + window;
    let mut tasks = JoinSet::new();
    for task in 0..concurrency {
        let call = call.clone();
        tasks.spawn(async move {
            tokio::time::sleep_until(start.into()).await;
            let mut seen = Level::default();
            let mut last_finish = None;
            let mut n = 0u64;
            loop {
                let began = Instant::now();
                if began >= until {
                    break;
                }
                let outcome = call(task, n).await;
                n += 1;
                let finished = Instant::now();
                let measured = began >= measure_from;
                match outcome {
                    Ok(()) if measured => seen.latencies.push(finished - began),
                    Ok(()) => {}
                    Err(error) => {
                        seen.errors += 1;
                        seen.first_error.get_or_insert(error);
                    }
                }
                if measured {
                    seen.calls += 1;
                    last_finish = Some(finished);
                }
            }
            (seen, last_finish)
        });
    }
    let mut level = Level {
        concurrency,
        ..Level::default()
    };
    let mut last = until;
    while let Some(done) = tasks.join_next().await {
        let Ok((seen, finish)) = done else {
            level.errors += 1;
            level
                .first_error
                .get_or_insert_with(|| "a client task panicked".to_owned());
            continue;
        };
        level.calls += seen.calls;
        level.latencies.extend(seen.latencies);
        level.errors += seen.errors;
        if level.first_error.is_none() {
            level.first_error = seen.first_error;
        }
        if let Some(finish) = finish {
            last = last.max(finish);
        }
    }
    level.elapsed = last.duration_since(measure_from);
    level.latencies.sort_unstable();
    level
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted: Vec<_> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&sorted, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&sorted, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
