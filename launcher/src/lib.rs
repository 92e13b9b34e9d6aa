//! `dimstore-launch`: starts, inspects and stops dimstore fleets.
//!
//! A fleet is one `dimstore-server` per node, described by a fleet file (see
//! [`dimstore::fleet`]) that every client of the job reads through `DIMSTORE_FLEET`.
//!
//! - [`launch::run`] starts a fleet, runs a command next to it and tears it down afterwards;
//!   [`launch::up`] starts one that outlives the launcher.
//! - [`fleet_ops::status`] and [`fleet_ops::down`] work on any running fleet from its file.
//! - [`local`] starts servers on this machine (simulated nodes `node0`, `node1`, ...);
//!   [`rundir`] holds their logs and ready files; [`dimstore_host::process`] knows them by pid.
//! - [`allocation`] finds the nodes of a batch job (Slurm, PBS, hostfile); [`remote`] starts
//!   one server on each through the parallel launcher of [`step`] (`srun`, `mpiexec`,
//!   `mpirun`).
#![forbid(unsafe_code)]

pub mod allocation;
pub mod command;
pub mod fleet_ops;
pub mod interrupt;
pub mod launch;
pub mod local;
pub mod progress;
pub mod remote;
pub mod rundir;
pub mod scrape;
pub mod step;
