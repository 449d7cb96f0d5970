"""Generation benchmarks of a causal LM: a tiny Llama built with ``kiln.pipeline.build`` (eager + ONNX Runtime
fp32) and benchmarked with tiny settings (structure of results.json, the reports, ``kiln compare``);
and the pieces on synthetic figures: prompts that fit, the roofline's terms, the bandwidth cache.
No wall-clock value is asserted on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from kiln.bench import bandwidth as bw
from kiln.bench.flops import ProgramWeights
from kiln.bench.generation import (
    add_rooflines,
    fitting_prompts,
    generation_figures,
    kv_bytes_per_position,
    mean_context,
    weights_read,
)
from kiln.bench.protocol import RoundAnswer
from kiln.bench.run import _check_batches
from kiln.cli import main
from kiln.config import BenchSettings
from kiln.errors import ConfigError
from kiln.manifest import FileEntry, GenerationResult
from kiln.report import parse_results, schema
from kiln.report.compare import compare_results
from kiln.report.console import print_results
from kiln.report.html import render_html
from kiln.report.markdown import render_markdown
from kiln.results import Bandwidth, MeasuredCell, Results
from kiln.spec import Signature
from tests.bench.synthetic import QUIET, cell, latency, manifest, synthetic_results
from tests.conftest import to_toml

PROMPTS, NEW, GENERATIONS = [4, 16, 200], 6, 2  # 200 does not fit the tiny model's context of 128
SEEDED_GBPS = 10.0

SIG = {
    "inputs": [
        {"name": "input_ids", "shape": ["batch", "sequence"], "dtype": "int64", "range": [0, 99]},
        {"name": "position_ids", "shape": ["batch", "sequence"], "dtype": "int64", "range": [0, 63]},
        {"name": "past.0.key", "shape": ["batch", 2, "past", 8]},
        {"name": "past.0.value", "shape": ["batch", 2, "past", 8]},
    ],
    "dims": {
        "batch": {"min": 1, "max": 1},
        "sequence": {"min": 1, "opt": 16, "max": 32},
        "past": {"min": 0, "opt": 16, "max": 63},
    },
    "outputs": ["logits", "present.0.key", "present.0.value"],
    "cache": {"layers": 1, "kv_heads": 2, "head_dim": 8, "vocab_size": 100, "max_positions": 64},
}


def _settings(**kw: Any) -> BenchSettings:
    return BenchSettings(prompt_tokens=PROMPTS, new_tokens=NEW, generations=GENERATIONS, **kw).resolve(1, True)


def _generative_manifest(key: str, files: dict[str, int] | None = None) -> Any:
    gate = manifest(key).gate.model_copy(update={"generation": _gate_result()})
    entries = [FileEntry(path=p, sha256="0" * 64, bytes=n) for p, n in (files or {"model.onnx": 3000}).items()]
    return manifest(
        key,
        signature=Signature.from_dict(SIG),
        gate=gate,
        files=entries,
        size_bytes=sum(e.bytes for e in entries),
    )


def _gate_result() -> GenerationResult:
    return GenerationResult.model_validate(
        {
            "passed": True,
            "tolerance": {},
            "prompts": 3,
            "new_tokens": 8,
            "exact": True,
            "token_agreement": 1.0,
            "first_divergence": None,
            "forced_top1": 1.0,
            "min_cosine": 1.0,
            "mean_cosine": 1.0,
            "step_cosine": [1.0],
            "heldout_tokens": 100,
            "perplexity_eager": 10.0,
            "perplexity": 10.01,
            "perplexity_increase": 0.001,
            "breaches": [],
            "worst": "tokens exact, ppl +0.10%, cos 1.00000",
            "per_prompt": [],
        }
    )


def _generative_cell(key: str, itl_ms: float, ttft_ms: float) -> MeasuredCell:
    """A cell as the harness makes it from timings: ITL ``itl_ms``, TTFT ``ttft_ms`` (+ 1 ms per 16 tokens)."""
    settings = _settings()
    lengths = [4, 16]
    ttft = {n: [(ttft_ms + n / 16) / 1e3] * 3 for n in lengths}
    itl = {n: [itl_ms / 1e3] * 3 * (NEW - 1) for n in lengths}
    figures = generation_figures(ttft, itl, settings, ["prompt of 200 tokens left out"])
    steps = [s for n in lengths for s in itl[n]]
    lat = latency(itl_ms, samples=len(steps), throughput=1e3 / itl_ms)
    return cell(key, 1, itl_ms, latency=lat, generation=figures, accuracy=None)


def generative_results(itl: float = 1.0, ttft: float = 2.0) -> Results:
    cells = [_generative_cell("eager-fp32", 4.0, 8.0), _generative_cell("onnxruntime-fp32", itl, ttft)]
    manifests = {c.key: _generative_manifest(c.key) for c in cells}
    add_rooflines(cells, manifests, {}, Bandwidth(gbps=SEEDED_GBPS, method="seeded"))
    return synthetic_results(
        model="tinylm", settings=_settings(), bandwidth=Bandwidth(gbps=SEEDED_GBPS, method="seeded"), cells=cells
    )


# --- the pieces, on synthetic figures ---------------------------------------------------------


def test_settings_resolve_generation_fields_only_for_a_causal_lm() -> None:
    plain = BenchSettings(new_tokens=8).resolve(2)
    assert plain.new_tokens is None and "new_tokens" not in plain.model_dump(by_alias=True)
    lm = BenchSettings().resolve(2, generative=True)
    assert (lm.prompt_tokens, lm.new_tokens, lm.generations) == ([32, 128], 64, 5)


def test_prompts_that_do_not_fit_the_context_are_left_out_with_a_note() -> None:
    fit, notes = fitting_prompts(_generative_manifest("onnxruntime-fp32"), _settings())
    assert fit == [4, 16]
    assert len(notes) == 1 and "200 tokens left out" in notes[0] and "context is 64" in notes[0]
    assert fitting_prompts(None, BenchSettings().resolve(1)) == (None, [])
    # A prompt that fills the context exactly fits: the last new token is never fed.
    exact = BenchSettings(prompt_tokens=[64 - NEW + 1], new_tokens=NEW).resolve(1, True)
    assert fitting_prompts(_generative_manifest("x-fp32"), exact)[0] == [64 - NEW + 1]


def test_causal_lm_bench_refuses_batches_and_throughput_mode() -> None:
    sig = Signature.from_dict(SIG)
    _check_batches(sig, _settings())
    for bad in (_settings(batches=[1, 2]), _settings(mode="throughput")):
        with pytest.raises(ConfigError, match="one sequence"):
            _check_batches(sig, bad)


def test_generation_figures_summarize_ttft_and_inter_token_latency() -> None:
    ttft = {4: [0.002, 0.004], 16: [0.003, 0.005]}
    itl = {4: [0.001] * 10, 16: [0.002] * 10}
    gen = generation_figures(ttft, itl, _settings(), [])
    assert [p.prompt_tokens for p in gen.prompts] == [4, 16] and gen.generations == 2
    first = gen.prompts[0]
    assert first.ttft.samples == 2 and first.ttft.p50_ms == pytest.approx(3.0)
    assert first.prefill_tokens_per_s == pytest.approx(4 / 0.003)
    assert first.tokens_per_s == pytest.approx(1000) and gen.prompts[1].itl_p50_ms == pytest.approx(2.0)
    assert gen.tokens_per_s == pytest.approx(20 / 0.03)


def test_roofline_counts_weights_read_and_the_kv_cache_at_the_mean_context() -> None:
    files = {"model.onnx": 5000, "tokenizer/tokenizer.json": 700}
    m = _generative_manifest("onnxruntime-fp32", files)
    assert weights_read(m, None)[0] == 5000  # the tokenizer is not read
    # At most the program's weights, less the untied embedding's share (one row read a token).
    assert weights_read(m, ProgramWeights(total_bytes=4000, gathered_bytes=1000))[0] == 3000
    assert weights_read(m, ProgramWeights(total_bytes=8000, gathered_bytes=0))[0] == 5000
    assert kv_bytes_per_position(m.signature.cache) == 2 * 1 * 2 * 8 * 4
    assert mean_context([4, 16], NEW) == pytest.approx(13.0)
    results = generative_results()
    ort = results.cells[1]
    assert isinstance(ort, MeasuredCell) and ort.generation and ort.generation.roofline
    r = ort.generation.roofline
    assert r.kv_bytes == round(128 * 13.0) and r.bytes_per_token == r.weight_bytes + r.kv_bytes
    assert r.tokens_per_s == pytest.approx(SEEDED_GBPS * 1e9 / r.bytes_per_token)
    assert r.fraction == pytest.approx(ort.generation.tokens_per_s / r.tokens_per_s)
    assert ort.generation.gate == "tokens exact, ppl +0.10%, cos 1.00000"
    assert ort.generation.perplexity_increase == pytest.approx(0.001)


def test_roofline_says_when_a_model_fits_in_the_last_level_cache() -> None:
    cells = [_generative_cell("onnxruntime-fp32", 1.0, 2.0), _generative_cell("openvino-fp32", 1.0, 2.0)]
    manifests = {
        "onnxruntime-fp32": _generative_manifest("onnxruntime-fp32"),
        "openvino-fp32": _generative_manifest("openvino-fp32", {"model.bin": 2**30}),
    }
    seeded = Bandwidth(gbps=1.0, method="seeded", last_level_cache_bytes=32 * 2**20)
    add_rooflines(cells, manifests, {}, seeded)
    small, large = (c.generation.roofline for c in cells if c.generation)
    assert small and small.in_cache and large and not large.in_cache
    results = synthetic_results(settings=_settings(), bandwidth=seeded, cells=cells)
    md = render_markdown(results)
    assert "The bytes read per token of onnxruntime-fp32 fit in the 32 MiB last-level cache" in md


def test_generative_results_validate_and_render() -> None:
    results = generative_results()
    doc = results.to_json()
    jsonschema.validate(doc, schema.results_schema())
    assert parse_results(doc).to_json() == doc
    _check_markdown(render_markdown(results))
    _check_html(render_html(results))


def test_round_answer_keeps_prompt_lengths_through_json() -> None:
    answer = RoundAnswer(seconds=[0.1], warmup_iters=1, ttft={16: [0.2]}, itl={16: [0.1]})
    assert RoundAnswer.model_validate_json(answer.model_dump_json()) == answer


def test_compare_gates_tokens_per_second_and_ttft(tmp_path: Path) -> None:
    same = compare_results(generative_results(), generative_results(), 0.1, False)
    figures = {d.metric for d in same.deltas if d.cell == "onnxruntime-fp32@b1"}
    assert {"tok/s", "ITL p50 ms", "TTFT@4 p50 ms", "TTFT@16 p50 ms"} <= figures and not same.regressions
    slower_ttft = compare_results(generative_results(), generative_results(ttft=4.0), 0.1, False)
    assert {d.metric for d in slower_ttft.regressions} == {"TTFT@4 p50 ms", "TTFT@16 p50 ms"}
    slower_decode = compare_results(generative_results(), generative_results(itl=1.5), 0.1, False)
    assert {"tok/s", "ITL p50 ms"} <= {d.metric for d in slower_decode.regressions}
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(generative_results().to_json()))
    new.write_text(json.dumps(generative_results(itl=1.5).to_json()))
    run = CliRunner().invoke(main, ["compare", str(old), str(new)])
    assert run.exit_code == 4 and "tok/s" in run.output, run.output


def test_bench_flag_rejects_bad_prompt_lengths(tmp_path: Path) -> None:
    run = CliRunner().invoke(main, ["bench", str(tmp_path), "--prompt-tokens", "32,x"])
    assert run.exit_code != 0 and "--prompt-tokens" in run.output


def test_bandwidth_triad_reports_a_positive_rate_and_its_method() -> None:
    measured = bw.measure_bandwidth(threads=1, array_bytes=4 * 2**20, runs=2)
    assert measured.gbps > 0 and measured.threads == 1
    assert "STREAM triad" in measured.method and "torch at 1 threads" in measured.method


def test_bandwidth_is_cached_per_fingerprint_and_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls: list[int] = []

    def fake(threads: int, array_bytes: int | None = None, runs: int = 10) -> Bandwidth:
        calls.append(threads)
        return Bandwidth(threads=threads, gbps=12.5, method="fake", machine_load=QUIET)

    monkeypatch.setattr(bw, "measure_bandwidth", fake)
    fp = synthetic_results().fingerprint
    first = bw.machine_bandwidth(fp, 2)
    again = bw.machine_bandwidth(fp, 2)
    assert calls == [2] and first.gbps == again.gbps == 12.5
    assert again.cache == str(tmp_path / "kiln" / f"bandwidth-{fp.id}-t2.json")
    bw.machine_bandwidth(fp, 1)
    bw.machine_bandwidth(fp, 2, refresh=True)
    assert calls == [2, 1, 2]


# --- a real build and bench of a tiny Llama ---------------------------------------------------


def _check_markdown(md: str) -> None:
    assert "## Generation (6 new tokens, greedy, batch 1)" in md
    for column in ("TTFT@4 ms", "TTFT@16 ms", "ITL p50 ms", "ITL p99 ms", "tok/s", "of roofline", "peak RSS"):
        assert column in md
    assert "TTFT@200" not in md and "prompt of 200 tokens left out" in md
    assert "### Roofline" in md and "bytes/token" in md and "Memory bandwidth: " in md
    assert "| onnxruntime-fp32 |" in md and "## Batch 1" not in md


def _check_html(html: str) -> None:
    for plot in ("tokens", "ttft", "itl", "roofline", "perplexity"):
        assert f'data-plot="{plot}"' in html, plot
    assert 'data-plot="sweep"' not in html and "TTFT@16 ms" in html and "onnxruntime-fp32 @16" in html


@pytest.fixture(scope="module")
def lm_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[Results, Path]:
    """``kiln bench`` of a tiny Llama's kiln.toml: builds eager + onnxruntime fp32, then measures."""
    from kiln.bench.peak import PEAK_SCHEMA
    from kiln.bench.run import BenchRun, bench
    from kiln.targets import fingerprint
    from tests.generative.models import tiny_llama_folder

    folder = tmp_path_factory.mktemp("tinylm")
    tiny_llama_folder(folder / "llama")
    config = {
        "model": {"name": "tinylm", "source": "hf:llama", "task": "text-generation"},
        "generation": {"new_tokens": 4},
        "target": [{"name": "eager"}, {"name": "onnxruntime"}],
        "bench": {
            "threads": 1,
            "min_seconds": 0.1,
            "warmup_seconds": 0.01,
            "rounds": 2,
            "prompt_tokens": PROMPTS,
            "new_tokens": NEW,
            "generations": GENERATIONS,
        },
    }
    (folder / "kiln.toml").write_text(to_toml(config))
    # The machine's figures are seeded into a fresh cache: nothing is timed but the cells.
    cache = folder / "cache" / "kiln"
    cache.mkdir(parents=True)
    fp = fingerprint()
    quiet = QUIET.model_dump(mode="json", exclude_none=True)  # else a seeded figure is measured again
    peak = {"schema": PEAK_SCHEMA, "fingerprint": fp.id, "threads": 1, "fp32_gflops": 50.0, "machine_load": quiet}
    (cache / f"peak-{fp.id}-t1.json").write_text(json.dumps(peak))
    seeded = {
        "schema": bw.BANDWIDTH_SCHEMA,
        "fingerprint": fp.id,
        "threads": 1,
        "gbps": SEEDED_GBPS,
        "method": "seeded",
        "machine_load": quiet,
    }
    (cache / f"bandwidth-{fp.id}-t1.json").write_text(json.dumps(seeded))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(folder / "cache"))
        return bench(folder / "kiln.toml", BenchRun(out=folder / "build"))


