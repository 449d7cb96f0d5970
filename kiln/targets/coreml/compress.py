"""Core ML compression settings, the ``coremltools.optimize.coreml`` passes, and the weight check.

:class:`Settings` is made once from a ``[[target]]`` (precision, typed options, prune) and drives
both sides: the passes applied to the ``.mlpackage`` here and the same compression applied in
PyTorch by :mod:`kiln.targets.coreml.simulation`. The weight check decompresses what the package stores and
compares each matrix with the source weight it came from (after batch-norm folding, which Core ML
does during conversion): ``max|stored - source| / max|source|`` per tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kiln.config import TargetConfig
from kiln.targets.coreml.options import MODES, CoreMLOptions


@dataclass(frozen=True)
class Settings:
    """Everything that decides the package's numerics, shared by the package and the simulation."""

    precision: str
    mode: str  # none | linear | palettize | w8a8
    compute_precision: str  # fp16 | fp32
    dtype: str | None = None  # int8 | int4 (linear, w8a8)
    granularity: str = "per_channel"  # linear: per_channel | per_block; palettize: per_tensor | per_grouped_channel
    block_size: int = 32
    group_size: int = 32
    nbits: int | None = None
    weight_threshold: int = 2048  # coremltools' default: smaller weights stay uncompressed
    sparse: bool = False  # the export was pruned to zeros: store them sparse
    deployment_target: str = "iOS17"
    compute_units: str = "all"
    enumerated_shapes: dict[str, list[list[int]]] | None = None
    kv_cache: str | None = None  # a causal LM's cache form asked for; None: state
    deployment_given: bool = False  # minimum_deployment_target came from the options

    @property
    def compresses(self) -> bool:
        return self.mode in ("linear", "palettize")

    @property
    def bits(self) -> int:
        """Bits per stored weight before sparsity: when a sparse mask (1 bit) pays."""
        if self.mode in ("linear", "w8a8"):
            return 4 if self.dtype == "int4" else 8
        if self.mode == "palettize":
            return self.nbits or 8
        return 16 if self.compute_precision == "fp16" else 32


def is_sparse(prune: Any) -> bool:
    """Whether the pruned export has zeros worth storing sparse (magnitude, 2:4; not channel,
    which removes the channels outright). kiln prunes before capture, so every target gets it."""
    method = getattr(prune, "method", None) if not isinstance(prune, dict) else prune.get("method")
    return method in ("magnitude", "2:4")


def parse_settings(target: TargetConfig, options: CoreMLOptions) -> Settings:
    """A Core ML target's precision, validated options and prune as :class:`Settings`."""
    mode, kind = MODES[target.precision]
    fields: dict[str, Any] = {"dtype": kind if mode in ("linear", "w8a8") else None}
    if mode == "linear":
        fields["granularity"] = options.granularity or ("per_block" if kind == "int4" else "per_channel")
    if mode == "palettize":
        fields["nbits"] = options.nbits or kind or 6
        fields["granularity"] = options.granularity or "per_tensor"
    for name in ("block_size", "group_size", "weight_threshold"):
        if getattr(options, name) is not None:
            fields[name] = getattr(options, name)
    sparse = is_sparse(target.prune)
    # per-block quantization, int4, grouped palettes and joint (pruned + quantized) weights are iOS18 formats
    needs18 = (
        fields["dtype"] == "int4"
        or fields.get("granularity") in ("per_block", "per_grouped_channel")
        or (sparse and mode != "none")
    )
    return Settings(
        precision=target.precision,
        mode=mode,
        compute_precision="fp32" if target.precision == "fp32" else options.compute_precision,
        sparse=sparse,
        deployment_target=options.minimum_deployment_target or ("iOS18" if needs18 else "iOS17"),
        compute_units=options.compute_units,
        enumerated_shapes=options.enumerated_shapes,
        kv_cache=options.kv_cache,
        deployment_given=options.minimum_deployment_target is not None,
        **fields,
    )


def compress(mlmodel: Any, settings: Settings) -> Any:
    """Apply the configured ``coremltools.optimize.coreml`` passes: the pruned export's zeros
    stored sparse first (a mask pays above 2 / bits sparsity), then quantization or palettization
    of the remaining weights (joint compression keeps the mask)."""
    import coremltools.optimize.coreml as cto

    threshold = settings.weight_threshold
    joint = False
    if settings.sparse:
        sparse = cto.OpThresholdPrunerConfig(
            threshold=1e-12, minimum_sparsity_percentile=min(0.9, 2 / settings.bits), weight_threshold=threshold
        )
        mlmodel = cto.prune_weights(mlmodel, cto.OptimizationConfig(global_config=sparse))
        joint = True
    if settings.mode in ("linear", "w8a8"):
        config = cto.OpLinearQuantizerConfig(
            mode="linear_symmetric",
            dtype=settings.dtype,
            granularity=settings.granularity if settings.mode == "linear" else "per_channel",
            block_size=settings.block_size,
            weight_threshold=threshold,
        )
        kwargs = {"joint_compression": True} if joint else {}
        mlmodel = cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(global_config=config), **kwargs)
    elif settings.mode == "palettize":
        config = cto.OpPalettizerConfig(
            mode="kmeans",
            nbits=settings.nbits,
            granularity=settings.granularity,
            group_size=settings.group_size,
            weight_threshold=threshold,
        )
        kwargs = {"joint_compression": True} if joint else {}
        mlmodel = cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=config), **kwargs)
    return mlmodel


