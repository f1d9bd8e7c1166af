"""uvicorn's config, but the listening socket it shares with several workers says it is TCP.

uvicorn binds that socket with protocol 0; asyncio sets TCP_NODELAY only on sockets whose
protocol is IPPROTO_TCP, so Nagle's algorithm stays on for the connections, and every answer
(headers, then body: two writes) waits for the client's delayed ACK: 40 ms a request with
``--workers 2`` against 1 ms with one worker (measured here). The same socket, labelled TCP, fixes
it. A module of its own: worker processes unpickle the config by this class's import path.
"""

from __future__ import annotations

import socket

import uvicorn


class TcpConfig(uvicorn.Config):
    def bind_socket(self) -> socket.socket:
        sock = super().bind_socket()
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.proto:
            return sock
        return socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
