"""What ``results.json`` holds, typed: the run, the machine, and one cell per (artifact, batch).

``kiln bench`` builds these models and the reports and ``kiln compare`` read them by attribute;
``results.json`` is their JSON dump and ``kiln/schemas/results.schema.json`` is generated from
:class:`Results` (``python -m kiln.report.schema``). Times are milliseconds unless a name says
seconds, throughput is items (batch rows) per second, sizes and memory are bytes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kiln.config import BenchSettings

# Version 2 added the speed-up intervals, rounds, stalls, threading facts, the machine's other
# work and the theoretical peak's clock source; a version 1 file still loads (those left unset).
RESULTS_SCHEMA = "kiln.results/2"
Mode = Literal["latency", "throughput"]

BASELINE = "eager"  # the target every cell is compared with (kiln.targets.BASELINE)


class _Block(BaseModel):
    """A block kiln writes whole: in the schema every field it writes is required."""

    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)


class _Facts(BaseModel):
    """Facts a runtime or the machine reports: the fields kiln reads are typed, the rest kept
    verbatim (a target's or a GPU's own facts)."""

    model_config = ConfigDict(extra="allow")


def _unset(value: Any) -> bool:
    return value is None


def _reported(**kwargs: Any) -> Any:
    """A fact that may be missing: ``None`` when it is, and then not written."""
    return Field(None, exclude_if=_unset, **kwargs)


class Latency(_Block):
    """One cell's timed samples (one sample: one request, or ``requests`` in flight)."""

    samples: Annotated[int, Field(ge=1)]
    p50_ms: Annotated[float, Field(ge=0)]
    p90_ms: Annotated[float, Field(ge=0)]
    p99_ms: Annotated[float, Field(ge=0)]
    mean_ms: Annotated[float, Field(ge=0)]
    min_ms: Annotated[float, Field(ge=0)]
    max_ms: Annotated[float, Field(ge=0)]
    std_ms: Annotated[float, Field(ge=0)]
    cv: Annotated[float, Field(ge=0)]  # standard deviation / mean
    throughput: Annotated[float, Field(ge=0)]  # items per second
    timed_seconds: Annotated[float, Field(ge=0)]
    unstable: bool  # cv above the run's threshold


class RuntimeInfo(_Facts):
    """What the runner reported in the worker (each target adds its own facts)."""

    execution_precision: str | None = _reported()
    threads: int | str | None = _reported()  # a count, or e.g. "ort-default"


class Accuracy(BaseModel):
    """The evaluation metric the build measured (higher is better), beside eager's."""

    model_config = ConfigDict(extra="forbid")

    metric: str
    eager: float
    value: float
    drop: float
    samples: int | None = _reported()
    max_drop: float | None = _reported()
    pruned_eager: float | None = _reported()


class CellBase(_Block):
    """Every cell: what was asked, and what the artifact's manifest says about it."""

    key: str  # the artifact: <target>-<precision>[-<prune slug>][-member-<name>]
    target: str
    precision: str
    member: str | None = _reported()  # an ensemble's member measured alone
    # Quantization-aware training: the task metric of PTQ and of QAT on the same quantizer (the
    # PyTorch models, on the evaluation set); the artifact's own is in ``accuracy``.
    ptq_metric: float | None = _reported()
    qat_metric: float | None = _reported()
    # Distillation ([recovery].teacher): the teacher's task metric and parameters, the student's.
    teacher_metric: float | None = _reported()
    teacher_params: int | None = _reported()
    student_params: int | None = _reported()
    batch: Annotated[int, Field(ge=1)]
    mode: Mode
    threads: Annotated[int, Field(ge=1)]
    flags: list[str] = []  # wasted optimizations, precision mismatches, instability
    size_bytes: int | None = None
    execution_precision: str | None = None  # what the runtime reported, else what the build recorded
    parity_passed: bool | None = None  # None: no parity check ran for this artifact
    parity_worst: str | None = None
    accuracy: Accuracy | None = None
    simulated: bool = False  # the gate ran on a simulation of the artifact's numerics
    flops: int | None = None  # of one forward pass at this batch (matmul-class operators)
    gflops: float | None = None
    roofline_fraction: float | None = None  # gflops over the peak of the precision it executes
    # The precision counted against (fp32, bf16 or int8): what the runtime executes, not the name
    # of the artifact (kiln.report.roofline.compute_precision).
    roofline_precision: str | None = _reported()
    # The median of the per-round ratios to eager (each round times eager and this cell in turn),
    # and its distribution-free confidence interval (see kiln.bench.stats.ratio_interval).
    speedup_vs_eager: float | None = None
    speedup_ci_low: float | None = _reported()
    speedup_ci_high: float | None = _reported()
    speedup_ci_level: float | None = _reported()  # the interval's coverage: 0.95 from 6 rounds on
    speedup_rounds: list[float] | None = _reported()  # the per-round ratios, in round order


