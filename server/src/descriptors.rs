//! The file descriptors a server may spend on connections.
//!
//! At start the server raises its soft `RLIMIT_NOFILE` to the hard limit
//! ([`raise_descriptor_limit`]); connections then get that limit less a reserve for
//! everything else it opens ([`ConnectionBudget::plan`]), so a flood of connections cannot
//! take the descriptors that arena segments, spill files, the one-sided transports and the
//! log need: past the budget, new connections are closed at once.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Descriptors kept for what every server opens besides connections: standard streams and
/// the log, the runtime's epoll and wakers, signal handling, the listeners, the spill
/// directory's lock and the spill files being written or read, reads of `/proc`, and the
/// metrics endpoint's scrapes ([`crate::metrics_http::MAX_SCRAPES`]).
pub const BASE_RESERVE: u64 = 64;

/// Descriptors kept per arena segment: its memfd, and a read-only one of it on its way to a
/// same-node client.
pub const PER_SEGMENT: u64 = 2;

/// Descriptors kept per one-sided transport for its worker (progress and wake-up
/// descriptors, its own listener).
pub const PER_ONE_SIDED: u64 = 64;

/// Fewest connections a server allows, however low its descriptor limit.
pub const MIN_CONNECTIONS: u64 = 8;

/// How a server's descriptors are shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionBudget {
    /// The soft descriptor limit in force.
    pub limit: u64,
    /// Descriptors kept for everything but connections.
    pub reserve: u64,
    /// Connections open at once, authenticated or not, on every listener together.
    pub max_open: u64,
}

impl ConnectionBudget {
    /// The budget under a soft descriptor `limit`, for an arena of at most `segments`
    /// segments and `one_sided` one-sided transports running. With one-sided transports,
    /// a connection may also hold one of their endpoints (a socket, for their TCP
    /// providers): connections get half of what is left.
    pub fn plan(limit: u64, segments: u64, one_sided: u64) -> ConnectionBudget {
        let reserve = BASE_RESERVE
            .saturating_add(segments.saturating_mul(PER_SEGMENT))
            .saturating_add(one_sided.saturating_mul(PER_ONE_SIDED));
        let left = limit.saturating_sub(reserve);
        let per_connection = if one_sided > 0 { 2 } else { 1 };
        ConnectionBudget {
            limit,
            reserve,
            max_open: (left / per_connection).max(MIN_CONNECTIONS),
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (to `fs.nr_open` when the hard limit
/// is unlimited) and returns the soft limit now in force (`u64::MAX`: unlimited). A limit
/// that cannot be raised is logged and kept.
pub fn raise_descriptor_limit() -> u64 {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let target = maximum.or_else(kernel_max_open);
    if let (Some(soft), Some(target)) = (current, target) {
        if soft < target {
            let raised = Rlimit {
                current: Some(target),
                maximum,
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => return target,
                Err(e) => tracing::warn!(
                    soft, target, error = %e,
                    "cannot raise the descriptor limit: fewer connections are allowed"
                ),
            }
        }
    }
    current.unwrap_or(u64::MAX)
}

/// `fs.nr_open`: the most descriptors a process may be allowed.
fn kernel_max_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_get_the_limit_less_the_reserve() {
        let budget = ConnectionBudget::plan(1024, 4, 0);
        assert_eq!(budget.reserve, BASE_RESERVE + 4 * PER_SEGMENT);
        assert_eq!(budget.max_open, 1024 - budget.reserve);
    }

    #[test]
    fn one_sided_transports_take_a_reserve_and_half_of_the_rest() {
        let budget = ConnectionBudget::plan(4096, 16, 2);
        let reserve = BASE_RESERVE + 16 * PER_SEGMENT + 2 * PER_ONE_SIDED;
        assert_eq!(budget.reserve, reserve);
        assert_eq!(budget.max_open, (4096 - reserve) / 2);
    }

    #[test]
    fn a_tiny_limit_still_allows_a_few_connections_and_a_huge_one_does_not_overflow() {
        assert_eq!(ConnectionBudget::plan(32, 1, 0).max_open, MIN_CONNECTIONS);
        assert_eq!(
            ConnectionBudget::plan(u64::MAX, u64::MAX, u64::MAX).max_open,
            MIN_CONNECTIONS
        );
        let unlimited = ConnectionBudget::plan(u64::MAX, 8, 1);
        assert!(unlimited.max_open > 1 << 40, "{unlimited:?}");
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let soft = raise_descriptor_limit();
        let now = getrlimit(Resource::Nofile);
        assert_eq!(now.current.unwrap_or(u64::MAX), soft);
        if let Some(hard) = now.maximum {
            assert_eq!(soft, hard, "{now:?}");
        }
    }
}
