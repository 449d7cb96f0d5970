"""The ``kiln`` command line (``kiln.cli:main``): the group and its shared handling in
:mod:`kiln.cli.base`, the commands one module per job. Nothing here imports a toolchain at
import time, so ``kiln --help`` stays instant."""

from kiln.cli import build, fleet, measure, ship  # noqa: F401  (each registers its commands)
from kiln.cli.base import main

__all__ = ["main"]
