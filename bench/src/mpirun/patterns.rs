//! The measured patterns, each over dimstore (objects through the fleet, keys over MPI) and
//! over plain MPI (the bytes themselves through MPI) with the same shape.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use dimstore::{Key, ObjectBytes, Store};
use mpi::topology::{Process, SimpleCommunicator};
use mpi::traits::{Communicator, CommunicatorCollectives, Destination, Root, Source};

use super::{Plan, Row};

/// A communication pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Pattern {
    /// Ranks 2k and 2k+1 (on different nodes) ping-pong objects.
    Pairwise,
    /// Every rank sends one object to every other rank.
    AllToAll,
    /// Rank 0 sends one object to every other rank.
    FanOut,
}

impl Pattern {
    /// Every pattern, in report order.
    pub const ALL: [Pattern; 3] = [Pattern::Pairwise, Pattern::AllToAll, Pattern::FanOut];

    /// Name in tables, CSV and file names.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Pairwise => "pairwise",
            Pattern::AllToAll => "all-to-all",
            Pattern::FanOut => "fan-out",
        }
    }

    /// What one timed iteration is, for table captions.
    pub fn what(self) -> &'static str {
        match self {
            Pattern::Pairwise => {
                "one-way time of rank 2k -> 2k+1 (dimstore: put, key over MPI, get from the \
                 other node; half a ping-pong); MB/s per pair"
            }
            Pattern::AllToAll => {
                "every rank gets one object from every other rank (dimstore: put, all-gather \
                 of keys, batched get), to a closing barrier; MB/s over all ranks"
            }
            Pattern::FanOut => {
                "rank 0 to every other rank (dimstore: put, broadcast of the key, get), to a \
                 closing barrier; MB/s delivered to all consumers"
            }
        }
    }
}

/// How the bytes travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Objects in the fleet, keys over MPI.
    Dimstore,
    /// Plain MPI send/recv and collectives.
    Mpi,
}

impl Transport {
    /// Name in tables and CSV.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Dimstore => "dimstore",
            Transport::Mpi => "mpi",
        }
    }
}

/// What every measurement needs.
pub struct Context<'a> {
    /// All ranks.
    pub world: &'a SimpleCommunicator,
    /// This rank's store, connected to its node's server.
    pub store: &'a Store,
    /// Fleet nodes.
    pub nodes: usize,
}

/// Room for a key's text in fixed-size collective buffers.
const KEY_LEN: usize = 160;

/// Measures `pattern` over `transport` at `size` on every rank; rank 0 gets the row.
pub fn measure(
    cx: &Context<'_>,
    plan: &Plan,
    pattern: Pattern,
    transport: Transport,
    size: u64,
) -> anyhow::Result<Option<Row>> {
    let ranks = cx.world.size() as usize;
    if ranks < 2 {
        bail!("the MPI patterns need at least 2 ranks (mpirun -n 2 or more)");
    }
    let len = usize::try_from(size).context("size too large")?;
    let (warmup, iterations) = (plan.warmup(size), plan.iterations(size));
    let mut samples = Samples {
        us: vec![f64::NAN; iterations],
        warmup,
    };
    let total = warmup + iterations;
    match (pattern, transport) {
        (Pattern::Pairwise, Transport::Dimstore) => pairwise_dimstore(cx, len, total, &mut samples),
        (Pattern::Pairwise, Transport::Mpi) => pairwise_mpi(cx, len, total, &mut samples),
        (Pattern::AllToAll, Transport::Dimstore) => {
            all_to_all_dimstore(cx, len, total, &mut samples)
        }
        (Pattern::AllToAll, Transport::Mpi) => all_to_all_mpi(cx, len, total, &mut samples),
        (Pattern::FanOut, Transport::Dimstore) => fan_out_dimstore(cx, len, total, &mut samples),
        (Pattern::FanOut, Transport::Mpi) => fan_out_mpi(cx, len, total, &mut samples),
    }
    .with_context(|| format!("{} over {} at {size} B", pattern.name(), transport.name()))?;
    let gathered = gather(cx.world, &samples.us);
    cx.world.barrier();
    let Some(all) = gathered else {
        return Ok(None);
    };
    // Pairwise: every initiator's one-way times. Collectives: per iteration, the rank that
    // started first (all end together at the closing barrier).
    let mut times: Vec<f64> = match pattern {
        Pattern::Pairwise => all.iter().copied().filter(|t| t.is_finite()).collect(),
        _ => (0..iterations)
            .map(|i| {
                (0..ranks)
                    .map(|r| all[r * iterations + i])
                    .fold(0.0, f64::max)
            })
            .collect(),
    };
    times.sort_by(f64::total_cmp);
    let bytes = match pattern {
        Pattern::Pairwise => size,
        Pattern::AllToAll => size * (ranks * (ranks - 1)) as u64,
        Pattern::FanOut => size * (ranks - 1) as u64,
    };
    let median_us = percentile(&times, 0.5);
    Ok(Some(Row {
        pattern,
        transport,
        size_bytes: size,
        ranks,
        nodes: cx.nodes,
        iterations,
        median_us,
        p99_us: percentile(&times, 0.99),
        mb_per_s: bytes as f64 / median_us,
    }))
}

