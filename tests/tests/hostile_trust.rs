//! Who gets the token (issue 16, points 6 to 8): never an owner outside the fleet that a key
//! names; spawned servers require a per-user token and listen on loopback unless told
//! otherwise, then advertise a routable address; a runtime directory another user planted is
//! refused before anything is sent. Real processes; the fake owners are TCP listeners in the
//! test that record every byte they receive.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dimstore::fleet::{Fleet, FleetNode, FLEET_FORMAT};
use dimstore::{
    ClientConfig, ConnectError, GetError, Key, LocalMode, RequestError, SpawnPolicy, Store,
    TransportChoice,
};
use dimstore_proto::ReadyFile;
use dimstore_tests::{
    binary, processes_mentioning, skip_or_fail, stdout, ServerOptions, TestServer,
};

const FLEET_TOKEN: &str = "fleet-token-5f1c2a9e-never-outside";

/// A `dimstore` command with a clean `DIMSTORE_*` environment and a short timeout.
fn dimstore(runtime_dir: &Path) -> Command {
    let mut cmd = Command::new(binary("dimstore"));
    for (k, _) in std::env::vars() {
        if k.starts_with("DIMSTORE_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("DIMSTORE_RUNTIME_DIR", runtime_dir)
        .env("DIMSTORE_TIMEOUT", "5s")
        .env("DIMSTORE_SERVER_BIN", binary("dimstore-server"))
        .env("DIMSTORE_MEMORY_LIMIT", "64MiB")
        .env("DIMSTORE_SPAWN_IDLE_TIMEOUT", "2m")
        .stdin(Stdio::null());
    cmd
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether this test can run: it needs root (and says so loudly when skipped; under
/// `CI=true` a skip is a failure).
fn needs_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    skip_or_fail(test, "needs root");
    false
}

/// A TCP listener posing as a server: records every byte any client sends it, then closes
/// each connection after half a second of silence. Stops (bounded) on drop.
struct Recorder {
    address: SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Recorder {
    fn start(ip: &str) -> Recorder {
        let listener = TcpListener::bind((ip, 0)).expect("bind the recorder");
        listener.set_nonblocking(true).expect("nonblocking");
        let address = listener.local_addr().expect("address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let Ok((mut conn, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
                    let until = Instant::now() + Duration::from_secs(5);
                    let mut buf = [0u8; 4096];
                    while Instant::now() < until {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => seen.lock().expect("lock").extend_from_slice(&buf[..n]),
                        }
                    }
                }
            })
        };
        Recorder {
            address,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Kills the servers a test spawned (found by their runtime directory) however it ends.
struct KillSpawned(String);

impl Drop for KillSpawned {
    fn drop(&mut self) {
        for pid in processes_mentioning(&["dimstore-server", &self.0]) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::Kill);
            }
        }
    }
}

/// Client configuration over TCP only, never spawning.
fn tcp_config(token: Option<&str>) -> ClientConfig {
    ClientConfig {
        timeout: Duration::from_secs(5),
        token: token.map(str::to_string),
        spawn: SpawnPolicy::Never,
        local: LocalMode::Off,
        transport: TransportChoice::Tcp,
        ..ClientConfig::default()
    }
}

fn fleet_file(dir: &Path, servers: &[&TestServer]) -> std::path::PathBuf {
    let path = dir.join("fleet.json");
    Fleet {
        format: FLEET_FORMAT,
        token: Some(FLEET_TOKEN.into()),
        launcher: "local".into(),
        nodes: servers
            .iter()
            .enumerate()
            .map(|(i, s)| FleetNode {
                name: format!("node{i}"),
                address: s.address().into(),
                pid: s.pid(),
                log: None,
            })
            .collect(),
    }
    .write(&path)
    .expect("fleet file");
    path
}

