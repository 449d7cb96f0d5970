"""Model sources: a Python factory, a saved ``torch.export`` program, a local Hugging Face folder,
a GGUF file (a causal LM, :mod:`kiln.capture.gguf`) or an ONNX file. Each loads into a :class:`LoadedModel`; each failure is one ``SourceError`` line.

:func:`source_files` lists the files whose content identifies a source, without importing torch,
so that an up-to-date check stays fast.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from dataclasses import replace
from pathlib import Path
from typing import Any

from kiln.callables import load_callable, resolve_path
from kiln.capture.causal import is_causal_lm
from kiln.capture.loaded import LoadedModel, SourceKind
from kiln.config import ENSEMBLE, DimSpec, InputSpec, ModelConfig
from kiln.errors import SourceError, error_line
from kiln.spec import Signature

WEIGHT_SUFFIXES = {".pt", ".pth", ".bin", ".safetensors", ".npz", ".npy", ".json", ".txt", ".model"}


def source_kind(source: str) -> SourceKind:
    if source == ENSEMBLE:
        return "ensemble"
    if source.startswith("hf:"):
        return "hf"
    if source.startswith("gguf:") or source.endswith(".gguf"):
        return "gguf"
    if source.endswith(".pt2"):
        return "pt2"
    if source.endswith(".onnx"):
        return "onnx"
    if ":" in source:
        return "python"
    raise SourceError(
        f"model source {source!r} is not recognised; expected path/file.py:fn, package.module:fn, "
        "model.pt2, model.onnx, hf:path/to/folder or gguf:path/model.gguf"
    )


def hf_folder(source: str, root: Path) -> Path:
    """The folder of an ``hf:`` source: a path, or ``hf:pkg://package/sub/folder`` for a model
    folder shipped inside an installed Python package (found without importing it)."""
    return _located(source, source.removeprefix("hf:"), root)


def gguf_file(source: str, root: Path) -> Path:
    """The file of a GGUF source: ``gguf:path``, a plain ``path.gguf``, or
    ``gguf:pkg://package/sub/file.gguf`` inside an installed Python package."""
    return _located(source, source.removeprefix("gguf:"), root)


def _located(source: str, ref: str, root: Path) -> Path:
    """A path relative to the config's folder, or ``pkg://package/sub`` inside an installed
    package (found without importing it)."""
    if ref.startswith("pkg://"):
        package, _, sub = ref.removeprefix("pkg://").partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise SourceError(f"model source {source!r}: package {package!r} is not installed; pip install it")
        return Path(next(iter(spec.submodule_search_locations))) / sub
    return resolve_path(root, ref)


def source_files(model: ModelConfig, root: Path) -> list[Path]:
    """The files whose bytes identify the model (for the cache key); no torch import. An
    adapter's files are the model's too."""
    adapters = [p for ref in model.adapters for p in sorted(resolve_path(root, ref).rglob("*")) if p.is_file()]
    return _model_files(model, root) + adapters


def _model_files(model: ModelConfig, root: Path) -> list[Path]:
    kind = source_kind(model.source)
    if kind == "ensemble":
        assert model.ensemble is not None
        found = [f for m in member_configs(model) for f in _model_files(m, root)]
        return sorted(dict.fromkeys(found))
    if kind == "hf":
        folder = hf_folder(model.source, root)
        return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    if kind in ("pt2", "onnx", "gguf"):
        path = gguf_file(model.source, root) if kind == "gguf" else resolve_path(root, model.source)
        return [path] if path.is_file() else []
    module_part = model.source.rsplit(":", 1)[0]
    if module_part.endswith(".py"):
        file = resolve_path(root, module_part)
    else:
        spec = importlib.util.find_spec(module_part.split(".")[0])
        if spec is None or spec.origin is None:
            return []
        found = importlib.util.find_spec(module_part)
        file = Path(found.origin) if found and found.origin else Path(spec.origin)
    if not file.is_file():
        return []
    # The factory's folder: helper modules and weight files beside it change the model too.
    return sorted(
        p for p in file.parent.iterdir() if p.is_file() and (p.suffix == ".py" or p.suffix in WEIGHT_SUFFIXES)
    )


