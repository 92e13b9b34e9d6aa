//! `dimstore-c-get-bench`: the Rust client measured as `examples/c/get_bench.c` measures `dimstore_get_into`: same
//! sizes, same loop, same CSV (scripts/bench-c.sh runs both in one fleet).
//!
//! `dimstore-c-get-bench [ITERATIONS] [SECONDS]`: per size, `rust_get_copy` is `Store::get` plus a copy
//! into the caller's buffer (the work `dimstore_get_into` does), `rust_get` is `Store::get`
//! alone (on the same node a mapped view: no copy at all).

use std::time::{Duration, Instant};

use client::Store;

const SIZES: [usize; 5] = [64, 4096, 65536, 1 << 20, 16 << 20];
const PAGE: usize = 4096;

/// The page-aligned `len` bytes inside `buf` (which has `PAGE` bytes to spare).
fn page_aligned(buf: &mut [u8], len: usize) -> &mut [u8] {
    let offset = buf.as_ptr().align_offset(PAGE);
    &mut buf[offset..offset + len]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let iterations: usize = args.next().map_or(Ok(200), |a| a.parse())?;
    let seconds: f64 = args.next().map_or(Ok(3.0), |a| a.parse())?;
    if !(1..=1_000_000).contains(&iterations) || seconds <= 0.0 {
        return Err("usage: get_bench [ITERATIONS 1..1000000] [SECONDS > 0]".into());
    }
    let budget = Duration::from_secs_f64(seconds);
    let store = Store::from_env()?;
    println!("api,size,iterations,median_us,mean_us,mib_per_s");
    for (k, &size) in SIZES.iter().enumerate() {
        // Page-aligned buffers (as the C side's): a copy's speed depends on alignment.
        let mut src_buf = vec![k as u8 + 1; size + PAGE];
        let mut dst_buf = vec![0u8; size + PAGE];
        let src = page_aligned(&mut src_buf, size);
        let dst = page_aligned(&mut dst_buf, size);
        let key = store.put(src)?;
        dst.copy_from_slice(&store.get(&key)?); // warm-up: connect, map
        for copy in [true, false] {
            let mut times = Vec::with_capacity(iterations);
            let start = Instant::now();
            while times.len() < iterations && start.elapsed() < budget {
                let t0 = Instant::now();
                let bytes = store.get(&key)?;
                if copy {
                    dst.copy_from_slice(&bytes);
                }
                drop(bytes);
                times.push(t0.elapsed().as_secs_f64() * 1e6);
            }
            assert_eq!(dst, src, "wrong bytes for size {size}");
            let mean = times.iter().sum::<f64>() / times.len() as f64;
            times.sort_by(f64::total_cmp);
            let median = times[times.len() / 2];
            let api = if copy { "rust_get_copy" } else { "rust_get" };
            println!(
                "{api},{size},{},{median:.2},{mean:.2},{:.1}",
                times.len(),
                size as f64 / (median / 1e6) / f64::from(1 << 20)
            );
        }
        store.evict(&key)?;
    }
    Ok(())
}
