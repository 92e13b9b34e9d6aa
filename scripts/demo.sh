#!/usr/bin/env bash
# The main job: a local 4-node dimstore fleet running a producer/consumer workflow.
#
# Installs what is missing, builds in release, starts 4 servers on this machine (4 simulated
# nodes) with dimstore-launch, runs the workflow (every node puts objects of 1 KiB .. 64 MiB on
# its own server; the next node fetches them by key and verifies every byte), prints a results
# table against raw TCP on the same machine, and tears the fleet down.
#
#   scripts/demo.sh [NODES]      (default 4)
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
nodes=${1:-4}

scripts/install-deps.sh
echo "==> building (release)"
cargo build --release --locked -p dimstore-server -p dimstore-launch -p dimstore --bins --examples
echo "==> starting a $nodes-node fleet and running the workflow"
exec target/release/dimstore-launch run --local "$nodes" --memory-limit 2GiB -- \
    target/release/examples/workflow
