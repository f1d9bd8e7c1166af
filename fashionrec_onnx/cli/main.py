"""The `fashionrec` command: the parser assembled from the command group modules, and `main`.

Library errors become one line on stderr with exit code 2, and so do file system errors and bad
arguments (refused by argparse before anything is opened); "ran but found a problem" (skipped
files, unknown keys, an empty catalog, recall below the bar) is exit code 1.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .._version import __version__
from ..errors import FashionrecError
from . import catalog, demo, export, quality, refine, search, serve, sync, vectors
from .common import Handler, _err, _os_error

log = logging.getLogger("fashionrec")

# in `fashionrec --help` order
GROUPS = (export, catalog, search, quality, refine, vectors, sync, demo, serve)
HANDLERS: dict[str, Handler] = {name: handler for group in GROUPS for name, handler in group.HANDLERS.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fashionrec",
        description="Visual product search for fashion.",
        epilog="`fashionrec COMMAND --help` describes a command, with examples.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"fashionrec-onnx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_commands(sub)
    return parser


# Library records that say again what the command prints in its own report (skipped files,
# metadata that did not fit, duplicate groups): each fact is said once. `--verbose` shows them.
SAID_IN_THE_REPORT: dict[str, tuple[str, ...]] = {
    "fashionrec_onnx.feeds.folders": ("index", "import-fashion-mnist"),
    "fashionrec_onnx.catalog.duplicates": ("duplicates", "search"),
    "fashionrec_onnx.interchange.distributed": ("embed",),
}


class _SaidOnce(logging.Filter):
    """Drops `SAID_IN_THE_REPORT` records of the running command (errors always pass)."""

    def __init__(self, command: str) -> None:
        super().__init__()
        self.command = command

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or self.command not in SAID_IN_THE_REPORT.get(record.name, ())


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (argparse's 2 for a bad argument, 0 for --help)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        force=True,  # a second main() in one process logs to the current stderr
    )
    if not args.verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_SaidOnce(args.command))
    try:
        return HANDLERS[args.command](args)
    except FashionrecError as exc:
        log.debug("the error came from here", exc_info=True)
        _err(f"error: {exc}")
        return 2
    except OSError as exc:
        log.debug("the error came from here", exc_info=True)
        _err(f"error: {_os_error(exc)}")
        return 2
    except KeyboardInterrupt:
        _err("interrupted; committed batches are kept, run the same command again to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
