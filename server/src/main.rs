//! `dimstore-server`: the per-node daemon.

use anyhow::Context;
use clap::Parser;
use dimstore_server::{run, Args, ServerConfig};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let config = ServerConfig::resolve(Args::parse())?;
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&config.log).context("invalid --log filter")?)
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.threads)
        .thread_name("dimstore-server")
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(run(config))?;
    // Connections still open are dropped with the runtime; do not wait for slow peers.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    Ok(())
}
