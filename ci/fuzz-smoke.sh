#!/usr/bin/env bash
# Short cargo-fuzz run of every fuzz target in fuzz/, for CI, on a STABLE toolchain.
#
# cargo-fuzz passes nightly-only flags (-Zsanitizer=address, -Cpasses=sancov-module ...);
# RUSTC_BOOTSTRAP=1 makes stable rustc/cargo accept them. The stable toolchain ships the
# sanitizer runtimes (librustc-stable_rt.asan.a), so AddressSanitizer works; when a toolchain
# lacks the ASan runtime this script falls back to --sanitizer none (FUZZ_SANITIZER overrides).
#
# Exits 0 when no target crashed, 1 when one did (artifact path and reproduce hint printed),
# 2 on a usage error, 3 when installing or building failed or a run overran its time bound.
set -euo pipefail

DEFAULT_SECONDS=15
CARGO_FUZZ_VERSION="${CARGO_FUZZ_VERSION:-0.13.2}"
INSTALL_TIMEOUT="${FUZZ_INSTALL_TIMEOUT:-1200}"
BUILD_TIMEOUT="${FUZZ_BUILD_TIMEOUT:-1800}"
# Slack on top of -max_total_time before a run is killed (the run loads the corpus first).
RUN_GRACE=60

usage() {
    cat <<EOF
usage: $(basename "$0") [SECONDS] [--help]

Builds each cargo-fuzz target in fuzz/ and fuzzes it for SECONDS (default $DEFAULT_SECONDS),
starting from the checked-in seeds fuzz/seeds/<target>/ plus the working corpus
fuzz/corpus/<target>/ (gitignored; cache it in CI to carry coverage between runs).
Prints one summary line per target; exits non-zero if any target crashed, with the crash
input's path under fuzz/artifacts/<target>/ and how to reproduce it.

Installs cargo-fuzz $CARGO_FUZZ_VERSION with \`cargo install --locked\` if \`cargo fuzz\` is
missing. Works on a stable toolchain (RUSTC_BOOTSTRAP=1 is set for the fuzz builds).

Environment:
  FUZZ_SANITIZER        address (default when the toolchain has the ASan runtime) or none
  FUZZ_TARGETS          space-separated targets to run (default: all, from \`cargo fuzz list\`)
  FUZZ_TARGET_DIR       cargo target dir for the fuzz builds (default: fuzz/target)
  FUZZ_INSTALL_TIMEOUT  seconds allowed for installing cargo-fuzz (default $INSTALL_TIMEOUT)
  FUZZ_BUILD_TIMEOUT    seconds allowed per target build (default $BUILD_TIMEOUT)
  CARGO_FUZZ_VERSION    cargo-fuzz version to install when missing (default $CARGO_FUZZ_VERSION)

Exit status: 0 no crash, 1 a target crashed, 2 usage error, 3 install/build failed or timed out.
EOF
}

seconds="$DEFAULT_SECONDS"
seen_seconds=0
for arg in "$@"; do
    case "$arg" in
    -h | --help) usage; exit 0 ;;
    *[!0-9]* | '')
        echo "fuzz-smoke: unknown argument: $arg" >&2
        usage >&2
        exit 2
        ;;
    *)
        if ((seen_seconds)); then
            echo "fuzz-smoke: SECONDS given twice" >&2
            exit 2
        fi
        seconds=$((10#$arg))
        seen_seconds=1
        ;;
    esac
done
if ((seconds < 1)); then
    echo "fuzz-smoke: SECONDS must be at least 1" >&2
    exit 2
fi

log() { printf 'fuzz-smoke: %s\n' "$*"; }
die() {
    printf 'fuzz-smoke: error: %s\n' "$*" >&2
    exit 3
}

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
[[ -f fuzz/Cargo.toml ]] || die "no fuzz/Cargo.toml under $repo"
command -v cargo >/dev/null 2>&1 || die "cargo not found on PATH"
command -v timeout >/dev/null 2>&1 || die "timeout (coreutils) not found on PATH"

# --- cargo-fuzz ----------------------------------------------------------------------------
if cargo fuzz --version >/dev/null 2>&1; then
    log "using $(cargo fuzz --version) (already installed)"
else
    log "cargo-fuzz not found: running cargo install cargo-fuzz --version $CARGO_FUZZ_VERSION --locked"
    start=$SECONDS
    timeout --kill-after=30 "$INSTALL_TIMEOUT" \
        cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked ||
        die "installing cargo-fuzz failed (or took over ${INSTALL_TIMEOUT}s)"
    log "installed $(cargo fuzz --version) in $((SECONDS - start))s"
fi

# --- toolchain and sanitizer ---------------------------------------------------------------
export RUSTC_BOOTSTRAP=1
host="$(rustc -vV | sed -n 's/^host: //p')"
sysroot="$(rustc --print sysroot)"
if [[ -z "${FUZZ_SANITIZER:-}" ]]; then
    if compgen -G "$sysroot/lib/rustlib/$host/lib/librustc-*_rt.asan.a" >/dev/null; then
        FUZZ_SANITIZER=address
    else
        FUZZ_SANITIZER=none
        log "no AddressSanitizer runtime in $sysroot: fuzzing without a sanitizer"
    fi
fi
case "$FUZZ_SANITIZER" in
address | none) ;;
*) echo "fuzz-smoke: FUZZ_SANITIZER must be address or none, not $FUZZ_SANITIZER" >&2; exit 2 ;;
esac
target_dir="${FUZZ_TARGET_DIR:-$repo/fuzz/target}"
log "$(rustc -V) on $host, RUSTC_BOOTSTRAP=1, sanitizer=$FUZZ_SANITIZER, target dir $target_dir"

if [[ -n "${FUZZ_TARGETS:-}" ]]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
else
    mapfile -t targets < <(cargo fuzz list)
fi
((${#targets[@]} > 0)) || die "no fuzz targets found"
log "targets: ${targets[*]}; ${seconds}s each"

fuzz_opts=(--sanitizer "$FUZZ_SANITIZER" --target-dir "$target_dir")
logdir="$target_dir/fuzz-smoke"
mkdir -p "$logdir"

# The interesting part of a failed run's log: from the panic or sanitizer report on (the
# input's bytes, which cargo-fuzz prints in full, are cut short), else its last lines.
excerpt() {
    local start
    start="$(grep -n -m 1 -E 'panicked at|ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)' "$1" |
        cut -d: -f1 || true)"
    if [[ -n "$start" ]]; then
        sed -n "${start},$((start + 45))p" "$1"
    else
        grep -Ev '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse|RELOAD)' "$1" | tail -n 40
    fi | cut -c 1-300
}

# --- build and run -------------------------------------------------------------------------
summary=()
failed=0
crashed=0
for target in "${targets[@]}"; do
    [[ -f "fuzz/fuzz_targets/$target.rs" ]] || die "unknown fuzz target: $target"

    log "building $target"
    start=$SECONDS
    timeout --kill-after=30 "$BUILD_TIMEOUT" cargo fuzz build "${fuzz_opts[@]}" "$target" ||
        die "building $target failed (or took over ${BUILD_TIMEOUT}s)"
    build_s=$((SECONDS - start))

    corpus="fuzz/corpus/$target"
    seeds="fuzz/seeds/$target"
    mkdir -p "$corpus" "fuzz/artifacts/$target"
    dirs=("$corpus")
    [[ -d "$seeds" ]] && dirs+=("$seeds")
    runlog="$logdir/$target.log"

    log "fuzzing $target for ${seconds}s (log: $runlog)"
    start=$SECONDS
    status=0
    # The first corpus directory receives new inputs; the seeds are only read.
    timeout --kill-after=30 $((seconds + RUN_GRACE)) \
        cargo fuzz run "${fuzz_opts[@]}" "$target" "${dirs[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
        >"$runlog" 2>&1 || status=$?
    run_s=$((SECONDS - start))

    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$runlog" | tail -n 1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$runlog" | tail -n 1)"
    cov="$(grep -Eo 'cov: [0-9]+' "$runlog" | tail -n 1 | cut -d' ' -f2 || true)"
    corp="$(find "$corpus" -type f | wc -l)"
    artifact="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$runlog" | tail -n 1)"

    if ((status == 0)); then
        result=ok
    elif [[ -n "$artifact" ]]; then
        # crash-*, timeout-*, oom-*, leak-*: libFuzzer names the input by what it found.
        kind="$(basename "$artifact")"
        result="FOUND:${kind%%-*}"
        crashed=1
    elif ((status == 124 || status == 137)); then
        result=TIMEOUT
        failed=1
    else
        result="FAILED(exit $status)"
        failed=1
    fi
    line="$(printf '%-14s %-8s %12s execs %8s exec/s  cov %-5s corpus %-5s build %ss run %ss' \
        "$target" "$result" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$corp" "$build_s" "$run_s")"
    summary+=("$line")

    if [[ "$result" != ok ]]; then
        echo "----- $runlog (excerpt) -----" >&2
        excerpt "$runlog" >&2
        echo "-----" >&2
    fi
    if [[ "$result" == FOUND:* ]]; then
        rel="${artifact#"$repo"/}"
        opts="--sanitizer $FUZZ_SANITIZER${FUZZ_TARGET_DIR:+ --target-dir $FUZZ_TARGET_DIR}"
        log "$target failed (${result#FOUND:}); input saved to $rel"
        log "reproduce:  RUSTC_BOOTSTRAP=1 cargo fuzz run $opts $target $rel"
        log "minimize:   RUSTC_BOOTSTRAP=1 cargo fuzz tmin $opts $target $rel"
    elif [[ "$result" == TIMEOUT ]]; then
        log "$target did not finish within $((seconds + RUN_GRACE))s and was killed"
    fi
done

echo "fuzz-smoke: summary (${seconds}s per target, sanitizer=$FUZZ_SANITIZER)"
for line in "${summary[@]}"; do
    echo "  $line"
done
if ((crashed)); then
    exit 1
fi
if ((failed)); then
    exit 3
fi
log "no crashes"