def member_configs(model: ModelConfig) -> list[ModelConfig]:
    """An ensemble's members as models of their own: each member's source with the ensemble's
    input spec and task."""
    assert model.ensemble is not None
    return [
        model.model_copy(update={"source": member, "ensemble": None, "name": f"{model.name}-{name}"})
        for member, name in zip(model.ensemble.members, model.ensemble.member_names(), strict=True)
    ]


def _load_ensemble(model: ModelConfig, root: Path) -> LoadedModel:
    """Every member loaded as a model of its own, checked to take the same inputs, and wrapped
    into one module (:mod:`kiln.capture.ensemble`)."""
    from kiln.capture.ensemble import ensemble_module

    assert model.ensemble is not None
    loaded: list[LoadedModel] = []
    for member in member_configs(model):
        kind = source_kind(member.source)
        if kind in ("onnx", "ensemble"):
            raise SourceError(
                f"ensemble member {member.source!r} is {'an ONNX file' if kind == 'onnx' else 'an ensemble'}; "
                "members are PyTorch models (path/file.py:fn, model.pt2 or hf:folder), wrapped into one graph"
            )
        one = load_source(member, root)
        if one.signature.generative:
            raise SourceError(f"ensemble member {member.source!r} is a causal LM; ensembles combine class scores")
        if loaded and one.signature.inputs != loaded[0].signature.inputs:
            raise SourceError(
                f"ensemble member {member.source!r} takes inputs {_inputs_line(one.signature)}, but "
                f"{model.ensemble.members[0]!r} takes {_inputs_line(loaded[0].signature)}; members share one input "
                "spec: give [model].inputs and [model].dims, or make the members agree"
            )
        accepts(one.module, one.signature, f"ensemble member {member.source!r}")
        loaded.append(one)
    first = loaded[0]
    sig = Signature(first.signature.inputs, first.signature.dims)
    example = next((one.example for one in loaded if one.example is not None), None)
    module = ensemble_module([one.module for one in loaded], model.ensemble, sig.input_names)
    return LoadedModel("ensemble", sig, module=module, example=example)


def accepts(module: Any, sig: Signature, what: str) -> None:
    """One forward pass on seeded inputs at the spec's opt point: a model that cannot take the
    spec's inputs is one line now, not a shape error deep inside a capture."""
    import torch

    from kiln.spec import random_inputs
    from kiln.tensors import to_tensors

    try:
        with torch.no_grad():
            module(*to_tensors(sig, random_inputs(sig, "opt", 0)))
    except Exception as err:  # user code: any failure means the inputs do not fit
        raise SourceError(
            f"{what} does not accept the inputs {_inputs_line(sig)} ({error_line(err, 200)}); "
            "it must take the same inputs as the model it is combined with"
        ) from err


def _inputs_line(sig: Signature) -> str:
    return ", ".join(f"{spec.name}{list(spec.shape)}:{spec.dtype}" for spec in sig.inputs)


def load_source(model: ModelConfig, root: Path) -> LoadedModel:
    """Load the model named by ``[model].source``."""
    kind = source_kind(model.source)
    if kind == "ensemble":
        return _load_ensemble(model, root)
    loader = {"python": _load_python, "pt2": _load_pt2, "hf": _load_hf, "gguf": _load_gguf, "onnx": _load_onnx}[kind]
    if model.adapters:
        if kind not in ("python", "hf", "gguf"):
            raise SourceError(
                f"[model].adapter needs a transformers model (hf:, gguf: or a factory); the source is {kind}"
            )
        for ref in model.adapters:
            if not resolve_path(root, ref).is_dir():
                raise SourceError(
                    f"adapter {resolve_path(root, ref)} is not a folder; point [model].adapter at a PEFT adapter"
                )
        model = model.model_copy(update={"adapter": [str(resolve_path(root, ref).resolve()) for ref in model.adapters]})
    return loader(model, root)


def _configured(model: ModelConfig) -> Signature | None:
    return Signature(tuple(model.inputs), dict(model.dims)) if model.inputs else None


