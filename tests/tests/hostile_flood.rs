//! Connection floods against a real server: connections that never send their Hello,
//! past `--max-pending-connections` and past the descriptor limit, on TCP and on the
//! same-node socket. Past the pending bound the oldest silent connections are evicted, so
//! new clients are still served during the flood; past the descriptor bound new
//! connections are closed at once; both are counted, the server's memory stays small, out
//! of descriptors its accept loop waits instead of spinning or logging every failure, and
//! an authenticated client is served throughout.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use dimstore::Store;
use dimstore_proto::{FrameKind, Response, ServerStats};
use dimstore_tests::{
    dimstore_cli, frame_head, json_transport_row, pattern, proc_stat_fields, raw_hello,
    read_replies, stdout, transport_row, wait_stats, ServerOptions, TestServer,
};

/// `--max-pending-connections` of the servers flooded past it.
const PENDING_CAP: usize = 32;

/// Silent connections opened past [`PENDING_CAP`].
const FLOOD: usize = 100;

/// Growth of the server's resident memory tolerated under a flood.
const RSS_SLACK_KIB: u64 = 32 * 1024;

/// Which listener a flood goes to.
#[derive(Debug, Clone, Copy)]
enum Via {
    Tcp,
    Unix,
}

impl Via {
    /// The server's transport of that listener, as stats name it.
    fn transport(self) -> &'static str {
        match self {
            Via::Tcp => "tcp",
            Via::Unix => "local",
        }
    }
}

/// A flooding connection.
enum Silent {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Silent {
    /// Connects to `server`'s listener `via`, within a bound: `None` if that failed.
    fn connect(server: &TestServer, via: Via, local_socket: &str) -> Option<Silent> {
        match via {
            Via::Tcp => {
                let address = server.address().parse().expect("socket address");
                TcpStream::connect_timeout(&address, Duration::from_secs(2))
                    .ok()
                    .map(Silent::Tcp)
            }
            // Non-blocking: a full backlog fails at once instead of blocking.
            Via::Unix => {
                use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
                let socket = rustix::net::socket_with(
                    AddressFamily::UNIX,
                    SocketType::STREAM,
                    SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
                    None,
                )
                .expect("socket");
                let address = SocketAddrUnix::new(local_socket).expect("socket path");
                rustix::net::connect_unix(&socket, &address).ok()?;
                Some(Silent::Unix(UnixStream::from(socket)))
            }
        }
    }

