"""Export once: capture with ``torch.export`` and lower to ONNX, into ``build/<model>/export/``.

:class:`ExportBundle` is what every target builds from. An ONNX failure does not stop targets
that build from the ExportedProgram (eager, aoti); the ones that need ONNX report it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kiln.capture.loaded import LoadedModel
from kiln.config import ExportConfig
from kiln.errors import ConfigError, ExportError, error_line
from kiln.manifest import DistillReport, PruneReport
from kiln.spec import Signature
from kiln.store import atomic_dir, up_to_date

PROGRAM = "program.pt2"
ONNX = "model.onnx"
META = "export.json"
TOKENIZER = "tokenizer"
# A causal LM's transformers config, beside its step program: a target that rebuilds the model in
# its runtime's own LLM form (ExecuTorch's static cache) re-creates it from this and the program's weights.
MODEL_CONFIG = "model_config.json"
# The files of a transformers tokenizer folder (every format it may be saved in).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",  # where transformers 5 saves a chat template
    "generation_config.json",
    "chat_template.jinja",
    "config.json",  # the model's config: OpenVINO GenAI's folder carries it, as optimum-intel's does
)


def copy_tokenizer(source: Path, dest: Path) -> None:
    """A causal LM's tokenizer travels with its export and every artifact: ``kiln generate`` and
    the gate read text, and a device gets everything it needs in one folder. Where transformers
    rebuilds the tokenizer on load (a model class such as ``LlamaTokenizer`` keeps only the
    vocabulary and post-processor of ``tokenizer.json``; a folder without one is converted), it
    re-saves it there, so that the ``tokenizer.json`` a device reads is the pipeline transformers runs."""
    files = [source / name for name in TOKENIZER_FILES if (source / name).is_file()]
    if all(path.name == "config.json" for path in files):
        raise ExportError(f"{source} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...)")
    dest.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copyfile(path, dest / path.name)
    if _rebuilt_on_load(dest):
        _save_as_transformers(source, dest)


# The classes that load tokenizer.json as it is; any other rebuilds its own pipeline around its vocabulary.
AS_SAVED = (None, "TokenizersBackend", "PreTrainedTokenizerFast")


def _rebuilt_on_load(folder: Path) -> bool:
    config = folder / "tokenizer_config.json"
    named = json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class") if config.is_file() else None
    return not (folder / "tokenizer.json").is_file() or named not in AS_SAVED


def _save_as_transformers(source: Path, dest: Path) -> None:
    try:
        from transformers import AutoTokenizer
    except ImportError:  # the files as given: kiln's Tokenizer reads tokenizer.json whole
        return
    try:
        AutoTokenizer.from_pretrained(dest).save_pretrained(dest)
    except Exception as err:
        raise ExportError(
            f"{source}: transformers could not load and re-save the tokenizer ({type(err).__name__}: {err}); "
            "save it with a transformers 5 fast tokenizer's save_pretrained"
        ) from err


@dataclass(frozen=True)
class ExportBundle:
    path: Path
    signature: Signature
    kind: str
    opset: int | None = None
    onnx_error: str | None = None
    prune: PruneReport | None = None  # what pruning did, for pruned variants
    distillation: DistillReport | None = None  # what distilling [recovery].teacher into it did
    notes: tuple[str, ...] = ()  # what the capture chose that the artifact should say (its manifest's notes)
    _program: Any = field(default=None, repr=False)

    @property
    def program_path(self) -> Path:
        if not (self.path / PROGRAM).is_file():
            raise ExportError(
                f"this target needs the captured torch.export program, but the source is {self.kind}; "
                "use a Python, .pt2 or hf: source"
            )
        return self.path / PROGRAM

    @property
    def tokenizer_dir(self) -> Path | None:
        return self.path / TOKENIZER if (self.path / TOKENIZER).is_dir() else None

    @property
    def model_config(self) -> Path | None:
        """The causal LM's transformers config (``config.json`` as saved), when the capture wrote one."""
        return self.path / MODEL_CONFIG if (self.path / MODEL_CONFIG).is_file() else None

    @property
    def onnx_path(self) -> Path:
        if self.onnx_error:
            raise ExportError(self.onnx_error)
        return self.path / ONNX

    def program(self) -> Any:
        """The ExportedProgram, loaded once."""
        if self._program is None:
            import torch

            object.__setattr__(self, "_program", torch.export.load(str(self.program_path)))
        return self._program

    def moved(self, path: Path) -> ExportBundle:
        """The same bundle at its final folder (it is written under a temporary name)."""
        return replace(self, path=path)

    @classmethod
    def open(cls, path: Path) -> ExportBundle:
        meta = json.loads((path / META).read_text())
        return cls(
            path=path,
            signature=Signature.from_dict(meta["signature"]),
            kind=meta["kind"],
            opset=meta.get("opset"),
            onnx_error=meta.get("onnx_error"),
            prune=PruneReport.model_validate(meta["prune"]) if meta.get("prune") else None,
            distillation=DistillReport.model_validate(meta["distillation"]) if meta.get("distillation") else None,
            notes=tuple(meta.get("notes", ())),
        )