class PromptFigures(_Block):
    """One prompt length of a generative cell. TTFT (time to first token): one sample per
    generation, from the session's reset through the prompt's prefill to the first token picked."""

    prompt_tokens: Annotated[int, Field(ge=1)]
    ttft: Latency  # its throughput is prefills per second
    prefill_tokens_per_s: Annotated[float, Field(ge=0)]  # prompt tokens over the mean TTFT
    itl_p50_ms: Annotated[float, Field(ge=0)]  # the decode steps after this prompt
    tokens_per_s: Annotated[float, Field(ge=0)]


class Roofline(_Block):
    """The memory-bandwidth bound of decoding: each token reads the weights once and the KV cache
    at its context, so no runtime decodes faster than bandwidth / bytes per token."""

    weight_bytes: Annotated[int, Field(ge=0)]  # weights read per token (see basis)
    kv_bytes: Annotated[int, Field(ge=0)]  # the KV cache read at the mean context
    mean_context: Annotated[float, Field(ge=0)]  # tokens attended to, over every decode step
    bytes_per_token: Annotated[int, Field(ge=1)]
    tokens_per_s: Annotated[float, Field(gt=0)]  # measured bandwidth / bytes per token
    fraction: Annotated[float, Field(ge=0)]  # the cell's decode tokens/s over tokens_per_s
    # The bytes per token fit in the last-level cache: DRAM bandwidth is then not the bound, and
    # the fraction can pass 1.
    in_cache: bool
    basis: str


class GenerationFigures(_Block):
    """A causal LM's cell: greedy decoding through ``kiln.decoding.generate`` from seeded prompts.
    The cell's ``latency`` is then the inter-token latency over every decode step (the first token
    is in TTFT) and its throughput the decode tokens per second."""

    new_tokens: Annotated[int, Field(ge=1)]
    generations: Annotated[int, Field(ge=1)]  # timed, per prompt length
    prompts: Annotated[list[PromptFigures], Field(min_length=1)]
    tokens_per_s: Annotated[float, Field(ge=0)]  # decode steps over their time, all prompts
    roofline: Roofline | None = None  # None when the weights or the bandwidth are unknown
    notes: list[str] = []  # prompt lengths left out (they do not fit the context)
    gate: str | None = None  # the build's generation gate, its worst figure
    perplexity_increase: float | None = None  # held-out perplexity over eager's, relative


class Stalls(_Block):
    """Samples far above the cell's median: a thread preempted by other work (an OpenMP barrier
    then waits for it), a page fault, a frequency drop. Counted, not dropped: the p50 and the
    per-round ratios are robust to them, the mean and the tail are not."""

    factor: Annotated[float, Field(gt=1)]  # a stall takes more than factor x the median
    threshold_ms: Annotated[float, Field(ge=0)]
    count: Annotated[int, Field(ge=0)]
    share: Annotated[float, Field(ge=0, le=1)]  # of the timed samples
    worst_ms: float | None = None  # the longest stall, None without any


