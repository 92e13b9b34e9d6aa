//! Functions next to the data: the example modules (examples/functions) run on the owner
//! over objects from 8 B to 256 MiB and agree with the client's own computation; hostile
//! modules (infinite loops, memory and output bombs, out-of-range reads, traps) get typed
//! errors within the deadline and the server keeps serving; the module travels once per
//! server; only clients with the token may invoke.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dimstore::{InvokeError, Key, RequestError, Store};
use dimstore_tests::{binary, pattern, test_config, ServerOptions, TestServer};

const TOKEN: &str = "functions-test-token";

/// A server requiring the token (so functions are on by default), with extra options.
fn server(memory: &str, extra: &[&str]) -> TestServer {
    TestServer::start(ServerOptions {
        memory_limit: memory.into(),
        token: Some(TOKEN.into()),
        extra: extra.iter().map(|s| s.to_string()).collect(),
        ..ServerOptions::default()
    })
}

fn client(server: &TestServer) -> Store {
    server.client_with("tcp", |c| {
        c.token = Some(TOKEN.into());
        c.timeout = Duration::from_secs(120);
    })
}

fn example_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/functions")
        .join(name)
}

fn example(name: &str) -> Vec<u8> {
    wat::parse_file(example_path(name)).expect("example module")
}

fn module(text: &str) -> Vec<u8> {
    wat::parse_str(text).expect("test module")
}

fn sum_f64(bytes: &[u8]) -> f64 {
    bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .sum()
}

fn histogram(bytes: &[u8]) -> Vec<u8> {
    let mut counts = [0u64; 256];
    for &b in bytes {
        counts[b as usize] += 1;
    }
    counts.iter().flat_map(|c| c.to_le_bytes()).collect()
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn slice_arg(offset: u64, len: u64) -> Vec<u8> {
    [offset.to_le_bytes(), len.to_le_bytes()].concat()
}

/// f64 values (no NaN) as bytes, with `extra` trailing bytes that make no whole f64.
fn f64_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..len / 8)
        .flat_map(|i| ((i as f64) * 0.25 - seed as f64).to_le_bytes())
        .collect();
    bytes.extend(pattern(len % 8, seed));
    bytes
}

#[test]
fn the_examples_agree_with_the_clients_own_computation_from_8_bytes_to_256_mib() {
    let server = server("1GiB", &[]);
    let store = client(&server);
    let (sum, hist, slice, check) = (
        example("sum_f64.wat"),
        example("histogram.wat"),
        example("slice.wat"),
        example("checksum.wat"),
    );
    for (i, len) in [8usize, 4099, (1 << 20) + 7, 256 << 20]
        .into_iter()
        .enumerate()
    {
        let data = if i % 2 == 0 {
            f64_bytes(len, i as u64)
        } else {
            pattern(len, i as u64)
        };
        let key = store.put(&data).expect("put");
        let keys = [key.clone()];
        let got = store.invoke(&keys, &sum, "sum_f64", &[]).expect("sum");
        let (got, want) = (
            f64::from_le_bytes(got.try_into().expect("8 bytes")),
            sum_f64(&data),
        );
        // Random bytes make NaNs, whose payload bits engines need not keep.
        assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "sum of {len} bytes: {got} != {want}"
        );
        let got = store
            .invoke(&keys, &hist, "histogram", &[])
            .expect("histogram");
        assert_eq!(got, histogram(&data), "histogram of {len} bytes");
        let got = store
            .invoke(&keys, &check, "fnv1a64", &[])
            .expect("checksum");
        assert_eq!(got, fnv1a64(&data).to_le_bytes(), "checksum of {len} bytes");
        for (offset, want) in [(0, 1024), (len as u64 / 3, 1024), (len as u64 - 3, 100)] {
            let got = store
                .invoke(&keys, &slice, "slice", &slice_arg(offset, want))
                .expect("slice");
            let from = offset as usize;
            let to = (from + want as usize).min(len);
            assert_eq!(got, &data[from..to], "slice {offset}+{want} of {len} bytes");
        }
        store.evict(&key).expect("evict");
    }
}

