#!/usr/bin/env bash
# Fake a PBS Pro allocation over the simulated nodes n1..nN of netns-cluster.sh, for testing
# allocation detection and PBS-style launches where no PBS server exists. Prints the
# environment to evaluate:
#   eval "$(scripts/fake-pbs-env.sh 2)"
#   scripts/netns-cluster.sh exec hub mpirun --hostfile "$PBS_NODEFILE" --map-by ppr:1:node \
#       --mca plm_rsh_agent "$PWD/scripts/netns-rsh" ./prog
set -euo pipefail

usage() {
    cat <<EOF2
usage: $(basename "$0") [--ppn K] [N]

Writes a PBS node file listing n1..nN (default: the nodes of the running netns cluster, else
2), each K times (one line per MPI rank, as PBS Pro does with mpiprocs=K; default 1), and
prints export statements for PBS_JOBID, PBS_NODEFILE, PBS_O_WORKDIR and friends.
Environment: DIMSTORE_PBS_RUN (default /tmp/dimstore-pbs) holds the node file;
PBS_JOBID (default 4242.fake-pbs-01).
EOF2
}

ppn=1
n=""
while [[ $# -gt 0 ]]; do
    case "$1" in
    -h | --help) usage; exit 0 ;;
    --ppn) ppn=${2:?--ppn needs a value}; shift 2 ;;
    *) n=$1; shift ;;
    esac
done
if [[ -z "$n" ]]; then
    n=$(cat /run/dimstore-netns/nodes 2>/dev/null || echo 2)
fi
[[ "$n" =~ ^[1-9][0-9]*$ && "$ppn" =~ ^[1-9][0-9]*$ ]] || { usage >&2; exit 2; }

run=${DIMSTORE_PBS_RUN:-/tmp/dimstore-pbs}
jobid=${PBS_JOBID:-4242.fake-pbs-01}
nodefile=$run/$jobid
mkdir -p "$run"
for ((i = 1; i <= n; i++)); do
    for ((k = 0; k < ppn; k++)); do echo "n$i"; done
done >"$nodefile"

printf 'export %s=%q\n' \
    PBS_JOBID "$jobid" \
    PBS_JOBNAME dimtest \
    PBS_QUEUE debug \
    PBS_ENVIRONMENT PBS_BATCH \
    PBS_O_HOST hub \
    PBS_O_WORKDIR "${PBS_O_WORKDIR:-$PWD}" \
    PBS_NODEFILE "$nodefile" \
    NCPUS "$ppn"
