//! `dimstore-bench`: dimstore measured side by side with its limits and a peer.
//!
//! One run starts every contender's server as a process of its own — a `dimstore-server`
//! (found through its ready file), a raw TCP request/reply server (the limit: what loopback
//! TCP gives with nothing on top) and a `redis-server` (a well-known peer) — and measures,
//! under the same CPU placement for all (dimstore twice: over TCP like any other node,
//! `dimstore`, and through the client's same-node path, `dimstore_local`: a Unix socket, gets
//! map the server's memory):
//!
//! - [`latency`]: put and get latency per object size (median and p99 from hdrhistogram), plus
//!   a raw TCP one-way stream as the loopback bandwidth limit;
//! - [`throughput`]: 1 KiB get throughput with 1..N client processes (the bench re-executes
//!   itself as hidden `worker` processes), single gets and batches of 64;
//! - for each [`placement::Placement`]: pinned to one CPU, split across CPUs, and unpinned.
//!
//! [`report`] turns the measurements into tables of ratios, a verdict on the project's
//! targets, and CSV. Every loop is bounded in iterations and in time.
//!
//! [`rdma`] (`dimstore-bench rdma`) measures the one-sided transports (UCX, libfabric)
//! across two local "nodes" next to the raw transports' own tools on the same provider.
//!
//! With the `mpi` feature (on by default), [`mpirun`] measures communication patterns
//! across MPI ranks through a fleet (`mpirun -n N dimstore-bench mpi`), against plain MPI.
#![forbid(unsafe_code)]

pub mod contenders;
pub mod functions;
pub mod latency;
pub mod measure;
#[cfg(feature = "mpi")]
pub mod mpirun;
pub mod options;
pub mod placement;
pub mod rdma;
pub mod report;
pub mod run;
pub mod spill;
pub mod throughput;
pub mod zero_copy;

pub use options::{RunArgs, Settings};
pub use report::Row;