class Threading(_Block):
    """The threading a worker ran with: the variables that steer OpenMP, the math libraries and
    the memory allocator (as set in its environment; unset ones are the defaults), the OpenMP runtimes
    loaded into it, and torch's intra-op threads where torch was loaded."""

    env: dict[str, str]
    openmp_libraries: list[str]
    torch_threads: int | None = None
    torch_backend: str | None = None  # e.g. "OpenMP", from torch.__config__.parallel_info()


class ProfileRow(_Block):
    """One (operator kind, precision) row of an artifact's profile."""

    kind: str  # the runtime's node type, fused and quantized variants folded (Conv, MatMul, Reorder)
    precision: str  # what it ran in: int8, bf16, fp32, int4 ... ("mixed" for "other")
    isa: str | None = _reported()  # where the runtime names it: AMX, VNNI, AVX-512
    ops: Annotated[int, Field(ge=1)]  # operators of this kind and precision
    ms: Annotated[float, Field(ge=0)]  # per run, summed over them
    share: Annotated[float, Field(ge=0, le=1)]  # of the profiled time


class OpProfile(_Block):
    """Where one artifact's time goes, from its runtime's own profiler (``kiln bench --profile``),
    run after the timed rounds; shares are meaningful on a loaded machine, absolute times less so."""

    source: str  # the profiler and what it reads
    runs: Annotated[int, Field(ge=0)]  # profiled runs the times are averaged over
    total_ms: Annotated[float, Field(ge=0)]  # per run, the sum of the operators' times
    rows: list[ProfileRow] = []  # the largest rows, then "other"
    precision_shares: dict[str, float] = {}  # share of the time per precision
    layout_share: Annotated[float, Field(ge=0, le=1)] = 0.0  # reorders and transposes
    layout_ops: Annotated[int, Field(ge=0)] = 0
    fp32_share: Annotated[float, Field(ge=0, le=1)] | None = _reported()  # quantized artifacts only
    fp32_ops: dict[str, int] = {}  # kind -> operators left in fp32 (quantized artifacts), most fp32 time first
    flag: str | None = _reported()  # a quantized artifact with a large fp32 share
    unavailable: str | None = _reported()  # why the target has no profile


class MeasuredCell(CellBase):
    """A cell that ran: its timings, its worker's load and memory figures."""

    status: Literal["ok"] = "ok"
    reason: None = None
    latency: Latency
    first_inference_ms: Annotated[float, Field(ge=0)]
    load_s: Annotated[float, Field(ge=0)]
    import_s: Annotated[float, Field(ge=0)]
    warmup_iters: Annotated[int, Field(ge=0)]
    peak_rss_bytes: Annotated[int, Field(ge=0)]
    rss_before_load_bytes: Annotated[int, Field(ge=0)]
    runtime: RuntimeInfo
    generation: GenerationFigures | None = _reported()  # causal LMs only
    rounds: Annotated[int, Field(ge=1)] | None = _reported()  # interleaved rounds this cell was timed in
    stalls: Stalls | None = _reported()
    threading: Threading | None = _reported()
    # The hypervisor's share of the CPUs' time (steal) in each round this cell kept, in round
    # order, and the rounds dropped for steal over ``max_round_steal`` (not in any figure).
    round_steal: list[Annotated[float, Field(ge=0, le=1)]] | None = _reported()
    rounds_dropped: Annotated[int, Field(ge=0)] | None = _reported()
    # The worker processes this cell's rounds ran in (BenchSettings.processes; fewer if the
    # rounds ended before the next process was due).
    processes: Annotated[int, Field(ge=1)] | None = _reported()
    # Minor page faults per timed run, over every round (getrusage in the worker): memory the
    # run took as fresh pages from the kernel instead of reusing its own. An allocator that
    # hands large blocks back and maps them anew pays one per 4 KiB page, every run.
    page_faults_per_run: Annotated[float, Field(ge=0)] | None = _reported()
    profile: OpProfile | None = _reported()  # kiln bench --profile, at the first batch


