"""What a build records, typed: the artifact's manifest, its gate verdict, what the toolchain chose.

These models are the only way kiln reads and writes ``manifest.json`` and the gate; nothing
downstream (summary, bench, reports, packaging) reads them by string key. The JSON schema in
``kiln/schemas/manifest.schema.json`` is generated from :class:`Manifest` (``make schemas``)
and a test keeps the two equal.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator

from kiln.config import EnsembleConfig, Tolerance
from kiln.errors import ConfigError
from kiln.spec import Signature
from kiln.store import MANIFEST, write_json

MANIFEST_SCHEMA = "kiln.manifest/3"


class _Record(BaseModel):
    # Infinite figures (a shape mismatch) stay Infinity in JSON, as json.dumps writes them.
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")


class Execution(BaseModel):
    """What the toolchain really chose and the runtime reports: the fields kiln reads across
    modules are typed; each target adds its own facts (kept verbatim, read only by that target)."""

    model_config = ConfigDict(extra="allow", ser_json_inf_nan="constants")

    execution_precision: str | None = None
    notes: list[str] = []
    threads: int | str | None = None

    def update(self, values: Mapping[str, Any]) -> None:
        for key, value in values.items():
            setattr(self, key, value)

    def get(self, key: str, default: Any = None) -> Any:
        """A target's own fact (an extra field), or ``default``."""
        return getattr(self, key, default)

    def has(self, key: str) -> bool:
        """Whether the fact is recorded: a typed field that is set, or a target's own extra."""
        if key in type(self).model_fields:
            return getattr(self, key) is not None
        return key in (self.model_extra or {})


class OutputFigures(_Record):
    max_abs: float
    max_rel: float
    cosine: float
    top1: float | None = None


class ParityResult(_Record):
    passed: bool
    cases: int
    tolerance: Tolerance
    outputs: dict[str, OutputFigures]
    breaches: list[str]
    worst: str  # the gated figure closest to (or past) its limit: what a summary shows
    inputs: str = "seeded + calibration"


class EvaluationResult(_Record):
    metric: str
    samples: int
    eager: float
    value: float
    drop: float
    max_drop: float | None = None
    pruned_eager: float | None = None  # a pruned variant's own eager model


class PromptFigures(_Record):
    """One prompt of the generation gate: eager's greedy tokens against the artifact's."""

    prompt: str
    prompt_ids: list[int]
    eager_tokens: list[int]
    tokens: list[int]
    first_divergence: int | None  # the first step where the free-running sequences differ
    forced_top1: float  # teacher-forced next-token agreement with eager
    min_cosine: float  # the worst per-step logits cosine (teacher forced)
    # The largest teacher-forced logits difference, scaled to the row's rms and sqrt(2 ln vocab)
    # (kiln.parity.scaled_rel); None in manifests written before it was measured.
    scaled_rel: float | None = None


class GenerationResult(_Record):
    """What a user of a causal LM sees: the tokens it generates and how well it predicts text."""

    passed: bool
    tolerance: Tolerance
    prompts: int
    new_tokens: int
    exact: bool  # every prompt's greedy tokens identical to eager's
    token_agreement: float  # free-running: the share of generated positions equal to eager's
    first_divergence: int | None  # the earliest divergence over all prompts
    forced_top1: float  # teacher-forced, over every step of every prompt
    min_cosine: float
    mean_cosine: float
    step_cosine: list[float]  # per step, the mean over prompts (teacher forced)
    scaled_rel: float | None = None  # the largest of the prompts' (teacher forced; see PromptFigures)
    heldout_tokens: int
    perplexity_eager: float
    perplexity: float
    perplexity_increase: float  # relative to eager: 0.01 is 1 % higher
    breaches: list[str]
    worst: str
    per_prompt: list[PromptFigures]


class Gate(_Record):
    """The verdict on one artifact. ``passed`` is ``None`` when it was built but not run here
    (no simulation of its numerics either): neither a pass nor a failure, and said so."""

    passed: bool | None
    reason: str | None = None
    simulated: bool = False
    parity: ParityResult | None = None
    evaluation: EvaluationResult | None = None
    generation: GenerationResult | None = None
    breaches: list[str] = []

    @classmethod
    def not_run(cls, why: str) -> Gate:
        return cls(passed=None, reason=f"not run: {why}")

    @property
    def ran(self) -> bool:
        return self.passed is not None

    @property
    def metric_breached(self) -> bool:
        return any(b.startswith("metric ") for b in self.breaches)