@pytest.mark.slow
def test_bench_of_a_causal_lm_writes_every_generation_field(lm_results: tuple[Results, Path]) -> None:
    results, folder = lm_results
    on_disk = json.loads((folder / "results.json").read_text())
    jsonschema.validate(on_disk, schema.results_schema())
    assert on_disk == results.to_json()
    s = results.settings
    assert (s.prompt_tokens, s.new_tokens, s.generations, s.batches, s.threads) == (PROMPTS, NEW, GENERATIONS, [1], 1)
    assert results.bandwidth is not None and results.bandwidth.gbps == SEEDED_GBPS  # from the cache
    assert results.flops[1] > 0  # one decode step
    assert [c.key for c in results.cells] == ["eager-fp32", "onnxruntime-fp32"]
    for c in results.cells:
        assert isinstance(c, MeasuredCell), c.reason
        gen = c.generation
        assert gen is not None and gen.new_tokens == NEW and gen.generations >= GENERATIONS
        assert [p.prompt_tokens for p in gen.prompts] == [4, 16]
        assert len(gen.notes) == 1 and "200 tokens left out" in gen.notes[0]
        runs = sum(p.ttft.samples for p in gen.prompts)
        assert c.latency.samples == runs * (NEW - 1)  # every decode step of every timed generation
        for p in gen.prompts:
            t = p.ttft
            assert t.samples >= GENERATIONS and 0 < t.min_ms <= t.p50_ms <= t.p90_ms <= t.p99_ms <= t.max_ms
            assert p.prefill_tokens_per_s > 0 and p.tokens_per_s > 0 and p.itl_p50_ms > 0
        lat = c.latency
        assert 0 < lat.min_ms <= lat.p50_ms <= lat.p90_ms <= lat.p99_ms <= lat.max_ms
        assert gen.tokens_per_s > 0 and gen.tokens_per_s == pytest.approx(lat.throughput)
        assert c.speedup_vs_eager is not None and c.speedup_vs_eager > 0
        assert c.size_bytes and c.peak_rss_bytes > 0 and c.load_s >= 0 and c.first_inference_ms > 0
        assert gen.gate and "tokens exact" in gen.gate and gen.perplexity_increase is not None
        r = gen.roofline
        assert r is not None and 0 < r.fraction <= 1.5
        assert r.weight_bytes > 0 and r.kv_bytes > 0 and r.bytes_per_token == r.weight_bytes + r.kv_bytes
        assert r.mean_context == pytest.approx(13.0) and "10 GB/s" in r.basis
        # The weights a token reads: no more than the captured program's, less the untied embedding.
        assert r.weight_bytes < (c.size_bytes or 0)
    assert results.cells[0].speedup_vs_eager == pytest.approx(1.0)


