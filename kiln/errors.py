"""One error hierarchy. The CLI catches ``KilnError`` only and prints its one-line message.

Every message says what happened, what was expected and what to do. Anything that is not a
``KilnError`` is a bug in kiln and keeps its traceback.
"""

from __future__ import annotations


class KilnWarning(UserWarning):
    """A warning kiln itself gives (shown as one line); every toolchain's own warnings are
    hidden without ``--verbose``."""


class KilnError(Exception):
    """Base of every error kiln reports to a user; ``exit_code`` is the CLI's exit status."""

    exit_code = 1


class ConfigError(KilnError):
    """The config file, a CLI flag or a spec (input, calibration, evaluation) is wrong."""

    exit_code = 2


class SourceError(KilnError):
    """The model source cannot be loaded."""

    exit_code = 2


class DataError(KilnError):
    """Calibration or evaluation data does not match the input spec."""

    exit_code = 2


class UnknownTargetError(ConfigError):
    """A target or precision name that the registry does not know."""


class ExportError(KilnError):
    """torch.export or the ONNX exporter cannot capture or lower this model; the message names
    the stage and what to try. Not a bug in kiln (that is exit 1, with its traceback)."""

    exit_code = 6


class TargetBuildError(KilnError):
    """A target's toolchain cannot compile this model into an artifact."""

    exit_code = 6


class ParityError(KilnError):
    """An artifact's outputs or task metric breached the gate."""

    exit_code = 3


class RegressionError(KilnError):
    """A benchmark comparison found a regression beyond the allowed threshold."""

    exit_code = 4


class UnavailableError(KilnError):
    """The target needs a package or hardware this machine does not have."""

    exit_code = 5


class MissingDependencyError(UnavailableError):
    """A target's Python package is not installed; the message names the pip extra."""


class IntegrityError(KilnError):
    """A bundle whose bytes are not what was packaged: a checksum that differs, a file that
    SHA256SUMS does not list, a signature that is missing or does not verify, an archive over
    its limits (an archive bomb)."""

    exit_code = 7


class UnsafeBundleError(IntegrityError):
    """A bundle member that extraction would place outside the bundle's folder (an absolute path,
    ``..``, a link that leaves it) or that is not a file (a device, a fifo); the message names it.
    Exit 7, as every other bad bundle: nothing of it was written."""


class CompatibilityError(UnavailableError):
    """The artifact does not run on this machine's runtime version or hardware; the message says
    what to install or where to run it."""


class ResourceError(KilnError):
    """The build cannot fit in this machine's memory: refused before any work, with the estimate,
    the memory available and what to do (a smaller model, a larger machine, or the override)."""

    exit_code = 8


def error_line(err: BaseException, limit: int = 300, typed: bool = True) -> str:
    """How kiln quotes another library's error (or warning) inside its own one-line message: the
    first line of its message cut at ``limit`` characters, after its type name (``"ValueError: bad
    shape"``) unless ``typed`` is false; the type name alone when the message is empty."""
    lines = str(err).strip().splitlines()
    if not lines:
        return type(err).__name__
    return f"{type(err).__name__}: {lines[0][:limit]}" if typed else lines[0][:limit]


def one_line(text: str, limit: int = 120) -> str:
    """A name a user or a file chose (a key, a path, a member of an archive), fit for a one-line
    message: control characters (a newline, a carriage return, an escape) written as Python
    escapes, and cut at ``limit`` characters with the length said."""
    shown = "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(text)} characters)"
