//! CPU placement of servers and clients.
//!
//! On a small, virtualised machine, where a process wakes up matters as much as what it
//! does: waking a process that sleeps on the *other* CPU costs an inter-processor interrupt
//! (about 30 us on the 2-core VM this was written on), while a switch between two processes
//! on the same CPU is cheap. Every contender is measured under the same placement.
//!
//! Pinning uses `sched_setaffinity` on the calling thread. Every server is a child process
//! started while the calling thread is pinned to the server CPUs, and inherits that mask;
//! the latency client is the pinned thread itself, and throughput client processes inherit
//! the client mask the same way.

use anyhow::{bail, Context};
use rustix::process::{sched_getaffinity, sched_setaffinity, CpuSet};

/// Where servers and clients run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// Server and every client pinned to the first CPU: wake-ups are same-CPU switches.
    SameCpu,
    /// Server pinned to the first CPU, clients to the other CPUs: every request crosses CPUs.
    CrossCpu,
    /// Nobody pinned: the kernel's scheduler decides.
    Unpinned,
}

impl Placement {
    /// The name used in tables and CSV.
    pub fn name(self) -> &'static str {
        match self {
            Placement::SameCpu => "same-cpu",
            Placement::CrossCpu => "cross-cpu",
            Placement::Unpinned => "unpinned",
        }
    }

    /// A one-line description for reports.
    pub fn describe(self, cpus: &Cpus) -> String {
        let list = |set: &[usize]| {
            set.iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        match self.masks(cpus) {
            Ok(Masks {
                server: Some(server),
                client: Some(client),
            }) => format!(
                "{}: servers on CPU {}, clients on CPU {}",
                self.name(),
                list(&server),
                list(&client)
            ),
            _ => format!("{}: no pinning (CPUs {})", self.name(), list(&cpus.allowed)),
        }
    }

    /// Where servers and clients run under this placement.
    pub fn masks(self, cpus: &Cpus) -> anyhow::Result<Masks> {
        let first = cpus.allowed[0];
        let (server, client) = match self {
            Placement::SameCpu => (Some(vec![first]), Some(vec![first])),
            Placement::CrossCpu => {
                if cpus.allowed.len() < 2 {
                    bail!("cross-cpu placement needs at least 2 CPUs");
                }
                (Some(vec![first]), Some(cpus.allowed[1..].to_vec()))
            }
            Placement::Unpinned => (None, None),
        };
        Ok(Masks { server, client })
    }
}

/// CPUs to pin servers and clients to; `None` means not pinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masks {
    /// Server CPUs.
    pub server: Option<Vec<usize>>,
    /// Client CPUs.
    pub client: Option<Vec<usize>>,
}

/// The CPUs this process may run on, as found at start.
#[derive(Debug, Clone)]
pub struct Cpus {
    /// Allowed CPU numbers, ascending.
    pub allowed: Vec<usize>,
}

impl Cpus {
    /// Reads this thread's affinity mask.
    pub fn current() -> anyhow::Result<Cpus> {
        let set = sched_getaffinity(None).context("sched_getaffinity")?;
        let allowed: Vec<usize> = (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect();
        if allowed.is_empty() {
            bail!("this process may run on no CPU");
        }
        Ok(Cpus { allowed })
    }
}

/// Pins the calling thread to `cpus` until dropped; `None` leaves it as it is.
#[derive(Debug)]
pub struct Pinned {
    previous: Option<CpuSet>,
}

impl Pinned {
    /// Pins the calling thread (and what it spawns from now on) to `cpus`.
    pub fn to(cpus: Option<&[usize]>) -> anyhow::Result<Pinned> {
        let Some(cpus) = cpus else {
            return Ok(Pinned { previous: None });
        };
        let previous = sched_getaffinity(None).context("sched_getaffinity")?;
        let mut set = CpuSet::new();
        for &cpu in cpus {
            set.set(cpu);
        }
        sched_setaffinity(None, &set).with_context(|| format!("cannot pin to CPUs {cpus:?}"))?;
        Ok(Pinned {
            previous: Some(previous),
        })
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Some(previous) = &self.previous {
            // Nothing sensible to do when restoring fails: the mask was valid moments ago.
            let _ = sched_setaffinity(None, previous);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinning_is_undone_on_drop() {
        let cpus = Cpus::current().expect("affinity");
        let before = sched_getaffinity(None).expect("get");
        {
            let _pin = Pinned::to(Some(&cpus.allowed[..1])).expect("pin");
            let now = sched_getaffinity(None).expect("get");
            assert_eq!(now.count(), 1);
        }
        assert_eq!(sched_getaffinity(None).expect("get"), before);
    }
}