def _load_python(model: ModelConfig, root: Path) -> LoadedModel:
    import torch

    factory = load_callable(model.source, root, "model factory")
    try:
        made = factory()
    except Exception as err:
        raise SourceError(f"model factory {model.source!r} raised {type(err).__name__}: {err}") from err
    module, example = made if isinstance(made, tuple) else (made, None)
    if not isinstance(module, torch.nn.Module):
        raise SourceError(
            f"model factory {model.source!r} returned {type(module).__name__}; expected an nn.Module "
            "or (nn.Module, example_inputs)"
        )
    if model.task == "text-generation" or (model.task == "auto" and is_causal_lm(module)):
        return _causal_factory(module, model, root)
    if example is not None and not isinstance(example, tuple):
        example = (example,)
    sig = _configured(model) or _signature_from_example(module, example, model.source)
    if getattr(getattr(module, "config", None), "use_cache", None):
        # A transformers model captured as a fixed graph: a KV cache object in its outputs is no
        # tensor (task text-generation captures the cache explicitly instead).
        module.config.use_cache = False
    return LoadedModel("python", sig, module=bind_inputs(module.eval(), sig.input_names, model.source), example=example)


def bind_inputs(module: Any, names: list[str], where: str) -> Any:
    """The module as kiln calls every model: positionally, in the spec's input order.

    When the spec's names are the leading parameters of ``forward`` in order (or do not name its
    parameters at all), positional is what the model expects. When every name is a parameter but
    in another order, or with optional parameters between them (transformers'
    ``forward(input_ids, past_key_values=None, attention_mask=None)``), the inputs bind by
    keyword. A parameter ``forward`` needs that the spec does not give is one line naming it."""
    params = [p for p in inspect.signature(module.forward).parameters.values() if p.kind not in (p.VAR_KEYWORD,)]
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return module  # forward(*args): positional by construction
    by_name = {p.name: p for p in params}
    named = all(n in by_name and by_name[n].kind != by_name[n].POSITIONAL_ONLY for n in names)
    required = [p.name for p in params if p.default is p.empty]
    if named:
        if missing := [r for r in required if r not in names]:
            raise SourceError(
                f"model {where!r}: forward() needs the parameter {missing[0]!r}, which [model].inputs does not give; "
                f"add an input named {missing[0]!r} or give it a default in forward"
            )
        if names == [p.name for p in params[: len(names)]]:
            return module
        return _keyword_binder(module, names)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    needed = [p.name for p in params if p.default is p.empty]
    if len(needed) > len(names) or any(p.kind == p.KEYWORD_ONLY and p.default is p.empty for p in params):
        extra = next((p.name for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty), None)
        missing = extra or needed[len(names)]
        raise SourceError(
            f"model {where!r}: forward() needs the parameter {missing!r}, which [model].inputs does not give "
            f"(inputs {names}, passed positionally); add it to [model].inputs or give it a default in forward"
        )
    if len(names) > len(positional):
        raise SourceError(
            f"model {where!r}: [model].inputs names {len(names)} inputs but forward() takes {len(positional)} "
            f"positionally ({', '.join(p.name for p in positional)}); name the inputs after forward's parameters"
        )
    return module


def _keyword_binder(module: Any, names: list[str]) -> Any:
    """A wrapper whose ``forward`` takes the inputs positionally, by the spec's names, and hands
    them on by keyword (torch.export matches ``dynamic_shapes`` to these named parameters)."""
    import torch

    args = ", ".join(names)
    source = f"def forward(self, {args}):\n    return self.model({', '.join(f'{n}={n}' for n in names)})\n"
    scope: dict[str, Any] = {}
    exec(compile(source, f"<kiln keyword binding {args}>", "exec"), scope)  # names are forward's own parameters

    class KeywordBinding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = module

    KeywordBinding.forward = scope["forward"]  # type: ignore[method-assign]
    return KeywordBinding().eval()


def _causal_factory(module: Any, model: ModelConfig, root: Path) -> LoadedModel:
    """A factory's causal LM: a transformers model with a generation head, wrapped as the step
    graph, or a module that already has the step contract and says its cache layout with a
    ``kiln_cache`` attribute (a :class:`kiln.spec.CacheSpec` or its fields as a dict)."""
    from kiln.capture.causal import causal_loaded, example_inputs, step_signature
    from kiln.spec import CacheSpec

    del root
    if is_causal_lm(module):
        return causal_loaded(module, model, "python", None)  # [generation].tokenizer names its tokenizer
    layout = getattr(module, "kiln_cache", None)
    if layout is None:
        raise SourceError(
            f"model factory {model.source!r}: task text-generation needs a transformers causal LM, or a module "
            "with forward(input_ids, position_ids, *past) -> (logits, *present) and a kiln_cache attribute "
            "(layers, kv_heads, head_dim, vocab_size, max_positions)"
        )
    if model.adapters:
        raise SourceError("[model].adapter needs a transformers model; this factory returns a plain step module")
    cache = layout if isinstance(layout, CacheSpec) else CacheSpec(**layout)
    sig = step_signature(cache, model)
    return LoadedModel("python", sig, module=module.eval(), example=example_inputs(sig))


