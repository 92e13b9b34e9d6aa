#!/usr/bin/env bash
# A simulated cluster on one Linux machine (root): a hub namespace (login/controller node,
# 10.200.1.254 on bridge br0) and N node namespaces n1..nN (10.200.1.<i>/24 on eth0), each
# node joined to the hub's bridge by a veth pair.
#
# A network namespace alone does not make an honest node: shared memory (SysV, POSIX, CMA)
# would still cross "nodes". So each node also gets its own UTS (hostname n<i>), IPC, mount
# and PID namespaces and a private /dev/shm, kept alive by a small init process for as long
# as the cluster is up. Every `exec` into a node joins the same namespaces, so processes on
# one node see each other (same /dev/shm, same PIDs) and nothing of the other nodes.
# The hub has its own UTS (hostname hub) and mount namespace. Commands run there (`exec hub`)
# share the host's PIDs, so they can reach into the nodes (mpirun through netns-rsh); daemons
# started with `daemon hub` live in the hub's own PID namespace, are reaped by the hub's init
# and die with it. Inside the cluster, /etc/hosts resolves hub and n1..nN.
set -euo pipefail

PREFIX=dimstore
SUBNET=10.200.1
HUB_ADDR=$SUBNET.254
STATE=/run/$PREFIX-netns
MAX_NODES=253

usage() {
    cat <<EOF
usage: $(basename "$0") up N | down [N] | exec NODE CMD [ARG...] | daemon NODE CMD [ARG...]
       $(basename "$0") status | --help

  up N          create hub + nodes n1..nN (tears down an existing cluster first)
  down [N]      remove the cluster: kills every process left in its namespaces, deletes
                the namespaces (all $PREFIX-* ones; N is accepted and ignored); idempotent
  exec NODE CMD run CMD on NODE: a node number i or name n<i> (all of the node's namespaces,
                hostname n<i>, private /dev/shm), or "hub" (hostname hub, address $HUB_ADDR).
                The working directory and environment are kept. Exit status is CMD's.
  daemon NODE CMD
                like exec, for a CMD that daemonizes: the daemon belongs to NODE's init
                (reaped by it, killed with the node). Same as exec for n<i>; for the hub it
                also joins the hub's PID namespace (whose /proc still shows the host's PIDs).
  status        list the namespaces and their init processes

Namespaces: $PREFIX-hub, $PREFIX-n<i> (ip netns); addresses $SUBNET.<i>/24, hub $HUB_ADDR.
State (init pids, hosts file): $STATE. Needs root, iproute2 and util-linux (nsenter, unshare).
EOF
}

die() { echo "netns-cluster: $*" >&2; exit 1; }

need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (network namespaces, mounts)"
    local tool
    for tool in ip nsenter unshare setsid; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool not found (install iproute2, util-linux)"
    done
}

# alive PID: true if PID exists and is not a zombie.
alive() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

# wait_gone SECONDS PID...: wait (bounded) until none of the PIDs is alive; false on timeout.
wait_gone() {
    local limit=$(($1 * 10)) i pid left
    shift
    for ((i = 0; i < limit; i++)); do
        left=0
        for pid in "$@"; do alive "$pid" && left=1; done
        [[ $left -eq 0 ]] && return 0
        sleep 0.1
    done
    return 1
}

our_namespaces() {
    ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$PREFIX-(hub|n[0-9]+)$" || true
}

