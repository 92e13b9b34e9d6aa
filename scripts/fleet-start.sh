#!/usr/bin/env bash
# Fleet start time on N simulated nodes under a real Slurm (slurm-testbed.sh), next to
# Slurm's own step launch time. Prints a markdown table (medians and minima in ms).
#
#   scripts/fleet-start.sh [--nodes N] [--reps R]
#
# Inside one allocation (salloc -N N), R times each:
#   srun -N N true                      Slurm's own step launch (the reference)
#   dimstore-launch up + down           a fleet: one srun step, every server ready
#   dimstore-launch run -- true         start, run nothing, stop
# and, each as a job of its own (allocation included):
#   srun -N N true                      allocation + step
#   srun -N N --dimstore true           the same with the SPANK plugin (prolog starts servers)
# Needs root and a release build (cargo build --release); uses $CARGO_TARGET_DIR.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
nodes=4
reps=10
while [[ $# -gt 0 ]]; do
    case "$1" in
    --nodes) nodes=${2:?}; shift 2 ;;
    --reps) reps=${2:?}; shift 2 ;;
    -h | --help) sed -n '2,15s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "fleet-start: unknown argument $1" >&2; exit 2 ;;
    esac
done
for b in dimstore-launch dimstore-server libdimstore_spank.so; do
    [[ -e "$BIN/$b" ]] || { echo "fleet-start: $BIN/$b missing: cargo build --release" >&2; exit 1; }
done

# One simulated cluster per machine: wait for tests that use it (tests/tests/testbed).
exec 9>/tmp/dimstore-testbed.lock
flock 9
export DIMSTORE_SLURM_RUN=${DIMSTORE_SLURM_RUN:-/tmp/dimstore-fleet-start-slurm}
export DIMSTORE_SPANK_PLUGIN=$BIN/libdimstore_spank.so
work=$(mktemp -d /tmp/dimstore-fleet-start.XXXXXX)
export DIMSTORE_SPANK_ARGS="runtime_dir=$work/spank"
trap '"$HERE/slurm-testbed.sh" down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
"$HERE/slurm-testbed.sh" up "$nodes" >/dev/null

# The measuring loop runs in the hub; each line: "<what> <milliseconds>".
cat >"$work/inside.sh" <<'EOF'
set -eu
ms() { echo $(( $(date +%s%N) / 1000000 )); }
for _ in $(seq "$REPS"); do
    t=$(ms); srun -N "$NODES" --immediate=30 true; echo "step $(( $(ms) - t ))"
    t=$(ms); f=$("$BIN/dimstore-launch" up -q --run-dir "$WORK/fleet"); echo "up $(( $(ms) - t ))"
    "$BIN/dimstore-launch" down --fleet-file "$f" 2>/dev/null
    t=$(ms); "$BIN/dimstore-launch" run -q --run-dir "$WORK/fleet" -- true; echo "run $(( $(ms) - t ))"
done
EOF
cat >"$work/outside.sh" <<'EOF'
set -eu
ms() { echo $(( $(date +%s%N) / 1000000 )); }
for _ in $(seq "$REPS"); do
    t=$(ms); srun -N "$NODES" --immediate=30 -t 1 true; echo "job $(( $(ms) - t ))"
    t=$(ms); srun -N "$NODES" --immediate=30 -t 1 --dimstore true; echo "spank $(( $(ms) - t ))"
done
EOF
hub=("$HERE/slurm-testbed.sh" exec env BIN="$BIN" WORK="$work" NODES="$nodes" REPS="$reps")
{
    timeout 600 "${hub[@]}" salloc -N "$nodes" --immediate=30 -t 10 sh "$work/inside.sh"
    timeout 600 "${hub[@]}" sh "$work/outside.sh"
} 2>"$work/errors" >"$work/times" || { cat "$work/errors" >&2; exit 1; }

stats() { # what -> "median min"
    awk -v w="$1" '$1 == w { print $2 }' "$work/times" | sort -n |
        awk '{ a[NR] = $1 } END { if (NR) printf "%d %d", a[int((NR + 1) / 2)], a[1]; else printf "- -" }'
}
row() {
    read -r med min <<<"$(stats "$1")"
    printf '| %s | %s | %s |\n' "$2" "$med" "$min"
}
echo "Fleet start on $nodes simulated nodes (Slurm $("${hub[@]}" srun --version | awk '{print $2}'), $reps runs, $(nproc) cores)"
echo
echo "| what | median ms | min ms |"
echo "| --- | ---: | ---: |"
row step "\`srun -N$nodes true\` in an allocation (Slurm's step launch)"
row up "\`dimstore-launch up\` in an allocation (srun step + $nodes servers ready)"
row run "\`dimstore-launch run -- true\` (start, run, stop)"
row job "\`srun -N$nodes true\` as its own job (allocation + step)"
row spank "\`srun -N$nodes --dimstore true\` as its own job (prolog starts the servers)"
