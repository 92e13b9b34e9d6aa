#!/usr/bin/env bash
# C ABI vs Rust client: dimstore_get_into (examples/c/get_bench.c, built with pkg-config
# against an installed release build) against Store::get plus a copy into the caller's
# buffer (bindings/c/src/bin/get_bench.rs), same sizes, in one local fleet; same node
# (mapped, DIMSTORE_LOCAL=map) and over TCP (DIMSTORE_LOCAL=off). The runs alternate C and
# Rust for ROUNDS rounds; each cell is the best median over the rounds. Prints a Markdown
# table with the C/Rust ratio of median latencies (1.00 = same; above 1 = C slower).
#
#   scripts/bench-c.sh [--iterations N] [--seconds S] [--rounds R] [--csv FILE]
set -euo pipefail
cd "$(dirname "$0")/.."

iterations=300
seconds=3
rounds=3
csv=
while [ $# -gt 0 ]; do
    case "$1" in
        --iterations) iterations=$2; shift ;;
        --seconds) seconds=$2; shift ;;
        --rounds) rounds=$2; shift ;;
        --csv) csv=$2; shift ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-c.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

work=$(mktemp -d "${TMPDIR:-/tmp}/dimstore-bench-c.XXXXXX")
trap 'rm -rf "$work"' EXIT

scripts/install.sh --profile release "$work/prefix" >&2
cargo build --release --locked -p dimstore-c --bin dimstore-c-get-bench >&2
cp target/release/dimstore-c-get-bench "$work/rust_get_bench"
cp examples/c/get_bench.c examples/c/Makefile "$work/"
PKG_CONFIG_PATH=$work/prefix/lib/pkgconfig make -C "$work" CC=gcc get_bench >&2
export PATH=$work/prefix/bin:$PATH DIMSTORE_SPAWN=never

cat >"$work/run.sh" <<EOF
set -e
for round in \$(seq $rounds); do
    for mode in map off; do
        DIMSTORE_LOCAL=\$mode "$work/get_bench" $iterations $seconds | sed "1d; s/^/\$mode,/"
        DIMSTORE_LOCAL=\$mode "$work/rust_get_bench" $iterations $seconds | sed "1d; s/^/\$mode,/"
    done
done
EOF
timeout 1800 dimstore-launch run --local 1 -- sh "$work/run.sh" >"$work/results.csv"
[ -z "$csv" ] || { echo "mode,api,size,iterations,median_us,mean_us,mib_per_s"; cat "$work/results.csv"; } >"$csv"

awk -F, '
    { k = $1 "," $2 "," $3; if (!(k in best) || $5 < best[k]) best[k] = $5; sizes[$3] = 1 }
    END {
        print "| path | size | C get_into µs | Rust get+copy µs | C / Rust | Rust get (no copy) µs | C MiB/s |"
        print "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
        n = split("map off", modes, " ")
        m = split("64 4096 65536 1048576 16777216", order, " ")
        for (i = 1; i <= n; i++) for (j = 1; j <= m; j++) {
            mode = modes[i]; size = order[j]
            c = best[mode ",c_get_into," size]; r = best[mode ",rust_get_copy," size]
            g = best[mode ",rust_get," size]
            if (c == "" || r == "") continue
            path = mode == "map" ? "same node (mapped)" : "TCP (loopback)"
            printf "| %s | %d | %.1f | %.1f | %.2f | %.1f | %.0f |\n", path, size, c, r, c / r, g, size / (c / 1e6) / 1048576
        }
    }' "$work/results.csv"
