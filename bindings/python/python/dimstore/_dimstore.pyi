"""Type stubs of the native module `dimstore._dimstore` (pyo3)."""

from collections.abc import Iterable
from os import PathLike
from typing import final

from typing_extensions import Buffer

__version__: str

class Error(Exception):
    """Base class of every dimstore error."""

class NotFound(Error):
    """The owner has no object under this key (never stored, or evicted)."""

class NotReserved(NotFound):
    """set() on a key that its owner never reserved (or that was evicted)."""

class Evicted(NotFound):
    """The server removed the object (memory pressure, its time to live or lease, its owner, a consume-once get)."""

class Timeout(Error):
    """A server did not answer within the operation's timeout."""

class NotSet(Timeout):
    """A deferred key was not set within the timeout."""

class ConnectionLost(Error):
    """The connection to a server broke during the operation."""

class Unreachable(ConnectionLost):
    """A server could not be reached (dead, wrong address, refused)."""

class Unauthorized(Error):
    """The server refused this client's fleet token."""

class StoreFull(Error):
    """The server's memory limit leaves no room for the object(s)."""

class TooLarge(StoreFull):
    """The object is larger than the server's memory limit."""

class AlreadySet(Error):
    """set() on a key that already holds an object."""

class ConnectFailed(Error):
    """No server could be found or started for this node."""

class TransportError(Error):
    """The transport asked for cannot be used, or a one-sided read failed."""

class ProtocolError(Error):
    """A server answered something unexpected, or reported an internal failure."""

@final
class Key:
    """An object's name: `dim://HOST:PORT/ID[/SIZE]`; prints, parses and pickles."""

    def __init__(self, text: str) -> None: ...
    @property
    def owner(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def size(self) -> int | None: ...
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...

@final
class Object(Buffer):
    """An object's bytes: a read-only buffer, mapped in place on the same node."""

    @property
    def is_mapped(self) -> bool: ...
    def __len__(self) -> int: ...
    def __bytes__(self) -> bytes: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...

@final
class Reservation(Buffer):
    """A writable buffer for an in-place put; `seal()` publishes it."""

    def seal(self, length: int | None = None) -> Key: ...
    def abort(self) -> None: ...
    @property
    def is_mapped(self) -> bool: ...
    def __len__(self) -> int: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...

KeyLike = Key | str

@final
class Store:
    """A client of a dimstore fleet (configured from the DIMSTORE_* environment)."""

    def __init__(
        self,
        server: str | None = None,
        *,
        fleet: str | PathLike[str] | None = None,
        node: str | None = None,
        timeout: float | None = None,
        listen: str | None = None,
    ) -> None: ...
    @staticmethod
    def reader(*, timeout: float | None = None) -> Store: ...
    def with_timeout(self, timeout: float) -> Store: ...
    @property
    def timeout(self) -> float: ...
    @property
    def local_address(self) -> str | None: ...
    @property
    def node(self) -> str: ...
    @property
    def maps_local_objects(self) -> bool: ...
    def put(self, data: Buffer) -> Key: ...
    def put_batch(self, objects: Iterable[Buffer]) -> list[Key]: ...
    def get(self, key: KeyLike, timeout: float | None = None) -> Object: ...
    def get_batch(
        self,
        keys: Iterable[KeyLike],
        timeout: float | None = None,
    ) -> list[Object | None]: ...
    def exists(self, key: KeyLike) -> bool: ...
    def evict(self, key: KeyLike) -> bool: ...
    def evict_batch(self, keys: Iterable[KeyLike]) -> list[bool]: ...
    def new_key(self) -> Key: ...
    def set(self, key: KeyLike, data: Buffer) -> Key: ...
    def create(self, size: int) -> Reservation: ...
    def stats(self, address: str | None = None) -> dict[str, int | str]:
        """Counters of this node's server (or of the server at `address`): objects, memory,
        puts and gets, and memory pressure (`eviction_policy`, `policy_evictions`, `expired`,
        `owner_evictions`, `consumed`, `spilled_bytes`, `spilled_objects`, `spill_kept_bytes`,
        `restores`, `respills`, `spill_failures`, `spill_written`/`spill_write_ns`,
        `spill_read`/`spill_read_ns`), the names of `dimstore stat --json`."""
