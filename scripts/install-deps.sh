#!/usr/bin/env bash
# Install the Debian 12 packages dimstore needs to build and test, and check the Rust toolchain.
#
# Idempotent: packages are checked with dpkg-query first; apt-get (and `apt-get update`) only
# runs when something is missing, so a second run is fast and needs no network.
set -euo pipefail

PACKAGES=(
    # RDMA transports (software providers are enough for tests) and their tools
    libucx-dev ucx-utils libfabric-dev libfabric-bin
    # placement
    libhwloc-dev hwloc libudev-dev
    # text in the benchmark plots (PNG)
    fonts-dejavu-core
    # MPI launchers and benchmarks
    libopenmpi-dev openmpi-bin
    # bindgen
    libclang-dev pkg-config
    # the C ABI's tests: C/C++/Fortran compilers (MPI wrappers come with libopenmpi-dev), make and
    # cmake (the examples' builds), valgrind
    gcc g++ gfortran make cmake valgrind
    # Slurm test cluster and the SPANK plugin headers
    slurm-wlm libslurm-dev munge
    # peers for benchmarks
    redis-server iperf3
    # the Python package (bindings/python) and the tests' Python tools (OpenMetrics parser):
    # venvs for scripts/test-python.sh and /opt/dimstore-venv, headers for pyo3
    python3 python3-venv python3-dev
    # used by the scripts in this directory
    bc iproute2 util-linux procps
)

MIN_RUST=1.85

usage() {
    cat <<EOF
usage: $(basename "$0") [--check] [--help]

Installs the Debian 12 packages dimstore needs (only the missing ones):
  ${PACKAGES[*]}
then checks that a Rust toolchain (>= $MIN_RUST) is on PATH; cargo-nextest is optional.

  --check   only report what is missing; install nothing (exit 1 if anything is missing)
  --help    this text

Needs root for apt-get: runs it through sudo when not root and sudo exists.
EOF
}

check_only=0
for arg in "$@"; do
    case "$arg" in
    --check) check_only=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "install-deps: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done

log() { printf 'install-deps: %s\n' "$*"; }

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: dpkg-query/apt-get not found; this script supports Debian 12 (bookworm) only." >&2
    echo "install-deps: install the equivalents of: ${PACKAGES[*]}" >&2
    exit 1
fi

if [[ -r /etc/os-release ]]; then
    # shellcheck disable=SC1091
    . /etc/os-release
    if [[ "${ID:-}" != debian || "${VERSION_ID:-}" != 12 ]]; then
        log "warning: tested on Debian 12; this is ${PRETTY_NAME:-unknown}; continuing"
    fi
fi

is_installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" == installed ]]
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    is_installed "$pkg" || missing+=("$pkg")
done

status=0
if [[ ${#missing[@]} -eq 0 ]]; then
    log "all ${#PACKAGES[@]} Debian packages already installed; nothing to do"
elif [[ $check_only -eq 1 ]]; then
    log "missing Debian packages: ${missing[*]}"
    status=1
else
    if [[ $(id -u) -eq 0 ]]; then
        as_root=(env DEBIAN_FRONTEND=noninteractive)
    elif command -v sudo >/dev/null 2>&1; then
        as_root=(sudo env DEBIAN_FRONTEND=noninteractive)
    else
        echo "install-deps: missing packages: ${missing[*]}" >&2
        echo "install-deps: need root to install them (not root, and sudo is not available)." >&2
        echo "install-deps: run this script as root, or install them yourself." >&2
        exit 1
    fi
    log "installing ${#missing[@]} missing package(s): ${missing[*]}"
    "${as_root[@]}" apt-get update -q
    "${as_root[@]}" apt-get install -y -q "${missing[@]}"
    still=()
    for pkg in "${missing[@]}"; do
        is_installed "$pkg" || still+=("$pkg")
    done
    if [[ ${#still[@]} -gt 0 ]]; then
        echo "install-deps: still not installed after apt-get: ${still[*]}" >&2
        exit 1
    fi
    log "installed: ${missing[*]}"
fi

# Python tools the tests use (a real OpenMetrics parser for /metrics), pinned, in a venv
# the tests find at $DIMSTORE_PY_VENV (default /opt/dimstore-venv).
PY_VENV=${DIMSTORE_PY_VENV:-/opt/dimstore-venv}
PROMETHEUS_CLIENT_VERSION=0.21.1
PY_PACKAGES=("prometheus-client==$PROMETHEUS_CLIENT_VERSION")
if "$PY_VENV/bin/python3" -c "import importlib.metadata as m, prometheus_client.openmetrics.parser
assert m.version('prometheus-client') == '$PROMETHEUS_CLIENT_VERSION'" 2>/dev/null; then
    log "python venv $PY_VENV: ${PY_PACKAGES[*]} already installed"
elif [[ $check_only -eq 1 ]]; then
    log "missing python venv $PY_VENV with ${PY_PACKAGES[*]}"
    status=1
elif ! python3 -m venv --help >/dev/null 2>&1; then
    echo "install-deps: python3 -m venv is unavailable (install python3-venv)" >&2
    status=1
else
    log "installing ${PY_PACKAGES[*]} into $PY_VENV"
    python3 -m venv "$PY_VENV"
    "$PY_VENV/bin/pip" install -q "${PY_PACKAGES[@]}"
fi

# Rust toolchain: checked, never downloaded by this script.
version_ge() { # version_ge A B: A >= B (dotted numeric versions)
    [[ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" == "$2" ]]
}

if command -v cargo >/dev/null 2>&1 && command -v rustc >/dev/null 2>&1; then
    rust_version=$(rustc --version | awk '{print $2}')
    if version_ge "${rust_version%%-*}" "$MIN_RUST"; then
        log "rust toolchain: $(rustc --version) ($(command -v cargo))"
    else
        log "rust toolchain too old: rustc $rust_version, need >= $MIN_RUST (run: rustup update stable)"
        status=1
    fi
else
    cat >&2 <<EOF
install-deps: no Rust toolchain found (cargo/rustc not on PATH).
install-deps: dimstore needs Rust >= $MIN_RUST. Install it with rustup (https://rustup.rs):
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
    . "\$HOME/.cargo/env"
install-deps: (or, on a machine that already has one, put ~/.cargo/bin on PATH)
EOF
    status=1
fi

# Python for bindings/python: python3 >= 3.11 with venv; scripts/test-python.sh installs the
# pinned build and test tools (maturin, pytest, proxystore, ...) into its own venv.
MIN_PYTHON=3.11
if command -v python3 >/dev/null 2>&1 && python3 -c 'import venv' 2>/dev/null; then
    py_version=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if version_ge "$py_version" "$MIN_PYTHON"; then
        log "python: $(python3 --version) ($(command -v python3))"
    else
        log "python3 too old: $py_version, need >= $MIN_PYTHON for bindings/python"
        status=1
    fi
else
    log "python3 with the venv module not found (needed for bindings/python)"
    status=1
fi

if command -v cargo >/dev/null 2>&1; then
    if cargo nextest --version >/dev/null 2>&1; then
        log "cargo-nextest: $(cargo nextest --version 2>/dev/null | head -n1)"
    else
        log "cargo-nextest: not installed (optional; 'cargo install cargo-nextest --locked')"
    fi
fi

exit "$status"
