"""``kiln serve``: open the artifact, bind the port, load and probe the runner, run uvicorn.

The order puts the cheap failures first: a path that is not an artifact, a port in use (kiln
binds the socket itself, so that is one line and exit 2, not a uvicorn log), then the runtime
(exit 5 where it cannot run here). Graceful shutdown is uvicorn's: on SIGTERM or SIGINT it stops
accepting, waits for the requests in flight (the batcher keeps running them), then runs the app's
lifespan shutdown, which drains the batcher and closes the runner. uvicorn re-raises the signal
once it is done; kiln's own handler takes it, so a drained server exits 0.

The startup line is printed, and ``/v2/health/ready`` turns true, only once uvicorn has put the
socket in listening state (its startup has returned), so a client that waits for the line and
connects at once is accepted.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import logging
import signal
import socket
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.errors import ConfigError, MissingDependencyError
from kiln.manifest import Manifest
from kiln.serve.batcher import Batcher, BatchPolicy
from kiln.serve.engine import EngineSettings
from kiln.serve.model import ServedModel, artifact_folder, load_model
from kiln.serve.protocol import MB, Limits
from kiln.ship.archive import DEFAULT_LIMITS as ARCHIVE_DEFAULTS
from kiln.ship.archive import Limits as ArchiveLimits
from kiln.targets.opening import artifact_manifest

SERVE_PACKAGES = ("uvicorn", "starlette", "prometheus_client")
GRACEFUL_SECONDS = 30  # how long in-flight requests may take to finish after SIGTERM


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int | None = None  # default: the batch dim's max
    max_delay_ms: float = 2.0  # 0: no gathering, every request runs alone
    threads: int | None = None  # the runtime's threads (None: its default)
    name: tuple[str, ...] = ()  # one per artifact; default: the manifest's model (a causal LM: its folder's name)
    max_queue: int = 256
    max_active: int = 8  # a causal LM's sequences decoding at once (each holds its KV cache)
    engine: str = "auto"  # a causal LM's engine (kiln.serve.llm.engine_for): auto, kiln or openvino-genai
    max_body_mb: float = 64.0
    max_json_mb: float = 16.0
    max_json_depth: int = 32
    max_header_kb: float = 16.0
    pubkey: Path | None = None
    archive: ArchiveLimits = ARCHIVE_DEFAULTS  # what a bundle may unpack to (as kiln verify's --max-* flags)
    verbose: bool = False


def require_serve_extra() -> None:
    missing = [name for name in SERVE_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingDependencyError(
            f"kiln serve needs {', '.join(missing)}; install the serve extra: pip install 'kiln[serve]' -c constraints.txt"
        )


def bind(host: str, port: int) -> socket.socket:
    """A bound TCP socket (uvicorn listens on it), or one line saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise ConfigError(
            f"--host {host!r} does not resolve ({err.strerror}); give an address such as 127.0.0.1"
        ) from err
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is in use by another process; choose another --port or stop that server"
            ) from err
        raise ConfigError(f"cannot listen on {host}:{port} ({err.strerror}); choose another --host or --port") from err
    return sock


def batch_policy(model: ServedModel, settings: ServeSettings) -> BatchPolicy:
    rows = 1
    if model.batch_dim is not None:
        most = model.batch_max()
        if settings.max_batch is not None and settings.max_batch > most:
            raise ConfigError(
                f"--max-batch {settings.max_batch} exceeds the max of the batch dim {model.batch_dim!r} ({most}) "
                "that this artifact was built for; give at most that, or rebuild with a larger dim"
            )
        rows = settings.max_batch or most
    return BatchPolicy(max_rows=rows, max_delay=settings.max_delay_ms / 1000, max_queue=settings.max_queue)


def limits(settings: ServeSettings) -> Limits:
    return Limits(
        max_body=int(settings.max_body_mb * MB),
        max_json=int(settings.max_json_mb * MB),
        max_depth=settings.max_json_depth,
        max_head=int(settings.max_header_kb * 1024),
    )


