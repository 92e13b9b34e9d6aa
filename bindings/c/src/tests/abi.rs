//! The exported functions called as a C program would, against a real `dimstore-server`
//! (built by `cargo build --workspace --bins`): results, and bad input answered with a
//! status and a message.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr::{null, null_mut};
use std::sync::Once;

use dimstore_tests::{pattern, ServerOptions, TestServer};

use crate::*;

/// Client environment of every test: never spawn, a short timeout.
fn environment() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::env::set_var("DIMSTORE_SPAWN", "never");
        std::env::set_var("DIMSTORE_TIMEOUT", "10s");
        std::env::set_var("DIMSTORE_ONE_SIDED", "none");
    });
}

fn server(memory_limit: &str) -> TestServer {
    environment();
    TestServer::start(ServerOptions {
        memory_limit: memory_limit.into(),
        ..ServerOptions::default()
    })
}

fn open(server: &TestServer) -> *mut dimstore_t {
    let address = CString::new(server.address()).unwrap();
    let mut s = null_mut();
    // SAFETY: a NUL-terminated address and a writable handle pointer.
    let rc = unsafe { dimstore_open(address.as_ptr(), &mut s) };
    assert_eq!(rc, 0, "open: {}", last_error());
    assert!(!s.is_null());
    s
}

