"""report.html in a real headless browser (Debian's chromium, installed by ``make test``): it
loads offline with no console errors, fetches nothing, and every plot is drawn."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from kiln.report.html import render_html
from kiln.results import Results
from tests.bench.synthetic import synthetic_results

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium: `make test` installs it (apt-get)"),
]
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
)


def _chromium(page: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    return subprocess.run(
        [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def console_messages(stderr: str) -> list[str]:
    """What the page wrote to its console (JavaScript errors and console.* calls)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_console_check_catches_a_script_error(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><script>throw new Error('kiln-probe')</script></body></html>")
    run = _chromium(page, tmp_path, "--dump-dom")
    assert any("kiln-probe" in m for m in console_messages(run.stderr))


def _check_page(page: Path, tmp_path: Path, plots: dict[str, int]) -> str:
    html = page.read_text()
    # Self-contained: no script, stylesheet, image or font is fetched from anywhere.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "@import" not in html and "url(" not in html
    run = _chromium(page, tmp_path, "--dump-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    assert console_messages(run.stderr) == []
    dom = run.stdout
    for kind, count in plots.items():
        assert len(re.findall(rf'<svg[^>]*data-plot="{kind}"', dom)) == count, kind
    assert len(re.findall(r'<rect class="bar"', dom)) > 0
    shot = tmp_path / "report.png"
    run = _chromium(page, tmp_path, f"--screenshot={shot}", "--window-size=1400,2400")
    assert run.returncode == 0 and shot.stat().st_size > 20_000  # a blank page is a few KB
    return dom


def test_synthetic_report_renders_every_plot(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_html(synthetic_results()))
    dom = _check_page(page, tmp_path, {"latency": 1, "speedup": 1, "accuracy": 1, "sweep": 1})
    assert "onnxruntime-fp32" in dom and "Test CPU" in dom


@pytest.mark.slow
def test_real_report_renders_offline(tmp_path: Path, tiny_results: tuple[Results, Path]) -> None:
    _, folder = tiny_results
    # Two batches: a latency and a speed-up plot each, one accuracy plot, one sweep.
    _check_page(folder / "report.html", tmp_path, {"latency": 2, "speedup": 2, "accuracy": 1, "sweep": 1})