#[test]
fn several_inputs_are_seen_in_order_and_outputs_can_stay_on_the_owner() {
    let server = server("256MiB", &[]);
    let store = client(&server);
    let parts = [pattern(1000, 1), pattern(70_000, 2), pattern(3, 3)];
    let keys: Vec<Key> = parts.iter().map(|p| store.put(p).expect("put")).collect();
    let all = parts.concat();
    let got = store
        .invoke(&keys, &example("checksum.wat"), "fnv1a64", &[])
        .expect("checksum");
    assert_eq!(got, fnv1a64(&all).to_le_bytes());
    let stored = store
        .invoke_to_key(&keys, &example("histogram.wat"), "histogram", &[])
        .expect("invoke to key");
    assert_eq!(stored.owner, keys[0].owner);
    assert_eq!(
        &store.get(&stored).expect("get result")[..],
        &histogram(&all)[..]
    );
    // A missing input is NotFound; an offset past the end is the slice's own failure code.
    store.evict(&keys[2]).expect("evict");
    let e = store
        .invoke(&keys, &example("checksum.wat"), "fnv1a64", &[])
        .expect_err("missing input");
    assert!(matches!(e, InvokeError::NotFound(_)), "{e:?}");
    let e = store
        .invoke(
            &keys[..1],
            &example("slice.wat"),
            "slice",
            &slice_arg(5000, 1),
        )
        .expect_err("offset past the end");
    assert!(
        matches!(e, InvokeError::FunctionFailed { code: 3 }),
        "{e:?}"
    );
}

#[test]
fn the_module_travels_once_then_is_named_by_its_hash() {
    let server = server("64MiB", &[]);
    let store = client(&server);
    let key = store.put(&pattern(5000, 9)).expect("put");
    let check = example("checksum.wat");
    let first = store
        .invoke(std::slice::from_ref(&key), &check, "fnv1a64", &[])
        .expect("first");
    let stats = store.stats().expect("stats").functions;
    assert_eq!(
        (stats.invocations, stats.modules_received),
        (2, 1),
        "{stats:?}"
    );
    assert_eq!(stats.cached_modules, 1);
    let second = store
        .invoke(&[key], &check, "fnv1a64", &[])
        .expect("second");
    assert_eq!(first, second);
    let stats = store.stats().expect("stats").functions;
    // One more invocation, found in the cache: the bytes were not sent again.
    assert_eq!(
        (stats.invocations, stats.modules_received, stats.cache_hits),
        (3, 1, 1),
        "{stats:?}"
    );
}

