//! `dimstore-server`: the per-node daemon.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use dimstore_server::{run, Args, CpuBind, Placement, ServerConfig};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    // Before any handler of ours: libfabric's PSM libraries install exiting SIGINT/SIGTERM
    // handlers at load time, which tokio would chain to.
    let reset = dimstore_backends::restore_default_signal_handlers();
    let config = ServerConfig::resolve(Args::parse())?;
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&config.log).context("invalid --log filter")?)
        .with_writer(std::io::stderr)
        // Colours only for a terminal: a log file (a spawned server's server.log, a batch
        // job's output) gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if !reset.is_empty() {
        tracing::debug!(
            ?reset,
            "restored default handlers of signals a library had taken"
        );
    }
    let placement = Arc::new(place(&config)?);
    let on_start = Arc::clone(&placement);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.threads)
        .thread_name("dimstore-server")
        .on_thread_start(move || {
            if let Err(e) = on_start.apply_to_current_thread() {
                tracing::warn!(error = %e, "cannot bind a runtime thread");
            }
        })
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(run(config, placement.description().to_string()))?;
    // Connections still open are dropped with the runtime; do not wait for slow peers.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    Ok(())
}

/// Plans the placement and binds the main thread (threads started later inherit it). An
/// explicit request that fails stops the server; `auto` falls back to binding nothing.
fn place(config: &ServerConfig) -> anyhow::Result<Placement> {
    let placement =
        Placement::plan(config).context("cannot place the server (--cpu-bind/--numa)")?;
    match placement.apply_to_current_thread() {
        Ok(()) => Ok(placement),
        Err(e) if config.cpu_bind == CpuBind::Auto && config.numa.is_none() => {
            tracing::warn!(error = %e, "automatic placement failed; binding nothing");
            Ok(Placement::none(format!("binding failed: {e}")))
        }
        Err(e) => Err(e).context("cannot apply --cpu-bind/--numa"),
    }
}
