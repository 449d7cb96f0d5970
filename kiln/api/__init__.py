"""kiln's Python API: what the ``kiln`` commands do, as functions with typed results.

``kiln.build(config)`` builds, gates and describes every target's artifact;
``kiln.benchmark(source)`` measures them beside eager and writes the reports (``kiln bench``; the
name ``kiln.bench`` is the benchmark's package); ``kiln.load(folder)`` opens one artifact (a
runner, or a causal LM's decode session); ``kiln.generate`` streams text from one;
``kiln.package`` and ``kiln.verify`` ship and check bundles. The ``kiln`` command line is a shell
over these functions: it parses flags into the settings objects here and formats the results.

A user's mistake is one :class:`kiln.errors.KilnError` (its ``exit_code`` is the command's). A
failed target does not raise from :func:`build`: it is in :attr:`BuildResult.failures`, as a
golden breach is in :attr:`~kiln.ship.verify.Verified.breaches`.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kiln.bench.run import BenchRun
from kiln.config import BenchSettings, KilnConfig, TargetConfig
from kiln.decoding import Tokenizer, check_context
from kiln.errors import ConfigError
from kiln.pipeline.build import TargetResult
from kiln.results import Results
from kiln.ship.archive import DEFAULT_LIMITS, Limits
from kiln.ship.bundle import Packaged
from kiln.ship.verify import Verified
from kiln.spec import Signature
from kiln.targets.base import Runner, RunOptions
from kiln.targets.opening import ArtifactSession

__all__ = [
    "ArtifactSession",
    "BenchResult",
    "BenchRun",
    "BenchSettings",
    "BuildResult",
    "GenerateSettings",
    "Generation",
    "KilnConfig",
    "PackageResult",
    "PackageSettings",
    "Runner",
    "TargetConfig",
    "VerifySettings",
    "benchmark",
    "build",
    "generate",
    "load",
    "package",
    "verify",
]

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    """Progress nobody reads."""


# ---- build ----


@dataclass(frozen=True)
class BuildResult:
    """What :func:`build` did: the config it built (its targets as chosen), the build folder, and
    one :class:`~kiln.pipeline.build.TargetResult` per target, in the config's order."""

    config: KilnConfig
    out: Path
    targets: tuple[TargetResult, ...]

    @property
    def failures(self) -> tuple[TargetResult, ...]:
        """The targets that failed to build, or built and failed their gate."""
        return tuple(r for r in self.targets if r.exit_code)

    @property
    def exit_code(self) -> int:
        """0 when every target built and passed its gate, else the first failure's exit code."""
        return self.failures[0].exit_code if self.failures else 0

    def artifact(self, key: str) -> Path:
        """The folder of the artifact built for ``key`` (a target's folder name, such as
        ``onnxruntime-fp32``); one ``ConfigError`` line when no such artifact was built."""
        for result in self.targets:
            if result.target.key == key and result.manifest is not None:
                return self.out / result.manifest.model / key
        built = ", ".join(r.target.key for r in self.targets if r.manifest is not None) or "none"
        raise ConfigError(f"no artifact {key!r} was built (built: {built})")


def build(
    config: KilnConfig | Mapping[str, Any] | Path | str,
    out: Path | str = "build",
    targets: Sequence[str] = (),
    progress: Progress = _quiet,
    check_memory: bool = True,
) -> BuildResult:
    """Export the model once, then build, gate and describe every target's artifact into
    ``out/<model>/<target>-<precision>/``, as ``kiln build`` does; an up-to-date artifact is kept.

    ``config``: a ``kiln.toml`` path, a :class:`~kiln.config.KilnConfig`, or the mapping a
    ``kiln.toml`` holds (its relative paths resolve against the working folder); ``targets``:
    ``NAME[:PRECISION]`` selectors that replace its ``[[target]]`` list; ``progress`` is told
    each step (each stage's start and end are :class:`kiln.pipeline.progress.StageLine` lines);
    nothing is printed. A target's failure (build, gate) is in the result, not raised; a model
    too large for this machine's memory raises :class:`~kiln.errors.ResourceError` before any work
    unless ``check_memory`` is false."""
    from kiln.config import load_config, parse_config, with_targets
    from kiln.pipeline.build import build as build_all

    if isinstance(config, KilnConfig):
        loaded, where = config, "the config"
    elif isinstance(config, Mapping):
        loaded, where = parse_config(dict(config), Path.cwd(), where="the config"), "the config"
    else:
        loaded, where = load_config(Path(config)), str(config)
    chosen = with_targets(loaded, list(targets))
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {folder} is a file, not a folder; choose another --out or remove the file")
    if not chosen.target:
        raise ConfigError(f"{where}: no [[target]] to build; add one or pass --target NAME[:PRECISION]")
    return BuildResult(chosen, folder, tuple(build_all(chosen, folder, progress, check_memory)))


