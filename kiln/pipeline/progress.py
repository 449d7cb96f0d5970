"""A build's stages, timed and reported as they start and end.

:class:`Stages` times each stage of a build (loading the source, export, each target's compile,
gate, search attempts, write) and tells the build's ``progress`` callable two
:class:`StageLine` lines per stage: ``"smollm2: export: started"`` and ``"smollm2: export: done
in 83.2 s, peak RSS 2.1 GiB"``. Each stage's seconds, the process's peak RSS at its end, the
stage's own peak (:class:`StagePeak`: the process's peak only grows, so it cannot say which stage
held what) and the RSS it left go into the artifact's manifest. Other progress messages (a pruning step, a search's next setting) stay plain
strings.

How the lines are shown is the caller's: :func:`reporter` draws a live status on a terminal, one
line per message on a stream that is not one (a CI log), and nothing when quiet. The pipeline
itself prints nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from kiln.hardware import peak_rss_bytes
from kiln.manifest import StageRecord

Progress = Callable[[str], None]


class StageLine(str):
    """A progress line that opens (``ended`` false) or closes (``ended`` true) a stage; a plain
    ``str`` to every caller that only prints progress."""

    ended: bool

    def __new__(cls, text: str, ended: bool) -> StageLine:
        line = super().__new__(cls, text)
        line.ended = ended
        return line

    def __reduce__(self) -> tuple[type[StageLine], tuple[str, bool]]:
        # Pickled whole through an isolated build's pipe (kiln.pipeline.isolate).
        return StageLine, (str(self), self.ended)


def gib(size: int) -> str:
    """Bytes as GiB with one decimal (MiB below one GiB): ``2.1 GiB``, ``512 MiB``."""
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"


class Stages:
    """Times the stages of one model's build (``prefix`` is the model's name) or of one of its
    artifacts (``model: target-precision``); :attr:`records` are the stages that ended, in order."""

    def __init__(self, prefix: str, progress: Progress) -> None:
        self.prefix = prefix
        self.progress = progress
        self.records: list[StageRecord] = []

    def child(self, name: str) -> Stages:
        """The stages of one artifact of this model: its lines carry its name too."""
        return Stages(f"{self.prefix}: {name}", self.progress)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the stage: a line as it starts, one as it ends (done or failed) with its seconds
        and the peak RSS; a stage that ends without an error is recorded."""
        self.progress(StageLine(f"{self.prefix}: {name}: started", ended=False))
        start = time.perf_counter()
        own = StagePeak()
        try:
            with own:
                yield
                release_memory()  # what the stage dropped goes back before the next one starts
        except Exception:
            self.progress(StageLine(self._ended(name, "failed after", time.perf_counter() - start), ended=True))
            raise
        seconds = time.perf_counter() - start
        peak = process_peak()
        record = StageRecord(
            name=name,
            seconds=round(seconds, 3),
            peak_rss_bytes=peak,
            own_peak_rss_bytes=own.peak,
            end_rss_bytes=rss_bytes() or None,
        )
        self.records.append(record)
        self.progress(StageLine(self._ended(name, "done in", seconds, peak), ended=True))

    def _ended(self, name: str, how: str, seconds: float, peak: int | None = None) -> str:
        return f"{self.prefix}: {name}: {how} {seconds:.1f} s, peak RSS {gib(peak or process_peak())}"


def release_memory() -> None:
    """Collect garbage (a stage's graphs and programs hold reference cycles) and hand the C
    heap's free pages back to the system (glibc keeps them otherwise, and they count as resident)."""
    import ctypes
    import gc

    gc.collect()
    try:
        trim = ctypes.CDLL(None).malloc_trim  # glibc's, in the process already; musl and macOS have none
    except (OSError, AttributeError):
        return
    trim(0)


def rss_bytes() -> int:
    """This process's resident set now (Linux ``/proc/self/statm``); 0 where it cannot be read."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


# The process's peak before the last reset of VmHWM, and the peaks of the stages open now
# (outermost first): a reset starts a stage's own count, and what came before it is folded into
# the stages around it and into the process's peak so far.
_BEFORE_RESET = [0]
_OPEN: list[list[int]] = []


def process_peak() -> int:
    """This process's peak resident set so far, across the resets :class:`StagePeak` makes."""
    return max(_BEFORE_RESET[0], peak_rss_bytes())


def _fold() -> None:
    high = peak_rss_bytes()
    _BEFORE_RESET[0] = max(_BEFORE_RESET[0], high)
    for peak in _OPEN:
        peak[0] = max(peak[0], high)


def _reset_peak() -> bool:
    """Reset the kernel's high-water mark of this process's resident set (``VmHWM``) to what is
    resident now (Linux: ``5`` into ``/proc/self/clear_refs``); false where it cannot be."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class StagePeak:
    """The peak resident set while the ``with`` block runs, exactly as the kernel counts it: the
    high-water mark is reset as it starts and read as it ends (a sampling thread would miss a
    spike inside a C call that holds the GIL: serializing a graph, loading a session). ``peak``
    is ``None`` where the mark cannot be reset (not Linux)."""

    def __enter__(self) -> StagePeak:
        _fold()
        self._own = [rss_bytes()]
        self._exact = _reset_peak()
        _OPEN.append(self._own)
        self.peak: int | None = None
        return self

    def __exit__(self, *exc: object) -> None:
        _fold()
        _OPEN.remove(self._own)
        self.peak = self._own[0] if self._exact else None


@contextmanager
def reporter(console: Any, quiet: bool = False, log: TextIO | None = None) -> Iterator[Progress]:
    """What the CLI hands the build as its ``progress``: nothing shown when ``quiet``; on a
    terminal (``console``, a rich ``Console``, says whether it is one) a live line with the current
    step and its elapsed time, and each stage's end printed above it; elsewhere (a CI log) one
    ``kiln: ...`` line per message, flushed at once, on ``log`` (the CLI: stdout, where the build's
    table goes, so that stderr carries the one line of an error and nothing else)."""
    if quiet:
        yield lambda _: None
    elif console.is_terminal:
        with _live(console) as progress:
            yield progress
    else:
        yield _lines(log if log is not None else console.file)


def _lines(stream: TextIO) -> Progress:
    def show(message: str) -> None:
        stream.write(f"kiln: {message}\n")
        stream.flush()

    return show


@contextmanager
def _live(console: Any) -> Iterator[Progress]:
    from rich.markup import escape
    from rich.progress import Progress as Bar
    from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

    bar = Bar(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True)
    current = [bar.add_task("starting", total=None)]

    def show(message: str) -> None:
        if isinstance(message, StageLine) and message.ended:
            bar.console.print(escape(message), highlight=False)
        elif isinstance(message, StageLine):  # a new stage: its clock starts at zero
            bar.remove_task(current[0])
            current[0] = bar.add_task(escape(message), total=None)
        else:
            bar.update(current[0], description=escape(message))

    with bar:
        yield show
