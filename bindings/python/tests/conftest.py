"""Fixtures for dimstore's own Python tests.

They run inside a two-node local fleet (`dimstore-launch run --local 2`, see
scripts/test-python.sh); without one every test fails, never skips. Tests that kill a server
start their own (`own_server`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

import dimstore


def _binary(name: str) -> str:
    """A dimstore binary: `DIMSTORE_BIN_DIR/name`, else on PATH."""
    bin_dir = os.environ.get('DIMSTORE_BIN_DIR')
    path = os.path.join(bin_dir, name) if bin_dir else shutil.which(name)
    if not path or not os.access(path, os.X_OK):
        pytest.fail(f'{name} not found (set DIMSTORE_BIN_DIR or PATH)')
    return path


@pytest.fixture(scope='session')
def fleet() -> dict[str, Any]:
    """The fleet file of the surrounding `dimstore-launch run --local 2`."""
    path = os.environ.get('DIMSTORE_FLEET')
    if not path:
        pytest.fail('DIMSTORE_FLEET is not set: run inside `dimstore-launch run --local 2`')
    fleet = json.loads(Path(path).read_text())
    if len(fleet['nodes']) < 2:
        pytest.fail('these tests need a fleet of at least two nodes')
    return fleet


@pytest.fixture(scope='session')
def store(fleet: dict[str, Any]) -> dimstore.Store:
    """A native store on node 0 of the fleet."""
    return dimstore.Store(node='0', timeout=60)


@pytest.fixture
def stat() -> Callable[[str], dict[str, Any]]:
    """A server's counters as `dimstore stat --json --node N` prints them."""
    dimstore_cli = _binary('dimstore')

    def stat(node: str) -> dict[str, Any]:
        out = subprocess.run(
            [dimstore_cli, 'stat', '--json', '--no-spawn', '--node', node],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return json.loads(out.stdout)

    return stat


@pytest.fixture
def own_server(
    tmp_path: Path,
) -> Generator[Callable[..., tuple[subprocess.Popen[bytes], str]], None, None]:
    """Starts a dimstore-server of the test's own (to kill, or to fill): (process, address)."""
    server_bin = _binary('dimstore-server')
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> tuple[subprocess.Popen[bytes], str]:
        ready = tmp_path / f'ready-{len(started)}.json'
        proc = subprocess.Popen(
            [
                server_bin,
                '--listen',
                '127.0.0.1:0',
                '--node',
                f'own-{len(started)}',
                '--ready-file',
                str(ready),
                *args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(proc)
        deadline = time.monotonic() + 60
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f'dimstore-server did not start (exit {proc.poll()})')
            time.sleep(0.05)
        # The file is written atomically? Re-read until it parses.
        while True:
            try:
                return proc, json.loads(ready.read_text())['address']
            except (json.JSONDecodeError, KeyError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    yield start
    for proc in started:
        proc.kill()
        proc.wait(timeout=30)