# ---- bench ----


@dataclass(frozen=True)
class BenchResult:
    """What :func:`benchmark` measured (``results.json``'s content) and the folder its reports are in."""

    results: Results
    folder: Path

    @property
    def reports(self) -> tuple[Path, Path, Path]:
        """``results.json``, ``report.md`` and ``report.html``."""
        return self.folder / "results.json", self.folder / "report.md", self.folder / "report.html"


def benchmark(source: Path | str, run: BenchRun | None = None, progress: Progress = _quiet) -> BenchResult:
    """Measure every artifact of a model beside eager with one harness, as ``kiln bench`` does,
    and write ``results.json``, ``report.md`` and ``report.html``.

    ``source``: a ``kiln.toml`` (missing or stale artifacts are built first) or a ``build/<model>``
    folder. ``run``: which targets, where, and :class:`~kiln.config.BenchSettings` overrides of
    the config's ``[bench]`` (only the fields set explicitly override)."""
    from kiln.bench.run import bench as measure

    path = Path(source)
    if not path.exists():
        raise ConfigError(f"{path} does not exist; pass a kiln.toml or a build/<model> folder")
    results, folder = measure(path, run or BenchRun(), progress)
    return BenchResult(results, folder)


# ---- load and generate ----


def load(artifact: Path | str, threads: int | None = None) -> Runner | ArtifactSession:
    """Open a built artifact (``build/<model>/<target-dir>``) with its runtime: a
    :class:`~kiln.targets.base.Runner` for a fixed graph (``infer`` takes and returns numpy dicts
    keyed by the signature's names), or for a causal LM an
    :class:`~kiln.targets.opening.ArtifactSession` to decode with. Close it (or use ``with``)
    when done. Exit 5 where the artifact cannot run on this machine."""
    from kiln.targets.opening import open_artifact

    return open_artifact(Path(artifact), RunOptions(threads=threads))


@dataclass(frozen=True)
class GenerateSettings:
    """How :func:`generate` decodes: greedy unless ``temperature`` > 0 (then top-k sampling)."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int | None = None
    seed: int | None = None  # the sampler's, for a repeatable sample
    threads: int | None = None  # runtime threads when generate opens the artifact
    chat: bool = False  # the prompt as a user message through the tokenizer's chat template
    system: str | None = None  # a system message before it (with chat)


@dataclass(frozen=True)
class Generation:
    """A continuation and how fast it came: the first token's latency, then tokens per second."""

    target: str
    precision: str
    prompt: str
    text: str  # the continuation, without the prompt
    tokens: tuple[int, ...] = field(repr=False)
    first_token_s: float
    tokens_per_s: float


