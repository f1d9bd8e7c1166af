"""The `fashionrec` command line: `main` parses the arguments and runs one command; one module
per command group, the shared argument types and helpers in `common`."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
