//! The accept loop every stream listener of a server shares: each new connection passes
//! the server's [`ConnectionGate`] or is closed at once, and `accept()` failing never
//! spins the loop nor ends it.
//!
//! Out of descriptors or memory (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`), the listener
//! stays readable and every retry fails at once: the loop waits [`FIRST_BACKOFF`], doubling
//! up to [`MAX_BACKOFF`], and resumes as soon as an accept succeeds; the connections it
//! serves already are not affected. A connection that died in the backlog (`ECONNABORTED`
//! and the network errors Linux reports the same way) is skipped at once. Both the failures
//! and the refusals are logged at most once per [`REPORT_INTERVAL`], with their count.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::io::Errno;

use crate::gate::{Admission, ConnectionGate};

/// Wait after the first accept that failed for lack of descriptors or memory.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(10);

/// Longest wait between two accepts while they keep failing.
pub const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// Accept failures, and connections refused, are logged at most once per this interval.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Accepts connections of `transport` until `shutdown` completes. Each one `gate` admits
/// is served by `serve_one` on a task of its own, holding its [`Admission`]; one it refuses
/// is closed at once and counted with `on_refused`, and so is an older pending one it
/// evicts (that one's task closes it).
pub(crate) async fn accept_until<T, A, AF, C, CF>(
    transport: &'static str,
    mut accept: A,
    shutdown: impl Future<Output = ()>,
    gate: &Arc<ConnectionGate>,
    on_refused: impl Fn(),
    serve_one: C,
) where
    A: FnMut() -> AF,
    AF: Future<Output = std::io::Result<T>>,
    C: Fn(T, Admission) -> CF,
    CF: Future<Output = ()> + Send + 'static,
{
    tokio::pin!(shutdown);
    let mut pacing = AcceptPacing::default();
    let mut refusals = Throttle::default();
    let mut evictions = Throttle::default();
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            accepted = accept() => accepted,
        };
        let error = match accepted {
            Ok(connection) => {
                if let Some(failures) = pacing.accepted() {
                    tracing::debug!(transport, failures, "accepting connections again");
                }
                match gate.admit() {
                    Ok(admission) => {
                        if admission.evicted_another() {
                            // The oldest connection that had not sent its Hello closes.
                            on_refused();
                            if let Some(evicted) = evictions.note(Instant::now()) {
                                tracing::warn!(
                                    transport,
                                    evicted,
                                    "closing the oldest connections that have not sent \
                                     their Hello, to make room for new ones"
                                );
                            }
                        }
                        tokio::spawn(serve_one(connection, admission));
                    }
                    Err(refusal) => {
                        drop(connection);
                        on_refused();
                        tracing::debug!(transport, %refusal, "connection closed at once");
                        if let Some(refused) = refusals.note(Instant::now()) {
                            tracing::warn!(
                                transport,
                                refused,
                                "closing new connections at once: {refusal}"
                            );
                        }
                    }
                }
                continue;
            }
            Err(error) => error,
        };
        match pacing.failed(&error, Instant::now()) {
            Failed::Skip => {
                tracing::debug!(transport, %error, "a connection was lost before accept")
            }
            Failed::Wait { backoff, report } => {
                if let Some(failures) = report {
                    tracing::warn!(
                        transport, %error, failures, ?backoff,
                        "cannot accept connections (out of descriptors or memory): waiting, \
                         still serving those open"
                    );
                }
                tokio::select! {
                    () = &mut shutdown => return,
                    () = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
}

/// What the accept loop does after a failed accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failed {
    /// Only that connection was lost: accept the next one now.
    Skip,
    /// The server lacks resources: wait `backoff`; log, with the failures counted since
    /// the last report, if `report` says so.
    Wait {
        backoff: Duration,
        report: Option<u64>,
    },
}

/// The accept loop's pace after failures: the backoff of the current burst, and when to
/// report.
#[derive(Debug, Default)]
struct AcceptPacing {
    /// The wait after the last failure of the current burst; `None` outside a burst.
    backoff: Option<Duration>,
    /// Failures of the current burst.
    burst: u64,
    reports: Throttle,
}

impl AcceptPacing {
    /// An accept succeeded: the burst of failures (their count, if there was one) is over.
    fn accepted(&mut self) -> Option<u64> {
        self.backoff = None;
        let burst = std::mem::take(&mut self.burst);
        (burst > 0).then_some(burst)
    }

    /// An accept failed with `error` at `now`.
    fn failed(&mut self, error: &std::io::Error, now: Instant) -> Failed {
        if peer_lost(error) {
            return Failed::Skip;
        }
        let backoff = self
            .backoff
            .map_or(FIRST_BACKOFF, |last| (last * 2).min(MAX_BACKOFF));
        self.backoff = Some(backoff);
        self.burst += 1;
        Failed::Wait {
            backoff,
            report: self.reports.note(now),
        }
    }
}

/// Whether an accept failed only for the connection it would have returned: it was reset
/// or aborted in the backlog, or (as `accept(2)` says Linux passes on) a network error of
/// its own.
fn peer_lost(error: &std::io::Error) -> bool {
    let Some(errno) = Errno::from_io_error(error) else {
        return false;
    };
    [
        Errno::CONNABORTED,
        Errno::INTR,
        Errno::AGAIN,
        Errno::PROTO,
        Errno::PERM,
        Errno::NETDOWN,
        Errno::NOPROTOOPT,
        Errno::HOSTDOWN,
        Errno::NONET,
        Errno::HOSTUNREACH,
        Errno::OPNOTSUPP,
        Errno::NETUNREACH,
        Errno::TIMEDOUT,
    ]
    .contains(&errno)
}

/// Says when to log a repeated event: the first time, then at most once per
/// [`REPORT_INTERVAL`], with the events counted since the last report.
#[derive(Debug, Default)]
struct Throttle {
    last_report: Option<Instant>,
    unreported: u64,
}

impl Throttle {
    /// The event happened at `now`: `Some(events since the last report, this one
    /// included)` if it is time to log.
    fn note(&mut self, now: Instant) -> Option<u64> {
        self.unreported += 1;
        let due = self
            .last_report
            .is_none_or(|last| now.saturating_duration_since(last) >= REPORT_INTERVAL);
        if !due {
            return None;
        }
        self.last_report = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os_error(errno: Errno) -> std::io::Error {
        std::io::Error::from_raw_os_error(errno.raw_os_error())
    }

    #[test]
    fn out_of_descriptors_backs_off_doubling_to_a_bound_and_resets_on_success() {
        let mut pacing = AcceptPacing::default();
        let now = Instant::now();
        let waits: Vec<Duration> = (0..8)
            .map(|_| match pacing.failed(&os_error(Errno::MFILE), now) {
                Failed::Wait { backoff, .. } => backoff,
                Failed::Skip => panic!("EMFILE must back off"),
            })
            .collect();
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [10, 20, 40, 80, 160, 200, 200, 200]);
        assert_eq!(pacing.accepted(), Some(8));
        assert_eq!(pacing.accepted(), None, "no burst to end");
        match pacing.failed(&os_error(Errno::NFILE), now) {
            Failed::Wait { backoff, .. } => assert_eq!(backoff, FIRST_BACKOFF),
            Failed::Skip => panic!("ENFILE must back off"),
        }
    }

    #[test]
    fn every_resource_error_and_unknown_ones_back_off() {
        let now = Instant::now();
        for errno in [
            Errno::MFILE,
            Errno::NFILE,
            Errno::NOBUFS,
            Errno::NOMEM,
            Errno::BADF,
        ] {
            let failed = AcceptPacing::default().failed(&os_error(errno), now);
            assert!(
                matches!(failed, Failed::Wait { .. }),
                "{errno:?}: {failed:?}"
            );
        }
        let not_os = std::io::Error::other("not from the system");
        assert!(matches!(
            AcceptPacing::default().failed(&not_os, now),
            Failed::Wait { .. }
        ));
    }

    #[test]
    fn a_connection_lost_in_the_backlog_is_skipped_without_waiting() {
        let mut pacing = AcceptPacing::default();
        let now = Instant::now();
        for errno in [
            Errno::CONNABORTED,
            Errno::INTR,
            Errno::PROTO,
            Errno::NETUNREACH,
        ] {
            assert_eq!(pacing.failed(&os_error(errno), now), Failed::Skip);
        }
        assert_eq!(pacing.accepted(), None, "skips are no burst");
    }

    #[test]
    fn failures_are_reported_once_per_interval_with_their_count() {
        let mut pacing = AcceptPacing::default();
        let start = Instant::now();
        let report = |pacing: &mut AcceptPacing, at: Duration| match pacing
            .failed(&os_error(Errno::MFILE), start + at)
        {
            Failed::Wait { report, .. } => report,
            Failed::Skip => panic!("EMFILE must back off"),
        };
        assert_eq!(report(&mut pacing, Duration::ZERO), Some(1), "the first");
        for ms in 1..100 {
            assert_eq!(report(&mut pacing, Duration::from_millis(ms * 50)), None);
        }
        // A success in between does not make the next burst log sooner.
        pacing.accepted();
        assert_eq!(report(&mut pacing, Duration::from_millis(9_999)), None);
        assert_eq!(report(&mut pacing, REPORT_INTERVAL), Some(101));
        assert_eq!(report(&mut pacing, REPORT_INTERVAL), None);
    }
}
