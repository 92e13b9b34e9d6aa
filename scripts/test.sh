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
