"""DimstoreConnector under ProxyStore, across processes and nodes of a local fleet."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import uuid
from collections.abc import Generator
from typing import Any
from typing import Callable

import numpy as np
import pytest
from proxystore.connectors.multi import MultiConnector
from proxystore.connectors.multi import Policy
from proxystore.connectors.protocols import Connector
from proxystore.connectors.protocols import DeferrableConnector
from proxystore.proxy import extract
from proxystore.proxy import is_resolved
from proxystore.proxy import Proxy
from proxystore.store import Store
from proxystore.store.future import Future
from proxystore.store.utils import get_key

import dimstore
from dimstore.proxystore import DimstoreConnector
from dimstore.proxystore import DimstoreKey


@pytest.fixture
def ps_store(fleet: dict[str, Any]) -> Generator[Store[DimstoreConnector], None, None]:
    """A ProxyStore store on node 0 of the fleet (registered: proxies find it in-process)."""
    with Store(f'dim-{uuid.uuid4()}', DimstoreConnector(), register=True) as store:
        yield store


def _on_node(node: str, work: Callable[..., Any], *args: Any) -> Any:
    """Runs `work(*args)` in a `spawn`-started process acting as a client on `node`."""
    ctx = multiprocessing.get_context('spawn')
    with ctx.Pool(1, initializer=_become_node, initargs=(node,)) as pool:
        return pool.apply_async(work, args).get(timeout=120)


def _become_node(node: str) -> None:
    os.environ['DIMSTORE_NODE'] = node


def _resolve(proxy: Proxy[Any]) -> tuple[Any, str, str]:
    """The proxy's value, and the node and server of the connector that resolved it."""
    assert not is_resolved(proxy)  # only the key travelled
    value = extract(proxy)
    connector = proxy.__proxy_factory__.get_store().connector
    return value, connector.store.node, connector.store.local_address


def _set_future(future: Future[Any], value: Any) -> str:
    future.set_result(value)
    return os.environ['DIMSTORE_NODE']


def _resolve_future_proxy(proxy: Proxy[Any]) -> Any:
    # Blocks in the owner's server until the other process sets the future.
    return extract(proxy)


def test_protocols_and_config(fleet: dict[str, Any]) -> None:
    connector = DimstoreConnector(timeout=10.0)
    assert isinstance(connector, Connector)
    assert isinstance(connector, DeferrableConnector)
    config = connector.config()
    assert config == {
        'port': None,
        'address': None,
        'interface': None,
        'timeout': 10.0,
        'fleet': None,
    }
    assert DimstoreConnector.from_config(config).config() == config
    assert DimstoreKey.__module__ == 'dimstore.proxystore'
    assert DimstoreKey._fields == ('dim_key',)


def test_port_and_address_name_the_node_server(
    fleet: dict[str, Any],
    own_server: Callable[..., Any],
) -> None:
    _, address = own_server()
    host, port = address.rsplit(':', 1)
    by_port = DimstoreConnector(port=int(port), address=host, timeout=30.0)
    key = by_port.put(b'by port')
    assert key.dim_key.startswith(f'dim://{address}/')
    by_address = DimstoreConnector(address=address, timeout=30.0)
    assert bytes(by_address.get(key)) == b'by port'
    by_interface = DimstoreConnector(port=int(port), interface='lo', timeout=30.0)
    assert by_interface.put(b'lo').dim_key.startswith(f'dim://{address}/')
    with pytest.raises(ValueError, match='no IPv4 address'):
        DimstoreConnector(port=int(port), interface='no-such-if0').put(b'x')
    with pytest.raises(ValueError):
        DimstoreConnector(port=70000)


_FORKED: dict[str, Any] = {}


def _get_after_fork() -> tuple[bytes, bool]:
    connector = _FORKED['connector']  # inherited through fork, connection and all
    got = bytes(connector.get(_FORKED['key']))
    return got, connector.store is not _FORKED['parent_store']


def test_connector_reconnects_after_fork(fleet: dict[str, Any]) -> None:
    connector = DimstoreConnector()
    key = connector.put(b'before fork')
    _FORKED.update(connector=connector, key=key, parent_store=connector.store)
    with multiprocessing.get_context('fork').Pool(1) as pool:
        got, fresh = pool.apply(_get_after_fork)
    assert got == b'before fork' and fresh
    assert bytes(connector.get(key)) == b'before fork'  # the parent's connection still works
    copy = pickle.loads(pickle.dumps(connector))
    assert copy.config() == connector.config()


