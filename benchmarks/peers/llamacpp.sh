#!/usr/bin/env bash
# Builds the llama.cpp peer venv: benchmarks/peers/.venv-llamacpp (git-ignored).
#
#   bash benchmarks/peers/llamacpp.sh          # create, or skip when up to date
#   bash benchmarks/peers/llamacpp.sh --force  # rebuild from scratch
#
# llama.cpp comes from a prebuilt wheel (cyllama bundles it, CPU build): every pip runs with
# --only-binary=:all:, so nothing is compiled. The pins are llamacpp.txt, installed with --no-deps.
# Idempotent: the venv holds a stamp (sha256 of llamacpp.txt); when it matches, nothing is done.
#
# Env: PYTHON (interpreter for the venv, default python3.11 or python3), LLAMACPP_VENV (venv path).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${LLAMACPP_VENV:-$HERE/.venv-llamacpp}"
REQ="$HERE/llamacpp.txt"
STAMP="$VENV/.llamacpp-installed"
if [[ -z "${PYTHON:-}" ]]; then
  if command -v python3.11 >/dev/null; then PYTHON=python3.11; else PYTHON=python3; fi
fi

force=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h|--help) sed -n '2,10p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

[[ -f "$REQ" ]] || { echo "missing $REQ" >&2; exit 1; }
want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [[ $force -eq 0 && -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  echo "llama.cpp peer venv is up to date: $VENV"
  exit 0
fi

start=$(date +%s)
echo "building the llama.cpp peer venv in $VENV (with $PYTHON)"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip --disable-pip-version-check install -q --no-deps --only-binary=:all: -r "$REQ"
"$PY" -m pip --disable-pip-version-check check

# Smoke test, and a record of what the venv really holds (llama.cpp's build from the wheel).
"$PY" - "$VENV/versions.json" <<'PYEOF'
import json
import sys
from importlib.metadata import version
from pathlib import Path

import cyllama
import cyllama.llama.llama_cpp as L

build = json.loads((Path(cyllama.__file__).parent / "build_config.json").read_text())
versions = {
    "cyllama": version("cyllama"),
    "numpy": version("numpy"),
    "llama_cpp": build["versions"]["llama_cpp_version"],
    "ggml": L.ggml_version(),
    "ggml_commit": L.ggml_commit(),
    "backends": sorted(k for k, v in build["backend"].items() if isinstance(v, dict) and v.get("enabled")) or ["cpu"],
    "python": sys.version.split()[0],
}
with open(sys.argv[1], "w") as f:
    json.dump(versions, f, indent=2)
print(json.dumps(versions, indent=2))
PYEOF
"$PY" -m pip --disable-pip-version-check freeze >"$VENV/freeze.txt"
echo "$want" >"$STAMP"
echo "llama.cpp peer venv ready in $(( $(date +%s) - start ))s: $VENV"