def describe(model: ServedModel, policy: BatchPolicy, settings: ServeSettings, port: int) -> str:
    """The startup line: what is served, where, and how it batches."""
    m = model.manifest
    if model.batch_dim is None:
        batching = model.batch_note
    elif not policy.gathers:
        batching = "dynamic batching off (each request runs alone)"
    else:
        batching = f"dynamic batching up to {policy.max_rows} rows within {settings.max_delay_ms:g} ms"
    threads = model.runner.info().get("threads") or settings.threads or "the runtime's default"
    return (
        f"kiln: serving {model.name} ({m.target}:{m.precision}, {model.folder}) at "
        f"http://{settings.host}:{port}/v2/models/{model.name}; {batching}; queue {policy.max_queue}, "
        f"body limit {settings.max_body_mb:g} MB (JSON {settings.max_json_mb:g} MB, {settings.max_json_depth} deep), "
        f"runtime threads: {threads}; SIGTERM or Ctrl-C drains and stops"
    )


def serve(paths: Sequence[Path], settings: ServeSettings, say: Callable[[str], None]) -> None:
    """Serve the artifacts at ``paths`` until SIGTERM or SIGINT; returns once drained. One fixed-graph
    artifact speaks KServe v2; causal LMs (one or several) speak the OpenAI-compatible API."""
    require_serve_extra()
    if settings.name and len(settings.name) != len(paths):
        raise ConfigError(
            f"{len(settings.name)} --name for {len(paths)} artifacts; give one --name per artifact, in order, or none"
        )
    with tempfile.TemporaryDirectory(prefix="kiln-serve-") as scratch:
        folders = [_unpacked(path, Path(scratch) / str(i), settings) for i, path in enumerate(paths)]
        manifests = [artifact_manifest(folder) for folder in folders]
        if any(m.signature.generative for m in manifests) or len(folders) > 1:
            names = list(settings.name) or _model_ids(paths, manifests)
            serve_generative(list(zip(names, folders, manifests, strict=True)), settings, say)
            return
        sock = bind(settings.host, settings.port)
        with sock:
            model = load_model(folders[0], settings.name[0] if settings.name else None, settings.threads)
            _run(model, sock, settings, say)


def _unpacked(path: Path, scratch: Path, settings: ServeSettings) -> Path:
    scratch.mkdir()
    return artifact_folder(path, scratch, settings.pubkey, settings.archive)


def _model_ids(paths: Sequence[Path], manifests: Sequence[Manifest]) -> list[str]:
    """Causal LMs' model ids: each folder's name (a bundle's name without .tar.gz), or
    ``<model>/<folder>`` where two share a folder name (one model's adapters: ``onnxruntime-fp32``
    in each of their build folders)."""
    names = []
    for path in paths:
        name = path.resolve().name
        for suffix in (".tar.gz", ".tgz"):
            name = name.removesuffix(suffix)
        names.append(name)
    return [f"{m.model}/{n}" if names.count(n) > 1 else n for n, m in zip(names, manifests, strict=True)]


def _run(model: ServedModel, sock: socket.socket, settings: ServeSettings, say: Callable[[str], None]) -> None:
    import uvicorn

    from kiln.serve.app import Health, create_app
    from kiln.serve.metrics import ServerMetrics
    from kiln.serve.wire import protocol_class

    policy = batch_policy(model, settings)
    metrics = ServerMetrics(model)
    batcher = Batcher(model.runner.infer, policy, model.batch_dim is not None, metrics)
    health = Health()
    limit = limits(settings)
    app = create_app(model, batcher, metrics, limit, health)
    config = uvicorn.Config(
        app,
        http=protocol_class(metrics, limit.max_head),
        h11_max_incomplete_event_size=limit.max_head,
        log_level="info" if settings.verbose else "warning",
        access_log=settings.verbose,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
    )

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started and not self.should_exit:  # listening: connections are accepted from now on
                health.ready = True
                say(describe(model, policy, settings, sock.getsockname()[1]))

    with _server_logging(), _signals_taken():
        Server(config).run(sockets=[sock])
    batcher.close(GRACEFUL_SECONDS)  # already drained by the lifespan, unless shutdown was forced
    model.close()
    say(f"kiln: stopped serving {model.name}: {metrics.answered} infer requests answered, {metrics.failed} failed")


