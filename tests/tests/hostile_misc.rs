//! Small hostile-input items of issue 16 (point 11): CLI output to a closed pipe, a put of a
//! missing file, and the spawned server's log format.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use dimstore::fleet::{Fleet, FleetNode, FLEET_FORMAT};
use dimstore_tests::{
    binary, dimstore_cli, pattern, processes_mentioning, KillOnDrop, ServerOptions, TestServer,
};
use rustix::pipe::{pipe_with, PipeFlags};

/// Runs `command` with its stdout on a pipe whose read end is already closed (`cmd | true`
/// where `true` has exited): every write gets `EPIPE`. Bounded by 30 s.
fn run_into_closed_pipe(command: &mut Command) -> Output {
    let (read_end, write_end) = pipe_with(PipeFlags::CLOEXEC).expect("pipe");
    drop(read_end);
    let mut child = command
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("{command:?} did not finish within 30 s writing to a closed pipe");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = Vec::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_end(&mut stderr)
        .expect("read stderr");
    Output {
        status,
        stdout: Vec::new(),
        stderr,
    }
}

#[test]
fn cli_output_into_a_closed_pipe_ends_quietly() {
    let server = TestServer::start(ServerOptions::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.bin");
    std::fs::write(&input, pattern(1 << 20, 3)).expect("write");
    let key = {
        let out = dimstore_cli(dir.path())
            .env("DIMSTORE_SERVER", server.address())
            .args(["put", input.to_str().expect("utf8")])
            .output()
            .expect("put");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout)
            .expect("utf8")
            .trim()
            .to_string()
    };
    let fleet_path = dir.path().join("fleet.json");
    Fleet {
        format: FLEET_FORMAT,
        token: None,
        launcher: "local".into(),
        nodes: vec![FleetNode {
            name: "n0".into(),
            address: server.address().into(),
            pid: server.pid(),
            log: None,
        }],
    }
    .write(&fleet_path)
    .expect("fleet file");

    let dimstore_commands: [&[&str]; 6] = [
        &["stat"],
        &["stat", "--json"],
        &["put", input.to_str().expect("utf8")],
        &["get", &key],
        &["exists", &key],
        &["new-key"],
    ];
    for args in dimstore_commands {
        let mut cmd = dimstore_cli(dir.path());
        cmd.env("DIMSTORE_SERVER", server.address()).args(args);
        let out = run_into_closed_pipe(&mut cmd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(0),
            "dimstore {args:?} | true: {}\n{stderr}",
            out.status
        );
        assert!(
            stderr.is_empty(),
            "dimstore {args:?} | true printed:\n{stderr}"
        );
    }
    for args in [&["status"][..], &["status", "--json"]] {
        let mut cmd = Command::new(binary("dimstore-launch"));
        cmd.args(args)
            .arg("--fleet-file")
            .arg(&fleet_path)
            .env_remove("DIMSTORE_FLEET")
            .stdin(Stdio::null());
        let out = run_into_closed_pipe(&mut cmd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(0),
            "dimstore-launch {args:?} | true: {}\n{stderr}",
            out.status
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // The server served all of that and is still up.
    assert!(server.client("tcp").stats().is_ok());
}

/// The environment of a `dimstore` that may spawn its node's server (node `node`) under
/// `runtime`.
fn spawning(runtime: &Path, node: &str) -> Command {
    let mut cmd = dimstore_cli(runtime);
    cmd.env("DIMSTORE_NODE", node)
        .env("DIMSTORE_LISTEN", "127.0.0.1:0")
        .env("DIMSTORE_MEMORY_LIMIT", "64MiB")
        .env("DIMSTORE_SERVER_BIN", binary("dimstore-server"));
    cmd
}

/// Everything under `dir`, recursively (paths relative to it).
fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            found.push(
                path.strip_prefix(dir)
                    .unwrap_or(&path)
                    .display()
                    .to_string(),
            );
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    found
}

#[test]
fn put_of_a_missing_file_fails_before_any_server_is_spawned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = dir.path().join("runtime");
    std::fs::create_dir(&runtime).expect("runtime dir");
    let missing = dir.path().join("no-such-file.bin");
    let needle = runtime.to_string_lossy().to_string();
    let out = spawning(&runtime, "missing-file")
        .args(["put", missing.to_str().expect("utf8")])
        .output()
        .expect("run");
    // Should the old behaviour come back, the spawned server must not outlive the test.
    let _guard = KillOnDrop(processes_mentioning(&["dimstore-server", &needle]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no-such-file.bin") && stderr.contains("No such file"),
        "unclear error: {stderr}"
    );
    assert_eq!(
        files_under(&runtime),
        Vec::<String>::new(),
        "the failed put touched the runtime directory"
    );
    assert_eq!(
        processes_mentioning(&["dimstore-server", &needle]),
        Vec::<u32>::new(),
        "a server was spawned for a put that could not read its file"
    );
}

#[test]
fn a_spawned_servers_log_file_has_no_colour_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = dir.path().join("runtime");
    let needle = runtime.to_string_lossy().to_string();
    let out = spawning(&runtime, "plain-log")
        .args(["stat", "--json"])
        .output()
        .expect("run");
    let _guard = KillOnDrop(processes_mentioning(&["dimstore-server", &needle]));
    assert!(
        out.status.success(),
        "stat did not spawn a server: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log_path = runtime.join("plain-log").join("server.log");
    let log = std::fs::read_to_string(&log_path).expect("the spawned server's log");
    assert!(
        log.contains("dimstore-server ready"),
        "the log does not say the server started:\n{log}"
    );
    assert!(
        !log.contains('\x1b'),
        "ANSI escape codes in {}:\n{}",
        log_path.display(),
        log.escape_debug()
    );
    let stopped = spawning(&runtime, "plain-log")
        .arg("shutdown")
        .output()
        .expect("shutdown");
    assert!(stopped.status.success(), "{stopped:?}");
}