#[test]
fn a_key_naming_a_host_outside_the_fleet_never_receives_the_token() {
    let server = TestServer::start(ServerOptions {
        token: Some(FLEET_TOKEN.into()),
        ..ServerOptions::default()
    });
    let store = Store::connect(server.address(), tcp_config(Some(FLEET_TOKEN))).expect("connect");
    let real = store.put(b"hello").expect("put");
    // The same key, but naming a listener of the test on another loopback address.
    let foreign = Recorder::start("127.0.0.2");
    let key = Key {
        owner: foreign.address.to_string(),
        ..real
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = fleet_file(dir.path(), &[&server]);
    let runs: [(&str, Vec<(&str, &str)>); 3] = [
        (
            "DIMSTORE_SERVER + DIMSTORE_TOKEN",
            vec![
                ("DIMSTORE_SERVER", server.address()),
                ("DIMSTORE_TOKEN", FLEET_TOKEN),
            ],
        ),
        (
            "DIMSTORE_FLEET",
            vec![("DIMSTORE_FLEET", fleet.to_str().expect("utf8"))],
        ),
        (
            "DIMSTORE_TOKEN alone",
            vec![("DIMSTORE_TOKEN", FLEET_TOKEN)],
        ),
    ];
    for (how, env) in &runs {
        let out = dimstore(&dir.path().join("run"))
            .envs(env.iter().copied())
            .args(["get", &key.to_string()])
            .output()
            .expect("run dimstore get");
        assert_eq!(out.status.code(), Some(2), "{how}: the get cannot succeed");
    }
    // Through the library as well.
    let err = store.get(&key).expect_err("no object there");
    assert!(err.to_string().contains(&key.owner), "{err}");
    let seen = foreign.bytes();
    assert!(
        contains(&seen, b"DIMS"),
        "the foreign owner was greeted (the check can see a Hello): {} bytes",
        seen.len()
    );
    assert!(
        !contains(&seen, FLEET_TOKEN.as_bytes()),
        "the fleet token reached a host outside the fleet"
    );
}

#[test]
fn an_owner_outside_the_fleet_that_requires_a_token_is_a_typed_error() {
    let options = |node: &str| ServerOptions {
        node: node.into(),
        token: Some(FLEET_TOKEN.into()),
        ..ServerOptions::default()
    };
    let (home, other) = (
        TestServer::start(options("n0")),
        TestServer::start(options("n1")),
    );
    let key = Store::connect(other.address(), tcp_config(Some(FLEET_TOKEN)))
        .expect("connect")
        .put(b"elsewhere")
        .expect("put");
    // A client of `home` alone does not send the token to `other`, which refuses.
    let store = Store::connect(home.address(), tcp_config(Some(FLEET_TOKEN))).expect("connect");
    let err = store.get(&key).expect_err("refused");
    assert!(
        matches!(&err, GetError::Request(RequestError::Untrusted { owner, .. }) if *owner == other.address()),
        "{err}"
    );
    assert!(
        err.to_string().contains("not in this client's fleet"),
        "{err}"
    );
    // Named as a member (DIMSTORE_TRUSTED, or the fleet file), it gets the token.
    let trusting = Store::connect(
        home.address(),
        ClientConfig {
            trusted: vec![other.address().to_string()],
            ..tcp_config(Some(FLEET_TOKEN))
        },
    )
    .expect("connect");
    assert_eq!(&trusting.get(&key).expect("trusted")[..], b"elsewhere");
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |env: &[(&str, &str)]| {
        dimstore(&dir.path().join("run"))
            .env("DIMSTORE_SERVER", home.address())
            .env("DIMSTORE_TOKEN", FLEET_TOKEN)
            .envs(env.iter().copied())
            .args(["get", &key.to_string()])
            .output()
            .expect("run dimstore get")
    };
    let refused = run(&[]);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(other.address()) && stderr.contains("not in this client's fleet"),
        "{stderr}"
    );
    assert_eq!(
        stdout(&run(&[("DIMSTORE_TRUSTED", other.address())])),
        "elsewhere"
    );
    let fleet = fleet_file(dir.path(), &[&home, &other]);
    let got = dimstore(&dir.path().join("run"))
        .env("DIMSTORE_FLEET", &fleet)
        .args(["get", &key.to_string()])
        .output()
        .expect("run dimstore get");
    assert_eq!(stdout(&got), "elsewhere");
}

