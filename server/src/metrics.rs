//! Per-operation request metrics: HDR histograms of service time and object bytes, one pair
//! per (operation, transport), reported in stats ([`OpStats`]) and on `/metrics`.
//!
//! Memory is bounded: a pair is allocated on the first request of its kind (about 72 KiB:
//! service times from 1 ns to 1 h and sizes from 1 B to 1 TiB, 2 significant digits), and
//! there are at most [`Op::ALL`] x transports pairs. Values beyond a histogram's range are
//! clamped to it.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use dimstore_proto::{OpStats, Request, MAX_OP_STATS};
use hdrhistogram::Histogram;

/// Longest service time a histogram distinguishes (longer ones count as this).
const MAX_DURATION_NS: u64 = 3_600 * 1_000_000_000;

/// Largest request size a histogram distinguishes (larger ones count as this).
const MAX_BYTES: u64 = 1 << 40;

/// Significant digits the histograms keep.
const SIGNIFICANT_DIGITS: u8 = 2;

/// A request kind, as metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `Hello`.
    Hello,
    /// `Put`.
    Put,
    /// `Get`.
    Get,
    /// `Exists`.
    Exists,
    /// `Evict`.
    Evict,
    /// `NewKeys`.
    NewKeys,
    /// `Set`.
    Set,
    /// `Stats`.
    Stats,
    /// `Shutdown`.
    Shutdown,
    /// `UseOneSided`.
    UseOneSided,
    /// `SegmentKeys`.
    SegmentKeys,
    /// `OpenChannel`.
    OpenChannel,
    /// `MapSegments`.
    MapSegments,
    /// `Create`.
    Create,
    /// `Seal`.
    Seal,
    /// `Release`.
    Release,
    /// `Abort`.
    Abort,
    /// `Invoke` (a WebAssembly function run over objects).
    Invoke,
    /// `ReleaseOwner`.
    ReleaseOwner,
    /// `Extend` (leases).
    Extend,
}

impl Op {
    /// Every kind, in reporting order.
    pub const ALL: [Op; 20] = [
        Op::Put,
        Op::Get,
        Op::Invoke,
        Op::Exists,
        Op::Evict,
        Op::NewKeys,
        Op::Set,
        Op::Create,
        Op::Seal,
        Op::Release,
        Op::Abort,
        Op::ReleaseOwner,
        Op::Extend,
        Op::MapSegments,
        Op::SegmentKeys,
        Op::UseOneSided,
        Op::OpenChannel,
        Op::Hello,
        Op::Stats,
        Op::Shutdown,
    ];

    /// The kind of `request`.
    pub fn of(request: &Request) -> Op {
        match request {
            Request::Hello(_) => Op::Hello,
            Request::Put { .. } => Op::Put,
            Request::Get { .. } => Op::Get,
            Request::Exists { .. } => Op::Exists,
            Request::Evict { .. } => Op::Evict,
            Request::NewKeys { .. } => Op::NewKeys,
            Request::Set { .. } => Op::Set,
            Request::Stats => Op::Stats,
            Request::Shutdown => Op::Shutdown,
            Request::UseOneSided { .. } => Op::UseOneSided,
            Request::SegmentKeys { .. } => Op::SegmentKeys,
            Request::OpenChannel { .. } => Op::OpenChannel,
            Request::MapSegments { .. } => Op::MapSegments,
            Request::Create { .. } => Op::Create,
            Request::Seal { .. } => Op::Seal,
            Request::Release { .. } => Op::Release,
            Request::Abort { .. } => Op::Abort,
            Request::Invoke { .. } => Op::Invoke,
            Request::PutWith { .. } => Op::Put,
            Request::GetAndEvict { .. } => Op::Get,
            Request::ReleaseOwner { .. } => Op::ReleaseOwner,
            Request::Extend { .. } => Op::Extend,
        }
    }

    /// The name metrics and stats use (`put`, `new_keys`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Op::Hello => "hello",
            Op::Put => "put",
            Op::Get => "get",
            Op::Exists => "exists",
            Op::Evict => "evict",
            Op::NewKeys => "new_keys",
            Op::Set => "set",
            Op::Stats => "stats",
            Op::Shutdown => "shutdown",
            Op::UseOneSided => "use_one_sided",
            Op::SegmentKeys => "segment_keys",
            Op::OpenChannel => "open_channel",
            Op::MapSegments => "map_segments",
            Op::Create => "create",
            Op::Seal => "seal",
            Op::Release => "release",
            Op::Abort => "abort",
            Op::Invoke => "invoke",
            Op::ReleaseOwner => "release_owner",
            Op::Extend => "extend",
        }
    }

    fn index(self) -> usize {
        Op::ALL.iter().position(|&o| o == self).unwrap_or(0)
    }
}

/// One finished request, as recorded.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Its kind.
    pub op: Op,
    /// Service time.
    pub elapsed: Duration,
    /// Object bytes it carried.
    pub bytes: u64,
    /// Whether it was answered with an error.
    pub failed: bool,
}

/// Histograms of one (operation, transport) pair.
#[derive(Debug)]
pub struct OpRecord {
    /// Service times, nanoseconds.
    pub durations: Histogram<u64>,
    /// Object bytes per request.
    pub sizes: Histogram<u64>,
    /// Requests answered with an error.
    pub errors: u64,
    /// Sum of service times, nanoseconds.
    pub sum_ns: u64,
    /// Sum of object bytes.
    pub bytes: u64,
}

