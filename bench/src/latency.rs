//! Latency: one client in the bench process, one operation at a time, per object size.
//!
//! Sizes are the outer loop and contenders the inner one, so a drift of the machine's speed
//! over the run hits every contender alike.

use indicatif::ProgressBar;

use crate::contenders::{Client, ContenderKind, Op};
use crate::measure::{timed_loop, Bounds, Latencies};
use crate::options::{human_size, Settings};
use crate::placement::Placement;
use crate::report::Row;

/// A connected client of each contender.
pub type Clients = Vec<(ContenderKind, Box<dyn Client>)>;

/// Number of measurements [`run`] makes (for progress bars).
pub fn planned(settings: &Settings, kinds: &[ContenderKind]) -> u64 {
    let per_size: usize = kinds
        .iter()
        .map(|k| {
            k.latency_ops()
                .iter()
                .filter(|&&op| op != Op::Stream)
                .count()
        })
        .sum();
    let streams = kinds
        .iter()
        .filter(|k| k.latency_ops().contains(&Op::Stream))
        .count();
    (per_size * settings.sizes.len() + streams) as u64
}

/// Measures every latency operation of every client at every size. `value` holds at least
/// the largest size's bytes.
pub fn run(
    settings: &Settings,
    placement: Placement,
    clients: &mut Clients,
    value: &[u8],
    progress: &ProgressBar,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &size in &settings.sizes {
        let bounds = Bounds {
            warmup: settings.warmup(size),
            iterations: settings.iterations(size),
            time: settings.latency_time,
        };
        let object = &value[..size as usize];
        for (kind, client) in clients.iter_mut() {
            for &op in kind.latency_ops() {
                let streamed = op == Op::Stream;
                if streamed && size != settings.stream_size() {
                    continue;
                }
                progress.set_message(format!(
                    "{} latency: {} {} {}",
                    placement.name(),
                    kind.name(),
                    op.name(),
                    human_size(size)
                ));
                let latencies = measure(client.as_mut(), op, object, bounds)
                    .map_err(|e| e.context(format!("{} {} {size} B", kind.name(), op.name())))?;
                rows.push(Row::latency(placement, *kind, op, size, &latencies));
                progress.inc(1);
            }
        }
    }
    Ok(rows)
}

fn measure(
    client: &mut dyn Client,
    op: Op,
    object: &[u8],
    bounds: Bounds,
) -> anyhow::Result<Latencies> {
    match op {
        Op::Put => {
            // Both closures need the client mutably; the cell lends it to one at a time.
            let client = std::cell::RefCell::new(client);
            timed_loop(
                bounds,
                |_| client.borrow_mut().put(object),
                || client.borrow_mut().discard(),
            )
        }
        Op::Get => {
            client.load(object, 1)?;
            let result = timed_loop(bounds, |_| client.get(0).map(drop), || Ok(()));
            client.load(&[], 0)?;
            result
        }
        Op::GetBatch => {
            client.load(object, 1)?;
            let result = timed_loop(bounds, |_| client.get_batch().map(drop), || Ok(()));
            client.load(&[], 0)?;
            result
        }
        Op::Stream => {
            let len = object.len() as u64;
            timed_loop(bounds, |_| client.stream(len).map(drop), || Ok(()))
        }
    }
}