def quantize_activations(mlmodel: Any, samples: list[dict[str, np.ndarray]]) -> Any:
    """w8a8: activation ranges from the calibration samples (runs Core ML predictions: macOS only)."""
    import coremltools.optimize.coreml as cto

    config = cto.OptimizationConfig(
        global_config=cto.experimental.OpActivationLinearQuantizerConfig(mode="linear_symmetric")
    )
    return cto.linear_quantize_activations(mlmodel, config, samples)


def stored_weights(mlmodel: Any) -> dict[str, np.ndarray]:
    """Matrices (rank >= 2, float) as the package stores them, decompressed to float32."""
    import coremltools.optimize.coreml as cto

    decompressed = cto.decompress_weights(mlmodel)
    meta = cto.get_weights_metadata(decompressed, weight_threshold=0)
    return {
        name: np.asarray(m.val, np.float32)
        for name, m in meta.items()
        if np.asarray(m.val).ndim >= 2 and np.issubdtype(np.asarray(m.val).dtype, np.floating)
    }


def rel_error(a: np.ndarray, ref: np.ndarray) -> float:
    scale = float(np.abs(ref).max())
    diff = float(np.abs(a.astype(np.float64) - ref.astype(np.float64)).max())
    return diff / scale if scale > 0 else diff


def match_weights(stored: dict[str, np.ndarray], source: dict[str, np.ndarray]) -> dict[str, tuple[str, float]]:
    """Pair each source matrix with the stored one it became: same shape, smallest error (names
    differ after conversion; folding and fp16 keep the right pair far closer than any other). A
    linear captured with a dynamic batch is ``view -> mm(x, weight.t()) -> view``, and the
    converter stores the transposed constant: a stored matrix is compared both ways."""
    pairs: dict[str, tuple[str, float]] = {}
    free = dict(stored)
    for name, src in sorted(source.items(), key=lambda kv: -kv[1].size):
        candidates = [
            (rel_error(form, src), key)
            for key, w in free.items()
            for form in (w, w.T if w.ndim == 2 else w)
            if form.shape == src.shape
        ]
        if candidates:
            err, key = min(candidates)
            pairs[name] = (key, err)
            del free[key]
    return pairs


def oriented(stored: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``stored`` the way round it is closest to ``ref`` (see :func:`match_weights`)."""
    if stored.ndim != 2 or stored.T.shape != ref.shape:
        return stored
    if stored.shape != ref.shape or rel_error(stored.T, ref) < rel_error(stored, ref):
        return stored.T
    return stored


def weight_report(
    stored: dict[str, np.ndarray], source: dict[str, np.ndarray], simulated: dict[str, np.ndarray] | None = None
) -> dict[str, Any]:
    """The manifest's compact weight figures: per-tensor max relative error, the worst, sparsity."""
    pairs = match_weights(stored, source)
    errors = {name: round(err, 6) for name, (_, err) in sorted(pairs.items())}
    report: dict[str, Any] = {
        "metric": "max|stored - source| / max|source| per tensor (batch norm folded)",
        "max_rel": errors,
        "worst": max(errors.items(), key=lambda kv: kv[1])[0] if errors else None,
        "worst_max_rel": max(errors.values()) if errors else None,
        "unmatched": sorted(set(source) - set(pairs)),
        "sparsity": round(
            sum(int((stored[k] == 0).sum()) for k, _ in pairs.values())
            / max(1, sum(stored[k].size for k, _ in pairs.values())),
            4,
        ),
    }
    if simulated is not None:
        # How closely the PyTorch simulation reproduces the stored weights, per tensor.
        # (a neighbouring level or palette entry for a weight on a rounding boundary shows in the max).
        both = [
            (simulated[name], oriented(stored[key], simulated[name]))
            for name, (key, _) in pairs.items()
            if name in simulated
        ]
        differ = sum(int((np.abs(a - b) > 1e-3 * np.abs(b).max()).sum()) for a, b in both)
        report["simulation_vs_package"] = {
            "max_rel": round(max(rel_error(a, b) for a, b in both), 6) if both else None,
            "differing_fraction": round(differ / max(1, sum(b.size for _, b in both)), 5),
        }
    return report