impl OpRecord {
    fn new() -> OpRecord {
        let histogram = |high| {
            Histogram::new_with_bounds(1, high, SIGNIFICANT_DIGITS)
                .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid"))
        };
        OpRecord {
            durations: histogram(MAX_DURATION_NS),
            sizes: histogram(MAX_BYTES),
            errors: 0,
            sum_ns: 0,
            bytes: 0,
        }
    }

    fn record(&mut self, sample: &Sample) {
        let ns = u64::try_from(sample.elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.durations
            .saturating_record(ns.clamp(1, MAX_DURATION_NS));
        self.sizes.saturating_record(sample.bytes.min(MAX_BYTES));
        self.sum_ns = self.sum_ns.saturating_add(ns);
        self.bytes = self.bytes.saturating_add(sample.bytes);
        self.errors += u64::from(sample.failed);
    }

    /// Requests recorded.
    pub fn count(&self) -> u64 {
        self.durations.len()
    }

    fn summary(&self, op: Op, transport: &str) -> OpStats {
        let d = &self.durations;
        let q = |h: &Histogram<u64>, quantile| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(quantile)
            }
        };
        OpStats {
            op: op.name().to_string(),
            transport: transport.to_string(),
            count: d.len(),
            errors: self.errors,
            sum_ns: self.sum_ns,
            p50_ns: q(d, 0.5),
            p90_ns: q(d, 0.9),
            p99_ns: q(d, 0.99),
            p999_ns: q(d, 0.999),
            max_ns: if d.is_empty() { 0 } else { d.max() },
            bytes: self.bytes,
            bytes_p50: q(&self.sizes, 0.5),
            bytes_p99: q(&self.sizes, 0.99),
            bytes_max: if self.sizes.is_empty() {
                0
            } else {
                self.sizes.max()
            },
        }
    }
}

/// Every (operation, transport) pair's histograms.
#[derive(Debug)]
pub struct RequestMetrics {
    transports: Vec<String>,
    /// `transports.len() * Op::ALL.len()` slots, allocated on first use.
    slots: Vec<OnceLock<Mutex<OpRecord>>>,
}

impl RequestMetrics {
    /// Metrics for requests arriving on `transports` (others are not recorded).
    pub fn new(transports: impl IntoIterator<Item = String>) -> RequestMetrics {
        let mut names: Vec<String> = Vec::new();
        for name in transports {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        // Stats carry every pair: keep them within the protocol's bound.
        names.truncate(MAX_OP_STATS / Op::ALL.len());
        let slots = (0..names.len() * Op::ALL.len())
            .map(|_| OnceLock::new())
            .collect();
        RequestMetrics {
            transports: names,
            slots,
        }
    }

    /// Records one request that arrived on `transport`.
    pub fn record(&self, transport: &str, sample: Sample) {
        let Some(t) = self.transports.iter().position(|n| n == transport) else {
            return;
        };
        let slot = &self.slots[t * Op::ALL.len() + sample.op.index()];
        let record = slot.get_or_init(|| Mutex::new(OpRecord::new()));
        record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(&sample);
    }

    /// Runs `f` on every pair that has seen a request: operation, transport, histograms.
    pub fn for_each(&self, mut f: impl FnMut(Op, &str, &OpRecord)) {
        for (t, transport) in self.transports.iter().enumerate() {
            for (i, &op) in Op::ALL.iter().enumerate() {
                if let Some(record) = self.slots[t * Op::ALL.len() + i].get() {
                    f(
                        op,
                        transport,
                        &record.lock().unwrap_or_else(|e| e.into_inner()),
                    );
                }
            }
        }
    }

    /// Summaries of every pair that has seen a request.
    pub fn summaries(&self) -> Vec<OpStats> {
        let mut all = Vec::new();
        self.for_each(|op, transport, record| all.push(record.summary(op, transport)));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(op: Op, micros: u64, bytes: u64) -> Sample {
        Sample {
            op,
            elapsed: Duration::from_micros(micros),
            bytes,
            failed: false,
        }
    }

    #[test]
    fn counts_and_percentiles_per_op_and_transport() {
        let metrics = RequestMetrics::new(["tcp".to_string(), "local".to_string()]);
        for i in 1..=1000 {
            metrics.record("tcp", sample(Op::Get, i, 100));
        }
        metrics.record("local", sample(Op::Put, 5, 1 << 20));
        metrics.record("nowhere", sample(Op::Put, 5, 1));
        let all = metrics.summaries();
        assert_eq!(all.len(), 2, "{all:?}");
        let get = all.iter().find(|s| s.op == "get").expect("get");
        assert_eq!(
            (get.transport.as_str(), get.count, get.bytes),
            ("tcp", 1000, 100_000)
        );
        // 2 significant digits: within 1 %.
        for (value, expected) in [
            (get.p50_ns, 500_000),
            (get.p99_ns, 990_000),
            (get.max_ns, 1_000_000),
        ] {
            assert!(
                value.abs_diff(expected) <= expected / 100,
                "{value} vs {expected}"
            );
        }
        let put = all.iter().find(|s| s.op == "put").expect("put");
        assert_eq!(
            (put.transport.as_str(), put.count, put.bytes_max >> 20),
            ("local", 1, 1)
        );
    }

    #[test]
    fn extreme_values_are_clamped_not_lost() {
        let metrics = RequestMetrics::new(["tcp".to_string()]);
        metrics.record("tcp", sample(Op::Evict, 0, 0));
        metrics.record(
            "tcp",
            Sample {
                op: Op::Evict,
                elapsed: Duration::from_secs(100_000),
                bytes: u64::MAX,
                failed: true,
            },
        );
        let evict = &metrics.summaries()[0];
        assert_eq!((evict.count, evict.errors), (2, 1));
        assert!(evict.max_ns >= MAX_DURATION_NS);
    }
}
