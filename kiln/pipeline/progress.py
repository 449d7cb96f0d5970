"""A build's stages, timed and reported as they start and end.

:class:`Stages` times each stage of a build (loading the source, export, each target's compile,
gate, search attempts, write) and tells the build's ``progress`` callable two
:class:`StageLine` lines per stage: ``"smollm2: export: started"`` and ``"smollm2: export: done
in 83.2 s, peak RSS 2.1 GiB"``. Each stage's seconds and the peak RSS at its end go into the
artifact's manifest. Other progress messages (a pruning step, a search's next setting) stay plain
strings.

How the lines are shown is the caller's: :func:`reporter` draws a live status on a terminal, one
line per message on a stream that is not one (a CI log), and nothing when quiet. The pipeline
itself prints nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
        try:
            yield
        except Exception:
            self.progress(StageLine(self._ended(name, "failed after", time.perf_counter() - start), ended=True))
            raise
        seconds = time.perf_counter() - start
        peak = peak_rss_bytes()
        self.records.append(StageRecord(name=name, seconds=round(seconds, 3), peak_rss_bytes=peak))
        self.progress(StageLine(self._ended(name, "done in", seconds, peak), ended=True))

    def _ended(self, name: str, how: str, seconds: float, peak: int | None = None) -> str:
        return f"{self.prefix}: {name}: {how} {seconds:.1f} s, peak RSS {gib(peak or peak_rss_bytes())}"


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