/// A hostile module and the error it must get.
fn assert_refused(
    store: &Store,
    key: &Key,
    text: &str,
    expected: fn(&InvokeError) -> bool,
    deadline: Duration,
) {
    let started = Instant::now();
    let e = store
        .invoke(std::slice::from_ref(key), &module(text), "run", &[])
        .expect_err("hostile module refused");
    assert!(expected(&e), "unexpected error for {text}: {e:?}");
    // Generous slack: the point is that it does not hang.
    assert!(
        started.elapsed() < deadline + Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    // The server keeps serving.
    assert_eq!(
        store.get(key).expect("get after a hostile module").len(),
        64
    );
}

#[test]
fn hostile_modules_get_typed_errors_within_the_deadline_and_the_server_keeps_serving() {
    let timeout = Duration::from_secs(2);
    let server = server(
        "256MiB",
        &[
            "--function-timeout",
            "2s",
            "--function-memory",
            "8MiB",
            "--function-output",
            "1MiB",
        ],
    );
    let store = client(&server);
    let key = store.put(&[7u8; 64]).expect("put");
    let infinite_loop = r#"(module (memory (export "memory") 1)
        (func (export "run") (result i32) (loop $l (br $l)) (i32.const 0)))"#;
    assert_refused(
        &store,
        &key,
        infinite_loop,
        |e| matches!(e, InvokeError::Deadline(_)),
        timeout,
    );
    let grow_bomb = r#"(module (memory (export "memory") 1)
        (func (export "run") (result i32)
          (loop $l (drop (memory.grow (i32.const 16))) (br $l)) (i32.const 0)))"#;
    assert_refused(
        &store,
        &key,
        grow_bomb,
        |e| matches!(e, InvokeError::Limit(_)),
        timeout,
    );
    let huge_initial_memory = r#"(module (memory (export "memory") 60000)
        (func (export "run") (result i32) (i32.const 0)))"#;
    assert_refused(
        &store,
        &key,
        huge_initial_memory,
        |e| matches!(e, InvokeError::Limit(_)),
        timeout,
    );
    let output_bomb = r#"(module
        (import "dimstore" "output" (func $output (param i32 i32)))
        (memory (export "memory") 1)
        (func (export "run") (result i32)
          (loop $l (call $output (i32.const 0) (i32.const 65536)) (br $l)) (i32.const 0)))"#;
    assert_refused(
        &store,
        &key,
        output_bomb,
        |e| matches!(e, InvokeError::Limit(_)),
        timeout,
    );
    let trap = r#"(module (memory (export "memory") 1)
        (func (export "run") (result i32) unreachable))"#;
    assert_refused(
        &store,
        &key,
        trap,
        |e| matches!(e, InvokeError::Trapped(_)),
        timeout,
    );
    let read_arg_outside = r#"(module
        (import "dimstore" "read_arg" (func $read_arg (param i32)))
        (memory (export "memory") 1)
        (func (export "run") (result i32) (call $read_arg (i32.const 65530)) (i32.const 0)))"#;
    let e = store
        .invoke(
            std::slice::from_ref(&key),
            &module(read_arg_outside),
            "run",
            &[1; 64],
        )
        .expect_err("read_arg outside memory");
    assert!(matches!(e, InvokeError::Trapped(_)), "{e:?}");
    let foreign_import = r#"(module
        (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (func (export "run") (result i32) (i32.const 0)))"#;
    assert_refused(
        &store,
        &key,
        foreign_import,
        |e| matches!(e, InvokeError::InvalidModule(_)),
        timeout,
    );
    let e = store
        .invoke(std::slice::from_ref(&key), b"\0asm garbage", "run", &[])
        .expect_err("garbage module");
    assert!(matches!(e, InvokeError::InvalidModule(_)), "{e:?}");
    let failing = r#"(module (memory (export "memory") 1)
        (func (export "run") (result i32) (i32.const 7)))"#;
    let e = store
        .invoke(std::slice::from_ref(&key), &module(failing), "run", &[])
        .expect_err("nonzero return");
    assert!(
        matches!(e, InvokeError::FunctionFailed { code: 7 }),
        "{e:?}"
    );
    let stats = store.stats().expect("stats").functions;
    assert_eq!(stats.running, 0, "{stats:?}");
    assert!(stats.failures >= 9, "{stats:?}");
}

