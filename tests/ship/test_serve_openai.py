"""``kiln serve`` for causal LMs: the OpenAI-compatible API as the official ``openai`` client and raw
HTTP see it, on a tiny Llama built here (onnxruntime and openvino at fp32).

Most tests run the app in this process (uvicorn on a thread, a free port), so the engine's state
can be read; one starts ``kiln serve`` as a subprocess on two artifacts. The reference is kiln's
own ``kiln.decoding.generate`` on the same artifact: greedy requests must give its tokens. Where a
test needs a sequence held mid-generation (a full queue, a client that leaves), its sessions are
wrapped in a gate that lets the runtime step only when the test says so; no wall-clock asserts.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiln.decoding import DecodeSession, generate, session_for

openai = pytest.importorskip("openai", reason="needs the openai client (the dev extra)")
pytest.importorskip("uvicorn", reason="needs the serve extra: pip install 'kiln[serve]' -c constraints.txt")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402 - after the skips

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ("onnxruntime", "openvino")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}<<SYS>>{{ message['content'] | trim }}<</SYS>>\n"
    "{% elif message['role'] == 'user' %}[INST] {{ message['content'] | trim }} [/INST]"
    "{% elif message['role'] == 'assistant' %} {{ message['content'] | trim }}{{ eos_token }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %} {% endif %}"
)
PROMPTS = ("def main():", "import os\n", "class Counter:", "for line in")
WAIT = 60  # seconds any wait may take on a busy machine before the test fails


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """build/lm/: a tiny Llama (GQA, with a chat template) built for onnxruntime and openvino at fp32."""
    from transformers import AutoTokenizer

    from kiln.config import parse_config
    from kiln.pipeline.build import build
    from kiln.targets import availability
    from tests.generative.models import tiny_llama_folder

    wanted = [t for t in TARGETS if availability(t).build]
    if not wanted:
        pytest.skip("neither onnxruntime nor openvino can build here")
    root = tmp_path_factory.mktemp("openai")
    tiny_llama_folder(root / "model")
    tokenizer = AutoTokenizer.from_pretrained(root / "model")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(root / "model")
    data = {
        "model": {
            "name": "lm",
            "source": "hf:model",
            "dims": {"sequence": {"min": 1, "max": 16}, "past": {"min": 0, "max": 63}},
        },
        "generation": {"new_tokens": 4, "heldout_tokens": 32},
        "target": [{"name": t} for t in wanted],
    }
    results = build(parse_config(data, root), root / "build")
    failed = [f"{r.target.key}: {r.error}" for r in results if r.exit_code]
    assert not failed, failed
    return root / "build" / "lm"


def _artifact(lm: Path, target: str = "onnxruntime") -> Path:
    folder = lm / f"{target}-fp32"
    if not folder.is_dir():
        pytest.skip(f"{target} was not built here")
    return folder


def reference(folder: Path, ids: list[int], new: int, ignore_eos: bool = False) -> list[int]:
    """kiln's own greedy tokens on the artifact, ending at the EOS as the server does."""
    from kiln.targets.opening import artifact_tokenizer, open_session

    eos = () if ignore_eos else artifact_tokenizer(folder).eos_ids
    with open_session(folder) as session:
        return list(generate(session, ids, new, eos=eos))


def tokenizer_of(folder: Path) -> Any:
    from kiln.targets.opening import artifact_tokenizer

    return artifact_tokenizer(folder)


# ---- an in-process server ----


class Gate(threading.Semaphore):
    """Permits for the runtime's steps, counting those taken."""

    def __init__(self) -> None:
        super().__init__(0)
        self.taken = 0

    def take(self) -> None:
        assert self.acquire(timeout=WAIT), "the test never opened the gate"
        self.taken += 1


