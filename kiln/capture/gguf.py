"""GGUF files (llama.cpp's format) as a model source: ``gguf:path/model.gguf``, a plain path that
ends in ``.gguf``, or ``gguf:pkg://package/file.gguf`` for a file shipped inside an installed
package.

transformers reads the file (``from_pretrained(folder, gguf_file=name)``, with the ``gguf``
package) and dequantizes every tensor to fp32: that model is the eager reference every gate
compares against, so a 4-bit file's artifacts are measured against the 4-bit model, not against
the weights it was quantized from (the manifest says so). transformers refuses to
``save_pretrained`` a model it loaded from GGUF, so its weights go into a fresh model of the same
config without the ``quantization_config``, saved as a plain transformers folder with the
tokenizer, its chat template and the generation config. That folder is made once per file and
toolchain version under kiln's cache (``gguf/<stem>-<key>``, the key from the file's sha256) and
loads through the ``hf:`` causal-LM path from there.
"""

from __future__ import annotations

import collections
import functools
import re
from pathlib import Path
from typing import Any

from kiln.errors import SourceError, error_line
from kiln.manifest import GgufRecord
from kiln.store import BuildLock, atomic_dir, cache_dir, cache_key, clean_debris, sha256_file, up_to_date, write_json
from kiln.versions import versions

STAGE = "kiln.gguf-folder/1"  # bump when the folder's layout changes: cached folders are remade
META = "kiln-gguf.json"
INSTALL = "pip install 'kiln[hf]' -c constraints.txt"


def gguf_record(path: Path) -> GgufRecord:
    """What the file holds: its architecture, quantization type, tensor types and sha256; one
    ``SourceError`` line when it is missing, not a GGUF file, or ``gguf`` is not installed. Read
    once per process for an unchanged file (the build asks for every artifact's manifest)."""
    if not path.is_file():
        raise SourceError(f"GGUF file {path} does not exist; check [model].source")
    stat = path.stat()
    return _record(path.resolve(), stat.st_size, stat.st_mtime_ns).model_copy(deep=True)


@functools.cache
def _record(path: Path, size: int, mtime_ns: int) -> GgufRecord:
    del size, mtime_ns  # part of the cache key only: a rewritten file is read again
    reader = _reader(path)
    census = collections.Counter(t.tensor_type.name for t in reader.tensors)
    quantization = _file_type(reader) or _dominant(reader) or "F32"
    bits = _bits(quantization)
    if bits >= 32:
        note = "the file holds fp32 weights: the fp32 reference is the file's own model"
    else:
        note = (
            f"the fp32 reference is dequantized from a {bits}-bit file: the gates compare the artifacts "
            "with the quantized model, not with the weights it was quantized from"
        )
    return GgufRecord(
        sha256=sha256_file(path),
        architecture=_text(reader, "general.architecture") or "unknown",
        quantization=quantization,
        bits=bits,
        tensor_types=dict(census.most_common()),
        note=note,
    )


def _reader(path: Path) -> Any:
    try:
        import gguf
    except ImportError as err:
        raise SourceError(f"GGUF sources need the gguf package; {INSTALL}") from err
    try:
        return gguf.GGUFReader(path)
    except Exception as err:  # the reader raises ValueError, struct.error, IndexError ... on other bytes
        raise SourceError(
            f"{path} is not a readable GGUF file ({error_line(err, 120)}); point [model].source at a llama.cpp "
            ".gguf file"
        ) from err


def _text(reader: Any, key: str) -> str | None:
    field = reader.get_field(key)
    return str(field.contents()) if field is not None else None


def _file_type(reader: Any) -> str | None:
    """``general.file_type`` as llama.cpp names it (``MOSTLY_Q4_1`` -> ``Q4_1``)."""
    import gguf

    field = reader.get_field("general.file_type")
    try:
        name = gguf.LlamaFileType(int(field.contents())).name if field is not None else None
    except ValueError:  # a type newer than this gguf package
        return None
    if name is None or name == "GUESSED":
        return None
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def _dominant(reader: Any) -> str | None:
    """The type most of the matrices are stored in (files without ``general.file_type``)."""
    matrices = collections.Counter(t.tensor_type.name for t in reader.tensors if len(t.shape) >= 2)
    return matrices.most_common(1)[0][0] if matrices else None


def _bits(quantization: str) -> int:
    """The nominal bits per weight of a llama.cpp type: 4 for Q4_0, Q4_1, Q4_K_M, IQ4_XS ..."""
    if found := re.match(r"T?I?Q(\d)", quantization):
        return int(found.group(1))
    return {"F16": 16, "BF16": 16, "F64": 64}.get(quantization, 32)


def hf_folder_of(path: Path, record: GgufRecord) -> Path:
    """The GGUF as a plain transformers folder in kiln's cache, made now unless it is there."""
    key = cache_key({"stage": STAGE, "gguf": record.sha256, "versions": versions(("transformers", "gguf", "torch"))})
    root = cache_dir() / "gguf"
    folder = root / f"{path.stem}-{key[:16]}"
    with BuildLock(root):
        clean_debris(root)
        if up_to_date(folder, key, META) is None:
            with atomic_dir(folder) as tmp:
                _save_folder(path, record, tmp)
                write_json(tmp / META, {"cache_key": key, "gguf": str(path), "sha256": record.sha256})
    return folder


def _save_folder(path: Path, record: GgufRecord, out: Path) -> None:
    import torch

    from kiln.capture.hf import offline_transformers

    transformers = offline_transformers()
    try:
        loaded = transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as err:  # unsupported architecture, tokenizer type or tensor layout
        raise SourceError(
            f"gguf:{path}: transformers {transformers.__version__} cannot load this {record.architecture!r} GGUF "
            f"as a causal LM ({error_line(err, 160)}); use a GGUF of an architecture transformers reads "
            "(llama, mistral, qwen2, gemma ...) or the original model as an hf: folder"
        ) from err
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)  # what makes save_pretrained refuse
    plain = transformers.AutoModelForCausalLM.from_config(type(loaded.config).from_dict(settings), dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(out)  # config.json, generation_config.json, model.safetensors
    tokenizer.save_pretrained(out)  # tokenizer.json, tokenizer_config.json, chat_template.jinja
