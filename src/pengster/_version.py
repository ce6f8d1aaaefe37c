"""The installed version of pengster, read once from the package metadata."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def _installed_version() -> str:
    try:
        return version("pengster")
    except PackageNotFoundError:  # running from a source tree without installation
        return "0.0.0+unknown"


__version__ = _installed_version()
"""The version of the installed distribution (``0.0.0+unknown`` in a source tree that was never installed)."""
