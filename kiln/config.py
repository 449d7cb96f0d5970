"""``kiln.toml``: parsed and validated once, at the boundary, into typed models.

An unknown key, a wrong type or an impossible value becomes one ``ConfigError`` line naming the
key, before any work starts. Pure schema: nothing here imports a toolchain, nor any of kiln but
``kiln.errors``; target names, precisions and options are checked by the registry.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kiln.errors import ConfigError, one_line

DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "bool")


class _Strict(BaseModel):
    # nan and inf are no tolerance, duration or rate: a nan min_cosine would pass every artifact.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DimSpec(_Strict):
    """One named dimension: the range an artifact must accept and the size it is tuned for."""

    # 0 only makes sense for a KV cache's ``past`` dim: the prefill step has no past.
    min: Annotated[int, Field(ge=0)]
    opt: Annotated[int, Field(ge=0)] | None = None
    max: Annotated[int, Field(ge=1)]

    @model_validator(mode="after")
    def _ordered(self) -> DimSpec:
        opt = self.min if self.opt is None else self.opt
        if not self.min <= opt <= self.max:
            raise ValueError(f"needs min <= opt <= max, got min={self.min} opt={opt} max={self.max}")
        return self

    @property
    def best(self) -> int:
        return self.min if self.opt is None else self.opt

    @property
    def static(self) -> bool:
        return self.min == self.max


class InputSpec(_Strict):
    """One model input: its name, dtype and shape, where a string in the shape is a named dim."""

    name: str
    shape: list[int | str]
    dtype: Literal["float32", "float16", "bfloat16", "int64", "int32", "bool"] = "float32"
    # Inclusive value range for integer inputs made up by kiln (token ids, masks).
    range: tuple[int, int] | None = None

    @field_validator("shape")
    @classmethod
    def _positive(cls, shape: list[int | str]) -> list[int | str]:
        for size in shape:
            if isinstance(size, int) and size < 1:
                raise ValueError(f"sizes must be >= 1 or a dim name, got {size}")
        return shape


Task = Literal[
    "auto",
    "feature-extraction",
    "text-classification",
    "token-classification",
    "question-answering",
    "fill-mask",
    "image-classification",
    "text-generation",
]


class EnsembleConfig(_Strict):
    """``[model] ensemble``: members sharing the model's input spec, combined into one graph."""

    members: Annotated[list[str], Field(min_length=2)]  # sources: file.py:fn, model.pt2 or hf:folder
    method: Literal["mean", "vote", "weighted"] = "mean"
    weights: list[Annotated[float, Field(gt=0)]] | None = None  # method = "weighted", one per member
    # What mean and weighted average: class probabilities (a softmax of each member's first
    # output) or the raw first outputs (logits, or any regression output).
    average: Literal["probabilities", "logits"] = "probabilities"
    # Also build every target for each member alone, beside the ensemble, so the report shows
    # what the ensemble buys and costs against each member in the same run.
    compare_members: bool = True

    @model_validator(mode="after")
    def _weights(self) -> EnsembleConfig:
        if self.method == "weighted" and (self.weights is None or len(self.weights) != len(self.members)):
            got = "none" if self.weights is None else len(self.weights)
            raise ValueError(f"method 'weighted' needs one weight per member ({len(self.members)}), got {got}")
        if self.method != "weighted" and self.weights is not None:
            raise ValueError(f"weights are read by method 'weighted' only; the method is {self.method!r}")
        if self.method == "vote" and self.average != "probabilities":
            raise ValueError("method 'vote' counts each member's top class; 'average' does not apply to it")
        if len(set(self.members)) != len(self.members):
            raise ValueError(f"members must be distinct, got {self.members}")
        return self

    def member_names(self) -> list[str]:
        """A short name per member for its artifacts' keys: the factory's function, or the file or
        folder's stem, made unique with its position when two would clash."""
        stems = [_member_stem(m) for m in self.members]
        return [s if stems.count(s) == 1 else f"{s}{i}" for i, s in enumerate(stems)]


