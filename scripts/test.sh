#!/usr/bin/env bash
# The whole dimstore test suite, as CI runs it: dependencies, format, lints, build, every
# test (unit, property, integration with real server processes), doc tests, a fuzz smoke run,
# then the Python package's tests (scripts/test-python.sh).
#
#   scripts/test.sh            # everything
#   scripts/test.sh --quick    # skip the fuzz smoke run
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1 ;;
        -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "test.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
    esac
done

step() { printf '\n==> %s\n' "$*"; }

step "dependencies"
scripts/install-deps.sh

step "format"
cargo fmt --all --check

step "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build (binaries the integration tests run, and the SPANK plugin the Slurm tests load)"
cargo build --workspace --bins --examples --locked
cargo build -p dimstore-spank --locked

step "no default features (no UCX, no libfabric): client, server and C ABI build and link neither; their unit tests and the tcp/local suite pass"
cargo build --locked --no-default-features -p dimstore -p dimstore-server -p dimstore-c
if cargo tree --locked -p dimstore -p dimstore-c --no-default-features -e normal,build --prefix none | grep -E '^(ucx|libfabric)-sys '; then
    echo "the client built without default features still depends on a fabric library" >&2
    exit 1
fi
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --locked --no-default-features --no-fail-fast \
        -p dimstore -p dimstore-server -p dimstore-proto -p dimstore-tests \
        -E 'package(dimstore) | package(dimstore-server) | package(dimstore-proto) | binary_id(dimstore-tests::tcp) | binary_id(dimstore-tests::local)'
else
    cargo test --locked --no-default-features --no-fail-fast -p dimstore -p dimstore-server -p dimstore-proto
    cargo test --locked --no-default-features --no-fail-fast -p dimstore-tests --test tcp --test local
fi
# The binaries the tests below run, with every backend again.
cargo build --workspace --bins --locked

if [ "$quick" = 0 ] && [ -x ci/fuzz-smoke.sh ]; then
    step "fuzz smoke run"
    ci/fuzz-smoke.sh 15
fi

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
    # The -sys crates' docs are C header comments (doctest = false; --doc would force them).
    cargo test --workspace --doc --locked --exclude ucx-sys --exclude libfabric-sys
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi

step "C, C++ and Fortran: install, header, examples against local fleets (MPI), valgrind"
scripts/test-c.sh

step "python package and ProxyStore connector (venv in target/py-venv)"
scripts/test-python.sh

step "done"
