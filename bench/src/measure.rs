//! Latency histograms (hdrhistogram, nanoseconds) and the bounded timing loop.

use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;

/// Latencies of one measurement, in nanoseconds.
#[derive(Debug, Clone)]
pub struct Latencies {
    histogram: Histogram<u64>,
    /// Sum of the recorded durations.
    busy: Duration,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            // 1 ns to 1 hour, three significant digits.
            histogram: Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
                .expect("these bounds and precision are valid"),
            busy: Duration::ZERO,
        }
    }
}

impl Latencies {
    /// Records one duration.
    pub fn record(&mut self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.histogram.saturating_record(nanos);
        self.busy += took;
    }

    /// Number of recorded durations.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// Median in microseconds.
    pub fn median_us(&self) -> f64 {
        self.histogram.value_at_quantile(0.5) as f64 / 1e3
    }

    /// 99th percentile in microseconds.
    pub fn p99_us(&self) -> f64 {
        self.histogram.value_at_quantile(0.99) as f64 / 1e3
    }

    /// Sum of the recorded durations.
    pub fn busy(&self) -> Duration {
        self.busy
    }

    /// Operations per second, one after another: count / total recorded time.
    pub fn rate(&self) -> f64 {
        let secs = self.busy.as_secs_f64();
        if secs > 0.0 {
            self.count() as f64 / secs
        } else {
            0.0
        }
    }

    /// Adds another measurement's latencies.
    pub fn merge(&mut self, other: &Latencies) -> anyhow::Result<()> {
        self.histogram
            .add(&other.histogram)
            .context("cannot merge histograms")?;
        self.busy += other.busy;
        Ok(())
    }

    /// The histogram in hdrhistogram's V2 format (for worker results).
    pub fn encode(&self) -> anyhow::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        V2Serializer::new()
            .serialize(&self.histogram, &mut bytes)
            .map_err(|e| anyhow::anyhow!("cannot serialise a histogram: {e:?}"))?;
        Ok(bytes)
    }

    /// Reads [`Latencies::encode`]'s output back; `busy` is given separately.
    pub fn decode(bytes: &[u8], busy: Duration) -> anyhow::Result<Latencies> {
        let histogram = Deserializer::new()
            .deserialize(&mut &bytes[..])
            .map_err(|e| anyhow::anyhow!("cannot read a worker's histogram: {e:?}"))?;
        Ok(Latencies { histogram, busy })
    }
}

/// How long and how often a timing loop may run.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Untimed iterations first.
    pub warmup: usize,
    /// Most timed iterations.
    pub iterations: usize,
    /// Most wall-clock time for the whole loop, warm-up included (at least one timed
    /// iteration always runs).
    pub time: Duration,
}

/// Runs `op` within `bounds`, timing each call; `after` runs untimed after each call.
pub fn timed_loop(
    bounds: Bounds,
    mut op: impl FnMut(usize) -> anyhow::Result<()>,
    mut after: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Latencies> {
    let start = Instant::now();
    let mut latencies = Latencies::default();
    for i in 0..bounds.warmup + bounds.iterations {
        let t0 = Instant::now();
        op(i)?;
        let took = t0.elapsed();
        after()?;
        if i >= bounds.warmup {
            latencies.record(took);
        }
        if start.elapsed() >= bounds.time && latencies.count() > 0 {
            break;
        }
    }
    Ok(latencies)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_round_trip_and_merge() {
        let mut a = Latencies::default();
        for us in 1..=100u64 {
            a.record(Duration::from_micros(us));
        }
        let bytes = a.encode().expect("encode");
        let b = Latencies::decode(&bytes, a.busy).expect("decode");
        assert_eq!(b.count(), 100);
        let mut merged = a.clone();
        merged.merge(&b).expect("merge");
        assert_eq!(merged.count(), 200);
        assert!((merged.median_us() - 50.0).abs() < 1.0);
    }

    #[test]
    fn loops_are_bounded_in_count_and_time() {
        let bounds = Bounds {
            warmup: 2,
            iterations: 5,
            time: Duration::from_secs(10),
        };
        let mut calls = 0;
        let l = timed_loop(
            bounds,
            |_| {
                calls += 1;
                Ok(())
            },
            || Ok(()),
        )
        .expect("loop");
        assert_eq!((calls, l.count()), (7, 5));
        let slow = Bounds {
            time: Duration::from_millis(1),
            iterations: 1_000_000,
            ..bounds
        };
        let l = timed_loop(
            slow,
            |_| {
                std::thread::sleep(Duration::from_millis(1));
                Ok(())
            },
            || Ok(()),
        )
        .expect("loop");
        assert_eq!(l.count(), 1);
    }
}