class CalibrationSummary(_Record):
    source: str
    samples: int
    sha256: str


class PruneReport(BaseModel):
    """What pruning did to the model (before capture, so every target gets it); each method adds
    its own details (kept verbatim)."""

    model_config = ConfigDict(extra="allow")

    method: str
    amount: float
    importance: str
    scope: str
    steps: int
    params_before: int
    params_after: int
    flops_before: int | None = None
    flops_after: int | None = None
    flops_reduction: float | None = None
    sparsity: float | None = None
    metric_dense: float | None = None
    metric_before_recovery: float | None = None
    metric_after_recovery: float | None = None
    recovery: dict[str, Any] | None = None
    seconds: float | None = None


class DistillReport(BaseModel):
    """``[recovery].teacher`` distilled into the model before capture: both models' task metric
    on the build's evaluation set, and the fine-tuning's figures."""

    model_config = ConfigDict(extra="forbid")

    teacher: str  # the teacher's source
    teacher_params: int
    student_params: int
    teacher_metric: float | None = None
    student_metric_before: float | None = None
    student_metric_after: float | None = None
    epochs: int
    loss_first: float
    loss_final: float
    lr: float
    temperature: float
    alpha: float
    seconds: float


class QatReport(BaseModel):
    """Quantization-aware training of one quantized artifact: the target's own QAT path, and the
    task metric of post-training quantization on the same path beside it, when measured."""

    model_config = ConfigDict(extra="forbid")

    path: str  # what quantized in the loop (the target's tool and quantizer)
    epochs: int
    loss_first: float
    loss_final: float
    lr: float
    distilled_from: str | None = None  # "the float model" or the teacher's source
    # The task metric of the PyTorch model on the same quantizer (eval set): post-training
    # quantization, and the fake-quantized model after QAT (the artifact's own is in the gate).
    ptq_metric: float | None = None
    qat_metric: float | None = None
    seconds: float


class AdapterRecord(_Record):
    """A PEFT adapter merged into the model before capture."""

    path: str
    sha256: str


class GgufRecord(_Record):
    """A GGUF source (llama.cpp's format): what the file holds. Its eager reference is the file
    dequantized to fp32, so the gates measure the artifacts against the quantized model."""

    sha256: str
    architecture: str  # general.architecture: llama, qwen2 ...
    quantization: str  # general.file_type as llama.cpp names it: Q4_1, Q8_0, F32 ...
    bits: int  # the type's nominal bits per weight (4 for Q4_1)
    tensor_types: dict[str, int]  # how many tensors the file stores in each type
    note: str

    @property
    def line(self) -> str:
        """One line for a summary: the type, the file's hash and what the reference is."""
        return f"GGUF {self.architecture} {self.quantization} (sha256 {self.sha256[:16]}…): {self.note}"


class GoldenRecord(_Record):
    """``golden/``: inputs the gate used and eager's outputs for them, shipped with the artifact
    so that ``kiln verify --run`` on a device can prove it reproduces the numerics the gate
    accepted (see :mod:`kiln.gate.golden`). The tolerance is the gate's own, kept here because a gate
    that did not run records none."""

    cases: int
    kinds: list[str]  # seeded | calibration | evaluation | prompts
    bytes: int
    tolerance: Tolerance
    primary: str | None = None  # the output top-1 applies to (as in the gate)
    classifiers: list[str] = []  # outputs marked as class scores ([model].class_outputs)
    screened: bool  # every case passed the tolerance on this artifact at build time


class FileEntry(_Record):
    path: str
    sha256: str
    bytes: int


class SearchStep(_Record):
    """One setting the accuracy-controlled search built and gated."""

    settings: dict[str, Any]  # what it changed from the options as given ({} : the first build)
    passed: bool | None
    forced_top1: float | None = None  # a causal LM's teacher-forced agreement
    perplexity_increase: float | None = None
    min_cosine: float | None = None  # the worst teacher-forced step's logits cosine
    size_bytes: int
    seconds: float
    worst: str  # the first breach, else the gated figure closest to its limit