#[test]
fn reads_out_of_range_get_error_values_never_host_memory() {
    let server = server("64MiB", &[]);
    let store = client(&server);
    let key = store.put(&pattern(100, 4)).expect("put");
    // Each probe's return value, as i32s: a bad index, offsets past the end and negative,
    // a destination past guest memory, a negative length; then a read at the very end (0)
    // and a read clipped at the end (10 bytes).
    let probe = r#"(module
        (import "dimstore" "read" (func $read (param i32 i64 i32 i32) (result i32)))
        (import "dimstore" "input_len" (func $input_len (param i32) (result i64)))
        (import "dimstore" "output" (func $output (param i32 i32)))
        (memory (export "memory") 1)
        (func $put (param $at i32) (param $v i32) (i32.store (local.get $at) (local.get $v)))
        (func (export "run") (result i32)
          (call $put (i32.const 1024) (call $read (i32.const 1) (i64.const 0) (i32.const 0) (i32.const 8)))
          (call $put (i32.const 1028) (call $read (i32.const -1) (i64.const 0) (i32.const 0) (i32.const 8)))
          (call $put (i32.const 1032) (call $read (i32.const 0) (i64.const 101) (i32.const 0) (i32.const 8)))
          (call $put (i32.const 1036) (call $read (i32.const 0) (i64.const -1) (i32.const 0) (i32.const 8)))
          (call $put (i32.const 1040) (call $read (i32.const 0) (i64.const 0) (i32.const 65530) (i32.const 8)))
          (call $put (i32.const 1044) (call $read (i32.const 0) (i64.const 0) (i32.const 0) (i32.const -5)))
          (call $put (i32.const 1048) (call $read (i32.const 0) (i64.const 100) (i32.const 0) (i32.const 8)))
          (call $put (i32.const 1052) (call $read (i32.const 0) (i64.const 90) (i32.const 0) (i32.const 64)))
          (call $put (i32.const 1056) (i32.wrap_i64 (call $input_len (i32.const 3))))
          (call $output (i32.const 1024) (i32.const 36))
          (i32.const 0)))"#;
    let got = store
        .invoke(&[key], &module(probe), "run", &[])
        .expect("probe");
    let values: Vec<i32> = got
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    assert_eq!(values, [-1, -1, -2, -2, -3, -3, 0, 10, -1]);
}

#[test]
fn thirty_two_concurrent_invocations_while_gets_continue() {
    let server = server("256MiB", &["--function-concurrency", "4"]);
    let store = client(&server);
    let data = pattern(2 << 20, 5);
    let key = store.put(&data).expect("put");
    let small = store.put(b"still here").expect("put small");
    let check = example("checksum.wat");
    let want = fnv1a64(&data).to_le_bytes();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..32)
            .map(|_| {
                let (store, key, check) = (store.clone(), key.clone(), &check);
                s.spawn(move || store.invoke(&[key], check, "fnv1a64", &[]))
            })
            .collect();
        // Gets answered while invocations were still running (bounded loop).
        let mut overlapped = 0;
        for _ in 0..100_000 {
            if workers.iter().all(|w| w.is_finished()) {
                break;
            }
            assert_eq!(
                &store.get(&small).expect("get while invoking")[..],
                b"still here"
            );
            if !workers.iter().all(|w| w.is_finished()) {
                overlapped += 1;
            }
        }
        for worker in workers {
            assert_eq!(worker.join().expect("worker").expect("invoke"), want);
        }
        assert!(
            overlapped > 0,
            "no get was answered while the invocations ran"
        );
    });
    let stats = store.stats().expect("stats").functions;
    assert_eq!(stats.running, 0, "{stats:?}");
    assert!(stats.invocations >= 32, "{stats:?}");
}

#[test]
fn only_clients_with_the_token_invoke_and_tokenless_servers_run_no_functions() {
    let server = server("64MiB", &[]);
    let key = client(&server).put(&pattern(100, 6)).expect("put");
    let outsider = Store::without_local(test_config("tcp"));
    let e = outsider
        .invoke(&[key], &example("checksum.wat"), "fnv1a64", &[])
        .expect_err("no token");
    assert!(
        matches!(
            e,
            InvokeError::Request(
                RequestError::Unauthorized { .. } | RequestError::Untrusted { .. }
            )
        ),
        "{e:?}"
    );
    // Without a token, functions are off unless asked for.
    let open = TestServer::start(ServerOptions::default());
    let store = open.client("tcp");
    let key = store.put(&pattern(100, 6)).expect("put");
    let e = store
        .invoke(&[key], &example("checksum.wat"), "fnv1a64", &[])
        .expect_err("functions off");
    assert!(matches!(e, InvokeError::Disabled(_)), "{e:?}");
}

