#!/usr/bin/env bash
# The Python package's tests (scripts/test.sh runs this after the Rust suite):
#   1. a venv (target/py-venv) with the pinned tools, and `pip install ./bindings/python`
#      (maturin; a dev-profile build, reusing target/debug);
#   2. ProxyStore's own suites, unmodified from the proxystore sdist, against DimstoreConnector
#      (our fixtures: bindings/python/tests/proxystore_plugin), in a local two-node fleet;
#   3. our tests (bindings/python/tests), in another local two-node fleet.
# Under CI=true a skipped test fails the run.
#
#   scripts/test-python.sh            # everything
#   scripts/test-python.sh -k future  # extra arguments go to both pytest runs
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

PROXYSTORE=proxystore==1.1.0
PACKAGES=(maturin==1.16.0 pytest==9.2.0 pytest-timeout==2.4.0 numpy==2.4.6 "$PROXYSTORE")
VENV=target/py-venv
SDIST_DIR=target/py-peer
PEER_SUITES=(
    tests/connectors/connector_test.py
    tests/store/store_basics_test.py
    tests/store/store_proxy_test.py
    tests/store/lifetimes_test.py
)

step() { printf '\n==> %s\n' "$*"; }

step "python: venv $VENV with ${PACKAGES[*]}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
export PATH="$root/$VENV/bin:$PATH"
pip install --quiet --disable-pip-version-check "${PACKAGES[@]}"

step "python: the dimstore binaries the fleets run"
cargo build --locked -p dimstore-server -p dimstore -p dimstore-launch --bins
export DIMSTORE_BIN_DIR="$root/target/debug"
export DIMSTORE_SERVER_BIN="$DIMSTORE_BIN_DIR/dimstore-server"

step "python: pip install ./bindings/python"
pip install --quiet --disable-pip-version-check --no-build-isolation \
    --config-settings=build-args="--profile dev --locked" ./bindings/python

step "python: ProxyStore's own suites ($PROXYSTORE sdist) against DimstoreConnector"
peer="$SDIST_DIR/proxystore-${PROXYSTORE#proxystore==}"
if [ ! -d "$peer/tests" ]; then
    mkdir -p "$SDIST_DIR"
    pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
        -d "$SDIST_DIR" "$PROXYSTORE"
    tar -xzf "$SDIST_DIR/proxystore-${PROXYSTORE#proxystore==}.tar.gz" -C "$SDIST_DIR"
fi

# Fails under CI=true if pytest's summary line ($1: its log) reports skipped tests.
no_skips() {
    local summary
    summary=$(grep -E '^=+ .*(passed|failed|error).* in [0-9.]+s' "$1" | tail -1)
    if [ "${CI:-}" = true ] && grep -q skipped <<<"$summary"; then
        echo "test-python: tests were skipped under CI=true: $summary" >&2
        return 1
    fi
}

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
(
    cd "$peer"
    # Their tests/conftest.py (fixtures for their own connectors, and services those need)
    # is replaced by our plugin: --noconftest, -p dimstore_proxystore_plugin.
    PYTHONPATH="$root/bindings/python/tests/proxystore_plugin" \
        "$DIMSTORE_BIN_DIR/dimstore-launch" run --local 2 -- \
        python -m pytest -c "$root/bindings/python/tests/proxystore_plugin/pytest.ini" \
        --rootdir . --noconftest -p dimstore_proxystore_plugin -p no:cacheprovider \
        -rs "${PEER_SUITES[@]}" "$@"
) 2>&1 | tee "$logs/peer.log"
no_skips "$logs/peer.log"

step "python: bindings/python/tests"
"$DIMSTORE_BIN_DIR/dimstore-launch" run --local 2 -- \
    python -m pytest -p no:cacheprovider -rs bindings/python/tests "$@" 2>&1 | tee "$logs/own.log"
no_skips "$logs/own.log"
