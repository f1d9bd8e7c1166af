"""A real Milvus standalone server (PyPI `milvus`, Milvus 2.3) for the tests and the benchmark.

The server listens on a dozen ports (proxy, coordinators, nodes, embedded etcd, metrics). They
are all chosen here at once: one socket is bound per port and every socket is held until all the
ports are known, so no two of them can come out equal, then all are released just before start.
Its data and logs live in the directory given (a temporary one).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

PORT_KEYS = (
    "etcd_port",
    "root_coord_port",
    "proxy_port",
    "proxy_internal_port",
    "query_coord_port",
    "query_node_port",
    "index_coord_port",
    "index_node_port",
    "data_coord_port",
    "data_node_port",
)


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports: every socket is held until all are chosen."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class TestServer:
    """One Milvus standalone process with its data in ``base_dir``."""

    __test__ = False  # not a pytest test class

    def __init__(self, base_dir: Path) -> None:
        from milvus import MilvusServer, MilvusServerConfig

        self.base_dir = Path(base_dir)
        self._server = MilvusServer(MilvusServerConfig())
        self._server.set_base_dir(str(self.base_dir))
        ports = free_ports(len(PORT_KEYS) + 1)
        for key, port in zip(PORT_KEYS, ports):
            self._server.config.set(key, port)
        self._server.webservice_port = ports[-1]
        self.port = ports[PORT_KEYS.index("proxy_port")]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def uri(self, collection: str) -> str:
        return f"milvus://{self.address}/{collection}"

    @property
    def pid(self) -> int | None:
        proc = self._server.server_proc
        return proc.pid if proc is not None else None

    def start(self) -> None:
        started = time.monotonic()
        self._server.start()
        self.start_seconds = time.monotonic() - started

    def stop(self) -> None:
        self._server.stop()


@contextlib.contextmanager
def running(base_dir: Path) -> Iterator[TestServer]:
    server = TestServer(base_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