class FailedCell(CellBase):
    """A cell that did not run: it failed (``error``) or cannot run here (``skipped``)."""

    status: Literal["error", "skipped"]
    reason: str


Cell = Annotated[MeasuredCell | FailedCell, Field(discriminator="status")]


class Gpu(_Facts):
    name: str | None = _reported()
    driver: str | None = _reported()


class Fingerprint(_Facts):
    """The machine (``kiln doctor``); ``id`` names the hardware alone, toolchains excluded."""

    id: Annotated[str, Field(min_length=1)]
    cpu: str
    arch: str
    flags: dict[str, bool]  # the ISA extensions kiln looks for, each present or not
    physical_cores: Annotated[int, Field(ge=1)]
    logical_cores: int | None
    memory_gib: float
    gpus: list[Gpu]
    os: str
    python: str
    toolchain: dict[str, str]  # distribution -> version

    def hardware(self) -> dict[str, Any]:
        """The fields that decide whether two runs are comparable (GPUs by name)."""
        return {
            "cpu": self.cpu,
            "arch": self.arch,
            "flags": self.flags,
            "physical_cores": self.physical_cores,
            "logical_cores": self.logical_cores,
            "memory_gib": self.memory_gib,
            "gpus": [g.name for g in self.gpus],
        }


# Above these, a span of time counts as busy (MachineLoad.busy): a measured machine figure taken
# then is re-measured when the machine is quiet, and a report says when cells were timed then.
BUSY_OTHER_CPUS = 0.25  # CPUs kept busy on average by processes other than kiln's
BUSY_STEAL = 0.05  # the hypervisor's share of CPU time (the suite's max_round_steal)


class MachineLoad(_Block):
    """Load averages (1, 5, 15 min) before and after the timed cells, and the CPU time other
    processes took meanwhile: other work on the machine is what makes cells unstable."""

    load_average_before: list[float] | None = None
    load_average_after: list[float] | None = None
    cpus: int | None = None
    timed_seconds: float | None = _reported()  # wall time of the timed cells
    # CPUs kept busy on average by processes other than kiln's (the machine's busy time from
    # /proc/stat minus kiln's own and its workers'), and the share of time the hypervisor took.
    other_cpus: float | None = _reported()
    steal_share: float | None = _reported()

    def busy(self) -> str | None:
        """Why the machine counts as busy over this span, or ``None`` when it was quiet: other
        processes kept more than ``BUSY_OTHER_CPUS`` CPUs busy, or the hypervisor stole more
        than ``BUSY_STEAL`` of the CPU time; where /proc/stat could not say, a 1-minute load
        average above the CPU count. Unknown conditions count as busy."""
        if self.other_cpus is not None:
            if self.other_cpus > BUSY_OTHER_CPUS:
                return f"other processes kept {self.other_cpus:.2f} CPUs busy"
            if self.steal_share is not None and self.steal_share > BUSY_STEAL:
                return f"the hypervisor stole {self.steal_share:.1%} of CPU time"
            return None
        load, cpus = self.load_average_before, self.cpus
        if load and cpus:
            return f"load average {load[0]:g} on {cpus} CPUs" if load[0] > cpus else None
        return "the machine's load was not recorded"


class PeakFigures(BaseModel):
    """GFLOP/s (fp32, bf16) and GOP/s (int8); ``None`` where nothing measures or estimates it."""

    model_config = ConfigDict(extra="forbid")

    fp32_gflops: float | None = None
    bf16_gflops: float | None = None
    int8_gflops: float | None = None

    def for_precision(self, precision: str) -> float | None:
        """The figure of a compute precision (fp32, bf16 or int8; ``None`` for any other)."""
        return {"fp32": self.fp32_gflops, "bf16": self.bf16_gflops, "int8": self.int8_gflops}.get(precision)


