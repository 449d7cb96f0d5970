#!/usr/bin/env bash
# Builds the optimum-intel peer venv: benchmarks/peers/.venv-optimum (git-ignored).
#
#   bash benchmarks/peers/optimum_intel.sh          # create, or skip when up to date
#   bash benchmarks/peers/optimum_intel.sh --force  # rebuild from scratch
#
# The peer lives in its own venv, never in kiln's dependencies: optimum-intel 2.2.0 needs
# transformers<5.6 (kiln pins 5.23.0). Everything comes from optimum-intel.txt, a full pin set
# installed with --no-deps, under the project's constraints.txt (torch stays the 2.13.0 CPU
# build; any other torch pulls GBs of CUDA wheels). torchvision is left out and removed if
# present: PyPI's torchvision for torch 2.13 is the CUDA build.
#
# Idempotent: the venv holds a stamp (sha256 of optimum-intel.txt and constraints.txt); when it
# matches, nothing is done. When it does not, the venv is rebuilt from scratch.
#
# Env: PYTHON (interpreter for the venv, default python3.11 or python3), OPTIMUM_VENV (venv path),
#      CONSTRAINTS (constraints file, default <repo>/constraints.txt).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${OPTIMUM_VENV:-$HERE/.venv-optimum}"
REQ="$HERE/optimum-intel.txt"
CONSTRAINTS="${CONSTRAINTS:-$ROOT/constraints.txt}"
STAMP="$VENV/.optimum-installed"
if [[ -z "${PYTHON:-}" ]]; then
  if command -v python3.11 >/dev/null; then PYTHON=python3.11; else PYTHON=python3; fi
fi

force=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

[[ -f "$REQ" ]] || { echo "missing $REQ" >&2; exit 1; }
[[ -f "$CONSTRAINTS" ]] || { echo "missing $CONSTRAINTS" >&2; exit 1; }

want="$(sha256sum "$REQ" | cut -d' ' -f1) $(sha256sum "$CONSTRAINTS" | cut -d' ' -f1)"
if [[ $force -eq 0 && -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  echo "optimum-intel peer venv is up to date: $VENV"
  exit 0
fi

start=$(date +%s)
echo "building the optimum-intel peer venv in $VENV (with $PYTHON)"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

# --no-deps: the file is the whole set; the resolver would otherwise bring torchvision back.
"${PIP[@]}" install -q --no-deps -c "$CONSTRAINTS" -r "$REQ"

if "${PIP[@]}" show -q torchvision >/dev/null 2>&1; then
  echo "removing torchvision (a CUDA build does not load against the CPU torch)"
  "${PIP[@]}" uninstall -y -q torchvision
fi

# pip check may only miss torchvision, which optimum-intel lists but text generation never imports.
check="$("${PIP[@]}" check 2>&1 || true)"
other="$(grep -v -i -e 'requires torchvision, which is not installed' -e '^No broken requirements' <<<"$check" || true)"
if [[ -n "$other" ]]; then
  echo "pip check found broken requirements:" >&2
  echo "$other" >&2
  exit 1
fi

# Smoke test, and a record of what the venv really holds.
"$PY" - "$VENV/versions.json" <<'EOF'
import json
import sys
from importlib.metadata import version

import openvino
import torch

import optimum.intel  # noqa: F401  (imports transformers, optimum, nncf's hooks)

names = ["optimum-intel", "optimum", "openvino", "openvino-tokenizers", "nncf", "transformers",
         "tokenizers", "huggingface-hub", "torch", "numpy"]
versions = {n: version(n) for n in names}
versions["python"] = sys.version.split()[0]
versions["openvino_build"] = openvino.get_version()
assert torch.__version__.endswith("+cpu"), f"torch is not the CPU build: {torch.__version__}"
try:
    version("torchvision")
    raise SystemExit("torchvision is installed in the peer venv")
except Exception as e:  # PackageNotFoundError is the expected case
    if isinstance(e, SystemExit):
        raise
with open(sys.argv[1], "w") as f:
    json.dump(versions, f, indent=2)
print(json.dumps(versions, indent=2))
EOF
"${PIP[@]}" freeze >"$VENV/freeze.txt"

echo "$want" >"$STAMP"
echo "optimum-intel peer venv ready in $(( $(date +%s) - start ))s: $VENV"