/// Local addresses of TCP sockets listening on `port` (from `/proc/net/tcp` and `tcp6`).
fn listeners_on(port: u16) -> Vec<String> {
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else {
                continue;
            };
            let Some((ip, hex_port)) = local.split_once(':') else {
                continue;
            };
            if *state == "0A" && u16::from_str_radix(hex_port, 16) == Ok(port) {
                found.push(ip.to_string());
            }
        }
    }
    found
}

#[test]
fn a_spawned_server_requires_a_private_per_user_token_and_listens_on_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = dir.path().join("runtime");
    let _guard = KillSpawned(runtime.display().to_string());
    let input = dir.path().join("in.txt");
    std::fs::write(&input, b"spawned").expect("write");
    let key = stdout(
        &dimstore(&runtime)
            .env("DIMSTORE_NODE", "spawner")
            .args(["put", input.to_str().expect("utf8")])
            .output()
            .expect("run dimstore put"),
    );
    let ready: ReadyFile = serde_json::from_slice(
        &std::fs::read(runtime.join("spawner").join("server.json")).expect("ready file"),
    )
    .expect("json");

    // The token: one private file, on the server's environment, not its command line.
    let token_path = runtime.join(dimstore::runtime_dir::TOKEN_FILE);
    let meta = std::fs::metadata(&token_path).expect("token file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), rustix::process::geteuid().as_raw());
    let token = std::fs::read_to_string(&token_path).expect("token");
    assert!(token.len() >= 32, "{token:?}");
    let runtime_meta = std::fs::metadata(&runtime).expect("runtime dir");
    assert_eq!(runtime_meta.permissions().mode() & 0o777, 0o700);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", ready.pid)).expect("cmdline");
    assert!(
        !contains(&cmdline, token.as_bytes()),
        "token on the command line"
    );
    let environ = std::fs::read(format!("/proc/{}/environ", ready.pid)).expect("environ");
    assert!(contains(
        &environ,
        format!("DIMSTORE_TOKEN={token}").as_bytes()
    ));

    // Loopback only: the ready file and the kernel's socket table agree.
    let address: SocketAddr = ready.address.parse().expect("socket address");
    assert!(address.ip().is_loopback(), "{}", ready.address);
    let listening = listeners_on(address.port());
    assert_eq!(
        listening,
        vec!["0100007F".to_string()],
        "the spawned server must listen on 127.0.0.1 only"
    );

    // Without the token the server refuses; with it, it serves.
    let refused = Store::connect(&ready.address, tcp_config(None)).expect_err("no token");
    assert!(
        matches!(
            refused,
            ConnectError::Request(RequestError::Unauthorized { .. })
        ),
        "{refused}"
    );
    let store = Store::connect(&ready.address, tcp_config(Some(&token))).expect("with token");
    assert_eq!(
        &store.get(&key.parse().expect("key")).expect("get")[..],
        b"spawned"
    );
    // Later clients re-read the token: by key, and through the runtime directory.
    let by_key = dimstore(&runtime)
        .env("DIMSTORE_NODE", "spawner")
        .args(["get", &key])
        .output()
        .expect("run dimstore get");
    assert_eq!(stdout(&by_key), "spawned");
    let stat: serde_json::Value = serde_json::from_str(&stdout(
        &dimstore(&runtime)
            .env("DIMSTORE_NODE", "spawner")
            .args(["stat", "--json"])
            .output()
            .expect("stat"),
    ))
    .expect("json");
    assert_eq!(stat["pid"], ready.pid);
    assert_eq!(std::fs::read_to_string(&token_path).expect("token"), token);
    stdout(
        &dimstore(&runtime)
            .env("DIMSTORE_NODE", "spawner")
            .arg("shutdown")
            .output()
            .expect("shutdown"),
    );
}

