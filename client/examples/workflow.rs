//! A producer/consumer workflow across a dimstore fleet, with a results table.
//!
//! Run inside a fleet: `dimstore-launch run --local 4 -- workflow`. Every node produces
//! objects of several sizes on its own server; the next node consumes them by key, fetching
//! the bytes from the producer's server, and verifies every byte. The same transfers over a
//! plain TCP socket on this machine are the reference.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use dimstore::fleet::Fleet;
use dimstore::{ClientConfig, Key, Store};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

/// (size, objects per node) of each round.
const ROUNDS: &[(usize, usize)] = &[
    (1 << 10, 200),
    (64 << 10, 100),
    (1 << 20, 40),
    (16 << 20, 6),
    (64 << 20, 3),
];

struct RoundResult {
    size: usize,
    objects: usize,
    put_us: u64,
    get_us: u64,
    get_mb_s: f64,
    raw_us: u64,
    raw_mb_s: f64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fleet_path = std::env::var("DIMSTORE_FLEET")
        .map_err(|_| "run me inside a fleet: dimstore-launch run --local 4 -- workflow")?;
    let fleet = Fleet::read(fleet_path.as_ref())?;
    let nodes = fleet.nodes.len();
    let config = ClientConfig {
        token: fleet.token.clone(),
        // Every node reads the others' keys: the token may go to each server of the fleet.
        trusted: fleet.nodes.iter().map(|n| n.address.clone()).collect(),
        timeout: Duration::from_secs(60),
        ..ClientConfig::default()
    };
    // One client per node, as the node's tasks would have.
    let stores: Vec<Store> = fleet
        .nodes
        .iter()
        .map(|n| Store::connect(&n.address, config.clone()))
        .collect::<Result<_, _>>()?;
    let total: usize = ROUNDS.iter().map(|&(_, n)| n * nodes * 2).sum();
    let progress = ProgressBar::new(total as u64).with_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} transfers {msg}",
    )?);
    let raw = RawTcp::start()?;
    let mut results = Vec::new();
    let mut verified = 0usize;
    for &(size, per_node) in ROUNDS {
        progress.set_message(format!("{} objects", human(size)));
        let mut puts = Histogram::<u64>::new(3)?;
        let mut gets = Histogram::<u64>::new(3)?;
        // Produce: every node stores objects on its own server, in parallel.
        let produced: Vec<Vec<(Key, u64)>> = std::thread::scope(|s| {
            let handles: Vec<_> = stores
                .iter()
                .enumerate()
                .map(|(node, store)| {
                    let progress = &progress;
                    s.spawn(move || {
                        let mut out = Vec::new();
                        let mut lat = Vec::new();
                        for i in 0..per_node {
                            let data = object(size, node, i);
                            let t = Instant::now();
                            let key = store.put(&data).expect("put");
                            lat.push(t.elapsed());
                            out.push((key, checksum(&data)));
                            progress.inc(1);
                        }
                        (out, lat)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    let (keys, lat) = h.join().expect("producer");
                    for l in lat {
                        let _ = puts.record(l.as_micros() as u64);
                    }
                    keys
                })
                .collect()
        });
        // Consume: node i+1 fetches node i's objects by key and checks every byte.
        let started = Instant::now();
        let mut bytes = 0usize;
        for (node, keys) in produced.iter().enumerate() {
            let consumer = &stores[(node + 1) % nodes];
            for (key, sum) in keys {
                let t = Instant::now();
                let got = consumer.get(key)?;
                let _ = gets.record(t.elapsed().as_micros() as u64);
                if checksum(&got) != *sum {
                    return Err(format!("object {key} corrupted in transit").into());
                }
                bytes += got.len();
                verified += 1;
                progress.inc(1);
            }
            consumer.evict_batch(&keys.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>())?;
        }
        let elapsed = started.elapsed();
        let (raw_us, raw_mb_s) = raw.measure(size, per_node * nodes)?;
        results.push(RoundResult {
            size,
            objects: per_node * nodes,
            put_us: puts.value_at_quantile(0.5),
            get_us: gets.value_at_quantile(0.5),
            get_mb_s: bytes as f64 / elapsed.as_secs_f64() / 1e6,
            raw_us,
            raw_mb_s,
        });
    }
    progress.finish_and_clear();
    print_table(nodes, &results);
    println!("\n{verified} objects moved between {nodes} nodes and verified byte for byte.");
    Ok(())
}

fn print_table(nodes: usize, results: &[RoundResult]) {
    println!("dimstore workflow: {nodes} nodes, each consuming its neighbour's objects\n");
    println!(
        "{:>8} {:>8} {:>12} {:>12} {:>12} {:>14} {:>12} {:>10}",
        "size",
        "objects",
        "put p50 us",
        "get p50 us",
        "get MB/s",
        "raw TCP p50 us",
        "raw MB/s",
        "get/raw"
    );
    for r in results {
        println!(
            "{:>8} {:>8} {:>12} {:>12} {:>12.0} {:>14} {:>12.0} {:>9.2}x",
            human(r.size),
            r.objects,
            r.put_us,
            r.get_us,
            r.get_mb_s,
            r.raw_us,
            r.raw_mb_s,
            r.get_us as f64 / r.raw_us.max(1) as f64
        );
    }
    println!(
        "\nraw TCP: the same transfer (request, then the object's bytes) over one plain socket."
    );
}

/// A plain TCP "object server": answers an 8-byte size with that many bytes.
struct RawTcp {
    address: String,
}

impl RawTcp {
    fn start() -> std::io::Result<RawTcp> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?.to_string();
        std::thread::spawn(move || {
            let buffer = vec![0xa5u8; 64 << 20];
            for stream in listener.incoming().flatten() {
                let _ = stream.set_nodelay(true);
                let mut stream = stream;
                let mut req = [0u8; 8];
                while stream.read_exact(&mut req).is_ok() {
                    let n = u64::from_le_bytes(req) as usize;
                    if stream.write_all(&buffer[..n.min(buffer.len())]).is_err() {
                        break;
                    }
                }
            }
        });
        Ok(RawTcp { address })
    }

    /// Median microseconds per transfer and MB/s for `count` transfers of `size` bytes.
    fn measure(&self, size: usize, count: usize) -> std::io::Result<(u64, f64)> {
        let mut stream = TcpStream::connect(&self.address)?;
        stream.set_nodelay(true)?;
        let mut buf = vec![0u8; size];
        let mut lat = Histogram::<u64>::new(3).map_err(std::io::Error::other)?;
        let started = Instant::now();
        for _ in 0..count {
            let t = Instant::now();
            stream.write_all(&(size as u64).to_le_bytes())?;
            stream.read_exact(&mut buf)?;
            let _ = lat.record(t.elapsed().as_micros() as u64);
        }
        let mb_s = (size * count) as f64 / started.elapsed().as_secs_f64() / 1e6;
        Ok((lat.value_at_quantile(0.5), mb_s))
    }
}

fn object(size: usize, node: usize, i: usize) -> Vec<u8> {
    let mut x = (node as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i as u64 + 1);
    let mut data = vec![0u8; size];
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    data
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.chunks(8).fold(0xcbf2_9ce4_8422_2325u64, |h, c| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        (h ^ u64::from_le_bytes(w)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn human(size: usize) -> String {
    match size {
        s if s >= 1 << 20 => format!("{}MiB", s >> 20),
        s if s >= 1 << 10 => format!("{}KiB", s >> 10),
        s => format!("{s}B"),
    }
}
