"""Where a feed may send the sync is bounded too (server-side request forgery): every URL and every
redirect (at most `download.MAX_REDIRECTS`, http and https only) must lead to a public address. Loopback,
private (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7) and other non-public ranges are refused
unless ``allow_private_network`` (a feed on the shop's own network); link-local addresses
(169.254/16, fe80::/10: cloud metadata services), multicast and unspecified ones always are. The
address is checked when the host name is resolved and again on the connected socket (a name that
changes its answer in between gains nothing). Through a proxy from the environment, the proxy
connects, so only the host names that resolve here are checked.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from ..errors import DownloadError


class Refused(OSError):
    """A connection to an address the settings do not allow (raised inside urllib, which wraps
    OSErrors in URLError)."""


def address_problem(address: str, allow_private: bool) -> str | None:
    """Why the sync must not connect to ``address`` (an IP literal), or None when it may."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and (inner := _embedded_ipv4(ip)) is not None:
        return address_problem(str(inner), allow_private)  # ::ffff:127.0.0.1, 64:ff9b::7f00:1...
    if not ip.is_loopback and (ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip.is_reserved):
        return f"{ip} is a link-local, multicast, unspecified or reserved address, never fetched"
    if not ip.is_global and not allow_private:
        return (
            f"{ip} is a loopback or private address; a feed on a private network needs "
            "--allow-private-network (DownloadSettings(allow_private_network=True))"
        )
    return None


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64, IPv4-compatible), which is
    where a connection to it may end up."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if (ip in _NAT64 or ip in _IPV4_COMPATIBLE) and int(ip) > 1:  # not :: and ::1 themselves
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


class AddressGuard:
    """Checks every host a fetch connects to, and holds the sockets of the fetch under way on
    each thread, for the watchdog that enforces the deadline."""

    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private
        self.local = threading.local()

    def resolve(self, host: str, port: int) -> list[Any]:
        """``getaddrinfo`` within what is left of the image's deadline: the OS resolver has no
        timeout of its own (a dead DNS server holds it for minutes), so it runs on a daemon
        thread and the download stops waiting when the deadline is up. Answers are kept for the
        connection that follows, which connects to them without resolving again."""
        ends = getattr(self.local, "ends", None)
        resolved: dict[tuple[str, int], list[Any]] = getattr(self.local, "resolved", None) or {}
        if (host, port) in resolved:
            return list(resolved[host, port])
        remaining = 0.0 if ends is None else ends - time.monotonic()
        outcome: list[Any] = []
        done = threading.Event()

        def lookup() -> None:
            try:
                outcome.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                outcome.append(exc)
            finally:
                done.set()

        if ends is None:  # outside a fetch (no deadline to keep): resolve here
            lookup()
        else:
            threading.Thread(target=lookup, name=f"resolve {host[:40]}", daemon=True).start()
            if not done.wait(max(0.0, remaining)):
                raise DownloadError(
                    "", f"the host name {host[:200]!r} was not resolved in time (no answer from DNS)"
                )
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        if ends is not None:
            self.local.resolved = {**resolved, (host, port): outcome[0]}
        return list(outcome[0])

    def check_host(self, host: str, port: int, proxied: bool) -> None:
        """Every address the name resolves to must be allowed (an IP literal is its own)."""
        try:
            infos = self.resolve(host, port)
        except (OSError, UnicodeError):
            if proxied:
                return  # the proxy resolves it
            raise DownloadError("", f"cannot resolve the host {host!r}") from None
        for info in infos:
            problem = address_problem(str(info[4][0]), self.allow_private)
            if problem:
                raise Refused(problem)

    def connector(self, check_peer: bool) -> Callable[..., socket.socket]:
        """The ``create_connection`` of one HTTP(S) connection: the peer checked (unless a proxy
        is the peer), the socket handed to the watchdog."""

        def create(address: tuple[str, int], timeout: Any = None, source: Any = None) -> socket.socket:
            sock = _connect(self.resolve(*address), timeout, source)
            if check_peer:
                problem = address_problem(str(sock.getpeername()[0]), self.allow_private)
                if problem:
                    sock.close()
                    raise Refused(problem)
            sockets = getattr(self.local, "sockets", None)
            if sockets is not None:
                sockets.append(sock)
            return sock

        return create

    def connection(
        self, kind: type[http.client.HTTPConnection], request: urllib.request.Request
    ) -> Callable[..., http.client.HTTPConnection]:
        """What urllib's ``do_open`` builds connections with, for this request."""
        connector = self.connector(check_peer=not _proxied(request))

        def build(host: str, **options: Any) -> http.client.HTTPConnection:
            made = kind(host, **options)
            setattr(made, "_create_connection", connector)  # noqa: B010 - http.client's hook
            return made

        return build


def _connect(infos: list[Any], timeout: Any, source: Any) -> socket.socket:
    """``socket.create_connection`` to addresses already resolved: the first that accepts."""
    error: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
                sock.settimeout(timeout)
            if source:
                sock.bind(source)
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error or OSError("getaddrinfo returned no address")


def _proxied(request: urllib.request.Request) -> bool:
    return request.has_proxy() or bool(getattr(request, "_tunnel_host", None))


class GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, guard: AddressGuard) -> None:
        super().__init__()
        self.guard = guard

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self.guard.connection(http.client.HTTPConnection, req), req)


class GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, guard: AddressGuard) -> None:
        super().__init__()
        self.guard = guard

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self.guard.connection(http.client.HTTPSConnection, req), req)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects come back as answers; `ImageCache` checks each target before following it."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None
