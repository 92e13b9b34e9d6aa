//! Per-operation latency and size summaries carried in [`crate::ServerStats`].
//!
//! The server keeps an HDR histogram per (operation, transport) pair; stats carry only these
//! fixed-size summaries, so a stats reply stays small (at most [`MAX_OP_STATS`] entries)
//! whatever the load.

use rkyv::{Archive, Deserialize, Serialize};

/// Most entries a server reports in [`crate::ServerStats::ops`] (operations x transports).
pub const MAX_OP_STATS: usize = 256;

/// Service time and object bytes of one operation on one transport since the server started.
///
/// Service time runs from the request's body being decoded (before a put's payload is
/// received) to its reply being ready (a deferred get: when it completes), so it excludes
/// writing the reply. Percentiles are HDR histogram values (2 significant digits).
#[derive(Debug, Clone, PartialEq, Eq, Default, Archive, Serialize, Deserialize)]
pub struct OpStats {
    /// Operation (`put`, `get`, `exists`, `evict`, `new_keys`, `set`, ...).
    pub op: String,
    /// Transport the requests arrived on (`tcp`, `local`, `ucx`, ...).
    pub transport: String,
    /// Requests handled (a batch counts once).
    pub count: u64,
    /// Of which answered with an error.
    pub errors: u64,
    /// Sum of service times, nanoseconds.
    pub sum_ns: u64,
    /// Median service time, nanoseconds.
    pub p50_ns: u64,
    /// 90th percentile, nanoseconds.
    pub p90_ns: u64,
    /// 99th percentile, nanoseconds.
    pub p99_ns: u64,
    /// 99.9th percentile, nanoseconds.
    pub p999_ns: u64,
    /// Longest service time, nanoseconds.
    pub max_ns: u64,
    /// Object bytes carried (put/set: received; get: found objects, however delivered).
    pub bytes: u64,
    /// Median object bytes per request.
    pub bytes_p50: u64,
    /// 99th percentile of object bytes per request.
    pub bytes_p99: u64,
    /// Largest object bytes of one request.
    pub bytes_max: u64,
}

/// A duration in nanoseconds for people: `850ns`, `12.3us`, `4.56ms`, `1.20s`.
pub fn format_nanos(ns: u64) -> String {
    match ns {
        0..=999 => format!("{ns}ns"),
        1_000..=999_999 => format!("{:.1}us", ns as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.2}ms", ns as f64 / 1e6),
        _ => format!("{:.2}s", ns as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nanos_read_well() {
        assert_eq!(format_nanos(850), "850ns");
        assert_eq!(format_nanos(12_345), "12.3us");
        assert_eq!(format_nanos(4_560_000), "4.56ms");
        assert_eq!(format_nanos(1_200_000_000), "1.20s");
    }
}