class MeasuredPeak(PeakFigures):
    """The fastest GEMM kernel installed, per precision (cached per fingerprint and threads)."""

    schema_id: str | None = Field(None, alias="schema")
    fingerprint: str | None = None
    threads: int | None = None
    method: str | None = None
    fp32_kernel: str | None = None
    bf16_kernel: str | None = None
    int8_kernel: str | None = None
    # The machine's load over the measurement (None in files from before it was recorded: such a
    # figure is re-measured, as one taken on a busy machine is once the machine is quiet).
    machine_load: MachineLoad | None = _reported()

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TheoreticalPeak(PeakFigures):
    basis: str | None = None  # how the estimate was made
    clock_mhz: float | None = _reported()
    # Where the clock came from: "cpufreq" (cpuinfo_max_freq) or "lscpu" (CPU max MHz) are the
    # maximum clock; "cpuinfo" (/proc/cpuinfo's cpu MHz) is the current or nominal one.
    clock_source: str | None = _reported()
    max_clock_known: bool | None = _reported()


class Bandwidth(BaseModel):
    """Memory bandwidth measured by a STREAM triad (cached per fingerprint and thread count)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_id: str | None = Field(None, alias="schema")
    fingerprint: str | None = None
    threads: int | None = None
    gbps: Annotated[float, Field(gt=0)]  # 1e9 bytes per second, STREAM's count (read b and c, write a)
    method: str
    last_level_cache_bytes: int | None = None  # what reads smaller than this may run from instead
    cache: str | None = None  # the file it is cached in
    machine_load: MachineLoad | None = _reported()  # over the measurement, as MeasuredPeak's


class PeakRaise(_Block):
    """A cell that ran faster than the measured peak of its precision: that precision's peak, for
    every fraction of the report, is the cell's rate instead (a floor of what the machine does,
    as the FLOPs are counted on matmuls and convolutions only)."""

    precision: str
    measured_gflops: float  # the GEMM micro-benchmark's figure
    gflops: float  # the cell's, now the peak
    cell: str  # its key and batch


class Peak(BaseModel):
    model_config = ConfigDict(extra="forbid")

    measured: MeasuredPeak
    theoretical: TheoreticalPeak
    cache: str | None = None  # the file the measured figures are cached in
    raised: list[PeakRaise] | None = _reported()  # precisions whose peak a cell beat

    def for_precision(self, precision: str) -> float | None:
        """The peak a fraction of this compute precision is counted against: the measured one,
        or the cell's rate that beat it."""
        raised = [r.gflops for r in self.raised or [] if r.precision == precision]
        return max(raised) if raised else self.measured.for_precision(precision)


class Gates(_Block):
    max_metric_drop: float | None = None  # the config's [gates]; kiln compare gates accuracy with it


class Results(_Block):
    """``results.json``: the source of truth for report.md, report.html and ``kiln compare``."""

    model_config = ConfigDict(populate_by_name=True)

    schema_id: Literal["kiln.results/1", "kiln.results/2"] = Field(RESULTS_SCHEMA, alias="schema")
    kiln_version: str
    created: Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")]
    model: Annotated[str, Field(min_length=1)]
    source: str | None = None
    config: str | None = None
    settings: BenchSettings
    fingerprint: Fingerprint
    machine_load: MachineLoad | None = None
    peak: Peak
    bandwidth: Bandwidth | None = _reported()  # measured for causal LMs (the decode roofline)
    # FLOPs of one forward pass per batch (JSON object keys are strings: "1", "8").
    flops: dict[int, Annotated[int, Field(ge=0)]] = Field(json_schema_extra={"propertyNames": {"pattern": "^[0-9]+$"}})
    gates: Gates
    cells: Annotated[list[Cell], Field(min_length=1)]

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def batch(self, batch: int) -> list[MeasuredCell | FailedCell]:
        return [c for c in self.cells if c.batch == batch]

    @property
    def generative(self) -> bool:
        """A causal LM's run: its cells decode tokens (see :class:`GenerationFigures`)."""
        return self.settings.new_tokens is not None