def serve_generative(
    artifacts: list[tuple[str, Path, Manifest]], settings: ServeSettings, say: Callable[[str], None]
) -> None:
    """Serve causal LMs over the OpenAI-compatible API (:mod:`kiln.serve.llm`), each on its own
    engine; a fixed-graph artifact among them, or two with one id, is one line."""
    import uvicorn

    from kiln.serve.app import Health
    from kiln.serve.llm import create_openai_app, load_generative
    from kiln.serve.metrics import GenerationMetrics
    from kiln.serve.wire import protocol_class

    seen: set[str] = set()
    for name, folder, manifest in artifacts:
        if not manifest.signature.generative:
            raise ConfigError(
                f"{folder} is a fixed-graph artifact ({manifest.model}, no KV cache): kiln serve serves several "
                "artifacts at once only when each is a causal LM; serve it alone (KServe v2)"
            )
        if name in seen:
            raise ConfigError(f"two artifacts would be served as {name!r}; give each a --name of its own")
        seen.add(name)
    metrics = GenerationMetrics([(name, m.target, m.precision) for name, _, m in artifacts])
    sock = bind(settings.host, settings.port)
    models: dict[str, Any] = {}
    try:
        with sock:
            for name, folder, manifest in artifacts:
                observer = metrics.observer(name)
                engine = EngineSettings(settings.max_active, settings.max_queue, settings.threads, settings.engine)
                models[name] = load_generative(folder, manifest, name, engine, observer)
            health = Health()
            limit = limits(settings)
            app = create_openai_app(models, metrics, limit, health, GRACEFUL_SECONDS)
            config = uvicorn.Config(
                app,
                http=protocol_class(metrics, limit.max_head),
                h11_max_incomplete_event_size=limit.max_head,
                log_level="info" if settings.verbose else "warning",
                access_log=settings.verbose,
                lifespan="on",
                timeout_graceful_shutdown=GRACEFUL_SECONDS,
            )
            port = sock.getsockname()[1]

            class Server(uvicorn.Server):
                async def startup(self, sockets: list[socket.socket] | None = None) -> None:
                    await super().startup(sockets)
                    if self.started and not self.should_exit:
                        health.ready = True
                        say(describe_generative(models, settings, port))

            with _server_logging(), _signals_taken():
                Server(config).run(sockets=[sock])
    finally:
        for model in models.values():
            model.close(GRACEFUL_SECONDS)  # already drained by the lifespan, unless shutdown was forced
    say(
        f"kiln: stopped serving {', '.join(models)}: {metrics.answered} generation requests answered, {metrics.failed} failed"
    )


def describe_generative(models: dict[str, Any], settings: ServeSettings, port: int) -> str:
    """The startup line of a causal LM server."""
    served = ", ".join(
        f"{name} ({m.manifest.target}:{m.manifest.precision}, {m.folder}, engine {m.engine_name})"
        for name, m in models.items()
    )
    return (
        f"kiln: serving {served} at http://{settings.host}:{port}/v1 (OpenAI-compatible: /v1/completions, "
        f"/v1/chat/completions); {settings.max_active} sequences at once per model, {settings.max_queue} waiting, "
        f"body limit {settings.max_body_mb:g} MB; SIGTERM or Ctrl-C drains and stops"
    )


@contextlib.contextmanager
def _signals_taken() -> Iterator[None]:
    """uvicorn raises SIGTERM/SIGINT again after a graceful shutdown; a no-op handler makes that
    a clean exit 0 instead of death by signal (or a KeyboardInterrupt)."""
    taken = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in taken}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _server_logging() -> Iterator[None]:
    """The CLI silences logging for one-line errors; a server must still report its own errors
    (uvicorn logs an exception in a route with its traceback), so logging is back on while it runs."""
    disabled = logging.root.manager.disable
    logging.disable(logging.NOTSET)
    try:
        yield
    finally:
        logging.disable(disabled)