@dataclass(frozen=True)
class StageModel:
    """The model an export stage captures, with what was done to it first (the stage records it)."""

    loaded: LoadedModel
    prune: PruneReport | None = None  # a pruned variant's
    distillation: DistillReport | None = None  # [recovery].teacher distilled into it


def export_stage(folder: Path, key: str, export: ExportConfig, model: Callable[[], StageModel]) -> ExportBundle:
    """The export stage in ``folder`` (``export/``, ``export-<prune slug>/``, ``export-member-<name>/``),
    whose cache key is ``key``: opened when it is up to date, else ``model()`` (made only then) is
    exported into it, whole or not at all."""
    if up_to_date(folder, key, META) is not None:
        return ExportBundle.open(folder)
    subject = model()
    with atomic_dir(folder) as tmp:
        bundle = export_model(subject, tmp, export, key)
    return bundle.moved(folder)


def check_example(sig: Signature, args: tuple[Any, ...]) -> None:
    """The source's own example inputs fit ``[model].inputs`` (else torch.export reads the
    example's size as outside the dim's range, naming neither shape)."""
    for spec, value in zip(sig.inputs, args, strict=False):
        shape = tuple(getattr(value, "shape", ()))
        if not sig.fits(spec, shape):
            raise ConfigError(
                f"the source's example input {spec.name!r} has shape {list(shape)}, and [model].inputs says "
                f"{sig.shown(spec)}; make the example fit the spec, or widen [model].dims"
            )


def first_forward(module: Any, args: tuple[Any, ...], sig: Signature) -> Any:
    """The model run once on inputs of the spec's shapes: a failure here is a spec that does not
    fit the model (one line with the shapes it was given and the model's line that failed)."""
    from kiln.capture.exporters.torch_export import model_files, user_line

    try:
        return module(*args)
    except Exception as err:
        given = ", ".join(
            f"{spec.name} {list(a.shape)} {spec.dtype}" for spec, a in zip(sig.inputs, args, strict=False)
        )
        where = user_line(err, model_files(module))
        raise ConfigError(
            f"the model failed{f' at {where}' if where else ''} on inputs of [model].inputs' shapes ({given}): "
            f"{error_line(err)}; make [model].inputs (shapes, dtypes) what the model's forward takes"
        ) from err


def export_model(subject: StageModel, out_dir: Path, export: ExportConfig, key: str) -> ExportBundle:
    """Capture and lower into ``out_dir`` (a fresh folder); ``key`` is the stage's cache key."""
    import torch

    from kiln.capture.exporters.onnx import to_onnx
    from kiln.capture.exporters.torch_export import capture, example_inputs
    from kiln.tensors import flatten_outputs

    loaded, prune, distillation, opset = subject.loaded, subject.prune, subject.distillation, export.opset
    sig = loaded.signature
    meta: dict[str, Any] = {"kind": loaded.kind, "cache_key": key, "notes": list(loaded.notes)}
    if prune is not None:
        meta["prune"] = prune.model_dump(mode="json")
    if distillation is not None:
        meta["distillation"] = distillation.model_dump(mode="json")
    if loaded.kind == "onnx":
        assert loaded.onnx_path is not None
        shutil.copyfile(loaded.onnx_path, out_dir / ONNX)
        bundle = ExportBundle(out_dir, sig, loaded.kind, prune=prune, distillation=distillation, notes=loaded.notes)
        meta["signature"] = sig.to_dict()
        (out_dir / META).write_text(json.dumps(meta, indent=2))
        return bundle
    args = example_inputs(sig, loaded.example)
    if len(args) != len(sig.inputs):
        raise ExportError(
            f"the model's example has {len(args)} inputs but [model].inputs names {len(sig.inputs)}; make them agree"
        )
    if loaded.example is not None:
        check_example(sig, args)
    with torch.no_grad():
        names, values = flatten_outputs(first_forward(loaded.module, args, sig))
    if sig.cache is not None:
        if len(values) != len(sig.outputs):
            raise ExportError(
                f"the step graph returned {len(values)} outputs; a causal LM step returns logits and "
                f"{len(sig.cache.present_names)} present key/value tensors ({len(sig.outputs)} in all)"
            )
        names = list(sig.outputs)
    sig = Signature(sig.inputs, sig.dims, tuple(names), sig.cache)
    program = loaded.program if loaded.program is not None else capture(loaded.module, args, sig, export.strict)
    torch.export.save(program, str(out_dir / PROGRAM))
    onnx_error = None
    try:
        to_onnx(program, args, sig, out_dir / ONNX, opset)
    except ExportError as err:
        onnx_error = str(err)
        (out_dir / ONNX).unlink(missing_ok=True)
    if loaded.tokenizer is not None:
        copy_tokenizer(loaded.tokenizer, out_dir / TOKENIZER)
    hf_config = getattr(getattr(loaded.module, "model", None), "config", None)
    if sig.cache is not None and hasattr(hf_config, "to_json_file"):  # kiln's step module holds the LM as .model
        hf_config.to_json_file(out_dir / MODEL_CONFIG)
    meta.update(signature=sig.to_dict(), opset=opset, onnx_error=onnx_error)
    (out_dir / META).write_text(json.dumps(meta, indent=2))
    return ExportBundle(
        out_dir, sig, loaded.kind, opset, onnx_error, prune, distillation, loaded.notes, _program=program
    )