def _member_stem(source: str) -> str:
    import re

    ref = source.removeprefix("hf:").rstrip("/")
    stem = ref.rsplit(":", 1)[1] if ":" in ref and not ref.endswith((".pt2", ".onnx")) else ref
    stem = stem.rsplit("/", 1)[-1].removesuffix(".pt2")
    return re.sub(r"[^A-Za-z0-9_]", "_", stem) or "member"


ENSEMBLE = "ensemble"  # [model].source of an ensemble: its members are the sources


class ModelConfig(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    source: str
    ensemble: EnsembleConfig | None = Field(None, exclude_if=lambda v: v is None)
    inputs: list[InputSpec] = []
    dims: dict[str, DimSpec] = {}
    task: Task = "auto"
    # PEFT adapters (LoRA, QLoRA) merged into the model before capture: one path, or a list of
    # paths each giving its own artifacts.
    adapter: str | list[str] | None = None
    # Outputs that hold class scores, where the gate's top-1 agreement applies; outputs named
    # *logits and a [batch, classes] primary output are recognised without it.
    class_outputs: list[str] = []

    @property
    def adapters(self) -> list[str]:
        return [self.adapter] if isinstance(self.adapter, str) else list(self.adapter or [])

    @model_validator(mode="before")
    @classmethod
    def _ensemble_source(cls, data: Any) -> Any:
        """An ensemble's source is its members: ``source`` is left out (it reads ``ensemble``)."""
        if isinstance(data, dict) and data.get("ensemble") is not None:
            if data.get("source", ENSEMBLE) != ENSEMBLE:
                raise ValueError("give [model].source or [model].ensemble, not both")
            return {**data, "source": ENSEMBLE}
        return data

    @model_validator(mode="after")
    def _dims_declared(self) -> ModelConfig:
        used = {s for spec in self.inputs for s in spec.shape if isinstance(s, str)}
        if missing := sorted(used - set(self.dims)):
            raise ValueError(f"dim {missing[0]!r} is used in an input shape but not declared in dims")
        names = [spec.name for spec in self.inputs]
        if len(set(names)) != len(names):
            raise ValueError(f"input names must be unique, got {names}")
        if self.source == ENSEMBLE and self.ensemble is None:
            raise ValueError("source 'ensemble' needs [model].ensemble = { members = [...] }")
        if self.ensemble is not None and self.adapters:
            raise ValueError("an ensemble takes no adapter; merge each member's adapter in its own factory")
        if self.ensemble is not None and self.task == "text-generation":
            raise ValueError("an ensemble of causal LMs is not supported; ensembles combine class scores or outputs")
        empty = [name for name, dim in self.dims.items() if dim.min == 0 and name != "past"]
        if empty:
            raise ValueError(f"dim {empty[0]!r} has min 0; only a text-generation model's 'past' dim may be empty")
        return self


class ExportConfig(_Strict):
    opset: Annotated[int, Field(ge=13, le=23)] = 20
    strict: bool = False


class Tolerance(_Strict):
    """Parity tolerances; ``None`` means the figure is not gated."""

    max_abs: float | None = None
    max_rel: float | None = None
    min_cosine: float | None = None
    min_top1: float | None = None
    # Generative models: greedy tokens identical to eager's (fp32), and the relative increase of
    # held-out perplexity over eager's that is accepted (0.01 = 1 %).
    exact_tokens: bool | None = None
    max_perplexity_increase: float | None = None


class PruneConfig(_Strict):
    """Pruning applied to the PyTorch model before capture, so every target gets it."""

    # random: unstructured like magnitude, with seeded random scores (the baseline magnitude
    # pruning should beat)
    method: Literal["channel", "magnitude", "random", "2:4"]
    amount: Annotated[float, Field(gt=0, lt=1)] = 0.3  # fraction removed; 2:4 is always 0.5
    importance: Literal["magnitude", "taylor"] = "magnitude"  # taylor is data-driven (calibration)
    scope: Literal["layer", "global"] = "layer"
    keep: list[str] = []  # module names never pruned; the classifier head is always kept
    # Glob patterns choosing the layers to prune (matched against a layer's full name and its last
    # component: "query" matches encoder.layer.0.attention.self.query); empty: every layer.
    modules: list[str] = Field([], exclude_if=lambda v: not v)
    steps: Annotated[int, Field(ge=1)] = 1  # iterative: prune -> fine-tune -> prune ...
    seed: int = Field(0, exclude_if=lambda v: v == 0)  # method = "random"

    @property
    def slug(self) -> str:
        amount = 50 if self.method == "2:4" else round(self.amount * 100)
        return f"{self.method.replace(':', 'of')}{amount}"


class RecoveryConfig(_Strict):
    """Fine-tuning on training data: after pruning; to distil a teacher into the model being built
    (``teacher``); and quantization-aware training for quantized precisions (``qat``). Each is
    distilled (``distill``) from the teacher, or else from the unpruned or float model."""

    source: str  # callable yielding (inputs, target) training batches
    epochs: Annotated[int, Field(ge=1)] = 3
    lr: Annotated[float, Field(gt=0)] = 1e-3
    distill: bool = True
    temperature: Annotated[float, Field(gt=0)] = 4.0
    alpha: Annotated[float, Field(ge=0, le=1)] = 0.7  # weight of the distillation loss
    # A model source (path/file.py:fn, model.pt2 or hf:folder) distilled into the model before it
    # is captured; it is the teacher of pruning's and QAT's fine-tuning too. Fields left out of
    # dumps when unset keep the cache keys of configs without them unchanged.
    teacher: str | None = Field(None, exclude_if=lambda v: v is None)
    # Quantized precisions fine-tune with fake quantization in the loop, on each target's own QAT
    # path (kiln targets lists them); a target x precision without one is refused.
    qat: bool = Field(False, exclude_if=lambda v: not v)
    # QAT's epochs, when they should differ from pruning's and distillation's.
    qat_epochs: Annotated[int, Field(ge=1)] | None = Field(None, exclude_if=lambda v: v is None)

    @model_validator(mode="after")
    def _teacher_distils(self) -> RecoveryConfig:
        if self.teacher is not None and not self.distill:
            raise ValueError("teacher is distilled from: it needs distill = true (the default)")
        return self


class TargetConfig(_Strict):
    name: str
    precision: str = "fp32"
    options: dict[str, Any] = {}  # escape hatch, handed verbatim to the toolchain
    tolerance: Tolerance | None = None
    prune: PruneConfig | None = None
    # An ensemble's member built alone (by its name in [model].ensemble), beside the ensemble;
    # kiln adds these rows itself when compare_members is on.
    member: str | None = Field(None, exclude_if=lambda v: v is None)

    @property
    def key(self) -> str:
        base = f"{self.name}-{self.precision}"
        base = f"{base}-{self.prune.slug}" if self.prune else base
        return f"{base}-member-{self.member}" if self.member else base

    @property
    def variant(self) -> str | None:
        """The model variant it builds from: a member, a prune slug, or ``None`` (the model)."""
        if self.member:
            return f"member-{self.member}"
        return self.prune.slug if self.prune else None


class DataSpec(_Strict):
    source: str
    samples: Annotated[int, Field(ge=1)] = 100
    seed: int = 0


class EvaluationConfig(_Strict):
    source: str
    metric: str = "top1"  # top1 | cosine | mse | path/file.py:fn (higher is better)
    samples: Annotated[int, Field(ge=1)] | None = None
    output: str | None = None  # which output the metric reads; the first one by default

    @field_validator("metric")
    @classmethod
    def _known(cls, metric: str) -> str:
        if metric not in ("top1", "cosine", "mse") and ":" not in metric:
            raise ValueError(f"unknown metric {metric!r}; use top1, cosine, mse or path/file.py:fn")
        return metric


class BenchSettings(_Strict):
    """How cells are measured: the ``[bench]`` table, the ``kiln bench`` flags over it, and the
    ``settings`` block of ``results.json``. ``min_seconds`` and ``min_iters`` are per cell, over
    all rounds. ``None`` is resolved at run time: threads to the physical cores, requests to
    max(2, threads) in throughput mode (always 1 in latency mode); results.json records both.
    """

    # Every field is written to results.json, so the generated schema requires each of them.
    model_config = ConfigDict(
        populate_by_name=True, json_schema_serialization_defaults_required=True, allow_inf_nan=False
    )

    # Users write ``batch`` in [bench]; results.json has always called it ``batches``.
    batches: list[Annotated[int, Field(ge=1)]] = Field(
        [1], min_length=1, validation_alias=AliasChoices("batch", "batches"), serialization_alias="batches"
    )
    threads: Annotated[int, Field(ge=1)] | None = None
    mode: Literal["latency", "throughput"] = "latency"
    # Requests in flight per timed sample in throughput mode (1 in latency mode once resolved).
    requests: Annotated[int, Field(ge=1)] | None = None
    min_seconds: Annotated[float, Field(gt=0)] = 2.0
    min_iters: Annotated[int, Field(ge=1)] = 20
    warmup_seconds: Annotated[float, Field(ge=0)] = 0.5
    warmup_iters: Annotated[int, Field(ge=0)] = 5
    # Interleaved rounds: at least ``rounds``; more, up to ``max_rounds`` (3 x rounds unless set),
    # while a speed-up's confidence interval is wider than +-``ci_target`` (2.5 % unless set), so
    # that two runs agree within about twice that. Six rounds give the first 95 % interval.
    rounds: Annotated[int, Field(ge=1)] = 6
    max_rounds: Annotated[int, Field(ge=1)] | None = Field(None, exclude_if=lambda v: v is None)
    ci_target: Annotated[float, Field(gt=0)] | None = Field(None, exclude_if=lambda v: v is None)
    # A wall-clock budget per batch for the adaptive rounds: once a batch's rounds have run this
    # many seconds, no more are added (the first ``rounds`` always run). ``None``: no budget.
    max_seconds: Annotated[float, Field(gt=0)] | None = Field(None, exclude_if=lambda v: v is None)
    # A round in which the hypervisor took more than this share of the CPUs' time (a VM's steal,
    # from /proc/stat) is dropped for every cell in it and timed again, at most ``max_rounds``
    # times per batch; the cells record how many were dropped. ``None``: every round counts.
    max_round_steal: Annotated[float, Field(gt=0, lt=1)] | None = Field(None, exclude_if=lambda v: v is None)
    # Fresh worker processes per cell and batch: each cell's rounds are spread over this many
    # worker lifetimes (a new process every ceil(rounds / processes) rounds, adaptive rounds
    # included), so what one process draws by luck (its memory layout, the pages its allocator
    # got, the CPUs its threads settled on) goes into each speed-up's interval instead of moving
    # it from one run to the next. The reason pyperf runs many processes. ``1``: one per batch.
    processes: Annotated[int, Field(ge=1)] = Field(1, exclude_if=lambda v: v == 1)
    # glibc's malloc in every worker, eager's and each artifact's alike (kiln.bench.process.
    # malloc_environment). "system": as Python starts it; glibc then moves its thresholds as large
    # blocks are freed, so each process settles by chance on serving a model's activations from
    # reused heap memory or from fresh pages (a page fault per 4 KiB, every inference): the same
    # eager program differs by 20-30 % between processes. "steady": the thresholds pinned where
    # glibc lets them rise to (mmap at 32 MiB, no trimming below 1 GiB), so every process
    # reuses its memory, the state a long-lived process may reach by itself. Off glibc, ignored.
    malloc: Literal["system", "steady"] = Field("system", exclude_if=lambda v: v == "system")
    # After the timed rounds, each artifact run a few more times under its runtime's own profiler
    # (kiln.bench.profile): time by operator kind and precision, reorders, the share left in fp32.
    profile: bool = Field(False, exclude_if=lambda v: not v)
    # A cell whose coefficient of variation (std / mean) exceeds this is flagged unstable.
    cv_threshold: Annotated[float, Field(gt=0)] = 0.10
    # Causal LMs only (resolved for them, left out otherwise): greedy generations from seeded
    # prompts of each length, timed per token; at least ``generations`` per length and cell.
    prompt_tokens: list[Annotated[int, Field(ge=1)]] | None = Field(None, min_length=1, exclude_if=lambda v: v is None)
    new_tokens: Annotated[int, Field(ge=2)] | None = Field(None, exclude_if=lambda v: v is None)
    generations: Annotated[int, Field(ge=1)] | None = Field(None, exclude_if=lambda v: v is None)

    def merged(self, overrides: BenchSettings) -> BenchSettings:
        """These settings with the fields set explicitly in ``overrides`` (the command line's
        flags, validated when ``overrides`` was made) taking their place."""
        return self.model_copy(update={name: getattr(overrides, name) for name in overrides.model_fields_set})

    def resolve(self, physical_cores: int, generative: bool = False) -> BenchSettings:
        """Every figure fixed: what a run measures with and ``results.json`` records. The
        generation fields get their defaults for a causal LM (prompts of 32 and 128 tokens, 64 new
        tokens, 5 generations) and are dropped for any other model."""
        threads = self.threads or physical_cores
        requests = (self.requests or max(2, threads)) if self.mode == "throughput" else 1
        update: dict[str, Any] = {
            "threads": threads,
            "requests": requests,
            "max_rounds": max(self.max_rounds or 3 * self.rounds, self.rounds),
            "ci_target": self.ci_target or 0.025,
        }
        if generative:
            update |= {
                "prompt_tokens": self.prompt_tokens or [32, 128],
                "new_tokens": self.new_tokens or 64,
                "generations": self.generations or 5,
            }
        else:
            update |= {"prompt_tokens": None, "new_tokens": None, "generations": None}
        return self.model_copy(update=update)


class GenerationConfig(_Strict):
    """The generation gate of a causal LM: greedy decoding from fixed prompts, and perplexity on
    held-out text, both compared with eager's."""

    # Prompts: a list of strings, or a text file with one prompt per line.
    prompts: str | list[str] | None = None
    new_tokens: Annotated[int, Field(ge=1)] = 32
    # Held-out text (a file) for perplexity; a built-in paragraph when not given.
    heldout: str | None = None
    heldout_tokens: Annotated[int, Field(ge=16)] = 1024  # at most this many tokens are scored
    # A tokenizer folder for factory sources (hf: folders bring their own).
    tokenizer: str | None = None
    # Each prompt as a user's message through the tokenizer's chat template (what an instruct
    # model is asked in use); None: when the tokenizer has a template. The held-out text stays plain.
    chat: bool | None = None


class GatesConfig(_Strict):
    max_metric_drop: Annotated[float, Field(ge=0)] | None = None


class KilnConfig(_Strict):
    model: ModelConfig
    export: ExportConfig = ExportConfig()
    calibration: DataSpec | None = None
    evaluation: EvaluationConfig | None = None
    target: list[TargetConfig] = []
    bench: BenchSettings = BenchSettings()
    gates: GatesConfig = GatesConfig()
    generation: GenerationConfig = GenerationConfig()
    recovery: RecoveryConfig | None = None
    # Folder the config came from: relative paths in sources resolve against it.
    root: Path = Path(".")

    @model_validator(mode="after")
    def _distinct_targets(self) -> KilnConfig:
        """Two rows with one key would build into one folder: refuse them, naming both."""
        seen: dict[str, int] = {}
        for i, target in enumerate(self.target):
            if target.key in seen:
                same = "identical" if target == self.target[seen[target.key]] else "conflicting"
                row = f"{target.name}:{target.precision}" + (f"-{target.prune.slug}" if target.prune else "")
                raise ValueError(
                    f"[[target]] rows {seen[target.key] + 1} and {i + 1} are {same} ({one_line(row)}); "
                    "keep one, or give one another precision or prune"
                )
            seen[target.key] = i
        return self


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The config model a location's keys belong to (list indices skipped), if it is one."""
    model: Any = KilnConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        found = [a for a in _flatten(field.annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not found:
            return None
        model = found[0]
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _flatten(annotation: Any) -> list[Any]:
    from typing import get_args

    args = get_args(annotation)
    return [annotation] if not args else [a for arg in args for a in _flatten(arg)]


def _describe(err: ValidationError) -> str:
    """The one line for a config that does not validate: an unknown key first (a misspelt key
    also reads as the right one missing), with the closest known key of its table."""
    import difflib

    errors = err.errors()
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    # Keys are the user's: one with a newline (a quoted TOML key) must not break the line.
    key = one_line(".".join(str(part) for part in first["loc"])) or "(top level)"
    if first["type"] == "extra_forbidden":
        model = _model_at(tuple(first["loc"][:-1]))
        known = [n for n in (model.model_fields if model else {}) if n != "root"]
        close = difflib.get_close_matches(str(first["loc"][-1]), known, n=1)
        return f"unknown key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else "")
    return f"'{key}': {one_line(first['msg'].removeprefix('Value error, '), 300)}"


def parse_config(data: dict[str, Any], root: Path, where: str = "config") -> KilnConfig:
    """Validate a config mapping; ``root`` is the folder relative paths resolve against.

    Only the schema is checked here; whether each target x precision exists, fits the source and
    has its data is the registry's check, run first thing when a build is planned."""
    try:
        return KilnConfig.model_validate({**data, "root": root})
    except ValidationError as err:
        raise ConfigError(f"{where}: {_describe(err)}; fix it and run again") from err


def load_config(path: Path) -> KilnConfig:
    """Read and validate ``kiln.toml``: every file ends in a config or one ``ConfigError`` line."""
    if path.is_dir():
        raise ConfigError(f"config {path} is a folder; pass the path of a kiln.toml (e.g. {path / 'kiln.toml'})")
    if not path.is_file():
        raise ConfigError(f"config {path} not found; pass the path of a kiln.toml")
    try:
        # utf-8-sig: an editor's byte-order mark is no reason to refuse a config.
        data = tomllib.loads(path.read_bytes().decode("utf-8-sig"))
    except OSError as err:
        raise ConfigError(f"config {path} cannot be read ({err.strerror}); check its permissions") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}); TOML is UTF-8: save it as UTF-8") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({one_line(str(err), 200)}); fix the syntax and run again") from err
    except RecursionError as err:  # tomllib reads nested arrays and inline tables recursively
        raise ConfigError(
            f"{path}: arrays or inline tables nested too deep to read; a kiln.toml needs a few levels"
        ) from err
    return parse_config(data, path.resolve().parent, where=str(path))


