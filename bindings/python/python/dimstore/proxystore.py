"""A ProxyStore connector backed by the dimstore fleet.

Switching a workflow from one of ProxyStore's DIM connectors is one line:

```python
from dimstore.proxystore import DimstoreConnector
store = Store('data', DimstoreConnector(port=6000))   # was UCXConnector(port=6000)
```

`DimstoreConnector` implements ProxyStore's `Connector` and `DeferrableConnector`
protocols (so `Store.future()` works), and its `config()` describes the fleet rather than
this node: a proxy made on one node resolves on any other, where the connector is rebuilt
from the same arguments and finds that node's server.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import threading
from collections.abc import Sequence
from os import PathLike
from types import TracebackType
from typing import Any
from typing import NamedTuple

import dimstore

__all__ = ['DimstoreConnector', 'DimstoreKey']

_SIOCGIFADDR = 0x8915


class DimstoreKey(NamedTuple):
    """Key of an object stored through a `DimstoreConnector`.

    Attributes:
        dim_key: The object's dimstore key text, `dim://HOST:PORT/ID[/SIZE]`: it names the
            owning server, so any process of the fleet can fetch it.
    """

    dim_key: str


class DimstoreConnector:
    """ProxyStore connector storing objects in a dimstore fleet.

    With no arguments the fleet is found from the environment, as `dimstore.Store()` does:
    `DIMSTORE_FLEET` (set inside `dimstore-launch run`), `DIMSTORE_SERVER`, or a server on
    this node found through the runtime directory or spawned on demand.

    The arguments mean what they mean for ProxyStore's `UCXConnector`, `MargoConnector` and
    `ZeroMQConnector`: every node runs (or gets) a server on `port`.

    Args:
        port: Port of the server on each node. It is connected to at `address` (default
            the address of `interface`, else 127.0.0.1); if none answers, a server is spawned
            listening on that port.
        address: Address of this node's server: a host (with `port`) or `host:port`.
        interface: Network interface whose IPv4 address the server listens on / is reached at
            (used when `address` is not given).
        timeout: Seconds each operation may take, connecting included (default: the
            `DIMSTORE_TIMEOUT` environment, else 30). A get of a future not set yet waits up
            to this long.
        fleet: A fleet file written by `dimstore-launch` (default: `DIMSTORE_FLEET`). Each
            node finds its own entry (by host name, or `DIMSTORE_NODE`).

    Note:
        dimstore objects are immutable once stored. `set()` on a key that already holds
        the same bytes is a no-op (ProxyStore calls it twice in places); setting different
        bytes raises `dimstore.AlreadySet`. `get()` of a future not set yet waits for it,
        up to `timeout`, and returns `None` if it is still not set.
    """

    def __init__(
        self,
        port: int | None = None,
        address: str | None = None,
        interface: str | None = None,
        timeout: float | None = None,
        fleet: str | PathLike[str] | None = None,
    ) -> None:
        if port is not None and not 0 < int(port) < 65536:
            raise ValueError(f'port must be in 1..65535, got {port}')
        if timeout is not None and not timeout > 0:
            raise ValueError(f'timeout must be positive, got {timeout}')
        self.port = port
        self.address = address
        self.interface = interface
        self.timeout = timeout
        self.fleet = None if fleet is None else str(fleet)
        self._store: dimstore.Store | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def __enter__(self) -> DimstoreConnector:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        exc_traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickles as its configuration (connections are per process)."""
        return (type(self).from_config, (self.config(),))

    def __repr__(self) -> str:
        args = ', '.join(f'{k}={v!r}' for k, v in self.config().items() if v is not None)
        return f'{type(self).__name__}({args})'

    # ---- the native store, connected on first use --------------------------------------

    @property
    def store(self) -> dimstore.Store:
        """The native store (connected, or spawned, on first use; again after a fork)."""
        store = self._store
        if store is None or self._pid != os.getpid():
            if self._pid != os.getpid():
                # A forked child must not share its parent's connections.
                self._lock = threading.Lock()
                self._store = None
                self._pid = os.getpid()
            with self._lock:
                if self._store is None:
                    self._store = self._connect()
                store = self._store
        return store

    def _connect(self) -> dimstore.Store:
        kwargs: dict[str, Any] = {'timeout': self.timeout}
        if self.fleet is not None:
            kwargs['fleet'] = self.fleet
        host = self.address
        if host is None and self.interface is not None:
            host = _interface_address(self.interface)
        if self.port is None:
            if host is not None and ':' in host:
                return dimstore.Store(host, **kwargs)
            if host is not None:
                # Only where to listen, should a server have to be spawned.
                kwargs['listen'] = f'{host}:0'
            return dimstore.Store(**kwargs)
        if host is not None and ':' in host:
            raise ValueError(
                f'address {host!r} already has a port; do not also pass port={self.port}',
            )
        try:
            return dimstore.Store(f'{host or "127.0.0.1"}:{self.port}', **kwargs)
        except (dimstore.Unreachable, dimstore.ConnectFailed):
            # No server there yet: this node gets one, listening on the port.
            kwargs['listen'] = f'{host or "0.0.0.0"}:{self.port}'
            return dimstore.Store(**kwargs)

    # ---- Connector -----------------------------------------------------------------------

    def close(self) -> None:
        """Drop the connections to the fleet (the objects stay). Idempotent."""
        with self._lock:
            self._store = None

    def config(self) -> dict[str, Any]:
        """The constructor's keyword arguments: they describe the fleet, not this node."""
        return {
            'port': self.port,
            'address': self.address,
            'interface': self.interface,
            'timeout': self.timeout,
            'fleet': self.fleet,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DimstoreConnector:
        """A connector from `config()`'s output (in any process of the fleet)."""
        return cls(**config)

    def evict(self, key: DimstoreKey) -> None:
        """Remove the object; a missing one is no error."""
        self.store.evict(key.dim_key)

    def exists(self, key: DimstoreKey) -> bool:
        """Whether the object exists (a future not set yet does not)."""
        return self.store.exists(key.dim_key)

    def get(self, key: DimstoreKey) -> memoryview | None:
        """The object's bytes (a view of the server's memory on the same node), or `None`."""
        try:
            return memoryview(self.store.get(key.dim_key))
        except (dimstore.NotFound, dimstore.NotSet):
            return None

    def get_batch(self, keys: Sequence[DimstoreKey]) -> list[memoryview | None]:
        """The objects' bytes in key order, `None` for missing ones; one round trip per owner."""
        objects = self.store.get_batch([k.dim_key for k in keys])
        return [None if o is None else memoryview(o) for o in objects]

    def put(self, obj: Any) -> DimstoreKey:
        """Store bytes (any contiguous buffer) on this node's server."""
        return DimstoreKey(str(self.store.put(obj)))

    def put_batch(self, objs: Sequence[Any]) -> list[DimstoreKey]:
        """Store several objects in one round trip."""
        return [DimstoreKey(str(k)) for k in self.store.put_batch(objs)]

    # ---- DeferrableConnector -------------------------------------------------------------

    def new_key(self, obj: Any = None) -> DimstoreKey:
        """Reserve a key on this node's server, to be `set()` later (by any process)."""
        return DimstoreKey(str(self.store.new_key()))

    def set(self, key: DimstoreKey, obj: Any) -> None:
        """Set the object of a reserved key (at its owner, wherever it runs).

        Setting a key again with the same bytes is a no-op; with different bytes it raises
        `dimstore.AlreadySet` (objects are immutable once set, and readers may hold them).
        """
        try:
            self.store.set(key.dim_key, obj)
        except dimstore.AlreadySet:
            current = self.store.get(key.dim_key)
            if memoryview(current) != memoryview(obj).cast('B'):
                raise
        return None


def _interface_address(interface: str) -> str:
    """The IPv4 address of a network interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(
                s.fileno(),
                _SIOCGIFADDR,
                struct.pack('256s', interface.encode()[:15]),
            )
        except OSError as e:
            raise ValueError(f'interface {interface!r} has no IPv4 address: {e}') from e
    return socket.inet_ntoa(packed[20:24])
