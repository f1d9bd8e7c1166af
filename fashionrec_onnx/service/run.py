"""Starting the service: checks that fail early with one line (the catalog opens, the key is
set, the extra is installed), then uvicorn with one or several worker processes."""

from __future__ import annotations

import contextlib
import inspect
import ipaddress
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..catalog import Catalog
from ..errors import FashionrecError
from .config import ENV_NAME, MULTIPROC_ENV, ServiceConfig, untuned

FACTORY = "fashionrec_onnx.service.app:app_from_env"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, config: ServiceConfig) -> str | None:
    """What to tell someone who opens the service to other machines without a key."""
    if is_loopback(host) or config.api_key_env:
        return None
    return (
        f"warning: serving on {host} without an API key: anyone who can reach this port can search "
        "the catalog. Set one with --api-key-env VAR, or serve on 127.0.0.1 behind a reverse proxy."
    )


def url_host(host: str) -> str:
    """``host`` as it goes in a URL: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def check_listen(host: str, port: int) -> None:
    """Bind the address once before anything is announced: an address that is not this machine's,
    or a port in use, is one line now rather than a banner followed by uvicorn's error."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise FashionrecError(
            f"cannot listen on {url_host(host)}:{port} ({reason}); choose another --host or --port"
        ) from None


def threads_per_worker(workers: int) -> int:
    """The cores shared out: N workers each running the model on every core would thrash."""
    return max(1, (os.cpu_count() or 1) // workers)


def check(config: ServiceConfig) -> int:
    """Everything a worker would fail on, checked once before any starts; returns the item count."""
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401  (python-multipart, for uploads)
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise FashionrecError(
            f"the service needs the serve extra ({exc.name} is missing): pip install 'fashionrec-onnx[serve]'"
        ) from exc
    if config.api_key_env and not config.api_key():
        raise FashionrecError(
            f"--api-key-env {config.api_key_env}: that environment variable is empty or unset; "
            f"export {config.api_key_env}=... first."
        )
    with Catalog.open(config.catalog, config.model, readonly=True) as catalog:
        return len(catalog)


@contextlib.contextmanager
def metrics_dir() -> Iterator[Path]:
    """Where the workers write their metrics, so a scrape adds them all up: the directory the
    environment names, emptied of earlier runs' files (counts start at zero with each start), or
    a fresh one removed at the end. Set before uvicorn imports the app, hence any worker."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):  # prometheus_client's files, nothing else
            stale.unlink()
        yield folder
        return
    folder = Path(tempfile.mkdtemp(prefix="fashionrec-metrics-"))
    os.environ[MULTIPROC_ENV] = str(folder)
    try:
        yield folder
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(folder, ignore_errors=True)


def serve(config: ServiceConfig, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Run until interrupted. Workers are separate processes (uvicorn's supervisor), each with its
    own read-only view of the catalog, all built from the config in the environment."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from .tcp import TcpConfig

    os.environ[ENV_NAME] = config.to_env()
    options: dict[str, Any] = {"access_log": False, "log_level": "info", "timeout_graceful_shutdown": 5}
    if untuned():  # the benchmark's baseline; otherwise uvicorn picks httptools and uvloop (serve extra)
        options.update(http="h11", loop="asyncio")
    server_config = TcpConfig(FACTORY, factory=True, host=host, port=port, workers=workers, **options)
    server = uvicorn.Server(server_config)
    with metrics_dir():
        try:
            if workers == 1:
                server.run()
                return
            sockets = [server_config.bind_socket()]
            target = {"target": server.run} if "target" in inspect.signature(Multiprocess).parameters else {}
            Multiprocess(server_config, sockets=sockets, **target).run()  # as uvicorn.run does
        except KeyboardInterrupt:
            pass