SELECTOR_FORM = "NAME[:PRECISION[:PRUNE-SLUG]]"


@dataclass(frozen=True)
class Selector:
    """A ``--target`` selector: a target, at one precision or any (``None``), and one pruned
    variant or any (``None``; the dense artifact and its pruned variants alike)."""

    name: str
    precision: str | None = None
    slug: str | None = None

    def matches(self, name: str, precision: str, slug: str | None = None) -> bool:
        """Whether it selects the artifact (or config row) of that target, precision and prune slug."""
        return self.name == name and self.precision in (None, precision) and (self.slug is None or self.slug == slug)


def parse_selector(text: str) -> Selector:
    """``NAME[:PRECISION[:PRUNE-SLUG]]`` (``onnxruntime``, ``openvino:int8``); every command's
    ``--target`` and a suite's ``targets`` are read here."""
    name, *rest = text.split(":")
    if not name.strip() or len(rest) > 2 or any(part != part.strip() for part in (name, *rest)):
        raise ConfigError(f"target selector {text!r} is not {SELECTOR_FORM}; write e.g. onnxruntime or openvino:int8")
    precision, slug = (*rest, "", "")[:2]
    return Selector(name, precision or None, slug or None)


def with_targets(config: KilnConfig, selectors: list[str]) -> KilnConfig:
    """Override the config's targets with CLI selectors ``NAME[:PRECISION[:PRUNE-SLUG]]``.

    A selector that names configured targets keeps their options; a new one gets defaults (one
    with a prune slug must name a configured pruned variant).
    """
    if not selectors:
        return config
    chosen: list[TargetConfig] = []
    for text in selectors:
        selector = parse_selector(text)
        matches = [t for t in config.target if selector.matches(t.name, t.precision, t.prune.slug if t.prune else None)]
        if matches:
            chosen.extend(t for t in matches if t not in chosen)
            continue
        if selector.slug is not None:
            raise ConfigError(
                f"--target {text} names no pruned variant of the config; add a [[target]] with that "
                "[target.prune], or drop the slug"
            )
        if (new := TargetConfig(name=selector.name, precision=selector.precision or "fp32")) not in chosen:
            chosen.append(new)
    return config.model_copy(update={"target": chosen})
