//! `dimstore-bench functions`: functions next to the data against moving the data. A server
//! on loopback TCP (no same-node mapping, no one-sided reads) holds a large object; the
//! client slices 1 KiB out of it and sums a f64 array by `invoke` and by a whole `get`, and
//! measures a call's start-up with the module cached and sent for the first time.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use dimstore::{ClientConfig, LocalMode, SpawnPolicy, Store};

use crate::rdma::get::RowServer;

/// Options of the functions benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct FunctionsArgs {
    /// Size of the object sliced. [default: 1GiB]
    #[arg(long, default_value = "1GiB")]
    pub slice_object: bytesize::ByteSize,
    /// Size of the f64 array summed. [default: 128MiB]
    #[arg(long, default_value = "128MiB")]
    pub sum_object: bytesize::ByteSize,
    /// Timed repetitions of each measurement (the median is reported).
    #[arg(long, default_value = "5")]
    pub repeat: usize,
    /// The server binary. [default: dimstore-server next to this program]
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
}

/// The median time of `repeat` runs of `op` (after one untimed run).
fn median(repeat: usize, mut op: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    op()?;
    let mut times = Vec::with_capacity(repeat.max(1));
    for _ in 0..repeat.max(1) {
        let t0 = Instant::now();
        op()?;
        times.push(t0.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

/// `module` with a custom section naming `nonce`: another hash, so the server has not seen
/// it.
fn variant(module: &[u8], nonce: u64) -> Vec<u8> {
    let name = format!("nonce{nonce:016x}");
    let mut out = module.to_vec();
    out.push(0); // custom section
    out.push(u8::try_from(name.len() + 1).expect("short name"));
    out.push(u8::try_from(name.len()).expect("short name"));
    out.extend_from_slice(name.as_bytes());
    out
}

fn example(text: &str) -> anyhow::Result<Vec<u8>> {
    Ok(wat::parse_str(text)?)
}

fn f64_array(len: usize) -> Vec<u8> {
    (0..len / 8)
        .flat_map(|i| (i as f64).to_le_bytes())
        .collect()
}

fn sum(bytes: &[u8]) -> f64 {
    bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .sum()
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// Runs the benchmark and prints its table (markdown).
pub fn run(args: &FunctionsArgs) -> anyhow::Result<()> {
    let slice_len = usize::try_from(args.slice_object.as_u64())?;
    let sum_len = usize::try_from(args.sum_object.as_u64())?;
    let bin = match &args.server_bin {
        Some(bin) => bin.clone(),
        None => crate::options::default_server_bin()?,
    };
    let token = format!("bench-{:016x}", rand_nonce());
    let env = [
        ("DIMSTORE_TOKEN".to_string(), token.clone()),
        ("DIMSTORE_LOCAL_SOCKET".to_string(), "none".to_string()),
    ];
    let largest = (slice_len + sum_len) as u64;
    let server = RowServer::start(&bin, "functions-bench", Some("none"), &env, largest, None)?;
    let config = ClientConfig {
        token: Some(token),
        local: LocalMode::Off,
        spawn: SpawnPolicy::Never,
        timeout: Duration::from_secs(600),
        ..ClientConfig::default()
    };
    let store = Store::connect(&server.ready.address, config).context("connect")?;
    let slice_module = example(include_str!("../../examples/functions/slice.wat"))?;
    let sum_module = example(include_str!("../../examples/functions/sum_f64.wat"))?;

    eprintln!(
        "functions: putting {} and {}",
        args.slice_object, args.sum_object
    );
    let big = store.put(&vec![0x5au8; slice_len]).context("put")?;
    let array = f64_array(sum_len);
    let want = sum(&array);
    let array_key = store.put(&array).context("put")?;
    let keys = [big.clone()];
    let offset = (slice_len / 2) as u64;
    let arg = [offset.to_le_bytes(), 1024u64.to_le_bytes()].concat();

    eprintln!("functions: slice");
    let slice_invoke = median(args.repeat, || {
        let got = store.invoke(&keys, &slice_module, "slice", &arg)?;
        anyhow::ensure!(got.len() == 1024, "slice of {} bytes", got.len());
        Ok(())
    })?;
    let whole_get = median(args.repeat, || {
        let got = store.get(&big)?;
        anyhow::ensure!(got.len() == slice_len, "short get");
        Ok(())
    })?;
    eprintln!("functions: sum");
    let array_keys = [array_key.clone()];
    let sum_invoke = median(args.repeat, || {
        let got = store.invoke(&array_keys, &sum_module, "sum_f64", &[])?;
        anyhow::ensure!(got == want.to_le_bytes(), "wrong sum");
        Ok(())
    })?;
    let get_sum = median(args.repeat, || {
        let got = store.get(&array_key)?;
        anyhow::ensure!(sum(&got) == want, "wrong sum");
        Ok(())
    })?;
    let native_sum = median(args.repeat, || {
        anyhow::ensure!(sum(std::hint::black_box(&array)) == want, "wrong sum");
        Ok(())
    })?;
    eprintln!("functions: start-up");
    let tiny = [store.put(&[0u8; 8])?];
    let cached = median(args.repeat, || {
        store.invoke(&tiny, &sum_module, "sum_f64", &[])?;
        Ok(())
    })?;
    let mut nonce = rand_nonce();
    let first = median(args.repeat, || {
        nonce += 1;
        store.invoke(&tiny, &variant(&sum_module, nonce), "sum_f64", &[])?;
        Ok(())
    })?;

    println!(
        "| measurement | time (ms, median of {}) | ratio |",
        args.repeat
    );
    println!("| --- | ---: | ---: |");
    println!(
        "| slice 1 KiB of {}: invoke | {} | {:.0}x faster than the get |",
        args.slice_object,
        ms(slice_invoke),
        whole_get.as_secs_f64() / slice_invoke.as_secs_f64()
    );
    println!("| slice: get of the whole object | {} | |", ms(whole_get));
    println!(
        "| sum of {} f64: invoke | {} | {:.2}x the native sum |",
        args.sum_object,
        ms(sum_invoke),
        sum_invoke.as_secs_f64() / native_sum.as_secs_f64()
    );
    println!(
        "| sum: get + sum on the client | {} | {:.2}x the invoke |",
        ms(get_sum),
        get_sum.as_secs_f64() / sum_invoke.as_secs_f64()
    );
    println!("| sum: native sum in memory | {} | |", ms(native_sum));
    println!("| start-up: module cached (8 B input) | {} | |", ms(cached));
    println!(
        "| start-up: module sent and compiled | {} | {:.2}x cached |",
        ms(first),
        first.as_secs_f64() / cached.as_secs_f64()
    );
    Ok(())
}

/// A number that differs between runs.
fn rand_nonce() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