@pytest.mark.slow
def test_bench_of_a_causal_lm_renders_reports(
    lm_results: tuple[Results, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    results, folder = lm_results
    _check_markdown((folder / "report.md").read_text())
    html = (folder / "report.html").read_text()
    _check_html(html)
    print_results(results)
    out = capsys.readouterr().out
    assert "TTFT@16" in out and "tok/s" in out and "memory bandwidth: 10 GB/s" in out
    rerender = CliRunner().invoke(main, ["report", str(folder / "results.json")])
    assert rerender.exit_code == 0, rerender.output


@pytest.mark.slow
def test_compare_of_two_causal_lm_runs(lm_results: tuple[Results, Path], tmp_path: Path) -> None:
    results, folder = lm_results
    path = folder / "results.json"
    assert CliRunner().invoke(main, ["compare", str(path), str(path)]).exit_code == 0
    slower = results.model_copy(deep=True)
    for c in slower.cells:
        assert isinstance(c, MeasuredCell) and c.generation
        c.generation.tokens_per_s /= 2
        for p in c.generation.prompts:
            p.ttft = p.ttft.model_copy(update={"p50_ms": p.ttft.p50_ms * 2})
    worse = tmp_path / "slower.json"
    worse.write_text(json.dumps(slower.to_json()))
    run = CliRunner().invoke(main, ["compare", str(path), str(worse)])
    assert run.exit_code == 4, run.output
    assert "tok/s" in run.output and "TTFT@16 p50 ms" in run.output and "REGRESSED" in run.output


@pytest.mark.browser
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs /usr/bin/chromium: `make test` installs it")
def test_generation_report_renders_in_a_browser(tmp_path: Path) -> None:
    from tests.bench.test_report_browser import _check_page

    page = tmp_path / "report.html"
    page.write_text(render_html(generative_results()))
    plots = {"tokens": 1, "ttft": 1, "itl": 1, "roofline": 1, "perplexity": 1, "sweep": 0, "latency": 0}
    dom = _check_page(page, tmp_path, plots)
    assert "onnxruntime-fp32 @16" in dom


def test_generation_benchmark_script_prints_the_table_for_notes() -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "generation.py"
    spec = importlib.util.spec_from_file_location("generation_benchmark", path)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    text = script.table(generative_results())
    assert text.splitlines()[0].startswith("| target | TTFT@4 ms | TTFT@16 ms | ITL p50 ms | ITL p99 ms | tok/s |")
    assert "| onnxruntime-fp32 |" in text and "test-cpu-2c-00000000" in text and "10 GB/s" in text
    assert "Note: prompt of 200 tokens left out." in text