def test_set_twice(fleet: dict[str, Any]) -> None:
    connector = DimstoreConnector()
    key = connector.new_key()
    connector.set(key, b'value')
    connector.set(key, b'value')  # same bytes again: ProxyStore does this
    assert bytes(connector.get(key)) == b'value'
    with pytest.raises(dimstore.AlreadySet):
        connector.set(key, b'other')
    connector.evict(key)
    assert connector.get(key) is None
    assert connector.get_batch([key]) == [None]


def test_proxy_resolves_in_a_spawned_process_on_another_node(
    ps_store: Store[DimstoreConnector],
    stat: Callable[[str], dict[str, Any]],
) -> None:
    value = {'array': np.arange(100_000), 'text': 'hello'}
    proxy = ps_store.proxy(value)
    key = get_key(proxy)
    assert isinstance(key, DimstoreKey)
    assert key.dim_key.startswith(f"dim://{ps_store.connector.store.local_address}/")
    before = stat('0')['gets']
    got, node, server = _on_node('1', _resolve, proxy)
    assert node == 'node1'
    assert server != ps_store.connector.store.local_address  # node 1's own server
    assert (got['array'] == value['array']).all() and got['text'] == 'hello'
    assert stat('0')['gets'] > before  # fetched from the owner on node 0


def test_proxy_batch_resolves_across_nodes(ps_store: Store[DimstoreConnector]) -> None:
    proxies = ps_store.proxy_batch([b'a' * 10, 'b' * 50_000, [1, 2, 3]])
    for proxy, expected in zip(proxies, [b'a' * 10, 'b' * 50_000, [1, 2, 3]]):
        got, node, _ = _on_node('1', _resolve, proxy)
        assert node == 'node1' and got == expected


def test_future_set_by_another_node(ps_store: Store[DimstoreConnector]) -> None:
    future = ps_store.future()
    assert not future.done()
    assert _on_node('1', _set_future, future, [1, 2, 3]) == '1'
    assert future.done()
    assert future.result() == [1, 2, 3]


def test_future_proxy_waits_for_another_process(ps_store: Store[DimstoreConnector]) -> None:
    future = ps_store.future()
    ctx = multiprocessing.get_context('spawn')
    with ctx.Pool(1, initializer=_become_node, initargs=('1',)) as pool:
        pending = pool.apply_async(_resolve_future_proxy, (future.proxy(),))
        future.set_result({'answer': 42})
        assert pending.get(timeout=120) == {'answer': 42}


def test_owned_and_locked_proxies_and_lifetimes(ps_store: Store[DimstoreConnector]) -> None:
    from proxystore.store.lifetimes import ContextLifetime
    from proxystore.store.ref import borrow
    from proxystore.store.ref import into_owned

    owned = ps_store.owned_proxy([1, 2])
    borrowed = borrow(owned)
    assert borrowed == [1, 2]
    del borrowed
    key = get_key(owned)
    assert ps_store.exists(key)
    del owned  # the owner evicts on drop
    assert not ps_store.exists(key)

    locked = ps_store.locked_proxy('locked')
    assert locked.unlock() == 'locked'

    with ContextLifetime(ps_store) as lifetime:
        proxy = ps_store.proxy('scoped', lifetime=lifetime)
        scoped_key = get_key(proxy)
        assert ps_store.exists(scoped_key)
    assert not ps_store.exists(scoped_key)

    plain = ps_store.proxy('plain')
    owned_again = into_owned(plain)
    assert owned_again == 'plain'


def test_inside_multi_connector(fleet: dict[str, Any]) -> None:
    multi = MultiConnector({'dim': (DimstoreConnector(), Policy(priority=1))})
    with Store(f'multi-{uuid.uuid4()}', multi, register=True) as store:
        proxy = store.proxy(b'through multi')
        assert extract(proxy) == b'through multi'
        key = get_key(proxy)
    # ProxyStore 1.1's MultiConnector.config() is not its constructor's arguments, so a
    # Store cannot rebuild it in another process; MultiConnector.from_config can.
    got, node = _on_node('1', _get_through_multi, multi.config(), key)
    assert bytes(got).endswith(b'through multi') and node == 'node1'


def _get_through_multi(config: dict[str, Any], key: Any) -> tuple[bytes, str]:
    multi = MultiConnector.from_config(config)
    return bytes(multi.get(key)), multi.connectors['dim'][0].store.node
