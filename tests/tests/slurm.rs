//! dimstore on a real Slurm 22.05 across two simulated nodes (`scripts/slurm-testbed.sh`):
//! the SPANK plugin (`srun --dimstore`) and `dimstore-launch` on a Slurm allocation. Every
//! job is bounded (`--immediate`, `-t`, and a deadline on each command); nothing may be left
//! running afterwards. Skipped loudly (failed under `CI=true`) without root or Slurm.

mod testbed;

use std::collections::BTreeSet;
use std::time::Duration;

use testbed::{json_lines, Kind, Testbed};

const SLURM_TOOLS: [&str; 7] = [
    "slurmctld",
    "slurmd",
    "srun",
    "salloc",
    "munged",
    "munge",
    "sbatch",
];

/// How long the job epilog may take to stop a job's servers.
const EPILOG: Duration = Duration::from_secs(20);

#[test]
fn spank_plugin_keeps_one_server_per_node_for_the_job() {
    if testbed::skip(
        "spank_plugin_keeps_one_server_per_node_for_the_job",
        &SLURM_TOOLS,
    ) {
        return;
    }
    let bed = Testbed::up(Kind::Slurm, 2);

    let help = bed.sh("srun --help").ok().to_owned();
    assert!(
        help.contains("--dimstore"),
        "option missing from srun --help:\n{help}"
    );

    // The documented check: one report per node, each from the node's own server.
    // Each node's report goes to a file of its own: srun forwards tasks' output in chunks of
    // about 1 KiB, so two long JSON lines printed at once can interleave on its stdout.
    let out = bed.sh(r#"srun -N2 --immediate=10 -t 1 --dimstore \
               sh -c 'dimstore stat --json > "$S/report-$SLURM_NODEID.json"' &&
           cat "$S"/report-*.json"#);
    let reports = json_lines(out.ok());
    assert_eq!(reports.len(), 2, "{out}");
    let nodes: BTreeSet<&str> = reports.iter().filter_map(|r| r["node"].as_str()).collect();
    assert_eq!(nodes, BTreeSet::from(["n1", "n2"]), "{out}");
    assert!(
        reports
            .iter()
            .all(|r| r["pid"].as_u64().is_some_and(|p| p > 0)),
        "{out}"
    );
    assert!(
        reports.iter().all(|r| r["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("10.200.1."))),
        "servers must advertise their node's address: {out}"
    );
    assert!(
        bed.wait_no_leftovers(EPILOG).is_empty(),
        "servers outlived their job"
    );

    // One job, several steps: the same servers throughout; a task on n1 puts, a task of the
    // same step on n2 gets the object by key; the servers are gone after the job.
    let job = r#"set -e
        srun -N2 --immediate=10 sh -c 'dimstore stat --json > "$S/first-$SLURM_NODEID.json"'
        cat "$S"/first-*.json > "$S/first.json"
        srun -N2 -n2 --immediate=10 sh -c '
            if [ "$SLURM_PROCID" = 0 ]; then
                hostname > "$S/in.txt"
                dimstore put "$S/in.txt" > "$S/key.tmp" && mv "$S/key.tmp" "$S/key"
            else
                i=0; while [ ! -s "$S/key" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
                echo "$(hostname) got $(dimstore get "$(cat "$S/key")")"
            fi'
        srun -N2 --immediate=10 sh -c 'dimstore stat --json > "$S/last-$SLURM_NODEID.json"'
        cat "$S"/last-*.json > "$S/last.json"
        env | grep '^DIMSTORE_' | sort > "$S/batch-env""#;
    std::fs::write(bed.path().join("job.sh"), format!("#!/bin/sh\n{job}\n")).expect("job script");
    let out = bed.sh(
        r#"sbatch --wait -N2 -t 1 --dimstore=memory=256MiB -o "$S/job.out" -e "$S/job.err" \
               --export=ALL,S="$S" "$S/job.sh"; status=$?; cat "$S/job.out" "$S/job.err"; exit $status"#,
    );
    out.ok();
    let job_out = std::fs::read_to_string(bed.path().join("job.out")).unwrap_or_default();
    assert!(
        job_out.contains("n2 got n1"),
        "cross-node get failed:\n{out}"
    );
    let first = json_lines(&std::fs::read_to_string(bed.path().join("first.json")).expect("first"));
    let last = json_lines(&std::fs::read_to_string(bed.path().join("last.json")).expect("last"));
    let ids = |reports: &[serde_json::Value]| -> BTreeSet<(String, u64)> {
        reports
            .iter()
            .map(|r| {
                (
                    r["node"].as_str().unwrap_or("").to_owned(),
                    r["server_id"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    };
    assert_eq!(ids(&first).len(), 2, "{first:?}");
    assert_eq!(ids(&first), ids(&last), "servers must last the whole job");
    assert!(
        last.iter()
            .all(|r| r["memory_limit"].as_u64() == Some(256 << 20)),
        "--dimstore=memory=... reaches the servers: {last:?}"
    );
    assert!(
        last.iter().any(|r| r["objects"].as_u64() == Some(1)),
        "the object stays on its owner: {last:?}"
    );
    let env = std::fs::read_to_string(bed.path().join("batch-env")).expect("batch env");
    for var in [
        "DIMSTORE_SERVER=10.200.1.",
        "DIMSTORE_TOKEN=",
        "DIMSTORE_RUNTIME_DIR=",
        // The job's nodes: their servers (and no others) may receive the token.
        "DIMSTORE_TRUSTED_HOSTS=",
    ] {
        assert!(env.contains(var), "{var} not exported:\n{env}");
    }
    assert_eq!(
        bed.wait_no_leftovers(EPILOG),
        Vec::<u32>::new(),
        "servers outlived their job"
    );
    let left: Vec<_> = std::fs::read_dir(bed.spank_dir())
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "job directories left behind: {left:?}");
}

#[test]
fn launcher_runs_a_fleet_on_a_slurm_allocation() {
    if testbed::skip("launcher_runs_a_fleet_on_a_slurm_allocation", &SLURM_TOOLS) {
        return;
    }
    let bed = Testbed::up(Kind::Slurm, 2);

    // run: a server per node through one srun step; the command's tasks on n1 and n2
    // exchange an object by key; everything stops with the command.
    let out = bed.sh(
        r#"salloc -N2 --immediate=10 -t 1 "$B/dimstore-launch" run --run-dir "$S/fleet" -- sh -c '
            set -e
            "$B/dimstore-launch" status --json > "$S/status.json"
            squeue -s -h -o "%j" > "$S/steps"
            key=$(srun -N1 -w n1 --immediate=10 sh -c "hostname | \"$B/dimstore\" put -")
            srun -N1 -w n2 --immediate=10 sh -c "echo \$(hostname) got \$(\"$B/dimstore\" get $key)"
        '"#,
    );
    assert!(out.ok().contains("n2 got n1"), "{out}");
    assert!(out.stderr.contains("2 of 2 servers ready"), "{out}");
    let status: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(bed.path().join("status.json")).expect("status"),
    )
    .expect("status JSON");
    assert_eq!(status["launcher"], "slurm");
    assert_eq!(status["up"], 2, "{status}");
    for node in status["nodes"].as_array().expect("nodes") {
        let stats = &node["stats"];
        assert!(
            stats["binding"].is_string() && stats["transports"].is_array(),
            "{node}"
        );
    }
    let steps = std::fs::read_to_string(bed.path().join("steps")).expect("steps");
    assert!(
        steps.contains("dimstore"),
        "the fleet runs as a job step:\n{steps}"
    );
    assert!(
        !bed.path().join("fleet").exists(),
        "run directory left behind"
    );
    assert_eq!(
        bed.wait_no_leftovers(Duration::from_secs(10)),
        Vec::<u32>::new()
    );

    // up / status / down in one allocation: down ends the step too.
    let out = bed.sh(r#"salloc -N2 --immediate=10 -t 1 sh -c '
            set -e
            fleet=$("$B/dimstore-launch" up -q --run-dir "$S/up")
            "$B/dimstore-launch" status --fleet-file "$fleet"
            "$B/dimstore-launch" down --fleet-file "$fleet"
            squeue -s -h -o "%j" | grep -c dimstore || true
        '"#);
    let text = out.ok();
    assert!(text.contains("n1 ") && text.contains("n2 "), "{out}");
    assert!(
        text.trim_end().ends_with('0'),
        "the fleet's step outlived down: {out}"
    );
    assert!(!bed.path().join("up").exists(), "run directory left behind");

    // A node that fails is named, with its log; nothing is left running.
    let out = bed.sh(
        r#"salloc -N2 --immediate=10 -t 1 "$B/dimstore-launch" run --run-dir "$S/bad" \
               --server-arg=--no-such-flag -- true"#,
    );
    assert!(!out.status.success(), "{out}");
    assert!(
        out.stderr.contains("n1: server exited") || out.stderr.contains("n2: server exited"),
        "failing node not named: {out}"
    );
    assert!(
        out.stderr.contains("--no-such-flag"),
        "log tail missing: {out}"
    );
    assert_eq!(
        bed.wait_no_leftovers(Duration::from_secs(10)),
        Vec::<u32>::new()
    );
}