    /// Whether the server closed the connection (it never sends a silent peer anything
    /// else): end of stream or a reset, rather than nothing to read yet.
    fn closed_by_server(&self) -> bool {
        let mut byte = [0u8; 1];
        let read = match self {
            Silent::Tcp(s) => {
                s.set_nonblocking(true).expect("non-blocking");
                (&mut &*s).read(&mut byte)
            }
            Silent::Unix(s) => {
                s.set_nonblocking(true).expect("non-blocking");
                (&mut &*s).read(&mut byte)
            }
        };
        match read {
            Ok(0) => true,
            Ok(_) => panic!("the server sent a silent connection something"),
            Err(e) => e.kind() != ErrorKind::WouldBlock,
        }
    }
}

/// Opens up to `count` silent connections to `via` (each connect bounded), until one
/// fails to connect (the listen backlog is full).
fn flood(server: &TestServer, via: Via, local_socket: &str, count: usize) -> Vec<Silent> {
    (0..count)
        .map_while(|_| Silent::connect(server, via, local_socket))
        .collect()
}

/// The server's same-node socket, as its Hello reply names it.
fn local_socket(server: &TestServer) -> String {
    let mut s = TcpStream::connect(server.address()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let hello = dimstore_proto::encode_request(&raw_hello("n0"));
    s.write_all(&frame_head(FrameKind::Request, 1, &hello, 0))
        .expect("hello");
    match &read_replies(&mut s, 1)[0].1 {
        Response::Hello(hello) => hello.local_socket.clone().expect("a local socket"),
        other => panic!("expected a Hello reply, got {other:?}"),
    }
}

fn put_get(client: &Store, seed: u64) {
    let bytes = pattern(100_000, seed);
    let key = client.put(&bytes).expect("put");
    assert_eq!(&client.get(&key).expect("get")[..], &bytes[..]);
    client.evict(&key).expect("evict");
}

fn refused(stats: &ServerStats, via: Via) -> u64 {
    transport_row(stats, via.transport()).map_or(0, |t| t.refused_connections)
}

fn open(stats: &ServerStats, via: Via) -> u64 {
    transport_row(stats, via.transport()).map_or(0, |t| t.connections)
}

/// A client of `server` over `via`, its connections opened and authenticated.
fn served_client(server: &TestServer, via: Via) -> Store {
    let client = server.client(via.transport());
    put_get(&client, 1);
    client
}

/// Floods `via` with silent connections past the pending cap while an authenticated
/// client keeps working; then checks what was refused, and that a new client is served
/// once the flood is gone.
fn silent_connections_past_the_pending_cap(via: Via) {
    let server = TestServer::start(ServerOptions {
        memory_limit: "64MiB".into(),
        extra: vec![
            "--max-pending-connections".into(),
            PENDING_CAP.to_string(),
            "--one-sided".into(),
            "none".into(),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
        ],
        ..ServerOptions::default()
    });
    let client = served_client(&server, via);
    let before = client.stats().expect("stats");
    let socket = local_socket(&server);
    // The Hello-only connection is gone before the flood starts.
    wait_stats(&client, "only the client's connections", |s| {
        open(s, Via::Tcp) == open(&before, Via::Tcp)
    });
    let rss_before = server.rss_kib();

    let silent = flood(&server, via, &socket, FLOOD);
    assert_eq!(
        silent.len(),
        FLOOD,
        "every connect is accepted by the kernel"
    );
    let expected = (FLOOD - PENDING_CAP) as u64;
    // Past the cap each new connection evicts the oldest silent one; the evicted close on
    // their own tasks: wait for the counts to settle.
    let stats = wait_stats(
        &client,
        "the oldest connections past the cap evicted",
        |s| refused(s, via) >= expected && open(s, via) == open(&before, via) + PENDING_CAP as u64,
    );
    assert_eq!(refused(&stats, via), expected, "evicted only past the cap");
    let closed = wait_closed(&silent, FLOOD - PENDING_CAP);
    assert_eq!(
        closed,
        (0..FLOOD - PENDING_CAP).collect::<Vec<_>>(),
        "the oldest ones are closed, the newest kept"
    );

    // The authenticated client does not count against the cap: it is served meanwhile.
    put_get(&client, 2);
    let rss = server.rss_kib();
    eprintln!("{via:?} flood of {FLOOD}: RSS {rss_before} KiB before, {rss} KiB during");
    assert!(
        rss < rss_before + RSS_SLACK_KIB,
        "RSS grew from {rss_before} to {rss} KiB"
    );
    // Nor are new clients locked out while silent connections hold every pending place:
    // each new connection evicts the oldest silent one and authenticates long before its
    // turn to be evicted could come.
    put_get(&served_client(&server, via), 3);
    let newest_closed = wait_closed(&silent, FLOOD - PENDING_CAP + 1);
    assert_eq!(
        newest_closed[..FLOOD - PENDING_CAP + 1],
        (0..=FLOOD - PENDING_CAP).collect::<Vec<_>>(),
        "the new client's connection evicted the oldest silent one left"
    );

    drop(silent);
    wait_stats(&client, "the silent connections closed", |s| {
        open(s, via) == open(&before, via)
    });
    put_get(&served_client(&server, via), 4);
    let expected = refused(&client.stats().expect("stats"), via);
    // The count is in `dimstore stat --json` and on /metrics.
    let runtime = tempfile::tempdir().expect("tempdir");
    let stat: serde_json::Value = serde_json::from_str(&stdout(
        &dimstore_cli(runtime.path())
            .env("DIMSTORE_SERVER", server.address())
            .args(["stat", "--json"])
            .output()
            .expect("dimstore stat"),
    ))
    .expect("json");
    assert_eq!(
        json_transport_row(&stat, via.transport())["refused_connections"],
        expected
    );
    let metrics = http_get(
        server.ready.metrics.as_deref().expect("a metrics address"),
        "/metrics",
    );
    let line = format!(
        "dimstore_refused_connections_total{{transport=\"{}\"}} {expected}",
        via.transport()
    );
    assert!(
        metrics.lines().any(|l| l == line),
        "no `{line}` in:\n{metrics}"
    );
}

/// The indices of the connections of `silent` the server has closed, once at least `count`
/// are (bounded wait).
fn wait_closed(silent: &[Silent], count: usize) -> Vec<usize> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let closed: Vec<usize> = (0..silent.len())
            .filter(|&i| silent[i].closed_by_server())
            .collect();
        if closed.len() >= count {
            return closed;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {count} connections closed: {closed:?}",
            closed.len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The body of `GET path` from an HTTP server at `address` (closes after one answer).
fn http_get(address: &str, path: &str) -> String {
    let mut s = TcpStream::connect(address).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").expect("request");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("answer");
    let (_, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    body.to_string()
}

#[test]
fn flood_of_silent_tcp_connections_past_the_pending_cap() {
    silent_connections_past_the_pending_cap(Via::Tcp);
}

#[test]
fn flood_of_silent_local_connections_past_the_pending_cap() {
    silent_connections_past_the_pending_cap(Via::Unix);
}

/// CPU seconds (user + system) the process has used, from `/proc/<pid>/stat` (in USER_HZ
/// ticks of 10 ms, as on every Linux architecture dimstore runs on).
fn cpu_seconds(pid: u32) -> f64 {
    let fields = proc_stat_fields(pid).expect("the server is running");
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    ticks as f64 / 100.0
}

/// The number following `key` in `log`.
fn logged_value(log: &str, key: &str) -> Option<u64> {
    let at = log.find(key)? + key.len();
    let digits: String = log[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// How many times the server logged that it could not accept.
fn accept_failures_logged(server: &TestServer) -> usize {
    server
        .log()
        .lines()
        .filter(|l| l.contains("cannot accept connections"))
        .count()
}

/// A server started with 128 descriptors: a flood of 256 silent connections gets those past
/// its connection bound (planned from the 128) closed at once. Then left 40 descriptors
/// (fewer than that bound, so accept() itself runs out): a flood of 300 (fewer where the
/// listen backlog fills first) makes every accept fail for a while. The server waits between attempts instead of
/// spinning, logs the failures once, keeps serving its authenticated client, and serves a
/// new one once the flood is gone.
fn out_of_descriptors(via: Via) {
    const LIMIT: u64 = 128;
    const SQUEEZED: u64 = 40;
    const SILENT: usize = 300;
    const HOLD: Duration = Duration::from_secs(2);
    let server = TestServer::start(ServerOptions {
        memory_limit: "64MiB".into(),
        extra: vec!["--one-sided".into(), "none".into()],
        descriptor_limit: Some(LIMIT),
        ..ServerOptions::default()
    });
    let log = server.log();
    assert!(
        log.contains(&format!("descriptor_limit={LIMIT}")),
        "the limit the server saw:\n{log}"
    );
    let client = served_client(&server, via);
    let before = client.stats().expect("stats");
    let socket = local_socket(&server);
    wait_stats(&client, "only the client's connections", |s| {
        open(s, Via::Tcp) == open(&before, Via::Tcp)
    });

    // Past the limit: the connections past the bound planned from it are closed at once,
    // and accept() never runs out of descriptors.
    let max_open: u64 = logged_value(&log, "max_connections=").expect("max_connections logged");
    let held = open(&before, Via::Tcp) + open(&before, Via::Unix);
    let silent = flood(&server, via, &socket, 2 * LIMIT as usize);
    assert_eq!(
        silent.len(),
        2 * LIMIT as usize,
        "every connect is accepted"
    );
    let expected = 2 * LIMIT - (max_open - held);
    let stats = wait_stats(&client, "refused past the bound", |s| {
        refused(s, via) >= expected
    });
    assert_eq!(refused(&stats, via), expected, "{stats:?}");
    assert_eq!(accept_failures_logged(&server), 0, "{}", server.log());
    put_get(&client, 2);
    drop(silent);
    wait_stats(&client, "the silent connections closed", |s| {
        open(s, via) == open(&before, via)
    });

    let pid = rustix::process::Pid::from_raw(server.pid() as i32).expect("pid");
    let squeezed = rustix::process::Rlimit {
        current: Some(SQUEEZED),
        maximum: Some(SQUEEZED),
    };
    rustix::process::prlimit(Some(pid), rustix::process::Resource::Nofile, squeezed)
        .expect("lower the server's descriptor limit");

    let cpu_before = cpu_seconds(server.pid());
    let started = Instant::now();
    let silent = flood(&server, via, &socket, SILENT);
    eprintln!(
        "{via:?}: {} of {SILENT} silent connections connected",
        silent.len()
    );
    // Out of descriptors, the server keeps serving the connections it has; the accept
    // loop fails meanwhile (at least once: more connect than descriptors are left).
    let deadline = Instant::now() + Duration::from_secs(10);
    while accept_failures_logged(&server) == 0 {
        assert!(
            Instant::now() < deadline,
            "no accept failure logged; log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Held for a while, for the CPU time and the log to tell a spinning or chatty loop.
    let mut seed = 10;
    while started.elapsed() < HOLD {
        put_get(&client, seed);
        seed += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(server.pid()) - cpu_before;
    let logged = accept_failures_logged(&server);
    eprintln!(
        "{via:?}: out of descriptors for {elapsed:.2} s: {cpu:.2} CPU s, {logged} failure lines"
    );
    // Failing accepts wait (10 ms doubling to 200 ms): the server does not spin on them.
    assert!(
        cpu < 0.5 * elapsed.max(1.0),
        "{cpu:.2} CPU s in {elapsed:.2} s out of descriptors"
    );
    // Logged once per 10 s, with the count.
    let bound = 1 + (elapsed / 10.0) as usize;
    assert!(
        logged <= bound,
        "{logged} accept failures logged in {elapsed:.1} s"
    );

    drop(silent);
    let stats = wait_stats(&client, "the silent connections closed", |s| {
        open(s, via) == open(&before, via)
    });
    eprintln!("{via:?}: {} refused", refused(&stats, via));
    put_get(&served_client(&server, via), 30);
}

#[test]
fn flood_of_tcp_connections_out_of_descriptors() {
    out_of_descriptors(Via::Tcp);
}

#[test]
fn flood_of_local_connections_out_of_descriptors() {
    out_of_descriptors(Via::Unix);
}