class SearchRecord(_Record):
    """Why the first build was not kept, what was tried (smallest and fastest first) and what won."""

    reason: str
    tried: list[SearchStep]
    chosen: int | None  # index into ``tried``; None when none passed (the last one is kept)


class StageRecord(_Record):
    """One stage of the build that made the artifact: its own seconds and the build process's
    peak resident memory when it ended (the process's, so far: it only grows); the stage's own
    peak (the kernel's high-water mark, reset as it started) and what was resident when it ended
    (what it left for the next). The stages the model's artifacts share (loading, export) head every one of
    their lists."""

    name: str  # load, data, export, compile, gate, attempt 2: compile, ..., write
    seconds: float
    peak_rss_bytes: int
    own_peak_rss_bytes: int | None = None  # None: not measured (a manifest from before, or not Linux)
    end_rss_bytes: int | None = None


class Manifest(_Record):
    """``<target>-<precision>[-<prune>]/manifest.json``: everything about one built artifact."""

    schema_id: str = Field(MANIFEST_SCHEMA, alias="schema")
    kiln_version: str
    created: str
    model: str
    source: str
    export_key: str
    cache_key: str
    target: str
    precision: str
    options: dict[str, Any]  # the target's options as given (validated against its options model)
    main_file: str
    signature: Signature
    toolchain: dict[str, str]
    execution: Execution
    calibration: CalibrationSummary | None = None
    gate: Gate
    prune: PruneReport | None = None
    distillation: DistillReport | None = Field(None, exclude_if=lambda v: v is None)
    qat: QatReport | None = Field(None, exclude_if=lambda v: v is None)
    adapter: AdapterRecord | None = None
    gguf: GgufRecord | None = Field(None, exclude_if=lambda v: v is None)  # a GGUF source's facts
    # An ensemble's members and how they combine; the member built alone, when it is one.
    ensemble: EnsembleConfig | None = Field(None, exclude_if=lambda v: v is None)
    member: str | None = Field(None, exclude_if=lambda v: v is None)
    export_dir: str = "export"  # export/, export-<prune slug>/ or export-member-<name>/: what FLOPs are counted on
    golden: GoldenRecord | None = None  # None: built before kiln wrote golden sets (schema 2)
    # The accuracy-controlled search, when the first setting breached the gate: every setting tried.
    search: SearchRecord | None = Field(None, exclude_if=lambda v: v is None)
    build_seconds: float
    stages: list[StageRecord] = []  # empty: built before kiln recorded its stages
    files: list[FileEntry]
    size_bytes: int  # the files the runtime loads (golden/ excluded)

    model_config = ConfigDict(extra="forbid", populate_by_name=True, ser_json_inf_nan="constants")

    @field_validator("signature", mode="before")
    @classmethod
    def _signature(cls, value: Any) -> Any:
        return Signature.from_dict(value) if isinstance(value, dict) else value

    @field_serializer("signature")
    def _dump_signature(self, sig: Signature) -> dict[str, Any]:
        return sig.to_dict()

    @property
    def key(self) -> str:
        return f"{self.target}-{self.precision}" + (f"-{self.slug}" if self.slug else "")

    @property
    def slug(self) -> str | None:
        """The prune slug of a pruned variant (its export folder's suffix)."""
        return self.export_dir.removeprefix("export-") if self.export_dir != "export" else None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def write(self, folder: Path) -> None:
        write_json(folder / MANIFEST, self.to_json())

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        """The manifest of a built folder, or one ``ConfigError`` line saying what to do."""
        path = folder / MANIFEST
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except (OSError, ValueError, RecursionError) as err:  # RecursionError: JSON nested thousands deep
            what = "unreadable" if not isinstance(err, ValidationError) else "from another kiln version"
            raise ConfigError(f"{path} is missing or {what}; run kiln build to (re)build it") from err

    @classmethod
    def find(cls, folder: Path) -> Manifest | None:
        """The manifest if the folder holds a readable one of this schema, else ``None``."""
        try:
            return cls.read(folder)
        except ConfigError:
            return None


def manifest_schema() -> dict[str, Any]:
    return Manifest.model_json_schema(by_alias=True, mode="serialization")


if __name__ == "__main__":  # python -m kiln.manifest: rewrite the committed schema
    out = Path(__file__).parent / "schemas" / "manifest.schema.json"
    out.write_text(json.dumps(manifest_schema(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {out}")
