#!/usr/bin/env bash
# A real Slurm (22.05) test cluster on one machine, as root: N simulated nodes n1..nN
# (netns-cluster.sh), slurmctld in the hub namespace, one `slurmd -N n<i>` inside each node,
# munged (started, in the hub, only if none is running). All state under one run directory.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CLUSTER=$HERE/netns-cluster.sh
TEMPLATES=$HERE/slurm
RUN=${DIMSTORE_SLURM_RUN:-/tmp/dimstore-slurm}
UP_TIMEOUT=${DIMSTORE_SLURM_UP_TIMEOUT:-30}
MARK=.dimstore-slurm-run

usage() {
    cat <<EOF
usage: $(basename "$0") up N | exec CMD [ARG...] | status | down | --help

  up N      start a Slurm cluster of N nodes (n1..nN, partition "debug"); tears down a
            previous one first. Waits (at most ${UP_TIMEOUT} s) until every node is idle, else
            prints the daemon logs, tears down and fails.
  exec CMD  run CMD with SLURM_CONF set, in the hub namespace (hostname hub), from where
            srun/sbatch/salloc/squeue/scontrol reach the cluster, e.g.
              $(basename "$0") exec srun -N2 --immediate=10 hostname
            (bound every job in tests: --immediate, --time, timeout).
  status    sinfo of the running cluster
  down      stop everything \`up\` started (slurmd's, slurmctld, munged if it started it,
            the namespaces) and delete the run directory; idempotent

Environment:
  DIMSTORE_SLURM_RUN         run directory (default /tmp/dimstore-slurm): slurm.conf, logs,
                             spool and per-node TmpFS; SLURM_CONF=\$DIMSTORE_SLURM_RUN/slurm.conf
  DIMSTORE_SPANK_PLUGIN      SPANK plugin to load (default: target/release/libdimstore_spank.so
                             of this repository, or of \$CARGO_TARGET_DIR; only if it exists)
  DIMSTORE_SPANK_ARGS        arguments for the plugin line in plugstack.conf
  DIMSTORE_SLURM_CPUS        CPUs per node (default: this machine's, nproc)
  DIMSTORE_SLURM_MEM_MB      RealMemory per node in MB (default: this machine's)
  DIMSTORE_SLURM_UP_TIMEOUT  seconds to wait for idle nodes (default 30)
Needs root, slurm-wlm, munge (scripts/install-deps.sh).
EOF
}

log() { printf 'slurm-testbed: %s\n' "$*"; }
die() { printf 'slurm-testbed: %s\n' "$*" >&2; exit 1; }

need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root"
    local tool
    for tool in slurmctld slurmd sinfo srun munge unmunge munged runuser; do
        command -v "$tool" >/dev/null 2>&1 \
            || die "$tool not found: install slurm-wlm and munge (scripts/install-deps.sh)"
    done
}

in_hub() { "$CLUSTER" exec hub env SLURM_CONF="$RUN/slurm.conf" "$@"; }

# ---- configuration ---------------------------------------------------------------------

# render TEMPLATE OUT NAME=VALUE...: replace each @NAME@ by VALUE.
render() {
    local text kv
    text=$(<"$1")
    for kv in "${@:3}"; do
        text=${text//"@${kv%%=*}@"/"${kv#*=}"}
    done
    printf '%s\n' "$text" >"$2"
}

plugin_line() {
    local plugin=${DIMSTORE_SPANK_PLUGIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/libdimstore_spank.so}
    if [[ -f "$plugin" ]]; then
        plugin=$(cd "$(dirname "$plugin")" && pwd)/$(basename "$plugin")
        echo "optional $plugin${DIMSTORE_SPANK_ARGS:+ $DIMSTORE_SPANK_ARGS}"
    else
        [[ -z "${DIMSTORE_SPANK_PLUGIN:-}" ]] \
            || echo "slurm-testbed: warning: DIMSTORE_SPANK_PLUGIN=$plugin does not exist" >&2
        echo "# (dimstore SPANK plugin not loaded: $plugin not built)"
    fi
}

write_configs() {
    local n=$1 i nodes="" cpus mem
    cpus=${DIMSTORE_SLURM_CPUS:-$(nproc)}
    mem=${DIMSTORE_SLURM_MEM_MB:-$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)}
    for ((i = 1; i <= n; i++)); do
        nodes+="NodeName=n$i NodeAddr=10.200.1.$i CPUs=$cpus RealMemory=$mem State=UNKNOWN"
        ((i < n)) && nodes+=$'\n'
    done
    render "$TEMPLATES/slurm.conf.in" "$RUN/slurm.conf" \
        "RUN=$RUN" "NODES=$nodes" "NODELIST=n[1-$n]"
    render "$TEMPLATES/cgroup.conf.in" "$RUN/cgroup.conf"
    render "$TEMPLATES/plugstack.conf.in" "$RUN/plugstack.conf" "PLUGINS=$(plugin_line)"
}

# ---- munge -----------------------------------------------------------------------------

start_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        log "munged already running; using it"
        return 0
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        install -d -o munge -g munge -m 0700 /etc/munge
        mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    # In the hub's PID namespace: reaped there, and it cannot outlive the cluster.
    "$CLUSTER" daemon hub runuser -u munge -- munged --force
    touch "$RUN/munged.ours"
    local i
    for ((i = 0; i < 50; i++)); do
        munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
    ((i < 50)) || die "munged did not come up: $(tail -n 5 /var/log/munge/munged.log 2>/dev/null)"
    log "started munged"
}

# Stop munged if `up` started it (it runs in the hub: gone anyway once the hub is).
stop_munge() {
    [[ -e "$RUN/munged.ours" ]] || return 0
    if timeout 15 "$CLUSTER" daemon hub munged --stop >/dev/null 2>&1; then
        log "stopped munged"
    fi
    rm -f "$RUN/munged.ours"
}

# ---- up / down -------------------------------------------------------------------------

show_logs() {
    local f
    echo "---- sinfo" >&2
    in_hub sinfo -N 2>&1 | sed 's/^/    /' >&2 || true
    for f in "$RUN"/slurmctld.log "$RUN"/slurmd-n*.log; do
        [[ -f "$f" ]] || continue
        echo "---- tail $f" >&2
        tail -n 15 "$f" | sed 's/^/    /' >&2
    done
}

cmd_up() {
    local n=${1:-}
    if ! [[ "$n" =~ ^[0-9]+$ ]] || ((10#$n < 1 || 10#$n > 253)); then
        die "up: N must be 1..253 (got '$n')"
    fi
    n=$((10#$n))
    need_root
    [[ "$RUN" == /* && "$RUN" != *[[:space:]\#=]* ]] \
        || die "up: DIMSTORE_SLURM_RUN must be an absolute path without spaces, '#' or '=' (got '$RUN')"
    local t0 i idle=0 deadline
    t0=$(date +%s.%N)
    cmd_down quiet
    mkdir -p "$RUN"
    touch "$RUN/$MARK"
    trap 'echo "slurm-testbed: up failed; logs:" >&2; show_logs; cmd_down keep-logs >&2' EXIT

    mkdir -p "$RUN/ctld"
    for ((i = 1; i <= n; i++)); do mkdir -p "$RUN/slurmd-n$i" "$RUN/tmp-n$i"; done
    write_configs "$n"
    "$CLUSTER" up "$n" >/dev/null
    start_munge
    "$CLUSTER" daemon hub env SLURM_CONF="$RUN/slurm.conf" slurmctld -i
    for ((i = 1; i <= n; i++)); do
        "$CLUSTER" exec "$i" env SLURM_CONF="$RUN/slurm.conf" slurmd -N "n$i"
    done
    deadline=$((SECONDS + UP_TIMEOUT))
    while ((SECONDS < deadline)); do
        idle=$(in_hub sinfo -h -N -o '%T' 2>/dev/null | grep -c '^idle$' || true)
        ((idle >= n)) && break
        sleep 0.1
    done
    if ((idle < n)); then
        echo "slurm-testbed: only $idle of $n nodes idle after $UP_TIMEOUT s" >&2
        exit 1 # the EXIT trap shows the logs and tears down
    fi
    trap - EXIT
    echo "$n" >"$RUN/nodes"
    echo "SLURM_CONF=$RUN/slurm.conf" >"$RUN/env"
    in_hub sinfo -N
    log "up: $n node(s) in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }') s; SLURM_CONF=$RUN/slurm.conf"
    log "try: $(basename "$0") exec srun -N$n --immediate=10 hostname"
}

# down [quiet|keep-logs]
cmd_down() {
    local mode=${1:-}
    need_root
    if [[ -d "$RUN" && ! -e "$RUN/$MARK" && -n "$(ls -A "$RUN")" ]]; then
        die "down: $RUN exists but was not created by this script; not touching it"
    fi
    # munged (if ours), slurmctld, the slurmd's and slurmstepd's, job steps and srun
    # clients all live in the cluster's namespaces and die with them.
    [[ -d "$RUN" ]] && stop_munge
    "$CLUSTER" down >/dev/null
    if [[ $mode == keep-logs ]]; then
        rm -rf "$RUN/ctld" "$RUN"/slurmd-n* "$RUN"/tmp-n* "$RUN/nodes" "$RUN/env"
        echo "slurm-testbed: stopped; logs kept in $RUN" >&2
    else
        rm -rf "$RUN"
        [[ $mode == quiet ]] || log "down"
    fi
}

cmd_exec() {
    [[ $# -ge 1 ]] || die "exec: usage: exec CMD [ARG...]"
    [[ -s "$RUN/nodes" && -f "$RUN/slurm.conf" ]] \
        || die "exec: no cluster is up in $RUN (run: $(basename "$0") up N)"
    exec "$CLUSTER" exec hub env SLURM_CONF="$RUN/slurm.conf" "$@"
}

case "${1:-}" in
up) shift; cmd_up "$@" ;;
down) cmd_down ;;
exec) shift; cmd_exec "$@" ;;
status) cmd_exec sinfo -N ;;
-h | --help | help) usage ;;
*) usage >&2; exit 2 ;;
esac
