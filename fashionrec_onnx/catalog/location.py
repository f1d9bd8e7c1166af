"""Where a catalog lives: a local directory (the default) or a Milvus collection.

``milvus://[USER:PASSWORD@]HOST:PORT/COLLECTION`` names a collection on a Milvus server. Anything
that looks like a URI (``scheme://...``) is never taken for a folder name: an unknown scheme is
an error, not a directory called ``http:``. The password may also come from the environment
(``FASHIONREC_MILVUS_TOKEN``, either ``PASSWORD`` or ``USER:PASSWORD``); it is never part of
``str(location)``, so messages and logs that show the location never show it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from ..errors import BadArgumentError

SCHEME = "milvus"
TOKEN_VARIABLE = "FASHIONREC_MILVUS_TOKEN"
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/")  # two letters at least: C:/ stays a path
_COLLECTION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")  # Milvus' rule for collection names


@dataclass(frozen=True)
class MilvusLocation:
    """A Milvus collection; ``str()`` shows it without the password."""

    host: str
    port: int
    collection: str
    user: str = ""
    password: str = field(default="", repr=False)

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        return f"{SCHEME}://{user}{self.host}:{self.port}/{self.collection}"

    def __fspath__(self) -> str:  # never a path: refuse rather than make a folder of it
        raise BadArgumentError(f"{self} is a Milvus collection, not a directory")

    def local_folder(self) -> Path:
        """A folder on this machine for what the catalog keeps beside it locally (downloaded
        feed images): under $XDG_CACHE_HOME (~/.cache), one per server and collection."""
        base = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
        host = re.sub(r"[^A-Za-z0-9.-]", "_", self.host)
        return base / "fashionrec" / "milvus" / f"{host}_{self.port}_{self.collection}"

    @property
    def name(self) -> str:
        """The collection's name: what a directory's name is to a local catalog (short labels
        in reports)."""
        return self.collection

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def token(self) -> str:
        """What pymilvus takes as ``token`` (``USER:PASSWORD``), or '' without credentials."""
        if not self.password:
            return ""
        return f"{self.user}:{self.password}" if self.user else self.password


def looks_like_uri(text: str) -> bool:
    """``scheme://...`` (or what a Path makes of it, ``scheme:/...``)."""
    return bool(_URI.match(text))


def parse(text: str) -> MilvusLocation:
    """A ``milvus://`` URI, checked; any other scheme is a clear error."""
    match = _URI.match(text)
    if not match:
        raise BadArgumentError(f"{text!r} is not a catalog URI")
    scheme = match.group(1).lower()
    if scheme != SCHEME or not text[len(scheme) + 1 :].startswith("//"):
        hidden = _without_password(text)
        raise BadArgumentError(
            f"unknown catalog location {hidden!r}: a catalog is a local directory or "
            f"{SCHEME}://[USER:PASSWORD@]HOST:PORT/COLLECTION"
        )
    rest = text[len(scheme) + 3 :]
    authority, slash, collection = rest.partition("/")
    user, password = "", ""
    if "@" in authority:
        credentials, _, authority = authority.rpartition("@")
        user, _, password = credentials.partition(":")
        user, password = unquote(user), unquote(password)
    shown = f"{SCHEME}://{user + '@' if user else ''}{authority}/{collection}"
    host, port = _host_port(authority, shown)
    collection = collection.rstrip("/")
    if not slash or not _COLLECTION.match(collection):
        raise BadArgumentError(
            f"{shown!r} needs a collection name after the port (letters, digits and underscores, "
            "starting with a letter or underscore): milvus://HOST:PORT/COLLECTION"
        )
    if not password:
        user, password = _from_environment(user)
    return MilvusLocation(host, port, collection, user, password)


def _host_port(authority: str, shown: str) -> tuple[str, int]:
    if authority.startswith("["):  # [::1]:19530
        host, _, port = authority[1:].partition("]")
        port = port[1:] if port.startswith(":") else ""
    else:
        host, _, port = authority.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadArgumentError(f"{shown!r} needs HOST:PORT, e.g. milvus://127.0.0.1:19530/catalog")
    return host, int(port)


def _from_environment(user: str) -> tuple[str, str]:
    token = os.environ.get(TOKEN_VARIABLE, "")
    if not token:
        return user, ""
    named, sep, password = token.partition(":")
    if sep:
        return user or named, password
    return user, token


def _without_password(text: str) -> str:
    return re.sub(r"(//[^/@:]*):[^/@]*@", r"\1:***@", text)


Location = Path | MilvusLocation


def location(value: str | os.PathLike[str] | MilvusLocation) -> Location:
    """A local directory, or the Milvus collection a URI names."""
    if isinstance(value, MilvusLocation):
        return value
    text = os.fspath(value)
    if not text:  # Path("") is the current directory: an unset variable must not make a catalog there
        raise BadArgumentError("the catalog location is empty; name its directory ('.' for this one)")
    if looks_like_uri(text):
        return parse(text if "://" in text else text.replace(":/", "://", 1))
    return Path(text).expanduser()
