"""``kiln serve`` on OpenVINO GenAI's continuous batching (:mod:`kiln.serve.genai_engine`): the
openvino artifact of tests/ship/test_serve_openai.py's tiny Llama served by the
``openvino-genai`` engine, asked through the ``openai`` client. The reference is kiln's own greedy
generation on the same artifact (its OpenVINO runner); where a test needs the pipeline held, its
``step()`` waits for a gate, as the kiln engine's sessions do there. No wall-clock asserts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.ship import test_serve_openai as base
from tests.ship.test_serve_openai import Gate, Live, _artifact, _error, _open, live, lm, reference, until

pytest.importorskip("openvino_genai", reason="needs openvino-genai (the openvino extra)")

ENGINE = "openvino-genai"
__all__ = ["lm"]  # the module's fixture, shared


@pytest.fixture(scope="module")
def genai(lm: Path) -> Iterator[Live]:
    with live({"lm": _artifact(lm, "openvino")}, engine=ENGINE) as server:
        yield server


def test_auto_picks_the_runtime_s_batching_for_an_openvino_genai_folder(lm: Path) -> None:
    from kiln.errors import ConfigError
    from kiln.manifest import Manifest
    from kiln.serve.llm import engine_for

    folder = _artifact(lm, "openvino")
    assert engine_for(folder, Manifest.read(folder)) == ENGINE
    assert engine_for(folder, Manifest.read(folder), "kiln") == "kiln"
    single = Manifest.read(folder).model_copy(deep=True)  # built with dims.batch.max = 1
    single.signature.dims["batch"] = single.signature.dims["batch"].model_copy(update={"min": 1, "max": 1})
    assert engine_for(folder, single) == "kiln"
    with pytest.raises(ConfigError, match=r"dims\.batch\.max = 1"):
        engine_for(folder, single, ENGINE)
    other = lm / "onnxruntime-fp32"
    if other.is_dir():
        assert engine_for(other, Manifest.read(other)) == "kiln"
        with pytest.raises(ConfigError, match="not an OpenVINO GenAI folder"):
            engine_for(other, Manifest.read(other), ENGINE)


def test_the_model_card_names_its_engine(genai: Live) -> None:
    status, card = genai.request("GET", "/v1/models/lm")
    assert status == 200 and card["engine"] == ENGINE and card["target"] == "openvino"


@pytest.mark.parametrize("stream", [False, True])
def test_a_greedy_completion_is_kilns_own_generation(genai: Live, stream: bool) -> None:
    base.test_a_greedy_completion_is_kilns_own_generation(genai, stream)


@pytest.mark.parametrize("stream", [False, True])
def test_a_greedy_chat_is_kilns_own_generation(genai: Live, stream: bool) -> None:
    base.test_a_greedy_chat_goes_through_the_chat_template(genai, stream)


def test_a_stop_string_ends_the_text_before_it(genai: Live) -> None:
    base.test_a_stop_string_ends_the_text_before_it(genai)


def test_the_same_seed_samples_the_same_text(genai: Live) -> None:
    base.test_the_same_seed_samples_the_same_text(genai)


def test_eight_concurrent_requests_are_batched_and_each_gets_its_tokens_alone(lm: Path) -> None:
    """Eight prompts of different lengths asking for different lengths, sent at once while the
    pipeline is held: they decode together (fewer pipeline steps than tokens) and each stream is
    the text kiln's greedy generation gives that prompt alone."""
    gate = Gate()
    with live({"lm": _artifact(lm, "openvino")}, engine=ENGINE, gate=gate) as server:
        folder, tok = server.models["lm"].folder, server.models["lm"].tokenizer
        prompts = [base.PROMPTS[i % 4] * (1 + i // 4) for i in range(8)]
        wanted = [4 + i for i in range(8)]
        alone = [
            tok.decode(reference(folder, tok.encode(p), n, ignore_eos=True))
            for p, n in zip(prompts, wanted, strict=True)
        ]
        client = server.client()

        def stream(job: tuple[str, int]) -> str:
            chunks = client.completions.create(
                model="lm",
                prompt=job[0],
                max_tokens=job[1],
                temperature=0,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            return "".join(c.choices[0].text for c in chunks)

        with ThreadPoolExecutor(8) as pool:
            futures = pool.map(stream, zip(prompts, wanted, strict=True))
            engine = server.engine()
            until(lambda: sum(engine.state()[k] for k in ("active", "queued")) == 8, "eight requests in")
            gate.release(1000)
            got = list(futures)
        assert got == alone
        assert gate.taken < sum(wanted) // 2, "the requests decoded one at a time"
        assert server.sample("kiln_generations_total", model="lm", reason="length") == 8


def test_a_full_queue_is_a_429_and_a_client_that_leaves_is_dropped_from_the_pipeline(lm: Path) -> None:
    gate = Gate()
    with live({"lm": _artifact(lm, "openvino")}, max_active=1, max_queue=1, gate=gate, engine=ENGINE) as server:
        engine = server.engine()
        body = json.dumps({"model": "lm", "prompt": "def", "max_tokens": 30, "stream": True, "ignore_eos": True})
        first = _open(server.port, body)  # holds the one slot: its first step waits at the gate
        until(lambda: engine.state()["active"] == 1, "the first request in the pipeline")
        waiting = _open(server.port, body.replace("def", "class"))
        until(lambda: engine.state()["queued"] == 1, "the second request queued")
        status, refused = server.request("POST", "/v1/completions", body.encode())
        assert status == 429 and "--max-active" in _error(status, refused)
        assert server.sample("kiln_queue_depth", model="lm") == 1

        waiting.close()  # leaves while queued: never reaches the pipeline
        until(lambda: server.sample("kiln_generations_total", model="lm", reason="cancelled") == 1, "one cancelled")
        gate.release(1)  # the first one's first step: its prefill and first token
        reader = first.makefile("rb")
        assert reader.readline().startswith(b"HTTP/1.1 200")
        until(lambda: gate.taken == 1, "the first step run")
        reader.close()
        first.close()  # leaves mid-stream, while the next step waits at the gate
        cancelled = lambda: server.sample("kiln_generations_total", model="lm", reason="cancelled")  # noqa: E731
        until(lambda: engine.state()["cancelled"] == 1 or cancelled() == 2, "the sequence marked cancelled")
        gate.release(100)
        until(lambda: cancelled() == 2, "two cancelled")
        until(lambda: engine.state()["active"] == 0, "the engine idle")
        until(lambda: not engine.pipe.has_non_finished_requests(), "the request dropped from the pipeline")
        assert server.sample("kiln_generations_total", model="lm", reason="length") == 0
        assert server.sample("kiln_generation_tokens_total", model="lm") < 30
        assert gate.taken < 30


def test_shutdown_lets_a_request_in_flight_finish(lm: Path) -> None:
    gate = Gate()
    with live({"lm": _artifact(lm, "openvino")}, gate=gate, engine=ENGINE) as server:
        body = json.dumps({"model": "lm", "prompt": "def", "max_tokens": 5, "stream": True, "ignore_eos": True})
        sock = _open(server.port, body)
        until(lambda: server.engine().state()["active"] == 1, "the request decoding")
        server.stop()
        gate.release(100)
        lines = sock.makefile("rb").read().split(b"\n")
        sock.close()
    events: list[Any] = [json.loads(line[6:]) for line in lines if line.startswith(b"data: {")]
    assert events[-1]["choices"][0]["finish_reason"] == "length"
