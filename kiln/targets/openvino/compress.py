"""Weight-only compression with ``nncf.compress_weights`` (nncf 3.4): ``int8-weights`` and ``int4``.

- ``int8-weights``: every weight int8 (``options.mode``: ``int8_asym`` | ``int8_sym``), per channel.
- ``int4``: ``options.mode`` (``int4_asym`` for a causal LM, else ``int4_sym``), ``group_size``
  (a causal LM's: the largest of 128/64/32 dividing its layers' widths; else 64), ``ratio`` (the share of ratio-defining layers at 4 bits; the
  rest in ``backup_mode``, NNCF's int8_asym unless set), ``all_layers`` (the embeddings and the
  LM head too; by default they stay in the backup mode). ``group_size_fallback`` decides what
  happens to a layer whose input width the group size does not divide (NNCF 3.4 raises
  ``InvalidGroupSizeError`` by default): ``adjust`` (kiln's default) gives it the largest
  power-of-two group >= 32 that divides it, else the backup mode; ``ignore`` keeps it float;
  ``error`` refuses the build naming the layers.
- Data-aware int4 (``awq``, ``scale_estimation``; and with data, ``ratio < 1`` ranks layers by
  their activations instead of their weights' error) needs data: ``options.dataset``, a text
  file tokenized with the model's tokenizer into prefill windows of the step graph (the longest
  chunk it takes, empty cache), else ``[calibration]`` samples as given, else (a causal LM with a
  tokenizer) kiln's own text (:func:`default_text`). The gate's held-out
  text is never used: calibrating on it would grade the artifact on its own calibration data.

What was done is read back from the compressed graph (:mod:`kiln.targets.openvino.weights`):
the bit-width distribution by layers and weights, the embeddings' and head's format, and the
layers that fell back from the group size. On random weights int4 looks far worse than on a
trained model (weights with no structure have no outliers to protect).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kiln.errors import ConfigError, TargetBuildError
from kiln.spec import Arrays
from kiln.targets.base import CompileContext, toolchain_prints
from kiln.targets.openvino import blocks
from kiln.targets.openvino.options import LLM_GROUPS, LLM_MODE, NNCF_INT4, OTHER_GROUP, OTHER_MODE, OpenVINOOptions
from kiln.targets.openvino.weights import Layer, bit_widths, distribution, layers

FOUR_BIT = ("i4", "u4", "nf4", "f4e2m1")


def weight_types(model: Any) -> dict[str, int]:
    """Weight constants by element type after compression: what really went to int4 or int8."""
    counts: dict[str, int] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Constant" and op.get_output_size() == 1:
            kind = op.get_output_element_type(0).get_type_name()
            if kind in ("i4", "u4", "i8", "u8", "nf4", "f4e2m1"):
                counts[kind] = counts.get(kind, 0) + 1
    return counts


def text_samples(ctx: CompileContext, ref: str | None, limit: int) -> tuple[list[Arrays], str]:
    """A text file (``None``: kiln's own calibration text) as prefill windows of the step graph
    (empty cache)."""
    from kiln.decoding import Tokenizer

    sig = ctx.export.signature
    cache = sig.cache
    if cache is None:
        raise ConfigError("options.dataset is text, read for a causal LM only; give this model [calibration]")
    if ctx.export.tokenizer_dir is None:
        raise ConfigError("options.dataset is text and this model has no tokenizer; give [calibration] samples instead")
    if ref is None:
        text, named = default_text()
    else:
        path = Path(ref) if Path(ref).is_absolute() else ctx.root / ref
        if not path.is_file():
            raise ConfigError(f"options.dataset {path} does not exist; give a text file (relative to the config)")
        text, named = path.read_text(), f"options.dataset {ref!r}"
    ids = Tokenizer(ctx.export.tokenizer_dir).encode(text)
    width = min(sig.dims["sequence"].max, sig.context_length())
    windows = [ids[i : i + width] for i in range(0, len(ids), width)]
    windows = [w for w in windows if len(w) >= 2][:limit]
    if not windows:
        raise ConfigError(f"options.dataset {ref} has fewer than 2 tokens; give more text")
    empty = np.zeros((1, cache.kv_heads, 0, cache.head_dim), dtype=np.float32)
    samples = [
        {
            "input_ids": np.asarray([w], dtype=np.int64),
            "position_ids": np.arange(len(w), dtype=np.int64)[None],
            **({"attention_mask": np.ones((1, len(w)), dtype=np.int64)} if cache.attention_mask else {}),
            **dict.fromkeys(cache.past_names, empty),
        }
        for w in windows
    ]
    used = sum(len(w) for w in windows)
    return samples, f"{named}: {used} tokens in {len(windows)} prefill windows of up to {width}"


def model_group(model: Any) -> int:
    """A causal LM's int4 group size from its widths: the largest of LLM_GROUPS that divides the
    input width of every ratio-defining layer (SmolLM2's 576 and 1536: 64), else the largest (and
    the layers it does not divide fall back, as group_size_fallback says)."""
    found = layers(model)
    ends = set(_ends(found))
    widths = {layer.width for layer in found if layer.name not in ends}
    return next((g for g in LLM_GROUPS if all(w % g == 0 for w in widths)), LLM_GROUPS[0])


# Prose of the Python reference manual that every CPython ships (pydoc_data), after kiln's own text:
# AWQ and scale estimation need more than a few windows (SmolLM2-135M, groups of 32, 80 % int4:
# teacher-forced agreement 0.820 on 577 tokens, 0.891 on about 15,000).
REFERENCE_TOPICS = ("execmodel", "naming", "import", "calls", "function", "assignment", "comparisons", "try", "objects")


def default_text() -> tuple[str, str]:
    """kiln's calibration text and what the manifest calls it."""
    import sys

    from kiln.decoding import CALIBRATION_TEXT

    try:
        from pydoc_data.topics import topics
    except ImportError:  # a Python built without its docs: kiln's own text alone
        return CALIBRATION_TEXT, "kiln's calibration text (kiln.decoding.CALIBRATION_TEXT)"
    extra = [topics[k] for k in REFERENCE_TOPICS if k in topics]
    version = ".".join(map(str, sys.version_info[:3]))
    return "\n\n".join([CALIBRATION_TEXT, *extra]), (
        f"kiln's calibration text (kiln.decoding.CALIBRATION_TEXT) and {len(extra)} topics of Python {version}'s "
        "reference manual (pydoc_data)"
    )


def _data(ctx: CompileContext, options: OpenVINOOptions, names: list[str]) -> tuple[Any, str | None, int]:
    """The NNCF dataset for data-aware compression, where it comes from, and its size: the text
    file asked for, else ``[calibration]``, else (a causal LM with a tokenizer) kiln's own text."""
    import nncf

    if options.dataset is not None:
        samples, source = text_samples(ctx, options.dataset, options.subset_size)
    elif ctx.calibration is not None:
        samples = ctx.calibration.samples[: options.subset_size]
        source = f"[calibration] {ctx.calibration.source!r}: {len(samples)} samples"
    elif ctx.export.signature.generative and ctx.export.tokenizer_dir is not None:
        samples, source = text_samples(ctx, None, options.subset_size)
    else:
        return None, None, 0
    return nncf.Dataset([{n: s[n] for n in names} for s in samples]), source, len(samples)


def compress(ctx: CompileContext, model: Any) -> tuple[Any, dict[str, Any]]:
    import nncf

    options: OpenVINOOptions = ctx.options
    info: dict[str, Any] = {"tool": "nncf.compress_weights", "activations": "float (weight-only)"}
    if ctx.precision == "int8-weights":
        mode = options.mode or "int8_asym"
        with toolchain_prints():  # NNCF's progress bars
            compressed = nncf.compress_weights(model, mode=getattr(nncf.CompressWeightsMode, mode.upper()))
        found = layers(compressed)
        info.update(mode=mode, **_record(compressed, found))
        return compressed, {"execution_precision": "int8 weights, float compute", "quantization": info, "notes": []}
    if options.blocks != "nncf" and not any(k in options.model_fields_set for k in NNCF_INT4):
        source = source_blocks(model, options.blocks == "source", options.block_activations)
        if source is not None:
            return source
    llm = ctx.export.signature.generative
    mode = options.mode or (LLM_MODE if llm else OTHER_MODE)
    group = options.group_size if options.group_size is not None else (model_group(model) if llm else OTHER_GROUP)
    data_aware = options.awq or options.scale_estimation
    names = [i.get_any_name() for i in model.inputs]
    dataset, source, count = _data(ctx, options, names) if data_aware or options.ratio < 1 else (None, None, 0)
    if data_aware and dataset is None:
        asked = " and ".join(k for k in ("awq", "scale_estimation") if getattr(options, k))
        raise ConfigError(
            f"options.{asked} needs data and this model has no tokenizer for kiln's calibration text: "
            "give [calibration] samples"
        )
    fallback = options.group_size_fallback
    args: dict[str, Any] = {
        "mode": getattr(nncf.CompressWeightsMode, mode.upper()),
        "group_size": group,
        "ratio": options.ratio,
        "all_layers": options.all_layers,
        "awq": options.awq,
        "scale_estimation": options.scale_estimation,
        "advanced_parameters": nncf.AdvancedCompressionParameters(
            group_size_fallback_mode=getattr(nncf.GroupSizeFallbackMode, fallback.upper())
        ),
    }
    if options.backup_mode is not None:
        args["backup_mode"] = getattr(nncf.BackupMode, options.backup_mode.upper())
    if dataset is not None:
        args.update(dataset=dataset, subset_size=count)
    try:
        with toolchain_prints():
            compressed = nncf.compress_weights(model, **args)
    except nncf.InvalidGroupSizeError as err:  # fallback "error": NNCF refuses before it compresses
        failed = _fell_back(layers(model), group, options.all_layers)
        shown = ", ".join(f"{layer.name} ({layer.width})" for layer in failed[:4]) + (
            ", ..." if len(failed) > 4 else ""
        )
        raise TargetBuildError(
            f"int4 group size {group} does not divide the input width of {len(failed)} layers: {shown}; "
            f"set options.group_size_fallback = 'adjust' (smaller groups, else {options.backup_mode or 'int8_asym'}) "
            "or 'ignore' (float), or a group size that divides them"
        ) from err
    found = layers(compressed)
    fell_back = _fell_back(found, group, options.all_layers)
    info.update(
        mode=mode,
        group_size=group,
        ratio=options.ratio,
        backup_mode=options.backup_mode or "int8_asym",
        all_layers=options.all_layers,
        embeddings_and_head=_ends(found),
        awq=options.awq,
        scale_estimation=options.scale_estimation,
        dataset=source,
        sensitivity=("activations on the dataset" if dataset is not None else "weight quantization error")
        if options.ratio < 1
        else None,
        group_size_fallback=fallback,
        fell_back={layer.name: f"{layer.format} (width {layer.width})" for layer in fell_back},
        **_record(compressed, found),
    )
    return compressed, {
        "execution_precision": "int4 weights, float compute",
        "quantization": info,
        "notes": _notes(info, fell_back, group),
    }


def source_blocks(model: Any, required: bool, activations: str = "float") -> tuple[Any, dict[str, Any]] | None:
    """int4 in the blocks the weights already lie on (:mod:`kiln.targets.openvino.blocks`): when
    every layer NNCF would make int4 is on a grid (``required``: else refuse), those blocks, and the
    weights on none (an embedding or head the file kept in another type) int8 per channel by NNCF;
    ``None``: NNCF's int4 as usual."""
    import nncf

    found = blocks.plan(model)
    before = layers(model)
    ends = set(_ends(before))
    on_grid = {name.removesuffix(".weight") for name in found.grids}
    missing = [layer for layer in before if layer.name not in ends and layer.name not in on_grid]
    if missing or not found.grids:
        if not required:
            return None
        shown = ", ".join(layer.name for layer in missing[:4]) + (", ..." if len(missing) > 4 else "")
        raise TargetBuildError(
            f"options.blocks = 'source': {len(missing) or len(before)} layers' weights lie on no 4-bit GGUF grid "
            f"(Q4_0, Q4_1; Q8_0 for the embeddings){': ' + shown if shown else ''}; the source was not dequantized "
            "from such a file: set options.blocks = 'nncf' (or 'auto')"
        )
    blocks.apply(model, found, activations)
    if found.off:  # the embeddings or head the file kept in a type kiln does not rebuild
        with toolchain_prints():
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    after = layers(model)
    info: dict[str, Any] = {
        "tool": "kiln (the source's own blocks)",
        "activations": (
            "int8, quantized by the CPU plugin at run time in groups of 32 (signed blocks, no zero point; "
            "Q4_1's minimum as a block-sum product)"
            if activations == "int8"
            else "float (weight-only)"
        ),
        "mode": "source blocks",
        "blocks": found.kinds(),
        "block_size": blocks.BLOCK,
        "largest_miss_steps": found.miss,  # how far a weight was from its block's point (the source: 0)
        "others": {name: "int8_asym per channel (NNCF)" for name in found.off},
        "embeddings_and_head": _ends(after),
        **_record(model, after),
    }
    kinds = ", ".join(f"{n} {kind.upper()}" for kind, n in found.kinds().items())
    notes = [
        f"int4 in the source's own blocks ({kinds}, blocks of {blocks.BLOCK}): the weights lie on the grid of the "
        "file they were dequantized from and are written back as they were, not re-quantized"
    ]
    compute = "int8 dynamic activations" if activations == "int8" else "float compute"
    return model, {"execution_precision": f"int4 weights, {compute}", "quantization": info, "notes": notes}


def _record(compressed: Any, found: list[Layer]) -> dict[str, Any]:
    return {
        "bit_widths": bit_widths(found),
        "distribution": distribution(found),
        "weight_constants": weight_types(compressed),
    }


def _ends(found: list[Layer]) -> dict[str, str]:
    """The embeddings and the LM head (the last MatMul): NNCF's backup layers unless all_layers."""
    ends = {layer.name: layer.format for layer in found if layer.kind == "embedding"}
    head = [layer for layer in found if layer.kind == "matmul"][-1:]
    ends.update({layer.name: layer.format for layer in head})
    return ends


def _fell_back(found: list[Layer], group: int, all_layers: bool) -> list[Layer]:
    """Ratio-defining layers whose input width the group size does not divide."""
    if group <= 0:
        return []
    ends = set() if all_layers else set(_ends(found))
    return [layer for layer in found if layer.name not in ends and layer.width % group]


def _notes(info: dict[str, Any], fell_back: list[Layer], group: int) -> list[str]:
    notes = []
    if fell_back:
        smaller = sum(layer.bits == "int4" for layer in fell_back)
        others = sorted({layer.format for layer in fell_back if layer.bits != "int4"})
        kept = f"; {len(fell_back) - smaller} went to {', '.join(others)}" if others else ""
        notes.append(
            f"int4 group size {group} does not divide the input width of {len(fell_back)} layers: {smaller} "
            f"got a smaller group{kept} (options.group_size_fallback = {info['group_size_fallback']!r})"
        )
    if not any(k in info["weight_constants"] for k in FOUR_BIT):
        notes.append(
            "no layer was compressed to 4 bits (first/last layers and layers the group size cannot split "
            "stay in the backup mode): this artifact is int8 weight-only; try options.group_size or a larger model"
        )
    return notes
