"""The ``kiln`` command group and what every command shares: one-line errors and their exit
codes, quiet toolchains, the console. The commands live beside it, one module per job: thin
click commands that build a config object and call the API.

Nothing here imports a toolchain, so ``kiln --help`` is instant and a missing extra breaks only
its own target. A ``KilnError`` becomes one line on stderr and its exit code (2 bad input,
3 parity or accuracy gate, 4 regression, 5 unavailable here, 6 toolchain failure, 7 a bundle's
integrity); ``--verbose`` adds the traceback.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Callable
from typing import Any, NoReturn

import click

from kiln import __version__
from kiln.errors import ConfigError, KilnError, KilnWarning


def _fail(err: KilnError, verbose: bool) -> NoReturn:
    if verbose:
        traceback.print_exception(err)
    click.echo(f"kiln: error: {err}", err=True)
    sys.exit(err.exit_code)


# Failures of the machine or the folders a user chose, not of kiln: one line, exit 2.
_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.EISDIR,
}


def _describe_os_error(err: OSError) -> str:
    where = err.filename or "a file"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some disk space or choose another --out; nothing half-written was kept"
    elif err.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        fix = "a file is in the way of a folder (or the other way round): choose another --out or remove it"
    else:
        fix = "choose a folder you can write to (--out)"
    return f"cannot write {where}: {err.strerror}; {fix}"


def _one_line_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> str:
    return f"kiln: warning: {message}\n"


class _Interrupts:
    """Remembers that Ctrl-C arrived, so an interrupt still exits 130 when a toolchain turned the
    ``KeyboardInterrupt`` into its own error on the way out (Python wraps one raised inside a
    class body as ``RuntimeError: Error calling __set_name__``, and a target reports that as a
    failed compile)."""

    seen = False

    @classmethod
    def install(cls) -> Callable[[], None]:
        """Watch for Ctrl-C where Python's own handler is in place (the main thread, nobody
        else's handler); returns what puts the previous handler back."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            return lambda: None  # an outer command's watch (or someone else's handler) stays
        cls.seen = False
        signal.signal(signal.SIGINT, cls._handle)
        return lambda: signal.signal(signal.SIGINT, signal.default_int_handler)

    @classmethod
    def _handle(cls, signum: int, frame: Any) -> None:
        cls.seen = True
        signal.default_int_handler(signum, frame)

    @classmethod
    def caused(cls, err: BaseException) -> bool:
        """Whether ``err`` came of an interrupt: one arrived, or one is in its chain."""
        seen: set[int] = set()
        link: BaseException | None = err
        while link is not None and id(link) not in seen:
            if isinstance(link, KeyboardInterrupt):
                return True
            seen.add(id(link))
            link = link.__cause__ or link.__context__
        return cls.seen


def _interrupted() -> NoReturn:
    click.echo("kiln: interrupted; nothing half-written was kept, run the command again to resume", err=True)
    sys.exit(130)


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--verbose`` (listed last) and turn a ``KilnError`` into one line and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, verbose: bool, **kwargs: Any) -> Any:
        warnings.formatwarning = _one_line_warning
        disabled = logging.root.manager.disable
        if verbose:
            os.environ["KILN_VERBOSE"] = "1"
        else:
            _quiet_toolchains()
            # A user error is one line: no toolchain's log records (a corrupt .pt2 makes torch log
            # its own traceback) reach stderr; kiln reports through click, not logging.
            logging.disable(logging.CRITICAL)
        restore = _Interrupts.install()
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            _interrupted()
        except Exception as err:
            if _Interrupts.caused(err):
                _interrupted()
            if isinstance(err, KilnError):
                _fail(err, verbose)
            if isinstance(err, OSError) and err.errno in _ENVIRONMENT_ERRNOS:
                _fail(ConfigError(_describe_os_error(err)), verbose)
            raise  # anything else is a bug in kiln: keep its traceback
        finally:
            restore()
            logging.disable(disabled)

    verbose = click.Option(["--verbose", "-v"], is_flag=True, help="Show tracebacks and toolchain output.")
    wrapper.__dict__["__click_params__"] = [verbose, *fn.__dict__.get("__click_params__", [])]
    return wrapper


def _one_line_usage(err: click.UsageError) -> click.UsageError:
    """Make click's usage error (a bad flag value, an unknown option or command, a missing
    argument) show as one line, like every other user error; its exit code stays 2. A bare
    ``kiln`` still shows its help."""
    if isinstance(err, getattr(click.exceptions, "NoArgsIsHelpError", ())):
        return err

    def show(file: Any = None) -> None:
        where = err.ctx.command_path if err.ctx is not None else "kiln"
        click.echo(f"kiln: error: {err.format_message().rstrip('.')}; see `{where} --help`", err=True)

    err.show = show  # type: ignore[method-assign]
    return err


class _Group(click.Group):
    """The ``kiln`` group: usage errors of the group and of its commands are one line."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as err:
            raise _one_line_usage(err) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as err:
            raise _one_line_usage(err) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kiln")
def main() -> None:
    """kiln: fire a PyTorch model into verified artifacts for every runtime."""


def _quiet_toolchains() -> None:
    """Toolchains warn about their own internals (deprecations, untested versions) on every
    call; a user can act on none of it. The registry names each target's chatty loggers and the
    imports it blocks; ``--verbose`` keeps it all."""
    from kiln.targets import quiet_toolchains

    # Toolchains' own warnings are hidden (they name internals a user cannot act on); kiln's
    # own stay, one line each.
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", category=KilnWarning)
    # transformers draws loading bars and logs per model; kiln reports its own progress.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # its GGUF reader draws a plain tqdm bar (read on tqdm's import)
    quiet_toolchains()


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)
