"""Pytest plugin running ProxyStore's own test suites against `DimstoreConnector`.

ProxyStore's suites (from the proxystore sdist: tests/connectors/connector_test.py,
tests/store/*_test.py) take their connector from the `connectors` fixture and their store
from the `store` fixture, which ProxyStore's tests/conftest.py defines for its own
connectors. Run them with this plugin instead of that conftest, unmodified:

    dimstore-launch run --local 2 -- \\
        pytest -p dimstore_proxystore_plugin --noconftest SDIST/tests/connectors/connector_test.py ...

The fixtures need a fleet in the environment (`DIMSTORE_FLEET`, as inside
`dimstore-launch run`); without one they fail rather than skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Generator
from typing import Any
from unittest import mock

import proxystore
import pytest
from proxystore.store import Store
from proxystore.store import store_registration

from dimstore.proxystore import DimstoreConnector


def _require_fleet() -> None:
    if not os.environ.get('DIMSTORE_FLEET'):
        pytest.fail(
            'DIMSTORE_FLEET is not set: run these tests inside `dimstore-launch run`',
        )


@pytest.fixture(scope='session')
def connectors() -> Generator[DimstoreConnector, None, None]:
    """The connector under test, as ProxyStore's own `connectors` fixture yields it.

    Like theirs, it refuses `close()` during a test (the fixture owns the connector).
    """
    _require_fleet()
    with DimstoreConnector() as connector:
        with mock.patch.object(
            connector,
            'close',
            side_effect=RuntimeError(
                'Tests using connectors fixtures should not call '
                'close() on the yielded connector instance.',
            ),
        ):
            yield connector


@pytest.fixture
def store() -> Generator[Store[Any], None, None]:
    """A registered ProxyStore `Store` over `DimstoreConnector`, as their `store` fixture."""
    _require_fleet()
    with Store(str(uuid.uuid4()), DimstoreConnector(), cache_size=0) as store:
        with store_registration(store):
            yield store


@pytest.fixture(autouse=True)
def _verify_no_registered_stores() -> Generator[None, None, None]:
    """ProxyStore's own check (from their conftest): no test leaves a store registered."""
    yield
    if len(proxystore.store._stores) > 0:
        raise RuntimeError(
            'Test left at least one store registered: '
            f'{tuple(proxystore.store._stores.keys())}.',
        )
