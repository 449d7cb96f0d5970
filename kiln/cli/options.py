"""Options that several commands take, declared once, as Polygraphy's argument groups are.

An option shared by commands (``--out``, ``--threads``, ``--target``) is made here by one
function; a command passes only what differs (its default and help). A :class:`Group` is a set
of options a command receives as one typed settings object: click parses each flag, the group
builds the object from their values, and the command gets it as one parameter, so a command
with twenty flags takes a handful of parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import click

from kiln.errors import ConfigError

T = TypeVar("T")
Command = Callable[..., Any]


def attach(*options: click.Parameter) -> Callable[[Command], Command]:
    """Add options (or arguments) to a command, listed in ``--help`` in the order given (as a stack of
    ``@click.option`` lines would be)."""

    def decorate(fn: Command) -> Command:
        params: list[click.Parameter] = fn.__dict__.setdefault("__click_params__", [])
        params.extend(reversed(options))
        return fn

    return decorate


def out(default: Path | None, help: str) -> click.Option:
    """``--out``/``-o``: the folder a command writes to."""
    return click.Option(
        ["--out", "-o"], type=click.Path(path_type=Path), default=default, show_default=default is not None, help=help
    )


def threads(help: str) -> click.Option:
    """``--threads``: runtime threads, one positive count."""
    return click.Option(["--threads"], type=click.IntRange(min=1), help=help)


def targets(help: str, metavar: str = "NAME[:PRECISION]") -> click.Option:
    """``--target``/``-t`` (repeatable): target selectors; the command receives ``targets``."""
    return click.Option(["--target", "-t", "targets"], multiple=True, metavar=metavar, help=help)


def sizes(value: str | None, flag: str) -> list[int] | None:
    """A comma-separated list of positive sizes (``1,8,32``), or ``None`` when not given."""
    if not value:
        return None
    try:
        found = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        found = []
    if not found or min(found) < 1:
        raise ConfigError(f"{flag} {value!r}: expected positive sizes separated by commas, e.g. 1,8,32")
    return found


class Group(Generic[T]):
    """Options (and arguments) a command receives as one typed value: ``collect`` is called with the parsed
    flags (by their parameter names) and its result is passed to the command as ``into``.

    Apply it below :func:`kiln.cli.base.command`, so that a value ``collect`` refuses is one
    error line like any other."""

    def __init__(self, into: str, options: Sequence[click.Parameter], collect: Callable[..., T]) -> None:
        self.into = into
        self.options = tuple(options)
        self.collect = collect
        self.names = tuple(str(option.name) for option in self.options)

    def __call__(self, fn: Command) -> Command:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in self.names}
            return fn(*args, **kwargs, **{self.into: self.collect(**values)})

        # The copy of fn's params functools.wraps made is fn's own list; give the wrapper its own.
        wrapper.__dict__["__click_params__"] = list(fn.__dict__.get("__click_params__", []))
        return attach(*self.options)(wrapper)
