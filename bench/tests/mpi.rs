//! Runs the documented command for real:
//! `dimstore-launch run --local 2 -- mpirun --oversubscribe -n 4 dimstore-bench mpi --quick
//! --csv out.csv --plot-dir plots/` and checks that every pattern, transport and size has a
//! CSV row, that a PNG exists per pattern, and that no server outlives the run. No timing
//! thresholds: this is a smoke test, not a benchmark.
#![cfg(feature = "mpi")]

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BENCH: &str = env!("CARGO_BIN_EXE_dimstore-bench");
/// The quick run takes seconds; this is a safety net against a hung rank.
const LIMIT: Duration = Duration::from_secs(240);

/// A binary of this build (built first when `cargo test -p dimstore-bench` alone did not).
fn sibling_binary(name: &str) -> PathBuf {
    let dir = Path::new(BENCH).parent().expect("bench binary directory");
    let path = dir.join(name);
    if !path.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "-p", "dimstore-launch", "-p", "dimstore-server"]);
        if dir.ends_with("release") {
            build.arg("--release");
        }
        assert!(
            build.status().expect("cargo runs").success(),
            "build failed"
        );
    }
    assert!(path.is_file(), "{} missing", path.display());
    path
}

#[test]
fn launcher_runs_the_mpi_benchmark_across_a_local_fleet() {
    let launcher = sibling_binary("dimstore-launch");
    sibling_binary("dimstore-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(&launcher)
        .args([
            "run",
            "--local",
            "2",
            "--",
            "mpirun",
            "--oversubscribe",
            "-n",
            "4",
        ])
        .arg(BENCH)
        .args(["mpi", "--quick", "--csv", "out.csv", "--plot-dir", "plots/"])
        .current_dir(dir.path())
        // Open MPI refuses root without these (CI runs as root); harmless otherwise.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env_remove("DIMSTORE_FLEET")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dimstore-launch starts (is it built?)");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > LIMIT {
            let group = rustix::process::Pid::from_child(&child);
            // Ctrl-C first: the launcher stops its servers; then make sure.
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::Int);
            std::thread::sleep(Duration::from_secs(3));
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::Kill);
            let _ = child.wait();
            panic!("the MPI benchmark did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read");
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read");
    assert!(
        status.success(),
        "{status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );

    let csv = std::fs::read_to_string(dir.path().join("out.csv")).expect("out.csv written");
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("pattern,transport,size_bytes,ranks,nodes,iterations,median_us,p99_us,mb_per_s")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    for pattern in ["pairwise", "all-to-all", "fan-out"] {
        for transport in ["dimstore", "mpi"] {
            let of: Vec<&Vec<&str>> = rows
                .iter()
                .filter(|r| r[0] == pattern && r[1] == transport)
                .collect();
            assert_eq!(
                of.len(),
                4,
                "{pattern}/{transport}: one row per quick size\n{csv}"
            );
            for r in of {
                assert_eq!((r[3], r[4]), ("4", "2"), "4 ranks on 2 nodes: {r:?}");
                let median: f64 = r[6].parse().expect("median");
                let rate: f64 = r[8].parse().expect("rate");
                assert!(median > 0.0 && rate > 0.0, "{r:?}");
            }
        }
        let png = std::fs::read(dir.path().join("plots").join(format!("{pattern}.png")))
            .unwrap_or_else(|e| panic!("{pattern}.png: {e}\n{stdout}"));
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000);
        assert!(
            stdout.contains(&format!("### {pattern} (4 ranks, 2 nodes)")),
            "{stdout}"
        );
    }

    // Nothing outlives the run: the servers the launcher reported are gone.
    let pids: Vec<u32> = stderr
        .lines()
        .filter_map(|l| l.split("(pid ").nth(1)?.trim_end_matches(')').parse().ok())
        .collect();
    assert_eq!(pids.len(), 2, "two servers started:\n{stderr}");
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        assert!(
            status.is_empty() || status.contains("State:\tZ"),
            "server {pid} still running"
        );
    }
}
