"""The fleet's user errors, each a subclass of the house's exit-code classes."""

from __future__ import annotations

from kiln.errors import ConfigError, IntegrityError, UnavailableError


class StoreError(ConfigError):
    """The store cannot be reached or written (a wrong path or URL, missing credentials): exit 2."""


class StoreIntegrityError(IntegrityError):
    """A stored file whose bytes differ from what its commit recorded: exit 7."""


class ClusterError(UnavailableError):
    """No Ray cluster at the address given, or Ray is not installed: exit 5."""
