"""dimstore: the node-local in-memory object store fleet, from Python.

```python
import dimstore
s = dimstore.Store()                 # from the DIMSTORE_* environment
k = s.put(b"bytes")                  # or any contiguous buffer (numpy arrays)
buf = s.get(k)                       # read-only buffer; mapped in place on the same node
k2 = dimstore.Key(str(k))            # keys print, parse and pickle
```

`dimstore.proxystore.DimstoreConnector` plugs the fleet into ProxyStore.
"""

import signal as _signal
import threading as _threading

from dimstore._dimstore import AlreadySet
from dimstore._dimstore import ConnectFailed
from dimstore._dimstore import ConnectionLost
from dimstore._dimstore import Error
from dimstore._dimstore import Evicted
from dimstore._dimstore import Key
from dimstore._dimstore import NotFound
from dimstore._dimstore import NotReserved
from dimstore._dimstore import NotSet
from dimstore._dimstore import Object
from dimstore._dimstore import ProtocolError
from dimstore._dimstore import Reservation
from dimstore._dimstore import Store
from dimstore._dimstore import StoreFull
from dimstore._dimstore import Timeout
from dimstore._dimstore import TooLarge
from dimstore._dimstore import TransportError
from dimstore._dimstore import Unauthorized
from dimstore._dimstore import Unreachable
from dimstore._dimstore import __version__

__all__ = [
    'AlreadySet',
    'ConnectFailed',
    'ConnectionLost',
    'Error',
    'Evicted',
    'Key',
    'NotFound',
    'NotReserved',
    'NotSet',
    'Object',
    'ProtocolError',
    'Reservation',
    'Store',
    'StoreFull',
    'Timeout',
    'TooLarge',
    'TransportError',
    'Unauthorized',
    'Unreachable',
    '__version__',
]


def _reinstall_python_signal_handlers() -> None:
    """Puts Python's SIGINT/SIGTERM handlers back in force.

    Loading the extension loads libfabric, whose PSM providers replace the SIGINT and SIGTERM
    handlers from a load-time constructor with ones that call exit(1): Ctrl-C would end the
    interpreter instead of raising KeyboardInterrupt. Python still knows its own handlers;
    installing them again undoes that. Only possible from the main thread (where imports
    normally happen).
    """
    if _threading.current_thread() is not _threading.main_thread():
        return
    for signum in (_signal.SIGINT, _signal.SIGTERM):
        handler = _signal.getsignal(signum)
        if handler is not None:
            _signal.signal(signum, handler)


_reinstall_python_signal_handlers()