/// In a network namespace of its own (loopback plus a veth pair, one end 10.77.0.1, host name
/// `localhost`, which resolves to loopback), `dimstore put` spawns a server told to serve
/// other nodes: with `DIMSTORE_LISTEN=0.0.0.0:0` and with the interface's name. Both must
/// advertise the interface's address, never 127.0.0.1.
#[test]
fn a_spawned_server_serving_other_nodes_advertises_a_routable_address() {
    if !needs_root("a_spawned_server_serving_other_nodes_advertises_a_routable_address") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let _guard = KillSpawned(dir.path().display().to_string());
    let input = dir.path().join("in.txt");
    std::fs::write(&input, b"routable").expect("write");
    let script = r#"set -e
        hostname localhost
        ip link set lo up
        ip link add v0 type veth peer name v1
        ip addr add 10.77.0.1/24 dev v0
        ip link set v1 up
        ip link set v0 up
        for listen in 0.0.0.0:0 v0; do
            export DIMSTORE_RUNTIME_DIR="$D/run-$listen" DIMSTORE_LISTEN="$listen"
            key=$("$B" put "$D/in.txt")
            echo "$listen $key $("$B" get "$key")"
            "$B" shutdown >&2
        done"#;
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "--uts", "sh", "-c", script])
        .env("D", dir.path())
        .env("B", binary("dimstore"))
        .env("DIMSTORE_NODE", "routable")
        .env("DIMSTORE_TIMEOUT", "5s")
        .env("DIMSTORE_SERVER_BIN", binary("dimstore-server"))
        .env("DIMSTORE_MEMORY_LIMIT", "64MiB")
        .env_remove("DIMSTORE_SERVER")
        .env_remove("DIMSTORE_FLEET")
        .env_remove("DIMSTORE_TOKEN")
        .stdin(Stdio::null());
    let lines = stdout(&cmd.output().expect("run unshare"));
    let results: Vec<(&str, Key, &str)> = lines
        .lines()
        .map(|l| {
            let mut parts = l.splitn(3, ' ');
            let listen = parts.next().expect("listen");
            let key = parts
                .next()
                .and_then(|k| k.parse().ok())
                .unwrap_or_else(|| panic!("no key in {l:?}"));
            (listen, key, parts.next().unwrap_or(""))
        })
        .collect();
    assert_eq!(results.len(), 2, "{lines}");
    for (listen, key, got) in &results {
        let owner: SocketAddr = key.owner.parse().expect("socket address");
        assert_eq!(
            owner.ip().to_string(),
            "10.77.0.1",
            "DIMSTORE_LISTEN={listen}: the key must name the routable address"
        );
        assert_eq!(*got, "routable", "DIMSTORE_LISTEN={listen}");
    }
}

/// A server told to serve other nodes on a host with no routable address (a network
/// namespace with loopback only, host name `localhost`) refuses to start, saying why,
/// rather than advertising 127.0.0.1 in keys other nodes cannot use.
#[test]
fn serving_other_nodes_without_a_routable_address_is_a_clear_error() {
    if !needs_root("serving_other_nodes_without_a_routable_address_is_a_clear_error") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let _guard = KillSpawned(dir.path().display().to_string());
    let out = Command::new("unshare")
        .args(["--net", "--uts", "sh", "-c"])
        .arg(
            r#"hostname localhost && ip link set lo up &&
               exec timeout 20 "$S" --listen 0.0.0.0:0 --one-sided none --node isolated \
                   --ready-file "$D/ready.json" --runtime-dir "$D/run""#,
        )
        .env("S", binary("dimstore-server"))
        .env("D", dir.path())
        .env_remove("DIMSTORE_ADVERTISE")
        .env_remove("DIMSTORE_LISTEN")
        .stdin(Stdio::null())
        .output()
        .expect("run unshare");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "must fail at start: {stderr}");
    assert!(
        stderr.contains("non-loopback address to advertise"),
        "{stderr}"
    );
    assert!(stderr.contains("--advertise"), "{stderr}");
    assert!(!dir.path().join("ready.json").exists(), "never ready");
}

