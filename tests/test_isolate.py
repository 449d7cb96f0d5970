"""kiln.pipeline.isolate.run_isolated: one call in a spawned child; its result, its progress lines, its
warnings, and one error line when it raises or its process is killed (as for memory)."""

from __future__ import annotations

import os
import signal
import warnings
from collections.abc import Callable

import pytest

from kiln.errors import KilnWarning
from kiln.pipeline.isolate import IsolatedFailure, run_isolated


def _pid_and_sum(a: int, b: int, progress: Callable[[str], None]) -> tuple[int, int]:
    progress("adding")
    progress("done")
    return os.getpid(), a + b


def _raises(progress: Callable[[str], None]) -> None:
    raise ValueError("the calibration set is empty")


def _killed(progress: Callable[[str], None]) -> None:
    progress("about to be killed")
    os.kill(os.getpid(), signal.SIGKILL)


def _warns(progress: Callable[[str], None]) -> int:
    warnings.warn("3 of 4 weighted ops are convolutions", KilnWarning, stacklevel=1)
    return 1


def test_the_call_runs_in_another_process_and_its_progress_reaches_the_caller_in_order() -> None:
    lines: list[str] = []
    pid, total = run_isolated(_pid_and_sum, 2, 3, progress=lines.append)
    assert total == 5 and pid != os.getpid()
    assert lines == ["adding", "done"]


def test_an_exception_in_the_child_becomes_one_line() -> None:
    with pytest.raises(IsolatedFailure, match=r"^ValueError: the calibration set is empty$"):
        run_isolated(_raises)


def test_a_child_killed_outright_fails_the_call_not_the_caller() -> None:
    lines: list[str] = []
    with pytest.raises(IsolatedFailure, match=r"killed by SIGKILL .*out of memory"):
        run_isolated(_killed, progress=lines.append)
    assert lines == ["about to be killed"]  # what it said before it died still arrived


def test_warnings_raised_in_the_child_are_raised_in_the_caller() -> None:
    with pytest.warns(KilnWarning, match="weighted ops are convolutions"):
        assert run_isolated(_warns) == 1