# Start the init process that holds a node's (or the hub's) namespaces; record its pid.
#   start_init NAME NETNS UNSHARE_FLAGS...
start_init() {
    local name=$1 netns=$2
    shift 2
    local launcher_pid=$STATE/$name.launcher.pid
    # The init: private /dev/shm (nodes), cluster /etc/hosts, hostname; then sleep and reap
    # orphans until told to stop.
    # shellcheck disable=SC2016 # expanded by the inner shell
    local script='
        set -e
        if [ "$2" = node ]; then mount -t tmpfs -o mode=1777 "$1-shm" /dev/shm; fi
        mount --bind "$3" /etc/hosts
        hostname "$1"
        trap "kill \$! 2>/dev/null; exit 0" TERM INT
        while :; do sleep 3600 & wait $! || true; done'
    local kind=hub
    [[ $name == hub ]] || kind=node
    rm -f "$launcher_pid"
    # setsid: the init must not die with the caller's session or process group.
    # shellcheck disable=SC2016 # expanded by the inner shell
    setsid sh -c 'echo $$ >"$1"; shift; exec "$@"' sh "$launcher_pid" \
        nsenter --net="/run/netns/$netns" unshare "$@" --propagation slave \
        sh -c "$script" "init-$name" "$name" "$kind" "$STATE/hosts" \
        </dev/null >>"$STATE/$name.log" 2>&1 &
    # Find the init: with --fork (PID namespace) it is the child of unshare, else unshare itself.
    local i lpid="" ipid=""
    for ((i = 0; i < 100; i++)); do
        [[ -z "$lpid" && -s "$launcher_pid" ]] && lpid=$(cat "$launcher_pid")
        if [[ -n "$lpid" ]]; then
            if [[ " $* " == *" --fork "* ]]; then
                ipid=$(awk '{print $1}' "/proc/$lpid/task/$lpid/children" 2>/dev/null || true)
            else
                ipid=$lpid
            fi
            # ready once the hostname is set inside
            if [[ -n "$ipid" ]] && [[ "$(nsenter -t "$ipid" --uts hostname 2>/dev/null)" == "$name" ]]; then
                echo "$ipid" >"$STATE/$name.pid"
                return 0
            fi
            alive "$lpid" || break
        fi
        sleep 0.05
    done
    die "init for $name did not come up; see $STATE/$name.log: $(tail -n 5 "$STATE/$name.log" 2>/dev/null)"
}

