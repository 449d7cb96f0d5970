#!/usr/bin/env bash
# Builds the Olive peer venv: benchmarks/peers/.venv-olive (git-ignored).
#
#   bash benchmarks/peers/olive.sh          # create, or skip when up to date
#   bash benchmarks/peers/olive.sh --force  # rebuild from scratch
#
# Olive (olive-ai) lives in its own venv, never in kiln's dependencies: it pulls optuna,
# pandas, SQLAlchemy and its own transformers. Everything comes from olive.txt, a full pin set
# installed with --no-deps under the project's constraints.txt (torch stays the 2.13.0 CPU
# build). onnxruntime is kiln's version, so the quantizer is the same code kiln calls.
#
# Idempotent: the venv holds a stamp (sha256 of olive.txt and constraints.txt); when it
# matches, nothing is done. When it does not, the venv is rebuilt from scratch.
#
# Env: PYTHON (interpreter for the venv, default python3.11 or python3), OLIVE_VENV (venv path),
#      CONSTRAINTS (constraints file, default <repo>/constraints.txt).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${OLIVE_VENV:-$HERE/.venv-olive}"
REQ="$HERE/olive.txt"
CONSTRAINTS="${CONSTRAINTS:-$ROOT/constraints.txt}"
STAMP="$VENV/.olive-installed"
if [[ -z "${PYTHON:-}" ]]; then
  if command -v python3.11 >/dev/null; then PYTHON=python3.11; else PYTHON=python3; fi
fi

force=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

[[ -f "$REQ" ]] || { echo "missing $REQ" >&2; exit 1; }
[[ -f "$CONSTRAINTS" ]] || { echo "missing $CONSTRAINTS" >&2; exit 1; }

want="$(sha256sum "$REQ" | cut -d' ' -f1) $(sha256sum "$CONSTRAINTS" | cut -d' ' -f1)"
if [[ $force -eq 0 && -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  echo "Olive peer venv is up to date: $VENV"
  exit 0
fi

start=$(date +%s)
echo "building the Olive peer venv in $VENV (with $PYTHON)"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --no-deps -c "$CONSTRAINTS" -r "$REQ"
"${PIP[@]}" check

# Smoke test, and a record of what the venv really holds.
"$PY" - "$VENV/versions.json" <<'PYEOF'
import json
import sys
from importlib.metadata import version

import onnxruntime
import torch

import os
os.environ.setdefault("OLIVE_DISABLE_TELEMETRY", "1")
os.environ.setdefault("CI", "1")
from olive.passes.onnx.quantization import OnnxStaticQuantization  # noqa: F401
from olive.workflows import run  # noqa: F401  (imports olive.telemetry: needs requests)

names = ["olive-ai", "onnxruntime", "onnx", "onnxscript", "onnx-ir", "torch", "transformers", "numpy"]
versions = {n: version(n) for n in names}
versions["python"] = sys.version.split()[0]
assert torch.__version__.endswith("+cpu"), f"torch is not the CPU build: {torch.__version__}"
assert onnxruntime.get_device() == "CPU", onnxruntime.get_device()
with open(sys.argv[1], "w") as f:
    json.dump(versions, f, indent=2)
print(json.dumps(versions, indent=2))
PYEOF
"${PIP[@]}" freeze >"$VENV/freeze.txt"

echo "$want" >"$STAMP"
echo "Olive peer venv ready in $(( $(date +%s) - start ))s: $VENV"