fn last_error() -> String {
    // SAFETY: dimstore_last_error never returns NULL and the text is NUL-terminated.
    unsafe { CStr::from_ptr(dimstore_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// Asserts a status and that the thread's last error mentions `needle`.
fn assert_failed(rc: c_int, status: dimstore_status, needle: &str) {
    assert_eq!(rc, status as c_int, "expected {status:?}: {}", last_error());
    let message = last_error();
    assert!(
        message.contains(needle),
        "last error `{message}` should mention `{needle}`"
    );
}

fn put(s: *mut dimstore_t, bytes: &[u8]) -> CString {
    let mut key = [0 as c_char; DIMSTORE_KEY_MAX];
    // SAFETY: `bytes` readable, `key` holds DIMSTORE_KEY_MAX writable bytes.
    let rc = unsafe {
        dimstore_put(
            s,
            bytes.as_ptr().cast(),
            bytes.len(),
            key.as_mut_ptr(),
            key.len(),
        )
    };
    assert_eq!(rc, 0, "put: {}", last_error());
    // SAFETY: dimstore_put wrote a NUL-terminated key.
    unsafe { CStr::from_ptr(key.as_ptr()) }.to_owned()
}

fn get(s: *mut dimstore_t, key: &CStr, cap: usize) -> (c_int, Vec<u8>, usize) {
    let mut buf = vec![0u8; cap];
    let mut len = usize::MAX;
    // SAFETY: `buf` holds `cap` writable bytes, `len` is writable.
    let rc = unsafe { dimstore_get_into(s, key.as_ptr(), buf.as_mut_ptr().cast(), cap, &mut len) };
    if rc == 0 {
        buf.truncate(len);
    }
    (rc, buf, len)
}

fn exists(s: *mut dimstore_t, key: &CStr) -> bool {
    let mut present = -1;
    // SAFETY: NUL-terminated key, writable int.
    let rc = unsafe { dimstore_exists(s, key.as_ptr(), &mut present) };
    assert_eq!(rc, 0, "exists: {}", last_error());
    present == 1
}

#[test]
fn objects_round_trip_and_short_buffers_get_the_size_needed() {
    let server = server("64MiB");
    let s = open(&server);
    let data = pattern(100_000, 1);
    let key = put(s, &data);
    assert!(key.to_str().unwrap().starts_with("dim://"));

    let mut size = 0;
    // SAFETY: NUL-terminated key, writable size.
    assert_eq!(unsafe { dimstore_size(key.as_ptr(), &mut size) }, 0);
    assert_eq!(size, data.len());

    let (rc, bytes, len) = get(s, &key, data.len());
    assert_eq!(rc, 0, "{}", last_error());
    assert_eq!((len, bytes), (data.len(), data.clone()));

    // One byte short: the size needed comes back, nothing is written.
    let (rc, bytes, len) = get(s, &key, data.len() - 1);
    assert_failed(rc, DIMSTORE_E_TOO_SMALL, "100000");
    assert_eq!(len, data.len());
    assert!(bytes.iter().all(|&b| b == 0));

    // A NULL buffer of capacity 0 asks for the size.
    let mut len = 0;
    // SAFETY: NULL buffer with capacity 0, writable len.
    let rc = unsafe { dimstore_get_into(s, key.as_ptr(), null_mut(), 0, &mut len) };
    assert_failed(rc, DIMSTORE_E_TOO_SMALL, "needs 100000 bytes");
    assert_eq!(len, data.len());

    // An empty object.
    let empty = put(s, &[]);
    let (rc, bytes, len) = get(s, &empty, 0);
    assert_eq!((rc, len, bytes.len()), (0, 0, 0), "{}", last_error());

    // SAFETY: a handle from dimstore_open.
    unsafe { dimstore_close(s) };
}

#[test]
fn null_pointers_are_bad_arguments() {
    let server = server("64MiB");
    let s = open(&server);
    let key = put(s, b"abc");
    let mut buf = [0u8; 8];
    let mut len = 0;
    let mut key_out = [0 as c_char; DIMSTORE_KEY_MAX];
    // SAFETY: every non-NULL pointer below is valid for its use; the NULL ones are what is
    // being tested.
    unsafe {
        assert_failed(
            dimstore_open_env(null_mut()),
            DIMSTORE_E_BAD_ARGUMENT,
            "NULL",
        );
        assert_failed(
            dimstore_put(
                null_mut(),
                buf.as_ptr().cast(),
                3,
                key_out.as_mut_ptr(),
                DIMSTORE_KEY_MAX,
            ),
            DIMSTORE_E_BAD_ARGUMENT,
            "handle is NULL",
        );
        assert_failed(
            dimstore_put(s, null(), 3, key_out.as_mut_ptr(), DIMSTORE_KEY_MAX),
            DIMSTORE_E_BAD_ARGUMENT,
            "data buffer is NULL",
        );
        assert_failed(
            dimstore_put(s, buf.as_ptr().cast(), 3, null_mut(), DIMSTORE_KEY_MAX),
            DIMSTORE_E_BAD_ARGUMENT,
            "key buffer is NULL",
        );
        assert_failed(
            dimstore_get_into(s, null(), buf.as_mut_ptr().cast(), 8, &mut len),
            DIMSTORE_E_BAD_ARGUMENT,
            "key is NULL",
        );
        assert_failed(
            dimstore_get_into(s, key.as_ptr(), null_mut(), 8, &mut len),
            DIMSTORE_E_BAD_ARGUMENT,
            "data buffer is NULL",
        );
        assert_failed(
            dimstore_get_into(s, key.as_ptr(), buf.as_mut_ptr().cast(), 8, null_mut()),
            DIMSTORE_E_BAD_ARGUMENT,
            "length pointer is NULL",
        );
        assert_failed(
            dimstore_size(key.as_ptr(), null_mut()),
            DIMSTORE_E_BAD_ARGUMENT,
            "NULL",
        );
        assert_failed(
            dimstore_exists(s, key.as_ptr(), null_mut()),
            DIMSTORE_E_BAD_ARGUMENT,
            "NULL",
        );
        assert_failed(
            dimstore_evict(s, null()),
            DIMSTORE_E_BAD_ARGUMENT,
            "key is NULL",
        );
        assert_failed(
            dimstore_get_view(s, key.as_ptr(), null_mut()),
            DIMSTORE_E_BAD_ARGUMENT,
            "NULL",
        );
        assert_failed(
            dimstore_new_key(s, null_mut(), 10),
            DIMSTORE_E_BAD_ARGUMENT,
            "NULL",
        );
        assert_failed(
            dimstore_put_batch(s, 1, null(), null(), null_mut(), 0),
            DIMSTORE_E_BAD_ARGUMENT,
            "bufs is NULL",
        );
        // Releasing and closing NULL are no-ops.
        dimstore_view_release(null_mut());
        dimstore_close(null_mut());
        // The store still serves.
        let (rc, bytes, _) = get(s, &key, 8);
        assert_eq!((rc, bytes.as_slice()), (0, &b"abc"[..]));
        dimstore_close(s);
    }
}

#[test]
fn malformed_keys_are_bad_arguments() {
    let server = server("64MiB");
    let s = open(&server);
    let too_long = vec![b'a'; DIMSTORE_KEY_MAX + 10];
    let mut len = 0;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"http://127.0.0.1:1/00/3\0".to_vec(),
            "starts with `dim://`",
        ),
        (
            b"dim://nohost/0123456789abcdef0123456789abcdef/3\0".to_vec(),
            "host:port",
        ),
        (b"dim://a:1/xyz/3\0".to_vec(), "32 hexadecimal"),
        (
            b"dim://a:1/0123456789abcdef0123456789abcdef/-3\0".to_vec(),
            "decimal",
        ),
        (b"dim://a:1/\xff\xfe/3\0".to_vec(), "not a key"),
        (too_long, "no NUL within DIMSTORE_KEY_MAX"),
    ];
    for (text, needle) in cases {
        let key = text.as_ptr().cast::<c_char>();
        let mut buf = [0u8; 8];
        // SAFETY: `key` is NUL-terminated or longer than DIMSTORE_KEY_MAX; the rest valid.
        unsafe {
            assert_failed(
                dimstore_size(key, &mut len),
                DIMSTORE_E_BAD_ARGUMENT,
                needle,
            );
            assert_failed(
                dimstore_get_into(s, key, buf.as_mut_ptr().cast(), 8, &mut len),
                DIMSTORE_E_BAD_ARGUMENT,
                needle,
            );
            assert_failed(dimstore_evict(s, key), DIMSTORE_E_BAD_ARGUMENT, needle);
        }
    }
    // SAFETY: a handle from dimstore_open.
    unsafe { dimstore_close(s) };
}

#[test]
fn closed_and_made_up_handles_are_refused() {
    let server = server("64MiB");
    let s = open(&server);
    let key = put(s, b"kept");
    let made_up = std::ptr::without_provenance_mut::<dimstore_t>(0xdead_beef);
    // SAFETY: handles are tokens, never dereferenced: any value is accepted.
    unsafe {
        dimstore_close(s);
        dimstore_close(s);
        let (rc, _, _) = get(s, &key, 8);
        assert_failed(rc, DIMSTORE_E_CLOSED, "closed");
        let (rc, _, _) = get(made_up, &key, 8);
        assert_failed(rc, DIMSTORE_E_CLOSED, "closed");
        dimstore_close(made_up);
    }
    // A new handle still finds the object.
    let s = open(&server);
    assert!(exists(s, &key));
    // SAFETY: a handle from dimstore_open.
    unsafe { dimstore_close(s) };
}

#[test]
fn short_key_buffers_leave_no_object_behind() {
    let server = server("64MiB");
    let s = open(&server);
    let mut key = [0 as c_char; 16];
    // SAFETY: `key` holds 16 writable bytes.
    let rc = unsafe { dimstore_put(s, b"data".as_ptr().cast(), 4, key.as_mut_ptr(), key.len()) };
    assert_failed(rc, DIMSTORE_E_TOO_SMALL, "the buffer holds 16");
    let stats = server.client("tcp").stats().expect("stats");
    assert_eq!(
        stats.objects, 0,
        "the object whose key did not fit was evicted"
    );
    // SAFETY: as above.
    let rc = unsafe { dimstore_new_key(s, key.as_mut_ptr(), key.len()) };
    assert_failed(rc, DIMSTORE_E_TOO_SMALL, "DIMSTORE_KEY_MAX always suffices");
    // SAFETY: a handle from dimstore_open.
    unsafe { dimstore_close(s) };
}

#[test]
fn missing_evicted_and_full_are_typed() {
    let server = server("1MiB");
    let s = open(&server);
    let key = put(s, b"short-lived");
    assert!(exists(s, &key));
    // SAFETY: NUL-terminated keys, valid buffers.
    unsafe {
        assert_eq!(dimstore_evict(s, key.as_ptr()), 0, "{}", last_error());
        assert_failed(
            dimstore_evict(s, key.as_ptr()),
            DIMSTORE_E_NOT_FOUND,
            "no object",
        );
    }
    assert!(!exists(s, &key));
    let (rc, _, _) = get(s, &key, 64);
    assert_failed(rc, DIMSTORE_E_NOT_FOUND, "no object");

    let big = vec![7u8; 2 << 20];
    let mut out = [0 as c_char; DIMSTORE_KEY_MAX];
    // SAFETY: `big` readable, `out` writable.
    let rc = unsafe {
        dimstore_put(
            s,
            big.as_ptr().cast(),
            big.len(),
            out.as_mut_ptr(),
            out.len(),
        )
    };
    assert_failed(rc, DIMSTORE_E_STORE_FULL, "memory limit");
    // The server keeps serving.
    let key = put(s, b"after");
    assert_eq!(get(s, &key, 8).1, b"after");
    // SAFETY: a handle from dimstore_open.
    unsafe { dimstore_close(s) };
}

#[test]
fn unreachable_server_is_typed() {
    environment();
    let mut s = null_mut();
    // SAFETY: NUL-terminated address, writable handle pointer.
    let rc = unsafe { dimstore_open(c"127.0.0.1:1".as_ptr(), &mut s) };
    assert_failed(rc, DIMSTORE_E_UNREACHABLE, "127.0.0.1:1");
    assert!(s.is_null());
}

#[test]
fn deferred_keys_wait_for_set() {
    let server = server("64MiB");
    let s = open(&server);
    let mut key = [0 as c_char; DIMSTORE_KEY_MAX];
    // SAFETY: `key` writable.
    let rc = unsafe { dimstore_new_key(s, key.as_mut_ptr(), key.len()) };
    assert_eq!(rc, 0);
    // SAFETY: written NUL-terminated above.
    let key = unsafe { CStr::from_ptr(key.as_ptr()) }.to_owned();
    let mut len = 0;
    // SAFETY: NUL-terminated key, writable len.
    assert_failed(
        unsafe { dimstore_size(key.as_ptr(), &mut len) },
        DIMSTORE_E_NOT_SET,
        "deferred",
    );
    let token = s.addr();
    let reader_key = key.clone();
    let reader = std::thread::spawn(move || {
        let s = std::ptr::without_provenance_mut::<dimstore_t>(token);
        get(s, &reader_key, 64)
    });
    // SAFETY: NUL-terminated key, readable bytes.
    unsafe {
        assert_eq!(
            dimstore_set(s, key.as_ptr(), b"later".as_ptr().cast(), 5),
            0,
            "{}",
            last_error()
        );
        assert_failed(
            dimstore_set(s, key.as_ptr(), b"again".as_ptr().cast(), 5),
            DIMSTORE_E_ALREADY_SET,
            "already set",
        );
    }
    let (rc, bytes, _) = reader.join().expect("reader thread");
    assert_eq!((rc, bytes.as_slice()), (0, &b"later"[..]));
    // SAFETY: a handle from dimstore_open.
    unsafe { dimstore_close(s) };
}

#[test]
fn batches_report_each_item() {
    let server = server("64MiB");
    let s = open(&server);
    let objects = [pattern(1000, 1), pattern(10, 2), pattern(5000, 3)];
    let bufs: Vec<*const c_void> = objects.iter().map(|o| o.as_ptr().cast()).collect();
    let lens: Vec<usize> = objects.iter().map(Vec::len).collect();
    let mut keys = vec![0 as c_char; 3 * DIMSTORE_KEY_MAX];
    // SAFETY: 3 buffers with their lengths, 3 key slots of DIMSTORE_KEY_MAX bytes.
    let rc = unsafe {
        dimstore_put_batch(
            s,
            3,
            bufs.as_ptr(),
            lens.as_ptr(),
            keys.as_mut_ptr(),
            DIMSTORE_KEY_MAX,
        )
    };
    assert_eq!(rc, 0, "{}", last_error());
    // Evict the second; give the third too little room.
    // SAFETY: slot 1 holds a NUL-terminated key.
    let rc = unsafe { dimstore_evict(s, keys.as_ptr().add(DIMSTORE_KEY_MAX)) };
    assert_eq!(rc, 0);
    let mut outs = [vec![0u8; 1000], vec![0u8; 10], vec![0u8; 100]];
    let out_ptrs: Vec<*mut c_void> = outs.iter_mut().map(|o| o.as_mut_ptr().cast()).collect();
    let caps: Vec<usize> = outs.iter().map(Vec::len).collect();
    let mut got = [0usize; 3];
    let mut statuses = [1 as c_int; 3];
    // SAFETY: 3 key slots, 3 output buffers with their capacities, 3 lengths and statuses.
    let rc = unsafe {
        dimstore_get_batch_into(
            s,
            3,
            keys.as_ptr(),
            DIMSTORE_KEY_MAX,
            out_ptrs.as_ptr(),
            caps.as_ptr(),
            got.as_mut_ptr(),
            statuses.as_mut_ptr(),
        )
    };
    assert_failed(rc, DIMSTORE_E_NOT_FOUND, "item 1");
    assert_eq!(
        statuses,
        [
            0,
            DIMSTORE_E_NOT_FOUND as c_int,
            DIMSTORE_E_TOO_SMALL as c_int
        ]
    );
    assert_eq!(got[0], 1000);
    assert_eq!(got[2], 5000, "the size needed");
    assert_eq!(outs[0], objects[0]);
    // A key slot without its NUL is a bad argument.
    let mut bad = vec![b'x' as c_char; 2 * 8];
    bad[7] = 0;
    // SAFETY: 2 slots of 8 readable bytes; outputs as above.
    let rc = unsafe {
        dimstore_get_batch_into(
            s,
            2,
            bad.as_mut_ptr(),
            8,
            out_ptrs.as_ptr(),
            caps.as_ptr(),
            got.as_mut_ptr(),
            statuses.as_mut_ptr(),
        )
    };
    assert_failed(rc, DIMSTORE_E_BAD_ARGUMENT, "key 0");
    // SAFETY: a handle from dimstore_open.
    unsafe { dimstore_close(s) };
}

#[test]
fn views_map_same_node_objects_and_outlive_evicts() {
    let server = server("64MiB");
    std::env::set_var("DIMSTORE_NODE", &server.ready.node);
    let s = open(&server);
    std::env::remove_var("DIMSTORE_NODE");
    let data = pattern(1 << 20, 9);
    let key = put(s, &data);
    let mut view = dimstore_view_t {
        data: null(),
        len: 0,
        mapped: 0,
        handle: 0,
    };
    // SAFETY: NUL-terminated key, writable view.
    let rc = unsafe { dimstore_get_view(s, key.as_ptr(), &mut view) };
    assert_eq!(rc, 0, "{}", last_error());
    assert_eq!(view.mapped, 1, "same node: the server's memory is mapped");
    // SAFETY: NUL-terminated key.
    assert_eq!(unsafe { dimstore_evict(s, key.as_ptr()) }, 0);
    // SAFETY: the view is valid until released, evict or not.
    let bytes = unsafe { std::slice::from_raw_parts(view.data.cast::<u8>(), view.len) };
    assert_eq!(bytes, &data[..]);
    let copy = dimstore_view_t { ..view };
    // SAFETY: valid views; the copy of a released view is recognised.
    unsafe {
        dimstore_view_release(&mut view);
        assert_eq!((view.handle, view.len), (0, 0));
        let mut copy = copy;
        dimstore_view_release(&mut copy);
        dimstore_close(s);
    }
    let stats = server.client("tcp").stats().expect("stats");
    assert_eq!(stats.objects, 0);
}

#[test]
fn forked_children_get_a_status_not_a_crash() {
    let server = server("64MiB");
    let s = open(&server);
    let key = put(s, b"parent's");
    // SAFETY: the child only calls this library (which allocates; glibc's malloc is
    // fork-safe) and _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let (rc, _, _) = get(s, &key, 16);
        // SAFETY: the parent's handle is only forgotten in the child.
        unsafe { dimstore_close(s) };
        // SAFETY: ends the child without running the test harness's exit path.
        unsafe { libc::_exit(-rc) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "the child crashed: {status:#x}");
    assert_eq!(-libc::WEXITSTATUS(status), DIMSTORE_E_FORK as c_int);
    // The parent's handle is untouched.
    assert_eq!(get(s, &key, 16).1, b"parent's");
    // SAFETY: a handle from dimstore_open.
    unsafe { dimstore_close(s) };
}

#[test]
fn last_errors_are_per_thread_and_statuses_have_names() {
    let mut len = 0;
    // SAFETY: NUL-terminated text, writable len.
    let rc = unsafe { dimstore_size(c"not a key".as_ptr(), &mut len) };
    assert_failed(rc, DIMSTORE_E_BAD_ARGUMENT, "dimstore_size");
    let other = std::thread::spawn(last_error).join().unwrap();
    assert_eq!(other, "", "another thread has no error");
    let name = |rc| {
        // SAFETY: static NUL-terminated strings.
        unsafe { CStr::from_ptr(dimstore_status_name(rc)) }
            .to_str()
            .unwrap()
    };
    assert_eq!(name(DIMSTORE_E_TOO_SMALL as c_int), "DIMSTORE_E_TOO_SMALL");
    assert_eq!(name(DIMSTORE_E_CONFIG as c_int), "DIMSTORE_E_CONFIG");
    assert_eq!(name(12345), "DIMSTORE_E_UNKNOWN");
}

#[test]
fn panics_become_internal_errors() {
    let rc = crate::status::boundary("dimstore_test", || panic!("boom"));
    assert_failed(rc, DIMSTORE_E_INTERNAL, "panic: boom");
}

#[test]
fn threads_share_one_handle() {
    let server = server("64MiB");
    let s = open(&server);
    let token = s.addr();
    let workers: Vec<_> = (0..4u64)
        .map(|t| {
            std::thread::spawn(move || {
                let s = std::ptr::without_provenance_mut::<dimstore_t>(token);
                for i in 0..25 {
                    let data = pattern(1000 + i, t * 100 + i as u64);
                    let key = put(s, &data);
                    let (rc, bytes, _) = get(s, &key, data.len());
                    assert_eq!(rc, 0, "{}", last_error());
                    assert_eq!(bytes, data);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker thread");
    }
    let stats = server.client("tcp").stats().expect("stats");
    assert_eq!(stats.objects, 100);
    // SAFETY: a handle from dimstore_open.
    unsafe { dimstore_close(s) };
}

#[test]
fn reservations_are_written_in_place_then_sealed_or_aborted() {
    let server = server("64MiB");
    for same_node in [true, false] {
        if same_node {
            std::env::set_var("DIMSTORE_NODE", &server.ready.node);
        }
        let s = open(&server);
        std::env::remove_var("DIMSTORE_NODE");
        let data = pattern(100_000, 4);
        let mut r = dimstore_reservation_t {
            data: null_mut(),
            cap: 0,
            mapped: 0,
            handle: 0,
        };
        // SAFETY: a writable reservation.
        let rc = unsafe { dimstore_create(s, 200_000, &mut r) };
        assert_eq!(rc, 0, "{}", last_error());
        assert_eq!((r.cap, r.mapped), (200_000, c_int::from(same_node)));
        // SAFETY: `cap` writable bytes at `data` until sealed.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), r.data.cast::<u8>(), data.len()) };
        let mut key = [0 as c_char; DIMSTORE_KEY_MAX];
        // SAFETY: a filled reservation, a writable key buffer.
        unsafe {
            assert_failed(
                dimstore_seal(&mut r, 200_001, key.as_mut_ptr(), key.len()),
                DIMSTORE_E_BAD_ARGUMENT,
                "exceeds",
            );
            assert_ne!(r.handle, 0, "a refused seal keeps the reservation");
            let rc = dimstore_seal(&mut r, data.len(), key.as_mut_ptr(), key.len());
            assert_eq!(rc, 0, "{}", last_error());
            assert_eq!(r.handle, 0);
            assert_failed(
                dimstore_seal(&mut r, 1, key.as_mut_ptr(), key.len()),
                DIMSTORE_E_CLOSED,
                "sealed or aborted already",
            );
        }
        // SAFETY: written NUL-terminated by dimstore_seal.
        let key = unsafe { CStr::from_ptr(key.as_ptr()) }.to_owned();
        assert_eq!(get(s, &key, data.len()).1, data);

        // Aborted, or sealed with too short a key buffer: nothing stays behind.
        // SAFETY: writable reservations and buffers.
        unsafe {
            assert_eq!(dimstore_create(s, 1000, &mut r), 0);
            dimstore_abort(&mut r);
            dimstore_abort(&mut r);
            assert_eq!(dimstore_create(s, 1000, &mut r), 0);
            let mut short = [0 as c_char; 8];
            assert_failed(
                dimstore_seal(&mut r, 10, short.as_mut_ptr(), short.len()),
                DIMSTORE_E_TOO_SMALL,
                "holds 8",
            );
            assert_eq!(dimstore_evict(s, key.as_ptr()), 0);
            dimstore_close(s);
        }
        // Aborts are one-way notices: wait (bounded) for the server to have them.
        dimstore_tests::wait_stats(
            &server.client("tcp"),
            "no objects or reservations left",
            |stats| stats.objects == 0 && stats.reserved == 0,
        );
    }
}