def generate(
    artifact: Path | str | ArtifactSession,
    prompt: str,
    settings: GenerateSettings | None = None,
    on_text: Callable[[str], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> Generation:
    """Continue ``prompt`` with a causal LM's artifact (a folder, or a session :func:`load`
    opened), through the decoding loop every target shares; ``on_text`` gets the text as it grows,
    ``on_warning`` a line before decoding when the artifact failed its gate when it was built.
    With ``chat``, the prompt is a user message (after ``system``'s) rendered by the tokenizer's
    chat template, and the reply is what follows. Decoding stops at any of the tokenizer's EOS ids.
    A prompt that does not fit the artifact's context, a chat with a tokenizer that has no
    template, or ``top_k`` without a ``temperature`` (greedy decoding would ignore it) is one
    ``ConfigError`` line (before the runtime loads the model)."""
    from kiln.targets.opening import artifact_tokenizer, decodable, open_session

    chosen = settings or GenerateSettings()
    if chosen.top_k is not None and chosen.temperature <= 0:
        raise ConfigError(
            f"top-k {chosen.top_k} samples among the likeliest tokens, and temperature 0 decodes greedily "
            "(always the likeliest): give a temperature (--temperature 0.7) to sample, or drop --top-k"
        )
    if isinstance(artifact, ArtifactSession):
        asked = _prompt(artifact_tokenizer(artifact.folder), prompt, chosen, artifact.sig)
        return _generate(artifact, asked, chosen, on_text)
    folder = Path(artifact)
    manifest = decodable(folder)
    # A prompt that is refused is refused before the runtime loads the model.
    asked = _prompt(artifact_tokenizer(folder), prompt, chosen, manifest.signature)
    if on_warning is not None and manifest.gate.passed is False:
        breach = manifest.gate.breaches[0] if manifest.gate.breaches else "see its manifest"
        on_warning(f"{manifest.key} failed its gate when it was built ({breach}); its text may not be the model's")
    with open_session(folder, RunOptions(threads=chosen.threads), manifest) as session:
        return _generate(session, asked, chosen, on_text)


@dataclass(frozen=True)
class _Prompt:
    tokenizer: Tokenizer
    text: str  # as the user gave it
    ids: list[int]


def _prompt(tokenizer: Tokenizer, prompt: str, settings: GenerateSettings, sig: Signature) -> _Prompt:
    """The prompt's ids (its text as transformers encodes it, or its chat as the template renders
    it), once they and the new tokens are known to fit the artifact's context."""
    if settings.system is not None and not settings.chat:
        raise ConfigError("a system message is part of a chat; pass chat=True (--chat) with it, or drop it")

    if settings.chat:
        system = [{"role": "system", "content": settings.system}] if settings.system is not None else []
        ids = tokenizer.encode_chat([*system, {"role": "user", "content": prompt}])
    else:
        ids = tokenizer.encode(prompt)
    if not ids:
        raise ConfigError("the prompt encodes to no tokens; give some text")
    check_context(len(ids), settings.max_new_tokens, sig.context_length())
    return _Prompt(tokenizer, prompt, ids)


def _generate(
    session: ArtifactSession, asked: _Prompt, settings: GenerateSettings, on_text: Callable[[str], None] | None
) -> Generation:
    from kiln.decoding import Sampling, stream_text
    from kiln.decoding import generate as decode

    tokenizer, ids = asked.tokenizer, asked.ids
    sampling = Sampling(temperature=settings.temperature, top_k=settings.top_k, seed=settings.seed)
    tokens: list[int] = []
    stamps: list[float] = []
    start = time.perf_counter()

    def timed() -> Iterator[int]:
        for token in decode(session, ids, settings.max_new_tokens, sampling, eos=tokenizer.eos_ids):
            stamps.append(time.perf_counter() - start)
            tokens.append(token)
            yield token

    pieces = []
    for piece in stream_text(tokenizer, timed()):
        pieces.append(piece)
        if on_text is not None:
            on_text(piece)
    count, first = len(stamps), stamps[0] if stamps else 0.0
    rate = (count - 1) / (stamps[-1] - first) if count > 1 and stamps[-1] > first else 0.0
    m = session.manifest
    return Generation(m.target, m.precision, asked.text, "".join(pieces), tuple(tokens), first, rate)


# ---- package and verify ----


@dataclass(frozen=True)
class PackageSettings:
    """What :func:`package` ships and how: ``targets`` are ``NAME[:PRECISION[:PRUNE]]``
    selectors (none: every built artifact); ``sign`` an Ed25519 private key (PEM, bundles only)."""

    targets: tuple[str, ...] = ()
    out: Path = Path("dist")
    format: Literal["bundle", "model-repository"] = "bundle"
    sign: Path | None = None
    allow_ungated: bool = False  # also ship artifacts whose gate did not run here


@dataclass(frozen=True)
class PackageResult:
    """What :func:`package` wrote: a bundle per artifact, or a model repository's model folders;
    and the artifacts a model repository skipped (with why), when no target was named."""

    bundles: tuple[Packaged, ...] = ()
    models: tuple[Path, ...] = ()
    skipped: tuple[tuple[Path, str], ...] = ()


def package(source: Path | str, settings: PackageSettings | None = None) -> PackageResult:
    """Write a reproducible release bundle per artifact of ``source`` (``build/<model>`` or one
    artifact folder): its files, ``manifest.json``, ``golden/``, ``MODEL_CARD.md`` and
    ``SHA256SUMS`` (and a signature); or, with ``format="model-repository"``, a Triton / OpenVINO
    Model Server model repository."""
    from kiln.ship.select import artifact_folders

    chosen = settings or PackageSettings()
    folders = artifact_folders(Path(source), chosen.targets)
    if chosen.format == "model-repository":
        return _model_repository(Path(source), folders, chosen)
    from kiln.ship.bundle import PackageOptions, package_all

    options = PackageOptions(out=chosen.out, sign=chosen.sign, allow_ungated=chosen.allow_ungated)
    return PackageResult(bundles=tuple(package_all(folders, options)))


def _model_repository(source: Path, folders: list[Path], settings: PackageSettings) -> PackageResult:
    from kiln.manifest import Manifest
    from kiln.ship.repository import refusal, write_model_repository

    if settings.sign is not None:
        raise ConfigError("--sign applies to bundles; a model repository is a folder (sign a bundle of it)")
    skipped: list[tuple[Path, str]] = []
    if not settings.targets:
        # Every built artifact by default: those these servers cannot load are skipped, named; an
        # explicit target that they cannot load is refused (exit 2).
        kept = []
        for folder in folders:
            why = refusal(Manifest.read(folder), settings.allow_ungated)
            if why is None:
                kept.append(folder)
            else:
                skipped.append((folder, why))
        if not kept:
            raise ConfigError(
                f"{source}: no artifact a Triton or OVMS model repository can hold; build onnxruntime or openvino"
            )
        folders = kept
    written = write_model_repository(folders, settings.out, allow_ungated=settings.allow_ungated)
    return PackageResult(models=tuple(written), skipped=tuple(skipped))


@dataclass(frozen=True)
class VerifySettings:
    """What :func:`verify` checks beyond integrity and "runs here": ``run`` replays the golden
    set; ``pubkey`` requires the bundle's signature; ``extract`` keeps the verified artifact in a
    new folder there (else a bundle is checked in a temporary folder, removed before
    :func:`verify` returns); ``limits`` bound what a bundle may unpack to."""

    run: bool = False
    pubkey: Path | None = None
    extract: Path | None = None
    threads: int | None = None  # runtime threads for ``run``
    limits: Limits = DEFAULT_LIMITS  # what a bundle may unpack to (kiln.ship.archive)


def archive_limits(
    max_members: int | None = None,
    max_file: str | None = None,
    max_unpacked: str | None = None,
    max_ratio: float | None = None,
) -> Limits:
    """``kiln verify``'s ``--max-*`` flags as :class:`~kiln.ship.archive.Limits` (sizes such as
    ``"300G"``; None: the default)."""
    from kiln.ship.archive import parse_size

    return Limits(
        max_members=max_members or DEFAULT_LIMITS.max_members,
        max_member_bytes=parse_size(max_file) if max_file else DEFAULT_LIMITS.max_member_bytes,
        max_total_bytes=parse_size(max_unpacked) if max_unpacked else DEFAULT_LIMITS.max_total_bytes,
        max_ratio=max_ratio or DEFAULT_LIMITS.max_ratio,
        ratio_floor=DEFAULT_LIMITS.ratio_floor,
    )


def verify(bundle: Path | str, settings: VerifySettings | None = None) -> Verified:
    """On the machine that will run it: a bundle's signature, safe extraction and checksums (or an
    artifact folder's files), its manifest, runtime and hardware, and with ``run`` the golden set.
    A failed check raises its ``KilnError`` (exit 7 integrity, 5 cannot run here); golden breaches
    are returned in :attr:`~kiln.ship.verify.Verified.breaches`."""
    from kiln.ship.verify import verify as check

    chosen = settings or VerifySettings()
    path = Path(bundle)
    if not path.exists():
        raise ConfigError(f"{path} does not exist; pass a bundle kiln package wrote, or an artifact folder")

    def into(folder: Path) -> Verified:
        return check(path, folder, chosen.run, chosen.pubkey, chosen.threads, chosen.limits)

    if chosen.extract is not None:
        return into(chosen.extract)
    with tempfile.TemporaryDirectory(prefix="kiln-verify-") as scratch:
        return into(Path(scratch))