cmd_up() {
    local n=${1:-}
    if ! [[ "$n" =~ ^[0-9]+$ ]] || ((10#$n < 1 || 10#$n > MAX_NODES)); then
        die "up: N must be 1..$MAX_NODES (got '$n')"
    fi
    n=$((10#$n))
    need_root
    [[ -z "$(our_namespaces)" && ! -d $STATE ]] || cmd_down
    trap 'echo "netns-cluster: up failed; removing what it created" >&2; cmd_down >&2' EXIT
    mkdir -p "$STATE"
    {
        echo "127.0.0.1 localhost"
        echo "::1 localhost ip6-localhost ip6-loopback"
        echo "$HUB_ADDR hub"
        for ((i = 1; i <= n; i++)); do echo "$SUBNET.$i n$i"; done
    } >"$STATE/hosts"
    echo "$n" >"$STATE/nodes"

    ip netns add "$PREFIX-hub"
    ip -n "$PREFIX-hub" link set lo up
    ip -n "$PREFIX-hub" link add br0 type bridge
    ip -n "$PREFIX-hub" addr add "$HUB_ADDR/24" dev br0
    ip -n "$PREFIX-hub" link set br0 up
    local i
    for ((i = 1; i <= n; i++)); do
        ip netns add "$PREFIX-n$i"
        ip link add "h-n$i" netns "$PREFIX-hub" type veth peer name eth0 netns "$PREFIX-n$i"
        ip -n "$PREFIX-hub" link set "h-n$i" master br0 up
        ip -n "$PREFIX-n$i" addr add "$SUBNET.$i/24" dev eth0
        ip -n "$PREFIX-n$i" link set lo up
        ip -n "$PREFIX-n$i" link set eth0 up
    done
    # The hub's /proc stays the host's, so that nsenter into the nodes works from it.
    start_init hub "$PREFIX-hub" --uts --mount --pid --fork --kill-child
    for ((i = 1; i <= n; i++)); do
        start_init "n$i" "$PREFIX-n$i" --uts --ipc --mount --pid --fork --kill-child --mount-proc
    done
    trap - EXIT
    echo "netns-cluster: up: hub $HUB_ADDR, nodes n1..n$n ($SUBNET.1..$SUBNET.$n)"
}

cmd_down() {
    need_root
    local ns pids=() p f
    # Stop the inits (a node's init takes its whole PID namespace with it), then anything
    # else still inside our network namespaces (e.g. daemons started in the hub).
    if [[ -d $STATE ]]; then
        for f in "$STATE"/*.pid; do
            [[ -e "$f" ]] || continue
            p=$(cat "$f" 2>/dev/null || true)
            [[ -n "$p" ]] && alive "$p" && kill -TERM "$p" 2>/dev/null && pids+=("$p")
        done
        [[ ${#pids[@]} -eq 0 ]] || wait_gone 5 "${pids[@]}" || kill -KILL "${pids[@]}" 2>/dev/null || true
    fi
    for ns in $(our_namespaces); do
        mapfile -t pids < <(ip netns pids "$ns" 2>/dev/null || true)
        [[ ${#pids[@]} -eq 0 ]] && continue
        kill -TERM "${pids[@]}" 2>/dev/null || true
        if ! wait_gone 2 "${pids[@]}"; then
            kill -KILL "${pids[@]}" 2>/dev/null || true
            wait_gone 5 "${pids[@]}" || echo "netns-cluster: warning: processes left in $ns: ${pids[*]}" >&2
        fi
    done
    for ns in $(our_namespaces); do
        ip netns del "$ns" 2>/dev/null || echo "netns-cluster: warning: could not delete netns $ns" >&2
    done
    rm -rf "$STATE"
    echo "netns-cluster: down"
}

# Resolve NODE (i, n<i>, hub, or a cluster address) to its name: hub or n<i>.
node_name() {
    local esc=${SUBNET//./\\.}
    if [[ $1 == hub || $1 == "$HUB_ADDR" ]]; then
        echo hub
    elif [[ $1 =~ ^n?([0-9]+)$ || $1 =~ ^${esc}\.([0-9]+)$ ]]; then
        echo "n$((10#${BASH_REMATCH[1]}))"
    else
        return 1
    fi
}

# cmd_exec exec|daemon NODE CMD...
cmd_exec() {
    local how=$1
    shift
    [[ $# -ge 2 ]] || die "$how: usage: $how NODE CMD [ARG...]"
    local name pid
    name=$(node_name "$1" || true)
    [[ -n "$name" ]] || die "$how: bad node '$1' (want i, n<i>, hub)"
    shift
    [[ -s "$STATE/$name.pid" ]] || die "$how: node $name is not up (run: $(basename "$0") up N)"
    pid=$(cat "$STATE/$name.pid")
    alive "$pid" || die "$how: the init of $name (pid $pid) is gone; run: $(basename "$0") up N"
    [[ $(id -u) -eq 0 ]] || die "$how: must run as root"
    if [[ $name == hub && $how == exec ]]; then
        exec nsenter -t "$pid" --net --uts --mount --wd="$PWD" -- "$@"
    else
        exec nsenter -t "$pid" --net --uts --ipc --mount --pid --wd="$PWD" -- "$@"
    fi
}

cmd_status() {
    local ns name pid
    for ns in $(our_namespaces); do
        name=${ns#"$PREFIX-"}
        pid=$(cat "$STATE/$name.pid" 2>/dev/null || echo -)
        if [[ $pid != - ]] && alive "$pid"; then
            echo "$ns init=$pid $(ip -n "$ns" -br -4 addr show | awk '$1 != "lo" {print $3}' | tr '\n' ' ')"
        else
            echo "$ns init=missing"
        fi
    done
}

case "${1:-}" in
up) shift; cmd_up "$@" ;;
down) cmd_down ;;
exec | daemon) cmd_exec "$@" ;;
status) cmd_status ;;
-h | --help | help) usage ;;
*) usage >&2; exit 2 ;;
esac