/// Another user pre-creates the runtime directory (world-writable, or its own) with a ready
/// file pointing at a listener of the test: the client refuses it, naming the path and what
/// is wrong, and the listener receives nothing, least of all the token.
#[test]
fn a_planted_runtime_dir_is_refused_and_never_sees_the_token() {
    if !needs_root("a_planted_runtime_dir_is_refused_and_never_sees_the_token") {
        return;
    }
    const NOBODY: u32 = 65534;
    let fake = Recorder::start("127.0.0.1");
    let ready = ReadyFile {
        address: fake.address.to_string(),
        pid: std::process::id(),
        node: "planted".into(),
        server_id: 1,
        transports: vec!["tcp".into()],
        version: "0".into(),
        metrics: None,
    };
    let chown = |path: &Path, uid: u32| {
        std::os::unix::fs::chown(path, Some(uid), Some(uid)).expect("chown");
    };
    let chmod = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    let base = tempfile::tempdir().expect("tempdir");
    let input = base.path().join("in.txt");
    std::fs::write(&input, b"secret object").expect("write");
    // (what is planted, the uid that owns the directories, their mode, the ready file's owner
    // and mode, what the error must say)
    let cases: [(&str, u32, u32, u32, u32, String); 4] = [
        (
            "dir of another user, 0777",
            NOBODY,
            0o777,
            NOBODY,
            0o666,
            format!("owned by uid {NOBODY}"),
        ),
        (
            "dir of another user, 0700",
            NOBODY,
            0o700,
            NOBODY,
            0o600,
            format!("owned by uid {NOBODY}"),
        ),
        ("own dir, 0777", 0, 0o777, 0, 0o644, "mode 0777".into()),
        (
            "own dir, ready file of another user",
            0,
            0o700,
            NOBODY,
            0o644,
            format!("owned by uid {NOBODY}"),
        ),
    ];
    for (i, (what, dir_owner, dir_mode, file_owner, file_mode, says)) in cases.iter().enumerate() {
        let runtime = base.path().join(format!("planted-{i}"));
        let node_dir = runtime.join("planted");
        std::fs::create_dir_all(&node_dir).expect("mkdir");
        let ready_path = node_dir.join("server.json");
        std::fs::write(&ready_path, serde_json::to_vec(&ready).expect("json")).expect("write");
        chmod(&ready_path, *file_mode);
        chown(&ready_path, *file_owner);
        for dir in [&node_dir, &runtime] {
            chmod(dir, *dir_mode);
            chown(dir, *dir_owner);
        }
        let _guard = KillSpawned(runtime.display().to_string());
        let out = dimstore(&runtime)
            .env("DIMSTORE_NODE", "planted")
            .env("DIMSTORE_TOKEN", FLEET_TOKEN)
            .args(["put", input.to_str().expect("utf8")])
            .output()
            .expect("run dimstore put");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{what}: must be refused\n{stderr}"
        );
        assert!(
            stderr.contains("runtime directory")
                && stderr.contains(&runtime.display().to_string())
                && stderr.contains(says.as_str()),
            "{what}: the error must name the path and what is wrong: {stderr}"
        );
        assert!(
            processes_mentioning(&["dimstore-server", &runtime.display().to_string()]).is_empty(),
            "{what}: nothing may be spawned into a planted directory"
        );
    }
    let seen = fake.bytes();
    assert!(
        !contains(&seen, FLEET_TOKEN.as_bytes()),
        "the token reached the planted server"
    );
    assert!(!contains(&seen, b"secret object"), "the object reached it");
    assert!(
        seen.is_empty(),
        "the planted server was talked to: {seen:?}"
    );
}
