//! Client-side metrics: per-operation counts, bytes and latency histograms of a [`Store`]'s
//! own calls, for users measuring their workflow (like ProxyStore's `metrics=True`).
//!
//! Off unless asked for ([`ClientConfig::metrics`](crate::ClientConfig::metrics) or
//! `DIMSTORE_CLIENT_METRICS=1`): a store without them pays one branch per call. With them,
//! each call takes a clock reading before and after and a short lock of its operation's
//! histogram (latencies 1 ns to 1 h, 2 significant digits: about 37 KiB per operation used).
//!
//! [`Store`]: crate::Store

use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Longest latency distinguished (longer calls count as this).
const MAX_LATENCY_NS: u64 = 3_600 * 1_000_000_000;

/// A [`Store`](crate::Store) call kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientOp {
    /// `put`, `put_batch`.
    Put,
    /// `get`, `get_batch`.
    Get,
    /// `exists`, `exists_batch`.
    Exists,
    /// `evict`, `evict_batch`.
    Evict,
    /// `new_key`, `new_keys`.
    NewKeys,
    /// `set`.
    Set,
}

impl ClientOp {
    const ALL: [ClientOp; 6] = [
        ClientOp::Put,
        ClientOp::Get,
        ClientOp::Exists,
        ClientOp::Evict,
        ClientOp::NewKeys,
        ClientOp::Set,
    ];

    /// Its name (`put`, `new_keys`, ...), as the server's stats name operations.
    pub fn name(self) -> &'static str {
        match self {
            ClientOp::Put => "put",
            ClientOp::Get => "get",
            ClientOp::Exists => "exists",
            ClientOp::Evict => "evict",
            ClientOp::NewKeys => "new_keys",
            ClientOp::Set => "set",
        }
    }
}

/// A snapshot of one operation's calls since the store was made.
#[derive(Debug, Clone)]
pub struct CallStats {
    /// The operation.
    pub op: ClientOp,
    /// Calls made (a batch counts once).
    pub count: u64,
    /// Of which failed.
    pub errors: u64,
    /// Object bytes put, set or got by the successful calls.
    pub bytes: u64,
    /// Sum of call latencies.
    pub total: Duration,
    /// Call latencies in nanoseconds, failed calls included.
    pub latency: Histogram<u64>,
}

impl CallStats {
    /// The latency at `quantile` (0.0 to 1.0), e.g. `0.99` for the p99.
    pub fn quantile(&self, quantile: f64) -> Duration {
        if self.latency.is_empty() {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.latency.value_at_quantile(quantile))
    }

    /// The longest call.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(if self.latency.is_empty() {
            0
        } else {
            self.latency.max()
        })
    }
}

/// Per-operation recorders of one store (shared by its clones).
#[derive(Debug, Default)]
pub(crate) struct ClientMetrics {
    ops: [Mutex<Option<CallStats>>; 6],
}

impl ClientMetrics {
    /// Records one call.
    pub(crate) fn record(&self, op: ClientOp, elapsed: Duration, bytes: u64, failed: bool) {
        let index = ClientOp::ALL.iter().position(|&o| o == op).unwrap_or(0);
        let mut slot = self.ops[index].lock().unwrap_or_else(|e| e.into_inner());
        let stats = slot.get_or_insert_with(|| CallStats {
            op,
            count: 0,
            errors: 0,
            bytes: 0,
            total: Duration::ZERO,
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_NS, 2)
                .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid")),
        });
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        stats.latency.saturating_record(ns.clamp(1, MAX_LATENCY_NS));
        stats.count += 1;
        stats.errors += u64::from(failed);
        stats.bytes = stats.bytes.saturating_add(bytes);
        stats.total = stats.total.saturating_add(elapsed);
    }

    /// Every operation called so far, in a fixed order.
    pub(crate) fn snapshot(&self) -> Vec<CallStats> {
        self.ops
            .iter()
            .filter_map(|slot| slot.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }
}