#[test]
fn the_cli_invokes_a_wat_module_into_a_file() {
    let server = server("64MiB", &[]);
    let store = client(&server);
    let data = pattern(300_000, 7);
    let key = store.put(&data).expect("put");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("sum.bin");
    let run = Command::new(binary("dimstore"))
        .env("DIMSTORE_SERVER", server.address())
        .env("DIMSTORE_TOKEN", TOKEN)
        .env("DIMSTORE_SPAWN", "never")
        .env("DIMSTORE_RUNTIME_DIR", dir.path().join("run"))
        .args(["invoke", &key.to_string(), "--module"])
        .arg(example_path("checksum.wat"))
        .args(["--function", "fnv1a64", "-o"])
        .arg(&out)
        .stdin(Stdio::null())
        .output()
        .expect("run dimstore invoke");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        std::fs::read(&out).expect("output"),
        fnv1a64(&data).to_le_bytes()
    );
}

#[test]
fn an_evict_during_a_call_frees_nothing_under_it() {
    let server = server("256MiB", &[]);
    let store = client(&server);
    let data = pattern(8 << 20, 11);
    let key = store.put(&data).expect("put");
    // The byte histogram of input 0, taken `arg` (u32) times: long enough to evict meanwhile.
    let repeated = r#"(module
      (import "dimstore" "input_len" (func $input_len (param i32) (result i64)))
      (import "dimstore" "read" (func $read (param i32 i64 i32 i32) (result i32)))
      (import "dimstore" "read_arg" (func $read_arg (param i32)))
      (import "dimstore" "output" (func $output (param i32 i32)))
      (memory (export "memory") 2)
      (func (export "run") (result i32)
        (local $r i32) (local $off i64) (local $len i64) (local $got i32) (local $p i32) (local $slot i32)
        (call $read_arg (i32.const 67584))
        (local.set $len (call $input_len (i32.const 0)))
        (block $repeats_done
          (loop $repeats
            (br_if $repeats_done (i32.ge_u (local.get $r) (i32.load (i32.const 67584))))
            (local.set $off (i64.const 0))
            (block $object_done
              (loop $chunks
                (br_if $object_done (i64.ge_u (local.get $off) (local.get $len)))
                (local.set $got (call $read (i32.const 0) (local.get $off) (i32.const 0) (i32.const 65536)))
                (if (i32.le_s (local.get $got) (i32.const 0)) (then (return (i32.const 1))))
                (local.set $p (i32.const 0))
                (block $chunk_done
                  (loop $bytes
                    (br_if $chunk_done (i32.ge_u (local.get $p) (local.get $got)))
                    (local.set $slot (i32.add (i32.const 65536) (i32.shl (i32.load8_u (local.get $p)) (i32.const 3))))
                    (i64.store (local.get $slot) (i64.add (i64.load (local.get $slot)) (i64.const 1)))
                    (local.set $p (i32.add (local.get $p) (i32.const 1)))
                    (br $bytes)))
                (local.set $off (i64.add (local.get $off) (i64.extend_i32_u (local.get $got))))
                (br $chunks)))
            (local.set $r (i32.add (local.get $r) (i32.const 1)))
            (br $repeats)))
        (call $output (i32.const 65536) (i32.const 2048))
        (i32.const 0)))"#;
    let times = 24u32;
    let wasm = module(repeated);
    let answer = std::thread::scope(|s| {
        let call = s.spawn(|| {
            store.invoke(
                std::slice::from_ref(&key),
                &wasm,
                "run",
                &times.to_le_bytes(),
            )
        });
        dimstore_tests::wait_stats_within(&store, Duration::from_secs(60), "call running", |st| {
            st.functions.running == 1 || call.is_finished()
        });
        // Evicted while the call reads it: the key goes at once, the bytes stay leased.
        assert!(store.evict(&key).expect("evict"), "evicted");
        call.join().expect("call thread")
    });
    let want: Vec<u8> = histogram(&data)
        .chunks_exact(8)
        .flat_map(|c| {
            (u64::from_le_bytes(c.try_into().expect("8")) * u64::from(times)).to_le_bytes()
        })
        .collect();
    assert_eq!(answer.expect("call over an evicted object"), want);
    assert!(!store.exists(&key).expect("exists"));
    // The lease ended with the call: the object's memory is free.
    dimstore_tests::wait_stats(&store, "memory freed", |st| st.bytes_used == 0);
}