/// Per-iteration times of this rank, in microseconds (NaN: not timed here).
struct Samples {
    us: Vec<f64>,
    warmup: usize,
}

impl Samples {
    fn record(&mut self, iteration: usize, elapsed: Duration) {
        if let Some(slot) = iteration
            .checked_sub(self.warmup)
            .and_then(|i| self.us.get_mut(i))
        {
            *slot = elapsed.as_secs_f64() * 1e6;
        }
    }
}

/// Runs one iteration of a collective pattern between two barriers and records the time to
/// the closing one: the pattern is done when its slowest rank is. (Timing each rank to its
/// own completion instead would count the skew of the opening barrier's exits.)
fn timed_collective<T>(
    cx: &Context<'_>,
    samples: &mut Samples,
    iteration: usize,
    op: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    cx.world.barrier();
    let start = Instant::now();
    let out = op()?;
    cx.world.barrier();
    samples.record(iteration, start.elapsed());
    Ok(out)
}

/// Median time of one `MPI_Barrier` on this rank, in microseconds: the part of every
/// collective iteration that is the closing barrier.
pub fn barrier_us(world: &SimpleCommunicator) -> f64 {
    const ROUNDS: usize = 200;
    let mut times = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        world.barrier();
        times.push(start.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    percentile(&times, 0.5)
}

/// Rank 0 receives everybody's samples, rank after rank.
fn gather(world: &SimpleCommunicator, samples: &[f64]) -> Option<Vec<f64>> {
    let root = world.process_at_rank(0);
    if world.rank() == 0 {
        let mut all = vec![0f64; samples.len() * world.size() as usize];
        root.gather_into_root(samples, &mut all[..]);
        Some(all)
    } else {
        root.gather_into(samples);
        None
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

/// The byte every object owned by `rank` is filled with.
fn fill_of(rank: usize) -> u8 {
    (rank as u8).wrapping_mul(37).wrapping_add(11)
}

/// Checks an object fetched from `owner`'s put.
fn check(bytes: &[u8], len: usize, owner: usize) -> anyhow::Result<()> {
    let fill = fill_of(owner);
    if bytes.len() != len
        || bytes.first().is_some_and(|&b| b != fill)
        || bytes.last() != bytes.first()
    {
        bail!(
            "object from rank {owner} is corrupt ({} bytes, expected {len} x {fill}: {:?})",
            bytes.len(),
            &bytes[..bytes.len().min(16)]
        );
    }
    Ok(())
}

fn send_key(peer: &Process<'_>, key: &Key) {
    peer.send(key.to_string().as_bytes());
}

fn receive_key(peer: &Process<'_>) -> anyhow::Result<Key> {
    let (bytes, _) = peer.receive_vec::<u8>();
    let text = String::from_utf8(bytes).context("key is not text")?;
    text.parse().with_context(|| format!("bad key {text:?}"))
}

/// A key in a fixed-size buffer for collectives (NUL padded).
fn encode_key(key: &Key, out: &mut [u8; KEY_LEN]) -> anyhow::Result<()> {
    let text = key.to_string();
    if text.len() > KEY_LEN {
        bail!("key {text} is longer than {KEY_LEN} bytes");
    }
    out.fill(0);
    out[..text.len()].copy_from_slice(text.as_bytes());
    Ok(())
}

fn decode_key(bytes: &[u8]) -> anyhow::Result<Key> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let text = std::str::from_utf8(&bytes[..end]).context("key is not text")?;
    text.parse().with_context(|| format!("bad key {text:?}"))
}

fn evict_all(store: &Store, keys: &[Key]) -> anyhow::Result<()> {
    if !keys.is_empty() {
        store.evict_batch(keys).context("evicting")?;
    }
    Ok(())
}

fn pairwise_dimstore(
    cx: &Context<'_>,
    len: usize,
    total: usize,
    samples: &mut Samples,
) -> anyhow::Result<()> {
    let rank = cx.world.rank() as usize;
    let partner = rank ^ 1;
    let mut mine = Vec::with_capacity(total);
    // The odd one out of an odd rank count only joins the final barrier.
    let rounds = if partner < cx.world.size() as usize {
        total
    } else {
        0
    };
    let peer = cx
        .world
        .process_at_rank(if rounds > 0 { partner } else { rank } as i32);
    let data = vec![fill_of(rank); len];
    for i in 0..rounds {
        if rank & 1 == 0 {
            let start = Instant::now();
            let key = cx.store.put(&data)?;
            send_key(&peer, &key);
            let theirs = receive_key(&peer)?;
            let got: ObjectBytes = cx.store.get(&theirs)?;
            samples.record(i, start.elapsed() / 2);
            check(&got, len, partner)?;
            mine.push(key);
        } else {
            let theirs = receive_key(&peer)?;
            check(&cx.store.get(&theirs)?, len, partner)?;
            let key = cx.store.put(&data)?;
            send_key(&peer, &key);
            mine.push(key);
        }
    }
    cx.world.barrier(); // the partner has read the last object
    evict_all(cx.store, &mine)
}

fn pairwise_mpi(
    cx: &Context<'_>,
    len: usize,
    total: usize,
    samples: &mut Samples,
) -> anyhow::Result<()> {
    let rank = cx.world.rank() as usize;
    let partner = rank ^ 1;
    if partner >= cx.world.size() as usize {
        return Ok(());
    }
    let peer = cx.world.process_at_rank(partner as i32);
    let data = vec![fill_of(rank); len];
    let mut buf = vec![0u8; len];
    for i in 0..total {
        if rank & 1 == 0 {
            let start = Instant::now();
            peer.send(&data[..]);
            peer.receive_into(&mut buf[..]);
            samples.record(i, start.elapsed() / 2);
        } else {
            peer.receive_into(&mut buf[..]);
            peer.send(&data[..]);
        }
    }
    check(&buf, len, partner)
}

fn all_to_all_dimstore(
    cx: &Context<'_>,
    len: usize,
    total: usize,
    samples: &mut Samples,
) -> anyhow::Result<()> {
    let (rank, ranks) = (cx.world.rank() as usize, cx.world.size() as usize);
    let data = vec![fill_of(rank); len];
    let mut key_buf = [0u8; KEY_LEN];
    let mut all_keys = vec![0u8; KEY_LEN * ranks];
    let mut mine = Vec::with_capacity(total);
    let owners: Vec<usize> = (0..ranks).filter(|&r| r != rank).collect();
    for i in 0..total {
        let (key, objects) = timed_collective(cx, samples, i, || {
            let key = cx.store.put(&data)?;
            encode_key(&key, &mut key_buf)?;
            cx.world.all_gather_into(&key_buf[..], &mut all_keys[..]);
            let keys = owners
                .iter()
                .map(|&r| decode_key(&all_keys[r * KEY_LEN..(r + 1) * KEY_LEN]))
                .collect::<anyhow::Result<Vec<Key>>>()?;
            Ok((key, cx.store.get_batch(&keys)?))
        })?;
        for (object, &owner) in objects.iter().zip(&owners) {
            let object = object.as_ref().context("object missing")?;
            check(object, len, owner)?;
        }
        mine.push(key);
    }
    cx.world.barrier(); // nobody still reads this rank's objects
    evict_all(cx.store, &mine)
}

fn all_to_all_mpi(
    cx: &Context<'_>,
    len: usize,
    total: usize,
    samples: &mut Samples,
) -> anyhow::Result<()> {
    let (rank, ranks) = (cx.world.rank() as usize, cx.world.size() as usize);
    let send = vec![fill_of(rank); len * ranks];
    let mut receive = vec![0u8; len * ranks];
    for i in 0..total {
        timed_collective(cx, samples, i, || {
            cx.world.all_to_all_into(&send[..], &mut receive[..]);
            Ok(())
        })?;
    }
    let other = (rank + 1) % ranks;
    check(&receive[other * len..(other + 1) * len], len, other)
}

fn fan_out_dimstore(
    cx: &Context<'_>,
    len: usize,
    total: usize,
    samples: &mut Samples,
) -> anyhow::Result<()> {
    let rank = cx.world.rank() as usize;
    let root = cx.world.process_at_rank(0);
    let data = if rank == 0 {
        vec![fill_of(0); len]
    } else {
        Vec::new()
    };
    let mut key_buf = [0u8; KEY_LEN];
    let mut mine = Vec::with_capacity(total);
    for i in 0..total {
        let object = timed_collective(cx, samples, i, || {
            if rank == 0 {
                let key = cx.store.put(&data)?;
                encode_key(&key, &mut key_buf)?;
                mine.push(key);
            }
            root.broadcast_into(&mut key_buf[..]);
            match rank {
                0 => Ok(None),
                _ => Ok(Some(cx.store.get(&decode_key(&key_buf)?)?)),
            }
        })?;
        if let Some(object) = object {
            check(&object, len, 0)?;
        }
    }
    cx.world.barrier();
    evict_all(cx.store, &mine)
}

fn fan_out_mpi(
    cx: &Context<'_>,
    len: usize,
    total: usize,
    samples: &mut Samples,
) -> anyhow::Result<()> {
    let rank = cx.world.rank() as usize;
    let root = cx.world.process_at_rank(0);
    let mut buf = vec![if rank == 0 { fill_of(0) } else { 0 }; len];
    for i in 0..total {
        timed_collective(cx, samples, i, || {
            root.broadcast_into(&mut buf[..]);
            Ok(())
        })?;
    }
    check(&buf, len, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_samples() {
        let sorted = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&sorted, 0.5), 2.0);
        assert_eq!(percentile(&sorted, 0.99), 4.0);
        assert!(percentile(&[], 0.5).is_nan());
        let mut samples = Samples {
            us: vec![f64::NAN; 2],
            warmup: 1,
        };
        samples.record(0, Duration::from_micros(5));
        samples.record(2, Duration::from_micros(7));
        assert!(samples.us[0].is_nan());
        assert_eq!(samples.us[1], 7.0);
    }

    #[test]
    fn corrupt_objects_are_caught() {
        let good = vec![fill_of(3); 16];
        assert!(check(&good, 16, 3).is_ok());
        assert!(check(&good, 17, 3).is_err());
        assert!(check(&good, 16, 2).is_err());
        let mut bad = good.clone();
        bad[15] ^= 1;
        assert!(check(&bad, 16, 3).is_err());
    }
}
