"""ProxyStore `Store.put` in one process, `Store.get` in another, 8 B to 128 MiB.

Connectors: DimstoreConnector with the reader on the same node and on the other node of a
two-node local fleet, RedisConnector (a redis-server started here, on 127.0.0.1),
ZeroMQConnector (proxystore-ex, if installed; its server on 127.0.0.1) and FileConnector (a
temporary directory). Also the raw connector get (`connector.get`, no
deserialization) in the reader: for dimstore on the same node that is a mapping, flat in size.

Run inside a two-node fleet (bench/python/README.md has the setup):

    dimstore-launch run --local 2 -- python bench/python/proxystore_bench.py
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from typing import Any

from proxystore.connectors.file import FileConnector
from proxystore.connectors.redis import RedisConnector
from proxystore.store import Store
from proxystore.store.config import StoreConfig

from dimstore.proxystore import DimstoreConnector

SIZES = [8, 1 << 10, 64 << 10, 1 << 20, 16 << 20, 128 << 20]

_reader_store: dict[str, Store[Any]] = {}


def _reps(size: int, scale: float) -> int:
    """Repetitions: many for small objects, a few for large ones (bounded time)."""
    return max(5, int(min(200, (512 << 20) // (size * 4)) * scale))


def _become_node(node: str) -> None:
    os.environ['DIMSTORE_NODE'] = node


def _read(config: StoreConfig, key: Any) -> tuple[float, float, int]:
    """In the reader process: seconds for Store.get and for the raw connector.get."""
    store = _reader_store.get(config.name)
    if store is None:
        store = Store.from_config(config)
        _reader_store[config.name] = store
    start = time.perf_counter()
    value = store.get(key)
    got = time.perf_counter() - start
    start = time.perf_counter()
    raw = store.connector.get(key)
    raw_time = time.perf_counter() - start
    assert value is not None and raw is not None
    return got, raw_time, len(raw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _bench(
    name: str,
    connector: Any,
    reader_node: str,
    sizes: list[int],
    scale: float,
) -> dict[int, dict[str, float]]:
    results: dict[int, dict[str, float]] = {}
    ctx = multiprocessing.get_context('spawn')
    with Store(f'bench-{uuid.uuid4()}', connector, cache_size=0, register=False) as store:
        config = store.config()
        with ctx.Pool(1, initializer=_become_node, initargs=(reader_node,)) as pool:
            for size in sizes:
                payload = os.urandom(size) if size <= (1 << 20) else bytes(size)
                puts, gets, raws = [], [], []
                for _ in range(_reps(size, scale)):
                    start = time.perf_counter()
                    key = store.put(payload)
                    puts.append(time.perf_counter() - start)
                    got, raw, length = pool.apply(_read, (config, key))
                    assert length >= size
                    gets.append(got)
                    raws.append(raw)
                    store.evict(key)
                results[size] = {
                    'put': statistics.median(puts),
                    'get': statistics.median(gets),
                    'raw': statistics.median(raws),
                }
                print(
                    f'{name:>16} {_size(size):>8}: put {_time(results[size]["put"]):>9}'
                    f'  get {_time(results[size]["get"]):>9}  raw get {_time(results[size]["raw"]):>9}',
                    flush=True,
                )
    return results


def _size(n: int) -> str:
    for unit, shift in (('MiB', 20), ('KiB', 10)):
        if n >= 1 << shift:
            return f'{n >> shift} {unit}'
    return f'{n} B'


def _time(seconds: float) -> str:
    if seconds < 1e-3:
        return f'{seconds * 1e6:.0f} µs'
    return f'{seconds * 1e3:.1f} ms'


def _table(all_results: dict[str, dict[int, dict[str, float]]], sizes: list[int]) -> str:
    names = list(all_results)
    lines = [
        '| size | ' + ' | '.join(f'{n} get' for n in names) + ' | '
        + ' | '.join(f'{n} put' for n in names)
        + ' | dimstore raw get (same node) | Redis / dimstore get (same, other node)'
        + (' | ZeroMQ / dimstore other-node get |' if 'ZeroMQ' in names else ' |'),
        '|' + ' --- |' * (2 * len(names) + 3 + ('ZeroMQ' in names)),
    ]
    for size in sizes:
        row = [_size(size)]
        row += [_time(all_results[n][size]['get']) for n in names]
        row += [_time(all_results[n][size]['put']) for n in names]
        row.append(_time(all_results['dimstore same node'][size]['raw']))
        redis = all_results['Redis'][size]['get']
        same = all_results['dimstore same node'][size]['get']
        other = all_results['dimstore other node'][size]['get']
        row.append(f'{redis / same:.1f}x, {redis / other:.1f}x')
        if 'ZeroMQ' in names:
            row.append(f"{all_results['ZeroMQ'][size]['get'] / other:.1f}x")
        lines.append('| ' + ' | '.join(row) + ' |')
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--max-size', type=int, default=128 << 20, help='largest object, bytes')
    parser.add_argument('--scale', type=float, default=1.0, help='multiply repetitions')
    args = parser.parse_args()
    if not os.environ.get('DIMSTORE_FLEET'):
        raise SystemExit('run inside `dimstore-launch run --local 2 -- ...`')
    sizes = [s for s in SIZES if s <= args.max_size]
    os.environ['DIMSTORE_NODE'] = '0'

    redis_port = _free_port()
    redis = subprocess.Popen(
        ['redis-server', '--bind', '127.0.0.1', '--port', str(redis_port), '--save', '',
         '--appendonly', 'no'],
        stdout=subprocess.DEVNULL,
    )
    file_dir = tempfile.mkdtemp(prefix='proxystore-bench-')
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(('127.0.0.1', redis_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        results = {
            'dimstore same node': _bench('dimstore same', DimstoreConnector(), '0', sizes, args.scale),
            'dimstore other node': _bench('dimstore other', DimstoreConnector(), '1', sizes, args.scale),
            'Redis': _bench('redis', RedisConnector('127.0.0.1', redis_port), '0', sizes, args.scale),
        }
        try:
            from proxystore_ex.connectors.dim.zmq import ZeroMQConnector
        except ImportError:
            print('proxystore-ex is not installed: no ZeroMQConnector row')
        else:
            zmq = ZeroMQConnector(port=_free_port(), address='127.0.0.1', timeout=30)
            results['ZeroMQ'] = _bench('zeromq', zmq, '0', sizes, args.scale)
        results['File'] = _bench('file', FileConnector(file_dir), '0', sizes, args.scale)
    finally:
        redis.terminate()
        redis.wait(timeout=30)
        shutil.rmtree(file_dir, ignore_errors=True)
    print()
    print(_table(results, sizes))


if __name__ == '__main__':
    main()
