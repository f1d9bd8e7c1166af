"""A real Milvus standalone server (PyPI `milvus`, Milvus 2.3) for the tests and the benchmark.

The server listens on a dozen ports (proxy, coordinators, nodes, embedded etcd, metrics). They
are all chosen here at once: one socket is bound per port and every socket is held until all the
ports are known, so no two of them can come out equal, then all are released just before start.
Its data and logs live in the directory given (a temporary one).
"""

from __future__ import annotations

import contextlib
import signal
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
        import milvus
        from milvus import MilvusServer, MilvusServerConfig

        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        ports = free_ports(len(PORT_KEYS) + 2)
        etcd_port, peer_port = ports[PORT_KEYS.index("etcd_port")], ports[-2]
        # The embedded etcd's peer port is fixed (2380) unless an etcd config file names
        # another: without one, two of these servers on one machine cannot both start.
        etcd_config = self.base_dir / "embed-etcd.yaml"
        etcd_config.write_text(
            f"listen-client-urls: http://localhost:{etcd_port}\n"
            f"advertise-client-urls: http://localhost:{etcd_port}\n"
            f"listen-peer-urls: http://localhost:{peer_port}\n"
            f"initial-advertise-peer-urls: http://localhost:{peer_port}\n"
            f"initial-cluster: default=http://localhost:{peer_port}\n"
        )
        template = (Path(milvus.__file__).parent / "data" / "config.yaml.template").read_text()
        template = template.replace(
            "\n  use:\n    embed: true", f"\n  config:\n    path: {etcd_config}\n  use:\n    embed: true", 1
        )
        (self.base_dir / "config.yaml.template").write_text(template)
        config = MilvusServerConfig(template=str(self.base_dir / "config.yaml.template"))
        config.glog_conf_file = str(
            Path(milvus.__file__).parent / "data" / "glog.conf"
        )  # set only by default
        self._server = MilvusServer(config)
        self._server.set_base_dir(str(self.base_dir))
        for key, port in zip(PORT_KEYS, ports):
            self._server.config.set(key, port)
        self._server.webservice_port = ports[-1]
        # The package checks a port by binding it without SO_REUSEADDR, and moves to the next
        # one if that fails: after a kill -9 the ports linger in TIME_WAIT, and a restart would
        # come up elsewhere. Check them as the server itself binds them.
        self._server.config.try_bind_port = _bind_reusing

    @property
    def port(self) -> int:
        """The proxy's port (the one clients use), as the server resolved it."""
        return int(self._server.config.get("proxy_port"))

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

    def kill(self) -> None:
        """kill -9, as an outage: the data directory stays for a restart with `start`."""
        proc = self._server.server_proc
        if proc is not None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        self._server.server_proc = None
        self._server.stop()  # closes its log files


def _bind_reusing(port: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        return sock
    except OSError:
        sock.close()
        return None


@contextlib.contextmanager
def running(base_dir: Path) -> Iterator[TestServer]:
    server = TestServer(base_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
