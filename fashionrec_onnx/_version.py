"""The package version, in one place: pyproject.toml reads it, `fashionrec --version` prints it and
a catalog records the version that wrote it."""

__version__ = "0.2.0"
