//! `dimstore-launch` on a PBS-style allocation: a faked PBS Pro job (`scripts/fake-pbs-env.sh`:
//! `PBS_JOBID`, a `PBS_NODEFILE` with one line per rank) over two simulated nodes, the
//! servers started by Open MPI's `mpirun` through `scripts/netns-rsh`. Bounded; nothing may be
//! left running afterwards. Skipped loudly (failed under `CI=true`) without root or Open MPI.

mod testbed;

use std::time::Duration;

use testbed::{Kind, Testbed};

#[test]
fn launcher_runs_a_fleet_on_a_pbs_allocation_with_mpirun() {
    if testbed::skip(
        "launcher_runs_a_fleet_on_a_pbs_allocation_with_mpirun",
        &["mpirun"],
    ) {
        return;
    }
    let bed = Testbed::up(Kind::Nodes, 2);
    let rsh = testbed::script("netns-rsh");
    let pbs = testbed::script("fake-pbs-env.sh");
    let script = format!(
        r#"set -e
        export DIMSTORE_PBS_RUN="$S/pbs"
        eval "$({pbs} --ppn 2 2)"
        export DIMSTORE_LAUNCHER="mpirun --mca plm_rsh_agent {rsh}"
        "$B/dimstore-launch" run --run-dir "$S/fleet" -- sh -c '
            set -e
            "$B/dimstore-launch" status --json > "$S/status.json"
            echo from-n1 > "$S/in.txt"
            key=$({rsh} n1 "$B/dimstore" put "$S/in.txt")
            {rsh} n2 "echo \$(hostname) got \$($B/dimstore get $key)"
        '
        fleet=$("$B/dimstore-launch" up -q --run-dir "$S/up")
        "$B/dimstore-launch" status --fleet-file "$fleet" > "$S/table"
        "$B/dimstore-launch" down --fleet-file "$fleet""#,
        rsh = rsh.display(),
        pbs = pbs.display(),
    );
    let out = bed.sh(&script);
    assert!(out.ok().contains("n2 got from-n1"), "{out}");
    assert!(
        out.stderr
            .contains("pbs job 4242.fake-pbs-01: 2 nodes n[1-2]"),
        "{out}"
    );
    let status: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(bed.path().join("status.json")).expect("status"),
    )
    .expect("status JSON");
    assert_eq!(status["launcher"], "pbs");
    assert_eq!(status["up"], 2, "{status}");
    let addresses: Vec<&str> = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["address"].as_str())
        .collect();
    assert!(
        addresses.iter().all(|a| a.starts_with("10.200.1.")),
        "servers must advertise their node's address: {addresses:?}"
    );
    let table = std::fs::read_to_string(bed.path().join("table")).expect("table");
    assert_eq!(
        table.lines().filter(|l| l.contains(" up ")).count(),
        2,
        "{table}"
    );
    assert!(!bed.path().join("fleet").exists() && !bed.path().join("up").exists());
    assert_eq!(
        bed.wait_no_leftovers(Duration::from_secs(10)),
        Vec::<u32>::new()
    );
}