class Gated(DecodeSession):
    """A session that steps only when the gate lets it (one permit a feed)."""

    def __init__(self, inner: DecodeSession, gate: Gate) -> None:
        super().__init__(inner.sig)
        self.inner, self.gate = inner, gate

    def _step(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        self.gate.take()
        return self.inner.feed(ids[0].tolist())[None]

    def _reset(self) -> None:
        self.inner.reset()

    def close(self) -> None:
        self.inner.close()


class GatedPipe:
    """A ContinuousBatchingPipeline whose steps wait for the gate (one permit a step)."""

    def __init__(self, inner: Any, gate: Gate) -> None:
        self.inner, self.gate = inner, gate

    def step(self) -> None:
        self.gate.take()
        self.inner.step()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class Live:
    port: int
    models: dict[str, Any]
    metrics: Any
    server: Any

    def stop(self) -> None:
        self.server.should_exit = True

    def client(self) -> Any:
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="none", max_retries=0, timeout=WAIT)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"null")
        finally:
            conn.close()

    def sample(self, name: str, **labels: str) -> float:
        body, _ = self.metrics.render()
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
        return 0.0

    def engine(self, name: str = "lm") -> Any:
        return self.models[name].engine


@contextlib.contextmanager
def live(
    folders: dict[str, Path], max_active: int = 8, max_queue: int = 8, gate: Gate | None = None, engine: str = "kiln"
) -> Iterator[Live]:
    """The OpenAI app on uvicorn in a thread, on a free port; the models closed on the way out.
    ``engine``: kiln's StepScheduler, or ``openvino-genai`` (its pipeline's steps gated)."""
    import uvicorn

    from kiln.manifest import Manifest
    from kiln.serve.app import Health
    from kiln.serve.engine import EngineSettings, StepScheduler
    from kiln.serve.llm import GenerativeModel, create_openai_app, open_engine
    from kiln.serve.metrics import GenerationMetrics
    from kiln.serve.server import ServeSettings, bind, limits
    from kiln.serve.wire import protocol_class
    from kiln.targets.base import RunOptions
    from kiln.targets.opening import open_runner

    manifests = {name: Manifest.read(folder) for name, folder in folders.items()}
    metrics = GenerationMetrics([(n, m.target, m.precision) for n, m in manifests.items()])
    models = {}
    for name, folder in folders.items():
        manifest, tokenizer = manifests[name], tokenizer_of(folder)
        if engine != "kiln":
            settings = EngineSettings(max_active, max_queue, 1, engine)
            started = open_engine(None, manifest, tokenizer, settings, metrics.observer(name), folder)
            if gate is not None:
                started.pipe = GatedPipe(started.pipe, gate)  # type: ignore[attr-defined]
            models[name] = GenerativeModel(name, folder, manifest, None, tokenizer, started, 0, engine)
            continue
        runner = open_runner(folder, RunOptions(threads=1), manifest)

        def new_session(runner: Any = runner, sig: Any = manifest.signature) -> DecodeSession:
            session = session_for(runner, sig)
            return session if gate is None else Gated(session, gate)

        engine = StepScheduler(new_session, tokenizer, max_active, max_queue, metrics.observer(name))
        models[name] = GenerativeModel(name, folder, manifest, runner, tokenizer, engine, 0)
    limit = limits(ServeSettings(max_body_mb=0.05))
    app = create_openai_app(models, metrics, limit, Health(ready=True), 5)
    sock = bind("127.0.0.1", 0)
    config = uvicorn.Config(
        app,
        http=protocol_class(metrics, limit.max_head),
        lifespan="on",
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    until(lambda: server.started, "the server started")
    try:
        yield Live(sock.getsockname()[1], models, metrics, server)
    finally:
        if gate is not None:
            gate.release(1000)  # nothing may stay blocked
        server.should_exit = True
        thread.join(WAIT)
        sock.close()


def until(condition: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"not within {WAIT} s: {what}"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def served(lm: Path) -> Iterator[Live]:
    with live({"lm": _artifact(lm)}) as server:
        yield server


# ---- the openai client ----


def test_models_are_listed_by_their_id(served: Live) -> None:
    listed = served.client().models.list()
    assert [m.id for m in listed.data] == ["lm"]
    assert served.client().models.retrieve("lm").id == "lm"


@pytest.mark.parametrize("stream", [False, True])
def test_a_greedy_completion_is_kilns_own_generation(served: Live, stream: bool) -> None:
    folder, tok = served.models["lm"].folder, served.models["lm"].tokenizer
    client = served.client()
    for prompt in PROMPTS[:2]:
        ids = tok.encode(prompt)
        tokens = reference(folder, ids, 8)
        kw: dict[str, Any] = {"model": "lm", "prompt": prompt, "max_tokens": 8, "temperature": 0}
        if stream:
            chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
            text = "".join(c.choices[0].text for c in chunks if c.choices)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
            usage = chunks[-1].usage
            assert not chunks[-1].choices and usage is not None  # the usage chunk comes last
            assert finish == ["length" if len(tokens) == 8 and tokens[-1] not in tok.eos_ids else "stop"]
        else:
            done = client.completions.create(**kw)
            text, usage = done.choices[0].text, done.usage
            assert done.choices[0].finish_reason == ("stop" if tokens[-1] in tok.eos_ids else "length")
        assert text == tok.decode(tokens)
        assert (usage.prompt_tokens, usage.completion_tokens) == (len(ids), len(tokens))
        assert usage.total_tokens == len(ids) + len(tokens)


@pytest.mark.parametrize("stream", [False, True])
def test_a_greedy_chat_goes_through_the_chat_template(served: Live, stream: bool) -> None:
    folder, tok = served.models["lm"].folder, served.models["lm"].tokenizer
    messages = [{"role": "user", "content": "def main():"}]
    ids = tok.encode_chat(messages)
    tokens = reference(folder, ids, 6)
    client = served.client()
    kw: dict[str, Any] = {"model": "lm", "messages": messages, "max_completion_tokens": 6, "temperature": 0}
    if stream:
        chunks = list(client.chat.completions.create(**kw, stream=True))
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    else:
        done = client.chat.completions.create(**kw)
        text = done.choices[0].message.content
        assert done.choices[0].message.role == "assistant"
        assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (len(ids), len(tokens))
    assert text == tok.decode(tokens)


def test_a_stop_string_ends_the_text_before_it(served: Live) -> None:
    tok = served.models["lm"].tokenizer
    client = served.client()
    kw: dict[str, Any] = {"model": "lm", "prompt": "def main():", "temperature": 0, "extra_body": {"ignore_eos": True}}
    whole = client.completions.create(**kw, max_tokens=12).choices[0].text
    assert len(whole) >= 6, whole
    stop = whole[3:5]
    expected = whole[: whole.find(stop)]
    for stream in (False, True):
        if stream:
            chunks = list(client.completions.create(**kw, max_tokens=12, stop=[stop, "\x00never"], stream=True))
            text, finish = "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0].finish_reason
        else:
            done = client.completions.create(**kw, max_tokens=12, stop=stop)
            text, finish = done.choices[0].text, done.choices[0].finish_reason
        assert (text, finish) == (expected, "stop")
    assert tok is not None


def test_the_same_seed_samples_the_same_text(served: Live) -> None:
    client = served.client()
    kw: dict[str, Any] = {"model": "lm", "prompt": "import", "max_tokens": 10, "temperature": 1.0, "top_p": 0.9}
    first = client.completions.create(**kw, seed=7).choices[0].text
    assert client.completions.create(**kw, seed=7).choices[0].text == first


def test_concurrent_streams_each_get_the_tokens_they_get_alone(served: Live) -> None:
    folder, tok = served.models["lm"].folder, served.models["lm"].tokenizer
    alone = {p: tok.decode(reference(folder, tok.encode(p), 10, ignore_eos=True)) for p in PROMPTS}
    client = served.client()

    def stream(prompt: str) -> str:
        chunks = client.completions.create(
            model="lm", prompt=prompt, max_tokens=10, temperature=0, stream=True, extra_body={"ignore_eos": True}
        )
        return "".join(c.choices[0].text for c in chunks)

    with ThreadPoolExecutor(len(PROMPTS) * 2) as pool:
        got = list(pool.map(stream, PROMPTS * 2))
    assert got == [alone[p] for p in PROMPTS * 2]
    assert served.sample("kiln_time_to_first_token_seconds_count", model="lm") >= len(PROMPTS) * 2
    assert served.sample("kiln_inter_token_seconds_count", model="lm") >= len(PROMPTS) * 2 * 9


# ---- errors: OpenAI's shape, by status ----


def _error(status: int, body: Any, param: str | None = None) -> str:
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["param"] == param
    return body["error"]["message"]


def test_each_bad_request_is_a_400_in_openais_shape(served: Live) -> None:
    post = lambda body: served.request("POST", "/v1/completions", body)  # noqa: E731
    status, body = post(b"{not json")
    assert status == 400 and "not JSON" in _error(status, body)
    status, body = post(json.dumps({"model": "lm", "prompt": "hi", "max_tokens": "8"}).encode())
    assert status == 400 and "must be an integer" in _error(status, body, "max_tokens")
    status, body = post(json.dumps({"model": "lm", "prompt": "hi", "temperature": 3}).encode())
    assert status == 400 and "[0, 2]" in _error(status, body, "temperature")
    status, body = post(json.dumps({"model": "lm", "prompt": "hi", "n": 2}).encode())
    assert status == 400 and "only be 1" in _error(status, body, "n")
    status, body = post(json.dumps({"model": "lm", "prompt": "hi", "stop": 3}).encode())
    assert status == 400 and _error(status, body, "stop")
    status, body = post(json.dumps({"model": "lm", "prompt": "hi", "max_tokens": 200}).encode())
    message = _error(status, body, "max_tokens")
    assert status == 400 and "this artifact's context is 64 (dims.past.max + 1)" in message
    status, body = served.request("POST", "/v1/chat/completions", json.dumps({"model": "lm", "messages": []}).encode())
    assert status == 400 and _error(status, body, "messages")
    assert body["error"]["type"] == "invalid_request_error"


def test_an_unknown_model_is_a_404_and_an_oversized_body_a_413(served: Live) -> None:
    with pytest.raises(openai.NotFoundError, match="'gpt-4' is not served here"):
        served.client().completions.create(model="gpt-4", prompt="hi", max_tokens=2)
    status, body = served.request("POST", "/v1/completions", b'{"model": "lm", "prompt": "' + b"a" * 60_000 + b'"}')
    assert status == 413 and "at most" in _error(status, body) and body["error"]["code"] == "request_too_large"
    status, body = served.request("GET", "/v1/nothing")
    assert status == 404 and "no such route" in _error(status, body)
    assert served.sample("kiln_requests_total", endpoint="completions", status="413") == 1


# ---- the scheduler: a full queue, a client that leaves ----


def test_a_full_queue_is_a_429_and_a_client_that_leaves_cancels_its_sequence(lm: Path) -> None:
    gate = Gate()
    with live({"lm": _artifact(lm)}, max_active=1, max_queue=1, gate=gate) as server:
        engine = server.engine()
        body = json.dumps({"model": "lm", "prompt": "def", "max_tokens": 30, "stream": True, "ignore_eos": True})
        first = _open(server.port, body)  # holds the one active slot, stuck in its prefill
        until(lambda: engine.state()["active"] == 1, "the first request decoding")
        waiting = _open(server.port, body.replace("def", "class"))
        until(lambda: engine.state()["queued"] == 1, "the second request queued")
        status, refused = server.request("POST", "/v1/completions", body.encode())
        assert status == 429 and "--max-active" in _error(status, refused)
        assert refused["error"]["type"] == "rate_limit_error"
        assert server.sample("kiln_queue_depth", model="lm") == 1
        assert server.sample("kiln_active_sequences", model="lm") == 1

        waiting.close()  # leaves while queued: cancelled at once, before it ever takes a slot
        until(lambda: server.sample("kiln_generations_total", model="lm", reason="cancelled") == 1, "one cancelled")
        assert engine.state()["queued"] == 0
        gate.release(1)  # the first one's prefill: its first token
        reader = first.makefile("rb")
        assert reader.readline().startswith(b"HTTP/1.1 200")  # its stream has begun
        until(lambda: gate.taken == 1, "the prefill run")
        reader.close()
        first.close()  # leaves mid-stream, while its next step waits for the gate
        cancelled = lambda: server.sample("kiln_generations_total", model="lm", reason="cancelled")  # noqa: E731
        # Marked, to leave at its next turn (its step waits at the gate), or gone already (the mark
        # came before its turn).
        until(lambda: engine.state()["cancelled"] == 1 or cancelled() == 2, "the sequence marked cancelled")
        gate.release(100)
        until(lambda: server.sample("kiln_generations_total", model="lm", reason="cancelled") == 2, "two cancelled")
        until(lambda: engine.state()["active"] == 0, "the engine idle")
        assert server.sample("kiln_generations_total", model="lm", reason="length") == 0
        assert server.sample("kiln_generation_tokens_total", model="lm") < 30


def test_a_client_that_leaves_a_request_that_does_not_stream_cancels_it(lm: Path) -> None:
    gate = Gate()
    with live({"lm": _artifact(lm)}, max_active=1, max_queue=1, gate=gate) as server:
        body = json.dumps({"model": "lm", "prompt": "def", "max_tokens": 30, "ignore_eos": True})
        sock = _open(server.port, body)
        until(lambda: server.engine().state()["active"] == 1, "the request decoding")
        sock.close()
        until(lambda: server.engine().state()["cancelled"] == 1, "the sequence marked cancelled")
        gate.release(100)
        until(lambda: server.sample("kiln_generations_total", model="lm", reason="cancelled") == 1, "cancelled")
        until(lambda: server.sample("kiln_requests_total", endpoint="completions", status="499") == 1, "a 499")


def test_shutdown_lets_a_stream_in_flight_finish(lm: Path) -> None:
    """As SIGTERM does: the server stops accepting and the generation in flight runs to its end."""
    gate = Gate()
    with live({"lm": _artifact(lm)}, gate=gate) as server:
        body = json.dumps({"model": "lm", "prompt": "def", "max_tokens": 5, "stream": True, "ignore_eos": True})
        sock = _open(server.port, body)
        until(lambda: server.engine().state()["active"] == 1, "the request decoding")
        server.stop()  # uvicorn's graceful shutdown, as on SIGTERM
        gate.release(100)
        reader = sock.makefile("rb")
        lines = reader.read().split(b"\n")
        sock.close()
    events = [json.loads(line[6:]) for line in lines if line.startswith(b"data: {")]
    assert lines.count(b"data: [DONE]\r") + lines.count(b"data: [DONE]") == 1
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    assert server.sample("kiln_generations_total", model="lm", reason="length") == 1


def _open(port: int, body: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    data = body.encode()
    head = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    sock.sendall(head.encode() + data)
    return sock


# ---- the engine's text: stop strings across tokens ----


class Letters:
    """A tokenizer whose token i is the i-th letter."""

    eos_ids = ()

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(ord("a") + i) for i in ids)


def test_the_text_tracker_holds_back_what_could_become_a_stop_string() -> None:
    from kiln.serve.engine import TextTracker

    tracker = TextTracker(Letters(), ["cde"])  # type: ignore[arg-type]
    assert tracker.add(0) == ("a", False)
    assert tracker.add(1) == ("b", False)
    assert tracker.add(2) == ("", False)  # "c" may begin "cde"
    assert tracker.add(3) == ("", False)
    assert tracker.add(4) == ("", True)  # "cde": cut, never shown
    tracker = TextTracker(Letters(), ["cde"])  # type: ignore[arg-type]
    assert [tracker.add(i)[0] for i in (0, 2, 3)] == ["a", "", ""]
    assert tracker.add(5) == ("cdf", False)  # "cdf" can no longer become "cde"
    assert tracker.flush() == ""


# ---- the command ----


def test_kiln_serve_answers_each_of_two_causal_lms_by_its_name(lm: Path, tmp_path: Path) -> None:
    """``kiln serve A B``: each artifact's id is its folder's name; a streaming chat on each, then
    SIGTERM drains and exits 0."""
    folders = [lm / f"{t}-fp32" for t in TARGETS if (lm / f"{t}-fp32").is_dir()]
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "kiln.cli", "serve", *map(str, folders), "--port", "0", "--threads", "1"]
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    try:
        line = re.compile(r"at http://127\.0\.0\.1:(\d+)/v1 ")
        until(lambda: line.search(log.read_text()) or proc.poll() is not None, "kiln serve's startup line")
        assert proc.poll() is None, log.read_text()
        port = int(line.search(log.read_text()).group(1))  # type: ignore[union-attr]
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=WAIT)
        assert sorted(m.id for m in client.models.list().data) == sorted(f.name for f in folders)
        messages = [{"role": "user", "content": "def main():"}]
        for folder in folders:
            tok = tokenizer_of(folder)
            expected = tok.decode(reference(folder, tok.encode_chat(messages), 5))
            chunks = client.chat.completions.create(
                model=folder.name, messages=messages, max_tokens=5, temperature=0, stream=True
            )
            assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0, log.read_text()
    assert "2 generation requests answered, 0 failed" in log.read_text() or len(folders) == 1