def _signature_from_example(module: Any, example: tuple[Any, ...] | None, source: str) -> Signature:
    """No [model].inputs: take shapes from the example, with a dynamic leading batch dim."""
    if example is None:
        raise SourceError(
            f"model {source!r} gives no example inputs and the config has no [model].inputs; "
            "add inputs = [{ name = ..., shape = [...] }] or return (module, example_inputs)"
        )
    params = [p for p in inspect.signature(module.forward).parameters.values() if p.kind != p.VAR_KEYWORD]
    names = [p.name for p in params] + [f"input_{i}" for i in range(len(params), len(example))]
    inputs = tuple(
        InputSpec(name=names[i], shape=["batch", *t.shape[1:]], dtype=str(t.dtype).removeprefix("torch."))
        for i, t in enumerate(example)
    )
    size = int(example[0].shape[0])
    return Signature(inputs, {"batch": DimSpec(min=1, opt=size, max=max(64, size))})


def _load_pt2(model: ModelConfig, root: Path) -> LoadedModel:
    import torch

    path = resolve_path(root, model.source)
    if not path.is_file():
        raise SourceError(f"saved program {path} does not exist; check [model].source")
    try:
        program = torch.export.load(str(path))
    except Exception as err:
        raise SourceError(f"{path} is not a loadable torch.export program ({type(err).__name__}: {err})") from err
    sig = _configured(model)
    if sig is None:
        raise SourceError(f"{path}: a .pt2 source needs [model].inputs and [model].dims to name its inputs")
    return LoadedModel("pt2", sig, module=program.module(), program=program)


def _load_onnx(model: ModelConfig, root: Path) -> LoadedModel:
    import onnx

    path = resolve_path(root, model.source)
    if not path.is_file():
        raise SourceError(f"ONNX file {path} does not exist; check [model].source")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:
        raise SourceError(f"{path} is not a readable ONNX model ({type(err).__name__}: {err})") from err
    sig = _configured(model) or _signature_from_onnx(proto, str(path))
    outputs = tuple(o.name for o in proto.graph.output)
    return LoadedModel("onnx", Signature(sig.inputs, sig.dims, outputs), onnx_path=path)


def _signature_from_onnx(proto: Any, where: str) -> Signature:
    from onnx import helper

    init = {i.name for i in proto.graph.initializer}
    inputs, dims = [], {}
    for value in proto.graph.input:
        if value.name in init:
            continue
        tensor = value.type.tensor_type
        shape: list[int | str] = []
        for d in tensor.shape.dim:
            if d.HasField("dim_value"):
                shape.append(int(d.dim_value))
            else:
                name = d.dim_param or f"{value.name}_dim{len(shape)}"
                dims.setdefault(name, DimSpec(min=1, opt=1, max=64))
                shape.append(name)
        dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        inputs.append(InputSpec(name=value.name, shape=shape, dtype=dtype))
    if not inputs:
        raise SourceError(f"{where}: the graph has no inputs")
    return Signature(tuple(inputs), dims)


def _load_hf(model: ModelConfig, root: Path) -> LoadedModel:
    folder = hf_folder(model.source, root)
    if not (folder / "config.json").is_file():
        raise SourceError(f"hf source {folder} has no config.json; point hf: at a local transformers model folder")
    from kiln.capture.hf import load_hf

    return load_hf(folder, model)


def _load_gguf(model: ModelConfig, root: Path) -> LoadedModel:
    """A GGUF file dequantized to fp32 and saved once as a transformers folder (kiln's cache),
    loaded from there as an ``hf:`` causal LM."""
    from kiln.capture.gguf import gguf_record, hf_folder_of
    from kiln.capture.hf import load_hf

    path = gguf_file(model.source, root)
    if model.task not in ("auto", "text-generation"):
        raise SourceError(f"gguf source {path}: a GGUF file is a causal LM; set [model].task to text-generation")
    folder = hf_folder_of(path, gguf_record(path))
    return replace(load_hf(folder, model), kind="gguf")
